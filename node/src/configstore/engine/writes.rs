//! Writes: the optimistic read-validate-write cycle (operations applied to a
//! copy, validated by `validate`, committed with a compare on the namespace
//! revision), idempotent replays, and rollbacks.

use super::*;
use crate::configstore::tree::{FLAG_KEY_PREFIX, SEGMENT_KEY_PREFIX};
use crate::reason::Reason;

/// A write planned from what it read: the core's operations, what they
/// change, the version each sealed secret was sealed for, the result as a
/// diff may show it (secrets as the redaction of their new version), and
/// how many secret values it seals.
pub(super) struct Planned {
    pub ops: Vec<WriteOp>,
    pub changes: Vec<KeyChange>,
    pub sealed_for: BTreeMap<String, u64>,
    pub shown: Layer,
    pub sealed: usize,
}

/// The keys whose stored values differ between `before` and `after`, in
/// key order, as puts and deletes (versions left 0).
fn key_changes(before: &Layer, after: &Layer) -> Vec<KeyChange> {
    let old: BTreeMap<&String, &Value> = before.leaves.iter().chain(before.meta.iter()).collect();
    let new: BTreeMap<&String, &Value> = after.leaves.iter().chain(after.meta.iter()).collect();
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).copied().collect();
    let mut changes = Vec::new();
    for k in keys {
        let op = match (old.get(k), new.get(k)) {
            (Some(a), Some(b)) if a == b => continue,
            (_, Some(_)) => "put",
            (Some(_), None) => "delete",
            (None, None) => continue,
        };
        changes.push(KeyChange {
            key: k.clone(),
            op,
            version: 0,
        });
    }
    changes
}

