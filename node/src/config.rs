//! The region node's TOML configuration: parsing (unknown fields are errors),
//! validation with messages that name the bad setting, and translation into the
//! core's `Config`. Every setting is documented here and in `docs/config.md`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use meridian_core::config::{Config as CoreConfig, NamespaceSpec};
use meridian_core::types::ReplicationMode;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}")]
    Read {
        path: PathBuf,
        /// In the message (not `source()`, which would print it twice in a chain).
        cause: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

/// One region node's configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's region: one of `regions[].name`.
    pub region: String,
    /// Where this node keeps its RocksDB database. Created if missing.
    pub data_dir: PathBuf,
    /// Where this node's QUIC endpoint binds; default: its region's `peer`
    /// address. Differs when something relays to it, e.g. `meridian-netlab`
    /// (the other regions dial `peer`, the lab's front, which relays here).
    #[serde(default)]
    pub peer_bind: Option<std::net::SocketAddr>,
    /// Where this node's gRPC server binds; default: its region's `grpc`
    /// address. Differs when clients reach it through another address
    /// (a Kubernetes Service's IP, a load balancer, NAT).
    #[serde(default)]
    pub grpc_bind: Option<std::net::SocketAddr>,
    /// Where this node's HTTP API binds; default: its region's `http`
    /// address (as `grpc_bind`).
    #[serde(default)]
    pub http_bind: Option<std::net::SocketAddr>,
    pub tls: TlsConfig,
    /// TLS on the client APIs (gRPC and HTTP). Required, unless
    /// `plaintext = true` says otherwise.
    #[serde(default)]
    pub api_tls: ApiTlsConfig,
    /// Every region of the cluster, in the same order on every node (the order
    /// gives region ids). Between 1 and 32; an odd count is recommended.
    pub regions: Vec<RegionEntry>,
    /// Namespaces and their home regions. Default: for each region `R`, `R`
    /// (quorum) and `R-async` (async, 2 s RPO budget).
    #[serde(default)]
    pub namespaces: Vec<NamespaceEntry>,
    #[serde(default)]
    pub cluster: ClusterTuning,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub rate_limit: crate::auth::limits::RateLimitConfig,
    #[serde(default)]
    pub secrets: SecretsConfig,
    #[serde(default)]
    pub flags: FlagsConfig,
    #[serde(default)]
    pub probes: ProbesConfig,
}

/// Kubernetes probes on the HTTP port (`/livez`, `/readyz`; docs/operations.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesConfig {
    /// `/readyz` fails while this region's replica of any group is further
    /// behind its leader than this (default 5 s; 100 ms to 10 minutes).
    pub ready_staleness_ms_max: u64,
}

impl Default for ProbesConfig {
    fn default() -> ProbesConfig {
        ProbesConfig {
            ready_staleness_ms_max: 5_000,
        }
    }
}

/// Feature flags (docs/flags.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlagsConfig {
    /// Impressions are counted per window of this many seconds (default an
    /// hour; 1 to 86,400).
    pub impressions_window_s: u64,
    /// How often a region writes the impressions it counted (default 10 s;
    /// 100 ms to 10 minutes): the most a count can be behind.
    pub impressions_flush_ms: u64,
    /// Windows older than this are deleted (default 30; 1 to 3,650).
    pub impressions_retention_days: u64,
}

impl Default for FlagsConfig {
    fn default() -> FlagsConfig {
        FlagsConfig {
            impressions_window_s: 3600,
            impressions_flush_ms: 10_000,
            impressions_retention_days: 30,
        }
    }
}

/// Secrets (docs/secrets.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// The keyring: key-encryption keys, the same file in every region
    /// (`meridian secrets keyring create`). None, missing or bad: the region
    /// serves everything else and answers secret operations with
    /// KEYRING_UNAVAILABLE.
    pub keyring_file: Option<PathBuf>,
    /// Accept secret values written over a client connection without TLS
    /// (default false: such writes fail with SECRET_NEEDS_TLS).
    pub allow_plaintext: bool,
    /// Configuration watches get an `expiring` event this long before a
    /// watched secret version's `expires_at` (default a day).
    pub expiry_warning_s: u64,
}

