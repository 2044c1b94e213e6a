//! Errors of the configuration API: a stable reason (part of the API, shared
//! by gRPC and HTTP), a message saying what was wrong, and optional
//! structured details (schema violations list every failing location).

use crate::reason::Reason;
use meridian_core::types::ErrorCode;
use serde_json::Value;
use tonic::Code;

use super::render::RenderError;

#[derive(Debug, Clone, thiserror::Error)]
#[error("[{reason}] {message}")]
pub struct CfgError {
    pub reason: Reason,
    pub message: String,
    pub details: Option<Value>,
    /// RATE_LIMITED: when the caller may try again (HTTP `Retry-After`,
    /// gRPC `retry-after-ms`).
    pub retry_after_ms: Option<u64>,
}

impl CfgError {
    pub fn new(reason: Reason, message: impl Into<String>) -> CfgError {
        CfgError {
            reason,
            message: message.into(),
            details: None,
            retry_after_ms: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> CfgError {
        self.details = Some(details);
        self
    }

    pub fn invalid(message: impl Into<String>) -> CfgError {
        CfgError::new(Reason::InvalidRequest, message)
    }

    pub fn core(code: ErrorCode) -> CfgError {
        CfgError::new(Reason::from(code), code.to_string())
    }

    pub fn grpc_code(&self) -> Code {
        self.reason.grpc_code()
    }

    pub fn http_status(&self) -> u16 {
        self.reason.http_status()
    }

    /// The JSON body of an HTTP error (also the gRPC status details).
    pub fn body(&self) -> Value {
        let mut v = serde_json::json!({
            "error": { "reason": self.reason.as_str(), "message": self.message }
        });
        if let Some(d) = &self.details {
            v["error"]["details"] = d.clone();
        }
        v
    }

    pub fn to_status(&self) -> tonic::Status {
        let mut s = crate::grpc::status(self.reason, &self.message);
        if let Some(d) = &self.details {
            if let Ok(v) = d.to_string().parse() {
                s.metadata_mut().insert("meridian-details", v);
            }
        }
        if let Some(ms) = self.retry_after_ms {
            s.metadata_mut().insert("retry-after-ms", ms.into());
        }
        s
    }
}

impl From<RenderError> for CfgError {
    fn from(e: RenderError) -> CfgError {
        let reason = match &e {
            RenderError::MissingRef { .. } | RenderError::MissingVar { .. } => {
                Reason::MissingReference
            }
            RenderError::Cycle(_) => Reason::ReferenceCycle,
            RenderError::BadTemplate { .. } => Reason::BadTemplate,
            RenderError::Need(_) => Reason::Internal,
        };
        CfgError::new(reason, e.to_string())
    }
}

impl From<crate::auth::AuthError> for CfgError {
    fn from(e: crate::auth::AuthError) -> CfgError {
        tracing::info!(reason = %e.reason, message = %e.message, "request refused");
        let mut c = CfgError::new(e.reason, e.message);
        c.retry_after_ms = e.retry_after_ms;
        c
    }
}
