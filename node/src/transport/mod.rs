//! The inter-region transport: QUIC (quinn) with mutual TLS. Each node dials
//! every other node and sends on its own outbound connection; it receives on
//! the connection the other dials to it. A connection carries one
//! unidirectional stream per group, one for metadata sync and one for
//! forwarded requests, so a large snapshot of one group never blocks another
//! group's heartbeats. Every stream is opened when its connection comes up
//! and re-opened only with a new connection: a link is up with all of its
//! streams or not at all.
//!
//! Frames are length-prefixed: a 4-byte big-endian length, then a prost
//! `PeerFrame` holding one core message; an empty one is a keep-alive, sent on
//! a stream idle for `STREAM_KEEPALIVE_MS`. Each stream begins with a
//! `PeerHello` naming the sender's region, its boot id, the stream's index and
//! the protocol version; the region must be the one the sender's certificate
//! was issued to. Frames above the size limit, bad hellos and undecodable
//! frames close the connection with a reason; nothing from a peer can panic
//! the node.
//!
//! Liveness (`health.rs`): a peer is connected only when the outbound
//! connection is up and every inbound stream was heard within a second. Three
//! watchdogs turn a half-dead link into a reconnect instead of a silent
//! stall: an inbound stream silent for `STREAM_SILENT_RESET_MS` closes its
//! connection (the peer redials); a write that makes no progress for
//! `WRITE_STALL_MS_MAX` closes ours (we redial); and a peer whose hello shows
//! a new boot id (it restarted) has our outbound connection to its previous
//! process redialed at once. The core can ask for a reset too
//! (`Transport::reset`), when forwards to a peer go unanswered.
//!
//! Reconnection uses exponential backoff with full jitter; every new outbound
//! connection is reported to the core (`handle_peer_reset`) so the metadata
//! sync, which needs a reliable ordered channel, starts over on it.

pub mod health;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_core::wire::Channel;
use prost::Message;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rand::Rng;
use tokio::sync::{mpsc, Notify};

use crate::tls::{cert_is_for_region, region_dns_name, TlsMaterial};
pub use health::LinkState;
use health::{PeerHealth, STREAM_FRESH_MS, STREAM_KEEPALIVE_MS};

/// Version of the peer protocol spoken inside the frames. 2: every stream
/// opened with its connection, hellos carry the boot id and the stream index,
/// empty frames are keep-alives.
pub const PROTOCOL_VERSION: u32 = 2;
/// Outgoing frames queued per peer and stream before new ones are dropped
/// (the Raft channel tolerates loss; a dropped metadata frame forces a
/// reconnect).
pub const PEER_QUEUE_FRAMES_MAX: usize = 8192;
const BACKOFF_BASE_MS: u64 = 50;
const BACKOFF_MAX_MS: u64 = 2_000;
/// A dial that has not completed its handshake by then starts over (a dead
/// peer's port gives no answer; the handshake would wait for the idle timeout).
const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// A frame write that makes no progress for this long resets the connection:
/// the peer stopped reading (flow control) or the path is gone.
const WRITE_STALL_MS_MAX: u64 = 3_000;
/// QUIC keep-alive, well below the idle timeout so a quiet link stays up.
const KEEP_ALIVE_MS: u64 = STREAM_FRESH_MS;
const IDLE_TIMEOUT_MS: u64 = 6_000;
/// Flow-control windows sized for WAN bulk transfer: at 150 ms RTT a 16 MiB
/// stream window sustains ~100 MiB/s of snapshot traffic.
const STREAM_WINDOW_BYTES: u32 = 16 << 20;
const CONN_WINDOW_BYTES: u32 = 64 << 20;
/// Bytes of a hello at most.
const HELLO_BYTES_MAX: usize = 4096;

/// Application close codes (shown to the other side with a reason).
const CLOSE_BAD_IDENTITY: u32 = 1;
const CLOSE_BAD_FRAME: u32 = 2;
const CLOSE_RESET: u32 = 3;
const CLOSE_SILENT: u32 = 4;
const CLOSE_REPLACED: u32 = 5;
/// Closed by a drill fault that isolates this region.
const CLOSE_ISOLATED: u32 = 6;
/// How often a dialer waiting out an isolation looks again.
const ISOLATION_POLL_MS: u64 = 50;

