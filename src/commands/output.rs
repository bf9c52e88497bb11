//! What the commands write: the `outln!` line, and a cycle's records as
//! they are decided ([`RecordPrinter`]), as text for people or as JSON lines,
//! escaped so that nothing from the export drives the terminal.

use std::io::Write;
use std::sync::Mutex;

use clap::ValueEnum;
use serde_json::json;

use crate::cycle::{Action, RecordOutcome};

/// Print a line of command output. Output cut short by a closed pipe
/// (`referral-sync check | head`) just ends: the command goes on and exits
/// with its own code, instead of `println!`'s panic. (SIGPIPE stays
/// ignored: the HTTP client must see a closed socket as an error.)
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// One record, as a person reads it or as one JSON line.
pub fn write_outcome(
    out: &mut dyn Write,
    outcome: &RecordOutcome,
    output: Output,
) -> std::io::Result<()> {
    match output {
        Output::Json => {
            let line = serde_json::to_string(outcome).unwrap_or_else(|e| {
                json!({"error": format!("cannot serialise the outcome: {e}")}).to_string()
            });
            writeln!(out, "{line}")
        }
        Output::Text => {
            for line in outcome_lines(outcome) {
                writeln!(out, "{}", printable(&line))?;
            }
            Ok(())
        }
    }
}

/// How many records' ops and documents the text output of `sync` and
/// `resync` prints without `--verbose`.
pub const TEXT_RECORD_LIMIT: u64 = 20;

/// Prints the records of a cycle as they are decided. JSON output lists
/// every record. Text output prints every record with an error (invalid,
/// failed, unresolved, or an op refused) in full, and of the others only
/// the first [`TEXT_RECORD_LIMIT`] unless `verbose`; [`RecordPrinter::finish`]
/// then says how many were left out. A first cycle of a million records
/// would otherwise print every created document.
pub struct RecordPrinter<W: Write> {
    output: Output,
    limit: Option<u64>,
    state: Mutex<Printed<W>>,
}

struct Printed<W> {
    out: W,
    shown: u64,
    left_out: u64,
}

impl<W: Write> RecordPrinter<W> {
    pub fn new(out: W, output: Output, verbose: bool) -> Self {
        RecordPrinter {
            output,
            limit: (!verbose).then_some(TEXT_RECORD_LIMIT),
            state: Mutex::new(Printed {
                out,
                shown: 0,
                left_out: 0,
            }),
        }
    }

    /// Print one record, or count it as left out.
    pub fn print(&self, outcome: &RecordOutcome) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let limited = self.output == Output::Text && !needs_attention(outcome);
        if limited {
            if self.limit.is_some_and(|limit| state.shown >= limit) {
                state.left_out += 1;
                return;
            }
            state.shown += 1;
        }
        let _ = write_outcome(&mut state.out, outcome, self.output);
    }

    /// How many records the text output left out so far.
    pub fn left_out(&self) -> u64 {
        self.state.lock().map(|s| s.left_out).unwrap_or(0)
    }

    /// Say how many records were left out, if any; then flush.
    pub fn finish(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.left_out > 0 {
            let line = left_out_line(state.left_out);
            let _ = writeln!(state.out, "{line}");
        }
        let _ = state.out.flush();
    }

    /// The writer, once the cycle is over.
    pub fn into_inner(self) -> Option<W> {
        self.state.into_inner().ok().map(|s| s.out)
    }
}

/// The line that ends a text output cut short.
pub fn left_out_line(left_out: u64) -> String {
    let records = if left_out == 1 { "record" } else { "records" };
    format!("\u{2026} and {left_out} more {records} (use --verbose to list every one)")
}

/// A record whose text output is never left out: an operator must see
/// every error.
fn needs_attention(outcome: &RecordOutcome) -> bool {
    matches!(
        outcome.action,
        Action::Invalid | Action::Failed | Action::Unresolved
    ) || !outcome.errors.is_empty()
}

/// The lines of one record's text output, before escaping.
fn outcome_lines(outcome: &RecordOutcome) -> Vec<String> {
    let id = outcome.external_id.as_deref().unwrap_or("(no id)");
    let mut first = format!("{:<10} {id}", outcome.action.as_str());
    if let Some(referral) = &outcome.referral_id {
        first.push_str(&format!("  referral {referral}"));
    }
    let mut lines = vec![first];
    lines.extend(outcome.patch.iter().map(|op| format!("    {op}")));
    if let (Action::Create, Some(document)) = (outcome.action, &outcome.document) {
        lines.push(format!("    POST {document}"));
    }
    let or_nothing = |value: &Option<serde_json::Value>| {
        value
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "nothing".into())
    };
    for c in &outcome.conflicts {
        lines.push(format!(
            "    conflict {}: Partner Center has {}, the CRM wants {} ({:?})",
            c.path,
            or_nothing(&c.live),
            or_nothing(&c.desired),
            c.resolution
        ));
    }
    for d in &outcome.drift {
        lines.push(format!(
            "    drift {} {}: Partner Center has {}, the CRM has {}",
            d.action.as_str(),
            d.path,
            or_nothing(&d.partner_center),
            or_nothing(&d.crm),
        ));
    }
    lines.extend(
        outcome
            .errors
            .iter()
            .map(|error| format!("    error: {error}")),
    );
    if let Some(note) = &outcome.note {
        lines.push(format!("    note: {note}"));
    }
    lines
}

