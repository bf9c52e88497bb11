//! `referral-sync run`: the long-running daemon.
//!
//! It holds the single-instance lock and the store for its whole life and
//! runs cycles: one at start (trigger `startup`), then on `schedule.cron`
//! (`schedule`), and a resync for every request (`resync`: SIGHUP, which is
//! `systemctl reload`, or `referral-sync resync`). Never two cycles at once:
//! a tick that comes while a cycle runs is skipped, a resync waits its turn.
//! SIGTERM or SIGINT stop it gracefully: no new record starts, the records
//! in flight get `daemon.shutdown_grace_secs` to finish.
//!
//! The cycle runs in its own task; this loop only decides what starts when,
//! talks to systemd and keeps the resync requests, through a connection of
//! its own so that it never waits for the cycle's.

pub mod notify;
pub mod requests;
pub mod schedule;
pub mod signals;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinHandle};
use tracing::{error, info, warn};

use crate::config::Settings;
use crate::cycle::{CycleError, CycleOutcome, CycleRequest, CycleSummary, Engine, Trigger};
use crate::exit::{ExitCode, Failure, OrExit};
use crate::lock::StoreLock;
use crate::progress::{self, Progress};
use crate::service;
use crate::store::Store;

use notify::Notifier;
use requests::{RequestOutcome, ResyncResult, plan_batches};
use schedule::{Schedule, Tick};
use signals::{SignalEvent, Signals};

/// How often the daemon looks for resync requests whose SIGHUP did not
/// arrive (the requester may not signal it) and checks the zone's offset.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(2);

/// `referral-sync run`: 0 after a graceful shutdown. Its failures are
/// reported in the log.
pub fn run(settings: Settings) -> Result<ExitCode, Failure> {
    let settings = Arc::new(settings);
    let mapper = settings.mapper();
    // A secret the client cannot use would fail every cycle.
    service::check_secret_files(&settings).or_log(ExitCode::Config)?;
    let lock =
        StoreLock::acquire(&settings.store_path).map_err(|e| Failure::logged(e.exit_code(), e))?;
    let engine_store = Store::open(&settings.store_path).or_log(ExitCode::Runtime)?;
    let daemon_store = Store::open(&settings.store_path).or_log(ExitCode::Runtime)?;
    let runtime = async_runtime()?;
    // Before the pid file, which tells `referral-sync resync` whom to send
    // SIGHUP: from here on SIGTERM, SIGINT and SIGHUP are ours, so that a
    // resync asked for the moment the file appears does not kill us.
    let signals = install_signals(&runtime)?;
    let pid_file = DaemonPidFile::create(&settings.store_path).or_log(ExitCode::Runtime)?;
    let metrics = new_metrics(&settings);
    let code = runtime.block_on(async {
        let client = connect(&settings, metrics.as_ref()).await?;
        // A listing (the referral index) stops at shutdown instead of
        // holding it for the grace period; writes in flight finish.
        let (shutdown, shutdown_receiver) = watch::channel(false);
        client.interrupt_listings_on(shutdown_receiver);
        let (tick_sender, ticks) = mpsc::unbounded_channel();
        let schedule = Schedule::start(&settings.schedule, tick_sender)
            .await
            .or_log(ExitCode::Runtime)?;
        let engine = build_engine(Arc::clone(&settings), mapper, engine_store, client, metrics);
        let daemon = Daemon {
            settings,
            engine,
            store: daemon_store,
            schedule,
            ticks,
            signals,
            shutdown,
            notifier: Notifier::from_env(),
            running: None,
            last_announced_request: 0,
        };
        Ok(daemon.serve().await)
    });
    // The scan runs on a blocking thread that cannot be aborted; a cycle
    // cut off at shutdown must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(pid_file);
    drop(lock);
    code
}

fn async_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    crate::service::async_runtime().map_err(|e| {
        Failure::logged(
            ExitCode::Runtime,
            format!("cannot start the async runtime: {e}"),
        )
    })
}

fn install_signals(runtime: &tokio::runtime::Runtime) -> Result<Signals, Failure> {
    let _context = runtime.enter();
    Signals::install().map_err(|e| {
        Failure::logged(
            ExitCode::Runtime,
            format!("cannot install signal handlers: {e}"),
        )
    })
}

