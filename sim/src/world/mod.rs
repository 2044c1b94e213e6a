//! The simulated world: regions running the real `meridian-core` nodes over a
//! simulated network (latency matrix, jitter, loss, duplication, reordering,
//! symmetric / asymmetric / one-way partitions, reliable ordered metadata
//! streams), simulated clocks (offset, drift within the bound), simulated disks
//! (unsynced writes lost on crash, failing fsync) and client workloads. One
//! seed derives everything; the event queue orders by (time, sequence), so a
//! seed replays exactly.
//!
//! This file holds the world's state and the loop; the events and their
//! queue order (`queue`), the clocks (`clock`), the nodes' hosting
//! (`hosting`), the network (`network`), clients and the operator
//! (`clients`) and fault episodes (`faults`) are in their own files.

mod clients;
mod clock;
mod faults;
mod hosting;
mod network;
mod queue;
mod swarm;

use clock::Clock;
use queue::{Ev, QItem};
pub use swarm::Swarm;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use meridian_core::rng::{fnv1a, Rng};
use meridian_core::wire::RaftMsg;
use meridian_core::*;

use crate::history::*;

#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub regions: u8,
    /// Total simulated time of a run.
    pub duration_us: u64,
    /// Faults happen in [2 s, fault_end_us); then everything heals.
    pub fault_end_us: u64,
    /// Clients stop issuing operations here, leaving time to converge.
    pub clients_stop_us: u64,
    pub ops_per_sec: u64,
    pub clients_per_region: usize,
    pub faults: bool,
    pub mutants: Mutants,
    pub rto_bound_us: u64,
    /// Record a readable trace (for replays of failures).
    pub trace: bool,
    /// Swarm testing: each seed draws its own fault mix (`Swarm`) and its
    /// own replication limits and election timeout (`core_config`).
    pub swarm: bool,
    /// The election timeout of the scenario (a swarm seed may stretch it).
    pub election_timeout_us: u64,
}

impl Options {
    /// The standard scenario: 3 regions, 100 client operations per simulated
    /// second, every fault class on.
    pub fn standard(seed: u64) -> Options {
        Options {
            seed,
            regions: 3,
            duration_us: 60_000_000,
            fault_end_us: 45_000_000,
            clients_stop_us: 50_000_000,
            ops_per_sec: 100,
            clients_per_region: 10,
            faults: true,
            mutants: Mutants::default(),
            rto_bound_us: 10_000_000,
            trace: false,
            swarm: false,
            election_timeout_us: 1_000_000,
        }
    }

    /// The long-timeout scenario: what a deployment across distant regions
    /// or flaky links configures, an election timeout of 3 s (heartbeats
    /// scaled with it), with an RTO bound that matches it.
    pub fn long_timeout(seed: u64) -> Options {
        let mut o = Options::standard(seed);
        o.election_timeout_us = 3_000_000;
        o.rto_bound_us = o.rto_bound_for(o.election_timeout_us);
        o
    }

    /// RTO bound for an election timeout: ten of them. Detection takes one
    /// or two, an election a few more when votes split or a candidate's
    /// log is behind; the rest is headroom (the standard scenario's worst
    /// in 2,000 seeds is below six).
    pub fn rto_bound_for(&self, election_timeout_us: u64) -> u64 {
        10 * election_timeout_us
    }

    /// The election timeout this seed runs with: a swarm seed stretches the
    /// scenario's threefold one time in four.
    pub fn effective_election_timeout_us(&self) -> u64 {
        if !self.swarm {
            return self.election_timeout_us;
        }
        let mut knobs = Rng::new(self.seed ^ 0x5157_4152_4d00_0003);
        self.election_timeout_us * *knobs.pick(&[1, 1, 1, 3])
    }

    /// The fault mix of this seed.
    pub fn swarm_mix(&self) -> Swarm {
        if self.swarm {
            Swarm::draw(self.seed)
        } else {
            Swarm::standard()
        }
    }

