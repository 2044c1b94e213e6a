//! What a run records for the checkers: every client operation with invocation
//! and completion in true (simulator) time, what each node applied (the oracle),
//! lease intervals, leader elections, watch deliveries and fault episodes.

use std::collections::BTreeMap;

use meridian_core::{
    ClientResponse, Compare, Consistency, ErrorCode, GroupId, KeyValue, NodeId, WriteOp,
};

#[derive(Clone, Debug)]
pub enum OpKind {
    Get {
        key: String,
        consistency: Consistency,
    },
    Write {
        request_id: u64,
        compares: Vec<Compare>,
        ops: Vec<WriteOp>,
    },
    Meta,
    /// A permission check (`ClientRequest::MetaGranted`), as a region's shell
    /// makes one for every request.
    MetaCheck {
        principal: String,
        permission: String,
    },
}

/// A permission check a node answered, with the grant and revocation keys
/// that node held as it answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermCheck {
    pub node: NodeId,
    pub at_us: u64,
    pub principal: String,
    pub permission: String,
    pub answer: bool,
    pub keys: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Pending,
    Done(ClientResponse),
    /// The node the client talked to crashed before answering.
    Lost,
}

#[derive(Clone, Debug)]
pub struct OpRecord {
    pub client: usize,
    pub region: NodeId,
    pub ns: String,
    pub group: GroupId,
    pub is_async: bool,
    pub kind: OpKind,
    pub invoke_us: u64,
    pub complete_us: Option<u64>,
    pub outcome: Outcome,
}

impl OpRecord {
    /// A write whose effect may or may not have happened.
    pub fn indeterminate(&self) -> bool {
        match &self.outcome {
            Outcome::Pending | Outcome::Lost => true,
            Outcome::Done(ClientResponse::Error(c)) => {
                matches!(c, ErrorCode::Timeout | ErrorCode::Indeterminate)
            }
            _ => false,
        }
    }
}

/// One applied entry, as the first node to apply it reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub request_id: u64,
    pub digest: u64,
    pub ns: String,
    /// (key, version, value present)
    pub keys: Vec<(String, u64, bool)>,
    pub first_node: NodeId,
    pub at_us: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum WatchRec {
    /// (Re)registered from this revision (None: from now).
    Start { from: Option<u64>, at_us: u64 },
    Events {
        revision: u64,
        events: Vec<KeyValue>,
    },
    Resync {
        revision: u64,
        snapshot: Vec<KeyValue>,
    },
    /// The connection dropped (node crashed).
    Disconnected { at_us: u64 },
}

#[derive(Clone, Debug)]
pub struct WatchLog {
    pub client: usize,
    pub region: NodeId,
    pub ns: String,
    pub group: GroupId,
    pub prefix: String,
    pub recs: Vec<WatchRec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EpisodeKind {
    Crash,
    Isolate,
    OneWayIn,
    OneWayOut,
    Asymmetric,
    Pause,
    FsyncFail,
    /// Buggify site (swarm only): the region's disk syncs take 50-400 ms,
    /// as a degraded network volume's do, so its acknowledgements lag.
    SlowDisk,
    /// Buggify site (swarm only): the region's followers stay reachable
    /// for heartbeats but take none of its entries (every append from it
    /// arrives without them), so a leader there keeps leading while its
    /// log does not replicate: the gray failure in which an async
    /// namespace's RPO budget binds.
    AppendsStalled,
}

impl EpisodeKind {
    /// The fault classes of the standard scenario.
    pub const CLASSIC: [EpisodeKind; 7] = [
        EpisodeKind::Crash,
        EpisodeKind::Isolate,
        EpisodeKind::OneWayIn,
        EpisodeKind::OneWayOut,
        EpisodeKind::Asymmetric,
        EpisodeKind::Pause,
        EpisodeKind::FsyncFail,
    ];

    /// The buggify sites only swarm seeds draw.
    pub const SWARM_ONLY: [EpisodeKind; 2] = [EpisodeKind::SlowDisk, EpisodeKind::AppendsStalled];

    /// Every fault class and buggify site a swarm seed may draw.
    pub fn all() -> impl Iterator<Item = EpisodeKind> {
        Self::CLASSIC.into_iter().chain(Self::SWARM_ONLY)
    }

    /// Faults after which the other regions must take over the region's
    /// groups. (Not a slow disk, nor stalled appends: the leader keeps
    /// hearing from a majority, and Raft has no rule that makes it go.)
    pub fn takes_region_out(self) -> bool {
        !matches!(
            self,
            EpisodeKind::Asymmetric | EpisodeKind::SlowDisk | EpisodeKind::AppendsStalled
        )
    }
}

#[derive(Clone, Debug)]
pub struct Episode {
    pub kind: EpisodeKind,
    pub region: NodeId,
    pub start_us: u64,
    pub end_us: u64,
    /// Groups whose leader was in `region` when the episode started.
    pub led_groups: Vec<GroupId>,
    /// Another episode ran during part of this one (swarm seeds only).
    /// Overlapping outages may take a majority out, so RTO is not bounded
    /// for them; every other checker still holds.
    pub overlapped: bool,
}

/// One request of the operator to move `MOVING_NS`'s home region.
#[derive(Clone, Debug)]
pub struct MoveRec {
    pub to: GroupId,
    pub invoke_us: u64,
    pub complete_us: Option<u64>,
    pub outcome: Outcome,
}

/// A follower's promise to one leader's term, in true time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PromiseSpan {
    pub leader: NodeId,
    pub term: u64,
    pub start_us: u64,
    pub end_us: u64,
}

