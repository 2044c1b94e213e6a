//! The KV commands of `meridian` against a real cluster, as a new user and a
//! script would run them: what they print, in every output format, and their
//! exit codes.

mod common;

use std::process::Command;

use common::{bin, Cluster};

fn cli(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    common::cli_at(&c.grpc, args)
}

fn ok(c: &Cluster, args: &[&str]) -> String {
    common::ok_at(&c.grpc, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_key_that_never_existed_writes_nothing() {
    let c = Cluster::running().await;
    let out = ok(&c, &["delete", "app/nonexistent"]);
    assert!(out.starts_with("deleted 0"), "{out}");
    let out = ok(&c, &["history", "app/nonexistent"]);
    assert_eq!(out.trim(), "", "no history for a key never written: {out}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(&c, &["-o", "json", "delete", "app/nonexistent"]))
            .expect("one JSON document");
    assert_eq!(
        (v["succeeded"].as_bool(), v["deleted"].as_u64()),
        (Some(true), Some(0))
    );

    ok(&c, &["put", "app/k", "v"]);
    let out = ok(&c, &["delete", "app/k"]);
    assert!(out.starts_with("deleted 1"), "{out}");
    let out = ok(&c, &["delete", "app/k"]);
    assert!(
        out.starts_with("deleted 0"),
        "a second delete deletes nothing: {out}"
    );
    let out = ok(&c, &["history", "app/k"]);
    assert_eq!(out.lines().count(), 2, "one put, one delete: {out}");
}

fn json_doc(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not one JSON document ({e}):\n{s}"))
}

/// Issue 19, item 10: every command's `-o json` is one document; `-o jsonl`
/// prints a list one item per line; yaml and table work everywhere;
/// errors are JSON on stderr; exit codes do not depend on the format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_output_is_one_document_and_errors_are_json() {
    let c = Cluster::running().await;
    for i in 0..3 {
        ok(&c, &["put", &format!("o/k{i}"), &format!("v{i}")]);
    }
    ok(&c, &["put", "o/k0", "again"]);
    let list = json_doc(&ok(&c, &["-o", "json", "list", "o/"]));
    assert_eq!(list["items"].as_array().map(Vec::len), Some(3), "{list}");
    let lines = ok(&c, &["-o", "jsonl", "list", "o/"]);
    assert_eq!(lines.lines().count(), 3, "{lines}");
    for l in lines.lines() {
        assert!(json_doc(l)["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("o/")));
    }
    let hist = json_doc(&ok(&c, &["-o", "json", "history", "o/k0"]));
    assert_eq!(hist["versions"].as_array().map(Vec::len), Some(2), "{hist}");
    let status = json_doc(&ok(&c, &["-o", "json", "cluster", "status"]));
    assert_eq!(status["regions"].as_array().map(Vec::len), Some(3));
    let yaml = ok(&c, &["-o", "yaml", "list", "o/"]);
    assert!(
        yaml.contains("items:") && yaml.contains("key: o/k1"),
        "{yaml}"
    );
    let table = ok(&c, &["-o", "table", "history", "o/k0"]);
    assert!(
        table.starts_with("KEY") || table.lines().next().is_some_and(|h| h.contains("VERSION")),
        "{table}"
    );
    assert_eq!(
        table.lines().count(),
        3,
        "a header and two versions: {table}"
    );

    // A missing key fails the same way in every format.
    for format in ["human", "json", "jsonl", "yaml", "table"] {
        let (success, _, err) = cli(&c, &["-o", format, "get", "o/missing"]);
        assert!(!success, "-o {format}: get of a missing key must fail");
        if format.starts_with("json") {
            let e = json_doc(&err);
            assert_eq!(e["error"]["reason"], "NOT_FOUND", "{err}");
        } else {
            assert!(
                err.contains("not found") && err.contains("(NOT_FOUND)"),
                "{err}"
            );
        }
    }
    let (success, out, _) = cli(&c, &["-o", "json", "get", "o/missing"]);
    assert!(!success);
    assert_eq!(
        json_doc(&out)["found"],
        false,
        "the document still says what was read"
    );

    // A server error: its reason once, the namespace named, as JSON with -o json.
    let (success, _, err) = cli(&c, &["-n", "nope", "get", "k"]);
    assert!(!success);
    assert_eq!(
        err.matches("UNKNOWN_NAMESPACE").count(),
        1,
        "the reason once: {err}"
    );
    assert!(err.contains("\"nope\""), "the namespace named: {err}");
    let (_, _, err) = cli(&c, &["-o", "json", "-n", "nope", "get", "k"]);
    let e = json_doc(&err);
    assert_eq!(e["error"]["reason"], "UNKNOWN_NAMESPACE", "{err}");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nope") && !m.contains('[')),
        "{err}"
    );
    // A stream refuses -o json and says what to use.
    let (success, _, err) = cli(&c, &["-o", "json", "watch", "o/"]);
    assert!(!success && err.contains("jsonl"), "{err}");
    let out = ok(
        &c,
        &[
            "-o",
            "jsonl",
            "watch",
            "o/",
            "--from-revision",
            "0",
            "--count",
            "2",
        ],
    );
    assert_eq!(out.lines().count(), 2, "{out}");
    // transfer-lease names the group by its home region and says when
    // leadership comes back.
    let out = ok(
        &c,
        &["cluster", "transfer-lease", "--group", "eu", "--to", "us"],
    );
    assert!(
        out.contains("group eu") && out.contains("to us") && out.contains("returns to eu"),
        "{out}"
    );
    assert!(!out.contains("group 0"), "{out}");
}

/// Issue 19, items 11 and 12: continuation, transactions, value arguments,
/// completion scripts, and error text that names what went wrong once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_arguments_and_error_text() {
    let c = Cluster::running().await;
    for i in 0..5 {
        ok(&c, &["put", &format!("p/k{i}"), "x"]);
    }
    // --limit points to a continuation that exists.
    let (success, out, err) = cli(&c, &["list", "p/", "--limit", "2"]);
    assert!(success && out.lines().count() == 2, "{out}{err}");
    let token = err
        .split("--page-token ")
        .nth(1)
        .and_then(|t| t.split([',', ' ']).next())
        .unwrap_or_else(|| panic!("no continuation printed: {err}"));
    let rest = ok(&c, &["list", "p/", "--limit", "10", "--page-token", token]);
    assert_eq!(rest.lines().count(), 3, "the remaining keys: {rest}");
    let all = json_doc(&ok(
        &c,
        &["-o", "json", "list", "p/", "--limit", "2", "--all"],
    ));
    assert_eq!(all["items"].as_array().map(Vec::len), Some(5));

    // A KV transaction: compares, puts and deletes at once.
    let t = json_doc(&ok(
        &c,
        &[
            "-o", "json", "txn", "--if", "p/k0=1", "--put", "p/k0=y", "--put", "p/new=z",
            "--delete", "p/k1",
        ],
    ));
    assert_eq!(
        (t["succeeded"].as_bool(), t["deleted"].as_u64()),
        (Some(true), Some(1)),
        "{t}"
    );
    let (success, _, err) = cli(&c, &["txn", "--if", "p/k0=1", "--put", "p/k0=w"]);
    assert!(
        !success && err.contains("CAS_CONFLICT"),
        "a failed compare fails: {err}"
    );
    let (success, _, err) = cli(&c, &["txn", "--put", "p/a=1", "--delete", "p/a"]);
    assert!(
        !success && err.contains("appears twice"),
        "invalid request with its cause: {err}"
    );
    let (success, _, err) = cli(&c, &["put", "", "v"]);
    assert!(!success && err.contains("empty"), "{err}");

    // Values from a file and stdin.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("v.txt");
    std::fs::write(&file, "from a file").expect("write");
    ok(&c, &["put", "p/f", &format!("@{}", file.display())]);
    assert_eq!(ok(&c, &["get", "p/f"]).trim(), "from a file");

    // Config values: JSON that does not parse is refused, --string takes text.
    ok(&c, &["config", "create", "cli/dev", "--home", "eu"]);
    let (success, _, err) = cli(&c, &["config", "set", "cli/dev", "a", "[1,2"]);
    assert!(!success && err.contains("--string"), "{err}");
    ok(&c, &["config", "set", "cli/dev", "a", "[1,2", "--string"]);
    let v = json_doc(&ok(&c, &["-o", "json", "config", "get", "cli/dev", "a"]));
    assert_eq!(v, serde_json::json!("[1,2"));
    ok(&c, &["config", "set", "cli/dev", "b", "on"]);
    let v = json_doc(&ok(&c, &["-o", "json", "config", "get", "cli/dev", "b"]));
    assert_eq!(v, serde_json::json!("on"), "a bare word is a string");
    let json_file = dir.path().join("v.json");
    std::fs::write(&json_file, "{\"pool\": 5}\n").expect("write");
    ok(
        &c,
        &[
            "config",
            "set",
            "cli/dev",
            "db",
            &format!("@{}", json_file.display()),
        ],
    );
    let v = json_doc(&ok(&c, &["-o", "json", "config", "get", "cli/dev", "db"]));
    assert_eq!(v, serde_json::json!({"pool": 5}));
    let mut child = Command::new(bin())
        .env("MERIDIAN_CACERT", common::ca_path())
        .args([
            "--endpoints",
            &c.grpc.join(","),
            "config",
            "set",
            "cli/dev",
            "s",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), b"[3, 4]\n").expect("stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_doc(&ok(&c, &["-o", "json", "config", "get", "cli/dev", "s"]));
    assert_eq!(v, serde_json::json!([3, 4]));
    // Config history: ISO 8601 times and the OS user as the author.
    let h = ok(&c, &["config", "history", "cli/dev", "b"]);
    assert!(
        h.contains("T") && h.contains('Z') && h.contains("cli-user"),
        "{h}"
    );
    // Without $USER and $LOGNAME, the author is the uid's name from /etc/passwd.
    let out = Command::new(bin())
        .env("MERIDIAN_CACERT", common::ca_path())
        .args([
            "--endpoints",
            &c.grpc.join(","),
            "config",
            "set",
            "cli/dev",
            "c",
            "1",
        ])
        .env_remove("USER")
        .env_remove("LOGNAME")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h = json_doc(&ok(
        &c,
        &["-o", "json", "config", "history", "cli/dev", "c"],
    ));
    let author = h["versions"][0]["author"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let me = Command::new("id").arg("-un").output().expect("id -un");
    assert_eq!(author, String::from_utf8_lossy(&me.stdout).trim(), "{h}");
    // The main argument is positional everywhere.
    let envs = json_doc(&ok(&c, &["-o", "json", "config", "envs", "cli"]));
    assert_eq!(envs.as_array().map(Vec::len), Some(1), "{envs}");
    let (success, _, err) = cli(&c, &["config", "get", "cli/missing", "a"]);
    assert!(
        !success
            && err.contains("\"cli/missing\"")
            && err.matches("UNKNOWN_NAMESPACE").count() == 1,
        "{err}"
    );

    // Connect errors name the address.
    let out = Command::new(bin())
        .env("MERIDIAN_CACERT", common::ca_path())
        .args(["--endpoints", "127.0.0.1:1", "get", "k"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("127.0.0.1:1"),
        "{err}"
    );

    // Shell completion.
    let bash = ok(&c, &["completion", "bash"]);
    assert!(
        bash.contains("complete") && bash.contains("meridian"),
        "{bash}"
    );
}