    pub fn core_config(&self) -> Config {
        let mut cfg = Config::new(self.regions);
        // Swarm testing: each seed draws its own limits from a stream of its
        // own (the world's stream is untouched), so some seeds replicate in
        // tiny appends (states where a follower holds part of a leader's
        // entries) or compact often (snapshot installs), others not at all.
        let mut knobs = Rng::new(self.seed ^ 0x5157_4152_4d00_0001);
        if self.swarm {
            cfg.append_entries_max = *knobs.pick(&[256, 256, 16, 8]);
        }
        // Small enough that snapshots, snapshot installs and watch resyncs
        // happen within a run.
        cfg.compact_after_entries = if self.swarm {
            *knobs.pick(&[150, 150, 40, 600])
        } else {
            150
        };
        // Entries only: the simulated state is small, and the size rule would
        // make compaction (and so snapshot installs) rarer than the checkers need.
        cfg.compact_log_pct_of_snapshot_min = 0;
        // Holding compaction for live followers behind the leader: off (every
        // compaction cuts them off, the most snapshot installs), or up to a
        // log of a few compaction periods.
        cfg.compact_hold_entries_max = if self.swarm {
            *knobs.pick(&[0, 0, 300, 2_000])
        } else {
            0
        };
        cfg.watch_history_max = 64;
        cfg.snapshot_chunk_bytes = 4 * 1024;
        // A wide drift bound (clocks drift across all of it): leases that ignore
        // drift then have a real window in which to overlap.
        cfg.clock_drift_max_ppm = 100_000;
        let et = self.effective_election_timeout_us();
        cfg.heartbeat_interval_us = cfg.heartbeat_interval_us * et / cfg.election_timeout_us;
        cfg.election_timeout_us = et;
        cfg.mutants = self.mutants;
        cfg
    }
}

struct SimNode {
    node: Option<Node>,
    inc: u64,
    clock: Clock,
    durable: Durable,
    volatile: Vec<StorageOp>,
    disk_busy_until: u64,
    timer_gen: u64,
    paused: bool,
    paused_events: Vec<Ev>,
    fail_next_sync: bool,
    /// Halted after a storage failure, waiting for the operator's restart.
    down_since: Option<u64>,
    /// Snapshot installs this life of the node reported so far.
    installs_seen: u64,
    /// When the node last installed a snapshot from a leader.
    installed_snapshot_at: Option<u64>,
    /// Partial appends this life of the node reported so far.
    partials_seen: u64,
    /// Running slow-disk episodes on this region.
    slow_disks: u32,
    /// Running stalled-appends episodes on this region.
    appends_stalled: u32,
    /// When the restart-before-vote site last bounced this node.
    bounced_at: Option<u64>,
    /// The grant and revocation keys of the node's metadata document, as
    /// last sampled (on every `MetaChanged` and every start).
    perm_keys: Vec<String>,
}

#[derive(Clone, Debug)]
enum Owner {
    /// `moving`: the op is on `MOVING_NS` (recorded in `History::mv_ops`).
    Op {
        client: usize,
        op: usize,
        moving: bool,
        /// The node the request went to (a retry may go to another region).
        node: NodeId,
    },
    Watch {
        client: usize,
    },
    Admin {
        region: NodeId,
        /// Index in `History::moves`; None: the create.
        mv: Option<usize>,
    },
}

/// The catalog namespace the operator keeps moving between regions while
/// clients use it (see `checkers::namespace_move`).
pub const MOVING_NS: &str = "moving";

struct Client {
    region: NodeId,
    busy: bool,
    backlog: u32,
    seq: u64,
    tokens: BTreeMap<GroupId, RevisionToken>,
    versions: BTreeMap<(String, String), u64>,
    watch: Option<usize>,
    watch_req: Option<RequestId>,
    watch_cursor: Option<u64>,
    /// The write in flight, kept to retry it with the same request id (as
    /// the real client library does) after TIMEOUT, INDETERMINATE or a lost
    /// connection: (request, attempts so far).
    retry: Option<(ClientRequest, u32)>,
}

/// Events per simulated second at most. A seed runs about 350 (a 3-region
/// cluster at 100 operations a second); a hundred times that is a storm of
/// messages that feed themselves, and stops the seed as a failure rather
/// than filling memory.
const EVENTS_PER_SIM_SECOND_MAX: u64 = 35_000;

/// The restart-before-vote site bounces one node at most this often.
const BOUNCE_GAP_US: u64 = 10_000_000;

/// Attempts of one write at most (the first and its retries).
const WRITE_ATTEMPTS_MAX: u32 = 4;

