//! Export readers: Dynamics 365 exports on disk → [`Record`]s, streamed.
//!
//! Three shapes are read (see `../shared/spec/dynamics-export.md`): Web API
//! (OData v4) JSON pages — one file or a directory of page files —, CSV with
//! logical or display-name headers, and JSON Lines. Records are handed to a
//! callback one at a time; no reader holds the whole export in memory.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::Entity;

/// The shape of an export, as configured by `export.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ExportFormat {
    /// Decided per file from its extension (`.json` → OData, `.csv`,
    /// `.jsonl`/`.ndjson`), falling back to its first non-blank byte.
    #[default]
    Auto,
    OdataJson,
    Csv,
    Jsonl,
}

/// What a reader needs to know.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// A file, or a directory whose page files (sorted by name) together
    /// form one export. Hidden files and files ending in `.tmp`/`.part` are
    /// skipped.
    pub path: PathBuf,
    pub format: ExportFormat,
    pub entity: Entity,
    /// CSV display-name header → logical column name (e.g. `"Est. Revenue"`
    /// → `"estimatedvalue"`). Matched case-insensitively after trimming.
    /// Headers that are not in the table are kept as they are.
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

/// What a complete read saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExportSummary {
    pub files: Vec<FileFingerprint>,
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
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("{}: no export files found", path.display())]
    Empty { path: PathBuf },
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
    let _ = (options, on_record);
    todo!("export readers")
}
