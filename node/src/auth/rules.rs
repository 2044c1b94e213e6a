//! Roles: named lists of rules. A rule matches a request by project,
//! environment and key globs and lists the actions it allows or denies. A
//! principal may do what some rule of its roles allows and no rule denies
//! (an explicit deny beats any allow); whatever no rule allows is denied.
//!
//! A role is stored as JSON in the metadata document (`role/<name>`):
//! `{"rules": [{"effect": "allow", "projects": ["shop"], "environments":
//! ["*"], "keys": ["services.**"], "actions": ["read", "write"]}]}`.
//! Globs are `globset`'s (`*`, `?`, `[...]`, `{a,b}`; `*` also matches `.`
//! and `/`), and an empty list means `["*"]`.

use globset::GlobBuilder;
use serde::{Deserialize, Serialize};

/// Rules in one role at most, and globs in one rule: a role is evaluated on
/// every request, so its cost is bounded.
pub const RULES_MAX: usize = 64;
pub const GLOBS_PER_FIELD_MAX: usize = 32;
pub const GLOB_BYTES_MAX: usize = 256;
/// The built-in role that may do everything (the root credential's).
pub const ROOT_ROLE: &str = "root";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Read,
    Write,
    Delete,
    /// Namespace settings, schemas, templates, moves; cluster operations.
    Admin,
    /// Roles, grants and API tokens.
    Grant,
    /// Secret plaintext (secrets).
    Reveal,
    /// Feature flag changes.
    Flags,
}

impl Action {
    pub const ALL: [Action; 7] = [
        Action::Read,
        Action::Write,
        Action::Delete,
        Action::Admin,
        Action::Grant,
        Action::Reveal,
        Action::Flags,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Delete => "delete",
            Action::Admin => "admin",
            Action::Grant => "grant",
            Action::Reveal => "reveal",
            Action::Flags => "flags",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// A rule as stored and as an API caller writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub effect: Effect,
    #[serde(default)]
    pub projects: Vec<String>,
    #[serde(default)]
    pub environments: Vec<String>,
    #[serde(default)]
    pub keys: Vec<String>,
    pub actions: Vec<Action>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    pub rules: Vec<RuleSpec>,
}

/// What a rule is checked against. Cluster-wide operations (roles, grants,
/// unscoped tokens, cluster status, transfers) name every project: `*` in
/// each field, which only a rule whose globs match the literal `*` covers.
#[derive(Clone, Copy, Debug)]
pub struct Resource<'a> {
    pub project: &'a str,
    pub environment: &'a str,
    pub key: &'a str,
}

impl<'a> Resource<'a> {
    pub const CLUSTER: Resource<'static> = Resource {
        project: "*",
        environment: "*",
        key: "*",
    };

    /// A namespace's resource: `project/environment`, or a KV namespace
    /// (no `/`) as a project with the empty environment.
    pub fn in_namespace(ns: &'a str, key: &'a str) -> Resource<'a> {
        let (project, environment) = ns.split_once('/').unwrap_or((ns, ""));
        Resource {
            project,
            environment,
            key,
        }
    }
}

/// One field's globs, each translated by `globset` into a regular
/// expression and matched with `regex` directly: a rule is evaluated on every
/// request, and `GlobMatcher::is_match` first builds a path candidate (an
/// allocation per call). `*` alone matches everything without a regex.
#[derive(Debug)]
struct Globs {
    any: bool,
    pats: Vec<Pat>,
}

/// One compiled glob. Most globs in roles are a name or a prefix
/// (`shop`, `services.*`); those compare strings, since a shared regex
/// costs a pool checkout per match on every request's every rule.
#[derive(Debug)]
enum Pat {
    Exact(String),
    /// `<prefix>*`: `*` matches any run of characters, separators included.
    Prefix(String),
    Re(regex::bytes::Regex),
}

impl Pat {
    fn new(glob: &str, regex: &str) -> Result<Pat, regex::Error> {
        let meta = |c: char| matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\' | ',');
        if !glob.contains(meta) {
            return Ok(Pat::Exact(glob.to_string()));
        }
        if let Some(prefix) = glob.strip_suffix('*') {
            if !prefix.contains(meta) {
                return Ok(Pat::Prefix(prefix.to_string()));
            }
        }
        regex::bytes::Regex::new(regex).map(Pat::Re)
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            Pat::Exact(e) => s == e,
            Pat::Prefix(p) => s.starts_with(p.as_str()),
            Pat::Re(r) => r.is_match(s.as_bytes()),
        }
    }
}

