//! The HTTP API's feature flags (docs/flags.md): flags and segments of an
//! environment (`/v1/flags`, `/v1/segments`), and OFREP, the OpenFeature
//! Remote Evaluation Protocol (`/ofrep/v1/evaluate/flags[/{key}]`), which
//! every OpenFeature OFREP provider speaks. OFREP names no namespace: a
//! provider sends `X-Meridian-Namespace: project/env`, or uses the base URL
//! `/ns/{project}/{env}` (the providers append `/ofrep/v1/...` to it).

use super::*;
use crate::configstore::engine::FlagEdit;
use meridian_flags::{Context, ErrorCode, Expect, Resolution};

pub(super) fn routes(r: Router<ConfigStore>) -> Router<ConfigStore> {
    r.route("/v1/flags/{project}/{env}", get(list_flags))
        .route(
            "/v1/flags/{project}/{env}/{key}",
            get(get_flag).put(put_flag).delete(delete_flag),
        )
        .route(
            "/v1/flags/{project}/{env}/{key}/{action}",
            post(flag_action),
        )
        .route(
            "/v1/segments/{project}/{env}/{name}",
            put(put_segment).delete(delete_segment),
        )
        .route(
            "/v1/impressions/{project}/{env}",
            get(get_impressions).post(report_impressions),
        )
        .route("/ofrep/v1/evaluate/flags", post(ofrep_bulk))
        .route("/ofrep/v1/evaluate/flags/{key}", post(ofrep_one))
        .route(
            "/ns/{project}/{env}/ofrep/v1/evaluate/flags",
            post(ofrep_bulk_ns),
        )
        .route(
            "/ns/{project}/{env}/ofrep/v1/evaluate/flags/{key}",
            post(ofrep_one_ns),
        )
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An environment's impressions, summed over every region:
/// `?flag=&since=&until=` (since: an RFC 3339 time, Unix seconds or how
/// long ago, default 24h; until: default now).
async fn get_impressions(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
    Query(q): Q,
) -> Res {
    for k in q.keys() {
        if !["flag", "since", "until"].contains(&k.as_str()) {
            return Err(CfgError::invalid(format!(
                "unknown parameter {k:?} (flag, since, until)"
            )));
        }
    }
    let now = now_s();
    let at = |name: &str, default: u64| -> Result<u64, CfgError> {
        q.get(name).map_or(Ok(default), |v| {
            meridian_flags::time::parse_instant(v, now)
                .map_err(|e| CfgError::invalid(format!("{name}: {e}")))
        })
    };
    let since = at("since", now.saturating_sub(86_400))?;
    // Until the end of the window now open.
    let until = at("until", now + 86_400)?;
    let view = st
        .impressions(
            &access,
            &ns_name(&project, &env),
            q.get("flag").map(String::as_str),
            since,
            until,
        )
        .await?;
    ok(view)
}

/// An SDK's impressions: `{"cells": [{"flag", "variant", "count",
/// "window_start_s"}]}` (at most `REPORT_CELLS_MAX`); needs `read`.
async fn report_impressions(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let b = body_json(&headers, body)?;
    only_fields(&b, "the body", &["cells"])?;
    let Some(Value::Array(items)) = b.get("cells") else {
        return Err(CfgError::invalid("\"cells\" is an array of impressions"));
    };
    if items.len() > crate::configstore::engine::REPORT_CELLS_MAX {
        return Err(CfgError::invalid(format!(
            "a report carries at most {} cells",
            crate::configstore::engine::REPORT_CELLS_MAX
        )));
    }
    let mut cells = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        let what = format!("cells[{i}]");
        only_fields(it, &what, &["flag", "variant", "count", "window_start_s"])?;
        let text = |f: &str| {
            it.get(f)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| CfgError::invalid(format!("{what}.{f} is a string")))
        };
        let int = |f: &str| {
            it.get(f)
                .and_then(Value::as_u64)
                .ok_or_else(|| CfgError::invalid(format!("{what}.{f} is a whole number")))
        };
        cells.push(meridian_flags::Impression {
            flag: text("flag")?,
            variant: text("variant")?,
            count: int("count")?,
            window_start_s: int("window_start_s")?,
        });
    }
    let counted = st.report_impressions(&access, &ns_name(&project, &env), &cells)?;
    ok(json!({ "counted": counted }))
}

