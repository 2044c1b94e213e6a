//! `meridian dev`: a local 3-region cluster in one process tree, with its
//! certificates, keyring and region configs written under a directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use meridian_node::NodeConfig;

const DEV_REGIONS: [&str; 3] = ["eu", "us", "ap"];

/// Write the dev cluster's certificates and configs under `dir`.
pub fn dev_configs(dir: &Path, base_port: u16) -> Result<Vec<PathBuf>> {
    let certs = dir.join("certs");
    if !certs.join("ca.pem").exists() {
        let names: Vec<String> = DEV_REGIONS.iter().map(|s| s.to_string()).collect();
        meridian_node::tls::generate_dev_certs(&certs, &names, &[], &[], false)?;
    }
    // The cluster's root credential, made on its first start (the way etcd
    // and Consul bootstrap): the secret in a 0600 file, only its hash in
    // the regions' configs.
    let root_file = dir.join("root.token");
    let root = match std::fs::read_to_string(&root_file) {
        Ok(t) => t.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let t = meridian_node::auth::tokens::generate(meridian_node::auth::tokens::ROOT_ID);
            crate::auth_cmd::write_private(&root_file, &format!("{t}\n"))?;
            t
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", root_file.display())),
    };
    let root_hash = meridian_node::auth::tokens::sha256_hex(&root);
    // The keyring of secrets' key-encryption keys, shared by the regions
    // (one file here; in production a copy in each region).
    let keyring = dir.join("keyring.toml");
    if !keyring.exists() {
        meridian_node::secrets::keyring::FileKeyring::create(&keyring)?;
    }
    let mut regions = String::new();
    for (i, r) in DEV_REGIONS.iter().enumerate() {
        let i = i as u16;
        regions.push_str(&format!(
            "[[regions]]\nname = \"{r}\"\npeer = \"127.0.0.1:{}\"\ngrpc = \"127.0.0.1:{}\"\nhttp = \"127.0.0.1:{}\"\n\n",
            base_port + 101 + i,
            base_port + 1 + i,
            base_port + 201 + i
        ));
    }
    let mut out = Vec::new();
    for r in DEV_REGIONS {
        let text = format!(
            "# Region {r} of the local development cluster (written by `meridian dev`).\n\
             region = \"{r}\"\ndata_dir = \"data/{r}\"\n\n[tls]\nca_cert = \"certs/ca.pem\"\n\
             cert = \"certs/{r}.pem\"\nkey = \"certs/{r}-key.pem\"\n\n\
             [api_tls]\ncert = \"certs/{r}-api.pem\"\nkey = \"certs/{r}-api-key.pem\"\n\
             client_ca = \"certs/ca.pem\"\n\n[auth]\nroot_token_sha256 = \"{root_hash}\"\n\n\
             [secrets]\nkeyring_file = \"keyring.toml\"\n\n\
             # Impressions show within 2 s (production default: 10 s).\n\
             [flags]\nimpressions_flush_ms = 2000\n\n{regions}"
        );
        let path = dir.join(format!("{r}.toml"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        out.push(path);
    }
    Ok(out)
}

pub async fn dev(dir: &Path, base_port: u16, fresh: bool) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if fresh {
        let data = dir.join("data");
        if data.exists() {
            std::fs::remove_dir_all(&data)
                .with_context(|| format!("removing {}", data.display()))?;
        }
    }
    let configs = dev_configs(dir, base_port)?;
    let mut nodes = Vec::new();
    for path in &configs {
        let cfg = NodeConfig::load(path)?;
        nodes.push(
            meridian_node::start(cfg)
                .await
                .with_context(|| format!("starting the region of {}", path.display()))?,
        );
    }
    let endpoints: Vec<String> = nodes.iter().map(|n| n.grpc_addr.to_string()).collect();
    println!();
    println!(
        "Meridian dev cluster: 3 regions on loopback, data in {}",
        dir.display()
    );
    for n in &nodes {
        match n.http_addr {
            Some(h) => println!(
                "  region {:<3} gRPC {}  HTTP https://{h}",
                n.region, n.grpc_addr
            ),
            None => println!("  region {:<3} gRPC {}", n.region, n.grpc_addr),
        }
    }
    println!();
    println!(
        "Authentication is on. The root credential is in {} (mode 0600):",
        dir.join("root.token").display()
    );
    println!(
        "  export MERIDIAN_TOKEN=$(cat {})   # or: meridian auth login --token-file {}",
        dir.join("root.token").display(),
        dir.join("root.token").display()
    );
    println!(
        "The client APIs speak TLS with certificates from the cluster CA {}:",
        dir.join("certs/ca.pem").display()
    );
    println!(
        "  export MERIDIAN_CACERT={}",
        dir.join("certs/ca.pem").display()
    );
    println!();
    println!("Try it (in another terminal):");
    let ep = if base_port == 7000 {
        String::new()
    } else {
        format!(" --endpoints {}", endpoints.join(","))
    };
    println!("  meridian{ep} put app/feature-x on        # namespace eu (homed in eu)");
    println!("  meridian{ep} get app/feature-x");
    println!("  meridian{ep} -n us put svc/timeout-ms 250  # namespace us (homed in us)");
    println!("  meridian{ep} watch app/                    # prints every change");
    println!("  meridian{ep} cluster status");
    println!("  meridian{ep} config create shop/prod --home us");
    println!("  meridian{ep} config set shop/prod services.payment.max_connections 100");
    println!("  meridian{ep} config get shop/prod services.payment -o yaml");
    if let Some(h) = nodes.first().and_then(|n| n.http_addr) {
        println!("  curl --cacert $MERIDIAN_CACERT -H \"Authorization: Bearer $MERIDIAN_TOKEN\" https://{h}/v1/config/shop/prod/services.payment");
    }
    println!();
    println!("Namespaces: eu, us, ap (quorum) and eu-async, us-async, ap-async. Ctrl-C stops.");
    tokio::signal::ctrl_c().await?;
    println!("stopping");
    for n in nodes {
        n.stop().await;
    }
    Ok(())
}
