//! Errors of the configuration API: a stable reason (part of the API, shared
//! by gRPC and HTTP), a message saying what was wrong, and optional
//! structured details (schema violations list every failing location).

use meridian_core::types::ErrorCode;
use serde_json::Value;
use tonic::Code;

use super::render::RenderError;

#[derive(Debug, Clone, thiserror::Error)]
#[error("[{reason}] {message}")]
pub struct CfgError {
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl CfgError {
    pub fn new(reason: &'static str, message: impl Into<String>) -> CfgError {
        CfgError {
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> CfgError {
        self.details = Some(details);
        self
    }

    pub fn invalid(message: impl Into<String>) -> CfgError {
        CfgError::new("INVALID_REQUEST", message)
    }

    pub fn core(code: ErrorCode) -> CfgError {
        let (_, reason) = crate::grpc::reason_of(code);
        CfgError::new(reason, code.to_string())
    }

    pub fn grpc_code(&self) -> Code {
        match self.reason {
            "INVALID_REQUEST" | "INVALID_JSON" | "INVALID_KEY" | "KEY_TOO_LONG"
            | "VALUE_TOO_LARGE" | "TOO_MANY_OPS" | "BAD_SCHEMA" | "BAD_PATCH" | "BAD_TEMPLATE"
            | "SCHEMA_VIOLATION" | "MISSING_REFERENCE" | "REFERENCE_CYCLE" | "PATH_CONFLICT" => {
                Code::InvalidArgument
            }
            "NOT_FOUND" | "UNKNOWN_NAMESPACE" | "UNKNOWN_WATCH" | "UNKNOWN_ROUTE" => Code::NotFound,
            "UNSUPPORTED_MEDIA_TYPE" => Code::InvalidArgument,
            "NAMESPACE_EXISTS" => Code::AlreadyExists,
            "CAS_CONFLICT"
            | "PATCH_TEST_FAILED"
            | "IDEMPOTENCY_KEY_REUSED"
            | "ROLLBACK_DELETES" => Code::FailedPrecondition,
            "HISTORY_COMPACTED" | "FUTURE_REVISION" => Code::OutOfRange,
            "SCAN_TOO_LARGE" | "OVERLOADED" => Code::ResourceExhausted,
            "TIMEOUT" => Code::DeadlineExceeded,
            "INDETERMINATE" => Code::Unknown,
            "INTERNAL" => Code::Internal,
            _ => Code::Unavailable,
        }
    }

    pub fn http_status(&self) -> u16 {
        match self.grpc_code() {
            Code::InvalidArgument | Code::OutOfRange => {
                if matches!(
                    self.reason,
                    "SCHEMA_VIOLATION" | "MISSING_REFERENCE" | "REFERENCE_CYCLE"
                ) {
                    422
                } else if self.reason == "VALUE_TOO_LARGE" {
                    413
                } else if self.reason == "UNSUPPORTED_MEDIA_TYPE" {
                    415
                } else {
                    400
                }
            }
            Code::NotFound => 404,
            // The IETF Idempotency-Key draft: a key reused with another
            // payload is 422, a conflict of state is 409.
            Code::FailedPrecondition if self.reason == "IDEMPOTENCY_KEY_REUSED" => 422,
            Code::AlreadyExists | Code::FailedPrecondition => 409,
            Code::ResourceExhausted => 429,
            Code::DeadlineExceeded => 504,
            Code::Internal | Code::Unknown => 500,
            _ => 503,
        }
    }

    /// The JSON body of an HTTP error (also the gRPC status details).
    pub fn body(&self) -> Value {
        let mut v = serde_json::json!({
            "error": { "reason": self.reason, "message": self.message }
        });
        if let Some(d) = &self.details {
            v["error"]["details"] = d.clone();
        }
        v
    }

    pub fn to_status(&self) -> tonic::Status {
        let mut s = crate::grpc::status(self.grpc_code(), self.reason, &self.message);
        if let Some(d) = &self.details {
            if let Ok(v) = d.to_string().parse() {
                s.metadata_mut().insert("meridian-details", v);
            }
        }
        s
    }
}

impl From<RenderError> for CfgError {
    fn from(e: RenderError) -> CfgError {
        let reason = match &e {
            RenderError::MissingRef { .. } | RenderError::MissingVar { .. } => "MISSING_REFERENCE",
            RenderError::Cycle(_) => "REFERENCE_CYCLE",
            RenderError::BadTemplate { .. } => "BAD_TEMPLATE",
            RenderError::Need(_) => "INTERNAL",
        };
        CfgError::new(reason, e.to_string())
    }
}
