//! Fake Google: an OAuth token endpoint that verifies the service-account JWT (RS256
//! with the test account's public key, `iss`, `aud` = its own URL, grant type, `iat` /
//! `exp`, scope), a GCE metadata server, and a Vertex AI upstream (OpenAI-compatible
//! chat, streamed or not, and `:predict` embeddings) that accepts only bearer tokens
//! one of those two minted and that have not expired.
//!
//! The RSA keys are throwaway test keys committed under `testdata/` (ring cannot
//! generate RSA keys).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

use crate::fake::{AuthCheck, ProviderSpec, Recorded, chat_stream_chunks, percent_decode};

/// Throwaway RSA-2048 PKCS#8 test keys (see `testdata/README.md`).
pub const TEST_KEY_A: &str = include_str!("../testdata/gcp-TEST-ONLY-sa-key-a.pem");
pub const TEST_KEY_B: &str = include_str!("../testdata/gcp-TEST-ONLY-sa-key-b.pem");

pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A test service account: an e-mail and a key pair.
#[derive(Clone)]
pub struct TestAccount {
    pub client_email: String,
    pub private_key_pem: &'static str,
    public_der: Vec<u8>,
}

impl TestAccount {
    pub fn new(client_email: &str, private_key_pem: &'static str) -> TestAccount {
        let der = PrivateKeyDer::from_pem_slice(private_key_pem.as_bytes()).expect("test key PEM");
        let PrivateKeyDer::Pkcs8(p8) = der else { panic!("test keys are PKCS#8") };
        let pair = ring::signature::RsaKeyPair::from_pkcs8(p8.secret_pkcs8_der()).expect("test key loads");
        let public_der = ring::signature::KeyPair::public_key(&pair).as_ref().to_vec();
        TestAccount { client_email: client_email.to_owned(), private_key_pem, public_der }
    }

    /// `gw-test@aigw-test.iam.gserviceaccount.com` with key A.
    pub fn a() -> TestAccount {
        TestAccount::new("gw-test@aigw-test.iam.gserviceaccount.com", TEST_KEY_A)
    }

    /// The service-account JSON for `token_uri`, as Google's console writes it.
    pub fn json(&self, token_uri: &str) -> String {
        self.json_with(token_uri, json!({}))
    }

    /// [`TestAccount::json`] with extra / replaced fields (`null` removes one).
    pub fn json_with(&self, token_uri: &str, extra: Value) -> String {
        let mut v = json!({
            "type": "service_account", "project_id": "aigw-test", "private_key_id": "test-key-id",
            "private_key": self.private_key_pem, "client_email": self.client_email, "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": token_uri,
            "universe_domain": "googleapis.com"
        });
        for (k, x) in extra.as_object().cloned().unwrap_or_default() {
            if x.is_null() {
                v.as_object_mut().unwrap().remove(&k);
            } else {
                v[k] = x;
            }
        }
        v.to_string()
    }

    /// Lines of the key's base64 body: a log or message containing any of them leaks it.
    pub fn key_fragments(&self) -> Vec<&'static str> {
        self.private_key_pem.lines().filter(|l| !l.starts_with("-----") && l.len() > 20).collect()
    }
}

/// Tokens minted by the fake token endpoint and metadata server, with their expiry.
#[derive(Default)]
pub struct IssuedTokens {
    tokens: Mutex<HashMap<String, (Instant, String)>>,
    reject_once: Mutex<HashSet<String>>,
}

impl IssuedTokens {
    fn issue(&self, who: &str, expires_in: u64) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        let token = format!("ya29.fake-{n}-{nanos:x}-{}", std::process::id());
        self.tokens.lock().unwrap().insert(token.clone(), (Instant::now() + Duration::from_secs(expires_in), who.to_owned()));
        token
    }

    /// Who a live token was issued to; None when unknown or expired.
    pub fn holder(&self, token: &str) -> Option<String> {
        let t = self.tokens.lock().unwrap();
        let (exp, who) = t.get(token)?;
        (Instant::now() < *exp).then(|| who.clone())
    }

    /// Every token issued so far (to check that none leaks into logs).
    pub fn all(&self) -> Vec<String> {
        self.tokens.lock().unwrap().keys().cloned().collect()
    }

    pub fn count(&self) -> usize {
        self.tokens.lock().unwrap().len()
    }
}

