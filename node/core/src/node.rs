//! One region's node: every home group's protocol state (Raft with PreVote,
//! check-quorum, leases, leadership transfer, lease preference, snapshots), the
//! group state machines, client request routing, watches and the metadata
//! document. Sans-IO: `handle_*` inputs with `now` (the node's monotonic clock,
//! microseconds), `drain_actions` outputs. Effects that must follow durability
//! (vote replies, append acks, acknowledgements) are deferred until storage
//! reports the persist batch complete; storage completes batches in order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::config::Config;
use crate::kv::{Change, GroupSm, ScanError};
use crate::log::Log;
use crate::meta::MetaDoc;
use crate::rng::{fnv1a, Rng};
use crate::storage::{
    AdoptEffect, Durable, Entry, EntryData, KeyEffect, Retention, Snapshot, StorageOp, WriteEffect,
};
use crate::types::*;
use crate::wire::{Channel, Msg, RaftMsg, WireError};

/// What the node asks its shell to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Send {
        to: NodeId,
        channel: Channel,
        bytes: Vec<u8>,
    },
    /// Persist `ops` in order, then call `handle_persisted(id)`. Batches complete
    /// in id order. `sync`: fsync before completing.
    Persist {
        id: u64,
        sync: bool,
        ops: Vec<StorageOp>,
    },
    Reply {
        req: RequestId,
        resp: ClientResponse,
    },
    /// Call `handle_timeout` at this local time (replaces any earlier timer).
    SetTimer {
        at_us: u64,
    },
    Observe(Observation),
    /// The forward path to `peer` is broken although messages may still
    /// flow otherwise (a probe went unanswered): drop the transport's
    /// connections with it and reconnect. Forwards to it were answered.
    ResetPeer {
        peer: NodeId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("message from unknown peer {0}")]
    UnknownPeer(u8),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("out-of-protocol message: {0}")]
    OutOfProtocol(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("durable state has {got} groups, the cluster has {want}")]
    GroupCount { got: usize, want: usize },
    #[error("corrupt durable state: {0}")]
    Corrupt(String),
}

/// What `Node::group_status` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    pub role: &'static str,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    pub applied_revision: u64,
    /// Left of this node's lease on the group, if it holds one now.
    pub lease_remaining_us: Option<u64>,
    /// (follower, highest index known replicated there); leaders only.
    pub followers: Vec<(NodeId, u64)>,
}

/// Counters of rejected input; never reset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub peer_malformed: u64,
    pub peer_oversized: u64,
    pub peer_out_of_protocol: u64,
    pub meta_errors: u64,
    pub apply_errors: u64,
    pub client_rejected: u64,
    /// Forward or probe replies meant for an earlier life of this node, or
    /// an earlier probe (dropped).
    pub stale_forward_replies: u64,
    /// Our own data failed to encode (a bug): the node halted.
    pub encode_errors: u64,
    /// Links reset because a probe of the forward path went unanswered.
    pub forward_path_resets: u64,
    /// Forwarded requests sent again after their leader changed or refused them.
    pub requests_rerouted: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Local(RequestId),
    /// Forwarded by a peer: (peer, the peer's boot, its request id).
    Remote(NodeId, u64, RequestId),
}

#[derive(Clone, Debug)]
enum Deferred {
    Send(NodeId, Msg),
    LogDurable {
        group: GroupId,
        index: u64,
        term: u64,
    },
    Respond(Origin, ClientResponse),
    MetaReady,
}

#[derive(Clone, Debug, Default)]
struct Peer {
    match_index: u64,
    /// Highest index sent (pipelining).
    sent_index: u64,
    acked_round: u64,
    last_heard_us: u64,
    last_echo_us: u64,
    /// Snapshot being sent: (snapshot index, bytes acknowledged).
    snap_progress: Option<(u64, u64)>,
}

#[derive(Clone, Debug)]
enum ReadWhat {
    Query {
        ns: String,
        query: ReadQuery,
        /// Async namespaces read proposed-but-unapplied effects at the leader.
        overlay: bool,
    },
    Conflict,
}

#[derive(Clone, Debug)]
struct PendingRead {
    origin: Origin,
    min_index: u64,
    round: u64,
    deadline_us: u64,
    what: ReadWhat,
}

#[derive(Clone, Debug)]
struct PendingWrite {
    /// Everyone waiting for this write (a retried request joins the first).
    origins: Vec<Origin>,
    request_id: u64,
    resp: ClientResponse,
    ack_on_durable: bool,
}

#[derive(Clone, Debug)]
struct Transfer {
    to: NodeId,
    deadline_us: u64,
    timeout_now_sent: bool,
}

struct Group {
    term: u64,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    log: Log,
    commit: u64,
    applied: u64,
    durable_index: u64,
    election_deadline_us: u64,
    /// When this node last heard from a leader it accepted (its promise).
    leader_contact_us: Option<u64>,
    leader_transferring_to: Option<NodeId>,
    votes: BTreeSet<NodeId>,
    /// Latest local snapshot (sent to lagging followers).
    snapshot: Option<Snapshot>,
    /// Snapshot being received: (index, term, total, bytes so far).
    snap_recv: Option<(u64, u64, u64, Vec<u8>)>,
    /// Local time before which everything committed is applied here (bounded reads).
    fresh_as_of_us: Option<u64>,
    // Leader state.
    peers: Vec<Peer>,
    round: u64,
    rounds: VecDeque<(u64, u64)>,
    lease_min_round: u64,
    lease_expiry_us: u64,
    next_heartbeat_us: u64,
    noop_index: u64,
    transfer: Option<Transfer>,
    home_healthy_since_us: Option<u64>,
    pending_reads: Vec<PendingRead>,
    pending_writes: BTreeMap<u64, PendingWrite>,
    /// request id -> log index of a pending write.
    pending_by_request: BTreeMap<u64, u64>,
    /// Async-acknowledged entries not yet committed: (index, ack time).
    async_acked: VecDeque<(u64, u64)>,
    /// Effects proposed but not applied: (ns, key) -> (version, value, index).
    overlay: BTreeMap<(String, String), Pending>,
    overlay_revision: u64,
    /// Proposed, not applied, last-change revision per namespace: ns -> (revision, index).
    overlay_ns: BTreeMap<String, (u64, u64)>,
    /// Change time of the newest proposed write (a group's times never go back).
    overlay_time_ms: u64,
    /// Namespaces whose freeze is proposed, not yet applied: no write to them
    /// may be proposed after it.
    overlay_frozen: BTreeSet<String>,
    heartbeat_now: bool,
    /// The round the current lease is counted from.
    lease_round: u64,
    /// Latest (leader, term, round) this follower promised on.
    promised: (NodeId, u64, u64),
    /// The current candidacy was started by a leadership transfer.
    campaign_transfer: bool,
}

/// A proposed, not yet applied, value of a key: (version, value, log index).
type Pending = (u64, Option<Vec<u8>>, u64);

/// A write on its way to its group's leader.
struct ProposedWrite {
    ns: String,
    request_id: u64,
    compares: Vec<Compare>,
    ns_revision: Option<u64>,
    ops: Vec<WriteOp>,
    meta: ChangeMeta,
}

impl ProposedWrite {
    fn into_request(self) -> ClientRequest {
        ClientRequest::Write {
            ns: self.ns,
            request_id: self.request_id,
            compares: self.compares,
            ns_revision: self.ns_revision,
            ops: self.ops,
            meta: self.meta,
        }
    }
}

/// A namespace's home group, replication mode and history retention.
type NsEntry = (GroupId, ReplicationMode, Retention);

/// The namespace catalog: namespace name -> `NsSettings`, in group 0. Clients
/// may read it; only `CreateNamespace` writes it.
pub const CATALOG_NS: &str = "__catalog";
/// Namespaces whose names start with this are reserved for the system.
pub const RESERVED_NS_PREFIX: &str = "__";
/// Bytes of a change's author plus message at most.
pub const CHANGE_META_BYTES_MAX: usize = 4096;
/// Bytes of a namespace name at most.
pub const NS_NAME_BYTES_MAX: usize = 128;
/// Request ids from here up are the core's own requests (catalog updates of
/// a namespace move), numbered upwards; nobody waits for their answers.
/// Shells number their requests upwards from 1 and never reach it.
pub const INTERNAL_REQ_BASE: RequestId = 1 << 63;
/// Forwards remembered to drop duplicates: a duplicate arrives within about a
/// network delay of its original, far fewer forwards than this apart.
const SEEN_FORWARDS_MAX: usize = 16_384;

/// A request forwarded to its group's leader.
struct Forwarded {
    group: GroupId,
    to: NodeId,
    sent_us: u64,
    /// Kept so that a refusal that promises nothing happened (UNAVAILABLE:
    /// not the leader, a hand-over under way), or a leader change for a read
    /// (a read did nothing), re-routes it instead of failing it.
    req: ClientRequest,
}

impl Forwarded {
    fn is_write(&self) -> bool {
        matches!(self.req, ClientRequest::Write { .. })
    }
}

/// A request waiting for its group to have a leader.
struct Parked {
    group: GroupId,
    /// The node that refused it, if any: it waits for another leader.
    refused_by: Option<NodeId>,
    req: ClientRequest,
}

struct Watcher {
    ns: String,
    prefix: String,
    group: GroupId,
    last_revision: u64,
}

struct TokenWait {
    req: RequestId,
    group: GroupId,
    revision: u64,
    deadline_us: u64,
    ns: String,
    query: ReadQuery,
    consistency: Consistency,
}

pub struct Node {
    id: NodeId,
    cfg: Config,
    rng: Rng,
    now: u64,
    groups: Vec<Group>,
    sms: Vec<GroupSm>,
    /// Every namespace: home group, replication mode, retention. Static ones
    /// plus the catalog (see `refresh_catalog`).
    ns_index: BTreeMap<String, NsEntry>,
    static_ns: BTreeMap<String, NsEntry>,
    /// Catalog namespaces being moved: ns -> (old home, new home, the old
    /// home's tenure: the revision its copy became the home at, 0: created).
    moves: BTreeMap<String, (GroupId, GroupId, u64)>,
    /// Catalog namespaces that moved: ns -> revision of their home at which
    /// the copy there is complete (a replica behind it must not serve them).
    ns_floor: BTreeMap<String, u64>,
    /// Some watcher may follow a namespace in a group that is no longer its home.
    watchers_misplaced: bool,
    meta: MetaDoc,
    meta_ready: bool,
    next_meta_sync_us: u64,
    out: Vec<Action>,
    step_ops: Vec<StorageOp>,
    step_sync: bool,
    next_persist_id: u64,
    completed_persist: u64,
    deferred: VecDeque<(u64, Deferred)>,
    pending: BTreeMap<RequestId, u64>,
    deadlines: BTreeSet<(u64, RequestId)>,
    token_waits: Vec<TokenWait>,
    /// Requests forwarded to a group's leader. If the group's leader changes
    /// first, they are answered (or re-routed) at once rather than at their
    /// timeout, so clients retry elsewhere sooner (lower RTO).
    forwarded: BTreeMap<RequestId, Forwarded>,
    /// Requests waiting for their group to have a leader (other than the
    /// one that refused them). Sent on as soon as one is known, or answered
    /// TIMEOUT at their deadline. A cluster's leadership moving home (lease
    /// preference) or a transfer leaves a group leaderless for a moment;
    /// clients should see a pause, not UNAVAILABLE (issue 20).
    parked: BTreeMap<RequestId, Parked>,
    /// Per peer: when a forward reply (or probe reply) last came from it.
    forward_heard_us: Vec<u64>,
    /// When the forward watchdog next has something to do, at the latest
    /// (an earlier wake-up finds nothing and recomputes it).
    forward_check_us: Option<u64>,
    /// Per peer: the probe of the forward path under way (seq, sent at).
    probes: Vec<Option<(u64, u64)>>,
    next_probe_seq: u64,
    watchers: BTreeMap<RequestId, Watcher>,
    /// Forwards received lately, oldest first in `seen_forwards_order`.
    seen_forwards: BTreeSet<(NodeId, u64, RequestId)>,
    seen_forwards_order: VecDeque<(NodeId, u64, RequestId)>,
    /// This process lifetime's name, drawn from the seed at start: forwards
    /// carry it so peers tell this life's request ids from an earlier one's.
    boot: u64,
    next_internal_req: RequestId,
    timer_at: Option<u64>,
    halted: bool,
    stats: Stats,
}

