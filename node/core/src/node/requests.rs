//! Client requests: validation, dispatch by kind, and the leader's
//! evaluation of writes (idempotency, compares, versions, the overlay of
//! proposed effects) into log entries.

use super::*;

impl Node {
    pub(super) fn validate(&self, req: &ClientRequest) -> Result<(), ErrorCode> {
        let ns_ok = |ns: &str| self.ns_index.contains_key(ns);
        let key_ok = |k: &str| {
            if k.len() > self.cfg.key_bytes_max {
                Err(ErrorCode::KeyTooLong)
            } else if k.is_empty() {
                Err(ErrorCode::InvalidRequest)
            } else {
                Ok(())
            }
        };
        match req {
            ClientRequest::Read { ns, .. } if !ns_ok(ns) => Err(ErrorCode::UnknownNamespace),
            ClientRequest::Read {
                query: ReadQuery::Get { key } | ReadQuery::History { key },
                ..
            } => key_ok(key),
            ClientRequest::Read {
                query: ReadQuery::Scan { prefix, .. },
                ..
            } => {
                if prefix.len() > self.cfg.key_bytes_max {
                    return Err(ErrorCode::KeyTooLong);
                }
                Ok(())
            }
            ClientRequest::Read {
                query:
                    ReadQuery::List {
                        prefix,
                        start_after,
                        limit,
                    },
                ..
            } => {
                if prefix.len() > self.cfg.key_bytes_max
                    || start_after.len() > self.cfg.key_bytes_max
                {
                    return Err(ErrorCode::KeyTooLong);
                }
                if *limit == 0 {
                    return Err(ErrorCode::InvalidRequest);
                }
                Ok(())
            }
            ClientRequest::Write {
                ns,
                compares,
                ops,
                meta,
                audit,
                ..
            } => {
                if !ns_ok(ns) {
                    return Err(ErrorCode::UnknownNamespace);
                }
                if meta.author.len() + meta.message.len() > CHANGE_META_BYTES_MAX
                    || !audit.in_bounds()
                {
                    return Err(ErrorCode::InvalidRequest);
                }
                if ops.is_empty() {
                    return Err(ErrorCode::InvalidRequest);
                }
                if ops.len() + compares.len() > self.cfg.txn_ops_max {
                    return Err(ErrorCode::TooManyOps);
                }
                let mut seen = BTreeSet::new();
                for op in ops {
                    key_ok(op.key())?;
                    if !seen.insert(op.key()) {
                        return Err(ErrorCode::InvalidRequest);
                    }
                    if let WriteOp::Put { value, .. } = op {
                        if value.len() > self.cfg.value_bytes_max {
                            return Err(ErrorCode::ValueTooLarge);
                        }
                    }
                }
                for c in compares {
                    key_ok(&c.key)?;
                }
                Ok(())
            }
            ClientRequest::Watch { ns, prefix, .. } => {
                if !ns_ok(ns) {
                    return Err(ErrorCode::UnknownNamespace);
                }
                if prefix.len() > self.cfg.key_bytes_max {
                    return Err(ErrorCode::KeyTooLong);
                }
                Ok(())
            }
            ClientRequest::TransferLeader { group, to } => {
                if *group >= self.cfg.regions || *to >= self.cfg.regions {
                    return Err(ErrorCode::InvalidRequest);
                }
                Ok(())
            }
            ClientRequest::CreateNamespace { ns, settings, .. } => {
                let name_ok = !ns.is_empty()
                    && ns.len() <= NS_NAME_BYTES_MAX
                    && !ns.starts_with(RESERVED_NS_PREFIX)
                    && ns
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
                if !name_ok || settings.home >= self.cfg.regions {
                    return Err(ErrorCode::InvalidRequest);
                }
                Ok(())
            }
            ClientRequest::MoveNamespace { ns, to } => {
                if *to >= self.cfg.regions {
                    return Err(ErrorCode::InvalidRequest);
                }
                if !ns_ok(ns) || ns.starts_with(RESERVED_NS_PREFIX) {
                    return Err(ErrorCode::UnknownNamespace);
                }
                // Static namespaces are homed by the configuration file.
                if self.static_ns.contains_key(ns) {
                    return Err(ErrorCode::InvalidRequest);
                }
                Ok(())
            }
            ClientRequest::Meta(op) => {
                if crate::meta::op_ok(op) {
                    Ok(())
                } else {
                    Err(ErrorCode::InvalidRequest)
                }
            }
            ClientRequest::Audit { group, events } => {
                if *group >= self.cfg.regions
                    || events.is_empty()
                    || events.len() > crate::audit::AUDIT_BATCH_MAX
                    || !events.iter().all(AuditEvent::in_bounds)
                {
                    return Err(ErrorCode::InvalidRequest);
                }
                Ok(())
            }
            ClientRequest::ReplaceValues { ns, items } => {
                if !ns_ok(ns) || ns.starts_with(RESERVED_NS_PREFIX) {
                    return Err(ErrorCode::UnknownNamespace);
                }
                if items.is_empty() || items.len() > crate::types::REPLACE_ITEMS_MAX {
                    return Err(ErrorCode::InvalidRequest);
                }
                for it in items {
                    key_ok(&it.key)?;
                    if it.value.len() > self.cfg.value_bytes_max {
                        return Err(ErrorCode::ValueTooLarge);
                    }
                }
                Ok(())
            }
            ClientRequest::AuditQuery { group, filter, .. } => {
                if *group >= self.cfg.regions || !filter.in_bounds() {
                    return Err(ErrorCode::InvalidRequest);
                }
                Ok(())
            }
            ClientRequest::MetaGranted { .. } | ClientRequest::CancelWatch { .. } => Ok(()),
        }
    }

