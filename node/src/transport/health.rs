//! One peer's link, as a small explicit state machine with `now` passed in
//! (no IO, no clock: unit-tested below).
//!
//! A link has two halves. The *outbound* connection is the one this node
//! dialed and sends on; the *inbound* connection is the one the peer dialed
//! and this node receives on. Every connection has a generation number,
//! handed out here, so that the close of a stale connection can never tear
//! down, or vouch for, a newer one (issue 20: a region stopped forwarding to a
//! peer for minutes while its status said "connected").
//!
//! Every stream of an inbound connection must carry a frame (traffic or an
//! empty keep-alive) at least every `STREAM_KEEPALIVE_MS`. The link is
//! *connected* only when the outbound connection is up and every inbound
//! stream was heard within `STREAM_FRESH_MS`; otherwise it is *degraded*,
//! naming what is not working, or *disconnected* when neither half is up.

use std::time::{Duration, Instant};

/// A sender puts a frame on every stream at least this often.
pub const STREAM_KEEPALIVE_MS: u64 = 250;
/// A stream heard within this window counts as working: four keep-alive
/// intervals, so one late keep-alive does not flap the status. It is the
/// QUIC keep-alive interval too, so a dead peer shows within about a second.
pub const STREAM_FRESH_MS: u64 = 1_000;
/// An inbound stream silent this long (or never opened this long after its
/// connection came up) closes that connection: the peer's dialer then
/// reconnects with every stream afresh.
pub const STREAM_SILENT_RESET_MS: u64 = 3_000;

/// What `cluster status` says of a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    Connected,
    /// Something works and something does not: what does not.
    Degraded(String),
    Disconnected,
}

impl LinkState {
    pub fn is_connected(&self) -> bool {
        *self == LinkState::Connected
    }
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkState::Connected => f.write_str("connected"),
            LinkState::Degraded(why) => write!(f, "degraded: {why}"),
            LinkState::Disconnected => f.write_str("disconnected"),
        }
    }
}

#[derive(Debug)]
struct Inbound {
    generation: u64,
    since: Instant,
    /// When each stream last delivered bytes; `None`: not opened yet.
    heard: Vec<Option<Instant>>,
}

/// One peer's link state.
#[derive(Debug)]
pub struct PeerHealth {
    /// Stream names, by index (each group's region name, then `meta`, `forward`).
    stream_names: Vec<String>,
    next_generation: u64,
    /// The generation of the outbound connection while it is up.
    outbound: Option<u64>,
    inbound: Option<Inbound>,
    /// The peer's boot id, as its latest hello said.
    peer_boot: Option<u64>,
}

/// What opening an inbound connection changed.
#[derive(Debug, PartialEq, Eq)]
pub struct InboundOpened {
    pub generation: u64,
    /// The older inbound connection it replaces (close it: the peer's dialer
    /// has given up on it, since it keeps one outbound connection at a time).
    pub replaces: Option<u64>,
}

impl PeerHealth {
    pub fn new(stream_names: Vec<String>) -> PeerHealth {
        PeerHealth {
            stream_names,
            next_generation: 1,
            outbound: None,
            inbound: None,
            peer_boot: None,
        }
    }

    fn generation(&mut self) -> u64 {
        let g = self.next_generation;
        self.next_generation += 1;
        g
    }

    /// The outbound connection is up with every stream open; its generation.
    pub fn outbound_up(&mut self) -> u64 {
        let g = self.generation();
        self.outbound = Some(g);
        g
    }

    /// Outbound connection `generation` ended (a stale one changes nothing).
    pub fn outbound_down(&mut self, generation: u64) {
        if self.outbound == Some(generation) {
            self.outbound = None;
        }
    }

    pub fn outbound_generation(&self) -> Option<u64> {
        self.outbound
    }

    /// The peer dialed a new connection to this node.
    pub fn inbound_opened(&mut self, now: Instant) -> InboundOpened {
        let generation = self.generation();
        let replaces = self.inbound.as_ref().map(|i| i.generation);
        self.inbound = Some(Inbound {
            generation,
            since: now,
            heard: vec![None; self.stream_names.len()],
        });
        InboundOpened {
            generation,
            replaces,
        }
    }

