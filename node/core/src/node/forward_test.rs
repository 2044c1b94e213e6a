//! Forwarding a request to the leader, handler by handler.

use super::test_support::*;
use super::*;

fn reply_from(n: &mut Node, from: NodeId, id: RequestId, code: ErrorCode) {
    let bytes = Msg::ForwardReply {
        boot: n.boot,
        id,
        resp: ClientResponse::Error(code),
    }
    .encode()
    .expect("encodes");
    let now = n.now;
    n.handle_message(now, from, &bytes).expect("in protocol");
}

use reply_to as answered;

#[test]
fn only_the_forward_under_way_is_answered_by_its_reply() {
    // Node 1 follows node 0 in group 0 and forwards a write there.
    let mut n = node_with_log(1, 4, &[4]);
    n.groups[0].leader = Some(0);
    let now = n.now;
    n.handle_client(now, 5, put_k("r0-quorum", 77, 1));
    assert_eq!(n.forwarded.get(&5).map(|f| f.to), Some(0), "forwarded to 0");
    n.out.clear();
    // A reply from a node it was not forwarded to answers nothing.
    reply_from(&mut n, 2, 5, ErrorCode::Unavailable);
    assert_eq!(answered(&n, 5), None);
    // Node 0 refuses it (it no longer leads): nothing happened, so the
    // request waits for the next leader rather than failing.
    reply_from(&mut n, 0, 5, ErrorCode::Unavailable);
    assert_eq!(answered(&n, 5), None, "rerouted, not answered");
    assert!(n.parked.contains_key(&5));
    // The forward message was duplicated on the way, and node 0 refuses the
    // copy too. The request may by now sit in some leader's log (its own,
    // once it leads): UNAVAILABLE from the copy must not reach the client.
    reply_from(&mut n, 0, 5, ErrorCode::Unavailable);
    assert_eq!(answered(&n, 5), None, "a stale refusal answered the client");
    assert!(n.parked.contains_key(&5), "still waiting for a leader");
}
