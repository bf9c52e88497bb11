//! What happens to every request outside `/_admin` before and after its
//! handler: the journal entry, the configured latency, fault rules, and the
//! bearer token check for the API.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

use super::faults::FaultAction;
use super::journal::{JournalEntry, Outcome};
use super::rejection::Rejection;
use super::routes::API_PREFIX;
use super::server::ConnectionControl;
use super::tokens::TokenRefusal;
use super::{EmulatorState, lock};

/// Bodies larger than this are refused; referrals are a few kilobytes.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Form fields never kept in the journal.
const SECRET_FORM_FIELDS: &[&str] = &[
    "client_secret",
    "password",
    "client_assertion",
    "device_code",
];

/// Every answer outside `/_admin` carries a `request-id` of its own, as
/// Partner Center's do; the journal keeps it beside the client's ids.
pub(crate) async fn gateway(
    State(state): State<Arc<EmulatorState>>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path().starts_with("/_admin") {
        return next.run(request).await;
    }
    let service_request_id = uuid::Uuid::new_v4().to_string();
    let mut response = handle(state, request, next, &service_request_id).await;
    if let Ok(value) = HeaderValue::from_str(&service_request_id) {
        response.headers_mut().insert("request-id", value);
    }
    response
}

async fn handle(
    state: Arc<EmulatorState>,
    request: Request,
    next: Next,
    service_request_id: &str,
) -> Response {
    let started = Instant::now();
    let (mut parts, body) = request.into_parts();
    let is_api =
        parts.uri.path() == API_PREFIX || parts.uri.path().starts_with(&format!("{API_PREFIX}/"));
    let authorization = is_api.then(|| {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        lock(&state.tokens).check(header, Instant::now())
    });
    let body = read_body(body, MAX_BODY_BYTES).await;
    let mut entry = journal_entry(&parts, authorization.map(|check| check.is_ok()));
    entry.service_request_id = Some(service_request_id.to_owned());
    if let Ok(bytes) = &body {
        entry.body = journal_body(&parts.headers, bytes);
    }
    let seq = lock(&state.journal).open(entry);
    let mut record = Record {
        state: state.clone(),
        seq,
        started,
        closed: false,
    };

    let bytes = match body {
        Ok(bytes) => bytes,
        Err(rejection) => {
            let response = rejection.into_response();
            record.close(Some(response.status()), Outcome::Rejected, None);
            return response;
        }
    };

    if !state.latency.is_zero() {
        tokio::time::sleep(state.latency).await;
    }

    let is_read = parts.method == Method::GET || parts.method == Method::HEAD;
    let fault = lock(&state.faults).take(parts.method.as_str(), parts.uri.path());
    let connection = parts.extensions.get::<ConnectionControl>().cloned();
    let fault_kind = fault.as_ref().map(FaultAction::kind);
    match &fault {
        Some(FaultAction::Status {
            status,
            retry_after,
            body,
        }) => {
            let response = fault_response(*status, *retry_after, body.clone());
            record.close(Some(response.status()), Outcome::FaultStatus, fault_kind);
            return response;
        }
        Some(FaultAction::ResetBefore) => {
            record.close(None, Outcome::FaultResetBefore, fault_kind);
            return reset(connection).await;
        }
        Some(FaultAction::Delay { ms }) => tokio::time::sleep(Duration::from_millis(*ms)).await,
        Some(FaultAction::IgnorePrefer) => {
            parts
                .headers
                .remove(header::HeaderName::from_static("prefer"));
        }
        Some(FaultAction::ResetAfter | FaultAction::DelayAfter { .. }) | None => {}
    }

    let response = match authorization {
        Some(Err(refusal)) => unauthorized(refusal),
        _ => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    };
    let status = response.status();
    if let Some(FaultAction::ResetAfter) = fault {
        record.close(Some(status), Outcome::FaultResetAfter, fault_kind);
        return reset(connection).await;
    }
    let outcome = match (status.is_success(), is_read) {
        (true, true) => Outcome::Served,
        (true, false) => Outcome::Applied,
        (false, _) => Outcome::Rejected,
    };
    record.close(Some(status), outcome, fault_kind);
    // Closed first: the write took effect even if the client is gone
    // before it hears so.
    if let Some(FaultAction::DelayAfter { ms }) = fault {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    response
}

/// The whole body, up to `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Rejection> {
    let mut chunks = body.into_data_stream();
    let mut collected = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|error| Rejection::BodyUnreadable {
            reason: error.to_string(),
        })?;
        if collected.len() + chunk.len() > limit {
            return Err(Rejection::BodyTooLarge { limit });
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(collected))
}

