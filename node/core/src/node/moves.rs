//! The namespace catalog and moving a namespace's home region: the catalog
//! index, the move's logged steps (freeze, copy, flip, drop) driven from
//! applied state, and watchers that follow a moved namespace.

use super::*;

impl Node {
    /// Rebuild the namespace index: the static namespaces of the configuration
    /// plus the catalog as group 0 has applied it. A catalog entry never
    /// overrides a static namespace, and an undecodable one is skipped (it
    /// cannot be written: only `CreateNamespace` writes the catalog).
    pub(super) fn refresh_catalog(&mut self) {
        let mut index = self.static_ns.clone();
        self.moves.clear();
        self.ns_floor.clear();
        for kv in self.sms[0].scan(CATALOG_NS, "") {
            let Some(s) = kv.value.as_deref().and_then(NsSettings::decode) else {
                continue;
            };
            if s.home >= self.cfg.regions || self.static_ns.contains_key(&kv.key) {
                continue;
            }
            if let Some(to) = s.moving_to.filter(|&t| t < self.cfg.regions && t != s.home) {
                let m = Move {
                    from: s.home,
                    to,
                    tenure: s.adopt_revision,
                };
                self.moves.insert(kv.key.clone(), m);
            }
            if s.adopt_revision > 0 {
                self.ns_floor.insert(kv.key.clone(), s.adopt_revision);
            }
            index.entry(kv.key).or_insert(NsEntry {
                home: s.home,
                mode: s.mode,
                retention: Retention {
                    versions_max: s.history_versions_max,
                    age_ms_max: s.history_age_ms_max,
                },
            });
        }
        self.ns_index = index;
        if !self.watchers.is_empty() {
            self.watchers_misplaced = true;
        }
    }

    /// The group that serves a (validated) namespace here: the catalog's home,
    /// or, during a move, the new home as soon as this node applied the
    /// complete copy there. The old home is frozen for good by then, so the
    /// copy is the namespace; the catalog catches up a moment later, and
    /// routing by it alone would refuse requests in between.
    pub(super) fn home_group(&self, ns: &str) -> GroupId {
        let g = self.ns_index[ns].home;
        match self.moves.get(ns) {
            // A copy adopted after the old home's tenure began is this move's
            // (a replica lagging in the new home may still show an older one).
            Some(&Move { from, to, tenure })
                if from == g
                    && self.sms[to as usize]
                        .adopted(ns)
                        .is_some_and(|(src, _, rev)| src == from && rev > tenure) =>
            {
                to
            }
            _ => g,
        }
    }

    /// Leads group `g` and may propose on its behalf.
    pub(super) fn leads_ready(&self, g: usize) -> bool {
        let gr = &self.groups[g];
        gr.role.leading().is_some_and(|ls| ls.transfer.is_none()) && self.noop_committed(gr)
    }

