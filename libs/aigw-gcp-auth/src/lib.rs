//! GCP access tokens for aigw (design: `docs/gcp-auth.md`).
//!
//! Use from the proxy:
//! ```ignore
//! // once per process (inside the Tokio runtime):
//! let gcp = GcpAuth::new(GcpAuthOptions { token_cache: Some(TokenCacheOptions { url, node_token, ca_pem }), ..Default::default() })?;
//! // when a snapshot is compiled (a bad JSON is a config error; names the problem, never the key):
//! let (cred, _origin) = Credential::resolve(auth.gcp.service_account_json.as_deref(), &|k| std::env::var(k).ok())?;
//! let source = gcp.source(cred, TokenSettings { scopes: None, ttl: TtlPolicy { expire_early_secs, max_ttl } });
//! // per request:
//! let token = source.token().await?;            // Err → 500 naming client_email and the endpoint's reason
//! headers.insert(AUTHORIZATION, token.authorization_header().unwrap());
//! // after an upstream 401 with that token: drop it (here and in Redis), then retry once
//! // with source.token() when this says so (false: a fresh token was refused moments ago):
//! if source.reject(&token).await { /* send again with source.token().await? */ }
//! ```
//! Config validation alone: [`validate_service_account_json`].

pub mod account;
pub mod cache;
pub mod credential;
pub mod error;
pub mod flight;
mod mint;
pub mod remote;
pub mod token;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aigw_proto::tokencache::v1::GetAccessTokenRequest;
use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};

pub use account::{CLOUD_PLATFORM_SCOPE, ServiceAccount, validate_service_account_json};
pub use cache::{Fetcher, Stats, TokenSource};
pub use credential::{Credential, Origin};
pub use error::GcpAuthError;
pub use remote::{RemoteClient, TokenCacheOptions};
pub use token::{AccessToken, Clock, ManualClock, SystemClock, TtlPolicy};

/// Default deadline of one token-endpoint / metadata request.
pub const DEFAULT_MINT_TIMEOUT: Duration = Duration::from_secs(10);

/// Process-wide settings.
#[derive(Debug, Clone)]
pub struct GcpAuthOptions {
    /// `--token-cache`: fetch through aigw-token-cache (service-account credentials
    /// only; metadata-server tokens are always fetched locally: the metadata server is
    /// itself a per-machine cache).
    pub token_cache: Option<TokenCacheOptions>,
    pub clock: Arc<dyn Clock>,
    pub mint_timeout: Duration,
}

impl Default for GcpAuthOptions {
    fn default() -> Self {
        GcpAuthOptions { token_cache: None, clock: Arc::new(SystemClock), mint_timeout: DEFAULT_MINT_TIMEOUT }
    }
}

/// What a route asks of its credential.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TokenSettings {
    /// None: the service-account JSON's `scope`, else cloud-platform.
    pub scopes: Option<Vec<String>>,
    pub ttl: TtlPolicy,
}

/// Hands out one [`TokenSource`] per distinct (credential, scopes, TTL settings) and
/// shares its HTTP client, token-cache connection and [`Stats`]. Sources live as long as
/// someone holds them (a compiled snapshot); an equal request while one is alive gets
/// the same source, so config reloads keep their cached tokens.
pub struct GcpAuth {
    http: mint::HttpClient,
    remote: Option<Arc<RemoteClient>>,
    clock: Arc<dyn Clock>,
    mint_timeout: Duration,
    stats: Arc<Stats>,
    sources: Mutex<HashMap<String, cache::WeakTokenSource>>,
}

impl GcpAuth {
    pub fn new(opts: GcpAuthOptions) -> Result<GcpAuth, GcpAuthError> {
        let stats = Arc::new(Stats::default());
        let remote = match &opts.token_cache {
            Some(o) => Some(Arc::new(RemoteClient::new(o, opts.clock.clone(), stats.clone())?)),
            None => None,
        };
        Ok(GcpAuth {
            http: mint::http_client(),
            remote,
            clock: opts.clock,
            mint_timeout: opts.mint_timeout,
            stats,
            sources: Mutex::new(HashMap::new()),
        })
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The source for `cred` with `settings` (the same one while it is alive).
    pub fn source(&self, cred: Credential, settings: TokenSettings) -> TokenSource {
        let scopes = settings.scopes.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| cred.default_scopes());
        let key = cache_key(&cred, &scopes, settings.ttl);
        let mut map = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(&key).and_then(cache::WeakTokenSource::upgrade) {
            return s;
        }
        map.retain(|_, w| w.is_alive());
        let source = self.build(cred, scopes, settings.ttl);
        map.insert(key, source.downgrade());
        source
    }

