//! Latency recording and summaries: one hdrhistogram per series (microsecond
//! resolution, 3 significant digits, up to 10 minutes), reduced to the
//! percentiles the tables quote and the points the CDF plots draw.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency recorded, in microseconds (larger values are clamped).
const LATENCY_US_MAX: u64 = 600_000_000;

/// A latency histogram in microseconds.
#[derive(Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Latency {
        // 1 µs to 10 minutes at 3 significant digits: the bounds are constants
        // within what hdrhistogram accepts, so construction cannot fail.
        #[allow(clippy::expect_used)]
        let h = Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid bounds");
        Latency(h)
    }

    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, LATENCY_US_MAX);
        self.0.saturating_record(us);
    }

    pub fn add(&mut self, other: &Latency) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn summary(&self) -> Summary {
        let h = &self.0;
        Summary {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            cdf: cdf_points(h),
        }
    }
}

/// What the report keeps of one series.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// (latency µs, fraction of samples at or below it), for the plots.
    pub cdf: Vec<(u64, f64)>,
}

/// Quantiles dense where tails matter: every percent, then every 0.1 % of
/// the top 1 %, then every 0.01 % of the top 0.1 %, then the maximum.
fn cdf_points(h: &Histogram<u64>) -> Vec<(u64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut qs: Vec<f64> = (0..99).map(|i| i as f64 / 100.0).collect();
    qs.extend((0..9).map(|i| 0.99 + i as f64 / 1000.0));
    qs.extend((0..=9).map(|i| 0.999 + i as f64 / 10_000.0));
    let mut out: Vec<(u64, f64)> = qs
        .into_iter()
        .map(|q| (h.value_at_quantile(q), q))
        .collect();
    out.push((h.max(), 1.0));
    out
}

/// Failed operations, by kind of error (the first 8 distinct messages).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Errors {
    pub count: u64,
    pub kinds: std::collections::BTreeMap<String, u64>,
}

impl Errors {
    const KINDS_MAX: usize = 8;

    pub fn record(&mut self, e: &anyhow::Error) {
        self.count += 1;
        let mut msg = format!("{e:#}");
        if let Some((i, _)) = msg.char_indices().nth(160) {
            msg.truncate(i);
        }
        self.count_kind(msg, 1);
    }

    pub fn add(&mut self, o: &Errors) {
        self.count += o.count;
        for (k, n) in &o.kinds {
            self.count_kind(k.clone(), *n);
        }
    }

    /// Counts `n` of kind `k`, unless it would be a kind beyond the first
    /// `KINDS_MAX` (those are only in `count`).
    fn count_kind(&mut self, k: String, n: u64) {
        if self.kinds.len() < Self::KINDS_MAX || self.kinds.contains_key(&k) {
            *self.kinds.entry(k).or_default() += n;
        }
    }

    /// "N (kind ×n; kind ×n)" for the notes.
    pub fn describe(&self) -> String {
        if self.count == 0 {
            return "0".into();
        }
        let kinds: Vec<String> = self
            .kinds
            .iter()
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect();
        format!("{} ({})", self.count, kinds.join("; "))
    }
}

/// Operations per second.
pub fn rate(ops: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 {
        ops as f64 / s
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_cdf_of_a_known_distribution() {
        let mut l = Latency::new();
        for us in 1..=1000u64 {
            l.record(Duration::from_micros(us));
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!((499..=501).contains(&s.p50_us), "p50 {}", s.p50_us);
        assert!((989..=991).contains(&s.p99_us), "p99 {}", s.p99_us);
        assert_eq!(s.max_us, 1000);
        // The CDF is monotone in both coordinates and ends at (max, 1).
        for w in s.cdf.windows(2) {
            assert!(w[0].0 <= w[1].0 && w[0].1 <= w[1].1, "{w:?}");
        }
        assert_eq!(s.cdf.last(), Some(&(1000, 1.0)));
    }

    #[test]
    fn empty_series_have_no_cdf() {
        let s = Latency::new().summary();
        assert_eq!(s.count, 0);
        assert!(s.cdf.is_empty());
    }
}