impl Node {
    /// Start (or restart) node `id` from what its storage holds. A fresh node
    /// passes `Durable::new(regions)`.
    pub fn new(
        cfg: Config,
        id: NodeId,
        durable: Durable,
        now: u64,
        seed: u64,
    ) -> Result<Node, InitError> {
        cfg.validate().map_err(InitError::Config)?;
        if id >= cfg.regions {
            return Err(InitError::Config(format!(
                "node id {id} but {} regions",
                cfg.regions
            )));
        }
        if durable.groups.len() != cfg.regions as usize {
            return Err(InitError::GroupCount {
                got: durable.groups.len(),
                want: cfg.regions as usize,
            });
        }
        let mut rng = Rng::new(seed ^ ((id as u64) << 56) ^ durable.incarnation);
        let incarnation = durable.incarnation + 1;
        let boot = rng.next_u64();
        let meta = MetaDoc::load(&durable.meta_chunks, id, incarnation, cfg.regions)
            .map_err(|e| InitError::Corrupt(e.to_string()))?;
        let mut ns_index = BTreeMap::new();
        ns_index.insert(
            CATALOG_NS.to_string(),
            (0, ReplicationMode::Quorum, Retention::default()),
        );
        for ns in &cfg.namespaces {
            ns_index.insert(ns.name.clone(), (ns.home, ns.mode, Retention::default()));
        }
        let mut groups = Vec::new();
        let mut sms = Vec::new();
        for (gi, dg) in durable.groups.iter().enumerate() {
            let names = cfg
                .namespaces
                .iter()
                .filter(|n| n.home as usize == gi)
                .map(|n| n.name.clone());
            let mut sm = GroupSm::new(
                names,
                cfg.history_versions_max,
                cfg.watch_history_max,
                cfg.idempotency_ids_max,
            );
            let (si, st) = match &dg.snapshot {
                Some(s) => {
                    sm.restore(&s.data)
                        .map_err(|e| InitError::Corrupt(format!("group {gi} snapshot: {e}")))?;
                    (s.index, s.term)
                }
                None => (0, 0),
            };
            for (k, e) in dg.entries.iter().enumerate() {
                if e.index != si + 1 + k as u64 || e.term > dg.term {
                    return Err(InitError::Corrupt(format!(
                        "group {gi} log entry {} out of place",
                        e.index
                    )));
                }
            }
            let log = Log::new(si, st, dg.entries.clone());
            let last = log.last_index();
            let et = cfg.election_timeout_us;
            groups.push(Group {
                term: dg.term,
                vote: dg.vote,
                role: Role::Follower,
                leader: None,
                log,
                commit: si,
                applied: si,
                durable_index: last,
                election_deadline_us: now + rng.range(et, 2 * et),
                // A restarted node forgot whom it promised: keep every promise it
                // might have made by refusing votes for one election timeout.
                leader_contact_us: Some(now),
                leader_transferring_to: None,
                votes: BTreeSet::new(),
                snapshot: dg.snapshot.clone(),
                snap_recv: None,
                fresh_as_of_us: None,
                peers: vec![Peer::default(); cfg.regions as usize],
                round: 0,
                rounds: VecDeque::new(),
                lease_min_round: 0,
                lease_expiry_us: 0,
                next_heartbeat_us: 0,
                noop_index: 0,
                transfer: None,
                home_healthy_since_us: None,
                pending_reads: Vec::new(),
                pending_writes: BTreeMap::new(),
                pending_by_request: BTreeMap::new(),
                async_acked: VecDeque::new(),
                overlay: BTreeMap::new(),
                overlay_revision: sm.revision(),
                overlay_ns: BTreeMap::new(),
                overlay_time_ms: sm.time_ms(),
                overlay_frozen: BTreeSet::new(),
                heartbeat_now: false,
                lease_round: 0,
                promised: (0, 0, 0),
                campaign_transfer: false,
            });
            sms.push(sm);
        }
        let mut node = Node {
            id,
            rng,
            now,
            groups,
            sms,
            static_ns: ns_index.clone(),
            ns_index,
            moves: BTreeMap::new(),
            ns_floor: BTreeMap::new(),
            watchers_misplaced: false,
            meta,
            meta_ready: false,
            next_meta_sync_us: now + cfg.meta_sync_interval_us,
            out: Vec::new(),
            step_ops: Vec::new(),
            step_sync: false,
            next_persist_id: 1,
            completed_persist: 0,
            deferred: VecDeque::new(),
            pending: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            token_waits: Vec::new(),
            forwarded: BTreeMap::new(),
            forward_check_us: None,
            parked: BTreeMap::new(),
            forward_heard_us: vec![0; cfg.regions as usize],
            probes: vec![None; cfg.regions as usize],
            next_probe_seq: 1,
            watchers: BTreeMap::new(),
            seen_forwards: BTreeSet::new(),
            seen_forwards_order: VecDeque::new(),
            boot,
            next_internal_req: INTERNAL_REQ_BASE,
            timer_at: None,
            halted: false,
            stats: Stats::default(),
            cfg,
        };
        node.refresh_catalog();
        node.persist(StorageOp::Incarnation { incarnation }, true);
        if durable.meta_chunks.is_empty() {
            let bytes = node.meta.take_unsaved();
            if !bytes.is_empty() {
                node.persist(StorageOp::MetaChunk { bytes }, true);
            }
        }
        node.defer(Deferred::MetaReady);
        if node.cfg.regions == 1 {
            node.groups[0].election_deadline_us = now;
        }
        node.finish_step();
        Ok(node)
    }