/// Hello at the start of every stream.
#[derive(Clone, PartialEq, Message)]
pub struct PeerHello {
    #[prost(string, tag = "1")]
    pub region: String,
    #[prost(uint32, tag = "2")]
    pub protocol_version: u32,
    #[prost(uint32, tag = "3")]
    pub cluster_regions: u32,
    /// Drawn at process start: a new one means the peer restarted.
    #[prost(uint64, tag = "4")]
    pub boot: u64,
    /// Which stream this is (`stream_of`).
    #[prost(uint32, tag = "5")]
    pub stream: u32,
}

/// One core message (`meridian_core::wire::Msg`, postcard-encoded); empty:
/// a keep-alive.
#[derive(Clone, PartialEq, Message)]
pub struct PeerFrame {
    #[prost(bytes = "vec", tag = "1")]
    pub msg: Vec<u8>,
}

/// What the transport delivers to the node's driver.
#[derive(Debug)]
pub enum PeerEvent {
    Message {
        from: u8,
        bytes: Vec<u8>,
    },
    /// A new outbound connection to `peer` is up.
    Reset {
        peer: u8,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("quic config: {0}")]
    Config(String),
    #[error("cannot bind peer address {addr}: {cause}")]
    Bind {
        addr: SocketAddr,
        /// In the message (not `source()`, which would print it twice in a chain).
        cause: std::io::Error,
    },
}

#[derive(Clone)]
pub struct PeerInfo {
    pub name: String,
    pub addr: SocketAddr,
}

/// The stream a channel travels on: its group's, then metadata, then forwards.
pub fn stream_of(channel: Channel, regions: u8) -> u8 {
    match channel {
        Channel::Group(g) => g,
        Channel::Meta => regions,
        Channel::Forward => regions + 1,
    }
}

/// Streams per connection: one per group, metadata, forwards.
fn stream_count(regions: u8) -> usize {
    regions as usize + 2
}

fn stream_names(names: &[String]) -> Vec<String> {
    let mut v: Vec<String> = names.to_vec();
    v.push("meta".into());
    v.push("forward".into());
    v
}

type Queue = Arc<tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>>;

/// Everything the tasks of one peer share.
struct Link {
    info: PeerInfo,
    /// Per stream: the sending half of its queue.
    queues: Vec<mpsc::Sender<Vec<u8>>>,
    health: Mutex<PeerHealth>,
    /// Wakes the dialer to drop its connection and redial.
    reset: Notify,
    /// Why, and when: a connection made after the request is not reset.
    reset_why: Mutex<Option<(String, Instant)>>,
    /// The inbound connection now in use, to close on a reset.
    inbound: Mutex<Option<(u64, quinn::Connection)>>,
    /// The outbound connection while it is up (its round-trip estimate).
    outbound: Mutex<Option<quinn::Connection>>,
    /// Outbound connections established, the first included.
    connects: std::sync::atomic::AtomicU64,
}

/// A lock that survives a panicked holder (the data stays consistent: every
/// critical section here is a plain assignment or a pure state update).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Link {
    fn health(&self) -> std::sync::MutexGuard<'_, PeerHealth> {
        lock(&self.health)
    }

    fn request_reset(&self, why: String) {
        *lock(&self.reset_why) = Some((why, Instant::now()));
        self.reset.notify_one();
    }

    /// The reason of a reset asked for at or after `since`, a connection's
    /// start. One asked for earlier was about a connection that no longer
    /// exists (say, "the peer restarted" while this one was being dialed to
    /// the new process): it is dropped.
    fn take_reset_since(&self, since: Instant) -> Option<String> {
        let mut r = lock(&self.reset_why);
        match r.take() {
            Some((why, at)) if at >= since => Some(why),
            Some(_) | None => None,
        }
    }

    /// Wait for a reset asked for at or after `since`.
    async fn reset_requested(&self, since: Instant) -> String {
        loop {
            self.reset.notified().await;
            if let Some(why) = self.take_reset_since(since) {
                return why;
            }
        }
    }
}

