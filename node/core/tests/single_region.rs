//! A one-region cluster is its own majority: it elects itself, commits alone,
//! holds a lease and serves linearizable reads (no peer will ever acknowledge
//! a heartbeat round, so the round must complete as it starts).

mod common;

use meridian_core::storage::Durable;
use meridian_core::*;

/// Run the node alone: complete every persist, fire every timer, until
/// `until_us`; collect replies.
fn run(node: &mut Node, from_us: u64, until_us: u64, replies: &mut Vec<(u64, ClientResponse)>) {
    let mut now = from_us;
    let mut actions = Vec::new();
    let mut timer = Some(now);
    while now <= until_us {
        node.drain_actions(&mut actions);
        let mut progressed = false;
        for a in actions.drain(..) {
            match a {
                Action::Persist { id, .. } => {
                    node.handle_persisted(now, id);
                    progressed = true;
                }
                Action::SetTimer { at_us } => timer = Some(at_us),
                Action::Reply { req, resp } => replies.push((req, resp)),
                _ => {}
            }
        }
        if progressed {
            continue;
        }
        let Some(t) = timer.take() else { break };
        now = t.max(now);
        node.handle_timeout(now);
    }
}

#[test]
fn single_region_serves_linearizable_reads() {
    let cfg = Config::new(1);
    let mut node = Node::new(cfg, 0, Durable::new(1), 0, 7).expect("node");
    let mut replies = Vec::new();
    run(&mut node, 0, 3_000_000, &mut replies);
    assert!(node.is_leader(0), "a single region elects itself");
    node.handle_client(3_000_000, 1, common::put_with_id("r0-quorum", "k", b"v", 9));
    run(&mut node, 3_000_000, 3_500_000, &mut replies);
    assert!(
        matches!(
            replies.iter().find(|(r, _)| *r == 1),
            Some((_, ClientResponse::Written { .. }))
        ),
        "the write commits alone: {replies:?}"
    );
    node.handle_client(
        3_500_000,
        2,
        ClientRequest::Read {
            ns: "r0-quorum".into(),
            query: ReadQuery::Get { key: "k".into() },
            consistency: Consistency::Linearizable,
            token: None,
        },
    );
    run(&mut node, 3_500_000, 4_500_000, &mut replies);
    let read = replies
        .iter()
        .find(|(r, _)| *r == 2)
        .map(|(_, resp)| resp.clone());
    match read {
        Some(ClientResponse::Value { kv, .. }) => assert_eq!(kv.value.as_deref(), Some(&b"v"[..])),
        other => panic!("linearizable read answered {other:?} within 1 s"),
    }
}

/// Writes `n` new 1 KB keys one at a time; returns how many snapshots the
/// node took.
fn snapshots_taken(pct: u64, n: u64) -> usize {
    let mut cfg = Config::new(1);
    cfg.compact_after_entries = 10;
    cfg.compact_log_pct_of_snapshot_min = pct;
    let mut node = Node::new(cfg, 0, Durable::new(1), 0, 7).expect("node");
    let mut replies = Vec::new();
    run(&mut node, 0, 3_000_000, &mut replies);
    let mut snapshots = 0;
    let mut now = 3_000_000;
    for i in 0..n {
        node.handle_client(
            now,
            100 + i,
            common::put("r0-quorum", &format!("k{i:04}"), &[b'v'; 1024]),
        );
        // Complete persists until the write is answered, counting snapshots.
        let mut actions = Vec::new();
        for _ in 0..100 {
            node.drain_actions(&mut actions);
            if actions.is_empty() {
                break;
            }
            for a in actions.drain(..) {
                if let Action::Persist { id, ops, .. } = a {
                    snapshots += ops
                        .iter()
                        .filter(|o| matches!(o, storage::StorageOp::Snapshot { .. }))
                        .count();
                    node.handle_persisted(now, id);
                }
            }
        }
        now += 1_000;
    }
    snapshots
}

#[test]
fn snapshots_are_amortised_over_the_bytes_written() {
    // Every write adds a key, so the state grows with the log. Compacting
    // every 10 entries re-encodes the whole state each time (quadratic);
    // waiting until the log is as big as the last snapshot makes the
    // intervals double (a logarithmic count).
    let by_entries = snapshots_taken(0, 320);
    let by_size = snapshots_taken(100, 320);
    assert!(by_entries >= 30, "entries only: {by_entries} snapshots");
    assert!(
        (3..=8).contains(&by_size),
        "size rule: {by_size} snapshots (entries only took {by_entries})"
    );
}