/// How the fake token endpoint fails on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 400 `{"error":"invalid_grant", ...}`.
    InvalidGrant,
    /// 500 with a Google-style error.
    ServerError,
}

/// Blocks token requests while held; dropped = released.
pub struct Hold(Arc<tokio::sync::watch::Sender<bool>>);

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

type AsyncHandler = Arc<dyn Fn(Recorded) -> BoxFuture<'static, (StatusCode, &'static str, Bytes)> + Send + Sync>;

struct Served {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

async fn serve(handler: AsyncHandler) -> Served {
    serve_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake"), handler)
}

/// Serves `handler` on a listener the caller bound (e.g. `0.0.0.0:PORT` in a container).
fn serve_on(listener: tokio::net::TcpListener, handler: AsyncHandler) -> Served {
    let addr = listener.local_addr().expect("listener address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                        let rec = Recorded {
                            method: parts.method.to_string(),
                            path_and_query: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
                            version: parts.version,
                            headers: parts.headers,
                            body,
                        };
                        let (status, ct, body) = handler(rec).await;
                        Ok::<_, Infallible>(Response::builder().status(status).header("content-type", ct).body(Full::new(body)).unwrap())
                    }
                });
                let _ =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Served { addr, task }
}

fn json_reply(status: StatusCode, v: Value) -> (StatusCode, &'static str, Bytes) {
    (status, "application/json; charset=utf-8", Bytes::from(v.to_string()))
}

fn oauth_error(code: &str, description: &str) -> (StatusCode, &'static str, Bytes) {
    json_reply(StatusCode::BAD_REQUEST, json!({"error": code, "error_description": description}))
}

fn form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(&k.replace('+', " ")), percent_decode(&v.replace('+', " "))))
        .collect()
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64
}

struct TokenState {
    url: String,
    accounts: Mutex<HashMap<String, Vec<u8>>>,
    issued: Arc<IssuedTokens>,
    expires_in: AtomicU64,
    requests: AtomicUsize,
    mints: AtomicUsize,
    parked: AtomicUsize,
    failure: Mutex<Option<(Failure, usize)>>,
    delay: Mutex<Duration>,
    held: Arc<tokio::sync::watch::Sender<bool>>,
    scopes: Mutex<Vec<String>>,
}

/// The fake `https://oauth2.googleapis.com/token`.
pub struct FakeTokenEndpoint {
    served: Served,
    state: Arc<TokenState>,
}

impl Drop for FakeTokenEndpoint {
    fn drop(&mut self) {
        self.served.task.abort();
    }
}

impl FakeTokenEndpoint {
    /// Accepts assertions signed by `accounts`; tokens go into `issued`.
    pub async fn start(accounts: &[TestAccount], issued: Arc<IssuedTokens>) -> FakeTokenEndpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake");
        FakeTokenEndpoint::start_on(listener, None, accounts, issued)
    }

    /// [`FakeTokenEndpoint::start`] on a bound listener. `token_uri` is the URL the clients
    /// use (and the JWT's required `aud`) when it is not `http://{listener address}/token`,
    /// e.g. `http://fake-llm:8481/token` behind a container name.
    pub fn start_on(
        listener: tokio::net::TcpListener,
        token_uri: Option<&str>,
        accounts: &[TestAccount],
        issued: Arc<IssuedTokens>,
    ) -> FakeTokenEndpoint {
        let state_cell: Arc<Mutex<Option<Arc<TokenState>>>> = Arc::new(Mutex::new(None));
        let cell = state_cell.clone();
        let handler: AsyncHandler = Arc::new(move |rec| {
            let state = cell.lock().unwrap().clone().expect("state set before serving");
            Box::pin(async move { token_reply(&state, rec).await })
        });
        let served = serve_on(listener, handler);
        let state = Arc::new(TokenState {
            url: token_uri.map_or_else(|| format!("http://{}/token", served.addr), str::to_owned),
            accounts: Mutex::new(accounts.iter().map(|a| (a.client_email.clone(), a.public_der.clone())).collect()),
            issued,
            expires_in: AtomicU64::new(3599),
            requests: AtomicUsize::new(0),
            mints: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            failure: Mutex::new(None),
            delay: Mutex::new(Duration::ZERO),
            held: Arc::new(tokio::sync::watch::channel(false).0),
            scopes: Mutex::new(Vec::new()),
        });
        *state_cell.lock().unwrap() = Some(state.clone());
        FakeTokenEndpoint { served, state }
    }

    /// The `token_uri` to put in service-account JSONs (also the JWT's required `aud`).
    pub fn url(&self) -> String {
        self.state.url.clone()
    }

    /// Successful mints so far.
    pub fn mints(&self) -> usize {
        self.state.mints.load(Ordering::SeqCst)
    }

    /// Requests received (successful or not).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Requests currently blocked by a [`Hold`].
    pub fn parked(&self) -> usize {
        self.state.parked.load(Ordering::SeqCst)
    }

    /// `expires_in` of the next tokens (default 3599).
    pub fn set_expires_in(&self, secs: u64) {
        self.state.expires_in.store(secs, Ordering::SeqCst);
    }

    /// The next `times` requests fail this way.
    pub fn fail_next(&self, failure: Failure, times: usize) {
        *self.state.failure.lock().unwrap() = Some((failure, times));
    }

    /// Every answer waits this long first.
    pub fn set_delay(&self, d: Duration) {
        *self.state.delay.lock().unwrap() = d;
    }

    /// Blocks every request until the returned guard is dropped.
    pub fn hold(&self) -> Hold {
        self.state.held.send_replace(true);
        Hold(self.state.held.clone())
    }

    /// The `scope` claims of the assertions received.
    pub fn scopes_seen(&self) -> Vec<String> {
        self.state.scopes.lock().unwrap().clone()
    }
}