/// The whole simulated world of one seed. Its fields are the models it runs
/// together (queue, network, clocks, disks, nodes, clients, operator, faults)
/// and the trace; each model's methods live in their own file, but they
/// share one owner so that one seed orders every event, hence many fields.
pub struct World {
    pub opts: Options,
    cfg: Config,
    rng: Rng,
    pub now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<QItem>>,
    nodes: Vec<SimNode>,
    latency_us: Vec<Vec<u64>>,
    loss: f64,
    dup: f64,
    reorder: f64,
    cut: Vec<Vec<bool>>,
    meta_epoch: Vec<Vec<u64>>,
    meta_up: Vec<Vec<bool>>,
    meta_last: Vec<Vec<u64>>,
    clients: Vec<Client>,
    reqs: BTreeMap<RequestId, Owner>,
    next_req: RequestId,
    pub history: History,
    pub events: u64,
    pub trace_hash: u64,
    pub trace: Vec<(u64, String)>,
    pub garbage_sent: u64,
    pub restart_errors: Vec<String>,
    /// Fault episodes under way, and `NextEpisode` events queued.
    active: Vec<faults::Active>,
    episodes_scheduled: u32,
    swarm: Swarm,
    actions: Vec<Action>,
    last_describe_s: u64,
    seen_rev: BTreeMap<(NodeId, GroupId), u64>,
    pending_crash: Option<NodeId>,
    vote_crash_armed: bool,
    /// (group, follower, leader, term) -> round -> true end of the promise made on it.
    promises: crate::checkers::lease_safety::Promises,
    lease_checked: BTreeMap<(NodeId, GroupId), u64>,
    /// The operator saw `MOVING_NS` created.
    moving_created: bool,
    /// The run stopped at this time with too many events (a storm).
    pub storm: Option<u64>,
}

fn mix(h: u64, x: u64) -> u64 {
    (h ^ x).wrapping_mul(0x0100_0000_01b3).rotate_left(5)
}

impl World {
    pub fn new(opts: Options) -> World {
        let cfg = opts.core_config();
        let mut rng = Rng::new(opts.seed);
        let n = opts.regions as usize;
        let mut latency_us = vec![vec![0; n]; n];
        // Symmetric one-way latencies, drawn once per pair.
        for (i, j) in (0..n).flat_map(|i| (i + 1..n).map(move |j| (i, j))) {
            let l = rng.range(5_000, 150_001);
            latency_us[i][j] = l;
            latency_us[j][i] = l;
        }
        let (loss, dup, reorder) = if opts.faults {
            (
                rng.range(0, 40) as f64 / 1000.0,
                rng.range(0, 20) as f64 / 1000.0,
                rng.range(0, 50) as f64 / 1000.0,
            )
        } else {
            (0.0, 0.0, 0.0)
        };
        let rho = cfg.clock_drift_max_ppm as i64;
        let mut nodes = Vec::new();
        for _ in 0..n {
            let clock = Clock {
                offset_us: rng.range(0, 1 << 40),
                // Clocks sit at either edge of the bound as often as inside it:
                // the edges are where lease arithmetic is tested.
                drift_ppm: if !opts.faults {
                    0
                } else {
                    match rng.range(0, 3) {
                        0 => -rho,
                        1 => rho,
                        _ => rng.range(0, (2 * rho + 1) as u64) as i64 - rho,
                    }
                },
            };
            nodes.push(SimNode {
                node: None,
                inc: 0,
                clock,
                durable: Durable::new(opts.regions),
                volatile: Vec::new(),
                disk_busy_until: 0,
                timer_gen: 0,
                paused: false,
                paused_events: Vec::new(),
                fail_next_sync: false,
                down_since: None,
                installs_seen: 0,
                installed_snapshot_at: None,
                partials_seen: 0,
                slow_disks: 0,
                appends_stalled: 0,
                bounced_at: None,
                perm_keys: Vec::new(),
            });
        }
        let mut history = History::new(opts.regions);
        history.clock_drift_max_ppm = cfg.clock_drift_max_ppm;
        history.rto_bound_us = if opts.swarm {
            opts.rto_bound_for(cfg.election_timeout_us)
        } else {
            opts.rto_bound_us
        };
        for ns in &cfg.namespaces {
            if let ReplicationMode::Async { rpo_budget_us } = ns.mode {
                history.rpo_budget_us.insert(ns.name.clone(), rpo_budget_us);
            }
        }
        let clients = (0..n * opts.clients_per_region)
            .map(|c| Client {
                region: (c % n) as NodeId,
                busy: false,
                backlog: 0,
                seq: 0,
                tokens: BTreeMap::new(),
                versions: BTreeMap::new(),
                watch: None,
                watch_req: None,
                watch_cursor: None,
                retry: None,
            })
            .collect();
        let mut w = World {
            cfg,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            latency_us,
            loss,
            dup,
            reorder,
            cut: vec![vec![false; n]; n],
            meta_epoch: vec![vec![0; n]; n],
            meta_up: vec![vec![true; n]; n],
            meta_last: vec![vec![0; n]; n],
            clients,
            reqs: BTreeMap::new(),
            next_req: 1,
            history,
            events: 0,
            trace_hash: 0xcbf2_9ce4_8422_2325,
            trace: Vec::new(),
            garbage_sent: 0,
            restart_errors: Vec::new(),
            active: Vec::new(),
            episodes_scheduled: 0,
            swarm: opts.swarm_mix(),
            actions: Vec::new(),
            last_describe_s: u64::MAX,
            seen_rev: BTreeMap::new(),
            pending_crash: None,
            vote_crash_armed: false,
            promises: BTreeMap::new(),
            lease_checked: BTreeMap::new(),
            moving_created: false,
            storm: None,
            opts,
        };
        for i in 0..n {
            w.start_node(i as NodeId);
        }
        let mean = w.arrival_mean_us();
        for c in 0..w.clients.len() {
            let at = w.rng.range(0, 2 * mean);
            w.schedule(at, Ev::ClientArrive { client: c });
        }
        if w.opts.faults {
            w.episodes_scheduled += 1;
            w.schedule(2_000_000, Ev::NextEpisode);
            w.schedule(1_000_000, Ev::Garbage);
        }
        w.schedule(1_500_000, Ev::Admin);
        w
    }