/// An environment's flags: definitions as stored (with where inherited
/// ones come from) and segments, or with `format=flagd` the flagd document
/// providers load (prerequisites and schedules compiled in).
async fn list_flags(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
    Query(q): Q,
) -> Res {
    let view = st
        .flags(&ns_name(&project, &env), &read_opts(&access, &q)?)
        .await?;
    match q.get("format").map(String::as_str) {
        None | Some("meridian") => ok(json!({
            "flags": view.flags,
            "segments": view.segments,
            "revision": view.revision,
            "token": view.token,
        })),
        Some("flagd") => ok(view.set.to_json()),
        Some(f) => Err(CfgError::invalid(format!(
            "format={f:?}: use meridian or flagd"
        ))),
    }
}

async fn get_flag(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env, key)): Path<(String, String, String)>,
    Query(q): Q,
) -> Res {
    let ns = ns_name(&project, &env);
    let view = st.flags(&ns, &read_opts(&access, &q)?).await?;
    match view.flags.into_iter().find(|f| f.key == key) {
        Some(f) => ok(json!({
            "flag": f,
            "compiled": view.set.flags.get(&key).map(|c| c.to_json()),
            "revision": view.revision,
            "token": view.token,
        })),
        None => Err(CfgError::new(
            Reason::NotFound,
            format!("{ns} has no flag {key:?}"),
        )),
    }
}

async fn put_flag(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env, key)): Path<(String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let definition = body_json(&headers, body)?;
    let op = Op::SetFlag { key, definition };
    write_one(&access, &st, &project, &env, op, &headers, &q).await
}

async fn delete_flag(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env, key)): Path<(String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
) -> Res {
    write_one(
        &access,
        &st,
        &project,
        &env,
        Op::DeleteFlag { key },
        &headers,
        &q,
    )
    .await
}

/// `enable`, `disable` (the kill switch), `rollout` (`{"percent": 25,
/// "variant"?: "on"}`) and `evaluate` (`{"context": {...}}`, Meridian's
/// own answer with the reason and any error).
async fn flag_action(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env, key, action)): Path<(String, String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let edit = match action.as_str() {
        "enable" => FlagEdit::State { enabled: true },
        "disable" => FlagEdit::State { enabled: false },
        "rollout" => {
            let b = body_json(&headers, body)?;
            only_fields(&b, "the body", &["percent", "variant"])?;
            let percent = b
                .get("percent")
                .and_then(Value::as_f64)
                .filter(|p| (0.0..=100.0).contains(p))
                .ok_or_else(|| CfgError::invalid("\"percent\" is a number from 0 to 100"))?;
            let variant = match b.get("variant") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(CfgError::invalid("\"variant\" is a variant's name")),
            };
            FlagEdit::Rollout {
                variant,
                percent_milli: (percent * 1000.0).round() as u32,
            }
        }
        "target" => {
            let b = body_json(&headers, body)?;
            only_fields(&b, "the body", &["segment", "variant"])?;
            let field = |f: &str| {
                b.get(f)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| CfgError::invalid(format!("\"{f}\" is a string")))
            };
            FlagEdit::Target {
                segment: field("segment")?,
                variant: field("variant")?,
            }
        }
        "evaluate" => {
            let b = body_json(&headers, body)?;
            only_fields(&b, "the body", &["context"])?;
            let ctx = match b.get("context") {
                None => Context::empty(),
                Some(Value::Object(m)) => {
                    Context::new(m.clone()).map_err(|(_, msg)| CfgError::invalid(msg))?
                }
                Some(_) => return Err(CfgError::invalid("\"context\" is a JSON object")),
            };
            let compiled = st.compiled_flags(&ns_name(&project, &env), &access).await?;
            // An operator's question, not a user served: no impression.
            let r = compiled
                .evaluator
                .evaluate_uncounted(&key, &ctx, now_s(), Expect::Any);
            let mut out = resolution_json(&key, &r);
            if let Some(o) = out.as_object_mut() {
                o.insert("revision".into(), json!(compiled.revision()));
                o.insert("targetingKeyMissing".into(), json!(r.targeting_key_missing));
            }
            return ok(out);
        }
        other => {
            return Err(CfgError::new(
                Reason::UnknownRoute,
                format!("no flag action {other:?}: enable, disable, rollout, target or evaluate"),
            ))
        }
    };
    write_one(
        &access,
        &st,
        &project,
        &env,
        Op::EditFlag { key, edit },
        &headers,
        &q,
    )
    .await
}

