//! The configuration engine: every configuration operation as a sequence of
//! core requests. Reads load the layers of an environment (itself, then the
//! environments it inherits from) and render them. Writes are optimistic
//! read-validate-write cycles: read the namespace, apply the operations to a
//! copy, render and validate every environment the change affects, then
//! commit with a compare on the namespace's revision (anything committed in
//! between makes the core refuse, and the cycle runs again). Idempotency keys
//! become the core's request ids, so a retried write, in any region, returns
//! the first result and never writes twice.
//!
//! This file holds the types, the calls into the core (through the shared
//! `CoreClient`) and the loading and rendering of layers; `layers` is the one
//! inheritance walk, `validate` checks a write before it commits, and
//! `reads`, `writes`, `namespaces` and `watch` hold the operations of each
//! kind.

mod drills;
mod flags;
mod impressions;
mod layers;
mod namespaces;
mod reads;
mod secret_lifecycle;
mod secrets;
mod validate;
mod watch;
mod writes;

pub use drills::{drills_ns, DRILLS_LIST_MAX, DRILL_REPORT_BYTES_MAX};
pub use flags::{CompiledFlags, FlagEdit, FlagEntry, FlagWatch, FlagsView};
pub use impressions::{
    impressions_ns, FlagImpressions, ImpressionCounters, ImpressionsConfig, ImpressionsView,
    WindowImpressions, REPORT_CELLS_MAX,
};
pub use secret_lifecycle::DestroyResult;
pub use secrets::{NsSecrets, SecretInfo, SecretsCensus, SecretsOverview};
pub use watch::WatchEvent;

use crate::auth::{Access, Action};
use crate::core_client::CoreClient;
use crate::reason::Reason;
use crate::secrets::Secrets;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use meridian_core::node::CATALOG_NS;
use meridian_core::rng::fnv1a;
use meridian_core::types::{
    AsOf, ChangeMeta, ClientRequest, ClientResponse, Compare, Consistency, ErrorCode, KeyValue,
    NsSettings, ReadQuery, ReplicationMode, RevisionToken, WriteOp,
};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::diff;
use super::error::CfgError;
use super::render::{self, RenderError, Renderer};
use super::tree::{self, INHERITS_KEY, SCHEMA_KEY_PREFIX, SECRETS_KEY, SECRET_PATHS_KEY, VARS_KEY};

/// Read-validate-write cycles tried before a write gives up as contended.
const WRITE_ATTEMPTS_MAX: usize = 8;
/// Keys loaded on demand while rendering (references outside the subtree read).
const RENDER_LOADS_MAX: usize = 64;
/// Namespaces of one project considered when finding inheriting environments.
const PROJECT_ENVS_MAX: u32 = 1000;
/// Probes of a new namespace's home leader, 50 ms apart, before giving up.
const CATALOG_WAIT_TRIES_MAX: usize = 60;
/// How long a request waits out a namespace move (NAMESPACE_MOVING) before
/// it gives the error to its caller. A move freezes the namespace for about
/// one commit round per chunk of its data plus one catalog commit.
const MOVE_WAIT_MS_MAX: u64 = 10_000;
/// How long `move_namespace` waits for a move to complete.
const MOVE_DONE_WAIT_MS_MAX: u64 = 60_000;
/// Entries one list page returns at most.
pub const LIST_LIMIT_MAX: usize = 1000;
/// The key an idempotency probe compares against (never written: its compare
/// always fails, so the probe only learns whether the id was seen).
const PROBE_KEY: &str = "$idempotency-probe";

/// Limits enforced before a request reaches the core (the core enforces the
/// same ones again; failing early gives an error that names the key).
#[derive(Clone, Debug)]
pub struct Limits {
    pub key_bytes_max: usize,
    pub value_bytes_max: usize,
    pub txn_ops_max: usize,
}

