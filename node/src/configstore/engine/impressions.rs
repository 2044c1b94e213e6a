//! Feature flags' impressions in a region (docs/flags.md, "Impressions"):
//! which variant each flag served, counted per environment, flag, variant
//! and time window, for experiments.
//!
//! Two sources feed this region's tally: the evaluators of the compiled
//! sets it serves (OFREP and flagd's evaluation service count as they
//! answer) and reports from SDKs that evaluate locally (the Rust client
//! library's, or any SDK's, through `report`). A task drains the
//! evaluators at least at every window boundary and flushes the tally
//! every `flush_ms` into this region's own namespace,
//! `_system/impressions/<region>`, homed here, with one key per
//! environment, flag and window (`<project>/<env>/<flag>/<window start>`)
//! holding the counts by variant. Each region writes only its own
//! namespace, so flushes never conflict across regions; a read sums every
//! region's namespace from this region's replicas. The namespace keeps one
//! version per key and its writes leave no audit record (the core's rule
//! for `_system/` namespaces): they are the node's bookkeeping.

use super::*;
use meridian_core::node::SYSTEM_NS_PREFIX;
use meridian_flags::{Impression, Tally};
use prometheus_client::metrics::counter::Counter;
use std::time::Duration;

/// Cells (environment, flag, variant, window) a region holds unflushed at
/// most; beyond, impressions are dropped and counted as dropped.
const CELLS_MAX: usize = 100_000;
/// Keys one flush write carries at most (well under the core's txn limit).
const FLUSH_KEYS_PER_WRITE_MAX: usize = 64;
/// Attempts of one flush write when a compare fails (only a leader change
/// racing a re-read can make it fail: each region's flusher is its only
/// writer).
const FLUSH_ATTEMPTS_MAX: usize = 3;
/// Stored windows one read sums at most per region (a read past it says
/// `truncated`).
const READ_KEYS_MAX: usize = 50_000;
/// Cells one report carries at most.
pub const REPORT_CELLS_MAX: usize = 1_000;
/// How far ahead of this region's clock a reported window may start.
const REPORT_FUTURE_S_MAX: u64 = 300;

/// How impressions are windowed, flushed and kept (`[flags]` in the node's
/// configuration).
#[derive(Clone, Copy, Debug)]
pub struct ImpressionsConfig {
    pub window_s: u64,
    pub flush_ms: u64,
    pub retention_s: u64,
}

impl Default for ImpressionsConfig {
    fn default() -> Self {
        ImpressionsConfig {
            window_s: 3600,
            flush_ms: 10_000,
            retention_s: 30 * 86_400,
        }
    }
}

/// The region's impressions not yet flushed, by environment.
pub struct Impressions {
    cfg: ImpressionsConfig,
    /// This region's node id (its namespace's home).
    pub(super) me: usize,
    tallies: std::sync::Mutex<Tallies>,
    counters: ImpressionCounters,
}

/// The unflushed tallies by environment, and their cells in all (kept as
/// they change, so the region-wide bound costs nothing per call).
#[derive(Default)]
struct Tallies {
    by_ns: BTreeMap<String, Tally>,
    cells: usize,
}

/// What the region's impressions did since start, for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct ImpressionCounters {
    /// Impressions written into this region's namespace.
    pub flushed: Counter,
    /// Impressions dropped because too much was unflushed.
    pub dropped: Counter,
    /// Flush writes that failed (their counts wait for the next flush).
    pub flush_errors: Counter,
}

impl Impressions {
    pub fn new(me: usize, cfg: ImpressionsConfig) -> Impressions {
        Impressions {
            cfg,
            me,
            tallies: std::sync::Mutex::default(),
            counters: ImpressionCounters::default(),
        }
    }

    /// Runs `f` on `ns`'s tally (made if missing).
    fn with_tally<R>(&self, ns: &str, f: impl FnOnce(&mut Tally) -> R) -> R {
        let mut tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        // The bound is on the region's cells, not each environment's.
        if tallies.cells >= CELLS_MAX {
            let mut full = Tally::new(self.cfg.window_s, 0);
            let r = f(&mut full);
            self.counters.dropped.inc_by(full.dropped());
            return r;
        }
        let Tallies { by_ns, cells } = &mut *tallies;
        let t = by_ns
            .entry(ns.to_string())
            .or_insert_with(|| Tally::new(self.cfg.window_s, CELLS_MAX));
        let (len, dropped) = (t.len(), t.dropped());
        let r = f(t);
        *cells += t.len() - len;
        self.counters.dropped.inc_by(t.dropped() - dropped);
        r
    }
}

