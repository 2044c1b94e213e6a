//! A leader's periodic duties run on their own clock, not only when the
//! group is idle. Under steady writes every proposal starts a replication
//! round, and the heartbeat timer used to be pushed back by each of them, so
//! the duties that rode on it (check-quorum, lease preference) never ran
//! while clients kept writing: leadership did not return to a restarted home
//! region until the load stopped (found by the kill -9 test under load), and
//! a leader cut off from its peers kept leading as long as local clients kept
//! proposing.

mod common;

use common::Net;
use meridian_core::*;

/// A client of node `at` writes to group `g`'s namespace and reads it back.
fn propose(net: &mut Net, at: NodeId, g: usize, id: u64) {
    let now = net.now;
    let (ns, key) = (format!("r{g}-quorum"), format!("k{id}"));
    net.nodes[at as usize].handle_client(now, 2 * id, common::put(&ns, &key, b"v"));
    net.nodes[at as usize].handle_client(now, 2 * id + 1, common::get(&ns, &key));
}

/// Run until every group is led by its home region, or fail at `deadline_us`.
fn until_home(net: &mut Net, deadline_us: u64) {
    while (0..3).any(|g| net.leader(0, g) != Some(g as NodeId)) {
        assert!(net.now < deadline_us, "leadership went home at start-up");
        net.run_until(net.now + 10_000);
    }
}

#[test]
fn leadership_returns_home_while_writes_never_stop() {
    let mut net = Net::new(3);
    until_home(&mut net, 15_000_000);
    // Region 0 is cut off: group 0 elects a leader elsewhere.
    let mut id = 1_000u64;
    net.cut.insert(0);
    let cut_at = net.now;
    let _other = loop {
        for at in 1..3 {
            propose(&mut net, at, 0, id);
            id += 1;
        }
        net.run_until(net.now + 20_000);
        match net.leader(1, 0) {
            Some(l) if l != 0 && net.leader(2, 0) == Some(l) => break l,
            _ => assert!(net.now < cut_at + 10_000_000, "group 0 elected elsewhere"),
        }
    };
    // It returns and writes go on every 20 ms, without a pause, through
    // every region (forwarded writes and reads from the others): leadership
    // comes home after home_return_delay_us, during the load.
    net.cut.clear();
    let healed_at = net.now;
    let bound_us = healed_at + net.cfg.home_return_delay_us + 3 * net.cfg.election_timeout_us;
    loop {
        for at in 0..3 {
            propose(&mut net, at, 0, id);
            id += 1;
        }
        net.run_until(net.now + 20_000);
        if (0..3).all(|at| net.leader(at, 0) == Some(0)) {
            break;
        }
        assert!(
            net.now < bound_us,
            "leadership of group 0 did not return home within {} ms of the heal under steady writes (still at {:?})",
            (bound_us - healed_at) / 1000,
            net.leader(1, 0)
        );
    }
}

#[test]
fn a_leader_cut_off_steps_down_while_its_clients_keep_writing() {
    let mut net = Net::new(3);
    until_home(&mut net, 15_000_000);
    net.cut.insert(0);
    let cut_at = net.now;
    // Check-quorum: an election timeout without a majority, plus a heartbeat
    // interval for the check to come round.
    let bound_us = cut_at + 2 * net.cfg.election_timeout_us;
    let mut id = 1_000u64;
    while net.nodes[0].is_leader(0) {
        for at in 0..3 {
            propose(&mut net, at, 0, id);
            id += 1;
        }
        net.run_until(net.now + 20_000);
        assert!(
            net.now < bound_us,
            "region 0, cut off, still leads group 0 {} ms later while its clients write",
            (net.now - cut_at) / 1000
        );
    }
}
