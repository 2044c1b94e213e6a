//! Certificates and TLS for the inter-region transport. `meridian certs`
//! creates a development cluster CA and, per region, a peer certificate and
//! a client-API server certificate (rcgen), plus client certificates for
//! mutual TLS on the client APIs (`api_tls.rs` serves them); each region's
//! peer certificate names it as `<region>.meridian`. Both sides of
//! every QUIC connection present a certificate and verify the other's against
//! the cluster CA (mutual TLS), and the region a peer claims must be the one
//! its certificate names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocol of the peer transport; a peer speaking anything else is refused.
pub const ALPN: &[u8] = b"meridian-peer/1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {cause}")]
    Read {
        path: PathBuf,
        /// In the message (not `source()`, which would print it twice in a chain).
        cause: std::io::Error,
    },
    #[error("cannot write {path}: {cause}")]
    Write {
        path: PathBuf,
        /// In the message (not `source()`, which would print it twice in a chain).
        cause: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("tls verifier: {0}")]
    Verifier(String),
    #[error(
        "bad region name {0:?}: a region name is 1-32 letters, digits or '-' (as in the config)"
    )]
    BadRegionName(String),
    #[error(
        "bad client name {0:?}: a client name is 1-32 letters, digits or '-' (it becomes the certificate's common name and file name)"
    )]
    BadClientName(String),
    #[error("{0} already exists: pass --force to replace it (and start a new CA), or choose another --out")]
    Exists(PathBuf),
    #[error("{present} exists but {missing} does not: cannot reuse half a CA; pass --force to start a new one")]
    HalfCa { present: PathBuf, missing: PathBuf },
}

/// The DNS name in region `name`'s certificate.
pub fn region_dns_name(name: &str) -> String {
    format!("{name}.meridian")
}

/// Write `text` to `path`; a private key (`private`) is readable by its
/// owner only (mode 0600), also when it replaces an existing file.
fn write_file(path: &Path, text: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    let err = |cause| TlsError::Write {
        path: path.to_path_buf(),
        cause,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if private {
            opts.mode(0o600);
            // `mode` applies only to a file it creates.
            if path.exists() {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(err)?;
            }
        }
    }
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}

