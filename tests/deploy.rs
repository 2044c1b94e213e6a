//! `deploy/` checked by what can run here (deploy/README.md):
//! - the Kubernetes manifests against Kubernetes' own schemas, strictly,
//!   with `kubernetes-validate` from PyPI (which ships them);
//! - every region configuration the manifests and the compose file carry,
//!   with the node's own parser and validation;
//! - the systemd unit with `systemd-analyze verify` (Debian's systemd),
//!   which must print nothing.
//!
//! Each check is shown to catch a broken copy, so a validator that accepts
//! anything would fail here. `docker build` and `docker compose` cannot run
//! on this machine (no Docker engine, no compose plugin): the Dockerfile
//! and compose file are not executed, only the configurations they mount
//! are checked.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A command's stdout then stderr, as text.
fn all_output(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// (success, stdout + stderr) of `python3 -m kubernetes_validate --strict files`.
fn kubernetes_validate(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(files)
        .output()
        .expect("python3 runs");
    let text = all_output(&out);
    assert!(
        !text.contains("No module named kubernetes_validate"),
        "kubernetes-validate is not installed: run scripts/setup.sh (cargo xtask test does)\n{text}"
    );
    (out.status.success(), text)
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_kubernetes_manifests_validate_strictly_against_kubernetes_schemas() {
    let files = manifests();
    assert_eq!(
        files.len(),
        4,
        "three regions and the PodDisruptionBudget: {files:?}"
    );
    let (ok, text) = kubernetes_validate(&files);
    assert!(ok, "{text}");
    for kind in ["statefulset", "service", "configmap", "poddisruptionbudget"] {
        assert!(
            text.contains(&format!("resource {kind}/")),
            "{kind} not validated:\n{text}"
        );
    }
    // The validator catches what is wrong: a misspelt field of a StatefulSet.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(repo().join("deploy/k8s/region-eu.yaml")).unwrap();
    std::fs::write(&bad, text.replace("replicas: 1", "replica: 1")).unwrap();
    let (ok, out) = kubernetes_validate(&[bad]);
    assert!(!ok, "a misspelt field passed:\n{out}");
}

/// Every `meridian.toml` a ConfigMap of the manifests carries.
fn configmap_configs(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = Vec::new();
    for doc in text.split("\n---\n") {
        let v: serde_json::Value = serde_norway::from_str(doc).unwrap();
        if v["kind"] == "ConfigMap" {
            out.push(v["data"]["meridian.toml"].as_str().unwrap().to_string());
        }
    }
    out
}

#[test]
fn every_region_configuration_in_deploy_parses_and_validates() {
    let mut configs = Vec::new();
    for f in manifests() {
        configs.extend(configmap_configs(&f));
    }
    for r in ["eu", "us", "ap"] {
        configs.push(
            std::fs::read_to_string(repo().join(format!("deploy/compose/config/{r}.toml")))
                .unwrap(),
        );
    }
    assert_eq!(
        configs.len(),
        6,
        "three from Kubernetes, three from compose"
    );
    let mut regions = std::collections::BTreeSet::new();
    for text in &configs {
        let cfg = meridian_node::config::NodeConfig::parse(text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(cfg.regions.len(), 3, "{text}");
        regions.insert(cfg.region.clone());
    }
    assert_eq!(regions.len(), 3);
    // The parser is the node's: a wrong value is refused.
    let broken = configs[0].replace("region = \"", "region = \"x");
    assert!(meridian_node::config::NodeConfig::parse(&broken).is_err());
}

#[test]
fn the_systemd_unit_verifies_without_a_word() {
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/meridian.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/meridian serve"),
        "{unit}"
    );
    // verify checks that ExecStart's binary exists: point it at the one built.
    let dir = tempfile::tempdir().unwrap();
    let verify = |text: &str| -> (bool, String) {
        let path = dir.path().join("meridian.service");
        std::fs::write(&path, text).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap_or_else(|e| {
                panic!("systemd-analyze is needed (Debian's systemd package; scripts/setup.sh installs it): {e}")
            });
        (out.status.success(), all_output(&out))
    };
    let here = unit.replace(
        "/usr/local/bin/meridian serve",
        &format!("{} serve", common::bin()),
    );
    let (ok, text) = verify(&here);
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify said:\n{text}"
    );
    // It speaks up about a mistake (an unknown directive is only a warning).
    let (_, text) = verify(&here.replace("Restart=on-failure", "Restartt=on-failure"));
    assert!(
        text.contains("Restartt"),
        "a misspelt directive passed silently:\n{text}"
    );
}

/// (success, output) of `promtool args` run in `dir`; promtool missing is
/// a loud failure (scripts/setup.sh installs Debian's prometheus package).
fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool cannot run ({e}): run scripts/setup.sh (cargo xtask test does)")
        });
    (out.status.success(), all_output(&out))
}

