//! Secrets against a real 3-region cluster (docs/secrets.md): a planted
//! marker written as secrets in every way a value becomes one, through
//! rotation, templates, rollback, snapshots, a snapshot installed in a
//! restarted region and a new key-encryption key, is then found in no file
//! under any region's directory (RocksDB, logs at trace level) and in no
//! response made without reveal, while a reveal returns it intact; the
//! reveal permission denies through gRPC, HTTP and `${secret:}`; and the
//! faults (no keyring, a wrong keyring, a tampered ciphertext, a plaintext
//! channel) each answer with their stable reason.

// Test helpers fail the test by panicking; that is what unwrap is for here.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{reason, Cluster, ConfigClient};
use meridian_proto::v1::*;
use serde_json::{json, Value};

fn ns() -> Option<NamespaceRef> {
    Some(NamespaceRef {
        project: "shop".into(),
        environment: "prod".into(),
    })
}

fn secret_put(key: &str, v: &Value) -> ConfigOp {
    ConfigOp {
        op: Some(config_op::Op::Put(PutOp {
            key: key.into(),
            value_json: v.to_string(),
            if_version: None,
            secret: Some(SecretSpec::default()),
        })),
    }
}

fn write(ops: Vec<ConfigOp>) -> ConfigWriteRequest {
    ConfigWriteRequest {
        ns: ns(),
        ops,
        author: "secrets-test".into(),
        message: "secrets test".into(),
        idempotency_key: String::new(),
    }
}

fn read(reveal: bool, raw: bool, stale: bool) -> Option<ConfigReadOptions> {
    Some(ConfigReadOptions {
        raw,
        stale,
        reveal,
        ..Default::default()
    })
}

async fn get(c: &mut ConfigClient, path: &str, reveal: bool) -> Result<Value, tonic::Status> {
    let r = c
        .get_config(GetConfigRequest {
            ns: ns(),
            path: path.into(),
            read: read(reveal, false, false),
            default_json: None,
        })
        .await?
        .into_inner();
    Ok(serde_json::from_str(&r.value_json).unwrap())
}

async fn create_shop(c: &mut ConfigClient) {
    c.create_namespace(CreateNamespaceRequest {
        project: "shop".into(),
        environment: "prod".into(),
        home_region: "eu".into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Every file under `dir` that holds `needle`, as paths.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                files += 1;
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    out.push(p.display().to_string());
                }
            }
        }
    }
    assert!(
        files > 10,
        "only {files} files scanned under {}",
        dir.display()
    );
    out
}

