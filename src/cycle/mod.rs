//! A cycle: one pass over an export. Pass one ([`scan`]) reads, maps and
//! validates the whole export and decides which records need work; only
//! then does the push phase ([`push`]) plan and send, record by record,
//! with bounded concurrency.

pub mod mode;
pub mod outcome;
pub mod push;
pub mod scan;
pub mod schema;

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::task::AbortOnDropHandle;
use tracing::{error, info, warn};

use crate::api::ApiClient;
use crate::config::Settings;
use crate::exit::ExitCode;
use crate::export::{self, ExportError};
use crate::mapping::Mapper;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

pub use mode::{Mode, Recorder};
use outcome::Counters;
pub use outcome::{Action, CycleOutcome, CycleSummary, RecordOutcome};
use push::{Pusher, ReferralIndex, WorkItem};
use scan::{Scan, ScanError, ScanOptions, WorkFor};

/// Rows of old history deleted per statement.
const HISTORY_PRUNE_BATCH: usize = 5_000;

/// What started a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Startup,
    Resync,
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Startup => "startup",
            Trigger::Resync => "resync",
            Trigger::Manual => "manual",
        }
    }
}

/// What a cycle is asked to do.
#[derive(Debug, Clone)]
pub struct CycleRequest {
    pub trigger: Trigger,
    /// Go on although more of the known records are missing from the export
    /// than `sync.max_missing_ratio` allows.
    pub allow_missing: bool,
    /// Ignore stored hashes: read every live referral and merge three ways,
    /// and rebuild the `externalReferenceId` index.
    pub resync: bool,
    /// Only these external ids.
    pub only: Option<HashSet<String>>,
    /// Go on although fields fed before lost every column of the export
    /// (`sync --allow-schema-change`).
    pub allow_schema_change: bool,
    /// Report unchanged records too (`sync --dry-run --all`).
    pub list_unchanged: bool,
}

impl CycleRequest {
    pub fn new(trigger: Trigger) -> Self {
        CycleRequest {
            trigger,
            allow_missing: false,
            resync: trigger == Trigger::Resync,
            only: None,
            list_unchanged: false,
            allow_schema_change: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error(
        "{missing} of the {known} records in the store are missing from the export \
         (more than sync.max_missing_ratio = {max_ratio}); nothing was changed. \
         If the export really shrank, confirm with `referral-sync sync --allow-missing` or run a resync"
    )]
    TooManyMissing {
        missing: u64,
        known: u64,
        max_ratio: f64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("export unreadable on the second read, nothing more was changed: {0}")]
    SecondRead(ExportError),
    #[error("the export changed while it was being read ({0}); the rest of the cycle was skipped")]
    ExportChanged(String),
    #[error("the push phase stopped: {0}; records not reached stay as they were")]
    PushStopped(String),
    #[error("{0}; the records in flight finished, no further record was taken up")]
    StoreFailed(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl CycleError {
    /// The cycle did not run because the export is not ready yet
    /// (`export.settle_secs`): not a failure, the next cycle tries again.
    pub fn is_skip(&self) -> bool {
        matches!(self, CycleError::Scan(ScanError::Unsettled(_)))
    }

    /// The code a command whose cycle ended on this error exits with.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CycleError::Scan(ScanError::Export(_) | ScanError::SchemaChanged(_)) => {
                ExitCode::Export
            }
            CycleError::Scan(ScanError::Unsettled(_)) => ExitCode::Skipped,
            // Nothing was sent, but the export must be read again.
            CycleError::Scan(ScanError::Changed(_)) => ExitCode::Runtime,
            // The push phase had started: some records may have been sent.
            CycleError::SecondRead(_) | CycleError::ExportChanged(_) => ExitCode::Runtime,
            CycleError::TooManyMissing { .. } => ExitCode::Missing,
            _ => ExitCode::Runtime,
        }
    }
}

/// Runs cycles. Cheap to share: the daemon keeps one.
pub struct Engine {
    settings: Arc<Settings>,
    mapper: Arc<Mapper>,
    store: Arc<Mutex<Store>>,
    mode: Mode,
    metrics: Option<Arc<Metrics>>,
}

