//! Identity and access: who a request comes from (authentication) and what
//! it may do (authorization), for every client API (gRPC and HTTP).
//!
//! Roles, API tokens, token revocations and grants of roles to principals
//! live in the replicated metadata document (`meridian_core::meta`), so any
//! region can change them, even while partitioned, and a revocation wins over
//! a concurrent grant. The driver publishes a parsed `AuthState` each time
//! the document changes; a request takes one snapshot (`Access`) and checks
//! every key against it, so one request sees one state.
//!
//! Denials: a request naming a key it may not read or change is refused with
//! PERMISSION_DENIED. The decision depends only on the caller's rules and the
//! name it asked for, never on whether the key exists, so a denial reveals
//! nothing about existence. Listings, subtree reads, searches, diffs and
//! watches leave out what the caller may not read, as if it were absent.

pub mod limits;
pub mod oidc;
pub mod request;
pub mod rules;
pub mod tokens;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use meridian_core::meta::MetaView;
use tokio::sync::watch;

use meridian_core::audit::{AuditCtx, RESULT_OK};

use crate::audit::Auditor;
use crate::reason::Reason;
pub use request::{RequestInfo, RpcPath};
pub use rules::{Action, Effect, Resource, Role, ROOT_ROLE};
pub use tokens::TokenRecord;

/// The grant permission that gives a principal a role.
pub fn role_permission(role: &str) -> String {
    format!("role:{role}")
}

/// A refusal: the stable reason and what to tell the caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("[{reason}] {message}")]
pub struct AuthError {
    pub reason: Reason,
    pub message: String,
    /// RATE_LIMITED: when the caller may try again.
    pub retry_after_ms: Option<u64>,
}

