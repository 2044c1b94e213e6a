//! Read-heavy: `keys` keys of `value_bytes` bytes, many concurrent clients,
//! `reads_per_write` reads to one write, closed loop (each client issues its
//! next operation when the previous one returns). One Meridian region against
//! one etcd member; every Meridian consistency level, etcd's serializable and
//! linearizable reads. Every read is checked: the key must be found with a
//! value of the loaded length, so a fast wrong answer cannot count.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::{connect_n, key, load, value, Ctx};
use crate::conn::{self, Conn, Level};
use crate::harness::{EtcdCluster, MeridianCluster};
use crate::report::{tail_figures, Better, Figure, Series, Unit, WorkloadReport};
use crate::stats::{rate, Errors, Latency, Summary};

/// One level's measured run.
#[derive(Clone, Serialize)]
pub struct Run {
    pub system: &'static str,
    pub level: Level,
    pub reads: u64,
    pub writes: u64,
    /// Reads that found no key or a value of the wrong length.
    pub wrong: u64,
    pub errors: Errors,
    pub elapsed_s: f64,
    pub reads_per_s: f64,
    pub read_latency: Summary,
    pub write_latency: Summary,
}

struct Tally {
    reads: Latency,
    writes: Latency,
    wrong: u64,
    errors: Errors,
}

/// Closed-loop clients against `conns` for `dur`.
async fn drive(
    conns: &[Conn],
    level: Level,
    clients: usize,
    dur: Duration,
    ctx: &Ctx,
    seed: u64,
) -> Result<(Tally, Duration)> {
    let start = Instant::now();
    let deadline = start + dur;
    let (keys, value_bytes, every) = (ctx.p.keys, ctx.p.value_bytes, ctx.p.reads_per_write + 1);
    let tasks: Vec<_> = (0..clients)
        .map(|t| {
            let mut c = conns[t % conns.len()].clone();
            tokio::spawn(async move {
                let mut rng =
                    SmallRng::seed_from_u64(seed.wrapping_mul(1000).wrapping_add(t as u64));
                let mut tally = Tally {
                    reads: Latency::new(),
                    writes: Latency::new(),
                    wrong: 0,
                    errors: Errors::default(),
                };
                // Stagger the writes across clients.
                let mut n: u64 = rng.random_range(0..every);
                while Instant::now() < deadline {
                    n += 1;
                    let i = rng.random_range(0..keys);
                    let t0 = Instant::now();
                    if n.is_multiple_of(every) {
                        match c.put(&key(i), value(i, n, value_bytes)).await {
                            Ok(()) => tally.writes.record(t0.elapsed()),
                            Err(e) => tally.errors.record(&e),
                        }
                    } else {
                        match c.get(&key(i), level).await {
                            Ok(Some(len)) if len == value_bytes => tally.reads.record(t0.elapsed()),
                            Ok(_) => tally.wrong += 1,
                            Err(e) => tally.errors.record(&e),
                        }
                    }
                }
                tally
            })
        })
        .collect();
    let mut all = Tally {
        reads: Latency::new(),
        writes: Latency::new(),
        wrong: 0,
        errors: Errors::default(),
    };
    for t in tasks {
        let t = t.await.context("client task")?;
        all.reads.add(&t.reads);
        all.writes.add(&t.writes);
        all.wrong += t.wrong;
        all.errors.add(&t.errors);
    }
    Ok((all, start.elapsed()))
}

pub(super) async fn measure(
    system: &'static str,
    conns: &[Conn],
    level: Level,
    ctx: &Ctx,
) -> Result<Run> {
    let p = &ctx.p;
    drive(conns, level, p.read_clients, p.warmup, ctx, 1).await?;
    let (t, elapsed) = drive(conns, level, p.read_clients, p.duration, ctx, 2).await?;
    let run = Run {
        system,
        level,
        reads: t.reads.len(),
        writes: t.writes.len(),
        wrong: t.wrong,
        errors: t.errors.clone(),
        elapsed_s: elapsed.as_secs_f64(),
        reads_per_s: rate(t.reads.len(), elapsed),
        read_latency: t.reads.summary(),
        write_latency: t.writes.summary(),
    };
    eprintln!(
        "  {system} {}: {:.0} reads/s, p50 {} µs, p99 {} µs, p999 {} µs ({} writes, {} wrong, {} errors)",
        level.label(),
        run.reads_per_s,
        run.read_latency.p50_us,
        run.read_latency.p99_us,
        run.read_latency.p999_us,
        run.writes,
        run.wrong,
        run.errors.describe()
    );
    anyhow::ensure!(
        run.wrong == 0,
        "{system} {}: {} reads returned a missing key or a wrong-sized value",
        level.label(),
        run.wrong
    );
    Ok(run)
}

