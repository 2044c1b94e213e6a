//! `meridian-netlab`: run the network lab from a TOML file and take control
//! commands (see `Lab::command`) on a TCP control port, one per line, each
//! answered with one line (`ok`, the result, or `error: ...`).
//!
//! ```toml
//! control = "127.0.0.1:7300"
//! [[regions]]
//! name = "eu"
//! front = "127.0.0.1:7101"   # the `peer` address in the nodes' configuration
//! real = "127.0.0.1:7111"    # the eu node's `peer_bind`
//! [[links]]                  # optional; both directions
//! a = "eu"
//! b = "us"
//! latency_ms = 30
//! jitter_ms = 2
//! loss = 0.0
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use meridian_netlab::{Lab, LinkSpec, Region};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Parser)]
#[command(
    name = "meridian-netlab",
    about = "UDP relay between regions with latency, jitter, loss and cuts"
)]
struct Args {
    /// The lab's TOML file.
    config: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    control: SocketAddr,
    regions: Vec<RegionEntry>,
    #[serde(default)]
    links: Vec<LinkEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionEntry {
    name: String,
    front: SocketAddr,
    real: SocketAddr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkEntry {
    a: String,
    b: String,
    #[serde(default)]
    latency_ms: u64,
    #[serde(default)]
    jitter_ms: u64,
    #[serde(default)]
    loss: f64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let file: File =
        toml::from_str(&text).with_context(|| format!("parsing {}", args.config.display()))?;
    let regions = file
        .regions
        .into_iter()
        .map(|r| Region {
            name: r.name,
            front: r.front,
            real: r.real,
        })
        .collect();
    let lab = Arc::new(Lab::start(regions).await?);
    for l in &file.links {
        let spec = LinkSpec {
            latency_ms: l.latency_ms,
            jitter_ms: l.jitter_ms,
            loss: l.loss,
            cut: false,
        };
        lab.set_both(&l.a, &l.b, spec)?;
    }
    let listener = tokio::net::TcpListener::bind(file.control)
        .await
        .with_context(|| format!("binding the control port {}", file.control))?;
    eprintln!("meridian-netlab: relaying; control on {}", file.control);
    loop {
        let (sock, _) = listener.accept().await?;
        let lab = lab.clone();
        tokio::spawn(async move {
            let (r, mut w) = sock.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let answer = match lab.command(&line) {
                    Ok(a) => a.trim_end().to_string(),
                    Err(e) => format!("error: {e}"),
                };
                if w.write_all(format!("{answer}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}
