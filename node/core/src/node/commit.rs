//! Leases and commit: heartbeat rounds a majority acknowledged, the lease
//! they give, advancing the commit index, acknowledging writes, and applying
//! committed entries to the group state machines.

use super::*;

impl Node {
    pub(super) fn lease_valid(&self, gr: &Group) -> bool {
        gr.role
            .leading()
            .is_some_and(|ls| ls.transfer.is_none() && self.now < ls.lease_expiry_us)
    }

    /// Leads and this term's no-op committed (reads may be served).
    pub(super) fn noop_committed(&self, gr: &Group) -> bool {
        gr.role.leading().is_some_and(|ls| {
            self.cfg.mutants.read_before_noop_commit
                || (ls.noop_index > 0 && gr.commit >= ls.noop_index)
        })
    }

    /// The highest round a majority (this node included) acknowledged.
    pub(super) fn majority_round(&self, g: usize) -> u64 {
        let gr = &self.groups[g];
        let Some(ls) = gr.role.leading() else {
            return 0;
        };
        let mut acked: Vec<u64> = (0..self.cfg.regions)
            .map(|p| {
                if p == self.id {
                    gr.round
                } else {
                    ls.peers[p as usize].acked_round
                }
            })
            .collect();
        acked.sort_unstable_by(|a, b| b.cmp(a));
        acked[self.cfg.majority() - 1]
    }

    pub(super) fn update_lease(&mut self, g: usize) {
        let r = self.majority_round(g);
        let dur = self.cfg.lease_duration_us();
        let Some(ls) = self.groups[g].role.leading_mut() else {
            return;
        };
        if r < ls.lease_min_round || ls.transfer.is_some() {
            return;
        }
        if let Some(&(_, sent)) = ls.rounds.iter().find(|(rr, _)| *rr == r) {
            if sent + dur > ls.lease_expiry_us {
                ls.lease_expiry_us = sent + dur;
                ls.lease_round = r;
            }
        }
    }

    pub(super) fn maybe_commit(&mut self, g: usize) {
        let id = self.id;
        let gr = &self.groups[g];
        let Some(ls) = gr.role.leading() else {
            return;
        };
        let mut m: Vec<u64> = (0..self.cfg.regions)
            .map(|p| {
                if p == id {
                    gr.durable_index
                } else {
                    ls.peers[p as usize].match_index
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
        let Some(ls) = gr.role.leading_mut() else {
            return;
        };
        let ready: Vec<u64> = ls
            .pending_writes
            .range(..=durable)
            .filter(|(_, w)| w.ack_on_durable && !w.acked)
            .map(|(i, _)| *i)
            .collect();
        for i in ready {
            let gr = &mut self.groups[g];
            let commit = gr.commit;
            let Some(ls) = gr.role.leading_mut() else {
                return;
            };
            if i <= commit {
                // Committed meanwhile: answered as it applies.
                continue;
            }
            let ack = AsyncAck {
                index: i,
                term: gr.term,
                at_us: Some(now),
            };
            if self.cfg.mutants.async_ack_forgets_pending {
                gr.async_acked.push_back(ack);
                self.finish_pending_write(g, i);
                continue;
            }
            let Some(w) = ls.pending_writes.get_mut(&i) else {
                continue;
            };
            gr.async_acked.push_back(ack);
            w.acked = true;
            let (origins, resp) = (std::mem::take(&mut w.origins), w.resp.clone());
            for o in origins {
                self.respond(o, resp.clone());
            }
        }
    }

    /// Answer everyone waiting on the pending write at `index`, if any.
    pub(super) fn finish_pending_write(&mut self, g: usize, index: u64) {
        let gr = &mut self.groups[g];
        let commit = gr.commit;
        let Some(ls) = gr.role.leading_mut() else {
            return;
        };
        if let Some(w) = ls.pending_writes.remove(&index) {
            ls.pending_by_request.remove(&w.request_id);
            // A forwarder answers its client at once, but reads its own
            // write (a token, or the config engine's read-back) only once
            // it learns the commit: tell every follower now rather than at
            // the next heartbeat (issue 19 item 7: config writes sent to a
            // non-home region waited ~145 ms, one heartbeat interval).
            let committed = index <= commit;
            if committed && w.origins.iter().any(|o| matches!(o, Origin::Remote(..))) {
                ls.heartbeat_now = true;
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
                        if let Some(ls) = self.groups[g].role.leading_mut() {
                            let ov = &mut ls.overlay;
                            for k in &w.keys {
                                let key = (w.ns.clone(), k.key.clone());
                                if ov.keys.get(&key).is_some_and(|(_, _, i)| *i <= index) {
                                    ov.keys.remove(&key);
                                }
                            }
                            if ov.ns.get(&w.ns).is_some_and(|(_, i)| *i <= index) {
                                ov.ns.remove(&w.ns);
                            }
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
                    if let Some(ls) = self.groups[g].role.leading_mut() {
                        ls.overlay.frozen.remove(ns);
                    }
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
                EntryData::Audit(events) => self.sms[g].apply_audit(events),
                EntryData::ReplaceValues { ns, items } => {
                    self.sms[g].apply_replace(ns, items);
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
        let commit = gr.commit;
        while gr.async_acked.front().is_some_and(|a| a.index <= commit) {
            gr.async_acked.pop_front();
        }
        self.check_token_waits(g as GroupId);
        self.maybe_compact(g);
    }
}
