//! Meridian's flag semantics beyond the testbed: every kind of invalid
//! definition is refused with its code; roll-outs distribute as promised
//! and keep users in when they grow; prerequisites agree with the flag
//! they depend on; scheduled changes take effect at their second; the
//! kill switch.

use std::collections::BTreeMap;

use meridian_flags::validate::{validate_definition, validate_set};
use meridian_flags::{Context, Definition, Evaluator, Expect, FlagErrorKind, Reason};
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

const NOW_S: u64 = 1_800_000_000;

fn def(key: &str, v: Value) -> Definition {
    validate_definition(key, &v).unwrap_or_else(|e| panic!("{key} should be valid: {e}"))
}

fn set(defs: &[(&str, Value)], segments: &[(&str, Value)]) -> Evaluator {
    let defs: BTreeMap<String, Definition> = defs
        .iter()
        .map(|(k, v)| (k.to_string(), def(k, v.clone())))
        .collect();
    let segs: BTreeMap<String, Value> = segments
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    Evaluator::new(&validate_set(&defs, &segs, Map::new()).expect("the set is valid"))
}

fn ctx(v: Value) -> Context {
    Context::new(v.as_object().cloned().expect("object")).expect("context")
}

fn rollout(on: u64, off: u64) -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
           "targeting": {"fractional": [["on", on], ["off", off]]}})
}

#[test]
fn every_kind_of_invalid_definition_is_refused_with_its_code() {
    let base = || json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"});
    let with = |k: &str, v: Value| {
        let mut b = base();
        b.as_object_mut().expect("object").insert(k.to_string(), v);
        b
    };
    let cases: Vec<(&str, Value, FlagErrorKind)> = vec![
        (
            "no state",
            json!({"variants": {"on": true}}),
            FlagErrorKind::InvalidDefinition,
        ),
        (
            "a bad state",
            with("state", json!("ON")),
            FlagErrorKind::InvalidDefinition,
        ),
        (
            "no variants",
            json!({"state": "ENABLED", "variants": {}}),
            FlagErrorKind::InvalidDefinition,
        ),
        (
            "a misspelt field",
            with("defaultvariant", json!("on")),
            FlagErrorKind::InvalidDefinition,
        ),
        (
            "an unknown default",
            with("defaultVariant", json!("maybe")),
            FlagErrorKind::UnknownVariant,
        ),
        (
            "mixed variant types",
            with("variants", json!({"on": true, "off": "no"})),
            FlagErrorKind::InvalidDefinition,
        ),
        (
            "an unknown operator",
            with(
                "targeting",
                json!({"regex_match": [{"var": "email"}, ".*"]}),
            ),
            FlagErrorKind::InvalidDefinition,
        ),
        (
            "a result that is no variant",
            with("targeting", json!({"if": [{"var": "beta"}, "yes", "off"]})),
            FlagErrorKind::UnknownVariant,
        ),
        (
            "a bucket that is no variant",
            with(
                "targeting",
                json!({"fractional": [["on", 50], ["maybe", 50]]}),
            ),
            FlagErrorKind::UnknownVariant,
        ),
        (
            "a fractional weight with a fraction",
            with(
                "targeting",
                json!({"fractional": [["on", 50.5], ["off", 49.5]]}),
            ),
            FlagErrorKind::InvalidDefinition,
        ),
        (
            "a negative weight",
            with(
                "targeting",
                json!({"fractional": [["on", -5], ["off", 105]]}),
            ),
            FlagErrorKind::InvalidDefinition,
        ),
        (
            "weights all zero",
            with("targeting", json!({"fractional": [["on", 0], ["off", 0]]})),
            FlagErrorKind::InvalidWeights,
        ),
        (
            "weights past 2^31-1",
            with(
                "targeting",
                json!({"fractional": [["on", 2147483647_u64], ["off", 1]]}),
            ),
            FlagErrorKind::InvalidWeights,
        ),
        (
            "a rule nested too deep",
            with(
                "targeting",
                (0..40).fold(json!({"var": "x"}), |r, _| json!({"!": [r]})),
            ),
            FlagErrorKind::TooLarge,
        ),
        (
            "its own prerequisite",
            with("prerequisites", json!([{"flag": "f", "variants": ["on"]}])),
            FlagErrorKind::InvalidPrerequisite,
        ),
        (
            "a schedule time that is no time",
            with(
                "schedule",
                json!([{"at": "tomorrow 9am", "defaultVariant": "on"}]),
            ),
            FlagErrorKind::InvalidDefinition,
        ),
        (
            "a scheduled default that is no variant",
            with(
                "schedule",
                json!([{"at": "2027-01-01T09:00:00Z", "defaultVariant": "maybe"}]),
            ),
            FlagErrorKind::UnknownVariant,
        ),
        (
            "an unknown off variant",
            with("offVariant", json!("maybe")),
            FlagErrorKind::UnknownVariant,
        ),
        (
            "a key with a slash",
            base(),
            FlagErrorKind::InvalidDefinition,
        ),
    ];
    for (what, v, kind) in cases {
        let key = if what == "a key with a slash" {
            "a/b"
        } else {
            "f"
        };
        let e = validate_definition(key, &v).expect_err(what);
        // Schema refusals of weights come from flagd's schema (its
        // targeting.json bounds them) before Meridian's own checks.
        let ok = e.kind == kind
            || (kind == FlagErrorKind::InvalidDefinition
                && e.kind == FlagErrorKind::InvalidWeights);
        assert!(ok, "{what}: {e} (expected {})", kind.code());
        assert!(!e.message.is_empty());
    }

    // Set-level: references, prerequisites.
    let one =
        |k: &str, v: Value| -> BTreeMap<String, Definition> { [(k.to_string(), def(k, v))].into() };
    let e = validate_set(
        &one(
            "f",
            with("targeting", json!({"if": [{"$ref": "beta"}, "on", null]})),
        ),
        &BTreeMap::new(),
        Map::new(),
    )
    .expect_err("dangling $ref");
    assert_eq!(e.kind, FlagErrorKind::UnresolvedRef, "{e}");
    let e = validate_set(
        &one(
            "f",
            with("prerequisites", json!([{"flag": "g", "variants": ["on"]}])),
        ),
        &BTreeMap::new(),
        Map::new(),
    )
    .expect_err("missing prerequisite");
    assert_eq!(e.kind, FlagErrorKind::InvalidPrerequisite, "{e}");
    let mut two = one(
        "f",
        with("prerequisites", json!([{"flag": "g", "variants": ["on"]}])),
    );
    two.insert(
        "g".into(),
        def(
            "g",
            with("prerequisites", json!([{"flag": "f", "variants": ["on"]}])),
        ),
    );
    let e = validate_set(&two, &BTreeMap::new(), Map::new()).expect_err("cycle");
    assert_eq!(e.kind, FlagErrorKind::InvalidPrerequisite, "{e}");
    assert!(e.message.contains("cycle"), "{e}");
    let mut bad_variant = one(
        "f",
        with("prerequisites", json!([{"flag": "g", "variants": ["yes"]}])),
    );
    bad_variant.insert("g".into(), def("g", base()));
    let e =
        validate_set(&bad_variant, &BTreeMap::new(), Map::new()).expect_err("prerequisite variant");
    assert_eq!(e.kind, FlagErrorKind::UnknownVariant, "{e}");
}

