//! Meridian's definitions to plain flagd. Prerequisites and scheduled
//! changes have no flagd field, so they become targeting:
//!
//! - a schedule becomes `if` on `$flagd.timestamp` (Unix seconds, which
//!   every flagd provider sets), each interval serving the targeting and
//!   default variant in force then; the flag's `defaultVariant` is the one
//!   of the last change;
//! - a prerequisite on flag B becomes `{"in": [<B's variant>, [...]]}`,
//!   where B's variant is B's own compiled rule inlined with its key fixed
//!   (`$flagd.flagKey` and `fractional`'s implicit bucketing key are B's,
//!   not A's), so A's gate agrees with what B answers on its own; when a
//!   prerequisite fails the flag serves its `offVariant` (default: its
//!   default variant).
//!
//! The server, the sync service and the client library all evaluate this
//! output, so the four ways of evaluating agree by construction.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::error::{FlagError, FlagErrorKind};
use crate::model::{Definition, Flag, FlagSet, State};
use crate::refs;

/// How long a chain of prerequisites may be (A needs B needs C ...).
pub const PREREQUISITE_DEPTH_MAX: usize = 4;

/// The flagd form of a set of definitions and segments. Fails when a
/// prerequisite names a flag that does not exist or prerequisites form a
/// cycle or too long a chain.
pub fn compile_set(
    defs: &BTreeMap<String, Definition>,
    segments: &BTreeMap<String, Value>,
    metadata: Map<String, Value>,
) -> Result<FlagSet, FlagError> {
    let mut out: BTreeMap<String, Flag> = BTreeMap::new();
    for key in defs.keys() {
        compile_one(key, defs, segments, &mut out, &mut Vec::new())?;
    }
    Ok(FlagSet {
        flags: out,
        evaluators: segments.clone(),
        metadata,
    })
}

fn prereq_error(msg: String) -> FlagError {
    FlagError::new(FlagErrorKind::InvalidPrerequisite, msg)
}

fn compile_one(
    key: &str,
    defs: &BTreeMap<String, Definition>,
    segments: &BTreeMap<String, Value>,
    out: &mut BTreeMap<String, Flag>,
    chain: &mut Vec<String>,
) -> Result<(), FlagError> {
    if out.contains_key(key) {
        return Ok(());
    }
    if chain.iter().any(|c| c == key) {
        return Err(prereq_error(format!(
            "prerequisites form a cycle: {} -> {key}",
            chain.join(" -> ")
        )));
    }
    if chain.len() > PREREQUISITE_DEPTH_MAX {
        return Err(prereq_error(format!(
            "a chain of prerequisites longer than {PREREQUISITE_DEPTH_MAX}: {}",
            chain.join(" -> ")
        )));
    }
    let def = &defs[key];
    chain.push(key.to_string());
    for p in &def.prerequisites {
        if !defs.contains_key(&p.flag) {
            return Err(prereq_error(format!(
                "flag {key:?}: prerequisite {:?} is no flag of this environment",
                p.flag
            )));
        }
        compile_one(&p.flag, defs, segments, out, chain)?;
    }
    chain.pop();

    let (mut targeting, default_variant) = scheduled_rule(def);
    if !def.prerequisites.is_empty() {
        let mut conds = Vec::new();
        for p in &def.prerequisites {
            let b = &out[&p.flag];
            conds.push(match variant_expr(&p.flag, b, segments)? {
                Some(expr) => json!({"in": [expr, p.variants]}),
                None => Value::Bool(false),
            });
        }
        let cond = if conds.len() == 1 {
            conds.remove(0)
        } else {
            json!({ "and": conds })
        };
        let off = def.off_variant.clone().map_or(Value::Null, Value::String);
        targeting = Some(json!({"if": [cond, targeting.unwrap_or(Value::Null), off]}));
    }
    out.insert(
        key.to_string(),
        Flag {
            state: def.flag.state,
            variants: def.flag.variants.clone(),
            default_variant,
            targeting,
            metadata: def.flag.metadata.clone(),
        },
    );
    Ok(())
}

