//! `meridian flag ...` and `meridian segment ...`: feature flags
//! (docs/flags.md) as a product manager uses them: create a flag, target a
//! segment, roll out a percentage, evaluate, kill it.

use crate::auth_cmd::Target;
use crate::config_cmd::{author_or_os_user, ns_ref, Who};
use crate::output::{emit, emit_list, status_err, Output};
use anyhow::{bail, Context as _, Result};
use clap::Subcommand;
use meridian_proto::v1::config_client::ConfigClient;
use meridian_proto::v1::{
    config_op, edit_flag_op, ConfigOp, ConfigWriteRequest, DeleteFlagOp, DeleteSegmentOp,
    EditFlagOp, EvaluateFlagRequest, FlagRollout, FlagTarget, ListFlagsRequest,
    ListImpressionsRequest, SetFlagOp, SetSegmentOp,
};
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum FlagCmd {
    /// Create a flag. Without --definition or --file: a boolean flag with
    /// variants on (true) and off (false), serving off.
    Create {
        ns: String,
        key: String,
        /// The whole definition as JSON (flagd's format, docs/flags.md).
        #[arg(long, conflicts_with = "file")]
        definition: Option<String>,
        /// The definition from a JSON file.
        #[arg(long, short = 'f')]
        file: Option<std::path::PathBuf>,
        /// Create it disabled (the kill switch on).
        #[arg(long)]
        disabled: bool,
        #[command(flatten)]
        who: Who,
    },
    /// Replace a flag's definition (JSON, or --file).
    Set {
        ns: String,
        key: String,
        definition: Option<String>,
        #[arg(long, short = 'f')]
        file: Option<std::path::PathBuf>,
        #[command(flatten)]
        who: Who,
    },
    /// One flag: its definition and its compiled flagd form.
    Get { ns: String, key: String },
    /// The environment's flags (own and inherited) and segments; --flagd
    /// prints the flagd document in-process providers load.
    List {
        ns: String,
        #[arg(long)]
        flagd: bool,
    },
    /// Turn the kill switch off: the flag is served again.
    Enable {
        ns: String,
        key: String,
        #[command(flatten)]
        who: Who,
    },
    /// The kill switch: every evaluation answers DISABLED and callers use
    /// their code's default, at once, in every region.
    Disable {
        ns: String,
        key: String,
        #[command(flatten)]
        who: Who,
    },
    /// Roll a variant out to a percentage of targeting keys (e.g. 25%),
    /// against the default variant; growing it keeps everyone who was in.
    Rollout {
        ns: String,
        key: String,
        /// A percentage, 0 to 100, e.g. 25% or 0.5.
        percent: String,
        /// The variant to roll out (default: the one whose value is true).
        #[arg(long)]
        variant: Option<String>,
        #[command(flatten)]
        who: Who,
    },
    /// Serve a variant to the contexts a segment matches, ahead of the
    /// flag's other rules.
    Target {
        ns: String,
        key: String,
        #[arg(long)]
        segment: String,
        #[arg(long)]
        variant: String,
        #[command(flatten)]
        who: Who,
    },
    /// Evaluate a flag for a context (as OFREP and the SDKs would).
    Eval {
        ns: String,
        key: String,
        /// The evaluation context, a JSON object (targetingKey among its fields).
        #[arg(long, default_value = "{}")]
        context: String,
    },
    /// Delete a flag this environment defines.
    Delete {
        ns: String,
        key: String,
        #[command(flatten)]
        who: Who,
    },
    /// Impressions for experiments: how often each variant was served, by
    /// the regions (OFREP, flagd) and by SDKs evaluating locally, summed
    /// over every region. Counts are up to the regions' flush interval
    /// behind (10 s by default).
    Impressions {
        ns: String,
        /// One flag (default: every flag).
        key: Option<String>,
        /// From: an RFC 3339 time, Unix seconds, or how long ago (24h, 7d).
        #[arg(long, default_value = "24h")]
        since: String,
        /// Until (default: now).
        #[arg(long)]
        until: Option<String>,
        /// Window by window rather than totals.
        #[arg(long)]
        windows: bool,
    },
}

