//! The audit log: what a record says, and one group's hash chain of them.
//!
//! Every group keeps its own chain in its state machine, so records are
//! replicated, snapshotted and restored with the data they describe. A
//! write's record is made when its log entry applies (the write and its
//! record share the entry: no write is acknowledged without it). Records of
//! other events (refusals, token, role and grant changes, moves) reach a
//! group as `EntryData::Audit` batches, proposed through the serving region's
//! home group.
//!
//! Tamper evidence: record `n`'s hash is SHA-256 over a domain tag, record
//! `n - 1`'s hash and the canonical (postcard) encoding of record `n`'s
//! contents. Retention drops whole records from the front and keeps the hash
//! of the last one dropped (`floor_hash`), so the retained chain still
//! verifies from there. Each replica computes the hashes itself as it
//! applies, so a record changed in one replica's storage either no longer
//! matches its stored hash (`verify_chain` names it) or, if it changed in a
//! log entry that was replayed, yields a chain that differs from the other
//! replicas' from that record on (`meridian audit verify` compares regions).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::types::NodeId;

/// Bytes per text field of a record (principal, action, key, ...): records
/// are small and a caller cannot bloat the log through them.
pub const AUDIT_TEXT_MAX: usize = 512;
/// Keys a record names at most (a larger write names the first ones and
/// says how many more in `detail`).
pub const AUDIT_KEYS_MAX: usize = 32;
/// Events in one `EntryData::Audit` batch at most.
pub const AUDIT_BATCH_MAX: usize = 256;
/// Records one query scans at most before it answers with a cursor: a query
/// runs on the core's only thread, so its work is bounded.
pub const AUDIT_SCAN_MAX: usize = 20_000;
/// Records one query returns at most.
pub const AUDIT_PAGE_MAX: usize = 1_000;

/// The result recorded for an accepted request.
pub const RESULT_OK: &str = "OK";

/// The domain tag hashed before every record (versions the hash format).
const HASH_TAG: &[u8] = b"meridian-audit-v1\0";

pub type Hash = [u8; 32];

/// Who asked, how and from where: stamped by the shell that received the
/// request, carried in the log entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCtx {
    /// The region (node id) that served the request.
    pub region: NodeId,
    /// The authenticated principal ("" when auth is off: then `author` of
    /// the change is what the caller typed).
    pub principal: String,
    /// How the principal authenticated: none, root, token, certificate, jwt.
    pub method: String,
    /// What was asked, as `service.operation` (`kv.put`, `config.set`,
    /// `auth.token.create`, ...).
    pub action: String,
    /// The caller's `x-request-id`, or one the shell made up.
    pub request_id: String,
    /// The client's address (ip:port).
    pub client: String,
}

impl AuditCtx {
    pub fn size_bytes(&self) -> usize {
        8 + self.principal.len()
            + self.method.len()
            + self.action.len()
            + self.request_id.len()
            + self.client.len()
    }

    /// Whether every field is within bounds.
    pub fn in_bounds(&self) -> bool {
        [
            &self.principal,
            &self.method,
            &self.action,
            &self.request_id,
            &self.client,
        ]
        .iter()
        .all(|s| s.len() <= AUDIT_TEXT_MAX)
    }
}

/// One audited event, as the shell describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Wall-clock milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub ctx: AuditCtx,
    /// `project/environment`, or "" for cluster-wide events.
    pub ns: String,
    pub keys: Vec<String>,
    /// `OK`, or the stable reason of the refusal (`PERMISSION_DENIED`, ...).
    pub result: String,
    /// Free text: the change message, the role granted, the refusal's message.
    pub detail: String,
}

impl AuditEvent {
    /// Whether every field is within bounds (checked on every path a
    /// record enters by: client requests and peers' entries).
    pub fn in_bounds(&self) -> bool {
        self.ctx.in_bounds()
            && [&self.ns, &self.result, &self.detail]
                .iter()
                .all(|s| s.len() <= AUDIT_TEXT_MAX)
            && self.keys.len() <= AUDIT_KEYS_MAX
            && self.keys.iter().all(|k| k.len() <= AUDIT_TEXT_MAX)
    }

    pub fn size_bytes(&self) -> usize {
        56 + self.ctx.size_bytes()
            + self.ns.len()
            + self.keys.iter().map(|k| k.len() + 8).sum::<usize>()
            + self.result.len()
            + self.detail.len()
    }
}

