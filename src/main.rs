//! The `meridian` binary: runs a region node (`serve`), a local 3-region
//! cluster (`dev`), creates development certificates (`certs`), and is the
//! command-line client (`get`, `put`, `list`, `watch`, `cluster status`, ...)
//! built on the Rust client library in `meridian-proto`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use meridian_node::NodeConfig;
use meridian_proto::client::{Client, ClientOptions, ClientTls};
use meridian_proto::v1::{Consistency, KeyValue, ListRequest};
use serde_json::{json, Value};

mod audit_cmd;
mod auth_cmd;
mod config_cmd;
mod config_out;
mod dev_cmd;
mod drill;
mod flag_cmd;
mod output;
mod secrets_cmd;

use output::{emit, emit_event, emit_list, Failure, Output};

/// mimalloc instead of glibc's malloc: a profile of the read-heavy benchmark
/// (`meridian-bench read`, perf on the server) put glibc's malloc, free and
/// their locks at about 15 % of the node's CPU; gRPC, HTTP/2 and the core
/// allocate small buffers per request.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

#[derive(Parser)]
#[command(
    name = "meridian",
    version,
    about = "Meridian: a geo-replicated configuration store"
)]
struct Cli {
    /// gRPC addresses of the regions (the client picks the nearest healthy one).
    #[arg(long, global = true, env = "MERIDIAN_ENDPOINTS", default_value = DEFAULT_ENDPOINTS, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Namespace to operate on.
    #[arg(
        long,
        short = 'n',
        global = true,
        env = "MERIDIAN_NS",
        default_value = "eu"
    )]
    ns: String,
    /// API token for client commands (default: MERIDIAN_TOKEN, else the file
    /// `meridian auth login` wrote).
    #[arg(long, global = true, env = "MERIDIAN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM certificate of the cluster CA, to verify the regions' TLS
    /// (`meridian dev`: meridian-dev/certs/ca.pem). Needed unless every
    /// endpoint is http:// (a region serving plaintext).
    #[arg(long, global = true, env = "MERIDIAN_CACERT")]
    cacert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; the principal is the name
    /// it carries. With --key.
    #[arg(
        long = "cert",
        global = true,
        env = "MERIDIAN_CERT",
        requires = "client_key"
    )]
    client_cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(
        long = "key",
        global = true,
        env = "MERIDIAN_KEY",
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,
    /// Output format of client commands.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Human)]
    output: Output,
    /// Log format (also settable in the node's config file).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum ReadLevel {
    Linearizable,
    Bounded,
    Stale,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one region node.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start a 3-region cluster on loopback (regions eu, us, ap) until Ctrl-C.
    Dev {
        /// Where the regions keep their data, configs and certificates.
        #[arg(long, default_value = "meridian-dev")]
        dir: PathBuf,
        /// gRPC ports are base+1..=base+3, peer (QUIC) ports base+101..=base+103,
        /// HTTP ports base+201..=base+203.
        #[arg(long, default_value_t = 7000)]
        base_port: u16,
        /// Delete the data of a previous run first.
        #[arg(long)]
        fresh: bool,
    },
    /// Create a development CA and, per region, a peer certificate and a
    /// client-API server certificate; optionally client certificates for
    /// mutual TLS.
    Certs {
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Region names, comma-separated.
        #[arg(long, value_delimiter = ',', required_unless_present = "clients")]
        regions: Vec<String>,
        /// More names (DNS names or IP addresses) for the client-API
        /// certificates, besides <region>.meridian, localhost, 127.0.0.1
        /// and ::1; comma-separated.
        #[arg(long, value_delimiter = ',')]
        api_hosts: Vec<String>,
        /// Also issue a client certificate (client-<name>.pem) whose
        /// common name is <name>, for mutual TLS; comma-separated.
        #[arg(long, value_delimiter = ',')]
        clients: Vec<String>,
        /// Replace existing files, starting a new CA.
        #[arg(long)]
        force: bool,
    },
    /// Read a key.
    Get {
        key: String,
        #[arg(long, value_enum, default_value_t = ReadLevel::Linearizable)]
        consistency: ReadLevel,
        /// For --consistency bounded.
        #[arg(long, default_value_t = 1000)]
        max_staleness_ms: u64,
    },
    /// Write a key ("-" reads the value from stdin, "@FILE" from a file).
    Put { key: String, value: String },
    /// Delete a key (a key that does not exist: "deleted 0", nothing written).
    Delete { key: String },
    /// Compare versions, then put and delete keys, all in one atomic
    /// transaction: `txn --if a=3 --put a=on --put b=off --delete c`.
    Txn {
        /// KEY=VERSION: the key's version must be VERSION (0: absent).
        #[arg(long = "if", value_name = "KEY=VERSION")]
        compares: Vec<String>,
        /// KEY=VALUE ("@FILE": the file's bytes).
        #[arg(long = "put", value_name = "KEY=VALUE")]
        puts: Vec<String>,
        #[arg(long = "delete", value_name = "KEY")]
        deletes: Vec<String>,
    },
    /// Write only if the key's version is EXPECTED (0: absent).
    Cas {
        key: String,
        expected_version: u64,
        value: String,
    },
    /// List live keys under a prefix.
    List {
        #[arg(default_value = "")]
        prefix: String,
        /// Keys per page (at most 10000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue a listing: the page token the previous page printed.
        #[arg(long, default_value = "")]
        page_token: String,
        /// Only keys containing this substring.
        #[arg(long)]
        contains: Option<String>,
        #[arg(long)]
        keys_only: bool,
        /// Follow page tokens to the end.
        #[arg(long)]
        all: bool,
    },
    /// Print changes under a prefix as they happen (resumes across failures).
    Watch {
        #[arg(default_value = "")]
        prefix: String,
        /// Start after this revision (default: from now).
        #[arg(long)]
        from_revision: Option<u64>,
        /// Exit after this many change events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Show the retained versions of a key.
    History { key: String },
    /// Configuration management: environments, subtrees, patches, history,
    /// diff, rollback, schemas, templates, watch.
    Config {
        #[command(subcommand)]
        cmd: config_cmd::ConfigCmd,
    },
    /// Identity and access: log in, who am I, API tokens, roles, grants.
    Auth {
        #[command(subcommand)]
        cmd: auth_cmd::AuthCmd,
    },
    /// The audit log: list, export as JSON lines, verify the hash chains.
    Audit {
        #[command(subcommand)]
        cmd: audit_cmd::AuditCmd,
    },
    /// Secrets: the keyring of key-encryption keys (docs/secrets.md).
    Secrets {
        #[command(subcommand)]
        cmd: secrets_cmd::SecretsCmd,
    },
    /// Feature flags (docs/flags.md): create, target, roll out, evaluate, kill.
    Flag {
        #[command(subcommand)]
        cmd: flag_cmd::FlagCmd,
    },
    /// Segments: rules flags share (`{"$ref": name}`).
    Segment {
        #[command(subcommand)]
        cmd: flag_cmd::SegmentCmd,
    },
    /// Failover drills: planned, region-loss and partition, with measured
    /// RTO and RPO judged against bounds; and their history.
    Drill {
        #[command(subcommand)]
        cmd: drill::DrillCmd,
    },
    /// Cluster administration.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// Print a shell completion script: `meridian completion bash > /etc/bash_completion.d/meridian`.
    Completion { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Regions, groups, leaders, leases and replication lag.
    Status,
    /// Move a group's leadership (and lease) to another region.
    TransferLease {
        /// The group, by its home region's name or its number.
        #[arg(long)]
        group: String,
        /// Region that should hold the lease.
        #[arg(long)]
        to: String,
    },
}

fn init_logs(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only for a person at a terminal (and not with NO_COLOR set):
    // escape codes in a file or a pipe are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if format == LogFormat::Json {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let out = cli.output;
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            output::print_error(out, &e);
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Serve { ref config } => {
            let cfg = NodeConfig::load(config)?;
            let fmt = cli.log_format.unwrap_or(if cfg.log.format == "json" {
                LogFormat::Json
            } else {
                LogFormat::Human
            });
            init_logs(fmt, &cfg.log.level);
            let mut node = meridian_node::start(cfg).await?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {
                    tracing::info!("stopping");
                    node.stop().await;
                }
                _ = node.wait() => bail!("the gRPC server stopped"),
            }
            Ok(())
        }
        Cmd::Dev {
            ref dir,
            base_port,
            fresh,
        } => {
            init_logs(cli.log_format.unwrap_or(LogFormat::Human), "info");
            dev_cmd::dev(dir, base_port, fresh).await
        }
        Cmd::Certs {
            ref out,
            ref regions,
            ref api_hosts,
            ref clients,
            force,
        } => {
            let reused = !force && out.join("ca.pem").exists();
            let files =
                meridian_node::tls::generate_dev_certs(out, regions, api_hosts, clients, force)?;
            for (i, f) in files.iter().enumerate() {
                let private = f.to_string_lossy().ends_with("-key.pem");
                let what = if reused && i < 2 {
                    "using existing"
                } else {
                    "wrote"
                };
                let mode = if private {
                    " (mode 0600: keep it private)"
                } else {
                    ""
                };
                println!("{what} {}{mode}", f.display());
            }
            Ok(())
        }
        Cmd::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "meridian",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        _ => client_command(cli).await,
    }
}