/// What every task of the transport shares.
struct Shared {
    me: u8,
    names: Vec<String>,
    boot: u64,
    frame_bytes_max: usize,
    /// Per region; `None` for this node.
    links: Vec<Option<Arc<Link>>>,
    events: mpsc::Sender<PeerEvent>,
    /// This node is shutting down: connections ending are expected, not
    /// worth a warning.
    closing: std::sync::atomic::AtomicBool,
    /// A drill fault cuts this region off: nothing is sent, dialled or
    /// accepted, and connections are closed, as a real network cut would
    /// leave them (peers see the link down, not a silent one).
    isolated: std::sync::atomic::AtomicBool,
    /// Wakes dialers waiting out an isolation.
    unisolated: Notify,
}

impl Shared {
    fn closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn isolated(&self) -> bool {
        self.isolated.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Returns once no isolation holds. The poll bounds a wake-up missed
    /// between the check and the wait.
    async fn wait_unisolated(&self) {
        while self.isolated() {
            let _ = tokio::time::timeout(
                Duration::from_millis(ISOLATION_POLL_MS),
                self.unisolated.notified(),
            )
            .await;
        }
    }
}

pub struct Transport {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    regions: u8,
}

fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_millis(KEEP_ALIVE_MS)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_millis(IDLE_TIMEOUT_MS)) {
        t.max_idle_timeout(Some(idle));
    }
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW_BYTES));
    t.receive_window(quinn::VarInt::from_u32(CONN_WINDOW_BYTES));
    t.send_window(u64::from(CONN_WINDOW_BYTES));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(64));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(0));
    t
}

