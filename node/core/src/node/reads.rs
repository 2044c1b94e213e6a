//! Reads: serving at the consistency asked for (stale, bounded,
//! linearizable via lease or ReadIndex round), token waits for
//! read-your-writes, and answering from a state machine.

use super::*;

impl Node {
    pub(super) fn serve_reads(&mut self, g: usize) {
        let gr = &self.groups[g];
        let waiting = gr
            .role
            .leading()
            .is_some_and(|ls| !ls.pending_reads.is_empty());
        if !waiting || !self.noop_committed(gr) {
            return;
        }
        let lease = self.lease_valid(gr);
        let round = self.majority_round(g);
        let commit = gr.commit;
        let Some(ls) = self.groups[g].role.leading_mut() else {
            return;
        };
        let (ready, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut ls.pending_reads)
            .into_iter()
            .partition(|r| commit >= r.min_index && (lease || round >= r.round));
        ls.pending_reads = keep;
        for r in ready {
            // A move may have frozen (or even dropped) the namespace here while
            // the read waited for its round: check again as it is served.
            let unservable = match &r.what {
                ReadWhat::Query { ns, .. } => self.ns_unservable(g, ns, Consistency::Linearizable),
                ReadWhat::Conflict | ReadWhat::Unchanged { .. } => None,
            };
            let resp = match unservable {
                Some(code) => ClientResponse::Error(code),
                None => self.read_now(g, &r.what),
            };
            self.respond(r.origin, resp);
        }
    }

    pub(super) fn read_now(&self, g: usize, what: &ReadWhat) -> ClientResponse {
        // A frozen namespace's tokens stop at its freeze: later revisions of
        // this group say nothing about it, and its new home's revisions start
        // above the freeze (see `AdoptEffect`).
        let frozen_at = match what {
            ReadWhat::Query { ns, .. } => self.sms[g].frozen(ns).map(|(_, rev)| rev),
            ReadWhat::Conflict | ReadWhat::Unchanged { .. } => None,
        };
        let token = RevisionToken {
            group: g as GroupId,
            revision: frozen_at.map_or(self.sms[g].revision(), |f| f.min(self.sms[g].revision())),
        };
        match what {
            ReadWhat::Conflict => ClientResponse::Conflict { token },
            ReadWhat::Unchanged { versions } => ClientResponse::Unchanged {
                versions: versions.clone(),
                token,
            },
            ReadWhat::Query {
                ns,
                query: ReadQuery::Get { key },
                overlay,
            } => {
                let ov = self.groups[g].role.leading().map(|ls| &ls.overlay);
                if let Some(ov) = ov.filter(|_| *overlay) {
                    if let Some((version, value, _)) = ov.keys.get(&(ns.clone(), key.clone())) {
                        let kv = KeyValue {
                            key: key.clone(),
                            value: value.clone(),
                            version: *version,
                            mod_revision: 0,
                            meta: ChangeMeta::default(),
                        };
                        let token = RevisionToken {
                            group: g as GroupId,
                            revision: ov.revision,
                        };
                        return ClientResponse::Value { kv, token };
                    }
                }
                ClientResponse::Value {
                    kv: self.sms[g].get(ns, key),
                    token,
                }
            }
            ReadWhat::Query {
                ns,
                query:
                    ReadQuery::List {
                        prefix,
                        start_after,
                        limit,
                    },
                overlay,
            } => {
                let limit = (*limit as usize).clamp(1, self.cfg.list_keys_max);
                let ov = self.groups[g].role.leading().map(|ls| &ls.overlay);
                let ov = ov.filter(|_| *overlay);
                let pending: Vec<(&String, &Pending)> = if let Some(ov) = ov {
                    ov.keys
                        .iter()
                        .filter(|((n, k), _)| {
                            n == ns && k.starts_with(prefix.as_str()) && k > start_after
                        })
                        .map(|((_, k), p)| (k, p))
                        .collect()
                } else {
                    Vec::new()
                };
                if pending.is_empty() {
                    let (kvs, more) = self.sms[g].list(ns, prefix, start_after, limit);
                    return ClientResponse::List { kvs, more, token };
                }
                // Merge the proposed effects over the applied state: read enough
                // applied keys that deleting every overlaid one still fills a page.
                let (applied, applied_more) =
                    self.sms[g].list(ns, prefix, start_after, limit + pending.len());
                let mut merged: BTreeMap<String, KeyValue> =
                    applied.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
                for (k, (version, value, _)) in pending {
                    match value {
                        Some(v) => {
                            merged.insert(
                                k.clone(),
                                KeyValue {
                                    key: k.clone(),
                                    value: Some(v.clone()),
                                    version: *version,
                                    mod_revision: 0,
                                    meta: ChangeMeta::default(),
                                },
                            );
                        }
                        None => {
                            merged.remove(k);
                        }
                    }
                }
                let more = applied_more || merged.len() > limit;
                let kvs: Vec<KeyValue> = merged.into_values().take(limit).collect();
                let token = RevisionToken {
                    group: g as GroupId,
                    revision: ov.map_or(0, |ov| ov.revision).max(token.revision),
                };
                ClientResponse::List { kvs, more, token }
            }
            ReadWhat::Query {
                ns,
                query: ReadQuery::History { key },
                ..
            } => ClientResponse::History {
                versions: self.sms[g].history(ns, key),
                token,
            },
            // Scans read applied state only (an async namespace's leader
            // overlay is not merged): they serve whole-namespace reads and
            // read-validate-write cycles, whose ns-revision compare catches
            // anything proposed but not yet applied.
            ReadWhat::Query {
                ns,
                query: ReadQuery::Scan { prefix, as_of },
                ..
            } => match self.sms[g].scan_as_of(ns, prefix, *as_of, self.cfg.scan_keys_max) {
                Ok((kvs, ns_revision)) => ClientResponse::Scan {
                    kvs,
                    ns_revision,
                    token,
                },
                Err(ScanError::TooLarge) => ClientResponse::Error(ErrorCode::ScanTooLarge),
                Err(ScanError::Compacted(_)) => ClientResponse::Error(ErrorCode::HistoryCompacted),
                Err(ScanError::FutureRevision { .. }) => {
                    ClientResponse::Error(ErrorCode::FutureRevision)
                }
            },
        }
    }

