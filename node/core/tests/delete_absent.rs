//! A delete of a key that does not exist changes nothing (issue 19, item 2):
//! no revision, no version, no history, and the reply says nothing was
//! deleted (etcd's `deleted: 0`). A delete of a live key deletes it once.
//!
//! Three cores on the tiny in-memory network of `common/`.

mod common;

use common::Net;
use meridian_core::*;

const NS: &str = "r0-quorum";

fn delete(key: &str) -> ClientRequest {
    common::write_ops(NS, vec![WriteOp::Delete { key: key.into() }], 0)
}

fn ask(net: &mut Net, at: NodeId, req: RequestId, r: ClientRequest) -> ClientResponse {
    let now = net.now;
    net.nodes[at as usize].handle_client(now, req, r);
    net.run_until(net.now + 500_000);
    net.reply(at, req).cloned().expect("answered within 0.5 s")
}

fn history_len(net: &mut Net, at: NodeId, req: RequestId, key: &str) -> usize {
    let r = ClientRequest::Read {
        ns: NS.into(),
        query: ReadQuery::History { key: key.into() },
        consistency: Consistency::Linearizable,
        token: None,
    };
    match ask(net, at, req, r) {
        ClientResponse::History { versions, .. } => versions.len(),
        other => panic!("history answered {other:?}"),
    }
}

#[test]
fn deleting_an_absent_key_writes_nothing_at_the_leader_and_through_a_forwarder() {
    let mut net = Net::new(3);
    net.run_until(8_000_000);
    let before = net.nodes[0]
        .group_status(0)
        .expect("group 0")
        .applied_revision;
    for (at, req) in [(0, 1), (1, 2), (2, 3)] {
        match ask(&mut net, at, req, delete("never")) {
            ClientResponse::Unchanged { versions, .. } => assert_eq!(versions, vec![0]),
            other => panic!("delete of an absent key at node {at} answered {other:?}"),
        }
    }
    assert_eq!(history_len(&mut net, 1, 4, "never"), 0, "no history");
    let after = net.nodes[0]
        .group_status(0)
        .expect("group 0")
        .applied_revision;
    assert_eq!(after, before, "no revision was made");

    // A live key: deleted once (version 2, one deletion), then absent.
    assert!(matches!(
        ask(&mut net, 1, 5, common::put(NS, "k", b"v")),
        ClientResponse::Written { deleted: 0, .. }
    ));
    match ask(&mut net, 2, 6, delete("k")) {
        ClientResponse::Written {
            versions, deleted, ..
        } => assert_eq!((versions, deleted), (vec![2], 1)),
        other => panic!("delete of a live key answered {other:?}"),
    }
    match ask(&mut net, 0, 7, delete("k")) {
        ClientResponse::Unchanged { versions, .. } => assert_eq!(versions, vec![2]),
        other => panic!("a second delete answered {other:?}"),
    }
    assert_eq!(history_len(&mut net, 2, 8, "k"), 2, "put and one delete");
}

#[test]
fn a_transaction_deletes_only_live_keys_and_counts_them() {
    let mut net = Net::new(3);
    net.run_until(8_000_000);
    ask(&mut net, 0, 1, common::put(NS, "a", b"1"));
    let ops = vec![
        WriteOp::Delete { key: "a".into() },
        WriteOp::Delete {
            key: "absent".into(),
        },
        WriteOp::Put {
            key: "b".into(),
            value: b"2".to_vec(),
        },
    ];
    let txn = common::write_ops(NS, ops, 0);
    match ask(&mut net, 1, 2, txn) {
        ClientResponse::Written {
            versions, deleted, ..
        } => assert_eq!((versions, deleted), (vec![2, 0, 1], 1)),
        other => panic!("transaction answered {other:?}"),
    }
    assert_eq!(history_len(&mut net, 0, 3, "absent"), 0);
}
