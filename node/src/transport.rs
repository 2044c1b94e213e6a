//! The inter-region transport: QUIC (quinn) with mutual TLS. Each node dials
//! every other node and sends on its own outbound connection; it receives on
//! the connections others dial to it. A connection carries one unidirectional
//! stream per group, one for metadata sync and one for forwarded requests, so a
//! large snapshot of one group never blocks another group's heartbeats.
//!
//! Frames are length-prefixed: a 4-byte big-endian length, then a prost
//! `PeerFrame` holding one core message. Each stream begins with a `PeerHello`
//! naming the sender's region and protocol version, which must match the region
//! the sender's certificate was issued to. Frames above the size limit, bad
//! hellos and undecodable frames close the connection with a reason; nothing
//! from a peer can panic the node.
//!
//! Reconnection uses exponential backoff with full jitter; every new outbound
//! connection is reported to the core (`handle_peer_reset`) so the metadata
//! sync, which needs a reliable ordered channel, starts over on it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meridian_core::wire::Channel;
use prost::Message;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rand::Rng;
use tokio::sync::mpsc;

use crate::tls::{cert_is_for_region, region_dns_name, TlsMaterial};

/// Version of the peer protocol spoken inside the frames.
pub const PROTOCOL_VERSION: u32 = 1;
/// Outgoing frames queued per peer before new ones are dropped (the Raft
/// channel tolerates loss; a dropped metadata frame forces a reconnect).
pub const PEER_QUEUE_FRAMES_MAX: usize = 8192;
const BACKOFF_BASE_MS: u64 = 50;
const BACKOFF_MAX_MS: u64 = 3_000;
/// QUIC keep-alive, well below the idle timeout so a quiet link stays up.
const KEEP_ALIVE_MS: u64 = 1_000;
const IDLE_TIMEOUT_MS: u64 = 6_000;
/// Flow-control windows sized for WAN bulk transfer: at 150 ms RTT a 16 MiB
/// stream window sustains ~100 MiB/s of snapshot traffic.
const STREAM_WINDOW_BYTES: u32 = 16 << 20;
const CONN_WINDOW_BYTES: u32 = 64 << 20;

/// Application close codes (shown to the other side with a reason).
const CLOSE_BAD_IDENTITY: u32 = 1;
const CLOSE_BAD_FRAME: u32 = 2;
const CLOSE_RESET: u32 = 3;

/// Hello at the start of every stream.
#[derive(Clone, PartialEq, Message)]
pub struct PeerHello {
    #[prost(string, tag = "1")]
    pub region: String,
    #[prost(uint32, tag = "2")]
    pub protocol_version: u32,
    #[prost(uint32, tag = "3")]
    pub cluster_regions: u32,
}

/// One core message (`meridian_core::wire::Msg`, postcard-encoded).
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
    #[error("cannot bind peer address {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
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

struct Outgoing {
    stream: u8,
    bytes: Vec<u8>,
}

pub struct Transport {
    endpoint: quinn::Endpoint,
    queues: Vec<Option<mpsc::Sender<Outgoing>>>,
    /// Set when a metadata frame had to be dropped: the sender reconnects.
    meta_dropped: Vec<Arc<AtomicBool>>,
    connected: Vec<Arc<AtomicBool>>,
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
            .map_err(|source| TransportError::Bind { addr, source })?;
        endpoint.set_default_client_config(client);