impl Transport {
    /// Bind the peer endpoint (at `bind`, or this region's peer address) and
    /// start dialing every other region. Events go to `events`.
    pub fn start(
        me: u8,
        bind: Option<std::net::SocketAddr>,
        peers: Vec<PeerInfo>,
        tls: &TlsMaterial,
        frame_bytes_max: usize,
        events: mpsc::Sender<PeerEvent>,
    ) -> Result<Transport, TransportError> {
        let regions = peers.len() as u8;
        let server_tls = QuicServerConfig::try_from(tls.server_config()?)
            .map_err(|e| TransportError::Config(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
        server.transport_config(Arc::new(transport_config()));
        let client_tls = QuicClientConfig::try_from(tls.client_config()?)
            .map_err(|e| TransportError::Config(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
        client.transport_config(Arc::new(transport_config()));
        let addr = bind.unwrap_or(peers[me as usize].addr);
        let mut endpoint = quinn::Endpoint::server(server, addr)
            .map_err(|cause| TransportError::Bind { addr, cause })?;
        endpoint.set_default_client_config(client);

        let names: Vec<String> = peers.iter().map(|p| p.name.clone()).collect();
        let mut links = Vec::new();
        let mut receivers = Vec::new();
        for (i, p) in peers.iter().enumerate() {
            if i == me as usize {
                links.push(None);
                receivers.push(Vec::new());
                continue;
            }
            let mut queues = Vec::new();
            let mut rxs = Vec::new();
            for _ in 0..stream_count(regions) {
                let (tx, rx) = mpsc::channel(PEER_QUEUE_FRAMES_MAX);
                queues.push(tx);
                rxs.push(Arc::new(tokio::sync::Mutex::new(rx)));
            }
            links.push(Some(Arc::new(Link {
                info: p.clone(),
                queues,
                health: Mutex::new(PeerHealth::new(stream_names(&names))),
                reset: Notify::new(),
                reset_why: Mutex::new(None),
                inbound: Mutex::new(None),
                outbound: Mutex::new(None),
                connects: std::sync::atomic::AtomicU64::new(0),
            })));
            receivers.push(rxs);
        }
        let shared = Arc::new(Shared {
            me,
            names,
            boot: rand::random(),
            frame_bytes_max,
            links,
            events,
            closing: std::sync::atomic::AtomicBool::new(false),
            isolated: std::sync::atomic::AtomicBool::new(false),
            unisolated: Notify::new(),
        });
        for (i, rxs) in receivers.into_iter().enumerate() {
            if i != me as usize {
                tokio::spawn(dial_loop(endpoint.clone(), shared.clone(), i as u8, rxs));
            }
        }
        tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
        Ok(Transport {
            endpoint,
            shared,
            regions,
        })
    }

    fn link(&self, peer: u8) -> Option<&Arc<Link>> {
        self.shared.links.get(peer as usize)?.as_ref()
    }

    /// Queue a core message for `to`. Never blocks: a full queue drops it.
    pub fn send(&self, to: u8, channel: Channel, bytes: Vec<u8>) {
        if self.shared.isolated() {
            return;
        }
        let Some(link) = self.link(to) else {
            return;
        };
        let stream = stream_of(channel, self.regions) as usize;
        let Some(q) = link.queues.get(stream) else {
            return;
        };
        if q.try_send(bytes).is_err() && channel == Channel::Meta {
            // Metadata sync needs every frame in order: start it over on a
            // new connection.
            link.request_reset("metadata frame dropped (queue full)".into());
        }
    }

    /// Drop both connections with `peer` and redial (the peer redials its
    /// own when ours closes): asked for by the core when forwards to the
    /// peer go unanswered while the transport believes the link is fine.
    pub fn reset(&self, peer: u8, why: &str) {
        let Some(link) = self.link(peer) else {
            return;
        };
        tracing::warn!(peer = %link.info.name, reason = %why, "resetting the peer connections");
        if let Some((_, conn)) = lock(&link.inbound).take() {
            conn.close(quinn::VarInt::from_u32(CLOSE_RESET), why.as_bytes());
        }
        link.request_reset(why.to_string());
    }

    /// Cut this region off from every peer (a drill fault), or end the cut.
    /// While cut off, connections are closed, nothing is dialled, inbound
    /// handshakes are refused and sends are dropped; the core sees what it
    /// would see in a real partition.
    pub fn set_isolated(&self, on: bool) {
        let was = self
            .shared
            .isolated
            .swap(on, std::sync::atomic::Ordering::AcqRel);
        if was == on {
            return;
        }
        for link in self.shared.links.iter().flatten() {
            if on {
                if let Some((_, conn)) = lock(&link.inbound).take() {
                    conn.close(
                        quinn::VarInt::from_u32(CLOSE_ISOLATED),
                        b"drill fault: isolated",
                    );
                }
                link.request_reset("drill fault: isolated".into());
            } else {
                // Cut any backoff short: the peers are reachable again.
                link.reset.notify_one();
            }
        }
        if !on {
            self.shared.unisolated.notify_waiters();
        }
    }

    /// What works on the link to `peer` (this node: connected).
    pub fn link_state(&self, peer: u8) -> LinkState {
        if peer == self.shared.me {
            return LinkState::Connected;
        }
        match self.link(peer) {
            Some(l) => l.health().state(Instant::now()),
            None => LinkState::Disconnected,
        }
    }

    /// QUIC's smoothed round-trip estimate on the outbound connection to
    /// `peer`, while one is up.
    pub fn peer_rtt(&self, peer: u8) -> Option<Duration> {
        let link = self.link(peer)?;
        let conn = lock(&link.outbound);
        conn.as_ref().map(quinn::Connection::rtt)
    }

    /// Outbound connections to `peer` established after the first: the
    /// times the link was lost and made again.
    pub fn peer_reconnects(&self, peer: u8) -> u64 {
        self.link(peer).map_or(0, |l| {
            l.connects
                .load(std::sync::atomic::Ordering::Relaxed)
                .saturating_sub(1)
        })
    }

    pub fn is_connected(&self, peer: u8) -> bool {
        self.link_state(peer).is_connected()
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    pub fn close(&self) {
        self.shared
            .closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
    }
}

fn backoff_ms(attempt: u32) -> u64 {
    let cap = BACKOFF_BASE_MS
        .saturating_mul(1 << attempt.min(10))
        .min(BACKOFF_MAX_MS);
    rand::rng().random_range(cap / 2..=cap)
}

fn frame(m: &impl Message) -> Vec<u8> {
    let body = m.encode_to_vec();
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Write all of `buf`, failing if no byte goes out for `WRITE_STALL_MS_MAX`.
async fn write_with_progress(send: &mut quinn::SendStream, buf: &[u8]) -> Result<(), String> {
    let mut off = 0;
    while off < buf.len() {
        match tokio::time::timeout(
            Duration::from_millis(WRITE_STALL_MS_MAX),
            send.write(&buf[off..]),
        )
        .await
        {
            Ok(Ok(n)) => off += n,
            Ok(Err(e)) => return Err(format!("write: {e}")),
            Err(_) => {
                return Err(format!(
                    "a write made no progress for {WRITE_STALL_MS_MAX} ms"
                ))
            }
        }
    }
    Ok(())
}

/// Why a stream writer stopped.
enum WriterEnd {
    /// The transport is gone: stop the link.
    Shutdown,
    Failed(String),
}

/// Send one stream's queue on `send`, with a keep-alive whenever the stream
/// has been idle for `STREAM_KEEPALIVE_MS`.
async fn stream_writer(mut send: quinn::SendStream, queue: Queue) -> WriterEnd {
    let mut rx = queue.lock().await;
    let keepalive = frame(&PeerFrame { msg: Vec::new() });
    loop {
        let next =
            tokio::time::timeout(Duration::from_millis(STREAM_KEEPALIVE_MS), rx.recv()).await;
        let out = match next {
            Ok(Some(bytes)) => frame(&PeerFrame { msg: bytes }),
            Ok(None) => return WriterEnd::Shutdown,
            Err(_) => keepalive.clone(),
        };
        if let Err(e) = write_with_progress(&mut send, &out).await {
            return WriterEnd::Failed(e);
        }
    }
}

/// Drop what queued up for a connection that is gone: Raft resends and
/// metadata sync restarts on the next connection.
fn drain(queues: &[Queue]) {
    for q in queues {
        if let Ok(mut rx) = q.try_lock() {
            while rx.try_recv().is_ok() {}
        }
    }
}

/// Open every stream of a new connection and say hello on each.
async fn open_streams(
    conn: &quinn::Connection,
    shared: &Shared,
) -> Result<Vec<quinn::SendStream>, String> {
    let regions = shared.names.len() as u8;
    let mut sends = Vec::new();
    for s in 0..stream_count(regions) {
        let mut send = conn
            .open_uni()
            .await
            .map_err(|e| format!("open stream: {e}"))?;
        let hello = PeerHello {
            region: shared.names[shared.me as usize].clone(),
            protocol_version: PROTOCOL_VERSION,
            cluster_regions: regions as u32,
            boot: shared.boot,
            stream: s as u32,
        };
        write_with_progress(&mut send, &frame(&hello)).await?;
        sends.push(send);
    }
    Ok(sends)
}

/// One peer's outbound side: dial, open every stream, run a writer per
/// stream until any of them, the connection or a reset request ends it, then
/// tear everything down and dial again.
async fn dial_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>, peer: u8, queues: Vec<Queue>) {
    let Some(link) = shared.links[peer as usize].clone() else {
        return;
    };
    let info = link.info.clone();
    let mut attempt = 0u32;
    // The peer closed our connection saying it shuts down: until it is back,
    // failing to reach it is expected (its status says so), not a warning.
    let mut peer_shut_down = false;
    loop {
        if shared.events.is_closed() || shared.closing() {
            return;
        }
        shared.wait_unisolated().await;
        let connecting = match endpoint.connect(info.addr, &region_dns_name(&info.name)) {
            Ok(c) => c,
            Err(e) => {
                if !shared.closing() {
                    tracing::error!(peer = %info.name, error = %e, "cannot dial peer");
                }
                return;
            }
        };
        let conn = match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connecting)
            .await
        {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no handshake within {CONNECT_TIMEOUT_MS} ms")),
        };
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                if shared.closing() {
                    return;
                }
                if peer_shut_down {
                    tracing::debug!(peer = %info.name, addr = %info.addr, error = %e, "peer still down after its shutdown; retrying with backoff");
                } else if attempt.is_multiple_of(20) {
                    tracing::warn!(peer = %info.name, addr = %info.addr, error = %e, "peer connection failed; retrying with backoff");
                }
                drain(&queues);
                // A reset request (the peer just dialed us from a new
                // process) cuts the backoff short.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(backoff_ms(attempt))) => {}
                    _ = link.reset.notified() => {}
                }
                attempt = attempt.saturating_add(1);
                continue;
            }
        };
        if shared.isolated() {
            conn.close(
                quinn::VarInt::from_u32(CLOSE_ISOLATED),
                b"drill fault: isolated",
            );
            drain(&queues);
            continue;
        }
        let sends = match open_streams(&conn, &shared).await {
            Ok(s) => s,
            Err(why) => {
                conn.close(quinn::VarInt::from_u32(CLOSE_RESET), b"reconnecting");
                if shared.closing() {
                    return;
                }
                tracing::warn!(peer = %info.name, reason = %why, "peer connection lost while opening streams; reconnecting");
                drain(&queues);
                tokio::time::sleep(Duration::from_millis(backoff_ms(attempt))).await;
                attempt = attempt.saturating_add(1);
                continue;
            }
        };
        attempt = 0;
        peer_shut_down = false;
        let since = Instant::now();
        let generation = link.health().outbound_up();
        *lock(&link.outbound) = Some(conn.clone());
        link.connects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut writers = tokio::task::JoinSet::new();
        for (send, q) in sends.into_iter().zip(queues.iter()) {
            writers.spawn(stream_writer(send, q.clone()));
        }
        tracing::info!(peer = %info.name, addr = %info.addr, generation, "connected to peer");
        if shared.events.send(PeerEvent::Reset { peer }).await.is_err() {
            return;
        }
        let why = tokio::select! {
            end = writers.join_next() => match end {
                Some(Ok(WriterEnd::Failed(why))) => why,
                Some(Ok(WriterEnd::Shutdown)) | None => {
                    conn.close(quinn::VarInt::from_u32(0), b"shutdown");
                    link.health().outbound_down(generation);
                    return;
                }
                Some(Err(e)) => format!("stream writer ended: {e}"),
            },
            e = conn.closed() => {
                peer_shut_down = matches!(
                    &e,
                    quinn::ConnectionError::ApplicationClosed(a)
                        if a.error_code == quinn::VarInt::from_u32(0)
                );
                e.to_string()
            }
            why = link.reset_requested(since) => why,
        };
        link.health().outbound_down(generation);
        *lock(&link.outbound) = None;
        conn.close(quinn::VarInt::from_u32(CLOSE_RESET), b"reconnecting");
        writers.abort_all();
        while writers.join_next().await.is_some() {}
        drain(&queues);
        if shared.closing() {
            return;
        }
        if peer_shut_down {
            tracing::info!(peer = %info.name, generation, "peer shut down; redialling until it is back");
        } else {
            tracing::warn!(peer = %info.name, generation, reason = %why, "peer connection lost; reconnecting");
        }
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(inbound(incoming, shared.clone()));
    }
}

/// One connection a peer dialed to this node: identify it, make it the
/// peer's current inbound connection (closing an older one), read every
/// stream, and close it if a stream falls silent.
async fn inbound(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let remote = incoming.remote_address();
    if shared.isolated() {
        incoming.refuse();
        return;
    }
    let conn = match incoming.await {
        Ok(c) => c,
        // This node is closing its endpoint (shutting down): a handshake
        // under way ends with it, which is no peer's fault.
        Err(quinn::ConnectionError::LocallyClosed) => {
            tracing::debug!(%remote, "peer handshake ended by this node's shutdown");
            return;
        }
        // The dialing peer closed its side during the handshake (its own
        // shutdown or restart: an application close then travels as the
        // transport's APPLICATION_ERROR, RFC 9000 section 10.2.3). Not a
        // rejection, and not worth a warning.
        Err(quinn::ConnectionError::ApplicationClosed(_)) => {
            tracing::info!(%remote, "peer closed its connection during the handshake");
            return;
        }
        Err(quinn::ConnectionError::ConnectionClosed(c))
            if c.error_code == quinn::TransportErrorCode::APPLICATION_ERROR =>
        {
            tracing::info!(%remote, "peer closed its connection during the handshake");
            return;
        }
        Err(e) => {
            // Includes a certificate from another CA: the handshake fails.
            tracing::warn!(%remote, error = %e, "rejected peer connection (TLS handshake failed)");
            return;
        }
    };
    let from = identify(&conn, &shared.names);
    let Some((from, link)) = from
        .filter(|f| *f != shared.me)
        .and_then(|f| Some((f, shared.links.get(f as usize)?.clone()?)))
    else {
        tracing::warn!(%remote, "rejected peer: its certificate names no other region of this cluster");
        conn.close(
            quinn::VarInt::from_u32(CLOSE_BAD_IDENTITY),
            b"certificate names no region of this cluster",
        );
        return;
    };
    if shared.isolated() {
        conn.close(
            quinn::VarInt::from_u32(CLOSE_ISOLATED),
            b"drill fault: isolated",
        );
        return;
    }
    let opened = link.health().inbound_opened(Instant::now());
    let generation = opened.generation;
    let old = lock(&link.inbound).replace((generation, conn.clone()));
    if let Some((_, old)) = old {
        old.close(
            quinn::VarInt::from_u32(CLOSE_REPLACED),
            b"replaced by a newer connection",
        );
    }
    let name = link.info.name.clone();
    let mut readers = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(STREAM_KEEPALIVE_MS));
    let why = loop {
        tokio::select! {
            r = conn.accept_uni() => match r {
                Ok(recv) => {
                    let shared = shared.clone();
                    let link = link.clone();
                    readers.spawn(async move {
                        read_stream(recv, from, generation, &link, &shared).await
                    });
                }
                Err(e) => break (0, e.to_string()),
            },
            Some(done) = readers.join_next() => {
                if let Ok(Err(reason)) = done {
                    break (CLOSE_BAD_FRAME, reason);
                }
            },
            _ = tick.tick() => {
                let verdict = link.health().watchdog(generation, Instant::now());
                if let Some(why) = verdict {
                    let code = if why.starts_with("replaced") { CLOSE_REPLACED } else { CLOSE_SILENT };
                    break (code, why);
                }
            },
            _ = shared.events.closed() => break (0, String::new()),
        }
    };
    let (code, reason) = why;
    if code != 0 {
        conn.close(quinn::VarInt::from_u32(code), reason.as_bytes());
    }
    readers.abort_all();
    link.health().inbound_closed(generation);
    {
        let mut cur = lock(&link.inbound);
        if cur.as_ref().is_some_and(|(g, _)| *g == generation) {
            *cur = None;
        }
    }
    match code {
        _ if shared.closing() => {}
        CLOSE_BAD_FRAME | CLOSE_SILENT => {
            tracing::warn!(peer = %name, generation, %reason, "closing peer connection")
        }
        _ if !reason.is_empty() => {
            tracing::info!(peer = %name, generation, %reason, "inbound peer connection ended")
        }
        _ => {}
    }
}

