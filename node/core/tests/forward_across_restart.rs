//! Forwarded requests across a restart of the forwarding node (issue 20).
//!
//! A shell numbers its requests from 1 again after every restart. The
//! leader's duplicate filter for forwards must therefore tell a restarted
//! peer's new request from a duplicate of its earlier life's request with the
//! same id, and a reply meant for the earlier life must never answer the new
//! request that reuses its id. Both held only by accident of timing before:
//! a region restarted a few times in a minute had its forwards dropped as
//! duplicates for minutes.
//!
//! Three cores on the tiny in-memory network of `common/`.

mod common;

use common::Net;
use meridian_core::*;

fn write(key: &str, value: &[u8]) -> ClientRequest {
    common::put("r0-quorum", key, value)
}

fn read(key: &str) -> ClientRequest {
    common::get("r0-quorum", key)
}

fn value_of(resp: Option<&ClientResponse>) -> Option<Vec<u8>> {
    match resp {
        Some(ClientResponse::Value { kv, .. }) => kv.value.clone(),
        _ => None,
    }
}

/// A settled three-region cluster in which node 1 forwards group 0's
/// requests to node 0, its leader.
fn settled() -> Net {
    let mut net = Net::new(3);
    net.run_until(8_000_000);
    assert_eq!(net.leader(1, 0), Some(0), "group 0 is led from home");
    net
}

#[test]
fn a_restarted_node_reusing_request_ids_is_not_taken_for_a_duplicate() {
    let mut net = settled();
    // Node 1's first life forwards requests 1..=20.
    for id in 1..=20 {
        let now = net.now;
        net.nodes[1].handle_client(now, id, write(&format!("k{id}"), b"first life"));
    }
    net.run_until(net.now + 500_000);
    for id in 1..=20 {
        assert!(
            matches!(net.reply(1, id), Some(ClientResponse::Written { .. })),
            "first life: forwarded write {id} answered {:?}",
            net.reply(1, id)
        );
    }
    // Restart node 1 (a new process, a new seed: its shell numbers from 1 again).
    net.restart_until_leader_known(1, 12, 0);
    net.replies.clear();
    for id in 1..=20 {
        let now = net.now;
        net.nodes[1].handle_client(now, id, read(&format!("k{id}")));
    }
    // Well within the request timeout (5 s): a dropped forward would only be
    // answered by that timeout.
    net.run_until(net.now + 500_000);
    for id in 1..=20 {
        assert_eq!(
            value_of(net.reply(1, id)),
            Some(b"first life".to_vec()),
            "second life: forwarded read {id} answered {:?}",
            net.reply(1, id)
        );
    }
}

#[test]
fn a_reply_meant_for_an_earlier_life_does_not_answer_a_new_request() {
    let mut net = settled();
    let now = net.now;
    net.nodes[0].handle_client(now, 100, write("old", b"old value"));
    net.nodes[0].handle_client(now, 101, write("new", b"new value"));
    net.run_until(net.now + 500_000);
    // First life of node 1: request 7 reads "old"; keep the reply it got.
    net.forward_replies.clear();
    let now = net.now;
    net.nodes[1].handle_client(now, 7, read("old"));
    net.run_until(net.now + 500_000);
    assert_eq!(value_of(net.reply(1, 7)), Some(b"old value".to_vec()));
    let stale = net
        .forward_replies
        .iter()
        .find(|(to, _)| *to == 1)
        .map(|(_, b)| b.clone())
        .expect("node 0 replied to node 1's forward");

    net.restart_until_leader_known(1, 13, 0);
    net.replies.clear();
    // Second life: request 7 reads "new"; the first life's reply arrives late
    // (say, queued in a transport across the restart) before the real one.
    let now = net.now;
    net.nodes[1].handle_client(now, 7, read("new"));
    net.nodes[1]
        .handle_message(now, 0, &stale)
        .expect("a stale reply is not malformed");
    net.pump();
    assert_eq!(
        net.reply(1, 7),
        None,
        "the earlier life's reply answered the new request"
    );
    assert_eq!(net.nodes[1].stats().stale_forward_replies, 1);
    net.run_until(net.now + 500_000);
    assert_eq!(value_of(net.reply(1, 7)), Some(b"new value".to_vec()));
}
