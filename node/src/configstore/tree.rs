//! Dotted keys and JSON subtrees: key syntax, assembling the leaves under a
//! path into one JSON object, and splitting an edited document back into
//! leaves (for merge patch and JSON patch, which edit whole subtrees).
//!
//! A leaf is one stored key (`services.payment.max_connections`) holding any
//! JSON value. No leaf may be the dotted ancestor of another, so a subtree is
//! always a well-formed object.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Bytes of one path segment at most (the whole key is bounded by the core's limit).
pub const SEGMENT_BYTES_MAX: usize = 128;
/// Depth of a key (segments) at most: bounds recursion when assembling trees.
pub const DEPTH_MAX: usize = 32;

/// Reserved keys of a namespace: schemas, variables and the template parent.
/// They start with `$`, which no user key may, so they never appear in subtrees.
pub const SCHEMA_KEY_PREFIX: &str = "$schema:";
pub const VARS_KEY: &str = "$vars";
pub const INHERITS_KEY: &str = "$inherits";
/// Every key of the namespace that ever held a secret (a JSON array, kept by
/// the engine): once secret, always secret, even after a delete.
pub const SECRETS_KEY: &str = "$secrets";
/// The environment's setting of paths whose keys are secrets (a JSON array
/// of dotted prefixes, "" for every key; `Op::SecretPaths` edits it).
pub const SECRET_PATHS_KEY: &str = "$secret_paths";
/// A feature flag's definition (`$flag:<key>`, flagd's format plus
/// Meridian's prerequisites and schedule) and a segment, a shared rule that
/// flags refer to with `{"$ref": name}` (`$segment:<name>`).
pub const FLAG_KEY_PREFIX: &str = "$flag:";
pub const SEGMENT_KEY_PREFIX: &str = "$segment:";

/// Check a user key: dot-separated segments of `[A-Za-z0-9_-]`.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a key may not be empty".into());
    }
    let segments: Vec<&str> = key.split('.').collect();
    if segments.len() > DEPTH_MAX {
        return Err(format!(
            "key {key:?} has {} segments; at most {DEPTH_MAX}",
            segments.len()
        ));
    }
    for s in segments {
        if s.is_empty() {
            return Err(format!("key {key:?} has an empty segment"));
        }
        if s.len() > SEGMENT_BYTES_MAX {
            return Err(format!(
                "key {key:?} has a segment longer than {SEGMENT_BYTES_MAX} bytes"
            ));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "key {key:?}: segments may hold only letters, digits, '_' and '-'"
            ));
        }
    }
    Ok(())
}

/// Check a subtree path: empty (the whole namespace) or a key.
pub fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        Ok(())
    } else {
        check_key(path)
    }
}

/// The scan prefix of the leaves strictly below `path`.
pub fn child_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}.")
    }
}

/// `key` is `path` itself or lies below it.
pub fn is_under(key: &str, path: &str) -> bool {
    path.is_empty()
        || key == path
        || (key.len() > path.len() && key.starts_with(path) && key.as_bytes()[path.len()] == b'.')
}

/// The proper dotted ancestors of a key, shortest first.
pub fn ancestors(key: &str) -> Vec<&str> {
    key.match_indices('.').map(|(i, _)| &key[..i]).collect()
}

/// Assemble the leaves under `path` into one value: the leaf itself if `path`
/// is a leaf, else an object nested by segment. `leaves` holds user keys only.
/// None: nothing lives there.
pub fn assemble(leaves: &BTreeMap<String, Value>, path: &str) -> Option<Value> {
    if let Some(v) = leaves.get(path) {
        if !path.is_empty() {
            return Some(v.clone());
        }
    }
    let prefix = child_prefix(path);
    let mut root = Map::new();
    let mut any = false;
    for (k, v) in leaves.range(prefix.clone()..) {
        if !k.starts_with(&prefix) {
            break;
        }
        any = true;
        let rest = &k[prefix.len()..];
        insert_path(&mut root, rest, v.clone());
    }
    any.then_some(Value::Object(root))
}

fn insert_path(root: &mut Map<String, Value>, rest: &str, v: Value) {
    match rest.split_once('.') {
        None => {
            root.insert(rest.to_string(), v);
        }
        Some((head, tail)) => {
            let child = root
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !child.is_object() {
                // Cannot happen while no leaf is another's ancestor; keep the
                // deeper data rather than fail a read.
                *child = Value::Object(Map::new());
            }
            if let Value::Object(m) = child {
                insert_path(m, tail, v);
            }
        }
    }
}

