//! `/_admin`: unauthenticated endpoints for tests and curious users to look
//! inside the emulator and steer it. Never journaled, never faulted.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::faults::parse_fault_rules;
use super::rejection::Rejection;
use super::{EmulatorState, lock};

type Shared = State<Arc<EmulatorState>>;

pub(crate) fn router() -> Router<Arc<EmulatorState>> {
    Router::new()
        .route(
            "/_admin/referrals",
            get(list_referrals).post(insert_referral),
        )
        .route(
            "/_admin/referrals/{id}",
            get(get_referral).delete(remove_referral),
        )
        .route("/_admin/referrals/{id}/edit", post(edit_referral))
        .route(
            "/_admin/requests",
            get(list_requests).delete(clear_requests),
        )
        .route(
            "/_admin/faults",
            get(list_faults).post(add_faults).delete(clear_faults),
        )
        .route("/_admin/tokens/expire", post(expire_tokens))
        .route("/_admin/device-codes", get(list_device_codes))
        .route(
            "/_admin/device-codes/{user_code}/{decision}",
            post(decide_device_code),
        )
        .route("/_admin/shutdown", post(shut_down))
}

/// `{"value": [...]}`, oldest first: the same shape a seed file may have.
async fn list_referrals(State(state): Shared) -> Response {
    let all = lock(&state.referrals).all();
    axum::Json(json!({"value": all})).into_response()
}

async fn get_referral(State(state): Shared, Path(id): Path<String>) -> Result<Response, Rejection> {
    let document = lock(&state.referrals)
        .get(&id)
        .cloned()
        .ok_or(Rejection::NotFound { id })?;
    Ok(axum::Json(document).into_response())
}

/// A referral created elsewhere (by Microsoft, say), stored as given.
async fn insert_referral(State(state): Shared, body: Bytes) -> Result<Response, Rejection> {
    let document = parse(&body)?;
    let inserted = state.write(|referrals, mint| referrals.insert(document, mint))?;
    Ok((StatusCode::CREATED, axum::Json(inserted)).into_response())
}

/// Someone editing the referral in Partner Center; with `If-Match`, only
/// the version the edit was made from (412 otherwise).
async fn edit_referral(
    State(state): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Rejection> {
    let edit = parse(&body)?;
    let if_match = headers
        .get(header::IF_MATCH)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let edited = state
        .write(|referrals, mint| referrals.seller_edit(&id, &edit, if_match.as_deref(), mint))?;
    Ok(axum::Json(edited).into_response())
}

async fn remove_referral(
    State(state): Shared,
    Path(id): Path<String>,
) -> Result<Response, Rejection> {
    lock(&state.referrals).remove(&id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
struct Since {
    #[serde(default)]
    since: u64,
}

/// `{"value": [entry, ...]}`; `?since=SEQ` keeps only later entries.
async fn list_requests(State(state): Shared, Query(since): Query<Since>) -> Response {
    let entries = lock(&state.journal).since(since.since);
    axum::Json(json!({"value": entries})).into_response()
}

async fn clear_requests(State(state): Shared) -> StatusCode {
    lock(&state.journal).clear();
    StatusCode::NO_CONTENT
}

async fn list_faults(State(state): Shared) -> Response {
    axum::Json(json!({"value": lock(&state.faults).report()})).into_response()
}

/// Append one rule or an array of rules; answers with all rules in force.
async fn add_faults(State(state): Shared, body: Bytes) -> Result<Response, Rejection> {
    let rules = parse_fault_rules(&parse(&body)?)?;
    let mut faults = lock(&state.faults);
    faults.add(rules);
    Ok(axum::Json(json!({"value": faults.report()})).into_response())
}

async fn clear_faults(State(state): Shared) -> StatusCode {
    lock(&state.faults).clear();
    StatusCode::NO_CONTENT
}

/// Every access token stops working now, so a test can watch a client
/// refresh without waiting for the lifetime to run out.
async fn expire_tokens(State(state): Shared) -> Response {
    let expired = lock(&state.tokens).expire_all(Instant::now());
    axum::Json(json!({"expired": expired})).into_response()
}

/// The device-code sign-ins not yet redeemed.
async fn list_device_codes(State(state): Shared) -> Response {
    axum::Json(json!({"value": lock(&state.device_codes).pending()})).into_response()
}

/// A person's answer to a sign-in: `approve` or `deny` the code they typed.
async fn decide_device_code(
    State(state): Shared,
    Path((user_code, decision)): Path<(String, String)>,
) -> Response {
    let approve = match decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => {
            return (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"error": "use /approve or /deny"})),
            )
                .into_response();
        }
    };
    if lock(&state.device_codes).decide(&user_code, approve) {
        axum::Json(json!({"user_code": user_code, "approved": approve})).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": format!("no pending sign-in with code {user_code}")})),
        )
            .into_response()
    }
}

async fn shut_down(State(state): Shared) -> StatusCode {
    state.stop.send_replace(true);
    StatusCode::ACCEPTED
}

fn parse(body: &Bytes) -> Result<Value, Rejection> {
    serde_json::from_slice(body).map_err(|error| Rejection::MalformedBody {
        reason: error.to_string(),
    })
}
