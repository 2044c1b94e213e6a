//! The Rust client library. It knows every region's gRPC address, measures the
//! round-trip time to each and talks to the nearest healthy one; on a failure it
//! fails over to the next, retrying with exponential backoff and jitter. Writes
//! carry a random idempotency id, so a retry after an unknown outcome applies at
//! most once. Every response's revision token is remembered per group and sent
//! with later reads, which gives read-your-writes in any region. Watches resume
//! from the last delivered revision after a reconnect.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::v1::admin_client::AdminClient;
use crate::v1::kv_client::KvClient;
use crate::v1::*;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no endpoints given")]
    NoEndpoints,
    #[error("invalid endpoint {0}: {1}")]
    BadEndpoint(String, String),
    #[error("{0}")]
    Invalid(String),
    /// No region answered in time and nothing local could stand in.
    #[error("{0}")]
    Unavailable(String),
    /// The background task behind a local copy ended.
    #[error("the client's background task ended")]
    Stopped,
    /// The node's message (without the "[REASON] " prefix it also carries
    /// for plain gRPC clients) and the stable reason, once each.
    #[error("{} ({})", message_of(status, reason.as_deref()), reason.as_deref().unwrap_or("TRANSPORT"))]
    Status {
        status: Status,
        reason: Option<String>,
    },
}

fn message_of<'s>(status: &'s Status, reason: Option<&str>) -> &'s str {
    let m = status.message();
    match reason {
        Some(r) => m
            .strip_prefix('[')
            .and_then(|rest| rest.strip_prefix(r))
            .and_then(|rest| rest.strip_prefix("] "))
            .unwrap_or(m),
        None => m,
    }
}

impl ClientError {
    pub(crate) fn from_status(status: Status) -> ClientError {
        let reason = crate::reason_of(&status);
        ClientError::Status { status, reason }
    }

    /// The stable Meridian reason, if the error came from a node.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ClientError::Status { reason, .. } => reason.as_deref(),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

/// How the client connects and retries.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Deadline of one attempt.
    pub attempt_timeout: Duration,
    /// Attempts per call (across regions) before the last error is returned.
    pub attempts_max: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How often round-trip times are measured again.
    pub probe_interval: Duration,
    /// API token sent with every call (`authorization: Bearer <token>`).
    pub token: Option<String>,
    /// TLS to the regions: the CA that signed their client-API
    /// certificates, and optionally a client certificate (mutual TLS).
    /// Needed for every `https://` or scheme-less endpoint.
    pub tls: Option<ClientTls>,
}

/// What a client needs for TLS: the cluster CA's certificate (PEM) and,
/// for mutual TLS, a client certificate and its key (PEM).
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    pub ca_pem: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// Read the CA and, if given, the client certificate and key.
    pub fn from_files(
        ca: &std::path::Path,
        identity: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<ClientTls, ClientError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| ClientError::Invalid(format!("cannot read {}: {e}", p.display())))
        };
        Ok(ClientTls {
            ca_pem: read(ca)?,
            identity: match identity {
                None => None,
                Some((cert, key)) => Some((read(cert)?, read(key)?)),
            },
        })
    }
}

/// The endpoint of one region's gRPC API. `http://host:port` is plaintext
/// (for a region whose config says `api_tls.plaintext = true`);
/// `https://host:port` and a bare `host:port` are TLS, verified against
/// `tls`'s CA, with its client certificate if it has one.
pub fn endpoint(url: &str, tls: Option<&ClientTls>) -> Result<Endpoint, ClientError> {
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let bad = |e: &dyn std::fmt::Display| ClientError::BadEndpoint(url.clone(), e.to_string());
    let ep = Endpoint::from_shared(url.clone()).map_err(|e| bad(&e))?;
    if url.starts_with("http://") {
        return Ok(ep);
    }
    if !url.starts_with("https://") {
        return Err(bad(
            &"the scheme must be https:// (TLS) or http:// (plaintext)",
        ));
    }
    let Some(tls) = tls else {
        return Err(ClientError::Invalid(format!(
            "{url} is TLS, which needs the cluster CA's certificate: give --cacert \
             (MERIDIAN_CACERT), or write http://... for a region that serves plaintext"
        )));
    };
    let mut cfg = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem));
    if let Some((cert, key)) = &tls.identity {
        cfg = cfg.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    ep.tls_config(cfg).map_err(|e| bad(&e))
}

