//! What the two JSON readers share: turning one JSON object into record
//! fields, and serde_json errors into [`ExportError`]s.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::Path;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{ExportError, RecordLocation, input_error};

/// Deserialises one record object into its fields. A key that occurs twice
/// is an error: JSON parsers disagree on which value wins, so the record
/// cannot be trusted.
pub(super) struct RecordFields;

impl<'de> DeserializeSeed<'de> for RecordFields {
    type Value = Map<String, Value>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordFields {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a record object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // One search of the map per key, before the value is read, so
            // that a repeated key is reported where it stands.
            match fields.entry(key) {
                serde_json::map::Entry::Vacant(slot) => {
                    slot.insert(map.next_value::<Value>()?);
                }
                serde_json::map::Entry::Occupied(taken) => {
                    return Err(de::Error::custom(format_args!(
                        "key `{}` occurs twice in one record",
                        taken.key()
                    )));
                }
            }
        }
        Ok(fields)
    }
}

/// One record object's fields, as a type serde_json can stream.
pub(super) struct ParsedFields(pub Map<String, Value>);

impl<'de> serde::Deserialize<'de> for ParsedFields {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        RecordFields.deserialize(deserializer).map(ParsedFields)
    }
}

/// A double holds every decimal of up to 15 significant digits exactly; a
/// number token with more, that serde_json reads as a double, may come out
/// rounded (`123456789012345678901234567890` → `1.2345678901234568e29`).
const EXACT_DIGITS: usize = 15;

/// Keep the members of `fields` whose JSON number serde_json may have
/// rounded as their text, a JSON string, so that a mapping reads them as it
/// reads text: exactly, refusing more precision than a referral holds
/// instead of sending a rounded value. `raw` is the record's JSON text.
///
/// Only members serde_json read as a double can have been rounded (it
/// keeps integers of up to 64 bits exactly); their tokens are looked up in
/// `raw` first, and only a record where one may be inexact is parsed again
/// to find which member it is. Numbers nested in expanded lookups are left
/// as they are.
pub(super) fn keep_exact_numbers(raw: &str, fields: &mut Map<String, Value>) {
    let suspect = fields
        .iter()
        .filter(|(_, value)| matches!(value, Value::Number(number) if number.is_f64()))
        .any(|(key, _)| may_be_inexact(raw.as_bytes(), key));
    if !suspect {
        return;
    }
    let mut deserializer = serde_json::Deserializer::from_str(raw);
    // The record parsed already; what follows its `}` does not matter here.
    let Ok(members) =
        <BTreeMap<String, &RawValue> as serde::Deserialize>::deserialize(&mut deserializer)
    else {
        return;
    };
    for (key, value) in members {
        let token = value.get();
        if is_inexact_number(token.as_bytes())
            && let Some(member) = fields.get_mut(&key)
        {
            *member = Value::String(token.to_owned());
        }
    }
}

