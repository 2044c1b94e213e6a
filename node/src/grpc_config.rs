//! The gRPC `Config` service: translates `meridian.v1.Config` requests into
//! configuration-engine calls (JSON travels as text) and engine errors into
//! statuses with the same stable reasons as the HTTP API.

use crate::auth::{Access, Authority};
use crate::reason::Reason;
use std::pin::Pin;

use futures::Stream;
use meridian_core::types::AsOf;
use meridian_proto::v1::config_server::Config;
use meridian_proto::v1::*;
use serde_json::{Map, Value};
use tonic::{Request, Response, Status};

use crate::configstore::engine::{
    self, ns_name, ConfigStore, CreateNs, Entry, FlagEdit, Op, ReadConsistency, ReadOpts,
    WriteOpts, WriteResult,
};
use crate::configstore::{diff, CfgError};

#[derive(Clone)]
pub struct ConfigApi {
    store: ConfigStore,
    auth: Authority,
}

impl ConfigApi {
    pub fn new(store: ConfigStore, auth: Authority) -> ConfigApi {
        ConfigApi { store, auth }
    }

    fn access<T>(&self, r: &Request<T>) -> Result<Access, Status> {
        self.auth.grpc(r).map_err(crate::grpc::auth_status)
    }
}

fn st(e: CfgError) -> Status {
    e.to_status()
}

fn ns_of(r: Option<NamespaceRef>) -> Result<String, Status> {
    let r = r.ok_or_else(|| st(CfgError::invalid("ns (project, environment) is required")))?;
    if r.project.is_empty() || r.environment.is_empty() {
        return Err(st(CfgError::invalid(
            "ns needs a project and an environment",
        )));
    }
    Ok(ns_name(&r.project, &r.environment))
}

fn json(field: &str, s: &str) -> Result<Value, Status> {
    serde_json::from_str(s).map_err(|e| {
        st(CfgError::new(
            Reason::InvalidJson,
            format!("{field} is not valid JSON: {e}"),
        ))
    })
}

fn read_opts(access: &Access, r: Option<ConfigReadOptions>) -> Result<ReadOpts, Status> {
    let r = r.unwrap_or_default();
    let as_of = match (r.revision, r.time_ms) {
        (0, 0) => AsOf::Latest,
        (rev, 0) => AsOf::Revision(rev),
        (0, t) => AsOf::TimeMs(t),
        _ => return Err(st(CfgError::invalid("give revision or time_ms, not both"))),
    };
    Ok(ReadOpts {
        access: access.clone(),
        raw: r.raw,
        as_of,
        consistency: match (r.stale, r.max_staleness_ms) {
            (true, 0) => ReadConsistency::Stale,
            (false, 0) => ReadConsistency::Linearizable,
            (false, ms) => ReadConsistency::Bounded { staleness_ms: ms },
            (true, _) => {
                return Err(st(CfgError::invalid(
                    "give stale or max_staleness_ms (bounded), not both",
                )))
            }
        },
        reveal: r.reveal,
    })
}

fn secrets_status(
    keyring: crate::secrets::KeyringStatus,
    census: crate::configstore::engine::SecretsCensus,
) -> SecretsStatusResponse {
    let (active_kek, versions, keyring_error) = match keyring.keyring {
        Ok((active, versions)) => (
            active,
            versions
                .into_iter()
                .map(|(version, check)| KekVersion {
                    version,
                    fingerprint: crate::auth::tokens::hex(&check),
                })
                .collect(),
            String::new(),
        ),
        Err(e) => (0, Vec::new(), e),
    };
    SecretsStatusResponse {
        keyring_file: keyring
            .file
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        keyring_error,
        active_kek,
        versions,
        namespaces: census.namespaces as u64,
        secret_versions: census.secret_versions,
        by_kek: census.by_kek.into_iter().collect(),
        rewrapped: census.rewrapped,
    }
}

fn secret_spec(s: Option<SecretSpec>) -> Option<crate::configstore::engine::SecretSpec> {
    s.map(|s| crate::configstore::engine::SecretSpec {
        expires_ms: s.expires_at_ms,
        rotate_every_ms: s.rotate_every_ms,
    })
}

