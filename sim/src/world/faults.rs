//! Fault episodes: crashes (and quick restarts), isolation, one-way and
//! asymmetric cuts, pauses, fsync failures, a crash right after a vote, and
//! the swarm's buggify sites (slow disks, stalled appends); their overlap
//! and healing; and garbage peer messages.
//!
//! Several episodes may run at once (swarm seeds): each keeps the links it
//! cut, and healing one restores only what no other still holds.

use super::swarm::EPISODES_CONCURRENT_MAX;
use super::*;

/// An episode under way.
pub(super) struct Active {
    /// Index in `History::episodes`.
    episode: usize,
    kind: EpisodeKind,
    region: NodeId,
    /// The one-way links it cut, (from, to).
    links: Vec<(usize, usize)>,
}

impl World {
    pub(super) fn next_episode(&mut self) {
        self.episodes_scheduled -= 1;
        if self.now >= self.opts.fault_end_us || self.active.len() >= EPISODES_CONCURRENT_MAX {
            return;
        }
        let n = self.opts.regions;
        let kind = *self.rng.pick(&self.swarm.kinds);
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
        let quick = kind == EpisodeKind::Crash
            && self.swarm.quick_restart_p > 0.0
            && self.rng.chance(self.swarm.quick_restart_p);
        let (min, max) = match kind {
            _ if quick => (50_000, 1_000_000),
            EpisodeKind::Pause => (1_000_000, 6_000_000),
            // Long enough that an async leader's unreplicated tail ages past
            // its budget (2 s).
            EpisodeKind::AppendsStalled => (2_500_000, 8_000_000),
            _ => (1_000_000, 14_000_000),
        };
        let dur = self.rng.range(min, max);
        let end = (self.now + dur).min(self.opts.fault_end_us);
        let led_groups: Vec<GroupId> = match &self.nodes[region as usize].node {
            Some(x) => (0..n).filter(|&g| x.is_leader(g)).collect(),
            None => Vec::new(),
        };
        let dur = end - self.now;
        self.note(|| format!("FAULT {kind:?} region {region} for {dur}us"));
        self.history.cover(Coverage::Fault(kind));
        if quick {
            self.history.cover(Coverage::QuickRestart);
        }
        let overlapped = !self.active.is_empty();
        self.mark_overlapped();
        self.history.episodes.push(Episode {
            kind,
            region,
            start_us: self.now,
            end_us: end,
            led_groups,
            overlapped,
        });
        let episode = self.history.episodes.len() - 1;
        let r = region as usize;
        let others = (0..n as usize).filter(|&o| o != r);
        let links: Vec<(usize, usize)> = match kind {
            EpisodeKind::Isolate => others.flat_map(|o| [(r, o), (o, r)]).collect(),
            EpisodeKind::OneWayIn => others.map(|o| (o, r)).collect(),
            EpisodeKind::OneWayOut => others.map(|o| (r, o)).collect(),
            EpisodeKind::Asymmetric => {
                let mut o = self.rng.range(0, n as u64) as usize;
                if o == r {
                    o = (o + 1) % n as usize;
                }
                vec![(r, o), (o, r)]
            }
            _ => Vec::new(),
        };
        match kind {
            EpisodeKind::Crash => {
                self.crash(region);
                self.vote_crash_armed = self.rng.chance(0.5);
            }
            EpisodeKind::Pause => self.nodes[r].paused = true,
            EpisodeKind::FsyncFail => self.nodes[r].fail_next_sync = true,
            EpisodeKind::SlowDisk => self.nodes[r].slow_disks += 1,
            EpisodeKind::AppendsStalled => self.nodes[r].appends_stalled += 1,
            _ => {}
        }
        self.active.push(Active {
            episode,
            kind,
            region,
            links,
        });
        self.recompute_cuts();
        self.refresh_links();
        self.schedule(end, Ev::Heal { episode });
        // Overlap: the next episode starts while this one runs.
        if self.swarm.overlap_p > 0.0 && self.rng.chance(self.swarm.overlap_p) && dur > 200_000 {
            let at = self.now + self.rng.range(100_000, dur);
            self.schedule_episode(at);
        }
    }

    /// A fault starts now: every running episode overlaps it.
    pub(super) fn mark_overlapped(&mut self) {
        if self.active.is_empty() {
            return;
        }
        self.history.cover(Coverage::Overlap);
        for a in &self.active {
            self.history.episodes[a.episode].overlapped = true;
        }
    }

    /// A running episode of one of `kinds` holds region `n`.
    pub(super) fn episode_holds(&self, n: NodeId, kinds: &[EpisodeKind]) -> bool {
        self.active
            .iter()
            .any(|a| a.region == n && kinds.contains(&a.kind))
    }

    fn schedule_episode(&mut self, at: u64) {
        self.episodes_scheduled += 1;
        self.schedule(at, Ev::NextEpisode);
    }

    /// The links cut are those some running episode cuts.
    fn recompute_cuts(&mut self) {
        for row in self.cut.iter_mut() {
            row.iter_mut().for_each(|c| *c = false);
        }
        for a in &self.active {
            for &(x, y) in &a.links {
                self.cut[x][y] = true;
            }
        }
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

    pub(super) fn heal(&mut self, episode: usize) {
        let Some(k) = self.active.iter().position(|a| a.episode == episode) else {
            return;
        };
        let Active { kind, region, .. } = self.active.remove(k);
        self.note(|| format!("HEAL {kind:?} region {region}"));
        let r = region as usize;
        // What another running episode of the same kind holds on the region stays.
        let still = self
            .active
            .iter()
            .any(|a| a.kind == kind && a.region == region);
        match kind {
            EpisodeKind::Crash => self.vote_crash_armed = false,
            EpisodeKind::FsyncFail if !still => self.nodes[r].fail_next_sync = false,
            EpisodeKind::SlowDisk => self.nodes[r].slow_disks -= 1,
            EpisodeKind::AppendsStalled => self.nodes[r].appends_stalled -= 1,
            _ => {}
        }
        if kind == EpisodeKind::Pause && !still && self.nodes[r].paused {
            self.nodes[r].paused = false;
            let evs = std::mem::take(&mut self.nodes[r].paused_events);
            for ev in evs {
                self.dispatch(ev);
            }
        }
        let crashed = self
            .active
            .iter()
            .any(|a| a.kind == EpisodeKind::Crash && a.region == region);
        if self.nodes[r].node.is_none() && !crashed {
            self.start_node(region);
        }
        self.recompute_cuts();
        self.refresh_links();
        if self.now < self.opts.fault_end_us
            && self.active.is_empty()
            && self.episodes_scheduled == 0
        {
            let gap = self.rng.range(1_000_000, 4_000_000);
            self.schedule_episode(self.now + gap);
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
