//! OIDC/JWT bearer tokens: a token from an OpenID Connect provider is
//! verified against the provider's JSON Web Key Set (a file, or a URL
//! fetched and cached), its issuer, audience and validity window; its
//! principal is a claim (prefixed, so a provider's names cannot pose as
//! token or certificate principals) and its roles come from mapping a claim's
//! values (`[auth.oidc]` in docs/config.md).
//!
//! Verification is synchronous and reads only the cached key set; a token
//! signed by a key the set lacks asks the refresher for a fresh set (rate
//! limited) and is refused until it arrives, so a provider's key rotation
//! costs a retry, never a blocked request.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::sync::Notify;

use crate::config::OidcConfig;
use crate::reason::Reason;

use super::AuthError;

/// Largest JWT accepted, in bytes (a header line limit keeps the rest).
const JWT_BYTES_MAX: usize = 16 << 10;
/// Largest JWKS document accepted, in bytes.
const JWKS_BYTES_MAX: usize = 1 << 20;
/// A JWKS fetch that takes longer fails.
const JWKS_FETCH_TIMEOUT_MS: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("auth.oidc: cannot read {path}: {cause}")]
    Read {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    #[error("auth.oidc: bad JWKS from {from}: {why}")]
    BadJwks { from: String, why: String },
    #[error("auth.oidc: {0}")]
    Client(String),
}

/// The algorithms named in the config, parsed.
pub fn algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    if names.is_empty() {
        return Err("name at least one algorithm".into());
    }
    names
        .iter()
        .map(|n| {
            n.parse::<Algorithm>().map_err(|_| {
                format!("unknown algorithm {n:?} (JWA names: RS256, RS384, RS512, PS256, ES256, ES384, EdDSA, ...)")
            })
        })
        .collect()
}

/// One usable key of the set.
struct Key {
    key: DecodingKey,
    /// The key's `alg`, if it names one: a token must then use it.
    alg: Option<Algorithm>,
}

/// The cached key set: by key id, and the keys without one.
#[derive(Default)]
struct Keys {
    by_kid: BTreeMap<String, Arc<Key>>,
    unnamed: Vec<Arc<Key>>,
}

impl Keys {
    fn parse(text: &str, from: &str) -> Result<Keys, OidcError> {
        let bad = |why: String| OidcError::BadJwks {
            from: from.to_string(),
            why,
        };
        let set: JwkSet = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut keys = Keys::default();
        for jwk in &set.keys {
            // Keys for encryption, or of kinds this build cannot verify
            // with, are skipped; a set with no usable key is an error.
            if jwk.common.public_key_use == Some(jsonwebtoken::jwk::PublicKeyUse::Encryption) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            let key = Arc::new(Key { key, alg });
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.by_kid.insert(kid.clone(), key);
                }
                None => keys.unnamed.push(key),
            }
        }
        if keys.by_kid.is_empty() && keys.unnamed.is_empty() {
            return Err(bad("no usable signing key".into()));
        }
        Ok(keys)
    }
}

/// What a verified token says about its caller.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub principal: String,
    pub roles: BTreeSet<String>,
}

pub struct Oidc {
    cfg: OidcConfig,
    algorithms: Vec<Algorithm>,
    keys: RwLock<Arc<Keys>>,
    /// Asks the refresher for a fresh key set (an unknown key id).
    refetch: Notify,
}

fn unauthenticated(m: impl Into<String>) -> AuthError {
    AuthError::new(Reason::Unauthenticated, m)
}

