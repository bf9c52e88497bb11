//! `referral-sync sync`: one cycle by hand — and `resync --dry-run`, the
//! resync's plan, which runs the same way.

use std::sync::{Arc, Mutex};

use clap::Args;
use tokio::sync::watch;

use crate::config::Settings;
use crate::cycle::{CycleOutcome, CycleRequest, Engine, RecordOutcome, Trigger};
use crate::exit::{ExitCode, Failure, OrExit};
use crate::lock::StoreLock;
use crate::store::Store;
use crate::{outln, service};

use super::output::{Output, RecordPrinter, printable};

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Print the plan; write nothing to the service or the store.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: do not read the service either.
    #[arg(long, requires = "dry_run")]
    pub offline: bool,
    /// Go on even if many known records are missing from the export.
    #[arg(long)]
    pub allow_missing: bool,
    /// With --dry-run: list unchanged records too (action `unchanged`).
    #[arg(long, requires = "dry_run")]
    pub all: bool,
    /// Go on although referral fields fed from the export before lost
    /// every column (a deliberate rename or removal); they are no longer
    /// guarded.
    #[arg(long)]
    pub allow_schema_change: bool,
    /// `text` for people, `json` for one JSON object per record.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Text output: print every record's ops (or document), not only
    /// those of the first records. Records with errors are always printed;
    /// `--output json` always lists every record.
    #[arg(short, long)]
    pub verbose: bool,
}

pub fn sync_command(settings: Settings, args: &SyncArgs) -> Result<ExitCode, Failure> {
    manual_cycle(settings, args, CycleRequest::new(Trigger::Manual))
}

/// `resync --dry-run`: the resync's plan — what it would repair or keep
/// where Partner Center drifted — read from the service, nothing written.
pub fn resync_plan(
    settings: Settings,
    only: Option<Vec<String>>,
    output: Output,
    verbose: bool,
) -> Result<ExitCode, Failure> {
    let args = SyncArgs {
        dry_run: true,
        offline: false,
        allow_missing: true,
        allow_schema_change: false,
        all: false,
        output,
        verbose,
    };
    let mut request = CycleRequest::new(Trigger::Resync);
    request.only = only.map(|ids| ids.into_iter().collect());
    manual_cycle(settings, &args, request)
}

/// A cycle run by hand: `request` as given, made a dry run and allowed
/// missing records as `args` say.
fn manual_cycle(
    settings: Settings,
    args: &SyncArgs,
    mut request: CycleRequest,
) -> Result<ExitCode, Failure> {
    let settings = Arc::new(settings);
    let mapper = Arc::new(settings.mapper().or_exit(ExitCode::Config)?);
    // A real cycle takes the lock and the store; a dry run only reads.
    let (_lock, store) = if args.dry_run {
        let store = match Store::open_read_only(&settings.store_path) {
            Ok(Some(store)) => Ok(store),
            Ok(None) => Store::open_in_memory(),
            Err(e) => Err(e),
        };
        (None, store)
    } else {
        let lock =
            StoreLock::acquire(&settings.store_path).map_err(|e| Failure::new(e.exit_code(), e))?;
        (Some(lock), Store::open(&settings.store_path))
    };
    let store = Arc::new(Mutex::new(store.or_exit(ExitCode::Runtime)?));
    let runtime = super::runtime()?;
    let offline = args.dry_run && (args.offline || settings.auth.is_none());
    // A secret the client cannot use would fail every record one by one.
    if !offline {
        service::check_secret_files(&settings).or_exit(ExitCode::Config)?;
    }
    // A dry run changes nothing, and counts nothing.
    let metrics = (!args.dry_run && settings.metrics.enabled()).then(|| {
        let (metrics, problem) = crate::metrics::Metrics::new(&settings.metrics);
        if let Some(problem) = problem {
            eprintln!("warning: {problem}");
        }
        metrics
    });
    runtime.block_on(async {
        let observer = metrics
            .clone()
            .map(|m| m as Arc<dyn crate::api::RequestObserver>);
        let client = if offline {
            None
        } else {
            Some(service::build_observed_client(&settings, observer).or_exit(ExitCode::Config)?)
        };
        // Ctrl-C or SIGTERM: no new record starts, those in flight finish,
        // and a listing stops.
        let (stop_tx, stop_rx) = watch::channel(false);
        if let Some(client) = &client {
            client.interrupt_listings_on(stop_rx.clone());
        }
        let engine =
            Engine::new(Arc::clone(&settings), mapper, store, client).with_metrics(metrics);
        request.dry_run = args.dry_run;
        request.allow_missing |= args.allow_missing;
        request.allow_schema_change = args.allow_schema_change;
        request.list_unchanged = args.all;
        let trigger = request.trigger;
        let output = args.output;
        let printer = RecordPrinter::new(std::io::stdout(), output, args.verbose);
        let report = |outcome: &RecordOutcome| printer.print(outcome);
        crate::daemon::signals::stop_on_signal(stop_tx).map_err(|e| {
            Failure::new(
                ExitCode::Runtime,
                format!("cannot install the signal handlers: {e}"),
            )
        })?;
        let progress = crate::progress::Progress::for_manual_run(trigger);
        let report = progress.wrap(report);
        let result = engine.run_cycle(request, &report, stop_rx).await;
        progress.finish();
        printer.finish();
        match result {
            Ok(summary) => {
                let line = format!(
                    "{}: {summary}",
                    if args.dry_run { "plan" } else { "synced" }
                );
                let outcome = CycleOutcome::of(&summary);
                if outcome == CycleOutcome::Interrupted {
                    eprintln!("{line}");
                    return Err(Failure::new(
                        outcome.exit_code(),
                        "the cycle was interrupted; records not reached stay as they were",
                    ));
                }
                match output {
                    Output::Text => outln!("{line}"),
                    Output::Json => eprintln!("{line}"),
                }
                Ok(outcome.exit_code())
            }
            Err(e) if e.is_skip() => {
                // Not a failure: cron can tell it by its exit code and line.
                eprintln!("skipped: {}", printable(&e.to_string()));
                Ok(e.exit_code())
            }
            // It may quote a file name or a value from the export.
            Err(e) => Err(Failure::new(e.exit_code(), printable(&e.to_string()))),
        }
    })
}
