//! Storage conformance: every storage engine behaves exactly like the
//! reference semantics (`Durable`, which is also the simulator's disk). The
//! same seeded random op sequences run against `Durable` and RocksDB; after
//! every batch and after every reopen the loaded state must be identical, and
//! ops the reference rejects must be rejected without effect. Then corrupt and
//! truncated data directories must be refused at start-up with a clear error.

use meridian_core::rng::Rng;
use meridian_core::storage::{
    Durable, Entry, EntryData, KeyEffect, Snapshot, Storage, StorageOp, WriteEffect,
};
use meridian_node::storage::RocksStorage;

const REGIONS: u8 = 3;

fn entry(rng: &mut Rng, index: u64, term: u64) -> Entry {
    let data = if rng.range(0, 4) == 0 {
        EntryData::Noop
    } else {
        let n = rng.range(1, 4);
        EntryData::Write(WriteEffect {
            ns: "eu".into(),
            revision: index,
            request_id: rng.next_u64(),
            fingerprint: rng.next_u64(),
            keys: (0..n)
                .map(|k| KeyEffect {
                    key: format!("k{k}-{}", rng.range(0, 50)),
                    value: (rng.range(0, 5) > 0).then(|| vec![7u8; rng.range(0, 300) as usize]),
                    version: rng.range(1, 100),
                })
                .collect(),
            reply_versions: vec![1; n as usize],
            meta: meridian_core::types::ChangeMeta {
                author: format!("author-{}", rng.range(0, 3)),
                message: "conformance".into(),
                time_ms: rng.next_u64() >> 20,
            },
            retention: meridian_core::storage::Retention {
                versions_max: rng.range(0, 5) as u32,
                age_ms_max: rng.range(0, 2),
            },
            audit: meridian_core::audit::AuditCtx {
                region: rng.range(0, 3) as u8,
                principal: format!("author-{}", rng.range(0, 3)),
                method: "token".into(),
                action: "Kv.Put".into(),
                request_id: format!("{:x}", rng.next_u64()),
                client: "127.0.0.1:4000".into(),
            },
        })
    };
    Entry { index, term, data }
}

/// A random op that is valid against `model` most of the time.
fn random_op(rng: &mut Rng, model: &Durable) -> StorageOp {
    let g = rng.range(0, REGIONS as u64) as u8;
    let dg = &model.groups[g as usize];
    let base = dg.snapshot.as_ref().map_or(0, |s| s.index);
    let last = base + dg.entries.len() as u64;
    if dg.term == 0 {
        // Like the core: a term is persisted before any entry of it.
        return StorageOp::HardState {
            group: g,
            term: 1,
            vote: None,
        };
    }
    match rng.range(0, 100) {
        0..=9 => StorageOp::HardState {
            group: g,
            term: dg.term + rng.range(0, 2),
            vote: (rng.range(0, 2) == 0).then(|| rng.range(0, REGIONS as u64) as u8),
        },
        10..=69 => {
            // Mostly appends at the end, sometimes overwriting a suffix, rarely a gap.
            let first = match rng.range(0, 10) {
                0 => last + 2 + rng.range(0, 3),
                1..=3 if last > base => rng.range(base + 1, last + 1),
                _ => last + 1,
            };
            let n = rng.range(0, 6);
            let entries = (0..n).map(|i| entry(rng, first + i, dg.term)).collect();
            StorageOp::Append {
                group: g,
                first_index: first,
                entries,
            }
        }
        70..=79 => {
            let index = rng.range(base.saturating_sub(1), last + 3).max(1);
            let pos = index.checked_sub(base + 1);
            let term = match pos.and_then(|p| dg.entries.get(p as usize)) {
                Some(e) if rng.range(0, 3) > 0 => e.term,
                _ => dg.term,
            };
            StorageOp::Snapshot {
                group: g,
                snapshot: Snapshot {
                    index,
                    term,
                    data: vec![rng.range(0, 255) as u8; rng.range(0, 2000) as usize],
                },
            }
        }
        80..=89 => StorageOp::MetaChunk {
            bytes: vec![rng.range(0, 255) as u8; rng.range(1, 500) as usize],
        },
        90..=94 => StorageOp::Incarnation {
            incarnation: model.incarnation + 1,
        },
        _ => StorageOp::HardState {
            group: rng.range(REGIONS as u64, 200) as u8,
            term: 1,
            vote: None,
        },
    }
}

