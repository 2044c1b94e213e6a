//! The gRPC `Auth` service: who am I, API tokens, roles and grants. Every
//! change is a metadata edit (`MetaOp`) answered once durable in this region
//! and synced to the others; this region's auth state has it before the
//! answer, so a revocation is refused here at once.

use meridian_core::types::MetaOp;
use meridian_proto::v1::auth_server::Auth;
use meridian_proto::v1::*;
use tonic::{Request, Response, Status};

use crate::auth::rules::{valid_name, RoleSpec, RuleSpec};
use crate::auth::{
    role_permission, tokens, wall_ms, Access, Action, AuthError, AuthState, Authority, Effect,
    Resource, TokenRecord, ROOT_ROLE,
};
use crate::core_client::CoreClient;
use crate::grpc::{auth_status, status};
use crate::reason::Reason;

/// Tokens one principal may hold at most, and tokens in the cluster: every
/// record is synced to every region and parsed on every change.
pub const TOKENS_PER_PRINCIPAL_MAX: usize = 100;
pub const TOKENS_MAX: usize = 10_000;

#[derive(Clone)]
pub struct AuthApi {
    core: CoreClient,
    auth: Authority,
}

fn denied(e: AuthError) -> Status {
    auth_status(e)
}

fn bad(reason: Reason, message: String) -> Status {
    status(reason, &message)
}

/// The resource that managing a token of `project` (None: unscoped) needs
/// `grant` on.
fn token_scope(project: Option<&str>) -> Resource<'_> {
    match project {
        Some(p) => Resource {
            project: p,
            environment: "*",
            key: "*",
        },
        None => Resource::CLUSTER,
    }
}

fn info(id: &str, t: &TokenRecord, state: &AuthState, now_ms: u64) -> TokenInfo {
    TokenInfo {
        id: id.to_string(),
        principal: t.principal.clone(),
        created_ms: t.created_ms,
        expires_ms: t.expires_ms.unwrap_or(0),
        project: t.project.clone().unwrap_or_default(),
        roles: t.roles.clone(),
        created_by: t.created_by.clone(),
        description: t.description.clone(),
        revoked: state.revoked.contains(id),
        expired: t.expires_ms.is_some_and(|e| now_ms >= e),
    }
}

impl AuthApi {
    pub fn new(core: CoreClient, auth: Authority) -> AuthApi {
        AuthApi { core, auth }
    }

    fn access<T>(&self, r: &Request<T>) -> Result<Access, Status> {
        self.auth.grpc(r).map_err(denied)
    }

    /// An access that may manage auth: `grant` on `r`.
    fn granting<T>(&self, req: &Request<T>, r: Resource<'_>) -> Result<Access, Status> {
        let a = self.access(req)?;
        a.check(Action::Grant, r).map_err(denied)?;
        Ok(a)
    }

    async fn edit(&self, op: MetaOp) -> Result<(), Status> {
        self.core
            .edit_meta(op)
            .await
            .map_err(|(reason, message)| status(reason, &message))
    }

    fn known_roles(state: &AuthState, roles: &[String]) -> Result<(), Status> {
        for r in roles {
            if !state.role_exists(r) {
                return Err(bad(Reason::UnknownRole, format!("no role named {r:?}")));
            }
        }
        Ok(())
    }
}

impl AuthApi {
    /// Give (`grant`) or take away a role: `grant` on the cluster. A role
    /// must exist to be given; one that no longer exists can still be taken.
    async fn role_edit(
        &self,
        req: Request<GrantRoleRequest>,
        grant: bool,
    ) -> Result<Response<GrantRoleResponse>, Status> {
        // A revocation works in a cut-off region too: it only takes away.
        let a = if grant {
            self.access(&req)?
        } else {
            self.auth.grpc_even_cut_off(&req).map_err(denied)?
        };
        a.check(Action::Grant, Resource::CLUSTER).map_err(denied)?;
        let r = req.into_inner();
        check_principal(&r.principal)?;
        if grant {
            Self::known_roles(a.state(), std::slice::from_ref(&r.role))?;
        } else if !valid_name(&r.role) {
            return Err(bad(
                Reason::UnknownRole,
                format!("no role named {:?}", r.role),
            ));
        }
        let (principal, permission) = (r.principal.clone(), role_permission(&r.role));
        self.edit(if grant {
            MetaOp::Grant {
                principal,
                permission,
            }
        } else {
            MetaOp::Revoke {
                principal,
                permission,
            }
        })
        .await?;
        let what = if grant {
            "role granted"
        } else {
            "role revoked"
        };
        tracing::info!(principal = %r.principal, role = %r.role, by = %a.principal.name, "{what}");
        a.audit_ok("", &[], &format!("{what}: {} to {}", r.role, r.principal));
        Ok(Response::new(GrantRoleResponse {}))
    }
}