impl Engine {
    /// A client syncs; `None` plans offline.
    pub fn new(
        settings: Arc<Settings>,
        mapper: Arc<Mapper>,
        store: Arc<Mutex<Store>>,
        client: Option<ApiClient>,
    ) -> Engine {
        let mode = client.map_or(Mode::Offline, Mode::Sync);
        Engine::in_mode(settings, mapper, store, mode)
    }

    /// An engine whose cycles go as `mode` says.
    pub fn in_mode(
        settings: Arc<Settings>,
        mapper: Arc<Mapper>,
        store: Arc<Mutex<Store>>,
        mode: Mode,
    ) -> Engine {
        Engine {
            settings,
            mapper,
            store,
            mode,
            metrics: None,
        }
    }

    /// Count every cycle that is not a dry run in `metrics`, and write
    /// `metrics.textfile` at its end.
    pub fn with_metrics(mut self, metrics: Option<Arc<Metrics>>) -> Engine {
        self.metrics = metrics.filter(|_| self.mode.writes());
        self
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn store(&self) -> &Arc<Mutex<Store>> {
        &self.store
    }

    /// Run one cycle. `report` sees every record's outcome as it is
    /// decided; `stop` turning `true` ends the cycle early: no new record is
    /// started, records in flight finish.
    pub async fn run_cycle(
        &self,
        request: CycleRequest,
        report: &(dyn Fn(&RecordOutcome) + Send + Sync),
        stop: watch::Receiver<bool>,
    ) -> Result<CycleSummary, CycleError> {
        let started = Instant::now();
        let cycle_id = uuid::Uuid::new_v4();
        let dry_run = !self.mode.writes();
        info!(
            cycle_id = %cycle_id,
            trigger = request.trigger.as_str(),
            dry_run,
            export = %self.settings.export.path.display(),
            "cycle started"
        );
        let recorder = Recorder::new(Arc::clone(&self.store), &self.mode);
        let row = recorder.write(|store| {
            let row = store.begin_cycle(&cycle_id.to_string(), request.trigger.as_str(), false)?;
            Ok::<_, CycleError>(Some(row))
        })?;
        let counters = Arc::new(Counters::default());
        let observed = |outcome: &RecordOutcome| {
            if let Some(metrics) = &self.metrics {
                metrics.record_outcome(outcome);
            }
            report(outcome);
        };
        let result = self
            .run_phases(&request, cycle_id, &recorder, &counters, &observed, stop)
            .await;
        let mut summary = counters.summary(started.elapsed());
        summary.interrupted = matches!(result, Ok(true));
        let outcome = match &result {
            Ok(_) => CycleOutcome::of(&summary),
            Err(e) if e.is_skip() => CycleOutcome::Skipped,
            Err(_) => CycleOutcome::Failed,
        };
        if let Some(row) = row {
            let error = result.as_ref().err().map(ToString::to_string);
            self.record_end(&recorder, cycle_id, row, outcome, &summary, error);
        }
        if let Some(metrics) = &self.metrics {
            self.count_cycle(metrics, cycle_id, request.trigger, outcome, started);
        }
        let trigger = request.trigger;
        log_end(cycle_id, trigger, outcome, dry_run, &summary, &result);
        result.map(|_| summary)
    }

    /// Prune the history older than `store.history_days`, in bounded
    /// batches, and keep the cycle's end in its row.
    fn record_end(
        &self,
        recorder: &Recorder,
        cycle_id: uuid::Uuid,
        row: i64,
        outcome: CycleOutcome,
        summary: &CycleSummary,
        error: Option<String>,
    ) {
        let days = self.settings.history_days;
        match recorder.write(|s| Ok::<_, CycleError>(s.prune_events(days, HISTORY_PRUNE_BATCH)?)) {
            Ok(0) => {}
            Ok(pruned) => info!(cycle_id = %cycle_id, pruned, "record history pruned"),
            Err(e) => {
                warn!(cycle_id = %cycle_id, error = %e, "could not prune the record history")
            }
        }
        let summary_json = serde_json::to_value(summary).unwrap_or_default();
        if let Err(e) = recorder.write(|s| {
            s.finish_cycle(row, outcome.as_str(), &summary_json, error.as_deref())
                .map_err(CycleError::from)
        }) {
            error!(cycle_id = %cycle_id, error = %e, "could not record the cycle's end");
        }
    }

    /// The cycle and the records' states in `metrics`, and the textfile.
    fn count_cycle(
        &self,
        metrics: &Metrics,
        cycle_id: uuid::Uuid,
        trigger: Trigger,
        outcome: CycleOutcome,
        started: Instant,
    ) {
        metrics.record_cycle(trigger.as_str(), outcome.as_str(), started.elapsed());
        match lock_store(&self.store).and_then(|s| s.state_counts().map_err(CycleError::from)) {
            Ok(counts) => metrics.set_record_states(&counts),
            Err(e) => {
                warn!(cycle_id = %cycle_id, error = %e, "could not count the records for the metrics")
            }
        }
        if let Err(e) = metrics.write_textfile() {
            warn!(cycle_id = %cycle_id, error = %e, "could not write the metrics");
        }
    }

    /// Returns whether the cycle was interrupted by `stop`.
    async fn run_phases(
        &self,
        request: &CycleRequest,
        cycle_id: uuid::Uuid,
        recorder: &Recorder,
        counters: &Arc<Counters>,
        report: &(dyn Fn(&RecordOutcome) + Send + Sync),
        stop: watch::Receiver<bool>,
    ) -> Result<bool, CycleError> {
        let client_retries_before = self.mode.client().map_or(0, |c| c.stats().retries);
        let mut scan = self.scan(request, recorder).await?;
        report_scan(&scan, cycle_id, counters, report);
        self.check_missing(request, &scan)?;

        let pusher = Arc::new(self.pusher(cycle_id, recorder, counters));
        if request.resync && self.mode.client().is_some() {
            pusher.index.build(&pusher).await;
        }
        let phase = PushPhase {
            pusher: &pusher,
            on_own_tasks: self.mode.writes(),
            doubles: scan
                .retained
                .as_ref()
                .map(|retained| double_claims(retained.referral_claims()))
                .unwrap_or_default(),
            counters,
            report,
            stop: &stop,
        };
        let concurrency = self.settings.api.concurrency;
        match scan.retained.take() {
            Some(retained) => {
                let items = futures_util::stream::iter(retained).map(WorkItem::from);
                phase.push(items, concurrency).await;
            }
            None => self.push_second_read(&phase, scan, concurrency).await?,
        }
        let interrupted = *stop.borrow();
        if interrupted {
            warn!(cycle_id = %cycle_id, "cycle interrupted by shutdown; records not reached stay as they were");
        }
        if let Some(client) = self.mode.client() {
            // The client counts over its life; this cycle's share.
            Counters::add(
                &counters.retried,
                client.stats().retries.saturating_sub(client_retries_before),
            );
        }
        if let Some(reason) = pusher.store_failed() {
            return Err(CycleError::StoreFailed(reason.to_owned()));
        }
        if let Some(reason) = pusher.halted() {
            return Err(CycleError::PushStopped(reason.to_owned()));
        }
        Ok(interrupted)
    }

    /// Pass one: the whole export, validated, before anything is sent.
    async fn scan(&self, request: &CycleRequest, recorder: &Recorder) -> Result<Scan, CycleError> {
        let store = Arc::clone(&self.store);
        let mapper = Arc::clone(&self.mapper);
        let export_options = self.settings.export_options();
        let options = self.scan_options(request);
        let recorder = recorder.clone();
        tokio::task::spawn_blocking(move || -> Result<Scan, CycleError> {
            let scan = {
                let store = lock_store(&store)?;
                let scan = scan::scan_export(&export_options, &mapper, &store, &options)?;
                schema::log_new_columns(&store, &scan.schema)?;
                scan
            };
            // Only a scan that completed advances it.
            recorder.write(|store| Ok::<_, CycleError>(schema::record(store, &scan.schema)?))?;
            Ok(scan)
        })
        .await
        .map_err(|e| CycleError::Internal(format!("scan task: {e}")))?
    }

    fn scan_options(&self, request: &CycleRequest) -> ScanOptions {
        ScanOptions {
            resync: request.resync,
            only: request.only.clone(),
            retain_budget: scan::RETAIN_BUDGET,
            list_unchanged: request.list_unchanged,
            fingerprints: scan::Fingerprints {
                context: scan::fingerprint_context(&self.mapper, self.settings.sync.on_cleared),
                skip: !request.resync,
                record: self.mode.writes(),
            },
            schema: if request.allow_schema_change {
                schema::SchemaPolicy::AllowChange
            } else {
                schema::SchemaPolicy::Guard
            },
        }
    }

    /// Stop before anything is sent when more known records are missing
    /// from the export than `sync.max_missing_ratio` allows.
    fn check_missing(&self, request: &CycleRequest, scan: &Scan) -> Result<(), CycleError> {
        let max_ratio = self.settings.sync.max_missing_ratio;
        if !request.allow_missing && !request.resync && scan.too_many_missing(max_ratio) {
            return Err(CycleError::TooManyMissing {
                missing: scan.missing_from_export,
                known: scan.known,
                max_ratio,
            });
        }
        Ok(())
    }

    fn pusher(
        &self,
        cycle_id: uuid::Uuid,
        recorder: &Recorder,
        counters: &Arc<Counters>,
    ) -> Pusher {
        Pusher {
            settings: Arc::clone(&self.settings),
            managed: self.mapper.managed_paths().clone(),
            store: Arc::clone(&self.store),
            mode: self.mode.clone(),
            recorder: recorder.clone(),
            index: ReferralIndex::default(),
            correlation_id: cycle_id,
            counters: Arc::clone(counters),
            halted: OnceLock::new(),
            store_failed: OnceLock::new(),
            claims: Mutex::new(HashMap::new()),
        }
    }

    /// Too many changes to keep in memory: read the export again, taking
    /// up only the records pass one chose, and only if they are still what
    /// pass one validated.
    async fn push_second_read(
        &self,
        phase: &PushPhase<'_>,
        scan: Scan,
        concurrency: usize,
    ) -> Result<(), CycleError> {
        let (tx, rx) = mpsc::channel::<WorkItem>(concurrency * 4);
        let export_options = self.settings.export_options();
        let mapper = Arc::clone(&self.mapper);
        let reader = tokio::task::spawn_blocking(move || {
            read_work_again(&export_options, &mapper, &scan, &tx)
        });
        let items = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        phase.push(items, concurrency).await;
        reader
            .await
            .map_err(|e| CycleError::Internal(format!("export reader task: {e}")))?
    }
}

/// The second read of the export: each record pass one chose, sent to the
/// push phase; a record that changed since pass one ends the read.
fn read_work_again(
    export_options: &export::ExportOptions,
    mapper: &Mapper,
    scan: &Scan,
    tx: &mpsc::Sender<WorkItem>,
) -> Result<(), CycleError> {
    let mut changed: Option<CycleError> = None;
    let result = export::read_export(export_options, &mut |record| {
        let Ok(mapped) = mapper.map(&record) else {
            return ControlFlow::Continue(());
        };
        let hash = scan::document_hash(&mapped.document);
        let reason = match scan.work_for(&mapped.external_id, hash) {
            None => return ControlFlow::Continue(()),
            Some(WorkFor::Push(reason)) => reason,
            Some(WorkFor::ChangedSinceScan) => {
                changed = Some(CycleError::ExportChanged(format!(
                    "record {} at {}",
                    mapped.external_id, record.location
                )));
                return ControlFlow::Break(());
            }
        };
        let fingerprint = scan
            .fingerprint_context
            .map(|context| scan::stored_fingerprint(record.fingerprint, context));
        let item = WorkItem {
            mapped,
            hash: hash.to_hex(),
            reason,
            fingerprint,
        };
        // A closed channel means the push phase stopped.
        match tx.blocking_send(item) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    });
    if let Some(e) = changed {
        return Err(e);
    }
    result.map(|_| ()).map_err(CycleError::SecondRead)
}

/// What pass one found, logged and reported: the unchanged records and
/// the invalid ones.
fn report_scan(
    scan: &Scan,
    cycle_id: uuid::Uuid,
    counters: &Counters,
    report: &(dyn Fn(&RecordOutcome) + Send + Sync),
) {
    let total = scan.export.records;
    Counters::add(&counters.seen, total);
    Counters::add(&counters.unchanged, scan.unchanged);
    Counters::add(&counters.not_selected, scan.not_selected);
    info!(
        cycle_id = %cycle_id,
        records = total,
        files = scan.export.files.len(),
        to_push = scan.work_count(),
        unchanged = scan.unchanged,
        // Of the unchanged, those known by their bytes' fingerprint and
        // not parsed; and fingerprints stored for the next cycle.
        known_by_fingerprint = scan.known_by_fingerprint,
        fingerprints_recorded = scan.fingerprinted,
        invalid = scan.record_errors.len() + scan.duplicates.len(),
        "export read"
    );
    for external_id in &scan.unchanged_ids {
        report(&RecordOutcome::new(
            Some(external_id.clone()),
            Action::Unchanged,
        ));
    }
    for error in &scan.record_errors {
        let mut outcome = RecordOutcome::new(error.external_id.clone(), Action::Invalid);
        outcome.errors.push(error.to_string());
        warn!(
            cycle_id = %cycle_id,
            external_id = error.external_id.as_deref().unwrap_or(""),
            location = %error.location,
            error = %error,
            "record invalid"
        );
        counters.count(Action::Invalid);
        report(&outcome);
    }
    for (external_id, message) in scan.duplicate_errors() {
        warn!(cycle_id = %cycle_id, external_id, error = %message, "record invalid");
        let mut outcome = RecordOutcome::new(Some(external_id.to_owned()), Action::Invalid);
        outcome.errors.push(message);
        counters.count(Action::Invalid);
        report(&outcome);
    }
}

/// The push phase of one cycle: the records taken up, a bounded number at
/// a time.
struct PushPhase<'a> {
    pusher: &'a Arc<Pusher>,
    /// Each record on a task of its own, so that answers arriving together
    /// are worked on by every worker thread (one per core) instead of
    /// waiting for each other on the polling one: when writing. A plan
    /// keeps every record on the polling task.
    on_own_tasks: bool,
    /// Referral ids several records claim (see [`double_claims`]).
    doubles: HashMap<String, Vec<String>>,
    counters: &'a Counters,
    report: &'a (dyn Fn(&RecordOutcome) + Send + Sync),
    stop: &'a watch::Receiver<bool>,
}

