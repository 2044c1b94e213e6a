//! `meridian config ...`: the configuration API from the command line
//! (projects and environments, subtrees, patches, history, diff, rollback,
//! schemas, templates, watch), over gRPC, printed as text, JSON, YAML or a
//! table.

use crate::config_out::{diff_json, diff_text, emit_write, pretty, write_json, written};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use meridian_proto::client::AuthChannel;
use meridian_proto::v1::config_client::ConfigClient;
use meridian_proto::v1::*;
use serde_json::{json, Value};

use crate::output::{check_stream, emit, emit_event, emit_list, status_err, Output};

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Create an environment: `config create shop/prod --home us`.
    Create {
        /// project/environment
        ns: String,
        #[arg(long)]
        home: String,
        /// quorum or async
        #[arg(long, default_value = "quorum")]
        mode: String,
        #[arg(long, default_value_t = 0)]
        rpo_budget_ms: u64,
        /// Versions kept per key (0: the cluster default).
        #[arg(long, default_value_t = 0)]
        history_versions: u32,
        /// Drop versions older than this at a key's next change (0: never).
        #[arg(long, default_value_t = 0)]
        history_age_ms: u64,
    },
    /// Move an environment's home region online: `config move shop/prod --to eu`.
    /// Returns once the move is complete.
    Move {
        /// project/environment
        ns: String,
        #[arg(long)]
        to: String,
    },
    /// Describe an environment for the people who own it: `config describe
    /// shop/prod --description "..." --owners team-shop --label tier=1`.
    /// Replicated metadata: any region takes it, even while cut off.
    Describe {
        /// project/environment
        ns: String,
        #[arg(long)]
        description: Option<String>,
        /// The owners (replacing the old list), comma-separated; "" for none.
        #[arg(long, value_delimiter = ',')]
        owners: Option<Vec<String>>,
        /// key=value (Kubernetes label syntax); repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// A label key to remove; repeatable.
        #[arg(long = "unlabel")]
        unlabels: Vec<String>,
    },
    /// List environments (of one project): `config envs shop`.
    Envs {
        #[arg(default_value = "")]
        project: String,
    },
    /// Read a key or a whole subtree (effective and rendered unless --raw).
    Get {
        ns: String,
        #[arg(default_value = "")]
        path: String,
        #[arg(long)]
        raw: bool,
        #[arg(long, default_value_t = 0)]
        revision: u64,
        #[arg(long, default_value_t = 0)]
        time_ms: u64,
        /// JSON returned when nothing is stored.
        #[arg(long)]
        default: Option<String>,
        /// Read this region's state (no linearizable probe).
        #[arg(long, conflicts_with = "max_staleness_ms")]
        stale: bool,
        /// Bounded staleness: this region's state if it is provably at most
        /// this far behind, else a linearizable read.
        #[arg(long)]
        max_staleness_ms: Option<u64>,
        /// Show secrets in plaintext (needs the reveal permission; audited).
        #[arg(long)]
        reveal: bool,
    },
    /// Read several keys at once.
    Bulk {
        ns: String,
        keys: Vec<String>,
        #[arg(long)]
        raw: bool,
    },
    /// List leaves with filters.
    Ls {
        ns: String,
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value = "")]
        glob: String,
        #[arg(long, default_value = "")]
        search: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long, default_value = "")]
        page_token: String,
        #[arg(long)]
        raw: bool,
    },
    /// Set a key to a JSON value: `config set shop/prod a.b 42`. A bare
    /// word is taken as a string; text that looks like JSON (starts with
    /// `{`, `[`, `"`, a digit or `-`) must be valid JSON. `--string` stores
    /// the text as it is; `-` reads the value from stdin, `@FILE` from a file.
    Set {
        ns: String,
        key: String,
        value: String,
        /// Store VALUE as a JSON string, whatever it looks like.
        #[arg(long)]
        string: bool,
        #[arg(long)]
        if_version: Option<u64>,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        who: Who,
    },
    /// Apply an RFC 7386 merge patch to a subtree.
    Merge {
        ns: String,
        path: String,
        patch: String,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        who: Who,
    },
    /// Apply an RFC 6902 JSON patch to a subtree.
    Patch {
        ns: String,
        path: String,
        patch: String,
        #[command(flatten)]
        who: Who,
    },
    /// Delete a key (or a subtree with --recursive).
    Delete {
        ns: String,
        key: String,
        #[arg(long)]
        recursive: bool,
        #[command(flatten)]
        who: Who,
    },
    /// Check a change without writing it (schemas, templates, limits).
    Validate {
        ns: String,
        key: String,
        value: String,
        /// Take VALUE as a JSON string, whatever it looks like.
        #[arg(long)]
        string: bool,
    },
    /// Every retained version of a key.
    History {
        ns: String,
        key: String,
        /// Show a secret's versions in plaintext (needs reveal; audited).
        #[arg(long)]
        reveal: bool,
    },
    /// Structural diff: of a key's versions, the environment's revisions, or
    /// against another environment of the project.
    /// `config diff NS KEY --from-version 1 --to-version 2`,
    /// `config diff NS [PATH] --from-revision 3 [--to-revision 9]`,
    /// `config diff NS [PATH] --env base`.
    Diff {
        ns: String,
        /// The key (with --from-version) or the subtree ("": everything).
        #[arg(default_value = "")]
        path: String,
        #[arg(long)]
        from_version: Option<u64>,
        #[arg(long)]
        to_version: Option<u64>,
        #[arg(long)]
        from_revision: Option<u64>,
        #[arg(long)]
        to_revision: Option<u64>,
        /// Compare with this environment (from it, to NS).
        #[arg(long)]
        env: Option<String>,
        #[arg(long)]
        raw: bool,
    },
    /// Roll a key (or the whole environment) back to a revision.
    /// `config rollback NS [KEY] --revision R` (no KEY: the whole environment).
    Rollback {
        ns: String,
        #[arg(default_value = "")]
        key: String,
        #[arg(long)]
        revision: u64,
        /// Go ahead when the revision predates the key (or the environment
        /// held nothing then), which deletes it.
        #[arg(long)]
        allow_delete: bool,
        #[command(flatten)]
        who: Who,
    },
    /// Attach a JSON Schema (draft 2020-12) to a prefix ("" : the root).
    SchemaSet {
        ns: String,
        #[arg(long, default_value = "")]
        prefix: String,
        schema: String,
    },
    /// Detach the schema of a prefix.
    SchemaDelete {
        ns: String,
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Show or set inheritance and variables.
    Template {
        ns: String,
        /// Parent environment (same project) or project/environment.
        #[arg(long)]
        inherits: Option<String>,
        #[arg(long)]
        no_inherits: bool,
        /// A JSON object of variables.
        #[arg(long)]
        vars: Option<String>,
    },
    /// Print effective values under a path as they change.
    Watch {
        ns: String,
        #[arg(default_value = "")]
        path: String,
        #[arg(long)]
        raw: bool,
        #[arg(long, default_value = "")]
        resume_token: String,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(clap::Args)]
pub struct SecretArgs {
    /// Store the value as a secret: encrypted at rest, redacted on reads
    /// without --reveal (docs/secrets.md). Pass the value as `-` (stdin) to
    /// keep it out of the process list and shell history.
    #[arg(long)]
    secret: bool,
    /// When the secret stops revealing: an RFC 3339 time or ms since the epoch.
    #[arg(long, requires = "secret", conflicts_with = "expires_in")]
    expires_at: Option<String>,
    /// When the secret stops revealing, from now: 30d, 12h, 90m, 45s.
    #[arg(long, requires = "secret")]
    expires_in: Option<String>,
    /// How often the secret should be rotated: 90d, 12h, ...
    #[arg(long, requires = "secret")]
    rotate_every: Option<String>,
}

impl SecretArgs {
    fn spec(&self) -> Result<Option<SecretSpec>> {
        if !self.secret {
            return Ok(None);
        }
        let ttl = |flag: &str, s: &str| {
            meridian_node::auth::tokens::parse_ttl_ms(s)
                .map_err(|e| anyhow::anyhow!("--{flag} {s:?}: {e}"))
        };
        let expires_at_ms = match (&self.expires_at, &self.expires_in) {
            (Some(t), _) => crate::audit_cmd::time_ms("expires-at", t)?,
            (None, Some(d)) => meridian_node::auth::wall_ms() + ttl("expires-in", d)?,
            (None, None) => 0,
        };
        let rotate_every_ms = match &self.rotate_every {
            Some(d) => ttl("rotate-every", d)?,
            None => 0,
        };
        Ok(Some(SecretSpec {
            expires_at_ms,
            rotate_every_ms,
        }))
    }
}

#[derive(clap::Args, Debug)]
pub struct Who {
    /// Who makes the change (default: the OS user running the command).
    #[arg(long, default_value = "")]
    pub(crate) author: String,
    #[arg(long, short = 'm', default_value = "")]
    pub(crate) message: String,
    #[arg(long, default_value = "")]
    idempotency_key: String,
}

/// `--author`, or until authentication exists the OS user running the CLI:
/// `$USER`, `$LOGNAME`, else the name /etc/passwd gives this process's uid.
pub(crate) fn author_or_os_user(given: &str) -> String {
    if !given.is_empty() {
        return given.to_string();
    }
    for var in ["USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(var) {
            if !u.is_empty() {
                return u;
            }
        }
    }
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_string))
        });
    let Some(uid) = uid else {
        return String::new();
    };
    let name = std::fs::read_to_string("/etc/passwd").ok().and_then(|p| {
        p.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid).then(|| f[0].to_string())
        })
    });
    name.unwrap_or_else(|| format!("uid {uid}"))
}

