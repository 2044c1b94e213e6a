//! Request routing between regions: forwarding to a group's leader, the
//! leader's side of a forward, re-routing and parking while no leader is
//! known, and the forward watchdog (probes of the forward path).

use super::*;

impl Node {
    /// The forward watchdog. A forward unanswered for `forward_probe_after_us`
    /// with nothing heard back from its peer since it was sent may just be a
    /// slow request, or a broken path (issue 20: a region's forwards went
    /// unanswered for minutes while Raft traffic flowed). A probe tells them
    /// apart: the peer answers it at once. Unanswered within as long again,
    /// the shell resets the link and the forwards to that peer are answered
    /// now (a read did nothing; a write's outcome is unknown and its id makes
    /// a retry safe) rather than each at its own timeout.
    pub(super) fn forward_watchdog(&mut self) {
        let now = self.now;
        let after = self.cfg.forward_probe_after_us;
        let regions = self.cfg.regions as usize;
        for p in 0..regions {
            if let Some((_, sent)) = self.probes[p] {
                if now >= sent + after {
                    self.probes[p] = None;
                    self.stats.forward_path_resets += 1;
                    self.out.push(Action::ResetPeer { peer: p as NodeId });
                    let stuck: Vec<RequestId> = self
                        .forwarded
                        .iter()
                        .filter(|(_, f)| f.to as usize == p)
                        .map(|(id, _)| *id)
                        .collect();
                    for id in stuck {
                        self.fail_forward(id);
                    }
                }
            }
        }
        // Per peer without a probe under way: the oldest forward sent since
        // anything was last heard from it.
        let mut oldest: Vec<Option<u64>> = vec![None; regions];
        for f in self.forwarded.values() {
            let p = f.to as usize;
            if self.probes[p].is_none() && f.sent_us >= self.forward_heard_us[p] {
                oldest[p] = Some(oldest[p].map_or(f.sent_us, |o| o.min(f.sent_us)));
            }
        }
        self.forward_check_us = None;
        for (p, sent) in oldest.into_iter().enumerate() {
            let Some(sent) = sent else { continue };
            if now >= sent + after {
                let seq = self.next_probe_seq;
                self.next_probe_seq += 1;
                self.probes[p] = Some((seq, now));
                let boot = self.boot;
                self.send(p as NodeId, Msg::Probe { boot, seq });
            } else {
                let at = sent + after;
                self.forward_check_us = Some(self.forward_check_us.map_or(at, |c| c.min(at)));
            }
        }
    }

    /// Answer forwarded request `id` now: a write's outcome is unknown (its
    /// id makes a retry safe); a read did nothing.
    pub(super) fn fail_forward(&mut self, id: RequestId) {
        let is_write = self.forwarded.get(&id).is_some_and(|f| f.is_write());
        let code = if is_write {
            ErrorCode::Indeterminate
        } else {
            ErrorCode::Unavailable
        };
        self.respond(Origin::Local(id), ClientResponse::Error(code));
    }

    /// Group `g`'s leader changed: answer requests forwarded to another node.
    /// A write's outcome is unknown (its id makes a retry safe); a read did
    /// nothing.
    pub(super) fn fail_stale_forwards(&mut self, g: usize) {
        let leader = self.groups[g].leader;
        let stale: Vec<(RequestId, bool)> = self
            .forwarded
            .iter()
            .filter(|(_, f)| f.group as usize == g && Some(f.to) != leader)
            .map(|(id, f)| (*id, f.is_write()))
            .collect();
        for (id, is_write) in stale {
            if is_write || !self.reroute(id) {
                self.fail_forward(id);
            }
        }
    }

    /// Send forwarded request `id` again, to whoever leads its group now
    /// (or park it until someone does). Only for a request that did nothing:
    /// a read, or a write refused with UNAVAILABLE. False if `id` is not a
    /// forwarded request.
    pub(super) fn reroute(&mut self, id: RequestId) -> bool {
        let Some(f) = self.forwarded.remove(&id) else {
            return false;
        };
        if !self.pending.contains_key(&id) {
            return true;
        }
        self.stats.requests_rerouted += 1;
        self.parked.insert(
            id,
            Parked {
                group: f.group,
                refused_by: Some(f.to),
                req: f.req,
            },
        );
        self.unpark();
        true
    }

