//! The core's public vocabulary: ids, client requests and responses, stable
//! error codes, revision tokens and observations.

use serde::{Deserialize, Serialize};

use crate::audit::{AuditCtx, AuditEvent, AuditFilter, AuditPage};

/// A region's node. Region `i` runs node `i`.
pub type NodeId = u8;
/// A home group; group `g` is homed in region `g`.
pub type GroupId = u8;
/// Identifies one client request at the node it arrived at (chosen by the shell).
pub type RequestId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicationMode {
    /// Acknowledged once a majority of regions persisted the entry (RPO 0).
    Quorum,
    /// Acknowledged once the leader persisted it; writes are refused while the
    /// oldest acknowledged-but-unreplicated entry is older than the budget.
    Async { rpo_budget_us: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// At the leaseholder (or after a quorum check).
    Linearizable,
    /// Local if the local state is provably no staler than this; otherwise at the leader.
    Bounded { staleness_us: u64 },
    /// Local state, whatever it is.
    Stale,
}

/// Returned with every response; passing it back gives read-your-writes in any region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RevisionToken {
    pub group: GroupId,
    pub revision: u64,
}

impl std::fmt::Display for RevisionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.group, self.revision)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
}

impl WriteOp {
    pub fn key(&self) -> &str {
        match self {
            WriteOp::Put { key, .. } | WriteOp::Delete { key } => key,
        }
    }
}

/// The fingerprint of a KV write (`ClientRequest::Write::fingerprint`): a
/// hash of its namespace, compares and operations, each length-prefixed so
/// that different requests cannot run together into the same bytes.
pub fn write_fingerprint(ns: &str, compares: &[Compare], ops: &[WriteOp]) -> u64 {
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    let mut b = Vec::new();
    field(&mut b, ns.as_bytes());
    b.extend_from_slice(&(compares.len() as u64).to_le_bytes());
    for c in compares {
        field(&mut b, c.key.as_bytes());
        b.extend_from_slice(&c.version.to_le_bytes());
    }
    for op in ops {
        match op {
            WriteOp::Put { key, value } => {
                b.push(1);
                field(&mut b, key.as_bytes());
                field(&mut b, value);
            }
            WriteOp::Delete { key } => {
                b.push(2);
                field(&mut b, key.as_bytes());
            }
        }
    }
    crate::rng::fnv1a(&b)
}

/// Who made a change, why, and when (wall-clock milliseconds since the Unix
/// epoch, stamped by the shell that received the write; the leader makes a
/// group's times non-decreasing). Kept with every version of every key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeMeta {
    pub author: String,
    pub message: String,
    pub time_ms: u64,
}

/// A namespace's entry in the catalog: where it lives and how it replicates.
/// Created at run time (`ClientRequest::CreateNamespace`); stored postcard-encoded
/// under its name in the `__catalog` namespace of group 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsSettings {
    pub home: GroupId,
    pub mode: ReplicationMode,
    /// Versions kept per key, the current one included (0: the cluster default).
    pub history_versions_max: u32,
    /// Older versions than this (by their change time) are dropped when the key
    /// next changes (0: kept until the count limit drops them).
    pub history_age_ms_max: u64,
    /// A move of the namespace's home to this group is under way (see
    /// `ClientRequest::MoveNamespace`); `home` still holds the data until the
    /// move completes.
    pub moving_to: Option<GroupId>,
    /// The revision of `home` at which its copy of the namespace became
    /// complete (0: created there). A replica of `home` that has not applied
    /// this far does not hold the namespace yet, so it must not serve it.
    pub adopt_revision: u64,
}

impl NsSettings {
    pub fn encode(&self) -> Result<Vec<u8>, crate::wire::EncodeError> {
        crate::wire::encode("namespace settings", self)
    }

    pub fn decode(bytes: &[u8]) -> Option<NsSettings> {
        postcard::from_bytes(bytes).ok()
    }
}

/// The point in a namespace's history that a scan reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AsOf {
    #[default]
    Latest,
    /// The state right after this group revision applied.
    Revision(u64),
    /// The newest versions changed at or before this wall-clock time.
    TimeMs(u64),
}

/// A condition of a write: the key's version must equal `version` (0: never written).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: String,
    pub version: u64,
}

/// Metadata edits (replicated through the automerge document).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaOp {
    SetLabel {
        key: String,
        value: String,
    },
    Grant {
        principal: String,
        permission: String,
    },
    Revoke {
        principal: String,
        permission: String,
    },
    /// Set a record (`key` under one of `meta::RECORD_PREFIXES`): an auth
    /// role, a token, a token's revocation, a namespace's description. The
    /// shell gives records their meaning; the core replicates them.
    /// Concurrent sets of one key: automerge's deterministic winner.
    PutRecord {
        key: String,
        value: String,
    },
    /// Remove a record. Revocation records (`token-revoked/`) cannot be removed.
    RemoveRecord {
        key: String,
    },
}

