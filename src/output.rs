//! How the CLI prints: one result document per command in every format
//! (`human`, `json`, `yaml`, `table`, or `jsonl`: one JSON document per line,
//! a list one item per line), streams of events (`watch`) in the formats a
//! stream can take, and errors: `error: <message> (<REASON>)` for people,
//! `{"error": {"reason", "message", "details"}}` on stderr for `json` and
//! `jsonl`. The exit code never depends on the format.

use anyhow::{bail, Result};
use clap::ValueEnum;
use serde_json::{json, Value};

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum Output {
    Human,
    /// One JSON document.
    Json,
    /// One JSON document per line: a list's items, a stream's events.
    Jsonl,
    Yaml,
    Table,
}

/// A failed request as the server stated it: a stable reason, a message and
/// optional structured details.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({reason})")]
pub struct Failure {
    pub reason: String,
    pub message: String,
    pub details: Option<Value>,
}

impl Failure {
    pub fn new(reason: &str, message: impl Into<String>) -> Failure {
        Failure {
            reason: reason.to_string(),
            message: message.into(),
            details: None,
        }
    }

    /// From a gRPC status: its "meridian-reason" and "meridian-details"
    /// metadata, and its message without the "[REASON] " prefix the server
    /// puts there for plain gRPC clients.
    pub fn from_status(s: &tonic::Status) -> Failure {
        let reason = meridian_proto::reason_of(s).unwrap_or_else(|| format!("{:?}", s.code()));
        let prefix = format!("[{reason}] ");
        let message = s.message().strip_prefix(&prefix).unwrap_or(s.message());
        let details = s
            .metadata()
            .get("meridian-details")
            .and_then(|v| v.to_str().ok())
            .and_then(|d| serde_json::from_str(d).ok());
        Failure {
            reason,
            message: message.to_string(),
            details,
        }
    }
}

/// A tonic status as an error the CLI prints with its reason.
pub fn status_err(s: tonic::Status) -> anyhow::Error {
    Failure::from_status(&s).into()
}

/// The failure in an error chain, if a request failed (else None: the error
/// happened here, e.g. a bad argument or an unreachable endpoint).
fn failure_of(e: &anyhow::Error) -> Option<Failure> {
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return Some(Failure {
                reason: f.reason.clone(),
                message: f.message.clone(),
                details: f.details.clone(),
            });
        }
        if let Some(meridian_proto::client::ClientError::Status { status, .. }) =
            cause.downcast_ref::<meridian_proto::client::ClientError>()
        {
            return Some(Failure::from_status(status));
        }
        if let Some(s) = cause.downcast_ref::<tonic::Status>() {
            return Some(Failure::from_status(s));
        }
    }
    None
}

/// Print a command's error to stderr in the output's form.
pub fn print_error(out: Output, e: &anyhow::Error) {
    match out {
        Output::Json | Output::Jsonl => {
            let f = failure_of(e).unwrap_or_else(|| Failure::new("CLIENT_ERROR", format!("{e:#}")));
            let mut v = json!({"error": {"reason": f.reason, "message": f.message}});
            if let Some(d) = f.details {
                v["error"]["details"] = d;
            }
            eprintln!("{v}");
        }
        _ => {
            eprintln!("error: {e:#}");
            if let Some(d) = failure_of(e).and_then(|f| f.details) {
                eprintln!("details: {d}");
            }
        }
    }
}

/// Print one result document.
pub fn emit(out: Output, v: &Value, human: impl FnOnce(&Value) -> String) -> Result<()> {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Output::Jsonl => println!("{}", serde_json::to_string(v)?),
        Output::Yaml => print!("{}", serde_norway::to_string(v)?),
        Output::Table => print_table(v),
        Output::Human => print!("{}", human(v)),
    }
    Ok(())
}

/// Print a result whose `items` member is a list: as one document, or in
/// `jsonl` one line per item (the other members are left out).
pub fn emit_list(
    out: Output,
    v: &Value,
    items: &str,
    human: impl FnOnce(&Value) -> String,
) -> Result<()> {
    if out == Output::Jsonl {
        for item in v[items].as_array().into_iter().flatten() {
            println!("{}", serde_json::to_string(item)?);
        }
        return Ok(());
    }
    emit(out, v, human)
}

/// Refuse formats a stream cannot take, before it starts.
pub fn check_stream(out: Output) -> Result<()> {
    match out {
        Output::Json => {
            bail!("a watch prints a stream of events: use -o jsonl (one JSON document per line) or -o yaml (one document per event)")
        }
        Output::Table => bail!("a watch prints a stream of events: use -o human, jsonl or yaml"),
        _ => Ok(()),
    }
}

/// Print one event of a stream (`check_stream` passed).
pub fn emit_event(out: Output, v: &Value, human: impl FnOnce(&Value) -> String) -> Result<()> {
    match out {
        Output::Yaml => print!("---\n{}", serde_norway::to_string(v)?),
        Output::Jsonl => println!("{}", serde_json::to_string(v)?),
        Output::Human => print!("{}", human(v)),
        Output::Json | Output::Table => check_stream(out)?,
    }
    Ok(())
}

/// Rows of a table: arrays of objects become one row each; an object
/// with a list member (`items`, `entries`, `versions`, `changes`,
/// `namespaces`) becomes its rows; any other object key/value rows.
pub fn print_table(v: &Value) {
    let rows: Vec<Value> = match v {
        Value::Array(a) => a.clone(),
        Value::Object(m) => {
            let list = ["items", "entries", "versions", "changes", "namespaces"]
                .iter()
                .find_map(|k| m.get(*k).and_then(Value::as_array));
            match list {
                Some(a) => a.clone(),
                None => m
                    .iter()
                    .map(|(k, v)| json!({"key": k, "value": v}))
                    .collect(),
            }
        }
        other => vec![json!({ "value": other })],
    };
    let mut cols: Vec<String> = Vec::new();
    for r in &rows {
        if let Value::Object(m) = r {
            for k in m.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
    }
    let cell = |r: &Value, c: &str| -> String {
        match r.get(c) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(x) => x.to_string(),
        }
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            cols.iter()
                .map(|c| {
                    let s = cell(r, c);
                    if s.chars().count() > 60 {
                        format!("{}…", s.chars().take(59).collect::<String>())
                    } else {
                        s
                    }
                })
                .collect()
        })
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: Vec<String>| {
        let s: Vec<String> = vals
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(cols.iter().map(|c| c.to_uppercase()).collect());
    for r in cells {
        line(r);
    }
}

/// Milliseconds since the Unix epoch as ISO 8601 UTC (`2026-11-28T10:31:05.123Z`).
pub fn iso8601_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_of_known_instants() {
        assert_eq!(iso8601_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601_ms(1_795_861_865_123), "2026-11-28T10:31:05.123Z");
    }

    #[test]
    fn a_status_loses_its_reason_prefix_and_keeps_details() {
        let mut s = tonic::Status::not_found("[UNKNOWN_NAMESPACE] unknown namespace \"x\"");
        s.metadata_mut().insert(
            "meridian-reason",
            "UNKNOWN_NAMESPACE"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        let f = Failure::from_status(&s);
        assert_eq!(f.reason, "UNKNOWN_NAMESPACE");
        assert_eq!(f.message, "unknown namespace \"x\"");
        assert_eq!(f.to_string(), "unknown namespace \"x\" (UNKNOWN_NAMESPACE)");
    }
}
