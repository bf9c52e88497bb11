//! Messages to the service manager (`sd_notify`): READY=1, STATUS=,
//! RELOADING=1, STOPPING=1 and the watchdog. Without `NOTIFY_SOCKET` (not
//! started by systemd, or `Type=` other than notify) every call does
//! nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{debug, warn};

pub struct Notifier {
    enabled: bool,
    /// A broken socket is reported once, not at every message.
    warned: AtomicBool,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty()),
            warned: AtomicBool::new(false),
        }
    }

    /// Start-up is over: the store is open and the configuration valid.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// A resync began; [`Notifier::ready`] ends it. systemd 253 and later
    /// require the monotonic timestamp with RELOADING=1.
    pub fn reloading(&self, status: &str) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now, NotifyState::Status(status)]),
            Err(e) => {
                debug!(error = %e, "cannot read the monotonic clock; RELOADING=1 not sent");
                self.status(status);
            }
        }
    }

    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states)
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
        }
    }
}

/// How often to ping the watchdog: half of `WatchdogSec=`, as
/// sd_watchdog_enabled(3) advises; `None` when no watchdog is set for us.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|timeout| !timeout.is_zero())
        .map(|timeout| timeout / 2)
}
