//! Durable before reply: a granted vote is on the voter's disk (term and vote)
//! and an acknowledged log prefix is on the follower's disk before the message
//! that says so leaves the node. The simulator checks each such message against
//! its model of the node's disk at the instant it is sent.

use crate::history::{History, Violation};

pub const PROPERTY: &str = "durable before reply";

pub fn check(h: &History) -> Result<(), Violation> {
    match h.undurable_replies.first() {
        Some(&(what, g, n, at)) => Err(Violation::new(
            PROPERTY,
            Some(at),
            format!("node {n} sent {what} for group {g} before it was durable"),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undurable_vote_fails() {
        let mut h = History::new(3);
        assert!(check(&h).is_ok());
        h.undurable_replies.push(("a granted vote", 0, 1, 5));
        assert_eq!(check(&h).unwrap_err().property, PROPERTY);
    }
}