/// The namespace an audit record of a token names: its project's (every
/// environment), or none for an unscoped token.
fn token_ns(project: Option<&str>) -> String {
    project.map_or(String::new(), |p| format!("{p}/*"))
}

fn check_principal(p: &str) -> Result<(), Status> {
    if valid_name(p) && p != "root" {
        Ok(())
    } else {
        Err(bad(
            Reason::InvalidRequest,
            format!("bad principal {p:?}: 1-128 of letters, digits and -_.:@ (and not \"root\")"),
        ))
    }
}

#[tonic::async_trait]
impl Auth for AuthApi {
    async fn who_am_i(
        &self,
        r: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        let a = self.access(&r)?;
        Ok(Response::new(WhoAmIResponse {
            principal: a.principal.name.clone(),
            method: a.principal.method.as_str().to_string(),
            token_id: a.principal.token_id.clone().unwrap_or_default(),
            project: a.principal.project.clone().unwrap_or_default(),
            roles: a.principal.roles.clone(),
            auth_enabled: a.enabled(),
        }))
    }

    async fn create_token(
        &self,
        req: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let project = (!req.get_ref().project.is_empty()).then(|| req.get_ref().project.clone());
        let a = self.granting(&req, token_scope(project.as_deref()))?;
        let r = req.into_inner();
        check_principal(&r.principal)?;
        if let Some(p) = &project {
            if !valid_name(p) || p.contains('/') {
                return Err(bad(Reason::InvalidRequest, format!("bad project {p:?}")));
            }
        }
        Self::known_roles(a.state(), &r.roles)?;
        let state = a.state();
        if state.tokens.len() >= TOKENS_MAX {
            return Err(bad(
                Reason::Overloaded,
                format!("the cluster holds {TOKENS_MAX} tokens, the most it may; revoke some"),
            ));
        }
        let held = state
            .tokens
            .iter()
            .filter(|(id, t)| t.principal == r.principal && !state.revoked.contains(*id))
            .count();
        if held >= TOKENS_PER_PRINCIPAL_MAX {
            return Err(bad(
                Reason::Overloaded,
                format!(
                    "{} holds {held} tokens, the most one principal may",
                    r.principal
                ),
            ));
        }
        if r.description.len() > 256 {
            return Err(bad(
                Reason::InvalidRequest,
                "a description is at most 256 bytes".into(),
            ));
        }
        let now = wall_ms();
        let id = tokens::new_id();
        let token = tokens::generate(&id);
        let rec = TokenRecord {
            principal: r.principal,
            sha256: tokens::sha256_hex(&token),
            created_ms: now,
            expires_ms: (r.ttl_ms > 0).then(|| now.saturating_add(r.ttl_ms)),
            project,
            roles: r.roles,
            created_by: a.principal.name.clone(),
            description: r.description,
        };
        let json = serde_json::to_string(&rec).map_err(|e| {
            bad(
                Reason::Internal,
                format!("cannot encode the token record: {e}"),
            )
        })?;
        self.edit(MetaOp::PutRecord {
            key: format!("token/{id}"),
            value: json,
        })
        .await?;
        tracing::info!(token = %id, principal = %rec.principal, by = %a.principal.name, "API token created");
        a.audit_ok(
            &token_ns(rec.project.as_deref()),
            &[],
            &format!(
                "token {id} created for {} (roles {}; expires {})",
                rec.principal,
                rec.roles.join(","),
                rec.expires_ms
                    .map_or("never".to_string(), |e| format!("at {e} ms"))
            ),
        );
        let info = info(&id, &rec, &AuthState::default(), now);
        Ok(Response::new(CreateTokenResponse {
            token,
            info: Some(info),
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let a = self.access(&req)?;
        let only = req.into_inner().principal;
        let now = wall_ms();
        let state = a.state();
        let tokens = state
            .tokens
            .iter()
            .filter(|(_, t)| only.is_empty() || t.principal == only)
            .filter(|(_, t)| {
                t.principal == a.principal.name
                    || a.allowed(Action::Grant, token_scope(t.project.as_deref()))
            })
            .map(|(id, t)| info(id, t, state, now))
            .collect();
        Ok(Response::new(ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        req: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        // Revocations work in a cut-off region too: they only take away.
        let a = self.auth.grpc_even_cut_off(&req).map_err(denied)?;
        let id = req.into_inner().id;
        let state = a.state();
        // Unknown and not-yours look the same to a caller who may not see it.
        let Some(t) = state.tokens.get(&id).filter(|t| {
            t.principal == a.principal.name
                || a.allowed(Action::Grant, token_scope(t.project.as_deref()))
        }) else {
            return Err(bad(
                Reason::UnknownToken,
                format!("no token {id:?} that you may revoke"),
            ));
        };
        let principal = t.principal.clone();
        let project = t.project.clone();
        self.edit(MetaOp::PutRecord {
            key: format!("token-revoked/{id}"),
            value: format!("{{\"by\":{:?},\"at_ms\":{}}}", a.principal.name, wall_ms()),
        })
        .await?;
        tracing::info!(token = %id, principal = %principal, by = %a.principal.name, "API token revoked");
        a.audit_ok(
            &token_ns(project.as_deref()),
            &[],
            &format!("token {id} of {principal} revoked"),
        );
        Ok(Response::new(RevokeTokenResponse {}))
    }

    async fn put_role(
        &self,
        req: Request<PutRoleRequest>,
    ) -> Result<Response<PutRoleResponse>, Status> {
        let a = self.granting(&req, Resource::CLUSTER)?;
        let r = req.into_inner();
        let role = crate::auth::Role::parse(&r.name, &r.rules_json)
            .map_err(|e| bad(Reason::BadRole, e))?;
        let json = serde_json::to_string(&role.spec)
            .map_err(|e| bad(Reason::Internal, format!("cannot encode the role: {e}")))?;
        self.edit(MetaOp::PutRecord {
            key: format!("role/{}", r.name),
            value: json,
        })
        .await?;
        tracing::info!(role = %r.name, by = %a.principal.name, "role set");
        a.audit_ok("", &[], &format!("role {} set: {}", r.name, r.rules_json));
        Ok(Response::new(PutRoleResponse {}))
    }

    async fn delete_role(
        &self,
        req: Request<DeleteRoleRequest>,
    ) -> Result<Response<DeleteRoleResponse>, Status> {
        let a = self.granting(&req, Resource::CLUSTER)?;
        let name = req.into_inner().name;
        if name == ROOT_ROLE {
            return Err(bad(Reason::BadRole, "the root role is built in".into()));
        }
        if !a.state().roles.contains_key(&name)
            && !a.state().broken.contains_key(&format!("role/{name}"))
        {
            return Err(bad(Reason::UnknownRole, format!("no role named {name:?}")));
        }
        self.edit(MetaOp::RemoveRecord {
            key: format!("role/{name}"),
        })
        .await?;
        tracing::info!(role = %name, by = %a.principal.name, "role deleted");
        a.audit_ok("", &[], &format!("role {name} deleted"));
        Ok(Response::new(DeleteRoleResponse {}))
    }

    async fn list_roles(
        &self,
        req: Request<ListRolesRequest>,
    ) -> Result<Response<ListRolesResponse>, Status> {
        let a = self.access(&req)?;
        // The built-in role, shown as the rules it amounts to.
        let root = RoleSpec {
            rules: vec![RuleSpec {
                effect: Effect::Allow,
                projects: vec!["*".into()],
                environments: vec!["*".into()],
                keys: vec!["*".into()],
                actions: Action::ALL.to_vec(),
            }],
        };
        let mut roles = vec![RoleInfo {
            name: ROOT_ROLE.into(),
            rules_json: serde_json::to_string(&root).unwrap_or_default(),
            builtin: true,
        }];
        for (name, role) in &a.state().roles {
            roles.push(RoleInfo {
                name: name.clone(),
                rules_json: serde_json::to_string(&role.spec).unwrap_or_default(),
                builtin: false,
            });
        }
        Ok(Response::new(ListRolesResponse { roles }))
    }

    async fn grant_role(
        &self,
        req: Request<GrantRoleRequest>,
    ) -> Result<Response<GrantRoleResponse>, Status> {
        self.role_edit(req, true).await
    }

    async fn revoke_role(
        &self,
        req: Request<GrantRoleRequest>,
    ) -> Result<Response<GrantRoleResponse>, Status> {
        self.role_edit(req, false).await
    }

    async fn list_grants(
        &self,
        req: Request<ListGrantsRequest>,
    ) -> Result<Response<ListGrantsResponse>, Status> {
        let a = self.access(&req)?;
        let only = req.into_inner().principal;
        let grants = a
            .state()
            .grants
            .iter()
            .filter(|(p, _)| only.is_empty() || **p == only)
            .flat_map(|(p, roles)| {
                roles.iter().map(move |r| Grant {
                    principal: p.clone(),
                    role: r.clone(),
                })
            })
            .collect();
        Ok(Response::new(ListGrantsResponse { grants }))
    }
}
