//! The signals the daemon answers: SIGHUP asks for a resync
//! (`systemctl reload`, `referral-sync resync`), SIGTERM and SIGINT for a
//! graceful shutdown.

use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};

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
