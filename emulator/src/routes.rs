//! The HTTP surface: the Referrals API under `/v1.0`, the token endpoint,
//! and (from `admin`) the `/_admin` endpoints, all behind the gateway.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::listing::ListQuery;
use super::rejection::Rejection;
use super::{EmulatorState, admin, gateway, lock};

/// The API version prefix: clients use `http://HOST:PORT/v1.0` as their
/// base URL.
pub const API_PREFIX: &str = "/v1.0";

pub(crate) fn router(state: Arc<EmulatorState>) -> Router {
    Router::new()
        .route(
            "/v1.0/engagements/referrals",
            get(list_referrals).post(create_referral),
        )
        .route(
            "/v1.0/engagements/referrals/{id}",
            get(get_referral)
                .patch(patch_referral)
                .put(replace_referral),
        )
        .route("/{tenant}/oauth2/token", post(grant_token_v1))
        .route("/{tenant}/oauth2/v2.0/token", post(grant_token_v2))
        .route("/{tenant}/oauth2/v2.0/devicecode", post(start_device_code))
        .merge(admin::router())
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            gateway::gateway,
        ))
        .with_state(state)
}

async fn no_route(method: Method, uri: Uri) -> Rejection {
    Rejection::NoRoute {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

async fn list_referrals(
    State(state): State<Arc<EmulatorState>>,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
) -> Result<Response, Rejection> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw_query.as_deref().unwrap_or("")).map_err(|error| {
            Rejection::InvalidQuery {
                option: "query".to_owned(),
                reason: error.to_string(),
            }
        })?;
    let query = ListQuery::parse(&pairs)?;
    let page = lock(&state.referrals).list(&query);
    let base = base_url(&headers);
    let with_links = query
        .select
        .as_ref()
        .is_none_or(|members| members.iter().any(|m| m == "links"));
    let value: Vec<Value> = page
        .value
        .into_iter()
        .map(|document| {
            if with_links {
                representation(document, &base)
            } else {
                document
            }
        })
        .collect();
    let mut body = json!({"value": value, "@odata.count": page.count});
    if let Some(last) = page.next {
        body["@odata.nextLink"] = Value::String(format!(
            "{base}/engagements/referrals?{}",
            query.next_page_query(&last)
        ));
    }
    Ok(axum::Json(body).into_response())
}

