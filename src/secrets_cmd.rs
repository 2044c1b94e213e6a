//! `meridian secrets ...`: the keyring file of key-encryption keys
//! (docs/secrets.md). These commands work on a file, offline: key material
//! never crosses the network, so a new KEK version is added to one file
//! and that file copied to every region.

use crate::auth_cmd::Target;
use crate::output::{emit, status_err, Output};
use anyhow::{bail, Result};
use clap::Subcommand;
use meridian_node::secrets::keyring::{FileKeyring, KeyWrapper};
use meridian_proto::v1::config_client::ConfigClient;
use meridian_proto::v1::{RewrapSecretsRequest, SecretsStatusRequest, SecretsStatusResponse};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum SecretsCmd {
    /// The keyring file of key-encryption keys.
    Keyring {
        #[command(subcommand)]
        cmd: KeyringCmd,
    },
    /// An environment's secrets: each one's version, age, expiry and
    /// rotation policy, never its value.
    List {
        ns: String,
        /// Only those due for rotation or expired.
        #[arg(long)]
        due: bool,
    },
    /// Each region's keyring (versions and fingerprints) and its stored
    /// secret versions by KEK version (every --endpoints region).
    Status {
        /// Have each region read its keyring file again first.
        #[arg(long)]
        reload: bool,
    },
    /// Move every stored secret to the active KEK, online. First add a
    /// version to the keyring (`keyring add FILE --activate`) and copy the
    /// file to every region; this checks that every region (--endpoints:
    /// give them all) holds it, re-wraps every secret version, and waits
    /// until every region holds them all under it. Older versions can then
    /// be pruned from the keyring.
    /// The paths an environment marks secret (every key under one is stored
    /// as a secret, "" : every key), with --add / --remove to change them
    /// (needs admin). Keys already secret stay so when a mark comes off.
    Paths {
        ns: String,
        #[arg(long)]
        add: Vec<String>,
        #[arg(long)]
        remove: Vec<String>,
        #[command(flatten)]
        who: crate::config_cmd::Who,
    },
    /// Destroy versions of a secret for good (Vault KV v2's destroy): their
    /// ciphertext is replaced in every region; reads show them destroyed,
    /// reveals fail with SECRET_DESTROYED, and snapshots taken from then on
    /// hold no trace of them. `config history KEY` lists the versions.
    Destroy {
        ns: String,
        key: String,
        /// Versions to destroy, e.g. 1,2,5.
        #[arg(long, value_delimiter = ',', required = true)]
        versions: Vec<u64>,
    },
    /// Undelete a deleted secret: a version (default: the last before the
    /// deletion) becomes its value again, as a new version.
    Undelete {
        ns: String,
        key: String,
        #[arg(long)]
        version: Option<u64>,
        #[command(flatten)]
        who: crate::config_cmd::Who,
    },
    RotateKek {
        /// How long to wait for every region to apply the re-wrap.
        #[arg(long, default_value_t = 60)]
        wait_s: u64,
    },
}

