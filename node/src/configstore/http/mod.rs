//! The HTTP/JSON API (axum) over the configuration engine, for people who
//! use curl. Every route is described in `docs/openapi.json` (served at
//! `/v1/openapi.json`); the integration tests check the server against it.
//! Errors are `{"error": {"reason", "message", "details"?}}` with the same
//! stable reasons as gRPC.

use crate::auth::{Access, Authority};
use crate::metrics::Metrics;
use crate::reason::Reason;
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use axum::{Json, Router};
use meridian_core::types::AsOf;
use serde_json::{json, Map, Value};

use super::engine::{
    ns_name, ConfigStore, CreateNs, Op, ReadConsistency, ReadOpts, SecretSpec, WriteOpts,
};
use super::error::CfgError;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

mod flags;
mod parse;
mod secrets;

use parse::*;
use secrets::*;

type Q = Query<BTreeMap<String, String>>;

impl IntoResponse for CfgError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        let mut r = (code, Json(self.body())).into_response();
        if let Some(ms) = self.retry_after_ms {
            // RFC 9110: whole seconds; never 0 for a wait that is not over.
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, ms.div_ceil(1000).into());
        }
        r
    }
}

type Res = Result<Response, CfgError>;

fn ok(v: impl serde::Serialize) -> Res {
    Ok(Json(v).into_response())
}

/// The caller of an HTTP request, authenticated by `Authorization: Bearer
/// <token>` or `X-API-Key: <token>`, else its connection's client
/// certificate, against the router's `Authority`.
pub(super) struct Caller(pub Access);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = CfgError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Caller, CfgError> {
        let Some(auth) = parts.extensions.get::<Authority>().cloned() else {
            return Err(CfgError::new(
                Reason::Internal,
                "the HTTP router has no authority",
            ));
        };
        let value = |name: &str| parts.headers.get(name).map(|v| v.as_bytes());
        let conn = parts
            .extensions
            .get::<axum::extract::ConnectInfo<crate::api_tls::ClientConn>>()
            .map(|c| &c.0);
        let op = format!("{} {}", parts.method, parts.uri.path());
        let id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok());
        let info = crate::auth::RequestInfo::new(op, id, conn);
        auth.from_headers(value("authorization"), value("x-api-key"), conn, info)
            .map(Caller)
            .map_err(CfgError::from)
    }
}

pub fn router(
    store: ConfigStore,
    auth: Authority,
    metrics: Arc<Metrics>,
    probes: crate::probes::ProbeConfig,
) -> Router {
    // Bodies well above the value limit still reach the handler, which
    // answers VALUE_TOO_LARGE; past this, the body is refused unread.
    let body_max = store.limits().value_bytes_max * 4 + (1 << 20);
    crate::probes::routes(flags::routes(Router::new()))
        .route("/v1/openapi.json", get(openapi))
        .route(
            "/v1/namespaces",
            get(list_namespaces).post(create_namespace),
        )
        .route("/v1/namespaces/{project}/{env}", patch(describe_namespace))
        .route("/v1/namespaces/{project}/{env}/move", post(move_namespace))
        .route("/v1/audit", get(audit_query))
        .route("/v1/audit/verify", get(audit_verify))
        .route("/v1/secrets/status", get(secrets_status))
        .route("/v1/secrets/rewrap", post(secrets_rewrap))
        .route("/v1/secrets/list/{project}/{env}", get(secrets_list))
        .route("/v1/secrets/paths/{project}/{env}", post(secrets_paths))
        .route(
            "/v1/secrets/destroy/{project}/{env}/{*key}",
            post(secrets_destroy),
        )
        .route(
            "/v1/secrets/undelete/{project}/{env}/{*key}",
            post(secrets_undelete),
        )
        .route(
            "/v1/config/{project}/{env}",
            get(get_root).patch(patch_root),
        )
        .route(
            "/v1/config/{project}/{env}/{*path}",
            get(get_path)
                .put(put_path)
                .patch(patch_path)
                .delete(delete_path),
        )
        .route("/v1/txn/{project}/{env}", post(txn))
        .route("/v1/validate/{project}/{env}", post(validate))
        .route("/v1/bulk/{project}/{env}", post(bulk))
        .route("/v1/list/{project}/{env}", get(list))
        .route("/v1/history/{project}/{env}/{*key}", get(history))
        .route("/v1/diff/{project}/{env}", get(diff_revisions))
        .route("/v1/diff/{project}/{env}/{*key}", get(diff_versions))
        .route("/v1/diff-envs/{project}", get(diff_envs))
        .route("/v1/rollback/{project}/{env}", post(rollback))
        .route(
            "/v1/schemas/{project}/{env}",
            put(put_schema).get(get_schema).delete(delete_schema),
        )
        .route(
            "/v1/template/{project}/{env}",
            put(put_template).get(get_template),
        )
        .route("/v1/watch/{project}/{env}", get(watch))
        .route("/metrics", get(metrics_text))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(body_max))
        .layer(axum::Extension(auth))
        .layer(axum::middleware::from_fn_with_state(
            metrics.requests.clone(),
            crate::request_metrics::http_layer,
        ))
        .layer(axum::Extension(metrics))
        .layer(axum::Extension(probes))
        .with_state(store)
}

