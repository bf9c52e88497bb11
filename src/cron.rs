//! `schedule.cron`: six fields, seconds first, parsed as
//! tokio-cron-scheduler parses them — below `config`, which parses the
//! expression with it once, into the schedule the daemon runs.

use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// An expression the scheduler would not run.
#[derive(Debug, thiserror::Error)]
#[error("schedule.cron {cron:?}: {message}")]
pub struct CronError {
    pub cron: String,
    /// The parser's own words.
    pub message: String,
}

/// Parse with the settings tokio-cron-scheduler uses, so that what passes
/// the configuration runs, and what the daemon logs as the next tick is
/// what the scheduler will do.
pub fn parse_cron(expression: &str) -> Result<Cron, CronError> {
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expression)
        .map_err(|e| CronError {
            cron: expression.to_owned(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_field_expressions_are_refused_with_the_expression() {
        let err = parse_cron("*/5 * * * *").unwrap_err().to_string();
        assert!(err.starts_with("schedule.cron \"*/5 * * * *\": "), "{err}");
    }
}