fn identify(conn: &quinn::Connection, names: &[String]) -> Option<u8> {
    let any = conn.peer_identity()?;
    let certs = any
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    let leaf = certs.first()?;
    names
        .iter()
        .position(|n| cert_is_for_region(leaf, n))
        .map(|i| i as u8)
}

/// Read one length-prefixed frame; `heard` is called as its bytes arrive, so
/// a large frame on a slow link keeps its stream alive. `None` at a clean end, or when the connection is gone.
async fn read_frame(
    recv: &mut quinn::RecvStream,
    max: usize,
    mut heard: impl FnMut(),
) -> Result<Option<Vec<u8>>, String> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        // The connection closed (the peer shutting down, a reset, this
        // node's own close): no fault of the stream's. The connection's
        // owner sees the same loss and says why; a reader that reported it
        // as a bad frame raced it and logged a warning for a clean
        // shutdown (tests/dev.rs caught it).
        Err(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(_))) => {
            return Ok(None)
        }
        Err(e) => return Err(format!("read: {e}")),
    }
    heard();
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(format!("frame of {len} bytes exceeds the limit of {max}"));
    }
    let mut buf = vec![0u8; len];
    let mut off = 0;
    while off < len {
        match recv.read(&mut buf[off..]).await {
            Ok(Some(n)) => off += n,
            Ok(None) => return Err("read: stream ended inside a frame".into()),
            // As above: the frame is lost with its connection, not malformed.
            Err(quinn::ReadError::ConnectionLost(_)) => return Ok(None),
            Err(e) => return Err(format!("read: {e}")),
        }
        heard();
    }
    Ok(Some(buf))
}

