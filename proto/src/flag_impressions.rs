//! Impressions in the client library: the variants a `LocalFlags` served,
//! counted by its evaluators (an atomic increment per evaluation), drained
//! into windows at least at every window boundary, and reported to the
//! cluster (`Config.ReportImpressions`) every `flush` interval, failing
//! over between regions like every call. A report that cannot be
//! delivered is kept for the next one (bounded: beyond `CELLS_MAX` cells,
//! impressions are dropped and counted in `dropped`).

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use meridian_flags::{Impression, Tally};

use crate::client::{Client, ClientError};
use crate::flags::Snapshot;
use crate::v1::config_client::ConfigClient;
use crate::v1::{ImpressionCell, NamespaceRef, ReportImpressionsRequest};

/// Cells held unreported at most.
const CELLS_MAX: usize = 10_000;
/// Cells one report carries at most (the regions' limit).
const REPORT_CELLS_MAX: usize = 1_000;

/// Options of impression counting (`FlagsOptions::impressions`).
#[derive(Clone, Copy, Debug)]
pub struct ImpressionOptions {
    /// Report every this often (and once more when the last handle of the
    /// `LocalFlags` is dropped, at the next tick).
    pub flush: Duration,
    /// Count per window of this many seconds (the regions file reports
    /// under their own windows, which are at least as long by default).
    pub window_s: u64,
}

impl Default for ImpressionOptions {
    fn default() -> Self {
        ImpressionOptions {
            flush: Duration::from_secs(10),
            window_s: 60,
        }
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a `LocalFlags` shares with its reporter.
pub(crate) struct Impressions {
    tally: Mutex<Tally>,
    /// When the counters were last drained (the period's window).
    period_start_s: Mutex<u64>,
    /// Snapshots replaced while an evaluation may still count into them.
    retired: Mutex<Vec<Arc<Snapshot>>>,
}

impl Impressions {
    pub(crate) fn new(window_s: u64) -> Impressions {
        Impressions {
            tally: Mutex::new(Tally::new(window_s, CELLS_MAX)),
            period_start_s: Mutex::new(now_s()),
            retired: Mutex::default(),
        }
    }

    /// A snapshot just replaced: drained until nobody else holds it.
    pub(crate) fn retire(&self, old: Arc<Snapshot>) {
        lock(&self.retired).push(old);
    }

    /// Moves what `current` and the retired snapshots counted into the tally.
    fn drain(&self, current: &Snapshot) {
        let mut start = lock(&self.period_start_s);
        let mut tally = lock(&self.tally);
        tally.drain_from(&current.evaluator, *start);
        let mut retired = lock(&self.retired);
        retired.retain(|s| {
            tally.drain_from(&s.evaluator, *start);
            Arc::strong_count(s) > 1
        });
        *start = now_s();
    }

    /// Impressions dropped because too many waited to be reported.
    pub(crate) fn dropped(&self) -> u64 {
        lock(&self.tally).dropped()
    }

    /// Drains and reports now; the impressions reported.
    pub(crate) async fn flush(
        &self,
        client: &Client,
        ns: &str,
        current: &Snapshot,
    ) -> Result<u64, ClientError> {
        self.drain(current);
        let cells = lock(&self.tally).take();
        let mut sent = 0;
        let mut rest = cells.as_slice();
        while !rest.is_empty() {
            let (now, later) = rest.split_at(rest.len().min(REPORT_CELLS_MAX));
            match report(client, ns, now).await {
                Ok(n) => sent += n,
                Err(e) => {
                    lock(&self.tally).restore(rest.to_vec());
                    return Err(e);
                }
            }
            rest = later;
        }
        Ok(sent)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn report(client: &Client, ns: &str, cells: &[Impression]) -> Result<u64, ClientError> {
    let (project, environment) = ns.split_once('/').unwrap_or((ns, ""));
    let req = ReportImpressionsRequest {
        ns: Some(NamespaceRef {
            project: project.to_string(),
            environment: environment.to_string(),
        }),
        cells: cells
            .iter()
            .map(|c| ImpressionCell {
                flag: c.flag.clone(),
                variant: c.variant.clone(),
                count: c.count,
                window_start_s: c.window_start_s,
                window_s: 0,
            })
            .collect(),
    };
    client
        .call(|ch| {
            let req = req.clone();
            async move { ConfigClient::new(ch).report_impressions(req).await }
        })
        .await
        .map(|r| r.counted)
}

/// Drains at every window boundary and reports every `opts.flush`, until
/// the `LocalFlags` is gone (then a last report).
pub(crate) async fn reporter(
    client: Client,
    ns: String,
    state: Arc<Impressions>,
    current: Weak<std::sync::RwLock<Arc<Snapshot>>>,
    alive: Weak<()>,
    opts: ImpressionOptions,
) {
    let mut next_flush = tokio::time::Instant::now() + opts.flush;
    loop {
        let boundary_s = {
            let start = *lock(&state.period_start_s);
            lock(&state.tally).next_boundary_s(start)
        };
        let to_boundary = Duration::from_secs(boundary_s.saturating_sub(now_s()).max(1));
        tokio::time::sleep_until(next_flush.min(tokio::time::Instant::now() + to_boundary)).await;
        let Some(cur) = current.upgrade() else { return };
        let snap = cur.read().unwrap_or_else(|e| e.into_inner()).clone();
        drop(cur);
        let last = alive.strong_count() == 0;
        if last || tokio::time::Instant::now() >= next_flush {
            if let Err(e) = state.flush(&client, &ns, &snap).await {
                tracing::debug!(ns, error = %e, "impressions: report failed; kept for the next one");
            }
            next_flush = tokio::time::Instant::now() + opts.flush;
        } else {
            state.drain(&snap);
        }
        if last {
            return;
        }
    }
}
