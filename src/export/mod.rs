//! Export readers: Dynamics 365 exports on disk → [`Record`]s, streamed.
//!
//! Three shapes are read (see `../shared/spec/dynamics-export.md`): Web API
//! (OData v4) JSON pages — one file or a directory of page files —, CSV with
//! logical or display-name headers, and JSON Lines. Records are handed to a
//! callback one at a time; no reader holds the whole export in memory.
//!
//! Only a whole, settled export that does not change under the reader is
//! read: only regular files (opened without blocking, so that a FIFO or a
//! device is refused, not waited on), none modified within
//! `export.settle_secs`, every CSV and JSON Lines file ending with a line
//! end, and every file, and the list of files, the same at the end of the
//! read as when the export was listed.

mod blocks;
mod csv;
mod detect;
mod json;
mod jsonl;
mod odata;
mod structure;
mod text;

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::ops::ControlFlow;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::Entity;

use self::csv::{HeaderAliases, read_csv};
use self::detect::{FileFormat, file_format};
use self::jsonl::read_jsonl;
use self::odata::read_odata;
use self::text::{InputDefect, TextInput};

/// The shape of an export, as configured by `export.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ExportFormat {
    /// Decided per file from its extension (`.json` → OData, `.csv`,
    /// `.jsonl`/`.ndjson`), else from its content: `[`, or a `{` whose
    /// object has a `value` array → OData; another `{` whose object is
    /// complete on its first line → JSON Lines; another `{` → OData (so the
    /// error says what is wrong); anything else → CSV.
    #[default]
    Auto,
    OdataJson,
    Csv,
    Jsonl,
}

/// What a reader needs to know.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// A file, or a directory whose files together form one export, read
    /// in the order of their names with digit runs compared as numbers
    /// (`page-2` before `page-10`). Subdirectories, hidden files, Office
    /// lock files (`~$…`) and files being written (ending in `.tmp`,
    /// `.part`, `.partial` or `~`) are skipped; any other entry that is
    /// not a regular file (a FIFO, a socket, a device) is an error.
    pub path: PathBuf,
    pub format: ExportFormat,
    pub entity: Entity,
    /// CSV display-name header → logical column name (e.g. `"Est. Revenue"`
    /// → `"estimatedvalue"`). Matched case-insensitively after trimming.
    /// Headers that are not in the table are kept as they are, trimmed.
    pub header_aliases: BTreeMap<String, String>,
    /// When an export is complete enough to be read.
    pub checks: ExportChecks,
}

/// When an export is complete enough to be read: `export.require_final_newline`
/// and `export.settle_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportChecks {
    /// Whether a CSV or JSON Lines file must end with a line end.
    pub final_line_end: FinalLineEnd,
    /// A file modified less than this long ago is not read (it may still be
    /// being written). Zero: every file is read at once.
    pub settle: Duration,
}

impl Default for ExportChecks {
    fn default() -> Self {
        ExportChecks {
            final_line_end: FinalLineEnd::Required,
            settle: Duration::ZERO,
        }
    }
}

/// Whether the last line of a CSV or JSON Lines file must have a line end.
/// A writer cut off in the middle of its last row leaves a row that may
/// still have the right number of cells (`12` for `125000`): without a
/// line end it cannot be told from a complete one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalLineEnd {
    /// A last line without a line end is an error naming it.
    Required,
    /// The exporter writes no final line end: the last line is taken as it is.
    Optional,
}

/// Where a record came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordLocation {
    pub file: PathBuf,
    /// 1-based line on which the record starts.
    pub line: u64,
    /// 1-based position of the record in the whole export.
    pub ordinal: u64,
}

impl fmt::Display for RecordLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} (record {})",
            self.file.display(),
            self.line,
            self.ordinal
        )
    }
}

/// One CRM row. OData/JSON Lines records keep their JSON values (numbers,
/// nested expanded lookups, annotations such as
/// `statuscode@OData.Community.Display.V1.FormattedValue`); CSV cells become
/// strings under logical column names, and an empty cell becomes `null`.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub fields: Map<String, Value>,
    pub location: RecordLocation,
    /// The fingerprint of the bytes the fields were parsed from.
    pub fingerprint: RawFingerprint,
}

/// 128 bits of XXH3 over the bytes a record was parsed from: a JSON
/// record's text from its `{` to its `}`; a CSV row's bytes, line end
/// included, seeded with the hash of its file's resolved header. Equal
/// fingerprints mean equal fields (up to a collision, about n² / 2¹²⁹ for
/// n records); equal fields may still have different fingerprints (the
/// same record re-formatted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RawFingerprint(pub u128);

impl RawFingerprint {
    /// The fingerprint of a JSON record's text.
    pub fn of_json(text: &[u8]) -> RawFingerprint {
        RawFingerprint(xxhash_rust::xxh3::xxh3_128(text))
    }

    /// The fingerprint of a CSV row's bytes under a header whose hash is
    /// `header`.
    pub fn of_row(header: u64, row: &[u8]) -> RawFingerprint {
        RawFingerprint(xxhash_rust::xxh3::xxh3_128_with_seed(row, header))
    }
}

/// Where a record is, without owning the file name (see [`RecordLocation`]).
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub file: &'a Path,
    pub line: u64,
    pub ordinal: u64,
}

/// Asked, for each record, before the record is parsed: whether it is
/// already known, so that it need not be. A reader finds a record's id
/// without parsing the record (a scan of its top-level members, a CSV cell
/// by index) and fingerprints its bytes; a record the prefilter knows is
/// counted (and its columns taken in) but neither parsed nor handed to the
/// callback.
pub trait Prefilter {
    /// The column whose value is a record's id.
    fn id_column(&self) -> &str;

