//! The client against small HTTP servers on 127.0.0.1 scripted per test.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant as StdInstant;

use axum::extract::Request;
use axum::http::{HeaderMap as AxumHeaderMap, StatusCode as AxumStatus, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::io::AsyncReadExt;

use super::test_support::{LogCapture, serve};
use super::*;

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: Option<String>,
    headers: AxumHeaderMap,
    body: Vec<u8>,
    at: StdInstant,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A server answering request number `n` (from 1) with `script(n, seen)`.
struct Service {
    address: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Service {
    async fn start(script: impl Fn(usize, &Seen) -> Response + Send + Sync + 'static) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let recorded = Arc::clone(&seen);
        let handler = move |request: Request| {
            let recorded = Arc::clone(&recorded);
            let script = Arc::clone(&script);
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .unwrap()
                    .to_vec();
                let seen = Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().map(str::to_owned),
                    headers: parts.headers,
                    body,
                    at: StdInstant::now(),
                };
                let call = {
                    let mut all = recorded.lock().unwrap();
                    all.push(seen.clone());
                    all.len()
                };
                script(call, &seen)
            }
        };
        let address = serve(axum::Router::new().fallback(handler)).await;
        Service { address, seen }
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1.0", self.address)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests to the API (not to the token endpoint).
    fn api_requests(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|seen| seen.path.starts_with("/v1.0/"))
            .collect()
    }
}

fn respond(
    status: u16,
    headers: &[(&'static str, &'static str)],
    body: impl Into<String>,
) -> Response {
    let mut response = (AxumStatus::from_u16(status).unwrap(), body.into()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    for (name, value) in headers {
        response
            .headers_mut()
            .insert(*name, axum::http::HeaderValue::from_static(value));
    }
    response
}

fn referral_json(id: &str, etag: &str) -> Value {
    json!({
        "id": id,
        "eTag": etag,
        "name": "Contoso",
        "externalReferenceId": "lead-42",
        "organizationId": "an-unmapped-field",
        "links": {"self": {"uri": format!("/engagements/referrals/{id}"), "method": "GET"}},
    })
}

fn ok_referral(id: &str, etag: &str) -> Response {
    respond(200, &[], referral_json(id, etag).to_string())
}

fn test_options(base_url: String) -> ClientOptions {
    ClientOptions {
        base_url,
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(1),
        retry: RetryPolicy {
            initial: Duration::from_millis(10),
            max_interval: Duration::from_millis(40),
            multiplier: 2.0,
            max_elapsed: Duration::from_secs(10),
            max_attempts: 4,
            max_retry_after: Duration::from_secs(3600),
        },
        allow_insecure: false,
        ..ClientOptions::default()
    }
}

fn gate() -> Arc<RequestGate> {
    Arc::new(RequestGate::new(&GateOptions::default()).unwrap())
}

/// A client of `base_url` whose bearer token is `token-1`, from a file.
fn client_with(options: ClientOptions) -> (ApiClient, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "token-1\n").unwrap();
    let tokens = Arc::new(TokenProvider::new(
        AuthOptions::TokenFile { path },
        reqwest::Client::new(),
    ));
    (ApiClient::new(options, gate(), tokens).unwrap(), dir)
}

fn client_for(service: &Service) -> (ApiClient, tempfile::TempDir) {
    client_with(test_options(service.base_url()))
}

fn ctx() -> RequestContext {
    RequestContext::for_record(Uuid::new_v4(), "lead-42")
}

fn replace(path: &str, value: Value) -> Op {
    Op::Replace {
        path: path.to_owned(),
        value,
    }
}

const ETAG: &str = "\"2500ec5a-0000-0000-0000-5bf4967d0000\"";

#[tokio::test]
async fn get_sends_bearer_correlation_and_fresh_request_ids() {
    let service = Service::start(|_, _| ok_referral("r-1", ETAG)).await;
    let (client, _dir) = client_for(&service);
    let logs = LogCapture::start();
    let ctx = ctx();

    let referral = client.get(&ctx, "r-1").await.unwrap();
    client.get(&ctx, "r-1").await.unwrap();

    assert_eq!(referral.id, "r-1");
    assert_eq!(referral.etag, ETAG);
    assert_eq!(referral.document, referral_json("r-1", ETAG));
    let seen = service.seen();
    assert_eq!(seen.len(), 2);
    let mut request_ids = Vec::new();
    for request in &seen {
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/v1.0/engagements/referrals/r-1");
        assert_eq!(request.header("authorization"), Some("Bearer token-1"));
        assert_eq!(request.header("accept"), Some("application/json"));
        let correlation_id = ctx.correlation_id.to_string();
        assert_eq!(
            request.header("ms-correlationid"),
            Some(correlation_id.as_str())
        );
        let request_id = Uuid::parse_str(request.header("ms-requestid").unwrap()).unwrap();
        request_ids.push(request_id);
    }
    assert_ne!(request_ids[0], request_ids[1]);

    let logs = logs.text();
    let line = logs
        .lines()
        .find(|line| line.contains(&request_ids[0].to_string()))
        .unwrap_or_else(|| panic!("no log line names the request id: {logs}"));
    for fragment in [
        "DEBUG",
        "GET /v1.0/engagements/referrals/r-1 -> 200 in",
        &format!("correlation_id={}", ctx.correlation_id),
        "external_id=\"lead-42\"",
        "status=200",
    ] {
        assert!(line.contains(fragment), "{fragment} missing from {line}");
    }
    assert!(!logs.contains("token-1"), "{logs}");
    assert_eq!(
        client.stats(),
        ClientStats {
            requests: 2,
            ..ClientStats::default()
        }
    );
}

#[tokio::test]
async fn the_etag_falls_back_to_the_header() {
    let service = Service::start(|call, _| match call {
        1 => respond(
            200,
            &[("etag", "\"from-header\"")],
            json!({"id": "r-1"}).to_string(),
        ),
        _ => respond(200, &[], json!({"id": "r-1"}).to_string()),
    })
    .await;
    let (client, _dir) = client_for(&service);
    assert_eq!(
        client.get(&ctx(), "r-1").await.unwrap().etag,
        "\"from-header\""
    );
    let error = client.get(&ctx(), "r-1").await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "GET /v1.0/engagements/referrals/r-1: invalid response (HTTP 200): referral r-1 has no eTag, neither in the body nor in an ETag header"
    );
}

