//! The command line: argument parsing, and one function per command. Every
//! command returns an [`ExitCode`] from the documented table, or a
//! [`Failure`], whose error is reported once, in [`run`], with what and where.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;
use tokio::sync::watch;

use crate::api::auth::{SecretFile, check_secret_file};
use crate::config::Settings;
use crate::cycle::scan::{self, ScanOptions};
use crate::cycle::{Action, CycleOutcome, CycleRequest, Engine, RecordOutcome, Trigger};
use crate::diff::{self, DiffOptions};
use crate::exit::{ExitCode, Failure, OrExit};
use crate::lock::StoreLock;
use crate::model::ManagedPaths;
use crate::store::Store;
use crate::{logging, service};

#[derive(Debug, Parser)]
#[command(
    name = "referral-sync",
    version,
    about = "Keeps Partner Center referrals in step with a Dynamics 365 export"
)]
pub struct Cli {
    /// The configuration file (TOML).
    #[arg(
        long,
        global = true,
        env = "REFERRAL_SYNC_CONFIG",
        default_value = "/etc/referral-sync/referral-sync.toml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one cycle: read the export and push the changes.
    Sync(SyncArgs),
    /// Show the store: counts per state, recent cycles, failing records.
    Status {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration and the export; print every problem.
    Check,
    /// Run as a service: cycles on `schedule.cron`, resyncs on SIGHUP.
    Run,
    /// Resync now: through the running daemon, or here if none runs.
    Resync(crate::daemon::ResyncArgs),
    /// Print the patch between two referral documents (every path managed).
    Diff { before: PathBuf, after: PathBuf },
    /// What happened to one record and why, newest first.
    History(crate::commands::history::HistoryArgs),
    /// Let held records (refused by the service for good) be tried again.
    Retry(crate::commands::retry::RetryArgs),
    /// Sign in once (device code) and write auth.refresh_token_file.
    Login,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Parse the arguments and run the command.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    run(cli).into()
}

/// Print a line of command output. Output cut short by a closed pipe
/// (`referral-sync check | head`) just ends: the command goes on and exits
/// with its own code, instead of `println!`'s panic. (SIGPIPE stays
/// ignored: the HTTP client must see a closed socket as an error.)
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Run the command; a failure is reported here.
pub fn run(cli: Cli) -> ExitCode {
    dispatch(cli).unwrap_or_else(|failure| {
        failure.report();
        failure.code()
    })
}

fn dispatch(cli: Cli) -> Result<ExitCode, Failure> {
    match cli.command {
        Command::Diff { before, after } => diff_command(&before, &after),
        Command::Sync(args) => with_settings(&cli.config, |settings| sync_command(settings, &args)),
        Command::Status { json } => {
            with_settings(&cli.config, |settings| status_command(settings, json))
        }
        Command::Check => with_settings(&cli.config, check_command),
        Command::Run => with_settings(&cli.config, crate::daemon::run),
        Command::Resync(args) => with_settings(&cli.config, |settings| {
            crate::daemon::resync_command(settings, &args)
        }),
        Command::History(args) => with_settings(&cli.config, |settings| {
            crate::commands::history::history_command(settings, &args)
        }),
        Command::Retry(args) => with_settings(&cli.config, |settings| {
            crate::commands::retry::retry_command(settings, &args)
        }),
        Command::Login => with_settings(&cli.config, crate::commands::login::login_command),
    }
}

fn with_settings(
    path: &Path,
    command: impl FnOnce(Settings) -> Result<ExitCode, Failure>,
) -> Result<ExitCode, Failure> {
    let settings = Settings::load(path).or_exit(ExitCode::Config)?;
    logging::init(settings.log.format, &settings.log.level);
    command(settings)
}

/// The async runtime of a command.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    service::async_runtime().map_err(|e| {
        Failure::new(
            ExitCode::Runtime,
            format!("cannot start the async runtime: {e}"),
        )
    })
}

