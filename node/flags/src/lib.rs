//! Meridian's feature flags, the part every side shares: flagd's flag
//! format (`model`), what makes a definition acceptable (`validate`, with
//! flagd's own JSON Schema), the compilation of Meridian's additions into
//! plain flagd (`compile`: prerequisites and scheduled changes become
//! targeting), and the one evaluation core (`eval`) that the region node
//! (OFREP, flagd's gRPC services) and the Rust client library both run, so
//! that every way of evaluating a flag gives the same answer.
//!
//! Pure: no IO, no clock (the time is an argument), no randomness.

pub mod compile;
pub mod error;
pub mod eval;
pub mod impressions;
pub mod model;
mod ops;
pub mod refs;
pub mod time;
pub mod validate;

pub use error::{FlagError, FlagErrorKind};
pub use eval::{Context, ErrorCode, Evaluator, Expect, Reason, Resolution};
pub use impressions::{Impression, Tally};
pub use model::{Definition, Flag, FlagSet, Prerequisite, Scheduled, State};
