//! Network plumbing shared by the aigw services: one port serving gRPC and HTTP/1.1
//! (plain, or TLS with ALPN h2 + http/1.1) with a bounded graceful drain, and the TLS
//! configurations built from PEM files — the server side (`--tls-cert/--tls-key`) and
//! the client side for control-plane URLs (`--control-plane-ca`, else the webpki roots).
//! One TLS stack: rustls with ring.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tower::ServiceExt as _;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {path}: {reason}")]
    File { flag: &'static str, path: String, reason: String },
    #[error("{0}")]
    Config(String),
}

pub mod client;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server TLS from a PEM certificate chain and key; ALPN h2 then http/1.1 (gRPC and
/// REST on one port).
pub fn server_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let file_err = |flag, path: &Path, reason: String| TlsError::File { flag, path: path.display().to_string(), reason };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_err("--tls-cert", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err("--tls-cert", cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err("--tls-key", key, e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| TlsError::Config(format!("--tls-cert/--tls-key: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Root certificates from a PEM bundle (`--control-plane-ca`).
pub fn roots_from_pem(pem: &[u8]) -> Result<rustls::RootCertStore, TlsError> {
    roots_named(pem, "--control-plane-ca")
}

/// Root certificates from a PEM bundle; errors name it `what`.
pub fn roots_named(pem: &[u8], what: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem) {
        let c = c.map_err(|e| TlsError::Config(format!("{what}: {e}")))?;
        roots.add(c).map_err(|e| TlsError::Config(format!("{what}: {e}")))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Config(format!("{what}: no certificate in the bundle")));
    }
    Ok(roots)
}

/// A rustls client configuration trusting `ca_pem` (a PEM bundle named `what` in errors).
pub fn client_tls(ca_pem: &[u8], what: &str) -> Result<rustls::ClientConfig, TlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots_named(ca_pem, what)?)
        .with_no_client_auth())
}

/// A connector for tonic channels to `http://` or `https://` control-plane URLs. `https`
/// is verified against `ca_pem` (a PEM bundle) when given, else the webpki (Mozilla)
/// roots; ALPN offers h2 only (gRPC).
pub fn grpc_connector(ca_pem: Option<&[u8]>) -> Result<hyper_rustls::HttpsConnector<HttpConnector>, TlsError> {
    grpc_connector_named(ca_pem, "--control-plane-ca", Duration::from_secs(5))
}

/// [`grpc_connector`], naming the CA bundle `what` in errors, with its own TCP connect timeout.
pub fn grpc_connector_named(
    ca_pem: Option<&[u8]>,
    what: &str,
    connect_timeout: Duration,
) -> Result<hyper_rustls::HttpsConnector<HttpConnector>, TlsError> {
    let roots = ca_pem.map_or(client::Roots::Webpki, |pem| client::Roots::Pem { pem, what });
    client::connector(
        &client::Options::default()
            .roots(roots)
            .alpn(client::Alpn::H2)
            .connect_timeout(connect_timeout)
            .tcp_keepalive(Duration::from_secs(30)),
    )
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` (plain, or TLS when `tls` is set; HTTP/1.1 and h2 either
/// way) until `shutdown` resolves, then lets open connections finish for at most `drain`.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| app.clone().oneshot(req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let result = match acceptor {
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(s), svc).into_owned()).await,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "tls handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "tls handshake timed out");
                        return;
                    }
                },
                None => watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned()).await,
            };
            if let Err(e) = result {
                tracing::trace!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => tracing::info!("drain timeout reached"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_without_a_certificate_is_named_in_the_error() {
        let e = client_tls(b"not a pem", "OTEL_EXPORTER_OTLP_CERTIFICATE").err().unwrap().to_string();
        assert_eq!(e, "OTEL_EXPORTER_OTLP_CERTIFICATE: no certificate in the bundle");
        let e = grpc_connector_named(Some(b""), "X_CA", Duration::from_secs(1)).err().unwrap().to_string();
        assert!(e.starts_with("X_CA: "), "{e}");
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        assert!(client_tls(ck.cert.pem().as_bytes(), "X_CA").is_ok());
    }

    #[test]
    fn pem_files_and_bundles() {
        let dir = std::env::temp_dir().join(format!("aigw-net-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let cfg = server_tls(&cert, &key).unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        let e = server_tls(&dir.join("missing.pem"), &key).unwrap_err().to_string();
        assert!(e.starts_with("--tls-cert") && e.contains("missing.pem"), "{e}");
        let e = server_tls(&key, &key).unwrap_err().to_string();
        assert!(e.contains("no certificate"), "{e}");
        assert_eq!(roots_from_pem(ck.cert.pem().as_bytes()).unwrap().len(), 1);
        assert!(roots_from_pem(b"not pem").is_err());
        assert!(grpc_connector(Some(b"")).is_err());
        assert!(grpc_connector(None).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
