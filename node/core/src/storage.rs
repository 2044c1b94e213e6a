//! What the core asks storage to persist, and the durable state it is rebuilt
//! from after a restart. `Durable::apply` is the reference semantics of every
//! storage operation: the simulator's disk uses it directly, and every real
//! storage engine must behave the same (the conformance suite checks it).

use serde::{Deserialize, Serialize};

use crate::audit::{AuditCtx, AuditEvent};
use crate::types::{ChangeMeta, GroupId};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    pub data: EntryData,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryData {
    /// Committed by every new leader before it serves.
    Noop,
    /// A write, evaluated by the leader that proposed it: the exact effects.
    Write(WriteEffect),
    /// The namespace is moving to group `to`: from here on this group accepts
    /// no writes to it, so its state is final and the new home copies it.
    /// `tenure` is the revision at which this group's copy became the home
    /// (0: created here), as the catalog names it: a freeze proposed from a
    /// stale catalog (another tenure) applies as a no-op.
    Freeze {
        ns: String,
        to: GroupId,
        tenure: u64,
    },
    /// One chunk of a namespace copied from its frozen old home.
    Adopt(AdoptEffect),
    /// The namespace moved away and the catalog points at its new home: drop
    /// this group's frozen copy (the freeze marker stays, so the group keeps
    /// refusing the namespace rather than looking empty). Applies only while
    /// the freeze at `freeze_revision` is this group's latest (a no-op if a
    /// later move brought the namespace back).
    Drop { ns: String, freeze_revision: u64 },
    /// Audit records of events other than writes, appended to the group's
    /// chain as they apply (no revision of their own).
    Audit(Vec<AuditEvent>),
    /// Stored versions' bytes replaced in place (`ClientRequest::ReplaceValues`).
    ReplaceValues {
        ns: String,
        items: Vec<crate::types::ValuePatch>,
    },
}

