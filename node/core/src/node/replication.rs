//! Log replication: appending on the leader, heartbeats and appends to
//! followers, the follower's side of appends and chunked snapshot installs,
//! and log compaction behind snapshots.

use super::*;

/// Appends in flight to one follower at most (each of up to
/// `append_entries_max` entries): enough to cover a round trip with small
/// appends, few enough that a follower that refuses them does not get a
/// flood to refuse.
const APPENDS_IN_FLIGHT_MAX: usize = 4;

/// Snapshot chunks in flight to one follower at most (each of
/// `snapshot_chunk_bytes`).
const SNAPSHOT_CHUNKS_IN_FLIGHT_MAX: usize = 4;

impl Node {
    /// Leader: append to the local log, persist, and count it once durable.
    pub(super) fn append_local(&mut self, g: usize, data: EntryData) -> u64 {
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

    /// Leader: the periodic duties (namespace moves, check-quorum, lease
    /// preference), every heartbeat interval on a clock of their own. Under
    /// steady load every proposal starts a replication round and pushes the
    /// next heartbeat back, so duties that waited for a heartbeat timer
    /// would never run while clients keep writing.
    pub(super) fn leader_duties(&mut self, g: usize) {
        let Some(ls) = self.groups[g].role.leading_mut() else {
            return;
        };
        ls.next_duties_us = self.now + self.cfg.heartbeat_interval_us;
        self.drive_moves(Some(g));
        let now = self.now;
        let et = self.cfg.election_timeout_us;
        let majority = self.cfg.majority();
        let id = self.id;
        let gr = &self.groups[g];
        let Some(ls) = gr.role.leading() else {
            return;
        };
        // Check-quorum: a leader that has not heard from a majority for an
        // election timeout steps down (its lease expired before that).
        let heard = (0..self.cfg.regions)
            .filter(|&p| p == id || now.saturating_sub(ls.peers[p as usize].last_heard_us) < et)
            .count();
        if heard < majority {
            let term = gr.term;
            self.become_follower(g, term, None);
            return;
        }
        // Lease preference: hand leadership back to the home region once it
        // has looked healthy for long enough.
        let home = g as NodeId;
        if home != id && ls.transfer.is_none() {
            let healthy =
                now.saturating_sub(ls.peers[g].last_heard_us) < 2 * self.cfg.heartbeat_interval_us;
            let Some(ls) = self.groups[g].role.leading_mut() else {
                return;
            };
            if healthy {
                let since = *ls.home_healthy_since_us.get_or_insert(now);
                if now - since >= self.cfg.home_return_delay_us {
                    self.start_transfer(g, home);
                }
            } else {
                ls.home_healthy_since_us = None;
            }
        }
    }

    /// Leader: start a heartbeat round to every peer (resending anything unacknowledged).
    pub(super) fn heartbeat(&mut self, g: usize) {
        let now = self.now;
        let gr = &mut self.groups[g];
        let Role::Leader(ls) = &mut gr.role else {
            return;
        };
        ls.heartbeat_now = false;
        gr.round += 1;
        ls.rounds.push_back((gr.round, now));
        while ls.rounds.len() > ROUNDS_KEPT_MAX {
            ls.rounds.pop_front();
        }
        gr.next_heartbeat_us = now + self.cfg.heartbeat_interval_us;
        for p in 0..self.cfg.regions {
            if p != self.id {
                let Some(ls) = self.groups[g].role.leading() else {
                    return;
                };
                let from = ls.peers[p as usize].next_index;
                self.send_append(g, p, from);
            }
        }
        // A round may be complete as it starts (a single region is its own
        // majority, and no acknowledgement will ever arrive): count it now.
        self.update_lease(g);
        self.serve_reads(g);
    }

    /// Leader: fill the window of snapshot chunks in flight to follower
    /// `p`, first resending from what it acknowledged when nothing moved
    /// for a heartbeat interval (chunks or answers lost). Only an answer
    /// that moves the acknowledged offset opens the window again, so
    /// duplicate answers and the rounds of a busy leader (a heartbeat per
    /// forwarded write) send nothing more: each used to resend a chunk, and
    /// each resend's answer sent another, a storm that made a 5 MB
    /// transfer take 13 s under load.
    pub(super) fn send_snapshot_chunks(&mut self, g: usize, p: NodeId) {
        let now = self.now;
        let chunk_bytes = self.cfg.snapshot_chunk_bytes as u64;
        let window_bytes = SNAPSHOT_CHUNKS_IN_FLIGHT_MAX as u64 * chunk_bytes;
        let resend_after_us = self.cfg.heartbeat_interval_us;
        let gr = &mut self.groups[g];
        let term = gr.term;
        let round = gr.round;
        let Role::Leader(ls) = &mut gr.role else {
            return;
        };
        let Some(snap) = &gr.snapshot else { return };
        let total = snap.data.len() as u64;
        debug_assert!(total > 0, "a snapshot is never empty");
        let peer = &mut ls.peers[p as usize];
        let s = match peer.snap_progress {
            Some(s) if s.index == snap.index => s,
            _ => SnapSend {
                index: snap.index,
                acked: 0,
                sent: 0,
                progress_us: now,
            },
        };
        let mut s = s;
        if s.sent > s.acked && now.saturating_sub(s.progress_us) >= resend_after_us {
            s.sent = s.acked;
            s.progress_us = now;
        }
        let mut msgs = Vec::new();
        while s.sent < total && s.sent - s.acked < window_bytes {
            let end = (s.sent + chunk_bytes).min(total);
            msgs.push(RaftMsg::Snapshot {
                index: snap.index,
                term: snap.term,
                offset: s.sent,
                total,
                data: snap.data[s.sent as usize..end as usize].to_vec(),
                round,
            });
            s.sent = end;
        }
        peer.snap_progress = Some(s);
        for body in msgs {
            self.stats.snapshot_chunks_sent += 1;
            self.send(
                p,
                Msg::Raft {
                    group: g as GroupId,
                    term,
                    body,
                },
            );
        }
    }

    pub(super) fn send_append(&mut self, g: usize, p: NodeId, from: u64) {
        let lease_ok = self.lease_valid(&self.groups[g]) && self.noop_committed(&self.groups[g]);
        let gr = &mut self.groups[g];
        let term = gr.term;
        let round = gr.round;
        let Role::Leader(ls) = &mut gr.role else {
            return;
        };
        let transferring_to = ls.transfer.as_ref().map(|t| t.to);
        if from <= gr.log.snap_index {
            self.send_snapshot_chunks(g, p);
            return;
        }
        let entries = gr
            .log
            .slice(from, self.cfg.append_entries_max, self.cfg.append_bytes_max);
        let prev_index = from - 1;
        let Some(prev_term) = gr.log.term_at(prev_index) else {
            return;
        };
        if !entries.is_empty() && prev_index + (entries.len() as u64) < gr.log.last_index() {
            self.stats.partial_appends += 1;
        }
        let peer = &mut ls.peers[p as usize];
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

    pub(super) fn log_ok(&self, g: usize, last_index: u64, last_term: u64) -> bool {
        let gr = &self.groups[g];
        (last_term, last_index) >= (gr.log.last_term(), gr.log.last_index())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_append(
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
            if !matches!(self.groups[g].role, Role::Follower) {
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
    pub(super) fn on_append_resp(
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
        let my_last = gr.log.last_index();
        let Role::Leader(ls) = &mut gr.role else {
            return;
        };
        if term != gr.term {
            return;
        }
        let peer = &mut ls.peers[from as usize];
        peer.last_heard_us = now;
        peer.acked_round = peer.acked_round.max(round);
        peer.last_echo_us = peer.last_echo_us.max(echo_us);
        if success {
            if match_index > my_last {
                self.stats.peer_out_of_protocol += 1;
                return;
            }
            let advanced =
                match_index > peer.match_index || self.cfg.mutants.pipeline_refills_on_any_answer;
            peer.match_index = peer.match_index.max(match_index);
            peer.next_index = peer.match_index + 1;
            peer.sent_index = peer.sent_index.max(peer.match_index);
            // Keep a bounded pipeline of appends in flight, so a follower
            // catches up at `APPENDS_IN_FLIGHT_MAX` appends per round trip,
            // not one, when appends are small. Only an answer that moved
            // the match refills it: if every answer did, answers that move
            // nothing (duplicates, or a follower that takes no entries)
            // would each send several more appends, whose answers would
            // send more: a storm that grows with every round trip.
            let window = (APPENDS_IN_FLIGHT_MAX * self.cfg.append_entries_max) as u64;
            for _ in 0..APPENDS_IN_FLIGHT_MAX * usize::from(advanced) {
                let Some(ls) = self.groups[g].role.leading() else {
                    break;
                };
                let peer = &ls.peers[from as usize];
                if peer.sent_index >= my_last
                    || peer.sent_index - peer.match_index >= window
                    || peer.snap_progress.is_some()
                {
                    break;
                }
                let next = peer.sent_index + 1;
                self.send_append(g, from, next);
            }
        } else if round > 0 {
            // Log mismatch: back off below the refused probe, and at once
            // to just past the follower's log when that is shorter. (The
            // refusal does not say which probe it answers; a stale one only
            // backs off further than needed, never below what matched.) A
            // refusal that moves nothing sends nothing: the probe under way
            // stands, and the heartbeat resends it if it was lost.
            let next = (last_index + 1)
                .min(peer.next_index - 1)
                .max(peer.match_index + 1);
            if next < peer.next_index || self.cfg.mutants.pipeline_refills_on_any_answer {
                peer.next_index = next;
                peer.sent_index = next - 1;
                self.send_append(g, from, next);
            }
        }
        self.update_lease(g);
        self.maybe_commit(g);
        self.maybe_timeout_now(g);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_snapshot(
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
        if !matches!(self.groups[g].role, Role::Follower) {
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
            // A first chunk starts the transfer afresh, unless it is a
            // resent copy of the one under way (in flight when the leader
            // resent from what was acknowledged): that one keeps what came.
            other
                if offset == 0
                    && other
                        .as_ref()
                        .is_none_or(|(i, t, tot, _)| (*i, *t, *tot) != (index, sterm, total)) =>
            {
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
        self.out
            .push(Action::Observe(Observation::SnapshotInstalled {
                group: g as GroupId,
                index,
                from,
            }));
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
        self.stats.snapshots_installed += 1;
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

    pub(super) fn maybe_compact(&mut self, g: usize) {
        let gr = &self.groups[g];
        if gr.applied.saturating_sub(gr.log.snap_index) < self.cfg.compact_after_entries {
            return;
        }
        // A snapshot on its way to a live follower: a new one would restart
        // that transfer from its first chunk, and under steady writes a big
        // state could then never finish (the follower never catches up). The
        // log grows meanwhile, for as long as the transfer takes.
        let now = self.now;
        let et = self.cfg.election_timeout_us;
        let sending = gr.role.leading().is_some_and(|ls| {
            ls.peers
                .iter()
                .any(|p| p.snap_progress.is_some() && now.saturating_sub(p.last_heard_us) < et)
        });
        if sending {
            self.stats.compactions_deferred += 1;
            return;
        }
        let snap_bytes = gr.snapshot.as_ref().map_or(0, |s| s.data.len() as u64);
        let log_bytes = gr.log.bytes() as u64;
        // A live follower still behind the applied index would be cut off
        // from the log by this compaction and need a whole snapshot. Under
        // load a snapshot's transfer takes longer than the entries it stands
        // for, so a follower that had just installed one was sent another at
        // once, and another: a region restarted under writes never caught up
        // (kill -9 test, 30 s). Wait for it, within the hold limits, which
        // bound the log's memory when a follower cannot keep up at all.
        // Behind means not even sent entries up to the applied index: a
        // follower with them in flight (the slower of two, an entry behind
        // at every apply) needs nothing the compaction removes. And only a
        // follower that answered this leader: a new leader counts every
        // peer live for an election timeout, a dead one too, and held the
        // log for it.
        let me = self.id as usize;
        let applied = gr.applied;
        let behind = gr.role.leading().is_some_and(|ls| {
            ls.peers.iter().enumerate().any(|(p, peer)| {
                p != me
                    && peer.acked_round > 0
                    && peer.sent_index.max(peer.match_index) < applied
                    && now.saturating_sub(peer.last_heard_us) < et
            })
        });
        let log_entries = gr.log.last_index() - gr.log.snap_index;
        if behind
            && log_entries < self.cfg.compact_hold_entries_max
            && log_bytes < self.cfg.compact_hold_bytes_max
        {
            self.stats.compactions_held += 1;
            return;
        }
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
}
