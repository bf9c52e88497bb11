//! `referral-sync diff BEFORE AFTER`: the patch between two referral
//! documents, every path managed.

use std::path::Path;

use crate::diff::{self, DiffOptions};
use crate::exit::{ExitCode, Failure, OrExit};
use crate::model::ManagedPaths;
use crate::outln;

pub fn diff_command(before: &Path, after: &Path) -> Result<ExitCode, Failure> {
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
