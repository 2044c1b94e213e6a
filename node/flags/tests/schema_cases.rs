//! flagd-schemas' own test documents (vendored in `tests/schema-cases/`,
//! see `schema/README.md`) against Meridian's validator: every positive
//! document passes flagd's schema as Meridian compiles it, every negative
//! one is refused. Flag-set documents in the flagd daemon's array form
//! (`$schema` flagd.json) are another format and are skipped by name.

use std::path::Path;

use meridian_flags::validate::{check_schema, validate_definition};
use serde_json::{json, Value};

fn docs(dir: &str) -> Vec<(String, Value)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/schema-cases")
        .join(dir);
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .map(|e| {
            let p = e.expect("entry").path();
            let v =
                serde_json::from_str(&std::fs::read_to_string(&p).expect("read")).expect("JSON");
            (
                p.file_name().expect("name").to_string_lossy().to_string(),
                v,
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no documents in {dir}");
    out
}

fn daemon_form(v: &Value) -> bool {
    v.get("$schema")
        .and_then(Value::as_str)
        .is_some_and(|s| s.ends_with("flagd.json"))
}

#[test]
fn flag_set_documents_pass_and_fail_as_flagd_says() {
    let mut checked = 0;
    for (name, doc) in docs("flags/positive") {
        if daemon_form(&doc) {
            continue;
        }
        check_schema(&doc).unwrap_or_else(|e| panic!("{name} should pass: {e}"));
        checked += 1;
    }
    for (name, doc) in docs("flags/negative") {
        if daemon_form(&doc) {
            continue;
        }
        assert!(check_schema(&doc).is_err(), "{name} should be refused");
        checked += 1;
    }
    assert!(checked >= 14, "only {checked} documents checked");
}

#[test]
fn targeting_documents_pass_and_fail_as_flagd_says() {
    let flag = |t: &Value| json!({"state": "ENABLED", "variants": {"a": true}, "defaultVariant": "a", "targeting": t});
    for (name, t) in docs("targeting/positive") {
        check_schema(&json!({"flags": {"f": flag(&t)}}))
            .unwrap_or_else(|e| panic!("{name} should pass: {e}"));
    }
    for (name, t) in docs("targeting/negative") {
        // flagd's schema alone, then the whole validation of a write.
        assert!(
            check_schema(&json!({"flags": {"f": flag(&t)}})).is_err(),
            "{name}: the schema should refuse it"
        );
        assert!(
            validate_definition("f", &flag(&t)).is_err(),
            "{name}: a write should be refused"
        );
    }
}
