//! Feature flags, three ways (issue: flags' performance bar):
//!
//! - local evaluation in the Rust library (`meridian_flags::Evaluator`, what
//!   `Client::flags` runs): evaluations per second on one core for a flag
//!   with three rules and a roll-out, and the latency of one evaluation;
//! - OFREP on the HTTP API of one region: closed-loop clients on the same
//!   machine, single-flag evaluations with random targeting keys; the
//!   published anchor is Unleash Edge's 39 K req/s at p95 1.6 ms on one CPU
//!   with a 5-flag set (its numbers, not measured here);
//! - a change pushed to many local-evaluation streams (`flagd.sync.v1`
//!   `SyncFlags`, what in-process providers and `Client::flags` hold): the
//!   time from the write's acknowledgement until 99 % and 100 % of them hold
//!   the new definition.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use meridian_flags::{Context, Evaluator, Expect, FlagSet};
use meridian_proto::flagd::sync::v1::flag_sync_service_client::FlagSyncServiceClient;
use meridian_proto::flagd::sync::v1::SyncFlagsRequest;
use meridian_proto::v1::config_client::ConfigClient;
use meridian_proto::v1::{
    config_op, ConfigOp, ConfigWriteRequest, CreateNamespaceRequest, ListFlagsRequest,
    NamespaceRef, SetFlagOp, SetSegmentOp,
};
use serde::Serialize;
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::Ctx;
use crate::harness::MeridianCluster;
use crate::report::{Better, Figure, Series, Unit, WorkloadReport};
use crate::stats::{rate, Latency, Summary};

const NS: &str = "bench/flags";
/// The flag with three rules and a roll-out every measurement evaluates.
const FLAG: &str = "checkout";
/// Evaluations of the local throughput run (one core).
const LOCAL_EVALS: usize = 5_000_000;
/// Evaluations timed one by one for the local latency distribution.
const LOCAL_TIMED: usize = 1_000_000;

fn ns() -> Option<NamespaceRef> {
    Some(NamespaceRef {
        project: "bench".into(),
        environment: "flags".into(),
    })
}

/// Five flags, as Unleash's anchor: the measured one has three rules and a
/// roll-out.
fn definitions(rollout_pct: u64) -> Vec<(&'static str, Value)> {
    vec![
        (
            FLAG,
            json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                   "targeting": {"if": [
                       {"$ref": "beta"}, "on",
                       {"in": [{"var": "country"}, ["NK", "XX"]]}, "off",
                       {"sem_ver": [{"var": "appVersion"}, "<", "2.0.0"]}, "off",
                       {"fractional": [["on", rollout_pct], ["off", 100 - rollout_pct]]}]}}),
        ),
        (
            "banner",
            json!({"state": "ENABLED", "variants": {"a": "Welcome", "b": "Hello"}, "defaultVariant": "a"}),
        ),
        (
            "max-items",
            json!({"state": "ENABLED", "variants": {"low": 10, "high": 100}, "defaultVariant": "low",
                             "targeting": {"fractional": [["low", 50], ["high", 50]]}}),
        ),
        (
            "theme",
            json!({"state": "ENABLED", "variants": {"dark": {"bg": "#000"}, "light": {"bg": "#fff"}},
                         "defaultVariant": "light", "targeting": {"if": [{"$ref": "beta"}, "dark", null]}}),
        ),
        (
            "kill",
            json!({"state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}),
        ),
    ]
}

fn set_flag(key: &str, def: &Value) -> ConfigOp {
    ConfigOp {
        op: Some(config_op::Op::SetFlag(SetFlagOp {
            key: key.into(),
            definition_json: def.to_string(),
        })),
    }
}

async fn write(c: &mut ConfigClient<Channel>, ops: Vec<ConfigOp>) -> Result<()> {
    c.write(ConfigWriteRequest {
        ns: ns(),
        ops,
        author: "bench".into(),
        ..Default::default()
    })
    .await
    .context("writing flags")?;
    Ok(())
}

