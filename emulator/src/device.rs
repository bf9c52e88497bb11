//! The OAuth 2.0 device authorization grant (RFC 8628) as Entra ID's v2
//! endpoints serve it: a code is handed out, the client polls, a person
//! (here: a test, through `/_admin/device-codes`) approves or declines.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// What `POST /{tenant}/oauth2/v2.0/devicecode` hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAuthorization {
    pub device_code: String,
    pub user_code: String,
    pub expires_in: u64,
    pub interval: u64,
}

/// Where a pending code stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Pending,
    Approved,
    Denied,
}

/// What one poll of the token endpoint gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// `authorization_pending`.
    Pending,
    /// `slow_down`: polled sooner than the interval.
    SlowDown,
    /// `expired_token`.
    Expired,
    /// `access_denied`.
    Denied,
    /// Approved: tokens are issued, for this client and scope, once.
    Approved { client_id: String, scope: String },
    /// Not a code this service handed out (or already redeemed).
    Unknown,
    /// Another client than the one the code was handed to.
    WrongClient,
}

#[derive(Debug)]
struct Pending {
    user_code: String,
    client_id: String,
    scope: String,
    expires_at: Instant,
    interval: Duration,
    last_poll: Option<Instant>,
    decision: Decision,
}

/// A pending code, as `/_admin/device-codes` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingCode {
    pub user_code: String,
    pub client_id: String,
    pub scope: String,
    pub decision: Decision,
}

#[derive(Debug)]
pub struct DeviceCodes {
    by_device_code: HashMap<String, Pending>,
    lifetime: Duration,
    interval: Duration,
}

impl DeviceCodes {
    pub fn new(lifetime: Duration, interval: Duration) -> Self {
        DeviceCodes {
            by_device_code: HashMap::new(),
            lifetime,
            interval,
        }
    }

    pub fn start(&mut self, client_id: &str, scope: &str, now: Instant) -> DeviceAuthorization {
        let device_code = format!("emulator-device-{}", uuid::Uuid::new_v4().simple());
        // Eight letters as Entra shows them: easy to type, no digits.
        let letters: String = uuid::Uuid::new_v4()
            .as_bytes()
            .iter()
            .take(8)
            .map(|byte| char::from(b'A' + byte % 26))
            .collect();
        self.by_device_code.insert(
            device_code.clone(),
            Pending {
                user_code: letters.clone(),
                client_id: client_id.to_owned(),
                scope: scope.to_owned(),
                expires_at: now + self.lifetime,
                interval: self.interval,
                last_poll: None,
                decision: Decision::Pending,
            },
        );
        DeviceAuthorization {
            device_code,
            user_code: letters,
            expires_in: self.lifetime.as_secs(),
            interval: self.interval.as_secs(),
        }
    }

    /// Approve or decline the code a person typed; `false` if there is no
    /// pending code `user_code`.
    pub fn decide(&mut self, user_code: &str, approve: bool) -> bool {
        let Some(pending) = self
            .by_device_code
            .values_mut()
            .find(|pending| pending.user_code.eq_ignore_ascii_case(user_code))
        else {
            return false;
        };
        pending.decision = if approve {
            Decision::Approved
        } else {
            Decision::Denied
        };
        true
    }

    /// One poll, as the token endpoint answers it. A poll sooner than the
    /// interval after the last one is told to slow down, and the interval
    /// grows by 5 s (RFC 8628, 3.5); 100 ms of slack is allowed for the
    /// network.
    pub fn poll(&mut self, device_code: &str, client_id: &str, now: Instant) -> Poll {
        let Some(pending) = self.by_device_code.get_mut(device_code) else {
            return Poll::Unknown;
        };
        if pending.client_id != client_id {
            return Poll::WrongClient;
        }
        if now >= pending.expires_at {
            self.by_device_code.remove(device_code);
            return Poll::Expired;
        }
        let too_soon = pending.last_poll.is_some_and(|last| {
            now.duration_since(last) + Duration::from_millis(100) < pending.interval
        });
        pending.last_poll = Some(now);
        if too_soon {
            pending.interval += Duration::from_secs(5);
            return Poll::SlowDown;
        }
        match pending.decision {
            Decision::Pending => Poll::Pending,
            Decision::Denied => {
                self.by_device_code.remove(device_code);
                Poll::Denied
            }
            Decision::Approved => {
                let Some(pending) = self.by_device_code.remove(device_code) else {
                    return Poll::Unknown;
                };
                Poll::Approved {
                    client_id: pending.client_id,
                    scope: pending.scope,
                }
            }
        }
    }

    /// Codes not yet redeemed, for `/_admin/device-codes`.
    pub fn pending(&self) -> Vec<PendingCode> {
        let mut codes: Vec<PendingCode> = self
            .by_device_code
            .values()
            .map(|pending| PendingCode {
                user_code: pending.user_code.clone(),
                client_id: pending.client_id.clone(),
                scope: pending.scope.clone(),
                decision: pending.decision,
            })
            .collect();
        codes.sort_by(|a, b| a.user_code.cmp(&b.user_code));
        codes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_pending_until_approved_then_redeemed_once() {
        let mut codes = DeviceCodes::new(Duration::from_secs(60), Duration::from_secs(1));
        let start = Instant::now();
        let code = codes.start("app", "scope offline_access", start);
        assert_eq!(code.user_code.len(), 8);
        assert_eq!((code.expires_in, code.interval), (60, 1));
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert_eq!(codes.poll(&code.device_code, "app", at(1)), Poll::Pending);
        assert_eq!(
            codes.poll(&code.device_code, "other", at(2)),
            Poll::WrongClient
        );
        assert!(codes.decide(&code.user_code.to_lowercase(), true));
        assert!(!codes.decide("NOSUCHCD", true));
        assert_eq!(
            codes.poll(&code.device_code, "app", at(2)),
            Poll::Approved {
                client_id: "app".into(),
                scope: "scope offline_access".into()
            }
        );
        assert_eq!(codes.poll(&code.device_code, "app", at(3)), Poll::Unknown);
    }

    #[test]
    fn polling_too_fast_slows_down_and_codes_expire_or_are_denied() {
        let mut codes = DeviceCodes::new(Duration::from_secs(30), Duration::from_secs(5));
        let start = Instant::now();
        let code = codes.start("app", "s", start);
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(
            codes.poll(&code.device_code, "app", at(5_000)),
            Poll::Pending
        );
        assert_eq!(
            codes.poll(&code.device_code, "app", at(6_000)),
            Poll::SlowDown
        );
        // The interval is now 10 s, and 15 s after a second slow_down.
        assert_eq!(
            codes.poll(&code.device_code, "app", at(11_000)),
            Poll::SlowDown
        );
        assert_eq!(
            codes.poll(&code.device_code, "app", at(26_000)),
            Poll::Pending
        );
        assert_eq!(
            codes.poll(&code.device_code, "app", at(31_000)),
            Poll::Expired
        );

        let declined = codes.start("app", "s", start);
        assert!(codes.decide(&declined.user_code, false));
        assert_eq!(codes.pending()[0].decision, Decision::Denied);
        assert_eq!(
            codes.poll(&declined.device_code, "app", at(100)),
            Poll::Denied
        );
        assert!(codes.pending().is_empty());
    }
}
