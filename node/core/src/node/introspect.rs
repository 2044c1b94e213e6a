//! What the shell, the simulator and tests may look at: read-only views of
//! the node's groups, leases, logs, state machines and metadata.

use super::*;

impl Node {
    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The metadata document's records and grants in force (auth state:
    /// roles, tokens, revocations, grants).
    pub fn meta_view(&self) -> crate::meta::MetaView {
        self.meta.view()
    }

    /// Every grant and revocation key of the metadata document, sorted.
    pub fn meta_permission_keys(&self) -> Vec<String> {
        self.meta.permission_keys()
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

    /// The term of entry `index` of group `g`'s log, if the log holds it
    /// (not compacted away, not beyond its end).
    pub fn log_term_at(&self, g: GroupId, index: u64) -> Option<u64> {
        self.groups.get(g as usize)?.log.term_at(index)
    }

    pub fn is_leader(&self, g: GroupId) -> bool {
        self.groups
            .get(g as usize)
            .is_some_and(|g| g.role.is_leader())
    }

    /// The local time until which this node holds a valid lease on `g`, if it does now.
    pub fn lease_expiry_us(&self, g: GroupId) -> Option<u64> {
        let gr = self.groups.get(g as usize)?;
        let ls = gr.role.leading()?;
        (!self.halted && self.lease_valid(gr)).then_some(ls.lease_expiry_us)
    }

    /// (term, heartbeat round) the current lease is counted from, if it holds one.
    pub fn lease_basis(&self, g: GroupId) -> Option<(u64, u64)> {
        let gr = self.groups.get(g as usize)?;
        let ls = gr.role.leading()?;
        self.lease_expiry_us(g).map(|_| (gr.term, ls.lease_round))
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
        let e = self.ns_index.get(ns)?;
        Some((e.home, self.moves.get(ns).map(|m| m.to)))
    }

    pub fn read_local(&self, ns: &str, key: &str) -> Option<KeyValue> {
        let e = self.ns_index.get(ns)?;
        Some(self.sms[e.home as usize].get(ns, key))
    }

    pub fn history(&self, ns: &str, key: &str) -> Vec<KeyValue> {
        match self.ns_index.get(ns) {
            Some(e) => self.sms[e.home as usize].history(ns, key),
            None => Vec::new(),
        }
    }

    /// A group's state as this node sees it, for status pages.
    pub fn group_status(&self, g: GroupId) -> Option<GroupStatus> {
        let gr = self.groups.get(g as usize)?;
        Some(GroupStatus {
            role: match gr.role {
                Role::Follower => "follower",
                Role::PreCandidate => "pre-candidate",
                Role::Candidate => "candidate",
                Role::Leader(_) => "leader",
            },
            leader: gr.leader,
            term: gr.term,
            commit_index: gr.commit,
            applied_index: gr.applied,
            last_index: gr.log.last_index(),
            applied_revision: self.sms[g as usize].revision(),
            lease_remaining_us: self.lease_expiry_us(g).map(|e| e.saturating_sub(self.now)),
            followers: gr.role.leading().map_or_else(Vec::new, |ls| {
                ls.peers
                    .iter()
                    .enumerate()
                    .filter(|(p, _)| *p != self.id as usize)
                    .map(|(p, peer)| (p as NodeId, peer.match_index))
                    .collect()
            }),
            staleness_us: if gr.role.is_leader() {
                (self.lease_valid(gr) && self.noop_committed(gr)).then_some(0)
            } else {
                gr.fresh_as_of_us
                    .map(|f| self.cfg.true_upper_us(self.now.saturating_sub(f)))
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
            gr.role
                .leading()
                .map_or(0, |ls| ls.lease_expiry_us.saturating_sub(self.now)),
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
}
