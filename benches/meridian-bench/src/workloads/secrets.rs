//! What a reveal costs: reads of a secret with reveal (open the envelope:
//! unwrap the data key with the KEK, AES-256-GCM open, audit the reveal)
//! against reads of a plain key of the same size, side by side in one run
//! against one Meridian region, in the order plain, reveal, reveal, plain so
//! drift weighs on both alike. A secret read without reveal (its redaction)
//! is measured too. etcd has no secrets, so it is not involved.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use meridian_proto::v1::config_client::ConfigClient;
use meridian_proto::v1::{
    config_op, ConfigOp, ConfigReadOptions, ConfigWriteRequest, CreateNamespaceRequest,
    GetConfigRequest, NamespaceRef, PutOp, SecretSpec,
};
use serde::Serialize;
use tonic::transport::Channel;

use super::Ctx;
use crate::harness::MeridianCluster;
use crate::report::{Better, Figure, Series, Unit, WorkloadReport};
use crate::stats::{rate, Latency, Summary};

/// Keys of each kind (plain and secret) the reads pick from.
const KEYS_MAX: usize = 1000;
/// Puts per write while loading.
const LOAD_BATCH: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Mode {
    /// A plain key.
    Plain,
    /// A secret, with reveal.
    Reveal,
    /// A secret, without reveal (its redaction).
    Redacted,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Plain => "plain read",
            Mode::Reveal => "secret, revealed",
            Mode::Redacted => "secret, redacted",
        }
    }
}

#[derive(Clone, Serialize)]
pub struct Run {
    pub mode: Mode,
    pub reads_per_s: f64,
    pub latency: Summary,
}

fn ns() -> Option<NamespaceRef> {
    Some(NamespaceRef {
        project: "bench".into(),
        environment: "sec".into(),
    })
}

async fn client(addr: &str) -> Result<ConfigClient<Channel>> {
    ConfigClient::connect(format!("http://{addr}"))
        .await
        .with_context(|| format!("connecting to the Config service at {addr}"))
}

/// `keys` plain keys `p.k<i>` and as many secrets `s.k<i>`, of `bytes` each.
async fn load(c: &mut ConfigClient<Channel>, keys: usize, bytes: usize) -> Result<()> {
    let value = serde_json::Value::String("v".repeat(bytes.saturating_sub(2).max(1)));
    for start in (0..keys).step_by(LOAD_BATCH) {
        for secret in [false, true] {
            let ops = (start..(start + LOAD_BATCH).min(keys))
                .map(|i| ConfigOp {
                    op: Some(config_op::Op::Put(PutOp {
                        key: format!("{}.k{i}", if secret { "s" } else { "p" }),
                        value_json: value.to_string(),
                        if_version: None,
                        secret: secret.then(SecretSpec::default),
                    })),
                })
                .collect();
            c.write(ConfigWriteRequest {
                ns: ns(),
                ops,
                author: "bench".into(),
                message: String::new(),
                idempotency_key: String::new(),
            })
            .await
            .context("loading keys")?;
        }
    }
    Ok(())
}

/// Closed-loop reads in `mode` by `clients` clients for `duration`.
async fn drive(
    conns: &[ConfigClient<Channel>],
    mode: Mode,
    clients: usize,
    keys: usize,
    duration: Duration,
) -> Result<(Latency, Duration)> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for t in 0..clients {
        let mut c = conns[t % conns.len()].clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Latency::new();
            let mut i = t * 7919;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 104_729) % keys;
                let (key, reveal) = match mode {
                    Mode::Plain => (format!("p.k{i}"), false),
                    Mode::Reveal => (format!("s.k{i}"), true),
                    Mode::Redacted => (format!("s.k{i}"), false),
                };
                let t0 = Instant::now();
                let r = c
                    .get_config(GetConfigRequest {
                        ns: ns(),
                        path: key,
                        read: Some(ConfigReadOptions {
                            raw: true,
                            reveal,
                            ..Default::default()
                        }),
                        default_json: None,
                    })
                    .await
                    .context("config get")?;
                lat.record(t0.elapsed());
                anyhow::ensure!(
                    r.get_ref().value_json.contains("vvvv") == (mode != Mode::Redacted),
                    "{mode:?}: unexpected value {}",
                    r.get_ref().value_json
                );
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Latency::new();
    for t in tasks {
        all.add(&t.await??);
    }
    Ok((all, start.elapsed()))
}

