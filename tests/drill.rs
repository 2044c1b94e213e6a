//! `meridian drill` against a real 3-region cluster (auth on, TLS): each
//! scenario's report, its judgement against bounds (and the exit code), the
//! reports kept in the cluster and audited, the admin-only faults with their
//! refusals, and a fault whose drill process was killed reverting by its
//! deadline.

// Tests: a panic with the value's context is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use meridian_proto::v1::drill_client::DrillClient;
use meridian_proto::v1::kv_client::KvClient;
use meridian_proto::v1::*;
use serde_json::{json, Value};

/// `meridian --token <token> -o json drill ...`: (success, report, stderr).
fn drill(cl: &Cluster, token: &str, args: &[&str]) -> (bool, Value, String) {
    let mut all = vec!["--token", token, "-o", "json", "drill"];
    all.extend_from_slice(args);
    let (ok, out, err) = cli_at(&cl.grpc, &all);
    let v = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {out}\nstderr: {err}"));
    (ok, v, err)
}

fn figure(r: &Value, name: &str) -> Value {
    r["figures"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["name"] == name))
        .unwrap_or_else(|| panic!("no figure {name} in {r:#}"))
        .clone()
}

fn all_checks_ok(r: &Value) {
    let checks = r["checks"].as_array().expect("checks");
    for c in checks {
        assert_eq!(c["ok"], true, "check failed: {c:#}\nreport: {r:#}");
    }
}

