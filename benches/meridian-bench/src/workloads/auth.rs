//! Access control's cost: the same reads and writes against one Meridian
//! region with auth off and with auth on, side by side in one run. With auth
//! on, every call carries an API token whose role has several rules (allows
//! over keys and projects and a deny), so each request pays for the token's
//! hash and the rule evaluation a real deployment would. The figure is the
//! ratio of throughputs (target: at least 0.95). etcd is not involved.

use anyhow::{Context, Result};
use meridian_proto::v1::auth_client::AuthClient;
use meridian_proto::v1::{CreateTokenRequest, PutRoleRequest};
use serde::Serialize;

use super::{connect_n, load, read, write, Ctx};
use crate::conn::{self, Level};
use crate::harness::{channel, MeridianCluster};
use crate::report::{Better, Figure, Series, Unit, WorkloadReport};
use crate::stats::{rate, Summary};

#[derive(Clone, Serialize)]
pub struct Run {
    pub auth: bool,
    pub reads_per_s: f64,
    pub read_latency: Summary,
    pub writes_per_s: f64,
    pub write_latency: Summary,
    pub write_errors: String,
}

/// The role the benchmark's token carries: what a team's CI token might
/// hold (reads and writes of its keys, a deny of another prefix, rules for
/// other projects that must be evaluated and fail to match).
const ROLE: &str = r#"{"rules": [
  {"effect": "allow", "projects": ["shop", "blog"], "environments": ["prod", "staging"], "actions": ["read"]},
  {"effect": "allow", "projects": ["eu"], "keys": ["k*", "w*", "m*"], "actions": ["read", "write", "delete"]},
  {"effect": "deny", "projects": ["eu"], "keys": ["secrets/*", "ops/*"], "actions": ["read", "write", "delete"]},
  {"effect": "allow", "projects": ["ap-*"], "keys": ["**/flags/*"], "actions": ["read", "flags"]}
]}"#;

/// As root, a role and a token carrying it; returns the token.
async fn bench_token(addr: &str, root: &str) -> Result<String> {
    let mut a = AuthClient::new(channel(addr, Some(root))?);
    a.put_role(PutRoleRequest {
        name: "bench".into(),
        rules_json: ROLE.into(),
    })
    .await
    .context("creating the benchmark's role")?;
    let t = a
        .create_token(CreateTokenRequest {
            principal: "bench".into(),
            roles: vec!["bench".into()],
            ..Default::default()
        })
        .await
        .context("creating the benchmark's token")?;
    Ok(t.into_inner().token)
}

pub async fn run(ctx: &Ctx) -> Result<WorkloadReport> {
    let p = &ctx.p;
    let mut runs = Vec::new();
    // Off, on, on, off: whatever drifts over the run (the page cache, the
    // disk, the other core's load) weighs on both modes alike.
    for auth in [false, true, true, false] {
        let mode = if auth { "auth on" } else { "auth off" };
        eprintln!("auth: Meridian, 1 region, {mode}, loading {} keys", p.keys);
        let cluster = MeridianCluster::start_with(&ctx.meridian_bin, 1, None, auth).await?;
        let addr = cluster.grpc[0].clone();
        let token = match &cluster.root_token {
            None => None,
            Some(root) => Some(bench_token(&addr, root).await?),
        };
        let conns = connect_n(p.connections, |_| {
            let (a, t) = (addr.clone(), token.clone());
            async move { conn::meridian_as(&a, t.as_deref()).await }
        })
        .await?;
        load(&conns, p.keys, p.value_bytes).await?;
        let r = read::measure(
            if auth {
                "meridian (auth on)"
            } else {
                "meridian (auth off)"
            },
            &conns,
            Level::Linearizable,
            ctx,
        )
        .await?;
        let kind = write::Kind::Put;
        write::drive(&conns, kind, p.write_clients, p.warmup, p.value_bytes, "w").await?;
        let (lat, _, errors, elapsed) = write::drive(
            &conns,
            kind,
            p.write_clients,
            p.duration,
            p.value_bytes,
            "m",
        )
        .await?;
        anyhow::ensure!(
            lat.len() > 0,
            "{mode}: no write succeeded ({})",
            errors.describe()
        );
        let run = Run {
            auth,
            reads_per_s: r.reads_per_s,
            read_latency: r.read_latency,
            writes_per_s: rate(lat.len(), elapsed),
            write_latency: lat.summary(),
            write_errors: errors.describe(),
        };
        eprintln!(
            "  {mode}: {:.0} reads/s (p99 {} µs), {:.0} puts/s (p99 {} µs)",
            run.reads_per_s, run.read_latency.p99_us, run.writes_per_s, run.write_latency.p99_us
        );
        runs.push(run);
    }
    Ok(report(ctx, runs))
}