    pub(super) fn on_client(&mut self, req: RequestId, request: ClientRequest) {
        // System namespaces are written only by the core itself (the catalog
        // through CreateNamespace), never by a client's write.
        let reserved = matches!(&request, ClientRequest::Write { ns, .. } if ns.starts_with(RESERVED_NS_PREFIX));
        let checked = if reserved {
            Err(ErrorCode::InvalidRequest)
        } else {
            self.validate(&request)
        };
        let request = match request {
            ClientRequest::CreateNamespace {
                ns,
                settings,
                request_id,
                time_ms,
            } => {
                let Ok(value) = settings.encode() else {
                    self.out.push(Action::Reply {
                        req,
                        resp: ClientResponse::Error(ErrorCode::Internal),
                    });
                    return;
                };
                ClientRequest::Write {
                    ns: CATALOG_NS.to_string(),
                    request_id,
                    fingerprint: fnv1a(format!("{ns}\0").as_bytes()) ^ fnv1a(&value),
                    compares: vec![Compare {
                        key: ns.clone(),
                        version: 0,
                    }],
                    ns_revision: None,
                    ops: vec![WriteOp::Put { key: ns, value }],
                    meta: ChangeMeta {
                        time_ms,
                        ..ChangeMeta::default()
                    },
                    audit: self.internal_audit("namespace.create"),
                }
            }
            ClientRequest::MoveNamespace { ns, to } if checked.is_ok() => {
                match self.move_request(ns, to) {
                    Ok(r) => r,
                    Err(resp) => {
                        self.out.push(Action::Reply { req, resp: *resp });
                        return;
                    }
                }
            }
            other => other,
        };
        if let Err(code) = checked {
            self.stats.client_rejected += 1;
            self.out.push(Action::Reply {
                req,
                resp: ClientResponse::Error(code),
            });
            return;
        }
        match request {
            ClientRequest::Watch {
                ns,
                prefix,
                start_revision,
            } => self.watch(req, ns, prefix, start_revision),
            ClientRequest::CancelWatch { watch } => {
                let resp = if self.watchers.remove(&watch).is_some() {
                    ClientResponse::Done
                } else {
                    ClientResponse::Error(ErrorCode::UnknownWatch)
                };
                self.out.push(Action::Reply { req, resp });
            }
            ClientRequest::MetaGranted {
                principal,
                permission,
            } => {
                let g = self.meta.granted(&principal, &permission);
                self.out.push(Action::Reply {
                    req,
                    resp: ClientResponse::Granted(g),
                });
            }
            ClientRequest::AuditQuery {
                group,
                filter,
                after_seq,
                limit,
            } => {
                let page =
                    self.sms[group as usize]
                        .audit()
                        .query(&filter, after_seq, limit as usize);
                self.out.push(Action::Reply {
                    req,
                    resp: ClientResponse::AuditPage(Box::new(page)),
                });
            }
            other => {
                if self.pending.len() >= self.cfg.pending_requests_max {
                    self.out.push(Action::Reply {
                        req,
                        resp: ClientResponse::Error(ErrorCode::Overloaded),
                    });
                    return;
                }
                let deadline = self.now + self.cfg.request_timeout_us;
                self.pending.insert(req, deadline);
                self.deadlines.insert((deadline, req));
                self.on_request(Origin::Local(req), other);
            }
        }
    }

