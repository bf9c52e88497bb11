//! Web API (OData v4) pages: `{"@odata.context": …, "value": [ {record}, … ],
//! "@odata.nextLink": …}`, or a bare array of records.
//!
//! Every page, whatever its size, is read by [`read_odata`] in large blocks
//! into a window that slides over the file ([`Blocks`]): the envelope is
//! walked with a structural scan ([`super::structure`]), each record's byte
//! range found by the same scan together with its top-level members, and
//! the record is then either known to the prefilter by its id and the
//! fingerprint of its bytes (and not parsed at all) or parsed by serde_json
//! from its own slice, which is several times faster than serde_json pulling
//! one byte at a time from a reader — here, or, for a sink that takes
//! records unparsed, by whoever it hands the slice to, which then places
//! an error as the exact reader would. Its line and column are counted
//! from its offset. Memory is bounded by the largest record, not by the
//! page.
//!
//! Anything that is not a well-formed page — a syntax error the block pass
//! meets, a record that is not an object, bytes that are not UTF-8, a
//! record longer than the largest window — sends the file to
//! [`stream_odata`], the exact reader:
//! serde visitors over serde_json's streaming deserializer, which names the
//! problem at its line and column. It skips the records the block pass
//! handed over already, so none is handed over twice, and with the same
//! prefilter hands over the same records the block pass would have.

use std::fmt;
use std::io::{Read, Seek};
use std::ops::ControlFlow;
use std::path::Path;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::blocks::{Blocks, Detour, Short, read_with_fallback};
use super::json::{ParsedFields, RecordFields, json_error, keep_exact_numbers, not_an_object};
use super::structure::{Members, Step, skip_whitespace, string_end, value_end};
use super::text::{ProgressReader, ReadProgress};
use super::{ExportError, FileOutcome, Offer, RawFingerprint, Sink, TextShape};

/// Read one page file, handing each record to `sink`.
pub(super) fn read_odata<R: Read + Seek>(
    path: &Path,
    input: R,
    sink: &mut Sink<'_>,
) -> FileOutcome {
    read_with_fallback(
        path,
        input,
        sink,
        |blocks, sink| {
            let mut pass = BlockPass {
                path,
                id_column: sink.id_column(),
                blocks,
                sink,
                members: Members::default(),
                offered: 0,
            };
            (pass.run(), pass.offered)
        },
        |text, sink| stream_odata(path, text, sink),
    )
}

struct BlockPass<'p, 'b, 's, R> {
    path: &'p Path,
    blocks: &'b mut Blocks<R>,
    sink: &'p mut Sink<'s>,
    members: Members,
    id_column: Option<String>,
    /// Records offered to the sink so far (handed over or known).
    offered: u64,
}