/// The namespace region `region` keeps its impressions in.
pub fn impressions_ns(region: &str) -> String {
    format!("{SYSTEM_NS_PREFIX}impressions/{region}")
}

/// The key of one environment's flag's window.
fn cell_key(ns: &str, flag: &str, window_start_s: u64) -> String {
    format!("{ns}/{flag}/{window_start_s:012}")
}

/// What one key holds.
#[derive(Clone, Debug, Default, serde::Deserialize, Serialize)]
struct Stored {
    window_s: u64,
    variants: BTreeMap<String, u64>,
}

/// One flag's impressions over a read's span, summed over every region.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FlagImpressions {
    pub flag: String,
    pub total: u64,
    pub variants: BTreeMap<String, u64>,
    /// Window by window, oldest first (regions' counts summed).
    pub windows: Vec<WindowImpressions>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct WindowImpressions {
    /// Unix seconds.
    pub start_s: u64,
    pub window_s: u64,
    pub variants: BTreeMap<String, u64>,
}

/// An environment's impressions as read.
#[derive(Clone, Debug, Serialize)]
pub struct ImpressionsView {
    pub namespace: String,
    /// Windows that start in [since_s, until_s).
    pub since_s: u64,
    pub until_s: u64,
    pub flags: Vec<FlagImpressions>,
    /// Some region held more windows than one read sums.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// How long a count may take to show: regions flush this often.
    pub flush_ms: u64,
}

impl ConfigStore {
    /// The region's impression counters (registered by `/metrics`).
    pub fn impression_counters(&self) -> ImpressionCounters {
        self.impressions.counters.clone()
    }

    /// Counts an SDK's impressions (permission `read` on the environment:
    /// whoever may evaluate may report). Every cell is checked before any
    /// is counted; a bad one refuses the whole report.
    pub fn report_impressions(
        &self,
        access: &Access,
        ns: &str,
        cells: &[Impression],
    ) -> Result<u64, CfgError> {
        access.check_namespace_read(ns)?;
        if cells.len() > REPORT_CELLS_MAX {
            return Err(CfgError::invalid(format!(
                "a report carries at most {REPORT_CELLS_MAX} cells, got {}",
                cells.len()
            )));
        }
        let now = now_ms() / 1000;
        let oldest = now.saturating_sub(self.impressions.cfg.retention_s);
        for c in cells {
            meridian_flags::impressions::check_reported(c).map_err(CfgError::invalid)?;
            if c.window_start_s < oldest || c.window_start_s > now + REPORT_FUTURE_S_MAX {
                return Err(CfgError::invalid(format!(
                    "flag {:?}: window start {} is outside the retained span [{oldest}, {}]",
                    c.flag,
                    c.window_start_s,
                    now + REPORT_FUTURE_S_MAX
                )));
            }
        }
        let total = cells.iter().map(|c| c.count).sum();
        self.impressions
            .with_tally(ns, |t| t.restore(cells.to_vec()));
        Ok(total)
    }

    /// An environment's impressions in windows starting in [since_s,
    /// until_s), optionally of one flag, summed over every region from this
    /// region's replicas (flushed counts: up to `flush_ms` behind).
    pub async fn impressions(
        &self,
        access: &Access,
        ns: &str,
        flag: Option<&str>,
        since_s: u64,
        until_s: u64,
    ) -> Result<ImpressionsView, CfgError> {
        access.check_namespace_read(ns)?;
        if since_s >= until_s {
            return Err(CfgError::invalid("since must be before until"));
        }
        let prefix = match flag {
            Some(f) => format!("{ns}/{f}/"),
            None => format!("{ns}/"),
        };
        let mut flags: BTreeMap<String, FlagImpressions> = BTreeMap::new();
        let mut truncated = false;
        for region in self.regions.iter() {
            let sys = impressions_ns(region);
            let mut start_after = String::new();
            let mut read = 0usize;
            loop {
                let q = ReadQuery::List {
                    prefix: prefix.clone(),
                    start_after: start_after.clone(),
                    limit: LIST_LIMIT_MAX as u32,
                };
                let (kvs, more) = match self.read(&sys, q, Consistency::Stale, None).await {
                    // A region that never flushed has no namespace yet.
                    Err(e) if e.reason == Reason::UnknownNamespace => break,
                    Err(e) => return Err(e),
                    Ok(ClientResponse::List { kvs, more, .. }) => (kvs, more),
                    Ok(other) => return Err(unexpected(&other)),
                };
                for kv in &kvs {
                    add_stored(&mut flags, ns, kv, since_s, until_s);
                }
                read += kvs.len();
                match kvs.last() {
                    Some(last) if more => start_after = last.key.clone(),
                    _ => break,
                }
                if read >= READ_KEYS_MAX {
                    truncated = true;
                    break;
                }
            }
        }
        Ok(ImpressionsView {
            namespace: ns.to_string(),
            since_s,
            until_s,
            flags: flags.into_values().collect(),
            truncated,
            flush_ms: self.impressions.cfg.flush_ms,
        })
    }

