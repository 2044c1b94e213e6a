//! Cluster and node configuration for the core: sizes, timeouts, limits and the
//! static namespace table. Every limit the core enforces lives here, so one value
//! is enforced identically in every region.

use serde::{Deserialize, Serialize};

use crate::types::{GroupId, NodeId, ReplicationMode};

/// A namespace (project + environment) and where it lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceSpec {
    pub name: String,
    /// The home group, which is also the home region (group `g` is homed in region `g`).
    pub home: GroupId,
    pub mode: ReplicationMode,
}

/// Which planted bugs are switched on. All off in production; the simulator's
/// mutant test turns them on one at a time to prove the checkers can fail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mutants {
    /// Lease as long as the followers' promise, with no drift factor and no margin.
    pub lease_without_drift_margin: bool,
    /// Answer a vote before (and without) persisting it.
    pub vote_not_persisted: bool,
    /// In quorum mode, acknowledge once the leader alone persisted the entry.
    pub ack_before_quorum: bool,
    /// Followers accept appends from a leader of an older term.
    pub stale_leader_append_accepted: bool,
    /// A new leader serves linearizable reads before its no-op entry commits.
    pub read_before_noop_commit: bool,
    /// The old home of a moving namespace keeps taking writes after its freeze.
    pub write_after_freeze: bool,
    /// A leader ignores its idempotency table: a retried write applies again.
    pub retry_ignores_table: bool,
    /// An async write forgets its request id once answered, before it commits.
    pub async_ack_forgets_pending: bool,
    /// A restarted node forgets that it may have promised a leader, and votes
    /// at once.
    pub promise_forgotten_on_restart: bool,
    /// An async leader never refuses writes for its RPO budget.
    pub rpo_budget_ignored: bool,
    /// Every append answer refills the pipeline and every refusal resends,
    /// whether or not it moved anything.
    pub pipeline_refills_on_any_answer: bool,
    /// A grant counts even when a revocation it never saw exists: a grant
    /// wins over a concurrent revocation.
    pub grant_wins_over_revoke: bool,
}

impl Mutants {
    pub fn any(&self) -> bool {
        self.lease_without_drift_margin
            || self.vote_not_persisted
            || self.ack_before_quorum
            || self.stale_leader_append_accepted
            || self.read_before_noop_commit
            || self.write_after_freeze
            || self.retry_ignores_table
            || self.async_ack_forgets_pending
            || self.promise_forgotten_on_restart
            || self.rpo_budget_ignored
            || self.pipeline_refills_on_any_answer
            || self.grant_wins_over_revoke
    }

    /// Names accepted by `Mutants::by_name`, in a stable order.
    pub const NAMES: [&'static str; 12] = [
        "lease-without-drift-margin",
        "vote-not-persisted",
        "ack-before-quorum",
        "stale-leader-append-accepted",
        "read-before-noop-commit",
        "write-after-freeze",
        "retry-ignores-table",
        "async-ack-forgets-pending",
        "promise-forgotten-on-restart",
        "rpo-budget-ignored",
        "pipeline-refills-on-any-answer",
        "grant-wins-over-revoke",
    ];

    pub fn by_name(name: &str) -> Option<Mutants> {
        let mut m = Mutants::default();
        match name {
            "lease-without-drift-margin" => m.lease_without_drift_margin = true,
            "vote-not-persisted" => m.vote_not_persisted = true,
            "ack-before-quorum" => m.ack_before_quorum = true,
            "stale-leader-append-accepted" => m.stale_leader_append_accepted = true,
            "read-before-noop-commit" => m.read_before_noop_commit = true,
            "write-after-freeze" => m.write_after_freeze = true,
            "retry-ignores-table" => m.retry_ignores_table = true,
            "async-ack-forgets-pending" => m.async_ack_forgets_pending = true,
            "promise-forgotten-on-restart" => m.promise_forgotten_on_restart = true,
            "rpo-budget-ignored" => m.rpo_budget_ignored = true,
            "pipeline-refills-on-any-answer" => m.pipeline_refills_on_any_answer = true,
            "grant-wins-over-revoke" => m.grant_wins_over_revoke = true,
            _ => return None,
        }
        Some(m)
    }
}

