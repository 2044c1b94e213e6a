//! Bad input against real region nodes: malformed and oversized requests, an
//! unknown region in a config file, and a peer whose certificate comes from
//! another CA. Each gets a clear error, and no acknowledged data is lost.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use common::{Cluster, REGIONS};
use meridian_proto::v1::Consistency;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Code;

/// Sends raw bytes as a gRPC message body and returns the raw reply: lets
/// the test speak garbage on a real gRPC connection.
#[derive(Default)]
struct RawCodec;
struct RawEnc;
struct RawDec;

impl Encoder for RawEnc {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEnc;
    type Decoder = RawDec;
    fn encoder(&mut self) -> RawEnc {
        RawEnc
    }
    fn decoder(&mut self) -> RawDec {
        RawDec
    }
}

async fn raw_call(addr: &str, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let ch = common::channel(addr).await;
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.expect("ready");
    grpc.unary(
        tonic::Request::new(body),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_and_oversized_requests_get_clear_errors_and_lose_nothing() {
    let c = Cluster::running().await;
    let client = c.client_for(1).await;
    let w = client.put("eu", "keep", b"safe").await.expect("put");
    assert!(w.succeeded);

    // Garbage where a PutRequest should be.
    let e = raw_call(&c.grpc[1], "/meridian.v1.Kv/Put", vec![0xff; 64])
        .await
        .expect_err("garbage must fail");
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(e.message().contains("decode"), "{e:?}");

    // A value just over the limit: a stable reason.
    let e = client
        .put("eu", "big", &vec![b'x'; (1 << 20) + 1])
        .await
        .expect_err("oversized value must fail");
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    assert_eq!(e.reason(), Some("VALUE_TOO_LARGE"), "{e}");
    // A request far above the message limit is refused before decoding.
    let e = client
        .put("eu", "huge", &vec![b'x'; 8 << 20])
        .await
        .expect_err("huge request must fail");
    assert!(
        matches!(e.code(), Some(Code::OutOfRange | Code::ResourceExhausted)),
        "{e}"
    );

    let e = client
        .put("no-such-namespace", "k", b"v")
        .await
        .expect_err("unknown namespace");
    assert_eq!(e.code(), Some(Code::NotFound));
    assert_eq!(e.reason(), Some("UNKNOWN_NAMESPACE"));
    let e = client.put("eu", "", b"v").await.expect_err("empty key");
    assert_eq!(e.reason(), Some("INVALID_REQUEST"));
    let e = client
        .put("eu", &"k".repeat(2000), b"v")
        .await
        .expect_err("long key");
    assert_eq!(e.reason(), Some("KEY_TOO_LONG"));
    let e = client
        .transfer_lease(0, "mars")
        .await
        .expect_err("unknown region");
    assert_eq!(e.reason(), Some("UNKNOWN_REGION"));

    // Nothing was lost, and the node still serves.
    let r = client
        .get("eu", "keep", Consistency::Linearizable)
        .await
        .expect("get");
    assert_eq!(r.kv.expect("kv").value, b"safe");
    let r = client
        .get("eu", "big", Consistency::Linearizable)
        .await
        .expect("get");
    assert!(!r.found, "the refused value must not exist");
}

/// Run `meridian serve` on `config`, which must fail; its stderr.
fn serve_fails(config: &std::path::Path) -> String {
    let out = Command::new(common::bin())
        .args(["serve", "--config"])
        .arg(config)
        .output()
        .expect("run");
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A second `serve` on a data directory in use is told so, with the pid of
/// the process using it, and never that the data is corrupt (issue 19, item
/// 6: "corrupt" makes an operator delete good data).
#[test]
fn a_data_directory_in_use_is_reported_as_in_use_not_corrupt() {
    let mut c = Cluster::new("");
    c.start(0);
    let pid_file = c.data_dir(0).join("meridian.pid");
    let deadline = Instant::now() + Duration::from_secs(30);
    let pid = loop {
        if let Some(p) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "region eu never opened its data directory:\n{}",
            c.log(0)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = serve_fails(&c.configs[0]);
    assert!(
        err.contains("is in use by another process") && err.contains(&format!("pid {pid}")),
        "stderr: {err}"
    );
    assert!(!err.contains("corrupt"), "stderr: {err}");
    // The first process is unharmed: it still holds its directory.
    assert!(c.is_running(0));
    assert_eq!(
        std::fs::read_to_string(&pid_file).expect("pid file").trim(),
        pid.to_string()
    );
}

#[test]
fn unknown_region_in_config_is_a_clear_error() {
    let c = Cluster::new("");
    let text = std::fs::read_to_string(&c.configs[0])
        .expect("read")
        .replacen("region = \"eu\"", "region = \"mars\"", 1);
    let bad = c.dir().join("mars.toml");
    std::fs::write(&bad, text).expect("write");
    let err = serve_fails(&bad);
    assert!(
        err.contains("unknown region \"mars\"") && err.contains("eu, us, ap"),
        "stderr: {err}"
    );
    // Unknown field: named in the error.
    let text = std::fs::read_to_string(&c.configs[0]).expect("read")
        + "\n[cluster]\nelection_timeout = 5\n";
    std::fs::write(&bad, text).expect("write");
    let err = serve_fails(&bad);
    assert!(
        err.contains("unknown field `election_timeout`"),
        "stderr: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_with_a_certificate_from_another_ca_is_refused() {
    let mut c = Cluster::running().await;
    let client = c.client_for(1).await;
    assert!(
        client
            .put("us", "before", b"1")
            .await
            .expect("put")
            .succeeded
    );

    // Replace region eu by an impostor: same name and ports, but its
    // certificate (and CA) come from another `meridian certs` run.
    c.kill9(0);
    let other = c.dir().join("other-ca");
    let out = Command::new(common::bin())
        .args(["certs", "--out"])
        .arg(&other)
        .args(["--regions", "eu"])
        .output()
        .expect("certs");
    assert!(out.status.success());
    let text = std::fs::read_to_string(&c.configs[0])
        .expect("read")
        .replace("certs/ca.pem", "other-ca/ca.pem")
        .replace("certs/eu.pem", "other-ca/eu.pem")
        .replace("certs/eu-key.pem", "other-ca/eu-key.pem")
        .replace("data/eu", "data/impostor");
    std::fs::write(&c.configs[0], text).expect("write");
    c.start(0);

    // us and ap refuse it at the TLS handshake, and say so in their logs.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let us_log = c.log(1);
        // us's old connection to the killed eu dies at the QUIC idle timeout.
        let s = client.cluster_status().await.expect("status");
        if us_log.contains("rejected peer connection") && !s.regions[0].connected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no rejection logged by us; us log:\n{us_log}\nimpostor log:\n{}",
            c.log(0)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The impostor cannot join: us still reports eu unreachable a while later,
    // keeps serving, and the data is intact.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = client.cluster_status().await.expect("status");
    assert!(
        !s.regions[0].connected,
        "the impostor must not be connected"
    );
    assert!(
        client
            .put("us", "after", b"2")
            .await
            .expect("put")
            .succeeded
    );
    for k in ["before", "after"] {
        let r = client
            .get("us", k, Consistency::Linearizable)
            .await
            .expect("get");
        assert!(r.found, "{k} lost");
    }
    let _ = REGIONS;
}
