//! The flag model: flagd's flag format (`state`, `variants`,
//! `defaultVariant`, `targeting`, `metadata`; a set's `$evaluators` and
//! `metadata`) and Meridian's two additions to a flag, `prerequisites` and
//! `schedule`, which `compile` turns into plain flagd targeting so every
//! flagd provider evaluates them the same way.
//!
//! Parsing here is structural: it reads what the format says and refuses
//! what has the wrong shape. Whether a definition makes sense (variants that
//! exist, weights, operators, references, sizes) is `validate`'s job.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{FlagError, FlagErrorKind};

/// Whether a flag is served. A disabled flag is flagd's kill switch: every
/// evaluation answers `DISABLED` and callers use their code's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Enabled,
    Disabled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Enabled => "ENABLED",
            State::Disabled => "DISABLED",
        }
    }
}

/// One flag in flagd's format.
#[derive(Clone, Debug, PartialEq)]
pub struct Flag {
    pub state: State,
    pub variants: BTreeMap<String, Value>,
    /// None: no default (flagd's `null` or absent); callers use their code's.
    pub default_variant: Option<String>,
    /// JsonLogic; None when absent or `{}` (flagd treats both as none).
    pub targeting: Option<Value>,
    pub metadata: Map<String, Value>,
}

/// A set of flags in flagd's format: what the sync service sends and what
/// an evaluator is built from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlagSet {
    pub flags: BTreeMap<String, Flag>,
    /// Shared rules, referenced from targeting as `{"$ref": "name"}`.
    /// Meridian's segments.
    pub evaluators: BTreeMap<String, Value>,
    pub metadata: Map<String, Value>,
}

/// A flag applies only when another flag of the same set evaluates to one
/// of `variants` for the same context; otherwise it serves its default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prerequisite {
    pub flag: String,
    pub variants: Vec<String>,
}

/// A change that takes effect at a time: from `at_s` (Unix seconds, UTC)
/// on, the flag serves `default_variant` and/or `targeting` instead.
#[derive(Clone, Debug, PartialEq)]
pub struct Scheduled {
    pub at_s: u64,
    pub default_variant: Option<String>,
    /// Some(None): from then on, no targeting.
    pub targeting: Option<Option<Value>>,
}

/// A flag as Meridian stores it: flagd's fields plus prerequisites and
/// scheduled changes.
#[derive(Clone, Debug, PartialEq)]
pub struct Definition {
    pub flag: Flag,
    pub prerequisites: Vec<Prerequisite>,
    /// What the flag serves when a prerequisite fails (None: its default
    /// variant).
    pub off_variant: Option<String>,
    /// Ordered by `at_s`, no two at the same second.
    pub schedule: Vec<Scheduled>,
}

const FLAG_FIELDS: [&str; 5] = [
    "state",
    "variants",
    "defaultVariant",
    "targeting",
    "metadata",
];
const DEFINITION_FIELDS: [&str; 3] = ["prerequisites", "offVariant", "schedule"];

fn shape(msg: impl Into<String>) -> FlagError {
    FlagError::new(FlagErrorKind::InvalidDefinition, msg)
}

fn object<'v>(v: &'v Value, what: &str) -> Result<&'v Map<String, Value>, FlagError> {
    v.as_object()
        .ok_or_else(|| shape(format!("{what} must be a JSON object")))
}

