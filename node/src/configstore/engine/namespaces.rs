//! Environments as namespaces: creating one (through the catalog), moving
//! its home region, listing them, and waiting for a new or moved namespace
//! to be known and applied in this region.

use super::*;
use crate::reason::Reason;
use meridian_core::types::MetaOp;

impl ConfigStore {
    /// Create a namespace (permission `admin` on it); audited.
    pub async fn create_namespace(
        &self,
        access: &Access,
        project: &str,
        environment: &str,
        spec: &CreateNs,
    ) -> Result<NamespaceInfo, CfgError> {
        let info = self
            .create_namespace_inner(access, project, environment, spec)
            .await?;
        access.audit_ok(
            &ns_name(project, environment),
            &[],
            &format!("namespace created, home {}", info.home_region),
        );
        Ok(info)
    }

    /// Move a namespace's home (see `move_namespace_inner`); audited.
    pub async fn move_namespace(
        &self,
        access: &Access,
        project: &str,
        environment: &str,
        to_region: &str,
    ) -> Result<NamespaceInfo, CfgError> {
        let info = self
            .move_namespace_inner(access, project, environment, to_region)
            .await?;
        access.audit_ok(
            &ns_name(project, environment),
            &[],
            &format!("namespace moved to {to_region}"),
        );
        Ok(info)
    }