    pub(super) fn on_request(&mut self, origin: Origin, req: ClientRequest) {
        match req {
            ClientRequest::Read {
                ns,
                query,
                consistency,
                token,
            } => {
                let mode = self.ns_index[&ns].mode;
                let g = self.home_group(&ns);
                let gi = g as usize;
                // A replica of a namespace's new home that has not applied the
                // copy yet does not hold it: wait for it as for a token. (A
                // linearizable read goes to the leader, which has applied it.)
                let floor = self.ns_floor.get(&ns).copied().unwrap_or(0);
                let token = if consistency != Consistency::Linearizable
                    && self.sms[gi].revision() < floor
                {
                    let Origin::Local(_) = origin else {
                        self.respond(origin, ClientResponse::Error(ErrorCode::Unavailable));
                        return;
                    };
                    Some(RevisionToken {
                        group: g,
                        revision: token
                            .filter(|t| t.group == g)
                            .map_or(floor, |t| t.revision.max(floor)),
                    })
                } else {
                    token
                };
                if let (Some(t), Origin::Local(id)) = (token, origin) {
                    if t.group == g
                        && t.revision > self.sms[gi].revision()
                        && consistency != Consistency::Linearizable
                    {
                        let deadline_us = self.now + self.cfg.token_wait_max_us;
                        self.token_waits.push(TokenWait {
                            req: id,
                            group: g,
                            revision: t.revision,
                            deadline_us,
                            ns,
                            query,
                            consistency,
                        });
                        return;
                    }
                }
                self.read(
                    gi,
                    origin,
                    ns,
                    query,
                    consistency,
                    matches!(mode, ReplicationMode::Async { .. }),
                );
            }
            ClientRequest::Write {
                ns,
                request_id,
                fingerprint,
                compares,
                ns_revision,
                ops,
                meta,
                audit,
            } => {
                let gi = self.home_group(&ns) as usize;
                let w = ProposedWrite {
                    ns,
                    request_id,
                    fingerprint,
                    compares,
                    ns_revision,
                    ops,
                    meta,
                    audit,
                };
                if self.groups[gi].role.is_leader() {
                    self.leader_write(gi, origin, w);
                } else {
                    self.forward_or_fail(gi, origin, w.into_request());
                }
            }
            ClientRequest::Audit { group, events } => {
                let gi = group as usize;
                if self.groups[gi].role.is_leader() {
                    self.leader_audit(gi, origin, events);
                } else {
                    self.forward_or_fail(gi, origin, ClientRequest::Audit { group, events });
                }
            }
            ClientRequest::ReplaceValues { ns, items } => {
                let gi = self.home_group(&ns) as usize;
                if self.groups[gi].role.is_leader() {
                    self.leader_replace(gi, origin, ns, items);
                } else {
                    self.forward_or_fail(gi, origin, ClientRequest::ReplaceValues { ns, items });
                }
            }
            ClientRequest::TransferLeader { group, to } => {
                let gi = group as usize;
                if self.groups[gi].role.is_leader() {
                    if to != self.id {
                        self.start_transfer(gi, to);
                    }
                    self.respond(origin, ClientResponse::Done);
                } else {
                    self.forward_or_fail(gi, origin, ClientRequest::TransferLeader { group, to });
                }
            }
            ClientRequest::Meta(op) => {
                if !self.meta_ready {
                    self.respond(origin, ClientResponse::Error(ErrorCode::Unavailable));
                    return;
                }
                match self.meta.apply(&op) {
                    Ok(()) => {
                        let bytes = self.meta.take_unsaved();
                        self.persist(StorageOp::MetaChunk { bytes }, true);
                        // The shell's view changes at once: a revocation
                        // denies before it is even durable (denying early is
                        // safe; the answer waits for durability).
                        self.out.push(Action::Observe(Observation::MetaChanged));
                        self.defer(Deferred::Respond(origin, ClientResponse::Done));
                        self.meta_send_all(None);
                    }
                    Err(_) => {
                        self.stats.meta_errors += 1;
                        self.respond(origin, ClientResponse::Error(ErrorCode::InvalidRequest));
                    }
                }
            }
            ClientRequest::Watch { .. }
            | ClientRequest::CancelWatch { .. }
            | ClientRequest::CreateNamespace { .. }
            | ClientRequest::MoveNamespace { .. }
            | ClientRequest::AuditQuery { .. }
            | ClientRequest::MetaGranted { .. } => {
                self.respond(origin, ClientResponse::Error(ErrorCode::InvalidRequest));
            }
        }
    }

