//! Feature flags against a real 3-region cluster with auth on: a product
//! manager's path (segment, flag, target, roll-out, kill switch) over the
//! HTTP API and the CLI; OFREP's answers and errors, ETags; inheritance
//! between environments; every permission denied where it should be; every
//! kind of invalid definition refused with nothing changed; and OpenFeature's
//! Python SDK with its OFREP provider (PyPI) giving the same answers as
//! Meridian's own evaluation. Every flags operation of the OpenAPI document
//! is exercised, with responses checked against it.

// Test helpers fail the test by panicking; that is what unwrap is for here.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::openapi::{Api, Body, FLAG_ROUTES};
use common::Cluster;
use meridian_proto::client::AuthChannel;
use meridian_proto::v1::auth_client::AuthClient;
use meridian_proto::v1::config_client::ConfigClient;
use meridian_proto::v1::{CreateNamespaceRequest, CreateTokenRequest, PutRoleRequest};
use serde_json::{json, Value};

async fn chan(addr: &str, token: &str) -> AuthChannel {
    common::auth_chan(addr, token)
}

/// A cluster with auth on; the root token.
async fn auth_cluster() -> (Cluster, String) {
    common::auth_cluster("").await
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

const FLAG: &str = "/v1/flags/{project}/{env}/{key}";
const ACTION: &str = "/v1/flags/{project}/{env}/{key}/{action}";
const LIST: &str = "/v1/flags/{project}/{env}";
const SEGMENT: &str = "/v1/segments/{project}/{env}/{name}";
const OFREP_ONE: &str = "/ofrep/v1/evaluate/flags/{key}";
const OFREP_ALL: &str = "/ofrep/v1/evaluate/flags";
const OFREP_ONE_NS: &str = "/ns/{project}/{env}/ofrep/v1/evaluate/flags/{key}";
const OFREP_ALL_NS: &str = "/ns/{project}/{env}/ofrep/v1/evaluate/flags";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_product_managers_flags_over_http_ofrep_and_the_cli() {
    let (cl, root) = auth_cluster().await;
    let (eu, us) = (cl.http[0].as_str(), cl.http[1].as_str());
    let mut cfg = ConfigClient::new(chan(&cl.grpc[0], &root).await);
    for env in ["prod", "staging"] {
        cfg.create_namespace(CreateNamespaceRequest {
            project: "shop".into(),
            environment: env.into(),
            home_region: "eu".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mut auth = AuthClient::new(chan(&cl.grpc[0], &root).await);
    let mut token = std::collections::BTreeMap::new();
    for (name, actions) in [
        ("pm", json!(["read", "flags"])),
        ("dev", json!(["read", "write", "delete"])),
        ("svc", json!(["read"])),
    ] {
        auth.put_role(PutRoleRequest {
            name: format!("shop-{name}"),
            rules_json:
                json!({"rules": [{"effect": "allow", "projects": ["shop"], "actions": actions}]})
                    .to_string(),
        })
        .await
        .unwrap();
        let t = auth
            .create_token(CreateTokenRequest {
                principal: name.into(),
                roles: vec![format!("shop-{name}")],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        token.insert(name, bearer(&t.token));
    }
    let (pm, dev, svc) = (
        token["pm"].clone(),
        token["dev"].clone(),
        token["svc"].clone(),
    );
    let api = Api::new(eu).await;
    let h = |t: &str| vec![("authorization", t.to_string())];
    let call = |method: &'static str,
                base: &'static str,
                tpl: &'static str,
                url: String,
                t: &str,
                body: Body| {
        let hs = h(t);
        let api = &api;
        async move {
            let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            api.call(method, base, tpl, &url, &hs, body).await
        }
    };
    let eu: &'static str = Box::leak(eu.to_string().into_boxed_str());
    let us: &'static str = Box::leak(us.to_string().into_boxed_str());

    // The product manager: a segment of beta users, a boolean flag, beta
    // users first, then 25 % of everyone.
    let (s, v) = call(
        "put",
        eu,
        SEGMENT,
        "/v1/segments/shop/prod/beta".into(),
        &pm,
        Body::Json(json!({"ends_with": [{"var": "email"}, "@beta.example"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call("put", eu, FLAG, "/v1/flags/shop/prod/new-checkout".into(), &pm,
        Body::Json(json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                          "metadata": {"owner": "payments"}}))).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        "post",
        eu,
        ACTION,
        "/v1/flags/shop/prod/new-checkout/target".into(),
        &pm,
        Body::Json(json!({"segment": "beta", "variant": "on"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        "post",
        eu,
        ACTION,
        "/v1/flags/shop/prod/new-checkout/rollout".into(),
        &pm,
        Body::Json(json!({"percent": 25})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        "get",
        eu,
        FLAG,
        "/v1/flags/shop/prod/new-checkout".into(),
        &svc,
        Body::None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["flag"]["definition"]["targeting"],
        json!({"if": [{"$ref": "beta"}, "on", {"fractional": [["on", 25000], ["off", 75000]]}]}),
        "{v}"
    );
    // A string, a number and an object flag, with targeting.
    for (key, def) in [
        (
            "banner",
            json!({"state": "ENABLED", "variants": {"a": "Welcome", "b": "Hello"}, "defaultVariant": "a",
                          "targeting": {"if": [{"in": [{"var": "country"}, ["CA", "US"]]}, "b", null]}}),
        ),
        (
            "max-items",
            json!({"state": "ENABLED", "variants": {"low": 10, "high": 100}, "defaultVariant": "low",
                             "targeting": {"fractional": [["low", 50], ["high", 50]]}}),
        ),
        (
            "ratio",
            json!({"state": "ENABLED", "variants": {"x": 0.25, "y": 0.75}, "defaultVariant": "y"}),
        ),
        (
            "theme",
            json!({"state": "ENABLED", "variants": {"dark": {"bg": "#000"}, "light": {"bg": "#fff"}},
                         "defaultVariant": "light", "targeting": {"if": [{"$ref": "beta"}, "dark", null]}}),
        ),
    ] {
        let (s, v) = call(
            "put",
            eu,
            FLAG,
            format!("/v1/flags/shop/prod/{key}"),
            &pm,
            Body::Json(def),
        )
        .await;
        assert_eq!(s, 200, "{key}: {v}");
    }

    // OFREP, in another region: the beta user gets on, and 25 % of others.
    let ns_h = |t: &str| {
        vec![
            ("authorization", t.to_string()),
            ("x-meridian-namespace", "shop/prod".to_string()),
        ]
    };
    let ofrep_one = |key: &str, ctx: Value| {
        let hs = ns_h(&svc);
        let api = &api;
        let url = format!("/ofrep/v1/evaluate/flags/{key}");
        async move {
            let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            api.call(
                "post",
                us,
                OFREP_ONE,
                &url,
                &hs,
                Body::Json(json!({"context": ctx})),
            )
            .await
        }
    };
    let (s, v) = ofrep_one(
        "new-checkout",
        json!({"targetingKey": "u-1", "email": "ann@beta.example"}),
    )
    .await;
    assert_eq!(
        (s, &v["value"], &v["reason"], &v["variant"]),
        (200, &json!(true), &json!("TARGETING_MATCH"), &json!("on")),
        "{v}"
    );
    assert_eq!(v["metadata"]["owner"], json!("payments"), "{v}");
    let mut on = 0;
    for i in 0..400 {
        let (s, v) = ofrep_one(
            "new-checkout",
            json!({"targetingKey": format!("user-{i}"), "email": "x@example.com"}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        if v["value"] == json!(true) {
            on += 1;
        }
    }
    assert!((60..=140).contains(&on), "{on} of 400 got a 25 % roll-out");
    // The /ns/ base URL form, and the namespace-less form refused clearly.
    let (s, v) = call(
        "post",
        us,
        OFREP_ONE_NS,
        "/ns/shop/prod/ofrep/v1/evaluate/flags/banner".into(),
        &svc,
        Body::Json(json!({"context": {"country": "CA"}})),
    )
    .await;
    assert_eq!((s, &v["value"]), (200, &json!("Hello")), "{v}");
    let (s, v) = call(
        "post",
        us,
        OFREP_ONE,
        "/ofrep/v1/evaluate/flags/banner".into(),
        &svc,
        Body::Json(json!({})),
    )
    .await;
    assert_eq!((s, &v["errorCode"]), (400, &json!("GENERAL")), "{v}");

    // OFREP's errors.
    let (s, v) = ofrep_one("nope", json!({})).await;
    assert_eq!((s, &v["errorCode"]), (404, &json!("FLAG_NOT_FOUND")), "{v}");
    let (s, v) = ofrep_one("max-items", json!({"plan": "free"})).await;
    assert_eq!(
        (s, &v["errorCode"]),
        (400, &json!("TARGETING_KEY_MISSING")),
        "{v}"
    );
    let (s, v) = ofrep_one("banner", json!({"targetingKey": 42})).await;
    assert_eq!(
        (s, &v["errorCode"]),
        (400, &json!("INVALID_CONTEXT")),
        "{v}"
    );
    let (s, v) = {
        let hs = ns_h(&svc);
        let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        api.call(
            "post",
            us,
            OFREP_ONE,
            "/ofrep/v1/evaluate/flags/banner",
            &hs,
            Body::Json(json!({"context": 5})),
        )
        .await
    };
    assert_eq!(
        (s, &v["errorCode"]),
        (400, &json!("INVALID_CONTEXT")),
        "{v}"
    );
    let (s, _) = {
        let hs: Vec<(&str, &str)> = vec![("x-meridian-namespace", "shop/prod")];
        api.call(
            "post",
            us,
            OFREP_ONE,
            "/ofrep/v1/evaluate/flags/banner",
            &hs,
            Body::Json(json!({})),
        )
        .await
    };
    assert_eq!(s, 401, "no credential");

    // Bulk, with ETag: unchanged answers give 304; a change gives new ones.
    let bulk = |etag: Option<String>| {
        let mut hs = ns_h(&svc);
        if let Some(e) = etag {
            hs.push(("if-none-match", e));
        }
        let http = api.http.clone();
        async move {
            let mut rb = http
                .post(format!("{us}{OFREP_ALL}"))
                .header("content-type", "application/json");
            for (k, v) in &hs {
                rb = rb.header(*k, v.as_str());
            }
            let r = rb
                .body(
                    json!({"context": {"targetingKey": "u-7", "email": "bo@beta.example"}})
                        .to_string(),
                )
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let etag = r
                .headers()
                .get("etag")
                .map(|v| v.to_str().unwrap().to_string());
            let body: Value = if status == 200 {
                r.json().await.unwrap()
            } else {
                Value::Null
            };
            (status, etag, body)
        }
    };
    let (s, etag, body) = bulk(None).await;
    assert_eq!(s, 200);
    assert_eq!(body["flags"].as_array().map(Vec::len), Some(5), "{body}");
    let (s2, ..) = bulk(etag.clone()).await;
    assert_eq!(s2, 304, "same flags, same context");
    // The bulk route through the OpenAPI check too.
    let (s, v) = call(
        "post",
        eu,
        OFREP_ALL_NS,
        "/ns/shop/prod/ofrep/v1/evaluate/flags".into(),
        &svc,
        Body::Json(json!({"context": {"targetingKey": "u-7"}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    {
        let hs = ns_h(&svc);
        let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (s, v) = api
            .call("post", eu, OFREP_ALL, OFREP_ALL, &hs, Body::Json(json!({})))
            .await;
        assert_eq!(s, 200, "{v}");
    }

    // The kill switch: DISABLED everywhere at once, no value.
    let (s, v) = call(
        "post",
        eu,
        ACTION,
        "/v1/flags/shop/prod/new-checkout/disable".into(),
        &pm,
        Body::None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = ofrep_one(
            "new-checkout",
            json!({"targetingKey": "u-1", "email": "ann@beta.example"}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        if v["reason"] == json!("DISABLED") {
            assert!(v.get("value").is_none(), "{v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the kill switch did not reach us: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s3, ..) = bulk(etag).await;
    assert_eq!(
        s3, 200,
        "a disabled flag changes the bulk answer and its ETag"
    );
    let (s, v) = call(
        "post",
        eu,
        ACTION,
        "/v1/flags/shop/prod/new-checkout/enable".into(),
        &pm,
        Body::None,
    )
    .await;
    assert_eq!(s, 200, "{v}");

    // Permissions: flags needs `flags`; evaluation needs only read.
    let def = json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"});
    for (who, t) in [("dev (write, no flags)", &dev), ("svc (read)", &svc)] {
        let (s, v) = call(
            "put",
            eu,
            FLAG,
            "/v1/flags/shop/prod/sneaky".into(),
            t,
            Body::Json(def.clone()),
        )
        .await;
        assert_eq!(
            (s, v["error"]["reason"].as_str()),
            (403, Some("PERMISSION_DENIED")),
            "{who}: {v}"
        );
        let (s, _) = call(
            "post",
            eu,
            ACTION,
            "/v1/flags/shop/prod/new-checkout/disable".into(),
            t,
            Body::None,
        )
        .await;
        assert_eq!(s, 403, "{who} disabled a flag");
        let (s, _) = call(
            "delete",
            eu,
            SEGMENT,
            "/v1/segments/shop/prod/beta".into(),
            t,
            Body::None,
        )
        .await;
        assert_eq!(s, 403, "{who} deleted a segment");
        let (s, _) = call(
            "delete",
            eu,
            FLAG,
            "/v1/flags/shop/prod/banner".into(),
            t,
            Body::None,
        )
        .await;
        assert_eq!(s, 403, "{who} deleted a flag");
    }
    let (s, v) = call(
        "post",
        eu,
        ACTION,
        "/v1/flags/shop/prod/banner/evaluate".into(),
        &svc,
        Body::Json(json!({"context": {"country": "US"}})),
    )
    .await;
    assert_eq!((s, &v["value"]), (200, &json!("Hello")), "{v}");

    // Invalid definitions: each refused with its code, nothing changed.
    let before = call(
        "get",
        eu,
        LIST,
        "/v1/flags/shop/prod".into(),
        &pm,
        Body::None,
    )
    .await
    .1;
    let bad: Vec<(&str, Value, &str)> = vec![
        (
            "unknown default",
            json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "maybe"}),
            "UNKNOWN_VARIANT",
        ),
        (
            "no variants",
            json!({"state": "ENABLED", "variants": {}}),
            "INVALID_DEFINITION",
        ),
        (
            "mixed types",
            json!({"state": "ENABLED", "variants": {"a": true, "b": "x"}}),
            "INVALID_DEFINITION",
        ),
        (
            "unknown operator",
            json!({"state": "ENABLED", "variants": {"on": true}, "targeting": {"regex": ["a", "b"]}}),
            "INVALID_DEFINITION",
        ),
        (
            "bad weights",
            json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "targeting": {"fractional": [["on", 0], ["off", 0]]}}),
            "INVALID_WEIGHTS",
        ),
        (
            "dangling $ref",
            json!({"state": "ENABLED", "variants": {"on": true}, "targeting": {"if": [{"$ref": "gamma"}, "on", null]}}),
            "UNRESOLVED_REF",
        ),
        (
            "prerequisite cycle",
            json!({"state": "ENABLED", "variants": {"on": true}, "prerequisites": [{"flag": "looped", "variants": ["on"]}]}),
            "INVALID_PREREQUISITE",
        ),
        (
            "rule too deep",
            json!({"state": "ENABLED", "variants": {"on": true}, "targeting": (0..40).fold(json!({"var": "x"}), |r, _| json!({"!": [r]}))}),
            "TOO_LARGE",
        ),
    ];
    for (what, def, code) in bad {
        let (s, v) = call(
            "put",
            eu,
            FLAG,
            "/v1/flags/shop/prod/looped".into(),
            &pm,
            Body::Json(def),
        )
        .await;
        assert_eq!(s, 400, "{what}: {v}");
        assert_eq!(v["error"]["reason"], json!("INVALID_FLAG"), "{what}: {v}");
        assert_eq!(v["error"]["details"]["code"], json!(code), "{what}: {v}");
    }
    let (s, v) = call(
        "put",
        eu,
        SEGMENT,
        "/v1/segments/shop/prod/broken".into(),
        &pm,
        Body::Json(json!({"nope": [1]})),
    )
    .await;
    assert_eq!(
        (s, &v["error"]["reason"]),
        (400, &json!("INVALID_FLAG")),
        "{v}"
    );
    let (s, v) = call(
        "delete",
        eu,
        SEGMENT,
        "/v1/segments/shop/prod/beta".into(),
        &pm,
        Body::None,
    )
    .await;
    assert_eq!(
        (s, &v["error"]["details"]["code"]),
        (400, &json!("UNRESOLVED_REF")),
        "a used segment: {v}"
    );
    let after = call(
        "get",
        eu,
        LIST,
        "/v1/flags/shop/prod".into(),
        &pm,
        Body::None,
    )
    .await
    .1;
    assert_eq!(
        before["flags"], after["flags"],
        "refused writes changed flags"
    );
    assert_eq!(before["segments"], after["segments"]);

    // Inheritance: staging inherits prod's flags and segments, overrides one,
    // and prod may not delete a segment staging's own flag uses.
    let mut cfg = ConfigClient::new(chan(&cl.grpc[0], &root).await);
    cfg.write(meridian_proto::v1::ConfigWriteRequest {
        ns: Some(meridian_proto::v1::NamespaceRef {
            project: "shop".into(),
            environment: "staging".into(),
        }),
        ops: vec![meridian_proto::v1::ConfigOp {
            op: Some(meridian_proto::v1::config_op::Op::SetTemplate(
                meridian_proto::v1::SetTemplateOp {
                    inherits: Some("prod".into()),
                    ..Default::default()
                },
            )),
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let (s, v) = call(
        "put",
        eu,
        SEGMENT,
        "/v1/segments/shop/prod/staff".into(),
        &pm,
        Body::Json(json!({"ends_with": [{"var": "email"}, "@shop.example"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call("put", eu, FLAG, "/v1/flags/shop/staging/banner".into(), &pm,
        Body::Json(json!({"state": "ENABLED", "variants": {"a": "Staging!", "b": "Hello"}, "defaultVariant": "a",
                          "targeting": {"if": [{"$ref": "staff"}, "b", null]}}))).await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = call(
        "get",
        eu,
        LIST,
        "/v1/flags/shop/staging".into(),
        &svc,
        Body::None,
    )
    .await;
    let from: Vec<(String, Value)> = v["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["key"].as_str().unwrap().to_string(),
                f["inherited_from"].clone(),
            )
        })
        .collect();
    assert!(from.contains(&("banner".to_string(), Value::Null)), "{v}");
    assert!(
        from.contains(&("theme".to_string(), json!("shop/prod"))),
        "{v}"
    );
    let (s, v) = call(
        "post",
        eu,
        ACTION,
        "/v1/flags/shop/staging/theme/evaluate".into(),
        &svc,
        Body::Json(json!({"context": {"email": "x@beta.example"}})),
    )
    .await;
    assert_eq!(
        (s, &v["variant"]),
        (200, &json!("dark")),
        "inherited flag, inherited segment: {v}"
    );
    let (s, v) = call(
        "delete",
        eu,
        SEGMENT,
        "/v1/segments/shop/prod/staff".into(),
        &pm,
        Body::None,
    )
    .await;
    assert_eq!(s, 400, "staging's flag uses it: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shop/staging"),
        "{v}"
    );
    let (s, v) = call(
        "get",
        eu,
        LIST,
        "/v1/flags/shop/staging?format=flagd".into(),
        &svc,
        Body::None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["flags"]["banner"]["variants"]["a"],
        json!("Staging!"),
        "{v}"
    );
    assert!(v["$evaluators"]["staff"].is_object(), "{v}");

    // Deleting: the staging override goes, prod's shows through again.
    let (s, v) = call(
        "delete",
        eu,
        FLAG,
        "/v1/flags/shop/staging/banner".into(),
        &pm,
        Body::None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        "delete",
        eu,
        SEGMENT,
        "/v1/segments/shop/prod/staff".into(),
        &pm,
        Body::None,
    )
    .await;
    assert_eq!(s, 200, "unused now: {v}");

    // The CLI, as the README's tour: create, target, roll out, evaluate, kill.
    let pm_token = pm.trim_start_matches("Bearer ").to_string();
    let cli = |args: &[&str]| {
        let mut all = vec!["--token", pm_token.as_str()];
        all.extend_from_slice(args);
        common::ok_at(&cl.grpc, &all)
    };
    cli(&["flag", "create", "shop/prod", "dark-mode"]);
    cli(&[
        "flag",
        "target",
        "shop/prod",
        "dark-mode",
        "--segment",
        "beta",
        "--variant",
        "on",
    ]);
    cli(&["flag", "rollout", "shop/prod", "dark-mode", "10%"]);
    let out = cli(&[
        "flag",
        "eval",
        "shop/prod",
        "dark-mode",
        "--context",
        r#"{"targetingKey":"z","email":"a@beta.example"}"#,
    ]);
    assert!(
        out.contains("dark-mode = true") && out.contains("TARGETING_MATCH"),
        "{out}"
    );
    let out = cli(&["flag", "list", "shop/prod"]);
    assert!(out.contains("dark-mode  ENABLED"), "{out}");
    cli(&["flag", "disable", "shop/prod", "dark-mode"]);
    let out = cli(&[
        "flag",
        "eval",
        "shop/prod",
        "dark-mode",
        "--context",
        r#"{"targetingKey":"z"}"#,
    ]);
    assert!(
        out.contains("the caller's default") && out.contains("DISABLED"),
        "{out}"
    );
    let (ok, _, err) = common::cli_at(
        &cl.grpc,
        &[
            "--token",
            dev.trim_start_matches("Bearer "),
            "flag",
            "enable",
            "shop/prod",
            "dark-mode",
        ],
    );
    assert!(!ok && err.contains("PERMISSION_DENIED"), "{err}");

    // Every flags operation of the OpenAPI document was called.
    let left: Vec<String> = api
        .unexercised()
        .into_iter()
        .filter(|op| FLAG_ROUTES.iter().any(|p| op.contains(p)))
        .collect();
    assert!(
        left.is_empty(),
        "flags operations never exercised: {left:?}"
    );

    // OpenFeature's Python SDK with its OFREP provider, both from PyPI: the
    // same answers as Meridian's own evaluation, and a change seen on the
    // next evaluation.
    python_ofrep(&cl, us, &svc, &pm, &api, eu).await;

    // flagd's Python provider in-process (flagd.sync.v1: flags downloaded,
    // evaluated locally, changes pushed), with a token as gRPC call
    // credentials, against another region than the writes go to.
    python_flagd(&cl, "in-process", &svc, &pm, eu).await;
}

/// flagd's Python provider in RPC mode (flagd.evaluation.v1: Resolve* and
/// EventStream). Its RPC resolver (0.5.2) sends no credentials, so this
/// runs against a cluster without auth.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flagds_rpc_provider_evaluates_through_the_evaluation_service() {
    let mut cl = Cluster::running().await;
    let eu_url = cl.http[0].clone();
    let eu = eu_url.as_str();
    let http = common::http_client();
    let r = http
        .post(format!("{eu}/v1/namespaces"))
        .json(&json!({"project": "shop", "environment": "prod", "home_region": "eu"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    let put = |path: String, body: Value| {
        let http = http.clone();
        async move {
            let r = http
                .put(format!("{eu}{path}"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            assert_eq!(s, 200, "{path}: {}", r.text().await.unwrap());
        }
    };
    put(
        "/v1/segments/shop/prod/beta".into(),
        json!({"ends_with": [{"var": "email"}, "@beta.example"]}),
    )
    .await;
    for (key, def) in [
        (
            "new-checkout",
            json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                                "targeting": {"if": [{"$ref": "beta"}, "on", {"fractional": [["on", 25], ["off", 75]]}]}}),
        ),
        (
            "banner",
            json!({"state": "ENABLED", "variants": {"a": "Welcome", "b": "Hello"}, "defaultVariant": "a",
                          "targeting": {"if": [{"in": [{"var": "country"}, ["CA", "US"]]}, "b", null]}}),
        ),
        (
            "theme",
            json!({"state": "ENABLED", "variants": {"dark": {"bg": "#000"}, "light": {"bg": "#fff"}},
                         "defaultVariant": "light", "targeting": {"if": [{"$ref": "beta"}, "dark", null]}}),
        ),
        (
            "max-items",
            json!({"state": "ENABLED", "variants": {"low": 10, "high": 100}, "defaultVariant": "low",
                             "targeting": {"fractional": [["low", 50], ["high", 50]]}}),
        ),
        (
            "dark-mode",
            json!({"state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}),
        ),
    ] {
        put(format!("/v1/flags/shop/prod/{key}"), def).await;
    }
    python_flagd(&cl, "rpc", "-", "-", eu).await;

    // flagd's v1 evaluation and sync services, from their own .proto, and
    // flagd's error codes.
    use meridian_proto::flagd::evaluation::v1 as ev;
    use meridian_proto::flagd::sync::v1 as sync;
    let with_selector = |m: &mut tonic::metadata::MetadataMap| {
        m.insert("flagd-selector", "shop/prod".parse().unwrap());
    };
    let mut e = ev::service_client::ServiceClient::new(common::channel(&cl.grpc[1]).await);
    let struct_of = |pairs: &[(&str, &str)]| prost_types::Struct {
        fields: pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(v.to_string())),
                    },
                )
            })
            .collect(),
    };
    let mut req = tonic::Request::new(ev::ResolveStringRequest {
        flag_key: "banner".into(),
        context: Some(struct_of(&[("country", "CA")])),
    });
    with_selector(req.metadata_mut());
    let r = e.resolve_string(req).await.unwrap().into_inner();
    assert_eq!(
        (r.value.as_str(), r.reason.as_str(), r.variant.as_str()),
        ("Howdy from rpc", "TARGETING_MATCH", "b")
    );
    let mut req = tonic::Request::new(ev::ResolveBooleanRequest {
        flag_key: "banner".into(),
        context: None,
    });
    with_selector(req.metadata_mut());
    assert_eq!(
        e.resolve_boolean(req).await.unwrap_err().code(),
        tonic::Code::InvalidArgument,
        "type mismatch"
    );
    let mut req = tonic::Request::new(ev::ResolveBooleanRequest {
        flag_key: "nope".into(),
        context: None,
    });
    with_selector(req.metadata_mut());
    assert_eq!(
        e.resolve_boolean(req).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    let req = tonic::Request::new(ev::ResolveBooleanRequest {
        flag_key: "banner".into(),
        context: None,
    });
    assert_eq!(
        e.resolve_boolean(req).await.unwrap_err().code(),
        tonic::Code::InvalidArgument,
        "no selector"
    );
    let mut req = tonic::Request::new(ev::ResolveBooleanRequest {
        flag_key: "dark-mode".into(),
        context: None,
    });
    with_selector(req.metadata_mut());
    let r = e.resolve_boolean(req).await.unwrap().into_inner();
    assert_eq!((r.reason.as_str(), r.variant.as_str()), ("DISABLED", ""));
    let mut req = tonic::Request::new(ev::ResolveAllRequest {
        context: Some(struct_of(&[("targetingKey", "k1")])),
    });
    with_selector(req.metadata_mut());
    let all = e.resolve_all(req).await.unwrap().into_inner();
    assert!(
        all.flags.contains_key("banner") && !all.flags.contains_key("dark-mode"),
        "{:?}",
        all.flags.keys()
    );
    let mut s = sync::flag_sync_service_client::FlagSyncServiceClient::new(
        common::channel(&cl.grpc[2]).await,
    );
    let mut req = tonic::Request::new(sync::FetchAllFlagsRequest::default());
    with_selector(req.metadata_mut());
    let doc: Value = serde_json::from_str(
        &s.fetch_all_flags(req)
            .await
            .unwrap()
            .into_inner()
            .flag_configuration,
    )
    .unwrap();
    assert_eq!(
        doc["flags"]["dark-mode"]["state"],
        json!("DISABLED"),
        "{doc}"
    );
    assert!(doc["$evaluators"]["beta"].is_object(), "{doc}");

    rust_client_config(&cl, eu).await;
    rust_client_flags(&mut cl, eu).await;
}

/// `Client::subscribe`: plain configuration read from a watched local copy.
async fn rust_client_config(cl: &Cluster, eu: &str) {
    let http = common::http_client();
    let put = |key: &str, v: Value| {
        let http = http.clone();
        let url = format!("{eu}/v1/config/shop/prod/{key}");
        async move {
            let r = http.put(url).json(&v).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
        }
    };
    put("svc.timeout_ms", json!(250)).await;
    let client = meridian_proto::client::Client::connect(&cl.grpc, common::fast_opts())
        .await
        .unwrap();
    let mut local = client.subscribe("shop/prod", "svc").await.unwrap();
    assert_eq!(local.get("svc.timeout_ms"), Some(json!(250)));
    put("svc.timeout_ms", json!(500)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while local.get("svc.timeout_ms") != Some(json!(500)) {
        assert!(
            Instant::now() < deadline,
            "the change never reached the local copy"
        );
        tokio::time::timeout(Duration::from_secs(10), local.changed())
            .await
            .unwrap()
            .unwrap();
    }
    let e = client.subscribe("shop/nowhere", "").await.err();
    assert!(
        e.is_some_and(|e| e.reason().is_some()),
        "an unknown environment is refused with its reason"
    );
}

/// The Rust client library's local copy: the same answers as the regions,
/// a change pushed, and a restart while the whole cluster is down served
/// from the cache with its revision.
async fn rust_client_flags(cl: &mut Cluster, eu: &str) {
    use meridian_flags::{Context, Expect};
    use meridian_proto::flags::{FlagsOptions, Source};
    let cache = tempfile::tempdir().unwrap();
    let opts = || FlagsOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        startup_wait: Duration::from_secs(5),
        ..FlagsOptions::default()
    };
    let client = meridian_proto::client::Client::connect(&cl.grpc, common::fast_opts())
        .await
        .unwrap();
    let mut flags = client.flags("shop/prod", opts()).await.unwrap();
    assert_eq!(flags.snapshot().source, Source::Live);
    let http = common::http_client();
    let ctx_of = |v: Value| Context::new(v.as_object().cloned().unwrap()).unwrap();
    for i in 0..50 {
        let c = json!({"targetingKey": format!("k{i}"), "email": if i % 7 == 0 { "a@beta.example" } else { "x@example.com" }});
        for key in ["new-checkout", "max-items", "theme", "dark-mode", "banner"] {
            let local = flags.evaluate(key, &ctx_of(c.clone()), Expect::Any);
            let server = meridian_eval(eu, "-", key, &c).await;
            assert_eq!(
                local.value.as_ref(),
                server.get("value"),
                "{key} {c}: {local:?} vs {server}"
            );
            assert_eq!(
                local.variant.as_deref(),
                server["variant"].as_str(),
                "{key} {c}"
            );
            assert_eq!(
                local.reason.as_str(),
                server["reason"].as_str().unwrap(),
                "{key} {c}"
            );
        }
    }
    // A change is pushed: the kill switch, written in eu.
    let r = http
        .post(format!("{eu}/v1/flags/shop/prod/new-checkout/disable"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let started = Instant::now();
    let rev = tokio::time::timeout(Duration::from_secs(10), flags.changed())
        .await
        .expect("pushed")
        .unwrap();
    println!(
        "Rust client: the kill switch arrived after {} ms (revision {rev})",
        started.elapsed().as_millis()
    );
    let c = ctx_of(json!({"targetingKey": "k7", "email": "a@beta.example"}));
    assert_eq!(
        flags.evaluate("new-checkout", &c, Expect::Bool).reason,
        meridian_flags::Reason::Disabled
    );
    assert!(rev > 0, "the copy carries its revision");
    // Every region stops; a service restarting now starts from the cache.
    for i in 0..3 {
        cl.kill9(i);
    }
    let quick = FlagsOptions {
        startup_wait: Duration::from_millis(1500),
        ..opts()
    };
    let client2 = meridian_proto::client::Client::connect(&cl.grpc, common::fast_opts())
        .await
        .unwrap();
    let cached = client2.flags("shop/prod", quick).await.unwrap();
    let snap = cached.snapshot();
    assert_eq!(
        (snap.source, snap.revision),
        (Source::Cache, rev),
        "the last known good copy, with its revision"
    );
    assert_eq!(
        cached.evaluate("new-checkout", &c, Expect::Bool).reason,
        meridian_flags::Reason::Disabled
    );
    assert!(
        cached.bool("no-such-flag", &c, true),
        "an unknown flag gives the default"
    );
    // Without a cache there is nothing to serve: a clear error.
    let none = client2
        .flags(
            "shop/prod",
            FlagsOptions {
                cache_dir: None,
                startup_wait: Duration::from_millis(500),
                ..FlagsOptions::default()
            },
        )
        .await;
    assert!(
        matches!(
            none,
            Err(meridian_proto::client::ClientError::Unavailable(_))
        ),
        "{:?}",
        none.err()
    );
}

/// The requests both flagd modes evaluate, and Meridian's own answers.
async fn flagd_requests(eu: &str, svc: &str) -> (Value, Vec<Value>) {
    let mut requests = vec![
        json!({"type": "boolean", "key": "new-checkout", "default": false, "targetingKey": "u-1", "attrs": {"email": "a@beta.example"}}),
        json!({"type": "string", "key": "banner", "default": "?", "attrs": {"country": "US"}}),
        json!({"type": "object", "key": "theme", "default": {}, "attrs": {"email": "a@beta.example"}}),
        json!({"type": "boolean", "key": "dark-mode", "default": true, "targetingKey": "z"}),
    ];
    for i in 0..30 {
        requests.push(json!({"type": "integer", "key": "max-items", "default": 0, "targetingKey": format!("k{i}")}));
        requests.push(json!({"type": "boolean", "key": "new-checkout", "default": false, "targetingKey": format!("k{i}"), "attrs": {"email": "x@example.com"}}));
    }
    let mut mine = Vec::new();
    for r in &requests {
        let key = r["key"].as_str().unwrap();
        mine.push(meridian_eval(eu, svc, key, &request_context(r)).await);
    }
    (Value::Array(requests), mine)
}

async fn python_flagd(cl: &Cluster, mode: &str, svc: &str, pm: &str, eu: &str) {
    use std::io::{BufRead, Write};
    let (requests, mine) = flagd_requests(eu, svc).await;
    let root = env!("CARGO_MANIFEST_DIR");
    let mut child = Command::new("python3")
        .arg(format!("{root}/tests/python/flagd_check.py"))
        .args([
            mode,
            cl.grpc[2].as_str(),
            svc.trim_start_matches("Bearer "),
            "shop/prod",
        ])
        .arg(common::ca_path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    writeln!(stdin, "{requests}").unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let py: Vec<Value> = match serde_json::from_str(&line) {
        Ok(v) => v,
        Err(e) => {
            drop(stdin);
            let out = child.wait_with_output().unwrap();
            panic!(
                "{mode}: {e}: {line}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        }
    };
    for ((r, p), m) in requests.as_array().unwrap().iter().zip(&py).zip(&mine) {
        let want = m
            .get("value")
            .cloned()
            .unwrap_or_else(|| r["default"].clone());
        assert_eq!(
            p["value"], want,
            "{mode}: python {p} vs meridian {m} for {r}"
        );
        assert_eq!(
            p["variant"], m["variant"],
            "{mode}: python {p} vs meridian {m} for {r}"
        );
    }
    println!(
        "flagd provider ({mode}): {} evaluations agree with Meridian's",
        py.len()
    );
    // A change, written in eu, reaches the provider on us's... region 2.
    let banner = |text: &str| {
        json!({"state": "ENABLED", "variants": {"a": "Welcome", "b": text}, "defaultVariant": "a",
                                     "targeting": {"if": [{"in": [{"var": "country"}, ["CA", "US"]]}, "b", null]}})
    };
    let text = format!("Howdy from {mode}");
    let mut rb = common::http_client().put(format!("{eu}/v1/flags/shop/prod/banner"));
    if pm != "-" {
        rb = rb.header("authorization", pm);
    }
    let r = rb.json(&banner(&text)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    writeln!(stdin, "{}", json!({"type": "string", "key": "banner", "default": "?", "attrs": {"country": "US"}, "expect": text})).unwrap();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    let arrived: Value = serde_json::from_str(&line).unwrap();
    assert!(
        arrived["arrived_ms"].is_u64(),
        "{mode}: the change never arrived: {line}"
    );
    println!(
        "flagd provider ({mode}): the change arrived after {} ms",
        arrived["arrived_ms"]
    );
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Python request's evaluation context: its attributes and targeting key.
fn request_context(r: &Value) -> Value {
    let mut ctx = r["attrs"].clone();
    if ctx.is_null() {
        ctx = json!({});
    }
    if let Some(t) = r["targetingKey"].as_str() {
        ctx["targetingKey"] = json!(t);
    }
    ctx
}

/// Meridian's own evaluation of flag `key` of shop/prod at `eu` (HTTP),
/// with `auth` as the Authorization header ("-": none).
async fn meridian_eval(eu: &str, auth: &str, key: &str, ctx: &Value) -> Value {
    let mut rb = common::http_client().post(format!("{eu}/v1/flags/shop/prod/{key}/evaluate"));
    if auth != "-" {
        rb = rb.header("authorization", auth);
    }
    rb.json(&json!({"context": ctx}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn python_can_run() -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import openfeature.contrib.provider.ofrep"])
        .output();
    let ok = probe.is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "THIS TEST CANNOT RUN: it needs python3 with openfeature-sdk and \
         openfeature-provider-ofrep (scripts/setup.sh installs them)"
    );
    ok
}

fn run_python(base: &str, token: &str, ns: &str, requests: &Value) -> Vec<Value> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut child = Command::new("python3")
        .arg(format!("{root}/tests/python/ofrep_check.py"))
        .args([base, token, ns])
        .env("REQUESTS_CA_BUNDLE", common::ca_path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(requests.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn python_ofrep(cl: &Cluster, us: &str, svc: &str, pm: &str, api: &Api, eu: &'static str) {
    assert!(python_can_run());
    let token = svc.trim_start_matches("Bearer ");
    let mut requests = vec![
        json!({"type": "boolean", "key": "new-checkout", "default": false, "targetingKey": "u-1", "attrs": {"email": "a@beta.example"}}),
        json!({"type": "string", "key": "banner", "default": "?", "attrs": {"country": "CA"}}),
        json!({"type": "string", "key": "banner", "default": "?", "attrs": {"country": "FR"}}),
        json!({"type": "float", "key": "ratio", "default": 0.0}),
        json!({"type": "object", "key": "theme", "default": {}, "attrs": {"email": "a@beta.example"}}),
        json!({"type": "boolean", "key": "dark-mode", "default": true, "targetingKey": "z"}),
        json!({"type": "string", "key": "nope", "default": "fallback"}),
    ];
    for i in 0..40 {
        requests.push(json!({"type": "integer", "key": "max-items", "default": 0, "targetingKey": format!("k{i}")}));
        requests.push(json!({"type": "boolean", "key": "new-checkout", "default": false, "targetingKey": format!("k{i}"), "attrs": {"email": "x@example.com"}}));
    }
    let requests = Value::Array(requests);
    let py = run_python(us, token, "shop/prod", &requests);
    let py_ns = run_python(&format!("{us}/ns/shop/prod"), token, "", &requests);
    assert_eq!(py, py_ns, "both base URL forms answer alike");
    // Meridian's own evaluation of each request.
    for (r, p) in requests.as_array().unwrap().iter().zip(&py) {
        let key = r["key"].as_str().unwrap();
        let mine = meridian_eval(eu, svc, key, &request_context(r)).await;
        if key == "nope" {
            assert_eq!(
                (&p["value"], &p["error_code"]),
                (&json!("fallback"), &json!("FLAG_NOT_FOUND")),
                "{p}"
            );
            continue;
        }
        let want_value = mine
            .get("value")
            .cloned()
            .unwrap_or_else(|| r["default"].clone());
        assert_eq!(
            p["value"], want_value,
            "python {p} vs meridian {mine} for {r}"
        );
        assert_eq!(p["reason"], mine["reason"], "python {p} vs meridian {mine}");
        assert_eq!(
            p["variant"], mine["variant"],
            "python {p} vs meridian {mine}"
        );
    }
    println!(
        "OpenFeature Python SDK + OFREP provider: {} evaluations agree with Meridian's",
        py.len()
    );
    // A change arrives on the next evaluation.
    let (s, v) = api
        .call("put", eu, FLAG, "/v1/flags/shop/prod/ratio", &[("authorization", pm)],
            Body::Json(json!({"state": "ENABLED", "variants": {"x": 0.25, "y": 0.75}, "defaultVariant": "x"})))
        .await;
    assert_eq!(s, 200, "{v}");
    let one = json!([{"type": "float", "key": "ratio", "default": 0.0}]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = run_python(us, token, "shop/prod", &one);
        if p[0]["value"] == json!(0.25) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the change did not reach the SDK: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = cl;
}
