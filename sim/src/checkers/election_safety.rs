//! Election safety: at most one leader per group per term.

use std::collections::BTreeMap;

use crate::history::{History, Violation};

pub const PROPERTY: &str = "election safety";

pub fn check(h: &History) -> Result<usize, Violation> {
    let mut seen: BTreeMap<(u8, u64), u8> = BTreeMap::new();
    for &(g, term, node, at) in &h.elections {
        match seen.get(&(g, term)) {
            Some(&other) if other != node => {
                return Err(Violation::new(
                    PROPERTY,
                    Some(at),
                    format!("group {g} term {term}: leaders {other} and {node}"),
                ));
            }
            _ => {
                seen.insert((g, term), node);
            }
        }
    }
    Ok(h.elections.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_leaders_in_one_term_fail() {
        let mut h = History::new(3);
        h.elections.push((0, 1, 0, 10));
        h.elections.push((0, 2, 1, 20));
        assert!(check(&h).is_ok());
        h.elections.push((0, 2, 2, 30));
        assert_eq!(check(&h).unwrap_err().property, PROPERTY);
    }
}