/// The metrics when they are enabled; a textfile that cannot be read back
/// is a warning, not a reason to stay down.
fn new_metrics(settings: &Settings) -> Option<Arc<crate::metrics::Metrics>> {
    if !settings.metrics.enabled() {
        return None;
    }
    let (metrics, problem) = crate::metrics::Metrics::new(&settings.metrics);
    if let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
    Some(metrics)
}

/// The metrics endpoint listening, if configured, and the API client that
/// reports its requests to the metrics.
async fn connect(
    settings: &Settings,
    metrics: Option<&Arc<crate::metrics::Metrics>>,
) -> Result<crate::api::ApiClient, Failure> {
    if let (Some(metrics), Some(addr)) = (metrics, settings.metrics.listen) {
        crate::metrics::serve(addr, Arc::clone(metrics))
            .await
            .or_log(ExitCode::Config)?;
    }
    let observer = metrics.map(|m| Arc::clone(m) as Arc<dyn crate::api::RequestObserver>);
    service::build_observed_client(settings, observer).or_log(ExitCode::Config)
}

fn build_engine(
    settings: Arc<Settings>,
    mapper: Arc<crate::mapping::Mapper>,
    store: Store,
    client: crate::api::ApiClient,
    metrics: Option<Arc<crate::metrics::Metrics>>,
) -> Arc<Engine> {
    if let Some(metrics) = &metrics {
        // What the store holds, before the first cycle ends.
        match store.state_counts() {
            Ok(counts) => metrics.set_record_states(&counts),
            Err(e) => tracing::warn!(error = %e, "could not count the records for the metrics"),
        }
    }
    Arc::new(
        Engine::new(settings, mapper, Arc::new(Mutex::new(store)), Some(client))
            .with_metrics(metrics),
    )
}

/// `<store>.daemon.pid`: written by the daemon while it holds the lock, so
/// that `referral-sync resync` signals only a daemon, never a `sync`.
pub fn daemon_pid_path(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".daemon.pid");
    PathBuf::from(name)
}

/// The pid in the daemon pid file beside `store`, if any. Only meaningful
/// when the same pid holds the lock (a crashed daemon leaves the file).
pub fn daemon_pid(store: &Path) -> Option<u32> {
    std::fs::read_to_string(daemon_pid_path(store))
        .ok()?
        .trim()
        .parse()
        .ok()
}

struct DaemonPidFile {
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("daemon pid file {}: {source}", path.display())]
struct PidFileError {
    path: PathBuf,
    source: std::io::Error,
}

impl DaemonPidFile {
    fn create(store: &Path) -> Result<DaemonPidFile, PidFileError> {
        let path = daemon_pid_path(store);
        std::fs::write(&path, format!("{}\n", std::process::id())).map_err(|source| {
            PidFileError {
                path: path.clone(),
                source,
            }
        })?;
        Ok(DaemonPidFile { path })
    }
}

impl Drop for DaemonPidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

type CycleJoin = Result<Result<CycleSummary, CycleError>, JoinError>;

struct RunningCycle {
    trigger: Trigger,
    /// The ids a `resync --only` asked for, and every id the cycle took up:
    /// those asked for and never taken up match no record.
    only: Option<Vec<String>>,
    reported: Arc<Mutex<std::collections::HashSet<String>>>,
    /// The resync requests this cycle answers.
    request_ids: Vec<i64>,
    /// The last cycle row before this cycle began (`None` if unknown): the
    /// first row after it is this cycle's.
    rows_before: Option<i64>,
    stop: watch::Sender<bool>,
    handle: JoinHandle<Result<CycleSummary, CycleError>>,
}

struct Daemon {
    settings: Arc<Settings>,
    engine: Arc<Engine>,
    /// The daemon's own connection: resync requests and cycle rows.
    store: Store,
    schedule: Schedule,
    ticks: mpsc::UnboundedReceiver<Tick>,
    signals: Signals,
    /// Turned `true` at shutdown: the client stops any listing.
    shutdown: watch::Sender<bool>,
    notifier: Notifier,
    running: Option<RunningCycle>,
    /// Resync requests up to this id were logged as requested.
    last_announced_request: i64,
}

