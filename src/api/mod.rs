//! The Partner Center Referrals API client: list, GET, POST, PATCH, PUT,
//! with bearer auth, correlation/request ids, one shared request gate
//! (concurrency, rate, `Retry-After` pauses) and retries.
//!
//! Invariants:
//! - every request passes through the one [`RequestGate`], so a
//!   `Retry-After` pause seen by one worker holds every worker;
//! - a write is repeated only when it certainly was not applied (connect
//!   error, 429, 503 with `Retry-After`, 408); anything ambiguous is an
//!   [`ApiError::OutcomeUnknown`] for the caller to resolve with a GET;
//! - `links` (response-only) is never sent, and the bearer token never
//!   leaves the base URL's origin (a foreign `@odata.nextLink` is refused);
//! - only `retry.rs` knows the `backoff` crate.

pub mod auth;
pub mod device_login;
mod error;
pub mod gate;
pub mod retry;
mod verdict;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{ACCEPT, CONTENT_TYPE, ETAG, HeaderMap, HeaderValue, IF_MATCH, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

pub use auth::{AuthError, AuthOptions, TokenProvider};
pub use error::{ApiError, cut_text, escape_controls, service_text};
use gate::GatePermit;
pub use gate::{GateOptions, RequestGate};
pub use retry::{RetryPolicy, RetrySchedule};

use crate::model::Op;
use auth::error_chain;
use error::ServiceError;
use verdict::{CallKind, Failed, Failure, Pace, Pause, Retry, Verdict, classify, pace};

/// Header carrying the id of the sync cycle, for support cases.
pub const MS_CORRELATION_ID: &str = "MS-CorrelationId";
/// Header carrying the id of one request, for support cases.
pub const MS_REQUEST_ID: &str = "MS-RequestId";
/// Header carrying a new GUID per call, as the Referrals API's header
/// documentation asks.
pub const CLIENT_REQUEST_ID: &str = "client-request-id";
/// Response header carrying the service's id of the request.
pub const SERVICE_REQUEST_ID: &str = "request-id";

/// How to reach the service and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientOptions {
    /// The API root, e.g. `https://api.partner.microsoft.com/v1.0`.
    pub base_url: String,
    /// The whole request, response body included.
    #[serde(deserialize_with = "retry::humane_duration::deserialize")]
    pub request_timeout: Duration,
    #[serde(deserialize_with = "retry::humane_duration::deserialize")]
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
    /// Allow plain http to a host that is not this machine (never in
    /// production: the bearer token would cross the network in clear).
    pub allow_insecure: bool,
    /// The largest answer body read; reading stops there and the request
    /// fails (`api.max_response_bytes`).
    pub max_response_bytes: u64,
    /// Pages of one listing at most (`api.max_list_pages`).
    pub max_list_pages: u64,
    /// Pages in a row that bring no referral yet point further before a
    /// listing is given up (`api.max_empty_list_pages`).
    pub max_empty_list_pages: u64,
}

/// 16 MiB: a page of 100 referrals is well under 1 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;
/// A million referrals at 100 per page.
pub const DEFAULT_MAX_LIST_PAGES: u64 = 10_000;
pub const DEFAULT_MAX_EMPTY_LIST_PAGES: u64 = 10;
/// A `@odata.nextLink` longer than this is not a link to a page.
const MAX_NEXT_LINK_CHARS: usize = 16 * 1024;

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            base_url: "https://api.partner.microsoft.com/v1.0".to_owned(),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            allow_insecure: false,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_list_pages: DEFAULT_MAX_LIST_PAGES,
            max_empty_list_pages: DEFAULT_MAX_EMPTY_LIST_PAGES,
        }
    }
}

/// A referral as the service returned it.
#[derive(Debug, Clone, PartialEq)]
pub struct Referral {
    pub id: String,
    /// The opaque eTag, quotes included, ready for `If-Match`.
    pub etag: String,
    /// The whole body, unknown fields and `links` included.
    pub document: Value,
}

/// Who a request is for: the cycle (correlation id) and, when there is
/// one, the CRM record (external id), for logs and support cases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    pub correlation_id: Uuid,
    pub external_id: Option<String>,
}

impl RequestContext {
    pub fn new(correlation_id: Uuid) -> Self {
        RequestContext {
            correlation_id,
            external_id: None,
        }
    }

    pub fn for_record(correlation_id: Uuid, external_id: impl Into<String>) -> Self {
        RequestContext {
            correlation_id,
            external_id: Some(external_id.into()),
        }
    }
}

/// Counters since the client was built (shared by its clones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests sent (every attempt counts).
    pub requests: u64,
    /// Attempts repeated after a throttle, a transient failure or a
    /// connect error.
    pub retries: u64,
    /// 429 answers, and 503 answers with `Retry-After`.
    pub throttles: u64,
    /// 401 answers that led to a token refresh and a retry.
    pub token_refreshes: u64,
}

/// Told of every attempt's answer and of every pause the service asked for
/// (the metrics). Calls are cheap and must not block.
pub trait RequestObserver: Send + Sync {
    /// One attempt finished: `status` is `None` when no answer came (a
    /// connect error, a timeout, a broken connection).
    fn request(&self, method: &Method, status: Option<u16>, elapsed: Duration);
    /// The service asked (`Retry-After` on a 429 or 503) for `pause`, which
    /// every worker now waits out (or, past `api.max_retry_after`, which
    /// no request is sent during).
    fn throttled(&self, pause: Duration);
}