impl Globs {
    fn compile(field: &str, pats: &[String]) -> Result<Globs, String> {
        if pats.len() > GLOBS_PER_FIELD_MAX {
            return Err(format!(
                "{field}: {} globs; at most {GLOBS_PER_FIELD_MAX}",
                pats.len()
            ));
        }
        let pats: Vec<&str> = if pats.is_empty() {
            vec!["*"]
        } else {
            pats.iter().map(String::as_str).collect()
        };
        let mut compiled = Vec::new();
        let mut any = false;
        for p in pats {
            if p.is_empty() || p.len() > GLOB_BYTES_MAX {
                return Err(format!(
                    "{field}: a glob is 1 to {GLOB_BYTES_MAX} bytes, got {}",
                    p.len()
                ));
            }
            let g = GlobBuilder::new(p)
                .literal_separator(false)
                .build()
                .map_err(|e| format!("{field}: bad glob {p:?}: {e}"))?;
            if p == "*" {
                any = true;
                continue;
            }
            let pat = Pat::new(p, g.regex())
                .map_err(|e| format!("{field}: glob {p:?} does not compile: {e}"))?;
            compiled.push(pat);
        }
        Ok(Globs {
            any,
            pats: compiled,
        })
    }

    fn matches(&self, s: &str) -> bool {
        self.any || self.pats.iter().any(|p| p.matches(s))
    }
}

#[derive(Debug)]
struct Rule {
    effect: Effect,
    projects: Globs,
    environments: Globs,
    keys: Globs,
    actions: Vec<Action>,
}

/// A compiled role.
#[derive(Debug)]
pub struct Role {
    pub name: String,
    pub spec: RoleSpec,
    rules: Vec<Rule>,
}

/// Whether `name` can name a role (or a principal): 1-128 of letters,
/// digits and `-_.:@`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c))
}

impl Role {
    /// Parse and check a role's JSON. The error says what is wrong.
    pub fn parse(name: &str, json: &str) -> Result<Role, String> {
        let spec: RoleSpec =
            serde_json::from_str(json).map_err(|e| format!("role {name:?}: {e}"))?;
        Role::compile(name, spec)
    }

    pub fn compile(name: &str, spec: RoleSpec) -> Result<Role, String> {
        if !valid_name(name) {
            return Err(format!(
                "bad role name {name:?}: 1-128 of letters, digits and -_.:@"
            ));
        }
        if name == ROOT_ROLE {
            return Err(format!("{ROOT_ROLE:?} is built in and cannot be changed"));
        }
        if spec.rules.len() > RULES_MAX {
            return Err(format!(
                "role {name:?} has {} rules; at most {RULES_MAX}",
                spec.rules.len()
            ));
        }
        let mut rules = Vec::new();
        for (i, r) in spec.rules.iter().enumerate() {
            let at = |e: String| format!("role {name:?}, rule {i}: {e}");
            if r.actions.is_empty() {
                return Err(at("a rule needs at least one action".into()));
            }
            rules.push(Rule {
                effect: r.effect,
                projects: Globs::compile("projects", &r.projects).map_err(at)?,
                environments: Globs::compile("environments", &r.environments).map_err(at)?,
                keys: Globs::compile("keys", &r.keys).map_err(at)?,
                actions: r.actions.clone(),
            });
        }
        Ok(Role {
            name: name.to_string(),
            spec,
            rules,
        })
    }

    /// Whether a rule of this role matches, and with which effect: `Some(Deny)`
    /// if any deny matches, else `Some(Allow)` if any allow matches.
    pub fn decide(&self, action: Action, r: Resource<'_>) -> Option<Effect> {
        let mut allow = false;
        for rule in &self.rules {
            if rule.actions.contains(&action)
                && rule.projects.matches(r.project)
                && rule.environments.matches(r.environment)
                && rule.keys.matches(r.key)
            {
                match rule.effect {
                    Effect::Deny => return Some(Effect::Deny),
                    Effect::Allow => allow = true,
                }
            }
        }
        allow.then_some(Effect::Allow)
    }

