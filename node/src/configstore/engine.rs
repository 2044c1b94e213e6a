//! The configuration engine: every configuration operation as a sequence of
//! core requests. Reads load the layers of an environment (itself, then the
//! environments it inherits from) and render them. Writes are optimistic
//! read-validate-write cycles: read the namespace, apply the operations to a
//! copy, render and validate every environment the change affects, then
//! commit with a compare on the namespace's revision (anything committed in
//! between makes the core refuse, and the cycle runs again). Idempotency keys
//! become the core's request ids, so a retried write, in any region, returns
//! the first result and never writes twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use meridian_core::node::CATALOG_NS;
use meridian_core::rng::fnv1a;
use meridian_core::types::{
    AsOf, ChangeMeta, ClientRequest, ClientResponse, Compare, Consistency, KeyValue, NsSettings,
    ReadQuery, ReplicationMode, RevisionToken, WriteOp,
};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::diff;
use super::error::CfgError;
use super::render::{self, RenderError, Renderer};
use super::tree::{self, INHERITS_KEY, SCHEMA_KEY_PREFIX, VARS_KEY};
use crate::driver::{Input, ReplyTo};

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
    inputs: mpsc::Sender<Input>,
    next_req: Arc<AtomicU64>,
    regions: Arc<Vec<String>>,
    limits: Limits,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Sees every write acknowledged before the read began (a linearizable
    /// probe at the home leader, then a local read once that point applied).
    #[default]
    Linearizable,
    /// This region's state, whatever it is.
    Stale,
}

