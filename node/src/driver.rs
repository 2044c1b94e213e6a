//! The driver: one task owns the core `Node` and is the only code that calls
//! it. It reads the monotonic clock, feeds the core its inputs (client
//! requests, peer messages, timer expiry, storage completions) and carries out
//! the actions it emits: sends go to the transport, persist batches to the
//! storage thread, replies to the waiting gRPC calls.
//!
//! The storage thread does group commit: it takes every persist batch that is
//! waiting, writes them as one RocksDB WriteBatch (fsynced if any needs it) and
//! then reports the last one complete; batches complete in id order, as the
//! core requires. An fsync failure halts the node: it acknowledges nothing more.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use meridian_core::node::{Action, Node};
use meridian_core::storage::{Durable, Storage, StorageOp};
use meridian_core::types::{
    ClientRequest, ClientResponse, ErrorCode, GroupId, Observation, RequestId,
};
use meridian_core::GroupStatus;
use tokio::sync::{mpsc, oneshot, watch};

use crate::auth::AuthState;
use crate::drill_fault::{FaultInfo, FaultKind, FaultRefusal, FaultSlot};
use crate::storage::RocksStorage;
use crate::transport::{PeerEvent, Transport};

/// Queued inputs from gRPC handlers before they wait (backpressure).
pub const INPUT_QUEUE_MAX: usize = 16_384;
/// Watch events buffered per watcher before it is dropped as too slow.
pub const WATCH_BUFFER_MAX: usize = 4_096;
/// Persist batches merged into one RocksDB write at most.
const GROUP_COMMIT_BATCHES_MAX: usize = 256;

/// Where the answer to a client request goes.
pub enum ReplyTo {
    Once(oneshot::Sender<ClientResponse>),
    /// Watches: every event; dropped (and the watch cancelled) when full or closed.
    Stream(mpsc::Sender<ClientResponse>),
}

pub enum Input {
    Client {
        req: RequestId,
        request: ClientRequest,
        reply: ReplyTo,
    },
    /// Forget a watch whose client went away.
    CancelWatch {
        req: RequestId,
    },
    Status {
        reply: oneshot::Sender<NodeStatus>,
    },
}

pub enum StorageDone {
    Persisted(u64),
    Failed(String),
    /// What the database holds, read for a restart after a stop fault.
    Loaded(Box<Result<Durable, String>>),
}

/// Drill faults, on their own channel: a paused driver takes no other input.
pub enum FaultCmd {
    Inject {
        drill_id: String,
        kind: FaultKind,
        duration_ms: u64,
        reply: oneshot::Sender<Result<FaultInfo, FaultRefusal>>,
    },
    Clear {
        drill_id: String,
        reply: oneshot::Sender<Result<Option<FaultInfo>, FaultRefusal>>,
    },
}

/// Fault commands queued before the caller waits.
pub const FAULT_QUEUE_MAX: usize = 16;

/// The node's view of the cluster, for the admin API.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    pub groups: Vec<GroupStatus>,
    pub connected: Vec<bool>,
    /// What works on the link to each region (its own: connected).
    pub links: Vec<crate::transport::LinkState>,
    pub halted: bool,
    pub namespaces: Vec<String>,
    pub peer_rejected: u64,
    /// The drill fault in force, if any.
    pub fault: Option<FaultInfo>,
    /// Client requests waiting for an answer, and open watches.
    pub pending_requests: usize,
    pub watchers: usize,
    /// Per region: QUIC's round-trip estimate to it (None: no link, or this
    /// region), and how many times its link was made again.
    pub peer_rtt: Vec<Option<std::time::Duration>>,
    pub peer_reconnects: Vec<Option<u64>>,
}

struct PersistJob {
    id: u64,
    sync: bool,
    ops: Vec<StorageOp>,
}

enum Job {
    Persist(PersistJob),
    /// Read the whole database back (after every job queued before it).
    Load,
}

