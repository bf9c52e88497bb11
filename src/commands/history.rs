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
    let cycle = event.cycle_id.as_deref().unwrap_or("-");
    writeln!(out, "{}  {:<22} cycle {cycle}", event.at, event.kind)?;
    match event.kind.as_str() {
        "planned" | "replanned" => write_plan(out, d),
        "sent" => write_sent(out, d),
        "settled" => write_settled(out, d),
        "adopted" => writeln!(
            out,
            "    referral {} (eTag {}): {}",
            text(d, "referralId"),
            text(d, "eTag"),
            text(d, "how")
        ),
        "failed" => writeln!(
            out,
            "    HTTP {} {}: {}",
            text(d, "status"),
            text(d, "code"),
            text(d, "error")
        ),
        "intent settled" => write_intent_settled(out, d),
        "held" => writeln!(out, "    {}", text(d, "reason")),
        _ => writeln!(out, "    {}", show(d)),
    }
}

/// A plan: what it was made against, then each op, conflict, drift,
/// refusal and element left in place, one line each.
fn write_plan(out: &mut dyn Write, d: &Value) -> std::io::Result<()> {
    let adopting = if d["adopting"] == Value::Bool(true) {
        ", adopting"
    } else {
        ""
    };
    writeln!(
        out,
        "    against {} (eTag {}) of referral {}{adopting}",
        text(d, "against"),
        text(d, "eTag"),
        text(d, "referralId"),
    )?;
    for op in items(d, "ops") {
        writeln!(
            out,
            "    {} {} {}",
            show(&op["op"]),
            show(&op["path"]),
            op["value"]
        )?;
    }
    for c in items(d, "conflicts") {
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
    for drift in items(d, "drift") {
        writeln!(
            out,
            "    drift {} {}: Partner Center {}, CRM {}",
            show(&drift["action"]),
            show(&drift["path"]),
            drift["partnerCenter"],
            drift["crm"]
        )?;
    }
    for r in items(d, "refused") {
        writeln!(
            out,
            "    refused {}: {}",
            show(&r["path"]),
            show(&r["reason"])
        )?;
    }
    for element in items(d, "leftInPlace") {
        writeln!(out, "    left in Partner Center: {}", show(element))?;
    }
    Ok(())
}

fn write_sent(out: &mut dyn Write, d: &Value) -> std::io::Result<()> {
    let ops = d["ops"].as_array().map_or(0, Vec::len);
    writeln!(
        out,
        "    {} {} (If-Match {}, {ops} ops) → {}",
        text(d, "method"),
        text(d, "referralId"),
        text(d, "ifMatch"),
        d["answer"]
    )
}

fn write_settled(out: &mut dyn Write, d: &Value) -> std::io::Result<()> {
    let error = match d.get("error").map(show) {
        Some(error) if error != "-" => format!(": {error}"),
        _ => String::new(),
    };
    writeln!(
        out,
        "    {} at eTag {} of referral {}{error}",
        text(d, "state"),
        text(d, "eTag"),
        text(d, "referralId"),
    )
}

fn write_intent_settled(out: &mut dyn Write, d: &Value) -> std::io::Result<()> {
    let outcome = if d["applied"] == Value::Bool(true) {
        "had been applied"
    } else {
        "had not been applied"
    };
    writeln!(
        out,
        "    the write started {} (If-Match {}) {outcome} (live eTag {})",
        text(d, "startedAt"),
        text(d, "ifMatch"),
        text(d, "liveETag")
    )
}

/// A field of the detail as shown; a missing one shows as nothing.
fn text(detail: &Value, key: &str) -> String {
    detail.get(key).map(show).unwrap_or_default()
}

/// The elements of an array field; a missing or non-array field has none.
fn items<'a>(detail: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    detail[key].as_array().into_iter().flatten()
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