fn run_conformance(seed: u64, steps: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let mut rng = Rng::new(seed);
    let mut model = Durable::new(REGIONS);
    let mut rocks = RocksStorage::open(&path, REGIONS, 1).expect("open");
    let mut rejected = 0;
    for step in 0..steps {
        let nops = rng.range(1, 4);
        let mut ops = Vec::new();
        let mut probe = model.clone();
        for _ in 0..nops {
            let op = random_op(&mut rng, &probe);
            let _ = probe.apply(&op);
            ops.push(op);
        }
        let sync = rng.range(0, 2) == 0;
        let want = model.write(&ops, sync);
        let got = rocks.write(&ops, sync);
        assert_eq!(
            want.is_ok(),
            got.is_ok(),
            "seed {seed} step {step}: reference {want:?} vs rocks {got:?} for {ops:?}"
        );
        if want.is_err() {
            rejected += 1;
        }
        if step % 25 == 0 || step + 1 == steps {
            assert_eq!(
                rocks.load().expect("load"),
                model,
                "seed {seed} step {step}: loaded state differs"
            );
        }
        if step % 100 == 99 {
            drop(rocks);
            rocks = RocksStorage::open(&path, REGIONS, 1).expect("reopen");
            assert_eq!(rocks.load().expect("load"), model, "after reopen");
        }
    }
    assert!(
        rejected > 0,
        "seed {seed}: the sequence never tried an invalid op"
    );
    assert!(
        model.groups.iter().any(|g| g.snapshot.is_some()),
        "seed {seed}: the sequence never snapshotted"
    );
}

#[test]
fn rocksdb_matches_the_reference_semantics() {
    for seed in 1..=6 {
        run_conformance(seed, 400);
    }
}

/// A database with a few entries in group 0, flushed to SST files.
fn populated(path: &std::path::Path) {
    let mut s = RocksStorage::open(path, REGIONS, 0).expect("open");
    let mut rng = Rng::new(9);
    s.write(
        &[StorageOp::HardState {
            group: 0,
            term: 3,
            vote: Some(0),
        }],
        true,
    )
    .expect("write");
    let entries = (1..=20).map(|i| entry(&mut rng, i, 3)).collect();
    s.write(
        &[StorageOp::Append {
            group: 0,
            first_index: 1,
            entries,
        }],
        true,
    )
    .expect("write");
    s.flush().expect("flush");
}

fn open_err(path: &std::path::Path, region: u8) -> String {
    match RocksStorage::open(path, REGIONS, region) {
        Ok(_) => panic!("a damaged data directory was opened"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn flipped_byte_in_a_value_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    populated(&path);
    {
        // Rewrite one log entry's value with one payload byte flipped, through
        // RocksDB itself, so only our checksum can notice.
        let db = rocksdb::DB::open_default(&path).expect("raw open");
        let mut key = vec![b'L', 0];
        key.extend_from_slice(&7u64.to_be_bytes());
        let mut v = db.get(&key).expect("get").expect("present");
        let last = v.len() - 1;
        v[last] ^= 0x01;
        db.put(&key, v).expect("put");
    }
    let e = open_err(&path, 0);
    assert!(
        e.contains("corrupt data directory") && e.contains("checksum"),
        "{e}"
    );
}

#[test]
fn missing_log_entry_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    populated(&path);
    {
        let db = rocksdb::DB::open_default(&path).expect("raw open");
        let mut key = vec![b'L', 0];
        key.extend_from_slice(&11u64.to_be_bytes());
        db.delete(&key).expect("delete");
    }
    let e = open_err(&path, 0);
    assert!(e.contains("truncated log"), "{e}");
}

#[test]
fn truncated_sst_file_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    populated(&path);
    let sst = std::fs::read_dir(&path)
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "sst"))
        .expect("an SST file after flush");
    let len = std::fs::metadata(&sst).expect("stat").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&sst)
        .expect("open sst");
    f.set_len(len / 2).expect("truncate");
    let e = open_err(&path, 0);
    assert!(e.contains("corrupt data directory"), "{e}");
}

#[test]
fn missing_current_file_is_detected_not_recreated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    populated(&path);
    std::fs::remove_file(path.join("CURRENT")).expect("rm CURRENT");
    let e = open_err(&path, 0);
    assert!(e.contains("no RocksDB CURRENT file"), "{e}");
}

#[test]
fn another_nodes_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    populated(&path);
    let e = open_err(&path, 2);
    assert!(e.contains("belongs to another node"), "{e}");
    // And the right node still opens it, with the data intact.
    let s = RocksStorage::open(&path, REGIONS, 0).expect("open");
    let d = s.load().expect("load");
    assert_eq!(d.groups[0].entries.len(), 20);
    assert_eq!(d.groups[0].term, 3);
}
