//! Evaluation: the one core that answers "which variant does this context
//! get" for the server (OFREP, flagd's gRPC evaluation), the sync service's
//! in-process providers (by construction: they get the same flagd JSON) and
//! the Rust client library.
//!
//! The semantics are flagd's (`core/pkg/evaluator/json.go`): a disabled
//! flag answers DISABLED; no targeting answers the default variant
//! (STATIC); targeting that yields `null` answers the default (DEFAULT);
//! a variant name answers it (TARGETING_MATCH); a name that is no variant
//! is an error (GENERAL); a rule that does not compile or fails is
//! PARSE_ERROR. A flag without a default variant answers without a value:
//! the caller uses its code's default.
//!
//! Rules are compiled once, when the evaluator is built ($refs to shared
//! evaluators substituted first); an evaluation borrows a thread-local
//! arena and allocates nothing else but the context it is given.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::LazyLock;

use bumpalo::Bump;
use datalogic_rs::{DataValue, Engine, Logic};
use serde_json::{Map, Value};

use crate::model::{Flag, FlagSet, State};
use crate::ops::{EndsWith, StartsWith};
use crate::refs;

/// The engine: datalogic-rs's JsonLogic with flagd's operators.
static ENGINE: LazyLock<Engine> = LazyLock::new(|| {
    Engine::builder()
        .add_operator("starts_with", StartsWith)
        .add_operator("ends_with", EndsWith)
        .build()
});

pub(crate) fn engine() -> &'static Engine {
    &ENGINE
}

thread_local! {
    /// Scratch space of one evaluation; reset after each.
    static ARENA: RefCell<Bump> = RefCell::new(Bump::with_capacity(4096));
}

/// Why an evaluation answered what it did (OpenFeature's reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Static,
    TargetingMatch,
    Default,
    Disabled,
    Error,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Default => "DEFAULT",
            Reason::Disabled => "DISABLED",
            Reason::Error => "ERROR",
        }
    }
}

/// OpenFeature's error codes, as OFREP and flagd name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    FlagNotFound,
    ParseError,
    TypeMismatch,
    TargetingKeyMissing,
    InvalidContext,
    General,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FlagNotFound => "FLAG_NOT_FOUND",
            ErrorCode::ParseError => "PARSE_ERROR",
            ErrorCode::TypeMismatch => "TYPE_MISMATCH",
            ErrorCode::TargetingKeyMissing => "TARGETING_KEY_MISSING",
            ErrorCode::InvalidContext => "INVALID_CONTEXT",
            ErrorCode::General => "GENERAL",
        }
    }
}

/// The type a caller asks for (flagd's ResolveBoolean, ResolveString, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Any,
    Bool,
    String,
    Int,
    Float,
    Object,
}

impl Expect {
    fn accepts(self, v: &Value) -> bool {
        match self {
            Expect::Any => true,
            Expect::Bool => v.is_boolean(),
            Expect::String => v.is_string(),
            Expect::Int => v.is_i64() || v.is_u64(),
            Expect::Float => v.is_number(),
            Expect::Object => v.is_object(),
        }
    }
}

/// One evaluation's answer, borrowing the evaluator's definitions.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolution<'e> {
    /// None: no value (disabled, no default variant, an error); the caller
    /// uses its code's default.
    pub value: Option<&'e Value>,
    pub variant: Option<&'e str>,
    pub reason: Reason,
    pub error: Option<(ErrorCode, String)>,
    /// The set's metadata overlaid with the flag's.
    pub metadata: Option<&'e Map<String, Value>>,
    /// The flag's rule reads the targeting key and the context has none.
    /// flagd answers such an evaluation as usual (the rule sees `null`);
    /// OFREP reports it as TARGETING_KEY_MISSING.
    pub targeting_key_missing: bool,
}

impl<'e> Resolution<'e> {
    fn error(code: ErrorCode, msg: String, metadata: Option<&'e Map<String, Value>>) -> Self {
        Resolution {
            value: None,
            variant: None,
            reason: Reason::Error,
            error: Some((code, msg)),
            metadata,
            targeting_key_missing: false,
        }
    }
}

/// A flag's rule, compiled.
enum Rule {
    None,
    Compiled {
        logic: Logic,
        /// The rule reads `targetingKey` (by `var` or `fractional`'s
        /// implicit bucketing key).
        needs_targeting_key: bool,
    },
    /// Refs that resolve nowhere or a rule the engine refuses: every
    /// evaluation answers PARSE_ERROR with this message.
    Broken(String),
}

struct Compiled {
    flag: Flag,
    rule: Rule,
    metadata: Map<String, Value>,
    /// Impressions: times each variant was served (in the order of
    /// `flag.variants`), drained by `Evaluator::drain_counts`.
    served: Box<[AtomicU64]>,
}

/// A flag set ready to evaluate.
pub struct Evaluator {
    flags: BTreeMap<String, Compiled>,
}

/// An evaluation context: the caller's attributes, with `targetingKey`
/// among them when there is one. Build it once to evaluate many flags.
pub struct Context {
    attrs: Map<String, Value>,
    has_targeting_key: bool,
    /// The attributes converted once into the engine's form (the hot path
    /// of a service evaluating many flags for one request).
    parsed: datalogic_rs::ParsedData,
}

