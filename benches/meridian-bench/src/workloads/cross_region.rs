//! Cross-region: the 3-region cluster with WAN latency between regions, added
//! by `meridian-netlab` (a userspace UDP relay: this kernel has no netem).
//! A client beside each region reads the namespace homed at `eu` at each
//! consistency level and writes to it (quorum), one request at a time, so
//! the figures are latencies, not throughput. Each figure is set beside the
//! floor the WAN imposes: a quorum write needs the home's round trip to its
//! nearest peer, plus the forward to the home and back for a remote client.
//!
//! etcd is not run here: its peers speak TCP, and the lab relays UDP.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::{value, Ctx};
use crate::conn::{self, Level};
use crate::harness::{MeridianCluster, Wan, REGIONS};
use crate::report::{Better, Figure, Series, Unit, WorkloadReport};
use crate::stats::{Latency, Summary};

#[derive(Clone, Serialize)]
pub struct Run {
    pub region: &'static str,
    pub op: String,
    /// What the WAN alone costs this operation, in µs.
    pub floor_us: u64,
    pub latency: Summary,
}

pub async fn run(ctx: &Ctx) -> Result<WorkloadReport> {
    let p = &ctx.p;
    let [eu_us, us_ap, eu_ap] = p.wan_ms;
    let wan = Wan {
        links: vec![(0, 1, eu_us), (1, 2, us_ap), (0, 2, eu_ap)],
    };
    eprintln!(
        "cross-region: Meridian, 3 regions through the lab ({eu_us}/{us_ap}/{eu_ap} ms one way)"
    );
    let cluster = MeridianCluster::start(&ctx.meridian_bin, 3, Some(&wan)).await?;
    // Quorum: eu and its nearest peer.
    let quorum_rtt_ms = 2 * eu_us.min(eu_ap);
    let mut seed = conn::meridian(&cluster.grpc[0]).await?;
    for i in 0..16 {
        seed.put(&format!("x{i}"), value(i, 0, p.value_bytes))
            .await?;
    }
    // Let every region apply the seed writes before stale reads check them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut runs = Vec::new();
    for (r, name) in REGIONS.iter().enumerate() {
        let mut c = conn::meridian(&cluster.grpc[r]).await?;
        let to_home_rtt_ms = 2 * wan.one_way_ms(r, 0);
        let ops: [(&str, Option<Level>, usize, u64); 4] = [
            ("stale read", Some(Level::Stale), p.cross_reads, 0),
            ("bounded read", Some(Level::Bounded), p.cross_reads, 0),
            (
                "linearizable read",
                Some(Level::Linearizable),
                p.cross_reads / 2,
                to_home_rtt_ms,
            ),
            (
                "quorum write",
                None,
                p.cross_writes,
                to_home_rtt_ms + quorum_rtt_ms,
            ),
        ];
        for (op, level, count, floor_ms) in ops {
            let mut lat = Latency::new();
            for i in 0..count.max(1) {
                let k = format!("x{}", i % 16);
                let t0 = Instant::now();
                match level {
                    Some(l) => {
                        let got = c
                            .get(&k, l)
                            .await
                            .with_context(|| format!("{op} in {name}"))?;
                        anyhow::ensure!(got.is_some(), "{op} in {name}: {k} not found");
                    }
                    None => c
                        .put(&k, value(i, 1, p.value_bytes))
                        .await
                        .with_context(|| format!("{op} in {name}"))?,
                }
                lat.record(t0.elapsed());
            }
            let s = lat.summary();
            eprintln!(
                "  {name} {op}: p50 {} µs, p99 {} µs (floor {floor_ms} ms)",
                s.p50_us, s.p99_us
            );
            runs.push(Run {
                region: name,
                op: op.into(),
                floor_us: floor_ms * 1000,
                latency: s,
            });
        }
    }
    let stats = cluster
        .lab
        .as_ref()
        .map(|l| format!("{:?}", l.stats))
        .unwrap_or_default();
    Ok(report(ctx, runs, stats))
}

fn report(ctx: &Ctx, runs: Vec<Run>, lab_stats: String) -> WorkloadReport {
    let p = &ctx.p;
    let mut figures = Vec::new();
    for r in &runs {
        for (name, v) in [("p50", r.latency.p50_us), ("p99", r.latency.p99_us)] {
            let mut f = Figure::new(
                format!("{}: {} {name}", r.region, r.op),
                Unit::Micros,
                Better::Lower,
            )
            .meridian("", v as f64)
            .etcd("not run (TCP peers)", None);
            if name == "p50" {
                f = f.target(
                    format!("floor {} ms; within floor + 5 ms", r.floor_us / 1000),
                    v <= r.floor_us + 5_000,
                );
            }
            figures.push(f);
        }
    }
    let series = runs
        .iter()
        .map(|r| Series {
            system: "meridian".into(),
            label: format!("{}: {}", r.region, r.op),
            summary: r.latency.clone(),
        })
        .collect();
    let [a, b, c] = p.wan_ms;
    WorkloadReport {
        columns: None,
        name: "cross-region".into(),
        title: "Cross-region (WAN through meridian-netlab)".into(),
        setup: format!(
            "3 regions on loopback, QUIC between them through the lab with one-way latency eu↔us {a} ms, us↔ap {b} ms, eu↔ap {c} ms. Namespace `eu` (home eu, quorum). A client beside each region, one request at a time: {} reads per read level ({} linearizable), {} writes.",
            p.cross_reads,
            p.cross_reads / 2,
            p.cross_writes
        ),
        figures,
        series,
        notes: vec![
            "etcd is not in this table: its members replicate over TCP and the lab relays UDP, so it cannot be put behind the same WAN.".into(),
            format!("Lab counters: {lab_stats}"),
        ],
        raw: serde_json::to_value(&runs).unwrap_or_default(),
    }
}
