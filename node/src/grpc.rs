//! The gRPC API (tonic): translates `meridian.v1` requests into core client
//! requests, hands them to the driver and maps the answers back, with core
//! error codes mapped to gRPC status codes and stable reasons (documented in
//! `proto/meridian/v1/meridian.proto`).

use crate::auth::{Access, Action, Authority, Resource};
use crate::core_client::CoreClient;
use crate::reason::Reason;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use meridian_core::types::{
    ClientRequest, ClientResponse, Compare as CoreCompare, Consistency as CoreConsistency,
    ErrorCode, KeyValue as CoreKv, ReadQuery, RevisionToken as CoreToken, WriteOp,
};
use meridian_proto::v1::admin_server::Admin;
use meridian_proto::v1::kv_server::Kv;
use meridian_proto::v1::*;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::config::RegionEntry;
use crate::driver::{Input, WATCH_BUFFER_MAX};

/// Default and maximum page size of List.
const LIST_LIMIT_DEFAULT: u32 = 100;
const LIST_LIMIT_MAX: u32 = 1000;
/// Core pages a filtered List scans at most before returning a short page
/// (with a continuation token), so one call's work is bounded.
const LIST_SCAN_PAGES_MAX: usize = 20;

/// The stable reason and gRPC code of a core error.
pub fn error_status(code: ErrorCode) -> Status {
    status(Reason::from(code), &code.to_string())
}

/// A status carrying a stable reason in its message and metadata, with the
/// reason's gRPC code.
pub fn status(reason: Reason, message: &str) -> Status {
    let mut s = Status::new(reason.grpc_code(), format!("[{reason}] {message}"));
    if let Ok(v) = reason.as_str().parse() {
        s.metadata_mut()
            .insert(meridian_proto::REASON_METADATA_KEY, v);
    }
    s
}

/// Why the core would refuse a request as INVALID_REQUEST (it answers with
/// the code alone), for the common mistakes; None if none of them.
fn why_invalid(request: &ClientRequest) -> Option<String> {
    match request {
        ClientRequest::Read { query, .. } => match query {
            ReadQuery::Get { key } | ReadQuery::History { key } if key.is_empty() => {
                Some("the key is empty".into())
            }
            ReadQuery::List { limit: 0, .. } => Some("limit must be above 0".into()),
            _ => None,
        },
        ClientRequest::Write { ops, meta, .. } => {
            if ops.is_empty() {
                return Some("a write needs at least one operation".into());
            }
            let mut seen = std::collections::BTreeSet::new();
            for op in ops {
                if op.key().is_empty() {
                    return Some("a key in the write is empty".into());
                }
                if !seen.insert(op.key()) {
                    return Some(format!(
                        "key {:?} appears twice in one transaction",
                        op.key()
                    ));
                }
            }
            let meta_bytes = meta.author.len() + meta.message.len();
            (meta_bytes > meridian_core::node::CHANGE_META_BYTES_MAX).then(|| {
                format!(
                    "author and message are {meta_bytes} bytes together; at most {}",
                    meridian_core::node::CHANGE_META_BYTES_MAX
                )
            })
        }
        _ => None,
    }
}

/// A refused credential or permission as a status; logged, so refusals
/// can be counted and traced to their principal.
pub fn auth_status(e: crate::auth::AuthError) -> Status {
    tracing::info!(reason = %e.reason, message = %e.message, "request refused");
    let mut s = status(e.reason, &e.message);
    if let Some(ms) = e.retry_after_ms {
        s.metadata_mut().insert("retry-after-ms", ms.into());
    }
    s
}

/// The driver is gone: the node is shutting down.
fn stopping() -> Status {
    status(Reason::ShuttingDown, "the node is stopping")
}

fn invalid(message: &str) -> Status {
    status(Reason::InvalidRequest, message)
}

fn unexpected(resp: &ClientResponse) -> Status {
    status(
        Reason::Internal,
        &format!("unexpected response from the core: {resp:?}"),
    )
}

/// The gRPC services of one region.
#[derive(Clone)]
pub struct Api {
    core: CoreClient,
    auth: Authority,
    regions: Arc<Vec<RegionEntry>>,
    /// Home group of each namespace (watch events carry it).
    ns_home: Arc<std::collections::BTreeMap<String, u8>>,
    me: u8,
    /// How long a recovered home region waits before taking its group back.
    home_return_delay_ms: u64,
}

fn token(t: CoreToken) -> Option<RevisionToken> {
    Some(RevisionToken {
        group: t.group as u32,
        revision: t.revision,
    })
}

