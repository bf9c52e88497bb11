//! What can go wrong talking to Partner Center, and how the service says so.
//!
//! The variants sort failures by what the caller must do next: give up on
//! the payload ([`ApiError::Rejected`]), merge and retry
//! ([`ApiError::PreconditionFailed`]), find out what happened
//! ([`ApiError::OutcomeUnknown`]), or try again in a later cycle
//! ([`ApiError::Unavailable`]).

use reqwest::Method;
use serde_json::Value;

use super::auth::AuthError;

/// Raw bodies quoted in errors are cut to this many characters.
pub const MAX_QUOTED_BODY_CHARS: usize = 500;

/// Text from the service (an error's message, code or target) is cut to
/// this many characters where the error is built, so that no log line,
/// output, `last_error` or `status` carries more.
pub const MAX_SERVICE_TEXT_CHARS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 412: the `If-Match` eTag is stale; someone else changed the referral.
    #[error("{method} {path}: HTTP 412 precondition failed (stale eTag): {message}")]
    PreconditionFailed {
        method: Method,
        path: String,
        message: String,
        /// The service's `request-id` of the answer, for support cases.
        service_request_id: Option<Box<str>>,
    },
    /// 400, 403, 404, 409 and other 4xx: permanent for this payload.
    #[error("{method} {path}: HTTP {status} rejected: {}", describe(code.as_deref(), message, target.as_deref()))]
    Rejected {
        method: Method,
        path: String,
        status: u16,
        code: Option<String>,
        message: Box<str>,
        target: Option<Box<str>>,
        service_request_id: Option<Box<str>>,
    },
    /// 401 again after one token refresh and one retry.
    #[error("{method} {path}: HTTP 401 unauthorized even with a fresh token: {message}")]
    Unauthorized {
        method: Method,
        path: String,
        message: String,
        service_request_id: Option<Box<str>>,
    },
    /// A write that may or may not have been applied: the caller recovers
    /// with a GET and a three-way merge (or a list, for a create).
    #[error("{method} {path}: outcome unknown, the request may have been applied: {reason}")]
    OutcomeUnknown {
        method: Method,
        path: String,
        reason: String,
        /// `None` when no answer came (a timeout, a reset).
        service_request_id: Option<Box<str>>,
    },
    /// Retries used up, for a read or for a write known not to have been
    /// applied.
    #[error("{method} {path}: service unavailable after {attempts} attempt(s): {reason}")]
    Unavailable {
        method: Method,
        path: String,
        attempts: u32,
        reason: String,
        /// Of the last answer, if the last attempt brought one.
        service_request_id: Option<Box<str>>,
    },
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The service answered something this client cannot use.
    #[error("{method} {path}: invalid response (HTTP {status}): {reason}")]
    InvalidResponse {
        method: Method,
        path: String,
        status: u16,
        reason: String,
        service_request_id: Option<Box<str>>,
    },
    /// Refused before sending: the request would break a rule of the API.
    #[error("{method} {path}: not sent: {reason}")]
    InvalidRequest {
        method: Method,
        path: String,
        reason: String,
    },
    /// The answer was larger than `api.max_response_bytes`: reading
    /// stopped there.
    #[error(
        "{method} {path}: the answer (HTTP {status}) is larger than api.max_response_bytes = {limit} bytes; reading stopped there"
    )]
    ResponseTooLarge {
        method: Method,
        path: String,
        status: u16,
        limit: u64,
        service_request_id: Option<Box<str>>,
    },
    /// Paging was given up: too many pages, a link that repeats, or pages
    /// that bring nothing yet point further.
    #[error("GET {path}: listing given up after {pages} page(s): {reason}")]
    ListingAbandoned {
        path: String,
        pages: u64,
        reason: String,
    },
    /// The process is shutting down: the listing was stopped between or
    /// during pages.
    #[error("GET {path}: listing interrupted by shutdown after {pages} page(s)")]
    Interrupted { path: String, pages: u64 },
    /// The service asked to be left alone longer than
    /// `api.retry.max_retry_after_secs`; no request is sent before the
    /// time it named.
    #[error(
        "{method} {path}: the service asked to wait {retry_after_secs} s (Retry-After), more than api.retry.max_retry_after_secs = {max_secs}; no request is sent before {not_before}"
    )]
    RetryAfterTooLong {
        method: Method,
        path: String,
        retry_after_secs: u64,
        max_secs: u64,
        /// RFC 3339, UTC.
        not_before: String,
    },
    /// The client could not be built from its options.
    #[error("invalid API client options: {0}")]
    InvalidOptions(String),
}