    pub(super) fn leader_write(&mut self, g: usize, origin: Origin, w: ProposedWrite) {
        let Some(ls) = self.groups[g].role.leading() else {
            debug_assert!(false, "leader_write on a node that does not lead");
            self.respond(origin, ClientResponse::Error(ErrorCode::Unavailable));
            return;
        };
        if ls.transfer.is_some() {
            // Handing leadership over: this write waits for the new leader
            // instead of failing (a forwarder re-routes the refusal below).
            if let Origin::Local(id) = origin {
                if self.pending.contains_key(&id) {
                    let req = w.into_request();
                    let parked = Parked {
                        group: g as GroupId,
                        refused_by: Some(self.id),
                        req,
                    };
                    self.parked.insert(id, parked);
                    return;
                }
            }
        }
        let ProposedWrite {
            ns,
            request_id,
            fingerprint,
            compares,
            ns_revision,
            ops,
            meta,
            audit,
        } = w;
        let NsEntry {
            mode, retention, ..
        } = self.ns_index[&ns];
        // Idempotency first: a retried or duplicated write never applies twice,
        // and learns the first copy's fate, not a refusal claiming nothing happened.
        if request_id != 0 && !self.cfg.mutants.retry_ignores_table {
            if let Some(resp) = self.remembered_write(g, &ns, request_id, fingerprint) {
                self.note_replay(g, request_id, true, &resp);
                self.respond(origin, resp);
                return;
            }
            let Some(ls) = self.groups[g].role.leading_mut() else {
                return;
            };
            if let Some(index) = ls.pending_by_request.get(&request_id).copied() {
                if let Some(w) = ls.pending_writes.get_mut(&index) {
                    if w.fingerprint != fingerprint {
                        let resp = ClientResponse::Error(ErrorCode::IdempotencyKeyReused);
                        self.respond(origin, resp);
                        return;
                    }
                    if w.acked {
                        // Answered already (an async write, durable here):
                        // the retry gets the same answer at once.
                        let resp = w.resp.clone();
                        self.respond(origin, resp);
                    } else if !w.origins.contains(&origin) {
                        w.origins.push(origin);
                    }
                    self.out.push(Action::Observe(Observation::WriteReplayed {
                        group: g as GroupId,
                        request_id,
                        from_table: false,
                    }));
                }
                return;
            }
        }
        let now = self.now;
        let gr = &self.groups[g];
        let Some(ls) = gr.role.leading() else {
            return;
        };
        if ls.transfer.is_some() {
            self.respond(origin, ClientResponse::Error(ErrorCode::Unavailable));
            return;
        }
        let frozen = self.sms[g].frozen(&ns).is_some() || ls.overlay.frozen.contains(&ns);
        if (frozen && !self.cfg.mutants.write_after_freeze) || self.sms[g].adopting(&ns).is_some() {
            self.respond(origin, ClientResponse::Error(ErrorCode::NamespaceMoving));
            return;
        }
        // A new leader that has not applied the copy of a namespace that moved
        // here would compute versions without it (the overlay holds writes
        // only): refuse until its no-op, and with it the copy, applied.
        if self.sms[g].revision() < self.ns_floor.get(&ns).copied().unwrap_or(0) {
            self.respond(origin, ClientResponse::Error(ErrorCode::Unavailable));
            return;
        }
        if gr.log.last_index().saturating_sub(gr.commit) >= self.cfg.uncommitted_entries_max {
            self.respond(origin, ClientResponse::Error(ErrorCode::Overloaded));
            return;
        }
        if let ReplicationMode::Async { rpo_budget_us } = mode {
            let over = |a: &AsyncAck| {
                a.at_us
                    .is_none_or(|t| now.saturating_sub(t) > rpo_budget_us)
            };
            if !self.cfg.mutants.rpo_budget_ignored && gr.async_acked.front().is_some_and(over) {
                self.respond(origin, ClientResponse::Error(ErrorCode::RpoBudgetExceeded));
                return;
            }
        }
        let mut conflict_index = None;
        for c in &compares {
            let (v, i) = self.overlay_version(g, &ns, &c.key);
            if v != c.version {
                conflict_index = Some(conflict_index.unwrap_or(0).max(i));
            }
        }
        if let Some(want) = ns_revision {
            let proposed = ls.overlay.ns.get(&ns).copied();
            let (have, i) = match proposed {
                Some((rev, index)) => (rev, index),
                None => (self.sms[g].ns_revision(&ns), 0),
            };
            if have != want {
                conflict_index = Some(conflict_index.unwrap_or(0).max(i));
            }
        }
        if let Some(min_index) = conflict_index {
            // A failed compare is a read: answer only once what it saw is committed.
            self.leader_read(g, origin, ReadWhat::Conflict, min_index);
            return;
        }
        // A delete of a key that does not exist changes nothing (as etcd's):
        // no version, no history, and its reply version is the key's current
        // one. Keys are distinct within a write (`validate`), so each op sees
        // the state before the write.
        let mut keys: Vec<KeyEffect> = Vec::with_capacity(ops.len());
        let mut versions: Vec<u64> = Vec::with_capacity(ops.len());
        let mut observed_index = 0;
        for op in ops {
            let (v, live, i) = self.overlay_key(g, &ns, op.key());
            match op {
                WriteOp::Put { key, value } => keys.push(KeyEffect {
                    key,
                    value: Some(value),
                    version: v + 1,
                }),
                WriteOp::Delete { key } if live => keys.push(KeyEffect {
                    key,
                    value: None,
                    version: v + 1,
                }),
                WriteOp::Delete { .. } => {
                    versions.push(v);
                    observed_index = observed_index.max(i);
                    continue;
                }
            }
            versions.push(v + 1);
        }
        if keys.is_empty() {
            // Nothing to write: the answer is a read of the keys' absence,
            // given once what it saw is committed.
            self.leader_read(g, origin, ReadWhat::Unchanged { versions }, observed_index);
            return;
        }
        let deleted = keys.iter().filter(|k| k.value.is_none()).count() as u32;
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        let gr = &mut self.groups[g];
        let index = gr.log.last_index() + 1;
        let Role::Leader(ls) = &mut gr.role else {
            return;
        };
        let ov = &mut ls.overlay;
        ov.revision += 1;
        let revision = ov.revision;
        ov.ns.insert(ns.clone(), (revision, index));
        ov.time_ms = ov.time_ms.max(meta.time_ms);
        let meta = ChangeMeta {
            time_ms: ov.time_ms,
            ..meta
        };
        for k in &keys {
            ov.keys.insert(
                (ns.clone(), k.key.clone()),
                (k.version, k.value.clone(), index),
            );
        }
        let effect = WriteEffect {
            ns,
            revision,
            request_id,
            fingerprint,
            keys,
            reply_versions: versions.clone(),
            meta,
            retention,
            audit: *audit,
        };
        let appended = self.append_local(g, EntryData::Write(effect));
        debug_assert_eq!(appended, index);
        let ack_on_durable =
            matches!(mode, ReplicationMode::Async { .. }) || self.cfg.mutants.ack_before_quorum;
        let resp = ClientResponse::Written {
            versions,
            token: RevisionToken {
                group: g as GroupId,
                revision,
            },
            deleted,
        };
        self.await_entry(
            g,
            index,
            PendingWrite {
                origins: vec![origin],
                request_id,
                fingerprint,
                resp,
                ack_on_durable,
                acked: false,
            },
        );
    }

