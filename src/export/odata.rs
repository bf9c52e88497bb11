//! Web API (OData v4) pages: `{"@odata.context": …, "value": [ {record}, … ],
//! "@odata.nextLink": …}`, or a bare array of records.
//!
//! A page is read one of two ways, with the same records and the same errors:
//!
//! - [`read_odata_page`], for a page held in memory (every page of a usual
//!   export: Dataverse pages hold at most 5,000 records). The text is checked
//!   to be UTF-8 once, the envelope is parsed from the slice with each record
//!   kept as a borrowed [`RawValue`], and each record is then parsed from its
//!   own slice; its line is counted from its offset. serde_json parses a slice
//!   several times faster than a reader it must pull one byte at a time.
//!   Anything wrong with the page sends it to the streaming reader, which
//!   names the problem exactly; records already handed over are not handed
//!   over twice.
//! - [`read_odata`], streaming, for pages too big to hold: the envelope is
//!   walked with serde visitors over serde_json's streaming deserializer;
//!   each element of `value` is deserialised into one field map, handed on
//!   and dropped before the next is read, so memory does not grow with the
//!   size of the page.

use std::fmt;
use std::io::Read;
use std::ops::ControlFlow;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::json::{RecordFields, json_error, keep_exact_numbers, not_an_object};
use super::text::{ProgressReader, ReadProgress, TextInput, UTF8_BOM, count_newlines};
use super::{ExportError, FileOutcome, Sink};

/// Pages up to this size are read into memory and parsed from there; bigger
/// ones are streamed. The buffer is reused from page to page.
pub(super) const IN_MEMORY_PAGE_LIMIT: u64 = 32 * 1024 * 1024;

/// Read one page held in memory, handing each record to `sink`.
pub(super) fn read_odata_page(path: &Path, bytes: &[u8], sink: &mut Sink<'_>) -> FileOutcome {
    let text = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let mut handed_over = 0;
    if let Ok(text) = std::str::from_utf8(text)
        && let Some(flow) = records_of_page(path, text, sink, &mut handed_over)
    {
        return Ok(flow);
    }
    // The page is not well formed: the streaming reader finds what is wrong
    // and where, handing over the records before the problem that this
    // pass did not hand over yet.
    sink.skip = handed_over;
    let outcome = read_odata(path, TextInput::new(bytes), sink);
    sink.skip = 0;
    outcome
}

/// The page's envelope, its records left unparsed.
#[derive(Deserialize)]
struct RawPage<'a> {
    #[serde(borrow)]
    value: Vec<&'a RawValue>,
}

/// Hand over the records of a well-formed page, counting them in
/// `handed_over`; `None` as soon as anything is not well formed.
fn records_of_page(
    path: &Path,
    text: &str,
    sink: &mut Sink<'_>,
    handed_over: &mut u64,
) -> Option<ControlFlow<()>> {
    let records: Vec<&RawValue> = if text.trim_start().starts_with('[') {
        serde_json::from_str(text).ok()?
    } else {
        serde_json::from_str::<RawPage<'_>>(text).ok()?.value
    };
    // Lines are counted from one record to the next.
    let (mut counted_to, mut line) = (0, 1);
    for record in records {
        let raw = record.get();
        if !raw.starts_with('{') {
            return None;
        }
        let offset = raw.as_ptr() as usize - text.as_ptr() as usize;
        line += count_newlines(text.as_bytes().get(counted_to..offset)?);
        counted_to = offset;

        let mut deserializer = serde_json::Deserializer::from_str(raw);
        let mut fields = RecordFields.deserialize(&mut deserializer).ok()?;
        keep_exact_numbers(raw, &mut fields);
        *handed_over += 1;
        if sink.emit(path, line, fields).is_break() {
            return Some(ControlFlow::Break(()));
        }
    }
    Some(ControlFlow::Continue(()))
}

/// Read one page file, handing each record to `sink`.
pub(super) fn read_odata<R: Read>(path: &Path, input: R, sink: &mut Sink<'_>) -> FileOutcome {
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
        match self.page.sink.emit(self.page.path, line, fields) {
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
            read_odata(Path::new(PAGE), TextInput::new(content), sink)
        });
        let in_memory = collect_records(stop_after, |sink| {
            read_odata_page(Path::new(PAGE), content, sink)
        });
        let content = String::from_utf8_lossy(content);
        assert_eq!(in_memory.1, streamed.1, "records of {content:?}");
        assert_eq!(
            format!("{:?}", in_memory.0),
            format!("{:?}", streamed.0),
            "outcome of {content:?}"
        );
        in_memory
    }

    /// Whether the in-memory pass reads `content` without falling back.
    fn read_in_one_pass(content: &str) -> bool {
        let mut handed_over = 0;
        let (_, records) = collect_records(None, |sink| {
            Ok(
                records_of_page(Path::new(PAGE), content, sink, &mut handed_over)
                    .unwrap_or(ControlFlow::Break(())),
            )
        });
        assert_eq!(handed_over, records.len() as u64);
        records_of_page(
            Path::new(PAGE),
            content,
            &mut Sink::new(&mut |_| ControlFlow::Continue(())),
            &mut 0,
        )
        .is_some()
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

        fn scalar() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                (-1e12f64..1e12).prop_map(Value::from),
                "[a-z \"\\\\\n\u{e3}\u{20ac}\u{1f600}]{0,12}".prop_map(Value::from),
            ]
        }

        fn record() -> impl Strategy<Value = Value> {
            let member = scalar().prop_recursive(2, 8, 3, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                    proptest::collection::btree_map("[a-z@.]{1,6}", inner, 0..3)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            });
            proptest::collection::btree_map("[a-zA-Z@._]{1,10}", member, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
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