#[derive(Clone)]
pub struct ConfigStore {
    core: CoreClient,
    regions: Arc<Vec<String>>,
    limits: Limits,
    /// Seals secret values before they reach the core; opens them for
    /// callers allowed to reveal them.
    secrets: Secrets,
    /// Environments' flags compiled for evaluation.
    flag_cache: Arc<flags::FlagCache>,
    /// The watched environments' flags, one task each.
    flag_hubs: Arc<flags::FlagHubs>,
    /// Flags' impressions counted here and not yet flushed.
    impressions: Arc<impressions::Impressions>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Sees every write acknowledged before the read began (a linearizable
    /// probe at the home leader, then a local read once that point applied).
    #[default]
    Linearizable,
    /// This region's state if it is provably no more than this many
    /// milliseconds behind the home region; otherwise as linearizable.
    Bounded { staleness_ms: u64 },
    /// This region's state, whatever it is.
    Stale,
}

#[derive(Clone)]
pub struct ReadOpts {
    /// Who reads: what it may not read is left out of everything the read
    /// returns (values, subtrees, listings, searches, references, diffs).
    pub access: Access,
    /// The namespace's own stored values: no inheritance, no rendering.
    pub raw: bool,
    pub as_of: AsOf,
    pub consistency: ReadConsistency,
    /// Show the plaintext of secrets the caller may `reveal` (each reveal
    /// is audited); without it, or without the permission, a secret reads
    /// as its redaction (`secrets::redaction`).
    pub reveal: bool,
}

/// One stored version of a key, as the API shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Entry {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    pub version: u64,
    pub revision: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub author: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub time_ms: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The environment a listed value comes from when it is inherited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inherited_from: Option<String>,
}

