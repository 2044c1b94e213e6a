//! Hosting the real core: starting and crashing nodes (unsynced writes lost),
//! running one step of a node and carrying out its actions, and recording
//! what it observes (leases, elections, votes, applied entries).

use super::*;
use crate::checkers::lease_safety;

impl World {
    pub(super) fn start_node(&mut self, n: NodeId) {
        let local = self.local(n);
        let sn = &mut self.nodes[n as usize];
        sn.inc += 1;
        sn.volatile.clear();
        sn.down_since = None;
        sn.installs_seen = 0;
        sn.partials_seen = 0;
        let seed = self.opts.seed ^ (sn.inc << 32) ^ n as u64;
        match Node::new(self.cfg.clone(), n, sn.durable.clone(), local, seed) {
            Ok(node) => sn.node = Some(node),
            Err(e) => {
                self.restart_errors
                    .push(format!("node {n} failed to start: {e}"));
                return;
            }
        }
        let inc = self.nodes[n as usize].inc;
        self.note(|| format!("node {n} started (incarnation {inc})"));
        self.sample_perm_keys(n);
        self.after_step(n);
        self.refresh_links();
        // Clients of this region re-open their watches.
        for c in 0..self.clients.len() {
            if self.clients[c].region == n && self.clients[c].watch.is_some() {
                self.open_watch(c);
            }
        }
    }

    pub(super) fn crash(&mut self, n: NodeId) {
        let sn = &mut self.nodes[n as usize];
        if sn.node.is_none() {
            return;
        }
        sn.node = None;
        sn.volatile.clear();
        sn.paused = false;
        sn.paused_events.clear();
        sn.down_since = Some(self.now);
        sn.timer_gen += 1;
        self.history.end_lease(n, self.now);
        self.note(|| format!("node {n} crashed"));
        // Clients of the region lose their in-flight requests and watches.
        let lost: Vec<(RequestId, Owner)> = self
            .reqs
            .iter()
            .filter(|(_, o)| match o {
                Owner::Op { client, node, .. } => self.clients[*client].region == n || *node == n,
                Owner::Watch { client } => self.clients[*client].region == n,
                Owner::Admin { region, .. } => *region == n,
            })
            .map(|(r, o)| (*r, o.clone()))
            .collect();
        for (r, o) in lost {
            self.reqs.remove(&r);
            match o {
                Owner::Op {
                    client, op, moving, ..
                } => {
                    self.op_rec(op, moving).outcome = Outcome::Lost;
                    if !self.maybe_retry(client, op, moving) {
                        self.client_idle(client);
                    }
                }
                Owner::Admin { mv, .. } => {
                    if let Some(m) = mv {
                        self.history.moves[m].outcome = Outcome::Lost;
                    }
                }
                Owner::Watch { client } => {
                    if let Some(w) = self.clients[client].watch {
                        self.history.watches[w]
                            .recs
                            .push(WatchRec::Disconnected { at_us: self.now });
                    }
                    self.clients[client].watch_req = None;
                }
            }
        }
        self.refresh_links();
    }

    /// Run `f` on a live, unpaused node, then process its actions.
    pub(super) fn with_node(&mut self, n: NodeId, f: impl FnOnce(&mut Node, u64)) {
        let local = self.local(n);
        let sn = &mut self.nodes[n as usize];
        let Some(node) = sn.node.as_mut() else { return };
        f(node, local);
        self.after_step(n);
    }

