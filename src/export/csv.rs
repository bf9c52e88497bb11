//! CSV exports of a Dynamics view: a header row of logical or display names,
//! then one row per record. Cells become strings; an empty cell is `null`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read};
use std::ops::ControlFlow;
use std::path::Path;

use ::csv::{ByteRecord, ReaderBuilder};
use serde_json::{Map, Value};

use super::jsonl::NO_FINAL_LINE_END;
use super::text::InputDefect;
use super::{ExportError, FileOutcome, FinalLineEnd, RawFingerprint, Sink, input_error};

/// Display-name headers → logical column names, keyed by the normalised
/// display name (trimmed, lower case).
#[derive(Debug, Default)]
pub(super) struct HeaderAliases {
    logical_by_display: HashMap<String, String>,
}

impl HeaderAliases {
    /// Two display names that differ only in case or surrounding space must
    /// not name different columns: which one applied would depend on the
    /// spelling in the export.
    pub fn new(configured: &BTreeMap<String, String>) -> Result<Self, ExportError> {
        let mut logical_by_display = HashMap::with_capacity(configured.len());
        for (display, logical) in configured {
            let normalised = normalise(display);
            if let Some(earlier) = logical_by_display.insert(normalised, logical.trim().to_owned())
                && earlier != logical.trim()
            {
                return Err(ExportError::ConflictingHeaderAlias {
                    header: display.clone(),
                    first: earlier,
                    second: logical.clone(),
                });
            }
        }
        Ok(HeaderAliases { logical_by_display })
    }

    /// The logical column name for a header cell; headers without an alias
    /// are kept (trimmed).
    fn logical_name(&self, header: &str) -> String {
        match self.logical_by_display.get(&normalise(header)) {
            Some(logical) => logical.clone(),
            None => header.trim().to_owned(),
        }
    }
}

fn normalise(header: &str) -> String {
    header.trim().to_lowercase()
}

/// Read one CSV file, handing each row to `sink`.
pub(super) fn read_csv<R: Read>(
    path: &Path,
    input: R,
    aliases: &HeaderAliases,
    line_end: FinalLineEnd,
    sink: &mut Sink<'_>,
) -> FileOutcome {
    // Ragged rows are checked here rather than by the csv crate, to name the
    // row's line and both widths.
    let mut reader = ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(QuoteTracker::new(input, line_end));
    let mut row = ByteRecord::new();

    if !read_row(path, &mut reader, &mut row)? {
        return Err(parse_error(path, 1, 1, "empty file: no header row".into()));
    }
    let header_line = start_line(&mut reader, &row);
    let columns = logical_columns(
        path,
        &row,
        header_line,
        reader.get_ref().header_field_starts(),
        aliases,
    )?;
    sink.name_columns(&columns);

    while read_row(path, &mut reader, &mut row)? {
        let line = start_line(&mut reader, &row);
        if row.len() != columns.len() {
            return Err(parse_error(
                path,
                line,
                1,
                format!(
                    "row has {} fields but the header has {}",
                    row.len(),
                    columns.len()
                ),
            ));
        }
        let mut fields = Map::new();
        for (index, (column, cell)) in columns.iter().zip(row.iter()).enumerate() {
            let value = match std::str::from_utf8(cell) {
                Ok("") => Value::Null,
                Ok(text) => Value::String(text.to_owned()),
                // TextInput has checked every byte already; this stays an
                // error, not a panic, should that ever change.
                Err(_) => {
                    return Err(parse_error(
                        path,
                        line,
                        1,
                        format!("field {} (`{column}`) is not valid UTF-8", index + 1),
                    ));
                }
            };
            fields.insert(column.clone(), value);
        }
        // Of the parsed cells under their columns, until rows are
        // fingerprinted from their bytes.
        let fingerprint = RawFingerprint::of_json(&serde_json::to_vec(&fields).unwrap_or_default());
        if sink
            .offer_parsed(path, line, fingerprint, fields)
            .is_break()
        {
            return Ok(ControlFlow::Break(()));
        }
    }
    Ok(ControlFlow::Continue(()))
}

/// The line on which the row just read starts. The csv crate's own
/// position is where it began looking for the row, before any blank lines.
fn start_line<R: Read>(reader: &mut ::csv::Reader<QuoteTracker<R>>, row: &ByteRecord) -> u64 {
    match reader.get_mut().next_row_start_line() {
        Some(line) => line,
        None => row.position().map_or(1, |position| position.line()),
    }
}