// ---------------------------------------------------------------------------
// sync

fn sync_command(settings: Settings, args: &SyncArgs) -> Result<ExitCode, Failure> {
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
    let runtime = runtime()?;
    let offline = args.dry_run && (args.offline || settings.auth.is_none());
    // A secret the client cannot use would fail every record one by one.
    if !offline && let Some(problem) = unusable_secret_file(&settings) {
        return Err(Failure::new(ExitCode::Config, problem));
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

/// One record, as a person reads it or as one JSON line.
pub fn write_outcome(
    out: &mut dyn Write,
    outcome: &RecordOutcome,
    output: Output,
) -> std::io::Result<()> {
    match output {
        Output::Json => {
            let line = serde_json::to_string(outcome).unwrap_or_else(|e| {
                json!({"error": format!("cannot serialise the outcome: {e}")}).to_string()
            });
            writeln!(out, "{line}")
        }
        Output::Text => {
            for line in outcome_lines(outcome) {
                writeln!(out, "{}", printable(&line))?;
            }
            Ok(())
        }
    }
}

/// How many records' ops and documents the text output of `sync` and
/// `resync` prints without `--verbose`.
pub const TEXT_RECORD_LIMIT: u64 = 20;

/// Prints the records of a cycle as they are decided. JSON output lists
/// every record. Text output prints every record with an error (invalid,
/// failed, unresolved, or an op refused) in full, and of the others only
/// the first [`TEXT_RECORD_LIMIT`] unless `verbose`; [`RecordPrinter::finish`]
/// then says how many were left out. A first cycle of a million records
/// would otherwise print every created document.
pub struct RecordPrinter<W: Write> {
    output: Output,
    limit: Option<u64>,
    state: Mutex<Printed<W>>,
}

struct Printed<W> {
    out: W,
    shown: u64,
    left_out: u64,
}

impl<W: Write> RecordPrinter<W> {
    pub fn new(out: W, output: Output, verbose: bool) -> Self {
        RecordPrinter {
            output,
            limit: (!verbose).then_some(TEXT_RECORD_LIMIT),
            state: Mutex::new(Printed {
                out,
                shown: 0,
                left_out: 0,
            }),
        }
    }

    /// Print one record, or count it as left out.
    pub fn print(&self, outcome: &RecordOutcome) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let limited = self.output == Output::Text && !needs_attention(outcome);
        if limited {
            if self.limit.is_some_and(|limit| state.shown >= limit) {
                state.left_out += 1;
                return;
            }
            state.shown += 1;
        }
        let _ = write_outcome(&mut state.out, outcome, self.output);
    }

    /// How many records the text output left out so far.
    pub fn left_out(&self) -> u64 {
        self.state.lock().map(|s| s.left_out).unwrap_or(0)
    }

    /// Say how many records were left out, if any; then flush.
    pub fn finish(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.left_out > 0 {
            let line = left_out_line(state.left_out);
            let _ = writeln!(state.out, "{line}");
        }
        let _ = state.out.flush();
    }

    /// The writer, once the cycle is over.
    pub fn into_inner(self) -> Option<W> {
        self.state.into_inner().ok().map(|s| s.out)
    }
}

/// The line that ends a text output cut short.
pub fn left_out_line(left_out: u64) -> String {
    let records = if left_out == 1 { "record" } else { "records" };
    format!("\u{2026} and {left_out} more {records} (use --verbose to list every one)")
}

/// A record whose text output is never left out: an operator must see
/// every error.
fn needs_attention(outcome: &RecordOutcome) -> bool {
    matches!(
        outcome.action,
        Action::Invalid | Action::Failed | Action::Unresolved
    ) || !outcome.errors.is_empty()
}

/// The lines of one record's text output, before escaping.
fn outcome_lines(outcome: &RecordOutcome) -> Vec<String> {
    let id = outcome.external_id.as_deref().unwrap_or("(no id)");
    let mut first = format!("{:<10} {id}", outcome.action.as_str());
    if let Some(referral) = &outcome.referral_id {
        first.push_str(&format!("  referral {referral}"));
    }
    let mut lines = vec![first];
    lines.extend(outcome.patch.iter().map(|op| format!("    {op}")));
    if let (Action::Create, Some(document)) = (outcome.action, &outcome.document) {
        lines.push(format!("    POST {document}"));
    }
    let or_nothing = |value: &Option<serde_json::Value>| {
        value
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "nothing".into())
    };
    for c in &outcome.conflicts {
        lines.push(format!(
            "    conflict {}: Partner Center has {}, the CRM wants {} ({:?})",
            c.path,
            or_nothing(&c.live),
            or_nothing(&c.desired),
            c.resolution
        ));
    }
    for d in &outcome.drift {
        lines.push(format!(
            "    drift {} {}: Partner Center has {}, the CRM has {}",
            d.action.as_str(),
            d.path,
            or_nothing(&d.partner_center),
            or_nothing(&d.crm),
        ));
    }
    lines.extend(
        outcome
            .errors
            .iter()
            .map(|error| format!("    error: {error}")),
    );
    if let Some(note) = &outcome.note {
        lines.push(format!("    note: {note}"));
    }
    lines
}

