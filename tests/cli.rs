//! The KV commands of `meridian` against a real cluster, as a new user and a
//! script would run them: what they print, in every output format, and their
//! exit codes.

mod common;

use std::process::Command;

use common::{bin, Cluster};

/// (success, stdout, stderr) of `meridian --endpoints ... args`.
fn cli(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .arg("--endpoints")
        .arg(c.grpc.join(","))
        .args(args)
        .env("USER", "cli-user")
        .env("NO_COLOR", "1")
        .output()
        .expect("run meridian");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(c: &Cluster, args: &[&str]) -> String {
    let (success, out, err) = cli(c, args);
    assert!(success, "meridian {args:?} failed:\n{out}\n{err}");
    out
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
