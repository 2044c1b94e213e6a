//! Moving an environment's home region online, against a real 3-region
//! cluster: a writer keeps writing through another region during the move and
//! every acknowledged write survives; history, as-of reads and a watch carry
//! across the move (and back again); bad moves get clear errors.

// Test helpers fail the test by panicking; that is what unwrap is for here.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{config_client as client, reason, Cluster};
use meridian_proto::v1::*;
use serde_json::{json, Value};

type C = common::ConfigClient;

fn ns() -> Option<NamespaceRef> {
    Some(NamespaceRef {
        project: "shop".into(),
        environment: "prod".into(),
    })
}

async fn put(c: &mut C, key: &str, v: Value) -> Result<ConfigWriteResponse, tonic::Status> {
    c.write(ConfigWriteRequest {
        ns: ns(),
        ops: vec![ConfigOp {
            op: Some(config_op::Op::Put(PutOp {
                key: key.into(),
                value_json: v.to_string(),
                if_version: None,
                secret: None,
            })),
        }],
        author: "mover-test".into(),
        message: format!("set {key}"),
        idempotency_key: String::new(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn get(c: &mut C, path: &str, revision: u64) -> Value {
    let r = c
        .get_config(GetConfigRequest {
            ns: ns(),
            path: path.into(),
            read: Some(ConfigReadOptions {
                raw: true,
                revision,
                ..Default::default()
            }),
            default_json: None,
        })
        .await
        .unwrap()
        .into_inner();
    serde_json::from_str(&r.value_json).unwrap()
}

async fn move_to(c: &mut C, region: &str) -> Result<NamespaceInfo, tonic::Status> {
    c.move_namespace(MoveNamespaceRequest {
        project: "shop".into(),
        environment: "prod".into(),
        home_region: region.into(),
    })
    .await
    .map(|r| r.into_inner())
}

/// Next watch event, within a bound.
async fn next_event(s: &mut tonic::Streaming<WatchConfigEvent>) -> WatchConfigEvent {
    tokio::time::timeout(Duration::from_secs(20), s.message())
        .await
        .expect("a watch event in time")
        .unwrap()
        .expect("the watch stream stays open")
}

/// Events until `key` shows `want`; returns the last event's token.
async fn watch_until(
    s: &mut tonic::Streaming<WatchConfigEvent>,
    key: &str,
    want: &Value,
) -> String {
    loop {
        let e = next_event(s).await;
        let seen = e.changes.iter().any(|c| {
            c.key == key && serde_json::from_str::<Value>(&c.value_json).ok().as_ref() == Some(want)
        });
        if seen {
            return e.token;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_environment_moves_home_online_and_loses_nothing() {
    let cl = Cluster::running().await;
    let mut eu = client(&cl.grpc[0]).await;
    let mut us = client(&cl.grpc[1]).await;
    let mut ap = client(&cl.grpc[2]).await;
    let i = eu
        .create_namespace(CreateNamespaceRequest {
            project: "shop".into(),
            environment: "prod".into(),
            home_region: "eu".into(),
            history_versions_max: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(i.home_region, "eu");

    // Before the move: a few versions of a key and a subtree.
    let mut before = 0;
    for v in 1..=3 {
        before = put(&mut eu, "db.pool", json!(v * 10))
            .await
            .unwrap()
            .revision;
    }
    put(&mut eu, "db.url", json!("postgres://a")).await.unwrap();

    // A watch from a region that is neither the old nor the new home.
    let mut watch = us
        .watch_config(WatchConfigRequest {
            ns: ns(),
            path: "db".into(),
            raw: true,
            resume_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut watch).await;
    assert!(first.snapshot, "the first event holds the whole state");
    let token_before = first.token.clone();

    // A writer through us that keeps going during the move; it records every
    // value acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut c = client(&cl.grpc[1]).await;
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut refused = Vec::new();
            let mut n = 0u64;
            let mut slowest = Duration::ZERO;
            // Bounded so the key's history (1000 versions) holds them all.
            while !stop.load(Ordering::Relaxed) && n < 900 {
                n += 1;
                let t = std::time::Instant::now();
                match put(&mut c, "counter", json!(n)).await {
                    Ok(_) => acked.push(n),
                    Err(e) => refused.push((n, reason(&e))),
                }
                slowest = slowest.max(t.elapsed());
            }
            (acked, refused, slowest)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t0 = std::time::Instant::now();
    let moved = move_to(&mut ap, "ap").await.unwrap();
    println!("move eu -> ap took {:?}", t0.elapsed());
    assert_eq!(moved.home_region, "ap");
    assert_eq!(
        moved.moving_to_region, None,
        "the call returns once the move is done"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, refused, slowest) = writer.await.unwrap();
    println!(
        "writer across the move: {} acknowledged, {} refused {refused:?}, slowest write {slowest:?}",
        acked.len(),
        refused.len()
    );
    assert!(
        acked.len() >= 5,
        "writes went on across the move: {} acknowledged, refused {refused:?}",
        acked.len()
    );
    // Writes during the move stall and are retried inside the node; any that
    // still fail say why, and never applied (checked below by the history).
    for (_, r) in &refused {
        assert!(
            matches!(r.as_str(), "NAMESPACE_MOVING" | "UNAVAILABLE" | "TIMEOUT"),
            "{r}"
        );
    }
    let last = *acked.last().unwrap();
    for c in [&mut eu, &mut us, &mut ap] {
        assert_eq!(
            get(c, "counter", 0).await,
            json!(last),
            "every region reads the last write"
        );
    }
    let hist = eu
        .config_history(ConfigHistoryRequest {
            ns: ns(),
            key: "counter".into(),
            reveal: false,
        })
        .await
        .unwrap()
        .into_inner();
    let values: Vec<u64> = hist
        .versions
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(&e.value_json)
                .unwrap()
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        values, acked,
        "the history holds every acknowledged write, in order"
    );
    for (n, _) in &refused {
        assert!(!values.contains(n), "refused write {n} applied");
    }
    let pool = eu
        .config_history(ConfigHistoryRequest {
            ns: ns(),
            key: "db.pool".into(),
            reveal: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pool.versions.len(), 3, "history moved with the data");
    assert_eq!(pool.versions[0].author, "mover-test");
    assert_eq!(pool.versions[2].message, "set db.pool");
    // As-of reads keep their meaning: revisions only grow across a move.
    assert_eq!(get(&mut ap, "db.pool", before).await, json!(30));

    // The watch (in us) follows the namespace to its new home.
    let after = put(&mut ap, "db.pool", json!(99)).await.unwrap();
    assert!(after.revision > before, "revisions only grow across a move");
    let token_after = watch_until(&mut watch, "db.pool", &json!(99)).await;
    drop(watch);
    // Resuming a pre-move token in another region delivers exactly what
    // changed since (not a full snapshot).
    let mut resumed = eu
        .watch_config(WatchConfigRequest {
            ns: ns(),
            path: "db".into(),
            raw: true,
            resume_token: token_before,
        })
        .await
        .unwrap_or_else(|e| panic!("resume failed: {e:?}\nlog of eu:\n{}", cl.log(0)))
        .into_inner();
    let e = next_event(&mut resumed).await;
    assert!(!e.snapshot, "a resume is a delta");
    let keys: Vec<&str> = e.changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["db.pool"], "only db.pool changed since the token");
    assert!(!token_after.is_empty());

    // And back again (the old home adopts it anew).
    let back = move_to(&mut us, "eu").await.unwrap();
    assert_eq!(back.home_region, "eu");
    put(&mut us, "db.pool", json!(100)).await.unwrap();
    assert_eq!(get(&mut ap, "db.pool", 0).await, json!(100));
    assert_eq!(get(&mut eu, "db.url", 0).await, json!("postgres://a"));
    assert_eq!(get(&mut ap, "db.pool", before).await, json!(30));
    let l = eu
        .list_namespaces(ListNamespacesRequest {
            project: "shop".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.namespaces[0].home_region, "eu");
    // Moving to where it already is answers at once.
    assert_eq!(move_to(&mut ap, "eu").await.unwrap().home_region, "eu");

    // Bad moves.
    let e = move_to(&mut eu, "mars").await.unwrap_err();
    assert_eq!(reason(&e), "INVALID_REQUEST");
    let e = eu
        .move_namespace(MoveNamespaceRequest {
            project: "shop".into(),
            environment: "nope".into(),
            home_region: "us".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "UNKNOWN_NAMESPACE");
    assert_eq!(
        get(&mut eu, "db.pool", 0).await,
        json!(100),
        "bad moves change nothing"
    );
}
