//! How a command ends: its [`ExitCode`] (the README's table) and, when it
//! failed, a [`Failure`] — the code and the error, reported in one place.
//! Nothing here depends on the rest of the crate.

use std::fmt::Display;

/// Exit codes, as documented in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitCode {
    /// Everything synced or unchanged; the check found nothing.
    Ok = 0,
    /// The cycle ran, but some records failed, are invalid or unresolved;
    /// or `check` found problems.
    Records = 1,
    /// Usage or configuration error: nothing started.
    Config = 2,
    /// The export could not be read: nothing was changed.
    Export = 3,
    /// Too many known records are missing from the export: nothing was
    /// changed until confirmed with `--allow-missing` or a resync.
    Missing = 4,
    /// Another referral-sync process holds the store.
    Locked = 5,
    /// The store or the service failed in a way that stopped the run.
    Runtime = 6,
    /// The cycle was skipped: a file of the export was modified less than
    /// `export.settle_secs` ago. Nothing was read or changed; the next cycle
    /// tries again.
    Skipped = 7,
}

impl ExitCode {
    const ALL: [ExitCode; 8] = [
        ExitCode::Ok,
        ExitCode::Records,
        ExitCode::Config,
        ExitCode::Export,
        ExitCode::Missing,
        ExitCode::Locked,
        ExitCode::Runtime,
        ExitCode::Skipped,
    ];

    /// The number the process exits with.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The code with this number, if the table has one.
    pub fn from_u8(number: u8) -> Option<ExitCode> {
        ExitCode::ALL
            .into_iter()
            .find(|code| code.as_u8() == number)
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code.as_u8())
    }
}

/// Where a failure is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    /// `error: …` on standard error.
    Stderr,
    /// An error line of the log (the daemon, whose standard error is the
    /// journal).
    Log,
}

/// A command that could not do its work: the code it exits with and the
/// error that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    code: ExitCode,
    message: String,
    channel: Channel,
}

impl Failure {
    /// A failure printed as `error: {error}` on standard error.
    pub fn new(code: ExitCode, error: impl Display) -> Failure {
        Failure {
            code,
            message: error.to_string(),
            channel: Channel::Stderr,
        }
    }

    /// A failure reported as an error line of the log.
    pub fn logged(code: ExitCode, error: impl Display) -> Failure {
        Failure {
            channel: Channel::Log,
            ..Failure::new(code, error)
        }
    }

    pub fn code(&self) -> ExitCode {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Say what failed, where this failure is reported.
    pub fn report(&self) {
        match self.channel {
            Channel::Stderr => eprintln!("error: {}", self.message),
            Channel::Log => tracing::error!("{}", self.message),
        }
    }
}

/// `result.or_exit(code)?`: an error becomes a [`Failure`] with `code`.
pub trait OrExit<T> {
    fn or_exit(self, code: ExitCode) -> Result<T, Failure>;
    /// As [`OrExit::or_exit`], reported in the log.
    fn or_log(self, code: ExitCode) -> Result<T, Failure>;
}

impl<T, E: Display> OrExit<T> for Result<T, E> {
    fn or_exit(self, code: ExitCode) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(code, e))
    }

    fn or_log(self, code: ExitCode) -> Result<T, Failure> {
        self.map_err(|e| Failure::logged(code, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_codes_are_the_readme_table() {
        let numbers: Vec<u8> = ExitCode::ALL.iter().map(|c| c.as_u8()).collect();
        assert_eq!(numbers, [0, 1, 2, 3, 4, 5, 6, 7]);
        for code in ExitCode::ALL {
            assert_eq!(ExitCode::from_u8(code.as_u8()), Some(code));
        }
        assert_eq!(ExitCode::from_u8(8), None);
        assert!(ExitCode::Records > ExitCode::Ok);
    }

    #[test]
    fn an_error_becomes_a_failure_with_its_code() {
        let result: Result<(), &str> = Err("store s.db: locked");
        let failure = result.or_exit(ExitCode::Locked).unwrap_err();
        assert_eq!(failure.code(), ExitCode::Locked);
        assert_eq!(failure.message(), "store s.db: locked");
    }
}