#[test]
fn the_alert_rules_check_and_pass_their_unit_tests_with_promtool() {
    let dir = repo().join("deploy/prometheus");
    let (ok, out) = promtool(&dir, &["check", "rules", "meridian-alerts.yml"]);
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 13 rules found"), "{out}");
    let (ok, out) = promtool(&dir, &["test", "rules", "meridian-alerts.test.yml"]);
    assert!(ok, "{out}");
    // A rule whose threshold drifted from its tests fails them.
    let tmp = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(dir.join("meridian-alerts.yml")).unwrap();
    let drifted = rules.replace(
        "meridian_group_follower_lag_entries > 1000",
        "meridian_group_follower_lag_entries > 10000",
    );
    assert_ne!(drifted, rules);
    std::fs::write(tmp.path().join("meridian-alerts.yml"), drifted).unwrap();
    std::fs::copy(
        dir.join("meridian-alerts.test.yml"),
        tmp.path().join("meridian-alerts.test.yml"),
    )
    .unwrap();
    let (ok, out) = promtool(tmp.path(), &["test", "rules", "meridian-alerts.test.yml"]);
    assert!(!ok, "a drifted threshold passed the unit tests:\n{out}");
    // A rule that is not PromQL is refused.
    std::fs::write(
        tmp.path().join("bad.yml"),
        rules.replace(
            "increase(meridian_group_term[15m])",
            "increase(meridian_group_term[15m)",
        ),
    )
    .unwrap();
    let (ok, out) = promtool(tmp.path(), &["check", "rules", "bad.yml"]);
    assert!(!ok, "{out}");
}

/// Every expression of the dashboard's panels, its variables filled in.
fn dashboard_exprs(dash: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel without targets: {p}"));
        assert!(!targets.is_empty(), "{p}");
        for t in targets {
            out.push(t["expr"].as_str().unwrap().replace("$instance", ".*"));
        }
    }
    out
}

/// Each expression as a recording rule, for promtool's PromQL parser.
fn as_rules(exprs: &[String]) -> String {
    let mut s = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        s += &format!(
            "      - record: dashboard:panel_{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        );
    }
    s
}

#[test]
fn the_dashboard_queries_parse_as_promql() {
    let text =
        std::fs::read_to_string(repo().join("deploy/grafana/meridian-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "meridian-overview");
    let exprs = dashboard_exprs(&dash);
    assert!(exprs.len() >= 14, "{exprs:?}");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("panels.yml"), as_rules(&exprs)).unwrap();
    let (ok, out) = promtool(tmp.path(), &["check", "rules", "panels.yml"]);
    assert!(ok, "{out}");
    // A broken query is caught.
    let mut broken = exprs.clone();
    broken[0] = broken[0].replace(')', "");
    std::fs::write(tmp.path().join("broken.yml"), as_rules(&broken)).unwrap();
    let (ok, out) = promtool(tmp.path(), &["check", "rules", "broken.yml"]);
    assert!(!ok, "{out}");
}