/// The Partner Center Referrals client. Clones share the connection pool,
/// the gate, the token provider and the counters.
#[derive(Clone)]
pub struct ApiClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    retry: RetryPolicy,
    max_response_bytes: u64,
    max_list_pages: u64,
    max_empty_list_pages: u64,
    gate: Arc<RequestGate>,
    tokens: Arc<TokenProvider>,
    counters: Counters,
    /// Turns `true` when the process shuts down: a listing stops.
    shutdown: OnceLock<watch::Receiver<bool>>,
    /// The service asked to be left alone past `max_retry_after`: no
    /// request is sent before then.
    held_back: std::sync::Mutex<Option<HeldBack>>,
    /// Set once, when the client is built.
    observer: OnceLock<Arc<dyn RequestObserver>>,
}

/// A `Retry-After` longer than the client waits, remembered.
#[derive(Debug, Clone)]
struct HeldBack {
    until: tokio::time::Instant,
    retry_after_secs: u64,
    /// `until` as a wall-clock time, for messages.
    not_before: String,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
    throttles: AtomicU64,
    token_refreshes: AtomicU64,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.inner.base.as_str())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// One request as the client means to send it, possibly several times.
struct Call {
    method: Method,
    url: Url,
    body: Option<Vec<u8>>,
    if_match: Option<HeaderValue>,
    prefer_representation: bool,
}

impl Call {
    fn read(url: Url) -> Self {
        Call {
            method: Method::GET,
            url,
            body: None,
            if_match: None,
            prefer_representation: false,
        }
    }

    fn path(&self) -> String {
        self.url.path().to_owned()
    }

    /// Reads may be repeated whatever happened to the previous attempt.
    fn is_read(&self) -> bool {
        self.method == Method::GET
    }

    fn kind(&self) -> CallKind {
        if self.is_read() {
            CallKind::Read
        } else if self.if_match.is_some() {
            CallKind::GuardedWrite
        } else {
            CallKind::UnguardedWrite
        }
    }
}

/// The service's answer.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
    /// The service's `request-id`, escaped and cut.
    service_request_id: Option<Box<str>>,
}

/// The service's `request-id` of an answer: text the service chose, so
/// escaped and cut like any.
fn service_request_id(headers: &HeaderMap) -> Option<Box<str>> {
    let value = headers.get(SERVICE_REQUEST_ID)?;
    let text = String::from_utf8_lossy(value.as_bytes());
    let text = text.trim();
    (!text.is_empty()).then(|| cut_text(text, 100).into_boxed_str())
}

/// Why one attempt brought no usable answer.
enum AttemptError {
    /// An answer other than a success.
    Refused(Answer),
    Http(reqwest::Error),
    /// The body is larger than `max_response_bytes`: reading stopped.
    TooLarge {
        status: StatusCode,
        service_request_id: Option<Box<str>>,
    },
}

impl AttemptError {
    /// What [`classify`] decides on; a `Retry-After` date is read as of
    /// `now`.
    fn facts(&self, now: DateTime<Utc>) -> Failed {
        match self {
            AttemptError::Refused(answer) => Failed::Answer {
                status: answer.status.as_u16(),
                retry_after: retry_after(&answer.headers, now),
            },
            AttemptError::TooLarge { status, .. } => Failed::TooLarge {
                status: status.as_u16(),
            },
            AttemptError::Http(error) if error.is_builder() => Failed::Unbuildable,
            AttemptError::Http(error) if error.is_connect() => Failed::NotConnected,
            AttemptError::Http(_) => Failed::NoAnswer,
        }
    }

    /// What went wrong, in words, for the log and the error after retries.
    fn reason(&self) -> String {
        match self {
            AttemptError::Refused(answer) => format!(
                "HTTP {}: {}",
                answer.status,
                ServiceError::parse(&answer.body).message
            ),
            AttemptError::Http(error) => error_chain(error),
            AttemptError::TooLarge { status, .. } => format!(
                "HTTP {} answer larger than api.max_response_bytes; reading stopped",
                status.as_u16()
            ),
        }
    }
}

impl ApiClient {
    /// Build a client with its own connection pool (see
    /// [`ApiClient::http_client`]).
    pub fn new(
        options: ClientOptions,
        gate: Arc<RequestGate>,
        tokens: Arc<TokenProvider>,
    ) -> Result<Self, ApiError> {
        let http = Self::http_client(&options)?;
        Self::with_http_client(options, http, gate, tokens)
    }

    /// Build a client on an existing `reqwest::Client`, which should not
    /// follow redirects (a redirected PATCH is not this client's to repeat).
    pub fn with_http_client(
        options: ClientOptions,
        http: reqwest::Client,
        gate: Arc<RequestGate>,
        tokens: Arc<TokenProvider>,
    ) -> Result<Self, ApiError> {
        options
            .retry
            .validate()
            .map_err(|error| ApiError::InvalidOptions(error.to_string()))?;
        let base = parse_base_url(&options.base_url, options.allow_insecure)
            .map_err(ApiError::InvalidOptions)?;
        for (name, value) in [
            ("max_response_bytes", options.max_response_bytes),
            ("max_list_pages", options.max_list_pages),
            ("max_empty_list_pages", options.max_empty_list_pages),
        ] {
            if value == 0 {
                return Err(ApiError::InvalidOptions(format!(
                    "{name} must be at least 1"
                )));
            }
        }
        Ok(ApiClient {
            inner: Arc::new(Inner {
                http,
                base,
                retry: options.retry,
                max_response_bytes: options.max_response_bytes,
                max_list_pages: options.max_list_pages,
                max_empty_list_pages: options.max_empty_list_pages,
                gate,
                tokens,
                counters: Counters::default(),
                shutdown: OnceLock::new(),
                held_back: std::sync::Mutex::new(None),
                observer: OnceLock::new(),
            }),
        })
    }

