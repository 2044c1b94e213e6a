//! `meridian audit ...`: query and export the audit log, and verify its hash
//! chains in every region (each region's own recomputation, then the
//! regions' copies against each other, naming the first record where they
//! part).

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use meridian_proto::client::AuthChannel;
use meridian_proto::v1::audit_client::AuditClient;
use meridian_proto::v1::*;
use serde_json::{json, Value};

use crate::auth_cmd::Target;
use crate::output::{emit, status_err, Failure, Output};

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Records that match, oldest first (a page, or --all).
    List {
        #[command(flatten)]
        filter: Filter,
        /// Records per page (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// From a previous page's next_page_token.
        #[arg(long, default_value = "")]
        page_token: String,
        /// Every page, not only the first.
        #[arg(long)]
        all: bool,
    },
    /// Every matching record as JSON lines, for archiving or a SIEM.
    Export {
        #[command(flatten)]
        filter: Filter,
    },
    /// Recompute every group's hash chain in every region given by
    /// --endpoints, and compare the regions' copies. Exits non-zero, naming
    /// the record, if any chain does not verify.
    Verify,
}

#[derive(Args)]
pub struct Filter {
    /// Records at or after this time: RFC 3339 (2026-11-29T08:00:00Z) or ms since the epoch.
    #[arg(long)]
    since: Option<String>,
    /// Records before this time.
    #[arg(long)]
    until: Option<String>,
    #[arg(long, default_value = "")]
    principal: String,
    /// project/environment, or a project.
    #[arg(long, default_value = "")]
    namespace: String,
    /// Records naming a key with this prefix.
    #[arg(long, default_value = "")]
    key_prefix: String,
    /// Records whose action starts with this (Kv.Put, Auth., PUT /v1/config).
    #[arg(long, default_value = "")]
    action: String,
    /// Only refusals.
    #[arg(long)]
    denied: bool,
}

pub(crate) fn time_ms(flag: &str, s: &str) -> Result<u64> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    match humantime::parse_rfc3339_weak(s) {
        Ok(t) => Ok(t
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)),
        Err(e) => bail!("--{flag} {s:?}: not ms since the epoch or an RFC 3339 time ({e})"),
    }
}

impl Filter {
    fn request(&self, limit: u32, page_token: String) -> Result<AuditQueryRequest> {
        Ok(AuditQueryRequest {
            from_ms: self
                .since
                .as_deref()
                .map(|s| time_ms("since", s))
                .transpose()?
                .unwrap_or(0),
            to_ms: self
                .until
                .as_deref()
                .map(|s| time_ms("until", s))
                .transpose()?
                .unwrap_or(0),
            principal: self.principal.clone(),
            namespace: self.namespace.clone(),
            key_prefix: self.key_prefix.clone(),
            action_prefix: self.action.clone(),
            denied_only: self.denied,
            limit,
            page_token,
            group: None,
        })
    }
}

pub fn record_json(r: &AuditRecord) -> Value {
    json!({
        "group": r.group, "seq": r.seq, "revision": r.revision, "time_ms": r.time_ms,
        "time": humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.time_ms)).to_string(),
        "region": r.region, "principal": r.principal, "method": r.method,
        "action": r.action, "namespace": r.namespace, "keys": r.keys,
        "request_id": r.request_id, "result": r.result, "client": r.client,
        "detail": r.detail, "hash": r.hash,
    })
}

fn human(records: &[Value]) -> String {
    let mut s = String::new();
    for r in records {
        let keys: Vec<&str> = r["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        s.push_str(&format!(
            "{} {} {} {}({}) {} {}{} {}{}\n",
            r["time"].as_str().unwrap_or(""),
            r["region"].as_str().unwrap_or(""),
            r["result"].as_str().unwrap_or(""),
            r["principal"].as_str().unwrap_or(""),
            r["method"].as_str().unwrap_or(""),
            r["action"].as_str().unwrap_or(""),
            r["namespace"].as_str().unwrap_or(""),
            if keys.is_empty() {
                String::new()
            } else {
                format!(" [{}]", keys.join(", "))
            },
            r["client"].as_str().unwrap_or(""),
            match r["detail"].as_str() {
                Some(d) if !d.is_empty() => format!(" - {d}"),
                _ => String::new(),
            },
        ));
    }
    s
}

/// Table columns: the record without its hash and request id (they are in json).
fn table_row(r: &Value) -> Value {
    json!({
        "time": r["time"], "region": r["region"], "result": r["result"],
        "principal": r["principal"], "method": r["method"], "action": r["action"],
        "namespace": r["namespace"], "keys": r["keys"], "client": r["client"],
        "detail": r["detail"],
    })
}

