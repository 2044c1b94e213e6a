//! The canary load of a drill: writes to the canary namespaces through every
//! region on a fixed schedule (open loop), each logged with when it started,
//! when it was answered, and how. Keys are `<drill id>/<region>/<seq>`, so a
//! drill's writes are one prefix to verify and never collide with another
//! drill's.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use meridian_proto::v1::config_client::ConfigClient;
use meridian_proto::v1::kv_client::KvClient;
use meridian_proto::v1::{
    Consistency, CreateNamespaceRequest, ListRequest, PutRequest, ReadOptions, RevisionToken,
};
use tokio::sync::watch;

use super::{Ctx, Region};
use crate::output::status_err;

/// A write's answer wait; it also bounds how long a write can stay "in
/// flight" in the log.
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// Writes in flight per writer at most: beyond, a scheduled write is
/// skipped (and counted), so a dead region cannot pile up tasks.
const IN_FLIGHT_MAX: usize = 64;
/// How long a new canary namespace may take to reach every region.
const KNOWN_WAIT: Duration = Duration::from_secs(10);
/// The canary namespaces' project.
pub const CANARY_PROJECT: &str = "drill-canary";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Durability {
    Quorum,
    Async,
}

/// A canary namespace: the one homed in `home` of a durability.
#[derive(Clone, Debug)]
pub struct CanaryNs {
    pub name: String,
    pub home: usize,
    pub durability: Durability,
    /// Async only.
    pub rpo_budget_ms: Option<u64>,
}

/// One canary write, as it went.
#[derive(Clone, Debug)]
pub struct Write {
    pub ns: usize,
    /// The region it was sent through.
    pub via: usize,
    pub key: String,
    pub started_ms: u64,
    pub done_ms: u64,
    pub outcome: Outcome,
}

#[derive(Clone, Debug)]
pub enum Outcome {
    Acked(Option<RevisionToken>),
    Failed(String),
    /// Skipped: too many writes were in flight through the region.
    Skipped,
}

impl Write {
    pub fn acked(&self) -> bool {
        matches!(self.outcome, Outcome::Acked(_))
    }
}