/// Cut `s` to at most `max` bytes on a character boundary.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A record of a group's chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the group's chain, from 1, without gaps.
    pub seq: u64,
    /// The group's revision when the record applied (a write's own revision).
    pub revision: u64,
    pub event: AuditEvent,
    /// SHA-256 chaining this record to the one before (`record_hash`).
    pub hash: Hash,
}

/// The hash of record `seq` after `prev`.
pub fn record_hash(prev: &Hash, seq: u64, revision: u64, event: &AuditEvent) -> Hash {
    let mut h = Sha256::new();
    h.update(HASH_TAG);
    h.update(prev);
    // postcard of plain structs is canonical: one encoding per value.
    // Encoding into a Vec cannot fail for these types (no maps with
    // non-string keys, no unsized sequences).
    match postcard::to_allocvec(&(seq, revision, event)) {
        Ok(bytes) => h.update(&bytes),
        Err(_) => unreachable!("audit records always encode"),
    }
    h.finalize().into()
}

/// Where a chain does not verify.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ChainBreak {
    #[error(
        "record {seq}: expected sequence number {expected} (a record is missing or out of place)"
    )]
    Gap { seq: u64, expected: u64 },
    #[error("record {seq}: its content does not match its hash (changed after it was written)")]
    Hash { seq: u64 },
}

impl ChainBreak {
    pub fn seq(&self) -> u64 {
        match self {
            ChainBreak::Gap { seq, .. } | ChainBreak::Hash { seq } => *seq,
        }
    }
}

/// Check `records` (consecutive, oldest first) against `prev`, the hash of
/// the record before the first. Returns the hash of the last record.
pub fn verify_chain<'a>(
    mut prev: Hash,
    first_seq: u64,
    records: impl IntoIterator<Item = &'a AuditRecord>,
) -> Result<Hash, ChainBreak> {
    for (expected, r) in (first_seq..).zip(records) {
        if r.seq != expected {
            return Err(ChainBreak::Gap {
                seq: r.seq,
                expected,
            });
        }
        if record_hash(&prev, r.seq, r.revision, &r.event) != r.hash {
            return Err(ChainBreak::Hash { seq: r.seq });
        }
        prev = r.hash;
    }
    Ok(prev)
}

/// Which records a query wants. Empty fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditFilter {
    /// Inclusive lower bound of `time_ms` (0: none).
    pub from_ms: u64,
    /// Exclusive upper bound of `time_ms` (0: none).
    pub to_ms: u64,
    pub principal: String,
    /// A namespace (`shop/prod`) or a project (`shop`: all its environments).
    pub ns: String,
    /// Records naming a key that starts with this.
    pub key_prefix: String,
    /// Records whose action starts with this (`auth.`, `kv.put`).
    pub action_prefix: String,
    /// Only refusals (result other than OK).
    pub denied_only: bool,
}

impl AuditFilter {
    pub fn matches(&self, e: &AuditEvent) -> bool {
        if self.from_ms != 0 && e.time_ms < self.from_ms {
            return false;
        }
        if self.to_ms != 0 && e.time_ms >= self.to_ms {
            return false;
        }
        if !self.principal.is_empty() && e.ctx.principal != self.principal {
            return false;
        }
        if !self.ns.is_empty() {
            let in_ns = if self.ns.contains('/') {
                e.ns == self.ns
            } else {
                e.ns.split_once('/').is_some_and(|(p, _)| p == self.ns)
            };
            if !in_ns {
                return false;
            }
        }
        if !self.key_prefix.is_empty() && !e.keys.iter().any(|k| k.starts_with(&self.key_prefix)) {
            return false;
        }
        if !e.ctx.action.starts_with(&self.action_prefix) {
            return false;
        }
        !(self.denied_only && e.result == RESULT_OK)
    }

    pub fn in_bounds(&self) -> bool {
        [
            &self.principal,
            &self.ns,
            &self.key_prefix,
            &self.action_prefix,
        ]
        .iter()
        .all(|s| s.len() <= AUDIT_TEXT_MAX)
    }
}

/// A page of a group's records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    /// Matching records, in chain order.
    pub records: Vec<AuditRecord>,
    /// Continue after this sequence number (the last one looked at).
    pub cursor: u64,
    /// Records after `cursor` remain to be looked at.
    pub more: bool,
    /// The sequence number of the first retained record, and the hash of
    /// the record before it (where verification starts).
    pub first_seq: u64,
    pub floor_hash: Hash,
    /// The last record's sequence number and hash (0 and the floor: none).
    pub last_seq: u64,
    pub head_hash: Hash,
}

/// How many records a group keeps (cluster-wide settings: every replica
/// must drop the same records).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRetention {
    pub records_max: usize,
    /// Records older than this, by their time against the newest record's,
    /// are dropped (0: no age limit).
    pub age_ms_max: u64,
}

