//! Simulated clients and the operator: issuing reads, writes and watches in
//! every region, recording each operation for the checkers, and the
//! operator who keeps moving a namespace's home.

use super::*;

impl World {
    pub(super) fn client_idle(&mut self, c: usize) {
        self.clients[c].busy = false;
        if self.now >= self.opts.clients_stop_us {
            self.clients[c].backlog = 0;
        }
        if self.clients[c].backlog > 0 {
            self.clients[c].backlog -= 1;
            self.issue_op(c);
        }
    }

    pub(super) fn on_reply(&mut self, req: RequestId, resp: ClientResponse) {
        let Some(owner) = self.reqs.get(&req).cloned() else {
            return;
        };
        match owner {
            Owner::Admin { mv, .. } => {
                self.reqs.remove(&req);
                self.note(|| format!("operator <- {resp:?}"));
                match mv {
                    None => {
                        if matches!(
                            resp,
                            ClientResponse::Written { .. } | ClientResponse::Conflict { .. }
                        ) {
                            self.moving_created = true;
                        }
                    }
                    Some(m) => {
                        let rec = &mut self.history.moves[m];
                        rec.complete_us = Some(self.now);
                        rec.outcome = Outcome::Done(resp);
                    }
                }
            }
            Owner::Op {
                client,
                op,
                moving,
                node,
            } => {
                self.reqs.remove(&req);
                if resp == ClientResponse::Error(ErrorCode::RpoBudgetExceeded) {
                    self.history.cover(Coverage::BudgetRefusal);
                }
                let unknown = matches!(
                    resp,
                    ClientResponse::Error(ErrorCode::Timeout | ErrorCode::Indeterminate)
                );
                // A refusal answers for its own attempt only: after an
                // earlier attempt's outcome was unknown, the write's still is.
                let retried = self.clients[client]
                    .retry
                    .as_ref()
                    .is_some_and(|(_, n)| *n > 1);
                let refused_retry = retried && matches!(resp, ClientResponse::Error(_));
                if unknown || refused_retry {
                    self.op_rec(op, moving).outcome = if refused_retry {
                        Outcome::Lost
                    } else {
                        Outcome::Done(resp.clone())
                    };
                    if self.maybe_retry(client, op, moving) {
                        return;
                    }
                    if refused_retry {
                        self.clients[client].retry = None;
                        self.client_idle(client);
                        return;
                    }
                }
                if self.clients[client]
                    .retry
                    .take()
                    .is_some_and(|(_, n)| n > 1)
                {
                    self.history.cover(Coverage::RetryAnswered);
                }
                let rec = if moving {
                    &mut self.history.mv_ops[op]
                } else {
                    &mut self.history.ops[op]
                };
                rec.complete_us = Some(self.now);
                let cl = &mut self.clients[client];
                match (&rec.kind, &resp) {
                    (OpKind::Get { key, .. }, ClientResponse::Value { kv, token }) => {
                        cl.versions
                            .insert((rec.ns.clone(), key.clone()), kv.version);
                        let t = cl.tokens.entry(token.group).or_insert(*token);
                        t.revision = t.revision.max(token.revision);
                    }
                    (
                        OpKind::Write { ops, .. },
                        ClientResponse::Written {
                            versions, token, ..
                        }
                        | ClientResponse::Unchanged { versions, token },
                    ) => {
                        for (o, v) in ops.iter().zip(versions) {
                            cl.versions
                                .insert((rec.ns.clone(), o.key().to_string()), *v);
                        }
                        let t = cl.tokens.entry(token.group).or_insert(*token);
                        t.revision = t.revision.max(token.revision);
                    }
                    (
                        OpKind::MetaCheck {
                            principal,
                            permission,
                        },
                        ClientResponse::Granted(answer),
                    ) => {
                        // Answered in this step: the node's keys as sampled
                        // are the ones it judged by.
                        self.history.perm_checks.push(PermCheck {
                            node,
                            at_us: self.now,
                            principal: principal.clone(),
                            permission: permission.clone(),
                            answer: *answer,
                            keys: self.nodes[node as usize].perm_keys.clone(),
                        });
                    }
                    _ => {}
                }
                let trace = self.opts.trace;
                if trace {
                    let line = format!("client {client} <- {resp:?}");
                    self.trace.push((self.now, line));
                }
                self.op_rec(op, moving).outcome = Outcome::Done(resp);
                self.client_idle(client);
            }
            Owner::Watch { client } => {
                let Some(w) = self.clients[client].watch else {
                    return;
                };
                let rec = match resp {
                    ClientResponse::WatchEvents { events, revision } => {
                        self.clients[client].watch_cursor = Some(revision);
                        WatchRec::Events { revision, events }
                    }
                    ClientResponse::WatchResync { snapshot, revision } => {
                        self.clients[client].watch_cursor = Some(revision);
                        WatchRec::Resync { revision, snapshot }
                    }
                    other => {
                        self.note(|| format!("watch of client {client} got {other:?}"));
                        return;
                    }
                };
                self.history.watches[w].recs.push(rec);
            }
        }
    }