#[tokio::test]
async fn get_refuses_a_different_referral() {
    let service = Service::start(|_, _| ok_referral("r-2", ETAG)).await;
    let (client, _dir) = client_for(&service);
    let error = client.get(&ctx(), "r-1").await.unwrap_err();
    assert!(
        error
            .to_string()
            .ends_with("asked for referral r-1, got referral r-2"),
        "{error}"
    );
}

#[tokio::test]
async fn patch_sends_if_match_prefer_and_the_json_patch() {
    let service = Service::start(|_, _| ok_referral("r-1", "\"new-etag\"")).await;
    let (client, _dir) = client_for(&service);
    let ops = [
        replace("/details/dealValue", json!(1200.5)),
        Op::Add {
            path: "/team/-".into(),
            value: json!({"email": "a@contoso.com"}),
        },
    ];

    let updated = client
        .patch(&ctx(), "r-1", ETAG, &ops)
        .await
        .unwrap()
        .unwrap();

    assert_eq!(updated.etag, "\"new-etag\"");
    let seen = service.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.method, "PATCH");
    assert_eq!(request.path, "/v1.0/engagements/referrals/r-1");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("if-match"), Some(ETAG));
    assert_eq!(request.header("prefer"), Some("return=representation"));
    assert_eq!(request.header("authorization"), Some("Bearer token-1"));
    assert!(request.header("ms-correlationid").is_some());
    assert!(request.header("ms-requestid").is_some());
    assert_eq!(
        request.json(),
        json!([
            {"op": "replace", "path": "/details/dealValue", "value": 1200.5},
            {"op": "add", "path": "/team/-", "value": {"email": "a@contoso.com"}},
        ])
    );
}

#[tokio::test]
async fn a_write_without_a_usable_referral_returns_none() {
    // 204 (Prefer ignored), an empty 200, a 200 without an eTag anywhere.
    let service = Service::start(|call, _| match call {
        1 => respond(204, &[], ""),
        2 => respond(200, &[], ""),
        _ => respond(200, &[], json!({"id": "r-1"}).to_string()),
    })
    .await;
    let (client, _dir) = client_for(&service);
    let ops = [replace("/name", json!("Contoso"))];
    for _ in 0..3 {
        assert_eq!(client.patch(&ctx(), "r-1", ETAG, &ops).await.unwrap(), None);
    }
    assert_eq!(service.seen().len(), 3);
}

#[tokio::test]
async fn patch_refuses_what_the_api_forbids_without_sending() {
    let service = Service::start(|_, _| ok_referral("r-1", ETAG)).await;
    let (client, _dir) = client_for(&service);
    let cases: [(&str, &str, Vec<Op>, &str); 5] = [
        ("r-1", ETAG, vec![], "the patch has no operation"),
        (
            "r-1",
            ETAG,
            vec![replace("/links/self", json!({}))],
            "`replace /links/self` would send `links`, which is response-only",
        ),
        (
            "r-1",
            ETAG,
            vec![replace("", json!({"name": "x", "links": {}}))],
            "`replace ` would send `links`, which is response-only",
        ),
        (
            "r-1",
            " ",
            vec![replace("/name", json!("x"))],
            "the eTag for If-Match is empty",
        ),
        (
            "",
            ETAG,
            vec![replace("/name", json!("x"))],
            "the referral id is empty",
        ),
    ];
    for (id, etag, ops, reason) in cases {
        let error = client.patch(&ctx(), id, etag, &ops).await.unwrap_err();
        assert!(
            matches!(error, ApiError::InvalidRequest { .. }),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .starts_with("PATCH /v1.0/engagements/referrals"),
            "{error}"
        );
        assert!(
            error.to_string().ends_with(&format!("not sent: {reason}")),
            "{error}"
        );
    }
    assert!(service.seen().is_empty());
}

#[tokio::test]
async fn create_strips_links_and_accepts_any_2xx() {
    let service = Service::start(|_, seen| {
        let mut created = seen.json();
        created["id"] = json!("r-new");
        created["eTag"] = json!("\"e1\"");
        respond(201, &[], created.to_string())
    })
    .await;
    let (client, _dir) = client_for(&service);
    let body = json!({"name": "Contoso", "type": "Independent", "links": {"self": {}}});

    let created = client.create(&ctx(), &body).await.unwrap();

    assert_eq!(created.id, "r-new");
    assert_eq!(created.etag, "\"e1\"");
    let seen = service.seen();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/v1.0/engagements/referrals");
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
    assert_eq!(seen[0].header("if-match"), None);
    assert_eq!(
        seen[0].json(),
        json!({"name": "Contoso", "type": "Independent"})
    );
}

#[tokio::test]
async fn a_create_without_a_referral_in_the_answer_is_an_unknown_outcome() {
    let service = Service::start(|_, _| respond(201, &[], "")).await;
    let (client, _dir) = client_for(&service);
    let error = client
        .create(&ctx(), &json!({"name": "x"}))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ApiError::OutcomeUnknown { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with("POST /v1.0/engagements/referrals: outcome unknown, the request may have been applied: HTTP 201 but the body is not JSON"),
        "{error}"
    );
}

#[tokio::test]
async fn put_strips_links_and_sends_if_match() {
    let service = Service::start(|_, _| ok_referral("r-1", "\"e2\"")).await;
    let (client, _dir) = client_for(&service);
    let body = referral_json("r-1", ETAG);

    let replaced = client
        .put(&ctx(), "r-1", ETAG, &body)
        .await
        .unwrap()
        .unwrap();

    assert_eq!(replaced.etag, "\"e2\"");
    let request = &service.seen()[0];
    assert_eq!(request.method, "PUT");
    assert_eq!(request.header("if-match"), Some(ETAG));
    assert_eq!(request.header("content-type"), Some("application/json"));
    let mut expected = body.clone();
    expected.as_object_mut().unwrap().remove("links");
    assert_eq!(request.json(), expected);
}