    fn arrival_mean_us(&self) -> u64 {
        (self.clients.len() as u64 * 1_000_000 / self.opts.ops_per_sec.max(1)).max(1)
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(QItem {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        }));
    }

    fn note(&mut self, s: impl FnOnce() -> String) {
        if self.opts.trace {
            let line = s();
            self.trace.push((self.now, line));
        }
    }

    fn local(&self, n: NodeId) -> u64 {
        self.nodes[n as usize].clock.local(self.now)
    }

    fn dispatch(&mut self, ev: Ev) {
        if let Some(n) = ev.target() {
            let sn = &mut self.nodes[n as usize];
            if sn.paused {
                sn.paused_events.push(ev);
                return;
            }
        }
        match ev {
            Ev::Deliver {
                to,
                from,
                bytes,
                meta_epoch,
            } => {
                if let Some(e) = meta_epoch {
                    if e != self.meta_epoch[from as usize][to as usize] {
                        return;
                    }
                }
                self.trace_hash = mix(self.trace_hash, fnv1a(&bytes));
                self.with_node(to, |node, now| {
                    let _ = node.handle_message(now, from, &bytes);
                });
            }
            Ev::Timer { node, gen } => {
                if self.nodes[node as usize].timer_gen == gen {
                    self.with_node(node, |x, now| x.handle_timeout(now));
                }
            }
            Ev::Disk {
                node,
                inc,
                id,
                sync,
                ops,
                fail,
            } => {
                let sn = &mut self.nodes[node as usize];
                if sn.inc != inc || sn.node.is_none() {
                    return;
                }
                if fail {
                    // fsync failed: what was not synced is gone; the node must stop.
                    sn.volatile.clear();
                    self.with_node(node, |x, now| x.handle_storage_failed(now));
                    return;
                }
                if sync {
                    let vol = std::mem::take(&mut sn.volatile);
                    for op in vol.iter().chain(ops.iter()) {
                        if let Err(e) = sn.durable.apply(op) {
                            self.restart_errors
                                .push(format!("node {node}: storage op rejected: {e}"));
                        }
                    }
                } else {
                    sn.volatile.extend(ops);
                }
                self.with_node(node, |x, now| x.handle_persisted(now, id));
            }
            Ev::ClientArrive { client } => {
                if self.now < self.opts.clients_stop_us {
                    let mean = self.arrival_mean_us();
                    let at = self.now + self.rng.range(1, 2 * mean);
                    self.schedule(at, Ev::ClientArrive { client });
                    if self.clients[client].busy {
                        self.clients[client].backlog = (self.clients[client].backlog + 1).min(3);
                    } else {
                        self.issue_op(client);
                    }
                }
            }
            Ev::ClientReq { node, req, request } => {
                if self.reqs.contains_key(&req) {
                    self.with_node(node, |x, now| x.handle_client(now, req, request));
                }
            }
            Ev::PeerReset { node, peer } => {
                self.with_node(node, |x, now| x.handle_peer_reset(now, peer))
            }
            Ev::Heal { episode } => self.heal(episode),
            Ev::Restart { node } => {
                if self.nodes[node as usize].node.is_none()
                    && !self.episode_holds(node, &[EpisodeKind::Crash])
                {
                    self.start_node(node);
                }
            }
            Ev::NextEpisode => self.next_episode(),
            Ev::Bounce { node, restart_at } => {
                let sn = &mut self.nodes[node as usize];
                // A restart resets the node's promise window, so bouncing
                // a voter at every request would keep any election from
                // ending: one bounce per node per `BOUNCE_GAP_US`.
                let rested = sn.bounced_at.is_none_or(|b| self.now >= b + BOUNCE_GAP_US);
                if sn.node.is_some() && rested {
                    sn.bounced_at = Some(self.now);
                    self.note(|| format!("BUGGIFY node {node} restarts before a vote request"));
                    self.history.cover(Coverage::RestartBeforeVote);
                    // A second fault inside a running episode: an overlap.
                    self.mark_overlapped();
                    self.crash(node);
                    self.schedule(restart_at, Ev::Restart { node });
                }
            }
            Ev::Garbage => self.garbage(),
            Ev::Admin => self.admin(),
            Ev::ClientRetry { client, op, moving } => self.retry_write(client, op, moving),
        }
    }

    /// Run to the end of the scenario, or until `EVENTS_PER_SIM_SECOND_MAX`
    /// is passed (a message storm; see `storm`).
    pub fn run(&mut self) {
        let events_max = EVENTS_PER_SIM_SECOND_MAX * self.opts.duration_us.div_ceil(1_000_000);
        while let Some(Reverse(item)) = self.queue.pop() {
            if item.at > self.opts.duration_us {
                break;
            }
            if self.events >= events_max {
                self.storm = Some(item.at);
                break;
            }
            self.now = item.at;
            self.events += 1;
            self.trace_hash = mix(mix(self.trace_hash, item.at), item.seq);
            if self.opts.trace && item.at / 1_000_000 != self.last_describe_s {
                self.last_describe_s = item.at / 1_000_000;
                for n in 0..self.opts.regions {
                    if let Some(x) = &self.nodes[n as usize].node {
                        for g in 0..self.opts.regions {
                            let d = x.describe_group(g);
                            self.trace
                                .push((self.now, format!("node {n} group {g}: {d}")));
                        }
                    }
                }
            }
            self.dispatch(item.ev);
        }
        self.now = self.opts.duration_us;
        if self.opts.trace {
            for n in 0..self.opts.regions {
                if let Some(x) = &self.nodes[n as usize].node {
                    for g in 0..self.opts.regions {
                        let line = format!("END node {n} group {g} log {:?}", x.log_summary(g));
                        self.trace.push((self.now, line));
                    }
                }
            }
        }
    }

    pub fn node_stats(&self) -> Vec<Option<Stats>> {
        self.nodes
            .iter()
            .map(|n| n.node.as_ref().map(|x| x.stats().clone()))
            .collect()
    }

    /// Each running node's view of `MOVING_NS` at the end: home, move under
    /// way, and the retained versions of every key the clients use.
    pub fn moving_finals(&self) -> Vec<Option<crate::checkers::namespace_move::NodeFinal>> {
        self.nodes
            .iter()
            .map(|sn| {
                let x = sn.node.as_ref().filter(|x| !x.is_halted())?;
                let (home, moving_to) = x.ns_home(MOVING_NS)?;
                let keys = (0..6)
                    .map(|k| {
                        let key = format!("k{k}");
                        let h = x.history(MOVING_NS, &key);
                        (key, h)
                    })
                    .collect();
                Some(crate::checkers::namespace_move::NodeFinal {
                    home,
                    moving_to,
                    keys,
                })
            })
            .collect()
    }

    pub fn finals(&mut self) -> Vec<crate::checkers::convergence::NodeFinal> {
        let regions = self.opts.regions;
        let mut errors = Vec::new();
        let finals = self
            .nodes
            .iter_mut()
            .enumerate()
            .map(|(n, sn)| match sn.node.as_mut() {
                Some(x) if !x.is_halted() => crate::checkers::convergence::NodeFinal {
                    up: true,
                    revisions: (0..regions).map(|g| x.applied_revision(g)).collect(),
                    digests: (0..regions)
                        .filter_map(|g| match x.state_digest(g) {
                            Ok(d) => Some(d),
                            Err(e) => {
                                errors.push(format!("node {n} group {g}: {e}"));
                                None
                            }
                        })
                        .collect(),
                    meta_heads: x.meta_heads(),
                },
                _ => crate::checkers::convergence::NodeFinal::default(),
            })
            .collect();
        self.restart_errors.extend(errors);
        finals
    }
}
