//! One region's node: every home group's protocol state (Raft with PreVote,
//! check-quorum, leases, leadership transfer, lease preference, snapshots), the
//! group state machines, client request routing, watches and the metadata
//! document. Sans-IO: `handle_*` inputs with `now` (the node's monotonic clock,
//! microseconds), `drain_actions` outputs. Effects that must follow durability
//! (vote replies, append acks, acknowledgements) are deferred until storage
//! reports the persist batch complete; storage completes batches in order.
//!
//! This file holds the node's state types and its inputs (`handle_*`).
//! `init` builds a node from storage; `effects` is the step plumbing
//! (persist, defer, send, respond, the timer to set). Each concern's methods
//! are in their own file: `election` (votes, leadership, transfer, promises),
//! `replication` (appends, heartbeats, snapshots, compaction), `commit`
//! (leases, commit index, applying), `reads` (consistency levels, token
//! waits), `requests` (validation, dispatch, write evaluation), `forward`
//! (routing to leaders, parking, the forward watchdog), `messages` (peer
//! message dispatch, metadata sync), `moves` (catalog, namespace moves),
//! `watches`, `timers` (the tick) and `introspect` (read-only views).

mod commit;
mod effects;
mod election;
mod forward;
mod init;
mod introspect;
mod messages;
mod moves;
mod reads;
mod replication;
mod requests;
mod timers;
mod watches;

#[cfg(test)]
mod election_test;
#[cfg(test)]
mod forward_test;
#[cfg(test)]
mod replication_test;
#[cfg(test)]
mod test_support;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::audit::{AuditCtx, AuditEvent};
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
    /// How far behind this replica may be, in true time at most: 0 for a
    /// leader holding its lease with its no-op committed; for a follower,
    /// the time since it last knew it had applied everything committed (as
    /// bounded reads judge it). None: it never knew (just started, no
    /// leader heard, or a leader without a lease).
    pub staleness_us: Option<u64>,
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
    /// Log compactions put off while a snapshot was on its way to a follower.
    pub compactions_deferred: u64,
    /// Compactions held back for a live follower behind the applied index.
    pub compactions_held: u64,
    /// Snapshots received from a leader and installed.
    pub snapshots_installed: u64,
    /// Snapshot chunks a leader sent (resends included).
    pub snapshot_chunks_sent: u64,
    /// Appends that carried part of what the follower lacks (the limits on
    /// entries or bytes per message cut them short).
    pub partial_appends: u64,
}

/// A node's role in one group. Leading carries the state that exists only
/// while leading: `become_leader` creates it, and every way out of
/// leadership (`become_follower`) drops it, so nothing leader-only
/// outlives a term or is reset by hand.
enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader(Box<LeaderState>),
}

impl std::fmt::Debug for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Follower => "Follower",
            Role::PreCandidate => "PreCandidate",
            Role::Candidate => "Candidate",
            Role::Leader(_) => "Leader",
        })
    }
}

impl Role {
    fn is_leader(&self) -> bool {
        matches!(self, Role::Leader(_))
    }

    fn leading(&self) -> Option<&LeaderState> {
        match self {
            Role::Leader(ls) => Some(ls),
            _ => None,
        }
    }

    fn leading_mut(&mut self) -> Option<&mut LeaderState> {
        match self {
            Role::Leader(ls) => Some(ls),
            _ => None,
        }
    }
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
    /// Where the next (re)send starts: `match_index + 1` once the peer has
    /// matched, and until then the probe point, which starts just past the
    /// log the leader was elected with and backs off on each refusal.
    /// Sending from `match_index + 1` while probing would re-ship a whole
    /// log the follower already holds, `append_entries_max` entries per
    /// round trip: with small appends a new leader's followers fell further
    /// behind than clients write (seen for 15 s in swarm seed 152).
    next_index: u64,
    /// Highest index sent (pipelining).
    sent_index: u64,
    acked_round: u64,
    last_heard_us: u64,
    last_echo_us: u64,
    /// Snapshot being sent, if any.
    snap_progress: Option<SnapSend>,
}

