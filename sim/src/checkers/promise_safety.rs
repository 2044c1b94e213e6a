//! Promise safety: no node grants a vote, or follows a new leader, while a
//! promise it made to another leader (before a restart, too) still runs in
//! true time. Leases rest on these promises: a leader's lease ends before
//! the promises of a majority, so no other leader can be elected, or take
//! acknowledgements, while it serves reads locally. Two releases: a leader
//! handing over (a transfer), and a former leader that stepped down and
//! voted for the new one (its lease ended with its leadership).

use crate::history::{History, Violation};

pub const PROPERTY: &str = "promise safety";

/// Returns how many votes and new-leader acknowledgements were checked.
pub fn check(h: &History) -> Result<usize, Violation> {
    let mut checked = 0;
    let released = |g: u8, term: u64, cand: u8| h.transfer_candidacies.contains(&(g, term, cand));
    for &(g, term, voter, cand, at) in &h.votes {
        checked += 1;
        if released(g, term, cand) {
            continue;
        }
        let spans = h
            .promise_spans
            .get(&(g, voter))
            .map_or(&[][..], |v| v.as_slice());
        if let Some(p) = spans
            .iter()
            .find(|p| p.leader != cand && p.term < term && p.start_us <= at && at < p.end_us)
        {
            return Err(Violation::new(
                PROPERTY,
                Some(at),
                format!(
                    "group {g}: node {voter} voted for {cand} in term {term} at t={at}us while its promise to {} (term {}) ran until t={}us",
                    p.leader, p.term, p.end_us
                ),
            ));
        }
    }
    for (&(g, follower), spans) in &h.promise_spans {
        for w in spans.windows(2) {
            let (old, new) = (w[0], w[1]);
            checked += 1;
            // The old leader itself voted for the new one: it stepped down
            // first, and its lease, which the promise protected, with it.
            let old_voted_new = h.votes.iter().any(|&(vg, vt, voter, cand, _)| {
                (vg, vt, voter, cand) == (g, new.term, old.leader, new.leader)
            });
            if new.leader != old.leader
                && new.term > old.term
                && new.start_us < old.end_us
                && !released(g, new.term, new.leader)
                && !old_voted_new
            {
                return Err(Violation::new(
                    PROPERTY,
                    Some(new.start_us),
                    format!(
                        "group {g}: node {follower} followed {} (term {}) at t={}us while its promise to {} (term {}) ran until t={}us",
                        new.leader, new.term, new.start_us, old.leader, old.term, old.end_us
                    ),
                ));
            }
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vote_inside_a_promise_fails_unless_a_transfer_released_it() {
        let mut h = History::new(3);
        h.record_promise(0, 1, 0, 3, 1_000, 5_000);
        h.votes.push((0, 4, 1, 2, 6_000));
        assert!(check(&h).is_ok(), "after the promise ended");
        h.votes.push((0, 4, 1, 2, 4_000));
        assert_eq!(check(&h).expect_err("inside").property, PROPERTY);
        h.transfer_candidacies.insert((0, 4, 2));
        assert!(check(&h).is_ok(), "a transfer released it");
    }

    #[test]
    fn following_a_new_leader_inside_a_promise_fails() {
        let mut h = History::new(3);
        h.record_promise(0, 1, 0, 3, 1_000, 5_000);
        h.record_promise(0, 1, 0, 3, 2_000, 6_000);
        h.record_promise(0, 1, 2, 4, 7_000, 9_000);
        assert!(check(&h).is_ok());
        h.record_promise(0, 2, 0, 3, 1_000, 5_000);
        h.record_promise(0, 2, 1, 4, 4_000, 8_000);
        assert_eq!(check(&h).expect_err("inside").property, PROPERTY);
        // Unless the old leader stepped down and voted for the new one.
        h.votes.push((0, 4, 0, 1, 3_900));
        assert!(check(&h).is_ok(), "released by the old leader's vote");
    }
}
