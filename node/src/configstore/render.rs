//! Templates: environment inheritance (a child's leaves override its
//! parent's) and interpolation of `${ref:key}` (another key of the effective
//! configuration, any JSON type when the whole string is the placeholder) and
//! `${var:name}` (a namespace variable; a child's variables override its
//! parent's), and `${secret:key}` (a secret: whatever the reader may see of
//! it, the plaintext for a reveal, else its redaction). A secret's own
//! value is never interpolated. `$${` escapes a literal `${`. Pure
//! functions: the engine loads leaves, these compute the effective,
//! rendered values.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::tree;

/// References followed in a chain at most (a longer chain is reported as one).
pub const REF_DEPTH_MAX: usize = 32;
/// Inheritance levels at most.
pub const INHERIT_DEPTH_MAX: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("{from}: reference to missing key {reference:?}")]
    MissingRef { from: String, reference: String },
    #[error("{from}: reference to missing variable {name:?}")]
    MissingVar { from: String, name: String },
    #[error("reference cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("{key}: bad template: {message}")]
    BadTemplate { key: String, message: String },
    /// The loaded leaves do not cover this key; the caller loads it and retries.
    #[error("need key {0}")]
    Need(String),
}

/// Overlay layers, root-most (the base environment) first: a leaf of a later
/// layer replaces the same key and any earlier leaf it is an ancestor or
/// descendant of, so the effective tree stays well-formed.
pub fn overlay(layers: Vec<BTreeMap<String, Value>>) -> BTreeMap<String, Value> {
    let mut layers = layers.into_iter();
    let mut acc = layers.next().unwrap_or_default();
    for layer in layers {
        for (k, v) in layer {
            for a in tree::ancestors(&k) {
                acc.remove(a);
            }
            let below = tree::child_prefix(&k);
            let doomed: Vec<String> = acc
                .range(below.clone()..)
                .take_while(|(x, _)| x.starts_with(&below))
                .map(|(x, _)| x.clone())
                .collect();
            for d in doomed {
                acc.remove(&d);
            }
            acc.insert(k, v);
        }
    }
    acc
}

/// Renders values against the effective leaves and variables.
pub struct Renderer<'a> {
    pub leaves: &'a BTreeMap<String, Value>,
    pub vars: &'a Map<String, Value>,
    /// The leaves are the whole effective namespace: a missing reference is an
    /// error, not a key to load.
    pub complete: bool,
    /// Keys that are secrets: taken as they are (never interpolated), and
    /// the only keys `${secret:}` may name.
    secrets: Option<&'a std::collections::BTreeSet<String>>,
    stack: Vec<String>,
    done: BTreeMap<String, Value>,
}