impl Daemon {
    async fn serve(mut self) -> ExitCode {
        self.clean_up_after_earlier_process();
        let now = Utc::now();
        let watchdog = notify::watchdog_interval();
        info!(
            pid = std::process::id(),
            config = %self.settings.source.display(),
            store = %self.settings.store_path.display(),
            schedule = self.schedule.expression(),
            timezone = %self.schedule.timezone(),
            next_tick = %format_tick(self.schedule.next_tick(now)),
            watchdog_secs = watchdog.map(|w| w.as_secs_f64() * 2.0),
            "daemon started"
        );
        self.notifier.ready("ready; startup cycle running");
        info!("daemon ready");
        self.start_cycle(CycleRequest::new(Trigger::Startup), Vec::new());

        let period = watchdog.map_or(HOUSEKEEPING_INTERVAL, |w| w.min(HOUSEKEEPING_INTERVAL));
        let mut housekeeping = tokio::time::interval(period);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let signal = loop {
            tokio::select! {
                event = self.signals.next() => match event {
                    SignalEvent::Hangup => self.on_hangup(),
                    SignalEvent::Shutdown(name) => break name,
                },
                Some(tick) = self.ticks.recv() => self.on_tick(tick),
                joined = join(&mut self.running) => {
                    if let Some(running) = self.running.take() {
                        self.on_cycle_end(running, joined);
                    }
                    self.start_queued_resync();
                }
                _ = housekeeping.tick() => self.housekeeping(watchdog.is_some()).await,
            }
        };
        self.shutdown(signal).await
    }

