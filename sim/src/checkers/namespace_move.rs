//! Property: moving a namespace's home region online loses nothing. While the
//! operator moves `MOVING_NS` between regions under faults and client load:
//! - every acknowledged write is in the final state (unless retention dropped
//!   that old version), with the value it wrote, and no two acknowledged
//!   writes got the same version of a key (one home at a time);
//! - a write refused with a definite error never applied;
//! - every read returned a value some write wrote at that version, and a
//!   linearizable read saw every write acknowledged before it began;
//! - at the end every node agrees on the namespace's home, no move is left
//!   half done, and every node holds the same versions.

use std::collections::BTreeMap;

use meridian_core::{ClientResponse, Consistency, KeyValue, NodeId, WriteOp};

use crate::history::{History, OpKind, Outcome, Violation};

const PROPERTY: &str = "namespace move loses nothing";

/// One node's view of the moving namespace at the end of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFinal {
    pub home: u8,
    pub moving_to: Option<u8>,
    /// key -> retained versions, oldest first.
    pub keys: BTreeMap<String, Vec<KeyValue>>,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub ops_checked: usize,
    pub moves_started: usize,
    /// Copies into a new home that completed (filled in by the runner).
    pub moves_completed: usize,
}

/// `finals`: per node, None if it is down (or never learned the namespace).
pub fn check(h: &History, finals: &[Option<NodeFinal>]) -> Result<Report, Violation> {
    let bad = |at: Option<u64>, d: String| Violation::new(PROPERTY, at, d);
    let views: Vec<(NodeId, &NodeFinal)> = finals
        .iter()
        .enumerate()
        .filter_map(|(n, f)| f.as_ref().map(|f| (n as NodeId, f)))
        .collect();
    let Some(&(_, first)) = views.first() else {
        if h.mv_ops.iter().any(|o| acked_writes(o).next().is_some()) {
            return Err(bad(
                None,
                "writes were acknowledged but no node knows the namespace".into(),
            ));
        }
        return Ok(Report::default());
    };
    if views.len() != finals.len() {
        return Err(bad(
            None,
            "a running node does not know the moved namespace".into(),
        ));
    }
    for (n, v) in &views {
        if let Some(to) = v.moving_to {
            return Err(bad(
                None,
                format!("node {n}: the move from {} to {to} never completed", v.home),
            ));
        }
        if v.home != first.home {
            return Err(bad(
                None,
                format!(
                    "node {n} says home {} but node {} says {}",
                    v.home, views[0].0, first.home
                ),
            ));
        }
        if v.keys != first.keys {
            return Err(bad(
                None,
                format!("node {n}'s versions differ from node {}'s", views[0].0),
            ));
        }
    }
    let mut acked: BTreeMap<(&str, u64), AckedWrite> = BTreeMap::new();
    for (i, op) in h.mv_ops.iter().enumerate() {
        for (key, version, value) in acked_writes(op) {
            if let Some((_, j)) = acked.insert((key, version), (value, i)) {
                return Err(bad(
                    op.complete_us,
                    format!("ops {j} and {i} were both acknowledged as version {version} of {key}"),
                ));
            }
        }
    }
    let final_value = |key: &str, version: u64| -> Option<Option<&[u8]>> {
        let h = first.keys.get(key)?;
        h.iter()
            .find(|kv| kv.version == version)
            .map(|kv| kv.value.as_deref())
    };
    let oldest = |key: &str| -> u64 {
        first
            .keys
            .get(key)
            .and_then(|h| h.first())
            .map_or(0, |kv| kv.version)
    };
    for ((key, version), (value, i)) in &acked {
        let current = first
            .keys
            .get(*key)
            .and_then(|h| h.last())
            .map_or(0, |kv| kv.version);
        if current < *version {
            return Err(bad(
                h.mv_ops[*i].complete_us,
                format!("acknowledged version {version} of {key} (op {i}) is lost: the final version is {current}"),
            ));
        }
        if *version >= oldest(key) && final_value(key, *version) != Some(*value) {
            return Err(bad(
                h.mv_ops[*i].complete_us,
                format!("version {version} of {key} does not hold what op {i} wrote"),
            ));
        }
    }
    let mut checked = 0;
    for (i, op) in h.mv_ops.iter().enumerate() {
        let Outcome::Done(resp) = &op.outcome else {
            continue;
        };
        match (&op.kind, resp) {
            (OpKind::Write { ops, .. }, ClientResponse::Error(_)) if !op.indeterminate() => {
                checked += 1;
                for o in ops {
                    let WriteOp::Put { key, value } = o else {
                        continue;
                    };
                    let found = first
                        .keys
                        .get(key)
                        .is_some_and(|h| h.iter().any(|kv| kv.value.as_ref() == Some(value)));
                    if found {
                        let rid = match &op.kind {
                            OpKind::Write { request_id, .. } => *request_id,
                            _ => 0,
                        };
                        let at = h.applied_by_request().get(&rid).copied();
                        return Err(bad(
                            op.complete_us,
                            format!(
                                "op {i} (request {rid}, invoked at {} us) was refused with {resp:?} but its value of {key} applied (group, revision: {at:?})",
                                op.invoke_us
                            ),
                        ));
                    }
                }
            }
            (OpKind::Get { key, consistency }, ClientResponse::Value { kv, .. }) => {
                checked += 1;
                if kv.version == 0 && kv.value.is_some() {
                    return Err(bad(
                        op.complete_us,
                        format!("op {i} read a value of {key} at version 0"),
                    ));
                }
                if kv.version > 0 {
                    let want = acked
                        .get(&(key.as_str(), kv.version))
                        .map(|(v, _)| *v)
                        .or_else(|| final_value(key, kv.version));
                    if want.is_some_and(|w| w != kv.value.as_deref()) {
                        return Err(bad(
                            op.complete_us,
                            format!(
                                "op {i} read version {} of {key} with a value no write gave it",
                                kv.version
                            ),
                        ));
                    }
                }
                if *consistency == Consistency::Linearizable {
                    let before = h
                        .mv_ops
                        .iter()
                        .filter(|w| w.complete_us.is_some_and(|c| c < op.invoke_us))
                        .flat_map(acked_writes)
                        .filter(|(k, _, _)| k == key)
                        .map(|(_, v, _)| v)
                        .max()
                        .unwrap_or(0);
                    if kv.version < before {
                        return Err(bad(
                            op.complete_us,
                            format!(
                                "linearizable op {i} read version {} of {key}, but version {before} was acknowledged before it began",
                                kv.version
                            ),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Report {
        ops_checked: checked + acked.len(),
        moves_started: h
            .moves
            .iter()
            .filter(|m| matches!(m.outcome, Outcome::Done(ClientResponse::Written { .. })))
            .count(),
        moves_completed: 0,
    })
}

/// (value written, index of the op in `History::mv_ops`), by (key, version).
type AckedWrite<'a> = (Option<&'a [u8]>, usize);

/// (key, version, value) of each key an acknowledged write wrote.
fn acked_writes(op: &crate::history::OpRecord) -> impl Iterator<Item = (&str, u64, Option<&[u8]>)> {
    let pairs: Vec<(&str, u64, Option<&[u8]>)> = match (&op.kind, &op.outcome) {
        (OpKind::Write { ops, .. }, Outcome::Done(ClientResponse::Written { versions, .. })) => ops
            .iter()
            .zip(versions)
            .map(|(o, v)| match o {
                WriteOp::Put { key, value } => (key.as_str(), *v, Some(value.as_slice())),
                WriteOp::Delete { key } => (key.as_str(), *v, None),
            })
            .collect(),
        _ => Vec::new(),
    };
    pairs.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::OpRecord;
    use meridian_core::{ChangeMeta, RevisionToken};

    fn kv(key: &str, version: u64, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(value.as_bytes().to_vec()),
            version,
            mod_revision: version,
            meta: ChangeMeta::default(),
        }
    }

    fn write(key: &str, value: &str, version: u64, t: u64) -> OpRecord {
        OpRecord {
            client: 0,
            region: 0,
            ns: "moving".into(),
            group: 0,
            is_async: false,
            kind: OpKind::Write {
                request_id: t,
                compares: vec![],
                ops: vec![WriteOp::Put {
                    key: key.into(),
                    value: value.as_bytes().to_vec(),
                }],
            },
            invoke_us: t,
            complete_us: Some(t + 1),
            outcome: Outcome::Done(ClientResponse::Written {
                deleted: 0,
                versions: vec![version],
                token: RevisionToken {
                    group: 0,
                    revision: t,
                },
            }),
        }
    }

    fn fin(versions: Vec<KeyValue>) -> Option<NodeFinal> {
        Some(NodeFinal {
            home: 1,
            moving_to: None,
            keys: [("k0".to_string(), versions)].into_iter().collect(),
        })
    }

    #[test]
    fn catches_a_lost_write_and_a_stale_linearizable_read() {
        let mut h = History::new(3);
        h.mv_ops.push(write("k0", "a", 1, 10));
        h.mv_ops.push(write("k0", "b", 2, 20));
        let ok = vec![fin(vec![kv("k0", 1, "a"), kv("k0", 2, "b")]); 3];
        assert!(check(&h, &ok).is_ok());
        let lost = vec![fin(vec![kv("k0", 1, "a")]); 3];
        assert!(check(&h, &lost).is_err(), "version 2 was acknowledged");
        let mut h2 = h.clone();
        h2.mv_ops.push(OpRecord {
            kind: OpKind::Get {
                key: "k0".into(),
                consistency: Consistency::Linearizable,
            },
            invoke_us: 30,
            complete_us: Some(31),
            outcome: Outcome::Done(ClientResponse::Value {
                kv: kv("k0", 1, "a"),
                token: RevisionToken {
                    group: 0,
                    revision: 1,
                },
            }),
            ..write("k0", "x", 0, 30)
        });
        assert!(check(&h2, &ok).is_err(), "the read missed version 2");
        let mut split = ok.clone();
        split[2] = Some(NodeFinal {
            moving_to: Some(0),
            ..ok[0].clone().unwrap()
        });
        assert!(check(&h, &split).is_err(), "a move left half done");
    }
}