/// Configuration shared by every node of a cluster. Times are microseconds of a
/// node's monotonic clock (suffix `_us`). One field per setting, each a named
/// limit or timing an operator may tune, which is why there are many.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Number of regions; one node and one home group per region.
    pub regions: u8,
    /// Minimum election timeout. A follower that heard from a leader promises not
    /// to vote for anyone else for this long (its local clock): the basis of leases.
    pub election_timeout_us: u64,
    pub heartbeat_interval_us: u64,
    /// Maximum clock rate error between any node's clock and true time, in parts
    /// per million. Leases shrink by this factor on both sides.
    pub clock_drift_max_ppm: u64,
    /// Extra safety taken off every lease.
    pub lease_margin_us: u64,
    /// How long the home region must look healthy before leadership returns to it.
    pub home_return_delay_us: u64,
    /// A client request not answered by then gets `Timeout` (writes: outcome unknown).
    pub request_timeout_us: u64,
    /// How long a read that carries a revision token may wait for it to apply.
    pub token_wait_max_us: u64,
    /// Periodic metadata (automerge) sync.
    pub meta_sync_interval_us: u64,
    /// A forward unanswered this long, with nothing heard from its peer since,
    /// sends a probe of the forward path; a probe unanswered as long again
    /// resets the link (see `Node::forward_watchdog`).
    pub forward_probe_after_us: u64,
    /// Take a snapshot and compact the log after this many applied entries...
    pub compact_after_entries: u64,
    /// ...and once the log holds at least this percentage of the last
    /// snapshot's size. A snapshot encodes the whole state, so taking one every
    /// N entries costs O(state) per N writes: with a large state that
    /// dominates every write (measured: puts of 1 KB at 1 region spent their
    /// p99 waiting behind 8 MB snapshots every 1000 entries). Tying it to the
    /// log's size amortises it to O(1) per byte written. 0: entries only.
    pub compact_log_pct_of_snapshot_min: u64,
    /// A leader holds compaction back while a live follower is behind its
    /// applied index (so it catches up from the log, not from yet another
    /// whole snapshot), until the log holds this many entries...
    pub compact_hold_entries_max: u64,
    /// ...or this many bytes. 0: never hold.
    pub compact_hold_bytes_max: u64,
    pub snapshot_chunk_bytes: usize,
    pub append_entries_max: usize,
    pub append_bytes_max: usize,
    pub message_bytes_max: usize,
    pub key_bytes_max: usize,
    pub value_bytes_max: usize,
    pub txn_ops_max: usize,
    /// Keys returned by one List page at most (larger limits are clamped).
    pub list_keys_max: usize,
    /// Keys one Scan returns at most; a larger match is refused (`ScanTooLarge`)
    /// rather than truncated, because a scan stands for a whole subtree.
    pub scan_keys_max: usize,
    /// Versions kept per key (the current one included).
    pub history_versions_max: usize,
    /// Change events kept per group for watch resumption.
    pub watch_history_max: usize,
    pub watchers_max: usize,
    /// Write request ids remembered per group for idempotent retries.
    pub idempotency_ids_max: usize,
    /// Audit records kept per group (cluster-wide: every replica must keep
    /// the same ones, or their chains' retained ranges differ).
    pub audit_retention: crate::audit::AuditRetention,
    pub pending_requests_max: usize,
    /// Entries appended but not committed, per group, before writes get `Overloaded`.
    pub uncommitted_entries_max: u64,
    pub namespaces: Vec<NamespaceSpec>,
    pub mutants: Mutants,
}

