//! The configuration API over gRPC (`meridian.v1.Config`) against a real
//! 3-region cluster: every bullet of configuration management and the bad
//! input of each, with the data checked unchanged after every refusal, and a
//! watch of effective values resumed in another region.

// Test helpers fail the test by panicking; that is what unwrap is for here.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{config_client as client, reason, Cluster};
use meridian_proto::v1::*;
use serde_json::{json, Value};

type C = common::ConfigClient;

fn ns(env: &str) -> Option<NamespaceRef> {
    Some(NamespaceRef {
        project: "pay".into(),
        environment: env.into(),
    })
}

fn put(key: &str, v: Value) -> ConfigOp {
    common::put_op(key, &v)
}

async fn write(
    c: &mut C,
    env: &str,
    ops: Vec<ConfigOp>,
) -> Result<ConfigWriteResponse, tonic::Status> {
    c.write(ConfigWriteRequest {
        ns: ns(env),
        ops,
        author: "grpc-test".into(),
        message: "test".into(),
        idempotency_key: String::new(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn get(c: &mut C, env: &str, path: &str, raw: bool) -> Result<Value, tonic::Status> {
    let r = c
        .get_config(GetConfigRequest {
            ns: ns(env),
            path: path.into(),
            read: Some(ConfigReadOptions {
                raw,
                ..Default::default()
            }),
            default_json: None,
        })
        .await?
        .into_inner();
    Ok(serde_json::from_str(&r.value_json).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_config_api_covers_configuration_management() {
    let cl = Cluster::running().await;
    let mut eu = client(&cl.grpc[0]).await;
    let mut us = client(&cl.grpc[1]).await;
    let mut ap = client(&cl.grpc[2]).await;

    // Namespaces.
    for (env, home) in [("base", "eu"), ("prod", "ap")] {
        let i = eu
            .create_namespace(CreateNamespaceRequest {
                project: "pay".into(),
                environment: env.into(),
                home_region: home.into(),
                history_versions_max: 8,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (i.name.as_str(), i.home_region.as_str()),
            (format!("pay/{env}").as_str(), home)
        );
    }
    // Descriptions, owners and labels: replicated metadata, editable in any
    // region; edits of different fields in two regions both survive.
    eu.describe_namespace(DescribeNamespaceRequest {
        ns: ns("prod"),
        description: Some("payments, production".into()),
        owners: vec!["team-pay".into(), "sre".into()],
        set_owners: true,
        ..Default::default()
    })
    .await
    .unwrap();
    ap.describe_namespace(DescribeNamespaceRequest {
        ns: ns("prod"),
        set_labels: [("tier", "1"), ("pci", "yes")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    let described = |n: &NamespaceInfo| {
        let mut labels: Vec<(String, String)> = n
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        (n.description.clone(), n.owners.clone(), labels)
    };
    let want = (
        "payments, production".to_string(),
        vec!["team-pay".to_string(), "sre".to_string()],
        vec![
            ("pci".to_string(), "yes".to_string()),
            ("tier".to_string(), "1".to_string()),
        ],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let l = us
            .list_namespaces(ListNamespacesRequest {
                project: "pay".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let prod = l.namespaces.iter().find(|n| n.name == "pay/prod").unwrap();
        if described(prod) == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "us never saw both edits: {:?}",
            described(prod)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (labels, what) in [
        (vec![("Bad Key", "1")], "a key with a space"),
        (vec![("tier", "-x")], "a value that starts with '-'"),
        (vec![("k", &*"x".repeat(64))], "a value of 64 characters"),
    ] {
        let e = eu
            .describe_namespace(DescribeNamespaceRequest {
                ns: ns("prod"),
                set_labels: labels
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&e), "INVALID_REQUEST", "{what}: {e:?}");
    }
    let e = eu
        .describe_namespace(DescribeNamespaceRequest {
            ns: ns("nope"),
            description: Some("x".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "UNKNOWN_NAMESPACE", "{e:?}");
    // The HTTP API: the same fields, and a null label removes it.
    let http = common::http_client();
    let r: Value = http
        .patch(format!("{}/v1/namespaces/pay/prod", cl.http[1]))
        .json(&json!({"labels": {"pci": null}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["labels"], json!({"tier": "1"}), "{r}");
    assert_eq!(r["owners"], json!(["team-pay", "sre"]), "{r}");
    let r = http
        .patch(format!("{}/v1/namespaces/pay/prod", cl.http[1]))
        .json(&json!({"labels": {"tier": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    let e = us
        .create_namespace(CreateNamespaceRequest {
            project: "pay".into(),
            environment: "base".into(),
            home_region: "us".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (tonic::Code::AlreadyExists, "NAMESPACE_EXISTS")
    );
    let e = us
        .create_namespace(CreateNamespaceRequest {
            project: "Bad Name".into(),
            environment: "x".into(),
            home_region: "us".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "INVALID_REQUEST");
    let l = ap
        .list_namespaces(ListNamespacesRequest {
            project: "pay".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.namespaces.len(), 2);

    // Writes with author and message; subtree reads; templates.
    let vars = ConfigOp {
        op: Some(config_op::Op::SetTemplate(SetTemplateOp {
            inherits: None,
            clear_inherits: false,
            vars_json: Some(json!({"host": "db-base"}).to_string()),
        })),
    };
    let w = write(
        &mut eu,
        "base",
        vec![
            vars,
            put("svc.db.url", json!("pg://${var:host}:${ref:svc.db.port}")),
            put("svc.db.port", json!(5432)),
            put("svc.flags.dark_mode", json!(false)),
        ],
    )
    .await
    .unwrap();
    let r0 = w.revision;
    assert_eq!(w.changes.len(), 4, "{w:?}");
    assert_eq!(
        get(&mut us, "base", "svc", false).await.unwrap(),
        json!({"db": {"url": "pg://db-base:5432", "port": 5432}, "flags": {"dark_mode": false}})
    );
    let inherit = ConfigOp {
        op: Some(config_op::Op::SetTemplate(SetTemplateOp {
            inherits: Some("base".into()),
            clear_inherits: false,
            vars_json: Some(json!({"host": "db-prod"}).to_string()),
        })),
    };
    write(
        &mut ap,
        "prod",
        vec![inherit, put("svc.db.port", json!(6432))],
    )
    .await
    .unwrap();
    assert_eq!(
        get(&mut eu, "prod", "svc.db.url", false).await.unwrap(),
        json!("pg://db-prod:6432")
    );
    assert_eq!(
        get(&mut eu, "prod", "svc", true).await.unwrap(),
        json!({"db": {"port": 6432}})
    );
    let t = eu
        .get_template(ns("prod").unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.inherits, "pay/base");

    // Bad input: each refused with a stable reason, nothing written.
    let before = get(&mut eu, "base", "", true).await.unwrap();
    let bad: Vec<(Vec<ConfigOp>, &str)> = vec![
        (
            vec![put("svc.x", json!("${ref:svc.none}"))],
            "MISSING_REFERENCE",
        ),
        (
            vec![
                put("c.a", json!("${ref:c.b}")),
                put("c.b", json!("${ref:c.a}")),
            ],
            "REFERENCE_CYCLE",
        ),
        (vec![put("svc.db", json!(1))], "PATH_CONFLICT"),
        (vec![put("svc..x", json!(1))], "INVALID_KEY"),
        (
            vec![put("big", json!("y".repeat((1 << 20) + 1)))],
            "VALUE_TOO_LARGE",
        ),
        (
            vec![ConfigOp {
                op: Some(config_op::Op::Put(PutOp {
                    key: "k".into(),
                    value_json: "{oops".into(),
                    if_version: None,
                    secret: None,
                })),
            }],
            "INVALID_JSON",
        ),
        (
            vec![ConfigOp {
                op: Some(config_op::Op::Put(PutOp {
                    key: "svc.db.port".into(),
                    value_json: "1".into(),
                    if_version: Some(99),
                    secret: None,
                })),
            }],
            "CAS_CONFLICT",
        ),
        (
            vec![ConfigOp {
                op: Some(config_op::Op::Patch(JsonPatchOp {
                    path: "svc".into(),
                    patch_json: json!([{"op": "remove", "path": "/nope"}]).to_string(),
                })),
            }],
            "BAD_PATCH",
        ),
        (
            vec![ConfigOp {
                op: Some(config_op::Op::SetSchema(SetSchemaOp {
                    prefix: "svc".into(),
                    schema_json: json!({"type": "nonsense"}).to_string(),
                })),
            }],
            "BAD_SCHEMA",
        ),
        (
            (0..130)
                .map(|i| put(&format!("n.k{i}"), json!(i)))
                .collect(),
            "TOO_MANY_OPS",
        ),
        (vec![ConfigOp { op: None }], "INVALID_REQUEST"),
    ];
    for (ops, want) in bad {
        let e = write(&mut us, "base", ops).await.unwrap_err();
        assert_eq!(reason(&e), want, "{e:?}");
        assert!(
            e.message().starts_with(&format!("[{want}]")),
            "{}",
            e.message()
        );
    }
    let e = write(&mut us, "nope", vec![put("a", json!(1))])
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (tonic::Code::NotFound, "UNKNOWN_NAMESPACE")
    );
    assert_eq!(
        get(&mut eu, "base", "", true).await.unwrap(),
        before,
        "refusals wrote nothing"
    );

    // Schema on the rendered result, in every affected environment.
    let schema = ConfigOp {
        op: Some(config_op::Op::SetSchema(SetSchemaOp {
            prefix: "svc.db".into(),
            schema_json: json!({"type": "object", "properties": {"port": {"type": "integer", "maximum": 9999},
                                                                "url": {"type": "string", "pattern": "^pg://"}}})
                .to_string(),
        })),
    };
    write(&mut eu, "base", vec![schema]).await.unwrap();
    let e = write(&mut ap, "prod", vec![put("svc.db.port", json!(70000))])
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "SCHEMA_VIOLATION");
    let details: Value = serde_json::from_str(
        e.metadata()
            .get("meridian-details")
            .unwrap()
            .to_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(details[0]["environment"], "pay/prod");
    assert_eq!(details[0]["instance_path"], "/port");
    // A template change in base breaks prod's rendered url: refused.
    let e = write(
        &mut eu,
        "base",
        vec![put("svc.db.url", json!("mysql://${var:host}"))],
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&e), "SCHEMA_VIOLATION");
    let v = us
        .validate(ConfigWriteRequest {
            ns: ns("prod"),
            ops: vec![put("svc.db.port", json!(7000))],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v.dry_run && v.changes.len() == 1, "{v:?}");
    assert_eq!(
        get(&mut eu, "prod", "svc.db.port", false).await.unwrap(),
        json!(6432),
        "dry run wrote nothing"
    );

    // Merge patch, CAS, idempotency across regions.
    let merge = ConfigOp {
        op: Some(config_op::Op::Merge(MergeOp {
            path: "svc.flags".into(),
            patch_json: json!({"dark_mode": true, "beta": "on"}).to_string(),
            if_version: None,
            secret: None,
        })),
    };
    write(&mut us, "base", vec![merge]).await.unwrap();
    assert_eq!(
        get(&mut ap, "prod", "svc.flags", false).await.unwrap(),
        json!({"beta": "on", "dark_mode": true})
    );
    let h = us
        .config_history(ConfigHistoryRequest {
            ns: ns("base"),
            key: "svc.flags.dark_mode".into(),
            reveal: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.versions.len(), 2);
    assert_eq!(h.versions[1].author, "grpc-test");
    assert!(h.versions[1].time_ms >= h.versions[0].time_ms);
    let cas = |v: u64| ConfigOp {
        op: Some(config_op::Op::Put(PutOp {
            key: "svc.flags.dark_mode".into(),
            value_json: "false".into(),
            if_version: Some(v),
            secret: None,
        })),
    };
    assert_eq!(
        reason(&write(&mut eu, "base", vec![cas(1)]).await.unwrap_err()),
        "CAS_CONFLICT"
    );
    write(&mut eu, "base", vec![cas(2)]).await.unwrap();
    let idem = |c: &mut C, v: i64| {
        let req = ConfigWriteRequest {
            ns: ns("base"),
            ops: vec![put("deploy.version", json!(v))],
            author: "ci".into(),
            message: "deploy".into(),
            idempotency_key: "build-7".into(),
        };
        let mut c = c.clone();
        async move { c.write(req).await.map(|r| r.into_inner()) }
    };
    let first = idem(&mut eu, 7).await.unwrap();
    let again = idem(&mut ap, 7).await.unwrap();
    assert!(
        again.replayed && again.revision == first.revision,
        "{again:?}"
    );
    assert_eq!(
        again.changes, first.changes,
        "a replay names the keys written"
    );
    for c in [&mut eu, &mut us, &mut ap] {
        let e = idem(c, 8).await.unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_str()),
            (tonic::Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED"),
            "the key reused for another value: {e:?}"
        );
    }
    assert_eq!(
        get(&mut us, "base", "deploy.version", false).await.unwrap(),
        json!(7)
    );

    // Diffs, reads in the past, rollback, bulk get with defaults, listing.
    let d = us
        .diff(DiffRequest {
            ns: ns("prod"),
            what: Some(diff_request::What::Environments(EnvironmentsDiff {
                other_environment: "base".into(),
                path: "svc.db".into(),
                raw: false,
            })),
        })
        .await
        .unwrap()
        .into_inner();
    let paths: Vec<&str> = d.changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, ["/port", "/url"]);
    let d = us
        .diff(DiffRequest {
            ns: ns("base"),
            what: Some(diff_request::What::Versions(VersionsDiff {
                key: "svc.flags.dark_mode".into(),
                from_version: 1,
                to_version: 2,
            })),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            d.changes[0].from_json.as_str(),
            d.changes[0].to_json.as_str()
        ),
        ("false", "true")
    );
    let d = us
        .diff(DiffRequest {
            ns: ns("base"),
            what: Some(diff_request::What::Revisions(RevisionsDiff {
                path: "svc".into(),
                from_revision: r0,
                to_revision: 0,
            })),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.changes.len(), 1, "at revision 0 nothing existed: {d:?}");
    assert_eq!(
        reason(
            &us.diff(DiffRequest {
                ns: ns("base"),
                what: None
            })
            .await
            .unwrap_err()
        ),
        "INVALID_REQUEST"
    );
    let past = eu
        .get_config(GetConfigRequest {
            ns: ns("base"),
            path: "svc.flags".into(),
            read: Some(ConfigReadOptions {
                raw: true,
                revision: r0,
                ..Default::default()
            }),
            default_json: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serde_json::from_str::<Value>(&past.value_json).unwrap(),
        json!({"dark_mode": false})
    );
    let rollback = |allow_delete| RollbackRequest {
        ns: ns("base"),
        key: "svc.flags.beta".into(),
        revision: r0,
        author: "ops".into(),
        message: String::new(),
        allow_delete,
    };
    let e = eu.rollback(rollback(false)).await.unwrap_err();
    assert_eq!(
        reason(&e),
        "ROLLBACK_DELETES",
        "beta did not exist then: {e:?}"
    );
    let rb = eu.rollback(rollback(true)).await.unwrap().into_inner();
    assert_eq!(rb.changes.len(), 1, "{rb:?}");
    assert!(
        rb.warnings.iter().any(|w| w.contains("svc.flags.beta")),
        "{rb:?}"
    );
    assert_eq!(
        (rb.changes[0].op.as_str(), rb.changes[0].version),
        ("delete", 2),
        "beta did not exist then"
    );
    assert_eq!(
        get(&mut us, "base", "svc.flags", true).await.unwrap(),
        json!({"dark_mode": false})
    );
    let g = ap
        .get_config(GetConfigRequest {
            ns: ns("prod"),
            path: "svc.timeout_ms".into(),
            read: None,
            default_json: Some("2500".into()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(g.defaulted && g.value_json == "2500");
    let b = ap
        .bulk_get(BulkGetRequest {
            ns: ns("prod"),
            keys: vec!["svc.db.port".into(), "svc.none".into(), "svc.gone".into()],
            defaults_json: [("svc.none".to_string(), "0".to_string())].into(),
            read: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.values_json["svc.db.port"], "6432");
    assert_eq!(b.values_json["svc.none"], "0");
    assert_eq!(b.missing, ["svc.gone"]);
    let l = us
        .list_config(ListConfigRequest {
            ns: ns("prod"),
            prefix: "svc".into(),
            glob: "svc.db.*".into(),
            search: "db-prod".into(),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.entries.len(), 1);
    assert_eq!(
        (
            l.entries[0].key.as_str(),
            l.entries[0].inherited_from.as_str()
        ),
        ("svc.db.url", "pay/base")
    );

    // Watch effective values by subtree; resume in another region by token.
    let mut w = us
        .watch_config(WatchConfigRequest {
            ns: ns("prod"),
            path: "svc.db".into(),
            raw: false,
            resume_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), w.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.snapshot && first.changes.len() == 2, "{first:?}");
    write(
        &mut eu,
        "base",
        vec![ConfigOp {
            op: Some(config_op::Op::SetTemplate(SetTemplateOp {
                inherits: None,
                clear_inherits: false,
                vars_json: Some(json!({"host": "db-base-2"}).to_string()),
            })),
        }],
    )
    .await
    .unwrap();
    write(&mut ap, "prod", vec![put("svc.db.port", json!(7432))])
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), w.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(ev.changes.is_empty() || !ev.snapshot);
    // base's variable change does not alter prod (prod sets its own host):
    // the first event is prod's port, with the url rendered from it.
    let keys: Vec<(&str, &str)> = ev
        .changes
        .iter()
        .map(|c| (c.key.as_str(), c.value_json.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("svc.db.port", "7432"),
            ("svc.db.url", "\"pg://db-prod:7432\"")
        ],
        "{ev:?}"
    );
    let token = ev.token.clone();
    drop(w);
    write(&mut ap, "prod", vec![put("svc.db.port", json!(8432))])
        .await
        .unwrap();
    let mut w = eu
        .watch_config(WatchConfigRequest {
            ns: ns("prod"),
            path: "svc.db".into(),
            raw: false,
            resume_token: token,
        })
        .await
        .unwrap()
        .into_inner();
    let ev = tokio::time::timeout(Duration::from_secs(10), w.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!ev.snapshot);
    let keys: Vec<(&str, &str)> = ev
        .changes
        .iter()
        .map(|c| (c.key.as_str(), c.value_json.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("svc.db.port", "8432"),
            ("svc.db.url", "\"pg://db-prod:8432\"")
        ]
    );
    let e = eu
        .watch_config(WatchConfigRequest {
            ns: ns("prod"),
            path: "bad..path".into(),
            raw: false,
            resume_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "INVALID_KEY");
}
