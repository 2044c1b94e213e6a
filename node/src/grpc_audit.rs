//! The gRPC `Audit` service: query the audit log and verify this region's
//! copy of every group's hash chain (the logic is in `audit.rs`, shared
//! with the HTTP API).

use meridian_core::audit::AuditFilter;
use meridian_proto::v1::audit_server::Audit;
use meridian_proto::v1::*;
use tonic::{Request, Response, Status};

use crate::audit::{self as log, ChainReport, RecordView};
use crate::auth::{Action, Authority, Resource};
use crate::core_client::CoreClient;
use crate::grpc::{auth_status, status};

#[derive(Clone)]
pub struct AuditApi {
    core: CoreClient,
    auth: Authority,
    regions: Vec<String>,
    region: String,
}

impl AuditApi {
    pub fn new(core: CoreClient, auth: Authority, regions: Vec<String>, me: usize) -> AuditApi {
        let region = regions.get(me).cloned().unwrap_or_default();
        AuditApi {
            core,
            auth,
            regions,
            region,
        }
    }
}

fn record(v: RecordView) -> AuditRecord {
    AuditRecord {
        group: v.group,
        seq: v.seq,
        revision: v.revision,
        time_ms: v.time_ms,
        region: v.region,
        principal: v.principal,
        method: v.method,
        action: v.action,
        namespace: v.namespace,
        keys: v.keys,
        request_id: v.request_id,
        result: v.result,
        client: v.client,
        detail: v.detail,
        hash: v.hash,
    }
}

fn chain(c: ChainReport) -> AuditChain {
    AuditChain {
        group: c.group,
        first_seq: c.first_seq,
        last_seq: c.last_seq,
        head_hash: c.head_hash,
        ok: c.ok,
        broken_seq: c.broken_seq,
        problem: c.problem,
    }
}

#[tonic::async_trait]
impl Audit for AuditApi {
    async fn query(
        &self,
        req: Request<AuditQueryRequest>,
    ) -> Result<Response<AuditQueryResponse>, Status> {
        let access = self.auth.grpc(&req).map_err(auth_status)?;
        let r = req.into_inner();
        let group = match r.group {
            None => None,
            Some(g) => Some(u8::try_from(g).map_err(|_| {
                status(
                    crate::reason::Reason::InvalidRequest,
                    &format!("group {g} does not exist"),
                )
            })?),
        };
        let q = log::Query {
            filter: AuditFilter {
                from_ms: r.from_ms,
                to_ms: r.to_ms,
                principal: r.principal,
                ns: r.namespace,
                key_prefix: r.key_prefix,
                action_prefix: r.action_prefix,
                denied_only: r.denied_only,
            },
            limit: r.limit as usize,
            page_token: r.page_token,
            group,
        };
        let page = log::query(&self.core, &self.regions, &access, &q)
            .await
            .map_err(|(reason, m)| status(reason, &m))?;
        Ok(Response::new(AuditQueryResponse {
            records: page.records.into_iter().map(record).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn verify(
        &self,
        req: Request<AuditVerifyRequest>,
    ) -> Result<Response<AuditVerifyResponse>, Status> {
        let access = self.auth.grpc(&req).map_err(auth_status)?;
        access
            .check(Action::Admin, Resource::CLUSTER)
            .map_err(auth_status)?;
        let mut groups = Vec::with_capacity(self.regions.len());
        for g in 0..self.regions.len() {
            let c = log::verify_group(&self.core, g as u8)
                .await
                .map_err(|(reason, m)| status(reason, &m))?;
            groups.push(chain(c));
        }
        Ok(Response::new(AuditVerifyResponse {
            region: self.region.clone(),
            groups,
        }))
    }
}
