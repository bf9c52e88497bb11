//! Pass one of a cycle: read the whole export, map and validate every
//! record, and decide which records need work — before anything is sent.
//!
//! Memory stays flat as the export grows: per record only its id, a
//! 128-bit hash of its desired document and where it first occurred are
//! kept. Documents of records that need work are retained up to a budget;
//! beyond it the push phase reads the export a second time.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::path::PathBuf;

use crate::export::{self, ExportError, ExportOptions, ExportSummary, RecordLocation};
use crate::mapping::{MappedRecord, Mapper, RecordError};
use crate::store::{Store, StoreError, SyncState};

/// How many changed documents pass one keeps for the push phase before it
/// falls back to reading the export again.
pub const RETAIN_BUDGET: usize = 20_000;

/// 128 bits of BLAKE3 over the canonical JSON of a desired document.
/// `serde_json` keeps object keys sorted, so equal documents hash equal.
pub fn document_hash(document: &serde_json::Value) -> DocHash {
    let text = document.to_string();
    let digest = blake3::hash(text.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest.as_bytes()[..16]);
    DocHash(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DocHash(pub [u8; 16]);

impl DocHash {
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

/// Why a record is taken up by the push phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkReason {
    /// Not in the store yet.
    New,
    /// Its desired document changed since the last acknowledged state.
    Changed,
    /// Its last attempt failed, or its outcome is unknown.
    Retry,
    /// A resync asks for every record.
    Resync,
}

#[derive(Debug, Clone)]
struct Seen {
    hash: DocHash,
    file: u32,
    line: u64,
    work: Option<WorkReason>,
}

/// Everything pass one learnt.
#[derive(Debug, Default)]
pub struct Scan {
    pub export: ExportSummary,
    /// Records that could not be mapped.
    pub record_errors: Vec<RecordError>,
    /// External ids that occur more than once, with every place.
    pub duplicates: Vec<(String, Vec<RecordLocation>)>,
    /// Records that map cleanly and occur once.
    pub valid: u64,
    /// Of those, the ones whose stored state already matches.
    pub unchanged: u64,
    /// Records the store knows that this export lacks.
    pub missing_from_export: u64,
    /// Records the store knows.
    pub known: u64,
    /// Records needing work, with their documents, when they fit the
    /// budget; `None` means the push phase must read the export again.
    pub retained: Option<Vec<(MappedRecord, DocHash, WorkReason)>>,
    seen: HashMap<Box<str>, Seen>,
    files: Vec<PathBuf>,
}

/// What pass one is asked to do.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Take up every record, whatever the store says.
    pub resync: bool,
    /// Only these external ids (others are still read and validated).
    pub only: Option<HashSet<String>>,
    pub retain_budget: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("export unreadable, nothing was changed: {0}")]
    Export(#[from] ExportError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Scan {
    /// Whether the record with this id and hash should be pushed; `None`
    /// for records pass one did not take up (unchanged, invalid,
    /// duplicated, filtered out, or not seen).
    pub fn work_for(&self, external_id: &str, hash: DocHash) -> Option<WorkFor> {
        let seen = self.seen.get(external_id)?;
        let reason = seen.work?;
        if seen.hash != hash {
            return Some(WorkFor::ChangedSinceScan);
        }
        Some(WorkFor::Push(reason))
    }

    /// Records taken up for the push phase.
    pub fn work_count(&self) -> u64 {
        self.seen.values().filter(|s| s.work.is_some()).count() as u64
    }

    /// The first place an id was seen.
    fn first_location(&self, seen: &Seen, ordinal: u64) -> RecordLocation {
        RecordLocation {
            file: self
                .files
                .get(seen.file as usize)
                .cloned()
                .unwrap_or_default(),
            line: seen.line,
            ordinal,
        }
    }
}

/// The push phase's verdict on a record read the second time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkFor {
    Push(WorkReason),
    /// The export was rewritten between the two reads.
    ChangedSinceScan,
}

