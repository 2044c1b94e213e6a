//! `meridian config ...` against a real cluster: every output format, and a
//! refused change printing its stable reason and exiting non-zero.

mod common;

use common::Cluster;
use serde_json::{json, Value};

fn cli(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    common::cli_at(&c.grpc, args)
}

fn ok(c: &Cluster, args: &[&str]) -> String {
    common::ok_at(&c.grpc, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_drives_configuration_management_in_every_output_format() {
    let c = Cluster::running().await;
    ok(&c, &["config", "create", "web/base", "--home", "eu"]);
    ok(
        &c,
        &[
            "config",
            "create",
            "web/prod",
            "--home",
            "us",
            "--history-versions",
            "5",
        ],
    );
    let envs: Value =
        serde_json::from_str(&ok(&c, &["-o", "json", "config", "envs", "web"])).unwrap_or_default();
    assert_eq!(envs.as_array().map(Vec::len), Some(2), "{envs}");
    // Move an environment's home and back; the command returns once done.
    let moved = ok(&c, &["config", "move", "web/base", "--to", "ap"]);
    assert!(moved.contains("home ap"), "{moved}");
    let moved: Value = serde_json::from_str(&ok(
        &c,
        &["-o", "json", "config", "move", "web/base", "--to", "eu"],
    ))
    .unwrap_or_default();
    assert_eq!(moved["home_region"], "eu", "{moved}");
    let (success, _, err) = cli(&c, &["config", "move", "web/base", "--to", "mars"]);
    assert!(!success && err.contains("INVALID_REQUEST"), "{err}");
    ok(
        &c,
        &[
            "config",
            "template",
            "web/base",
            "--vars",
            r#"{"host":"db-base"}"#,
        ],
    );
    ok(
        &c,
        &[
            "config",
            "set",
            "web/base",
            "api.db.url",
            "pg://${var:host}",
            "-m",
            "first",
        ],
    );
    ok(&c, &["config", "set", "web/base", "api.db.pool", "10"]);
    ok(
        &c,
        &[
            "config",
            "template",
            "web/prod",
            "--inherits",
            "base",
            "--vars",
            r#"{"host":"db-prod"}"#,
        ],
    );
    let v: Value =
        serde_json::from_str(&ok(&c, &["-o", "json", "config", "get", "web/prod", "api"]))
            .unwrap_or_default();
    assert_eq!(v, json!({"db": {"url": "pg://db-prod", "pool": 10}}));
    let yaml = ok(&c, &["-o", "yaml", "config", "get", "web/prod", "api.db"]);
    assert!(
        yaml.contains("url: pg://db-prod") && yaml.contains("pool: 10"),
        "{yaml}"
    );
    ok(
        &c,
        &[
            "config",
            "merge",
            "web/base",
            "api.db",
            r#"{"pool": 20, "ssl": true}"#,
        ],
    );
    let table = ok(
        &c,
        &[
            "-o",
            "table",
            "config",
            "history",
            "web/base",
            "api.db.pool",
        ],
    );
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].contains("VERSION") && lines[0].contains("AUTHOR"),
        "{table}"
    );
    assert_eq!(lines.len(), 3, "header and two versions: {table}");
    assert!(lines[1].contains("cli-user"), "{table}");
    let diff = ok(
        &c,
        &["config", "diff", "web/prod", "api.db", "--env", "base"],
    );
    assert_eq!(diff, "~ /url: \"pg://db-base\" -> \"pg://db-prod\"\n");
    let diff = ok(
        &c,
        &[
            "config",
            "diff",
            "web/base",
            "api.db.pool",
            "--from-version",
            "1",
            "--to-version",
            "2",
        ],
    );
    assert_eq!(diff, "~ /: 10 -> 20\n");
    ok(
        &c,
        &[
            "config",
            "schema-set",
            "web/base",
            "--prefix",
            "api.db",
            r#"{"properties": {"pool": {"maximum": 50}}}"#,
        ],
    );
    let (success, _, err) = cli(&c, &["config", "set", "web/prod", "api.db.pool", "99"]);
    assert!(
        !success && err.contains("(SCHEMA_VIOLATION)") && err.contains("web/prod"),
        "{err}"
    );
    let (success, _, err) = cli(&c, &["config", "validate", "web/prod", "api.db.pool", "77"]);
    assert!(!success && err.contains("(SCHEMA_VIOLATION)"), "{err}");
    let out = ok(&c, &["config", "validate", "web/prod", "api.db.pool", "30"]);
    assert!(out.starts_with("valid"), "{out}");
    let ls = ok(
        &c,
        &[
            "-o", "table", "config", "ls", "web/prod", "--glob", "api.db.*",
        ],
    );
    assert!(ls.contains("web/base") && ls.contains("api.db.ssl"), "{ls}");
    let h: Value = serde_json::from_str(&ok(
        &c,
        &["-o", "json", "config", "history", "web/base", "api.db.url"],
    ))
    .unwrap_or_default();
    let rev = h["versions"][0]["revision"].as_u64().unwrap_or(0);
    let rollback = [
        "config",
        "rollback",
        "web/base",
        "api.db.pool",
        "--revision",
        &rev.to_string(),
    ];
    let (success, _, err) = cli(&c, &rollback);
    assert!(
        !success && err.contains("ROLLBACK_DELETES") && err.contains("did not exist"),
        "a rollback that deletes is refused unless allowed: {err}"
    );
    let out = ok(&c, &[&rollback[..], &["--allow-delete"]].concat());
    assert!(
        out.contains("warning: deletes 1") && out.contains("api.db.pool"),
        "{out}"
    );
    let (success, _, err) = cli(&c, &["config", "get", "web/base", "api.db.pool"]);
    assert!(
        !success && err.contains("(NOT_FOUND)"),
        "pool did not exist at that revision: {err}"
    );
    let w = ok(
        &c,
        &[
            "config", "watch", "web/prod", "api", "--count", "1", "-o", "jsonl",
        ],
    );
    let ev: Value = serde_json::from_str(&w).unwrap_or_default();
    assert_eq!(ev["snapshot"], json!(true), "{w}");
    // A stream is not one JSON document: -o json is refused, as JSON.
    let (success, _, err) = cli(&c, &["config", "watch", "web/prod", "-o", "json"]);
    let e: Value = serde_json::from_str(&err).unwrap_or_default();
    assert!(
        !success
            && e["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("jsonl"),
        "{err}"
    );
}
