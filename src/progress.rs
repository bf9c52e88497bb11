//! Progress of a cycle as its records are decided: a spinner with counts
//! when standard error is a terminal (manual `sync` and `resync`), one log
//! line at intervals otherwise (cron jobs, CI, the daemon).
//!
//! The number of records is known only once the scan has finished, so the
//! display counts what is done rather than showing a fraction.
//!
//! ```ignore
//! let progress = Progress::for_manual_run(Trigger::Manual);
//! let report = progress.wrap(report);
//! let result = engine.run_cycle(request, &report, stop_rx).await;
//! progress.finish();
//! ```

use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::info;

use crate::cycle::{Action, RecordOutcome, Trigger};

/// How often a cycle without a terminal logs its progress.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The spinner on screen, if any, so that log lines can step around it.
static ACTIVE_SPINNER: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn set_active_spinner(spinner: Option<ProgressBar>) {
    if let Ok(mut active) = ACTIVE_SPINNER.lock() {
        *active = spinner;
    }
}

/// Records decided so far in a cycle, by action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub done: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub failed: u64,
    pub invalid: u64,
    pub unresolved: u64,
}

impl Tally {
    pub fn count(&mut self, action: Action) {
        self.done += 1;
        let counter = match action {
            Action::Create => &mut self.created,
            Action::Update => &mut self.updated,
            Action::Unchanged => &mut self.unchanged,
            Action::Failed => &mut self.failed,
            Action::Invalid => &mut self.invalid,
            Action::Unresolved => &mut self.unresolved,
        };
        *counter += 1;
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} records done: created {}, updated {}, unchanged {}, failed {}, invalid {}, unresolved {}",
            self.done,
            self.created,
            self.updated,
            self.unchanged,
            self.failed,
            self.invalid,
            self.unresolved
        )
    }
}

enum Display {
    Spinner(ProgressBar),
    Log {
        every: Duration,
        last: Mutex<Instant>,
    },
}

/// Counts a cycle's outcomes and shows them. Share it by reference with
/// the report callback built by [`Progress::wrap`].
pub struct Progress {
    trigger: Trigger,
    tally: Mutex<Tally>,
    display: Display,
}

impl Progress {
    /// A spinner on standard error when it is a terminal, else log lines
    /// every [`LOG_INTERVAL`].
    pub fn for_manual_run(trigger: Trigger) -> Progress {
        if std::io::stderr().is_terminal() {
            Progress::spinner(trigger, ProgressDrawTarget::stderr())
        } else {
            Progress::logged(trigger, LOG_INTERVAL)
        }
    }

    /// Log lines only, at most one per `every` (the daemon's cycles).
    pub fn logged(trigger: Trigger, every: Duration) -> Progress {
        Progress {
            trigger,
            tally: Mutex::new(Tally::default()),
            display: Display::Log {
                every,
                last: Mutex::new(Instant::now()),
            },
        }
    }

    fn spinner(trigger: Trigger, target: ProgressDrawTarget) -> Progress {
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} [{elapsed}] {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(trigger.as_str());
        bar.set_message("reading the export");
        // Keeps spinning during the scan, when no record is decided yet.
        bar.enable_steady_tick(Duration::from_millis(120));
        set_active_spinner(Some(bar.clone()));
        Progress {
            trigger,
            tally: Mutex::new(Tally::default()),
            display: Display::Spinner(bar),
        }
    }