#[tokio::test]
async fn a_stale_etag_is_precondition_failed() {
    let service = Service::start(|_, _| {
        respond(
            412,
            &[],
            r#"{"error":{"code":"preconditionFailed","message":"The eTag does not match"}}"#,
        )
    })
    .await;
    let (client, _dir) = client_for(&service);
    let error = client
        .patch(&ctx(), "r-1", ETAG, &[replace("/name", json!("x"))])
        .await
        .unwrap_err();
    assert!(
        matches!(error, ApiError::PreconditionFailed { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "PATCH /v1.0/engagements/referrals/r-1: HTTP 412 precondition failed (stale eTag): The eTag does not match"
    );
    assert_eq!(error.status(), Some(412));
    assert_eq!(service.seen().len(), 1);
}

#[tokio::test]
async fn rejections_carry_status_code_and_message_from_either_error_shape() {
    /// (status, body) -> (code, message, target)
    type Case = (
        (u16, String),
        (Option<&'static str>, String, Option<&'static str>),
    );
    let long_body = "x".repeat(800);
    let cases: Vec<Case> = vec![
        (
            (400, r#"{"error":{"code":"InvalidInput","message":"Status transition not allowed","target":"status"}}"#.into()),
            (Some("InvalidInput"), "Status transition not allowed".into(), Some("status")),
        ),
        (
            (400, r#"{"statusCode":400,"message":"Substatus Won is not valid for Active"}"#.into()),
            (None, "Substatus Won is not valid for Active".into(), None),
        ),
        (
            (403, "Forbidden: missing role".into()),
            (None, "Forbidden: missing role".into(), None),
        ),
        (
            (404, r#"{"error":{"code":"NotFound","message":"Referral not found"}}"#.into()),
            (Some("NotFound"), "Referral not found".into(), None),
        ),
        ((409, long_body), (None, format!("{}…", "x".repeat(500)), None)),
    ];
    for ((status, body), (code, message, target)) in cases {
        let response_body = body.clone();
        let service = Service::start(move |_, _| respond(status, &[], response_body.clone())).await;
        let (client, _dir) = client_for(&service);
        let error = client.get(&ctx(), "r-1").await.unwrap_err();
        match &error {
            ApiError::Rejected {
                method,
                path,
                status: got_status,
                code: got_code,
                message: got_message,
                target: got_target,
                service_request_id: None,
            } => {
                assert_eq!(method, Method::GET);
                assert_eq!(path, "/v1.0/engagements/referrals/r-1");
                assert_eq!(*got_status, status);
                assert_eq!(got_code.as_deref(), code);
                assert_eq!(&**got_message, message.as_str());
                assert_eq!(got_target.as_deref(), target);
            }
            other => panic!("HTTP {status}: {other:?}"),
        }
        assert!(
            error.to_string().starts_with(&format!(
                "GET /v1.0/engagements/referrals/r-1: HTTP {status} rejected: "
            )),
            "{error}"
        );
        assert_eq!(error.is_not_found(), status == 404);
        assert_eq!(service.seen().len(), 1, "HTTP {status} must not be retried");
    }
}

#[tokio::test]
async fn a_429_pauses_every_worker_for_retry_after() {
    let service = Service::start(|call, seen| {
        let id = seen.path.rsplit('/').next().unwrap_or_default().to_owned();
        if call == 1 {
            respond(
                429,
                &[("retry-after", "1")],
                r#"{"error":{"code":"TooManyRequests","message":"slow down"}}"#,
            )
        } else {
            ok_referral(&id, ETAG)
        }
    })
    .await;
    let (client, _dir) = client_for(&service);
    let logs = LogCapture::start();

    let throttled = {
        let client = client.clone();
        tokio::spawn(async move { client.get(&ctx(), "a").await })
    };
    // Another worker starting once the pause is in effect must wait too.
    let deadline = StdInstant::now() + Duration::from_secs(5);
    while client.gate().pause_in_effect().is_none() {
        assert!(
            StdInstant::now() < deadline,
            "the 429 never paused the gate"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(client.get(&ctx(), "b").await.unwrap().id, "b");
    assert_eq!(throttled.await.unwrap().unwrap().id, "a");

    let seen = service.seen();
    assert_eq!(seen.len(), 3);
    let throttled_at = seen[0].at;
    for later in &seen[1..] {
        let gap = later.at.duration_since(throttled_at);
        assert!(
            gap >= Duration::from_secs(1),
            "{} arrived after {gap:?}",
            later.path
        );
    }
    assert_eq!(
        client.stats(),
        ClientStats {
            requests: 3,
            retries: 1,
            throttles: 1,
            token_refreshes: 0
        }
    );
    let logs = logs.text();
    assert!(
        logs.contains(
            "throttled (HTTP 429 Too Many Requests: slow down); every request waits 1.0 s"
        ),
        "{logs}"
    );
    assert!(logs.contains("wait_seconds=1"), "{logs}");
}

#[tokio::test]
async fn giving_up_on_a_throttled_request_still_pauses_the_others() {
    let service = Service::start(|_, _| respond(429, &[("retry-after", "3600")], "")).await;
    let mut options = test_options(service.base_url());
    options.retry.max_attempts = 1;
    let (client, _dir) = client_with(options);
    let before = tokio::time::Instant::now();
    let error = client.get(&ctx(), "r-1").await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "GET /v1.0/engagements/referrals/r-1: service unavailable after 1 attempt(s): HTTP 429 Too Many Requests: (empty body)"
    );
    // An hour asked, honoured as sent (not cut to max_elapsed, 10 s).
    let until = client.gate().pause_in_effect().unwrap();
    assert!(
        until >= before + Duration::from_secs(3600),
        "{:?}",
        until - before
    );
    assert!(until <= tokio::time::Instant::now() + Duration::from_secs(3600));
    assert_eq!(client.stats().throttles, 1);
    assert_eq!(client.stats().retries, 0);
}

#[tokio::test]
async fn a_503_with_retry_after_on_patch_is_retried() {
    let service = Service::start(|call, _| match call {
        1 => respond(503, &[("retry-after", "0")], ""),
        _ => ok_referral("r-1", "\"e2\""),
    })
    .await;
    let (client, _dir) = client_for(&service);
    let updated = client
        .patch(&ctx(), "r-1", ETAG, &[replace("/name", json!("x"))])
        .await
        .unwrap();
    assert_eq!(updated.unwrap().etag, "\"e2\"");
    let seen = service.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, seen[1].body);
    assert_eq!(client.stats().throttles, 1);
}

#[tokio::test]
async fn a_503_with_retry_after_on_create_is_an_unknown_outcome_not_a_resend() {
    let service = Service::start(|_, _| respond(503, &[("retry-after", "1")], "")).await;
    let (client, _dir) = client_for(&service);
    let error = client
        .create(&ctx(), &json!({"name": "Contoso"}))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ApiError::OutcomeUnknown { .. }),
        "{error:?}"
    );
    // Sent once; the pause still holds for every other request.
    assert_eq!(service.seen().len(), 1);
    assert!(client.gate().pause_in_effect().is_some());
}

#[tokio::test]
async fn server_errors_on_get_are_retried_then_succeed() {
    let service = Service::start(|call, _| match call {
        1 => respond(
            500,
            &[],
            r#"{"error":{"code":"InternalError","message":"boom"}}"#,
        ),
        2 => respond(502, &[], "<html>Bad Gateway</html>"),
        _ => ok_referral("r-1", ETAG),
    })
    .await;
    let (client, _dir) = client_for(&service);
    let logs = LogCapture::start();
    assert_eq!(client.get(&ctx(), "r-1").await.unwrap().id, "r-1");
    assert_eq!(service.seen().len(), 3);
    let stats = client.stats();
    assert_eq!((stats.requests, stats.retries, stats.throttles), (3, 2, 0));
    let logs = logs.text();
    assert!(
        logs.contains("HTTP 500 Internal Server Error: boom; retrying in"),
        "{logs}"
    );
    assert!(
        logs.contains("HTTP 502 Bad Gateway: <html>Bad Gateway</html>; retrying in"),
        "{logs}"
    );
}

#[tokio::test]
async fn server_errors_on_get_end_in_unavailable() {
    let service = Service::start(|_, _| respond(503, &[], "")).await;
    let (client, _dir) = client_for(&service);
    let error = client.get(&ctx(), "r-1").await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "GET /v1.0/engagements/referrals/r-1: service unavailable after 4 attempt(s): HTTP 503 Service Unavailable: (empty body)"
    );
    assert_eq!(service.seen().len(), 4);
}

#[tokio::test]
async fn server_errors_on_writes_are_unknown_outcomes_and_not_retried() {
    for status in [500, 502, 503, 504] {
        let service = Service::start(move |_, _| {
            respond(status, &[], r#"{"statusCode":500,"message":"oops"}"#)
        })
        .await;
        let (client, _dir) = client_for(&service);
        let ops = [replace("/name", json!("x"))];
        let body = json!({"name": "x"});
        let errors = [
            client.patch(&ctx(), "r-1", ETAG, &ops).await.unwrap_err(),
            client.put(&ctx(), "r-1", ETAG, &body).await.unwrap_err(),
            client.create(&ctx(), &body).await.unwrap_err(),
        ];
        for error in &errors {
            assert!(
                matches!(error, ApiError::OutcomeUnknown { .. }),
                "{error:?}"
            );
            assert!(
                error.to_string().contains(&format!(
                    "outcome unknown, the request may have been applied: HTTP {status} "
                )),
                "{error}"
            );
            assert!(error.to_string().ends_with(": oops"), "{error}");
        }
        let methods: Vec<String> = service.seen().into_iter().map(|seen| seen.method).collect();
        assert_eq!(
            methods,
            ["PATCH", "PUT", "POST"],
            "HTTP {status} must not be retried"
        );
        assert_eq!(client.stats().retries, 0);
    }
}

/// A token endpoint (`/oauth2/token`, granting `at-1`, `at-2`, …) and an
/// API that accepts only the bearer tokens in `accepted`.
async fn service_with_token_endpoint(accepted: &'static [&'static str]) -> Service {
    let grants = Arc::new(AtomicUsize::new(0));
    Service::start(move |_, seen| {
        if seen.path == "/oauth2/token" {
            let grant = grants.fetch_add(1, Ordering::SeqCst) + 1;
            let body = json!({"access_token": format!("at-{grant}"), "expires_in": "3599"});
            return respond(200, &[], body.to_string());
        }
        let bearer = seen.header("authorization").unwrap_or_default();
        if accepted
            .iter()
            .any(|token| bearer == format!("Bearer {token}"))
        {
            ok_referral("r-1", ETAG)
        } else {
            respond(
                401,
                &[],
                r#"{"error":{"code":"Unauthorized","message":"token expired"}}"#,
            )
        }
    })
    .await
}

fn client_with_refresh_flow(service: &Service) -> (ApiClient, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let refresh_token_file = dir.path().join("refresh-token");
    std::fs::write(&refresh_token_file, "rt-1").unwrap();
    let tokens = Arc::new(TokenProvider::new(
        AuthOptions::RefreshToken {
            token_url: format!("http://{}/oauth2/token", service.address),
            client_id: "app".into(),
            client_secret_file: None,
            refresh_token_file,
            resource: auth::DEFAULT_RESOURCE.into(),
        },
        reqwest::Client::new(),
    ));
    let client = ApiClient::new(test_options(service.base_url()), gate(), tokens).unwrap();
    (client, dir)
}

#[tokio::test]
async fn a_401_refreshes_the_token_and_retries_once() {
    let service = service_with_token_endpoint(&["at-2"]).await;
    let (client, _dir) = client_with_refresh_flow(&service);
    assert_eq!(client.get(&ctx(), "r-1").await.unwrap().id, "r-1");
    let bearers: Vec<String> = service
        .api_requests()
        .iter()
        .map(|seen| seen.header("authorization").unwrap().to_owned())
        .collect();
    assert_eq!(bearers, ["Bearer at-1", "Bearer at-2"]);
    assert_eq!(client.stats().token_refreshes, 1);
}

#[tokio::test]
async fn a_second_401_is_unauthorized() {
    let service = service_with_token_endpoint(&[]).await;
    let (client, _dir) = client_with_refresh_flow(&service);
    let error = client
        .patch(&ctx(), "r-1", ETAG, &[replace("/name", json!("x"))])
        .await
        .unwrap_err();
    assert!(matches!(error, ApiError::Unauthorized { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "PATCH /v1.0/engagements/referrals/r-1: HTTP 401 unauthorized even with a fresh token: token expired"
    );
    assert_eq!(service.api_requests().len(), 2);
    assert!(!error.to_string().contains("at-"), "{error}");
}

#[tokio::test]
async fn list_follows_next_links_across_three_pages() {
    let address = Arc::new(Mutex::new(String::new()));
    let own_address = Arc::clone(&address);
    let service = Service::start(move |_, seen| {
        let page = match seen.query.as_deref() {
            None => json!({
                "value": [{"id": "r-1"}, {"id": "r-2"}],
                "@odata.count": 5,
                // Absolute, with a query to be sent back as is.
                "@odata.nextLink": format!(
                    "http://{}/v1.0/engagements/referrals?$skiptoken=p2&$top=2",
                    own_address.lock().unwrap()
                ),
            }),
            Some("$skiptoken=p2&$top=2") => json!({
                "value": [{"id": "r-3"}, {"id": "r-4"}],
                // Relative to the page it came from.
                "@odata.nextLink": "referrals?$skiptoken=p3",
            }),
            Some("$skiptoken=p3") => json!({"value": [{"id": "r-5"}], "@odata.nextLink": null}),
            Some(other) => panic!("unexpected query {other}"),
        };
        respond(200, &[], page.to_string())
    })
    .await;
    *address.lock().unwrap() = service.address.to_string();
    let (client, _dir) = client_for(&service);

    let mut pages = Vec::new();
    let count = client
        .list(&ctx(), |items| {
            pages.push(
                items
                    .iter()
                    .map(|item| item["id"].as_str().unwrap().to_owned())
                    .collect::<Vec<_>>(),
            )
        })
        .await
        .unwrap();

    assert_eq!(count, 5);
    assert_eq!(pages, [vec!["r-1", "r-2"], vec!["r-3", "r-4"], vec!["r-5"]]);
    let seen = service.seen();
    let requested: Vec<(&str, Option<&str>)> = seen
        .iter()
        .map(|seen| (seen.path.as_str(), seen.query.as_deref()))
        .collect();
    assert_eq!(
        requested,
        [
            ("/v1.0/engagements/referrals", None),
            ("/v1.0/engagements/referrals", Some("$skiptoken=p2&$top=2")),
            ("/v1.0/engagements/referrals", Some("$skiptoken=p3")),
        ]
    );
    assert!(
        seen.iter()
            .all(|seen| seen.header("authorization") == Some("Bearer token-1"))
    );
}

#[tokio::test]
async fn list_refuses_link_loops_and_foreign_links() {
    let cases = [
        (
            json!("/v1.0/engagements/referrals"),
            "@odata.nextLink `/v1.0/engagements/referrals` leads back to a page already fetched",
            1,
        ),
        (
            json!("https://elsewhere.example/v1.0/engagements/referrals?page=2"),
            "@odata.nextLink `https://elsewhere.example/v1.0/engagements/referrals?page=2` leaves http://127.0.0.1:",
            1,
        ),
        (json!(42), "@odata.nextLink is not a string", 1),
    ];
    for (link, reason, requests) in cases {
        let page = json!({"value": [{"id": "r-1"}], "@odata.nextLink": link}).to_string();
        let service = Service::start(move |_, _| respond(200, &[], page.clone())).await;
        let (client, _dir) = client_for(&service);
        let error = client.list(&ctx(), |_| {}).await.unwrap_err();
        let prefix = match error {
            ApiError::ListingAbandoned { .. } => {
                "GET /v1.0/engagements/referrals: listing given up after 1 page(s): "
            }
            ApiError::InvalidResponse { .. } => {
                "GET /v1.0/engagements/referrals: invalid response (HTTP 200): "
            }
            _ => panic!("{error:?}"),
        };
        assert!(error.to_string().starts_with(prefix), "{error}");
        assert!(error.to_string().contains(reason), "{error}");
        assert_eq!(service.seen().len(), requests);
    }
}

/// A server that reads each request whole, then closes the connection
/// without answering. Returns its address and a count of connections.
async fn hanging_up_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut received = Vec::new();
                let mut buffer = [0u8; 4096];
                while !whole_request(&received) {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(read) => received.extend_from_slice(&buffer[..read]),
                    }
                }
                drop(socket);
            });
        }
    });
    (address, connections)
}

