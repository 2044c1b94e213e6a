//! `meridian dev`, as the README starts it: the three regions come up, serve,
//! and a Ctrl-C (SIGINT) stops them quietly (issue 19, item 14): exit code 0,
//! no WARN or ERROR line, no ANSI escape codes when stderr is not a terminal,
//! and no Rust debug forms (`Some(...)`) in the log.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bin;

/// A base port whose nine dev ports (base+1..=3, +101..=103, +201..=203) are
/// free now, for TCP and UDP.
fn free_base() -> u16 {
    let start = 21_000 + (std::process::id() % 200) as u16 * 30;
    for base in (start..29_000).step_by(300) {
        let ports: Vec<u16> = [1, 2, 3, 101, 102, 103, 201, 202, 203]
            .iter()
            .map(|o| base + o)
            .collect();
        let free = ports.iter().all(|p| {
            TcpListener::bind(("127.0.0.1", *p)).is_ok()
                && UdpSocket::bind(("127.0.0.1", *p)).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no free base port for `meridian dev` between {start} and 29000");
}

#[test]
fn dev_starts_serves_and_stops_quietly_on_ctrl_c() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = free_base();
    let mut child = Command::new(bin())
        .args(["dev", "--fresh", "--base-port", &base.to_string(), "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meridian dev");
    // Ready once it prints its banner's last line.
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("`meridian dev` prints its banner within 60 s");
        if line.contains("Ctrl-C stops") {
            break;
        }
    }
    // Auth is on: the root credential is in root.token (0600), and a
    // command without a credential is refused.
    let root_file = dir.path().join("root.token");
    let root = std::fs::read_to_string(&root_file).expect("dev wrote root.token");
    let root = root.trim().to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&root_file)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "root.token mode {mode:o}");
    }
    // The client APIs speak TLS with certificates from the dev CA.
    let ca = dir.path().join("certs/ca.pem");
    assert!(ca.exists(), "no dev CA at {}", ca.display());
    let no_creds = dir.path().join("no-credentials");
    let endpoints = format!("127.0.0.1:{},127.0.0.1:{}", base + 1, base + 2);
    let out = Command::new(bin())
        .args(["--endpoints", &endpoints, "put", "app/x", "on"])
        .env_remove("MERIDIAN_TOKEN")
        .env("MERIDIAN_CACERT", &ca)
        .env("MERIDIAN_CREDENTIALS", &no_creds)
        .output()
        .expect("put");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("UNAUTHENTICATED"),
        "a put without a credential: {err}"
    );
    // It serves: a put and a get through the CLI, with the root credential.
    let out = Command::new(bin())
        .args(["--endpoints", &endpoints, "put", "app/x", "on"])
        .env("MERIDIAN_TOKEN", &root)
        .env("MERIDIAN_CACERT", &ca)
        .output()
        .expect("put");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Let the regions exchange traffic for a moment (keep-alives, leases),
    // as a user's cluster would have before Ctrl-C: wait until a read in the
    // third region sees the put.
    let third = format!("127.0.0.1:{}", base + 3);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(bin())
            .args([
                "--endpoints",
                &third,
                "get",
                "app/x",
                "--consistency",
                "stale",
            ])
            .env("MERIDIAN_TOKEN", &root)
            .env("MERIDIAN_CACERT", &ca)
            .output()
            .expect("get");
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the third region never saw the put"
        );
    }

    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "`meridian dev` did not stop within 30 s of Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(status.success(), "exit status {status}; log:\n{stderr}");
    let loud: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(
        loud.is_empty(),
        "a clean Ctrl-C logged:\n{}",
        loud.join("\n")
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escape codes in a non-terminal log:\n{stderr}"
    );
    assert!(
        !stderr.contains("Some("),
        "a Rust debug form in the log:\n{stderr}"
    );
    println!(
        "meridian dev: stopped on Ctrl-C with exit 0 and {} log lines, none WARN or ERROR",
        stderr.lines().count()
    );
}