impl PushPhase<'_> {
    /// Take up `items` until the cycle is stopped or the push phase halts.
    async fn push(&self, items: impl futures_util::Stream<Item = WorkItem>, concurrency: usize) {
        items
            .take_while(|_| {
                let go = !*self.stop.borrow() && self.pusher.halted().is_none();
                async move { go }
            })
            .for_each_concurrent(concurrency, |item| self.take_up(item))
            .await;
    }

    async fn take_up(&self, item: WorkItem) {
        let doubled = item
            .mapped
            .referral_id
            .as_ref()
            .and_then(|id| self.doubles.get(&id.to_lowercase()))
            .map(|records| double_claim(&item.mapped, records));
        let outcome = match doubled {
            Some(outcome) => {
                warn!(external_id = %item.mapped.external_id, error = %outcome.errors.join("; "), "record failed");
                outcome
            }
            None if self.on_own_tasks => self.on_own_task(item).await,
            None => self.pusher.sync_record(item).await,
        };
        self.counters.count(outcome.action);
        (self.report)(&outcome);
    }

    /// `item` pushed on a task of its own. The task is aborted if the
    /// cycle is dropped while it runs: it stops at its next await, and one
    /// running on another worker at that moment first finishes the step it
    /// is in (settling an answer it holds, or storing an intent and
    /// starting its request). Each step leaves the store consistent: a
    /// request always follows its stored intent, and an answer is settled
    /// with no await between.
    async fn on_own_task(&self, item: WorkItem) -> RecordOutcome {
        let pusher = Arc::clone(self.pusher);
        let external_id = item.mapped.external_id.clone();
        let task =
            AbortOnDropHandle::new(tokio::spawn(async move { pusher.sync_record(item).await }));
        match task.await {
            Ok(outcome) => outcome,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // Only the runtime shutting down cancels it.
            Err(_) => {
                let mut outcome = RecordOutcome::new(Some(external_id), Action::Failed);
                outcome
                    .errors
                    .push("the runtime shut down while the record was pushed".to_owned());
                outcome
            }
        }
    }
}