fn entry(e: Entry) -> ConfigEntry {
    ConfigEntry {
        key: e.key,
        value_json: e.value.map(|v| v.to_string()).unwrap_or_default(),
        version: e.version,
        revision: e.revision,
        author: e.author,
        message: e.message,
        time_ms: e.time_ms,
        deleted: e.deleted,
        inherited_from: e.inherited_from.unwrap_or_default(),
    }
}

fn changes(d: Vec<diff::Change>) -> Vec<DiffChange> {
    d.into_iter()
        .map(|c| DiffChange {
            path: c.path,
            op: c.op.to_string(),
            from_json: c.from.map(|v| v.to_string()).unwrap_or_default(),
            to_json: c.to.map(|v| v.to_string()).unwrap_or_default(),
        })
        .collect()
}

fn write_resp(r: WriteResult) -> ConfigWriteResponse {
    ConfigWriteResponse {
        revision: r.revision,
        token: r.token,
        changes: r
            .changes
            .into_iter()
            .map(|c| KeyChange {
                key: c.key,
                op: c.op.to_string(),
                version: c.version,
            })
            .collect(),
        replayed: r.replayed,
        dry_run: r.dry_run,
        diff: changes(r.diff),
        warnings: r.warnings,
    }
}

fn op(o: ConfigOp) -> Result<Op, Status> {
    use config_op::Op as P;
    let missing = || st(CfgError::invalid("an op with no operation set"));
    Ok(match o.op.ok_or_else(missing)? {
        P::Put(p) => Op::Put {
            value: json(&format!("the value of {}", p.key), &p.value_json)?,
            key: p.key,
            if_version: p.if_version,
            secret: secret_spec(p.secret),
        },
        P::Delete(d) => Op::Delete {
            key: d.key,
            recursive: d.recursive,
            if_version: d.if_version,
        },
        P::Merge(m) => Op::Merge {
            patch: json(&format!("the merge patch for {:?}", m.path), &m.patch_json)?,
            path: m.path,
            if_version: m.if_version,
            secret: secret_spec(m.secret),
        },
        P::Patch(p) => Op::Patch {
            patch: json(&format!("the JSON patch for {:?}", p.path), &p.patch_json)?,
            path: p.path,
        },
        P::SetSchema(s) => Op::SetSchema {
            schema: json(
                &format!("the schema for prefix {:?}", s.prefix),
                &s.schema_json,
            )?,
            prefix: s.prefix,
        },
        P::DeleteSchema(d) => Op::DeleteSchema { prefix: d.prefix },
        P::SetTemplate(t) => {
            let inherits = match (t.inherits, t.clear_inherits) {
                (Some(_), true) => {
                    return Err(st(CfgError::invalid(
                        "give a parent environment to inherit from or clear it, not both",
                    )))
                }
                (Some(p), false) => Some(Some(p)),
                (None, true) => Some(None),
                (None, false) => None,
            };
            let vars = match t.vars_json {
                None => None,
                Some(v) => match json("the template variables", &v)? {
                    Value::Object(m) => Some(m),
                    _ => {
                        return Err(st(CfgError::invalid(
                            "the template variables must be a JSON object",
                        )))
                    }
                },
            };
            Op::SetTemplate { inherits, vars }
        }
        P::SecretPaths(s) => Op::SecretPaths {
            add: s.add,
            remove: s.remove,
        },
        P::SetFlag(f) => Op::SetFlag {
            definition: json(
                &format!("the definition of flag {:?}", f.key),
                &f.definition_json,
            )?,
            key: f.key,
        },
        P::DeleteFlag(f) => Op::DeleteFlag { key: f.key },
        P::EditFlag(f) => {
            use meridian_proto::v1::edit_flag_op::Edit;
            let edit = match f.edit {
                Some(Edit::Enabled(enabled)) => FlagEdit::State { enabled },
                Some(Edit::Rollout(r)) => FlagEdit::Rollout {
                    variant: (!r.variant.is_empty()).then_some(r.variant),
                    percent_milli: r.percent_milli,
                },
                Some(Edit::Target(t)) => FlagEdit::Target {
                    segment: t.segment,
                    variant: t.variant,
                },
                None => {
                    return Err(st(CfgError::invalid(
                        "an edit of a flag needs enabled, rollout or target",
                    )))
                }
            };
            Op::EditFlag { key: f.key, edit }
        }
        P::SetSegment(s) => Op::SetSegment {
            rule: json(&format!("the rule of segment {:?}", s.name), &s.rule_json)?,
            name: s.name,
        },
        P::DeleteSegment(s) => Op::DeleteSegment { name: s.name },
    })
}