fn kv(k: CoreKv, keys_only: bool) -> KeyValue {
    KeyValue {
        deleted: k.value.is_none() && k.version > 0,
        key: k.key,
        value: if keys_only {
            Vec::new()
        } else {
            k.value.unwrap_or_default()
        },
        version: k.version,
        mod_revision: k.mod_revision,
    }
}

fn read_opts(r: Option<ReadOptions>) -> Result<(CoreConsistency, Option<CoreToken>), Status> {
    let r = r.unwrap_or_default();
    let c = match Consistency::try_from(r.consistency) {
        Ok(Consistency::Linearizable) => CoreConsistency::Linearizable,
        Ok(Consistency::Bounded) => {
            let ms = if r.max_staleness_ms == 0 {
                1000
            } else {
                r.max_staleness_ms
            };
            CoreConsistency::Bounded {
                staleness_us: ms.saturating_mul(1000),
            }
        }
        Ok(Consistency::Stale) => CoreConsistency::Stale,
        Err(_) => return Err(invalid("unknown consistency level")),
    };
    let t = r.token.map(|t| CoreToken {
        group: t.group.min(255) as u8,
        revision: t.revision,
    });
    Ok((c, t))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

/// Cancels the core's watch when the gRPC stream is dropped (client gone).
struct WatchGuard {
    core: CoreClient,
    req: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.core.cancel_watch(self.req);
    }
}

impl Api {
    pub fn new(
        core: CoreClient,
        auth: Authority,
        regions: Vec<RegionEntry>,
        ns_home: std::collections::BTreeMap<String, u8>,
        me: u8,
        home_return_delay_ms: u64,
    ) -> Api {
        Api {
            auth,
            home_return_delay_ms,
            ns_home: Arc::new(ns_home),
            core,
            regions: Arc::new(regions),
            me,
        }
    }

    async fn call(&self, request: ClientRequest) -> Result<ClientResponse, Status> {
        // What an error names: the core answers with a code alone.
        let ns = request.namespace().unwrap_or_default().to_string();
        let invalid_because = why_invalid(&request);
        match self.core.call(request).await.map_err(|_| stopping())? {
            ClientResponse::Error(ErrorCode::UnknownNamespace) => Err(status(
                Reason::UnknownNamespace,
                &format!("unknown namespace {ns:?}"),
            )),
            ClientResponse::Error(ErrorCode::InvalidRequest) => {
                let why = invalid_because.unwrap_or_else(|| "invalid request".to_string());
                Err(status(Reason::InvalidRequest, &why))
            }
            ClientResponse::Error(code) => Err(error_status(code)),
            r => Ok(r),
        }
    }

    /// One read of `ns` through the core's consistency path.
    async fn read(
        &self,
        ns: String,
        query: ReadQuery,
        read: Option<ReadOptions>,
    ) -> Result<ClientResponse, Status> {
        let (consistency, token) = read_opts(read)?;
        self.call(ClientRequest::Read {
            ns,
            query,
            consistency,
            token,
        })
        .await
    }

    /// Who calls: its credential checked against this region's auth state.
    fn access<T>(&self, r: &Request<T>) -> Result<Access, Status> {
        self.auth.grpc(r).map_err(auth_status)
    }

    /// The raw KV API writes bytes as they are, past the configuration
    /// engine. In a configuration environment (a namespace named
    /// project/environment) it may not write the engine's own `$` keys
    /// (rewriting the secrets' registry or marks would unmark secrets), nor
    /// a secret's key with bytes that are not sealed (they would be stored
    /// and read in plaintext). Sealed bytes stay writable: a copied or
    /// altered envelope fails its tag (SECRET_CORRUPT), it never opens.
    async fn guard_config_keys(&self, ns: &str, ops: &[WriteOp]) -> Result<(), Status> {
        if meridian_core::node::is_system_ns(ns) {
            // The nodes' own bookkeeping, unaudited: no client writes it.
            return Err(status(
                Reason::ReservedKey,
                &format!("{ns} is the region nodes' own namespace; no client writes it"),
            ));
        }
        if !ns.contains('/') {
            return Ok(());
        }
        if let Some(op) = ops.iter().find(|op| op.key().starts_with('$')) {
            return Err(status(
                Reason::ReservedKey,
                &format!(
                    "{:?} is the configuration engine's own key in {ns}; change schemas, \
                     templates and secret marks through the Config API",
                    op.key()
                ),
            ));
        }
        let plain: Vec<&str> = ops
            .iter()
            .filter_map(|op| match op {
                WriteOp::Put { key, value } if !crate::secrets::is_envelope(value) => {
                    Some(key.as_str())
                }
                _ => None,
            })
            .collect();
        if plain.is_empty() {
            return Ok(());
        }
        let query = ReadQuery::Get {
            key: crate::configstore::tree::SECRETS_KEY.to_string(),
        };
        let registry: Vec<String> = match self.read(ns.to_string(), query, None).await? {
            ClientResponse::Value { kv, .. } => match kv.value.as_deref() {
                None => Vec::new(),
                Some(b) => serde_json::from_slice(b).map_err(|e| {
                    status(
                        Reason::Internal,
                        &format!("the secrets registry of {ns} does not decode: {e}"),
                    )
                })?,
            },
            other => return Err(unexpected(&other)),
        };
        if let Some(k) = plain.iter().find(|k| registry.iter().any(|r| r == *k)) {
            return Err(status(
                Reason::SecretNotSealed,
                &format!(
                    "{k:?} is a secret in {ns}: write it through the Config API, which seals it"
                ),
            ));
        }
        Ok(())
    }

