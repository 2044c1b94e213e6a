//! Config writes from the home region and from a non-home region, side by
//! side (issue 19, item 7). A configuration `set` sent to a region that is
//! not the environment's home is forwarded to the home's leader; the
//! forwarding region then reads its own write back, so it must learn of the
//! commit at once, not at the next heartbeat (which cost ~145 ms before).
//!
//! Two clusters: 3 regions on loopback, then 3 regions with WAN latency
//! through `meridian-netlab`. On each, one client beside `eu` (the home) and
//! one beside `us` set a key of environment `bench/cfg`, one request at a
//! time. etcd has no configuration layer, so it is not run here.

use std::time::Instant;

use anyhow::{Context, Result};
use meridian_proto::v1::config_client::ConfigClient;
use meridian_proto::v1::{
    config_op, ConfigOp, ConfigWriteRequest, CreateNamespaceRequest, GetConfigRequest,
    NamespaceRef, PutOp,
};
use serde::Serialize;
use tonic::transport::Channel;

use super::Ctx;
use crate::harness::{MeridianCluster, Wan, REGIONS};
use crate::report::{Better, Figure, Series, Unit, WorkloadReport};
use crate::stats::{Latency, Summary};

#[derive(Clone, Serialize)]
pub struct Run {
    pub network: String,
    pub region: &'static str,
    /// What the network alone costs a write from this region, in µs.
    pub floor_us: u64,
    /// Measured round trip to the home region through the whole stack: p50
    /// of a linearizable config read from this region (one ReadIndex round
    /// trip to the home leader, then a local read), in µs; 0 at the home.
    pub to_home_rtt_us: u64,
    pub latency: Summary,
}

async fn client(addr: &str) -> Result<ConfigClient<Channel>> {
    ConfigClient::connect(format!("http://{addr}"))
        .await
        .with_context(|| format!("connecting to the Config service at {addr}"))
}

fn ns() -> Option<NamespaceRef> {
    Some(NamespaceRef {
        project: "bench".into(),
        environment: "cfg".into(),
    })
}

async fn set(c: &mut ConfigClient<Channel>, key: &str, i: usize) -> Result<()> {
    c.write(ConfigWriteRequest {
        ns: ns(),
        ops: vec![ConfigOp {
            op: Some(config_op::Op::Put(PutOp {
                key: key.into(),
                value_json: i.to_string(),
                if_version: None,
                secret: None,
            })),
        }],
        author: "bench".into(),
        message: String::new(),
        idempotency_key: String::new(),
    })
    .await
    .with_context(|| format!("config set {key}"))?;
    Ok(())
}

async fn measure(network: &str, wan: Option<&Wan>, ctx: &Ctx, runs: &mut Vec<Run>) -> Result<()> {
    let p = &ctx.p;
    let cluster = MeridianCluster::start(&ctx.meridian_bin, 3, wan).await?;
    cluster
        .wait_home_leader(0, std::time::Duration::from_secs(30))
        .await?;
    let mut home = client(&cluster.grpc[0]).await?;
    home.create_namespace(CreateNamespaceRequest {
        project: "bench".into(),
        environment: "cfg".into(),
        home_region: "eu".into(),
        mode: "quorum".into(),
        ..Default::default()
    })
    .await
    .context("creating bench/cfg")?;
    let quorum_rtt_ms = wan.map_or(0, |w| 2 * w.one_way_ms(0, 1).min(w.one_way_ms(0, 2)));
    for r in [0usize, 1] {
        let mut c = client(&cluster.grpc[r]).await?;
        let to_home_rtt_ms = wan.map_or(0, |w| 2 * w.one_way_ms(r, 0));
        let key = format!("services.s{r}.limit");
        // Warm-up: connections, the namespace known everywhere.
        for i in 0..5 {
            set(&mut c, &key, i).await?;
        }
        let mut lat = Latency::new();
        for i in 0..p.config_writes.max(1) {
            let t0 = Instant::now();
            set(&mut c, &key, i).await?;
            lat.record(t0.elapsed());
        }
        let s = lat.summary();
        let mut rtt = Latency::new();
        if r != 0 {
            for _ in 0..50 {
                let t0 = Instant::now();
                c.get_config(GetConfigRequest {
                    ns: ns(),
                    path: key.clone(),
                    read: None,
                    default_json: None,
                })
                .await
                .context("linearizable config get")?;
                rtt.record(t0.elapsed());
            }
        }
        let to_home_rtt_us = if r == 0 { 0 } else { rtt.summary().p50_us };
        eprintln!(
            "  {network}: config set from {} ({}): p50 {} µs, p99 {} µs",
            REGIONS[r],
            if r == 0 { "home" } else { "not home" },
            s.p50_us,
            s.p99_us
        );
        runs.push(Run {
            network: network.into(),
            region: REGIONS[r],
            floor_us: (to_home_rtt_ms + quorum_rtt_ms) * 1000,
            to_home_rtt_us,
            latency: s,
        });
    }
    Ok(())
}

