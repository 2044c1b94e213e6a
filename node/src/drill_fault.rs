//! Drill faults: what `meridian drill` asks a region to suffer, through the
//! admin-only `Drill.InjectFault`. A fault carries the drill's id and a
//! deadline after which the region reverts by itself, so a drill whose client
//! dies can never leave a region down.
//!
//! The faults, as the driver carries them out:
//! - `Stop`: crash-like. The region is cut off from its peers, answers no
//!   client request (`UNAVAILABLE`), abandons the requests in flight (their
//!   outcome unknown, as a crash leaves them) and, when the fault ends,
//!   restarts its core from what is on disk: everything volatile (leases,
//!   leadership, pending reads) is lost, as in a process restart.
//! - `Isolate`: the region keeps serving what it can alone, but every peer
//!   connection is closed and refused (`Transport::set_isolated`).
//! - `Pause`: the driver stops taking any input (a process frozen by
//!   SIGSTOP or a long GC pause): requests and peer messages queue up and are
//!   handled, late, when the fault ends. The QUIC stack keeps its
//!   connections alive meanwhile (it runs on other tasks), which a frozen
//!   process would not; peers still see no answers.
//!
//! This module is the bookkeeping (one fault at a time, bounds, matching
//! ids); the driver does the effects.

use std::time::{Duration, Instant};

/// A fault lasts at most this long: the self-revert is the safety net, and
/// a drill longer than this is a mistake, not a drill.
pub const FAULT_MS_MAX: u64 = 600_000;
/// Drill ids are names, not payloads.
pub const DRILL_ID_BYTES_MAX: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Stop,
    Isolate,
    Pause,
}

impl FaultKind {
    pub fn parse(s: &str) -> Option<FaultKind> {
        match s {
            "stop" => Some(FaultKind::Stop),
            "isolate" => Some(FaultKind::Isolate),
            "pause" => Some(FaultKind::Pause),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Stop => "stop",
            FaultKind::Isolate => "isolate",
            FaultKind::Pause => "pause",
        }
    }
}

/// The fault in force.
#[derive(Clone, Debug)]
pub struct ActiveFault {
    pub drill_id: String,
    pub kind: FaultKind,
    pub since: Instant,
    pub until: Instant,
}

/// What callers see of a fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultInfo {
    pub drill_id: String,
    pub kind: FaultKind,
    pub elapsed_ms: u64,
    pub remaining_ms: u64,
}

impl ActiveFault {
    pub fn info(&self, now: Instant) -> FaultInfo {
        FaultInfo {
            drill_id: self.drill_id.clone(),
            kind: self.kind,
            elapsed_ms: now.saturating_duration_since(self.since).as_millis() as u64,
            remaining_ms: self.until.saturating_duration_since(now).as_millis() as u64,
        }
    }
}

/// Why a fault request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FaultRefusal {
    #[error("a fault of drill {0:?} is in force; clear it or wait for its deadline")]
    Busy(String),
    #[error("the fault in force belongs to drill {active:?}, not {asked:?}")]
    OtherDrill { active: String, asked: String },
    #[error("the duration must be 1 to {FAULT_MS_MAX} ms, not {0}")]
    Duration(u64),
    #[error(
        "the drill id must be 1 to {DRILL_ID_BYTES_MAX} bytes of letters, digits, '-', '_' or '.'"
    )]
    DrillId,
    #[error("the region is still restarting from its last stop fault")]
    Restarting,
}

/// A drill id: 1 to `DRILL_ID_BYTES_MAX` bytes of letters, digits, '-', '_'
/// or '.' (faults and kept reports share the rule).
pub fn valid_drill_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= DRILL_ID_BYTES_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The fault slot: at most one fault at a time.
#[derive(Debug, Default)]
pub struct FaultSlot {
    active: Option<ActiveFault>,
}

impl FaultSlot {
    pub fn active(&self) -> Option<&ActiveFault> {
        self.active.as_ref()
    }

    pub fn kind(&self) -> Option<FaultKind> {
        self.active.as_ref().map(|f| f.kind)
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.active.as_ref().map(|f| f.until)
    }

