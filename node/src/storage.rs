//! The RocksDB storage engine: the durable half of the core's `Persist`
//! actions. One RocksDB database per region node holds the hard state, log and
//! snapshot of every group and the automerge document's saved chunks. Every
//! value carries a CRC32C over its key and payload, so a flipped bit, a value
//! moved to another key or a missing piece of log is found at start-up and the
//! node refuses to serve ("corrupt data directory"), never serving bad data.
//!
//! Layout (keys are bytes; integers big-endian so they sort):
//!   `F`                 format record: magic, region count, region id
//!   `I`                 incarnation
//!   `H` g               hard state of group g (term, vote)
//!   `S` g               snapshot of group g (index, term, encoded state machine)
//!   `L` g index(8)      log entry
//!   `M` seq(8)          automerge chunk number seq
//!
//! The state machine (current values and per-key history) lives in the group
//! snapshot plus the log after it; the node rebuilds it at start-up.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use meridian_core::storage::{Durable, DurableGroup, Entry, Snapshot, Storage, StorageOp};
use rocksdb::{DBRecoveryMode, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

const MAGIC: &str = "meridian-storage-v1";
/// Written beside RocksDB's files once the directory is open: the pid of the
/// process serving it, named when a second one is refused.
pub const PID_FILE: &str = "meridian.pid";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt data directory {dir}: {reason}")]
    Corrupt { dir: PathBuf, reason: String },
    /// Another process holds RocksDB's lock on the directory: nothing is
    /// wrong with the data, so say so (an operator told "corrupt" might
    /// delete good data).
    #[error("data directory {dir} is in use by another process{}: stop that process or use another data_dir (nothing was changed)", pid.map(|p| format!(" (pid {p}, from {PID_FILE})")).unwrap_or_default())]
    InUse { dir: PathBuf, pid: Option<u32> },
    #[error("data directory {dir} belongs to another node: {reason}")]
    WrongNode { dir: PathBuf, reason: String },
    #[error(transparent)]
    Encode(#[from] meridian_core::wire::EncodeError),
    #[error("storage op rejected: {0}")]
    Rejected(#[from] meridian_core::storage::StorageError),
    #[error("io on {dir}: {cause}")]
    Io {
        dir: PathBuf,
        /// In the message (not `source()`, which would print it twice in a chain).
        cause: std::io::Error,
    },
}

#[derive(Serialize, Deserialize, PartialEq, Eq, Debug)]
struct Format {
    magic: String,
    regions: u8,
    region: u8,
}

/// What the engine remembers of each group to turn core ops into key ranges:
/// the snapshot index and the term of every entry after it (bounded by log
/// compaction, like the log itself).
#[derive(Clone, Debug, Default)]
struct GroupIndex {
    base: u64,
    terms: VecDeque<u64>,
}

impl GroupIndex {
    fn last(&self) -> u64 {
        self.base + self.terms.len() as u64
    }
}

pub struct RocksStorage {
    db: DB,
    dir: PathBuf,
    groups: Vec<GroupIndex>,
    next_meta_seq: u64,
}

fn key_h(g: u8) -> Vec<u8> {
    vec![b'H', g]
}
fn key_s(g: u8) -> Vec<u8> {
    vec![b'S', g]
}
fn key_l(g: u8, index: u64) -> Vec<u8> {
    let mut k = vec![b'L', g];
    k.extend_from_slice(&index.to_be_bytes());
    k
}
fn key_m(seq: u64) -> Vec<u8> {
    let mut k = vec![b'M'];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Value framing: CRC32C(key ‖ payload) little-endian, then the payload.
/// A stored record: its key and its sealed value.
pub type RawRecord = (Vec<u8>, Vec<u8>);

fn seal(key: &[u8], payload: &[u8]) -> Vec<u8> {
    let crc = crc32c::crc32c_append(crc32c::crc32c(key), payload);
    let mut v = Vec::with_capacity(payload.len() + 4);
    v.extend_from_slice(&crc.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

fn open_sealed<'a>(key: &[u8], value: &'a [u8]) -> Option<&'a [u8]> {
    if value.len() < 4 {
        return None;
    }
    let (c, payload) = value.split_at(4);
    let want = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    (crc32c::crc32c_append(crc32c::crc32c(key), payload) == want).then_some(payload)
}

/// Our records' encoding; a failure fails the write (the node then halts).
fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    Ok(meridian_core::wire::encode("storage record", v)?)
}

impl RocksStorage {
    /// Open (or create) the database of node `region` of a `regions`-region
    /// cluster. An existing directory that is not a complete Meridian database,
    /// or one of another node, is an error: nothing is created over it.
    pub fn open(dir: &Path, regions: u8, region: u8) -> Result<RocksStorage, StoreError> {
        Self::open_loaded(dir, regions, region).map(|(s, _)| s)
    }

    /// `open`, also returning the verified contents it had to read anyway (the
    /// node restarts from them without reading the database a second time).
    pub fn open_loaded(
        dir: &Path,
        regions: u8,
        region: u8,
    ) -> Result<(RocksStorage, Durable), StoreError> {
        let io = |cause| StoreError::Io {
            dir: dir.to_path_buf(),
            cause,
        };
        let fresh = match std::fs::read_dir(dir) {
            Ok(mut it) => it.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(io(e)),
        };
        if !fresh && !dir.join("CURRENT").exists() {
            return Err(StoreError::Corrupt {
                dir: dir.to_path_buf(),
                reason: "the directory is not empty but has no RocksDB CURRENT file \
                         (truncated or not a Meridian data directory)"
                    .into(),
            });
        }
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut opts = Options::default();
        opts.create_if_missing(fresh);
        opts.set_paranoid_checks(true);
        // After a crash, recover to the last consistent point of the WAL; every
        // acknowledged write was fsynced before that point.
        opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        let db = DB::open(&opts, dir).map_err(|e| {
            // RocksDB's LOCK file is held (flock) by a live process: in use.
            let text = e.to_string();
            if e.kind() == rocksdb::ErrorKind::IOError && text.contains("lock") {
                let pid = std::fs::read_to_string(dir.join(PID_FILE))
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                StoreError::InUse {
                    dir: dir.to_path_buf(),
                    pid,
                }
            } else {
                StoreError::Corrupt {
                    dir: dir.to_path_buf(),
                    reason: text,
                }
            }
        })?;
        // Ours now (the lock is held for as long as `db` lives).
        std::fs::write(dir.join(PID_FILE), format!("{}\n", std::process::id())).map_err(io)?;
        let mut s = RocksStorage {
            db,
            dir: dir.to_path_buf(),
            groups: vec![GroupIndex::default(); regions as usize],
            next_meta_seq: 0,
        };
        let want = Format {
            magic: MAGIC.into(),
            regions,
            region,
        };
        match s.get_sealed(b"F")? {
            None if fresh => {
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                s.db.put_opt(b"F", seal(b"F", &enc(&want)?), &wo)?;
            }
            None => return Err(s.corrupt("the format record is missing".into())),
            Some(bytes) => {
                let got: Format = postcard::from_bytes(&bytes)
                    .map_err(|e| s.corrupt(format!("format record: {e}")))?;
                if got.magic != MAGIC {
                    return Err(s.corrupt(format!("unknown format {:?}", got.magic)));
                }
                if got.regions != regions || got.region != region {
                    return Err(StoreError::WrongNode {
                        dir: dir.to_path_buf(),
                        reason: format!(
                            "it holds region {} of a {}-region cluster; this is region {} of {}",
                            got.region, got.regions, region, regions
                        ),
                    });
                }
            }
        }
        // Rebuild the index (and check everything) by loading once.
        let d = s.load()?;
        for (g, dg) in d.groups.iter().enumerate() {
            s.groups[g] = GroupIndex {
                base: dg.snapshot.as_ref().map_or(0, |x| x.index),
                terms: dg.entries.iter().map(|e| e.term).collect(),
            };
        }
        s.next_meta_seq = d.meta_chunks.len() as u64;
        Ok((s, d))
    }

    /// Replace every occurrence of `from` with `to` (same length) in every
    /// stored value of a closed database, resealing each value's checksum:
    /// what an attacker with the disk and this format could do. For tests of
    /// the audit log's tamper evidence only. Returns the values changed.
    #[doc(hidden)]
    /// Every record of a closed data directory as stored (keys and sealed
    /// values, decompressed), read-only: what a scan of the files for a
    /// string cannot see through RocksDB's block compression.
    pub fn raw_records(dir: &Path) -> Result<Vec<RawRecord>, StoreError> {
        let db = DB::open_for_read_only(&Options::default(), dir, false)?;
        let mut out = Vec::new();
        for item in db.iterator(rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    pub fn tamper_for_test(dir: &Path, from: &[u8], to: &[u8]) -> Result<usize, StoreError> {
        assert_eq!(from.len(), to.len(), "a same-length replacement");
        let db = DB::open(&Options::default(), dir)?;
        let mut changed = Vec::new();
        for item in db.iterator(rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            let Some(payload) = open_sealed(&k, &v) else {
                continue;
            };
            if let Some(at) = payload.windows(from.len()).position(|w| w == from) {
                let mut p = payload.to_vec();
                let mut i = at;
                while i + from.len() <= p.len() {
                    if &p[i..i + from.len()] == from {
                        p[i..i + from.len()].copy_from_slice(to);
                        i += from.len();
                    } else {
                        i += 1;
                    }
                }
                changed.push((k.to_vec(), seal(&k, &p)));
            }
        }
        for (k, v) in &changed {
            db.put(k, v)?;
        }
        db.flush()?;
        Ok(changed.len())
    }

    /// Flush memtables to SST files (tests and orderly shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn corrupt(&self, reason: String) -> StoreError {
        StoreError::Corrupt {
            dir: self.dir.clone(),
            reason,
        }
    }

    fn get_sealed(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.db.get(key)? {
            None => Ok(None),
            Some(v) => match open_sealed(key, &v) {
                Some(p) => Ok(Some(p.to_vec())),
                None => Err(self.corrupt(format!("checksum mismatch at key {key:?}"))),
            },
        }
    }

    /// Add `op` to `batch`, updating `idx` (a working copy of the index).
    fn stage(
        idx: &mut [GroupIndex],
        meta_seq: &mut u64,
        batch: &mut WriteBatch,
        op: &StorageOp,
    ) -> Result<(), StoreError> {
        use meridian_core::storage::StorageError as SE;
        let group = |g: u8, idx: &mut [GroupIndex]| -> Result<usize, StoreError> {
            if (g as usize) < idx.len() {
                Ok(g as usize)
            } else {
                Err(StoreError::Rejected(SE::BadGroup(g)))
            }
        };
        match op {
            StorageOp::HardState {
                group: g,
                term,
                vote,
            } => {
                group(*g, idx)?;
                let k = key_h(*g);
                batch.put(&k, seal(&k, &enc(&(*term, *vote))?));
            }
            StorageOp::Append {
                group: g,
                first_index,
                entries,
            } => {
                let gi = group(*g, idx)?;
                let gx = &mut idx[gi];
                let last = gx.last();
                if *first_index > last + 1 || *first_index <= gx.base {
                    return Err(StoreError::Rejected(SE::Gap {
                        first: *first_index,
                        last,
                    }));
                }
                if *first_index <= last {
                    batch.delete_range(key_l(*g, *first_index), key_l(*g, u64::MAX));
                }
                gx.terms.truncate((*first_index - gx.base - 1) as usize);
                for (i, e) in entries.iter().enumerate() {
                    let index = first_index + i as u64;
                    let k = key_l(*g, index);
                    batch.put(&k, seal(&k, &enc(e)?));
                    gx.terms.push_back(e.term);
                }
            }
            StorageOp::Snapshot { group: g, snapshot } => {
                let gi = group(*g, idx)?;
                let gx = &mut idx[gi];
                if snapshot.index <= gx.base {
                    return Ok(());
                }
                let pos = (snapshot.index - gx.base - 1) as usize;
                if gx.terms.get(pos) == Some(&snapshot.term) {
                    batch.delete_range(key_l(*g, 0), key_l(*g, snapshot.index + 1));
                    gx.terms.drain(..=pos);
                } else {
                    batch.delete_range(key_l(*g, 0), key_l(*g, u64::MAX));
                    gx.terms.clear();
                }
                gx.base = snapshot.index;
                let k = key_s(*g);
                batch.put(&k, seal(&k, &enc(snapshot)?));
            }
            StorageOp::MetaChunk { bytes } => {
                let k = key_m(*meta_seq);
                *meta_seq += 1;
                batch.put(&k, seal(&k, bytes));
            }
            StorageOp::Incarnation { incarnation } => {
                batch.put(b"I", seal(b"I", &incarnation.to_be_bytes()));
            }
        }
        Ok(())
    }
}

impl Storage for RocksStorage {
    type Error = StoreError;

    fn write(&mut self, ops: &[StorageOp], sync: bool) -> Result<(), StoreError> {
        let mut idx = self.groups.clone();
        let mut seq = self.next_meta_seq;
        let mut batch = WriteBatch::default();
        for op in ops {
            Self::stage(&mut idx, &mut seq, &mut batch, op)?;
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo)?;
        self.groups = idx;
        self.next_meta_seq = seq;
        Ok(())
    }

    fn load(&self) -> Result<Durable, StoreError> {
        let regions = self.groups.len();
        let mut d = Durable::new(regions as u8);
        let mut hard_seen = vec![false; regions];
        let mut expect_meta = 0u64;
        for item in self.db.iterator(IteratorMode::Start) {
            let (k, v) = item?;
            let payload = open_sealed(&k, &v)
                .ok_or_else(|| self.corrupt(format!("checksum mismatch at key {k:?}")))?;
            let bad = |what: &str, e: &dyn std::fmt::Display| {
                self.corrupt(format!("{what} at key {k:?}: {e}"))
            };
            let group_of = |k: &[u8]| -> Result<usize, StoreError> {
                let g = *k.get(1).ok_or_else(|| self.corrupt("short key".into()))? as usize;
                if g < regions {
                    Ok(g)
                } else {
                    Err(self.corrupt(format!("group {g} out of range in key {k:?}")))
                }
            };
            match k.first() {
                Some(b'F') => {}
                Some(b'I') => {
                    let b: [u8; 8] = payload
                        .try_into()
                        .map_err(|_| self.corrupt("incarnation is not 8 bytes".into()))?;
                    d.incarnation = u64::from_be_bytes(b);
                }
                Some(b'H') => {
                    let g = group_of(&k)?;
                    let (term, vote): (u64, Option<u8>) =
                        postcard::from_bytes(payload).map_err(|e| bad("hard state", &e))?;
                    d.groups[g].term = term;
                    d.groups[g].vote = vote;
                    hard_seen[g] = true;
                }
                Some(b'L') => {
                    let g = group_of(&k)?;
                    let index = k
                        .get(2..10)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(u64::from_be_bytes)
                        .ok_or_else(|| self.corrupt(format!("bad log key {k:?}")))?;
                    let e: Entry =
                        postcard::from_bytes(payload).map_err(|e| bad("log entry", &e))?;
                    if e.index != index {
                        return Err(self.corrupt(format!(
                            "log entry under index {index} says index {}",
                            e.index
                        )));
                    }
                    d.groups[g].entries.push(e);
                }
                Some(b'S') => {
                    let g = group_of(&k)?;
                    let s: Snapshot =
                        postcard::from_bytes(payload).map_err(|e| bad("snapshot", &e))?;
                    d.groups[g].snapshot = Some(s);
                }
                Some(b'M') => {
                    let seq = k
                        .get(1..9)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(u64::from_be_bytes)
                        .ok_or_else(|| self.corrupt(format!("bad meta key {k:?}")))?;
                    if seq != expect_meta {
                        return Err(self.corrupt(format!(
                            "metadata chunk {expect_meta} is missing (found {seq})"
                        )));
                    }
                    expect_meta += 1;
                    d.meta_chunks.push(payload.to_vec());
                }
                _ => return Err(self.corrupt(format!("unknown key {k:?}"))),
            }
        }
        // 'L' sorts before 'S': entries were collected before their snapshot.
        // Check that each group's log continues its snapshot without a hole.
        for (g, dg) in d.groups.iter().enumerate() {
            check_group(g, dg).map_err(|r| self.corrupt(r))?;
            if !hard_seen[g] && (!dg.entries.is_empty() || dg.snapshot.is_some()) {
                return Err(
                    self.corrupt(format!("group {g} has log or snapshot but no hard state"))
                );
            }
        }
        Ok(d)
    }
}

fn check_group(g: usize, dg: &DurableGroup) -> Result<(), String> {
    let base = dg.snapshot.as_ref().map_or(0, |s| s.index);
    for (i, e) in dg.entries.iter().enumerate() {
        let want = base + 1 + i as u64;
        if e.index != want {
            return Err(format!(
                "group {g}: log entry {want} is missing (found {}): truncated log",
                e.index
            ));
        }
        if e.term > dg.term {
            return Err(format!(
                "group {g}: entry {} has term {} above the hard state's {}",
                e.index, e.term, dg.term
            ));
        }
    }
    Ok(())
}