/// Drop the client's connection without an answer. The response future
/// never completes: the connection task drops it along with the socket.
async fn reset(connection: Option<ConnectionControl>) -> Response {
    match connection {
        Some(connection) => {
            connection.reset();
            std::future::pending().await
        }
        // Only reachable when the router is served by something other than
        // this module's accept loop; say so rather than pretend.
        None => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": {
                "code": "resetUnavailable",
                "message": "a reset fault needs the emulator's own server",
                "target": null,
            }})),
        )
            .into_response(),
    }
}

fn unauthorized(refusal: TokenRefusal) -> Response {
    Rejection::Unauthorized {
        reason: refusal.reason(),
    }
    .into_response()
}

fn fault_response(status: u16, retry_after: Option<u64>, body: Option<Value>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = body.unwrap_or_else(|| {
        json!({"error": {
            "code": fault_code(status),
            "message": format!("injected fault: {status}"),
            "target": null,
        }})
    });
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn fault_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalidRequest",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "notFound",
        409 => "conflict",
        412 => "preconditionFailed",
        429 => "tooManyRequests",
        500 => "internalServerError",
        502 => "badGateway",
        503 => "serviceUnavailable",
        504 => "gatewayTimeout",
        _ => "injectedFault",
    }
}

fn journal_entry(parts: &Parts, authorized: Option<bool>) -> JournalEntry {
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    JournalEntry {
        seq: 0,
        at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        if_match: header("if-match"),
        prefer: header("prefer"),
        correlation_id: header("ms-correlationid"),
        request_id: header("ms-requestid"),
        client_request_id: header("client-request-id"),
        service_request_id: None,
        authorized,
        body: Value::Null,
        status: None,
        outcome: Outcome::InProgress,
        fault: None,
        duration_ms: None,
    }
}

/// JSON as JSON, a form as an object (secrets redacted), anything else as
/// null.
fn journal_body(headers: &HeaderMap, bytes: &Bytes) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    if is_form {
        let Ok(pairs) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(bytes) else {
            return Value::Null;
        };
        let form: Map<String, Value> = pairs
            .into_iter()
            .map(|(key, value)| {
                let value = if SECRET_FORM_FIELDS.contains(&key.as_str()) {
                    "<redacted>".to_owned()
                } else {
                    value
                };
                (key, Value::String(value))
            })
            .collect();
        return Value::Object(form);
    }
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

/// Closes the request's journal entry exactly once. If the request future
/// is dropped first (the client went away mid-delay, or hyper gave up on
/// the connection), the entry says so.
struct Record {
    state: Arc<EmulatorState>,
    seq: u64,
    started: Instant,
    closed: bool,
}

impl Record {
    fn close(&mut self, status: Option<StatusCode>, outcome: Outcome, fault: Option<&'static str>) {
        self.closed = true;
        let duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        lock(&self.state.journal).close(self.seq, |entry| {
            entry.status = status.map(|status| status.as_u16());
            entry.outcome = outcome;
            entry.fault = fault;
            entry.duration_ms = Some(duration_ms);
        });
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.closed {
            self.close(None, Outcome::Abandoned, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_are_journaled_without_secrets() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let body =
            Bytes::from_static(b"grant_type=refresh_token&refresh_token=r1&client_secret=s3cret");
        assert_eq!(
            journal_body(&headers, &body),
            json!({"grant_type": "refresh_token", "refresh_token": "r1", "client_secret": "<redacted>"})
        );
    }

    #[test]
    fn json_bodies_are_journaled_as_json_and_others_as_null() {
        let headers = HeaderMap::new();
        assert_eq!(
            journal_body(&headers, &Bytes::from_static(b"[{\"op\":\"add\"}]")),
            json!([{"op": "add"}])
        );
        assert_eq!(
            journal_body(&headers, &Bytes::from_static(b"not json")),
            Value::Null
        );
        assert_eq!(journal_body(&headers, &Bytes::new()), Value::Null);
    }

    #[test]
    fn injected_statuses_carry_retry_after_and_an_error_body() {
        let response = fault_response(429, Some(7), None);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
    }
}
