//! Lease safety: at most one valid leaseholder per group at any true instant;
//! and, the reason it holds, every lease ends (in true time) before the
//! promises of a majority that received the heartbeat round it is counted from.

use std::collections::BTreeMap;

use meridian_core::types::{GroupId, NodeId};

use crate::history::{History, Violation};

/// Promises followers made, as the simulator observed them: (group,
/// follower, leader, term) -> heartbeat round -> true time the promise ends.
pub type Promises = BTreeMap<(GroupId, NodeId, NodeId, u64), BTreeMap<u64, u64>>;

/// A lease as its holder believes it, its end in true time.
pub struct Lease {
    pub group: GroupId,
    pub holder: NodeId,
    pub term: u64,
    /// The heartbeat round the lease is counted from.
    pub round: u64,
    pub end_us: u64,
}

/// Checked whenever a node's lease moves: the lease must end before the
/// promises of a majority (its holder included) that received round >=
/// `round`. Returns what is wrong if it does not.
pub fn uncovered(
    promises: &Promises,
    lease: &Lease,
    regions: u8,
    majority: usize,
) -> Option<String> {
    let Lease {
        group: g,
        holder: n,
        term,
        round,
        end_us: end,
    } = *lease;
    let mut covered = 1;
    let mut worst = Vec::new();
    for f in 0..regions {
        if f == n {
            continue;
        }
        let promise = promises
            .get(&(g, f, n, term))
            .and_then(|m| m.range(round..).take(8).map(|(_, e)| *e).min());
        match promise {
            Some(p) if p >= end => covered += 1,
            other => worst.push((f, other)),
        }
    }
    (covered < majority).then(|| {
        format!("lease of term {term} round {round} ends at t={end}us; short promises {worst:?}")
    })
}

pub const PROPERTY: &str = "lease safety";

/// Returns how many lease intervals were checked.
pub fn check(h: &History) -> Result<usize, Violation> {
    if let Some((g, n, at, detail)) = h.uncovered_leases.first() {
        return Err(Violation::new(
            PROPERTY,
            Some(*at),
            format!("group {g}: node {n}'s lease outlives its majority's promises: {detail}"),
        ));
    }
    let mut checked = 0;
    for (g, nodes) in h.leases.iter().enumerate() {
        let mut all: Vec<(u64, u64, usize)> = Vec::new();
        for (n, ivs) in nodes.iter().enumerate() {
            all.extend(ivs.iter().map(|(s, e)| (*s, *e, n)));
        }
        all.sort();
        checked += all.len();
        // Sweep: the interval with the furthest end so far, and its holder.
        let mut reach: Option<(u64, usize)> = None;
        for (s, e, n) in all {
            if let Some((end, holder)) = reach {
                if holder != n && s < end {
                    return Err(Violation::new(
                        PROPERTY,
                        Some(s),
                        format!("group {g}: node {n} holds a lease from t={s}us while node {holder} holds one until t={end}us"),
                    ));
                }
            }
            if reach.is_none_or(|(end, _)| e >= end) {
                reach = Some((e, n));
            }
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_leases_fail_and_disjoint_pass() {
        let mut h = History::new(3);
        h.record_lease(0, 0, 0, 100);
        h.record_lease(0, 1, 100, 200);
        h.record_lease(1, 2, 50, 150);
        assert_eq!(check(&h).unwrap(), 3);
        h.record_lease(0, 2, 150, 250);
        let v = check(&h).unwrap_err();
        assert_eq!(v.property, PROPERTY);
    }

    #[test]
    fn a_lease_needs_a_majority_of_promises_that_outlast_it() {
        let mut p = Promises::new();
        let lease = Lease {
            group: 0,
            holder: 0,
            term: 2,
            round: 5,
            end_us: 1_000,
        };
        // No follower promised: only the holder covers it.
        assert!(uncovered(&p, &lease, 3, 2).is_some());
        // A promise of an earlier round does not count.
        p.entry((0, 1, 0, 2)).or_default().insert(4, 5_000);
        assert!(uncovered(&p, &lease, 3, 2).is_some());
        // One that ends too soon does not either.
        p.entry((0, 2, 0, 2)).or_default().insert(5, 999);
        assert!(uncovered(&p, &lease, 3, 2).is_some());
        // One of the round, ending after the lease, makes a majority.
        p.entry((0, 1, 0, 2)).or_default().insert(6, 1_000);
        assert_eq!(uncovered(&p, &lease, 3, 2), None);
    }

    #[test]
    fn a_lease_beyond_its_promises_fails() {
        let mut h = History::new(3);
        h.record_lease(0, 0, 0, 100);
        assert!(check(&h).is_ok());
        h.uncovered_leases.push((0, 0, 50, "round 3".into()));
        assert_eq!(check(&h).unwrap_err().property, PROPERTY);
    }
}
