//! What the two JSON readers share: turning one JSON object into record
//! fields, and serde_json errors into [`ExportError`]s.

use std::fmt;
use std::io;
use std::path::Path;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::{ExportError, input_error};

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
            if fields.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "key `{key}` occurs twice in one record"
                )));
            }
            let value = map.next_value::<Value>()?;
            fields.insert(key, value);
        }
        Ok(fields)
    }
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