#[derive(Subcommand)]
pub enum SegmentCmd {
    /// Define or replace a segment: a JsonLogic rule flags use as {"$ref": NAME}.
    Set {
        ns: String,
        name: String,
        rule: String,
        #[command(flatten)]
        who: Who,
    },
    /// Delete a segment (refused while a flag refers to it).
    Delete {
        ns: String,
        name: String,
        #[command(flatten)]
        who: Who,
    },
}

fn definition_from(
    inline: Option<String>,
    file: Option<std::path::PathBuf>,
) -> Result<Option<String>> {
    Ok(match (inline, file) {
        (Some(d), _) => Some(d),
        (None, Some(f)) => {
            Some(std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?)
        }
        (None, None) => None,
    })
}

/// "25%", "25" or "0.5" as thousandths of a percent.
fn percent_milli(s: &str) -> Result<u32> {
    let p: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .with_context(|| format!("{s:?} is not a percentage"))?;
    if !(0.0..=100.0).contains(&p) {
        bail!("a roll-out is 0 to 100 %, not {p}");
    }
    Ok((p * 1000.0).round() as u32)
}

async fn write(target: &Target, ns: &str, op: config_op::Op, who: Who, out: Output) -> Result<()> {
    let r = ConfigClient::new(target.channel().await?)
        .write(ConfigWriteRequest {
            ns: Some(ns_ref(ns)?),
            ops: vec![ConfigOp { op: Some(op) }],
            author: author_or_os_user(&who.author),
            message: who.message,
            idempotency_key: String::new(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    crate::config_out::emit_write(out, &r)
}

fn edit(key: String, e: edit_flag_op::Edit) -> config_op::Op {
    config_op::Op::EditFlag(EditFlagOp { key, edit: Some(e) })
}

pub async fn run(cmd: FlagCmd, target: &Target, out: Output) -> Result<()> {
    match cmd {
        FlagCmd::Create {
            ns,
            key,
            definition,
            file,
            disabled,
            who,
        } => {
            let mut def: Value = match definition_from(definition, file)? {
                Some(d) => serde_json::from_str(&d).context("the definition is not JSON")?,
                None => {
                    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"})
                }
            };
            if disabled {
                def["state"] = json!("DISABLED");
            }
            let op = config_op::Op::SetFlag(SetFlagOp {
                key,
                definition_json: def.to_string(),
            });
            write(target, &ns, op, who, out).await
        }
        FlagCmd::Set {
            ns,
            key,
            definition,
            file,
            who,
        } => {
            let Some(d) = definition_from(definition, file)? else {
                bail!("give the definition as JSON or with --file");
            };
            let op = config_op::Op::SetFlag(SetFlagOp {
                key,
                definition_json: d,
            });
            write(target, &ns, op, who, out).await
        }
        FlagCmd::Get { ns, key } => {
            let r = list(target, &ns, true).await?;
            let f = r
                .flags
                .iter()
                .find(|f| f.key == key)
                .with_context(|| format!("{ns} has no flag {key:?}"))?;
            let flagd: Value = serde_json::from_str(&r.flagd_json).unwrap_or(Value::Null);
            let v = json!({
                "key": f.key,
                "definition": serde_json::from_str::<Value>(&f.definition_json).unwrap_or(Value::Null),
                "compiled": flagd["flags"][&key],
                "inherited_from": f.inherited_from,
                "version": f.version,
                "revision": r.revision,
            });
            emit(out, &v, |v| crate::config_out::pretty(v) + "\n")
        }
        FlagCmd::List { ns, flagd } => {
            let r = list(target, &ns, flagd).await?;
            if flagd {
                let v: Value = serde_json::from_str(&r.flagd_json).context("the flagd document")?;
                return emit(out, &v, |v| crate::config_out::pretty(v) + "\n");
            }
            let rows: Vec<Value> = r
                .flags
                .iter()
                .map(|f| {
                    let d: Value = serde_json::from_str(&f.definition_json).unwrap_or(Value::Null);
                    json!({
                        "key": f.key,
                        "state": d["state"],
                        "default": d["defaultVariant"],
                        "variants": d["variants"].as_object().map(|m| m.keys().cloned().collect::<Vec<_>>().join(",")),
                        "inherited_from": f.inherited_from,
                        "version": f.version,
                    })
                })
                .collect();
            let segments: serde_json::Map<String, Value> = r
                .segments
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::from_str(v).unwrap_or(Value::Null)))
                .collect();
            let v = json!({"flags": rows, "segments": segments, "revision": r.revision});
            emit_list(out, &v, "flags", |v| {
                let mut s = String::new();
                for f in v["flags"].as_array().into_iter().flatten() {
                    let from = f["inherited_from"].as_str().filter(|s| !s.is_empty());
                    s.push_str(&format!(
                        "{}  {}  default={}  variants={}{}\n",
                        f["key"].as_str().unwrap_or(""),
                        f["state"].as_str().unwrap_or(""),
                        f["default"],
                        f["variants"].as_str().unwrap_or(""),
                        from.map(|e| format!("  (from {e})")).unwrap_or_default()
                    ));
                }
                if s.is_empty() {
                    s.push_str("no flags\n");
                }
                for (name, rule) in v["segments"].as_object().into_iter().flatten() {
                    s.push_str(&format!("segment {name}: {rule}\n"));
                }
                s
            })
        }
        FlagCmd::Enable { ns, key, who } => {
            write(
                target,
                &ns,
                edit(key, edit_flag_op::Edit::Enabled(true)),
                who,
                out,
            )
            .await
        }
        FlagCmd::Disable { ns, key, who } => {
            write(
                target,
                &ns,
                edit(key, edit_flag_op::Edit::Enabled(false)),
                who,
                out,
            )
            .await
        }
        FlagCmd::Rollout {
            ns,
            key,
            percent,
            variant,
            who,
        } => {
            let r = FlagRollout {
                percent_milli: percent_milli(&percent)?,
                variant: variant.unwrap_or_default(),
            };
            write(
                target,
                &ns,
                edit(key, edit_flag_op::Edit::Rollout(r)),
                who,
                out,
            )
            .await
        }
        FlagCmd::Target {
            ns,
            key,
            segment,
            variant,
            who,
        } => {
            let t = FlagTarget { segment, variant };
            write(
                target,
                &ns,
                edit(key, edit_flag_op::Edit::Target(t)),
                who,
                out,
            )
            .await
        }
        FlagCmd::Impressions {
            ns,
            key,
            since,
            until,
            windows,
        } => impressions(target, &ns, key, &since, until.as_deref(), windows, out).await,
        FlagCmd::Eval { ns, key, context } => {
            let r = ConfigClient::new(target.channel().await?)
                .evaluate_flag(EvaluateFlagRequest {
                    ns: Some(ns_ref(&ns)?),
                    key,
                    context_json: context,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let value = r
                .value_json
                .as_deref()
                .map(|v| serde_json::from_str::<Value>(v).unwrap_or(Value::Null));
            let v = json!({
                "key": r.key,
                "value": value,
                "variant": (!r.variant.is_empty()).then_some(&r.variant),
                "reason": r.reason,
                "errorCode": (!r.error_code.is_empty()).then_some(&r.error_code),
                "errorMessage": (!r.error_message.is_empty()).then_some(&r.error_message),
                "targetingKeyMissing": r.targeting_key_missing,
                "metadata": serde_json::from_str::<Value>(&r.metadata_json).unwrap_or(Value::Null),
                "revision": r.revision,
            });
            emit(out, &v, |v| {
                let mut s = match &v["errorCode"] {
                    Value::String(c) => format!(
                        "{}: {c}: {}\n",
                        v["key"].as_str().unwrap_or(""),
                        v["errorMessage"].as_str().unwrap_or("")
                    ),
                    _ => format!(
                        "{} = {}  (variant {}, {})\n",
                        v["key"].as_str().unwrap_or(""),
                        if v["value"].is_null() {
                            "the caller's default".to_string()
                        } else {
                            v["value"].to_string()
                        },
                        v["variant"].as_str().unwrap_or("none"),
                        v["reason"].as_str().unwrap_or("")
                    ),
                };
                if v["targetingKeyMissing"] == json!(true) {
                    s.push_str("note: the flag targets by targetingKey and the context has none\n");
                }
                s
            })
        }
        FlagCmd::Delete { ns, key, who } => {
            write(
                target,
                &ns,
                config_op::Op::DeleteFlag(DeleteFlagOp { key }),
                who,
                out,
            )
            .await
        }
    }
}

pub async fn run_segment(cmd: SegmentCmd, target: &Target, out: Output) -> Result<()> {
    match cmd {
        SegmentCmd::Set {
            ns,
            name,
            rule,
            who,
        } => {
            serde_json::from_str::<Value>(&rule).context("the rule is not JSON")?;
            let op = config_op::Op::SetSegment(SetSegmentOp {
                name,
                rule_json: rule,
            });
            write(target, &ns, op, who, out).await
        }
        SegmentCmd::Delete { ns, name, who } => {
            write(
                target,
                &ns,
                config_op::Op::DeleteSegment(DeleteSegmentOp { name }),
                who,
                out,
            )
            .await
        }
    }
}

async fn list(
    target: &Target,
    ns: &str,
    flagd: bool,
) -> Result<meridian_proto::v1::ListFlagsResponse> {
    Ok(ConfigClient::new(target.channel().await?)
        .list_flags(ListFlagsRequest {
            ns: Some(ns_ref(ns)?),
            options: None,
            flagd,
        })
        .await
        .map_err(status_err)?
        .into_inner())
}

/// `meridian flag impressions`: totals per flag and variant (with their
/// share), or window by window.
async fn impressions(
    target: &Target,
    ns: &str,
    key: Option<String>,
    since: &str,
    until: Option<&str>,
    windows: bool,
    out: Output,
) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let at = |s: &str| meridian_flags::time::parse_instant(s, now).map_err(anyhow::Error::msg);
    let r = ConfigClient::new(target.channel().await?)
        .list_impressions(ListImpressionsRequest {
            ns: Some(ns_ref(ns)?),
            flag: key.unwrap_or_default(),
            since_s: at(since)?.max(1),
            until_s: until.map(at).transpose()?.unwrap_or(0),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let mut items = Vec::new();
    for f in &r.flags {
        if windows {
            for c in &f.windows {
                items.push(json!({
                    "flag": f.flag,
                    "window_start": meridian_flags::time::format_rfc3339_utc(c.window_start_s),
                    "window_s": c.window_s,
                    "variant": c.variant,
                    "count": c.count,
                }));
            }
        } else {
            for (variant, n) in f
                .variants
                .iter()
                .collect::<std::collections::BTreeMap<_, _>>()
            {
                let share = if f.total == 0 {
                    0.0
                } else {
                    *n as f64 * 100.0 / f.total as f64
                };
                items.push(json!({
                    "flag": f.flag,
                    "variant": variant,
                    "count": n,
                    "share_percent": (share * 100.0).round() / 100.0,
                }));
            }
        }
    }
    let v = json!({
        "namespace": ns,
        "items": items,
        "truncated": r.truncated,
        "flush_ms": r.flush_ms,
    });
    emit_list(out, &v, "items", |v| {
        let rows = v["items"].as_array().cloned().unwrap_or_default();
        if rows.is_empty() {
            return format!(
                "no impressions in {ns} in that span (regions flush every {} ms)\n",
                r.flush_ms
            );
        }
        let mut s = String::new();
        for row in rows {
            let what = match row.get("window_start") {
                Some(w) => format!(
                    "{}  {}",
                    w.as_str().unwrap_or(""),
                    row["flag"].as_str().unwrap_or("")
                ),
                None => row["flag"].as_str().unwrap_or("").to_string(),
            };
            s += &format!(
                "{what}  {}  {}{}\n",
                row["variant"].as_str().unwrap_or(""),
                row["count"],
                row.get("share_percent")
                    .map_or(String::new(), |p| format!("  ({p} %)")),
            );
        }
        if r.truncated {
            s += "(truncated: narrow the span or name a flag)\n";
        }
        s
    })
}
