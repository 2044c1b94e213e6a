//! The simulated network: links up or cut, metadata streams and their
//! resets, and sending a message with latency, jitter, loss, duplication
//! and reordering.

use super::*;

impl World {
    /// Re-evaluate which reliable metadata streams are up; tell both ends of
    /// every stream that was re-established.
    pub(super) fn refresh_links(&mut self) {
        let n = self.opts.regions as usize;
        for a in 0..n {
            for b in a + 1..n {
                let up = !self.cut[a][b]
                    && !self.cut[b][a]
                    && self.nodes[a].node.is_some()
                    && self.nodes[b].node.is_some();
                if up != self.meta_up[a][b] {
                    self.meta_up[a][b] = up;
                    self.meta_up[b][a] = up;
                    self.meta_epoch[a][b] += 1;
                    self.meta_epoch[b][a] += 1;
                    if up {
                        for (x, y) in [(a, b), (b, a)] {
                            self.dispatch(Ev::PeerReset {
                                node: x as NodeId,
                                peer: y as NodeId,
                            });
                        }
                    }
                }
            }
        }
    }

    /// A node's shell resets its connections with `peer`, as the real
    /// transport does: metadata streams of the pair start over on both sides.
    pub(super) fn reset_link(&mut self, n: NodeId, peer: NodeId) {
        let (a, b) = (n as usize, peer as usize);
        if b >= self.meta_up.len() || a == b {
            return;
        }
        self.note(|| format!("node {a} resets its link to node {b}"));
        self.meta_epoch[a][b] += 1;
        self.meta_epoch[b][a] += 1;
        if self.meta_up[a][b] {
            for (x, y) in [(a, b), (b, a)] {
                self.dispatch(Ev::PeerReset {
                    node: x as NodeId,
                    peer: y as NodeId,
                });
            }
        }
    }

    pub(super) fn net_send(&mut self, from: NodeId, to: NodeId, channel: Channel, bytes: Vec<u8>) {
        let (f, t) = (from as usize, to as usize);
        let lat = self.latency_us[f][t];
        let jitter = self.rng.range(0, lat / 10 + 1);
        match channel {
            Channel::Meta => {
                if !self.meta_up[f][t] {
                    return;
                }
                let at = (self.now + lat + jitter).max(self.meta_last[f][t]);
                self.meta_last[f][t] = at;
                let epoch = self.meta_epoch[f][t];
                self.schedule(
                    at,
                    Ev::Deliver {
                        to,
                        from,
                        bytes,
                        meta_epoch: Some(epoch),
                    },
                );
            }
            Channel::Group(_) | Channel::Forward => {
                let mut vote_request = false;
                if bytes.len() < 48 {
                    let msg = Msg::decode(&bytes, 64);
                    vote_request = matches!(
                        msg,
                        Ok(Msg::Raft {
                            body: RaftMsg::Vote { .. } | RaftMsg::PreVote { .. },
                            ..
                        })
                    );
                    if let Ok(Msg::Raft {
                        group,
                        term,
                        body:
                            RaftMsg::AppendResp {
                                success: true,
                                match_index,
                                ..
                            },
                    }) = &msg
                    {
                        // A new leader's earlier-term entries acknowledged
                        // without its own: the state partial appends create,
                        // in which counting replicas of an old-term entry
                        // would commit what a later leader may overwrite.
                        let old_term_match = self.nodes[t].node.as_ref().is_some_and(|x| {
                            x.is_leader(*group)
                                && x.term_of(*group) == *term
                                && x.log_term_at(*group, *match_index)
                                    .is_some_and(|mt| mt < *term)
                                && x.log_term_at(*group, *match_index + 1).is_some()
                        });
                        if old_term_match {
                            self.history.cover(Coverage::OldTermAckedAlone);
                        }
                        let d = &self.nodes[f].durable.groups[*group as usize];
                        let snap = d.snapshot.as_ref().map_or(0, |s| s.index);
                        if d.term < *term || *match_index > snap + d.entries.len() as u64 {
                            self.history.undurable_replies.push((
                                "an append acknowledgement",
                                *group,
                                from,
                                self.now,
                            ));
                        }
                    }
                    if let Ok(Msg::Raft {
                        group,
                        term,
                        body: RaftMsg::Vote { transfer: true, .. },
                    }) = &msg
                    {
                        self.history
                            .transfer_candidacies
                            .insert((*group, *term, from));
                    }
                    if let Ok(Msg::Raft {
                        group,
                        term,
                        body: RaftMsg::VoteResp { granted: true },
                    }) = msg
                    {
                        let d = &self.nodes[f].durable.groups[group as usize];
                        if d.term != term || d.vote != Some(to) {
                            self.history.undurable_replies.push((
                                "a granted vote",
                                group,
                                from,
                                self.now,
                            ));
                        }
                        self.history.votes.push((group, term, from, to, self.now));
                        if self.vote_crash_armed {
                            // Crash the voter right after it granted a vote: the
                            // moment an unpersisted vote would be forgotten.
                            self.crash_after_vote(from);
                        }
                    }
                }
                if self.cut[f][t] || self.rng.chance(self.loss) {
                    return;
                }
                if self.swarm.restart_before_vote_p > 0.0
                    && self.now < self.opts.fault_end_us
                    && vote_request
                    && self.rng.chance(self.swarm.restart_before_vote_p)
                {
                    // Down now, back before the request lands (it is at
                    // least `lat` away).
                    let restart_at = self.now + self.rng.range(1, lat.max(2));
                    self.schedule(
                        self.now,
                        Ev::Bounce {
                            node: to,
                            restart_at,
                        },
                    );
                }
                let bytes = if self.nodes[f].appends_stalled > 0 {
                    without_entries(bytes)
                } else {
                    bytes
                };
                let mut delay = lat + jitter;
                if self.rng.chance(self.reorder) {
                    delay += self.rng.range(0, 2 * lat + 1);
                }
                if self.rng.chance(self.dup) {
                    let extra = self.rng.range(0, lat + 1);
                    self.schedule(
                        self.now + delay + extra,
                        Ev::Deliver {
                            to,
                            from,
                            bytes: bytes.clone(),
                            meta_epoch: None,
                        },
                    );
                }
                self.schedule(
                    self.now + delay,
                    Ev::Deliver {
                        to,
                        from,
                        bytes,
                        meta_epoch: None,
                    },
                );
            }
        }
    }
}

/// The stalled-appends buggify site: an append arrives as a heartbeat (the
/// same position and commit, no entries), so the follower answers and the
/// leader keeps leading, but nothing it proposes replicates. Every other
/// message passes as it is.
fn without_entries(bytes: Vec<u8>) -> Vec<u8> {
    let Ok(mut msg) = Msg::decode(&bytes, usize::MAX) else {
        return bytes;
    };
    match &mut msg {
        Msg::Raft {
            body: RaftMsg::Append { entries, .. },
            ..
        } if !entries.is_empty() => entries.clear(),
        _ => return bytes,
    }
    // Invariant: a message that decoded re-encodes.
    msg.encode().expect("a decoded message re-encodes")
}
