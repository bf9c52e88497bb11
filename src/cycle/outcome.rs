//! What a cycle did (or, in a dry run, would do) for each record, and the
//! cycle's summary. These are what the commands print and the logs carry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::exit::ExitCode;
use crate::merge::{Conflict, Drift};
use crate::model::Op;

/// The plan for a record, or what became of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A referral is (or would be) created with `document`.
    Create,
    /// The referral is (or would be) patched with `patch`.
    Update,
    /// Nothing to send.
    Unchanged,
    /// The record cannot be sent as it is; `errors` says why. Its other
    /// changes, if any, are in `patch`.
    Invalid,
    /// No referral is known for the record and creation is off.
    Unresolved,
    /// The service refused or could not be reached; retried next cycle.
    Failed,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Unchanged => "unchanged",
            Action::Invalid => "invalid",
            Action::Unresolved => "unresolved",
            Action::Failed => "failed",
        }
    }
}

/// One record's line in a plan or a cycle report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordOutcome {
    #[serde(rename = "externalReferenceId")]
    pub external_id: Option<String>,
    #[serde(rename = "referralId")]
    pub referral_id: Option<String>,
    pub action: Action,
    pub patch: Vec<Op>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<Value>,
    pub errors: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<Conflict>,
    /// What a resync found where Partner Center drifted from the CRM.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<Drift>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl RecordOutcome {
    pub fn new(external_id: impl Into<Option<String>>, action: Action) -> Self {
        RecordOutcome {
            external_id: external_id.into(),
            referral_id: None,
            action,
            patch: Vec::new(),
            document: None,
            errors: Vec::new(),
            conflicts: Vec::new(),
            drift: Vec::new(),
            note: None,
        }
    }
}

/// Counters a cycle updates from its concurrent workers.
#[derive(Debug, Default)]
pub struct Counters {
    pub seen: AtomicU64,
    pub unchanged: AtomicU64,
    pub created: AtomicU64,
    pub updated: AtomicU64,
    pub conflicts: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    pub held: AtomicU64,
    pub invalid: AtomicU64,
    pub unresolved: AtomicU64,
    pub not_selected: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Count a finished record by its action.
    pub fn count(&self, action: Action) {
        let counter = match action {
            Action::Create => &self.created,
            Action::Update => &self.updated,
            Action::Unchanged => &self.unchanged,
            Action::Invalid => &self.invalid,
            Action::Unresolved => &self.unresolved,
            Action::Failed => &self.failed,
        };
        Counters::add(counter, 1);
    }

    pub fn summary(&self, duration: Duration) -> CycleSummary {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CycleSummary {
            seen: get(&self.seen),
            unchanged: get(&self.unchanged),
            created: get(&self.created),
            updated: get(&self.updated),
            conflicts: get(&self.conflicts),
            retried: get(&self.retried),
            failed: get(&self.failed),
            held: get(&self.held),
            invalid: get(&self.invalid),
            unresolved: get(&self.unresolved),
            not_selected: get(&self.not_selected),
            duration_ms: duration.as_millis() as u64,
            interrupted: false,
        }
    }
}

/// The cycle's one-line summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct CycleSummary {
    pub seen: u64,
    pub unchanged: u64,
    pub created: u64,
    pub updated: u64,
    /// Rounds of the referral changing under a write (a 412, or a new eTag
    /// read before a PUT), resolved by a three-way merge.
    pub conflicts: u64,
    /// Requests retried after an unknown outcome or a transient failure.
    pub retried: u64,
    pub failed: u64,
    /// Of the failed records, those the service refused for good: held
    /// until their document changes, a resync or `retry`.
    pub held: u64,
    pub invalid: u64,
    pub unresolved: u64,
    /// Valid records a resync of some records (`resync --only`) left out.
    pub not_selected: u64,
    pub duration_ms: u64,
    /// A shutdown stopped the cycle before every record was reached.
    pub interrupted: bool,
}

impl CycleSummary {
    /// Every record reached, and synced or unchanged.
    pub fn is_clean(&self) -> bool {
        self.failed == 0 && self.invalid == 0 && self.unresolved == 0 && !self.interrupted
    }
}

impl std::fmt::Display for CycleSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seen {}, unchanged {}, created {}, updated {}, conflicts resolved {}, retried {}, failed {}",
            self.seen,
            self.unchanged,
            self.created,
            self.updated,
            self.conflicts,
            self.retried,
            self.failed,
        )?;
        if self.held > 0 {
            write!(f, " (held {})", self.held)?;
        }
        write!(
            f,
            ", invalid {}, unresolved {}",
            self.invalid, self.unresolved
        )?;
        if self.not_selected > 0 {
            write!(f, ", not selected {}", self.not_selected)?;
        }
        write!(f, " in {:.1}s", self.duration_ms as f64 / 1000.0)?;
        if self.interrupted {
            write!(f, " (interrupted)")?;
        }
        Ok(())
    }
}

