//! Feature flags in the client library: a local copy of an environment's
//! flags, evaluated in process by the same core the regions run
//! (`meridian_flags`), so an evaluation makes no network call. The copy is
//! kept current by flagd's sync stream (`flagd.sync.v1.SyncFlags`, pushed on
//! every change), fails over between regions as every call of the client
//! does, and is saved to a cache file after every change: a service that
//! restarts while the cluster is unreachable starts from the last known
//! good copy (and says so, with its revision).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use meridian_flags::{Context, Evaluator, Expect, FlagSet, Reason};
use serde_json::Value;
use tokio::sync::watch;

use crate::client::{Client, ClientError};
pub use crate::flag_impressions::ImpressionOptions;
use crate::flag_impressions::Impressions;
use crate::flagd::sync::v1::flag_sync_service_client::FlagSyncServiceClient;
use crate::flagd::sync::v1::SyncFlagsRequest;

/// Options of `Client::flags`.
#[derive(Clone, Debug)]
pub struct FlagsOptions {
    /// Where to keep the last known good copy (a file per environment in
    /// this directory). None: no cache.
    pub cache_dir: Option<PathBuf>,
    /// How long `flags` waits for the cluster before it serves the cached
    /// copy (or, with none, fails).
    pub startup_wait: Duration,
    /// Count the variants served and report them to the cluster, for
    /// experiments (docs/flags.md, "Impressions"). None: count nothing.
    pub impressions: Option<ImpressionOptions>,
}

impl Default for FlagsOptions {
    fn default() -> Self {
        FlagsOptions {
            cache_dir: None,
            startup_wait: Duration::from_secs(5),
            impressions: Some(ImpressionOptions::default()),
        }
    }
}

/// Where the copy being served came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Pushed by a region of the cluster.
    Live,
    /// Read from the cache file at start-up; the cluster was not reachable.
    Cache,
}

/// One version of the environment's flags.
pub struct Snapshot {
    pub evaluator: Evaluator,
    /// The environment's revision the flags were read at.
    pub revision: u64,
    pub source: Source,
}

/// An evaluation's answer, owned (OpenFeature's resolution details).
#[derive(Clone, Debug, PartialEq)]
pub struct Details {
    /// None: use the caller's default (disabled, no default variant, error).
    pub value: Option<Value>,
    pub variant: Option<String>,
    pub reason: Reason,
    pub error: Option<(meridian_flags::ErrorCode, String)>,
}