    /// Send on every parked request whose group now has a leader other than
    /// the node that refused it.
    pub(super) fn unpark(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let ready: Vec<RequestId> = self
            .parked
            .iter()
            .filter(|(_, p)| {
                let gr = &self.groups[p.group as usize];
                if let Some(ls) = gr.role.leading() {
                    // Serve here, unless a hand-over is still under way.
                    ls.transfer.is_none()
                } else {
                    gr.leader
                        .is_some_and(|l| Some(l) != p.refused_by && l != self.id)
                }
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            if let Some(p) = self.parked.remove(&id) {
                self.on_request(Origin::Local(id), p.req);
            }
        }
    }

    pub(super) fn on_forward(
        &mut self,
        from: NodeId,
        boot: u64,
        id: RequestId,
        req: ClientRequest,
    ) {
        let origin = Origin::Remote(from, boot, id);
        if let Err(code) = self.validate(&req) {
            self.respond(origin, ClientResponse::Error(code));
            return;
        }
        match &req {
            ClientRequest::Write {
                ns,
                request_id,
                fingerprint,
                ..
            } => {
                let g = self.home_group(ns) as usize;
                if !self.groups[g].role.is_leader() {
                    // One hop only. "Unavailable" promises the write did not
                    // happen, so first look for it: a duplicate of this message
                    // may have been appended while this node led.
                    let resp = self.lookup_write(g, ns, *request_id, *fingerprint);
                    self.respond(origin, resp);
                    return;
                }
            }
            ClientRequest::Read { ns, .. } => {
                let g = self.home_group(ns) as usize;
                if !self.groups[g].role.is_leader() {
                    self.respond(origin, ClientResponse::Error(ErrorCode::Unavailable));
                    return;
                }
            }
            ClientRequest::ReplaceValues { ns, .. } => {
                let g = self.home_group(ns) as usize;
                if !self.groups[g].role.is_leader() {
                    self.respond(origin, ClientResponse::Error(ErrorCode::Unavailable));
                    return;
                }
            }
            ClientRequest::Audit { group, .. } => {
                if !self.groups[*group as usize].role.is_leader() {
                    self.respond(origin, ClientResponse::Error(ErrorCode::Unavailable));
                    return;
                }
            }
            ClientRequest::TransferLeader { .. } => {}
            _ => {
                self.respond(origin, ClientResponse::Error(ErrorCode::InvalidRequest));
                return;
            }
        }
        self.on_request(origin, req);
    }

    /// What a non-leader can say about a write it is asked to perform: its result
    /// if it applied, "outcome unknown" if it sits uncommitted in the log, else
    /// "unavailable" (it never reached this node's log, so it did not commit here).
    pub(super) fn lookup_write(
        &self,
        g: usize,
        ns: &str,
        request_id: u64,
        fingerprint: u64,
    ) -> ClientResponse {
        if request_id != 0 {
            if let Some(resp) = self.remembered_write(g, ns, request_id, fingerprint) {
                return resp;
            }
            let in_log = self.unapplied_any(
                g,
                |d| matches!(d, EntryData::Write(w) if w.request_id == request_id),
            );
            if in_log {
                return ClientResponse::Error(ErrorCode::Indeterminate);
            }
        }
        ClientResponse::Error(ErrorCode::Unavailable)
    }

    /// The first result of write `request_id` to `ns` in group `g`, if it
    /// applied (or a refusal if the id was used for another write). A
    /// namespace that moved here keeps the results of writes it took in its
    /// earlier homes in those groups' tables (its lineage): every node
    /// replicates every group, so they are looked up there. If this node's
    /// replica of an earlier home has not yet applied everything the
    /// namespace did there, it cannot tell, and says so (UNAVAILABLE: retry;
    /// nothing applied).
    pub(super) fn remembered_write(
        &self,
        g: usize,
        ns: &str,
        request_id: u64,
        fingerprint: u64,
    ) -> Option<ClientResponse> {
        let earlier = self.sms[g].lineage(ns).iter().copied();
        for (home, need) in std::iter::once((g as GroupId, 0)).chain(earlier) {
            let sm = &self.sms[home as usize];
            if sm.revision() < need {
                return Some(ClientResponse::Error(ErrorCode::Unavailable));
            }
            if let Some(r) = sm.request_result(request_id) {
                if r.fingerprint != fingerprint {
                    return Some(ClientResponse::Error(ErrorCode::IdempotencyKeyReused));
                }
                return Some(ClientResponse::Written {
                    versions: r.versions.clone(),
                    token: RevisionToken {
                        group: home,
                        revision: r.revision,
                    },
                    deleted: r.deleted,
                });
            }
        }
        None
    }

    pub(super) fn forward_or_fail(&mut self, g: usize, origin: Origin, req: ClientRequest) {
        match (origin, self.groups[g].leader) {
            (Origin::Local(id), None) if self.pending.contains_key(&id) => {
                // No leader known (an election or a hand-over under way):
                // wait for one rather than refuse. Nothing was sent, so even
                // a write is safe to send later.
                self.parked.insert(
                    id,
                    Parked {
                        group: g as GroupId,
                        refused_by: None,
                        req,
                    },
                );
            }
            (Origin::Local(id), Some(l)) if l != self.id => {
                let boot = self.boot;
                let msg = Msg::Forward { boot, id, req };
                self.send_ref(l, &msg);
                let Msg::Forward { req, .. } = msg else {
                    return;
                };
                let now = self.now;
                self.forwarded.insert(
                    id,
                    Forwarded {
                        group: g as GroupId,
                        to: l,
                        sent_us: now,
                        req,
                    },
                );
                let at = now + self.cfg.forward_probe_after_us;
                self.forward_check_us = Some(self.forward_check_us.map_or(at, |c| c.min(at)));
            }
            _ => self.respond(origin, ClientResponse::Error(ErrorCode::Unavailable)),
        }
    }
}
