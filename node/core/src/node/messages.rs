//! Peer messages: decoding and dispatch, Raft message handling, forwards,
//! probes and metadata sync.

use super::*;

impl Node {
    pub(super) fn on_message(&mut self, from: NodeId, bytes: &[u8]) -> Result<(), PeerError> {
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
                if self.forwarded.get(&id).is_none_or(|f| f.to != from) {
                    // Not the answer to the forward under way: the request was
                    // answered, or rerouted (and may since sit in this node's
                    // own log as leader), and this answers an earlier copy (a
                    // duplicated forward answered twice, or the node it left).
                    // Passing it on answered a write UNAVAILABLE, "nothing
                    // happened", that then applied (swarm seeds 241 and 403).
                    self.stats.stale_forward_replies += 1;
                    return Ok(());
                }
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
                            self.out.push(Action::Observe(Observation::MetaChanged));
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
    pub(super) fn meta_send_all(&mut self, except: Option<NodeId>) {
        for p in 0..self.cfg.regions {
            if p != self.id && Some(p) != except {
                self.meta_send(p);
            }
        }
    }

    pub(super) fn meta_send(&mut self, p: NodeId) {
        if let Some(sync) = self.meta.sync_message(p) {
            self.send(p, Msg::Meta { sync });
        }
    }

    pub(super) fn on_raft(
        &mut self,
        g: usize,
        from: NodeId,
        term: u64,
        body: RaftMsg,
    ) -> Result<(), PeerError> {
        if let Some(why) = body.shape_error(
            term,
            self.cfg.append_entries_max,
            self.cfg.snapshot_chunk_bytes,
        ) {
            return Err(PeerError::OutOfProtocol(why));
        }
        let my_term = self.groups[g].term;
        match body {
            RaftMsg::PreVote {
                last_index,
                last_term,
            } => {
                // Two pre-candidates whose timers fired within a message
                // delay of each other would both win their pre-votes, both
                // campaign and split the vote, round after round (seen for
                // 11 s with two live regions of three). A tie goes to the
                // lower node id: a pre-candidate refuses a higher id whose
                // log is not newer than its own. (Pre-votes bind nothing, so
                // safety is untouched; the lower id keeps asking every
                // heartbeat interval, so one of the two wins.)
                let gr = &self.groups[g];
                let (my_index, my_term_last) = (gr.log.last_index(), gr.log.last_term());
                let theirs_newer = (last_term, last_index) > (my_term_last, my_index);
                let tie_to_me =
                    matches!(gr.role, Role::PreCandidate) && from > self.id && !theirs_newer;
                let granted = term > my_term
                    && self.log_ok(g, last_index, last_term)
                    && !self.in_promise(g)
                    && !tie_to_me;
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
                if matches!(gr.role, Role::PreCandidate) && granted && term == gr.term + 1 {
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
                let forced = transfer && self.groups[g].leader_transferring_to == Some(from);
                let promised = self.in_promise(g) && !forced;
                if term > my_term {
                    if promised {
                        // Leader stickiness: ignore, keep the promise (and the term).
                        return Ok(());
                    }
                    self.become_follower(g, term, None);
                }
                let gr = &self.groups[g];
                // A promise binds at any term: a node can reach the
                // candidate's term by another message (a refused pre-vote
                // answer carries it) while it still promises the old leader.
                let granted = term == gr.term
                    && (gr.vote.is_none() || gr.vote == Some(from))
                    && !(promised && gr.vote != Some(from))
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
                if matches!(gr.role, Role::Candidate) && granted && term == gr.term {
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
                let Role::Leader(ls) = &mut gr.role else {
                    return Ok(());
                };
                if term != gr.term {
                    return Ok(());
                }
                let peer = &mut ls.peers[from as usize];
                peer.last_heard_us = self.now;
                peer.acked_round = peer.acked_round.max(round);
                if done {
                    peer.snap_progress = None;
                    peer.match_index = peer.match_index.max(index);
                    peer.next_index = peer.match_index + 1;
                    let next = peer.next_index;
                    self.send_append(g, from, next);
                    self.maybe_commit(g);
                } else if let Some(mut s) = peer.snap_progress.filter(|s| s.index == index) {
                    // Answers on a stream come in order and a follower's
                    // buffer only grows, so less than acknowledged means it
                    // lost the buffer (it restarted): start again from what
                    // it holds. Equal moves nothing and sends nothing.
                    if received != s.acked {
                        if received < s.acked {
                            s.sent = received;
                        }
                        s.acked = received;
                        s.sent = s.sent.max(received);
                        s.progress_us = self.now;
                        peer.snap_progress = Some(s);
                        self.send_snapshot_chunks(g, from);
                    }
                }
                self.update_lease(g);
            }
            RaftMsg::TimeoutNow => {
                let gr = &self.groups[g];
                if matches!(gr.role, Role::Follower) && gr.leader == Some(from) && term == gr.term {
                    self.campaign(g, true);
                }
            }
            RaftMsg::PreVote { .. } | RaftMsg::PreVoteResp { .. } | RaftMsg::Vote { .. } => {}
        }
        Ok(())
    }
}
