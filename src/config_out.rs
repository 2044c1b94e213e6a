//! How the CLI prints a configuration write's result and diffs (the
//! `config` and `secrets` commands share it).

use crate::config_cmd::parse;
use crate::output::{emit, Output};
use anyhow::Result;
use meridian_node::configstore::diff;
use meridian_proto::v1::{ConfigWriteResponse, DiffChange};
use serde_json::{json, Value};

pub(crate) fn write_json(w: &ConfigWriteResponse) -> Value {
    json!({
        "revision": w.revision, "token": w.token, "replayed": w.replayed, "dry_run": w.dry_run,
        "changes": w.changes.iter().map(|c| json!({"key": c.key, "op": c.op, "version": c.version})).collect::<Vec<_>>(),
        "diff": w.diff.iter().map(diff_json).collect::<Vec<_>>(),
        "warnings": w.warnings,
    })
}

pub(crate) fn diff_json(c: &DiffChange) -> Value {
    let mut v = json!({"path": c.path, "op": c.op});
    if !c.from_json.is_empty() {
        v["from"] = parse(&c.from_json);
    }
    if !c.to_json.is_empty() {
        v["to"] = parse(&c.to_json);
    }
    v
}

pub(crate) fn pretty(v: &Value) -> String {
    format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default())
}

/// The CLI's text diff is the engine's (`+`, `-`, `~` lines by JSON pointer).
pub(crate) fn diff_text(changes: &[Value]) -> String {
    let changes: Vec<diff::Change> = changes
        .iter()
        .map(|c| diff::Change {
            path: c["path"].as_str().unwrap_or_default().to_string(),
            op: match c["op"].as_str() {
                Some("added") => "added",
                Some("removed") => "removed",
                _ => "changed",
            },
            from: c.get("from").cloned(),
            to: c.get("to").cloned(),
        })
        .collect();
    diff::to_text(&changes)
}

/// Print a write's result (`-o` as chosen).
pub(crate) fn emit_write(out: Output, r: &ConfigWriteResponse) -> Result<()> {
    emit(out, &write_json(r), written)
}

pub(crate) fn written(v: &Value) -> String {
    let mut s = format!("revision {}", v["revision"]);
    if v["replayed"] == json!(true) {
        s.push_str(" (replayed: an earlier write with this idempotency key)");
    }
    s.push('\n');
    s.push_str(&diff_text(
        v["diff"].as_array().map(Vec::as_slice).unwrap_or(&[]),
    ));
    for w in v["warnings"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        s.push_str(&format!("warning: {}\n", w.as_str().unwrap_or_default()));
    }
    s
}
