//! Failover: three regions (three etcd members) under a steady write load;
//! the leader of the written group (etcd: the cluster's leader) is killed
//! with SIGKILL. Measured:
//! - RTO: from the kill to the first acknowledgement of a write *issued after*
//!   the kill (a write acknowledged just after the kill but committed before
//!   it would flatter the figure);
//! - the longest stretch with no write acknowledged at all;
//! - acknowledged writes lost: every acknowledged write has its own key, and
//!   each is read back linearizably from a survivor at the end. Must be 0.
//!
//! Clients retry as a production client would: Meridian's `Client` (every
//! region known, idempotent retries with the same request id), etcd-client
//! with every endpoint and a retry of the same put on any error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::future::try_join_all;
use meridian_proto::client::{Client, ClientOptions};
use serde::Serialize;

use super::Ctx;
use crate::conn::{self, Conn, Level, NS};
use crate::harness::{EtcdCluster, MeridianCluster, REGIONS};
use crate::report::{Better, Figure, Series, Unit, WorkloadReport};
use crate::stats::{Latency, Summary};

#[derive(Clone, Serialize)]
pub struct Run {
    pub system: &'static str,
    pub killed: String,
    pub acknowledged: u64,
    /// Writes whose outcome the client never learned (given up or cut off).
    pub unknown: u64,
    pub lost: u64,
    pub rto_us: u64,
    pub longest_gap_us: u64,
    pub writes_per_s_before: f64,
    pub latency: Summary,
}

struct Ack {
    key: String,
    issued: Instant,
    acked: Instant,
}

enum Writer {
    Meridian(Client),
    Etcd(Box<etcd_client::Client>),
}

impl Writer {
    /// One write, retried until acknowledged or `stop`; None: never
    /// acknowledged. A retry after Meridian's client gave up is a new call
    /// (a new request id); the key is unique, so applying both writes the
    /// same value. etcd puts are retried the same way.
    async fn write(&mut self, key: &str, stop: &AtomicBool) -> Option<()> {
        loop {
            let ok = match self {
                Writer::Meridian(c) => c.put(NS, key, key.as_bytes()).await.is_ok(),
                Writer::Etcd(c) => c.put(key, key.as_bytes(), None).await.is_ok(),
            };
            if ok {
                return Some(());
            }
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn drive(
    system: &'static str,
    writers: Vec<Writer>,
    ctx: &Ctx,
    kill: impl FnOnce() -> Result<String>,
) -> Result<(Vec<Ack>, u64, Instant, String)> {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(w, mut wr)| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut acks = Vec::new();
                let mut unknown = 0u64;
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let key = format!("fo/{w}/{seq}");
                    let issued = Instant::now();
                    match wr.write(&key, &stop).await {
                        Some(()) => acks.push(Ack {
                            key,
                            issued,
                            acked: Instant::now(),
                        }),
                        None => unknown += 1,
                    }
                }
                (acks, unknown)
            })
        })
        .collect();
    tokio::time::sleep(ctx.p.failover_before).await;
    let killed_at = Instant::now();
    let killed = kill()?;
    eprintln!("  {system}: killed {killed}");
    tokio::time::sleep(ctx.p.failover_after).await;
    stop.store(true, Ordering::Relaxed);
    let mut acks = Vec::new();
    let mut unknown = 0;
    for t in tasks {
        let (a, u) = t.await.context("writer task")?;
        acks.extend(a);
        unknown += u;
    }
    acks.sort_by_key(|a| a.acked);
    Ok((acks, unknown, killed_at, killed))
}

