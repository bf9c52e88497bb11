//! `referral-sync retry EXTERNAL_ID... | --all`: let held records — those
//! the service refused for good — be tried again at the next cycle.

use crate::config::Settings;
use crate::exit::{ExitCode, Failure, OrExit};
use crate::mapping::normalise_external_id;
use crate::store::Store;

#[derive(Debug, Clone, clap::Args)]
pub struct RetryArgs {
    /// The held records to try again (their CRM ids).
    #[arg(
        value_name = "EXTERNAL_ID",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub external_ids: Vec<String>,
    /// Every held record.
    #[arg(long)]
    pub all: bool,
}

pub fn retry_command(settings: Settings, args: &RetryArgs) -> Result<ExitCode, Failure> {
    // Beside a running daemon too: one short transaction.
    let store = Store::open_shared(&settings.store_path).or_exit(ExitCode::Runtime)?;
    let asked: Option<Vec<String>> = (!args.all).then(|| {
        args.external_ids
            .iter()
            .map(|id| normalise_external_id(id))
            .collect()
    });
    let released = store
        .release_held(asked.as_deref())
        .or_exit(ExitCode::Runtime)?;
    for id in &released {
        crate::outln!("released {id}: tried again at the next cycle");
    }
    let not_held: Vec<&String> = asked
        .iter()
        .flatten()
        .filter(|id| !released.contains(id))
        .collect();
    for id in &not_held {
        eprintln!(
            "error: record {} is not held (see `referral-sync status`)",
            id.escape_debug()
        );
    }
    if args.all && released.is_empty() {
        crate::outln!("no record is held");
    }
    if not_held.is_empty() {
        Ok(ExitCode::Ok)
    } else {
        Ok(ExitCode::Records)
    }
}
