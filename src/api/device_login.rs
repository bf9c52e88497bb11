//! The OAuth 2.0 device authorization grant (RFC 8628) against Entra ID's
//! v2 endpoints: the first refresh token, obtained by a person signing in
//! on another device.
//!
//! [`DeviceLogin::start`] asks for a code; [`DeviceLogin::wait_for_grant`]
//! polls the token endpoint at the interval the service set until the
//! person approves, declines or the code expires. What each answer means is
//! the pure [`poll_step`]. Secrets (the device code, the tokens, a client
//! secret) never reach a message: errors carry the HTTP status and the
//! OAuth `error`/`error_description` only.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::time::Instant;

use super::auth::error_chain;
use super::error::cut_text;

/// The grant type of a device-code poll.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// RFC 8628: without an interval in the answer, poll every 5 s.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// RFC 8628, 3.5: `slow_down` adds 5 s to the interval for good.
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// Token endpoint answers are small; a larger one is not read.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Where and as whom to sign in.
#[derive(Debug, Clone)]
pub struct DeviceLogin {
    /// `{authority}/{tenant}/oauth2/v2.0/devicecode`.
    pub device_code_url: String,
    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    pub token_url: String,
    pub client_id: String,
    /// Confidential clients only.
    pub client_secret: Option<SecretString>,
    /// Usually `https://api.partner.microsoft.com/.default offline_access`.
    pub scope: String,
}

/// What the device-code endpoint handed out.
pub struct DeviceCode {
    device_code: SecretString,
    /// What the person types, escaped and cut.
    pub user_code: String,
    /// Where the person goes, escaped and cut.
    pub verification_uri: String,
    pub expires_in: Duration,
    pub interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("{url} is unreachable: {reason}")]
    Transport { url: String, reason: String },
    #[error(
        "{url} refused with HTTP {status}{}",
        detail(error.as_deref(), description.as_deref())
    )]
    Refused {
        url: String,
        status: u16,
        error: Option<String>,
        description: Option<String>,
    },
    #[error("{url} answered HTTP {status} with nothing usable: {reason}")]
    InvalidResponse {
        url: String,
        status: u16,
        reason: &'static str,
    },
    #[error("the code expired before the sign-in was completed; run `referral-sync login` again")]
    Expired,
    #[error("the sign-in was declined{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Denied { description: Option<String> },
    #[error(
        "{url} granted no refresh token: the scope must include offline_access, and the app registration must allow it"
    )]
    NoRefreshToken { url: String },
}

impl LoginError {
    /// The person did not finish: declined, or let the code expire.
    pub fn is_unfinished(&self) -> bool {
        matches!(self, LoginError::Expired | LoginError::Denied { .. })
    }
}

fn detail(error: Option<&str>, description: Option<&str>) -> String {
    match (error, description) {
        (Some(error), Some(description)) => format!(": {error}: {description}"),
        (Some(error), None) => format!(": {error}"),
        (None, Some(description)) => format!(": {description}"),
        (None, None) => " (no OAuth error in the body)".to_owned(),
    }
}

/// What one poll's answer means.
pub enum PollStep {
    /// Not yet: poll again after the (possibly longer) interval.
    Wait,
    /// Signed in: the refresh token.
    Granted(SecretString),
    Fail(LoginError),
}

/// Decide what a token endpoint's answer to a device-code poll means, and
/// lengthen `interval` on `slow_down`. Pure.
pub fn poll_step(url: &str, status: u16, body: &[u8], interval: &mut Duration) -> PollStep {
    let fields = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => Some(fields),
        _ => None,
    };
    if (200..300).contains(&status) {
        let Some(mut fields) = fields else {
            return PollStep::Fail(LoginError::InvalidResponse {
                url: url.to_owned(),
                status,
                reason: "the body is not a JSON object",
            });
        };
        let has_access = fields
            .get("access_token")
            .and_then(Value::as_str)
            .is_some_and(|token| !token.trim().is_empty());
        if !has_access {
            return PollStep::Fail(LoginError::InvalidResponse {
                url: url.to_owned(),
                status,
                reason: "access_token is missing or empty",
            });
        }
        return match fields.remove("refresh_token") {
            Some(Value::String(token)) if is_one_line(&token) => {
                PollStep::Granted(SecretString::from(token.trim()))
            }
            Some(Value::String(token)) if !token.trim().is_empty() => {
                PollStep::Fail(LoginError::InvalidResponse {
                    url: url.to_owned(),
                    status,
                    reason: "the refresh token is not one line of printable ASCII",
                })
            }
            _ => PollStep::Fail(LoginError::NoRefreshToken {
                url: url.to_owned(),
            }),
        };
    }
    let text = |name: &str| {
        fields
            .as_ref()
            .and_then(|fields| fields.get(name))
            .and_then(Value::as_str)
            .map(|text| cut_text(text.trim(), 300))
    };
    let error = text("error");
    let description = text("error_description");
    match error.as_deref() {
        Some("authorization_pending") => PollStep::Wait,
        Some("slow_down") => {
            *interval += SLOW_DOWN_STEP;
            PollStep::Wait
        }
        Some("expired_token" | "code_expired") => PollStep::Fail(LoginError::Expired),
        // RFC 8628 says access_denied; Entra ID says authorization_declined.
        Some("access_denied" | "authorization_declined") => {
            PollStep::Fail(LoginError::Denied { description })
        }
        _ => PollStep::Fail(LoginError::Refused {
            url: url.to_owned(),
            status,
            error,
            description,
        }),
    }
}

