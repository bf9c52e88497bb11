//! Finding where JSON values end without parsing them.
//!
//! A structural scan in the manner of simdjson's first stage, one byte
//! class at a time: outside strings only brackets, braces, commas, colons
//! and quotes matter; inside a string only its closing quote and escapes,
//! found with `memchr`. The scan does not validate: what it delimits is
//! either parsed by serde_json afterwards or, by its fingerprint, known to
//! be the very bytes of a record parsed before. For well-formed JSON it
//! finds exactly the end serde_json would.

use std::ops::Range;

use serde::Deserialize;

use super::RecordColumns;

/// The outcome of one scan step over the bytes read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step<T> {
    Done(T),
    /// The bytes end before the step does: read more and scan again.
    NeedMore,
    /// Not JSON as a record reader expects it; the exact reader says why.
    Malformed,
}

/// Bytes JSON counts as whitespace.
pub(super) fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// The index of the first byte of `bytes` at or after `from` that is not
/// whitespace; `None` when there is none yet.
pub(super) fn skip_whitespace(bytes: &[u8], from: usize) -> Option<usize> {
    bytes
        .get(from..)?
        .iter()
        .position(|&byte| !is_whitespace(byte))
        .map(|at| from + at)
}

/// The index just past the closing quote of the string whose opening quote
/// is at `open`.
pub(super) fn string_end(bytes: &[u8], open: usize) -> Step<usize> {
    let mut at = open + 1;
    loop {
        let Some(rest) = bytes.get(at..) else {
            return Step::NeedMore;
        };
        match memchr::memchr2(b'"', b'\\', rest) {
            Some(found) if rest[found] == b'\\' => at += found + 2,
            Some(found) => return Step::Done(at + found + 1),
            None => return Step::NeedMore,
        }
    }
}

/// The index just past the value that starts at `start` (which is not
/// whitespace). A scalar ends at the first byte that cannot continue it,
/// so a number at the very end of the bytes read needs more.
pub(super) fn value_end(bytes: &[u8], start: usize) -> Step<usize> {
    match bytes.get(start) {
        None => Step::NeedMore,
        Some(b'"') => string_end(bytes, start),
        Some(b'{' | b'[') => container_end(bytes, start),
        Some(b'}' | b']' | b',' | b':') => Step::Malformed,
        Some(_) => {
            let scalar = bytes[start..]
                .iter()
                .position(|&byte| is_whitespace(byte) || matches!(byte, b',' | b'}' | b']'));
            match scalar {
                Some(len) => Step::Done(start + len),
                None => Step::NeedMore,
            }
        }
    }
}

/// The index just past the object or array that opens at `open`.
fn container_end(bytes: &[u8], open: usize) -> Step<usize> {
    // A stack of what is open, so that `{]` is malformed, not closed.
    let mut open_brackets: Vec<u8> = vec![bytes[open]];
    let mut at = open + 1;
    while let Some(&byte) = bytes.get(at) {
        match byte {
            b'"' => match string_end(bytes, at) {
                Step::Done(end) => {
                    at = end;
                    continue;
                }
                other => return other,
            },
            b'{' | b'[' => open_brackets.push(byte),
            b'}' | b']' => {
                let expected = if byte == b'}' { b'{' } else { b'[' };
                if open_brackets.pop() != Some(expected) {
                    return Step::Malformed;
                }
                if open_brackets.is_empty() {
                    return Step::Done(at + 1);
                }
            }
            _ => {}
        }
        at += 1;
    }
    Step::NeedMore
}

/// The top-level members of one record object, as byte ranges into its
/// text: enough to find its id and take in its columns without parsing it.
#[derive(Debug, Default)]
pub(super) struct Members {
    members: Vec<Member>,
    /// Keys written with escapes, decoded.
    decoded: Vec<String>,
}

#[derive(Debug, Clone)]
struct Member {
    key: Key,
    value: Range<usize>,
}

#[derive(Debug, Clone)]
enum Key {
    /// The key's text between its quotes, without escapes.
    Plain(Range<usize>),
    /// An index into [`Members::decoded`].
    Decoded(usize),
}