/// The quorum bars of every outage: RTO within its bound, nothing
/// acknowledged lost, a catch-up measured, the cluster healthy after.
fn outage_bars(r: &Value) {
    assert_eq!(r["verdict"], "pass", "{r:#}");
    let rto = figure(r, "rto_ms");
    assert!(rto["value"].as_u64().is_some(), "{rto}");
    assert_eq!(rto["ok"], true);
    assert_eq!(figure(r, "rpo_lost_quorum_writes")["value"], 0, "{r:#}");
    assert!(
        figure(r, "catch_up_ms")["value"].as_u64().is_some(),
        "{r:#}"
    );
    assert!(r["writes"]["acknowledged"].as_u64().unwrap() > 50, "{r:#}");
    all_checks_ok(r);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_scenario_reports_judges_and_is_kept() {
    // Canary writes are audited like any write: room for the drills'
    // (about 1,800 records per group each) and their fault records.
    let (cl, root) = auth_cluster("[cluster]\naudit_records_max = 30000\n").await;
    let svg_path = cl.dir().join("timeline.svg");

    // A crash-like stop of eu: RTO, RPO 0, catch-up after its restart from disk.
    let (ok, r, err) = drill(
        &cl,
        &root,
        &[
            "region-loss",
            "--region",
            "eu",
            "--fault",
            "stop",
            "--fault-for",
            "4s",
            "--warmup",
            "1s",
            "--svg",
            svg_path.to_str().unwrap(),
            "--id",
            "loss-stop",
        ],
    );
    assert!(ok, "{err}\n{r:#}");
    outage_bars(&r);
    assert_eq!(r["fault"], "stop");
    // The async canary lost nothing older than its budget before the fault.
    assert_eq!(figure(&r, "rpo_async_window_ms")["ok"], true, "{r:#}");
    // The timeline is SVG a real parser reads, with bars and the events.
    let text = std::fs::read_to_string(&svg_path).expect("svg written");
    let doc = roxmltree::Document::parse(&text).expect("the SVG parses as XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert_eq!(
        doc.root_element().tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    let bars = doc.descendants().filter(|n| n.has_tag_name("rect")).count();
    assert!(bars > 20, "{bars} bars");
    let labels: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
    for want in ["stop fault: eu", "fault cleared", "eu caught up"] {
        assert!(
            labels.iter().any(|l| l.contains(want)),
            "{want:?} in {labels:?}"
        );
    }

    // us paused, with an RTO bound nobody can meet: the report says which
    // figure broke and the process exits non-zero.
    let (ok, r, err) = drill(
        &cl,
        &root,
        &[
            "region-loss",
            "--region",
            "us",
            "--fault",
            "pause",
            "--fault-for",
            "4s",
            "--warmup",
            "1s",
            "--rto-ms-max",
            "1",
            "--id",
            "loss-pause",
        ],
    );
    assert!(!ok, "a broken bound must fail the process: {r:#}");
    assert_eq!(r["verdict"], "fail");
    assert_eq!(r["broken"].as_array().unwrap().len(), 1, "{r:#}");
    assert!(
        r["broken"][0].as_str().unwrap().starts_with("rto_ms"),
        "{r:#}"
    );
    assert!(err.contains("drill loss-pause failed: rto_ms"), "{err}");
    assert_eq!(figure(&r, "rpo_lost_quorum_writes")["value"], 0, "{r:#}");

    // ap cut off: reads at each level on both sides, as documented.
    let (ok, r, err) = drill(
        &cl,
        &root,
        &[
            "partition",
            "--region",
            "ap",
            "--fault-for",
            "5s",
            "--warmup",
            "1s",
            "--id",
            "cut-ap",
        ],
    );
    assert!(ok, "{err}\n{r:#}");
    outage_bars(&r);
    let names: Vec<&str> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for want in [
        "stale read in ap while cut off",
        "bounded (1000 ms) read in ap while cut off",
        "linearizable read in ap while cut off",
        "linearizable read in eu while ap is cut off",
        "linearizable read in ap after the heal",
    ] {
        assert!(names.contains(&want), "{want:?} in {names:?}");
    }

    // A planned hand-over of eu's group and back: short pauses, nothing lost.
    let (ok, r, err) = drill(
        &cl,
        &root,
        &[
            "planned",
            "--region",
            "eu",
            "--warmup",
            "1s",
            "--id",
            "planned-eu",
        ],
    );
    assert!(ok, "{err}\n{r:#}");
    assert_eq!(r["verdict"], "pass", "{r:#}");
    let pauses: Vec<&Value> = r["figures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["name"].as_str().unwrap().starts_with("pause_ms["))
        .collect();
    assert_eq!(pauses.len(), 2, "there and back: {r:#}");
    for p in pauses {
        assert_eq!(p["ok"], true, "{p}");
    }
    assert_eq!(figure(&r, "rpo_lost_quorum_writes")["value"], 0);
    assert_eq!(figure(&r, "rpo_lost_async_writes")["value"], 0);
    all_checks_ok(&r);

    // The history: every drill, newest first, from any region.
    let (ok, out, err) = cli_at(
        &cl.grpc[2..],
        &["--token", &root, "-o", "json", "drill", "history"],
    );
    assert!(ok, "{err}");
    let h: Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["drill_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["planned-eu", "cut-ap", "loss-pause", "loss-stop"]);
    let (ok, out, _) = cli_at(
        &cl.grpc,
        &[
            "--token",
            &root,
            "-o",
            "json",
            "drill",
            "history",
            "--scenario",
            "partition",
        ],
    );
    assert!(ok);
    let h: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(h.as_array().unwrap().len(), 1);
    // Audited: each fault and each report kept.
    let mut audit =
        meridian_proto::v1::audit_client::AuditClient::new(auth_chan(&cl.grpc[1], &root));
    let records = audit
        .query(AuditQueryRequest {
            action_prefix: "Drill.".into(),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    let details: Vec<&str> = records.iter().map(|r| r.detail.as_str()).collect();
    for want in [
        "drill loss-stop: stop fault for at most",
        "drill loss-stop: stop fault cleared",
        "drill cut-ap: isolate fault cleared",
        "recorded in",
    ] {
        assert!(
            details.iter().any(|d| d.contains(want)),
            "{want:?} in {details:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_are_admin_only_checked_and_revert_by_their_deadline() {
    let (cl, root) = auth_cluster("").await;
    let writer = role_token(&cl, &root, "writer", "*", json!(["read", "write"])).await;

    // Every call of the service needs admin.
    let mut as_writer = DrillClient::new(auth_chan(&cl.grpc[1], &writer));
    let denied = [
        as_writer
            .inject_fault(InjectFaultRequest {
                drill_id: "d".into(),
                kind: "stop".into(),
                duration_ms: 1000,
            })
            .await
            .unwrap_err(),
        as_writer
            .clear_fault(ClearFaultRequest {
                drill_id: "d".into(),
            })
            .await
            .unwrap_err(),
        as_writer
            .record_drill(RecordDrillRequest {
                report_json: "{}".into(),
            })
            .await
            .unwrap_err(),
        as_writer
            .list_drills(ListDrillsRequest::default())
            .await
            .unwrap_err(),
    ];
    for e in denied {
        assert_eq!(reason(&e), "PERMISSION_DENIED", "{e:?}");
    }
    let mut anon = DrillClient::new(channel(&cl.grpc[1]).await);
    let e = anon
        .inject_fault(InjectFaultRequest {
            drill_id: "d".into(),
            kind: "stop".into(),
            duration_ms: 1000,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "UNAUTHENTICATED", "{e:?}");
    // The refusals are counted by reason on us's /metrics.
    let text = http_client()
        .get(format!("{}/metrics", cl.http[1]))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let denied = |reason: &str| {
        let m = openmetrics_parser::openmetrics::parse_openmetrics(&text)
            .unwrap_or_else(|e| panic!("not OpenMetrics ({e:?}):\n{text}"));
        let fam = m.families.get("meridian_auth_denials").expect("the family");
        fam.iter_samples()
            .filter(|s| {
                s.get_labelset()
                    .is_ok_and(|l| l.get_label_value("reason") == Some(reason))
            })
            .map(|s| match &s.value {
                openmetrics_parser::OpenMetricsValue::Counter(c) => c.value.as_f64(),
                other => panic!("not a counter: {other:?}"),
            })
            .sum::<f64>()
    };
    assert!(denied("PERMISSION_DENIED") >= 4.0, "{text}");
    assert!(denied("UNAUTHENTICATED") >= 1.0, "{text}");

    // Bad requests: a clear error each, and no fault.
    let mut admin = DrillClient::new(auth_chan(&cl.grpc[1], &root));
    for (req, want) in [
        (
            InjectFaultRequest {
                drill_id: "d".into(),
                kind: "crash".into(),
                duration_ms: 1000,
            },
            "INVALID_REQUEST",
        ),
        (
            InjectFaultRequest {
                drill_id: "d".into(),
                kind: "stop".into(),
                duration_ms: 0,
            },
            "INVALID_REQUEST",
        ),
        (
            InjectFaultRequest {
                drill_id: "d".into(),
                kind: "stop".into(),
                duration_ms: 600_001,
            },
            "INVALID_REQUEST",
        ),
        (
            InjectFaultRequest {
                drill_id: "a/b".into(),
                kind: "stop".into(),
                duration_ms: 1000,
            },
            "INVALID_REQUEST",
        ),
    ] {
        let e = admin.inject_fault(req.clone()).await.unwrap_err();
        assert_eq!(reason(&e), want, "{req:?}: {e:?}");
    }
    for bad in [
        "not json",
        "[]",
        r#"{"drill_id":"x","scenario":"chaos","started_ms":1}"#,
    ] {
        let e = admin
            .record_drill(RecordDrillRequest {
                report_json: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&e), "INVALID_REQUEST", "{bad}: {e:?}");
    }
    let status = |i: usize| {
        let ch = auth_chan(&cl.grpc[i], &root);
        async move {
            meridian_proto::v1::admin_client::AdminClient::new(ch)
                .cluster_status(ClusterStatusRequest {})
                .await
                .map(|s| s.into_inner())
        }
    };
    assert!(status(1).await.unwrap().fault.is_none());

    // A drill process killed while its fault holds: us reverts by itself.
    let mut child = std::process::Command::new(bin())
        .args([
            "--endpoints",
            &cl.grpc.join(","),
            "--token",
            &root,
            "drill",
            "region-loss",
        ])
        .args([
            "--region",
            "us",
            "--fault",
            "stop",
            "--fault-for",
            "3s",
            "--warmup",
            "1s",
        ])
        .args(["--deadline-margin", "1s", "--id", "killed"])
        .env("MERIDIAN_CACERT", ca_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the drill");
    let deadline = Instant::now() + Duration::from_secs(30);
    let fault = loop {
        if let Ok(s) = status(1).await {
            if let Some(f) = s.fault {
                break f;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the drill never injected its fault"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill().expect("kill the drill");
    let _ = child.wait();
    let t_killed = Instant::now();
    assert_eq!(
        (
            fault.drill_id.as_str(),
            fault.kind.as_str(),
            fault.region.as_str()
        ),
        ("killed", "stop", "us")
    );
    assert!(fault.remaining_ms <= 4_000, "{fault:?}");
    // While it holds: another fault is refused, so is a clear by another
    // drill, and us answers no client.
    let e = admin
        .inject_fault(InjectFaultRequest {
            drill_id: "other".into(),
            kind: "pause".into(),
            duration_ms: 1000,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "DRILL_FAULT_ACTIVE", "{e:?}");
    let e = admin
        .clear_fault(ClearFaultRequest {
            drill_id: "other".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "DRILL_FAULT_ACTIVE", "{e:?}");
    let e = KvClient::new(auth_chan(&cl.grpc[1], &root))
        .get(GetRequest {
            namespace: "drill-canary/us".into(),
            key: "k".into(),
            read: None,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "UNAVAILABLE", "{e:?}");
    // Then the deadline passes: no fault, every group led, us serves writes
    // to its own namespace again (it restarted from disk and caught up).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let healthy = match status(1).await {
            Ok(s) => {
                s.fault.is_none()
                    && s.regions.iter().all(|r| r.connected)
                    && s.groups.iter().all(|g| g.leader.is_some())
            }
            Err(_) => false,
        };
        let put = KvClient::new(auth_chan(&cl.grpc[1], &root))
            .put(PutRequest {
                namespace: "drill-canary/us".into(),
                key: "after".into(),
                value: b"x".to_vec(),
                request_id: 0,
            })
            .await;
        if healthy && put.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "us did not recover after its fault's deadline:\n{}",
            cl.log(1)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(t_killed.elapsed() < Duration::from_secs(30));
    assert!(
        cl.log(1).contains("drill fault reverted by its deadline"),
        "{}",
        cl.log(1)
    );
    assert!(cl.log(1).contains("restarted from disk after a stop fault"));
}
