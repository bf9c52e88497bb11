//! CSV exports of a Dynamics view: a header row of logical or display names,
//! then one row per record. Cells become strings; an empty cell is `null`.
//!
//! The file is read in large blocks into a window that slides over it. A
//! plain row — cells unquoted without a `"`, or quoted with every inner
//! quote doubled, and a line end after the last — is found by a scan that
//! jumps from delimiter to delimiter and from quote to quote
//! ([`Rows::scan_row`]); every other row (the header, a row with a stray
//! quote, one cut off by the end of the file or by a failed read, one
//! longer than [`SCAN_LIMIT`]) is read by csv-core, as the csv crate would
//! read it, and then checked for what the csv crate would let pass: a quote
//! inside an unquoted field, text after a closing quote, an unclosed quote,
//! a missing last line end. Either way the row's cells are unescaped into
//! one reused buffer — no allocation per cell until a record is built — and
//! its raw bytes stay in the window, so that
//!
//! - a row is fingerprinted from its bytes (seeded with the hash of the
//!   file's resolved header) and offered to the prefilter with its id cell
//!   before anything is built; a known row is counted and dropped;
//! - a row's line comes from the line ends before it (csv-core's count of
//!   those it saw, plus those of the rows and blank lines it did not see),
//!   and a problem is placed at its line and column from its offset in the
//!   row.
//!
//! The input is checked text ([`super::text::TextInput`]): a byte that is
//! not UTF-8 arrives as a read error after every byte before it, so rows
//! and problems before it are handed over and reported first. Memory is
//! bounded by the largest row, not by the file. The previous reader, the
//! csv crate over a per-byte quote tracker, is kept as the reference the
//! tests hold this one to (`reference.rs`): the same records, errors and
//! positions on every table case and on generated and damaged files.

#[cfg(test)]
mod reference;

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::ops::ControlFlow;
use std::path::Path;

use serde_json::{Map, Value};

use super::jsonl::NO_FINAL_LINE_END;
use super::text::count_newlines;
use super::{
    ExportError, FileOutcome, FinalLineEnd, Offer, RawFingerprint, RecordColumns, Sink, input_error,
};

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
    let mut rows = Rows::new(input);
    let Some(header) = rows.next_row().map_err(|error| input_error(path, error))? else {
        return Err(parse_error(path, 1, 1, "empty file: no header row".into()));
    };
    rows.check(path, &header, line_end)?;
    let header_line = header.line;
    let starts = header_field_starts(rows.raw(&header));
    let places: Vec<(u64, u64)> = starts.iter().map(|&at| rows.place(&header, at)).collect();
    let columns = logical_columns(path, rows.cells(&header), header_line, &places, aliases)?;
    sink.name_columns(&columns);
    let header = Header::new(columns, sink.id_column().as_deref());

    loop {
        let row = match rows.next_data_row() {
            Ok(Some(row)) => row,
            Ok(None) => return Ok(ControlFlow::Continue(())),
            Err(error) => return Err(input_error(path, error)),
        };
        rows.check(path, &row, line_end)?;
        let line = row.line;
        if row.fields != header.names.len() {
            return Err(parse_error(
                path,
                line,
                1,
                format!(
                    "row has {} fields but the header has {}",
                    row.fields,
                    header.names.len()
                ),
            ));
        }
        let fingerprint = RawFingerprint::of_row(header.hash, rows.raw(&row));
        let cells = Cells {
            header: &header,
            output: &rows.output,
            ends: &rows.ends[..row.fields],
        };
        let id = header
            .id
            .and_then(|index| cells.text(index))
            .filter(|id| !id.is_empty());
        let flow = match sink.offer(path, line, fingerprint, id, &cells) {
            Offer::Known => ControlFlow::Continue(()),
            Offer::Parse => {
                let fields = cells.fields(path, line)?;
                sink.emit(path, line, fingerprint, fields)
            }
        };
        if flow.is_break() {
            return Ok(ControlFlow::Break(()));
        }
        if header.id == Some(0)
            && let Some(next) = rows.peek_ahead()
        {
            sink.expect(next);
        }
    }
}

/// The resolved header of one file.
struct Header {
    /// Logical column names, in the file's order.
    names: Vec<String>,
    /// Indices of `names` in name order: the order of a record's keys.
    sorted: Vec<usize>,
    /// The column of the prefilter's id, when one asks and the file has it.
    id: Option<usize>,
    /// What every row's fingerprint is seeded with.
    hash: u64,
}

impl Header {
    fn new(names: Vec<String>, id_column: Option<&str>) -> Header {
        let mut sorted: Vec<usize> = (0..names.len()).collect();
        sorted.sort_by(|&a, &b| names[a].cmp(&names[b]));
        let id = id_column.and_then(|column| names.iter().position(|name| name == column));
        // Each name preceded by its length: no two lists of names give the
        // same bytes, whatever the names hold.
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for name in &names {
            hasher.update(&(name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
        }
        Header {
            names,
            sorted,
            id,
            hash: hasher.digest(),
        }
    }
}

/// One row's cells as csv-core unescaped them, under the header's names.
struct Cells<'a> {
    header: &'a Header,
    output: &'a [u8],
    ends: &'a [usize],
}

impl Cells<'_> {
    fn bytes(&self, index: usize) -> &[u8] {
        let start = match index {
            0 => 0,
            _ => self.ends[index - 1],
        };
        &self.output[start..self.ends[index]]
    }

    fn text(&self, index: usize) -> Option<&str> {
        std::str::from_utf8(self.bytes(index)).ok()
    }

    /// The record: each cell a string under its logical name, an empty
    /// cell `null`.
    fn fields(&self, path: &Path, line: u64) -> Result<Map<String, Value>, ExportError> {
        let end = self.ends.last().copied().unwrap_or(0);
        let Ok(text) = std::str::from_utf8(&self.output[..end]) else {
            // TextInput has checked every byte already; this stays an
            // error, not a panic, should that ever change.
            let index = (0..self.ends.len())
                .find(|&index| self.text(index).is_none())
                .unwrap_or(0);
            return Err(parse_error(
                path,
                line,
                1,
                format!(
                    "field {} (`{}`) is not valid UTF-8",
                    index + 1,
                    self.header.names[index]
                ),
            ));
        };
        // In name order, the order the map keeps them in.
        Ok(self
            .header
            .sorted
            .iter()
            .map(|&index| {
                let start = match index {
                    0 => 0,
                    _ => self.ends[index - 1],
                };
                let value = match text.get(start..self.ends[index]) {
                    Some("") | None => Value::Null,
                    Some(cell) => Value::String(cell.to_owned()),
                };
                (self.header.names[index].clone(), value)
            })
            .collect())
    }
}