/// Split `doc` (the new value of the subtree at `path`) into leaves. Existing
/// leaves keep their boundaries: a leaf whose location still exists takes the
/// value found there; new content is split at object boundaries (objects are
/// descended into, everything else, and empty objects, become leaves).
pub fn decompose(
    doc: &Value,
    path: &str,
    existing: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, Value>, String> {
    let mut out = BTreeMap::new();
    split(doc, path, existing, &mut out, 0)?;
    Ok(out)
}

fn split(
    v: &Value,
    at: &str,
    existing: &BTreeMap<String, Value>,
    out: &mut BTreeMap<String, Value>,
    depth: usize,
) -> Result<(), String> {
    if depth > DEPTH_MAX {
        return Err(format!("document nests deeper than {DEPTH_MAX} levels"));
    }
    let is_leaf = !at.is_empty() && existing.contains_key(at);
    match v {
        Value::Object(m) if !is_leaf && (!m.is_empty() || at.is_empty()) => {
            for (k, child) in m {
                let key = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                check_key(&key)?;
                split(child, &key, existing, out, depth + 1)?;
            }
            Ok(())
        }
        _ if at.is_empty() => Err("the namespace root must be a JSON object".into()),
        _ => {
            out.insert(at.to_string(), v.clone());
            Ok(())
        }
    }
}

/// A `*`/`?`/`**` glob over dotted keys, compiled once (globset, with `.` as
/// the separator so `*` stays within one segment and `**` spans segments).
pub fn glob(pattern: &str) -> Result<globset::GlobMatcher, String> {
    let slashed = pattern.replace('.', "/");
    globset::GlobBuilder::new(&slashed)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("bad glob {pattern:?}: {e}"))
}

pub fn glob_matches(m: &globset::GlobMatcher, key: &str) -> bool {
    m.is_match(key.replace('.', "/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn leaves(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn keys_are_checked() {
        assert!(check_key("services.payment.database_url").is_ok());
        for bad in ["", ".a", "a..b", "a.", "a b", "$vars", "a.é"] {
            assert!(check_key(bad).is_err(), "{bad:?} accepted");
        }
        assert!(is_under("a.b.c", "a.b") && is_under("a.b", "a.b") && !is_under("a.bc", "a.b"));
        assert_eq!(ancestors("a.b.c"), ["a", "a.b"]);
    }

    #[test]
    fn subtree_assembles_nested_objects() {
        let l = leaves(&[
            ("services.payment.database_url", json!("pg://x")),
            ("services.payment.max_connections", json!(100)),
            ("services.payment.feature_flags.new_checkout", json!(true)),
            ("services.paymentx", json!(1)),
        ]);
        assert_eq!(
            assemble(&l, "services.payment").unwrap(),
            json!({"database_url": "pg://x", "max_connections": 100,
                   "feature_flags": {"new_checkout": true}})
        );
        assert_eq!(
            assemble(&l, "services.payment.max_connections").unwrap(),
            json!(100)
        );
        assert!(assemble(&l, "services.none").is_none());
        assert_eq!(assemble(&l, "").unwrap()["services"]["paymentx"], json!(1));
    }

    #[test]
    fn decompose_keeps_existing_leaf_boundaries() {
        let existing = leaves(&[("s.flags", json!({"a": true})), ("s.port", json!(1))]);
        let doc = json!({"flags": {"a": false, "b": true}, "port": 2, "new": {"x": [1], "e": {}}});
        let out = decompose(&doc, "s", &existing).unwrap();
        assert_eq!(
            out["s.flags"],
            json!({"a": false, "b": true}),
            "a leaf stays one leaf"
        );
        assert_eq!(out["s.port"], json!(2));
        assert_eq!(out["s.new.x"], json!([1]));
        assert_eq!(out["s.new.e"], json!({}));
        assert_eq!(out.len(), 4);
        assert!(decompose(&json!({"bad key": 1}), "s", &existing).is_err());
        assert!(decompose(&json!(5), "", &existing).is_err());
    }

    #[test]
    fn globs_match_segments() {
        let g = glob("services.*.database_url").unwrap();
        assert!(glob_matches(&g, "services.payment.database_url"));
        assert!(!glob_matches(&g, "services.a.b.database_url"));
        let g = glob("services.**.url").unwrap();
        assert!(glob_matches(&g, "services.a.b.url"));
    }
}