impl Oidc {
    /// The verifier of `cfg`. A `jwks_file` is read now; a `jwks_url` is
    /// fetched by `refresher`, which the caller runs (until then, every
    /// token is refused as signed by an unknown key).
    pub fn load(cfg: &OidcConfig) -> Result<Arc<Oidc>, OidcError> {
        let algorithms = algorithms(&cfg.algorithms).map_err(OidcError::Client)?;
        let keys = match &cfg.jwks_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|cause| OidcError::Read {
                    path: path.clone(),
                    cause,
                })?;
                Keys::parse(&text, &path.display().to_string())?
            }
            None => Keys::default(),
        };
        Ok(Arc::new(Oidc {
            cfg: cfg.clone(),
            algorithms,
            keys: RwLock::new(Arc::new(keys)),
            refetch: Notify::new(),
        }))
    }

    fn keys(&self) -> Arc<Keys> {
        // A poisoned lock only means a writer panicked between whole-value
        // swaps; the value is still a whole key set.
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Verify `jwt` and say who it names. Expired tokens are TOKEN_EXPIRED;
    /// every other failure is UNAUTHENTICATED with what was wrong.
    pub fn verify(&self, jwt: &str) -> Result<Verified, AuthError> {
        if jwt.len() > JWT_BYTES_MAX {
            return Err(unauthenticated(format!(
                "the JWT is longer than {JWT_BYTES_MAX} bytes"
            )));
        }
        let header = jsonwebtoken::decode_header(jwt)
            .map_err(|e| unauthenticated(format!("the JWT's header is malformed: {e}")))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(unauthenticated(format!(
                "the JWT is signed with {:?}, which auth.oidc.algorithms does not accept",
                header.alg
            )));
        }
        let keys = self.keys();
        let candidates: Vec<Arc<Key>> = match &header.kid {
            Some(kid) => match keys.by_kid.get(kid) {
                Some(k) => vec![k.clone()],
                None => {
                    if self.cfg.jwks_url.is_some() {
                        self.refetch.notify_one();
                    }
                    return Err(unauthenticated(format!(
                        "the JWT is signed by key {kid:?}, which the issuer's key set does not have{}",
                        if self.cfg.jwks_url.is_some() { " (fetching the set again; retry)" } else { "" }
                    )));
                }
            },
            None => keys
                .unnamed
                .iter()
                .chain(keys.by_kid.values())
                .cloned()
                .collect(),
        };
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&[&self.cfg.audience]);
        v.leeway = self.cfg.leeway_s;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let mut last = None;
        for k in candidates {
            if k.alg.is_some_and(|a| a != header.alg) {
                continue;
            }
            match jsonwebtoken::decode::<BTreeMap<String, Value>>(jwt, &k.key, &v) {
                Ok(data) => return self.claims(&data.claims),
                Err(e) => last = Some(e),
            }
        }
        use jsonwebtoken::errors::ErrorKind as K;
        Err(match last.as_ref().map(|e| e.kind()) {
            None => unauthenticated("no key of the issuer's set fits the JWT's algorithm"),
            Some(K::ExpiredSignature) => AuthError::new(Reason::TokenExpired, "the JWT expired"),
            Some(K::InvalidIssuer) => {
                unauthenticated(format!("the JWT's issuer is not {:?}", self.cfg.issuer))
            }
            Some(K::InvalidAudience) => unauthenticated(format!(
                "the JWT's audience does not include {:?}",
                self.cfg.audience
            )),
            Some(K::InvalidSignature) => unauthenticated("the JWT's signature does not verify"),
            Some(K::ImmatureSignature) => unauthenticated("the JWT is not valid yet (nbf)"),
            Some(K::MissingRequiredClaim(c)) => {
                unauthenticated(format!("the JWT has no {c:?} claim"))
            }
            Some(other) => unauthenticated(format!("the JWT does not verify: {other:?}")),
        })
    }

    fn claims(&self, claims: &BTreeMap<String, Value>) -> Result<Verified, AuthError> {
        let name = match claims.get(&self.cfg.principal_claim) {
            Some(Value::String(s)) if !s.is_empty() => s,
            _ => {
                return Err(unauthenticated(format!(
                    "the JWT has no string claim {:?} to name its principal",
                    self.cfg.principal_claim
                )))
            }
        };
        let mut roles = BTreeSet::new();
        if let Some(c) = &self.cfg.roles_claim {
            let values: Vec<&str> = match claims.get(c) {
                Some(Value::String(s)) => vec![s.as_str()],
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            for v in values {
                if let Some(rs) = self.cfg.role_map.get(v) {
                    roles.extend(rs.iter().cloned());
                }
            }
        }
        Ok(Verified {
            principal: format!("{}{name}", self.cfg.principal_prefix),
            roles,
        })
    }

    /// Keep the key set of a `jwks_url` fresh: fetch it now, then every
    /// `jwks_refresh_s`, and when `verify` met an unknown key id (at most
    /// once per `jwks_refetch_min_s`). A failed fetch keeps the old set.
    pub async fn refresher(self: Arc<Self>) {
        let Some(url) = self.cfg.jwks_url.clone() else {
            return;
        };
        let client = match self.http_client() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "OIDC key set client; JWTs will be refused");
                return;
            }
        };
        let refresh = Duration::from_secs(self.cfg.jwks_refresh_s);
        let refetch_min = Duration::from_secs(self.cfg.jwks_refetch_min_s);
        loop {
            match fetch(&client, &url).await {
                Ok(keys) => {
                    tracing::info!(%url, keys = keys.by_kid.len() + keys.unnamed.len(), "OIDC key set loaded");
                    *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
                }
                Err(e) => {
                    tracing::warn!(%url, error = %e, "OIDC key set fetch failed; keeping the last one")
                }
            }
            // The rate limit on refetches: nothing before `refetch_min`.
            tokio::time::sleep(refetch_min).await;
            let _ =
                tokio::time::timeout(refresh.saturating_sub(refetch_min), self.refetch.notified())
                    .await;
        }
    }

    fn http_client(&self) -> Result<reqwest::Client, OidcError> {
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_millis(JWKS_FETCH_TIMEOUT_MS))
            .redirect(reqwest::redirect::Policy::limited(3));
        if let Some(ca) = &self.cfg.jwks_ca {
            let pem = std::fs::read(ca).map_err(|cause| OidcError::Read {
                path: ca.clone(),
                cause,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| OidcError::Client(format!("{}: {e}", ca.display())))?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        b.build().map_err(|e| OidcError::Client(e.to_string()))
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<Keys, OidcError> {
    let err = |why: String| OidcError::BadJwks {
        from: url.to_string(),
        why,
    };
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| err(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(err(format!("HTTP {}", resp.status())));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > JWKS_BYTES_MAX as u64)
    {
        return Err(err(format!("larger than {JWKS_BYTES_MAX} bytes")));
    }
    let body = resp.bytes().await.map_err(|e| err(e.to_string()))?;
    if body.len() > JWKS_BYTES_MAX {
        return Err(err(format!("larger than {JWKS_BYTES_MAX} bytes")));
    }
    let text = std::str::from_utf8(&body).map_err(|e| err(e.to_string()))?;
    Keys::parse(text, url)
}

/// An identity provider for tests: an ES256 key pair, its JWK, and tokens
/// signed with it. Used by this crate's unit tests and the cluster tests.
#[doc(hidden)]
pub mod testkit {
    use base64::Engine as _;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::{json, Value};

    pub struct TestIssuer {
        pub kid: String,
        key: EncodingKey,
        pub jwk: Value,
    }

    impl TestIssuer {
        /// A fresh P-256 key pair named `kid`.
        pub fn new(kid: &str) -> TestIssuer {
            let pair = match rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256) {
                Ok(p) => p,
                Err(e) => panic!("P-256 key generation: {e}"),
            };
            let key = match EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()) {
                Ok(k) => k,
                Err(e) => panic!("P-256 key as a JWT signing key: {e}"),
            };
            // The raw public key is the uncompressed point 04 || X || Y.
            let raw = pair.public_key_raw();
            let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
            let jwk = json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
            });
            TestIssuer {
                kid: kid.to_string(),
                key,
                jwk,
            }
        }

        /// A JWKS document holding these issuers' keys.
        pub fn jwks(issuers: &[&TestIssuer]) -> String {
            json!({ "keys": issuers.iter().map(|i| i.jwk.clone()).collect::<Vec<_>>() }).to_string()
        }

        /// `claims`, signed (ES256, with this key's id).
        pub fn sign(&self, claims: &Value) -> String {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = Some(self.kid.clone());
            match jsonwebtoken::encode(&h, claims, &self.key) {
                Ok(t) => t,
                Err(e) => panic!("signing a test JWT: {e}"),
            }
        }
    }
}