/// A year: the longest expiry warning (a typo of a few zeros is an error).
pub const EXPIRY_WARNING_S_MAX: u64 = 366 * 86_400;

impl Default for SecretsConfig {
    fn default() -> SecretsConfig {
        SecretsConfig {
            keyring_file: None,
            allow_plaintext: false,
            expiry_warning_s: 86_400,
        }
    }
}

/// Authentication and access control of the client APIs (docs/auth.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Whether requests must carry a credential and pass the access rules.
    /// On unless the file says `enabled = false` (the node then logs a
    /// warning at start-up: anyone who reaches a port may do anything).
    pub enabled: bool,
    /// Hex SHA-256 of the root credential (`mrd_root_<secret>`), which may
    /// do everything. `meridian certs` and `meridian dev` write the
    /// credential (mode 0600) and this hash. None: no root credential.
    pub root_token_sha256: Option<String>,
    /// OIDC/JWT bearer tokens from an identity provider (docs/auth.md).
    pub oidc: Option<OidcConfig>,
    /// A region cut off from a majority of regions for longer than this
    /// refuses every request whose rights come from the replicated
    /// metadata (API tokens, client certificates and JWTs; not the root
    /// credential, and not revocations), since a revocation made elsewhere
    /// cannot reach it. None (the default): it keeps serving them with the
    /// rights it last saw, as Consul's `acl.down_policy = "extend-cache"`.
    pub cut_off_deny_after_ms: Option<u64>,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            enabled: true,
            root_token_sha256: None,
            oidc: None,
            cut_off_deny_after_ms: None,
        }
    }
}

/// Verify JWT bearer tokens issued by an OpenID Connect provider: the
/// signature against its JSON Web Key Set, the issuer, the audience and the
/// validity window; then name the principal and map claims to roles.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The `iss` every token must carry (exactly).
    pub issuer: String,
    /// An `aud` every token must carry (one of its audiences).
    pub audience: String,
    /// The provider's JWKS, a JSON file (read at start-up) ...
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// ... or a URL fetched at start-up, then every `jwks_refresh_s` and
    /// when a token names a key id the cached set lacks (at most once per
    /// `jwks_refetch_min_s`). Exactly one of the two.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// PEM CA certificates to trust for an https `jwks_url` besides the
    /// system's.
    #[serde(default)]
    pub jwks_ca: Option<PathBuf>,
    #[serde(default = "default_jwks_refresh_s")]
    pub jwks_refresh_s: u64,
    #[serde(default = "default_jwks_refetch_min_s")]
    pub jwks_refetch_min_s: u64,
    /// Signature algorithms accepted (JWA names: RS256, ES256, EdDSA, ...).
    #[serde(default = "default_oidc_algorithms")]
    pub algorithms: Vec<String>,
    /// The claim that names the principal.
    #[serde(default = "default_principal_claim")]
    pub principal_claim: String,
    /// Put before the claim's value, so that provider names cannot pose as
    /// token or certificate principals (Kubernetes' `--oidc-username-prefix`).
    #[serde(default = "default_principal_prefix")]
    pub principal_prefix: String,
    /// A claim (a string or a list of strings, e.g. "groups") whose values
    /// `role_map` turns into roles.
    #[serde(default)]
    pub roles_claim: Option<String>,
    /// Claim value -> Meridian roles. Values not listed give no role.
    #[serde(default)]
    pub role_map: std::collections::BTreeMap<String, Vec<String>>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway_s")]
    pub leeway_s: u64,
}

fn default_jwks_refresh_s() -> u64 {
    300
}
fn default_jwks_refetch_min_s() -> u64 {
    10
}
fn default_oidc_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_principal_claim() -> String {
    "sub".into()
}
fn default_principal_prefix() -> String {
    "oidc:".into()
}
fn default_leeway_s() -> u64 {
    30
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the cluster CA: peers must present a certificate it signed.
    pub ca_cert: PathBuf,
    /// PEM certificate of this region (its DNS name is `<region>.meridian`).
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
}