    /// Stop any listing, between pages or during one, once `shutdown`
    /// turns `true` (SIGTERM): a long listing must not hold the shutdown
    /// for its whole grace period. Writes are never cut off. Set once; a
    /// second call is ignored.
    /// Tell `observer` of every attempt and every pause the service asks
    /// for. Set once; a second call is ignored.
    pub fn observed_by(self, observer: Arc<dyn RequestObserver>) -> Self {
        let _ = self.inner.observer.set(observer);
        self
    }

    /// The pause the service asked for, to the observer and the gate.
    fn pause_for(&self, wait: Duration) {
        if let Some(observer) = self.inner.observer.get() {
            observer.throttled(wait);
        }
        self.inner.gate.pause_for(wait);
    }

    pub fn interrupt_listings_on(&self, shutdown: watch::Receiver<bool>) {
        let _ = self.inner.shutdown.set(shutdown);
    }

    fn shutting_down(&self) -> bool {
        self.inner
            .shutdown
            .get()
            .is_some_and(|shutdown| *shutdown.borrow())
    }

    /// Resolves when the process shuts down; never without a shutdown
    /// signal.
    async fn shutdown_signal(&self) {
        if let Some(shutdown) = self.inner.shutdown.get() {
            let mut shutdown = shutdown.clone();
            if shutdown.wait_for(|stop| *stop).await.is_ok() {
                return;
            }
        }
        std::future::pending::<()>().await;
    }

