//! The region's side of the audit log: the `Auditor` that carries records
//! of events other than writes (refusals, token, role and grant changes,
//! namespace operations) into this region's home group, batched.
//!
//! A write's record needs none of this: it travels in the write's own log
//! entry (`AuditCtx` on `ClientRequest::Write`). Everything else is handed to
//! the auditor, which never blocks the request that caused it: events wait
//! in a bounded queue, and a task proposes them in batches through the home
//! group's log. When the queue is full (a flood of refusals), events are
//! counted instead of queued and the next batch records how many were lost,
//! so a gap is itself on the record. Refusals that differ only in time and
//! request id are coalesced within a batch into one record with a count,
//! so that a client hammering a closed door costs one record per batch.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meridian_core::audit::{
    clip, AuditCtx, AuditEvent, AUDIT_BATCH_MAX, AUDIT_KEYS_MAX, AUDIT_TEXT_MAX, RESULT_OK,
};
use meridian_core::types::{ClientRequest, ClientResponse, NodeId};
use tokio::sync::mpsc;

use crate::core_client::CoreClient;

/// Events waiting for the auditor's task at most.
const QUEUE_MAX: usize = 10_000;
/// How long the task gathers events into one batch at most.
const GATHER_MS: u64 = 20;
/// Backoff between attempts to append a batch while the home group has no
/// leader (the batch is kept; new events queue behind it).
const RETRY_MS_MIN: u64 = 50;
const RETRY_MS_MAX: u64 = 2_000;

#[derive(Clone)]
pub struct Auditor {
    region: NodeId,
    tx: mpsc::Sender<AuditEvent>,
    dropped: Arc<AtomicU64>,
}

impl Auditor {
    /// An auditor for region `region` and its task, which runs until every
    /// `Auditor` is dropped and the queue is drained.
    pub fn start(core: CoreClient, region: NodeId) -> (Auditor, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        let dropped = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(core, region, rx, dropped.clone()));
        (
            Auditor {
                region,
                tx,
                dropped,
            },
            task,
        )
    }

    pub fn region(&self) -> NodeId {
        self.region
    }

    /// Queue `event` (its fields clipped to the record's bounds). Never
    /// waits: a full queue counts the event as dropped.
    pub fn record(&self, mut event: AuditEvent) {
        bound(&mut event);
        if self.tx.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Clip every field to what a record may hold.
pub fn bound(e: &mut AuditEvent) {
    let c = &mut e.ctx;
    for s in [
        &mut c.principal,
        &mut c.method,
        &mut c.action,
        &mut c.request_id,
        &mut c.client,
        &mut e.ns,
        &mut e.result,
        &mut e.detail,
    ] {
        if s.len() > AUDIT_TEXT_MAX {
            *s = clip(s, AUDIT_TEXT_MAX);
        }
    }
    e.keys.truncate(AUDIT_KEYS_MAX);
    for k in &mut e.keys {
        if k.len() > AUDIT_TEXT_MAX {
            *k = clip(k, AUDIT_TEXT_MAX);
        }
    }
}

async fn run(
    core: CoreClient,
    region: NodeId,
    mut rx: mpsc::Receiver<AuditEvent>,
    dropped: Arc<AtomicU64>,
) {
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut events = vec![first];
        let deadline = tokio::time::Instant::now() + Duration::from_millis(GATHER_MS);
        while events.len() < AUDIT_BATCH_MAX {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => events.push(e),
                Ok(None) | Err(_) => break,
            }
        }
        let mut batch = coalesce(events);
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            batch.push(lost_event(region, lost));
        }
        append(&core, region, batch).await;
    }
}

