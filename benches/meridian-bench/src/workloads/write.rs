//! Writes: put and compare-and-set throughput and latency, closed loop,
//! fsynced on both sides (Meridian syncs RocksDB's WAL before acknowledging a
//! quorum write; etcd fsyncs its WAL). One Meridian region against one etcd
//! member, then three regions against a three-member etcd cluster, clients
//! spread over every region or member (writes reaching a non-leader are
//! forwarded by both systems). Each client compare-and-sets its own keys, so
//! every CAS is expected to succeed; a failed one is counted and reported.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::{connect_n, value, Ctx};
use crate::conn::{self, Conn};
use crate::harness::{EtcdCluster, MeridianCluster};
use crate::report::{tail_figures, Better, Figure, Series, Unit, WorkloadReport};
use crate::stats::{rate, Errors, Latency, Summary};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Kind {
    Put,
    Cas,
}

#[derive(Clone, Serialize)]
pub struct Run {
    pub system: &'static str,
    pub members: usize,
    pub kind: Kind,
    pub ops: u64,
    pub cas_failed: u64,
    pub errors: Errors,
    pub elapsed_s: f64,
    pub ops_per_s: f64,
    pub latency: Summary,
}

/// Keys each client cycles through.
const KEYS_PER_CLIENT: usize = 16;

pub(super) async fn drive(
    conns: &[Conn],
    kind: Kind,
    clients: usize,
    dur: Duration,
    value_bytes: usize,
    phase: &str,
) -> Result<(Latency, u64, Errors, Duration)> {
    let start = Instant::now();
    let deadline = start + dur;
    let tasks: Vec<_> = (0..clients)
        .map(|t| {
            let mut c = conns[t % conns.len()].clone();
            let prefix = format!("{phase}-{t}-");
            tokio::spawn(async move {
                let mut lat = Latency::new();
                let (mut failed, mut errors) = (0u64, Errors::default());
                // Versions this client wrote (it is the only writer of its keys).
                let mut versions: BTreeMap<usize, u64> = BTreeMap::new();
                let mut n = 0usize;
                while Instant::now() < deadline {
                    let k = n % KEYS_PER_CLIENT;
                    n += 1;
                    let key = format!("{prefix}{k}");
                    let v = value(k, n as u64, value_bytes);
                    let t0 = Instant::now();
                    match kind {
                        Kind::Put => match c.put(&key, v).await {
                            Ok(()) => lat.record(t0.elapsed()),
                            Err(e) => errors.record(&e),
                        },
                        Kind::Cas => {
                            let expected = versions.get(&k).copied().unwrap_or(0);
                            match c.cas(&key, expected, v).await {
                                Ok(true) => {
                                    lat.record(t0.elapsed());
                                    versions.insert(k, expected + 1);
                                }
                                Ok(false) => failed += 1,
                                Err(e) => errors.record(&e),
                            }
                        }
                    }
                }
                (lat, failed, errors)
            })
        })
        .collect();
    let mut lat = Latency::new();
    let (mut failed, mut errors) = (0, Errors::default());
    for t in tasks {
        let (l, f, e) = t.await.context("client task")?;
        lat.add(&l);
        failed += f;
        errors.add(&e);
    }
    Ok((lat, failed, errors, start.elapsed()))
}

async fn measure(
    system: &'static str,
    members: usize,
    conns: &[Conn],
    ctx: &Ctx,
) -> Result<Vec<Run>> {
    let p = &ctx.p;
    let mut out = Vec::new();
    for (i, kind) in [Kind::Put, Kind::Cas].into_iter().enumerate() {
        drive(
            conns,
            kind,
            p.write_clients,
            p.warmup,
            p.value_bytes,
            &format!("w{i}"),
        )
        .await?;
        let (lat, failed, errors, elapsed) = drive(
            conns,
            kind,
            p.write_clients,
            p.duration,
            p.value_bytes,
            &format!("m{i}"),
        )
        .await?;
        let run = Run {
            system,
            members,
            kind,
            ops: lat.len(),
            cas_failed: failed,
            errors,
            elapsed_s: elapsed.as_secs_f64(),
            ops_per_s: rate(lat.len(), elapsed),
            latency: lat.summary(),
        };
        eprintln!(
            "  {system} x{members} {kind:?}: {:.0} /s, p50 {} µs, p99 {} µs ({} CAS failed, {} errors)",
            run.ops_per_s, run.latency.p50_us, run.latency.p99_us, run.cas_failed, run.errors.describe()
        );
        out.push(run);
    }
    Ok(out)
}