    /// The HTTP client this API client wants: the options' timeouts, no
    /// redirects, a user agent naming this program. Also suitable for the
    /// [`TokenProvider`].
    pub fn http_client(options: &ClientOptions) -> Result<reqwest::Client, ApiError> {
        if options.request_timeout.is_zero() || options.connect_timeout.is_zero() {
            return Err(ApiError::InvalidOptions(
                "request_timeout and connect_timeout must be greater than zero".to_owned(),
            ));
        }
        reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("referral-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| ApiError::InvalidOptions(error_chain(&error)))
    }

    pub fn stats(&self) -> ClientStats {
        let counters = &self.inner.counters;
        ClientStats {
            requests: counters.requests.load(Ordering::Relaxed),
            retries: counters.retries.load(Ordering::Relaxed),
            throttles: counters.throttles.load(Ordering::Relaxed),
            token_refreshes: counters.token_refreshes.load(Ordering::Relaxed),
        }
    }

    pub fn gate(&self) -> &Arc<RequestGate> {
        &self.inner.gate
    }

    /// GET one referral.
    pub async fn get(&self, ctx: &RequestContext, id: &str) -> Result<Referral, ApiError> {
        let call = Call::read(self.referral_url(&Method::GET, id)?);
        let answer = self.send(ctx, &call).await?;
        let referral =
            referral_from(&answer).map_err(|reason| invalid_response(&call, &answer, reason))?;
        if !referral.id.eq_ignore_ascii_case(id) {
            let reason = format!("asked for referral {id}, got referral {}", referral.id);
            return Err(invalid_response(&call, &answer, reason));
        }
        Ok(referral)
    }

    /// Page through every referral, handing each page's items to
    /// `on_page`, following `@odata.nextLink` (absolute, or relative to the
    /// page it came from) until it is absent. Returns the number of items.
    ///
    /// A listing that does not end is given up with one error: after
    /// `max_list_pages` pages, at a link that repeats, or after
    /// `max_empty_list_pages` pages in a row that bring nothing yet point
    /// further. A shutdown (see [`ApiClient::interrupt_listings_on`]) stops
    /// it between pages or during one.
    pub async fn list(
        &self,
        ctx: &RequestContext,
        mut on_page: impl FnMut(Vec<Value>),
    ) -> Result<u64, ApiError> {
        let inner = &*self.inner;
        let mut url = self.referrals_url();
        let path = url.path().to_owned();
        let abandon = |pages: u64, reason: String| ApiError::ListingAbandoned {
            path: path.clone(),
            pages,
            reason,
        };
        // Hashes, not URLs: ten thousand long links stay small.
        let mut fetched: HashSet<blake3::Hash> = HashSet::new();
        let mut items = 0u64;
        let mut pages = 0u64;
        let mut empty_in_a_row = 0u64;
        loop {
            if self.shutting_down() {
                return Err(ApiError::Interrupted { path, pages });
            }
            fetched.insert(blake3::hash(url.as_str().as_bytes()));
            let call = Call::read(url);
            let answer = tokio::select! {
                biased;
                () = self.shutdown_signal() => {
                    return Err(ApiError::Interrupted { path, pages });
                }
                answer = self.send(ctx, &call) => answer?,
            };
            pages += 1;
            let (page, next_link) = list_page(&answer.body)
                .map_err(|reason| invalid_response(&call, &answer, reason))?;
            let empty = page.is_empty();
            items += page.len() as u64;
            on_page(page);
            let Some(link) = next_link else {
                return Ok(items);
            };
            empty_in_a_row = if empty { empty_in_a_row + 1 } else { 0 };
            let (max_pages, max_empty) = (inner.max_list_pages, inner.max_empty_list_pages);
            if let Some(reason) = abandon_reason(&link, pages, empty_in_a_row, max_pages, max_empty)
            {
                return Err(abandon(pages, reason));
            }
            let next = self
                .next_page_url(&call.url, &link)
                .map_err(|reason| invalid_response(&call, &answer, reason))?;
            if fetched.contains(&blake3::hash(next.as_str().as_bytes())) {
                let shown = cut_text(&link, 200);
                return Err(abandon(
                    pages,
                    format!("@odata.nextLink `{shown}` leads back to a page already fetched"),
                ));
            }
            url = next;
        }
    }

    /// POST a new referral. `links` is left out of the body.
    pub async fn create(&self, ctx: &RequestContext, body: &Value) -> Result<Referral, ApiError> {
        let url = self.referrals_url();
        let call = Call {
            body: Some(document_body(&Method::POST, &url, body)?),
            method: Method::POST,
            url,
            if_match: None,
            prefer_representation: false,
        };
        let answer = self.send(ctx, &call).await?;
        // The referral exists but cannot be identified from this answer:
        // the caller must find it (by its externalReferenceId) before
        // creating again.
        referral_from(&answer).map_err(|reason| ApiError::OutcomeUnknown {
            method: call.method.clone(),
            path: call.path(),
            reason: format!("HTTP {} but {reason}", answer.status.as_u16()),
            service_request_id: answer.service_request_id.clone(),
        })
    }

    /// PATCH a referral with JSON Patch `ops` under `If-Match: etag`.
    /// `Ok(None)` when the service did not return the updated referral
    /// (204): the caller GETs it for the new eTag.
    pub async fn patch(
        &self,
        ctx: &RequestContext,
        id: &str,
        etag: &str,
        ops: &[Op],
    ) -> Result<Option<Referral>, ApiError> {
        let method = Method::PATCH;
        let url = self.referral_url(&method, id)?;
        let refuse = |reason: String| ApiError::InvalidRequest {
            method: method.clone(),
            path: url.path().to_owned(),
            reason,
        };
        if ops.is_empty() {
            return Err(refuse("the patch has no operation".to_owned()));
        }
        if let Some(op) = ops.iter().find(|op| touches_links(op)) {
            return Err(refuse(format!(
                "`{} {}` would send `links`, which is response-only",
                op.kind(),
                op.path()
            )));
        }
        let body = serde_json::to_vec(ops)
            .map_err(|error| refuse(format!("cannot serialise the patch: {error}")))?;
        let call = Call {
            if_match: Some(if_match(&method, &url, etag)?),
            method,
            url,
            body: Some(body),
            prefer_representation: true,
        };
        let answer = self.send(ctx, &call).await?;
        Ok(written_referral(&call, id, &answer))
    }

    /// PUT (obsolete full replace) a referral under `If-Match: etag`, with
    /// `links` left out. `Ok(None)` as for [`ApiClient::patch`].
    pub async fn put(
        &self,
        ctx: &RequestContext,
        id: &str,
        etag: &str,
        body: &Value,
    ) -> Result<Option<Referral>, ApiError> {
        let method = Method::PUT;
        let url = self.referral_url(&method, id)?;
        let call = Call {
            body: Some(document_body(&method, &url, body)?),
            if_match: Some(if_match(&method, &url, etag)?),
            method,
            url,
            prefer_representation: true,
        };
        let answer = self.send(ctx, &call).await?;
        Ok(written_referral(&call, id, &answer))
    }

    fn referrals_url(&self) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(["engagements", "referrals"]);
        }
        url
    }

    fn referral_url(&self, method: &Method, id: &str) -> Result<Url, ApiError> {
        let mut url = self.referrals_url();
        // The URL library drops a `.` or `..` segment: a request meant for
        // one referral would go to the collection or above it.
        if let Err(reason) = check_referral_id(id) {
            return Err(ApiError::InvalidRequest {
                method: method.clone(),
                path: url.path().to_owned(),
                reason,
            });
        }
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.push(id);
        }
        Ok(url)
    }

    fn next_page_url(&self, current: &Url, link: &str) -> Result<Url, String> {
        let shown = cut_text(link, 200);
        let next = current
            .join(link)
            .map_err(|error| format!("@odata.nextLink `{shown}` is not a URL: {error}"))?;
        if next.origin() != self.inner.base.origin() {
            return Err(format!(
                "@odata.nextLink `{shown}` leaves {}; the bearer token is not sent elsewhere",
                self.inner.base.origin().ascii_serialization()
            ));
        }
        Ok(next)
    }

    /// The service asked (`Retry-After`) to be left alone for `asked`,
    /// longer than `max_retry_after`: remember it, and fail `call`.
    fn hold_back(&self, ctx: &RequestContext, call: &Call, asked: Duration) -> ApiError {
        let retry_after_secs = asked.as_secs() + u64::from(asked.subsec_nanos() > 0);
        if let Some(observer) = self.inner.observer.get() {
            observer.throttled(asked);
        }
        let now = tokio::time::Instant::now();
        let until = now
            .checked_add(asked)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
        let not_before = chrono::Duration::from_std(asked)
            .ok()
            .and_then(|asked| Utc::now().checked_add_signed(asked))
            .map_or_else(
                || "the far future".to_owned(),
                |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
        let held = HeldBack {
            until,
            retry_after_secs,
            not_before,
        };
        tracing::warn!(
            method = %call.method,
            path = call.url.path(),
            correlation_id = %ctx.correlation_id,
            retry_after_secs,
            max_retry_after_secs = self.inner.retry.max_retry_after.as_secs(),
            not_before = %held.not_before,
            "the service asked to wait {retry_after_secs} s; no request is sent before {}",
            held.not_before
        );
        let error = self.held_back_error(call, &held);
        let mut slot = self
            .inner
            .held_back
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot
            .as_ref()
            .is_none_or(|current| current.until < held.until)
        {
            *slot = Some(held);
        }
        error
    }

    /// The error for `call` while the service's long `Retry-After` holds.
    fn held_back_error(&self, call: &Call, held: &HeldBack) -> ApiError {
        ApiError::RetryAfterTooLong {
            method: call.method.clone(),
            path: call.path(),
            retry_after_secs: held.retry_after_secs,
            max_secs: self.inner.retry.max_retry_after.as_secs(),
            not_before: held.not_before.clone(),
        }
    }

    /// The long `Retry-After` still in force, if any.
    fn still_held_back(&self) -> Option<HeldBack> {
        let slot = self
            .inner
            .held_back
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.clone()
            .filter(|held| held.until > tokio::time::Instant::now())
    }

    /// Send `call` until it succeeds or must not be repeated: through the
    /// gate, with a bearer token, as [`classify`] and [`pace`] decide.
    async fn send(&self, ctx: &RequestContext, call: &Call) -> Result<Answer, ApiError> {
        if let Some(held) = self.still_held_back() {
            return Err(self.held_back_error(call, &held));
        }
        let max_retry_after = self.inner.retry.max_retry_after;
        let mut schedule = RetrySchedule::new(&self.inner.retry);
        let mut token_refreshed = false;
        let mut attempt = 0u32;
        // The service's id of the last answer, for an error after retries.
        let mut last_service_request_id: Option<Box<str>> = None;
        loop {
            attempt += 1;
            // The permit is held until the answer's pause, if any, is set:
            // a worker waiting for it must not start in between.
            let (outcome, bearer, permit) = self.attempt_through_gate(ctx, call, attempt).await?;
            let failed = match outcome {
                Ok(answer) => return Ok(answer),
                Err(failed) => failed,
            };
            if let AttemptError::Refused(answer) = &failed {
                last_service_request_id.clone_from(&answer.service_request_id);
            }
            let facts = failed.facts(Utc::now());
            let retry = match classify(facts, call.kind(), token_refreshed, max_retry_after) {
                Verdict::Retry(retry) => retry,
                Verdict::RefreshToken => {
                    drop(permit);
                    token_refreshed = true;
                    self.refresh_token(ctx, call, &bearer).await;
                    continue;
                }
                Verdict::HoldBack { asked } => {
                    self.count_throttle();
                    return Err(self.hold_back(ctx, call, asked));
                }
                Verdict::Fail(failure) => return Err(self.failure_error(call, failure, failed)),
                Verdict::FailPausing(failure, pause) => {
                    self.honour(ctx, call, pause);
                    return Err(self.failure_error(call, failure, failed));
                }
            };
            if let Retry::Throttled { .. } = retry {
                self.count_throttle();
            }
            let reason = failed.reason();
            match pace(retry, schedule.next_delay()) {
                Pace::Everyone(wait) => {
                    self.wait_throttled(ctx, call, attempt, &reason, wait);
                    drop(permit);
                }
                Pace::Alone(delay) => {
                    drop(permit);
                    self.wait_alone(ctx, call, attempt, &reason, delay).await;
                }
                Pace::GiveUp { pause } => {
                    if let Some(pause) = pause {
                        self.pause_for(pause);
                    }
                    return Err(ApiError::Unavailable {
                        method: call.method.clone(),
                        path: call.path(),
                        attempts: attempt,
                        reason,
                        service_request_id: last_service_request_id,
                    });
                }
            }
        }
    }

    fn count_throttle(&self) {
        self.inner
            .counters
            .throttles
            .fetch_add(1, Ordering::Relaxed);
    }

    /// One attempt holding a permit of the gate: its outcome, the token it
    /// carried, and the permit, for the caller to let go of once it has
    /// acted on the answer.
    async fn attempt_through_gate(
        &self,
        ctx: &RequestContext,
        call: &Call,
        attempt: u32,
    ) -> Result<(Result<Answer, AttemptError>, SecretString, GatePermit<'_>), ApiError> {
        let permit = self.inner.gate.acquire().await;
        let bearer = self.inner.tokens.bearer().await?;
        let outcome = self.attempt(ctx, call, &bearer, attempt).await;
        Ok((outcome, bearer, permit))
    }

    /// The service refused `bearer`: forget it, so that the next attempt
    /// carries a fresh token.
    async fn refresh_token(&self, ctx: &RequestContext, call: &Call, bearer: &SecretString) {
        let inner = &*self.inner;
        inner
            .counters
            .token_refreshes
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            method = %call.method,
            path = call.url.path(),
            correlation_id = %ctx.correlation_id,
            "HTTP 401: refreshing the token and retrying once"
        );
        inner.tokens.invalidate_rejected(bearer).await;
    }

    /// The service's pause, honoured by every worker although `call` fails.
    fn honour(&self, ctx: &RequestContext, call: &Call, pause: Pause) {
        match pause {
            Pause::Wait(wait) => self.pause_for(wait),
            Pause::HoldBack(asked) => {
                self.hold_back(ctx, call, asked);
            }
        }
    }

    /// A throttled `call` is repeated after `wait`, which every worker waits.
    fn wait_throttled(
        &self,
        ctx: &RequestContext,
        call: &Call,
        attempt: u32,
        reason: &str,
        wait: Duration,
    ) {
        self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            method = %call.method,
            path = call.url.path(),
            correlation_id = %ctx.correlation_id,
            attempt,
            wait_seconds = wait.as_secs_f64(),
            "throttled ({reason}); every request waits {:.1} s",
            wait.as_secs_f64()
        );
        self.pause_for(wait);
    }

    /// `call` is repeated after `delay`, which it waits alone.
    async fn wait_alone(
        &self,
        ctx: &RequestContext,
        call: &Call,
        attempt: u32,
        reason: &str,
        delay: Duration,
    ) {
        self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            method = %call.method,
            path = call.url.path(),
            correlation_id = %ctx.correlation_id,
            attempt,
            wait_seconds = delay.as_secs_f64(),
            "{reason}; retrying in {:.1} s",
            delay.as_secs_f64()
        );
        tokio::time::sleep(delay).await;
    }

    /// The error `call` ends with, as `failure` names it, in the words of
    /// what its last attempt brought. A failure [`classify`] never gives
    /// for that kind of attempt falls to the nearest error.
    fn failure_error(&self, call: &Call, failure: Failure, failed: AttemptError) -> ApiError {
        match failed {
            AttemptError::Refused(answer) => refusal_error(call, failure, &answer),
            AttemptError::TooLarge {
                status,
                service_request_id,
            } => {
                let limit = self.inner.max_response_bytes;
                too_large_error(call, failure, status, service_request_id, limit)
            }
            AttemptError::Http(error) => transport_error(call, failure, &error),
        }
    }

    /// One attempt: send, read the whole answer, tell the observer, log one
    /// line.
    async fn attempt(
        &self,
        ctx: &RequestContext,
        call: &Call,
        bearer: &SecretString,
        attempt: u32,
    ) -> Result<Answer, AttemptError> {
        let inner = &*self.inner;
        let request_id = Uuid::new_v4();
        let client_request_id = Uuid::new_v4();
        let request = self.request(ctx, call, bearer, request_id, client_request_id);
        let started = std::time::Instant::now();
        inner.counters.requests.fetch_add(1, Ordering::Relaxed);
        let outcome = read_answer(request, inner.max_response_bytes).await;
        let elapsed = started.elapsed();
        if let Some(observer) = inner.observer.get() {
            observer.request(&call.method, answered_status(&outcome), elapsed);
        }
        let log = AttemptLog {
            ctx,
            call,
            attempt,
            request_id,
            client_request_id,
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        };
        log.write(&outcome);
        outcome
    }

    /// The HTTP request of one attempt of `call`, with its ids.
    fn request(
        &self,
        ctx: &RequestContext,
        call: &Call,
        bearer: &SecretString,
        request_id: Uuid,
        client_request_id: Uuid,
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .inner
            .http
            .request(call.method.clone(), call.url.clone())
            .bearer_auth(bearer.expose_secret())
            .header(MS_CORRELATION_ID, ctx.correlation_id.to_string())
            .header(MS_REQUEST_ID, request_id.to_string())
            .header(CLIENT_REQUEST_ID, client_request_id.to_string())
            .header(ACCEPT, "application/json");
        if let Some(etag) = &call.if_match {
            request = request.header(IF_MATCH, etag.clone());
        }
        if call.prefer_representation {
            request = request.header("Prefer", "return=representation");
        }
        if let Some(body) = &call.body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        request
    }
}