    /// Start a fault, if none is in force and the request is sound.
    pub fn inject(
        &mut self,
        now: Instant,
        drill_id: &str,
        kind: FaultKind,
        duration_ms: u64,
    ) -> Result<&ActiveFault, FaultRefusal> {
        if !valid_drill_id(drill_id) {
            return Err(FaultRefusal::DrillId);
        }
        if duration_ms == 0 || duration_ms > FAULT_MS_MAX {
            return Err(FaultRefusal::Duration(duration_ms));
        }
        if let Some(f) = &self.active {
            return Err(FaultRefusal::Busy(f.drill_id.clone()));
        }
        Ok(self.active.insert(ActiveFault {
            drill_id: drill_id.to_string(),
            kind,
            since: now,
            until: now + Duration::from_millis(duration_ms),
        }))
    }

    /// End the fault of `drill_id`. No fault in force: nothing to do
    /// (`None`), so a drill may clear twice.
    pub fn clear(&mut self, drill_id: &str) -> Result<Option<ActiveFault>, FaultRefusal> {
        match &self.active {
            None => Ok(None),
            Some(f) if f.drill_id == drill_id => Ok(self.active.take()),
            Some(f) => Err(FaultRefusal::OtherDrill {
                active: f.drill_id.clone(),
                asked: drill_id.to_string(),
            }),
        }
    }

    /// End the fault whose deadline passed, if any.
    pub fn expire(&mut self, now: Instant) -> Option<ActiveFault> {
        if self.active.as_ref().is_some_and(|f| f.until <= now) {
            self.active.take()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_fault_at_a_time_and_only_its_drill_clears_it() {
        let now = Instant::now();
        let mut s = FaultSlot::default();
        s.inject(now, "d1", FaultKind::Stop, 1000).expect("first");
        assert_eq!(
            s.inject(now, "d2", FaultKind::Pause, 1000).unwrap_err(),
            FaultRefusal::Busy("d1".into())
        );
        assert!(matches!(
            s.clear("d2").unwrap_err(),
            FaultRefusal::OtherDrill { .. }
        ));
        assert_eq!(s.kind(), Some(FaultKind::Stop));
        let gone = s.clear("d1").expect("clear").expect("was active");
        assert_eq!(gone.kind, FaultKind::Stop);
        assert!(s.clear("d1").expect("twice").is_none());
        assert!(s.active().is_none());
    }

    #[test]
    fn bounds_are_refused() {
        let now = Instant::now();
        let mut s = FaultSlot::default();
        assert_eq!(
            s.inject(now, "d", FaultKind::Isolate, 0).unwrap_err(),
            FaultRefusal::Duration(0)
        );
        assert_eq!(
            s.inject(now, "d", FaultKind::Isolate, FAULT_MS_MAX + 1)
                .unwrap_err(),
            FaultRefusal::Duration(FAULT_MS_MAX + 1)
        );
        for bad in ["", "a b", "x/y", &"z".repeat(DRILL_ID_BYTES_MAX + 1)] {
            assert_eq!(
                s.inject(now, bad, FaultKind::Isolate, 10).unwrap_err(),
                FaultRefusal::DrillId,
                "{bad:?}"
            );
        }
        assert!(s.active().is_none());
    }

    #[test]
    fn the_deadline_ends_the_fault() {
        let now = Instant::now();
        let mut s = FaultSlot::default();
        s.inject(now, "d", FaultKind::Pause, 500).expect("inject");
        assert!(s.expire(now + Duration::from_millis(499)).is_none());
        let info = s
            .active()
            .expect("active")
            .info(now + Duration::from_millis(200));
        assert_eq!((info.elapsed_ms, info.remaining_ms), (200, 300));
        assert!(s.expire(now + Duration::from_millis(500)).is_some());
        assert!(s.active().is_none());
    }

    #[test]
    fn kinds_round_trip_and_unknown_kinds_do_not_parse() {
        for k in [FaultKind::Stop, FaultKind::Isolate, FaultKind::Pause] {
            assert_eq!(FaultKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(FaultKind::parse("crash"), None);
    }
}
