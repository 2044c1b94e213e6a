//! TLS on the client APIs (gRPC and HTTP) and what a connection tells about
//! its client: the remote address, and the principal named by a verified
//! client certificate (mutual TLS).
//!
//! One accept loop serves both APIs: it accepts TCP connections, runs each
//! TLS handshake in its own task (bounded in number and in time, so a slow
//! or silent client holds up nobody), reads the principal from the client
//! certificate once per connection, and hands finished connections to the
//! server (tonic's `serve_with_incoming`, axum's `Listener`). Plaintext,
//! when a region's config says so, goes through the same loop.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use crate::config::{ApiTlsConfig, PrincipalFrom};
use crate::tls::{load_certs, load_key, load_roots, TlsError, TlsMaterial};

/// TLS handshakes in progress at once; more connections wait to start one.
const HANDSHAKES_MAX: usize = 1024;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Finished connections queued for the server.
const READY_MAX: usize = 256;
/// Pause after a failed accept (e.g. out of file descriptors), so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF_MS: u64 = 100;

/// ALPN of the gRPC API: HTTP/2 only.
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN of the HTTP API: HTTP/2, else HTTP/1.1.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// What a connection tells about its client.
#[derive(Clone, Debug)]
pub struct ClientConn {
    pub remote: SocketAddr,
    /// The principal named by the client's certificate, verified against
    /// `api_tls.client_ca`; None without one.
    pub cert_principal: Option<Arc<str>>,
    /// The connection is TLS (secrets may travel over it).
    pub tls: bool,
}

/// A region's client-API TLS settings, loaded.
#[derive(Clone)]
pub struct ApiTls {
    grpc: Arc<rustls::ServerConfig>,
    http: Arc<rustls::ServerConfig>,
    principal_from: PrincipalFrom,
}

impl ApiTls {
    /// None when the config says plaintext.
    pub fn load(cfg: &ApiTlsConfig) -> Result<Option<ApiTls>, TlsError> {
        let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) else {
            return Ok(None);
        };
        let chain = load_certs(cert)?;
        let key = load_key(key)?;
        let builder = rustls::ServerConfig::builder_with_provider(TlsMaterial::provider())
            .with_safe_default_protocol_versions()?;
        let builder = match &cfg.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = load_roots(ca)?;
                // A client certificate is optional (tokens work without
                // one), but one that is presented must verify.
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    TlsMaterial::provider(),
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let base = builder.with_single_cert(chain, key)?;
        let with_alpn = |alpn: &[&[u8]]| {
            let mut c = base.clone();
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Arc::new(c)
        };
        Ok(Some(ApiTls {
            grpc: with_alpn(ALPN_GRPC),
            http: with_alpn(ALPN_HTTP),
            principal_from: cfg.principal_from,
        }))
    }
}

/// Which API a listener serves (its ALPN).
#[derive(Clone, Copy, Debug)]
pub enum Api {
    Grpc,
    Http,
}

/// A client connection, plaintext or TLS.
pub struct ApiConn {
    io: Io,
    pub info: ClientConn,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for ApiConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ApiConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for ApiConn {
    type ConnectInfo = ClientConn;
    fn connect_info(&self) -> ClientConn {
        self.info.clone()
    }
}

/// Accept connections on `listener` until the returned receiver is
/// dropped; TLS handshakes (when `tls` is set) run concurrently.
pub fn accept(
    listener: TcpListener,
    tls: Option<ApiTls>,
    api: Api,
) -> mpsc::Receiver<std::io::Result<ApiConn>> {
    let (tx, rx) = mpsc::channel(READY_MAX);
    tokio::spawn(accept_loop(listener, tls, api, tx));
    rx
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<ApiTls>,
    api: Api,
    tx: mpsc::Sender<std::io::Result<ApiConn>>,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    let acceptor = tls.as_ref().map(|t| {
        tokio_rustls::TlsAcceptor::from(match api {
            Api::Grpc => t.grpc.clone(),
            Api::Http => t.http.clone(),
        })
    });
    let principal_from = tls
        .as_ref()
        .map_or(PrincipalFrom::SubjectCn, |t| t.principal_from);
    loop {
        let accepted = tokio::select! {
            // The server is gone: stop listening (and free the port).
            _ = tx.closed() => return,
            a = listener.accept() => a,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "client API accept failed");
                tokio::time::sleep(Duration::from_millis(ACCEPT_BACKOFF_MS)).await;
                continue;
            }
        };
        // Small responses must not wait for a delayed ACK (Nagle).
        let _ = stream.set_nodelay(true);
        let Some(acceptor) = acceptor.clone() else {
            let conn = ApiConn {
                io: Io::Plain(stream),
                info: ClientConn {
                    remote,
                    cert_principal: None,
                    tls: false,
                },
            };
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
            continue;
        };
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let hs = tokio::time::timeout(
                Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
                acceptor.accept(stream),
            )
            .await;
            let tls = match hs {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    // A client that does not speak TLS, or does not trust
                    // our certificate, or presents one we do not trust.
                    tracing::info!(%remote, error = %e, "client TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(%remote, "client TLS handshake timed out");
                    return;
                }
            };
            let cert_principal = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| match principal_of(c, principal_from) {
                    Ok(p) => Some(Arc::<str>::from(p)),
                    Err(why) => {
                        // Verified by the CA but naming nobody: the
                        // connection goes on without a certificate
                        // principal (a token still works).
                        tracing::info!(%remote, why, "client certificate names no principal");
                        None
                    }
                });
            let conn = ApiConn {
                io: Io::Tls(Box::new(tls)),
                info: ClientConn {
                    remote,
                    cert_principal,
                    tls: true,
                },
            };
            let _ = tx.send(Ok(conn)).await;
        });
    }
}