    pub(super) fn open_watch(&mut self, c: usize) {
        let region = self.clients[c].region;
        if self.nodes[region as usize].node.is_none() {
            return;
        }
        let w = match self.clients[c].watch {
            Some(w) => w,
            None => {
                let spec = self.rng.pick(&self.cfg.namespaces).clone();
                let prefix = if self.rng.chance(0.5) {
                    String::new()
                } else {
                    format!("k{}", self.rng.range(0, 3))
                };
                self.history.watches.push(WatchLog {
                    client: c,
                    region,
                    ns: spec.name,
                    group: spec.home,
                    prefix,
                    recs: Vec::new(),
                });
                let w = self.history.watches.len() - 1;
                self.clients[c].watch = Some(w);
                w
            }
        };
        let from = self.clients[c].watch_cursor;
        let req = self.next_req;
        self.next_req += 1;
        self.reqs.insert(req, Owner::Watch { client: c });
        self.clients[c].watch_req = Some(req);
        let log = &mut self.history.watches[w];
        log.recs.push(WatchRec::Start {
            from,
            at_us: self.now,
        });
        let request = ClientRequest::Watch {
            ns: log.ns.clone(),
            prefix: log.prefix.clone(),
            start_revision: from,
        };
        self.client_request(region, req, request);
    }

    /// Client requests go through the queue (at the current instant) so a node
    /// is never stepped while the actions of another step are being processed.
    pub(super) fn client_request(&mut self, n: NodeId, req: RequestId, request: ClientRequest) {
        self.schedule(
            self.now,
            Ev::ClientReq {
                node: n,
                req,
                request,
            },
        );
    }

    pub(super) fn op_rec(&mut self, op: usize, moving: bool) -> &mut OpRecord {
        if moving {
            &mut self.history.mv_ops[op]
        } else {
            &mut self.history.ops[op]
        }
    }

    /// The operator: create `MOVING_NS` (retrying until it exists), then move
    /// its home to a random region every few seconds until clients stop.
    pub(super) fn admin(&mut self) {
        if self.now >= self.opts.clients_stop_us {
            return;
        }
        let n = self.opts.regions as u64;
        let region = self.rng.range(0, n) as NodeId;
        let next = if self.moving_created {
            self.rng.range(3_000_000, 8_000_000)
        } else {
            500_000
        };
        self.schedule(self.now + next, Ev::Admin);
        if self.nodes[region as usize].node.is_none() {
            return;
        }
        let req = self.next_req;
        self.next_req += 1;
        let request = if !self.moving_created {
            self.reqs.insert(req, Owner::Admin { region, mv: None });
            ClientRequest::CreateNamespace {
                ns: MOVING_NS.to_string(),
                settings: NsSettings {
                    home: self.rng.range(0, n) as GroupId,
                    mode: ReplicationMode::Quorum,
                    history_versions_max: 0,
                    history_age_ms_max: 0,
                    moving_to: None,
                    adopt_revision: 0,
                },
                request_id: 0xAD_0000_0001,
                time_ms: self.nodes[region as usize].clock.local(self.now) / 1000,
            }
        } else {
            let to = self.rng.range(0, n) as GroupId;
            self.history.moves.push(MoveRec {
                to,
                invoke_us: self.now,
                complete_us: None,
                outcome: Outcome::Pending,
            });
            let mv = Some(self.history.moves.len() - 1);
            self.reqs.insert(req, Owner::Admin { region, mv });
            ClientRequest::MoveNamespace {
                ns: MOVING_NS.to_string(),
                to,
            }
        };
        self.note(|| format!("operator -> node {region}: {request:?}"));
        self.client_request(region, req, request);
    }

