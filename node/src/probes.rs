//! Kubernetes probes on the HTTP API port, unauthenticated (the kubelet
//! sends no credential) and saying nothing a caller could not learn from
//! the port answering:
//!
//! - `GET /livez`: the process serves HTTP and its driver answers (a node
//!   halted after a storage failure is still live: restarting it will not
//!   fix its disk, and its status says why). 200 `ok`, or 503.
//! - `GET /readyz`: storage is open and working (the driver answers, the
//!   node is not halted), and every group has a leader this region knows
//!   and this region's replica of it is at most `ready_staleness_ms_max`
//!   behind (a leader holding its lease is not behind; a follower is as far
//!   behind as the last time it knew it had applied everything committed,
//!   the measure bounded reads use). A region that restarts and catches up,
//!   or is cut off from the others, is not ready; once caught up it is.
//!
//! Both answer in the Kubernetes API server's form: one line per check
//! (`[+]name ok` or `[-]name failed: why`) with `?verbose`, or on failure;
//! otherwise `ok`.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::BTreeMap;
use tokio::sync::oneshot;

use crate::configstore::ConfigStore;
use crate::driver::{Input, NodeStatus};

/// How long a probe waits for the driver before it answers 503.
const DRIVER_WAIT: Duration = Duration::from_secs(2);

/// Readiness settings (`[probes]` in the node's configuration).
#[derive(Clone, Copy, Debug)]
pub struct ProbeConfig {
    /// A replica further behind than this is not ready.
    pub ready_staleness_us_max: u64,
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    /// None: passed; Some: why it failed.
    pub failure: Option<String>,
}

/// Readiness from a node's status: the checks, in group order.
pub fn readiness(status: &NodeStatus, regions: &[String], cfg: ProbeConfig) -> Vec<Check> {
    let mut out = vec![Check {
        name: "storage".into(),
        failure: status
            .halted
            .then(|| "the node halted after a storage failure".to_string()),
    }];
    // A region under a drill fault is down on purpose: take it out of
    // rotation as a real failure would.
    out.push(Check {
        name: "drill".into(),
        failure: status.fault.as_ref().map(|f| {
            format!(
                "under drill {}'s {} fault for {} ms more",
                f.drill_id,
                f.kind.as_str(),
                f.remaining_ms
            )
        }),
    });
    for (g, st) in status.groups.iter().enumerate() {
        let name = format!("group {}", regions.get(g).map_or("?", String::as_str));
        let failure = match (st.leader, st.staleness_us) {
            (None, _) => Some("no leader known".to_string()),
            (Some(_), None) => Some("not known to be caught up with its leader yet".to_string()),
            (Some(_), Some(s)) if s > cfg.ready_staleness_us_max => Some(format!(
                "{:.1} s behind its leader (at most {:.1} s)",
                s as f64 / 1e6,
                cfg.ready_staleness_us_max as f64 / 1e6
            )),
            _ => None,
        };
        out.push(Check { name, failure });
    }
    out
}

pub(crate) fn routes(r: Router<ConfigStore>) -> Router<ConfigStore> {
    r.route("/livez", get(livez)).route("/readyz", get(readyz))
}

/// The driver's status, or None if it does not answer in time.
pub(crate) async fn node_status(store: &ConfigStore) -> Option<NodeStatus> {
    let (tx, rx) = oneshot::channel();
    store.core().send(Input::Status { reply: tx }).await.ok()?;
    tokio::time::timeout(DRIVER_WAIT, rx).await.ok()?.ok()
}

fn answer(checks: &[Check], verbose: bool, what: &str) -> Response {
    let ok = checks.iter().all(|c| c.failure.is_none());
    let mut text = String::new();
    if verbose || !ok {
        for c in checks {
            match &c.failure {
                None => text += &format!("[+]{} ok\n", c.name),
                Some(why) => text += &format!("[-]{} failed: {why}\n", c.name),
            }
        }
    }
    if !ok {
        text += &format!("{what} check failed\n");
    } else if verbose {
        text += "ok\n";
    } else {
        text += "ok";
    }
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn livez(
    State(store): State<ConfigStore>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let failure = match node_status(&store).await {
        Some(_) => None,
        None => Some("the node's driver does not answer".to_string()),
    };
    let checks = [Check {
        name: "driver".into(),
        failure,
    }];
    answer(&checks, q.contains_key("verbose"), "livez")
}

async fn readyz(
    State(store): State<ConfigStore>,
    axum::Extension(cfg): axum::Extension<ProbeConfig>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let checks = match node_status(&store).await {
        Some(s) => readiness(&s, store.regions(), cfg),
        None => vec![Check {
            name: "driver".into(),
            failure: Some("the node's driver does not answer".into()),
        }],
    };
    answer(&checks, q.contains_key("verbose"), "readyz")
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_core::GroupStatus;

    fn group(leader: Option<u8>, staleness_us: Option<u64>) -> GroupStatus {
        GroupStatus {
            role: "follower",
            leader,
            term: 1,
            commit_index: 1,
            applied_index: 1,
            last_index: 1,
            applied_revision: 1,
            lease_remaining_us: None,
            followers: Vec::new(),
            staleness_us,
        }
    }

    #[test]
    fn ready_needs_storage_a_leader_and_a_fresh_replica_of_every_group() {
        let cfg = ProbeConfig {
            ready_staleness_us_max: 1_000_000,
        };
        let regions = vec!["eu".to_string(), "us".to_string()];
        let mut st = NodeStatus {
            groups: vec![group(Some(0), Some(0)), group(Some(1), Some(200_000))],
            connected: vec![true, true],
            links: Vec::new(),
            halted: false,
            namespaces: Vec::new(),
            peer_rejected: 0,
            fault: None,
            pending_requests: 0,
            watchers: 0,
            peer_rtt: Vec::new(),
            peer_reconnects: Vec::new(),
        };
        let failed = |st: &NodeStatus| -> Vec<String> {
            readiness(st, &regions, cfg)
                .into_iter()
                .filter(|c| c.failure.is_some())
                .map(|c| c.name)
                .collect()
        };
        assert!(failed(&st).is_empty());
        st.groups[1] = group(Some(1), Some(1_500_000));
        assert_eq!(failed(&st), ["group us"], "too far behind");
        st.groups[1] = group(Some(1), None);
        assert_eq!(failed(&st), ["group us"], "never known fresh");
        st.groups[0] = group(None, Some(0));
        assert_eq!(failed(&st), ["group eu", "group us"], "no leader");
        st.halted = true;
        assert_eq!(failed(&st)[0], "storage");
        st.fault = Some(crate::drill_fault::FaultInfo {
            drill_id: "d".into(),
            kind: crate::drill_fault::FaultKind::Isolate,
            elapsed_ms: 1,
            remaining_ms: 9,
        });
        assert_eq!(failed(&st)[1], "drill", "a region under a drill fault");
    }
}
