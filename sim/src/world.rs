//! The simulated world: regions running the real `meridian-core` nodes over a
//! simulated network (latency matrix, jitter, loss, duplication, reordering,
//! symmetric / asymmetric / one-way partitions, reliable ordered metadata
//! streams), simulated clocks (offset, drift within the bound), simulated disks
//! (unsynced writes lost on crash, failing fsync) and client workloads. One
//! seed derives everything; the event queue orders by (time, sequence), so a
//! seed replays exactly.

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
        }
    }

    pub fn core_config(&self) -> Config {
        let mut cfg = Config::new(self.regions);
        // Small enough that snapshots, snapshot installs and watch resyncs
        // happen within a run.
        cfg.compact_after_entries = 150;
        // Entries only: the simulated state is small, and the size rule would
        // make compaction (and so snapshot installs) rarer than the checkers need.
        cfg.compact_log_pct_of_snapshot_min = 0;
        cfg.watch_history_max = 64;
        cfg.snapshot_chunk_bytes = 4 * 1024;
        // A wide drift bound (clocks drift across all of it): leases that ignore
        // drift then have a real window in which to overlap.
        cfg.clock_drift_max_ppm = 100_000;
        cfg.mutants = self.mutants;
        cfg
    }
}

#[derive(Clone, Copy, Debug)]
struct Clock {
    offset_us: u64,
    drift_ppm: i64,
}

impl Clock {
    fn local(self, t: u64) -> u64 {
        let d = (t as i128 * self.drift_ppm as i128 / 1_000_000) as i64;
        (self.offset_us as i64 + t as i64 + d) as u64
    }
    /// The earliest true time at which the local clock reads at least `l`.
    fn to_true(self, l: u64) -> u64 {
        if l <= self.offset_us {
            return 0;
        }
        let x = (l - self.offset_us) as i128 * 1_000_000;
        let den = 1_000_000 + self.drift_ppm as i128;
        let mut t = ((x + den - 1) / den) as u64;
        while self.local(t) < l {
            t += 1;
        }
        t
    }
}

#[derive(Clone, Debug)]
enum Ev {
    Deliver {
        to: NodeId,
        from: NodeId,
        bytes: Vec<u8>,
        meta_epoch: Option<u64>,
    },
    Timer {
        node: NodeId,
        gen: u64,
    },
    Disk {
        node: NodeId,
        inc: u64,
        id: u64,
        sync: bool,
        ops: Vec<StorageOp>,
        fail: bool,
    },
    ClientArrive {
        client: usize,
    },
    ClientReq {
        node: NodeId,
        req: RequestId,
        request: ClientRequest,
    },
    PeerReset {
        node: NodeId,
        peer: NodeId,
    },
    Restart {
        node: NodeId,
    },
    Heal {
        region: NodeId,
        kind: EpisodeKind,
    },
    NextEpisode,
    Garbage,
    /// The operator's next step on the moving namespace: create it, then move
    /// its home region again and again.
    Admin,
}

impl Ev {
    fn target(&self) -> Option<NodeId> {
        match self {
            Ev::Deliver { to, .. } => Some(*to),
            Ev::Timer { node, .. }
            | Ev::Disk { node, .. }
            | Ev::ClientReq { node, .. }
            | Ev::PeerReset { node, .. } => Some(*node),
            _ => None,
        }
    }
}