/// No route matches: the documented error body, not an empty 404.
async fn unknown_route(uri: axum::http::Uri) -> Response {
    CfgError::new(
        Reason::UnknownRoute,
        format!(
            "no route {}; the API is described at /v1/openapi.json",
            uri.path()
        ),
    )
    .into_response()
}

/// The route exists, the method does not: 405 with the documented error
/// body (axum adds the Allow header).
async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let e = CfgError::new(
        Reason::MethodNotAllowed,
        format!(
            "{method} is not allowed on {}; the API is described at /v1/openapi.json",
            uri.path()
        ),
    );
    (StatusCode::METHOD_NOT_ALLOWED, Json(e.body())).into_response()
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// One operation, written with the caller's author, message and idempotency key.
async fn write_one(
    access: &Access,
    st: &ConfigStore,
    project: &str,
    env: &str,
    op: Op,
    headers: &HeaderMap,
    q: &BTreeMap<String, String>,
) -> Res {
    let r = st
        .write(
            &ns_name(project, env),
            vec![op],
            &write_opts(access, headers, q)?,
        )
        .await?;
    ok(r)
}

// ----- handlers -----

/// Prometheus metrics (OpenMetrics text). With authentication on, a
/// scraper needs `read` on the cluster (a token in `Authorization:
/// Bearer`, as Prometheus' `authorization` setting sends it).
async fn metrics_text(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    axum::Extension(metrics): axum::Extension<Arc<Metrics>>,
) -> Result<axum::response::Response, CfgError> {
    access.check(crate::auth::Action::Read, crate::auth::Resource::CLUSTER)?;
    metrics
        .refresh_secrets_every(&st, crate::metrics::SECRETS_REFRESH_EVERY)
        .await;
    if let Some(status) = crate::probes::node_status(&st).await {
        metrics.refresh_node(&status, st.regions());
    }
    let text = metrics
        .encode()
        .map_err(|e| CfgError::new(Reason::Internal, format!("encoding the metrics: {e}")))?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The audit log: records by time, principal, namespace, key, action and
/// result, merged across groups, a page at a time.
async fn audit_query(Caller(access): Caller, State(st): State<ConfigStore>, Query(q): Q) -> Res {
    const FIELDS: [&str; 10] = [
        "from_ms",
        "to_ms",
        "principal",
        "namespace",
        "key_prefix",
        "action_prefix",
        "denied_only",
        "limit",
        "page_token",
        "group",
    ];
    if let Some(k) = q.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(CfgError::invalid(format!(
            "unknown query parameter {k:?} (known: {})",
            FIELDS.join(", ")
        )));
    }
    let text = |k: &str| q.get(k).cloned().unwrap_or_default();
    let number = |k: &str| -> Result<u64, CfgError> {
        match q.get(k) {
            None => Ok(0),
            Some(v) => v
                .parse()
                .map_err(|_| CfgError::invalid(format!("{k} must be a whole number, not {v:?}"))),
        }
    };
    let denied_only = match q.get("denied_only").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => {
            return Err(CfgError::invalid(format!(
                "denied_only must be true or false, not {v:?}"
            )))
        }
    };
    let group = match q.get("group") {
        None => None,
        Some(_) => Some(u8::try_from(number("group")?).map_err(|_| {
            CfgError::invalid("group is a group number of this cluster".to_string())
        })?),
    };
    let query = crate::audit::Query {
        filter: meridian_core::audit::AuditFilter {
            from_ms: number("from_ms")?,
            to_ms: number("to_ms")?,
            principal: text("principal"),
            ns: text("namespace"),
            key_prefix: text("key_prefix"),
            action_prefix: text("action_prefix"),
            denied_only,
        },
        limit: number("limit")? as usize,
        page_token: text("page_token"),
        group,
    };
    let page = crate::audit::query(st.core(), st.regions(), &access, &query)
        .await
        .map_err(|(reason, m)| CfgError::new(reason, m))?;
    ok(json!({
        "records": page.records,
        "next_page_token": page.next_page_token.unwrap_or_default(),
    }))
}

