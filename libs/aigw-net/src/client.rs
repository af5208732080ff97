//! The one builder of outbound HTTP(S) clients: upstream providers, the http-logger, GCP's
//! token endpoint, OTLP over HTTP, and the connectors of gRPC channels (config service,
//! token cache, OTLP over gRPC). Every client gets the same TCP settings (`TCP_NODELAY`,
//! a connect timeout), rustls with ring, and one of three trust choices: the webpki roots,
//! a PEM bundle, or — `ssl_verify: false` — any certificate chain while still checking
//! that the server holds the key it presented.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::{TlsError, client_tls, provider};

pub type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;
pub type HttpsClient<B> = Client<HttpsConnector, B>;

/// Which certificates a client trusts.
#[derive(Debug, Clone, Copy, Default)]
pub enum Roots<'a> {
    /// The webpki (Mozilla) roots.
    #[default]
    Webpki,
    /// A PEM bundle; `what` names it in errors (`--control-plane-ca`).
    Pem { pem: &'a [u8], what: &'a str },
    /// Any chain (`ssl_verify: false`); handshake signatures are still verified.
    AnyChain,
}

/// Which protocols ALPN offers on `https://` (plain `http://` always speaks HTTP/1.1,
/// unless `H2`, which is prior-knowledge h2 as gRPC needs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Alpn {
    #[default]
    Http1,
    Http1AndH2,
    /// gRPC.
    H2,
}

/// A client certificate and its key (PEM), with the names errors give them (mutual TLS,
/// e.g. etcd's `--client-cert-auth`).
#[derive(Clone, Copy)]
pub struct Identity<'a> {
    pub cert_pem: &'a [u8],
    pub cert_what: &'a str,
    pub key_pem: &'a [u8],
    pub key_what: &'a str,
}

impl std::fmt::Debug for Identity<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("cert", &self.cert_what).field("key", &self.key_what).finish_non_exhaustive()
    }
}

/// How a client connects and pools.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    pub roots: Roots<'a>,
    /// A client certificate to present (with [`Roots::Webpki`] or [`Roots::Pem`]).
    pub identity: Option<Identity<'a>>,
    pub alpn: Alpn,
    pub connect_timeout: Duration,
    /// TCP keepalive probes on idle connections.
    pub tcp_keepalive: Option<Duration>,
    /// How long an idle pooled connection is kept (None: hyper's default, 90 s).
    pub idle_timeout: Option<Duration>,
    /// Idle connections kept per host; 0 closes each connection after its response.
    pub max_idle_per_host: usize,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            roots: Roots::Webpki,
            identity: None,
            alpn: Alpn::Http1,
            connect_timeout: Duration::from_secs(5),
            tcp_keepalive: None,
            idle_timeout: None,
            max_idle_per_host: usize::MAX,
        }
    }
}

impl<'a> Options<'a> {
    pub fn roots(mut self, r: Roots<'a>) -> Self {
        self.roots = r;
        self
    }
    pub fn identity(mut self, id: Identity<'a>) -> Self {
        self.identity = Some(id);
        self
    }
    pub fn alpn(mut self, a: Alpn) -> Self {
        self.alpn = a;
        self
    }
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
    pub fn tcp_keepalive(mut self, d: Duration) -> Self {
        self.tcp_keepalive = Some(d);
        self
    }
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = Some(d);
        self
    }
    pub fn max_idle_per_host(mut self, n: usize) -> Self {
        self.max_idle_per_host = n;
        self
    }
}

type Builder = hyper_rustls::HttpsConnectorBuilder<hyper_rustls::builderstates::WantsSchemes>;

/// A rustls configuration trusting `roots` and presenting `id`.
fn with_identity(roots: Roots<'_>, id: Identity<'_>) -> Result<rustls::ClientConfig, TlsError> {
    let store = match roots {
        Roots::Webpki => rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() },
        Roots::Pem { pem, what } => crate::roots_named(pem, what)?,
        Roots::AnyChain => return Err(TlsError::Config(format!("{}: a client certificate needs verified servers", id.cert_what))),
    };
    let certs = CertificateDer::pem_slice_iter(id.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Config(format!("{}: {e}", id.cert_what)))?;
    if certs.is_empty() {
        return Err(TlsError::Config(format!("{}: no certificate in the file", id.cert_what)));
    }
    let key = PrivateKeyDer::from_pem_slice(id.key_pem).map_err(|e| TlsError::Config(format!("{}: {e}", id.key_what)))?;
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(store)
        .with_client_auth_cert(certs, key)
        .map_err(|e| TlsError::Config(format!("{}/{}: {e}", id.cert_what, id.key_what)))
}

fn tls_builder(roots: Roots<'_>, identity: Option<Identity<'_>>) -> Result<Builder, TlsError> {
    let b = hyper_rustls::HttpsConnectorBuilder::new();
    if let Some(id) = identity {
        return Ok(b.with_tls_config(with_identity(roots, id)?));
    }
    Ok(match roots {
        Roots::Webpki => b.with_provider_and_webpki_roots(provider()).map_err(|e| TlsError::Config(e.to_string()))?,
        Roots::Pem { pem, what } => b.with_tls_config(client_tls(pem, what)?),
        Roots::AnyChain => {
            let p = provider();
            b.with_tls_config(
                rustls::ClientConfig::builder_with_provider(p.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| TlsError::Config(e.to_string()))?
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyChain(p)))
                    .with_no_client_auth(),
            )
        }
    })
}

/// The connector of `opts`: for a hyper client, or a tonic channel
/// (`Endpoint::connect_with_connector`) with [`Alpn::H2`].
pub fn connector(opts: &Options<'_>) -> Result<HttpsConnector, TlsError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(opts.connect_timeout));
    http.set_keepalive(opts.tcp_keepalive);
    let b = tls_builder(opts.roots, opts.identity)?.https_or_http();
    Ok(match opts.alpn {
        Alpn::Http1 => b.enable_http1().wrap_connector(http),
        Alpn::Http1AndH2 => b.enable_http1().enable_http2().wrap_connector(http),
        Alpn::H2 => b.enable_http2().wrap_connector(http),
    })
}

/// A pooled HTTP(S) client with `opts`.
pub fn https<B>(opts: &Options<'_>) -> Result<HttpsClient<B>, TlsError>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut b = Client::builder(hyper_util::rt::TokioExecutor::new());
    b.pool_timer(hyper_util::rt::TokioTimer::new()).pool_max_idle_per_host(opts.max_idle_per_host);
    if let Some(d) = opts.idle_timeout {
        b.pool_idle_timeout(d);
    }
    if opts.alpn == Alpn::H2 {
        b.http2_only(true);
    }
    Ok(b.build(connector(opts)?))
}

/// `ssl_verify: false`: accept any certificate chain, but still check that the server
/// holds the key it presented (handshake signatures).
#[derive(Debug)]
struct AnyChain(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyChain {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