/// Send `request` and read the whole answer, chunk by chunk so that no
/// more than `limit` bytes are ever held; dropping the response closes the
/// connection. An answer other than a success is [`AttemptError::Refused`].
async fn read_answer(request: reqwest::RequestBuilder, limit: u64) -> Result<Answer, AttemptError> {
    let mut response = request.send().await.map_err(AttemptError::Http)?;
    let status = response.status();
    let headers = response.headers().clone();
    let service_request_id = service_request_id(&headers);
    if response
        .content_length()
        .is_some_and(|length| length > limit)
    {
        return Err(AttemptError::TooLarge {
            status,
            service_request_id,
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(AttemptError::Http)? {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(AttemptError::TooLarge {
                status,
                service_request_id,
            });
        }
        body.extend_from_slice(&chunk);
    }
    let answer = Answer {
        status,
        headers,
        body,
        service_request_id,
    };
    if status.is_success() {
        Ok(answer)
    } else {
        Err(AttemptError::Refused(answer))
    }
}

/// The status of an attempt's answer; `None` when no answer came.
fn answered_status(outcome: &Result<Answer, AttemptError>) -> Option<u16> {
    match outcome {
        Ok(answer) | Err(AttemptError::Refused(answer)) => Some(answer.status.as_u16()),
        Err(AttemptError::TooLarge { status, .. }) => Some(status.as_u16()),
        Err(AttemptError::Http(_)) => None,
    }
}

/// The error for `call` after the answer `answer`, as `failure` names it.
fn refusal_error(call: &Call, failure: Failure, answer: &Answer) -> ApiError {
    let service = ServiceError::parse(&answer.body);
    let reason = format!("HTTP {}: {}", answer.status, service.message);
    let method = call.method.clone();
    let path = call.path();
    let service_request_id = answer.service_request_id.clone();
    match failure {
        Failure::Unauthorized => ApiError::Unauthorized {
            method,
            path,
            message: service.message,
            service_request_id,
        },
        Failure::PreconditionFailed => ApiError::PreconditionFailed {
            method,
            path,
            message: service.message,
            service_request_id,
        },
        Failure::OutcomeUnknown => ApiError::OutcomeUnknown {
            method,
            path,
            reason,
            service_request_id,
        },
        Failure::Rejected => ApiError::Rejected {
            method,
            path,
            status: answer.status.as_u16(),
            code: service.code,
            message: service.message.into_boxed_str(),
            target: service.target.map(String::into_boxed_str),
            service_request_id,
        },
        Failure::Unexpected | Failure::ResponseTooLarge | Failure::InvalidRequest => {
            invalid_response(call, answer, format!("unexpected {reason}"))
        }
    }
}

/// The error for `call` after an answer larger than `limit` bytes.
fn too_large_error(
    call: &Call,
    failure: Failure,
    status: StatusCode,
    service_request_id: Option<Box<str>>,
    limit: u64,
) -> ApiError {
    if failure == Failure::OutcomeUnknown {
        return ApiError::OutcomeUnknown {
            method: call.method.clone(),
            path: call.path(),
            reason: format!(
                "HTTP {} but the answer is larger than api.max_response_bytes = {limit} bytes; reading stopped there",
                status.as_u16()
            ),
            service_request_id,
        };
    }
    ApiError::ResponseTooLarge {
        method: call.method.clone(),
        path: call.path(),
        status: status.as_u16(),
        limit,
        service_request_id,
    }
}

/// The error for `call` after a transport failure.
fn transport_error(call: &Call, failure: Failure, error: &reqwest::Error) -> ApiError {
    let reason = error_chain(error);
    if failure == Failure::InvalidRequest {
        return ApiError::InvalidRequest {
            method: call.method.clone(),
            path: call.path(),
            reason,
        };
    }
    ApiError::OutcomeUnknown {
        method: call.method.clone(),
        path: call.path(),
        reason,
        service_request_id: None,
    }
}

/// The log line of one attempt: what a support case needs to find it.
struct AttemptLog<'a> {
    ctx: &'a RequestContext,
    call: &'a Call,
    attempt: u32,
    request_id: Uuid,
    client_request_id: Uuid,
    elapsed_ms: u64,
}

impl AttemptLog<'_> {
    fn write(&self, outcome: &Result<Answer, AttemptError>) {
        match outcome {
            Ok(answer) => self.succeeded(answer),
            Err(AttemptError::Refused(answer)) => self.refused(answer),
            Err(AttemptError::TooLarge {
                status,
                service_request_id,
            }) => self.too_large(*status, service_request_id.as_deref()),
            Err(AttemptError::Http(error)) => self.failed(error),
        }
    }

    fn succeeded(&self, answer: &Answer) {
        let (ctx, call, elapsed_ms) = (self.ctx, self.call, self.elapsed_ms);
        tracing::debug!(
            method = %call.method,
            path = call.url.path(),
            status = answer.status.as_u16(),
            elapsed_ms,
            correlation_id = %ctx.correlation_id,
            request_id = %self.request_id,
            client_request_id = %self.client_request_id,
            service_request_id = answer.service_request_id.as_deref(),
            external_id = ctx.external_id.as_deref(),
            attempt = self.attempt,
            "{} {} -> {} in {elapsed_ms} ms",
            call.method,
            call.url.path(),
            answer.status.as_u16()
        );
    }

    /// Every error answer, with the ids a support case needs.
    fn refused(&self, answer: &Answer) {
        let (ctx, call, request_id) = (self.ctx, self.call, self.request_id);
        tracing::warn!(
            method = %call.method,
            path = call.url.path(),
            status = answer.status.as_u16(),
            elapsed_ms = self.elapsed_ms,
            correlation_id = %ctx.correlation_id,
            request_id = %request_id,
            client_request_id = %self.client_request_id,
            service_request_id = answer.service_request_id.as_deref(),
            external_id = ctx.external_id.as_deref(),
            attempt = self.attempt,
            "{} {} -> HTTP {} (request-id {}, MS-RequestId {request_id})",
            call.method,
            call.url.path(),
            answer.status.as_u16(),
            answer.service_request_id.as_deref().unwrap_or("none")
        );
    }

    fn too_large(&self, status: StatusCode, service_request_id: Option<&str>) {
        let (ctx, call, request_id) = (self.ctx, self.call, self.request_id);
        tracing::warn!(
            method = %call.method,
            path = call.url.path(),
            status = status.as_u16(),
            elapsed_ms = self.elapsed_ms,
            correlation_id = %ctx.correlation_id,
            request_id = %request_id,
            client_request_id = %self.client_request_id,
            service_request_id,
            external_id = ctx.external_id.as_deref(),
            attempt = self.attempt,
            "{} {} -> HTTP {} larger than api.max_response_bytes (request-id {}, MS-RequestId {request_id})",
            call.method,
            call.url.path(),
            status.as_u16(),
            service_request_id.unwrap_or("none")
        );
    }

    fn failed(&self, error: &reqwest::Error) {
        let (ctx, call, elapsed_ms) = (self.ctx, self.call, self.elapsed_ms);
        tracing::debug!(
            method = %call.method,
            path = call.url.path(),
            elapsed_ms,
            correlation_id = %ctx.correlation_id,
            request_id = %self.request_id,
            client_request_id = %self.client_request_id,
            external_id = ctx.external_id.as_deref(),
            attempt = self.attempt,
            "{} {} failed in {elapsed_ms} ms: {}",
            call.method,
            call.url.path(),
            error_chain(error)
        );
    }
}