    pub(super) fn after_step(&mut self, n: NodeId) {
        let mut actions = std::mem::take(&mut self.actions);
        let local_now = self.local(n);
        {
            let Some(node) = self.nodes[n as usize].node.as_mut() else {
                return;
            };
            node.drain_actions(&mut actions);
            let installs = node.stats().snapshots_installed;
            let partials = node.stats().partial_appends;
            let sn = &mut self.nodes[n as usize];
            if partials > sn.partials_seen {
                sn.partials_seen = partials;
                self.history.cover(Coverage::PartialAppend);
            }
            if installs > sn.installs_seen {
                sn.installs_seen = installs;
                sn.installed_snapshot_at = Some(self.now);
                self.history.cover(Coverage::SnapshotInstall);
            }
        }
        for a in actions.drain(..) {
            match a {
                Action::Send { to, channel, bytes } => self.net_send(n, to, channel, bytes),
                Action::Persist { id, sync, ops } => {
                    let slow = sync && self.nodes[n as usize].slow_disks > 0;
                    let lat = match sync {
                        // A degraded volume (the slow-disk buggify site).
                        true if slow => self.rng.range(50_000, 400_000),
                        true => self.rng.range(500, 5_000),
                        false => 20,
                    };
                    let sn = &mut self.nodes[n as usize];
                    // Writes complete in order. A slow volume's syncs overlap
                    // (group commit) rather than queue one behind another,
                    // which would push completions ever further behind.
                    let at = if slow {
                        (self.now + lat).max(sn.disk_busy_until)
                    } else {
                        sn.disk_busy_until.max(self.now) + lat
                    };
                    sn.disk_busy_until = at;
                    let fail = sync && std::mem::take(&mut sn.fail_next_sync);
                    let inc = sn.inc;
                    self.schedule(
                        at,
                        Ev::Disk {
                            node: n,
                            inc,
                            id,
                            sync,
                            ops,
                            fail,
                        },
                    );
                }
                Action::Reply { req, resp } => self.on_reply(req, resp),
                Action::SetTimer { at_us } => {
                    let sn = &mut self.nodes[n as usize];
                    sn.timer_gen += 1;
                    let gen = sn.timer_gen;
                    let at = if at_us <= local_now {
                        self.now
                    } else {
                        sn.clock.to_true(at_us)
                    };
                    self.schedule(at, Ev::Timer { node: n, gen });
                }
                Action::Observe(o) => self.observe(n, o),
                Action::ResetPeer { peer } => self.reset_link(n, peer),
            }
        }
        self.actions = actions;
        if self.opts.trace {
            if let Some(node) = self.nodes[n as usize].node.as_ref() {
                for g in 0..self.opts.regions {
                    let rev = node.applied_revision(g);
                    let key = (n, g);
                    let last = self.seen_rev.get(&key).copied().unwrap_or(0);
                    if rev != last && rev != last + 1 {
                        let line = format!(
                            "node {n} group {g}: revision jumped {last} -> {rev} (commit {})",
                            node.commit_index(g)
                        );
                        self.trace.push((self.now, line));
                    }
                    self.seen_rev.insert(key, rev);
                }
            }
        }
        // Record the node's lease belief from now on.
        let Some(node) = self.nodes[n as usize].node.as_ref() else {
            return;
        };
        let clock = self.nodes[n as usize].clock;
        for g in 0..self.opts.regions {
            match node.lease_expiry_us(g) {
                Some(e) => {
                    let end = clock.to_true(e);
                    // Only a lease that moved needs its coverage checked again.
                    let moved = self.lease_checked.insert((n, g), e) != Some(e);
                    if let Some((term, round)) = node.lease_basis(g).filter(|_| moved) {
                        let lease = lease_safety::Lease {
                            group: g,
                            holder: n,
                            term,
                            round,
                            end_us: end,
                        };
                        if let Some(detail) = lease_safety::uncovered(
                            &self.promises,
                            &lease,
                            self.opts.regions,
                            self.cfg.majority(),
                        ) {
                            self.history.uncovered_leases.push((g, n, self.now, detail));
                        }
                    }
                    self.history.record_lease(g, n, self.now, end);
                }
                None => {
                    if let Some(last) = self.history.leases[g as usize][n as usize].last_mut() {
                        if last.1 > self.now {
                            last.1 = self.now;
                        }
                    }
                }
            }
        }
        if node.is_halted() && self.nodes[n as usize].down_since.is_none() {
            // Storage failed: the node stopped; the operator restarts it (at
            // the end of the fsync episode, or soon if that already ended).
            self.crash(n);
            if !self.episode_holds(n, &[EpisodeKind::FsyncFail, EpisodeKind::Crash]) {
                let at = self.now + self.rng.range(1_000_000, 3_000_000);
                self.schedule(at, Ev::Restart { node: n });
            }
        }
        if self.pending_crash == Some(n) {
            self.pending_crash = None;
            self.crash(n);
        }
    }