    /// Push the steps of every namespace move this node's groups own: the old
    /// home's leader freezes the namespace; the new home's leader, once its own
    /// replica of the old home applied the freeze (so that replica's copy is
    /// final), copies it through its log chunk by chunk, and on its heartbeat
    /// tick points the catalog at the new home; on its tick, an old home's
    /// leader drops a copy whose move completed. Every step is idempotent and
    /// re-derived from applied state, so a change of leader anywhere resumes
    /// where it stopped.
    pub(super) fn drive_moves(&mut self, tick: Option<usize>) {
        let moves: Vec<(String, GroupId, GroupId, u64)> = self
            .moves
            .iter()
            .map(|(n, m)| (n.clone(), m.from, m.to, m.tenure))
            .collect();
        for (ns, from, to, tenure) in moves {
            let (f, t) = (from as usize, to as usize);
            let freeze_proposed = |gr: &Group| {
                gr.role
                    .leading()
                    .is_some_and(|ls| ls.overlay.frozen.contains(&ns))
            };
            if self.leads_ready(f)
                && self.sms[f].frozen(&ns).is_none()
                && !freeze_proposed(&self.groups[f])
            {
                if let Some(ls) = self.groups[f].role.leading_mut() {
                    ls.overlay.frozen.insert(ns.clone());
                }
                self.propose(
                    f,
                    EntryData::Freeze {
                        ns: ns.clone(),
                        to,
                        tenure,
                    },
                );
            }
            let Some((frozen_to, freeze_rev)) = self.sms[f].frozen(&ns) else {
                continue;
            };
            if !self.leads_ready(t) || frozen_to != to {
                continue;
            }
            if let Some((src, _, adopt_rev)) = self.sms[t].adopted(&ns) {
                if src == from && adopt_rev > freeze_rev {
                    if tick == Some(t) {
                        self.propose_move_done(&ns, to, adopt_rev);
                    }
                    continue;
                }
            }
            let in_flight =
                self.unapplied_any(t, |d| matches!(d, EntryData::Adopt(a) if a.ns == ns));
            // Nothing to copy from an old home that dropped its copy: that
            // freeze belongs to a move already complete (a stale catalog).
            if in_flight || !self.sms[f].holds_data(&ns) {
                continue;
            }
            let after = match self.sms[t].adopting(&ns) {
                Some((src, frz, cursor)) if *src == from && *frz == freeze_rev => {
                    Some(cursor.clone())
                }
                _ => None,
            };
            let first = after.is_none();
            let (versions, done) = self.sms[f].adopt_chunk(
                &ns,
                after.flatten().as_ref(),
                self.cfg.append_bytes_max / 2,
            );
            let src_revision = self.sms[f].revision();
            let src_time_ms = self.sms[f].time_ms();
            let last_ns_revision = done.then(|| self.sms[f].ns_revision(&ns));
            // Where the namespace took writes before, for retries that reach
            // the new home (read from this node's replica of the old home,
            // which applied the freeze: its lineage is final).
            let mut lineage: Vec<(GroupId, u64)> = Vec::new();
            if done {
                lineage.push((from, freeze_rev));
                for &(h, rev) in self.sms[f].lineage(&ns) {
                    if h != to && lineage.iter().all(|&(x, _)| x != h) {
                        lineage.push((h, rev));
                    }
                }
            }
            let Some(ls) = self.groups[t].role.leading_mut() else {
                continue;
            };
            let ov = &mut ls.overlay;
            // The first chunk jumps past every revision the namespace had (or
            // any token of it showed) in its old home: see `AdoptEffect`.
            let revision = if first {
                ov.revision.max(src_revision) + 1
            } else {
                ov.revision + 1
            };
            ov.revision = revision;
            ov.time_ms = ov.time_ms.max(src_time_ms);
            let effect = AdoptEffect {
                ns,
                from,
                revision,
                freeze_revision: freeze_rev,
                first,
                last_ns_revision,
                time_ms: ov.time_ms,
                versions,
                lineage,
            };
            self.propose(t, EntryData::Adopt(effect));
        }
        // The old home drops its frozen copy once this node's replica of the
        // new home applied the complete copy of this very move (adopted after
        // the freeze): local state only, so a stale catalog cannot drop a
        // copy that is still being read.
        if let Some(g) = tick.filter(|&g| self.leads_ready(g)) {
            let done: Vec<(String, u64)> = self.sms[g]
                .frozen_namespaces()
                .filter_map(|(ns, to, freeze_rev)| {
                    let copied = self.sms[to as usize]
                        .adopted(ns)
                        .is_some_and(|(src, _, rev)| src as usize == g && rev > freeze_rev);
                    (copied && self.sms[g].holds_data(ns)).then(|| (ns.clone(), freeze_rev))
                })
                .collect();
            for (ns, freeze_revision) in done {
                if !self.unapplied_any(
                    g,
                    |d| matches!(d, EntryData::Drop { ns: n, .. } if *n == ns),
                ) {
                    self.propose(
                        g,
                        EntryData::Drop {
                            ns,
                            freeze_revision,
                        },
                    );
                }
            }
        }
    }

    /// The new home holds the whole namespace: point the catalog at it (a
    /// compare-and-set on the catalog entry, so a repeat is harmless).
    pub(super) fn propose_move_done(&mut self, ns: &str, to: GroupId, adopt_revision: u64) {
        let cur = self.sms[0].get(CATALOG_NS, ns);
        let Some(settings) = cur.value.as_deref().and_then(NsSettings::decode) else {
            return;
        };
        if settings.moving_to != Some(to) {
            return;
        }
        let settings = NsSettings {
            home: to,
            moving_to: None,
            adopt_revision,
            ..settings
        };
        let Ok(value) = settings.encode() else {
            self.halt_unencodable();
            return;
        };
        let req = ClientRequest::Write {
            ns: CATALOG_NS.to_string(),
            request_id: 0,
            fingerprint: 0,
            compares: vec![Compare {
                key: ns.to_string(),
                version: cur.version,
            }],
            ns_revision: None,
            audit: self.internal_audit("namespace.move.complete"),
            ops: vec![WriteOp::Put {
                key: ns.to_string(),
                value,
            }],
            meta: ChangeMeta::default(),
        };
        // Nobody waits for the answer: the next tick looks at the catalog again.
        self.next_internal_req += 1;
        self.on_request(Origin::Local(self.next_internal_req), req);
    }

