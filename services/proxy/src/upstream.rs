//! Upstream HTTP clients. One client (with its own connection pool) per distinct
//! (origin, TLS verification, keepalive settings, connect timeout), shared across routes
//! and kept across snapshot swaps while any route still uses it, so pooled connections
//! survive config changes.
//!
//! `keepalive_pool` is a real cap: a semaphore with that many permits bounds the
//! requests in flight to the origin, and a permit is held until the response body ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::sync::Semaphore;

pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub origin: String,
    pub ssl_verify: bool,
    pub keepalive: bool,
    pub keepalive_timeout_ms: u64,
    pub keepalive_pool: u64,
    pub connect_timeout_ms: u64,
}

pub struct Upstream {
    pub key: ClientKey,
    pub client: HttpClient,
    pub permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("key", &self.key).finish()
    }
}

/// Hands out shared [`Upstream`]s by key.
#[derive(Default)]
pub struct Upstreams {
    cache: Mutex<HashMap<ClientKey, Weak<Upstream>>>,
    /// Health and counters of `ai-proxy-multi` instances by (route id, instance name):
    /// like the clients, they outlive a snapshot, so a config change neither forgives an
    /// ejected instance nor resets its counters (read when a route is compiled).
    pub health: aigw_balance::HealthRegistry,
}

impl Upstreams {
    pub fn get(&self, key: &ClientKey) -> Arc<Upstream> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = cache.get(key).and_then(Weak::upgrade) {
            return u;
        }
        cache.retain(|_, w| w.strong_count() > 0);
        let u = Arc::new(build(key));
        cache.insert(key.clone(), Arc::downgrade(&u));
        u
    }
}

fn build(key: &ClientKey) -> Upstream {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_millis(key.connect_timeout_ms)));
    let builder = if key.ssl_verify {
        hyper_rustls::HttpsConnectorBuilder::new().with_provider_and_webpki_roots(provider).expect("ring supports the default TLS versions")
    } else {
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoChainVerify(provider)))
            .with_no_client_auth();
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls)
    };
    let https = builder.https_or_http().enable_http1().enable_http2().wrap_connector(http);
    let mut cb = Client::builder(hyper_util::rt::TokioExecutor::new());
    cb.pool_timer(hyper_util::rt::TokioTimer::new());
    if key.keepalive {
        cb.pool_idle_timeout(Duration::from_millis(key.keepalive_timeout_ms)).pool_max_idle_per_host(key.keepalive_pool as usize);
    } else {
        cb.pool_max_idle_per_host(0);
    }
    Upstream {
        key: key.clone(),
        client: cb.build(https),
        permits: Arc::new(Semaphore::new(key.keepalive_pool.min(Semaphore::MAX_PERMITS as u64) as usize)),
    }
}

/// `ssl_verify: false`: accept any certificate chain, but still check that the server
/// holds the key it presented (handshake signatures).
#[derive(Debug)]
struct NoChainVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoChainVerify {
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