    pub(super) fn issue_op(&mut self, c: usize) {
        let region = self.clients[c].region;
        if self.nodes[region as usize].node.is_none() {
            return;
        }
        if self.clients[c].watch.is_none() {
            self.open_watch(c);
        }
        self.clients[c].busy = true;
        self.clients[c].seq += 1;
        let seq = self.clients[c].seq;
        let spec = self.rng.pick(&self.cfg.namespaces).clone();
        let moving = self.moving_created && self.rng.chance(0.3);
        let ns = if moving {
            MOVING_NS.to_string()
        } else {
            spec.name.clone()
        };
        let is_async = !moving && matches!(spec.mode, ReplicationMode::Async { .. });
        let key = |rng: &mut Rng| format!("k{}", rng.range(0, 6));
        let value = |k: &str| format!("c{c}-{seq}-{k}").into_bytes();
        let request_id = ((c as u64) << 40) | seq;
        let roll = self.rng.range(0, 100);
        let known = |cl: &Client, k: &str| {
            cl.versions
                .get(&(ns.clone(), k.to_string()))
                .copied()
                .unwrap_or(0)
        };
        let (kind, request) = if roll < 45 {
            let k = key(&mut self.rng);
            let consistency = match roll {
                0..=19 => Consistency::Linearizable,
                20..=32 => Consistency::Bounded {
                    staleness_us: self.rng.range(200_000, 3_000_000),
                },
                _ => Consistency::Stale,
            };
            let token = if moving {
                None
            } else {
                self.clients[c].tokens.get(&spec.home).copied()
            };
            (
                OpKind::Get {
                    key: k.clone(),
                    consistency,
                },
                ClientRequest::Read {
                    ns: ns.clone(),
                    query: ReadQuery::Get { key: k },
                    consistency,
                    token,
                },
            )
        } else if roll < 97 {
            let (compares, ops) = match roll {
                45..=69 => {
                    let k = key(&mut self.rng);
                    (
                        vec![],
                        vec![WriteOp::Put {
                            value: value(&k),
                            key: k,
                        }],
                    )
                }
                70..=82 => {
                    let k = key(&mut self.rng);
                    let mut v = known(&self.clients[c], &k);
                    if self.rng.chance(0.2) {
                        v = v.saturating_sub(1);
                    }
                    (
                        vec![Compare {
                            key: k.clone(),
                            version: v,
                        }],
                        vec![WriteOp::Put {
                            value: value(&k),
                            key: k,
                        }],
                    )
                }
                83..=87 => (
                    vec![],
                    vec![WriteOp::Delete {
                        key: key(&mut self.rng),
                    }],
                ),
                _ => {
                    let a = key(&mut self.rng);
                    let mut b = key(&mut self.rng);
                    while b == a {
                        b = key(&mut self.rng);
                    }
                    let cmp = if self.rng.chance(0.5) {
                        vec![Compare {
                            key: a.clone(),
                            version: known(&self.clients[c], &a),
                        }]
                    } else {
                        vec![]
                    };
                    (
                        cmp,
                        vec![
                            WriteOp::Put {
                                value: value(&a),
                                key: a,
                            },
                            WriteOp::Put {
                                value: value(&b),
                                key: b,
                            },
                        ],
                    )
                }
            };
            (
                OpKind::Write {
                    request_id,
                    compares: compares.clone(),
                    ops: ops.clone(),
                },
                ClientRequest::Write {
                    fingerprint: meridian_core::types::write_fingerprint(&ns, &compares, &ops),
                    ns: ns.clone(),
                    request_id,
                    compares,
                    ns_revision: None,
                    ops,
                    // Wall-clock time as the receiving node's (skewed) clock
                    // would stamp it: the leader keeps a group's times monotonic.
                    meta: ChangeMeta {
                        author: format!("client-{c}"),
                        message: String::new(),
                        time_ms: self.nodes[region as usize].clock.local(self.now) / 1000,
                    },
                    // The record a region's shell would attach: every
                    // replica must chain it identically (convergence
                    // compares whole state machines, audit chain included).
                    audit: Box::new(meridian_core::audit::AuditCtx {
                        region,
                        principal: format!("client-{c}"),
                        method: "sim".into(),
                        action: "Kv.Txn".into(),
                        request_id: format!("{request_id:x}"),
                        client: format!("client-{c}"),
                    }),
                },
            )
        } else {
            let op = match self.rng.range(0, 3) {
                0 => MetaOp::SetLabel {
                    key: format!("l{}", self.rng.range(0, 3)),
                    value: format!("c{c}-{seq}"),
                },
                1 => MetaOp::Grant {
                    principal: format!("p{}", self.rng.range(0, 2)),
                    permission: "write".into(),
                },
                _ => MetaOp::Revoke {
                    principal: format!("p{}", self.rng.range(0, 2)),
                    permission: "write".into(),
                },
            };
            // Labels are rarely set: every third label op checks a
            // permission instead, as each request a region's shell serves
            // does (no new random draw, so seeds keep their runs).
            match op {
                MetaOp::SetLabel { .. } if seq.is_multiple_of(3) => {
                    let principal = format!("p{}", seq % 2);
                    let permission = "write".to_string();
                    (
                        OpKind::MetaCheck {
                            principal: principal.clone(),
                            permission: permission.clone(),
                        },
                        ClientRequest::MetaGranted {
                            principal,
                            permission,
                        },
                    )
                }
                op => (OpKind::Meta, ClientRequest::Meta(op)),
            }
        };
        if let ClientRequest::Write { .. } = &request {
            self.clients[c].retry = Some((request.clone(), 1));
        }
        let req = self.next_req;
        self.next_req += 1;
        let rec = OpRecord {
            client: c,
            region,
            ns,
            group: spec.home,
            is_async,
            kind,
            invoke_us: self.now,
            complete_us: None,
            outcome: Outcome::Pending,
        };
        let list = if moving {
            &mut self.history.mv_ops
        } else {
            &mut self.history.ops
        };
        list.push(rec);
        let op = list.len() - 1;
        self.reqs.insert(
            req,
            Owner::Op {
                client: c,
                op,
                moving,
                node: region,
            },
        );
        self.note(|| format!("client {c} -> node {region}: {request:?}"));
        self.client_request(region, req, request);
    }