/// Verify this region's copy of every group's audit chain.
async fn audit_verify(Caller(access): Caller, State(st): State<ConfigStore>) -> Res {
    access.check(crate::auth::Action::Admin, crate::auth::Resource::CLUSTER)?;
    let mut groups = Vec::new();
    for g in 0..st.regions().len() {
        groups.push(
            crate::audit::verify_group(st.core(), g as u8)
                .await
                .map_err(|(reason, m)| CfgError::new(reason, m))?,
        );
    }
    let all_ok = groups.iter().all(|g| g.ok);
    ok(json!({ "ok": all_ok, "groups": groups }))
}

async fn list_namespaces(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Query(q): Q,
) -> Res {
    let prefix = q
        .get("project")
        .map(|p| format!("{p}/"))
        .unwrap_or_default();
    ok(json!({ "namespaces": st.list_namespaces(&access, &prefix).await? }))
}

async fn create_namespace(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let b = body_json(&headers, body)?;
    only_fields(
        &b,
        "the body",
        &[
            "project",
            "environment",
            "home_region",
            "mode",
            "rpo_budget_ms",
            "history_versions_max",
            "history_age_ms_max",
        ],
    )?;
    let s = |n: &str| {
        b.get(n)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let u = |n: &str| b.get(n).and_then(Value::as_u64).unwrap_or(0);
    let spec = CreateNs {
        home_region: s("home_region"),
        mode: s("mode"),
        rpo_budget_ms: u("rpo_budget_ms"),
        history_versions_max: u("history_versions_max").min(u32::MAX as u64) as u32,
        history_age_ms_max: u("history_age_ms_max"),
    };
    let info = st
        .create_namespace(&access, &s("project"), &s("environment"), &spec)
        .await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn move_namespace(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let b = body_json(&headers, body)?;
    only_fields(&b, "the body", &["home_region"])?;
    let Some(to) = b.get("home_region").and_then(Value::as_str) else {
        return Err(CfgError::invalid(
            "the body needs \"home_region\": the region to move to",
        ));
    };
    ok(st.move_namespace(&access, &project, &env, to).await?)
}

/// Set a namespace's description, owners and labels: `{"description": "...",
/// "owners": [...], "labels": {"key": "value", "gone": null}}`, each
/// optional (a null label removes it).
async fn describe_namespace(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let b = body_json(&headers, body)?;
    only_fields(&b, "the body", &["description", "owners", "labels"])?;
    let mut d = crate::configstore::engine::DescribeNs::default();
    match b.get("description") {
        None => {}
        Some(Value::String(s)) => d.description = Some(s.clone()),
        Some(_) => return Err(CfgError::invalid("\"description\" must be a string")),
    }
    match b.get("owners") {
        None => {}
        Some(Value::Array(a)) => {
            let owners: Option<Vec<String>> =
                a.iter().map(|o| o.as_str().map(str::to_string)).collect();
            d.owners = Some(
                owners
                    .ok_or_else(|| CfgError::invalid("\"owners\" must be an array of strings"))?,
            );
        }
        Some(_) => return Err(CfgError::invalid("\"owners\" must be an array of strings")),
    }
    match b.get("labels") {
        None => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        d.set_labels.insert(k.clone(), s.clone());
                    }
                    Value::Null => d.remove_labels.push(k.clone()),
                    _ => {
                        return Err(CfgError::invalid(format!(
                            "label {k:?}: a string, or null to remove it"
                        )))
                    }
                }
            }
        }
        Some(_) => return Err(CfgError::invalid("\"labels\" must be an object")),
    }
    ok(st
        .describe_namespace(&access, &ns_name(&project, &env), &d)
        .await?)
}

async fn get_root(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
    Query(q): Q,
) -> Res {
    get_common(access, st, project, env, String::new(), q).await
}

async fn get_path(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env, path)): Path<(String, String, String)>,
    Query(q): Q,
) -> Res {
    get_common(access, st, project, env, path, q).await
}

async fn get_common(
    access: Access,
    st: ConfigStore,
    project: String,
    env: String,
    path: String,
    q: BTreeMap<String, String>,
) -> Res {
    let opts = read_opts(&access, &q)?;
    let default = match q.get("default") {
        None => None,
        Some(d) => Some(serde_json::from_str(d).map_err(|e| {
            CfgError::new(
                Reason::InvalidJson,
                format!("default is not valid JSON: {e}"),
            )
        })?),
    };
    let r = st
        .get(&ns_name(&project, &env), &path, &opts, default)
        .await?;
    ok(r)
}