impl ConfigStore {
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
                Reason::TooManyOps,
                format!(
                    "{} operations; at most {} per write",
                    ops.len(),
                    self.limits.txn_ops_max
                ),
            ));
        }
        // What each operation names, judged by the name alone before
        // anything is read, so a refusal says nothing about what exists
        // (the keys the write turns out to change are judged again below).
        for op in &ops {
            let (action, key) = match op {
                Op::Put { key, .. } => (Action::Write, key.as_str()),
                Op::Merge { path, .. } | Op::Patch { path, .. } => (Action::Write, path.as_str()),
                Op::Delete { key, .. } => (Action::Delete, key.as_str()),
                Op::Restore { key, .. } => (Action::Write, key.as_str()),
                Op::SetSchema { .. }
                | Op::DeleteSchema { .. }
                | Op::SetTemplate { .. }
                | Op::SecretPaths { .. } => (Action::Admin, ""),
                Op::SetFlag { key, .. } | Op::DeleteFlag { key } | Op::EditFlag { key, .. } => {
                    (Action::Flags, key.as_str())
                }
                Op::SetSegment { name, .. } | Op::DeleteSegment { name } => {
                    (Action::Flags, name.as_str())
                }
            };
            opts.access.check_key(action, ns, key)?;
        }
        let request_id = match &opts.idempotency_key {
            Some(k) if k.is_empty() || k.len() > 256 => {
                return Err(CfgError::invalid("idempotency keys are 1-256 bytes"))
            }
            Some(k) => fnv1a(format!("{ns}\0{k}").as_bytes()) | 1,
            None => rand::random::<u64>() | 1,
        };
        let marks = self.marks(ns, &opts.access).await?;
        let fingerprint = ops_fingerprint(ns, &ops, &marks)?;
        if opts.idempotency_key.is_some() && !opts.dry_run {
            if let Some(first) = self.replay(ns, request_id, fingerprint).await? {
                return Ok(first);
            }
        }
        // The first attempt reads this region's replica as it is, without a
        // linearizable probe of the home region (a round trip from any other
        // region). That is safe because the commit compares the namespace
        // revision the read saw: if the replica was behind, the home refuses
        // and the next attempt reads linearizably. Only a commit is trusted
        // from an optimistic read; a refusal or a no-op computed from it is
        // checked again on fresh data. A dry run commits nothing, so it reads
        // linearizably from the start.
        let mut optimistic = !opts.dry_run;
        for _ in 0..WRITE_ATTEMPTS_MAX {
            let consistency = if optimistic {
                ReadConsistency::Stale
            } else {
                ReadConsistency::Linearizable
            };
            let evaluated = self.evaluate(ns, &ops, consistency, &opts.access).await;
            let was_optimistic = std::mem::replace(&mut optimistic, false);
            let (layer, planned) = match evaluated {
                Ok(e) => e,
                Err(_) if was_optimistic => continue,
                Err(e) => return Err(e),
            };
            let Planned {
                ops: core_ops,
                changes,
                sealed_for,
                shown,
                sealed,
            } = planned;
            if sealed > 0 && !opts.secure_channel && !self.secrets.allow_plaintext() {
                return Err(CfgError::new(
                    Reason::SecretNeedsTls,
                    format!(
                        "the write stores {sealed} secret value(s) sent over a connection \
                         without TLS; this region refuses that ([secrets] allow_plaintext)"
                    ),
                ));
            }
            // The diff shows only what the caller may read (a writer that
            // may not read a key learns nothing of its old value), and
            // secrets as their redactions.
            let raw_diff = if opts.access.enabled() {
                let (mut a, mut b) = (layer.clone(), shown.clone());
                a.restrict(&opts.access, ns);
                b.restrict(&opts.access, ns);
                layer_diff(&a, &b)
            } else {
                layer_diff(&layer, &shown)
            };
            if core_ops.is_empty() {
                if was_optimistic {
                    continue;
                }
                return Ok(WriteResult {
                    revision: layer.ns_revision,
                    token: token_str(layer.token),
                    changes: Vec::new(),
                    replayed: false,
                    dry_run: opts.dry_run,
                    diff: raw_diff,
                    warnings: Vec::new(),
                });
            }
            if opts.dry_run {
                return Ok(WriteResult {
                    revision: layer.ns_revision,
                    token: token_str(layer.token),
                    changes: changes
                        .into_iter()
                        .filter(|c| c.key != SECRETS_KEY)
                        .collect(),
                    replayed: false,
                    dry_run: true,
                    diff: raw_diff,
                    warnings: Vec::new(),
                });
            }
            let resp = self
                .call(ClientRequest::Write {
                    ns: ns.to_string(),
                    request_id,
                    fingerprint,
                    compares: Vec::new(),
                    ns_revision: Some(layer.ns_revision),
                    ops: core_ops,
                    meta: ChangeMeta {
                        author: opts.access.author(&opts.author),
                        message: opts.message.clone(),
                        time_ms: now_ms(),
                    },
                    audit: Box::new(opts.access.audit_ctx()),
                })
                .await;
            let resp = match resp {
                // A namespace created a moment ago may be known here but not
                // yet at its home (it applies the catalog a moment later):
                // the home refused, so nothing was written. The next attempt
                // reads linearizably, which waits for the home to know it.
                Err(e) if was_optimistic && e.reason == Reason::UnknownNamespace => continue,
                other => other?,
            };
            match resp {
                ClientResponse::Written {
                    versions, token, ..
                } => {
                    self.wait_applied(ns, token).await?;
                    let changes: Vec<KeyChange> = changes
                        .into_iter()
                        .zip(versions)
                        .map(|(c, v)| KeyChange { version: v, ..c })
                        .filter(|c| c.key != SECRETS_KEY)
                        .collect();
                    // The commit's compare on the namespace revision makes
                    // every version the one the read predicted; a secret
                    // sealed for another would never open. Say so loudly.
                    for c in &changes {
                        if let Some(want) = sealed_for.get(&c.key) {
                            if *want != c.version {
                                tracing::error!(
                                    ns, key = %c.key, sealed_for = want, version = c.version,
                                    "a secret was sealed for another version than it got"
                                );
                                return Err(CfgError::new(
                                    Reason::Internal,
                                    format!(
                                        "{}: sealed for version {want}, stored as {}",
                                        c.key, c.version
                                    ),
                                ));
                            }
                        }
                    }
                    return Ok(WriteResult {
                        revision: token.revision,
                        token: token.to_string(),
                        changes,
                        replayed: false,
                        dry_run: false,
                        diff: raw_diff,
                        warnings: Vec::new(),
                    });
                }
                // Something in the namespace changed since the read: again.
                ClientResponse::Conflict { .. } => continue,
                other => return Err(unexpected(&other)),
            }
        }
        Err(CfgError::new(
            Reason::Contended,
            format!("{ns} changed under {WRITE_ATTEMPTS_MAX} attempts in a row; retry"),
        ))
    }

    /// Read the namespace at `consistency`, apply `ops` to a copy and
    /// validate every environment the change affects: what was read, and
    /// the write planned from it.
    async fn evaluate(
        &self,
        ns: &str,
        ops: &[Op],
        consistency: ReadConsistency,
        access: &Access,
    ) -> Result<(Layer, Planned), CfgError> {
        let layer = self.load_layer(ns, "", AsOf::Latest, consistency).await?;
        let mut work = layer.clone();
        for op in ops {
            self.apply_op(&mut work, op).await?;
        }
        // Once secret, always secret: a key deleted as a secret comes back as one.
        secrets::keep_registry(&mut work);
        let differs = layer.leaves != work.leaves
            || layer.meta != work.meta
            || work.secrets.keys().any(|k| !layer.secrets.contains_key(k));
        if differs {
            // Validation also says which keys the schemas in force mark
            // `writeOnly`: they are stored as secrets.
            // Flag sets are compiled again only when the write touches a
            // flag, a segment or what the environment inherits.
            let flags_touched = layer
                .meta
                .keys()
                .chain(work.meta.keys())
                .filter(|k| {
                    k.starts_with(FLAG_KEY_PREFIX)
                        || k.starts_with(SEGMENT_KEY_PREFIX)
                        || k.as_str() == INHERITS_KEY
                })
                .any(|k| layer.meta.get(k) != work.meta.get(k));
            for k in self.validate_affected(&work, access, flags_touched).await? {
                work.secrets.entry(k).or_default();
            }
            secrets::keep_registry(&mut work);
        }
        let tombstones = self.tombstone_versions(&layer, &work).await?;
        let planned = self.core_ops(&layer, &work, &tombstones)?;
        let changes = planned.changes.clone();
        // Every key the write changes, judged before anything commits (or
        // a dry run reports): puts need `write`, deletes `delete`, schemas
        // and template settings (`$` keys) `admin`.
        for c in &changes {
            let action = if c.key == SECRETS_KEY {
                // The engine's own record of which keys are secrets: it
                // changes with a secret's write, which is judged itself.
                continue;
            } else if let Some(name) = c
                .key
                .strip_prefix(FLAG_KEY_PREFIX)
                .or_else(|| c.key.strip_prefix(SEGMENT_KEY_PREFIX))
            {
                // A flag or segment is judged by its name, as the
                // operation was before anything was read.
                access.check_key(Action::Flags, ns, name)?;
                continue;
            } else if c.key.starts_with('$') {
                Action::Admin
            } else if c.op == "delete" {
                Action::Delete
            } else {
                Action::Write
            };
            access.check_key(action, ns, &c.key)?;
        }
        Ok((layer, planned))
    }

    /// The changes (versions left 0) and raw diff of the write that applied
    /// at group revision `revision`, from the namespace just before and at it.
    async fn changes_at(
        &self,
        ns: &str,
        revision: u64,
    ) -> Result<(Vec<KeyChange>, Vec<diff::Change>), CfgError> {
        let stale = ReadConsistency::Stale;
        let before = self
            .load_layer(ns, "", AsOf::Revision(revision.saturating_sub(1)), stale)
            .await?;
        let after = self
            .load_layer(ns, "", AsOf::Revision(revision), stale)
            .await?;
        Ok((key_changes(&before, &after), layer_diff(&before, &after)))
    }

    /// If a write with this request id already applied, its result.
    pub(super) async fn replay(
        &self,
        ns: &str,
        request_id: u64,
        fingerprint: u64,
    ) -> Result<Option<WriteResult>, CfgError> {
        let resp = self
            .call(ClientRequest::Write {
                ns: ns.to_string(),
                request_id,
                fingerprint,
                compares: vec![Compare {
                    key: PROBE_KEY.to_string(),
                    version: u64::MAX,
                }],
                ns_revision: None,
                ops: vec![WriteOp::Delete {
                    key: PROBE_KEY.to_string(),
                }],
                meta: ChangeMeta::default(),
                // Never applies (the compare cannot hold): no record.
                audit: Default::default(),
            })
            .await?;
        match resp {
            ClientResponse::Written {
                token, versions, ..
            } => {
                self.wait_applied(ns, token).await?;
                // The first write's changes and diff, recomputed from the
                // namespace just before and at its revision. If retention
                // dropped those versions, the replay says only that it applied.
                let (changes, diff) = match self.changes_at(ns, token.revision).await {
                    Ok((changes, diff)) if changes.len() == versions.len() => {
                        let changes = changes
                            .into_iter()
                            .zip(versions)
                            .map(|(c, version)| KeyChange { version, ..c })
                            .filter(|c| c.key != SECRETS_KEY)
                            .collect();
                        (changes, diff)
                    }
                    Ok(_) => (Vec::new(), Vec::new()),
                    Err(e) if e.reason == Reason::HistoryCompacted => (Vec::new(), Vec::new()),
                    Err(e) => return Err(e),
                };
                Ok(Some(WriteResult {
                    revision: token.revision,
                    token: token.to_string(),
                    changes,
                    replayed: true,
                    dry_run: false,
                    diff,
                    warnings: Vec::new(),
                }))
            }
            ClientResponse::Conflict { .. } => Ok(None),
            other => Err(unexpected(&other)),
        }
    }

    /// Apply one operation to the working copy of a namespace.
    pub(super) async fn apply_op(&self, work: &mut Layer, op: &Op) -> Result<(), CfgError> {
        let key_err = |m: String| CfgError::new(Reason::InvalidKey, m);
        match op {
            Op::Put {
                key,
                value,
                if_version,
                secret,
            } => {
                tree::check_key(key).map_err(key_err)?;
                self.check_value(key, value)?;
                Self::check_version(work, key, *if_version)?;
                if let Some(a) = leaf_ancestor(work, key) {
                    return Err(CfgError::new(Reason::PathConflict,
                        format!("{a} holds a value, so {key} cannot be a key below it; change {a} instead (or merge into it)"),
                    ));
                }
                let below = tree::child_prefix(key);
                if work.leaves.keys().any(|k| k.starts_with(&below)) {
                    return Err(CfgError::new(Reason::PathConflict,
                        format!("{key} has keys below it; use a merge patch to change the subtree, or delete it first"),
                    ));
                }
                work.leaves.insert(key.clone(), value.clone());
                if let Some(spec) = secret {
                    work.secrets.insert(key.clone(), *spec);
                }
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
                        Reason::NotFound,
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
                secret,
            } => {
                tree::check_path(path).map_err(key_err)?;
                if !path.is_empty() {
                    Self::check_version(work, path, *if_version)?;
                }
                let mut doc = tree::assemble(&work.leaves, path).unwrap_or(Value::Null);
                json_patch::merge(&mut doc, patch);
                let before = secret.map(|_| work.leaves.clone());
                self.replace_subtree(work, path, &doc)?;
                // Every value the patch set (or changed) becomes a secret.
                if let (Some(spec), Some(before)) = (secret, before) {
                    for (k, v) in &work.leaves {
                        if tree::is_under(k, path) && before.get(k) != Some(v) {
                            work.secrets.insert(k.clone(), *spec);
                        }
                    }
                }
            }
            Op::Patch { path, patch } => {
                tree::check_path(path).map_err(key_err)?;
                let ops: json_patch::Patch =
                    serde_json::from_value(patch.clone()).map_err(|e| {
                        CfgError::new(Reason::BadPatch, format!("not an RFC 6902 JSON patch: {e}"))
                    })?;
                let mut doc =
                    tree::assemble(&work.leaves, path).unwrap_or_else(|| Value::Object(Map::new()));
                json_patch::patch(&mut doc, &ops).map_err(|e| {
                    let reason = if matches!(e.kind, json_patch::PatchErrorKind::TestFailed) {
                        Reason::PatchTestFailed
                    } else {
                        Reason::BadPatch
                    };
                    CfgError::new(reason, format!("patch failed: {e}"))
                })?;
                self.replace_subtree(work, path, &doc)?;
            }
            Op::SetFlag { .. }
            | Op::DeleteFlag { .. }
            | Op::EditFlag { .. }
            | Op::SetSegment { .. }
            | Op::DeleteSegment { .. } => self.apply_flag_op(work, op)?,
            Op::SetSchema { prefix, schema } => {
                tree::check_path(prefix).map_err(key_err)?;
                if let Err(e) = jsonschema::draft202012::new(schema) {
                    return Err(CfgError::new(
                        Reason::BadSchema,
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
                        Reason::NotFound,
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
            Op::SecretPaths { add, remove } => {
                let mut paths = secrets::own_secret_paths(work);
                for p in add {
                    tree::check_path(p).map_err(key_err)?;
                    paths.insert(p.clone());
                }
                for p in remove {
                    paths.remove(p);
                }
                if paths.len() > secrets::SECRET_PATHS_MAX {
                    return Err(CfgError::new(
                        Reason::TooManyOps,
                        format!(
                            "an environment marks at most {} secret paths",
                            secrets::SECRET_PATHS_MAX
                        ),
                    ));
                }
                if paths.is_empty() {
                    work.meta.remove(SECRET_PATHS_KEY);
                } else {
                    work.meta.insert(
                        SECRET_PATHS_KEY.to_string(),
                        Value::Array(paths.into_iter().map(Value::String).collect()),
                    );
                }
            }
            Op::Restore { key, value, secret } => match value {
                Some(v) if key.starts_with('$') => {
                    work.meta.insert(key.clone(), v.clone());
                }
                Some(v) => {
                    work.leaves.insert(key.clone(), v.clone());
                    if let Some(spec) = secret {
                        work.secrets.insert(key.clone(), *spec);
                    }
                }
                None => {
                    work.leaves.remove(key);
                    work.meta.remove(key);
                }
            },
        }
        Ok(())
    }

    /// Replace the subtree at `path` with `doc`, keeping leaf boundaries.
    pub(super) fn replace_subtree(
        &self,
        work: &mut Layer,
        path: &str,
        doc: &Value,
    ) -> Result<(), CfgError> {
        let existing: BTreeMap<String, Value> = work
            .leaves
            .iter()
            .filter(|(k, _)| tree::is_under(k, path))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(a) = leaf_ancestor(work, path) {
            return Err(CfgError::new(
                Reason::PathConflict,
                format!("{a} holds a value; patch {a} instead"),
            ));
        }
        let new = if doc.is_null() && !path.is_empty() {
            BTreeMap::new()
        } else {
            tree::decompose(doc, path, &existing).map_err(|m| CfgError::new(Reason::BadPatch, m))?
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

    /// The core operations turning `before` into `after`: secrets sealed
    /// for the version they will be (the write commits only if nothing in
    /// the namespace changed since `before` was read, so that version is
    /// the one the key gets).
    pub(super) fn core_ops(
        &self,
        before: &Layer,
        after: &Layer,
        tombstones: &BTreeMap<String, u64>,
    ) -> Result<Planned, CfgError> {
        let mut changes = key_changes(before, after);
        // A key marked secret whose stored value is plain and unchanged is
        // sealed now: once marked, every stored leaf is an envelope.
        for k in after.secrets.keys() {
            let convert = after.leaves.contains_key(k)
                && !before.secrets.contains_key(k)
                && before.leaves.get(k) == after.leaves.get(k);
            if convert {
                changes.push(KeyChange {
                    key: k.clone(),
                    op: "put",
                    version: 0,
                });
            }
        }
        changes.sort_by(|a, b| a.key.cmp(&b.key));
        let mut planned = Planned {
            ops: Vec::with_capacity(changes.len()),
            changes: Vec::new(),
            sealed_for: BTreeMap::new(),
            shown: after.clone(),
            sealed: 0,
        };
        for c in &changes {
            let k = &c.key;
            if c.op == "delete" {
                planned.ops.push(WriteOp::Delete { key: k.clone() });
                continue;
            }
            let b = after
                .leaves
                .get(k)
                .or_else(|| after.meta.get(k))
                .ok_or_else(|| {
                    CfgError::new(Reason::Internal, format!("{k:?} changed but has no value"))
                })?;
            if secrets::is_redaction(b) {
                return Err(CfgError::invalid(format!(
                    "{k}: {b} is a secret's redaction, not a value; write the value itself \
                     (a read with reveal shows it to those allowed)"
                )));
            }
            let value = match after.secrets.get(k) {
                Some(spec) if !k.starts_with('$') => {
                    let prior = before
                        .kvs
                        .get(k)
                        .map(|kv| kv.version)
                        .or_else(|| tombstones.get(k).copied())
                        .unwrap_or(0);
                    let version = prior + 1;
                    planned.sealed_for.insert(k.clone(), version);
                    planned
                        .shown
                        .leaves
                        .insert(k.clone(), secrets::redaction(version));
                    planned.sealed += 1;
                    self.seal_value(&after.ns, k, version, b, *spec)?
                }
                _ => serde_json::to_vec(b).map_err(|e| {
                    CfgError::new(Reason::Internal, format!("cannot encode {k:?}: {e}"))
                })?,
            };
            planned.ops.push(WriteOp::Put {
                key: k.clone(),
                value,
            });
        }
        planned.changes = changes;
        if planned.ops.len() > self.limits.txn_ops_max {
            return Err(CfgError::new(
                Reason::TooManyOps,
                format!(
                    "the write changes {} keys; at most {} per write",
                    planned.ops.len(),
                    self.limits.txn_ops_max
                ),
            ));
        }
        Ok(planned)
    }

    /// Roll a key (or, with `key` None, the whole namespace) back to what it
    /// held at `revision`, written as a new version.
    pub async fn rollback(
        &self,
        ns: &str,
        key: Option<&str>,
        revision: u64,
        allow_delete: bool,
        opts: &WriteOpts,
    ) -> Result<WriteResult, CfgError> {
        // Naming a key the caller may not read is refused before anything
        // is looked up, so the answer says nothing about the key's past.
        if let Some(k) = key {
            opts.access.check_key(Action::Read, ns, k)?;
        }
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
        // Revisions count the home region's writes and are shared by every
        // environment homed there, so a revision can predate a key or the
        // whole environment. Rolling back to it deletes: say so, and do it
        // only when asked to.
        let why = "(revisions count the writes of the environment's home region, \
                   shared by its environments)";
        let mut ops = Vec::new();
        let mut want = |k: &String, v: Option<&Value>| {
            ops.push(Op::Restore {
                key: k.clone(),
                value: v.cloned(),
                secret: None,
            })
        };
        let mut deleted: Vec<String> = Vec::new();
        match key {
            Some(key) => {
                tree::check_key(key).map_err(|m| CfgError::new(Reason::InvalidKey, m))?;
                if !current.kvs.contains_key(key) && !target.kvs.contains_key(key) {
                    return Err(CfgError::new(
                        Reason::NotFound,
                        format!("{key} was never written in {ns}"),
                    ));
                }
                let then = target.leaves.get(key);
                if then.is_none() && current.leaves.contains_key(key) {
                    if !allow_delete {
                        return Err(CfgError::new(
                            Reason::RollbackDeletes,
                            format!(
                                "{key} did not exist in {ns} at revision {revision} {why}: \
                                 rolling it back would delete it; allow deletion to do that"
                            ),
                        ));
                    }
                    deleted.push(key.to_string());
                }
                want(&key.to_string(), then);
            }
            None => {
                let empty_then = target.leaves.is_empty() && target.meta.is_empty();
                let held_now = current.leaves.len() + current.meta.len();
                if empty_then && held_now > 0 && !allow_delete {
                    return Err(CfgError::new(
                        Reason::RollbackDeletes,
                        format!(
                            "{ns} held no configuration at revision {revision} {why}: \
                             rolling back would delete all {held_now} of its keys, schemas \
                             and template settings; allow deletion to do that"
                        ),
                    ));
                }
                let all: BTreeSet<&String> = target
                    .leaves
                    .keys()
                    .chain(current.leaves.keys())
                    .chain(target.meta.keys())
                    .chain(current.meta.keys())
                    .collect();
                // The registry of secrets only grows: a rollback keeps it.
                for k in all.into_iter().filter(|k| *k != SECRETS_KEY) {
                    let v = target.leaves.get(k).or_else(|| target.meta.get(k));
                    let now = current.leaves.get(k).or_else(|| current.meta.get(k));
                    if v != now {
                        if v.is_none() {
                            deleted.push(k.clone());
                        }
                        want(k, v);
                    }
                }
            }
        }
        // A secret rolls back to its old plaintext, opened here and sealed
        // again as the new version (the caller sees neither).
        for op in &mut ops {
            if let Op::Restore {
                key,
                value: Some(v),
                secret,
            } = op
            {
                if let (Some(spec), Some(kv)) = (target.secrets.get(key), target.kvs.get(key)) {
                    *v = self.open_secret(ns, kv)?;
                    *secret = Some(*spec);
                }
            }
        }
        let mut opts = opts.clone();
        // What a rollback stores comes from the store, not over the wire.
        opts.secure_channel = true;
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
        let mut result = self.write(ns, ops, &opts).await?;
        if !deleted.is_empty() {
            result.warnings.push(format!(
                "deletes {} that did not exist at revision {revision}: {}",
                deleted.len(),
                deleted
                    .iter()
                    .map(|k| display_key(k))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(result)
    }
}
