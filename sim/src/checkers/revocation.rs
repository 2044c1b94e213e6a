//! Revocation: no permission check is allowed by a grant once a revocation
//! that grant never saw has applied at the node that answers. A revocation
//! wins over a concurrent grant; a grant made after its node held every
//! revocation counts again.
//!
//! The model is the simulator's own: which revocations a grant's origin held
//! as it made the grant is observed by sampling that node's keys when the
//! grant first appears (`World::sample_perm_keys`), not read from the
//! grant's stored value. The expected answer of every check is then computed
//! from the keys the answering node held and compared with what it said, in
//! both directions (a grant in force must also be honoured). How fast a
//! revocation reaches the other regions is measured against real clusters
//! (`tests/auth.rs`, through `meridian-netlab`); the metadata's convergence
//! after faults heal is the `convergence` checker's.

use crate::history::{History, Violation};

pub const PROPERTY: &str = "revocation";

/// What the checks saw: (checks, checks refused while a grant existed).
pub fn check(h: &History) -> Result<(usize, usize), Violation> {
    let mut refused_over_grant = 0;
    for c in &h.perm_checks {
        let perm = format!("{}|{}", c.principal, c.permission);
        let of = |kind: &str| -> Vec<&String> {
            let prefix = format!("{kind}/{perm}#");
            c.keys.iter().filter(|k| k.starts_with(&prefix)).collect()
        };
        let (grants, revokes) = (of("grant"), of("revoke"));
        let mut expected = false;
        for g in &grants {
            let Some(saw) = h.grants_saw.get(*g) else {
                return Err(Violation::new(
                    PROPERTY,
                    Some(c.at_us),
                    format!(
                        "node {} holds grant {g}, which no node was seen making",
                        c.node
                    ),
                ));
            };
            if revokes.iter().all(|r| saw.contains(r)) {
                expected = true;
            }
        }
        if !expected && !grants.is_empty() {
            refused_over_grant += 1;
        }
        if c.answer != expected {
            let unseen: Vec<&&String> = revokes
                .iter()
                .filter(|r| grants.iter().all(|g| !h.grants_saw[*g].contains(**r)))
                .collect();
            return Err(Violation::new(
                PROPERTY,
                Some(c.at_us),
                if c.answer {
                    format!(
                        "node {} allowed {perm} at {} us although revocation(s) {unseen:?} had applied there \
                         and none of its grants {grants:?} saw them",
                        c.node, c.at_us
                    )
                } else {
                    format!(
                        "node {} refused {perm} at {} us although a grant in {grants:?} saw every \
                         revocation there ({revokes:?})",
                        c.node, c.at_us
                    )
                },
            ));
        }
    }
    Ok((h.perm_checks.len(), refused_over_grant))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::PermCheck;

    fn check_at(node: u8, answer: bool, keys: &[&str]) -> PermCheck {
        PermCheck {
            node,
            at_us: 1,
            principal: "p0".into(),
            permission: "write".into(),
            answer,
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    #[test]
    fn a_revocation_wins_over_a_grant_that_did_not_see_it() {
        let mut h = History::new(3);
        h.grants_saw.insert("grant/p0|write#a1".into(), vec![]);
        h.grants_saw.insert(
            "grant/p0|write#b1".into(),
            vec!["revoke/p0|write#c1".into()],
        );
        // Granted, nothing revoked: allowed.
        h.perm_checks
            .push(check_at(0, true, &["grant/p0|write#a1"]));
        assert!(check(&h).is_ok());
        // A concurrent revocation (a1 never saw c1): refused.
        h.perm_checks.push(check_at(
            1,
            false,
            &["grant/p0|write#a1", "revoke/p0|write#c1"],
        ));
        assert_eq!(check(&h).map(|r| r.1).ok(), Some(1));
        // Allowing it is the violation.
        let mut bad = h.clone();
        bad.perm_checks.push(check_at(
            2,
            true,
            &["grant/p0|write#a1", "revoke/p0|write#c1"],
        ));
        assert!(check(&bad).is_err());
        // A grant made after seeing the revocation counts again.
        h.perm_checks.push(check_at(
            2,
            true,
            &[
                "grant/p0|write#a1",
                "grant/p0|write#b1",
                "revoke/p0|write#c1",
            ],
        ));
        assert!(check(&h).is_ok());
        // Refusing a grant in force is a violation too.
        h.perm_checks
            .push(check_at(0, false, &["grant/p0|write#b1"]));
        assert!(check(&h).is_err());
    }
}