    /// Whether the record at `place`, whose id column holds the text `id`
    /// and whose bytes have `fingerprint`, is known and need not be parsed.
    /// `id` is as the record holds it (a JSON string decoded, a CSV cell),
    /// not normalised.
    fn known(&mut self, id: &str, fingerprint: RawFingerprint, place: Place<'_>) -> bool;

    /// A hint: the id column of a record a few rows on probably holds
    /// `id`. A prefilter may start fetching what [`Prefilter::known`] will
    /// look at for it, while the reader reads the rows before. Only a hint:
    /// `known` still gets the id the record holds.
    fn expect(&mut self, _id: &str) {}
}

/// Size, modification time and identity (device and inode) of one export
/// file, taken when the export was listed, so that a change during a read or
/// between two reads is seen, a file replaced by another one included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFingerprint {
    pub path: PathBuf,
    pub len: u64,
    pub modified: Option<SystemTime>,
    /// Device and inode; `None` for bytes read from memory.
    pub identity: Option<(u64, u64)>,
}

impl FileFingerprint {
    fn of(path: &Path, metadata: &fs::Metadata) -> FileFingerprint {
        FileFingerprint {
            path: path.to_path_buf(),
            len: metadata.len(),
            modified: metadata.modified().ok(),
            identity: Some((metadata.dev(), metadata.ino())),
        }
    }

    /// How `now` differs from `self`, the same file seen earlier.
    fn change_to(&self, now: &FileFingerprint) -> Option<FileChange> {
        if self.identity != now.identity {
            Some(FileChange::Replaced)
        } else if self.len != now.len || self.modified != now.modified {
            Some(FileChange::Modified)
        } else {
            None
        }
    }
}

/// How an export file changed while the export was being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileChange {
    /// Its size or modification time moved: it is being written.
    Modified,
    /// Another file took its name.
    Replaced,
    /// It was added to the export directory.
    Added,
    /// It was removed from the export directory.
    Removed,
}

impl fmt::Display for FileChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileChange::Modified => "its size or modification time changed",
            FileChange::Replaced => "it was replaced by another file",
            FileChange::Added => "it appeared in the export directory",
            FileChange::Removed => "it was removed",
        })
    }
}

/// What a read saw. After a read stopped early by the callback, it covers
/// the files opened and the records handed over up to that point.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExportSummary {
    /// Every file read, in reading order.
    pub files: Vec<FileFingerprint>,
    /// Records handed to the callback, the one that stopped the read included.
    pub records: u64,
    /// The export's columns: those of the CSV headers and every key of any
    /// JSON record, each with whether some record gave it a value (not
    /// empty, not `null`).
    pub columns: BTreeMap<String, ColumnSeen>,
}

/// What the records of an export held in one column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnSeen {
    /// Named (a CSV header, a JSON key), but empty or `null` in every record.
    OnlyEmpty,
    /// Some record has a value in it.
    WithValues,
}

/// Collects the columns of the records handed over. Records of one export
/// nearly always have the same keys, so a record whose keys are those of
/// the record before costs one comparison of the key lists; only the
/// columns not yet seen with a value are looked up in every record.
#[derive(Debug, Default)]
struct ColumnCensus {
    columns: BTreeMap<String, ColumnSeen>,
    /// The keys of the last record whose keys were taken in.
    last_keys: Vec<String>,
    /// Columns seen so far only empty.
    only_empty: Vec<String>,
}

/// The columns of one record, as the census takes them in: a parsed record's
/// fields, or the top-level members or cells of one not parsed.
pub(super) trait RecordColumns {
    /// How many columns the record has.
    fn count(&self) -> usize;
    /// Its column names, in order.
    fn names(&self) -> impl Iterator<Item = &str>;
    /// Whether its column names are `names`, in that order.
    fn has_names(&self, names: &[String]) -> bool {
        self.count() == names.len() && self.names().zip(names).all(|(a, b)| a == b)
    }
    /// Whether `column` holds a value: it is there, not `null`, and not
    /// blank text.
    fn filled(&self, column: &str) -> bool;
}

impl RecordColumns for Map<String, Value> {
    fn count(&self) -> usize {
        self.len()
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.keys().map(String::as_str)
    }

    fn filled(&self, column: &str) -> bool {
        self.get(column).is_some_and(has_value)
    }
}

impl ColumnCensus {
    fn observe(&mut self, fields: &impl RecordColumns) {
        if !fields.has_names(&self.last_keys) {
            self.last_keys.clear();
            for key in fields.names() {
                self.last_keys.push(key.to_owned());
                if !self.columns.contains_key(key) {
                    self.columns.insert(key.to_owned(), ColumnSeen::OnlyEmpty);
                    self.only_empty.push(key.to_owned());
                }
            }
        }
        if self.only_empty.is_empty() {
            return;
        }
        let columns = &mut self.columns;
        self.only_empty.retain(|column| {
            let filled = fields.filled(column);
            if filled {
                columns.insert(column.clone(), ColumnSeen::WithValues);
            }
            !filled
        });
    }

    /// Columns a CSV header names, whether or not a row follows.
    fn name(&mut self, columns: &[String]) {
        for column in columns {
            if !self.columns.contains_key(column) {
                self.columns.insert(column.clone(), ColumnSeen::OnlyEmpty);
                self.only_empty.push(column.clone());
            }
        }
    }
}

fn has_value(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(text) => !text.trim().is_empty(),
        _ => true,
    }
}

