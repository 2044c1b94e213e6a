//! State machine safety: every node applies the same entry at the same revision,
//! and no node fails to apply a committed entry.

use crate::history::{History, Violation};

pub const PROPERTY: &str = "state machine safety";

pub fn check(h: &History, apply_errors: u64) -> Result<usize, Violation> {
    if let Some(&(g, rev, a, b)) = h.applied_conflicts.first() {
        return Err(Violation::new(
            PROPERTY,
            None,
            format!("group {g} revision {rev}: nodes {a} and {b} applied different entries"),
        ));
    }
    if apply_errors > 0 {
        return Err(Violation::new(
            PROPERTY,
            None,
            format!("{apply_errors} committed entries could not be applied (log diverged)"),
        ));
    }
    Ok(h.applied.iter().map(|m| m.len()).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Applied;

    #[test]
    fn different_entries_at_one_revision_fail() {
        let mut h = History::new(3);
        let a = Applied {
            request_id: 1,
            digest: 1,
            ns: "n".into(),
            keys: vec![],
            first_node: 0,
            at_us: 0,
        };
        h.record_applied(0, 1, 0, a.clone());
        h.record_applied(0, 1, 1, a.clone());
        assert!(check(&h, 0).is_ok());
        assert!(check(&h, 1).is_err());
        h.record_applied(0, 1, 2, Applied { digest: 2, ..a });
        assert_eq!(check(&h, 0).unwrap_err().property, PROPERTY);
    }
}