/// Wait until `f` holds, checking every 100 ms, for at most `within`.
async fn until<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planted_secret_is_found_nowhere_but_in_a_reveal() {
    // Snapshots every 64 entries, so they hold secrets and a restarted
    // region installs one; every log line our crates write, at trace.
    let mut cl = Cluster::new("[cluster]\ncompact_after_entries = 64\n");
    cl.rust_log = "debug,meridian=trace,meridian_node=trace,meridian_core=trace,\
                   quinn=info,quinn_proto=info,h2=info,hyper=info,rustls=info,tower=info"
        .to_string();
    cl.start_all();
    for i in 0..3 {
        cl.wait_ready(i, Duration::from_secs(30)).await;
    }
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let marker = format!("PLANTED{nonce:x}");
    let m = |s: &str| format!("{marker}-{s}");
    // A plain value with its own marker: the scan must find it (it sees
    // what is stored), or finding no secret proves nothing.
    let control = format!("CONTROL{nonce:x}");
    let eu = cl.grpc[0].clone();
    let mut c = common::config_client(&eu).await;
    create_shop(&mut c).await;
    let mut answers: Vec<String> = Vec::new();
    // Writes retry (idempotently) through leadership changes: regions are
    // killed and restarted under them.
    let seq = std::sync::atomic::AtomicU64::new(0);
    let w = |c: &mut ConfigClient, ops: Vec<ConfigOp>| {
        let mut c = c.clone();
        let mut req = write(ops);
        req.idempotency_key = format!(
            "w{}",
            seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match c.write(req.clone()).await {
                    Ok(r) => return r.into_inner(),
                    Err(e)
                        if ["INDETERMINATE", "UNAVAILABLE", "TIMEOUT"]
                            .contains(&reason(&e).as_str())
                            && Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(e) => panic!("write failed: {e:?}"),
                }
            }
        }
    };

    // 1. Marked by the write, by a merge, by a schema's writeOnly.
    let r = w(&mut c, vec![secret_put("db.password", &json!(m("v1")))]).await;
    answers.push(format!("{r:?}"));
    let merge = ConfigOp {
        op: Some(config_op::Op::Merge(MergeOp {
            path: "tls".into(),
            patch_json: json!({"key": m("tls")}).to_string(),
            if_version: None,
            secret: Some(SecretSpec {
                expires_at_ms: 0,
                rotate_every_ms: 86_400_000,
            }),
        })),
    };
    answers.push(format!("{:?}", w(&mut c, vec![merge]).await));
    let schema = ConfigOp {
        op: Some(config_op::Op::SetSchema(SetSchemaOp {
            prefix: "api".into(),
            schema_json: json!({"type": "object", "properties": {
                "token": {"type": "string", "writeOnly": true},
                "url": {"type": "string"}}})
            .to_string(),
        })),
    };
    w(&mut c, vec![schema]).await;
    let r = w(
        &mut c,
        vec![
            common::put_op("api.token", &json!(m("api"))),
            common::put_op("api.url", &json!("https://api.example")),
            common::put_op("plain.control", &json!(control)),
            common::put_op("app.dsn", &json!("postgres://u:${secret:db.password}@h/db")),
        ],
    )
    .await;
    answers.push(format!("{r:?}"));
    // 2. Rotated without the flag (still a secret); another deleted and
    // written again without it (still a secret); rolled back (re-sealed).
    let r = w(&mut c, vec![common::put_op("db.password", &json!(m("v2")))]).await;
    let rev_v2 = r.revision;
    answers.push(format!("{r:?}"));
    let del = ConfigOp {
        op: Some(config_op::Op::Delete(DeleteOp {
            key: "tls.key".into(),
            recursive: false,
            if_version: None,
        })),
    };
    answers.push(format!("{:?}", w(&mut c, vec![del]).await));
    let r = w(&mut c, vec![common::put_op("tls.key", &json!(m("tls2")))]).await;
    answers.push(format!("{r:?}"));
    let r = w(&mut c, vec![common::put_op("db.password", &json!(m("v4")))]).await;
    answers.push(format!("{r:?}"));
    let r = c
        .rollback(RollbackRequest {
            ns: ns(),
            key: "db.password".into(),
            revision: rev_v2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    answers.push(format!("{r:?}"));
    assert_eq!(
        get(&mut c, "db.password", true).await.unwrap(),
        json!(m("v2"))
    );

    // 3. Snapshots: plain writes past the compaction threshold, with
    // region us down, then a rotation it misses; it must install a snapshot.
    for i in 0..80 {
        w(
            &mut c,
            vec![common::put_op(&format!("filler.k{i}"), &json!(i))],
        )
        .await;
    }
    cl.kill9(1);
    for i in 0..150 {
        w(
            &mut c,
            vec![common::put_op(&format!("filler.k{i}"), &json!(i + 1000))],
        )
        .await;
    }
    w(&mut c, vec![common::put_op("db.password", &json!(m("v6")))]).await;
    cl.start(1);
    cl.wait_ready(1, Duration::from_secs(30)).await;
    until(
        Duration::from_secs(60),
        "us installs a snapshot",
        || async { cl.log(1).contains("installed a snapshot") },
    )
    .await;
    let us = common::config_client(&cl.grpc[1]).await;
    until(
        Duration::from_secs(30),
        "us reveals the newest version",
        || {
            let mut us = us.clone();
            let want = json!(m("v6"));
            async move {
                let r = us
                    .get_config(GetConfigRequest {
                        ns: ns(),
                        path: "db.password".into(),
                        read: read(true, true, true),
                        default_json: None,
                    })
                    .await;
                r.is_ok_and(|r| {
                    serde_json::from_str::<Value>(&r.get_ref().value_json).ok() == Some(want)
                })
            }
        },
    )
    .await;

    // 4. A new key-encryption key: every region restarts with the keyring
    // holding version 2 as active; old secrets still open, new ones use it.
    let keyring = cl.dir().join("keyring.toml");
    assert_eq!(
        meridian_node::secrets::keyring::FileKeyring::add_version(&keyring).unwrap(),
        2
    );
    meridian_node::secrets::keyring::FileKeyring::activate(&keyring, 2).unwrap();
    for i in 0..3 {
        cl.kill9(i);
        cl.start(i);
        cl.wait_ready(i, Duration::from_secs(30)).await;
    }
    let mut c = common::config_client(&eu).await;
    let r = w(&mut c, vec![common::put_op("db.password", &json!(m("v7")))]).await;
    answers.push(format!("{r:?}"));

    // 5. Everything a caller without reveal can ask.
    for (path, raw) in [("", false), ("", true), ("db", false), ("app.dsn", false)] {
        let r = c
            .get_config(GetConfigRequest {
                ns: ns(),
                path: path.into(),
                read: read(false, raw, false),
                default_json: None,
            })
            .await
            .unwrap();
        answers.push(format!("{r:?}"));
    }
    let dsn = get(&mut c, "app.dsn", false).await.unwrap();
    assert!(
        dsn.as_str()
            .unwrap()
            .starts_with("postgres://u:<redacted secret v"),
        "{dsn}"
    );
    let r = c
        .bulk_get(BulkGetRequest {
            ns: ns(),
            keys: vec!["db.password".into(), "api.token".into(), "tls.key".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    answers.push(format!("{r:?}"));
    for search in ["", "PLANTED", &marker] {
        let r = c
            .list_config(ListConfigRequest {
                ns: ns(),
                search: search.into(),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if !search.is_empty() {
            assert!(
                r.entries.is_empty(),
                "search {search:?} matched a secret: {r:?}"
            );
        }
        answers.push(format!("{r:?}"));
    }
    let h = c
        .config_history(ConfigHistoryRequest {
            ns: ns(),
            key: "db.password".into(),
            reveal: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(h.versions.len() >= 6, "{h:?}");
    answers.push(format!("{h:?}"));
    let d = c
        .diff(DiffRequest {
            ns: ns(),
            what: Some(diff_request::What::Versions(VersionsDiff {
                key: "db.password".into(),
                from_version: 1,
                to_version: 2,
            })),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        d.changes.len(),
        1,
        "a diff shows that a secret changed: {d:?}"
    );
    answers.push(format!("{d:?}"));
    let d = c
        .diff(DiffRequest {
            ns: ns(),
            what: Some(diff_request::What::Revisions(RevisionsDiff {
                path: String::new(),
                from_revision: 1,
                to_revision: rev_v2 + 3,
            })),
        })
        .await
        .unwrap();
    answers.push(format!("{d:?}"));
    let v = c
        .validate(write(vec![common::put_op("db.password", &json!("x"))]))
        .await
        .unwrap();
    answers.push(format!("{v:?}"));
    let mut watch = c
        .watch_config(WatchConfigRequest {
            ns: ns(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    answers.push(format!("{first:?}"));
    let audit = meridian_proto::v1::audit_client::AuditClient::new(common::channel(&eu).await)
        .query(AuditQueryRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    answers.push(format!("{audit:?}"));
    let http = common::http_client();
    for url in [
        format!("{}/v1/config/shop/prod", cl.http[0]),
        format!("{}/v1/config/shop/prod?raw=true", cl.http[0]),
        format!("{}/v1/config/shop/prod/db.password", cl.http[0]),
        format!("{}/v1/history/shop/prod/db.password", cl.http[0]),
        format!("{}/v1/list/shop/prod", cl.http[0]),
        format!(
            "{}/v1/diff/shop/prod/db.password?from_version=1&to_version=2",
            cl.http[0]
        ),
    ] {
        let r = http.get(&url).send().await.unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert!(status.is_success(), "{url}: {status} {body}");
        answers.push(body);
    }
    // The raw KV API holds the envelope: ciphertext, not the marker.
    let kv = meridian_proto::v1::kv_client::KvClient::new(common::channel(&eu).await)
        .get(GetRequest {
            namespace: "shop/prod".into(),
            key: "db.password".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    answers.push(format!("{kv:?}"));
    for a in &answers {
        assert!(
            !a.contains(&marker),
            "a response without reveal holds the secret: {a}"
        );
    }

    // 6. With reveal, every version comes back intact.
    assert_eq!(
        get(&mut c, "db.password", true).await.unwrap(),
        json!(m("v7"))
    );
    assert_eq!(
        get(&mut c, "tls.key", true).await.unwrap(),
        json!(m("tls2"))
    );
    assert_eq!(
        get(&mut c, "api.token", true).await.unwrap(),
        json!(m("api"))
    );
    assert_eq!(
        get(&mut c, "app.dsn", true).await.unwrap(),
        json!(format!("postgres://u:{}@h/db", m("v7")))
    );
    let h = c
        .config_history(ConfigHistoryRequest {
            ns: ns(),
            key: "db.password".into(),
            reveal: true,
        })
        .await
        .unwrap()
        .into_inner();
    let seen: Vec<String> = h.versions.iter().map(|v| v.value_json.clone()).collect();
    for v in ["v1", "v2", "v4", "v6", "v7"] {
        let want = json!(m(v)).to_string();
        assert!(seen.contains(&want), "history lacks {want}: {seen:?}");
    }

    // 7. Nothing on disk: every file's bytes (the WAL, SSTs, every log
    // line), and every RocksDB record decompressed (SSTs are LZ4 blocks, which
    // a byte scan cannot see through).
    for i in 0..3 {
        cl.kill9(i);
    }
    let holding = files_holding(cl.dir(), marker.as_bytes());
    assert!(
        holding.is_empty(),
        "the secret's plaintext is in {holding:?}"
    );
    let mut control_seen = 0;
    for i in 0..3 {
        let records = meridian_node::storage::RocksStorage::raw_records(&cl.data_dir(i)).unwrap();
        assert!(records.len() > 3, "region {i}: {} records", records.len());
        for (k, v) in &records {
            for part in [k, v] {
                assert!(
                    !part.windows(marker.len()).any(|w| w == marker.as_bytes()),
                    "region {i}: the secret's plaintext is in record {:?}",
                    String::from_utf8_lossy(k)
                );
                if part.windows(control.len()).any(|w| w == control.as_bytes()) {
                    control_seen += 1;
                }
            }
        }
    }
    // The scan sees stored values: the plain control value is there.
    assert!(
        control_seen >= 3,
        "the plain control value was seen {control_seen} times"
    );
}

/// Wait until region `i`, serving its client APIs without TLS, sees a
/// leader for every group.
async fn ready_plain(cl: &Cluster, i: usize) {
    let addr = format!("http://{}", cl.grpc[i]);
    until(Duration::from_secs(30), "the region is ready", || {
        let addr = addr.clone();
        async move {
            let ch = meridian_proto::client::endpoint(&addr, None)
                .unwrap()
                .connect_lazy();
            let mut a = meridian_proto::v1::admin_client::AdminClient::new(ch);
            a.cluster_status(ClusterStatusRequest {})
                .await
                .is_ok_and(|s| s.get_ref().groups.iter().all(|g| g.leader.is_some()))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyring_faults_tampering_and_plaintext_channels_answer_with_their_reasons() {
    // Client APIs without TLS; eu alone accepts secrets over them.
    let mut cl = Cluster::new("[api_tls]\nplaintext = true\n");
    let text = std::fs::read_to_string(&cl.configs[0]).unwrap();
    std::fs::write(
        &cl.configs[0],
        text.replace(
            "keyring_file = \"keyring.toml\"\n",
            "keyring_file = \"keyring.toml\"\nallow_plaintext = true\n",
        ),
    )
    .unwrap();
    cl.start_all();
    for i in 0..3 {
        ready_plain(&cl, i).await;
    }
    let plain = |addr: &str| {
        let ch = meridian_proto::client::endpoint(&format!("http://{addr}"), None)
            .unwrap()
            .connect_lazy();
        meridian_proto::v1::config_client::ConfigClient::new(ch)
    };
    let mut eu = plain(&cl.grpc[0]);
    create_shop(&mut eu).await;
    eu.write(write(vec![secret_put("db.password", &json!("s3cret"))]))
        .await
        .unwrap();
    // us refuses a secret over plaintext (and stores nothing), not a plain value.
    let mut us = plain(&cl.grpc[1]);
    let e = us
        .write(write(vec![secret_put("db.other", &json!("s3cret2"))]))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "SECRET_NEEDS_TLS", "{e:?}");
    us.write(write(vec![common::put_op("plain", &json!(1))]))
        .await
        .unwrap();
    let e = us
        .get_config(GetConfigRequest {
            ns: ns(),
            path: "db.other".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "NOT_FOUND");

    // A tampered ciphertext (one byte flipped, written back through the raw
    // KV API): SECRET_CORRUPT, never garbage.
    let mut kv = meridian_proto::v1::kv_client::KvClient::new(
        meridian_proto::client::endpoint(&format!("http://{}", cl.grpc[0]), None)
            .unwrap()
            .connect_lazy(),
    );
    eu.write(write(vec![secret_put("tls.key", &json!("k"))]))
        .await
        .unwrap();
    let stored = kv
        .get(GetRequest {
            namespace: "shop/prod".into(),
            key: "tls.key".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut bytes = stored.kv.unwrap().value;
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    kv.put(PutRequest {
        namespace: "shop/prod".into(),
        key: "tls.key".into(),
        value: bytes,
        ..Default::default()
    })
    .await
    .unwrap();
    let e = get(&mut eu, "tls.key", true).await.unwrap_err();
    assert_eq!(reason(&e), "SECRET_CORRUPT", "{e:?}");
    // The raw KV API may not go around the engine: no plain bytes under a
    // secret's key, no write of the engine's own keys (the registry and the
    // marks would unmark secrets).
    let kv_writer = kv.clone();
    let kv_put = |key: &str, value: &[u8]| {
        let mut kv = kv_writer.clone();
        let req = PutRequest {
            namespace: "shop/prod".into(),
            key: key.into(),
            value: value.to_vec(),
            ..Default::default()
        };
        async move { kv.put(req).await }
    };
    let e = kv_put("tls.key", b"\"plain\"").await.unwrap_err();
    assert_eq!(reason(&e), "SECRET_NOT_SEALED", "{e:?}");
    for key in ["$secrets", "$secret_paths", "$schema:"] {
        let e = kv_put(key, b"[]").await.unwrap_err();
        assert_eq!(reason(&e), "RESERVED_KEY", "{key}: {e:?}");
    }
    let e = kv
        .delete(DeleteRequest {
            namespace: "shop/prod".into(),
            key: "$secrets".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "RESERVED_KEY", "{e:?}");
    // A plain key stays writable through it.
    kv_put("plain.kv", b"1").await.unwrap();
    // Without reveal it reads as a redaction like any secret.
    let v = get(&mut eu, "tls.key", false).await.unwrap();
    assert!(v.as_str().unwrap().starts_with("<redacted secret v"), "{v}");

    // No keyring in us: it serves everything else.
    cl.kill9(1);
    let cfg = std::fs::read_to_string(&cl.configs[1]).unwrap();
    std::fs::write(
        &cl.configs[1],
        cfg.replace(
            "keyring_file = \"keyring.toml\"",
            "keyring_file = \"absent.toml\"",
        ),
    )
    .unwrap();
    cl.start(1);
    ready_plain(&cl, 1).await;
    let mut us = plain(&cl.grpc[1]);
    assert_eq!(get(&mut us, "plain", false).await.unwrap(), json!(1));
    let v = get(&mut us, "db.password", false).await.unwrap();
    assert!(v.as_str().unwrap().starts_with("<redacted secret v"), "{v}");
    let e = get(&mut us, "db.password", true).await.unwrap_err();
    assert_eq!(reason(&e), "KEYRING_UNAVAILABLE", "{e:?}");
    assert!(e.message().contains("absent.toml"), "{e:?}");
    assert!(
        cl.log(1).contains("KEYRING_UNAVAILABLE"),
        "no error logged at start-up"
    );

    // A different keyring in us: told apart from a damaged secret.
    cl.kill9(1);
    let other = cl.dir().join("other.toml");
    meridian_node::secrets::keyring::FileKeyring::create(&other).unwrap();
    std::fs::write(
        &cl.configs[1],
        cfg.replace(
            "keyring_file = \"keyring.toml\"",
            "keyring_file = \"other.toml\"",
        ),
    )
    .unwrap();
    cl.start(1);
    ready_plain(&cl, 1).await;
    let mut us = plain(&cl.grpc[1]);
    let e = get(&mut us, "db.password", true).await.unwrap_err();
    assert_eq!(reason(&e), "KEYRING_UNAVAILABLE", "{e:?}");
    assert!(e.message().contains("different keyring"), "{e:?}");
    // eu, with the right keyring, still reveals it.
    assert_eq!(
        get(&mut eu, "db.password", true).await.unwrap(),
        json!("s3cret")
    );
    // Lifecycle: an expired version fails to reveal; `secrets list --due`
    // shows it and one past its rotation period, not the others.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for (key, spec) in [
        (
            "old.cert",
            SecretSpec {
                expires_at_ms: now - 1,
                rotate_every_ms: 0,
            },
        ),
        (
            "stale.token",
            SecretSpec {
                expires_at_ms: 0,
                rotate_every_ms: 1,
            },
        ),
        (
            "fresh.token",
            SecretSpec {
                expires_at_ms: now + 3_600_000,
                rotate_every_ms: 86_400_000,
            },
        ),
    ] {
        let op = ConfigOp {
            op: Some(config_op::Op::Put(PutOp {
                key: key.into(),
                value_json: json!("x").to_string(),
                if_version: None,
                secret: Some(spec),
            })),
        };
        eu.write(write(vec![op])).await.unwrap();
    }
    let e = get(&mut eu, "old.cert", true).await.unwrap_err();
    assert_eq!(reason(&e), "SECRET_EXPIRED", "{e:?}");
    assert_eq!(get(&mut eu, "fresh.token", true).await.unwrap(), json!("x"));
    // stale.token is due once 1 ms past its write (its write time is the
    // writing region's clock when the write began): poll for it.
    let list_due = || {
        let mut c = eu.clone();
        async move {
            c.list_secrets(ListSecretsRequest {
                ns: ns(),
                due_only: true,
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    until(Duration::from_secs(5), "stale.token is due", || async {
        list_due().await.secrets.len() == 2
    })
    .await;
    let due = list_due().await;
    let keys: Vec<&str> = due.secrets.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["old.cert", "stale.token"], "{due:?}");
    assert!(due.secrets[0].expired && due.secrets[1].due, "{due:?}");

    // A value that is a redaction cannot be written as a value.
    let e = eu
        .write(write(vec![common::put_op(
            "copy",
            &json!("<redacted secret v1>"),
        )]))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "INVALID_REQUEST", "{e:?}");
}

/// A Config client of `addr` presenting `token`.
async fn as_token(
    addr: &str,
    token: &str,
) -> meridian_proto::v1::config_client::ConfigClient<meridian_proto::client::AuthChannel> {
    let ch = meridian_proto::client::endpoint(addr, Some(&common::client_tls()))
        .unwrap()
        .connect_lazy();
    meridian_proto::v1::config_client::ConfigClient::new(meridian_proto::client::AuthChannel::new(
        ch,
        meridian_proto::client::Bearer::new(Some(token)).unwrap(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reveal_is_a_permission_through_grpc_http_and_templates() {
    let root = meridian_node::auth::tokens::generate("root");
    let mut cl = Cluster::new(&format!(
        "[auth]\nroot_token_sha256 = \"{}\"\n",
        meridian_node::auth::tokens::sha256_hex(&root)
    ));
    cl.start_all();
    let eu = cl.grpc[0].clone();
    let mut rootc = as_token(&eu, &root).await;
    until(Duration::from_secs(30), "eu serves root", || {
        let mut c = rootc.clone();
        async move {
            c.list_namespaces(ListNamespacesRequest::default())
                .await
                .is_ok()
        }
    })
    .await;
    for (p, e) in [("shop", "prod"), ("blog", "prod")] {
        rootc
            .create_namespace(CreateNamespaceRequest {
                project: p.into(),
                environment: e.into(),
                home_region: "eu".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut w = write(vec![
        secret_put("db.password", &json!("pw-shop")),
        secret_put("api.token", &json!("tok-shop")),
        common::put_op("app.dsn", &json!("postgres://u:${secret:db.password}@h")),
    ]);
    rootc.write(w.clone()).await.unwrap();
    w.ns = Some(NamespaceRef {
        project: "blog".into(),
        environment: "prod".into(),
    });
    w.ops = vec![secret_put("db.password", &json!("pw-blog"))];
    rootc.write(w).await.unwrap();

    let mut auth = meridian_proto::v1::auth_client::AuthClient::new({
        let ch = meridian_proto::client::endpoint(&eu, Some(&common::client_tls()))
            .unwrap()
            .connect_lazy();
        meridian_proto::client::AuthChannel::new(
            ch,
            meridian_proto::client::Bearer::new(Some(&root)).unwrap(),
        )
    });
    let roles = [
        (
            "shop-read",
            json!({"rules": [{"effect": "allow", "projects": ["shop"], "actions": ["read"]}]}),
        ),
        (
            "shop-db-reveal",
            json!({"rules": [{"effect": "allow", "projects": ["shop"], "actions": ["read"]},
                              {"effect": "allow", "projects": ["shop"], "keys": ["db.**"], "actions": ["reveal"]}]}),
        ),
        (
            "blog-all",
            json!({"rules": [{"effect": "allow", "projects": ["blog"], "actions": ["read", "reveal"]}]}),
        ),
        (
            "shop-write",
            json!({"rules": [{"effect": "allow", "projects": ["shop"], "actions": ["read", "write"]}]}),
        ),
    ];
    let mut tokens = std::collections::BTreeMap::new();
    for (name, rules) in roles {
        auth.put_role(PutRoleRequest {
            name: name.into(),
            rules_json: rules.to_string(),
        })
        .await
        .unwrap();
        let t = auth
            .create_token(CreateTokenRequest {
                principal: format!("p-{name}"),
                roles: vec![name.into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        tokens.insert(name, t.token);
    }
    let get_as = |token: String, path: &'static str, reveal: bool| {
        let eu = eu.clone();
        async move {
            let mut c = as_token(&eu, &token).await;
            c.get_config(GetConfigRequest {
                ns: ns(),
                path: path.into(),
                read: read(reveal, false, false),
                default_json: None,
            })
            .await
            .map(|r| serde_json::from_str::<Value>(&r.get_ref().value_json).unwrap())
        }
    };
    let redacted = |v: &Value| v.as_str().is_some_and(|s| s.contains("<redacted secret v"));

    // Read-only: reads redactions; a reveal of the secret is refused.
    let ro = tokens["shop-read"].clone();
    assert!(redacted(
        &get_as(ro.clone(), "db.password", false).await.unwrap()
    ));
    let e = get_as(ro.clone(), "db.password", true).await.unwrap_err();
    assert_eq!(reason(&e), "PERMISSION_DENIED", "{e:?}");
    // A subtree reveal shows what it may: nothing, here.
    let all = get_as(ro.clone(), "", true).await.unwrap();
    assert!(
        redacted(&all["db"]["password"]) && redacted(&all["api"]["token"]),
        "{all}"
    );
    // ${secret:} renders the redaction for it.
    let dsn = get_as(ro.clone(), "app.dsn", true).await.unwrap();
    assert!(redacted(&dsn), "{dsn}");
    let e = as_token(&eu, &ro)
        .await
        .config_history(ConfigHistoryRequest {
            ns: ns(),
            key: "db.password".into(),
            reveal: true,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "PERMISSION_DENIED", "{e:?}");

    // Reveal on db.** only.
    let dbr = tokens["shop-db-reveal"].clone();
    assert_eq!(
        get_as(dbr.clone(), "db.password", true).await.unwrap(),
        json!("pw-shop")
    );
    let e = get_as(dbr.clone(), "api.token", true).await.unwrap_err();
    assert_eq!(reason(&e), "PERMISSION_DENIED", "{e:?}");
    let all = get_as(dbr.clone(), "", true).await.unwrap();
    assert_eq!(all["db"]["password"], json!("pw-shop"), "{all}");
    assert!(redacted(&all["api"]["token"]), "{all}");
    assert_eq!(
        get_as(dbr.clone(), "app.dsn", true).await.unwrap(),
        json!("postgres://u:pw-shop@h")
    );
    // Without asking for reveal, even a revealer reads redactions.
    assert!(redacted(
        &get_as(dbr.clone(), "db.password", false).await.unwrap()
    ));

    // Another project's revealer: refused on shop.
    let blog = tokens["blog-all"].clone();
    let e = get_as(blog.clone(), "db.password", true).await.unwrap_err();
    assert_eq!(reason(&e), "PERMISSION_DENIED", "{e:?}");

    // Destroying a version needs delete on the key (write is not enough);
    // undeleting needs write.
    let writer = tokens["shop-write"].clone();
    for token in [&ro, &dbr, &blog, &writer] {
        let e = as_token(&eu, token)
            .await
            .destroy_secret_versions(DestroySecretVersionsRequest {
                ns: ns(),
                key: "db.password".into(),
                versions: vec![1],
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&e), "PERMISSION_DENIED", "{token}: {e:?}");
    }
    for token in [&ro, &dbr, &blog] {
        let e = as_token(&eu, token)
            .await
            .undelete_secret(UndeleteSecretRequest {
                ns: ns(),
                key: "db.password".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&e), "PERMISSION_DENIED", "{token}: {e:?}");
    }
    assert_eq!(
        get_as(dbr.clone(), "db.password", true).await.unwrap(),
        json!("pw-shop"),
        "a refused destroy destroyed"
    );
    // Marking paths secret is an environment setting: admin only.
    let e = as_token(&eu, &writer)
        .await
        .write(write(vec![secret_paths_op(&["app"], &[])]))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "PERMISSION_DENIED", "{e:?}");

    // HTTP: the same decisions.
    let http = common::http_client();
    // The metrics name every environment: a cluster-wide read.
    let metrics = format!("{}/metrics", cl.http[0]);
    for (token, status) in [(None, 401), (Some(&ro), 403), (Some(&root), 200)] {
        let mut rb = http.get(&metrics);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "/metrics as {token:?}");
    }
    let url = format!("{}/v1/config/shop/prod/db.password?reveal=true", cl.http[0]);
    for (token, status, want) in [
        (&ro, 403, None),
        (&blog, 403, None),
        (&dbr, 200, Some("pw-shop")),
        (&root, 200, Some("pw-shop")),
    ] {
        let r = http.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{token}");
        let body: Value = r.json().await.unwrap();
        match want {
            Some(v) => assert_eq!(body["value"], json!(v), "{body}"),
            None => assert_eq!(
                body["error"]["reason"],
                json!("PERMISSION_DENIED"),
                "{body}"
            ),
        }
    }
    let r = http
        .get(format!("{}/v1/config/shop/prod/db.password", cl.http[0]))
        .header("x-api-key", &dbr)
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert!(redacted(&body["value"]), "{body}");

    // Every reveal is audited, with keys and never values.
    let audit = meridian_proto::v1::audit_client::AuditClient::new({
        let ch = meridian_proto::client::endpoint(&eu, Some(&common::client_tls()))
            .unwrap()
            .connect_lazy();
        meridian_proto::client::AuthChannel::new(
            ch,
            meridian_proto::client::Bearer::new(Some(&root)).unwrap(),
        )
    });
    let mut audit = audit;
    until(
        Duration::from_secs(10),
        "the reveals are in the audit log",
        || {
            let mut a = audit.clone();
            async move {
                let r = a
                    .query(AuditQueryRequest {
                        action_prefix: "secret.reveal".into(),
                        principal: "p-shop-db-reveal".into(),
                        limit: 1000,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                r.records
                    .iter()
                    .any(|x| x.keys.contains(&"db.password".to_string()))
            }
        },
    )
    .await;
    let all = audit
        .query(AuditQueryRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    let text = format!("{all:?}");
    for s in ["pw-shop", "tok-shop", "pw-blog"] {
        assert!(!text.contains(s), "the audit log holds a secret: {s}");
    }
}

/// Environment `e{r}` of project shop, homed in region `r`.
fn env_of(r: usize) -> Option<NamespaceRef> {
    Some(NamespaceRef {
        project: "shop".into(),
        environment: format!("e{r}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kek_rotation_under_load_fails_nothing_and_the_old_kek_can_go() {
    let cl = Cluster::running().await;
    let mut c = common::config_client(&cl.grpc[0]).await;
    const KEYS: usize = 8;
    // One environment homed in each region, so the writers of the load do
    // not contend on one environment's revision (issue 18).
    for r in 0..3 {
        c.create_namespace(CreateNamespaceRequest {
            project: "shop".into(),
            environment: format!("e{r}"),
            home_region: ["eu", "us", "ap"][r].into(),
            ..Default::default()
        })
        .await
        .unwrap();
        for i in 0..KEYS {
            for n in 0..3 {
                let mut w = write(vec![secret_put(
                    &format!("s.k{i}"),
                    &json!(format!("val-{i}-{n}")),
                )]);
                w.ns = env_of(r);
                until(Duration::from_secs(10), "the first writes", || {
                    let (mut c, w) = (c.clone(), w.clone());
                    async move { c.write(w).await.is_ok() }
                })
                .await;
            }
        }
    }
    // Continuous load in every region: secret writes to its environment,
    // reveals of every environment. Every request must succeed, and every
    // reveal give a value that was written.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for r in 0..3 {
        let addr = cl.grpc[r].clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = common::config_client(&addr).await;
            let (mut writes, mut reads) = (0u64, 0u64);
            let mut n = 100 * (r as u64 + 1);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let i = (n as usize) % KEYS;
                n += 1;
                let mut w = write(vec![secret_put(
                    &format!("s.k{i}"),
                    &json!(format!("val-{i}-{n}")),
                )]);
                w.ns = env_of(r);
                c.write(w)
                    .await
                    .unwrap_or_else(|e| panic!("a write in region {r} failed: {e:?}"));
                writes += 1;
                let env = (n as usize) % 3;
                let v = c
                    .get_config(GetConfigRequest {
                        ns: env_of(env),
                        path: format!("s.k{i}"),
                        read: read(true, false, false),
                        default_json: None,
                    })
                    .await
                    .unwrap_or_else(|e| panic!("a reveal in region {r} failed: {e:?}"))
                    .into_inner();
                assert!(v.value_json.starts_with(&format!("\"val-{i}-")), "{v:?}");
                reads += 1;
            }
            (writes, reads)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let keyring = cl.dir().join("keyring.toml");
    // The procedure docs/secrets.md gives: add a version and let every
    // region load it; then make it active; then re-wrap.
    let ring = meridian_node::secrets::keyring::FileKeyring::add_version;
    assert_eq!(ring(&keyring).unwrap(), 2);
    let status = common::ok_at(&cl.grpc, &["secrets", "status", "--reload", "-o", "json"]);
    assert_eq!(status.matches("\"version\": 2").count(), 3, "{status}");
    meridian_node::secrets::keyring::FileKeyring::activate(&keyring, 2).unwrap();
    let out = common::ok_at(&cl.grpc, &["secrets", "rotate-kek"]);
    assert!(
        out.contains("every region holds every secret under v2"),
        "{out}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut writes, mut reads) = (0, 0);
    for t in tasks {
        let (w, r) = t.await.unwrap();
        writes += w;
        reads += r;
    }
    assert!(
        writes > 30 && reads > 30,
        "too little load: {writes} writes, {reads} reads"
    );
    eprintln!("during the rotation: {writes} secret writes and {reads} reveals, none failed");

    // Version 1 removed from the keyring (the file every region reads):
    // every version of every secret still reveals, in every region.
    meridian_node::secrets::keyring::FileKeyring::remove_below(&keyring, 2).unwrap();
    let status = common::ok_at(&cl.grpc, &["secrets", "status", "--reload", "-o", "json"]);
    let status: Value = serde_json::from_str(&status).unwrap();
    for r in status["regions"].as_array().unwrap() {
        assert_eq!(r["versions"].as_array().unwrap().len(), 1, "{r}");
        assert_eq!(
            r["by_kek"].as_object().unwrap().keys().collect::<Vec<_>>(),
            ["2"],
            "{r}"
        );
    }
    for r in 0..3 {
        let mut c = common::config_client(&cl.grpc[r]).await;
        for env in 0..3 {
            for i in 0..KEYS {
                let h = c
                    .config_history(ConfigHistoryRequest {
                        ns: env_of(env),
                        key: format!("s.k{i}"),
                        reveal: true,
                    })
                    .await
                    .unwrap_or_else(|e| panic!("region {r}, e{env} s.k{i}: {e:?}"))
                    .into_inner();
                assert!(!h.versions.is_empty());
                for v in h.versions {
                    assert!(v.value_json.contains(&format!("val-{i}-")), "{v:?}");
                }
            }
        }
    }
}

/// A put of a plain value.
fn plain_put(key: &str, v: &Value) -> ConfigOp {
    let mut op = secret_put(key, v);
    if let Some(config_op::Op::Put(p)) = &mut op.op {
        p.secret = None;
    }
    op
}

fn delete_op(key: &str) -> ConfigOp {
    ConfigOp {
        op: Some(config_op::Op::Delete(DeleteOp {
            key: key.into(),
            recursive: false,
            if_version: None,
        })),
    }
}

/// A key's history as (version, value as JSON text), oldest first.
async fn history(c: &mut ConfigClient, key: &str, reveal: bool) -> Vec<(u64, String)> {
    let h = c
        .config_history(ConfigHistoryRequest {
            ns: ns(),
            key: key.into(),
            reveal,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out: Vec<(u64, String)> = h
        .versions
        .iter()
        .map(|v| (v.version, v.value_json.clone()))
        .collect();
    out.sort();
    out
}

/// The wrapped data keys (unique per sealed version) in region `i`'s live
/// RocksDB records: the state, its snapshots and the log.
fn wrapped_deks(cl: &Cluster, i: usize) -> std::collections::BTreeSet<Vec<u8>> {
    // Envelope format 1: magic (6), KEK version (4), KEK check (8), wrapped
    // length (1), then the wrapped DEK (60).
    const MAGIC: &[u8] = b"\0MRDS1";
    let mut out = std::collections::BTreeSet::new();
    for (_, v) in meridian_node::storage::RocksStorage::raw_records(&cl.data_dir(i)).unwrap() {
        for at in 0..v.len().saturating_sub(79) {
            if &v[at..at + 6] == MAGIC {
                out.insert(v[at + 19..at + 79].to_vec());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn destroy_and_undelete_as_vault_kv_v2_has_them() {
    // Snapshots every 64 entries (once the log outweighs the last one).
    let mut cl = Cluster::new("[cluster]\ncompact_after_entries = 64\n");
    cl.start_all();
    for i in 0..3 {
        cl.wait_ready(i, Duration::from_secs(30)).await;
    }
    let eu = cl.grpc[0].clone();
    let mut c = common::config_client(&eu).await;
    create_shop(&mut c).await;
    let writer = c.clone();
    let w = |ops| {
        let mut c = writer.clone();
        async move { c.write(write(ops)).await.map(|r| r.into_inner()) }
    };
    w(vec![
        secret_put("old.token", &json!("tok-1")),
        secret_put("db.password", &json!("pw-1")),
        plain_put("plain", &json!("x")),
    ])
    .await
    .unwrap();
    w(vec![secret_put("db.password", &json!("pw-2"))])
        .await
        .unwrap();
    let kv = cl
        .client()
        .await
        .get(
            "shop/prod",
            "old.token",
            meridian_proto::v1::Consistency::Linearizable,
        )
        .await
        .unwrap();
    let old_dek = kv.kv.unwrap().value[19..79].to_vec();

    // Destroy, through the CLI: version 1 of old.token is gone for good.
    let (ok, out, err) = common::cli_at(
        &cl.grpc,
        &[
            "secrets",
            "destroy",
            "shop/prod",
            "old.token",
            "--versions",
            "1",
            "-o",
            "json",
        ],
    );
    assert!(ok, "destroy failed: {out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["destroyed"], json!([1]), "{v}");
    assert_eq!(
        get(&mut c, "old.token", false).await.unwrap(),
        json!("<destroyed secret v1>")
    );
    let e = get(&mut c, "old.token", true).await.unwrap_err();
    assert_eq!(reason(&e), "SECRET_DESTROYED", "{e:?}");
    // Idempotent, and it names what was destroyed before.
    let d = c
        .destroy_secret_versions(DestroySecretVersionsRequest {
            ns: ns(),
            key: "old.token".into(),
            versions: vec![1],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.destroyed, d.already_destroyed), (vec![], vec![1]));
    // Refusals, each with its reason and nothing destroyed.
    for (key, versions, want) in [
        ("plain", vec![1], "NOT_A_SECRET"),
        ("db.password", vec![9], "NOT_FOUND"),
        ("db.password", vec![], "INVALID_REQUEST"),
        ("db.password", vec![2, 9], "NOT_FOUND"),
    ] {
        let e = c
            .destroy_secret_versions(DestroySecretVersionsRequest {
                ns: ns(),
                key: key.into(),
                versions: versions.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&e), want, "{key} {versions:?}: {e:?}");
    }
    assert_eq!(
        get(&mut c, "db.password", true).await.unwrap(),
        json!("pw-2")
    );

    // Delete, then undelete through the CLI: the last version comes back
    // as a new one; with --version, an older one.
    w(vec![delete_op("db.password")]).await.unwrap();
    let (ok, out, err) = common::cli_at(
        &cl.grpc,
        &[
            "secrets",
            "undelete",
            "shop/prod",
            "db.password",
            "-m",
            "oops",
        ],
    );
    assert!(ok, "undelete failed: {out}{err}");
    assert_eq!(
        get(&mut c, "db.password", true).await.unwrap(),
        json!("pw-2")
    );
    assert_eq!(
        get(&mut c, "db.password", false).await.unwrap(),
        json!("<redacted secret v4>")
    );
    let undelete = |version: u64| {
        let mut c = writer.clone();
        async move {
            c.undelete_secret(UndeleteSecretRequest {
                ns: ns(),
                key: "db.password".into(),
                version,
                author: "t".into(),
                message: String::new(),
            })
            .await
        }
    };
    let e = undelete(0).await.unwrap_err();
    assert_eq!(reason(&e), "INVALID_REQUEST", "a live key: {e:?}");
    w(vec![delete_op("db.password")]).await.unwrap();
    undelete(1).await.unwrap();
    assert_eq!(
        get(&mut c, "db.password", true).await.unwrap(),
        json!("pw-1")
    );
    // A destroyed version cannot come back.
    w(vec![delete_op("old.token")]).await.unwrap();
    let e = c
        .undelete_secret(UndeleteSecretRequest {
            ns: ns(),
            key: "old.token".into(),
            version: 0,
            author: "t".into(),
            message: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "SECRET_DESTROYED", "{e:?}");
    // A revealed history shows every version, the destroyed one as such.
    let h = history(&mut c, "db.password", true).await;
    let values: Vec<&str> = h.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(
        values,
        ["\"pw-1\"", "\"pw-2\"", "", "\"pw-2\"", "", "\"pw-1\""],
        "{h:?}"
    );
    let h = history(&mut c, "old.token", true).await;
    assert_eq!(h[0], (1, "\"<destroyed secret v1>\"".to_string()), "{h:?}");

    // Snapshots taken from now on hold no trace of the destroyed version:
    // enough writes to the group for every region to take one and compact
    // its log, then every live record of every region.
    let kvc = cl.client().await;
    for i in 0..400 {
        kvc.put("eu", &format!("fill/{i:04}"), &[b'f'; 1024])
            .await
            .unwrap();
    }
    // The control: a live version's data key, which the scan must find.
    let live = kvc
        .get(
            "shop/prod",
            "db.password",
            meridian_proto::v1::Consistency::Linearizable,
        )
        .await
        .unwrap();
    let live_dek = live.kv.unwrap().value[19..79].to_vec();
    for i in 0..3 {
        cl.kill9(i);
    }
    for i in 0..3 {
        let deks = wrapped_deks(&cl, i);
        assert!(
            deks.contains(&live_dek),
            "region {i}: the scan misses a live version"
        );
        assert!(
            deks.len() >= 3,
            "region {i}: only {} sealed versions seen (the scan sees none?)",
            deks.len()
        );
        assert!(
            !deks.contains(&old_dek),
            "region {i} still holds the destroyed version's ciphertext"
        );
    }
}

fn env(e: &str) -> Option<NamespaceRef> {
    Some(NamespaceRef {
        project: "shop".into(),
        environment: e.into(),
    })
}

fn secret_paths_op(add: &[&str], remove: &[&str]) -> ConfigOp {
    ConfigOp {
        op: Some(config_op::Op::SecretPaths(SecretPathsOp {
            add: add.iter().map(|s| s.to_string()).collect(),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paths_marked_secret_seal_their_keys_here_and_where_inherited() {
    let cl = Cluster::running().await;
    let mut c = common::config_client(&cl.grpc[0]).await;
    for e in ["base", "prod"] {
        c.create_namespace(CreateNamespaceRequest {
            project: "shop".into(),
            environment: e.into(),
            home_region: "eu".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let w = |e: &'static str, ops: Vec<ConfigOp>| {
        let mut c = c.clone();
        async move {
            let mut req = write(ops);
            req.ns = env(e);
            c.write(req).await.map(|r| r.into_inner())
        }
    };
    let get_in = |e: &'static str, path: &'static str, reveal: bool| {
        let mut c = c.clone();
        async move {
            let r = c
                .get_config(GetConfigRequest {
                    ns: env(e),
                    path: path.into(),
                    read: read(reveal, false, false),
                    default_json: None,
                })
                .await
                .unwrap()
                .into_inner();
            serde_json::from_str::<Value>(&r.value_json).unwrap()
        }
    };
    let redacted = |v: &Value| {
        v.as_str()
            .is_some_and(|s| s.starts_with("<redacted secret v"))
    };
    w(
        "base",
        vec![
            plain_put("db.password", &json!("pw")),
            plain_put("app.name", &json!("shop")),
        ],
    )
    .await
    .unwrap();
    w(
        "prod",
        vec![ConfigOp {
            op: Some(config_op::Op::SetTemplate(SetTemplateOp {
                inherits: Some("base".into()),
                clear_inherits: false,
                vars_json: None,
            })),
        }],
    )
    .await
    .unwrap();

    // Marking db (through the CLI) seals the plain value already there in
    // the same write; keys written under it later are secrets too.
    let (ok, out, err) = common::cli_at(
        &cl.grpc,
        &["secrets", "paths", "shop/base", "--add", "db", "-o", "json"],
    );
    assert!(ok, "{out}{err}");
    assert!(redacted(&get_in("base", "db.password", false).await));
    assert_eq!(get_in("base", "db.password", true).await, json!("pw"));
    assert_eq!(get_in("base", "app.name", false).await, json!("shop"));
    w("base", vec![plain_put("db.user", &json!("u"))])
        .await
        .unwrap();
    assert!(redacted(&get_in("base", "db.user", false).await));
    // An inheriting environment's own keys under the path, too.
    w("prod", vec![plain_put("db.password", &json!("prod-pw"))])
        .await
        .unwrap();
    assert!(redacted(&get_in("prod", "db.password", false).await));
    assert_eq!(get_in("prod", "db.password", true).await, json!("prod-pw"));
    let (ok, out, err) = common::cli_at(&cl.grpc, &["secrets", "paths", "shop/prod", "-o", "json"]);
    assert!(ok, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&v["paths"], &v["inherited_paths"]),
        (&json!([]), &json!(["db"])),
        "{v}"
    );

    // Taking the mark off: keys that were secret stay so, new ones are plain.
    w("base", vec![secret_paths_op(&[], &["db"])])
        .await
        .unwrap();
    w(
        "base",
        vec![
            plain_put("db.password", &json!("pw2")),
            plain_put("db.port", &json!(5432)),
        ],
    )
    .await
    .unwrap();
    assert!(redacted(&get_in("base", "db.password", false).await));
    assert_eq!(get_in("base", "db.port", false).await, json!(5432));
    // Bad paths are refused, and nothing changes.
    let e = w("base", vec![secret_paths_op(&["db..x"], &[])])
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "INVALID_KEY", "{e:?}");
}

fn expiring_put(key: &str, v: &Value, expires_at_ms: u64) -> ConfigOp {
    let mut op = secret_put(key, v);
    if let Some(config_op::Op::Put(p)) = &mut op.op {
        p.secret = Some(SecretSpec {
            expires_at_ms,
            rotate_every_ms: 0,
        });
    }
    op
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watchers_are_told_before_a_secret_expires() {
    // Told 3 s ahead.
    let mut cl = Cluster::new("[secrets]\nkeyring_file = \"keyring.toml\"\nexpiry_warning_s = 3\n");
    meridian_node::secrets::keyring::FileKeyring::create(&cl.dir().join("keyring.toml")).unwrap();
    cl.start_all();
    for i in 0..3 {
        cl.wait_ready(i, Duration::from_secs(30)).await;
    }
    let mut c = common::config_client(&cl.grpc[0]).await;
    create_shop(&mut c).await;
    // Within the warning already when the watch starts: told in its first event.
    c.write(write(vec![
        expiring_put("old.token", &json!("o"), now_ms() + 2_000),
        expiring_put("far.token", &json!("f"), now_ms() + 3_600_000),
    ]))
    .await
    .unwrap();
    let mut stream = common::config_client(&cl.grpc[1])
        .await
        .watch_config(WatchConfigRequest {
            ns: ns(),
            path: String::new(),
            raw: false,
            resume_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let told = |ev: &WatchConfigEvent| -> Vec<(String, u64)> {
        ev.expiring
            .iter()
            .map(|x| (x.key.clone(), x.version))
            .collect()
    };
    async fn next(s: &mut tonic::Streaming<WatchConfigEvent>) -> WatchConfigEvent {
        tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream goes on")
    }
    let first = next(&mut stream).await;
    assert!(first.snapshot);
    assert_eq!(
        told(&first),
        vec![("old.token".to_string(), 1)],
        "{first:?}"
    );
    // A new version expiring in 5 s: its change now, its warning 3 s before
    // the expiry, in an event of its own; the far one is never told.
    let expires_at_ms = now_ms() + 5_000;
    c.write(write(vec![expiring_put(
        "a.token",
        &json!("a"),
        expires_at_ms,
    )]))
    .await
    .unwrap();
    let change = next(&mut stream).await;
    assert_eq!(change.changes.len(), 1, "{change:?}");
    assert!(change.expiring.is_empty(), "told too early: {change:?}");
    let warning = next(&mut stream).await;
    let at = now_ms();
    assert_eq!(
        told(&warning),
        vec![("a.token".to_string(), 1)],
        "{warning:?}"
    );
    assert!(warning.changes.is_empty(), "{warning:?}");
    assert_eq!(warning.expiring[0].expires_at_ms, expires_at_ms);
    assert!(
        at + 3_000 >= expires_at_ms && at < expires_at_ms,
        "told {} ms before the expiry, not about 3,000",
        expires_at_ms as i64 - at as i64
    );

    // The metrics: a secret past its rotation period shows as due, the
    // expired one as expired, parsed by an OpenMetrics parser.
    let mut rot = secret_put("rot.token", &json!("r"));
    if let Some(config_op::Op::Put(p)) = &mut rot.op {
        p.secret = Some(SecretSpec {
            expires_at_ms: 0,
            rotate_every_ms: 1,
        });
    }
    c.write(write(vec![rot])).await.unwrap();
    let text = common::http_client()
        .get(format!("{}/metrics", cl.http[0]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let m = openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("not OpenMetrics ({e:?}):\n{text}"));
    let gauge = |family: &str, label: (&str, &str)| -> f64 {
        let f = m
            .families
            .get(family)
            .unwrap_or_else(|| panic!("no family {family} in:\n{text}"));
        assert_eq!(f.family_type, openmetrics_parser::OpenMetricsType::Gauge);
        let sample = f
            .iter_samples()
            .find(|s| {
                s.get_labelset()
                    .is_ok_and(|l| l.get_label_value(label.0) == Some(label.1))
            })
            .unwrap_or_else(|| panic!("no {family}{{{}={}}} in:\n{text}", label.0, label.1));
        match &sample.value {
            openmetrics_parser::OpenMetricsValue::Gauge(n) => n.as_f64(),
            other => panic!("{family}: {other:?}"),
        }
    };
    let ns = ("namespace", "shop/prod");
    assert_eq!(gauge("meridian_secrets", ns), 4.0, "{text}");
    assert_eq!(gauge("meridian_secrets_rotation_due", ns), 1.0, "{text}");
    assert!(gauge("meridian_secrets_expired", ns) >= 1.0, "{text}");
    assert_eq!(
        gauge("meridian_secret_versions", ("kek_version", "1")),
        4.0,
        "{text}"
    );
    let loaded = m.families["meridian_secrets_keyring_loaded"]
        .iter_samples()
        .next()
        .map(|s| match &s.value {
            openmetrics_parser::OpenMetricsValue::Gauge(n) => n.as_f64(),
            _ => -1.0,
        });
    assert_eq!(loaded, Some(1.0), "{text}");
}