/// An export that cannot be read fully. Every variant names the file and,
/// where there is one, the line (and column or record).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `line` and `column` are 1-based; columns count bytes (a UTF-8 BOM
    /// not included). A CSV problem with a whole row points at the row's
    /// first column.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("{}: no export files found", path.display())]
    Empty { path: PathBuf },
    /// A file of the export changed between the listing of the export and
    /// the end of its read: it is still being written, and what was read may
    /// be a mix of two versions (old page 1, new page 2).
    #[error("{}: changed while the export was being read: {change}", path.display())]
    Changed { path: PathBuf, change: FileChange },
    /// A file was modified less than `export.settle_secs` ago: it may still
    /// be being written. Nothing was read; the next cycle tries again.
    #[error(
        "{}: modified {}, sooner than export.settle_secs = {} allows: not read this cycle, as it may still be being written; the next cycle reads it once it has settled",
        path.display(), describe_age(*age), settle.as_secs_f64()
    )]
    Unsettled {
        path: PathBuf,
        /// `None`: the modification time is in the future.
        age: Option<Duration>,
        settle: Duration,
    },
    /// Only regular files are read: a FIFO would block the read until some
    /// writer came, a device such as `/dev/zero` never ends.
    #[error("{}: is {kind}, not a regular file; only regular files are read", path.display())]
    NotAFile { path: PathBuf, kind: &'static str },
    /// Two entries of `header_aliases` that differ only in case or
    /// surrounding space map to different columns.
    #[error("header alias `{header}` is configured for both `{first}` and `{second}`")]
    ConflictingHeaderAlias {
        header: String,
        first: String,
        second: String,
    },
}

/// Read every record of the export, in order, calling `on_record` for each.
/// `on_record` may stop the read early with `ControlFlow::Break`.
///
/// Returns an error as soon as any part of the export does not parse; the
/// caller must then treat the whole export as unusable.
pub fn read_export(
    options: &ExportOptions,
    on_record: &mut dyn FnMut(Record) -> ControlFlow<()>,
) -> Result<ExportSummary, ExportError> {
    read_export_with(options, None, on_record)
}

/// [`read_export`], asking `prefilter` about each record before it is
/// parsed: the records it knows are counted (and their columns taken in)
/// but neither parsed nor handed to `on_record`.
pub fn read_export_with<'a>(
    options: &ExportOptions,
    prefilter: Option<&'a mut dyn Prefilter>,
    on_record: &'a mut dyn FnMut(Record) -> ControlFlow<()>,
) -> Result<ExportSummary, ExportError> {
    read_into(options, Sink::with_prefilter(on_record, prefilter))
}

/// [`read_export_with`], where the JSON records the prefilter does not know
/// may be handed over unparsed ([`Offered::Unparsed`]), for the caller to
/// parse where it likes — on another thread than the reading one. Whoever
/// parses one must treat its error as this read's: the export is unusable,
/// and the error is the one the read would have returned (the same file,
/// line, column and message). Records not parsed before their error are
/// not handed over twice.
pub fn read_export_offering<'a>(
    options: &ExportOptions,
    prefilter: &'a mut dyn Prefilter,
    on_offered: &'a mut dyn FnMut(Offered) -> ControlFlow<()>,
) -> Result<ExportSummary, ExportError> {
    read_into(options, Sink::offering(on_offered, prefilter))
}

fn read_into(options: &ExportOptions, mut sink: Sink<'_>) -> Result<ExportSummary, ExportError> {
    let aliases = HeaderAliases::new(&options.header_aliases)?;
    let listed = export_files(&options.path)?;
    if !options.checks.settle.is_zero() {
        check_settled(&listed, options.checks.settle, SystemTime::now())?;
    }
    let mut summary = ExportSummary::default();
    for at_listing in &listed {
        let path = &at_listing.path;
        let file = open_regular_file(path).map_err(removed_since_listing)?;
        let at_open = fingerprint(path, &file)?;
        if let Some(change) = at_listing.change_to(&at_open) {
            return Err(ExportError::Changed {
                path: path.clone(),
                change,
            });
        }
        summary.files.push(at_open.clone());

        let format =
            file_format(options.format, path, &file).map_err(|error| input_error(path, error))?;
        // Detection may have read the start of the file.
        (&file)
            .seek(SeekFrom::Start(0))
            .map_err(|source| io_error(path, source))?;
        let line_end = options.checks.final_line_end;
        let flow = match format {
            FileFormat::OdataJson => read_odata(path, &file, &mut sink)?,
            FileFormat::Csv => {
                read_csv(path, TextInput::new(&file), &aliases, line_end, &mut sink)?
            }
            FileFormat::Jsonl => read_jsonl(path, &file, line_end, &mut sink)?,
        };
        if flow.is_break() {
            summary.records = sink.records;
            summary.columns = sink.census.columns;
            return Ok(summary);
        }
        if let Some(change) = at_open.change_to(&fingerprint(path, &file)?) {
            return Err(ExportError::Changed {
                path: path.clone(),
                change,
            });
        }
    }
    // Every file as it was listed, no file added or taken away: the pages
    // read belong to one version of the export.
    check_unchanged(&options.path, &listed)?;
    summary.records = sink.records;
    summary.columns = sink.census.columns;
    Ok(summary)
}

/// Refuse the export when one of its files was modified less than `settle`
/// before `now`. The freshest file is named.
fn check_settled(
    listed: &[FileFingerprint],
    settle: Duration,
    now: SystemTime,
) -> Result<(), ExportError> {
    let freshest = listed
        .iter()
        .filter_map(|file| Some((file, file.modified?)))
        .max_by_key(|(_, modified)| *modified);
    let Some((file, modified)) = freshest else {
        return Ok(());
    };
    let age = now.duration_since(modified).ok();
    if age.is_some_and(|age| age >= settle) {
        return Ok(());
    }
    Err(ExportError::Unsettled {
        path: file.path.clone(),
        age,
        settle,
    })
}

/// What `check` says of an [`ExportError::Unsettled`]: the file, its age
/// and that a cycle would skip it now.
pub fn settle_note(error: &ExportError) -> String {
    match error {
        ExportError::Unsettled { path, age, settle } => format!(
            "{}: modified {}, sooner than export.settle_secs = {} allows: a cycle now would skip it",
            path.display(),
            describe_age(*age),
            settle.as_secs_f64()
        ),
        other => other.to_string(),
    }
}

