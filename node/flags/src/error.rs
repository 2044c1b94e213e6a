//! Why a flag definition is refused: one typed list of stable codes.

use std::fmt;

/// What is wrong with a definition. Each kind has a stable code that APIs
/// return next to the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagErrorKind {
    /// The shape is wrong: flagd's JSON Schema or Meridian's fields refuse it.
    InvalidDefinition,
    /// A variant named where one is expected (default, targeting result,
    /// a `fractional` bucket, a prerequisite, a schedule) does not exist.
    UnknownVariant,
    /// A `fractional` split's weights: not whole, negative, none positive,
    /// or summing past 2^31 - 1.
    InvalidWeights,
    /// Targeting uses an operator the evaluator does not have.
    UnknownOperator,
    /// A `{"$ref": ...}` names no segment (`$evaluators`), or segments
    /// refer to each other in a cycle.
    UnresolvedRef,
    /// A rule, a value or a set is larger or deeper than the limits allow.
    TooLarge,
    /// A prerequisite names a flag that does not exist, or prerequisites
    /// form a cycle, or their chain is too deep.
    InvalidPrerequisite,
    /// Variants of different JSON types in one flag.
    MixedVariantTypes,
}

impl FlagErrorKind {
    pub fn code(self) -> &'static str {
        match self {
            FlagErrorKind::InvalidDefinition => "INVALID_DEFINITION",
            FlagErrorKind::UnknownVariant => "UNKNOWN_VARIANT",
            FlagErrorKind::InvalidWeights => "INVALID_WEIGHTS",
            FlagErrorKind::UnknownOperator => "UNKNOWN_OPERATOR",
            FlagErrorKind::UnresolvedRef => "UNRESOLVED_REF",
            FlagErrorKind::TooLarge => "TOO_LARGE",
            FlagErrorKind::InvalidPrerequisite => "INVALID_PREREQUISITE",
            FlagErrorKind::MixedVariantTypes => "MIXED_VARIANT_TYPES",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct FlagError {
    pub kind: FlagErrorKind,
    pub message: String,
}

impl FlagError {
    pub fn new(kind: FlagErrorKind, message: impl Into<String>) -> FlagError {
        FlagError {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for FlagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)
    }
}