pub(crate) fn ns_ref(s: &str) -> Result<NamespaceRef> {
    let (p, e) = s
        .split_once('/')
        .with_context(|| format!("{s:?}: name an environment as project/environment"))?;
    Ok(NamespaceRef {
        project: p.to_string(),
        environment: e.to_string(),
    })
}

/// A JSON value argument: valid JSON as it is; a bare word (`on`,
/// `pg://db/x`) as a string; text that looks like JSON but is not valid
/// (`[1,2`, `{"a":`, `12x`) refused rather than silently stored as a string.
/// `as_string`: the text as a JSON string, whatever it looks like.
fn json_arg(s: &str, as_string: bool) -> Result<String> {
    if as_string {
        return Ok(Value::String(s.to_string()).to_string());
    }
    match serde_json::from_str::<Value>(s) {
        Ok(_) => Ok(s.to_string()),
        Err(e) => {
            let t = s.trim_start();
            let looks_json = t.starts_with(['{', '[', '"'])
                || t.starts_with(|c: char| c.is_ascii_digit() || c == '-');
            if looks_json {
                bail!("{s:?} looks like JSON but is not valid JSON ({e}); pass --string to store it as text")
            }
            Ok(Value::String(s.to_string()).to_string())
        }
    }
}

/// A value argument's text: "-" reads stdin, "@FILE" a file (one trailing
/// newline dropped).
fn value_text(v: &str) -> Result<String> {
    let text = if v == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading the value from stdin")?;
        s
    } else if let Some(path) = v.strip_prefix('@') {
        std::fs::read_to_string(path).with_context(|| format!("reading the value from {path}"))?
    } else {
        return Ok(v.to_string());
    };
    Ok(text.strip_suffix('\n').unwrap_or(&text).to_string())
}

