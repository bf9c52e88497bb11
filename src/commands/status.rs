//! `referral-sync status [--json]`: the store — counts per state, recent
//! cycles, the records needing attention — and who holds it.

use serde_json::json;

use crate::config::Settings;
use crate::exit::{ExitCode, Failure, OrExit};
use crate::lock::StoreLock;
use crate::outln;
use crate::store::Store;

use super::output::printable;

pub fn status_command(settings: Settings, as_json: bool) -> Result<ExitCode, Failure> {
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
