//! A simulated region's clock: an offset and a drift within the configured
//! bound, mapping true time to local time and back.

#[derive(Clone, Copy, Debug)]
pub(super) struct Clock {
    pub(super) offset_us: u64,
    pub(super) drift_ppm: i64,
}

impl Clock {
    pub(super) fn local(self, t: u64) -> u64 {
        let d = (t as i128 * self.drift_ppm as i128 / 1_000_000) as i64;
        (self.offset_us as i64 + t as i64 + d) as u64
    }
    /// The earliest true time at which the local clock reads at least `l`.
    pub(super) fn to_true(self, l: u64) -> u64 {
        if l <= self.offset_us {
            return 0;
        }
        let x = (l - self.offset_us) as i128 * 1_000_000;
        let den = 1_000_000 + self.drift_ppm as i128;
        let mut t = ((x + den - 1) / den) as u64;
        while self.local(t) < l {
            t += 1;
        }
        t
    }
}