impl Config {
    /// Defaults for a WAN deployment of `regions` regions with one quorum and one
    /// async namespace homed in each region.
    pub fn new(regions: u8) -> Config {
        let mut namespaces = Vec::new();
        for g in 0..regions {
            namespaces.push(NamespaceSpec {
                name: format!("r{g}-quorum"),
                home: g,
                mode: ReplicationMode::Quorum,
            });
            namespaces.push(NamespaceSpec {
                name: format!("r{g}-async"),
                home: g,
                mode: ReplicationMode::Async {
                    rpo_budget_us: 2_000_000,
                },
            });
        }
        Config {
            regions,
            election_timeout_us: 1_000_000,
            heartbeat_interval_us: 150_000,
            clock_drift_max_ppm: 20_000,
            lease_margin_us: 50_000,
            home_return_delay_us: 5_000_000,
            request_timeout_us: 5_000_000,
            token_wait_max_us: 2_000_000,
            meta_sync_interval_us: 1_000_000,
            forward_probe_after_us: 1_000_000,
            compact_after_entries: 1_000,
            compact_log_pct_of_snapshot_min: 100,
            compact_hold_entries_max: 200_000,
            compact_hold_bytes_max: 64 << 20,
            snapshot_chunk_bytes: 64 * 1024,
            append_entries_max: 256,
            append_bytes_max: 1 << 20,
            message_bytes_max: 4 << 20,
            key_bytes_max: 1024,
            value_bytes_max: 1 << 20,
            txn_ops_max: 128,
            list_keys_max: 1000,
            scan_keys_max: 200_000,
            audit_retention: crate::audit::AuditRetention::default(),
            history_versions_max: 16,
            watch_history_max: 10_000,
            watchers_max: 50_000,
            idempotency_ids_max: 100_000,
            pending_requests_max: 10_000,
            uncommitted_entries_max: 10_000,
            namespaces,
            mutants: Mutants::default(),
        }
    }

    /// Check the configuration; the shell refuses to start on an error.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=32).contains(&self.regions) {
            return Err(format!("regions must be 1..=32, got {}", self.regions));
        }
        if self.heartbeat_interval_us * 3 > self.election_timeout_us {
            return Err(
                "heartbeat_interval_us must be at most a third of election_timeout_us".into(),
            );
        }
        if self.forward_probe_after_us == 0
            || self.forward_probe_after_us * 2 >= self.request_timeout_us
        {
            return Err(
                "forward_probe_after_us must be above 0 and below half of request_timeout_us"
                    .into(),
            );
        }
        if self.clock_drift_max_ppm >= 200_000 {
            return Err("clock_drift_max_ppm must be below 200000".into());
        }
        if self.lease_duration_us() == 0 {
            return Err("lease_margin_us leaves no lease at all".into());
        }
        if !(1..=10_000_000).contains(&self.audit_retention.records_max) {
            return Err(format!(
                "audit_records_max must be 1..=10000000, got {}",
                self.audit_retention.records_max
            ));
        }
        if self.snapshot_chunk_bytes + 4096 > self.message_bytes_max
            || self.append_bytes_max + self.value_bytes_max + 4096 > self.message_bytes_max * 2
        {
            return Err("message_bytes_max too small for snapshot chunks or appends".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for ns in &self.namespaces {
            if ns.home >= self.regions {
                return Err(format!(
                    "namespace {} has home {} but there are {} regions",
                    ns.name, ns.home, self.regions
                ));
            }
            if !names.insert(ns.name.as_str()) {
                return Err(format!("namespace {} defined twice", ns.name));
            }
        }
        Ok(())
    }

    pub fn majority(&self) -> usize {
        self.regions as usize / 2 + 1
    }

    pub fn nodes(&self) -> impl Iterator<Item = NodeId> {
        0..self.regions
    }

    /// The leader's lease, measured on its own clock from the send time of an
    /// acknowledged heartbeat round. Followers promise `election_timeout_us` of
    /// their clock; in true time that lasts at least ET/(1+ρ). The leader's lease
    /// of L local lasts at most L/(1-ρ) true; L = ET(1-ρ)/(1+ρ) - margin keeps it
    /// strictly inside the promise while every clock stays within ρ.
    pub fn lease_duration_us(&self) -> u64 {
        if self.mutants.lease_without_drift_margin {
            return self.election_timeout_us;
        }
        let rho = self.clock_drift_max_ppm;
        let scaled = (self.election_timeout_us as u128 * (1_000_000 - rho) as u128
            / (1_000_000 + rho) as u128) as u64;
        scaled.saturating_sub(self.lease_margin_us)
    }

    /// An upper bound on the true time that `local_us` of a node's clock can span.
    pub fn true_upper_us(&self, local_us: u64) -> u64 {
        (local_us as u128 * 1_000_000 / (1_000_000 - self.clock_drift_max_ppm) as u128) as u64
    }

    pub fn namespace(&self, name: &str) -> Option<&NamespaceSpec> {
        self.namespaces.iter().find(|n| n.name == name)
    }
}