impl Flag {
    /// Reads one flag. `strict` refuses fields flagd does not define
    /// (a misspelt `defaultvariant` must not pass unnoticed on a write).
    pub fn from_json(key: &str, v: &Value, extra: &[&str]) -> Result<Flag, FlagError> {
        let o = object(v, &format!("flag {key:?}"))?;
        for field in o.keys() {
            if !FLAG_FIELDS.contains(&field.as_str()) && !extra.contains(&field.as_str()) {
                return Err(shape(format!("flag {key:?}: unknown field {field:?}")));
            }
        }
        let state = match o.get("state") {
            Some(Value::String(s)) if s == "ENABLED" => State::Enabled,
            Some(Value::String(s)) if s == "DISABLED" => State::Disabled,
            Some(other) => {
                return Err(shape(format!(
                    "flag {key:?}: state must be \"ENABLED\" or \"DISABLED\", not {other}"
                )))
            }
            None => return Err(shape(format!("flag {key:?}: state is required"))),
        };
        let variants = match o.get("variants") {
            Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Some(_) => return Err(shape(format!("flag {key:?}: variants must be an object"))),
            None => return Err(shape(format!("flag {key:?}: variants are required"))),
        };
        let default_variant = match o.get("defaultVariant") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(shape(format!(
                    "flag {key:?}: defaultVariant must be a string or null, not {other}"
                )))
            }
        };
        let targeting = match o.get("targeting") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) if m.is_empty() => None,
            Some(t) => Some(t.clone()),
        };
        let metadata = match o.get("metadata") {
            None => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(shape(format!("flag {key:?}: metadata must be an object"))),
        };
        Ok(Flag {
            state,
            variants,
            default_variant,
            targeting,
            metadata,
        })
    }

    /// flagd's JSON for this flag.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("state".into(), Value::String(self.state.as_str().into()));
        o.insert(
            "variants".into(),
            Value::Object(self.variants.clone().into_iter().collect()),
        );
        o.insert(
            "defaultVariant".into(),
            self.default_variant
                .clone()
                .map_or(Value::Null, Value::String),
        );
        if let Some(t) = &self.targeting {
            o.insert("targeting".into(), t.clone());
        }
        if !self.metadata.is_empty() {
            o.insert("metadata".into(), Value::Object(self.metadata.clone()));
        }
        Value::Object(o)
    }
}

impl FlagSet {
    /// Reads a flagd flag-set document (`{"flags": {...}, "$evaluators":
    /// {...}, "metadata": {...}}`). Unknown fields of a flag are tolerated,
    /// as flagd does: this reads documents other tools wrote.
    pub fn from_json(v: &Value) -> Result<FlagSet, FlagError> {
        let o = object(v, "a flag set")?;
        let flags_v = o
            .get("flags")
            .ok_or_else(|| shape("a flag set needs \"flags\""))?;
        let mut flags = BTreeMap::new();
        for (key, fv) in object(flags_v, "\"flags\"")? {
            let extra: Vec<&str> = fv
                .as_object()
                .map(|m| m.keys().map(String::as_str).collect())
                .unwrap_or_default();
            flags.insert(key.clone(), Flag::from_json(key, fv, &extra)?);
        }
        let evaluators = match o.get("$evaluators") {
            None => BTreeMap::new(),
            Some(e) => object(e, "\"$evaluators\"")?
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let metadata = match o.get("metadata") {
            None => Map::new(),
            Some(m) => object(m, "the set's metadata")?.clone(),
        };
        Ok(FlagSet {
            flags,
            evaluators,
            metadata,
        })
    }

    /// flagd's JSON for the set, as the sync service sends it.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert(
            "flags".into(),
            Value::Object(
                self.flags
                    .iter()
                    .map(|(k, f)| (k.clone(), f.to_json()))
                    .collect(),
            ),
        );
        if !self.evaluators.is_empty() {
            o.insert(
                "$evaluators".into(),
                Value::Object(self.evaluators.clone().into_iter().collect()),
            );
        }
        if !self.metadata.is_empty() {
            o.insert("metadata".into(), Value::Object(self.metadata.clone()));
        }
        Value::Object(o)
    }
}