impl<R: Read> BlockPass<'_, '_, '_, R> {
    fn run(&mut self) -> Result<ControlFlow<()>, Detour> {
        let first = self.next_token()?;
        let flow = match self.blocks.data()[first] {
            b'[' => {
                self.blocks.consume(first + 1);
                self.records()?
            }
            b'{' => {
                self.blocks.consume(first + 1);
                self.envelope()?
            }
            _ => return Err(Detour::Exact),
        };
        if flow.is_break() {
            return Ok(flow);
        }
        // Only whitespace may follow.
        loop {
            if skip_whitespace(self.blocks.data(), 0).is_some() {
                return Err(Detour::Exact);
            }
            let consumed = self.blocks.data().len();
            self.blocks.consume(consumed);
            match self.blocks.fill()? {
                Ok(()) => {}
                Err(Short::End) => return Ok(ControlFlow::Continue(())),
                Err(_) => return Err(Detour::Exact),
            }
        }
    }

    /// The members of the page object, whose `{` is consumed.
    fn envelope(&mut self) -> Result<ControlFlow<()>, Detour> {
        let mut value_seen = false;
        let mut first_member = true;
        loop {
            let at = self.next_token()?;
            match self.blocks.data()[at] {
                b'}' if first_member => {
                    // An object without members has no `value` array.
                    return Err(Detour::Exact);
                }
                b'"' => {}
                _ => return Err(Detour::Exact),
            }
            first_member = false;
            let key_end = self.step(|data| string_end(data, at))?;
            let is_value = {
                let key = &self.blocks.data()[at..key_end];
                match serde_json::from_slice::<std::borrow::Cow<'_, str>>(key) {
                    Ok(key) => key == "value",
                    Err(_) => return Err(Detour::Exact),
                }
            };
            self.blocks.consume(key_end);
            let colon = self.next_token()?;
            if self.blocks.data()[colon] != b':' {
                return Err(Detour::Exact);
            }
            self.blocks.consume(colon + 1);
            let value_start = self.next_token()?;
            if is_value {
                if value_seen || self.blocks.data()[value_start] != b'[' {
                    return Err(Detour::Exact);
                }
                value_seen = true;
                self.blocks.consume(value_start + 1);
                if self.records()?.is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            } else {
                let end = self.step(|data| value_end(data, value_start))?;
                let value = &self.blocks.data()[value_start..end];
                if serde_json::from_slice::<IgnoredAny>(value).is_err() {
                    return Err(Detour::Exact);
                }
                self.blocks.consume(end);
            }
            let next = self.next_token()?;
            match self.blocks.data()[next] {
                b',' => self.blocks.consume(next + 1),
                b'}' if value_seen => {
                    self.blocks.consume(next + 1);
                    return Ok(ControlFlow::Continue(()));
                }
                _ => return Err(Detour::Exact),
            }
        }
    }

    /// The elements of the records array, whose `[` is consumed, up to and
    /// including its `]`.
    fn records(&mut self) -> Result<ControlFlow<()>, Detour> {
        let at = self.next_token()?;
        if self.blocks.data()[at] == b']' {
            self.blocks.consume(at + 1);
            return Ok(ControlFlow::Continue(()));
        }
        loop {
            let at = self.next_token()?;
            if self.blocks.data()[at] != b'{' {
                return Err(Detour::Exact);
            }
            if self.record(at)?.is_break() {
                return Ok(ControlFlow::Break(()));
            }
            let next = self.next_token()?;
            match self.blocks.data()[next] {
                b',' => self.blocks.consume(next + 1),
                b']' => {
                    self.blocks.consume(next + 1);
                    return Ok(ControlFlow::Continue(()));
                }
                _ => return Err(Detour::Exact),
            }
        }
    }

    /// The record whose `{` is at `open`: offered, parsed if not known, and
    /// consumed.
    fn record(&mut self, open: usize) -> Result<ControlFlow<()>, Detour> {
        if self.id_column.is_none() {
            return self.parse_record(open);
        }
        let members = &mut self.members;
        let end = step(self.blocks, |data| members.scan(data, open))?;
        let line = self.blocks.line_at(open);
        let column = self.blocks.column_at(open);
        // The members' places are counted from the start of the window.
        let window = &self.blocks.data()[..end];
        let text = &window[open..];
        let fingerprint = RawFingerprint::of_json(text);
        let raw = self.members.of(window);
        let id = self
            .id_column
            .as_deref()
            .and_then(|column| raw.string(column));
        self.offered += 1;
        let offer = self
            .sink
            .offer(self.path, line, fingerprint, id.as_deref(), &raw);
        let flow = match offer {
            Offer::Known => ControlFlow::Continue(()),
            Offer::Parse => {
                let emitted = self.sink.emit_text(
                    self.path,
                    (line, column),
                    fingerprint,
                    text,
                    TextShape::Object,
                    &raw,
                );
                match emitted {
                    Ok(flow) => flow,
                    Err(detour) => {
                        self.offered -= 1;
                        return Err(detour);
                    }
                }
            }
        };
        self.blocks.consume(end);
        Ok(flow)
    }

    /// The record whose `{` is at `open`, where no prefilter asks: parsed
    /// by serde_json straight from the window, which finds its end too.
    fn parse_record(&mut self, open: usize) -> Result<ControlFlow<()>, Detour> {
        loop {
            let Some(data) = self.blocks.text().and_then(|text| text.get(open..)) else {
                return Err(Detour::Exact);
            };
            // From text serde_json need not check UTF-8 again.
            let mut stream = serde_json::Deserializer::from_str(data).into_iter::<ParsedFields>();
            match stream.next() {
                Some(Ok(ParsedFields(mut fields))) => {
                    let len = stream.byte_offset();
                    let text = &data[..len];
                    keep_exact_numbers(text, &mut fields);
                    let fingerprint = RawFingerprint::of_json(text.as_bytes());
                    let end = open + len;
                    let line = self.blocks.line_at(open);
                    self.offered += 1;
                    let flow = self.sink.emit(self.path, line, fingerprint, fields);
                    self.blocks.consume(end);
                    return Ok(flow);
                }
                // Cut off by the end of the window: read on, parse again.
                Some(Err(error)) if error.is_eof() => match self.blocks.fill()? {
                    Ok(()) => {}
                    Err(_) => return Err(Detour::Exact),
                },
                _ => return Err(Detour::Exact),
            }
        }
    }

    /// The index in the window of the next byte that is not whitespace,
    /// reading on as needed.
    fn next_token(&mut self) -> Result<usize, Detour> {
        step(self.blocks, |data| match skip_whitespace(data, 0) {
            Some(at) => Step::Done(at),
            None => Step::NeedMore,
        })
    }

    fn step<T>(&mut self, scan: impl FnMut(&[u8]) -> Step<T>) -> Result<T, Detour> {
        step(self.blocks, scan)
    }
}

