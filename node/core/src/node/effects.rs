//! A step's outputs: storage batches, effects deferred until their batch is
//! durable (vote replies, append acknowledgements, write acknowledgements),
//! messages, client replies and the one timer, gathered by `finish_step`.

use super::*;

impl Node {
    pub(super) fn persist(&mut self, op: StorageOp, sync: bool) {
        self.step_ops.push(op);
        self.step_sync |= sync;
    }

    pub(super) fn defer(&mut self, d: Deferred) {
        self.deferred.push_back((self.next_persist_id, d));
    }

    pub(super) fn send(&mut self, to: NodeId, msg: Msg) {
        self.send_ref(to, &msg);
    }

    pub(super) fn send_ref(&mut self, to: NodeId, msg: &Msg) {
        let channel = msg.channel();
        match msg.encode() {
            Ok(bytes) => self.out.push(Action::Send { to, channel, bytes }),
            Err(_) => self.halt_unencodable(),
        }
    }

    /// The core could not encode its own data: a bug. Stop (acknowledge
    /// nothing more) rather than send, persist or digest an empty stand-in.
    pub(super) fn halt_unencodable(&mut self) {
        self.stats.encode_errors += 1;
        self.handle_storage_failed(self.now);
    }

    pub(super) fn finish_step(&mut self) {
        // A planted bug (a mutant) is for the simulator's checkers to catch
        // from the outside; these assertions would stop it first.
        let planted = self.cfg.mutants != crate::config::Mutants::default();
        if cfg!(debug_assertions) && !self.halted && !planted {
            for gr in &self.groups {
                gr.check_invariants(self.id);
            }
        }
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
                .filter(|&g| {
                    self.groups[g]
                        .role
                        .leading()
                        .is_some_and(|l| l.heartbeat_now)
                })
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

    pub(super) fn release(&mut self, d: Deferred) {
        match d {
            Deferred::Send(to, msg) => self.send(to, msg),
            Deferred::Respond(origin, resp) => self.respond(origin, resp),
            Deferred::LogDurable { group, index, term } => {
                let g = group as usize;
                if self.groups[g].log.term_at(index) == Some(term) {
                    let gr = &mut self.groups[g];
                    gr.durable_index = gr.durable_index.max(index);
                    if gr.role.is_leader() {
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

    pub(super) fn next_deadline(&self) -> Option<u64> {
        let mut t = u64::MAX;
        for g in &self.groups {
            if let Some(ls) = g.role.leading() {
                t = t.min(g.next_heartbeat_us).min(ls.next_duties_us);
                if let Some(tr) = &ls.transfer {
                    t = t.min(tr.deadline_us);
                }
                for r in &ls.pending_reads {
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

    pub(super) fn respond(&mut self, origin: Origin, resp: ClientResponse) {
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
}