    /// A stream of inbound connection `generation` said hello with the
    /// peer's `boot` id. True if the peer restarted since its last hello: the
    /// outbound connection then leads to a dead process and must be redialed
    /// rather than left to time out.
    pub fn inbound_hello(
        &mut self,
        generation: u64,
        boot: u64,
        stream: usize,
        now: Instant,
    ) -> bool {
        if !self.is_current_inbound(generation) {
            return false;
        }
        self.heard(generation, stream, now);
        let restarted = self.peer_boot.is_some_and(|b| b != boot);
        self.peer_boot = Some(boot);
        restarted
    }

    fn is_current_inbound(&self, generation: u64) -> bool {
        self.inbound
            .as_ref()
            .is_some_and(|i| i.generation == generation)
    }

    /// Bytes arrived on `stream` of inbound connection `generation`.
    pub fn heard(&mut self, generation: u64, stream: usize, now: Instant) {
        if let Some(i) = self.inbound.as_mut().filter(|i| i.generation == generation) {
            if let Some(h) = i.heard.get_mut(stream) {
                *h = Some(now);
            }
        }
    }

    /// Inbound connection `generation` ended (a stale one changes nothing).
    pub fn inbound_closed(&mut self, generation: u64) {
        if self.is_current_inbound(generation) {
            self.inbound = None;
        }
    }

    /// Streams of the current inbound connection not heard within `window`
    /// (a stream never opened counts from when its connection came up).
    fn silent(&self, now: Instant, window: Duration) -> Vec<(usize, Duration)> {
        let Some(i) = &self.inbound else {
            return Vec::new();
        };
        i.heard
            .iter()
            .enumerate()
            .filter_map(|(s, h)| {
                let last = h.unwrap_or(i.since);
                let quiet = now.saturating_duration_since(last);
                (quiet > window).then_some((s, quiet))
            })
            .collect()
    }