/// `text` with every control character (and every bidirectional override,
/// which reorders what a terminal shows) written as an escape, so that a
/// value from the export or the service cannot start a line of its own,
/// move the cursor or recolour the terminal.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let hostile =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(hostile) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if hostile(c) => escaped.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => escaped.push(c),
        }
    }
    std::borrow::Cow::Owned(escaped)
}

// ---------------------------------------------------------------------------
// status

fn status_command(settings: Settings, as_json: bool) -> Result<ExitCode, Failure> {
    let holder = StoreLock::holder(&settings.store_path);
    let store = match Store::open_read_only(&settings.store_path).or_exit(ExitCode::Runtime)? {
        Some(store) => store,
        None => {
            if as_json {
                outln!(
                    "{}",
                    json!({"store": settings.store_path, "exists": false, "lock_holder_pid": holder})
                );
            } else {
                outln!(
                    "store {}: not created yet (no cycle has run)",
                    settings.store_path.display()
                );
            }
            return Ok(ExitCode::Ok);
        }
    };
    let counts = store.state_counts().or_exit(ExitCode::Runtime)?;
    let cycles = store.recent_cycles(10).or_exit(ExitCode::Runtime)?;
    let problems = store.problems(100).or_exit(ExitCode::Runtime)?;
    // The lock holder is a daemon when its pid is the one the daemon wrote.
    let daemon_pid = crate::daemon::daemon_pid(&settings.store_path)
        .filter(|pid| holder.as_deref() == Some(pid.to_string().as_str()));
    let open_resyncs = crate::daemon::requests::open_count(&store).unwrap_or(0);
    if as_json {
        outln!(
            "{}",
            json!({
                "store": settings.store_path,
                "exists": true,
                "lock_holder_pid": holder,
                "daemon_pid": daemon_pid,
                "open_resync_requests": open_resyncs,
                "counts": counts,
                "cycles": cycles,
                "problems": problems,
            })
        );
        return Ok(ExitCode::Ok);
    }
    outln!("store      {}", settings.store_path.display());
    match (&holder, daemon_pid) {
        (Some(pid), Some(_)) => outln!("running    daemon, pid {pid}"),
        (Some(pid), None) => outln!("running    yes (pid {pid} holds the store)"),
        (None, _) => outln!("running    no"),
    }
    if open_resyncs > 0 {
        outln!("resyncs    {open_resyncs} requested, not finished");
    }
    outln!(
        "records    synced {}, pending {}, failed {}, invalid {}, held {}",
        counts.synced,
        counts.pending,
        counts.failed,
        counts.invalid,
        counts.held
    );
    outln!("\nrecent cycles:");
    if cycles.is_empty() {
        outln!("  none yet");
    }
    for c in &cycles {
        let summary = c
            .summary
            .as_ref()
            .and_then(|s| serde_json::from_value::<crate::cycle::CycleSummary>(s.clone()).ok())
            .map(|s| s.to_string())
            .unwrap_or_default();
        outln!(
            "  {}  {:<8} {:<11} {}{}",
            c.started_at,
            c.trigger,
            c.outcome.as_deref().unwrap_or("running"),
            summary,
            c.error
                .as_deref()
                .map(|e| format!("  error: {e}"))
                .unwrap_or_default()
        );
    }
    if !problems.is_empty() {
        outln!("\nrecords needing attention:");
        for p in &problems {
            outln!(
                "  {:<8} {}  referral {}  attempts {}  {}",
                p.state.as_str(),
                printable(&p.external_id),
                printable(p.referral_id.as_deref().unwrap_or("-")),
                p.attempts,
                printable(p.last_error.as_deref().unwrap_or(""))
            );
        }
    }
    Ok(ExitCode::Ok)
}

