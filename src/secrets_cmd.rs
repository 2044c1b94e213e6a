//! `meridian secrets ...`: the keyring file of key-encryption keys
//! (docs/secrets.md). These commands work on a file, offline: key material
//! never crosses the network, so a new KEK version is added to one file
//! and that file copied to every region.

use crate::output::{emit, Output};
use anyhow::Result;
use clap::Subcommand;
use meridian_node::secrets::keyring::{FileKeyring, KeyWrapper};
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum SecretsCmd {
    /// The keyring file of key-encryption keys.
    Keyring {
        #[command(subcommand)]
        cmd: KeyringCmd,
    },
}

#[derive(Subcommand)]
pub enum KeyringCmd {
    /// Write a new keyring with one random key (mode 0600). Refuses to
    /// overwrite: an existing keyring's keys decrypt stored secrets.
    Create { file: PathBuf },
    /// Add a random key version; with --activate new secrets use it once
    /// regions load the file. Copy the file to every region first.
    Add {
        file: PathBuf,
        #[arg(long)]
        activate: bool,
    },
    /// The versions a keyring holds and their public fingerprints (never
    /// the keys).
    Show { file: PathBuf },
    /// Remove versions below N (after every secret was re-wrapped with a
    /// newer one).
    Prune {
        file: PathBuf,
        #[arg(long)]
        below: u32,
    },
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn run(cmd: SecretsCmd, out: Output) -> Result<()> {
    let SecretsCmd::Keyring { cmd } = cmd;
    match cmd {
        KeyringCmd::Create { file } => {
            FileKeyring::create(&file)?;
            let v = json!({"file": file.display().to_string(), "active": 1, "versions": [1]});
            emit(out, &v, |_| {
                format!(
                    "wrote {} (mode 0600) with key version 1. Copy it to every region, \
                     set [secrets] keyring_file to it, and back it up: without it no \
                     secret can be read.\n",
                    file.display()
                )
            })
        }
        KeyringCmd::Add { file, activate } => {
            let v = FileKeyring::add_version(&file, activate)?;
            let doc = json!({"file": file.display().to_string(), "added": v, "active": activate});
            emit(out, &doc, |_| {
                format!(
                    "added key version {v} to {}{}. Copy the file to every region.\n",
                    file.display(),
                    if activate {
                        "; it is the active version"
                    } else {
                        ""
                    }
                )
            })
        }
        KeyringCmd::Show { file } => {
            let k = FileKeyring::load(&file)?;
            let versions: Vec<_> = k
                .versions()
                .into_iter()
                .map(|v| json!({"version": v, "fingerprint": hex(&k.check(v).unwrap_or_default())}))
                .collect();
            let doc = json!({"file": file.display().to_string(), "active": k.active(), "versions": versions});
            emit(out, &doc, |d| {
                let mut s = format!("{}: active version {}\n", file.display(), d["active"]);
                for v in d["versions"].as_array().into_iter().flatten() {
                    s.push_str(&format!(
                        "  version {}  fingerprint {}\n",
                        v["version"],
                        v["fingerprint"].as_str().unwrap_or("")
                    ));
                }
                s
            })
        }
        KeyringCmd::Prune { file, below } => {
            let n = FileKeyring::remove_below(&file, below)?;
            let doc = json!({"file": file.display().to_string(), "removed": n});
            emit(out, &doc, |_| {
                format!(
                    "removed {n} version(s) below {below} from {}\n",
                    file.display()
                )
            })
        }
    }
}
