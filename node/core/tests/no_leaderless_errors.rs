//! A healthy cluster gives clients no errors while leadership moves (issue
//! 20). Shortly after a cluster starts, each group's leadership returns to
//! its home region (lease preference): a hand-over with a moment in which the
//! group has no leader. Requests arriving then used to fail with UNAVAILABLE
//! ("no leader is known") or be refused by the leader handing over; now they
//! wait inside the node for the next leader, within their deadline.

mod common;

use common::Net;
use meridian_core::*;

fn write(ns: &str, key: &str) -> ClientRequest {
    common::put(ns, key, b"v")
}

fn read(ns: &str, key: &str) -> ClientRequest {
    common::get(ns, key)
}

#[test]
fn leadership_returning_home_gives_clients_no_errors() {
    let mut net = Net::new(3);
    // Leaders exist (elected wherever the first election went).
    net.run_until(2_500_000);
    let first: Vec<Option<NodeId>> = (0..3).map(|g| net.leader(0, g)).collect();
    assert!(
        first.iter().all(|l| l.is_some()),
        "leaders at 2.5 s: {first:?}"
    );
    // Every 20 ms each region writes and reads each group's namespace, while
    // leadership returns home (after `home_return_delay_us`, 5 s).
    let mut id = 1_000u64;
    let mut sent = 0;
    let mut t = net.now;
    while t < 12_000_000 {
        for n in 0..3u8 {
            for g in 0..3 {
                let ns = format!("r{g}-quorum");
                let now = net.now;
                net.nodes[n as usize].handle_client(now, id, write(&ns, &format!("k{n}")));
                net.nodes[n as usize].handle_client(now, id + 1, read(&ns, &format!("k{n}")));
                id += 2;
                sent += 2;
            }
        }
        t += 20_000;
        net.run_until(t);
    }
    net.run_until(t + 6_000_000);
    let home: Vec<Option<NodeId>> = (0..3).map(|g| net.leader(0, g)).collect();
    assert_eq!(
        home,
        vec![Some(0), Some(1), Some(2)],
        "leadership went home"
    );
    let moved = (0..3).filter(|&g| first[g] != home[g]).count();
    assert!(
        moved > 0,
        "no group changed leader during the load (leaders were {first:?}): the test saw no hand-over"
    );
    let errors: Vec<_> = net
        .replies
        .iter()
        .filter(|(_, r, resp)| *r >= 1_000 && matches!(resp, ClientResponse::Error(_)))
        .collect();
    let answered = net.replies.iter().filter(|(_, r, _)| *r >= 1_000).count();
    assert_eq!(answered, sent, "every request answered");
    assert!(
        errors.is_empty(),
        "{} of {sent} requests failed while {moved} group(s) moved home: {:?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
}