struct QItem {
    at: u64,
    seq: u64,
    ev: Ev,
}
impl PartialEq for QItem {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for QItem {}
impl PartialOrd for QItem {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for QItem {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
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
}

#[derive(Clone, Debug)]
enum Owner {
    /// `moving`: the op is on `MOVING_NS` (recorded in `History::mv_ops`).
    Op {
        client: usize,
        op: usize,
        moving: bool,
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
}

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
    current_episode: Option<usize>,
    actions: Vec<Action>,
    last_describe_s: u64,
    seen_rev: BTreeMap<(NodeId, GroupId), u64>,
    pending_crash: Option<NodeId>,
    vote_crash_armed: bool,
    /// (group, follower, leader, term) -> round -> true end of the promise made on it.
    promises: BTreeMap<(GroupId, NodeId, NodeId, u64), BTreeMap<u64, u64>>,
    lease_checked: BTreeMap<(NodeId, GroupId), u64>,
    /// The operator saw `MOVING_NS` created.
    moving_created: bool,
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
            });
        }
        let mut history = History::new(opts.regions);
        history.clock_drift_max_ppm = cfg.clock_drift_max_ppm;
        history.rto_bound_us = opts.rto_bound_us;
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
            current_episode: None,
            actions: Vec::new(),
            last_describe_s: u64::MAX,
            seen_rev: BTreeMap::new(),
            pending_crash: None,
            vote_crash_armed: false,
            promises: BTreeMap::new(),
            lease_checked: BTreeMap::new(),
            moving_created: false,
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

    fn start_node(&mut self, n: NodeId) {
        let local = self.local(n);
        let sn = &mut self.nodes[n as usize];
        sn.inc += 1;
        sn.volatile.clear();
        sn.down_since = None;
        let seed = self.opts.seed ^ (sn.inc << 32) ^ n as u64;
        match Node::new(self.cfg.clone(), n, sn.durable.clone(), local, seed) {
            Ok(node) => sn.node = Some(node),
            Err(e) => {
                self.restart_errors
                    .push(format!("node {n} failed to start: {e}"));
                return;
            }
        }
        let inc = self.nodes[n as usize].inc;
        self.note(|| format!("node {n} started (incarnation {inc})"));
        self.after_step(n);
        self.refresh_links();
        // Clients of this region re-open their watches.
        for c in 0..self.clients.len() {
            if self.clients[c].region == n && self.clients[c].watch.is_some() {
                self.open_watch(c);
            }
        }
    }

    fn crash(&mut self, n: NodeId) {
        let sn = &mut self.nodes[n as usize];
        if sn.node.is_none() {
            return;
        }
        sn.node = None;
        sn.volatile.clear();
        sn.paused = false;
        sn.paused_events.clear();
        sn.down_since = Some(self.now);
        sn.timer_gen += 1;
        self.history.end_lease(n, self.now);
        self.note(|| format!("node {n} crashed"));
        // Clients of the region lose their in-flight requests and watches.
        let lost: Vec<(RequestId, Owner)> = self
            .reqs
            .iter()
            .filter(|(_, o)| match o {
                Owner::Op { client, .. } | Owner::Watch { client } => {
                    self.clients[*client].region == n
                }
                Owner::Admin { region, .. } => *region == n,
            })
            .map(|(r, o)| (*r, o.clone()))
            .collect();
        for (r, o) in lost {
            self.reqs.remove(&r);
            match o {
                Owner::Op { client, op, moving } => {
                    self.op_rec(op, moving).outcome = Outcome::Lost;
                    self.client_idle(client);
                }
                Owner::Admin { mv, .. } => {
                    if let Some(m) = mv {
                        self.history.moves[m].outcome = Outcome::Lost;
                    }
                }
                Owner::Watch { client } => {
                    if let Some(w) = self.clients[client].watch {
                        self.history.watches[w]
                            .recs
                            .push(WatchRec::Disconnected { at_us: self.now });
                    }
                    self.clients[client].watch_req = None;
                }
            }
        }
        self.refresh_links();
    }

    /// Re-evaluate which reliable metadata streams are up; tell both ends of
    /// every stream that was re-established.
    fn refresh_links(&mut self) {
        let n = self.opts.regions as usize;
        for a in 0..n {
            for b in a + 1..n {
                let up = !self.cut[a][b]
                    && !self.cut[b][a]
                    && self.nodes[a].node.is_some()
                    && self.nodes[b].node.is_some();
                if up != self.meta_up[a][b] {
                    self.meta_up[a][b] = up;
                    self.meta_up[b][a] = up;
                    self.meta_epoch[a][b] += 1;
                    self.meta_epoch[b][a] += 1;
                    if up {
                        for (x, y) in [(a, b), (b, a)] {
                            self.dispatch(Ev::PeerReset {
                                node: x as NodeId,
                                peer: y as NodeId,
                            });
                        }
                    }
                }
            }
        }
    }

    /// A node's shell resets its connections with `peer`, as the real
    /// transport does: metadata streams of the pair start over on both sides.
    fn reset_link(&mut self, n: NodeId, peer: NodeId) {
        let (a, b) = (n as usize, peer as usize);
        if b >= self.meta_up.len() || a == b {
            return;
        }
        self.note(|| format!("node {a} resets its link to node {b}"));
        self.meta_epoch[a][b] += 1;
        self.meta_epoch[b][a] += 1;
        if self.meta_up[a][b] {
            for (x, y) in [(a, b), (b, a)] {
                self.dispatch(Ev::PeerReset {
                    node: x as NodeId,
                    peer: y as NodeId,
                });
            }
        }
    }

    /// Run `f` on a live, unpaused node, then process its actions.
    fn with_node(&mut self, n: NodeId, f: impl FnOnce(&mut Node, u64)) {
        let local = self.local(n);
        let sn = &mut self.nodes[n as usize];
        let Some(node) = sn.node.as_mut() else { return };
        f(node, local);
        self.after_step(n);
    }

    fn after_step(&mut self, n: NodeId) {
        let mut actions = std::mem::take(&mut self.actions);
        let local_now = self.local(n);
        {
            let Some(node) = self.nodes[n as usize].node.as_mut() else {
                return;
            };
            node.drain_actions(&mut actions);
        }
        for a in actions.drain(..) {
            match a {
                Action::Send { to, channel, bytes } => self.net_send(n, to, channel, bytes),
                Action::Persist { id, sync, ops } => {
                    let lat = if sync { self.rng.range(500, 5_000) } else { 20 };
                    let sn = &mut self.nodes[n as usize];
                    let at = sn.disk_busy_until.max(self.now) + lat;
                    sn.disk_busy_until = at;
                    let fail = sync && std::mem::take(&mut sn.fail_next_sync);
                    let inc = sn.inc;
                    self.schedule(
                        at,
                        Ev::Disk {
                            node: n,
                            inc,
                            id,
                            sync,
                            ops,
                            fail,
                        },
                    );
                }
                Action::Reply { req, resp } => self.on_reply(req, resp),
                Action::SetTimer { at_us } => {
                    let sn = &mut self.nodes[n as usize];
                    sn.timer_gen += 1;
                    let gen = sn.timer_gen;
                    let at = if at_us <= local_now {
                        self.now
                    } else {
                        sn.clock.to_true(at_us)
                    };
                    self.schedule(at, Ev::Timer { node: n, gen });
                }
                Action::Observe(o) => self.observe(n, o),
                Action::ResetPeer { peer } => self.reset_link(n, peer),
            }
        }
        self.actions = actions;
        if self.opts.trace {
            if let Some(node) = self.nodes[n as usize].node.as_ref() {
                for g in 0..self.opts.regions {
                    let rev = node.applied_revision(g);
                    let key = (n, g);
                    let last = self.seen_rev.get(&key).copied().unwrap_or(0);
                    if rev != last && rev != last + 1 {
                        let line = format!(
                            "node {n} group {g}: revision jumped {last} -> {rev} (commit {})",
                            node.commit_index(g)
                        );
                        self.trace.push((self.now, line));
                    }
                    self.seen_rev.insert(key, rev);
                }
            }
        }
        // Record the node's lease belief from now on.
        let Some(node) = self.nodes[n as usize].node.as_ref() else {
            return;
        };
        let clock = self.nodes[n as usize].clock;
        for g in 0..self.opts.regions {
            match node.lease_expiry_us(g) {
                Some(e) => {
                    let end = clock.to_true(e);
                    // Only a lease that moved needs its coverage checked again.
                    let moved = self.lease_checked.insert((n, g), e) != Some(e);
                    if let Some((term, round)) = node.lease_basis(g).filter(|_| moved) {
                        // The lease must end before the promises of a majority
                        // (this node included) that received round >= `round`.
                        let mut covered = 1;
                        let mut worst = Vec::new();
                        for f in 0..self.opts.regions {
                            if f == n {
                                continue;
                            }
                            let promise = self
                                .promises
                                .get(&(g, f, n, term))
                                .and_then(|m| m.range(round..).take(8).map(|(_, e)| *e).min());
                            match promise {
                                Some(p) if p >= end => covered += 1,
                                other => worst.push((f, other)),
                            }
                        }
                        if covered < self.cfg.majority() {
                            let detail = format!("lease of term {term} round {round} ends at t={end}us; short promises {worst:?}");
                            self.history.uncovered_leases.push((g, n, self.now, detail));
                        }
                    }
                    self.history.record_lease(g, n, self.now, end);
                }
                None => {
                    if let Some(last) = self.history.leases[g as usize][n as usize].last_mut() {
                        if last.1 > self.now {
                            last.1 = self.now;
                        }
                    }
                }
            }
        }
        if node.is_halted() && self.nodes[n as usize].down_since.is_none() {
            // Storage failed: the node stopped; the operator restarts it.
            self.crash(n);
        }
        if self.pending_crash == Some(n) {
            self.pending_crash = None;
            self.crash(n);
        }
    }

    fn observe(&mut self, n: NodeId, o: Observation) {
        match o {
            Observation::BecameLeader { group, term } => {
                self.note(|| format!("node {n} leads group {group} in term {term}"));
                self.history.elections.push((group, term, n, self.now));
            }
            Observation::Applied {
                group,
                revision,
                request_id,
                digest,
                ns,
                keys,
            } => {
                let a = Applied {
                    request_id,
                    digest,
                    ns,
                    keys,
                    first_node: n,
                    at_us: self.now,
                };
                self.history.record_applied(group, revision, n, a);
            }
            Observation::Promised {
                group,
                leader,
                term,
                round,
            } => {
                let end = self.nodes[n as usize]
                    .clock
                    .to_true(self.local(n) + self.cfg.election_timeout_us);
                let m = self.promises.entry((group, n, leader, term)).or_default();
                m.insert(round, end);
            }
            Observation::Halted => self.note(|| format!("node {n} halted")),
            Observation::NamespaceMoved {
                ns,
                group,
                revision,
            } => {
                self.note(|| format!("node {n}: {ns} now complete in group {group} at {revision}"));
                self.history.moves_completed.insert((group, revision));
            }
        }
    }

    fn net_send(&mut self, from: NodeId, to: NodeId, channel: Channel, bytes: Vec<u8>) {
        let (f, t) = (from as usize, to as usize);
        let lat = self.latency_us[f][t];
        let jitter = self.rng.range(0, lat / 10 + 1);
        match channel {
            Channel::Meta => {
                if !self.meta_up[f][t] {
                    return;
                }
                let at = (self.now + lat + jitter).max(self.meta_last[f][t]);
                self.meta_last[f][t] = at;
                let epoch = self.meta_epoch[f][t];
                self.schedule(
                    at,
                    Ev::Deliver {
                        to,
                        from,
                        bytes,
                        meta_epoch: Some(epoch),
                    },
                );
            }
            Channel::Group(_) | Channel::Forward => {
                if bytes.len() < 48 {
                    let msg = Msg::decode(&bytes, 64);
                    if let Ok(Msg::Raft {
                        group,
                        term,
                        body:
                            RaftMsg::AppendResp {
                                success: true,
                                match_index,
                                ..
                            },
                    }) = &msg
                    {
                        let d = &self.nodes[f].durable.groups[*group as usize];
                        let snap = d.snapshot.as_ref().map_or(0, |s| s.index);
                        if d.term < *term || *match_index > snap + d.entries.len() as u64 {
                            self.history.undurable_replies.push((
                                "an append acknowledgement",
                                *group,
                                from,
                                self.now,
                            ));
                        }
                    }
                    if let Ok(Msg::Raft {
                        group,
                        term,
                        body: RaftMsg::VoteResp { granted: true },
                    }) = msg
                    {
                        let d = &self.nodes[f].durable.groups[group as usize];
                        if d.term != term || d.vote != Some(to) {
                            self.history.undurable_replies.push((
                                "a granted vote",
                                group,
                                from,
                                self.now,
                            ));
                        }
                        self.history.votes.push((group, term, from, to, self.now));
                        if self.vote_crash_armed {
                            // Crash the voter right after it granted a vote: the
                            // moment an unpersisted vote would be forgotten.
                            self.crash_after_vote(from);
                        }
                    }
                }
                if self.cut[f][t] || self.rng.chance(self.loss) {
                    return;
                }
                let mut delay = lat + jitter;
                if self.rng.chance(self.reorder) {
                    delay += self.rng.range(0, 2 * lat + 1);
                }
                if self.rng.chance(self.dup) {
                    let extra = self.rng.range(0, lat + 1);
                    self.schedule(
                        self.now + delay + extra,
                        Ev::Deliver {
                            to,
                            from,
                            bytes: bytes.clone(),
                            meta_epoch: None,
                        },
                    );
                }
                self.schedule(
                    self.now + delay,
                    Ev::Deliver {
                        to,
                        from,
                        bytes,
                        meta_epoch: None,
                    },
                );
            }
        }
    }

    // ----- clients -----

    fn client_idle(&mut self, c: usize) {
        self.clients[c].busy = false;
        if self.now >= self.opts.clients_stop_us {
            self.clients[c].backlog = 0;
        }
        if self.clients[c].backlog > 0 {
            self.clients[c].backlog -= 1;
            self.issue_op(c);
        }
    }

    fn on_reply(&mut self, req: RequestId, resp: ClientResponse) {
        let Some(owner) = self.reqs.get(&req).cloned() else {
            return;
        };
        match owner {
            Owner::Admin { mv, .. } => {
                self.reqs.remove(&req);
                self.note(|| format!("operator <- {resp:?}"));
                match mv {
                    None => {
                        if matches!(
                            resp,
                            ClientResponse::Written { .. } | ClientResponse::Conflict { .. }
                        ) {
                            self.moving_created = true;
                        }
                    }
                    Some(m) => {
                        let rec = &mut self.history.moves[m];
                        rec.complete_us = Some(self.now);
                        rec.outcome = Outcome::Done(resp);
                    }
                }
            }
            Owner::Op { client, op, moving } => {
                self.reqs.remove(&req);
                let rec = if moving {
                    &mut self.history.mv_ops[op]
                } else {
                    &mut self.history.ops[op]
                };
                rec.complete_us = Some(self.now);
                let cl = &mut self.clients[client];
                match (&rec.kind, &resp) {
                    (OpKind::Get { key, .. }, ClientResponse::Value { kv, token }) => {
                        cl.versions
                            .insert((rec.ns.clone(), key.clone()), kv.version);
                        let t = cl.tokens.entry(token.group).or_insert(*token);
                        t.revision = t.revision.max(token.revision);
                    }
                    (OpKind::Write { ops, .. }, ClientResponse::Written { versions, token }) => {
                        for (o, v) in ops.iter().zip(versions) {
                            cl.versions
                                .insert((rec.ns.clone(), o.key().to_string()), *v);
                        }
                        let t = cl.tokens.entry(token.group).or_insert(*token);
                        t.revision = t.revision.max(token.revision);
                    }
                    _ => {}
                }
                let trace = self.opts.trace;
                if trace {
                    let line = format!("client {client} <- {resp:?}");
                    self.trace.push((self.now, line));
                }
                self.op_rec(op, moving).outcome = Outcome::Done(resp);
                self.client_idle(client);
            }
            Owner::Watch { client } => {
                let Some(w) = self.clients[client].watch else {
                    return;
                };
                let rec = match resp {
                    ClientResponse::WatchEvents { events, revision } => {
                        self.clients[client].watch_cursor = Some(revision);
                        WatchRec::Events { revision, events }
                    }
                    ClientResponse::WatchResync { snapshot, revision } => {
                        self.clients[client].watch_cursor = Some(revision);
                        WatchRec::Resync { revision, snapshot }
                    }
                    other => {
                        self.note(|| format!("watch of client {client} got {other:?}"));
                        return;
                    }
                };
                self.history.watches[w].recs.push(rec);
            }
        }
    }

    fn open_watch(&mut self, c: usize) {
        let region = self.clients[c].region;
        if self.nodes[region as usize].node.is_none() {
            return;
        }
        let w = match self.clients[c].watch {
            Some(w) => w,
            None => {
                let spec = self.rng.pick(&self.cfg.namespaces).clone();
                let prefix = if self.rng.chance(0.5) {
                    String::new()
                } else {
                    format!("k{}", self.rng.range(0, 3))
                };
                self.history.watches.push(WatchLog {
                    client: c,
                    region,
                    ns: spec.name,
                    group: spec.home,
                    prefix,
                    recs: Vec::new(),
                });
                let w = self.history.watches.len() - 1;
                self.clients[c].watch = Some(w);
                w
            }
        };
        let from = self.clients[c].watch_cursor;
        let req = self.next_req;
        self.next_req += 1;
        self.reqs.insert(req, Owner::Watch { client: c });
        self.clients[c].watch_req = Some(req);
        let log = &mut self.history.watches[w];
        log.recs.push(WatchRec::Start {
            from,
            at_us: self.now,
        });
        let request = ClientRequest::Watch {
            ns: log.ns.clone(),
            prefix: log.prefix.clone(),
            start_revision: from,
        };
        self.client_request(region, req, request);
    }

    /// Client requests go through the queue (at the current instant) so a node
    /// is never stepped while the actions of another step are being processed.
    fn client_request(&mut self, n: NodeId, req: RequestId, request: ClientRequest) {
        self.schedule(
            self.now,
            Ev::ClientReq {
                node: n,
                req,
                request,
            },
        );
    }

    fn op_rec(&mut self, op: usize, moving: bool) -> &mut OpRecord {
        if moving {
            &mut self.history.mv_ops[op]
        } else {
            &mut self.history.ops[op]
        }
    }

    /// The operator: create `MOVING_NS` (retrying until it exists), then move
    /// its home to a random region every few seconds until clients stop.
    fn admin(&mut self) {
        if self.now >= self.opts.clients_stop_us {
            return;
        }
        let n = self.opts.regions as u64;
        let region = self.rng.range(0, n) as NodeId;
        let next = if self.moving_created {
            self.rng.range(3_000_000, 8_000_000)
        } else {
            500_000
        };
        self.schedule(self.now + next, Ev::Admin);
        if self.nodes[region as usize].node.is_none() {
            return;
        }
        let req = self.next_req;
        self.next_req += 1;
        let request = if !self.moving_created {
            self.reqs.insert(req, Owner::Admin { region, mv: None });
            ClientRequest::CreateNamespace {
                ns: MOVING_NS.to_string(),
                settings: NsSettings {
                    home: self.rng.range(0, n) as GroupId,
                    mode: ReplicationMode::Quorum,
                    history_versions_max: 0,
                    history_age_ms_max: 0,
                    moving_to: None,
                    adopt_revision: 0,
                },
                request_id: 0xAD_0000_0001,
            }
        } else {
            let to = self.rng.range(0, n) as GroupId;
            self.history.moves.push(MoveRec {
                to,
                invoke_us: self.now,
                complete_us: None,
                outcome: Outcome::Pending,
            });
            let mv = Some(self.history.moves.len() - 1);
            self.reqs.insert(req, Owner::Admin { region, mv });
            ClientRequest::MoveNamespace {
                ns: MOVING_NS.to_string(),
                to,
            }
        };
        self.note(|| format!("operator -> node {region}: {request:?}"));
        self.client_request(region, req, request);
    }

    fn issue_op(&mut self, c: usize) {
        let region = self.clients[c].region;
        if self.nodes[region as usize].node.is_none() {
            return;
        }
        if self.clients[c].watch.is_none() {
            self.open_watch(c);
        }
        self.clients[c].busy = true;
        self.clients[c].seq += 1;
        let seq = self.clients[c].seq;
        let spec = self.rng.pick(&self.cfg.namespaces).clone();
        let moving = self.moving_created && self.rng.chance(0.3);
        let ns = if moving {
            MOVING_NS.to_string()
        } else {
            spec.name.clone()
        };
        let is_async = !moving && matches!(spec.mode, ReplicationMode::Async { .. });
        let key = |rng: &mut Rng| format!("k{}", rng.range(0, 6));
        let value = |k: &str| format!("c{c}-{seq}-{k}").into_bytes();
        let request_id = ((c as u64) << 40) | seq;
        let roll = self.rng.range(0, 100);
        let known = |cl: &Client, k: &str| {
            cl.versions
                .get(&(ns.clone(), k.to_string()))
                .copied()
                .unwrap_or(0)
        };
        let (kind, request) = if roll < 45 {
            let k = key(&mut self.rng);
            let consistency = match roll {
                0..=19 => Consistency::Linearizable,
                20..=32 => Consistency::Bounded {
                    staleness_us: self.rng.range(200_000, 3_000_000),
                },
                _ => Consistency::Stale,
            };
            let token = if moving {
                None
            } else {
                self.clients[c].tokens.get(&spec.home).copied()
            };
            (
                OpKind::Get {
                    key: k.clone(),
                    consistency,
                },
                ClientRequest::Read {
                    ns: ns.clone(),
                    query: ReadQuery::Get { key: k },
                    consistency,
                    token,
                },
            )
        } else if roll < 97 {
            let (compares, ops) = match roll {
                45..=69 => {
                    let k = key(&mut self.rng);
                    (
                        vec![],
                        vec![WriteOp::Put {
                            value: value(&k),
                            key: k,
                        }],
                    )
                }
                70..=82 => {
                    let k = key(&mut self.rng);
                    let mut v = known(&self.clients[c], &k);
                    if self.rng.chance(0.2) {
                        v = v.saturating_sub(1);
                    }
                    (
                        vec![Compare {
                            key: k.clone(),
                            version: v,
                        }],
                        vec![WriteOp::Put {
                            value: value(&k),
                            key: k,
                        }],
                    )
                }
                83..=87 => (
                    vec![],
                    vec![WriteOp::Delete {
                        key: key(&mut self.rng),
                    }],
                ),
                _ => {
                    let a = key(&mut self.rng);
                    let mut b = key(&mut self.rng);
                    while b == a {
                        b = key(&mut self.rng);
                    }
                    let cmp = if self.rng.chance(0.5) {
                        vec![Compare {
                            key: a.clone(),
                            version: known(&self.clients[c], &a),
                        }]
                    } else {
                        vec![]
                    };
                    (
                        cmp,
                        vec![
                            WriteOp::Put {
                                value: value(&a),
                                key: a,
                            },
                            WriteOp::Put {
                                value: value(&b),
                                key: b,
                            },
                        ],
                    )
                }
            };
            (
                OpKind::Write {
                    request_id,
                    compares: compares.clone(),
                    ops: ops.clone(),
                },
                ClientRequest::Write {
                    ns: ns.clone(),
                    request_id,
                    compares,
                    ns_revision: None,
                    ops,
                    // Wall-clock time as the receiving node's (skewed) clock
                    // would stamp it: the leader keeps a group's times monotonic.
                    meta: ChangeMeta {
                        author: format!("client-{c}"),
                        message: String::new(),
                        time_ms: self.nodes[region as usize].clock.local(self.now) / 1000,
                    },
                },
            )
        } else {
            let op = match self.rng.range(0, 3) {
                0 => MetaOp::SetLabel {
                    key: format!("l{}", self.rng.range(0, 3)),
                    value: format!("c{c}-{seq}"),
                },
                1 => MetaOp::Grant {
                    principal: format!("p{}", self.rng.range(0, 2)),
                    permission: "write".into(),
                },
                _ => MetaOp::Revoke {
                    principal: format!("p{}", self.rng.range(0, 2)),
                    permission: "write".into(),
                },
            };
            (OpKind::Meta, ClientRequest::Meta(op))
        };
        let req = self.next_req;
        self.next_req += 1;
        let rec = OpRecord {
            client: c,
            region,
            ns,
            group: spec.home,
            is_async,
            kind,
            invoke_us: self.now,
            complete_us: None,
            outcome: Outcome::Pending,
        };
        let list = if moving {
            &mut self.history.mv_ops
        } else {
            &mut self.history.ops
        };
        list.push(rec);
        let op = list.len() - 1;
        self.reqs.insert(
            req,
            Owner::Op {
                client: c,
                op,
                moving,
            },
        );
        self.note(|| format!("client {c} -> node {region}: {request:?}"));
        self.client_request(region, req, request);
    }

    // ----- faults -----

    fn next_episode(&mut self) {
        if self.now >= self.opts.fault_end_us {
            return;
        }
        let n = self.opts.regions;
        let kinds = [
            EpisodeKind::Crash,
            EpisodeKind::Isolate,
            EpisodeKind::OneWayIn,
            EpisodeKind::OneWayOut,
            EpisodeKind::Asymmetric,
            EpisodeKind::Pause,
            EpisodeKind::FsyncFail,
        ];
        let kind = *self.rng.pick(&kinds);
        // Prefer regions that lead something, so failovers are exercised.
        let leaders: Vec<NodeId> = (0..n)
            .filter(|&r| {
                self.nodes[r as usize]
                    .node
                    .as_ref()
                    .is_some_and(|x| (0..n).any(|g| x.is_leader(g)))
            })
            .collect();
        let region = if !leaders.is_empty() && self.rng.chance(0.8) {
            *self.rng.pick(&leaders)
        } else {
            self.rng.range(0, n as u64) as NodeId
        };
        let max = if kind == EpisodeKind::Pause {
            6_000_000
        } else {
            14_000_000
        };
        let dur = self.rng.range(1_000_000, max);
        let end = (self.now + dur).min(self.opts.fault_end_us);
        let led_groups: Vec<GroupId> = match &self.nodes[region as usize].node {
            Some(x) => (0..n).filter(|&g| x.is_leader(g)).collect(),
            None => Vec::new(),
        };
        let dur = end - self.now;
        self.note(|| format!("FAULT {kind:?} region {region} for {dur}us"));
        self.history.episodes.push(Episode {
            kind,
            region,
            start_us: self.now,
            end_us: end,
            led_groups,
        });
        self.current_episode = Some(self.history.episodes.len() - 1);
        let r = region as usize;
        match kind {
            EpisodeKind::Crash => {
                self.crash(region);
                self.vote_crash_armed = self.rng.chance(0.5);
            }
            EpisodeKind::Isolate => {
                for o in 0..n as usize {
                    if o != r {
                        self.cut[r][o] = true;
                        self.cut[o][r] = true;
                    }
                }
            }
            EpisodeKind::OneWayIn => (0..n as usize)
                .filter(|&o| o != r)
                .for_each(|o| self.cut[o][r] = true),
            EpisodeKind::OneWayOut => (0..n as usize)
                .filter(|&o| o != r)
                .for_each(|o| self.cut[r][o] = true),
            EpisodeKind::Asymmetric => {
                let mut o = self.rng.range(0, n as u64) as usize;
                if o == r {
                    o = (o + 1) % n as usize;
                }
                self.cut[r][o] = true;
                self.cut[o][r] = true;
            }
            EpisodeKind::Pause => self.nodes[r].paused = true,
            EpisodeKind::FsyncFail => self.nodes[r].fail_next_sync = true,
        }
        self.refresh_links();
        self.schedule(end, Ev::Heal { region, kind });
    }

    /// Part of a crash episode: crash a voter right after it grants a vote (the
    /// moment an unpersisted vote would be forgotten) and restart it quickly,
    /// while the election it voted in may still be running.
    fn crash_after_vote(&mut self, n: NodeId) {
        self.vote_crash_armed = false;
        let dur = self.rng.range(50_000, 600_000);
        self.note(|| format!("FAULT crash-after-vote region {n} for {dur}us"));
        // The vote reply is already on the wire; the node dies right after this step.
        self.pending_crash = Some(n);
        self.schedule(self.now + dur, Ev::Restart { node: n });
    }

    fn heal(&mut self, region: NodeId, kind: EpisodeKind) {
        self.note(|| format!("HEAL {kind:?} region {region}"));
        let n = self.opts.regions as usize;
        for a in 0..n {
            for b in 0..n {
                self.cut[a][b] = false;
            }
        }
        let r = region as usize;
        self.vote_crash_armed = false;
        self.nodes[r].fail_next_sync = false;
        if self.nodes[r].paused {
            self.nodes[r].paused = false;
            let evs = std::mem::take(&mut self.nodes[r].paused_events);
            for ev in evs {
                self.dispatch(ev);
            }
        }
        if self.nodes[r].node.is_none() {
            self.start_node(region);
        }
        self.refresh_links();
        self.current_episode = None;
        if self.now < self.opts.fault_end_us {
            let gap = self.rng.range(1_000_000, 4_000_000);
            self.schedule(self.now + gap, Ev::NextEpisode);
        }
    }

    fn garbage(&mut self) {
        let n = self.opts.regions as u64;
        let to = self.rng.range(0, n) as NodeId;
        let from = ((to as u64 + self.rng.range(1, n)) % n) as NodeId;
        let len = self.rng.range(1, 64) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| self.rng.next_u64() as u8).collect();
        // An enum tag no message has (Raft, Forward, ForwardReply, Meta,
        // Probe, ProbeReply are 0-5): a peer speaking garbage, not a liar.
        bytes[0] = self.rng.range(6, 256) as u8;
        if self.nodes[to as usize].node.is_some() && !self.nodes[to as usize].paused {
            self.garbage_sent += 1;
            let local = self.local(to);
            if let Some(node) = self.nodes[to as usize].node.as_mut() {
                let res = node.handle_message(local, from, &bytes);
                assert!(res.is_err(), "garbage accepted");
            }
            self.after_step(to);
        }
        if self.now < self.opts.fault_end_us {
            let at = self.now + self.rng.range(500_000, 3_000_000);
            self.schedule(at, Ev::Garbage);
        }
    }

    // ----- the loop -----

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
            Ev::Heal { region, kind } => self.heal(region, kind),
            Ev::Restart { node } => {
                if self.nodes[node as usize].node.is_none() {
                    self.start_node(node);
                }
            }
            Ev::NextEpisode => self.next_episode(),
            Ev::Garbage => self.garbage(),
            Ev::Admin => self.admin(),
        }
    }

    /// Run to the end of the scenario.
    pub fn run(&mut self) {
        while let Some(Reverse(item)) = self.queue.pop() {
            if item.at > self.opts.duration_us {
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
