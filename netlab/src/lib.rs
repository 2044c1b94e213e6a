//! The network lab: a userspace UDP relay between regions that adds one-way
//! latency, jitter and loss per directed link and cuts links on command. This
//! kernel has no `netem`, so WAN conditions for benchmarks, failover drills and
//! tests are made here instead.
//!
//! Topology: every region has a *front* address (what the other regions dial:
//! the `peer` address in their configuration) and a *real* address (where its
//! node binds, `peer_bind`). A datagram from region `s`'s real address to
//! region `d`'s front goes out to `d`'s real address from a back socket owned
//! by the pair (s, d); `d`'s replies to that back socket go back to `s` from
//! `d`'s front. Each direction passes the link's rules on entry: cut, loss,
//! then a delay of latency plus uniform jitter (so jitter can reorder, as on a
//! real WAN). QUIC runs over it unchanged.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Largest datagram relayed (bytes); QUIC stays far below it.
const DATAGRAM_BYTES_MAX: usize = 65_536;
/// Datagrams in flight inside the lab at most; beyond it they are dropped
/// (and counted), as a full router queue would.
const IN_FLIGHT_MAX: usize = 100_000;

/// The rules of one direction of one link.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkSpec {
    pub latency_ms: u64,
    /// Each datagram waits `latency_ms` plus a uniform draw in `0..=jitter_ms`.
    pub jitter_ms: u64,
    /// Probability in [0, 1] that a datagram is dropped.
    pub loss: f64,
    /// No datagram passes.
    pub cut: bool,
}

#[derive(Clone, Debug)]
pub struct Region {
    pub name: String,
    /// What the other regions dial to reach this one (the lab listens here).
    pub front: SocketAddr,
    /// Where this region's node is bound.
    pub real: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("unknown region {0:?}")]
    UnknownRegion(String),
    #[error("loss must be within 0 and 1, got {0}")]
    BadLoss(f64),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("bad command {0:?}: {1}")]
    BadCommand(String, String),
}

/// Counters since the lab started.
#[derive(Debug, Default)]
pub struct Stats {
    pub relayed: AtomicU64,
    pub dropped_cut: AtomicU64,
    pub dropped_loss: AtomicU64,
    pub dropped_overflow: AtomicU64,
    pub dropped_unknown_source: AtomicU64,
}

struct Delayed {
    due: Instant,
    seq: u64,
    via: Arc<UdpSocket>,
    to: SocketAddr,
    bytes: Vec<u8>,
}

