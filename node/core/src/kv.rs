//! The KV state machine of one home group: namespaces, keys with per-key
//! versions and bounded history, the group's revision, and a bounded ring of
//! recent changes that watches resume from. Applying is deterministic: the
//! leader already resolved every condition, so followers replay exact effects.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::rng::fnv1a;
use crate::storage::{AdoptEffect, AdoptVersion, WriteEffect};
use crate::types::{AsOf, ChangeMeta, GroupId, KeyValue};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    #[serde(with = "serde_bytes")]
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
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    pub meta: ChangeMeta,
}

impl KeyState {
    /// Make `next` the current version, the current one (if any) the newest
    /// of the history.
    fn supersede(&mut self, revision: u64, version: u64, value: Option<Vec<u8>>, meta: ChangeMeta) {
        debug_assert!(version > self.version, "versions only grow");
        if self.version > 0 {
            self.history.push_back(OldVersion {
                revision: self.mod_revision,
                version: self.version,
                value: self.value.take(),
                meta: std::mem::take(&mut self.meta),
            });
        }
        self.value = value;
        self.version = version;
        self.mod_revision = revision;
        self.meta = meta;
    }

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

/// A copy under way: (old home, its freeze revision, last (key, version) copied).
pub type Adopting = (GroupId, u64, Option<(String, u64)>);

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
    requests: BTreeMap<u64, RequestRecord>,
    request_order: VecDeque<u64>,
    /// Namespaces moving (or moved) away: ns -> (new home, this group's
    /// revision when the freeze applied). No write to them applies here.
    frozen: BTreeMap<String, (GroupId, u64)>,
    /// Namespaces being copied in: ns -> (old home, its freeze revision, last
    /// version copied).
    adopting: BTreeMap<String, Adopting>,
    /// Namespaces copied in: ns -> (old home, old home's freeze revision,
    /// revision of the last chunk). Changes before that revision happened in
    /// another group, so watches resuming from before it resync.
    adopted: BTreeMap<String, (GroupId, u64, u64)>,
}