impl Context {
    /// A context from a JSON object; `targetingKey`, if present, must be a
    /// string (INVALID_CONTEXT otherwise).
    pub fn new(attrs: Map<String, Value>) -> Result<Context, (ErrorCode, String)> {
        let has_targeting_key = match attrs.get("targetingKey") {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) => !s.is_empty(),
            Some(_) => {
                return Err((
                    ErrorCode::InvalidContext,
                    "targetingKey must be a string".into(),
                ))
            }
        };
        let text = Value::Object(attrs.clone()).to_string();
        let parsed = datalogic_rs::ParsedData::from_json(&text).map_err(|e| {
            (
                ErrorCode::InvalidContext,
                format!("the context does not convert: {e}"),
            )
        })?;
        Ok(Context {
            attrs,
            has_targeting_key,
            parsed,
        })
    }

    pub fn empty() -> Context {
        Context::new(Map::new()).unwrap_or_else(|_| unreachable!("an empty object always parses"))
    }

    pub fn attrs(&self) -> &Map<String, Value> {
        &self.attrs
    }
}

impl Evaluator {
    /// Compiles every flag of `set`. A flag whose rule does not compile is
    /// kept: its evaluations answer PARSE_ERROR, as flagd's do.
    pub fn new(set: &FlagSet) -> Evaluator {
        let flags = set
            .flags
            .iter()
            .map(|(key, flag)| {
                let rule = match &flag.targeting {
                    None => Rule::None,
                    Some(t) => compile_rule(t, &set.evaluators),
                };
                let mut metadata = set.metadata.clone();
                for (k, v) in &flag.metadata {
                    if !v.is_null() {
                        metadata.insert(k.clone(), v.clone());
                    }
                }
                (
                    key.clone(),
                    Compiled {
                        served: flag.variants.keys().map(|_| AtomicU64::new(0)).collect(),
                        flag: flag.clone(),
                        rule,
                        metadata,
                    },
                )
            })
            .collect();
        Evaluator { flags }
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.flags.keys().map(String::as_str)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.flags.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.flags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// Evaluates flag `key` for `ctx` at `now_s` (Unix seconds, which rules
    /// read as `$flagd.timestamp`), asking for a value of type `expect`.
    /// A served variant counts as an impression (`drain_counts`).
    pub fn evaluate(&self, key: &str, ctx: &Context, now_s: u64, expect: Expect) -> Resolution<'_> {
        self.evaluate_inner(key, ctx, now_s, expect, true)
    }

    /// As `evaluate`, counting no impression: for answers nobody is served
    /// (an operator's `flag eval`, a comparison in a test).
    pub fn evaluate_uncounted(
        &self,
        key: &str,
        ctx: &Context,
        now_s: u64,
        expect: Expect,
    ) -> Resolution<'_> {
        self.evaluate_inner(key, ctx, now_s, expect, false)
    }

    /// Hands every impression counted since the last drain to `f` (flag,
    /// variant, count; cells with no count are skipped) and zeroes them.
    /// An evaluation racing the drain is counted in this drain or the next,
    /// never in both or neither.
    pub fn drain_counts(&self, mut f: impl FnMut(&str, &str, u64)) {
        for (key, c) in &self.flags {
            for (variant, n) in c.flag.variants.keys().zip(c.served.iter()) {
                let n = n.swap(0, AtomicOrdering::Relaxed);
                if n > 0 {
                    f(key, variant, n);
                }
            }
        }
    }

    fn evaluate_inner(
        &self,
        key: &str,
        ctx: &Context,
        now_s: u64,
        expect: Expect,
        count: bool,
    ) -> Resolution<'_> {
        let Some(c) = self.flags.get(key) else {
            return Resolution::error(
                ErrorCode::FlagNotFound,
                format!("flag {key:?} not found"),
                None,
            );
        };
        let metadata = if c.metadata.is_empty() {
            None
        } else {
            Some(&c.metadata)
        };
        if c.flag.state == State::Disabled {
            return Resolution {
                value: None,
                variant: None,
                reason: Reason::Disabled,
                error: None,
                metadata,
                targeting_key_missing: false,
            };
        }
        let (variant, reason, targeting_key_missing) = match &c.rule {
            // flagd answers a flag without a default with FALLBACK, which
            // providers report as DEFAULT: the caller's default applies.
            Rule::None => match c.flag.default_variant.as_deref() {
                Some(d) => (Some(d), Reason::Static, false),
                None => (None, Reason::Default, false),
            },
            Rule::Broken(msg) => {
                return Resolution::error(ErrorCode::ParseError, msg.clone(), metadata)
            }
            Rule::Compiled {
                logic,
                needs_targeting_key,
            } => {
                let missing = *needs_targeting_key && !ctx.has_targeting_key;
                match run(logic, key, ctx, now_s, &c.flag.variants) {
                    Err(msg) => {
                        return Resolution::error(ErrorCode::ParseError, msg, metadata);
                    }
                    Ok(Chosen::Null) => (c.flag.default_variant.as_deref(), Reason::Default, missing),
                    Ok(Chosen::Variant(v)) => (Some(v), Reason::TargetingMatch, missing),
                    Ok(Chosen::NotAVariant(name)) => {
                        return Resolution::error(
                            ErrorCode::General,
                            format!("flag {key:?}: targeting chose {name:?}, which is not one of its variants"),
                            metadata,
                        )
                    }
                }
            }
        };
        let value = variant.and_then(|v| c.flag.variants.get(v));
        if let Some(v) = value {
            if !expect.accepts(v) {
                return Resolution::error(
                    ErrorCode::TypeMismatch,
                    format!("flag {key:?} is not of the type asked for ({expect:?})"),
                    metadata,
                );
            }
        }
        let variant = value.and(variant);
        if let (true, Some(v)) = (count, variant) {
            // Two to a few variants: a scan beats a map.
            if let Some(slot) = c.flag.variants.keys().position(|k| k == v) {
                c.served[slot].fetch_add(1, AtomicOrdering::Relaxed);
            }
        }
        Resolution {
            value,
            // No value without a default variant: the reason stays, and
            // the caller's default applies.
            variant,
            reason,
            error: None,
            metadata,
            targeting_key_missing,
        }
    }
}

