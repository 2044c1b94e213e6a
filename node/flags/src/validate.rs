//! What makes a flag definition acceptable. A write runs, in order:
//! flagd's published JSON Schema (vendored in `schema/`), Meridian's
//! shape (`Definition::from_json`), then checks no schema can express:
//! variants of one type, defaults and rule results that name variants,
//! `fractional` weights, operators the engine has, `$ref`s that resolve,
//! size limits, and prerequisites (`validate_set`). Each refusal has a
//! stable code (`FlagErrorKind`) and names the flag and the place.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde_json::{json, Map, Value};

use crate::compile;
use crate::error::{FlagError, FlagErrorKind};
use crate::eval::engine;
use crate::model::{Definition, FlagSet};
use crate::refs;

/// Bytes of one flag's JSON (variants, rules and metadata together).
pub const FLAG_BYTES_MAX: usize = 256 * 1024;
/// Bytes of one rule (a targeting, a segment) as JSON.
pub const RULE_BYTES_MAX: usize = 64 * 1024;
/// Nesting of a rule's JSON.
pub const RULE_DEPTH_MAX: usize = 32;
/// Variants of one flag.
pub const VARIANTS_MAX: usize = 256;
/// Scheduled changes of one flag.
pub const SCHEDULE_MAX: usize = 32;
/// Prerequisites of one flag.
pub const PREREQUISITES_MAX: usize = 16;
/// Bytes of a flag key or segment name.
pub const NAME_BYTES_MAX: usize = 128;
/// flagd's bound on a `fractional` split's total weight.
pub const WEIGHT_SUM_MAX: i64 = i32::MAX as i64;

const FLAGS_SCHEMA: &str = include_str!("../schema/flags.json");
const TARGETING_SCHEMA: &str = include_str!("../schema/targeting.json");

/// flagd's schema, compiled once; Err holds why it would not compile
/// (a broken vendored file: every validation then fails loudly).
static SCHEMA: LazyLock<Result<jsonschema::Validator, String>> = LazyLock::new(|| {
    let flags: Value = serde_json::from_str(FLAGS_SCHEMA).map_err(|e| e.to_string())?;
    let targeting: Value = serde_json::from_str(TARGETING_SCHEMA).map_err(|e| e.to_string())?;
    let registry = jsonschema::Registry::new()
        .add(
            "https://flagd.dev/schema/v0/targeting.json",
            jsonschema::Resource::from_contents(targeting),
        )
        .and_then(|b| b.prepare())
        .map_err(|e| e.to_string())?;
    jsonschema::options()
        .with_registry(&registry)
        .with_base_uri("https://flagd.dev/schema/v0/flags.json")
        .build(&flags)
        .map_err(|e| e.to_string())
});

fn err(kind: FlagErrorKind, msg: impl Into<String>) -> FlagError {
    FlagError::new(kind, msg)
}

/// Checks a flagd flag-set document against flagd's JSON Schema.
pub fn check_schema(doc: &Value) -> Result<(), FlagError> {
    let validator = SCHEMA.as_ref().map_err(|e| {
        err(
            FlagErrorKind::InvalidDefinition,
            format!("flagd's schema does not compile: {e}"),
        )
    })?;
    let problems: Vec<String> = validator
        .iter_errors(doc)
        .take(3)
        .map(|e| {
            let at = e.instance_path().to_string();
            format!("{} ({})", e, if at.is_empty() { "/" } else { &at })
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(err(
            FlagErrorKind::InvalidDefinition,
            format!("flagd's schema refuses it: {}", problems.join("; ")),
        ))
    }
}

/// A flag key or segment name: 1 to 128 bytes of letters, digits, `_`,
/// `-`, `.`; it is also a part of a stored key.
pub fn check_name(what: &str, name: &str) -> Result<(), FlagError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(err(
            FlagErrorKind::InvalidDefinition,
            format!("{what} {name:?}: 1 to {NAME_BYTES_MAX} letters, digits, '_', '-' or '.'"),
        ))
    }
}

