//! flagd's gRPC protocols on a region's gRPC port (docs/flags.md), so
//! flagd's providers work against Meridian unchanged:
//!
//! - `flagd.sync.v1.FlagSyncService`: in-process providers download an
//!   environment's flags as flagd JSON (prerequisites and schedules compiled
//!   in), evaluate locally, and are pushed every change (`SyncFlags`);
//! - `flagd.evaluation.v1.Service` and `v2`: RPC providers ask a region to
//!   evaluate (`Resolve*`), and hear of changes on `EventStream`.
//!
//! The environment is flagd's selector: the `flagd-selector` header (or the
//! deprecated `selector` field), `project/environment`. Authentication is
//! Meridian's (a bearer token, as gRPC call credentials, or a client
//! certificate); every call needs read on the environment.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use meridian_flags::{Context, ErrorCode, Expect, Resolution};
use prost_types::value::Kind;
use serde_json::{Map, Value};
use tonic::{Request, Response, Status};

mod evaluation;
mod sync;

use crate::auth::{Access, Authority};
use crate::configstore::engine::{CompiledFlags, ConfigStore};
use crate::configstore::CfgError;

#[derive(Clone)]
pub struct FlagdApi {
    store: ConfigStore,
    auth: Authority,
}

impl FlagdApi {
    pub fn new(store: ConfigStore, auth: Authority) -> FlagdApi {
        FlagdApi { store, auth }
    }

    fn access<T>(&self, r: &Request<T>) -> Result<Access, Status> {
        self.auth.grpc(r).map_err(crate::grpc::auth_status)
    }

    async fn compiled<T>(
        &self,
        r: &Request<T>,
        field: &str,
    ) -> Result<(String, Arc<CompiledFlags>), Status> {
        let access = self.access(r)?;
        let ns = selector(r, field)?;
        let c = self
            .store
            .compiled_flags(&ns, &access)
            .await
            .map_err(|e| e.to_status())?;
        Ok((ns, c))
    }
}

/// The environment a call names: `flagd-selector`, else the request's
/// deprecated selector field.
fn selector<T>(r: &Request<T>, field: &str) -> Result<String, Status> {
    let header = r
        .metadata()
        .get("flagd-selector")
        .and_then(|v| v.to_str().ok());
    let s = header.filter(|s| !s.is_empty()).unwrap_or(field);
    match s.split_once('/') {
        Some((p, e)) if !p.is_empty() && !e.is_empty() && !e.contains('/') => Ok(s.to_string()),
        _ => Err(Status::invalid_argument(format!(
            "name the environment as flagd's selector (the flagd-selector header): project/environment, not {s:?}"
        ))),
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ----- protobuf Struct <-> JSON -----

fn to_json(v: &prost_types::Value) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        // Protobuf numbers are doubles; a whole one is an integer to the
        // rules (a JSON context would have said 30, not 30.0).
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
            Value::from(*n as i64)
        }
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(to_json).collect()),
        Some(Kind::StructValue(s)) => Value::Object(struct_to_map(s)),
    }
}

fn struct_to_map(s: &prost_types::Struct) -> Map<String, Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), to_json(v)))
        .collect()
}

fn to_proto(v: &Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(to_proto).collect(),
        }),
        Value::Object(o) => Kind::StructValue(map_to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn map_to_struct(m: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: m
            .iter()
            .map(|(k, v)| (k.clone(), to_proto(v)))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect(),
    }
}

fn context(s: Option<prost_types::Struct>) -> Result<Context, Status> {
    let m = s.as_ref().map(struct_to_map).unwrap_or_default();
    Context::new(m).map_err(|(_, msg)| Status::invalid_argument(msg))
}

