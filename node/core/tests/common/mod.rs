//! A tiny in-memory network of cores for tests: 1 ms per message, every
//! persist completes at once, driven by hand, deterministic.

#![allow(dead_code)]

use meridian_core::storage::{Durable, Storage};
use meridian_core::wire::Msg;
use meridian_core::*;

pub const MSG_DELAY_US: u64 = 1_000;

pub struct Net {
    pub cfg: Config,
    pub nodes: Vec<Node>,
    pub durable: Vec<Durable>,
    pub timers: Vec<Option<u64>>,
    /// (due, from, to, bytes), delivered in due order.
    pub msgs: Vec<(u64, NodeId, NodeId, Vec<u8>)>,
    pub replies: Vec<(NodeId, RequestId, ClientResponse)>,
    /// Every forward reply delivered, as (to, decoded).
    pub forward_replies: Vec<(NodeId, Vec<u8>)>,
    pub now: u64,
    /// Nodes cut off from every other: messages to and from them are lost.
    pub cut: std::collections::BTreeSet<NodeId>,
}

impl Net {
    pub fn new(regions: u8) -> Net {
        let cfg = Config::new(regions);
        let nodes = (0..regions)
            .map(|n| Node::new(cfg.clone(), n, Durable::new(regions), 0, 11).expect("node"))
            .collect();
        Net {
            cfg,
            nodes,
            durable: (0..regions).map(|_| Durable::new(regions)).collect(),
            timers: vec![Some(0); regions as usize],
            msgs: Vec::new(),
            replies: Vec::new(),
            forward_replies: Vec::new(),
            now: 0,
            cut: Default::default(),
        }
    }

    pub fn pump(&mut self) {
        let mut actions = Vec::new();
        loop {
            let mut progressed = false;
            for n in 0..self.nodes.len() {
                self.nodes[n].drain_actions(&mut actions);
                for a in actions.drain(..) {
                    progressed = true;
                    match a {
                        Action::Persist { id, sync, ops } => {
                            self.durable[n].write(&ops, sync).expect("persist");
                            self.nodes[n].handle_persisted(self.now, id);
                        }
                        Action::Send { to, bytes, .. } => {
                            if !self.cut.contains(&to) && !self.cut.contains(&(n as NodeId)) {
                                self.msgs
                                    .push((self.now + MSG_DELAY_US, n as NodeId, to, bytes))
                            }
                        }
                        Action::Reply { req, resp } => self.replies.push((n as NodeId, req, resp)),
                        Action::SetTimer { at_us } => self.timers[n] = Some(at_us),
                        Action::Observe(_) | Action::ResetPeer { .. } => {}
                    }
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// Run every event due up to `until_us`.
    pub fn run_until(&mut self, until_us: u64) {
        loop {
            self.pump();
            let next_msg = self.msgs.iter().map(|m| m.0).min();
            let next_timer = self.timers.iter().flatten().copied().min();
            let next = match (next_msg, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => break,
            };
            if next > until_us {
                break;
            }
            self.now = self.now.max(next);
            if next_msg == Some(next) {
                let i = self
                    .msgs
                    .iter()
                    .position(|m| m.0 == next)
                    .expect("due message");
                let (_, from, to, bytes) = self.msgs.remove(i);
                if let Ok(Msg::ForwardReply { .. }) = Msg::decode(&bytes, usize::MAX) {
                    self.forward_replies.push((to, bytes.clone()));
                }
                let _ = self.nodes[to as usize].handle_message(self.now, from, &bytes);
            } else {
                let n = self
                    .timers
                    .iter()
                    .position(|t| *t == Some(next))
                    .expect("due timer");
                self.timers[n] = None;
                self.nodes[n].handle_timeout(self.now);
            }
        }
        self.now = self.now.max(until_us);
    }

    pub fn restart(&mut self, n: NodeId, seed: u64) {
        self.nodes[n as usize] = Node::new(
            self.cfg.clone(),
            n,
            self.durable[n as usize].clone(),
            self.now,
            seed,
        )
        .expect("restart");
        self.timers[n as usize] = Some(self.now);
    }

    /// Restart node `n` with `seed` and run until it knows group `g`'s leader.
    pub fn restart_until_leader_known(&mut self, n: NodeId, seed: u64, g: GroupId) {
        self.restart(n, seed);
        let deadline = self.now + 5_000_000;
        while self.leader(n, g).is_none() {
            assert!(
                self.now < deadline,
                "restarted node {n} learns group {g}'s leader"
            );
            self.run_until(self.now + 10_000);
        }
    }

    pub fn leader(&self, at: NodeId, g: GroupId) -> Option<NodeId> {
        self.nodes[at as usize].group_status(g)?.leader
    }

    pub fn reply(&self, n: NodeId, req: RequestId) -> Option<&ClientResponse> {
        self.replies
            .iter()
            .rev()
            .find(|(m, r, _)| *m == n && *r == req)
            .map(|(_, _, resp)| resp)
    }
}

/// A put of `key` in namespace `ns`, with no idempotency id.
pub fn put(ns: &str, key: &str, value: &[u8]) -> ClientRequest {
    put_with_id(ns, key, value, 0)
}

/// A put of `key` in namespace `ns` with idempotency id `request_id`.
pub fn put_with_id(ns: &str, key: &str, value: &[u8], request_id: u64) -> ClientRequest {
    let ops = vec![WriteOp::Put {
        key: key.into(),
        value: value.to_vec(),
    }];
    write_ops(ns, ops, request_id)
}

/// A write of `ops` in namespace `ns` with idempotency id `request_id` (0: none).
pub fn write_ops(ns: &str, ops: Vec<WriteOp>, request_id: u64) -> ClientRequest {
    ClientRequest::Write {
        ns: ns.into(),
        request_id,
        fingerprint: types::write_fingerprint(ns, &[], &ops),
        compares: Vec::new(),
        ns_revision: None,
        ops,
        meta: ChangeMeta::default(),
        audit: Default::default(),
    }
}

/// A linearizable get of `key` in namespace `ns`.
pub fn get(ns: &str, key: &str) -> ClientRequest {
    ClientRequest::Read {
        ns: ns.into(),
        query: ReadQuery::Get { key: key.into() },
        consistency: Consistency::Linearizable,
        token: None,
    }
}