fn contexts(n: usize) -> Vec<Context> {
    (0..n)
        .map(|i| {
            let country = ["CA", "US", "FR"][i % 3];
            let m = json!({"targetingKey": format!("user-{i:08}"), "email": format!("u{i}@example.com"),
                           "country": country, "appVersion": "2.3.1"});
            Context::new(m.as_object().cloned().unwrap_or_default()).unwrap_or_else(|_| Context::empty())
        })
        .collect()
}

#[derive(Clone, Serialize)]
pub struct Local {
    pub evaluations_per_s: f64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
}

/// Local evaluation on this thread (one core).
fn local(set: &FlagSet) -> Result<Local> {
    let ev = Evaluator::new(set);
    let ctxs = contexts(1024);
    let now = 1_800_000_000;
    let mut on = 0usize;
    // Warm-up.
    for c in ctxs.iter().cycle().take(100_000) {
        on += usize::from(ev.evaluate(FLAG, c, now, Expect::Bool).variant == Some("on"));
    }
    let t0 = Instant::now();
    for c in ctxs.iter().cycle().take(LOCAL_EVALS) {
        on += usize::from(ev.evaluate(FLAG, c, now, Expect::Bool).variant == Some("on"));
    }
    let elapsed = t0.elapsed();
    anyhow::ensure!(on > 0, "no context was rolled out to");
    let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
    for c in ctxs.iter().cycle().take(LOCAL_TIMED) {
        let t = Instant::now();
        let r = ev.evaluate(FLAG, c, now, Expect::Bool);
        let ns = t.elapsed().as_nanos() as u64;
        std::hint::black_box(r);
        h.record(ns.max(1))?;
    }
    Ok(Local {
        evaluations_per_s: LOCAL_EVALS as f64 / elapsed.as_secs_f64(),
        p50_ns: h.value_at_quantile(0.5),
        p99_ns: h.value_at_quantile(0.99),
        p999_ns: h.value_at_quantile(0.999),
    })
}