    fn build(&self, cred: Credential, scopes: Vec<String>, ttl: TtlPolicy) -> TokenSource {
        let who = cred.who();
        let local: Arc<dyn Fetcher> = Arc::new(LocalFetcher {
            http: self.http.clone(),
            cred: cred.clone(),
            scopes: scopes.clone(),
            ttl,
            clock: self.clock.clone(),
            timeout: self.mint_timeout,
            stats: self.stats.clone(),
        });
        let fetcher = match (&self.remote, &cred) {
            (Some(remote), Credential::ServiceAccount(sa)) => Arc::new(remote::RemoteFetcher {
                remote: remote.clone(),
                local,
                request: GetAccessTokenRequest {
                    credential: sa.json().to_owned(),
                    scopes,
                    expire_early_secs: Some(ttl.expire_early_secs as i64),
                    max_ttl: ttl.max_ttl.map(|m| m as i64),
                },
                stats: self.stats.clone(),
            }) as Arc<dyn Fetcher>,
            _ => local,
        };
        TokenSource::new(who, fetcher, self.clock.clone(), self.stats.clone())
    }

    /// A source that always mints in this process (the token-cache service's fallback).
    pub fn local_source(&self, cred: Credential, settings: TokenSettings) -> TokenSource {
        let scopes = settings.scopes.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| cred.default_scopes());
        let who = cred.who();
        let local = Arc::new(LocalFetcher {
            http: self.http.clone(),
            cred,
            scopes,
            ttl: settings.ttl,
            clock: self.clock.clone(),
            timeout: self.mint_timeout,
            stats: self.stats.clone(),
        });
        TokenSource::new(who, local, self.clock.clone(), self.stats.clone())
    }

    /// Mints one token now, bypassing every cache (the token-cache service's Redis path).
    pub async fn mint(&self, cred: &Credential, scopes: &[String], ttl: TtlPolicy) -> Result<AccessToken, GcpAuthError> {
        mint_counted(&self.http, cred, scopes, ttl, self.clock.as_ref(), self.mint_timeout, &self.stats).await
    }
}

/// Cache identity: SHA-256 over the credential's identity (the SHA-256 of its JSON, or
/// the metadata server URL), the scopes and the TTL settings. Never the key in clear.
pub fn cache_key(cred: &Credential, scopes: &[String], ttl: TtlPolicy) -> String {
    let mut h = Sha256::new();
    match cred {
        Credential::ServiceAccount(sa) => {
            h.update(b"sa\0");
            h.update(sa.identity());
        }
        Credential::Metadata { base_url } => {
            h.update(b"md\0");
            h.update(base_url.as_bytes());
        }
    }
    let mut scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    scopes.sort_unstable();
    scopes.dedup();
    h.update(format!("\0{}\0{}\0{}", scopes.join(" "), ttl.expire_early_secs, ttl.max_ttl.map(|m| m.to_string()).unwrap_or_default()));
    hex::encode(h.finalize())
}

async fn mint_counted(
    http: &mint::HttpClient,
    cred: &Credential,
    scopes: &[String],
    ttl: TtlPolicy,
    clock: &dyn Clock,
    timeout: Duration,
    stats: &Stats,
) -> Result<AccessToken, GcpAuthError> {
    match mint::mint(http, cred, scopes, ttl, clock, timeout).await {
        Ok(t) => {
            cache::inc(&stats.mints);
            tracing::info!(who = %cred.who(), token_fp = %t.fingerprint(), expires_at_ms = t.expires_at_ms(),
                refresh_at_ms = t.refresh_at_ms(), "minted gcp access token");
            Ok(t)
        }
        Err(e) => {
            cache::inc(&stats.mint_failures);
            Err(e)
        }
    }
}

struct LocalFetcher {
    http: mint::HttpClient,
    cred: Credential,
    scopes: Vec<String>,
    ttl: TtlPolicy,
    clock: Arc<dyn Clock>,
    timeout: Duration,
    stats: Arc<Stats>,
}

impl Fetcher for LocalFetcher {
    fn fetch(&self) -> BoxFuture<'static, Result<AccessToken, GcpAuthError>> {
        let (http, cred, scopes, ttl, clock, timeout, stats) =
            (self.http.clone(), self.cred.clone(), self.scopes.clone(), self.ttl, self.clock.clone(), self.timeout, self.stats.clone());
        Box::pin(async move { mint_counted(&http, &cred, &scopes, ttl, clock.as_ref(), timeout, &stats).await })
    }
}