/// TLS on the client APIs (docs/auth.md): a server certificate, and
/// optionally a CA whose client certificates authenticate principals
/// (mutual TLS).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiTlsConfig {
    /// PEM certificate chain the client APIs present (`meridian certs`
    /// writes `<region>-api.pem`, valid for the region's name, localhost
    /// and the loopback addresses).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// PEM file of the CA whose client certificates are accepted (mutual
    /// TLS). A client certificate is optional; one that is presented must
    /// verify, and then names the caller's principal. None: no client
    /// certificates are asked for.
    pub client_ca: Option<PathBuf>,
    /// Which name of a client certificate is the principal:
    /// "subject-cn" (default), "san-dns", "san-uri" or "san-email" (the first
    /// such subject alternative name).
    pub principal_from: PrincipalFrom,
    /// Serve the client APIs without TLS. Must be said explicitly; the node
    /// then warns at start-up that tokens and values cross the network in
    /// the clear.
    pub plaintext: bool,
}

/// Which name of a verified client certificate is its principal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrincipalFrom {
    #[default]
    SubjectCn,
    SanDns,
    SanUri,
    SanEmail,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionEntry {
    /// Region name: letters, digits and '-', at most 32 characters.
    pub name: String,
    /// QUIC address other regions reach this region's node at (UDP).
    pub peer: SocketAddr,
    /// gRPC address clients reach this region at (TCP).
    pub grpc: SocketAddr,
    /// HTTP/JSON API address (TCP); none: no HTTP API in this region.
    #[serde(default)]
    pub http: Option<SocketAddr>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceEntry {
    pub name: String,
    /// Home region name: the group homed there serves the namespace's writes.
    pub home: String,
    /// "quorum" (acknowledged once a majority of regions has it: RPO 0) or
    /// "async" (acknowledged by the home region alone, within `rpo_budget_ms`).
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Async only: writes are refused once unreplicated data is this old.
    #[serde(default = "default_rpo_budget_ms")]
    pub rpo_budget_ms: u64,
}

fn default_mode() -> String {
    "quorum".into()
}
fn default_rpo_budget_ms() -> u64 {
    2_000
}

/// Protocol tuning. Must be identical on every node of a cluster.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterTuning {
    /// Minimum election timeout; also the followers' lease promise.
    pub election_timeout_ms: u64,
    /// Leader heartbeat; at most a third of the election timeout.
    pub heartbeat_interval_ms: u64,
    /// Bound on any clock's rate error (parts per million). Leases shrink by it.
    pub clock_drift_max_ppm: u64,
    /// Safety margin taken off every lease.
    pub lease_margin_ms: u64,
    /// How long a home region must look healthy before leadership returns to it.
    pub home_return_delay_ms: u64,
    /// Requests not answered by then fail with TIMEOUT.
    pub request_timeout_ms: u64,
    /// Largest key, in bytes.
    pub key_bytes_max: usize,
    /// Largest value, in bytes.
    pub value_bytes_max: usize,
    /// Most operations (plus compares) in one transaction.
    pub txn_ops_max: usize,
    /// Versions kept per key.
    pub history_versions_max: usize,
    /// Take a snapshot and compact a group's log after this many entries.
    pub compact_after_entries: u64,
    /// Largest peer message, in bytes (frames above it are rejected).
    pub message_bytes_max: usize,
    /// Open watches this node serves at most; more are refused with
    /// RESOURCE_EXHAUSTED (reason OVERLOADED). Each costs about 20 KiB (measured by
    /// `meridian-bench watch`), so the default bounds them to about 1 GiB.
    pub watchers_max: usize,
    /// Audit records each group keeps (the oldest go first). Each is held
    /// in memory and in every snapshot in every region until the storage
    /// engine keeps state on disk, so a large value slows snapshots and the
    /// catch-up of a restarted region (docs/auth.md, "Retention").
    pub audit_records_max: usize,
    /// Audit records older than this (against the group's newest) are
    /// dropped; 0: kept until `audit_records_max` drops them.
    pub audit_retention_days: u64,
}

