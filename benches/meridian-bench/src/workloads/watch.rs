//! Watch fan-out: N watchers on one prefix (one gRPC stream each, 100 streams
//! per HTTP/2 connection on both systems), then one write at a time: the time
//! from issuing the write until 99 % and 100 % of the watchers received it.
//! Memory per idle watcher is the server's resident set growth from before
//! the watchers opened to after they sat idle, divided by N (so it includes
//! the connections' share). A warm-up write that every watcher must receive
//! proves all of them are registered before anything is measured.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use meridian_proto::v1::kv_client::KvClient;
use meridian_proto::v1::WatchRequest;
use serde::Serialize;
use tokio::sync::mpsc;
use tonic::transport::Endpoint;

use super::Ctx;
use crate::conn::{self, NS};
use crate::harness::{rss_bytes, EtcdCluster, MeridianCluster};
use crate::report::{Better, Figure, Series, Unit, WorkloadReport};
use crate::stats::{Latency, Summary};

const PREFIX: &str = "watched/";
/// How long one round may take before the run fails.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Serialize)]
pub struct Run {
    pub system: &'static str,
    pub watchers: usize,
    pub rss_before_bytes: u64,
    pub rss_idle_bytes: u64,
    pub bytes_per_watcher: f64,
    /// Per measured round: µs until 99 % and until 100 % had the write.
    pub rounds: Vec<(u64, u64)>,
    pub t99_worst_us: u64,
    pub t100_worst_us: u64,
    pub t99_median_us: u64,
    pub delivery: Summary,
}

/// A delivery: which round's key a watcher saw, and when.
type Seen = (usize, Instant);

fn round_of(key: &[u8]) -> Option<usize> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix(PREFIX)?
        .strip_prefix('r')?
        .parse()
        .ok()
}

/// Opens `n` Meridian watchers; each reports every round it sees.
async fn open_meridian(
    addr: &str,
    n: usize,
    per_conn: usize,
    tx: mpsc::UnboundedSender<Seen>,
) -> Result<()> {
    let mut client = None;
    for i in 0..n {
        if i % per_conn == 0 {
            let ch = Endpoint::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect()
                .await?;
            client = Some(KvClient::new(ch));
        }
        let mut c = client.clone().context("a connection")?;
        let mut stream = c
            .watch(WatchRequest {
                namespace: NS.into(),
                prefix: PREFIX.into(),
                start_revision: None,
            })
            .await
            .with_context(|| format!("opening watcher {i}"))?
            .into_inner();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = stream.message().await {
                let now = Instant::now();
                for ev in m.events {
                    if let Some(r) = round_of(ev.key.as_bytes()) {
                        let _ = tx.send((r, now));
                    }
                }
            }
        });
    }
    Ok(())
}

/// Opens `n` etcd watchers (each its own watch stream, as etcd-client does),
/// waiting for each one's "created" response.
async fn open_etcd(
    endpoint: &str,
    n: usize,
    per_conn: usize,
    tx: mpsc::UnboundedSender<Seen>,
) -> Result<()> {
    let mut client = None;
    for i in 0..n {
        if i % per_conn == 0 {
            client = Some(etcd_client::Client::connect([endpoint], None).await?);
        }
        let mut wc = client.as_ref().context("a connection")?.watch_client();
        let mut stream = wc
            .watch(PREFIX, Some(etcd_client::WatchOptions::new().with_prefix()))
            .await
            .with_context(|| format!("opening watcher {i}"))?;
        let first = stream.message().await?.context("watch stream ended")?;
        anyhow::ensure!(
            first.created(),
            "etcd's first watch response is not 'created'"
        );
        let tx = tx.clone();
        tokio::spawn(async move {
            // The task owns the stream's request side too: dropping it
            // would end the watch.
            while let Ok(Some(m)) = stream.message().await {
                let now = Instant::now();
                for ev in m.events() {
                    if let Some(kv) = ev.kv() {
                        if let Some(r) = round_of(kv.key()) {
                            let _ = tx.send((r, now));
                        }
                    }
                }
            }
        });
    }
    Ok(())
}

/// Issues round `r`'s write and waits until all `n` watchers have it;
/// returns each watcher's delay from the write's start.
async fn round(
    writer: &mut conn::Conn,
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    r: usize,
    n: usize,
) -> Result<Vec<Duration>> {
    let t0 = Instant::now();
    writer
        .put(&format!("{PREFIX}r{r}"), b"x".to_vec())
        .await
        .context("the watched write")?;
    let mut delays = Vec::with_capacity(n);
    let deadline = t0 + ROUND_TIMEOUT;
    while delays.len() < n {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some((got, at))) if got == r => delays.push(at.saturating_duration_since(t0)),
            Ok(Some((got, _))) => bail!("a watcher saw round {got} while round {r} was under way"),
            Ok(None) => bail!("every watcher ended"),
            Err(_) => bail!(
                "round {r}: {} of {n} watchers received the write within {ROUND_TIMEOUT:?}",
                delays.len()
            ),
        }
    }
    delays.sort();
    Ok(delays)
}

