//! The simulator can fail: every planted bug (mutant) in the core is caught
//! within 500 seeds of the scenario named for it, while the unmutated core
//! passes the same scenarios.
//!
//! The older mutants are caught by the standard scenario within a few
//! seeds. The newer ones hide in states only swarm seeds reach: a promise
//! forgotten across a restart needs a vote request to meet a node that
//! just restarted; an ignored RPO budget needs a leader whose appends stall
//! and which then fails; a pipeline that refills on every answer needs a
//! follower that takes no entries.

use meridian_core::Mutants;
use meridian_sim::{run_seed, Options};

/// Seeds the unmutated core must pass in each scenario here.
const CLEAN_SEEDS: std::ops::RangeInclusive<u64> = 1..=30;
/// Seeds a mutant must be caught within (the runs are deterministic).
const CATCH_SEEDS: std::ops::RangeInclusive<u64> = 1..=500;

fn scenario(seed: u64, swarm: bool) -> Options {
    let mut o = Options::standard(seed);
    o.swarm = swarm;
    o
}

/// The scenario each mutant must be caught in: swarm (true) or standard.
fn swarm_for(name: &str) -> bool {
    matches!(
        name,
        "promise-forgotten-on-restart" | "rpo-budget-ignored" | "pipeline-refills-on-any-answer"
    )
}

#[test]
fn every_mutant_is_caught_and_the_real_core_passes() {
    for swarm in [false, true] {
        for seed in CLEAN_SEEDS {
            let (r, _) = run_seed(scenario(seed, swarm));
            assert!(
                r.violation.is_none(),
                "unmutated core failed seed {seed} (swarm: {swarm}): {:?}",
                r.violation
            );
        }
    }
    for name in Mutants::NAMES {
        let mutants = Mutants::by_name(name).expect("known mutant");
        let swarm = swarm_for(name);
        let caught = CATCH_SEEDS.clone().find_map(|seed| {
            let mut o = scenario(seed, swarm);
            o.mutants = mutants;
            run_seed(o).0.violation.map(|v| (seed, v.property))
        });
        let (seed, property) = caught.unwrap_or_else(|| {
            panic!("mutant {name} survived seeds {CATCH_SEEDS:?} (swarm: {swarm})")
        });
        println!("mutant {name}: caught by seed {seed} (swarm: {swarm}, {property})");
    }
}
