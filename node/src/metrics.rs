//! A region's Prometheus metrics: `GET /metrics` on the HTTP API port, in
//! the OpenMetrics text format (`prometheus-client`), which Prometheus
//! scrapes natively. Metric names follow Prometheus conventions
//! (`meridian_` prefix, base units, `_seconds`). Today they cover secrets'
//! lifecycle (rotation policy, expiry, the keyring); the operators' metrics
//! of issue 17 join them here.

use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::configstore::engine::ConfigStore;

/// How often at most a region counts its secrets for the metrics: a count
/// reads every secret's current version (locally, without decrypting), so
/// scrapes closer together than this share one. It is counted at a scrape,
/// never in the background: no work when nobody scrapes.
pub const SECRETS_REFRESH_EVERY: Duration = Duration::from_secs(15);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NsLabels {
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    /// The group's home region.
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FollowerLabels {
    group: String,
    follower: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionLabels {
    region: String,
}

/// The replication groups as this region sees them (read from the driver
/// at each scrape), modelled on etcd's `etcd_server_*` gauges.
#[derive(Default)]
struct GroupMetrics {
    has_leader: Family<GroupLabels, Gauge>,
    is_leader: Family<GroupLabels, Gauge>,
    term: Family<GroupLabels, Gauge>,
    commit_index: Family<GroupLabels, Gauge>,
    applied_index: Family<GroupLabels, Gauge>,
    last_index: Family<GroupLabels, Gauge>,
    lease_remaining: Family<GroupLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    staleness: Family<GroupLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    follower_lag: Family<FollowerLabels, Gauge>,
    peer_connected: Family<RegionLabels, Gauge>,
    peer_rejected: Gauge,
    halted: Gauge,
    pending_requests: Gauge,
    watchers: Gauge,
    drill_fault_active: Gauge,
    peer_rtt: Family<RegionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    peer_reconnects: Family<RegionLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabels {
    sync: String,
}

/// Storage commit latency buckets, seconds: 50 µs to 5 s (an fsync on a
/// healthy SSD is under a millisecond; etcd's wal_fsync alerts at 0.5 s).
const COMMIT_BUCKETS_S: [f64; 15] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128,
    0.256, 0.512, 5.0,
];

fn commit_histogram() -> Histogram {
    Histogram::new(COMMIT_BUCKETS_S)
}

/// The storage thread's figures: each group commit's RocksDB write (with
/// its fsync when `sync="true"`), as etcd's wal_fsync_duration_seconds and
/// backend_commit_duration_seconds.
#[derive(Clone)]
pub struct StorageMetrics {
    commit_seconds: Family<SyncLabels, Histogram, fn() -> Histogram>,
}

impl StorageMetrics {
    pub fn observe_commit(&self, sync: bool, seconds: f64) {
        self.commit_seconds
            .get_or_create(&SyncLabels {
                sync: sync.to_string(),
            })
            .observe(seconds);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KekLabels {
    kek_version: String,
}

/// The registry and the metrics the node updates.
pub struct Metrics {
    registry: Registry,
    secrets: Family<NsLabels, Gauge>,
    secrets_rotation_due: Family<NsLabels, Gauge>,
    secrets_rotation_overdue: Family<NsLabels, Gauge>,
    secrets_expired: Family<NsLabels, Gauge>,
    secret_versions: Family<KekLabels, Gauge>,
    keyring_loaded: Gauge,
    secrets_refresh_errors: Gauge,
    /// When the secrets were last counted (concurrent scrapes wait for one count).
    secrets_counted: tokio::sync::Mutex<Option<Instant>>,
    groups: GroupMetrics,
    /// Requests by method and outcome (the gRPC layer and HTTP middleware).
    pub requests: std::sync::Arc<crate::request_metrics::RequestMetrics>,
    /// Handed to the storage thread.
    pub storage: StorageMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("meridian");
        let m = Metrics {
            secrets: Family::default(),
            secrets_rotation_due: Family::default(),
            secrets_rotation_overdue: Family::default(),
            secrets_expired: Family::default(),
            secret_versions: Family::default(),
            keyring_loaded: Gauge::default(),
            secrets_refresh_errors: Gauge::default(),
            secrets_counted: tokio::sync::Mutex::new(None),
            groups: GroupMetrics::default(),
            requests: crate::request_metrics::RequestMetrics::register(&mut registry),
            storage: StorageMetrics {
                commit_seconds: Family::new_with_constructor(commit_histogram),
            },
            registry: Registry::default(),
        };
        // Without a UNIT line, as the request histograms (openmetrics-parser
        // refuses one on a histogram); the unit is in the name.
        registry.register(
            "storage_commit_seconds",
            "Time of one group commit's RocksDB write, fsync included when sync=\"true\"",
            m.storage.commit_seconds.clone(),
        );
        let g = &m.groups;
        registry.register(
            "group_has_leader",
            "1 if this region knows a leader of the group (etcd_server_has_leader)",
            g.has_leader.clone(),
        );
        registry.register(
            "group_is_leader",
            "1 if this region leads the group (etcd_server_is_leader)",
            g.is_leader.clone(),
        );
        registry.register("group_term", "The group's Raft term here", g.term.clone());
        registry.register(
            "group_commit_index",
            "The group's commit index known here",
            g.commit_index.clone(),
        );
        registry.register(
            "group_applied_index",
            "The group's log index applied here",
            g.applied_index.clone(),
        );
        registry.register(
            "group_last_index",
            "The group's last log index here",
            g.last_index.clone(),
        );
        registry.register_with_unit(
            "group_lease_remaining",
            "Time left of this region's lease on the group it leads (absent when it holds none)",
            prometheus_client::registry::Unit::Seconds,
            g.lease_remaining.clone(),
        );
        registry.register_with_unit(
            "group_staleness",
            "How far behind its leader this replica may be (0 for a leader with its lease; absent until known); /readyz fails past probes.ready_staleness_ms_max",
            prometheus_client::registry::Unit::Seconds,
            g.staleness.clone(),
        );
        registry.register(
            "group_follower_lag_entries",
            "Leaders only: log entries a follower lacks (last index minus what it is known to hold)",
            g.follower_lag.clone(),
        );
        registry.register(
            "peer_connected",
            "1 if the QUIC link to the region is up",
            g.peer_connected.clone(),
        );
        registry.register(
            "peer_rejected_messages",
            "Peer messages rejected since start (malformed, oversized, out of protocol)",
            g.peer_rejected.clone(),
        );
        registry.register(
            "halted",
            "1 if the node halted after a storage failure",
            g.halted.clone(),
        );
        registry.register(
            "pending_requests",
            "Client requests waiting for the core's answer here (forwarded ones included)",
            g.pending_requests.clone(),
        );
        registry.register("watchers", "Open watch streams here", g.watchers.clone());
        registry.register_with_unit(
            "peer_rtt",
            "QUIC's smoothed round-trip time to the region (absent without a link)",
            prometheus_client::registry::Unit::Seconds,
            g.peer_rtt.clone(),
        );
        registry.register(
            "peer_reconnects",
            "Times the QUIC link to the region was lost and made again",
            g.peer_reconnects.clone(),
        );
        registry.register(
            "drill_fault_active",
            "1 while this region suffers a drill fault (meridian drill)",
            g.drill_fault_active.clone(),
        );
        registry.register(
            "secrets",
            "Secrets (live keys) of each environment, as this region holds them",
            m.secrets.clone(),
        );
        registry.register(
            "secrets_rotation_due",
            "Secrets older than their rotate_every period (meridian secrets list --due)",
            m.secrets_rotation_due.clone(),
        );
        registry.register(
            "secrets_rotation_overdue_seconds_max",
            "How long the most overdue secret of each environment is past its rotation period",
            m.secrets_rotation_overdue.clone(),
        );
        registry.register(
            "secrets_expired",
            "Secrets whose current version is past its expires_at (reveals fail)",
            m.secrets_expired.clone(),
        );
        registry.register(
            "secret_versions",
            "Stored secret versions by the key-encryption-key version that wraps them",
            m.secret_versions.clone(),
        );
        registry.register(
            "secrets_keyring_loaded",
            "1 if this region holds a usable keyring, else 0 (secrets answer KEYRING_UNAVAILABLE)",
            m.keyring_loaded.clone(),
        );
        registry.register(
            "secrets_refresh_errors",
            "1 if the last count of secrets for these metrics failed (the figures are stale)",
            m.secrets_refresh_errors.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Registers the auditor's count of refusals.
    pub fn register_denials(&mut self, auditor: &crate::audit::Auditor) {
        self.registry.register(
            "auth_denials",
            "Requests refused by authentication, authorization or rate limits, by stable reason",
            auditor.denials(),
        );
    }

    /// Registers the region's flag impression counters.
    pub fn register_impressions(&mut self, c: &crate::configstore::engine::ImpressionCounters) {
        self.registry.register(
            "flag_impressions_flushed",
            "Flag impressions (variants served) this region wrote to its impressions namespace",
            c.flushed.clone(),
        );
        self.registry.register(
            "flag_impressions_dropped",
            "Flag impressions dropped because too many were waiting to be flushed",
            c.dropped.clone(),
        );
        self.registry.register(
            "flag_impressions_flush_errors",
            "Impression flush writes that failed (their counts wait for the next flush)",
            c.flush_errors.clone(),
        );
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Sets the group and peer gauges from the driver's status.
    pub fn refresh_node(&self, s: &crate::driver::NodeStatus, regions: &[String]) {
        let g = &self.groups;
        let name = |i: usize| regions.get(i).cloned().unwrap_or_else(|| i.to_string());
        let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        // A lease lost or a follower no longer ours leaves the families.
        g.lease_remaining.clear();
        g.staleness.clear();
        g.follower_lag.clear();
        for (i, st) in s.groups.iter().enumerate() {
            let l = GroupLabels { group: name(i) };
            g.has_leader
                .get_or_create(&l)
                .set(i64::from(st.leader.is_some()));
            g.is_leader
                .get_or_create(&l)
                .set(i64::from(st.role == "leader"));
            g.term.get_or_create(&l).set(int(st.term));
            g.commit_index.get_or_create(&l).set(int(st.commit_index));
            g.applied_index.get_or_create(&l).set(int(st.applied_index));
            g.last_index.get_or_create(&l).set(int(st.last_index));
            if let Some(us) = st.lease_remaining_us {
                g.lease_remaining.get_or_create(&l).set(us as f64 / 1e6);
            }
            if let Some(us) = st.staleness_us {
                g.staleness.get_or_create(&l).set(us as f64 / 1e6);
            }
            for (f, matched) in &st.followers {
                g.follower_lag
                    .get_or_create(&FollowerLabels {
                        group: name(i),
                        follower: name(*f as usize),
                    })
                    .set(int(st.last_index.saturating_sub(*matched)));
            }
        }
        for (i, up) in s.connected.iter().enumerate() {
            g.peer_connected
                .get_or_create(&RegionLabels { region: name(i) })
                .set(i64::from(*up));
        }
        g.peer_rejected.set(int(s.peer_rejected));
        g.halted.set(i64::from(s.halted));
        g.peer_rtt.clear();
        for (i, rtt) in s.peer_rtt.iter().enumerate() {
            if let Some(rtt) = rtt {
                g.peer_rtt
                    .get_or_create(&RegionLabels { region: name(i) })
                    .set(rtt.as_secs_f64());
            }
        }
        for (i, n) in s.peer_reconnects.iter().enumerate() {
            let Some(n) = n else { continue };
            let c = g
                .peer_reconnects
                .get_or_create(&RegionLabels { region: name(i) });
            // A counter only rises: add what the transport counted since.
            c.inc_by(n.saturating_sub(c.get()));
        }
        g.pending_requests.set(int(s.pending_requests as u64));
        g.watchers.set(int(s.watchers as u64));
        g.drill_fault_active.set(i64::from(s.fault.is_some()));
    }

    /// Count this region's secrets into the gauges, unless they were
    /// counted less than `every` ago.
    pub async fn refresh_secrets_every(&self, store: &ConfigStore, every: Duration) {
        let mut counted = self.secrets_counted.lock().await;
        if counted.is_some_and(|at| at.elapsed() < every) {
            return;
        }
        self.refresh_secrets(store).await;
        *counted = Some(Instant::now());
    }

    /// Count this region's secrets into the gauges.
    async fn refresh_secrets(&self, store: &ConfigStore) {
        self.keyring_loaded
            .set(i64::from(store.secrets_keyring().keyring.is_ok()));
        let overview = match store.secrets_overview().await {
            Ok(o) => o,
            Err(e) => {
                // Not a warning: the gauge below says it, and a region
                // that is starting or stopping answers so.
                tracing::info!(error = %e, "counting secrets for the metrics failed");
                self.secrets_refresh_errors.set(1);
                return;
            }
        };
        self.secrets_refresh_errors.set(0);
        // A namespace gone, or one whose secrets are all destroyed, leaves
        // the families: clear, then set what there is.
        for f in [
            &self.secrets,
            &self.secrets_rotation_due,
            &self.secrets_rotation_overdue,
            &self.secrets_expired,
        ] {
            f.clear();
        }
        self.secret_versions.clear();
        for (ns, o) in &overview.namespaces {
            let l = NsLabels {
                namespace: ns.clone(),
            };
            let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            self.secrets.get_or_create(&l).set(count(o.live));
            self.secrets_rotation_due
                .get_or_create(&l)
                .set(count(o.due));
            self.secrets_expired.get_or_create(&l).set(count(o.expired));
            self.secrets_rotation_overdue
                .get_or_create(&l)
                .set(i64::try_from(o.overdue_ms_max / 1000).unwrap_or(i64::MAX));
        }
        for (kek, n) in &overview.by_kek {
            self.secret_versions
                .get_or_create(&KekLabels {
                    kek_version: kek.to_string(),
                })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }
}
