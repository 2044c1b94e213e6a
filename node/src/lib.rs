//! The region node: the thin IO shell around `meridian-core`. It owns the
//! RocksDB storage engine, the QUIC peer transport with mutual TLS, the gRPC
//! and HTTP APIs over TLS and the driver loop that feeds the core its inputs (with the time) and
//! carries out its actions.

pub mod api_tls;
pub mod audit;
pub mod auth;
pub mod config;
pub mod configstore;
pub mod core_client;
pub mod drill_fault;
pub mod driver;
pub mod grpc;
pub mod grpc_audit;
pub mod grpc_auth;
pub mod grpc_config;
pub mod grpc_drill;
pub mod grpc_flagd;
pub mod metrics;
pub mod probes;
pub mod reason;
pub mod request_metrics;
pub mod secrets;
pub mod server;
pub mod storage;
pub mod tls;
pub mod transport;

pub use config::NodeConfig;
pub use server::{start, RunningNode, StartError};
