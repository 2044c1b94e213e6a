//! The follower's side of appends, handler by handler.

use super::test_support::*;
use super::*;

#[test]
fn a_follower_truncates_a_conflicting_suffix_and_keeps_what_matches() {
    // Entries 1..=3 of terms 1, 1, 2; the leader of term 3 has 1@1 then 2@3.
    let mut n = node_with_log(1, 2, &[1, 1, 2]);
    n.on_raft(0, 0, 3, append(1, 1, &[(2, 3)]))
        .expect("in protocol");
    assert_eq!(log_terms(&n), vec![1, 3], "2@1 and 3@2 replaced by 2@3");
    assert_eq!(n.groups[0].term, 3);
    assert_eq!(n.groups[0].leader, Some(0));
}

#[test]
fn a_follower_keeps_entries_an_append_already_holds() {
    // A delayed, shorter append must not cut entries that match it.
    let mut n = node_with_log(1, 2, &[1, 2, 2]);
    n.on_raft(0, 0, 2, append(1, 1, &[(2, 2)]))
        .expect("in protocol");
    assert_eq!(log_terms(&n), vec![1, 2, 2]);
}

#[test]
fn an_append_that_does_not_match_changes_nothing() {
    // prev 3@1 does not match (3 is of term 2 here).
    let mut n = node_with_log(1, 2, &[1, 1, 2]);
    n.on_raft(0, 0, 3, append(3, 1, &[(4, 3)]))
        .expect("in protocol");
    assert_eq!(log_terms(&n), vec![1, 1, 2]);
}

#[test]
fn an_out_of_shape_append_is_refused_whole() {
    let mut n = node_with_log(1, 2, &[1, 1]);
    let err = n
        .on_raft(0, 0, 3, append(2, 1, &[(3, 3), (5, 3)]))
        .expect_err("a gap in the entries");
    assert_eq!(err, PeerError::OutOfProtocol("entries out of place"));
    assert_eq!(log_terms(&n), vec![1, 1]);
    assert_eq!(n.groups[0].term, 2, "not even the term moved");
}