    /// Read node `n`'s grant and revocation keys. A grant key seen for the
    /// first time is new at this node, its origin (a grant reaches other
    /// nodes only after its origin applied it): record which revocations
    /// of its permission the origin held as it made the grant.
    pub(super) fn sample_perm_keys(&mut self, n: NodeId) {
        let Some(node) = &self.nodes[n as usize].node else {
            return;
        };
        let keys = node.meta_permission_keys();
        for k in &keys {
            let Some(rest) = k.strip_prefix("grant/") else {
                continue;
            };
            if self.history.grants_saw.contains_key(k) {
                continue;
            }
            let perm = rest.rsplit_once('#').map_or(rest, |(p, _)| p);
            let revokes = format!("revoke/{perm}#");
            let saw: Vec<String> = keys
                .iter()
                .filter(|r| r.starts_with(&revokes))
                .cloned()
                .collect();
            self.history.grants_saw.insert(k.clone(), saw);
        }
        self.nodes[n as usize].perm_keys = keys;
    }

    pub(super) fn observe(&mut self, n: NodeId, o: Observation) {
        match o {
            Observation::BecameLeader { group, term } => {
                self.note(|| format!("node {n} leads group {group} in term {term}"));
                self.history.elections.push((group, term, n, self.now));
            }
            Observation::Applied {
                group,
                revision,
                request_id,
                digest,
                ns,
                keys,
            } => {
                let a = Applied {
                    request_id,
                    digest,
                    ns,
                    keys,
                    first_node: n,
                    at_us: self.now,
                };
                self.history.record_applied(group, revision, n, a);
            }
            Observation::Promised {
                group,
                leader,
                term,
                round,
            } => {
                let end = self.nodes[n as usize]
                    .clock
                    .to_true(self.local(n) + self.cfg.election_timeout_us);
                let m = self.promises.entry((group, n, leader, term)).or_default();
                m.insert(round, end);
                self.history.record_promise(group, n, leader, term, self.now, end);
            }
            Observation::Halted => self.note(|| format!("node {n} halted")),
            Observation::MetaChanged => self.sample_perm_keys(n),
            Observation::WriteReplayed {
                group,
                request_id,
                from_table,
            } => {
                self.note(|| {
                    format!("node {n}: write {request_id:#x} of group {group} replayed (table: {from_table})")
                });
                self.history.cover(if from_table {
                    Coverage::RetryFromTable
                } else {
                    Coverage::RetryJoinedPending
                });
            }
            Observation::TransferStarted { group, to } => {
                self.note(|| format!("node {n}: hands group {group} over to {to}"))
            }
            Observation::TransferAbandoned {
                group,
                to,
                timeout_now_sent,
                behind,
            } => self.note(|| {
                format!(
                    "node {n}: hand-over of group {group} to {to} timed out (told to campaign: {timeout_now_sent}, {behind} entries behind)"
                )
            }),
            Observation::NamespaceMoved {
                ns,
                group,
                revision,
            } => {
                self.note(|| format!("node {n}: {ns} now complete in group {group} at {revision}"));
                self.history.moves_completed.insert((group, revision));
            }
            Observation::SnapshotInstalled { group, index, from } => self.note(|| {
                format!("node {n}: installed group {group}'s snapshot at {index} from {from}")
            }),
        }
    }
}
