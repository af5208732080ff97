//! A TLS terminator in front of a plain listener — what a load balancer does in front of
//! aigw's data plane — for clients that insist on `https://` (boto3 sends a Bedrock API
//! key only over HTTPS). Self-signed for `127.0.0.1`/`localhost`; the CA PEM is written to
//! a file the client trusts. Bytes are copied both ways; nothing is read or changed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct TlsFront {
    pub url: String,
    /// The certificate (its own CA), PEM.
    pub ca_file: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    /// Listens on a free port and forwards every TLS connection to `target`.
    pub async fn start(target: SocketAddr, dir: &Path) -> TlsFront {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).expect("self-signed certificate");
        let ca_file = dir.join("tls-front-ca.pem");
        std::fs::write(&ca_file, cert.cert.pem()).expect("write CA");
        let der = rustls::pki_types::CertificateDer::from(cert.cert.der().to_vec());
        let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("key der");
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![der], key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind TLS front");
        let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(client).await else { return };
                    let Ok(mut up) = tokio::net::TcpStream::connect(target).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
        TlsFront { url, ca_file, task }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