    /// Move watchers of a namespace whose home changed to its new home, once
    /// this node applied both the freeze in the old home (the watcher saw every
    /// change made there) and the copy in the new one; deliver what the new
    /// home changed since the copy.
    pub(super) fn migrate_watchers(&mut self) {
        let mut still = false;
        let ids: Vec<RequestId> = self
            .watchers
            .iter()
            .filter(|(_, w)| self.ns_index.contains_key(&w.ns) && self.home_group(&w.ns) != w.group)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(w) = self.watchers.get(&id) else {
                continue;
            };
            let (old, new) = (w.group as usize, self.home_group(&w.ns) as usize);
            let floor = self.ns_floor.get(&w.ns).copied().unwrap_or(0);
            if self.sms[old].frozen(&w.ns).is_none()
                || self.sms[new].revision() < floor
                || self.sms[new].adopting(&w.ns).is_some()
            {
                still = true;
                continue;
            }
            let since = self.sms[new]
                .adopted(&w.ns)
                .map_or(floor, |(_, _, rev)| rev);
            let sm = &self.sms[new];
            let rev = sm.revision();
            let resp = match sm.changes_since(&w.ns, &w.prefix, since) {
                Some(changes) => {
                    for (revision, events) in super::watches::group_by_revision(changes) {
                        self.out.push(Action::Reply {
                            req: id,
                            resp: ClientResponse::WatchEvents { events, revision },
                        });
                    }
                    None
                }
                None => Some(ClientResponse::WatchResync {
                    snapshot: sm.scan(&w.ns, &w.prefix),
                    revision: rev,
                }),
            };
            if let Some(resp) = resp {
                self.out.push(Action::Reply { req: id, resp });
            }
            if let Some(w) = self.watchers.get_mut(&id) {
                w.group = new as GroupId;
                w.last_revision = rev;
            }
        }
        self.watchers_misplaced = still;
    }

    /// Why group `g` cannot serve a read of `ns` at this consistency here, if
    /// it cannot: the namespace moves away (only stale reads of a still-held
    /// frozen copy are safe: the new home may already take writes), or is
    /// being copied in.
    pub(super) fn ns_unservable(
        &self,
        g: usize,
        ns: &str,
        consistency: Consistency,
    ) -> Option<ErrorCode> {
        let sm = &self.sms[g];
        if sm.frozen(ns).is_some() && (consistency != Consistency::Stale || !sm.holds_data(ns)) {
            return Some(ErrorCode::NamespaceMoving);
        }
        if sm.adopting(ns).is_some() {
            return Some(ErrorCode::NamespaceMoving);
        }
        None
    }

    /// A move request as the catalog write that starts it, or the answer at
    /// once (already there; already moving).
    pub(super) fn move_request(
        &self,
        ns: String,
        to: GroupId,
    ) -> Result<ClientRequest, Box<ClientResponse>> {
        let cur = self.sms[0].get(CATALOG_NS, &ns);
        let Some(settings) = cur.value.as_deref().and_then(NsSettings::decode) else {
            return Err(Box::new(ClientResponse::Error(ErrorCode::UnknownNamespace)));
        };
        if settings.moving_to.is_some() {
            return Err(Box::new(ClientResponse::Error(ErrorCode::NamespaceMoving)));
        }
        if settings.home == to {
            return Err(Box::new(ClientResponse::Done));
        }
        let settings = NsSettings {
            moving_to: Some(to),
            ..settings
        };
        let value = settings
            .encode()
            .map_err(|_| Box::new(ClientResponse::Error(ErrorCode::Internal)))?;
        // Compare on the version read here: a catalog replica that is behind
        // gets a conflict, never a move computed from stale settings.
        Ok(ClientRequest::Write {
            ns: CATALOG_NS.to_string(),
            request_id: 0,
            fingerprint: 0,
            compares: vec![Compare {
                key: ns.clone(),
                version: cur.version,
            }],
            ns_revision: None,
            audit: self.internal_audit("namespace.move"),
            ops: vec![WriteOp::Put { key: ns, value }],
            meta: ChangeMeta::default(),
        })
    }
}