pub(crate) fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or(Value::Null)
}

fn entry_json(e: &ConfigEntry) -> Value {
    json!({
        "key": e.key, "value": parse(&e.value_json), "version": e.version,
        "revision": e.revision, "author": e.author, "message": e.message,
        "time_ms": e.time_ms, "time": crate::output::iso8601_ms(e.time_ms),
        "deleted": e.deleted, "inherited_from": e.inherited_from,
    })
}

async fn write(
    c: &mut ConfigClient<AuthChannel>,
    ns: &str,
    ops: Vec<config_op::Op>,
    who: &Who,
    dry_run: bool,
) -> Result<Value> {
    let req = ConfigWriteRequest {
        ns: Some(ns_ref(ns)?),
        ops: ops.into_iter().map(|o| ConfigOp { op: Some(o) }).collect(),
        author: author_or_os_user(&who.author),
        message: who.message.clone(),
        idempotency_key: who.idempotency_key.clone(),
    };
    let r = if dry_run {
        c.validate(req).await
    } else {
        c.write(req).await
    };
    Ok(write_json(&r.map_err(status_err)?.into_inner()))
}

/// Write one operation and print what it changed.
async fn write_and_show(
    c: &mut ConfigClient<AuthChannel>,
    ns: &str,
    op: config_op::Op,
    who: &Who,
    out: Output,
) -> Result<()> {
    let v = write(c, ns, vec![op], who, false).await?;
    emit(out, &v, written)
}

