//! A short seed sweep of the standard scenario (every fault class on), a
//! five-region sweep, and determinism: the same seed gives the same trace.

use meridian_sim::{run_seed, Options};

#[test]
fn standard_scenario_short_sweep_passes() {
    let mut ops = 0;
    for seed in 100..=111 {
        let (r, _) = run_seed(Options::standard(seed));
        assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
        assert!(r.episodes > 0, "seed {seed} injected no faults");
        ops += r.ops_completed;
    }
    assert!(ops > 10_000, "the workload ran ({ops} operations)");
}

#[test]
fn five_regions_work() {
    for seed in 1..=3 {
        let mut o = Options::standard(seed);
        o.regions = 5;
        let (r, _) = run_seed(o);
        assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
    }
}

#[test]
fn same_seed_same_trace() {
    for seed in [7, 8] {
        let a = run_seed(Options::standard(seed)).0;
        let b = run_seed(Options::standard(seed)).0;
        assert_eq!(
            a.trace_hash, b.trace_hash,
            "seed {seed} is not deterministic"
        );
        assert_eq!(a.events, b.events);
    }
    let a = run_seed(Options::standard(7)).0;
    let c = run_seed(Options::standard(9)).0;
    assert_ne!(a.trace_hash, c.trace_hash, "different seeds must differ");
}

#[test]
fn leadership_returns_home_when_healthy() {
    for seed in 1..=3 {
        let mut o = Options::standard(seed);
        o.faults = false;
        let (r, w) = run_seed(o);
        assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
        for g in 0..3u8 {
            let last = w
                .history
                .elections
                .iter()
                .rev()
                .find(|e| e.0 == g)
                .expect("group has had a leader");
            assert_eq!(
                last.2, g,
                "seed {seed}: group {g} ends led by region {} instead of its home",
                last.2
            );
        }
    }
}