fn describe_age(age: Option<Duration>) -> String {
    match age {
        Some(age) => format!("{:.1} s ago", age.as_secs_f64()),
        None => "in the future (is the clock of the machine that wrote it ahead?)".to_owned(),
    }
}

/// The export at `path` listed again after its read: every file must be
/// the one listed before (same identity, size and modification time), and
/// a directory must hold the same files.
fn check_unchanged(path: &Path, listed: &[FileFingerprint]) -> Result<(), ExportError> {
    let now = match export_files(path) {
        Ok(now) => now,
        // The directory emptied, or a page turned into something that is
        // not a file: the export changed.
        Err(ExportError::Empty { .. } | ExportError::NotAFile { .. }) => Vec::new(),
        Err(error) => return Err(removed_since_listing(error)),
    };
    for before in listed {
        match now.iter().find(|file| file.path == before.path) {
            None => {
                return Err(ExportError::Changed {
                    path: before.path.clone(),
                    change: FileChange::Removed,
                });
            }
            Some(after) => {
                if let Some(change) = before.change_to(after) {
                    return Err(ExportError::Changed {
                        path: before.path.clone(),
                        change,
                    });
                }
            }
        }
    }
    if let Some(added) = now
        .iter()
        .find(|file| !listed.iter().any(|before| before.path == file.path))
    {
        return Err(ExportError::Changed {
            path: added.path.clone(),
            change: FileChange::Added,
        });
    }
    Ok(())
}

/// A listed file that is not found any more was removed during the read.
fn removed_since_listing(error: ExportError) -> ExportError {
    match error {
        ExportError::Io { path, source } if source.kind() == io::ErrorKind::NotFound => {
            ExportError::Changed {
                path,
                change: FileChange::Removed,
            }
        }
        other => other,
    }
}

/// Open `path` for reading without blocking (a FIFO would wait for a
/// writer) and make sure it is a regular file.
fn open_regular_file(path: &Path) -> Result<File, ExportError> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| io_error(path, source))?;
    let metadata = file.metadata().map_err(|source| io_error(path, source))?;
    if let Some(kind) = not_a_regular_file(&metadata) {
        return Err(ExportError::NotAFile {
            path: path.to_path_buf(),
            kind,
        });
    }
    Ok(file)
}

/// What a non-regular file is, for the message; `None` for a regular file.
fn not_a_regular_file(metadata: &fs::Metadata) -> Option<&'static str> {
    let kind = metadata.file_type();
    if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else {
        Some("not a file")
    }
}

/// Read one export file held in memory as [`read_export`] reads a file
/// named `path`: the same format decision (`options.format`, else `path`'s
/// extension, else the content), the same readers and the same errors. No
/// file is opened and `options.path` is not used; `path` only names the
/// records' locations and the errors. For fuzzing and tests without disk.
pub fn read_export_bytes(
    options: &ExportOptions,
    path: &Path,
    bytes: &[u8],
    on_record: &mut dyn FnMut(Record) -> ControlFlow<()>,
) -> Result<ExportSummary, ExportError> {
    read_export_bytes_with(options, path, bytes, None, on_record)
}

/// [`read_export_bytes`] with a [`Prefilter`], as [`read_export_with`].
pub fn read_export_bytes_with<'a>(
    options: &ExportOptions,
    path: &Path,
    bytes: &[u8],
    prefilter: Option<&'a mut dyn Prefilter>,
    on_record: &'a mut dyn FnMut(Record) -> ControlFlow<()>,
) -> Result<ExportSummary, ExportError> {
    let aliases = HeaderAliases::new(&options.header_aliases)?;
    let mut sink = Sink::with_prefilter(on_record, prefilter);
    let format =
        file_format(options.format, path, bytes).map_err(|error| input_error(path, error))?;
    let input = TextInput::new(bytes);
    let line_end = options.checks.final_line_end;
    // Stopped by the callback or read to the end: either way this file is done.
    let _flow = match format {
        FileFormat::OdataJson => read_odata(path, io::Cursor::new(bytes), &mut sink)?,
        FileFormat::Csv => read_csv(path, input, &aliases, line_end, &mut sink)?,
        FileFormat::Jsonl => read_jsonl(path, io::Cursor::new(bytes), line_end, &mut sink)?,
    };
    Ok(ExportSummary {
        files: vec![FileFingerprint {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
            modified: None,
            identity: None,
        }],
        records: sink.records,
        columns: sink.census.columns,
    })
}

/// How reading one file ended: read to its end, or stopped by the callback.
type FileOutcome = Result<ControlFlow<()>, ExportError>;

/// Numbers the records of the whole export, asks the prefilter about each
/// one before it is parsed, and hands those it does not know to the
/// callback.
struct Sink<'s> {
    on_record: Handler<'s>,
    prefilter: Option<&'s mut dyn Prefilter>,
    records: u64,
    census: ColumnCensus,
    /// Records of the current file that were handed over (or found known)
    /// already, by a pass that stopped on a problem: the pass that reads the
    /// file again to report it drops them.
    skip: u64,
    /// The block readers' window, handed on from file to file so that a
    /// directory of pages allocates and clears it once.
    window: Vec<u8>,
}

/// Who records are handed to.
enum Handler<'s> {
    /// Parsed records only.
    Parsed(&'s mut dyn FnMut(Record) -> ControlFlow<()>),
    /// A record to be parsed may be handed over as it stands.
    Offered(&'s mut dyn FnMut(Offered) -> ControlFlow<()>),
}

impl Handler<'_> {
    fn record(&mut self, record: Record) -> ControlFlow<()> {
        match self {
            Handler::Parsed(on_record) => on_record(record),
            Handler::Offered(on_offered) => on_offered(Offered::Parsed(record)),
        }
    }
}