pub async fn run(cmd: ConfigCmd, target: &crate::auth_cmd::Target, out: Output) -> Result<()> {
    let mut c = ConfigClient::new(target.channel().await?);
    let none = Who {
        author: String::new(),
        message: String::new(),
        idempotency_key: String::new(),
    };
    match cmd {
        ConfigCmd::Create {
            ns,
            home,
            mode,
            rpo_budget_ms,
            history_versions,
            history_age_ms,
        } => {
            let r = ns_ref(&ns)?;
            let i = c
                .create_namespace(CreateNamespaceRequest {
                    project: r.project,
                    environment: r.environment,
                    home_region: home,
                    mode,
                    rpo_budget_ms,
                    history_versions_max: history_versions,
                    history_age_ms_max: history_age_ms,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let v = json!({"name": i.name, "home_region": i.home_region, "mode": i.mode});
            emit(out, &v, |v| {
                format!(
                    "created {} (home {}, {})\n",
                    v["name"], v["home_region"], v["mode"]
                )
            })
        }
        ConfigCmd::Move { ns, to } => {
            let r = ns_ref(&ns)?;
            let i = c
                .move_namespace(MoveNamespaceRequest {
                    project: r.project,
                    environment: r.environment,
                    home_region: to,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let v = json!({"name": i.name, "home_region": i.home_region, "mode": i.mode});
            emit(out, &v, |v| {
                format!(
                    "moved {} (home {})\n",
                    v["name"].as_str().unwrap_or(""),
                    v["home_region"].as_str().unwrap_or("")
                )
            })
        }
        ConfigCmd::Describe {
            ns,
            description,
            owners,
            labels,
            unlabels,
        } => {
            let mut set_labels = std::collections::HashMap::new();
            for l in labels {
                let Some((k, v)) = l.split_once('=') else {
                    bail!("--label {l:?}: write key=value");
                };
                set_labels.insert(k.to_string(), v.to_string());
            }
            let i = c
                .describe_namespace(DescribeNamespaceRequest {
                    ns: Some(ns_ref(&ns)?),
                    description,
                    set_owners: owners.is_some(),
                    owners: owners
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|o| !o.is_empty())
                        .collect(),
                    set_labels,
                    remove_labels: unlabels,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let labels: std::collections::BTreeMap<_, _> = i.labels.into_iter().collect();
            let v = json!({"name": i.name, "description": i.description, "owners": i.owners, "labels": labels});
            emit(out, &v, |v| {
                let labels: Vec<String> = v["labels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, l)| format!("{k}={}", l.as_str().unwrap_or("")))
                            .collect()
                    })
                    .unwrap_or_default();
                let owners: Vec<&str> = v["owners"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                format!(
                    "{}: {}\n  owners: {}\n  labels: {}\n",
                    v["name"].as_str().unwrap_or(""),
                    v["description"].as_str().unwrap_or(""),
                    owners.join(", "),
                    labels.join(" ")
                )
            })
        }
        ConfigCmd::Envs { project } => {
            let l = c
                .list_namespaces(ListNamespacesRequest { project })
                .await
                .map_err(status_err)?
                .into_inner();
            let v: Vec<Value> = l
                .namespaces
                .iter()
                .map(|n| {
                    let labels: std::collections::BTreeMap<_, _> = n.labels.iter().collect();
                    json!({"name": n.name, "home_region": n.home_region, "mode": n.mode,
                           "history_versions_max": n.history_versions_max,
                           "description": n.description, "owners": n.owners, "labels": labels})
                })
                .collect();
            let v = Value::Array(v);
            emit_list(out, &v, "", |v| {
                v.as_array()
                    .map(|a| {
                        a.iter()
                            .map(|n| {
                                let d = n["description"].as_str().unwrap_or("");
                                format!(
                                    "{}  home={} mode={}{}\n",
                                    n["name"].as_str().unwrap_or(""),
                                    n["home_region"].as_str().unwrap_or(""),
                                    n["mode"].as_str().unwrap_or(""),
                                    if d.is_empty() {
                                        String::new()
                                    } else {
                                        format!("  {d}")
                                    }
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            })
        }
        ConfigCmd::Get {
            ns,
            path,
            raw,
            revision,
            time_ms,
            default,
            stale,
            max_staleness_ms,
            reveal,
        } => {
            let r = c
                .get_config(GetConfigRequest {
                    ns: Some(ns_ref(&ns)?),
                    path,
                    read: Some(ConfigReadOptions {
                        raw,
                        revision,
                        time_ms,
                        stale,
                        max_staleness_ms: max_staleness_ms.unwrap_or(0),
                        reveal,
                    }),
                    default_json: default.map(|d| json_arg(&d, false)).transpose()?,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let v = parse(&r.value_json);
            emit(out, &v, pretty)
        }
        ConfigCmd::Bulk { ns, keys, raw } => {
            let r = c
                .bulk_get(BulkGetRequest {
                    ns: Some(ns_ref(&ns)?),
                    keys,
                    defaults_json: Default::default(),
                    read: Some(ConfigReadOptions {
                        raw,
                        ..Default::default()
                    }),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let values: serde_json::Map<String, Value> = r
                .values_json
                .iter()
                .map(|(k, v)| (k.clone(), parse(v)))
                .collect();
            let v = json!({"values": values, "missing": r.missing});
            emit(out, &v, pretty)
        }
        ConfigCmd::Ls {
            ns,
            prefix,
            glob,
            search,
            limit,
            page_token,
            raw,
        } => {
            let r = c
                .list_config(ListConfigRequest {
                    ns: Some(ns_ref(&ns)?),
                    prefix,
                    glob,
                    search,
                    limit,
                    page_token,
                    read: Some(ConfigReadOptions {
                        raw,
                        ..Default::default()
                    }),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let v = json!({
                "entries": r.entries.iter().map(entry_json).collect::<Vec<_>>(),
                "next_page_token": r.next_page_token,
            });
            emit_list(out, &v, "entries", |v| {
                let mut s = String::new();
                for e in v["entries"].as_array().into_iter().flatten() {
                    s.push_str(&format!(
                        "{} = {}\n",
                        e["key"].as_str().unwrap_or(""),
                        e["value"]
                    ));
                }
                if let Some(t) = v["next_page_token"].as_str().filter(|t| !t.is_empty()) {
                    s.push_str(&format!("(more: --page-token {t})\n"));
                }
                s
            })
        }
        ConfigCmd::Set {
            ns,
            key,
            value,
            string,
            if_version,
            secret,
            who,
        } => {
            let op = config_op::Op::Put(PutOp {
                key,
                value_json: json_arg(&value_text(&value)?, string)?,
                if_version,
                secret: secret.spec()?,
            });
            write_and_show(&mut c, &ns, op, &who, out).await
        }
        ConfigCmd::Merge {
            ns,
            path,
            patch,
            secret,
            who,
        } => {
            let op = config_op::Op::Merge(MergeOp {
                path,
                patch_json: patch,
                if_version: None,
                secret: secret.spec()?,
            });
            write_and_show(&mut c, &ns, op, &who, out).await
        }
        ConfigCmd::Patch {
            ns,
            path,
            patch,
            who,
        } => {
            let op = config_op::Op::Patch(JsonPatchOp {
                path,
                patch_json: patch,
            });
            write_and_show(&mut c, &ns, op, &who, out).await
        }
        ConfigCmd::Delete {
            ns,
            key,
            recursive,
            who,
        } => {
            let op = config_op::Op::Delete(DeleteOp {
                key,
                recursive,
                if_version: None,
            });
            write_and_show(&mut c, &ns, op, &who, out).await
        }
        ConfigCmd::Validate {
            ns,
            key,
            value,
            string,
        } => {
            let op = config_op::Op::Put(PutOp {
                key,
                value_json: json_arg(&value_text(&value)?, string)?,
                if_version: None,
                secret: None,
            });
            let v = write(&mut c, &ns, vec![op], &none, true).await?;
            emit(out, &v, |v| {
                format!(
                    "valid; the change would be:\n{}",
                    diff_text(v["diff"].as_array().map(Vec::as_slice).unwrap_or(&[]))
                )
            })
        }
        ConfigCmd::History { ns, key, reveal } => {
            let r = c
                .config_history(ConfigHistoryRequest {
                    ns: Some(ns_ref(&ns)?),
                    key,
                    reveal,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let v = json!({"versions": r.versions.iter().map(entry_json).collect::<Vec<_>>()});
            emit_list(out, &v, "versions", |v| {
                let mut s = String::new();
                for e in v["versions"].as_array().into_iter().flatten() {
                    let author = e["author"]
                        .as_str()
                        .filter(|a| !a.is_empty())
                        .unwrap_or("(unknown)");
                    let message = match e["message"].as_str() {
                        Some(m) if !m.is_empty() => format!(" \"{m}\""),
                        _ => String::new(),
                    };
                    s.push_str(&format!(
                        "v{}  revision {}  {}  {author}{message}: {}\n",
                        e["version"],
                        e["revision"],
                        e["time"].as_str().unwrap_or(""),
                        if e["deleted"] == json!(true) {
                            "<deleted>".to_string()
                        } else {
                            e["value"].to_string()
                        }
                    ));
                }
                s
            })
        }
        ConfigCmd::Diff {
            ns,
            from_version,
            to_version,
            from_revision,
            to_revision,
            env,
            path,
            raw,
        } => {
            let what = match (from_version, env, from_revision) {
                (Some(from_version), None, None) => diff_request::What::Versions(VersionsDiff {
                    key: path,
                    from_version,
                    to_version: to_version.context("--from-version needs --to-version")?,
                }),
                (None, Some(other), None) => diff_request::What::Environments(EnvironmentsDiff {
                    other_environment: other,
                    path,
                    raw,
                }),
                (None, None, Some(from)) => diff_request::What::Revisions(RevisionsDiff {
                    path,
                    from_revision: from,
                    to_revision: to_revision.unwrap_or(0),
                }),
                _ => bail!("give one of: --from-version/--to-version (PATH is the key), --env, or --from-revision [--to-revision]"),
            };
            let r = c
                .diff(DiffRequest {
                    ns: Some(ns_ref(&ns)?),
                    what: Some(what),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let v = json!({"changes": r.changes.iter().map(diff_json).collect::<Vec<_>>()});
            emit(out, &v, |v| {
                diff_text(v["changes"].as_array().map(Vec::as_slice).unwrap_or(&[]))
            })
        }
        ConfigCmd::Rollback {
            ns,
            revision,
            key,
            allow_delete,
            who,
        } => {
            let r = c
                .rollback(RollbackRequest {
                    ns: Some(ns_ref(&ns)?),
                    key,
                    revision,
                    author: author_or_os_user(&who.author),
                    message: who.message,
                    allow_delete,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            emit_write(out, &r)
        }
        ConfigCmd::SchemaSet { ns, prefix, schema } => {
            let op = config_op::Op::SetSchema(SetSchemaOp {
                prefix,
                schema_json: schema,
            });
            write_and_show(&mut c, &ns, op, &none, out).await
        }
        ConfigCmd::SchemaDelete { ns, prefix } => {
            let op = config_op::Op::DeleteSchema(DeleteSchemaOp { prefix });
            write_and_show(&mut c, &ns, op, &none, out).await
        }
        ConfigCmd::Template {
            ns,
            inherits,
            no_inherits,
            vars,
        } => {
            if inherits.is_none() && !no_inherits && vars.is_none() {
                let t = c
                    .get_template(ns_ref(&ns)?)
                    .await
                    .map_err(status_err)?
                    .into_inner();
                let v = json!({"inherits": t.inherits, "vars": parse(&t.vars_json)});
                return emit(out, &v, pretty);
            }
            let op = config_op::Op::SetTemplate(SetTemplateOp {
                inherits,
                clear_inherits: no_inherits,
                vars_json: vars,
            });
            write_and_show(&mut c, &ns, op, &none, out).await
        }
        ConfigCmd::Watch {
            ns,
            path,
            raw,
            resume_token,
            count,
        } => {
            check_stream(out)?;
            let mut s = c
                .watch_config(WatchConfigRequest {
                    ns: Some(ns_ref(&ns)?),
                    path,
                    raw,
                    resume_token,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let mut seen = 0;
            while let Some(ev) = s.message().await.map_err(status_err)? {
                let v = json!({
                    "snapshot": ev.snapshot, "token": ev.token,
                    "changes": ev.changes.iter().map(entry_json).collect::<Vec<_>>(),
                });
                emit_event(out, &v, |v| {
                    let mut s = String::new();
                    for e in v["changes"].as_array().into_iter().flatten() {
                        if e["deleted"] == json!(true) {
                            s.push_str(&format!("- {}\n", e["key"].as_str().unwrap_or("")));
                        } else {
                            s.push_str(&format!(
                                "{} = {}\n",
                                e["key"].as_str().unwrap_or(""),
                                e["value"]
                            ));
                        }
                    }
                    s
                })?;
                seen += 1;
                if count.is_some_and(|n| seen >= n) {
                    break;
                }
            }
            Ok(())
        }
    }
}