#[derive(Clone, Debug, Default)]
pub struct ReadOpts {
    /// The namespace's own stored values: no inheritance, no rendering.
    pub raw: bool,
    pub as_of: AsOf,
    pub consistency: ReadConsistency,
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
#[derive(Clone, Debug)]
pub enum Op {
    Put {
        key: String,
        value: Value,
        if_version: Option<u64>,
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
    /// Internal (rollback): make a stored key hold this, whatever it holds.
    Restore {
        key: String,
        value: Option<Value>,
    },
}

#[derive(Clone, Debug, Default)]
pub struct WriteOpts {
    pub author: String,
    pub message: String,
    pub idempotency_key: Option<String>,
    pub dry_run: bool,
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
    /// What the write changes in the namespace's raw configuration.
    pub diff: Vec<diff::Change>,
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
    ns_revision: u64,
    token: Option<RevisionToken>,
}

impl Layer {
    fn parent(&self) -> Option<String> {
        self.meta
            .get(INHERITS_KEY)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    }
}

/// Decode a stored value: JSON, or (bytes written through the raw KV API)
/// the text as a JSON string.
fn decode(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn entry(kv: &KeyValue) -> Entry {
    Entry {
        key: kv.key.clone(),
        value: kv.value.as_deref().map(decode),
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
        inputs: mpsc::Sender<Input>,
        next_req: Arc<AtomicU64>,
        regions: Vec<String>,
        limits: Limits,
    ) -> ConfigStore {
        ConfigStore {
            inputs,
            next_req,
            regions: Arc::new(regions),
            limits,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// One core request. A namespace that is moving home is waited out (the
    /// refused request did not apply, so it is safe to repeat) for a bounded
    /// time: a move looks like a short stall, not an error.
    async fn call(&self, request: ClientRequest) -> Result<ClientResponse, CfgError> {
        let start = std::time::Instant::now();
        loop {
            match self.call_once(request.clone()).await {
                Err(e)
                    if e.reason == "NAMESPACE_MOVING"
                        && start.elapsed().as_millis() < u128::from(MOVE_WAIT_MS_MAX) =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    async fn call_once(&self, request: ClientRequest) -> Result<ClientResponse, CfgError> {
        let (tx, rx) = oneshot::channel();
        let input = Input::Client {
            req: self.next_req.fetch_add(1, Ordering::Relaxed),
            request,
            reply: ReplyTo::Once(tx),
        };
        let stopping = || CfgError::new("SHUTTING_DOWN", "the node is stopping");
        self.inputs.send(input).await.map_err(|_| stopping())?;
        match rx.await {
            Ok(ClientResponse::Error(code)) => Err(CfgError::core(code)),
            Ok(r) => Ok(r),
            Err(_) => Err(stopping()),
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
        let q = ReadQuery::Get {
            key: INHERITS_KEY.to_string(),
        };
        match self.read(ns, q, Consistency::Linearizable, None).await? {
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
                Err(e) if e.reason == "UNKNOWN_NAMESPACE" => self.probe_new(ns, e).await?,
                other => other?,
            },
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
            if let Some(v) = kv.value.as_deref() {
                layer.meta.insert(kv.key.clone(), decode(v));
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
            if let Some(v) = kv.value.as_deref() {
                layer.leaves.insert(kv.key.clone(), decode(v));
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
        let first = self
            .load_layer(ns, path, opts.as_of, opts.consistency)
            .await?;
        let mut names = vec![ns.to_string()];
        let mut chain = vec![first];
        if opts.raw {
            return Ok(chain);
        }
        while let Some(parent) = chain.last().and_then(Layer::parent) {
            if names.contains(&parent) {
                names.push(parent);
                return Err(CfgError::new(
                    "REFERENCE_CYCLE",
                    format!("inheritance cycle: {}", names.join(" -> ")),
                ));
            }
            if names.len() > render::INHERIT_DEPTH_MAX {
                return Err(CfgError::new(
                    "REFERENCE_CYCLE",
                    format!(
                        "inheritance deeper than {} levels",
                        render::INHERIT_DEPTH_MAX
                    ),
                ));
            }
            // Inherited layers are read as of the same time; a revision belongs
            // to the child's group, so parents are read at their latest state.
            let as_of = match opts.as_of {
                AsOf::Revision(_) => AsOf::Latest,
                other => other,
            };
            let layer = self
                .load_layer(&parent, path, as_of, opts.consistency)
                .await?;
            names.push(parent);
            chain.push(layer);
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
            let mut r = Renderer::new(&leaves, &vars, false);
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
                    "MISSING_REFERENCE",
                    format!("reference to missing key {k:?}"),
                ));
            }
            for (i, layer) in chain.iter_mut().enumerate() {
                let as_of = match opts.as_of {
                    AsOf::Revision(_) if i > 0 => AsOf::Latest,
                    other => other,
                };
                let token = layer.token;
                self.extend_layer(layer, &k, as_of, token).await?;
            }
        }
        Err(CfgError::new(
            "REFERENCE_CYCLE",
            format!("more than {RENDER_LOADS_MAX} distinct references followed"),
        ))
    }

    // ----- reads -----

    /// The value at `path` (a leaf or a whole subtree as one object).
    pub async fn get(
        &self,
        ns: &str,
        path: &str,
        opts: &ReadOpts,
        default: Option<Value>,
    ) -> Result<GetResult, CfgError> {
        tree::check_path(path).map_err(|m| CfgError::new("INVALID_KEY", m))?;
        let mut chain = self.load_chain(ns, path, opts).await?;
        let token = token_str(chain[0].token);
        let mut value = if opts.raw {
            tree::assemble(&chain[0].leaves, path)
        } else {
            self.render_paths(&mut chain, &[path.to_string()], opts)
                .await?
                .pop()
                .flatten()
        };
        if value.is_none() && path.is_empty() {
            value = Some(Value::Object(Map::new()));
        }
        Ok(match (value, default) {
            (Some(v), _) => GetResult {
                path: path.to_string(),
                found: true,
                defaulted: false,
                value: v,
                token,
            },
            (None, Some(d)) => GetResult {
                path: path.to_string(),
                found: false,
                defaulted: true,
                value: d,
                token,
            },
            (None, None) => {
                return Err(CfgError::new(
                    "NOT_FOUND",
                    format!("nothing is stored at {path:?} in {ns}"),
                ))
            }
        })
    }

    /// Several paths at once, from one read of the environment.
    pub async fn bulk_get(
        &self,
        ns: &str,
        paths: &[String],
        defaults: &Map<String, Value>,
        opts: &ReadOpts,
    ) -> Result<(BTreeMap<String, Value>, Vec<String>, String), CfgError> {
        if paths.is_empty() || paths.len() > LIST_LIMIT_MAX {
            return Err(CfgError::invalid(format!(
                "ask for 1 to {LIST_LIMIT_MAX} keys"
            )));
        }
        for p in paths {
            tree::check_key(p).map_err(|m| CfgError::new("INVALID_KEY", m))?;
        }
        let mut chain = self.load_chain(ns, "", opts).await?;
        let token = token_str(chain[0].token);
        let values = if opts.raw {
            paths
                .iter()
                .map(|p| tree::assemble(&chain[0].leaves, p))
                .collect()
        } else {
            self.render_paths(&mut chain, paths, opts).await?
        };
        let mut found = BTreeMap::new();
        let mut missing = Vec::new();
        for (p, v) in paths.iter().zip(values) {
            match v.or_else(|| defaults.get(p).cloned()) {
                Some(v) => {
                    found.insert(p.clone(), v);
                }
                None => missing.push(p.clone()),
            }
        }
        Ok((found, missing, token))
    }

    /// Leaves under `prefix` whose key matches `glob` and whose value contains
    /// `search`, in key order, a page at a time.
    #[allow(clippy::too_many_arguments)]
    pub async fn list(
        &self,
        ns: &str,
        prefix: &str,
        glob: &str,
        search: &str,
        limit: usize,
        page_token: &str,
        opts: &ReadOpts,
    ) -> Result<ListResult, CfgError> {
        tree::check_path(prefix).map_err(|m| CfgError::new("INVALID_KEY", m))?;
        let matcher = if glob.is_empty() {
            None
        } else {
            Some(tree::glob(glob).map_err(CfgError::invalid)?)
        };
        let limit = limit.clamp(1, LIST_LIMIT_MAX);
        let mut chain = self.load_chain(ns, prefix, opts).await?;
        let token = token_str(chain[0].token);
        let (leaves, _) = effective(&chain);
        let keys: Vec<String> = leaves
            .keys()
            .filter(|k| k.as_str() > page_token)
            .filter(|k| matcher.as_ref().is_none_or(|m| tree::glob_matches(m, k)))
            .cloned()
            .collect();
        let mut entries = Vec::new();
        let mut next = String::new();
        let mut rendered = Vec::new();
        if !opts.raw && !keys.is_empty() {
            rendered = self.render_paths(&mut chain, &keys, opts).await?;
        }
        for (i, k) in keys.iter().enumerate() {
            let value = if opts.raw {
                leaves.get(k).cloned()
            } else {
                rendered.get(i).cloned().flatten()
            };
            let Some(value) = value else { continue };
            if !search.is_empty() && !value.to_string().contains(search) {
                continue;
            }
            if entries.len() == limit {
                next = entries
                    .last()
                    .map(|e: &Entry| e.key.clone())
                    .unwrap_or_default();
                break;
            }
            let owner = chain.iter().find(|l| l.kvs.contains_key(k));
            let mut e = match owner.and_then(|l| l.kvs.get(k)) {
                Some(kv) => entry(kv),
                None => continue,
            };
            if let Some(l) = owner {
                if l.ns != ns {
                    e.inherited_from = Some(l.ns.clone());
                }
            }
            e.value = Some(value);
            entries.push(e);
        }
        Ok(ListResult {
            entries,
            next_page_token: next,
            token,
        })
    }

    /// Every retained version of a key, oldest first.
    pub async fn history(&self, ns: &str, key: &str) -> Result<Vec<Entry>, CfgError> {
        tree::check_key(key).map_err(|m| CfgError::new("INVALID_KEY", m))?;
        let token = self.probe(ns).await?;
        let q = ReadQuery::History {
            key: key.to_string(),
        };
        match self.read(ns, q, Consistency::Stale, token).await? {
            ClientResponse::History { versions, .. } => {
                if versions.is_empty() || versions.iter().all(|v| v.version == 0) {
                    return Err(CfgError::new(
                        "NOT_FOUND",
                        format!("{key:?} was never written in {ns}"),
                    ));
                }
                Ok(versions.iter().map(entry).collect())
            }
            other => Err(unexpected(&other)),
        }
    }

    /// The schemas attached in this namespace, by prefix.
    pub async fn schemas(&self, ns: &str) -> Result<BTreeMap<String, Value>, CfgError> {
        let l = self
            .load_layer(ns, "$", AsOf::Latest, ReadConsistency::Linearizable)
            .await?;
        Ok(l.meta
            .iter()
            .filter_map(|(k, v)| schema_prefix_of(k).map(|p| (p.to_string(), v.clone())))
            .collect())
    }

    /// The parent environment and variables of a namespace.
    pub async fn template(
        &self,
        ns: &str,
    ) -> Result<(Option<String>, Option<Map<String, Value>>), CfgError> {
        let l = self
            .load_layer(ns, "$", AsOf::Latest, ReadConsistency::Linearizable)
            .await?;
        let vars = l.meta.get(VARS_KEY).and_then(Value::as_object).cloned();
        Ok((l.parent(), vars))
    }

    // ----- diffs -----

    pub async fn diff_versions(
        &self,
        ns: &str,
        key: &str,
        from_version: u64,
        to_version: u64,
    ) -> Result<Vec<diff::Change>, CfgError> {
        let h = self.history(ns, key).await?;
        let pick = |v: u64| -> Result<Option<Value>, CfgError> {
            if v == 0 {
                return Ok(None);
            }
            h.iter()
                .find(|e| e.version == v)
                .map(|e| e.value.clone())
                .ok_or_else(|| {
                    CfgError::new(
                        "HISTORY_COMPACTED",
                        format!("version {v} of {key:?} is not retained (or never existed)"),
                    )
                })
        };
        let (a, b) = (pick(from_version)?, pick(to_version)?);
        Ok(diff::diff(a.as_ref(), b.as_ref()))
    }

    pub async fn diff_revisions(
        &self,
        ns: &str,
        path: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<diff::Change>, CfgError> {
        tree::check_path(path).map_err(|m| CfgError::new("INVALID_KEY", m))?;
        let read = |r: u64| ReadOpts {
            raw: true,
            as_of: AsOf::Revision(r),
            consistency: ReadConsistency::Linearizable,
        };
        let a = self.load_layer(ns, path, read(from).as_of, ReadConsistency::Linearizable);
        let a = a.await?;
        let b = self
            .load_layer(ns, path, read(to).as_of, ReadConsistency::Linearizable)
            .await?;
        let va = tree::assemble(&a.leaves, path);
        let vb = tree::assemble(&b.leaves, path);
        Ok(diff::diff(va.as_ref(), vb.as_ref()))
    }

    /// The effective (or raw) configuration of two environments compared.
    pub async fn diff_envs(
        &self,
        from_ns: &str,
        to_ns: &str,
        path: &str,
        raw: bool,
    ) -> Result<Vec<diff::Change>, CfgError> {
        let opts = ReadOpts {
            raw,
            ..ReadOpts::default()
        };
        let a = self.get(from_ns, path, &opts, Some(Value::Null)).await?;
        let b = self.get(to_ns, path, &opts, Some(Value::Null)).await?;
        let va = a.found.then_some(a.value);
        let vb = b.found.then_some(b.value);
        Ok(diff::diff(va.as_ref(), vb.as_ref()))
    }

    // ----- namespaces -----

    pub async fn create_namespace(
        &self,
        project: &str,
        environment: &str,
        spec: &CreateNs,
    ) -> Result<NamespaceInfo, CfgError> {
        check_name("project", project)?;
        check_name("environment", environment)?;
        let home = self
            .regions
            .iter()
            .position(|r| *r == spec.home_region)
            .ok_or_else(|| {
                CfgError::invalid(format!(
                    "home_region {:?} is not a region of this cluster ({})",
                    spec.home_region,
                    self.regions.join(", ")
                ))
            })?;
        let mode = match spec.mode.as_str() {
            "" | "quorum" => ReplicationMode::Quorum,
            "async" => {
                if spec.rpo_budget_ms == 0 {
                    return Err(CfgError::invalid("async mode needs rpo_budget_ms above 0"));
                }
                ReplicationMode::Async {
                    rpo_budget_us: spec.rpo_budget_ms.saturating_mul(1000),
                }
            }
            other => {
                return Err(CfgError::invalid(format!(
                    "mode {other:?}: use \"quorum\" or \"async\""
                )))
            }
        };
        let settings = NsSettings {
            home: home as u8,
            mode,
            history_versions_max: spec.history_versions_max,
            history_age_ms_max: spec.history_age_ms_max,
            moving_to: None,
            adopt_revision: 0,
        };
        let ns = ns_name(project, environment);
        let resp = self
            .call(ClientRequest::CreateNamespace {
                ns: ns.clone(),
                settings: settings.clone(),
                request_id: rand::random::<u64>() | 1,
            })
            .await?;
        match resp {
            ClientResponse::Written { token, .. } => {
                // Wait until this region applied the catalog entry, so the
                // namespace is usable here as soon as we answer.
                self.wait_applied(CATALOG_NS, token).await?;
                Ok(self.info(&ns, &settings))
            }
            ClientResponse::Conflict { .. } => Err(CfgError::new(
                "NAMESPACE_EXISTS",
                format!("namespace {ns} already exists"),
            )),
            other => Err(unexpected(&other)),
        }
    }

    fn info(&self, ns: &str, s: &NsSettings) -> NamespaceInfo {
        let (project, environment) = ns.split_once('/').unwrap_or((ns, ""));
        let (mode, rpo) = match s.mode {
            ReplicationMode::Quorum => ("quorum", None),
            ReplicationMode::Async { rpo_budget_us } => ("async", Some(rpo_budget_us / 1000)),
        };
        NamespaceInfo {
            name: ns.to_string(),
            project: project.to_string(),
            environment: environment.to_string(),
            home_region: self
                .regions
                .get(s.home as usize)
                .cloned()
                .unwrap_or_default(),
            mode: mode.to_string(),
            rpo_budget_ms: rpo,
            history_versions_max: s.history_versions_max,
            history_age_ms_max: s.history_age_ms_max,
            moving_to_region: s
                .moving_to
                .and_then(|g| self.regions.get(g as usize).cloned()),
        }
    }

    /// The catalog entry of a namespace, read after catching up with the
    /// catalog (so it is at least as new as any change made before the call).
    async fn catalog_entry(&self, ns: &str) -> Result<(NsSettings, u64), CfgError> {
        self.sync_catalog().await?;
        let q = ReadQuery::Get {
            key: ns.to_string(),
        };
        match self.read(CATALOG_NS, q, Consistency::Stale, None).await? {
            ClientResponse::Value { kv, .. } => kv
                .value
                .as_deref()
                .and_then(NsSettings::decode)
                .map(|s| (s, kv.version))
                .ok_or_else(|| {
                    CfgError::new(
                        "UNKNOWN_NAMESPACE",
                        format!("namespace {ns} does not exist"),
                    )
                }),
            other => Err(unexpected(&other)),
        }
    }

    /// Move a namespace's home region, online, and wait until the move is
    /// complete: reads go on throughout; writes stall (they are retried, see
    /// `call`) while the old home is frozen and the new one copies the data.
    pub async fn move_namespace(
        &self,
        project: &str,
        environment: &str,
        to_region: &str,
    ) -> Result<NamespaceInfo, CfgError> {
        let ns = ns_name(project, environment);
        let to = self
            .regions
            .iter()
            .position(|r| r == to_region)
            .ok_or_else(|| {
                CfgError::invalid(format!(
                    "region {to_region:?} is not a region of this cluster ({})",
                    self.regions.join(", ")
                ))
            })? as u8;
        let start = std::time::Instant::now();
        let deadline = std::time::Duration::from_millis(MOVE_DONE_WAIT_MS_MAX);
        // Start it: the core compares on the catalog entry it read, so retry
        // a conflict with a newer catalog.
        let mut attempts = 0;
        loop {
            let (settings, _) = self.catalog_entry(&ns).await?;
            if settings.home == to && settings.moving_to.is_none() {
                return Ok(self.info(&ns, &settings));
            }
            if settings.moving_to == Some(to) {
                break;
            }
            match self
                .call(ClientRequest::MoveNamespace {
                    ns: ns.clone(),
                    to,
                })
                .await
            {
                Ok(ClientResponse::Written { .. } | ClientResponse::Done) => break,
                Ok(ClientResponse::Conflict { .. }) if attempts < WRITE_ATTEMPTS_MAX => {
                    attempts += 1;
                }
                Ok(ClientResponse::Conflict { .. }) => {
                    return Err(CfgError::new(
                        "CONTENDED",
                        format!("the catalog entry of {ns} kept changing"),
                    ))
                }
                Ok(other) => return Err(unexpected(&other)),
                Err(e) if e.reason == "INVALID_REQUEST" => {
                    return Err(CfgError::invalid(format!(
                        "{ns} is defined in the configuration file; only namespaces created through the API move"
                    )))
                }
                Err(e) => return Err(e),
            }
        }
        loop {
            let (settings, _) = self.catalog_entry(&ns).await?;
            if settings.moving_to.is_none() {
                if settings.home != to {
                    // Another move started after ours and finished first.
                    return Err(CfgError::new(
                        "CONTENDED",
                        format!(
                            "{ns} moved to {} instead",
                            self.regions.get(settings.home as usize).map_or("?", |s| s)
                        ),
                    ));
                }
                return Ok(self.info(&ns, &settings));
            }
            if start.elapsed() > deadline {
                return Err(CfgError::new(
                    "TIMEOUT",
                    format!(
                        "the move of {ns} to {to_region} is still under way after {} s; it continues in the background",
                        MOVE_DONE_WAIT_MS_MAX / 1000
                    ),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Namespaces in the catalog whose name starts with `prefix`.
    pub async fn list_namespaces(&self, prefix: &str) -> Result<Vec<NamespaceInfo>, CfgError> {
        let q = ReadQuery::List {
            prefix: prefix.to_string(),
            start_after: String::new(),
            limit: PROJECT_ENVS_MAX,
        };
        let token = self.probe(CATALOG_NS).await?;
        match self.read(CATALOG_NS, q, Consistency::Stale, token).await? {
            ClientResponse::List { kvs, .. } => Ok(kvs
                .iter()
                .filter_map(|kv| {
                    let s = kv.value.as_deref().and_then(NsSettings::decode)?;
                    Some(self.info(&kv.key, &s))
                })
                .collect()),
            other => Err(unexpected(&other)),
        }
    }

    /// Probe a namespace that some region did not know: once this region has
    /// caught up with the catalog and knows it, the home leader (which may
    /// apply the catalog a moment later) is asked again for a bounded time.
    async fn probe_new(
        &self,
        ns: &str,
        first: CfgError,
    ) -> Result<Option<RevisionToken>, CfgError> {
        self.sync_catalog().await?;
        let q = ReadQuery::Get {
            key: ns.to_string(),
        };
        let known = match self.read(CATALOG_NS, q, Consistency::Stale, None).await? {
            ClientResponse::Value { kv, .. } => kv.value.is_some(),
            _ => false,
        };
        if !known {
            return Err(first);
        }
        let mut last = first;
        for _ in 0..CATALOG_WAIT_TRIES_MAX {
            match self.probe(ns).await {
                Err(e) if e.reason == "UNKNOWN_NAMESPACE" => last = e,
                other => return other,
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Err(last)
    }

    /// Wait until this region applied every catalog change made before now.
    async fn sync_catalog(&self) -> Result<(), CfgError> {
        if let Some(t) = self.probe(CATALOG_NS).await? {
            self.wait_applied(CATALOG_NS, t).await?;
        }
        Ok(())
    }

    async fn wait_applied(&self, ns: &str, token: RevisionToken) -> Result<(), CfgError> {
        let q = ReadQuery::Get {
            key: INHERITS_KEY.to_string(),
        };
        self.read(ns, q, Consistency::Stale, Some(token)).await?;
        Ok(())
    }

    // ----- writes -----

    /// Apply `ops` atomically (or, in a dry run, only check them).
    pub async fn write(
        &self,
        ns: &str,
        ops: Vec<Op>,
        opts: &WriteOpts,
    ) -> Result<WriteResult, CfgError> {
        if ops.is_empty() {
            return Err(CfgError::invalid("a write needs at least one operation"));
        }
        if ops.len() > self.limits.txn_ops_max {
            return Err(CfgError::new(
                "TOO_MANY_OPS",
                format!(
                    "{} operations; at most {} per write",
                    ops.len(),
                    self.limits.txn_ops_max
                ),
            ));
        }
        let request_id = match &opts.idempotency_key {
            Some(k) if k.is_empty() || k.len() > 256 => {
                return Err(CfgError::invalid("idempotency keys are 1-256 bytes"))
            }
            Some(k) => fnv1a(format!("{ns}\0{k}").as_bytes()) | 1,
            None => rand::random::<u64>() | 1,
        };
        if opts.idempotency_key.is_some() && !opts.dry_run {
            if let Some(first) = self.replay(ns, request_id).await? {
                return Ok(first);
            }
        }
        for _ in 0..WRITE_ATTEMPTS_MAX {
            let read = ReadOpts {
                raw: true,
                ..ReadOpts::default()
            };
            let layer = self
                .load_layer(ns, "", read.as_of, read.consistency)
                .await?;
            let mut work = layer.clone();
            for op in &ops {
                self.apply_op(&mut work, op).await?;
            }
            let (core_ops, changes) = self.core_ops(&layer, &work)?;
            let before = tree::assemble(&layer.leaves, "");
            let after = tree::assemble(&work.leaves, "");
            let raw_diff = diff::diff(before.as_ref(), after.as_ref());
            if core_ops.is_empty() {
                return Ok(WriteResult {
                    revision: layer.ns_revision,
                    token: token_str(layer.token),
                    changes: Vec::new(),
                    replayed: false,
                    dry_run: opts.dry_run,
                    diff: raw_diff,
                });
            }
            self.validate_affected(&work).await?;
            if opts.dry_run {
                return Ok(WriteResult {
                    revision: layer.ns_revision,
                    token: token_str(layer.token),
                    changes,
                    replayed: false,
                    dry_run: true,
                    diff: raw_diff,
                });
            }
            let resp = self
                .call(ClientRequest::Write {
                    ns: ns.to_string(),
                    request_id,
                    compares: Vec::new(),
                    ns_revision: Some(layer.ns_revision),
                    ops: core_ops,
                    meta: ChangeMeta {
                        author: opts.author.clone(),
                        message: opts.message.clone(),
                        time_ms: now_ms(),
                    },
                })
                .await?;
            match resp {
                ClientResponse::Written { versions, token } => {
                    self.wait_applied(ns, token).await?;
                    let changes = changes
                        .into_iter()
                        .zip(versions)
                        .map(|(c, v)| KeyChange { version: v, ..c })
                        .collect();
                    return Ok(WriteResult {
                        revision: token.revision,
                        token: token.to_string(),
                        changes,
                        replayed: false,
                        dry_run: false,
                        diff: raw_diff,
                    });
                }
                // Something in the namespace changed since the read: again.
                ClientResponse::Conflict { .. } => continue,
                other => return Err(unexpected(&other)),
            }
        }
        Err(CfgError::new(
            "CONTENDED",
            format!("{ns} changed under {WRITE_ATTEMPTS_MAX} attempts in a row; retry"),
        ))
    }

    /// If a write with this request id already applied, its result.
    async fn replay(&self, ns: &str, request_id: u64) -> Result<Option<WriteResult>, CfgError> {
        let resp = self
            .call(ClientRequest::Write {
                ns: ns.to_string(),
                request_id,
                compares: vec![Compare {
                    key: PROBE_KEY.to_string(),
                    version: u64::MAX,
                }],
                ns_revision: None,
                ops: vec![WriteOp::Delete {
                    key: PROBE_KEY.to_string(),
                }],
                meta: ChangeMeta::default(),
            })
            .await?;
        match resp {
            ClientResponse::Written { token, versions } => {
                self.wait_applied(ns, token).await?;
                Ok(Some(WriteResult {
                    revision: token.revision,
                    token: token.to_string(),
                    changes: versions
                        .into_iter()
                        .map(|v| KeyChange {
                            key: String::new(),
                            op: "put",
                            version: v,
                        })
                        .collect(),
                    replayed: true,
                    dry_run: false,
                    diff: Vec::new(),
                }))
            }
            ClientResponse::Conflict { .. } => Ok(None),
            other => Err(unexpected(&other)),
        }
    }

    fn check_value(&self, key: &str, v: &Value) -> Result<(), CfgError> {
        let n = v.to_string().len();
        if n > self.limits.value_bytes_max {
            return Err(CfgError::new(
                "VALUE_TOO_LARGE",
                format!(
                    "{key}: value is {n} bytes; at most {} bytes",
                    self.limits.value_bytes_max
                ),
            ));
        }
        if key.len() > self.limits.key_bytes_max {
            return Err(CfgError::new(
                "KEY_TOO_LONG",
                format!(
                    "key is {} bytes; at most {}",
                    key.len(),
                    self.limits.key_bytes_max
                ),
            ));
        }
        Ok(())
    }

    fn check_version(layer: &Layer, key: &str, want: Option<u64>) -> Result<(), CfgError> {
        let Some(want) = want else { return Ok(()) };
        let have = layer
            .kvs
            .get(key)
            .filter(|kv| kv.value.is_some())
            .map_or(0, |kv| kv.version);
        if have != want {
            return Err(CfgError::new(
                "CAS_CONFLICT",
                format!("{key} is at version {have}, not {want}; nothing was written"),
            )
            .with_details(serde_json::json!({"key": key, "version": have})));
        }
        Ok(())
    }

    /// Apply one operation to the working copy of a namespace.
    async fn apply_op(&self, work: &mut Layer, op: &Op) -> Result<(), CfgError> {
        let key_err = |m: String| CfgError::new("INVALID_KEY", m);
        match op {
            Op::Put {
                key,
                value,
                if_version,
            } => {
                tree::check_key(key).map_err(key_err)?;
                self.check_value(key, value)?;
                Self::check_version(work, key, *if_version)?;
                if let Some(a) = leaf_ancestor(work, key) {
                    return Err(CfgError::new(
                        "PATH_CONFLICT",
                        format!("{a} holds a value, so {key} cannot be a key below it; change {a} instead (or merge into it)"),
                    ));
                }
                let below = tree::child_prefix(key);
                if work.leaves.keys().any(|k| k.starts_with(&below)) {
                    return Err(CfgError::new(
                        "PATH_CONFLICT",
                        format!("{key} has keys below it; use a merge patch to change the subtree, or delete it first"),
                    ));
                }
                work.leaves.insert(key.clone(), value.clone());
            }
            Op::Delete {
                key,
                recursive,
                if_version,
            } => {
                tree::check_key(key).map_err(key_err)?;
                Self::check_version(work, key, *if_version)?;
                let below = tree::child_prefix(key);
                let mut doomed: Vec<String> = Vec::new();
                if work.leaves.contains_key(key) {
                    doomed.push(key.clone());
                }
                if *recursive {
                    doomed.extend(
                        work.leaves
                            .keys()
                            .filter(|k| k.starts_with(&below))
                            .cloned(),
                    );
                }
                if doomed.is_empty() {
                    let hint = if !*recursive && work.leaves.keys().any(|k| k.starts_with(&below)) {
                        " (it is a subtree: delete recursively)"
                    } else {
                        ""
                    };
                    return Err(CfgError::new(
                        "NOT_FOUND",
                        format!("nothing is stored at {key}{hint}"),
                    ));
                }
                for k in doomed {
                    work.leaves.remove(&k);
                }
            }
            Op::Merge {
                path,
                patch,
                if_version,
            } => {
                tree::check_path(path).map_err(key_err)?;
                if !path.is_empty() {
                    Self::check_version(work, path, *if_version)?;
                }
                let mut doc = tree::assemble(&work.leaves, path).unwrap_or(Value::Null);
                json_patch::merge(&mut doc, patch);
                self.replace_subtree(work, path, &doc)?;
            }
            Op::Patch { path, patch } => {
                tree::check_path(path).map_err(key_err)?;
                let ops: json_patch::Patch =
                    serde_json::from_value(patch.clone()).map_err(|e| {
                        CfgError::new("BAD_PATCH", format!("not an RFC 6902 JSON patch: {e}"))
                    })?;
                let mut doc =
                    tree::assemble(&work.leaves, path).unwrap_or_else(|| Value::Object(Map::new()));
                json_patch::patch(&mut doc, &ops).map_err(|e| {
                    let reason = if matches!(e.kind, json_patch::PatchErrorKind::TestFailed) {
                        "PATCH_TEST_FAILED"
                    } else {
                        "BAD_PATCH"
                    };
                    CfgError::new(reason, format!("patch failed: {e}"))
                })?;
                self.replace_subtree(work, path, &doc)?;
            }
            Op::SetSchema { prefix, schema } => {
                tree::check_path(prefix).map_err(key_err)?;
                if let Err(e) = jsonschema::draft202012::new(schema) {
                    return Err(CfgError::new(
                        "BAD_SCHEMA",
                        format!("not a valid draft 2020-12 schema: {e}"),
                    ));
                }
                let key = format!("{SCHEMA_KEY_PREFIX}{prefix}");
                self.check_value(&key, schema)?;
                work.meta.insert(key, schema.clone());
            }
            Op::DeleteSchema { prefix } => {
                let key = format!("{SCHEMA_KEY_PREFIX}{prefix}");
                if work.meta.remove(&key).is_none() {
                    return Err(CfgError::new(
                        "NOT_FOUND",
                        format!("no schema is attached at {prefix:?}"),
                    ));
                }
            }
            Op::SetTemplate { inherits, vars } => {
                if let Some(vars) = vars {
                    self.check_value(VARS_KEY, &Value::Object(vars.clone()))?;
                    if vars.is_empty() {
                        work.meta.remove(VARS_KEY);
                    } else {
                        work.meta
                            .insert(VARS_KEY.to_string(), Value::Object(vars.clone()));
                    }
                }
                match inherits {
                    None => {}
                    Some(None) => {
                        work.meta.remove(INHERITS_KEY);
                    }
                    Some(Some(parent)) => {
                        let parent = self.resolve_env(&work.ns, parent)?;
                        self.check_no_cycle(&work.ns, &parent).await?;
                        work.meta
                            .insert(INHERITS_KEY.to_string(), Value::String(parent));
                    }
                }
            }
            Op::Restore { key, value } => match value {
                Some(v) if key.starts_with('$') => {
                    work.meta.insert(key.clone(), v.clone());
                }
                Some(v) => {
                    work.leaves.insert(key.clone(), v.clone());
                }
                None => {
                    work.leaves.remove(key);
                    work.meta.remove(key);
                }
            },
        }
        Ok(())
    }

    /// A parent given as an environment of the same project, or as a full
    /// `project/environment` name.
    fn resolve_env(&self, ns: &str, parent: &str) -> Result<String, CfgError> {
        let full = if parent.contains('/') {
            parent.to_string()
        } else {
            let project = ns.split_once('/').map_or(ns, |(p, _)| p);
            ns_name(project, parent)
        };
        if full == ns {
            return Err(CfgError::new(
                "REFERENCE_CYCLE",
                format!("{ns} cannot inherit from itself"),
            ));
        }
        Ok(full)
    }

    async fn check_no_cycle(&self, ns: &str, parent: &str) -> Result<(), CfgError> {
        let mut chain = vec![ns.to_string(), parent.to_string()];
        let mut cur = parent.to_string();
        for _ in 0..=render::INHERIT_DEPTH_MAX {
            let layer = self
                .load_layer(&cur, "$", AsOf::Latest, ReadConsistency::Linearizable)
                .await
                .map_err(|e| {
                    if e.reason == "UNKNOWN_NAMESPACE" {
                        CfgError::new(
                            "UNKNOWN_NAMESPACE",
                            format!("cannot inherit from {cur}: no such namespace"),
                        )
                    } else {
                        e
                    }
                })?;
            match layer.parent() {
                None => return Ok(()),
                Some(p) if p == ns => {
                    chain.push(p);
                    return Err(CfgError::new(
                        "REFERENCE_CYCLE",
                        format!("inheritance cycle: {}", chain.join(" -> ")),
                    ));
                }
                Some(p) => {
                    chain.push(p.clone());
                    cur = p;
                }
            }
        }
        Err(CfgError::new(
            "REFERENCE_CYCLE",
            format!(
                "inheritance deeper than {} levels",
                render::INHERIT_DEPTH_MAX
            ),
        ))
    }

    /// Replace the subtree at `path` with `doc`, keeping leaf boundaries.
    fn replace_subtree(&self, work: &mut Layer, path: &str, doc: &Value) -> Result<(), CfgError> {
        let existing: BTreeMap<String, Value> = work
            .leaves
            .iter()
            .filter(|(k, _)| tree::is_under(k, path))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(a) = leaf_ancestor(work, path) {
            return Err(CfgError::new(
                "PATH_CONFLICT",
                format!("{a} holds a value; patch {a} instead"),
            ));
        }
        let new = if doc.is_null() && !path.is_empty() {
            BTreeMap::new()
        } else {
            tree::decompose(doc, path, &existing).map_err(|m| CfgError::new("BAD_PATCH", m))?
        };
        for k in existing.keys() {
            work.leaves.remove(k);
        }
        for (k, v) in new {
            self.check_value(&k, &v)?;
            work.leaves.insert(k, v);
        }
        Ok(())
    }

    /// The core operations turning `before` into `after`, and what they change.
    fn core_ops(
        &self,
        before: &Layer,
        after: &Layer,
    ) -> Result<(Vec<WriteOp>, Vec<KeyChange>), CfgError> {
        let mut ops = Vec::new();
        let mut changes = Vec::new();
        let old: BTreeMap<&String, &Value> =
            before.leaves.iter().chain(before.meta.iter()).collect();
        let new: BTreeMap<&String, &Value> = after.leaves.iter().chain(after.meta.iter()).collect();
        let keys: BTreeSet<&String> = old.keys().chain(new.keys()).copied().collect();
        for k in keys {
            match (old.get(k), new.get(k)) {
                (Some(a), Some(b)) if a == b => {}
                (_, Some(b)) => {
                    ops.push(WriteOp::Put {
                        key: k.clone(),
                        value: serde_json::to_vec(b).map_err(|e| {
                            CfgError::new("INTERNAL", format!("cannot encode {k:?}: {e}"))
                        })?,
                    });
                    changes.push(KeyChange {
                        key: k.clone(),
                        op: "put",
                        version: 0,
                    });
                }
                (Some(_), None) => {
                    ops.push(WriteOp::Delete { key: k.clone() });
                    changes.push(KeyChange {
                        key: k.clone(),
                        op: "delete",
                        version: 0,
                    });
                }
                (None, None) => {}
            }
        }
        if ops.len() > self.limits.txn_ops_max {
            return Err(CfgError::new(
                "TOO_MANY_OPS",
                format!(
                    "the write changes {} keys; at most {} per write",
                    ops.len(),
                    self.limits.txn_ops_max
                ),
            ));
        }
        Ok((ops, changes))
    }

    /// Render and validate every environment the change to `work.ns` affects:
    /// itself and every environment that inherits from it, directly or not.
    async fn validate_affected(&self, work: &Layer) -> Result<(), CfgError> {
        let ns = work.ns.as_str();
        let project = ns.split_once('/').map(|(p, _)| p);
        let mut envs: Vec<String> = vec![ns.to_string()];
        if let Some(project) = project {
            let mut parents: BTreeMap<String, String> = BTreeMap::new();
            for info in self.list_namespaces(&format!("{project}/")).await? {
                if info.name == ns {
                    continue;
                }
                let l = self
                    .load_layer(&info.name, "$", AsOf::Latest, ReadConsistency::Stale)
                    .await?;
                if let Some(p) = l.parent() {
                    parents.insert(info.name.clone(), p);
                }
            }
            for env in parents.keys() {
                let mut cur = env.clone();
                for _ in 0..=render::INHERIT_DEPTH_MAX {
                    match parents.get(&cur) {
                        Some(p) if p == ns => {
                            envs.push(env.clone());
                            break;
                        }
                        Some(p) => cur = p.clone(),
                        None => break,
                    }
                }
            }
        }
        let mut problems = Vec::new();
        for env in &envs {
            let mut chain = Vec::new();
            let mut cur = Some(env.clone());
            while let Some(name) = cur {
                if chain.len() > render::INHERIT_DEPTH_MAX {
                    return Err(CfgError::new(
                        "REFERENCE_CYCLE",
                        format!(
                            "inheritance of {env} deeper than {} levels",
                            render::INHERIT_DEPTH_MAX
                        ),
                    ));
                }
                let layer = if name == ns {
                    work.clone()
                } else {
                    self.load_layer(&name, "", AsOf::Latest, ReadConsistency::Stale)
                        .await?
                };
                cur = layer.parent();
                chain.push(layer);
            }
            let (leaves, vars) = effective(&chain);
            let mut r = Renderer::new(&leaves, &vars, true);
            let rendered = r.subtree("").map_err(|e| {
                let mut err = CfgError::from(e);
                if env != ns {
                    err.message = format!("in {env} (inherits from {ns}): {}", err.message);
                }
                err
            })?;
            for (prefix, schema) in effective_schemas(&chain) {
                let instance = match (&rendered, prefix.is_empty()) {
                    (_, true) => rendered.clone().unwrap_or(Value::Object(Map::new())),
                    (Some(_), false) => match r.subtree(&prefix)? {
                        Some(v) => v,
                        None => continue,
                    },
                    (None, false) => continue,
                };
                let validator = jsonschema::draft202012::new(&schema).map_err(|e| {
                    CfgError::new("BAD_SCHEMA", format!("schema at {prefix:?}: {e}"))
                })?;
                for e in validator.iter_errors(&instance) {
                    problems.push(serde_json::json!({
                        "environment": env,
                        "schema_prefix": prefix,
                        "instance_path": e.instance_path().as_str(),
                        "schema_path": e.schema_path().as_str(),
                        "message": e.to_string(),
                    }));
                }
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let first = &problems[0];
        let msg = format!(
            "{} schema violation(s); first: {} at {}{} (schema {}{}): {}",
            problems.len(),
            first["environment"].as_str().unwrap_or_default(),
            first["schema_prefix"].as_str().unwrap_or_default(),
            first["instance_path"].as_str().unwrap_or_default(),
            first["schema_prefix"].as_str().unwrap_or_default(),
            first["schema_path"].as_str().unwrap_or_default(),
            first["message"].as_str().unwrap_or_default(),
        );
        Err(CfgError::new("SCHEMA_VIOLATION", msg).with_details(Value::Array(problems)))
    }

    /// Roll a key (or, with `key` None, the whole namespace) back to what it
    /// held at `revision`, written as a new version.
    pub async fn rollback(
        &self,
        ns: &str,
        key: Option<&str>,
        revision: u64,
        opts: &WriteOpts,
    ) -> Result<WriteResult, CfgError> {
        let target = self
            .load_layer(
                ns,
                "",
                AsOf::Revision(revision),
                ReadConsistency::Linearizable,
            )
            .await?;
        let current = self
            .load_layer(ns, "", AsOf::Latest, ReadConsistency::Linearizable)
            .await?;
        let mut ops = Vec::new();
        let mut want = |k: &String, v: Option<&Value>| {
            ops.push(Op::Restore {
                key: k.clone(),
                value: v.cloned(),
            })
        };
        match key {
            Some(key) => {
                tree::check_key(key).map_err(|m| CfgError::new("INVALID_KEY", m))?;
                if !current.kvs.contains_key(key) && !target.kvs.contains_key(key) {
                    return Err(CfgError::new(
                        "NOT_FOUND",
                        format!("{key} was never written in {ns}"),
                    ));
                }
                want(&key.to_string(), target.leaves.get(key));
            }
            None => {
                let all: BTreeSet<&String> = target
                    .leaves
                    .keys()
                    .chain(current.leaves.keys())
                    .chain(target.meta.keys())
                    .chain(current.meta.keys())
                    .collect();
                for k in all {
                    let v = target.leaves.get(k).or_else(|| target.meta.get(k));
                    let now = current.leaves.get(k).or_else(|| current.meta.get(k));
                    if v != now {
                        want(k, v);
                    }
                }
            }
        }
        let mut opts = opts.clone();
        if opts.message.is_empty() {
            opts.message = match key {
                Some(k) => format!("rollback of {k} to revision {revision}"),
                None => format!("rollback of {ns} to revision {revision}"),
            };
        }
        if ops.is_empty() {
            return Err(CfgError::invalid(format!(
                "{ns} already holds what it held at revision {revision}"
            )));
        }
        // One atomic write: the rollback changes at most txn_ops_max keys.
        self.write(ns, ops, &opts).await
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
        "INTERNAL",
        format!("unexpected response from the core: {resp:?}"),
    )
}

/// One event of a configuration watch.
#[derive(Clone, Debug, Serialize)]
pub struct WatchEvent {
    /// Keys under the watched path whose effective value changed (value None:
    /// removed).
    pub changes: Vec<Entry>,
    /// This event holds the whole state (first event without a resume token).
    pub snapshot: bool,
    /// Pass back as `resume_token` to continue after this event, in any region.
    pub token: String,
}

/// Effective values waiting for a slow watcher, at most (then it is dropped
/// and resumes with its token).
const WATCH_EVENTS_BUFFER_MAX: usize = 1024;

fn encode_watch_token(chain: &[Layer]) -> String {
    chain
        .iter()
        .map(|l| format!("{}={}", l.ns, l.token.map_or(0, |t| t.revision)))
        .collect::<Vec<_>>()
        .join(",")
}

fn decode_watch_token(s: &str) -> Result<BTreeMap<String, u64>, CfgError> {
    let bad = || CfgError::invalid(format!("resume token {s:?} is not one this API issued"));
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (ns, rev) = part.rsplit_once('=').ok_or_else(bad)?;
        out.insert(ns.to_string(), rev.parse().map_err(|_| bad())?);
    }
    Ok(out)
}

/// The rendered (or raw) leaves under `path` of a fully loaded chain.
fn flat_state(
    chain: &[Layer],
    path: &str,
    raw: bool,
) -> Result<BTreeMap<String, (Value, Option<KeyValue>)>, CfgError> {
    let Some(own) = chain.first() else {
        return Ok(BTreeMap::new());
    };
    let (leaves, vars) = if raw {
        (own.leaves.clone(), Map::new())
    } else {
        effective(chain)
    };
    let mut r = Renderer::new(&leaves, &vars, true);
    let mut out = BTreeMap::new();
    for k in leaves.keys().filter(|k| tree::is_under(k, path)) {
        let v = if raw { leaves[k].clone() } else { r.leaf(k)? };
        let kv = chain.iter().find_map(|l| l.kvs.get(k)).cloned();
        out.insert(k.clone(), (v, kv));
    }
    Ok(out)
}

fn state_changes(
    old: &BTreeMap<String, (Value, Option<KeyValue>)>,
    new: &BTreeMap<String, (Value, Option<KeyValue>)>,
) -> Vec<Entry> {
    let mut out = Vec::new();
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for k in keys {
        match (old.get(k), new.get(k)) {
            (Some((a, _)), Some((b, _))) if a == b => {}
            (_, Some((b, kv))) => {
                let mut e = kv.as_ref().map(entry).unwrap_or_else(|| Entry::bare(k));
                e.value = Some(b.clone());
                e.deleted = false;
                out.push(e);
            }
            (Some(_), None) => out.push(Entry {
                deleted: true,
                ..Entry::bare(k)
            }),
            (None, None) => {}
        }
    }
    out
}

fn apply_event(layer: &mut Layer, kv: KeyValue) {
    let is_meta = kv.key.starts_with('$');
    match kv.value.as_deref() {
        Some(bytes) => {
            let v = decode(bytes);
            if is_meta {
                layer.meta.insert(kv.key.clone(), v);
            } else {
                layer.leaves.insert(kv.key.clone(), v);
            }
        }
        None => {
            layer.meta.remove(&kv.key);
            layer.leaves.remove(&kv.key);
        }
    }
    if !is_meta {
        layer.kvs.insert(kv.key.clone(), kv);
    }
}

impl ConfigStore {
    /// Watch the effective values under `path`: a first event (the whole
    /// state, or with `resume_token` only what changed since that token),
    /// then one event per change that alters an effective value.
    pub async fn watch(
        &self,
        ns: &str,
        path: &str,
        raw: bool,
        resume_token: &str,
    ) -> Result<mpsc::Receiver<Result<WatchEvent, CfgError>>, CfgError> {
        tree::check_path(path).map_err(|m| CfgError::new("INVALID_KEY", m))?;
        let resume = if resume_token.is_empty() {
            None
        } else {
            Some(decode_watch_token(resume_token)?)
        };
        let opts = ReadOpts {
            raw,
            ..ReadOpts::default()
        };
        let mut chain = self.load_chain(ns, "", &opts).await?;
        // Subscribe before computing the first event, from the revisions read,
        // so no change falls between the two.
        let (core_tx, mut core_rx) =
            mpsc::channel::<(usize, ClientResponse)>(WATCH_EVENTS_BUFFER_MAX);
        for (i, layer) in chain.iter().enumerate() {
            let (tx, mut rx) = mpsc::channel(crate::driver::WATCH_BUFFER_MAX);
            let input = Input::Client {
                req: self.next_req.fetch_add(1, Ordering::Relaxed),
                request: ClientRequest::Watch {
                    ns: layer.ns.clone(),
                    prefix: String::new(),
                    start_revision: layer.token.map(|t| t.revision),
                },
                reply: ReplyTo::Stream(tx),
            };
            self.inputs
                .send(input)
                .await
                .map_err(|_| CfgError::new("SHUTTING_DOWN", "the node is stopping"))?;
            let fwd = core_tx.clone();
            tokio::spawn(async move {
                while let Some(r) = rx.recv().await {
                    if fwd.send((i, r)).await.is_err() {
                        return;
                    }
                }
            });
        }
        drop(core_tx);
        let mut state = flat_state(&chain, path, raw)?;
        let first = match resume {
            None => WatchEvent {
                changes: state_changes(&BTreeMap::new(), &state),
                snapshot: true,
                token: encode_watch_token(&chain),
            },
            Some(revs) => {
                let mut old_chain = Vec::new();
                let mut compacted = false;
                for l in &chain {
                    let layer = match revs.get(&l.ns) {
                        Some(&r) => match self
                            .load_layer(&l.ns, "", AsOf::Revision(r), ReadConsistency::Stale)
                            .await
                        {
                            Ok(x) => x,
                            Err(e) if e.reason == "HISTORY_COMPACTED" => {
                                compacted = true;
                                break;
                            }
                            Err(e) => return Err(e),
                        },
                        None => Layer {
                            ns: l.ns.clone(),
                            ..Layer::default()
                        },
                    };
                    old_chain.push(layer);
                }
                // Retention dropped what the token points at: resync with the
                // whole state rather than guess at a delta.
                let old = if compacted {
                    None
                } else {
                    flat_state(&old_chain, path, raw).ok()
                };
                match old {
                    Some(old) => WatchEvent {
                        changes: state_changes(&old, &state),
                        snapshot: false,
                        token: encode_watch_token(&chain),
                    },
                    _ => WatchEvent {
                        changes: state_changes(&BTreeMap::new(), &state),
                        snapshot: true,
                        token: encode_watch_token(&chain),
                    },
                }
            }
        };
        let (out_tx, out_rx) = mpsc::channel(WATCH_EVENTS_BUFFER_MAX);
        let _ = out_tx.send(Ok(first)).await;
        let path = path.to_string();
        tokio::spawn(async move {
            while let Some((i, resp)) = core_rx.recv().await {
                let Some(layer) = chain.get_mut(i) else {
                    return;
                };
                let group = layer.token.map_or(0, |t| t.group);
                let mut parent_changed = false;
                match resp {
                    ClientResponse::WatchEvents { events, revision } => {
                        for kv in events {
                            parent_changed |= kv.key == INHERITS_KEY;
                            apply_event(layer, kv);
                        }
                        layer.token = Some(RevisionToken { group, revision });
                    }
                    ClientResponse::WatchResync { snapshot, revision } => {
                        layer.leaves.clear();
                        layer.meta.clear();
                        layer.kvs.clear();
                        for kv in snapshot {
                            apply_event(layer, kv);
                        }
                        layer.token = Some(RevisionToken { group, revision });
                        parent_changed = true;
                    }
                    ClientResponse::Error(code) => {
                        let _ = out_tx.send(Err(CfgError::core(code))).await;
                        return;
                    }
                    _ => continue,
                }
                if parent_changed && !raw {
                    let _ = out_tx
                        .send(Err(CfgError::new(
                            "UNAVAILABLE",
                            "the environment's inheritance changed; resume with the last token",
                        )))
                        .await;
                    return;
                }
                let new = match flat_state(&chain, &path, raw) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = out_tx.send(Err(e)).await;
                        return;
                    }
                };
                let changes = state_changes(&state, &new);
                state = new;
                if changes.is_empty() {
                    continue;
                }
                let ev = WatchEvent {
                    changes,
                    snapshot: false,
                    token: encode_watch_token(&chain),
                };
                if out_tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
        });
        Ok(out_rx)
    }
}
