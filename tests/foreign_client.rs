//! A gRPC client that is not Meridian's own: Python grpcio with stubs generated
//! from `proto/` at run time lists the services (server reflection), then puts
//! and gets, over TLS (BoringSSL) with a client certificate. Needs python3 with grpcio, grpcio-tools and grpcio-reflection
//! (`scripts/setup.sh` installs them); fails loudly when they are missing.

mod common;

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_the_proto_lists_services_puts_and_gets() {
    let probe = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools, grpc_reflection"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        other => panic!(
            "THIS TEST CANNOT RUN: it needs python3 with grpcio, grpcio-tools and \
             grpcio-reflection. Run `bash scripts/setup.sh`. Probe result: {other:?}"
        ),
    }
    let c = common::Cluster::running().await;
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg(format!("{root}/tests/python/grpc_check.py"))
        .arg(&c.grpc[2])
        .arg(format!("{root}/proto"))
        .arg(common::ca_path())
        .arg(common::certs_dir().join("client-alice.pem"))
        .arg(common::certs_dir().join("client-alice-key.pem"))
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "python client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("meridian.v1.Kv") && stdout.contains("grpc.health.v1.Health"));
    assert!(stdout.contains("get: True from-python"), "{stdout}");
}
