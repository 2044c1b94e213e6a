//! Elections and leadership: election timeouts, PreVote and votes, becoming
//! follower or leader, leadership transfer, and the promises a follower
//! makes to a leader (the basis of leases).

use super::*;

impl Node {
    pub(super) fn reset_election_timer(&mut self, g: usize) {
        let et = self.cfg.election_timeout_us;
        self.groups[g].election_deadline_us = self.now + self.rng.range(et, 2 * et);
    }

    pub(super) fn election_timeout(&mut self, g: usize) {
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
    pub(super) fn resend_vote_requests(&mut self, g: usize) {
        let gr = &mut self.groups[g];
        gr.next_heartbeat_us = self.now + self.cfg.heartbeat_interval_us;
        let (pre_candidate, last_index, last_term) = (
            matches!(gr.role, Role::PreCandidate),
            gr.log.last_index(),
            gr.log.last_term(),
        );
        let missing: Vec<NodeId> = (0..self.cfg.regions)
            .filter(|p| *p != self.id && !gr.votes.contains(p))
            .collect();
        for p in missing {
            let gr = &self.groups[g];
            if pre_candidate {
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

    pub(super) fn campaign(&mut self, g: usize, transfer: bool) {
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

    pub(super) fn become_follower(&mut self, g: usize, term: u64, leader: Option<NodeId>) {
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
        let was = std::mem::replace(&mut gr.role, Role::Follower);
        gr.leader = leader;
        gr.votes.clear();
        if let Role::Leader(ls) = was {
            // Leadership ends: whoever waits on it learns so now.
            let LeaderState {
                pending_writes: writes,
                pending_reads: reads,
                ..
            } = *ls;
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

    pub(super) fn become_leader(&mut self, g: usize) {
        let now = self.now;
        let id = self.id;
        let regions = self.cfg.regions as usize;
        let duties_us = now + self.cfg.heartbeat_interval_us;
        let gr = &mut self.groups[g];
        debug_assert_eq!(gr.vote, Some(id), "a leader voted for itself in its term");
        let last = gr.log.last_index();
        // The uncommitted tail's async acknowledgements: this node's own keep
        // their times; any other async write in it was acknowledged by some
        // leader at some time unknown here, so the budget binds until it
        // commits (it may be as old as the budget allows).
        let commit = gr.commit;
        let own: BTreeMap<(u64, u64), AsyncAck> = std::mem::take(&mut gr.async_acked)
            .into_iter()
            .map(|a| ((a.index, a.term), a))
            .collect();
        let mut acks = VecDeque::new();
        for e in gr.log.iter_from(commit + 1) {
            let EntryData::Write(w) = &e.data else {
                continue;
            };
            let own = own.get(&(e.index, e.term));
            let is_async = self
                .ns_index
                .get(&w.ns)
                .is_some_and(|n| matches!(n.mode, ReplicationMode::Async { .. }));
            match own {
                Some(a) => acks.push_back(*a),
                None if is_async => acks.push_back(AsyncAck {
                    index: e.index,
                    term: e.term,
                    at_us: None,
                }),
                None => {}
            }
        }
        gr.async_acked = acks;
        let peer = Peer {
            match_index: 0,
            next_index: last + 1,
            sent_index: last,
            acked_round: 0,
            last_heard_us: now,
            last_echo_us: 0,
            snap_progress: None,
        };
        let mut ls = LeaderState {
            peers: vec![peer; regions],
            rounds: VecDeque::new(),
            lease_min_round: gr.round + 1,
            lease_expiry_us: 0,
            lease_round: 0,
            next_duties_us: duties_us,
            noop_index: 0,
            transfer: None,
            home_healthy_since_us: None,
            pending_reads: Vec::new(),
            pending_writes: BTreeMap::new(),
            pending_by_request: BTreeMap::new(),
            overlay: Overlay {
                keys: BTreeMap::new(),
                revision: self.sms[g].revision(),
                ns: BTreeMap::new(),
                time_ms: self.sms[g].time_ms(),
                frozen: BTreeSet::new(),
            },
            heartbeat_now: false,
        };
        // Rebuild the overlay from entries this leader's log holds beyond the state machine.
        let ov = &mut ls.overlay;
        for e in gr.log.iter_from(gr.applied + 1) {
            match &e.data {
                EntryData::Freeze { ns, .. } => {
                    ov.frozen.insert(ns.clone());
                }
                EntryData::Adopt(a) => {
                    ov.revision = a.revision;
                    ov.time_ms = ov.time_ms.max(a.time_ms);
                }
                _ => {}
            }
            if let EntryData::Write(w) = &e.data {
                ov.revision = w.revision;
                ov.time_ms = ov.time_ms.max(w.meta.time_ms);
                ov.ns.insert(w.ns.clone(), (w.revision, e.index));
                for k in &w.keys {
                    ov.keys.insert(
                        (w.ns.clone(), k.key.clone()),
                        (k.version, k.value.clone(), e.index),
                    );
                }
                if w.request_id != 0 {
                    // A retry of this write may still arrive: it joins this entry.
                    let ack_on_durable = matches!(
                        self.ns_index.get(&w.ns).map(|e| e.mode),
                        Some(ReplicationMode::Async { .. })
                    );
                    let resp = ClientResponse::Written {
                        versions: w.reply_versions.clone(),
                        token: RevisionToken {
                            group: g as GroupId,
                            revision: w.revision,
                        },
                        deleted: w.deleted(),
                    };
                    ls.pending_writes.insert(
                        e.index,
                        PendingWrite {
                            origins: Vec::new(),
                            request_id: w.request_id,
                            fingerprint: w.fingerprint,
                            resp,
                            ack_on_durable,
                            acked: false,
                        },
                    );
                    ls.pending_by_request.insert(w.request_id, e.index);
                }
            }
        }
        gr.role = Role::Leader(Box::new(ls));
        gr.leader = Some(id);
        let term = gr.term;
        let index = self.append_local(g, EntryData::Noop);
        if let Some(ls) = self.groups[g].role.leading_mut() {
            ls.noop_index = index;
        }
        self.out.push(Action::Observe(Observation::BecameLeader {
            group: g as GroupId,
            term,
        }));
        self.heartbeat(g);
    }

    pub(super) fn start_transfer(&mut self, g: usize, to: NodeId) {
        let now = self.now;
        let et = self.cfg.election_timeout_us;
        let Some(ls) = self.groups[g].role.leading_mut() else {
            return;
        };
        if to == self.id || ls.transfer.is_some() {
            return;
        }
        ls.transfer = Some(Transfer {
            to,
            deadline_us: now + et,
            timeout_now_sent: false,
        });
        ls.lease_expiry_us = 0;
        ls.lease_min_round = u64::MAX;
        ls.home_healthy_since_us = None;
        ls.heartbeat_now = true;
        self.out.push(Action::Observe(Observation::TransferStarted {
            group: g as GroupId,
            to,
        }));
        self.maybe_timeout_now(g);
    }

    pub(super) fn maybe_timeout_now(&mut self, g: usize) {
        let gr = &mut self.groups[g];
        let last = gr.log.last_index();
        let term = gr.term;
        let Some(ls) = gr.role.leading_mut() else {
            return;
        };
        if let Some(tr) = &mut ls.transfer {
            if !tr.timeout_now_sent && ls.peers[tr.to as usize].match_index == last {
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

    pub(super) fn note_promise(&mut self, g: usize, leader: NodeId, term: u64, round: u64) {
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

    /// Whether this node promised a leader not to help elect another one.
    pub(super) fn in_promise(&self, g: usize) -> bool {
        let gr = &self.groups[g];
        gr.role.is_leader()
            || gr
                .leader_contact_us
                .is_some_and(|c| self.now < c + self.cfg.election_timeout_us)
    }
}