/// OFREP single-flag evaluations by `clients` closed-loop clients.
async fn ofrep(http_addr: &str, clients: usize, duration: Duration) -> Result<(Latency, Duration)> {
    // The workspace's tests build reqwest with `rustls-no-provider`, which
    // needs a process-wide provider even for plain HTTP (an error only
    // means one is installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let url = format!("http://{http_addr}/ofrep/v1/evaluate/flags/{FLAG}");
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..clients {
        let (http, url, stop) = (http.clone(), url.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Latency::new();
            let mut i = t * 1_000_003;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let body = json!({"context": {"targetingKey": format!("user-{i}"), "country": "CA", "appVersion": "2.3.1"}});
                let t0 = Instant::now();
                let r = http
                    .post(&url)
                    .header("x-meridian-namespace", NS)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await?;
                let status = r.status();
                let bytes = r.bytes().await?;
                lat.record(t0.elapsed());
                anyhow::ensure!(status.is_success(), "OFREP {status}: {}", String::from_utf8_lossy(&bytes));
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

#[derive(Clone, Serialize)]
pub struct Push {
    pub subscribers: usize,
    pub connections: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub all_ms: f64,
}

/// `subscribers` SyncFlags streams over `connections` connections; a change
/// is written; the time until each stream held it.
async fn push(
    grpc: &str,
    c: &mut ConfigClient<Channel>,
    subscribers: usize,
    per_conn: usize,
) -> Result<Push> {
    let connections = subscribers.div_ceil(per_conn.max(1));
    let mut chans = Vec::new();
    for _ in 0..connections {
        chans.push(
            tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?
                .connect()
                .await
                .context("connecting for SyncFlags")?,
        );
    }
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(subscribers);
    // Arrival times go into one list, and only the last arrival wakes the
    // collector: a wake-up per arrival would be the bench's own cost,
    // measured as the push's (10,000 cross-thread wake-ups on 2 cores).
    let arrivals = std::sync::Arc::new(std::sync::Mutex::new(Vec::with_capacity(subscribers)));
    let all_in = std::sync::Arc::new(tokio::sync::Notify::new());
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let marker = "rollout-35";
    for s in 0..subscribers {
        let ch = chans[s % connections].clone();
        let ready = ready_tx.clone();
        let (arrivals, all_in, ended) = (arrivals.clone(), all_in.clone(), ended.clone());
        tokio::spawn(async move {
            let mut req = tonic::Request::new(SyncFlagsRequest::default());
            req.metadata_mut()
                .insert("flagd-selector", NS.parse().expect("ascii"));
            let Ok(resp) = FlagSyncServiceClient::new(ch).sync_flags(req).await else {
                return;
            };
            let mut stream = resp.into_inner();
            let mut told = false;
            while let Ok(Some(m)) = stream.message().await {
                if !told {
                    told = true;
                    let _ = ready.send(()).await;
                }
                if m.flag_configuration.contains(marker) {
                    let now = Instant::now();
                    let mut a = arrivals.lock().expect("arrivals");
                    a.push(now);
                    if a.len() == subscribers {
                        all_in.notify_one();
                    }
                    return;
                }
            }
            // A stream that ended without the change: the collector says so.
            ended.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            all_in.notify_one();
        });
    }
    drop(ready_tx);
    let deadline = Instant::now() + Duration::from_secs(120);
    for n in 0..subscribers {
        tokio::time::timeout_at(deadline.into(), ready_rx.recv())
            .await
            .with_context(|| format!("only {n} of {subscribers} sync streams opened"))?;
    }
    // The change: the roll-out grows from 25 % to 35 % (its metadata names it).
    let mut def = definitions(35)[0].1.clone();
    def["metadata"] = json!({"change": marker});
    write(c, vec![set_flag(FLAG, &def)]).await?;
    let acked = Instant::now();
    loop {
        let n = arrivals.lock().expect("arrivals").len();
        if n == subscribers {
            break;
        }
        anyhow::ensure!(
            ended.load(std::sync::atomic::Ordering::Relaxed) == 0,
            "a stream ended before it got the change ({n} of {subscribers} got it)"
        );
        tokio::time::timeout_at(deadline.into(), all_in.notified())
            .await
            .with_context(|| format!("only {n} of {subscribers} streams got the change"))?;
    }
    let mut ms: Vec<f64> = arrivals
        .lock()
        .expect("arrivals")
        .iter()
        .map(|at| at.saturating_duration_since(acked).as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let q = |f: f64| ms[((ms.len() as f64 * f).ceil() as usize).clamp(1, ms.len()) - 1];
    Ok(Push {
        subscribers,
        connections,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        all_ms: q(1.0),
    })
}

#[derive(Serialize)]
struct Raw {
    local: Local,
    ofrep_per_s: f64,
    ofrep: Summary,
    push: Vec<Push>,
}

pub async fn run(ctx: &Ctx) -> Result<WorkloadReport> {
    let p = &ctx.p;
    eprintln!("flags: Meridian, 1 region, {NS} with 5 flags");
    let cluster = MeridianCluster::start_with(&ctx.meridian_bin, 1, None, false).await?;
    let grpc = cluster.grpc[0].clone();
    let mut c = ConfigClient::connect(format!("http://{grpc}")).await?;
    c.create_namespace(CreateNamespaceRequest {
        project: "bench".into(),
        environment: "flags".into(),
        home_region: "eu".into(),
        mode: "quorum".into(),
        ..Default::default()
    })
    .await
    .context("creating bench/flags")?;
    let segment = ConfigOp {
        op: Some(config_op::Op::SetSegment(SetSegmentOp {
            name: "beta".into(),
            rule_json: json!({"ends_with": [{"var": "email"}, "@beta.example"]}).to_string(),
        })),
    };
    write(&mut c, vec![segment]).await?;
    write(
        &mut c,
        definitions(25)
            .iter()
            .map(|(k, d)| set_flag(k, d))
            .collect(),
    )
    .await?;

    // Local evaluation, on the flagd document a client would hold.
    let doc = c
        .list_flags(ListFlagsRequest {
            ns: ns(),
            options: None,
            flagd: true,
        })
        .await?
        .into_inner()
        .flagd_json;
    let set = FlagSet::from_json(&serde_json::from_str(&doc)?)?;
    let local = tokio::task::spawn_blocking(move || local(&set)).await??;
    eprintln!(
        "  local: {:.2} M evaluations/s on one core, p50 {} ns, p99 {} ns",
        local.evaluations_per_s / 1e6,
        local.p50_ns,
        local.p99_ns
    );

    // OFREP over HTTP.
    let clients = p.read_clients.max(1);
    ofrep(&cluster.http[0], clients, p.warmup).await?;
    let (lat, elapsed) = ofrep(&cluster.http[0], clients, p.duration).await?;
    let ofrep_per_s = rate(lat.len(), elapsed);
    let ofrep_sum = lat.summary();
    eprintln!(
        "  OFREP: {ofrep_per_s:.0} req/s, p50 {} µs, p99 {} µs",
        ofrep_sum.p50_us, ofrep_sum.p99_us
    );

    // Pushes to local-evaluation streams.
    let mut pushes = Vec::new();
    for &n in &p.watchers {
        let r = push(&grpc, &mut c, n, p.watchers_per_connection).await?;
        eprintln!(
            "  push to {n} sync streams: p50 {:.1} ms, p99 {:.1} ms, all {:.1} ms",
            r.p50_ms, r.p99_ms, r.all_ms
        );
        pushes.push(r);
        // Back to 25 % for the next size.
        write(&mut c, vec![set_flag(FLAG, &definitions(25)[0].1)]).await?;
    }

    let mut figures = vec![
        Figure::new(
            "local evaluations/s (1 core)",
            Unit::OpsPerSec,
            Better::Higher,
        )
        .meridian("Rust library", local.evaluations_per_s),
        Figure::new("local evaluation p99 (ns)", Unit::Count, Better::Lower)
            .meridian("Rust library", local.p99_ns as f64),
        Figure::new("OFREP req/s", Unit::OpsPerSec, Better::Higher).meridian("OFREP", ofrep_per_s),
        Figure::new("OFREP p99", Unit::Micros, Better::Lower)
            .meridian("OFREP", ofrep_sum.p99_us as f64),
    ];
    for r in &pushes {
        figures.push(
            Figure::new(
                format!("change to {} streams, p99", r.subscribers),
                Unit::Micros,
                Better::Lower,
            )
            .meridian("SyncFlags", r.p99_ms * 1000.0),
        );
        figures.push(
            Figure::new(
                format!("change to {} streams, all", r.subscribers),
                Unit::Micros,
                Better::Lower,
            )
            .meridian("SyncFlags", r.all_ms * 1000.0),
        );
    }
    Ok(WorkloadReport {
        name: "flags".into(),
        title: "Feature flags: local evaluation, OFREP, and a change pushed to sync streams".into(),
        columns: None,
        setup: format!(
            "1 region, environment `{NS}` with 5 flags; `{FLAG}` has three rules (a segment, a country list, sem_ver) and a 25 % roll-out. Local: {LOCAL_EVALS} evaluations on one thread over 1,024 prepared contexts, then {LOCAL_TIMED} timed one by one. OFREP: {clients} closed-loop clients, HTTP/1.1 keep-alive, `POST /ofrep/v1/evaluate/flags/{FLAG}` with a random targeting key, {:?} after {:?} of warm-up, client and server on the same {} cores. Push: SyncFlags streams, {} per connection; the roll-out is raised to 35 % and each stream timed from the write's acknowledgement until it holds the new definition.",
            p.duration,
            p.warmup,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            p.watchers_per_connection
        ),
        figures,
        series: vec![Series {
            system: "meridian".into(),
            label: "OFREP single-flag evaluation".into(),
            summary: ofrep_sum.clone(),
        }],
        notes: vec![
            "Published anchor, not measured here: Unleash Edge serves 39 K req/s at p95 1.6 ms on 1 CPU with a 5-flag set.".into(),
        ],
        raw: serde_json::to_value(Raw { local, ofrep_per_s, ofrep: ofrep_sum, push: pushes }).unwrap_or_default(),
    })
}
