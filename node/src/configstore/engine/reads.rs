//! Reads of configuration: a leaf or subtree (rendered or raw, as of a
//! revision or time), bulk gets, listings with globs and search, history,
//! schemas, templates, and diffs between versions, revisions and
//! environments.

use super::*;
use crate::reason::Reason;

impl ConfigStore {
    /// The value at `path` (a leaf or a whole subtree as one object).
    pub async fn get(
        &self,
        ns: &str,
        path: &str,
        opts: &ReadOpts,
        default: Option<Value>,
    ) -> Result<GetResult, CfgError> {
        tree::check_path(path).map_err(|m| CfgError::new(Reason::InvalidKey, m))?;
        check_path_read(&opts.access, ns, path)?;
        let mut chain = self.load_chain(ns, path, opts).await?;
        // A reveal of one secret the caller may not reveal is refused, not
        // answered with its redaction (a subtree reveals what it may).
        if opts.reveal && chain.iter().any(|l| l.secrets.contains_key(path)) {
            opts.access.check_key(Action::Reveal, ns, path)?;
        }
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
                    Reason::NotFound,
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
            tree::check_key(p).map_err(|m| CfgError::new(Reason::InvalidKey, m))?;
            check_path_read(&opts.access, ns, p)?;
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
        tree::check_path(prefix).map_err(|m| CfgError::new(Reason::InvalidKey, m))?;
        let matcher = if glob.is_empty() {
            None
        } else {
            Some(tree::glob(glob).map_err(CfgError::invalid)?)
        };
        if opts.reveal && !search.is_empty() {
            return Err(CfgError::invalid(
                "a search never matches secrets' plaintext, so it cannot reveal them: \
                 search without reveal, then read the keys found with reveal",
            ));
        }
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

    /// Every retained version of a key, oldest first; with `reveal`, a
    /// secret's versions in plaintext (needs `reveal` on the key).
    pub async fn history(
        &self,
        access: &Access,
        ns: &str,
        key: &str,
        reveal: bool,
    ) -> Result<Vec<Entry>, CfgError> {
        tree::check_key(key).map_err(|m| CfgError::new(Reason::InvalidKey, m))?;
        access.check_key(Action::Read, ns, key)?;
        let token = self.probe(ns).await?;
        let q = ReadQuery::History {
            key: key.to_string(),
        };
        match self.read(ns, q, Consistency::Stale, token).await? {
            ClientResponse::History { versions, .. } => {
                if versions.is_empty() || versions.iter().all(|v| v.version == 0) {
                    return Err(CfgError::new(
                        Reason::NotFound,
                        format!("{key:?} was never written in {ns}"),
                    ));
                }
                let mut entries: Vec<Entry> = versions.iter().map(entry).collect();
                let secret = versions
                    .iter()
                    .any(|v| v.value.as_deref().is_some_and(crate::secrets::is_envelope));
                if reveal && secret {
                    access.check_key(Action::Reveal, ns, key)?;
                    self.reveal_history(access, ns, key, &versions, &mut entries)?;
                }
                Ok(entries)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// The schemas attached in this namespace, by prefix.
    pub async fn schemas(
        &self,
        access: &Access,
        ns: &str,
    ) -> Result<BTreeMap<String, Value>, CfgError> {
        access.check_namespace_read(ns)?;
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
        access: &Access,
        ns: &str,
    ) -> Result<(Option<String>, Option<Map<String, Value>>), CfgError> {
        access.check_namespace_read(ns)?;
        let l = self
            .load_layer(ns, "$", AsOf::Latest, ReadConsistency::Linearizable)
            .await?;
        let vars = l.meta.get(VARS_KEY).and_then(Value::as_object).cloned();
        Ok((l.parent(), vars))
    }

    pub async fn diff_versions(
        &self,
        access: &Access,
        ns: &str,
        key: &str,
        from_version: u64,
        to_version: u64,
    ) -> Result<Vec<diff::Change>, CfgError> {
        // A diff of a secret shows that it changed, never its values.
        let h = self.history(access, ns, key, false).await?;
        let pick = |v: u64| -> Result<Option<Value>, CfgError> {
            if v == 0 {
                return Ok(None);
            }
            h.iter()
                .find(|e| e.version == v)
                .map(|e| e.value.clone())
                .ok_or_else(|| {
                    CfgError::new(
                        Reason::HistoryCompacted,
                        format!("version {v} of {key:?} is not retained (or never existed)"),
                    )
                })
        };
        let (a, b) = (pick(from_version)?, pick(to_version)?);
        Ok(diff::diff(a.as_ref(), b.as_ref()))
    }

    pub async fn diff_revisions(
        &self,
        access: &Access,
        ns: &str,
        path: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<diff::Change>, CfgError> {
        tree::check_path(path).map_err(|m| CfgError::new(Reason::InvalidKey, m))?;
        let lin = ReadConsistency::Linearizable;
        let mut a = self.load_layer(ns, path, AsOf::Revision(from), lin).await?;
        let mut b = self.load_layer(ns, path, AsOf::Revision(to), lin).await?;
        a.restrict(access, ns);
        b.restrict(access, ns);
        let va = tree::assemble(&a.leaves, path);
        let vb = tree::assemble(&b.leaves, path);
        Ok(diff::diff(va.as_ref(), vb.as_ref()))
    }

    /// The effective (or raw) configuration of two environments compared.
    pub async fn diff_envs(
        &self,
        access: &Access,
        from_ns: &str,
        to_ns: &str,
        path: &str,
        raw: bool,
    ) -> Result<Vec<diff::Change>, CfgError> {
        let opts = ReadOpts {
            access: access.clone(),
            raw,
            as_of: AsOf::Latest,
            consistency: ReadConsistency::Linearizable,
            reveal: false,
        };
        let a = self.get(from_ns, path, &opts, Some(Value::Null)).await?;
        let b = self.get(to_ns, path, &opts, Some(Value::Null)).await?;
        let va = a.found.then_some(a.value);
        let vb = b.found.then_some(b.value);
        Ok(diff::diff(va.as_ref(), vb.as_ref()))
    }
}

/// A read that names a path: refused unless the caller's rules match the
/// path itself (a subtree's values are then filtered key by key), decided by
/// the name alone so a refusal says nothing about what exists. The whole
/// environment (the empty path) needs only some readable key.
fn check_path_read(access: &Access, ns: &str, path: &str) -> Result<(), CfgError> {
    if path.is_empty() {
        Ok(access.check_namespace_read(ns)?)
    } else {
        Ok(access.check_key(Action::Read, ns, path)?)
    }
}
