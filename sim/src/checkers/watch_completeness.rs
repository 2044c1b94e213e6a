//! Watch completeness: every watcher sees each committed change under its
//! prefix exactly once, in revision order, across reconnects; or an explicit
//! resync whose snapshot is the committed state at its revision.

use std::collections::BTreeMap;

use crate::history::{Applied, History, Violation, WatchRec};

pub const PROPERTY: &str = "watch completeness";

fn matching<'a>(
    revs: &'a BTreeMap<u64, Applied>,
    ns: &'a str,
    prefix: &'a str,
    after: u64,
    upto: u64,
) -> impl Iterator<Item = (u64, &'a (String, u64, bool))> + 'a {
    // Exclusive bounds: an empty range (start == end) is allowed, a reversed one is not.
    let lo = after.saturating_add(1);
    let hi = upto.saturating_add(1).max(lo);
    revs.range(lo..hi)
        .filter(move |(_, a)| a.ns == ns)
        .flat_map(move |(r, a)| {
            a.keys
                .iter()
                .filter(move |k| k.0.starts_with(prefix))
                .map(move |k| (*r, k))
        })
}

/// Returns the number of events checked.
pub fn check(h: &History) -> Result<usize, Violation> {
    let mut checked = 0;
    for w in &h.watches {
        let revs = &h.applied[w.group as usize];
        let bad = |detail: String| {
            Violation::new(
                PROPERTY,
                None,
                format!("watcher of client {} on {}: {detail}", w.client, w.ns),
            )
        };
        let mut cursor: Option<u64> = None;
        let mut pending_start: Option<Option<u64>> = None;
        for rec in &w.recs {
            match rec {
                WatchRec::Start { from, .. } => {
                    if from.is_some() && *from != cursor {
                        return Err(bad(format!(
                            "resumed from {from:?} but had seen up to {cursor:?}"
                        )));
                    }
                    pending_start = Some(*from);
                }
                WatchRec::Disconnected { .. } => pending_start = None,
                WatchRec::Resync { revision, snapshot } => {
                    // The committed state of the prefix at `revision`.
                    let mut state: BTreeMap<&str, (u64, bool)> = BTreeMap::new();
                    for (_, k) in matching(revs, &w.ns, &w.prefix, 0, *revision) {
                        state.insert(&k.0, (k.1, k.2));
                    }
                    let expect: Vec<(&str, u64)> = state
                        .iter()
                        .filter(|(_, v)| v.1)
                        .map(|(k, v)| (*k, v.0))
                        .collect();
                    let got: Vec<(&str, u64)> = snapshot
                        .iter()
                        .map(|kv| (kv.key.as_str(), kv.version))
                        .collect();
                    if expect != got {
                        return Err(bad(format!(
                            "resync at revision {revision} does not match the committed state"
                        )));
                    }
                    cursor = Some(*revision);
                    pending_start = None;
                }
                WatchRec::Events { revision, events } => {
                    let from = match (cursor, pending_start.take()) {
                        (_, Some(None)) if events.is_empty() => {
                            // A fresh watch confirms where "now" is.
                            cursor = Some(*revision);
                            continue;
                        }
                        (Some(c), _) => c,
                        (None, _) => {
                            return Err(bad(format!(
                                "events at {revision} before the watch was confirmed"
                            )))
                        }
                    };
                    if *revision < from || (*revision == from && !events.is_empty()) {
                        return Err(bad(format!(
                            "revision {revision} delivered again or out of order (had {from})"
                        )));
                    }
                    let upto = if events.is_empty() {
                        *revision
                    } else {
                        revision.saturating_sub(1)
                    };
                    if let Some((r, k)) = matching(revs, &w.ns, &w.prefix, from, upto).next() {
                        return Err(bad(format!(
                            "missed {} version {} at revision {r}",
                            k.0, k.1
                        )));
                    }
                    let expect: Vec<(&str, u64)> = matching(
                        revs,
                        &w.ns,
                        &w.prefix,
                        revision.saturating_sub(1),
                        *revision,
                    )
                    .map(|(_, k)| (k.0.as_str(), k.1))
                    .collect();
                    let got: Vec<(&str, u64)> = events
                        .iter()
                        .map(|kv| (kv.key.as_str(), kv.version))
                        .collect();
                    if !events.is_empty() && expect != got {
                        return Err(bad(format!(
                            "revision {revision}: delivered {got:?}, committed {expect:?}"
                        )));
                    }
                    checked += events.len();
                    cursor = Some(*revision);
                }
            }
        }
        // At the end every watcher has caught up with what its group committed.
        if let Some(c) = cursor {
            let last = revs.keys().next_back().copied().unwrap_or(0);
            if let Some((r, k)) = matching(revs, &w.ns, &w.prefix, c, last).next() {
                return Err(bad(format!(
                    "never received {} version {} (revision {r})",
                    k.0, k.1
                )));
            }
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::WatchLog;
    use meridian_core::KeyValue;

    fn kv(key: &str, version: u64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(vec![1]),
            version,
            mod_revision: 0,
            meta: Default::default(),
        }
    }

    fn setup() -> History {
        let mut h = History::new(1);
        for r in 1..=3u64 {
            let a = Applied {
                request_id: r,
                digest: r,
                ns: "n".into(),
                keys: vec![("k".into(), r, true)],
                first_node: 0,
                at_us: r,
            };
            h.record_applied(0, r, 0, a);
        }
        h
    }

    fn log(recs: Vec<WatchRec>) -> WatchLog {
        WatchLog {
            client: 0,
            region: 0,
            ns: "n".into(),
            group: 0,
            prefix: "".into(),
            recs,
        }
    }

    #[test]
    fn complete_stream_passes_and_gap_or_duplicate_fails() {
        let mut h = setup();
        let start = WatchRec::Start {
            from: None,
            at_us: 0,
        };
        let conf = WatchRec::Events {
            revision: 0,
            events: vec![],
        };
        let ev = |r: u64| WatchRec::Events {
            revision: r,
            events: vec![kv("k", r)],
        };
        h.watches = vec![log(vec![start.clone(), conf.clone(), ev(1), ev(2), ev(3)])];
        assert_eq!(check(&h).unwrap(), 3);
        h.watches = vec![log(vec![start.clone(), conf.clone(), ev(1), ev(3)])];
        assert!(check(&h).is_err(), "gap");
        h.watches = vec![log(vec![
            start.clone(),
            conf.clone(),
            ev(1),
            ev(1),
            ev(2),
            ev(3),
        ])];
        assert!(check(&h).is_err(), "duplicate");
        h.watches = vec![log(vec![start.clone(), conf.clone(), ev(1)])];
        assert!(check(&h).is_err(), "never caught up");
        let resync = WatchRec::Resync {
            revision: 2,
            snapshot: vec![kv("k", 2)],
        };
        h.watches = vec![log(vec![start.clone(), resync, ev(3)])];
        assert!(check(&h).is_ok());
        let bad_resync = WatchRec::Resync {
            revision: 2,
            snapshot: vec![kv("k", 1)],
        };
        h.watches = vec![log(vec![start, bad_resync, ev(3)])];
        assert!(check(&h).is_err(), "resync with the wrong state");
    }
}