/// Adds the caller's API token to every request of a channel.
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// None: no token (calls go unauthenticated). A token that cannot be a
    /// header value is refused here rather than dropped.
    pub fn new(token: Option<&str>) -> Result<Bearer, ClientError> {
        match token {
            None => Ok(Bearer(None)),
            Some(t) => format!("Bearer {t}")
                .parse()
                .map(|v| Bearer(Some(v)))
                .map_err(|_| ClientError::Invalid("the API token is not printable ASCII".into())),
        }
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

/// A channel whose every call carries the API token.
pub type AuthChannel = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(8),
            attempts_max: 8,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            probe_interval: Duration::from_secs(10),
            token: None,
            tls: None,
        }
    }
}

struct Region {
    url: String,
    channel: AuthChannel,
    /// Last measured round-trip time; None: unreachable at the last probe.
    rtt: Option<Duration>,
    /// Failures since the last success (pushes the region down the order).
    failures: u32,
}

struct Inner {
    opts: ClientOptions,
    regions: Mutex<Vec<Region>>,
    /// Highest revision seen per group (read-your-writes).
    tokens: Mutex<BTreeMap<u32, u64>>,
    /// Which group each namespace lives in, learned from responses.
    ns_group: Mutex<BTreeMap<String, u32>>,
}

/// A handle to a Meridian cluster; cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// A long-lived server stream's reconnects (watches, flag sync, config
/// subscriptions): which region to open it on, that a region delivered, and
/// the back-off after a failure. The caller keeps its own resume position.
pub(crate) struct Reconnect {
    client: Client,
    /// Failures in a row since the last delivered message.
    failures: u32,
    /// The region the stream was last opened on.
    region: usize,
}

impl Reconnect {
    /// The channel to open the stream on: the preferred region, or the next
    /// one after each failure in a row.
    pub(crate) fn channel(&mut self) -> AuthChannel {
        let (i, ch) = self.client.pick(self.failures);
        self.region = i;
        ch
    }

    /// A message arrived: the region is healthy and the back-off resets.
    pub(crate) fn delivered(&mut self) {
        self.failures = 0;
        self.client.mark(self.region, true);
    }

    /// The stream failed or ended with `status`: mark the region and wait
    /// out the back-off before the caller opens it again.
    pub(crate) async fn failed(&mut self, what: &str, status: &Status) {
        self.client.mark(self.region, false);
        tracing::debug!(error = %status, "{what} reconnecting");
        tokio::time::sleep(self.client.backoff(self.failures)).await;
        self.failures = self.failures.saturating_add(1);
    }
}

/// The next message of a server stream; its end is an error (the stream
/// is expected to last, so an end means reconnect).
pub(crate) async fn next_message<M>(stream: &mut tonic::Streaming<M>) -> Result<M, Status> {
    match stream.message().await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(Status::unavailable("the stream ended")),
        Err(s) => Err(s),
    }
}

