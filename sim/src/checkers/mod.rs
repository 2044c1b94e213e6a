//! One checker per property, each in a file named after the property it checks.
//! Every checker takes the recorded `History` (and, for convergence, the final
//! node states) and returns what it measured or the first violation.

pub mod at_most_once;
pub mod bounded_staleness;
pub mod convergence;
pub mod durability;
pub mod durable_before_reply;
pub mod election_safety;
pub mod lease_safety;
pub mod linearizability;
pub mod namespace_move;
pub mod promise_safety;
pub mod revocation;
pub mod rto;
pub mod state_machine_safety;
pub mod vote_safety;
pub mod watch_completeness;