impl Entry {
    /// A key with no stored version behind it (a derived or removed value).
    fn bare(key: &str) -> Entry {
        Entry {
            key: key.to_string(),
            value: None,
            version: 0,
            revision: 0,
            author: String::new(),
            message: String::new(),
            time_ms: 0,
            deleted: false,
            inherited_from: None,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct GetResult {
    pub path: String,
    pub found: bool,
    /// The caller's default was returned.
    pub defaulted: bool,
    pub value: Value,
    pub token: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ListResult {
    pub entries: Vec<Entry>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub next_page_token: String,
    pub token: String,
}

/// One operation of a write; all of a request's operations commit atomically.
/// Serialized only to fingerprint a write (`ops_fingerprint`).
#[derive(Clone, Debug, Serialize)]
pub enum Op {
    Put {
        key: String,
        value: Value,
        if_version: Option<u64>,
        /// Store the value as a secret (encrypted; redacted on reads).
        secret: Option<SecretSpec>,
    },
    Delete {
        key: String,
        recursive: bool,
        if_version: Option<u64>,
    },
    /// RFC 7386 merge patch applied to the subtree at `path`.
    Merge {
        path: String,
        patch: Value,
        if_version: Option<u64>,
        /// Store every value the patch sets as a secret.
        secret: Option<SecretSpec>,
    },
    /// RFC 6902 JSON patch applied to the subtree at `path`.
    Patch {
        path: String,
        patch: Value,
    },
    SetSchema {
        prefix: String,
        schema: Value,
    },
    DeleteSchema {
        prefix: String,
    },
    /// Set (Some) or clear (None) the parent environment and the variables.
    SetTemplate {
        inherits: Option<Option<String>>,
        vars: Option<Map<String, Value>>,
    },
    /// Mark paths secret (every key under one, now and later, is stored
    /// as a secret) or take marks off (keys already secret stay so).
    SecretPaths {
        add: Vec<String>,
        remove: Vec<String>,
    },
    /// Define or replace a feature flag (needs `flags`).
    SetFlag {
        key: String,
        definition: Value,
    },
    DeleteFlag {
        key: String,
    },
    /// Change the stored definition of a flag (kill switch, roll-out).
    EditFlag {
        key: String,
        edit: FlagEdit,
    },
    /// Define or replace a segment, a rule flags share (needs `flags`).
    SetSegment {
        name: String,
        rule: Value,
    },
    DeleteSegment {
        name: String,
    },
    /// Internal (rollback): make a stored key hold this, whatever it holds.
    Restore {
        key: String,
        value: Option<Value>,
        /// The value is a secret's plaintext (opened from its old version).
        secret: Option<SecretSpec>,
    },
}

/// A write's marking of its values as secrets, with their lifecycle.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SecretSpec {
    /// Wall-clock ms after which reveals fail with SECRET_EXPIRED (0: never).
    pub expires_ms: u64,
    /// How often the secret should be rotated, in ms (0: no policy).
    pub rotate_every_ms: u64,
}

#[derive(Clone)]
pub struct WriteOpts {
    /// Who writes: every key the write changes needs `write` (a put) or
    /// `delete`, and schemas and template settings `admin`.
    pub access: Access,
    pub author: String,
    pub message: String,
    pub idempotency_key: Option<String>,
    pub dry_run: bool,
    /// The request came over TLS (secret writes over a plaintext channel
    /// are refused unless `[secrets] allow_plaintext`).
    pub secure_channel: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct KeyChange {
    pub key: String,
    /// "put" or "delete".
    pub op: &'static str,
    /// The key's new version (0 in a dry run).
    pub version: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct WriteResult {
    pub revision: u64,
    pub token: String,
    pub changes: Vec<KeyChange>,
    /// An earlier write with the same idempotency key already applied; this
    /// is its result and nothing was written now.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// What the write changes in the namespace's raw configuration, and in
    /// its schemas (`/$schema:<prefix>`) and template (`/$vars`, `/$inherits`).
    pub diff: Vec<diff::Change>,
    /// What the caller should know before trusting the result (a rollback
    /// that deleted keys the revision predates).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NamespaceInfo {
    pub name: String,
    pub project: String,
    pub environment: String,
    pub home_region: String,
    pub mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpo_budget_ms: Option<u64>,
    pub history_versions_max: u32,
    pub history_age_ms_max: u64,
    /// Set while the namespace's home moves to this region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moving_to_region: Option<String>,
    /// What people say about it (replicated metadata, `describe_namespace`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A change to a namespace's description, owners and labels; what is None
/// or empty stays as it is.
#[derive(Clone, Debug, Default)]
pub struct DescribeNs {
    pub description: Option<String>,
    pub owners: Option<Vec<String>>,
    pub set_labels: BTreeMap<String, String>,
    pub remove_labels: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct CreateNs {
    pub home_region: String,
    /// "quorum" (default) or "async".
    pub mode: String,
    pub rpo_budget_ms: u64,
    pub history_versions_max: u32,
    pub history_age_ms_max: u64,
}

/// One environment's stored state as read.
#[derive(Clone, Debug, Default)]
struct Layer {
    ns: String,
    /// User keys (decoded), with their versions.
    kvs: BTreeMap<String, KeyValue>,
    leaves: BTreeMap<String, Value>,
    /// `$` keys: schemas, variables, parent.
    meta: BTreeMap<String, Value>,
    /// Keys that are secrets: stored as envelopes (their `leaves` hold the
    /// redaction until revealed), or, in a write's working copy, marked
    /// secret by the write.
    secrets: BTreeMap<String, SecretSpec>,
    /// Secrets whose plaintext `leaves` holds (a read with reveal; never in
    /// a write's layers).
    revealed: BTreeSet<String>,
    ns_revision: u64,
    token: Option<RevisionToken>,
}

impl Layer {
    /// Leave out what `access` may not read, judged as keys of `view_ns`
    /// (an inherited layer's values are part of the child's configuration).
    fn restrict(&mut self, access: &Access, view_ns: &str) {
        if access.enabled() {
            self.leaves.retain(|k, _| access.may_read(view_ns, k));
            self.kvs.retain(|k, _| access.may_read(view_ns, k));
            self.secrets.retain(|k, _| access.may_read(view_ns, k));
        }
    }

    fn parent(&self) -> Option<String> {
        self.meta
            .get(INHERITS_KEY)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    }
}

/// The fingerprint of a write for its idempotency key: its namespace and
/// operations as JSON (object keys sorted, so equal writes hash equally).
///
/// A secret's value is left out: the fingerprint is stored (the core's
/// idempotency table) and a hash of a short secret could be searched. Two
/// writes that differ only in a secret's value count as the same write.
/// That is a value the write marks secret, and a value of a key that
/// `marks` (what the environment already holds secret) says is or may be.
fn ops_fingerprint(ns: &str, ops: &[Op], marks: &secrets::Marks) -> Result<u64, CfgError> {
    let mut ops = ops.to_vec();
    for op in &mut ops {
        match op {
            Op::Put { key, value, .. } if marks.key(key) => *value = Value::Null,
            Op::Merge {
                path, patch: value, ..
            }
            | Op::Patch {
                path, patch: value, ..
            } if marks.subtree(path) => *value = Value::Null,
            Op::Restore {
                key,
                value: Some(value),
                ..
            } if marks.key(key) => *value = Value::Null,
            Op::Put {
                value,
                secret: Some(_),
                ..
            }
            | Op::Merge {
                patch: value,
                secret: Some(_),
                ..
            }
            | Op::Restore {
                value: Some(value),
                secret: Some(_),
                ..
            } => *value = Value::Null,
            _ => {}
        }
    }
    let bytes = serde_json::to_vec(&(ns, ops)).map_err(|e| {
        CfgError::new(
            Reason::Internal,
            format!("cannot fingerprint the write: {e}"),
        )
    })?;
    Ok(fnv1a(&bytes))
}

/// The diff a write returns: the raw configuration's, then each schema and
/// template setting's, whose pointers (`/$schema:<prefix>`, `/$vars`,
/// `/$inherits`) no configuration key can have (keys never hold `$`).
fn layer_diff(before: &Layer, after: &Layer) -> Vec<diff::Change> {
    let mut out = diff::diff(
        tree::assemble(&before.leaves, "").as_ref(),
        tree::assemble(&after.leaves, "").as_ref(),
    );
    let keys: BTreeSet<&String> = before.meta.keys().chain(after.meta.keys()).collect();
    for k in keys {
        let (a, b) = (before.meta.get(k), after.meta.get(k));
        // The registry of secret keys is the engine's bookkeeping.
        if a == b || k == SECRETS_KEY {
            continue;
        }
        let path = format!("/{}", k.replace('~', "~0").replace('/', "~1"));
        // A meta value is one whole setting: report it whole, not member by member.
        out.push(diff::Change {
            path,
            op: match (a, b) {
                (None, _) => "added",
                (_, None) => "removed",
                _ => "changed",
            },
            from: a.cloned(),
            to: b.cloned(),
        });
    }
    out
}

/// A stored key as a user names it (`$schema:a.b` is the schema at `a.b`).
fn display_key(k: &str) -> String {
    match schema_prefix_of(k) {
        Some("") => "the root schema".to_string(),
        Some(p) => format!("the schema at {p}"),
        None if k == VARS_KEY => "the template variables".to_string(),
        None if k == INHERITS_KEY => "the inherited environment".to_string(),
        None => k.to_string(),
    }
}

/// Decode a stored value: JSON, or (bytes written through the raw KV API)
/// the text as a JSON string. A secret's envelope decodes as its redaction:
/// no code path turns stored bytes into a secret's plaintext but
/// `ConfigStore::open_secret`.
fn decode(kv: &KeyValue) -> Option<Value> {
    let bytes = kv.value.as_deref()?;
    if crate::secrets::is_destroyed(bytes) {
        return Some(secrets::destroyed(kv.version));
    }
    if crate::secrets::is_envelope(bytes) {
        return Some(secrets::redaction(kv.version));
    }
    Some(
        serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned())),
    )
}

fn entry(kv: &KeyValue) -> Entry {
    Entry {
        key: kv.key.clone(),
        value: decode(kv),
        version: kv.version,
        revision: kv.mod_revision,
        author: kv.meta.author.clone(),
        message: kv.meta.message.clone(),
        time_ms: kv.meta.time_ms,
        deleted: kv.value.is_none(),
        inherited_from: None,
    }
}

/// A proper ancestor of `key` that is itself a leaf (so `key` cannot exist).
fn leaf_ancestor<'k>(work: &Layer, key: &'k str) -> Option<&'k str> {
    tree::ancestors(key)
        .into_iter()
        .find(|a| work.leaves.contains_key(*a))
}

fn token_str(t: Option<RevisionToken>) -> String {
    t.map(|t| t.to_string()).unwrap_or_default()
}

/// The namespace of a project's environment.
pub fn ns_name(project: &str, environment: &str) -> String {
    format!("{project}/{environment}")
}

fn check_name(what: &str, s: &str) -> Result<(), CfgError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && s.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(CfgError::invalid(format!(
            "{what} {s:?} must be 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
        )))
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn schema_prefix_of(meta_key: &str) -> Option<&str> {
    meta_key.strip_prefix(SCHEMA_KEY_PREFIX)
}

impl ConfigStore {
    pub fn new(
        core: CoreClient,
        regions: Vec<String>,
        limits: Limits,
        secrets: Secrets,
        me: usize,
        impressions: ImpressionsConfig,
    ) -> ConfigStore {
        ConfigStore {
            core,
            regions: Arc::new(regions),
            limits,
            secrets,
            flag_cache: Arc::default(),
            flag_hubs: Arc::default(),
            impressions: Arc::new(impressions::Impressions::new(me, impressions)),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The handle into the core (for the audit API, which shares this router).
    pub fn core(&self) -> &CoreClient {
        &self.core
    }

    /// Region names, by node id.
    pub fn regions(&self) -> &[String] {
        &self.regions
    }

    /// One core request. A namespace that is moving home is waited out (the
    /// refused request did not apply, so it is safe to repeat) for a bounded
    /// time: a move looks like a short stall, not an error.
    async fn call(&self, request: ClientRequest) -> Result<ClientResponse, CfgError> {
        let start = std::time::Instant::now();
        loop {
            match self.call_once(request.clone()).await {
                Err(e)
                    if e.reason == Reason::NamespaceMoving
                        && start.elapsed().as_millis() < u128::from(MOVE_WAIT_MS_MAX) =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    async fn call_once(&self, request: ClientRequest) -> Result<ClientResponse, CfgError> {
        let ns = request.namespace().unwrap_or_default().to_string();
        let resp = self
            .core
            .call(request)
            .await
            .map_err(|_| CfgError::new(Reason::ShuttingDown, "the node is stopping"))?;
        match resp {
            ClientResponse::Error(ErrorCode::UnknownNamespace) => Err(CfgError::new(
                Reason::UnknownNamespace,
                format!("unknown environment {ns:?} (create it first: config create)"),
            )),
            ClientResponse::Error(code) => Err(CfgError::core(code)),
            r => Ok(r),
        }
    }

    async fn read(
        &self,
        ns: &str,
        query: ReadQuery,
        consistency: Consistency,
        token: Option<RevisionToken>,
    ) -> Result<ClientResponse, CfgError> {
        self.call(ClientRequest::Read {
            ns: ns.to_string(),
            query,
            consistency,
            token,
        })
        .await
    }

    /// A token for "now" at the namespace's home leader (linearizable).
    async fn probe(&self, ns: &str) -> Result<Option<RevisionToken>, CfgError> {
        self.probe_at(ns, Consistency::Linearizable).await
    }

    /// A read of one key at `consistency`: its token.
    async fn probe_at(
        &self,
        ns: &str,
        consistency: Consistency,
    ) -> Result<Option<RevisionToken>, CfgError> {
        let q = ReadQuery::Get {
            key: INHERITS_KEY.to_string(),
        };
        match self.read(ns, q, consistency, None).await? {
            ClientResponse::Value { token, .. } => Ok(Some(token)),
            other => Err(unexpected(&other)),
        }
    }

    async fn scan(
        &self,
        ns: &str,
        prefix: &str,
        as_of: AsOf,
        token: Option<RevisionToken>,
    ) -> Result<(Vec<KeyValue>, u64, RevisionToken), CfgError> {
        let q = ReadQuery::Scan {
            prefix: prefix.to_string(),
            as_of,
        };
        match self.read(ns, q, Consistency::Stale, token).await? {
            ClientResponse::Scan {
                kvs,
                ns_revision,
                token,
            } => Ok((kvs, ns_revision, token)),
            other => Err(unexpected(&other)),
        }
    }

    /// Load one environment: its `$` keys and its user keys under `path`.
    async fn load_layer(
        &self,
        ns: &str,
        path: &str,
        as_of: AsOf,
        consistency: ReadConsistency,
    ) -> Result<Layer, CfgError> {
        let token = match consistency {
            ReadConsistency::Linearizable => match self.probe(ns).await {
                // The namespace may be new and this region's catalog behind:
                // catch up with the catalog once, then ask again.
                Err(e) if e.reason == Reason::UnknownNamespace => self.probe_new(ns, e).await?,
                other => other?,
            },
            // The core decides: served here if this replica is fresh enough,
            // else at the home leader; its token bounds the scans below.
            ReadConsistency::Bounded { staleness_ms } => {
                let c = Consistency::Bounded {
                    staleness_us: staleness_ms.saturating_mul(1000),
                };
                self.probe_at(ns, c).await?
            }
            ReadConsistency::Stale => None,
        };
        let (meta_kvs, ns_revision, t) = self.scan(ns, "$", as_of, token).await?;
        let mut layer = Layer {
            ns: ns.to_string(),
            ns_revision,
            token: Some(t),
            ..Layer::default()
        };
        for kv in meta_kvs {
            if let Some(v) = decode(&kv) {
                layer.meta.insert(kv.key.clone(), v);
            }
        }
        self.extend_layer(&mut layer, path, as_of, token).await?;
        Ok(layer)
    }

    async fn extend_layer(
        &self,
        layer: &mut Layer,
        path: &str,
        as_of: AsOf,
        token: Option<RevisionToken>,
    ) -> Result<(), CfgError> {
        let (kvs, _, _) = self.scan(&layer.ns, path, as_of, token).await?;
        for kv in kvs {
            if kv.key.starts_with('$') || !tree::is_under(&kv.key, path) {
                continue;
            }
            if let Some(v) = decode(&kv) {
                // A stored secret: the next version keeps its rotation
                // policy (an expiry belongs to one version).
                if kv.value.as_deref().is_some_and(crate::secrets::is_envelope) {
                    let attrs = kv.value.as_deref().and_then(secrets::stored_attrs);
                    let spec = SecretSpec {
                        expires_ms: 0,
                        rotate_every_ms: attrs.map_or(0, |a| a.rotate_ms),
                    };
                    layer.secrets.insert(kv.key.clone(), spec);
                }
                layer.leaves.insert(kv.key.clone(), v);
            }
            layer.kvs.insert(kv.key.clone(), kv);
        }
        Ok(())
    }

    /// An environment and the ones it inherits from, itself first.
    async fn load_chain(
        &self,
        ns: &str,
        path: &str,
        opts: &ReadOpts,
    ) -> Result<Vec<Layer>, CfgError> {
        let mut first = self
            .load_layer(ns, path, opts.as_of, opts.consistency)
            .await?;
        first.restrict(&opts.access, ns);
        let mut lineage = layers::Lineage::new(ns);
        let mut chain = vec![first];
        if !opts.raw {
            while let Some(parent) = chain.last().and_then(Layer::parent) {
                lineage.step(&parent)?;
                // Inherited layers are read as of the same time; a revision belongs
                // to the child's group, so parents are read at their latest state.
                let as_of = match opts.as_of {
                    AsOf::Revision(_) => AsOf::Latest,
                    other => other,
                };
                let mut layer = self
                    .load_layer(&parent, path, as_of, opts.consistency)
                    .await?;
                layer.restrict(&opts.access, ns);
                chain.push(layer);
            }
        }
        if opts.reveal {
            self.reveal_chain(&mut chain, opts)?;
        }
        Ok(chain)
    }

    /// Render `paths` of an environment from its loaded layers, loading
    /// referenced keys outside them on demand.
    async fn render_paths(
        &self,
        chain: &mut [Layer],
        paths: &[String],
        opts: &ReadOpts,
    ) -> Result<Vec<Option<Value>>, CfgError> {
        let mut loaded: BTreeSet<String> = BTreeSet::new();
        for _ in 0..RENDER_LOADS_MAX {
            let (leaves, vars) = effective(chain);
            let secret_keys = effective_secrets(chain, &leaves);
            let mut r = Renderer::new(&leaves, &vars, false).with_secrets(&secret_keys);
            let mut out = Vec::with_capacity(paths.len());
            let mut need = None;
            for p in paths {
                match r.subtree(p) {
                    Ok(v) => out.push(v),
                    Err(RenderError::Need(k)) => {
                        need = Some(k);
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let Some(k) = need else {
                return Ok(out);
            };
            if !loaded.insert(k.clone()) {
                return Err(CfgError::new(
                    Reason::MissingReference,
                    format!("reference to missing key {k:?}"),
                ));
            }
            // A reference to a key the caller may not read resolves as
            // if the key were absent: its value never leaks through it.
            let view_ns = chain.first().map(|l| l.ns.clone()).unwrap_or_default();
            for (i, layer) in chain.iter_mut().enumerate() {
                let as_of = match opts.as_of {
                    AsOf::Revision(_) if i > 0 => AsOf::Latest,
                    other => other,
                };
                let token = layer.token;
                self.extend_layer(layer, &k, as_of, token).await?;
                layer.restrict(&opts.access, &view_ns);
            }
            if opts.reveal {
                self.reveal_chain(chain, opts)?;
            }
        }
        Err(CfgError::new(
            Reason::ReferenceCycle,
            format!("more than {RENDER_LOADS_MAX} distinct references followed"),
        ))
    }
}

/// Effective leaves and variables of a chain (child first in `chain`).
fn effective(chain: &[Layer]) -> (BTreeMap<String, Value>, Map<String, Value>) {
    let leaves = render::overlay(chain.iter().rev().map(|l| l.leaves.clone()).collect());
    let mut vars = Map::new();
    for l in chain.iter().rev() {
        if let Some(Value::Object(v)) = l.meta.get(VARS_KEY) {
            for (k, x) in v {
                vars.insert(k.clone(), x.clone());
            }
        }
    }
    (leaves, vars)
}

/// Which of a chain's effective `leaves` are secrets (judged by the layer
/// each effective leaf comes from, child first).
fn effective_secrets(chain: &[Layer], leaves: &BTreeMap<String, Value>) -> BTreeSet<String> {
    leaves
        .keys()
        .filter(|k| {
            chain
                .iter()
                .find(|l| l.leaves.contains_key(*k))
                .is_some_and(|l| l.secrets.contains_key(*k))
        })
        .cloned()
        .collect()
}

/// Schemas in force in a chain: a child's schema at a prefix replaces its parent's.
fn effective_schemas(chain: &[Layer]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for l in chain.iter().rev() {
        for (k, v) in &l.meta {
            if let Some(p) = schema_prefix_of(k) {
                out.insert(p.to_string(), v.clone());
            }
        }
    }
    out
}

fn unexpected(resp: &ClientResponse) -> CfgError {
    CfgError::new(
        Reason::Internal,
        format!("unexpected response from the core: {resp:?}"),
    )
}