impl AuthError {
    pub fn new(reason: Reason, message: impl Into<String>) -> AuthError {
        AuthError {
            reason,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

/// How a principal proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Authentication is off in this region: everyone may do everything.
    None,
    Root,
    Token,
    /// A client certificate verified against `api_tls.client_ca`.
    Certificate,
    /// A JWT from the OIDC provider of `[auth.oidc]`.
    Jwt,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::None => "none",
            Method::Root => "root",
            Method::Token => "token",
            Method::Certificate => "certificate",
            Method::Jwt => "jwt",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub method: Method,
    /// The API token used, if any.
    pub token_id: Option<String>,
    /// The token's project scope.
    pub project: Option<String>,
    /// Roles in force: the token's and those granted to the principal.
    pub roles: Vec<String>,
}

/// The auth records of the metadata document, parsed.
#[derive(Debug, Default)]
pub struct AuthState {
    pub roles: BTreeMap<String, Role>,
    /// Records that failed to parse (they grant nothing), with why.
    pub broken: BTreeMap<String, String>,
    pub tokens: BTreeMap<String, TokenRecord>,
    pub revoked: BTreeSet<String>,
    /// principal -> roles granted to it (grants in force).
    pub grants: BTreeMap<String, BTreeSet<String>>,
    /// Namespace descriptions, owners and labels (records `ns/<name>|...`).
    pub namespaces: BTreeMap<String, NsMeta>,
}

/// What people say about a namespace: replicated metadata any region may
/// edit, each field its own record (so concurrent edits of different
/// fields in different regions both survive).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NsMeta {
    pub description: String,
    pub owners: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// The record key of one field of a namespace's metadata: `ns/<name>|description`,
/// `ns/<name>|owners` or `ns/<name>|label|<key>`.
pub fn ns_record(ns: &str, field: &str) -> String {
    format!("ns/{ns}|{field}")
}

impl AuthState {
    pub fn from_view(view: &MetaView) -> AuthState {
        let mut s = AuthState::default();
        for (k, v) in &view.records {
            if let Some(name) = k.strip_prefix("role/") {
                match Role::parse(name, v) {
                    Ok(r) => {
                        s.roles.insert(name.to_string(), r);
                    }
                    Err(e) => {
                        s.broken.insert(k.clone(), e);
                    }
                }
            } else if let Some(rest) = k.strip_prefix("ns/") {
                let (ns, field) = rest.split_once('|').unwrap_or((rest, ""));
                let m = s.namespaces.entry(ns.to_string()).or_default();
                let parsed = match field {
                    "description" => serde_json::from_str(v).map(|d| m.description = d),
                    "owners" => serde_json::from_str(v).map(|o| m.owners = o),
                    f => match f.strip_prefix("label|") {
                        Some(key) => serde_json::from_str(v).map(|l| {
                            m.labels.insert(key.to_string(), l);
                        }),
                        None => {
                            s.broken.insert(k.clone(), "unknown namespace field".into());
                            Ok(())
                        }
                    },
                };
                if let Err(e) = parsed {
                    s.broken.insert(k.clone(), e.to_string());
                }
            } else if let Some(id) = k.strip_prefix("token-revoked/") {
                s.revoked.insert(id.to_string());
            } else if let Some(id) = k.strip_prefix("token/") {
                match serde_json::from_str::<TokenRecord>(v) {
                    Ok(t) => {
                        s.tokens.insert(id.to_string(), t);
                    }
                    Err(e) => {
                        s.broken.insert(k.clone(), e.to_string());
                    }
                }
            }
        }
        for (principal, perm) in &view.grants {
            if let Some(role) = perm.strip_prefix("role:") {
                s.grants
                    .entry(principal.clone())
                    .or_default()
                    .insert(role.to_string());
            }
        }
        s
    }

    /// Whether `role` names a role that exists (built in or stored).
    pub fn role_exists(&self, role: &str) -> bool {
        role == ROOT_ROLE || self.roles.contains_key(role)
    }
}

/// This region's authentication settings and the current auth state.
#[derive(Clone)]
pub struct Authority {
    enabled: bool,
    root_sha256: Option<String>,
    oidc: Option<Arc<oidc::Oidc>>,
    limits: Arc<limits::RateLimits>,
    contact: Option<Arc<Contact>>,
    auditor: Option<Auditor>,
    cache: Arc<TokenCache>,
    state: watch::Receiver<Arc<AuthState>>,
}

/// API tokens verified under the current auth state, so that a token's
/// SHA-256 is not recomputed and its principal not rebuilt on every request.
/// The cache belongs to one `AuthState`: any change of it (a revocation, a
/// grant, a new role) empties the cache, so a revoked token is never
/// served from it. Expiry is checked on every hit. Entries are found by a
/// keyed hash of the token and confirmed by comparing the whole token in
/// constant time.
#[derive(Default)]
pub struct TokenCache {
    inner: std::sync::Mutex<CacheInner>,
    keys: std::collections::hash_map::RandomState,
}

#[derive(Default)]
struct CacheInner {
    /// The state the entries were verified under (held, so that its
    /// address cannot be reused by a later state).
    state: Option<Arc<AuthState>>,
    entries: std::collections::HashMap<u64, CachedToken>,
}

struct CachedToken {
    token: Box<str>,
    principal: Arc<Principal>,
    expires_ms: Option<u64>,
}

/// Tokens kept at most (then the cache starts over).
const TOKEN_CACHE_MAX: usize = 4096;

impl TokenCache {
    fn slot(&self, token: &str) -> u64 {
        use std::hash::BuildHasher;
        self.keys.hash_one(token)
    }

    fn get(&self, token: &str, state: &Arc<AuthState>, now_ms: u64) -> Option<Arc<Principal>> {
        let inner = self.inner.lock().ok()?;
        if !inner.state.as_ref().is_some_and(|s| Arc::ptr_eq(s, state)) {
            return None;
        }
        let e = inner.entries.get(&self.slot(token))?;
        let same = e.token.len() == token.len()
            && e.token
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |d, (a, b)| d | (a ^ b))
                == 0;
        (same && e.expires_ms.is_none_or(|x| now_ms < x)).then(|| e.principal.clone())
    }

    fn put(
        &self,
        token: &str,
        state: &Arc<AuthState>,
        principal: Arc<Principal>,
        expires_ms: Option<u64>,
    ) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if !inner.state.as_ref().is_some_and(|s| Arc::ptr_eq(s, state))
            || inner.entries.len() >= TOKEN_CACHE_MAX
        {
            inner.entries.clear();
            inner.state = Some(state.clone());
        }
        let slot = self.slot(token);
        inner.entries.insert(
            slot,
            CachedToken {
                token: token.into(),
                principal,
                expires_ms,
            },
        );
    }
}