/// What a read asks for. All three share one consistency path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadQuery {
    Get {
        key: String,
    },
    /// Live keys under `prefix` in key order, after `start_after` (exclusive,
    /// "" from the start), at most `limit` of them.
    List {
        prefix: String,
        start_after: String,
        limit: u32,
    },
    /// Retained versions of one key, oldest first, the current one last.
    History {
        key: String,
    },
    /// Every live key under `prefix` (at most `Config::scan_keys_max`) as of a
    /// point in history, with the namespace's revision at that point.
    Scan {
        prefix: String,
        as_of: AsOf,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Get, List or History, at the consistency asked for; with a token,
    /// first wait (bounded) until it has applied here.
    Read {
        ns: String,
        query: ReadQuery,
        consistency: Consistency,
        token: Option<RevisionToken>,
    },
    /// Put, delete, compare-and-set and transactions: all compares must hold, then
    /// all ops apply atomically at one revision. `request_id` is the caller's
    /// unique id for the write (carried in the log for tracing and idempotency).
    Write {
        ns: String,
        request_id: u64,
        /// A hash of what the caller asked for (`fingerprint` for KV
        /// writes; the config engine hashes its own operations). A
        /// non-zero `request_id` seen before with a different fingerprint
        /// was reused for another write: `IdempotencyKeyReused`.
        fingerprint: u64,
        compares: Vec<Compare>,
        /// If set, the namespace's last-change revision must equal it: a
        /// read-validate-write cycle over a whole namespace commits only if
        /// nothing in the namespace changed since the read.
        ns_revision: Option<u64>,
        ops: Vec<WriteOp>,
        meta: ChangeMeta,
        /// Who asked and from where: becomes the write's audit record, in
        /// the same log entry as the write. (Boxed: it would double the
        /// size of every request in the driver's queues.)
        audit: Box<AuditCtx>,
    },
    /// Append audit records of events other than writes (refusals, auth
    /// changes, moves) to `group`'s chain, through its log. `Done` once
    /// committed. At most `audit::AUDIT_BATCH_MAX` events.
    Audit {
        group: GroupId,
        events: Vec<AuditEvent>,
    },
    /// Replace the stored bytes of existing versions in place, through the
    /// home group's log: no new version, revision or watch event. Each item
    /// applies only if the version still holds bytes hashing (FNV-1a) to
    /// `expect`, so a stale or repeated request changes nothing. The shells
    /// use it to re-wrap secrets under a new key-encryption key. `Done` once
    /// committed. At most `REPLACE_ITEMS_MAX` items.
    ReplaceValues {
        ns: String,
        items: Vec<ValuePatch>,
    },
    /// A page of `group`'s audit records as this region's replica holds
    /// them (records are immutable once applied, so any replica answers).
    AuditQuery {
        group: GroupId,
        filter: AuditFilter,
        after_seq: u64,
        limit: u32,
    },
    /// Add a namespace to the catalog (through group 0's log). `Conflict`: it exists.
    CreateNamespace {
        ns: String,
        settings: NsSettings,
        request_id: u64,
        /// Wall-clock time of the request (ms since the Unix epoch), as the
        /// shell stamps a write's: the catalog entry's change time.
        time_ms: u64,
    },
    /// Move a catalog namespace's home to group `to`, online: the old home
    /// freezes it (its writes answer `NamespaceMoving`), the new home copies it
    /// through its own log, then the catalog points at the new home and the old
    /// copy is dropped. The reply (`Written`) means the move was started.
    MoveNamespace {
        ns: String,
        to: GroupId,
    },
    /// Changes under `prefix` with a revision above `start_revision` (None: from now).
    Watch {
        ns: String,
        prefix: String,
        start_revision: Option<u64>,
    },
    CancelWatch {
        watch: RequestId,
    },
    Meta(MetaOp),
    MetaGranted {
        principal: String,
        permission: String,
    },
    TransferLeader {
        group: GroupId,
        to: NodeId,
    },
}

/// Items one `ClientRequest::ReplaceValues` carries at most.
pub const REPLACE_ITEMS_MAX: usize = 256;

/// One stored version's new bytes (`ClientRequest::ReplaceValues`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValuePatch {
    pub key: String,
    pub version: u64,
    /// FNV-1a of the bytes the version must hold for the patch to apply.
    pub expect: u64,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

impl ClientRequest {
    /// The namespace a read, write or watch is about (what its errors name).
    pub fn namespace(&self) -> Option<&str> {
        match self {
            ClientRequest::Read { ns, .. }
            | ClientRequest::Write { ns, .. }
            | ClientRequest::ReplaceValues { ns, .. }
            | ClientRequest::Watch { ns, .. } => Some(ns),
            _ => None,
        }
    }
}