    /// Starts the task that drains evaluators and flushes the tally.
    pub fn spawn_impressions_flusher(&self) {
        let store = self.clone();
        tokio::spawn(async move { store.impressions_loop().await });
    }

    async fn impressions_loop(&self) {
        let cfg = self.impressions.cfg;
        let window = Tally::new(cfg.window_s, 0);
        let flush_every = Duration::from_millis(cfg.flush_ms);
        let mut next_flush = tokio::time::Instant::now() + flush_every;
        let mut next_sweep = tokio::time::Instant::now();
        let mut period_start_s = now_ms() / 1000;
        loop {
            // Wake at the flush or at the window's end, whichever is first,
            // so a drain never spans two windows.
            let to_boundary_ms = (window.next_boundary_s(period_start_s) * 1000)
                .saturating_sub(now_ms())
                .max(1);
            let boundary = tokio::time::Instant::now() + Duration::from_millis(to_boundary_ms);
            tokio::time::sleep_until(boundary.min(next_flush)).await;
            let now_s = now_ms() / 1000;
            self.drain_evaluators(period_start_s);
            period_start_s = now_s;
            if tokio::time::Instant::now() >= next_flush {
                self.flush_impressions().await;
                next_flush = tokio::time::Instant::now() + flush_every;
            }
            if tokio::time::Instant::now() >= next_sweep {
                if let Err(e) = self.sweep_impressions(now_s).await {
                    tracing::warn!(error = %e, "impressions: the retention sweep failed; it runs again in an hour");
                }
                next_sweep = tokio::time::Instant::now() + Duration::from_secs(3600);
            }
        }
    }

    /// Moves what every evaluator counted into the tallies.
    fn drain_evaluators(&self, period_start_s: u64) {
        for (ns, compiled) in self.flag_cache.drain_list() {
            self.impressions
                .with_tally(&ns, |t| t.drain_from(&compiled.evaluator, period_start_s));
        }
    }

    /// Writes the tallies into this region's namespace. What cannot be
    /// written goes back into the tally for the next flush.
    async fn flush_impressions(&self) {
        let taken: Vec<(String, Vec<Impression>)> = {
            let mut tallies = self
                .impressions
                .tallies
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            tallies.cells = 0;
            std::mem::take(&mut tallies.by_ns)
                .into_iter()
                .map(|(ns, mut t)| (ns, t.take()))
                .filter(|(_, cells)| !cells.is_empty())
                .collect()
        };
        // Cells by key.
        let mut by_key: BTreeMap<String, (u64, Vec<Impression>)> = BTreeMap::new();
        for (ns, cells) in taken {
            for c in cells {
                let e = by_key
                    .entry(cell_key(&ns, &c.flag, c.window_start_s))
                    .or_insert_with(|| (0, Vec::new()));
                e.0 = c.window_start_s;
                e.1.push(c);
            }
        }
        let keys: Vec<(String, (u64, Vec<Impression>))> = by_key.into_iter().collect();
        for chunk in keys.chunks(FLUSH_KEYS_PER_WRITE_MAX) {
            match self.flush_chunk(chunk).await {
                Ok(()) => {
                    let n: u64 = chunk
                        .iter()
                        .flat_map(|(_, (_, c))| c)
                        .map(|c| c.count)
                        .sum();
                    self.impressions.counters.flushed.inc_by(n);
                }
                Err(e) => {
                    self.impressions.counters.flush_errors.inc();
                    tracing::warn!(error = %e, keys = chunk.len(), "impressions: a flush failed; the counts are kept for the next one");
                    for (key, (_, cells)) in chunk {
                        let ns = key_ns(key);
                        self.impressions
                            .with_tally(&ns, |t| t.restore(cells.clone()));
                    }
                }
            }
        }
    }