fn whole_request(received: &[u8]) -> bool {
    let Some(end) = received.windows(4).position(|window| window == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    received.len() >= end + 4 + length
}

#[tokio::test]
async fn a_dropped_connection_on_patch_is_an_unknown_outcome() {
    let (address, connections) = hanging_up_server().await;
    let (client, _dir) = client_with(test_options(format!("http://{address}/v1.0")));
    let error = client
        .patch(&ctx(), "r-1", ETAG, &[replace("/name", json!("x"))])
        .await
        .unwrap_err();
    assert!(
        matches!(error, ApiError::OutcomeUnknown { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().starts_with(
            "PATCH /v1.0/engagements/referrals/r-1: outcome unknown, the request may have been applied: "
        ),
        "{error}"
    );
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "a PATCH must not be repeated"
    );
}

#[tokio::test]
async fn a_dropped_connection_on_get_is_retried() {
    let (address, connections) = hanging_up_server().await;
    let (client, _dir) = client_with(test_options(format!("http://{address}/v1.0")));
    let error = client.get(&ctx(), "r-1").await.unwrap_err();
    assert!(
        matches!(error, ApiError::Unavailable { attempts: 4, .. }),
        "{error:?}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_timeout_on_patch_is_an_unknown_outcome() {
    // The answer comes after the client has given up.
    let slow = serve(axum::Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        ""
    }))
    .await;
    let options = ClientOptions {
        request_timeout: Duration::from_millis(300),
        ..test_options(format!("http://{slow}/v1.0"))
    };
    let (client, _dir) = client_with(options);
    let started = StdInstant::now();
    let error = client
        .patch(&ctx(), "r-1", ETAG, &[replace("/name", json!("x"))])
        .await
        .unwrap_err();
    assert!(
        matches!(error, ApiError::OutcomeUnknown { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("timed out"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a PATCH must not be repeated"
    );
}

#[tokio::test]
async fn a_refused_connection_on_patch_is_retried_as_never_sent() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let (client, _dir) = client_with(test_options(format!("http://{address}/v1.0")));
    let error = client
        .patch(&ctx(), "r-1", ETAG, &[replace("/name", json!("x"))])
        .await
        .unwrap_err();
    assert!(
        matches!(error, ApiError::Unavailable { attempts: 4, .. }),
        "{error:?}"
    );
    assert_eq!(client.stats().retries, 3);
}

#[tokio::test]
async fn an_unreadable_token_file_is_an_auth_error() {
    let service = Service::start(|_, _| ok_referral("r-1", ETAG)).await;
    let (client, dir) = client_for(&service);
    std::fs::remove_file(dir.path().join("token")).unwrap();
    let error = client.get(&ctx(), "r-1").await.unwrap_err();
    assert!(
        matches!(error, ApiError::Auth(AuthError::Read { .. })),
        "{error:?}"
    );
    assert!(
        error.to_string().starts_with("cannot read the token file "),
        "{error}"
    );
    assert!(service.seen().is_empty());
}

#[test]
fn retry_after_in_seconds_or_as_a_date() {
    let now = DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:27:30 GMT")
        .unwrap()
        .with_timezone(&Utc);
    let cases = [
        ("1", Some(Duration::from_secs(1))),
        (" 30 ", Some(Duration::from_secs(30))),
        ("1.5", Some(Duration::from_millis(1500))),
        (
            "Wed, 21 Oct 2015 07:28:00 GMT",
            Some(Duration::from_secs(30)),
        ),
        ("Wed, 21 Oct 2015 07:00:00 GMT", Some(Duration::ZERO)),
        ("-1", None),
        ("soon", None),
        ("", None),
    ];
    for (value, expected) in cases {
        assert_eq!(parse_retry_after(value, now), expected, "{value:?}");
    }
}

#[test]
fn base_urls_are_checked() {
    let accepted = [
        "https://api.partner.microsoft.com/v1.0",
        "http://127.0.0.1:8080/v1.0",
        "http://localhost/v1.0/",
        "http://[::1]:9000/v1.0",
    ];
    for url in accepted {
        assert!(parse_base_url(url, false).is_ok(), "{url}");
    }
    let refused = [
        (
            "http://api.example.com/v1.0",
            "is plain http to another machine",
        ),
        ("ftp://api.example.com/v1.0", "has scheme `ftp`; use https"),
        ("api.partner.microsoft.com", "is not a URL"),
        (
            "https://api.example.com/v1.0?x=1",
            "must not have a query or a fragment",
        ),
    ];
    for (url, fragment) in refused {
        let error = parse_base_url(url, false).unwrap_err();
        assert!(error.starts_with(&format!("base_url `{url}` ")), "{error}");
        assert!(error.contains(fragment), "{error}");
    }
    // Only an explicit opt-in lets plain http leave the machine.
    assert!(parse_base_url("http://api.example.com/v1.0", true).is_ok());
}

#[test]
fn referral_urls_hold_the_id_whatever_the_base_ends_with() {
    let (client, _dir) = client_with(test_options("http://127.0.0.1:1/v1.0/".into()));
    let url = client
        .referral_url(&Method::GET, "7c9a7e3b-0000-4a3e-9b1a-2f0c1d2e3f40")
        .unwrap();
    assert_eq!(
        url.as_str(),
        "http://127.0.0.1:1/v1.0/engagements/referrals/7c9a7e3b-0000-4a3e-9b1a-2f0c1d2e3f40"
    );
    assert_eq!(
        client.referrals_url().as_str(),
        "http://127.0.0.1:1/v1.0/engagements/referrals"
    );
}

#[test]
fn client_options_deserialise_with_humane_durations() {
    let options: ClientOptions = serde_json::from_str(
        r#"{"base_url": "http://127.0.0.1:1/v1.0", "request_timeout": "90s", "retry": {"max_attempts": 2}}"#,
    )
    .unwrap();
    assert_eq!(options.request_timeout, Duration::from_secs(90));
    assert_eq!(options.connect_timeout, Duration::from_secs(10));
    assert_eq!(options.retry.max_attempts, 2);
    assert_eq!(options.retry.initial, Duration::from_millis(500));
}

#[tokio::test]
async fn invalid_options_are_refused() {
    let bad_retry = ClientOptions {
        retry: RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        },
        ..ClientOptions::default()
    };
    let no_timeout = ClientOptions {
        request_timeout: Duration::ZERO,
        ..ClientOptions::default()
    };
    let cases = [
        (
            bad_retry,
            "invalid API client options: retry.max_attempts must be at least 1",
        ),
        (
            no_timeout,
            "invalid API client options: request_timeout and connect_timeout must be greater than zero",
        ),
    ];
    for (options, message) in cases {
        let tokens = Arc::new(TokenProvider::new(
            AuthOptions::TokenFile {
                path: "/nonexistent".into(),
            },
            reqwest::Client::new(),
        ));
        let error = ApiClient::new(options, gate(), tokens).unwrap_err();
        assert!(error.to_string().starts_with(message), "{error}");
    }
}

#[test]
fn referral_ids_must_be_guids_or_path_safe_tokens() {
    let accepted = [
        "7c9a7e3b-0000-4a3e-9b1a-2f0c1d2e3f40",
        "{7C9A7E3B-0000-4A3E-9B1A-2F0C1D2E3F40}",
        "r-1",
        "a.b_c~d",
    ];
    for id in accepted {
        assert_eq!(check_referral_id(id), Ok(()), "{id}");
    }
    let refused = [
        ("", "the referral id is empty"),
        (".", "referral id `.` cannot be used"),
        ("..", "referral id `..` cannot be used"),
        ("a/b", "referral id `a/b` cannot be used"),
        ("a?b", "referral id `a?b` cannot be used"),
        ("r 1", "referral id `r 1` cannot be used"),
        ("r-1\nFORGED", "referral id `r-1\\nFORGED` cannot be used"),
        ("\u{1b}[31m", "referral id `\\u{1b}[31m` cannot be used"),
    ];
    for (id, message) in refused {
        let error = check_referral_id(id).unwrap_err();
        assert!(error.starts_with(message), "{id:?}: {error}");
    }
    let long = "x".repeat(200);
    let error = check_referral_id(&long).unwrap_err();
    assert!(error.contains("(200 characters in all)"), "{error}");
}

#[tokio::test]
async fn no_request_is_built_from_an_unusable_referral_id() {
    let service = Service::start(|_, _| ok_referral("r-1", ETAG)).await;
    let (client, _dir) = client_for(&service);
    for id in ["..", ".", "a/../b", "%2e%2e"] {
        let error = client.get(&ctx(), id).await.unwrap_err();
        assert!(
            matches!(error, ApiError::InvalidRequest { .. }),
            "{error:?}"
        );
        assert!(
            error.to_string().starts_with(&format!(
                "GET /v1.0/engagements/referrals: not sent: referral id `{id}` cannot be used"
            )),
            "{error}"
        );
        let error = client
            .patch(&ctx(), id, ETAG, &[replace("/name", json!("x"))])
            .await
            .unwrap_err();
        assert!(
            matches!(error, ApiError::InvalidRequest { .. }),
            "{error:?}"
        );
    }
    assert!(service.seen().is_empty(), "{:?}", service.seen());
}

#[tokio::test]
async fn an_unusable_referral_id_in_an_answer_is_refused() {
    let service = Service::start(|_, _| ok_referral("..", ETAG)).await;
    let (client, _dir) = client_for(&service);
    let error = client
        .create(&ctx(), &json!({"name": "x"}))
        .await
        .unwrap_err();
    // The create may have happened: the caller looks the referral up.
    assert!(
        matches!(error, ApiError::OutcomeUnknown { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("referral id `..` cannot be used"),
        "{error}"
    );
}

/// An answer of `total` bytes in chunks of 64 KiB, with or without a
/// Content-Length; `produced` counts the bytes the server handed out.
fn huge_answer(status: u16, total: u64, with_length: bool, produced: Arc<AtomicUsize>) -> Response {
    use futures_util::StreamExt as _;
    use std::sync::atomic::Ordering;
    const CHUNK: usize = 64 * 1024;
    let chunks = total.div_ceil(CHUNK as u64);
    let stream = futures_util::stream::iter(0..chunks).map(move |_| {
        produced.fetch_add(CHUNK, Ordering::Relaxed);
        Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b' '; CHUNK]))
    });
    let mut response = Response::new(axum::body::Body::from_stream(stream));
    *response.status_mut() = AxumStatus::from_u16(status).unwrap();
    if with_length {
        response.headers_mut().insert(
            header::CONTENT_LENGTH,
            axum::http::HeaderValue::from(chunks * CHUNK as u64),
        );
    }
    response
}

#[tokio::test]
async fn reading_an_answer_stops_at_max_response_bytes() {
    for with_length in [false, true] {
        let produced = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&produced);
        let service = Service::start(move |_, _| {
            huge_answer(200, 1 << 30, with_length, Arc::clone(&counter))
        })
        .await;
        let mut options = test_options(service.base_url());
        options.max_response_bytes = 1024 * 1024;
        let (client, _dir) = client_with(options);
        let error = client.get(&ctx(), "r-1").await.unwrap_err();
        assert!(
            matches!(error, ApiError::ResponseTooLarge { .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "GET /v1.0/engagements/referrals/r-1: the answer (HTTP 200) is larger than api.max_response_bytes = 1048576 bytes; reading stopped there"
        );
        // Not retried, and the server was not read to the end.
        assert_eq!(service.seen().len(), 1);
        let produced = produced.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            produced < 64 * 1024 * 1024,
            "with_length {with_length}: {produced} bytes produced"
        );
    }
}

#[tokio::test]
async fn a_huge_answer_to_a_write_is_an_unknown_outcome() {
    let produced = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&produced);
    let service =
        Service::start(move |_, _| huge_answer(200, 4 << 20, false, Arc::clone(&counter))).await;
    let mut options = test_options(service.base_url());
    options.max_response_bytes = 64 * 1024;
    let (client, _dir) = client_with(options);
    let error = client
        .patch(&ctx(), "r-1", ETAG, &[replace("/name", json!("x"))])
        .await
        .unwrap_err();
    assert!(
        matches!(error, ApiError::OutcomeUnknown { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("larger than api.max_response_bytes = 65536 bytes"),
        "{error}"
    );
    assert_eq!(service.seen().len(), 1);
}

#[tokio::test]
async fn a_huge_error_message_is_cut_where_the_error_is_built() {
    let message = "x".repeat(8_000_000);
    let body = json!({"error": {"code": "InvalidInput", "message": message}}).to_string();
    let service = Service::start(move |_, _| respond(400, &[], body.clone())).await;
    let (client, _dir) = client_for(&service);
    let error = client
        .patch(&ctx(), "r-1", ETAG, &[replace("/name", json!("x"))])
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(text.len() < 1200, "{} characters", text.len());
    assert!(
        text.ends_with(&format!(
            "InvalidInput: {}… (8000000 characters in all)",
            "x".repeat(1000)
        )),
        "{}",
        &text[..200]
    );
}

/// A listing server: every page holds `items(page)` referrals and points
/// to the next page, for ever.
async fn endless_listing(items: fn(usize) -> usize) -> Service {
    Service::start(move |call, _| {
        let value: Vec<Value> = (0..items(call))
            .map(|n| json!({"id": format!("r-{call}-{n}")}))
            .collect();
        let page = json!({
            "value": value,
            "@odata.nextLink": format!("/v1.0/engagements/referrals?$skiptoken=p{}", call + 1),
        });
        respond(200, &[], page.to_string())
    })
    .await
}

#[tokio::test]
async fn a_listing_of_empty_pages_that_point_further_is_given_up() {
    let service = endless_listing(|_| 0).await;
    let (client, _dir) = client_for(&service);
    let error = client.list(&ctx(), |_| {}).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "GET /v1.0/engagements/referrals: listing given up after 10 page(s): 10 page(s) in a row brought no referral yet pointed further (api.max_empty_list_pages = 10)"
    );
    assert_eq!(service.seen().len(), 10);
}

#[tokio::test]
async fn empty_pages_between_full_ones_are_followed() {
    // Nine empty pages, one full one, for ever: never ten empty in a row,
    // so only max_list_pages ends it.
    let service = endless_listing(|call| usize::from(call % 10 == 0)).await;
    let mut options = test_options(service.base_url());
    options.max_list_pages = 35;
    let (client, _dir) = client_with(options);
    let mut items = 0;
    let error = client
        .list(&ctx(), |page| items += page.len())
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "GET /v1.0/engagements/referrals: listing given up after 35 page(s): api.max_list_pages = 35 reached and the last page still points further"
    );
    assert_eq!(items, 3);
    assert_eq!(service.seen().len(), 35);
}