/// 100,000 random targeting keys against a 30/70 split land 30 % ± 1 %;
/// moving to 40/60 (and 10 % to 20 %) takes no key out of the first variant.
#[test]
fn rollouts_distribute_as_weighted_and_growing_them_keeps_everyone_in() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let keys: Vec<String> = (0..100_000)
        .map(|_| format!("user-{:016x}", rng.random::<u64>()))
        .collect();
    let on_set = |on: u64| -> Vec<bool> {
        let ev = set(&[("f", rollout(on, 100 - on))], &[]);
        keys.iter()
            .map(|k| {
                let r = ev.evaluate("f", &ctx(json!({"targetingKey": k})), NOW_S, Expect::Bool);
                assert_eq!(r.reason, Reason::TargetingMatch);
                r.value == Some(&Value::Bool(true))
            })
            .collect()
    };
    let at30 = on_set(30);
    let share = at30.iter().filter(|b| **b).count() as f64 / keys.len() as f64;
    println!(
        "30/70 split: {:.3} % of 100,000 keys got the first variant",
        share * 100.0
    );
    assert!((share - 0.30).abs() <= 0.01, "{share}");
    let at40 = on_set(40);
    assert!(
        at30.iter().zip(&at40).all(|(a, b)| !*a || *b),
        "a key left the first variant at 40/60"
    );
    let (at10, at20) = (on_set(10), on_set(20));
    assert!(
        at10.iter().zip(&at20).all(|(a, b)| !*a || *b),
        "a key left the roll-out at 20 %"
    );
}

#[test]
fn a_prerequisite_gates_on_the_variant_its_flag_answers_on_its_own() {
    let checkout = json!({"state": "ENABLED", "variants": {"new": "new", "old": "old"}, "defaultVariant": "new",
                          "offVariant": "old", "prerequisites": [{"flag": "payments", "variants": ["on"]}]});
    let ev = set(
        &[("payments", rollout(50, 50)), ("checkout", checkout)],
        &[],
    );
    let (mut gated, mut open) = (0, 0);
    for i in 0..2000 {
        let c = ctx(json!({"targetingKey": format!("u{i}")}));
        let p = ev.evaluate("payments", &c, NOW_S, Expect::Bool);
        let k = ev.evaluate("checkout", &c, NOW_S, Expect::String);
        let want = if p.variant == Some("on") {
            "new"
        } else {
            "old"
        };
        assert_eq!(k.variant, Some(want), "u{i}: payments {:?}", p.variant);
        if want == "new" {
            open += 1
        } else {
            gated += 1
        }
    }
    assert!(gated > 800 && open > 800, "{gated} {open}");
    // A disabled prerequisite fails every gate.
    let mut p = rollout(50, 50);
    p["state"] = json!("DISABLED");
    let ev = set(
        &[
            ("payments", p),
            (
                "checkout",
                json!({"state": "ENABLED", "variants": {"new": "new", "old": "old"},
        "defaultVariant": "new", "offVariant": "old", "prerequisites": [{"flag": "payments", "variants": ["on"]}]}),
            ),
        ],
        &[],
    );
    let r = ev.evaluate(
        "checkout",
        &ctx(json!({"targetingKey": "u1"})),
        NOW_S,
        Expect::String,
    );
    assert_eq!(r.variant, Some("old"));
}

