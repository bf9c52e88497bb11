//! JSON Lines: one record object per line, as ad-hoc scripts write them.
//!
//! Read as OData pages are (see `odata.rs`): in blocks, a line at a time
//! found with `memchr`, each record offered to the prefilter by its id and
//! the fingerprint of its line and parsed from the line's text only when it
//! is not known (here, or by whoever a sink that takes records unparsed
//! hands the line to, which names a problem as the exact reader does).
//! Anything else amiss sends the file to [`stream_jsonl`], the exact
//! reader, which names the problem.

use std::io::{BufRead, Read, Seek};
use std::ops::ControlFlow;
use std::path::Path;

use serde::de::DeserializeSeed;

use super::blocks::{Blocks, Detour, Short, read_with_fallback};
use super::json::{RecordFields, json_error, keep_exact_numbers, not_an_object};
use super::structure::{Members, Step, is_whitespace};
use super::{
    ExportError, FileOutcome, FinalLineEnd, Offer, RawFingerprint, Sink, TextShape, input_error,
};

/// Read one JSON Lines file, handing each record to `sink`. Blank lines are
/// skipped; `\n` and `\r\n` line ends are both accepted. With
/// [`FinalLineEnd::Required`], a last line that holds anything but
/// whitespace and has no line end is an error.
pub(super) fn read_jsonl<R: Read + Seek>(
    path: &Path,
    input: R,
    line_end: FinalLineEnd,
    sink: &mut Sink<'_>,
) -> FileOutcome {
    read_with_fallback(
        path,
        input,
        sink,
        |blocks, sink| {
            let mut pass = LinePass {
                path,
                id_column: sink.id_column(),
                blocks,
                sink,
                line_end,
                members: Members::default(),
                offered: 0,
            };
            (pass.run(), pass.offered)
        },
        |text, sink| stream_jsonl(path, text, line_end, sink),
    )
}

struct LinePass<'p, 'b, 's, R> {
    path: &'p Path,
    blocks: &'b mut Blocks<R>,
    sink: &'p mut Sink<'s>,
    line_end: FinalLineEnd,
    members: Members,
    id_column: Option<String>,
    offered: u64,
}

impl<R: Read> LinePass<'_, '_, '_, R> {
    fn run(&mut self) -> Result<ControlFlow<()>, Detour> {
        let mut line_number = 0;
        loop {
            let Some((len, terminated)) = self.next_line()? else {
                return Ok(ControlFlow::Continue(()));
            };
            line_number += 1;
            let consumed = len + usize::from(terminated);
            let line = &self.blocks.data()[..len];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(start) = line.iter().position(|&byte| !is_whitespace(byte)) else {
                self.blocks.consume(consumed);
                continue;
            };
            if !terminated && self.line_end == FinalLineEnd::Required || line[start] != b'{' {
                return Err(Detour::Exact);
            }
            let text_len = line.len();
            let flow = self.record(line_number, start, text_len)?;
            self.blocks.consume(consumed);
            if flow.is_break() {
                return Ok(flow);
            }
        }
    }

    /// The length of the next line, without its `\n`, and whether it has
    /// one; `None` at the end of the file.
    fn next_line(&mut self) -> Result<Option<(usize, bool)>, Detour> {
        loop {
            if let Some(at) = memchr::memchr(b'\n', self.blocks.data()) {
                return Ok(Some((at, true)));
            }
            match self.blocks.fill()? {
                Ok(()) => {}
                Err(Short::End) if self.blocks.data().is_empty() => return Ok(None),
                Err(Short::End) => return Ok(Some((self.blocks.data().len(), false))),
                Err(_) => return Err(Detour::Exact),
            }
        }
    }

    /// The record on the line `data()[..len]`, whose `{` is at `start`.
    fn record(
        &mut self,
        line_number: u64,
        start: usize,
        len: usize,
    ) -> Result<ControlFlow<()>, Detour> {
        let Some(text) = self.blocks.text().and_then(|text| text.get(..len)) else {
            return Err(Detour::Exact);
        };
        let fingerprint = RawFingerprint::of_json(text.as_bytes());
        if let Some(column) = self.id_column.as_deref() {
            // The line must hold the whole record for its members to be
            // found; a record spread over lines is the exact reader's.
            if !matches!(self.members.scan(text.as_bytes(), start), Step::Done(_)) {
                return Err(Detour::Exact);
            }
            let raw = self.members.of(text.as_bytes());
            let id = raw.string(column);
            let offer = self
                .sink
                .offer(self.path, line_number, fingerprint, id.as_deref(), &raw);
            if offer == Offer::Known {
                self.offered += 1;
                return Ok(ControlFlow::Continue(()));
            }
            // The line as the exact reader parses it: the whole of it.
            let flow = self.sink.emit_text(
                self.path,
                (line_number, 1),
                fingerprint,
                text.as_bytes(),
                TextShape::Line,
                &raw,
            )?;
            self.offered += 1;
            return Ok(flow);
        }
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let Ok(mut fields) = RecordFields
            .deserialize(&mut deserializer)
            .and_then(|fields| deserializer.end().map(|()| fields))
        else {
            return Err(Detour::Exact);
        };
        keep_exact_numbers(text, &mut fields);
        self.offered += 1;
        Ok(self.sink.emit(self.path, line_number, fingerprint, fields))
    }
}

