//! Why the emulated service refuses a request, and how that looks on the
//! wire: `{"error": {"code", "message", "target"}}` with the HTTP status the
//! real service uses for it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use thiserror::Error;

/// A refused request. The message names what was wrong and where (the
/// referral id, the patch operation index, the JSON pointer).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Rejection {
    #[error("referral {id} does not exist")]
    NotFound { id: String },

    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },

    #[error("a referral with id {id} already exists")]
    AlreadyExists { id: String },

    #[error("If-Match {sent} does not match the current eTag {current} of referral {id}")]
    PreconditionFailed {
        id: String,
        sent: String,
        current: String,
    },

    #[error("replacing referral {id} requires an If-Match header with its eTag")]
    PreconditionRequired { id: String },

    #[error("the request body must be application/json, not {content_type}")]
    UnsupportedMediaType { content_type: String },

    #[error("the request body is not valid JSON: {reason}")]
    MalformedBody { reason: String },

    #[error("the request body must be {expected}")]
    WrongBodyShape { expected: &'static str },

    #[error("patch operation {index} is malformed: {reason}")]
    MalformedOperation { index: usize, reason: String },

    #[error("patch operation {index} is {op:?}: only \"add\" and \"replace\" are supported")]
    UnsupportedOperation { index: usize, op: String },

    #[error("{path} is read-only and cannot be written")]
    ReadOnlyField { path: String },

    #[error("patch operation {index} targets the whole referral; replace it with PUT instead")]
    WholeDocument { index: usize },

    #[error("patch operation {index} cannot be applied at {path}: {reason}")]
    PatchFailed {
        index: usize,
        path: String,
        reason: String,
    },

    #[error("{field} is required")]
    MissingField { field: String },

    #[error("{path}: {value} is not {expected}")]
    InvalidValue {
        path: String,
        value: String,
        expected: String,
    },

    #[error("status {from} cannot move to {to}")]
    TransitionNotAllowed { from: String, to: String },

    #[error("substatus {substatus} is not valid with status {status}")]
    SubstatusMismatch { status: String, substatus: String },

    #[error("query option {option}: {reason}")]
    InvalidQuery { option: String, reason: String },

    #[error("{reason}")]
    Unauthorized { reason: &'static str },

    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },

    #[error("the request body could not be read: {reason}")]
    BodyUnreadable { reason: String },

    #[error("{0}")]
    InvalidFaultRules(#[from] super::faults::FaultRuleError),
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::NotFound { .. } | Rejection::NoRoute { .. } => StatusCode::NOT_FOUND,
            Rejection::AlreadyExists { .. } => StatusCode::CONFLICT,
            Rejection::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            Rejection::PreconditionRequired { .. } => StatusCode::PRECONDITION_REQUIRED,
            Rejection::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Rejection::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Rejection::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::MalformedBody { .. }
            | Rejection::WrongBodyShape { .. }
            | Rejection::MalformedOperation { .. }
            | Rejection::UnsupportedOperation { .. }
            | Rejection::ReadOnlyField { .. }
            | Rejection::WholeDocument { .. }
            | Rejection::PatchFailed { .. }
            | Rejection::MissingField { .. }
            | Rejection::InvalidValue { .. }
            | Rejection::TransitionNotAllowed { .. }
            | Rejection::SubstatusMismatch { .. }
            | Rejection::InvalidQuery { .. }
            | Rejection::BodyUnreadable { .. }
            | Rejection::InvalidFaultRules(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The machine-readable `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::NotFound { .. } => "referralNotFound",
            Rejection::NoRoute { .. } => "notFound",
            Rejection::AlreadyExists { .. } => "conflict",
            Rejection::PreconditionFailed { .. } => "preconditionFailed",
            Rejection::PreconditionRequired { .. } => "preconditionRequired",
            Rejection::UnsupportedMediaType { .. } => "unsupportedMediaType",
            Rejection::MalformedBody { .. } | Rejection::WrongBodyShape { .. } => "invalidRequest",
            Rejection::MalformedOperation { .. } => "invalidPatchOperation",
            Rejection::UnsupportedOperation { .. } => "unsupportedPatchOperation",
            Rejection::ReadOnlyField { .. } => "readOnlyField",
            Rejection::WholeDocument { .. } => "invalidPatchPath",
            Rejection::PatchFailed { .. } => "invalidPatchPath",
            Rejection::MissingField { .. } => "missingField",
            Rejection::InvalidValue { .. } => "invalidValue",
            Rejection::TransitionNotAllowed { .. } => "invalidStatusTransition",
            Rejection::SubstatusMismatch { .. } => "invalidSubstatus",
            Rejection::InvalidQuery { .. } => "invalidQuery",
            Rejection::Unauthorized { .. } => "unauthorized",
            Rejection::BodyTooLarge { .. } => "requestTooLarge",
            Rejection::BodyUnreadable { .. } => "invalidRequest",
            Rejection::InvalidFaultRules(_) => "invalidFaultRules",
        }
    }

    /// What the error is about: a JSON pointer, a field, an id or a query
    /// option.
    pub fn target(&self) -> Option<String> {
        match self {
            Rejection::NotFound { id }
            | Rejection::AlreadyExists { id }
            | Rejection::PreconditionFailed { id, .. }
            | Rejection::PreconditionRequired { id } => Some(id.clone()),
            Rejection::MalformedOperation { index, .. }
            | Rejection::UnsupportedOperation { index, .. }
            | Rejection::WholeDocument { index } => Some(format!("/{index}")),
            Rejection::ReadOnlyField { path }
            | Rejection::PatchFailed { path, .. }
            | Rejection::InvalidValue { path, .. } => Some(path.clone()),
            Rejection::MissingField { field } => Some(field.clone()),
            Rejection::TransitionNotAllowed { .. } => Some("status".to_owned()),
            Rejection::SubstatusMismatch { .. } => Some("substatus".to_owned()),
            Rejection::InvalidQuery { option, .. } => Some(option.clone()),
            _ => None,
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "code": self.code(),
                "message": self.to_string(),
                "target": self.target(),
            }
        })
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        if let Rejection::Unauthorized { .. } = self {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precondition_failed_uses_the_documented_code_and_names_both_etags() {
        let rejection = Rejection::PreconditionFailed {
            id: "r1".into(),
            sent: "\"a\"".into(),
            current: "\"b\"".into(),
        };
        assert_eq!(rejection.status(), StatusCode::PRECONDITION_FAILED);
        assert_eq!(
            rejection.body(),
            json!({"error": {
                "code": "preconditionFailed",
                "message": "If-Match \"a\" does not match the current eTag \"b\" of referral r1",
                "target": "r1",
            }})
        );
    }

    #[test]
    fn unsupported_operation_targets_the_operation_index() {
        let rejection = Rejection::UnsupportedOperation {
            index: 2,
            op: "remove".into(),
        };
        assert_eq!(rejection.status(), StatusCode::BAD_REQUEST);
        assert_eq!(rejection.target().as_deref(), Some("/2"));
        assert_eq!(
            rejection.to_string(),
            "patch operation 2 is \"remove\": only \"add\" and \"replace\" are supported"
        );
    }

    #[test]
    fn unauthorized_carries_a_bearer_challenge() {
        let response = Rejection::Unauthorized {
            reason: "the access token has expired",
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );
    }
}