async fn token_reply(state: &TokenState, rec: Recorded) -> (StatusCode, &'static str, Bytes) {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let mut held = state.held.subscribe();
    if *held.borrow() {
        state.parked.fetch_add(1, Ordering::SeqCst);
        let _ = held.wait_for(|h| !*h).await;
        state.parked.fetch_sub(1, Ordering::SeqCst);
    }
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    {
        let mut f = state.failure.lock().unwrap();
        if let Some((kind, left)) = f.as_mut() {
            let kind = *kind;
            *left -= 1;
            if *left == 0 {
                *f = None;
            }
            return match kind {
                Failure::InvalidGrant => oauth_error("invalid_grant", "Invalid grant: account not found"),
                Failure::ServerError => json_reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": "internal_failure", "error_description": "Backend Error"}),
                ),
            };
        }
    }
    if rec.method != "POST" || rec.path() != "/token" {
        return json_reply(StatusCode::NOT_FOUND, json!({"error": "not_found", "error_description": "Not Found"}));
    }
    if !rec.header("content-type").is_some_and(|c| c.starts_with("application/x-www-form-urlencoded")) {
        return oauth_error("invalid_request", "Bad Request");
    }
    let f = form(&rec.body);
    match f.get("grant_type").map(String::as_str) {
        Some(JWT_BEARER) => {}
        Some(_) => return oauth_error("unsupported_grant_type", "Invalid grant_type: "),
        None => return oauth_error("invalid_request", "Missing required parameter: grant_type"),
    }
    let Some(assertion) = f.get("assertion") else {
        return oauth_error("invalid_request", "Missing required parameter: assertion");
    };
    let parts: Vec<&str> = assertion.split('.').collect();
    if parts.len() != 3 {
        return oauth_error("invalid_grant", "Invalid JWT: malformed");
    }
    let decode = |s: &str| B64URL.decode(s).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let (Some(header), Some(claims)) = (decode(parts[0]), decode(parts[1])) else {
        return oauth_error("invalid_grant", "Invalid JWT: not base64url JSON");
    };
    if header["alg"] != "RS256" {
        return oauth_error("invalid_grant", "Invalid JWT: alg must be RS256");
    }
    let Some(iss) = claims["iss"].as_str() else {
        return oauth_error("invalid_grant", "Invalid JWT: iss missing");
    };
    let Some(public) = state.accounts.lock().unwrap().get(iss).cloned() else {
        return oauth_error("invalid_grant", "Invalid grant: account not found");
    };
    let Ok(sig) = B64URL.decode(parts[2]) else {
        return oauth_error("invalid_grant", "Invalid JWT Signature.");
    };
    let key = ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public);
    if key.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig).is_err() {
        return oauth_error("invalid_grant", "Invalid JWT Signature.");
    }
    if claims["aud"].as_str() != Some(state.url.as_str()) {
        return oauth_error("invalid_grant", "Invalid JWT: Failed audience check.");
    }
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return oauth_error("invalid_grant", "Invalid JWT: iat and exp are required");
    };
    let now = now_secs();
    if iat > now + 60 || exp <= now || exp - iat > 3600 || exp <= iat {
        return oauth_error(
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        );
    }
    let scope = claims["scope"].as_str().unwrap_or_default();
    if scope.trim().is_empty() {
        return oauth_error("invalid_scope", "Empty or missing scope not allowed.");
    }
    state.scopes.lock().unwrap().push(scope.to_owned());
    let expires_in = state.expires_in.load(Ordering::SeqCst);
    let token = state.issued.issue(iss, expires_in);
    state.mints.fetch_add(1, Ordering::SeqCst);
    json_reply(StatusCode::OK, json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}))
}

