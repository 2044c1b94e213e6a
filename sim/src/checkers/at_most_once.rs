//! At most once: a write's request id applies at most once, however often
//! its client sent it (retries after TIMEOUT, INDETERMINATE or a lost
//! connection, to the same region or another, across leader changes,
//! restarts and snapshot installs).

use std::collections::BTreeMap;

use meridian_core::node::INTERNAL_REQ_BASE;

use crate::history::{History, Violation};

pub const PROPERTY: &str = "at most once";

/// Returns how many request ids were checked.
pub fn check(h: &History) -> Result<usize, Violation> {
    // request id -> (group, revision) of its first application.
    let mut seen: BTreeMap<u64, (usize, u64)> = BTreeMap::new();
    for (g, applied) in h.applied.iter().enumerate() {
        for (&rev, a) in applied {
            // 0: no id; the core's own requests are numbered per node.
            if a.request_id == 0 || a.request_id >= INTERNAL_REQ_BASE {
                continue;
            }
            if let Some(&(g0, rev0)) = seen.get(&a.request_id) {
                return Err(Violation::new(
                    PROPERTY,
                    Some(a.at_us),
                    format!(
                        "request id {:#x} applied twice: group {g0} revision {rev0} and group {g} revision {rev}",
                        a.request_id
                    ),
                ));
            }
            seen.insert(a.request_id, (g, rev));
        }
    }
    Ok(seen.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Applied;

    fn applied(request_id: u64) -> Applied {
        Applied {
            request_id,
            digest: 1,
            ns: "n".into(),
            keys: Vec::new(),
            first_node: 0,
            at_us: 5,
        }
    }

    #[test]
    fn an_id_applied_twice_fails_and_once_passes() {
        let mut h = History::new(3);
        h.record_applied(0, 1, 0, applied(7));
        h.record_applied(0, 2, 0, applied(8));
        h.record_applied(0, 3, 0, applied(0));
        h.record_applied(1, 1, 0, applied(0));
        assert_eq!(check(&h).expect("once each"), 2);
        h.record_applied(1, 2, 0, applied(7));
        assert_eq!(check(&h).expect_err("twice").property, PROPERTY);
    }
}
