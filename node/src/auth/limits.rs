//! Rate limits of the client APIs: token buckets per principal and per
//! source address, and a throttle on failed authentications per source
//! (`[rate_limit]` in docs/config.md). Over a limit a request is refused
//! with RATE_LIMITED (gRPC RESOURCE_EXHAUSTED, HTTP 429) and told when to
//! retry. A source that has failed to authenticate too often is refused
//! before its credential is even looked at, so guessing gains nothing.
//!
//! The buckets are plain maps behind a mutex, each bounded in entries: when
//! one is full, buckets that have refilled (idle callers) are dropped first.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;

use super::AuthError;
use crate::reason::Reason;

/// Rate limit settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sustained requests per second one principal may make in this
    /// region; 0: no limit.
    pub principal_rps: u32,
    /// Requests a principal may make at once above the sustained rate;
    /// 0: twice `principal_rps`.
    pub principal_burst: u32,
    /// Sustained requests per second from one source address; 0: no limit.
    pub source_rps: u32,
    /// 0: twice `source_rps`.
    pub source_burst: u32,
    /// Failed authentications one source address may make at once ...
    pub failed_auth_burst: u32,
    /// ... and per second after that; past them, every request from the
    /// address is refused until the bucket refills. 0: no throttle.
    pub failed_auth_per_s: u32,
    /// Callers tracked per table at most.
    pub entries_max: usize,
}

impl Default for RateLimitConfig {
    fn default() -> RateLimitConfig {
        RateLimitConfig {
            principal_rps: 0,
            principal_burst: 0,
            source_rps: 0,
            source_burst: 0,
            failed_auth_burst: 100,
            failed_auth_per_s: 10,
            entries_max: 100_000,
        }
    }
}

/// A token bucket: `capacity` tokens, refilled at `rate` per second.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One table of buckets with the same rate and capacity.
struct Table<K> {
    rate: f64,
    capacity: f64,
    entries_max: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
    /// Whether `buckets` may hold anything: lets `peek`, which every
    /// request makes on the failed-login table, skip the lock while no
    /// source has failed (the common case).
    used: std::sync::atomic::AtomicBool,
}

impl<K: Hash + Eq + Clone> Table<K> {
    /// None when `rate` is 0 (no limit).
    fn new(rate: u32, burst: u32, entries_max: usize) -> Option<Table<K>> {
        if rate == 0 {
            return None;
        }
        let capacity = if burst == 0 { rate * 2 } else { burst };
        Some(Table {
            rate: f64::from(rate),
            capacity: f64::from(capacity.max(1)),
            entries_max: entries_max.max(1),
            buckets: Mutex::new(HashMap::new()),
            used: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * self.rate).min(self.capacity);
        b.at = now;
    }

    /// How long until one token is there, in ms (at least 1).
    fn wait_ms(&self, b: &Bucket) -> u64 {
        (((1.0 - b.tokens) / self.rate) * 1000.0).ceil().max(1.0) as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Bucket>> {
        // A poisoned lock only means a holder panicked between whole-value
        // updates of plain numbers.
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry<'m>(&self, map: &'m mut HashMap<K, Bucket>, key: &K, now: Instant) -> &'m mut Bucket {
        self.used.store(true, std::sync::atomic::Ordering::Release);
        if !map.contains_key(key) && map.len() >= self.entries_max {
            // Forget callers whose buckets are full again: they are idle, and
            // a fresh bucket is full too, so nothing is lost.
            map.retain(|_, b| {
                let dt = now.saturating_duration_since(b.at).as_secs_f64();
                b.tokens + dt * self.rate < self.capacity
            });
            if map.len() >= self.entries_max {
                tracing::warn!(
                    entries = map.len(),
                    "rate limit table full of active callers; starting it afresh"
                );
                map.clear();
            }
        }
        map.entry(key.clone()).or_insert(Bucket {
            tokens: self.capacity,
            at: now,
        })
    }

    /// Take a token for `key`, or say how many ms until one is there.
    fn take(&self, key: &K, now: Instant) -> Result<(), u64> {
        let mut map = self.lock();
        let b = self.entry(&mut map, key, now);
        self.refill(b, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(self.wait_ms(b))
        }
    }

    /// Whether `key` has a token, without taking it.
    fn peek(&self, key: &K, now: Instant) -> Result<(), u64> {
        if !self.used.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let mut map = self.lock();
        match map.get_mut(key) {
            None => Ok(()),
            Some(b) => {
                self.refill(b, now);
                if b.tokens >= 1.0 {
                    Ok(())
                } else {
                    Err(self.wait_ms(b))
                }
            }
        }
    }

    /// Take a token if there is one (a failure counted).
    fn spend(&self, key: &K, now: Instant) {
        let mut map = self.lock();
        let b = self.entry(&mut map, key, now);
        self.refill(b, now);
        b.tokens = (b.tokens - 1.0).max(0.0);
    }
}

/// The rate limits of one region.
#[derive(Default)]
pub struct RateLimits {
    principals: Option<Table<String>>,
    sources: Option<Table<IpAddr>>,
    failures: Option<Table<IpAddr>>,
}

fn limited(message: String, retry_after_ms: u64) -> AuthError {
    let mut e = AuthError::new(Reason::RateLimited, message);
    e.retry_after_ms = Some(retry_after_ms);
    e
}

impl RateLimits {
    pub fn new(cfg: &RateLimitConfig) -> RateLimits {
        RateLimits {
            principals: Table::new(cfg.principal_rps, cfg.principal_burst, cfg.entries_max),
            sources: Table::new(cfg.source_rps, cfg.source_burst, cfg.entries_max),
            failures: Table::new(
                cfg.failed_auth_per_s,
                cfg.failed_auth_burst,
                cfg.entries_max,
            ),
        }
    }