impl Members {
    /// Scan the object that opens at `open` in `bytes`, noting its top-level
    /// members; the index just past its closing brace.
    pub fn scan(&mut self, bytes: &[u8], open: usize) -> Step<usize> {
        self.members.clear();
        self.decoded.clear();
        debug_assert_eq!(bytes.get(open), Some(&b'{'));
        let mut at = open + 1;
        let Some(first) = skip_whitespace(bytes, at) else {
            return Step::NeedMore;
        };
        if bytes[first] == b'}' {
            return Step::Done(first + 1);
        }
        at = first;
        loop {
            // "key"
            if bytes[at] != b'"' {
                return Step::Malformed;
            }
            let key_end = match string_end(bytes, at) {
                Step::Done(end) => end,
                other => return other.map_never(),
            };
            let key_text = &bytes[at + 1..key_end - 1];
            let key = if memchr::memchr(b'\\', key_text).is_some() {
                match serde_json::from_slice::<String>(&bytes[at..key_end]) {
                    Ok(decoded) => {
                        self.decoded.push(decoded);
                        Key::Decoded(self.decoded.len() - 1)
                    }
                    Err(_) => return Step::Malformed,
                }
            } else {
                Key::Plain(at + 1..key_end - 1)
            };
            // :
            let Some(colon) = skip_whitespace(bytes, key_end) else {
                return Step::NeedMore;
            };
            if bytes[colon] != b':' {
                return Step::Malformed;
            }
            let Some(value_start) = skip_whitespace(bytes, colon + 1) else {
                return Step::NeedMore;
            };
            let value_stop = match value_end(bytes, value_start) {
                Step::Done(end) => end,
                other => return other,
            };
            self.members.push(Member {
                key,
                value: value_start..value_stop,
            });
            // , or }
            let Some(next) = skip_whitespace(bytes, value_stop) else {
                return Step::NeedMore;
            };
            match bytes[next] {
                b'}' => return Step::Done(next + 1),
                b',' => match skip_whitespace(bytes, next + 1) {
                    Some(key_start) => at = key_start,
                    None => return Step::NeedMore,
                },
                _ => return Step::Malformed,
            }
        }
    }

    /// The members of the object last scanned from `text` (the same bytes
    /// [`Self::scan`] was given).
    pub fn of<'a>(&'a self, text: &'a [u8]) -> RawMembers<'a> {
        RawMembers {
            text,
            members: self,
        }
    }
}

impl Step<usize> {
    /// A step that did not finish, as a step of another kind.
    fn map_never<T>(self) -> Step<T> {
        match self {
            Step::Done(_) | Step::Malformed => Step::Malformed,
            Step::NeedMore => Step::NeedMore,
        }
    }
}

/// The scanned members of one object together with its text.
pub(super) struct RawMembers<'a> {
    text: &'a [u8],
    members: &'a Members,
}

impl RawMembers<'_> {
    fn key(&self, member: &Member) -> &str {
        match &member.key {
            Key::Plain(range) => std::str::from_utf8(&self.text[range.clone()]).unwrap_or(""),
            Key::Decoded(index) => self.members.decoded[*index].as_str(),
        }
    }

    /// The bytes of `member`'s key as text: a key without escapes as it
    /// stands, a decoded one as decoded. Bytes equal to a `&str`'s are that
    /// text, so keys are compared this way, without a UTF-8 check per key
    /// per record (a tenth of a no-change read of JSON Lines).
    fn key_bytes(&self, member: &Member) -> &[u8] {
        match &member.key {
            Key::Plain(range) => &self.text[range.clone()],
            Key::Decoded(index) => self.members.decoded[*index].as_bytes(),
        }
    }

    fn value_of(&self, column: &str) -> Option<&[u8]> {
        let member = self
            .members
            .members
            .iter()
            .find(|member| self.key_bytes(member) == column.as_bytes())?;
        Some(&self.text[member.value.clone()])
    }

    /// The text of the string member `column`, decoded; `None` when the
    /// member is missing or not a string.
    pub fn string(&self, column: &str) -> Option<std::borrow::Cow<'_, str>> {
        let raw = self.value_of(column)?;
        let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
        if memchr::memchr(b'\\', inner).is_none() {
            return std::str::from_utf8(inner)
                .ok()
                .map(std::borrow::Cow::Borrowed);
        }
        let mut deserializer = serde_json::Deserializer::from_slice(raw);
        String::deserialize(&mut deserializer)
            .ok()
            .map(std::borrow::Cow::Owned)
    }
}

