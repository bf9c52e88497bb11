//! Log output: one line per event, as text for people or JSON for
//! journald/Loki/ELK. `RUST_LOG` takes precedence over `log.level`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::LogFormat;

/// Dependencies that log routine internals at info.
const QUIET_DEPENDENCIES: &str = "tokio_cron_scheduler=warn";

/// Install the global subscriber (once; later calls do nothing). Logs go to
/// standard error so that standard output carries only command results.
pub fn init(format: LogFormat, level: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => {
            EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new(level))
        }
        // The scheduler's own start-up chatter is not the operator's concern.
        _ => EnvFilter::try_new(format!("{level},{QUIET_DEPENDENCIES}"))
            .or_else(|_| EnvFilter::try_new(level))
            .unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::progress::LogWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_span_events(FmtSpan::NONE)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}
