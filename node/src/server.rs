//! Starting and stopping a region node: open storage (refusing a corrupt data
//! directory), restart the core from it, bring up the QUIC transport, the
//! client APIs' TLS (`api_tls`) and the gRPC server (with the standard health service and server reflection), and
//! run the driver until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use meridian_core::node::Node;
use meridian_proto::v1::admin_server::AdminServer;
use meridian_proto::v1::auth_server::AuthServer;
use meridian_proto::v1::kv_server::KvServer;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::auth::Authority;
use crate::config::NodeConfig;
use crate::configstore::engine::Limits;
use crate::configstore::ConfigStore;
use crate::driver::{Driver, FAULT_QUEUE_MAX, INPUT_QUEUE_MAX};
use crate::grpc::Api;
use crate::grpc_config::ConfigApi;
use crate::storage::RocksStorage;
use crate::tls::TlsMaterial;
use crate::transport::{PeerInfo, Transport};
use meridian_proto::v1::config_server::ConfigServer;

/// Peer events queued for the driver before the transport waits.
const PEER_EVENTS_MAX: usize = 16_384;
/// Headroom above the largest value for the rest of a gRPC request.
const GRPC_HEADROOM_BYTES: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Oidc(#[from] crate::auth::oidc::OidcError),
    #[error("cannot start the storage thread: {0}")]
    StorageThread(std::io::Error),
    #[error(transparent)]
    Storage(#[from] crate::storage::StoreError),
    #[error("cannot start the core: {0}")]
    Core(#[from] meridian_core::InitError),
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    #[error("cannot listen for gRPC on {addr}: {cause}")]
    Listen {
        addr: SocketAddr,
        /// In the message (not `source()`, which would print it twice in a chain).
        cause: std::io::Error,
    },
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("cannot listen for HTTP on {addr}: {cause}")]
    ListenHttp {
        addr: SocketAddr,
        /// In the message (not `source()`, which would print it twice in a chain).
        cause: std::io::Error,
    },
}

/// A running region node.
pub struct RunningNode {
    pub region: String,
    pub grpc_addr: SocketAddr,
    pub peer_addr: Option<SocketAddr>,
    /// The HTTP/JSON API, if this region serves one.
    pub http_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    http_shutdown: Option<oneshot::Sender<()>>,
    http: Option<JoinHandle<()>>,
    grpc: JoinHandle<()>,
    driver: JoinHandle<()>,
    storage_thread: Option<std::thread::JoinHandle<()>>,
    transport: Arc<Transport>,
}

impl RunningNode {
    /// Stop serving, close peer connections and wait for the driver to finish.
    pub async fn stop(mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(s) = self.http_shutdown.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.grpc).await;
        if let Some(h) = self.http.as_mut() {
            let _ = h.await;
        }
        self.transport.close();
        self.driver.abort();
        let _ = (&mut self.driver).await;
        // The driver is gone, so the storage thread's queue is closed: it
        // finishes its batch and closes the database. Wait for that, so a
        // process that exits next never exits under RocksDB's feet.
        if let Some(t) = self.storage_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Resolves when the gRPC server ends.
    pub async fn wait(&mut self) {
        let _ = (&mut self.grpc).await;
    }
}

/// How often a region checks that it is in contact with a majority.
const CONTACT_CHECK_MS: u64 = 100;

/// Keep `contact` current: in contact while this region and the peers it
/// is connected to are a majority. Ends with the transport.
async fn watch_contact(contact: Arc<crate::auth::Contact>, transport: Arc<Transport>, regions: u8) {
    let weak = Arc::downgrade(&transport);
    drop(transport);
    loop {
        let Some(t) = weak.upgrade() else {
            return;
        };
        // The transport counts this region's own link as connected.
        let up = (0..regions).filter(|p| t.is_connected(*p)).count();
        drop(t);
        if up * 2 > usize::from(regions) {
            contact.in_contact();
        }
        tokio::time::sleep(std::time::Duration::from_millis(CONTACT_CHECK_MS)).await;
    }
}

/// How often a region looks at its keyring file for a change.
const KEYRING_RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn start(cfg: NodeConfig) -> Result<RunningNode, StartError> {
    let me = cfg.id();
    let tls = TlsMaterial::load(&cfg.tls.ca_cert, &cfg.tls.cert, &cfg.tls.key)?;
    let api_tls = crate::api_tls::ApiTls::load(&cfg.api_tls)?;
    // The process's default TLS provider (reqwest's, for an OIDC key set
    // URL): ring, as everywhere else. Already installed is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if api_tls.is_none() {
        tracing::warn!(
            region = %cfg.region,
            "the client APIs serve PLAINTEXT ([api_tls] plaintext = true): tokens, values and secrets cross the network in the clear"
        );
    }
    let regions = cfg.regions.len() as u8;
    let (store, durable) = RocksStorage::open_loaded(&cfg.data_dir, regions, me)?;
    let core = cfg.core_config();
    let start = Instant::now();
    // The core is deterministic given its seed; production seeds it randomly.
    let seed: u64 = rand::random();
    let node = Node::new(core.clone(), me, durable, 0, seed)?;
    tracing::info!(
        region = %cfg.region,
        data_dir = %cfg.data_dir.display(),
        "storage opened and verified"
    );

    let (peer_tx, peer_rx) = mpsc::channel(PEER_EVENTS_MAX);
    let peers: Vec<PeerInfo> = cfg
        .regions
        .iter()
        .map(|r| PeerInfo {
            name: r.name.clone(),
            addr: r.peer,
        })
        .collect();
    let transport = Arc::new(Transport::start(
        me,
        cfg.peer_bind,
        peers,
        &tls,
        core.message_bytes_max,
        peer_tx,
    )?);
    let names: Vec<String> = cfg.regions.iter().map(|r| r.name.clone()).collect();
    let names_for_store = names.clone();
    let mut metrics = crate::metrics::Metrics::new();
    let (driver, storage_rx, storage_thread) = Driver::new(
        node,
        start,
        store,
        transport.clone(),
        names,
        metrics.storage.clone(),
    )
    .map_err(StartError::StorageThread)?;
    let auth = Authority::new(
        cfg.auth.enabled,
        cfg.auth.root_token_sha256.clone(),
        driver.auth_state(),
    );
    let auth = auth.with_limits(crate::auth::limits::RateLimits::new(&cfg.rate_limit));
    let auth = match cfg.auth.cut_off_deny_after_ms {
        None => auth,
        Some(bound_ms) => {
            let contact = Arc::new(crate::auth::Contact::new(bound_ms));
            tokio::spawn(watch_contact(contact.clone(), transport.clone(), regions));
            auth.with_contact(contact)
        }
    };
    let auth = match &cfg.auth.oidc {
        None => auth,
        Some(o) => {
            let oidc = crate::auth::oidc::Oidc::load(o)?;
            tokio::spawn(oidc.clone().refresher());
            auth.with_oidc(oidc)
        }
    };
    if !cfg.auth.enabled {
        tracing::warn!(
            region = %cfg.region,
            "authentication is OFF ([auth] enabled = false): anyone who reaches this region's ports may read and change everything"
        );
    }
    let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE_MAX);
    let (fault_tx, fault_rx) = mpsc::channel(FAULT_QUEUE_MAX);
    let driver = tokio::spawn(driver.run(input_rx, peer_rx, storage_rx, fault_rx));

    let ns_home = core
        .namespaces
        .iter()
        .map(|n| (n.name.clone(), n.home))
        .collect();
    // One handle into the driver for the gRPC API and the configuration
    // engine (request ids are unique per process).
    let core_client = crate::core_client::CoreClient::new(input_tx);
    // Records of refusals and of auth and namespace operations go through
    // this region's home group (a write's record rides in its own entry).
    let (auditor, _audit_task) = crate::audit::Auditor::start(core_client.clone(), me);
    metrics.register_denials(&auditor);
    let auth = auth.with_auditor(auditor);
    let secrets = crate::secrets::Secrets::load(
        cfg.secrets.keyring_file.as_deref(),
        cfg.secrets.allow_plaintext,
    )
    .with_expiry_warning_ms(cfg.secrets.expiry_warning_s.saturating_mul(1000));
    secrets.spawn_reloader(KEYRING_RELOAD_EVERY);
    let store = ConfigStore::new(
        core_client.clone(),
        names_for_store,
        Limits {
            key_bytes_max: core.key_bytes_max,
            value_bytes_max: core.value_bytes_max,
            txn_ops_max: core.txn_ops_max,
        },
        secrets.clone(),
        me as usize,
        crate::configstore::ImpressionsConfig {
            window_s: cfg.flags.impressions_window_s,
            flush_ms: cfg.flags.impressions_flush_ms,
            retention_s: cfg.flags.impressions_retention_days * 86_400,
        },
    );
    store.spawn_impressions_flusher();
    metrics.register_impressions(&store.impression_counters());
    let metrics = Arc::new(metrics);
    let auth_api = crate::grpc_auth::AuthApi::new(core_client.clone(), auth.clone());
    let audit_api = crate::grpc_audit::AuditApi::new(
        core_client.clone(),
        auth.clone(),
        cfg.regions.iter().map(|r| r.name.clone()).collect(),
        me as usize,
    );
    let api = Api::new(
        core_client,
        auth.clone(),
        cfg.regions.clone(),
        ns_home,
        me,
        core.home_return_delay_us / 1000,
    );
    let config_api = ConfigApi::new(store.clone(), auth.clone());
    let drill_api =
        crate::grpc_drill::DrillApi::new(store.clone(), auth.clone(), fault_tx, cfg.region.clone());
    let flagd_api = crate::grpc_flagd::FlagdApi::new(store.clone(), auth.clone());
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<KvServer<Api>>().await;
    health_reporter.set_serving::<AdminServer<Api>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(meridian_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(meridian_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| StartError::Reflection(e.to_string()))?;

    let grpc_addr = cfg.grpc_bind.unwrap_or(cfg.regions[me as usize].grpc);
    let listener = tokio::net::TcpListener::bind(grpc_addr)
        .await
        .map_err(|cause| StartError::Listen {
            addr: grpc_addr,
            cause,
        })?;
    let grpc_addr = listener.local_addr().unwrap_or(grpc_addr);
    let max_msg = core.value_bytes_max + GRPC_HEADROOM_BYTES;
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // Calls by method and status code, with durations (`/metrics`).
        .layer(crate::request_metrics::GrpcMetricsLayer(
            metrics.requests.clone(),
        ))
        // The RPC's path, for audit records (`RequestInfo::grpc`).
        .layer(tower::util::MapRequestLayer::new(
            |mut req: http::Request<tonic::body::Body>| {
                let path = crate::auth::RpcPath(req.uri().path().into());
                req.extensions_mut().insert(path);
                req
            },
        ))
        .add_service(
            KvServer::new(api.clone())
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(64 << 20),
        )
        .add_service(AdminServer::new(api))
        .add_service(meridian_proto::v1::drill_server::DrillServer::new(
            drill_api,
        ))
        .add_service(AuthServer::new(auth_api))
        .add_service(
            meridian_proto::v1::audit_server::AuditServer::new(audit_api)
                .max_encoding_message_size(64 << 20),
        )
        .add_service(
            ConfigServer::new(config_api)
                .max_decoding_message_size(max_msg * 4)
                .max_encoding_message_size(64 << 20),
        )
        .add_service(
            meridian_proto::flagd::sync::v1::flag_sync_service_server::FlagSyncServiceServer::new(
                flagd_api.clone(),
            )
            .max_encoding_message_size(64 << 20),
        )
        .add_service(
            meridian_proto::flagd::evaluation::v1::service_server::ServiceServer::new(
                flagd_api.clone(),
            )
            .max_encoding_message_size(64 << 20),
        )
        .add_service(
            meridian_proto::flagd::evaluation::v2::service_server::ServiceServer::new(flagd_api)
                .max_encoding_message_size(64 << 20),
        )
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha);
    let incoming = tokio_stream::wrappers::ReceiverStream::new(crate::api_tls::accept(
        listener,
        api_tls.clone(),
        crate::api_tls::Api::Grpc,
    ));
    let region = cfg.region.clone();
    let grpc = tokio::spawn(async move {
        let res = router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = shutdown_rx.await;
            })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });
    let http_bind = cfg.regions[me as usize]
        .http
        .map(|a| cfg.http_bind.unwrap_or(a));
    let (http_shutdown, http, http_addr) = match http_bind {
        None => (None, None, None),
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|cause| StartError::ListenHttp { addr, cause })?;
            let addr = listener.local_addr().unwrap_or(addr);
            let (tx, rx) = oneshot::channel::<()>();
            let probes = crate::probes::ProbeConfig {
                ready_staleness_us_max: cfg.probes.ready_staleness_ms_max.saturating_mul(1000),
            };
            let app =
                crate::configstore::http::router(store, auth.clone(), metrics.clone(), probes)
                    .into_make_service_with_connect_info::<crate::api_tls::ClientConn>();
            let listener = crate::api_tls::HttpListener::new(listener, api_tls.clone())
                .map_err(|cause| StartError::ListenHttp { addr, cause })?;
            let task = tokio::spawn(async move {
                let res = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
                if let Err(e) = res {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            });
            (Some(tx), Some(task), Some(addr))
        }
    };
    let shown = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_string(), |a| a.to_string());
    tracing::info!(
        region = %region,
        grpc = %grpc_addr,
        http = %shown(http_addr),
        peer = %shown(transport.local_addr()),
        client_tls = api_tls.is_some(),
        "region node serving"
    );
    Ok(RunningNode {
        region,
        grpc_addr,
        peer_addr: transport.local_addr(),
        http_addr,
        shutdown: Some(shutdown_tx),
        http_shutdown,
        http,
        grpc,
        driver,
        storage_thread: Some(storage_thread),
        transport,
    })
}