fn is_one_line(token: &str) -> bool {
    let token = token.trim();
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())
}

impl DeviceLogin {
    /// Ask for a device code.
    pub async fn start(&self, http: &reqwest::Client) -> Result<DeviceCode, LoginError> {
        let url = &self.device_code_url;
        let mut form = vec![
            ("client_id", self.client_id.as_str()),
            ("scope", self.scope.as_str()),
        ];
        if let Some(secret) = &self.client_secret {
            form.push(("client_secret", secret.expose_secret()));
        }
        let (status, body) = post_form(http, url, &form).await?;
        let invalid = |reason| LoginError::InvalidResponse {
            url: url.clone(),
            status,
            reason,
        };
        if !(200..300).contains(&status) {
            let mut ignored = Duration::ZERO;
            return Err(match poll_step(url, status, &body, &mut ignored) {
                PollStep::Fail(error) => error,
                _ => invalid("an error status"),
            });
        }
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) else {
            return Err(invalid("the body is not a JSON object"));
        };
        let text = |name: &str| {
            fields
                .get(name)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|text| !text.is_empty())
        };
        let device_code = text("device_code").ok_or_else(|| invalid("device_code is missing"))?;
        let user_code = text("user_code").ok_or_else(|| invalid("user_code is missing"))?;
        // v2 says verification_uri, v1 said verification_url.
        let verification_uri = text("verification_uri")
            .or_else(|| text("verification_url"))
            .ok_or_else(|| invalid("verification_uri is missing"))?;
        let seconds = |name: &str| match fields.get(name) {
            Some(Value::Number(number)) => number.as_u64(),
            Some(Value::String(text)) => text.trim().parse().ok(),
            _ => None,
        };
        let expires_in = seconds("expires_in").ok_or_else(|| invalid("expires_in is missing"))?;
        let interval = seconds("interval")
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_INTERVAL)
            .max(Duration::from_secs(1));
        Ok(DeviceCode {
            device_code: SecretString::from(device_code),
            user_code: cut_text(user_code, 40),
            verification_uri: cut_text(verification_uri, 300),
            expires_in: Duration::from_secs(expires_in),
            interval,
        })
    }

    /// Poll until the person signs in, declines, or the code expires;
    /// the refresh token on success.
    pub async fn wait_for_grant(
        &self,
        http: &reqwest::Client,
        code: &DeviceCode,
    ) -> Result<SecretString, LoginError> {
        let deadline = Instant::now() + code.expires_in;
        let mut interval = code.interval;
        loop {
            tokio::time::sleep(interval).await;
            if Instant::now() >= deadline {
                return Err(LoginError::Expired);
            }
            let mut form = vec![
                ("grant_type", DEVICE_CODE_GRANT),
                ("client_id", self.client_id.as_str()),
                ("device_code", code.device_code.expose_secret()),
            ];
            if let Some(secret) = &self.client_secret {
                form.push(("client_secret", secret.expose_secret()));
            }
            let (status, body) = post_form(http, &self.token_url, &form).await?;
            match poll_step(&self.token_url, status, &body, &mut interval) {
                PollStep::Wait => {
                    tracing::debug!(
                        interval_secs = interval.as_secs(),
                        "sign-in not finished yet"
                    );
                }
                PollStep::Granted(refresh_token) => return Ok(refresh_token),
                PollStep::Fail(error) => return Err(error),
            }
        }
    }
}

