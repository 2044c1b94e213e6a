//! The benchmark end to end, at small sizes: every workload against Meridian
//! and etcd (real processes on loopback), the cross-region workload through
//! `meridian-netlab`, and the outputs the issue asks for (table, JSON, one
//! CDF plot per workload). Figures at these sizes mean nothing; what is
//! asserted is that every path works and that the results are sane: no
//! acknowledged write lost in failover, the WAN latency really in the path of
//! a quorum write, every watcher served.
//!
//! Needs etcd (Debian's `etcd-server`, installed by `scripts/setup.sh`) and
//! the `meridian` binary beside this package's (`cargo test --workspace`
//! builds both). Either missing fails the test with a message saying so.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn every_workload_runs_against_both_systems_and_writes_table_json_and_plots() {
    let bench = Path::new(env!("CARGO_BIN_EXE_meridian-bench"));
    let meridian = bench.with_file_name("meridian");
    assert!(
        meridian.exists(),
        "{} is missing: this test needs the `meridian` binary; run `cargo test --workspace` (or `cargo build -p meridian` first)",
        meridian.display()
    );
    let etcd_found = std::env::var("ETCD_BIN").is_ok()
        || std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .any(|d| Path::new(d).join("etcd").is_file());
    assert!(
        etcd_found,
        "etcd is not installed: this test runs etcd side by side; run `bash scripts/setup.sh` (Debian's etcd-server)"
    );
    let out = tempfile::tempdir().unwrap();
    let res = Command::new(bench)
        .args(["all", "--quick", "--compare", "etcd", "--meridian-bin"])
        .arg(&meridian)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    let stdout = String::from_utf8_lossy(&res.stdout);
    println!("{stderr}");
    assert!(res.status.success(), "meridian-bench failed:\n{stderr}");

    // The table: every workload, both systems, a ratio.
    let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert_eq!(md, stdout, "the printed table is the one written");
    for title in [
        "### Read-heavy",
        "### Writes (fsynced)",
        "### Watch fan-out",
        "### Cross-region",
        "### Config writes from the home region",
        "### Failover",
        "### Access control: auth on against auth off",
        "### Feature flags: local evaluation, OFREP, and a change pushed to sync streams",
    ] {
        assert!(md.contains(title), "{title} missing from:\n{md}");
    }
    assert!(md.contains("(serializable)") && md.contains("× ("), "{md}");

    // The JSON: raw numbers per workload.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap())
            .unwrap();
    let workloads = json["workloads"].as_array().unwrap();
    let names: Vec<&str> = workloads
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "read",
            "write",
            "watch",
            "cross-region",
            "config-write",
            "failover",
            "auth",
            "secrets",
            "flags"
        ]
    );
    // Flags: local evaluation, OFREP and a push, each measured.
    let flags = &workloads.iter().find(|w| w["name"] == "flags").unwrap()["raw"];
    assert!(
        flags["local"]["evaluations_per_s"].as_f64().unwrap() > 0.0,
        "{flags}"
    );
    assert!(flags["ofrep_per_s"].as_f64().unwrap() > 0.0, "{flags}");
    assert!(!flags["push"].as_array().unwrap().is_empty(), "{flags}");
    // Secrets: plain, reveal, reveal, plain, then redacted, each measured.
    let sec = workloads.iter().find(|w| w["name"] == "secrets").unwrap();
    let modes: Vec<&str> = sec["raw"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["Plain", "Reveal", "Reveal", "Plain", "Redacted"]);
    for r in sec["raw"].as_array().unwrap() {
        assert!(r["reads_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    // Auth: four runs measured (off, on, on, off), reads and puts, with the
    // token's role in force.
    let auth = workloads.iter().find(|w| w["name"] == "auth").unwrap();
    let runs = auth["raw"].as_array().unwrap();
    let order: Vec<bool> = runs.iter().map(|r| r["auth"].as_bool().unwrap()).collect();
    assert_eq!(order, [false, true, true, false], "{runs:?}");
    for r in runs {
        assert!(r["reads_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["writes_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    let by = |n: &str| workloads.iter().find(|w| w["name"] == n).unwrap();

    // Config writes: home and non-home, on loopback and through the lab.
    let cfg = by("config-write")["raw"].as_array().unwrap();
    assert_eq!(cfg.len(), 4, "{cfg:?}");
    for r in cfg {
        assert!(r["latency"]["p50_us"].as_u64().unwrap() > 0, "{r}");
    }

    // Read: both systems measured at every level, no wrong answers.
    let reads = by("read")["raw"].as_array().unwrap();
    assert_eq!(reads.len(), 5, "3 Meridian levels + 2 etcd levels");
    for r in reads {
        assert!(r["reads"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["wrong"], 0, "{r}");
    }

    // Writes: put and CAS on 1 and 3 members, each CAS by the key's only writer succeeds.
    let writes = by("write")["raw"].as_array().unwrap();
    assert_eq!(writes.len(), 8);
    for w in writes {
        assert!(w["ops"].as_u64().unwrap() > 0, "{w}");
        assert_eq!(w["cas_failed"], 0, "{w}");
    }

    // Watch: every watcher got every round (else the run fails), memory measured.
    for w in by("watch")["raw"].as_array().unwrap() {
        assert!(w["bytes_per_watcher"].as_f64().unwrap() > 0.0, "{w}");
        assert_eq!(w["rounds"].as_array().unwrap().len(), 3, "{w}");
    }

    // Cross-region: the lab's latency is in the path. A quorum write from eu
    // needs a round trip to us (10 ms each way at --quick), a local stale read
    // does not.
    let cross = by("cross-region")["raw"].as_array().unwrap();
    let find = |region: &str, op: &str| {
        cross
            .iter()
            .find(|r| r["region"] == region && r["op"] == op)
            .unwrap()["latency"]["p50_us"]
            .as_u64()
            .unwrap()
    };
    let eu_write = find("eu", "quorum write");
    assert!(
        eu_write >= 20_000,
        "eu quorum write p50 {eu_write} µs < 20 ms RTT"
    );
    let ap_lin = find("ap", "linearizable read");
    assert!(
        ap_lin >= 60_000,
        "ap linearizable read p50 {ap_lin} µs < 60 ms RTT to eu"
    );
    let ap_stale = find("ap", "stale read");
    assert!(
        ap_stale < 20_000,
        "ap stale read p50 {ap_stale} µs is not local"
    );

    // Failover: nothing acknowledged is lost, on either system.
    for f in by("failover")["raw"].as_array().unwrap() {
        assert!(f["acknowledged"].as_u64().unwrap() > 0, "{f}");
        assert_eq!(f["lost"], 0, "{f}");
        assert!(f["rto_us"].as_u64().unwrap() > 0, "{f}");
    }

    // One plot per workload, one line per series.
    for w in workloads {
        let name = w["name"].as_str().unwrap();
        let svg = std::fs::read_to_string(out.path().join(format!("{name}.svg"))).unwrap();
        let lines = svg.matches("<polyline").count();
        assert_eq!(lines, w["series"].as_array().unwrap().len(), "{name}.svg");
        assert!(lines > 0, "{name}.svg has no series");
    }
}