    /// Leader: answer `w`'s origins once the entry at `index` (just
    /// appended) commits, and send it to the peers.
    fn await_entry(&mut self, g: usize, index: u64, w: PendingWrite) {
        let Some(ls) = self.groups[g].role.leading_mut() else {
            return;
        };
        if w.request_id != 0 {
            ls.pending_by_request.insert(w.request_id, index);
        }
        ls.pending_writes.insert(index, w);
        self.replicate_new(g, index);
    }

    /// Leader: append a replacement of stored versions' bytes; answered
    /// `Done` once it commits (each item applies only where its version
    /// still holds the expected bytes). Refused while the namespace moves:
    /// the copy to its new home would miss it.
    fn leader_replace(
        &mut self,
        g: usize,
        origin: Origin,
        ns: String,
        items: Vec<crate::types::ValuePatch>,
    ) {
        if self.sms[g].frozen(&ns).is_some() {
            self.respond(origin, ClientResponse::Error(ErrorCode::NamespaceMoving));
            return;
        }
        self.leader_append_done(g, origin, EntryData::ReplaceValues { ns, items });
    }

    /// Leader: append a batch of audit records; answered `Done` once it
    /// commits. (A batch whose leader is deposed first is answered
    /// `Indeterminate`: the shell resends it, so records of events other
    /// than writes are kept at least once.)
    fn leader_audit(&mut self, g: usize, origin: Origin, events: Vec<AuditEvent>) {
        self.leader_append_done(g, origin, EntryData::Audit(events));
    }