/// One flag as written: its JSON against flagd's schema and Meridian's
/// shape, then every check that needs only the flag itself. Segment
/// references and prerequisites are checked with the whole set
/// (`validate_set`).
pub fn validate_definition(key: &str, v: &Value) -> Result<Definition, FlagError> {
    check_name("flag", key)?;
    let bytes = serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
    if bytes > FLAG_BYTES_MAX {
        return Err(err(
            FlagErrorKind::TooLarge,
            format!("flag {key:?} is {bytes} bytes of JSON; at most {FLAG_BYTES_MAX}"),
        ));
    }
    // flagd's schema sees the flag without Meridian's fields.
    let mut flagd_only = v.clone();
    if let Some(o) = flagd_only.as_object_mut() {
        for f in ["prerequisites", "offVariant", "schedule"] {
            o.remove(f);
        }
    }
    check_schema(&json!({ "flags": { key: flagd_only } }))?;
    let def = Definition::from_json(key, v)?;
    let flag = &def.flag;
    if flag.variants.len() > VARIANTS_MAX {
        return Err(err(
            FlagErrorKind::TooLarge,
            format!(
                "flag {key:?} has {} variants; at most {VARIANTS_MAX}",
                flag.variants.len()
            ),
        ));
    }
    let mut kinds = flag.variants.values().map(json_kind);
    if let Some(first) = kinds.next() {
        if kinds.any(|k| k != first) {
            return Err(err(
                FlagErrorKind::MixedVariantTypes,
                format!("flag {key:?}: variants must all be of one type (boolean, string, number or object)"),
            ));
        }
    }
    let variant = |what: &str, name: &str| -> Result<(), FlagError> {
        if flag.variants.contains_key(name) {
            Ok(())
        } else {
            Err(err(
                FlagErrorKind::UnknownVariant,
                format!(
                    "flag {key:?}: {what} {name:?} is not one of its variants ({})",
                    names(&flag.variants)
                ),
            ))
        }
    };
    if let Some(d) = &flag.default_variant {
        variant("defaultVariant", d)?;
    }
    if let Some(o) = &def.off_variant {
        variant("offVariant", o)?;
    }
    if let Some(t) = &flag.targeting {
        check_rule(key, "targeting", t, &variant)?;
    }
    if def.schedule.len() > SCHEDULE_MAX {
        return Err(err(
            FlagErrorKind::TooLarge,
            format!("flag {key:?}: at most {SCHEDULE_MAX} scheduled changes"),
        ));
    }
    for s in &def.schedule {
        if let Some(d) = &s.default_variant {
            variant("a scheduled defaultVariant", d)?;
        }
        if let Some(Some(t)) = &s.targeting {
            check_schema(
                &json!({"flags": {key: {"state": "ENABLED", "variants": {"x": true}, "targeting": t}}}),
            )?;
            check_rule(key, "a scheduled targeting", t, &variant)?;
        }
    }
    if def.prerequisites.len() > PREREQUISITES_MAX {
        return Err(err(
            FlagErrorKind::TooLarge,
            format!("flag {key:?}: at most {PREREQUISITES_MAX} prerequisites"),
        ));
    }
    if def.prerequisites.iter().any(|p| p.flag == key) {
        return Err(err(
            FlagErrorKind::InvalidPrerequisite,
            format!("flag {key:?} cannot be its own prerequisite"),
        ));
    }
    Ok(def)
}

/// A segment (a shared rule, flagd's `$evaluators` entry) as written.
pub fn validate_segment(name: &str, rule: &Value) -> Result<(), FlagError> {
    check_name("segment", name)?;
    check_schema(&json!({"flags": {}, "$evaluators": { name: rule }}))?;
    check_size(&format!("segment {name:?}"), rule)?;
    check_operators(&format!("segment {name:?}"), rule)
}

