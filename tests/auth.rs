//! Identity and access against a real 3-region cluster with auth on: every
//! Config operation (gRPC and HTTP) and the KV API against each credential
//! (none, another project's, read-only, writer, admin, revoked, expired),
//! with the expected allow or deny and the data unchanged after every deny;
//! reads that leave out what the caller may not read (list, subtree, diff,
//! watch, namespaces); the author of a change is the principal; and a
//! revocation made in one region refused in the others within a bound; and
//! client certificates (mutual TLS) as principals, with TLS refusing clients
//! that do not speak it or present a certificate from another CA.

// Test helpers fail the test by panicking; that is what unwrap is for here.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{reason, Cluster};
use meridian_proto::client::{AuthChannel, Bearer};
use meridian_proto::v1::auth_client::AuthClient;
use meridian_proto::v1::config_client::ConfigClient;
use meridian_proto::v1::kv_client::KvClient;
use meridian_proto::v1::*;
use serde_json::{json, Value};

async fn chan(addr: &str, token: Option<&str>) -> AuthChannel {
    let ch = meridian_proto::client::endpoint(addr, Some(&common::client_tls()))
        .unwrap()
        .connect_lazy();
    AuthChannel::new(ch, Bearer::new(token).unwrap())
}

fn ns(p: &str, e: &str) -> Option<NamespaceRef> {
    Some(NamespaceRef {
        project: p.into(),
        environment: e.into(),
    })
}

fn put(key: &str, v: Value) -> ConfigOp {
    common::put_op(key, &v)
}

fn write_req(p: &str, key: &str, v: Value) -> ConfigWriteRequest {
    ConfigWriteRequest {
        ns: ns(p, "prod"),
        ops: vec![put(key, v)],
        author: "typed-by-the-caller".into(),
        message: "auth test".into(),
        idempotency_key: String::new(),
    }
}

