//! Telling the shape of an export file when the configuration leaves it to
//! us: by extension, else by looking at how the file starts.

use std::cell::Cell;
use std::fmt;
use std::io::{self, BufRead, Read};
use std::path::Path;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::ExportFormat;
use super::odata::EnvelopeKey;
use super::text::{ProgressReader, ReadProgress, TextInput};

/// The reader a file gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileFormat {
    OdataJson,
    Csv,
    Jsonl,
}

/// The format of the file at `path`: the configured one, or else decided by
/// extension and, failing that, by content read through `input` (which
/// starts at the beginning of the file).
pub(super) fn file_format<R: Read>(
    configured: ExportFormat,
    path: &Path,
    input: R,
) -> io::Result<FileFormat> {
    match configured {
        ExportFormat::OdataJson => return Ok(FileFormat::OdataJson),
        ExportFormat::Csv => return Ok(FileFormat::Csv),
        ExportFormat::Jsonl => return Ok(FileFormat::Jsonl),
        ExportFormat::Auto => {}
    }
    let extension = path
        .extension()
        .map(|extension| extension.to_string_lossy().to_ascii_lowercase());
    match extension.as_deref() {
        Some("json") => Ok(FileFormat::OdataJson),
        Some("csv") => Ok(FileFormat::Csv),
        Some("jsonl" | "ndjson") => Ok(FileFormat::Jsonl),
        _ => sniff_format(input),
    }
}

/// Decide from the content:
/// - `[`, or a `{` whose object has a `value` array → OData;
/// - any other `{` whose object is complete on its line → JSON Lines (one
///   line without a `value` array is a record, not a page);
/// - any other `{` → OData, whose reader then says what is wrong with it;
/// - anything else, including an empty file → CSV.
///
/// Only as much is read as it takes to decide: a page is recognised at the
/// `[` of its `value`, so a minified page is not read twice.
fn sniff_format<R: Read>(input: R) -> io::Result<FileFormat> {
    let mut input = TextInput::new(input);
    let first = loop {
        let available = input.fill_buf()?;
        if available.is_empty() {
            return Ok(FileFormat::Csv);
        }
        match available
            .iter()
            .position(|byte| !byte.is_ascii_whitespace())
        {
            Some(index) => break available[index],
            None => {
                let blank = available.len();
                input.consume(blank);
            }
        }
    };
    match first {
        b'[' => Ok(FileFormat::OdataJson),
        b'{' => probe_object(input),
        _ => Ok(FileFormat::Csv),
    }
}

fn probe_object<R: Read>(input: R) -> io::Result<FileFormat> {
    let progress = ReadProgress::default();
    let envelope_found = Cell::new(false);
    let mut deserializer =
        serde_json::Deserializer::from_reader(ProgressReader::new(input, &progress));
    let probe = ObjectProbe {
        progress: &progress,
        envelope_found: &envelope_found,
    };
    match probe.deserialize(&mut deserializer) {
        _ if envelope_found.get() => Ok(FileFormat::OdataJson),
        Ok(ObjectShape::OneLine) => Ok(FileFormat::Jsonl),
        Ok(ObjectShape::SeveralLines) => Ok(FileFormat::OdataJson),
        // Invalid UTF-8 is wrong in every format, and a failed read ends
        // detection: both are reported as they are.
        Err(error) if error.is_io() => Err(io::Error::from(error)),
        Err(_) => Ok(FileFormat::OdataJson),
    }
}

enum ObjectShape {
    OneLine,
    SeveralLines,
}

struct ObjectProbe<'c> {
    progress: &'c ReadProgress,
    envelope_found: &'c Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for ObjectProbe<'_> {
    type Value = ObjectShape;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<ObjectShape, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectProbe<'_> {
    type Value = ObjectShape;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ObjectShape, A::Error> {
        let start = self.progress.newlines();
        while let Some(key) = map.next_key::<EnvelopeKey>()? {
            match key {
                EnvelopeKey::Value => map.next_value_seed(ArrayProbe {
                    envelope_found: self.envelope_found,
                })?,
                EnvelopeKey::Other => map.next_value::<IgnoredAny>().map(drop)?,
            }
        }
        // The closing `}` has been peeked, so it is counted in.
        Ok(if self.progress.newlines() == start {
            ObjectShape::OneLine
        } else {
            ObjectShape::SeveralLines
        })
    }
}

