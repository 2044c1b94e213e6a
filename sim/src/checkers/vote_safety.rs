//! Vote safety: a node grants at most one vote per group and term, across
//! crashes and restarts (votes are durable before they are answered).

use std::collections::BTreeMap;

use crate::history::{History, Violation};

pub const PROPERTY: &str = "vote safety";

pub fn check(h: &History) -> Result<usize, Violation> {
    let mut seen: BTreeMap<(u8, u64, u8), u8> = BTreeMap::new();
    for &(g, term, voter, candidate, at) in &h.votes {
        match seen.get(&(g, term, voter)) {
            Some(&c) if c != candidate => {
                return Err(Violation::new(
                    PROPERTY,
                    Some(at),
                    format!(
                        "node {voter} voted for {c} and for {candidate} in group {g} term {term}"
                    ),
                ));
            }
            _ => {
                seen.insert((g, term, voter), candidate);
            }
        }
    }
    Ok(h.votes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_votes_in_one_term_fail() {
        let mut h = History::new(3);
        h.votes.push((0, 1, 2, 0, 10));
        h.votes.push((0, 1, 2, 0, 20)); // the same vote again is fine
        h.votes.push((0, 2, 2, 1, 30));
        assert_eq!(check(&h).unwrap(), 3);
        h.votes.push((0, 2, 2, 0, 40));
        assert_eq!(check(&h).unwrap_err().property, PROPERTY);
    }
}