fn get_req(p: &str, path: &str) -> GetConfigRequest {
    GetConfigRequest {
        ns: ns(p, "prod"),
        path: path.into(),
        read: Some(ConfigReadOptions {
            raw: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A running 3-region cluster with auth on, and its root credential.
async fn auth_cluster() -> (Cluster, String) {
    auth_cluster_with("").await
}

/// `auth_cluster`, with `more` appended to the `[auth]` table.
async fn auth_cluster_with(more: &str) -> (Cluster, String) {
    let (cl, _, root) = auth_cluster_in(more, false).await;
    (cl, root)
}

/// `auth_cluster_with`, its peer traffic through `meridian-netlab` if `lab`.
async fn auth_cluster_in(more: &str, lab: bool) -> (Cluster, Option<meridian_netlab::Lab>, String) {
    let root_token = meridian_node::auth::tokens::generate("root");
    let extra = format!(
        "[auth]\nroot_token_sha256 = \"{}\"\n{more}",
        meridian_node::auth::tokens::sha256_hex(&root_token)
    );
    let (mut cl, lab) = if lab {
        let cl = Cluster::behind_lab(&extra);
        let lab = meridian_netlab::Lab::start(cl.lab_regions())
            .await
            .expect("start the network lab");
        (cl, Some(lab))
    } else {
        (Cluster::new(&extra), None)
    };
    cl.start_all();
    ready_as(&cl, 0, &root_token).await;
    (cl, lab, root_token)
}

/// Wait until region `i` sees a leader for every group, asking with the
/// root credential (cluster status needs one).
async fn ready_as(cl: &Cluster, i: usize, root: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut a =
            meridian_proto::v1::admin_client::AdminClient::new(chan(&cl.grpc[i], Some(root)).await);
        if let Ok(s) = a.cluster_status(ClusterStatusRequest {}).await {
            if s.get_ref().groups.iter().all(|g| g.leader.is_some()) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "region {i} not ready:\n{}",
            cl.log(i)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// As root at `addr`: namespace shop/prod (homed in eu) with services.a = 1,
/// and a role `shop-read` that may read project shop.
async fn shop_with_a_reader_role(addr: &str, root: &str) {
    let mut cfg = ConfigClient::new(chan(addr, Some(root)).await);
    cfg.create_namespace(CreateNamespaceRequest {
        project: "shop".into(),
        environment: "prod".into(),
        home_region: "eu".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    cfg.write(write_req("shop", "services.a", json!(1)))
        .await
        .unwrap();
    AuthClient::new(chan(addr, Some(root)).await)
        .put_role(PutRoleRequest {
            name: "shop-read".into(),
            rules_json:
                json!({"rules": [{"effect": "allow", "projects": ["shop"], "actions": ["read"]}]})
                    .to_string(),
        })
        .await
        .unwrap();
}

/// WhoAmI over `channel`: (principal, method, roles).
async fn who<C>(channel: C) -> (String, String, Vec<String>)
where
    C: tonic::client::GrpcService<tonic::body::Body>,
    C::Error: Into<tonic::codegen::StdError>,
    C::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <C::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let w = AuthClient::new(channel)
        .who_am_i(WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    (w.principal, w.method, w.roles)
}

/// What a credential is expected to get: allowed, or refused with a reason.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    Ok,
    No(&'static str),
}
use Want::{No, Ok as Yes};

const CREDS: [&str; 8] = [
    "none", "garbled", "other", "ro", "writer", "admin", "revoked", "expired",
];

/// How each credential fares when it is authenticated but not allowed.
fn denied_for(cred: &str) -> Want {
    match cred {
        "none" | "garbled" => No("UNAUTHENTICATED"),
        "revoked" => No("TOKEN_REVOKED"),
        "expired" => No("TOKEN_EXPIRED"),
        _ => No("PERMISSION_DENIED"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_operation_against_every_credential() {
    let (cl, root_token) = auth_cluster().await;
    let eu = cl.grpc[0].clone();
    let mut root_cfg = ConfigClient::new(chan(&eu, Some(&root_token)).await);
    let mut root_auth = AuthClient::new(chan(&eu, Some(&root_token)).await);
    for p in ["shop", "blog"] {
        root_cfg
            .create_namespace(CreateNamespaceRequest {
                project: p.into(),
                environment: "prod".into(),
                home_region: "eu".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    root_cfg
        .write(write_req("shop", "services.a", json!(1)))
        .await
        .unwrap();
    root_cfg
        .write(write_req("shop", "secrets.k", json!("s1")))
        .await
        .unwrap();
    root_cfg
        .write(write_req("blog", "x", json!(1)))
        .await
        .unwrap();

    let role = |name: &str, rules: Value| PutRoleRequest {
        name: name.into(),
        rules_json: json!({ "rules": rules }).to_string(),
    };
    for r in [
        role(
            "shop-read",
            json!([{"effect": "allow", "projects": ["shop"], "actions": ["read"]}]),
        ),
        role(
            "shop-write",
            json!([
                {"effect": "allow", "projects": ["shop"], "actions": ["read", "write", "delete"]},
                {"effect": "deny", "keys": ["secrets.*"], "actions": ["read", "write", "delete"]}
            ]),
        ),
        role(
            "shop-admin",
            json!([{"effect": "allow", "projects": ["shop"], "actions": ["read", "write", "delete", "admin"]}]),
        ),
        role(
            "blog-all",
            json!([{"effect": "allow", "projects": ["blog"], "actions": ["read", "write", "delete", "admin"]}]),
        ),
    ] {
        root_auth.put_role(r).await.unwrap();
    }
    // Bad roles are refused with BAD_ROLE and change nothing.
    let e = root_auth
        .put_role(role(
            "bad",
            json!([{"effect": "allow", "projects": ["[x"], "actions": ["read"]}]),
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "BAD_ROLE", "{e:?}");
    let e = root_auth
        .create_token(CreateTokenRequest {
            principal: "x".into(),
            roles: vec!["ghost".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "UNKNOWN_ROLE", "{e:?}");

    let mut tokens = std::collections::BTreeMap::new();
    for (cred, principal, roles, ttl_ms) in [
        ("other", "blogger", "blog-all", 0),
        ("ro", "ann", "shop-read", 0),
        ("writer", "bob", "shop-write", 0),
        ("admin", "ada", "shop-admin", 0),
        ("revoked", "rex", "shop-admin", 0),
        ("expired", "old", "shop-admin", 1),
    ] {
        let t = root_auth
            .create_token(CreateTokenRequest {
                principal: principal.into(),
                ttl_ms,
                roles: vec![roles.into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        tokens.insert(cred, (t.token, t.info.unwrap().id));
    }
    root_auth
        .revoke_token(RevokeTokenRequest {
            id: tokens["revoked"].1.clone(),
        })
        .await
        .unwrap();
    tokens.insert("garbled", ("mrd_not-a-token".into(), String::new()));
    let token_of = |cred: &str| tokens.get(cred).map(|t| t.0.clone());

    // The whole raw state both projects hold, as root sees it.
    let snapshot = |mut c: ConfigClient<AuthChannel>| async move {
        let mut out = Vec::new();
        for p in ["shop", "blog"] {
            let r = c.get_config(get_req(p, "")).await.unwrap().into_inner();
            out.push(r.value_json);
        }
        let nss: Vec<(String, String, Vec<String>)> = c
            .list_namespaces(ListNamespacesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .namespaces
            .into_iter()
            .map(|n| (n.name, n.description, n.owners))
            .collect();
        (out, nss)
    };

    type Op = fn(
        ConfigClient<AuthChannel>,
    ) -> futures::future::BoxFuture<'static, Result<(), tonic::Status>>;
    // The credentials allowed, and what they get (the others are denied as
    // `denied_for` says).
    type Expect = (&'static [&'static str], Want);
    let ops: Vec<(&str, Op, Expect)> = vec![
        (
            "get shop value",
            |mut c| {
                Box::pin(async move {
                    c.get_config(get_req("shop", "services.a"))
                        .await
                        .map(|_| ())
                })
            },
            (&["ro", "writer", "admin"], Yes),
        ),
        (
            "describe the shop namespace (metadata)",
            |mut c| {
                Box::pin(async move {
                    c.describe_namespace(DescribeNamespaceRequest {
                        ns: ns("shop", "prod"),
                        description: Some("the shop".into()),
                        owners: vec!["team-shop".into()],
                        set_owners: true,
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                })
            },
            (&["admin"], Yes),
        ),
        (
            "get shop secret (denied by a deny rule)",
            |mut c| {
                Box::pin(
                    async move { c.get_config(get_req("shop", "secrets.k")).await.map(|_| ()) },
                )
            },
            (&["ro", "admin"], Yes),
        ),
        (
            "get a key that does not exist (no existence leak)",
            |mut c| {
                Box::pin(async move {
                    c.get_config(get_req("blog", "nothing.here"))
                        .await
                        .map(|_| ())
                })
            },
            (&["other"], No("NOT_FOUND")),
        ),
        (
            "set shop value",
            |mut c| {
                Box::pin(async move {
                    c.write(write_req("shop", "services.a", json!(2)))
                        .await
                        .map(|_| ())
                })
            },
            (&["writer", "admin"], Yes),
        ),
        (
            "set shop secret",
            |mut c| {
                Box::pin(async move {
                    c.write(write_req("shop", "secrets.k", json!("s2")))
                        .await
                        .map(|_| ())
                })
            },
            (&["admin"], Yes),
        ),
        (
            "delete an absent shop value (allowed callers learn it is absent)",
            |mut c| {
                Box::pin(async move {
                    c.write(ConfigWriteRequest {
                        ns: ns("shop", "prod"),
                        ops: vec![ConfigOp {
                            op: Some(config_op::Op::Delete(DeleteOp {
                                key: "services.gone".into(),
                                recursive: false,
                                if_version: None,
                            })),
                        }],
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                })
            },
            (&["writer", "admin"], No("NOT_FOUND")),
        ),
        (
            "set a schema (admin)",
            |mut c| {
                Box::pin(async move {
                    c.write(ConfigWriteRequest {
                        ns: ns("shop", "prod"),
                        ops: vec![ConfigOp {
                            op: Some(config_op::Op::SetSchema(SetSchemaOp {
                                prefix: "services".into(),
                                schema_json: "{\"type\": \"object\"}".into(),
                            })),
                        }],
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                })
            },
            (&["admin"], Yes),
        ),
        (
            "history of a shop value",
            |mut c| {
                Box::pin(async move {
                    c.config_history(ConfigHistoryRequest {
                        ns: ns("shop", "prod"),
                        key: "services.a".into(),
                        reveal: false,
                    })
                    .await
                    .map(|_| ())
                })
            },
            (&["ro", "writer", "admin"], Yes),
        ),
        (
            "rollback of a shop value",
            |mut c| {
                Box::pin(async move {
                    // Put services.r, then roll it back to revision 1 (before it
                    // existed: a delete). The rollback is tried first on its own, so
                    // a caller that may not roll back is refused by the rollback.
                    let rb = RollbackRequest {
                        ns: ns("shop", "prod"),
                        key: "services.r".into(),
                        revision: 1,
                        allow_delete: true,
                        ..Default::default()
                    };
                    match c.rollback(rb.clone()).await {
                        Err(e) if reason(&e) != "NOT_FOUND" => return Err(e),
                        _ => {}
                    }
                    c.write(write_req("shop", "services.r", json!(1))).await?;
                    c.rollback(rb).await.map(|_| ())
                })
            },
            (&["writer", "admin"], Yes),
        ),
        (
            "create an environment (admin)",
            |mut c| {
                Box::pin(async move {
                    c.create_namespace(CreateNamespaceRequest {
                        project: "shop".into(),
                        environment: "staging".into(),
                        home_region: "us".into(),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                })
            },
            (&["admin"], Yes),
        ),
        (
            "template of shop (namespace read)",
            |mut c| {
                Box::pin(async move {
                    c.get_template(NamespaceRef {
                        project: "shop".into(),
                        environment: "prod".into(),
                    })
                    .await
                    .map(|_| ())
                })
            },
            (&["ro", "writer", "admin"], Yes),
        ),
    ];
    for (name, op, want) in &ops {
        for cred in CREDS {
            let before = snapshot(ConfigClient::new(chan(&eu, Some(&root_token)).await)).await;
            let c = ConfigClient::new(chan(&eu, token_of(cred).as_deref()).await);
            let got = match op(c).await {
                Ok(()) => Yes,
                Err(s) => No(Box::leak(reason(&s).into_boxed_str())),
            };
            let (allowed, when_allowed) = *want;
            let expected = if allowed.contains(&cred) {
                when_allowed
            } else {
                denied_for(cred)
            };
            assert_eq!(got, expected, "{name} as {cred}");
            if got != Yes {
                let after = snapshot(ConfigClient::new(chan(&eu, Some(&root_token)).await)).await;
                assert_eq!(
                    before, after,
                    "{name} as {cred} was refused but changed data"
                );
            }
        }
    }

    // Reads leave out what the caller may not read.
    let mut writer = ConfigClient::new(chan(&eu, token_of("writer").as_deref()).await);
    let whole = writer
        .get_config(get_req("shop", ""))
        .await
        .unwrap()
        .into_inner();
    let v: Value = serde_json::from_str(&whole.value_json).unwrap();
    assert!(
        v.get("services").is_some() && v.get("secrets").is_none(),
        "{v}"
    );
    let list = writer
        .list_config(ListConfigRequest {
            ns: ns("shop", "prod"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!list.entries.is_empty());
    assert!(
        list.entries.iter().all(|e| !e.key.starts_with("secrets")),
        "{:?}",
        list.entries
    );
    let found = writer
        .list_config(ListConfigRequest {
            ns: ns("shop", "prod"),
            search: "s2".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        found.entries.is_empty(),
        "a search matched a secret's value: {:?}",
        found.entries
    );
    let diff = writer
        .diff(DiffRequest {
            ns: ns("shop", "prod"),
            what: Some(diff_request::What::Revisions(RevisionsDiff {
                path: String::new(),
                from_revision: 1,
                to_revision: 0,
            })),
        })
        .await;
    if let Ok(d) = diff {
        assert!(
            !format!("{:?}", d.into_inner()).contains("secrets"),
            "a diff showed a secret"
        );
    }
    let mut other = ConfigClient::new(chan(&eu, token_of("other").as_deref()).await);
    let seen: Vec<String> = other
        .list_namespaces(ListNamespacesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .namespaces
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(seen, vec!["blog/prod".to_string()]);
    // A watch delivers only permitted keys.
    let mut stream = writer
        .watch_config(WatchConfigRequest {
            ns: ns("shop", "prod"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(!first.changes.is_empty());
    assert!(
        first.changes.iter().all(|c| !c.key.starts_with("secrets")),
        "{:?}",
        first.changes
    );
    // The author of a change is the principal, not what the caller typed.
    let h = root_cfg
        .config_history(ConfigHistoryRequest {
            ns: ns("shop", "prod"),
            key: "services.a".into(),
            reveal: false,
        })
        .await
        .unwrap()
        .into_inner();
    let authors: Vec<&str> = h.versions.iter().map(|v| v.author.as_str()).collect();
    assert!(
        authors.contains(&"bob") && !authors.contains(&"typed-by-the-caller"),
        "{authors:?}"
    );

    // The KV API: a KV namespace is a project with an empty environment.
    let mut kv_root = KvClient::new(chan(&eu, Some(&root_token)).await);
    kv_root
        .put(PutRequest {
            namespace: "eu".into(),
            key: "app/a".into(),
            value: b"1".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut kv_admin = KvClient::new(chan(&eu, token_of("admin").as_deref()).await);
    let e = kv_admin
        .get(GetRequest {
            namespace: "eu".into(),
            key: "app/a".into(),
            read: None,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "PERMISSION_DENIED");
    let e = kv_admin
        .put(PutRequest {
            namespace: "eu".into(),
            key: "app/a".into(),
            value: b"2".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "PERMISSION_DENIED");
    let e = KvClient::new(chan(&eu, None).await)
        .get(GetRequest {
            namespace: "eu".into(),
            key: "app/a".into(),
            read: None,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "UNAUTHENTICATED");
    let v = kv_root
        .get(GetRequest {
            namespace: "eu".into(),
            key: "app/a".into(),
            read: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        v.kv.unwrap().value,
        b"1".to_vec(),
        "a refused KV put changed the value"
    );

    // The HTTP API: Bearer or X-API-Key; 401 without, 403 when not allowed.
    let http = common::http_client();
    let url = format!("{}/v1/config/shop/prod/services.a", cl.http[0]);
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(http.get(&url).send().await.unwrap()), 401);
    assert_eq!(
        status(
            http.get(&url)
                .bearer_auth(token_of("ro").unwrap())
                .send()
                .await
                .unwrap()
        ),
        200
    );
    assert_eq!(
        status(
            http.get(&url)
                .header("x-api-key", token_of("ro").unwrap())
                .send()
                .await
                .unwrap()
        ),
        200
    );
    assert_eq!(
        status(
            http.get(&url)
                .bearer_auth(token_of("other").unwrap())
                .send()
                .await
                .unwrap()
        ),
        403
    );
    let r = http
        .put(&url)
        .bearer_auth(token_of("ro").unwrap())
        .json(&json!(9))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["reason"], "PERMISSION_DENIED", "{body}");
    assert_eq!(
        status(
            http.get(&url)
                .bearer_auth(token_of("revoked").unwrap())
                .send()
                .await
                .unwrap()
        ),
        401
    );

    // Token management needs `grant`; a caller may revoke its own token.
    let mut ro_auth = AuthClient::new(chan(&eu, token_of("ro").as_deref()).await);
    let e = ro_auth
        .create_token(CreateTokenRequest {
            principal: "mallory".into(),
            roles: vec!["root".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "PERMISSION_DENIED");
    let e = ro_auth
        .grant_role(GrantRoleRequest {
            principal: "ann".into(),
            role: "shop-admin".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "PERMISSION_DENIED");
    let listed = root_auth
        .list_tokens(ListTokensRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed
        .tokens
        .iter()
        .any(|t| t.revoked && t.principal == "rex"));
    assert!(
        !format!("{listed:?}").contains(&tokens["ro"].0),
        "a listing showed a secret"
    );

    // A grant to a principal gives its tokens the role; revoking takes it away.
    root_auth
        .grant_role(GrantRoleRequest {
            principal: "blogger".into(),
            role: "shop-read".into(),
        })
        .await
        .unwrap();
    other
        .get_config(get_req("shop", "services.a"))
        .await
        .unwrap();
    root_auth
        .revoke_role(GrantRoleRequest {
            principal: "blogger".into(),
            role: "shop-read".into(),
        })
        .await
        .unwrap();
    let e = other
        .get_config(get_req("shop", "services.a"))
        .await
        .unwrap_err();
    assert_eq!(
        reason(&e),
        "PERMISSION_DENIED",
        "refused in the revoking region at once"
    );

    // A token revoked in eu is refused at once there, and in us and ap
    // within the bound (metadata sync between connected regions).
    let t = root_auth
        .create_token(CreateTokenRequest {
            principal: "ci".into(),
            roles: vec!["shop-read".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for addr in &cl.grpc {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut c = ConfigClient::new(chan(addr, Some(&t.token)).await);
        while c.get_config(get_req("shop", "services.a")).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the new token never worked at {addr}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let id = t.info.unwrap().id;
    let revoked_at = Instant::now();
    root_auth
        .revoke_token(RevokeTokenRequest { id })
        .await
        .unwrap();
    let mut c = ConfigClient::new(chan(&eu, Some(&t.token)).await);
    assert_eq!(
        reason(
            &c.get_config(get_req("shop", "services.a"))
                .await
                .unwrap_err()
        ),
        "TOKEN_REVOKED"
    );
    let mut worst = Duration::ZERO;
    for addr in &cl.grpc[1..] {
        let mut c = ConfigClient::new(chan(addr, Some(&t.token)).await);
        loop {
            match c.get_config(get_req("shop", "services.a")).await {
                Err(e) if reason(&e) == "TOKEN_REVOKED" => break,
                _ => {
                    assert!(
                        revoked_at.elapsed() < Duration::from_secs(5),
                        "revocation never reached {addr}"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        worst = worst.max(revoked_at.elapsed());
    }
    println!(
        "revocation refused in every region {} ms after it was acknowledged in eu",
        worst.as_millis()
    );
    assert!(
        worst < Duration::from_secs(1),
        "revocation took {worst:?} to reach every region"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_certificates_are_principals_and_tls_refuses_strangers() {
    let (cl, root_token) = auth_cluster().await;
    let eu = cl.grpc[0].clone();
    shop_with_a_reader_role(&eu, &root_token).await;
    let mut root_auth = AuthClient::new(chan(&eu, Some(&root_token)).await);
    root_auth
        .grant_role(GrantRoleRequest {
            principal: "alice".into(),
            role: "shop-read".into(),
        })
        .await
        .unwrap();

    // alice's certificate (CN alice) makes her alice, with alice's grants:
    // she reads, and may not write. bob's proves bob, who has no grants.
    let alice = common::channel_with(&eu, &common::client_tls_as("alice")).await;
    assert_eq!(
        who(alice.clone()).await,
        (
            "alice".into(),
            "certificate".into(),
            vec!["shop-read".into()]
        )
    );
    let mut alice_cfg = ConfigClient::new(alice);
    let got = alice_cfg
        .get_config(get_req("shop", "services.a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.value_json, "1");
    let e = alice_cfg
        .write(write_req("shop", "services.a", json!(2)))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "PERMISSION_DENIED", "{e:?}");
    let mut bob_cfg =
        ConfigClient::new(common::channel_with(&eu, &common::client_tls_as("bob")).await);
    let e = bob_cfg
        .get_config(get_req("shop", "services.a"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "PERMISSION_DENIED", "{e:?}");
    // TLS without a certificate and without a token: no principal.
    let e = ConfigClient::new(common::channel(&eu).await)
        .get_config(get_req("shop", "services.a"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "UNAUTHENTICATED", "{e:?}");

    // The HTTP API reads the same certificate.
    let url = format!("{}/v1/config/shop/prod/services.a", cl.http[0]);
    let r = common::http_client_with(Some("alice"))
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = common::http_client().get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // Strangers: a client certificate from another CA is refused at the
    // handshake (and logged); a client that does not trust the cluster CA
    // does not get through; plaintext gRPC and HTTP reach nothing.
    let other = cl.dir().join("other-ca");
    let out = std::process::Command::new(common::bin())
        .args(["certs", "--out"])
        .arg(&other)
        .args(["--clients", "alice"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let read = |f: &str| std::fs::read(other.join(f)).unwrap();
    let forged = meridian_proto::client::ClientTls {
        ca_pem: std::fs::read(common::ca_path()).unwrap(),
        identity: Some((read("client-alice.pem"), read("client-alice-key.pem"))),
    };
    let e = ConfigClient::new(
        meridian_proto::client::endpoint(&eu, Some(&forged))
            .unwrap()
            .connect_lazy(),
    )
    .get_config(get_req("shop", "services.a"))
    .await
    .unwrap_err();
    assert_eq!(
        reason(&e),
        "<none>",
        "refused by TLS, not by a handler: {e:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cl.log(0).contains("client TLS handshake failed") {
        assert!(
            Instant::now() < deadline,
            "no handshake failure logged:\n{}",
            cl.log(0)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let distrust = meridian_proto::client::ClientTls {
        ca_pem: read("ca.pem"),
        identity: None,
    };
    let e = meridian_proto::client::endpoint(&eu, Some(&distrust))
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert!(
        format!("{e:?}").contains("InvalidCertificate"),
        "the server's certificate is not trusted: {e:?}"
    );
    let e = ConfigClient::new(
        meridian_proto::client::endpoint(&format!("http://{eu}"), None)
            .unwrap()
            .connect_lazy(),
    )
    .get_config(get_req("shop", "services.a"))
    .await
    .unwrap_err();
    assert_eq!(reason(&e), "<none>", "plaintext gRPC: {e:?}");
    let plain = cl.http[0].replace("https://", "http://");
    assert!(
        common::http_client()
            .get(format!("{plain}/v1/namespaces"))
            .send()
            .await
            .is_err(),
        "plaintext HTTP got an answer"
    );
    // Nothing changed.
    let got = ConfigClient::new(chan(&eu, Some(&root_token)).await)
        .get_config(get_req("shop", "services.a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.value_json, "1");
}

/// An OIDC provider's key set endpoint: answers every request with the
/// current JWKS document (HTTP/1.1, one request per connection) and counts
/// the fetches.
struct JwksServer {
    url: String,
    doc: std::sync::Arc<std::sync::Mutex<String>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn jwks_server(doc: String) -> JwksServer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let doc = std::sync::Arc::new(std::sync::Mutex::new(doc));
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (d, n) = (doc.clone(), fetches.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (d, n) = (d.clone(), n.clone());
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => req.extend_from_slice(&buf[..k]),
                    }
                }
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = d.lock().unwrap().clone();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    JwksServer { url, doc, fetches }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oidc_jwts_are_principals_with_mapped_roles_and_keys_rotate() {
    use meridian_node::auth::oidc::testkit::TestIssuer;
    let k1 = TestIssuer::new("k1");
    let k2 = TestIssuer::new("k2");
    let idp = jwks_server(TestIssuer::jwks(&[&k1])).await;
    let (cl, root_token) = auth_cluster_with(&format!(
        "[auth.oidc]\nissuer = \"https://idp.test\"\naudience = \"meridian\"\n\
         jwks_url = \"{}\"\njwks_refetch_min_s = 1\nroles_claim = \"groups\"\n\
         [auth.oidc.role_map]\nshop-team = [\"shop-read\"]\n",
        idp.url
    ))
    .await;
    let eu = cl.grpc[0].clone();
    shop_with_a_reader_role(&eu, &root_token).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = |aud: &str| json!({"iss": "https://idp.test", "aud": aud, "exp": exp, "sub": "alice", "groups": ["shop-team"]});
    let jwt = k1.sign(&claims("meridian"));

    // Every region verifies it (each fetched the key set at start-up):
    // principal oidc:alice, roles from the groups claim.
    for addr in &cl.grpc {
        assert_eq!(
            who(chan(addr, Some(&jwt)).await).await,
            ("oidc:alice".into(), "jwt".into(), vec!["shop-read".into()]),
            "at {addr}"
        );
    }
    let mut alice = ConfigClient::new(chan(&eu, Some(&jwt)).await);
    assert_eq!(
        alice
            .get_config(get_req("shop", "services.a"))
            .await
            .unwrap()
            .into_inner()
            .value_json,
        "1"
    );
    let e = alice
        .write(write_req("shop", "services.a", json!(2)))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "PERMISSION_DENIED", "{e:?}");
    let r = common::http_client()
        .get(format!("{}/v1/config/shop/prod/services.a", cl.http[0]))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Another audience, or a key the issuer never published: refused.
    let e = ConfigClient::new(chan(&eu, Some(&k1.sign(&claims("other")))).await)
        .get_config(get_req("shop", "services.a"))
        .await
        .unwrap_err();
    assert!(
        reason(&e) == "UNAUTHENTICATED" && e.message().contains("audience"),
        "{e:?}"
    );

    // The key set is cached: many calls, no fetch per call.
    let before = idp.fetches.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..50 {
        alice
            .get_config(get_req("shop", "services.a"))
            .await
            .unwrap();
    }
    let after = idp.fetches.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        after - before <= 1,
        "{} fetches for 50 calls",
        after - before
    );

    // The provider rotates to k2: a token signed by it is refused until
    // the region has fetched the set again (asked for by the unknown key
    // id), then accepted.
    *idp.doc.lock().unwrap() = TestIssuer::jwks(&[&k1, &k2]);
    let jwt2 = k2.sign(&claims("meridian"));
    let mut c2 = ConfigClient::new(chan(&eu, Some(&jwt2)).await);
    let rotated = Instant::now();
    loop {
        match c2.get_config(get_req("shop", "services.a")).await {
            Ok(_) => break,
            Err(e) => {
                assert!(e.message().contains("\"k2\""), "{e:?}");
                assert!(
                    rotated.elapsed() < Duration::from_secs(10),
                    "the rotated key was never fetched"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    println!(
        "a JWT signed by a rotated-in key was accepted {} ms after the rotation",
        rotated.elapsed().as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limits_per_principal_and_failed_logins_per_source() {
    let (cl, root_token) = auth_cluster_with(
        "[rate_limit]\nprincipal_rps = 20\nprincipal_burst = 20\nfailed_auth_burst = 5\nfailed_auth_per_s = 1\n",
    )
    .await;
    let eu = cl.grpc[0].clone();
    let mut root_auth = AuthClient::new(chan(&eu, Some(&root_token)).await);
    let t = root_auth
        .create_token(CreateTokenRequest {
            principal: "ci".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // ci's burst, then RATE_LIMITED with when to retry; root, another
    // principal, is not held up by ci.
    let mut ci = AuthClient::new(chan(&eu, Some(&t.token)).await);
    let mut limited = None;
    for _ in 0..60 {
        if let Err(e) = ci.who_am_i(WhoAmIRequest {}).await {
            limited = Some(e);
            break;
        }
    }
    let e = limited.expect("60 calls at once never hit a 20-request burst");
    assert_eq!(reason(&e), "RATE_LIMITED", "{e:?}");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    let ms: u64 = e
        .metadata()
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("retry-after-ms");
    assert!((1..=1000).contains(&ms), "retry after {ms} ms");
    root_auth.who_am_i(WhoAmIRequest {}).await.unwrap();
    // The HTTP API shares the buckets: 429 with Retry-After (seconds).
    let http = common::http_client();
    let mut got = None;
    for _ in 0..60 {
        let r = http
            .get(format!("{}/v1/namespaces", cl.http[0]))
            .bearer_auth(&t.token)
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 429 {
            got = Some(r);
            break;
        }
    }
    let r = got.expect("no 429 over HTTP");
    assert_eq!(r.headers()["retry-after"], "1");
    // After the wait, ci may call again.
    tokio::time::sleep(Duration::from_millis(ms.max(100))).await;
    ci.who_am_i(WhoAmIRequest {}).await.unwrap();

    // Failed logins from one address: five are answered UNAUTHENTICATED,
    // then the address is refused before its credential is read, even a
    // good one, until the bucket refills (1 per second).
    let mut bad = AuthClient::new(chan(&eu, Some("mrd_0123456789abcdef_nope")).await);
    for _ in 0..5 {
        let e = bad.who_am_i(WhoAmIRequest {}).await.unwrap_err();
        assert_eq!(reason(&e), "UNAUTHENTICATED", "{e:?}");
    }
    let e = bad.who_am_i(WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(reason(&e), "RATE_LIMITED", "{e:?}");
    assert!(e.message().contains("failed authentications"), "{e:?}");
    let e = root_auth.who_am_i(WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(
        reason(&e),
        "RATE_LIMITED",
        "the address is throttled: {e:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while root_auth.who_am_i(WhoAmIRequest {}).await.is_err() {
        assert!(Instant::now() < deadline, "the throttle never lifted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A stale read of shop/prod's services.a (served by the region itself).
fn stale_get() -> GetConfigRequest {
    let mut r = get_req("shop", "services.a");
    r.read.as_mut().unwrap().stale = true;
    r
}

/// Wait (up to `within`) until `addr` answers a stale read with `token`
/// with `want` ("OK" or a reason); how long it took.
async fn until_reads(addr: &str, token: &str, want: &str, within: Duration) -> Duration {
    let start = Instant::now();
    let mut c = ConfigClient::new(chan(addr, Some(token)).await);
    loop {
        let got = match c.get_config(stale_get()).await {
            Ok(_) => "OK".to_string(),
            Err(e) => reason(&e),
        };
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{addr} still answers {got}, not {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocations_cross_a_partition_and_a_cut_off_region_is_bounded() {
    const BOUND_MS: u64 = 2000;
    let (cl, lab, root) =
        auth_cluster_in(&format!("cut_off_deny_after_ms = {BOUND_MS}\n"), true).await;
    let lab = lab.unwrap();
    let (eu, us, ap) = (cl.grpc[0].clone(), cl.grpc[1].clone(), cl.grpc[2].clone());
    shop_with_a_reader_role(&eu, &root).await;
    let mut root_eu = AuthClient::new(chan(&eu, Some(&root)).await);
    let mut tokens = Vec::new();
    for p in ["ci-1", "ci-2"] {
        tokens.push(
            root_eu
                .create_token(CreateTokenRequest {
                    principal: p.into(),
                    roles: vec!["shop-read".into()],
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let (t1, t2) = (tokens[0].token.clone(), tokens[1].token.clone());
    for addr in [&eu, &us, &ap] {
        for t in [&t1, &t2] {
            until_reads(addr, t, "OK", Duration::from_secs(10)).await;
        }
    }

    // ap is cut off. A revocation made in ap is refused there at once,
    // while eu, which has not heard of it, still accepts the token.
    lab.isolate("ap", true).unwrap();
    let isolated = Instant::now();
    AuthClient::new(chan(&ap, Some(&root)).await)
        .revoke_token(RevokeTokenRequest {
            id: tokens[0].info.as_ref().unwrap().id.clone(),
        })
        .await
        .unwrap();
    let mut c = ConfigClient::new(chan(&ap, Some(&t1)).await);
    assert_eq!(
        reason(&c.get_config(stale_get()).await.unwrap_err()),
        "TOKEN_REVOKED"
    );
    // A revocation made in eu cannot reach ap. ap keeps serving t2 with the
    // rights it last saw until it has been cut off for the bound, then
    // refuses every credential but root (UNAVAILABLE), reads included.
    root_eu
        .revoke_token(RevokeTokenRequest {
            id: tokens[1].info.as_ref().unwrap().id.clone(),
        })
        .await
        .unwrap();
    until_reads(&eu, &t2, "TOKEN_REVOKED", Duration::from_secs(1)).await;
    until_reads(&ap, &t2, "UNAVAILABLE", Duration::from_secs(30)).await;
    let cut_off_after = isolated.elapsed();
    assert!(
        cut_off_after >= Duration::from_millis(BOUND_MS),
        "ap refused t2 {cut_off_after:?} after the cut, before the bound"
    );
    println!(
        "ap refused non-root credentials {} ms after it was cut off (bound {BOUND_MS} ms + the time to notice the cut)",
        cut_off_after.as_millis()
    );
    until_reads(&ap, &root, "OK", Duration::from_secs(1)).await;
    until_reads(&eu, &t1, "OK", Duration::from_secs(1)).await;

    // Healed: each revocation reaches the regions that missed it.
    lab.isolate("ap", false).unwrap();
    let healed = Instant::now();
    let t1_eu = until_reads(&eu, &t1, "TOKEN_REVOKED", Duration::from_secs(30)).await;
    let t1_us = until_reads(&us, &t1, "TOKEN_REVOKED", Duration::from_secs(30)).await;
    let t2_ap = until_reads(&ap, &t2, "TOKEN_REVOKED", Duration::from_secs(30)).await;
    println!(
        "after the heal, revocations were refused everywhere {} ms later (eu {} ms, us {} ms, ap {} ms; reconnection included)",
        healed.elapsed().as_millis(),
        t1_eu.as_millis(),
        t1_us.as_millis(),
        t2_ap.as_millis()
    );
    assert!(
        healed.elapsed() < Duration::from_secs(10),
        "revocations took {:?} to cross the healed partition",
        healed.elapsed()
    );
}

/// Every audit record `q` matches at `addr`, following page tokens.
async fn audit_all(addr: &str, token: &str, q: AuditQueryRequest) -> Vec<AuditRecord> {
    let mut client =
        meridian_proto::v1::audit_client::AuditClient::new(chan(addr, Some(token)).await);
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let resp = client
            .query(AuditQueryRequest {
                page_token,
                ..q.clone()
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(resp.records);
        if resp.next_page_token.is_empty() {
            return out;
        }
        page_token = resp.next_page_token;
    }
}

/// Wait (bounded) until the records at `addr` satisfy `done`.
async fn audit_until(
    addr: &str,
    token: &str,
    done: impl Fn(&[AuditRecord]) -> bool,
) -> Vec<AuditRecord> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = audit_all(addr, token, AuditQueryRequest::default()).await;
        if done(&all) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "the audit log never got there; it holds:\n{all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The audit log: a write's record (author, request id, client, keys), a
/// refusal, a failed authentication, token, role and namespace operations;
/// filters and pages; visible only to admins; kept by the other regions
/// when one is lost; and `meridian audit verify` passing on the cluster and
/// failing, naming the record, once a byte of one region's storage changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_log_records_pages_survives_a_region_and_detects_tampering() {
    let (mut cl, root) = auth_cluster().await;
    let (eu, us) = (cl.grpc[0].clone(), cl.grpc[1].clone());
    shop_with_a_reader_role(&eu, &root).await;
    let alice = AuthClient::new(chan(&eu, Some(&root)).await)
        .create_token(CreateTokenRequest {
            principal: "alice".into(),
            roles: vec!["shop-read".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    // A write whose request id marks its record (the tamper target below).
    let mut marked = tonic::Request::new(write_req("shop", "services.marked", json!(2)));
    marked
        .metadata_mut()
        .insert("x-request-id", "tamper-target-0001".parse().unwrap());
    ConfigClient::new(chan(&eu, Some(&root)).await)
        .write(marked)
        .await
        .unwrap();
    let denied = ConfigClient::new(chan(&eu, Some(&alice)).await)
        .write(write_req("shop", "services.a", json!(9)))
        .await
        .unwrap_err();
    assert_eq!(reason(&denied), "PERMISSION_DENIED");
    let garbled = ConfigClient::new(chan(&us, Some("mrd_nope_nope")).await)
        .get_config(get_req("shop", "services"))
        .await
        .unwrap_err();
    assert_eq!(reason(&garbled), "UNAUTHENTICATED");

    // Every kind of record arrives (refusals are batched: wait for them),
    // readable in any region.
    let all = audit_until(&us, &root, |rs| {
        rs.iter()
            .any(|r| r.principal == "alice" && r.result == "PERMISSION_DENIED")
            && rs.iter().any(|r| r.result == "UNAUTHENTICATED")
            && rs.iter().any(|r| r.request_id == "tamper-target-0001")
    })
    .await;
    let write = all
        .iter()
        .find(|r| r.request_id == "tamper-target-0001")
        .unwrap();
    assert_eq!(
        (
            write.principal.as_str(),
            write.method.as_str(),
            write.action.as_str(),
            write.namespace.as_str(),
            write.result.as_str(),
            write.region.as_str(),
            write.group,
        ),
        ("root", "root", "Config.Write", "shop/prod", "OK", "eu", 0),
        "{write:#?}"
    );
    assert!(
        write.keys.iter().any(|k| k.contains("marked")),
        "{write:#?}"
    );
    assert!(write.client.starts_with("127.0.0.1:"), "{write:#?}");
    assert_eq!(write.detail, "auth test", "the change message");
    let refusal = all
        .iter()
        .find(|r| r.principal == "alice" && r.result == "PERMISSION_DENIED")
        .unwrap();
    assert_eq!(
        (
            refusal.method.as_str(),
            refusal.action.as_str(),
            refusal.namespace.as_str()
        ),
        ("token", "Config.Write", "shop/prod"),
        "{refusal:#?}"
    );
    assert!(
        refusal.detail.contains("alice may not write"),
        "{refusal:#?}"
    );
    let unauthenticated = all.iter().find(|r| r.result == "UNAUTHENTICATED").unwrap();
    assert_eq!(
        (unauthenticated.region.as_str(), unauthenticated.group),
        ("us", 1),
        "a refusal goes through the serving region's home group: {unauthenticated:#?}"
    );
    for (action, detail) in [
        ("Config.CreateNamespace", "namespace created"),
        ("Auth.PutRole", "role shop-read set"),
        ("Auth.CreateToken", "created for alice"),
    ] {
        assert!(
            all.iter()
                .any(|r| r.action == action && r.result == "OK" && r.detail.contains(detail)),
            "no {action} record: {all:#?}"
        );
    }

    // Filters.
    let q = |f: AuditQueryRequest| audit_all(&us, &root, f);
    let by_alice = q(AuditQueryRequest {
        principal: "alice".into(),
        ..Default::default()
    })
    .await;
    assert!(!by_alice.is_empty() && by_alice.iter().all(|r| r.principal == "alice"));
    let refusals = q(AuditQueryRequest {
        denied_only: true,
        ..Default::default()
    })
    .await;
    assert!(refusals.len() >= 2 && refusals.iter().all(|r| r.result != "OK"));
    let in_shop = q(AuditQueryRequest {
        namespace: "shop".into(),
        key_prefix: "services.m".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(
        in_shop
            .iter()
            .map(|r| r.request_id.as_str())
            .collect::<Vec<_>>(),
        vec!["tamper-target-0001"]
    );
    let t = write.time_ms;
    let at_write = q(AuditQueryRequest {
        from_ms: t,
        to_ms: t + 1,
        action_prefix: "Config.Write".into(),
        ..Default::default()
    })
    .await;
    assert!(at_write
        .iter()
        .any(|r| r.request_id == "tamper-target-0001"));
    assert!(at_write.iter().all(|r| r.time_ms == t));

    // Pages of two give every record once, as one big page does.
    let snapshot_now = q(AuditQueryRequest {
        to_ms: t + 1,
        ..Default::default()
    })
    .await;
    let paged = q(AuditQueryRequest {
        to_ms: t + 1,
        limit: 2,
        ..Default::default()
    })
    .await;
    let ids = |rs: &[AuditRecord]| {
        let mut v: Vec<(u32, u64)> = rs.iter().map(|r| (r.group, r.seq)).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&paged), ids(&snapshot_now));
    assert_eq!(paged.len(), snapshot_now.len(), "no record twice");
    let bad_token =
        meridian_proto::v1::audit_client::AuditClient::new(chan(&us, Some(&root)).await)
            .query(AuditQueryRequest {
                page_token: "garbage".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
    assert_eq!(reason(&bad_token), "INVALID_REQUEST");

    // Only admins read the log: alice (a reader) sees none of it and may
    // not verify.
    assert!(audit_all(&us, &alice, AuditQueryRequest::default())
        .await
        .is_empty());
    let no = meridian_proto::v1::audit_client::AuditClient::new(chan(&us, Some(&alice)).await)
        .verify(AuditVerifyRequest {})
        .await
        .unwrap_err();
    assert_eq!(reason(&no), "PERMISSION_DENIED");

    // The CLI: list as JSON, and verify every region's chains.
    let listed: Value = serde_json::from_str(&common::ok_at(
        &cl.grpc,
        &[
            "--token",
            &root,
            "audit",
            "list",
            "--principal",
            "alice",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    assert!(listed["records"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["principal"] == "alice"));
    let verified = common::ok_at(&cl.grpc, &["--token", &root, "audit", "verify"]);
    assert!(verified.contains("audit log verified"), "{verified}");

    // Lose eu, the home of group 0: its records are still in us.
    cl.kill9(0);
    let kept = audit_all(
        &us,
        &root,
        AuditQueryRequest {
            group: Some(0),
            ..Default::default()
        },
    )
    .await;
    assert!(kept.iter().any(|r| r.request_id == "tamper-target-0001"));

    // Change one byte of that record in eu's storage (resealing the
    // checksums, as someone who knows the format would), restart eu, and
    // verification fails, naming the record.
    let changed = meridian_node::storage::RocksStorage::tamper_for_test(
        &cl.data_dir(0),
        b"tamper-target-0001",
        b"tamper-target-0002",
    )
    .unwrap();
    assert!(changed > 0, "the record is somewhere in eu's storage");
    cl.start(0);
    ready_as(&cl, 0, &root).await;
    let (ok, out, err) = common::cli_at(&cl.grpc, &["--token", &root, "audit", "verify"]);
    assert!(
        !ok,
        "verification passed over a tampered store:\n{out}\n{err}"
    );
    let named = format!("group 0 record {}", write.seq);
    assert!(
        out.contains(&named) || err.contains(&named),
        "the failure names {named}:\n{out}\n{err}"
    );
}

/// A schema violation never quotes a value the caller may not read: a
/// writer who may not read `hidden.*` references it from a key it may
/// write, under a schema the referenced value breaks; the refusal says
/// where and which keyword, not what the value is. Root, who may read
/// everything, is told the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schema_violations_do_not_quote_values_the_caller_may_not_read() {
    let (cl, root) = auth_cluster().await;
    let eu = cl.grpc[0].clone();
    shop_with_a_reader_role(&eu, &root).await;
    let mut cfg = ConfigClient::new(chan(&eu, Some(&root)).await);
    let schema = ConfigOp {
        op: Some(config_op::Op::SetSchema(SetSchemaOp {
            prefix: "services".into(),
            schema_json: json!({"type": "object", "properties": {"x": {"type": "integer"}}})
                .to_string(),
        })),
    };
    let mut req = write_req("shop", "hidden.key", json!("s3cr3t-value"));
    req.ops.push(schema);
    cfg.write(req).await.unwrap();
    let mut auth = AuthClient::new(chan(&eu, Some(&root)).await);
    auth.put_role(PutRoleRequest {
        name: "svc-writer".into(),
        rules_json: json!({"rules": [
            {"effect": "allow", "projects": ["shop"], "keys": ["services*"], "actions": ["read", "write"]}
        ]})
        .to_string(),
    })
    .await
    .unwrap();
    let writer = auth
        .create_token(CreateTokenRequest {
            principal: "svc".into(),
            roles: vec!["svc-writer".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let probe = write_req("shop", "services.x", json!("${ref:hidden.key}"));
    let e = ConfigClient::new(chan(&eu, Some(&writer)).await)
        .write(probe.clone())
        .await
        .unwrap_err();
    let said = format!("{} {:?}", e.message(), e.details());
    assert_eq!(reason(&e), "SCHEMA_VIOLATION", "{said}");
    assert!(
        !said.contains("s3cr3t"),
        "the refusal leaks the value: {said}"
    );
    assert!(said.contains("/x"), "it still says where: {said}");
    let e = cfg.write(probe).await.unwrap_err();
    assert_eq!(reason(&e), "SCHEMA_VIOLATION");
    assert!(
        e.message().contains("s3cr3t-value"),
        "root may read it all: {}",
        e.message()
    );
}