/// Compiles a rule with its `$ref`s substituted.
fn compile_rule(rule: &Value, evaluators: &BTreeMap<String, Value>) -> Rule {
    let resolved = match refs::substitute(rule, evaluators) {
        Ok(r) => r,
        Err(e) => return Rule::Broken(e.message),
    };
    match ENGINE.compile(&resolved) {
        Ok(logic) => Rule::Compiled {
            logic,
            needs_targeting_key: reads_targeting_key(&resolved),
        },
        Err(e) => Rule::Broken(format!("targeting does not compile: {e}")),
    }
}

/// Whether a rule reads the targeting key: `{"var": "targetingKey"}` or a
/// `fractional` without an explicit bucketing expression (flagd then
/// buckets on flag key + targeting key).
pub(crate) fn reads_targeting_key(rule: &Value) -> bool {
    match rule {
        Value::Array(items) => items.iter().any(reads_targeting_key),
        Value::Object(o) => o.iter().any(|(op, args)| {
            let direct = match (op.as_str(), args) {
                ("var", Value::String(s)) => s == "targetingKey",
                ("var", Value::Array(a)) => {
                    a.first().and_then(Value::as_str) == Some("targetingKey")
                }
                ("fractional", Value::Array(a)) => matches!(a.first(), Some(Value::Array(_))),
                _ => false,
            };
            direct || reads_targeting_key(args)
        }),
        _ => false,
    }
}

/// What a rule chose.
enum Chosen<'e> {
    /// `null`: the default variant.
    Null,
    /// One of the flag's variants (borrowed from the flag).
    Variant(&'e str),
    /// A name that is no variant.
    NotAVariant(String),
}

/// Runs a compiled rule: the variant it chose. flagd takes a boolean or
/// number result as the variant of that name.
fn run<'e>(
    logic: &Logic,
    key: &str,
    ctx: &Context,
    now_s: u64,
    variants: &'e BTreeMap<String, Value>,
) -> Result<Chosen<'e>, String> {
    ARENA.with(|cell| {
        let mut arena = cell.borrow_mut();
        let out = run_in(logic, key, ctx, now_s, &arena).map(|r| {
            let name: std::borrow::Cow<'_, str> = match r {
                DataValue::Null => return Chosen::Null,
                DataValue::String(s) => (*s).into(),
                DataValue::Bool(b) => b.to_string().into(),
                other => other.to_string().trim_matches('"').to_string().into(),
            };
            match variants.get_key_value(name.as_ref()) {
                Some((k, _)) => Chosen::Variant(k.as_str()),
                None => Chosen::NotAVariant(name.into_owned()),
            }
        });
        arena.reset();
        out
    })
}

fn run_in<'a>(
    logic: &'a Logic,
    key: &'a str,
    ctx: &'a Context,
    now_s: u64,
    arena: &'a Bump,
) -> Result<&'a DataValue<'a>, String> {
    // The root: the caller's attributes and `$flagd` (flagKey, timestamp),
    // which flagd sets for every evaluation and rules read.
    let attrs = ctx.parsed.value().as_object().unwrap_or(&[]);
    let mut pairs = bumpalo::collections::Vec::with_capacity_in(attrs.len() + 1, arena);
    for (k, v) in attrs {
        if *k != "$flagd" {
            pairs.push((*k, *v));
        }
    }
    let flagd: &[(&str, DataValue)] = arena.alloc_slice_clone(&[
        ("flagKey", DataValue::String(key)),
        ("timestamp", DataValue::from_i64(now_s as i64)),
    ]);
    pairs.push(("$flagd", DataValue::Object(flagd)));
    let root: &DataValue = arena.alloc(DataValue::Object(pairs.into_bump_slice()));
    ENGINE
        .evaluate(logic, root, arena)
        .map_err(|e| format!("targeting failed: {e}"))
}