/// A state or event the sweep must reach: the simulator counts each per
/// run, and a 500-seed sweep in which one never occurs fails (the sweep did
/// not test what it claims to).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Coverage {
    /// A fault episode of this class began.
    Fault(EpisodeKind),
    /// A voter crashed right after granting a vote.
    CrashAfterVote,
    /// A follower installed a snapshot from its leader.
    SnapshotInstall,
    /// A leader sent an append cut short by its limits.
    PartialAppend,
    /// A follower acknowledged a new leader's earlier-term entries without
    /// any of its own (the leader has more after them).
    OldTermAckedAlone,
    /// A client sent a write again with the same request id.
    Retry,
    /// ... to another region than its own.
    RetryElsewhere,
    /// ... to a node that installed a snapshot since the write began.
    RetryAfterSnapshotInstall,
    /// A retried write got its final answer.
    RetryAnswered,
    /// A leader answered a retry from its idempotency table.
    RetryFromTable,
    /// A retry joined its first copy, still waiting to commit.
    RetryJoinedPending,
    /// A fault episode began while another was running.
    Overlap,
    /// A crashed region restarted within a second.
    QuickRestart,
    /// A node restarted just before a vote request reached it.
    RestartBeforeVote,
    /// An async write was refused because the oldest unreplicated
    /// acknowledged write was older than the RPO budget.
    BudgetRefusal,
}

impl Coverage {
    /// Every state a sweep must reach (with swarm knobs on, also the states
    /// only they create).
    pub fn required(swarm: bool) -> Vec<Coverage> {
        let kinds: Vec<EpisodeKind> = if swarm {
            EpisodeKind::all().collect()
        } else {
            EpisodeKind::CLASSIC.to_vec()
        };
        let mut v: Vec<Coverage> = kinds.into_iter().map(Coverage::Fault).collect();
        v.extend([
            Coverage::CrashAfterVote,
            Coverage::SnapshotInstall,
            Coverage::Retry,
            Coverage::RetryElsewhere,
            Coverage::RetryAfterSnapshotInstall,
            Coverage::RetryAnswered,
            Coverage::RetryFromTable,
            Coverage::RetryJoinedPending,
        ]);
        if swarm {
            v.extend([
                Coverage::PartialAppend,
                Coverage::OldTermAckedAlone,
                Coverage::Overlap,
                Coverage::QuickRestart,
                Coverage::RestartBeforeVote,
                Coverage::BudgetRefusal,
            ]);
        }
        v
    }

    pub fn name(self) -> String {
        match self {
            Coverage::Fault(k) => format!("fault: {k:?}"),
            Coverage::CrashAfterVote => "fault: crash right after a vote".into(),
            Coverage::SnapshotInstall => "snapshot installed from a leader".into(),
            Coverage::PartialAppend => "append cut short by its limits".into(),
            Coverage::OldTermAckedAlone => {
                "leader's earlier-term entries acknowledged without its own".into()
            }
            Coverage::Retry => "write retried with its request id".into(),
            Coverage::RetryElsewhere => "retry sent to another region".into(),
            Coverage::RetryAfterSnapshotInstall => {
                "retry to a node that installed a snapshot since".into()
            }
            Coverage::RetryAnswered => "retried write answered".into(),
            Coverage::RetryFromTable => "retry answered from the idempotency table".into(),
            Coverage::RetryJoinedPending => "retry joined its pending first copy".into(),
            Coverage::Overlap => "fault began inside another".into(),
            Coverage::QuickRestart => "crashed region back within a second".into(),
            Coverage::RestartBeforeVote => "node restarted just before a vote request".into(),
            Coverage::BudgetRefusal => "async write refused: RPO budget reached".into(),
        }
    }
}