pub async fn run(cmd: AuditCmd, target: &Target, out: Output) -> Result<()> {
    match cmd {
        AuditCmd::List {
            filter,
            limit,
            page_token,
            all,
        } => {
            let mut client = AuditClient::new(target.channel().await?);
            let mut records = Vec::new();
            let next = pages(&mut client, filter.request(limit, page_token)?, all, |rs| {
                records.extend(rs.iter().map(record_json));
                Ok(())
            })
            .await?;
            match out {
                Output::Jsonl => {
                    for r in &records {
                        println!("{}", serde_json::to_string(r)?);
                    }
                    Ok(())
                }
                Output::Table => {
                    let rows: Vec<Value> = records.iter().map(table_row).collect();
                    emit(out, &json!({ "items": rows }), |_| String::new())
                }
                _ => emit(
                    out,
                    &json!({ "records": records, "next_page_token": next }),
                    |_| {
                        let mut s = human(&records);
                        if !next.is_empty() {
                            s.push_str(&format!("(more: --page-token {next})\n"));
                        }
                        s
                    },
                ),
            }
        }
        AuditCmd::Export { filter } => {
            let mut client = AuditClient::new(target.channel().await?);
            pages(
                &mut client,
                filter.request(1000, String::new())?,
                true,
                |rs| {
                    for r in rs {
                        println!("{}", serde_json::to_string(&record_json(r))?);
                    }
                    Ok(())
                },
            )
            .await?;
            Ok(())
        }
        AuditCmd::Verify => verify(target, out).await,
    }
}

/// Run `req` page after page (only the first unless `all`), handing each
/// page's records to `each`. Returns the token of the page after the last
/// one fetched ("" once there are no more).
async fn pages(
    client: &mut AuditClient<AuthChannel>,
    mut req: AuditQueryRequest,
    all: bool,
    mut each: impl FnMut(&[AuditRecord]) -> Result<()>,
) -> Result<String> {
    loop {
        let resp = client
            .query(req.clone())
            .await
            .map_err(status_err)?
            .into_inner();
        each(&resp.records)?;
        if resp.next_page_token.is_empty() || !all {
            return Ok(resp.next_page_token);
        }
        req.page_token = resp.next_page_token;
    }
}

/// The hashes of one group's records in one region, by sequence number.
async fn hashes(
    client: &mut AuditClient<AuthChannel>,
    group: u32,
) -> Result<std::collections::BTreeMap<u64, String>> {
    let mut out = std::collections::BTreeMap::new();
    let req = AuditQueryRequest {
        limit: 1000,
        group: Some(group),
        ..AuditQueryRequest::default()
    };
    pages(client, req, true, |rs| {
        out.extend(rs.iter().map(|r| (r.seq, r.hash.clone())));
        Ok(())
    })
    .await?;
    Ok(out)
}

async fn verify(target: &Target, out: Output) -> Result<()> {
    // Each region's own verdict.
    let mut regions = Vec::new();
    for e in &target.endpoints {
        let ch = target.channel_to(e).await?;
        let mut client = AuditClient::new(ch);
        let v = client
            .verify(AuditVerifyRequest {})
            .await
            .map_err(status_err)?
            .into_inner();
        regions.push((client, v));
    }
    let mut problems = Vec::new();
    for (_, v) in &regions {
        for g in &v.groups {
            if !g.ok {
                problems.push(format!(
                    "region {}: group {} record {}: {}",
                    v.region, g.group, g.broken_seq, g.problem
                ));
            }
        }
    }
    // The copies against each other: over the records every region still
    // holds, the same hashes. (A region that has not applied the newest
    // records yet is behind, not different.)
    let groups = regions.first().map_or(0, |(_, v)| v.groups.len());
    for g in 0..groups as u32 {
        let mut copies = Vec::new();
        for (client, v) in &mut regions {
            copies.push((v.region.clone(), hashes(client, g).await?));
        }
        let Some((first_region, first)) = copies.first() else {
            continue;
        };
        for (region, other) in &copies[1..] {
            let differs = first
                .iter()
                .find(|(seq, h)| other.get(seq).is_some_and(|o| o != *h));
            if let Some((seq, _)) = differs {
                problems.push(format!(
                    "group {g} record {seq}: region {region}'s copy differs from region {first_region}'s \
                     (one of them was changed after it was written)"
                ));
            }
        }
    }
    let report = json!({
        "ok": problems.is_empty(),
        "problems": problems,
        "regions": regions.iter().map(|(_, v)| json!({
            "region": v.region,
            "groups": v.groups.iter().map(|g| json!({
                "group": g.group, "first_seq": g.first_seq, "last_seq": g.last_seq,
                "head_hash": g.head_hash, "ok": g.ok, "broken_seq": g.broken_seq,
                "problem": g.problem,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    emit(out, &report, |r| {
        let mut s = String::new();
        for reg in r["regions"].as_array().into_iter().flatten() {
            for g in reg["groups"].as_array().into_iter().flatten() {
                let span = if g["last_seq"].as_u64() < g["first_seq"].as_u64() {
                    "no records".to_string()
                } else {
                    format!("records {}..={}", g["first_seq"], g["last_seq"])
                };
                s.push_str(&format!(
                    "{} group {}: {span} {}\n",
                    reg["region"].as_str().unwrap_or(""),
                    g["group"],
                    if g["ok"] == json!(true) {
                        "ok".to_string()
                    } else {
                        format!("BROKEN at record {}", g["broken_seq"])
                    }
                ));
            }
        }
        for p in r["problems"].as_array().into_iter().flatten() {
            s.push_str(&format!("problem: {}\n", p.as_str().unwrap_or("")));
        }
        if r["ok"] == json!(true) {
            s.push_str("audit log verified\n");
        }
        s
    })?;
    if !problems.is_empty() {
        return Err(Failure::new(
            "AUDIT_CHAIN_BROKEN",
            format!("the audit log does not verify: {}", problems.join("; ")),
        )
        .into());
    }
    Ok(())
}