impl RecordColumns for Cells<'_> {
    fn count(&self) -> usize {
        self.header.names.len()
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.header
            .sorted
            .iter()
            .map(|&index| self.header.names[index].as_str())
    }

    fn filled(&self, column: &str) -> bool {
        self.header
            .names
            .iter()
            .position(|name| name == column)
            .is_some_and(|index| self.text(index).is_some_and(|cell| !cell.trim().is_empty()))
    }
}

/// Bytes asked of the input at a time, at least.
const BLOCK: usize = 256 * 1024;

/// A row longer than this that [`Rows::scan_row`] has not found the end of
/// yet is left to csv-core, which reads it incrementally.
const SCAN_LIMIT: usize = 64 * 1024;

/// One cell of a plain row, as [`plain_cell`] finds it.
struct PlainCell {
    /// Its bytes, without the quotes around a quoted cell.
    bytes: std::ops::Range<usize>,
    /// Whether a quoted cell holds doubled quotes to unescape.
    doubled: bool,
    /// Where the delimiter or line end after it is.
    delimiter: usize,
    /// Line ends inside a quoted cell.
    newlines: u64,
}

/// The plain cell starting at `at`: unquoted without a `"`, or quoted with
/// every inner quote doubled and a delimiter or line end after the closing
/// one. Anything else is [`Scan::Unusual`]; a cell the window cuts is
/// [`Scan::NeedMore`].
#[inline]
fn plain_cell(data: &[u8], at: usize) -> Result<PlainCell, Scan> {
    let Some(&first) = data.get(at) else {
        return Err(Scan::NeedMore);
    };
    if first != b'"' {
        let Some(found) = memchr::memchr3(b',', b'\n', b'\r', &data[at..]) else {
            return Err(Scan::NeedMore);
        };
        let bytes = at..at + found;
        if memchr::memchr(b'"', &data[bytes.clone()]).is_some() {
            return Err(Scan::Unusual);
        }
        return Ok(PlainCell {
            bytes,
            doubled: false,
            delimiter: at + found,
            newlines: 0,
        });
    }
    let mut from = at + 1;
    let mut doubled = false;
    let close = loop {
        let Some(found) = memchr::memchr(b'"', &data[from..]) else {
            return Err(Scan::NeedMore);
        };
        let quote = from + found;
        match data.get(quote + 1) {
            None => return Err(Scan::NeedMore),
            Some(b'"') => {
                doubled = true;
                from = quote + 2;
            }
            Some(b',' | b'\n' | b'\r') => break quote,
            Some(_) => return Err(Scan::Unusual),
        }
    };
    let bytes = at + 1..close;
    // Line ends inside a cell are few: jump between them.
    let newlines = memchr::memchr_iter(b'\n', &data[bytes.clone()]).count() as u64;
    Ok(PlainCell {
        bytes,
        doubled,
        delimiter: close + 1,
        newlines,
    })
}

/// Append `cell` to `output` at `out`, each doubled quote as one (every `"`
/// inside a `doubled` cell is the first of a pair); where the cell ends.
#[inline]
fn unescape_cell(output: &mut Vec<u8>, mut out: usize, cell: &[u8], doubled: bool) -> usize {
    if out + cell.len() > output.len() {
        let grown = (out + cell.len()).max(output.len() * 2);
        output.resize(grown, 0);
    }
    if !doubled {
        output[out..out + cell.len()].copy_from_slice(cell);
        return out + cell.len();
    }
    let mut rest = cell;
    while let Some(quote) = memchr::memchr(b'"', rest) {
        output[out..=out + quote].copy_from_slice(&rest[..=quote]);
        out += quote + 1;
        rest = &rest[quote + 2..];
    }
    output[out..out + rest.len()].copy_from_slice(rest);
    out + rest.len()
}

/// What follows a cell whose delimiter is at `delimiter`.
enum After {
    /// Another cell, starting here.
    Cell(usize),
    /// The row's line end (`\n`, `\r\n` or `\r`), which ends at `next`;
    /// a lone `\r` is not a `newline` in csv-core's count of lines.
    LineEnd { next: usize, newline: bool },
}

#[inline]
fn after_cell(data: &[u8], delimiter: usize) -> Result<After, Scan> {
    match data[delimiter] {
        b',' => Ok(After::Cell(delimiter + 1)),
        b'\n' => Ok(After::LineEnd {
            next: delimiter + 1,
            newline: true,
        }),
        _ => match data.get(delimiter + 1) {
            None => Err(Scan::NeedMore),
            Some(b'\n') => Ok(After::LineEnd {
                next: delimiter + 2,
                newline: true,
            }),
            Some(_) => Ok(After::LineEnd {
                next: delimiter + 1,
                newline: false,
            }),
        },
    }
}

/// What [`Rows::scan_row`] found.
enum Scan {
    Row(Row),
    /// The window ends inside the row.
    NeedMore,
    /// Not a plain row: csv-core reads it and [`Rows::check`] says what is
    /// wrong with it, if anything.
    Unusual,
}

/// How a row's bytes end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowEnd {
    /// With a line end (`\n`, `\r\n` or `\r`), which its bytes include.
    LineEnd,
    /// With the end of the file.
    EndOfFile,
    /// Reading failed after these bytes; the error waits in
    /// [`Rows::failed`].
    Failed,
}

/// One row found in the window: `buffer[start..end]`, valid until the next
/// [`Rows::next_row`].
#[derive(Debug, Clone, Copy)]
struct Row {
    start: usize,
    end: usize,
    /// The line the row starts on.
    line: u64,
    /// Found plain by [`Rows::scan_row`]: nothing for [`Rows::check`] to
    /// refuse.
    plain: bool,
    /// The number of cells csv-core found, whose ends are in
    /// [`Rows::ends`].
    fields: usize,
    ending: RowEnd,
}

/// How many rows ahead [`Rows::peek_ahead`] glances.
const PEEK_ROWS: usize = 8;

/// How far [`Rows::peek_ahead`] looks for the end of a line, or of a cell.
const PEEK_LIMIT: usize = 4096;

