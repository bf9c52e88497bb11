//! Retry schedules. The only module that knows the `backoff` crate, so that
//! it can be swapped (RUSTSEC-2025-0012 flags it unmaintained).
//!
//! Everything else in the crate speaks [`RetryPolicy`] (configuration) and
//! [`RetrySchedule`] (the delays of one request), both owned here.

use std::fmt;
use std::time::Duration;

use backoff::backoff::Backoff;
use backoff::exponential::ExponentialBackoff;
use serde::Deserialize;

/// How far a delay may stray from the exponential curve, as a fraction of
/// it: 0.5 spreads each delay over [50 %, 150 %] so that workers throttled
/// together do not come back together.
pub const JITTER: f64 = 0.5;

/// How one request is retried. Durations deserialise from humane strings
/// (`"500ms"`, `"30s"`, `"5m"`, `"1h"`) or a number of seconds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// The first delay (before jitter).
    #[serde(deserialize_with = "humane_duration::deserialize")]
    pub initial: Duration,
    /// The longest single delay, jitter included.
    #[serde(deserialize_with = "humane_duration::deserialize")]
    pub max_interval: Duration,
    /// Growth factor of the delay from one retry to the next.
    pub multiplier: f64,
    /// No retry starts once this much time has passed since the first attempt.
    #[serde(deserialize_with = "humane_duration::deserialize")]
    pub max_elapsed: Duration,
    /// Attempts of one request in all, the first included: 1 means no retry.
    pub max_attempts: u32,
    /// The longest `Retry-After` honoured (as sent, whatever
    /// `max_elapsed` says); a longer one fails the request, and no request
    /// is sent before the time the service named.
    #[serde(
        rename = "max_retry_after_secs",
        deserialize_with = "humane_duration::deserialize"
    )]
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(500),
            max_interval: Duration::from_secs(30),
            multiplier: 2.0,
            max_elapsed: Duration::from_secs(5 * 60),
            max_attempts: 8,
            max_retry_after: Duration::from_secs(3600),
        }
    }
}

/// A [`RetryPolicy`] that cannot produce a sensible schedule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RetryPolicyError {
    #[error("retry.multiplier must be a finite number >= 1.0, got {0}")]
    Multiplier(f64),
    #[error("retry.initial must be greater than zero")]
    ZeroInitial,
    #[error(
        "retry.max_interval ({max_interval:?}) must not be shorter than retry.initial ({initial:?})"
    )]
    MaxIntervalBelowInitial {
        initial: Duration,
        max_interval: Duration,
    },
    #[error("retry.max_attempts must be at least 1 (the first attempt counts)")]
    ZeroAttempts,
}

impl RetryPolicy {
    /// Check the policy once, at the edge, so that a typo in the
    /// configuration is reported instead of silently retrying oddly.
    pub fn validate(&self) -> Result<(), RetryPolicyError> {
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(RetryPolicyError::Multiplier(self.multiplier));
        }
        if self.initial.is_zero() {
            return Err(RetryPolicyError::ZeroInitial);
        }
        if self.max_interval < self.initial {
            return Err(RetryPolicyError::MaxIntervalBelowInitial {
                initial: self.initial,
                max_interval: self.max_interval,
            });
        }
        if self.max_attempts == 0 {
            return Err(RetryPolicyError::ZeroAttempts);
        }
        Ok(())
    }
}

/// The delays before the retries of one request: exponential, jittered by
/// [`JITTER`], capped at `max_interval`, and finished (`None`) once
/// `max_attempts` or `max_elapsed` is used up. Time is read from tokio's
/// clock so that tests with paused time control it.
pub struct RetrySchedule {
    backoff: ExponentialBackoff<TokioClock>,
    retries_left: u32,
    retries_given: u32,
    max_interval: Duration,
}

impl RetrySchedule {
    /// Start a schedule now. An invalid policy is made safe rather than
    /// refused (multiplier below 1 acts as 1, zero attempts as one attempt);
    /// [`RetryPolicy::validate`] is where it is refused.
    pub fn new(policy: &RetryPolicy) -> Self {
        let multiplier = if policy.multiplier.is_finite() && policy.multiplier >= 1.0 {
            policy.multiplier
        } else {
            1.0
        };
        let max_interval = policy.max_interval.max(policy.initial);
        let clock = TokioClock;
        let backoff = ExponentialBackoff {
            current_interval: policy.initial,
            initial_interval: policy.initial,
            randomization_factor: JITTER,
            multiplier,
            max_interval,
            start_time: backoff::Clock::now(&clock),
            max_elapsed_time: Some(policy.max_elapsed),
            clock,
        };
        RetrySchedule {
            backoff,
            retries_left: policy.max_attempts.saturating_sub(1),
            retries_given: 0,
            max_interval,
        }
    }

