//! Test harness: three real `meridian serve` processes on loopback, each with
//! its own RocksDB directory, certificates from one development CA (one per
//! test process; clients trust it and speak TLS), and free ports. Processes are killed (SIGKILL) when the harness is dropped.

#![allow(dead_code)]

pub mod openapi;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meridian_proto::client::{Client, ClientOptions, ClientTls};

pub const REGIONS: [&str; 3] = ["eu", "us", "ap"];

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_meridian")
}

/// The certificates of every cluster this test process starts, made once
/// by `meridian certs`: one CA; peer and client-API certificates for eu, us
/// and ap; client certificates (mutual TLS) for `CLIENTS`.
pub fn certs_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(bin())
            .args(["certs", "--out"])
            .arg(dir.path())
            .args(["--regions", "eu,us,ap", "--clients", &CLIENTS.join(",")])
            .output()
            .expect("run meridian certs");
        assert!(out.status.success(), "meridian certs failed: {out:?}");
        dir
    })
    .path()
}

/// Principals with a client certificate in `certs_dir()`.
pub const CLIENTS: [&str; 2] = ["alice", "bob"];

/// The cluster CA's certificate (PEM file).
pub fn ca_path() -> PathBuf {
    certs_dir().join("ca.pem")
}

/// TLS for clients of the test clusters: their CA, no client certificate.
pub fn client_tls() -> ClientTls {
    ClientTls::from_files(&ca_path(), None).expect("client TLS")
}

/// TLS with `name`'s client certificate (one of `CLIENTS`).
pub fn client_tls_as(name: &str) -> ClientTls {
    let d = certs_dir();
    ClientTls::from_files(
        &d.join("ca.pem"),
        Some((
            &d.join(format!("client-{name}.pem")),
            &d.join(format!("client-{name}-key.pem")),
        )),
    )
    .expect("client TLS")
}

/// A gRPC channel to `addr` over TLS (no token).
pub async fn channel(addr: &str) -> tonic::transport::Channel {
    channel_with(addr, &client_tls()).await
}

/// A gRPC channel to `addr` with the given TLS settings.
pub async fn channel_with(addr: &str, tls: &ClientTls) -> tonic::transport::Channel {
    meridian_proto::client::endpoint(addr, Some(tls))
        .expect("endpoint")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e:?}"))
}

/// An HTTP client that trusts the test clusters' CA (rustls with ring,
/// configured here, as a user of reqwest would).
pub fn http_client() -> reqwest::Client {
    http_client_with(None)
}

