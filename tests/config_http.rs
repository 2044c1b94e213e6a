//! The configuration API over HTTP/JSON against a real 3-region cluster:
//! every bullet of configuration management, the bad input of each (with the
//! data checked unchanged afterwards), and every response checked against
//! the OpenAPI document, whose every operation must be exercised.

// Test helpers fail the test by panicking; that is what unwrap is for here.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::openapi::{Api, Body};
use common::Cluster;
use serde_json::{json, Value};

fn reason(v: &Value) -> &str {
    v["error"]["reason"].as_str().unwrap_or("<none>")
}

const CFG: &str = "/v1/config/{project}/{env}/{path}";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_api_covers_configuration_management_and_matches_openapi() {
    let c = Cluster::running().await;
    let (eu, us, ap) = (c.http[0].as_str(), c.http[1].as_str(), c.http[2].as_str());
    let api = Api::new(eu).await;
    let author = [
        ("x-meridian-author", "alice"),
        ("x-meridian-message", "initial"),
    ];

    // --- namespaces: create with home region and mode; bad input ---
    let ns = "/v1/namespaces";
    for (env, home, mode) in [
        ("base", "eu", "quorum"),
        ("prod", "us", "quorum"),
        ("staging", "ap", "async"),
    ] {
        let (s, v) = api
            .call(
                "post",
                eu,
                ns,
                ns,
                &[],
                Body::Json(json!({
                "project": "shop", "environment": env, "home_region": home,
                "mode": mode, "rpo_budget_ms": 5000})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["home_region"], home);
    }
    let (s, v) = api
        .call(
            "post",
            us,
            ns,
            ns,
            &[],
            Body::Json(json!({"project": "shop", "environment": "base", "home_region": "us"})),
        )
        .await;
    assert_eq!((s, reason(&v)), (409, "NAMESPACE_EXISTS"));
    let (s, v) = api
        .call(
            "post",
            eu,
            ns,
            ns,
            &[],
            Body::Json(json!({"project": "shop", "environment": "qa", "home_region": "mars"})),
        )
        .await;
    assert_eq!((s, reason(&v)), (400, "INVALID_REQUEST"));
    assert!(v["error"]["message"].as_str().unwrap().contains("mars"));
    let (s, v) = api
        .call(
            "post",
            eu,
            ns,
            ns,
            &[],
            Body::Raw("application/json", b"{not json".to_vec()),
        )
        .await;
    assert_eq!((s, reason(&v)), (400, "INVALID_JSON"));
    let (s, v) = api
        .call(
            "get",
            us,
            ns,
            "/v1/namespaces?project=shop",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["namespaces"].as_array().unwrap().len(), 3, "{v}");

    // --- templates: variables and inheritance ---
    let tpl = "/v1/template/{project}/{env}";
    let (s, v) = api
        .call(
            "put",
            eu,
            tpl,
            "/v1/template/shop/base",
            &author,
            Body::Json(json!({"vars": {"db_host": "base-db"}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let put = |env: &'static str, key: &'static str, value: Value| {
        let url = format!("/v1/config/shop/{env}/{key}");
        let api = &api;
        async move {
            api.call("put", eu, CFG, &url, &author, Body::Json(value))
                .await
        }
    };
    let (s, v) = put(
        "base",
        "services.payment.database_url",
        json!("pg://${var:db_host}/pay"),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let r_first = v["revision"].as_u64().unwrap();
    assert_eq!(
        put("base", "services.payment.max_connections", json!(100))
            .await
            .0,
        200
    );
    assert_eq!(
        put(
            "base",
            "services.payment.feature_flags.new_checkout",
            json!(true)
        )
        .await
        .0,
        200
    );
    let (s, v) = put(
        "base",
        "services.payment.replica_url",
        json!("${ref:services.payment.database_url}?ro"),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let r_before_prod = v["revision"].as_u64().unwrap();

    // A subtree is one JSON object, rendered; raw on request.
    let (s, v) = api
        .call(
            "get",
            us,
            CFG,
            "/v1/config/shop/base/services.payment",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["value"],
        json!({"database_url": "pg://base-db/pay", "max_connections": 100,
               "feature_flags": {"new_checkout": true}, "replica_url": "pg://base-db/pay?ro"})
    );
    let (_, v) = api
        .call(
            "get",
            eu,
            CFG,
            "/v1/config/shop/base/services.payment.database_url?raw=true",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(v["value"], json!("pg://${var:db_host}/pay"));

    // prod inherits base with its own variable and an override.
    let (s, v) = api
        .call(
            "put",
            eu,
            tpl,
            "/v1/template/shop/prod",
            &author,
            Body::Json(json!({"inherits": "base", "vars": {"db_host": "prod-db"}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        put("prod", "services.payment.max_connections", json!(500))
            .await
            .0,
        200
    );
    let (_, v) = api
        .call(
            "get",
            eu,
            CFG,
            "/v1/config/shop/prod/services.payment",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(
        v["value"],
        json!({"database_url": "pg://prod-db/pay", "max_connections": 500,
               "feature_flags": {"new_checkout": true}, "replica_url": "pg://prod-db/pay?ro"}),
        "prod renders base's templates with prod's variables and overrides"
    );
    let (_, v) = api
        .call(
            "get",
            eu,
            CFG,
            "/v1/config/shop/prod/services.payment?raw=true",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(v["value"], json!({"max_connections": 500}));
    let (s, v) = api
        .call("get", eu, tpl, "/v1/template/shop/prod", &[], Body::None)
        .await;
    assert_eq!((s, v["inherits"].as_str()), (200, Some("shop/base")));

    // Missing references, reference cycles and inheritance cycles are errors
    // that leave the data as it was.
    let (s, v) = put("base", "x.y", json!("${ref:nope}")).await;
    assert_eq!((s, reason(&v)), (422, "MISSING_REFERENCE"), "{v}");
    let (s, v) = put("base", "x.z", json!("${var:nope}")).await;
    assert_eq!((s, reason(&v)), (422, "MISSING_REFERENCE"), "{v}");
    let txn = "/v1/txn/{project}/{env}";
    let (s, v) = api
        .call(
            "post",
            eu,
            txn,
            "/v1/txn/shop/base",
            &author,
            Body::Json(json!({"ops": [
            {"op": "put", "key": "cyc.a", "value": "${ref:cyc.b}"},
            {"op": "put", "key": "cyc.b", "value": "x${ref:cyc.a}"}]})),
        )
        .await;
    assert_eq!((s, reason(&v)), (422, "REFERENCE_CYCLE"), "{v}");
    let (s, v) = api
        .call(
            "put",
            eu,
            tpl,
            "/v1/template/shop/base",
            &author,
            Body::Json(json!({"inherits": "prod"})),
        )
        .await;
    assert_eq!((s, reason(&v)), (422, "REFERENCE_CYCLE"), "{v}");
    let (s, v) = put("base", "bad", json!("${env:HOME}")).await;
    assert_eq!((s, reason(&v)), (400, "BAD_TEMPLATE"), "{v}");
    for k in ["x.y", "x.z", "cyc.a", "bad"] {
        let (s, v) = api
            .call(
                "get",
                eu,
                CFG,
                &format!("/v1/config/shop/base/{k}"),
                &[],
                Body::None,
            )
            .await;
        assert_eq!((s, reason(&v)), (404, "NOT_FOUND"), "{k} must not exist");
    }

    // --- schemas (on the rendered result of every affected environment) ---
    let sch = "/v1/schemas/{project}/{env}";
    let schema = json!({"type": "object", "required": ["database_url"],
        "properties": {"max_connections": {"type": "integer", "maximum": 1000}}});
    let (s, v) = api
        .call(
            "put",
            eu,
            sch,
            "/v1/schemas/shop/base?prefix=services.payment",
            &author,
            Body::Json(schema.clone()),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api
        .call(
            "get",
            eu,
            sch,
            "/v1/schemas/shop/base?prefix=services.payment",
            &[],
            Body::None,
        )
        .await;
    assert_eq!((s, &v["schema"]), (200, &schema));
    let (s, v) = put("prod", "services.payment.max_connections", json!(5000)).await;
    assert_eq!((s, reason(&v)), (422, "SCHEMA_VIOLATION"), "{v}");
    let d = &v["error"]["details"][0];
    assert_eq!(d["environment"], "shop/prod", "{v}");
    assert_eq!(d["instance_path"], "/max_connections");
    assert!(
        d["schema_path"].as_str().unwrap().contains("maximum"),
        "{d}"
    );
    let (s, v) = put("base", "services.payment.max_connections", json!("many")).await;
    assert_eq!((s, reason(&v)), (422, "SCHEMA_VIOLATION"), "{v}");
    let (s, v) = api
        .call(
            "put",
            eu,
            sch,
            "/v1/schemas/shop/base?prefix=services",
            &author,
            Body::Json(json!({"type": 12})),
        )
        .await;
    assert_eq!((s, reason(&v)), (400, "BAD_SCHEMA"), "{v}");
    let (s, v) = api
        .call(
            "put",
            eu,
            sch,
            "/v1/schemas/shop/base?prefix=services.payment.feature_flags",
            &author,
            Body::Json(json!({"type": "object", "required": ["absent_flag"]})),
        )
        .await;
    assert_eq!(
        (s, reason(&v)),
        (422, "SCHEMA_VIOLATION"),
        "a schema the data already breaks is refused: {v}"
    );
    let (s, _) = api
        .call(
            "delete",
            eu,
            sch,
            "/v1/schemas/shop/base?prefix=services.payment.feature_flags",
            &author,
            Body::None,
        )
        .await;
    assert_eq!(s, 404, "the refused schema was never attached");
    // Dry-run validation.
    let val = "/v1/validate/{project}/{env}";
    let (s, v) = api
        .call(
            "post",
            eu,
            val,
            "/v1/validate/shop/prod",
            &[],
            Body::Json(json!({"ops": [
            {"op": "put", "key": "services.payment.max_connections", "value": 2000}]})),
        )
        .await;
    assert_eq!((s, reason(&v)), (422, "SCHEMA_VIOLATION"));
    let (s, v) = api
        .call(
            "post",
            eu,
            val,
            "/v1/validate/shop/prod",
            &[],
            Body::Json(json!({"ops": [
            {"op": "put", "key": "services.payment.max_connections", "value": 900}]})),
        )
        .await;
    assert_eq!((s, &v["valid"]), (200, &json!(true)), "{v}");
    let (_, v) = api
        .call(
            "get",
            eu,
            CFG,
            "/v1/config/shop/prod/services.payment.max_connections",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(
        v["value"],
        json!(500),
        "neither the violation nor the dry run wrote anything"
    );

    // --- merge patch and JSON patch ---
    let (s, v) = api
        .call(
            "patch",
            eu,
            CFG,
            "/v1/config/shop/base/services.payment",
            &author,
            Body::Raw(
                "application/merge-patch+json",
                json!({"feature_flags": {"beta": true, "new_checkout": null}, "timeout_ms": 30})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = api
        .call(
            "get",
            eu,
            CFG,
            "/v1/config/shop/base/services.payment?raw=true",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(v["value"]["feature_flags"], json!({"beta": true}));
    assert_eq!(v["value"]["timeout_ms"], json!(30));
    let jp = |ops: Value| Body::Raw("application/json-patch+json", ops.to_string().into_bytes());
    let (s, v) = api
        .call(
            "patch",
            eu,
            CFG,
            "/v1/config/shop/base/services.payment",
            &author,
            jp(
                json!([{"op": "test", "path": "/max_connections", "value": 100},
                        {"op": "replace", "path": "/max_connections", "value": 200}]),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api
        .call(
            "patch",
            eu,
            CFG,
            "/v1/config/shop/base/services.payment",
            &author,
            jp(
                json!([{"op": "test", "path": "/max_connections", "value": 1},
                        {"op": "replace", "path": "/max_connections", "value": 7}]),
            ),
        )
        .await;
    assert_eq!((s, reason(&v)), (409, "PATCH_TEST_FAILED"), "{v}");
    let (s, v) = api
        .call(
            "patch",
            eu,
            CFG,
            "/v1/config/shop/base/services.payment",
            &author,
            jp(json!([{"op": "frobnicate"}])),
        )
        .await;
    assert_eq!((s, reason(&v)), (400, "BAD_PATCH"), "{v}");
    let (s, v) = api
        .call(
            "patch",
            eu,
            "/v1/config/{project}/{env}",
            "/v1/config/shop/base",
            &author,
            Body::Raw(
                "application/merge-patch+json",
                b"{\"services\": {\"payment\": {\"max_connections\": 9999}}}".to_vec(),
            ),
        )
        .await;
    assert_eq!(
        (s, reason(&v)),
        (422, "SCHEMA_VIOLATION"),
        "a patch is validated too: {v}"
    );
    let (_, v) = api
        .call(
            "get",
            eu,
            CFG,
            "/v1/config/shop/base/services.payment.max_connections",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(v["value"], json!(200));

    // --- malformed JSON, oversized values, bad keys, path conflicts, unknown namespaces ---
    let (s, v) = api
        .call(
            "put",
            eu,
            CFG,
            "/v1/config/shop/base/a.b",
            &author,
            Body::Raw("application/json", b"{\"x\": ".to_vec()),
        )
        .await;
    assert_eq!((s, reason(&v)), (400, "INVALID_JSON"));
    let big = json!("x".repeat((1 << 20) + 10));
    let (s, v) = put("base", "big", big).await;
    assert_eq!((s, reason(&v)), (413, "VALUE_TOO_LARGE"), "{v}");
    let (s, v) = put("base", "bad..key", json!(1)).await;
    assert_eq!((s, reason(&v)), (400, "INVALID_KEY"));
    let long_key = vec!["k".repeat(120); 10].join(".");
    let (s, v) = api
        .call(
            "put",
            eu,
            CFG,
            &format!("/v1/config/shop/base/{long_key}"),
            &author,
            Body::Json(json!(1)),
        )
        .await;
    assert_eq!((s, reason(&v)), (400, "KEY_TOO_LONG"), "{v}");
    let (s, v) = put("base", "services.payment", json!({"x": 1})).await;
    assert_eq!((s, reason(&v)), (400, "PATH_CONFLICT"));
    let (s, v) = put("base", "services.payment.max_connections.deeper", json!(1)).await;
    assert_eq!((s, reason(&v)), (400, "PATH_CONFLICT"));
    let (s, v) = api
        .call("get", eu, CFG, "/v1/config/nope/none/x", &[], Body::None)
        .await;
    assert_eq!((s, reason(&v)), (404, "UNKNOWN_NAMESPACE"));
    let (s, v) = api
        .call(
            "put",
            eu,
            CFG,
            "/v1/config/nope/none/x",
            &author,
            Body::Json(json!(1)),
        )
        .await;
    assert_eq!((s, reason(&v)), (404, "UNKNOWN_NAMESPACE"));
    let many: Vec<Value> = (0..200)
        .map(|i| json!({"op": "put", "key": format!("m.k{i}"), "value": i}))
        .collect();
    let (s, v) = api
        .call(
            "post",
            eu,
            txn,
            "/v1/txn/shop/base",
            &author,
            Body::Json(json!({"ops": many})),
        )
        .await;
    assert_eq!((s, reason(&v)), (400, "TOO_MANY_OPS"));

    // --- compare-and-set, atomic transactions, idempotency ---
    let hist = "/v1/history/{project}/{env}/{key}";
    let (_, h) = api
        .call(
            "get",
            eu,
            hist,
            "/v1/history/shop/base/services.payment.max_connections",
            &[],
            Body::None,
        )
        .await;
    let version = h["versions"].as_array().unwrap().last().unwrap()["version"]
        .as_u64()
        .unwrap();
    let (s, v) = api
        .call(
            "put",
            eu,
            CFG,
            &format!(
                "/v1/config/shop/base/services.payment.max_connections?if_version={}",
                version + 5
            ),
            &author,
            Body::Json(json!(300)),
        )
        .await;
    assert_eq!((s, reason(&v)), (409, "CAS_CONFLICT"));
    assert_eq!(v["error"]["details"]["version"], json!(version));
    let (s, v) = api
        .call(
            "put",
            eu,
            CFG,
            &format!("/v1/config/shop/base/services.payment.max_connections?if_version={version}"),
            &author,
            Body::Json(json!(300)),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api
        .call(
            "post",
            eu,
            txn,
            "/v1/txn/shop/base",
            &author,
            Body::Json(json!({"ops": [
            {"op": "put", "key": "t.a", "value": 1},
            {"op": "put", "key": "t.b", "value": 2, "if_version": 7}]})),
        )
        .await;
    assert_eq!((s, reason(&v)), (409, "CAS_CONFLICT"));
    let (s, _) = api
        .call("get", eu, CFG, "/v1/config/shop/base/t.a", &[], Body::None)
        .await;
    assert_eq!(s, 404, "a failed transaction writes nothing");
    let (s, v) = api
        .call(
            "post",
            eu,
            txn,
            "/v1/txn/shop/base",
            &author,
            Body::Json(json!({"ops": [
            {"op": "put", "key": "t.a", "value": 1},
            {"op": "put", "key": "t.b", "value": 2},
            {"op": "merge", "path": "t", "patch": {"c": 3}}]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let rev = v["revision"].as_u64().unwrap();
    let (_, h) = api
        .call(
            "get",
            eu,
            hist,
            "/v1/history/shop/base/t.c",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(
        h["versions"][0]["revision"],
        json!(rev),
        "all three at one revision"
    );
    let idem = [
        ("idempotency-key", "deploy-42"),
        ("x-meridian-author", "ci"),
    ];
    let (s, first) = api
        .call(
            "put",
            eu,
            CFG,
            "/v1/config/shop/base/release",
            &idem,
            Body::Json(json!("v1")),
        )
        .await;
    assert_eq!(s, 200, "{first}");
    let (s, again) = api
        .call(
            "put",
            us,
            CFG,
            "/v1/config/shop/base/release",
            &idem,
            Body::Json(json!("v1")),
        )
        .await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["replayed"], json!(true));
    assert_eq!(
        again["revision"], first["revision"],
        "the retry (in another region) returns the first result"
    );
    assert_eq!(
        again["changes"], first["changes"],
        "a replay names the keys the first write changed"
    );
    assert_eq!(again["diff"], first["diff"], "and its diff");
    // The key reused for another write, in every region: refused, nothing written.
    for (region, path, body) in [
        (us, "/v1/config/shop/base/release", json!("v2")),
        (ap, "/v1/config/shop/base/release.other", json!("v1")),
        (eu, "/v1/config/shop/base/unrelated", json!(7)),
    ] {
        let (s, v) = api
            .call("put", region, CFG, path, &idem, Body::Json(body))
            .await;
        assert_eq!(
            (s, reason(&v)),
            (422, "IDEMPOTENCY_KEY_REUSED"),
            "{path}: {v}"
        );
    }
    let (s, v) = api
        .call(
            "get",
            eu,
            CFG,
            "/v1/config/shop/base/unrelated",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(
        (s, reason(&v)),
        (404, "NOT_FOUND"),
        "a refused reuse wrote nothing: {v}"
    );
    let (_, v) = api
        .call(
            "get",
            us,
            CFG,
            "/v1/config/shop/base/release",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(v["value"], json!("v1"), "and never writes twice");

    // --- history, diff, reads in the past, rollback ---
    let (s, h) = api
        .call(
            "get",
            us,
            hist,
            "/v1/history/shop/base/services.payment.max_connections",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(s, 200);
    let versions = h["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 3, "{h}");
    assert_eq!(versions[0]["author"], "alice");
    assert_eq!(versions[0]["message"], "initial");
    assert!(versions[0]["time_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(versions[2]["revision"].as_u64() > versions[0]["revision"].as_u64());
    let (s, v) = api
        .call(
            "get",
            us,
            hist,
            "/v1/history/shop/base/never.written",
            &[],
            Body::None,
        )
        .await;
    assert_eq!((s, reason(&v)), (404, "NOT_FOUND"));
    let dv = "/v1/diff/{project}/{env}/{key}";
    let (s, d) = api
        .call(
            "get",
            eu,
            dv,
            "/v1/diff/shop/base/services.payment.max_connections?from_version=1&to_version=3",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        d["changes"],
        json!([{"path": "", "op": "changed", "from": 100, "to": 300}])
    );
    let dr = "/v1/diff/{project}/{env}";
    let (s, d) = api
        .call("get", eu, dr, &format!("/v1/diff/shop/base?from_revision={r_first}&to_revision={r_before_prod}&path=services.payment"), &[], Body::None)
        .await;
    assert_eq!(s, 200);
    let paths: Vec<&str> = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["/feature_flags", "/max_connections", "/replica_url"],
        "{d}"
    );
    let de = "/v1/diff-envs/{project}";
    let (s, d) = api
        .call(
            "get",
            eu,
            de,
            "/v1/diff-envs/shop?from=base&to=prod&path=services.payment",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(s, 200);
    let changed: Vec<&str> = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        changed,
        ["/database_url", "/max_connections", "/replica_url"],
        "{d}"
    );
    let (_, v) = api
        .call(
            "get",
            eu,
            CFG,
            &format!("/v1/config/shop/base/services.payment?raw=true&revision={r_first}"),
            &[],
            Body::None,
        )
        .await;
    assert_eq!(
        v["value"],
        json!({"database_url": "pg://${var:db_host}/pay"})
    );
    // A revision from the future is refused, not answered with today's data
    // (issue 19, item 3), in every region.
    for region in [eu, us] {
        let (s, v) = api
            .call(
                "get",
                region,
                CFG,
                "/v1/config/shop/base/services.payment?revision=18446744073709551615",
                &[],
                Body::None,
            )
            .await;
        assert_eq!((s, reason(&v)), (400, "FUTURE_REVISION"), "{v}");
    }
    let t = versions[0]["time_ms"].as_u64().unwrap();
    let (_, v) = api
        .call(
            "get",
            eu,
            CFG,
            &format!("/v1/config/shop/base/services.payment.max_connections?raw=true&time_ms={t}"),
            &[],
            Body::None,
        )
        .await;
    assert_eq!(v["value"], json!(100));
    let rb = "/v1/rollback/{project}/{env}";
    let (s, v) = api
        .call(
            "post",
            eu,
            rb,
            "/v1/rollback/shop/base",
            &[("x-meridian-author", "bob")],
            Body::Json(
                json!({"key": "services.payment.max_connections", "revision": r_before_prod}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, h) = api
        .call(
            "get",
            us,
            hist,
            "/v1/history/shop/base/services.payment.max_connections",
            &[],
            Body::None,
        )
        .await;
    let last = h["versions"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["value"].clone(), last["version"].clone()),
        (json!(100), json!(4)),
        "a rollback is a new version"
    );
    assert!(
        last["message"].as_str().unwrap().contains("rollback"),
        "{last}"
    );
    assert_eq!(last["author"], "bob");
    let (s, v) = api
        .call(
            "post",
            eu,
            rb,
            "/v1/rollback/shop/base",
            &author,
            Body::Json(json!({"revision": r_before_prod})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = api
        .call(
            "get",
            eu,
            CFG,
            "/v1/config/shop/base/services.payment?raw=true",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(
        v["value"],
        json!({"database_url": "pg://${var:db_host}/pay", "max_connections": 100,
               "feature_flags": {"new_checkout": true}, "replica_url": "${ref:services.payment.database_url}?ro"}),
        "the whole namespace is back to that revision"
    );
    let (s, _) = api
        .call("get", eu, CFG, "/v1/config/shop/base/t.a", &[], Body::None)
        .await;
    assert_eq!(s, 404, "keys created after the revision are gone");
    let (s, v) = api
        .call(
            "post",
            eu,
            rb,
            "/v1/rollback/shop/base",
            &author,
            Body::Json(json!({"revision": "x"})),
        )
        .await;
    assert_eq!((s, reason(&v)), (400, "INVALID_REQUEST"));

    // --- defaults, bulk get, listing with filters and pages, delete ---
    let (s, v) = api
        .call(
            "get",
            eu,
            CFG,
            "/v1/config/shop/prod/services.search.enabled?default=false",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(
        (s, &v["value"], &v["defaulted"]),
        (200, &json!(false), &json!(true))
    );
    let (s, v) = api
        .call(
            "get",
            eu,
            CFG,
            "/v1/config/shop/prod/x?default=%7Bbad",
            &[],
            Body::None,
        )
        .await;
    assert_eq!((s, reason(&v)), (400, "INVALID_JSON"));
    let bulk = "/v1/bulk/{project}/{env}";
    let (s, v) = api
        .call("post", us, bulk, "/v1/bulk/shop/prod", &[], Body::Json(json!({
            "keys": ["services.payment.max_connections", "services.payment.feature_flags", "nope.a", "nope.b"],
            "defaults": {"nope.a": 1}})))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["values"]["services.payment.max_connections"], json!(500));
    assert_eq!(
        v["values"]["services.payment.feature_flags"],
        json!({"new_checkout": true})
    );
    assert_eq!(v["values"]["nope.a"], json!(1));
    assert_eq!(v["missing"], json!(["nope.b"]));
    let list = "/v1/list/{project}/{env}";
    let (s, v) = api
        .call(
            "get",
            eu,
            list,
            "/v1/list/shop/prod?prefix=services&glob=services.*.*_url",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(s, 200);
    let keys: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "services.payment.database_url",
            "services.payment.replica_url"
        ]
    );
    assert_eq!(v["entries"][0]["inherited_from"], "shop/base");
    assert_eq!(
        v["entries"][0]["value"], "pg://prod-db/pay",
        "listing shows effective values"
    );
    let (_, v) = api
        .call(
            "get",
            eu,
            list,
            "/v1/list/shop/prod?search=prod-db%2Fpay%3Fro",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(v["entries"].as_array().unwrap().len(), 1, "{v}");
    let (_, p1) = api
        .call(
            "get",
            eu,
            list,
            "/v1/list/shop/prod?limit=2",
            &[],
            Body::None,
        )
        .await;
    let next = p1["next_page_token"].as_str().unwrap().to_string();
    assert!(!next.is_empty());
    let (_, p2) = api
        .call(
            "get",
            eu,
            list,
            &format!("/v1/list/shop/prod?limit=2&page_token={next}"),
            &[],
            Body::None,
        )
        .await;
    assert!(p2["entries"][0]["key"].as_str().unwrap() > next.as_str());
    let (s, v) = api
        .call(
            "get",
            eu,
            list,
            "/v1/list/shop/prod?glob=%5B",
            &[],
            Body::None,
        )
        .await;
    assert_eq!((s, reason(&v)), (400, "INVALID_REQUEST"));
    let (s, v) = api
        .call(
            "delete",
            eu,
            CFG,
            "/v1/config/shop/base/services",
            &author,
            Body::None,
        )
        .await;
    assert_eq!(
        (s, reason(&v)),
        (404, "NOT_FOUND"),
        "a subtree needs recursive=true"
    );
    // A key that never existed: 404, and no history is made (issue 19, item 2).
    let (s, v) = api
        .call(
            "delete",
            us,
            CFG,
            "/v1/config/shop/base/never.existed",
            &author,
            Body::None,
        )
        .await;
    assert_eq!((s, reason(&v)), (404, "NOT_FOUND"), "{v}");
    let (s, v) = api
        .call(
            "get",
            ap,
            "/v1/history/{project}/{env}/{key}",
            "/v1/history/shop/base/never.existed",
            &[],
            Body::None,
        )
        .await;
    assert!(
        s == 404 || v["versions"].as_array().is_some_and(Vec::is_empty),
        "no history for a key never written: {s} {v}"
    );
    let (s, v) = api
        .call(
            "delete",
            eu,
            CFG,
            "/v1/config/shop/base/services.payment.feature_flags?recursive=true",
            &author,
            Body::None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = api
        .call(
            "get",
            eu,
            CFG,
            "/v1/config/shop/prod/services.payment.feature_flags",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(s, 404, "prod no longer inherits the deleted flags");

    // --- retention by count, per namespace ---
    let (s, _) = api
        .call("post", eu, ns, ns, &[], Body::Json(json!({"project": "shop", "environment": "short", "home_region": "ap", "history_versions_max": 2})))
        .await;
    assert_eq!(s, 201);
    for i in 0..4 {
        let url = "/v1/config/shop/short/k".to_string();
        let (s, v) = api
            .call("put", eu, CFG, &url, &author, Body::Json(json!(i)))
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let (_, h) = api
        .call("get", eu, hist, "/v1/history/shop/short/k", &[], Body::None)
        .await;
    let kept: Vec<u64> = h["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(kept, [3, 4]);
    let (s, v) = api
        .call(
            "get",
            eu,
            dv,
            "/v1/diff/shop/short/k?from_version=1&to_version=4",
            &[],
            Body::None,
        )
        .await;
    assert_eq!((s, reason(&v)), (400, "HISTORY_COMPACTED"), "{v}");

    // --- watch (server-sent events): effective values, resumable by token ---
    let watch_url = format!("{us}/v1/watch/shop/prod?path=services.payment");
    api.seen
        .lock()
        .unwrap()
        .insert(("/v1/watch/{project}/{env}".into(), "get".into()));
    let mut resp = api.http.get(&watch_url).send().await.expect("watch");
    assert_eq!(resp.status().as_u16(), 200);
    let first = next_sse(&mut resp).await;
    assert_eq!(first["snapshot"], json!(true));
    assert!(first["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["key"] == "services.payment.database_url"));
    let token = first["token"].as_str().unwrap().to_string();
    // A change in base reaches prod's watcher as prod's effective value.
    let (s, _) = api
        .call(
            "put",
            eu,
            tpl,
            "/v1/template/shop/prod",
            &author,
            Body::Json(json!({"vars": {"db_host": "prod-db-2"}})),
        )
        .await;
    assert_eq!(s, 200);
    let ev = next_sse(&mut resp).await;
    let urls: Vec<(&str, &str)> = ev["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["key"].as_str().unwrap(),
                e["value"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        urls,
        [
            ("services.payment.database_url", "pg://prod-db-2/pay"),
            ("services.payment.replica_url", "pg://prod-db-2/pay?ro")
        ]
    );
    drop(resp);
    // Missed while disconnected; resumed in another region with the old token.
    assert_eq!(
        put("base", "services.payment.timeout_ms", json!(45))
            .await
            .0,
        200
    );
    let mut resp = api
        .http
        .get(format!("{}/v1/watch/shop/prod", c.http[2]))
        .query(&[
            ("path", "services.payment"),
            ("resume_token", token.as_str()),
        ])
        .send()
        .await
        .expect("watch resume");
    let ev = next_sse(&mut resp).await;
    assert_eq!(ev["snapshot"], json!(false), "{ev}");
    let keys: BTreeSet<&str> = ev["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "services.payment.database_url",
            "services.payment.replica_url",
            "services.payment.timeout_ms"
        ]),
        "exactly what changed since the token: {ev}"
    );
    let (s, v) = api
        .http
        .get(format!("{us}/v1/watch/shop/prod?resume_token=garbage"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map(|s| (s, ()))
        .unwrap();
    assert_eq!((s, v), (400, ()));

    let (s, v) = api
        .call(
            "get",
            us,
            "/v1/config/{project}/{env}",
            "/v1/config/shop/prod",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        v["value"]["services"]["payment"]["max_connections"],
        json!(500),
        "{v}"
    );
    assert_eq!(
        v["value"]["services"]["payment"]["database_url"],
        json!("pg://prod-db-2/pay"),
        "the whole environment, inherited keys included"
    );

    // --- moving an environment's home region online ---
    let root = "/v1/config/{project}/{env}";
    let (_, before) = api
        .call("get", ap, root, "/v1/config/shop/prod", &[], Body::None)
        .await;
    let mv = "/v1/namespaces/{project}/{env}/move";
    let (s, v) = api
        .call(
            "post",
            eu,
            mv,
            "/v1/namespaces/shop/prod/move",
            &[],
            Body::Json(json!({"home_region": "ap"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["home_region"], "ap");
    assert!(
        v.get("moving_to_region").is_none(),
        "the move is complete: {v}"
    );
    let (s, after) = api
        .call("get", us, root, "/v1/config/shop/prod", &[], Body::None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        after["value"], before["value"],
        "the environment moved whole"
    );
    for (body, want) in [
        (json!({"home_region": "mars"}), (400, "INVALID_REQUEST")),
        (json!({}), (400, "INVALID_REQUEST")),
    ] {
        let (s, v) = api
            .call(
                "post",
                eu,
                mv,
                "/v1/namespaces/shop/prod/move",
                &[],
                Body::Json(body),
            )
            .await;
        assert_eq!((s, reason(&v)), want, "{v}");
    }
    let (s, v) = api
        .call(
            "post",
            eu,
            mv,
            "/v1/namespaces/shop/nope/move",
            &[],
            Body::Json(json!({"home_region": "us"})),
        )
        .await;
    assert_eq!((s, reason(&v)), (404, "UNKNOWN_NAMESPACE"));

    // --- describing an environment: description, owners, labels ---
    let desc = "/v1/namespaces/{project}/{env}";
    let (s, v) = api
        .call(
            "patch",
            eu,
            desc,
            "/v1/namespaces/shop/prod",
            &[],
            Body::Json(json!({"description": "the shop", "owners": ["team-shop"], "labels": {"tier": "1"}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["description"], &v["owners"], &v["labels"]),
        (
            &json!("the shop"),
            &json!(["team-shop"]),
            &json!({"tier": "1"})
        )
    );
    for (body, want) in [
        (json!({"labels": {"tier": 1}}), (400, "INVALID_REQUEST")),
        (json!({"colour": "red"}), (400, "INVALID_REQUEST")),
        (json!({"labels": {"-bad": "1"}}), (400, "INVALID_REQUEST")),
    ] {
        let (s, v) = api
            .call(
                "patch",
                eu,
                desc,
                "/v1/namespaces/shop/prod",
                &[],
                Body::Json(body),
            )
            .await;
        assert_eq!((s, reason(&v)), want, "{v}");
    }

    // --- the audit log: this test's writes, in pages; chains verified ---
    let audit = "/v1/audit";
    let (s, v) = api
        .call(
            "get",
            us,
            audit,
            "/v1/audit?namespace=shop/prod&action_prefix=PUT&limit=2",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let page = v["records"].as_array().unwrap();
    assert_eq!(page.len(), 2, "{v}");
    assert!(page.iter().all(|r| r["namespace"] == "shop/prod"
        && r["action"].as_str().unwrap().starts_with("PUT /v1/")
        && r["result"] == "OK"));
    let next = v["next_page_token"].as_str().unwrap().to_string();
    assert!(!next.is_empty());
    let (s, v) = api
        .call(
            "get",
            us,
            audit,
            &format!("/v1/audit?namespace=shop/prod&action_prefix=PUT&limit=2&page_token={next}"),
            &[],
            Body::None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["records"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| !page.iter().any(|p| p["hash"] == r["hash"])));
    for bad in [
        "/v1/audit?colour=red",
        "/v1/audit?limit=ten",
        "/v1/audit?denied_only=maybe",
        "/v1/audit?page_token=a1.x",
    ] {
        let (s, v) = api.call("get", us, audit, bad, &[], Body::None).await;
        assert_eq!((s, reason(&v)), (400, "INVALID_REQUEST"), "{bad}: {v}");
    }
    let (s, v) = api
        .call(
            "get",
            ap,
            "/v1/audit/verify",
            "/v1/audit/verify",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ok"], json!(true), "{v}");
    assert_eq!(v["groups"].as_array().unwrap().len(), 3);

    // Secrets over HTTP: a secret put, a redacted read, a reveal, the
    // keyring status and a re-wrap (nothing to move: one KEK version).
    let url = "/v1/config/shop/prod/vault.pw?secret=true";
    let (s, v) = api
        .call("put", us, CFG, url, &[], Body::Json(json!("pw")))
        .await;
    assert_eq!(s, 200, "{v}");
    let url = "/v1/config/shop/prod/vault.pw";
    let (s, v) = api.call("get", us, CFG, url, &[], Body::None).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["value"]
            .as_str()
            .unwrap()
            .starts_with("<redacted secret v"),
        "{v}"
    );
    let url = "/v1/config/shop/prod/vault.pw?reveal=true";
    let (s, v) = api.call("get", us, CFG, url, &[], Body::None).await;
    assert_eq!((s, &v["value"]), (200, &json!("pw")), "{v}");
    let st = "/v1/secrets/status";
    let (s, v) = api
        .call(
            "get",
            us,
            st,
            "/v1/secrets/status?reload=true",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["keyring"]["active"], json!(1), "{v}");
    assert_eq!(v["census"]["by_kek"]["1"], json!(1), "{v}");
    let rw = "/v1/secrets/rewrap";
    let (s, v) = api.call("post", us, rw, rw, &[], Body::None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["census"]["rewrapped"], json!(0), "{v}");
    let sl = "/v1/secrets/list/{project}/{env}";
    let (s, v) = api
        .call("get", us, sl, "/v1/secrets/list/shop/prod", &[], Body::None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["secrets"][0]["key"], json!("vault.pw"), "{v}");
    assert_eq!(v["secrets"][0]["due"], json!(false), "{v}");
    let (s, v) = api
        .call(
            "get",
            us,
            sl,
            "/v1/secrets/list/shop/prod?due=true",
            &[],
            Body::None,
        )
        .await;
    assert_eq!((s, v["secrets"].as_array().unwrap().len()), (200, 0), "{v}");
    let sp = "/v1/secrets/paths/{project}/{env}";
    let body = Body::Json(json!({"add": ["creds"]}));
    let (s, v) = api
        .call("post", us, sp, "/v1/secrets/paths/shop/prod", &[], body)
        .await;
    assert_eq!(s, 200, "{v}");
    let body = Body::Json(json!({"add": "creds"}));
    let (s, v) = api
        .call("post", us, sp, "/v1/secrets/paths/shop/prod", &[], body)
        .await;
    assert_eq!((s, reason(&v)), (400, "INVALID_REQUEST"), "{v}");
    let url = "/v1/config/shop/prod/creds.key";
    let (s, v) = api
        .call("put", us, CFG, url, &[], Body::Json(json!("k")))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api.call("get", us, CFG, url, &[], Body::None).await;
    assert_eq!(
        (s, &v["value"]),
        (200, &json!("<redacted secret v1>")),
        "{v}"
    );
    let (s, v) = api
        .call("get", us, sl, "/v1/secrets/list/shop/prod", &[], Body::None)
        .await;
    assert_eq!((s, &v["paths"]), (200, &json!(["creds"])), "{v}");
    // Vault KV v2's lifecycle: delete, undelete (a new version), destroy.
    let (s, v) = api
        .call(
            "delete",
            us,
            CFG,
            "/v1/config/shop/prod/vault.pw",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let ud = "/v1/secrets/undelete/{project}/{env}/{key}";
    let undelete = "/v1/secrets/undelete/shop/prod/vault.pw";
    let (s, v) = api
        .call("post", us, ud, undelete, &[], Body::Json(json!({})))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["changes"][0]["version"], json!(3), "{v}");
    let (s, v) = api
        .call(
            "post",
            us,
            ud,
            undelete,
            &[],
            Body::Json(json!({"version": 1})),
        )
        .await;
    assert_eq!(
        (s, reason(&v)),
        (400, "INVALID_REQUEST"),
        "not deleted: {v}"
    );
    let ds = "/v1/secrets/destroy/{project}/{env}/{key}";
    let destroy = "/v1/secrets/destroy/shop/prod/vault.pw";
    let (s, v) = api
        .call(
            "post",
            us,
            ds,
            destroy,
            &[],
            Body::Json(json!({"versions": [1]})),
        )
        .await;
    assert_eq!((s, &v["destroyed"]), (200, &json!([1])), "{v}");
    let (s, v) = api
        .call(
            "post",
            us,
            ds,
            destroy,
            &[],
            Body::Json(json!({"versions": "1"})),
        )
        .await;
    assert_eq!((s, reason(&v)), (400, "INVALID_REQUEST"), "{v}");
    let url = "/v1/history/shop/prod/vault.pw?reveal=true";
    let (s, v) = api
        .call(
            "get",
            us,
            "/v1/history/{project}/{env}/{key}",
            url,
            &[],
            Body::None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["versions"][0]["value"],
        json!("<destroyed secret v1>"),
        "{v}"
    );
    assert_eq!(v["versions"][2]["value"], json!("pw"), "{v}");

    // Feature flags' routes are exercised by tests/flags.rs and
    // tests/flag_impressions.rs.
    let left: Vec<String> = api
        .unexercised()
        .into_iter()
        .filter(|op| {
            !common::openapi::FLAG_ROUTES
                .iter()
                .chain(common::openapi::IMPRESSION_ROUTES.iter())
                .any(|p| op.contains(p))
        })
        .collect();
    assert!(
        left.is_empty(),
        "OpenAPI operations never exercised: {left:?}"
    );
}

async fn next_sse(resp: &mut reqwest::Response) -> Value {
    let mut buf = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(i) = buf.find("\n\n") {
            let block: String = buf[..i].to_string();
            buf.drain(..i + 2);
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) {
                return serde_json::from_str(data.trim()).expect("event json");
            }
            continue;
        }
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("an event within 10 s")
            .expect("stream")
            .expect("stream ended");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// A PUT that must succeed; its revision.
async fn put_rev(api: &Api, region: &str, env: &str, key: &str, v: Value) -> u64 {
    let url = format!("/v1/config/roll/{env}/{key}");
    let (s, r) = api.call("put", region, CFG, &url, &[], Body::Json(v)).await;
    assert_eq!(s, 200, "{r}");
    r["revision"].as_u64().unwrap()
}

/// Rollbacks say what they delete (issue 19, item 4): a revision that
/// predates a key (revisions are the home region's, shared by its
/// environments) or a whole environment is refused unless deletion is
/// allowed, and the result's diff and warnings name every deleted key,
/// schema and template setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollbacks_say_what_they_delete() {
    let c = Cluster::running().await;
    let (eu, us) = (c.http[0].as_str(), c.http[1].as_str());
    let api = Api::new(eu).await;
    let ns = "/v1/namespaces";
    let rb = "/v1/rollback/{project}/{env}";
    for env in ["a", "b"] {
        let (s, v) = api
            .call(
                "post",
                eu,
                ns,
                ns,
                &[],
                Body::Json(json!({
                "project": "roll", "environment": env, "home_region": "eu"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    let r1 = put_rev(&api, eu, "a", "x", json!(1)).await;
    let r2 = put_rev(&api, us, "b", "y", json!(1)).await;
    let (s, v) = api
        .call(
            "put",
            eu,
            "/v1/schemas/{project}/{env}",
            "/v1/schemas/roll/b?prefix=",
            &[],
            Body::Json(json!({"type": "object"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    put_rev(&api, eu, "b", "z", json!(2)).await;

    // A key rolled back to a revision before it existed: refused, unchanged.
    let (s, v) = api
        .call(
            "post",
            us,
            rb,
            "/v1/rollback/roll/b",
            &[],
            Body::Json(json!({"key": "y", "revision": r1})),
        )
        .await;
    assert_eq!((s, reason(&v)), (409, "ROLLBACK_DELETES"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not exist"),
        "{v}"
    );
    let (s, v) = api
        .call("get", eu, CFG, "/v1/config/roll/b/y", &[], Body::None)
        .await;
    assert_eq!(
        (s, &v["value"]),
        (200, &json!(1)),
        "a refused rollback changes nothing"
    );
    // The whole environment to before it held anything: refused too.
    let (s, v) = api
        .call(
            "post",
            eu,
            rb,
            "/v1/rollback/roll/b",
            &[],
            Body::Json(json!({"revision": r1})),
        )
        .await;
    assert_eq!((s, reason(&v)), (409, "ROLLBACK_DELETES"), "{v}");
    let (s, v) = api
        .call(
            "post",
            eu,
            rb,
            "/v1/rollback/roll/b",
            &[],
            Body::Json(json!({"revision": r1, "allow_delete": "yes"})),
        )
        .await;
    assert_eq!((s, reason(&v)), (400, "INVALID_REQUEST"), "{v}");

    // The whole environment to r2 (y only): the schema and z go, and the
    // diff and warnings say so.
    let (s, v) = api
        .call(
            "post",
            eu,
            rb,
            "/v1/rollback/roll/b",
            &[],
            Body::Json(json!({"revision": r2})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let diff: Vec<(String, String)> = v["diff"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["op"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        diff,
        [
            ("/z".to_string(), "removed".to_string()),
            ("/$schema:".to_string(), "removed".to_string())
        ],
        "{v}"
    );
    let warning = v["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.contains("the root schema") && warning.contains('z'),
        "{v}"
    );
    let (s, _) = api
        .call(
            "get",
            eu,
            "/v1/schemas/{project}/{env}",
            "/v1/schemas/roll/b?prefix=",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(s, 404, "the schema is gone");

    // Allowed: the key rollback that deletes, with its warning.
    let (s, v) = api
        .call(
            "post",
            us,
            rb,
            "/v1/rollback/roll/b",
            &[],
            Body::Json(json!({"key": "y", "revision": r1, "allow_delete": true})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["warnings"][0].as_str().unwrap_or_default().contains('y'),
        "{v}"
    );
    let (s, _) = api
        .call("get", eu, CFG, "/v1/config/roll/b/y", &[], Body::None)
        .await;
    assert_eq!(s, 404);
}

/// Read server-sent events from `resp` until `n` events arrived (or 10 s):
/// each as (id, data).
async fn sse_events(resp: &mut reqwest::Response, n: usize) -> Vec<(String, Value)> {
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("SSE events within 10 s")
            .expect("SSE stream")
            .expect("SSE stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut data) = (String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !data.is_empty() {
                out.push((id, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    out
}

/// Issue 19, item 13: unknown routes and wrong methods answer the
/// documented error body; unknown body fields and non-JSON content types are
/// refused and named; bounded reads are accepted; SSE events carry `id:` and
/// a reconnect with Last-Event-ID resumes, deletions with their real version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_refuses_what_it_does_not_understand_and_resumes_watches() {
    let c = Cluster::running().await;
    let (eu, us) = (c.http[0].as_str(), c.http[1].as_str());
    let api = Api::new(eu).await;
    let http = common::http_client();

    let r = http.get(format!("{eu}/v1/nope")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let v: Value = r.json().await.expect("a JSON error body");
    assert_eq!(reason(&v), "UNKNOWN_ROUTE", "{v}");
    let r = http
        .delete(format!("{eu}/v1/namespaces"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert!(
        r.headers().get("allow").is_some(),
        "405 says what is allowed"
    );
    let v: Value = r.json().await.expect("a JSON error body");
    assert_eq!(reason(&v), "METHOD_NOT_ALLOWED", "{v}");

    let ns = "/v1/namespaces";
    let (s, v) = api
        .call(
            "post",
            eu,
            ns,
            ns,
            &[],
            Body::Json(json!({
            "project": "edge", "enviroment": "dev", "home_region": "eu"})),
        )
        .await;
    assert_eq!((s, reason(&v)), (400, "INVALID_REQUEST"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"enviroment\""),
        "{v}"
    );
    let (s, v) = api
        .call(
            "post",
            eu,
            ns,
            ns,
            &[],
            Body::Json(json!({
            "project": "edge", "environment": "dev", "home_region": "eu"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = api
        .call(
            "put",
            eu,
            CFG,
            "/v1/config/edge/dev/a",
            &[],
            Body::Raw("text/plain", b"1".to_vec()),
        )
        .await;
    assert_eq!((s, reason(&v)), (415, "UNSUPPORTED_MEDIA_TYPE"), "{v}");
    let (s, v) = api
        .call(
            "post",
            eu,
            "/v1/txn/{project}/{env}",
            "/v1/txn/edge/dev",
            &[],
            Body::Json(json!({"ops": [{"op": "put", "key": "a", "value": 1, "if_versoin": 0}]})),
        )
        .await;
    assert_eq!((s, reason(&v)), (400, "INVALID_REQUEST"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("if_versoin"),
        "{v}"
    );
    let (s, v) = api
        .call(
            "put",
            eu,
            CFG,
            "/v1/config/edge/dev/a",
            &[],
            Body::Json(json!(1)),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // A linearizable read in us first: us has applied the put, so a bounded
    // read there (served locally or at the leader) sees it.
    let (s, _) = api
        .call("get", us, CFG, "/v1/config/edge/dev/a", &[], Body::None)
        .await;
    assert_eq!(s, 200);
    let (s, v) = api
        .call(
            "get",
            us,
            CFG,
            "/v1/config/edge/dev/a?consistency=bounded&max_staleness_ms=5000",
            &[],
            Body::None,
        )
        .await;
    assert_eq!((s, &v["value"]), (200, &json!(1)), "{v}");
    let (s, v) = api
        .call(
            "get",
            us,
            CFG,
            "/v1/config/edge/dev/a?consistency=stale&max_staleness_ms=5",
            &[],
            Body::None,
        )
        .await;
    assert_eq!((s, reason(&v)), (400, "INVALID_REQUEST"), "{v}");

    // SSE: ids, and a reconnect with Last-Event-ID.
    let url = format!("{us}/v1/watch/edge/dev");
    let mut first = http.get(&url).send().await.unwrap();
    let evs = sse_events(&mut first, 1).await;
    let (id, snapshot) = &evs[0];
    assert!(!id.is_empty(), "every event has an id: {snapshot}");
    drop(first);
    let (s, _) = api
        .call(
            "put",
            eu,
            CFG,
            "/v1/config/edge/dev/b",
            &[],
            Body::Json(json!(2)),
        )
        .await;
    assert_eq!(s, 200);
    let (s, del) = api
        .call("delete", eu, CFG, "/v1/config/edge/dev/a", &[], Body::None)
        .await;
    assert_eq!(s, 200, "{del}");
    let mut again = http
        .get(&url)
        .header("last-event-id", id.as_str())
        .send()
        .await
        .unwrap();
    let evs = sse_events(&mut again, 1).await;
    let (_, ev) = &evs[0];
    assert_eq!(
        ev["snapshot"],
        json!(false),
        "resumed, not a new snapshot: {ev}"
    );
    let changes = ev["changes"].as_array().unwrap();
    let a = changes
        .iter()
        .find(|c| c["key"] == "a")
        .expect("the deletion of a");
    let b = changes
        .iter()
        .find(|c| c["key"] == "b")
        .expect("the put of b");
    assert_eq!(b["value"], json!(2));
    assert_eq!(a["deleted"], json!(true), "{ev}");
    assert_eq!(a["version"], json!(2), "the deletion's real version: {ev}");
    assert_eq!(a["revision"], del["revision"], "and revision: {ev}");
}
