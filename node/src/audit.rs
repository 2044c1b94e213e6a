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

use std::collections::VecDeque;

use meridian_core::audit::{
    clip, verify_chain, AuditCtx, AuditEvent, AuditFilter, AuditPage, AuditRecord, AUDIT_BATCH_MAX,
    AUDIT_KEYS_MAX, AUDIT_PAGE_MAX, AUDIT_TEXT_MAX, RESULT_OK,
};
use meridian_core::types::{ClientRequest, ClientResponse, GroupId, NodeId};
use tokio::sync::mpsc;

use crate::auth::tokens::hex;
use crate::auth::{Access, Action, Resource};
use crate::core_client::CoreClient;
use crate::reason::Reason;

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
    /// Refusals by stable reason, for `/metrics` (counted as they happen,
    /// before the batch coalesces them).
    denials: prometheus_client::metrics::family::Family<
        DenialLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct DenialLabels {
    reason: String,
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
                denials: Default::default(),
            },
            task,
        )
    }

    pub fn region(&self) -> NodeId {
        self.region
    }

    /// Refusals by reason (`meridian_auth_denials_total`).
    pub fn denials(
        &self,
    ) -> prometheus_client::metrics::family::Family<
        DenialLabels,
        prometheus_client::metrics::counter::Counter,
    > {
        self.denials.clone()
    }

    /// Queue `event` (its fields clipped to the record's bounds). Never
    /// waits: a full queue counts the event as dropped.
    pub fn record(&self, mut event: AuditEvent) {
        bound(&mut event);
        if event.result != RESULT_OK {
            // The result of a refusal is a stable reason: a bounded label.
            self.denials
                .get_or_create(&DenialLabels {
                    reason: event.result.clone(),
                })
                .inc();
        }
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

/// A record as the APIs show it (JSON for HTTP and the CLI; the gRPC
/// message has the same fields).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordView {
    pub group: u32,
    pub seq: u64,
    pub revision: u64,
    pub time_ms: u64,
    pub region: String,
    pub principal: String,
    pub method: String,
    pub action: String,
    pub namespace: String,
    pub keys: Vec<String>,
    pub request_id: String,
    pub result: String,
    pub client: String,
    pub detail: String,
    pub hash: String,
}

impl RecordView {
    pub fn new(group: GroupId, r: &AuditRecord, regions: &[String]) -> RecordView {
        let e = &r.event;
        RecordView {
            group: group.into(),
            seq: r.seq,
            revision: r.revision,
            time_ms: e.time_ms,
            region: regions
                .get(e.ctx.region as usize)
                .cloned()
                .unwrap_or_else(|| format!("region-{}", e.ctx.region)),
            principal: e.ctx.principal.clone(),
            method: e.ctx.method.clone(),
            action: e.ctx.action.clone(),
            namespace: e.ns.clone(),
            keys: e.keys.clone(),
            request_id: e.ctx.request_id.clone(),
            result: e.result.clone(),
            client: e.ctx.client.clone(),
            detail: e.detail.clone(),
            hash: hex(&r.hash),
        }
    }
}

/// A query over every group's chain (or one group's).
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub filter: AuditFilter,
    /// Records per page (clamped to 1..=AUDIT_PAGE_MAX; 0: 100).
    pub limit: usize,
    pub page_token: String,
    pub group: Option<GroupId>,
}

/// A page of records and the token of the next (None: none now).
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub records: Vec<RecordView>,
    pub next_page_token: Option<String>,
}

type Refusal = (Reason, String);

fn core_error(other: ClientResponse) -> Refusal {
    match other {
        ClientResponse::Error(code) => (Reason::from(code), code.to_string()),
        other => (
            Reason::Internal,
            format!("unexpected response from the core: {other:?}"),
        ),
    }
}

async fn page(
    core: &CoreClient,
    group: GroupId,
    filter: &AuditFilter,
    after_seq: u64,
    limit: usize,
) -> Result<AuditPage, Refusal> {
    let request = ClientRequest::AuditQuery {
        group,
        filter: filter.clone(),
        after_seq,
        limit: limit as u32,
    };
    match core.call(request).await {
        Ok(ClientResponse::AuditPage(p)) => Ok(*p),
        Ok(other) => Err(core_error(other)),
        Err(_) => Err((Reason::ShuttingDown, "the node is stopping".into())),
    }
}