/// `text` with every control character (and every bidirectional override,
/// which reorders what a terminal shows) written as an escape, so that a
/// value from the export or the service cannot start a line of its own,
/// move the cursor or recolour the terminal.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let hostile =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(hostile) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if hostile(c) => escaped.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => escaped.push(c),
        }
    }
    std::borrow::Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_output_escapes_what_could_forge_a_line_or_drive_the_terminal() {
        let cases = [
            ("plain id", "plain id"),
            ("two\nlines", "two\\nlines"),
            ("\u{1b}[31mred", "\\u{1b}[31mred"),
            ("nul\0", "nul\\u{0}"),
            ("tab\there\r", "tab\\there\\r"),
            ("rtl\u{202e}txt", "rtl\\u{202e}txt"),
            ("São Paulo €", "São Paulo €"),
        ];
        for (text, expected) in cases {
            assert_eq!(printable(text), expected, "{text:?}");
        }
        let mut outcome =
            RecordOutcome::new(Some("L-1\nupdate    L-2".to_owned()), Action::Invalid);
        outcome.errors.push("bad\u{1b}]0;title\u{7}".to_owned());
        let mut out = Vec::new();
        write_outcome(&mut out, &outcome, Output::Text).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "invalid    L-1\\nupdate    L-2\n    error: bad\\u{1b}]0;title\\u{7}\n"
        );
    }

    fn created(n: u64) -> RecordOutcome {
        let mut outcome = RecordOutcome::new(Some(format!("L-{n}")), Action::Create);
        outcome.document = Some(json!({"name": format!("Deal {n}")}));
        outcome
    }

    fn failed(n: u64) -> RecordOutcome {
        let mut outcome = RecordOutcome::new(Some(format!("F-{n}")), Action::Failed);
        outcome.errors.push(format!("HTTP 500 for F-{n}"));
        outcome
    }

    /// What a printer wrote for `outcomes`, and how many it left out.
    fn printed(outcomes: &[RecordOutcome], output: Output, verbose: bool) -> (String, u64) {
        let printer = RecordPrinter::new(Vec::new(), output, verbose);
        for outcome in outcomes {
            printer.print(outcome);
        }
        printer.finish();
        let left_out = printer.left_out();
        let out = printer.into_inner().unwrap();
        (String::from_utf8(out).unwrap(), left_out)
    }

    #[test]
    fn the_text_output_lists_the_first_records_then_how_many_more() {
        let total = TEXT_RECORD_LIMIT + 7;
        let outcomes: Vec<RecordOutcome> = (1..=total).map(created).collect();
        let (text, left_out) = printed(&outcomes, Output::Text, false);
        assert_eq!(left_out, 7);
        let mut expected = String::new();
        for n in 1..=TEXT_RECORD_LIMIT {
            expected.push_str(&format!(
                "create     L-{n}\n    POST {{\"name\":\"Deal {n}\"}}\n"
            ));
        }
        expected.push_str("\u{2026} and 7 more records (use --verbose to list every one)\n");
        assert_eq!(text, expected);

        let (verbose, left_out) = printed(&outcomes, Output::Text, true);
        assert_eq!(left_out, 0);
        assert_eq!(verbose.lines().count() as u64, 2 * total);
        assert!(verbose.contains(&format!("create     L-{total}\n")));
        assert!(!verbose.contains("more record"), "{verbose}");
    }

    #[test]
    fn the_text_output_never_leaves_out_a_record_with_an_error() {
        // Errors before, among and after the routine records.
        let mut outcomes: Vec<RecordOutcome> = (1..=3).map(failed).collect();
        outcomes.extend((1..=TEXT_RECORD_LIMIT + 1).map(created));
        outcomes.push(RecordOutcome::new(Some("U-1".into()), Action::Unresolved));
        let mut refused = RecordOutcome::new(Some("R-1".into()), Action::Update);
        refused.errors.push("/status not sent: Closed".into());
        outcomes.push(refused);
        outcomes.extend((4..=30).map(failed));
        let (text, left_out) = printed(&outcomes, Output::Text, false);
        assert_eq!(left_out, 1);
        for n in 1..=30 {
            assert!(
                text.contains(&format!(
                    "failed     F-{n}\n    error: HTTP 500 for F-{n}\n"
                )),
                "F-{n}: {text}"
            );
        }
        assert!(text.contains("unresolved U-1\n"), "{text}");
        assert!(
            text.contains("update     R-1\n    error: /status not sent"),
            "{text}"
        );
        let shown = text.lines().filter(|l| l.starts_with("create ")).count() as u64;
        assert_eq!(shown, TEXT_RECORD_LIMIT);
        assert!(!text.contains(&format!("L-{}\n", TEXT_RECORD_LIMIT + 1)));
        assert!(
            text.ends_with("\u{2026} and 1 more record (use --verbose to list every one)\n"),
            "{text}"
        );
    }

    #[test]
    fn json_output_lists_every_record() {
        let total = 3 * TEXT_RECORD_LIMIT;
        let outcomes: Vec<RecordOutcome> = (1..=total).map(created).collect();
        let (text, left_out) = printed(&outcomes, Output::Json, false);
        assert_eq!(left_out, 0);
        let ids: Vec<String> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["externalReferenceId"].as_str().unwrap().to_owned()
            })
            .collect();
        let expected: Vec<String> = (1..=total).map(|n| format!("L-{n}")).collect();
        assert_eq!(ids, expected);
    }
}
