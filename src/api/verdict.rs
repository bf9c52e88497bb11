//! What the client does after an attempt that did not succeed: which
//! failures are repeated, waited out, answered with a fresh token or
//! final. Pure functions of what the attempt brought, so that every rule is
//! read, and tested, without a server; `ApiClient::send` only carries them
//! out.

use std::time::Duration;

/// A request, as far as repeating it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CallKind {
    /// A GET: repeated whatever happened to the previous attempt.
    Read,
    /// A write under `If-Match` (PATCH, PUT): should an earlier attempt
    /// have been applied, a repeat meets a 412 instead of applying twice.
    GuardedWrite,
    /// A write without `If-Match` (a create): a repeat could apply twice.
    UnguardedWrite,
}

/// What an attempt that did not succeed brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failed {
    /// An answer other than a success, with its `Retry-After`.
    Answer {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// An answer larger than `api.max_response_bytes`, whatever its status.
    TooLarge { status: u16 },
    /// The request could not be built: nothing was sent.
    Unbuildable,
    /// No connection was made: nothing was sent.
    NotConnected,
    /// Sent, but no whole answer came (a timeout, a dropped connection).
    NoAnswer,
}

/// Why an attempt is worth repeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// The service asked us to slow down: pause every worker.
    Throttled { retry_after: Option<Duration> },
    /// A passing failure: this request waits alone.
    Transient,
}

/// The error a request ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// A 401 although the token was just refreshed.
    Unauthorized,
    /// A 412: the eTag is stale.
    PreconditionFailed,
    /// Any other 4xx.
    Rejected,
    /// The write may have been applied: the caller finds out with a GET.
    OutcomeUnknown,
    /// The answer was too large to read, and nothing was applied.
    ResponseTooLarge,
    /// The request could not be built.
    InvalidRequest,
    /// A status the API does not answer with (1xx, or a 3xx: redirects are
    /// not followed).
    Unexpected,
}

/// The service's `Retry-After`, honoured by every worker: waited out when
/// it is at most `api.max_retry_after`, else no request is sent before it
/// ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pause {
    Wait(Duration),
    HoldBack(Duration),
}

impl Pause {
    fn of(asked: Duration, max_retry_after: Duration) -> Self {
        if asked > max_retry_after {
            Pause::HoldBack(asked)
        } else {
            Pause::Wait(asked)
        }
    }
}

/// What to do after an attempt that did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The token was refused: refresh it and send again, once.
    RefreshToken,
    /// Send again, if the retry schedule allows (see [`pace`]).
    Retry(Retry),
    /// A throttle asking for longer than `api.max_retry_after`: no request
    /// is sent before it ends, and this one fails.
    HoldBack {
        asked: Duration,
    },
    Fail(Failure),
    /// Fail, and still honour the service's pause for every other worker.
    FailPausing(Failure, Pause),
}

/// The verdict on one attempt of a request of `kind` that did not succeed;
/// `token_refreshed` once a 401 has been answered with a fresh token.
pub(super) fn classify(
    failed: Failed,
    kind: CallKind,
    token_refreshed: bool,
    max_retry_after: Duration,
) -> Verdict {
    match failed {
        Failed::Answer {
            status,
            retry_after,
        } => classify_answer(status, retry_after, kind, token_refreshed, max_retry_after),
        // A write answered with success (or a server error) may have been
        // applied: the caller finds out with a GET.
        Failed::TooLarge { status }
            if kind != CallKind::Read && (is_success(status) || is_server_error(status)) =>
        {
            Verdict::Fail(Failure::OutcomeUnknown)
        }
        Failed::TooLarge { .. } => Verdict::Fail(Failure::ResponseTooLarge),
        Failed::Unbuildable => Verdict::Fail(Failure::InvalidRequest),
        // A connect error means nothing was sent; anything later may have
        // reached the service.
        Failed::NotConnected => Verdict::Retry(Retry::Transient),
        Failed::NoAnswer if kind == CallKind::Read => Verdict::Retry(Retry::Transient),
        Failed::NoAnswer => Verdict::Fail(Failure::OutcomeUnknown),
    }
}