/// Run `scan` over the window, reading more and scanning again while it
/// needs more.
fn step<R: Read, T>(
    blocks: &mut Blocks<R>,
    mut scan: impl FnMut(&[u8]) -> Step<T>,
) -> Result<T, Detour> {
    loop {
        match scan(blocks.data()) {
            Step::Done(value) => return Ok(value),
            Step::Malformed => return Err(Detour::Exact),
            Step::NeedMore => match blocks.fill()? {
                Ok(()) => {}
                Err(_) => return Err(Detour::Exact),
            },
        }
    }
}

/// The exact reader: read one page file streaming, handing each record to
/// `sink`, and name any problem at its line and column.
pub(super) fn stream_odata<R: Read>(path: &Path, input: R, sink: &mut Sink<'_>) -> FileOutcome {
    let progress = ReadProgress::default();
    let mut deserializer =
        serde_json::Deserializer::from_reader(ProgressReader::new(input, &progress));
    let mut page = Page {
        path,
        progress: &progress,
        sink,
        stopped: false,
        misplaced_value: None,
    };
    let result = Envelope { page: &mut page }
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end());
    let error = match result {
        Ok(()) => return Ok(ControlFlow::Continue(())),
        Err(_) if page.stopped => return Ok(ControlFlow::Break(())),
        Err(error) => error,
    };
    let parse_error = |line: u64, column: u64, message: String| ExportError::Parse {
        path: path.to_path_buf(),
        line,
        column,
        message,
    };
    Err(match page.misplaced_value.take() {
        Some((line, column, message)) => parse_error(line, column, message),
        None if error.is_eof() && !progress.content_seen() => parse_error(
            error.line() as u64,
            (error.column() as u64).max(1),
            "no OData envelope: the file is empty".into(),
        ),
        None => json_error(path, error, None),
    })
}

/// The state of one page while its visitors run.
struct Page<'p, 's> {
    path: &'p Path,
    /// How far the deserializer has read.
    progress: &'p ReadProgress,
    sink: &'p mut Sink<'s>,
    /// Set when the callback asked to stop; the visitors then unwind with an
    /// error that is not one.
    stopped: bool,
    /// An element of `value` that is not an object, placed where it starts:
    /// serde_json would place the error after the element.
    misplaced_value: Option<(u64, u64, String)>,
}

