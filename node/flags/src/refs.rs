//! Shared rules (`$evaluators`, Meridian's segments) and the
//! `{"$ref": "name"}` objects that use them.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{FlagError, FlagErrorKind};

/// How deeply segments may refer to segments. Bounds the substitution, so
/// a cycle is an error rather than a stack overflow.
pub const REF_DEPTH_MAX: usize = 8;

/// The name an object `{"$ref": "name"}` refers to.
pub(crate) fn as_ref(v: &Value) -> Option<&str> {
    match v {
        Value::Object(o) if o.len() == 1 => o.get("$ref").and_then(Value::as_str),
        _ => None,
    }
}

/// `rule` with every `{"$ref": "name"}` replaced by that shared rule,
/// recursively. A name that resolves nowhere, or segments that refer to
/// each other in a cycle, are errors.
pub fn substitute(rule: &Value, evaluators: &BTreeMap<String, Value>) -> Result<Value, FlagError> {
    walk(rule, evaluators, &mut Vec::new())
}

fn walk(
    v: &Value,
    evaluators: &BTreeMap<String, Value>,
    path: &mut Vec<String>,
) -> Result<Value, FlagError> {
    if let Some(name) = as_ref(v) {
        if path.iter().any(|p| p == name) || path.len() >= REF_DEPTH_MAX {
            return Err(FlagError::new(
                FlagErrorKind::UnresolvedRef,
                format!(
                    "segments refer to each other in a cycle or deeper than {REF_DEPTH_MAX}: {} -> {name}",
                    path.join(" -> ")
                ),
            ));
        }
        let target = evaluators.get(name).ok_or_else(|| {
            FlagError::new(
                FlagErrorKind::UnresolvedRef,
                format!("$ref {name:?} names no segment ($evaluators)"),
            )
        })?;
        path.push(name.to_string());
        let out = walk(target, evaluators, path);
        path.pop();
        return out;
    }
    Ok(match v {
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| walk(i, evaluators, path))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, i)| Ok((k.clone(), walk(i, evaluators, path)?)))
                .collect::<Result<Map<_, _>, FlagError>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn substitutes_nested_refs_and_refuses_missing_and_cyclic_ones() {
        let mut ev = BTreeMap::new();
        ev.insert(
            "beta".to_string(),
            json!({"in": [{"var": "email"}, ["a@x"]]}),
        );
        ev.insert(
            "beta_or_admin".to_string(),
            json!({"or": [{"$ref": "beta"}, {"var": "admin"}]}),
        );
        let out = substitute(&json!({"if": [{"$ref": "beta_or_admin"}, "on", null]}), &ev)
            .expect("resolves");
        assert_eq!(
            out,
            json!({"if": [{"or": [{"in": [{"var": "email"}, ["a@x"]]}, {"var": "admin"}]}, "on", null]})
        );
        let err = substitute(&json!({"$ref": "nobody"}), &ev).expect_err("missing");
        assert_eq!(err.kind, FlagErrorKind::UnresolvedRef);
        ev.insert("a".to_string(), json!({"$ref": "b"}));
        ev.insert("b".to_string(), json!({"!": {"$ref": "a"}}));
        let err = substitute(&json!({"$ref": "a"}), &ev).expect_err("cycle");
        assert!(err.message.contains("cycle"), "{err}");
    }
}
