//! `meridian drill`: failover drills against a running cluster, with
//! measured RTO, RPO and catch-up, judged against bounds (docs/operations.md,
//! "Failover drills").
//!
//! A drill talks to every region on its own (one channel per endpoint, no
//! failover between them), so it knows which region each write went
//! through. It runs a canary load (open loop: writes start on a fixed
//! schedule whatever the latency, so a stalled region does not slow the
//! clock that measures it), makes the region under test suffer a fault
//! through the admin-only `Drill.InjectFault` (self-reverting: the region's
//! own deadline ends the fault if this process dies), measures, clears the
//! fault, verifies every acknowledged write is still there, and prints a
//! report (table or JSON, optionally an SVG timeline). The report is kept in
//! the cluster (`Drill.RecordDrill`, audited) and the process exits non-zero
//! when a figure breaks its bound, so drills can run in CI.
//!
//! - `canary.rs`: the load and its log of acknowledgements.
//! - `report.rs`: figures, checks, verdict, the table and the SVG.
//! - `scenarios.rs`: planned, region-loss and partition.

mod canary;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use meridian_proto::client::AuthChannel;
use meridian_proto::v1::admin_client::AdminClient;
use meridian_proto::v1::drill_client::DrillClient;
use meridian_proto::v1::{ClusterStatusRequest, ClusterStatusResponse, PingRequest};

use crate::auth_cmd::Target;
use crate::output::{status_err, Output};

