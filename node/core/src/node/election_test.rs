//! Elections and leadership, handler by handler.

use super::test_support::*;
use super::*;

#[test]
fn a_candidate_steps_down_on_an_append_of_a_higher_term() {
    let mut n = node_with_log(1, 4, &[1]);
    n.campaign(0, false);
    assert!(matches!(n.groups[0].role, Role::Candidate));
    assert_eq!(n.groups[0].term, 5);
    n.on_raft(0, 2, 6, append(1, 1, &[])).expect("in protocol");
    let gr = &n.groups[0];
    assert!(matches!(gr.role, Role::Follower));
    assert_eq!((gr.term, gr.vote, gr.leader), (6, None, Some(2)));
}

#[test]
fn a_candidate_ignores_an_append_of_an_older_term() {
    let mut n = node_with_log(1, 4, &[1]);
    n.campaign(0, false);
    n.on_raft(0, 2, 4, append(1, 1, &[])).expect("in protocol");
    assert!(matches!(n.groups[0].role, Role::Candidate));
    assert_eq!(n.groups[0].term, 5);
}

#[test]
fn leaving_leadership_drops_leader_state_and_answers_its_waiters() {
    let mut n = node_with_log(0, 1, &[1]);
    n.campaign(0, false);
    // One vote besides its own makes a majority of 3.
    n.on_raft(0, 1, 2, RaftMsg::VoteResp { granted: true })
        .expect("in protocol");
    assert!(n.groups[0].role.is_leader());
    // A client write waits on the leader.
    let req = 7;
    n.pending.insert(req, n.now + 1_000_000);
    let Some(ls) = n.groups[0].role.leading_mut() else {
        panic!("leads");
    };
    ls.pending_writes.insert(
        99,
        PendingWrite {
            origins: vec![Origin::Local(req)],
            request_id: 0,
            fingerprint: 0,
            resp: ClientResponse::Error(ErrorCode::Internal),
            ack_on_durable: false,
            acked: false,
        },
    );
    n.out.clear();
    // A higher term arrives: the leader steps down.
    n.on_raft(0, 2, 9, append(1, 1, &[])).expect("in protocol");
    assert!(n.groups[0].role.leading().is_none());
    let answered = n.out.iter().any(|a| {
        matches!(a, Action::Reply { req: r, resp: ClientResponse::Error(ErrorCode::Indeterminate) } if *r == req)
    });
    assert!(
        answered,
        "the waiting write learns its outcome is unknown: {:?}",
        n.out
    );
}

#[test]
fn a_vote_is_refused_to_a_candidate_whose_log_is_behind() {
    let mut n = node_with_log(1, 2, &[1, 2]);
    let vote = RaftMsg::Vote {
        last_index: 5,
        last_term: 1,
        transfer: false,
    };
    n.on_raft(0, 2, 3, vote).expect("in protocol");
    assert_eq!(n.groups[0].vote, None, "last term 1 < 2: not granted");
    assert_eq!(n.groups[0].term, 3, "the term still moves");
}

#[test]
fn two_pre_candidates_with_equal_logs_settle_on_the_lower_id() {
    let pre_vote = |last_index, last_term| RaftMsg::PreVote {
        last_index,
        last_term,
    };
    let granted = |n: &mut Node| {
        n.out.iter().rev().find_map(|a| match a {
            Action::Send { bytes, .. } => match Msg::decode(bytes, usize::MAX) {
                Ok(Msg::Raft {
                    body: RaftMsg::PreVoteResp { granted },
                    ..
                }) => Some(granted),
                _ => None,
            },
            _ => None,
        })
    };
    // Node 1 timed out: a pre-candidate at term 2 with entries 1@1, 2@2.
    let mut n = node_with_log(1, 2, &[1, 2]);
    n.election_timeout(0);
    assert!(matches!(n.groups[0].role, Role::PreCandidate));
    n.on_raft(0, 2, 3, pre_vote(2, 2)).expect("in protocol");
    assert_eq!(
        granted(&mut n),
        Some(false),
        "a higher id with an equal log waits"
    );
    n.on_raft(0, 0, 3, pre_vote(2, 2)).expect("in protocol");
    assert_eq!(
        granted(&mut n),
        Some(true),
        "a lower id with an equal log goes first"
    );
    n.on_raft(0, 2, 3, pre_vote(3, 2)).expect("in protocol");
    assert_eq!(
        granted(&mut n),
        Some(true),
        "a higher id with a newer log goes first"
    );
}