    /// A write by `access`: every compared key needs `read` (a compare
    /// reveals a version), every put `write` and every delete `delete`.
    async fn write(
        &self,
        access: &Access,
        ns: String,
        request_id: u64,
        compares: Vec<CoreCompare>,
        ops: Vec<WriteOp>,
    ) -> Result<Response<WriteResponse>, Status> {
        for c in &compares {
            access
                .check_key(Action::Read, &ns, &c.key)
                .map_err(auth_status)?;
        }
        for op in &ops {
            let action = match op {
                WriteOp::Put { .. } => Action::Write,
                WriteOp::Delete { .. } => Action::Delete,
            };
            access
                .check_key(action, &ns, op.key())
                .map_err(auth_status)?;
        }
        self.guard_config_keys(&ns, &ops).await?;
        let fingerprint = meridian_core::types::write_fingerprint(&ns, &compares, &ops);
        let resp = self
            .call(ClientRequest::Write {
                ns,
                request_id,
                fingerprint,
                compares,
                ns_revision: None,
                ops,
                meta: meridian_core::types::ChangeMeta {
                    author: access.author(""),
                    message: String::new(),
                    time_ms: crate::auth::wall_ms(),
                },
                audit: Box::new(access.audit_ctx()),
            })
            .await?;
        match resp {
            ClientResponse::Written {
                versions,
                token: t,
                deleted,
            } => Ok(Response::new(WriteResponse {
                succeeded: true,
                versions,
                token: token(t),
                deleted: deleted.into(),
            })),
            ClientResponse::Unchanged { versions, token: t } => Ok(Response::new(WriteResponse {
                succeeded: true,
                versions,
                token: token(t),
                deleted: 0,
            })),
            ClientResponse::Conflict { token: t } => Ok(Response::new(WriteResponse {
                succeeded: false,
                versions: Vec::new(),
                token: token(t),
                deleted: 0,
            })),
            other => Err(unexpected(&other)),
        }
    }
}

