//! The KV state machine of one home group: namespaces, keys with per-key
//! versions and bounded history, the group's revision, and a bounded ring of
//! recent changes that watches resume from. Applying is deterministic: the
//! leader already resolved every condition, so followers replay exact effects.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::rng::fnv1a;
use crate::storage::WriteEffect;
use crate::types::{AsOf, ChangeMeta, KeyValue};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    pub value: Option<Vec<u8>>,
    pub version: u64,
    pub mod_revision: u64,
    pub meta: ChangeMeta,
    /// Older versions, oldest first.
    pub history: VecDeque<OldVersion>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OldVersion {
    pub revision: u64,
    pub version: u64,
    pub value: Option<Vec<u8>>,
    pub meta: ChangeMeta,
}

impl KeyState {
    fn current(&self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: self.value.clone(),
            version: self.version,
            mod_revision: self.mod_revision,
            meta: self.meta.clone(),
        }
    }

    /// The newest version for which `keep` holds, current first, then older ones.
    fn newest_where(&self, key: &str, keep: impl Fn(u64, &ChangeMeta) -> bool) -> Option<KeyValue> {
        if keep(self.mod_revision, &self.meta) {
            return Some(self.current(key));
        }
        self.history
            .iter()
            .rev()
            .find(|o| keep(o.revision, &o.meta))
            .map(|o| KeyValue {
                key: key.to_string(),
                value: o.value.clone(),
                version: o.version,
                mod_revision: o.revision,
                meta: o.meta.clone(),
            })
    }
}

/// One change, as watches deliver it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub revision: u64,
    pub ns: String,
    pub kv: KeyValue,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Persisted {
    revision: u64,
    namespaces: BTreeMap<String, BTreeMap<String, KeyState>>,
    /// The revision that last changed each namespace (compare target of
    /// whole-namespace read-validate-write cycles).
    ns_revisions: BTreeMap<String, u64>,
    /// Change time of the newest applied write (times never go backwards).
    time_ms: u64,
    /// Results of recent writes by request id (idempotency), oldest first in `request_order`.
    requests: BTreeMap<u64, (u64, Vec<u64>)>,
    request_order: VecDeque<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct GroupSm {
    state: Persisted,
    /// Recent changes, oldest first; every change with revision > `changes_floor`
    /// is here.
    changes: VecDeque<Change>,
    changes_floor: u64,
    changes_max: usize,
    history_max: usize,
    requests_max: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("the scan matches more keys than one response may hold")]
    TooLarge,
    #[error("retention dropped the versions of {0} at that point")]
    Compacted(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("effect at revision {got} but the state machine expects {expected}")]
    RevisionGap { expected: u64, got: u64 },
    #[error("corrupt snapshot: {0}")]
    CorruptSnapshot(String),
}

impl GroupSm {
    pub fn new(
        namespaces: impl IntoIterator<Item = String>,
        history_max: usize,
        changes_max: usize,
        requests_max: usize,
    ) -> GroupSm {
        let mut state = Persisted::default();
        for ns in namespaces {
            state.namespaces.insert(ns, BTreeMap::new());
        }
        GroupSm {
            state,
            changes: VecDeque::new(),
            changes_floor: 0,
            changes_max,
            history_max: history_max.max(1),
            requests_max: requests_max.max(1),
        }
    }

    pub fn revision(&self) -> u64 {
        self.state.revision
    }

    /// The revision and versions a write with this request id produced, if remembered.
    pub fn request_result(&self, request_id: u64) -> Option<&(u64, Vec<u64>)> {
        self.state.requests.get(&request_id)
    }

    pub fn has_namespace(&self, ns: &str) -> bool {
        self.state.namespaces.contains_key(ns)
    }

    pub fn get(&self, ns: &str, key: &str) -> KeyValue {
        let ks = self.state.namespaces.get(ns).and_then(|n| n.get(key));
        match ks {
            Some(k) => k.current(key),
            None => KeyValue {
                key: key.to_string(),
                value: None,
                version: 0,
                mod_revision: 0,
                meta: ChangeMeta::default(),
            },
        }
    }

    /// Version history of a key, oldest first, the current version last.
    pub fn history(&self, ns: &str, key: &str) -> Vec<KeyValue> {
        let Some(k) = self.state.namespaces.get(ns).and_then(|n| n.get(key)) else {
            return Vec::new();
        };
        let mut out: Vec<KeyValue> = k
            .history
            .iter()
            .map(|o| KeyValue {
                key: key.to_string(),
                value: o.value.clone(),
                version: o.version,
                mod_revision: o.revision,
                meta: o.meta.clone(),
            })
            .collect();
        out.push(k.current(key));
        out
    }