    /// One write of up to `FLUSH_KEYS_PER_WRITE_MAX` keys: read, add, write
    /// with a compare on each key's version.
    async fn flush_chunk(
        &self,
        chunk: &[(String, (u64, Vec<Impression>))],
    ) -> Result<(), CfgError> {
        let sys = impressions_ns(&self.regions[self.impressions.me]);
        let mut created = false;
        for _ in 0..FLUSH_ATTEMPTS_MAX {
            let mut compares = Vec::new();
            let mut ops = Vec::new();
            let mut missing_ns = false;
            for (key, (_, cells)) in chunk {
                let q = ReadQuery::Get { key: key.clone() };
                let kv = match self.read(&sys, q, Consistency::Linearizable, None).await {
                    Err(e) if e.reason == Reason::UnknownNamespace => {
                        missing_ns = true;
                        break;
                    }
                    Err(e) => return Err(e),
                    Ok(ClientResponse::Value { kv, .. }) => kv,
                    Ok(other) => return Err(unexpected(&other)),
                };
                let mut stored: Stored = match kv.value.as_deref() {
                    None => Stored::default(),
                    Some(b) => serde_json::from_slice(b).map_err(|e| {
                        CfgError::new(
                            Reason::Internal,
                            format!("impressions key {key:?} does not decode: {e}"),
                        )
                    })?,
                };
                stored.window_s = self.impressions.cfg.window_s;
                for c in cells {
                    let n = stored.variants.entry(c.variant.clone()).or_default();
                    *n = n.saturating_add(c.count);
                }
                compares.push(Compare {
                    key: key.clone(),
                    version: kv.version,
                });
                ops.push(WriteOp::Put {
                    key: key.clone(),
                    value: serde_json::to_vec(&stored)
                        .map_err(|e| CfgError::new(Reason::Internal, e.to_string()))?,
                });
            }
            if missing_ns {
                if created {
                    return Err(CfgError::new(
                        Reason::UnknownNamespace,
                        format!("{sys} was created but is not known yet"),
                    ));
                }
                self.create_system_ns(&sys, self.impressions.me as u8, 1)
                    .await?;
                created = true;
                continue;
            }
            let first = compares[0].clone();
            let fingerprint = meridian_core::types::write_fingerprint(&sys, &compares, &ops);
            let resp = self
                .call(ClientRequest::Write {
                    ns: sys.clone(),
                    request_id: 0,
                    fingerprint,
                    compares,
                    ns_revision: None,
                    ops,
                    meta: ChangeMeta {
                        author: "meridian".into(),
                        message: "impressions".into(),
                        time_ms: now_ms(),
                    },
                    audit: Box::default(),
                })
                .await;
            match resp {
                Ok(ClientResponse::Written { .. }) => return Ok(()),
                Ok(ClientResponse::Conflict { .. }) => continue,
                Ok(other) => return Err(unexpected(&other)),
                Err(e) => {
                    // An outcome unknown: this flusher is the key's only
                    // writer, so a version past the compared one is this write.
                    let q = ReadQuery::Get {
                        key: first.key.clone(),
                    };
                    if let Ok(ClientResponse::Value { kv, .. }) =
                        self.read(&sys, q, Consistency::Linearizable, None).await
                    {
                        if kv.version > first.version {
                            return Ok(());
                        }
                    }
                    return Err(e);
                }
            }
        }
        Err(CfgError::new(
            Reason::Contended,
            "impressions: the flush's compares kept failing",
        ))
    }

    /// Deletes this region's windows older than the retention.
    async fn sweep_impressions(&self, now_s: u64) -> Result<(), CfgError> {
        let sys = impressions_ns(&self.regions[self.impressions.me]);
        let oldest = now_s.saturating_sub(self.impressions.cfg.retention_s);
        let mut start_after = String::new();
        loop {
            let q = ReadQuery::List {
                prefix: String::new(),
                start_after: start_after.clone(),
                limit: LIST_LIMIT_MAX as u32,
            };
            let (kvs, more) = match self.read(&sys, q, Consistency::Stale, None).await {
                Err(e) if e.reason == Reason::UnknownNamespace => return Ok(()),
                Err(e) => return Err(e),
                Ok(ClientResponse::List { kvs, more, .. }) => (kvs, more),
                Ok(other) => return Err(unexpected(&other)),
            };
            let old: Vec<WriteOp> = kvs
                .iter()
                .filter(|kv| key_window(&kv.key).is_some_and(|w| w < oldest))
                .map(|kv| WriteOp::Delete {
                    key: kv.key.clone(),
                })
                .collect();
            for ops in old.chunks(FLUSH_KEYS_PER_WRITE_MAX) {
                let ops = ops.to_vec();
                self.call(ClientRequest::Write {
                    ns: sys.clone(),
                    request_id: 0,
                    fingerprint: meridian_core::types::write_fingerprint(&sys, &[], &ops),
                    compares: Vec::new(),
                    ns_revision: None,
                    ops,
                    meta: ChangeMeta {
                        author: "meridian".into(),
                        message: "impressions past retention".into(),
                        time_ms: now_ms(),
                    },
                    audit: Box::default(),
                })
                .await?;
            }
            match kvs.last() {
                Some(last) if more => start_after = last.key.clone(),
                _ => return Ok(()),
            }
        }
    }
}

