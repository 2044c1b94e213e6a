//! Validation of a write before it commits: limits on values and keys, the
//! version compare, inheritance targets and cycles, and every environment the
//! write affects rendered and checked against its schemas.

use super::*;
use crate::reason::Reason;

impl ConfigStore {
    pub(super) fn check_value(&self, key: &str, v: &Value) -> Result<(), CfgError> {
        let n = v.to_string().len();
        if n > self.limits.value_bytes_max {
            return Err(CfgError::new(
                Reason::ValueTooLarge,
                format!(
                    "{key}: value is {n} bytes; at most {} bytes",
                    self.limits.value_bytes_max
                ),
            ));
        }
        if key.len() > self.limits.key_bytes_max {
            return Err(CfgError::new(
                Reason::KeyTooLong,
                format!(
                    "key is {} bytes; at most {}",
                    key.len(),
                    self.limits.key_bytes_max
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn check_version(
        layer: &Layer,
        key: &str,
        want: Option<u64>,
    ) -> Result<(), CfgError> {
        let Some(want) = want else { return Ok(()) };
        let have = layer
            .kvs
            .get(key)
            .filter(|kv| kv.value.is_some())
            .map_or(0, |kv| kv.version);
        if have != want {
            return Err(CfgError::new(
                Reason::CasConflict,
                format!("{key} is at version {have}, not {want}; nothing was written"),
            )
            .with_details(serde_json::json!({"key": key, "version": have})));
        }
        Ok(())
    }

    /// A parent given as an environment of the same project, or as a full
    /// `project/environment` name.
    pub(super) fn resolve_env(&self, ns: &str, parent: &str) -> Result<String, CfgError> {
        let full = if parent.contains('/') {
            parent.to_string()
        } else {
            let project = ns.split_once('/').map_or(ns, |(p, _)| p);
            ns_name(project, parent)
        };
        if full == ns {
            return Err(CfgError::new(
                Reason::ReferenceCycle,
                format!("{ns} cannot inherit from itself"),
            ));
        }
        Ok(full)
    }

    pub(super) async fn check_no_cycle(&self, ns: &str, parent: &str) -> Result<(), CfgError> {
        let mut lineage = layers::Lineage::new(ns);
        lineage.step(parent)?;
        let mut cur = parent.to_string();
        loop {
            let layer = self
                .load_layer(&cur, "$", AsOf::Latest, ReadConsistency::Linearizable)
                .await
                .map_err(|e| {
                    if e.reason == Reason::UnknownNamespace {
                        CfgError::new(
                            Reason::UnknownNamespace,
                            format!("cannot inherit from {cur}: no such namespace"),
                        )
                    } else {
                        e
                    }
                })?;
            let Some(p) = layer.parent() else {
                return Ok(());
            };
            lineage.step(&p)?;
            cur = p;
        }
    }

    /// Render and validate every environment the change to `work.ns` affects:
    /// itself and every environment that inherits from it, directly or not.
    /// Validate every environment the write to `work` affects. A
    /// violation's message quotes the offending value only if `access` may
    /// read every key the environment is made of: a rendered value can carry
    /// a referenced key's value, and a schema error must not become a way
    /// to read what the caller may not.
    ///
    /// Secrets stored before this write read as their redactions here
    /// (their plaintext is never opened to validate another key's change):
    /// a violation at a redaction is not counted, the secret having been
    /// checked when it was written. Returns the keys of `work` that the
    /// schemas in force mark `writeOnly` (to be stored as secrets).
    pub(super) async fn validate_affected(
        &self,
        work: &Layer,
        access: &Access,
        flags_touched: bool,
    ) -> Result<BTreeSet<String>, CfgError> {
        let ns = work.ns.as_str();
        let project = ns.split_once('/').map(|(p, _)| p);
        let mut envs: Vec<String> = vec![ns.to_string()];
        if let Some(project) = project {
            let mut parents: BTreeMap<String, String> = BTreeMap::new();
            // This region's replicas of the catalog and of the other
            // environments, as the other environments' layers below: a
            // linearizable catalog read would cost a round trip to the
            // catalog's leader on every write, and would still not order
            // the write after another environment's concurrent change.
            for info in self.list_namespaces_local(&format!("{project}/")).await? {
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
            // Environments that inherit from this one, however far down (a
            // chain that is broken or too deep is another write's problem).
            for env in parents.keys() {
                let mut lineage = layers::Lineage::new(env);
                let mut cur = env.clone();
                while let Some(p) = parents.get(&cur) {
                    if p == ns {
                        envs.push(env.clone());
                        break;
                    }
                    if lineage.step(p).is_err() {
                        break;
                    }
                    cur = p.clone();
                }
            }
        }
        let mut problems = Vec::new();
        let mut marks = BTreeSet::new();
        // The written environment's ancestors are read linearizably: a
        // schema or value committed in a parent before this write began must
        // bind it, and the commit's compare covers only this environment.
        // (Environments that inherit from it are read as this region holds
        // them; their own writes validate against this one in turn.)
        let mut ancestors: BTreeMap<String, Layer> = BTreeMap::new();
        for env in &envs {
            let mut chain = Vec::new();
            let mut lineage = layers::Lineage::new(env);
            let mut cur = Some(env.clone());
            while let Some(name) = cur {
                if !chain.is_empty() {
                    lineage.step(&name)?;
                }
                let layer = if name == ns {
                    work.clone()
                } else if let Some(l) = ancestors.get(&name) {
                    l.clone()
                } else if env == ns {
                    let l = self
                        .load_layer(&name, "", AsOf::Latest, ReadConsistency::Linearizable)
                        .await?;
                    ancestors.insert(name.clone(), l.clone());
                    l
                } else {
                    self.load_layer(&name, "", AsOf::Latest, ReadConsistency::Stale)
                        .await?
                };
                cur = layer.parent();
                chain.push(layer);
            }
            // Flags: the environment's effective set must still compile
            // (a parent's segment deleted, a prerequisite gone, ...).
            if flags_touched && flags::has_flags(&chain) {
                flags::compile_chain(&chain).map_err(|mut e| {
                    if env != ns {
                        e.message = format!("in {env} (inherits from {ns}): {}", e.message);
                    }
                    e
                })?;
            }
            let (leaves, vars) = effective(&chain);
            let schemas = effective_schemas(&chain);
            // Keys the schemas in force mark `writeOnly`, and keys under
            // paths the chain's settings mark secret.
            let paths = secrets::effective_secret_paths(&chain);
            let mut marked = secrets::schema_marks(&schemas, &leaves);
            marked.extend(secrets::path_marks(&paths, &leaves));
            if env == ns {
                marks = secrets::schema_marks(&schemas, &work.leaves);
                marks.extend(secrets::path_marks(&paths, &work.leaves));
            }
            // A message quotes no value where it could be a secret's or one
            // the caller may not read.
            let hidden = !marked.is_empty()
                || chain.iter().any(|l| !l.secrets.is_empty())
                || (access.enabled() && leaves.keys().any(|k| !access.may_read(env, k)));
            let secret_keys: BTreeSet<String> = effective_secrets(&chain, &leaves)
                .into_iter()
                .chain(marked.iter().cloned())
                .collect();
            let mut r = Renderer::new(&leaves, &vars, true).with_secrets(&secret_keys);
            let rendered = r.subtree("").map_err(|e| {
                let mut err = CfgError::from(e);
                if env != ns {
                    err.message = format!("in {env} (inherits from {ns}): {}", err.message);
                }
                err
            })?;
            for (prefix, schema) in schemas {
                let instance = match (&rendered, prefix.is_empty()) {
                    (_, true) => rendered.clone().unwrap_or(Value::Object(Map::new())),
                    (Some(_), false) => match r.subtree(&prefix)? {
                        Some(v) => v,
                        None => continue,
                    },
                    (None, false) => continue,
                };
                let validator = jsonschema::draft202012::new(&schema).map_err(|e| {
                    CfgError::new(Reason::BadSchema, format!("schema at {prefix:?}: {e}"))
                })?;
                for e in validator.iter_errors(&instance) {
                    if secrets::is_redaction(e.instance()) {
                        continue;
                    }
                    let message = if hidden {
                        format!(
                            "the value does not satisfy the schema's {:?} (not shown: it may be \
                             a secret, or {} may not read every key of {env})",
                            e.schema_path().as_str(),
                            access.principal.name
                        )
                    } else {
                        e.to_string()
                    };
                    problems.push(serde_json::json!({
                        "environment": env,
                        "schema_prefix": prefix,
                        "instance_path": e.instance_path().as_str(),
                        "schema_path": e.schema_path().as_str(),
                        "message": message,
                    }));
                }
            }
        }
        if problems.is_empty() {
            return Ok(marks);
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
        Err(CfgError::new(Reason::SchemaViolation, msg).with_details(Value::Array(problems)))
    }
}