/// A record handed over by [`read_export_offering`].
#[derive(Debug)]
pub enum Offered {
    Parsed(Record),
    Unparsed(Unparsed),
}

/// A JSON record the prefilter did not know, found, placed and
/// fingerprinted but not parsed: its text, to be parsed by
/// [`Unparsed::parse`]. Its columns were taken in by the census already.
#[derive(Debug)]
pub struct Unparsed {
    text: Vec<u8>,
    location: RecordLocation,
    /// The 1-based column of the text's first byte on its line.
    column: u64,
    fingerprint: RawFingerprint,
    shape: TextShape,
}

/// What the text of an [`Unparsed`] record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextShape {
    /// One JSON Lines line (its line end left out): the record and
    /// whitespace around it, nothing else.
    Line,
    /// An object from its `{` to its `}`, an element of an OData `value`.
    Object,
}

impl Unparsed {
    pub fn location(&self) -> &RecordLocation {
        &self.location
    }

    /// The length of the record's text, in bytes.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// The record, or the error the read would have given where it
    /// parsed the record itself.
    pub fn parse(&self) -> Result<Record, ExportError> {
        let whole_line = self.shape == TextShape::Line;
        let fields = json::parse_record_text(&self.text, &self.location, self.column, whole_line)?;
        Ok(Record {
            fields,
            location: self.location.clone(),
            fingerprint: self.fingerprint,
        })
    }
}

/// Whether a record's text can be parsed apart from the file and fail, if
/// it fails, as the exact reader does. An object cut from a page cannot
/// when an escape stands in its last bytes: the structural scan takes
/// `\u` for two bytes where serde_json reads six, so a `\u` cut short
/// near the closing `}` makes serde_json read on past the record — into
/// the bytes that follow it in the file, or, in the text alone, to its end.
/// Such a record is parsed where it is read, and the exact reader names
/// what is wrong with it.
fn can_defer(text: &[u8], shape: TextShape) -> bool {
    shape == TextShape::Line
        || memchr::memchr(b'\\', &text[text.len().saturating_sub(8)..]).is_none()
}

/// What becomes of a record offered before it is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offer {
    /// The prefilter knows it: it is counted and done with.
    Known,
    /// Parse it and hand it over with [`Sink::emit`], or hand its text
    /// over with [`Sink::emit_text`].
    Parse,
}

impl<'s> Sink<'s> {
    #[cfg(test)]
    fn new(on_record: &'s mut dyn FnMut(Record) -> ControlFlow<()>) -> Self {
        Sink::with_prefilter(on_record, None)
    }

    fn with_prefilter(
        on_record: &'s mut dyn FnMut(Record) -> ControlFlow<()>,
        prefilter: Option<&'s mut dyn Prefilter>,
    ) -> Self {
        Sink::to(Handler::Parsed(on_record), prefilter)
    }

    fn offering(
        on_offered: &'s mut dyn FnMut(Offered) -> ControlFlow<()>,
        prefilter: &'s mut dyn Prefilter,
    ) -> Self {
        Sink::to(Handler::Offered(on_offered), Some(prefilter))
    }

    fn to(on_record: Handler<'s>, prefilter: Option<&'s mut dyn Prefilter>) -> Self {
        Sink {
            on_record,
            prefilter,
            records: 0,
            census: ColumnCensus::default(),
            skip: 0,
            window: Vec::new(),
        }
    }

    /// The column the prefilter finds records by; `None` without one, when
    /// readers need not look for ids.
    fn id_column(&self) -> Option<String> {
        self.prefilter
            .as_ref()
            .map(|prefilter| prefilter.id_column().to_owned())
    }

    /// The columns of a CSV header.
    fn name_columns(&mut self, columns: &[String]) {
        self.census.name(columns);
    }

    /// A record found but not parsed yet, whose id column holds `id` (when
    /// the reader found it) and whose columns are `columns`.
    fn offer(
        &mut self,
        file: &Path,
        line: u64,
        fingerprint: RawFingerprint,
        id: Option<&str>,
        columns: &impl RecordColumns,
    ) -> Offer {
        if self.skip > 0 {
            self.skip -= 1;
            return Offer::Known;
        }
        let (Some(prefilter), Some(id)) = (self.prefilter.as_mut(), id) else {
            return Offer::Parse;
        };
        let place = Place {
            file,
            line,
            ordinal: self.records + 1,
        };
        if !prefilter.known(id, fingerprint, place) {
            return Offer::Parse;
        }
        self.records += 1;
        self.census.observe(columns);
        Offer::Known
    }

    /// A record a few rows on probably has the id `id` (see
    /// [`Prefilter::expect`]).
    fn expect(&mut self, id: &str) {
        if let Some(prefilter) = self.prefilter.as_mut() {
            prefilter.expect(id);
        }
    }

    /// Hand over a record that was offered and is to be parsed, or read
    /// where no prefilter asks.
    fn emit(
        &mut self,
        file: &Path,
        line: u64,
        fingerprint: RawFingerprint,
        fields: Map<String, Value>,
    ) -> ControlFlow<()> {
        if self.skip > 0 {
            self.skip -= 1;
            return ControlFlow::Continue(());
        }
        self.records += 1;
        self.census.observe(&fields);
        self.on_record.record(Record {
            fields,
            location: RecordLocation {
                file: file.to_path_buf(),
                line,
                ordinal: self.records,
            },
            fingerprint,
        })
    }