    fn describe(&self, silent: &[(usize, Duration)]) -> String {
        silent
            .iter()
            .map(|(s, d)| {
                let name = self.stream_names.get(*s).map_or("?", |n| n.as_str());
                format!("stream {name} silent {} ms", d.as_millis())
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// If inbound connection `generation` has a stream silent for longer
    /// than `STREAM_SILENT_RESET_MS`, why it should be closed.
    pub fn watchdog(&self, generation: u64, now: Instant) -> Option<String> {
        if !self.is_current_inbound(generation) {
            return Some("replaced by a newer connection".into());
        }
        let silent = self.silent(now, Duration::from_millis(STREAM_SILENT_RESET_MS));
        (!silent.is_empty()).then(|| self.describe(&silent))
    }

    /// What works, as of `now`.
    pub fn state(&self, now: Instant) -> LinkState {
        match (self.outbound.is_some(), self.inbound.is_some()) {
            (false, false) => LinkState::Disconnected,
            (false, true) => LinkState::Degraded("outbound connection down".into()),
            (true, false) => LinkState::Degraded("no inbound connection".into()),
            (true, true) => {
                let silent = self.silent(now, Duration::from_millis(STREAM_FRESH_MS));
                if silent.is_empty() {
                    LinkState::Connected
                } else if silent.len() == self.stream_names.len() {
                    LinkState::Degraded(format!(
                        "nothing heard for {} ms",
                        silent.iter().map(|(_, d)| d.as_millis()).min().unwrap_or(0)
                    ))
                } else {
                    LinkState::Degraded(self.describe(&silent))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["eu", "us", "ap", "meta", "forward"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A link with both halves up and every stream heard at `t`.
    fn up(t: Instant) -> (PeerHealth, u64, u64) {
        let mut h = PeerHealth::new(names());
        let out = h.outbound_up();
        let inb = h.inbound_opened(t).generation;
        for s in 0..5 {
            h.inbound_hello(inb, 42, s, t);
        }
        (h, out, inb)
    }

    #[test]
    fn connected_only_when_both_halves_and_every_stream_are_live() {
        let t = Instant::now();
        let mut h = PeerHealth::new(names());
        assert_eq!(h.state(t), LinkState::Disconnected);
        h.outbound_up();
        assert_eq!(
            h.state(t),
            LinkState::Degraded("no inbound connection".into())
        );
        let g = h.inbound_opened(t).generation;
        for s in 0..4 {
            h.inbound_hello(g, 1, s, t);
        }
        // The forward stream never opened: degraded once the window passes,
        // and the state names it.
        assert_eq!(h.state(t + ms(500)), LinkState::Connected);
        for s in 0..4 {
            h.heard(g, s, t + ms(1_100));
        }
        let st = h.state(t + ms(1_200));
        assert_eq!(
            st,
            LinkState::Degraded("stream forward silent 1200 ms".into()),
            "{st}"
        );
        h.inbound_hello(g, 1, 4, t + ms(1_200));
        for s in 0..4 {
            h.heard(g, s, t + ms(1_200));
        }
        assert!(h.state(t + ms(1_300)).is_connected());
    }

    #[test]
    fn a_dead_peer_shows_within_one_keepalive_window() {
        let t = Instant::now();
        let (h, _, _) = up(t);
        assert!(h.state(t + ms(STREAM_FRESH_MS)).is_connected());
        let st = h.state(t + ms(STREAM_FRESH_MS + 1));
        assert!(
            matches!(&st, LinkState::Degraded(w) if w.starts_with("nothing heard")),
            "{st}"
        );
    }

    #[test]
    fn a_stale_connection_cannot_tear_down_or_vouch_for_a_newer_one() {
        let t = Instant::now();
        let (mut h, out1, in1) = up(t);
        // The peer redials: the new inbound connection replaces the old one.
        let opened = h.inbound_opened(t + ms(10));
        assert_eq!(opened.replaces, Some(in1));
        let in2 = opened.generation;
        // The old connection's late close and late bytes change nothing.
        h.inbound_closed(in1);
        h.heard(in1, 4, t + ms(900));
        for s in 0..5 {
            h.inbound_hello(in2, 42, s, t + ms(20));
        }
        assert!(h.state(t + ms(30)).is_connected());
        // Its watchdog says to close it.
        assert_eq!(
            h.watchdog(in1, t + ms(30)).as_deref(),
            Some("replaced by a newer connection")
        );
        // Likewise outbound: a redial, then the old one's close.
        let out2 = h.outbound_up();
        h.outbound_down(out1);
        assert_eq!(h.outbound_generation(), Some(out2));
        assert!(h.state(t + ms(30)).is_connected());
        h.outbound_down(out2);
        assert_eq!(
            h.state(t + ms(30)),
            LinkState::Degraded("outbound connection down".into())
        );
    }

    #[test]
    fn a_restarted_peer_is_noticed_by_its_boot_id() {
        let t = Instant::now();
        let (mut h, _, _) = up(t);
        let g = h.inbound_opened(t).generation;
        // Same process redialing: not a restart.
        assert!(!h.inbound_hello(g, 42, 0, t));
        let g = h.inbound_opened(t).generation;
        assert!(h.inbound_hello(g, 43, 0, t), "a new boot id is a restart");
        assert!(!h.inbound_hello(g, 43, 1, t), "noticed once");
    }

    #[test]
    fn the_watchdog_closes_a_connection_with_a_silent_stream() {
        let t = Instant::now();
        let (mut h, _, g) = up(t);
        for s in 0..4 {
            h.heard(g, s, t + ms(STREAM_SILENT_RESET_MS));
        }
        assert_eq!(h.watchdog(g, t + ms(STREAM_SILENT_RESET_MS)), None);
        let why = h.watchdog(g, t + ms(STREAM_SILENT_RESET_MS + 1));
        assert_eq!(
            why.as_deref(),
            Some("stream forward silent 3001 ms"),
            "only the silent stream is named"
        );
    }
}
