//! Durability: no quorum-acknowledged write is ever lost; in async mode the
//! acknowledged writes that were lost span no more than the RPO budget.
//!
//! RPO here is the span of acknowledged history lost in one failure: from the
//! first to the last acknowledgement of lost writes. The async leader refuses
//! writes once its oldest unreplicated acknowledgement is older than the budget,
//! so that span is at most the budget (stretched by clock drift).
//!
//! A write answered only on a retry (the answer to its first attempt was
//! lost) may have been acknowledged by the leader at any time from its first
//! attempt on: the leader replays the earlier answer. Its acknowledgement is
//! the interval [first attempt, answer], and a span is a violation only if no
//! choice of times within the intervals fits the budget.

use std::collections::BTreeMap;

use meridian_core::ClientResponse;

use crate::history::{History, OpKind, Outcome, Violation};

pub const PROPERTY: &str = "durability";
/// Writes acknowledged this long before a fault started may still be in flight
/// to the followers when it strikes; their loss belongs to that fault.
const ATTRIBUTION_SLACK_US: u64 = 1_000_000;

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub quorum_acked: usize,
    pub async_acked: usize,
    pub async_lost: usize,
    /// One sample per failure episode (0 when nothing was lost) and per loss.
    pub rpo_samples_us: Vec<u64>,
}