    /// Hand over a JSON record that was offered and is to be parsed, whose
    /// `{` is at `line` and `column`, whose text is `text` (of `shape`) and
    /// whose top-level members are `columns`: as it stands where the
    /// handler takes it so, else parsed here. `Err(Detour::Exact)` when it
    /// does not parse here: the exact reader is to say why.
    fn emit_text(
        &mut self,
        file: &Path,
        (line, column): (u64, u64),
        fingerprint: RawFingerprint,
        text: &[u8],
        shape: TextShape,
        columns: &impl RecordColumns,
    ) -> Result<ControlFlow<()>, blocks::Detour> {
        if self.skip > 0 {
            self.skip -= 1;
            return Ok(ControlFlow::Continue(()));
        }
        let location = RecordLocation {
            file: file.to_path_buf(),
            line,
            ordinal: self.records + 1,
        };
        let flow = match &mut self.on_record {
            Handler::Offered(on_offered) if can_defer(text, shape) => {
                self.census.observe(columns);
                on_offered(Offered::Unparsed(Unparsed {
                    text: text.to_vec(),
                    location,
                    column,
                    fingerprint,
                    shape,
                }))
            }
            handler => {
                let Ok(fields) =
                    json::parse_record_text(text, &location, column, shape == TextShape::Line)
                else {
                    return Err(blocks::Detour::Exact);
                };
                self.census.observe(&fields);
                handler.record(Record {
                    fields,
                    location,
                    fingerprint,
                })
            }
        };
        self.records += 1;
        Ok(flow)
    }

    /// Hand over a record parsed before it could be offered (by the
    /// streaming reader): the prefilter is asked first, with the id it
    /// holds, so that a known record is still not mapped.
    fn offer_parsed(
        &mut self,
        file: &Path,
        line: u64,
        fingerprint: RawFingerprint,
        fields: Map<String, Value>,
    ) -> ControlFlow<()> {
        if self.skip > 0 {
            self.skip -= 1;
            return ControlFlow::Continue(());
        }
        let id =
            self.prefilter
                .as_ref()
                .and_then(|prefilter| match fields.get(prefilter.id_column()) {
                    Some(Value::String(id)) => Some(id.clone()),
                    _ => None,
                });
        match self.offer(file, line, fingerprint, id.as_deref(), &fields) {
            Offer::Known => ControlFlow::Continue(()),
            Offer::Parse => self.emit(file, line, fingerprint, fields),
        }
    }
}

/// The files of the export at `path`, in reading order, as they are now.
/// A path or a page that is not a regular file (a FIFO, a socket, a device)
/// is refused; subdirectories of an export directory are skipped.
fn export_files(path: &Path) -> Result<Vec<FileFingerprint>, ExportError> {
    // fs::metadata follows symbolic links: a link to a page is a page.
    let metadata = fs::metadata(path).map_err(|source| io_error(path, source))?;
    if !metadata.is_dir() {
        if let Some(kind) = not_a_regular_file(&metadata) {
            return Err(ExportError::NotAFile {
                path: path.to_path_buf(),
                kind,
            });
        }
        return Ok(vec![FileFingerprint::of(path, &metadata)]);
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path).map_err(|source| io_error(path, source))? {
        let entry = entry.map_err(|source| io_error(path, source))?;
        let name = entry.file_name();
        if !is_export_file_name(name.as_encoded_bytes()) {
            continue;
        }
        let entry_path = entry.path();
        let entry_metadata =
            fs::metadata(&entry_path).map_err(|source| io_error(&entry_path, source))?;
        if entry_metadata.is_dir() {
            continue;
        }
        if let Some(kind) = not_a_regular_file(&entry_metadata) {
            return Err(ExportError::NotAFile {
                path: entry_path,
                kind,
            });
        }
        let fingerprint = FileFingerprint::of(&entry_path, &entry_metadata);
        files.push((name, fingerprint));
    }
    if files.is_empty() {
        return Err(ExportError::Empty {
            path: path.to_path_buf(),
        });
    }
    files.sort_by(|(a, _), (b, _)| natural_order(a.as_encoded_bytes(), b.as_encoded_bytes()));
    Ok(files.into_iter().map(|(_, file)| file).collect())
}

/// Whether a directory entry can be part of an export: hidden files, Office
/// lock files and files still being downloaded or written are not.
fn is_export_file_name(name: &[u8]) -> bool {
    const UNFINISHED: [&[u8]; 3] = [b".tmp", b".part", b".partial"];
    let unfinished = UNFINISHED.iter().any(|suffix| {
        name.len() >= suffix.len() && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    });
    !(name.starts_with(b".") || name.starts_with(b"~$") || name.ends_with(b"~") || unfinished)
}

/// Byte order, except that runs of digits compare by their numeric value,
/// so that unpadded page numbers sort as a person expects.
fn natural_order(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let a_end = i + a[i..]
                .iter()
                .take_while(|byte| byte.is_ascii_digit())
                .count();
            let b_end = j + b[j..]
                .iter()
                .take_while(|byte| byte.is_ascii_digit())
                .count();
            let a_number = without_leading_zeros(&a[i..a_end]);
            let b_number = without_leading_zeros(&b[j..b_end]);
            let order = a_number
                .len()
                .cmp(&b_number.len())
                .then_with(|| a_number.cmp(b_number));
            if order.is_ne() {
                return order;
            }
            (i, j) = (a_end, b_end);
        } else {
            if a[i] != b[j] {
                return a[i].cmp(&b[j]);
            }
            (i, j) = (i + 1, j + 1);
        }
    }
    // Equal up to here: the shorter rest first, then plain byte order so
    // that `page01` and `page1` still have a fixed order.
    (a.len() - i).cmp(&(b.len() - j)).then_with(|| a.cmp(b))
}

fn without_leading_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().take_while(|&&digit| digit == b'0').count();
    &digits[zeros..]
}

fn fingerprint(path: &Path, file: &File) -> Result<FileFingerprint, ExportError> {
    let metadata = file.metadata().map_err(|source| io_error(path, source))?;
    Ok(FileFingerprint::of(path, &metadata))
}