    async fn create_namespace_inner(
        &self,
        access: &Access,
        project: &str,
        environment: &str,
        spec: &CreateNs,
    ) -> Result<NamespaceInfo, CfgError> {
        check_name("project", project)?;
        check_name("environment", environment)?;
        access.check_key(Action::Admin, &ns_name(project, environment), "")?;
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
                time_ms: now_ms(),
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
                Reason::NamespaceExists,
                format!("namespace {ns} already exists"),
            )),
            other => Err(unexpected(&other)),
        }
    }

    pub(super) fn info(&self, ns: &str, s: &NsSettings) -> NamespaceInfo {
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
            description: String::new(),
            owners: Vec::new(),
            labels: BTreeMap::new(),
        }
    }

    /// Change a namespace's description, owners and labels (permission
    /// `admin` on it). They are replicated metadata: any region takes the
    /// change, also while cut off, and concurrent changes of different
    /// fields all survive. Returns the namespace with the change applied.
    pub async fn describe_namespace(
        &self,
        access: &Access,
        ns: &str,
        d: &DescribeNs,
    ) -> Result<NamespaceInfo, CfgError> {
        access.check_key(Action::Admin, ns, "")?;
        check_description(d)?;
        let project = ns.split_once('/').map_or(ns, |(p, _)| p);
        // Catch up with the catalog first: a namespace created a moment ago
        // in another region must be found here too.
        let token = self.probe(CATALOG_NS).await?;
        let mut info = self
            .list_namespaces_at(&format!("{project}/"), token)
            .await?
            .into_iter()
            .find(|n| n.name == ns)
            .ok_or_else(|| {
                CfgError::new(Reason::UnknownNamespace, format!("no namespace {ns:?}"))
            })?;
        let meta = access
            .state()
            .namespaces
            .get(ns)
            .cloned()
            .unwrap_or_default();
        let mut ops = Vec::new();
        let mut put = |field: String, value: String| {
            ops.push(MetaOp::PutRecord {
                key: crate::auth::ns_record(ns, &field),
                value,
            })
        };
        let (mut description, mut owners, mut labels) =
            (meta.description, meta.owners, meta.labels);
        if let Some(v) = &d.description {
            put("description".into(), Value::from(v.clone()).to_string());
            description = v.clone();
        }
        if let Some(v) = &d.owners {
            put("owners".into(), Value::from(v.clone()).to_string());
            owners = v.clone();
        }
        for (k, v) in &d.set_labels {
            put(format!("label|{k}"), Value::from(v.clone()).to_string());
            labels.insert(k.clone(), v.clone());
        }
        for k in &d.remove_labels {
            ops.push(MetaOp::RemoveRecord {
                key: crate::auth::ns_record(ns, &format!("label|{k}")),
            });
            labels.remove(k);
        }
        for op in ops {
            self.core
                .edit_meta(op)
                .await
                .map_err(|(reason, message)| CfgError::new(reason, message))?;
        }
        (info.description, info.owners, info.labels) = (description, owners, labels);
        access.audit_ok(ns, &[], "namespace description, owners or labels changed");
        Ok(info)
    }

    /// The catalog entry of a namespace, read after catching up with the
    /// catalog (so it is at least as new as any change made before the call).
    pub(super) async fn catalog_entry(&self, ns: &str) -> Result<(NsSettings, u64), CfgError> {
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
                        Reason::UnknownNamespace,
                        format!("namespace {ns} does not exist"),
                    )
                }),
            other => Err(unexpected(&other)),
        }
    }

    /// Move a namespace's home region, online, and wait until the move is
    /// complete: reads go on throughout; writes stall (they are retried, see
    /// `call`) while the old home is frozen and the new one copies the data.
    async fn move_namespace_inner(
        &self,
        access: &Access,
        project: &str,
        environment: &str,
        to_region: &str,
    ) -> Result<NamespaceInfo, CfgError> {
        let ns = ns_name(project, environment);
        access.check_key(Action::Admin, &ns, "")?;
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
                    return Err(CfgError::new(Reason::Contended,
                        format!("the catalog entry of {ns} kept changing"),
                    ))
                }
                Ok(other) => return Err(unexpected(&other)),
                Err(e) if e.reason == Reason::InvalidRequest => {
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
                        Reason::Contended,
                        format!(
                            "{ns} moved to {} instead",
                            self.regions.get(settings.home as usize).map_or("?", |s| s)
                        ),
                    ));
                }
                return Ok(self.info(&ns, &settings));
            }
            if start.elapsed() > deadline {
                return Err(CfgError::new(Reason::Timeout,
                    format!(
                        "the move of {ns} to {to_region} is still under way after {} s; it continues in the background",
                        MOVE_DONE_WAIT_MS_MAX / 1000
                    ),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Namespaces in the catalog whose name starts with `prefix`, of those
    /// the caller may read something in.
    pub async fn list_namespaces(
        &self,
        access: &Access,
        prefix: &str,
    ) -> Result<Vec<NamespaceInfo>, CfgError> {
        let token = self.probe(CATALOG_NS).await?;
        let mut all = self.list_namespaces_at(prefix, token).await?;
        all.retain(|n| access.may_read_somewhere(&n.name));
        for n in &mut all {
            if let Some(m) = access.state().namespaces.get(&n.name) {
                n.description = m.description.clone();
                n.owners = m.owners.clone();
                n.labels = m.labels.clone();
            }
        }
        Ok(all)
    }

    /// The namespaces this region's catalog replica holds, without a round
    /// trip to the catalog's leader.
    pub(super) async fn list_namespaces_local(
        &self,
        prefix: &str,
    ) -> Result<Vec<NamespaceInfo>, CfgError> {
        self.list_namespaces_at(prefix, None).await
    }

    async fn list_namespaces_at(
        &self,
        prefix: &str,
        token: Option<RevisionToken>,
    ) -> Result<Vec<NamespaceInfo>, CfgError> {
        let q = ReadQuery::List {
            prefix: prefix.to_string(),
            start_after: String::new(),
            limit: PROJECT_ENVS_MAX,
        };
        match self.read(CATALOG_NS, q, Consistency::Stale, token).await? {
            ClientResponse::List { kvs, .. } => Ok(kvs
                .iter()
                .filter_map(|kv| {
                    // The nodes' own namespaces are nobody's environments.
                    if meridian_core::node::is_system_ns(&kv.key) {
                        return None;
                    }
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
    pub(super) async fn probe_new(
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
                Err(e) if e.reason == Reason::UnknownNamespace => last = e,
                other => return other,
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Err(last)
    }

    /// Create one of the node's own `_system/` namespaces, homed at `home`
    /// (quorum, `versions_max` versions per key); one that exists already
    /// is fine. Returns once its home knows it.
    pub(super) async fn create_system_ns(
        &self,
        sys: &str,
        home: u8,
        versions_max: u32,
    ) -> Result<(), CfgError> {
        debug_assert!(meridian_core::node::is_system_ns(sys));
        let settings = NsSettings {
            home,
            mode: ReplicationMode::Quorum,
            history_versions_max: versions_max,
            history_age_ms_max: 0,
            moving_to: None,
            adopt_revision: 0,
        };
        let resp = self
            .call(ClientRequest::CreateNamespace {
                ns: sys.to_string(),
                settings,
                request_id: rand::random::<u64>() | 1,
                time_ms: now_ms(),
            })
            .await?;
        let token = match resp {
            ClientResponse::Written { token, .. } | ClientResponse::Conflict { token } => token,
            other => return Err(unexpected(&other)),
        };
        self.wait_applied(CATALOG_NS, token).await?;
        // The home applies the catalog entry a moment after this region.
        for _ in 0..CATALOG_WAIT_TRIES_MAX {
            match self.probe(sys).await {
                Err(e) if e.reason == Reason::UnknownNamespace => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                other => return other.map(|_| ()),
            }
        }
        Err(CfgError::new(
            Reason::Unavailable,
            format!("{sys}: its home does not know it yet"),
        ))
    }

    /// Wait until this region applied every catalog change made before now.
    pub(super) async fn sync_catalog(&self) -> Result<(), CfgError> {
        if let Some(t) = self.probe(CATALOG_NS).await? {
            self.wait_applied(CATALOG_NS, t).await?;
        }
        Ok(())
    }

    pub(super) async fn wait_applied(
        &self,
        ns: &str,
        token: RevisionToken,
    ) -> Result<(), CfgError> {
        let q = ReadQuery::Get {
            key: INHERITS_KEY.to_string(),
        };
        self.read(ns, q, Consistency::Stale, Some(token)).await?;
        Ok(())
    }
}

/// Longest namespace description, in bytes; most owners and labels.
const DESCRIPTION_BYTES_MAX: usize = 1024;
const OWNERS_MAX: usize = 32;
const LABELS_MAX: usize = 64;

/// A label key or value as Kubernetes has them: at most 63 characters,
/// alphanumerics with '-', '_' or '.' inside (a value may be empty).
fn label_ok(s: &str, key: bool) -> bool {
    if s.is_empty() {
        return !key;
    }
    let b = s.as_bytes();
    s.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn check_description(d: &DescribeNs) -> Result<(), CfgError> {
    if d.description
        .as_ref()
        .is_some_and(|s| s.len() > DESCRIPTION_BYTES_MAX)
    {
        return Err(CfgError::invalid(format!(
            "a description is at most {DESCRIPTION_BYTES_MAX} bytes"
        )));
    }
    if let Some(o) = &d.owners {
        if o.len() > OWNERS_MAX {
            return Err(CfgError::invalid(format!("at most {OWNERS_MAX} owners")));
        }
        if let Some(bad) = o
            .iter()
            .find(|o| o.is_empty() || o.len() > 256 || o.chars().any(char::is_control))
        {
            return Err(CfgError::invalid(format!(
                "owner {bad:?}: 1-256 characters, none of them control characters"
            )));
        }
    }
    if d.set_labels.len() > LABELS_MAX {
        return Err(CfgError::invalid(format!("at most {LABELS_MAX} labels")));
    }
    for (k, v) in &d.set_labels {
        if !label_ok(k, true) || !label_ok(v, false) {
            return Err(CfgError::invalid(format!(
                "label {k}={v}: keys and values are at most 63 letters, digits, '-', '_' or '.', \
                 beginning and ending with a letter or digit (as Kubernetes labels)"
            )));
        }
    }
    if let Some(k) = d.remove_labels.iter().find(|k| !label_ok(k, true)) {
        return Err(CfgError::invalid(format!("{k:?} is not a label key")));
    }
    Ok(())
}
