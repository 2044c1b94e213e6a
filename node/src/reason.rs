//! The client APIs' stable error reasons, one typed list: each reason's
//! wire name, its gRPC status code and its HTTP status. gRPC (KV and Config
//! services) and the HTTP API both speak them; the proto's header comment
//! and `docs/openapi.json` list the same reasons, which a test checks.

use meridian_core::types::ErrorCode;
use tonic::Code;

macro_rules! reasons {
    ($($variant:ident => $name:literal, $code:ident, $http:literal;)*) => {
        /// A stable reason of a failed call: part of the API.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Reason {
            $($variant,)*
        }

        impl Reason {
            /// Every reason, in the order of the table.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The wire name (SCREAMING_SNAKE_CASE).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }

            /// The gRPC status code a call failing for this reason carries.
            pub fn grpc_code(self) -> Code {
                match self {
                    $(Reason::$variant => Code::$code,)*
                }
            }

            /// The HTTP status of the same failure on the HTTP API.
            pub fn http_status(self) -> u16 {
                match self {
                    $(Reason::$variant => $http,)*
                }
            }
        }
    };
}

reasons! {
    // The core's answers (every API).
    Unavailable => "UNAVAILABLE", Unavailable, 503;
    Timeout => "TIMEOUT", DeadlineExceeded, 504;
    Indeterminate => "INDETERMINATE", Unknown, 500;
    UnknownNamespace => "UNKNOWN_NAMESPACE", NotFound, 404;
    KeyTooLong => "KEY_TOO_LONG", InvalidArgument, 400;
    // 413 Content Too Large: the body is over a limit, not malformed.
    ValueTooLarge => "VALUE_TOO_LARGE", InvalidArgument, 413;
    TooManyOps => "TOO_MANY_OPS", InvalidArgument, 400;
    InvalidRequest => "INVALID_REQUEST", InvalidArgument, 400;
    RpoBudgetExceeded => "RPO_BUDGET_EXCEEDED", Unavailable, 503;
    Overloaded => "OVERLOADED", ResourceExhausted, 429;
    TokenWaitTimeout => "TOKEN_WAIT_TIMEOUT", Unavailable, 503;
    Halted => "HALTED", Unavailable, 503;
    UnknownWatch => "UNKNOWN_WATCH", NotFound, 404;
    ScanTooLarge => "SCAN_TOO_LARGE", ResourceExhausted, 429;
    HistoryCompacted => "HISTORY_COMPACTED", OutOfRange, 400;
    FutureRevision => "FUTURE_REVISION", OutOfRange, 400;
    NamespaceMoving => "NAMESPACE_MOVING", Unavailable, 503;
    // The IETF Idempotency-Key draft: a key reused with another payload is
    // 422 (a conflict of state would be 409).
    IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED", FailedPrecondition, 422;
    Internal => "INTERNAL", Internal, 500;
    // The node's shells.
    ShuttingDown => "SHUTTING_DOWN", Unavailable, 503;
    UnknownRegion => "UNKNOWN_REGION", InvalidArgument, 400;
    SlowConsumer => "SLOW_CONSUMER", ResourceExhausted, 429;
    // The Config service and the HTTP API.
    InvalidJson => "INVALID_JSON", InvalidArgument, 400;
    InvalidKey => "INVALID_KEY", InvalidArgument, 400;
    PathConflict => "PATH_CONFLICT", InvalidArgument, 400;
    BadPatch => "BAD_PATCH", InvalidArgument, 400;
    BadSchema => "BAD_SCHEMA", InvalidArgument, 400;
    BadTemplate => "BAD_TEMPLATE", InvalidArgument, 400;
    // 422: well-formed, but what it would produce is not acceptable.
    SchemaViolation => "SCHEMA_VIOLATION", InvalidArgument, 422;
    MissingReference => "MISSING_REFERENCE", InvalidArgument, 422;
    ReferenceCycle => "REFERENCE_CYCLE", InvalidArgument, 422;
    NotFound => "NOT_FOUND", NotFound, 404;
    NamespaceExists => "NAMESPACE_EXISTS", AlreadyExists, 409;
    CasConflict => "CAS_CONFLICT", FailedPrecondition, 409;
    PatchTestFailed => "PATCH_TEST_FAILED", FailedPrecondition, 409;
    RollbackDeletes => "ROLLBACK_DELETES", FailedPrecondition, 409;
    Contended => "CONTENDED", Unavailable, 503;
    // Identity and access (every API).
    Unauthenticated => "UNAUTHENTICATED", Unauthenticated, 401;
    TokenExpired => "TOKEN_EXPIRED", Unauthenticated, 401;
    TokenRevoked => "TOKEN_REVOKED", Unauthenticated, 401;
    PermissionDenied => "PERMISSION_DENIED", PermissionDenied, 403;
    BadRole => "BAD_ROLE", InvalidArgument, 400;
    UnknownRole => "UNKNOWN_ROLE", NotFound, 404;
    UnknownToken => "UNKNOWN_TOKEN", NotFound, 404;
    RateLimited => "RATE_LIMITED", ResourceExhausted, 429;
    // Secrets (the Config service and the HTTP API; see docs/secrets.md).
    KeyringUnavailable => "KEYRING_UNAVAILABLE", Unavailable, 503;
    SecretCorrupt => "SECRET_CORRUPT", DataLoss, 500;
    // 410 Gone: the version exists but no longer reveals.
    SecretExpired => "SECRET_EXPIRED", FailedPrecondition, 410;
    SecretDestroyed => "SECRET_DESTROYED", FailedPrecondition, 410;
    // A request about secrets names a key or version that is not one.
    NotASecret => "NOT_A_SECRET", FailedPrecondition, 400;
    SecretNeedsTls => "SECRET_NEEDS_TLS", FailedPrecondition, 403;
    // The raw KV API in a configuration environment: the engine's own keys,
    // and a secret's key written with bytes that are not sealed.
    ReservedKey => "RESERVED_KEY", InvalidArgument, 400;
    SecretNotSealed => "SECRET_NOT_SEALED", FailedPrecondition, 400;
    // Feature flags (docs/flags.md): a definition or segment refused; the
    // details' `code` says why (meridian_flags::FlagErrorKind).
    InvalidFlag => "INVALID_FLAG", InvalidArgument, 400;
    // Failover drills: a fault of another drill is in force (or the
    // region is restarting after one).
    DrillFaultActive => "DRILL_FAULT_ACTIVE", FailedPrecondition, 409;
    // The HTTP API only.
    UnknownRoute => "UNKNOWN_ROUTE", NotFound, 404;
    MethodNotAllowed => "METHOD_NOT_ALLOWED", InvalidArgument, 405;
    UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE", InvalidArgument, 415;
}

