//! What the handler tests beside each file share: a node built from a
//! chosen durable state, stepped by calling handlers directly.

use super::*;

/// Node `id` of a 3-region cluster whose group 0 holds `terms` as entries
/// 1, 2, ... (each a no-op of that term) and is at `term`.
pub(super) fn node_with_log(id: NodeId, term: u64, terms: &[u64]) -> Node {
    let mut d = Durable::new(3);
    d.groups[0].term = term;
    d.groups[0].entries = terms
        .iter()
        .enumerate()
        .map(|(i, &t)| Entry {
            index: i as u64 + 1,
            term: t,
            data: EntryData::Noop,
        })
        .collect();
    let mut n = Node::new(Config::new(3), id, d, 0, 7).expect("node");
    // Past the restart's promise window, so votes are not refused for it.
    n.now = 10 * n.cfg.election_timeout_us;
    n
}

/// An append from a leader with no new commit and the given entries.
pub(super) use crate::wire::test_append as append;

/// Terms of group 0's log, entry by entry.
pub(super) fn log_terms(n: &Node) -> Vec<u64> {
    let log = &n.groups[0].log;
    (1..=log.last_index())
        .map(|i| log.term_at(i).expect("entry"))
        .collect()
}

/// A client write putting `v` at key `k` of `ns`.
pub(super) fn put_k(ns: &str, request_id: u64, fingerprint: u64) -> ClientRequest {
    ClientRequest::Write {
        ns: ns.into(),
        request_id,
        fingerprint,
        compares: Vec::new(),
        ns_revision: None,
        ops: vec![WriteOp::Put {
            key: "k".into(),
            value: b"v".to_vec(),
        }],
        meta: ChangeMeta::default(),
        audit: Default::default(),
    }
}

/// The answer to client request `id` in the node's output, if any.
pub(super) fn reply_to(n: &Node, id: RequestId) -> Option<&ClientResponse> {
    n.out.iter().find_map(|a| match a {
        Action::Reply { req, resp } if *req == id => Some(resp),
        _ => None,
    })
}