impl Default for AuditRetention {
    fn default() -> Self {
        AuditRetention {
            records_max: 1_000,
            age_ms_max: 90 * 24 * 3600 * 1000,
        }
    }
}

/// One group's chain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLog {
    records: VecDeque<AuditRecord>,
    /// The hash of the record before the first retained (zeros: none yet).
    floor_hash: Hash,
    /// The sequence number of the last record appended (0: none).
    last_seq: u64,
    /// The newest record time seen (ages are judged against it, so that
    /// every replica drops the same records whatever its clock).
    newest_ms: u64,
}

impl AuditLog {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    fn head_hash(&self) -> Hash {
        self.records.back().map_or(self.floor_hash, |r| r.hash)
    }

    fn first_seq(&self) -> u64 {
        self.records.front().map_or(self.last_seq + 1, |r| r.seq)
    }

    /// Append a record of `event` applied at `revision`, then drop what
    /// retention no longer keeps.
    pub fn append(&mut self, revision: u64, event: AuditEvent, keep: AuditRetention) {
        let seq = self.last_seq + 1;
        let hash = record_hash(&self.head_hash(), seq, revision, &event);
        self.newest_ms = self.newest_ms.max(event.time_ms);
        self.records.push_back(AuditRecord {
            seq,
            revision,
            event,
            hash,
        });
        self.last_seq = seq;
        let oldest_ms = match keep.age_ms_max {
            0 => 0,
            age => self.newest_ms.saturating_sub(age),
        };
        while self.records.len() > keep.records_max.max(1)
            || self
                .records
                .front()
                .is_some_and(|r| r.event.time_ms < oldest_ms && r.seq != seq)
        {
            if let Some(r) = self.records.pop_front() {
                self.floor_hash = r.hash;
            }
        }
        debug_assert_eq!(
            self.records.back().map(|r| r.seq),
            Some(self.last_seq),
            "the newest record is always kept"
        );
    }

    /// Records after `after_seq` that `filter` matches, at most `limit`,
    /// looking at no more than `AUDIT_SCAN_MAX` records.
    pub fn query(&self, filter: &AuditFilter, after_seq: u64, limit: usize) -> AuditPage {
        let limit = limit.clamp(1, AUDIT_PAGE_MAX);
        let first = self.first_seq();
        let start = after_seq.saturating_add(1).max(first);
        let skip = (start - first) as usize;
        let mut records = Vec::new();
        let mut cursor = after_seq.max(first.saturating_sub(1));
        for (scanned, r) in self.records.iter().skip(skip).enumerate() {
            if records.len() == limit || scanned == AUDIT_SCAN_MAX {
                break;
            }
            cursor = r.seq;
            if filter.matches(&r.event) {
                records.push(r.clone());
            }
        }
        AuditPage {
            records,
            cursor,
            more: cursor < self.last_seq,
            first_seq: first,
            floor_hash: self.floor_hash,
            last_seq: self.last_seq,
            head_hash: self.head_hash(),
        }
    }

    /// Check the retained chain.
    pub fn verify(&self) -> Result<Hash, ChainBreak> {
        verify_chain(self.floor_hash, self.first_seq(), &self.records)
    }

