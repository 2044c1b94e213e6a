//! Lease safety: at most one valid leaseholder per group at any true instant;
//! and, the reason it holds, every lease ends (in true time) before the
//! promises of a majority that received the heartbeat round it is counted from.

use crate::history::{History, Violation};

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
    fn a_lease_beyond_its_promises_fails() {
        let mut h = History::new(3);
        h.record_lease(0, 0, 0, 100);
        assert!(check(&h).is_ok());
        h.uncovered_leases.push((0, 0, 50, "round 3".into()));
        assert_eq!(check(&h).unwrap_err().property, PROPERTY);
    }
}