/// The cycle's last log line.
fn log_end(
    cycle_id: uuid::Uuid,
    trigger: Trigger,
    outcome: CycleOutcome,
    dry_run: bool,
    summary: &CycleSummary,
    result: &Result<bool, CycleError>,
) {
    match result {
        Ok(_) => info!(
            cycle_id = %cycle_id,
            trigger = trigger.as_str(),
            outcome = outcome.as_str(),
            dry_run,
            seen = summary.seen,
            unchanged = summary.unchanged,
            created = summary.created,
            updated = summary.updated,
            conflicts = summary.conflicts,
            retried = summary.retried,
            failed = summary.failed,
            held = summary.held,
            invalid = summary.invalid,
            unresolved = summary.unresolved,
            not_selected = summary.not_selected,
            duration_ms = summary.duration_ms,
            "cycle finished: {summary}"
        ),
        Err(e) if e.is_skip() => warn!(
            cycle_id = %cycle_id,
            trigger = trigger.as_str(),
            outcome = outcome.as_str(),
            reason = %e,
            "cycle skipped"
        ),
        Err(e) => error!(
            cycle_id = %cycle_id,
            trigger = trigger.as_str(),
            outcome = outcome.as_str(),
            error = %e,
            duration_ms = summary.duration_ms,
            "cycle failed"
        ),
    }
}