    /// Tamper with a record's content, keeping its stored hash: for tests
    /// of verification only.
    #[doc(hidden)]
    pub fn tamper_for_test(&mut self, seq: u64) {
        if let Some(r) = self.records.iter_mut().find(|r| r.seq == seq) {
            r.event.detail.push('!');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: u64, who: &str, ns: &str, key: &str, result: &str) -> AuditEvent {
        AuditEvent {
            time_ms: t,
            ctx: AuditCtx {
                region: 0,
                principal: who.into(),
                method: "token".into(),
                action: "kv.put".into(),
                request_id: format!("r{t}"),
                client: "127.0.0.1:1".into(),
            },
            ns: ns.into(),
            keys: vec![key.into()],
            result: result.into(),
            detail: String::new(),
        }
    }

    fn keep(n: usize) -> AuditRetention {
        AuditRetention {
            records_max: n,
            age_ms_max: 0,
        }
    }

    #[test]
    fn a_chain_verifies_and_a_changed_record_is_named() {
        let mut log = AuditLog::default();
        for i in 1..=10 {
            log.append(i, ev(i, "alice", "shop/prod", "a", RESULT_OK), keep(100));
        }
        assert!(log.verify().is_ok());
        let mut bad = log.clone();
        bad.tamper_for_test(4);
        assert_eq!(bad.verify(), Err(ChainBreak::Hash { seq: 4 }));
        // A record removed from the middle is a gap.
        let mut gap = log.clone();
        gap.records.remove(5);
        assert_eq!(
            gap.verify(),
            Err(ChainBreak::Gap {
                seq: 7,
                expected: 6
            })
        );
        // Rewriting a record and its own hash breaks the next link.
        let mut rehashed = log.clone();
        let prev = rehashed.records[2].hash;
        let r = &mut rehashed.records[3];
        r.event.ctx.principal = "mallory".into();
        r.hash = record_hash(&prev, r.seq, r.revision, &r.event);
        assert_eq!(rehashed.verify(), Err(ChainBreak::Hash { seq: 5 }));
    }

    #[test]
    fn retention_keeps_a_verifiable_suffix() {
        let mut log = AuditLog::default();
        let mut full = AuditLog::default();
        for i in 1..=50 {
            log.append(i, ev(i, "a", "p/e", "k", RESULT_OK), keep(7));
            full.append(i, ev(i, "a", "p/e", "k", RESULT_OK), keep(1000));
        }
        assert_eq!(log.len(), 7);
        assert_eq!(log.first_seq(), 44);
        assert!(log.verify().is_ok());
        // The same events give the same hashes whatever the retention.
        assert_eq!(log.head_hash(), full.head_hash());
        // Age: records older than the newest by more than the bound go.
        let mut aged = AuditLog::default();
        let by_age = AuditRetention {
            records_max: 1000,
            age_ms_max: 10,
        };
        for t in [1, 5, 12, 20, 30] {
            aged.append(t, ev(t, "a", "p/e", "k", RESULT_OK), by_age);
        }
        let times: Vec<u64> = aged.records.iter().map(|r| r.event.time_ms).collect();
        assert_eq!(times, vec![20, 30]);
        assert!(aged.verify().is_ok());
    }

    #[test]
    fn queries_filter_and_page() {
        let mut log = AuditLog::default();
        for i in 1..=30u64 {
            let who = if i % 3 == 0 { "bob" } else { "alice" };
            let ns = if i % 2 == 0 { "shop/prod" } else { "shop/dev" };
            let result = if i % 5 == 0 {
                "PERMISSION_DENIED"
            } else {
                RESULT_OK
            };
            log.append(i, ev(i * 10, who, ns, &format!("k{i}"), result), keep(100));
        }
        let bob = AuditFilter {
            principal: "bob".into(),
            ..AuditFilter::default()
        };
        let p1 = log.query(&bob, 0, 4);
        assert_eq!(
            p1.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![3, 6, 9, 12]
        );
        assert!(p1.more);
        let p2 = log.query(&bob, p1.cursor, 100);
        assert_eq!(
            p2.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![15, 18, 21, 24, 27, 30]
        );
        assert!(!p2.more);
        let f = AuditFilter {
            from_ms: 100,
            to_ms: 200,
            ns: "shop/prod".into(),
            ..AuditFilter::default()
        };
        let seqs: Vec<u64> = log
            .query(&f, 0, 100)
            .records
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, vec![10, 12, 14, 16, 18]);
        let project = AuditFilter {
            ns: "shop".into(),
            denied_only: true,
            ..AuditFilter::default()
        };
        let seqs: Vec<u64> = log
            .query(&project, 0, 100)
            .records
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, vec![5, 10, 15, 20, 25, 30]);
        let key = AuditFilter {
            key_prefix: "k2".into(),
            ..AuditFilter::default()
        };
        assert_eq!(log.query(&key, 0, 100).records.len(), 11);
        // A cursor below the retained range starts at the first record.
        let mut short = log.clone();
        short.append(31, ev(310, "a", "p/e", "k", RESULT_OK), keep(5));
        let page = short.query(&AuditFilter::default(), 3, 100);
        assert_eq!(page.records.first().map(|r| r.seq), Some(27));
        assert_eq!(page.first_seq, 27);
        assert!(verify_chain(page.floor_hash, page.first_seq, &page.records).is_ok());
    }

    #[test]
    fn bounds_are_enforced_on_events() {
        let mut e = ev(1, "a", "p/e", "k", RESULT_OK);
        assert!(e.in_bounds());
        e.detail = "x".repeat(AUDIT_TEXT_MAX + 1);
        assert!(!e.in_bounds());
        e.detail.clear();
        e.keys = vec!["k".into(); AUDIT_KEYS_MAX + 1];
        assert!(!e.in_bounds());
        assert_eq!(clip("héllo", 2), "h");
        assert_eq!(clip("héllo", 3), "hé");
    }
}