    /// After a write's outcome became unknown (TIMEOUT, INDETERMINATE, or
    /// its connection lost with its region), send it again with the same
    /// request id after a backoff, as the real client library does. Returns
    /// whether a retry is on its way (the client stays busy with it).
    pub(super) fn maybe_retry(&mut self, client: usize, op: usize, moving: bool) -> bool {
        let attempts = match &self.clients[client].retry {
            Some((_, n)) => *n,
            None => return false,
        };
        if attempts >= WRITE_ATTEMPTS_MAX || self.now >= self.opts.clients_stop_us {
            self.clients[client].retry = None;
            return false;
        }
        let backoff = self.rng.range(50_000, 1_000_000) << (attempts - 1).min(2);
        let at = self.now + backoff;
        self.schedule(at, Ev::ClientRetry { client, op, moving });
        true
    }

    /// Send client `client`'s write again: to its own region or, half the
    /// time (or when its own is down), to another that is up.
    pub(super) fn retry_write(&mut self, client: usize, op: usize, moving: bool) {
        let Some((request, attempts)) = self.clients[client].retry.clone() else {
            return;
        };
        let n = self.opts.regions;
        let home = self.clients[client].region;
        let up: Vec<NodeId> = (0..n)
            .filter(|&r| self.nodes[r as usize].node.is_some())
            .collect();
        let others: Vec<NodeId> = up.iter().copied().filter(|&x| x != home).collect();
        let node = if up.contains(&home) && self.rng.chance(0.5) {
            home
        } else if !others.is_empty() {
            *self.rng.pick(&others)
        } else if up.contains(&home) {
            home
        } else {
            // Every region is down: the outcome stays unknown.
            self.clients[client].retry = None;
            self.client_idle(client);
            return;
        };
        self.clients[client].retry = Some((request.clone(), attempts + 1));
        self.history.cover(Coverage::Retry);
        if node != home {
            self.history.cover(Coverage::RetryElsewhere);
        }
        if self.nodes[node as usize]
            .installed_snapshot_at
            .is_some_and(|t| t > self.op_rec(op, moving).invoke_us)
        {
            self.history.cover(Coverage::RetryAfterSnapshotInstall);
        }
        if !moving {
            self.history.retried_at.insert(op, self.now);
        }
        let rec = self.op_rec(op, moving);
        rec.outcome = Outcome::Pending;
        rec.complete_us = None;
        let req = self.next_req;
        self.next_req += 1;
        self.reqs.insert(
            req,
            Owner::Op {
                client,
                op,
                moving,
                node,
            },
        );
        self.note(|| format!("client {client} retries -> node {node}: {request:?}"));
        self.client_request(node, req, request);
    }
}
