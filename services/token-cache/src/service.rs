//! `aigw.tokencache.v1.TokenCacheService`: one mint per credential for the whole fleet.
//!
//! Per request (concurrent requests for one cache key on one replica share one run):
//! 1. Redis has a fresh token → return it. In its refresh window → return it, and one
//!    caller fleet-wide (whoever wins the lock) re-mints in the background.
//! 2. A mint failed in the last second (`:err`) → return that failure.
//! 3. Otherwise take the lock (`SET NX PX`, random fence): the winner mints, stores the
//!    token (fenced) and releases; the others poll every [`POLL`] for the token, the
//!    failure, or the lock's disappearance (then try again), for at most
//!    [`WAIT_BOUND`] — after which they mint directly rather than fail.
//! 4. Redis down at any step → mint directly (in-process single-flight cache).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aigw_gcp_auth::flight::SingleFlight;
use aigw_gcp_auth::token::{fingerprint, to_timestamp};
use aigw_gcp_auth::{AccessToken, Clock, Credential, GcpAuth, ServiceAccount, TokenSettings, TokenSource, TtlPolicy};
use aigw_proto::tokencache::v1::token_cache_service_server::TokenCacheService;
use aigw_proto::tokencache::v1::{
    GetAccessTokenRequest, GetAccessTokenResponse, InvalidateAccessTokenRequest, InvalidateAccessTokenResponse,
};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::metrics::{Metrics, inc};
use crate::store::Store;

const POLL: Duration = Duration::from_millis(25);
/// How long a caller waits for another replica's mint before minting itself.
pub const WAIT_BOUND: Duration = Duration::from_secs(12);
const MAX_PARSED: usize = 1024;

/// A validated request.
#[derive(Clone)]
struct Req {
    cred: Credential,
    who: String,
    scopes: Vec<String>,
    ttl: TtlPolicy,
    key: String,
}

/// What a run produced: a token, or a mint failure's message (FAILED_PRECONDITION).
type Outcome = Result<AccessToken, String>;

pub struct TokenCache {
    store: Store,
    gcp: GcpAuth,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    flights: SingleFlight<Outcome>,
    parsed: Mutex<HashMap<[u8; 32], Arc<ServiceAccount>>>,
    direct: Mutex<HashMap<String, TokenSource>>,
    refreshing: Mutex<HashSet<String>>,
}

impl TokenCache {
    pub fn new(store: Store, gcp: GcpAuth, metrics: Arc<Metrics>, clock: Arc<dyn Clock>) -> TokenCache {
        TokenCache {
            store,
            gcp,
            metrics,
            clock,
            flights: SingleFlight::default(),
            parsed: Mutex::new(HashMap::new()),
            direct: Mutex::new(HashMap::new()),
            refreshing: Mutex::new(HashSet::new()),
        }
    }

