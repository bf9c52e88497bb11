//! CSV exports of a Dynamics view: a header row of logical or display names,
//! then one row per record. Cells become strings; an empty cell is `null`.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::ops::ControlFlow;
use std::path::Path;

use ::csv::{ByteRecord, ReaderBuilder};
use serde_json::{Map, Value};

use super::text::InputDefect;
use super::{ExportError, Sink, input_error};

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
    sink: &mut Sink<'_>,
) -> Result<ControlFlow<()>, ExportError> {
    // Ragged rows are checked here rather than by the csv crate, to name the
    // row's line and both widths.
    let mut reader = ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(QuoteTracker::new(input));
    let mut row = ByteRecord::new();

    if !read_row(path, &mut reader, &mut row)? {
        return Err(parse_error(path, 1, 1, "empty file: no header row".into()));
    }
    let columns = logical_columns(path, &row, reader.get_ref().header_field_starts(), aliases)?;

    while read_row(path, &mut reader, &mut row)? {
        let line = row.position().map_or(0, |position| position.line());
        if row.len() != columns.len() {
            return Err(parse_error(
                path,
                line,
                1,
                format!("row has {} fields but the header has {}", row.len(), columns.len()),
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
        if sink.emit(path, line, fields).is_break() {
            return Ok(ControlFlow::Break(()));
        }
    }
    Ok(ControlFlow::Continue(()))
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
    field_starts: &[(u64, u64)],
    aliases: &HeaderAliases,
) -> Result<Vec<String>, ExportError> {
    let header_line = header.position().map_or(1, |position| position.line());
    let place = |index: usize| field_starts.get(index).copied().unwrap_or((header_line, 1));
    let mut columns: Vec<String> = Vec::with_capacity(header.len());
    for (index, cell) in header.iter().enumerate() {
        let (line, column) = place(index);
        let Ok(display) = std::str::from_utf8(cell) else {
            return Err(parse_error(path, line, column, "header is not valid UTF-8".into()));
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
/// It also notes where each header field starts, for error messages.
struct QuoteTracker<R> {
    inner: R,
    state: QuoteState,
    line: u64,
    column: u64,
    open_quote: (u64, u64),
    header_field_starts: Vec<(u64, u64)>,
    header_done: bool,
}

impl<R: Read> QuoteTracker<R> {
    fn new(inner: R) -> Self {
        QuoteTracker {
            inner,
            state: QuoteState::RecordStart,
            line: 1,
            column: 1,
            open_quote: (1, 1),
            header_field_starts: Vec::new(),
            header_done: false,
        }
    }

    /// Line and column of each field of the first row, once it has been
    /// read.
    fn header_field_starts(&self) -> &[(u64, u64)] {
        &self.header_field_starts
    }

    fn step(&mut self, byte: u8) {
        use QuoteState::*;
        let is_line_end = byte == b'\n' || byte == b'\r';
        let here = (self.line, self.column);
        let starts_field = match self.state {
            RecordStart => !is_line_end,
            FieldStart => true,
            _ => false,
        };
        if starts_field && !self.header_done {
            self.header_field_starts.push(here);
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
    }
}

impl<R: Read> Read for QuoteTracker<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(out)?;
        if read == 0 && self.state == QuoteState::Quoted {
            let (line, column) = self.open_quote;
            return Err(InputDefect {
                line,
                column,
                message: "quoted field is never closed: the quote opened here has no closing `\"`".into(),
            }
            .into_io_error());
        }
        for &byte in &out[..read] {
            self.step(byte);
        }
        if read == 0 {
            self.header_done = true;
        }
        Ok(read)
    }
}