#[test]
fn a_promise_binds_a_vote_at_a_term_reached_another_way() {
    // Node 1 follows leader 0 (term 2): it promised.
    let mut n = node_with_log(1, 2, &[1, 2]);
    n.on_raft(0, 0, 2, append(2, 2, &[])).expect("in protocol");
    assert_eq!(n.groups[0].leader, Some(0));
    // A refused pre-vote answer from node 2 carries term 3: node 1 moves to
    // it (found by the simulator's promise checker, seed 1568 of 2000).
    n.on_raft(0, 2, 3, RaftMsg::PreVoteResp { granted: false })
        .expect("in protocol");
    assert_eq!(n.groups[0].term, 3);
    // Node 2 asks for a vote at that same term: the promise to 0 still runs.
    let vote = RaftMsg::Vote {
        last_index: 2,
        last_term: 2,
        transfer: false,
    };
    n.on_raft(0, 2, 3, vote).expect("in protocol");
    assert_eq!(n.groups[0].vote, None, "no vote while the promise runs");
}

/// Node 0 whose group 0 holds a no-op and then an async write (entry 2,
/// term 1), of which only the no-op committed; it has just won term 2.
fn leader_over_an_async_tail(own_ack_us: Option<u64>) -> Node {
    let mut n = node_with_log(0, 1, &[1]);
    let write = Entry {
        index: 2,
        term: 1,
        data: EntryData::Write(WriteEffect {
            ns: "r0-async".into(),
            revision: 1,
            request_id: 0,
            fingerprint: 0,
            keys: Vec::new(),
            reply_versions: Vec::new(),
            meta: ChangeMeta::default(),
            retention: Retention::default(),
            audit: Default::default(),
        }),
    };
    n.groups[0].log.push(write);
    n.groups[0].durable_index = 2;
    n.groups[0].commit = 1;
    n.groups[0].applied = 1;
    if let Some(at) = own_ack_us {
        n.groups[0].async_acked.push_back(AsyncAck {
            index: 2,
            term: 1,
            at_us: Some(at),
        });
    }
    n.campaign(0, false);
    n.on_raft(0, 1, 2, RaftMsg::VoteResp { granted: true })
        .expect("in protocol");
    assert!(n.groups[0].role.is_leader());
    n
}

fn async_write_answer(n: &mut Node, req: RequestId) -> Option<ClientResponse> {
    n.out.clear();
    let now = n.now;
    n.handle_client(now, req, put_k("r0-async", 0, 0));
    reply_to(n, req).cloned()
}

#[test]
fn a_new_leader_over_an_async_tail_acknowledged_elsewhere_refuses_until_it_commits() {
    // Entry 2 was acknowledged by some leader at a time this node cannot
    // know: it may be as old as the budget allows.
    let mut n = leader_over_an_async_tail(None);
    assert_eq!(
        async_write_answer(&mut n, 1),
        Some(ClientResponse::Error(ErrorCode::RpoBudgetExceeded))
    );
}

#[test]
fn a_leader_reelected_over_its_own_async_tail_keeps_its_budget_clock() {
    // It acknowledged entry 2 itself, 1.5 s before winning again; the
    // budget (2 s) runs from then, not from the new term.
    let now = 10 * Config::new(3).election_timeout_us;
    let mut n = leader_over_an_async_tail(Some(now - 1_500_000));
    assert_ne!(
        async_write_answer(&mut n, 1),
        Some(ClientResponse::Error(ErrorCode::RpoBudgetExceeded)),
        "within the budget"
    );
    n.now += 600_000;
    assert_eq!(
        async_write_answer(&mut n, 2),
        Some(ClientResponse::Error(ErrorCode::RpoBudgetExceeded)),
        "2.1 s after the first acknowledgement"
    );
}