    pub fn gcp(&self) -> &GcpAuth {
        &self.gcp
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn parse(&self, credential: &str, scopes: &[String], early: Option<i64>, max_ttl: Option<i64>) -> Result<Req, Status> {
        if credential.trim().is_empty() {
            return Err(Status::invalid_argument("credential: a service account JSON is required"));
        }
        let expire_early_secs = match early {
            None => aigw_gcp_auth::token::DEFAULT_EXPIRE_EARLY_SECS,
            Some(e) if e >= 0 => e as u64,
            Some(_) => return Err(Status::invalid_argument("expire_early_secs: must be >= 0")),
        };
        let max_ttl = match max_ttl {
            None => None,
            Some(m) if m >= 1 => Some(m as u64),
            Some(_) => return Err(Status::invalid_argument("max_ttl: must be >= 1")),
        };
        let id: [u8; 32] = Sha256::digest(credential.as_bytes()).into();
        let cached = self.parsed.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned();
        let sa = match cached {
            Some(sa) => sa,
            None => {
                let sa = Arc::new(ServiceAccount::from_json(credential).map_err(|e| Status::invalid_argument(format!("credential: {e}")))?);
                let mut p = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
                if p.len() >= MAX_PARSED {
                    p.clear();
                }
                p.insert(id, sa.clone());
                sa
            }
        };
        let cred = Credential::ServiceAccount(sa);
        let scopes: Vec<String> = scopes.iter().filter(|s| !s.trim().is_empty()).cloned().collect();
        let scopes = if scopes.is_empty() { cred.default_scopes() } else { scopes };
        let ttl = TtlPolicy { expire_early_secs, max_ttl };
        let key = aigw_gcp_auth::cache_key(&cred, &scopes, ttl);
        Ok(Req { who: cred.who(), cred, scopes, ttl, key })
    }

    async fn get(self: &Arc<Self>, req: Req) -> Outcome {
        let me = self.clone();
        let key = req.key.clone();
        let who = req.who.clone();
        match self.flights.run(&key, move || async move { me.resolve(req).await }).await {
            Some((outcome, _)) => outcome,
            None => Err(format!("failed to get gcp access token for {who}: interrupted")),
        }
    }

    async fn resolve(self: Arc<Self>, req: Req) -> Outcome {
        let deadline = tokio::time::Instant::now() + WAIT_BOUND;
        let mut counted_miss = false;
        let mut counted_wait = false;
        loop {
            let Ok(entry) = self.store.read(&req.key).await else { return self.direct(&req).await };
            let now = self.clock.now_ms();
            if let Some(t) = entry.token {
                if now < t.refresh_at_ms() {
                    inc(&self.metrics.hits);
                    tracing::debug!(who = %req.who, key = %&req.key[..12], "token served from redis");
                    return Ok(t);
                }
                if now < t.usable_until_ms() {
                    inc(&self.metrics.hits);
                    self.refresh_ahead(&req);
                    return Ok(t);
                }
            }
            if let Some(message) = entry.error {
                return Err(message);
            }
            if !counted_miss {
                counted_miss = true;
                inc(&self.metrics.misses);
            }
            let fence = match self.store.try_lock(&req.key).await {
                Ok(f) => f,
                Err(_) => return self.direct(&req).await,
            };
            if let Some(fence) = fence {
                return self.mint_and_store(&req, &fence).await;
            }
            if !counted_wait {
                counted_wait = true;
                inc(&self.metrics.lock_waits);
                tracing::debug!(who = %req.who, key = %&req.key[..12], "another caller is minting: waiting for its token");
            }
            // Wait for the holder's token or failure, or for its lock to vanish.
            loop {
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(who = %req.who, "gave up waiting for another replica's mint: minting directly");
                    return self.direct(&req).await;
                }
                tokio::time::sleep(POLL).await;
                let Ok(e) = self.store.read(&req.key).await else { return self.direct(&req).await };
                if let Some(t) = e.token.filter(|t| self.clock.now_ms() < t.usable_until_ms()) {
                    return Ok(t);
                }
                if let Some(message) = e.error {
                    return Err(message);
                }
                if !e.locked {
                    break;
                }
            }
        }
    }