/// The API root must be an absolute http(s) URL; plain http only to this
/// machine, so that a bearer token never crosses a network in clear.
fn parse_base_url(text: &str, allow_insecure: bool) -> Result<Url, String> {
    let url =
        Url::parse(text).map_err(|error| format!("base_url `{text}` is not a URL: {error}"))?;
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(format!("base_url `{text}` has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "base_url `{text}` must not have a query or a fragment"
        ));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if allow_insecure || is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "base_url `{text}` is plain http to another machine; bearer tokens go over https only"
        )),
        scheme => Err(format!(
            "base_url `{text}` has scheme `{scheme}`; use https"
        )),
    }
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// `Retry-After` as a wait from `now`: delay-seconds or an HTTP-date.
fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    parse_retry_after(headers.get(RETRY_AFTER)?.to_str().ok()?, now)
}

fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    if let Ok(seconds) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let date = DateTime::parse_from_rfc2822(value).ok()?;
    // A date in the past means "now".
    Some(
        (date.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// A referral from an answer's body; the eTag from the body's `eTag`, else
/// from the `ETag` header.
fn referral_from(answer: &Answer) -> Result<Referral, String> {
    let document: Value = serde_json::from_slice(&answer.body)
        .map_err(|error| format!("the body is not JSON ({error})"))?;
    let Value::Object(fields) = &document else {
        return Err("the body is not a JSON object".to_owned());
    };
    let id = match fields.get("id") {
        Some(Value::String(id)) if !id.trim().is_empty() => id.clone(),
        _ => return Err("the referral has no id".to_owned()),
    };
    check_referral_id(&id)?;
    let etag = match fields.get("eTag") {
        Some(Value::String(etag)) if !etag.trim().is_empty() => etag.clone(),
        _ => answer
            .headers
            .get(ETAG)
            .and_then(|value| value.to_str().ok())
            .filter(|etag| !etag.trim().is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                format!("referral {id} has no eTag, neither in the body nor in an ETag header")
            })?,
    };
    Ok(Referral { id, etag, document })
}

/// The referral a write returned, if it returned one that can be used; if
/// not, the caller reads it. Not an error: the write was applied.
fn written_referral(call: &Call, id: &str, answer: &Answer) -> Option<Referral> {
    if answer.status == StatusCode::NO_CONTENT || answer.body.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let problem = match referral_from(answer) {
        Ok(referral) if referral.id.eq_ignore_ascii_case(id) => return Some(referral),
        Ok(referral) => format!("the answer is about referral {}", referral.id),
        Err(reason) => reason,
    };
    tracing::warn!(
        method = %call.method,
        path = call.url.path(),
        status = answer.status.as_u16(),
        "{} {} succeeded but {problem}; the referral will be read again",
        call.method,
        call.url.path()
    );
    None
}

/// Referral ids longer than this are refused (GUIDs have 36 characters).
const MAX_REFERRAL_ID_CHARS: usize = 128;

/// Whether `id`, from the service or the store, can name one referral in a
/// URL path: a GUID, or a token of letters, digits and `-._~` other than
/// `.` and `..`. The error names the value, escaped and cut.
pub fn check_referral_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the referral id is empty".to_owned());
    }
    if Uuid::try_parse(id).is_ok() {
        return Ok(());
    }
    let path_safe = !id.is_empty()
        && id.len() <= MAX_REFERRAL_ID_CHARS
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if path_safe {
        return Ok(());
    }
    Err(format!(
        "referral id `{}` cannot be used: a GUID, or up to {MAX_REFERRAL_ID_CHARS} letters, digits and `-._~` other than `.` and `..`, is expected",
        cut_text(id, 100)
    ))
}