/// Referral ids that several records give in the export's referral id
/// column (lower case) → those records: none of them is sent.
fn double_claims<'a>(
    claims: impl Iterator<Item = (&'a str, &'a str)>,
) -> HashMap<String, Vec<String>> {
    let mut claimants: HashMap<String, Vec<String>> = HashMap::new();
    for (external_id, referral_id) in claims {
        claimants
            .entry(referral_id.to_lowercase())
            .or_default()
            .push(external_id.to_owned());
    }
    claimants.retain(|_, records| records.len() > 1);
    claimants
}

/// The outcome of a record that shares its referral id with `records`.
fn double_claim(mapped: &crate::mapping::MappedRecord, records: &[String]) -> RecordOutcome {
    let others: Vec<&str> = records
        .iter()
        .map(String::as_str)
        .filter(|other| *other != mapped.external_id)
        .collect();
    let referral_id = mapped.referral_id.clone().unwrap_or_default();
    let mut outcome = RecordOutcome::new(Some(mapped.external_id.clone()), Action::Failed);
    outcome.errors.push(format!(
        "records {} and {} give the same referral {referral_id} in the export; neither is sent",
        mapped.external_id,
        others.join(", "),
    ));
    outcome.referral_id = Some(referral_id);
    outcome
}

impl From<mode::Poisoned> for CycleError {
    fn from(_: mode::Poisoned) -> Self {
        CycleError::Internal("the store lock was poisoned by a panic".into())
    }
}