/// The verdict on an answer other than a success (a success here is
/// unexpected: the caller has taken it).
fn classify_answer(
    status: u16,
    retry_after: Option<Duration>,
    kind: CallKind,
    token_refreshed: bool,
    max_retry_after: Duration,
) -> Verdict {
    let throttled = || match retry_after.map(|asked| Pause::of(asked, max_retry_after)) {
        Some(Pause::HoldBack(asked)) => Verdict::HoldBack { asked },
        _ => Verdict::Retry(Retry::Throttled { retry_after }),
    };
    match (status, retry_after) {
        (401, _) if !token_refreshed => Verdict::RefreshToken,
        (401, _) => Verdict::Fail(Failure::Unauthorized),
        (412, _) => Verdict::Fail(Failure::PreconditionFailed),
        (429, _) => throttled(),
        // A gateway's 503 may come after the backend acted; only a write
        // guarded by If-Match is safe to resend (a repeat meets a 412). A
        // create is not: its caller looks the referral up before creating
        // again.
        (503, Some(asked)) if kind == CallKind::UnguardedWrite => {
            Verdict::FailPausing(Failure::OutcomeUnknown, Pause::of(asked, max_retry_after))
        }
        (503, Some(_)) => throttled(),
        // The service did not receive a whole request.
        (408, _) => Verdict::Retry(Retry::Transient),
        (500..=599, _) if kind == CallKind::Read => Verdict::Retry(Retry::Transient),
        (500..=599, _) => Verdict::Fail(Failure::OutcomeUnknown),
        (400..=499, _) => Verdict::Fail(Failure::Rejected),
        _ => Verdict::Fail(Failure::Unexpected),
    }
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

fn is_server_error(status: u16) -> bool {
    (500..600).contains(&status)
}

/// How a request that is to be repeated waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pace {
    /// Every worker waits this long.
    Everyone(Duration),
    /// This request waits alone.
    Alone(Duration),
    /// The retry schedule is used up: fail, after pausing every worker for
    /// what the service asked, if it asked.
    GiveUp { pause: Option<Duration> },
}

/// How `retry` waits, given the schedule's next delay (`None` once the
/// schedule is used up).
pub(super) fn pace(retry: Retry, next_delay: Option<Duration>) -> Pace {
    match (retry, next_delay) {
        // Giving up does not release the other workers: the service's
        // pause holds for them too.
        (Retry::Throttled { retry_after }, None) => Pace::GiveUp { pause: retry_after },
        (Retry::Transient, None) => Pace::GiveUp { pause: None },
        // At least what the service asked, and never less than the
        // backoff, so that repeated throttling slows down.
        (Retry::Throttled { retry_after }, Some(delay)) => {
            Pace::Everyone(retry_after.map_or(delay, |asked| asked.max(delay)))
        }
        (Retry::Transient, Some(delay)) => Pace::Alone(delay),
    }
}

#[cfg(test)]
mod tests {
    use super::CallKind::{GuardedWrite, Read, UnguardedWrite};
    use super::*;

    const MAX: Duration = Duration::from_secs(60);

    fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    fn answer(status: u16) -> Failed {
        Failed::Answer {
            status,
            retry_after: None,
        }
    }

    fn answer_after(status: u16, seconds: u64) -> Failed {
        Failed::Answer {
            status,
            retry_after: Some(secs(seconds)),
        }
    }

    fn throttled(seconds: Option<u64>) -> Verdict {
        Verdict::Retry(Retry::Throttled {
            retry_after: seconds.map(secs),
        })
    }

    const TRANSIENT: Verdict = Verdict::Retry(Retry::Transient);

    fn fail(failure: Failure) -> Verdict {
        Verdict::Fail(failure)
    }

    struct Case {
        failed: Failed,
        kind: CallKind,
        token_refreshed: bool,
        verdict: Verdict,
    }

    fn case(failed: Failed, kind: CallKind, verdict: Verdict) -> Case {
        Case {
            failed,
            kind,
            token_refreshed: false,
            verdict,
        }
    }