pub async fn run(ctx: &Ctx) -> Result<WorkloadReport> {
    let p = &ctx.p;
    let mut runs = Vec::new();
    eprintln!("config-write: Meridian, 3 regions on loopback");
    measure("loopback", None, ctx, &mut runs).await?;
    let [eu_us, us_ap, eu_ap] = p.wan_ms;
    let wan = Wan {
        links: vec![(0, 1, eu_us), (1, 2, us_ap), (0, 2, eu_ap)],
    };
    eprintln!(
        "config-write: Meridian, 3 regions through the lab ({eu_us}/{us_ap}/{eu_ap} ms one way)"
    );
    measure("WAN", Some(&wan), ctx, &mut runs).await?;
    Ok(report(ctx, &runs))
}

fn report(ctx: &Ctx, runs: &[Run]) -> WorkloadReport {
    let p = &ctx.p;
    let mut figures = Vec::new();
    for r in runs {
        let home = r.region == "eu";
        for (name, v) in [("p50", r.latency.p50_us), ("p99", r.latency.p99_us)] {
            let mut f = Figure::new(
                format!(
                    "{}: config set from {} ({}) {name}",
                    r.network,
                    r.region,
                    if home { "home" } else { "not home" }
                ),
                Unit::Micros,
                Better::Lower,
            )
            .meridian("", v as f64)
            .etcd("no config layer", None);
            if !home && name == "p50" {
                // The home region's run on the same network.
                let (home_p50, home_floor_us) = runs
                    .iter()
                    .find(|h| h.network == r.network && h.region == "eu")
                    .map_or((0, 0), |h| (h.latency.p50_us, h.floor_us));
                f = if r.network == "loopback" {
                    f.target(
                        format!(
                            "within 3x of home ({:.1}x)",
                            v as f64 / home_p50.max(1) as f64
                        ),
                        v <= 3 * home_p50,
                    )
                } else {
                    // The round trip as measured through the lab and the
                    // stack (the nominal one is the links' latency alone).
                    let nominal_us = r.floor_us.saturating_sub(home_floor_us);
                    let rtt_us = r.to_home_rtt_us.max(nominal_us);
                    f.target(
                        format!(
                            "within one round trip to home ({:.1} ms measured, {} ms nominal) of home's p50 ({:.1} ms over)",
                            rtt_us as f64 / 1000.0,
                            nominal_us / 1000,
                            v.saturating_sub(home_p50) as f64 / 1000.0
                        ),
                        v <= home_p50 + rtt_us,
                    )
                };
            }
            figures.push(f);
        }
    }
    let series = runs
        .iter()
        .map(|r| Series {
            system: "meridian".into(),
            label: format!("{}: {}", r.network, r.region),
            summary: r.latency.clone(),
        })
        .collect();
    let [a, b, c] = p.wan_ms;
    WorkloadReport {
        columns: None,
        name: "config-write".into(),
        title: "Config writes from the home region and from another region".into(),
        setup: format!(
            "3 regions, environment `bench/cfg` homed in eu (quorum). A client beside eu and one beside us each set one key {} times, one request at a time (`Config.Write`, one put). First on loopback, then through the lab with one-way latency eu↔us {a} ms, us↔ap {b} ms, eu↔ap {c} ms.",
            p.config_writes
        ),
        figures,
        series,
        notes: vec!["etcd is not in this table: it has no configuration layer (environments, schemas, rendering).".into()],
        raw: serde_json::to_value(runs).unwrap_or_default(),
    }
}