    /// Whether some rule allows `action` somewhere in the namespace
    /// (whatever the key): the test of listing a namespace at all.
    pub fn allows_somewhere_in(&self, action: Action, project: &str, environment: &str) -> bool {
        self.rules.iter().any(|rule| {
            rule.effect == Effect::Allow
                && rule.actions.contains(&action)
                && rule.projects.matches(project)
                && rule.environments.matches(environment)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_prefixes_match_as_their_globs_do() {
        let globs = [
            "shop",
            "k*",
            "services.*",
            "secrets/*",
            "ap-*",
            "a?c",
            "a[bc]*",
            "{a,b}*",
            "**/flags/*",
            "*x",
            "a*b",
            "a.b",
            "a\\*",
            "",
        ];
        let strings = [
            "",
            "shop",
            "shops",
            "k",
            "key",
            "services.",
            "services.a.b",
            "secrets/x/y",
            "ap-",
            "ap-east",
            "abc",
            "ac",
            "axc",
            "b",
            "x/flags/y",
            "flags/y",
            "ax",
            "ab",
            "a.b",
            "a*",
            "axb",
        ];
        for g in globs.iter().filter(|g| !g.is_empty()) {
            let glob = GlobBuilder::new(g)
                .literal_separator(false)
                .build()
                .expect("glob");
            let oracle = regex::bytes::Regex::new(glob.regex()).expect("regex");
            let pat = Pat::new(g, glob.regex()).expect("pattern");
            for s in strings {
                assert_eq!(
                    pat.matches(s),
                    oracle.is_match(s.as_bytes()),
                    "glob {g:?} ({pat:?}) on {s:?}"
                );
            }
        }
        assert!(matches!(Pat::new("shop", "").unwrap(), Pat::Exact(_)));
        assert!(matches!(Pat::new("k*", "").unwrap(), Pat::Prefix(_)));
    }

    fn role(json: &str) -> Role {
        Role::parse("r", json).unwrap()
    }

    #[test]
    fn allow_and_deny_by_project_environment_key_and_action() {
        let r = role(
            r#"{"rules": [
              {"effect": "allow", "projects": ["shop"], "environments": ["*"], "keys": ["*"], "actions": ["read"]},
              {"effect": "allow", "projects": ["shop"], "environments": ["staging"], "actions": ["write", "delete"]},
              {"effect": "deny", "projects": ["shop"], "keys": ["secrets.*"], "actions": ["read", "write"]}
            ]}"#,
        );
        let at = |ns, key| Resource::in_namespace(ns, key);
        assert_eq!(
            r.decide(Action::Read, at("shop/prod", "a.b")),
            Some(Effect::Allow)
        );
        assert_eq!(r.decide(Action::Write, at("shop/prod", "a.b")), None);
        assert_eq!(
            r.decide(Action::Write, at("shop/staging", "a.b")),
            Some(Effect::Allow)
        );
        assert_eq!(
            r.decide(Action::Read, at("shop/prod", "secrets.db")),
            Some(Effect::Deny)
        );
        assert_eq!(
            r.decide(Action::Write, at("shop/staging", "secrets.db")),
            Some(Effect::Deny)
        );
        assert_eq!(r.decide(Action::Read, at("blog/prod", "a")), None);
        assert_eq!(r.decide(Action::Admin, at("shop/prod", "")), None);
        assert_eq!(r.decide(Action::Grant, Resource::CLUSTER), None);
        assert!(r.allows_somewhere_in(Action::Read, "shop", "prod"));
        assert!(!r.allows_somewhere_in(Action::Read, "blog", "prod"));
        // A project-wide rule does not cover the cluster; `*` does.
        let all =
            role(r#"{"rules": [{"effect": "allow", "projects": ["*"], "actions": ["grant"]}]}"#);
        assert_eq!(
            all.decide(Action::Grant, Resource::CLUSTER),
            Some(Effect::Allow)
        );
        // A KV namespace is a project with an empty environment.
        let kv = role(
            r#"{"rules": [{"effect": "allow", "projects": ["eu"], "keys": ["app/*"], "actions": ["read"]}]}"#,
        );
        assert_eq!(
            kv.decide(Action::Read, at("eu", "app/x/y")),
            Some(Effect::Allow)
        );
        assert_eq!(kv.decide(Action::Read, at("eu", "ops/x")), None);
    }

    #[test]
    fn malformed_roles_are_refused_with_what_is_wrong() {
        for (json, says) in [
            (
                r#"{"rules": [{"effect": "allow", "projects": ["[a"], "actions": ["read"]}]}"#,
                "bad glob",
            ),
            (
                r#"{"rules": [{"effect": "allow", "actions": ["fly"]}]}"#,
                "unknown variant",
            ),
            (
                r#"{"rules": [{"effect": "maybe", "actions": ["read"]}]}"#,
                "unknown variant",
            ),
            (
                r#"{"rules": [{"effect": "allow", "actions": []}]}"#,
                "at least one action",
            ),
            (
                r#"{"rules": [{"effect": "allow", "actions": ["read"], "prefix": "a"}]}"#,
                "unknown field",
            ),
            (r#"{"rules": "all"}"#, "invalid type"),
            ("not json", "expected"),
        ] {
            let e = Role::parse("r", json).unwrap_err();
            assert!(e.contains(says), "{json}: {e}");
        }
        let many = format!(
            r#"{{"rules": [{}]}}"#,
            vec![r#"{"effect": "allow", "actions": ["read"]}"#; RULES_MAX + 1].join(",")
        );
        assert!(Role::parse("r", &many).unwrap_err().contains("at most"));
        assert!(Role::parse("root", r#"{"rules": []}"#)
            .unwrap_err()
            .contains("built in"));
        assert!(Role::parse("a b", r#"{"rules": []}"#)
            .unwrap_err()
            .contains("bad role name"));
    }
}
