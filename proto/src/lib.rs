//! Meridian's gRPC API, generated from `proto/meridian/v1/meridian.proto`, and
//! the Rust client library (`client`; `flags`: feature flags evaluated from a
//! watched local copy). The generated code is the contract;
//! any gRPC stack can talk to a region from the .proto file alone.

pub mod client;
mod flag_impressions;
pub mod flags;
pub mod local_config;

/// Generated messages, clients and servers of package `meridian.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs, unused_qualifications)]
    tonic::include_proto!("meridian.v1");
}

/// flagd's protocols (vendored in `proto/flagd/`): the sync service that
/// in-process providers download flags from, and the evaluation service
/// RPC providers call.
pub mod flagd {
    pub mod sync {
        pub mod v1 {
            #![allow(clippy::all, missing_docs, unused_qualifications)]
            tonic::include_proto!("flagd.sync.v1");
        }
    }
    pub mod evaluation {
        pub mod v1 {
            #![allow(clippy::all, missing_docs, unused_qualifications)]
            tonic::include_proto!("flagd.evaluation.v1");
        }
        pub mod v2 {
            #![allow(clippy::all, missing_docs, unused_qualifications)]
            tonic::include_proto!("flagd.evaluation.v2");
        }
    }
}

/// The encoded `FileDescriptorSet` of the API, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/meridian_descriptor.bin"));

/// Response metadata key carrying the stable error reason of a failed call.
pub const REASON_METADATA_KEY: &str = "meridian-reason";

/// The stable reason of a failed call: the `meridian-reason` metadata, or the
/// `[REASON]` prefix of the message; None for errors that did not come from a
/// Meridian node (transport failures).
pub fn reason_of(status: &tonic::Status) -> Option<String> {
    if let Some(v) = status.metadata().get(REASON_METADATA_KEY) {
        if let Ok(s) = v.to_str() {
            return Some(s.to_string());
        }
    }
    let m = status.message();
    let rest = m.strip_prefix('[')?;
    let end = rest.find(']')?;
    Some(rest[..end].to_string())
}