/// The whole environment after a write: every `$ref` resolves, every
/// prerequisite names a flag and variants it has, no cycles, and the
/// compiled rules compile. Returns the flagd form.
pub fn validate_set(
    defs: &BTreeMap<String, Definition>,
    segments: &BTreeMap<String, Value>,
    metadata: Map<String, Value>,
) -> Result<FlagSet, FlagError> {
    for (name, rule) in segments {
        refs::substitute(rule, segments)
            .map_err(|e| err(e.kind, format!("segment {name:?}: {}", e.message)))?;
    }
    for (key, def) in defs {
        let rules = def.flag.targeting.iter().chain(
            def.schedule
                .iter()
                .filter_map(|s| s.targeting.as_ref().and_then(Option::as_ref)),
        );
        for rule in rules {
            refs::substitute(rule, segments)
                .map_err(|e| err(e.kind, format!("flag {key:?}: {}", e.message)))?;
        }
        for p in &def.prerequisites {
            let Some(b) = defs.get(&p.flag) else {
                return Err(err(
                    FlagErrorKind::InvalidPrerequisite,
                    format!(
                        "flag {key:?}: prerequisite {:?} is no flag of this environment",
                        p.flag
                    ),
                ));
            };
            if let Some(v) = p
                .variants
                .iter()
                .find(|v| !b.flag.variants.contains_key(*v))
            {
                return Err(err(
                    FlagErrorKind::UnknownVariant,
                    format!(
                        "flag {key:?}: prerequisite {:?} has no variant {v:?} ({})",
                        p.flag,
                        names(&b.flag.variants)
                    ),
                ));
            }
        }
    }
    let set = compile::compile_set(defs, segments, metadata)?;
    for (key, flag) in &set.flags {
        if let Some(t) = &flag.targeting {
            let resolved = refs::substitute(t, segments)?;
            let bytes = serde_json::to_vec(&resolved)
                .map(|b| b.len())
                .unwrap_or(usize::MAX);
            if bytes > FLAG_BYTES_MAX {
                return Err(err(
                    FlagErrorKind::TooLarge,
                    format!("flag {key:?}: its rule with segments and prerequisites inlined is {bytes} bytes; at most {FLAG_BYTES_MAX}"),
                ));
            }
            engine().compile(&resolved).map_err(|e| {
                err(
                    FlagErrorKind::InvalidDefinition,
                    format!("flag {key:?}: its compiled rule does not compile: {e}"),
                )
            })?;
        }
    }
    Ok(set)
}

fn names(variants: &BTreeMap<String, Value>) -> String {
    variants
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "boolean",
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::Null => "null",
    }
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn check_size(what: &str, rule: &Value) -> Result<(), FlagError> {
    let bytes = serde_json::to_vec(rule)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if bytes > RULE_BYTES_MAX {
        return Err(err(
            FlagErrorKind::TooLarge,
            format!("{what} is {bytes} bytes; at most {RULE_BYTES_MAX}"),
        ));
    }
    let d = depth(rule);
    if d > RULE_DEPTH_MAX {
        return Err(err(
            FlagErrorKind::TooLarge,
            format!("{what} nests {d} deep; at most {RULE_DEPTH_MAX}"),
        ));
    }
    Ok(())
}

/// Every one-key object of a rule is an operator the engine has (or a
/// `$ref`); the engine compiles it.
fn check_operators(what: &str, rule: &Value) -> Result<(), FlagError> {
    fn walk(v: &Value, e: &datalogic_rs::Engine, bad: &mut Option<String>) {
        match v {
            Value::Array(a) => a.iter().for_each(|i| walk(i, e, bad)),
            Value::Object(o) => {
                if o.len() == 1 && refs::as_ref(v).is_none() {
                    if let Some(op) = o.keys().next() {
                        let known = e.builtin_operator_names().any(|n| n == op)
                            || e.has_custom_operator(op);
                        if !known && bad.is_none() {
                            *bad = Some(op.clone());
                        }
                    }
                }
                o.values().for_each(|i| walk(i, e, bad));
            }
            _ => {}
        }
    }
    let mut bad = None;
    walk(rule, engine(), &mut bad);
    if let Some(op) = bad {
        return Err(err(
            FlagErrorKind::UnknownOperator,
            format!("{what}: no operator {op:?}"),
        ));
    }
    // `$ref`s are checked against the set; compile a copy with them as
    // `null` to let the engine judge everything else.
    let stripped = strip_refs(rule);
    engine().compile(&stripped).map(|_| ()).map_err(|e| {
        err(
            FlagErrorKind::InvalidDefinition,
            format!("{what} does not compile: {e}"),
        )
    })
}

fn strip_refs(v: &Value) -> Value {
    if refs::as_ref(v).is_some() {
        return Value::Null;
    }
    match v {
        Value::Array(a) => Value::Array(a.iter().map(strip_refs).collect()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, i)| (k.clone(), strip_refs(i))).collect())
        }
        other => other.clone(),
    }
}