/// The fake GCE metadata server (`GCE_METADATA_HOST=127.0.0.1:PORT`).
pub struct FakeMetadataServer {
    served: Served,
    issued: Arc<IssuedTokens>,
    expires_in: Arc<AtomicU64>,
    mints: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Drop for FakeMetadataServer {
    fn drop(&mut self) {
        self.served.task.abort();
    }
}

/// The e-mail the metadata server's tokens are issued to.
pub const METADATA_ACCOUNT: &str = "default-compute@aigw-test.iam.gserviceaccount.com";

impl FakeMetadataServer {
    pub async fn start(issued: Arc<IssuedTokens>) -> FakeMetadataServer {
        let expires_in = Arc::new(AtomicU64::new(3599));
        let mints = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (iss, exp, m, reqs) = (issued.clone(), expires_in.clone(), mints.clone(), requests.clone());
        let handler: AsyncHandler = Arc::new(move |rec: Recorded| {
            let (iss, exp, m, reqs) = (iss.clone(), exp.clone(), m.clone(), reqs.clone());
            Box::pin(async move {
                reqs.lock().unwrap().push(rec.clone());
                let text = |s: StatusCode, b: &'static str| (s, "text/html; charset=UTF-8", Bytes::from_static(b.as_bytes()));
                // As the real server: the header is required and forwarded requests are refused.
                if rec.header("metadata-flavor") != Some("Google") {
                    return text(StatusCode::FORBIDDEN, "Missing Metadata-Flavor:Google header.");
                }
                if rec.header("x-forwarded-for").is_some() {
                    return text(StatusCode::FORBIDDEN, "Request denied: X-Forwarded-For header present.");
                }
                if rec.method != "GET" {
                    return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
                }
                if rec.path() != "/computeMetadata/v1/instance/service-accounts/default/token" {
                    return text(StatusCode::NOT_FOUND, "Not Found");
                }
                let expires_in = exp.load(Ordering::SeqCst);
                let token = iss.issue(METADATA_ACCOUNT, expires_in);
                m.fetch_add(1, Ordering::SeqCst);
                json_reply(StatusCode::OK, json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}))
            })
        });
        FakeMetadataServer { served: serve(handler).await, issued, expires_in, mints, requests }
    }

    /// `host:port`, the value of `GCE_METADATA_HOST`.
    pub fn host(&self) -> String {
        self.served.addr.to_string()
    }

    pub fn mints(&self) -> usize {
        self.mints.load(Ordering::SeqCst)
    }

    pub fn set_expires_in(&self, secs: u64) {
        self.expires_in.store(secs, Ordering::SeqCst);
    }

    /// The `scopes` query parameter of the last token request, decoded.
    pub fn last_scopes(&self) -> Option<String> {
        let r = self.requests.lock().unwrap().last().cloned()?;
        let q = r.path_and_query.split_once('?')?.1.to_owned();
        q.split('&').find_map(|kv| kv.strip_prefix("scopes=").map(percent_decode))
    }

    pub fn issued(&self) -> &Arc<IssuedTokens> {
        &self.issued
    }
}

/// The fake Vertex AI: OpenAI-compatible chat and `:predict` embeddings.
pub struct FakeVertex {
    served: Served,
    issued: Arc<IssuedTokens>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    rejected: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
}

impl Drop for FakeVertex {
    fn drop(&mut self) {
        self.served.task.abort();
    }
}

fn google_error(status: StatusCode, message: &str, kind: &str) -> (StatusCode, &'static str, Bytes) {
    json_reply(status, json!({"error": {"code": status.as_u16(), "message": message, "status": kind}}))
}