/// A CSV file split into rows over a window of the input: plain rows by
/// [`Rows::scan_row`], the header and every other row by csv-core.
struct Rows<R> {
    input: R,
    buffer: Vec<u8>,
    /// `buffer[pos..end]` is read but not yet part of a row.
    pos: usize,
    end: usize,
    /// The next byte csv-core has not seen; past `pos` only by a
    /// byte-order mark csv-core dropped.
    feed: usize,
    at_eof: bool,
    failed: Option<io::Error>,
    parser: csv_core::Reader,
    /// Whether csv-core has seen the start of the file (it drops a
    /// byte-order mark there, as the csv crate's reader does).
    started: bool,
    /// csv-core has found the end of the file.
    done: bool,
    /// The current row's unescaped cells, one after the other, and where
    /// each ends.
    output: Vec<u8>,
    ends: Vec<usize>,
    /// Bytes of the file before `buffer[0]`.
    base: u64,
    /// Line ends csv-core has not seen: those of the blank lines skipped
    /// before a row and the `\n` of a `\r\n` that ends one.
    newlines_skipped: u64,
    /// The file offset just past the last `\n` before `buffer[0]`.
    line_start: u64,
    /// The file offset of the line [`Rows::peek_ahead`] glanced at last.
    ahead: u64,
}

impl<R: Read> Rows<R> {
    fn new(input: R) -> Self {
        Rows {
            input,
            buffer: vec![0; BLOCK],
            pos: 0,
            end: 0,
            feed: 0,
            at_eof: false,
            failed: None,
            parser: csv_core::Reader::new(),
            started: false,
            done: false,
            output: vec![0; 4096],
            ends: vec![0; 64],
            base: 0,
            newlines_skipped: 0,
            ahead: 0,
            line_start: 0,
        }
    }

    /// Read more of the input after `buffer[..end]`, moving `buffer[keep..]`
    /// to the front first when room is short. Returns how far the bytes
    /// moved back and whether any were added; at the end of the input or
    /// on a failed read, none are.
    fn fill(&mut self, keep: usize) -> (usize, bool) {
        if self.at_eof || self.failed.is_some() {
            return (0, false);
        }
        let mut shift = 0;
        if self.buffer.len() - self.end < BLOCK / 2 {
            // Where the line of the bytes kept starts, for columns.
            if let Some(last) = memchr::memrchr(b'\n', &self.buffer[..keep]) {
                self.line_start = self.base + last as u64 + 1;
            }
            shift = keep;
            self.buffer.copy_within(keep..self.end, 0);
            self.end -= keep;
            self.pos -= keep.min(self.pos);
            self.feed -= keep.min(self.feed);
            self.base += keep as u64;
            if self.buffer.len() - self.end < BLOCK / 2 {
                let grown = self.buffer.len() * 2;
                self.buffer.resize(grown, 0);
            }
        }
        loop {
            match self.input.read(&mut self.buffer[self.end..]) {
                Ok(0) => {
                    self.at_eof = true;
                    return (shift, false);
                }
                Ok(read) => {
                    self.end += read;
                    return (shift, true);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    self.failed = Some(error);
                    return (shift, false);
                }
            }
        }
    }

