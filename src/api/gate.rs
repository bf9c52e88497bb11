//! The request gate shared by every worker: at most `concurrency` requests
//! in flight, an optional request rate, and `Retry-After` pauses.
//!
//! Throttling is a property of the service, not of one task: when one
//! request is told to wait, every request waits. The gate is therefore one
//! value behind an `Arc`, and every request passes through
//! [`RequestGate::acquire`].

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// How many requests may be in flight and how fast they may start.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GateOptions {
    /// Requests in flight at once, across all workers.
    pub concurrency: usize,
    /// Request starts per second across all workers; `None` for no limit.
    /// Partner Center publishes no limit for referrals, so this is ours.
    pub max_requests_per_second: Option<f64>,
}

impl Default for GateOptions {
    fn default() -> Self {
        GateOptions {
            concurrency: 4,
            max_requests_per_second: None,
        }
    }
}

/// Gate options that would stall or misbehave.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GateError {
    #[error("concurrency must be at least 1")]
    ZeroConcurrency,
    #[error("max_requests_per_second must be a positive finite number, got {0}")]
    Rate(f64),
}

/// Admission to the service for every request of every worker.
#[derive(Debug)]
pub struct RequestGate {
    permits: Semaphore,
    concurrency: usize,
    /// The minimum time between two request starts.
    spacing: Option<Duration>,
    /// The earliest start of the next request under the rate limit.
    next_start: Mutex<Instant>,
    /// No request starts before this instant (`Retry-After`).
    paused_until: Mutex<Option<Instant>>,
}

/// The right to have one request in flight; released on drop, so hold it
/// until the response body has been read.
#[derive(Debug)]
#[must_use = "the request slot is released as soon as the permit is dropped"]
pub struct GatePermit<'gate> {
    _permit: SemaphorePermit<'gate>,
}

impl RequestGate {
    pub fn new(options: &GateOptions) -> Result<Self, GateError> {
        if options.concurrency == 0 {
            return Err(GateError::ZeroConcurrency);
        }
        let spacing = match options.max_requests_per_second {
            None => None,
            Some(rate) if rate.is_finite() && rate > 0.0 => {
                Some(Duration::try_from_secs_f64(1.0 / rate).map_err(|_| GateError::Rate(rate))?)
            }
            Some(rate) => return Err(GateError::Rate(rate)),
        };
        Ok(RequestGate {
            permits: Semaphore::new(options.concurrency),
            concurrency: options.concurrency,
            spacing,
            next_start: Mutex::new(Instant::now()),
            paused_until: Mutex::new(None),
        })
    }

    /// Wait for a free slot, the end of any pause and the next start allowed
    /// by the rate, then hand out a permit for one request.
    pub async fn acquire(&self) -> GatePermit<'_> {
        let Ok(permit) = self.permits.acquire().await else {
            unreachable!("the gate never closes its semaphore");
        };
        loop {
            while let Some(until) = self.pause_in_effect() {
                tokio::time::sleep_until(until).await;
            }
            if let Some(spacing) = self.spacing {
                let slot = self.reserve_start(spacing);
                tokio::time::sleep_until(slot).await;
            }
            // A pause may have begun while this request waited for its slot.
            if self.pause_in_effect().is_none() {
                break;
            }
        }
        GatePermit { _permit: permit }
    }

    /// No request from any worker starts before `until`. A later pause
    /// extends the current one; an earlier one never shortens it.
    pub fn pause_until(&self, until: Instant) {
        let mut paused_until = lock(&self.paused_until);
        if paused_until.is_some_and(|current| current >= until) {
            return;
        }
        *paused_until = Some(until);
        let wait = until.saturating_duration_since(Instant::now());
        tracing::info!(
            wait_seconds = wait.as_secs_f64(),
            "pausing every request to the service for {:.1} s",
            wait.as_secs_f64()
        );
    }

    /// [`RequestGate::pause_until`] now + `wait`.
    pub fn pause_for(&self, wait: Duration) {
        let now = Instant::now();
        // An absurd wait must not overflow the clock: a year is forever enough.
        let until = now
            .checked_add(wait)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
        self.pause_until(until);
    }

    /// The end of the pause in effect, if any.
    pub fn pause_in_effect(&self) -> Option<Instant> {
        let paused_until = *lock(&self.paused_until);
        paused_until.filter(|until| *until > Instant::now())
    }

    /// Requests holding a permit right now.
    pub fn in_flight(&self) -> usize {
        self.concurrency - self.permits.available_permits()
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Book the next start slot: now, or `spacing` after the last booked
    /// one. Idle time is not banked, so there is never a burst.
    fn reserve_start(&self, spacing: Duration) -> Instant {
        let mut next_start = lock(&self.next_start);
        let slot = (*next_start).max(Instant::now());
        *next_start = slot + spacing;
        slot
    }
}