#[derive(Subcommand)]
pub enum DrillCmd {
    /// Move every group REGION leads to another region under a canary load,
    /// then back: the write pause per group, and nothing lost.
    Planned {
        #[command(flatten)]
        common: Common,
    },
    /// REGION fails (a self-reverting fault): RTO, RPO and how long it takes
    /// to catch up after it returns.
    RegionLoss {
        #[command(flatten)]
        common: Common,
        /// stop: crash-like (no answers; restarts from disk when the fault
        /// ends); isolate: cut off from every peer; pause: takes no input.
        #[arg(long, value_enum, default_value_t = FaultArg::Stop)]
        fault: FaultArg,
    },
    /// Cut REGION off from the others, then check that reads at each
    /// consistency level behave as documented on both sides of the cut.
    Partition {
        #[command(flatten)]
        common: Common,
    },
    /// Drill reports kept in the cluster, newest first.
    History {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// planned, region-loss or partition.
        #[arg(long)]
        scenario: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum FaultArg {
    Stop,
    Isolate,
    Pause,
}

impl FaultArg {
    fn as_str(self) -> &'static str {
        match self {
            FaultArg::Stop => "stop",
            FaultArg::Isolate => "isolate",
            FaultArg::Pause => "pause",
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct Common {
    /// The region under test.
    #[arg(long)]
    pub region: String,
    /// How long the fault lasts (region-loss, partition).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub fault_for: Duration,
    /// Canary load before the fault (and before each transfer).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Canary writes started per second through each region, per canary
    /// namespace.
    #[arg(long, default_value_t = 20)]
    pub rate: u32,
    /// Bound on RTO: fault to the first write to the region's namespaces
    /// acknowledged in another region.
    #[arg(long, default_value_t = 10_000)]
    pub rto_ms_max: u64,
    /// Bound on catch-up: fault cleared to the region having applied every
    /// write acknowledged before.
    #[arg(long, default_value_t = 30_000)]
    pub catch_up_ms_max: u64,
    /// Bound on a planned transfer's write pause (planned).
    #[arg(long, default_value_t = 2_000)]
    pub pause_ms_max: u64,
    /// Also load an async canary namespace (RPO judged against its budget).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub with_async: bool,
    /// The async canary's RPO budget, if the drill creates it.
    #[arg(long, default_value_t = 5_000)]
    pub async_rpo_budget_ms: u64,
    /// Write the timeline as SVG to this file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// The region's own deadline on the fault lies this far past the moment
    /// the drill means to clear it: if this process dies, the region reverts
    /// by itself then.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub deadline_margin: Duration,
    /// Do not keep the report in the cluster.
    #[arg(long)]
    pub no_record: bool,
    /// The drill's id (default: <scenario>-<region>-<unix ms>).
    #[arg(long)]
    pub id: Option<String>,
}

/// One region as the drill reaches it.
#[derive(Clone)]
pub struct Region {
    pub id: usize,
    pub name: String,
    pub ch: AuthChannel,
}

/// What every scenario shares.
pub struct Ctx {
    /// By region id.
    pub regions: Vec<Region>,
    /// The region under test.
    pub target: usize,
    pub drill_id: String,
    pub started_ms: u64,
    /// The drill's clock: every time in the report is relative to it.
    pub t0: Instant,
    pub common: Common,
    pub progress: indicatif::ProgressBar,
}

impl Ctx {
    pub fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    pub fn target(&self) -> &Region {
        &self.regions[self.target]
    }

    /// Every region but the one under test.
    pub fn survivors(&self) -> impl Iterator<Item = &Region> {
        self.regions.iter().filter(|r| r.id != self.target)
    }

    pub fn say(&self, msg: impl Into<std::borrow::Cow<'static, str>>) {
        self.progress.set_message(msg);
    }

    pub async fn status(&self, r: &Region) -> Result<ClusterStatusResponse> {
        let s = tokio::time::timeout(
            Duration::from_secs(2),
            AdminClient::new(r.ch.clone()).cluster_status(ClusterStatusRequest {}),
        )
        .await
        .map_err(|_| anyhow::anyhow!("{} did not answer its status in 2 s", r.name))?
        .map_err(status_err)?;
        Ok(s.into_inner())
    }

    pub fn drill(&self, r: &Region) -> DrillClient<AuthChannel> {
        DrillClient::new(r.ch.clone())
    }
}

/// A failed call as the report shows it: its stable reason, or the gRPC
/// code when no node answered.
pub fn reason(s: &tonic::Status) -> String {
    meridian_proto::reason_of(s).unwrap_or_else(|| format!("{:?}", s.code()))
}

/// What keeps a region's view of the cluster from being healthy: a drill
/// fault, a peer disconnected, a group without a leader.
pub fn unhealthy(r: &Region, s: &ClusterStatusResponse) -> Option<String> {
    if let Some(f) = &s.fault {
        return Some(format!(
            "{} is under drill {}'s {} fault ({} ms left)",
            r.name, f.drill_id, f.kind, f.remaining_ms
        ));
    }
    if let Some(x) = s.regions.iter().find(|x| !x.connected) {
        return Some(format!("{} sees {} disconnected", r.name, x.name));
    }
    s.groups
        .iter()
        .find(|g| g.leader.is_none())
        .map(|g| format!("{} knows no leader of group {}", r.name, g.home_region))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reach every endpoint and learn which region answers there.
async fn regions(target: &Target) -> Result<Vec<Region>> {
    let mut out: Vec<Region> = Vec::new();
    for e in &target.endpoints {
        let ch = target
            .channel_to(e)
            .await
            .with_context(|| format!("a drill needs every region: {e} does not answer"))?;
        let p = AdminClient::new(ch.clone())
            .ping(PingRequest {})
            .await
            .map_err(status_err)?
            .into_inner();
        out.push(Region {
            id: p.region_id as usize,
            name: p.region,
            ch,
        });
    }
    out.sort_by_key(|r| r.id);
    for (i, r) in out.iter().enumerate() {
        if r.id != i {
            bail!(
                "the endpoints must reach every region once: region id {i} is {}",
                if r.id > i { "missing" } else { "given twice" }
            );
        }
    }
    Ok(out)
}

/// A drill starts only from a healthy cluster: every region reachable and
/// connected, no fault in force, every group led.
async fn check_healthy(ctx: &Ctx) -> Result<()> {
    for r in &ctx.regions {
        if let Some(why) = unhealthy(r, &ctx.status(r).await?) {
            bail!("the cluster is not healthy: {why}");
        }
    }
    Ok(())
}

fn progress_bar() -> indicatif::ProgressBar {
    // Hidden when stderr is not a terminal (CI logs, pipes).
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

pub async fn run(cmd: DrillCmd, target: &Target, out: Output) -> Result<()> {
    let (scenario, common, fault) = match cmd {
        DrillCmd::History { limit, scenario } => {
            return history(target, out, limit, scenario.unwrap_or_default()).await
        }
        DrillCmd::Planned { common } => ("planned", common, None),
        DrillCmd::RegionLoss { common, fault } => ("region-loss", common, Some(fault)),
        DrillCmd::Partition { common } => ("partition", common, Some(FaultArg::Isolate)),
    };
    if common.rate == 0 || common.rate > 1000 {
        bail!("--rate must be 1 to 1000 writes per second");
    }
    let regions = regions(target).await?;
    let Some(t) = regions.iter().position(|r| r.name == common.region) else {
        bail!(
            "no region named {:?} among the endpoints (regions: {})",
            common.region,
            regions
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    if regions.len() < 3 {
        bail!("a drill needs at least 3 regions: a majority must survive the region under test");
    }
    let started_ms = unix_ms();
    let drill_id = common
        .id
        .clone()
        .unwrap_or_else(|| format!("{scenario}-{}-{started_ms}", common.region));
    let ctx = Ctx {
        regions,
        target: t,
        drill_id,
        started_ms,
        t0: Instant::now(),
        common,
        progress: progress_bar(),
    };
    check_healthy(&ctx).await?;
    let result = match scenario {
        "planned" => scenarios::planned(&ctx).await,
        "partition" => scenarios::partition(&ctx).await,
        _ => scenarios::region_loss(&ctx, fault.unwrap_or(FaultArg::Stop)).await,
    };
    ctx.progress.finish_and_clear();
    let mut report = result?;
    report.finished_ms = unix_ms();
    report.events.sort_by_key(|e| e.at_ms);
    if let Some(path) = &ctx.common.svg {
        std::fs::write(path, report::svg(&report))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let json = report.to_json();
    if !ctx.common.no_record {
        // Through a region that is not the one under test: the history
        // never depends on it.
        let via = ctx.survivors().next().map_or(ctx.target(), |r| r);
        let kept = ctx
            .drill(via)
            .record_drill(meridian_proto::v1::RecordDrillRequest {
                report_json: json.to_string(),
            })
            .await;
        if let Err(e) = kept {
            eprintln!(
                "warning: the report could not be kept in the cluster: {}",
                status_err(e)
            );
        }
    }
    crate::output::emit(out, &json, |_| report::table(&report))?;
    let broken = report.broken();
    if !broken.is_empty() {
        bail!("drill {} failed: {}", report.drill_id, broken.join("; "));
    }
    Ok(())
}

async fn history(target: &Target, out: Output, limit: u32, scenario: String) -> Result<()> {
    let ch = target.channel().await?;
    let r = DrillClient::new(ch)
        .list_drills(meridian_proto::v1::ListDrillsRequest { limit, scenario })
        .await
        .map_err(status_err)?
        .into_inner();
    let reports: Vec<serde_json::Value> = r
        .reports_json
        .iter()
        .map(|s| serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.clone())))
        .collect();
    let v = serde_json::Value::Array(reports);
    crate::output::emit(out, &v, report::history_table)
}
