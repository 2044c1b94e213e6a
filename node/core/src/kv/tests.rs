//! Unit tests of the group state machine: encoding, history, listing,
//! snapshots, time travel, retention and namespace moves.

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
        audit: Default::default(),
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
            lineage: Vec::new(),
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
        lineage: Vec::new(),
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

#[test]
fn replace_values_swaps_bytes_in_place_only_where_they_are_as_expected() {
    use crate::types::ValuePatch;
    let mut sm = GroupSm::new(["n".to_string()], 5, 3, 10);
    sm.apply(&put(1, "a", "one", 1)).unwrap();
    sm.apply(&put(2, "a", "two", 2)).unwrap();
    let revision = sm.revision();
    let patch = |version: u64, old: &str, new: &str| ValuePatch {
        key: "a".into(),
        version,
        expect: fnv1a(old.as_bytes()),
        value: new.as_bytes().to_vec(),
    };
    // A current and a historical version; a stale expectation; an absent
    // version and key: only the first two apply.
    let items = vec![
        patch(2, "two", "TWO"),
        patch(1, "one", "ONE"),
        patch(1, "stale", "X"),
        patch(7, "two", "X"),
        ValuePatch {
            key: "zz".into(),
            ..patch(1, "one", "X")
        },
    ];
    assert_eq!(sm.apply_replace("n", &items), 2);
    assert_eq!(sm.get("n", "a").value.as_deref(), Some(&b"TWO"[..]));
    let h = sm.history("n", "a");
    assert_eq!(h[0].value.as_deref(), Some(&b"ONE"[..]));
    assert_eq!((h[0].version, h[1].version), (1, 2));
    // No new version, no revision; applying again changes nothing.
    assert_eq!(sm.get("n", "a").version, 2);
    assert_eq!(sm.revision(), revision);
    assert_eq!(sm.apply_replace("n", &items), 0);
    assert_eq!(sm.apply_replace("absent", &items), 0);
}

#[test]
fn writes_to_the_nodes_own_namespaces_leave_no_audit_record() {
    let sys = format!("{}impressions-a", crate::node::SYSTEM_NS_PREFIX);
    let mut sm = GroupSm::new(["n".to_string(), sys.clone()], 2, 10, 10);
    sm.apply(&put(1, "a", "1", 1)).unwrap();
    let mut own = put(2, "f/0", "1", 1);
    own.ns = sys.clone();
    sm.apply(&own).unwrap();
    assert_eq!(sm.get(&sys, "f/0").version, 1, "the write applied");
    assert_eq!(
        sm.audit().last_seq(),
        1,
        "only the client namespace's write is audited"
    );
}