impl Definition {
    /// Reads a flag as Meridian stores it. Fields neither flagd nor
    /// Meridian defines are refused.
    pub fn from_json(key: &str, v: &Value) -> Result<Definition, FlagError> {
        let flag = Flag::from_json(key, v, &DEFINITION_FIELDS)?;
        let o = object(v, &format!("flag {key:?}"))?;
        let mut prerequisites = Vec::new();
        if let Some(p) = o.get("prerequisites") {
            let items = p
                .as_array()
                .ok_or_else(|| shape(format!("flag {key:?}: prerequisites must be an array")))?;
            for item in items {
                let io = object(item, &format!("flag {key:?}: a prerequisite"))?;
                for field in io.keys() {
                    if field != "flag" && field != "variants" {
                        return Err(shape(format!(
                            "flag {key:?}: a prerequisite has unknown field {field:?}"
                        )));
                    }
                }
                let flag = io.get("flag").and_then(Value::as_str).ok_or_else(|| {
                    shape(format!(
                        "flag {key:?}: a prerequisite needs \"flag\" (a string)"
                    ))
                })?;
                let variants = io
                    .get("variants")
                    .and_then(Value::as_array)
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| {
                        shape(format!(
                            "flag {key:?}: prerequisite {flag:?} needs \"variants\", a non-empty array"
                        ))
                    })?
                    .iter()
                    .map(|v| {
                        v.as_str().map(str::to_string).ok_or_else(|| {
                            shape(format!(
                                "flag {key:?}: prerequisite {flag:?}: variants are strings"
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                prerequisites.push(Prerequisite {
                    flag: flag.to_string(),
                    variants,
                });
            }
        }
        let mut schedule = Vec::new();
        if let Some(s) = o.get("schedule") {
            let items = s
                .as_array()
                .ok_or_else(|| shape(format!("flag {key:?}: schedule must be an array")))?;
            for item in items {
                schedule.push(Scheduled::from_json(key, item)?);
            }
            schedule.sort_by_key(|s| s.at_s);
            if schedule.windows(2).any(|w| w[0].at_s == w[1].at_s) {
                return Err(shape(format!(
                    "flag {key:?}: two scheduled changes at the same second"
                )));
            }
        }
        let off_variant = match o.get("offVariant") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(shape(format!("flag {key:?}: offVariant is a string"))),
        };
        Ok(Definition {
            flag,
            prerequisites,
            off_variant,
            schedule,
        })
    }

    pub fn to_json(&self) -> Value {
        let mut v = self.flag.to_json();
        if let Some(o) = v.as_object_mut() {
            if !self.prerequisites.is_empty() {
                o.insert(
                    "prerequisites".into(),
                    Value::Array(
                        self.prerequisites
                            .iter()
                            .map(|p| serde_json::json!({"flag": p.flag, "variants": p.variants}))
                            .collect(),
                    ),
                );
            }
            if let Some(off) = &self.off_variant {
                o.insert("offVariant".into(), Value::String(off.clone()));
            }
            if !self.schedule.is_empty() {
                o.insert(
                    "schedule".into(),
                    Value::Array(self.schedule.iter().map(Scheduled::to_json).collect()),
                );
            }
        }
        v
    }
}

impl Scheduled {
    fn from_json(key: &str, v: &Value) -> Result<Scheduled, FlagError> {
        let o = object(v, &format!("flag {key:?}: a scheduled change"))?;
        for field in o.keys() {
            if !["at", "defaultVariant", "targeting"].contains(&field.as_str()) {
                return Err(shape(format!(
                    "flag {key:?}: a scheduled change has unknown field {field:?}"
                )));
            }
        }
        let at = o.get("at").and_then(Value::as_str).ok_or_else(|| {
            shape(format!(
                "flag {key:?}: a scheduled change needs \"at\", an RFC 3339 UTC time"
            ))
        })?;
        let at_s = crate::time::parse_rfc3339_utc(at)
            .map_err(|e| shape(format!("flag {key:?}: scheduled change at {at:?}: {e}")))?;
        let default_variant = match o.get("defaultVariant") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(shape(format!(
                    "flag {key:?}: a scheduled defaultVariant is a string"
                )))
            }
        };
        let targeting = match o.get("targeting") {
            None => None,
            Some(Value::Null) => Some(None),
            Some(Value::Object(m)) if m.is_empty() => Some(None),
            Some(t) => Some(Some(t.clone())),
        };
        if default_variant.is_none() && targeting.is_none() {
            return Err(shape(format!(
                "flag {key:?}: the scheduled change at {at} changes nothing (give defaultVariant or targeting)"
            )));
        }
        Ok(Scheduled {
            at_s,
            default_variant,
            targeting,
        })
    }

    fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert(
            "at".into(),
            Value::String(crate::time::format_rfc3339_utc(self.at_s)),
        );
        if let Some(d) = &self.default_variant {
            o.insert("defaultVariant".into(), Value::String(d.clone()));
        }
        if let Some(t) = &self.targeting {
            o.insert("targeting".into(), t.clone().unwrap_or(Value::Null));
        }
        Value::Object(o)
    }
}