/// A snapshot on its way to one follower: a window of chunks in flight,
/// like appends, so a transfer does not pay a round trip per chunk.
#[derive(Clone, Copy, Debug)]
struct SnapSend {
    /// The snapshot's index (a newer snapshot restarts the transfer).
    index: u64,
    /// Bytes the follower has said it holds.
    acked: u64,
    /// Bytes sent (`acked..sent` in flight).
    sent: u64,
    /// When `acked` last moved (or the transfer started or restarted from
    /// `acked`): chunks unanswered for a heartbeat interval are resent.
    progress_us: u64,
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
    /// A write that changed nothing (deletes of absent keys): its versions.
    Unchanged {
        versions: Vec<u64>,
    },
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
    /// A retry joins only with the same fingerprint (see `ClientRequest::Write`).
    fingerprint: u64,
    resp: ClientResponse,
    ack_on_durable: bool,
    /// Answered before it applied (async namespaces answer once it is
    /// durable here). It stays until it applies, so that a retry arriving
    /// in between learns the answer instead of writing a second copy.
    acked: bool,
}

#[derive(Clone, Debug)]
struct Transfer {
    to: NodeId,
    deadline_us: u64,
    timeout_now_sent: bool,
}

/// One group's replica on this node: its persistent Raft state, its log,
/// what it follows or is electing, and (inside `role`) what it has while
/// leading. More than 15 fields because a follower's and a candidate's
/// state (promises, snapshot being received, vote requests) are small and
/// live beside the persistent state rather than in a role of their own.
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
    /// Heartbeat rounds this node started, across all its terms: a new
    /// leader's lease counts only rounds after its election, so the counter
    /// never restarts while the node lives.
    round: u64,
    /// Leaders: the next heartbeat round. Candidates: the next resend of
    /// their vote requests.
    next_heartbeat_us: u64,
    /// Latest (leader, term, round) this follower promised on.
    promised: (NodeId, u64, u64),
    /// The current candidacy was started by a leadership transfer.
    campaign_transfer: bool,
    /// Async writes acknowledged before they committed, oldest first: the
    /// RPO budget runs from the first. Kept across this node's terms: a
    /// leader that lost its term with an unreplicated tail and won the
    /// next (its log is the longest) must not start the budget anew
    /// (swarm seed 1037 lost 3.5 s of acknowledged writes against 2 s).
    async_acked: VecDeque<AsyncAck>,
}

/// An async write's entry acknowledged before it committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AsyncAck {
    index: u64,
    term: u64,
    /// When it was acknowledged (local clock); None: by another leader or
    /// an earlier life of this node, at a time unknown here, so as old as
    /// the budget allows (the budget binds until it commits).
    at_us: Option<u64>,
}

impl Group {
    /// The invariants of a group's replica between steps (checked at the end
    /// of every step in debug builds, so every test and simulated seed run
    /// under `cargo test` asserts them).
    fn check_invariants(&self, me: NodeId) {
        let last = self.log.last_index();
        assert!(
            self.applied <= self.commit,
            "applied {} > commit {}",
            self.applied,
            self.commit
        );
        assert!(
            self.commit <= last,
            "commit {} beyond the log's last index {last}",
            self.commit
        );
        if let Some(ls) = self.role.leading() {
            assert_eq!(self.leader, Some(me), "a leader knows itself as leader");
            assert_eq!(self.vote, Some(me), "a leader voted for itself in its term");
            assert!(
                ls.transfer.is_none() || ls.lease_expiry_us == 0,
                "no lease while handing leadership over"
            );
            for (p, peer) in ls.peers.iter().enumerate() {
                assert!(
                    peer.match_index <= last,
                    "peer {p} matched {} > last {last}",
                    peer.match_index
                );
                assert!(
                    peer.match_index < peer.next_index && peer.next_index <= last + 1,
                    "peer {p}: next {} outside (match {}, last {last} + 1]",
                    peer.next_index,
                    peer.match_index
                );
            }
            if let Some((&i, _)) = ls.pending_writes.first_key_value() {
                assert!(
                    i > self.applied,
                    "pending write at {i} already applied ({})",
                    self.applied
                );
            }
            assert!(ls.noop_index > 0, "a leader's no-op is in its log");
        }
    }
}

/// What a leader has and nobody else: replication progress per peer, the
/// lease, a transfer under way, the writes and reads waiting on commit, and
/// the overlay of proposed effects. Its fields are the leader's concerns
/// taken together, which is why there are more than 15 of them.
struct LeaderState {
    peers: Vec<Peer>,
    /// Rounds started lately: (round, local time sent), at most 64.
    rounds: VecDeque<(u64, u64)>,
    /// The lease counts only rounds from here on (raised by a failed transfer).
    lease_min_round: u64,
    lease_expiry_us: u64,
    /// The round the current lease is counted from.
    lease_round: u64,
    /// When the leader's periodic duties next run (`leader_duties`).
    next_duties_us: u64,
    /// This term's no-op: reads wait until it commits.
    noop_index: u64,
    transfer: Option<Transfer>,
    home_healthy_since_us: Option<u64>,
    pending_reads: Vec<PendingRead>,
    pending_writes: BTreeMap<u64, PendingWrite>,
    /// request id -> log index of a pending write.
    pending_by_request: BTreeMap<u64, u64>,
    overlay: Overlay,
    /// Start a heartbeat round before this step ends.
    heartbeat_now: bool,
}