/// Reads every acknowledged key back through `conns`; returns how many are missing.
async fn lost(acks: &[Ack], conns: &[Conn], level: Level) -> Result<u64> {
    let chunks: Vec<Vec<String>> = acks
        .chunks(acks.len().div_ceil(conns.len()).max(1))
        .map(|c| c.iter().map(|a| a.key.clone()).collect())
        .collect();
    let counts = try_join_all(chunks.into_iter().enumerate().map(|(i, keys)| {
        let mut c = conns[i % conns.len()].clone();
        async move {
            let mut missing = 0u64;
            for k in keys {
                match c.get(&k, level).await? {
                    Some(len) if len == k.len() => {}
                    _ => missing += 1,
                }
            }
            anyhow::Ok(missing)
        }
    }))
    .await?;
    Ok(counts.into_iter().sum())
}

fn summarize(
    system: &'static str,
    killed: String,
    acks: &[Ack],
    unknown: u64,
    lost: u64,
    killed_at: Instant,
    ctx: &Ctx,
) -> Run {
    let rto = acks
        .iter()
        .filter(|a| a.issued >= killed_at)
        .map(|a| a.acked.saturating_duration_since(killed_at))
        .min()
        .unwrap_or(ctx.p.failover_after);
    let mut gap = Duration::ZERO;
    for w in acks.windows(2) {
        gap = gap.max(w[1].acked.saturating_duration_since(w[0].acked));
    }
    let before = acks.iter().filter(|a| a.acked < killed_at).count() as f64;
    let mut lat = Latency::new();
    for a in acks {
        lat.record(a.acked.saturating_duration_since(a.issued));
    }
    let run = Run {
        system,
        killed,
        acknowledged: acks.len() as u64,
        unknown,
        lost,
        rto_us: rto.as_micros() as u64,
        longest_gap_us: gap.as_micros() as u64,
        writes_per_s_before: before / ctx.p.failover_before.as_secs_f64(),
        latency: lat.summary(),
    };
    eprintln!(
        "  {system}: RTO {} ms, longest gap {} ms, {} acknowledged, {} lost, {} unknown",
        run.rto_us / 1000,
        run.longest_gap_us / 1000,
        run.acknowledged,
        run.lost,
        run.unknown
    );
    run
}

pub async fn run(ctx: &Ctx) -> Result<WorkloadReport> {
    let p = &ctx.p;
    let mut runs = Vec::new();
    {
        eprintln!(
            "failover: Meridian, 3 regions, {} writers",
            p.failover_writers
        );
        let mut cluster = MeridianCluster::start(&ctx.meridian_bin, 3, None).await?;
        let opts = ClientOptions {
            connect_timeout: Duration::from_millis(300),
            attempt_timeout: Duration::from_secs(2),
            attempts_max: 20,
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            probe_interval: Duration::from_secs(1),
            token: None,
            tls: None,
        };
        // The bench's regions serve plaintext (as its etcd does).
        let urls: Vec<String> = cluster.grpc.iter().map(|a| format!("http://{a}")).collect();
        let mut writers = Vec::new();
        for _ in 0..p.failover_writers {
            writers.push(Writer::Meridian(
                Client::connect(&urls, opts.clone()).await?,
            ));
        }
        let leader = cluster.leader_of(0, 0).await?;
        let cl = &mut cluster;
        let (acks, unknown, killed_at, killed) = drive("meridian", writers, ctx, || {
            cl.kill9(leader);
            Ok(format!(
                "region {} (leader of the written group)",
                REGIONS[leader]
            ))
        })
        .await?;
        let survivor = (leader + 1) % 3;
        let conns = super::connect_n(4, |_| conn::meridian(&cluster.grpc[survivor])).await?;
        let lost = lost(&acks, &conns, Level::Linearizable).await?;
        runs.push(summarize(
            "meridian", killed, &acks, unknown, lost, killed_at, ctx,
        ));
    }
    if ctx.etcd {
        eprintln!("failover: etcd, 3 members, {} writers", p.failover_writers);
        let mut cluster = EtcdCluster::start(3).await?;
        let mut writers = Vec::new();
        for _ in 0..p.failover_writers {
            let c = etcd_client::Client::connect(
                &cluster.endpoints,
                Some(
                    etcd_client::ConnectOptions::new()
                        .with_connect_timeout(Duration::from_millis(300))
                        .with_timeout(Duration::from_secs(2)),
                ),
            )
            .await?;
            writers.push(Writer::Etcd(Box::new(c)));
        }
        let leader = cluster.leader_index_via(0).await?;
        let cl = &mut cluster;
        let (acks, unknown, killed_at, killed) = drive("etcd", writers, ctx, || {
            cl.kill9(leader);
            Ok(format!("member m{leader} (the leader)"))
        })
        .await?;
        let survivor = (leader + 1) % 3;
        let ep = vec![cluster.endpoints[survivor].clone()];
        let conns = super::connect_n(4, |_| conn::etcd(&ep)).await?;
        let lost = lost(&acks, &conns, Level::EtcdLinearizable).await?;
        runs.push(summarize(
            "etcd", killed, &acks, unknown, lost, killed_at, ctx,
        ));
    }
    Ok(report(ctx, runs))
}