#[test]
fn a_scheduled_change_takes_effect_at_its_second_and_segments_are_shared() {
    let at = "2027-01-15T09:00:00Z";
    let at_s = meridian_flags::time::parse_rfc3339_utc(at).expect("time");
    let f = json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                   "targeting": {"if": [{"$ref": "beta"}, "on", null]},
                   "schedule": [{"at": at, "defaultVariant": "on"}]});
    let ev = set(
        &[("launch", f)],
        &[(
            "beta",
            json!({"ends_with": [{"var": "email"}, "@beta.example"]}),
        )],
    );
    let user = ctx(json!({"targetingKey": "u", "email": "a@example.com"}));
    let beta = ctx(json!({"targetingKey": "b", "email": "b@beta.example"}));
    assert_eq!(
        ev.evaluate("launch", &user, at_s - 1, Expect::Bool).variant,
        Some("off")
    );
    assert_eq!(
        ev.evaluate("launch", &beta, at_s - 1, Expect::Bool).variant,
        Some("on")
    );
    assert_eq!(
        ev.evaluate("launch", &user, at_s, Expect::Bool).variant,
        Some("on")
    );
    assert_eq!(
        ev.evaluate("launch", &beta, at_s + 3600, Expect::Bool)
            .variant,
        Some("on")
    );
}

#[test]
fn the_kill_switch_answers_disabled_and_no_value() {
    let mut f = rollout(100, 0);
    f["state"] = json!("DISABLED");
    let ev = set(&[("f", f)], &[]);
    let r = ev.evaluate("f", &ctx(json!({"targetingKey": "u"})), NOW_S, Expect::Bool);
    assert_eq!((r.reason, r.value, r.error), (Reason::Disabled, None, None));
    let r = ev.evaluate("nope", &ctx(json!({})), NOW_S, Expect::Bool);
    assert_eq!(r.error.map(|e| e.0.as_str()), Some("FLAG_NOT_FOUND"));
    let r = ev.evaluate("f", &ctx(json!({})), NOW_S, Expect::String);
    assert_eq!(
        r.reason,
        Reason::Disabled,
        "a disabled flag is not type-checked"
    );
    let e = Context::new(
        json!({"targetingKey": 5})
            .as_object()
            .cloned()
            .expect("obj"),
    )
    .err()
    .map(|e| e.0.as_str());
    assert_eq!(e, Some("INVALID_CONTEXT"));
}

#[test]
fn a_rule_that_reads_the_targeting_key_reports_its_absence() {
    let ev = set(&[("f", rollout(50, 50))], &[]);
    let r = ev.evaluate("f", &ctx(json!({"email": "x"})), NOW_S, Expect::Bool);
    assert!(r.targeting_key_missing);
    assert_eq!(
        (r.reason, r.variant),
        (Reason::Default, Some("off")),
        "flagd's answer stays the default"
    );
    let r = ev.evaluate("f", &ctx(json!({"targetingKey": "u"})), NOW_S, Expect::Bool);
    assert!(!r.targeting_key_missing);
}

#[test]
fn served_variants_count_as_impressions_and_nothing_else_does() {
    let ev = set(
        &[
            ("split", rollout(30, 70)),
            (
                "killed",
                json!({"state": "DISABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "a"}),
            ),
        ],
        &[],
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let mut served: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..1000 {
        let c = ctx(json!({"targetingKey": format!("user-{}", rng.random::<u64>())}));
        let r = ev.evaluate("split", &c, NOW_S, Expect::Bool);
        *served
            .entry(r.variant.expect("served").to_string())
            .or_default() += 1;
        // Not served: a disabled flag, an unknown flag, a type mismatch,
        // and an evaluation asked not to count.
        assert_eq!(ev.evaluate("killed", &c, NOW_S, Expect::Int).variant, None);
        assert!(ev
            .evaluate("missing", &c, NOW_S, Expect::Bool)
            .error
            .is_some());
        assert!(ev
            .evaluate("split", &c, NOW_S, Expect::String)
            .error
            .is_some());
        ev.evaluate_uncounted("split", &c, NOW_S, Expect::Bool);
    }
    let mut tally = meridian_flags::Tally::new(60, 100);
    tally.drain_from(&ev, NOW_S + 59);
    let cells = tally.take();
    let counted: BTreeMap<String, u64> = cells
        .iter()
        .map(|c| {
            assert_eq!(
                (c.flag.as_str(), c.window_start_s),
                ("split", NOW_S - NOW_S % 60)
            );
            (c.variant.clone(), c.count)
        })
        .collect();
    assert_eq!(counted, served, "exactly the variants served, once each");
    tally.drain_from(&ev, NOW_S);
    assert!(tally.is_empty(), "a drain zeroes the counters");
}