/// Is it safe and useful to try this failure again (possibly elsewhere)?
/// Writes always carry an idempotency id, so even an unknown outcome may be retried.
pub(crate) fn retryable(status: &Status) -> bool {
    match crate::reason_of(status).as_deref() {
        Some(
            "UNAVAILABLE"
            | "TIMEOUT"
            | "INDETERMINATE"
            | "OVERLOADED"
            | "TOKEN_WAIT_TIMEOUT"
            | "HALTED"
            | "RPO_BUDGET_EXCEEDED",
        ) => true,
        Some(_) => false,
        // No reason: the failure came from the transport, not a node.
        None => matches!(
            status.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
        ),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-update of plain
    // data (orderings, counters); the data is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    /// Connect to a cluster given every region's gRPC address (see `endpoint`).
    /// Measures round-trip times before returning; unreachable regions are kept
    /// and tried last.
    pub async fn connect(urls: &[String], opts: ClientOptions) -> Result<Client, ClientError> {
        if urls.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let bearer = Bearer::new(opts.token.as_deref())?;
        let mut regions = Vec::new();
        for url in urls {
            let ep = endpoint(url, opts.tls.as_ref())?
                .connect_timeout(opts.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true);
            regions.push(Region {
                url: url.clone(),
                channel: AuthChannel::new(ep.connect_lazy(), bearer.clone()),
                rtt: None,
                failures: 0,
            });
        }
        let client = Client {
            inner: Arc::new(Inner {
                opts,
                regions: Mutex::new(regions),
                tokens: Mutex::new(BTreeMap::new()),
                ns_group: Mutex::new(BTreeMap::new()),
            }),
        };
        client.probe().await;
        let weak = Arc::downgrade(&client.inner);
        let every = client.inner.opts.probe_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                Client { inner }.probe().await;
            }
        });
        Ok(client)
    }

    /// Measure the round-trip time to every region (one Ping each, concurrently).
    pub async fn probe(&self) {
        let chans: Vec<AuthChannel> = lock(&self.inner.regions)
            .iter()
            .map(|r| r.channel.clone())
            .collect();
        let timeout = self.inner.opts.connect_timeout;
        let probes = chans.into_iter().map(|ch| async move {
            let start = Instant::now();
            let res =
                tokio::time::timeout(timeout, AdminClient::new(ch).ping(PingRequest {})).await;
            match res {
                Ok(Ok(_)) => Some(start.elapsed()),
                _ => None,
            }
        });
        let rtts = futures::future::join_all(probes).await;
        let mut regions = lock(&self.inner.regions);
        for (r, rtt) in regions.iter_mut().zip(rtts) {
            r.rtt = rtt;
            if rtt.is_some() {
                r.failures = 0;
            }
        }
    }

    /// Regions in the order they will be tried: healthy by round-trip time first.
    pub fn preference(&self) -> Vec<(String, Option<Duration>)> {
        let regions = lock(&self.inner.regions);
        self.order(&regions)
            .into_iter()
            .map(|i| (regions[i].url.clone(), regions[i].rtt))
            .collect()
    }

    fn order(&self, regions: &[Region]) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..regions.len()).collect();
        idx.sort_by_key(|&i| {
            let r = &regions[i];
            (
                r.failures.min(3),
                r.rtt.is_none(),
                r.rtt.unwrap_or(Duration::MAX),
                i,
            )
        });
        idx
    }

    pub(crate) fn pick(&self, attempt: u32) -> (usize, AuthChannel) {
        let regions = lock(&self.inner.regions);
        let order = self.order(&regions);
        let i = order[attempt as usize % order.len()];
        (i, regions[i].channel.clone())
    }

    pub(crate) fn mark(&self, i: usize, ok: bool) {
        let mut regions = lock(&self.inner.regions);
        if let Some(r) = regions.get_mut(i) {
            if ok {
                r.failures = 0;
            } else {
                r.failures = r.failures.saturating_add(1);
            }
        }
    }

    /// The bookkeeping of a stream kept open across reconnects and regions.
    pub(crate) fn reconnect(&self) -> Reconnect {
        Reconnect {
            client: self.clone(),
            failures: 0,
            region: 0,
        }
    }

    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let o = &self.inner.opts;
        let exp = o
            .backoff_base
            .saturating_mul(1u32 << attempt.min(16))
            .min(o.backoff_max);
        // Full jitter: spread retries of many clients over the whole window.
        let ms = exp.as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }

    /// Run `f` against the preferred region, failing over and backing off.
    pub(crate) async fn call<T, F, Fut>(&self, mut f: F) -> Result<T, ClientError>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut last = None;
        let attempts = self.inner.opts.attempts_max.max(1);
        for attempt in 0..attempts {
            let (i, ch) = self.pick(attempt);
            let res = tokio::time::timeout(self.inner.opts.attempt_timeout, f(ch)).await;
            let status = match res {
                Ok(Ok(resp)) => {
                    self.mark(i, true);
                    return Ok(resp.into_inner());
                }
                Ok(Err(s)) => s,
                Err(_) => Status::deadline_exceeded("attempt timed out"),
            };
            if !retryable(&status) {
                return Err(ClientError::from_status(status));
            }
            // Only transport failures say the region is unhealthy; a node's own
            // "unavailable" is about a group, and another region may do better.
            self.mark(i, false);
            tracing::debug!(attempt, error = %status, "retrying");
            last = Some(status);
            if attempt + 1 < attempts {
                tokio::time::sleep(self.backoff(attempt)).await;
            }
        }
        let last = last.unwrap_or_else(|| Status::unavailable("no attempt made"));
        // A transport failure (no reason: no node answered) names where the
        // client tried to go.
        let last = if crate::reason_of(&last).is_none() {
            let urls: Vec<String> = lock(&self.inner.regions)
                .iter()
                .map(|r| r.url.clone())
                .collect();
            Status::new(
                last.code(),
                format!(
                    "no region answered after {attempts} attempts (tried {}): {}",
                    urls.join(", "),
                    last.message()
                ),
            )
        } else {
            last
        };
        Err(ClientError::from_status(last))
    }

    fn note_token(&self, ns: &str, token: Option<&RevisionToken>) {
        if let Some(t) = token {
            lock(&self.inner.ns_group).insert(ns.to_string(), t.group);
            let mut tokens = lock(&self.inner.tokens);
            let e = tokens.entry(t.group).or_insert(0);
            *e = (*e).max(t.revision);
        }
    }

    /// The newest token this client saw for the namespace's group.
    pub fn token_for(&self, ns: &str) -> Option<RevisionToken> {
        let group = *lock(&self.inner.ns_group).get(ns)?;
        let revision = *lock(&self.inner.tokens).get(&group)?;
        Some(RevisionToken { group, revision })
    }

    fn read_opts(&self, ns: &str, consistency: Consistency, max_staleness_ms: u64) -> ReadOptions {
        ReadOptions {
            consistency: consistency as i32,
            max_staleness_ms,
            token: self.token_for(ns),
        }
    }

    pub async fn get(
        &self,
        ns: &str,
        key: &str,
        consistency: Consistency,
    ) -> Result<GetResponse, ClientError> {
        self.get_with(ns, key, consistency, 0).await
    }

    /// Get with an explicit staleness bound (for `Consistency::Bounded`; 0: 1 s).
    pub async fn get_with(
        &self,
        ns: &str,
        key: &str,
        consistency: Consistency,
        max_staleness_ms: u64,
    ) -> Result<GetResponse, ClientError> {
        let req = GetRequest {
            namespace: ns.into(),
            key: key.into(),
            read: Some(self.read_opts(ns, consistency, max_staleness_ms)),
        };
        let resp = self
            .call(|ch| {
                let req = req.clone();
                async move { KvClient::new(ch).get(req).await }
            })
            .await?;
        self.note_token(ns, resp.token.as_ref());
        Ok(resp)
    }

    pub async fn list(&self, mut req: ListRequest) -> Result<ListResponse, ClientError> {
        let ns = req.namespace.clone();
        if req.read.is_none() {
            req.read = Some(self.read_opts(&ns, Consistency::Linearizable, 0));
        }
        let resp = self
            .call(|ch| {
                let req = req.clone();
                async move { KvClient::new(ch).list(req).await }
            })
            .await?;
        self.note_token(&ns, resp.token.as_ref());
        Ok(resp)
    }

    pub async fn history(
        &self,
        ns: &str,
        key: &str,
        consistency: Consistency,
    ) -> Result<HistoryResponse, ClientError> {
        let req = HistoryRequest {
            namespace: ns.into(),
            key: key.into(),
            read: Some(self.read_opts(ns, consistency, 0)),
        };
        let resp = self
            .call(|ch| {
                let req = req.clone();
                async move { KvClient::new(ch).history(req).await }
            })
            .await?;
        self.note_token(ns, resp.token.as_ref());
        Ok(resp)
    }

    fn request_id() -> u64 {
        // Non-zero: zero means "no idempotency id".
        rand::rng().random_range(1..u64::MAX)
    }

    pub async fn put(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
    ) -> Result<WriteResponse, ClientError> {
        let req = PutRequest {
            namespace: ns.into(),
            key: key.into(),
            value: value.to_vec(),
            request_id: Self::request_id(),
        };
        let resp = self
            .call(|ch| {
                let req = req.clone();
                async move { KvClient::new(ch).put(req).await }
            })
            .await?;
        self.note_token(ns, resp.token.as_ref());
        Ok(resp)
    }

    pub async fn delete(&self, ns: &str, key: &str) -> Result<WriteResponse, ClientError> {
        let req = DeleteRequest {
            namespace: ns.into(),
            key: key.into(),
            request_id: Self::request_id(),
        };
        let resp = self
            .call(|ch| {
                let req = req.clone();
                async move { KvClient::new(ch).delete(req).await }
            })
            .await?;
        self.note_token(ns, resp.token.as_ref());
        Ok(resp)
    }

    pub async fn compare_and_set(
        &self,
        ns: &str,
        key: &str,
        expected_version: u64,
        value: Option<&[u8]>,
    ) -> Result<WriteResponse, ClientError> {
        let req = CompareAndSetRequest {
            namespace: ns.into(),
            key: key.into(),
            expected_version,
            value: value.map(|v| v.to_vec()).unwrap_or_default(),
            delete: value.is_none(),
            request_id: Self::request_id(),
        };
        let resp = self
            .call(|ch| {
                let req = req.clone();
                async move { KvClient::new(ch).compare_and_set(req).await }
            })
            .await?;
        self.note_token(ns, resp.token.as_ref());
        Ok(resp)
    }

    pub async fn txn(&self, mut req: TxnRequest) -> Result<WriteResponse, ClientError> {
        if req.request_id == 0 {
            req.request_id = Self::request_id();
        }
        let ns = req.namespace.clone();
        let resp = self
            .call(|ch| {
                let req = req.clone();
                async move { KvClient::new(ch).txn(req).await }
            })
            .await?;
        self.note_token(&ns, resp.token.as_ref());
        Ok(resp)
    }

    pub async fn cluster_status(&self) -> Result<ClusterStatusResponse, ClientError> {
        self.call(|ch| async move {
            AdminClient::new(ch)
                .cluster_status(ClusterStatusRequest {})
                .await
        })
        .await
    }

    pub async fn transfer_lease(&self, group: u32, to_region: &str) -> Result<(), ClientError> {
        let req = TransferLeaseRequest {
            group,
            to_region: to_region.into(),
        };
        self.call(|ch| {
            let req = req.clone();
            async move { AdminClient::new(ch).transfer_lease(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Watch `prefix` from `start_revision` (None: from now). The returned
    /// receiver yields every change in revision order; across reconnects and
    /// region failover the watch resumes after the last delivered revision.
    /// It ends only with a non-retryable error (delivered as the last item) or
    /// when the receiver is dropped.
    pub fn watch(
        &self,
        ns: &str,
        prefix: &str,
        start_revision: Option<u64>,
    ) -> mpsc::Receiver<Result<WatchResponse, ClientError>> {
        let (tx, rx) = mpsc::channel(256);
        let client = self.clone();
        let ns = ns.to_string();
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            let mut last = start_revision;
            let mut rc = client.reconnect();
            loop {
                let req = WatchRequest {
                    namespace: ns.clone(),
                    prefix: prefix.clone(),
                    start_revision: last,
                };
                let status = match KvClient::new(rc.channel()).watch(req).await {
                    Ok(resp) => {
                        let mut stream = resp.into_inner();
                        loop {
                            match next_message(&mut stream).await {
                                Ok(ev) => {
                                    rc.delivered();
                                    last = Some(ev.revision);
                                    client.note_token(
                                        &ns,
                                        Some(&RevisionToken {
                                            group: ev.group,
                                            revision: ev.revision,
                                        }),
                                    );
                                    if tx.send(Ok(ev)).await.is_err() {
                                        return;
                                    }
                                }
                                Err(s) => break s,
                            }
                        }
                    }
                    Err(s) => s,
                };
                let slow = crate::reason_of(&status).as_deref() == Some("SLOW_CONSUMER");
                if !retryable(&status) && !slow {
                    let _ = tx.send(Err(ClientError::from_status(status))).await;
                    return;
                }
                rc.failed("watch", &status).await;
                if tx.is_closed() {
                    return;
                }
            }
        });
        rx
    }
}
