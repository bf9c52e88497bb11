//! `referral-sync history EXTERNAL_ID [--json] [--limit N]`: what happened
//! to one record and why, newest first — each plan with what it was made
//! against, each request and its answer, conflicts and drift with both
//! values, refusals, errors and the eTag the record settled on.

use std::io::Write;

use serde_json::Value;

use crate::config::Settings;
use crate::exit::{ExitCode, Failure, OrExit};
use crate::mapping::normalise_external_id;
use crate::store::{RecordEvent, Store};

#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArgs {
    /// The record's CRM id (the referral's externalReferenceId).
    pub external_id: String,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// At most this many events, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

pub fn history_command(settings: Settings, args: &HistoryArgs) -> Result<ExitCode, Failure> {
    let Some(store) = Store::open_read_only(&settings.store_path).or_exit(ExitCode::Runtime)?
    else {
        return Err(Failure::new(
            ExitCode::Runtime,
            format!(
                "no store at {} yet: no record has a history",
                settings.store_path.display()
            ),
        ));
    };
    let external_id = normalise_external_id(&args.external_id);
    let events = store
        .record_events(&external_id, args.limit)
        .or_exit(ExitCode::Runtime)?;
    if events.is_empty() {
        return Err(Failure::new(
            ExitCode::Records,
            format!(
                "no history for record {} (not synced yet, unknown, or older than store.history_days)",
                escape_for_terminal(&external_id)
            ),
        ));
    }
    let mut out = std::io::stdout().lock();
    for event in &events {
        let written = if args.json {
            let line = serde_json::json!({
                "at": event.at, "cycleId": event.cycle_id, "kind": event.kind, "detail": event.detail,
            });
            writeln!(out, "{line}")
        } else {
            write_event(&mut out, event)
        };
        if written.is_err() {
            // A closed pipe (`| head`) ends the listing quietly.
            return Ok(ExitCode::Ok);
        }
    }
    Ok(ExitCode::Ok)
}

/// One event as a person reads it: time, kind, then what matters of it.
fn write_event(out: &mut dyn Write, event: &RecordEvent) -> std::io::Result<()> {
    let d = &event.detail;
    let text = |key: &str| d.get(key).map(show).unwrap_or_default();
    let cycle = event.cycle_id.as_deref().unwrap_or("-");
    writeln!(out, "{}  {:<22} cycle {cycle}", event.at, event.kind)?;
    match event.kind.as_str() {
        "planned" | "replanned" => {
            writeln!(
                out,
                "    against {} (eTag {}) of referral {}{}",
                text("against"),
                text("eTag"),
                text("referralId"),
                if d["adopting"] == Value::Bool(true) {
                    ", adopting"
                } else {
                    ""
                }
            )?;
            for op in d["ops"].as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "    {} {} {}",
                    show(&op["op"]),
                    show(&op["path"]),
                    op["value"]
                )?;
            }
            for c in d["conflicts"].as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "    conflict {}: base {}, Partner Center {}, CRM {} → {}",
                    show(&c["path"]),
                    c["snapshot"],
                    c["live"],
                    c["desired"],
                    show(&c["resolution"])
                )?;
            }
            for drift in d["drift"].as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "    drift {} {}: Partner Center {}, CRM {}",
                    show(&drift["action"]),
                    show(&drift["path"]),
                    drift["partnerCenter"],
                    drift["crm"]
                )?;
            }
            for r in d["refused"].as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "    refused {}: {}",
                    show(&r["path"]),
                    show(&r["reason"])
                )?;
            }
            for element in d["leftInPlace"].as_array().into_iter().flatten() {
                writeln!(out, "    left in Partner Center: {}", show(element))?;
            }
        }
        "sent" => {
            let ops = d["ops"].as_array().map_or(0, Vec::len);
            writeln!(
                out,
                "    {} {} (If-Match {}, {ops} ops) → {}",
                text("method"),
                text("referralId"),
                text("ifMatch"),
                d["answer"]
            )?;
        }
        "settled" => writeln!(
            out,
            "    {} at eTag {} of referral {}{}",
            text("state"),
            text("eTag"),
            text("referralId"),
            match d.get("error").map(show) {
                Some(error) if error != "-" => format!(": {error}"),
                _ => String::new(),
            }
        )?,
        "adopted" => writeln!(
            out,
            "    referral {} (eTag {}): {}",
            text("referralId"),
            text("eTag"),
            text("how")
        )?,
        "failed" => writeln!(
            out,
            "    HTTP {} {}: {}",
            text("status"),
            text("code"),
            text("error")
        )?,
        "intent settled" => writeln!(
            out,
            "    the write started {} (If-Match {}) {} (live eTag {})",
            text("startedAt"),
            text("ifMatch"),
            if d["applied"] == Value::Bool(true) {
                "had been applied"
            } else {
                "had not been applied"
            },
            text("liveETag")
        )?,
        "held" => writeln!(out, "    {}", text("reason"))?,
        _ => writeln!(out, "    {}", show(d))?,
    }
    Ok(())
}

/// A JSON value for a person: strings without quotes, control characters
/// escaped (no value can start a line of its own or steer the terminal);
/// `null` as `-`.
fn show(value: &Value) -> String {
    match value {
        Value::String(s) => escape_for_terminal(s),
        Value::Null => "-".to_owned(),
        other => escape_for_terminal(&other.to_string()),
    }
}

fn escape_for_terminal(text: &str) -> String {
    super::output::printable(text).into_owned()
}