impl PartialEq for Delayed {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delayed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

/// A running lab. Dropping it stops the relay.
pub struct Lab {
    regions: Vec<Region>,
    /// links[from][to]
    links: Arc<Mutex<Vec<Vec<LinkSpec>>>>,
    pub stats: Arc<Stats>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Decides a datagram's fate on entry to a direction and queues it.
#[derive(Clone)]
struct Ingress {
    links: Arc<Mutex<Vec<Vec<LinkSpec>>>>,
    stats: Arc<Stats>,
    queue: mpsc::Sender<Delayed>,
    seq: Arc<AtomicU64>,
}

impl Ingress {
    fn admit(&self, from: usize, to: usize, via: Arc<UdpSocket>, dest: SocketAddr, bytes: Vec<u8>) {
        let spec = match self.links.lock() {
            Ok(l) => l[from][to],
            Err(p) => p.into_inner()[from][to],
        };
        if spec.cut {
            self.stats.dropped_cut.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut rng = rand::rng();
        if spec.loss > 0.0 && rng.random_bool(spec.loss) {
            self.stats.dropped_loss.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let jitter = if spec.jitter_ms > 0 {
            rng.random_range(0..=spec.jitter_ms * 1000)
        } else {
            0
        };
        let delay = Duration::from_micros(spec.latency_ms * 1000 + jitter);
        let d = Delayed {
            due: Instant::now() + delay,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            via,
            to: dest,
            bytes,
        };
        if self.queue.try_send(d).is_err() {
            self.stats.dropped_overflow.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<Arc<UdpSocket>, LabError> {
    UdpSocket::bind(addr)
        .await
        .map(Arc::new)
        .map_err(|source| LabError::Bind { addr, source })
}

impl Lab {
    /// Start relaying between `regions`, every link clean (no delay, no loss).
    pub async fn start(regions: Vec<Region>) -> Result<Lab, LabError> {
        let n = regions.len();
        let links = Arc::new(Mutex::new(vec![vec![LinkSpec::default(); n]; n]));
        let stats = Arc::new(Stats::default());
        let (tx, mut rx) = mpsc::channel::<Delayed>(IN_FLIGHT_MAX);
        let ingress = Ingress {
            links: links.clone(),
            stats: stats.clone(),
            queue: tx,
            seq: Arc::new(AtomicU64::new(0)),
        };
        let mut tasks = Vec::new();
        // The delay line: one queue ordered by due time for every direction.
        let relayed = stats.clone();
        tasks.push(tokio::spawn(async move {
            let mut heap: BinaryHeap<Reverse<Delayed>> = BinaryHeap::new();
            loop {
                let next_due = heap.peek().map(|Reverse(d)| d.due);
                tokio::select! {
                    got = rx.recv() => match got {
                        Some(d) => heap.push(Reverse(d)),
                        None => return,
                    },
                    _ = async {
                        match next_due {
                            Some(t) => tokio::time::sleep_until(t).await,
                            None => std::future::pending::<()>().await,
                        }
                    } => {
                        let now = Instant::now();
                        while heap.peek().is_some_and(|Reverse(d)| d.due <= now) {
                            if let Some(Reverse(d)) = heap.pop() {
                                // A send error (peer socket gone) is a lost datagram.
                                let _ = d.via.send_to(&d.bytes, d.to).await;
                                relayed.relayed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
        }));
        let mut fronts = Vec::with_capacity(n);
        for r in &regions {
            fronts.push(bind(r.front).await?);
        }
        for (d, dst) in regions.iter().enumerate() {
            // Back sockets for every source of this destination.
            let mut backs: Vec<Option<Arc<UdpSocket>>> = vec![None; n];
            for (s, src) in regions.iter().enumerate() {
                if s == d {
                    continue;
                }
                let any = SocketAddr::new(src.real.ip(), 0);
                let back = bind(any).await?;
                backs[s] = Some(back.clone());
                // Replies of d to s: in at the back socket, out of d's front.
                let (ing, front, to) = (ingress.clone(), fronts[d].clone(), src.real);
                let from_real = dst.real;
                let stats = stats.clone();
                tasks.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
                    while let Ok((len, from)) = back.recv_from(&mut buf).await {
                        if from != from_real {
                            stats.dropped_unknown_source.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        ing.admit(d, s, front.clone(), to, buf[..len].to_vec());
                    }
                }));
            }
            // Datagrams to d's front: identify the source by its real address.
            let reals: Vec<SocketAddr> = regions.iter().map(|r| r.real).collect();
            let (ing, front, to) = (ingress.clone(), fronts[d].clone(), dst.real);
            let stats = stats.clone();
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
                while let Ok((len, from)) = front.recv_from(&mut buf).await {
                    let Some(s) = reals.iter().position(|r| *r == from).filter(|&s| s != d) else {
                        stats.dropped_unknown_source.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    if let Some(back) = &backs[s] {
                        ing.admit(s, d, back.clone(), to, buf[..len].to_vec());
                    }
                }
            }));
        }
        Ok(Lab {
            regions,
            links,
            stats,
            tasks,
        })
    }

    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    fn index(&self, name: &str) -> Result<usize, LabError> {
        self.regions
            .iter()
            .position(|r| r.name == name)
            .ok_or_else(|| LabError::UnknownRegion(name.to_string()))
    }

    fn edit(&self, f: impl FnOnce(&mut Vec<Vec<LinkSpec>>)) {
        match self.links.lock() {
            Ok(mut l) => f(&mut l),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// Set the rules of the direction `from` -> `to`.
    pub fn set(&self, from: &str, to: &str, spec: LinkSpec) -> Result<(), LabError> {
        if !(0.0..=1.0).contains(&spec.loss) {
            return Err(LabError::BadLoss(spec.loss));
        }
        let (f, t) = (self.index(from)?, self.index(to)?);
        self.edit(|l| l[f][t] = spec);
        Ok(())
    }

    /// Set both directions between `a` and `b`.
    pub fn set_both(&self, a: &str, b: &str, spec: LinkSpec) -> Result<(), LabError> {
        self.set(a, b, spec)?;
        self.set(b, a, spec)
    }

    pub fn link(&self, from: &str, to: &str) -> Result<LinkSpec, LabError> {
        let (f, t) = (self.index(from)?, self.index(to)?);
        let mut out = LinkSpec::default();
        self.edit(|l| out = l[f][t]);
        Ok(out)
    }

    /// Cut (or restore) the direction `from` -> `to`, keeping its other rules.
    pub fn set_cut(&self, from: &str, to: &str, cut: bool) -> Result<(), LabError> {
        let (f, t) = (self.index(from)?, self.index(to)?);
        self.edit(|l| l[f][t].cut = cut);
        Ok(())
    }

    /// Cut every link between `region` and the others, both ways.
    pub fn isolate(&self, region: &str, cut: bool) -> Result<(), LabError> {
        let r = self.index(region)?;
        self.edit(|l| {
            for (o, row) in l.iter_mut().enumerate() {
                if o != r {
                    row[r].cut = cut;
                }
            }
            for (o, spec) in l[r].iter_mut().enumerate() {
                if o != r {
                    spec.cut = cut;
                }
            }
        });
        Ok(())
    }

    /// Run one control command (the same language as the binary's control
    /// port), returning its answer:
    /// `set FROM TO [latency=MS] [jitter=MS] [loss=P]` (one direction),
    /// `set-both A B ...`, `cut FROM TO`, `heal FROM TO`, `isolate R`,
    /// `rejoin R`, `show`, `stats`.
    pub fn command(&self, line: &str) -> Result<String, LabError> {
        let bad = |why: &str| LabError::BadCommand(line.to_string(), why.to_string());
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["set" | "set-both", a, b, rest @ ..] => {
                let mut spec = self.link(a, b)?;
                for kv in rest {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| bad("expected key=value"))?;
                    match k {
                        "latency" => spec.latency_ms = v.parse().map_err(|_| bad("latency: ms"))?,
                        "jitter" => spec.jitter_ms = v.parse().map_err(|_| bad("jitter: ms"))?,
                        "loss" => spec.loss = v.parse().map_err(|_| bad("loss: 0..1"))?,
                        _ => return Err(bad("keys are latency, jitter, loss")),
                    }
                }
                if words[0] == "set" {
                    self.set(a, b, spec)?;
                } else {
                    self.set_both(a, b, spec)?;
                }
                Ok("ok".into())
            }
            ["cut", a, b] => self.set_cut(a, b, true).map(|_| "ok".into()),
            ["heal", a, b] => self.set_cut(a, b, false).map(|_| "ok".into()),
            ["isolate", r] => self.isolate(r, true).map(|_| "ok".into()),
            ["rejoin", r] => self.isolate(r, false).map(|_| "ok".into()),
            ["show"] => {
                let mut out = String::new();
                for a in &self.regions {
                    for b in &self.regions {
                        if a.name != b.name {
                            let s = self.link(&a.name, &b.name)?;
                            out.push_str(&format!(
                                "{} -> {}: latency={} jitter={} loss={}{}\n",
                                a.name,
                                b.name,
                                s.latency_ms,
                                s.jitter_ms,
                                s.loss,
                                if s.cut { " CUT" } else { "" }
                            ));
                        }
                    }
                }
                Ok(out)
            }
            ["stats"] => {
                let s = &self.stats;
                Ok(format!(
                    "relayed={} dropped_cut={} dropped_loss={} dropped_overflow={} dropped_unknown_source={}",
                    s.relayed.load(Ordering::Relaxed),
                    s.dropped_cut.load(Ordering::Relaxed),
                    s.dropped_loss.load(Ordering::Relaxed),
                    s.dropped_overflow.load(Ordering::Relaxed),
                    s.dropped_unknown_source.load(Ordering::Relaxed)
                ))
            }
            _ => Err(bad(
                "commands: set, set-both, cut, heal, isolate, rejoin, show, stats",
            )),
        }
    }
}