/// A definition's targeting and default with its schedule folded in.
fn scheduled_rule(def: &Definition) -> (Option<Value>, Option<String>) {
    let flag = &def.flag;
    if def.schedule.is_empty() {
        return (flag.targeting.clone(), flag.default_variant.clone());
    }
    // The stages: (from, targeting, default) in time order.
    let mut stages = vec![(0u64, flag.targeting.clone(), flag.default_variant.clone())];
    for s in &def.schedule {
        let (_, t, d) = stages.last().cloned().unwrap_or_default();
        stages.push((
            s.at_s,
            s.targeting.clone().unwrap_or(t),
            s.default_variant.clone().or(d),
        ));
    }
    let final_default = stages.last().and_then(|s| s.2.clone());
    // Each stage as an expression under the final default: its targeting,
    // falling back to its own default where that differs.
    let stage_expr = |t: &Option<Value>, d: &Option<String>| -> Value {
        let d_v = d.clone().map_or(Value::Null, Value::String);
        match t {
            None if *d == final_default => Value::Null,
            None => d_v,
            Some(t) if *d == final_default => t.clone(),
            Some(t) => json!({"if": [{"===": [t, null]}, d_v, t]}),
        }
    };
    let mut args = Vec::new();
    for w in stages.windows(2) {
        args.push(json!({"<": [{"var": "$flagd.timestamp"}, w[1].0]}));
        args.push(stage_expr(&w[0].1, &w[0].2));
    }
    if let Some(last) = stages.last() {
        args.push(stage_expr(&last.1, &last.2));
    }
    (Some(json!({ "if": args })), final_default)
}

/// An expression for the variant flag `key` (compiled as `flag`) answers,
/// to inline into another flag's rule; None when it answers no variant
/// (disabled, or no rule and no default).
fn variant_expr(
    key: &str,
    flag: &Flag,
    segments: &BTreeMap<String, Value>,
) -> Result<Option<Value>, FlagError> {
    if flag.state == State::Disabled {
        return Ok(None);
    }
    let default = flag
        .default_variant
        .clone()
        .map_or(Value::Null, Value::String);
    Ok(match &flag.targeting {
        None if default.is_null() => None,
        None => Some(default),
        Some(t) => {
            let local = localize(&refs::substitute(t, segments)?, key);
            Some(json!({"if": [{"===": [local, null]}, default, local]}))
        }
    })
}

/// `rule` as flag `key` evaluates it, wherever it is inlined: its
/// `$flagd.flagKey` reads become `key`, and a `fractional` that buckets on
/// flag key + targeting key says so explicitly (answering `null` without a
/// targeting key, as the implicit form does).
pub(crate) fn localize(rule: &Value, key: &str) -> Value {
    match rule {
        Value::Array(items) => Value::Array(items.iter().map(|i| localize(i, key)).collect()),
        Value::Object(o) if o.len() == 1 => {
            let (op, args) = o
                .iter()
                .next()
                .map(|(k, v)| (k.as_str(), v))
                .unwrap_or(("", &Value::Null));
            let is_flag_key = |v: &Value| match v {
                Value::String(s) => s == "$flagd.flagKey",
                Value::Array(a) => a.first().and_then(Value::as_str) == Some("$flagd.flagKey"),
                _ => false,
            };
            match (op, args) {
                ("var", v) if is_flag_key(v) => Value::String(key.to_string()),
                ("fractional", Value::Array(a)) if matches!(a.first(), Some(Value::Array(_))) => {
                    let mut explicit = vec![json!({"cat": [key, {"var": "targetingKey"}]})];
                    explicit.extend(a.iter().map(|i| localize(i, key)));
                    json!({"if": [{"var": "targetingKey"}, {"fractional": explicit}, null]})
                }
                _ => {
                    let mut m = Map::new();
                    m.insert(op.to_string(), localize(args, key));
                    Value::Object(m)
                }
            }
        }
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), localize(v, key)))
                .collect(),
        ),
        other => other.clone(),
    }
}