async fn put_path(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env, path)): Path<(String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let value = body_json(&headers, body)?;
    let op = Op::Put {
        key: path,
        value,
        if_version: q_u64(&q, "if_version")?,
        secret: q_secret(&q)?,
    };
    write_one(&access, &st, &project, &env, op, &headers, &q).await
}

async fn patch_root(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    patch_common(access, st, (project, env), String::new(), q, headers, body).await
}

async fn patch_path(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env, path)): Path<(String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    patch_common(access, st, (project, env), path, q, headers, body).await
}

async fn patch_common(
    access: Access,
    st: ConfigStore,
    (project, env): (String, String),
    path: String,
    q: BTreeMap<String, String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let patch = body_json(&headers, body)?;
    let ctype = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let op = if ctype.starts_with("application/json-patch+json") {
        Op::Patch { path, patch }
    } else {
        Op::Merge {
            path,
            patch,
            if_version: q_u64(&q, "if_version")?,
            secret: q_secret(&q)?,
        }
    };
    write_one(&access, &st, &project, &env, op, &headers, &q).await
}

async fn delete_path(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env, path)): Path<(String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
) -> Res {
    let op = Op::Delete {
        key: path,
        recursive: q_bool(&q, "recursive")?,
        if_version: q_u64(&q, "if_version")?,
    };
    write_one(&access, &st, &project, &env, op, &headers, &q).await
}

async fn txn(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let b = body_json(&headers, body)?;
    let ops = parse_ops(&b)?;
    let r = st
        .write(
            &ns_name(&project, &env),
            ops,
            &write_opts(&access, &headers, &q)?,
        )
        .await?;
    ok(r)
}

async fn validate(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let b = body_json(&headers, body)?;
    let ops = parse_ops(&b)?;
    let mut opts = write_opts(&access, &headers, &q)?;
    opts.dry_run = true;
    let r = st.write(&ns_name(&project, &env), ops, &opts).await?;
    ok(json!({ "valid": true, "changes": r.changes, "diff": r.diff }))
}

async fn bulk(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let b = body_json(&headers, body)?;
    only_fields(&b, "the body", &["keys", "defaults"])?;
    let keys: Vec<String> = b
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| CfgError::invalid("the body needs \"keys\": [ ... ]"))?
        .iter()
        .map(|k| {
            k.as_str()
                .map(str::to_string)
                .ok_or_else(|| CfgError::invalid("keys must be strings"))
        })
        .collect::<Result<_, _>>()?;
    let defaults = b
        .get("defaults")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let (values, missing, token) = st
        .bulk_get(
            &ns_name(&project, &env),
            &keys,
            &defaults,
            &read_opts(&access, &q)?,
        )
        .await?;
    ok(json!({ "values": values, "missing": missing, "token": token }))
}

async fn list(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
    Query(q): Q,
) -> Res {
    let g = |n: &str| q.get(n).cloned().unwrap_or_default();
    let limit = q_u64(&q, "limit")?.unwrap_or(100) as usize;
    let r = st
        .list(
            &ns_name(&project, &env),
            &g("prefix"),
            &g("glob"),
            &g("search"),
            limit,
            &g("page_token"),
            &read_opts(&access, &q)?,
        )
        .await?;
    ok(r)
}

async fn history(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env, key)): Path<(String, String, String)>,
    Query(q): Q,
) -> Res {
    let reveal = q_bool(&q, "reveal")?;
    let versions = st
        .history(&access, &ns_name(&project, &env), &key, reveal)
        .await?;
    ok(json!({ "versions": versions }))
}

async fn diff_versions(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env, key)): Path<(String, String, String)>,
    Query(q): Q,
) -> Res {
    let from =
        q_u64(&q, "from_version")?.ok_or_else(|| CfgError::invalid("from_version is required"))?;
    let to = q_u64(&q, "to_version")?.ok_or_else(|| CfgError::invalid("to_version is required"))?;
    let d = st
        .diff_versions(&access, &ns_name(&project, &env), &key, from, to)
        .await?;
    ok(json!({ "changes": d }))
}

async fn diff_revisions(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
    Query(q): Q,
) -> Res {
    let from = q_u64(&q, "from_revision")?
        .ok_or_else(|| CfgError::invalid("from_revision is required"))?;
    let to =
        q_u64(&q, "to_revision")?.ok_or_else(|| CfgError::invalid("to_revision is required"))?;
    let path = q.get("path").cloned().unwrap_or_default();
    let d = st
        .diff_revisions(&access, &ns_name(&project, &env), &path, from, to)
        .await?;
    ok(json!({ "changes": d }))
}