    /// Current live keys under `prefix`, in key order.
    pub fn scan(&self, ns: &str, prefix: &str) -> Vec<KeyValue> {
        let Some(n) = self.state.namespaces.get(ns) else {
            return Vec::new();
        };
        n.range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, s)| s.value.is_some())
            .map(|(k, s)| s.current(k))
            .collect()
    }

    /// The last-change revision of a namespace (0: never changed).
    pub fn ns_revision(&self, ns: &str) -> u64 {
        self.state.ns_revisions.get(ns).copied().unwrap_or(0)
    }

    /// Change time of the newest applied write.
    pub fn time_ms(&self) -> u64 {
        self.state.time_ms
    }

    /// Live keys under `prefix` as of a point in history, at most `limit`
    /// (None: more match), and the namespace's revision at that point. A key
    /// whose versions at that point were dropped by retention is absent.
    pub fn scan_as_of(
        &self,
        ns: &str,
        prefix: &str,
        as_of: AsOf,
        limit: usize,
    ) -> Result<(Vec<KeyValue>, u64), ScanError> {
        let Some(n) = self.state.namespaces.get(ns) else {
            return Ok((Vec::new(), 0));
        };
        let mut out = Vec::new();
        let mut ns_rev = 0;
        for (k, s) in n
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            let kv = match as_of {
                AsOf::Latest => Some(s.current(k)),
                AsOf::Revision(r) => s.newest_where(k, |rev, _| rev <= r),
                AsOf::TimeMs(t) => s.newest_where(k, |_, m| m.time_ms <= t),
            };
            let Some(kv) = kv else {
                // Absent at that point: never written by then if its first
                // version is still retained, else retention dropped the answer.
                let first_retained = s.history.front().map_or(s.version, |o| o.version);
                if first_retained > 1 {
                    return Err(ScanError::Compacted(k.clone()));
                }
                continue;
            };
            ns_rev = ns_rev.max(kv.mod_revision);
            if kv.value.is_some() {
                if out.len() == limit {
                    return Err(ScanError::TooLarge);
                }
                out.push(kv);
            }
        }
        if as_of == AsOf::Latest {
            ns_rev = self.ns_revision(ns);
        }
        Ok((out, ns_rev))
    }

    /// Up to `limit` live keys under `prefix` after `start_after`, in key
    /// order, and whether more follow.
    pub fn list(
        &self,
        ns: &str,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> (Vec<KeyValue>, bool) {
        let Some(n) = self.state.namespaces.get(ns) else {
            return (Vec::new(), false);
        };
        let start = if start_after.as_bytes() >= prefix.as_bytes() {
            std::ops::Bound::Excluded(start_after.to_string())
        } else {
            std::ops::Bound::Included(prefix.to_string())
        };
        let mut live = n
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, s)| s.value.is_some());
        let out: Vec<KeyValue> = live
            .by_ref()
            .take(limit)
            .map(|(k, s)| s.current(k))
            .collect();
        let more = live.next().is_some();
        (out, more)
    }

    /// Apply one write effect. Returns the changes it made.
    pub fn apply(&mut self, w: &WriteEffect) -> Result<Vec<Change>, ApplyError> {
        let expected = self.state.revision + 1;
        if w.revision != expected {
            return Err(ApplyError::RevisionGap {
                expected,
                got: w.revision,
            });
        }
        self.state.revision = w.revision;
        self.state.time_ms = self.state.time_ms.max(w.meta.time_ms);
        self.state.ns_revisions.insert(w.ns.clone(), w.revision);
        let versions_max = match w.retention.versions_max {
            0 => self.history_max,
            n => n as usize,
        };
        let oldest_ms = match w.retention.age_ms_max {
            0 => 0,
            age => w.meta.time_ms.saturating_sub(age),
        };
        let ns = self.state.namespaces.entry(w.ns.clone()).or_default();
        let mut out = Vec::with_capacity(w.keys.len());
        for k in &w.keys {
            let st = ns.entry(k.key.clone()).or_default();
            debug_assert!(k.version > st.version, "versions only grow");
            if st.version > 0 {
                st.history.push_back(OldVersion {
                    revision: st.mod_revision,
                    version: st.version,
                    value: st.value.take(),
                    meta: std::mem::take(&mut st.meta),
                });
            }
            // Retention: by count (the current version counts), then by age.
            while st.history.len() + 1 > versions_max {
                st.history.pop_front();
            }
            while st
                .history
                .front()
                .is_some_and(|o| o.meta.time_ms < oldest_ms)
            {
                st.history.pop_front();
            }
            st.value = k.value.clone();
            st.version = k.version;
            st.mod_revision = w.revision;
            st.meta = w.meta.clone();
            out.push(Change {
                revision: w.revision,
                ns: w.ns.clone(),
                kv: st.current(&k.key),
            });
        }
        if w.request_id != 0 {
            self.state
                .requests
                .insert(w.request_id, (w.revision, w.reply_versions.clone()));
            self.state.request_order.push_back(w.request_id);
            while self.state.request_order.len() > self.requests_max {
                if let Some(old) = self.state.request_order.pop_front() {
                    self.state.requests.remove(&old);
                }
            }
        }
        for c in &out {
            self.changes.push_back(c.clone());
        }
        while self.changes.len() > self.changes_max {
            if let Some(c) = self.changes.pop_front() {
                self.changes_floor = c.revision;
            }
        }
        // A revision's changes leave the ring together, so watchers never see half of one.
        while self
            .changes
            .front()
            .is_some_and(|c| c.revision <= self.changes_floor)
        {
            self.changes.pop_front();
        }
        Ok(out)
    }

    /// Changes in `ns` under `prefix` with revision > `after`, or None if some
    /// of them are no longer retained (the watcher must resync).
    pub fn changes_since(&self, ns: &str, prefix: &str, after: u64) -> Option<Vec<Change>> {
        if after < self.changes_floor {
            return None;
        }
        let start = self.changes.partition_point(|c| c.revision <= after);
        Some(
            self.changes
                .range(start..)
                .filter(|c| c.ns == ns && c.kv.key.starts_with(prefix))
                .cloned()
                .collect(),
        )
    }

    pub fn encode(&self) -> Vec<u8> {
        // Invariant: plain maps, strings and integers always encode.
        postcard::to_allocvec(&self.state).unwrap_or_default()
    }

    /// Replace the state with a snapshot. History before it is no longer
    /// available to watches (they resync).
    pub fn restore(&mut self, data: &[u8]) -> Result<(), ApplyError> {
        let state: Persisted =
            postcard::from_bytes(data).map_err(|e| ApplyError::CorruptSnapshot(e.to_string()))?;
        self.state = state;
        self.changes.clear();
        self.changes_floor = self.state.revision;
        Ok(())
    }

    /// A digest of the whole state: equal digests, equal data.
    pub fn digest(&self) -> u64 {
        fnv1a(&self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{KeyEffect, Retention};

    fn put(rev: u64, key: &str, v: &str, version: u64) -> WriteEffect {
        WriteEffect {
            ns: "n".into(),
            revision: rev,
            request_id: rev,
            keys: vec![KeyEffect {
                key: key.into(),
                value: Some(v.as_bytes().to_vec()),
                version,
            }],
            reply_versions: vec![version],
            meta: ChangeMeta::default(),
            retention: Default::default(),
        }
    }

    #[test]
    fn apply_history_and_gaps() {
        let mut sm = GroupSm::new(["n".to_string()], 2, 3, 10);
        sm.apply(&put(1, "a", "1", 1)).unwrap();
        sm.apply(&put(2, "a", "2", 2)).unwrap();
        sm.apply(&put(3, "a", "3", 3)).unwrap();
        assert_eq!(
            sm.history("n", "a").len(),
            2,
            "history bounded to 2 versions"
        );
        assert_eq!(sm.get("n", "a").version, 3);
        assert!(matches!(
            sm.apply(&put(5, "a", "x", 4)),
            Err(ApplyError::RevisionGap { .. })
        ));
        sm.apply(&put(4, "b", "1", 1)).unwrap();
        // ring holds 3 changes: revisions 2..=4; asking from 0 needs revision 1.
        assert!(sm.changes_since("n", "", 0).is_none());
        assert_eq!(sm.changes_since("n", "", 1).unwrap().len(), 3);
        assert_eq!(sm.changes_since("n", "b", 1).unwrap().len(), 1);
    }

    #[test]
    fn list_pages_by_prefix_and_skips_deleted() {
        let mut sm = GroupSm::new(["n".to_string()], 2, 10, 10);
        for (i, k) in ["a/1", "a/2", "a/3", "a/4", "b/1"].iter().enumerate() {
            sm.apply(&put(i as u64 + 1, k, "v", 1)).unwrap();
        }
        let mut del = put(6, "a/2", "", 2);
        del.keys[0].value = None;
        sm.apply(&del).unwrap();
        let (page, more) = sm.list("n", "a/", "", 2);
        let keys: Vec<_> = page.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(keys, ["a/1", "a/3"], "deleted a/2 is skipped");
        assert!(more);
        let (page, more) = sm.list("n", "a/", "a/3", 2);
        let keys: Vec<_> = page.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(keys, ["a/4"]);
        assert!(!more, "b/1 is outside the prefix");
        let (page, _) = sm.list("n", "", "", 10);
        assert_eq!(page.len(), 4);
    }

    #[test]
    fn snapshot_roundtrip_and_corruption() {
        let mut sm = GroupSm::new(["n".to_string()], 4, 10, 10);
        sm.apply(&put(1, "a", "1", 1)).unwrap();
        let data = sm.encode();
        let mut other = GroupSm::new(["n".to_string()], 4, 10, 10);
        other.restore(&data).unwrap();
        assert_eq!(other.digest(), sm.digest());
        assert!(
            other.changes_since("n", "", 0).is_none(),
            "watch history is gone after a snapshot"
        );
        assert!(other.restore(&[0xff, 0xff, 0xff]).is_err());
    }

    fn at(rev: u64, key: &str, v: Option<&str>, version: u64, time_ms: u64) -> WriteEffect {
        let mut w = put(rev, key, "", version);
        w.keys[0].value = v.map(|v| v.as_bytes().to_vec());
        w.meta = ChangeMeta {
            author: format!("a{rev}"),
            message: format!("m{rev}"),
            time_ms,
        };
        w
    }

    #[test]
    fn scan_as_of_revision_and_time() {
        let mut sm = GroupSm::new(["n".to_string()], 10, 10, 10);
        sm.apply(&at(1, "s.a", Some("1"), 1, 100)).unwrap();
        sm.apply(&at(2, "s.b", Some("1"), 1, 200)).unwrap();
        sm.apply(&at(3, "s.a", Some("2"), 2, 300)).unwrap();
        sm.apply(&at(4, "s.b", None, 2, 400)).unwrap();
        let vals = |kvs: &[KeyValue]| -> Vec<(String, String)> {
            kvs.iter()
                .map(|k| {
                    (
                        k.key.clone(),
                        String::from_utf8(k.value.clone().unwrap()).unwrap(),
                    )
                })
                .collect()
        };
        let (now, rev) = sm.scan_as_of("n", "s.", AsOf::Latest, 100).unwrap();
        assert_eq!(vals(&now), [("s.a".to_string(), "2".to_string())]);
        assert_eq!(rev, 4, "the delete of s.b is the namespace's last change");
        let (r2, rev) = sm.scan_as_of("n", "s.", AsOf::Revision(2), 100).unwrap();
        assert_eq!(
            vals(&r2),
            [("s.a".into(), "1".into()), ("s.b".into(), "1".into())]
        );
        assert_eq!(rev, 2);
        let (t, _) = sm.scan_as_of("n", "s.", AsOf::TimeMs(350), 100).unwrap();
        assert_eq!(
            vals(&t),
            [("s.a".into(), "2".into()), ("s.b".into(), "1".into())]
        );
        assert_eq!(t[0].meta.author, "a3", "a version keeps its author");
        let (none, rev) = sm.scan_as_of("n", "s.", AsOf::TimeMs(50), 100).unwrap();
        assert!(
            none.is_empty() && rev == 0,
            "nothing existed before the first change"
        );
        assert_eq!(
            sm.scan_as_of("n", "s.", AsOf::Revision(2), 1),
            Err(ScanError::TooLarge),
            "a scan never silently truncates"
        );
    }

    #[test]
    fn retention_by_count_and_age_is_carried_by_the_effect() {
        let mut sm = GroupSm::new(["n".to_string()], 10, 10, 10);
        for v in 1..=5u64 {
            let mut w = at(v, "k", Some("x"), v, v * 1000);
            w.retention = Retention {
                versions_max: 3,
                age_ms_max: 0,
            };
            sm.apply(&w).unwrap();
        }
        let h = sm.history("n", "k");
        assert_eq!(h.iter().map(|k| k.version).collect::<Vec<_>>(), [3, 4, 5]);
        let mut w = at(6, "k", Some("y"), 6, 10_000);
        w.retention = Retention {
            versions_max: 0,
            age_ms_max: 5_500,
        };
        sm.apply(&w).unwrap();
        let h = sm.history("n", "k");
        assert_eq!(
            h.iter().map(|k| k.version).collect::<Vec<_>>(),
            [5, 6],
            "versions changed before 10000-5500 ms are dropped"
        );
        assert_eq!(h[1].meta.message, "m6");
        assert_eq!(
            sm.scan_as_of("n", "", AsOf::Revision(3), 10),
            Err(ScanError::Compacted("k".into())),
            "a point retention dropped is an error, not an absent key"
        );
    }
}