struct Envelope<'a, 'p, 's> {
    page: &'a mut Page<'p, 's>,
}

impl<'de> DeserializeSeed<'de> for Envelope<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Envelope<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"an OData page {"value": [...]} or an array of records"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut value_seen = false;
        while let Some(key) = map.next_key::<EnvelopeKey>()? {
            match key {
                EnvelopeKey::Value if value_seen => {
                    return Err(de::Error::custom("the page has two `value` arrays"));
                }
                EnvelopeKey::Value => {
                    value_seen = true;
                    map.next_value_seed(Records { page: self.page })?;
                }
                EnvelopeKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if value_seen {
            Ok(())
        } else {
            Err(de::Error::custom(
                "not an OData page: it has no `value` array",
            ))
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        Records { page: self.page }.visit_seq(seq)
    }
}

/// A key of the page object; only `value` matters, the rest (`@odata.*`
/// annotations) is skipped without being kept.
pub(super) enum EnvelopeKey {
    Value,
    Other,
}

impl<'de> de::Deserialize<'de> for EnvelopeKey {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = EnvelopeKey;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<EnvelopeKey, E> {
                Ok(if key == "value" {
                    EnvelopeKey::Value
                } else {
                    EnvelopeKey::Other
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

struct Records<'a, 'p, 's> {
    page: &'a mut Page<'p, 's>,
}

impl<'de> DeserializeSeed<'de> for Records<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Records<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(OneRecord {
                page: &mut *self.page,
            })?
            .is_some()
        {}
        Ok(())
    }
}

struct OneRecord<'a, 'p, 's> {
    page: &'a mut Page<'p, 's>,
}

impl<'de> DeserializeSeed<'de> for OneRecord<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        // serde_json hands an element to its seed only after peeking the
        // element's first byte, so the reader has consumed exactly up to the
        // `{`: the newlines before it give the line the record starts on.
        // An element that is not an object is refused here, before serde_json
        // reads past it, so that its error points at where it starts.
        let progress = self.page.progress;
        let (line, column) = progress.last_position();
        if let Some(first) = progress.last_byte().filter(|&byte| byte != b'{') {
            let message = not_an_object(first);
            self.page.misplaced_value = Some((line, column, message.clone()));
            return Err(de::Error::custom(message));
        }
        // The record's text, `{` (consumed already) included, to read its
        // numbers exactly as the in-memory reader does.
        progress.start_capture(b"{");
        let fields = RecordFields.deserialize(deserializer);
        let raw = progress.take_capture();
        let mut fields = fields?;
        if let Ok(raw) = std::str::from_utf8(&raw) {
            keep_exact_numbers(raw, &mut fields);
        }
        let fingerprint = RawFingerprint::of_json(&raw);
        match self
            .page
            .sink
            .offer_parsed(self.page.path, line, fingerprint, fields)
        {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) => {
                self.page.stopped = true;
                Err(de::Error::custom("stopped by the caller"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::text::TextInput;
    use super::super::{ErrorCase, FileOutcome, Record, collect_records, parse_error_at};
    use super::*;

    const PAGE: &str = "page-1.json";

    /// Read `content` both ways; they must agree on every record and on the
    /// outcome.
    fn read(content: &[u8], stop_after: Option<u64>) -> (FileOutcome, Vec<Record>) {
        let streamed = collect_records(stop_after, |sink| {
            stream_odata(Path::new(PAGE), TextInput::new(content), sink)
        });
        let in_blocks = collect_records(stop_after, |sink| {
            read_odata(Path::new(PAGE), std::io::Cursor::new(content), sink)
        });
        // As the scan reads: every record handed over unparsed (the
        // prefilter knows none), parsed by the taker.
        let offered = super::super::collect_offered(Default::default(), stop_after, |sink| {
            read_odata(Path::new(PAGE), std::io::Cursor::new(content), sink)
        });
        let content = String::from_utf8_lossy(content);
        assert_eq!(in_blocks.1, streamed.1, "records of {content:?}");
        assert_eq!(
            format!("{:?}", in_blocks.0),
            format!("{:?}", streamed.0),
            "outcome of {content:?}"
        );
        assert_eq!(offered.1, streamed.1, "records offered of {content:?}");
        assert_eq!(
            format!("{:?}", offered.0),
            format!("{:?}", streamed.0),
            "outcome offered of {content:?}"
        );
        in_blocks
    }

    /// Whether the block pass reads `content` without handing it to the
    /// exact reader.
    fn read_in_one_pass(content: &str) -> bool {
        let mut drop = |_| ControlFlow::Continue(());
        let mut sink = Sink::new(&mut drop);
        let mut blocks = Blocks::new(content.as_bytes());
        let mut pass = BlockPass {
            path: Path::new(PAGE),
            blocks: &mut blocks,
            sink: &mut sink,
            members: Members::default(),
            id_column: None,
            offered: 0,
        };
        pass.run().is_ok()
    }

    /// `(line, fields)` of every record in `content`, which must read well.
    fn records(content: &str) -> Vec<(u64, Value)> {
        let (result, records) = read(content.as_bytes(), None);
        assert_eq!(result.unwrap(), ControlFlow::Continue(()), "{content:?}");
        records
            .into_iter()
            .enumerate()
            .map(|(index, record)| {
                assert_eq!(record.location.file, Path::new(PAGE));
                assert_eq!(record.location.ordinal, index as u64 + 1);
                (record.location.line, Value::Object(record.fields))
            })
            .collect()
    }

    fn error(content: &[u8]) -> Option<(u64, u64, String)> {
        parse_error_at(read(content, None).0, Path::new(PAGE))
    }

    #[test]
    fn reads_pages_and_places_each_record_at_its_brace() {
        let cases: Vec<(&str, Vec<(u64, Value)>)> = vec![
            (r#"{"value": []}"#, vec![]),
            ("[]", vec![]),
            (
                "{\n  \"@odata.context\": \"https://x/$metadata#opportunities\",\n  \"value\": [\n    {\"opportunityid\": \"a\"},\n\n\n    {\n      \"opportunityid\": \"b\"\n    }\n  ],\n  \"@odata.nextLink\": \"https://x/next\"\n}\n",
                vec![
                    (4, json!({"opportunityid": "a"})),
                    (7, json!({"opportunityid": "b"})),
                ],
            ),
            (
                r#"{"value":[{"a":1},{"a":2}],"@odata.count":2}"#,
                vec![(1, json!({"a": 1})), (1, json!({"a": 2}))],
            ),
            (
                "\n\n[\n{\"a\": null}\n,\n\n{}]\n\n",
                vec![(4, json!({"a": null})), (7, json!({}))],
            ),
            (
                // Unknown envelope keys of any shape come before and after.
                "{\"@odata.context\": {\"x\": [1, {\"value\": 2}]}, \"value\": [\n{\"statuscode@OData.Community.Display.V1.FormattedValue\": \"Won\", \"transactioncurrencyid\": {\"isocurrencycode\": \"EUR\"}, \"estimatedvalue\": 42000.5}\n], \"@odata.nextLink\": null}",
                vec![(
                    2,
                    json!({
                        "statuscode@OData.Community.Display.V1.FormattedValue": "Won",
                        "transactioncurrencyid": {"isocurrencycode": "EUR"},
                        "estimatedvalue": 42000.5
                    }),
                )],
            ),
            (
                "\u{feff}{\"value\": [{\"name\": \"S\u{e3}o \\\"Paulo\\\"\\n\u{20ac}\"}]}",
                vec![(1, json!({"name": "S\u{e3}o \"Paulo\"\n\u{20ac}"}))],
            ),
            (
                "{\"value\": [\r\n{\"a\": 1},\r\n{\"a\": 2}\r\n]}\r\n",
                vec![(2, json!({"a": 1})), (3, json!({"a": 2}))],
            ),
        ];
        for (content, expected) in cases {
            assert_eq!(records(content), expected, "{content:?}");
            let text = content.strip_prefix('\u{feff}').unwrap_or(content);
            assert!(read_in_one_pass(text), "{content:?} fell back");
        }
    }

    #[test]
    fn reports_what_is_wrong_and_where() {
        let truncated = "EOF while parsing a value (the file is truncated, or still being written)";
        let cases: &[ErrorCase] = &[
            (b"", (1, 1, "no OData envelope: the file is empty")),
            (b"\n  \n", (3, 1, "no OData envelope: the file is empty")),
            (
                b"\"abc",
                (
                    1,
                    4,
                    "EOF while parsing a string (the file is truncated, or still being written)",
                ),
            ),
            (
                b"{",
                (
                    1,
                    1,
                    "EOF while parsing an object (the file is truncated, or still being written)",
                ),
            ),
            (
                b"{\"@odata.context\": \"x\"}",
                (1, 23, "not an OData page: it has no `value` array"),
            ),
            (
                b"{\"value\": {}}",
                (1, 11, "invalid type: map, expected an array of records"),
            ),
            (
                b"{\"value\": [], \"value\": []}",
                (1, 22, "the page has two `value` arrays"),
            ),
            (
                b"\"value\"",
                (
                    1,
                    7,
                    "invalid type: string \"value\", expected an OData page {\"value\": [...]} or an array of records",
                ),
            ),
            (
                b"{\"value\": [\n  {\"a\": 1},\n  42\n]}",
                (3, 3, "expected a record object, found a number"),
            ),
            (
                b"[{\"a\": 1}, [\"b\"]]",
                (1, 12, "expected a record object, found an array"),
            ),
            (
                b"[{\"a\": 1}, \"b\"]",
                (1, 12, "expected a record object, found a string"),
            ),
            (b"[null]", (1, 2, "expected a record object, found null")),
            (
                b"[{\"a\": 1},,{}]",
                (1, 11, "expected a record object, found `,`"),
            ),
            (b"[{\"a\": 1},]", (1, 11, "trailing comma")),
            (
                b"{\"value\": [{\"a\": 1}]}\n}",
                (2, 1, "trailing characters"),
            ),
            (
                b"{\"value\": [{\"a\": 1}]}\n{\"value\": []}",
                (2, 1, "trailing characters"),
            ),
            (
                b"{\"value\": [\n{\"a\": 1},\n{\"name\": \"Cont",
                (
                    3,
                    14,
                    "EOF while parsing a string (the file is truncated, or still being written)",
                ),
            ),
            (
                b"{\"value\": [\n{\"a\": 1}\n",
                (
                    3,
                    1,
                    "EOF while parsing a list (the file is truncated, or still being written)",
                ),
            ),
            (b"{\"value\": [\n{\"a\": ", (2, 6, truncated)),
            (
                b"[{\"a\": 1, \"a\": 1}]",
                (1, 14, "key `a` occurs twice in one record"),
            ),
            (b"[{\"a\": tru}]", (1, 11, "expected ident")),
            (
                b"{\"value\": [\n{\"name\": \"caf\xE9\"}]}",
                (2, 14, "invalid UTF-8 byte 0xE9"),
            ),
            (
                b"{\"value\": [\n{\"name\": \"caf\xC3",
                (2, 14, "invalid UTF-8: the file ends inside a character"),
            ),
        ];
        let mismatches: Vec<String> = cases
            .iter()
            .filter_map(|&(content, (line, column, message))| {
                let actual = error(content);
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
    fn an_escape_cut_short_at_the_end_of_a_record_is_placed_as_the_exact_reader_places_it() {
        // The structural scan takes `\u` for two bytes, serde_json for six:
        // a `\u` cut short near a record's `}` makes serde_json read on
        // into what follows the record. `read` checks that the block pass
        // and a taker of unparsed records give the exact reader's error.
        for content in [
            r#"{"value":[{"id":"A","a":"\u"}]}"#,
            r#"[{"a": "x\u12"}, {"b": 1}]"#,
            r#"{"value": [{"a": "\ud800\u"}
]}"#,
            "[{\"a\": \"\\u\"}]\n",
        ] {
            let outcome = read(content.as_bytes(), None).0;
            assert!(
                matches!(&outcome, Err(ExportError::Parse { message, .. }) if !message.contains("truncated")),
                "{content}: {outcome:?}"
            );
        }
    }

    #[test]
    fn records_before_an_error_are_handed_over_first() {
        let (result, records) = read(b"[{\"a\": 1}, {\"a\": 2}, {\"a\": ", None);
        assert!(matches!(result, Err(ExportError::Parse { line: 1, .. })));
        assert_eq!(records.len(), 2);
    }

    #[test]
    fn a_record_refused_after_others_were_handed_over_is_reported_once() {
        // The first pass hands over two records before it meets the third;
        // the streaming pass that names the problem does not repeat them.
        let content =
            b"{\"value\": [\n{\"a\": 1},\n{\"a\": 2},\n{\"a\": 3, \"a\": 4},\n{\"a\": 5}\n]}";
        let (result, records) = read(content, None);
        assert_eq!(
            parse_error_at(result, Path::new(PAGE)),
            Some((4, 13, "key `a` occurs twice in one record".into()))
        );
        let seen: Vec<(u64, u64)> = records
            .iter()
            .map(|record| (record.location.ordinal, record.location.line))
            .collect();
        assert_eq!(seen, [(1, 2), (2, 3)]);
        assert!(!read_in_one_pass(std::str::from_utf8(content).unwrap()));
    }

    #[test]
    fn both_ways_keep_numbers_a_double_would_round_as_text() {
        let content =
            b"{\"value\": [\n{\"a\": 123456789012345678901234567890, \"b\": 2.5},\n{\"a\": 1}\n]}";
        let (result, records) = read(content, None);
        assert_eq!(result.unwrap(), ControlFlow::Continue(()));
        let values: Vec<Value> = records
            .into_iter()
            .map(|r| Value::Object(r.fields))
            .collect();
        assert_eq!(
            values,
            [
                json!({"a": "123456789012345678901234567890", "b": 2.5}),
                json!({"a": 1})
            ]
        );
    }

    #[test]
    fn the_callback_can_stop_the_read() {
        let (result, records) = read(b"[{\"a\": 1}, {\"a\": 2}, {\"a\": 3}, garbage", Some(2));
        assert_eq!(result.unwrap(), ControlFlow::Break(()));
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].fields["a"], json!(2));
    }

    #[test]
    fn a_huge_string_keeps_the_lines_after_it() {
        let big = "x".repeat(3 * 1024 * 1024);
        let content = format!("[\n{{\"description\": \"{big}\"}},\n\n{{\"a\": 1}}\n]");
        let records = records(&content);
        assert_eq!(records.len(), 2);
        assert_eq!(
            records[0].1["description"].as_str().map(str::len),
            Some(big.len())
        );
        assert_eq!(records[1].0, 4);
    }

    mod equivalence {
        use proptest::prelude::*;

        use super::*;

        /// Whitespace as exports have it between tokens.
        fn gap() -> impl Strategy<Value = String> {
            proptest::collection::vec(
                prop_oneof![Just(" "), Just("\n"), Just("\r\n"), Just("\t")],
                0..3,
            )
            .prop_map(|parts| parts.concat())
        }

        fn record() -> impl Strategy<Value = Value> {
            super::super::super::strategies::members().prop_map(Value::Object)
        }

        /// A page whose records are laid out with random gaps, inside an
        /// envelope with annotations or as a bare array, with or without a
        /// byte-order mark.
        fn page() -> impl Strategy<Value = String> {
            (
                proptest::collection::vec((gap(), record(), any::<bool>()), 0..6),
                any::<bool>(),
                any::<bool>(),
                gap(),
            )
                .prop_map(|(records, bare, bom, tail)| {
                    let elements: Vec<String> = records
                        .iter()
                        .map(|(gap, record, pretty)| {
                            let text = if *pretty {
                                serde_json::to_string_pretty(record)
                            } else {
                                serde_json::to_string(record)
                            };
                            format!("{gap}{}", text.unwrap_or_default())
                        })
                        .collect();
                    let array = format!("[{}{tail}]", elements.join(","));
                    let body = if bare {
                        format!("{tail}{array}{tail}")
                    } else {
                        format!(
                            "{{\"@odata.context\": \"x\",{tail}\"value\": {array},{tail}\"@odata.nextLink\": null}}{tail}"
                        )
                    };
                    if bom { format!("\u{feff}{body}") } else { body }
                })
        }

        proptest! {
            #[test]
            fn both_ways_read_the_same_records_in_one_pass(page in page()) {
                let (result, records) = read(page.as_bytes(), None);
                prop_assert!(result.is_ok());
                let text = page.strip_prefix('\u{feff}').unwrap_or(&page);
                prop_assert!(read_in_one_pass(text));
                prop_assert_eq!(
                    records.len(),
                    serde_json::from_str::<Value>(text)
                        .ok()
                        .and_then(|v| v.as_array().or(v["value"].as_array()).map(Vec::len))
                        .unwrap_or(usize::MAX)
                );
            }

            #[test]
            fn with_a_prefilter_both_ways_agree(page in page(), ids in proptest::collection::vec("[A-Fa-f0-9{}-]{1,8}", 6), cut in any::<prop::sample::Index>(), byte in any::<u8>(), damage in any::<bool>()) {
                // Give the records ids, so that some are known and not
                // parsed: the block pass and the exact reader must agree on
                // which, on what is handed over, on the columns, and on
                // the outcome — damaged or not.
                let mut n = 0;
                let mut bytes = page.replace("{\"", "{\"id\": \"ID\", \"").into_bytes();
                while let Some(at) = bytes.windows(2).position(|w| w == b"ID") {
                    let id = ids[n % ids.len()].as_bytes();
                    n += 1;
                    bytes.splice(at..at + 2, id.iter().copied());
                }
                // The fingerprints of the records as they were, as a store
                // would have them.
                let (_, before) = collect_records(None, |sink| {
                    stream_odata(Path::new(PAGE), TextInput::new(&bytes[..]), sink)
                });
                let valid: std::collections::HashSet<RawFingerprint> =
                    before.iter().map(|record| record.fingerprint).collect();
                if damage && !bytes.is_empty() {
                    let at = cut.index(bytes.len());
                    bytes[at] = byte;
                }
                let streamed = super::super::super::collect_prefiltered(Some(valid.clone()), |sink| {
                    stream_odata(Path::new(PAGE), TextInput::new(&bytes[..]), sink)
                });
                let in_blocks = super::super::super::collect_prefiltered(Some(valid.clone()), |sink| {
                    read_odata(Path::new(PAGE), std::io::Cursor::new(&bytes[..]), sink)
                });
                let offered = super::super::super::collect_offered(valid, None, |sink| {
                    read_odata(Path::new(PAGE), std::io::Cursor::new(&bytes[..]), sink)
                });
                for read in [&in_blocks, &offered] {
                    prop_assert_eq!(&read.1, &streamed.1);
                    prop_assert_eq!(&read.2, &streamed.2);
                    prop_assert_eq!(format!("{:?}", read.0), format!("{:?}", streamed.0));
                    if read.0.is_ok() {
                        prop_assert_eq!(&read.3, &streamed.3);
                    }
                }
            }

            #[test]
            fn both_ways_agree_on_a_damaged_page(page in page(), cut in any::<prop::sample::Index>(), byte in any::<u8>()) {
                // One byte replaced: the two readers must still agree on
                // what they hand over and on the error.
                let mut bytes = page.into_bytes();
                if !bytes.is_empty() {
                    let at = cut.index(bytes.len());
                    bytes[at] = byte;
                }
                let _ = read(&bytes, None);
            }
        }
    }
}
