//! Configuration reads under load: subtree reads (one service's whole config
//! as one JSON object) and rendered reads (an environment inheriting another,
//! with `${var:}` and `${ref:}` templates) over gRPC against a real region node
//! (RocksDB, the core, tonic) holding 100 K keys of about 1 KB. Reports p50,
//! p99 and max latency per kind, and reads per second, from hdrhistogram.
//!
//! Run: `cargo bench --bench config_reads` (env `BENCH_READS`: reads per kind,
//! default 5000).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use meridian_node::config::NodeConfig;
use meridian_proto::v1::config_client::ConfigClient;
use meridian_proto::v1::kv_client::KvClient;
use meridian_proto::v1::*;
use rand::Rng;

const SERVICES: usize = 10_000;
const KEYS_PER_SERVICE: usize = 10;
const VALUE_BYTES: usize = 1000;
const TXN_KEYS: usize = 100;

fn ns(env: &str) -> Option<NamespaceRef> {
    Some(NamespaceRef {
        project: "bench".into(),
        environment: env.into(),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let reads: usize = std::env::var("BENCH_READS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    let dir = tempfile::tempdir()?;
    meridian_node::tls::generate_dev_certs(
        &dir.path().join("certs"),
        &["eu".to_string()],
        &[],
        &[],
        false,
    )?;
    // Free ports, found by binding and releasing (nothing else runs here).
    let grpc_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let peer_port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let toml = format!(
        "region = \"eu\"\ndata_dir = \"{d}/data\"\n[tls]\nca_cert = \"{d}/certs/ca.pem\"\ncert = \"{d}/certs/eu.pem\"\nkey = \"{d}/certs/eu-key.pem\"\n[api_tls]\nplaintext = true\n[auth]\nenabled = false\n[[regions]]\nname = \"eu\"\ngrpc = \"127.0.0.1:{grpc_port}\"\npeer = \"127.0.0.1:{peer_port}\"\n",
        d = dir.path().display()
    );
    let node = meridian_node::server::start(NodeConfig::parse(&toml)?).await?;
    let addr = format!("http://{}", node.grpc_addr);
    let mut cfg = ConfigClient::connect(addr.clone()).await?;
    let mut kv = KvClient::connect(addr).await?;
    // Wait for the single region to lead its group.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = cfg
            .create_namespace(CreateNamespaceRequest {
                project: "bench".into(),
                environment: "base".into(),
                home_region: "eu".into(),
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).context("create namespace"),
        }
    }
    cfg.create_namespace(CreateNamespaceRequest {
        project: "bench".into(),
        environment: "prod".into(),
        home_region: "eu".into(),
        ..Default::default()
    })
    .await?;

    // Templates first: a configuration write validates the whole namespace,
    // so it is cheap while the namespace is empty.
    cfg.write(ConfigWriteRequest {
        ns: ns("base"),
        ops: vec![ConfigOp {
            op: Some(config_op::Op::SetTemplate(SetTemplateOp {
                vars_json: Some(r#"{"host":"base-db"}"#.into()),
                ..Default::default()
            })),
        }],
        ..Default::default()
    })
    .await
    .context("base's variables")?;
    cfg.write(ConfigWriteRequest {
        ns: ns("prod"),
        ops: vec![ConfigOp {
            op: Some(config_op::Op::SetTemplate(SetTemplateOp {
                inherits: Some("base".into()),
                vars_json: Some(r#"{"host":"prod-db"}"#.into()),
                ..Default::default()
            })),
        }],
        ..Default::default()
    })
    .await?;

    // 100 K keys of ~1 KB in bench/base, loaded through the KV API in
    // transactions of 100 (the config API would validate the whole namespace
    // on every write, which is the wrong tool for a bulk load).
    let load_start = Instant::now();
    let filler = "x".repeat(VALUE_BYTES - 40);
    let mut batch = Vec::new();
    for s in 0..SERVICES {
        for k in 0..KEYS_PER_SERVICE {
            let value = match k {
                0 => format!(
                    "\"pg://${{var:host}}/s{s}?{}\"",
                    &filler[..VALUE_BYTES - 60]
                ),
                1 => format!("\"${{ref:services.s{s:05}.k0}}&ro\""),
                _ => format!("\"{filler}-{s}-{k}\""),
            };
            batch.push(Op {
                op: Some(op::Op::Put(op::Put {
                    key: format!("services.s{s:05}.k{k}"),
                    value: value.into_bytes(),
                })),
            });
            if batch.len() == TXN_KEYS {
                kv.txn(TxnRequest {
                    namespace: "bench/base".into(),
                    compares: Vec::new(),
                    ops: std::mem::take(&mut batch),
                    request_id: rand::random(),
                })
                .await
                .with_context(|| format!("loading service {s}"))?;
            }
        }
    }
    let load_s = load_start.elapsed().as_secs_f64();
    println!("# config reads: 1 region, {} keys of ~{VALUE_BYTES} B ({SERVICES} services x {KEYS_PER_SERVICE} keys), loaded in {load_s:.1} s; {reads} reads per kind, one client, gRPC on loopback", SERVICES * KEYS_PER_SERVICE);
    println!();
    println!("| read | consistency | p50 us | p99 us | max us | reads/s |");
    println!("|---|---|---|---|---|---|");
    let kinds: [(&str, &str, bool, bool); 4] = [
        ("subtree (raw, base)", "base", true, false),
        ("subtree (raw, base)", "base", true, true),
        ("rendered (prod inherits base)", "prod", false, false),
        ("rendered (prod inherits base)", "prod", false, true),
    ];
    let mut rng = rand::rng();
    for (name, env, raw, stale) in kinds {
        let mut h = Histogram::<u64>::new(3)?;
        let start = Instant::now();
        for _ in 0..reads {
            let s = rng.random_range(0..SERVICES);
            let t = Instant::now();
            let r = cfg
                .get_config(GetConfigRequest {
                    ns: ns(env),
                    path: format!("services.s{s:05}"),
                    read: Some(ConfigReadOptions {
                        raw,
                        stale,
                        ..Default::default()
                    }),
                    default_json: None,
                })
                .await?
                .into_inner();
            h.record(t.elapsed().as_micros() as u64)?;
            // Check the answer, so a fast wrong read cannot pass as a result.
            let v: serde_json::Value = serde_json::from_str(&r.value_json)?;
            let obj = v.as_object().context("a subtree is an object")?;
            anyhow::ensure!(
                obj.len() == KEYS_PER_SERVICE,
                "service {s}: {} keys",
                obj.len()
            );
            if !raw {
                let k1 = obj["k1"].as_str().context("k1 is a string")?;
                anyhow::ensure!(
                    k1.starts_with("pg://prod-db/s"),
                    "rendered k1: {}",
                    &k1[..40.min(k1.len())]
                );
            }
        }
        let per_s = reads as f64 / start.elapsed().as_secs_f64();
        println!(
            "| {name} | {} | {} | {} | {} | {per_s:.0} |",
            if stale { "stale" } else { "linearizable" },
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max()
        );
    }
    node.stop().await;
    Ok(())
}