/// Whether the value of a member `key` of the JSON text `raw` may be a
/// number a double does not hold: every `"key":` is looked at (nested
/// objects may use the same key; a false alarm only costs the exact check).
/// A key written with escapes is not found that way: when the text has
/// escapes, or the key is not found, every number of the text is looked at.
fn may_be_inexact(raw: &[u8], key: &str) -> bool {
    let mut needle = Vec::with_capacity(key.len() + 2);
    needle.push(b'"');
    needle.extend_from_slice(key.as_bytes());
    needle.push(b'"');
    let mut found = false;
    for at in memchr::memmem::find_iter(raw, &needle) {
        found = true;
        let after_key = &raw[at + needle.len()..];
        let Some(rest) = skip_whitespace(after_key).strip_prefix(b":") else {
            continue;
        };
        let rest = skip_whitespace(rest);
        let token_len = rest
            .iter()
            .take_while(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
            .count();
        if is_inexact_number(&rest[..token_len]) {
            return true;
        }
    }
    // The member itself may be written with escapes in its key (`"\u0061"`)
    // and so not be among those found.
    (!found || memchr::memmem::find(raw, b"\\u").is_some()) && has_inexact_number(raw)
}

fn skip_whitespace(bytes: &[u8]) -> &[u8] {
    let blank = bytes
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .count();
    &bytes[blank..]
}

/// Whether some number token of the JSON text `bytes` may not survive a
/// double. Strings, most of a record, are skipped with `memchr`; numbers
/// can only stand in the short stretches between them.
fn has_inexact_number(bytes: &[u8]) -> bool {
    let mut index = 0;
    while index < bytes.len() {
        let rest = &bytes[index..];
        let gap_end = memchr::memchr(b'"', rest).unwrap_or(rest.len());
        if gap_has_inexact_number(&rest[..gap_end]) {
            return true;
        }
        // Past the opening quote, to the closing one, over escapes.
        index += gap_end + 1;
        while index < bytes.len() {
            match memchr::memchr2(b'"', b'\\', &bytes[index..]) {
                Some(at) if bytes[index + at] == b'\\' => index += at + 2,
                Some(at) => {
                    index += at + 1;
                    break;
                }
                None => return false,
            }
        }
    }
    false
}

/// Whether a stretch of JSON outside any string holds such a number.
fn gap_has_inexact_number(gap: &[u8]) -> bool {
    let mut index = 0;
    while index < gap.len() {
        if matches!(gap[index], b'-' | b'0'..=b'9') {
            let end = index
                + gap[index..]
                    .iter()
                    .take_while(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                    .count();
            if is_inexact_number(&gap[index..end]) {
                return true;
            }
            index = end;
        } else {
            index += 1;
        }
    }
    false
}

/// Whether the number token `token` has more significant digits than a
/// double holds and is one serde_json reads as a double (a fraction, an
/// exponent, or an integer beyond 64 bits).
fn is_inexact_number(token: &[u8]) -> bool {
    if !matches!(token.first(), Some(b'-' | b'0'..=b'9')) {
        return false;
    }
    let mantissa_end = token
        .iter()
        .position(|b| matches!(b, b'e' | b'E'))
        .unwrap_or(token.len());
    let digits: Vec<u8> = token[..mantissa_end]
        .iter()
        .copied()
        .filter(u8::is_ascii_digit)
        .collect();
    let Some(first) = digits.iter().position(|&d| d != b'0') else {
        return false;
    };
    let Some(last) = digits.iter().rposition(|&d| d != b'0') else {
        return false;
    };
    let significant = last - first + 1;
    if significant <= EXACT_DIGITS {
        return false;
    }
    let integer = mantissa_end == token.len() && !token.contains(&b'.');
    let fits = std::str::from_utf8(token)
        .is_ok_and(|text| text.parse::<u64>().is_ok() || text.parse::<i64>().is_ok());
    !(integer && fits)
}

/// The message for a value that should have been a record object but starts
/// with `first`.
pub(super) fn not_an_object(first: u8) -> String {
    let found = match first {
        b'[' => "an array",
        b'"' => "a string",
        b't' | b'f' => "a boolean",
        b'n' => "null",
        b'-' | b'0'..=b'9' => "a number",
        other if other.is_ascii_graphic() => {
            return format!("expected a record object, found `{}`", other as char);
        }
        _ => "a byte that cannot start a JSON value",
    };
    format!("expected a record object, found {found}")
}

/// The error for `error`, raised while parsing `path`. `line` replaces
/// serde_json's line when the parser saw only part of the file (one JSON
/// Lines line).
pub(super) fn json_error(path: &Path, error: serde_json::Error, line: Option<u64>) -> ExportError {
    if error.is_io() {
        return input_error(path, io::Error::from(error));
    }
    let mut message = message_without_position(&error);
    if error.is_eof() {
        message.push_str(" (the file is truncated, or still being written)");
    }
    ExportError::Parse {
        path: path.to_path_buf(),
        line: line.unwrap_or(error.line() as u64),
        // serde_json says column 0 for "before the first byte of the line",
        // which happens at the end of a file that ends with a newline.
        column: (error.column() as u64).max(1),
        message,
    }
}

/// The fields of the record whose text is `text`, parsed as the readers
/// parse one: a JSON Lines line (`whole_line`: the record and nothing after
/// it) or an object cut from a page. The text starts at `location.line`
/// and `column` of its file, and an error is placed there as the exact
/// readers, which parse the whole file, place it.
pub(super) fn parse_record_text(
    text: &[u8],
    location: &RecordLocation,
    column: u64,
    whole_line: bool,
) -> Result<Map<String, Value>, ExportError> {
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let parsed = RecordFields
        .deserialize(&mut deserializer)
        .and_then(|fields| {
            if whole_line {
                deserializer.end().map(|()| fields)
            } else {
                Ok(fields)
            }
        });
    let mut fields = parsed.map_err(|error| {
        // The exact reader of pages reads from a file, where serde_json
        // places some errors (a repeated key) a byte further on than it
        // does in a slice: an object's error is placed as a reader places
        // it. Only on the way to an error: it costs a second parse.
        let error = if whole_line {
            error
        } else {
            RecordFields
                .deserialize(&mut serde_json::Deserializer::from_reader(text))
                .err()
                .unwrap_or(error)
        };
        json_error_within(&location.file, error, location.line, column)
    })?;
    // The readers hand out checked UTF-8; the check costs little beside
    // the parse.
    if let Ok(raw) = std::str::from_utf8(text) {
        keep_exact_numbers(raw, &mut fields);
    }
    Ok(fields)
}

/// [`json_error`] for an error serde_json placed in a text that starts at
/// `line` and `column` of `path`: the same line and column as where it
/// read the whole file.
fn json_error_within(path: &Path, error: serde_json::Error, line: u64, column: u64) -> ExportError {
    let (within_line, within_column) = (error.line() as u64, error.column() as u64);
    match json_error(path, error, Some(line + within_line.saturating_sub(1))) {
        ExportError::Parse {
            path,
            line,
            column: later_line_column,
            message,
        } => ExportError::Parse {
            path,
            line,
            column: if within_line <= 1 {
                (column + within_column).saturating_sub(1).max(1)
            } else {
                later_line_column
            },
            message,
        },
        other => other,
    }
}

/// serde_json appends " at line L column C" to its messages; the position
/// is kept in the error's own fields instead.
fn message_without_position(error: &serde_json::Error) -> String {
    let full = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    match full.strip_suffix(&suffix) {
        Some(message) => message.to_owned(),
        None => full,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;

    fn parse_record(text: &str) -> Result<Map<String, Value>, ExportError> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        RecordFields
            .deserialize(&mut deserializer)
            .and_then(|fields| deserializer.end().map(|()| fields))
            .map_err(|error| json_error(Path::new("r.json"), error, None))
    }

    fn parse_error(text: &str) -> (u64, u64, String) {
        match parse_record(text) {
            Err(ExportError::Parse {
                path,
                line,
                column,
                message,
            }) => {
                assert_eq!(path, PathBuf::from("r.json"));
                (line, column, message)
            }
            other => panic!("expected a parse error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn numbers_a_double_would_round_are_kept_as_their_text() {
        let cases = [
            (
                r#"{"a": 123456789012345678901234567890, "b": 1.5}"#,
                json!({"a": "123456789012345678901234567890", "b": 1.5}),
            ),
            (
                r#"{"a": 125000.0000000000000001, "s": "1234567890.1234567890"}"#,
                json!({"a": "125000.0000000000000001", "s": "1234567890.1234567890"}),
            ),
            (
                r#"{"a": -1.2345678901234567e5}"#,
                json!({"a": "-1.2345678901234567e5"}),
            ),
            // Exact in a double, or kept exactly by serde_json: unchanged.
            (
                r#"{"a": 123456789012345, "b": 12345678901234567, "c": 1e300, "d": 0.000000000000001}"#,
                json!({"a": 123456789012345_u64, "b": 12345678901234567_u64, "c": 1e300, "d": 0.000000000000001}),
            ),
            // Only top-level members; a long number in a string is text.
            // A key written with an escape is found too.
            (
                r#"{"x": {"y": 1.23456789012345678}, "q": "\"1.23456789012345678"}"#,
                json!({"x": {"y": 1.2345678901234568}, "q": "\"1.23456789012345678"}),
            ),
            (
                r#"{"\u0061": 1.23456789012345678, "b": {"a": 1.5}}"#,
                json!({"a": "1.23456789012345678", "b": {"a": 1.5}}),
            ),
            // The same key nested with a long number, short at the top.
            (
                r#"{"b": {"a": 1.23456789012345678}, "a": 2.5}"#,
                json!({"b": {"a": 1.2345678901234568}, "a": 2.5}),
            ),
        ];
        for (text, expected) in cases {
            let mut fields = parse_record(text).unwrap();
            keep_exact_numbers(text, &mut fields);
            assert_eq!(Value::Object(fields), expected, "{text}");
        }
    }

    #[test]
    fn keeps_values_as_json() {
        let fields = parse_record(r#"{"a": 1.5, "b": {"c": [true, null]}, "d@x.y": "z"}"#).unwrap();
        assert_eq!(
            Value::Object(fields),
            json!({"a": 1.5, "b": {"c": [true, null]}, "d@x.y": "z"})
        );
    }

    #[test]
    fn reports_what_and_where() {
        let cases = [
            (
                "[1]",
                1,
                1,
                "invalid type: sequence, expected a record object",
            ),
            (
                "\n  42",
                2,
                4,
                "invalid type: integer `42`, expected a record object",
            ),
            (
                r#"{"a": 1, "a": 2}"#,
                1,
                12,
                "key `a` occurs twice in one record",
            ),
            (
                "{\"a\": 1,\n\"b\": ",
                2,
                5,
                "EOF while parsing a value (the file is truncated, or still being written)",
            ),
            ("{\"a\": 1}\n", 0, 0, ""),
            ("{\"a\": 1} x", 1, 10, "trailing characters"),
            ("{\"a\" 1}", 1, 6, "expected `:`"),
        ];
        for (text, line, column, message) in cases {
            if message.is_empty() {
                assert!(parse_record(text).is_ok(), "{text:?}");
                continue;
            }
            assert_eq!(
                parse_error(text),
                (line, column, message.to_string()),
                "{text:?}"
            );
        }
    }
}
