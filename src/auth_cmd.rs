//! `meridian auth ...`: log in (store a credential), who am I, API tokens,
//! roles and grants. The credential of every client command comes from
//! `--token`, else `MERIDIAN_TOKEN`, else the credentials file that `auth
//! login` writes (`$MERIDIAN_CREDENTIALS`, default
//! `$XDG_CONFIG_HOME/meridian/credentials` or `~/.config/meridian/credentials`,
//! mode 0600), as etcdctl and consul read theirs from flags, environment and
//! files.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use meridian_proto::client::{endpoint, AuthChannel, Bearer, ClientTls};
use meridian_proto::v1::auth_client::AuthClient;
use meridian_proto::v1::*;
use serde_json::{json, Value};

use crate::output::{emit, emit_list, status_err, Output};

#[derive(Subcommand)]
pub enum AuthCmd {
    /// Store a credential for later commands (checked against the cluster first).
    Login {
        /// The token; default: read from --token-file, else from stdin.
        #[arg(long)]
        token: Option<String>,
        /// A file holding the token (e.g. meridian-dev/root.token).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Forget the stored credential.
    Logout,
    /// Who the current credential is, and its roles.
    Whoami,
    /// API tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Roles: named lists of allow/deny rules.
    Role {
        #[command(subcommand)]
        cmd: RoleCmd,
    },
    /// Give a principal a role.
    Grant { principal: String, role: String },
    /// Take a role from a principal (wins over a concurrent grant).
    Revoke { principal: String, role: String },
    /// Roles granted to principals.
    Grants {
        #[arg(long, default_value = "")]
        principal: String,
    },
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a token; its secret is printed once and never stored.
    Create {
        #[arg(long)]
        principal: String,
        /// Lifetime: 90s, 45m, 12h, 30d; default: never expires.
        #[arg(long)]
        ttl: Option<String>,
        /// Roles the token carries (comma-separated).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// The one project the token may act in.
        #[arg(long, default_value = "")]
        project: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Tokens you may manage (never their secrets).
    List {
        #[arg(long, default_value = "")]
        principal: String,
    },
    /// Revoke a token by id; refused in every region once synced.
    Revoke { id: String },
}

#[derive(Subcommand)]
pub enum RoleCmd {
    /// Create or replace a role from its JSON rules (docs/auth.md).
    Put {
        name: String,
        /// {"rules": [{"effect": "allow", "projects": [...], "environments": [...],
        /// "keys": [...], "actions": [...]}]}; `@file` reads a file.
        rules: String,
    },
    Delete {
        name: String,
    },
    List,
}

/// Where `auth login` keeps the credential.
pub fn credentials_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("MERIDIAN_CREDENTIALS") {
        return Some(PathBuf::from(p));
    }
    let base = match std::env::var("XDG_CONFIG_HOME") {
        Ok(x) if !x.is_empty() => PathBuf::from(x),
        _ => PathBuf::from(std::env::var("HOME").ok()?).join(".config"),
    };
    Some(base.join("meridian").join("credentials"))
}

/// The credential for client commands: `--token`/`MERIDIAN_TOKEN`, else the
/// stored one, else none.
pub fn resolve_token(flag: Option<&str>) -> Result<Option<String>> {
    if let Some(t) = flag.filter(|t| !t.is_empty()) {
        return Ok(Some(t.trim().to_string()));
    }
    let Some(p) = credentials_path() else {
        return Ok(None);
    };
    match std::fs::read_to_string(&p) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading the credentials file {}", p.display())),
    }
}

pub fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(0o600);
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Where client commands go and with what: the regions' endpoints, the
/// API token and the TLS settings.
pub struct Target {
    pub endpoints: Vec<String>,
    pub token: Option<String>,
    pub tls: Option<ClientTls>,
}

impl Target {
    /// A channel to the first reachable region, carrying the token.
    pub async fn channel(&self) -> Result<AuthChannel> {
        channel(&self.endpoints, self.token.as_deref(), self.tls.as_ref()).await
    }

    /// A channel to the region at `endpoint`, carrying the token (commands
    /// that ask every region in turn).
    pub async fn channel_to(&self, endpoint: &str) -> Result<AuthChannel> {
        channel(
            &[endpoint.to_string()],
            self.token.as_deref(),
            self.tls.as_ref(),
        )
        .await
    }
}