/// The environment (`project/env`) of a cell key.
fn key_ns(key: &str) -> String {
    key.splitn(3, '/').take(2).collect::<Vec<_>>().join("/")
}

/// The window start of a cell key.
fn key_window(key: &str) -> Option<u64> {
    key.rsplit('/').next()?.parse().ok()
}

/// Adds one stored key to a read's sums, if its window is in the span.
fn add_stored(
    flags: &mut BTreeMap<String, FlagImpressions>,
    ns: &str,
    kv: &KeyValue,
    since_s: u64,
    until_s: u64,
) {
    let Some(rest) = kv.key.strip_prefix(ns).and_then(|r| r.strip_prefix('/')) else {
        return;
    };
    let Some((flag, window)) = rest.rsplit_once('/') else {
        return;
    };
    let Ok(start_s) = window.parse::<u64>() else {
        return;
    };
    if start_s < since_s || start_s >= until_s {
        return;
    }
    let Some(stored) = kv
        .value
        .as_deref()
        .and_then(|b| serde_json::from_slice::<Stored>(b).ok())
    else {
        tracing::warn!(key = %kv.key, "impressions: a stored window does not decode; skipped");
        return;
    };
    let f = flags
        .entry(flag.to_string())
        .or_insert_with(|| FlagImpressions {
            flag: flag.to_string(),
            total: 0,
            variants: BTreeMap::new(),
            windows: Vec::new(),
        });
    for (v, n) in &stored.variants {
        f.total = f.total.saturating_add(*n);
        let t = f.variants.entry(v.clone()).or_default();
        *t = t.saturating_add(*n);
    }
    // Regions' windows arrive region by region: merge by start.
    match f.windows.binary_search_by_key(&start_s, |w| w.start_s) {
        Ok(i) => {
            for (v, n) in stored.variants {
                let t = f.windows[i].variants.entry(v).or_default();
                *t = t.saturating_add(n);
            }
        }
        Err(i) => f.windows.insert(
            i,
            WindowImpressions {
                start_s,
                window_s: stored.window_s,
                variants: stored.variants,
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_environment_and_window() {
        let k = cell_key("shop/prod", "new-checkout", 1_800_000_000);
        assert_eq!(k, "shop/prod/new-checkout/001800000000");
        assert_eq!(key_ns(&k), "shop/prod");
        assert_eq!(key_window(&k), Some(1_800_000_000));
    }

    #[test]
    fn regions_windows_are_summed() {
        let mut flags = BTreeMap::new();
        let kv = |key: &str, v: Value| KeyValue {
            key: key.into(),
            value: Some(serde_json::to_vec(&v).unwrap()),
            version: 1,
            mod_revision: 1,
            meta: ChangeMeta::default(),
        };
        let a = serde_json::json!({"window_s": 60, "variants": {"on": 2, "off": 5}});
        let b = serde_json::json!({"window_s": 60, "variants": {"on": 1}});
        add_stored(
            &mut flags,
            "p/e",
            &kv("p/e/f/000000000120", a.clone()),
            0,
            1000,
        );
        add_stored(
            &mut flags,
            "p/e",
            &kv("p/e/f/000000000060", b.clone()),
            0,
            1000,
        );
        add_stored(&mut flags, "p/e", &kv("p/e/f/000000000120", b), 0, 1000);
        add_stored(&mut flags, "p/e", &kv("p/e/f/000000001200", a), 0, 1000);
        let f = &flags["f"];
        assert_eq!(f.total, 9);
        assert_eq!(f.variants["on"], 4);
        let starts: Vec<u64> = f.windows.iter().map(|w| w.start_s).collect();
        assert_eq!(starts, [60, 120], "the window past `until` is left out");
        assert_eq!(f.windows[1].variants["on"], 3);
    }
}