impl From<ErrorCode> for Reason {
    fn from(code: ErrorCode) -> Reason {
        match code {
            ErrorCode::Unavailable => Reason::Unavailable,
            ErrorCode::Timeout => Reason::Timeout,
            ErrorCode::Indeterminate => Reason::Indeterminate,
            ErrorCode::UnknownNamespace => Reason::UnknownNamespace,
            ErrorCode::KeyTooLong => Reason::KeyTooLong,
            ErrorCode::ValueTooLarge => Reason::ValueTooLarge,
            ErrorCode::TooManyOps => Reason::TooManyOps,
            ErrorCode::InvalidRequest => Reason::InvalidRequest,
            ErrorCode::RpoBudgetExceeded => Reason::RpoBudgetExceeded,
            ErrorCode::Overloaded => Reason::Overloaded,
            ErrorCode::TokenWaitTimeout => Reason::TokenWaitTimeout,
            ErrorCode::Halted => Reason::Halted,
            ErrorCode::UnknownWatch => Reason::UnknownWatch,
            ErrorCode::ScanTooLarge => Reason::ScanTooLarge,
            ErrorCode::HistoryCompacted => Reason::HistoryCompacted,
            ErrorCode::NamespaceMoving => Reason::NamespaceMoving,
            ErrorCode::FutureRevision => Reason::FutureRevision,
            ErrorCode::IdempotencyKeyReused => Reason::IdempotencyKeyReused,
            ErrorCode::Internal => Reason::Internal,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn repo_file(rel: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// The proto's header comment: reason -> (gRPC code name, HTTP status if given).
    fn proto_reasons() -> BTreeMap<String, (String, Option<u16>)> {
        let mut out = BTreeMap::new();
        for line in repo_file("proto/meridian/v1/meridian.proto").lines() {
            let Some(rest) = line.strip_prefix("//   ") else {
                continue;
            };
            let mut words = rest.split_whitespace();
            let (Some(name), Some(code)) = (words.next(), words.next()) else {
                continue;
            };
            // "FAILED_PRECONDITION[409]" or "FAILED_PRECONDITION [409]".
            let (code, mut http) = match code.split_once('[') {
                Some((c, h)) => (c, h.trim_end_matches(']').parse().ok()),
                None => (code, None),
            };
            if http.is_none() {
                http = words
                    .next()
                    .and_then(|w| w.strip_prefix('['))
                    .and_then(|w| w.strip_suffix(']'))
                    .and_then(|w| w.parse().ok());
            }
            out.insert(name.to_string(), (code.to_string(), http));
        }
        out
    }

    fn code_name(c: Code) -> String {
        // tonic's Debug is CamelCase ("FailedPrecondition").
        let mut s = String::new();
        for (i, ch) in format!("{c:?}").chars().enumerate() {
            if ch.is_ascii_uppercase() && i > 0 {
                s.push('_');
            }
            s.push(ch.to_ascii_uppercase());
        }
        s
    }

    #[test]
    fn the_proto_lists_every_reason_with_its_codes() {
        let proto = proto_reasons();
        let code: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        let listed: Vec<&str> = proto.keys().map(String::as_str).collect();
        let mut sorted = code.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, listed, "reasons in code vs the proto's comment");
        for r in Reason::ALL {
            let (grpc, http) = &proto[r.as_str()];
            assert_eq!(*grpc, code_name(r.grpc_code()), "{r}: gRPC code");
            if let Some(h) = http {
                assert_eq!(*h, r.http_status(), "{r}: HTTP status");
            }
        }
    }

    #[test]
    fn the_openapi_error_schema_lists_every_reason() {
        let spec: serde_json::Value =
            serde_json::from_str(&repo_file("docs/openapi.json")).expect("openapi.json");
        let listed: Vec<&str> = spec["components"]["schemas"]["Error"]["properties"]["error"]
            ["properties"]["reason"]["enum"]
            .as_array()
            .expect("reason enum")
            .iter()
            .map(|v| v.as_str().expect("a string"))
            .collect();
        let code: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(listed, code);
    }

    #[test]
    fn every_core_error_code_has_a_reason_of_the_same_name() {
        for (code, name) in [
            (ErrorCode::Unavailable, "UNAVAILABLE"),
            (ErrorCode::IdempotencyKeyReused, "IDEMPOTENCY_KEY_REUSED"),
            (ErrorCode::FutureRevision, "FUTURE_REVISION"),
        ] {
            assert_eq!(Reason::from(code).as_str(), name);
        }
        let names: std::collections::BTreeSet<&str> =
            Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len(), "wire names are unique");
    }
}