async fn read_stream(
    mut recv: quinn::RecvStream,
    from: u8,
    generation: u64,
    link: &Link,
    shared: &Shared,
) -> Result<(), String> {
    let Some(h) = read_frame(&mut recv, HELLO_BYTES_MAX, || {}).await? else {
        return Ok(());
    };
    let hello = PeerHello::decode(h.as_slice()).map_err(|e| format!("bad hello: {e}"))?;
    let name = &link.info.name;
    if hello.region != *name {
        return Err(format!(
            "peer says it is region {:?} but its certificate is for {:?}",
            hello.region, name
        ));
    }
    let regions = shared.names.len() as u32;
    if hello.protocol_version != PROTOCOL_VERSION || hello.cluster_regions != regions {
        return Err(format!(
            "peer speaks protocol {} with {} regions; this node speaks {} with {}",
            hello.protocol_version, hello.cluster_regions, PROTOCOL_VERSION, regions
        ));
    }
    let stream = hello.stream as usize;
    if stream >= stream_count(regions as u8) {
        return Err(format!("hello names stream {stream}, which does not exist"));
    }
    let restarted = link
        .health()
        .inbound_hello(generation, hello.boot, stream, Instant::now());
    if restarted {
        // Our outbound connection leads to the peer's previous process:
        // redial now rather than wait for it to time out.
        link.request_reset("the peer restarted".into());
    }
    // Room for the frame's own prost header around a maximal core message.
    let frame_max = shared.frame_bytes_max + 64;
    let heard = || link.health().heard(generation, stream, Instant::now());
    while let Some(buf) = read_frame(&mut recv, frame_max, heard).await? {
        let f = PeerFrame::decode(buf.as_slice()).map_err(|e| format!("bad frame: {e}"))?;
        if f.msg.is_empty() {
            continue; // keep-alive
        }
        if shared.isolated() {
            continue; // arrived as the cut began: lost, as on a cut network
        }
        if shared
            .events
            .send(PeerEvent::Message { from, bytes: f.msg })
            .await
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_core::wire::{Msg, RaftMsg};

    #[test]
    fn stream_choice_follows_the_message_kind() {
        let raft = Msg::Raft {
            group: 2,
            term: 7,
            body: RaftMsg::PreVoteResp { granted: true },
        };
        assert_eq!(stream_of(raft.channel(), 3), 2);
        let meta = Msg::Meta { sync: vec![1, 2] };
        assert_eq!(stream_of(meta.channel(), 3), 3);
        let fwd = Msg::ForwardReply {
            boot: 9,
            id: 1,
            resp: meridian_core::ClientResponse::Done,
        };
        assert_eq!(stream_of(fwd.channel(), 3), 4);
    }
}