fn read_row<R: Read>(
    path: &Path,
    reader: &mut ::csv::Reader<R>,
    row: &mut ByteRecord,
) -> Result<bool, ExportError> {
    reader.read_byte_record(row).map_err(|error| {
        let line = error.position().map_or(1, |position| position.line());
        let message = error.to_string();
        match error.into_kind() {
            ::csv::ErrorKind::Io(io_error) => input_error(path, io_error),
            _ => parse_error(path, line, 1, message),
        }
    })
}

/// The logical names of the header cells. An empty header or two cells that
/// name the same column would make rows ambiguous.
fn logical_columns(
    path: &Path,
    header: &ByteRecord,
    header_line: u64,
    field_starts: &[(u64, u64)],
    aliases: &HeaderAliases,
) -> Result<Vec<String>, ExportError> {
    let place = |index: usize| field_starts.get(index).copied().unwrap_or((header_line, 1));
    let mut columns: Vec<String> = Vec::with_capacity(header.len());
    for (index, cell) in header.iter().enumerate() {
        let (line, column) = place(index);
        let Ok(display) = std::str::from_utf8(cell) else {
            return Err(parse_error(
                path,
                line,
                column,
                "header is not valid UTF-8".into(),
            ));
        };
        if display.trim().is_empty() {
            return Err(parse_error(
                path,
                line,
                column,
                format!("header of column {} is empty", index + 1),
            ));
        }
        let logical = aliases.logical_name(display);
        if let Some(earlier) = columns.iter().position(|name| *name == logical) {
            return Err(parse_error(
                path,
                line,
                column,
                format!(
                    "header `{}` of column {} names `{logical}`, as column {} does",
                    display.trim(),
                    index + 1,
                    earlier + 1
                ),
            ));
        }
        columns.push(logical);
    }
    Ok(columns)
}

fn parse_error(path: &Path, line: u64, column: u64, message: String) -> ExportError {
    ExportError::Parse {
        path: path.to_path_buf(),
        line,
        column,
        message,
    }
}

/// Where the csv crate's parser is in a row; mirrors csv-core's states for
/// the default dialect (`,`, `"` doubled to escape, any line end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuoteState {
    RecordStart,
    FieldStart,
    Unquoted,
    Quoted,
    /// A `"` inside a quoted field: the field's end, or the first half of `""`.
    QuoteInQuoted,
}

/// Follows the quoting of the bytes the csv crate reads. The csv crate takes
/// a quote that is never closed to run to the end of the file, silently
/// swallowing every row after it; here that is an error naming the quote.
/// It also notes where rows and header fields start, for locations and
/// error messages, and with [`FinalLineEnd::Required`] refuses a file whose
/// last row has no line end.
struct QuoteTracker<R> {
    inner: R,
    line_end: FinalLineEnd,
    state: QuoteState,
    line: u64,
    column: u64,
    open_quote: (u64, u64),
    /// Start lines of the rows read ahead into the csv crate's buffer, not
    /// yet claimed by [`Self::next_row_start_line`].
    row_start_lines: VecDeque<u64>,
    header_field_starts: Vec<(u64, u64)>,
    header_done: bool,
    /// A quoting defect found in bytes not handed out.
    defect: Option<InputDefect>,
}

impl<R: Read> QuoteTracker<R> {
    fn new(inner: R, line_end: FinalLineEnd) -> Self {
        QuoteTracker {
            inner,
            line_end,
            state: QuoteState::RecordStart,
            line: 1,
            column: 1,
            open_quote: (1, 1),
            row_start_lines: VecDeque::new(),
            header_field_starts: Vec::new(),
            header_done: false,
            defect: None,
        }
    }

    /// Line and column of each field of the first row, once it has been
    /// read.
    fn header_field_starts(&self) -> &[(u64, u64)] {
        &self.header_field_starts
    }

    /// The start line of the next row, in the order the csv crate reads
    /// them.
    fn next_row_start_line(&mut self) -> Option<u64> {
        self.row_start_lines.pop_front()
    }

