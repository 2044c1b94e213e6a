//! Starting and stopping the systems under test as real processes on
//! loopback: Meridian regions (`meridian serve`, RocksDB, QUIC with mutual
//! TLS, optionally through `meridian-netlab`) and etcd members (Debian's
//! `etcd` binary). Both write to data directories under one temporary
//! directory on the same file system, both fsync every acknowledged write, and
//! both are killed with SIGKILL when dropped, so no run leaves a server behind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use meridian_netlab::{Lab, LinkSpec, Region};
use meridian_proto::client::{AuthChannel, Bearer};
use meridian_proto::v1::admin_client::AdminClient;
use meridian_proto::v1::ClusterStatusRequest;

/// A root credential (`mrd_root_<secret>`) and the hex SHA-256 a region's
/// `[auth] root_token_sha256` names it by.
fn root_credential() -> (String, String) {
    let secret: [u8; 32] = rand::random();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let token = format!("mrd_root_{}", hex(&secret));
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let sha = hex(digest.as_ref());
    (token, sha)
}

/// How the benchmark reaches a Meridian region (`127.0.0.1:port`):
/// TCP_NODELAY on, a 2 s connect timeout.
pub fn endpoint(addr: &str) -> Result<tonic::transport::Endpoint> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2)),
    )
}

/// A lazily connected channel to `addr` whose calls carry `token`.
pub fn channel(addr: &str, token: Option<&str>) -> Result<AuthChannel> {
    Ok(AuthChannel::new(
        endpoint(addr)?.connect_lazy(),
        Bearer::new(token)?,
    ))
}

/// Region names, in region-id order.
pub const REGIONS: [&str; 3] = ["eu", "us", "ap"];

/// A loopback port free for both TCP and UDP (gRPC and QUIC can share it).
pub fn free_port() -> Result<u16> {
    // Ports handed out by this process: the OS may give a released port
    // again, and a cluster's config refuses an address used twice.
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..1000 {
        let t = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = t.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && GIVEN
                .lock()
                .map_err(|_| anyhow::anyhow!("port set poisoned"))?
                .insert(port)
        {
            return Ok(port);
        }
    }
    bail!("no free loopback port found in 1000 tries")
}

/// Resident set size of a process, in bytes (Linux `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS has no value")?
        .parse()
        .context("VmRSS value")?;
    Ok(kb * 1024)
}

