//! Export readers: Dynamics 365 exports on disk → [`Record`]s, streamed.
//!
//! Three shapes are read (see `../shared/spec/dynamics-export.md`): Web API
//! (OData v4) JSON pages — one file or a directory of page files —, CSV with
//! logical or display-name headers, and JSON Lines. Records are handed to a
//! callback one at a time; no reader holds the whole export in memory.

mod csv;
mod detect;
mod json;
mod jsonl;
mod odata;
mod text;

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::Entity;

use self::csv::{HeaderAliases, read_csv};
use self::detect::{FileFormat, file_format};
use self::jsonl::read_jsonl;
use self::odata::{IN_MEMORY_PAGE_LIMIT, read_odata, read_odata_page};
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
    /// `.part`, `.partial` or `~`) are skipped.
    pub path: PathBuf,
    pub format: ExportFormat,
    pub entity: Entity,
    /// CSV display-name header → logical column name (e.g. `"Est. Revenue"`
    /// → `"estimatedvalue"`). Matched case-insensitively after trimming.
    /// Headers that are not in the table are kept as they are, trimmed.
    pub header_aliases: BTreeMap<String, String>,
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
}

/// Size and modification time of one export file, taken when it was read,
/// so a caller can tell whether the export changed between two reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFingerprint {
    pub path: PathBuf,
    pub len: u64,
    pub modified: Option<SystemTime>,
}

/// What a read saw. After a read stopped early by the callback, it covers
/// the files opened and the records handed over up to that point.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExportSummary {
    /// Every file read, in reading order.
    pub files: Vec<FileFingerprint>,
    /// Records handed to the callback, the one that stopped the read included.
    pub records: u64,
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
    /// The file's size or modification time moved while it was read: it is
    /// still being written, and what was read may be a mix of two versions.
    #[error("{}: changed while it was being read", path.display())]
    Changed { path: PathBuf },
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
    let aliases = HeaderAliases::new(&options.header_aliases)?;
    let paths = export_files(&options.path)?;
    let mut sink = Sink::new(on_record);
    let mut summary = ExportSummary::default();
    let mut page = Vec::new();
    for path in &paths {
        let file = File::open(path).map_err(|source| io_error(path, source))?;
        let at_open = fingerprint(path, &file)?;
        summary.files.push(at_open.clone());

        let format =
            file_format(options.format, path, &file).map_err(|error| input_error(path, error))?;
        // Detection may have read the start of the file.
        (&file)
            .seek(SeekFrom::Start(0))
            .map_err(|source| io_error(path, source))?;
        let flow = match format {
            FileFormat::OdataJson if at_open.len <= IN_MEMORY_PAGE_LIMIT => {
                page.clear();
                (&file)
                    .read_to_end(&mut page)
                    .map_err(|source| io_error(path, source))?;
                read_odata_page(path, &page, &mut sink)?
            }
            FileFormat::OdataJson => read_odata(path, TextInput::new(&file), &mut sink)?,
            FileFormat::Csv => read_csv(path, TextInput::new(&file), &aliases, &mut sink)?,
            FileFormat::Jsonl => read_jsonl(path, TextInput::new(&file), &mut sink)?,
        };
        if flow.is_break() {
            break;
        }
        if fingerprint(path, &file)? != at_open {
            return Err(ExportError::Changed { path: path.clone() });
        }
    }
    summary.records = sink.records;
    Ok(summary)
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
    let aliases = HeaderAliases::new(&options.header_aliases)?;
    let mut sink = Sink::new(on_record);
    let format =
        file_format(options.format, path, bytes).map_err(|error| input_error(path, error))?;
    let input = TextInput::new(bytes);
    // Stopped by the callback or read to the end: either way this file is done.
    let _flow = match format {
        FileFormat::OdataJson => read_odata_page(path, bytes, &mut sink)?,
        FileFormat::Csv => read_csv(path, input, &aliases, &mut sink)?,
        FileFormat::Jsonl => read_jsonl(path, input, &mut sink)?,
    };
    Ok(ExportSummary {
        files: vec![FileFingerprint {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
            modified: None,
        }],
        records: sink.records,
    })
}

/// How reading one file ended: read to its end, or stopped by the callback.
type FileOutcome = Result<ControlFlow<()>, ExportError>;

/// Numbers the records of the whole export and hands them to the callback.
struct Sink<'s> {
    on_record: &'s mut dyn FnMut(Record) -> ControlFlow<()>,
    records: u64,
    /// Records of the current file that were handed over already, by a pass
    /// that stopped on a problem: the pass that reads the file again to
    /// report it drops them.
    skip: u64,
}

impl<'s> Sink<'s> {
    fn new(on_record: &'s mut dyn FnMut(Record) -> ControlFlow<()>) -> Self {
        Sink {
            on_record,
            records: 0,
            skip: 0,
        }
    }

    fn emit(&mut self, file: &Path, line: u64, fields: Map<String, Value>) -> ControlFlow<()> {
        if self.skip > 0 {
            self.skip -= 1;
            return ControlFlow::Continue(());
        }
        self.records += 1;
        (self.on_record)(Record {
            fields,
            location: RecordLocation {
                file: file.to_path_buf(),
                line,
                ordinal: self.records,
            },
        })
    }
}

/// The files of the export at `path`, in reading order.
fn export_files(path: &Path) -> Result<Vec<PathBuf>, ExportError> {
    let metadata = fs::metadata(path).map_err(|source| io_error(path, source))?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path).map_err(|source| io_error(path, source))? {
        let entry = entry.map_err(|source| io_error(path, source))?;
        let name = entry.file_name();
        if !is_export_file_name(name.as_encoded_bytes()) {
            continue;
        }
        let entry_path = entry.path();
        // fs::metadata follows symbolic links: a link to a page is a page.
        let entry_metadata =
            fs::metadata(&entry_path).map_err(|source| io_error(&entry_path, source))?;
        if entry_metadata.is_file() {
            files.push((name, entry_path));
        }
    }
    if files.is_empty() {
        return Err(ExportError::Empty {
            path: path.to_path_buf(),
        });
    }
    files.sort_by(|(a, _), (b, _)| natural_order(a.as_encoded_bytes(), b.as_encoded_bytes()));
    Ok(files.into_iter().map(|(_, path)| path).collect())
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
    Ok(FileFingerprint {
        path: path.to_path_buf(),
        len: metadata.len(),
        modified: metadata.modified().ok(),
    })
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