/// What the world observed during a seed, for the checkers: one field per
/// kind of observation a checker reads (operations, applied entries, leases,
/// promises, votes, moves, ...), which is why there are more than 15.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// How often each coverage state occurred.
    pub coverage: BTreeMap<Coverage, u64>,
    /// When each retried op of `ops` (by index) was last sent.
    pub retried_at: BTreeMap<usize, u64>,
    /// Promises each follower made: (group, follower) -> spans of (leader,
    /// term, true start, true end), in order.
    pub promise_spans: BTreeMap<(GroupId, NodeId), Vec<PromiseSpan>>,
    /// Candidacies started by a leadership transfer: (group, term, candidate).
    /// The leader handing over releases its followers from their promises.
    pub transfer_candidacies: std::collections::BTreeSet<(GroupId, u64, NodeId)>,
    pub regions: u8,
    pub ops: Vec<OpRecord>,
    /// Client operations on the namespace that moves (`world::MOVING_NS`);
    /// kept apart because its home group changes during the run.
    pub mv_ops: Vec<OpRecord>,
    pub moves: Vec<MoveRec>,
    /// Completed copies of a moving namespace: (group, revision).
    pub moves_completed: std::collections::BTreeSet<(GroupId, u64)>,
    /// group -> revision -> applied entry
    pub applied: Vec<BTreeMap<u64, Applied>>,
    /// Disagreements seen while recording `applied`: (group, revision, first, other node).
    pub applied_conflicts: Vec<(GroupId, u64, NodeId, NodeId)>,
    /// group -> node -> closed intervals [start, end] of true time holding a valid lease.
    pub leases: Vec<Vec<Vec<(u64, u64)>>>,
    /// Leases that outlived the promises of a majority: (group, leader, at, detail).
    pub uncovered_leases: Vec<(GroupId, NodeId, u64, String)>,
    /// (group, term, node, at)
    pub elections: Vec<(GroupId, u64, NodeId, u64)>,
    /// Granted votes seen on the wire: (group, term, voter, candidate, at).
    pub votes: Vec<(GroupId, u64, NodeId, NodeId, u64)>,
    /// Replies sent while what they promise was not yet on the node's disk:
    /// (what, group, node, at).
    pub undurable_replies: Vec<(&'static str, GroupId, NodeId, u64)>,
    pub watches: Vec<WatchLog>,
    pub episodes: Vec<Episode>,
    pub clock_drift_max_ppm: u64,
    pub rpo_budget_us: BTreeMap<String, u64>,
    pub rto_bound_us: u64,
    /// Every permission check answered (see `checkers::revocation`).
    pub perm_checks: Vec<PermCheck>,
    /// Every grant key, with the revocation keys of its permission that its
    /// origin node held when it made the grant (observed by the simulator
    /// as the grant first appeared there, not taken from the grant's value).
    pub grants_saw: BTreeMap<String, Vec<String>>,
}

impl History {
    pub fn new(regions: u8) -> History {
        History {
            regions,
            applied: vec![BTreeMap::new(); regions as usize],
            leases: vec![vec![Vec::new(); regions as usize]; regions as usize],
            ..History::default()
        }
    }

    /// A follower received a round of `leader`'s `term` at `at`: it promises
    /// not to help elect anyone else until `end` (true time).
    pub fn record_promise(
        &mut self,
        g: GroupId,
        follower: NodeId,
        leader: NodeId,
        term: u64,
        at: u64,
        end: u64,
    ) {
        let spans = self.promise_spans.entry((g, follower)).or_default();
        match spans.last_mut() {
            Some(s) if (s.leader, s.term) == (leader, term) => s.end_us = s.end_us.max(end),
            _ => spans.push(PromiseSpan {
                leader,
                term,
                start_us: at,
                end_us: end,
            }),
        }
    }

    pub fn cover(&mut self, c: Coverage) {
        *self.coverage.entry(c).or_default() += 1;
    }

    pub fn record_applied(&mut self, group: GroupId, revision: u64, node: NodeId, a: Applied) {
        let map = &mut self.applied[group as usize];
        match map.get(&revision) {
            Some(prev) if prev.digest != a.digest => {
                self.applied_conflicts
                    .push((group, revision, prev.first_node, node));
            }
            Some(_) => {}
            None => {
                map.insert(revision, a);
            }
        }
    }

    pub fn record_lease(&mut self, group: GroupId, node: NodeId, start: u64, end: u64) {
        let v = &mut self.leases[group as usize][node as usize];
        match v.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => v.push((start, end)),
        }
    }

    /// A node lost its lease at `at` (crash): cut its current interval there.
    pub fn end_lease(&mut self, node: NodeId, at: u64) {
        for g in self.leases.iter_mut() {
            if let Some(last) = g[node as usize].last_mut() {
                if last.1 > at && last.0 <= at {
                    last.1 = at;
                }
            }
        }
    }

    /// request_id -> (group, revision) of entries that applied.
    pub fn applied_by_request(&self) -> BTreeMap<u64, (GroupId, u64)> {
        let mut m = BTreeMap::new();
        for (g, revs) in self.applied.iter().enumerate() {
            for (rev, a) in revs {
                m.insert(a.request_id, (g as GroupId, *rev));
            }
        }
        m
    }
}

/// A property that failed, with what the report needs.
#[derive(Clone, Debug)]
pub struct Violation {
    pub property: &'static str,
    pub detail: String,
    /// True time around which the failure shows (for the trace excerpt).
    pub at_us: Option<u64>,
}

impl Violation {
    pub fn new(property: &'static str, at_us: Option<u64>, detail: impl Into<String>) -> Violation {
        Violation {
            property,
            detail: detail.into(),
            at_us,
        }
    }
}