/// Propose `events` through the home group until they commit (or the node
/// stops). Only `Done` means they are in the log.
async fn append(core: &CoreClient, region: NodeId, events: Vec<AuditEvent>) {
    let mut backoff_ms = RETRY_MS_MIN;
    loop {
        let request = ClientRequest::Audit {
            group: region,
            events: events.clone(),
        };
        match core.call(request).await {
            Ok(ClientResponse::Done) => return,
            Err(_) => return,
            Ok(other) => {
                tracing::debug!(
                    ?other,
                    records = events.len(),
                    "audit batch not appended yet; retrying"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        backoff_ms = (backoff_ms * 2).min(RETRY_MS_MAX);
    }
}

/// Merge refusals that differ only in time, request id and client port
/// into the first of them, with a count.
fn coalesce(events: Vec<AuditEvent>) -> Vec<AuditEvent> {
    type Key = (String, String, String, String, String, Vec<String>, String);
    let key = |e: &AuditEvent| -> Key {
        let ip = e
            .ctx
            .client
            .rsplit_once(':')
            .map_or(e.ctx.client.as_str(), |(ip, _)| ip)
            .to_string();
        (
            e.ctx.principal.clone(),
            e.ctx.method.clone(),
            e.ctx.action.clone(),
            ip,
            e.ns.clone(),
            e.keys.clone(),
            e.result.clone(),
        )
    };
    let mut out: Vec<(AuditEvent, u64)> = Vec::with_capacity(events.len());
    let mut seen: BTreeMap<Key, usize> = BTreeMap::new();
    for e in events {
        if e.result == RESULT_OK {
            out.push((e, 1));
            continue;
        }
        match seen.get(&key(&e)) {
            Some(&i) => out[i].1 += 1,
            None => {
                seen.insert(key(&e), out.len());
                out.push((e, 1));
            }
        }
    }
    out.into_iter()
        .map(|(mut e, n)| {
            if n > 1 {
                e.detail = clip(
                    &format!("{} ({n} such refusals within {GATHER_MS} ms)", e.detail),
                    AUDIT_TEXT_MAX,
                );
            }
            e
        })
        .collect()
}

fn lost_event(region: NodeId, lost: u64) -> AuditEvent {
    AuditEvent {
        time_ms: crate::auth::wall_ms(),
        ctx: AuditCtx {
            region,
            principal: "meridian".into(),
            method: "internal".into(),
            action: "audit.dropped".into(),
            ..AuditCtx::default()
        },
        ns: String::new(),
        keys: Vec::new(),
        result: "RESOURCE_EXHAUSTED".into(),
        detail: format!(
            "{lost} audit events were not recorded: the region's audit queue ({QUEUE_MAX} events) was full"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(client: &str, request_id: &str) -> AuditEvent {
        AuditEvent {
            time_ms: 1,
            ctx: AuditCtx {
                region: 0,
                principal: "mallory".into(),
                method: "token".into(),
                action: "Kv.Get".into(),
                request_id: request_id.into(),
                client: client.into(),
            },
            ns: "shop/prod".into(),
            keys: vec!["db/password".into()],
            result: "PERMISSION_DENIED".into(),
            detail: "mallory may not read".into(),
        }
    }

    #[test]
    fn refusals_from_one_source_coalesce_and_others_stay_apart() {
        let mut ok = refusal("10.0.0.1:1", "a");
        ok.result = RESULT_OK.into();
        let events = vec![
            refusal("10.0.0.1:1000", "r1"),
            ok.clone(),
            refusal("10.0.0.1:1001", "r2"),
            refusal("10.0.0.2:1000", "r3"),
            refusal("10.0.0.1:1002", "r4"),
            ok,
        ];
        let out = coalesce(events);
        assert_eq!(out.len(), 4, "{out:#?}");
        assert_eq!(out[0].ctx.request_id, "r1");
        assert!(out[0].detail.ends_with("(3 such refusals within 20 ms)"));
        assert_eq!(out[2].ctx.request_id, "r3");
        assert_eq!(out[2].detail, "mallory may not read");
        assert_eq!(out.iter().filter(|e| e.result == RESULT_OK).count(), 2);
    }

    #[test]
    fn oversized_fields_are_clipped_to_the_record_bounds() {
        let mut e = refusal("1.2.3.4:5", "r");
        e.detail = "é".repeat(AUDIT_TEXT_MAX);
        e.keys = vec!["k".repeat(AUDIT_TEXT_MAX * 2); AUDIT_KEYS_MAX + 5];
        bound(&mut e);
        assert!(e.in_bounds());
        assert_eq!(e.keys.len(), AUDIT_KEYS_MAX);
    }
}
