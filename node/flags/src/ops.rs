//! flagd's string operators `starts_with` and `ends_with`, as datalogic-rs
//! custom operators (its `flagd` feature brings `fractional` and `sem_ver`).
//! As in flagd, anything but two strings gives `null`, which the flag
//! answers with its default variant.

use bumpalo::Bump;
use datalogic_rs::operator::EvalContext;
use datalogic_rs::{CustomOperator, DataValue, Result};

pub(crate) struct StartsWith;
pub(crate) struct EndsWith;

fn two_strings<'a>(args: &[&'a DataValue<'a>]) -> Option<(&'a str, &'a str)> {
    match args {
        [a, b] => Some((a.as_str()?, b.as_str()?)),
        _ => None,
    }
}

fn answer<'a>(arena: &'a Bump, v: Option<bool>) -> Result<&'a DataValue<'a>> {
    Ok(arena.alloc(match v {
        Some(b) => DataValue::Bool(b),
        None => DataValue::Null,
    }))
}

impl CustomOperator for StartsWith {
    fn evaluate<'a>(
        &self,
        args: &[&'a DataValue<'a>],
        _ctx: &mut EvalContext<'_, 'a>,
        arena: &'a Bump,
    ) -> Result<&'a DataValue<'a>> {
        answer(arena, two_strings(args).map(|(s, p)| s.starts_with(p)))
    }
}

impl CustomOperator for EndsWith {
    fn evaluate<'a>(
        &self,
        args: &[&'a DataValue<'a>],
        _ctx: &mut EvalContext<'_, 'a>,
        arena: &'a Bump,
    ) -> Result<&'a DataValue<'a>> {
        answer(arena, two_strings(args).map(|(s, p)| s.ends_with(p)))
    }
}
