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