    /// Rows a killed or crashed predecessor left open.
    fn clean_up_after_earlier_process(&self) {
        match requests::close_unfinished_cycles(
            &self.store,
            0,
            "the process ended before the cycle finished",
        ) {
            Ok(ids) if !ids.is_empty() => warn!(
                cycle_ids = ?ids,
                "cycles left unfinished by an earlier process marked interrupted"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot close the cycles an earlier process left open"),
        }
        match requests::fail_abandoned(&self.store) {
            Ok(0) => {}
            Ok(n) => warn!(
                requests = n,
                "resync requests an earlier daemon started answered as failed"
            ),
            Err(e) => {
                warn!(error = %e, "cannot close the resync requests an earlier daemon left open")
            }
        }
    }

    fn start_cycle(&mut self, request: CycleRequest, request_ids: Vec<i64>) {
        let trigger = request.trigger;
        let rows_before = match requests::last_cycle_row(&self.store) {
            Ok(row) => Some(row),
            Err(e) => {
                warn!(error = %e, "cannot read the cycles table; the cycle's id will not be known here");
                None
            }
        };
        let (stop, stop_receiver) = watch::channel(false);
        let engine = Arc::clone(&self.engine);
        let only: Option<Vec<String>> = request.only.as_ref().map(|ids| {
            let mut ids: Vec<String> = ids.iter().cloned().collect();
            ids.sort();
            ids
        });
        let reported = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let seen = only.as_ref().map(|_| Arc::clone(&reported));
        let handle = tokio::spawn(async move {
            let progress = Progress::logged(trigger, progress::LOG_INTERVAL);
            let report = progress.wrap(|outcome| {
                if let (Some(seen), Some(id)) = (&seen, &outcome.external_id)
                    && let Ok(mut seen) = seen.lock()
                {
                    seen.insert(id.clone());
                }
            });
            engine.run_cycle(request, &report, stop_receiver).await
        });
        self.running = Some(RunningCycle {
            trigger,
            only,
            reported,
            request_ids,
            rows_before,
            stop,
            handle,
        });
    }

    fn running_cycle_id(&self, running: &RunningCycle) -> Option<(String, Option<String>)> {
        let after = running.rows_before?;
        requests::cycle_started_after(&self.store, after)
            .map_err(|e| warn!(error = %e, "cannot read the cycles table"))
            .ok()
            .flatten()
    }

    fn on_tick(&mut self, tick: Tick) {
        if let Some(running) = &self.running {
            let running_cycle_id = self.running_cycle_id(running).map(|(id, _)| id);
            info!(
                running_cycle_id = running_cycle_id.as_deref().unwrap_or("(starting)"),
                running_trigger = running.trigger.as_str(),
                tick_at = %tick.at.to_rfc3339_opts(SecondsFormat::Millis, true),
                next_tick = %format_tick(self.schedule.next_tick(tick.at)),
                "tick skipped: a cycle is still running"
            );
            return;
        }
        // A queued resync does everything the scheduled cycle would.
        if !self.start_queued_resync() {
            self.start_cycle(CycleRequest::new(Trigger::Schedule), Vec::new());
        }
    }

    fn on_hangup(&mut self) {
        match requests::queued(&self.store) {
            Ok(queued) if queued.is_empty() => match requests::insert(&self.store, None, None) {
                Ok(id) => {
                    self.last_announced_request = self.last_announced_request.max(id);
                    info!(
                        request_id = id,
                        only = "all",
                        source = "SIGHUP",
                        "resync requested"
                    );
                }
                Err(e) => error!(error = %e, "SIGHUP: cannot queue the resync"),
            },
            Ok(queued) => self.announce(&queued),
            Err(e) => error!(error = %e, "SIGHUP: cannot read the resync requests"),
        }
        if let Some(running) = &self.running {
            info!(
                running_trigger = running.trigger.as_str(),
                "resync queued until the running cycle finishes"
            );
        } else {
            self.start_queued_resync();
        }
    }

    fn announce(&mut self, queued: &[requests::ResyncRequest]) {
        let announced = self.last_announced_request;
        for request in queued.iter().filter(|r| r.id > announced) {
            info!(
                request_id = request.id,
                only = %describe_only(request.only.as_deref()),
                requested_by_pid = request.requested_by_pid,
                source = if request.requested_by_pid.is_some() { "command" } else { "SIGHUP" },
                "resync requested"
            );
            self.last_announced_request = request.id;
        }
    }

    /// Start the next queued resync if nothing runs. Returns whether one
    /// started.
    fn start_queued_resync(&mut self) -> bool {
        if self.running.is_some() {
            return false;
        }
        let queued = match requests::queued(&self.store) {
            Ok(queued) => queued,
            Err(e) => {
                error!(error = %e, "cannot read the resync requests");
                return false;
            }
        };
        self.announce(&queued);
        let Some(batch) = plan_batches(&queued).into_iter().next() else {
            return false;
        };
        if let Err(e) = requests::mark_started(&self.store, &batch.request_ids) {
            error!(error = %e, request_ids = ?batch.request_ids, "cannot mark the resync requests started");
            return false;
        }
        let only: Option<Vec<String>> = batch.only.as_ref().map(|ids| {
            let mut ids: Vec<String> = ids.iter().cloned().collect();
            ids.sort();
            ids
        });
        info!(
            request_ids = ?batch.request_ids,
            only = %describe_only(only.as_deref()),
            "resync started"
        );
        self.notifier.reloading(&format!(
            "resync running (request {})",
            join_ids(&batch.request_ids)
        ));
        let mut request = CycleRequest::new(Trigger::Resync);
        request.resync = true;
        request.only = batch.only;
        self.start_cycle(request, batch.request_ids);
        true
    }

    fn on_cycle_end(&mut self, running: RunningCycle, joined: CycleJoin) {
        let recorded = self.running_cycle_id(&running);
        let result = match joined {
            Ok(Ok(summary)) => {
                // The outcome the cycle recorded, else the one it came to.
                let outcome = recorded
                    .as_ref()
                    .and_then(|(_, outcome)| outcome.as_deref())
                    .and_then(|outcome| outcome.parse().ok())
                    .unwrap_or_else(|| CycleOutcome::of(&summary));
                finished_result(&running, outcome, summary)
            }
            Ok(Err(e)) => ResyncResult {
                outcome: RequestOutcome::Cycle(CycleOutcome::Failed),
                summary: CycleSummary::default(),
                exit_code: e.exit_code(),
                error: Some(e.to_string()),
            },
            Err(e) => self.abnormal_end(&running, e),
        };
        let cycle_id = recorded.map(|(id, _)| id);
        if !running.request_ids.is_empty() {
            self.answer(&running.request_ids, cycle_id.as_deref(), &result);
        }
        let status = self.status_line(running.trigger, &result);
        if running.trigger == Trigger::Resync {
            // READY=1 ends the RELOADING=1 sent when the resync began.
            self.notifier.ready(&status);
        } else {
            self.notifier.status(&status);
        }
    }

    /// The cycle's task panicked or was cancelled: its row is closed here,
    /// since the cycle could not close it.
    fn abnormal_end(&self, running: &RunningCycle, e: JoinError) -> ResyncResult {
        let message = if e.is_panic() {
            format!("the cycle stopped on an internal error: {}", panic_text(e))
        } else {
            "the cycle was cancelled".to_owned()
        };
        error!(trigger = running.trigger.as_str(), error = %message, "cycle ended abnormally");
        if let Some(after) = running.rows_before
            && let Err(e) = requests::close_unfinished_cycles(&self.store, after, &message)
        {
            warn!(error = %e, "cannot close the cycle's row");
        }
        ResyncResult {
            outcome: RequestOutcome::Cycle(CycleOutcome::Failed),
            summary: CycleSummary::default(),
            exit_code: ExitCode::Runtime,
            error: Some(message),
        }
    }

    fn answer(&self, request_ids: &[i64], cycle_id: Option<&str>, result: &ResyncResult) {
        if let Err(e) = requests::finish(&self.store, request_ids, result) {
            error!(error = %e, request_ids = ?request_ids, "cannot record the resync's result");
        }
        let s = &result.summary;
        info!(
            request_ids = ?request_ids,
            cycle_id = cycle_id.unwrap_or(""),
            outcome = %result.outcome,
            exit_code = result.exit_code.as_u8(),
            error = result.error.as_deref(),
            seen = s.seen,
            unchanged = s.unchanged,
            created = s.created,
            updated = s.updated,
            conflicts = s.conflicts,
            retried = s.retried,
            failed = s.failed,
            held = s.held,
            invalid = s.invalid,
            unresolved = s.unresolved,
            not_selected = s.not_selected,
            duration_ms = s.duration_ms,
            "resync finished"
        );
    }

    fn status_line(&self, trigger: Trigger, result: &ResyncResult) -> String {
        let now = Utc::now();
        let what = match &result.error {
            Some(error) => format!("{}: {error}", result.outcome),
            None => format!("{}: {}", result.outcome, result.summary),
        };
        format!(
            "last cycle ({}, {}) {what}; next tick {}",
            trigger.as_str(),
            format_time(now.with_timezone(&self.schedule.timezone())),
            format_tick(self.schedule.next_tick(now))
        )
    }

    async fn housekeeping(&mut self, watchdog: bool) {
        if watchdog {
            self.notifier.watchdog();
        }
        let now = Utc::now();
        match self.schedule.follow_offset_change(now).await {
            Ok(Some(offset_seconds)) => info!(
                timezone = %self.schedule.timezone(),
                offset_seconds,
                next_tick = %format_tick(self.schedule.next_tick(now)),
                "schedule follows the zone's new UTC offset"
            ),
            Ok(None) => {}
            Err(e) => error!(error = %e, "cannot move the schedule to the zone's new UTC offset"),
        }
        if self.running.is_none() {
            self.start_queued_resync();
        }
    }

    async fn shutdown(mut self, signal: &'static str) -> ExitCode {
        let grace = self.settings.shutdown_grace;
        info!(
            signal,
            cycle_running = self.running.is_some(),
            grace_secs = grace.as_secs_f64(),
            "shutdown begun"
        );
        self.notifier.stopping("shutting down");
        if let Err(e) = self.schedule.shutdown().await {
            warn!(error = %e, "cannot stop the scheduler cleanly");
        }
        let mut cut_off = false;
        let _ = self.shutdown.send(true);
        if let Some(mut running) = self.running.take() {
            // No new record starts; those in flight may finish.
            let _ = running.stop.send(true);
            let joined = tokio::select! {
                joined = &mut running.handle => Some(joined),
                _ = tokio::time::sleep(grace) => None,
                second = next_shutdown_signal(&mut self.signals) => {
                    info!(signal = second, "second signal: the grace period ends now");
                    None
                }
            };
            match joined {
                Some(joined) => self.on_cycle_end(running, joined),
                None => {
                    cut_off = true;
                    self.cut_off(running).await;
                }
            }
        }
        info!(cut_off, "shutdown finished");
        ExitCode::Ok
    }

    /// The grace period is over: drop the cycle where it stands. Records
    /// whose write was sent stay `pending` (the engine marks them before
    /// each write); the next cycle reads their live referral. A record
    /// whose task was in a step on another worker finishes that step (see
    /// `PushPhase::on_own_task`): it may be settled after all.
    async fn cut_off(&mut self, running: RunningCycle) {
        running.handle.abort();
        let _ = running.handle.await;
        let message = format!(
            "cut off at shutdown after the grace period of {}s; records in flight stay pending",
            self.settings.shutdown_grace.as_secs_f64()
        );
        let cycle_ids = match running.rows_before {
            Some(after) => requests::close_unfinished_cycles(&self.store, after, &message)
                .unwrap_or_else(|e| {
                    error!(error = %e, "cannot close the cut-off cycle's row");
                    Vec::new()
                }),
            None => Vec::new(),
        };
        warn!(
            cycle_ids = ?cycle_ids,
            trigger = running.trigger.as_str(),
            "cycle cut off by the shutdown grace period; records in flight stay pending"
        );
        if !running.request_ids.is_empty() {
            let interrupted = CycleOutcome::Interrupted;
            let result = ResyncResult {
                outcome: RequestOutcome::Cycle(interrupted),
                summary: CycleSummary::default(),
                exit_code: interrupted.exit_code(),
                error: Some(format!("the daemon shut down during the resync: {message}")),
            };
            self.answer(
                &running.request_ids,
                cycle_ids.first().map(String::as_str),
                &result,
            );
        }
    }
}

/// A cycle that ran to its end: `outcome` unless `--only` named ids that
/// no record of an uninterrupted cycle has.
fn finished_result(
    running: &RunningCycle,
    outcome: CycleOutcome,
    summary: CycleSummary,
) -> ResyncResult {
    let reported = running
        .reported
        .lock()
        .map(|reported| reported.clone())
        .unwrap_or_default();
    let unmatched = match &running.only {
        Some(only) if !summary.interrupted => requests::unmatched_ids(only, &reported),
        _ => Vec::new(),
    };
    let error = if unmatched.is_empty() {
        None
    } else {
        let message = requests::unmatched_message(&unmatched);
        warn!(trigger = running.trigger.as_str(), error = %message, "resync asked for records the export does not have");
        Some(message)
    };
    let outcome = with_unmatched_ids(outcome, error.is_some());
    ResyncResult {
        outcome: RequestOutcome::Cycle(outcome),
        summary,
        exit_code: outcome.exit_code(),
        error,
    }
}

/// Ids asked for and not found make a cycle that was otherwise fine partial;
/// a worse outcome stands.
fn with_unmatched_ids(outcome: CycleOutcome, unmatched: bool) -> CycleOutcome {
    if unmatched && outcome == CycleOutcome::Ok {
        CycleOutcome::Partial
    } else {
        outcome
    }
}

async fn join(running: &mut Option<RunningCycle>) -> CycleJoin {
    match running {
        Some(running) => (&mut running.handle).await,
        None => std::future::pending().await,
    }
}

async fn next_shutdown_signal(signals: &mut Signals) -> &'static str {
    loop {
        if let SignalEvent::Shutdown(name) = signals.next().await {
            return name;
        }
    }
}

