//! Configuration management on top of the core's namespaces: projects and
//! environments, dotted keys with JSON values, subtrees, merge patch and JSON
//! patch, history with authors, diffs, rollback, JSON Schema validation and
//! templates (inheritance, references, variables). The engine (`engine.rs`)
//! is shared by the gRPC `Config` service and the HTTP/JSON API (`http.rs`);
//! the JSON logic (`tree`, `render`, `diff`) is pure and unit-tested.

pub mod diff;
pub mod engine;
pub mod error;
pub mod http;
pub mod render;
pub mod tree;

pub use engine::{ConfigStore, ImpressionsConfig};
pub use error::CfgError;