/// A channel to the first reachable region, carrying `token`, over TLS
/// unless an endpoint says http:// (`meridian_proto::client::endpoint`).
pub async fn channel(
    endpoints: &[String],
    token: Option<&str>,
    tls: Option<&ClientTls>,
) -> Result<AuthChannel> {
    let bearer = Bearer::new(token)?;
    let mut last = None;
    for e in endpoints {
        let ep = endpoint(e, tls)?.connect_timeout(std::time::Duration::from_secs(2));
        match ep.connect().await {
            Ok(ch) => return Ok(AuthChannel::new(ch, bearer)),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => {
            Err(e).with_context(|| format!("no region reachable (tried {})", endpoints.join(", ")))
        }
        None => bail!("no endpoints given"),
    }
}

fn token_json(t: &TokenInfo) -> Value {
    json!({
        "id": t.id, "principal": t.principal, "created_ms": t.created_ms,
        "expires_ms": (t.expires_ms > 0).then_some(t.expires_ms),
        "project": (!t.project.is_empty()).then_some(&t.project),
        "roles": t.roles, "created_by": t.created_by,
        "description": t.description, "revoked": t.revoked, "expired": t.expired,
    })
}

pub async fn run(cmd: AuthCmd, target: &Target, out: Output) -> Result<()> {
    if let AuthCmd::Logout = cmd {
        if let Some(p) = credentials_path() {
            match std::fs::remove_file(&p) {
                Ok(()) => println!("removed {}", p.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("not logged in"),
                Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
            }
        }
        return Ok(());
    }
    if let AuthCmd::Login {
        token: t,
        token_file,
    } = cmd
    {
        let t = match (t, token_file) {
            (Some(t), _) => t,
            (None, Some(f)) => {
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?
            }
            (None, None) => {
                let mut s = String::new();
                std::io::stdin().read_line(&mut s)?;
                s
            }
        };
        let t = t.trim().to_string();
        let mut c =
            AuthClient::new(channel(&target.endpoints, Some(&t), target.tls.as_ref()).await?);
        let who = c
            .who_am_i(WhoAmIRequest {})
            .await
            .map_err(status_err)?
            .into_inner();
        let Some(p) = credentials_path() else {
            bail!("no place for the credentials file: set MERIDIAN_CREDENTIALS or HOME");
        };
        write_private(&p, &format!("{t}\n"))?;
        println!(
            "logged in as {} ({}); credential in {} (mode 0600)",
            who.principal,
            who.method,
            p.display()
        );
        return Ok(());
    }
    let mut c = AuthClient::new(target.channel().await?);
    // `grant` and `revoke` differ only in the call and the words.
    let grant = matches!(cmd, AuthCmd::Grant { .. });
    match cmd {
        AuthCmd::Login { .. } | AuthCmd::Logout => Ok(()),
        AuthCmd::Whoami => {
            let w = c
                .who_am_i(WhoAmIRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            let v = json!({
                "principal": w.principal, "method": w.method, "token_id": w.token_id,
                "project": w.project, "roles": w.roles, "auth_enabled": w.auth_enabled,
            });
            emit(out, &v, |_| {
                if !w.auth_enabled {
                    "authentication is off in this region: every caller may do everything\n".into()
                } else {
                    format!(
                        "{} (by {}{}) roles: {}{}\n",
                        w.principal,
                        w.method,
                        if w.token_id.is_empty() {
                            String::new()
                        } else {
                            format!(" token {}", w.token_id)
                        },
                        w.roles.join(", "),
                        if w.project.is_empty() {
                            String::new()
                        } else {
                            format!("; project {} only", w.project)
                        }
                    )
                }
            })
        }
        AuthCmd::Token { cmd } => match cmd {
            TokenCmd::Create {
                principal,
                ttl,
                roles,
                project,
                description,
            } => {
                let ttl_ms = match ttl {
                    None => 0,
                    Some(t) => {
                        meridian_node::auth::tokens::parse_ttl_ms(&t).map_err(anyhow::Error::msg)?
                    }
                };
                let r = c
                    .create_token(CreateTokenRequest {
                        principal,
                        ttl_ms,
                        roles,
                        project,
                        description,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                let info = r.info.unwrap_or_default();
                let mut v = token_json(&info);
                v["token"] = json!(r.token);
                emit(out, &v, |_| {
                    format!(
                        "token {} for {} (shown once; only its hash is stored):\n{}\n",
                        info.id, info.principal, r.token
                    )
                })
            }
            TokenCmd::List { principal } => {
                let r = c
                    .list_tokens(ListTokensRequest { principal })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                let items: Vec<Value> = r.tokens.iter().map(token_json).collect();
                emit_list(out, &json!({ "items": items }), "items", |v: &Value| {
                    let mut s = String::new();
                    for t in v["items"].as_array().into_iter().flatten() {
                        s.push_str(&format!(
                            "{}  {}  roles={}  {}\n",
                            t["id"].as_str().unwrap_or(""),
                            t["principal"].as_str().unwrap_or(""),
                            t["roles"],
                            if t["revoked"] == true {
                                "REVOKED"
                            } else if t["expired"] == true {
                                "EXPIRED"
                            } else {
                                "active"
                            }
                        ));
                    }
                    s
                })
            }
            TokenCmd::Revoke { id } => {
                c.revoke_token(RevokeTokenRequest { id: id.clone() })
                    .await
                    .map_err(status_err)?;
                emit(out, &json!({ "revoked": id }), |_| {
                    format!("revoked token {id}\n")
                })
            }
        },
        AuthCmd::Role { cmd } => match cmd {
            RoleCmd::Put { name, rules } => {
                let rules_json = match rules.strip_prefix('@') {
                    Some(f) => {
                        std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?
                    }
                    None => rules,
                };
                c.put_role(PutRoleRequest {
                    name: name.clone(),
                    rules_json,
                })
                .await
                .map_err(status_err)?;
                emit(out, &json!({ "role": name }), |_| {
                    format!("role {name} set\n")
                })
            }
            RoleCmd::Delete { name } => {
                c.delete_role(DeleteRoleRequest { name: name.clone() })
                    .await
                    .map_err(status_err)?;
                emit(out, &json!({ "deleted": name }), |_| {
                    format!("role {name} deleted\n")
                })
            }
            RoleCmd::List => {
                let r = c
                    .list_roles(ListRolesRequest {})
                    .await
                    .map_err(status_err)?
                    .into_inner();
                let items: Vec<Value> = r
                    .roles
                    .iter()
                    .map(|r| {
                        json!({
                            "name": r.name, "builtin": r.builtin,
                            "rules": serde_json::from_str::<Value>(&r.rules_json).unwrap_or(Value::Null),
                        })
                    })
                    .collect();
                emit_list(out, &json!({ "items": items }), "items", |v: &Value| {
                    let mut s = String::new();
                    for r in v["items"].as_array().into_iter().flatten() {
                        s.push_str(&format!(
                            "{}  {}\n",
                            r["name"].as_str().unwrap_or(""),
                            r["rules"]
                        ));
                    }
                    s
                })
            }
        },
        AuthCmd::Grant { principal, role } | AuthCmd::Revoke { principal, role } => {
            let req = GrantRoleRequest {
                principal: principal.clone(),
                role: role.clone(),
            };
            if grant {
                c.grant_role(req).await.map_err(status_err)?;
            } else {
                c.revoke_role(req).await.map_err(status_err)?;
            }
            emit(
                out,
                &json!({ "principal": principal, "role": role }),
                |_| {
                    if grant {
                        format!("granted {role} to {principal}\n")
                    } else {
                        format!("revoked {role} from {principal}\n")
                    }
                },
            )
        }
        AuthCmd::Grants { principal } => {
            let r = c
                .list_grants(ListGrantsRequest { principal })
                .await
                .map_err(status_err)?
                .into_inner();
            let items: Vec<Value> = r
                .grants
                .iter()
                .map(|g| json!({ "principal": g.principal, "role": g.role }))
                .collect();
            emit_list(out, &json!({ "items": items }), "items", |v: &Value| {
                let mut s = String::new();
                for g in v["items"].as_array().into_iter().flatten() {
                    s.push_str(&format!(
                        "{}  {}\n",
                        g["principal"].as_str().unwrap_or(""),
                        g["role"].as_str().unwrap_or("")
                    ));
                }
                s
            })
        }
    }
}
