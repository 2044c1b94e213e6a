//! Failover drills' reports, kept in the cluster so operators can show a
//! history of drills (`meridian drill history`, `Drill.ListDrills`).
//!
//! A report is recorded by the region the drill tool asks, into that
//! region's own namespace `_system/drills/<region>` (homed there, one
//! version per key), under `<started_ms, 20 digits>-<drill id>`: keys sort by
//! start time. A region-loss drill records through a region that survived,
//! so the history never depends on the region under test. Listing merges
//! every region's namespace from this region's replicas. The gRPC layer
//! checks `admin` and audits each call; the writes themselves leave no
//! audit record (the core's rule for `_system/` namespaces).

use super::*;
use meridian_core::node::SYSTEM_NS_PREFIX;

/// Reports each region keeps; recording one more drops the oldest.
const DRILLS_KEPT_MAX: usize = 1_000;
/// Reports one listing returns at most.
pub const DRILLS_LIST_MAX: u32 = 500;
/// Largest report kept, in bytes (a report is a table's worth of figures
/// plus a timeline of at most a few thousand points).
pub const DRILL_REPORT_BYTES_MAX: usize = 256 << 10;
const SCENARIOS: [&str; 3] = ["planned", "region-loss", "partition"];

/// The namespace holding the drill reports recorded through `region`.
pub fn drills_ns(region: &str) -> String {
    format!("{SYSTEM_NS_PREFIX}drills/{region}")
}

/// What a report must say about itself to be kept.
#[derive(Debug, PartialEq, Eq)]
struct ReportHead {
    drill_id: String,
    scenario: String,
    started_ms: u64,
}

fn report_head(report: &Value) -> Result<ReportHead, String> {
    let obj = report
        .as_object()
        .ok_or("the report is not a JSON object")?;
    let drill_id = obj
        .get("drill_id")
        .and_then(Value::as_str)
        .ok_or("the report has no string \"drill_id\"")?;
    if !crate::drill_fault::valid_drill_id(drill_id) {
        return Err(format!(
            "drill_id {drill_id:?} is not 1 to 128 of [A-Za-z0-9._-]"
        ));
    }
    let scenario = obj
        .get("scenario")
        .and_then(Value::as_str)
        .ok_or("the report has no string \"scenario\"")?;
    if !SCENARIOS.contains(&scenario) {
        return Err(format!(
            "scenario {scenario:?} is not one of {}",
            SCENARIOS.join(", ")
        ));
    }
    let started_ms = obj
        .get("started_ms")
        .and_then(Value::as_u64)
        .ok_or("the report has no unsigned integer \"started_ms\"")?;
    Ok(ReportHead {
        drill_id: drill_id.to_string(),
        scenario: scenario.to_string(),
        started_ms,
    })
}

fn report_key(h: &ReportHead) -> String {
    format!("{:020}-{}", h.started_ms, h.drill_id)
}

