//! `referral-sync resync [--only EXTERNAL_ID ...]`: a full resync now.
//!
//! When a daemon holds the store, the command queues a request in
//! `resync_requests`, wakes the daemon with SIGHUP and waits for its answer;
//! otherwise it takes the lock and runs the resync itself. Either way it
//! ends with the exit codes of `sync`.

use std::collections::HashSet;
use std::time::Duration;

use crate::config::Settings;
use crate::cycle::{CycleOutcome, CycleRequest, Trigger};
use crate::daemon::requests::{
    self, RequestOutcome, RequestState, ResyncResult, unmatched_ids, unmatched_message,
};
use crate::daemon::{HOUSEKEEPING_INTERVAL, daemon_pid, signals};
use crate::exit::{ExitCode, Failure, OrExit};
use crate::lock::{LockError, StoreLock};
use crate::progress;
use crate::store::Store;

use super::manual::{ManualCycle, Printing, Run, StoreAccess};
use super::output::Output;

/// How often the command looks at its request while the daemon works.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, clap::Args)]
pub struct ResyncArgs {
    /// Only these records (their CRM ids, the referrals'
    /// externalReferenceId); every record when left out.
    #[arg(long, value_name = "EXTERNAL_ID", num_args = 1..)]
    pub only: Vec<String>,
    /// Print what the resync would do — every drift it would repair or
    /// keep — reading the service but writing nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: `text` for people, `json` for one object per record.
    #[arg(long, value_enum, default_value_t = Output::Text, requires = "dry_run")]
    pub output: Output,
    /// Print every record's ops, not only those of the first records
    /// (records with errors are always printed). A resync the daemon runs
    /// prints only its summary.
    #[arg(short, long)]
    pub verbose: bool,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("--only: an external id must not be empty")]
pub struct EmptyExternalId;

/// The ids of `--only`, normalised as the scan normalises a record's id
/// (a GUID in any spelling, braced or upper-case, becomes its lower-case
/// hyphenated form; anything else is trimmed), without repeats, in the
/// order given; `None` when none were given (every record).
pub fn only_ids(args: &ResyncArgs) -> Result<Option<Vec<String>>, EmptyExternalId> {
    if args.only.is_empty() {
        return Ok(None);
    }
    let mut seen = HashSet::new();
    let mut ids = Vec::new();
    for id in &args.only {
        let id = crate::mapping::normalise_external_id(id);
        if id.is_empty() {
            return Err(EmptyExternalId);
        }
        if seen.insert(id.clone()) {
            ids.push(id);
        }
    }
    Ok(Some(ids))
}

pub fn resync_command(settings: Settings, args: &ResyncArgs) -> Result<ExitCode, Failure> {
    let only = only_ids(args).or_exit(ExitCode::Config)?;
    if args.dry_run {
        // Writes nothing, so it neither needs the lock nor the daemon.
        return super::sync::resync_plan(settings, only, args.output, args.verbose);
    }
    match StoreLock::acquire(&settings.store_path) {
        Ok(lock) => resync_here(settings, lock, only, args.verbose),
        Err(LockError::Held { pid, .. }) => resync_through_daemon(&settings, &pid, only),
        Err(e) => Err(Failure::new(e.exit_code(), e)),
    }
}

// ---------------------------------------------------------------------------
// No daemon: run it here.

fn resync_here(
    settings: Settings,
    lock: StoreLock,
    only: Option<Vec<String>>,
    verbose: bool,
) -> Result<ExitCode, Failure> {
    let mut request = CycleRequest::new(Trigger::Resync);
    request.resync = true;
    request.only = only.as_ref().map(|ids| ids.iter().cloned().collect());
    let cycle = ManualCycle {
        request,
        access: StoreAccess::Held(lock),
        run: Run::Sync,
        printing: Printing {
            output: Output::Text,
            verbose,
            // A resync takes up every record; the unchanged ones are only
            // counted.
            unchanged: false,
        },
    };
    let ran = cycle.run(settings)?;
    let summary = ran.result.map_err(|e| Failure::new(e.exit_code(), &e))?;
    let outcome = CycleOutcome::of(&summary);
    if outcome == CycleOutcome::Interrupted {
        crate::outln!("interrupted: {summary}");
        return Err(Failure::new(
            outcome.exit_code(),
            "the resync was interrupted; records not reached stay as they were",
        ));
    }
    crate::outln!("resynced: {summary}");
    let unmatched = only
        .as_deref()
        .map(|only| unmatched_ids(only, &ran.reported))
        .unwrap_or_default();
    if unmatched.is_empty() {
        Ok(outcome.exit_code())
    } else {
        Err(Failure::new(
            ExitCode::Records,
            unmatched_message(&unmatched),
        ))
    }
}

// ---------------------------------------------------------------------------
// A daemon holds the store: ask it.