/// Run the storage thread: group commit over `jobs`, completions to `done`.
fn storage_thread(
    mut store: RocksStorage,
    jobs: std::sync::mpsc::Receiver<Job>,
    done: mpsc::UnboundedSender<StorageDone>,
    metrics: crate::metrics::StorageMetrics,
) {
    let mut next = None;
    loop {
        let first = match next.take() {
            Some(j) => j,
            None => match jobs.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        let first = match first {
            Job::Persist(p) => p,
            Job::Load => {
                let loaded = store.load().map_err(|e| e.to_string());
                if done.send(StorageDone::Loaded(Box::new(loaded))).is_err() {
                    return;
                }
                continue;
            }
        };
        let mut last_id = first.id;
        let mut sync = first.sync;
        let mut ops = first.ops;
        let mut merged = 1;
        while merged < GROUP_COMMIT_BATCHES_MAX {
            match jobs.try_recv() {
                Ok(Job::Persist(j)) => {
                    last_id = j.id;
                    sync |= j.sync;
                    ops.extend(j.ops);
                    merged += 1;
                }
                Ok(load @ Job::Load) => {
                    // After this batch, in order.
                    next = Some(load);
                    break;
                }
                Err(_) => break,
            }
        }
        let began = Instant::now();
        let written = store.write(&ops, sync);
        metrics.observe_commit(sync, began.elapsed().as_secs_f64());
        match written {
            Ok(()) => {
                if done.send(StorageDone::Persisted(last_id)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = done.send(StorageDone::Failed(e.to_string()));
                return;
            }
        }
    }
}

pub struct Driver {
    node: Node,
    start: Instant,
    transport: Arc<Transport>,
    persist: std::sync::mpsc::Sender<Job>,
    pending: BTreeMap<RequestId, oneshot::Sender<ClientResponse>>,
    watches: BTreeMap<RequestId, mpsc::Sender<ClientResponse>>,
    timer_at_us: Option<u64>,
    names: Vec<String>,
    actions: Vec<Action>,
    /// The auth records of the metadata document, republished whenever it
    /// changes (read by every request's authentication).
    auth: watch::Sender<Arc<AuthState>>,
    /// What a restart after a stop fault rebuilds the core with.
    core_config: meridian_core::Config,
    me: u8,
    fault: FaultSlot,
    /// A stop fault ended: waiting for the database to be read back.
    restarting: bool,
}

/// Parse the metadata document's auth records, logging any that grant
/// nothing because they do not parse.
fn auth_state(node: &Node) -> Arc<AuthState> {
    let state = AuthState::from_view(&node.meta_view());
    for (key, why) in &state.broken {
        tracing::error!(record = %key, error = %why, "metadata record does not parse; it grants nothing");
    }
    Arc::new(state)
}

impl Driver {
    /// Build the driver around a node started from `store`'s contents.
    /// Also returns the storage thread, which owns the database and ends
    /// (closing it) once the driver is dropped: join it before the process
    /// exits, or RocksDB may still be closing while exit destroys its
    /// statics (an abort, "pthread lock: Invalid argument").
    pub fn new(
        node: Node,
        start: Instant,
        store: RocksStorage,
        transport: Arc<Transport>,
        names: Vec<String>,
        metrics: crate::metrics::StorageMetrics,
    ) -> Result<
        (
            Driver,
            mpsc::UnboundedReceiver<StorageDone>,
            std::thread::JoinHandle<()>,
        ),
        std::io::Error,
    > {
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let storage = std::thread::Builder::new()
            .name("meridian-storage".into())
            .spawn(move || storage_thread(store, jobs_rx, done_tx, metrics))?;
        let (auth, _) = watch::channel(auth_state(&node));
        Ok((
            Driver {
                auth,
                start,
                transport,
                persist: jobs_tx,
                pending: BTreeMap::new(),
                watches: BTreeMap::new(),
                timer_at_us: None,
                core_config: node.config().clone(),
                me: node.id(),
                node,
                names,
                actions: Vec::new(),
                fault: FaultSlot::default(),
                restarting: false,
            },
            done_rx,
            storage,
        ))
    }

    /// The auth state, kept current by the driver.
    pub fn auth_state(&self) -> watch::Receiver<Arc<AuthState>> {
        self.auth.subscribe()
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// The loop: returns when every input sender is gone.
    pub async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Input>,
        mut peers: mpsc::Receiver<PeerEvent>,
        mut storage: mpsc::UnboundedReceiver<StorageDone>,
        mut faults: mpsc::Receiver<FaultCmd>,
    ) {
        self.dispatch();
        let mut faults_open = true;
        loop {
            let timer = self
                .timer_at_us
                .map(|at| self.start + std::time::Duration::from_micros(at));
            let sleep = async {
                match timer {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            let deadline = self.fault.deadline();
            let fault_ends = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            // A paused region takes nothing; a stopped one (or one reading
            // its database back) answers clients and drops the rest.
            let paused = self.fault.kind() == Some(FaultKind::Pause);
            let down = self.fault.kind() == Some(FaultKind::Stop) || self.restarting;
            tokio::select! {
                biased;
                c = faults.recv(), if faults_open => match c {
                    Some(cmd) => self.on_fault(cmd),
                    None => faults_open = false,
                },
                _ = fault_ends => {
                    if let Some(f) = self.fault.expire(Instant::now()) {
                        tracing::warn!(drill = %f.drill_id, fault = f.kind.as_str(), "drill fault reverted by its deadline");
                        self.end_fault(f.kind);
                    }
                },
                d = storage.recv(), if !paused => match d {
                    Some(StorageDone::Loaded(loaded)) => self.restart(*loaded),
                    // The stopped core's completions die with it.
                    Some(StorageDone::Persisted(_)) if down => {}
                    Some(StorageDone::Persisted(id)) => {
                        let now = self.now();
                        self.node.handle_persisted(now, id);
                    }
                    Some(StorageDone::Failed(e)) => {
                        tracing::error!(error = %e, "storage failed: the node halts and acknowledges nothing more; restart it from disk");
                        let now = self.now();
                        self.node.handle_storage_failed(now);
                    }
                    None => {
                        let now = self.now();
                        self.node.handle_storage_failed(now);
                    }
                },
                p = peers.recv(), if !paused => match p {
                    Some(_) if down => {}
                    Some(PeerEvent::Message { from, bytes }) => {
                        let now = self.now();
                        if let Err(e) = self.node.handle_message(now, from, &bytes) {
                            tracing::debug!(peer = from, error = %e, "rejected peer message");
                        }
                    }
                    Some(PeerEvent::Reset { peer }) => {
                        let now = self.now();
                        self.node.handle_peer_reset(now, peer);
                    }
                    None => return,
                },
                i = inputs.recv(), if !paused => match i {
                    Some(Input::Client { reply, .. }) if down => refuse(reply, ErrorCode::Unavailable),
                    Some(input) => self.on_input(input),
                    None => return,
                },
                _ = sleep, if !paused && !down => {
                    self.timer_at_us = None;
                    let now = self.now();
                    self.node.handle_timeout(now);
                }
            }
            if !down {
                self.dispatch();
            }
        }
    }

    fn on_fault(&mut self, cmd: FaultCmd) {
        let now = Instant::now();
        match cmd {
            FaultCmd::Inject {
                drill_id,
                kind,
                duration_ms,
                reply,
            } => {
                let r = if self.restarting {
                    Err(FaultRefusal::Restarting)
                } else {
                    self.fault
                        .inject(now, &drill_id, kind, duration_ms)
                        .map(|f| f.info(now))
                };
                if r.is_ok() {
                    tracing::warn!(drill = %drill_id, fault = kind.as_str(), duration_ms, "drill fault injected");
                    self.begin_fault(kind);
                }
                let _ = reply.send(r);
            }
            FaultCmd::Clear { drill_id, reply } => {
                let r = self.fault.clear(&drill_id);
                if let Ok(Some(f)) = &r {
                    tracing::warn!(drill = %f.drill_id, fault = f.kind.as_str(), "drill fault cleared");
                    self.end_fault(f.kind);
                }
                let _ = reply.send(r.map(|f| f.map(|f| f.info(now))));
            }
        }
    }

    fn begin_fault(&mut self, kind: FaultKind) {
        match kind {
            FaultKind::Pause => {}
            FaultKind::Isolate => self.transport.set_isolated(true),
            FaultKind::Stop => {
                self.transport.set_isolated(true);
                // Whatever a crash leaves unanswered: the outcome is unknown.
                for (_, tx) in std::mem::take(&mut self.pending) {
                    let _ = tx.send(ClientResponse::Error(ErrorCode::Indeterminate));
                }
                for (_, tx) in std::mem::take(&mut self.watches) {
                    let _ = tx.try_send(ClientResponse::Error(ErrorCode::Unavailable));
                }
                self.timer_at_us = None;
                self.actions.clear();
            }
        }
    }

    fn end_fault(&mut self, kind: FaultKind) {
        match kind {
            FaultKind::Pause => {}
            FaultKind::Isolate => self.transport.set_isolated(false),
            FaultKind::Stop => {
                // Restart from disk once every batch queued before is written;
                // the transport stays cut until the core is back.
                self.restarting = true;
                if self.persist.send(Job::Load).is_err() {
                    tracing::error!("storage thread is gone");
                }
            }
        }
    }

    /// The second half of a stop fault: a core rebuilt from the database,
    /// as a restarted process would have it.
    fn restart(&mut self, loaded: Result<Durable, String>) {
        self.restarting = false;
        let now = self.now();
        let node = loaded.and_then(|d| {
            Node::new(self.core_config.clone(), self.me, d, now, rand::random())
                .map_err(|e| e.to_string())
        });
        match node {
            Ok(node) => {
                self.node = node;
                self.timer_at_us = None;
                self.auth.send_replace(auth_state(&self.node));
                tracing::warn!("restarted from disk after a stop fault");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot restart from disk after a stop fault: the node halts");
                self.node.handle_storage_failed(now);
            }
        }
        self.transport.set_isolated(false);
        self.dispatch();
    }

    fn on_input(&mut self, input: Input) {
        let now = self.now();
        match input {
            Input::Client {
                req,
                request,
                reply,
            } => {
                match reply {
                    ReplyTo::Once(tx) => {
                        self.pending.insert(req, tx);
                    }
                    ReplyTo::Stream(tx) => {
                        self.watches.insert(req, tx);
                    }
                }
                self.node.handle_client(now, req, request);
            }
            Input::CancelWatch { req } => {
                if self.watches.remove(&req).is_some() {
                    self.cancel_watch(now, req);
                }
            }
            Input::Status { reply } => {
                let regions = self.names.len() as GroupId;
                let groups = (0..regions)
                    .filter_map(|g| self.node.group_status(g))
                    .collect();
                let links: Vec<_> = (0..regions).map(|p| self.transport.link_state(p)).collect();
                let connected = links.iter().map(|l| l.is_connected()).collect();
                let stats = self.node.stats();
                let _ = reply.send(NodeStatus {
                    groups,
                    connected,
                    links,
                    halted: self.node.is_halted(),
                    namespaces: self
                        .node
                        .config()
                        .namespaces
                        .iter()
                        .map(|n| n.name.clone())
                        .collect(),
                    peer_rejected: stats.peer_malformed
                        + stats.peer_oversized
                        + stats.peer_out_of_protocol,
                    fault: self.fault.active().map(|f| f.info(Instant::now())),
                    pending_requests: self.pending.len(),
                    watchers: self.watches.len(),
                    peer_rtt: (0..regions).map(|p| self.transport.peer_rtt(p)).collect(),
                    peer_reconnects: (0..regions)
                        .map(|p| (p != self.me).then(|| self.transport.peer_reconnects(p)))
                        .collect(),
                });
            }
        }
    }

    /// Tell the core to forget watch `req`. The reply to the cancel itself
    /// goes to an id no request uses, so nowhere.
    fn cancel_watch(&mut self, now: u64, req: RequestId) {
        self.node.handle_client(
            now,
            u64::MAX - req,
            ClientRequest::CancelWatch { watch: req },
        );
    }

    fn dispatch(&mut self) {
        let mut actions = std::mem::take(&mut self.actions);
        self.node.drain_actions(&mut actions);
        let mut cancel = Vec::new();
        for a in actions.drain(..) {
            match a {
                Action::Send { to, channel, bytes } => self.transport.send(to, channel, bytes),
                Action::Persist { id, sync, ops } => {
                    if self
                        .persist
                        .send(Job::Persist(PersistJob { id, sync, ops }))
                        .is_err()
                    {
                        tracing::error!("storage thread is gone");
                    }
                }
                Action::Reply { req, resp } => {
                    if let Some(tx) = self.pending.remove(&req) {
                        let _ = tx.send(resp);
                    } else if let Some(tx) = self.watches.get(&req) {
                        let end = matches!(resp, ClientResponse::Error(_));
                        if tx.try_send(resp).is_err() || end {
                            self.watches.remove(&req);
                            if !end {
                                cancel.push(req);
                            }
                        }
                    }
                }
                Action::SetTimer { at_us } => self.timer_at_us = Some(at_us),
                Action::ResetPeer { peer } => self
                    .transport
                    .reset(peer, "a probe of the forward path went unanswered"),
                Action::Observe(o) => match o {
                    Observation::BecameLeader { group, term } => {
                        tracing::info!(
                            group = %self.names.get(group as usize).map_or("?", |s| s.as_str()),
                            term,
                            "this region now leads the group"
                        );
                    }
                    Observation::TransferStarted { group, to } => {
                        tracing::info!(
                            group = %self.names.get(group as usize).map_or("?", |s| s.as_str()),
                            to,
                            "handing the group's leadership over"
                        );
                    }
                    Observation::TransferAbandoned {
                        group,
                        to,
                        timeout_now_sent,
                        behind,
                    } => {
                        tracing::warn!(
                            group = %self.names.get(group as usize).map_or("?", |s| s.as_str()),
                            to,
                            timeout_now_sent,
                            behind,
                            "hand-over of the group's leadership timed out; leading on"
                        );
                    }
                    Observation::MetaChanged => {
                        self.auth.send_replace(auth_state(&self.node));
                    }
                    Observation::Halted => {
                        tracing::error!("node halted after a storage failure");
                    }
                    Observation::SnapshotInstalled { group, index, from } => {
                        tracing::info!(
                            group = %self.names.get(group as usize).map_or("?", |s| s.as_str()),
                            index,
                            from = %self.names.get(from as usize).map_or("?", |s| s.as_str()),
                            "installed a snapshot of the group from its leader"
                        );
                    }
                    Observation::NamespaceMoved {
                        ns,
                        group,
                        revision,
                    } => {
                        tracing::info!(
                            %ns,
                            group = %self.names.get(group as usize).map_or("?", |s| s.as_str()),
                            revision,
                            "namespace copied into its new home region"
                        );
                    }
                    _ => {}
                },
            }
        }
        self.actions = actions;
        if !cancel.is_empty() {
            let now = self.now();
            for req in cancel {
                tracing::info!(watch = req, "watch dropped: its client is too slow or gone");
                self.cancel_watch(now, req);
            }
            self.dispatch();
        }
    }
}

/// Answer a request the core will never see.
fn refuse(reply: ReplyTo, code: ErrorCode) {
    match reply {
        ReplyTo::Once(tx) => {
            let _ = tx.send(ClientResponse::Error(code));
        }
        ReplyTo::Stream(tx) => {
            let _ = tx.try_send(ClientResponse::Error(code));
        }
    }
}
