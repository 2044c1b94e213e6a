//! `meridian-bench`: the same workloads against Meridian and etcd v3 on this
//! machine, one system at a time, reported side by side.
//!
//! ```text
//! cargo run --release -p meridian-bench -- all --compare etcd
//! ```
//!
//! writes `bench-results/results.md` (a table per workload, with the ratio of
//! every figure), `results.json` (every raw number) and one latency CDF plot
//! per workload (`<workload>.svg`). Workloads: read, write, watch,
//! cross-region, failover (`all` runs each in that order).

mod conn;
mod harness;
mod report;
mod stats;
mod workloads;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;

use report::Report;
use workloads::{Ctx, Params};

#[derive(Parser, Debug)]
#[command(
    about = "Meridian and etcd, side by side: read, write, watch, cross-region and failover workloads"
)]
struct Args {
    /// Workloads to run: all, read, write, watch, cross-region, config-write, failover.
    #[arg(required = true)]
    workloads: Vec<String>,
    /// Run the same workloads against this system too (only `etcd`).
    #[arg(long)]
    compare: Option<String>,
    /// Where the table, JSON and plots go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Small sizes and short runs (every path, a few seconds each).
    #[arg(long)]
    quick: bool,
    /// The `meridian` binary (default: beside this one, built if run by cargo).
    #[arg(long)]
    meridian_bin: Option<PathBuf>,
    /// Measured seconds per level or operation (read, write).
    #[arg(long)]
    duration_s: Option<f64>,
    /// Concurrent clients in the read-heavy workload.
    #[arg(long)]
    read_clients: Option<usize>,
    /// Concurrent clients in the write workload.
    #[arg(long)]
    write_clients: Option<usize>,
    /// Keys loaded for the read-heavy workload.
    #[arg(long)]
    keys: Option<usize>,
    /// Watcher counts for the fan-out workload, comma-separated.
    #[arg(long, value_delimiter = ',')]
    watchers: Option<Vec<usize>>,
}

const ALL: [&str; 9] = [
    "read",
    "write",
    "watch",
    "cross-region",
    "config-write",
    "failover",
    "auth",
    "secrets",
    "flags",
];

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {mem_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}

fn etcd_version() -> Option<String> {
    let bin = harness::etcd_bin().ok()?;
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|s| s.trim().to_string())
}

async fn main_() -> Result<()> {
    let args = Args::parse();
    let mut names: Vec<String> = Vec::new();
    for w in &args.workloads {
        if w == "all" {
            names.extend(ALL.iter().map(|s| s.to_string()));
        } else if ALL.contains(&w.as_str()) {
            names.push(w.clone());
        } else {
            bail!(
                "unknown workload {w:?}: expected all or one of {}",
                ALL.join(", ")
            );
        }
    }
    let etcd = match args.compare.as_deref() {
        None => false,
        Some("etcd") => {
            harness::etcd_bin()?;
            true
        }
        Some(other) => bail!("--compare {other:?}: only etcd is supported"),
    };
    let mut p = if args.quick {
        Params::quick()
    } else {
        Params::full()
    };
    if let Some(s) = args.duration_s {
        p.duration = Duration::from_secs_f64(s);
    }
    if let Some(n) = args.read_clients {
        p.read_clients = n;
    }
    if let Some(n) = args.write_clients {
        p.write_clients = n;
    }
    if let Some(n) = args.keys {
        p.keys = n;
    }
    if let Some(w) = args.watchers.clone() {
        p.watchers = w;
    }
    let ctx = Ctx {
        meridian_bin: harness::meridian_bin(args.meridian_bin.as_deref())?,
        etcd,
        p,
    };
    let mut report = Report {
        command: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        machine: machine(),
        etcd_version: if etcd { etcd_version() } else { None },
        workloads: Vec::new(),
    };
    for name in names {
        let w = match name.as_str() {
            "read" => workloads::read::run(&ctx).await,
            "write" => workloads::write::run(&ctx).await,
            "watch" => workloads::watch::run(&ctx).await,
            "cross-region" => workloads::cross_region::run(&ctx).await,
            "config-write" => workloads::config_write::run(&ctx).await,
            "failover" => workloads::failover::run(&ctx).await,
            "auth" => workloads::auth::run(&ctx).await,
            "secrets" => workloads::secrets::run(&ctx).await,
            "flags" => workloads::flags::run(&ctx).await,
            _ => unreachable!("names were checked against ALL"),
        }
        .with_context(|| format!("workload {name}"))?;
        report.workloads.push(w);
        // Write after every workload: a later failure keeps what was measured.
        report.write(&args.out)?;
    }
    print!("{}", report.markdown());
    eprintln!(
        "wrote {}/results.md, results.json and one .svg per workload",
        args.out.display()
    );
    Ok(())
}

/// The load generator allocates per request and per message like the node
/// does (which runs mimalloc): under glibc's malloc, its locks and frees
/// were a visible share of the bench client's CPU in the flags push (perf),
/// and the client shares the 2 cores with the system measured.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meridian-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(main_()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meridian-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
