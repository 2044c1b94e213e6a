//! Server and client agree: the regions evaluate the compiled set they
//! hold; clients (the Rust library, flagd's in-process providers) evaluate
//! what the sync service sends, the set's flagd JSON. On random definitions
//! (rules from a grammar of the operators flagd has, segments, roll-outs,
//! prerequisites, schedules) and random contexts, both give the same
//! answer. Seeded: a failure names its seed.

use std::collections::BTreeMap;

use meridian_flags::validate::{validate_definition, validate_set};
use meridian_flags::{Context, Evaluator, Expect, FlagSet, Reason};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

const VARIANTS: [&str; 3] = ["red", "green", "blue"];

fn pick<'a>(rng: &mut StdRng, of: &[&'a str]) -> &'a str {
    of[rng.random_range(0..of.len())]
}

fn cond(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth > 2 { 5 } else { 8 }) {
        0 => json!({"==": [{"var": "country"}, pick(rng, &["CA", "US", "FR"])]}),
        1 => json!({"in": [{"var": "country"}, ["CA", "US"]]}),
        2 => json!({"starts_with": [{"var": "email"}, pick(rng, &["a", "b", "z"])]}),
        3 => json!({"sem_ver": [{"var": "version"}, pick(rng, &[">=", "<", "^", "~"]), "1.2.0"]}),
        4 => json!({">": [{"var": "age"}, rng.random_range(10..60)]}),
        5 => json!({"$ref": pick(rng, &["beta", "staff"])}),
        6 => json!({"and": [cond(rng, depth + 1), cond(rng, depth + 1)]}),
        _ => json!({"!": [cond(rng, depth + 1)]}),
    }
}

fn split(rng: &mut StdRng) -> Value {
    let mut buckets: Vec<Value> = VARIANTS
        .iter()
        .map(|v| json!([v, rng.random_range(0..100)]))
        .collect();
    buckets[0] = json!([VARIANTS[0], rng.random_range(1..100)]);
    if rng.random_bool(0.5) {
        buckets.insert(
            0,
            json!({"cat": [{"var": "$flagd.flagKey"}, {"var": "email"}]}),
        );
    }
    json!({ "fractional": buckets })
}

fn result(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth > 1 { 3 } else { 4 }) {
        0 => json!(pick(rng, &VARIANTS)),
        1 => split(rng),
        2 => Value::Null,
        _ => json!({"if": [cond(rng, 0), result(rng, depth + 1), result(rng, depth + 1)]}),
    }
}

fn flag(rng: &mut StdRng, earlier: &[String]) -> Value {
    let mut f = json!({
        "state": if rng.random_bool(0.9) { "ENABLED" } else { "DISABLED" },
        "variants": {"red": "#f00", "green": "#0f0", "blue": "#00f"},
        "defaultVariant": pick(rng, &VARIANTS),
    });
    if rng.random_bool(0.85) {
        f["targeting"] = result(rng, 0);
        if f["targeting"].is_string() || f["targeting"].is_null() {
            f["targeting"] = json!({"if": [cond(rng, 0), f["targeting"].clone(), null]});
        }
    }
    if !earlier.is_empty() && rng.random_bool(0.3) {
        let b = &earlier[rng.random_range(0..earlier.len())];
        f["prerequisites"] = json!([{"flag": b, "variants": [pick(rng, &VARIANTS)]}]);
        f["offVariant"] = json!(pick(rng, &VARIANTS));
    }
    if rng.random_bool(0.2) {
        f["schedule"] =
            json!([{"at": "2027-01-01T00:00:00Z", "defaultVariant": pick(rng, &VARIANTS)}]);
    }
    f
}

fn context(rng: &mut StdRng) -> Context {
    let mut m = Map::new();
    if rng.random_bool(0.9) {
        m.insert(
            "targetingKey".into(),
            json!(format!("user-{}", rng.random::<u32>())),
        );
    }
    m.insert(
        "email".into(),
        json!(format!("{}@x.example", pick(rng, &["ann", "bob", "zed"]))),
    );
    m.insert(
        "country".into(),
        json!(pick(rng, &["CA", "US", "FR", "DE"])),
    );
    m.insert(
        "version".into(),
        json!(pick(rng, &["1.0.0", "1.2.0", "1.3.5", "2.0.0"])),
    );
    m.insert("age".into(), json!(rng.random_range(5..70)));
    Context::new(m).expect("context")
}

#[test]
fn regions_and_clients_answer_alike_on_random_definitions() {
    let segments: BTreeMap<String, Value> = [
        (
            "beta".to_string(),
            json!({"ends_with": [{"var": "email"}, "x.example"]}),
        ),
        (
            "staff".to_string(),
            json!({"in": [{"var": "country"}, ["CA"]]}),
        ),
    ]
    .into();
    let (mut compared, mut matched) = (0u64, 0u64);
    for seed in 0..300u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut defs = BTreeMap::new();
        let mut keys: Vec<String> = Vec::new();
        for i in 0..rng.random_range(1..6) {
            let key = format!("f{i}");
            let v = flag(&mut rng, &keys);
            let d = validate_definition(&key, &v)
                .unwrap_or_else(|e| panic!("seed {seed}: {key} {v}: {e}"));
            defs.insert(key.clone(), d);
            keys.push(key);
        }
        let set = validate_set(&defs, &segments, Map::new())
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let server = Evaluator::new(&set);
        let wire = set.to_json().to_string();
        let client = Evaluator::new(
            &FlagSet::from_json(&serde_json::from_str(&wire).expect("JSON")).expect("parses"),
        );
        for _ in 0..40 {
            let ctx = context(&mut rng);
            let now = if rng.random_bool(0.5) {
                1_790_000_000
            } else {
                1_800_000_000
            };
            for key in &keys {
                let a = server.evaluate(key, &ctx, now, Expect::Any);
                let b = client.evaluate(key, &ctx, now, Expect::Any);
                assert_eq!(
                    a, b,
                    "seed {seed}, flag {key}: server {a:?}, client {b:?}\n{wire}"
                );
                assert!(a.error.is_none(), "seed {seed}, flag {key}: {a:?}\n{wire}");
                compared += 1;
                if a.reason == Reason::TargetingMatch {
                    matched += 1;
                }
            }
        }
    }
    println!("{compared} evaluations compared, {matched} by targeting");
    assert!(
        matched * 4 > compared,
        "too few evaluations went through targeting: {matched} of {compared}"
    );
}