/// Why a listing is given up after `pages` pages, the last of them
/// pointing further to `link` and the last `empty_in_a_row` bringing no
/// referral; `None` while it may go on.
fn abandon_reason(
    link: &str,
    pages: u64,
    empty_in_a_row: u64,
    max_list_pages: u64,
    max_empty_list_pages: u64,
) -> Option<String> {
    if link.chars().count() > MAX_NEXT_LINK_CHARS {
        let shown = cut_text(link, 200);
        return Some(format!(
            "@odata.nextLink `{shown}` is longer than {MAX_NEXT_LINK_CHARS} characters"
        ));
    }
    if empty_in_a_row >= max_empty_list_pages {
        return Some(format!(
            "{empty_in_a_row} page(s) in a row brought no referral yet pointed further (api.max_empty_list_pages = {max_empty_list_pages})"
        ));
    }
    if pages >= max_list_pages {
        return Some(format!(
            "api.max_list_pages = {max_list_pages} reached and the last page still points further"
        ));
    }
    None
}

/// The items and the next link of one list page.
fn list_page(body: &[u8]) -> Result<(Vec<Value>, Option<String>), String> {
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(body) else {
        return Err("the list page is not a JSON object".to_owned());
    };
    let items = match fields.remove("value") {
        Some(Value::Array(items)) => items,
        _ => return Err("the list page has no `value` array".to_owned()),
    };
    let next_link = match fields.remove("@odata.nextLink") {
        None | Some(Value::Null) => None,
        Some(Value::String(link)) if link.trim().is_empty() => None,
        Some(Value::String(link)) => Some(link),
        Some(_) => return Err("@odata.nextLink is not a string".to_owned()),
    };
    Ok((items, next_link))
}