// ---------------------------------------------------------------------------
// check

fn check_command(settings: Settings) -> Result<ExitCode, Failure> {
    let mut problems: Vec<String> = Vec::new();
    outln!("configuration {}: ok", settings.source.display());
    for (key, kind, path) in secret_files(&settings) {
        match check_secret_file(kind, &path) {
            Ok(None) => outln!("{key} {}: readable", path.display()),
            Ok(Some(mode)) => outln!(
                "{key} {}: readable, but mode {mode:o} lets group or others read it too (chmod 600)",
                path.display()
            ),
            Err(e) => problems.push(format!("{key}: {e}")),
        }
    }
    if settings.auth.is_none() {
        outln!("auth: none configured (only `sync --dry-run` can run)");
    }
    let mapper = settings.mapper().or_exit(ExitCode::Config)?;
    let store = match Store::open_read_only(&settings.store_path) {
        Ok(Some(store)) => Ok(store),
        Ok(None) => Store::open_in_memory(),
        Err(e) => Err(e),
    };
    let store = match store {
        Ok(s) => s,
        Err(e) => {
            problems.push(e.to_string());
            Store::open_in_memory().or_exit(ExitCode::Runtime)?
        }
    };
    // Dropped columns are reported below with the rest, not in place of it.
    let options = ScanOptions {
        retain_budget: 0,
        schema: crate::cycle::schema::SchemaPolicy::AllowChange,
        ..ScanOptions::default()
    };
    let mut export_options = settings.export_options();
    let mut scanned = scan::scan_export(&export_options, &mapper, &store, &options);
    if let Err(scan::ScanError::Unsettled(unsettled)) = &scanned {
        // Not a problem of the export: say so, and check its content anyway.
        outln!(
            "note: {}",
            printable(&crate::export::settle_note(unsettled))
        );
        export_options.checks.settle = std::time::Duration::ZERO;
        scanned = scan::scan_export(&export_options, &mapper, &store, &options);
    }
    match scanned {
        Ok(scan) => {
            outln!(
                "export {}: {} records in {} file(s), {} valid",
                settings.export.path.display(),
                scan.export.records,
                scan.export.files.len(),
                scan.valid
            );
            if !scan.schema.dropped.is_empty() {
                let refusal = crate::cycle::schema::SchemaChanged(scan.schema.dropped.clone());
                problems.push(refusal.to_string());
            }
            for e in &scan.record_errors {
                problems.push(e.to_string());
            }
            problems.extend(scan.duplicate_errors().map(|(_, message)| message));
            if scan.too_many_missing(settings.sync.max_missing_ratio) {
                problems.push(format!(
                    "{} of the {} records in the store are missing from the export (more than sync.max_missing_ratio = {})",
                    scan.missing_from_export, scan.known, settings.sync.max_missing_ratio
                ));
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
    for p in &problems {
        outln!("problem: {}", printable(p));
    }
    if problems.is_empty() {
        outln!("no problems found");
        Ok(ExitCode::Ok)
    } else {
        outln!("{} problem(s) found", problems.len());
        Ok(ExitCode::Records)
    }
}

/// The configured secret files: the key, what the file holds, its path.
fn secret_files(settings: &Settings) -> Vec<(&'static str, SecretFile, PathBuf)> {
    use crate::config::AuthSettings;
    match &settings.auth {
        Some(AuthSettings::TokenFile(p)) => {
            vec![("auth.token_file", SecretFile::Token, p.clone())]
        }
        Some(AuthSettings::RefreshToken {
            client_secret_file,
            refresh_token_file,
            ..
        }) => {
            let mut files = vec![(
                "auth.refresh_token_file",
                SecretFile::RefreshToken,
                refresh_token_file.clone(),
            )];
            if let Some(p) = client_secret_file {
                files.push((
                    "auth.client_secret_file",
                    SecretFile::ClientSecret,
                    p.clone(),
                ));
            }
            files
        }
        None => Vec::new(),
    }
}

/// Read every secret file as the client will (its content is not kept):
/// the first that cannot be used, as `key: error`.
fn unusable_secret_file(settings: &Settings) -> Option<String> {
    secret_files(settings)
        .into_iter()
        .find_map(|(key, kind, path)| {
            check_secret_file(kind, &path)
                .err()
                .map(|e| format!("{key}: {e}"))
        })
}

// ---------------------------------------------------------------------------
// diff

fn diff_command(before: &Path, after: &Path) -> Result<ExitCode, Failure> {
    let read = |path: &Path| -> Result<serde_json::Value, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{}:{}:{}: {e}", path.display(), e.line(), e.column()))
    };
    let (before, after) = match (read(before), read(after)) {
        (Ok(b), Ok(a)) => (b, a),
        (Err(e), _) | (_, Err(e)) => return Err(Failure::new(ExitCode::Config, e)),
    };
    let planned = diff::plan_patch(
        &before,
        &after,
        &ManagedPaths::all(),
        &DiffOptions::default(),
    );
    let text = serde_json::to_string_pretty(&planned.ops).or_exit(ExitCode::Runtime)?;
    outln!("{text}");
    for r in &planned.rejected {
        eprintln!("not sent: {}: {}", r.path, r.reason);
    }
    if planned.rejected.is_empty() {
        Ok(ExitCode::Ok)
    } else {
        Ok(ExitCode::Records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_output_escapes_what_could_forge_a_line_or_drive_the_terminal() {
        let cases = [
            ("plain id", "plain id"),
            ("two\nlines", "two\\nlines"),
            ("\u{1b}[31mred", "\\u{1b}[31mred"),
            ("nul\0", "nul\\u{0}"),
            ("tab\there\r", "tab\\there\\r"),
            ("rtl\u{202e}txt", "rtl\\u{202e}txt"),
            ("São Paulo €", "São Paulo €"),
        ];
        for (text, expected) in cases {
            assert_eq!(printable(text), expected, "{text:?}");
        }
        let mut outcome =
            RecordOutcome::new(Some("L-1\nupdate    L-2".to_owned()), Action::Invalid);
        outcome.errors.push("bad\u{1b}]0;title\u{7}".to_owned());
        let mut out = Vec::new();
        write_outcome(&mut out, &outcome, Output::Text).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "invalid    L-1\\nupdate    L-2\n    error: bad\\u{1b}]0;title\\u{7}\n"
        );
    }

    fn created(n: u64) -> RecordOutcome {
        let mut outcome = RecordOutcome::new(Some(format!("L-{n}")), Action::Create);
        outcome.document = Some(json!({"name": format!("Deal {n}")}));
        outcome
    }

    fn failed(n: u64) -> RecordOutcome {
        let mut outcome = RecordOutcome::new(Some(format!("F-{n}")), Action::Failed);
        outcome.errors.push(format!("HTTP 500 for F-{n}"));
        outcome
    }

    /// What a printer wrote for `outcomes`, and how many it left out.
    fn printed(outcomes: &[RecordOutcome], output: Output, verbose: bool) -> (String, u64) {
        let printer = RecordPrinter::new(Vec::new(), output, verbose);
        for outcome in outcomes {
            printer.print(outcome);
        }
        printer.finish();
        let left_out = printer.left_out();
        let out = printer.into_inner().unwrap();
        (String::from_utf8(out).unwrap(), left_out)
    }

    #[test]
    fn the_text_output_lists_the_first_records_then_how_many_more() {
        let total = TEXT_RECORD_LIMIT + 7;
        let outcomes: Vec<RecordOutcome> = (1..=total).map(created).collect();
        let (text, left_out) = printed(&outcomes, Output::Text, false);
        assert_eq!(left_out, 7);
        let mut expected = String::new();
        for n in 1..=TEXT_RECORD_LIMIT {
            expected.push_str(&format!(
                "create     L-{n}\n    POST {{\"name\":\"Deal {n}\"}}\n"
            ));
        }
        expected.push_str("\u{2026} and 7 more records (use --verbose to list every one)\n");
        assert_eq!(text, expected);

        let (verbose, left_out) = printed(&outcomes, Output::Text, true);
        assert_eq!(left_out, 0);
        assert_eq!(verbose.lines().count() as u64, 2 * total);
        assert!(verbose.contains(&format!("create     L-{total}\n")));
        assert!(!verbose.contains("more record"), "{verbose}");
    }

    #[test]
    fn the_text_output_never_leaves_out_a_record_with_an_error() {
        // Errors before, among and after the routine records.
        let mut outcomes: Vec<RecordOutcome> = (1..=3).map(failed).collect();
        outcomes.extend((1..=TEXT_RECORD_LIMIT + 1).map(created));
        outcomes.push(RecordOutcome::new(Some("U-1".into()), Action::Unresolved));
        let mut refused = RecordOutcome::new(Some("R-1".into()), Action::Update);
        refused.errors.push("/status not sent: Closed".into());
        outcomes.push(refused);
        outcomes.extend((4..=30).map(failed));
        let (text, left_out) = printed(&outcomes, Output::Text, false);
        assert_eq!(left_out, 1);
        for n in 1..=30 {
            assert!(
                text.contains(&format!(
                    "failed     F-{n}\n    error: HTTP 500 for F-{n}\n"
                )),
                "F-{n}: {text}"
            );
        }
        assert!(text.contains("unresolved U-1\n"), "{text}");
        assert!(
            text.contains("update     R-1\n    error: /status not sent"),
            "{text}"
        );
        let shown = text.lines().filter(|l| l.starts_with("create ")).count() as u64;
        assert_eq!(shown, TEXT_RECORD_LIMIT);
        assert!(!text.contains(&format!("L-{}\n", TEXT_RECORD_LIMIT + 1)));
        assert!(
            text.ends_with("\u{2026} and 1 more record (use --verbose to list every one)\n"),
            "{text}"
        );
    }

    #[test]
    fn json_output_lists_every_record() {
        let total = 3 * TEXT_RECORD_LIMIT;
        let outcomes: Vec<RecordOutcome> = (1..=total).map(created).collect();
        let (text, left_out) = printed(&outcomes, Output::Json, false);
        assert_eq!(left_out, 0);
        let ids: Vec<String> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["externalReferenceId"].as_str().unwrap().to_owned()
            })
            .collect();
        let expected: Vec<String> = (1..=total).map(|n| format!("L-{n}")).collect();
        assert_eq!(ids, expected);
    }
}