/// The principal a (verified) client certificate names.
pub fn principal_of(cert: &CertificateDer<'_>, from: PrincipalFrom) -> Result<String, String> {
    use x509_parser::extensions::GeneralName;
    let (_, x) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| format!("unparsable: {e}"))?;
    let name = match from {
        PrincipalFrom::SubjectCn => x
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        san => {
            let sans = x
                .subject_alternative_name()
                .map_err(|e| format!("bad subject alternative names: {e}"))?;
            sans.into_iter()
                .flat_map(|s| s.value.general_names.iter())
                .find_map(|n| match (san, n) {
                    (PrincipalFrom::SanDns, GeneralName::DNSName(d)) => Some(d.to_string()),
                    (PrincipalFrom::SanUri, GeneralName::URI(u)) => Some(u.to_string()),
                    (PrincipalFrom::SanEmail, GeneralName::RFC822Name(e)) => Some(e.to_string()),
                    _ => None,
                })
        }
    };
    match name {
        Some(n) if !n.is_empty() && n.len() <= 256 && !n.chars().any(char::is_control) => Ok(n),
        Some(_) => Err(format!(
            "its {from:?} is empty, too long or has control characters"
        )),
        None => Err(format!("it has no {from:?}")),
    }
}

/// The HTTP API's listener for `axum::serve`: connections from `accept`.
pub struct HttpListener {
    rx: mpsc::Receiver<std::io::Result<ApiConn>>,
    local: SocketAddr,
}

impl HttpListener {
    pub fn new(listener: TcpListener, tls: Option<ApiTls>) -> std::io::Result<HttpListener> {
        let local = listener.local_addr()?;
        Ok(HttpListener {
            rx: accept(listener, tls, Api::Http),
            local,
        })
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = ApiConn;
    type Addr = ClientConn;

    async fn accept(&mut self) -> (ApiConn, ClientConn) {
        loop {
            match self.rx.recv().await {
                Some(Ok(c)) => {
                    let info = c.info.clone();
                    return (c, info);
                }
                Some(Err(_)) => continue,
                // The accept loop ended (it only does when we are dropped).
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<ClientConn> {
        Ok(ClientConn {
            remote: self.local,
            cert_principal: None,
            tls: false,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, HttpListener>>
    for ClientConn
{
    fn connect_info(s: axum::serve::IncomingStream<'_, HttpListener>) -> ClientConn {
        s.remote_addr().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, sans: Vec<rcgen::SanType>) -> CertificateDer<'static> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut dn = rcgen::DistinguishedName::new();
        if !cn.is_empty() {
            dn.push(rcgen::DnType::CommonName, cn);
        }
        p.distinguished_name = dn;
        p.subject_alt_names = sans;
        let key = rcgen::KeyPair::generate().expect("key");
        p.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn the_principal_comes_from_the_configured_name() {
        let c = cert(
            "alice",
            vec![
                rcgen::SanType::DnsName("svc.example".try_into().expect("dns")),
                rcgen::SanType::URI("spiffe://prod/ns/shop/sa/api".try_into().expect("uri")),
                rcgen::SanType::Rfc822Name("ops@example.com".try_into().expect("email")),
            ],
        );
        assert_eq!(
            principal_of(&c, PrincipalFrom::SubjectCn).as_deref(),
            Ok("alice")
        );
        assert_eq!(
            principal_of(&c, PrincipalFrom::SanDns).as_deref(),
            Ok("svc.example")
        );
        assert_eq!(
            principal_of(&c, PrincipalFrom::SanUri).as_deref(),
            Ok("spiffe://prod/ns/shop/sa/api")
        );
        assert_eq!(
            principal_of(&c, PrincipalFrom::SanEmail).as_deref(),
            Ok("ops@example.com")
        );
        // A certificate without the configured name names nobody.
        let bare = cert("", vec![]);
        assert!(principal_of(&bare, PrincipalFrom::SubjectCn).is_err());
        assert!(principal_of(&bare, PrincipalFrom::SanUri).is_err());
        assert!(principal_of(
            &CertificateDer::from(vec![1, 2, 3]),
            PrincipalFrom::SubjectCn
        )
        .is_err());
    }
}