fn kill(p: &mut Option<Child>) {
    if let Some(mut c) = p.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The `meridian` binary the benchmark runs. Built with the same profile as
/// this binary, beside it (`cargo run --release -p meridian-bench` builds it
/// when `$CARGO` is set, so the figures always measure the current source).
pub fn meridian_bin(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let me = std::env::current_exe().context("current_exe")?;
    let dir = me.parent().context("binary has no directory")?;
    let bin = dir.join("meridian");
    if let Ok(cargo) = std::env::var("CARGO") {
        let profile = dir.file_name().and_then(|s| s.to_str()).unwrap_or("debug");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&root)
            .args(["build", "-q", "-p", "meridian", "--bin", "meridian"]);
        if profile == "release" {
            cmd.arg("--release");
        }
        // The same target directory as this binary: `<target>/<profile>/`.
        if let Some(target) = dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        let st = cmd.status().context("running cargo build for `meridian`")?;
        if !st.success() {
            bail!("cargo build -p meridian failed ({st})");
        }
    }
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p meridian` or pass --meridian-bin",
            bin.display()
        );
    }
    Ok(bin)
}

/// WAN latency between the regions of a cluster run through the lab.
#[derive(Clone, Debug)]
pub struct Wan {
    /// One-way latency per pair of region indexes.
    pub links: Vec<(usize, usize, u64)>,
}

impl Wan {
    /// One-way ms between regions `a` and `b` (0 for a region to itself).
    pub fn one_way_ms(&self, a: usize, b: usize) -> u64 {
        self.links
            .iter()
            .find(|&&(x, y, _)| (x, y) == (a, b) || (y, x) == (a, b))
            .map_or(0, |l| l.2)
    }
}

/// A Meridian cluster of 1 to 3 regions, one `meridian serve` process each.
pub struct MeridianCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// gRPC address per region (`127.0.0.1:port`).
    pub grpc: Vec<String>,
    /// HTTP API address per region (`127.0.0.1:port`, plaintext).
    pub http: Vec<String>,
    configs: Vec<PathBuf>,
    procs: Vec<Option<Child>>,
    /// The network lab between regions, when the cluster runs through one.
    pub lab: Option<Lab>,
    /// The root credential, when the regions run with auth on.
    pub root_token: Option<String>,
}

impl MeridianCluster {
    /// Start `regions` regions and wait until every group has a leader.
    pub async fn start(bin: &Path, regions: usize, wan: Option<&Wan>) -> Result<MeridianCluster> {
        MeridianCluster::start_with(bin, regions, wan, false).await
    }

    /// `start`, with access control on (`auth`: a root credential in
    /// `root_token`) or off, as every other workload runs.
    pub async fn start_with(
        bin: &Path,
        regions: usize,
        wan: Option<&Wan>,
        auth: bool,
    ) -> Result<MeridianCluster> {
        let (root_token, auth_toml) = if auth {
            let (t, sha) = root_credential();
            (Some(t), format!("[auth]\nroot_token_sha256 = \"{sha}\"\n"))
        } else {
            (None, "[auth]\nenabled = false\n".to_string())
        };
        anyhow::ensure!((1..=3).contains(&regions), "1 to 3 regions");
        let dir = tempfile::tempdir()?;
        let names: Vec<&str> = REGIONS[..regions].to_vec();
        let out = Command::new(bin)
            .args(["certs", "--out"])
            .arg(dir.path().join("certs"))
            .arg("--regions")
            .arg(names.join(","))
            .output()
            .with_context(|| format!("running {} certs", bin.display()))?;
        anyhow::ensure!(out.status.success(), "meridian certs failed: {out:?}");
        // The keyring of secrets' key-encryption keys, made by the CLI as
        // an operator would (the `secrets` workload seals values with it).
        let out = Command::new(bin)
            .args(["secrets", "keyring", "create"])
            .arg(dir.path().join("keyring.toml"))
            .output()
            .with_context(|| format!("running {} secrets keyring create", bin.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "meridian secrets keyring create failed: {out:?}"
        );
        let mut grpc = Vec::new();
        let mut http = Vec::new();
        let mut peer_real = Vec::new();
        let mut peer_front = Vec::new();
        for _ in 0..regions {
            grpc.push(free_port()?);
            http.push(free_port()?);
            peer_real.push(free_port()?);
            peer_front.push(if wan.is_some() { free_port()? } else { 0 });
        }
        let lab = match wan {
            None => None,
            Some(w) => {
                let lab = Lab::start(
                    (0..regions)
                        .map(|i| Region {
                            name: names[i].to_string(),
                            front: SocketAddr::from(([127, 0, 0, 1], peer_front[i])),
                            real: SocketAddr::from(([127, 0, 0, 1], peer_real[i])),
                        })
                        .collect(),
                )
                .await?;
                for &(a, b, ms) in &w.links {
                    lab.set_both(
                        names[a],
                        names[b],
                        LinkSpec {
                            latency_ms: ms,
                            ..Default::default()
                        },
                    )?;
                }
                Some(lab)
            }
        };
        let mut table = String::new();
        for i in 0..regions {
            let peer = if wan.is_some() {
                peer_front[i]
            } else {
                peer_real[i]
            };
            table.push_str(&format!(
                "[[regions]]\nname = \"{}\"\ngrpc = \"127.0.0.1:{}\"\nhttp = \"127.0.0.1:{}\"\npeer = \"127.0.0.1:{peer}\"\n",
                names[i], grpc[i], http[i]
            ));
        }
        let mut configs = Vec::new();
        for (i, r) in names.iter().enumerate() {
            let bind = if wan.is_some() {
                format!("peer_bind = \"127.0.0.1:{}\"\n", peer_real[i])
            } else {
                String::new()
            };
            let text = format!(
                "region = \"{r}\"\ndata_dir = \"data/{r}\"\n{bind}[tls]\nca_cert = \"certs/ca.pem\"\ncert = \"certs/{r}.pem\"\nkey = \"certs/{r}-key.pem\"\n[api_tls]\nplaintext = true\n[secrets]\nkeyring_file = \"keyring.toml\"\nallow_plaintext = true\n{auth_toml}{table}[log]\nlevel = \"warn\"\n"
            );
            let p = dir.path().join(format!("{r}.toml"));
            std::fs::write(&p, text)?;
            configs.push(p);
        }
        let mut c = MeridianCluster {
            dir,
            bin: bin.to_path_buf(),
            grpc: grpc.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            http: http.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            configs,
            procs: (0..regions).map(|_| None).collect(),
            lab,
            root_token,
        };
        for i in 0..regions {
            c.start_region(i)?;
        }
        for i in 0..regions {
            c.wait_ready(i, Duration::from_secs(60)).await?;
        }
        // Steady state before anything is measured: after start-up any region
        // may win a group's first election, and leadership moves home after
        // `home_return_delay_ms` (a transfer mid-run would be measured).
        for g in 0..regions {
            c.wait_home_leader(g, Duration::from_secs(60)).await?;
        }
        Ok(c)
    }

    fn start_region(&mut self, i: usize) -> Result<()> {
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", REGIONS[i])))?;
        let child = Command::new(&self.bin)
            .args(["serve", "--config"])
            .arg(&self.configs[i])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning meridian serve")?;
        self.procs[i] = Some(child);
        Ok(())
    }

    /// The last lines a region logged (for error messages).
    pub fn log_tail(&self, i: usize) -> String {
        let s = std::fs::read_to_string(self.dir.path().join(format!("{}.log", REGIONS[i])))
            .unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Wait until region `i` answers and sees a leader for every group.
    pub async fn wait_ready(&mut self, i: usize, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(Ok(Some(st))) = self.procs[i].as_mut().map(|c| c.try_wait()) {
                bail!(
                    "region {} exited ({st}) while starting; its log ends:\n{}",
                    REGIONS[i],
                    self.log_tail(i)
                );
            }
            let ok = async {
                let mut a = self.admin(i)?;
                let s = a
                    .cluster_status(ClusterStatusRequest {})
                    .await?
                    .into_inner();
                anyhow::Ok(s.groups.iter().all(|g| g.leader.is_some()))
            }
            .await
            .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "region {} not ready within {within:?}; its log ends:\n{}",
                    REGIONS[i],
                    self.log_tail(i)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The Admin service of region `i`, as root when auth is on.
    pub fn admin(&self, i: usize) -> Result<AdminClient<AuthChannel>> {
        Ok(AdminClient::new(channel(
            &self.grpc[i],
            self.root_token.as_deref(),
        )?))
    }

    /// The region whose node leads the group homed at region `home`.
    pub async fn leader_of(&self, home: usize, ask: usize) -> Result<usize> {
        let mut a = self.admin(ask)?;
        let s = a
            .cluster_status(ClusterStatusRequest {})
            .await?
            .into_inner();
        let g = s
            .groups
            .iter()
            .find(|g| g.group as usize == home)
            .context("no such group")?;
        Ok(g.leader.context("group has no leader")? as usize)
    }

    /// Waits until the group homed at `home` is led from its home region
    /// (after start-up any region may win the first election; leadership
    /// returns home once the home has looked healthy for a while).
    pub async fn wait_home_leader(&self, home: usize, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(l) = self.leader_of(home, home).await {
                if l == home {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "group {} not led from its home within {within:?}",
                    REGIONS[home]
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.procs[i].as_ref().map(|c| c.id())
    }

    /// SIGKILL: no shutdown code runs in the region.
    pub fn kill9(&mut self, i: usize) {
        kill(&mut self.procs[i]);
    }
}

impl Drop for MeridianCluster {
    fn drop(&mut self) {
        for p in self.procs.iter_mut() {
            kill(p);
        }
    }
}

/// An etcd cluster of 1 or 3 members on loopback, from the `etcd` binary.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    /// Client URL per member (`http://127.0.0.1:port`).
    pub endpoints: Vec<String>,
    procs: Vec<Option<Child>>,
}