    pub(super) fn read(
        &mut self,
        g: usize,
        origin: Origin,
        ns: String,
        query: ReadQuery,
        consistency: Consistency,
        is_async: bool,
    ) {
        if let Some(code) = self.ns_unservable(g, &ns, consistency) {
            self.respond(origin, ClientResponse::Error(code));
            return;
        }
        let local = || ReadWhat::Query {
            ns: ns.clone(),
            query: query.clone(),
            overlay: false,
        };
        match consistency {
            Consistency::Stale => {
                let resp = self.read_now(g, &local());
                self.respond(origin, resp);
            }
            Consistency::Bounded { staleness_us } => {
                let gr = &self.groups[g];
                let fresh = if gr.role.is_leader() {
                    self.lease_valid(gr) && self.noop_committed(gr)
                } else {
                    gr.fresh_as_of_us.is_some_and(|f| {
                        self.cfg.true_upper_us(self.now.saturating_sub(f)) <= staleness_us
                    })
                };
                if fresh {
                    let resp = self.read_now(g, &local());
                    self.respond(origin, resp);
                } else {
                    self.read(g, origin, ns, query, Consistency::Linearizable, is_async);
                }
            }
            Consistency::Linearizable => {
                if self.groups[g].role.is_leader() {
                    let what = ReadWhat::Query {
                        ns,
                        query,
                        overlay: is_async,
                    };
                    self.leader_read(g, origin, what, 0);
                } else {
                    let req = ClientRequest::Read {
                        ns,
                        query,
                        consistency,
                        token: None,
                    };
                    self.forward_or_fail(g, origin, req);
                }
            }
        }
    }

    /// Leader: serve at once under a valid lease, else after a quorum round.
    pub(super) fn leader_read(&mut self, g: usize, origin: Origin, what: ReadWhat, min_index: u64) {
        let deadline_us = self.now + self.cfg.request_timeout_us;
        let lease = self.lease_valid(&self.groups[g]);
        let gr = &mut self.groups[g];
        let min_index = min_index.max(gr.commit);
        let round = if lease { 0 } else { gr.round + 1 };
        let Role::Leader(ls) = &mut gr.role else {
            debug_assert!(false, "leader_read on a node that does not lead");
            self.respond(origin, ClientResponse::Error(ErrorCode::Unavailable));
            return;
        };
        if !lease {
            ls.heartbeat_now = true;
        }
        ls.pending_reads.push(PendingRead {
            origin,
            min_index,
            round,
            deadline_us,
            what,
        });
        self.serve_reads(g);
    }

    pub(super) fn check_token_waits(&mut self, g: GroupId) {
        let rev = self.sms[g as usize].revision();
        if !self
            .token_waits
            .iter()
            .any(|w| w.group == g && w.revision <= rev)
        {
            return;
        }
        let (ready, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.token_waits)
            .into_iter()
            .partition(|w| w.group == g && w.revision <= rev);
        self.token_waits = keep;
        for w in ready {
            let is_async = matches!(self.ns_index[&w.ns].mode, ReplicationMode::Async { .. });
            self.read(
                g as usize,
                Origin::Local(w.req),
                w.ns,
                w.query,
                w.consistency,
                is_async,
            );
        }
    }
}