/// A leader's view of what it proposed but has not applied: writes are
/// evaluated against it (versions, compares, revisions), and async
/// namespaces read from it.
struct Overlay {
    /// (ns, key) -> its proposed state.
    keys: BTreeMap<(String, String), Pending>,
    /// The group's revision counting proposed writes.
    revision: u64,
    /// Proposed, not applied, last-change revision per namespace: ns -> (revision, index).
    ns: BTreeMap<String, (u64, u64)>,
    /// Change time of the newest proposed write (a group's times never go back).
    time_ms: u64,
    /// Namespaces whose freeze is proposed, not yet applied: no write to them
    /// may be proposed after it.
    frozen: BTreeSet<String>,
}

/// A proposed, not yet applied, value of a key: (version, value, log index).
type Pending = (u64, Option<Vec<u8>>, u64);

/// A write on its way to its group's leader.
struct ProposedWrite {
    ns: String,
    request_id: u64,
    fingerprint: u64,
    compares: Vec<Compare>,
    ns_revision: Option<u64>,
    ops: Vec<WriteOp>,
    meta: ChangeMeta,
    audit: Box<AuditCtx>,
}

impl ProposedWrite {
    fn into_request(self) -> ClientRequest {
        ClientRequest::Write {
            ns: self.ns,
            request_id: self.request_id,
            fingerprint: self.fingerprint,
            compares: self.compares,
            ns_revision: self.ns_revision,
            ops: self.ops,
            meta: self.meta,
            audit: self.audit,
        }
    }
}

impl Node {
    /// The audit context of a write the core makes itself (the catalog's
    /// part of a namespace creation or move).
    fn internal_audit(&self, action: &str) -> Box<AuditCtx> {
        Box::new(AuditCtx {
            region: self.id,
            principal: "meridian".to_string(),
            method: "internal".to_string(),
            action: action.to_string(),
            ..AuditCtx::default()
        })
    }
}

/// What the node knows of a namespace: its home group, replication mode and
/// history retention.
#[derive(Clone, Copy, Debug)]
struct NsEntry {
    home: GroupId,
    mode: ReplicationMode,
    retention: Retention,
}

/// A namespace on its way from one home group to another.
#[derive(Clone, Copy, Debug)]
struct Move {
    from: GroupId,
    to: GroupId,
    /// The old home's tenure: the revision its copy became the home at (0:
    /// created there).
    tenure: u64,
}

/// The namespace catalog: namespace name -> `NsSettings`, in group 0. Clients
/// may read it; only `CreateNamespace` writes it.
pub const CATALOG_NS: &str = "__catalog";
/// Namespaces whose names start with this are reserved for the system.
pub const RESERVED_NS_PREFIX: &str = "__";
/// Namespaces the region nodes write for themselves (feature flags'
/// impressions): created like any namespace, written by no client (the
/// shells refuse client writes to them), and their writes leave no audit
/// record, since they are the nodes' own bookkeeping (counters flushed every
/// few seconds) and would crowd people's changes out of the retained chain.
/// No configured or configuration namespace can have such a name: those
/// start with a letter or digit.
pub const SYSTEM_NS_PREFIX: &str = "_system/";

/// Whether `ns` is one of the nodes' own namespaces (`SYSTEM_NS_PREFIX`).
pub fn is_system_ns(ns: &str) -> bool {
    ns.starts_with(SYSTEM_NS_PREFIX)
}
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
/// Heartbeat rounds a leader remembers with their send times: a lease is
/// counted from the send time of a round a majority acknowledged, and an
/// acknowledgement arrives within a few rounds, far fewer than this.
const ROUNDS_KEPT_MAX: usize = 64;

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

/// One region's node. Its fields are the node-wide concerns side by side
/// (groups and their state machines, the namespace catalog and moves,
/// requests in flight, forwards, watches, token waits, metadata sync, the
/// step's outputs): each concern's methods are in its own file, but they
/// share one `&mut self` because one step may touch several (a commit
/// answers clients, wakes watches and token waits), hence many fields.
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
    /// Catalog namespaces being moved.
    moves: BTreeMap<String, Move>,
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
    /// Take the actions produced so far.
    pub fn drain_actions(&mut self, into: &mut Vec<Action>) {
        into.append(&mut self.out);
    }

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
}