/// Vertex AI's locations (cloud.google.com/vertex-ai/docs/general/locations).
const VERTEX_LOCATIONS: &[&str] = &[
    "global",
    "us-central1",
    "us-east1",
    "us-east4",
    "us-east5",
    "us-south1",
    "us-west1",
    "us-west2",
    "us-west3",
    "us-west4",
    "northamerica-northeast1",
    "northamerica-northeast2",
    "southamerica-east1",
    "europe-central2",
    "europe-north1",
    "europe-southwest1",
    "europe-west1",
    "europe-west2",
    "europe-west3",
    "europe-west4",
    "europe-west6",
    "europe-west8",
    "europe-west9",
    "asia-east1",
    "asia-east2",
    "asia-northeast1",
    "asia-northeast3",
    "asia-south1",
    "asia-southeast1",
    "australia-southeast1",
    "me-central1",
    "me-west1",
];

/// `/v1/projects/{p}/locations/{r}/{rest}` (also `v1beta1`) → (p, r, rest).
fn vertex_path(path: &str) -> Option<(String, String, String)> {
    let rest = path.strip_prefix("/v1/").or_else(|| path.strip_prefix("/v1beta1/"))?;
    let mut it = rest.splitn(5, '/');
    let (projects, p, locations, r, rest) = (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
    (projects == "projects" && locations == "locations" && !p.is_empty() && !r.is_empty())
        .then(|| (p.to_owned(), r.to_owned(), rest.to_owned()))
}

impl FakeVertex {
    pub async fn start(issued: Arc<IssuedTokens>) -> FakeVertex {
        FakeVertex::start_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake"), issued)
    }

    /// [`FakeVertex::start`] on a bound listener (e.g. `0.0.0.0:PORT` in a container).
    pub fn start_on(listener: tokio::net::TcpListener, issued: Arc<IssuedTokens>) -> FakeVertex {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let rejected = Arc::new(AtomicUsize::new(0));
        let total = Arc::new(AtomicUsize::new(0));
        let (iss, reqs, rej, tot) = (issued.clone(), requests.clone(), rejected.clone(), total.clone());
        let handler: AsyncHandler = Arc::new(move |rec: Recorded| {
            let (iss, reqs, rej, tot) = (iss.clone(), reqs.clone(), rej.clone(), tot.clone());
            Box::pin(async move {
                tot.fetch_add(1, Ordering::SeqCst);
                reqs.lock().unwrap().push(rec.clone());
                let r = vertex_reply(&iss, &rec);
                if r.0 == StatusCode::UNAUTHORIZED {
                    rej.fetch_add(1, Ordering::SeqCst);
                }
                r
            })
        });
        FakeVertex { served: serve_on(listener, handler), issued, requests, rejected, total }
    }

    /// Requests received so far (also those dropped by [`FakeVertex::clear`]).
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// Drops the recorded requests (a long-running fake keeps its memory flat).
    pub fn clear(&self) {
        self.requests.lock().unwrap().clear();
    }

    /// `http://127.0.0.1:PORT` (use as `override.endpoint` origin).
    pub fn url(&self) -> String {
        format!("http://{}", self.served.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Requests answered 401 so far.
    pub fn rejected(&self) -> usize {
        self.rejected.load(Ordering::SeqCst)
    }

    /// The next request bearing `token` gets a 401 (as after a revocation).
    pub fn reject_once(&self, token: &str) {
        self.issued.reject_once.lock().unwrap().insert(token.to_owned());
    }

    /// The bearer token of the last request.
    pub fn last_token(&self) -> Option<String> {
        let r = self.requests.lock().unwrap().last().cloned()?;
        r.header("authorization")?.strip_prefix("Bearer ").map(str::to_owned)
    }
}

fn vertex_reply(issued: &IssuedTokens, rec: &Recorded) -> (StatusCode, &'static str, Bytes) {
    const UNAUTH: &str = "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.";
    let token = rec.header("authorization").and_then(|h| h.strip_prefix("Bearer ")).unwrap_or_default();
    if token.is_empty() || issued.holder(token).is_none() {
        return google_error(StatusCode::UNAUTHORIZED, UNAUTH, "UNAUTHENTICATED");
    }
    if issued.reject_once.lock().unwrap().remove(token) {
        return google_error(StatusCode::UNAUTHORIZED, UNAUTH, "UNAUTHENTICATED");
    }
    if rec.method != "POST" {
        return google_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed", "INVALID_ARGUMENT");
    }
    if !rec.header("content-type").is_some_and(|c| c.starts_with("application/json")) {
        return google_error(StatusCode::BAD_REQUEST, "Invalid JSON payload received: content-type", "INVALID_ARGUMENT");
    }
    let Ok(body) = serde_json::from_slice::<Value>(&rec.body) else {
        return google_error(StatusCode::BAD_REQUEST, "Invalid JSON payload received.", "INVALID_ARGUMENT");
    };
    let Some((_project, location, rest)) = vertex_path(rec.path()) else {
        return google_error(
            StatusCode::NOT_FOUND,
            &format!("The requested URL {} was not found on this server.", rec.path()),
            "NOT_FOUND",
        );
    };
    // As Vertex: a path built from a made-up or partial provider_conf names no location.
    if !VERTEX_LOCATIONS.contains(&location.as_str()) {
        return google_error(
            StatusCode::BAD_REQUEST,
            &format!("Location {location} is not supported for this request; use a Vertex AI location such as us-central1 or global."),
            "INVALID_ARGUMENT",
        );
    }
    if rest == "endpoints/openapi/chat/completions" {
        let model = body["model"].as_str().unwrap_or_default().to_owned();
        // The OpenAI-compatible endpoint needs the publisher prefix ("google/gemini-2.5-flash").
        if !model.contains('/') {
            return google_error(
                StatusCode::BAD_REQUEST,
                &format!("Invalid model: {model:?}: expected publisher/model"),
                "INVALID_ARGUMENT",
            );
        }
        if body["messages"].as_array().is_none_or(|m| m.is_empty()) {
            return google_error(StatusCode::BAD_REQUEST, "messages: required", "INVALID_ARGUMENT");
        }
        if body["stream"] == true {
            let usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);
            let spec = ProviderSpec::new("vertex", AuthCheck::Bearer(String::new()));
            let sse: Vec<u8> = chat_stream_chunks(&spec, &model, usage).into_iter().flat_map(|(_, b)| b.to_vec()).collect();
            return (StatusCode::OK, "text/event-stream", Bytes::from(sse));
        }
        return json_reply(
            StatusCode::OK,
            json!({"id": "chatcmpl-vertex", "object": "chat.completion", "created": 1, "model": model,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "1+1 equals 2."}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}}),
        );
    }
    if let Some(model) = rest.strip_prefix("publishers/google/models/").and_then(|m| m.strip_suffix(":predict")) {
        if model.is_empty() {
            return google_error(StatusCode::NOT_FOUND, "model not found", "NOT_FOUND");
        }
        // As Google's JSON parsing: unknown fields are refused.
        if let Some(unknown) = body.as_object().and_then(|o| o.keys().find(|k| !["instances", "parameters"].contains(&k.as_str()))) {
            return google_error(
                StatusCode::BAD_REQUEST,
                &format!("Invalid JSON payload received. Unknown name \"{unknown}\": Cannot find field."),
                "INVALID_ARGUMENT",
            );
        }
        let dims = body.pointer("/parameters/outputDimensionality").and_then(Value::as_u64).map_or(4, |d| d.min(4) as usize);
        let Some(instances) = body["instances"].as_array().filter(|i| !i.is_empty()) else {
            return google_error(StatusCode::BAD_REQUEST, "instances: required and non-empty", "INVALID_ARGUMENT");
        };
        if instances.len() > 250 {
            return google_error(StatusCode::BAD_REQUEST, "at most 250 instances", "INVALID_ARGUMENT");
        }
        let mut predictions = Vec::new();
        let mut chars = 0;
        for (i, inst) in instances.iter().enumerate() {
            let Some(content) = inst["content"].as_str() else {
                return google_error(StatusCode::BAD_REQUEST, &format!("instances[{i}].content: required string"), "INVALID_ARGUMENT");
            };
            chars += content.chars().count();
            let tokens = content.split_whitespace().count().max(1);
            let values: Vec<f64> = [0.0123, -0.0456, 0.0789, i as f64].into_iter().take(dims).collect();
            predictions.push(json!({"embeddings": {"values": values,
                "statistics": {"token_count": tokens, "truncated": false}}}));
        }
        return json_reply(StatusCode::OK, json!({"predictions": predictions, "metadata": {"billableCharacterCount": chars}}));
    }
    google_error(StatusCode::NOT_FOUND, &format!("The requested URL {} was not found on this server.", rec.path()), "NOT_FOUND")
}
