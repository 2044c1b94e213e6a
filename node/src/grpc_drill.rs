//! The gRPC `Drill` service: the admin-only faults `meridian drill` makes a
//! region suffer (carried out by the driver, `drill_fault`), and the drills'
//! reports kept in the cluster (`configstore::engine::drills`). Every call
//! needs `admin` on the cluster and leaves an audit record.

use meridian_proto::v1::drill_server::Drill;
use meridian_proto::v1::*;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::auth::{Access, Action, Authority, Resource};
use crate::configstore::ConfigStore;
use crate::drill_fault::{FaultInfo, FaultKind, FaultRefusal};
use crate::driver::FaultCmd;
use crate::grpc::{auth_status, status};
use crate::reason::Reason;

#[derive(Clone)]
pub struct DrillApi {
    store: ConfigStore,
    auth: Authority,
    faults: mpsc::Sender<FaultCmd>,
    region: String,
}

impl DrillApi {
    pub fn new(
        store: ConfigStore,
        auth: Authority,
        faults: mpsc::Sender<FaultCmd>,
        region: String,
    ) -> DrillApi {
        DrillApi {
            store,
            auth,
            faults,
            region,
        }
    }

    fn admin<T>(&self, r: &Request<T>) -> Result<Access, Status> {
        let access = self.auth.grpc(r).map_err(auth_status)?;
        access
            .check(Action::Admin, Resource::CLUSTER)
            .map_err(auth_status)?;
        Ok(access)
    }

    fn fault(&self, f: FaultInfo) -> DrillFault {
        fault_message(f, &self.region)
    }
}

/// A fault as the API shows it.
pub fn fault_message(f: FaultInfo, region: &str) -> DrillFault {
    DrillFault {
        drill_id: f.drill_id,
        kind: f.kind.as_str().to_string(),
        elapsed_ms: f.elapsed_ms,
        remaining_ms: f.remaining_ms,
        region: region.to_string(),
    }
}

fn refusal(e: FaultRefusal) -> Status {
    let reason = match e {
        FaultRefusal::Duration(_) | FaultRefusal::DrillId => Reason::InvalidRequest,
        FaultRefusal::Busy(_) | FaultRefusal::OtherDrill { .. } | FaultRefusal::Restarting => {
            Reason::DrillFaultActive
        }
    };
    status(reason, &e.to_string())
}

fn stopping() -> Status {
    status(Reason::ShuttingDown, "the node is stopping")
}

#[tonic::async_trait]
impl Drill for DrillApi {
    async fn inject_fault(
        &self,
        r: Request<InjectFaultRequest>,
    ) -> Result<Response<DrillFault>, Status> {
        let access = self.admin(&r)?;
        let r = r.into_inner();
        let Some(kind) = FaultKind::parse(&r.kind) else {
            return Err(status(
                Reason::InvalidRequest,
                &format!("fault kind {:?} is not stop, isolate or pause", r.kind),
            ));
        };
        // Recorded before the fault: a stopped or paused region records
        // nothing until it is back, and the record must exist either way.
        access.audit_ok(
            "",
            &[],
            &format!(
                "drill {}: {} fault for at most {} ms",
                r.drill_id, r.kind, r.duration_ms
            ),
        );
        let (tx, rx) = oneshot::channel();
        self.faults
            .send(FaultCmd::Inject {
                drill_id: r.drill_id,
                kind,
                duration_ms: r.duration_ms,
                reply: tx,
            })
            .await
            .map_err(|_| stopping())?;
        let info = rx.await.map_err(|_| stopping())?.map_err(refusal)?;
        Ok(Response::new(self.fault(info)))
    }

    async fn clear_fault(
        &self,
        r: Request<ClearFaultRequest>,
    ) -> Result<Response<ClearFaultResponse>, Status> {
        let access = self.admin(&r)?;
        let r = r.into_inner();
        let (tx, rx) = oneshot::channel();
        self.faults
            .send(FaultCmd::Clear {
                drill_id: r.drill_id.clone(),
                reply: tx,
            })
            .await
            .map_err(|_| stopping())?;
        let cleared = rx.await.map_err(|_| stopping())?.map_err(refusal)?;
        access.audit_ok(
            "",
            &[],
            &match &cleared {
                Some(f) => format!("drill {}: {} fault cleared", f.drill_id, f.kind.as_str()),
                None => format!("drill {}: no fault in force to clear", r.drill_id),
            },
        );
        Ok(Response::new(ClearFaultResponse {
            cleared: cleared.map(|f| self.fault(f)),
        }))
    }

    async fn record_drill(
        &self,
        r: Request<RecordDrillRequest>,
    ) -> Result<Response<RecordDrillResponse>, Status> {
        let access = self.admin(&r)?;
        let r = r.into_inner();
        let (region, key) = self
            .store
            .record_drill(&r.report_json)
            .await
            .map_err(|e| e.to_status())?;
        access.audit_ok("", &[], &format!("drill report {key} recorded in {region}"));
        Ok(Response::new(RecordDrillResponse { region, key }))
    }

    async fn list_drills(
        &self,
        r: Request<ListDrillsRequest>,
    ) -> Result<Response<ListDrillsResponse>, Status> {
        self.admin(&r)?;
        let r = r.into_inner();
        let reports_json = self
            .store
            .list_drills(r.limit, &r.scenario)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(ListDrillsResponse { reports_json }))
    }
}
