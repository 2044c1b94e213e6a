//! The simulator's events and their queue order: by (true time, sequence
//! number), so a seed replays exactly.

use meridian_core::*;

#[derive(Clone, Debug)]
pub(super) enum Ev {
    Deliver {
        to: NodeId,
        from: NodeId,
        bytes: Vec<u8>,
        meta_epoch: Option<u64>,
    },
    Timer {
        node: NodeId,
        gen: u64,
    },
    Disk {
        node: NodeId,
        inc: u64,
        id: u64,
        sync: bool,
        ops: Vec<StorageOp>,
        fail: bool,
    },
    ClientArrive {
        client: usize,
    },
    ClientReq {
        node: NodeId,
        req: RequestId,
        request: ClientRequest,
    },
    PeerReset {
        node: NodeId,
        peer: NodeId,
    },
    Restart {
        node: NodeId,
    },
    /// Crash `node` and restart it at `restart_at` (a buggify site).
    Bounce {
        node: NodeId,
        restart_at: u64,
    },
    /// Episode `episode` (index in `History::episodes`) ends.
    Heal {
        episode: usize,
    },
    NextEpisode,
    Garbage,
    /// The operator's next step on the moving namespace: create it, then move
    /// its home region again and again.
    Admin,
    /// A client sends its write again, same request id.
    ClientRetry {
        client: usize,
        op: usize,
        moving: bool,
    },
}

impl Ev {
    pub(super) fn target(&self) -> Option<NodeId> {
        match self {
            Ev::Deliver { to, .. } => Some(*to),
            Ev::Timer { node, .. }
            | Ev::Disk { node, .. }
            | Ev::ClientReq { node, .. }
            | Ev::PeerReset { node, .. } => Some(*node),
            _ => None,
        }
    }
}

pub(super) struct QItem {
    pub(super) at: u64,
    pub(super) seq: u64,
    pub(super) ev: Ev,
}
impl PartialEq for QItem {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for QItem {}
impl PartialOrd for QItem {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for QItem {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}