async fn put_segment(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env, name)): Path<(String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let rule = body_json(&headers, body)?;
    write_one(
        &access,
        &st,
        &project,
        &env,
        Op::SetSegment { name, rule },
        &headers,
        &q,
    )
    .await
}

async fn delete_segment(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env, name)): Path<(String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
) -> Res {
    write_one(
        &access,
        &st,
        &project,
        &env,
        Op::DeleteSegment { name },
        &headers,
        &q,
    )
    .await
}

// ----- OFREP -----

/// OFREP's evaluation success: value (absent when the caller's default
/// applies), reason, variant (null then), metadata.
fn resolution_json(key: &str, r: &Resolution<'_>) -> Value {
    if let Some((code, msg)) = &r.error {
        return json!({"key": key, "errorCode": code.as_str(), "errorDetails": msg});
    }
    let mut o = Map::new();
    o.insert("key".into(), json!(key));
    if let Some(v) = r.value {
        o.insert("value".into(), v.clone());
    }
    o.insert("reason".into(), json!(r.reason.as_str()));
    o.insert("variant".into(), json!(r.variant));
    o.insert(
        "metadata".into(),
        Value::Object(r.metadata.cloned().unwrap_or_default()),
    );
    Value::Object(o)
}

/// An OFREP failure: `{"key"?, "errorCode", "errorDetails"}` with its status.
struct OfrepFailure {
    status: StatusCode,
    key: Option<String>,
    code: ErrorCode,
    details: String,
}

impl IntoResponse for OfrepFailure {
    fn into_response(self) -> Response {
        let mut o = Map::new();
        if let Some(k) = self.key {
            o.insert("key".into(), json!(k));
        }
        o.insert("errorCode".into(), json!(self.code.as_str()));
        o.insert("errorDetails".into(), json!(self.details));
        (self.status, Json(Value::Object(o))).into_response()
    }
}

fn ofrep_failure(
    status: StatusCode,
    key: Option<&str>,
    code: ErrorCode,
    details: String,
) -> Response {
    failure(status, key, code, details).into_response()
}

fn failure(
    status: StatusCode,
    key: Option<&str>,
    code: ErrorCode,
    details: String,
) -> OfrepFailure {
    OfrepFailure {
        status,
        key: key.map(str::to_string),
        code,
        details,
    }
}

/// The request's namespace, from the path or `X-Meridian-Namespace`.
fn ofrep_ns(headers: &HeaderMap, path: Option<(String, String)>) -> Result<String, OfrepFailure> {
    if let Some((p, e)) = path {
        return Ok(ns_name(&p, &e));
    }
    match headers
        .get("x-meridian-namespace")
        .and_then(|v| v.to_str().ok())
    {
        Some(ns)
            if ns
                .split_once('/')
                .is_some_and(|(p, e)| !p.is_empty() && !e.is_empty()) =>
        {
            Ok(ns.to_string())
        }
        _ => Err(failure(
            StatusCode::BAD_REQUEST,
            None,
            ErrorCode::General,
            "name the environment: send X-Meridian-Namespace: project/environment, \
             or use the base URL /ns/{project}/{environment}"
                .into(),
        )),
    }
}

/// The request's evaluation context (`{"context": {...}}`, both optional).
fn ofrep_context(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    key: Option<&str>,
) -> Result<Context, OfrepFailure> {
    let bad = |msg: String| failure(StatusCode::BAD_REQUEST, key, ErrorCode::InvalidContext, msg);
    let bytes = body.map_err(|e| bad(format!("the body could not be read: {e}")))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Context::empty());
    }
    let v = body_json(headers, Ok(bytes)).map_err(|e| bad(e.message))?;
    let Value::Object(mut o) = v else {
        return Err(bad("the body is a JSON object: {\"context\": {...}}".into()));
    };
    match o.remove("context") {
        None | Some(Value::Null) => Ok(Context::empty()),
        Some(Value::Object(m)) => Context::new(m).map_err(|(_, msg)| bad(msg)),
        Some(_) => Err(bad("\"context\" is a JSON object".into())),
    }
}