/// POST a form; the status and at most [`MAX_ANSWER_BYTES`] of the body.
async fn post_form(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> Result<(u16, Vec<u8>), LoginError> {
    let transport = |error: reqwest::Error| LoginError::Transport {
        url: url.to_owned(),
        reason: error_chain(&error),
    };
    let mut response = http
        .post(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(form)
        .send()
        .await
        .map_err(transport)?;
    let status = response.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(LoginError::InvalidResponse {
                url: url.to_owned(),
                status,
                reason: "the answer is larger than 1 MiB",
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://login.example/t/oauth2/v2.0/token";

    /// (status, body) -> what the poll decides, the interval after it.
    #[test]
    fn each_answer_of_a_poll_means_what_rfc_8628_says() {
        enum Expect {
            Wait,
            Granted(&'static str),
            Fail(&'static str),
        }
        let cases: [(u16, &str, Expect, u64); 12] = [
            (400, r#"{"error":"authorization_pending"}"#, Expect::Wait, 5),
            (400, r#"{"error":"slow_down"}"#, Expect::Wait, 10),
            (
                400,
                r#"{"error":"expired_token"}"#,
                Expect::Fail(
                    "the code expired before the sign-in was completed; run `referral-sync login` again",
                ),
                5,
            ),
            (
                400,
                r#"{"error":"code_expired"}"#,
                Expect::Fail(
                    "the code expired before the sign-in was completed; run `referral-sync login` again",
                ),
                5,
            ),
            (
                400,
                r#"{"error":"access_denied"}"#,
                Expect::Fail("the sign-in was declined"),
                5,
            ),
            (
                400,
                r#"{"error":"authorization_declined","error_description":"AADSTS70000: declined\nFORGED"}"#,
                Expect::Fail("the sign-in was declined: AADSTS70000: declined\\nFORGED"),
                5,
            ),
            (
                400,
                r#"{"error":"invalid_client","error_description":"AADSTS7000218: needs client_secret"}"#,
                Expect::Fail(
                    "https://login.example/t/oauth2/v2.0/token refused with HTTP 400: invalid_client: AADSTS7000218: needs client_secret",
                ),
                5,
            ),
            (
                502,
                "<html>bad gateway</html>",
                Expect::Fail(
                    "https://login.example/t/oauth2/v2.0/token refused with HTTP 502 (no OAuth error in the body)",
                ),
                5,
            ),
            (
                200,
                r#"{"access_token":"at","refresh_token":" rt-1 ","expires_in":3600}"#,
                Expect::Granted("rt-1"),
                5,
            ),
            (
                200,
                r#"{"access_token":"at","expires_in":3600}"#,
                Expect::Fail(
                    "https://login.example/t/oauth2/v2.0/token granted no refresh token: the scope must include offline_access, and the app registration must allow it",
                ),
                5,
            ),
            (
                200,
                r#"{"access_token":"at","refresh_token":"rt\nsecond"}"#,
                Expect::Fail(
                    "https://login.example/t/oauth2/v2.0/token answered HTTP 200 with nothing usable: the refresh token is not one line of printable ASCII",
                ),
                5,
            ),
            (
                200,
                r#"{"refresh_token":"rt-1"}"#,
                Expect::Fail(
                    "https://login.example/t/oauth2/v2.0/token answered HTTP 200 with nothing usable: access_token is missing or empty",
                ),
                5,
            ),
        ];
        for (status, body, expected, interval_after) in cases {
            let mut interval = Duration::from_secs(5);
            let step = poll_step(URL, status, body.as_bytes(), &mut interval);
            match (step, expected) {
                (PollStep::Wait, Expect::Wait) => {}
                (PollStep::Granted(token), Expect::Granted(expected)) => {
                    assert_eq!(token.expose_secret(), expected, "{body}");
                }
                (PollStep::Fail(error), Expect::Fail(expected)) => {
                    assert_eq!(error.to_string(), expected, "{body}");
                    assert!(!error.to_string().contains("second"), "{error}");
                }
                _ => panic!("{status} {body}: unexpected step"),
            }
            assert_eq!(interval, Duration::from_secs(interval_after), "{body}");
        }
    }

    #[test]
    fn slow_down_adds_five_seconds_each_time() {
        let mut interval = Duration::from_secs(1);
        for _ in 0..3 {
            poll_step(URL, 400, br#"{"error":"slow_down"}"#, &mut interval);
        }
        assert_eq!(interval, Duration::from_secs(16));
    }
}
