//! `meridian-sim`: run seeds of the deterministic fault simulator and print a
//! summary; on a failure print the seed, the property, a trace excerpt and the
//! exact command that replays it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use meridian_core::Mutants;
use meridian_sim::history::Coverage;
use meridian_sim::{run_seed, Options, RunResult};

/// The simulator allocates and frees a message buffer per event; mimalloc
/// does that at about two thirds of glibc's cost here (measured with
/// `meridian-sim --seeds 1..=200`). Only this binary uses it: the node and
/// its tests keep the system allocator.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "meridian-sim",
    about = "Deterministic fault simulator for Meridian's replication core"
)]
struct Args {
    /// Seeds to run: `N`, `A..B` or `A..=B`.
    #[arg(long, default_value = "1..=20")]
    seeds: String,
    /// Plant a known bug in the core (see --list-mutants).
    #[arg(long)]
    mutant: Option<String>,
    #[arg(long)]
    list_mutants: bool,
    /// Run every seed twice and compare trace hashes.
    #[arg(long)]
    check_determinism: bool,
    /// Simulated seconds per seed.
    #[arg(long, default_value_t = 60)]
    duration_s: u64,
    #[arg(long, default_value_t = 3)]
    regions: u8,
    /// Client operations per simulated second.
    #[arg(long, default_value_t = 100)]
    ops_per_sec: u64,
    /// Turn every fault class off (a baseline).
    #[arg(long)]
    no_faults: bool,
    /// Worker threads (seeds run in parallel; each seed is single-threaded).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Print one line per seed.
    #[arg(long)]
    verbose: bool,
    /// Swarm testing: each seed draws its own fault mix (classes, buggify
    /// sites, overlapping episodes, quick restarts) and limits (tiny
    /// appends, frequent or rare compaction, long election timeouts).
    #[arg(long)]
    swarm: bool,
    /// The long-timeout scenario: election timeout 3 s, RTO bound 30 s.
    #[arg(long)]
    long_timeouts: bool,
    /// Print the whole readable trace of each seed (use with one seed).
    #[arg(long)]
    dump_trace: bool,
}

/// A sweep of at least this many seeds (faults on) must reach every
/// coverage state, or it fails.
const COVERAGE_SWEEP_SEEDS_MIN: usize = 100;

fn parse_seeds(s: &str) -> Result<Vec<u64>> {
    if let Some((a, b)) = s.split_once("..=") {
        let (a, b): (u64, u64) = (a.parse()?, b.parse()?);
        return Ok((a..=b).collect());
    }
    if let Some((a, b)) = s.split_once("..") {
        let (a, b): (u64, u64) = (a.parse()?, b.parse()?);
        return Ok((a..b).collect());
    }
    Ok(vec![s.parse().context("seeds: N, A..B or A..=B")?])
}

fn options(args: &Args, seed: u64, mutants: Mutants) -> Options {
    let mut o = if args.long_timeouts {
        Options::long_timeout(seed)
    } else {
        Options::standard(seed)
    };
    o.regions = args.regions;
    o.duration_us = args.duration_s * 1_000_000;
    o.fault_end_us = o.duration_us * 3 / 4;
    o.clients_stop_us = o.duration_us.saturating_sub(10_000_000).max(o.fault_end_us);
    o.ops_per_sec = args.ops_per_sec;
    o.faults = !args.no_faults;
    o.mutants = mutants;
    o.swarm = args.swarm;
    o
}