    /// Skip the blank lines before the next row, which csv-core would skip
    /// too; `false` at the end of the file.
    fn skip_blank_lines(&mut self) -> io::Result<bool> {
        if self.done {
            return Ok(false);
        }
        loop {
            match self.buffer[self.pos..self.end]
                .iter()
                .position(|&byte| byte != b'\n' && byte != b'\r')
            {
                Some(blank) => {
                    self.newlines_skipped +=
                        count_newlines(&self.buffer[self.pos..self.pos + blank]);
                    self.pos += blank;
                    return Ok(true);
                }
                None => {
                    self.newlines_skipped += count_newlines(&self.buffer[self.pos..self.end]);
                    self.pos = self.end;
                    if !self.fill(self.pos).1 {
                        if let Some(error) = self.failed.take() {
                            return Err(error);
                        }
                        self.done = true;
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// The next row after the header: found by [`scan_row`] when it is
    /// plain, else by csv-core, which also finds whatever is wrong with it.
    fn next_data_row(&mut self) -> io::Result<Option<Row>> {
        if !self.skip_blank_lines()? {
            return Ok(None);
        }
        loop {
            match self.scan_row() {
                Scan::Row(row) => return Ok(Some(row)),
                Scan::NeedMore if self.end - self.pos <= SCAN_LIMIT => {
                    if !self.fill(self.pos).1 {
                        break;
                    }
                }
                Scan::NeedMore | Scan::Unusual => break,
            }
        }
        self.next_row()
    }

    /// Find the row at `pos` with a scan of its structure, jumping from
    /// delimiter to delimiter and from quote to quote, and unescape its
    /// cells into [`Self::output`] as csv-core would. Only a plain row is
    /// taken: cells either unquoted without a `"` or quoted with every
    /// inner quote doubled and a delimiter after the closing one, and a
    /// line end after the last cell. csv-core reads such a row exactly so;
    /// anything else is left to it.
    fn scan_row(&mut self) -> Scan {
        let data = &self.buffer[self.pos..self.end];
        let (mut out, mut fields, mut newlines) = (0, 0, 0);
        let mut at = 0;
        let end = loop {
            let cell = match plain_cell(data, at) {
                Ok(cell) => cell,
                Err(scan) => return scan,
            };
            newlines += cell.newlines;
            out = unescape_cell(
                &mut self.output,
                out,
                &data[cell.bytes.clone()],
                cell.doubled,
            );
            if fields == self.ends.len() {
                let grown = self.ends.len() * 2;
                self.ends.resize(grown, 0);
            }
            self.ends[fields] = out;
            fields += 1;
            match after_cell(data, cell.delimiter) {
                Ok(After::Cell(next)) => at = next,
                Ok(After::LineEnd { next, newline }) => {
                    newlines += u64::from(newline);
                    break next;
                }
                Err(scan) => return scan,
            }
        };
        let row = Row {
            start: self.pos,
            end: self.pos + end,
            line: self.parser.line() + self.newlines_skipped,
            plain: true,
            fields,
            ending: RowEnd::LineEnd,
        };
        // csv-core does not see these bytes.
        self.newlines_skipped += newlines;
        self.pos = row.end;
        self.feed = row.end;
        Scan::Row(row)
    }

    /// The next row, skipping blank lines; `None` at the end of the file.
    /// A failed read before any byte of a row is returned as the error.
    fn next_row(&mut self) -> io::Result<Option<Row>> {
        if !self.started {
            self.start()?;
        }
        if !self.skip_blank_lines()? {
            return Ok(None);
        }
        let mut start = self.pos;
        let line = self.parser.line() + self.newlines_skipped;
        let mut feed = self.feed.max(start);
        let (mut out, mut fields) = (0, 0);
        let ending = loop {
            let input = &self.buffer[feed..self.end];
            let last = input.is_empty();
            let (result, read, written, ended) =
                self.parser
                    .read_record(input, &mut self.output[out..], &mut self.ends[fields..]);
            feed += read;
            out += written;
            fields += ended;
            match result {
                csv_core::ReadRecordResult::InputEmpty => {
                    let (shift, more) = self.fill(start);
                    start -= shift;
                    feed -= shift;
                    if !more && self.failed.is_some() {
                        self.pos = self.end;
                        self.feed = self.end;
                        return Ok(Some(Row {
                            start,
                            end: self.end,
                            line,
                            plain: false,
                            fields,
                            ending: RowEnd::Failed,
                        }));
                    }
                }
                csv_core::ReadRecordResult::OutputFull => {
                    let grown = self.output.len() * 2;
                    self.output.resize(grown, 0);
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    let grown = self.ends.len() * 2;
                    self.ends.resize(grown, 0);
                }
                csv_core::ReadRecordResult::Record if last => break RowEnd::EndOfFile,
                csv_core::ReadRecordResult::Record => break RowEnd::LineEnd,
                csv_core::ReadRecordResult::End => {
                    self.done = true;
                    return Ok(None);
                }
            }
        };
        // csv-core ends a row at its `\r`; the `\n` of a `\r\n` is part of
        // the row's bytes too.
        if ending == RowEnd::LineEnd && self.buffer[feed - 1] == b'\r' {
            if feed == self.end {
                let (shift, _) = self.fill(start);
                start -= shift;
                feed -= shift;
            }
            if feed < self.end && self.buffer[feed] == b'\n' {
                feed += 1;
                self.newlines_skipped += 1;
            }
        }
        self.pos = feed;
        self.feed = feed;
        Ok(Some(Row {
            start,
            end: feed,
            line,
            plain: false,
            fields,
            ending,
        }))
    }

    /// Let csv-core see the start of the file, as the csv crate's reader
    /// would hand it over, so that it drops a byte-order mark exactly when
    /// that reader does (TextInput has dropped the first one already).
    fn start(&mut self) -> io::Result<()> {
        self.started = true;
        while self.end <= 3 && self.fill(0).1 {}
        if self.end == 0 {
            if let Some(error) = self.failed.take() {
                return Err(error);
            }
            self.done = true;
            return Ok(());
        }
        let (result, read, _, _) =
            self.parser
                .read_record(&self.buffer[..self.end], &mut [], &mut self.ends);
        if result == csv_core::ReadRecordResult::End {
            // Nothing after the mark.
            self.done = true;
        }
        self.feed = read;
        Ok(())
    }

    fn raw(&self, row: &Row) -> &[u8] {
        &self.buffer[row.start..row.end]
    }

    /// The first cell of a line a few rows past the one read last, when it
    /// is unquoted and already in the window. Lines are taken for rows (a
    /// quoted line end makes the glance land mid-row, which only makes it
    /// useless): a guess, to be confirmed by reading the row.
    fn peek_ahead(&mut self) -> Option<&str> {
        let pos = self.base + self.pos as u64;
        let (mut at, lines) = if self.ahead > pos {
            // One line on from the last glance.
            (usize::try_from(self.ahead - self.base).ok()?, 1)
        } else {
            // Past the line end of the row read last, the next row starts;
            // the glance goes a few lines further.
            let rest = self.buffer.get(self.pos..self.end)?;
            let start = rest
                .iter()
                .position(|&byte| byte != b'\n' && byte != b'\r')?;
            (self.pos + start, PEEK_ROWS - 1)
        };
        for _ in 0..lines {
            let rest = self.buffer.get(at..self.end)?;
            at += memchr::memchr(b'\n', &rest[..rest.len().min(PEEK_LIMIT)])? + 1;
        }
        self.ahead = self.base + at as u64;
        let rest = self.buffer.get(at..self.end)?;
        let rest = &rest[..rest.len().min(PEEK_LIMIT)];
        let stop = memchr::memchr3(b',', b'\n', b'"', rest)?;
        if rest[stop] == b'"' {
            return None;
        }
        std::str::from_utf8(rest[..stop].strip_suffix(b"\r").unwrap_or(&rest[..stop])).ok()
    }

    /// The cells of `row`, the row read last.
    fn cells(&self, row: &Row) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends[..row.fields].iter().map(move |&end| {
            let cell = &self.output[start..end];
            start = end;
            cell
        })
    }

    /// The line and column (1-based, in bytes) of the byte `at` bytes into
    /// `row`.
    fn place(&self, row: &Row, at: usize) -> (u64, u64) {
        let offset = row.start + at;
        let line = row.line + count_newlines(&self.buffer[row.start..offset]);
        let column = match memchr::memrchr(b'\n', &self.buffer[..offset]) {
            Some(newline) => (offset - newline) as u64,
            None => self.base + offset as u64 - self.line_start + 1,
        };
        (line, column)
    }

    /// Refuse a row whose quoting the csv crate would let pass, a row cut
    /// off by the end of the file where a line end is required, and a row
    /// cut off by a failed read, in the order a reader that checks every
    /// byte as it comes finds them.
    fn check(&mut self, path: &Path, row: &Row, line_end: FinalLineEnd) -> Result<(), ExportError> {
        if row.plain {
            return Ok(());
        }
        let raw = self.raw(row);
        let last_byte = raw.last().copied();
        let quoting = match memchr::memchr(b'"', raw) {
            None => Ok(Quoting::Closed),
            Some(first) => scan_quotes(raw, first),
        };
        let error = |rows: &mut Self, at: usize, message: String| {
            let (line, column) = rows.place(row, at);
            parse_error(path, line, column, message)
        };
        let ending = match quoting {
            Err(QuoteDefect::InUnquoted { at }) => {
                return Err(error(self, at, UNQUOTED_QUOTE.to_owned()));
            }
            Err(QuoteDefect::AfterClosing { open, at }) => {
                let (open_line, open_column) = self.place(row, open);
                let (line, column) = self.place(row, at);
                let opened = if open_line == line {
                    format!("column {open_column}")
                } else {
                    format!("line {open_line} column {open_column}")
                };
                return Err(parse_error(
                    path,
                    line,
                    column,
                    format!(
                        "text after the closing quote of the field quoted at {opened}: a quote inside a quoted field is written twice (`\"\"`)"
                    ),
                ));
            }
            Ok(ending) => ending,
        };
        match row.ending {
            RowEnd::LineEnd => Ok(()),
            RowEnd::Failed => {
                let failed = self
                    .failed
                    .take()
                    .unwrap_or_else(|| io::Error::other("the read failed"));
                Err(input_error(path, failed))
            }
            RowEnd::EndOfFile => {
                if let Quoting::Open { open } = ending {
                    return Err(error(
                        self,
                        open,
                        "quoted field is never closed: the quote opened here has no closing `\"`"
                            .into(),
                    ));
                }
                let ends_a_line =
                    ending == Quoting::Closed && matches!(last_byte, Some(b'\n' | b'\r'));
                if line_end == FinalLineEnd::Required && !ends_a_line {
                    return Err(error(self, row.end - row.start, NO_FINAL_LINE_END.into()));
                }
                Ok(())
            }
        }
    }
}

const UNQUOTED_QUOTE: &str = "a quote inside a field that does not start with one: quote the whole field and write the quote twice (`\"\"`)";

/// How a row's bytes leave the quoting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// Outside any quoted field.
    Closed,
    /// Inside the field quoted at this offset.
    Open { open: usize },
    /// Right after the closing quote of a field.
    AfterClosing,
}

/// A quote where the default dialect allows none. The csv crate would keep
/// the text (`"ACME" Corp` → `ACME Corp`, `"quote"inside` → `quoteinside`),
/// so a damaged or hand-edited file would pass as something nobody wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuoteDefect {
    /// A `"` at `at`, inside a field that does not start with one.
    InUnquoted { at: usize },
    /// Text at `at` after the closing quote of the field quoted at `open`.
    AfterClosing { open: usize, at: usize },
}

/// Follow the quoting of `raw`, which starts outside any field and holds
/// its first `"` at `first`, from quote to quote: a `"` opens a field when
/// it follows the start, a `,` or a line end; inside a quoted field only
/// `""` and the closing quote matter, and a closing quote is followed by
/// a `,`, a line end or nothing.
fn scan_quotes(raw: &[u8], first: usize) -> Result<Quoting, QuoteDefect> {
    let mut quote = first;
    loop {
        if quote > 0 && !matches!(raw[quote - 1], b',' | b'\n' | b'\r') {
            return Err(QuoteDefect::InUnquoted { at: quote });
        }
        let open = quote;
        let mut from = open + 1;
        let after = loop {
            let Some(found) = memchr::memchr(b'"', &raw[from..]) else {
                return Ok(Quoting::Open { open });
            };
            let close = from + found;
            match raw.get(close + 1) {
                Some(b'"') => from = close + 2,
                Some(b',' | b'\n' | b'\r') => break close + 1,
                Some(_) => {
                    return Err(QuoteDefect::AfterClosing {
                        open,
                        at: close + 1,
                    });
                }
                None => return Ok(Quoting::AfterClosing),
            }
        };
        match memchr::memchr(b'"', &raw[after..]) {
            Some(next) => quote = after + next,
            None => return Ok(Quoting::Closed),
        }
    }
}

/// Where the header's fields start in its bytes: where a byte-by-byte
/// reader first sees each field, up to the header's line end. A field with
/// no byte of its own (after a last `,` at the end of the file) has none.
fn header_field_starts(raw: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut field_start = true;
    let mut quoted = false;
    let mut at = 0;
    while at < raw.len() {
        let byte = raw[at];
        if field_start {
            if byte == b'\n' || byte == b'\r' {
                if starts.is_empty() {
                    at += 1;
                    continue;
                }
                starts.push(at);
                break;
            }
            starts.push(at);
            field_start = false;
            quoted = byte == b'"';
            at += 1;
            continue;
        }
        match (quoted, byte) {
            (true, b'"') if raw.get(at + 1) == Some(&b'"') => at += 1,
            (true, b'"') => quoted = false,
            (true, _) => {}
            (false, b',') => field_start = true,
            (false, b'\n' | b'\r') => break,
            (false, _) => {}
        }
        at += 1;
    }
    starts
}

/// The logical names of the header cells. An empty header or two cells that
/// name the same column would make rows ambiguous.
fn logical_columns<'a>(
    path: &Path,
    header: impl Iterator<Item = &'a [u8]>,
    header_line: u64,
    field_starts: &[(u64, u64)],
    aliases: &HeaderAliases,
) -> Result<Vec<String>, ExportError> {
    let place = |index: usize| field_starts.get(index).copied().unwrap_or((header_line, 1));
    let mut columns: Vec<String> = Vec::new();
    for (index, cell) in header.enumerate() {
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

#[cfg(test)]
mod tests {
    use super::super::Trickle;
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

    /// What a read gave: the outcome (an error as its text), and each
    /// record's fields, line and ordinal.
    type Outcome = (Result<ControlFlow<()>, String>, Vec<(Value, u64, u64)>);

    fn outcome((result, records): (FileOutcome, Vec<Record>)) -> Outcome {
        (
            result.map_err(|error| error.to_string()),
            records
                .into_iter()
                .map(|record| {
                    (
                        Value::Object(record.fields),
                        record.location.line,
                        record.location.ordinal,
                    )
                })
                .collect(),
        )
    }

    fn read_chunked(
        content: &[u8],
        aliases: &HeaderAliases,
        line_end: FinalLineEnd,
        chunk: usize,
    ) -> (FileOutcome, Vec<Record>) {
        collect_records(None, |sink| {
            read_csv(
                Path::new(FILE),
                TextInput::new(Trickle {
                    bytes: content,
                    chunk,
                }),
                aliases,
                line_end,
                sink,
            )
        })
    }

    fn read_by_reference(
        content: &[u8],
        aliases: &HeaderAliases,
        line_end: FinalLineEnd,
    ) -> (FileOutcome, Vec<Record>) {
        collect_records(None, |sink| {
            reference::read_csv(
                Path::new(FILE),
                TextInput::new(content),
                aliases,
                line_end,
                sink,
            )
        })
    }

    /// Both readers, in both final-line-end modes and with reads of a few
    /// sizes, give the same records and the same outcome.
    fn assert_same_as_reference(content: &[u8], aliases: &HeaderAliases) {
        for line_end in [FinalLineEnd::Required, FinalLineEnd::Optional] {
            let expected = outcome(read_by_reference(content, aliases, line_end));
            for chunk in [1, 3, 64, usize::MAX] {
                let actual = outcome(read_chunked(content, aliases, line_end, chunk));
                assert_eq!(
                    actual,
                    expected,
                    "{:?}, {line_end:?}, reads of {chunk}",
                    String::from_utf8_lossy(content)
                );
            }
        }
    }

    #[test]
    fn the_table_cases_read_as_the_reference_reads_them() {
        let display = aliases(&[("Lead", "leadid"), ("Topic", "subject")]);
        let cases: &[&[u8]] = &[
            b"",
            b"\n\r\n",
            b"a,b\n1,2\n3\n",
            b"a,b\n1,\"x\ny\"\n3,4,5\n",
            b"a,b\n1,2\n3,\"four\n5,6\n",
            b"a,b\n\"1\"\"\n",
            b"a,b,\r\n1,2,3\r\n",
            b"a,b,",
            b"\xEF\xBB\xBFa,b,\"x\ny\",a\n",
            b"\xEF\xBB\xBF\xEF\xBB\xBFa,b\n1,2\n",
            b"\xEF\xBB\xBF\n\n\"a\",b\n1,2\n",
            b"\xEF\xBB\xBF\xEF\xBB\xBF",
            b"Lead,subject,Topic\n",
            b"a,b\n1,caf\xE9\n",
            b"a,b\n1,\"caf\xE9\"\"\n",
            b"a,b\n1,\"ok\"x\xE9\n",
            b"a,b\n1,2\xE2\x82",
            b"name,size\nscreen,27\" wide\n",
            b"a,b\n\"ACME\" Corp,2\n",
            b"a,b\n1,\"two\nlines\"x\n",
            b"a,\"b\"c\n",
            b"a\rb\r\"c\"d\r",
            b"a\r\r\n\r1\r\n2\r",
            b"a\n\"x\"\"y\"",
            b"a\n\"x\"",
            b"a,b\n1,",
            b"a\n  ",
            b"a\n\"\"\n\"\"\"\"\n",
        ];
        for content in cases {
            assert_same_as_reference(content, &display);
        }
    }

    #[test]
    fn rows_across_many_refills_read_as_the_reference_reads_them() {
        // Several windows' worth, a cell longer than a window, multi-line
        // cells and every line end, and a problem at the very end.
        let mut content = b"leadid,subject,notes\r\n".to_vec();
        for n in 0..40_000 {
            let notes = match n % 7 {
                0 => "\"two\nlines, \"\"quoted\"\"\"".to_owned(),
                1 => String::new(),
                2 => "\u{20ac}\u{e3}".repeat(n % 50),
                _ => format!("note {n}"),
            };
            let end = ["\n", "\r\n", "\r"][n % 3];
            content.extend_from_slice(format!("L-{n},\"Lead {n}\",{notes}{end}").as_bytes());
            if n == 20_000 {
                let long = "x".repeat(3 * BLOCK);
                content.extend_from_slice(format!("L-long,\"{long}\",\"{long}\"\n").as_bytes());
            }
        }
        let none = HeaderAliases::default();
        let expected = outcome(read_by_reference(&content, &none, FinalLineEnd::Required));
        assert_eq!(expected.0, Ok(ControlFlow::Continue(())));
        assert_eq!(expected.1.len(), 40_001);
        for chunk in [4093, usize::MAX] {
            let actual = outcome(read_chunked(&content, &none, FinalLineEnd::Required, chunk));
            assert!(actual == expected, "reads of {chunk}");
        }
        content.extend_from_slice(b"last,\"ACME\" Corp,x\n");
        let expected = outcome(read_by_reference(&content, &none, FinalLineEnd::Required));
        assert!(expected.0.is_err());
        let actual = outcome(read_chunked(
            &content,
            &none,
            FinalLineEnd::Required,
            65_537,
        ));
        assert!(actual == expected);
    }

    fn fingerprints(content: &str, aliases: &HeaderAliases) -> Vec<RawFingerprint> {
        let (result, records) = read(content.as_bytes(), aliases);
        assert_eq!(result.unwrap(), ControlFlow::Continue(()), "{content:?}");
        records.iter().map(|record| record.fingerprint).collect()
    }

    #[test]
    fn a_fingerprint_follows_the_bytes_of_its_row_and_the_resolved_header() {
        let none = HeaderAliases::default();
        let base = fingerprints("leadid,subject\nL-1,\"One, two\"\nL-2,\n", &none);
        assert_eq!(base.len(), 2);
        assert_ne!(base[0], base[1]);
        // Any cell's bytes, its quoting, its line end.
        for changed in [
            "leadid,subject\nL-9,\"One, two\"\n",
            "leadid,subject\nL-1,\"One, twO\"\n",
            "leadid,subject\nL-1,\"One, two \"\n",
            "leadid,subject\nL-1,\"One, two\"\r\n",
        ] {
            assert_ne!(fingerprints(changed, &none)[0], base[0], "{changed:?}");
        }
        // The same row under the same resolved header, elsewhere in another
        // file, whether the header uses logical or display names.
        let display = aliases(&[("Lead", "leadid"), ("Topic", "subject")]);
        for same in [
            ("leadid,subject\nL-0,x\n\n\nL-1,\"One, two\"\n", &none, 1),
            ("\u{feff}Lead, topic \r\nL-1,\"One, two\"\n", &display, 0),
        ] {
            let (content, aliases, index) = same;
            assert_eq!(
                fingerprints(content, aliases)[index],
                base[0],
                "{content:?}"
            );
        }
        // The same bytes under other resolved names.
        for other in [
            ("leadid,name\nL-1,\"One, two\"\n", &none),
            ("subject,leadid\nL-1,\"One, two\"\n", &none),
            ("Lead,Topic\nL-1,\"One, two\"\n", &none),
            (
                "Lead,Topic\nL-1,\"One, two\"\n",
                &aliases(&[("Lead", "leadid"), ("Topic", "name")]),
            ),
        ] {
            let (content, aliases) = other;
            assert_ne!(fingerprints(content, aliases)[0], base[0], "{content:?}");
        }
    }

    /// Knows the rows whose id is in `known`; notes every row it is asked
    /// about.
    struct Knows {
        known: Vec<&'static str>,
        asked: Vec<(String, RawFingerprint, u64, u64)>,
        /// The ids it was told to expect, in order.
        expected: Vec<String>,
    }

    impl super::super::Prefilter for Knows {
        fn id_column(&self) -> &str {
            "leadid"
        }

        fn known(
            &mut self,
            id: &str,
            fingerprint: RawFingerprint,
            place: super::super::Place<'_>,
        ) -> bool {
            self.asked
                .push((id.to_owned(), fingerprint, place.line, place.ordinal));
            self.known.contains(&id)
        }

        fn expect(&mut self, id: &str) {
            self.expected.push(id.to_owned());
        }
    }

    /// A lead export in CSV whose `Lead` column is the id.
    fn lead_options() -> super::super::ExportOptions {
        super::super::ExportOptions {
            path: std::path::PathBuf::new(),
            format: super::super::ExportFormat::Csv,
            entity: crate::model::Entity::Lead,
            header_aliases: BTreeMap::from([("Lead".to_owned(), "leadid".to_owned())]),
            checks: super::super::ExportChecks::default(),
        }
    }

    /// The ids a prefilter is told to expect reading `content`, and the
    /// ids it is asked about.
    fn expected_and_asked(content: &[u8]) -> (Vec<String>, Vec<String>) {
        use super::super::read_export_bytes_with;
        let options = lead_options();
        let mut knows = Knows {
            known: vec!["L-2"],
            asked: Vec::new(),
            expected: Vec::new(),
        };
        read_export_bytes_with(
            &options,
            Path::new(FILE),
            content,
            Some(&mut knows),
            &mut |_| ControlFlow::Continue(()),
        )
        .unwrap();
        let asked = knows.asked.into_iter().map(|(id, ..)| id).collect();
        (knows.expected, asked)
    }

    #[test]
    fn the_id_of_a_row_a_few_lines_on_is_expected_before_the_row_is_read() {
        let count = PEEK_ROWS + 4;
        let rows: Vec<String> = (1..=count)
            .map(|n| format!("L-{n},Subject {n},\r\n"))
            .collect();
        let content = format!("Lead,subject,notes\r\n{}", rows.concat());
        let (expected, asked) = expected_and_asked(content.as_bytes());
        // After the first row, the one PEEK_ROWS on; then one row on after
        // each, to the last.
        let glanced: Vec<String> = (PEEK_ROWS + 1..=count).map(|n| format!("L-{n}")).collect();
        assert_eq!(expected, glanced);
        assert_eq!(asked.len(), count);

        // A quoted id is not glanced at; a quoted line end makes a glance
        // land mid-row, which gives a wrong guess and changes no answer.
        let mut rows: Vec<String> = (1..=count).map(|n| format!("L-{n},x,\n")).collect();
        rows[1] = "L-2,\"two\nlines\",\n".into();
        rows[PEEK_ROWS + 1] = format!("\"L-{}\",x,\n", PEEK_ROWS + 2);
        let content = format!("Lead,subject,notes\n{}", rows.concat());
        let (expected, asked) = expected_and_asked(content.as_bytes());
        assert!(!expected.iter().any(|id| id.contains('"')), "{expected:?}");
        assert!(expected.contains(&format!("L-{count}")), "{expected:?}");
        let all: Vec<String> = (1..=count).map(|n| format!("L-{n}")).collect();
        assert_eq!(asked, all);

        // The id in another column: no glance.
        let content = "subject,Lead\na,L-1\nb,L-2\nc,L-3\nd,L-4\ne,L-5\nf,L-6\n";
        let (expected, asked) = expected_and_asked(content.as_bytes());
        assert!(expected.is_empty(), "{expected:?}");
        assert_eq!(asked.len(), 6);
    }

    #[test]
    fn a_prefilter_sees_every_row_and_a_known_row_is_not_built() {
        use super::super::{read_export_bytes, read_export_bytes_with};
        let options = lead_options();
        // Only the known row gives `notes` a value; the row without an id
        // is not asked about.
        let content =
            b"Lead,subject,notes\nL-1,One,\nL-2,\"Two\nlines\",seen\n,Three,\nL-4,Four,\n";
        let mut all = Vec::new();
        let plain = read_export_bytes(&options, Path::new(FILE), content, &mut |record| {
            all.push(record);
            ControlFlow::Continue(())
        })
        .unwrap();
        let mut knows = Knows {
            known: vec!["L-2", "L-9"],
            asked: Vec::new(),
            expected: Vec::new(),
        };
        let mut handed = Vec::new();
        let filtered = read_export_bytes_with(
            &options,
            Path::new(FILE),
            content,
            Some(&mut knows),
            &mut |record| {
                handed.push(record);
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        let asked: Vec<(String, RawFingerprint, u64, u64)> = [0, 1, 3]
            .iter()
            .map(|&index| {
                let record: &Record = &all[index];
                (
                    record.fields["leadid"].as_str().unwrap().to_owned(),
                    record.fingerprint,
                    record.location.line,
                    record.location.ordinal,
                )
            })
            .collect();
        assert_eq!(knows.asked, asked);
        let expected: Vec<Record> = [0, 2, 3].iter().map(|&index| all[index].clone()).collect();
        assert_eq!(handed, expected);
        assert_eq!(filtered.columns, plain.columns);
        assert_eq!(
            filtered.columns.get("notes"),
            Some(&super::super::ColumnSeen::WithValues)
        );
        assert_eq!((filtered.records, plain.records), (4, 4));
    }

    mod equivalence {
        use proptest::prelude::*;

        use super::*;

        fn cell() -> impl Strategy<Value = (String, bool)> {
            ("[a-z ,\"\n\r\u{e3}\u{20ac}]{0,6}", any::<bool>())
        }

        /// A cell as a writer puts it: quoted (quotes doubled) when it must
        /// be or when the writer quotes everything.
        fn render((text, quote): &(String, bool)) -> String {
            let must = text.contains([',', '"', '\n', '\r']);
            if must || *quote {
                format!("\"{}\"", text.replace('"', "\"\""))
            } else {
                text.clone()
            }
        }

        fn line_end() -> impl Strategy<Value = &'static str> {
            prop_oneof![Just("\n"), Just("\r\n"), Just("\r")]
        }

        /// A file: a header of distinct names, rows (now and then of the
        /// wrong width) with any line ends and blank lines between them, a
        /// byte-order mark or not, a last line end or not. Also the rows'
        /// texts, each with its line end.
        fn file() -> impl Strategy<Value = (String, String, Vec<String>)> {
            (
                proptest::collection::btree_set("[a-z]{1,5}", 1..4),
                proptest::collection::vec(
                    (
                        proptest::collection::vec(cell(), 1..4),
                        line_end(),
                        proptest::collection::vec(line_end(), 0..2),
                    ),
                    0..6,
                ),
                any::<bool>(),
                any::<bool>(),
                line_end(),
            )
                .prop_map(|(names, rows, bom, last_end, header_end)| {
                    let names: Vec<String> = names.into_iter().collect();
                    let width = names.len();
                    let header = format!("{}{header_end}", names.join(","));
                    let mut text = if bom {
                        "\u{feff}".to_owned()
                    } else {
                        String::new()
                    };
                    text.push_str(&header);
                    let mut row_texts = Vec::new();
                    let count = rows.len();
                    for (index, (cells, end, blanks)) in rows.into_iter().enumerate() {
                        // Now and then one cell short.
                        let take = if cells.len() == 3 && width > 1 {
                            width - 1
                        } else {
                            width
                        };
                        let cells: Vec<String> =
                            (0..take).map(|n| render(&cells[n % cells.len()])).collect();
                        let mut row = cells.join(",");
                        if row.is_empty() {
                            row.push_str("\"\"");
                        }
                        let ended = index + 1 < count || last_end;
                        if ended {
                            row.push_str(end);
                        }
                        text.push_str(&row);
                        // Blank lines only after a line end: they would end
                        // an open last row.
                        let blanks = if ended {
                            blanks.concat()
                        } else {
                            String::new()
                        };
                        text.push_str(&blanks);
                        // A `\r` and the `\n` after it end the row together.
                        if row.ends_with('\r') && blanks.starts_with('\n') {
                            row.push('\n');
                        }
                        row_texts.push(row);
                    }
                    (text, header, row_texts)
                })
        }

        /// Knows the rows whose id has an even length; notes the id, line
        /// and ordinal of every row it is asked about.
        struct EvenIds {
            column: String,
            asked: Vec<(String, u64, u64)>,
        }

        impl super::super::super::Prefilter for EvenIds {
            fn id_column(&self) -> &str {
                &self.column
            }

            fn known(
                &mut self,
                id: &str,
                _fingerprint: RawFingerprint,
                place: super::super::super::Place<'_>,
            ) -> bool {
                self.asked.push((id.to_owned(), place.line, place.ordinal));
                id.len().is_multiple_of(2)
            }
        }

        /// The outcome of a read with an [`EvenIds`] prefilter, the rows it
        /// was asked about and the census.
        fn read_knowing(
            content: &[u8],
            column: &str,
            line_end: FinalLineEnd,
            by_reference: bool,
        ) -> (Outcome, Vec<(String, u64, u64)>, String) {
            let mut prefilter = EvenIds {
                column: column.to_owned(),
                asked: Vec::new(),
            };
            let mut records = Vec::new();
            let mut keep = |record: Record| {
                records.push(record);
                ControlFlow::Continue(())
            };
            let mut sink = Sink::with_prefilter(&mut keep, Some(&mut prefilter));
            let none = HeaderAliases::default();
            let result = if by_reference {
                reference::read_csv(
                    Path::new(FILE),
                    TextInput::new(content),
                    &none,
                    line_end,
                    &mut sink,
                )
            } else {
                read_csv(
                    Path::new(FILE),
                    TextInput::new(content),
                    &none,
                    line_end,
                    &mut sink,
                )
            };
            let census = format!("{:?} {}", sink.census.columns, sink.records);
            drop(sink);
            (outcome((result, records)), prefilter.asked, census)
        }

        proptest! {
            #[test]
            fn generated_files_read_as_the_reference_reads_them((content, _, _) in file()) {
                assert_same_as_reference(content.as_bytes(), &HeaderAliases::default());
            }

            #[test]
            fn damaged_files_read_as_the_reference_reads_them(
                (content, _, _) in file(),
                at in any::<prop::sample::Index>(),
                byte in prop_oneof![
                    Just(b'"'), Just(b','), Just(b'\n'), Just(b'\r'), Just(0xE9), any::<u8>()
                ],
                cut in any::<bool>(),
            ) {
                let mut bytes = content.into_bytes();
                if !bytes.is_empty() {
                    let at = at.index(bytes.len());
                    if cut {
                        bytes.truncate(at);
                    } else {
                        bytes[at] = byte;
                    }
                }
                assert_same_as_reference(&bytes, &HeaderAliases::default());
            }

            #[test]
            fn with_a_prefilter_both_readers_hand_over_and_ask_about_the_same_rows(
                (content, header, _) in file(),
                at in any::<prop::sample::Index>(),
                byte in any::<u8>(),
            ) {
                // Rows whose id has an even length are known; a damaged
                // file as well.
                let column = header.split([',', '\r', '\n']).next().unwrap_or_default().to_owned();
                let mut damaged = content.clone().into_bytes();
                let index = at.index(damaged.len());
                damaged[index] = byte;
                for bytes in [content.as_bytes(), &damaged] {
                    for line_end in [FinalLineEnd::Required, FinalLineEnd::Optional] {
                        let new = read_knowing(bytes, &column, line_end, false);
                        let old = read_knowing(bytes, &column, line_end, true);
                        prop_assert_eq!(new, old);
                    }
                }
            }

            #[test]
            fn a_row_keeps_its_fingerprint_in_another_file((content, header, rows) in file()) {
                // Each row read alone after the same header, with other
                // blank lines around it, has the fingerprint it had.
                let none = HeaderAliases::default();
                let (result, records) = read_with(content.as_bytes(), &none, FinalLineEnd::Optional);
                if result.is_err() {
                    // A ragged row: nothing to compare.
                    return Ok(());
                }
                prop_assert_eq!(records.len(), rows.len());
                for (record, row) in records.iter().zip(&rows) {
                    let alone = format!("{header}\r\n\n{row}");
                    let (result, again) = read_with(alone.as_bytes(), &none, FinalLineEnd::Optional);
                    prop_assert!(result.is_ok());
                    prop_assert_eq!(again.len(), 1);
                    prop_assert_eq!(again[0].fingerprint, record.fingerprint);
                    prop_assert_eq!(&again[0].fields, &record.fields);
                }
            }
        }
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