#[test]
fn a_listing_is_given_up_at_the_first_limit_it_reaches() {
    let link = "/v1.0/engagements/referrals?$skiptoken=2";
    let long_link = "x".repeat(MAX_NEXT_LINK_CHARS + 1);
    // (link, pages, empty pages in a row, the reason it is given up)
    let cases: [(&str, u64, u64, Option<String>); 7] = [
        (link, 1, 0, None),
        (link, 34, 9, None),
        (&long_link[..MAX_NEXT_LINK_CHARS], 1, 0, None),
        (
            &long_link,
            1,
            0,
            Some(format!(
                "@odata.nextLink `{}` is longer than {MAX_NEXT_LINK_CHARS} characters",
                cut_text(&long_link, 200)
            )),
        ),
        (
            link,
            10,
            10,
            Some(
                "10 page(s) in a row brought no referral yet pointed further (api.max_empty_list_pages = 10)"
                    .to_owned(),
            ),
        ),
        (
            link,
            35,
            0,
            Some(
                "api.max_list_pages = 35 reached and the last page still points further"
                    .to_owned(),
            ),
        ),
        // The empty pages are named before the page count.
        (
            link,
            35,
            10,
            Some(
                "10 page(s) in a row brought no referral yet pointed further (api.max_empty_list_pages = 10)"
                    .to_owned(),
            ),
        ),
    ];
    for (link, pages, empty_in_a_row, expected) in cases {
        assert_eq!(
            abandon_reason(link, pages, empty_in_a_row, 35, 10),
            expected,
            "{} characters, {pages} page(s), {empty_in_a_row} empty",
            link.len()
        );
    }
}