/// A CfgError (authentication, permission, rate limit, unknown namespace)
/// as OFREP expects it: 401/403/429 as they are; an environment that does
/// not exist has no flags.
fn ofrep_cfg_error(e: CfgError, key: Option<&str>) -> Response {
    match e.reason {
        Reason::UnknownNamespace => ofrep_failure(
            StatusCode::NOT_FOUND,
            key,
            ErrorCode::FlagNotFound,
            e.message,
        ),
        Reason::InvalidFlag => ofrep_failure(
            StatusCode::BAD_REQUEST,
            key,
            ErrorCode::ParseError,
            e.message,
        ),
        _ => e.into_response(),
    }
}

async fn ofrep_one(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    evaluate_one(access, st, None, key, headers, body).await
}

async fn ofrep_one_ns(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env, key)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    evaluate_one(access, st, Some((project, env)), key, headers, body).await
}

async fn evaluate_one(
    access: Access,
    st: ConfigStore,
    path: Option<(String, String)>,
    key: String,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let ns = match ofrep_ns(&headers, path) {
        Ok(ns) => ns,
        Err(r) => return r.into_response(),
    };
    let ctx = match ofrep_context(&headers, body, Some(&key)) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let compiled = match st.compiled_flags(&ns, &access).await {
        Ok(c) => c,
        Err(e) => return ofrep_cfg_error(e, Some(&key)),
    };
    let r = compiled
        .evaluator
        .evaluate(&key, &ctx, now_s(), Expect::Any);
    match &r.error {
        Some((ErrorCode::FlagNotFound, msg)) => ofrep_failure(
            StatusCode::NOT_FOUND,
            Some(&key),
            ErrorCode::FlagNotFound,
            msg.clone(),
        ),
        Some((code, msg)) => ofrep_failure(StatusCode::BAD_REQUEST, Some(&key), *code, msg.clone()),
        None if r.targeting_key_missing => ofrep_failure(
            StatusCode::BAD_REQUEST,
            Some(&key),
            ErrorCode::TargetingKeyMissing,
            format!("flag {key:?} targets by the targeting key; the context has none"),
        ),
        None => Json(resolution_json(&key, &r)).into_response(),
    }
}

async fn ofrep_bulk(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    evaluate_all(access, st, None, headers, body).await
}

async fn ofrep_bulk_ns(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    evaluate_all(access, st, Some((project, env)), headers, body).await
}

/// Every flag of the environment for one context. The ETag is a hash of
/// the answer itself, so it changes exactly when a client's cached
/// evaluations would (a definition, or a scheduled change taking effect).
async fn evaluate_all(
    access: Access,
    st: ConfigStore,
    path: Option<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let ns = match ofrep_ns(&headers, path) {
        Ok(ns) => ns,
        Err(r) => return r.into_response(),
    };
    let ctx = match ofrep_context(&headers, body, None) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let compiled = match st.compiled_flags(&ns, &access).await {
        Ok(c) => c,
        Err(e) => return ofrep_cfg_error(e, None),
    };
    let now = now_s();
    let flags: Vec<Value> = compiled
        .evaluator
        .keys()
        .map(|key| {
            let r = compiled.evaluator.evaluate(key, &ctx, now, Expect::Any);
            if r.error.is_none() && r.targeting_key_missing {
                return json!({"key": key, "errorCode": ErrorCode::TargetingKeyMissing.as_str(),
                              "errorDetails": "the flag targets by the targeting key; the context has none"});
            }
            resolution_json(key, &r)
        })
        .collect();
    let body =
        json!({ "flags": flags, "metadata": {"flagSetId": ns, "revision": compiled.revision()} });
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let etag = format!("\"{:016x}\"", meridian_core::rng::fnv1a(&bytes));
    let matches = headers
        .get(axum::http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response()
    };
    if let Ok(v) = axum::http::HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(axum::http::header::ETAG, v);
    }
    resp
}
