//! RTO: after a region that led a group fails, the first acknowledged quorum
//! write to that group's namespaces (invoked, or retried, after the failure,
//! so served by a leader elsewhere while the region is out) comes within the
//! bound. Episodes that overlapped another are not measured: two regions
//! out of three leave no majority to recover with.

use meridian_core::ClientResponse;

use crate::history::{History, OpKind, Outcome, Violation};

pub const PROPERTY: &str = "RTO";

/// Returns every measured RTO in microseconds.
pub fn check(h: &History) -> Result<Vec<u64>, Violation> {
    let mut samples = Vec::new();
    // An episode that overlapped another may have taken a majority out
    // with it: no bound holds for it (the other checkers still do).
    for ep in h
        .episodes
        .iter()
        .filter(|e| e.kind.takes_region_out() && !e.overlapped)
    {
        for &g in &ep.led_groups {
            let sent = |i: usize, r: &crate::history::OpRecord| {
                h.retried_at.get(&i).copied().unwrap_or(r.invoke_us)
            };
            let first = h
                .ops
                .iter()
                .enumerate()
                .filter(|(i, r)| !r.is_async && r.group == g && sent(*i, r) >= ep.start_us)
                .map(|(_, r)| r)
                .filter(|r| {
                    matches!(
                        (&r.kind, &r.outcome),
                        (
                            OpKind::Write { .. },
                            Outcome::Done(ClientResponse::Written { .. })
                        )
                    )
                })
                .filter_map(|r| r.complete_us)
                .filter(|&c| c <= ep.end_us)
                .min();
            match first {
                Some(c) => {
                    let rto = c - ep.start_us;
                    if rto > h.rto_bound_us {
                        return Err(Violation::new(
                            PROPERTY,
                            Some(ep.start_us),
                            format!("{:?} of region {} at t={}us: group {g} took writes again after {rto}us, bound {}us", ep.kind, ep.region, ep.start_us, h.rto_bound_us),
                        ));
                    }
                    samples.push(rto);
                }
                None if ep.end_us - ep.start_us > h.rto_bound_us => {
                    return Err(Violation::new(
                        PROPERTY,
                        Some(ep.start_us),
                        format!("{:?} of region {} at t={}us lasting {}us: group {g} never took a write", ep.kind, ep.region, ep.start_us, ep.end_us - ep.start_us),
                    ));
                }
                None => {}
            }
        }
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Episode, EpisodeKind, OpRecord};
    use meridian_core::RevisionToken;

    #[test]
    fn slow_recovery_fails() {
        let mut h = History::new(3);
        h.rto_bound_us = 5_000_000;
        h.episodes.push(Episode {
            kind: EpisodeKind::Crash,
            region: 0,
            start_us: 1_000_000,
            end_us: 20_000_000,
            led_groups: vec![0],
            overlapped: false,
        });
        let mut w = OpRecord {
            client: 1,
            region: 1,
            ns: "q".into(),
            group: 0,
            is_async: false,
            kind: OpKind::Write {
                request_id: 1,
                compares: vec![],
                ops: vec![],
            },
            invoke_us: 2_000_000,
            complete_us: Some(3_000_000),
            outcome: Outcome::Done(ClientResponse::Written {
                deleted: 0,
                versions: vec![],
                token: RevisionToken {
                    group: 0,
                    revision: 1,
                },
            }),
        };
        h.ops.push(w.clone());
        assert_eq!(check(&h).unwrap(), vec![2_000_000]);
        w.complete_us = Some(9_000_000);
        h.ops[0] = w;
        assert_eq!(check(&h).unwrap_err().property, PROPERTY);
        h.ops.clear();
        assert!(check(&h).is_err(), "no write at all during a long outage");
        // Overlapping another outage, it may have had no majority to recover with.
        h.episodes[0].overlapped = true;
        assert_eq!(check(&h).unwrap(), Vec::<u64>::new());
    }
}
