//! `meridian certs` (issue 19, item 9): private keys readable by their owner
//! only, nothing overwritten without `--force`, region names validated as the
//! config validates them, and every file written (the CA key too) listed.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn certs(out: &Path, regions: &str, force: bool) -> Output {
    let mut c = Command::new(common::bin());
    c.args(["certs", "--out"])
        .arg(out)
        .args(["--regions", regions]);
    if force {
        c.arg("--force");
    }
    c.output().expect("run meridian certs")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[test]
fn certs_protects_keys_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("certs");
    let o = certs(&out, "eu,us", false);
    assert!(o.status.success(), "{o:?}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    for f in [
        "ca.pem",
        "ca-key.pem",
        "eu.pem",
        "eu-key.pem",
        "eu-api.pem",
        "eu-api-key.pem",
        "us.pem",
        "us-key.pem",
        "us-api.pem",
        "us-api-key.pem",
    ] {
        assert!(stdout.contains(f), "{f} not listed: {stdout}");
    }
    for k in [
        "ca-key.pem",
        "eu-key.pem",
        "us-key.pem",
        "eu-api-key.pem",
        "us-api-key.pem",
    ] {
        assert_eq!(mode(&out.join(k)), 0o600, "{k}");
    }
    let ca = std::fs::read(out.join("ca.pem")).expect("ca");

    // Again: refused, naming the file; nothing changed.
    let o = certs(&out, "eu,us", false);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("eu.pem already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join("ca.pem")).expect("ca"), ca);

    // A new region is signed by the existing CA, which is left alone.
    let o = certs(&out, "ap", false);
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("using existing"));
    assert_eq!(std::fs::read(out.join("ca.pem")).expect("ca"), ca);
    assert_eq!(mode(&out.join("ap-key.pem")), 0o600);

    // Client certificates alone, from the same CA; not twice.
    let client = |name: &str| {
        Command::new(common::bin())
            .args(["certs", "--out"])
            .arg(&out)
            .args(["--clients", name])
            .output()
            .expect("run meridian certs")
    };
    let o = client("alice");
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("client-alice.pem"));
    assert_eq!(mode(&out.join("client-alice-key.pem")), 0o600);
    assert_eq!(std::fs::read(out.join("ca.pem")).expect("ca"), ca);
    let o = client("alice");
    assert!(
        !o.status.success(),
        "client-alice.pem replaced without --force"
    );
    let o = client("a b");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("client name"), "{err}");

    // --force starts over, keys still private even where a file was looser.
    std::fs::set_permissions(
        out.join("eu-key.pem"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let o = certs(&out, "eu,us", true);
    assert!(o.status.success(), "{o:?}");
    assert_ne!(
        std::fs::read(out.join("ca.pem")).expect("ca"),
        ca,
        "a new CA"
    );
    assert_eq!(mode(&out.join("eu-key.pem")), 0o600);
    assert_eq!(mode(&out.join("ca-key.pem")), 0o600);
}

#[test]
fn certs_refuses_bad_region_names_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("certs");
    for bad in ["bad name", "../x", "a_b", ""] {
        let o = certs(&out, &format!("eu,{bad}"), false);
        assert!(!o.status.success(), "{bad:?} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("region name"), "{bad:?}: {err}");
        assert!(!out.exists(), "files written for {bad:?}");
    }
}

#[test]
fn a_half_ca_is_not_silently_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("certs");
    assert!(certs(&out, "eu", false).status.success());
    std::fs::remove_file(out.join("ca-key.pem")).expect("rm");
    let o = certs(&out, "us", false);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot reuse half a CA"), "{err}");
}