/// Whether this region is in contact with a majority of regions, so that
/// revocations made elsewhere reach it; kept by a task of the shell.
pub struct Contact {
    start: std::time::Instant,
    /// When the region was last in contact (ms since `start`).
    last_ms: std::sync::atomic::AtomicU64,
    deny_after_ms: u64,
}

impl Contact {
    pub fn new(deny_after_ms: u64) -> Contact {
        Contact {
            start: std::time::Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
            deny_after_ms,
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The region is in contact now.
    pub fn in_contact(&self) {
        self.last_ms
            .store(self.now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// How long the region has been cut off, if longer than the bound.
    fn over_bound_ms(&self) -> Option<u64> {
        let cut = self
            .now_ms()
            .saturating_sub(self.last_ms.load(std::sync::atomic::Ordering::Relaxed));
        (cut > self.deny_after_ms).then_some(cut)
    }
}

/// One request's view: who it is and the state it is judged by.
#[derive(Clone)]
pub struct Access {
    /// Shared: a cached token's principal is not copied per request.
    pub principal: Arc<Principal>,
    enabled: bool,
    state: Arc<AuthState>,
    /// What was asked and from where (for the audit log).
    pub request: RequestInfo,
}

/// Wall-clock milliseconds since the Unix epoch (token expiry, creation).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The token in an `authorization` header value: `Bearer <token>` (the
/// scheme is case-insensitive, RFC 7235). None if it has another scheme.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl Authority {
    /// Authenticate a gRPC call by its `authorization: Bearer` metadata, or
    /// else its connection's client certificate.
    pub fn grpc<T>(&self, r: &tonic::Request<T>) -> Result<Access, AuthError> {
        let access = self.grpc_even_cut_off(r)?;
        self.check_contact(&access)?;
        Ok(access)
    }

    /// Record a refusal before any principal is known.
    fn refused(&self, info: &RequestInfo, principal: Option<&Principal>, e: &AuthError) {
        if info.auditor.is_some() {
            info.record(info.ctx(principal), "", &[], e.reason.as_str(), &e.message);
        }
    }

    /// `grpc`, also while the region is cut off beyond its bound: for
    /// revocations, which only take rights away and must work in any
    /// region, partitioned or not.
    pub fn grpc_even_cut_off<T>(&self, r: &tonic::Request<T>) -> Result<Access, AuthError> {
        let authorization = r.metadata().get("authorization").map(|v| v.as_bytes());
        let conn = r.extensions().get::<crate::api_tls::ClientConn>();
        self.read_credentials(authorization, None, conn, RequestInfo::grpc(r))
    }

    /// Refuse a principal whose rights come from the replicated metadata
    /// while this region has been cut off from a majority for longer than
    /// `auth.cut_off_deny_after_ms`.
    fn check_contact(&self, a: &Access) -> Result<(), AuthError> {
        let Some(c) = &self.contact else {
            return Ok(());
        };
        if matches!(a.principal.method, Method::None | Method::Root) {
            return Ok(());
        }
        match c.over_bound_ms() {
            None => Ok(()),
            Some(cut) => Err(self.noted(
                &a.request,
                Some(&a.principal),
                AuthError::new(
                    Reason::Unavailable,
                    format!(
                        "this region has been cut off from a majority of regions for {cut} ms \
                     (more than auth.cut_off_deny_after_ms = {} ms), so revocations made \
                     elsewhere may be missing: credentials other than root are refused here \
                     until it reconnects; use another region",
                        c.deny_after_ms
                    ),
                ),
            )),
        }
    }

    /// `refused`, passing the error on.
    fn noted(&self, info: &RequestInfo, p: Option<&Principal>, e: AuthError) -> AuthError {
        self.refused(info, p, &e);
        e
    }

    /// Authenticate by the raw values of an `authorization` header (`Bearer
    /// <token>`, which wins) and an `x-api-key` header (the token itself),
    /// else by the connection's client certificate: the one reading of
    /// credentials that gRPC and HTTP share. A token, when sent, decides
    /// alone: a bad token is refused even over a good certificate. The
    /// rate limits apply here: per source before the credential is read
    /// (and failed authentications counted against it), per principal after.
    pub fn from_headers(
        &self,
        authorization: Option<&[u8]>,
        api_key: Option<&[u8]>,
        conn: Option<&crate::api_tls::ClientConn>,
        info: RequestInfo,
    ) -> Result<Access, AuthError> {
        let access = self.read_credentials(authorization, api_key, conn, info)?;
        self.check_contact(&access)?;
        Ok(access)
    }

    fn read_credentials(
        &self,
        authorization: Option<&[u8]>,
        api_key: Option<&[u8]>,
        conn: Option<&crate::api_tls::ClientConn>,
        mut info: RequestInfo,
    ) -> Result<Access, AuthError> {
        info.auditor = self.auditor.clone();
        let result = self.read_credentials_inner(authorization, api_key, conn);
        match result {
            Ok(mut access) => {
                access.request = info;
                Ok(access)
            }
            Err(e) => Err(self.noted(&info, None, e)),
        }
    }

    fn read_credentials_inner(
        &self,
        authorization: Option<&[u8]>,
        api_key: Option<&[u8]>,
        conn: Option<&crate::api_tls::ClientConn>,
    ) -> Result<Access, AuthError> {
        fn text<'a>(name: &str, v: &'a [u8]) -> Result<&'a str, AuthError> {
            std::str::from_utf8(v)
                .ok()
                .filter(|s| s.is_ascii())
                .ok_or_else(|| {
                    AuthError::new(Reason::Unauthenticated, format!("{name} is not ASCII"))
                })
        }
        let token = match (authorization, api_key) {
            (Some(h), _) => {
                let h = text("the authorization header", h)?;
                Some(bearer(h).ok_or_else(|| {
                    AuthError::new(
                        Reason::Unauthenticated,
                        "the authorization header is not `Bearer <token>`",
                    )
                })?)
            }
            (None, Some(k)) => Some(text("the x-api-key header", k)?),
            (None, None) => None,
        };
        let cert = conn.and_then(|c| c.cert_principal.as_deref());
        let source = conn.map(|c| c.remote.ip());
        let now = std::time::Instant::now();
        if let Some(ip) = source {
            self.limits.before(ip, now)?;
        }
        match self.authenticate(token, cert, wall_ms()) {
            Ok(access) => {
                if self.enabled {
                    self.limits.principal(&access.principal.name, now)?;
                }
                Ok(access)
            }
            Err(e) => {
                if let Some(ip) = source {
                    self.limits.failed(ip, now);
                }
                Err(e)
            }
        }
    }

    pub fn new(
        enabled: bool,
        root_sha256: Option<String>,
        state: watch::Receiver<Arc<AuthState>>,
    ) -> Authority {
        Authority {
            enabled,
            root_sha256,
            oidc: None,
            limits: Arc::new(limits::RateLimits::default()),
            contact: None,
            auditor: None,
            cache: Arc::new(TokenCache::default()),
            state,
        }
    }

    /// Record refusals, and give every request's `Access` the auditor.
    pub fn with_auditor(mut self, auditor: Auditor) -> Authority {
        self.auditor = Some(auditor);
        self
    }

    /// Refuse metadata principals while `contact` says the region is cut
    /// off beyond its bound (`auth.cut_off_deny_after_ms`).
    pub fn with_contact(mut self, contact: Arc<Contact>) -> Authority {
        self.contact = Some(contact);
        self
    }

    /// Apply `limits` to every request.
    pub fn with_limits(mut self, limits: limits::RateLimits) -> Authority {
        self.limits = Arc::new(limits);
        self
    }

    /// Also accept JWTs that `oidc` verifies.
    pub fn with_oidc(mut self, oidc: Arc<oidc::Oidc>) -> Authority {
        self.oidc = Some(oidc);
        self
    }

    /// Auth off, for tests of other things and for `enabled = false`.
    pub fn disabled() -> Authority {
        let (_tx, rx) = watch::channel(Arc::new(AuthState::default()));
        Authority::new(false, None, rx)
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Who presents `bearer` (the token, without "Bearer "), or else a
    /// client certificate naming `cert_principal`, judged at wall-clock
    /// `now_ms`.
    pub fn authenticate(
        &self,
        bearer: Option<&str>,
        cert_principal: Option<&str>,
        now_ms: u64,
    ) -> Result<Access, AuthError> {
        let state = self.state.borrow().clone();
        if !self.enabled {
            return Ok(Access {
                principal: Arc::new(Principal {
                    name: String::new(),
                    method: Method::None,
                    token_id: None,
                    project: None,
                    roles: vec![ROOT_ROLE.to_string()],
                }),
                enabled: false,
                state,
                request: RequestInfo::default(),
            });
        }
        let Some(token) = bearer else {
            if let Some(name) = cert_principal {
                // A certificate proves the name; what it may do comes
                // from the roles granted to that name.
                let roles = state
                    .grants
                    .get(name)
                    .map(|g| g.iter().cloned().collect())
                    .unwrap_or_default();
                return Ok(Access {
                    principal: Arc::new(Principal {
                        name: name.to_string(),
                        method: Method::Certificate,
                        token_id: None,
                        project: None,
                        roles,
                    }),
                    enabled: true,
                    state,
                    request: RequestInfo::default(),
                });
            }
            return Err(AuthError::new(
                Reason::Unauthenticated,
                "no credential: send an API token as `authorization: Bearer <token>` \
                 (the CLI reads MERIDIAN_TOKEN or `meridian auth login`)",
            ));
        };
        if !token.starts_with("mrd_") && token.bytes().filter(|b| *b == b'.').count() == 2 {
            return self.authenticate_jwt(token, state);
        }
        let Some(id) = tokens::parse_id(token) else {
            return Err(AuthError::new(
                Reason::Unauthenticated,
                "the credential is not a Meridian API token (mrd_<id>_<secret>) or a JWT",
            ));
        };
        if id == tokens::ROOT_ID {
            return match &self.root_sha256 {
                Some(h) if tokens::matches(token, h) => Ok(Access {
                    principal: Arc::new(Principal {
                        name: "root".into(),
                        method: Method::Root,
                        token_id: Some(id.to_string()),
                        project: None,
                        roles: vec![ROOT_ROLE.to_string()],
                    }),
                    enabled: true,
                    state,
                    request: RequestInfo::default(),
                }),
                _ => Err(AuthError::new(
                    Reason::Unauthenticated,
                    "unknown token (the root credential does not match this region's)",
                )),
            };
        }
        if let Some(principal) = self.cache.get(token, &state, now_ms) {
            return Ok(Access {
                principal,
                enabled: true,
                state,
                request: RequestInfo::default(),
            });
        }
        let Some(rec) = state
            .tokens
            .get(id)
            .filter(|r| tokens::matches(token, &r.sha256))
        else {
            return Err(AuthError::new(
                Reason::Unauthenticated,
                format!("unknown token {id}"),
            ));
        };
        if state.revoked.contains(id) {
            return Err(AuthError::new(
                Reason::TokenRevoked,
                format!("token {id} was revoked"),
            ));
        }
        if rec.expires_ms.is_some_and(|e| now_ms >= e) {
            return Err(AuthError::new(
                Reason::TokenExpired,
                format!("token {id} expired"),
            ));
        }
        let mut roles: BTreeSet<String> = rec.roles.iter().cloned().collect();
        if let Some(g) = state.grants.get(&rec.principal) {
            roles.extend(g.iter().cloned());
        }
        let principal = Arc::new(Principal {
            name: rec.principal.clone(),
            method: Method::Token,
            token_id: Some(id.to_string()),
            project: rec.project.clone(),
            roles: roles.into_iter().collect(),
        });
        self.cache
            .put(token, &state, principal.clone(), rec.expires_ms);
        Ok(Access {
            principal,
            enabled: true,
            state,
            request: RequestInfo::default(),
        })
    }
}

impl Authority {
    /// A JWT (three dot-separated parts): verified by `[auth.oidc]`; its
    /// roles are those its claims map to and those granted to its principal.
    fn authenticate_jwt(&self, jwt: &str, state: Arc<AuthState>) -> Result<Access, AuthError> {
        let Some(oidc) = &self.oidc else {
            return Err(AuthError::new(
                Reason::Unauthenticated,
                "the credential is a JWT, but this region has no [auth.oidc] issuer to verify it",
            ));
        };
        let v = oidc.verify(jwt)?;
        let mut roles = v.roles;
        if let Some(g) = state.grants.get(&v.principal) {
            roles.extend(g.iter().cloned());
        }
        Ok(Access {
            principal: Arc::new(Principal {
                name: v.principal,
                method: Method::Jwt,
                token_id: None,
                project: None,
                roles: roles.into_iter().collect(),
            }),
            enabled: true,
            state,
            request: RequestInfo::default(),
        })
    }
}

impl Access {
    /// Everything allowed (auth off); for internal callers and tests.
    pub fn open() -> Access {
        match Authority::disabled().authenticate(None, None, 0) {
            Ok(a) => a,
            Err(_) => unreachable!("a disabled authority authenticates everyone"),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn state(&self) -> &AuthState {
        &self.state
    }

    /// The author recorded with a change: the principal when auth is on,
    /// else what the caller typed.
    pub fn author(&self, typed: &str) -> String {
        if self.enabled {
            self.principal.name.clone()
        } else {
            typed.to_string()
        }
    }

    fn roles(&self) -> impl Iterator<Item = Option<&Role>> {
        self.principal.roles.iter().map(|r| {
            if r == ROOT_ROLE {
                None
            } else {
                self.state.roles.get(r).or(Some(&NO_ROLE))
            }
        })
    }

    /// Whether the caller may do `action` on `r`: some rule of its roles
    /// allows it and none denies it (the root role allows everything, but a
    /// deny in another role still wins). A project-scoped token acts only in
    /// its project.
    pub fn allowed(&self, action: Action, r: Resource<'_>) -> bool {
        if !self.enabled {
            return true;
        }
        if let Some(p) = &self.principal.project {
            if r.project != p {
                return false;
            }
        }
        let mut allow = false;
        for role in self.roles() {
            match role {
                None => allow = true,
                Some(role) => match role.decide(action, r) {
                    Some(Effect::Deny) => return false,
                    Some(Effect::Allow) => allow = true,
                    None => {}
                },
            }
        }
        allow
    }

    /// `allowed`, or a PERMISSION_DENIED that names the principal, the
    /// action and the resource.
    pub fn check(&self, action: Action, r: Resource<'_>) -> Result<(), AuthError> {
        if self.allowed(action, r) {
            return Ok(());
        }
        let what = if r.project == "*" {
            "the cluster".to_string()
        } else if r.key.is_empty() {
            format!("namespace {}/{}", r.project, r.environment)
        } else {
            format!("key {:?} in {}/{}", r.key, r.project, r.environment)
        };
        let e = AuthError::new(
            Reason::PermissionDenied,
            format!(
                "{} may not {action} {what}",
                if self.principal.name.is_empty() {
                    "the caller"
                } else {
                    &self.principal.name
                }
            ),
        );
        let ns = if r.project == "*" {
            String::new()
        } else {
            format!("{}/{}", r.project, r.environment)
        };
        let keys: &[&str] = if r.key.is_empty() { &[] } else { &[r.key] };
        self.audit_refusal(&ns, keys, &e);
        Err(e)
    }

    /// The audit context of a write this request makes (carried in the
    /// write's log entry).
    pub fn audit_ctx(&self) -> AuditCtx {
        self.request.ctx(Some(&self.principal))
    }

    /// Record an accepted request other than a write (token, role, grant
    /// and namespace operations).
    pub fn audit_ok(&self, ns: &str, keys: &[&str], detail: &str) {
        if self.request.auditor.is_some() {
            self.request
                .record(self.audit_ctx(), ns, keys, RESULT_OK, detail);
        }
    }

    /// Record that this request revealed secrets (their keys, never their
    /// values): the one audit record of a reveal, made whether auth is on
    /// or off, as action `secret.reveal`.
    pub fn audit_reveal(&self, ns: &str, keys: &[&str]) {
        if self.request.auditor.is_some() {
            let mut ctx = self.audit_ctx();
            ctx.action = format!("secret.reveal ({})", ctx.action);
            for chunk in keys.chunks(meridian_core::audit::AUDIT_KEYS_MAX) {
                self.request
                    .record(ctx.clone(), ns, chunk, RESULT_OK, "revealed");
            }
        }
    }

    /// Record a refusal of this request.
    pub fn audit_refusal(&self, ns: &str, keys: &[&str], e: &AuthError) {
        if self.request.auditor.is_some() {
            self.request
                .record(self.audit_ctx(), ns, keys, e.reason.as_str(), &e.message);
        }
    }

    /// `check` of a key in a namespace.
    pub fn check_key(&self, action: Action, ns: &str, key: &str) -> Result<(), AuthError> {
        self.check(action, Resource::in_namespace(ns, key))
    }

    pub fn may_read(&self, ns: &str, key: &str) -> bool {
        self.allowed(Action::Read, Resource::in_namespace(ns, key))
    }

    /// Whether the request came over TLS.
    pub fn secure_channel(&self) -> bool {
        self.request.tls
    }

    /// Whether `action` on `key` in `ns` is allowed (no refusal recorded:
    /// for filtering, as `may_read`).
    pub fn may(&self, action: Action, ns: &str, key: &str) -> bool {
        self.allowed(action, Resource::in_namespace(ns, key))
    }

    /// `may_read_somewhere`, or a PERMISSION_DENIED naming the namespace:
    /// the check of a namespace-wide read (list, watch, schemas, template).
    pub fn check_namespace_read(&self, ns: &str) -> Result<(), AuthError> {
        if self.may_read_somewhere(ns) {
            return Ok(());
        }
        let e = AuthError::new(
            Reason::PermissionDenied,
            format!(
                "{} may not read anything in namespace {ns}",
                self.principal.name
            ),
        );
        self.audit_refusal(ns, &[], &e);
        Err(e)
    }

    /// Whether the caller may read anything at all in `ns` (it sees the
    /// namespace in listings).
    pub fn may_read_somewhere(&self, ns: &str) -> bool {
        if !self.enabled {
            return true;
        }
        let (project, env) = ns.split_once('/').unwrap_or((ns, ""));
        if self
            .principal
            .project
            .as_deref()
            .is_some_and(|p| p != project)
        {
            return false;
        }
        self.roles().any(|r| match r {
            None => true,
            Some(r) => r.allows_somewhere_in(Action::Read, project, env),
        })
    }
}

/// An unknown or broken role: grants nothing.
static NO_ROLE: std::sync::LazyLock<Role> = std::sync::LazyLock::new(|| {
    match Role::compile("none", rules::RoleSpec { rules: Vec::new() }) {
        Ok(r) => r,
        Err(e) => unreachable!("the empty role compiles: {e}"),
    }
});

#[cfg(test)]
mod tests;
