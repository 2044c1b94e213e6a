//! Leases and commit: heartbeat rounds a majority acknowledged, the lease
//! they give, advancing the commit index, acknowledging writes, and applying
//! committed entries to the group state machines.

use super::*;

impl Node {
    pub(super) fn lease_valid(&self, gr: &Group) -> bool {
        gr.role == Role::Leader && gr.transfer.is_none() && self.now < gr.lease_expiry_us
    }

    pub(super) fn noop_committed(&self, gr: &Group) -> bool {
        self.cfg.mutants.read_before_noop_commit
            || (gr.noop_index > 0 && gr.commit >= gr.noop_index)
    }

    /// The highest round a majority (this node included) acknowledged.
    pub(super) fn majority_round(&self, g: usize) -> u64 {
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

    pub(super) fn update_lease(&mut self, g: usize) {
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

    pub(super) fn maybe_commit(&mut self, g: usize) {
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

    pub(super) fn ack_durable_async(&mut self, g: usize) {
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
    pub(super) fn finish_pending_write(&mut self, g: usize, index: u64) {
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

    pub(super) fn apply_committed(&mut self, g: usize) {
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
}