#[tonic::async_trait]
impl Kv for Api {
    async fn get(&self, r: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        access
            .check_key(Action::Read, &r.namespace, &r.key)
            .map_err(auth_status)?;
        let resp = self
            .read(r.namespace, ReadQuery::Get { key: r.key }, r.read)
            .await?;
        match resp {
            ClientResponse::Value { kv: k, token: t } => Ok(Response::new(GetResponse {
                found: k.value.is_some(),
                kv: Some(kv(k, false)),
                token: token(t),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn list(&self, r: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        access
            .check_namespace_read(&r.namespace)
            .map_err(auth_status)?;
        let limit = match r.limit {
            0 => LIST_LIMIT_DEFAULT,
            n => n.min(LIST_LIMIT_MAX),
        };
        let mut out = Vec::new();
        let mut after = r.page_token.clone();
        let mut last_token = None;
        let mut next = String::new();
        for _ in 0..LIST_SCAN_PAGES_MAX {
            let want = limit - out.len() as u32;
            let query = ReadQuery::List {
                prefix: r.prefix.clone(),
                start_after: after.clone(),
                limit: want,
            };
            let resp = self.read(r.namespace.clone(), query, r.read).await?;
            let ClientResponse::List {
                kvs,
                more,
                token: t,
            } = resp
            else {
                return Err(unexpected(&resp));
            };
            last_token = token(t);
            if let Some(k) = kvs.last() {
                after = k.key.clone();
            }
            for k in kvs {
                // What the caller may not read is left out, as if absent.
                if (r.key_contains.is_empty() || k.key.contains(&r.key_contains))
                    && access.may_read(&r.namespace, &k.key)
                {
                    out.push(kv(k, r.keys_only));
                }
            }
            if !more {
                next.clear();
                break;
            }
            next = after.clone();
            if out.len() as u32 >= limit {
                break;
            }
        }
        Ok(Response::new(ListResponse {
            kvs: out,
            next_page_token: next,
            token: last_token,
        }))
    }

    async fn put(&self, r: Request<PutRequest>) -> Result<Response<WriteResponse>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        self.write(
            &access,
            r.namespace,
            r.request_id,
            Vec::new(),
            vec![WriteOp::Put {
                key: r.key,
                value: r.value,
            }],
        )
        .await
    }

    async fn delete(&self, r: Request<DeleteRequest>) -> Result<Response<WriteResponse>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        self.write(
            &access,
            r.namespace,
            r.request_id,
            Vec::new(),
            vec![WriteOp::Delete { key: r.key }],
        )
        .await
    }

    async fn compare_and_set(
        &self,
        r: Request<CompareAndSetRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        let op = if r.delete {
            WriteOp::Delete { key: r.key.clone() }
        } else {
            WriteOp::Put {
                key: r.key.clone(),
                value: r.value,
            }
        };
        self.write(
            &access,
            r.namespace,
            r.request_id,
            vec![CoreCompare {
                key: r.key,
                version: r.expected_version,
            }],
            vec![op],
        )
        .await
    }

    async fn txn(&self, r: Request<TxnRequest>) -> Result<Response<WriteResponse>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        let mut ops = Vec::new();
        for o in r.ops {
            match o.op {
                Some(op::Op::Put(p)) => ops.push(WriteOp::Put {
                    key: p.key,
                    value: p.value,
                }),
                Some(op::Op::Delete(k)) => ops.push(WriteOp::Delete { key: k }),
                None => {
                    return Err(invalid(
                        "a transaction operation has neither put nor delete",
                    ))
                }
            }
        }
        let compares = r
            .compares
            .into_iter()
            .map(|c| CoreCompare {
                key: c.key,
                version: c.version,
            })
            .collect();
        self.write(&access, r.namespace, r.request_id, compares, ops)
            .await
    }

    type WatchStream = WatchStream;

    async fn watch(&self, r: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        access
            .check_namespace_read(&r.namespace)
            .map_err(auth_status)?;
        let ns = r.namespace.clone();
        let group = u32::from(self.ns_home.get(&r.namespace).copied().unwrap_or(0));
        let request = ClientRequest::Watch {
            ns: r.namespace,
            prefix: r.prefix,
            start_revision: r.start_revision,
        };
        let (req, mut rx) = self
            .core
            .watch(request, WATCH_BUFFER_MAX)
            .await
            .map_err(|_| stopping())?;
        let guard = WatchGuard {
            core: self.core.clone(),
            req,
        };
        let stream = async_stream(
            move |out: mpsc::Sender<Result<WatchResponse, Status>>| async move {
                let _guard = guard;
                loop {
                    let item = tokio::select! {
                        m = rx.recv() => m,
                        _ = out.closed() => return,
                    };
                    let msg = match item {
                    // Only keys the caller may read are delivered (judged by
                    // its rules when the watch opened).
                    // A batch with nothing readable is not sent at all: its
                    // revision would tell that something changed.
                    Some(ClientResponse::WatchEvents { events, revision }) => {
                        let events: Vec<KeyValue> = events.into_iter().filter(|k| access.may_read(&ns, &k.key)).map(|k| kv(k, false)).collect();
                        if events.is_empty() {
                            continue;
                        }
                        Ok(WatchResponse {
                        events,
                        revision,
                        resync: false,
                        group,
                    })
                    }
                    Some(ClientResponse::WatchResync { snapshot, revision }) => Ok(WatchResponse {
                        events: snapshot.into_iter().filter(|k| access.may_read(&ns, &k.key)).map(|k| kv(k, false)).collect(),
                        revision,
                        resync: true,
                        group,
                    }),
                    Some(ClientResponse::Error(code)) => Err(error_status(code)),
                    Some(other) => Err(unexpected(&other)),
                    None => Err(status(
                        Reason::SlowConsumer,
                        "the watch fell too far behind or the node stopped; resume from the last revision",
                    )),
                };
                    let end = msg.is_err();
                    if out.send(msg).await.is_err() || end {
                        return;
                    }
                }
            },
        );
        Ok(Response::new(stream))
    }

    async fn history(
        &self,
        r: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        access
            .check_key(Action::Read, &r.namespace, &r.key)
            .map_err(auth_status)?;
        let resp = self
            .read(r.namespace, ReadQuery::History { key: r.key }, r.read)
            .await?;
        match resp {
            ClientResponse::History { versions, token: t } => Ok(Response::new(HistoryResponse {
                versions: versions.into_iter().map(|k| kv(k, false)).collect(),
                token: token(t),
            })),
            other => Err(unexpected(&other)),
        }
    }
}

/// A stream fed by a task: `f` gets the sending half.
fn async_stream<F, Fut>(f: F) -> WatchStream
where
    F: FnOnce(mpsc::Sender<Result<WatchResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl Admin for Api {
    async fn ping(&self, _r: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {
            region: self.regions[self.me as usize].name.clone(),
            region_id: self.me as u32,
        }))
    }

    async fn cluster_status(
        &self,
        r: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        // The status names every namespace and region: a cluster-wide read.
        self.access(&r)?
            .check(Action::Read, Resource::CLUSTER)
            .map_err(auth_status)?;
        let (tx, rx) = oneshot::channel();
        self.core
            .send(Input::Status { reply: tx })
            .await
            .map_err(|_| stopping())?;
        let s = rx.await.map_err(|_| stopping())?;
        let name = |i: usize| {
            self.regions
                .get(i)
                .map_or("?", |r| r.name.as_str())
                .to_string()
        };
        let regions = self
            .regions
            .iter()
            .enumerate()
            .map(|(i, r)| RegionStatus {
                id: i as u32,
                name: r.name.clone(),
                grpc_address: r.grpc.to_string(),
                peer_address: r.peer.to_string(),
                connected: s.connected.get(i).copied().unwrap_or(false),
                state: s
                    .links
                    .get(i)
                    .map_or_else(|| "disconnected".to_string(), |l| l.to_string()),
            })
            .collect();
        let groups = s
            .groups
            .iter()
            .enumerate()
            .map(|(g, st)| GroupStatus {
                group: g as u32,
                home_region: name(g),
                leader: st.leader.map(u32::from),
                leader_name: st.leader.map(|l| name(l as usize)).unwrap_or_default(),
                term: st.term,
                commit_index: st.commit_index,
                last_index: st.last_index,
                applied_revision: st.applied_revision,
                lease_remaining_ms: st.lease_remaining_us.map(|u| u / 1000),
                local_lag_entries: st.commit_index.saturating_sub(st.applied_index),
                followers: st
                    .followers
                    .iter()
                    .map(|(p, m)| FollowerProgress {
                        region: *p as u32,
                        match_index: *m,
                        lag_entries: st.last_index.saturating_sub(*m),
                    })
                    .collect(),
                role: st.role.to_string(),
            })
            .collect();
        Ok(Response::new(ClusterStatusResponse {
            answered_by: name(self.me as usize),
            regions,
            groups,
            namespaces: s.namespaces,
            home_return_delay_ms: self.home_return_delay_ms,
            fault: s
                .fault
                .map(|f| crate::grpc_drill::fault_message(f, &name(self.me as usize))),
        }))
    }

    async fn transfer_lease(
        &self,
        r: Request<TransferLeaseRequest>,
    ) -> Result<Response<TransferLeaseResponse>, Status> {
        let access = self.access(&r)?;
        access
            .check(Action::Admin, Resource::CLUSTER)
            .map_err(auth_status)?;
        let r = r.into_inner();
        let Some(to) = self.regions.iter().position(|x| x.name == r.to_region) else {
            return Err(status(
                Reason::UnknownRegion,
                &format!("no region named {:?}", r.to_region),
            ));
        };
        if r.group as usize >= self.regions.len() {
            return Err(status(
                Reason::UnknownRegion,
                &format!("no group {}", r.group),
            ));
        }
        match self
            .call(ClientRequest::TransferLeader {
                group: r.group as u8,
                to: to as u8,
            })
            .await?
        {
            ClientResponse::Done => {
                access.audit_ok(
                    "",
                    &[],
                    &format!("lease of group {} transferred to {}", r.group, r.to_region),
                );
                Ok(Response::new(TransferLeaseResponse {}))
            }
            other => Err(unexpected(&other)),
        }
    }
}