fn hist(samples: &[u64]) -> Histogram<u64> {
    // Invariant: bounds are constants that hdrhistogram accepts.
    let mut h =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
    for s in samples {
        h.saturating_record((*s).max(1));
    }
    h
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.list_mutants {
        for m in Mutants::NAMES {
            println!("{m}");
        }
        return Ok(());
    }
    let mutants = match &args.mutant {
        Some(name) => match Mutants::by_name(name) {
            Some(m) => m,
            None => bail!(
                "unknown mutant {name}; known: {}",
                Mutants::NAMES.join(", ")
            ),
        },
        None => Mutants::default(),
    };
    let seeds = parse_seeds(&args.seeds)?;
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<RunResult>> = Mutex::new(Vec::new());
    let mismatches: Mutex<Vec<(u64, u64, u64)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..args.jobs.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&seed) = seeds.get(i) else { break };
                let mut o = options(&args, seed, mutants);
                o.trace = args.dump_trace;
                let (r, w) = run_seed(o);
                if args.dump_trace {
                    for (t, l) in &w.trace {
                        println!("t={t:>10}us {l}");
                    }
                }
                if args.check_determinism {
                    let (r2, _) = run_seed(options(&args, seed, mutants));
                    if r2.trace_hash != r.trace_hash {
                        mismatches.lock().unwrap_or_else(|e| e.into_inner()).push((seed, r.trace_hash, r2.trace_hash));
                    }
                }
                if args.verbose {
                    let status = r.violation.as_ref().map_or("ok".to_string(), |v| format!("FAIL {}", v.property));
                    println!(
                        "seed {seed}: {status}; {} events, {} ops, {} episodes, trace {:016x}, {:.0}x real time",
                        r.events,
                        r.ops_completed,
                        r.episodes,
                        r.trace_hash,
                        r.sim_us as f64 / 1e6 / r.wall.as_secs_f64()
                    );
                }
                results.lock().unwrap_or_else(|e| e.into_inner()).push(r);
            });
        }
    });
    let wall_total = started.elapsed();
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|r| r.seed);
    let failed: Vec<&RunResult> = results.iter().filter(|r| r.violation.is_some()).collect();
    let mismatches = mismatches.into_inner().unwrap_or_else(|e| e.into_inner());

    let sum = |f: &dyn Fn(&RunResult) -> u64| results.iter().map(f).sum::<u64>();
    let sim_us = sum(&|r| r.sim_us);
    let events = sum(&|r| r.events);
    let ops = sum(&|r| r.ops_completed as u64);
    let seed_wall: f64 = results.iter().map(|r| r.wall.as_secs_f64()).sum();
    let rto: Vec<u64> = results
        .iter()
        .flat_map(|r| r.rto_us.iter().copied())
        .collect();
    let rpo: Vec<u64> = results
        .iter()
        .flat_map(|r| r.rpo_us.iter().copied())
        .collect();
    let (hr, hp) = (hist(&rto), hist(&rpo));
    println!();
    println!(
        "meridian-sim summary ({} regions, {} ops/s, faults {}, mutant {})",
        args.regions,
        args.ops_per_sec,
        if args.no_faults { "off" } else { "all on" },
        args.mutant.as_deref().unwrap_or("none")
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| seeds | {} ({} passed, {} failed) |",
        results.len(),
        results.len() - failed.len(),
        failed.len()
    );
    println!("| simulated time | {:.0} s |", sim_us as f64 / 1e6);
    println!("| events | {events} |");
    println!("| client operations completed | {ops} |");
    println!(
        "| acknowledged writes checked (quorum / async) | {} / {} |",
        sum(&|r| r.durability.quorum_acked as u64),
        sum(&|r| r.durability.async_acked as u64)
    );
    println!(
        "| async writes lost (within budget) | {} |",
        sum(&|r| r.durability.async_lost as u64)
    );
    println!(
        "| linearizability: keys / operations checked | {} / {} |",
        sum(&|r| r.lin_keys as u64),
        sum(&|r| r.lin_ops as u64)
    );
    println!(
        "| watch events checked | {} |",
        sum(&|r| r.watch_events as u64)
    );
    println!(
        "| permission checks judged (refused over a grant: a revocation won) | {} ({}) |",
        sum(&|r| r.perm_checks.0 as u64),
        sum(&|r| r.perm_checks.1 as u64)
    );
    println!(
        "| namespace moves: acknowledged / copies completed / ops checked | {} / {} / {} |",
        sum(&|r| r.moved.moves_started as u64),
        sum(&|r| r.moved.moves_completed as u64),
        sum(&|r| r.moved.ops_checked as u64)
    );
    println!(
        "| bounded reads checked | {} |",
        sum(&|r| r.bounded_reads as u64)
    );
    println!(
        "| lease intervals checked | {} |",
        sum(&|r| r.lease_intervals as u64)
    );
    println!("| fault episodes | {} |", sum(&|r| r.episodes as u64));
    println!(
        "| garbage peer messages rejected | {} |",
        sum(&|r| r.garbage_rejected)
    );
    println!(
        "| events per second (per thread) | {:.0} |",
        events as f64 / seed_wall
    );
    println!(
        "| simulated / wall time, per thread | {:.0}x |",
        sim_us as f64 / 1e6 / seed_wall
    );
    println!(
        "| simulated / wall time, whole run ({} threads) | {:.0}x |",
        args.jobs,
        sim_us as f64 / 1e6 / wall_total.as_secs_f64()
    );
    println!(
        "| RTO p50 / p99 / max ({} samples) | {} / {} / {} |",
        rto.len(),
        ms(hr.value_at_quantile(0.5)),
        ms(hr.value_at_quantile(0.99)),
        ms(hr.max())
    );
    println!(
        "| RPO p50 / p99 / max ({} samples) | {} / {} / {} |",
        rpo.len(),
        ms(if rpo.iter().all(|&x| x == 0) {
            0
        } else {
            hp.value_at_quantile(0.5)
        }),
        ms(if rpo.iter().all(|&x| x == 0) {
            0
        } else {
            hp.value_at_quantile(0.99)
        }),
        ms(*rpo.iter().max().unwrap_or(&0))
    );
    println!("| wall time | {:.1} s |", wall_total.as_secs_f64());
    if args.check_determinism {
        println!(
            "| determinism | {} |",
            if mismatches.is_empty() {
                format!("{} seeds ran twice, identical trace hashes", results.len())
            } else {
                format!("{} seeds differ", mismatches.len())
            }
        );
    }
    for (seed, a, b) in &mismatches {
        println!("NONDETERMINISM: seed {seed}: trace hash {a:016x} then {b:016x}");
    }
    // Coverage: how often each state the sweep must reach occurred.
    let mut coverage: BTreeMap<Coverage, u64> = BTreeMap::new();
    for r in &results {
        for (c, n) in &r.coverage {
            *coverage.entry(*c).or_default() += n;
        }
    }
    println!();
    println!("| coverage: state | occurrences | seeds |");
    println!("|---|---|---|");
    let mut unreached = Vec::new();
    for c in Coverage::required(args.swarm) {
        let n = coverage.get(&c).copied().unwrap_or(0);
        let seeds = results
            .iter()
            .filter(|r| r.coverage.contains_key(&c))
            .count();
        println!("| {} | {n} | {seeds} |", c.name());
        if n == 0 {
            unreached.push(c.name());
        }
    }
    // A full sweep with every fault class on must reach every state; a
    // short or fault-free run only shows what it reached.
    let sweep = results.len() >= COVERAGE_SWEEP_SEEDS_MIN && !args.no_faults;
    for name in &unreached {
        println!(
            "{}: never reached: {name}",
            if sweep { "COVERAGE FAILED" } else { "note" }
        );
    }
    let coverage_failed = sweep && !unreached.is_empty();
    for r in failed.iter().take(5) {
        let Some(v) = &r.violation else { continue };
        println!();
        println!("FAILED seed {}: {}", r.seed, v.property);
        println!("{}", v.detail);
        // Replay with tracing on for the excerpt (same seed, same trace).
        let mut o = options(&args, r.seed, mutants);
        o.trace = true;
        let (_, w) = run_seed(o);
        let at = v.at_us.unwrap_or(w.now);
        let lines: Vec<&(u64, String)> = w
            .trace
            .iter()
            .filter(|(t, _)| *t + 3_000_000 >= at && *t <= at + 500_000)
            .collect();
        println!(
            "trace excerpt ({} lines around t={}us):",
            lines.len().min(60),
            at
        );
        for (t, l) in lines.iter().rev().take(60).rev() {
            println!("  t={t:>10}us {l}");
        }
        let m = args
            .mutant
            .as_ref()
            .map(|m| format!(" --mutant {m}"))
            .unwrap_or_default();
        println!(
            "replay: cargo run --release -p meridian-sim -- --seeds {} --duration-s {} --regions {} --ops-per-sec {}{}{}{}{m}",
            r.seed,
            args.duration_s,
            args.regions,
            args.ops_per_sec,
            if args.no_faults { " --no-faults" } else { "" },
            if args.swarm { " --swarm" } else { "" },
            if args.long_timeouts {
                " --long-timeouts"
            } else {
                ""
            }
        );
    }
    println!();
    println!(
        "{} passed, {} failed",
        results.len() - failed.len(),
        failed.len()
    );
    if !failed.is_empty() || !mismatches.is_empty() || coverage_failed {
        std::process::exit(1);
    }
    Ok(())
}