pub async fn run(ctx: &Ctx) -> Result<WorkloadReport> {
    let p = &ctx.p;
    let mut runs: Vec<Run> = Vec::new();
    {
        eprintln!("read: Meridian, 1 region, loading {} keys", p.keys);
        let cluster = MeridianCluster::start(&ctx.meridian_bin, 1, None).await?;
        let addr = cluster.grpc[0].clone();
        let conns = connect_n(p.connections, |_| conn::meridian(&addr)).await?;
        load(&conns, p.keys, p.value_bytes).await?;
        for level in [Level::Stale, Level::Bounded, Level::Linearizable] {
            runs.push(measure("meridian", &conns, level, ctx).await?);
        }
    }
    if ctx.etcd {
        eprintln!("read: etcd, 1 member, loading {} keys", p.keys);
        let cluster = EtcdCluster::start(1).await?;
        let conns = connect_n(p.connections, |_| conn::etcd(&cluster.endpoints)).await?;
        load(&conns, p.keys, p.value_bytes).await?;
        for level in [Level::EtcdSerializable, Level::EtcdLinearizable] {
            runs.push(measure("etcd", &conns, level, ctx).await?);
        }
    }
    Ok(report(ctx, runs))
}

fn report(ctx: &Ctx, runs: Vec<Run>) -> WorkloadReport {
    let p = &ctx.p;
    let find = |l: Level| runs.iter().find(|r| r.level == l);
    let mut figures = Vec::new();
    let pairs = [
        (Level::Stale, Level::EtcdSerializable),
        (Level::Bounded, Level::EtcdSerializable),
        (Level::Linearizable, Level::EtcdLinearizable),
        (Level::Linearizable, Level::EtcdSerializable),
    ];
    for (ml, el) in pairs {
        let Some(m) = find(ml) else { continue };
        let e = find(el);
        let mut f = Figure::new("reads/s", Unit::OpsPerSec, Better::Higher)
            .meridian(ml.label(), m.reads_per_s)
            .etcd(
                if ctx.etcd { el.label() } else { "not run" },
                e.map(|e| e.reads_per_s),
            );
        if let (Some(e), true) = (e, el == Level::EtcdSerializable) {
            let met = m.reads_per_s >= 2.0 * e.reads_per_s
                && m.read_latency.p99_us <= e.read_latency.p99_us;
            f = f.target("≥ 2× etcd serializable at ≤ its p99", met);
        }
        figures.push(f);
        // The last pair only restates throughput (strongest against weakest).
        if el == Level::EtcdSerializable && ml == Level::Linearizable {
            continue;
        }
        figures.extend(tail_figures(
            "read",
            ml.label(),
            &m.read_latency,
            if ctx.etcd { el.label() } else { "not run" },
            e.map(|e| &e.read_latency),
        ));
    }
    let mut notes = Vec::new();
    if let Some(m) = find(Level::Linearizable) {
        notes.push(format!(
            "Writes in the mix (1 per {} reads), during Meridian's linearizable run: {} writes, p99 {} µs.",
            p.reads_per_write, m.writes, m.write_latency.p99_us
        ));
    }
    for r in &runs {
        notes.push(format!(
            "{} {}: errors {}.",
            r.system,
            r.level.label(),
            r.errors.describe()
        ));
    }
    let series = runs
        .iter()
        .map(|r| Series {
            system: r.system.to_string(),
            label: format!("{} read", r.level.label()),
            summary: r.read_latency.clone(),
        })
        .collect();
    WorkloadReport {
        columns: None,
        name: "read".into(),
        title: "Read-heavy".into(),
        setup: format!(
            "{} keys of {} B; {} closed-loop clients over {} HTTP/2 connections; {} reads per write; {:.1} s warm-up then {:.1} s measured per level. Meridian: 1 region; etcd: 1 member. Same machine, one system at a time.",
            p.keys,
            p.value_bytes,
            p.read_clients,
            p.connections,
            p.reads_per_write,
            p.warmup.as_secs_f64(),
            p.duration.as_secs_f64()
        ),
        figures,
        series,
        notes,
        raw: serde_json::to_value(&runs).unwrap_or_default(),
    }
}