impl RecordColumns for RawMembers<'_> {
    fn count(&self) -> usize {
        self.members.members.len()
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.members.members.iter().map(|member| self.key(member))
    }

    fn has_names(&self, names: &[String]) -> bool {
        self.members.members.len() == names.len()
            && self
                .members
                .members
                .iter()
                .zip(names)
                .all(|(member, name)| self.key_bytes(member) == name.as_bytes())
    }

    fn filled(&self, column: &str) -> bool {
        match self.value_of(column) {
            None | Some(b"null") => false,
            Some(raw) if raw.first() == Some(&b'"') => self
                .string(column)
                .is_some_and(|text| !text.trim().is_empty()),
            Some(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_where_values_end() {
        let cases: [(&str, Step<usize>); 12] = [
            (r#""abc" x"#, Step::Done(5)),
            (r#""a\"b\\" x"#, Step::Done(8)),
            (r#""abc"#, Step::NeedMore),
            (r#""ab\"#, Step::NeedMore),
            (r#"{"a": [1, {"b": "}"}]} x"#, Step::Done(22)),
            (r#"{"a": [1, {"b": "}"}] "#, Step::NeedMore),
            (r#"{"a": 1]"#, Step::Malformed),
            ("12.5e3,", Step::Done(6)),
            ("12.5e3", Step::NeedMore),
            ("true}", Step::Done(4)),
            ("]", Step::Malformed),
            ("[[], {}]", Step::Done(8)),
        ];
        for (text, expected) in cases {
            assert_eq!(value_end(text.as_bytes(), 0), expected, "{text}");
        }
    }

    #[test]
    fn notes_top_level_members_and_their_values() {
        let text =
            br#"{ "opportunityid" : "A-1", "n\u0061me": "  ", "x": {"opportunityid": "inner"},
  "e": "", "z": null, "v": 0, "s": "caf\u00e9" } tail"#;
        let mut members = Members::default();
        let end = match members.scan(text, 0) {
            Step::Done(end) => end,
            other => panic!("{other:?}"),
        };
        assert_eq!(&text[end..], b" tail");
        let raw = members.of(text);
        assert_eq!(
            raw.names().collect::<Vec<_>>(),
            ["opportunityid", "name", "x", "e", "z", "v", "s"]
        );
        assert_eq!(raw.string("opportunityid").as_deref(), Some("A-1"));
        assert_eq!(raw.string("s").as_deref(), Some("café"));
        assert_eq!(raw.string("x"), None);
        assert_eq!(raw.string("missing"), None);
        let filled: Vec<bool> = ["opportunityid", "name", "x", "e", "z", "v", "s", "missing"]
            .iter()
            .map(|column| raw.filled(column))
            .collect();
        assert_eq!(filled, [true, false, true, false, false, true, true, false]);
        let names = |list: &[&str]| list.iter().map(|name| name.to_string()).collect::<Vec<_>>();
        let all = ["opportunityid", "name", "x", "e", "z", "v", "s"];
        assert!(raw.has_names(&names(&all)));
        assert!(!raw.has_names(&names(&all[..6])));
        let mut swapped = all;
        swapped.swap(0, 1);
        assert!(!raw.has_names(&names(&swapped)));
        let mut escaped_differently = all;
        escaped_differently[1] = "n\\u0061me";
        assert!(!raw.has_names(&names(&escaped_differently)));
    }

    #[test]
    fn keys_are_compared_as_the_text_they_stand_for() {
        // A key as it stands (multi-byte characters too) and one decoded
        // from escapes are found by the column they spell.
        let text = "{\"caf\u{e9}\": \"plain\", \"r\\u00e9sum\\u00e9\": \"decoded\"}".as_bytes();
        let mut members = Members::default();
        assert_eq!(members.scan(text, 0), Step::Done(text.len()));
        let raw = members.of(text);
        assert_eq!(raw.string("caf\u{e9}").as_deref(), Some("plain"));
        assert_eq!(raw.string("r\u{e9}sum\u{e9}").as_deref(), Some("decoded"));
        assert_eq!(raw.string("cafe"), None);
        assert_eq!(raw.string("r\\u00e9sum\\u00e9"), None);
        assert!(raw.has_names(&["caf\u{e9}".to_owned(), "r\u{e9}sum\u{e9}".to_owned()]));
    }

    #[test]
    fn an_object_cut_anywhere_needs_more_and_a_broken_one_is_malformed() {
        let text = br#"{"a": "b\"}", "c": [1, 2], "d": {"e": null}}"#;
        let mut members = Members::default();
        for cut in 1..text.len() {
            assert_eq!(
                members.scan(&text[..cut], 0),
                Step::NeedMore,
                "cut at {cut}"
            );
        }
        assert_eq!(members.scan(text, 0), Step::Done(text.len()));
        for broken in [
            &br#"{"a" 1}"#[..],
            br#"{"a": 1 "b": 2}"#,
            br#"{1: 2}"#,
            br#"{"a": 1,}"#,
            br#"{"a": [1}"#,
        ] {
            assert_eq!(
                members.scan(broken, 0),
                Step::Malformed,
                "{}",
                String::from_utf8_lossy(broken)
            );
        }
    }
}
