//! Kubernetes probes and the replication metrics on a real 3-region cluster
//! whose peer links run through `meridian-netlab`: a region cut off from the
//! others stops being ready and its staleness grows, its leader's metrics
//! show its lag growing while writes continue; after the heal it catches
//! up, the lag shrinks to nothing and it is ready again. The scrapes are
//! parsed with an OpenMetrics parser nobody here wrote.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::Cluster;

/// A region's probe: (status, body).
async fn probe(http: &reqwest::Client, base: &str, path: &str) -> (u16, String) {
    let r = http.get(format!("{base}{path}")).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// One sample of a scrape: the value of `family` with every label of `labels`.
fn sample(text: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let m = openmetrics_parser::openmetrics::parse_openmetrics(text)
        .unwrap_or_else(|e| panic!("not OpenMetrics ({e:?}):\n{text}"));
    let f = m.families.get(family)?;
    let s = f.iter_samples().find(|s| {
        s.get_labelset()
            .is_ok_and(|l| labels.iter().all(|(k, v)| l.get_label_value(k) == Some(*v)))
    })?;
    match &s.value {
        openmetrics_parser::OpenMetricsValue::Gauge(n) => Some(n.as_f64()),
        other => panic!("{family}: not a gauge: {other:?}"),
    }
}

async fn scrape(http: &reqwest::Client, base: &str) -> String {
    let (s, text) = probe(http, base, "/metrics").await;
    assert_eq!(s, 200, "{text}");
    text
}

/// Waits until `f` holds, polling every 100 ms, for at most `within`.
async fn until<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(()) => return,
            Err(last) => assert!(Instant::now() < deadline, "{what} never held: {last}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_region_cut_off_is_not_ready_and_its_lag_shows_until_it_catches_up() {
    let mut cl = Cluster::behind_lab("[probes]\nready_staleness_ms_max = 1000\n");
    let lab = meridian_netlab::Lab::start(cl.lab_regions())
        .await
        .expect("start the network lab");
    cl.start_all();
    for i in 0..3 {
        cl.wait_ready(i, Duration::from_secs(30)).await;
    }
    let http = common::http_client();
    let (eu, ap) = (cl.http[0].clone(), cl.http[2].clone());
    for base in &cl.http {
        let (s, body) = probe(&http, base, "/livez").await;
        assert_eq!((s, body.as_str()), (200, "ok"));
        until(Duration::from_secs(15), "every region ready", || {
            let http = http.clone();
            async move {
                match probe(&http, base, "/readyz?verbose").await {
                    (200, b) if b.contains("[+]group eu ok") && b.contains("[+]storage ok") => {
                        Ok(())
                    }
                    (s, b) => Err(format!("{s}: {b}")),
                }
            }
        })
        .await;
    }
    // eu leads its own group once leadership has gone home.
    until(Duration::from_secs(30), "eu leads group eu", || {
        let http = http.clone();
        let eu = eu.clone();
        async move {
            let text = scrape(&http, &eu).await;
            match sample(&text, "meridian_group_is_leader", &[("group", "eu")]) {
                Some(1.0) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let text = scrape(&http, &eu).await;
    assert_eq!(
        sample(&text, "meridian_group_has_leader", &[("group", "ap")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "meridian_peer_connected", &[("region", "ap")]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "meridian_group_staleness_seconds",
            &[("group", "eu")]
        ),
        Some(0.0),
        "a leader with its lease is not behind"
    );

    // ap cut off from both others; eu keeps writing to its own group.
    lab.isolate("ap", true).unwrap();
    let client = cl.client_for(0).await;
    let mut written = 0u32;
    until(
        Duration::from_secs(15),
        "ap not ready, eu group behind",
        || {
            let http = http.clone();
            let ap = ap.clone();
            async move {
                match probe(&http, &ap, "/readyz").await {
                    (503, b) if b.contains("[-]group eu failed") => Ok(()),
                    (s, b) => Err(format!("{s}: {b}")),
                }
            }
        },
    )
    .await;
    let lag_of_ap = |text: &str| {
        sample(
            text,
            "meridian_group_follower_lag_entries",
            &[("group", "eu"), ("follower", "ap")],
        )
    };
    let mut lags = Vec::new();
    for round in 0..3 {
        for i in 0..20 {
            client
                .put("eu", &format!("k{round}-{i}"), b"v")
                .await
                .unwrap();
            written += 1;
        }
        lags.push(lag_of_ap(&scrape(&http, &eu).await).unwrap_or(-1.0));
    }
    assert!(
        lags.windows(2).all(|w| w[1] > w[0]) && lags[0] >= 20.0,
        "the lag of a follower cut off grows with every write ({written} written): {lags:?}"
    );
    let stale = sample(
        &scrape(&http, &ap).await,
        "meridian_group_staleness_seconds",
        &[("group", "eu")],
    );
    // Behind by more than the bound, or (once it stops following) absent:
    // not known to be caught up at all.
    assert!(
        stale.is_none_or(|s| s >= 1.0),
        "ap's replica of eu is behind: {stale:?}"
    );

    // The heal: ap catches up, eu sees no lag, ap is ready again.
    lab.isolate("ap", false).unwrap();
    until(Duration::from_secs(20), "ap's lag back to 0", || {
        let http = http.clone();
        let eu = eu.clone();
        async move {
            match lag_of_ap(&scrape(&http, &eu).await) {
                Some(0.0) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    until(Duration::from_secs(20), "ap ready again", || {
        let http = http.clone();
        let ap = ap.clone();
        async move {
            match probe(&http, &ap, "/readyz").await {
                (200, b) if b == "ok" => Ok(()),
                (s, b) => Err(format!("{s}: {b}")),
            }
        }
    })
    .await;
    let stale = sample(
        &scrape(&http, &ap).await,
        "meridian_group_staleness_seconds",
        &[("group", "eu")],
    );
    assert!(stale.is_some_and(|s| s < 1.0), "caught up: {stale:?}");
    // Requests by method and outcome: the 60 puts above, a failed read, and
    // ap's failed readiness probes.
    let _ = client
        .get(
            "no-such-namespace",
            "k",
            meridian_proto::v1::Consistency::Stale,
        )
        .await
        .unwrap_err();
    let text = scrape(&http, &eu).await;
    let kv = ("grpc_service", "meridian.v1.Kv");
    let puts = counter(
        &text,
        "meridian_grpc_server_handled",
        &[kv, ("grpc_method", "Put"), ("grpc_code", "Ok")],
    );
    assert!(
        puts.is_some_and(|n| n >= f64::from(written)),
        "{puts:?}\n{text}"
    );
    let failed_gets = counter_sum(
        &text,
        "meridian_grpc_server_handled",
        &[kv, ("grpc_method", "Get")],
        |l| l != "Ok",
    );
    assert!(failed_gets >= 1.0, "the failed read is counted:\n{text}");
    assert!(
        text.contains("meridian_grpc_server_handling_seconds_bucket{"),
        "{text}"
    );
    let ap_text = scrape(&http, &ap).await;
    let not_ready = counter(
        &ap_text,
        "meridian_http_server_requests",
        &[("method", "GET"), ("route", "/readyz"), ("code", "503")],
    );
    assert!(
        not_ready.is_some_and(|n| n >= 1.0),
        "{not_ready:?}\n{ap_text}"
    );
    // The storage thread's commits: every acknowledged put was fsynced
    // through at least one synced commit, timed in the histogram.
    let synced = histogram_count(&text, "meridian_storage_commit_seconds", ("sync", "true"));
    assert!(synced >= 1, "{text}");
    for gauge in ["meridian_pending_requests", "meridian_watchers"] {
        assert!(sample(&text, gauge, &[]).is_some(), "{gauge}:\n{text}");
    }
    assert_eq!(sample(&text, "meridian_drill_fault_active", &[]), Some(0.0));
    // Links: a measured round trip to each peer (loopback: under 100 ms),
    // and a reconnect count for each.
    for peer in ["us", "ap"] {
        let rtt = sample(&text, "meridian_peer_rtt_seconds", &[("region", peer)]);
        assert!(
            rtt.is_some_and(|r| r > 0.0 && r < 0.1),
            "{peer}: {rtt:?}\n{text}"
        );
        assert!(
            counter(&text, "meridian_peer_reconnects", &[("region", peer)]).is_some(),
            "{peer}:\n{text}"
        );
    }
    assert!(sample(&text, "meridian_peer_rtt_seconds", &[("region", "eu")]).is_none());
    // deploy/'s alert rules and dashboard name only metrics a live region
    // exports (families show once they have a sample: eu leads, ap follows).
    let exported: std::collections::BTreeSet<String> = [&text, &ap_text]
        .iter()
        .flat_map(|t| t.lines())
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "deploy/prometheus/meridian-alerts.yml",
        "deploy/grafana/meridian-dashboard.json",
    ] {
        let used = metric_names(&std::fs::read_to_string(repo.join(file)).unwrap());
        assert!(used.len() >= 8, "{file}: {used:?}");
        let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics no region exported: {unknown:?}\nexported: {exported:?}"
        );
    }
    assert!(!exported.contains("meridian_group_has_leaders"));
}

/// The `meridian_*` metric names a text mentions, without the suffixes a
/// counter's or histogram's samples add.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("meridian_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        let preceded = start > 0
            && (b[start - 1].is_ascii_alphanumeric()
                || b[start - 1] == b'_'
                || b[start - 1] == b'-');
        if !preceded {
            let mut name = &text[start..end];
            for suffix in ["_total", "_bucket", "_count", "_sum"] {
                name = name.strip_suffix(suffix).unwrap_or(name);
            }
            out.insert(name.to_string());
        }
        i = end.max(start + 1);
    }
    out
}

#[test]
fn metric_names_strip_sample_suffixes() {
    assert_eq!(
        metric_names("x meridian_group_has_leaders_total{a} y-meridian_no"),
        ["meridian_group_has_leaders".to_string()].into()
    );
}

/// The count of the histogram sample of `family` with label `label`.
fn histogram_count(text: &str, family: &str, label: (&str, &str)) -> u64 {
    let m = openmetrics_parser::openmetrics::parse_openmetrics(text)
        .unwrap_or_else(|e| panic!("not OpenMetrics ({e:?}):\n{text}"));
    let Some(fam) = m.families.get(family) else {
        panic!("no {family}:\n{text}");
    };
    let mut total = 0;
    for s in fam.iter_samples() {
        let Ok(l) = s.get_labelset() else { continue };
        if l.get_label_value(label.0) != Some(label.1) {
            continue;
        }
        match &s.value {
            openmetrics_parser::OpenMetricsValue::Histogram(h) => total += h.count.unwrap_or(0),
            other => panic!("{family}: not a histogram: {other:?}"),
        }
    }
    total
}

/// A counter's value: the sample of `family` with every label of `labels`.
fn counter(text: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    counter_each(text, family, labels, |_, v| found = Some(v));
    found
}

/// The sum of `family`'s samples with `labels` whose `grpc_code` passes `keep`.
fn counter_sum(
    text: &str,
    family: &str,
    labels: &[(&str, &str)],
    keep: impl Fn(&str) -> bool,
) -> f64 {
    let mut sum = 0.0;
    counter_each(text, family, labels, |code, v| {
        if keep(code) {
            sum += v;
        }
    });
    sum
}

fn counter_each(text: &str, family: &str, labels: &[(&str, &str)], mut f: impl FnMut(&str, f64)) {
    let m = openmetrics_parser::openmetrics::parse_openmetrics(text)
        .unwrap_or_else(|e| panic!("not OpenMetrics ({e:?}):\n{text}"));
    let Some(fam) = m.families.get(family) else {
        return;
    };
    for s in fam.iter_samples() {
        let Ok(l) = s.get_labelset() else { continue };
        if !labels.iter().all(|(k, v)| l.get_label_value(k) == Some(*v)) {
            continue;
        }
        let code = l.get_label_value("grpc_code").unwrap_or("").to_string();
        match &s.value {
            openmetrics_parser::OpenMetricsValue::Counter(c) => f(&code, c.value.as_f64()),
            other => panic!("{family}: not a counter: {other:?}"),
        }
    }
}