/// Write `ca.pem`, `ca-key.pem`; for every region `<region>.pem`,
/// `<region>-key.pem` (the peer certificate) and `<region>-api.pem`,
/// `<region>-api-key.pem` (the client APIs' server certificate, also valid
/// for `api_hosts`); and `client-<name>.pem`, `client-<name>-key.pem` for
/// every client in `clients` (mutual TLS), all into `dir`; private keys
/// with mode 0600. An existing CA
/// there (both files) is reused, so regions can be added later. Nothing is
/// overwritten unless `force`, which starts a new CA and replaces every
/// file it writes. Returns every file written or reused, CA first.
pub fn generate_dev_certs(
    dir: &Path,
    regions: &[String],
    api_hosts: &[String],
    clients: &[String],
    force: bool,
) -> Result<Vec<PathBuf>, TlsError> {
    // Check everything before writing anything.
    for r in regions {
        if !crate::config::valid_name(r) {
            return Err(TlsError::BadRegionName(r.clone()));
        }
    }
    for c in clients {
        if !crate::config::valid_name(c) {
            return Err(TlsError::BadClientName(c.clone()));
        }
    }
    if !force {
        let leaves = regions
            .iter()
            .flat_map(|r| {
                [
                    format!("{r}.pem"),
                    format!("{r}-key.pem"),
                    format!("{r}-api.pem"),
                    format!("{r}-api-key.pem"),
                ]
            })
            .chain(
                clients
                    .iter()
                    .flat_map(|c| [format!("client-{c}.pem"), format!("client-{c}-key.pem")]),
            );
        for f in leaves {
            let p = dir.join(f);
            if p.exists() {
                return Err(TlsError::Exists(p));
            }
        }
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
        match (cert.exists(), key.exists()) {
            (true, false) => {
                return Err(TlsError::HalfCa {
                    present: cert,
                    missing: key,
                })
            }
            (false, true) => {
                return Err(TlsError::HalfCa {
                    present: key,
                    missing: cert,
                })
            }
            _ => {}
        }
    }
    std::fs::create_dir_all(dir).map_err(|cause| TlsError::Write {
        path: dir.to_path_buf(),
        cause,
    })?;
    let write = |name: &str, text: &str| -> Result<PathBuf, TlsError> {
        let path = dir.join(name);
        write_file(&path, text, name.ends_with("-key.pem"))?;
        Ok(path)
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Meridian development cluster CA");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key_path = dir.join("ca-key.pem");
    let ca_cert_path = dir.join("ca.pem");
    let ca_key = if !force && ca_key_path.exists() && ca_cert_path.exists() {
        let text = read(&ca_key_path)?;
        KeyPair::from_pem(&text)?
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params.self_signed(&key)?;
        write("ca.pem", &cert.pem())?;
        write("ca-key.pem", &key.serialize_pem())?;
        key
    };
    let issuer = Issuer::new(ca_params, ca_key);
    let mut out = vec![ca_cert_path, ca_key_path];
    for r in regions {
        // The peer certificate: it names the region, for both ends of QUIC.
        let dns = region_dns_name(r);
        let (cert, key) = issue_leaf(&issuer, &dns, std::slice::from_ref(&dns), Purpose::Peer)?;
        out.push(write(&format!("{r}.pem"), &cert)?);
        out.push(write(&format!("{r}-key.pem"), &key)?);
        // The client APIs' server certificate: the region's name, the
        // loopback names clients use in development, and `api_hosts`.
        let mut names = vec![dns, "localhost".into(), "127.0.0.1".into(), "::1".into()];
        names.extend(api_hosts.iter().cloned());
        let (cert, key) = issue_leaf(&issuer, &region_dns_name(r), &names, Purpose::Server)?;
        out.push(write(&format!("{r}-api.pem"), &cert)?);
        out.push(write(&format!("{r}-api-key.pem"), &key)?);
    }
    for c in clients {
        // A client certificate for mutual TLS on the client APIs; the
        // subject's common name is the principal (`api_tls.principal_from`).
        let (cert, key) = issue_leaf(&issuer, c, &[], Purpose::Client)?;
        out.push(write(&format!("client-{c}.pem"), &cert)?);
        out.push(write(&format!("client-{c}-key.pem"), &key)?);
    }
    Ok(out)
}

/// What a leaf certificate is for (its extended key usages).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// A region's peer certificate: both ends of a QUIC connection.
    Peer,
    /// A client API server.
    Server,
    /// A client of the client APIs.
    Client,
}

/// A new key pair and a certificate for it signed by `issuer`, with common
/// name `cn` and subject alternative names `names` (DNS names or IP
/// addresses); PEM texts (certificate, key).
fn issue_leaf(
    issuer: &Issuer<'_, KeyPair>,
    cn: &str,
    names: &[String],
    purpose: Purpose,
) -> Result<(String, String), TlsError> {
    let mut p = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.extended_key_usages = match purpose {
        Purpose::Peer => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Purpose::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Purpose::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|cause| TlsError::Read {
        path: path.to_path_buf(),
        cause,
    })
}

pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read(path)?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut text.as_bytes()).collect();
    let certs = certs.map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            reason: "no certificate in file".into(),
        });
    }
    Ok(certs)
}

pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = read(path)?;
    rustls_pemfile::private_key(&mut text.as_bytes())
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Pem {
            path: path.to_path_buf(),
            reason: "no private key in file".into(),
        })
}

/// This region's TLS material, loaded once.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca: Arc<rustls::RootCertStore>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

/// The CA certificates of a PEM file, as a root store.
pub(crate) fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

impl TlsMaterial {
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<TlsMaterial, TlsError> {
        Ok(TlsMaterial {
            ca: Arc::new(load_roots(ca)?),
            chain: load_certs(cert)?,
            key: Arc::new(load_key(key)?),
        })
    }

    pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Server side: present our certificate, require one signed by the CA.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.ca.clone(),
            Self::provider(),
        )
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }

    /// Client side: verify the server against the CA (and its region name),
    /// present our own certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.ca.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }
}

/// Is a (CA-verified) peer certificate issued to region `name`?
pub fn cert_is_for_region(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(server_name) = rustls::pki_types::ServerName::try_from(region_dns_name(name)) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&server_name).is_ok()
}
