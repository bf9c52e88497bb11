//! Retry schedules. The only module that knows the `backoff` crate, so that
//! it can be swapped (RUSTSEC-2025-0012 flags it unmaintained).
use std::time::Duration;
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    pub initial: Duration,
}
impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { initial: Duration::from_millis(500) }
    }
}