    /// Before authentication: refuse a source that failed too often, and
    /// take a token from its bucket.
    pub fn before(&self, source: IpAddr, now: Instant) -> Result<(), AuthError> {
        if let Some(f) = &self.failures {
            f.peek(&source, now).map_err(|ms| {
                limited(
                    format!("too many failed authentications from {source}; retry after {ms} ms"),
                    ms,
                )
            })?;
        }
        if let Some(s) = &self.sources {
            s.take(&source, now).map_err(|ms| {
                limited(
                    format!("too many requests from {source}; retry after {ms} ms"),
                    ms,
                )
            })?;
        }
        Ok(())
    }

    /// A failed authentication from `source`.
    pub fn failed(&self, source: IpAddr, now: Instant) {
        if let Some(f) = &self.failures {
            f.spend(&source, now);
        }
    }

    /// After authentication: take a token from the principal's bucket.
    pub fn principal(&self, name: &str, now: Instant) -> Result<(), AuthError> {
        let Some(p) = &self.principals else {
            return Ok(());
        };
        p.take(&name.to_string(), now).map_err(|ms| {
            limited(
                format!("{name} is over its rate limit; retry after {ms} ms"),
                ms,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> RateLimitConfig {
        RateLimitConfig {
            principal_rps: 10,
            principal_burst: 5,
            source_rps: 0,
            source_burst: 0,
            failed_auth_burst: 3,
            failed_auth_per_s: 1,
            entries_max: 4,
        }
    }

    #[test]
    fn a_principal_gets_its_burst_then_its_rate() {
        let l = RateLimits::new(&cfg());
        let t0 = Instant::now();
        for _ in 0..5 {
            l.principal("ci", t0).unwrap();
        }
        let e = l.principal("ci", t0).unwrap_err();
        assert_eq!(e.reason, Reason::RateLimited);
        assert_eq!(e.retry_after_ms, Some(100), "10 per second: one in 100 ms");
        // Another principal has its own bucket.
        l.principal("other", t0).unwrap();
        // 100 ms later, one more; not two.
        let t1 = t0 + Duration::from_millis(100);
        l.principal("ci", t1).unwrap();
        assert!(l.principal("ci", t1).is_err());
        // Idle for long: the burst again, never more.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..5 {
            l.principal("ci", t2).unwrap();
        }
        assert!(l.principal("ci", t2).is_err());
    }

    #[test]
    fn failed_authentications_throttle_their_source_before_its_credentials() {
        let l = RateLimits::new(&cfg());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            l.before(a, t0).unwrap();
            l.failed(a, t0);
        }
        let e = l.before(a, t0).unwrap_err();
        assert_eq!(e.reason, Reason::RateLimited);
        assert_eq!(e.retry_after_ms, Some(1000));
        assert!(
            e.message.contains("failed authentications"),
            "{}",
            e.message
        );
        l.before(b, t0).unwrap();
        // A second later the source may try once more.
        let t1 = t0 + Duration::from_secs(1);
        l.before(a, t1).unwrap();
        l.failed(a, t1);
        assert!(l.before(a, t1).is_err());
    }

    #[test]
    fn tables_stay_bounded_and_forget_idle_callers_first() {
        let l = RateLimits::new(&cfg());
        let t0 = Instant::now();
        for i in 0..4 {
            l.principal(&format!("p{i}"), t0).unwrap();
        }
        // p0 is exhausted; the others idle back to full after a while.
        for _ in 0..4 {
            l.principal("p0", t0).unwrap();
        }
        let t1 = t0 + Duration::from_millis(200);
        l.principal("p9", t1).unwrap();
        let map = l.principals.as_ref().unwrap().lock();
        assert!(map.len() <= 4, "{} entries", map.len());
        assert!(map.contains_key("p0"), "the active caller is kept");
    }

    #[test]
    fn zero_means_no_limit() {
        let l = RateLimits::new(&RateLimitConfig {
            failed_auth_per_s: 0,
            ..RateLimitConfig::default()
        });
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..10_000 {
            l.before(a, t0).unwrap();
            l.failed(a, t0);
            l.principal("ci", t0).unwrap();
        }
    }
}
