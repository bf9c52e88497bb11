//! `referral-sync run`: the daemon (see `daemon/`), in the foreground until
//! SIGTERM or SIGINT.

use crate::config::Settings;
use crate::exit::{ExitCode, Failure};

/// 0 after a graceful shutdown; a failure to start is reported in the log.
pub fn run_command(settings: Settings) -> Result<ExitCode, Failure> {
    crate::daemon::run(settings)
}