/// The mean of the runs with `auth` (throughputs and p99s averaged; the
/// latency distribution for the plot is the first run's).
fn mean_of(runs: &[Run], auth: bool) -> Option<Run> {
    let these: Vec<&Run> = runs.iter().filter(|r| r.auth == auth).collect();
    let first = these.first()?;
    let n = these.len() as f64;
    let avg = |f: &dyn Fn(&Run) -> f64| these.iter().map(|r| f(r)).sum::<f64>() / n;
    let mut m = (*first).clone();
    m.reads_per_s = avg(&|r| r.reads_per_s);
    m.writes_per_s = avg(&|r| r.writes_per_s);
    m.read_latency.p99_us = avg(&|r| r.read_latency.p99_us as f64) as u64;
    m.write_latency.p99_us = avg(&|r| r.write_latency.p99_us as f64) as u64;
    Some(m)
}

fn report(ctx: &Ctx, runs: Vec<Run>) -> WorkloadReport {
    let p = &ctx.p;
    let on = mean_of(&runs, true);
    let off = mean_of(&runs, false);
    let mut figures = Vec::new();
    let mut series = Vec::new();
    if let (Some(on), Some(off)) = (&on, &off) {
        let tput = |name: &str, a: f64, b: f64| {
            Figure::new(name, Unit::OpsPerSec, Better::Higher)
                .meridian("auth on", a)
                .etcd("auth off", Some(b))
                .target("auth on ÷ off ≥ 0.95", b > 0.0 && a / b >= 0.95)
        };
        figures.push(tput("linearizable reads", on.reads_per_s, off.reads_per_s));
        figures.push(tput("puts (fsynced)", on.writes_per_s, off.writes_per_s));
        for (name, a, b) in [
            ("read p99", on.read_latency.p99_us, off.read_latency.p99_us),
            ("put p99", on.write_latency.p99_us, off.write_latency.p99_us),
        ] {
            figures.push(
                Figure::new(name, Unit::Micros, Better::Lower)
                    .meridian("auth on", a as f64)
                    .etcd("auth off", Some(b as f64)),
            );
        }
    }
    for r in [&on, &off].into_iter().flatten() {
        let system = if r.auth { "auth on" } else { "auth off" };
        series.push(Series {
            system: system.into(),
            label: "linearizable read".into(),
            summary: r.read_latency.clone(),
        });
        series.push(Series {
            system: system.into(),
            label: "put".into(),
            summary: r.write_latency.clone(),
        });
    }
    WorkloadReport {
        name: "auth".into(),
        title: "Access control: auth on against auth off".into(),
        setup: format!(
            "Meridian only, 1 region, run four times: [auth] enabled = false (off) or on (on), in the order off, on, on, off; with auth on every call carrying an API token whose role has 4 rules (allows, a deny). {} keys of {} B; reads: {} closed-loop clients over {} connections, {} reads per write; puts: {} clients. {:.1} s warm-up, {:.1} s measured. The columns are the two modes (each the mean of its two runs), not two systems.",
            p.keys,
            p.value_bytes,
            p.read_clients,
            p.connections,
            p.reads_per_write,
            p.write_clients,
            p.warmup.as_secs_f64(),
            p.duration.as_secs_f64()
        ),
        columns: Some(("auth on".into(), "auth off".into())),
        figures,
        series,
        notes: vec![
            "Runs alternate off, on, on, off, each on a fresh region, so that drift over the \
             benchmark weighs on both modes alike; each figure is the mean of its mode's two \
             runs (every run is in results.json)."
                .into(),
        ],
        raw: serde_json::to_value(&runs).unwrap_or_default(),
    }
}