/// A watched local copy of one environment's flags; cheap to clone.
#[derive(Clone)]
pub struct LocalFlags {
    ns: String,
    client: Client,
    current: Arc<RwLock<Arc<Snapshot>>>,
    changes: watch::Receiver<u64>,
    impressions: Option<Arc<Impressions>>,
    /// The reporter's sign that a handle is left (it reports once more and
    /// ends when the last one is dropped).
    _alive: Arc<()>,
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl LocalFlags {
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// The copy being served now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Evaluates flag `key` for `ctx`, in process.
    pub fn evaluate(&self, key: &str, ctx: &Context, expect: Expect) -> Details {
        let snap = self.snapshot();
        let r = snap.evaluator.evaluate(key, ctx, now_s(), expect);
        Details {
            value: r.value.cloned(),
            variant: r.variant.map(str::to_string),
            reason: r.reason,
            error: r.error,
        }
    }

    /// A boolean flag's value, or `default`.
    pub fn bool(&self, key: &str, ctx: &Context, default: bool) -> bool {
        let snap = self.snapshot();
        let r = snap.evaluator.evaluate(key, ctx, now_s(), Expect::Bool);
        r.value.and_then(Value::as_bool).unwrap_or(default)
    }

    /// A string flag's value, or `default`.
    pub fn string(&self, key: &str, ctx: &Context, default: &str) -> String {
        let snap = self.snapshot();
        let r = snap.evaluator.evaluate(key, ctx, now_s(), Expect::String);
        r.value
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string()
    }

    /// Reports the impressions counted so far now (they are otherwise
    /// reported every `ImpressionOptions::flush`); how many were reported.
    /// A failed report keeps them for the next one.
    pub async fn flush_impressions(&self) -> Result<u64, ClientError> {
        match &self.impressions {
            None => Ok(0),
            Some(i) => i.flush(&self.client, &self.ns, &self.snapshot()).await,
        }
    }

    /// Impressions dropped because too many waited to be reported.
    pub fn impressions_dropped(&self) -> u64 {
        self.impressions.as_ref().map_or(0, |i| i.dropped())
    }

    /// Waits until the copy changes (a push arrived); its new revision.
    pub async fn changed(&mut self) -> Result<u64, ClientError> {
        self.changes
            .changed()
            .await
            .map_err(|_| ClientError::Stopped)?;
        Ok(*self.changes.borrow())
    }
}

fn cache_file(dir: &std::path::Path, ns: &str) -> PathBuf {
    dir.join(format!("flags-{}.json", ns.replace('/', "~")))
}

/// Reads a cached copy: (flagd document, revision).
fn read_cache(path: &std::path::Path, ns: &str) -> Option<(FlagSet, u64)> {
    let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    if v["namespace"].as_str() != Some(ns) {
        return None;
    }
    let set = FlagSet::from_json(&v["flagd"]).ok()?;
    Some((set, v["revision"].as_u64()?))
}

/// Saves a copy atomically (write, then rename over the old one).
fn write_cache(path: &std::path::Path, ns: &str, doc: &Value, revision: u64) {
    let v = serde_json::json!({"namespace": ns, "revision": revision, "flagd": doc});
    let tmp = path.with_extension("tmp");
    let ok = std::fs::write(&tmp, v.to_string()).is_ok() && std::fs::rename(&tmp, path).is_ok();
    if !ok {
        tracing::warn!(path = %path.display(), "cannot write the flags cache");
    }
}

impl Client {
    /// A local copy of environment `ns`'s flags (`project/environment`),
    /// kept current by push. Returns once the cluster sent the flags, or
    /// after `startup_wait` with the cached copy if there is one.
    pub async fn flags(&self, ns: &str, opts: FlagsOptions) -> Result<LocalFlags, ClientError> {
        let cache = opts.cache_dir.as_ref().map(|d| cache_file(d, ns));
        let cached = cache.as_ref().and_then(|p| read_cache(p, ns));
        let (tx, mut rx) = watch::channel(0u64);
        let empty = Arc::new(Snapshot {
            evaluator: Evaluator::new(&FlagSet::default()),
            revision: 0,
            source: Source::Cache,
        });
        let current = Arc::new(RwLock::new(empty));
        let first = Arc::new(tokio::sync::Notify::new());
        let alive = Arc::new(());
        let impressions = opts.impressions.map(|o| {
            let state = Arc::new(Impressions::new(o.window_s));
            tokio::spawn(crate::flag_impressions::reporter(
                self.clone(),
                ns.to_string(),
                state.clone(),
                Arc::downgrade(&current),
                Arc::downgrade(&alive),
                o,
            ));
            state
        });
        tokio::spawn(sync_loop(
            self.clone(),
            ns.to_string(),
            current.clone(),
            tx,
            cache.clone(),
            first.clone(),
            impressions.clone(),
        ));
        let live = tokio::time::timeout(opts.startup_wait, first.notified())
            .await
            .is_ok();
        if !live {
            let Some((set, revision)) = cached else {
                return Err(ClientError::Unavailable(format!(
                    "no region sent {ns}'s flags within {:?} and there is no cached copy",
                    opts.startup_wait
                )));
            };
            tracing::warn!(
                ns,
                revision,
                "serving flags from the cache: the cluster is unreachable"
            );
            let mut cur = current.write().unwrap_or_else(|e| e.into_inner());
            // The stream may have delivered in between: never replace live data.
            if cur.revision == 0 && cur.source == Source::Cache {
                *cur = Arc::new(Snapshot {
                    evaluator: Evaluator::new(&set),
                    revision,
                    source: Source::Cache,
                });
            }
        }
        rx.mark_unchanged();
        Ok(LocalFlags {
            ns: ns.to_string(),
            client: self.clone(),
            current,
            changes: rx,
            impressions,
            _alive: alive,
        })
    }
}

/// The sync stream, across reconnects and regions.
async fn sync_loop(
    client: Client,
    ns: String,
    current: Arc<RwLock<Arc<Snapshot>>>,
    tx: watch::Sender<u64>,
    cache: Option<PathBuf>,
    first: Arc<tokio::sync::Notify>,
    impressions: Option<Arc<Impressions>>,
) {
    let mut rc = client.reconnect();
    loop {
        let mut req = tonic::Request::new(SyncFlagsRequest::default());
        if let Ok(v) = ns.parse() {
            req.metadata_mut().insert("flagd-selector", v);
        }
        let status = match FlagSyncServiceClient::new(rc.channel())
            .sync_flags(req)
            .await
        {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    match crate::client::next_message(&mut stream).await {
                        Ok(msg) => {
                            rc.delivered();
                            let revision = msg
                                .sync_context
                                .as_ref()
                                .and_then(|c| c.fields.get("meridianRevision"))
                                .and_then(|v| match v.kind {
                                    Some(prost_types::value::Kind::NumberValue(n)) => {
                                        Some(n as u64)
                                    }
                                    _ => None,
                                })
                                .unwrap_or(0);
                            let doc: Value = match serde_json::from_str(&msg.flag_configuration) {
                                Ok(d) => d,
                                Err(e) => {
                                    break tonic::Status::data_loss(format!(
                                        "flags that are not JSON: {e}"
                                    ))
                                }
                            };
                            let set = match FlagSet::from_json(&doc) {
                                Ok(s) => s,
                                Err(e) => {
                                    break tonic::Status::data_loss(format!(
                                        "flags that do not parse: {e}"
                                    ))
                                }
                            };
                            let snap = Arc::new(Snapshot {
                                evaluator: Evaluator::new(&set),
                                revision,
                                source: Source::Live,
                            });
                            let old = std::mem::replace(
                                &mut *current.write().unwrap_or_else(|e| e.into_inner()),
                                snap,
                            );
                            if let Some(i) = &impressions {
                                i.retire(old);
                            }
                            if let Some(p) = &cache {
                                write_cache(p, &ns, &doc, revision);
                            }
                            tx.send_replace(revision);
                            first.notify_one();
                        }
                        Err(s) => break s,
                    }
                }
            }
            Err(s) => s,
        };
        if tx.is_closed() && Arc::strong_count(&current) == 1 {
            return;
        }
        if !crate::client::retryable(&status) && status.code() != tonic::Code::DataLoss {
            tracing::error!(ns, error = %status, "flags sync refused; retrying later");
        }
        rc.failed("flags sync", &status).await;
    }
}