    /// Leader: append `data` (no revision, no idempotency id) and answer
    /// `Done` once it commits; refused while no longer leading, handing
    /// over, or with too much uncommitted.
    fn leader_append_done(&mut self, g: usize, origin: Origin, data: EntryData) {
        let gr = &self.groups[g];
        let Some(ls) = gr.role.leading() else {
            self.respond(origin, ClientResponse::Error(ErrorCode::Unavailable));
            return;
        };
        if ls.transfer.is_some() {
            self.respond(origin, ClientResponse::Error(ErrorCode::Unavailable));
            return;
        }
        if gr.log.last_index().saturating_sub(gr.commit) >= self.cfg.uncommitted_entries_max {
            self.respond(origin, ClientResponse::Error(ErrorCode::Overloaded));
            return;
        }
        let index = self.append_local(g, data);
        self.await_entry(
            g,
            index,
            PendingWrite {
                origins: vec![origin],
                request_id: 0,
                fingerprint: 0,
                resp: ClientResponse::Done,
                ack_on_durable: false,
                acked: false,
            },
        );
    }

    /// Tell the observer a retried write was answered from the table (an
    /// id reused for another write is a refusal, not a replay).
    fn note_replay(&mut self, g: usize, request_id: u64, from_table: bool, resp: &ClientResponse) {
        if matches!(resp, ClientResponse::Written { .. }) {
            self.out.push(Action::Observe(Observation::WriteReplayed {
                group: g as GroupId,
                request_id,
                from_table,
            }));
        }
    }

    pub(super) fn overlay_version(&self, g: usize, ns: &str, key: &str) -> (u64, u64) {
        let (v, _, i) = self.overlay_key(g, ns, key);
        (v, i)
    }

    /// A key's version and whether it is live, counting proposed writes,
    /// and the log index that state comes from (0: applied).
    pub(super) fn overlay_key(&self, g: usize, ns: &str, key: &str) -> (u64, bool, u64) {
        let proposed = self.groups[g]
            .role
            .leading()
            .and_then(|ls| ls.overlay.keys.get(&(ns.to_string(), key.to_string())));
        match proposed {
            Some((v, value, i)) => (*v, value.is_some(), *i),
            None => {
                let kv = self.sms[g].get(ns, key);
                (kv.version, kv.value.is_some(), 0)
            }
        }
    }

    /// Leader: append an entry and send it to the peers that are caught up.
    pub(super) fn propose(&mut self, g: usize, data: EntryData) {
        let index = self.append_local(g, data);
        self.replicate_new(g, index);
    }

    /// Whether an entry in group `g`'s log beyond what it applied matches.
    pub(super) fn unapplied_any(&self, g: usize, pred: impl Fn(&EntryData) -> bool) -> bool {
        let gr = &self.groups[g];
        gr.log.iter_from(gr.applied + 1).any(|e| pred(&e.data))
    }

    /// Leader: send the entry just appended at `index` to every peer that is
    /// caught up to it (the others get it with their next append).
    pub(super) fn replicate_new(&mut self, g: usize, index: u64) {
        for p in 0..self.cfg.regions {
            let Some(ls) = self.groups[g].role.leading() else {
                return;
            };
            let peer = &ls.peers[p as usize];
            if p != self.id && peer.sent_index + 1 == index && peer.snap_progress.is_none() {
                self.send_append(g, p, index);
            }
        }
    }
}
