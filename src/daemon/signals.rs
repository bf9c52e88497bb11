//! The signals the daemon answers: SIGHUP asks for a resync
//! (`systemctl reload`, `referral-sync resync`), SIGTERM and SIGINT for a
//! graceful shutdown; and the same two for a manual run.

use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;

use crate::exit::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    Hangup,
    Shutdown(&'static str),
}

pub struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    /// Install the handlers. From here on these signals no longer kill the
    /// process: they are delivered to [`Signals::next`].
    pub fn install() -> io::Result<Signals> {
        Ok(Signals {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    pub async fn next(&mut self) -> SignalEvent {
        tokio::select! {
            Some(()) = self.hangup.recv() => SignalEvent::Hangup,
            Some(()) = self.terminate.recv() => SignalEvent::Shutdown("SIGTERM"),
            Some(()) = self.interrupt.recv() => SignalEvent::Shutdown("SIGINT"),
            // The streams end only with the runtime.
            else => std::future::pending().await,
        }
    }
}

/// Ask the process `pid` for a resync.
pub fn send_hangup(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{pid} is not a pid"))
        })?;
    // SAFETY: kill(2) has no memory-safety preconditions; a positive pid
    // names exactly one process.
    let result = unsafe { libc::kill(pid, libc::SIGHUP) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// For a manual run (`resync`, and `sync` if it wants): the first SIGINT
/// or SIGTERM turns `stop` on, so the cycle starts no new record and those
/// in flight finish; a second one ends the process at once, which leaves the
/// records in flight `pending` for the next cycle to resolve.
pub fn stop_on_signal(stop: watch::Sender<bool>) -> std::io::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        let mut signals_seen = 0;
        loop {
            tokio::select! {
                Some(()) = interrupt.recv() => {}
                Some(()) = terminate.recv() => {}
                else => return,
            }
            signals_seen += 1;
            if signals_seen == 1 {
                eprintln!("stopping: records in flight finish first (signal again to stop now)");
                let _ = stop.send(true);
            } else {
                eprintln!("stopped at once: records in flight stay pending");
                std::process::exit(i32::from(ExitCode::Runtime.as_u8()));
            }
        }
    });
    Ok(())
}