/// How a cycle ended, as the store's `cycles.outcome`, the metrics and the
/// logs spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CycleOutcome {
    /// Every record reached, and synced or unchanged.
    Ok,
    /// Every record reached; some failed, are invalid or unresolved.
    Partial,
    /// A shutdown stopped the cycle before every record was reached.
    Interrupted,
    /// The export was not ready (`export.settle_secs`); nothing was read.
    Skipped,
    /// The cycle stopped on an error.
    Failed,
}

impl CycleOutcome {
    const ALL: [CycleOutcome; 5] = [
        CycleOutcome::Ok,
        CycleOutcome::Partial,
        CycleOutcome::Interrupted,
        CycleOutcome::Skipped,
        CycleOutcome::Failed,
    ];

    /// The outcome of a cycle that ran to its end (or to a shutdown).
    pub fn of(summary: &CycleSummary) -> CycleOutcome {
        if summary.interrupted {
            CycleOutcome::Interrupted
        } else if summary.is_clean() {
            CycleOutcome::Ok
        } else {
            CycleOutcome::Partial
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CycleOutcome::Ok => "ok",
            CycleOutcome::Partial => "partial",
            CycleOutcome::Interrupted => "interrupted",
            CycleOutcome::Skipped => "skipped",
            CycleOutcome::Failed => "failed",
        }
    }

    /// The code a command that ran the cycle exits with. (A failed cycle's
    /// code is its error's: [`super::CycleError::exit_code`].)
    pub fn exit_code(self) -> ExitCode {
        match self {
            CycleOutcome::Ok => ExitCode::Ok,
            CycleOutcome::Partial => ExitCode::Records,
            CycleOutcome::Interrupted | CycleOutcome::Failed => ExitCode::Runtime,
            CycleOutcome::Skipped => ExitCode::Skipped,
        }
    }
}

impl std::fmt::Display for CycleOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `cycles.outcome` this version does not write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cycle outcome {0:?}")]
pub struct UnknownOutcome(pub String);

impl std::str::FromStr for CycleOutcome {
    type Err = UnknownOutcome;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        CycleOutcome::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == text)
            .ok_or_else(|| UnknownOutcome(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycle_outcomes_keep_their_stored_spelling_and_exit_codes() {
        let cases = [
            (CycleOutcome::Ok, "ok", ExitCode::Ok),
            (CycleOutcome::Partial, "partial", ExitCode::Records),
            (CycleOutcome::Interrupted, "interrupted", ExitCode::Runtime),
            (CycleOutcome::Skipped, "skipped", ExitCode::Skipped),
            (CycleOutcome::Failed, "failed", ExitCode::Runtime),
        ];
        for (outcome, text, code) in cases {
            assert_eq!(outcome.to_string(), text);
            assert_eq!(text.parse::<CycleOutcome>(), Ok(outcome));
            assert_eq!(outcome.exit_code(), code, "{text}");
        }
        assert_eq!(
            "cancelled".parse::<CycleOutcome>(),
            Err(UnknownOutcome("cancelled".to_owned()))
        );
        let mut summary = CycleSummary::default();
        assert_eq!(CycleOutcome::of(&summary), CycleOutcome::Ok);
        summary.invalid = 1;
        assert_eq!(CycleOutcome::of(&summary), CycleOutcome::Partial);
        summary.interrupted = true;
        assert_eq!(CycleOutcome::of(&summary), CycleOutcome::Interrupted);
    }

    #[test]
    fn the_summary_names_every_count_and_the_held_records_among_the_failed() {
        let counters = Counters::default();
        for action in [
            Action::Create,
            Action::Create,
            Action::Update,
            Action::Failed,
        ] {
            counters.count(action);
        }
        Counters::add(&counters.failed, 1);
        Counters::add(&counters.held, 1);
        Counters::add(&counters.seen, 7);
        Counters::add(&counters.unchanged, 2);
        let summary = counters.summary(Duration::from_millis(1500));
        assert_eq!(summary.held, 1);
        assert_eq!(
            summary.to_string(),
            "seen 7, unchanged 2, created 2, updated 1, conflicts resolved 0, retried 0, failed 2 (held 1), invalid 0, unresolved 0 in 1.5s"
        );
        let quiet = CycleSummary {
            seen: 1,
            unchanged: 1,
            ..CycleSummary::default()
        };
        assert_eq!(
            quiet.to_string(),
            "seen 1, unchanged 1, created 0, updated 0, conflicts resolved 0, retried 0, failed 0, invalid 0, unresolved 0 in 0.0s"
        );
    }
}
