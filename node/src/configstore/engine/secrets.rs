//! Secrets in the configuration engine: the redaction a secret reads as,
//! revealing secrets to callers allowed to (audited), sealing the values a
//! write marks secret, and what makes a key secret (the write itself, a
//! schema's `writeOnly`, or having been one: once secret, always secret).

use super::*;
use crate::reason::Reason;
use crate::secrets::envelope::{Attrs, Envelope};
use crate::secrets::SecretError;

/// Secrets one read may reveal at most (each is one AES-GCM open and part
/// of an audit record).
pub const REVEALS_PER_READ_MAX: usize = 1000;

/// What a secret reads as without a reveal: names its version, so a diff or
/// a write sees a change of the secret, never its value.
pub fn redaction(version: u64) -> Value {
    Value::String(format!("<redacted secret v{version}>"))
}

/// What a destroyed secret version reads as, to everyone.
pub fn destroyed(version: u64) -> Value {
    Value::String(format!("<destroyed secret v{version}>"))
}

/// Whether a value is a secret's redaction, or a destroyed version's (they
/// are never stored as values).
pub fn is_redaction(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.strip_prefix("<redacted secret v")
            .or_else(|| s.strip_prefix("<destroyed secret v"))
            .and_then(|r| r.strip_suffix('>'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

impl From<SecretError> for CfgError {
    fn from(e: SecretError) -> CfgError {
        let reason = match e {
            SecretError::Keyring(_) => Reason::KeyringUnavailable,
            SecretError::Corrupt(_) => Reason::SecretCorrupt,
            SecretError::Expired { .. } => Reason::SecretExpired,
            SecretError::Destroyed { .. } => Reason::SecretDestroyed,
        };
        CfgError::new(reason, e.to_string())
    }
}

/// Whether `key` (relative to a schema attached at `prefix`) sits where the
/// schema says `writeOnly: true`: at the schema's root, or along
/// `properties` / `additionalProperties` / `allOf` to the key.
fn write_only_at(schema: &Value, rel: &[&str]) -> bool {
    let Some(obj) = schema.as_object() else {
        return false;
    };
    if obj.get("writeOnly").and_then(Value::as_bool) == Some(true) {
        return true;
    }
    if let Some(Value::Array(all)) = obj.get("allOf") {
        if all.iter().any(|s| write_only_at(s, rel)) {
            return true;
        }
    }
    let Some((first, rest)) = rel.split_first() else {
        return false;
    };
    let child = obj
        .get("properties")
        .and_then(|p| p.get(*first))
        .or_else(|| obj.get("additionalProperties").filter(|a| a.is_object()));
    child.is_some_and(|c| write_only_at(c, rest))
}

/// The keys of `leaves` that the schemas in force mark secret.
pub(super) fn schema_marks(
    schemas: &BTreeMap<String, Value>,
    leaves: &BTreeMap<String, Value>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (prefix, schema) in schemas {
        for k in leaves.keys() {
            if !tree::is_under(k, prefix) {
                continue;
            }
            let rel = if prefix.is_empty() {
                k.as_str()
            } else {
                k[prefix.len()..].trim_start_matches('.')
            };
            let segs: Vec<&str> = if rel.is_empty() {
                Vec::new()
            } else {
                rel.split('.').collect()
            };
            if write_only_at(schema, &segs) {
                out.insert(k.clone());
            }
        }
    }
    out
}

impl ConfigStore {
    /// The plaintext of a stored secret version, as the JSON it was written
    /// as. Fails (never a guess) on a missing keyring, a damaged envelope or
    /// an expired version.
    pub(super) fn open_secret(&self, ns: &str, kv: &KeyValue) -> Result<Value, CfgError> {
        let stored = kv
            .value
            .as_deref()
            .ok_or_else(|| CfgError::new(Reason::NotFound, format!("{} is deleted", kv.key)))?;
        let opened = self.secrets.open(ns, &kv.key, kv.version, stored)?;
        if opened.attrs.expires_ms != 0 && now_ms() > opened.attrs.expires_ms {
            return Err(SecretError::Expired {
                expires_ms: opened.attrs.expires_ms,
            }
            .into());
        }
        serde_json::from_slice(opened.plaintext.expose()).map_err(|_| {
            SecretError::Corrupt(format!(
                "version {} of {:?} in {ns} opened but is not JSON",
                kv.version, kv.key
            ))
            .into()
        })
    }

    /// The envelope of `value` as version `version` of `key` in `ns`.
    pub(super) fn seal_value(
        &self,
        ns: &str,
        key: &str,
        version: u64,
        value: &Value,
        spec: SecretSpec,
    ) -> Result<Vec<u8>, CfgError> {
        let plain =
            zeroize::Zeroizing::new(serde_json::to_vec(value).map_err(|e| {
                CfgError::new(Reason::Internal, format!("cannot encode {key:?}: {e}"))
            })?);
        if plain.len() > crate::secrets::PLAINTEXT_BYTES_MAX {
            return Err(CfgError::new(
                Reason::ValueTooLarge,
                format!(
                    "{key}: a secret holds at most {} bytes",
                    crate::secrets::PLAINTEXT_BYTES_MAX
                ),
            ));
        }
        let attrs = Attrs {
            expires_ms: spec.expires_ms,
            rotate_ms: spec.rotate_every_ms,
        };
        Ok(self.secrets.seal(ns, key, version, &plain, attrs)?)
    }

    /// Replace the redactions in `chain` by plaintext where the caller may
    /// `reveal` (judged as keys of the environment read), and audit what was
    /// revealed. The rest stay redacted, as a filtered read leaves out what
    /// may not be read.
    pub(super) fn reveal_chain(
        &self,
        chain: &mut [Layer],
        opts: &ReadOpts,
    ) -> Result<(), CfgError> {
        let view_ns = chain.first().map(|l| l.ns.clone()).unwrap_or_default();
        let mut revealed: Vec<String> = Vec::new();
        for layer in chain.iter_mut() {
            let keys: Vec<String> = layer
                .secrets
                .keys()
                .filter(|k| layer.leaves.contains_key(*k) && !layer.revealed.contains(*k))
                .filter(|k| opts.access.may(Action::Reveal, &view_ns, k))
                .cloned()
                .collect();
            for k in keys {
                if revealed.len() == REVEALS_PER_READ_MAX {
                    return Err(CfgError::new(
                        Reason::TooManyOps,
                        format!(
                            "the read reveals more than {REVEALS_PER_READ_MAX} secrets; \
                             read a narrower path"
                        ),
                    ));
                }
                let Some(kv) = layer.kvs.get(&k) else {
                    continue;
                };
                let v = self.open_secret(&layer.ns, kv)?;
                layer.leaves.insert(k.clone(), v);
                layer.revealed.insert(k.clone());
                revealed.push(k);
            }
        }
        if !revealed.is_empty() {
            let keys: Vec<&str> = revealed.iter().map(String::as_str).collect();
            opts.access.audit_reveal(&view_ns, &keys);
        }
        Ok(())
    }

    /// Every version of a key's history with secrets opened (the caller
    /// may `reveal` the key: checked by the caller), and the reveal audited.
    pub(super) fn reveal_history(
        &self,
        access: &Access,
        ns: &str,
        key: &str,
        versions: &[KeyValue],
        entries: &mut [Entry],
    ) -> Result<(), CfgError> {
        let mut any = false;
        for (kv, e) in versions.iter().zip(entries.iter_mut()) {
            // A destroyed version stays shown as destroyed: it has nothing to open.
            let sealed = kv
                .value
                .as_deref()
                .filter(|b| !crate::secrets::is_destroyed(b));
            if sealed.is_some_and(crate::secrets::is_envelope) {
                e.value = Some(self.open_secret(ns, kv)?);
                any = true;
            }
        }
        if any {
            access.audit_reveal(ns, &[key]);
        }
        Ok(())
    }

    /// The versions of keys a write seals that are not live in `before`
    /// (never written, or deleted: a scan shows neither), so each is sealed
    /// for the version it will be.
    pub(super) async fn tombstone_versions(
        &self,
        before: &Layer,
        work: &Layer,
    ) -> Result<BTreeMap<String, u64>, CfgError> {
        let mut out = BTreeMap::new();
        for k in work.secrets.keys() {
            if !work.leaves.contains_key(k) || before.kvs.contains_key(k) {
                continue;
            }
            let q = ReadQuery::Get { key: k.clone() };
            match self
                .read(&before.ns, q, Consistency::Stale, before.token)
                .await?
            {
                ClientResponse::Value { kv, .. } => {
                    out.insert(k.clone(), kv.version);
                }
                other => return Err(unexpected(&other)),
            }
        }
        Ok(out)
    }
}

/// Stored secret versions, and the KEK versions they are under.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SecretsCensus {
    /// The active KEK of the region that counted (None: no keyring).
    pub active_kek: Option<u32>,
    pub namespaces: usize,
    /// Every retained version of every secret.
    pub secret_versions: u64,
    /// Of those, how many are under each KEK version.
    pub by_kek: BTreeMap<u32, u64>,
    /// Versions re-wrapped under the active KEK by this call.
    pub rewrapped: u64,
}

impl ConfigStore {
    /// Every retained version of every secret of `ns`, as read at
    /// `consistency` (the `$secrets` registry names the keys, deleted ones
    /// included).
    async fn secret_versions(
        &self,
        ns: &str,
        consistency: ReadConsistency,
    ) -> Result<Vec<KeyValue>, CfgError> {
        let layer = self.load_layer(ns, "$", AsOf::Latest, consistency).await?;
        let mut out = Vec::new();
        for key in registry(&layer) {
            let q = ReadQuery::History { key };
            match self.read(ns, q, Consistency::Stale, layer.token).await? {
                ClientResponse::History { versions, .. } => {
                    out.extend(versions.into_iter().filter(|v| {
                        v.value.as_deref().is_some_and(|b| {
                            crate::secrets::is_envelope(b) && !crate::secrets::is_destroyed(b)
                        })
                    }))
                }
                other => return Err(unexpected(&other)),
            }
        }
        Ok(out)
    }

    /// Count the stored secret versions by KEK version, as this region's
    /// replicas hold them (after `reload`ing the keyring file if asked):
    /// once no version is under an old KEK in any region, it can be removed.
    pub async fn secrets_census(
        &self,
        access: &Access,
        reload: bool,
    ) -> Result<(crate::secrets::KeyringStatus, SecretsCensus), CfgError> {
        access.check(Action::Admin, crate::auth::Resource::CLUSTER)?;
        if reload {
            self.secrets.reload()?;
        }
        let census = self.census(ReadConsistency::Stale, 0).await?;
        Ok((self.secrets.status(), census))
    }

    /// This region's keyring, as `secrets_census` reports it.
    pub fn secrets_keyring(&self) -> crate::secrets::KeyringStatus {
        self.secrets.status()
    }

    async fn census(
        &self,
        consistency: ReadConsistency,
        rewrapped: u64,
    ) -> Result<SecretsCensus, CfgError> {
        let mut c = SecretsCensus {
            active_kek: self.secrets.active_kek(),
            rewrapped,
            ..SecretsCensus::default()
        };
        for info in self.list_namespaces_local("").await? {
            c.namespaces += 1;
            for kv in self.secret_versions(&info.name, consistency).await? {
                c.secret_versions += 1;
                let v = kv
                    .value
                    .as_deref()
                    .and_then(crate::secrets::Secrets::kek_version_of)
                    .unwrap_or(0);
                *c.by_kek.entry(v).or_default() += 1;
            }
        }
        Ok(c)
    }

    /// Re-wrap every stored secret version not under the active KEK with
    /// it, online: each version's bytes are replaced in place through its
    /// home group's log (no new version; writes go on meanwhile, and a
    /// version changed in between is left alone by the core's compare).
    /// Every region must hold the active KEK first (`secrets_census` of
    /// each says so). Returns the census afterwards.
    pub async fn rewrap_secrets(&self, access: &Access) -> Result<SecretsCensus, CfgError> {
        access.check(Action::Admin, crate::auth::Resource::CLUSTER)?;
        let mut rewrapped = 0u64;
        for info in self.list_namespaces_local("").await? {
            let ns = info.name;
            let mut batch: Vec<meridian_core::types::ValuePatch> = Vec::new();
            for kv in self
                .secret_versions(&ns, ReadConsistency::Linearizable)
                .await?
            {
                let Some(old) = kv.value.as_deref() else {
                    continue;
                };
                let Some(new) = self.secrets.rewrap(&ns, &kv.key, kv.version, old)? else {
                    continue;
                };
                batch.push(meridian_core::types::ValuePatch {
                    key: kv.key.clone(),
                    version: kv.version,
                    expect: fnv1a(old),
                    value: new,
                });
                if batch.len() == meridian_core::types::REPLACE_ITEMS_MAX {
                    rewrapped += self.replace(&ns, std::mem::take(&mut batch)).await?;
                }
            }
            if !batch.is_empty() {
                rewrapped += self.replace(&ns, batch).await?;
            }
        }
        let census = self
            .census(ReadConsistency::Linearizable, rewrapped)
            .await?;
        access.audit_ok(
            "",
            &[],
            &format!(
                "re-wrapped {rewrapped} secret version(s) under KEK version {}",
                census.active_kek.unwrap_or(0)
            ),
        );
        Ok(census)
    }

    pub(super) async fn replace(
        &self,
        ns: &str,
        items: Vec<meridian_core::types::ValuePatch>,
    ) -> Result<u64, CfgError> {
        let n = items.len() as u64;
        match self
            .call(ClientRequest::ReplaceValues {
                ns: ns.to_string(),
                items,
            })
            .await?
        {
            ClientResponse::Done => Ok(n),
            other => Err(unexpected(&other)),
        }
    }
}

impl ConfigStore {
    /// The paths `ns` itself marks secret, and those it inherits (in force
    /// too: an environment cannot take a mark off what it inherits).
    pub async fn secret_paths(
        &self,
        access: &Access,
        ns: &str,
    ) -> Result<(BTreeSet<String>, BTreeSet<String>), CfgError> {
        access.check_namespace_read(ns)?;
        let opts = ReadOpts {
            access: access.clone(),
            raw: false,
            as_of: AsOf::Latest,
            consistency: ReadConsistency::Linearizable,
            reveal: false,
        };
        let chain = self.load_chain(ns, "$", &opts).await?;
        let own = chain.first().map(own_secret_paths).unwrap_or_default();
        let inherited = effective_secret_paths(chain.get(1..).unwrap_or_default())
            .into_iter()
            .filter(|p| !own.contains(p))
            .collect();
        Ok((own, inherited))
    }
}

/// A region's secrets, counted for the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretsOverview {
    /// Environments holding at least one live secret.
    pub namespaces: BTreeMap<String, NsSecrets>,
    /// Stored versions (every retained one) by KEK version.
    pub by_kek: BTreeMap<u32, u64>,
}

/// One environment's live secrets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NsSecrets {
    pub live: usize,
    pub due: usize,
    pub expired: usize,
    /// How long the most overdue one is past its rotation period.
    pub overdue_ms_max: u64,
}

