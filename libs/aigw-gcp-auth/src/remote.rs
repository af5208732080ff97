//! The client of `aigw.tokencache.v1.TokenCacheService` (the proxy's `--token-cache`).
//!
//! A remote fetch asks the service; when the service cannot answer (unreachable, TLS
//! or node-token refused, timeout, overloaded) the token is minted locally instead and
//! the service is left alone for [`COOLDOWN_MS`]: a request never fails because the
//! cache is down. The outage is logged once per transition (down / back) and every
//! fallback is counted. An answer that minting itself failed (the token endpoint's
//! reason) is not an outage: it is returned as is, and nothing is minted locally.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aigw_proto::tokencache::v1::token_cache_service_client::TokenCacheServiceClient;
use aigw_proto::tokencache::v1::{GetAccessTokenRequest, InvalidateAccessTokenRequest};
use futures_util::future::BoxFuture;
use tokio::sync::OnceCell;
use tonic::transport::{Channel, Endpoint};

use crate::cache::{Fetcher, Stats, inc};
use crate::error::GcpAuthError;
use crate::token::{AccessToken, Clock, from_timestamp};

/// How long a down token cache is skipped before it is tried again.
pub const COOLDOWN_MS: u64 = 5_000;
/// Per-call deadline. The service may wait for another replica's mint (≤ ~12 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const INVALIDATE_TIMEOUT: Duration = Duration::from_secs(3);

/// `--token-cache` and the TLS / node-token settings shared with `--config-service`.
#[derive(Clone, Default)]
pub struct TokenCacheOptions {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// Sent as metadata `x-node-token`.
    pub node_token: Option<String>,
    /// PEM bundle to verify an `https://` service (`--control-plane-ca`); default:
    /// the webpki (Mozilla) roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TokenCacheOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCacheOptions")
            .field("url", &self.url)
            .field("node_token", &self.node_token.as_ref().map(|_| "<redacted>"))
            .field("ca_pem", &self.ca_pem.as_ref().map(|c| c.len()))
            .finish()
    }
}

/// One connection (lazy, multiplexed) to the token-cache service, shared by every
/// remote source of a process.
pub struct RemoteClient {
    url: String,
    endpoint: Endpoint,
    /// Trusts `--control-plane-ca`, else the webpki (Mozilla) roots; h2 (gRPC).
    connector: aigw_net::client::HttpsConnector,
    node_token: Option<tonic::metadata::AsciiMetadataValue>,
    channel: OnceCell<Channel>,
    up: AtomicBool,
    retry_at_ms: AtomicU64,
    clock: Arc<dyn Clock>,
    stats: Arc<Stats>,
}

