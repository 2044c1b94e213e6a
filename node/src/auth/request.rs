//! One request's particulars (what it asked, its request id, the client's
//! address, whether it came over TLS), kept raw until an audit record of it
//! is made.

use meridian_core::audit::{AuditCtx, AuditEvent};

use std::sync::Arc;

use super::{wall_ms, Principal};
use crate::audit::Auditor;

/// A gRPC request's path (`/meridian.v1.Kv/Put`), put in its extensions by
/// a layer of the server (shared, so that copying it costs no allocation).
#[derive(Clone, Debug)]
pub struct RpcPath(pub Arc<str>);

/// What a request asked for, formatted only when a record is made.
#[derive(Clone, Debug, Default)]
pub(super) enum Op {
    #[default]
    Unknown,
    Grpc(RpcPath),
    Http(String),
}

/// One request's particulars, for its audit records. Every request carries
/// one, so it is kept raw (no formatting, no random id) until a record is
/// actually made.
#[derive(Clone, Default)]
pub struct RequestInfo {
    pub(super) op: Op,
    /// The caller's `x-request-id`, if it sent one.
    pub(super) request_id: Option<String>,
    pub(super) client: Option<std::net::SocketAddr>,
    /// The request came over TLS.
    pub(super) tls: bool,
    pub(super) auditor: Option<Auditor>,
}

impl RequestInfo {
    /// The particulars of a gRPC request.
    pub fn grpc<T>(r: &tonic::Request<T>) -> RequestInfo {
        let conn = r.extensions().get::<crate::api_tls::ClientConn>();
        RequestInfo {
            op: r
                .extensions()
                .get::<RpcPath>()
                .map_or(Op::Unknown, |p| Op::Grpc(p.clone())),
            request_id: r
                .metadata()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .filter(|id| !id.is_empty())
                .map(str::to_string),
            client: conn.map(|c| c.remote),
            tls: conn.is_some_and(|c| c.tls),
            auditor: None,
        }
    }

    /// The particulars of an HTTP request: `op` is its method and path.
    pub fn new(
        op: String,
        request_id: Option<&str>,
        conn: Option<&crate::api_tls::ClientConn>,
    ) -> RequestInfo {
        RequestInfo {
            op: Op::Http(op),
            request_id: request_id.filter(|id| !id.is_empty()).map(str::to_string),
            client: conn.map(|c| c.remote),
            tls: conn.is_some_and(|c| c.tls),
            auditor: None,
        }
    }

    /// The operation: `Kv.Put` (gRPC service and method) or `PUT /v1/...`.
    pub fn op(&self) -> String {
        match &self.op {
            Op::Unknown => String::new(),
            Op::Http(op) => op.clone(),
            // `/meridian.v1.Kv/Put` -> `Kv.Put`.
            Op::Grpc(p) => match p.0.rsplit_once('/') {
                Some((service, method)) => {
                    let service = service.rsplit('.').next().unwrap_or(service);
                    format!("{service}.{method}")
                }
                None => p.0.to_string(),
            },
        }
    }

    /// The context of a record of this request, by `principal` (None: not
    /// authenticated). A request without an `x-request-id` gets a fresh one.
    pub(super) fn ctx(&self, principal: Option<&Principal>) -> AuditCtx {
        AuditCtx {
            region: self.auditor.as_ref().map_or(0, Auditor::region),
            principal: principal.map_or(String::new(), |p| p.name.clone()),
            method: principal.map_or(String::new(), |p| p.method.as_str().to_string()),
            action: self.op(),
            request_id: self
                .request_id
                .clone()
                .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>())),
            client: self.client.map_or(String::new(), |c| c.to_string()),
        }
    }

    /// Hand an event to the auditor (none in unit tests of other things).
    pub(super) fn record(
        &self,
        ctx: AuditCtx,
        ns: &str,
        keys: &[&str],
        result: &str,
        detail: &str,
    ) {
        if let Some(a) = &self.auditor {
            a.record(AuditEvent {
                time_ms: wall_ms(),
                ctx,
                ns: ns.to_string(),
                keys: keys.iter().map(|k| k.to_string()).collect(),
                result: result.to_string(),
                detail: detail.to_string(),
            });
        }
    }
}
