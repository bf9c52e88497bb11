//! The command line: the arguments, and the dispatch to the command (each
//! in a file of its own in `commands/`). Every command returns an
//! [`ExitCode`] from the documented table, or a [`Failure`], whose error is
//! reported once, in [`run`], with what and where.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::commands::{self, history, resync, retry, sync};
use crate::config::Settings;
use crate::exit::{ExitCode, Failure, OrExit};
use crate::logging;

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
    Sync(sync::SyncArgs),
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
    Resync(resync::ResyncArgs),
    /// Print the patch between two referral documents (every path managed).
    Diff { before: PathBuf, after: PathBuf },
    /// What happened to one record and why, newest first.
    History(history::HistoryArgs),
    /// Let held records (refused by the service for good) be tried again.
    Retry(retry::RetryArgs),
    /// Sign in once (device code) and write auth.refresh_token_file.
    Login,
}

/// Parse the arguments and run the command.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    run(cli).into()
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
        Command::Diff { before, after } => commands::diff::diff_command(&before, &after),
        Command::Sync(args) => {
            with_settings(&cli.config, |settings| sync::sync_command(settings, &args))
        }
        Command::Status { json } => with_settings(&cli.config, |settings| {
            commands::status::status_command(settings, json)
        }),
        Command::Check => with_settings(&cli.config, commands::check::check_command),
        Command::Run => with_settings(&cli.config, commands::run::run_command),
        Command::Resync(args) => with_settings(&cli.config, |settings| {
            resync::resync_command(settings, &args)
        }),
        Command::History(args) => with_settings(&cli.config, |settings| {
            history::history_command(settings, &args)
        }),
        Command::Retry(args) => with_settings(&cli.config, |settings| {
            retry::retry_command(settings, &args)
        }),
        Command::Login => with_settings(&cli.config, commands::login::login_command),
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
