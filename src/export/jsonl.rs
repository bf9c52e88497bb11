//! JSON Lines: one record object per line, as ad-hoc scripts write them.

use std::io::BufRead;
use std::ops::ControlFlow;
use std::path::Path;

use serde::de::DeserializeSeed;

use super::json::{RecordFields, json_error, keep_exact_numbers, not_an_object};
use super::{ExportError, FileOutcome, FinalLineEnd, RawFingerprint, Sink, input_error};

/// Read one JSON Lines file, handing each record to `sink`. Blank lines are
/// skipped; `\n` and `\r\n` line ends are both accepted. With
/// [`FinalLineEnd::Required`], a last line that holds anything but
/// whitespace and has no line end is an error.
pub(super) fn read_jsonl<R: BufRead>(
    path: &Path,
    mut input: R,
    line_end: FinalLineEnd,
    sink: &mut Sink<'_>,
) -> FileOutcome {
    let mut line = Vec::new();
    let mut line_number = 0;
    loop {
        line.clear();
        let read = input
            .read_until(b'\n', &mut line)
            .map_err(|error| input_error(path, error))?;
        if read == 0 {
            return Ok(ControlFlow::Continue(()));
        }
        line_number += 1;
        let text = without_line_end(&line);
        let Some(start) = text.iter().position(|byte| !byte.is_ascii_whitespace()) else {
            continue;
        };
        if line_end == FinalLineEnd::Required && !line.ends_with(b"\n") {
            return Err(ExportError::Parse {
                path: path.to_path_buf(),
                line: line_number,
                column: text.len() as u64 + 1,
                message: NO_FINAL_LINE_END.to_owned(),
            });
        }
        if text[start] != b'{' {
            return Err(ExportError::Parse {
                path: path.to_path_buf(),
                line: line_number,
                column: start as u64 + 1,
                message: not_an_object(text[start]),
            });
        }

        let mut deserializer = serde_json::Deserializer::from_slice(text);
        let mut fields = RecordFields
            .deserialize(&mut deserializer)
            .and_then(|fields| deserializer.end().map(|()| fields))
            .map_err(|error| json_error(path, error, Some(line_number)))?;
        // TextInput has checked the line to be UTF-8.
        if let Ok(raw) = std::str::from_utf8(text) {
            keep_exact_numbers(raw, &mut fields);
        }
        let fingerprint = RawFingerprint::of_json(text);
        if sink
            .offer_parsed(path, line_number, fingerprint, fields)
            .is_break()
        {
            return Ok(ControlFlow::Break(()));
        }
    }
}

/// The error for a last line without a line end, shared with the CSV reader.
pub(super) const NO_FINAL_LINE_END: &str = "the last line has no line end: the file is cut short or still being written (set export.require_final_newline = false if the exporter writes none)";

