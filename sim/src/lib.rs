//! `meridian-sim`: the deterministic fault simulator. It drives the real
//! `meridian-core` nodes through a simulated world (see `world`) and checks the
//! recorded history with one checker per property (see `checkers`).

pub mod checkers;
pub mod history;
pub mod world;

use std::time::{Duration, Instant};

use checkers::*;
use history::{Coverage, Violation};
pub use world::{Options, World};

/// Everything one seed produced: one field per figure the report prints
/// (counts, latencies, RTO and RPO samples, the verdict), hence many.
#[derive(Debug)]
pub struct RunResult {
    pub seed: u64,
    pub trace_hash: u64,
    pub sim_us: u64,
    pub events: u64,
    pub ops_invoked: usize,
    pub ops_completed: usize,
    pub wall: Duration,
    pub rto_us: Vec<u64>,
    pub rpo_us: Vec<u64>,
    pub durability: durability::Report,
    pub lin_keys: usize,
    pub lin_ops: usize,
    pub watch_events: usize,
    /// Permission checks judged, and those refused although a grant
    /// existed (a revocation had won over it).
    pub perm_checks: (usize, usize),
    pub bounded_reads: usize,
    pub lease_intervals: usize,
    pub elections: usize,
    pub episodes: usize,
    pub garbage_rejected: u64,
    pub moved: namespace_move::Report,
    /// Request ids checked to have applied at most once.
    pub request_ids: usize,
    /// How often each coverage state occurred.
    pub coverage: std::collections::BTreeMap<Coverage, u64>,
    pub violation: Option<Violation>,
}

pub fn run_seed(opts: Options) -> (RunResult, World) {
    let start = Instant::now();
    let seed = opts.seed;
    let mut w = World::new(opts);
    // An assertion inside the core (debug builds check invariants densely)
    // is the earliest sign of a bug: the seed fails on it, with its message,
    // instead of the sweep dying. A planted mutant is caught the same way.
    let assertion = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.run()))
        .err()
        .map(|p| {
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into())
        });
    let wall = start.elapsed();
    // A world stopped mid-step is not looked at further.
    let (finals, moving_finals) = if assertion.is_some() {
        (Vec::new(), Vec::new())
    } else {
        (w.finals(), w.moving_finals())
    };
    let h = &w.history;
    let apply_errors: u64 = w
        .node_stats()
        .iter()
        .flatten()
        .map(|s| s.apply_errors)
        .sum();
    let garbage_rejected: u64 = w
        .node_stats()
        .iter()
        .flatten()
        .map(|s| s.peer_malformed)
        .sum();
    let mut r = RunResult {
        seed,
        trace_hash: w.trace_hash,
        sim_us: w.now,
        events: w.events,
        ops_invoked: h.ops.len(),
        ops_completed: h.ops.iter().filter(|o| o.complete_us.is_some()).count(),
        wall,
        rto_us: Vec::new(),
        rpo_us: Vec::new(),
        durability: durability::Report::default(),
        lin_keys: 0,
        lin_ops: 0,
        watch_events: 0,
        perm_checks: (0, 0),
        bounded_reads: 0,
        lease_intervals: 0,
        elections: h.elections.len(),
        episodes: h.episodes.len(),
        garbage_rejected,
        moved: namespace_move::Report::default(),
        request_ids: 0,
        coverage: h.coverage.clone(),
        violation: None,
    };
    let result: Result<(), Violation> = (|| {
        if let Some(msg) = &assertion {
            return Err(Violation::new(
                "core assertion",
                Some(w.now),
                format!("panicked: {msg}"),
            ));
        }
        if let Some(at) = w.storm {
            return Err(Violation::new(
                "bounded work",
                Some(at),
                format!(
                    "{} events by t={at}us: messages that feed themselves",
                    w.events
                ),
            ));
        }
        if let Some(e) = w.restart_errors.first() {
            return Err(Violation::new("recovery", None, e.clone()));
        }
        r.lease_intervals = lease_safety::check(h)?;
        election_safety::check(h)?;
        vote_safety::check(h)?;
        promise_safety::check(h)?;
        durable_before_reply::check(h)?;
        state_machine_safety::check(h, apply_errors)?;
        r.request_ids = at_most_once::check(h)?;
        r.durability = durability::check(h)?;
        r.rpo_us = r.durability.rpo_samples_us.clone();
        (r.lin_keys, r.lin_ops) = linearizability::check(h)?;
        r.bounded_reads = bounded_staleness::check(h)?;
        r.rto_us = rto::check(h)?;
        convergence::check(h, &finals)?;
        r.watch_events = watch_completeness::check(h)?;
        r.perm_checks = revocation::check(h)?;
        r.moved = namespace_move::check(h, &moving_finals)?;
        r.moved.moves_completed = h.moves_completed.len();
        Ok(())
    })();
    r.violation = result.err();
    (r, w)
}