    // ----- introspection (shell, simulator, tests) -----

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn is_halted(&self) -> bool {
        self.halted
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    pub fn leader_of(&self, g: GroupId) -> Option<NodeId> {
        self.groups.get(g as usize).and_then(|g| g.leader)
    }
    pub fn term_of(&self, g: GroupId) -> u64 {
        self.groups.get(g as usize).map_or(0, |g| g.term)
    }
    pub fn is_leader(&self, g: GroupId) -> bool {
        self.groups
            .get(g as usize)
            .is_some_and(|g| g.role == Role::Leader)
    }
    /// The local time until which this node holds a valid lease on `g`, if it does now.
    pub fn lease_expiry_us(&self, g: GroupId) -> Option<u64> {
        let gr = self.groups.get(g as usize)?;
        (!self.halted && self.lease_valid(gr)).then_some(gr.lease_expiry_us)
    }
    /// (term, heartbeat round) the current lease is counted from, if it holds one.
    pub fn lease_basis(&self, g: GroupId) -> Option<(u64, u64)> {
        let gr = self.groups.get(g as usize)?;
        self.lease_expiry_us(g).map(|_| (gr.term, gr.lease_round))
    }

    pub fn applied_revision(&self, g: GroupId) -> u64 {
        self.sms.get(g as usize).map_or(0, |s| s.revision())
    }
    pub fn commit_index(&self, g: GroupId) -> u64 {
        self.groups.get(g as usize).map_or(0, |g| g.commit)
    }
    /// A digest of group `g`'s applied state (0 for a group that does not exist).
    pub fn state_digest(&self, g: GroupId) -> Result<u64, crate::wire::EncodeError> {
        self.sms.get(g as usize).map_or(Ok(0), |s| s.digest())
    }
    /// A namespace's home group and, while it moves, its new home.
    pub fn ns_home(&self, ns: &str) -> Option<(GroupId, Option<GroupId>)> {
        let (g, _, _) = self.ns_index.get(ns)?;
        Some((*g, self.moves.get(ns).map(|&(_, to, _)| to)))
    }

    pub fn read_local(&self, ns: &str, key: &str) -> Option<KeyValue> {
        let (g, _, _) = self.ns_index.get(ns)?;
        Some(self.sms[*g as usize].get(ns, key))
    }
    pub fn history(&self, ns: &str, key: &str) -> Vec<KeyValue> {
        match self.ns_index.get(ns) {
            Some((g, _, _)) => self.sms[*g as usize].history(ns, key),
            None => Vec::new(),
        }
    }
    /// A group's state as this node sees it, for status pages.
    pub fn group_status(&self, g: GroupId) -> Option<GroupStatus> {
        let gr = self.groups.get(g as usize)?;
        let leading = gr.role == Role::Leader;
        Some(GroupStatus {
            role: match gr.role {
                Role::Follower => "follower",
                Role::PreCandidate => "pre-candidate",
                Role::Candidate => "candidate",
                Role::Leader => "leader",
            },
            leader: gr.leader,
            term: gr.term,
            commit_index: gr.commit,
            applied_index: gr.applied,
            last_index: gr.log.last_index(),
            applied_revision: self.sms[g as usize].revision(),
            lease_remaining_us: self.lease_expiry_us(g).map(|e| e.saturating_sub(self.now)),
            followers: if leading {
                gr.peers
                    .iter()
                    .enumerate()
                    .filter(|(p, _)| *p != self.id as usize)
                    .map(|(p, peer)| (p as NodeId, peer.match_index))
                    .collect()
            } else {
                Vec::new()
            },
        })
    }

    /// One line about a group's protocol state, for status pages and traces.
    pub fn describe_group(&self, g: GroupId) -> String {
        let Some(gr) = self.groups.get(g as usize) else {
            return String::new();
        };
        format!(
            "{:?} term {} vote {:?} leader {:?} last {}/{} commit {} applied {} durable {} election_in {}us contact_age {:?}us lease_left {}us",
            gr.role,
            gr.term,
            gr.vote,
            gr.leader,
            gr.log.last_index(),
            gr.log.last_term(),
            gr.commit,
            gr.applied,
            gr.durable_index,
            gr.election_deadline_us as i64 - self.now as i64,
            gr.leader_contact_us.map(|c| self.now.saturating_sub(c)),
            gr.lease_expiry_us.saturating_sub(self.now),
        )
    }

    /// (index, term, revision of a write) of every log entry held, for debugging.
    pub fn log_summary(&self, g: GroupId) -> Vec<(u64, u64, Option<u64>)> {
        let Some(gr) = self.groups.get(g as usize) else {
            return Vec::new();
        };
        gr.log
            .iter_from(gr.log.snap_index + 1)
            .map(|e| {
                (
                    e.index,
                    e.term,
                    if let EntryData::Write(w) = &e.data {
                        Some(w.revision)
                    } else {
                        None
                    },
                )
            })
            .collect()
    }

    pub fn meta_heads(&mut self) -> Vec<String> {
        self.meta.heads().iter().map(|h| h.to_string()).collect()
    }
    pub fn meta_label(&self, key: &str) -> Option<String> {
        self.meta.label(key)
    }

    /// Take the actions produced so far.
    pub fn drain_actions(&mut self, into: &mut Vec<Action>) {
        into.append(&mut self.out);
    }

    // ----- inputs -----

    pub fn handle_message(
        &mut self,
        now: u64,
        from: NodeId,
        bytes: &[u8],
    ) -> Result<(), PeerError> {
        self.now = now.max(self.now);
        if self.halted {
            return Ok(());
        }
        let res = self.on_message(from, bytes);
        if let Err(e) = &res {
            match e {
                PeerError::Wire(WireError::Oversized(_)) => self.stats.peer_oversized += 1,
                PeerError::Wire(WireError::Malformed(_)) => self.stats.peer_malformed += 1,
                _ => self.stats.peer_out_of_protocol += 1,
            }
        }
        self.finish_step();
        res
    }

    pub fn handle_client(&mut self, now: u64, req: RequestId, request: ClientRequest) {
        self.now = now.max(self.now);
        if self.halted {
            self.out.push(Action::Reply {
                req,
                resp: ClientResponse::Error(ErrorCode::Halted),
            });
            return;
        }
        self.on_client(req, request);
        self.finish_step();
    }

    pub fn handle_timeout(&mut self, now: u64) {
        self.now = now.max(self.now);
        if self.halted {
            return;
        }
        // The shell's timer fired and is gone: always arm a new one.
        self.timer_at = None;
        self.on_timeout();
        self.finish_step();
    }

    /// Storage finished persist batch `id` (and so every earlier one).
    pub fn handle_persisted(&mut self, now: u64, id: u64) {
        self.now = now.max(self.now);
        if self.halted {
            return;
        }
        debug_assert!(
            id < self.next_persist_id,
            "completion for a batch never issued"
        );
        self.completed_persist = self.completed_persist.max(id);
        self.finish_step();
    }

    /// Storage failed (for example an fsync error). Nothing after this point may
    /// be acknowledged: the node stops; the operator restarts it from disk.
    pub fn handle_storage_failed(&mut self, now: u64) {
        self.now = now.max(self.now);
        if self.halted {
            return;
        }
        self.halted = true;
        self.out.clear();
        self.deferred.clear();
        self.step_ops.clear();
        self.out.push(Action::Observe(Observation::Halted));
    }

    /// The reliable channel to `peer` was (re-)established.
    pub fn handle_peer_reset(&mut self, now: u64, peer: NodeId) {
        self.now = now.max(self.now);
        if self.halted || peer >= self.cfg.regions || peer == self.id {
            return;
        }
        self.meta.reset_peer(peer);
        self.meta_send(peer);
        self.finish_step();
    }

    // ----- step plumbing -----

    fn persist(&mut self, op: StorageOp, sync: bool) {
        self.step_ops.push(op);
        self.step_sync |= sync;
    }

    fn defer(&mut self, d: Deferred) {
        self.deferred.push_back((self.next_persist_id, d));
    }

    fn send(&mut self, to: NodeId, msg: Msg) {
        self.send_ref(to, &msg);
    }

    fn send_ref(&mut self, to: NodeId, msg: &Msg) {
        let channel = msg.channel();
        match msg.encode() {
            Ok(bytes) => self.out.push(Action::Send { to, channel, bytes }),
            Err(_) => self.halt_unencodable(),
        }
    }

    /// The core could not encode its own data: a bug. Stop (acknowledge
    /// nothing more) rather than send, persist or digest an empty stand-in.
    fn halt_unencodable(&mut self) {
        self.stats.encode_errors += 1;
        self.handle_storage_failed(self.now);
    }

    fn finish_step(&mut self) {
        loop {
            if !self.step_ops.is_empty() {
                let ops = std::mem::take(&mut self.step_ops);
                self.out.push(Action::Persist {
                    id: self.next_persist_id,
                    sync: self.step_sync,
                    ops,
                });
                self.step_sync = false;
                self.next_persist_id += 1;
            } else {
                // Nothing new to persist: effects of this step wait only for the
                // batches already issued.
                let prev = self.next_persist_id - 1;
                for (tag, _) in self.deferred.iter_mut().rev() {
                    if *tag < self.next_persist_id {
                        break;
                    }
                    *tag = prev;
                }
            }
            let mut released = false;
            while self
                .deferred
                .front()
                .is_some_and(|(t, _)| *t <= self.completed_persist)
            {
                if let Some((_, d)) = self.deferred.pop_front() {
                    self.release(d);
                    released = true;
                }
                if self.halted {
                    return;
                }
            }
            let parked = self.parked.len();
            self.unpark();
            let unparked = self.parked.len() != parked;
            let hb: Vec<usize> = (0..self.groups.len())
                .filter(|&g| self.groups[g].heartbeat_now)
                .collect();
            for g in &hb {
                self.heartbeat(*g);
            }
            if !released && !unparked && hb.is_empty() && self.step_ops.is_empty() {
                break;
            }
        }
        let next = self.next_deadline();
        if next != self.timer_at {
            self.timer_at = next;
            if let Some(at_us) = next {
                self.out.push(Action::SetTimer { at_us });
            }
        }
    }

    fn release(&mut self, d: Deferred) {
        match d {
            Deferred::Send(to, msg) => self.send(to, msg),
            Deferred::Respond(origin, resp) => self.respond(origin, resp),
            Deferred::LogDurable { group, index, term } => {
                let g = group as usize;
                if self.groups[g].log.term_at(index) == Some(term) {
                    let gr = &mut self.groups[g];
                    gr.durable_index = gr.durable_index.max(index);
                    if gr.role == Role::Leader {
                        self.ack_durable_async(g);
                        self.maybe_commit(g);
                    }
                }
            }
            Deferred::MetaReady => {
                self.meta_ready = true;
                self.meta_send_all(None);
            }
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        let mut t = u64::MAX;
        for g in &self.groups {
            if g.role == Role::Leader {
                t = t.min(g.next_heartbeat_us);
                if let Some(tr) = &g.transfer {
                    t = t.min(tr.deadline_us);
                }
                for r in &g.pending_reads {
                    t = t.min(r.deadline_us);
                }
            } else {
                t = t.min(g.election_deadline_us);
                if matches!(g.role, Role::PreCandidate | Role::Candidate) {
                    t = t.min(g.next_heartbeat_us);
                }
            }
        }
        if let Some((d, _)) = self.deadlines.first() {
            t = t.min(*d);
        }
        for w in &self.token_waits {
            t = t.min(w.deadline_us);
        }
        t = t.min(self.next_meta_sync_us);
        // The forward watchdog: its next look, and each probe's end.
        if let Some(at) = self.forward_check_us {
            t = t.min(at);
        }
        let after = self.cfg.forward_probe_after_us;
        for (_, sent) in self.probes.iter().flatten() {
            t = t.min(sent + after);
        }
        (t != u64::MAX).then_some(t)
    }

    fn respond(&mut self, origin: Origin, resp: ClientResponse) {
        match origin {
            Origin::Local(req) => {
                self.forwarded.remove(&req);
                self.parked.remove(&req);
                if let Some(deadline) = self.pending.remove(&req) {
                    self.deadlines.remove(&(deadline, req));
                    self.out.push(Action::Reply { req, resp });
                }
            }
            Origin::Remote(node, boot, id) => self.send(node, Msg::ForwardReply { boot, id, resp }),
        }
    }

    // ----- timers -----

    /// The forward watchdog. A forward unanswered for `forward_probe_after_us`
    /// with nothing heard back from its peer since it was sent may just be a
    /// slow request, or a broken path (issue 20: a region's forwards went
    /// unanswered for minutes while Raft traffic flowed). A probe tells them
    /// apart: the peer answers it at once. Unanswered within as long again,
    /// the shell resets the link and the forwards to that peer are answered
    /// now (a read did nothing; a write's outcome is unknown and its id makes
    /// a retry safe) rather than each at its own timeout.
    fn forward_watchdog(&mut self) {
        let now = self.now;
        let after = self.cfg.forward_probe_after_us;
        let regions = self.cfg.regions as usize;
        for p in 0..regions {
            if let Some((_, sent)) = self.probes[p] {
                if now >= sent + after {
                    self.probes[p] = None;
                    self.stats.forward_path_resets += 1;
                    self.out.push(Action::ResetPeer { peer: p as NodeId });
                    let stuck: Vec<RequestId> = self
                        .forwarded
                        .iter()
                        .filter(|(_, f)| f.to as usize == p)
                        .map(|(id, _)| *id)
                        .collect();
                    for id in stuck {
                        self.fail_forward(id);
                    }
                }
            }
        }
        // Per peer without a probe under way: the oldest forward sent since
        // anything was last heard from it.
        let mut oldest: Vec<Option<u64>> = vec![None; regions];
        for f in self.forwarded.values() {
            let p = f.to as usize;
            if self.probes[p].is_none() && f.sent_us >= self.forward_heard_us[p] {
                oldest[p] = Some(oldest[p].map_or(f.sent_us, |o| o.min(f.sent_us)));
            }
        }
        self.forward_check_us = None;
        for (p, sent) in oldest.into_iter().enumerate() {
            let Some(sent) = sent else { continue };
            if now >= sent + after {
                let seq = self.next_probe_seq;
                self.next_probe_seq += 1;
                self.probes[p] = Some((seq, now));
                let boot = self.boot;
                self.send(p as NodeId, Msg::Probe { boot, seq });
            } else {
                let at = sent + after;
                self.forward_check_us = Some(self.forward_check_us.map_or(at, |c| c.min(at)));
            }
        }
    }

    /// Answer forwarded request `id` now: a write's outcome is unknown (its
    /// id makes a retry safe); a read did nothing.
    fn fail_forward(&mut self, id: RequestId) {
        let is_write = self.forwarded.get(&id).is_some_and(|f| f.is_write());
        let code = if is_write {
            ErrorCode::Indeterminate
        } else {
            ErrorCode::Unavailable
        };
        self.respond(Origin::Local(id), ClientResponse::Error(code));
    }

    fn on_timeout(&mut self) {
        self.forward_watchdog();
        let now = self.now;
        for g in 0..self.groups.len() {
            if self.groups[g].role == Role::Leader {
                if let Some(tr) = &self.groups[g].transfer {
                    if now >= tr.deadline_us {
                        // Transfer failed: take the lease up again, counting only
                        // rounds sent without the transfer flag.
                        let gr = &mut self.groups[g];
                        gr.transfer = None;
                        gr.lease_min_round = gr.round + 1;
                    }
                }
                if now >= self.groups[g].next_heartbeat_us {
                    self.leader_tick(g);
                }
                let gr = &mut self.groups[g];
                let expired: Vec<PendingRead> = {
                    let (keep, gone): (Vec<_>, Vec<_>) = gr
                        .pending_reads
                        .drain(..)
                        .partition(|r| r.deadline_us > now);
                    gr.pending_reads = keep;
                    gone
                };
                for r in expired {
                    self.respond(r.origin, ClientResponse::Error(ErrorCode::Timeout));
                }
            } else if now >= self.groups[g].election_deadline_us {
                self.election_timeout(g);
            } else if matches!(self.groups[g].role, Role::PreCandidate | Role::Candidate)
                && now >= self.groups[g].next_heartbeat_us
            {
                self.resend_vote_requests(g);
            }
        }
        while let Some(&(d, req)) = self.deadlines.first() {
            if d > now {
                break;
            }
            self.respond(
                Origin::Local(req),
                ClientResponse::Error(ErrorCode::Timeout),
            );
        }
        let (expired, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.token_waits)
            .into_iter()
            .partition(|w| w.deadline_us <= now);
        self.token_waits = keep;
        for w in expired {
            self.respond(
                Origin::Local(w.req),
                ClientResponse::Error(ErrorCode::TokenWaitTimeout),
            );
        }
        if now >= self.next_meta_sync_us {
            self.next_meta_sync_us = now + self.cfg.meta_sync_interval_us;
            if self.meta_ready {
                self.meta_send_all(None);
            }
        }
    }

    /// Group `g`'s leader changed: answer requests forwarded to another node.
    /// A write's outcome is unknown (its id makes a retry safe); a read did
    /// nothing.
    fn fail_stale_forwards(&mut self, g: usize) {
        let leader = self.groups[g].leader;
        let stale: Vec<(RequestId, bool)> = self
            .forwarded
            .iter()
            .filter(|(_, f)| f.group as usize == g && Some(f.to) != leader)
            .map(|(id, f)| (*id, f.is_write()))
            .collect();
        for (id, is_write) in stale {
            if is_write || !self.reroute(id) {
                self.fail_forward(id);
            }
        }
    }

    /// Send forwarded request `id` again, to whoever leads its group now
    /// (or park it until someone does). Only for a request that did nothing:
    /// a read, or a write refused with UNAVAILABLE. False if `id` is not a
    /// forwarded request.
    fn reroute(&mut self, id: RequestId) -> bool {
        let Some(f) = self.forwarded.remove(&id) else {
            return false;
        };
        if !self.pending.contains_key(&id) {
            return true;
        }
        self.stats.requests_rerouted += 1;
        self.parked.insert(
            id,
            Parked {
                group: f.group,
                refused_by: Some(f.to),
                req: f.req,
            },
        );
        self.unpark();
        true
    }

    /// Send on every parked request whose group now has a leader other than
    /// the node that refused it.
    fn unpark(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let ready: Vec<RequestId> = self
            .parked
            .iter()
            .filter(|(_, p)| {
                let gr = &self.groups[p.group as usize];
                if gr.role == Role::Leader {
                    // Serve here, unless a hand-over is still under way.
                    gr.transfer.is_none()
                } else {
                    gr.leader
                        .is_some_and(|l| Some(l) != p.refused_by && l != self.id)
                }
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            if let Some(p) = self.parked.remove(&id) {
                self.on_request(Origin::Local(id), p.req);
            }
        }
    }

    fn reset_election_timer(&mut self, g: usize) {
        let et = self.cfg.election_timeout_us;
        self.groups[g].election_deadline_us = self.now + self.rng.range(et, 2 * et);
    }

    fn election_timeout(&mut self, g: usize) {
        self.reset_election_timer(g);
        let gr = &mut self.groups[g];
        gr.leader = None;
        gr.role = Role::PreCandidate;
        self.fail_stale_forwards(g);
        let gr = &mut self.groups[g];
        gr.next_heartbeat_us = self.now + self.cfg.heartbeat_interval_us;
        gr.votes.clear();
        gr.votes.insert(self.id);
        let (term, last_index, last_term) = (gr.term + 1, gr.log.last_index(), gr.log.last_term());
        if self.cfg.majority() == 1 {
            self.campaign(g, false);
            return;
        }
        for p in 0..self.cfg.regions {
            if p != self.id {
                self.send(
                    p,
                    Msg::Raft {
                        group: g as GroupId,
                        term,
                        body: RaftMsg::PreVote {
                            last_index,
                            last_term,
                        },
                    },
                );
            }
        }
    }

    /// Candidates ask again, every heartbeat interval, the peers that have not
    /// answered: one lost message must not cost a whole election timeout.
    /// Answers are idempotent (a voter grants the same candidate again).
    fn resend_vote_requests(&mut self, g: usize) {
        let gr = &mut self.groups[g];
        gr.next_heartbeat_us = self.now + self.cfg.heartbeat_interval_us;
        let (role, last_index, last_term) = (gr.role, gr.log.last_index(), gr.log.last_term());
        let missing: Vec<NodeId> = (0..self.cfg.regions)
            .filter(|p| *p != self.id && !gr.votes.contains(p))
            .collect();
        for p in missing {
            let gr = &self.groups[g];
            if role == Role::PreCandidate {
                let msg = Msg::Raft {
                    group: g as GroupId,
                    term: gr.term + 1,
                    body: RaftMsg::PreVote {
                        last_index,
                        last_term,
                    },
                };
                self.send(p, msg);
            } else {
                let transfer = gr.campaign_transfer;
                let msg = Msg::Raft {
                    group: g as GroupId,
                    term: gr.term,
                    body: RaftMsg::Vote {
                        last_index,
                        last_term,
                        transfer,
                    },
                };
                self.defer(Deferred::Send(p, msg));
            }
        }
    }

    fn campaign(&mut self, g: usize, transfer: bool) {
        self.reset_election_timer(g);
        let id = self.id;
        let gr = &mut self.groups[g];
        gr.role = Role::Candidate;
        gr.campaign_transfer = transfer;
        gr.next_heartbeat_us = self.now + self.cfg.heartbeat_interval_us;
        gr.term += 1;
        gr.vote = Some(id);
        gr.leader = None;
        gr.votes.clear();
        gr.votes.insert(id);
        let (term, last_index, last_term) = (gr.term, gr.log.last_index(), gr.log.last_term());
        // The new term and the self-vote are durable before any request uses them.
        self.persist(
            StorageOp::HardState {
                group: g as GroupId,
                term,
                vote: Some(id),
            },
            true,
        );
        if self.cfg.majority() == 1 {
            self.become_leader(g);
            return;
        }
        for p in 0..self.cfg.regions {
            if p != self.id {
                let msg = Msg::Raft {
                    group: g as GroupId,
                    term,
                    body: RaftMsg::Vote {
                        last_index,
                        last_term,
                        transfer,
                    },
                };
                self.defer(Deferred::Send(p, msg));
            }
        }
    }

    fn become_follower(&mut self, g: usize, term: u64, leader: Option<NodeId>) {
        let gr = &mut self.groups[g];
        if term > gr.term {
            gr.term = term;
            gr.vote = None;
            self.persist(
                StorageOp::HardState {
                    group: g as GroupId,
                    term,
                    vote: None,
                },
                true,
            );
        }
        let gr = &mut self.groups[g];
        let was_leader = gr.role == Role::Leader;
        gr.role = Role::Follower;
        gr.leader = leader;
        gr.votes.clear();
        if was_leader {
            gr.lease_expiry_us = 0;
            gr.transfer = None;
            gr.overlay.clear();
            gr.overlay_ns.clear();
            gr.async_acked.clear();
            gr.home_healthy_since_us = None;
            let writes = std::mem::take(&mut gr.pending_writes);
            gr.pending_by_request.clear();
            let reads = std::mem::take(&mut gr.pending_reads);
            for (_, w) in writes {
                for o in w.origins {
                    self.respond(o, ClientResponse::Error(ErrorCode::Indeterminate));
                }
            }
            for r in reads {
                self.respond(r.origin, ClientResponse::Error(ErrorCode::Unavailable));
            }
        }
        self.fail_stale_forwards(g);
        self.reset_election_timer(g);
    }

    fn become_leader(&mut self, g: usize) {
        let now = self.now;
        let id = self.id;
        let gr = &mut self.groups[g];
        debug_assert_eq!(gr.vote, Some(id), "a leader voted for itself in its term");
        gr.role = Role::Leader;
        gr.leader = Some(id);
        gr.transfer = None;
        gr.home_healthy_since_us = None;
        let last = gr.log.last_index();
        for p in gr.peers.iter_mut() {
            *p = Peer {
                match_index: 0,
                sent_index: last,
                acked_round: 0,
                last_heard_us: now,
                last_echo_us: 0,
                snap_progress: None,
            };
        }
        gr.rounds.clear();
        gr.lease_min_round = gr.round + 1;
        gr.lease_expiry_us = 0;
        // Rebuild the overlay from entries this leader's log holds beyond the state machine.
        gr.overlay.clear();
        gr.overlay_ns.clear();
        gr.overlay_revision = self.sms[g].revision();
        gr.overlay_time_ms = self.sms[g].time_ms();
        gr.overlay_frozen.clear();
        gr.pending_writes.clear();
        gr.pending_by_request.clear();
        for e in gr.log.iter_from(gr.applied + 1) {
            match &e.data {
                EntryData::Freeze { ns, .. } => {
                    gr.overlay_frozen.insert(ns.clone());
                }
                EntryData::Adopt(a) => {
                    gr.overlay_revision = a.revision;
                    gr.overlay_time_ms = gr.overlay_time_ms.max(a.time_ms);
                }
                _ => {}
            }
            if let EntryData::Write(w) = &e.data {
                gr.overlay_revision = w.revision;
                gr.overlay_time_ms = gr.overlay_time_ms.max(w.meta.time_ms);
                gr.overlay_ns.insert(w.ns.clone(), (w.revision, e.index));
                for k in &w.keys {
                    gr.overlay.insert(
                        (w.ns.clone(), k.key.clone()),
                        (k.version, k.value.clone(), e.index),
                    );
                }
                if w.request_id != 0 {
                    // A retry of this write may still arrive: it joins this entry.
                    let ack_on_durable = matches!(
                        self.ns_index.get(&w.ns),
                        Some((_, ReplicationMode::Async { .. }, _))
                    );
                    let resp = ClientResponse::Written {
                        versions: w.reply_versions.clone(),
                        token: RevisionToken {
                            group: g as GroupId,
                            revision: w.revision,
                        },
                    };
                    gr.pending_writes.insert(
                        e.index,
                        PendingWrite {
                            origins: Vec::new(),
                            request_id: w.request_id,
                            resp,
                            ack_on_durable,
                        },
                    );
                    gr.pending_by_request.insert(w.request_id, e.index);
                }
            }
        }
        let term = gr.term;
        let index = self.append_local(g, EntryData::Noop);
        self.groups[g].noop_index = index;
        self.out.push(Action::Observe(Observation::BecameLeader {
            group: g as GroupId,
            term,
        }));
        self.heartbeat(g);
    }

    /// Leader: append to the local log, persist, and count it once durable.
    fn append_local(&mut self, g: usize, data: EntryData) -> u64 {
        let gr = &mut self.groups[g];
        let index = gr.log.last_index() + 1;
        let entry = Entry {
            index,
            term: gr.term,
            data,
        };
        gr.log.push(entry.clone());
        let term = gr.term;
        self.persist(
            StorageOp::Append {
                group: g as GroupId,
                first_index: index,
                entries: vec![entry],
            },
            true,
        );
        self.defer(Deferred::LogDurable {
            group: g as GroupId,
            index,
            term,
        });
        index
    }

    fn leader_tick(&mut self, g: usize) {
        self.drive_moves(Some(g));
        let now = self.now;
        let et = self.cfg.election_timeout_us;
        let majority = self.cfg.majority();
        let id = self.id;
        let gr = &self.groups[g];
        // Check-quorum: a leader that has not heard from a majority for an
        // election timeout steps down (its lease expired before that).
        let heard = (0..self.cfg.regions)
            .filter(|&p| p == id || now.saturating_sub(gr.peers[p as usize].last_heard_us) < et)
            .count();
        if heard < majority {
            let term = gr.term;
            self.become_follower(g, term, None);
            return;
        }
        // Lease preference: hand leadership back to the home region once it
        // has looked healthy for long enough.
        let home = g as NodeId;
        if home != id && gr.transfer.is_none() {
            let healthy =
                now.saturating_sub(gr.peers[g].last_heard_us) < 2 * self.cfg.heartbeat_interval_us;
            let gr = &mut self.groups[g];
            if healthy {
                let since = *gr.home_healthy_since_us.get_or_insert(now);
                if now - since >= self.cfg.home_return_delay_us {
                    self.start_transfer(g, home);
                }
            } else {
                gr.home_healthy_since_us = None;
            }
        }
        self.heartbeat(g);
    }

    fn start_transfer(&mut self, g: usize, to: NodeId) {
        let now = self.now;
        let et = self.cfg.election_timeout_us;
        let gr = &mut self.groups[g];
        if gr.role != Role::Leader || to == self.id || gr.transfer.is_some() {
            return;
        }
        gr.transfer = Some(Transfer {
            to,
            deadline_us: now + et,
            timeout_now_sent: false,
        });
        gr.lease_expiry_us = 0;
        gr.lease_min_round = u64::MAX;
        gr.home_healthy_since_us = None;
        self.maybe_timeout_now(g);
        self.groups[g].heartbeat_now = true;
    }

    fn maybe_timeout_now(&mut self, g: usize) {
        let gr = &mut self.groups[g];
        let last = gr.log.last_index();
        let term = gr.term;
        if let Some(tr) = &mut gr.transfer {
            if !tr.timeout_now_sent && gr.peers[tr.to as usize].match_index == last {
                tr.timeout_now_sent = true;
                let to = tr.to;
                self.send(
                    to,
                    Msg::Raft {
                        group: g as GroupId,
                        term,
                        body: RaftMsg::TimeoutNow,
                    },
                );
            }
        }
    }

    /// Leader: start a heartbeat round to every peer (resending anything unacknowledged).
    fn heartbeat(&mut self, g: usize) {
        let now = self.now;
        let gr = &mut self.groups[g];
        gr.heartbeat_now = false;
        if gr.role != Role::Leader {
            return;
        }
        gr.round += 1;
        gr.rounds.push_back((gr.round, now));
        while gr.rounds.len() > 64 {
            gr.rounds.pop_front();
        }
        gr.next_heartbeat_us = now + self.cfg.heartbeat_interval_us;
        for p in 0..self.cfg.regions {
            if p != self.id {
                let from = self.groups[g].peers[p as usize].match_index + 1;
                self.send_append(g, p, from);
            }
        }
        // A round may be complete as it starts (a single region is its own
        // majority, and no acknowledgement will ever arrive): count it now.
        self.update_lease(g);
        self.serve_reads(g);
    }

    fn send_append(&mut self, g: usize, p: NodeId, from: u64) {
        let lease_ok = self.lease_valid(&self.groups[g]) && self.noop_committed(&self.groups[g]);
        let gr = &mut self.groups[g];
        let term = gr.term;
        let round = gr.round;
        let transferring_to = gr.transfer.as_ref().map(|t| t.to);
        if from <= gr.log.snap_index {
            let Some(snap) = &gr.snapshot else { return };
            let peer = &mut gr.peers[p as usize];
            let offset = match peer.snap_progress {
                Some((i, off)) if i == snap.index => off,
                _ => 0,
            };
            peer.snap_progress = Some((snap.index, offset));
            let end = (offset as usize + self.cfg.snapshot_chunk_bytes).min(snap.data.len());
            let msg = RaftMsg::Snapshot {
                index: snap.index,
                term: snap.term,
                offset,
                total: snap.data.len() as u64,
                data: snap.data[offset as usize..end].to_vec(),
                round,
            };
            self.send(
                p,
                Msg::Raft {
                    group: g as GroupId,
                    term,
                    body: msg,
                },
            );
            return;
        }
        let entries = gr
            .log
            .slice(from, self.cfg.append_entries_max, self.cfg.append_bytes_max);
        let prev_index = from - 1;
        let Some(prev_term) = gr.log.term_at(prev_index) else {
            return;
        };
        let peer = &mut gr.peers[p as usize];
        peer.sent_index = prev_index + entries.len() as u64;
        let msg = RaftMsg::Append {
            prev_index,
            prev_term,
            entries,
            commit: gr.commit,
            round,
            transferring_to,
            echo_us: peer.last_echo_us,
            lease_ok,
        };
        self.send(
            p,
            Msg::Raft {
                group: g as GroupId,
                term,
                body: msg,
            },
        );
    }

    fn lease_valid(&self, gr: &Group) -> bool {
        gr.role == Role::Leader && gr.transfer.is_none() && self.now < gr.lease_expiry_us
    }

    fn noop_committed(&self, gr: &Group) -> bool {
        self.cfg.mutants.read_before_noop_commit
            || (gr.noop_index > 0 && gr.commit >= gr.noop_index)
    }

    /// The highest round a majority (this node included) acknowledged.
    fn majority_round(&self, g: usize) -> u64 {
        let gr = &self.groups[g];
        let mut acked: Vec<u64> = (0..self.cfg.regions)
            .map(|p| {
                if p == self.id {
                    gr.round
                } else {
                    gr.peers[p as usize].acked_round
                }
            })
            .collect();
        acked.sort_unstable_by(|a, b| b.cmp(a));
        acked[self.cfg.majority() - 1]
    }

    fn update_lease(&mut self, g: usize) {
        let r = self.majority_round(g);
        let dur = self.cfg.lease_duration_us();
        let gr = &mut self.groups[g];
        if r < gr.lease_min_round || gr.transfer.is_some() {
            return;
        }
        if let Some(&(_, sent)) = gr.rounds.iter().find(|(rr, _)| *rr == r) {
            if sent + dur > gr.lease_expiry_us {
                gr.lease_expiry_us = sent + dur;
                gr.lease_round = r;
            }
        }
    }

    fn maybe_commit(&mut self, g: usize) {
        let id = self.id;
        let gr = &self.groups[g];
        if gr.role != Role::Leader {
            return;
        }
        let mut m: Vec<u64> = (0..self.cfg.regions)
            .map(|p| {
                if p == id {
                    gr.durable_index
                } else {
                    gr.peers[p as usize].match_index
                }
            })
            .collect();
        m.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = m[self.cfg.majority() - 1];
        // Only entries of the current term commit by counting (Raft §5.4.2).
        if candidate > gr.commit && gr.log.term_at(candidate) == Some(gr.term) {
            self.groups[g].commit = candidate;
            self.apply_committed(g);
        }
        self.serve_reads(g);
    }

    fn ack_durable_async(&mut self, g: usize) {
        let now = self.now;
        let gr = &mut self.groups[g];
        let durable = gr.durable_index;
        let ready: Vec<u64> = gr
            .pending_writes
            .range(..=durable)
            .filter(|(_, w)| w.ack_on_durable)
            .map(|(i, _)| *i)
            .collect();
        for i in ready {
            if i > self.groups[g].commit && self.groups[g].pending_writes.contains_key(&i) {
                self.groups[g].async_acked.push_back((i, now));
            }
            self.finish_pending_write(g, i);
        }
    }

    /// Answer everyone waiting on the pending write at `index`, if any.
    fn finish_pending_write(&mut self, g: usize, index: u64) {
        if let Some(w) = self.groups[g].pending_writes.remove(&index) {
            self.groups[g].pending_by_request.remove(&w.request_id);
            // A forwarder answers its client at once, but reads its own
            // write (a token, or the config engine's read-back) only once
            // it learns the commit: tell every follower now rather than at
            // the next heartbeat (issue 19 item 7: config writes sent to a
            // non-home region waited ~145 ms, one heartbeat interval).
            let committed = index <= self.groups[g].commit;
            if committed && w.origins.iter().any(|o| matches!(o, Origin::Remote(..))) {
                self.groups[g].heartbeat_now = true;
            }
            for o in w.origins {
                self.respond(o, w.resp.clone());
            }
        }
    }

    fn apply_committed(&mut self, g: usize) {
        while self.groups[g].applied < self.groups[g].commit {
            let index = self.groups[g].applied + 1;
            let Some(entry) = self.groups[g].log.get(index).cloned() else {
                debug_assert!(false, "committed entry {index} missing from the log");
                break;
            };
            self.groups[g].applied = index;
            if let EntryData::Write(w) = &entry.data {
                match self.sms[g].apply(w) {
                    Ok(changes) => {
                        let Ok(bytes) = crate::wire::encode("write effect", w) else {
                            self.halt_unencodable();
                            return;
                        };
                        let digest = fnv1a(&bytes);
                        self.out.push(Action::Observe(Observation::Applied {
                            group: g as GroupId,
                            revision: w.revision,
                            request_id: w.request_id,
                            digest,
                            ns: w.ns.clone(),
                            keys: w
                                .keys
                                .iter()
                                .map(|k| (k.key.clone(), k.version, k.value.is_some()))
                                .collect(),
                        }));
                        let gr = &mut self.groups[g];
                        for k in &w.keys {
                            let key = (w.ns.clone(), k.key.clone());
                            if gr.overlay.get(&key).is_some_and(|(_, _, i)| *i <= index) {
                                gr.overlay.remove(&key);
                            }
                        }
                        if gr.overlay_ns.get(&w.ns).is_some_and(|(_, i)| *i <= index) {
                            gr.overlay_ns.remove(&w.ns);
                        }
                        if g == 0 && w.ns == CATALOG_NS {
                            self.refresh_catalog();
                        }
                        self.notify_watchers(g as GroupId, &changes, w.revision);
                    }
                    Err(_) => {
                        // The log disagrees with the state machine: a safety bug.
                        // Stop rather than serve divergent data.
                        self.stats.apply_errors += 1;
                        self.handle_storage_failed(self.now);
                        return;
                    }
                }
            }
            match &entry.data {
                EntryData::Freeze { ns, to, tenure } => {
                    self.sms[g].freeze(ns, *to, *tenure);
                    self.groups[g].overlay_frozen.remove(ns);
                    self.watchers_misplaced = true;
                }
                EntryData::Drop {
                    ns,
                    freeze_revision,
                } => self.sms[g].drop_namespace(ns, *freeze_revision),
                EntryData::Adopt(a) => {
                    let Ok(completed) = self.sms[g].adopt(a) else {
                        self.stats.apply_errors += 1;
                        self.handle_storage_failed(self.now);
                        return;
                    };
                    let Ok(bytes) = crate::wire::encode("adopt effect", a) else {
                        self.halt_unencodable();
                        return;
                    };
                    let digest = fnv1a(&bytes);
                    self.out.push(Action::Observe(Observation::Applied {
                        group: g as GroupId,
                        revision: a.revision,
                        request_id: 0,
                        digest,
                        ns: a.ns.clone(),
                        keys: Vec::new(),
                    }));
                    if completed {
                        self.watchers_misplaced = true;
                        self.out.push(Action::Observe(Observation::NamespaceMoved {
                            ns: a.ns.clone(),
                            group: g as GroupId,
                            revision: a.revision,
                        }));
                    }
                }
                EntryData::Noop | EntryData::Write(_) => {}
            }
            self.finish_pending_write(g, index);
        }
        if self.watchers_misplaced {
            self.migrate_watchers();
        }
        if !self.moves.is_empty() {
            self.drive_moves(None);
        }
        let gr = &mut self.groups[g];
        while gr.async_acked.front().is_some_and(|(i, _)| *i <= gr.commit) {
            gr.async_acked.pop_front();
        }
        self.check_token_waits(g as GroupId);
        self.maybe_compact(g);
    }

    fn maybe_compact(&mut self, g: usize) {
        let gr = &self.groups[g];
        if gr.applied.saturating_sub(gr.log.snap_index) < self.cfg.compact_after_entries {
            return;
        }
        let snap_bytes = gr.snapshot.as_ref().map_or(0, |s| s.data.len() as u64);
        let log_bytes = gr.log.bytes() as u64;
        if log_bytes.saturating_mul(100)
            < snap_bytes.saturating_mul(self.cfg.compact_log_pct_of_snapshot_min)
        {
            return;
        }
        let index = gr.applied;
        let Some(term) = gr.log.term_at(index) else {
            return;
        };
        let Ok(data) = self.sms[g].encode() else {
            // Never an empty snapshot: the log is compacted behind it.
            self.halt_unencodable();
            return;
        };
        let snapshot = Snapshot { index, term, data };
        let gr = &mut self.groups[g];
        gr.log.compact_to(index, term);
        gr.snapshot = Some(snapshot.clone());
        self.persist(
            StorageOp::Snapshot {
                group: g as GroupId,
                snapshot,
            },
            true,
        );
    }

    fn serve_reads(&mut self, g: usize) {
        let gr = &self.groups[g];
        if gr.pending_reads.is_empty() || !self.noop_committed(gr) {
            return;
        }
        let lease = self.lease_valid(gr);
        let round = self.majority_round(g);
        let commit = gr.commit;
        let (ready, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.groups[g].pending_reads)
            .into_iter()
            .partition(|r| commit >= r.min_index && (lease || round >= r.round));
        self.groups[g].pending_reads = keep;
        for r in ready {
            // A move may have frozen (or even dropped) the namespace here while
            // the read waited for its round: check again as it is served.
            let unservable = match &r.what {
                ReadWhat::Query { ns, .. } => self.ns_unservable(g, ns, Consistency::Linearizable),
                ReadWhat::Conflict => None,
            };
            let resp = match unservable {
                Some(code) => ClientResponse::Error(code),
                None => self.read_now(g, &r.what),
            };
            self.respond(r.origin, resp);
        }
    }

    fn read_now(&self, g: usize, what: &ReadWhat) -> ClientResponse {
        // A frozen namespace's tokens stop at its freeze: later revisions of
        // this group say nothing about it, and its new home's revisions start
        // above the freeze (see `AdoptEffect`).
        let frozen_at = match what {
            ReadWhat::Query { ns, .. } => self.sms[g].frozen(ns).map(|(_, rev)| rev),
            ReadWhat::Conflict => None,
        };
        let token = RevisionToken {
            group: g as GroupId,
            revision: frozen_at.map_or(self.sms[g].revision(), |f| f.min(self.sms[g].revision())),
        };
        match what {
            ReadWhat::Conflict => ClientResponse::Conflict { token },
            ReadWhat::Query {
                ns,
                query: ReadQuery::Get { key },
                overlay,
            } => {
                let gr = &self.groups[g];
                if *overlay {
                    if let Some((version, value, _)) = gr.overlay.get(&(ns.clone(), key.clone())) {
                        let kv = KeyValue {
                            key: key.clone(),
                            value: value.clone(),
                            version: *version,
                            mod_revision: 0,
                            meta: ChangeMeta::default(),
                        };
                        let token = RevisionToken {
                            group: g as GroupId,
                            revision: gr.overlay_revision,
                        };
                        return ClientResponse::Value { kv, token };
                    }
                }
                ClientResponse::Value {
                    kv: self.sms[g].get(ns, key),
                    token,
                }
            }
            ReadWhat::Query {
                ns,
                query:
                    ReadQuery::List {
                        prefix,
                        start_after,
                        limit,
                    },
                overlay,
            } => {
                let limit = (*limit as usize).clamp(1, self.cfg.list_keys_max);
                let gr = &self.groups[g];
                let pending: Vec<(&String, &Pending)> = if *overlay {
                    gr.overlay
                        .iter()
                        .filter(|((n, k), _)| {
                            n == ns && k.starts_with(prefix.as_str()) && k > start_after
                        })
                        .map(|((_, k), p)| (k, p))
                        .collect()
                } else {
                    Vec::new()
                };
                if pending.is_empty() {
                    let (kvs, more) = self.sms[g].list(ns, prefix, start_after, limit);
                    return ClientResponse::List { kvs, more, token };
                }
                // Merge the proposed effects over the applied state: read enough
                // applied keys that deleting every overlaid one still fills a page.
                let (applied, applied_more) =
                    self.sms[g].list(ns, prefix, start_after, limit + pending.len());
                let mut merged: BTreeMap<String, KeyValue> =
                    applied.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
                for (k, (version, value, _)) in pending {
                    match value {
                        Some(v) => {
                            merged.insert(
                                k.clone(),
                                KeyValue {
                                    key: k.clone(),
                                    value: Some(v.clone()),
                                    version: *version,
                                    mod_revision: 0,
                                    meta: ChangeMeta::default(),
                                },
                            );
                        }
                        None => {
                            merged.remove(k);
                        }
                    }
                }
                let more = applied_more || merged.len() > limit;
                let kvs: Vec<KeyValue> = merged.into_values().take(limit).collect();
                let token = RevisionToken {
                    group: g as GroupId,
                    revision: gr.overlay_revision.max(token.revision),
                };
                ClientResponse::List { kvs, more, token }
            }
            ReadWhat::Query {
                ns,
                query: ReadQuery::History { key },
                ..
            } => ClientResponse::History {
                versions: self.sms[g].history(ns, key),
                token,
            },
            // Scans read applied state only (an async namespace's leader
            // overlay is not merged): they serve whole-namespace reads and
            // read-validate-write cycles, whose ns-revision compare catches
            // anything proposed but not yet applied.
            ReadWhat::Query {
                ns,
                query: ReadQuery::Scan { prefix, as_of },
                ..
            } => match self.sms[g].scan_as_of(ns, prefix, *as_of, self.cfg.scan_keys_max) {
                Ok((kvs, ns_revision)) => ClientResponse::Scan {
                    kvs,
                    ns_revision,
                    token,
                },
                Err(ScanError::TooLarge) => ClientResponse::Error(ErrorCode::ScanTooLarge),
                Err(ScanError::Compacted(_)) => ClientResponse::Error(ErrorCode::HistoryCompacted),
                Err(ScanError::FutureRevision { .. }) => {
                    ClientResponse::Error(ErrorCode::FutureRevision)
                }
            },
        }
    }

    /// Rebuild the namespace index: the static namespaces of the configuration
    /// plus the catalog as group 0 has applied it. A catalog entry never
    /// overrides a static namespace, and an undecodable one is skipped (it
    /// cannot be written: only `CreateNamespace` writes the catalog).
    fn refresh_catalog(&mut self) {
        let mut index = self.static_ns.clone();
        self.moves.clear();
        self.ns_floor.clear();
        for kv in self.sms[0].scan(CATALOG_NS, "") {
            let Some(s) = kv.value.as_deref().and_then(NsSettings::decode) else {
                continue;
            };
            if s.home >= self.cfg.regions || self.static_ns.contains_key(&kv.key) {
                continue;
            }
            if let Some(to) = s.moving_to.filter(|&t| t < self.cfg.regions && t != s.home) {
                self.moves
                    .insert(kv.key.clone(), (s.home, to, s.adopt_revision));
            }
            if s.adopt_revision > 0 {
                self.ns_floor.insert(kv.key.clone(), s.adopt_revision);
            }
            index.entry(kv.key).or_insert((
                s.home,
                s.mode,
                Retention {
                    versions_max: s.history_versions_max,
                    age_ms_max: s.history_age_ms_max,
                },
            ));
        }
        self.ns_index = index;
        if !self.watchers.is_empty() {
            self.watchers_misplaced = true;
        }
    }

    // ----- namespace moves -----

    /// The group that serves a (validated) namespace here: the catalog's home,
    /// or, during a move, the new home as soon as this node applied the
    /// complete copy there. The old home is frozen for good by then, so the
    /// copy is the namespace; the catalog catches up a moment later, and
    /// routing by it alone would refuse requests in between.
    fn home_group(&self, ns: &str) -> GroupId {
        let g = self.ns_index[ns].0;
        match self.moves.get(ns) {
            // A copy adopted after the old home's tenure began is this move's
            // (a replica lagging in the new home may still show an older one).
            Some(&(from, to, tenure))
                if from == g
                    && self.sms[to as usize]
                        .adopted(ns)
                        .is_some_and(|(src, _, rev)| src == from && rev > tenure) =>
            {
                to
            }
            _ => g,
        }
    }

    /// Leads group `g` and may propose on its behalf.
    fn leads_ready(&self, g: usize) -> bool {
        let gr = &self.groups[g];
        gr.role == Role::Leader && self.noop_committed(gr) && gr.transfer.is_none()
    }

    /// Push the steps of every namespace move this node's groups own: the old
    /// home's leader freezes the namespace; the new home's leader, once its own
    /// replica of the old home applied the freeze (so that replica's copy is
    /// final), copies it through its log chunk by chunk, and on its heartbeat
    /// tick points the catalog at the new home; on its tick, an old home's
    /// leader drops a copy whose move completed. Every step is idempotent and
    /// re-derived from applied state, so a change of leader anywhere resumes
    /// where it stopped.
    fn drive_moves(&mut self, tick: Option<usize>) {
        let moves: Vec<(String, GroupId, GroupId, u64)> = self
            .moves
            .iter()
            .map(|(n, &(f, t, tenure))| (n.clone(), f, t, tenure))
            .collect();
        for (ns, from, to, tenure) in moves {
            let (f, t) = (from as usize, to as usize);
            if self.leads_ready(f)
                && self.sms[f].frozen(&ns).is_none()
                && !self.groups[f].overlay_frozen.contains(&ns)
            {
                self.groups[f].overlay_frozen.insert(ns.clone());
                self.propose(
                    f,
                    EntryData::Freeze {
                        ns: ns.clone(),
                        to,
                        tenure,
                    },
                );
            }
            let Some((frozen_to, freeze_rev)) = self.sms[f].frozen(&ns) else {
                continue;
            };
            if !self.leads_ready(t) || frozen_to != to {
                continue;
            }
            if let Some((src, _, adopt_rev)) = self.sms[t].adopted(&ns) {
                if src == from && adopt_rev > freeze_rev {
                    if tick == Some(t) {
                        self.propose_move_done(&ns, to, adopt_rev);
                    }
                    continue;
                }
            }
            let in_flight =
                self.unapplied_any(t, |d| matches!(d, EntryData::Adopt(a) if a.ns == ns));
            // Nothing to copy from an old home that dropped its copy: that
            // freeze belongs to a move already complete (a stale catalog).
            if in_flight || !self.sms[f].holds_data(&ns) {
                continue;
            }
            let after = match self.sms[t].adopting(&ns) {
                Some((src, frz, cursor)) if *src == from && *frz == freeze_rev => {
                    Some(cursor.clone())
                }
                _ => None,
            };
            let first = after.is_none();
            let (versions, done) = self.sms[f].adopt_chunk(
                &ns,
                after.flatten().as_ref(),
                self.cfg.append_bytes_max / 2,
            );
            let src_revision = self.sms[f].revision();
            let src_time_ms = self.sms[f].time_ms();
            let last_ns_revision = done.then(|| self.sms[f].ns_revision(&ns));
            let gr = &mut self.groups[t];
            // The first chunk jumps past every revision the namespace had (or
            // any token of it showed) in its old home: see `AdoptEffect`.
            let revision = if first {
                gr.overlay_revision.max(src_revision) + 1
            } else {
                gr.overlay_revision + 1
            };
            gr.overlay_revision = revision;
            gr.overlay_time_ms = gr.overlay_time_ms.max(src_time_ms);
            let effect = AdoptEffect {
                ns,
                from,
                revision,
                freeze_revision: freeze_rev,
                first,
                last_ns_revision,
                time_ms: gr.overlay_time_ms,
                versions,
            };
            self.propose(t, EntryData::Adopt(effect));
        }
        // The old home drops its frozen copy once this node's replica of the
        // new home applied the complete copy of this very move (adopted after
        // the freeze): local state only, so a stale catalog cannot drop a
        // copy that is still being read.
        if let Some(g) = tick.filter(|&g| self.leads_ready(g)) {
            let done: Vec<(String, u64)> = self.sms[g]
                .frozen_namespaces()
                .filter_map(|(ns, to, freeze_rev)| {
                    let copied = self.sms[to as usize]
                        .adopted(ns)
                        .is_some_and(|(src, _, rev)| src as usize == g && rev > freeze_rev);
                    (copied && self.sms[g].holds_data(ns)).then(|| (ns.clone(), freeze_rev))
                })
                .collect();
            for (ns, freeze_revision) in done {
                if !self.unapplied_any(
                    g,
                    |d| matches!(d, EntryData::Drop { ns: n, .. } if *n == ns),
                ) {
                    self.propose(
                        g,
                        EntryData::Drop {
                            ns,
                            freeze_revision,
                        },
                    );
                }
            }
        }
    }

    /// The new home holds the whole namespace: point the catalog at it (a
    /// compare-and-set on the catalog entry, so a repeat is harmless).
    fn propose_move_done(&mut self, ns: &str, to: GroupId, adopt_revision: u64) {
        let cur = self.sms[0].get(CATALOG_NS, ns);
        let Some(settings) = cur.value.as_deref().and_then(NsSettings::decode) else {
            return;
        };
        if settings.moving_to != Some(to) {
            return;
        }
        let settings = NsSettings {
            home: to,
            moving_to: None,
            adopt_revision,
            ..settings
        };
        let Ok(value) = settings.encode() else {
            self.halt_unencodable();
            return;
        };
        let req = ClientRequest::Write {
            ns: CATALOG_NS.to_string(),
            request_id: 0,
            compares: vec![Compare {
                key: ns.to_string(),
                version: cur.version,
            }],
            ns_revision: None,
            ops: vec![WriteOp::Put {
                key: ns.to_string(),
                value,
            }],
            meta: ChangeMeta::default(),
        };
        // Nobody waits for the answer: the next tick looks at the catalog again.
        self.next_internal_req += 1;
        self.on_request(Origin::Local(self.next_internal_req), req);
    }

    /// Move watchers of a namespace whose home changed to its new home, once
    /// this node applied both the freeze in the old home (the watcher saw every
    /// change made there) and the copy in the new one; deliver what the new
    /// home changed since the copy.
    fn migrate_watchers(&mut self) {
        let mut still = false;
        let ids: Vec<RequestId> = self
            .watchers
            .iter()
            .filter(|(_, w)| self.ns_index.contains_key(&w.ns) && self.home_group(&w.ns) != w.group)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(w) = self.watchers.get(&id) else {
                continue;
            };
            let (old, new) = (w.group as usize, self.home_group(&w.ns) as usize);
            let floor = self.ns_floor.get(&w.ns).copied().unwrap_or(0);
            if self.sms[old].frozen(&w.ns).is_none()
                || self.sms[new].revision() < floor
                || self.sms[new].adopting(&w.ns).is_some()
            {
                still = true;
                continue;
            }
            let since = self.sms[new]
                .adopted(&w.ns)
                .map_or(floor, |(_, _, rev)| rev);
            let sm = &self.sms[new];
            let rev = sm.revision();
            let resp = match sm.changes_since(&w.ns, &w.prefix, since) {
                Some(changes) => {
                    for (revision, events) in group_by_revision(changes) {
                        self.out.push(Action::Reply {
                            req: id,
                            resp: ClientResponse::WatchEvents { events, revision },
                        });
                    }
                    None
                }
                None => Some(ClientResponse::WatchResync {
                    snapshot: sm.scan(&w.ns, &w.prefix),
                    revision: rev,
                }),
            };
            if let Some(resp) = resp {
                self.out.push(Action::Reply { req: id, resp });
            }
            if let Some(w) = self.watchers.get_mut(&id) {
                w.group = new as GroupId;
                w.last_revision = rev;
            }
        }
        self.watchers_misplaced = still;
    }

    /// Why group `g` cannot serve a read of `ns` at this consistency here, if
    /// it cannot: the namespace moves away (only stale reads of a still-held
    /// frozen copy are safe: the new home may already take writes), or is
    /// being copied in.
    fn ns_unservable(&self, g: usize, ns: &str, consistency: Consistency) -> Option<ErrorCode> {
        let sm = &self.sms[g];
        if sm.frozen(ns).is_some() && (consistency != Consistency::Stale || !sm.holds_data(ns)) {
            return Some(ErrorCode::NamespaceMoving);
        }
        if sm.adopting(ns).is_some() {
            return Some(ErrorCode::NamespaceMoving);
        }
        None
    }

    // ----- peer messages -----

    fn on_message(&mut self, from: NodeId, bytes: &[u8]) -> Result<(), PeerError> {
        if from >= self.cfg.regions || from == self.id {
            return Err(PeerError::UnknownPeer(from));
        }
        let msg = Msg::decode(bytes, self.cfg.message_bytes_max)?;
        match msg {
            Msg::Raft { group, term, body } => {
                if group >= self.cfg.regions {
                    return Err(PeerError::OutOfProtocol("group out of range"));
                }
                self.on_raft(group as usize, from, term, body)
            }
            Msg::Forward { boot, id, req } => {
                // A duplicated forward is dropped: its first copy may have been
                // refused ("did not apply") and a later copy must not apply it
                // anyway (say, once a moved namespace's new home leads here).
                // Keyed by the sender's boot too: a restarted peer numbers its
                // requests from 1 again, and those are new requests, not
                // duplicates (issue 20: a region's forwards were dropped here
                // for minutes after its restarts).
                if self.seen_forwards.insert((from, boot, id)) {
                    self.seen_forwards_order.push_back((from, boot, id));
                    while self.seen_forwards_order.len() > SEEN_FORWARDS_MAX {
                        if let Some(old) = self.seen_forwards_order.pop_front() {
                            self.seen_forwards.remove(&old);
                        }
                    }
                    self.on_forward(from, boot, id, req);
                } else {
                    self.stats.peer_out_of_protocol += 1;
                }
                Ok(())
            }
            Msg::ForwardReply { boot, id, resp } => {
                if boot != self.boot {
                    // For an earlier life of this node: its request is gone,
                    // and `id` may now name another one.
                    self.stats.stale_forward_replies += 1;
                    return Ok(());
                }
                self.forward_heard_us[from as usize] = self.now;
                if resp == ClientResponse::Error(ErrorCode::Unavailable) && self.reroute(id) {
                    // The node we took for the leader no longer is, or is
                    // handing over; UNAVAILABLE promises nothing happened, so
                    // try whoever leads next (bounded by the deadline).
                    return Ok(());
                }
                self.respond(Origin::Local(id), resp);
                Ok(())
            }
            Msg::Probe { boot, seq } => {
                self.send(from, Msg::ProbeReply { boot, seq });
                Ok(())
            }
            Msg::ProbeReply { boot, seq } => {
                let p = from as usize;
                if boot == self.boot && self.probes[p].is_some_and(|(s, _)| s == seq) {
                    self.probes[p] = None;
                    self.forward_heard_us[p] = self.now;
                } else {
                    self.stats.stale_forward_replies += 1;
                }
                Ok(())
            }
            Msg::Meta { sync } => {
                match self.meta.receive(from, &sync) {
                    Ok(changed) => {
                        if changed {
                            let bytes = self.meta.take_unsaved();
                            if !bytes.is_empty() {
                                // Merged from a peer: re-fetchable, so no fsync needed.
                                self.persist(StorageOp::MetaChunk { bytes }, false);
                            }
                            self.meta_send_all(Some(from));
                        }
                        self.meta_send(from);
                    }
                    Err(_) => self.stats.meta_errors += 1,
                }
                Ok(())
            }
        }
    }

    /// Offer a sync message to every peer but `except`.
    fn meta_send_all(&mut self, except: Option<NodeId>) {
        for p in 0..self.cfg.regions {
            if p != self.id && Some(p) != except {
                self.meta_send(p);
            }
        }
    }

    fn meta_send(&mut self, p: NodeId) {
        if let Some(sync) = self.meta.sync_message(p) {
            self.send(p, Msg::Meta { sync });
        }
    }

    fn on_raft(
        &mut self,
        g: usize,
        from: NodeId,
        term: u64,
        body: RaftMsg,
    ) -> Result<(), PeerError> {
        if let RaftMsg::Append {
            prev_index,
            entries,
            ..
        } = &body
        {
            if entries.len() > self.cfg.append_entries_max {
                return Err(PeerError::OutOfProtocol("too many entries"));
            }
            for (k, e) in entries.iter().enumerate() {
                if e.index != prev_index + 1 + k as u64 || e.term > term {
                    return Err(PeerError::OutOfProtocol("entries out of place"));
                }
            }
        }
        if let RaftMsg::Snapshot {
            offset,
            total,
            data,
            ..
        } = &body
        {
            if offset.saturating_add(data.len() as u64) > *total
                || data.len() > self.cfg.snapshot_chunk_bytes
            {
                return Err(PeerError::OutOfProtocol("bad snapshot chunk"));
            }
        }
        let my_term = self.groups[g].term;
        match body {
            RaftMsg::PreVote {
                last_index,
                last_term,
            } => {
                let granted =
                    term > my_term && self.log_ok(g, last_index, last_term) && !self.in_promise(g);
                let t = if granted { term } else { my_term };
                self.send(
                    from,
                    Msg::Raft {
                        group: g as GroupId,
                        term: t,
                        body: RaftMsg::PreVoteResp { granted },
                    },
                );
                return Ok(());
            }
            RaftMsg::PreVoteResp { granted } => {
                let gr = &mut self.groups[g];
                if gr.role == Role::PreCandidate && granted && term == gr.term + 1 {
                    gr.votes.insert(from);
                    if gr.votes.len() >= self.cfg.majority() {
                        self.campaign(g, false);
                    }
                } else if !granted && term > gr.term {
                    self.become_follower(g, term, None);
                }
                return Ok(());
            }
            RaftMsg::Vote {
                last_index,
                last_term,
                transfer,
            } => {
                if term > my_term {
                    let forced = transfer && self.groups[g].leader_transferring_to == Some(from);
                    if self.in_promise(g) && !forced {
                        // Leader stickiness: ignore, keep the promise (and the term).
                        return Ok(());
                    }
                    self.become_follower(g, term, None);
                }
                let gr = &self.groups[g];
                let granted = term == gr.term
                    && (gr.vote.is_none() || gr.vote == Some(from))
                    && self.log_ok(g, last_index, last_term);
                let reply = Msg::Raft {
                    group: g as GroupId,
                    term: self.groups[g].term,
                    body: RaftMsg::VoteResp { granted },
                };
                if granted {
                    self.groups[g].vote = Some(from);
                    self.reset_election_timer(g);
                    if self.cfg.mutants.vote_not_persisted {
                        self.send(from, reply);
                        return Ok(());
                    }
                    let t = self.groups[g].term;
                    self.persist(
                        StorageOp::HardState {
                            group: g as GroupId,
                            term: t,
                            vote: Some(from),
                        },
                        true,
                    );
                }
                // Votes are durable before they are answered.
                self.defer(Deferred::Send(from, reply));
                return Ok(());
            }
            _ => {}
        }
        // Every other message: a higher term demotes us; a lower one is stale.
        if term > my_term {
            let leader = matches!(
                body,
                RaftMsg::Append { .. } | RaftMsg::Snapshot { .. } | RaftMsg::TimeoutNow
            )
            .then_some(from);
            self.become_follower(g, term, leader);
        } else if term < my_term {
            let stale_accepted = self.cfg.mutants.stale_leader_append_accepted
                && matches!(body, RaftMsg::Append { .. });
            if !stale_accepted {
                if matches!(body, RaftMsg::Append { .. } | RaftMsg::Snapshot { .. }) {
                    // Tell the stale leader about the newer term (fencing).
                    let last_index = self.groups[g].log.last_index();
                    let resp = RaftMsg::AppendResp {
                        success: false,
                        match_index: 0,
                        last_index,
                        round: 0,
                        echo_us: 0,
                    };
                    self.send(
                        from,
                        Msg::Raft {
                            group: g as GroupId,
                            term: my_term,
                            body: resp,
                        },
                    );
                }
                return Ok(());
            }
        }
        match body {
            RaftMsg::VoteResp { granted } => {
                let gr = &mut self.groups[g];
                if gr.role == Role::Candidate && granted && term == gr.term {
                    gr.votes.insert(from);
                    if gr.votes.len() >= self.cfg.majority() {
                        self.become_leader(g);
                    }
                }
            }
            RaftMsg::Append {
                prev_index,
                prev_term,
                entries,
                commit,
                round,
                transferring_to,
                echo_us,
                lease_ok,
            } => self.on_append(
                g,
                from,
                term,
                prev_index,
                prev_term,
                entries,
                commit,
                round,
                transferring_to,
                echo_us,
                lease_ok,
            ),
            RaftMsg::AppendResp {
                success,
                match_index,
                last_index,
                round,
                echo_us,
            } => self.on_append_resp(
                g,
                from,
                term,
                success,
                match_index,
                last_index,
                round,
                echo_us,
            ),
            RaftMsg::Snapshot {
                index,
                term: sterm,
                offset,
                total,
                data,
                round,
            } => self.on_snapshot(g, from, term, index, sterm, offset, total, data, round)?,
            RaftMsg::SnapshotResp {
                index,
                received,
                done,
                round,
            } => {
                let gr = &mut self.groups[g];
                if gr.role != Role::Leader || term != gr.term {
                    return Ok(());
                }
                let peer = &mut gr.peers[from as usize];
                peer.last_heard_us = self.now;
                peer.acked_round = peer.acked_round.max(round);
                if done {
                    peer.snap_progress = None;
                    peer.match_index = peer.match_index.max(index);
                    let next = peer.match_index + 1;
                    self.send_append(g, from, next);
                    self.maybe_commit(g);
                } else if let Some((i, _)) = peer.snap_progress {
                    if i == index {
                        peer.snap_progress = Some((i, received));
                        self.send_append(g, from, index);
                    }
                }
                self.update_lease(g);
            }
            RaftMsg::TimeoutNow => {
                let gr = &self.groups[g];
                if gr.role == Role::Follower && gr.leader == Some(from) && term == gr.term {
                    self.campaign(g, true);
                }
            }
            RaftMsg::PreVote { .. } | RaftMsg::PreVoteResp { .. } | RaftMsg::Vote { .. } => {}
        }
        Ok(())
    }

    fn note_promise(&mut self, g: usize, leader: NodeId, term: u64, round: u64) {
        let gr = &mut self.groups[g];
        let (l, t, r) = gr.promised;
        if (l, t) != (leader, term) || round > r {
            gr.promised = (leader, term, round);
            self.out.push(Action::Observe(Observation::Promised {
                group: g as GroupId,
                leader,
                term,
                round,
            }));
        }
    }

    fn log_ok(&self, g: usize, last_index: u64, last_term: u64) -> bool {
        let gr = &self.groups[g];
        (last_term, last_index) >= (gr.log.last_term(), gr.log.last_index())
    }

    /// Whether this node promised a leader not to help elect another one.
    fn in_promise(&self, g: usize) -> bool {
        let gr = &self.groups[g];
        gr.role == Role::Leader
            || gr
                .leader_contact_us
                .is_some_and(|c| self.now < c + self.cfg.election_timeout_us)
    }

    #[allow(clippy::too_many_arguments)]
    fn on_append(
        &mut self,
        g: usize,
        from: NodeId,
        term: u64,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
        round: u64,
        transferring_to: Option<NodeId>,
        echo_us: u64,
        lease_ok: bool,
    ) {
        let now = self.now;
        let stale = term < self.groups[g].term;
        if !stale {
            if self.groups[g].role != Role::Follower {
                self.become_follower(g, term, Some(from));
            }
            self.reset_election_timer(g);
            let gr = &mut self.groups[g];
            gr.leader = Some(from);
            gr.leader_contact_us = Some(now);
            gr.leader_transferring_to = transferring_to;
            self.note_promise(g, from, term, round);
        }
        let gr = &mut self.groups[g];
        let reply_term = gr.term;
        let mut success = false;
        let mut match_index = 0;
        // Entries at or below the snapshot are committed and so already match.
        let (prev_index, prev_term, entries) = if prev_index < gr.log.snap_index {
            let skip = (gr.log.snap_index - prev_index) as usize;
            if skip > entries.len() {
                (gr.log.snap_index, gr.log.snap_term, Vec::new())
            } else {
                let rest: Vec<Entry> = entries.into_iter().skip(skip).collect();
                (gr.log.snap_index, gr.log.snap_term, rest)
            }
        } else {
            (prev_index, prev_term, entries)
        };
        if gr.log.term_at(prev_index) == Some(prev_term) {
            success = true;
            match_index = prev_index + entries.len() as u64;
            let mut first_new = None;
            for (k, e) in entries.iter().enumerate() {
                match gr.log.term_at(e.index) {
                    Some(t) if t == e.term => continue,
                    Some(_) => {
                        debug_assert!(
                            e.index > gr.commit || self.cfg.mutants.any(),
                            "never truncate committed entries"
                        );
                        gr.log.truncate_from(e.index);
                        gr.durable_index = gr.durable_index.min(e.index - 1);
                        first_new = Some(k);
                        break;
                    }
                    None => {
                        first_new = Some(k);
                        break;
                    }
                }
            }
            if let Some(k) = first_new {
                let new: Vec<Entry> = entries[k..].to_vec();
                let first_index = new[0].index;
                for e in &new {
                    gr.log.push(e.clone());
                }
                let last = gr.log.last_index();
                let t = gr.log.last_term();
                self.persist(
                    StorageOp::Append {
                        group: g as GroupId,
                        first_index,
                        entries: new,
                    },
                    true,
                );
                self.defer(Deferred::LogDurable {
                    group: g as GroupId,
                    index: last,
                    term: t,
                });
            }
            let gr = &mut self.groups[g];
            let new_commit = commit.min(match_index);
            if new_commit > gr.commit {
                gr.commit = new_commit;
                self.apply_committed(g);
            }
            let gr = &mut self.groups[g];
            if lease_ok && !stale && gr.applied >= commit {
                gr.fresh_as_of_us = Some(gr.fresh_as_of_us.map_or(echo_us, |f| f.max(echo_us)));
            }
        }
        let last_index = self.groups[g].log.last_index();
        let resp = RaftMsg::AppendResp {
            success,
            match_index,
            last_index,
            round,
            echo_us: now,
        };
        // Acknowledge only what is durable.
        self.defer(Deferred::Send(
            from,
            Msg::Raft {
                group: g as GroupId,
                term: reply_term,
                body: resp,
            },
        ));
    }

    #[allow(clippy::too_many_arguments)]
    fn on_append_resp(
        &mut self,
        g: usize,
        from: NodeId,
        term: u64,
        success: bool,
        match_index: u64,
        last_index: u64,
        round: u64,
        echo_us: u64,
    ) {
        let now = self.now;
        let gr = &mut self.groups[g];
        if gr.role != Role::Leader || term != gr.term {
            return;
        }
        let my_last = gr.log.last_index();
        let peer = &mut gr.peers[from as usize];
        peer.last_heard_us = now;
        peer.acked_round = peer.acked_round.max(round);
        peer.last_echo_us = peer.last_echo_us.max(echo_us);
        if success {
            if match_index > my_last {
                self.stats.peer_out_of_protocol += 1;
                return;
            }
            peer.match_index = peer.match_index.max(match_index);
            if peer.match_index >= peer.sent_index
                && peer.match_index < my_last
                && peer.snap_progress.is_none()
            {
                let next = peer.match_index + 1;
                self.send_append(g, from, next);
            }
        } else if round > 0 {
            // Log mismatch: back off to what the follower has and resend.
            let next = (last_index + 1)
                .min(peer.sent_index)
                .max(peer.match_index + 1);
            peer.sent_index = next - 1;
            self.send_append(g, from, next);
        }
        self.update_lease(g);
        self.maybe_commit(g);
        self.maybe_timeout_now(g);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_snapshot(
        &mut self,
        g: usize,
        from: NodeId,
        term: u64,
        index: u64,
        sterm: u64,
        offset: u64,
        total: u64,
        data: Vec<u8>,
        round: u64,
    ) -> Result<(), PeerError> {
        let now = self.now;
        if self.groups[g].role != Role::Follower {
            self.become_follower(g, term, Some(from));
        }
        self.reset_election_timer(g);
        let gr = &mut self.groups[g];
        gr.leader = Some(from);
        gr.leader_contact_us = Some(now);
        self.note_promise(g, from, term, round);
        let gr = &mut self.groups[g];
        let reply = |received: u64, done: bool| Msg::Raft {
            group: g as GroupId,
            term,
            body: RaftMsg::SnapshotResp {
                index,
                received,
                done,
                round,
            },
        };
        if index <= gr.commit {
            self.defer(Deferred::Send(from, reply(total, true)));
            return Ok(());
        }
        let buf = match gr.snap_recv.take() {
            Some((i, t, tot, mut buf))
                if i == index && t == sterm && tot == total && buf.len() as u64 == offset =>
            {
                buf.extend_from_slice(&data);
                buf
            }
            other if offset == 0 => {
                drop(other);
                data
            }
            other => {
                let have = other
                    .as_ref()
                    .filter(|(i, ..)| *i == index)
                    .map_or(0, |(_, _, _, b)| b.len() as u64);
                gr.snap_recv = other;
                self.send(from, reply(have, false));
                return Ok(());
            }
        };
        if (buf.len() as u64) < total {
            let have = buf.len() as u64;
            gr.snap_recv = Some((index, sterm, total, buf));
            self.send(from, reply(have, false));
            return Ok(());
        }
        if let Err(_e) = self.sms[g].restore(&buf) {
            return Err(PeerError::OutOfProtocol("undecodable snapshot"));
        }
        if g == 0 {
            self.refresh_catalog();
        }
        let gr = &mut self.groups[g];
        gr.log.compact_to(index, sterm);
        gr.commit = gr.commit.max(index);
        gr.applied = index;
        gr.durable_index = gr.durable_index.max(index).min(gr.log.last_index());
        let snapshot = Snapshot {
            index,
            term: sterm,
            data: buf,
        };
        gr.snapshot = Some(snapshot.clone());
        self.persist(
            StorageOp::Snapshot {
                group: g as GroupId,
                snapshot,
            },
            true,
        );
        self.defer(Deferred::Send(from, reply(total, true)));
        // Watchers of this group lost their history: resync them.
        let ids: Vec<RequestId> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.group as usize == g)
            .map(|(id, _)| *id)
            .collect();
        let rev = self.sms[g].revision();
        for id in ids {
            if let Some(w) = self.watchers.get_mut(&id) {
                w.last_revision = rev;
                let snapshot = self.sms[g].scan(&w.ns, &w.prefix);
                self.out.push(Action::Reply {
                    req: id,
                    resp: ClientResponse::WatchResync {
                        snapshot,
                        revision: rev,
                    },
                });
            }
        }
        self.apply_committed(g);
        Ok(())
    }

    // ----- client requests -----

    fn validate(&self, req: &ClientRequest) -> Result<(), ErrorCode> {
        let ns_ok = |ns: &str| self.ns_index.contains_key(ns);
        let key_ok = |k: &str| {
            if k.len() > self.cfg.key_bytes_max {
                Err(ErrorCode::KeyTooLong)
            } else if k.is_empty() {
                Err(ErrorCode::InvalidRequest)
            } else {
                Ok(())
            }
        };
        match req {
            ClientRequest::Read { ns, .. } if !ns_ok(ns) => Err(ErrorCode::UnknownNamespace),
            ClientRequest::Read {
                query: ReadQuery::Get { key } | ReadQuery::History { key },
                ..
            } => key_ok(key),
            ClientRequest::Read {
                query: ReadQuery::Scan { prefix, .. },
                ..
            } => {
                if prefix.len() > self.cfg.key_bytes_max {
                    return Err(ErrorCode::KeyTooLong);
                }
                Ok(())
            }
            ClientRequest::Read {
                query:
                    ReadQuery::List {
                        prefix,
                        start_after,
                        limit,
                    },
                ..
            } => {
                if prefix.len() > self.cfg.key_bytes_max
                    || start_after.len() > self.cfg.key_bytes_max
                {
                    return Err(ErrorCode::KeyTooLong);
                }
                if *limit == 0 {
                    return Err(ErrorCode::InvalidRequest);
                }
                Ok(())
            }
            ClientRequest::Write {
                ns,
                compares,
                ops,
                meta,
                ..
            } => {
                if !ns_ok(ns) {
                    return Err(ErrorCode::UnknownNamespace);
                }
                if meta.author.len() + meta.message.len() > CHANGE_META_BYTES_MAX {
                    return Err(ErrorCode::InvalidRequest);
                }
                if ops.is_empty() {
                    return Err(ErrorCode::InvalidRequest);
                }
                if ops.len() + compares.len() > self.cfg.txn_ops_max {
                    return Err(ErrorCode::TooManyOps);
                }
                let mut seen = BTreeSet::new();
                for op in ops {
                    key_ok(op.key())?;
                    if !seen.insert(op.key()) {
                        return Err(ErrorCode::InvalidRequest);
                    }
                    if let WriteOp::Put { value, .. } = op {
                        if value.len() > self.cfg.value_bytes_max {
                            return Err(ErrorCode::ValueTooLarge);
                        }
                    }
                }
                for c in compares {
                    key_ok(&c.key)?;
                }
                Ok(())
            }
            ClientRequest::Watch { ns, prefix, .. } => {
                if !ns_ok(ns) {
                    return Err(ErrorCode::UnknownNamespace);
                }
                if prefix.len() > self.cfg.key_bytes_max {
                    return Err(ErrorCode::KeyTooLong);
                }
                Ok(())
            }
            ClientRequest::TransferLeader { group, to } => {
                if *group >= self.cfg.regions || *to >= self.cfg.regions {
                    return Err(ErrorCode::InvalidRequest);
                }
                Ok(())
            }
            ClientRequest::CreateNamespace { ns, settings, .. } => {
                let name_ok = !ns.is_empty()
                    && ns.len() <= NS_NAME_BYTES_MAX
                    && !ns.starts_with(RESERVED_NS_PREFIX)
                    && ns
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
                if !name_ok || settings.home >= self.cfg.regions {
                    return Err(ErrorCode::InvalidRequest);
                }
                Ok(())
            }
            ClientRequest::MoveNamespace { ns, to } => {
                if *to >= self.cfg.regions {
                    return Err(ErrorCode::InvalidRequest);
                }
                if !ns_ok(ns) || ns.starts_with(RESERVED_NS_PREFIX) {
                    return Err(ErrorCode::UnknownNamespace);
                }
                // Static namespaces are homed by the configuration file.
                if self.static_ns.contains_key(ns) {
                    return Err(ErrorCode::InvalidRequest);
                }
                Ok(())
            }
            ClientRequest::Meta(_)
            | ClientRequest::MetaGranted { .. }
            | ClientRequest::CancelWatch { .. } => Ok(()),
        }
    }

    /// A move request as the catalog write that starts it, or the answer at
    /// once (already there; already moving).
    fn move_request(&self, ns: String, to: GroupId) -> Result<ClientRequest, Box<ClientResponse>> {
        let cur = self.sms[0].get(CATALOG_NS, &ns);
        let Some(settings) = cur.value.as_deref().and_then(NsSettings::decode) else {
            return Err(Box::new(ClientResponse::Error(ErrorCode::UnknownNamespace)));
        };
        if settings.moving_to.is_some() {
            return Err(Box::new(ClientResponse::Error(ErrorCode::NamespaceMoving)));
        }
        if settings.home == to {
            return Err(Box::new(ClientResponse::Done));
        }
        let settings = NsSettings {
            moving_to: Some(to),
            ..settings
        };
        let value = settings
            .encode()
            .map_err(|_| Box::new(ClientResponse::Error(ErrorCode::Internal)))?;
        // Compare on the version read here: a catalog replica that is behind
        // gets a conflict, never a move computed from stale settings.
        Ok(ClientRequest::Write {
            ns: CATALOG_NS.to_string(),
            request_id: 0,
            compares: vec![Compare {
                key: ns.clone(),
                version: cur.version,
            }],
            ns_revision: None,
            ops: vec![WriteOp::Put { key: ns, value }],
            meta: ChangeMeta::default(),
        })
    }

    fn on_client(&mut self, req: RequestId, request: ClientRequest) {
        // System namespaces are written only by the core itself (the catalog
        // through CreateNamespace), never by a client's write.
        let reserved = matches!(&request, ClientRequest::Write { ns, .. } if ns.starts_with(RESERVED_NS_PREFIX));
        let checked = if reserved {
            Err(ErrorCode::InvalidRequest)
        } else {
            self.validate(&request)
        };
        let request = match request {
            ClientRequest::CreateNamespace {
                ns,
                settings,
                request_id,
            } => {
                let Ok(value) = settings.encode() else {
                    self.out.push(Action::Reply {
                        req,
                        resp: ClientResponse::Error(ErrorCode::Internal),
                    });
                    return;
                };
                ClientRequest::Write {
                    ns: CATALOG_NS.to_string(),
                    request_id,
                    compares: vec![Compare {
                        key: ns.clone(),
                        version: 0,
                    }],
                    ns_revision: None,
                    ops: vec![WriteOp::Put { key: ns, value }],
                    meta: ChangeMeta::default(),
                }
            }
            ClientRequest::MoveNamespace { ns, to } if checked.is_ok() => {
                match self.move_request(ns, to) {
                    Ok(r) => r,
                    Err(resp) => {
                        self.out.push(Action::Reply { req, resp: *resp });
                        return;
                    }
                }
            }
            other => other,
        };
        if let Err(code) = checked {
            self.stats.client_rejected += 1;
            self.out.push(Action::Reply {
                req,
                resp: ClientResponse::Error(code),
            });
            return;
        }
        match request {
            ClientRequest::Watch {
                ns,
                prefix,
                start_revision,
            } => self.watch(req, ns, prefix, start_revision),
            ClientRequest::CancelWatch { watch } => {
                let resp = if self.watchers.remove(&watch).is_some() {
                    ClientResponse::Done
                } else {
                    ClientResponse::Error(ErrorCode::UnknownWatch)
                };
                self.out.push(Action::Reply { req, resp });
            }
            ClientRequest::MetaGranted {
                principal,
                permission,
            } => {
                let g = self.meta.granted(&principal, &permission);
                self.out.push(Action::Reply {
                    req,
                    resp: ClientResponse::Granted(g),
                });
            }
            other => {
                if self.pending.len() >= self.cfg.pending_requests_max {
                    self.out.push(Action::Reply {
                        req,
                        resp: ClientResponse::Error(ErrorCode::Overloaded),
                    });
                    return;
                }
                let deadline = self.now + self.cfg.request_timeout_us;
                self.pending.insert(req, deadline);
                self.deadlines.insert((deadline, req));
                self.on_request(Origin::Local(req), other);
            }
        }
    }

    fn on_forward(&mut self, from: NodeId, boot: u64, id: RequestId, req: ClientRequest) {
        let origin = Origin::Remote(from, boot, id);
        if let Err(code) = self.validate(&req) {
            self.respond(origin, ClientResponse::Error(code));
            return;
        }
        match &req {
            ClientRequest::Write { ns, request_id, .. } => {
                let g = self.home_group(ns) as usize;
                if self.groups[g].role != Role::Leader {
                    // One hop only. "Unavailable" promises the write did not
                    // happen, so first look for it: a duplicate of this message
                    // may have been appended while this node led.
                    let resp = self.lookup_write(g, *request_id);
                    self.respond(origin, resp);
                    return;
                }
            }
            ClientRequest::Read { ns, .. } => {
                let g = self.home_group(ns) as usize;
                if self.groups[g].role != Role::Leader {
                    self.respond(origin, ClientResponse::Error(ErrorCode::Unavailable));
                    return;
                }
            }
            ClientRequest::TransferLeader { .. } => {}
            _ => {
                self.respond(origin, ClientResponse::Error(ErrorCode::InvalidRequest));
                return;
            }
        }
        self.on_request(origin, req);
    }

    /// What a non-leader can say about a write it is asked to perform: its result
    /// if it applied, "outcome unknown" if it sits uncommitted in the log, else
    /// "unavailable" (it never reached this node's log, so it did not commit here).
    fn lookup_write(&self, g: usize, request_id: u64) -> ClientResponse {
        if request_id != 0 {
            if let Some((revision, versions)) = self.sms[g].request_result(request_id) {
                let token = RevisionToken {
                    group: g as GroupId,
                    revision: *revision,
                };
                return ClientResponse::Written {
                    versions: versions.clone(),
                    token,
                };
            }
            let in_log = self.unapplied_any(
                g,
                |d| matches!(d, EntryData::Write(w) if w.request_id == request_id),
            );
            if in_log {
                return ClientResponse::Error(ErrorCode::Indeterminate);
            }
        }
        ClientResponse::Error(ErrorCode::Unavailable)
    }

    fn forward_or_fail(&mut self, g: usize, origin: Origin, req: ClientRequest) {
        match (origin, self.groups[g].leader) {
            (Origin::Local(id), None) if self.pending.contains_key(&id) => {
                // No leader known (an election or a hand-over under way):
                // wait for one rather than refuse. Nothing was sent, so even
                // a write is safe to send later.
                self.parked.insert(
                    id,
                    Parked {
                        group: g as GroupId,
                        refused_by: None,
                        req,
                    },
                );
            }
            (Origin::Local(id), Some(l)) if l != self.id => {
                let boot = self.boot;
                let msg = Msg::Forward { boot, id, req };
                self.send_ref(l, &msg);
                let Msg::Forward { req, .. } = msg else {
                    return;
                };
                let now = self.now;
                self.forwarded.insert(
                    id,
                    Forwarded {
                        group: g as GroupId,
                        to: l,
                        sent_us: now,
                        req,
                    },
                );
                let at = now + self.cfg.forward_probe_after_us;
                self.forward_check_us = Some(self.forward_check_us.map_or(at, |c| c.min(at)));
            }
            _ => self.respond(origin, ClientResponse::Error(ErrorCode::Unavailable)),
        }
    }

    fn on_request(&mut self, origin: Origin, req: ClientRequest) {
        match req {
            ClientRequest::Read {
                ns,
                query,
                consistency,
                token,
            } => {
                let (_, mode, _) = self.ns_index[&ns];
                let g = self.home_group(&ns);
                let gi = g as usize;
                // A replica of a namespace's new home that has not applied the
                // copy yet does not hold it: wait for it as for a token. (A
                // linearizable read goes to the leader, which has applied it.)
                let floor = self.ns_floor.get(&ns).copied().unwrap_or(0);
                let token = if consistency != Consistency::Linearizable
                    && self.sms[gi].revision() < floor
                {
                    let Origin::Local(_) = origin else {
                        self.respond(origin, ClientResponse::Error(ErrorCode::Unavailable));
                        return;
                    };
                    Some(RevisionToken {
                        group: g,
                        revision: token
                            .filter(|t| t.group == g)
                            .map_or(floor, |t| t.revision.max(floor)),
                    })
                } else {
                    token
                };
                if let (Some(t), Origin::Local(id)) = (token, origin) {
                    if t.group == g
                        && t.revision > self.sms[gi].revision()
                        && consistency != Consistency::Linearizable
                    {
                        let deadline_us = self.now + self.cfg.token_wait_max_us;
                        self.token_waits.push(TokenWait {
                            req: id,
                            group: g,
                            revision: t.revision,
                            deadline_us,
                            ns,
                            query,
                            consistency,
                        });
                        return;
                    }
                }
                self.read(
                    gi,
                    origin,
                    ns,
                    query,
                    consistency,
                    matches!(mode, ReplicationMode::Async { .. }),
                );
            }
            ClientRequest::Write {
                ns,
                request_id,
                compares,
                ns_revision,
                ops,
                meta,
            } => {
                let gi = self.home_group(&ns) as usize;
                let w = ProposedWrite {
                    ns,
                    request_id,
                    compares,
                    ns_revision,
                    ops,
                    meta,
                };
                if self.groups[gi].role == Role::Leader {
                    self.leader_write(gi, origin, w);
                } else {
                    self.forward_or_fail(gi, origin, w.into_request());
                }
            }
            ClientRequest::TransferLeader { group, to } => {
                let gi = group as usize;
                if self.groups[gi].role == Role::Leader {
                    if to != self.id {
                        self.start_transfer(gi, to);
                    }
                    self.respond(origin, ClientResponse::Done);
                } else {
                    self.forward_or_fail(gi, origin, ClientRequest::TransferLeader { group, to });
                }
            }
            ClientRequest::Meta(op) => {
                if !self.meta_ready {
                    self.respond(origin, ClientResponse::Error(ErrorCode::Unavailable));
                    return;
                }
                match self.meta.apply(&op) {
                    Ok(()) => {
                        let bytes = self.meta.take_unsaved();
                        self.persist(StorageOp::MetaChunk { bytes }, true);
                        self.defer(Deferred::Respond(origin, ClientResponse::Done));
                        self.meta_send_all(None);
                    }
                    Err(_) => {
                        self.stats.meta_errors += 1;
                        self.respond(origin, ClientResponse::Error(ErrorCode::InvalidRequest));
                    }
                }
            }
            ClientRequest::Watch { .. }
            | ClientRequest::CancelWatch { .. }
            | ClientRequest::CreateNamespace { .. }
            | ClientRequest::MoveNamespace { .. }
            | ClientRequest::MetaGranted { .. } => {
                self.respond(origin, ClientResponse::Error(ErrorCode::InvalidRequest));
            }
        }
    }

    fn read(
        &mut self,
        g: usize,
        origin: Origin,
        ns: String,
        query: ReadQuery,
        consistency: Consistency,
        is_async: bool,
    ) {
        if let Some(code) = self.ns_unservable(g, &ns, consistency) {
            self.respond(origin, ClientResponse::Error(code));
            return;
        }
        let local = || ReadWhat::Query {
            ns: ns.clone(),
            query: query.clone(),
            overlay: false,
        };
        match consistency {
            Consistency::Stale => {
                let resp = self.read_now(g, &local());
                self.respond(origin, resp);
            }
            Consistency::Bounded { staleness_us } => {
                let gr = &self.groups[g];
                let fresh = if gr.role == Role::Leader {
                    self.lease_valid(gr) && self.noop_committed(gr)
                } else {
                    gr.fresh_as_of_us.is_some_and(|f| {
                        self.cfg.true_upper_us(self.now.saturating_sub(f)) <= staleness_us
                    })
                };
                if fresh {
                    let resp = self.read_now(g, &local());
                    self.respond(origin, resp);
                } else {
                    self.read(g, origin, ns, query, Consistency::Linearizable, is_async);
                }
            }
            Consistency::Linearizable => {
                if self.groups[g].role == Role::Leader {
                    let what = ReadWhat::Query {
                        ns,
                        query,
                        overlay: is_async,
                    };
                    self.leader_read(g, origin, what, 0);
                } else {
                    let req = ClientRequest::Read {
                        ns,
                        query,
                        consistency,
                        token: None,
                    };
                    self.forward_or_fail(g, origin, req);
                }
            }
        }
    }

    /// Leader: serve at once under a valid lease, else after a quorum round.
    fn leader_read(&mut self, g: usize, origin: Origin, what: ReadWhat, min_index: u64) {
        let deadline_us = self.now + self.cfg.request_timeout_us;
        let lease = self.lease_valid(&self.groups[g]);
        let gr = &mut self.groups[g];
        let min_index = min_index.max(gr.commit);
        let round = if lease { 0 } else { gr.round + 1 };
        if !lease {
            gr.heartbeat_now = true;
        }
        gr.pending_reads.push(PendingRead {
            origin,
            min_index,
            round,
            deadline_us,
            what,
        });
        self.serve_reads(g);
    }

    fn overlay_version(&self, g: usize, ns: &str, key: &str) -> (u64, u64) {
        match self.groups[g]
            .overlay
            .get(&(ns.to_string(), key.to_string()))
        {
            Some((v, _, i)) => (*v, *i),
            None => (self.sms[g].get(ns, key).version, 0),
        }
    }

    fn leader_write(&mut self, g: usize, origin: Origin, w: ProposedWrite) {
        if self.groups[g].transfer.is_some() {
            // Handing leadership over: this write waits for the new leader
            // instead of failing (a forwarder re-routes the refusal below).
            if let Origin::Local(id) = origin {
                if self.pending.contains_key(&id) {
                    let req = w.into_request();
                    let parked = Parked {
                        group: g as GroupId,
                        refused_by: Some(self.id),
                        req,
                    };
                    self.parked.insert(id, parked);
                    return;
                }
            }
        }
        let ProposedWrite {
            ns,
            request_id,
            compares,
            ns_revision,
            ops,
            meta,
        } = w;
        let (_, mode, retention) = self.ns_index[&ns];
        // Idempotency first: a retried or duplicated write never applies twice,
        // and learns the first copy's fate, not a refusal claiming nothing happened.
        if request_id != 0 {
            if let Some((revision, versions)) = self.sms[g].request_result(request_id) {
                let resp = ClientResponse::Written {
                    versions: versions.clone(),
                    token: RevisionToken {
                        group: g as GroupId,
                        revision: *revision,
                    },
                };
                self.respond(origin, resp);
                return;
            }
            if let Some(index) = self.groups[g].pending_by_request.get(&request_id).copied() {
                if let Some(w) = self.groups[g].pending_writes.get_mut(&index) {
                    if !w.origins.contains(&origin) {
                        w.origins.push(origin);
                    }
                }
                return;
            }
        }
        let now = self.now;
        let gr = &self.groups[g];
        if gr.transfer.is_some() {
            self.respond(origin, ClientResponse::Error(ErrorCode::Unavailable));
            return;
        }
        let frozen = self.sms[g].frozen(&ns).is_some() || gr.overlay_frozen.contains(&ns);
        if (frozen && !self.cfg.mutants.write_after_freeze) || self.sms[g].adopting(&ns).is_some() {
            self.respond(origin, ClientResponse::Error(ErrorCode::NamespaceMoving));
            return;
        }
        // A new leader that has not applied the copy of a namespace that moved
        // here would compute versions without it (the overlay holds writes
        // only): refuse until its no-op, and with it the copy, applied.
        if self.sms[g].revision() < self.ns_floor.get(&ns).copied().unwrap_or(0) {
            self.respond(origin, ClientResponse::Error(ErrorCode::Unavailable));
            return;
        }
        if gr.log.last_index().saturating_sub(gr.commit) >= self.cfg.uncommitted_entries_max {
            self.respond(origin, ClientResponse::Error(ErrorCode::Overloaded));
            return;
        }
        if let ReplicationMode::Async { rpo_budget_us } = mode {
            if gr
                .async_acked
                .front()
                .is_some_and(|(_, t)| now.saturating_sub(*t) > rpo_budget_us)
            {
                self.respond(origin, ClientResponse::Error(ErrorCode::RpoBudgetExceeded));
                return;
            }
        }
        let mut conflict_index = None;
        for c in &compares {
            let (v, i) = self.overlay_version(g, &ns, &c.key);
            if v != c.version {
                conflict_index = Some(conflict_index.unwrap_or(0).max(i));
            }
        }
        if let Some(want) = ns_revision {
            let (have, i) = match self.groups[g].overlay_ns.get(&ns) {
                Some(&(rev, index)) => (rev, index),
                None => (self.sms[g].ns_revision(&ns), 0),
            };
            if have != want {
                conflict_index = Some(conflict_index.unwrap_or(0).max(i));
            }
        }
        if let Some(min_index) = conflict_index {
            // A failed compare is a read: answer only once what it saw is committed.
            self.leader_read(g, origin, ReadWhat::Conflict, min_index);
            return;
        }
        let mut keys: Vec<KeyEffect> = ops
            .into_iter()
            .map(|op| {
                let (v, _) = self.overlay_version(g, &ns, op.key());
                match op {
                    WriteOp::Put { key, value } => KeyEffect {
                        key,
                        value: Some(value),
                        version: v + 1,
                    },
                    WriteOp::Delete { key } => KeyEffect {
                        key,
                        value: None,
                        version: v + 1,
                    },
                }
            })
            .collect();
        let versions: Vec<u64> = keys.iter().map(|k| k.version).collect();
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        let gr = &mut self.groups[g];
        gr.overlay_revision += 1;
        let revision = gr.overlay_revision;
        let index = gr.log.last_index() + 1;
        gr.overlay_ns.insert(ns.clone(), (revision, index));
        gr.overlay_time_ms = gr.overlay_time_ms.max(meta.time_ms);
        let meta = ChangeMeta {
            time_ms: gr.overlay_time_ms,
            ..meta
        };
        for k in &keys {
            gr.overlay.insert(
                (ns.clone(), k.key.clone()),
                (k.version, k.value.clone(), index),
            );
        }
        let effect = WriteEffect {
            ns,
            revision,
            request_id,
            keys,
            reply_versions: versions.clone(),
            meta,
            retention,
        };
        let appended = self.append_local(g, EntryData::Write(effect));
        debug_assert_eq!(appended, index);
        let ack_on_durable =
            matches!(mode, ReplicationMode::Async { .. }) || self.cfg.mutants.ack_before_quorum;
        let resp = ClientResponse::Written {
            versions,
            token: RevisionToken {
                group: g as GroupId,
                revision,
            },
        };
        self.groups[g].pending_writes.insert(
            index,
            PendingWrite {
                origins: vec![origin],
                request_id,
                resp,
                ack_on_durable,
            },
        );
        if request_id != 0 {
            self.groups[g].pending_by_request.insert(request_id, index);
        }
        self.replicate_new(g, index);
    }

    /// Leader: append an entry and send it to the peers that are caught up.
    fn propose(&mut self, g: usize, data: EntryData) {
        let index = self.append_local(g, data);
        self.replicate_new(g, index);
    }

    /// Whether an entry in group `g`'s log beyond what it applied matches.
    fn unapplied_any(&self, g: usize, pred: impl Fn(&EntryData) -> bool) -> bool {
        let gr = &self.groups[g];
        gr.log.iter_from(gr.applied + 1).any(|e| pred(&e.data))
    }

    /// Leader: send the entry just appended at `index` to every peer that is
    /// caught up to it (the others get it with their next append).
    fn replicate_new(&mut self, g: usize, index: u64) {
        for p in 0..self.cfg.regions {
            let peer = &self.groups[g].peers[p as usize];
            if p != self.id && peer.sent_index + 1 == index && peer.snap_progress.is_none() {
                self.send_append(g, p, index);
            }
        }
    }

    fn check_token_waits(&mut self, g: GroupId) {
        let rev = self.sms[g as usize].revision();
        if !self
            .token_waits
            .iter()
            .any(|w| w.group == g && w.revision <= rev)
        {
            return;
        }
        let (ready, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.token_waits)
            .into_iter()
            .partition(|w| w.group == g && w.revision <= rev);
        self.token_waits = keep;
        for w in ready {
            let is_async = matches!(self.ns_index[&w.ns].1, ReplicationMode::Async { .. });
            self.read(
                g as usize,
                Origin::Local(w.req),
                w.ns,
                w.query,
                w.consistency,
                is_async,
            );
        }
    }

    // ----- watches -----

    fn watch(&mut self, req: RequestId, ns: String, prefix: String, start: Option<u64>) {
        if self.watchers.len() >= self.cfg.watchers_max {
            self.out.push(Action::Reply {
                req,
                resp: ClientResponse::Error(ErrorCode::Overloaded),
            });
            return;
        }
        let g = self.home_group(&ns);
        let floor = self.ns_floor.get(&ns).copied().unwrap_or(0);
        let refuse = if self.sms[g as usize].revision() < floor {
            Some(ErrorCode::Unavailable)
        } else {
            self.ns_unservable(g as usize, &ns, Consistency::Stale)
        };
        if let Some(code) = refuse {
            self.out.push(Action::Reply {
                req,
                resp: ClientResponse::Error(code),
            });
            return;
        }
        let sm = &self.sms[g as usize];
        // A frozen namespace's revisions stop at its freeze (see `read_now`);
        // the watcher moves to the new home once the move completes here.
        let rev = match sm.frozen(&ns) {
            Some((_, at)) => {
                self.watchers_misplaced = true;
                at.min(sm.revision())
            }
            None => sm.revision(),
        };
        let start = start.unwrap_or(rev);
        let last_revision = match sm.changes_since(&ns, &prefix, start) {
            Some(changes) => {
                for (revision, events) in group_by_revision(changes) {
                    self.out.push(Action::Reply {
                        req,
                        resp: ClientResponse::WatchEvents { events, revision },
                    });
                }
                rev.max(start)
            }
            None => {
                let snapshot = sm.scan(&ns, &prefix);
                self.out.push(Action::Reply {
                    req,
                    resp: ClientResponse::WatchResync {
                        snapshot,
                        revision: rev,
                    },
                });
                rev
            }
        };
        // An empty batch confirms the watch is live at `last_revision`.
        self.out.push(Action::Reply {
            req,
            resp: ClientResponse::WatchEvents {
                events: Vec::new(),
                revision: last_revision,
            },
        });
        self.watchers.insert(
            req,
            Watcher {
                ns,
                prefix,
                group: g,
                last_revision,
            },
        );
    }

    fn notify_watchers(&mut self, g: GroupId, changes: &[Change], revision: u64) {
        for (id, w) in self.watchers.iter_mut() {
            if w.group != g || revision <= w.last_revision {
                continue;
            }
            w.last_revision = revision;
            let events: Vec<KeyValue> = changes
                .iter()
                .filter(|c| c.ns == w.ns && c.kv.key.starts_with(&w.prefix))
                .map(|c| c.kv.clone())
                .collect();
            if !events.is_empty() {
                self.out.push(Action::Reply {
                    req: *id,
                    resp: ClientResponse::WatchEvents { events, revision },
                });
            }
        }
    }
}

fn group_by_revision(changes: Vec<Change>) -> Vec<(u64, Vec<KeyValue>)> {
    let mut out: Vec<(u64, Vec<KeyValue>)> = Vec::new();
    for c in changes {
        match out.last_mut() {
            Some((r, evs)) if *r == c.revision => evs.push(c.kv),
            _ => out.push((c.revision, vec![c.kv])),
        }
    }
    out
}