impl ApiError {
    /// The HTTP status the service answered, when this error carries one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::PreconditionFailed { .. } => Some(412),
            ApiError::Unauthorized { .. } => Some(401),
            ApiError::Rejected { status, .. } | ApiError::InvalidResponse { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// The service's `request-id` of the answer this error came from, when
    /// there was one and it carried the header: record it with the error.
    pub fn service_request_id(&self) -> Option<&str> {
        match self {
            ApiError::PreconditionFailed {
                service_request_id, ..
            }
            | ApiError::Rejected {
                service_request_id, ..
            }
            | ApiError::Unauthorized {
                service_request_id, ..
            }
            | ApiError::OutcomeUnknown {
                service_request_id, ..
            }
            | ApiError::Unavailable {
                service_request_id, ..
            }
            | ApiError::InvalidResponse {
                service_request_id, ..
            }
            | ApiError::ResponseTooLarge {
                service_request_id, ..
            } => service_request_id.as_deref(),
            _ => None,
        }
    }

    /// 404: the referral is gone (or never existed).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Rejected { status: 404, .. })
    }

    /// A failure that every request of the cycle would meet alike, so the
    /// push phase should stop once rather than fail record after record:
    /// the service asked to be left alone for longer than we wait, or the
    /// process is shutting down.
    pub fn stops_every_request(&self) -> bool {
        matches!(
            self,
            ApiError::RetryAfterTooLong { .. } | ApiError::Interrupted { .. }
        )
    }
}

fn describe(code: Option<&str>, message: &str, target: Option<&str>) -> String {
    let mut text = match code {
        Some(code) => format!("{code}: {message}"),
        None => message.to_owned(),
    };
    if let Some(target) = target {
        text.push_str(&format!(" (target: {target})"));
    }
    text
}

/// What an error body says, in whichever shape the service chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceError {
    pub code: Option<String>,
    pub message: String,
    pub target: Option<String>,
}

impl ServiceError {
    /// Read `{"error": {"code", "message", "target"}}`, `{"statusCode",
    /// "message"}` or `{"code", "message"}`; anything else becomes the
    /// message as raw (truncated) text.
    pub fn parse(body: &[u8]) -> Self {
        if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) {
            let text = |value: Option<&Value>| match value {
                Some(Value::String(text)) if !text.trim().is_empty() => {
                    Some(service_text(text.trim()))
                }
                _ => None,
            };
            match fields.get("error") {
                Some(Value::Object(error)) => {
                    if let Some(message) = text(error.get("message")) {
                        return ServiceError {
                            code: text(error.get("code")),
                            message,
                            target: text(error.get("target")),
                        };
                    }
                }
                Some(Value::String(code)) => {
                    return ServiceError {
                        code: Some(service_text(code)),
                        message: text(fields.get("error_description"))
                            .or_else(|| text(fields.get("message")))
                            .unwrap_or_else(|| "(no message)".to_owned()),
                        target: None,
                    };
                }
                _ => {}
            }
            if let Some(message) = text(fields.get("message")) {
                return ServiceError {
                    code: text(fields.get("code")),
                    message,
                    target: text(fields.get("target")),
                };
            }
        }
        ServiceError {
            code: None,
            message: quote_body(body),
            target: None,
        }
    }
}

/// A raw body for a message: lossy UTF-8, trimmed, control characters
/// escaped, cut to [`MAX_QUOTED_BODY_CHARS`].
pub(crate) fn quote_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    match text.char_indices().nth(MAX_QUOTED_BODY_CHARS) {
        Some((cut, _)) => format!("{}…", escape_controls(&text[..cut])),
        None => escape_controls(text),
    }
}