impl<'a> Renderer<'a> {
    pub fn new(
        leaves: &'a BTreeMap<String, Value>,
        vars: &'a Map<String, Value>,
        complete: bool,
    ) -> Renderer<'a> {
        Renderer {
            leaves,
            vars,
            complete,
            secrets: None,
            stack: Vec::new(),
            done: BTreeMap::new(),
        }
    }

    /// The keys that are secrets.
    pub fn with_secrets(mut self, secrets: &'a std::collections::BTreeSet<String>) -> Self {
        self.secrets = Some(secrets);
        self
    }

    fn is_secret(&self, key: &str) -> bool {
        self.secrets.is_some_and(|s| s.contains(key))
    }

    /// The rendered value of the leaf `key`.
    pub fn leaf(&mut self, key: &str) -> Result<Value, RenderError> {
        if let Some(v) = self.done.get(key) {
            return Ok(v.clone());
        }
        if let Some(i) = self.stack.iter().position(|k| k == key) {
            let mut cycle = self.stack[i..].to_vec();
            cycle.push(key.to_string());
            return Err(RenderError::Cycle(cycle));
        }
        if self.stack.len() >= REF_DEPTH_MAX {
            let mut chain = self.stack.clone();
            chain.push(key.to_string());
            return Err(RenderError::Cycle(chain));
        }
        let Some(raw) = self.leaves.get(key) else {
            return Err(RenderError::Need(key.to_string()));
        };
        if self.is_secret(key) {
            // A secret is opaque: `${` in its plaintext is just text.
            return Ok(raw.clone());
        }
        let raw = raw.clone();
        self.stack.push(key.to_string());
        let out = self.value(key, &raw);
        self.stack.pop();
        let out = out?;
        self.done.insert(key.to_string(), out.clone());
        Ok(out)
    }

    /// The rendered subtree at `path` (None: nothing there).
    pub fn subtree(&mut self, path: &str) -> Result<Option<Value>, RenderError> {
        let prefix = tree::child_prefix(path);
        let keys: Vec<String> = if !path.is_empty() && self.leaves.contains_key(path) {
            vec![path.to_string()]
        } else {
            self.leaves
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, _)| k.clone())
                .collect()
        };
        let mut rendered = BTreeMap::new();
        for k in keys {
            let v = self.leaf(&k)?;
            rendered.insert(k, v);
        }
        Ok(tree::assemble(&rendered, path))
    }

    fn value(&mut self, key: &str, v: &Value) -> Result<Value, RenderError> {
        match v {
            Value::String(s) if s.contains('$') => self.string(key, s),
            Value::Array(a) => a
                .iter()
                .map(|x| self.value(key, x))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, x) in m {
                    out.insert(k.clone(), self.value(key, x)?);
                }
                Ok(Value::Object(out))
            }
            other => Ok(other.clone()),
        }
    }

    fn string(&mut self, key: &str, s: &str) -> Result<Value, RenderError> {
        let parts = parse(key, s)?;
        if let [Part::Ref(r)] = parts.as_slice() {
            return self.reference(key, r);
        }
        if let [Part::Var(n)] = parts.as_slice() {
            return self.var(key, n);
        }
        if let [Part::Secret(r)] = parts.as_slice() {
            return self.secret(key, r);
        }
        let mut out = String::new();
        for p in parts {
            let v = match p {
                Part::Text(t) => {
                    out.push_str(&t);
                    continue;
                }
                Part::Ref(r) => self.reference(key, &r)?,
                Part::Var(n) => self.var(key, &n)?,
                Part::Secret(r) => self.secret(key, &r)?,
            };
            match v {
                Value::String(x) => out.push_str(&x),
                other => out.push_str(&other.to_string()),
            }
        }
        Ok(Value::String(out))
    }

    fn reference(&mut self, from: &str, r: &str) -> Result<Value, RenderError> {
        if tree::check_key(r).is_err() {
            return Err(RenderError::BadTemplate {
                key: from.to_string(),
                message: format!("{r:?} is not a valid key"),
            });
        }
        if self.leaves.contains_key(r) {
            return self.leaf(r);
        }
        match self.subtree(r) {
            Ok(Some(v)) => Ok(v),
            Ok(None) if self.complete => Err(RenderError::MissingRef {
                from: from.to_string(),
                reference: r.to_string(),
            }),
            Ok(None) => Err(RenderError::Need(r.to_string())),
            Err(e) => Err(e),
        }
    }

    fn secret(&mut self, from: &str, r: &str) -> Result<Value, RenderError> {
        if tree::check_key(r).is_err() {
            return Err(RenderError::BadTemplate {
                key: from.to_string(),
                message: format!("{r:?} is not a valid key"),
            });
        }
        match self.leaves.get(r) {
            None if self.complete => Err(RenderError::MissingRef {
                from: from.to_string(),
                reference: r.to_string(),
            }),
            None => Err(RenderError::Need(r.to_string())),
            Some(_) if !self.is_secret(r) => Err(RenderError::BadTemplate {
                key: from.to_string(),
                message: format!(
                    "${{secret:{r}}} names a key that is not a secret; use ${{ref:{r}}}"
                ),
            }),
            Some(v) => Ok(v.clone()),
        }
    }

    fn var(&mut self, from: &str, name: &str) -> Result<Value, RenderError> {
        self.vars
            .get(name)
            .cloned()
            .ok_or_else(|| RenderError::MissingVar {
                from: from.to_string(),
                name: name.to_string(),
            })
    }
}

enum Part {
    Text(String),
    Ref(String),
    Var(String),
    Secret(String),
}

