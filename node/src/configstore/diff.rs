//! Structural JSON diff: what was added, removed or changed, by JSON pointer,
//! with the values on each side. Objects are compared member by member;
//! arrays and scalars as whole values (an array diff by position would be
//! noise for configuration lists).

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// JSON pointer (RFC 6901) of the changed location.
    pub path: String,
    /// "added", "removed" or "changed".
    pub op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
}

/// Changes from `a` to `b` (None: absent), in path order.
pub fn diff(a: Option<&Value>, b: Option<&Value>) -> Vec<Change> {
    let mut out = Vec::new();
    walk(a, b, String::new(), &mut out);
    out
}

fn escape(seg: &str) -> String {
    seg.replace('~', "~0").replace('/', "~1")
}

fn walk(a: Option<&Value>, b: Option<&Value>, path: String, out: &mut Vec<Change>) {
    match (a, b) {
        (None, None) => {}
        (None, Some(b)) => out.push(Change {
            path,
            op: "added",
            from: None,
            to: Some(b.clone()),
        }),
        (Some(a), None) => out.push(Change {
            path,
            op: "removed",
            from: Some(a.clone()),
            to: None,
        }),
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                walk(x.get(k), y.get(k), format!("{path}/{}", escape(k)), out);
            }
        }
        (Some(a), Some(b)) if a == b => {}
        (Some(a), Some(b)) => out.push(Change {
            path,
            op: "changed",
            from: Some(a.clone()),
            to: Some(b.clone()),
        }),
    }
}

/// A readable rendering for terminals: `+ /path: value`, `- /path: value`,
/// `~ /path: old -> new`.
pub fn to_text(changes: &[Change]) -> String {
    let show = |v: &Option<Value>| v.as_ref().map(|v| v.to_string()).unwrap_or_default();
    let mut s = String::new();
    for c in changes {
        let p = if c.path.is_empty() { "/" } else { &c.path };
        let line = match c.op {
            "added" => format!("+ {p}: {}\n", show(&c.to)),
            "removed" => format!("- {p}: {}\n", show(&c.from)),
            _ => format!("~ {p}: {} -> {}\n", show(&c.from), show(&c.to)),
        };
        s.push_str(&line);
    }
    if s.is_empty() {
        s.push_str("(no differences)\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn structural_diff() {
        let a = json!({"db": {"host": "a", "port": 1}, "gone": true, "list": [1, 2]});
        let b = json!({"db": {"host": "b", "port": 1}, "new/x": 1, "list": [1, 3]});
        let d = diff(Some(&a), Some(&b));
        let summary: Vec<(&str, &str)> = d.iter().map(|c| (c.path.as_str(), c.op)).collect();
        assert_eq!(
            summary,
            [
                ("/db/host", "changed"),
                ("/gone", "removed"),
                ("/list", "changed"),
                ("/new~1x", "added")
            ]
        );
        assert!(diff(Some(&a), Some(&a)).is_empty());
        assert_eq!(diff(None, Some(&json!(1)))[0].op, "added");
        assert!(to_text(&d).contains("~ /db/host: \"a\" -> \"b\""));
    }
}