/// Where etcd is: `$ETCD_BIN`, else `etcd` on the PATH (Debian: `etcd-server`).
pub fn etcd_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("ETCD_BIN") {
        return Ok(PathBuf::from(p));
    }
    for d in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(d).join("etcd");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("etcd not found: install Debian's etcd-server (`apt-get install etcd-server`, or `bash scripts/setup.sh`) or set ETCD_BIN")
}

impl EtcdCluster {
    /// Start `members` members and wait until the cluster has a leader.
    pub async fn start(members: usize) -> Result<EtcdCluster> {
        let bin = etcd_bin()?;
        let dir = tempfile::tempdir()?;
        let mut client = Vec::new();
        let mut peer = Vec::new();
        for _ in 0..members {
            client.push(free_port()?);
            peer.push(free_port()?);
        }
        let initial: Vec<String> = (0..members)
            .map(|i| format!("m{i}=http://127.0.0.1:{}", peer[i]))
            .collect();
        let mut procs = Vec::new();
        for i in 0..members {
            let log = std::fs::File::create(dir.path().join(format!("m{i}.log")))?;
            let child = Command::new(&bin)
                .arg(format!("--name=m{i}"))
                .arg(format!(
                    "--data-dir={}",
                    dir.path().join(format!("m{i}")).display()
                ))
                .arg(format!(
                    "--listen-client-urls=http://127.0.0.1:{}",
                    client[i]
                ))
                .arg(format!(
                    "--advertise-client-urls=http://127.0.0.1:{}",
                    client[i]
                ))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{}", peer[i]))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                    peer[i]
                ))
                .arg(format!("--initial-cluster={}", initial.join(",")))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=meridian-bench")
                .arg("--logger=zap")
                .arg("--log-level=warn")
                // 4 GiB: the write workloads put hundreds of thousands of
                // versions; the 2 GiB default could raise NOSPACE mid-run.
                .arg("--quota-backend-bytes=4294967296")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("spawning {}", bin.display()))?;
            procs.push(Some(child));
        }
        let c = EtcdCluster {
            dir,
            endpoints: client
                .iter()
                .map(|p| format!("http://127.0.0.1:{p}"))
                .collect(),
            procs,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..members {
            loop {
                if c.leader_index_via(i).await.is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    let log = std::fs::read_to_string(c.dir.path().join(format!("m{i}.log")))
                        .unwrap_or_default();
                    bail!("etcd member {i} not ready within 60 s; log:\n{log}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(c)
    }

    /// Index of the leader, as member `i` sees it.
    pub async fn leader_index_via(&self, i: usize) -> Result<usize> {
        let mut c = etcd_client::Client::connect(
            [self.endpoints[i].as_str()],
            Some(etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(2))),
        )
        .await?;
        let st = c.status().await?;
        let leader = st.leader();
        anyhow::ensure!(leader != 0, "no leader yet");
        // Map member id to index through the member list's client URLs.
        let members = c.member_list().await?;
        for m in members.members() {
            if m.id() == leader {
                for u in m.client_urls() {
                    if let Some(idx) = self.endpoints.iter().position(|e| e == u) {
                        return Ok(idx);
                    }
                }
            }
        }
        bail!("leader {leader:x} not among the members' client URLs")
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.procs[i].as_ref().map(|c| c.id())
    }

    pub fn kill9(&mut self, i: usize) {
        kill(&mut self.procs[i]);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for p in self.procs.iter_mut() {
            kill(p);
        }
    }
}
