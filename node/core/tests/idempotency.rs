//! Idempotent writes (issue 19, item 1): a request id retried with the same
//! write learns the first result; reused for a different write it is refused
//! with `IdempotencyKeyReused` and nothing is written, at the leader, through
//! a forwarding region, while the first write is still in flight, and after
//! leadership moved to a region that only applied the first write.
//!
//! Three cores on the tiny in-memory network of `common/`.

mod common;

use common::Net;
use meridian_core::*;

const NS: &str = "r0-quorum";

fn settled() -> Net {
    let mut net = Net::new(3);
    net.run_until(8_000_000);
    assert_eq!(net.leader(1, 0), Some(0), "group 0 is led from home");
    net
}

fn written(resp: Option<&ClientResponse>) -> (Vec<u64>, RevisionToken) {
    match resp {
        Some(ClientResponse::Written {
            versions, token, ..
        }) => (versions.clone(), *token),
        other => panic!("expected Written, got {other:?}"),
    }
}

fn value_of(net: &mut Net, at: NodeId, req: RequestId, key: &str) -> Option<Vec<u8>> {
    let now = net.now;
    net.nodes[at as usize].handle_client(now, req, common::get(NS, key));
    net.run_until(net.now + 500_000);
    match net.reply(at, req) {
        Some(ClientResponse::Value { kv, .. }) => kv.value.clone(),
        other => panic!("read of {key} answered {other:?}"),
    }
}

fn refused_as_reused(resp: Option<&ClientResponse>) -> bool {
    matches!(
        resp,
        Some(ClientResponse::Error(ErrorCode::IdempotencyKeyReused))
    )
}

#[test]
fn a_retry_replays_and_a_reuse_is_refused_in_every_region() {
    let mut net = settled();
    let now = net.now;
    net.nodes[0].handle_client(now, 1, common::put_with_id(NS, "k", b"1", 77));
    net.run_until(net.now + 500_000);
    let (versions, token) = written(net.reply(0, 1));
    assert_eq!(versions, vec![1]);

    // A true retry, from every region: the first result, nothing new.
    for (at, req) in [(0, 2), (1, 3), (2, 4)] {
        let now = net.now;
        net.nodes[at as usize].handle_client(now, req, common::put_with_id(NS, "k", b"1", 77));
        net.run_until(net.now + 500_000);
        let (v, t) = written(net.reply(at, req));
        assert_eq!((v, t), (vec![1], token), "retry at node {at}");
    }
    // The same id for another write, from every region: refused.
    for (at, req) in [(0, 5), (1, 6), (2, 7)] {
        let now = net.now;
        net.nodes[at as usize].handle_client(now, req, common::put_with_id(NS, "j", b"7", 77));
        net.run_until(net.now + 500_000);
        assert!(
            refused_as_reused(net.reply(at, req)),
            "reuse at node {at} answered {:?}",
            net.reply(at, req)
        );
        // Same key, other value: refused too.
        let now = net.now;
        net.nodes[at as usize].handle_client(
            now,
            req + 100,
            common::put_with_id(NS, "k", b"2", 77),
        );
        net.run_until(net.now + 500_000);
        assert!(refused_as_reused(net.reply(at, req + 100)));
    }
    assert_eq!(
        value_of(&mut net, 1, 10, "j"),
        None,
        "the reused write wrote nothing"
    );
    assert_eq!(value_of(&mut net, 1, 11, "k"), Some(b"1".to_vec()));
}

#[test]
fn a_reuse_while_the_first_write_is_in_flight_is_refused() {
    let mut net = settled();
    let now = net.now;
    // Both reach the leader before the first commits (1 ms per hop).
    net.nodes[0].handle_client(now, 1, common::put_with_id(NS, "k", b"1", 5));
    net.nodes[0].handle_client(now, 2, common::put_with_id(NS, "k", b"1", 5));
    net.nodes[0].handle_client(now, 3, common::put_with_id(NS, "other", b"9", 5));
    net.run_until(net.now + 500_000);
    let first = written(net.reply(0, 1));
    assert_eq!(
        written(net.reply(0, 2)),
        first,
        "a retry in flight joins the first"
    );
    assert!(
        refused_as_reused(net.reply(0, 3)),
        "a reuse in flight answered {:?}",
        net.reply(0, 3)
    );
    assert_eq!(value_of(&mut net, 0, 4, "other"), None);
}

#[test]
fn a_new_leader_refuses_a_reuse_of_an_id_it_only_applied() {
    let mut net = settled();
    let now = net.now;
    net.nodes[0].handle_client(now, 1, common::put_with_id(NS, "k", b"1", 42));
    net.run_until(net.now + 500_000);
    let first = written(net.reply(0, 1));
    // Hand group 0 to node 1: it learned the write only by replication.
    let now = net.now;
    net.nodes[0].handle_client(now, 2, ClientRequest::TransferLeader { group: 0, to: 1 });
    let deadline = net.now + 5_000_000;
    while net.leader(1, 0) != Some(1) || net.leader(2, 0) != Some(1) {
        assert!(
            net.now < deadline,
            "node 1 leads group 0 after the transfer"
        );
        net.run_until(net.now + 10_000);
    }
    let now = net.now;
    net.nodes[1].handle_client(now, 3, common::put_with_id(NS, "k", b"1", 42));
    net.nodes[2].handle_client(now, 4, common::put_with_id(NS, "j", b"7", 42));
    net.run_until(net.now + 500_000);
    assert_eq!(
        written(net.reply(1, 3)),
        first,
        "the new leader replays a retry"
    );
    assert!(
        refused_as_reused(net.reply(2, 4)),
        "the new leader refuses a reuse: {:?}",
        net.reply(2, 4)
    );
}

/// An async namespace answers a write once it is durable at the leader,
/// before it commits. A retry arriving between the answer and the commit
/// (its answer was lost on the way) used to find no trace of the first copy
/// and wrote a second one (found by the simulator's retrying clients).
#[test]
fn a_retry_of_an_async_write_answered_before_commit_gets_the_same_answer() {
    let mut net = settled();
    let ns = "r0-async";
    // The leader cannot replicate for now: the write stays uncommitted.
    net.cut.insert(1);
    net.cut.insert(2);
    let now = net.now;
    net.nodes[0].handle_client(now, 10, common::put_with_id(ns, "a", b"1", 91));
    net.run_until(net.now + 10_000);
    let first = written(net.reply(0, 10));
    assert_eq!(
        net.nodes[0].applied_revision(0),
        first.1.revision - 1,
        "not applied yet"
    );
    // The retry, same id: the same answer, no second copy.
    let now = net.now;
    net.nodes[0].handle_client(now, 11, common::put_with_id(ns, "a", b"1", 91));
    net.run_until(net.now + 10_000);
    assert_eq!(
        written(net.reply(0, 11)),
        first,
        "the retry learns the first answer"
    );
    net.cut.clear();
    net.run_until(net.now + 2_000_000);
    let history: Vec<u64> = net.nodes[0]
        .history(ns, "a")
        .iter()
        .map(|kv| kv.version)
        .collect();
    assert_eq!(history, vec![1], "one version: the write applied once");
}
