//! The workloads. Each starts the systems it needs, drives them one after the
//! other (never at the same time, so they do not share the two cores), stops
//! them, and returns a `WorkloadReport` with both systems' figures.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use futures::future::try_join_all;

use crate::conn::Conn;

pub mod auth;
pub mod config_write;
pub mod cross_region;
pub mod failover;
pub mod flags;
pub mod read;
pub mod secrets;
pub mod watch;
pub mod write;

/// Sizes and durations; `Params::full()` is the workload,
/// `Params::quick()` a small run that exercises every path (for tests).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Params {
    pub keys: usize,
    pub value_bytes: usize,
    /// Reads per write in the read-heavy mix.
    pub reads_per_write: u64,
    pub read_clients: usize,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub write_clients: usize,
    pub watchers: Vec<usize>,
    /// Watchers sharing one HTTP/2 connection.
    pub watchers_per_connection: usize,
    pub watch_rounds: usize,
    /// One-way latency eu↔us, us↔ap, eu↔ap, in ms.
    pub wan_ms: [u64; 3],
    pub cross_reads: usize,
    pub cross_writes: usize,
    /// Config writes per region in the config-write workload.
    pub config_writes: usize,
    pub failover_writers: usize,
    pub failover_before: Duration,
    pub failover_after: Duration,
}

impl Params {
    pub fn full() -> Params {
        Params {
            keys: 100_000,
            value_bytes: 1024,
            reads_per_write: 1000,
            read_clients: 64,
            connections: 4,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            write_clients: 32,
            watchers: vec![1_000, 10_000],
            watchers_per_connection: 100,
            watch_rounds: 10,
            wan_ms: [30, 60, 90],
            cross_reads: 300,
            cross_writes: 60,
            config_writes: 200,
            failover_writers: 16,
            failover_before: Duration::from_secs(4),
            failover_after: Duration::from_secs(12),
        }
    }

    pub fn quick() -> Params {
        Params {
            keys: 2_000,
            value_bytes: 1024,
            reads_per_write: 1000,
            read_clients: 8,
            connections: 2,
            warmup: Duration::from_millis(200),
            duration: Duration::from_millis(800),
            write_clients: 8,
            watchers: vec![200],
            watchers_per_connection: 100,
            watch_rounds: 3,
            wan_ms: [10, 20, 30],
            cross_reads: 20,
            cross_writes: 5,
            config_writes: 10,
            failover_writers: 4,
            failover_before: Duration::from_secs(1),
            failover_after: Duration::from_secs(6),
        }
    }
}

/// What every workload gets.
pub struct Ctx {
    pub meridian_bin: PathBuf,
    /// Run etcd too (`--compare etcd`).
    pub etcd: bool,
    pub p: Params,
}

/// The key of the `i`-th loaded key (fixed width, so keys sort by index).
pub fn key(i: usize) -> String {
    format!("k{i:07}")
}

/// A value of `len` bytes that differs per key and per `gen`.
pub fn value(i: usize, gen: u64, len: usize) -> Vec<u8> {
    let head = format!("{i}:{gen}:");
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(head.as_bytes());
    v.resize(len, b'v');
    v.truncate(len);
    v
}

/// `n` connections made by `make`.
pub async fn connect_n<F, Fut>(n: usize, make: F) -> Result<Vec<Conn>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Conn>>,
{
    try_join_all((0..n.max(1)).map(make)).await
}

/// Loads keys `0..keys` with `value_bytes`-byte values, in transactions of
/// 100 puts, 4 at a time.
pub async fn load(conns: &[Conn], keys: usize, value_bytes: usize) -> Result<()> {
    const BATCH: usize = 100;
    const PARALLEL: usize = 4;
    let batches: Vec<std::ops::Range<usize>> = (0..keys)
        .step_by(BATCH)
        .map(|s| s..(s + BATCH).min(keys))
        .collect();
    for chunk in batches.chunks(PARALLEL) {
        try_join_all(chunk.iter().enumerate().map(|(j, r)| {
            let mut c = conns[j % conns.len()].clone();
            let batch: Vec<(String, Vec<u8>)> = r
                .clone()
                .map(|i| (key(i), value(i, 0, value_bytes)))
                .collect();
            async move { c.load(batch).await }
        }))
        .await?;
    }
    Ok(())
}