/// Stable error codes; their names are part of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ErrorCode {
    #[error("no leader is known for the group, retry later")]
    Unavailable,
    #[error("the request timed out; a write's outcome is unknown")]
    Timeout,
    #[error("leadership changed before the write committed; its outcome is unknown")]
    Indeterminate,
    #[error("unknown namespace")]
    UnknownNamespace,
    #[error("key too long")]
    KeyTooLong,
    #[error("value too large")]
    ValueTooLarge,
    #[error("too many operations in one transaction")]
    TooManyOps,
    #[error("invalid request")]
    InvalidRequest,
    #[error("async replication is behind its RPO budget; write refused")]
    RpoBudgetExceeded,
    #[error("too many requests in flight")]
    Overloaded,
    #[error("the revision token did not apply locally in time")]
    TokenWaitTimeout,
    #[error("the node stopped after a storage failure")]
    Halted,
    #[error("unknown watch")]
    UnknownWatch,
    #[error("the scan matches more keys than one response may hold")]
    ScanTooLarge,
    #[error("history retention dropped the versions asked for")]
    HistoryCompacted,
    #[error("the namespace is moving to another home region; retry shortly")]
    NamespaceMoving,
    #[error("internal error: the node could not encode its own data")]
    Internal,
    #[error("the revision asked for is above the newest revision applied in this region (a future revision, or a region behind: read at the leader or with a token)")]
    FutureRevision,
    #[error("the request id (idempotency key) was used before for a different write; nothing was written")]
    IdempotencyKeyReused,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    /// Per-key version: number of mutations of this key, 0 if never written.
    pub version: u64,
    pub mod_revision: u64,
    pub meta: ChangeMeta,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    Value {
        kv: KeyValue,
        token: RevisionToken,
    },
    /// A page of a listing; `more`: further keys match after the last one.
    List {
        kvs: Vec<KeyValue>,
        more: bool,
        token: RevisionToken,
    },
    History {
        versions: Vec<KeyValue>,
        token: RevisionToken,
    },
    /// A scan: the live keys and the namespace's last-change revision as of the
    /// point asked for.
    Scan {
        kvs: Vec<KeyValue>,
        ns_revision: u64,
        token: RevisionToken,
    },
    /// The write applied; resulting version of each op's key, in op order
    /// (a delete of an absent key keeps its version).
    Written {
        versions: Vec<u64>,
        token: RevisionToken,
        /// How many live keys it deleted.
        deleted: u32,
    },
    /// Nothing to write: every op deleted a key that does not exist. No
    /// revision, no history; `versions` are the keys' current versions and
    /// `token` a revision at which they held.
    Unchanged {
        versions: Vec<u64>,
        token: RevisionToken,
    },
    /// A compare failed; nothing was written.
    Conflict {
        token: RevisionToken,
    },
    /// Watch: changes in revision order (one revision may hold several keys).
    WatchEvents {
        events: Vec<KeyValue>,
        revision: u64,
    },
    /// Watch: the requested history was compacted; here is the state at `revision`,
    /// deltas follow from `revision + 1`.
    WatchResync {
        snapshot: Vec<KeyValue>,
        revision: u64,
    },
    Granted(bool),
    /// A page of a group's audit records (`ClientRequest::AuditQuery`).
    AuditPage(Box<AuditPage>),
    Done,
    Error(ErrorCode),
}

/// What the core tells its shell and the simulator about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    BecameLeader {
        group: GroupId,
        term: u64,
    },
    /// An entry applied to the state machine of `group` at `revision`.
    Applied {
        group: GroupId,
        revision: u64,
        request_id: u64,
        digest: u64,
        ns: String,
        /// (key, version, value present) for every key the entry wrote.
        keys: Vec<(String, u64, bool)>,
    },
    /// The copy of a moving namespace into `group` completed here at `revision`.
    NamespaceMoved {
        ns: String,
        group: GroupId,
        revision: u64,
    },
    /// A follower received heartbeat round `round` of `leader`'s `term` for the
    /// first time: it promises not to help elect anyone else for one election
    /// timeout of its clock from now.
    Promised {
        group: GroupId,
        leader: NodeId,
        term: u64,
        round: u64,
    },
    /// This leader began handing `group` over to `to` (an operator's request
    /// or lease preference).
    TransferStarted {
        group: GroupId,
        to: NodeId,
    },
    /// A hand-over of `group` to `to` reached its deadline without `to`
    /// taking over: this node leads on. `timeout_now_sent` says whether `to`
    /// was caught up enough to be told to campaign; `behind` is how many
    /// entries it lacked at the deadline.
    TransferAbandoned {
        group: GroupId,
        to: NodeId,
        timeout_now_sent: bool,
        behind: u64,
    },
    /// A write arrived with a request id seen before and was answered with
    /// the first copy's fate: from the idempotency table (`from_table`), or
    /// by joining the copy still waiting to commit.
    WriteReplayed {
        group: GroupId,
        request_id: u64,
        from_table: bool,
    },
    /// This follower installed a snapshot of `group` at `index` sent by
    /// `from` (its log had fallen behind the leader's compaction).
    SnapshotInstalled {
        group: GroupId,
        index: u64,
        from: NodeId,
    },
    /// Storage failed: the node stopped and will not acknowledge anything.
    Halted,
    /// The metadata document changed (a local edit, or a merge from a peer):
    /// `Node::meta_view` has the new records and grants.
    MetaChanged,
}