#[derive(Subcommand)]
pub enum KeyringCmd {
    /// Write a new keyring with one random key (mode 0600). Refuses to
    /// overwrite: an existing keyring's keys decrypt stored secrets.
    Create { file: PathBuf },
    /// Add a random key version, not active yet. Copy the file to every
    /// region, check they all hold it (`secrets status --reload`), then
    /// `activate` it.
    Add { file: PathBuf },
    /// Make a version the one new secrets are sealed with (every region
    /// must hold it already), then copy the file to every region and run
    /// `secrets rotate-kek`.
    Activate { file: PathBuf, version: u32 },
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

/// Each region's status, asked of every endpoint.
async fn statuses(target: &Target, reload: bool) -> Result<Vec<(String, SecretsStatusResponse)>> {
    let mut out = Vec::new();
    for e in &target.endpoints {
        let ch = target.channel_to(e).await?;
        let s = ConfigClient::new(ch)
            .secrets_status(SecretsStatusRequest { reload })
            .await
            .map_err(status_err)?
            .into_inner();
        out.push((e.clone(), s));
    }
    Ok(out)
}

fn status_json(endpoint: &str, s: &SecretsStatusResponse) -> Value {
    json!({
        "endpoint": endpoint,
        "keyring_file": s.keyring_file,
        "keyring_error": s.keyring_error,
        "active_kek": s.active_kek,
        "versions": s.versions.iter().map(|v| json!({"version": v.version, "fingerprint": v.fingerprint})).collect::<Vec<_>>(),
        "secret_versions": s.secret_versions,
        "by_kek": s.by_kek.iter().map(|(k, n)| (k.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
    })
}

fn status_text(v: &Value) -> String {
    let mut s = String::new();
    for r in v["regions"].as_array().into_iter().flatten() {
        let err = r["keyring_error"].as_str().unwrap_or("");
        if !err.is_empty() {
            s.push_str(&format!(
                "{}: NO KEYRING: {err}\n",
                r["endpoint"].as_str().unwrap_or("")
            ));
            continue;
        }
        let versions: Vec<String> = r["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| {
                format!(
                    "v{} {}",
                    x["version"],
                    x["fingerprint"].as_str().unwrap_or("")
                )
            })
            .collect();
        s.push_str(&format!(
            "{}: active KEK v{} (holds {}); {} secret version(s), by KEK: {}\n",
            r["endpoint"].as_str().unwrap_or(""),
            r["active_kek"],
            versions.join(", "),
            r["secret_versions"],
            r["by_kek"]
        ));
    }
    s
}

/// `secrets rotate-kek`: check every region holds the same active KEK,
/// re-wrap, wait until every region holds every secret under it.
async fn rotate_kek(target: &Target, wait_s: u64, out: Output) -> Result<()> {
    let before = statuses(target, true).await?;
    let Some((_, first)) = before.first() else {
        bail!("give every region's endpoint with --endpoints");
    };
    let want = first
        .versions
        .iter()
        .find(|v| v.version == first.active_kek)
        .map(|v| (first.active_kek, v.fingerprint.clone()));
    for (e, s) in &before {
        if !s.keyring_error.is_empty() {
            bail!("{e} has no usable keyring: {}", s.keyring_error);
        }
        let theirs = s
            .versions
            .iter()
            .find(|v| v.version == s.active_kek)
            .map(|v| (s.active_kek, v.fingerprint.clone()));
        if theirs != want {
            bail!(
                "{e}'s active KEK is {theirs:?}, not {want:?} as at {}: copy the same keyring \
                 file to every region first (nothing was re-wrapped)",
                target.endpoints[0]
            );
        }
    }
    let active = first.active_kek;
    let mut client = ConfigClient::new(target.channel().await?);
    let deadline = Instant::now() + Duration::from_secs(wait_s);
    let mut rewrapped = 0;
    // Re-wrap, then wait for every region to hold every version under the
    // active KEK. A write sealed under the old KEK by a region just before
    // it loaded the new one can commit after a pass: the next pass moves it.
    let (done, now) = loop {
        rewrapped += client
            .rewrap_secrets(RewrapSecretsRequest {})
            .await
            .map_err(status_err)?
            .into_inner()
            .rewrapped;
        let now = statuses(target, false).await?;
        let done = now
            .iter()
            .all(|(_, s)| s.by_kek.keys().all(|k| *k == active));
        if done || Instant::now() >= deadline {
            break (done, now);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let v = json!({
        "active_kek": active,
        "rewrapped": rewrapped,
        "done": done,
        "regions": now.iter().map(|(e, s)| status_json(e, s)).collect::<Vec<_>>(),
    });
    emit(out, &v, |v| {
        let mut s = format!(
            "re-wrapped {} secret version(s) under KEK v{active}\n{}",
            v["rewrapped"],
            status_text(v)
        );
        if done {
            s.push_str(&format!(
                "every region holds every secret under v{active}: older versions can be \
                 removed (meridian secrets keyring prune FILE --below {active}, then copy it)\n"
            ));
        }
        s
    })?;
    if !done {
        bail!("not every region holds every secret under KEK v{active} after {wait_s} s");
    }
    Ok(())
}

/// A rotation period as it was likely given: whole days as `90d`, else
/// humantime's form.
fn period(ms: u64) -> String {
    const DAY_MS: u64 = 86_400_000;
    if ms.is_multiple_of(DAY_MS) {
        format!("{}d", ms / DAY_MS)
    } else {
        humantime::format_duration(Duration::from_millis(ms)).to_string()
    }
}

async fn list(target: &Target, ns: &str, due_only: bool, out: Output) -> Result<()> {
    let (project, environment) = ns
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("{ns:?}: give an environment as project/environment"))?;
    let r = ConfigClient::new(target.channel().await?)
        .list_secrets(meridian_proto::v1::ListSecretsRequest {
            ns: Some(meridian_proto::v1::NamespaceRef {
                project: project.into(),
                environment: environment.into(),
            }),
            due_only,
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let ms = |t: u64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(t))
            .to_string()
    };
    let rows: Vec<Value> = r
        .secrets
        .iter()
        .map(|s| {
            json!({
                "key": s.key,
                "version": s.version,
                "written": ms(s.time_ms),
                "author": s.author,
                "expires_at": (s.expires_at_ms != 0).then(|| ms(s.expires_at_ms)),
                "rotate_every": (s.rotate_every_ms != 0).then(|| period(s.rotate_every_ms)),
                "due": s.due,
                "expired": s.expired,
                "deleted": s.deleted,
                "destroyed": s.destroyed,
            })
        })
        .collect();
    let v = json!({ "secrets": rows });
    crate::output::emit_list(out, &v, "secrets", |v| {
        let mut s = String::new();
        for r in v["secrets"].as_array().into_iter().flatten() {
            let mut flags = Vec::new();
            for f in ["due", "expired", "deleted", "destroyed"] {
                if r[f] == json!(true) {
                    flags.push(f.to_uppercase());
                }
            }
            s.push_str(&format!(
                "{}  v{}  written {}{}{}{}\n",
                r["key"].as_str().unwrap_or(""),
                r["version"],
                r["written"].as_str().unwrap_or(""),
                r["rotate_every"]
                    .as_str()
                    .map(|d| format!("  rotate every {d}"))
                    .unwrap_or_default(),
                r["expires_at"]
                    .as_str()
                    .map(|t| format!("  expires {t}"))
                    .unwrap_or_default(),
                if flags.is_empty() {
                    String::new()
                } else {
                    format!("  {}", flags.join(" "))
                },
            ));
        }
        if s.is_empty() {
            s.push_str(if due_only {
                "no secret is due\n"
            } else {
                "no secrets\n"
            });
        }
        s
    })
}

/// `secrets paths`: show an environment's secret paths, or change them.
async fn paths(
    target: &Target,
    ns: &str,
    add: Vec<String>,
    remove: Vec<String>,
    who: crate::config_cmd::Who,
    out: Output,
) -> Result<()> {
    use meridian_proto::v1::{config_op, ConfigOp, ConfigWriteRequest, SecretPathsOp};
    let mut client = ConfigClient::new(target.channel().await?);
    if !add.is_empty() || !remove.is_empty() {
        let r = client
            .write(ConfigWriteRequest {
                ns: Some(crate::config_cmd::ns_ref(ns)?),
                ops: vec![ConfigOp {
                    op: Some(config_op::Op::SecretPaths(SecretPathsOp { add, remove })),
                }],
                author: crate::config_cmd::author_or_os_user(&who.author),
                message: who.message,
                idempotency_key: String::new(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        return crate::config_out::emit_write(out, &r);
    }
    let r = client
        .list_secrets(meridian_proto::v1::ListSecretsRequest {
            ns: Some(crate::config_cmd::ns_ref(ns)?),
            due_only: false,
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let v = json!({"paths": r.secret_paths, "inherited_paths": r.inherited_secret_paths});
    emit(out, &v, |v| {
        let mut s = String::new();
        for (field, what) in [("paths", ""), ("inherited_paths", " (inherited)")] {
            for p in v[field].as_array().into_iter().flatten() {
                let p = p.as_str().unwrap_or("");
                let shown = if p.is_empty() { "(every key)" } else { p };
                s.push_str(&format!("{shown}{what}\n"));
            }
        }
        if s.is_empty() {
            s.push_str("no paths are marked secret\n");
        }
        s
    })
}

pub async fn run(cmd: SecretsCmd, target: &Target, out: Output) -> Result<()> {
    let cmd = match cmd {
        SecretsCmd::Keyring { cmd } => cmd,
        SecretsCmd::Status { reload } => {
            let all = statuses(target, reload).await?;
            let v =
                json!({"regions": all.iter().map(|(e, s)| status_json(e, s)).collect::<Vec<_>>()});
            return emit(out, &v, status_text);
        }
        SecretsCmd::RotateKek { wait_s } => return rotate_kek(target, wait_s, out).await,
        SecretsCmd::List { ns, due } => return list(target, &ns, due, out).await,
        SecretsCmd::Paths {
            ns,
            add,
            remove,
            who,
        } => return paths(target, &ns, add, remove, who, out).await,
        SecretsCmd::Destroy { ns, key, versions } => {
            let r = ConfigClient::new(target.channel().await?)
                .destroy_secret_versions(meridian_proto::v1::DestroySecretVersionsRequest {
                    ns: Some(crate::config_cmd::ns_ref(&ns)?),
                    key,
                    versions,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let v = json!({
                "key": r.key,
                "destroyed": r.destroyed,
                "already_destroyed": r.already_destroyed,
            });
            return emit(out, &v, |v| {
                format!(
                    "{}: destroyed versions {}; destroyed before: {}\n",
                    v["key"].as_str().unwrap_or(""),
                    v["destroyed"],
                    v["already_destroyed"]
                )
            });
        }
        SecretsCmd::Undelete {
            ns,
            key,
            version,
            who,
        } => {
            let r = ConfigClient::new(target.channel().await?)
                .undelete_secret(meridian_proto::v1::UndeleteSecretRequest {
                    ns: Some(crate::config_cmd::ns_ref(&ns)?),
                    key,
                    version: version.unwrap_or(0),
                    author: crate::config_cmd::author_or_os_user(&who.author),
                    message: who.message,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            return crate::config_out::emit_write(out, &r);
        }
    };
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
        KeyringCmd::Add { file } => {
            let v = FileKeyring::add_version(&file)?;
            let doc = json!({"file": file.display().to_string(), "added": v});
            emit(out, &doc, |_| {
                format!(
                    "added key version {v} to {} (not active). Copy the file to every region, \
                     check with `meridian secrets status --reload`, then \
                     `meridian secrets keyring activate {} {v}`.\n",
                    file.display(),
                    file.display()
                )
            })
        }
        KeyringCmd::Activate { file, version } => {
            FileKeyring::activate(&file, version)?;
            let doc = json!({"file": file.display().to_string(), "active": version});
            emit(out, &doc, |_| {
                format!(
                    "key version {version} is active in {}. Copy the file to every region, \
                     then run `meridian secrets rotate-kek`.\n",
                    file.display()
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