    /// The delay before the next retry, or `None` when the request must not
    /// be retried any more. Once `None`, always `None`.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.retries_left == 0 {
            return None;
        }
        let Some(delay) = self.backoff.next_backoff() else {
            self.retries_left = 0;
            return None;
        };
        self.retries_left -= 1;
        self.retries_given += 1;
        Some(delay.min(self.max_interval))
    }

    /// Attempts made so far if every delay handed out was followed by one:
    /// the first attempt plus the retries.
    pub fn attempts(&self) -> u32 {
        self.retries_given + 1
    }
}

impl fmt::Debug for RetrySchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetrySchedule")
            .field("retries_left", &self.retries_left)
            .field("retries_given", &self.retries_given)
            .field("next_interval", &self.backoff.current_interval)
            .finish()
    }
}

/// tokio's clock: the same instant as `std` in production, and the paused,
/// test-controlled one under `tokio::time::pause`.
#[derive(Debug, Clone, Copy)]
struct TokioClock;

impl backoff::Clock for TokioClock {
    fn now(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// Durations written the way people write them: `"250ms"`, `"30s"`, `"5m"`,
/// `"1h"`, `"1.5s"`, or a bare number of seconds (in a string or not).
pub mod humane_duration {
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};

    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a duration (try \"500ms\", \"30s\", \"5m\")"))?;
        let seconds_per_unit = match unit.trim() {
            "ms" => 0.001,
            "" | "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(format!(
                    "`{text}` has an unknown unit `{other}` (use ms, s, m or h)"
                ));
            }
        };
        Duration::try_from_secs_f64(value * seconds_per_unit)
            .map_err(|_| format!("`{text}` is out of range for a duration"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        struct HumaneDuration;

        impl Visitor<'_> for HumaneDuration {
            type Value = Duration;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration such as \"500ms\", \"30s\", \"5m\" or a number of seconds")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
                parse(text).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, seconds: u64) -> Result<Duration, E> {
                Ok(Duration::from_secs(seconds))
            }

            fn visit_i64<E: de::Error>(self, seconds: i64) -> Result<Duration, E> {
                u64::try_from(seconds)
                    .map(Duration::from_secs)
                    .map_err(|_| E::custom(format!("a duration cannot be negative, got {seconds}")))
            }

            fn visit_f64<E: de::Error>(self, seconds: f64) -> Result<Duration, E> {
                Duration::try_from_secs_f64(seconds)
                    .map_err(|_| E::custom(format!("`{seconds}` is not a valid number of seconds")))
            }
        }

        deserializer.deserialize_any(HumaneDuration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(initial_ms: u64, max_interval_ms: u64, max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(initial_ms),
            max_interval: Duration::from_millis(max_interval_ms),
            multiplier: 2.0,
            max_elapsed: Duration::from_secs(3600),
            max_attempts,
            max_retry_after: Duration::from_secs(3600),
        }
    }

    /// The delay of retry `n` before jitter: initial * multiplier^n, capped.
    fn centre(policy: &RetryPolicy, n: i32) -> f64 {
        (policy.initial.as_secs_f64() * policy.multiplier.powi(n))
            .min(policy.max_interval.as_secs_f64())
    }

    #[tokio::test(start_paused = true)]
    async fn delays_are_jittered_within_bounds_and_capped() {
        let policy = policy(1000, 30_000, 9);
        let mut distinct_first_delays = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let mut schedule = RetrySchedule::new(&policy);
            for n in 0..8 {
                let delay = schedule.next_delay().unwrap().as_secs_f64();
                let centre = centre(&policy, n);
                let low = centre * (1.0 - JITTER) - 1e-6;
                let high = (centre * (1.0 + JITTER)).min(policy.max_interval.as_secs_f64()) + 1e-6;
                assert!(
                    (low..=high).contains(&delay),
                    "retry {n}: {delay}s outside [{low}, {high}]"
                );
                if n == 0 {
                    distinct_first_delays.insert((delay * 1e6) as u64);
                }
            }
        }
        // 200 draws from a 1 s wide range: identical values would mean no jitter.
        assert!(
            distinct_first_delays.len() > 100,
            "{distinct_first_delays:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn delays_grow() {
        // With multiplier 2 and jitter 0.5, retry n+2 is never shorter than
        // retry n (lowest 2c against highest 1.5c), whatever the draw.
        let policy = policy(100, 1_000_000, 12);
        for _ in 0..50 {
            let mut schedule = RetrySchedule::new(&policy);
            let delays: Vec<Duration> = std::iter::from_fn(|| schedule.next_delay()).collect();
            assert_eq!(delays.len(), 11);
            for pair in delays.windows(3) {
                assert!(pair[2] > pair[0], "{delays:?}");
            }
            assert!(delays[10] >= Duration::from_millis(100 * 1024 / 2));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stops_after_max_attempts_and_stays_stopped() {
        for (max_attempts, expected_retries) in [(1, 0), (2, 1), (4, 3), (8, 7)] {
            let mut schedule = RetrySchedule::new(&policy(10, 100, max_attempts));
            let mut given = 0;
            while schedule.next_delay().is_some() {
                given += 1;
            }
            assert_eq!(given, expected_retries, "max_attempts {max_attempts}");
            assert_eq!(schedule.attempts(), max_attempts);
            assert_eq!(schedule.next_delay(), None);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stops_when_elapsed_time_is_used_up() {
        let policy = RetryPolicy {
            max_elapsed: Duration::from_secs(10),
            ..policy(1000, 2000, 100)
        };
        let mut schedule = RetrySchedule::new(&policy);
        assert!(schedule.next_delay().is_some());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(schedule.next_delay(), None);
        assert_eq!(schedule.next_delay(), None);
        assert_eq!(schedule.attempts(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn invalid_policy_is_made_safe() {
        let policy = RetryPolicy {
            multiplier: f64::NAN,
            ..policy(100, 50, 3)
        };
        let mut schedule = RetrySchedule::new(&policy);
        // Multiplier 1 and max_interval raised to initial: every delay near 100 ms.
        for _ in 0..2 {
            let delay = schedule.next_delay().unwrap();
            assert!(delay <= Duration::from_millis(100), "{delay:?}");
            assert!(delay >= Duration::from_millis(50), "{delay:?}");
        }
        assert_eq!(schedule.next_delay(), None);
    }

    #[test]
    fn validate_names_the_bad_field() {
        let cases: Vec<(RetryPolicy, &str)> = vec![
            (
                RetryPolicy {
                    multiplier: 0.5,
                    ..RetryPolicy::default()
                },
                "retry.multiplier must be a finite number >= 1.0, got 0.5",
            ),
            (
                RetryPolicy {
                    initial: Duration::ZERO,
                    ..RetryPolicy::default()
                },
                "retry.initial must be greater than zero",
            ),
            (
                RetryPolicy {
                    max_interval: Duration::from_millis(100),
                    ..RetryPolicy::default()
                },
                "retry.max_interval (100ms) must not be shorter than retry.initial (500ms)",
            ),
            (
                RetryPolicy {
                    max_attempts: 0,
                    ..RetryPolicy::default()
                },
                "retry.max_attempts must be at least 1 (the first attempt counts)",
            ),
        ];
        for (policy, message) in cases {
            assert_eq!(policy.validate().unwrap_err().to_string(), message);
        }
        assert_eq!(RetryPolicy::default().validate(), Ok(()));
    }

    #[test]
    fn policy_deserialises_humane_durations_with_defaults() {
        let policy: RetryPolicy = serde_json::from_str(
            r#"{"initial": "250ms", "max_interval": 20, "max_elapsed": "2m", "max_attempts": 3, "max_retry_after_secs": 3600}"#,
        )
        .unwrap();
        assert_eq!(
            policy,
            RetryPolicy {
                initial: Duration::from_millis(250),
                max_interval: Duration::from_secs(20),
                multiplier: 2.0,
                max_elapsed: Duration::from_secs(120),
                max_attempts: 3,
                max_retry_after: Duration::from_secs(3600),
            }
        );
        let defaults: RetryPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(defaults, RetryPolicy::default());
        let typo = serde_json::from_str::<RetryPolicy>(r#"{"max_attempt": 3}"#).unwrap_err();
        assert!(
            typo.to_string().contains("unknown field `max_attempt`"),
            "{typo}"
        );
    }

    #[test]
    fn humane_duration_parses_and_refuses() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("30", Duration::from_secs(30)),
            ("1.5s", Duration::from_millis(1500)),
            ("5m", Duration::from_secs(300)),
            ("5min", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            (" 2 s ", Duration::from_secs(2)),
        ];
        for (text, expected) in ok {
            assert_eq!(humane_duration::parse(text), Ok(expected), "{text}");
        }
        let bad = [
            ("", "`` is not a duration"),
            ("fast", "`fast` is not a duration"),
            ("5d", "`5d` has an unknown unit `d`"),
            ("-1s", "`-1s` is not a duration"),
        ];
        for (text, fragment) in bad {
            let err = humane_duration::parse(text).unwrap_err();
            assert!(err.contains(fragment), "{text}: {err}");
        }
    }
}
