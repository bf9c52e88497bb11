//! The commands, one file each (as mini-redis keeps `cmd/`): each takes the
//! validated settings and returns its exit code or its [`Failure`].
//! `output` is what they write; `sync` and `resync` run their cycle with
//! `manual`'s runner.

pub mod check;
pub mod diff;
pub mod history;
pub mod login;
pub mod manual;
pub mod output;
pub mod resync;
pub mod retry;
pub mod run;
pub mod status;
pub mod sync;

use crate::exit::{ExitCode, Failure};

/// The async runtime of a command.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    crate::service::async_runtime().map_err(|e| {
        Failure::new(
            ExitCode::Runtime,
            format!("cannot start the async runtime: {e}"),
        )
    })
}