pub async fn run(ctx: &Ctx) -> Result<WorkloadReport> {
    let p = &ctx.p;
    let keys = p.keys.clamp(1, KEYS_MAX);
    eprintln!("secrets: Meridian, 1 region, {keys} plain keys and {keys} secrets");
    let cluster = MeridianCluster::start_with(&ctx.meridian_bin, 1, None, false).await?;
    let addr = cluster.grpc[0].clone();
    let mut c = client(&addr).await?;
    c.create_namespace(CreateNamespaceRequest {
        project: "bench".into(),
        environment: "sec".into(),
        home_region: "eu".into(),
        mode: "quorum".into(),
        ..Default::default()
    })
    .await
    .context("creating bench/sec")?;
    load(&mut c, keys, p.value_bytes).await?;
    let mut conns = Vec::new();
    for _ in 0..p.connections.max(1) {
        conns.push(client(&addr).await?);
    }
    let clients = p.read_clients.max(1);
    let mut runs = Vec::new();
    for mode in [
        Mode::Plain,
        Mode::Reveal,
        Mode::Reveal,
        Mode::Plain,
        Mode::Redacted,
    ] {
        drive(&conns, mode, clients, keys, p.warmup).await?;
        let (lat, elapsed) = drive(&conns, mode, clients, keys, p.duration).await?;
        let run = Run {
            mode,
            reads_per_s: rate(lat.len(), elapsed),
            latency: lat.summary(),
        };
        eprintln!(
            "  {}: {:.0} reads/s, p50 {} µs, p99 {} µs",
            mode.label(),
            run.reads_per_s,
            run.latency.p50_us,
            run.latency.p99_us
        );
        runs.push(run);
    }
    Ok(report(ctx, keys, clients, runs))
}

/// The mean over the runs of `mode` (the plot's distribution is the first).
fn mean_of(runs: &[Run], mode: Mode) -> Option<Run> {
    let these: Vec<&Run> = runs.iter().filter(|r| r.mode == mode).collect();
    let mut m = (*these.first()?).clone();
    let n = these.len() as f64;
    let avg = |f: &dyn Fn(&Run) -> f64| these.iter().map(|r| f(r)).sum::<f64>() / n;
    m.reads_per_s = avg(&|r| r.reads_per_s);
    m.latency.p50_us = avg(&|r| r.latency.p50_us as f64) as u64;
    m.latency.p99_us = avg(&|r| r.latency.p99_us as f64) as u64;
    Some(m)
}

fn report(ctx: &Ctx, keys: usize, clients: usize, runs: Vec<Run>) -> WorkloadReport {
    let p = &ctx.p;
    let mut figures = Vec::new();
    if let (Some(rev), Some(plain)) = (mean_of(&runs, Mode::Reveal), mean_of(&runs, Mode::Plain)) {
        for (name, a, b) in [
            ("read p50", rev.latency.p50_us, plain.latency.p50_us),
            ("read p99", rev.latency.p99_us, plain.latency.p99_us),
        ] {
            figures.push(
                Figure::new(name, Unit::Micros, Better::Lower)
                    .meridian("secret, revealed", a as f64)
                    .etcd("plain read", Some(b as f64)),
            );
        }
        figures.push(
            Figure::new("reads/s", Unit::OpsPerSec, Better::Higher)
                .meridian("secret, revealed", rev.reads_per_s)
                .etcd("plain read", Some(plain.reads_per_s)),
        );
    }
    let series = runs
        .iter()
        .take(2)
        .chain(runs.iter().filter(|r| r.mode == Mode::Redacted))
        .map(|r| Series {
            system: "meridian".into(),
            label: r.mode.label().into(),
            summary: r.latency.clone(),
        })
        .collect();
    WorkloadReport {
        name: "secrets".into(),
        title: "Secrets: a revealed secret against a plain read".into(),
        columns: Some(("secret, revealed".into(), "plain read".into())),
        setup: format!(
            "1 region, environment `bench/sec` with {keys} plain keys and {keys} secrets of {} bytes. {clients} clients over {} connections read random keys (`Config.GetConfig`, raw, linearizable) for {:?} per run, in the order plain, reveal, reveal, plain (the figures are each mode's mean), then secrets without reveal.",
            p.value_bytes,
            p.connections.max(1),
            p.duration
        ),
        figures,
        series,
        notes: vec![
            "A reveal opens the envelope (unwraps the data key with the KEK and opens the value, AES-256-GCM both) and appends an audit record of the reveal; etcd has no secrets.".into(),
        ],
        raw: serde_json::to_value(&runs).unwrap_or_default(),
    }
}