fn io_error(path: &Path, source: io::Error) -> ExportError {
    ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The error for a failed read of `path`: a parse error when the read
/// failed on a defect in the bytes, else an I/O error.
fn input_error(path: &Path, error: io::Error) -> ExportError {
    match InputDefect::carried_by(&error) {
        Some(defect) => ExportError::Parse {
            path: path.to_path_buf(),
            line: defect.line,
            column: defect.column,
            message: defect.message.clone(),
        },
        None => io_error(path, error),
    }
}

/// Runs one file reader over a sink that keeps what it is handed.
#[cfg(test)]
fn collect_records(
    stop_after: Option<u64>,
    read: impl FnOnce(&mut Sink<'_>) -> FileOutcome,
) -> (FileOutcome, Vec<Record>) {
    let mut records = Vec::new();
    let mut keep = |record: Record| {
        records.push(record);
        match stop_after {
            Some(limit) if records.len() as u64 >= limit => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    };
    let mut sink = Sink::new(&mut keep);
    let result = read(&mut sink);
    (result, records)
}

/// Runs one file reader as the scan does, over a sink that takes records
/// unparsed where the reader offers them so, and parses each as it comes
/// (the first that does not parse ends the read with its error), with an
/// [`EvenPrefilter`] that knows the records among `valid` it would know.
/// The outcome, records and columns must be those of a reader that parses
/// every record itself.
#[cfg(test)]
fn collect_offered(
    valid: std::collections::HashSet<RawFingerprint>,
    stop_after: Option<u64>,
    read: impl FnOnce(&mut Sink<'_>) -> FileOutcome,
) -> PrefilteredRead {
    let mut records = Vec::new();
    let mut unparsable = None;
    let mut keep = |offered: Offered| {
        let record = match offered {
            Offered::Parsed(record) => record,
            Offered::Unparsed(unparsed) => match unparsed.parse() {
                Ok(record) => {
                    assert_eq!(record.location, *unparsed.location());
                    record
                }
                Err(error) => {
                    unparsable = Some(error);
                    return ControlFlow::Break(());
                }
            },
        };
        records.push(record);
        match stop_after {
            Some(limit) if records.len() as u64 >= limit => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    };
    let mut prefilter = EvenPrefilter {
        valid: Some(valid),
        known: Vec::new(),
    };
    let (result, columns) = {
        let mut sink = Sink::offering(&mut keep, &mut prefilter);
        let result = read(&mut sink);
        (result, sink.census.columns)
    };
    let result = match unparsable {
        Some(error) => Err(error),
        None => result,
    };
    (result, records, prefilter.known, columns)
}

/// What the JSON readers' property tests build records of.
#[cfg(test)]
mod strategies {
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e12f64..1e12).prop_map(Value::from),
            "[a-z \"\\\\\n\u{e3}\u{20ac}\u{1f600}]{0,12}".prop_map(Value::from),
        ]
    }

    /// A record's top-level members: scalars (text with quotes,
    /// backslashes, newlines and multi-byte characters), and arrays and
    /// objects of them two levels deep.
    pub(super) fn members() -> impl Strategy<Value = Map<String, Value>> {
        let member = scalar().prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z@.]{1,6}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        proptest::collection::btree_map("[a-zA-Z@._]{1,10}", member, 0..5)
            .prop_map(|m| m.into_iter().collect())
    }
}

/// Hands out its bytes in chunks of at most `chunk` bytes, so that rows,
/// records, quotes, characters and BOMs fall across a reader's refills.
#[cfg(test)]
struct Trickle<'a> {
    bytes: &'a [u8],
    chunk: usize,
}

#[cfg(test)]
impl io::Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let amount = self.chunk.min(out.len()).min(self.bytes.len());
        out[..amount].copy_from_slice(&self.bytes[..amount]);
        self.bytes = &self.bytes[amount..];
        Ok(amount)
    }
}

/// A prefilter for reader tests: it knows the records whose fingerprint is
/// even (about half) among `valid`, and keeps what it was asked. As a store
/// does, it knows only fingerprints of records that were parsed before.
#[cfg(test)]
#[derive(Debug, Default)]
struct EvenPrefilter {
    /// Fingerprints of records that parse; `None`: any.
    valid: Option<std::collections::HashSet<RawFingerprint>>,
    /// `(id, fingerprint, line, ordinal)` of every record it knew.
    known: Vec<(String, RawFingerprint, u64, u64)>,
}

#[cfg(test)]
impl Prefilter for EvenPrefilter {
    fn id_column(&self) -> &str {
        "id"
    }

    fn known(&mut self, id: &str, fingerprint: RawFingerprint, place: Place<'_>) -> bool {
        let known = fingerprint.0.is_multiple_of(2)
            && self
                .valid
                .as_ref()
                .is_none_or(|valid| valid.contains(&fingerprint));
        if known {
            self.known
                .push((id.to_owned(), fingerprint, place.line, place.ordinal));
        }
        known
    }
}

/// What a read with [`EvenPrefilter`] gave: the outcome, the records handed
/// over, those it knew, and the columns seen.
#[cfg(test)]
type PrefilteredRead = (
    FileOutcome,
    Vec<Record>,
    Vec<(String, RawFingerprint, u64, u64)>,
    BTreeMap<String, ColumnSeen>,
);

/// Runs one file reader with an [`EvenPrefilter`].
#[cfg(test)]
fn collect_prefiltered(
    valid: Option<std::collections::HashSet<RawFingerprint>>,
    read: impl FnOnce(&mut Sink<'_>) -> FileOutcome,
) -> PrefilteredRead {
    let mut records = Vec::new();
    let mut keep = |record: Record| {
        records.push(record);
        ControlFlow::Continue(())
    };
    let mut prefilter = EvenPrefilter {
        valid,
        known: Vec::new(),
    };
    let (result, columns) = {
        let mut sink = Sink::with_prefilter(&mut keep, Some(&mut prefilter));
        let result = read(&mut sink);
        (result, sink.census.columns)
    };
    (result, records, prefilter.known, columns)
}

/// A table row of reader tests: file content, and the `(line, column,
/// message)` of the parse error it must give.
#[cfg(test)]
type ErrorCase = (&'static [u8], (u64, u64, &'static str));