pub(crate) fn lock_store(
    store: &Mutex<Store>,
) -> Result<std::sync::MutexGuard<'_, Store>, CycleError> {
    store
        .lock()
        .map_err(|_| CycleError::Internal("the store lock was poisoned by a panic".into()))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::export::FileChange;

    /// The records of a three-record export pass one takes up, as `(id,
    /// fingerprint)`: from what it kept, or, over its budget, from the
    /// second read.
    fn taken_up(retain_budget: usize, record: bool) -> Vec<(String, Option<[u8; 16]>)> {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = (1..=3)
            .map(|n| {
                serde_json::json!({
                    "opportunityid": format!("0b000000-0000-4000-8000-{n:012}"),
                    "name": format!("Deal {n}"),
                    "estimatedvalue": n * 100,
                    "statecode": 0,
                    "statuscode": 1,
                })
                .to_string()
            })
            .collect();
        let text = format!("{{\"value\": [\n{}\n]}}\n", lines.join(",\n"));
        std::fs::write(dir.path().join("page-1.json"), text).unwrap();
        let export_options = export::ExportOptions {
            path: dir.path().to_path_buf(),
            format: export::ExportFormat::Auto,
            entity: crate::model::Entity::Opportunity,
            header_aliases: Default::default(),
            checks: Default::default(),
        };
        let mapper = Mapper::new(
            &crate::mapping::MappingSpec::default_for(crate::model::Entity::Opportunity),
            crate::model::Entity::Opportunity,
            "USD",
        )
        .unwrap();
        let store = Store::open_in_memory().unwrap();
        let options = ScanOptions {
            retain_budget,
            fingerprints: scan::Fingerprints {
                context: scan::fingerprint_context(&mapper, crate::diff::OnCleared::Null),
                skip: true,
                record,
            },
            ..ScanOptions::default()
        };
        let mut scan = scan::scan_export(&export_options, &mapper, &store, &options).unwrap();
        let mut taken: Vec<(String, Option<[u8; 16]>)> = match scan.retained.take() {
            Some(retained) => retained
                .into_iter()
                .map(|taken| (taken.mapped.external_id, taken.fingerprint))
                .collect(),
            None => {
                let (tx, mut rx) = mpsc::channel(8);
                read_work_again(&export_options, &mapper, &scan, &tx).unwrap();
                drop(tx);
                let mut items = Vec::new();
                while let Ok(item) = rx.try_recv() {
                    items.push((item.mapped.external_id, item.fingerprint));
                }
                items
            }
        };
        taken.sort();
        taken
    }

    #[test]
    fn records_taken_up_carry_their_fingerprint_to_the_push_by_either_road() {
        let kept = taken_up(100, true);
        assert_eq!(kept.len(), 3);
        assert!(kept.iter().all(|(_, fingerprint)| fingerprint.is_some()));
        let fingerprints: HashSet<_> = kept.iter().map(|(_, fp)| *fp).collect();
        assert_eq!(fingerprints.len(), 3, "one fingerprint per record");
        assert_eq!(taken_up(0, true), kept, "read again over the budget");
        // A cycle that writes nothing carries none.
        for budget in [0, 100] {
            assert!(taken_up(budget, false).iter().all(|(_, fp)| fp.is_none()));
        }
    }

    #[test]
    fn export_problems_found_by_the_scan_have_their_own_exit_codes() {
        let path = PathBuf::from("export/page-1.json");
        let cases = [
            (ExportError::Empty { path: path.clone() }, ExitCode::Export),
            (
                ExportError::NotAFile {
                    path: path.clone(),
                    kind: "a FIFO (named pipe)",
                },
                ExitCode::Export,
            ),
            (
                ExportError::Changed {
                    path: path.clone(),
                    change: FileChange::Replaced,
                },
                ExitCode::Runtime,
            ),
            (
                ExportError::Unsettled {
                    path: path.clone(),
                    age: None,
                    settle: std::time::Duration::from_secs(60),
                },
                ExitCode::Skipped,
            ),
        ];
        for (error, code) in cases {
            let text = error.to_string();
            let error = CycleError::Scan(ScanError::from(error));
            assert_eq!(error.exit_code(), code, "{text}");
            assert_eq!(error.is_skip(), code == ExitCode::Skipped, "{text}");
        }
    }
}
