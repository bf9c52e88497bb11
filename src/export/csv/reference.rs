//! The reader this module replaced, kept for the tests: the csv crate over
//! a per-byte quote tracker. Every record, error and position of
//! [`super::read_csv`] must be the same as this one's.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::ops::ControlFlow;
use std::path::Path;

use ::csv::{ByteRecord, ReaderBuilder};
use serde_json::{Map, Value};

use super::super::jsonl::NO_FINAL_LINE_END;
use super::super::text::InputDefect;
use super::super::{ExportError, FileOutcome, FinalLineEnd, RawFingerprint, Sink, input_error};
use super::HeaderAliases;

/// Read one CSV file, handing each row to `sink`.
pub(in crate::export) fn read_csv<R: Read>(
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