fn consistency(l: ReadLevel) -> Consistency {
    match l {
        ReadLevel::Linearizable => Consistency::Linearizable,
        ReadLevel::Bounded => Consistency::Bounded,
        ReadLevel::Stale => Consistency::Stale,
    }
}

fn kv_json(k: &KeyValue) -> serde_json::Value {
    serde_json::json!({
        "key": k.key,
        "value": String::from_utf8_lossy(&k.value),
        "version": k.version,
        "mod_revision": k.mod_revision,
        "deleted": k.deleted,
    })
}

fn token_str(t: &Option<meridian_proto::v1::RevisionToken>) -> String {
    t.as_ref()
        .map(|t| format!("{}:{}", t.group, t.revision))
        .unwrap_or_default()
}

async fn client_command(cli: Cli) -> Result<()> {
    init_logs(cli.log_format.unwrap_or(LogFormat::Human), "warn");
    let token = auth_cmd::resolve_token(cli.token.as_deref())?;
    let tls = match &cli.cacert {
        None => None,
        Some(ca) => Some(ClientTls::from_files(
            ca,
            cli.client_cert.as_deref().zip(cli.client_key.as_deref()),
        )?),
    };
    let target = auth_cmd::Target {
        endpoints: cli.endpoints.clone(),
        token: token.clone(),
        tls: tls.clone(),
    };
    if let Cmd::Config { cmd } = cli.cmd {
        return config_cmd::run(cmd, &target, cli.output).await;
    }
    if let Cmd::Secrets { cmd } = cli.cmd {
        return secrets_cmd::run(cmd, &target, cli.output).await;
    }
    if let Cmd::Flag { cmd } = cli.cmd {
        return flag_cmd::run(cmd, &target, cli.output).await;
    }
    if let Cmd::Segment { cmd } = cli.cmd {
        return flag_cmd::run_segment(cmd, &target, cli.output).await;
    }
    if let Cmd::Audit { cmd } = cli.cmd {
        return audit_cmd::run(cmd, &target, cli.output).await;
    }
    if let Cmd::Auth { cmd } = cli.cmd {
        return auth_cmd::run(cmd, &target, cli.output).await;
    }
    if let Cmd::Drill { cmd } = cli.cmd {
        return drill::run(cmd, &target, cli.output).await;
    }
    let opts = ClientOptions {
        token,
        tls,
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let client = Client::connect(&cli.endpoints, opts).await?;
    let ns = cli.ns.as_str();
    let out = cli.output;
    match cli.cmd {
        Cmd::Get {
            key,
            consistency: c,
            max_staleness_ms,
        } => {
            let r = client
                .get_with(ns, &key, consistency(c), max_staleness_ms)
                .await?;
            let kv = r.kv.unwrap_or_default();
            let mut v = kv_json(&kv);
            v["found"] = r.found.into();
            v["token"] = token_str(&r.token).into();
            // A missing key fails in every format (exit code 1); the
            // machine formats still print what was read.
            if !r.found {
                if out != Output::Human {
                    emit(out, &v, |_| String::new())?;
                }
                return Err(Failure::new(
                    "NOT_FOUND",
                    format!("key {key:?} not found in namespace {ns:?}"),
                )
                .into());
            }
            emit(out, &v, |v| {
                eprintln!(
                    "(version {}, revision {}, token {})",
                    v["version"],
                    v["mod_revision"],
                    v["token"].as_str().unwrap_or("")
                );
                format!("{}\n", v["value"].as_str().unwrap_or(""))
            })?;
        }
        Cmd::Put { key, value } => {
            let value = value_arg(&value)?;
            let r = client.put(ns, &key, &value).await?;
            emit(out, &write_json(&r), ok_version)?;
        }
        Cmd::Delete { key } => {
            // As etcdctl: a key that does not exist is no error, and
            // nothing is written (no version, no history).
            let r = client.delete(ns, &key).await?;
            emit(out, &write_json(&r), |v| {
                if v["deleted"] == json!(0) {
                    format!("deleted 0: {key:?} does not exist; nothing written\n")
                } else {
                    format!(
                        "deleted 1: {key:?} (version {}, token {})\n",
                        v["versions"][0],
                        v["token"].as_str().unwrap_or("")
                    )
                }
            })?;
        }
        Cmd::Cas {
            key,
            expected_version,
            value,
        } => {
            let value = value_arg(&value)?;
            let r = client
                .compare_and_set(ns, &key, expected_version, Some(&value))
                .await?;
            if !r.succeeded {
                return conflict(
                    out,
                    &r,
                    format!("the version of {key:?} is not {expected_version}; nothing written"),
                );
            }
            emit(out, &write_json(&r), ok_version)?;
        }
        Cmd::Txn {
            compares,
            puts,
            deletes,
        } => {
            use meridian_proto::v1::{op, Compare, Op, TxnRequest};
            let mut req = TxnRequest {
                namespace: ns.into(),
                ..TxnRequest::default()
            };
            for c in &compares {
                let (key, version) = split_pair(c, "--if", "KEY=VERSION")?;
                let version = version
                    .parse()
                    .with_context(|| format!("--if {c:?}: the version is not a whole number"))?;
                req.compares.push(Compare {
                    key: key.into(),
                    version,
                });
            }
            for p in &puts {
                let (key, value) = split_pair(p, "--put", "KEY=VALUE")?;
                req.ops.push(Op {
                    op: Some(op::Op::Put(op::Put {
                        key: key.into(),
                        value: value_arg(value)?,
                    })),
                });
            }
            for d in deletes {
                req.ops.push(Op {
                    op: Some(op::Op::Delete(d)),
                });
            }
            if req.ops.is_empty() {
                bail!("a transaction needs at least one --put or --delete");
            }
            let r = client.txn(req).await?;
            if !r.succeeded {
                return conflict(
                    out,
                    &r,
                    "a compare (--if) did not hold; nothing written".into(),
                );
            }
            emit(out, &write_json(&r), |v| {
                format!(
                    "OK versions {} deleted {} token {}\n",
                    v["versions"],
                    v["deleted"],
                    v["token"].as_str().unwrap_or("")
                )
            })?;
        }
        Cmd::List {
            prefix,
            limit,
            page_token,
            contains,
            keys_only,
            all,
        } => {
            let mut page = page_token;
            let mut items = Vec::new();
            let next = loop {
                let r = client
                    .list(ListRequest {
                        namespace: ns.into(),
                        prefix: prefix.clone(),
                        page_token: page.clone(),
                        limit,
                        key_contains: contains.clone().unwrap_or_default(),
                        keys_only,
                        read: None,
                    })
                    .await?;
                items.extend(r.kvs.iter().map(|k| {
                    if keys_only {
                        json!({"key": k.key})
                    } else {
                        kv_json(k)
                    }
                }));
                if r.next_page_token.is_empty() || !all {
                    break r.next_page_token;
                }
                page = r.next_page_token;
            };
            let v = json!({"items": items, "next_page_token": next});
            emit_list(out, &v, "items", |v| {
                let mut s = String::new();
                for k in v["items"].as_array().into_iter().flatten() {
                    if keys_only {
                        s.push_str(&format!("{}\n", k["key"].as_str().unwrap_or("")));
                    } else {
                        s.push_str(&format!(
                            "{} = {}\n",
                            k["key"].as_str().unwrap_or(""),
                            k["value"].as_str().unwrap_or("")
                        ));
                    }
                }
                if let Some(t) = v["next_page_token"].as_str().filter(|t| !t.is_empty()) {
                    eprintln!("(more: --page-token {t}, or --all for every page)");
                }
                s
            })?;
        }
        Cmd::Watch {
            prefix,
            from_revision,
            count,
        } => {
            output::check_stream(out)?;
            let mut rx = client.watch(ns, &prefix, from_revision);
            let mut seen = 0u64;
            while let Some(ev) = rx.recv().await {
                let ev = ev?;
                for k in &ev.events {
                    let mut v = kv_json(k);
                    v["revision"] = ev.revision.into();
                    v["resync"] = ev.resync.into();
                    emit_event(out, &v, |v| {
                        if v["deleted"] == json!(true) {
                            format!(
                                "[{}] DELETE {}\n",
                                v["revision"],
                                v["key"].as_str().unwrap_or("")
                            )
                        } else {
                            format!(
                                "[{}] PUT {} = {}\n",
                                v["revision"],
                                v["key"].as_str().unwrap_or(""),
                                v["value"].as_str().unwrap_or("")
                            )
                        }
                    })?;
                    seen += 1;
                }
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
        }
        Cmd::History { key } => {
            let r = client.history(ns, &key, Consistency::Linearizable).await?;
            let v = json!({
                "key": key,
                "versions": r.versions.iter().map(kv_json).collect::<Vec<_>>(),
            });
            emit_list(out, &v, "versions", |v| {
                let mut s = String::new();
                for k in v["versions"].as_array().into_iter().flatten() {
                    if k["deleted"] == json!(true) {
                        s.push_str(&format!(
                            "v{} @{}  (deleted)\n",
                            k["version"], k["mod_revision"]
                        ));
                    } else {
                        s.push_str(&format!(
                            "v{} @{}  {}\n",
                            k["version"],
                            k["mod_revision"],
                            k["value"].as_str().unwrap_or("")
                        ));
                    }
                }
                s
            })?;
        }
        Cmd::Cluster { cmd } => match cmd {
            ClusterCmd::Status => {
                let s = client.cluster_status().await?;
                emit(out, &status_json(&s), |_| status_text(&s))?;
            }
            ClusterCmd::TransferLease { group, to } => {
                let s = client.cluster_status().await?;
                let (g, home) = match group.parse::<u32>() {
                    Ok(g) => (
                        g,
                        s.regions
                            .get(g as usize)
                            .map(|r| r.name.clone())
                            .with_context(|| format!("no group {g}"))?,
                    ),
                    Err(_) => s
                        .regions
                        .iter()
                        .find(|r| r.name == group)
                        .map(|r| (r.id, r.name.clone()))
                        .with_context(|| format!("no region named {group:?}"))?,
                };
                client.transfer_lease(g, &to).await?;
                let v = json!({"group": home, "to": to, "home_return_delay_ms": s.home_return_delay_ms});
                emit(out, &v, |_| {
                    let back = if to == home {
                        String::new()
                    } else {
                        format!(
                            "; it returns to {home}, the group's home, {} ms after {home} is healthy and caught up",
                            s.home_return_delay_ms
                        )
                    };
                    format!("the lease of group {home} is moving to {to}{back}\n")
                })?;
            }
        },
        Cmd::Serve { .. }
        | Cmd::Dev { .. }
        | Cmd::Certs { .. }
        | Cmd::Config { .. }
        | Cmd::Auth { .. }
        | Cmd::Drill { .. }
        | Cmd::Audit { .. }
        | Cmd::Secrets { .. }
        | Cmd::Flag { .. }
        | Cmd::Segment { .. }
        | Cmd::Completion { .. } => {}
    }
    Ok(())
}

/// A value argument: "-" reads stdin, "@FILE" a file, anything else is the
/// value itself.
fn value_arg(v: &str) -> Result<Vec<u8>> {
    if v == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
            .context("reading the value from stdin")?;
        return Ok(b);
    }
    if let Some(path) = v.strip_prefix('@') {
        return std::fs::read(path).with_context(|| format!("reading the value from {path}"));
    }
    Ok(v.as_bytes().to_vec())
}

/// A write whose compare failed: the machine formats still print what came
/// back, and the command fails with CAS_CONFLICT in every format.
fn conflict(out: Output, r: &meridian_proto::v1::WriteResponse, why: String) -> Result<()> {
    if out != Output::Human {
        emit(out, &write_json(r), |_| String::new())?;
    }
    Err(Failure::new("CAS_CONFLICT", why).into())
}

/// A single-key write for people: its new version and token.
fn ok_version(v: &Value) -> String {
    format!(
        "OK version {} token {}\n",
        v["versions"][0],
        v["token"].as_str().unwrap_or("")
    )
}

fn split_pair<'a>(s: &'a str, flag: &str, shape: &str) -> Result<(&'a str, &'a str)> {
    s.split_once('=')
        .with_context(|| format!("{flag} {s:?}: expected {shape}"))
}