/// Run pass one. `store` is only read.
pub fn scan_export(
    export_options: &ExportOptions,
    mapper: &Mapper,
    store: &Store,
    options: &ScanOptions,
) -> Result<Scan, ScanError> {
    let mut scan = Scan::default();
    let mut retained: Vec<(MappedRecord, DocHash, WorkReason)> = Vec::new();
    let mut over_budget = false;
    // First ordinal per id, to name the first place of a duplicate.
    let mut first_ordinal: HashMap<Box<str>, u64> = HashMap::new();
    let mut duplicate_places: HashMap<String, Vec<RecordLocation>> = HashMap::new();
    let mut store_error: Option<StoreError> = None;

    let summary = export::read_export(export_options, &mut |record| {
        let mapped = match mapper.map(&record) {
            Ok(mapped) => mapped,
            Err(error) => {
                scan.record_errors.push(error);
                return ControlFlow::Continue(());
            }
        };
        let file_index = match scan.files.iter().position(|f| *f == record.location.file) {
            Some(i) => i as u32,
            None => {
                scan.files.push(record.location.file.clone());
                (scan.files.len() - 1) as u32
            }
        };
        if let Some(places) = duplicate_places.get_mut(&mapped.external_id) {
            places.push(record.location.clone());
            return ControlFlow::Continue(());
        }
        if let Some(seen) = scan.seen.remove(mapped.external_id.as_str()) {
            let ordinal = first_ordinal
                .remove(mapped.external_id.as_str())
                .unwrap_or_default();
            let first = scan.first_location(&seen, ordinal);
            duplicate_places.insert(
                mapped.external_id.clone(),
                vec![first, record.location.clone()],
            );
            retained.retain(|(r, _, _)| r.external_id != mapped.external_id);
            return ControlFlow::Continue(());
        }

        let hash = document_hash(&mapped.document);
        let wanted = options
            .only
            .as_ref()
            .is_none_or(|only| only.contains(&mapped.external_id));
        let work = if !wanted {
            None
        } else if options.resync {
            Some(WorkReason::Resync)
        } else {
            match store.brief(&mapped.external_id) {
                Err(e) => {
                    store_error = Some(e);
                    return ControlFlow::Break(());
                }
                Ok(None) => Some(WorkReason::New),
                Ok(Some(brief)) => {
                    let same = brief.desired_hash.as_deref() == Some(hash.to_hex().as_str());
                    match (brief.state, same) {
                        (SyncState::Synced | SyncState::Invalid, true) => None,
                        (SyncState::Pending | SyncState::Failed, _) => Some(WorkReason::Retry),
                        (_, false) => Some(WorkReason::Changed),
                    }
                }
            }
        };
        if let Some(reason) = work
            && !over_budget
        {
            if retained.len() < options.retain_budget {
                retained.push((mapped.clone(), hash, reason));
            } else {
                over_budget = true;
                retained = Vec::new();
            }
        }
        first_ordinal.insert(mapped.external_id.as_str().into(), record.location.ordinal);
        scan.seen.insert(
            mapped.external_id.into_boxed_str(),
            Seen {
                hash,
                file: file_index,
                line: record.location.line,
                work,
            },
        );
        ControlFlow::Continue(())
    })?;
    if let Some(e) = store_error {
        return Err(e.into());
    }
    scan.export = summary;

    let mut duplicates: Vec<_> = duplicate_places.into_iter().collect();
    duplicates.sort_by(|a, b| a.0.cmp(&b.0));
    scan.duplicates = duplicates;
    scan.valid = scan.seen.len() as u64;
    scan.unchanged = scan.seen.values().filter(|s| s.work.is_none()).count() as u64;
    scan.retained = (!over_budget).then_some(retained);

    scan.known = store.record_count()?;
    let mut missing = 0u64;
    let duplicate_ids: HashSet<&str> = scan.duplicates.iter().map(|(id, _)| id.as_str()).collect();
    let invalid_ids: HashSet<&str> = scan
        .record_errors
        .iter()
        .filter_map(|e| e.external_id.as_deref())
        .collect();
    store.for_each_external_id(&mut |id| {
        if !scan.seen.contains_key(id) && !duplicate_ids.contains(id) && !invalid_ids.contains(id) {
            missing += 1;
        }
    })?;
    scan.missing_from_export = missing;
    Ok(scan)
}
