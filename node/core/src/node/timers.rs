//! The timer tick: leader duties (heartbeats, transfers, lease preference),
//! election timeouts, request deadlines, token waits, metadata sync and
//! namespace moves, each when due.

use super::*;

impl Node {
    pub(super) fn on_timeout(&mut self) {
        self.forward_watchdog();
        let now = self.now;
        for g in 0..self.groups.len() {
            if self.groups[g].role.is_leader() {
                self.leader_timers(g);
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

    /// A leader's timers: a transfer that ran out, its duties, its next
    /// heartbeat round, and reads waiting past their deadline.
    fn leader_timers(&mut self, g: usize) {
        let now = self.now;
        let gr = &mut self.groups[g];
        let last = gr.log.last_index();
        let round = gr.round;
        let Role::Leader(ls) = &mut gr.role else {
            return;
        };
        if let Some(tr) = ls.transfer.take_if(|tr| now >= tr.deadline_us) {
            // Transfer failed: take the lease up again, counting only
            // rounds sent without the transfer flag.
            ls.lease_min_round = round + 1;
            let behind = last.saturating_sub(ls.peers[tr.to as usize].match_index);
            self.out
                .push(Action::Observe(Observation::TransferAbandoned {
                    group: g as GroupId,
                    to: tr.to,
                    timeout_now_sent: tr.timeout_now_sent,
                    behind,
                }));
        }
        if self.groups[g]
            .role
            .leading()
            .is_some_and(|ls| now >= ls.next_duties_us)
        {
            self.leader_duties(g);
        }
        if !self.groups[g].role.is_leader() {
            return;
        }
        if now >= self.groups[g].next_heartbeat_us {
            self.heartbeat(g);
        }
        let Some(ls) = self.groups[g].role.leading_mut() else {
            return;
        };
        let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut ls.pending_reads)
            .into_iter()
            .partition(|r| r.deadline_us <= now);
        ls.pending_reads = keep;
        for r in gone {
            self.respond(r.origin, ClientResponse::Error(ErrorCode::Timeout));
        }
    }
}
