//! The KV state machine of one home group: namespaces, keys with per-key
//! versions and bounded history, the group's revision, and a bounded ring of
//! recent changes that watches resume from. Applying is deterministic: the
//! leader already resolved every condition, so followers replay exact effects.

mod moves;

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::audit::{
    clip, AuditEvent, AuditLog, AuditRetention, AUDIT_KEYS_MAX, AUDIT_TEXT_MAX, RESULT_OK,
};
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

impl OldVersion {
    fn to_kv(&self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: self.value.clone(),
            version: self.version,
            mod_revision: self.revision,
            meta: self.meta.clone(),
        }
    }
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
            .map(|o| o.to_kv(key))
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
    /// Namespaces copied in: their earlier homes (see `AdoptEffect::lineage`).
    lineage: BTreeMap<String, Vec<(GroupId, u64)>>,
    /// The group's audit chain: a record per write and per audited event.
    audit: AuditLog,
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
    audit_keep: AuditRetention,
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
            audit_keep: AuditRetention::default(),
        }
    }

    /// Keep audit records as `keep` says (a cluster-wide setting).
    pub fn with_audit_retention(mut self, keep: AuditRetention) -> GroupSm {
        self.audit_keep = keep;
        self
    }

    /// The group's audit chain.
    pub fn audit(&self) -> &AuditLog {
        &self.state.audit
    }

    /// Replace stored versions' bytes in place where they still hold what
    /// the patch expects (`EntryData::ReplaceValues`): no new version, no
    /// revision. Returns how many applied.
    pub fn apply_replace(&mut self, ns: &str, items: &[crate::types::ValuePatch]) -> usize {
        let Some(n) = self.state.namespaces.get_mut(ns) else {
            return 0;
        };
        let mut applied = 0;
        for it in items {
            let Some(st) = n.get_mut(&it.key) else {
                continue;
            };
            let slot = if st.version == it.version {
                Some(&mut st.value)
            } else {
                st.history
                    .iter_mut()
                    .find(|o| o.version == it.version)
                    .map(|o| &mut o.value)
            };
            if let Some(v) = slot {
                if v.as_deref().is_some_and(|b| fnv1a(b) == it.expect) {
                    *v = Some(it.value.clone());
                    applied += 1;
                }
            }
        }
        applied
    }

    /// Append the records of an `EntryData::Audit` batch.
    pub fn apply_audit(&mut self, events: &[AuditEvent]) {
        for e in events {
            self.state
                .audit
                .append(self.state.revision, e.clone(), self.audit_keep);
        }
    }

    #[doc(hidden)]
    pub fn audit_mut_for_test(&mut self) -> &mut AuditLog {
        &mut self.state.audit
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
        let mut out: Vec<KeyValue> = k.history.iter().map(|o| o.to_kv(key)).collect();
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
        if !crate::node::is_system_ns(&w.ns) {
            self.state
                .audit
                .append(w.revision, write_record(w), self.audit_keep);
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

/// The audit record of a write: who, from where, which keys, and the
/// change message.
fn write_record(w: &WriteEffect) -> AuditEvent {
    let mut keys: Vec<String> = w
        .keys
        .iter()
        .take(AUDIT_KEYS_MAX)
        .map(|k| clip(&k.key, AUDIT_TEXT_MAX))
        .collect();
    keys.dedup();
    let more = w.keys.len().saturating_sub(AUDIT_KEYS_MAX);
    let mut detail = clip(&w.meta.message, AUDIT_TEXT_MAX - 32);
    if more > 0 {
        detail = format!("{detail} (+{more} more keys)");
    }
    AuditEvent {
        time_ms: w.meta.time_ms,
        ctx: w.audit.clone(),
        ns: w.ns.clone(),
        keys,
        result: RESULT_OK.to_string(),
        detail,
    }
}

#[cfg(test)]
mod tests;
