//! `referral-sync sync`: one cycle by hand — and `resync --dry-run`, the
//! resync's plan, which runs the same way.

use clap::Args;

use crate::config::Settings;
use crate::cycle::{CycleOutcome, CycleRequest, Trigger};
use crate::exit::{ExitCode, Failure};
use crate::outln;

use super::manual::{ManualCycle, Printing, Run, StoreAccess};
use super::output::{Output, printable};

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

/// A cycle run by hand: `request` as given, run as a dry run and allowed
/// missing records as `args` say.
fn manual_cycle(
    settings: Settings,
    args: &SyncArgs,
    mut request: CycleRequest,
) -> Result<ExitCode, Failure> {
    request.allow_missing |= args.allow_missing;
    request.allow_schema_change = args.allow_schema_change;
    request.list_unchanged = args.all;
    // A real cycle takes the lock and the store; a dry run only reads.
    let access = if args.dry_run {
        StoreAccess::ReadOnly
    } else {
        StoreAccess::Lock
    };
    let run = run_for(args.dry_run, args.offline, settings.auth.is_some());
    let cycle = ManualCycle {
        request,
        access,
        run,
        printing: Printing {
            output: args.output,
            verbose: args.verbose,
            unchanged: true,
        },
    };
    let summary = match cycle.run(settings)?.result {
        Ok(summary) => summary,
        Err(e) if e.is_skip() => {
            // Not a failure: cron can tell it by its exit code and line.
            eprintln!("skipped: {}", printable(&e.to_string()));
            return Ok(e.exit_code());
        }
        // It may quote a file name or a value from the export.
        Err(e) => return Err(Failure::new(e.exit_code(), printable(&e.to_string()))),
    };
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
    match args.output {
        Output::Text => outln!("{line}"),
        Output::Json => eprintln!("{line}"),
    }
    Ok(outcome.exit_code())
}

/// A cycle that is not a dry run syncs; a dry run reads the service unless
/// told not to (`--offline`) or there are no credentials to read it with.
fn run_for(dry_run: bool, offline: bool, credentials: bool) -> Run {
    match (dry_run, offline || !credentials) {
        (false, _) => Run::Sync,
        (true, true) => Run::Offline,
        (true, false) => Run::Plan,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dry_run_reads_the_service_only_with_credentials_and_not_offline() {
        // (dry run, --offline, credentials) → run
        let cases = [
            ((false, false, true), Run::Sync),
            ((false, false, false), Run::Sync),
            ((true, false, true), Run::Plan),
            ((true, true, true), Run::Offline),
            ((true, false, false), Run::Offline),
        ];
        for ((dry_run, offline, credentials), expected) in cases {
            assert_eq!(
                run_for(dry_run, offline, credentials),
                expected,
                "dry run {dry_run}, offline {offline}, credentials {credentials}"
            );
        }
    }
}