fn parse(key: &str, s: &str) -> Result<Vec<Part>, RenderError> {
    let bad = |message: String| RenderError::BadTemplate {
        key: key.to_string(),
        message,
    };
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        text.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            text.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| bad(format!("unterminated placeholder in {s:?}")))?;
            let body = &tail[..end];
            let part = if let Some(r) = body.strip_prefix("ref:") {
                Part::Ref(r.to_string())
            } else if let Some(v) = body.strip_prefix("var:") {
                Part::Var(v.to_string())
            } else if let Some(r) = body.strip_prefix("secret:") {
                Part::Secret(r.to_string())
            } else {
                return Err(bad(format!(
                    "unknown placeholder ${{{body}}}; use ${{ref:key}}, ${{var:name}} or ${{secret:key}}"
                )));
            };
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(part);
            rest = &tail[end + 1..];
        } else {
            text.push('$');
            rest = &after[1..];
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn secrets_are_opaque_and_only_secret_placeholders_name_them() {
        let leaves = map(&[
            ("db.password", json!("p${ref:x}w")),
            ("dsn", json!("u:${secret:db.password}@h")),
            ("whole", json!("${secret:db.password}")),
            ("bad", json!("${secret:x}")),
            ("x", json!(1)),
        ]);
        let vars = Map::new();
        let secrets: std::collections::BTreeSet<String> = ["db.password".to_string()].into();
        let mut r = Renderer::new(&leaves, &vars, true).with_secrets(&secrets);
        // A secret's own text is never interpolated.
        assert_eq!(r.leaf("db.password").unwrap(), json!("p${ref:x}w"));
        assert_eq!(r.leaf("dsn").unwrap(), json!("u:p${ref:x}w@h"));
        assert_eq!(r.leaf("whole").unwrap(), json!("p${ref:x}w"));
        assert!(matches!(
            r.leaf("bad"),
            Err(RenderError::BadTemplate { .. })
        ));
        // Without the secrets named, ${secret:} names no secret.
        let mut plain = Renderer::new(&leaves, &vars, true);
        assert!(plain.leaf("dsn").is_err());
    }

    #[test]
    fn child_overrides_parent_without_breaking_the_tree() {
        let base = map(&[
            ("db.host", json!("base")),
            ("db.port", json!(5432)),
            ("x", json!(1)),
        ]);
        let prod = map(&[("db.host", json!("prod")), ("x.y", json!(2))]);
        let eff = overlay(vec![base, prod]);
        assert_eq!(eff["db.host"], json!("prod"));
        assert_eq!(eff["db.port"], json!(5432));
        assert!(
            !eff.contains_key("x"),
            "a deeper child leaf replaces the parent leaf"
        );
        assert_eq!(eff["x.y"], json!(2));
    }

    #[test]
    fn refs_vars_types_and_escapes() {
        let leaves = map(&[
            ("db.host", json!("${var:region}.db")),
            ("db.port", json!(5432)),
            ("url", json!("pg://${ref:db.host}:${ref:db.port}/x")),
            ("port", json!("${ref:db.port}")),
            ("all", json!("${ref:db}")),
            ("lit", json!("cost $5 and $${ref:x}")),
        ]);
        let vars: Map<String, Value> = json!({"region": "eu"}).as_object().unwrap().clone();
        let mut r = Renderer::new(&leaves, &vars, true);
        assert_eq!(r.leaf("url").unwrap(), json!("pg://eu.db:5432/x"));
        assert_eq!(
            r.leaf("port").unwrap(),
            json!(5432),
            "a whole-string ref keeps its type"
        );
        assert_eq!(
            r.leaf("all").unwrap(),
            json!({"host": "eu.db", "port": 5432})
        );
        assert_eq!(r.leaf("lit").unwrap(), json!("cost $5 and ${ref:x}"));
    }

    #[test]
    fn cycles_missing_and_bad_templates_are_errors() {
        let leaves = map(&[
            ("a", json!("${ref:b}")),
            ("b", json!("x${ref:a}")),
            ("m", json!("${ref:nope}")),
            ("v", json!("${var:nope}")),
            ("t", json!("${env:HOME}")),
            ("u", json!("${ref:a")),
        ]);
        let vars = Map::new();
        let mut r = Renderer::new(&leaves, &vars, true);
        assert_eq!(
            r.leaf("a").unwrap_err(),
            RenderError::Cycle(vec!["a".into(), "b".into(), "a".into()])
        );
        assert!(matches!(
            r.leaf("m").unwrap_err(),
            RenderError::MissingRef { .. }
        ));
        assert!(matches!(
            r.leaf("v").unwrap_err(),
            RenderError::MissingVar { .. }
        ));
        assert!(matches!(
            r.leaf("t").unwrap_err(),
            RenderError::BadTemplate { .. }
        ));
        assert!(matches!(
            r.leaf("u").unwrap_err(),
            RenderError::BadTemplate { .. }
        ));
        let mut partial = Renderer::new(&leaves, &vars, false);
        assert_eq!(
            partial.leaf("m").unwrap_err(),
            RenderError::Need("nope".into())
        );
    }
}
