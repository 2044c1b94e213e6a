//! Convergence: after every fault healed, every region holds identical data
//! (same applied revision and state digest per group, matching what was
//! committed) and identical automerge heads.

use crate::history::{History, Violation};

pub const PROPERTY: &str = "convergence";

#[derive(Clone, Debug, Default)]
pub struct NodeFinal {
    pub up: bool,
    pub revisions: Vec<u64>,
    pub digests: Vec<u64>,
    pub meta_heads: Vec<String>,
}

pub fn check(h: &History, nodes: &[NodeFinal]) -> Result<(), Violation> {
    for (n, f) in nodes.iter().enumerate() {
        if !f.up {
            return Err(Violation::new(
                PROPERTY,
                None,
                format!("node {n} is not running at the end"),
            ));
        }
    }
    let Some(first) = nodes.first() else {
        return Ok(());
    };
    for (g, revs) in h.applied.iter().enumerate() {
        let committed = revs.keys().next_back().copied().unwrap_or(0);
        for (n, f) in nodes.iter().enumerate() {
            if f.revisions[g] != committed {
                return Err(Violation::new(
                    PROPERTY,
                    None,
                    format!(
                        "group {g}: node {n} applied up to revision {} but {committed} committed",
                        f.revisions[g]
                    ),
                ));
            }
            if f.digests[g] != first.digests[g] {
                return Err(Violation::new(
                    PROPERTY,
                    None,
                    format!("group {g}: node {n}'s data differs from node 0's"),
                ));
            }
        }
    }
    for (n, f) in nodes.iter().enumerate() {
        if f.meta_heads != first.meta_heads {
            return Err(Violation::new(
                PROPERTY,
                None,
                format!("metadata heads of node {n} differ from node 0's"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diverged_data_or_metadata_fails() {
        let h = History::new(1);
        let a = NodeFinal {
            up: true,
            revisions: vec![0],
            digests: vec![5],
            meta_heads: vec!["x".into()],
        };
        assert!(check(&h, &[a.clone(), a.clone()]).is_ok());
        let b = NodeFinal {
            digests: vec![6],
            ..a.clone()
        };
        assert!(check(&h, &[a.clone(), b]).is_err());
        let c = NodeFinal {
            meta_heads: vec!["y".into()],
            ..a.clone()
        };
        assert!(check(&h, &[a.clone(), c]).is_err());
        let d = NodeFinal {
            up: false,
            ..a.clone()
        };
        assert!(check(&h, &[a, d]).is_err());
    }
}