/// A core configuration error in the file's terms: the core counts
/// microseconds (`election_timeout_us`), the file milliseconds
/// (`cluster.election_timeout_ms`); settings the file does not have are named
/// with their fixed value.
fn file_names(core_message: &str) -> String {
    let mut m = core_message.to_string();
    for (core, file) in [
        ("election_timeout_us", "cluster.election_timeout_ms"),
        ("heartbeat_interval_us", "cluster.heartbeat_interval_ms"),
        ("lease_margin_us", "cluster.lease_margin_ms"),
        ("request_timeout_us", "cluster.request_timeout_ms"),
        ("home_return_delay_us", "cluster.home_return_delay_ms"),
        (
            "forward_probe_after_us",
            "the forward watchdog's probe delay (1000 ms, fixed)",
        ),
        ("clock_drift_max_ppm", "cluster.clock_drift_max_ppm"),
        ("message_bytes_max", "cluster.message_bytes_max"),
        ("audit_records_max", "cluster.audit_records_max"),
    ] {
        m = m.replace(core, file);
    }
    m
}

impl Default for ClusterTuning {
    fn default() -> Self {
        let c = CoreConfig::new(1);
        ClusterTuning {
            election_timeout_ms: c.election_timeout_us / 1000,
            heartbeat_interval_ms: c.heartbeat_interval_us / 1000,
            clock_drift_max_ppm: c.clock_drift_max_ppm,
            lease_margin_ms: c.lease_margin_us / 1000,
            home_return_delay_ms: c.home_return_delay_us / 1000,
            request_timeout_ms: c.request_timeout_us / 1000,
            key_bytes_max: c.key_bytes_max,
            value_bytes_max: c.value_bytes_max,
            txn_ops_max: c.txn_ops_max,
            history_versions_max: c.history_versions_max,
            compact_after_entries: c.compact_after_entries,
            message_bytes_max: c.message_bytes_max,
            watchers_max: c.watchers_max,
            audit_records_max: c.audit_retention.records_max,
            audit_retention_days: c.audit_retention.age_ms_max / (24 * 3600 * 1000),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// "human" or "json".
    pub format: String,
    /// A tracing filter, e.g. "info" or "meridian_node=debug".
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "human".into(),
            level: "info".into(),
        }
    }
}