impl RemoteClient {
    /// Checks the options (URL, CA bundle, node token); connects on first use.
    pub fn new(opts: &TokenCacheOptions, clock: Arc<dyn Clock>, stats: Arc<Stats>) -> Result<RemoteClient, GcpAuthError> {
        let url = opts.url.trim_end_matches('/').to_owned();
        let uri: http::Uri = url.parse().map_err(|_| GcpAuthError::Config(format!("--token-cache {url:?} is not a URL")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(GcpAuthError::Config(format!("--token-cache {url:?} must be http://HOST:PORT or https://HOST:PORT")));
        }
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| GcpAuthError::Config(format!("--token-cache {url:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true);
        let connector = aigw_net::grpc_connector_named(opts.ca_pem.as_deref(), "control-plane CA bundle", CONNECT_TIMEOUT)
            .map_err(|e| GcpAuthError::Config(e.to_string()))?;
        let node_token = match &opts.node_token {
            Some(t) => Some(t.parse().map_err(|_| GcpAuthError::Config("--node-token must be printable ASCII".into()))?),
            None => None,
        };
        Ok(RemoteClient {
            url,
            endpoint,
            connector,
            node_token,
            channel: OnceCell::new(),
            up: AtomicBool::new(true),
            retry_at_ms: AtomicU64::new(0),
            clock,
            stats,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// False while the service is in its cooldown after a failure.
    pub fn available(&self) -> bool {
        self.clock.now_ms() >= self.retry_at_ms.load(Ordering::Relaxed)
    }

    async fn client(&self) -> TokenCacheServiceClient<Channel> {
        let ch = self.channel.get_or_init(|| async { self.endpoint.connect_with_connector_lazy(self.connector.clone()) }).await;
        TokenCacheServiceClient::new(ch.clone())
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(t) = &self.node_token {
            req.metadata_mut().insert("x-node-token", t.clone());
        }
        req
    }

    fn mark_down(&self, why: &str) {
        self.retry_at_ms.store(self.clock.now_ms() + COOLDOWN_MS, Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(url = %self.url, reason = %why, "token cache unavailable: minting gcp tokens locally until it is back");
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(url = %self.url, "token cache reachable again");
        }
    }

    /// Asks the service for a token. `Ok(None)` = the service is unavailable (fall back).
    async fn get(&self, req: GetAccessTokenRequest) -> Result<Option<AccessToken>, GcpAuthError> {
        if !self.available() {
            return Ok(None);
        }
        let mut client = self.client().await;
        match client.get_access_token(self.request(req)).await {
            Ok(resp) => {
                let r = resp.into_inner();
                let (Some(exp), false) = (r.expire_time.as_ref(), r.access_token.is_empty()) else {
                    self.mark_down("answer without a token");
                    return Ok(None);
                };
                let expires_at = from_timestamp(exp);
                let refresh_at = r.refresh_time.as_ref().map(from_timestamp).unwrap_or(expires_at);
                self.mark_up();
                inc(&self.stats.remote_fetches);
                Ok(Some(AccessToken::new(r.access_token, expires_at, refresh_at)))
            }
            Err(status) if is_mint_failure(&status) => {
                self.mark_up();
                Err(GcpAuthError::Remote { message: status.message().to_owned() })
            }
            Err(status) => {
                self.mark_down(&format!("{:?}: {}", status.code(), crate::error::sanitize(status.message(), 200)));
                Ok(None)
            }
        }
    }

    async fn invalidate(&self, req: InvalidateAccessTokenRequest) {
        if !self.available() {
            return;
        }
        let mut client = self.client().await;
        match tokio::time::timeout(INVALIDATE_TIMEOUT, client.invalidate_access_token(self.request(req))).await {
            Ok(Ok(_)) => self.mark_up(),
            Ok(Err(status)) => self.mark_down(&format!("{:?}: {}", status.code(), crate::error::sanitize(status.message(), 200))),
            Err(_) => self.mark_down("invalidate timed out"),
        }
    }
}

/// The service's answers that mean "minting failed" (the token endpoint's verdict) or
/// "your credential is invalid": falling back to a local mint would fail the same way.
fn is_mint_failure(s: &tonic::Status) -> bool {
    matches!(s.code(), tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument)
}

/// Fetches through the service, minting with `local` when it is unavailable.
pub(crate) struct RemoteFetcher {
    pub(crate) remote: Arc<RemoteClient>,
    pub(crate) local: Arc<dyn Fetcher>,
    pub(crate) request: GetAccessTokenRequest,
    pub(crate) stats: Arc<Stats>,
}

impl Fetcher for RemoteFetcher {
    fn fetch(&self) -> BoxFuture<'static, Result<AccessToken, GcpAuthError>> {
        let (remote, local, req, stats) = (self.remote.clone(), self.local.clone(), self.request.clone(), self.stats.clone());
        Box::pin(async move {
            match remote.get(req).await? {
                Some(t) => Ok(t),
                None => {
                    inc(&stats.remote_fallbacks);
                    local.fetch().await
                }
            }
        })
    }

    fn forget(&self, token: &AccessToken) -> BoxFuture<'static, ()> {
        let r = &self.request;
        let req = InvalidateAccessTokenRequest {
            credential: r.credential.clone(),
            scopes: r.scopes.clone(),
            expire_early_secs: r.expire_early_secs,
            max_ttl: r.max_ttl,
            access_token: token.secret().to_owned(),
        };
        let remote = self.remote.clone();
        Box::pin(async move { remote.invalidate(req).await })
    }
}