/// The result of an idempotent write, kept so that a retry learns it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub revision: u64,
    /// The resulting version of each op's key, in the request's op order.
    pub versions: Vec<u64>,
    /// The caller's hash of what it asked for: a retry carrying a different
    /// one reused the request id for another write and is refused, so that a
    /// reused idempotency key never passes a different write off as done.
    pub fingerprint: u64,
    /// How many live keys the write deleted.
    pub deleted: u32,
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
    /// Asked as of a revision this replica has not applied: the future, or
    /// a replica behind. Answering with today's data would be a wrong answer.
    #[error("revision {asked} is above the revision applied here ({applied})")]
    FutureRevision { asked: u64, applied: u64 },
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

    /// What a write with this request id produced, if remembered.
    pub fn request_result(&self, request_id: u64) -> Option<&RequestRecord> {
        self.state.requests.get(&request_id)
    }

    pub fn has_namespace(&self, ns: &str) -> bool {
        self.state.namespaces.contains_key(ns)
    }

    /// (new home, revision at freeze) if `ns` is frozen here.
    pub fn frozen(&self, ns: &str) -> Option<(GroupId, u64)> {
        self.state.frozen.get(ns).copied()
    }

    /// Namespaces frozen here, with their new home and freeze revision.
    pub fn frozen_namespaces(&self) -> impl Iterator<Item = (&String, GroupId, u64)> {
        self.state.frozen.iter().map(|(n, &(to, rev))| (n, to, rev))
    }

    /// (old home, its freeze revision, last version copied) while `ns` is
    /// being copied in.
    pub fn adopting(&self, ns: &str) -> Option<&Adopting> {
        self.state.adopting.get(ns)
    }

    /// The revision at which this group's copy of `ns` became its home (0:
    /// created here, or not held).
    pub fn tenure(&self, ns: &str) -> u64 {
        self.state.adopted.get(ns).map_or(0, |a| a.2)
    }

    /// (old home, its freeze revision, revision of the last chunk) once `ns`
    /// was copied in.
    pub fn adopted(&self, ns: &str) -> Option<(GroupId, u64, u64)> {
        self.state.adopted.get(ns).copied()
    }

    /// Whether `ns`'s data still sits here (false once a move dropped it).
    pub fn holds_data(&self, ns: &str) -> bool {
        self.state.namespaces.contains_key(ns)
    }

    /// The next chunk of a frozen namespace's versions after `after`, at most
    /// `bytes_max` of them (always at least one version), and whether it is
    /// the last chunk.
    pub fn adopt_chunk(
        &self,
        ns: &str,
        after: Option<&(String, u64)>,
        bytes_max: usize,
    ) -> (Vec<AdoptVersion>, bool) {
        let Some(n) = self.state.namespaces.get(ns) else {
            return (Vec::new(), true);
        };
        let start = match after {
            Some((k, _)) => std::ops::Bound::Included(k.clone()),
            None => std::ops::Bound::Unbounded,
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for (k, s) in n.range((start, std::ops::Bound::Unbounded)) {
            let older = s.history.iter().map(|o| AdoptVersion {
                key: k.clone(),
                revision: o.revision,
                version: o.version,
                value: o.value.clone(),
                meta: o.meta.clone(),
            });
            let current = AdoptVersion {
                key: k.clone(),
                revision: s.mod_revision,
                version: s.version,
                value: s.value.clone(),
                meta: s.meta.clone(),
            };
            for v in older.chain(std::iter::once(current)) {
                if after.is_some_and(|(ak, av)| ak == k && v.version <= *av) {
                    continue;
                }
                let size = v.size_bytes();
                if !out.is_empty() && bytes + size > bytes_max {
                    return (out, false);
                }
                bytes += size;
                out.push(v);
            }
        }
        (out, true)
    }

    /// Stop accepting `ns` here: it is moving to group `to`. A no-op unless
    /// `tenure` names this group's current tenure of the namespace (a stale
    /// catalog's move) and it is not frozen already.
    pub fn freeze(&mut self, ns: &str, to: GroupId, tenure: u64) {
        if self.state.frozen.contains_key(ns) || self.tenure(ns) != tenure {
            return;
        }
        let rev = self.state.revision;
        // A namespace never written here has no entry yet; it gets one so the
        // copy (empty) is told apart from a copy dropped after its move.
        self.state.namespaces.entry(ns.to_string()).or_default();
        self.state.frozen.insert(ns.to_string(), (to, rev));
        self.state.adopting.remove(ns);
        self.state.adopted.remove(ns);
    }

    /// Drop a frozen namespace's data (its freeze marker stays), if the freeze
    /// at `freeze_revision` is still this group's latest.
    pub fn drop_namespace(&mut self, ns: &str, freeze_revision: u64) {
        if self.state.frozen.get(ns).map(|f| f.1) != Some(freeze_revision) {
            return;
        }
        self.state.namespaces.remove(ns);
        self.state.ns_revisions.remove(ns);
        // Watches of the namespace here can no longer resume from this
        // group's ring: its changes are gone with the data.
    }

    /// Apply one chunk of a namespace copied in from its old home. A chunk of
    /// a move older than what this group knows of the namespace (proposed from
    /// a stale catalog), or of a copy not under way, only takes its revision.
    /// Ok(true): this chunk completed the copy.
    pub fn adopt(&mut self, a: &AdoptEffect) -> Result<bool, ApplyError> {
        if a.revision <= self.state.revision {
            return Err(ApplyError::RevisionGap {
                expected: self.state.revision + 1,
                got: a.revision,
            });
        }
        self.state.revision = a.revision;
        self.state.time_ms = self.state.time_ms.max(a.time_ms);
        if a.first {
            // Every later move of a namespace freezes it at a higher revision
            // than anything of an earlier move: see `AdoptEffect::revision`.
            let known = [
                self.state.frozen.get(&a.ns).map(|f| f.1),
                self.state.adopted.get(&a.ns).map(|x| x.2),
                self.state.adopting.get(&a.ns).map(|x| x.1),
            ];
            if known.iter().flatten().any(|&k| k >= a.freeze_revision) {
                return Ok(false);
            }
            self.state.namespaces.insert(a.ns.clone(), BTreeMap::new());
            self.state.ns_revisions.remove(&a.ns);
            self.state.frozen.remove(&a.ns);
            self.state.adopted.remove(&a.ns);
            self.state
                .adopting
                .insert(a.ns.clone(), (a.from, a.freeze_revision, None));
        }
        let Some((_, _, cursor)) = self
            .state
            .adopting
            .get_mut(&a.ns)
            .filter(|x| (x.0, x.1) == (a.from, a.freeze_revision))
        else {
            return Ok(false);
        };
        let ns = self.state.namespaces.entry(a.ns.clone()).or_default();
        for v in &a.versions {
            ns.entry(v.key.clone()).or_default().supersede(
                v.revision,
                v.version,
                v.value.clone(),
                v.meta.clone(),
            );
            *cursor = Some((v.key.clone(), v.version));
        }
        if let Some(ns_rev) = a.last_ns_revision {
            if let Some((from, _, _)) = self.state.adopting.remove(&a.ns) {
                if ns_rev > 0 {
                    self.state.ns_revisions.insert(a.ns.clone(), ns_rev);
                }
                self.state
                    .adopted
                    .insert(a.ns.clone(), (from, ns_rev, a.revision));
            }
        }
        Ok(a.last_ns_revision.is_some())
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
        if let AsOf::Revision(asked) = as_of {
            let applied = self.revision();
            if asked > applied {
                return Err(ScanError::FutureRevision { asked, applied });
            }
        }
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
            st.supersede(w.revision, k.version, k.value.clone(), w.meta.clone());
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
            out.push(Change {
                revision: w.revision,
                ns: w.ns.clone(),
                kv: st.current(&k.key),
            });
        }
        if w.request_id != 0 {
            self.state.requests.insert(
                w.request_id,
                RequestRecord {
                    revision: w.revision,
                    versions: w.reply_versions.clone(),
                    fingerprint: w.fingerprint,
                    deleted: w.deleted(),
                },
            );
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
        // Changes up to the namespace's last change in its old home happened
        // there, not in this ring: a watcher that has not seen them resyncs.
        // (Revisions only grow across a move, so `after` compares.)
        if self
            .state
            .adopted
            .get(ns)
            .is_some_and(|&(_, last_ns_rev, _)| after < last_ns_rev)
        {
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

    pub fn encode(&self) -> Result<Vec<u8>, crate::wire::EncodeError> {
        crate::wire::encode("state machine snapshot", &self.state)
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
    pub fn digest(&self) -> Result<u64, crate::wire::EncodeError> {
        Ok(fnv1a(&self.encode()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{KeyEffect, Retention};

    /// `KeyState` as it was before its byte fields were marked
    /// `serde_bytes` (each byte serialized as a sequence element).
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct KeyStateAsSeq {
        value: Option<Vec<u8>>,
        version: u64,
        mod_revision: u64,
        meta: ChangeMeta,
        history: VecDeque<OldVersionAsSeq>,
    }
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct OldVersionAsSeq {
        revision: u64,
        version: u64,
        value: Option<Vec<u8>>,
        meta: ChangeMeta,
    }

    #[test]
    fn byte_fields_encode_as_before_serde_bytes() {
        // serde_bytes makes postcard copy values in one go instead of one
        // call per byte; the encoding must stay the same, or data directories
        // and peers of the previous build could not be read.
        let new = KeyState {
            value: Some(vec![0, 1, 255, 128, 7]),
            version: 3,
            mod_revision: 9,
            meta: ChangeMeta::default(),
            history: VecDeque::from([OldVersion {
                revision: 4,
                version: 2,
                value: None,
                meta: ChangeMeta::default(),
            }]),
        };
        let old = KeyStateAsSeq {
            value: Some(vec![0, 1, 255, 128, 7]),
            version: 3,
            mod_revision: 9,
            meta: ChangeMeta::default(),
            history: VecDeque::from([OldVersionAsSeq {
                revision: 4,
                version: 2,
                value: None,
                meta: ChangeMeta::default(),
            }]),
        };
        let a = postcard::to_allocvec(&new).expect("encode");
        let b = postcard::to_allocvec(&old).expect("encode");
        assert_eq!(a, b);
        let back: KeyStateAsSeq = postcard::from_bytes(&a).expect("decode as before");
        assert_eq!(back, old);
    }

    fn put(rev: u64, key: &str, v: &str, version: u64) -> WriteEffect {
        WriteEffect {
            ns: "n".into(),
            revision: rev,
            request_id: rev,
            fingerprint: rev,
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
        let data = sm.encode().unwrap();
        let mut other = GroupSm::new(["n".to_string()], 4, 10, 10);
        other.restore(&data).unwrap();
        assert_eq!(other.digest().unwrap(), sm.digest().unwrap());
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
        assert_eq!(
            sm.scan_as_of("n", "s.", AsOf::Revision(sm.revision() + 1), 100),
            Err(ScanError::FutureRevision {
                asked: sm.revision() + 1,
                applied: sm.revision()
            }),
            "a future revision is refused, not answered with the present"
        );
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

    #[test]
    fn a_frozen_namespace_copies_chunk_by_chunk_with_its_history() {
        let mut src = GroupSm::new(["n".to_string()], 10, 10, 10);
        for (rev, key, version) in [(1, "a", 1), (2, "b", 1), (3, "a", 2), (4, "c", 1)] {
            src.apply(&at(rev, key, Some("vvvvvvvv"), version, rev * 10))
                .unwrap();
        }
        src.apply(&at(5, "b", None, 2, 50)).unwrap();
        src.freeze("n", 1, 7);
        assert_eq!(
            src.frozen("n"),
            None,
            "a freeze of another tenure is a no-op"
        );
        src.freeze("n", 1, 0);
        assert_eq!(src.frozen("n"), Some((1, 5)));
        let mut dst = GroupSm::new(Vec::<String>::new(), 10, 10, 10);
        dst.apply(&at(1, "x", Some("1"), 1, 5)).unwrap();
        // Chunks small enough that every version goes alone.
        let mut after: Option<(String, u64)> = None;
        let mut revision = src.revision().max(dst.revision());
        let mut chunks = 0;
        loop {
            let (versions, done) = src.adopt_chunk("n", after.as_ref(), 1);
            assert!(!versions.is_empty(), "a chunk always makes progress");
            revision += 1;
            dst.adopt(&AdoptEffect {
                ns: "n".into(),
                from: 0,
                revision,
                freeze_revision: 5,
                first: chunks == 0,
                last_ns_revision: done.then(|| src.ns_revision("n")),
                time_ms: src.time_ms(),
                versions,
            })
            .unwrap();
            chunks += 1;
            if done {
                break;
            }
            after = dst.adopting("n").and_then(|(_, _, c)| c.clone());
        }
        assert_eq!(chunks, 5, "five versions, one per chunk");
        for key in ["a", "b", "c"] {
            assert_eq!(dst.history("n", key), src.history("n", key), "{key}");
        }
        assert_eq!(dst.ns_revision("n"), 5);
        assert_eq!(dst.adopted("n"), Some((0, 5, revision)));
        assert!(dst.revision() > 5, "revisions only grow across the move");
        assert!(
            dst.changes_since("n", "", 3).is_none(),
            "a watcher behind the old home's last change resyncs"
        );
        assert_eq!(dst.changes_since("n", "", 5), Some(Vec::new()));
        let (kvs, ns_rev) = dst.scan_as_of("n", "", AsOf::Revision(2), 10).unwrap();
        assert_eq!((kvs.len(), ns_rev), (2, 2), "as-of reads keep working");
        // A stale copy of the same move (or an older one) changes nothing.
        let digest = dst.digest().unwrap();
        revision += 1;
        dst.adopt(&AdoptEffect {
            ns: "n".into(),
            from: 0,
            revision,
            freeze_revision: 5,
            first: true,
            last_ns_revision: Some(0),
            time_ms: 0,
            versions: Vec::new(),
        })
        .unwrap();
        assert_eq!(
            dst.history("n", "a").len(),
            2,
            "the stale copy emptied nothing"
        );
        assert_ne!(dst.digest().unwrap(), digest, "it took its revision");
        src.drop_namespace("n", 4);
        assert!(src.holds_data("n"), "a drop of another freeze is a no-op");
        src.drop_namespace("n", 5);
        assert!(!src.holds_data("n") && src.frozen("n").is_some());
    }
}