    /// Follow one byte; a quote where the default dialect allows none is a
    /// defect, at the byte. The csv crate would keep the text (`"ACME" Corp`
    /// → `ACME Corp`, `"quote"inside` → `quoteinside`), so a damaged or
    /// hand-edited file would pass as something nobody wrote.
    fn step(&mut self, byte: u8) -> Result<(), InputDefect> {
        use QuoteState::*;
        let is_line_end = byte == b'\n' || byte == b'\r';
        let here = (self.line, self.column);
        if self.state == RecordStart && !is_line_end {
            self.row_start_lines.push_back(self.line);
        }
        let starts_field = match self.state {
            RecordStart => !is_line_end,
            FieldStart => true,
            _ => false,
        };
        if starts_field && !self.header_done {
            self.header_field_starts.push(here);
        }

        let defect = |message: String| InputDefect {
            line: here.0,
            column: here.1,
            message,
        };
        match (self.state, byte) {
            (QuoteInQuoted, b'"' | b',' | b'\n' | b'\r') => {}
            (QuoteInQuoted, _) => {
                let (line, column) = self.open_quote;
                let opened = if line == here.0 {
                    format!("column {column}")
                } else {
                    format!("line {line} column {column}")
                };
                return Err(defect(format!(
                    "text after the closing quote of the field quoted at {opened}: a quote inside a quoted field is written twice (`\"\"`)"
                )));
            }
            (Unquoted, b'"') => {
                return Err(defect(
                    "a quote inside a field that does not start with one: quote the whole field and write the quote twice (`\"\"`)"
                        .to_owned(),
                ));
            }
            _ => {}
        }

        self.state = match (self.state, byte) {
            (RecordStart, b'\n' | b'\r') => RecordStart,
            (RecordStart | FieldStart, b'"') => {
                self.open_quote = here;
                Quoted
            }
            (Quoted, b'"') => QuoteInQuoted,
            (Quoted, _) => Quoted,
            (QuoteInQuoted, b'"') => Quoted,
            (_, b',') => FieldStart,
            (_, b'\n' | b'\r') => {
                self.header_done = true;
                RecordStart
            }
            _ => Unquoted,
        };

        if byte == b'\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Ok(())
    }
}

