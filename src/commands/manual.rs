//! A cycle run by hand — `sync`, `resync --dry-run`, and `resync` when no
//! daemon runs: the store, the client, Ctrl-C, the progress and the
//! records printed as they are decided. Each command then says what its
//! cycle came to.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::api::ApiClient;
use crate::config::Settings;
use crate::cycle::{Action, CycleError, CycleRequest, CycleSummary, Engine, Mode, RecordOutcome};
use crate::exit::{ExitCode, Failure, OrExit};
use crate::lock::StoreLock;
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::service;
use crate::store::Store;

use super::output::{Output, RecordPrinter};

/// How the cycle reaches the store.
pub enum StoreAccess {
    /// A dry run: the store read as it is (or an empty one), no lock.
    ReadOnly,
    /// Take the lock, then the store.
    Lock,
    /// The lock the command already took.
    Held(StoreLock),
}

/// A cycle to run by hand.
pub struct ManualCycle {
    pub request: CycleRequest,
    pub access: StoreAccess,
    pub run: Run,
    pub printing: Printing,
}

/// How far the cycle goes: its [`Mode`], before there is a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// A dry run that does not read the service either: no client.
    Offline,
    /// A dry run: the service read, nothing written.
    Plan,
    Sync,
}

impl Run {
    /// The cycle's mode, with the client `connect` builds when it needs one.
    fn mode(self, connect: impl FnOnce() -> Result<ApiClient, Failure>) -> Result<Mode, Failure> {
        Ok(match self {
            Run::Offline => Mode::Offline,
            Run::Plan => Mode::Plan(connect()?),
            Run::Sync => Mode::Sync(connect()?),
        })
    }
}

/// How the records are printed.
pub struct Printing {
    pub output: Output,
    pub verbose: bool,
    /// Print the unchanged records too (a resync only counts them).
    pub unchanged: bool,
}

/// What the cycle came to, and the ids of the records it took up when it
/// was asked for some (`--only`).
pub struct Ran {
    pub result: Result<CycleSummary, CycleError>,
    pub reported: HashSet<String>,
}

impl ManualCycle {
    pub fn run(self, settings: Settings) -> Result<Ran, Failure> {
        let ManualCycle {
            request,
            access,
            run,
            printing,
        } = self;
        let settings = Arc::new(settings);
        let mapper = settings.mapper();
        let (lock, store) = open_store(&settings, access)?;
        let runtime = super::runtime()?;
        // A secret the client cannot use would fail every record one by one.
        if run != Run::Offline {
            service::check_secret_files(&settings).or_exit(ExitCode::Config)?;
        }
        // A dry run changes nothing, and counts nothing.
        let metrics = (run == Run::Sync && settings.metrics.enabled()).then(|| metrics(&settings));
        let ran = runtime.block_on(async {
            let observer = metrics
                .clone()
                .map(|m| m as Arc<dyn crate::api::RequestObserver>);
            let mode = run.mode(|| {
                service::build_observed_client(&settings, observer).or_exit(ExitCode::Config)
            })?;
            // Ctrl-C or SIGTERM: no new record starts, those in flight
            // finish, and a listing stops.
            let (stop, stop_receiver) = watch::channel(false);
            crate::daemon::signals::stop_on_signal(stop).map_err(|e| {
                Failure::new(
                    ExitCode::Runtime,
                    format!("cannot install the signal handlers: {e}"),
                )
            })?;
            if let Some(client) = mode.client() {
                client.interrupt_listings_on(stop_receiver.clone());
            }
            let engine =
                Engine::in_mode(Arc::clone(&settings), mapper, store, mode).with_metrics(metrics);
            Ok(run_cycle(request, &printing, &engine, stop_receiver).await)
        });
        // The scan runs on a blocking thread that cannot be aborted.
        runtime.shutdown_timeout(Duration::from_secs(1));
        drop(lock);
        ran
    }
}

/// The cycle, its records printed and counted as they are decided.
async fn run_cycle(
    request: CycleRequest,
    printing: &Printing,
    engine: &Engine,
    stop: watch::Receiver<bool>,
) -> Ran {
    let printer = RecordPrinter::new(std::io::stdout(), printing.output, printing.verbose);
    let progress = Progress::for_manual_run(request.trigger);
    let track = request.only.is_some();
    let reported = Mutex::new(HashSet::new());
    let report = progress.wrap(|outcome: &RecordOutcome| {
        if track
            && let Some(id) = &outcome.external_id
            && let Ok(mut reported) = reported.lock()
        {
            reported.insert(id.clone());
        }
        if printing.unchanged || outcome.action != Action::Unchanged {
            printer.print(outcome);
        }
    });
    let result = engine.run_cycle(request, &report, stop).await;
    drop(report);
    progress.finish();
    printer.finish();
    Ran {
        result,
        reported: reported.into_inner().unwrap_or_default(),
    }
}

/// The store as `access` says, and the lock that guards it, if any.
fn open_store(
    settings: &Settings,
    access: StoreAccess,
) -> Result<(Option<StoreLock>, Arc<Mutex<Store>>), Failure> {
    let path = &settings.store_path;
    let (lock, store) = match access {
        StoreAccess::ReadOnly => {
            let store = match Store::open_read_only(path) {
                Ok(Some(store)) => Ok(store),
                Ok(None) => Store::open_in_memory(),
                Err(e) => Err(e),
            };
            (None, store)
        }
        StoreAccess::Lock => {
            let lock = StoreLock::acquire(path).map_err(|e| Failure::new(e.exit_code(), e))?;
            (Some(lock), Store::open(path))
        }
        StoreAccess::Held(lock) => (Some(lock), Store::open(path)),
    };
    let store = store.or_exit(ExitCode::Runtime)?;
    Ok((lock, Arc::new(Mutex::new(store))))
}

fn metrics(settings: &Settings) -> Arc<Metrics> {
    let (metrics, problem) = Metrics::new(&settings.metrics);
    if let Some(problem) = problem {
        eprintln!("warning: {problem}");
    }
    metrics
}