/// A whole-document body (POST, PUT): an object, without `links`.
fn document_body(method: &Method, url: &Url, body: &Value) -> Result<Vec<u8>, ApiError> {
    let refuse = |reason: String| ApiError::InvalidRequest {
        method: method.clone(),
        path: url.path().to_owned(),
        reason,
    };
    let Value::Object(fields) = body else {
        return Err(refuse("the referral body is not a JSON object".to_owned()));
    };
    let serialised = if fields.contains_key("links") {
        let mut without_links = fields.clone();
        without_links.remove("links");
        serde_json::to_vec(&without_links)
    } else {
        serde_json::to_vec(fields)
    };
    serialised.map_err(|error| refuse(format!("cannot serialise the referral: {error}")))
}

fn touches_links(op: &Op) -> bool {
    let path = op.path();
    path == "/links"
        || path.starts_with("/links/")
        || (path.is_empty() && op.value().get("links").is_some())
}

fn if_match(method: &Method, url: &Url, etag: &str) -> Result<HeaderValue, ApiError> {
    let refuse = |reason: &str| ApiError::InvalidRequest {
        method: method.clone(),
        path: url.path().to_owned(),
        reason: reason.to_owned(),
    };
    if etag.trim().is_empty() {
        return Err(refuse("the eTag for If-Match is empty"));
    }
    HeaderValue::from_str(etag).map_err(|_| refuse("the eTag is not a valid header value"))
}

fn invalid_response(call: &Call, answer: &Answer, reason: impl Into<String>) -> ApiError {
    ApiError::InvalidResponse {
        method: call.method.clone(),
        path: call.path(),
        status: answer.status.as_u16(),
        reason: reason.into(),
        service_request_id: answer.service_request_id.clone(),
    }
}