fn report(ctx: &Ctx, runs: Vec<Run>) -> WorkloadReport {
    let p = &ctx.p;
    let m = runs.iter().find(|r| r.system == "meridian");
    let e = runs.iter().find(|r| r.system == "etcd");
    let el = if ctx.etcd { "" } else { "not run" };
    let mut figures = Vec::new();
    if let Some(m) = m {
        figures.push(
            Figure::new(
                "RTO (kill → first ack of a write issued after it)",
                Unit::Micros,
                Better::Lower,
            )
            .meridian("", m.rto_us as f64)
            .etcd(el, e.map(|e| e.rto_us as f64)),
        );
        figures.push(
            Figure::new(
                "longest time with no write acknowledged",
                Unit::Micros,
                Better::Lower,
            )
            .meridian("", m.longest_gap_us as f64)
            .etcd(el, e.map(|e| e.longest_gap_us as f64)),
        );
        figures.push(
            Figure::new("acknowledged writes lost", Unit::Count, Better::Lower)
                .meridian("", m.lost as f64)
                .etcd(el, e.map(|e| e.lost as f64))
                .target("0", m.lost == 0),
        );
        figures.push(
            Figure::new("acknowledged writes (checked)", Unit::Count, Better::Higher)
                .meridian("", m.acknowledged as f64)
                .etcd(el, e.map(|e| e.acknowledged as f64)),
        );
        figures.push(
            Figure::new("writes/s before the kill", Unit::OpsPerSec, Better::Higher)
                .meridian("", m.writes_per_s_before)
                .etcd(el, e.map(|e| e.writes_per_s_before)),
        );
        figures.push(
            Figure::new("slowest acknowledged write", Unit::Micros, Better::Lower)
                .meridian("", m.latency.max_us as f64)
                .etcd(el, e.map(|e| e.latency.max_us as f64)),
        );
    }
    let series = runs
        .iter()
        .map(|r| Series {
            system: r.system.to_string(),
            label: "write latency across the kill".into(),
            summary: r.latency.clone(),
        })
        .collect();
    WorkloadReport {
        columns: None,
        name: "failover".into(),
        title: "Failover: SIGKILL the leader under write load".into(),
        setup: format!(
            "3 regions / 3 members on loopback; {} writers, each writing its own new key at a time, retrying until acknowledged; {:.0} s of load, then SIGKILL of the leader, then {:.0} s more. Every acknowledged key is then read back linearizably from a survivor. Meridian quorum mode; default election timeouts on both (Meridian 1 s, etcd 1 s).",
            p.failover_writers,
            p.failover_before.as_secs_f64(),
            p.failover_after.as_secs_f64()
        ),
        figures,
        series,
        notes: vec![format!(
            "Writes whose outcome the client never learned (still retrying when the run stopped): {}.",
            runs.iter().map(|r| format!("{} {}", r.system, r.unknown)).collect::<Vec<_>>().join(", ")
        )],
        raw: serde_json::to_value(&runs).unwrap_or_default(),
    }
}