/// `http_client`, presenting `name`'s client certificate if given.
pub fn http_client_with(name: Option<&str>) -> reqwest::Client {
    let pem = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &pem(ca_path())[..]) {
        roots.add(c.expect("CA certificate")).expect("add CA");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let cfg = match name {
        None => builder.with_no_client_auth(),
        Some(n) => {
            let d = certs_dir();
            let chain = rustls_pemfile::certs(&mut &pem(d.join(format!("client-{n}.pem")))[..])
                .collect::<Result<Vec<_>, _>>()
                .expect("client certificate");
            let key =
                rustls_pemfile::private_key(&mut &pem(d.join(format!("client-{n}-key.pem")))[..])
                    .expect("client key")
                    .expect("a key in the file");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .build()
        .expect("reqwest client")
}

/// (success, stdout, stderr) of `meridian --endpoints <grpc> args`, as the
/// user `cli-user` without colours, trusting the test clusters' CA.
pub fn cli_at(grpc: &[String], args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .arg("--endpoints")
        .arg(grpc.join(","))
        .args(args)
        .env("MERIDIAN_CACERT", ca_path())
        .env("USER", "cli-user")
        .env("NO_COLOR", "1")
        .output()
        .expect("run meridian");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The stdout of a `cli_at` that must succeed.
pub fn ok_at(grpc: &[String], args: &[&str]) -> String {
    let (success, out, err) = cli_at(grpc, args);
    assert!(success, "meridian {args:?} failed:\n{out}\n{err}");
    out
}

fn free_port() -> u16 {
    // Ports handed out by this process: the OS may give a released port
    // again, and a cluster's config refuses an address used twice.
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    // Bind both TCP and UDP on the same port so gRPC and QUIC can use it.
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let port = t.local_addr().expect("addr").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && GIVEN.lock().expect("port set").insert(port)
        {
            return port;
        }
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// With `behind_lab`: where each node binds QUIC (`peer_bind`), while
    /// `peer_front` is what the others dial (the lab listens there).
    pub peer_real: Vec<u16>,
    pub peer_front: Vec<u16>,
    pub grpc: Vec<String>,
    /// HTTP/JSON API base URLs (`https://127.0.0.1:port`).
    pub http: Vec<String>,
    pub configs: Vec<PathBuf>,
    procs: Vec<Option<Child>>,
    /// The regions' `RUST_LOG` (default "info").
    pub rust_log: String,
}

impl Cluster {
    /// Write certificates and configs; start nothing yet.
    pub fn new(extra_toml: &str) -> Cluster {
        Cluster::build(extra_toml, false)
    }

    /// Like `new`, but every region's peer traffic passes `meridian-netlab`:
    /// the regions dial each other's lab front and bind their real address.
    /// Start the lab with `lab_regions()` before the nodes.
    pub fn behind_lab(extra_toml: &str) -> Cluster {
        Cluster::build(extra_toml, true)
    }

    /// The lab's view of the regions (front and real peer addresses).
    pub fn lab_regions(&self) -> Vec<meridian_netlab::Region> {
        (0..3)
            .map(|i| meridian_netlab::Region {
                name: REGIONS[i].to_string(),
                front: std::net::SocketAddr::from(([127, 0, 0, 1], self.peer_front[i])),
                real: std::net::SocketAddr::from(([127, 0, 0, 1], self.peer_real[i])),
            })
            .collect()
    }

    fn build(extra_toml: &str, lab: bool) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).expect("certs dir");
        for e in std::fs::read_dir(certs_dir()).expect("read certs") {
            let e = e.expect("cert file");
            std::fs::copy(e.path(), certs.join(e.file_name())).expect("copy cert");
        }
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let http_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let peer_real: Vec<u16> = if lab {
            (0..3).map(|_| free_port()).collect()
        } else {
            Vec::new()
        };
        let mut regions = String::new();
        for (i, r) in REGIONS.iter().enumerate() {
            regions.push_str(&format!(
                "[[regions]]\nname = \"{r}\"\ngrpc = \"127.0.0.1:{}\"\npeer = \"127.0.0.1:{}\"\nhttp = \"127.0.0.1:{}\"\n",
                ports[i].0, ports[i].1, http_ports[i]
            ));
        }
        // One keyring of secrets' key-encryption keys for the cluster (each
        // region reads the same file), unless a test brings its own.
        let secrets = if extra_toml.contains("[secrets]") {
            ""
        } else {
            meridian_node::secrets::keyring::FileKeyring::create(&dir.path().join("keyring.toml"))
                .expect("create the keyring");
            "[secrets]\nkeyring_file = \"keyring.toml\"\n"
        };
        let mut configs = Vec::new();
        for (i, r) in REGIONS.iter().enumerate() {
            let bind = match peer_real.get(i) {
                Some(p) => format!("peer_bind = \"127.0.0.1:{p}\"\n"),
                None => String::new(),
            };
            // Tests of other things run with auth off (said explicitly, as
            // the node requires); the auth tests pass their own [auth].
            let auth = if extra_toml.contains("[auth]") {
                ""
            } else {
                "[auth]\nenabled = false\n"
            };
            // The client APIs speak TLS (with client certificates from the
            // cluster CA accepted), unless a test says otherwise.
            let api_tls = if extra_toml.contains("[api_tls]") {
                String::new()
            } else {
                format!(
                    "[api_tls]\ncert = \"certs/{r}-api.pem\"\nkey = \"certs/{r}-api-key.pem\"\nclient_ca = \"certs/ca.pem\"\n"
                )
            };
            let text = format!(
                "region = \"{r}\"\ndata_dir = \"data/{r}\"\n{bind}[tls]\nca_cert = \"certs/ca.pem\"\ncert = \"certs/{r}.pem\"\nkey = \"certs/{r}-key.pem\"\n{api_tls}{auth}{secrets}{regions}{extra_toml}"
            );
            let p = dir.path().join(format!("{r}.toml"));
            std::fs::write(&p, text).expect("write config");
            configs.push(p);
        }
        Cluster {
            grpc: ports
                .iter()
                .map(|(g, _)| format!("127.0.0.1:{g}"))
                .collect(),
            http: http_ports
                .iter()
                .map(|p| format!("https://127.0.0.1:{p}"))
                .collect(),
            peer_front: ports.iter().map(|(_, p)| *p).collect(),
            peer_real,
            dir,
            configs,
            procs: vec![None, None, None],
            rust_log: "info".to_string(),
        }
    }

    /// A new cluster with every region started and ready.
    pub async fn running() -> Cluster {
        let mut c = Cluster::new("");
        c.start_all();
        for i in 0..3 {
            c.wait_ready(i, Duration::from_secs(30)).await;
        }
        c
    }

    pub fn start(&mut self, i: usize) {
        assert!(self.procs[i].is_none(), "region {i} already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("log file");
        let child = Command::new(bin())
            .args(["serve", "--config"])
            .arg(&self.configs[i])
            .env("RUST_LOG", &self.rust_log)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn meridian serve");
        self.procs[i] = Some(child);
    }

    pub fn start_all(&mut self) {
        for i in 0..3 {
            self.start(i);
        }
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", REGIONS[i]))
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            c.kill().expect("kill -9");
            c.wait().expect("reap");
        }
    }

    /// Send a signal (`STOP`, `CONT`, ...) to region `i`'s process with kill(1).
    pub fn signal(&self, i: usize, sig: &str) {
        let pid = self.procs[i].as_ref().expect("region running").id();
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill(1)");
        assert!(st.success(), "kill -{sig} {pid} failed");
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.procs[i].is_some()
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join("data").join(REGIONS[i])
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client that knows only region `i`.
    pub async fn client_for(&self, i: usize) -> Client {
        Client::connect(&[self.grpc[i].clone()], fast_opts())
            .await
            .expect("client")
    }

    /// A client that knows every region.
    pub async fn client(&self) -> Client {
        Client::connect(&self.grpc, fast_opts())
            .await
            .expect("client")
    }

    /// Wait until region `i` answers and sees a leader for every group.
    pub async fn wait_ready(&self, i: usize, within: Duration) {
        let deadline = Instant::now() + within;
        let c = self.client_for(i).await;
        loop {
            if let Ok(s) = c.cluster_status().await {
                if s.groups.iter().all(|g| g.leader.is_some()) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "region {} not ready within {within:?}; log:\n{}",
                REGIONS[i],
                self.log(i)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A channel to `addr` that sends `token` as its bearer credential.
pub fn auth_chan(addr: &str, token: &str) -> meridian_proto::client::AuthChannel {
    let ch = meridian_proto::client::endpoint(addr, Some(&client_tls()))
        .expect("endpoint")
        .connect_lazy();
    meridian_proto::client::AuthChannel::new(
        ch,
        meridian_proto::client::Bearer::new(Some(token)).expect("bearer"),
    )
}

/// A started 3-region cluster with auth on (a fresh root token) and `more`
/// appended to its configuration after the `[auth]` table, ready: region eu
/// sees a leader for every group (asked as root, as status needs). Its
/// root token.
pub async fn auth_cluster(more: &str) -> (Cluster, String) {
    let root = meridian_node::auth::tokens::generate("root");
    let mut cl = Cluster::new(&format!(
        "[auth]\nroot_token_sha256 = \"{}\"\n{more}",
        meridian_node::auth::tokens::sha256_hex(&root)
    ));
    cl.start_all();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut a =
            meridian_proto::v1::admin_client::AdminClient::new(auth_chan(&cl.grpc[0], &root));
        if let Ok(s) = a
            .cluster_status(meridian_proto::v1::ClusterStatusRequest {})
            .await
        {
            if s.get_ref().groups.iter().all(|g| g.leader.is_some()) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "not ready:\n{}", cl.log(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (cl, root)
}

/// A token of principal `name` whose role (`<name>-role`, created here)
/// allows `actions` on `project` ("*": every project), made as root.
pub async fn role_token(
    cl: &Cluster,
    root: &str,
    name: &str,
    project: &str,
    actions: serde_json::Value,
) -> String {
    use meridian_proto::v1::{CreateTokenRequest, PutRoleRequest};
    let mut auth = meridian_proto::v1::auth_client::AuthClient::new(auth_chan(&cl.grpc[0], root));
    let rules = serde_json::json!({"rules": [{"effect": "allow", "projects": [project], "actions": actions}]});
    auth.put_role(PutRoleRequest {
        name: format!("{name}-role"),
        rules_json: rules.to_string(),
    })
    .await
    .expect("put the role");
    auth.create_token(CreateTokenRequest {
        principal: name.into(),
        roles: vec![format!("{name}-role")],
        ..Default::default()
    })
    .await
    .expect("create the token")
    .into_inner()
    .token
}

pub fn fast_opts() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_millis(500),
        attempt_timeout: Duration::from_secs(6),
        attempts_max: 12,
        backoff_base: Duration::from_millis(25),
        backoff_max: Duration::from_millis(500),
        probe_interval: Duration::from_secs(2),
        token: None,
        tls: Some(client_tls()),
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.procs.iter_mut() {
            if let Some(mut c) = p.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A `meridian.v1.Config` client of one region's gRPC address.
pub type ConfigClient = meridian_proto::v1::config_client::ConfigClient<tonic::transport::Channel>;

pub async fn config_client(addr: &str) -> ConfigClient {
    ConfigClient::new(channel(addr).await)
}

/// The stable reason a gRPC error carries in its metadata.
pub fn reason(s: &tonic::Status) -> String {
    s.metadata()
        .get("meridian-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
        .to_string()
}

/// A Config write's put of `v` (JSON) at `key`.
pub fn put_op(key: &str, v: &serde_json::Value) -> meridian_proto::v1::ConfigOp {
    use meridian_proto::v1::{config_op, ConfigOp, PutOp};
    ConfigOp {
        op: Some(config_op::Op::Put(PutOp {
            key: key.into(),
            value_json: v.to_string(),
            if_version: None,
            secret: None,
        })),
    }
}
