//! Bearer tokens the emulated API accepts, and the refresh-token grant that
//! issues new ones (rotating the refresh token, as Entra ID does).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Why a bearer token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    Missing,
    Unknown,
    Expired,
}

impl TokenRefusal {
    pub fn reason(self) -> &'static str {
        match self {
            TokenRefusal::Missing => "the request has no Authorization: Bearer token",
            TokenRefusal::Unknown => "the bearer token is not one this service issued",
            TokenRefusal::Expired => "the access token has expired",
        }
    }
}

/// What a successful refresh grant hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
}

#[derive(Debug)]
pub struct TokenBook {
    /// Access token and when it stops working; `None`: never.
    access: HashMap<String, Option<Instant>>,
    refresh: HashSet<String>,
    lifetime: Duration,
}

impl TokenBook {
    /// `access` tokens given at start-up never expire on their own.
    pub fn new(access: &[String], refresh: &[String], lifetime: Duration) -> Self {
        TokenBook {
            access: access.iter().map(|token| (token.clone(), None)).collect(),
            refresh: refresh.iter().cloned().collect(),
            lifetime,
        }
    }

    /// Check an `Authorization` header value.
    pub fn check(&self, authorization: Option<&str>, now: Instant) -> Result<(), TokenRefusal> {
        let token = authorization
            .and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or(TokenRefusal::Missing)?;
        match self.access.get(token) {
            None => Err(TokenRefusal::Unknown),
            Some(Some(expiry)) if now >= *expiry => Err(TokenRefusal::Expired),
            Some(_) => Ok(()),
        }
    }

    /// Exchange a refresh token for a new access token and a rotated
    /// refresh token. Earlier refresh tokens keep working, as they do in
    /// Entra ID until they are revoked.
    pub fn redeem(&mut self, refresh_token: &str, now: Instant) -> Option<Grant> {
        if !self.refresh.contains(refresh_token) {
            return None;
        }
        let grant = Grant {
            access_token: format!("emulator-access-{}", uuid::Uuid::new_v4().simple()),
            refresh_token: format!("emulator-refresh-{}", uuid::Uuid::new_v4().simple()),
            expires_in: self.lifetime.as_secs(),
        };
        self.access
            .insert(grant.access_token.clone(), Some(now + self.lifetime));
        self.refresh.insert(grant.refresh_token.clone());
        Some(grant)
    }

    /// Issue a new access token and refresh token (a device-code sign-in
    /// was approved).
    pub fn issue(&mut self, now: Instant) -> Grant {
        let grant = Grant {
            access_token: format!("emulator-access-{}", uuid::Uuid::new_v4().simple()),
            refresh_token: format!("emulator-refresh-{}", uuid::Uuid::new_v4().simple()),
            expires_in: self.lifetime.as_secs(),
        };
        self.access
            .insert(grant.access_token.clone(), Some(now + self.lifetime));
        self.refresh.insert(grant.refresh_token.clone());
        grant
    }

    /// Make every access token expire now, including the start-up ones, so
    /// that a test can see a client refresh without waiting an hour.
    pub fn expire_all(&mut self, now: Instant) -> usize {
        for expiry in self.access.values_mut() {
            *expiry = Some(now);
        }
        self.access.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> TokenBook {
        TokenBook::new(
            &["static".to_owned()],
            &["seed-refresh".to_owned()],
            Duration::from_secs(60),
        )
    }

    #[test]
    fn bearer_tokens_are_checked_by_scheme_and_value() {
        let book = book();
        let now = Instant::now();
        let cases = [
            (None, Err(TokenRefusal::Missing)),
            (Some("static"), Err(TokenRefusal::Missing)),
            (Some("Bearer "), Err(TokenRefusal::Missing)),
            (Some("Basic static"), Err(TokenRefusal::Missing)),
            (Some("Bearer other"), Err(TokenRefusal::Unknown)),
            (Some("Bearer static"), Ok(())),
            (Some("bearer  static "), Ok(())),
        ];
        for (header, expected) in cases {
            assert_eq!(book.check(header, now), expected, "{header:?}");
        }
    }

    #[test]
    fn issued_tokens_expire_after_the_lifetime_and_refresh_tokens_rotate() {
        let mut book = book();
        let now = Instant::now();
        assert_eq!(book.redeem("wrong", now), None);
        let first = book.redeem("seed-refresh", now).unwrap();
        assert_eq!(first.expires_in, 60);
        let bearer = format!("Bearer {}", first.access_token);
        assert_eq!(
            book.check(Some(&bearer), now + Duration::from_secs(59)),
            Ok(())
        );
        assert_eq!(
            book.check(Some(&bearer), now + Duration::from_secs(60)),
            Err(TokenRefusal::Expired)
        );
        let second = book.redeem(&first.refresh_token, now).unwrap();
        assert_ne!(second.refresh_token, first.refresh_token);
        assert_ne!(second.access_token, first.access_token);
        assert!(book.redeem("seed-refresh", now).is_some());
    }

    #[test]
    fn expire_all_includes_start_up_tokens() {
        let mut book = book();
        let now = Instant::now();
        assert_eq!(book.expire_all(now), 1);
        assert_eq!(
            book.check(Some("Bearer static"), now),
            Err(TokenRefusal::Expired)
        );
    }
}