/// Page tokens: `a1.` then each group's cursor (the last sequence number
/// looked at), dot-separated.
fn parse_token(token: &str, groups: usize) -> Result<Vec<u64>, Refusal> {
    let bad = || {
        (
            Reason::InvalidRequest,
            format!("page_token {token:?} is not one this cluster issued"),
        )
    };
    if token.is_empty() {
        return Ok(vec![0; groups]);
    }
    let rest = token.strip_prefix("a1.").ok_or_else(bad)?;
    let cursors: Vec<u64> = rest
        .split('.')
        .map(|c| c.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    if cursors.len() != groups {
        return Err(bad());
    }
    Ok(cursors)
}

fn make_token(cursors: &[u64]) -> String {
    let parts: Vec<String> = cursors.iter().map(u64::to_string).collect();
    format!("a1.{}", parts.join("."))
}

/// Whether `access` may see a record: `admin` on its namespace, or on the
/// cluster for records without one.
fn visible(access: &Access, e: &AuditEvent) -> bool {
    if !access.enabled() {
        return true;
    }
    let r = if e.ns.is_empty() {
        Resource::CLUSTER
    } else {
        Resource::in_namespace(&e.ns, "")
    };
    access.allowed(Action::Admin, r)
}

/// One page of `q` as `access` may see it: each group's chain read from
/// this region's replica, merged by (time, group, sequence number).
pub async fn query(
    core: &CoreClient,
    regions: &[String],
    access: &Access,
    q: &Query,
) -> Result<Page, Refusal> {
    if !q.filter.in_bounds() {
        return Err((
            Reason::InvalidRequest,
            format!("a filter field is longer than {AUDIT_TEXT_MAX} bytes"),
        ));
    }
    let groups = regions.len();
    let limit = match q.limit {
        0 => 100,
        n => n.min(AUDIT_PAGE_MAX),
    };
    let mut cursors = parse_token(&q.page_token, groups)?;
    if let Some(g) = q.group {
        if g as usize >= groups {
            return Err((
                Reason::InvalidRequest,
                format!("group {g} does not exist (this cluster has {groups})"),
            ));
        }
    }
    let wanted = |g: usize| q.group.is_none_or(|w| w as usize == g);
    // Per group: records fetched and not yet taken, how far the group was
    // scanned, and whether more remain to scan.
    let mut buf: Vec<VecDeque<AuditRecord>> = vec![VecDeque::new(); groups];
    let mut scanned: Vec<u64> = cursors.clone();
    let mut more: Vec<bool> = (0..groups).map(wanted).collect();
    let mut out = Vec::with_capacity(limit);
    while out.len() < limit {
        // Refill empty buffers of groups with more to scan.
        for g in 0..groups {
            while buf[g].is_empty() && more[g] {
                let p = page(core, g as GroupId, &q.filter, scanned[g], limit).await?;
                scanned[g] = p.cursor;
                more[g] = p.more;
                buf[g].extend(p.records.into_iter().filter(|r| visible(access, &r.event)));
            }
        }
        let next = (0..groups)
            .filter_map(|g| buf[g].front().map(|r| ((r.event.time_ms, g, r.seq), g)))
            .min();
        let Some((_, g)) = next else {
            break;
        };
        let Some(r) = buf[g].pop_front() else {
            break;
        };
        cursors[g] = r.seq;
        out.push(RecordView::new(g as GroupId, &r, regions));
    }
    // A group whose fetched records were all taken was looked at up to
    // where its scan got.
    for g in 0..groups {
        if buf[g].is_empty() {
            cursors[g] = cursors[g].max(scanned[g]);
        }
    }
    let done = (0..groups).all(|g| buf[g].is_empty() && !more[g]);
    Ok(Page {
        records: out,
        next_page_token: (!done).then(|| make_token(&cursors)),
    })
}

/// One group's chain as this region holds it, verified.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainReport {
    pub group: u32,
    pub first_seq: u64,
    pub last_seq: u64,
    pub head_hash: String,
    pub ok: bool,
    pub broken_seq: u64,
    pub problem: String,
}

/// Verify this region's copy of group `g`'s chain, a page at a time (the
/// hashing runs here, off the core's thread). Records appended meanwhile are
/// verified too; if retention drops records not yet verified, the group
/// starts over (a few times at most).
pub async fn verify_group(core: &CoreClient, g: GroupId) -> Result<ChainReport, Refusal> {
    let all = AuditFilter::default();
    'attempt: for _ in 0..3 {
        let first = page(core, g, &all, 0, AUDIT_PAGE_MAX).await?;
        let first_seq = first.first_seq;
        let mut prev = first.floor_hash;
        let mut expected = first.first_seq;
        let mut p = first;
        loop {
            if p.first_seq > expected {
                continue 'attempt;
            }
            match verify_chain(prev, expected, &p.records) {
                Ok(h) => prev = h,
                Err(b) => {
                    return Ok(ChainReport {
                        group: g.into(),
                        first_seq: p.first_seq,
                        last_seq: p.last_seq,
                        head_hash: hex(&p.head_hash),
                        ok: false,
                        broken_seq: b.seq(),
                        problem: b.to_string(),
                    })
                }
            }
            expected += p.records.len() as u64;
            if !p.more {
                return Ok(ChainReport {
                    group: g.into(),
                    first_seq,
                    last_seq: expected - 1,
                    head_hash: hex(&prev),
                    ok: true,
                    broken_seq: 0,
                    problem: String::new(),
                });
            }
            p = page(core, g, &all, p.cursor, AUDIT_PAGE_MAX).await?;
        }
    }
    Err((
        Reason::Unavailable,
        format!("group {g}'s audit chain changed faster than it could be verified; retry"),
    ))
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