async fn measure(
    system: &'static str,
    n: usize,
    pid: u32,
    mut writer: conn::Conn,
    open: impl std::future::Future<Output = Result<()>>,
    mut rx: mpsc::UnboundedReceiver<Seen>,
    ctx: &Ctx,
) -> Result<Run> {
    // Settle, then the baseline: the server with its writer connection.
    writer.put(&format!("{PREFIX}setup"), b"x".to_vec()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_bytes(pid)?;
    open.await?;
    // Round 0 proves every watcher is registered.
    round(&mut writer, &mut rx, 0, n).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss_bytes(pid)?;
    let mut delivery = Latency::new();
    let mut rounds = Vec::new();
    for r in 1..=ctx.p.watch_rounds {
        let d = round(&mut writer, &mut rx, r, n).await?;
        for x in &d {
            delivery.record(*x);
        }
        let i99 = ((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1;
        rounds.push((d[i99].as_micros() as u64, d[n - 1].as_micros() as u64));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut t99: Vec<u64> = rounds.iter().map(|r| r.0).collect();
    t99.sort();
    let run = Run {
        system,
        watchers: n,
        rss_before_bytes: rss_before,
        rss_idle_bytes: rss_idle,
        bytes_per_watcher: rss_idle.saturating_sub(rss_before) as f64 / n as f64,
        t99_worst_us: rounds.iter().map(|r| r.0).max().unwrap_or(0),
        t100_worst_us: rounds.iter().map(|r| r.1).max().unwrap_or(0),
        t99_median_us: t99.get(t99.len() / 2).copied().unwrap_or(0),
        rounds,
        delivery: delivery.summary(),
    };
    eprintln!(
        "  {system} {n} watchers: 99 % by {} µs (worst round), 100 % by {} µs; {:.0} B per watcher",
        run.t99_worst_us, run.t100_worst_us, run.bytes_per_watcher
    );
    Ok(run)
}

pub async fn run(ctx: &Ctx) -> Result<WorkloadReport> {
    let p = &ctx.p;
    let mut runs = Vec::new();
    for &n in &p.watchers {
        {
            eprintln!("watch: Meridian, 1 region, {n} watchers");
            let cluster = MeridianCluster::start(&ctx.meridian_bin, 1, None).await?;
            let pid = cluster.pid(0).context("region is running")?;
            let addr = cluster.grpc[0].clone();
            let writer = conn::meridian(&addr).await?;
            let (tx, rx) = mpsc::unbounded_channel();
            let open = open_meridian(&addr, n, p.watchers_per_connection, tx);
            runs.push(measure("meridian", n, pid, writer, open, rx, ctx).await?);
        }
        if ctx.etcd {
            eprintln!("watch: etcd, 1 member, {n} watchers");
            let cluster = EtcdCluster::start(1).await?;
            let pid = cluster.pid(0).context("member is running")?;
            let ep = cluster.endpoints[0].clone();
            let writer = conn::etcd(std::slice::from_ref(&ep)).await?;
            let (tx, rx) = mpsc::unbounded_channel();
            let open = open_etcd(&ep, n, p.watchers_per_connection, tx);
            runs.push(measure("etcd", n, pid, writer, open, rx, ctx).await?);
        }
    }
    Ok(report(ctx, runs))
}

fn report(ctx: &Ctx, runs: Vec<Run>) -> WorkloadReport {
    let p = &ctx.p;
    let mut figures = Vec::new();
    for &n in &p.watchers {
        let Some(m) = runs
            .iter()
            .find(|r| r.system == "meridian" && r.watchers == n)
        else {
            continue;
        };
        let e = runs.iter().find(|r| r.system == "etcd" && r.watchers == n);
        let el = if ctx.etcd { "" } else { "not run" };
        let mut f99 = Figure::new(
            format!("{n} watchers: 99 % received (worst round)"),
            Unit::Micros,
            Better::Lower,
        )
        .meridian("", m.t99_worst_us as f64)
        .etcd(el, e.map(|e| e.t99_worst_us as f64));
        if n >= 10_000 {
            f99 = f99.target("< 100 ms", m.t99_worst_us < 100_000);
        }
        figures.push(f99);
        figures.push(
            Figure::new(
                format!("{n} watchers: 100 % received (worst round)"),
                Unit::Micros,
                Better::Lower,
            )
            .meridian("", m.t100_worst_us as f64)
            .etcd(el, e.map(|e| e.t100_worst_us as f64)),
        );
        figures.push(
            Figure::new(
                format!("{n} watchers: delivery p99 (all rounds)"),
                Unit::Micros,
                Better::Lower,
            )
            .meridian("", m.delivery.p99_us as f64)
            .etcd(el, e.map(|e| e.delivery.p99_us as f64)),
        );
        let mut fm = Figure::new(
            format!("{n} watchers: memory per idle watcher"),
            Unit::Bytes,
            Better::Lower,
        )
        .meridian("", m.bytes_per_watcher)
        .etcd(el, e.map(|e| e.bytes_per_watcher));
        if let Some(e) = e {
            fm = fm.target("≤ etcd", m.bytes_per_watcher <= e.bytes_per_watcher);
        }
        figures.push(fm);
    }
    let series = runs
        .iter()
        .map(|r| Series {
            system: r.system.to_string(),
            label: format!("{} watchers, delivery", r.watchers),
            summary: r.delivery.clone(),
        })
        .collect();
    WorkloadReport {
        columns: None,
        name: "watch".into(),
        title: "Watch fan-out".into(),
        setup: format!(
            "Watchers on one prefix, one gRPC stream each, {} per HTTP/2 connection; {} measured rounds of one write each, 200 ms apart, after a warm-up round. Delays run from the start of the write to the event's arrival in the client. Memory: server RSS after 2 s idle minus before the watchers opened, over N. Meridian: 1 region; etcd: 1 member.",
            p.watchers_per_connection, p.watch_rounds
        ),
        figures,
        series,
        notes: Vec::new(),
        raw: serde_json::to_value(&runs).unwrap_or_default(),
    }
}