#[tokio::test]
async fn a_shutdown_interrupts_a_listing_between_and_during_pages() {
    // Each page takes 200 ms; the shutdown comes during the third.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let slow = serve(axum::Router::new().fallback(move || {
        let call = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let page = json!({
                "value": [{"id": format!("r-{call}")}],
                "@odata.nextLink": format!("/v1.0/engagements/referrals?$skiptoken=p{}", call + 1),
            });
            respond(200, &[], page.to_string())
        }
    }))
    .await;
    let (client, _dir) = client_with(test_options(format!("http://{slow}/v1.0")));
    let (shutdown, receiver) = watch::channel(false);
    client.interrupt_listings_on(receiver);
    let started = StdInstant::now();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = shutdown.send(true);
    });
    let error = client.list(&ctx(), |_| {}).await.unwrap_err();
    assert!(matches!(error, ApiError::Interrupted { .. }), "{error:?}");
    assert!(error.stops_every_request());
    assert_eq!(
        error.to_string(),
        "GET /v1.0/engagements/referrals: listing interrupted by shutdown after 2 page(s)"
    );
    assert!(
        started.elapsed() < Duration::from_millis(650),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_retry_after_longer_than_max_elapsed_is_waited_out_as_sent() {
    let service = Service::start(|call, _| match call {
        1 => respond(429, &[("retry-after", "1")], ""),
        _ => ok_referral("r-1", ETAG),
    })
    .await;
    let mut options = test_options(service.base_url());
    options.retry.max_elapsed = Duration::from_millis(100);
    let (client, _dir) = client_with(options);
    client.get(&ctx(), "r-1").await.unwrap();
    let seen = service.seen();
    assert_eq!(seen.len(), 2);
    let waited = seen[1].at - seen[0].at;
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
}

#[tokio::test]
async fn a_retry_after_beyond_max_retry_after_fails_and_holds_every_request_back() {
    let service = Service::start(|_, _| respond(429, &[("retry-after", "7200")], "")).await;
    let (client, _dir) = client_for(&service);
    let started = chrono::Utc::now();
    let error = client
        .patch(&ctx(), "r-1", ETAG, &[replace("/name", json!("x"))])
        .await
        .unwrap_err();
    assert!(
        matches!(error, ApiError::RetryAfterTooLong { .. }),
        "{error:?}"
    );
    assert!(error.stops_every_request());
    let text = error.to_string();
    assert!(
        text.starts_with(
            "PATCH /v1.0/engagements/referrals/r-1: the service asked to wait 7200 s (Retry-After), more than api.retry.max_retry_after_secs = 3600; no request is sent before "
        ),
        "{text}"
    );
    let not_before = text.rsplit(' ').next().unwrap();
    let not_before = chrono::DateTime::parse_from_rfc3339(not_before).unwrap();
    let ahead = (not_before.with_timezone(&chrono::Utc) - started).num_seconds();
    assert!((7199..=7202).contains(&ahead), "{ahead}");
    // Nothing more goes to the service until then, reads included.
    let again = client.get(&ctx(), "r-2").await.unwrap_err();
    assert!(
        matches!(again, ApiError::RetryAfterTooLong { .. }),
        "{again:?}"
    );
    assert!(
        again
            .to_string()
            .starts_with("GET /v1.0/engagements/referrals/r-2: the service asked to wait 7200 s"),
        "{again}"
    );
    assert_eq!(service.seen().len(), 1);
    assert_eq!(client.stats().retries, 0);
    assert_eq!(client.gate().pause_in_effect(), None);
}

#[tokio::test]
async fn every_request_carries_a_new_client_request_id_besides_the_ms_ids() {
    let service = Service::start(|_, _| ok_referral("r-1", ETAG)).await;
    let (client, _dir) = client_for(&service);
    let ctx = ctx();
    client.get(&ctx, "r-1").await.unwrap();
    client
        .patch(&ctx, "r-1", ETAG, &[replace("/name", json!("x"))])
        .await
        .unwrap();
    client.list(&ctx, |_| {}).await.unwrap_err();
    let seen = service.seen();
    let mut ids = HashSet::new();
    for request in &seen {
        let client_request_id = request.header("client-request-id").unwrap();
        let request_id = request.header("ms-requestid").unwrap();
        assert!(
            Uuid::try_parse(client_request_id).is_ok(),
            "{client_request_id}"
        );
        assert_ne!(client_request_id, request_id);
        assert!(
            ids.insert(client_request_id.to_owned()),
            "repeated {client_request_id}"
        );
        assert_eq!(
            request.header("ms-correlationid"),
            Some(ctx.correlation_id.to_string().as_str())
        );
    }
    assert_eq!(ids.len(), 3);
}

#[tokio::test]
async fn the_services_request_id_is_logged_and_carried_by_every_error() {
    let service = Service::start(|call, _| match call {
        1 => respond(
            400,
            &[("request-id", "svc-400")],
            r#"{"error":{"code":"Bad","message":"no"}}"#,
        ),
        2 => respond(412, &[("request-id", "svc-412")], ""),
        3 => respond(500, &[("request-id", "svc-500")], ""),
        _ => respond(401, &[("request-id", "svc-401")], ""),
    })
    .await;
    let mut options = test_options(service.base_url());
    options.retry.max_attempts = 1;
    let (client, _dir) = client_with(options);
    let logs = LogCapture::start();
    let ops = [replace("/name", json!("x"))];
    let rejected = client.get(&ctx(), "r-1").await.unwrap_err();
    let stale = client.patch(&ctx(), "r-1", ETAG, &ops).await.unwrap_err();
    let unknown = client.patch(&ctx(), "r-1", ETAG, &ops).await.unwrap_err();
    let unauthorized = client.get(&ctx(), "r-1").await.unwrap_err();
    let cases = [
        (&rejected, "svc-400"),
        (&stale, "svc-412"),
        (&unknown, "svc-500"),
        (&unauthorized, "svc-401"),
    ];
    let logs = logs.text();
    for (error, id) in cases {
        assert_eq!(error.service_request_id(), Some(id), "{error:?}");
        assert!(
            logs.lines().any(|line| line.contains("WARN")
                && line.contains(&format!("(request-id {id}, MS-RequestId "))),
            "{id}: {logs}"
        );
    }
    assert!(
        matches!(unknown, ApiError::OutcomeUnknown { .. }),
        "{unknown:?}"
    );
}
