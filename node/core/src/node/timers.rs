//! The timer tick: leader duties (heartbeats, transfers, lease preference),
//! election timeouts, request deadlines, token waits, metadata sync and
//! namespace moves, each when due.

use super::*;

impl Node {
    pub(super) fn on_timeout(&mut self) {
        self.forward_watchdog();
        let now = self.now;
        for g in 0..self.groups.len() {
            if self.groups[g].role == Role::Leader {
                if let Some(tr) = &self.groups[g].transfer {
                    if now >= tr.deadline_us {
                        // Transfer failed: take the lease up again, counting only
                        // rounds sent without the transfer flag.
                        let (to, timeout_now_sent) = (tr.to, tr.timeout_now_sent);
                        let gr = &mut self.groups[g];
                        gr.transfer = None;
                        gr.lease_min_round = gr.round + 1;
                        let behind = gr
                            .log
                            .last_index()
                            .saturating_sub(gr.peers[to as usize].match_index);
                        self.out
                            .push(Action::Observe(Observation::TransferAbandoned {
                                group: g as GroupId,
                                to,
                                timeout_now_sent,
                                behind,
                            }));
                    }
                }
                if now >= self.groups[g].next_duties_us {
                    self.leader_duties(g);
                    if self.groups[g].role != Role::Leader {
                        continue;
                    }
                }
                if now >= self.groups[g].next_heartbeat_us {
                    self.heartbeat(g);
                }
                let gr = &mut self.groups[g];
                let expired: Vec<PendingRead> = {
                    let (keep, gone): (Vec<_>, Vec<_>) = gr
                        .pending_reads
                        .drain(..)
                        .partition(|r| r.deadline_us > now);
                    gr.pending_reads = keep;
                    gone
                };
                for r in expired {
                    self.respond(r.origin, ClientResponse::Error(ErrorCode::Timeout));
                }
            } else if now >= self.groups[g].election_deadline_us {
                self.election_timeout(g);
            } else if matches!(self.groups[g].role, Role::PreCandidate | Role::Candidate)
                && now >= self.groups[g].next_heartbeat_us
            {
                self.resend_vote_requests(g);
            }
        }
        while let Some(&(d, req)) = self.deadlines.first() {
            if d > now {
                break;
            }
            self.respond(
                Origin::Local(req),
                ClientResponse::Error(ErrorCode::Timeout),
            );
        }
        let (expired, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.token_waits)
            .into_iter()
            .partition(|w| w.deadline_us <= now);
        self.token_waits = keep;
        for w in expired {
            self.respond(
                Origin::Local(w.req),
                ClientResponse::Error(ErrorCode::TokenWaitTimeout),
            );
        }
        if now >= self.next_meta_sync_us {
            self.next_meta_sync_us = now + self.cfg.meta_sync_interval_us;
            if self.meta_ready {
                self.meta_send_all(None);
            }
        }
    }
}