/// A write's options: who, why, the idempotency key, and whether the
/// caller's connection is TLS (secrets need it, unless configured not to).
fn write_opts(
    access: Access,
    author: String,
    message: String,
    idempotency_key: Option<String>,
    dry_run: bool,
) -> WriteOpts {
    WriteOpts {
        secure_channel: access.secure_channel(),
        access,
        author,
        message,
        idempotency_key,
        dry_run,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchConfigEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Config for ConfigApi {
    async fn create_namespace(
        &self,
        r: Request<CreateNamespaceRequest>,
    ) -> Result<Response<NamespaceInfo>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        let spec = CreateNs {
            home_region: r.home_region,
            mode: r.mode,
            rpo_budget_ms: r.rpo_budget_ms,
            history_versions_max: r.history_versions_max,
            history_age_ms_max: r.history_age_ms_max,
        };
        let i = self
            .store
            .create_namespace(&access, &r.project, &r.environment, &spec)
            .await
            .map_err(st)?;
        Ok(Response::new(info(i)))
    }

    async fn move_namespace(
        &self,
        r: Request<MoveNamespaceRequest>,
    ) -> Result<Response<NamespaceInfo>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        let i = self
            .store
            .move_namespace(&access, &r.project, &r.environment, &r.home_region)
            .await
            .map_err(st)?;
        Ok(Response::new(info(i)))
    }

    async fn list_namespaces(
        &self,
        r: Request<ListNamespacesRequest>,
    ) -> Result<Response<ListNamespacesResponse>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        let prefix = if r.project.is_empty() {
            String::new()
        } else {
            format!("{}/", r.project)
        };
        let list = self
            .store
            .list_namespaces(&access, &prefix)
            .await
            .map_err(st)?;
        Ok(Response::new(ListNamespacesResponse {
            namespaces: list.into_iter().map(info).collect(),
        }))
    }

    async fn describe_namespace(
        &self,
        r: Request<DescribeNamespaceRequest>,
    ) -> Result<Response<NamespaceInfo>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        let ns = ns_of(r.ns)?;
        let d = crate::configstore::engine::DescribeNs {
            description: r.description,
            owners: r.set_owners.then_some(r.owners),
            set_labels: r.set_labels.into_iter().collect(),
            remove_labels: r.remove_labels,
        };
        let i = self
            .store
            .describe_namespace(&access, &ns, &d)
            .await
            .map_err(st)?;
        Ok(Response::new(info(i)))
    }

    async fn get_config(
        &self,
        r: Request<GetConfigRequest>,
    ) -> Result<Response<GetConfigResponse>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        let ns = ns_of(r.ns)?;
        let default = match r.default_json {
            None => None,
            Some(d) => Some(json("the default value", &d)?),
        };
        let g = self
            .store
            .get(&ns, &r.path, &read_opts(&access, r.read)?, default)
            .await
            .map_err(st)?;
        Ok(Response::new(GetConfigResponse {
            path: g.path,
            found: g.found,
            defaulted: g.defaulted,
            value_json: g.value.to_string(),
            token: g.token,
        }))
    }

    async fn bulk_get(
        &self,
        r: Request<BulkGetRequest>,
    ) -> Result<Response<BulkGetResponse>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        let ns = ns_of(r.ns)?;
        let mut defaults = Map::new();
        for (k, v) in r.defaults_json {
            let value = json(&format!("the default value of {k}"), &v)?;
            defaults.insert(k, value);
        }
        let (values, missing, token) = self
            .store
            .bulk_get(&ns, &r.keys, &defaults, &read_opts(&access, r.read)?)
            .await
            .map_err(st)?;
        Ok(Response::new(BulkGetResponse {
            values_json: values
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect(),
            missing,
            token,
        }))
    }

    async fn list_config(
        &self,
        r: Request<ListConfigRequest>,
    ) -> Result<Response<ListConfigResponse>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        let ns = ns_of(r.ns)?;
        let limit = if r.limit == 0 { 100 } else { r.limit as usize };
        let l = self
            .store
            .list(
                &ns,
                &r.prefix,
                &r.glob,
                &r.search,
                limit,
                &r.page_token,
                &read_opts(&access, r.read)?,
            )
            .await
            .map_err(st)?;
        Ok(Response::new(ListConfigResponse {
            entries: l.entries.into_iter().map(entry).collect(),
            next_page_token: l.next_page_token,
            token: l.token,
        }))
    }

    async fn write(
        &self,
        r: Request<ConfigWriteRequest>,
    ) -> Result<Response<ConfigWriteResponse>, Status> {
        self.write_common(self.access(&r)?, r.into_inner(), false)
            .await
    }

    async fn validate(
        &self,
        r: Request<ConfigWriteRequest>,
    ) -> Result<Response<ConfigWriteResponse>, Status> {
        self.write_common(self.access(&r)?, r.into_inner(), true)
            .await
    }

    async fn config_history(
        &self,
        r: Request<ConfigHistoryRequest>,
    ) -> Result<Response<ConfigHistoryResponse>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        let ns = ns_of(r.ns)?;
        let h = self
            .store
            .history(&access, &ns, &r.key, r.reveal)
            .await
            .map_err(st)?;
        Ok(Response::new(ConfigHistoryResponse {
            versions: h.into_iter().map(entry).collect(),
        }))
    }

    async fn diff(&self, r: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        let reference = r.ns.clone().unwrap_or_default();
        let ns = ns_of(r.ns)?;
        let d = match r.what {
            Some(diff_request::What::Versions(v)) => {
                self.store
                    .diff_versions(&access, &ns, &v.key, v.from_version, v.to_version)
                    .await
            }
            Some(diff_request::What::Revisions(v)) => {
                self.store
                    .diff_revisions(&access, &ns, &v.path, v.from_revision, v.to_revision)
                    .await
            }
            Some(diff_request::What::Environments(e)) => {
                let other = ns_name(&reference.project, &e.other_environment);
                self.store
                    .diff_envs(&access, &other, &ns, &e.path, e.raw)
                    .await
            }
            None => Err(CfgError::invalid(
                "say what to diff: versions, revisions or environments",
            )),
        }
        .map_err(st)?;
        Ok(Response::new(DiffResponse {
            changes: changes(d),
        }))
    }

    async fn rollback(
        &self,
        r: Request<RollbackRequest>,
    ) -> Result<Response<ConfigWriteResponse>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        let ns = ns_of(r.ns)?;
        let key = (!r.key.is_empty()).then_some(r.key.as_str());
        let opts = write_opts(access, r.author, r.message, None, false);
        let w = self
            .store
            .rollback(&ns, key, r.revision, r.allow_delete, &opts)
            .await
            .map_err(st)?;
        Ok(Response::new(write_resp(w)))
    }

    async fn get_template(
        &self,
        r: Request<NamespaceRef>,
    ) -> Result<Response<TemplateResponse>, Status> {
        let access = self.access(&r)?;
        let ns = ns_of(Some(r.into_inner()))?;
        let (inherits, vars) = self.store.template(&access, &ns).await.map_err(st)?;
        Ok(Response::new(TemplateResponse {
            inherits: inherits.unwrap_or_default(),
            vars_json: Value::Object(vars.unwrap_or_default()).to_string(),
        }))
    }

    async fn secrets_status(
        &self,
        r: Request<SecretsStatusRequest>,
    ) -> Result<Response<SecretsStatusResponse>, Status> {
        let access = self.access(&r)?;
        let (keyring, census) = self
            .store
            .secrets_census(&access, r.get_ref().reload)
            .await
            .map_err(st)?;
        Ok(Response::new(secrets_status(keyring, census)))
    }

    async fn rewrap_secrets(
        &self,
        r: Request<RewrapSecretsRequest>,
    ) -> Result<Response<SecretsStatusResponse>, Status> {
        let access = self.access(&r)?;
        let census = self.store.rewrap_secrets(&access).await.map_err(st)?;
        let keyring = self.store.secrets_keyring();
        Ok(Response::new(secrets_status(keyring, census)))
    }

    async fn list_secrets(
        &self,
        r: Request<ListSecretsRequest>,
    ) -> Result<Response<ListSecretsResponse>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        let ns = ns_of(r.ns)?;
        let list = self
            .store
            .list_secrets(&access, &ns, r.due_only)
            .await
            .map_err(st)?;
        let (own, inherited) = self.store.secret_paths(&access, &ns).await.map_err(st)?;
        Ok(Response::new(ListSecretsResponse {
            secret_paths: own.into_iter().collect(),
            inherited_secret_paths: inherited.into_iter().collect(),
            secrets: list
                .into_iter()
                .map(|s| SecretInfo {
                    key: s.key,
                    version: s.version,
                    revision: s.revision,
                    time_ms: s.time_ms,
                    author: s.author,
                    expires_at_ms: s.expires_at_ms,
                    rotate_every_ms: s.rotate_every_ms,
                    due: s.due,
                    expired: s.expired,
                    deleted: s.deleted,
                    destroyed: s.destroyed,
                })
                .collect(),
        }))
    }

    async fn destroy_secret_versions(
        &self,
        r: Request<DestroySecretVersionsRequest>,
    ) -> Result<Response<DestroySecretVersionsResponse>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        let ns = ns_of(r.ns)?;
        let d = self
            .store
            .destroy_secret(&access, &ns, &r.key, &r.versions)
            .await
            .map_err(st)?;
        Ok(Response::new(DestroySecretVersionsResponse {
            key: d.key,
            destroyed: d.destroyed,
            already_destroyed: d.already_destroyed,
        }))
    }

    async fn undelete_secret(
        &self,
        r: Request<UndeleteSecretRequest>,
    ) -> Result<Response<ConfigWriteResponse>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        let ns = ns_of(r.ns)?;
        let opts = write_opts(access, r.author, r.message, None, false);
        let version = (r.version != 0).then_some(r.version);
        let w = self
            .store
            .undelete_secret(&ns, &r.key, version, &opts)
            .await
            .map_err(st)?;
        Ok(Response::new(write_resp(w)))
    }

    async fn list_flags(
        &self,
        r: Request<ListFlagsRequest>,
    ) -> Result<Response<ListFlagsResponse>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        let ns = ns_of(r.ns)?;
        let view = self
            .store
            .flags(&ns, &read_opts(&access, r.options)?)
            .await
            .map_err(st)?;
        Ok(Response::new(ListFlagsResponse {
            flags: view
                .flags
                .into_iter()
                .map(|f| FlagInfo {
                    key: f.key,
                    definition_json: f.definition.to_string(),
                    inherited_from: f.inherited_from.unwrap_or_default(),
                    version: f.version,
                })
                .collect(),
            segments: view
                .segments
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect(),
            flagd_json: if r.flagd {
                view.set.to_json().to_string()
            } else {
                String::new()
            },
            revision: view.revision,
            token: view.token,
        }))
    }

    async fn report_impressions(
        &self,
        r: Request<ReportImpressionsRequest>,
    ) -> Result<Response<ReportImpressionsResponse>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        let ns = ns_of(r.ns)?;
        let cells: Vec<meridian_flags::Impression> = r
            .cells
            .into_iter()
            .map(|c| meridian_flags::Impression {
                window_start_s: c.window_start_s,
                flag: c.flag,
                variant: c.variant,
                count: c.count,
            })
            .collect();
        let counted = self
            .store
            .report_impressions(&access, &ns, &cells)
            .map_err(st)?;
        Ok(Response::new(ReportImpressionsResponse { counted }))
    }

    async fn list_impressions(
        &self,
        r: Request<ListImpressionsRequest>,
    ) -> Result<Response<ListImpressionsResponse>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        let ns = ns_of(r.ns)?;
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let since = if r.since_s == 0 {
            now_s.saturating_sub(86_400)
        } else {
            r.since_s
        };
        let until = if r.until_s == 0 { u64::MAX } else { r.until_s };
        let flag = (!r.flag.is_empty()).then_some(r.flag.as_str());
        let view = self
            .store
            .impressions(&access, &ns, flag, since, until)
            .await
            .map_err(st)?;
        Ok(Response::new(ListImpressionsResponse {
            flags: view
                .flags
                .into_iter()
                .map(|f| FlagImpressions {
                    windows: f
                        .windows
                        .iter()
                        .flat_map(|w| {
                            w.variants.iter().map(|(v, n)| ImpressionCell {
                                flag: f.flag.clone(),
                                variant: v.clone(),
                                count: *n,
                                window_start_s: w.start_s,
                                window_s: w.window_s,
                            })
                        })
                        .collect(),
                    flag: f.flag,
                    total: f.total,
                    variants: f.variants.into_iter().collect(),
                })
                .collect(),
            truncated: view.truncated,
            flush_ms: view.flush_ms,
        }))
    }

    async fn evaluate_flag(
        &self,
        r: Request<EvaluateFlagRequest>,
    ) -> Result<Response<EvaluateFlagResponse>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        let ns = ns_of(r.ns)?;
        let ctx = if r.context_json.trim().is_empty() {
            meridian_flags::Context::empty()
        } else {
            match json("the context", &r.context_json)? {
                Value::Object(m) => meridian_flags::Context::new(m)
                    .map_err(|(_, msg)| st(CfgError::invalid(msg)))?,
                _ => return Err(st(CfgError::invalid("the context is a JSON object"))),
            }
        };
        let compiled = self.store.compiled_flags(&ns, &access).await.map_err(st)?;
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // An operator's question, not a user served: no impression.
        let res =
            compiled
                .evaluator
                .evaluate_uncounted(&r.key, &ctx, now_s, meridian_flags::Expect::Any);
        let (error_code, error_message) = res
            .error
            .map(|(c, m)| (c.as_str().to_string(), m))
            .unwrap_or_default();
        Ok(Response::new(EvaluateFlagResponse {
            key: r.key,
            value_json: res.value.map(Value::to_string),
            variant: res.variant.unwrap_or_default().to_string(),
            reason: res.reason.as_str().to_string(),
            error_code,
            error_message,
            metadata_json: res.metadata.map_or_else(
                || "{}".to_string(),
                |m| Value::Object(m.clone()).to_string(),
            ),
            targeting_key_missing: res.targeting_key_missing,
            revision: compiled.revision(),
        }))
    }

    type WatchConfigStream = WatchStream;

    async fn watch_config(
        &self,
        r: Request<WatchConfigRequest>,
    ) -> Result<Response<Self::WatchConfigStream>, Status> {
        let access = self.access(&r)?;
        let r = r.into_inner();
        let ns = ns_of(r.ns)?;
        let rx = self
            .store
            .watch(&access, &ns, &r.path, r.raw, &r.resume_token)
            .await
            .map_err(st)?;
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            let item = rx.recv().await?;
            let item = match item {
                Ok(ev) => Ok(WatchConfigEvent {
                    changes: ev.changes.into_iter().map(entry).collect(),
                    snapshot: ev.snapshot,
                    token: ev.token,
                    expiring: ev
                        .expiring
                        .into_iter()
                        .map(|x| ExpiringSecret {
                            key: x.key,
                            version: x.version,
                            expires_at_ms: x.expires_at_ms,
                        })
                        .collect(),
                }),
                Err(e) => Err(st(e)),
            };
            Some((item, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

impl ConfigApi {
    async fn write_common(
        &self,
        access: Access,
        r: ConfigWriteRequest,
        dry_run: bool,
    ) -> Result<Response<ConfigWriteResponse>, Status> {
        let ns = ns_of(r.ns)?;
        let ops = r.ops.into_iter().map(op).collect::<Result<Vec<_>, _>>()?;
        let idempotency_key = (!r.idempotency_key.is_empty()).then_some(r.idempotency_key);
        let opts = write_opts(access, r.author, r.message, idempotency_key, dry_run);
        let w = self.store.write(&ns, ops, &opts).await.map_err(st)?;
        Ok(Response::new(write_resp(w)))
    }
}

fn info(i: engine::NamespaceInfo) -> NamespaceInfo {
    NamespaceInfo {
        name: i.name,
        project: i.project,
        environment: i.environment,
        home_region: i.home_region,
        mode: i.mode,
        rpo_budget_ms: i.rpo_budget_ms,
        history_versions_max: i.history_versions_max,
        history_age_ms_max: i.history_age_ms_max,
        moving_to_region: i.moving_to_region,
        description: i.description,
        owners: i.owners,
        labels: i.labels.into_iter().collect(),
    }
}
