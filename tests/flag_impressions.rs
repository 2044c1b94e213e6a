//! Impressions for experiments (docs/flags.md, "Impressions") on a real
//! 3-region cluster with auth: variants served by OFREP in one region and
//! by the Rust client library evaluating locally against another are
//! counted, flushed and read, exactly, from the third region, over HTTP
//! (checked against the OpenAPI document) and the CLI. Operators'
//! evaluations count nothing; bad reports are refused and change nothing;
//! readers of other environments are denied; the nodes' own namespace is
//! not listed, not audited, and not writable through the KV API.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::openapi::{Api, Body, IMPRESSION_ROUTES};
use common::{role_token, Cluster};
use meridian_flags::{Context, Expect};
use meridian_proto::client::AuthChannel;
use meridian_proto::flags::{FlagsOptions, ImpressionOptions};
use meridian_proto::v1::config_client::ConfigClient;
use meridian_proto::v1::kv_client::KvClient;
use meridian_proto::v1::{CreateNamespaceRequest, PutRequest};
use serde_json::{json, Value};

const IMPRESSIONS: &str = "/v1/impressions/{project}/{env}";
const OFREP_ONE: &str = "/ofrep/v1/evaluate/flags/{key}";

async fn chan(addr: &str, token: &str) -> AuthChannel {
    common::auth_chan(addr, token)
}

/// A 3-region cluster with auth on, flushing impressions every 200 ms.
async fn cluster() -> (Cluster, String) {
    common::auth_cluster("[flags]\nimpressions_flush_ms = 200\nimpressions_window_s = 60\n").await
}

