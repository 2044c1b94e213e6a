//! `meridian-core`: the deterministic heart of a Meridian region node.
//!
//! A pure state machine in the style of quinn-proto: inputs are `Node::handle_*`
//! calls that carry `now` (the node's monotonic clock in microseconds); outputs
//! are `Action`s drained by the caller (send, persist, reply, set timer, observe).
//! This crate reads no clock, spawns no task, touches no socket or disk, draws
//! randomness only from the seed it is given, and iterates no `HashMap` whose
//! order could reach its output. The region node (`node/`) and the simulator
//! (`sim/`) drive the very same code.

pub mod audit;
pub mod config;
pub mod kv;
pub mod log;
pub mod meta;
pub mod node;
pub mod rng;
pub mod storage;
pub mod types;
pub mod wire;

pub use config::{Config, Mutants, NamespaceSpec};
pub use node::{Action, GroupStatus, InitError, Node, PeerError, Stats};
pub use storage::{Durable, StorageOp};
pub use types::*;
pub use wire::{Channel, Msg};