/// An evaluation's error as flagd's gRPC status codes say it (its RPC
/// providers map them back: NOT_FOUND, INVALID_ARGUMENT, DATA_LOSS).
fn check(r: &Resolution<'_>) -> Result<(), Status> {
    match &r.error {
        None => Ok(()),
        Some((ErrorCode::FlagNotFound, m)) => Err(Status::not_found(m.clone())),
        Some((ErrorCode::TypeMismatch | ErrorCode::InvalidContext, m)) => {
            Err(Status::invalid_argument(m.clone()))
        }
        Some((ErrorCode::ParseError, m)) => Err(Status::data_loss(m.clone())),
        Some((_, m)) => Err(Status::unknown(m.clone())),
    }
}

fn metadata(r: &Resolution<'_>) -> Option<prost_types::Struct> {
    Some(r.metadata.map(map_to_struct).unwrap_or_default())
}

pub(super) type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The changes between two compiled sets: each flag added, removed or changed.
fn changed_flags(old: &CompiledFlags, new: &CompiledFlags) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, f) in &new.set.flags {
        match old.set.flags.get(k) {
            None => {
                out.insert(k.clone(), serde_json::json!({"type": "write"}));
            }
            Some(o) if o != f => {
                out.insert(k.clone(), serde_json::json!({"type": "update"}));
            }
            Some(_) => {}
        }
    }
    for k in old
        .set
        .flags
        .keys()
        .filter(|k| !new.set.flags.contains_key(*k))
    {
        out.insert(k.clone(), serde_json::json!({"type": "delete"}));
    }
    // A change of a shared segment changes every flag that uses it.
    if old.set.evaluators != new.set.evaluators {
        for k in new.set.flags.keys() {
            out.entry(k.clone())
                .or_insert_with(|| serde_json::json!({"type": "update"}));
        }
    }
    out
}

/// One evaluation's answer, as every Resolve* RPC returns it.
struct Resolved {
    value: Option<Value>,
    reason: String,
    variant: String,
    metadata: Option<prost_types::Struct>,
}

impl Resolved {
    /// v2's optional variant: unset when the caller's default applies.
    fn variant_opt(&self) -> Option<String> {
        (!self.variant.is_empty()).then(|| self.variant.clone())
    }
}

impl FlagdApi {
    async fn resolve<T>(
        &self,
        r: &Request<T>,
        key: &str,
        ctx: Option<prost_types::Struct>,
        expect: Expect,
    ) -> Result<Resolved, Status> {
        let (_, c) = self.compiled(r, "").await?;
        let ctx = context(ctx)?;
        let res = c.evaluator.evaluate(key, &ctx, now_s(), expect);
        check(&res)?;
        Ok(Resolved {
            value: res.value.cloned(),
            reason: res.reason.as_str().to_string(),
            variant: res.variant.unwrap_or_default().to_string(),
            metadata: metadata(&res),
        })
    }
}

impl FlagdApi {
    /// flagd's event stream, as (type, data): `provider_ready`, then
    /// `configuration_change` naming the flags that changed.
    async fn events<T>(
        &self,
        r: &Request<T>,
    ) -> Result<Stream_<(String, Option<prost_types::Struct>)>, Status> {
        let access = self.access(r)?;
        let ns = selector(r, "")?;
        let watch = self
            .store
            .watch_flags(&ns, &access)
            .await
            .map_err(|e| e.to_status())?;
        let s = futures::stream::unfold(
            (watch, None::<Arc<CompiledFlags>>),
            |(mut w, last)| async move {
                let item = match w.next().await? {
                    Err(e) => return Some((Err(e.to_status()), (w, last))),
                    Ok(c) => c,
                };
                let msg = match &last {
                    None => ("provider_ready".to_string(), None),
                    Some(old) => {
                        let data = serde_json::json!({"flags": changed_flags(old, &item)});
                        (
                            "configuration_change".to_string(),
                            data.as_object().map(map_to_struct),
                        )
                    }
                };
                Some((Ok(msg), (w, Some(item))))
            },
        );
        Ok(Box::pin(s))
    }
}