/// The exact reader: read one JSON Lines file a line at a time from a
/// reader, and name any problem at its line and column.
pub(super) fn stream_jsonl<R: BufRead>(
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

    /// Read `content` both ways; they must agree on every record and on the
    /// outcome.
    fn read_with(
        content: &[u8],
        stop_after: Option<u64>,
        line_end: FinalLineEnd,
    ) -> (FileOutcome, Vec<Record>) {
        let streamed = collect_records(stop_after, |sink| {
            stream_jsonl(Path::new(FILE), TextInput::new(content), line_end, sink)
        });
        let in_blocks = collect_records(stop_after, |sink| {
            read_jsonl(
                Path::new(FILE),
                std::io::Cursor::new(content),
                line_end,
                sink,
            )
        });
        // As the scan reads: every record handed over unparsed (the
        // prefilter knows none), parsed by the taker.
        let offered = super::super::collect_offered(Default::default(), stop_after, |sink| {
            read_jsonl(
                Path::new(FILE),
                std::io::Cursor::new(content),
                line_end,
                sink,
            )
        });
        let shown = String::from_utf8_lossy(content);
        assert_eq!(in_blocks.1, streamed.1, "records of {shown:?}");
        assert_eq!(
            format!("{:?}", in_blocks.0),
            format!("{:?}", streamed.0),
            "outcome of {shown:?}"
        );
        assert_eq!(offered.1, streamed.1, "records offered of {shown:?}");
        assert_eq!(
            format!("{:?}", offered.0),
            format!("{:?}", streamed.0),
            "outcome offered of {shown:?}"
        );
        in_blocks
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

    mod equivalence {
        use std::collections::HashSet;

        use proptest::prelude::*;

        use super::super::super::{collect_offered, collect_prefiltered};
        use super::*;

        /// A record with an id among a few (so that some repeat) and a few
        /// other members, nested or not.
        fn record() -> impl Strategy<Value = Value> {
            ("[A-F0-9-]{1,4}", super::super::super::strategies::members()).prop_map(
                |(id, mut fields)| {
                    fields.insert("id".into(), Value::from(id));
                    Value::Object(fields)
                },
            )
        }

        /// Lines of records, some indented, some blank, `\n` or `\r\n`.
        fn file() -> impl Strategy<Value = String> {
            proptest::collection::vec(
                (record(), any::<bool>(), any::<bool>(), any::<bool>()),
                0..6,
            )
            .prop_map(|lines| {
                lines
                    .iter()
                    .map(|(record, indent, crlf, blank_after)| {
                        format!(
                            "{}{}{}{}",
                            if *indent { "  " } else { "" },
                            serde_json::to_string(record).unwrap_or_default(),
                            if *crlf { "\r\n" } else { "\n" },
                            if *blank_after { " \n" } else { "" },
                        )
                    })
                    .collect()
            })
        }

        proptest! {
            #[test]
            fn with_a_prefilter_the_three_ways_agree(file in file(), cut in any::<prop::sample::Index>(), byte in any::<u8>(), damage in any::<bool>()) {
                // The exact reader, the line pass parsing what the
                // prefilter does not know, and the line pass handing it
                // over unparsed to a taker that parses it: the same records
                // known and handed over, the same columns and outcome —
                // damaged or not.
                let mut bytes = file.into_bytes();
                let exact = |bytes: &[u8], sink: &mut Sink<'_>| {
                    stream_jsonl(Path::new(FILE), TextInput::new(bytes), FinalLineEnd::Required, sink)
                };
                let (_, before) = collect_records(None, |sink| exact(&bytes, sink));
                let valid: HashSet<RawFingerprint> =
                    before.iter().map(|record| record.fingerprint).collect();
                if damage && !bytes.is_empty() {
                    let at = cut.index(bytes.len());
                    bytes[at] = byte;
                }
                let in_lines = |sink: &mut Sink<'_>| {
                    read_jsonl(Path::new(FILE), std::io::Cursor::new(&bytes[..]), FinalLineEnd::Required, sink)
                };
                let streamed = collect_prefiltered(Some(valid.clone()), |sink| exact(&bytes, sink));
                let in_blocks = collect_prefiltered(Some(valid.clone()), in_lines);
                let offered = collect_offered(valid, None, in_lines);
                for read in [&in_blocks, &offered] {
                    prop_assert_eq!(&read.1, &streamed.1);
                    prop_assert_eq!(&read.2, &streamed.2);
                    prop_assert_eq!(format!("{:?}", read.0), format!("{:?}", streamed.0));
                    if read.0.is_ok() {
                        prop_assert_eq!(&read.3, &streamed.3);
                    }
                }
            }
        }
    }
}