/// One chunk of a namespace move. Chunks carry every retained version of
/// every key (tombstones included) in (key, version) order, so the new home's
/// copy is the old home's, history and all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptEffect {
    pub ns: String,
    pub from: GroupId,
    /// The first chunk jumps the adopting group's revision past every revision
    /// the namespace had in its old home, so the namespace's revisions only
    /// grow across a move (tokens and as-of reads keep their meaning); later
    /// chunks take the next revision.
    pub revision: u64,
    /// The old home's revision at its freeze: the move's identity. A namespace's
    /// freezes happen at ever higher revisions (see `revision`), so a chunk of
    /// an older move than this group already knows applies as a no-op.
    pub freeze_revision: u64,
    pub first: bool,
    /// On the last chunk: the namespace's last-change revision in the old
    /// home; the copy is complete once it applies.
    pub last_ns_revision: Option<u64>,
    /// Newest change time of the old home (a group's times never go back).
    pub time_ms: u64,
    pub versions: Vec<AdoptVersion>,
    /// On the last chunk: the namespace's earlier homes, newest first (the
    /// old home first), each group once, with the revision a replica of it
    /// must have applied to hold every write the namespace took there. A
    /// retried write looks for its first result in their idempotency tables.
    pub lineage: Vec<(GroupId, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptVersion {
    pub key: String,
    pub revision: u64,
    pub version: u64,
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    pub meta: ChangeMeta,
}

impl AdoptVersion {
    pub fn size_bytes(&self) -> usize {
        32 + self.key.len()
            + self.value.as_ref().map_or(0, |v| v.len())
            + self.meta.author.len()
            + self.meta.message.len()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteEffect {
    pub ns: String,
    pub revision: u64,
    /// The caller's id for the write; 0: none. Non-zero ids are idempotent.
    pub request_id: u64,
    /// The caller's hash of the request (see `ClientRequest::Write`), kept
    /// with the result so any replica, once leader, refuses a reused id.
    pub fingerprint: u64,
    /// Sorted by key, one per key.
    pub keys: Vec<KeyEffect>,
    /// The resulting version of each op's key, in the request's op order.
    pub reply_versions: Vec<u64>,
    pub meta: ChangeMeta,
    /// The namespace's retention when the leader proposed the write; carried in
    /// the entry so every replica prunes history identically.
    pub retention: Retention,
    /// Who asked and from where: the write's audit record is made from it
    /// and the write as the entry applies.
    pub audit: AuditCtx,
}

impl WriteEffect {
    /// How many keys the write deleted (only live keys are deleted: a delete
    /// of an absent key is no effect at all).
    pub fn deleted(&self) -> u32 {
        self.keys.iter().filter(|k| k.value.is_none()).count() as u32
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// 0: the cluster default (`Config::history_versions_max`).
    pub versions_max: u32,
    /// 0: no age limit.
    pub age_ms_max: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEffect {
    pub key: String,
    /// None: deleted.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    pub version: u64,
}

impl Entry {
    pub fn size_bytes(&self) -> usize {
        match &self.data {
            EntryData::Noop => 24,
            EntryData::Freeze { ns, .. } | EntryData::Drop { ns, .. } => 32 + ns.len(),
            EntryData::Adopt(a) => {
                64 + a.ns.len()
                    + a.versions
                        .iter()
                        .map(AdoptVersion::size_bytes)
                        .sum::<usize>()
            }
            EntryData::Audit(events) => {
                24 + events.iter().map(AuditEvent::size_bytes).sum::<usize>()
            }
            EntryData::ReplaceValues { ns, items } => {
                24 + ns.len()
                    + items
                        .iter()
                        .map(|i| 24 + i.key.len() + i.value.len())
                        .sum::<usize>()
            }
            EntryData::Write(w) => {
                64 + w.ns.len()
                    + w.audit.size_bytes()
                    + w.meta.author.len()
                    + w.meta.message.len()
                    + w.keys
                        .iter()
                        .map(|k| 16 + k.key.len() + k.value.as_ref().map_or(0, |v| v.len()))
                        .sum::<usize>()
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub index: u64,
    pub term: u64,
    /// The encoded state machine of the group (see `kv::GroupSm::encode`).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageOp {
    HardState {
        group: GroupId,
        term: u64,
        vote: Option<u8>,
    },
    /// Remove entries from `first_index` on, then append `entries` (which start there).
    Append {
        group: GroupId,
        first_index: u64,
        entries: Vec<Entry>,
    },
    /// Keep `snapshot`; drop log entries up to its index (the whole log if the
    /// entry at its index has another term).
    Snapshot { group: GroupId, snapshot: Snapshot },
    /// One incremental save of the metadata document.
    MetaChunk {
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The incarnation of this process; metadata actor ids derive from it.
    Incarnation { incarnation: u64 },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableGroup {
    pub term: u64,
    pub vote: Option<u8>,
    pub snapshot: Option<Snapshot>,
    /// Contiguous, starting right after the snapshot's index (or at 1).
    pub entries: Vec<Entry>,
}

/// Everything a node has on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durable {
    pub incarnation: u64,
    pub groups: Vec<DurableGroup>,
    pub meta_chunks: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("group {0} out of range")]
    BadGroup(GroupId),
    #[error("append at index {first} leaves a gap after {last}")]
    Gap { first: u64, last: u64 },
}

impl Durable {
    pub fn new(regions: u8) -> Durable {
        Durable {
            incarnation: 0,
            groups: vec![DurableGroup::default(); regions as usize],
            meta_chunks: Vec::new(),
        }
    }

    pub fn apply(&mut self, op: &StorageOp) -> Result<(), StorageError> {
        match op {
            StorageOp::HardState { group, term, vote } => {
                let g = self
                    .groups
                    .get_mut(*group as usize)
                    .ok_or(StorageError::BadGroup(*group))?;
                g.term = *term;
                g.vote = *vote;
            }
            StorageOp::Append {
                group,
                first_index,
                entries,
            } => {
                let g = self
                    .groups
                    .get_mut(*group as usize)
                    .ok_or(StorageError::BadGroup(*group))?;
                let base = g.snapshot.as_ref().map_or(0, |s| s.index);
                let last = base + g.entries.len() as u64;
                if *first_index > last + 1 || *first_index <= base {
                    return Err(StorageError::Gap {
                        first: *first_index,
                        last,
                    });
                }
                g.entries.truncate((*first_index - base - 1) as usize);
                g.entries.extend(entries.iter().cloned());
            }
            StorageOp::Snapshot { group, snapshot } => {
                let g = self
                    .groups
                    .get_mut(*group as usize)
                    .ok_or(StorageError::BadGroup(*group))?;
                let base = g.snapshot.as_ref().map_or(0, |s| s.index);
                if snapshot.index <= base {
                    return Ok(());
                }
                let pos = (snapshot.index - base - 1) as usize;
                if g.entries.get(pos).is_some_and(|e| e.term == snapshot.term) {
                    g.entries.drain(..=pos);
                } else {
                    g.entries.clear();
                }
                g.snapshot = Some(snapshot.clone());
            }
            StorageOp::MetaChunk { bytes } => self.meta_chunks.push(bytes.clone()),
            StorageOp::Incarnation { incarnation } => self.incarnation = *incarnation,
        }
        Ok(())
    }
}

/// What a storage engine gives the shell. `Durable` itself is the reference
/// engine (the simulator's disk); the region node's RocksDB engine passes the
/// same conformance suite (`node/tests/storage_conformance.rs`).
pub trait Storage {
    type Error: std::error::Error + Send + Sync + 'static;
    /// Apply `ops` in order. With `sync`, everything written so far is durable
    /// (fsynced) when this returns Ok. An op that `Durable::apply` rejects is
    /// rejected here too, and nothing of its batch is applied.
    fn write(&mut self, ops: &[StorageOp], sync: bool) -> Result<(), Self::Error>;
    /// Everything durable, as the core restarts from it.
    fn load(&self) -> Result<Durable, Self::Error>;
}

impl Storage for Durable {
    type Error = StorageError;
    fn write(&mut self, ops: &[StorageOp], _sync: bool) -> Result<(), StorageError> {
        // All-or-nothing: only a multi-op batch can fail half-way, so only then
        // pay for a copy to roll back to.
        if ops.len() > 1 {
            let before = self.clone();
            for op in ops {
                if let Err(e) = self.apply(op) {
                    *self = before;
                    return Err(e);
                }
            }
            return Ok(());
        }
        for op in ops {
            self.apply(op)?;
        }
        Ok(())
    }
    fn load(&self) -> Result<Durable, StorageError> {
        Ok(self.clone())
    }
}