fn without_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::text::TextInput;
    use super::super::{ErrorCase, FileOutcome, Record, collect_records, parse_error_at};
    use super::*;

    const FILE: &str = "leads.jsonl";

    fn read(content: &[u8], stop_after: Option<u64>) -> (FileOutcome, Vec<Record>) {
        read_with(content, stop_after, FinalLineEnd::Required)
    }

    fn read_with(
        content: &[u8],
        stop_after: Option<u64>,
        line_end: FinalLineEnd,
    ) -> (FileOutcome, Vec<Record>) {
        collect_records(stop_after, |sink| {
            read_jsonl(Path::new(FILE), TextInput::new(content), line_end, sink)
        })
    }

    #[test]
    fn reads_one_record_per_line() {
        let cases: Vec<(&str, Vec<(u64, Value)>)> = vec![
            ("", vec![]),
            ("\n\n  \n", vec![]),
            // A blank last line needs no line end: it holds no record.
            ("{\"a\": 1}\n  ", vec![(1, json!({"a": 1}))]),
            (
                "{\"a\": 1}\n\n   \n{\"a\": {\"b\": [2]}}\n\n",
                vec![(1, json!({"a": 1})), (4, json!({"a": {"b": [2]}}))],
            ),
            (
                "\u{feff}{\"a\": \"x\\r\\ny\"}\r\n\r\n\t{\"a\": 2}\t\r\n",
                vec![(1, json!({"a": "x\r\ny"})), (3, json!({"a": 2}))],
            ),
        ];
        for (content, expected) in cases {
            let (result, records) = read(content.as_bytes(), None);
            assert_eq!(result.unwrap(), ControlFlow::Continue(()), "{content:?}");
            let actual: Vec<(u64, Value)> = records
                .into_iter()
                .map(|record| (record.location.line, Value::Object(record.fields)))
                .collect();
            assert_eq!(actual, expected, "{content:?}");
        }
    }

    #[test]
    fn a_last_line_without_a_line_end_is_refused_unless_allowed() {
        let cases: [(&[u8], (u64, u64)); 3] = [
            (b"{\"a\": 1}", (1, 9)),
            (b"{\"a\": 1}\r\n{\"a\": 2}\r", (2, 9)),
            (b"{\"a\": 1}\n\n{\"a\": 12", (3, 9)),
        ];
        for (content, (line, column)) in cases {
            let (result, records) = read(content, None);
            assert_eq!(
                parse_error_at(result, Path::new(FILE)),
                Some((line, column, NO_FINAL_LINE_END.to_owned())),
                "{content:?}"
            );
            // The lines before it were complete.
            assert_eq!(records.len() as u64, line.saturating_sub(1).min(1));
        }
        let (result, records) = read_with(b"{\"a\": 1}\n{\"a\": 2}", None, FinalLineEnd::Optional);
        assert_eq!(result.unwrap(), ControlFlow::Continue(()));
        assert_eq!(records.len(), 2);
    }

    #[test]
    fn reports_what_is_wrong_and_where() {
        let cases: &[ErrorCase] = &[
            (
                b"{\"a\": 1}\n{\"a\": 2}\n{\"a\": 3,}\n{\"a\": 4}\n",
                (3, 9, "trailing comma"),
            ),
            (
                b"{\"a\": 1}\r\n\r\n  [1, 2]\r\n",
                (3, 3, "expected a record object, found an array"),
            ),
            (
                b"{\"a\": 1}\n42\n",
                (2, 1, "expected a record object, found a number"),
            ),
            (b"{\"a\": 1} {\"a\": 2}\n", (1, 10, "trailing characters")),
            (
                b"{\"a\": 1}\n{\"a\":\n2}\n",
                (
                    2,
                    5,
                    "EOF while parsing a value (the file is truncated, or still being written)",
                ),
            ),
            (
                b"{\"a\": 1}\n{\"a\": \"tr\n",
                (
                    2,
                    9,
                    "EOF while parsing a string (the file is truncated, or still being written)",
                ),
            ),
            (
                b"{\"a\": 1, \"a\": 2}\n",
                (1, 12, "key `a` occurs twice in one record"),
            ),
            (
                b"{\"a\": 1}\n{\"a\": \"\xFF\"}\n",
                (2, 8, "invalid UTF-8 byte 0xFF"),
            ),
        ];
        let mismatches: Vec<String> = cases
            .iter()
            .filter_map(|&(content, (line, column, message))| {
                let actual = parse_error_at(read(content, None).0, Path::new(FILE));
                let expected = Some((line, column, message.to_string()));
                (actual != expected).then(|| {
                    format!(
                        "{:?}: got {actual:?}, expected {expected:?}",
                        String::from_utf8_lossy(content)
                    )
                })
            })
            .collect();
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }

    #[test]
    fn the_callback_can_stop_the_read() {
        let (result, records) = read(b"{\"a\": 1}\n{\"a\": 2}\nnot json\n", Some(2));
        assert_eq!(result.unwrap(), ControlFlow::Break(()));
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].location.ordinal, 2);
    }
}