fn resync_through_daemon(
    settings: &Settings,
    holder: &str,
    only: Option<Vec<String>>,
) -> Result<ExitCode, Failure> {
    let store_path = &settings.store_path;
    let pid = match holder.parse::<u32>() {
        Ok(pid) if daemon_pid(store_path) == Some(pid) => pid,
        _ => {
            return Err(Failure::new(
                ExitCode::Locked,
                format!(
                    "store {} is in use by pid {holder}, which is not a referral-sync daemon \
                     (a `sync` or `resync` still running?); try again when it has finished",
                    store_path.display()
                ),
            ));
        }
    };
    // The daemon holds the store: write the request beside it without
    // migrating anything under it.
    let store = Store::open_shared(store_path).or_exit(ExitCode::Runtime)?;
    let id = requests::insert(&store, only.as_deref(), Some(std::process::id()))
        .or_exit(ExitCode::Runtime)?;
    match signals::send_hangup(pid) {
        Ok(()) => eprintln!("resync request {id} sent to the daemon (pid {pid})"),
        Err(e) => eprintln!(
            "warning: cannot signal the daemon (pid {pid}): {e}; it takes resync request {id} \
             up within {}s",
            HOUSEKEEPING_INTERVAL.as_secs()
        ),
    }
    let spinner = progress::waiting_spinner(format!("resync request {id}: queued"));
    let answer = wait_for_answer(&store, id, pid, holder, &spinner);
    spinner.finish_and_clear();
    answer
}

fn wait_for_answer(
    store: &Store,
    id: i64,
    pid: u32,
    holder: &str,
    spinner: &indicatif::ProgressBar,
) -> Result<ExitCode, Failure> {
    loop {
        std::thread::sleep(POLL_INTERVAL);
        match requests::state(store, id).or_exit(ExitCode::Runtime)? {
            RequestState::Finished(result) => {
                spinner.finish_and_clear();
                return print_result(&result);
            }
            RequestState::Queued => spinner.set_message(format!(
                "resync request {id}: queued behind the running cycle"
            )),
            RequestState::Running => spinner.set_message(format!(
                "resync request {id}: the daemon (pid {pid}) is running it"
            )),
            RequestState::Missing => {
                return Err(Failure::new(
                    ExitCode::Runtime,
                    format!(
                        "resync request {id} is no longer in store {}",
                        store.path().display()
                    ),
                ));
            }
        }
        if StoreLock::holder(store.path()).as_deref() == Some(holder) {
            continue;
        }
        // The daemon is gone. It may have answered just before it went.
        if let Ok(RequestState::Finished(result)) = requests::state(store, id) {
            spinner.finish_and_clear();
            return print_result(&result);
        }
        let reason = format!("the daemon (pid {pid}) stopped before taking up the request");
        let message = if requests::cancel_queued(store, id, &reason).or_exit(ExitCode::Runtime)? {
            format!("{reason}; resync request {id} was withdrawn and nothing was done")
        } else {
            format!(
                "the daemon (pid {pid}) stopped during resync request {id}; \
                 see `referral-sync status` and the daemon's log"
            )
        };
        return Err(Failure::new(ExitCode::Runtime, message));
    }
}

/// The daemon's answer, as the command's own.
fn print_result(result: &ResyncResult) -> Result<ExitCode, Failure> {
    match result.outcome {
        RequestOutcome::Cycle(CycleOutcome::Ok | CycleOutcome::Partial) => {
            crate::outln!("resynced: {}", result.summary);
            match &result.error {
                Some(error) => Err(Failure::new(result.exit_code, error)),
                None => Ok(result.exit_code),
            }
        }
        outcome => {
            if result.summary != Default::default() {
                crate::outln!("{outcome}: {}", result.summary);
            }
            let error = result.error.as_deref().unwrap_or("no reason recorded");
            Err(Failure::new(
                result.exit_code,
                format!("the resync {outcome}: {error}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(only: &[&str]) -> ResyncArgs {
        ResyncArgs {
            only: only.iter().map(|s| s.to_string()).collect(),
            dry_run: false,
            output: Output::Text,
            verbose: false,
        }
    }

    #[test]
    fn only_ids_are_trimmed_and_deduplicated_in_order() {
        type Expected = Result<Option<Vec<&'static str>>, EmptyExternalId>;
        let cases: [(&[&str], Expected); 5] = [
            (&[], Ok(None)),
            (&["b", "a"], Ok(Some(vec!["b", "a"]))),
            (&[" a ", "b", "a"], Ok(Some(vec!["a", "b"]))),
            (&["a", "  "], Err(EmptyExternalId)),
            // GUIDs as the scan spells them, however they were typed.
            (
                &[
                    "{3F2504E0-4F89-41D3-9A0C-0305E82C3301}",
                    "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
                    " 3F2504E04F8941D39A0C0305E82C3302 ",
                ],
                Ok(Some(vec![
                    "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
                    "3f2504e0-4f89-41d3-9a0c-0305e82c3302",
                ])),
            ),
        ];
        for (given, expected) in cases {
            let expected =
                expected.map(|o| o.map(|ids| ids.iter().map(|s| s.to_string()).collect()));
            assert_eq!(only_ids(&args(given)), expected, "{given:?}");
        }
    }
}
