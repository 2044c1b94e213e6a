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
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
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