impl<R: Read> Read for QuoteTracker<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(defect) = &self.defect {
            return Err(defect.clone().into_io_error());
        }
        let read = self.inner.read(out)?;
        if read == 0 && self.state == QuoteState::Quoted {
            let (line, column) = self.open_quote;
            return Err(InputDefect {
                line,
                column,
                message: "quoted field is never closed: the quote opened here has no closing `\"`"
                    .into(),
            }
            .into_io_error());
        }
        // Anything but a line end after the last line end: the last row was
        // cut off, or the writer is not done.
        if read == 0
            && self.line_end == FinalLineEnd::Required
            && self.state != QuoteState::RecordStart
        {
            return Err(InputDefect {
                line: self.line,
                column: self.column,
                message: NO_FINAL_LINE_END.into(),
            }
            .into_io_error());
        }
        for (index, &byte) in out[..read].iter().enumerate() {
            if let Err(defect) = self.step(byte) {
                // The rows before the defect are handed out first; the next
                // read reports it.
                self.defect = Some(defect.clone());
                return if index == 0 {
                    Err(defect.into_io_error())
                } else {
                    Ok(index)
                };
            }
        }
        if read == 0 {
            self.header_done = true;
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::text::TextInput;
    use super::super::{ErrorCase, FileOutcome, Record, collect_records, parse_error_at};
    use super::*;

    const FILE: &str = "leads.csv";
    const UNQUOTED_QUOTE: &str = "a quote inside a field that does not start with one: quote the whole field and write the quote twice (`\"\"`)";

    fn aliases(pairs: &[(&str, &str)]) -> HeaderAliases {
        let configured = pairs
            .iter()
            .map(|&(display, logical)| (display.to_owned(), logical.to_owned()))
            .collect();
        HeaderAliases::new(&configured).unwrap()
    }

    fn read(content: &[u8], aliases: &HeaderAliases) -> (FileOutcome, Vec<Record>) {
        read_with(content, aliases, FinalLineEnd::Required)
    }

    fn read_with(
        content: &[u8],
        aliases: &HeaderAliases,
        line_end: FinalLineEnd,
    ) -> (FileOutcome, Vec<Record>) {
        collect_records(None, |sink| {
            read_csv(
                Path::new(FILE),
                TextInput::new(content),
                aliases,
                line_end,
                sink,
            )
        })
    }

    fn records(content: &str, aliases: &HeaderAliases) -> Vec<(u64, Value)> {
        let (result, records) = read(content.as_bytes(), aliases);
        assert_eq!(result.unwrap(), ControlFlow::Continue(()), "{content:?}");
        records
            .into_iter()
            .map(|record| (record.location.line, Value::Object(record.fields)))
            .collect()
    }

    #[test]
    fn reads_rows_under_logical_names() {
        let none = HeaderAliases::default();
        let display = aliases(&[
            ("Lead", "leadid"),
            ("  est. value ", "estimatedamount"),
            ("STATUS REASON", "statuscode"),
        ]);
        type Case<'a> = (&'a str, &'a HeaderAliases, Vec<(u64, Value)>);
        let cases: Vec<Case> = vec![
            ("leadid,subject\n", &none, vec![]),
            (
                "leadid,subject,statuscode\na1,Adatum,1\n\na2,,2\n",
                &none,
                vec![
                    (
                        2,
                        json!({"leadid": "a1", "subject": "Adatum", "statuscode": "1"}),
                    ),
                    (
                        4,
                        json!({"leadid": "a2", "subject": null, "statuscode": "2"}),
                    ),
                ],
            ),
            (
                "\u{feff}Lead, Est. Value ,status reason,Business Phone\r\na1,\"$75,000.00\",New,\" \"\r\na2,\"\u{20ac}20,000.00\",\"Con\r\ntacted\",\"say \"\"hi\"\"\"\r\na3,,Lost,\r\n",
                &display,
                vec![
                    (
                        2,
                        json!({"leadid": "a1", "estimatedamount": "$75,000.00", "statuscode": "New", "Business Phone": " "}),
                    ),
                    (
                        3,
                        json!({"leadid": "a2", "estimatedamount": "\u{20ac}20,000.00", "statuscode": "Con\r\ntacted", "Business Phone": "say \"hi\""}),
                    ),
                    (
                        5,
                        json!({"leadid": "a3", "estimatedamount": null, "statuscode": "Lost", "Business Phone": null}),
                    ),
                ],
            ),
        ];
        for (content, aliases, expected) in cases {
            assert_eq!(records(content, aliases), expected, "{content:?}");
        }
    }

    #[test]
    fn a_last_row_without_a_line_end_is_refused_unless_allowed() {
        let none = HeaderAliases::default();
        // The cut value still fills its cell: only the missing line end
        // tells.
        let cases: [(&[u8], (u64, u64)); 4] = [
            (b"leadid,amount\nL-1,125000\nL-2,12", (3, 7)),
            (b"leadid,subject", (1, 15)),
            (b"a\r\n\"x\"\"y\"", (2, 7)),
            (b"a,b\n1,", (2, 3)),
        ];
        for (content, (line, column)) in cases {
            let (result, _) = read(content, &none);
            assert_eq!(
                parse_error_at(result, Path::new(FILE)),
                Some((line, column, NO_FINAL_LINE_END.to_owned())),
                "{:?}",
                String::from_utf8_lossy(content)
            );
        }
        let optional = |content: &[u8]| {
            let (result, records) = read_with(content, &none, FinalLineEnd::Optional);
            assert_eq!(result.unwrap(), ControlFlow::Continue(()));
            records
                .into_iter()
                .map(|record| Value::Object(record.fields))
                .collect::<Vec<_>>()
        };
        assert_eq!(optional(b"leadid,subject"), Vec::<Value>::new());
        // A closed quote at the very end of the file is balanced.
        assert_eq!(optional(b"a\n\"x\"\"y\""), [json!({"a": "x\"y"})]);
        assert_eq!(
            optional(b"leadid,amount\nL-2,12"),
            [json!({"leadid": "L-2", "amount": "12"})]
        );
    }

    #[test]
    fn reports_what_is_wrong_and_where() {
        let display = aliases(&[("Lead", "leadid"), ("Topic", "subject")]);
        let cases: &[ErrorCase] = &[
            (b"", (1, 1, "empty file: no header row")),
            (b"\n\r\n", (1, 1, "empty file: no header row")),
            (
                b"a,b\n1,2\n3\n",
                (3, 1, "row has 1 fields but the header has 2"),
            ),
            (
                b"a,b\n1,2\n3,4,5\n",
                (3, 1, "row has 3 fields but the header has 2"),
            ),
            (
                b"a,b\n1,\"x\ny\"\n3,4,5\n",
                (4, 1, "row has 3 fields but the header has 2"),
            ),
            (
                b"a,b\n1,2\n3,\"four\n5,6\n",
                (
                    3,
                    3,
                    "quoted field is never closed: the quote opened here has no closing `\"`",
                ),
            ),
            (
                b"a,b\n\"1\"\"\n",
                (
                    2,
                    1,
                    "quoted field is never closed: the quote opened here has no closing `\"`",
                ),
            ),
            (b"a,,c\n", (1, 3, "header of column 2 is empty")),
            (b"a,b,\r\n1,2,3\r\n", (1, 5, "header of column 3 is empty")),
            (b"a,\" \",c\n", (1, 3, "header of column 2 is empty")),
            (
                b"\xEF\xBB\xBFa,b,\"x\ny\",a\n",
                (2, 4, "header `a` of column 4 names `a`, as column 1 does"),
            ),
            (
                b"Lead,subject,Topic\n",
                (
                    1,
                    14,
                    "header `Topic` of column 3 names `subject`, as column 2 does",
                ),
            ),
            (
                b"Lead,leadid\n",
                (
                    1,
                    6,
                    "header `leadid` of column 2 names `leadid`, as column 1 does",
                ),
            ),
            (b"a,b\n1,caf\xE9\n", (2, 6, "invalid UTF-8 byte 0xE9")),
            (b"name,size\nscreen,27\" wide\n", (2, 10, UNQUOTED_QUOTE)),
            (b"a,b\n1,quote\"inside\n", (2, 8, UNQUOTED_QUOTE)),
            (
                b"a,b\n\"ACME\" Corp,2\n",
                (
                    2,
                    7,
                    "text after the closing quote of the field quoted at column 1: a quote inside a quoted field is written twice (`\"\"`)",
                ),
            ),
            (
                b"a,b\n1,\"quote\"inside\n",
                (
                    2,
                    10,
                    "text after the closing quote of the field quoted at column 3: a quote inside a quoted field is written twice (`\"\"`)",
                ),
            ),
            (
                b"a,b\n1,\"two\nlines\"x\n",
                (
                    3,
                    7,
                    "text after the closing quote of the field quoted at line 2 column 3: a quote inside a quoted field is written twice (`\"\"`)",
                ),
            ),
            // In the header too.
            (
                b"a,\"b\"c\n",
                (
                    1,
                    6,
                    "text after the closing quote of the field quoted at column 3: a quote inside a quoted field is written twice (`\"\"`)",
                ),
            ),
            (b"a,b\xFF\n", (1, 4, "invalid UTF-8 byte 0xFF")),
        ];
        let mismatches: Vec<String> = cases
            .iter()
            .filter_map(|&(content, (line, column, message))| {
                let actual = parse_error_at(read(content, &display).0, Path::new(FILE));
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
    fn rows_before_a_problem_are_handed_over_first() {
        let (result, records) = read(b"a,b\n1,2\n3,4\n5\n", &HeaderAliases::default());
        assert!(matches!(result, Err(ExportError::Parse { line: 4, .. })));
        assert_eq!(records.len(), 2);

        // Past the first buffer the csv crate reads, and at the start of
        // a read.
        let mut content = b"a,b\n".to_vec();
        for n in 0..2000 {
            content.extend_from_slice(format!("{n},\"x\"\n").as_bytes());
        }
        content.extend_from_slice(b"last,\"ACME\" Corp\n");
        let (result, records) = read(&content, &HeaderAliases::default());
        assert!(
            matches!(
                result,
                Err(ExportError::Parse {
                    line: 2002,
                    column: 12,
                    ..
                })
            ),
            "{result:?}"
        );
        assert_eq!(records.len(), 2000);
    }

    #[test]
    fn aliases_that_differ_only_in_spelling_must_agree() {
        let configured = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|&(a, b)| (a.to_owned(), b.to_owned()))
                .collect()
        };
        assert!(
            HeaderAliases::new(&configured(&[("Topic", "subject"), ("TOPIC ", "subject")])).is_ok()
        );
        match HeaderAliases::new(&configured(&[("Topic", "subject"), ("topic", "name")])) {
            Err(ExportError::ConflictingHeaderAlias {
                header,
                first,
                second,
            }) => {
                assert_eq!(
                    (header.as_str(), first.as_str(), second.as_str()),
                    ("topic", "subject", "name")
                );
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
}