/// Text the service chose, made safe for one log or output line: control
/// characters escaped (a newline cannot forge a line), cut to
/// [`MAX_SERVICE_TEXT_CHARS`] with the full size noted.
pub fn service_text(text: &str) -> String {
    cut_text(text, MAX_SERVICE_TEXT_CHARS)
}

/// [`service_text`] with another limit.
pub fn cut_text(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!(
            "{}… ({} characters in all)",
            escape_controls(&text[..cut]),
            text.chars().count()
        ),
        None => escape_controls(text),
    }
}

/// Control characters as Rust escapes (`\n`, `\u{1b}`); everything else
/// as it is.
pub fn escape_controls(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: Option<&str>, message: &str, target: Option<&str>) -> ServiceError {
        ServiceError {
            code: code.map(str::to_owned),
            message: message.to_owned(),
            target: target.map(str::to_owned),
        }
    }

    #[test]
    fn error_bodies_in_every_shape() {
        let long = "é".repeat(600);
        let cases = [
            (
                r#"{"error":{"code":"InvalidInput","message":"dealValue must be positive","target":"details.dealValue","innerError":{}}}"#.to_owned(),
                error(Some("InvalidInput"), "dealValue must be positive", Some("details.dealValue")),
            ),
            (
                r#"{"error":{"code":"preconditionFailed","message":"eTag mismatch"}}"#.to_owned(),
                error(Some("preconditionFailed"), "eTag mismatch", None),
            ),
            (
                r#"{"statusCode":400,"message":"Invalid status transition"}"#.to_owned(),
                error(None, "Invalid status transition", None),
            ),
            (
                r#"{"code":"Conflict","message":"already exists"}"#.to_owned(),
                error(Some("Conflict"), "already exists", None),
            ),
            (
                r#"{"error":"invalid_request","error_description":"bad"}"#.to_owned(),
                error(Some("invalid_request"), "bad", None),
            ),
            (
                r#"{"error":{"code":"NoMessage"}}"#.to_owned(),
                error(None, r#"{"error":{"code":"NoMessage"}}"#, None),
            ),
            ("<html>Bad Gateway</html>\n".to_owned(), error(None, "<html>Bad Gateway</html>", None)),
            ("   ".to_owned(), error(None, "(empty body)", None)),
            (long.clone(), error(None, &format!("{}…", "é".repeat(500)), None)),
            (
                format!(r#"{{"error":{{"code":"Big","message":"{}"}}}}"#, "m".repeat(8_000_000)),
                error(Some("Big"), &format!("{}… (8000000 characters in all)", "m".repeat(1000)), None),
            ),
            (
                r#"{"message":"line one\nFORGED line\u001b[31m","code":"c\u0007d"}"#.to_owned(),
                error(Some("c\\u{7}d"), "line one\\nFORGED line\\u{1b}[31m", None),
            ),
            ("<b>\u{7}bell</b>".to_owned(), error(None, "<b>\\u{7}bell</b>", None)),
        ];
        for (body, expected) in cases {
            assert_eq!(ServiceError::parse(body.as_bytes()), expected, "{body}");
        }
    }

    #[test]
    fn rejected_names_method_path_status_code_and_target() {
        let rejected = ApiError::Rejected {
            method: Method::PATCH,
            path: "/v1.0/engagements/referrals/r-1".into(),
            status: 400,
            code: Some("InvalidInput".into()),
            message: "dealValue must be positive".into(),
            target: Some("details.dealValue".into()),
            service_request_id: Some("4b6a0f6e-request".into()),
        };
        assert_eq!(
            rejected.to_string(),
            "PATCH /v1.0/engagements/referrals/r-1: HTTP 400 rejected: InvalidInput: dealValue must be positive (target: details.dealValue)"
        );
        assert_eq!(rejected.status(), Some(400));
        assert_eq!(rejected.service_request_id(), Some("4b6a0f6e-request"));
        assert!(!rejected.is_not_found());
    }
}
