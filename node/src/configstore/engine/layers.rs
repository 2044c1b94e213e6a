//! Inheritance walks: an environment, its parent, its parent's parent...
//! Every walk (rendering a chain, refusing a cycle before it is written,
//! validating the environments a write affects) records its way through a
//! `Lineage`, so all of them share one depth limit and one cycle error.

use super::*;

/// The environments a walk has passed, first the one it started from.
pub(super) struct Lineage {
    names: Vec<String>,
}

impl Lineage {
    pub(super) fn new(first: &str) -> Lineage {
        Lineage {
            names: vec![first.to_string()],
        }
    }

    /// Step to `parent`: refused if it closes a cycle, or if the chain would
    /// have more than `render::INHERIT_DEPTH_MAX` ancestors.
    pub(super) fn step(&mut self, parent: &str) -> Result<(), CfgError> {
        if self.names.iter().any(|n| n == parent) {
            self.names.push(parent.to_string());
            return Err(CfgError::new(
                Reason::ReferenceCycle,
                format!("inheritance cycle: {}", self.names.join(" -> ")),
            ));
        }
        if self.names.len() > render::INHERIT_DEPTH_MAX {
            return Err(CfgError::new(
                Reason::ReferenceCycle,
                format!(
                    "inheritance of {} deeper than {} levels",
                    self.names[0],
                    render::INHERIT_DEPTH_MAX
                ),
            ));
        }
        self.names.push(parent.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_is_named_with_its_whole_path() {
        let mut l = Lineage::new("p/a");
        l.step("p/b").expect("b");
        l.step("p/c").expect("c");
        let e = l.step("p/a").expect_err("cycle");
        assert_eq!(e.reason, Reason::ReferenceCycle);
        assert_eq!(e.message, "inheritance cycle: p/a -> p/b -> p/c -> p/a");
    }

    #[test]
    fn depth_is_bounded_at_the_limit() {
        let mut l = Lineage::new("p/0");
        for i in 1..=render::INHERIT_DEPTH_MAX {
            l.step(&format!("p/{i}")).expect("within the limit");
        }
        let e = l.step("p/next").expect_err("one too deep");
        assert_eq!(e.reason, Reason::ReferenceCycle);
        assert!(e.message.contains("deeper than"), "{}", e.message);
    }
}