/// Looks at the value of a `value` key: an array makes the object a page,
/// and detection stops there without reading the records.
struct ArrayProbe<'c> {
    envelope_found: &'c Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for ArrayProbe<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ArrayProbe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<(), A::Error> {
        self.envelope_found.set(true);
        Err(de::Error::custom("found an OData `value` array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::text::InputDefect;
    use super::*;

    #[test]
    fn sniffs_the_shape_of_the_content() {
        let cases: &[(&str, FileFormat)] = &[
            ("", FileFormat::Csv),
            ("  \n\n", FileFormat::Csv),
            ("leadid,subject\n1,a\n", FileFormat::Csv),
            ("\u{feff}Lead,Topic\n", FileFormat::Csv),
            ("[]", FileFormat::OdataJson),
            ("\n  [{\"a\": 1}]", FileFormat::OdataJson),
            (
                "{\n  \"@odata.context\": \"x\",\n  \"value\": [\n",
                FileFormat::OdataJson,
            ),
            (
                r#"{"@odata.context": "x", "value": [{"a": 1}]}"#,
                FileFormat::OdataJson,
            ),
            (
                "{\"value\": [{\"a\": 1}]}\n{\"b\": 2}\n",
                FileFormat::OdataJson,
            ),
            ("{\"a\": 1}\n{\"a\": 2}\n", FileFormat::Jsonl),
            (
                "\u{feff}\n{\"a\": {\"b\": [1, 2]}, \"value\": 3}\r\n",
                FileFormat::Jsonl,
            ),
            ("{\"a\": 1}", FileFormat::Jsonl),
            ("{\n\"a\": 1\n}\n", FileFormat::OdataJson),
            ("{\"a\": 1, \"b\" \n", FileFormat::OdataJson),
            ("{\"a\": ", FileFormat::OdataJson),
        ];
        for (content, expected) in cases {
            let format = sniff_format(content.as_bytes()).unwrap();
            assert_eq!(format, *expected, "content {content:?}");
        }
    }

    #[test]
    fn stops_at_the_value_array() {
        // Everything after the `[` is garbage; a probe that read on would
        // not call this a page.
        let content = b"{\"@odata.context\": \"x\", \"value\": [\xFF\xFF garbage";
        assert_eq!(sniff_format(&content[..]).unwrap(), FileFormat::OdataJson);
    }

    #[test]
    fn reports_invalid_utf8_found_while_sniffing() {
        let error = sniff_format(&b"{\"a\": \"\xFF\"}\n"[..]).unwrap_err();
        let defect = InputDefect::carried_by(&error).unwrap();
        assert_eq!((defect.line, defect.column), (1, 8));
    }

    #[test]
    fn the_configured_format_then_the_extension_decide_first() {
        let cases = [
            (
                ExportFormat::Auto,
                "export/page-1.json",
                FileFormat::OdataJson,
            ),
            (
                ExportFormat::Auto,
                "export/PAGE-1.JSON",
                FileFormat::OdataJson,
            ),
            (ExportFormat::Auto, "leads.csv", FileFormat::Csv),
            (ExportFormat::Auto, "leads.jsonl", FileFormat::Jsonl),
            (ExportFormat::Auto, "leads.ndjson", FileFormat::Jsonl),
            (ExportFormat::Auto, "leads.txt", FileFormat::OdataJson),
            (ExportFormat::Auto, "leads", FileFormat::OdataJson),
            (ExportFormat::Csv, "page-1.json", FileFormat::Csv),
            (ExportFormat::Jsonl, "leads.csv", FileFormat::Jsonl),
            (
                ExportFormat::OdataJson,
                "leads.jsonl",
                FileFormat::OdataJson,
            ),
        ];
        for (configured, path, expected) in cases {
            let content = &b"[]"[..];
            let format = file_format(configured, Path::new(path), content).unwrap();
            assert_eq!(format, expected, "{configured:?} {path}");
        }
    }
}