async fn get_referral(
    State(state): State<Arc<EmulatorState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Rejection> {
    let document = lock(&state.referrals)
        .get(&id)
        .cloned()
        .ok_or(Rejection::NotFound { id })?;
    Ok(document_response(
        StatusCode::OK,
        representation(document, &base_url(&headers)),
    ))
}

async fn create_referral(
    State(state): State<Arc<EmulatorState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Rejection> {
    let body = json_body(&headers, &body, &[])?;
    let created = state.write(|referrals, mint| referrals.create(&body, mint))?;
    let base = base_url(&headers);
    let location = created
        .get("id")
        .and_then(Value::as_str)
        .map(|id| format!("{base}/engagements/referrals/{id}"));
    let mut response = document_response(StatusCode::CREATED, representation(created, &base));
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn patch_referral(
    State(state): State<Arc<EmulatorState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Rejection> {
    let body = json_body(&headers, &body, &["application/json-patch+json"])?;
    let if_match = header_text(&headers, header::IF_MATCH);
    let patched =
        state.write(|referrals, mint| referrals.patch(&id, &body, if_match.as_deref(), mint))?;
    if prefers_representation(&headers) {
        return Ok(document_response(
            StatusCode::OK,
            representation(patched, &base_url(&headers)),
        ));
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    set_etag(&mut response, &patched);
    Ok(response)
}

async fn replace_referral(
    State(state): State<Arc<EmulatorState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Rejection> {
    let body = json_body(&headers, &body, &[])?;
    let if_match = header_text(&headers, header::IF_MATCH);
    let replaced =
        state.write(|referrals, mint| referrals.replace(&id, &body, if_match.as_deref(), mint))?;
    Ok(document_response(
        StatusCode::OK,
        representation(replaced, &base_url(&headers)),
    ))
}

/// The device-code grant type (RFC 8628).
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Which token endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// `/oauth2/token`: the audience is a `resource`.
    V1,
    /// `/oauth2/v2.0/token`: the audience is a `scope`; device codes too.
    V2,
}

/// An OAuth2 error answer (`error`, `error_description`), not the API's.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// An OAuth2 `invalid_request`: what is wrong with the form.
struct BadForm(String);

impl BadForm {
    fn into_response(self) -> Response {
        oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &self.0)
    }
}

/// The fields of a form body.
fn form_fields(headers: &HeaderMap, body: &Bytes) -> Result<Vec<(String, String)>, BadForm> {
    if media_type(headers) != "application/x-www-form-urlencoded" {
        return Err(BadForm(
            "the body must be application/x-www-form-urlencoded".to_owned(),
        ));
    }
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .map_err(|_| BadForm("the form body cannot be decoded".to_owned()))
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
        .filter(|value| !value.is_empty())
}

fn require(form: &[(String, String)], names: &[&str]) -> Result<(), BadForm> {
    match names.iter().find(|name| field(form, name).is_none()) {
        Some(missing) => Err(BadForm(format!("{missing} is required"))),
        None => Ok(()),
    }
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The OAuth2 v1 token endpoint: the refresh-token grant, with `resource`.
async fn grant_token_v1(
    State(state): State<Arc<EmulatorState>>,
    Path(_tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    grant_token(&state, &headers, &body, Endpoint::V1)
}

/// The OAuth2 v2 token endpoint: the refresh-token grant with `scope`, and
/// the device-code grant.
async fn grant_token_v2(
    State(state): State<Arc<EmulatorState>>,
    Path(_tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    grant_token(&state, &headers, &body, Endpoint::V2)
}

fn grant_token(
    state: &EmulatorState,
    headers: &HeaderMap,
    body: &Bytes,
    endpoint: Endpoint,
) -> Response {
    let form = match form_fields(headers, body) {
        Ok(form) => form,
        Err(bad) => return bad.into_response(),
    };
    match (field(&form, "grant_type"), endpoint) {
        (Some("refresh_token"), _) => refresh_grant(state, &form, endpoint),
        (Some(DEVICE_CODE_GRANT), Endpoint::V2) => device_code_grant(state, &form),
        (Some(_), Endpoint::V1) => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only grant_type=refresh_token is supported",
        ),
        (Some(_), Endpoint::V2) => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only grant_type=refresh_token and the device_code grant are supported",
        ),
        (None, _) => oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "grant_type is required",
        ),
    }
}

fn refresh_grant(state: &EmulatorState, form: &[(String, String)], endpoint: Endpoint) -> Response {
    let audience = match endpoint {
        Endpoint::V1 => "resource",
        Endpoint::V2 => "scope",
    };
    if let Err(bad) = require(form, &["client_id", audience, "refresh_token"]) {
        return bad.into_response();
    }
    let refresh_token = field(form, "refresh_token").unwrap_or_default();
    let Some(grant) = lock(&state.tokens).redeem(refresh_token, Instant::now()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "the refresh token is not valid",
        );
    };
    let mut body = json!({
        "token_type": "Bearer",
        "access_token": grant.access_token,
        "refresh_token": grant.refresh_token,
        "expires_in": grant.expires_in,
    });
    body[audience] = json!(field(form, audience));
    no_store(axum::Json(body).into_response())
}

fn device_code_grant(state: &EmulatorState, form: &[(String, String)]) -> Response {
    use super::device::Poll;
    if let Err(bad) = require(form, &["client_id", "device_code"]) {
        return bad.into_response();
    }
    let client_id = field(form, "client_id").unwrap_or_default();
    let device_code = field(form, "device_code").unwrap_or_default();
    let poll = lock(&state.device_codes).poll(device_code, client_id, Instant::now());
    let (error, description) = match poll {
        Poll::Approved { scope, .. } => {
            let grant = lock(&state.tokens).issue(Instant::now());
            let mut body = json!({
                "token_type": "Bearer",
                "access_token": grant.access_token,
                "expires_in": grant.expires_in,
                "scope": scope,
            });
            // As Entra: a refresh token only when offline_access was asked.
            if scope.split_whitespace().any(|s| s == "offline_access") {
                body["refresh_token"] = json!(grant.refresh_token);
            }
            return no_store(axum::Json(body).into_response());
        }
        Poll::Pending => (
            "authorization_pending",
            "the user has not yet finished signing in",
        ),
        Poll::SlowDown => ("slow_down", "polled sooner than the interval"),
        Poll::Expired => ("expired_token", "the device code has expired"),
        Poll::Denied => ("access_denied", "the user declined the sign-in"),
        Poll::Unknown => ("invalid_grant", "the device code is not valid"),
        Poll::WrongClient => (
            "invalid_grant",
            "the device code was issued to another client",
        ),
    };
    oauth_error(StatusCode::BAD_REQUEST, error, description)
}

/// `POST /{tenant}/oauth2/v2.0/devicecode`: start a device-code sign-in.
async fn start_device_code(
    State(state): State<Arc<EmulatorState>>,
    Path(_tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match form_fields(&headers, &body) {
        Ok(form) => form,
        Err(bad) => return bad.into_response(),
    };
    if let Err(bad) = require(&form, &["client_id", "scope"]) {
        return bad.into_response();
    }
    let client_id = field(&form, "client_id").unwrap_or_default();
    let scope = field(&form, "scope").unwrap_or_default();
    let code = lock(&state.device_codes).start(client_id, scope, Instant::now());
    let host = header_text(&headers, header::HOST).unwrap_or_else(|| "localhost".to_owned());
    let verification_uri = format!("http://{host}/devicelogin");
    no_store(
        axum::Json(json!({
            "device_code": code.device_code,
            "user_code": code.user_code,
            "verification_uri": verification_uri,
            "expires_in": code.expires_in,
            "interval": code.interval,
            "message": format!(
                "To sign in, use a web browser to open the page {verification_uri} and enter the code {} to authenticate.",
                code.user_code
            ),
        }))
        .into_response(),
    )
}

/// The base URL clients reached us under, for links and next links.
fn base_url(headers: &HeaderMap) -> String {
    let host = header_text(headers, header::HOST).unwrap_or_else(|| "localhost".to_owned());
    format!("http://{host}{API_PREFIX}")
}

/// The referral as the API returns it: with `links`, which is never stored.
fn representation(mut document: Value, base: &str) -> Value {
    let id = document
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let engagement = document
        .get("engagementId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let (Some(object), Some(id)) = (document.as_object_mut(), id) {
        let mut links = json!({
            "self": {"uri": format!("{base}/engagements/referrals/{id}"), "method": "GET"},
        });
        if let Some(engagement) = engagement {
            links["relatedReferrals"] = json!({
                "uri": format!("{base}/engagements/referrals?$filter=engagementId eq '{engagement}'"),
                "method": "GET",
            });
        }
        object.insert("links".to_owned(), links);
    }
    document
}

fn document_response(status: StatusCode, document: Value) -> Response {
    let mut response = (status, axum::Json(&document)).into_response();
    set_etag(&mut response, &document);
    response
}

fn set_etag(response: &mut Response, document: &Value) {
    if let Some(etag) = document
        .get("eTag")
        .and_then(Value::as_str)
        .and_then(|etag| HeaderValue::from_str(etag).ok())
    {
        response.headers_mut().insert(header::ETAG, etag);
    }
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// The media type without parameters, lower-cased.
fn media_type(headers: &HeaderMap) -> String {
    header_text(headers, header::CONTENT_TYPE)
        .and_then(|value| {
            value
                .split(';')
                .next()
                .map(|m| m.trim().to_ascii_lowercase())
        })
        .unwrap_or_default()
}

fn json_body(
    headers: &HeaderMap,
    body: &Bytes,
    also_accepted: &[&str],
) -> Result<Value, Rejection> {
    let media_type = media_type(headers);
    if media_type != "application/json" && !also_accepted.contains(&media_type.as_str()) {
        return Err(Rejection::UnsupportedMediaType {
            content_type: if media_type.is_empty() {
                "no Content-Type".to_owned()
            } else {
                media_type
            },
        });
    }
    serde_json::from_slice(body).map_err(|error| Rejection::MalformedBody {
        reason: error.to_string(),
    })
}

/// `Prefer` may list several preferences, comma-separated.
fn prefers_representation(headers: &HeaderMap) -> bool {
    headers.get_all("prefer").iter().any(|value| {
        value.to_str().is_ok_and(|text| {
            text.split(',').any(|preference| {
                preference
                    .trim()
                    .eq_ignore_ascii_case("return=representation")
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_point_back_at_the_emulator() {
        let document = json!({"id": "r1", "engagementId": "e1"});
        let shown = representation(document, "http://127.0.0.1:9/v1.0");
        assert_eq!(
            shown["links"],
            json!({
                "self": {"uri": "http://127.0.0.1:9/v1.0/engagements/referrals/r1", "method": "GET"},
                "relatedReferrals": {
                    "uri": "http://127.0.0.1:9/v1.0/engagements/referrals?$filter=engagementId eq 'e1'",
                    "method": "GET"
                },
            })
        );
    }

    #[test]
    fn prefer_is_found_among_other_preferences() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "prefer",
            HeaderValue::from_static("respond-async, return=representation"),
        );
        assert!(prefers_representation(&headers));
        headers.insert("prefer", HeaderValue::from_static("return=minimal"));
        assert!(!prefers_representation(&headers));
    }

    #[test]
    fn json_bodies_need_a_json_media_type() {
        let mut headers = HeaderMap::new();
        let body = Bytes::from_static(b"[]");
        assert_eq!(
            json_body(&headers, &body, &[]),
            Err(Rejection::UnsupportedMediaType {
                content_type: "no Content-Type".into()
            })
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json-patch+json"),
        );
        assert!(json_body(&headers, &body, &[]).is_err());
        assert_eq!(
            json_body(&headers, &body, &["application/json-patch+json"]),
            Ok(json!([]))
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        let broken = Bytes::from_static(b"[");
        assert!(matches!(
            json_body(&headers, &broken, &[]),
            Err(Rejection::MalformedBody { .. })
        ));
    }
}