/// The running load and everything it logged so far.
pub struct Canary {
    pub namespaces: Vec<CanaryNs>,
    pub log: Arc<Mutex<Vec<Write>>>,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Create (or find) the canary namespaces homed at each of `homes`.
pub async fn namespaces(ctx: &Ctx, homes: &[usize]) -> Result<Vec<CanaryNs>> {
    let mut out = Vec::new();
    for &home in homes {
        let region = &ctx.regions[home];
        let mut kinds = vec![(Durability::Quorum, region.name.clone())];
        if ctx.common.with_async {
            kinds.push((Durability::Async, format!("{}-async", region.name)));
        }
        for (durability, env) in kinds {
            let name = format!("{CANARY_PROJECT}/{env}");
            let (mode, budget) = match durability {
                Durability::Quorum => ("quorum", 0),
                Durability::Async => ("async", ctx.common.async_rpo_budget_ms),
            };
            let created = ConfigClient::new(region.ch.clone())
                .create_namespace(CreateNamespaceRequest {
                    project: CANARY_PROJECT.into(),
                    environment: env.clone(),
                    home_region: region.name.clone(),
                    mode: mode.into(),
                    rpo_budget_ms: budget,
                    // The drill verifies keys, not their history.
                    history_versions_max: 1,
                    history_age_ms_max: 0,
                })
                .await;
            let info = match created {
                Ok(i) => i.into_inner(),
                Err(s) if meridian_proto::reason_of(&s).as_deref() == Some("NAMESPACE_EXISTS") => {
                    let r = meridian_proto::v1::DescribeNamespaceRequest {
                        ns: Some(meridian_proto::v1::NamespaceRef {
                            project: CANARY_PROJECT.into(),
                            environment: env.clone(),
                        }),
                        ..Default::default()
                    };
                    ConfigClient::new(region.ch.clone())
                        .describe_namespace(r)
                        .await
                        .map_err(status_err)?
                        .into_inner()
                }
                Err(s) => return Err(status_err(s)),
            };
            if info.home_region != region.name || info.mode != mode {
                anyhow::bail!(
                    "canary namespace {name} exists as {} homed in {}; the drill needs {mode} homed in {}",
                    info.mode,
                    info.home_region,
                    region.name
                );
            }
            known_everywhere(ctx, &name).await?;
            out.push(CanaryNs {
                name,
                home,
                durability,
                rpo_budget_ms: info
                    .rpo_budget_ms
                    .filter(|_| durability == Durability::Async),
            });
        }
    }
    Ok(out)
}

/// Wait until every region knows `ns` (a new namespace reaches the others
/// a moment after its creation), so no canary write fails for that.
async fn known_everywhere(ctx: &Ctx, ns: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + KNOWN_WAIT;
    for region in &ctx.regions {
        loop {
            let r = KvClient::new(region.ch.clone())
                .get(meridian_proto::v1::GetRequest {
                    namespace: ns.to_string(),
                    key: "-".into(),
                    read: Some(ReadOptions {
                        consistency: Consistency::Stale as i32,
                        max_staleness_ms: 0,
                        token: None,
                    }),
                })
                .await;
            match r {
                Ok(_) => break,
                Err(s) if std::time::Instant::now() >= deadline => {
                    anyhow::bail!("{} does not know {ns} yet: {}", region.name, status_err(s))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    Ok(())
}

impl Canary {
    /// Start writing to every namespace through every region.
    pub fn start(ctx: &Ctx, namespaces: Vec<CanaryNs>) -> Canary {
        let (stop, stopped) = watch::channel(false);
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        let every = Duration::from_micros(1_000_000 / u64::from(ctx.common.rate));
        for (n, ns) in namespaces.iter().enumerate() {
            for region in &ctx.regions {
                tasks.spawn(writer(
                    region.clone(),
                    n,
                    ns.name.clone(),
                    format!("{}/{}", ctx.drill_id, region.name),
                    every,
                    ctx.t0,
                    log.clone(),
                    stopped.clone(),
                ));
            }
        }
        Canary {
            namespaces,
            log,
            stop,
            tasks,
        }
    }

    /// What was logged so far.
    pub fn snapshot(&self) -> Vec<Write> {
        lock(&self.log).clone()
    }

    /// Stop starting writes and wait for those in flight to be answered.
    pub async fn stop(mut self) -> (Vec<CanaryNs>, Vec<Write>) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        let mut log = lock(&self.log).clone();
        log.sort_by_key(|w| (w.started_ms, w.via, w.ns));
        (self.namespaces, log)
    }
}

#[allow(clippy::too_many_arguments)]
async fn writer(
    region: Region,
    ns_index: usize,
    ns: String,
    prefix: String,
    every: Duration,
    t0: std::time::Instant,
    log: Arc<Mutex<Vec<Write>>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => break,
        }
        while in_flight.try_join_next().is_some() {}
        seq += 1;
        let key = format!("{prefix}/{seq:08}");
        let started_ms = t0.elapsed().as_millis() as u64;
        if in_flight.len() >= IN_FLIGHT_MAX {
            lock(&log).push(Write {
                ns: ns_index,
                via: region.id,
                key,
                started_ms,
                done_ms: started_ms,
                outcome: Outcome::Skipped,
            });
            continue;
        }
        let req = PutRequest {
            namespace: ns.clone(),
            key: key.clone(),
            value: started_ms.to_string().into_bytes(),
            // Never retried: each key is written once.
            request_id: 0,
        };
        let ch = region.ch.clone();
        let log = log.clone();
        let via = region.id;
        in_flight.spawn(async move {
            let r = tokio::time::timeout(WRITE_TIMEOUT, KvClient::new(ch).put(req)).await;
            let outcome = match r {
                Ok(Ok(resp)) => Outcome::Acked(resp.into_inner().token),
                Ok(Err(s)) => Outcome::Failed(super::reason(&s)),
                Err(_) => Outcome::Failed("TIMEOUT (client)".into()),
            };
            lock(&log).push(Write {
                ns: ns_index,
                via,
                key,
                started_ms,
                done_ms: t0.elapsed().as_millis() as u64,
                outcome,
            });
        });
    }
    while in_flight.join_next().await.is_some() {}
}

/// Every live key of the drill in `ns`, read linearizably through `via`.
pub async fn keys_present(ctx: &Ctx, via: &Region, ns: &str) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut page_token = String::new();
    loop {
        let r = KvClient::new(via.ch.clone())
            .list(ListRequest {
                namespace: ns.to_string(),
                prefix: format!("{}/", ctx.drill_id),
                page_token: page_token.clone(),
                limit: 1000,
                key_contains: String::new(),
                keys_only: true,
                read: Some(ReadOptions {
                    consistency: Consistency::Linearizable as i32,
                    max_staleness_ms: 0,
                    token: None,
                }),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        out.extend(r.kvs.into_iter().filter(|kv| !kv.deleted).map(|kv| kv.key));
        if r.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = r.next_page_token;
    }
}