/// One secret of an environment as `list_secrets` shows it: its current
/// version's lifecycle, never its value.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SecretInfo {
    pub key: String,
    pub version: u64,
    pub revision: u64,
    /// When the current version was written (ms since the epoch).
    pub time_ms: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub author: String,
    /// 0: never.
    pub expires_at_ms: u64,
    /// 0: no rotation policy.
    pub rotate_every_ms: u64,
    /// Older than its rotation period.
    pub due: bool,
    /// Past its expiry: reveals fail with SECRET_EXPIRED.
    pub expired: bool,
    /// Deleted (its history is kept; it stays a secret if written again).
    pub deleted: bool,
    /// Its current version was destroyed.
    pub destroyed: bool,
}

impl ConfigStore {
    /// The secrets of `ns` the caller may read (their lifecycle, not their
    /// values), in key order; with `due_only`, those due for rotation or
    /// expired.
    pub async fn list_secrets(
        &self,
        access: &Access,
        ns: &str,
        due_only: bool,
    ) -> Result<Vec<SecretInfo>, CfgError> {
        access.check_namespace_read(ns)?;
        let mut out = Vec::new();
        for info in self.secret_infos(ns, ReadConsistency::Linearizable).await? {
            if access.may_read(ns, &info.key) && (!due_only || info.due || info.expired) {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Every secret of `ns` (its current version's lifecycle), as read at
    /// `consistency`, in key order.
    async fn secret_infos(
        &self,
        ns: &str,
        consistency: ReadConsistency,
    ) -> Result<Vec<SecretInfo>, CfgError> {
        let layer = self.load_layer(ns, "$", AsOf::Latest, consistency).await?;
        let now = now_ms();
        let mut out = Vec::new();
        for key in registry(&layer) {
            let q = ReadQuery::Get { key: key.clone() };
            let kv = match self.read(ns, q, Consistency::Stale, layer.token).await? {
                ClientResponse::Value { kv, .. } => kv,
                other => return Err(unexpected(&other)),
            };
            let attrs = kv
                .value
                .as_deref()
                .and_then(stored_attrs)
                .unwrap_or_default();
            out.push(SecretInfo {
                key,
                version: kv.version,
                revision: kv.mod_revision,
                time_ms: kv.meta.time_ms,
                author: kv.meta.author.clone(),
                expires_at_ms: attrs.expires_ms,
                rotate_every_ms: attrs.rotate_ms,
                due: kv.value.is_some()
                    && attrs.rotate_ms != 0
                    && now > kv.meta.time_ms.saturating_add(attrs.rotate_ms),
                expired: kv.value.is_some() && attrs.expires_ms != 0 && now > attrs.expires_ms,
                deleted: kv.value.is_none(),
                destroyed: kv
                    .value
                    .as_deref()
                    .is_some_and(crate::secrets::is_destroyed),
            });
        }
        Ok(out)
    }

    /// This region's secrets by environment and by KEK version, read
    /// locally (as stale as its replicas; available without a quorum), for
    /// the metrics. Nothing is decrypted.
    pub async fn secrets_overview(&self) -> Result<SecretsOverview, CfgError> {
        let census = self.census(ReadConsistency::Stale, 0).await?;
        let mut o = SecretsOverview {
            by_kek: census.by_kek,
            ..SecretsOverview::default()
        };
        let now = now_ms();
        for ns in self.list_namespaces_local("").await? {
            let mut n = NsSecrets::default();
            for s in self.secret_infos(&ns.name, ReadConsistency::Stale).await? {
                if s.deleted {
                    continue;
                }
                n.live += 1;
                n.due += usize::from(s.due);
                n.expired += usize::from(s.expired);
                if s.due {
                    let overdue = now.saturating_sub(s.time_ms.saturating_add(s.rotate_every_ms));
                    n.overdue_ms_max = n.overdue_ms_max.max(overdue);
                }
            }
            if n.live > 0 {
                o.namespaces.insert(ns.name, n);
            }
        }
        Ok(o)
    }
}

/// Paths one environment marks secret at most.
pub const SECRET_PATHS_MAX: usize = 256;

/// The strings of a meta key holding a JSON array of strings.
fn meta_strings(layer: &Layer, key: &str) -> BTreeSet<String> {
    layer
        .meta
        .get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The paths an environment's own setting marks secret.
pub fn own_secret_paths(layer: &Layer) -> BTreeSet<String> {
    meta_strings(layer, SECRET_PATHS_KEY)
}

/// The paths marked secret in force in a chain: every layer's, since an
/// environment cannot take a mark off what it inherits.
pub(super) fn effective_secret_paths(chain: &[Layer]) -> BTreeSet<String> {
    chain.iter().flat_map(own_secret_paths).collect()
}

/// The keys of `leaves` under a path marked secret.
pub(super) fn path_marks(
    paths: &BTreeSet<String>,
    leaves: &BTreeMap<String, Value>,
) -> BTreeSet<String> {
    leaves
        .keys()
        .filter(|k| paths.iter().any(|p| tree::is_under(k, p)))
        .cloned()
        .collect()
}

/// What an environment already holds secret, as a write's fingerprint
/// needs it before the write is evaluated: the registry, the marked paths
/// and the schemas in force.
#[derive(Clone, Debug, Default)]
pub struct Marks {
    registry: BTreeSet<String>,
    paths: BTreeSet<String>,
    schemas: BTreeMap<String, Value>,
}

impl Marks {
    /// Whether `key` is a secret, or would be stored as one.
    pub fn key(&self, key: &str) -> bool {
        self.registry.contains(key)
            || self.paths.iter().any(|p| tree::is_under(key, p))
            || !schema_marks(
                &self.schemas,
                &BTreeMap::from([(key.to_string(), Value::Null)]),
            )
            .is_empty()
    }

    /// Whether a value written at `path` may set a secret: conservative (a
    /// patch's keys are known only once applied).
    pub fn subtree(&self, path: &str) -> bool {
        let overlaps = |p: &str| tree::is_under(p, path) || tree::is_under(path, p);
        self.registry.iter().any(|k| tree::is_under(k, path))
            || self.paths.iter().any(|p| overlaps(p))
            || self
                .schemas
                .iter()
                .any(|(p, s)| overlaps(p) && s.to_string().contains("\"writeOnly\""))
    }
}

impl ConfigStore {
    /// `ns`'s marks as this region's replicas hold them (a mark made a
    /// moment ago elsewhere may be missing: the window in which a retry's
    /// fingerprint could differ, and a value be hashed, is that short).
    pub(super) async fn marks(&self, ns: &str, access: &Access) -> Result<Marks, CfgError> {
        let opts = ReadOpts {
            access: access.clone(),
            raw: false,
            as_of: AsOf::Latest,
            consistency: ReadConsistency::Stale,
            reveal: false,
        };
        let chain = self.load_chain(ns, "$", &opts).await?;
        Ok(Marks {
            registry: chain.first().map(registry).unwrap_or_default(),
            paths: effective_secret_paths(&chain),
            schemas: effective_schemas(&chain),
        })
    }
}

/// The keys a namespace's `$secrets` registry names.
pub(super) fn registry(layer: &Layer) -> BTreeSet<String> {
    meta_strings(layer, SECRETS_KEY)
}

/// Mark the keys the registry names as secrets, and add to it every key
/// `work` holds as a secret: once secret, always secret.
pub(super) fn keep_registry(work: &mut Layer) {
    let mut reg = registry(work);
    let n = reg.len();
    for k in reg.iter() {
        work.secrets.entry(k.clone()).or_default();
    }
    for k in work.secrets.keys() {
        if work.leaves.contains_key(k) {
            reg.insert(k.clone());
        }
    }
    if reg.len() != n {
        work.meta.insert(
            SECRETS_KEY.to_string(),
            Value::Array(reg.into_iter().map(Value::String).collect()),
        );
    }
}

/// The lifecycle attributes of a stored secret (in the clear in its
/// envelope), for listings; None if the bytes are not an envelope.
pub fn stored_attrs(bytes: &[u8]) -> Option<Attrs> {
    Envelope::peek(bytes).ok().map(|(_, a)| a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_fingerprint_holds_no_value_of_a_key_already_secret() {
        // The fingerprint is stored in the idempotency table: a 64-bit hash
        // of a short secret's plaintext could be searched.
        let marks = Marks {
            registry: BTreeSet::from(["db.password".to_string()]),
            paths: BTreeSet::from(["creds".to_string()]),
            schemas: BTreeMap::from([(
                "tls".to_string(),
                json!({"properties": {"key": {"writeOnly": true}}}),
            )]),
        };
        let put = |k: &str, v: &str| Op::Put {
            key: k.into(),
            value: json!(v),
            if_version: None,
            secret: None,
        };
        let merge = |p: &str, v: Value| Op::Merge {
            path: p.into(),
            patch: v,
            if_version: None,
            secret: None,
        };
        let fp = |op: Op| ops_fingerprint("shop/prod", &[op], &marks).unwrap();
        for k in ["db.password", "creds.api", "tls.key"] {
            assert_eq!(fp(put(k, "hunter2")), fp(put(k, "hunter3")), "{k}");
        }
        assert_eq!(
            fp(merge("creds", json!({"a": "x"}))),
            fp(merge("creds", json!({"a": "y"})))
        );
        assert_eq!(
            fp(merge("", json!({"db": 1}))),
            fp(merge("", json!({"db": 2})))
        );
        // Plain keys keep their values in it: a reused idempotency key with
        // another value is still told apart.
        assert_ne!(fp(put("db.host", "a")), fp(put("db.host", "b")));
        assert_ne!(fp(put("tls.cert", "a")), fp(put("tls.cert", "b")));
        assert_ne!(
            fp(merge("app", json!({"a": "x"}))),
            fp(merge("app", json!({"a": "y"})))
        );
    }

    #[test]
    fn redactions_are_recognised_and_plain_strings_are_not() {
        assert!(is_redaction(&redaction(3)));
        assert!(!is_redaction(&json!("<redacted secret v>")));
        assert!(!is_redaction(&json!("<redacted secret v3x>")));
        assert!(!is_redaction(&json!(3)));
    }

    #[test]
    fn write_only_marks_subtrees_and_properties() {
        let leaves: BTreeMap<String, Value> = ["db.password", "db.host", "tls.key", "tls.x.y"]
            .iter()
            .map(|k| (k.to_string(), json!(1)))
            .collect();
        let mut schemas = BTreeMap::new();
        schemas.insert(
            "db".to_string(),
            json!({"properties": {"password": {"type": "string", "writeOnly": true}}}),
        );
        schemas.insert("tls".to_string(), json!({"writeOnly": true}));
        let marks = schema_marks(&schemas, &leaves);
        assert_eq!(
            marks.into_iter().collect::<Vec<_>>(),
            vec!["db.password", "tls.key", "tls.x.y"]
        );
        let mut root = BTreeMap::new();
        root.insert(
            String::new(),
            json!({"allOf": [{"properties": {"db": {"additionalProperties": {"writeOnly": true}}}}]}),
        );
        assert_eq!(schema_marks(&root, &leaves).len(), 2);
    }
}
