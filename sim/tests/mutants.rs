//! The simulator can fail: every planted bug (mutant) in the core is caught
//! within a fixed set of seeds, while the unmutated core passes the same seeds.

use meridian_core::Mutants;
use meridian_sim::{run_seed, Options};

/// Seeds every mutant must be caught within (the runs are deterministic).
const SEEDS: std::ops::RangeInclusive<u64> = 1..=30;

#[test]
fn every_mutant_is_caught_and_the_real_core_passes() {
    for seed in SEEDS {
        let (r, _) = run_seed(Options::standard(seed));
        assert!(
            r.violation.is_none(),
            "unmutated core failed seed {seed}: {:?}",
            r.violation
        );
    }
    for name in Mutants::NAMES {
        let mutants = Mutants::by_name(name).expect("known mutant");
        let caught = SEEDS.clone().find_map(|seed| {
            let mut o = Options::standard(seed);
            o.mutants = mutants;
            run_seed(o).0.violation.map(|v| (seed, v.property))
        });
        let (seed, property) =
            caught.unwrap_or_else(|| panic!("mutant {name} survived seeds {SEEDS:?}"));
        println!("mutant {name}: caught by seed {seed} ({property})");
    }
}