        let names: Vec<String> = peers.iter().map(|p| p.name.clone()).collect();
        let mut queues = Vec::new();
        let mut meta_dropped = Vec::new();
        let mut connected = Vec::new();
        for (i, p) in peers.iter().enumerate() {
            let flag = Arc::new(AtomicBool::new(i == me as usize));
            let dropped = Arc::new(AtomicBool::new(false));
            connected.push(flag.clone());
            meta_dropped.push(dropped.clone());
            if i == me as usize {
                queues.push(None);
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE_FRAMES_MAX);
            queues.push(Some(tx));
            let hello = PeerHello {
                region: names[me as usize].clone(),
                protocol_version: PROTOCOL_VERSION,
                cluster_regions: regions as u32,
            };
            tokio::spawn(dial_loop(
                endpoint.clone(),
                i as u8,
                p.clone(),
                hello,
                rx,
                flag,
                dropped,
                events.clone(),
            ));
        }
        tokio::spawn(accept_loop(
            endpoint.clone(),
            me,
            names,
            frame_bytes_max,
            events,
        ));
        Ok(Transport {
            endpoint,
            queues,
            meta_dropped,
            connected,
            regions,
        })
    }

    /// Queue a core message for `to`. Never blocks: a full queue drops it.
    pub fn send(&self, to: u8, channel: Channel, bytes: Vec<u8>) {
        let Some(Some(q)) = self.queues.get(to as usize) else {
            return;
        };
        let stream = stream_of(channel, self.regions);
        if q.try_send(Outgoing { stream, bytes }).is_err() && channel == Channel::Meta {
            self.meta_dropped[to as usize].store(true, Ordering::Relaxed);
        }
    }

    pub fn is_connected(&self, peer: u8) -> bool {
        self.connected
            .get(peer as usize)
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    pub fn close(&self) {
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

#[allow(clippy::too_many_arguments)]
async fn dial_loop(
    endpoint: quinn::Endpoint,
    peer: u8,
    info: PeerInfo,
    hello: PeerHello,
    mut rx: mpsc::Receiver<Outgoing>,
    connected: Arc<AtomicBool>,
    meta_dropped: Arc<AtomicBool>,
    events: mpsc::Sender<PeerEvent>,
) {
    let mut attempt = 0u32;
    loop {
        let conn = match endpoint.connect(info.addr, &region_dns_name(&info.name)) {
            Ok(connecting) => connecting.await,
            Err(e) => {
                tracing::error!(peer = %info.name, error = %e, "cannot dial peer");
                return;
            }
        };
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                if attempt.is_multiple_of(20) {
                    tracing::warn!(peer = %info.name, addr = %info.addr, error = %e, "peer connection failed; retrying with backoff");
                }
                // Drop what queued up while the link is down: Raft resends and
                // metadata sync restarts on the next connection.
                while rx.try_recv().is_ok() {}
                tokio::time::sleep(Duration::from_millis(backoff_ms(attempt))).await;
                attempt = attempt.saturating_add(1);
                if events.is_closed() {
                    return;
                }
                continue;
            }
        };
        tracing::info!(peer = %info.name, addr = %info.addr, "connected to peer");
        attempt = 0;
        connected.store(true, Ordering::Relaxed);
        meta_dropped.store(false, Ordering::Relaxed);
        if events.send(PeerEvent::Reset { peer }).await.is_err() {
            return;
        }
        let mut streams: BTreeMap<u8, quinn::SendStream> = BTreeMap::new();
        let why = loop {
            if meta_dropped.load(Ordering::Relaxed) {
                break "metadata frame dropped".to_string();
            }
            let out = tokio::select! {
                m = rx.recv() => m,
                e = conn.closed() => break e.to_string(),
            };
            let Some(out) = out else {
                conn.close(quinn::VarInt::from_u32(0), b"shutdown");
                connected.store(false, Ordering::Relaxed);
                return;
            };
            let stream = match streams.get_mut(&out.stream) {
                Some(s) => s,
                None => {
                    let mut s = match conn.open_uni().await {
                        Ok(s) => s,
                        Err(e) => break e.to_string(),
                    };
                    if let Err(e) = s.write_all(&frame(&hello)).await {
                        break e.to_string();
                    }
                    streams.entry(out.stream).or_insert(s)
                }
            };
            let f = frame(&PeerFrame { msg: out.bytes });
            if let Err(e) = stream.write_all(&f).await {
                break e.to_string();
            }
        };
        connected.store(false, Ordering::Relaxed);
        conn.close(quinn::VarInt::from_u32(CLOSE_RESET), b"reconnecting");
        tracing::warn!(peer = %info.name, reason = %why, "peer connection lost; reconnecting");
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    me: u8,
    names: Vec<String>,
    frame_bytes_max: usize,
    events: mpsc::Sender<PeerEvent>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let names = names.clone();
        let events = events.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    // Includes a certificate from another CA: the handshake fails.
                    tracing::warn!(%remote, error = %e, "rejected peer connection (TLS handshake failed)");
                    return;
                }
            };
            let from = identify(&conn, &names);
            let Some(from) = from.filter(|f| *f != me) else {
                tracing::warn!(%remote, "rejected peer: its certificate names no other region of this cluster");
                conn.close(
                    quinn::VarInt::from_u32(CLOSE_BAD_IDENTITY),
                    b"certificate names no region of this cluster",
                );
                return;
            };
            loop {
                let recv = tokio::select! {
                    r = conn.accept_uni() => r,
                    _ = events.closed() => return,
                };
                let Ok(recv) = recv else { return };
                let conn = conn.clone();
                let events = events.clone();
                let name = names[from as usize].clone();
                let regions = names.len() as u32;
                tokio::spawn(async move {
                    if let Err(reason) =
                        read_stream(recv, from, &name, regions, frame_bytes_max, &events).await
                    {
                        tracing::warn!(peer = %name, %reason, "closing peer connection");
                        conn.close(quinn::VarInt::from_u32(CLOSE_BAD_FRAME), reason.as_bytes());
                    }
                });
            }
        });
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

async fn read_frame(recv: &mut quinn::RecvStream, max: usize) -> Result<Option<Vec<u8>>, String> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(format!("read: {e}")),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(format!("frame of {len} bytes exceeds the limit of {max}"));
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(Some(buf))
}

async fn read_stream(
    mut recv: quinn::RecvStream,
    from: u8,
    name: &str,
    regions: u32,
    max: usize,
    events: &mpsc::Sender<PeerEvent>,
) -> Result<(), String> {
    let Some(h) = read_frame(&mut recv, 4096).await? else {
        return Ok(());
    };
    let hello = PeerHello::decode(h.as_slice()).map_err(|e| format!("bad hello: {e}"))?;
    if hello.region != name {
        return Err(format!(
            "peer says it is region {:?} but its certificate is for {:?}",
            hello.region, name
        ));
    }
    if hello.protocol_version != PROTOCOL_VERSION || hello.cluster_regions != regions {
        return Err(format!(
            "peer speaks protocol {} with {} regions; this node speaks {} with {}",
            hello.protocol_version, hello.cluster_regions, PROTOCOL_VERSION, regions
        ));
    }
    // Room for the frame's own prost header around a maximal core message.
    let frame_max = max + 64;
    while let Some(buf) = read_frame(&mut recv, frame_max).await? {
        let f = PeerFrame::decode(buf.as_slice()).map_err(|e| format!("bad frame: {e}"))?;
        if events
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
            id: 1,
            resp: meridian_core::ClientResponse::Done,
        };
        assert_eq!(stream_of(fwd.channel(), 3), 4);
    }
}
