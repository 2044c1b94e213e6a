//! Linearizability per key (Wing & Gong search with Lowe's memoization, as
//! Porcupine does it), for linearizable reads and every write, in quorum-mode
//! namespaces. History is partitioned by key; each key is a register whose
//! state is (version, value). A write whose outcome the client never learned is
//! resolved with what the cluster applied: if it applied, it is a write whose
//! completion is unknown (open to the end); if it did not, it never happened.
//! Async namespaces are left out on purpose: they trade linearizability for a
//! bounded loss, which the durability checker measures.

use std::collections::{BTreeMap, HashSet};

use meridian_core::{ClientResponse, Consistency, ErrorCode, WriteOp};

use crate::history::{History, OpKind, OpRecord, Outcome, Violation};

pub const PROPERTY: &str = "linearizability";
const OPEN: u64 = u64::MAX;
const SEARCH_STEPS_MAX: u64 = 20_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LOp {
    Write { version: u64, value: u64 },
    Read { version: u64, value: u64 },
    VersionIs(u64),
    VersionIsNot(u64),
}

#[derive(Clone, Copy, Debug)]
pub struct KeyOp {
    pub op: LOp,
    pub call_us: u64,
    pub ret_us: u64,
    pub record: usize,
}

fn value_id(v: Option<&[u8]>) -> u64 {
    match v {
        None => 0,
        Some(b) => meridian_core::rng::fnv1a(b) | 1,
    }
}

type State = (u64, u64);

fn step(s: State, op: LOp) -> Option<State> {
    match op {
        // A delete takes effect only on a live key; on an absent one it
        // changes nothing and keeps the version (as etcd's DeleteRange).
        LOp::Write { version, value: 0 } if s.1 == 0 => (s.0 == version).then_some(s),
        LOp::Write { version, value } => (version == s.0 + 1).then_some((version, value)),
        LOp::Read { version, value } => (s == (version, value)).then_some(s),
        LOp::VersionIs(v) => (s.0 == v).then_some(s),
        LOp::VersionIsNot(v) => (s.0 != v).then_some(s),
    }
}

/// Build per-key operation lists. Errors: a write the client was told failed
/// for sure, but which applied.
pub fn partition(h: &History) -> Result<BTreeMap<(String, String), Vec<KeyOp>>, Violation> {
    let applied = h.applied_by_request();
    let mut keys: BTreeMap<(String, String), Vec<KeyOp>> = BTreeMap::new();
    for (i, r) in h.ops.iter().enumerate() {
        if r.is_async {
            continue;
        }
        let mut push = |key: &str, op: LOp, ret: u64| {
            keys.entry((r.ns.clone(), key.to_string()))
                .or_default()
                .push(KeyOp {
                    op,
                    call_us: r.invoke_us,
                    ret_us: ret,
                    record: i,
                });
        };
        match (&r.kind, &r.outcome) {
            (
                OpKind::Get {
                    key,
                    consistency: Consistency::Linearizable,
                },
                Outcome::Done(ClientResponse::Value { kv, .. }),
            ) => {
                let ret = r.complete_us.unwrap_or(OPEN);
                push(
                    key,
                    LOp::Read {
                        version: kv.version,
                        value: value_id(kv.value.as_deref()),
                    },
                    ret,
                );
            }
            (
                OpKind::Write { compares, ops, .. },
                Outcome::Done(ClientResponse::Written { versions, .. }),
            ) => {
                let ret = r.complete_us.unwrap_or(OPEN);
                write_ops(r, compares, ops, Some(versions), ret, &mut push)?;
            }
            (
                OpKind::Write { ops, .. },
                Outcome::Done(ClientResponse::Unchanged { versions, .. }),
            ) => {
                // Nothing written: each key was absent at that version.
                let ret = r.complete_us.unwrap_or(OPEN);
                for (op, v) in ops.iter().zip(versions) {
                    push(
                        op.key(),
                        LOp::Read {
                            version: *v,
                            value: 0,
                        },
                        ret,
                    );
                }
            }
            (OpKind::Write { compares, .. }, Outcome::Done(ClientResponse::Conflict { .. }))
                if compares.len() == 1 =>
            {
                push(
                    &compares[0].key,
                    LOp::VersionIsNot(compares[0].version),
                    r.complete_us.unwrap_or(OPEN),
                );
            }
            (
                OpKind::Write {
                    request_id,
                    compares,
                    ops,
                },
                _,
            ) if r.indeterminate() => {
                if let Some((g, rev)) = applied.get(request_id) {
                    // Only the keys it changed: a delete of an absent key is
                    // in no applied entry, and its version is not known.
                    let a = &h.applied[*g as usize][rev];
                    let (ops, versions): (Vec<WriteOp>, Vec<u64>) = ops
                        .iter()
                        .filter_map(|op| {
                            let k = a.keys.iter().find(|k| k.0 == op.key())?;
                            Some((op.clone(), k.1))
                        })
                        .unzip();
                    write_ops(r, compares, &ops, Some(&versions), OPEN, &mut push)?;
                }
            }
            (OpKind::Write { request_id, .. }, Outcome::Done(ClientResponse::Error(code)))
                if applied.contains_key(request_id)
                    && *code != ErrorCode::Timeout
                    && *code != ErrorCode::Indeterminate =>
            {
                return Err(Violation::new(
                    PROPERTY,
                    r.complete_us,
                    format!("write {request_id} was refused with {code:?} but applied"),
                ));
            }
            _ => {}
        }
    }
    Ok(keys)
}

