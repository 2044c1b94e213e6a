//! `cargo xtask`: the README's two commands (rust-analyzer's pattern: project
//! tasks in Rust, run through a cargo alias in `.cargo/config.toml`).
//!
//! - `cargo xtask dev [ARGS]`: set up what is missing, then start the local
//!   3-region cluster (`meridian dev ARGS`).
//! - `cargo xtask test [ARGS]`: set up what is missing, then run every test
//!   (`cargo test --workspace ARGS -- --show-output`) and print one closing
//!   total over every test binary. CI (`.ci/run`) runs this.
//!
//! Set-up is `scripts/setup.sh`: it checks for each tool (clang and
//! libclang, protoc, etcd, Python's gRPC and OpenFeature packages) and
//! installs only what is missing, so running it every time costs a second.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask dev [ARGS]   set up what is missing, start the local 3-region cluster\n       \
         cargo xtask test [ARGS]  set up what is missing, run every test"
    );
    ExitCode::from(2)
}

/// The workspace root (this crate's parent directory).
fn root() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    dir.parent().map_or(dir.clone(), PathBuf::from)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// Runs `scripts/setup.sh`; false if it failed (it said why).
fn setup() -> bool {
    eprintln!("xtask: checking what this machine still lacks (scripts/setup.sh)");
    match Command::new("bash")
        .arg("scripts/setup.sh")
        .current_dir(root())
        .status()
    {
        Ok(s) => s.success(),
        Err(e) => {
            eprintln!("xtask: cannot run bash scripts/setup.sh: {e}");
            false
        }
    }
}

fn dev(args: &[String]) -> ExitCode {
    if !setup() {
        return ExitCode::FAILURE;
    }
    let status = Command::new(cargo())
        .args(["run", "--package", "meridian", "--", "dev"])
        .args(args)
        .current_dir(root())
        .status();
    exit_of(status)
}

fn exit_of(status: std::io::Result<std::process::ExitStatus>) -> ExitCode {
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => ExitCode::from(u8::try_from(s.code().unwrap_or(1)).unwrap_or(1)),
        Err(e) => {
            eprintln!("xtask: cannot run cargo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sums `test result: ok. P passed; F failed; ...` lines.
#[derive(Default, Debug, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
}

impl Totals {
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        let count = |what: &str| -> u64 {
            rest.split(';')
                .find_map(|part| {
                    let part = part
                        .trim()
                        .trim_start_matches("ok.")
                        .trim_start_matches("FAILED.");
                    part.trim().strip_suffix(what)?.trim().parse().ok()
                })
                .unwrap_or(0)
        };
        self.passed += count("passed");
        self.failed += count("failed");
    }
}

fn test(args: &[String]) -> ExitCode {
    if !setup() {
        return ExitCode::FAILURE;
    }
    let mut child = match Command::new(cargo())
        .args(["test", "--workspace"])
        .args(args)
        .args(["--", "--show-output"])
        .current_dir(root())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xtask: cannot run cargo test: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut totals = Totals::default();
    if let Some(out) = child.stdout.take() {
        let mut stdout = std::io::stdout();
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            totals.add_line(&line);
            let _ = writeln!(stdout, "{line}");
        }
    }
    let status = child.wait();
    // One closing total over every test binary (the doc-test runs with 0
    // tests come last otherwise).
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    exit_of(status)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("dev") => dev(&args[1..]),
        Some("test") => test(&args[1..]),
        _ => usage(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_every_binarys_result_line() {
        let mut t = Totals::default();
        for line in [
            "test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.2s",
            "running 3 tests",
            "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.0s",
        ] {
            t.add_line(line);
        }
        assert_eq!(
            t,
            Totals {
                passed: 14,
                failed: 1
            }
        );
    }
}