async fn diff_envs(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path(project): Path<String>,
    Query(q): Q,
) -> Res {
    let from = q
        .get("from")
        .ok_or_else(|| CfgError::invalid("from (an environment) is required"))?;
    let to = q
        .get("to")
        .ok_or_else(|| CfgError::invalid("to (an environment) is required"))?;
    let path = q.get("path").cloned().unwrap_or_default();
    let d = st
        .diff_envs(
            &access,
            &ns_name(&project, from),
            &ns_name(&project, to),
            &path,
            q_bool(&q, "raw")?,
        )
        .await?;
    ok(json!({ "changes": d }))
}

async fn rollback(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let b = body_json(&headers, body)?;
    only_fields(&b, "the body", &["revision", "key", "allow_delete"])?;
    let revision = b
        .get("revision")
        .and_then(Value::as_u64)
        .ok_or_else(|| CfgError::invalid("the body needs \"revision\": a whole number"))?;
    let key = b.get("key").and_then(Value::as_str);
    let allow_delete = match b.get("allow_delete") {
        None => false,
        Some(Value::Bool(v)) => *v,
        Some(_) => return Err(CfgError::invalid("\"allow_delete\" must be true or false")),
    };
    let r = st
        .rollback(
            &ns_name(&project, &env),
            key,
            revision,
            allow_delete,
            &write_opts(&access, &headers, &q)?,
        )
        .await?;
    ok(r)
}

async fn put_schema(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let schema = body_json(&headers, body)?;
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    write_one(
        &access,
        &st,
        &project,
        &env,
        Op::SetSchema { prefix, schema },
        &headers,
        &q,
    )
    .await
}

async fn get_schema(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
    Query(q): Q,
) -> Res {
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    let schemas = st.schemas(&access, &ns_name(&project, &env)).await?;
    match schemas.get(&prefix) {
        Some(s) => ok(json!({ "prefix": prefix, "schema": s })),
        None => Err(CfgError::new(
            Reason::NotFound,
            format!("no schema is attached at {prefix:?}"),
        )),
    }
}

async fn delete_schema(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
) -> Res {
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    write_one(
        &access,
        &st,
        &project,
        &env,
        Op::DeleteSchema { prefix },
        &headers,
        &q,
    )
    .await
}

async fn put_template(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let b = body_json(&headers, body)?;
    only_fields(&b, "the body", &["inherits", "vars"])?;
    let inherits = match b.get("inherits") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) => Some(Some(s.clone())),
        Some(_) => return Err(CfgError::invalid("inherits is an environment name or null")),
    };
    let vars = match b.get("vars") {
        None => None,
        Some(Value::Object(m)) => Some(m.clone()),
        Some(_) => return Err(CfgError::invalid("vars is an object")),
    };
    if inherits.is_none() && vars.is_none() {
        return Err(CfgError::invalid("give inherits, vars or both"));
    }
    write_one(
        &access,
        &st,
        &project,
        &env,
        Op::SetTemplate { inherits, vars },
        &headers,
        &q,
    )
    .await
}

async fn get_template(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
) -> Res {
    let (inherits, vars) = st.template(&access, &ns_name(&project, &env)).await?;
    ok(json!({ "inherits": inherits, "vars": Value::Object(vars.unwrap_or_else(Map::new)) }))
}

/// Server-sent events: one `data:` line of JSON per watch event (a
/// `WatchEvent`); an error ends the stream with `event: error`.
async fn watch(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
) -> Res {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let path = q.get("path").cloned().unwrap_or_default();
    // Every event's `id:` is its resume token, so a browser's EventSource
    // that reconnects sends it back as Last-Event-ID and resumes where it
    // was; an explicit resume_token wins.
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let token = q
        .get("resume_token")
        .cloned()
        .filter(|t| !t.is_empty())
        .unwrap_or(last_event_id);
    let rx = st
        .watch(
            &access,
            &ns_name(&project, &env),
            &path,
            q_bool(&q, "raw")?,
            &token,
        )
        .await?;
    let stream = futures::stream::unfold((rx, false), |(mut rx, ended)| async move {
        if ended {
            return None;
        }
        let item = rx.recv().await?;
        let (event, ended) = match item {
            Ok(ev) => {
                let id = ev.token.clone();
                (Event::default().id(id).json_data(ev), false)
            }
            Err(e) => (Event::default().event("error").json_data(e.body()), true),
        };
        let event = event.unwrap_or_else(|_| Event::default().event("error"));
        Some((Ok::<_, std::convert::Infallible>(event), (rx, ended)))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
