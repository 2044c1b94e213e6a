//! The HTTP API checked against its OpenAPI document: every call's status
//! must be documented for its operation and its body must match the
//! documented schema; `unexercised` lists the operations no call reached.

// Test helpers fail the test by panicking; that is what unwrap is for here.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Mutex;

use serde_json::Value;

/// Path fragments of the feature-flag routes (exercised by tests/flags.rs;
/// tests/config_http.rs covers the rest).
pub const FLAG_ROUTES: [&str; 4] = [" /v1/flags/", " /v1/segments/", " /ofrep/", " /ns/"];
/// Impressions' routes, exercised by tests/flag_impressions.rs.
#[allow(dead_code)]
pub const IMPRESSION_ROUTES: [&str; 1] = [" /v1/impressions/"];

pub struct Api {
    pub http: reqwest::Client,
    pub spec: Value,
    pub seen: Mutex<BTreeSet<(String, String)>>,
}

pub enum Body {
    None,
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

impl Api {
    pub async fn new(base: &str) -> Api {
        let http = super::http_client();
        let spec: Value = http
            .get(format!("{base}/v1/openapi.json"))
            .send()
            .await
            .expect("openapi")
            .json()
            .await
            .expect("openapi json");
        assert_eq!(spec["openapi"], "3.1.0");
        let api = Api {
            http,
            spec,
            seen: Mutex::new(BTreeSet::new()),
        };
        api.seen
            .lock()
            .unwrap()
            .insert(("/v1/openapi.json".into(), "get".into()));
        api
    }

    /// One call: `template` is the OpenAPI path the URL instantiates. The
    /// status must be documented for the operation and the body must match
    /// the documented schema.
    pub async fn call(
        &self,
        method: &str,
        base: &str,
        template: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> (u16, Value) {
        let op = &self.spec["paths"][template][method];
        assert!(
            op.is_object(),
            "{method} {template} is not in the OpenAPI document"
        );
        self.seen
            .lock()
            .unwrap()
            .insert((template.to_string(), method.to_string()));
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut rb = self.http.request(m, format!("{base}{url}"));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        rb = match body {
            Body::None => rb,
            Body::Json(v) => rb
                .header("content-type", "application/json")
                .body(v.to_string()),
            Body::Raw(ct, bytes) => rb.header("content-type", ct).body(bytes),
        };
        let resp = rb.send().await.expect("send");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {url}: {status} body is not JSON ({e}): {text}"));
        let doc = &op["responses"][status.to_string()];
        assert!(
            doc.is_object(),
            "{method} {template}: status {status} is not documented; body {value}"
        );
        let doc = match doc.get("$ref").and_then(Value::as_str) {
            Some(r) => &self.spec["components"]["responses"][r.rsplit('/').next().unwrap()],
            None => doc,
        };
        let schema = &doc["content"]["application/json"]["schema"];
        if !schema.is_null() {
            let mut root = schema.clone();
            if let Value::Object(m) = &mut root {
                m.insert("components".into(), self.spec["components"].clone());
            }
            let v = jsonschema::draft202012::new(&root).expect("schema compiles");
            let errs: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
            assert!(
                errs.is_empty(),
                "{method} {url}: response breaks the OpenAPI schema: {errs:?}\n{value}"
            );
        }
        (status, value)
    }

    pub fn unexercised(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        let mut out = Vec::new();
        for (path, ops) in self.spec["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                if !seen.contains(&(path.clone(), method.clone())) {
                    out.push(format!("{method} {path}"));
                }
            }
        }
        out
    }
}
