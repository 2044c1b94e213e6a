//! Bounded staleness: a `bounded(b)` read invoked at t reflects every write to
//! its key that was committed and acknowledged before t - b. (Async writes are
//! acknowledged before they commit; for them the commit time counts.)

use std::collections::BTreeMap;

use meridian_core::{ClientResponse, Consistency};

use crate::history::{History, OpKind, Outcome, Violation};

pub const PROPERTY: &str = "bounded staleness";

/// Returns the number of bounded reads checked.
pub fn check(h: &History) -> Result<usize, Violation> {
    let applied = h.applied_by_request();
    // (ns, key) -> (ack time, version) of committed acknowledged writes, sorted by time.
    let mut acks: BTreeMap<(&str, &str), Vec<(u64, u64)>> = BTreeMap::new();
    for r in &h.ops {
        if let (
            OpKind::Write {
                request_id, ops, ..
            },
            Outcome::Done(ClientResponse::Written { versions, .. }),
        ) = (&r.kind, &r.outcome)
        {
            let Some((g, rev)) = applied.get(request_id) else {
                continue;
            };
            let committed_at = h.applied[*g as usize][rev].at_us;
            let at = r.complete_us.unwrap_or(u64::MAX).max(committed_at);
            for (op, v) in ops.iter().zip(versions) {
                acks.entry((r.ns.as_str(), op.key()))
                    .or_default()
                    .push((at, *v));
            }
        }
    }
    for list in acks.values_mut() {
        list.sort();
        // Prefix maximum of versions, so a binary search answers "newest before t".
        let mut m = 0;
        for e in list.iter_mut() {
            m = m.max(e.1);
            e.1 = m;
        }
    }
    let mut checked = 0;
    for r in &h.ops {
        let (
            OpKind::Get {
                key,
                consistency: Consistency::Bounded { staleness_us },
            },
            Outcome::Done(ClientResponse::Value { kv, .. }),
        ) = (&r.kind, &r.outcome)
        else {
            continue;
        };
        checked += 1;
        let Some(list) = acks.get(&(r.ns.as_str(), key.as_str())) else {
            continue;
        };
        let horizon = r.invoke_us.saturating_sub(*staleness_us);
        let i = list.partition_point(|(t, _)| *t < horizon);
        if i > 0 && list[i - 1].1 > kv.version {
            return Err(Violation::new(
                PROPERTY,
                Some(r.invoke_us),
                format!(
                    "client {} read {}/{key} at t={}us with bound {staleness_us}us and got version {}, but version {} was acknowledged before t={horizon}us",
                    r.client, r.ns, r.invoke_us, kv.version, list[i - 1].1
                ),
            ));
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Applied, OpRecord};
    use meridian_core::{KeyValue, RevisionToken, WriteOp};

    #[test]
    fn read_staler_than_its_bound_fails() {
        let mut h = History::new(1);
        let w = OpRecord {
            client: 0,
            region: 0,
            ns: "n".into(),
            group: 0,
            is_async: false,
            kind: OpKind::Write {
                request_id: 1,
                compares: vec![],
                ops: vec![WriteOp::Put {
                    key: "k".into(),
                    value: vec![1],
                }],
            },
            invoke_us: 0,
            complete_us: Some(100),
            outcome: Outcome::Done(ClientResponse::Written {
                deleted: 0,
                versions: vec![1],
                token: RevisionToken {
                    group: 0,
                    revision: 1,
                },
            }),
        };
        h.ops.push(w.clone());
        h.record_applied(
            0,
            1,
            0,
            Applied {
                request_id: 1,
                digest: 1,
                ns: "n".into(),
                keys: vec![],
                first_node: 0,
                at_us: 50,
            },
        );
        let read = |invoke_us: u64, version: u64| OpRecord {
            kind: OpKind::Get {
                key: "k".into(),
                consistency: Consistency::Bounded { staleness_us: 1000 },
            },
            invoke_us,
            complete_us: Some(invoke_us + 1),
            outcome: Outcome::Done(ClientResponse::Value {
                kv: KeyValue {
                    key: "k".into(),
                    value: None,
                    version,
                    mod_revision: 0,
                    meta: Default::default(),
                },
                token: RevisionToken {
                    group: 0,
                    revision: 0,
                },
            }),
            ..w.clone()
        };
        h.ops.push(read(500, 0)); // within the bound: may be stale
        assert_eq!(check(&h).unwrap(), 1);
        h.ops.push(read(2_000, 0)); // write acknowledged 1.9 ms earlier, bound 1 ms
        assert_eq!(check(&h).unwrap_err().property, PROPERTY);
    }
}
