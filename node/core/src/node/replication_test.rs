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

/// Node 0 leading group 0 in term 5 over a log of `len` entries of term 4,
/// with appends of at most `entries_max` entries; its output is cleared.
fn leader_over(len: usize, entries_max: usize) -> Node {
    let mut n = node_with_log(0, 4, &vec![4; len]);
    n.cfg.append_entries_max = entries_max;
    n.campaign(0, false);
    n.on_raft(0, 1, 5, RaftMsg::VoteResp { granted: true })
        .expect("in protocol");
    assert!(n.groups[0].role.is_leader());
    n
}

/// The appends in the node's output for `to`, as (prev index, entries), in order.
fn appends_to(n: &Node, to: NodeId) -> Vec<(u64, usize)> {
    n.out
        .iter()
        .filter_map(|a| match a {
            Action::Send { to: t, bytes, .. } if *t == to => {
                match Msg::decode(bytes, usize::MAX).expect("own message") {
                    Msg::Raft {
                        body:
                            RaftMsg::Append {
                                prev_index,
                                entries,
                                ..
                            },
                        ..
                    } => Some((prev_index, entries.len())),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect()
}

fn resp(success: bool, match_index: u64, last_index: u64) -> RaftMsg {
    RaftMsg::AppendResp {
        success,
        match_index,
        last_index,
        round: 1,
        echo_us: 0,
    }
}

#[test]
fn a_new_leader_probes_past_its_log_and_heartbeats_resend_from_the_probe() {
    // Followers usually hold the log a leader was elected with. Sending from
    // entry 1 re-shipped all of it, 8 entries per round trip (swarm seed 152
    // fell 15 s behind); the probe starts at the new leader's no-op.
    let mut n = leader_over(40, 8);
    let sent = appends_to(&n, 2);
    assert!(!sent.is_empty(), "the no-op goes out");
    assert!(sent.iter().all(|&(prev, _)| prev == 40), "{sent:?}");
    n.out.clear();
    n.heartbeat(0);
    assert_eq!(
        appends_to(&n, 2),
        vec![(40, 1)],
        "the heartbeat resends the probe"
    );
}

#[test]
fn a_refused_probe_backs_off_to_the_followers_log_then_pipelines() {
    let mut n = leader_over(40, 8);
    n.out.clear();
    // The follower holds only 10 entries.
    n.on_raft(0, 2, 5, resp(false, 0, 10)).expect("in protocol");
    assert_eq!(appends_to(&n, 2), vec![(10, 8)]);
    n.out.clear();
    // It took them: up to four appends now fly at once, not one per round trip.
    n.on_raft(0, 2, 5, resp(true, 18, 18)).expect("in protocol");
    assert_eq!(appends_to(&n, 2), vec![(18, 8), (26, 8), (34, 7)]);
    n.out.clear();
    // A refusal of a follower whose log is as long but conflicts backs off by one.
    let mut n = leader_over(40, 8);
    n.out.clear();
    n.on_raft(0, 2, 5, resp(false, 0, 40)).expect("in protocol");
    assert_eq!(appends_to(&n, 2), vec![(39, 2)]);
}

#[test]
fn answers_that_move_nothing_send_nothing() {
    // Duplicated answers, or a follower that takes none of the entries (its
    // answers all say "matched up to 18"), must not each refill the pipeline
    // or resend: every send would come back as more sends (seen as an event
    // storm in a swarm seed with stalled appends).
    let mut n = leader_over(40, 8);
    n.on_raft(0, 2, 5, resp(false, 0, 10)).expect("in protocol");
    n.on_raft(0, 2, 5, resp(true, 18, 18)).expect("in protocol");
    n.out.clear();
    for _ in 0..5 {
        n.on_raft(0, 2, 5, resp(true, 18, 18)).expect("in protocol");
        n.on_raft(0, 2, 5, resp(false, 0, 10)).expect("in protocol");
    }
    assert_eq!(appends_to(&n, 2), vec![], "stale answers sent appends");
    // The heartbeat still resends from the match.
    n.heartbeat(0);
    assert_eq!(appends_to(&n, 2), vec![(18, 8)]);
}

/// The snapshot chunks in the node's output for `to`, as (offset, length).
fn chunks_to(n: &Node, to: NodeId) -> Vec<(u64, usize)> {
    n.out
        .iter()
        .filter_map(|a| match a {
            Action::Send { to: t, bytes, .. } if *t == to => {
                match Msg::decode(bytes, usize::MAX).expect("own message") {
                    Msg::Raft {
                        body: RaftMsg::Snapshot { offset, data, .. },
                        ..
                    } => Some((offset, data.len())),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect()
}

fn snap_resp(received: u64, done: bool) -> RaftMsg {
    RaftMsg::SnapshotResp {
        index: 30,
        received,
        done,
        round: 1,
    }
}

/// A leader over 40 entries whose log is compacted behind a snapshot at 30
/// of 1,000 bytes, sent in chunks of 100; follower 2 holds 10 entries.
fn leader_sending_a_snapshot() -> Node {
    let mut n = leader_over(40, 8);
    n.cfg.snapshot_chunk_bytes = 100;
    let gr = &mut n.groups[0];
    gr.log.compact_to(30, 4);
    gr.snapshot = Some(Snapshot {
        index: 30,
        term: 4,
        data: vec![7; 1_000],
    });
    n.out.clear();
    n.on_raft(0, 2, 5, resp(false, 0, 10)).expect("in protocol");
    n
}

#[test]
fn snapshot_chunks_fly_in_a_window_and_busy_rounds_resend_none() {
    // Under load a leader starts a round per forwarded write. Each round
    // resent the chunk under way and each resend's answer sent another: a
    // 5 MB snapshot took 13 s to cross loopback, and a region restarted
    // under writes never caught up (kill -9 test).
    let mut n = leader_sending_a_snapshot();
    assert_eq!(
        chunks_to(&n, 2),
        vec![(0, 100), (100, 100), (200, 100), (300, 100)],
        "four chunks fly at once"
    );
    n.out.clear();
    for _ in 0..10 {
        n.heartbeat(0);
        n.on_raft(0, 2, 5, snap_resp(0, false))
            .expect("in protocol");
    }
    assert_eq!(
        chunks_to(&n, 2),
        vec![],
        "rounds and duplicates sent chunks"
    );
    // An answer that moves the acknowledged offset opens the window by as much.
    n.on_raft(0, 2, 5, snap_resp(200, false))
        .expect("in protocol");
    assert_eq!(chunks_to(&n, 2), vec![(400, 100), (500, 100)]);
    n.out.clear();
    // Nothing acknowledged for a heartbeat interval: chunks or answers were
    // lost, and the next round resends from what the follower holds.
    n.now += n.cfg.heartbeat_interval_us;
    n.heartbeat(0);
    assert_eq!(
        chunks_to(&n, 2),
        vec![(200, 100), (300, 100), (400, 100), (500, 100)]
    );
    n.out.clear();
    // A follower that lost its buffer (it restarted) starts again from 0.
    n.on_raft(0, 2, 5, snap_resp(0, false))
        .expect("in protocol");
    assert_eq!(chunks_to(&n, 2)[0], (0, 100));
    n.out.clear();
    // Done: the follower matched the snapshot and gets appends after it.
    n.on_raft(0, 2, 5, snap_resp(1_000, true))
        .expect("in protocol");
    assert_eq!(chunks_to(&n, 2), vec![]);
    assert_eq!(appends_to(&n, 2), vec![(30, 8)]);
}

#[test]
fn a_resent_first_chunk_keeps_what_the_follower_received() {
    let mut n = node_with_log(1, 5, &[]);
    let chunk = |offset: u64| RaftMsg::Snapshot {
        index: 30,
        term: 4,
        offset,
        total: 1_000,
        data: vec![7; 100],
        round: 1,
    };
    for offset in [0, 100, 200] {
        n.on_raft(0, 0, 5, chunk(offset)).expect("in protocol");
    }
    n.on_raft(0, 0, 5, chunk(0)).expect("in protocol");
    let held = n.groups[0].snap_recv.as_ref().map(|(.., buf)| buf.len());
    assert_eq!(
        held,
        Some(300),
        "a duplicate of the first chunk restarted it"
    );
}

#[test]
fn compaction_waits_for_a_live_follower_behind_within_the_hold_limits() {
    // Compacting past a live follower's match sends it a whole snapshot;
    // under load the transfer outlasts the entries it stands for, and the
    // next compaction cut the follower off again (kill -9 test).
    let setup = |hold_entries_max: u64| {
        let mut n = leader_over(40, 8);
        n.cfg.compact_after_entries = 10;
        n.cfg.compact_log_pct_of_snapshot_min = 0;
        n.cfg.compact_hold_entries_max = hold_entries_max;
        let now = n.now;
        let gr = &mut n.groups[0];
        gr.commit = 40;
        gr.applied = 40;
        let ls = gr.role.leading_mut().expect("leads");
        for p in [1, 2] {
            ls.peers[p].acked_round = 1;
            ls.peers[p].last_heard_us = now;
        }
        ls.peers[1].match_index = 41;
        ls.peers[2].match_index = 25;
        ls.peers[2].sent_index = 25;
        n
    };
    let mut n = setup(1_000);
    n.maybe_compact(0);
    assert_eq!(n.groups[0].log.snap_index, 0, "compacted past follower 2");
    assert_eq!(n.stats.compactions_held, 1);
    // A follower with the entries up to the applied index in flight needs
    // nothing the compaction removes; nor does one that never answered this
    // leader hold the log (a new leader counts every peer live at first).
    for (sent, acked_round) in [(41, 1), (25, 0)] {
        let mut n = setup(1_000);
        let ls = n.groups[0].role.leading_mut().expect("leads");
        ls.peers[2].sent_index = sent;
        ls.peers[2].acked_round = acked_round;
        n.maybe_compact(0);
        assert_eq!(
            n.groups[0].log.snap_index, 40,
            "held for ({sent}, {acked_round})"
        );
    }
    // A follower silent for an election timeout does not hold the log.
    n.now += n.cfg.election_timeout_us;
    n.maybe_compact(0);
    assert_eq!(n.groups[0].log.snap_index, 40);
    // Nor does one behind once the log reaches the hold limit.
    let mut n = setup(41);
    n.maybe_compact(0);
    assert_eq!(n.groups[0].log.snap_index, 40);
}