    async fn mint_and_store(&self, req: &Req, fence: &str) -> Outcome {
        match self.gcp.mint(&req.cred, &req.scopes, req.ttl).await {
            Ok(t) => {
                match self.store.store_release(&req.key, fence, &t).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(who = %req.who, "lock expired before the token was stored; not storing it"),
                    Err(_) => {}
                }
                Ok(t)
            }
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(error = %message, "mint failed");
                let _ = self.store.fail_release(&req.key, fence, &message).await;
                Err(message)
            }
        }
    }

    /// One background re-mint per key in this process, and only if this replica wins
    /// the fleet-wide lock.
    fn refresh_ahead(self: &Arc<Self>, req: &Req) {
        if !self.refreshing.lock().unwrap_or_else(|e| e.into_inner()).insert(req.key.clone()) {
            return;
        }
        let (me, req) = (self.clone(), req.clone());
        tokio::spawn(async move {
            if let Ok(Some(fence)) = me.store.try_lock(&req.key).await {
                inc(&me.metrics.refresh_ahead);
                tracing::debug!(who = %req.who, "token in its refresh window: re-minting ahead of expiry");
                match me.gcp.mint(&req.cred, &req.scopes, req.ttl).await {
                    Ok(t) => {
                        let _ = me.store.store_release(&req.key, &fence, &t).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "refresh-ahead mint failed; the current token keeps serving");
                        let _ = me.store.release(&req.key, &fence).await;
                    }
                }
            }
            me.refreshing.lock().unwrap_or_else(|e| e.into_inner()).remove(&req.key);
        });
    }

    /// Redis is unavailable: an in-process single-flight cache per key.
    async fn direct(&self, req: &Req) -> Outcome {
        inc(&self.metrics.direct);
        let src = {
            let mut d = self.direct.lock().unwrap_or_else(|e| e.into_inner());
            if d.len() >= MAX_PARSED && !d.contains_key(&req.key) {
                d.clear();
            }
            d.entry(req.key.clone())
                .or_insert_with(|| {
                    self.gcp.local_source(req.cred.clone(), TokenSettings { scopes: Some(req.scopes.clone()), ttl: req.ttl })
                })
                .clone()
        };
        src.token().await.map_err(|e| e.to_string())
    }

    async fn invalidate(&self, req: &Req, token: &str) -> bool {
        inc(&self.metrics.invalidations);
        let fp = fingerprint(token);
        let src = self.direct.lock().unwrap_or_else(|e| e.into_inner()).get(&req.key).cloned();
        if let Some(src) = src {
            src.invalidate(&AccessToken::new(token.to_owned(), 0, 0)).await;
        }
        let dropped = self.store.invalidate(&req.key, &fp).await.unwrap_or(false);
        tracing::info!(who = %req.who, token_fp = %fp, dropped, "token invalidated after an upstream 401");
        dropped
    }
}

/// The gRPC face of [`TokenCache`].
#[derive(Clone)]
pub struct TokenCacheGrpc(pub Arc<TokenCache>);

#[tonic::async_trait]
impl TokenCacheService for TokenCacheGrpc {
    #[tracing::instrument(name = "GetAccessToken", skip_all, fields(otel.kind = "server", rpc.system = "grpc", rpc.service = "aigw.tokencache.v1.TokenCacheService"))]
    async fn get_access_token(&self, request: Request<GetAccessTokenRequest>) -> Result<Response<GetAccessTokenResponse>, Status> {
        let tc = &self.0;
        inc(&tc.metrics.requests);
        let r = request.into_inner();
        let req = tc.parse(&r.credential, &r.scopes, r.expire_early_secs, r.max_ttl)?;
        match tc.get(req).await {
            Ok(t) => Ok(Response::new(GetAccessTokenResponse {
                access_token: t.secret().to_owned(),
                expire_time: Some(to_timestamp(t.expires_at_ms())),
                refresh_time: Some(to_timestamp(t.refresh_at_ms())),
            })),
            Err(message) => Err(Status::failed_precondition(message)),
        }
    }

    #[tracing::instrument(name = "InvalidateAccessToken", skip_all, fields(otel.kind = "server", rpc.system = "grpc", rpc.service = "aigw.tokencache.v1.TokenCacheService"))]
    async fn invalidate_access_token(
        &self,
        request: Request<InvalidateAccessTokenRequest>,
    ) -> Result<Response<InvalidateAccessTokenResponse>, Status> {
        let tc = &self.0;
        let r = request.into_inner();
        if r.access_token.is_empty() {
            return Err(Status::invalid_argument("access_token: is required"));
        }
        let req = tc.parse(&r.credential, &r.scopes, r.expire_early_secs, r.max_ttl)?;
        let invalidated = tc.invalidate(&req, &r.access_token).await;
        Ok(Response::new(InvalidateAccessTokenResponse { invalidated }))
    }
}
