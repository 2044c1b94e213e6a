//! Request parsing for the HTTP API: JSON bodies (by Content-Type, with
//! unknown fields refused), query parameters, read and write options, and
//! the operations of a write.

use super::*;

/// The body as JSON. A Content-Type that is not JSON (`application/json`
/// or `application/<something>+json`) is refused; none at all is taken as JSON.
pub(super) fn body_json(
    h: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, CfgError> {
    if let Some(ct) = h.get(axum::http::header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let json = essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"));
        if !json {
            return Err(CfgError::new(
                Reason::UnsupportedMediaType,
                format!(
                    "Content-Type {ct:?} is not JSON: send application/json \
                     (curl: --json, or -H 'content-type: application/json')"
                ),
            ));
        }
    }
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            CfgError::new(
                Reason::ValueTooLarge,
                format!("request body too large: {e}"),
            )
        } else {
            CfgError::invalid(format!("unreadable body: {e}"))
        }
    })?;
    if bytes.is_empty() {
        return Err(CfgError::new(
            Reason::InvalidJson,
            "the body is empty; send JSON",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        CfgError::new(
            Reason::InvalidJson,
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// Refuse members of a JSON object body that the route does not take,
/// naming them (as the TOML config does), so a misspelt field is not
/// silently ignored.
pub(super) fn only_fields(v: &Value, what: &str, known: &[&str]) -> Result<(), CfgError> {
    let Some(m) = v.as_object() else {
        return Err(CfgError::invalid(format!("{what} must be a JSON object")));
    };
    for k in m.keys() {
        if !known.contains(&k.as_str()) {
            return Err(CfgError::invalid(format!(
                "unknown field {k:?} in {what}; known fields: {}",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

pub(super) fn q_u64(q: &BTreeMap<String, String>, name: &str) -> Result<Option<u64>, CfgError> {
    match q.get(name) {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| CfgError::invalid(format!("{name}={s:?} is not a whole number"))),
    }
}

pub(super) fn q_bool(q: &BTreeMap<String, String>, name: &str) -> Result<bool, CfgError> {
    match q.get(name).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("") | Some("true") | Some("1") => Ok(true),
        Some(s) => Err(CfgError::invalid(format!(
            "{name}={s:?}: use true or false"
        ))),
    }
}

pub(super) fn read_opts(
    access: &Access,
    q: &BTreeMap<String, String>,
) -> Result<ReadOpts, CfgError> {
    let as_of = match (q_u64(q, "revision")?, q_u64(q, "time_ms")?) {
        (Some(_), Some(_)) => return Err(CfgError::invalid("give revision or time_ms, not both")),
        (Some(r), None) => AsOf::Revision(r),
        (None, Some(t)) => AsOf::TimeMs(t),
        (None, None) => AsOf::Latest,
    };
    let staleness = q_u64(q, "max_staleness_ms")?;
    let consistency = match (q.get("consistency").map(String::as_str), staleness) {
        (None | Some("linearizable"), None) => ReadConsistency::Linearizable,
        (Some("stale"), None) => ReadConsistency::Stale,
        // As the gRPC API and the CLI: 1000 ms unless given.
        (Some("bounded"), ms) => ReadConsistency::Bounded {
            staleness_ms: ms.unwrap_or(1000),
        },
        (None | Some("linearizable") | Some("stale"), Some(_)) => {
            return Err(CfgError::invalid(
                "max_staleness_ms goes with consistency=bounded",
            ))
        }
        (Some(s), _) => {
            return Err(CfgError::invalid(format!(
                "consistency={s:?}: use linearizable, bounded (with max_staleness_ms) or stale"
            )))
        }
    };
    Ok(ReadOpts {
        access: access.clone(),
        raw: q_bool(q, "raw")?,
        as_of,
        consistency,
        reveal: q_bool(q, "reveal")?,
    })
}

/// A write's secret marking from the query: `secret=true`, with optional
/// `expires_at_ms` and `rotate_every_ms` (which need `secret`).
pub(super) fn q_secret(q: &BTreeMap<String, String>) -> Result<Option<SecretSpec>, CfgError> {
    let expires_ms = q_u64(q, "expires_at_ms")?;
    let rotate_every_ms = q_u64(q, "rotate_every_ms")?;
    if !q_bool(q, "secret")? {
        if expires_ms.is_some() || rotate_every_ms.is_some() {
            return Err(CfgError::invalid(
                "expires_at_ms and rotate_every_ms go with secret=true",
            ));
        }
        return Ok(None);
    }
    Ok(Some(SecretSpec {
        expires_ms: expires_ms.unwrap_or(0),
        rotate_every_ms: rotate_every_ms.unwrap_or(0),
    }))
}

/// An operation's `"secret"`: absent or false (not marked), true, or an
/// object with `expires_at_ms` and `rotate_every_ms`.
fn op_secret(i: usize, v: Option<&Value>) -> Result<Option<SecretSpec>, CfgError> {
    match v {
        None | Some(Value::Bool(false)) => Ok(None),
        Some(Value::Bool(true)) => Ok(Some(SecretSpec::default())),
        Some(o @ Value::Object(m)) => {
            only_fields(
                o,
                &format!("ops[{i}].secret"),
                &["expires_at_ms", "rotate_every_ms"],
            )?;
            let n = |k: &str| -> Result<u64, CfgError> {
                match m.get(k) {
                    None => Ok(0),
                    Some(v) => v.as_u64().ok_or_else(|| {
                        CfgError::invalid(format!("ops[{i}].secret.{k} must be a whole number"))
                    }),
                }
            };
            Ok(Some(SecretSpec {
                expires_ms: n("expires_at_ms")?,
                rotate_every_ms: n("rotate_every_ms")?,
            }))
        }
        Some(_) => Err(CfgError::invalid(format!(
            "ops[{i}].secret is true, false or {{\"expires_at_ms\": .., \"rotate_every_ms\": ..}}"
        ))),
    }
}

pub(super) fn write_opts(
    access: &Access,
    h: &HeaderMap,
    q: &BTreeMap<String, String>,
) -> Result<WriteOpts, CfgError> {
    let header = |name: &str| -> Result<String, CfgError> {
        match h.get(name) {
            None => Ok(String::new()),
            Some(v) => v
                .to_str()
                .map(str::to_string)
                .map_err(|_| CfgError::invalid(format!("header {name} is not visible ASCII"))),
        }
    };
    let idem = header("idempotency-key")?;
    Ok(WriteOpts {
        access: access.clone(),
        author: header("x-meridian-author")?,
        message: header("x-meridian-message")?,
        idempotency_key: (!idem.is_empty()).then_some(idem),
        dry_run: q_bool(q, "dry_run")?,
        secure_channel: access.secure_channel(),
    })
}

/// Parse the operations of a transaction or validation body.
pub fn parse_ops(body: &Value) -> Result<Vec<Op>, CfgError> {
    only_fields(body, "the body", &["ops"])?;
    let ops = body
        .get("ops")
        .and_then(Value::as_array)
        .ok_or_else(|| CfgError::invalid("the body needs \"ops\": [ ... ]"))?;
    ops.iter()
        .enumerate()
        .map(|(i, o)| parse_op(i, o))
        .collect()
}

pub(super) fn parse_op(i: usize, o: &Value) -> Result<Op, CfgError> {
    let known: &[&str] = match o.get("op").and_then(Value::as_str) {
        Some("put") => &["op", "key", "value", "if_version", "secret"],
        Some("delete") => &["op", "key", "recursive", "if_version"],
        Some("merge") => &["op", "key", "path", "patch", "if_version", "secret"],
        Some("patch") => &["op", "key", "path", "patch"],
        _ => &[
            "op",
            "key",
            "path",
            "value",
            "patch",
            "if_version",
            "recursive",
            "secret",
        ],
    };
    only_fields(o, &format!("ops[{i}]"), known)?;
    let s = |name: &str| o.get(name).and_then(Value::as_str).map(str::to_string);
    let need = |name: &str| {
        s(name).ok_or_else(|| CfgError::invalid(format!("ops[{i}] needs a string \"{name}\"")))
    };
    let if_version = o.get("if_version").and_then(Value::as_u64);
    let key = || s("key").or_else(|| s("path")).unwrap_or_default();
    match s("op").as_deref() {
        Some("put") => Ok(Op::Put {
            key: need("key")?,
            value: o
                .get("value")
                .cloned()
                .ok_or_else(|| CfgError::invalid(format!("ops[{i}] (put) needs \"value\"")))?,
            if_version,
            secret: op_secret(i, o.get("secret"))?,
        }),
        Some("delete") => Ok(Op::Delete {
            key: need("key")?,
            recursive: o.get("recursive").and_then(Value::as_bool).unwrap_or(false),
            if_version,
        }),
        Some("merge") => Ok(Op::Merge {
            path: key(),
            patch: o
                .get("patch")
                .cloned()
                .ok_or_else(|| CfgError::invalid(format!("ops[{i}] (merge) needs \"patch\"")))?,
            if_version,
            secret: op_secret(i, o.get("secret"))?,
        }),
        Some("patch") => Ok(Op::Patch {
            path: key(),
            patch: o
                .get("patch")
                .cloned()
                .ok_or_else(|| CfgError::invalid(format!("ops[{i}] (patch) needs \"patch\"")))?,
        }),
        other => Err(CfgError::invalid(format!(
            "ops[{i}].op is {other:?}; use put, delete, merge or patch"
        ))),
    }
}