/// `(line, column, message)` of a parse error about `path`; `None` for any
/// other outcome.
#[cfg(test)]
fn parse_error_at(result: FileOutcome, path: &Path) -> Option<(u64, u64, String)> {
    match result {
        Err(ExportError::Parse {
            path: error_path,
            line,
            column,
            message,
        }) if error_path == path => Some((line, column, message)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_in_memory_read_as_a_file_of_that_name() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, &[u8]); 4] = [
            (
                "leads.csv",
                b"leadid,subject\nL-1,One\nL-2,\"Two\nlines\"\n",
            ),
            (
                "leads.jsonl",
                b"{\"leadid\": \"L-1\"}\n\n{\"leadid\": \"L-2\"}\n",
            ),
            (
                "page.json",
                b"{\"value\": [{\"leadid\": \"L-1\"}, {\"leadid\": \"L-2\"}]}",
            ),
            ("cut-short", b"{\"value\": [{\"leadid\": \"L-1\"}, {\"lead"),
        ];
        for (name, bytes) in cases {
            let path = dir.path().join(name);
            fs::write(&path, bytes).unwrap();
            let options = ExportOptions {
                path: path.clone(),
                format: ExportFormat::Auto,
                entity: Entity::Lead,
                header_aliases: BTreeMap::new(),
                checks: ExportChecks::default(),
            };
            let mut from_file = Vec::new();
            let file_result = read_export(&options, &mut |record| {
                from_file.push(record);
                ControlFlow::Continue(())
            });
            let mut from_bytes = Vec::new();
            let bytes_result = read_export_bytes(&options, &path, bytes, &mut |record| {
                from_bytes.push(record);
                ControlFlow::Continue(())
            });
            assert_eq!(from_bytes, from_file, "{name}");
            match (file_result, bytes_result) {
                (Ok(file), Ok(in_memory)) => {
                    assert_eq!(in_memory.records, file.records, "{name}");
                    assert_eq!(in_memory.files[0].len, file.files[0].len, "{name}");
                }
                (Err(file), Err(in_memory)) => {
                    assert_eq!(in_memory.to_string(), file.to_string(), "{name}")
                }
                (file, in_memory) => panic!("{name}: {file:?} vs {in_memory:?}"),
            }
        }
    }

    #[test]
    fn the_census_names_every_column_and_whether_it_held_a_value() {
        use ColumnSeen::{OnlyEmpty, WithValues};
        let options = ExportOptions {
            path: PathBuf::new(),
            format: ExportFormat::Auto,
            entity: Entity::Lead,
            header_aliases: BTreeMap::from([("Topic".to_owned(), "subject".to_owned())]),
            checks: ExportChecks::default(),
        };
        type Case = (
            &'static str,
            &'static [u8],
            &'static [(&'static str, ColumnSeen)],
        );
        let cases: [Case; 4] = [
            // A header without rows still names its columns.
            ("a.csv", b"leadid,Topic\n", &[("leadid", OnlyEmpty), ("subject", OnlyEmpty)]),
            (
                "b.csv",
                b"leadid,Topic,notes\nL-1,,\nL-2,x, \n",
                &[("leadid", WithValues), ("notes", OnlyEmpty), ("subject", WithValues)],
            ),
            // Keys that come and go, a value seen late.
            (
                "c.jsonl",
                b"{\"leadid\": \"L-1\", \"a\": null}\n{\"leadid\": \"L-2\", \"a\": null}\n{\"leadid\": \"L-3\", \"b\": 1}\n{\"leadid\": \"L-4\", \"a\": {}}\n",
                &[("a", WithValues), ("b", WithValues), ("leadid", WithValues)],
            ),
            ("d.json", b"{\"value\": []}", &[]),
        ];
        for (name, bytes, expected) in cases {
            let summary = read_export_bytes(&options, Path::new(name), bytes, &mut |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
            let expected: BTreeMap<String, ColumnSeen> = expected
                .iter()
                .map(|(column, seen)| (column.to_string(), *seen))
                .collect();
            assert_eq!(summary.columns, expected, "{name}");
        }
    }

    #[test]
    fn skips_files_that_are_not_finished_pages() {
        let cases = [
            ("page-1.json", true),
            ("leads.csv", true),
            ("leads", true),
            (".page-1.json", false),
            (".", false),
            ("page-1.json.tmp", false),
            ("page-1.json.TMP", false),
            ("page-1.json.part", false),
            ("page-1.json.partial", false),
            ("page-1.json~", false),
            ("~$leads.csv", false),
            ("tmp", true),
            ("partial.json", true),
        ];
        for (name, expected) in cases {
            assert_eq!(is_export_file_name(name.as_bytes()), expected, "{name}");
        }
    }

    #[test]
    fn orders_names_naturally() {
        let mut names = vec![
            "page-10.json",
            "page-2.json",
            "page-1.json",
            "page-01.json",
            "page.json",
            "page-1a.json",
            "Page-3.json",
            "page-002.json",
            "page-18446744073709551616.json",
        ];
        names.sort_by(|a, b| natural_order(a.as_bytes(), b.as_bytes()));
        assert_eq!(
            names,
            [
                "Page-3.json",
                "page-01.json",
                "page-1.json",
                "page-1a.json",
                "page-002.json",
                "page-2.json",
                "page-10.json",
                "page-18446744073709551616.json",
                "page.json",
            ]
        );
    }
}