pub fn check(h: &History) -> Result<Report, Violation> {
    let mut rep = Report::default();
    // group -> lost acknowledgements (answer time, earliest possible time),
    // with the namespace's budget
    let mut lost: BTreeMap<u8, Vec<(u64, u64, u64)>> = BTreeMap::new();
    for (i, r) in h.ops.iter().enumerate() {
        let (
            OpKind::Write { request_id, .. },
            Outcome::Done(ClientResponse::Written { token, .. }),
        ) = (&r.kind, &r.outcome)
        else {
            continue;
        };
        let ok = h.applied[token.group as usize]
            .get(&token.revision)
            .is_some_and(|a| a.request_id == *request_id);
        let at = r.complete_us.unwrap_or(0);
        if r.is_async {
            rep.async_acked += 1;
            if !ok {
                rep.async_lost += 1;
                let budget = h.rpo_budget_us.get(&r.ns).copied().unwrap_or(0);
                let earliest = if h.retried_at.contains_key(&i) {
                    r.invoke_us
                } else {
                    at
                };
                lost.entry(token.group)
                    .or_default()
                    .push((at, earliest, budget));
            }
        } else {
            rep.quorum_acked += 1;
            if !ok {
                return Err(Violation::new(
                    PROPERTY,
                    Some(at),
                    format!(
                        "quorum write {request_id} (client {}, {}) acknowledged at t={at}us as revision {} but lost",
                        r.client, r.ns, token
                    ),
                ));
            }
        }
    }
    let drift = h.clock_drift_max_ppm;
    for (g, mut times) in lost {
        times.sort();
        // Attribute each loss to the fault that caused it: the last episode that
        // started before (or just after, while replication was in flight) the ack.
        let mut by_cause: BTreeMap<Option<usize>, Vec<(u64, u64, u64)>> = BTreeMap::new();
        for t in times {
            let cause = h
                .episodes
                .iter()
                .rposition(|e| e.start_us <= t.0 + ATTRIBUTION_SLACK_US);
            by_cause.entry(cause).or_default().push(t);
        }
        for (cause, times) in by_cause {
            // The latest earliest-possible acknowledgement against the
            // earliest answer: the shortest span the losses can have.
            let latest = times.iter().map(|t| t.1).max().unwrap_or(0);
            let earliest = times.iter().map(|t| t.0).min().unwrap_or(0);
            let span = latest.saturating_sub(earliest);
            let budget = times.iter().map(|t| t.2).max().unwrap_or(0);
            let allowed = budget * 1_000_000 / (1_000_000 - drift) + 1_000;
            if span > allowed {
                return Err(Violation::new(
                    PROPERTY,
                    times.first().map(|t| t.0),
                    format!(
                        "group {g}: async writes acknowledged over {span}us were lost in one failure (episode {cause:?}); budget {budget}us; lost acks at {:?}",
                        times.iter().map(|t| t.0).collect::<Vec<_>>()
                    ),
                ));
            }
            rep.rpo_samples_us.push(span);
        }
    }
    let clusters = rep.rpo_samples_us.len();
    let episodes = h
        .episodes
        .iter()
        .filter(|e| e.kind.takes_region_out())
        .count();
    rep.rpo_samples_us
        .extend(std::iter::repeat_n(0, episodes.saturating_sub(clusters)));
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Applied, OpRecord};
    use meridian_core::RevisionToken;

    fn write(h: &mut History, request_id: u64, is_async: bool, rev: u64, at: u64) {
        h.ops.push(OpRecord {
            client: 0,
            region: 0,
            ns: if is_async { "a".into() } else { "q".into() },
            group: 0,
            is_async,
            kind: OpKind::Write {
                request_id,
                compares: vec![],
                ops: vec![],
            },
            invoke_us: at - 1,
            complete_us: Some(at),
            outcome: Outcome::Done(ClientResponse::Written {
                deleted: 0,
                versions: vec![1],
                token: RevisionToken {
                    group: 0,
                    revision: rev,
                },
            }),
        });
    }

    #[test]
    fn lost_quorum_write_fails() {
        let mut h = History::new(3);
        write(&mut h, 1, false, 1, 10);
        h.record_applied(
            0,
            1,
            0,
            Applied {
                request_id: 1,
                digest: 1,
                ns: "q".into(),
                keys: vec![],
                first_node: 0,
                at_us: 5,
            },
        );
        assert_eq!(check(&h).unwrap().quorum_acked, 1);
        write(&mut h, 2, false, 2, 20); // never applied anywhere
        assert_eq!(check(&h).unwrap_err().property, PROPERTY);
    }

    #[test]
    fn async_loss_beyond_budget_fails() {
        let mut h = History::new(3);
        h.rpo_budget_us.insert("a".into(), 1_000_000);
        write(&mut h, 1, true, 1, 1_000_000);
        write(&mut h, 2, true, 2, 1_500_000);
        let rep = check(&h).unwrap();
        assert_eq!(rep.async_lost, 2);
        assert_eq!(rep.rpo_samples_us, vec![500_000]);
        write(&mut h, 3, true, 3, 2_900_000);
        assert!(check(&h).is_err(), "lost span 1.9 s over a 1 s budget");
        // The same losses split over two faults are two samples within budget.
        h.episodes.push(crate::history::Episode {
            kind: crate::history::EpisodeKind::Crash,
            region: 0,
            start_us: 2_700_000,
            end_us: 3_000_000,
            led_groups: vec![0],
            overlapped: false,
        });
        let rep = check(&h).unwrap();
        assert_eq!(rep.async_lost, 3);
    }

    #[test]
    fn a_write_answered_on_a_retry_may_have_been_acknowledged_at_its_first_attempt() {
        let mut h = History::new(3);
        h.rpo_budget_us.insert("a".into(), 1_000_000);
        write(&mut h, 1, true, 1, 1_000_000);
        // Its first attempt at 1.5 s; the answer reached the client on a
        // retry at 2.9 s (the leader replayed its earlier acknowledgement).
        write(&mut h, 2, true, 2, 2_900_000);
        h.ops[1].invoke_us = 1_500_000;
        h.retried_at.insert(1, 2_800_000);
        let rep = check(&h).expect("both may have been acknowledged within 1 s");
        assert_eq!(rep.async_lost, 2);
        // Not retried, the same answer times are a 1.9 s span.
        h.retried_at.clear();
        assert!(check(&h).is_err());
    }
}