    #[test]
    fn every_failure_has_its_verdict() {
        use Failure::*;
        let cases = [
            // 401: one fresh token, whatever the request; then it stands.
            case(answer(401), Read, Verdict::RefreshToken),
            case(answer(401), UnguardedWrite, Verdict::RefreshToken),
            Case {
                token_refreshed: true,
                ..case(answer(401), Read, fail(Unauthorized))
            },
            Case {
                token_refreshed: true,
                ..case(answer(401), GuardedWrite, fail(Unauthorized))
            },
            case(answer(412), GuardedWrite, fail(PreconditionFailed)),
            case(answer_after(412, 5), Read, fail(PreconditionFailed)),
            // 429: never applied, so repeated whatever the request.
            case(answer(429), UnguardedWrite, throttled(None)),
            case(answer_after(429, 5), Read, throttled(Some(5))),
            case(answer_after(429, 60), GuardedWrite, throttled(Some(60))),
            case(
                answer_after(429, 61),
                Read,
                Verdict::HoldBack { asked: secs(61) },
            ),
            // 503 with Retry-After: a throttle, except for a create.
            case(answer_after(503, 5), Read, throttled(Some(5))),
            case(answer_after(503, 5), GuardedWrite, throttled(Some(5))),
            case(
                answer_after(503, 61),
                GuardedWrite,
                Verdict::HoldBack { asked: secs(61) },
            ),
            case(
                answer_after(503, 5),
                UnguardedWrite,
                Verdict::FailPausing(OutcomeUnknown, Pause::Wait(secs(5))),
            ),
            case(
                answer_after(503, 61),
                UnguardedWrite,
                Verdict::FailPausing(OutcomeUnknown, Pause::HoldBack(secs(61))),
            ),
            // 408: the request never arrived whole.
            case(answer(408), UnguardedWrite, TRANSIENT),
            case(answer(408), Read, TRANSIENT),
            // Other server errors: repeated for reads only.
            case(answer(500), Read, TRANSIENT),
            case(answer(503), Read, TRANSIENT),
            case(answer(599), Read, TRANSIENT),
            case(answer(500), GuardedWrite, fail(OutcomeUnknown)),
            case(answer(503), GuardedWrite, fail(OutcomeUnknown)),
            case(answer(502), UnguardedWrite, fail(OutcomeUnknown)),
            case(answer_after(500, 5), UnguardedWrite, fail(OutcomeUnknown)),
            // Any other 4xx is final.
            case(answer(400), Read, fail(Rejected)),
            case(answer(404), GuardedWrite, fail(Rejected)),
            case(answer_after(409, 5), UnguardedWrite, fail(Rejected)),
            case(answer(499), Read, fail(Rejected)),
            // What the API does not answer with.
            case(answer(302), Read, fail(Unexpected)),
            case(answer(101), GuardedWrite, fail(Unexpected)),
            case(answer(600), Read, fail(Unexpected)),
            case(answer(200), UnguardedWrite, fail(Unexpected)),
            // Too large to read: a write that succeeded or failed on the
            // server may have been applied.
            case(
                Failed::TooLarge { status: 200 },
                Read,
                fail(ResponseTooLarge),
            ),
            case(
                Failed::TooLarge { status: 500 },
                Read,
                fail(ResponseTooLarge),
            ),
            case(
                Failed::TooLarge { status: 201 },
                UnguardedWrite,
                fail(OutcomeUnknown),
            ),
            case(
                Failed::TooLarge { status: 200 },
                GuardedWrite,
                fail(OutcomeUnknown),
            ),
            case(
                Failed::TooLarge { status: 503 },
                GuardedWrite,
                fail(OutcomeUnknown),
            ),
            case(
                Failed::TooLarge { status: 400 },
                GuardedWrite,
                fail(ResponseTooLarge),
            ),
            case(
                Failed::TooLarge { status: 302 },
                UnguardedWrite,
                fail(ResponseTooLarge),
            ),
            // Transport failures.
            case(Failed::Unbuildable, Read, fail(InvalidRequest)),
            case(Failed::Unbuildable, GuardedWrite, fail(InvalidRequest)),
            case(Failed::NotConnected, Read, TRANSIENT),
            case(Failed::NotConnected, UnguardedWrite, TRANSIENT),
            case(Failed::NoAnswer, Read, TRANSIENT),
            case(Failed::NoAnswer, GuardedWrite, fail(OutcomeUnknown)),
            case(Failed::NoAnswer, UnguardedWrite, fail(OutcomeUnknown)),
        ];
        let mut mismatches = Vec::new();
        for case in &cases {
            let verdict = classify(case.failed, case.kind, case.token_refreshed, MAX);
            if verdict != case.verdict {
                mismatches.push(format!(
                    "{:?} on {:?} (token refreshed: {}): expected {:?}, got {verdict:?}",
                    case.failed, case.kind, case.token_refreshed, case.verdict
                ));
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }

    #[test]
    fn a_retry_waits_by_its_kind_until_the_schedule_is_used_up() {
        let throttle = |seconds: Option<u64>| Retry::Throttled {
            retry_after: seconds.map(secs),
        };
        let cases = [
            (Retry::Transient, Some(secs(2)), Pace::Alone(secs(2))),
            (Retry::Transient, None, Pace::GiveUp { pause: None }),
            (throttle(None), Some(secs(2)), Pace::Everyone(secs(2))),
            (throttle(Some(5)), Some(secs(2)), Pace::Everyone(secs(5))),
            (throttle(Some(1)), Some(secs(2)), Pace::Everyone(secs(2))),
            (throttle(None), None, Pace::GiveUp { pause: None }),
            (
                throttle(Some(5)),
                None,
                Pace::GiveUp {
                    pause: Some(secs(5)),
                },
            ),
        ];
        for (retry, next_delay, expected) in cases {
            assert_eq!(
                pace(retry, next_delay),
                expected,
                "{retry:?}, {next_delay:?}"
            );
        }
    }
}
