//! Fault episodes: crashes, isolation, one-way and asymmetric cuts, pauses,
//! fsync failures, a crash right after a vote, healing, and garbage peer
//! messages.

use super::*;

impl World {
    pub(super) fn next_episode(&mut self) {
        if self.now >= self.opts.fault_end_us {
            return;
        }
        let n = self.opts.regions;
        let kind = *self.rng.pick(&EpisodeKind::ALL);
        // Prefer regions that lead something, so failovers are exercised.
        let leaders: Vec<NodeId> = (0..n)
            .filter(|&r| {
                self.nodes[r as usize]
                    .node
                    .as_ref()
                    .is_some_and(|x| (0..n).any(|g| x.is_leader(g)))
            })
            .collect();
        let region = if !leaders.is_empty() && self.rng.chance(0.8) {
            *self.rng.pick(&leaders)
        } else {
            self.rng.range(0, n as u64) as NodeId
        };
        let max = if kind == EpisodeKind::Pause {
            6_000_000
        } else {
            14_000_000
        };
        let dur = self.rng.range(1_000_000, max);
        let end = (self.now + dur).min(self.opts.fault_end_us);
        let led_groups: Vec<GroupId> = match &self.nodes[region as usize].node {
            Some(x) => (0..n).filter(|&g| x.is_leader(g)).collect(),
            None => Vec::new(),
        };
        let dur = end - self.now;
        self.note(|| format!("FAULT {kind:?} region {region} for {dur}us"));
        self.history.cover(Coverage::Fault(kind));
        self.history.episodes.push(Episode {
            kind,
            region,
            start_us: self.now,
            end_us: end,
            led_groups,
        });
        self.current_episode = Some(self.history.episodes.len() - 1);
        let r = region as usize;
        match kind {
            EpisodeKind::Crash => {
                self.crash(region);
                self.vote_crash_armed = self.rng.chance(0.5);
            }
            EpisodeKind::Isolate => {
                for o in 0..n as usize {
                    if o != r {
                        self.cut[r][o] = true;
                        self.cut[o][r] = true;
                    }
                }
            }
            EpisodeKind::OneWayIn => (0..n as usize)
                .filter(|&o| o != r)
                .for_each(|o| self.cut[o][r] = true),
            EpisodeKind::OneWayOut => (0..n as usize)
                .filter(|&o| o != r)
                .for_each(|o| self.cut[r][o] = true),
            EpisodeKind::Asymmetric => {
                let mut o = self.rng.range(0, n as u64) as usize;
                if o == r {
                    o = (o + 1) % n as usize;
                }
                self.cut[r][o] = true;
                self.cut[o][r] = true;
            }
            EpisodeKind::Pause => self.nodes[r].paused = true,
            EpisodeKind::FsyncFail => self.nodes[r].fail_next_sync = true,
        }
        self.refresh_links();
        self.schedule(end, Ev::Heal { region, kind });
    }

    /// Part of a crash episode: crash a voter right after it grants a vote (the
    /// moment an unpersisted vote would be forgotten) and restart it quickly,
    /// while the election it voted in may still be running.
    pub(super) fn crash_after_vote(&mut self, n: NodeId) {
        self.vote_crash_armed = false;
        let dur = self.rng.range(50_000, 600_000);
        self.note(|| format!("FAULT crash-after-vote region {n} for {dur}us"));
        self.history.cover(Coverage::CrashAfterVote);
        // The vote reply is already on the wire; the node dies right after this step.
        self.pending_crash = Some(n);
        self.schedule(self.now + dur, Ev::Restart { node: n });
    }

    pub(super) fn heal(&mut self, region: NodeId, kind: EpisodeKind) {
        self.note(|| format!("HEAL {kind:?} region {region}"));
        let n = self.opts.regions as usize;
        for a in 0..n {
            for b in 0..n {
                self.cut[a][b] = false;
            }
        }
        let r = region as usize;
        self.vote_crash_armed = false;
        self.nodes[r].fail_next_sync = false;
        if self.nodes[r].paused {
            self.nodes[r].paused = false;
            let evs = std::mem::take(&mut self.nodes[r].paused_events);
            for ev in evs {
                self.dispatch(ev);
            }
        }
        if self.nodes[r].node.is_none() {
            self.start_node(region);
        }
        self.refresh_links();
        self.current_episode = None;
        if self.now < self.opts.fault_end_us {
            let gap = self.rng.range(1_000_000, 4_000_000);
            self.schedule(self.now + gap, Ev::NextEpisode);
        }
    }

    pub(super) fn garbage(&mut self) {
        let n = self.opts.regions as u64;
        let to = self.rng.range(0, n) as NodeId;
        let from = ((to as u64 + self.rng.range(1, n)) % n) as NodeId;
        let len = self.rng.range(1, 64) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| self.rng.next_u64() as u8).collect();
        // An enum tag no message has (Raft, Forward, ForwardReply, Meta,
        // Probe, ProbeReply are 0-5): a peer speaking garbage, not a liar.
        bytes[0] = self.rng.range(6, 256) as u8;
        if self.nodes[to as usize].node.is_some() && !self.nodes[to as usize].paused {
            self.garbage_sent += 1;
            let local = self.local(to);
            if let Some(node) = self.nodes[to as usize].node.as_mut() {
                let res = node.handle_message(local, from, &bytes);
                assert!(res.is_err(), "garbage accepted");
            }
            self.after_step(to);
        }
        if self.now < self.opts.fault_end_us {
            let at = self.now + self.rng.range(500_000, 3_000_000);
            self.schedule(at, Ev::Garbage);
        }
    }
}