    /// The report callback for `Engine::run_cycle`: counts each outcome,
    /// updates the display, and hands the outcome on to `report`. Output
    /// written by `report` does not tear the spinner.
    pub fn wrap<'a, F>(&'a self, report: F) -> impl Fn(&RecordOutcome) + Send + Sync + 'a
    where
        F: Fn(&RecordOutcome) + Send + Sync + 'a,
    {
        move |outcome: &RecordOutcome| {
            match &self.display {
                Display::Spinner(bar) => bar.suspend(|| report(outcome)),
                Display::Log { .. } => report(outcome),
            }
            self.record(outcome.action);
        }
    }

    /// Count one decided record.
    pub fn record(&self, action: Action) {
        let tally = match self.tally.lock() {
            Ok(mut tally) => {
                tally.count(action);
                *tally
            }
            // A panic elsewhere while counting: progress is cosmetic.
            Err(_) => return,
        };
        match &self.display {
            Display::Spinner(bar) => bar.set_message(tally.to_string()),
            Display::Log { every, last } => {
                let Ok(mut last) = last.lock() else { return };
                let now = Instant::now();
                if log_due(*last, now, *every) {
                    *last = now;
                    log_progress(self.trigger, &tally);
                }
            }
        }
    }

    pub fn tally(&self) -> Tally {
        self.tally.lock().map(|t| *t).unwrap_or_default()
    }

    /// Clear the spinner, so that the summary line stands alone.
    pub fn finish(&self) {
        if let Display::Spinner(bar) = &self.display {
            bar.finish_and_clear();
            set_active_spinner(None);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

fn log_due(last: Instant, now: Instant, every: Duration) -> bool {
    now.saturating_duration_since(last) >= every
}

fn log_progress(trigger: Trigger, tally: &Tally) {
    info!(
        trigger = trigger.as_str(),
        done = tally.done,
        created = tally.created,
        updated = tally.updated,
        unchanged = tally.unchanged,
        failed = tally.failed,
        invalid = tally.invalid,
        unresolved = tally.unresolved,
        "progress: {tally}"
    );
}

/// Standard error for log lines (`tracing_subscriber::fmt().with_writer(
/// LogWriter)`): a line written while a spinner is on screen clears it
/// first and redraws it after, instead of tearing it.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let spinner = ACTIVE_SPINNER.lock().ok().and_then(|active| active.clone());
        match spinner {
            Some(bar) => bar.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A spinner on standard error while waiting for something else (the
/// daemon running a requested resync); hidden when it is not a terminal.
pub fn waiting_spinner(message: impl Into<String>) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(None, target);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed}] {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(message.into());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn tally_counts_each_action_once() {
        let cases = [
            (
                Action::Create,
                Tally {
                    done: 1,
                    created: 1,
                    ..Tally::default()
                },
            ),
            (
                Action::Update,
                Tally {
                    done: 1,
                    updated: 1,
                    ..Tally::default()
                },
            ),
            (
                Action::Unchanged,
                Tally {
                    done: 1,
                    unchanged: 1,
                    ..Tally::default()
                },
            ),
            (
                Action::Failed,
                Tally {
                    done: 1,
                    failed: 1,
                    ..Tally::default()
                },
            ),
            (
                Action::Invalid,
                Tally {
                    done: 1,
                    invalid: 1,
                    ..Tally::default()
                },
            ),
            (
                Action::Unresolved,
                Tally {
                    done: 1,
                    unresolved: 1,
                    ..Tally::default()
                },
            ),
        ];
        for (action, expected) in cases {
            let mut tally = Tally::default();
            tally.count(action);
            assert_eq!(tally, expected, "{action:?}");
        }
    }

    #[test]
    fn tally_reads_as_a_sentence() {
        let mut tally = Tally::default();
        for action in [
            Action::Create,
            Action::Create,
            Action::Update,
            Action::Failed,
        ] {
            tally.count(action);
        }
        assert_eq!(
            tally.to_string(),
            "4 records done: created 2, updated 1, unchanged 0, failed 1, invalid 0, unresolved 0"
        );
    }

    #[test]
    fn log_is_due_only_after_the_interval() {
        let start = Instant::now();
        let every = Duration::from_secs(10);
        assert!(!log_due(start, start, every));
        assert!(!log_due(start, start + Duration::from_secs(9), every));
        assert!(log_due(start, start + Duration::from_secs(10), every));
        // A clock read out of order never logs nor panics.
        assert!(!log_due(start + Duration::from_secs(5), start, every));
    }

    #[test]
    fn wrap_counts_and_forwards_every_outcome() {
        let progress = Progress::spinner(Trigger::Manual, ProgressDrawTarget::hidden());
        let forwarded = AtomicUsize::new(0);
        let report = progress.wrap(|_| {
            forwarded.fetch_add(1, Ordering::Relaxed);
        });
        report(&RecordOutcome::new(Some("a".to_owned()), Action::Create));
        report(&RecordOutcome::new(Some("b".to_owned()), Action::Failed));
        report(&RecordOutcome::new(None, Action::Invalid));
        progress.finish();
        assert_eq!(forwarded.load(Ordering::Relaxed), 3);
        assert_eq!(
            progress.tally(),
            Tally {
                done: 3,
                created: 1,
                failed: 1,
                invalid: 1,
                ..Tally::default()
            }
        );
    }

    #[test]
    fn logged_progress_counts_without_a_terminal() {
        let progress = Progress::logged(Trigger::Schedule, Duration::ZERO);
        let report = progress.wrap(|_| {});
        report(&RecordOutcome::new(Some("a".to_owned()), Action::Update));
        assert_eq!(progress.tally().updated, 1);
    }
}