/// A region name: 1-32 ASCII letters, digits or '-' (it becomes file names
/// and a DNS name in certificates).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        let mut cfg = NodeConfig::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })?;
        // Relative paths are relative to the config file.
        let base = path.parent().unwrap_or(Path::new("."));
        let api = &mut cfg.api_tls;
        for p in [
            &mut cfg.data_dir,
            &mut cfg.tls.ca_cert,
            &mut cfg.tls.cert,
            &mut cfg.tls.key,
        ]
        .into_iter()
        .chain(
            [&mut api.cert, &mut api.key, &mut api.client_ca]
                .into_iter()
                .flatten(),
        )
        .chain(
            cfg.auth
                .oidc
                .iter_mut()
                .flat_map(|o| [&mut o.jwks_file, &mut o.jwks_ca])
                .flatten(),
        )
        .chain(cfg.secrets.keyring_file.iter_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    /// Parse and validate TOML text.
    pub fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        let cfg: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn region_names(&self) -> String {
        self.regions
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The id of region `name`, if the cluster has it.
    pub fn region_id(&self, name: &str) -> Option<u8> {
        self.regions
            .iter()
            .position(|r| r.name == name)
            .map(|i| i as u8)
    }

    /// This node's region id.
    pub fn id(&self) -> u8 {
        // validate() checked that `region` is one of `regions`.
        self.region_id(&self.region).unwrap_or(0)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.regions.is_empty() || self.regions.len() > 32 {
            return bad(format!(
                "regions: need 1 to 32 regions, got {}",
                self.regions.len()
            ));
        }
        let mut names = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for r in &self.regions {
            if !valid_name(&r.name) {
                return bad(format!(
                    "regions: name {:?} must be 1-32 letters, digits or '-'",
                    r.name
                ));
            }
            if !names.insert(r.name.clone()) {
                return bad(format!("regions: region {:?} listed twice", r.name));
            }
            for a in [r.peer, r.grpc] {
                if !addrs.insert(a) {
                    return bad(format!("regions: address {a} used twice"));
                }
            }
        }
        if self.secrets.expiry_warning_s > EXPIRY_WARNING_S_MAX {
            return bad(format!(
                "secrets.expiry_warning_s: at most {EXPIRY_WARNING_S_MAX} (a year), got {}",
                self.secrets.expiry_warning_s
            ));
        }
        if !(100..=600_000).contains(&self.probes.ready_staleness_ms_max) {
            return bad(format!(
                "probes.ready_staleness_ms_max: 100 to 600000, got {}",
                self.probes.ready_staleness_ms_max
            ));
        }
        let f = &self.flags;
        if !(1..=86_400).contains(&f.impressions_window_s)
            || !(100..=600_000).contains(&f.impressions_flush_ms)
            || !(1..=3650).contains(&f.impressions_retention_days)
        {
            return bad(format!(
                "flags: impressions_window_s is 1 to 86400 (got {}), impressions_flush_ms \
                 100 to 600000 (got {}), impressions_retention_days 1 to 3650 (got {})",
                f.impressions_window_s, f.impressions_flush_ms, f.impressions_retention_days
            ));
        }
        let api = &self.api_tls;
        match (&api.cert, &api.key, api.plaintext) {
            (Some(_), Some(_), false) => {}
            (None, None, false) => {
                return bad(
                    "api_tls: the client APIs need TLS: set api_tls.cert and api_tls.key \
                     (`meridian certs` writes <region>-api.pem and <region>-api-key.pem), \
                     or say api_tls.plaintext = true to serve them in the clear"
                        .into(),
                )
            }
            (_, _, false) => return bad("api_tls: cert and key go together: set both".into()),
            (cert, key, true) => {
                if cert.is_some() || key.is_some() || api.client_ca.is_some() {
                    return bad(
                        "api_tls: plaintext = true contradicts cert, key and client_ca: \
                         remove them, or remove plaintext"
                            .into(),
                    );
                }
            }
        }
        if let Some(o) = &self.auth.oidc {
            if o.jwks_file.is_some() == o.jwks_url.is_some() {
                return bad("auth.oidc: give exactly one of jwks_file and jwks_url".into());
            }
            if o.issuer.is_empty() || o.audience.is_empty() {
                return bad("auth.oidc: issuer and audience must not be empty".into());
            }
            if let Err(e) = crate::auth::oidc::algorithms(&o.algorithms) {
                return bad(format!("auth.oidc.algorithms: {e}"));
            }
            if o.jwks_refresh_s == 0 || o.jwks_refetch_min_s == 0 {
                return bad(
                    "auth.oidc: jwks_refresh_s and jwks_refetch_min_s must be at least 1".into(),
                );
            }
        }
        if let Some(h) = &self.auth.root_token_sha256 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(format!(
                    "auth.root_token_sha256: {h:?} is not a hex SHA-256 (64 hex digits)"
                ));
            }
        }
        if self.region_id(&self.region).is_none() {
            return bad(format!(
                "region: unknown region {:?}; the cluster's regions are: {}",
                self.region,
                self.region_names()
            ));
        }
        let mut ns_names = BTreeSet::new();
        for ns in &self.namespaces {
            if !valid_name(&ns.name.replace(['_', '.', '/'], "-")) || ns.name.len() > 128 {
                return bad(format!(
                    "namespaces: name {:?} must be 1-128 letters, digits, '-', '_', '.', '/'",
                    ns.name
                ));
            }
            if !ns_names.insert(ns.name.clone()) {
                return bad(format!("namespaces: {:?} defined twice", ns.name));
            }
            if self.region_id(&ns.home).is_none() {
                return bad(format!(
                    "namespaces: {:?} has unknown home region {:?}; the cluster's regions are: {}",
                    ns.name,
                    ns.home,
                    self.region_names()
                ));
            }
            if ns.mode != "quorum" && ns.mode != "async" {
                return bad(format!(
                    "namespaces: {:?} mode must be \"quorum\" or \"async\", got {:?}",
                    ns.name, ns.mode
                ));
            }
            if ns.mode == "async" && ns.rpo_budget_ms == 0 {
                return bad(format!(
                    "namespaces: {:?} rpo_budget_ms must be above 0",
                    ns.name
                ));
            }
        }
        if self.log.format != "human" && self.log.format != "json" {
            return bad(format!(
                "log.format must be \"human\" or \"json\", got {:?}",
                self.log.format
            ));
        }
        self.core_config()
            .validate()
            .map_err(|e| ConfigError::Invalid(file_names(&e)))
    }

    /// The namespaces in effect (the defaults if none are configured).
    pub fn namespace_entries(&self) -> Vec<NamespaceEntry> {
        if !self.namespaces.is_empty() {
            return self.namespaces.clone();
        }
        let mut out = Vec::new();
        for r in &self.regions {
            out.push(NamespaceEntry {
                name: r.name.clone(),
                home: r.name.clone(),
                mode: "quorum".into(),
                rpo_budget_ms: default_rpo_budget_ms(),
            });
            out.push(NamespaceEntry {
                name: format!("{}-async", r.name),
                home: r.name.clone(),
                mode: "async".into(),
                rpo_budget_ms: default_rpo_budget_ms(),
            });
        }
        out
    }

    /// The core's configuration (identical on every node given identical files).
    pub fn core_config(&self) -> CoreConfig {
        let t = &self.cluster;
        let mut c = CoreConfig::new(self.regions.len() as u8);
        c.election_timeout_us = t.election_timeout_ms * 1000;
        c.heartbeat_interval_us = t.heartbeat_interval_ms * 1000;
        c.clock_drift_max_ppm = t.clock_drift_max_ppm;
        c.lease_margin_us = t.lease_margin_ms * 1000;
        c.home_return_delay_us = t.home_return_delay_ms * 1000;
        c.request_timeout_us = t.request_timeout_ms * 1000;
        c.key_bytes_max = t.key_bytes_max;
        c.value_bytes_max = t.value_bytes_max;
        c.txn_ops_max = t.txn_ops_max;
        c.history_versions_max = t.history_versions_max;
        c.compact_after_entries = t.compact_after_entries;
        c.message_bytes_max = t.message_bytes_max;
        c.watchers_max = t.watchers_max;
        c.audit_retention = meridian_core::audit::AuditRetention {
            records_max: t.audit_records_max,
            age_ms_max: t.audit_retention_days.saturating_mul(24 * 3600 * 1000),
        };
        c.namespaces = self
            .namespace_entries()
            .into_iter()
            .map(|n| NamespaceSpec {
                home: self.region_id(&n.home).unwrap_or(0),
                mode: if n.mode == "async" {
                    ReplicationMode::Async {
                        rpo_budget_us: n.rpo_budget_ms * 1000,
                    }
                } else {
                    ReplicationMode::Quorum
                },
                name: n.name,
            })
            .collect();
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
region = "eu"
data_dir = "data/eu"
[tls]
ca_cert = "ca.pem"
cert = "eu.pem"
key = "eu-key.pem"
[api_tls]
cert = "eu-api.pem"
key = "eu-api-key.pem"
[[regions]]
name = "eu"
peer = "127.0.0.1:7101"
grpc = "127.0.0.1:7001"
[[regions]]
name = "us"
peer = "127.0.0.1:7102"
grpc = "127.0.0.1:7002"
[[regions]]
name = "ap"
peer = "127.0.0.1:7103"
grpc = "127.0.0.1:7003"
"#;

    #[test]
    fn good_config_parses_with_default_namespaces() {
        let c = NodeConfig::parse(GOOD).expect("valid");
        assert_eq!(c.id(), 0);
        let core = c.core_config();
        assert_eq!(core.regions, 3);
        let names: Vec<_> = core.namespaces.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            ["eu", "eu-async", "us", "us-async", "ap", "ap-async"]
        );
        assert_eq!(core.namespaces[2].home, 1);
    }

    #[test]
    fn unknown_region_is_a_clear_error() {
        let text = GOOD.replace("region = \"eu\"", "region = \"mars\"");
        let e = NodeConfig::parse(&text).expect_err("must fail").to_string();
        assert!(e.contains("unknown region \"mars\""), "{e}");
        assert!(e.contains("eu, us, ap"), "{e}");
    }

    #[test]
    fn unknown_field_is_a_clear_error() {
        let text = format!("{GOOD}\n[cluster]\nelection_timout_ms = 5\n");
        let e = NodeConfig::parse(&text).expect_err("must fail").to_string();
        assert!(e.contains("election_timout_ms"), "{e}");
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let text = format!("{GOOD}\n[cluster]\nheartbeat_interval_ms = 900\n");
        let e = NodeConfig::parse(&text).expect_err("must fail").to_string();
        assert!(
            e.contains("cluster.heartbeat_interval_ms")
                && e.contains("cluster.election_timeout_ms"),
            "named as the file names them: {e}"
        );
        assert!(!e.contains("_us"), "no internal microsecond names: {e}");
        let text = format!("{GOOD}\n[cluster]\nrequest_timeout_ms = 1500\n");
        let e = NodeConfig::parse(&text).expect_err("must fail").to_string();
        assert!(
            e.contains("cluster.request_timeout_ms") && !e.contains("_us"),
            "{e}"
        );
        let text = format!("{GOOD}\n[[namespaces]]\nname = \"x\"\nhome = \"moon\"\n");
        let e = NodeConfig::parse(&text).expect_err("must fail").to_string();
        assert!(e.contains("unknown home region \"moon\""), "{e}");
        let text = GOOD.replace("7102", "7101");
        let e = NodeConfig::parse(&text).expect_err("must fail").to_string();
        assert!(e.contains("used twice"), "{e}");
    }

    #[test]
    fn client_apis_need_tls_unless_plaintext_is_explicit() {
        let no_tls = GOOD.replace(
            "[api_tls]\ncert = \"eu-api.pem\"\nkey = \"eu-api-key.pem\"\n",
            "",
        );
        assert!(!no_tls.contains("api_tls"));
        let e = NodeConfig::parse(&no_tls)
            .expect_err("must fail")
            .to_string();
        assert!(
            e.contains("api_tls") && e.contains("plaintext = true"),
            "{e}"
        );
        let plain = format!("{no_tls}\n[api_tls]\nplaintext = true\n");
        assert!(NodeConfig::parse(&plain).expect("valid").api_tls.plaintext);
        let both = GOOD.replace("[api_tls]\n", "[api_tls]\nplaintext = true\n");
        let e = NodeConfig::parse(&both).expect_err("must fail").to_string();
        assert!(e.contains("contradicts"), "{e}");
        let half = GOOD.replace("key = \"eu-api-key.pem\"\n", "");
        let e = NodeConfig::parse(&half).expect_err("must fail").to_string();
        assert!(e.contains("cert and key go together"), "{e}");
        let bad = GOOD.replace("[api_tls]\n", "[api_tls]\nprincipal_from = \"issuer\"\n");
        let e = NodeConfig::parse(&bad).expect_err("must fail").to_string();
        assert!(e.contains("subject-cn"), "lists the choices: {e}");
        let san = GOOD.replace("[api_tls]\n", "[api_tls]\nprincipal_from = \"san-uri\"\n");
        assert_eq!(
            NodeConfig::parse(&san)
                .expect("valid")
                .api_tls
                .principal_from,
            PrincipalFrom::SanUri
        );
    }
}