fn panic_text(e: JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned()),
        Err(e) => e.to_string(),
    }
}

fn describe_only(only: Option<&[String]>) -> String {
    match only {
        None => "all".to_owned(),
        Some(ids) => ids.join(","),
    }
}

fn join_ids(ids: &[i64]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn format_time(at: DateTime<Tz>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn format_tick(tick: Option<DateTime<Tz>>) -> String {
    tick.map(format_time).unwrap_or_else(|| "never".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_sits_beside_the_store_and_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("s.db");
        assert_eq!(daemon_pid(&store), None);
        let file = DaemonPidFile::create(&store).unwrap();
        assert_eq!(daemon_pid_path(&store), dir.path().join("s.db.daemon.pid"));
        assert_eq!(daemon_pid(&store), Some(std::process::id()));
        drop(file);
        assert_eq!(daemon_pid(&store), None);
    }

    #[test]
    fn only_is_described_for_the_log() {
        assert_eq!(describe_only(None), "all");
        assert_eq!(
            describe_only(Some(&["a".to_owned(), "b".to_owned()])),
            "a,b"
        );
        assert_eq!(join_ids(&[3, 4]), "3, 4");
    }

    #[test]
    fn unmatched_ids_make_only_a_fine_cycle_partial() {
        use CycleOutcome::{Failed, Interrupted, Partial};
        let cases = [
            (CycleOutcome::Ok, false, CycleOutcome::Ok),
            (CycleOutcome::Ok, true, Partial),
            (Partial, true, Partial),
            (Failed, true, Failed),
            (Interrupted, true, Interrupted),
            (Failed, false, Failed),
        ];
        for (outcome, unmatched, expected) in cases {
            assert_eq!(
                with_unmatched_ids(outcome, unmatched),
                expected,
                "{outcome:?} with unmatched ids {unmatched}"
            );
        }
    }

    #[test]
    fn ticks_are_shown_in_the_zone() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let at = DateTime::parse_from_rfc3339("2025-07-01T10:00:00Z")
            .unwrap()
            .with_timezone(&berlin);
        assert_eq!(format_tick(Some(at)), "2025-07-01T12:00:00+02:00");
        assert_eq!(format_tick(None), "never");
    }
}