/// A flag's rule: size, operators, `fractional` splits, and the variants
/// its literal results name.
fn check_rule(
    key: &str,
    what: &str,
    rule: &Value,
    variant: &dyn Fn(&str, &str) -> Result<(), FlagError>,
) -> Result<(), FlagError> {
    let what = format!("flag {key:?}: {what}");
    check_size(&what, rule)?;
    check_operators(&what, rule)?;
    check_results(rule, variant)?;
    check_fractionals(&what, rule, variant)
}

/// Literal strings a rule can answer with (the rule itself, `if`'s
/// branches, recursively) must be variants.
fn check_results(
    rule: &Value,
    variant: &dyn Fn(&str, &str) -> Result<(), FlagError>,
) -> Result<(), FlagError> {
    match rule {
        Value::String(s) => variant("targeting answers", s),
        Value::Object(o) if o.len() == 1 => match o.iter().next() {
            Some((op, Value::Array(args))) if op == "if" || op == "?:" => {
                for (i, a) in args.iter().enumerate() {
                    let is_branch = i % 2 == 1 || i == args.len() - 1;
                    if is_branch {
                        check_results(a, variant)?;
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Each `fractional`: bucket names that are literal strings are variants;
/// literal weights are whole, not negative, and sum to at most 2^31 - 1
/// with at least one positive.
fn check_fractionals(
    what: &str,
    rule: &Value,
    variant: &dyn Fn(&str, &str) -> Result<(), FlagError>,
) -> Result<(), FlagError> {
    match rule {
        Value::Array(a) => a
            .iter()
            .try_for_each(|i| check_fractionals(what, i, variant)),
        Value::Object(o) => {
            if let Some(Value::Array(args)) = o.get("fractional").filter(|_| o.len() == 1) {
                let buckets = match args.first() {
                    Some(Value::Array(_)) => &args[..],
                    _ => args.get(1..).unwrap_or(&[]),
                };
                if buckets.is_empty() {
                    return Err(err(
                        FlagErrorKind::InvalidWeights,
                        format!("{what}: fractional needs at least one bucket"),
                    ));
                }
                let mut sum: i64 = 0;
                let mut all_literal = true;
                for b in buckets {
                    let Some(parts) = b.as_array().filter(|p| !p.is_empty() && p.len() <= 2) else {
                        return Err(err(
                            FlagErrorKind::InvalidWeights,
                            format!("{what}: a fractional bucket is [variant] or [variant, weight], not {b}"),
                        ));
                    };
                    match &parts[0] {
                        Value::String(name) => variant("a fractional bucket", name)?,
                        // datalogic-rs 5.4's `fractional` answers null for
                        // a bucket named by a boolean or number (flagd's
                        // own evaluator accepts them): refuse rather than
                        // serve the default silently.
                        Value::Bool(_) | Value::Number(_) | Value::Null => {
                            return Err(err(
                                FlagErrorKind::InvalidDefinition,
                                format!("{what}: name fractional buckets with strings (variant names), not {}", parts[0]),
                            ))
                        }
                        _ => {}
                    }
                    match parts.get(1) {
                        None => sum += 1,
                        Some(Value::Number(n)) => {
                            let w = n.as_i64().filter(|w| *w >= 0).ok_or_else(|| {
                                err(
                                    FlagErrorKind::InvalidWeights,
                                    format!("{what}: a fractional weight must be a whole number, 0 or more, not {n}"),
                                )
                            })?;
                            sum = sum.saturating_add(w);
                        }
                        Some(_) => all_literal = false,
                    }
                }
                if sum > WEIGHT_SUM_MAX {
                    return Err(err(
                        FlagErrorKind::InvalidWeights,
                        format!(
                            "{what}: fractional weights sum to {sum}; at most {WEIGHT_SUM_MAX}"
                        ),
                    ));
                }
                if all_literal && sum == 0 {
                    return Err(err(
                        FlagErrorKind::InvalidWeights,
                        format!("{what}: fractional weights are all 0; no one would get a bucket"),
                    ));
                }
            }
            o.values()
                .try_for_each(|i| check_fractionals(what, i, variant))
        }
        _ => Ok(()),
    }
}