pub async fn run(ctx: &Ctx) -> Result<WorkloadReport> {
    let p = &ctx.p;
    let mut runs = Vec::new();
    for members in [1usize, 3] {
        {
            eprintln!("write: Meridian, {members} region(s)");
            let cluster = MeridianCluster::start(&ctx.meridian_bin, members, None).await?;
            let addrs = cluster.grpc.clone();
            let conns = connect_n(p.connections.max(members), |i| {
                let a = addrs[i % addrs.len()].clone();
                async move { conn::meridian(&a).await }
            })
            .await?;
            runs.extend(measure("meridian", members, &conns, ctx).await?);
        }
        if ctx.etcd {
            eprintln!("write: etcd, {members} member(s)");
            let cluster = EtcdCluster::start(members).await?;
            let eps = cluster.endpoints.clone();
            let conns = connect_n(p.connections.max(members), |i| {
                let e = vec![eps[i % eps.len()].clone()];
                async move { conn::etcd(&e).await }
            })
            .await?;
            runs.extend(measure("etcd", members, &conns, ctx).await?);
        }
    }
    Ok(report(ctx, runs))
}

fn report(ctx: &Ctx, runs: Vec<Run>) -> WorkloadReport {
    let p = &ctx.p;
    let find = |s: &str, m: usize, k: Kind| {
        runs.iter()
            .find(|r| r.system == s && r.members == m && r.kind == k)
    };
    let mut figures = Vec::new();
    for members in [1usize, 3] {
        for kind in [Kind::Put, Kind::Cas] {
            let Some(m) = find("meridian", members, kind) else {
                continue;
            };
            let e = find("etcd", members, kind);
            let what = match kind {
                Kind::Put => "put",
                Kind::Cas => "CAS",
            };
            let (ml, el) = (
                format!("{members} region{}", if members > 1 { "s" } else { "" }),
                if ctx.etcd {
                    format!("{members} member{}", if members > 1 { "s" } else { "" })
                } else {
                    "not run".into()
                },
            );
            let mut f = Figure::new(format!("{what}s/s"), Unit::OpsPerSec, Better::Higher)
                .meridian(&ml, m.ops_per_s)
                .etcd(&el, e.map(|e| e.ops_per_s));
            if let Some(e) = e {
                f = f.target("≥ etcd, same member count", m.ops_per_s >= e.ops_per_s);
            }
            figures.push(f);
            figures.extend(tail_figures(
                what,
                &ml,
                &m.latency,
                &el,
                e.map(|e| &e.latency),
            ));
        }
    }
    let failed: u64 = runs.iter().map(|r| r.cas_failed).sum();
    let mut notes = vec![format!(
        "CAS that failed although each client is the only writer of its keys: {failed}."
    )];
    for r in &runs {
        if r.errors.count > 0 {
            notes.push(format!(
                "{} x{} {:?} errors: {}.",
                r.system,
                r.members,
                r.kind,
                r.errors.describe()
            ));
        }
    }
    let series = runs
        .iter()
        .map(|r| Series {
            system: r.system.to_string(),
            label: format!("{:?} x{}", r.kind, r.members),
            summary: r.latency.clone(),
        })
        .collect();
    WorkloadReport {
        columns: None,
        name: "write".into(),
        title: "Writes (fsynced): put and compare-and-set".into(),
        setup: format!(
            "{} closed-loop clients over {} connections spread across the regions or members, {} B values, {} keys per client; {:.1} s warm-up then {:.1} s measured per operation. Loopback, one system at a time.",
            p.write_clients,
            p.connections,
            p.value_bytes,
            KEYS_PER_CLIENT,
            p.warmup.as_secs_f64(),
            p.duration.as_secs_f64()
        ),
        figures,
        series,
        notes,
        raw: serde_json::to_value(&runs).unwrap_or_default(),
    }
}