/// The data behind these locks is a plain instant, valid even if a holder
/// panicked, so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn gate(concurrency: usize, rate: Option<f64>) -> Arc<RequestGate> {
        Arc::new(
            RequestGate::new(&GateOptions {
                concurrency,
                max_requests_per_second: rate,
            })
            .unwrap(),
        )
    }

    /// Spawn a task that acquires a permit and reports how long it waited.
    fn waiter(gate: &Arc<RequestGate>) -> tokio::task::JoinHandle<Duration> {
        let gate = Arc::clone(gate);
        tokio::spawn(async move {
            let start = Instant::now();
            let _permit = gate.acquire().await;
            start.elapsed()
        })
    }

    fn assert_close(actual: Duration, expected: Duration) {
        assert!(
            actual >= expected && actual <= expected + Duration::from_millis(2),
            "waited {actual:?}, expected {expected:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_set_by_one_task_delays_another() {
        let gate = gate(4, None);
        let pauser = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                let _permit = gate.acquire().await;
                gate.pause_for(Duration::from_secs(5));
            })
        };
        pauser.await.unwrap();
        assert_close(waiter(&gate).await.unwrap(), Duration::from_secs(5));
        // Once the pause is over, nobody waits.
        assert_eq!(gate.pause_in_effect(), None);
        assert_close(waiter(&gate).await.unwrap(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn later_pauses_extend_and_earlier_ones_never_shorten() {
        // (pauses in seconds from the start, set in this order) -> wait
        let cases: [(&[u64], u64); 4] = [(&[5], 5), (&[5, 8], 8), (&[8, 2], 8), (&[3, 9, 4], 9)];
        for (pauses, expected) in cases {
            let gate = gate(1, None);
            let start = Instant::now();
            for seconds in pauses {
                gate.pause_until(start + Duration::from_secs(*seconds));
            }
            assert_close(waiter(&gate).await.unwrap(), Duration::from_secs(expected));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_set_while_waiting_extends_the_wait() {
        let gate = gate(2, None);
        gate.pause_for(Duration::from_secs(5));
        let waiting = waiter(&gate);
        tokio::time::sleep(Duration::from_secs(3)).await;
        gate.pause_for(Duration::from_secs(7)); // until t = 10 s
        assert_close(waiting.await.unwrap(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_bound_holds() {
        let gate = gate(3, None);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most_in_flight = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (gate, in_flight, most) = (
                    Arc::clone(&gate),
                    Arc::clone(&in_flight),
                    Arc::clone(&most_in_flight),
                );
                tokio::spawn(async move {
                    let _permit = gate.acquire().await;
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    assert!(gate.in_flight() <= 3, "{} in flight", gate.in_flight());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(most_in_flight.load(Ordering::SeqCst), 3);
        // Ten one-second requests, three at a time: four rounds.
        assert_close(start.elapsed(), Duration::from_secs(4));
        assert_eq!(gate.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_spacing_holds() {
        let gate = gate(10, Some(4.0));
        let start = Instant::now();
        let tasks: Vec<_> = (0..6).map(|_| waiter(&gate)).collect();
        let mut waits = Vec::new();
        for task in tasks {
            waits.push(task.await.unwrap());
        }
        waits.sort();
        for (n, wait) in waits.iter().enumerate() {
            assert_close(*wait, Duration::from_millis(250 * n as u64));
        }
        // Idle time is not banked: after a quiet second, starts are spaced again.
        tokio::time::sleep_until(start + Duration::from_secs(3)).await;
        let first = waiter(&gate).await.unwrap();
        let second = waiter(&gate).await.unwrap();
        assert_close(first, Duration::ZERO);
        assert_close(second, Duration::from_millis(250));
    }

    #[test]
    fn options_are_validated() {
        let cases = [
            (0, None, "concurrency must be at least 1"),
            (
                1,
                Some(0.0),
                "max_requests_per_second must be a positive finite number, got 0",
            ),
            (
                1,
                Some(f64::INFINITY),
                "max_requests_per_second must be a positive finite number, got inf",
            ),
            (
                1,
                Some(-2.0),
                "max_requests_per_second must be a positive finite number, got -2",
            ),
        ];
        for (concurrency, rate, message) in cases {
            let options = GateOptions {
                concurrency,
                max_requests_per_second: rate,
            };
            assert_eq!(RequestGate::new(&options).unwrap_err().to_string(), message);
        }
        let options: GateOptions =
            serde_json::from_str(r#"{"max_requests_per_second": 2.5}"#).unwrap();
        assert_eq!(options.concurrency, 4);
        assert_eq!(
            RequestGate::new(&options).unwrap().spacing,
            Some(Duration::from_millis(400))
        );
    }
}
