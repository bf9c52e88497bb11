//! `referral-sync status [--json]`: the store — counts per state, recent
//! cycles, the records needing attention — and who holds it.

use serde_json::json;

use crate::config::Settings;
use crate::exit::{ExitCode, Failure, OrExit};
use crate::lock::StoreLock;
use crate::outln;
use crate::store::{CycleRow, ProblemRow, StateCounts, Store};

use super::output::printable;

/// What `status` reports of a store that exists.
struct StoreStatus {
    holder: Option<String>,
    daemon_pid: Option<u32>,
    open_resyncs: u64,
    counts: StateCounts,
    cycles: Vec<CycleRow>,
    problems: Vec<ProblemRow>,
}

pub fn status_command(settings: Settings, as_json: bool) -> Result<ExitCode, Failure> {
    let holder = StoreLock::holder(&settings.store_path);
    let Some(store) = Store::open_read_only(&settings.store_path).or_exit(ExitCode::Runtime)?
    else {
        print_no_store(&settings, holder, as_json);
        return Ok(ExitCode::Ok);
    };
    let status = read_status(&settings, &store, holder)?;
    if as_json {
        print_json(&settings, &status);
    } else {
        print_text(&settings, &status);
    }
    Ok(ExitCode::Ok)
}

fn print_no_store(settings: &Settings, holder: Option<String>, as_json: bool) {
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
}

fn read_status(
    settings: &Settings,
    store: &Store,
    holder: Option<String>,
) -> Result<StoreStatus, Failure> {
    let counts = store.state_counts().or_exit(ExitCode::Runtime)?;
    let cycles = store.recent_cycles(10).or_exit(ExitCode::Runtime)?;
    let problems = store.problems(100).or_exit(ExitCode::Runtime)?;
    // The lock holder is a daemon when its pid is the one the daemon wrote.
    let daemon_pid = crate::daemon::daemon_pid(&settings.store_path)
        .filter(|pid| holder.as_deref() == Some(pid.to_string().as_str()));
    let open_resyncs = crate::daemon::requests::open_count(store).unwrap_or(0);
    Ok(StoreStatus {
        holder,
        daemon_pid,
        open_resyncs,
        counts,
        cycles,
        problems,
    })
}

fn print_json(settings: &Settings, status: &StoreStatus) {
    outln!(
        "{}",
        json!({
            "store": settings.store_path,
            "exists": true,
            "lock_holder_pid": status.holder,
            "daemon_pid": status.daemon_pid,
            "open_resync_requests": status.open_resyncs,
            "counts": status.counts,
            "cycles": status.cycles,
            "problems": status.problems,
        })
    );
}

fn print_text(settings: &Settings, status: &StoreStatus) {
    outln!("store      {}", settings.store_path.display());
    match (&status.holder, status.daemon_pid) {
        (Some(pid), Some(_)) => outln!("running    daemon, pid {pid}"),
        (Some(pid), None) => outln!("running    yes (pid {pid} holds the store)"),
        (None, _) => outln!("running    no"),
    }
    if status.open_resyncs > 0 {
        outln!("resyncs    {} requested, not finished", status.open_resyncs);
    }
    let counts = &status.counts;
    outln!(
        "records    synced {}, pending {}, failed {}, invalid {}, held {}",
        counts.synced,
        counts.pending,
        counts.failed,
        counts.invalid,
        counts.held
    );
    print_cycles(&status.cycles);
    print_problems(&status.problems);
}

fn print_cycles(cycles: &[CycleRow]) {
    outln!("\nrecent cycles:");
    if cycles.is_empty() {
        outln!("  none yet");
    }
    for c in cycles {
        let summary = c
            .summary
            .as_ref()
            .and_then(|s| serde_json::from_value::<crate::cycle::CycleSummary>(s.clone()).ok())
            .map(|s| s.to_string())
            .unwrap_or_default();
        let error = c
            .error
            .as_deref()
            .map(|e| format!("  error: {e}"))
            .unwrap_or_default();
        outln!(
            "  {}  {:<8} {:<11} {}{}",
            c.started_at,
            c.trigger,
            c.outcome.as_deref().unwrap_or("running"),
            summary,
            error
        );
    }
}

fn print_problems(problems: &[ProblemRow]) {
    if problems.is_empty() {
        return;
    }
    outln!("\nrecords needing attention:");
    for p in problems {
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