fn count(into: &mut BTreeMap<String, u64>, variant: &str) {
    *into.entry(variant.to_string()).or_default() += 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn impressions_are_counted_where_served_and_summed_over_regions() {
    let (cl, root) = cluster().await;
    let mut cfg = ConfigClient::new(chan(&cl.grpc[0], &root).await);
    for (project, env) in [("shop", "prod"), ("other", "prod")] {
        cfg.create_namespace(CreateNamespaceRequest {
            project: project.into(),
            environment: env.into(),
            home_region: "eu".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let pm = role_token(&cl, &root, "pm", "shop", json!(["read", "flags"])).await;
    let svc = role_token(&cl, &root, "svc", "shop", json!(["read"])).await;
    let outsider = role_token(&cl, &root, "outsider", "other", json!(["read"])).await;
    let (eu, us, ap) = (
        cl.http[0].as_str(),
        cl.http[1].as_str(),
        cl.http[2].as_str(),
    );
    let api = Api::new(eu).await;
    let auth = |t: &str| format!("Bearer {t}");
    let http = common::http_client();
    let r = http
        .put(format!("{eu}/v1/flags/shop/prod/checkout"))
        .header("authorization", auth(&pm))
        .json(&json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                      "targeting": {"fractional": [["on", 30], ["off", 70]]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());

    // Served by OFREP in eu.
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let svc_h = auth(&svc);
    let ns_h = [
        ("authorization", svc_h.as_str()),
        ("x-meridian-namespace", "shop/prod"),
    ];
    for i in 0..200 {
        let (s, v) = api
            .call(
                "post",
                eu,
                OFREP_ONE,
                "/ofrep/v1/evaluate/flags/checkout",
                &ns_h,
                Body::Json(json!({"context": {"targetingKey": format!("web-{i}")}})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        count(&mut expected, v["variant"].as_str().unwrap());
    }
    // An operator's evaluation serves nobody: not counted.
    for _ in 0..5 {
        let r = http
            .post(format!("{eu}/v1/flags/shop/prod/checkout/evaluate"))
            .header("authorization", auth(&pm))
            .json(&json!({"context": {"targetingKey": "operator"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }

    // Served locally by the Rust client library, connected to us, which
    // reports what it served.
    let client = meridian_proto::client::Client::connect(
        &cl.grpc[1..2],
        meridian_proto::client::ClientOptions {
            token: Some(svc.clone()),
            ..common::fast_opts()
        },
    )
    .await
    .unwrap();
    let flags = client
        .flags(
            "shop/prod",
            FlagsOptions {
                impressions: Some(ImpressionOptions {
                    flush: Duration::from_secs(3600),
                    window_s: 60,
                }),
                ..FlagsOptions::default()
            },
        )
        .await
        .unwrap();
    for i in 0..500 {
        let ctx = Context::new(
            json!({"targetingKey": format!("app-{i}")})
                .as_object()
                .cloned()
                .unwrap(),
        )
        .unwrap();
        let d = flags.evaluate("checkout", &ctx, Expect::Bool);
        count(&mut expected, d.variant.as_deref().expect("served"));
    }
    assert_eq!(flags.flush_impressions().await.unwrap(), 500);
    assert_eq!(flags.flush_impressions().await.unwrap(), 0, "reported once");
    assert!(
        expected["on"] > 150 && expected["off"] > 400,
        "{expected:?}"
    );

    // Read from ap: every region's counts, summed, exactly.
    let read = |t: String| {
        let api = &api;
        async move {
            let h = [("authorization", t.as_str())];
            api.call(
                "get",
                ap,
                IMPRESSIONS,
                "/v1/impressions/shop/prod?flag=checkout&since=1h",
                &h,
                Body::None,
            )
            .await
        }
    };
    let want = json!(expected);
    let deadline = Instant::now() + Duration::from_secs(20);
    let view = loop {
        let (s, v) = read(auth(&svc)).await;
        assert_eq!(s, 200, "{v}");
        if v["flags"][0]["variants"] == want {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "impressions never summed to {want}: {v}\n{}",
            cl.log(0)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(view["flags"][0]["total"], json!(700), "{view}");
    let windows = view["flags"][0]["windows"].as_array().unwrap();
    let summed: u64 = windows
        .iter()
        .flat_map(|w| w["variants"].as_object().unwrap().values())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(summed, 700, "windows add up to the total: {view}");
    assert!(windows.iter().all(|w| w["window_s"] == json!(60)), "{view}");

    // The CLI says the same.
    let out = common::ok_at(
        &cl.grpc[2..],
        &[
            "--token",
            &svc,
            "-o",
            "json",
            "flag",
            "impressions",
            "shop/prod",
            "checkout",
        ],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    let by_variant: BTreeMap<String, u64> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["variant"].as_str().unwrap().to_string(),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(by_variant, expected, "{out}");

    // Bad reports are refused, whole, and count nothing.
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let svc_auth = auth(&svc);
    let h = [("authorization", svc_auth.as_str())];
    let cell = |count: Value, start: u64| json!({"flag": "checkout", "variant": "on", "count": count, "window_start_s": start});
    for (body, what) in [
        (
            json!({"cells": [cell(json!(5), now_s), cell(json!(0), now_s)]}),
            "a zero count",
        ),
        (
            json!({"cells": [cell(json!(-1), now_s)]}),
            "a negative count",
        ),
        (
            json!({"cells": [cell(json!(5), now_s - 400 * 86_400)]}),
            "a window past retention",
        ),
        (
            json!({"cells": [cell(json!(5), now_s + 86_400)]}),
            "a window in the future",
        ),
        (
            json!({"cells": [{"flag": "checkout", "variant": "on", "count": 1, "window_start_s": now_s, "user": "x"}]}),
            "an unknown field",
        ),
        (
            json!({"cells": [cell(json!(5), now_s)], "extra": 1}),
            "an unknown member",
        ),
        (
            json!({"cells": (0..1001).map(|_| cell(json!(1), now_s)).collect::<Vec<_>>()}),
            "too many cells",
        ),
    ] {
        let (s, v) = api
            .call(
                "post",
                us,
                IMPRESSIONS,
                "/v1/impressions/shop/prod",
                &h,
                Body::Json(body),
            )
            .await;
        assert_eq!(s, 400, "{what}: {v}");
        assert_eq!(v["error"]["reason"], "INVALID_REQUEST", "{what}: {v}");
    }
    // Readers of another project may neither read nor report; nobody
    // without a token may.
    let out_auth = auth(&outsider);
    let oh = [("authorization", out_auth.as_str())];
    let (s, v) = read(out_auth.clone()).await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = api
        .call(
            "post",
            us,
            IMPRESSIONS,
            "/v1/impressions/shop/prod",
            &oh,
            Body::Json(json!({"cells": [cell(json!(1), now_s)]})),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = api
        .call(
            "get",
            us,
            IMPRESSIONS,
            "/v1/impressions/shop/prod",
            &[],
            Body::None,
        )
        .await;
    assert_eq!(s, 401, "{v}");
    // A good report, as any SDK would send it, marks a flush: once it shows,
    // everything refused before it would have shown too.
    let (s, v) = api
        .call(
            "post",
            us,
            IMPRESSIONS,
            "/v1/impressions/shop/prod",
            &h,
            Body::Json(json!({"cells": [{"flag": "checkout", "variant": "probe", "count": 3, "window_start_s": now_s}]})),
        )
        .await;
    assert_eq!((s, &v["counted"]), (200, &json!(3)), "{v}");
    expected.insert("probe".into(), 3);
    let want = json!(expected);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = read(auth(&svc)).await;
        if v["flags"][0]["variants"] == want {
            break;
        }
        assert!(Instant::now() < deadline, "expected {want}, have {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left: Vec<String> = api
        .unexercised()
        .into_iter()
        .filter(|op| IMPRESSION_ROUTES.iter().any(|p| op.contains(p)))
        .collect();
    assert!(
        left.is_empty(),
        "impressions operations never exercised: {left:?}"
    );

    // The nodes' own namespaces: not environments anyone lists, not in the
    // audit chain (flushes are bookkeeping), not writable through the KV API.
    let root_get = |path: &'static str| {
        let req = http
            .get(format!("{eu}{path}"))
            .header("authorization", auth(&root));
        async move { req.send().await.unwrap().text().await.unwrap() }
    };
    let r = root_get("/v1/namespaces").await;
    assert!(r.contains("shop/prod") && !r.contains("_system"), "{r}");
    let r = root_get("/v1/audit?limit=1000").await;
    // The namespaces' creation is in the catalog's chain; no flush is.
    let records: Value = serde_json::from_str(&r).unwrap();
    let records = records["records"].as_array().unwrap();
    assert!(
        records.iter().any(|x| x["namespace"] == "shop/prod")
            && !records
                .iter()
                .any(|x| x["namespace"].as_str().unwrap().starts_with("_system/")),
        "{r}"
    );
    let e = KvClient::new(chan(&cl.grpc[0], &root).await)
        .put(PutRequest {
            namespace: meridian_node::configstore::engine::impressions_ns("eu"),
            key: "shop/prod/checkout/000000000000".into(),
            value: b"{}".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(common::reason(&e), "RESERVED_KEY", "{e}");
}