fn write_json(r: &meridian_proto::v1::WriteResponse) -> Value {
    json!({
        "succeeded": r.succeeded,
        "versions": r.versions,
        "deleted": r.deleted,
        "token": token_str(&r.token),
    })
}

fn status_json(s: &meridian_proto::v1::ClusterStatusResponse) -> serde_json::Value {
    serde_json::json!({
        "answered_by": s.answered_by,
        "regions": s.regions.iter().map(|r| serde_json::json!({
            "id": r.id, "name": r.name, "grpc": r.grpc_address, "peer": r.peer_address,
            "connected": r.connected, "state": r.state,
        })).collect::<Vec<_>>(),
        "groups": s.groups.iter().map(|g| serde_json::json!({
            "group": g.group, "home": g.home_region, "leader": g.leader_name,
            "term": g.term, "commit_index": g.commit_index, "last_index": g.last_index,
            "applied_revision": g.applied_revision, "lease_remaining_ms": g.lease_remaining_ms,
            "local_lag_entries": g.local_lag_entries, "role": g.role,
            "followers": g.followers.iter().map(|f| serde_json::json!({
                "region": f.region, "match_index": f.match_index, "lag_entries": f.lag_entries,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "namespaces": s.namespaces,
    })
}

/// `cluster status` for people.
fn status_text(s: &meridian_proto::v1::ClusterStatusResponse) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "answered by region {}", s.answered_by);
    let _ = writeln!(o, "regions:");
    for r in &s.regions {
        let _ = writeln!(
            o,
            "  {:<8} grpc {:<21} peer {:<21} {}",
            r.name,
            r.grpc_address,
            r.peer_address,
            if r.state.is_empty() {
                if r.connected {
                    "connected"
                } else {
                    "UNREACHABLE"
                }
            } else {
                r.state.as_str()
            }
        );
    }
    let _ = writeln!(o, "groups:");
    for g in &s.groups {
        let lease = g
            .lease_remaining_ms
            .map(|m| format!("lease {m} ms"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            o,
            "  {:<8} leader {:<8} term {:<4} commit {:<7} revision {:<7} lag {:<4} {} ({} here)",
            g.home_region,
            if g.leader_name.is_empty() {
                "?"
            } else {
                &g.leader_name
            },
            g.term,
            g.commit_index,
            g.applied_revision,
            g.local_lag_entries,
            lease,
            g.role
        );
        for f in &g.followers {
            let name = s
                .regions
                .get(f.region as usize)
                .map_or("?", |r| r.name.as_str());
            let _ = writeln!(
                o,
                "           follower {:<8} match {:<7} behind {}",
                name, f.match_index, f.lag_entries
            );
        }
    }
    let _ = writeln!(o, "namespaces: {}", s.namespaces.join(", "));
    o
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency checks over every subcommand (two arguments
    /// with one long name, say), which otherwise fail only when a user runs
    /// that subcommand.
    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