impl ConfigStore {
    /// Keep a drill's report. Returns the recording region and the key.
    pub async fn record_drill(&self, report_json: &str) -> Result<(String, String), CfgError> {
        let bad = |m: String| CfgError::new(Reason::InvalidRequest, m);
        if report_json.len() > DRILL_REPORT_BYTES_MAX.min(self.limits.value_bytes_max) {
            return Err(bad(format!(
                "the report is {} bytes; at most {} are kept",
                report_json.len(),
                DRILL_REPORT_BYTES_MAX.min(self.limits.value_bytes_max)
            )));
        }
        let report: Value = serde_json::from_str(report_json)
            .map_err(|e| bad(format!("the report is not JSON: {e}")))?;
        let head = report_head(&report).map_err(bad)?;
        let me = self.impressions.me;
        let sys = drills_ns(&self.regions[me]);
        let key = report_key(&head);
        let ops = vec![WriteOp::Put {
            key: key.clone(),
            value: report_json.as_bytes().to_vec(),
        }];
        let write = || ClientRequest::Write {
            ns: sys.clone(),
            // The same report recorded twice is one record.
            request_id: fnv1a(format!("{sys}\0{key}").as_bytes()) | 1,
            fingerprint: meridian_core::types::write_fingerprint(&sys, &[], &ops),
            compares: Vec::new(),
            ns_revision: None,
            ops: ops.clone(),
            meta: ChangeMeta {
                author: "meridian".into(),
                message: format!("drill {} ({})", head.drill_id, head.scenario),
                time_ms: now_ms(),
            },
            audit: Box::default(),
        };
        match self.call(write()).await {
            Err(e) if e.reason == Reason::UnknownNamespace => {
                self.create_system_ns(&sys, me as u8, 1).await?;
                self.call(write()).await?;
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        self.drop_oldest_drills(&sys).await?;
        Ok((self.regions[me].clone(), key))
    }

    /// Keep at most `DRILLS_KEPT_MAX` reports in `sys`.
    async fn drop_oldest_drills(&self, sys: &str) -> Result<(), CfgError> {
        let keys = self.drill_keys(sys).await?;
        let extra = keys.len().saturating_sub(DRILLS_KEPT_MAX);
        if extra == 0 {
            return Ok(());
        }
        let ops: Vec<WriteOp> = keys[..extra.min(self.limits.txn_ops_max)]
            .iter()
            .map(|k| WriteOp::Delete { key: k.clone() })
            .collect();
        self.call(ClientRequest::Write {
            ns: sys.to_string(),
            request_id: 0,
            fingerprint: meridian_core::types::write_fingerprint(sys, &[], &ops),
            compares: Vec::new(),
            ns_revision: None,
            ops,
            meta: ChangeMeta {
                author: "meridian".into(),
                message: "drill reports past retention".into(),
                time_ms: now_ms(),
            },
            audit: Box::default(),
        })
        .await?;
        Ok(())
    }

    /// The live keys of a drills namespace, oldest first (none if it does
    /// not exist yet).
    async fn drill_keys(&self, sys: &str) -> Result<Vec<String>, CfgError> {
        Ok(self
            .drill_records(sys, true)
            .await?
            .into_iter()
            .map(|kv| kv.key)
            .collect())
    }

    async fn drill_records(&self, sys: &str, keys_only: bool) -> Result<Vec<KeyValue>, CfgError> {
        let mut out = Vec::new();
        let mut start_after = String::new();
        loop {
            let q = ReadQuery::List {
                prefix: String::new(),
                start_after: start_after.clone(),
                limit: if keys_only { 1000 } else { 100 },
            };
            // Linearizable, so a report just recorded in any region is
            // listed; this region's copy if the home cannot answer (a drill
            // history must not depend on the region under test).
            let read = match self
                .read(sys, q.clone(), Consistency::Linearizable, None)
                .await
            {
                Err(e) if e.reason != Reason::UnknownNamespace => {
                    self.read(sys, q, Consistency::Stale, None).await
                }
                other => other,
            };
            let (kvs, more) = match read {
                Err(e) if e.reason == Reason::UnknownNamespace => return Ok(out),
                Err(e) => return Err(e),
                Ok(ClientResponse::List { kvs, more, .. }) => (kvs, more),
                Ok(other) => return Err(unexpected(&other)),
            };
            let last = kvs.last().map(|kv| kv.key.clone());
            out.extend(kvs.into_iter().filter(|kv| kv.value.is_some()));
            match last {
                // Bounded: each region keeps at most DRILLS_KEPT_MAX (a few
                // more while a recording races its trim).
                Some(k) if more && out.len() < 2 * DRILLS_KEPT_MAX => start_after = k,
                _ => return Ok(out),
            }
        }
    }

    /// Reports recorded through any region, newest first.
    pub async fn list_drills(&self, limit: u32, scenario: &str) -> Result<Vec<String>, CfgError> {
        if !scenario.is_empty() && !SCENARIOS.contains(&scenario) {
            return Err(CfgError::new(
                Reason::InvalidRequest,
                format!(
                    "scenario {scenario:?} is not one of {}",
                    SCENARIOS.join(", ")
                ),
            ));
        }
        let limit = match limit {
            0 => 20,
            n => n.min(DRILLS_LIST_MAX),
        } as usize;
        let mut all: Vec<(String, String)> = Vec::new();
        for region in self.regions.iter() {
            for kv in self.drill_records(&drills_ns(region), false).await? {
                let text = String::from_utf8_lossy(kv.value.as_deref().unwrap_or_default());
                let keep = scenario.is_empty()
                    || serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| report_head(&v).ok())
                        .is_some_and(|h| h.scenario == scenario);
                if keep {
                    all.push((kv.key, text.into_owned()));
                }
            }
        }
        // Newest first: keys lead with the start time, zero-padded.
        all.sort_by(|a, b| b.0.cmp(&a.0));
        all.truncate(limit);
        Ok(all.into_iter().map(|(_, r)| r).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_names_its_drill_scenario_and_start() {
        let ok = serde_json::json!({"drill_id": "d-1", "scenario": "planned", "started_ms": 42});
        let h = report_head(&ok).expect("valid");
        assert_eq!(report_key(&h), "00000000000000000042-d-1");
        for bad in [
            serde_json::json!([]),
            serde_json::json!({"scenario": "planned", "started_ms": 1}),
            serde_json::json!({"drill_id": "a b", "scenario": "planned", "started_ms": 1}),
            serde_json::json!({"drill_id": "d", "scenario": "chaos", "started_ms": 1}),
            serde_json::json!({"drill_id": "d", "scenario": "planned", "started_ms": -1}),
        ] {
            assert!(report_head(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_sort_by_start_time() {
        let k = |ms| {
            report_key(&ReportHead {
                drill_id: "z".into(),
                scenario: "planned".into(),
                started_ms: ms,
            })
        };
        assert!(k(9) < k(10));
        assert!(k(999_999_999_999) < k(1_000_000_000_000));
    }
}