fn write_ops(
    r: &OpRecord,
    compares: &[meridian_core::Compare],
    ops: &[WriteOp],
    versions: Option<&Vec<u64>>,
    ret: u64,
    push: &mut impl FnMut(&str, LOp, u64),
) -> Result<(), Violation> {
    let Some(versions) = versions else {
        return Ok(());
    };
    for (op, v) in ops.iter().zip(versions) {
        let value = match op {
            WriteOp::Put { value, .. } => value_id(Some(value)),
            WriteOp::Delete { .. } => 0,
        };
        push(op.key(), LOp::Write { version: *v, value }, ret);
        if let Some(c) = compares.iter().find(|c| c.key == op.key()) {
            if c.version + 1 != *v {
                return Err(Violation::new(
                    PROPERTY,
                    r.complete_us,
                    format!(
                        "compare on {} expected {} but wrote version {v}",
                        c.key, c.version
                    ),
                ));
            }
        }
    }
    for c in compares {
        if !ops.iter().any(|o| o.key() == c.key) {
            push(&c.key, LOp::VersionIs(c.version), ret);
        }
    }
    Ok(())
}

/// Whether `ops` (one key) is linearizable from state (0, absent).
/// On failure returns the index (into `ops`) of an operation that could not be placed.
pub fn check_key(ops: &[KeyOp]) -> Result<(), Option<usize>> {
    let n = ops.len();
    if n == 0 {
        return Ok(());
    }
    // Events: (time, is_return, op). Calls sort before returns at equal times
    // (equal times are concurrent).
    let mut evs: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        evs.push((o.call_us, false, i));
        evs.push((o.ret_us, true, i));
    }
    evs.sort();
    let m = evs.len();
    // Doubly linked list over event slots 0..m, with m as head sentinel.
    let head = m;
    let mut next: Vec<usize> = (1..=m).collect();
    let mut prev: Vec<usize> = Vec::with_capacity(m + 1);
    for i in 0..m {
        prev.push(if i == 0 { head } else { i - 1 });
    }
    next[m - 1] = usize::MAX;
    next.push(0); // head -> 0
    prev.push(usize::MAX);
    let mut ret_slot = vec![0usize; n];
    for (slot, e) in evs.iter().enumerate() {
        if e.1 {
            ret_slot[e.2] = slot;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, s: usize| {
        let (p, nx) = (prev[s], next[s]);
        next[p] = nx;
        if nx != usize::MAX {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, s: usize| {
        let (p, nx) = (prev[s], next[s]);
        next[p] = s;
        if nx != usize::MAX {
            prev[nx] = s;
        }
    };
    let words = n.div_ceil(64);
    let mut lin = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = (0, 0);
    let mut entry = next[head];
    let mut steps = 0u64;
    while next[head] != usize::MAX {
        steps += 1;
        if steps > SEARCH_STEPS_MAX {
            return Err(None);
        }
        if entry == usize::MAX {
            return Err(None);
        }
        let (_, is_ret, op) = evs[entry];
        if !is_ret {
            let mut accepted = false;
            if let Some(ns) = step(state, ops[op].op) {
                lin[op / 64] |= 1 << (op % 64);
                if cache.insert((lin.clone(), ns)) {
                    stack.push((entry, state));
                    state = ns;
                    unlink(&mut next, &mut prev, entry);
                    unlink(&mut next, &mut prev, ret_slot[op]);
                    entry = next[head];
                    accepted = true;
                } else {
                    lin[op / 64] &= !(1 << (op % 64));
                }
            }
            if !accepted {
                entry = next[entry];
            }
        } else {
            let Some((call, s0)) = stack.pop() else {
                return Err(Some(op));
            };
            let op0 = evs[call].2;
            lin[op0 / 64] &= !(1 << (op0 % 64));
            state = s0;
            relink(&mut next, &mut prev, ret_slot[op0]);
            relink(&mut next, &mut prev, call);
            entry = next[call];
        }
    }
    Ok(())
}

/// Returns the number of keys and operations checked.
pub fn check(h: &History) -> Result<(usize, usize), Violation> {
    let keys = partition(h)?;
    let mut n_ops = 0;
    for ((ns, key), ops) in &keys {
        n_ops += ops.len();
        if let Err(bad) = check_key(ops) {
            // Shrink: the shortest prefix (by invocation) that already fails
            // names the operation that breaks the history.
            let mut sorted: Vec<KeyOp> = ops.clone();
            sorted.sort_by_key(|o| (o.call_us, o.ret_us));
            let (mut lo, mut hi) = (1, sorted.len());
            while lo < hi {
                let mid = (lo + hi) / 2;
                if check_key(&sorted[..mid]).is_err() {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            let culprit = hi - 1;
            let mut lines = Vec::new();
            for (i, o) in sorted
                .iter()
                .enumerate()
                .skip(culprit.saturating_sub(10))
                .take(14)
            {
                let ret = if o.ret_us == OPEN {
                    "open".to_string()
                } else {
                    o.ret_us.to_string()
                };
                let mark = if i == culprit {
                    " <- cannot be placed"
                } else {
                    ""
                };
                lines.push(format!(
                    "  [{} .. {}] {:?} (client {}){mark}",
                    o.call_us, ret, o.op, h.ops[o.record].client
                ));
            }
            let what = match bad {
                Some(_) => format!(
                    "no linearization once {:?} (invoked at {}us) is included",
                    sorted[culprit].op, sorted[culprit].call_us
                ),
                None => "search budget exhausted (inconclusive counts as failure)".to_string(),
            };
            return Err(Violation::new(
                PROPERTY,
                Some(sorted[culprit].call_us),
                format!(
                    "{ns}/{key}: {what}; operations around it:\n{}",
                    lines.join("\n")
                ),
            ));
        }
    }
    Ok((keys.len(), n_ops))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(op: LOp, call_us: u64, ret_us: u64) -> KeyOp {
        KeyOp {
            op,
            call_us,
            ret_us,
            record: 0,
        }
    }

    #[test]
    fn sequential_and_concurrent_histories_pass() {
        let ops = vec![
            op(
                LOp::Write {
                    version: 1,
                    value: 7,
                },
                0,
                10,
            ),
            op(
                LOp::Read {
                    version: 1,
                    value: 7,
                },
                11,
                20,
            ),
            // Concurrent write and read: the read may see either value.
            op(
                LOp::Write {
                    version: 2,
                    value: 9,
                },
                21,
                40,
            ),
            op(
                LOp::Read {
                    version: 1,
                    value: 7,
                },
                22,
                30,
            ),
            op(LOp::VersionIsNot(5), 41, 50),
            op(
                LOp::Write {
                    version: 3,
                    value: 1,
                },
                45,
                OPEN,
            ),
        ];
        assert!(check_key(&ops).is_ok());
    }

    #[test]
    fn stale_read_after_acknowledged_write_fails() {
        let ops = vec![
            op(
                LOp::Write {
                    version: 1,
                    value: 7,
                },
                0,
                10,
            ),
            op(
                LOp::Write {
                    version: 2,
                    value: 9,
                },
                11,
                20,
            ),
            op(
                LOp::Read {
                    version: 1,
                    value: 7,
                },
                21,
                30,
            ),
        ];
        assert!(check_key(&ops).is_err());
    }

    #[test]
    fn read_from_the_future_and_lost_update_fail() {
        let future = vec![
            op(
                LOp::Read {
                    version: 1,
                    value: 7,
                },
                0,
                5,
            ),
            op(
                LOp::Write {
                    version: 1,
                    value: 7,
                },
                6,
                10,
            ),
        ];
        assert!(check_key(&future).is_err());
        // Two writes both claiming version 1.
        let dup = vec![
            op(
                LOp::Write {
                    version: 1,
                    value: 7,
                },
                0,
                5,
            ),
            op(
                LOp::Write {
                    version: 1,
                    value: 8,
                },
                6,
                10,
            ),
        ];
        assert!(check_key(&dup).is_err());
    }

    #[test]
    fn a_delete_of_an_absent_key_keeps_its_version() {
        let put = |v, t| {
            op(
                LOp::Write {
                    version: v,
                    value: 7,
                },
                t,
                t + 1,
            )
        };
        let del = |v, t| {
            op(
                LOp::Write {
                    version: v,
                    value: 0,
                },
                t,
                t + 1,
            )
        };
        // put v1, delete v2, delete again (no effect: still v2), put v3.
        assert!(check_key(&[put(1, 0), del(2, 10), del(2, 20), put(3, 30)]).is_ok());
        // A delete of a never-written key keeps version 0.
        assert!(check_key(&[del(0, 0), put(1, 10)]).is_ok());
        // A delete of an absent key that claims to make a version is wrong.
        assert!(check_key(&[del(1, 0)]).is_err());
        assert!(check_key(&[put(1, 0), del(2, 10), del(3, 20)]).is_err());
    }
}
