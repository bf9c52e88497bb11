//! Pass one of a cycle: read the whole export, map and validate every
//! record, and decide which records need work — before anything is sent.
//!
//! Memory stays flat as the export grows: per record of the export only a
//! 128-bit key of its id, where it occurred and its [`Verdict`] are kept
//! (40 bytes, in one vector sorted once the read is done), and per record
//! of the store what it is settled with and its trusted fingerprint (56
//! bytes, [`StoreKnows`]; while the store is read, 48 more per kept
//! fingerprint). Documents of records that need work are
//! retained up to a budget; beyond it the push phase reads the export a
//! second time.
//!
//! What the store knows is read first ([`StoreKnows`]: the records on this
//! thread and the kept fingerprints on another, by a second connection,
//! at once); then the export is read on one thread, which settles the
//! records known by their fingerprint unparsed, while the calling thread
//! maps each other record, hashes its document and looks its key up among
//! the settled ones — parsing it first, when the store keeps fingerprints
//! and the record is JSON (the reading thread hands it over as it stands).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use super::schema::{self, SchemaChanged, SchemaPolicy, SchemaReport};
use crate::export::{
    self, ExportError, ExportOptions, ExportSummary, Offered, Place, Prefilter, RawFingerprint,
    Record, RecordLocation,
};
use crate::mapping::{MappedRecord, Mapper, RecordError, with_normalised_external_id};
use crate::store::{Store, StoreError};
use serde_json::Value;

/// How many changed documents pass one keeps for the push phase before it
/// falls back to reading the export again. Kept as canonical JSON text, a
/// desired document takes about 1 KB (as a `serde_json::Value` tree it
/// would take 4), so this bounds them to ~35 MB while changes of 3% of a
/// million-record export still go out without a second read.
pub const RETAIN_BUDGET: usize = 32_000;

/// Records handed from the reading thread to the deciding one at a time.
const BATCH: usize = 64;

/// What the batches handed to the deciding thread and not yet given back
/// may hold: 8 MiB of the text of records handed over unparsed, or 256
/// parsed records (a parsed record counts for [`PARSED_COST`]), or a mix.
/// Changed records come in runs — the recently modified ones of an export
/// sorted by date, the three runs of the benchmark's generator — where the
/// deciding thread, which parses, maps and hashes each, is slower than the
/// reading thread, which only copies them: the budget lets the reading
/// thread read on through a run of some thousands while the other catches
/// up, instead of waiting on it record by record. Parsed records (CSV
/// rows, every record when the store has no fingerprints) are several
/// times their text in memory and keep to the 4 batches of 64 in flight
/// they always had.
const IN_FLIGHT_BUDGET: usize = 8 << 20;
const PARSED_COST: usize = IN_FLIGHT_BUDGET / 256;

/// 128 bits of BLAKE3 over the canonical JSON of a desired document.
/// `serde_json` keeps object keys sorted, so equal documents hash equal.
pub fn document_hash(document: &Value) -> DocHash {
    thread_local! {
        // One buffer per thread instead of a String per record.
        static CANONICAL: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    CANONICAL.with_borrow_mut(|text| canonical_hash(document, text))
}

/// The hash of `document`, leaving its canonical JSON in `text`.
fn canonical_hash(document: &Value, text: &mut Vec<u8>) -> DocHash {
    text.clear();
    // Serialising a `Value` into memory cannot fail: its keys are strings
    // and its numbers finite.
    let _ = serde_json::to_writer(&mut *text, document);
    DocHash(first_128_bits(blake3::hash(text)))
}

fn first_128_bits(digest: blake3::Hash) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest.as_bytes()[..16]);
    out
}

/// The value of each hex digit (either case), and `0xFF` for every other
/// byte.
const HEX_DIGITS: [u8; 256] = {
    let mut digits = [0xFF; 256];
    let mut n = 0;
    while n < 16 {
        let value = n as u8;
        digits[b"0123456789abcdef"[n] as usize] = value;
        digits[b"0123456789ABCDEF"[n] as usize] = value;
        n += 1;
    }
    digits
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DocHash(pub [u8; 16]);

impl DocHash {
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// The hash written as `hex_text` (as the store keeps hashes); `None`
    /// when it is not one.
    ///
    /// Every record of the store has its hash read so each cycle: a table
    /// lookup per digit and one check at the end, without a branch per
    /// digit (the `hex` crate's decoding was an eighth of a no-change cycle).
    fn from_hex(hex_text: &str) -> Option<DocHash> {
        let text = hex_text.as_bytes();
        if text.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        let mut invalid = 0u8;
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            let high = HEX_DIGITS[usize::from(pair[0])];
            let low = HEX_DIGITS[usize::from(pair[1])];
            invalid |= high | low;
            *byte = (high << 4) | low;
        }
        (invalid & 0x80 == 0).then_some(DocHash(bytes))
    }
}

/// 128 bits of XXH3 over an external id: a fixed-size stand-in for the id
/// that needs no allocation, computed for every record of the export and
/// every record of the store each cycle, so a hash built for speed (a
/// tenth of BLAKE3's time on an id). Two ids of one export collide with
/// probability about n² / 2¹²⁹ — for a million ids, 10⁻²⁷. XXH3 is not
/// built to resist chosen collisions, and an id need not be a GUID; what a
/// collision would do: two ids of the export sharing a key are reported as
/// one duplicated id and neither is sent (loud, not lost), and an export
/// record wrongly taken as unchanged would need, besides its id key, the
/// 128-bit fingerprint of its bytes to equal the one kept for the other
/// record, or its desired document to hash alike by BLAKE3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
/// Kept as one integer so that sorting and searching compare integers.
struct IdKey(u128);

impl IdKey {
    fn of(external_id: &str) -> IdKey {
        IdKey(xxhash_rust::xxh3::xxh3_128(external_id.as_bytes()))
    }

    /// The high and low 64 bits, as [`Seen`] keeps them.
    fn halves(self) -> [u64; 2] {
        // Truncation is the point: each half is 64 of the 128 bits.
        [(self.0 >> 64) as u64, self.0 as u64]
    }

    fn from_halves([high, low]: [u64; 2]) -> IdKey {
        IdKey((u128::from(high) << 64) | u128::from(low))
    }
}

/// One record the store knows, as pass one looks it up: what the store
/// holds as settled (`synced` or `invalid`) and trusts of its export
/// fingerprint. 56 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    id: [u64; 2],
    /// The desired hash it is settled with, when it is settled.
    settled: Option<DocHash>,
    /// The stored fingerprint of the export record it was last parsed
    /// from, when that record maps to the settled hash: a record of the
    /// export with this id and fingerprint is unchanged, and is not parsed.
    fingerprint: Option<[u8; 16]>,
}

const _: () = assert!(std::mem::size_of::<Known>() == 56);

/// A fingerprint the store keeps, as pass one reads it: the export record
/// of this id with these bytes maps to `maps_to`. 48 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeptFingerprint {
    id: [u64; 2],
    fingerprint: [u8; 16],
    maps_to: DocHash,
}

impl KeptFingerprint {
    /// Every well-formed fingerprint `store` keeps, sorted by id key.
    fn read(store: &Store) -> Result<Vec<KeptFingerprint>, StoreError> {
        let mut kept = Vec::new();
        store.for_each_fingerprint(&mut |row| {
            // A row edited by hand into something else is passed over: its
            // record is parsed, and its fingerprint written anew.
            if let (Ok(fingerprint), Some(maps_to)) = (
                <[u8; 16]>::try_from(row.fingerprint),
                DocHash::from_hex(row.desired_hash),
            ) {
                kept.push(KeptFingerprint {
                    id: IdKey::of(row.external_id).halves(),
                    fingerprint,
                    maps_to,
                });
            }
        })?;
        kept.sort_unstable_by_key(|kept| kept.id);
        Ok(kept)
    }
}

/// Give each of `records` (sorted by id key) the fingerprint kept for it
/// (`kept`, sorted too) when that fingerprint maps to the very hash the
/// record is settled with: only then is a record with those bytes
/// unchanged. One walk over both.
fn trust_fingerprints(records: &mut [Known], kept: &[KeptFingerprint]) {
    let mut kept = kept.iter().peekable();
    for record in records.iter_mut() {
        while kept.next_if(|k| k.id < record.id).is_some() {}
        if let Some(k) = kept.next_if(|k| k.id == record.id)
            && record.settled == Some(k.maps_to)
        {
            record.fingerprint = Some(k.fingerprint);
        }
    }
}

/// Everything pass one needs of the store: every record it knows, sorted by
/// id key, read in one pass over each of two tables
/// ([`Store::for_each_record_brief`], [`Store::for_each_fingerprint`]),
/// with where each run of keys sharing their
/// top bits starts. Keys are uniformly spread hashes, so a lookup reads
/// one start and searches a handful of entries instead of halving a
/// million; one lookup answers both "settled with this hash?" and "known by
/// this fingerprint?".
#[derive(Debug, Default)]
struct StoreKnows {
    records: Vec<Known>,
    /// `starts[p]`: the index of the first record whose key's top `bits`
    /// bits are at least `p`; one more entry holds the length.
    starts: Vec<u32>,
    bits: u32,
    /// Records with a trusted fingerprint.
    fingerprinted: usize,
}

impl StoreKnows {
    /// A resync takes every record up whatever the store says: only the
    /// ids are kept. Without `skip`, no fingerprint is trusted.
    ///
    /// The two tables are read at once, the kept fingerprints by a second
    /// connection on a thread of its own (alone they were a third of a
    /// no-change cycle, read while the other core waited). The two reads
    /// may see the store at two moments, which cannot make a fingerprint
    /// wrongly trusted: a fingerprint row states what those bytes map to,
    /// which does not change, and it is trusted only if the record, as its
    /// own read found it, is settled with that very hash.
    fn load(store: &Store, resync: bool, skip: bool) -> Result<StoreKnows, StoreError> {
        let trust = skip && !resync;
        // A store that cannot be opened twice is read on one connection.
        let beside = if trust {
            store.reader_beside().unwrap_or_else(|error| {
                tracing::warn!(error = %error, "the store is read on one connection");
                None
            })
        } else {
            None
        };
        StoreKnows::load_beside(store, beside, resync, skip)
    }

    /// [`StoreKnows::load`], the fingerprints read by `beside` when there
    /// is a second connection.
    fn load_beside(
        store: &Store,
        beside: Option<Store>,
        resync: bool,
        skip: bool,
    ) -> Result<StoreKnows, StoreError> {
        let trust = skip && !resync;
        let beside = beside.filter(|_| trust);
        thread::scope(|scope| {
            let beside = beside.map(|twin| scope.spawn(move || KeptFingerprint::read(&twin)));
            // Inside one snapshot: the records, and the fingerprints too
            // when there is no second connection, or when its read failed.
            let snapshot = read_snapshot(store);
            let records = match &snapshot {
                Ok(_) => StoreKnows::read_records(store, resync),
                Err(_) => Ok(Vec::new()),
            };
            // Joined before any error is returned, so that an error here
            // does not wait on the other read and a panic there is raised.
            let beside = beside.map(|thread| {
                thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            });
            let snapshot = snapshot?;
            let mut records = records?;
            let fingerprints = match beside {
                Some(Ok(fingerprints)) => fingerprints,
                Some(Err(error)) => {
                    tracing::warn!(error = %error, "the second connection could not read the store's fingerprints; read on the first");
                    KeptFingerprint::read(store)?
                }
                None if trust => KeptFingerprint::read(store)?,
                None => Vec::new(),
            };
            drop(snapshot);
            records.sort_unstable_by_key(|known| known.id);
            trust_fingerprints(&mut records, &fingerprints);
            drop(fingerprints);
            Ok(StoreKnows::of_sorted(records))
        })
    }

    /// Every record with the hash it is settled with (none on a resync).
    fn read_records(store: &Store, resync: bool) -> Result<Vec<Known>, StoreError> {
        let mut records = Vec::new();
        store.for_each_record_brief(&mut |record| {
            records.push(Known {
                id: IdKey::of(record.external_id).halves(),
                // A hash that is not one (the store was edited by hand)
                // keeps its record out: it is taken up as outdated.
                settled: record
                    .settled
                    .filter(|_| !resync)
                    .and_then(DocHash::from_hex),
                fingerprint: None,
            });
        })?;
        Ok(records)
    }

    /// The table of `records` in any order (the load sorts them itself).
    #[cfg(test)]
    fn new(mut records: Vec<Known>) -> StoreKnows {
        records.sort_unstable_by_key(|known| known.id);
        StoreKnows::of_sorted(records)
    }

    /// The table of `records`, sorted by id key.
    fn of_sorted(records: Vec<Known>) -> StoreKnows {
        // One or two records per bucket (4 bytes of starts per record or
        // less), so that a lookup reads one start and one or two entries.
        let bits = records.len().max(1).ilog2().min(28);
        let buckets = 1usize << bits;
        let mut starts = Vec::with_capacity(buckets + 1);
        let mut at = 0;
        for bucket in 0..buckets {
            while at < records.len() && StoreKnows::bucket(records[at].id, bits) < bucket {
                at += 1;
            }
            starts.push(u32::try_from(at).unwrap_or(u32::MAX));
        }
        starts.push(u32::try_from(records.len()).unwrap_or(u32::MAX));
        let fingerprinted = records.iter().filter(|k| k.fingerprint.is_some()).count();
        StoreKnows {
            records,
            starts,
            bits,
            fingerprinted,
        }
    }

    fn bucket([high, _]: [u64; 2], bits: u32) -> usize {
        if bits == 0 {
            0
        } else {
            (high >> (64 - bits)) as usize
        }
    }

    /// The entries of the bucket `id` falls in.
    fn run(&self, id: IdKey) -> Option<&[Known]> {
        let bucket = StoreKnows::bucket(id.halves(), self.bits);
        let (Some(&start), Some(&end)) = (self.starts.get(bucket), self.starts.get(bucket + 1))
        else {
            return None;
        };
        self.records.get(start as usize..end as usize)
    }

    fn get(&self, id: IdKey) -> Option<&Known> {
        let run = self.run(id)?;
        let at = run
            .binary_search_by_key(&id.halves(), |known| known.id)
            .ok()?;
        run.get(at)
    }

    /// Start fetching where the entries of `id` start, without waiting:
    /// the first of the two reads of a lookup.
    fn prefetch_start(&self, id: IdKey) {
        if let Some(start) = self.starts.get(StoreKnows::bucket(id.halves(), self.bits)) {
            prefetch_read(start);
        }
    }

    /// Start fetching the entries of `id`, the second read of a lookup;
    /// best once [`StoreKnows::prefetch_start`] has brought in the start.
    fn prefetch_entries(&self, id: IdKey) {
        // A bucket holds one or two entries; the first two are enough.
        for entry in self.run(id).into_iter().flatten().take(2) {
            prefetch_read(entry);
        }
    }

    /// Whether the store holds the record as settled with this desired
    /// document: unchanged.
    fn settled_with(&self, id: IdKey, hash: DocHash) -> bool {
        self.get(id)
            .is_some_and(|known| known.settled == Some(hash))
    }

    /// Whether these bytes are the record's trusted fingerprint: unchanged
    /// without being parsed.
    fn known_by(&self, id: IdKey, fingerprint: &[u8; 16]) -> bool {
        self.get(id)
            .is_some_and(|known| known.fingerprint.as_ref() == Some(fingerprint))
    }

    /// Every id the store knows, sorted.
    fn ids(&self) -> impl Iterator<Item = IdKey> + '_ {
        self.records
            .iter()
            .map(|known| IdKey::from_halves(known.id))
    }
}

/// Ask the processor to bring `value` into its caches; nothing waits.
fn prefetch_read<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: SSE, which `_mm_prefetch` needs, is part of every x86_64
        // processor; a prefetch is only a hint, which reads nothing the
        // program sees and never faults, and `value` is a live reference.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(value).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// The fingerprint a store keeps of an export record: XXH3 over the
/// fingerprint of the record's bytes and `context`, the fingerprint of
/// everything else that shapes its desired document
/// ([`fingerprint_context`]). Equal stored fingerprints mean equal bytes
/// read the same way, so the same desired document.
pub fn stored_fingerprint(raw: RawFingerprint, context: u128) -> [u8; 16] {
    let mut input = [0u8; 32];
    input[..16].copy_from_slice(&raw.0.to_le_bytes());
    input[16..].copy_from_slice(&context.to_le_bytes());
    xxhash_rust::xxh3::xxh3_128(&input).to_be_bytes()
}

/// What, besides a record's bytes, decides its desired document and how it
/// is planned: the mapper ([`Mapper::fingerprint`]: the mapping after
/// overrides, header aliases, keyed lists, entity, default currency, code
/// version) and `sync.on_cleared`. Any change of one makes every stored
/// fingerprint a stranger.
pub fn fingerprint_context(mapper: &Mapper, on_cleared: crate::diff::OnCleared) -> u128 {
    let mut input = mapper.fingerprint().to_le_bytes().to_vec();
    input.extend_from_slice(format!("{on_cleared:?}").as_bytes());
    xxhash_rust::xxh3::xxh3_128(&input)
}

/// Why a record is taken up by the push phase. Which of new, changed or
/// retried an outdated record is, the push phase reads from its row anyway;
/// pass one does not look each one up to say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkReason {
    /// The store does not hold it as settled with this desired document: it
    /// is new, its document changed, or its last attempt failed or has an
    /// unknown outcome.
    Outdated,
    /// A resync asks for it whatever the store says.
    Resync,
}

/// One occurrence of an external id in the export: every record of the
/// export has one, so it is kept small. The id is held as two halves, which
/// aligns the struct to 8 bytes instead of the 16 of a `u128` (40 bytes a
/// record instead of 48), and the hash of a record taken up is kept apart,
/// in [`Scan::work_hashes`], since the others never need it (64 bytes
/// before: 64 MB at a million records, held twice while the two threads'
/// lists were joined).
#[derive(Debug, Clone, Copy)]
struct Seen {
    id: [u64; 2],
    /// Index into [`Scan::files`].
    file: u32,
    line: u64,
    ordinal: u64,
    verdict: Verdict,
}

/// What pass one decides for a record that maps cleanly and occurs once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Left out by `only` (a resync of some records): neither work nor
    /// unchanged.
    NotSelected,
    /// The store holds it as settled with this very desired document.
    Unchanged,
    Work(WorkReason),
}

impl Verdict {
    /// The decision for a record: whether `only` selects it, whether this
    /// is a resync, and whether the store holds it as settled with the
    /// desired document it maps to now.
    fn of(selected: bool, resync: bool, settled: bool) -> Verdict {
        match (selected, resync, settled) {
            (false, _, _) => Verdict::NotSelected,
            (true, true, _) => Verdict::Work(WorkReason::Resync),
            (true, false, true) => Verdict::Unchanged,
            (true, false, false) => Verdict::Work(WorkReason::Outdated),
        }
    }

    fn work(self) -> Option<WorkReason> {
        match self {
            Verdict::Work(reason) => Some(reason),
            Verdict::NotSelected | Verdict::Unchanged => None,
        }
    }
}

const _: () = assert!(std::mem::size_of::<Seen>() == 40);

impl Seen {
    fn id(&self) -> IdKey {
        IdKey::from_halves(self.id)
    }

    /// Where it occurred, its file looked up in `files` ([`Scan::files`]).
    fn location(&self, files: &[PathBuf]) -> RecordLocation {
        RecordLocation {
            file: files.get(self.file as usize).cloned().unwrap_or_default(),
            line: self.line,
            ordinal: self.ordinal,
        }
    }
}

/// Everything pass one learnt.
#[derive(Debug, Default)]
pub struct Scan {
    pub export: ExportSummary,
    /// Records that could not be mapped.
    pub record_errors: Vec<RecordError>,
    /// External ids that occur more than once, with every place, sorted by
    /// id.
    pub duplicates: Vec<(String, Vec<RecordLocation>)>,
    /// Records that map cleanly and occur once.
    pub valid: u64,
    /// Of those, the ones whose stored state already matches.
    pub unchanged: u64,
    /// Of those, the ones `only` left out.
    pub not_selected: u64,
    /// The unchanged records' ids, in export order, when
    /// [`ScanOptions::list_unchanged`] asked for them.
    pub unchanged_ids: Vec<String>,
    /// Records the store knows that this export lacks.
    pub missing_from_export: u64,
    /// Records whose fingerprint this pass recorded for the next.
    pub fingerprinted: u64,
    /// Records known unchanged by their fingerprint: neither parsed nor
    /// mapped.
    pub known_by_fingerprint: u64,
    /// Records the store knows.
    pub known: u64,
    /// The context of the stored fingerprints (see [`stored_fingerprint`])
    /// when this cycle records them: the second read of the export
    /// fingerprints the records it takes up with it.
    pub fingerprint_context: Option<u128>,
    /// Records needing work, with their documents, when they fit the
    /// budget; `None` means the push phase must read the export again.
    pub retained: Option<Retained>,
    /// The export's columns against the mapping and the fields fed before.
    pub schema: SchemaReport,
    /// Ids that occur once, sorted by key.
    seen: Vec<Seen>,
    /// The hash each record taken up maps to, sorted by key.
    work_hashes: Vec<(IdKey, DocHash)>,
    work_count: u64,
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
    /// Whether fed fields whose columns vanished refuse the scan.
    pub schema: SchemaPolicy,
    /// Keep the ids of unchanged records (`sync --dry-run --all` lists
    /// them); off, they are only counted.
    pub list_unchanged: bool,
    /// Whether records are known by their stored fingerprints.
    pub fingerprints: Fingerprints,
}

/// How pass one uses the fingerprints of export records
/// (ARCHITECTURE.md, "Skipping unchanged records").
#[derive(Debug, Clone, Copy, Default)]
pub struct Fingerprints {
    /// [`fingerprint_context`] of this configuration.
    pub context: u128,
    /// Take a record whose stored fingerprint matches as unchanged without
    /// parsing it. Off (`check`, which validates every record), or in a
    /// resync, every record is parsed and mapped.
    pub skip: bool,
    /// Keep the fingerprints of the records parsed, with the hash each maps
    /// to: of the unchanged ones in pass one, of those taken up with them
    /// when they settle (not in a dry run, which writes nothing).
    pub record: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("export unreadable, nothing was changed: {0}")]
    Export(ExportError),
    /// A file of the export changed during the read ([`ExportError::Changed`]).
    #[error("the export changed while it was being read, nothing was changed: {0}")]
    Changed(ExportError),
    /// A file of the export is too fresh ([`ExportError::Unsettled`]): the
    /// cycle is skipped, not failed.
    #[error("cycle skipped, nothing was read or changed: {0}")]
    Unsettled(ExportError),
    /// Fields fed before lost every column ([`SchemaPolicy::Guard`]).
    #[error(transparent)]
    SchemaChanged(#[from] SchemaChanged),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ExportError> for ScanError {
    fn from(error: ExportError) -> ScanError {
        match error {
            ExportError::Changed { .. } => ScanError::Changed(error),
            ExportError::Unsettled { .. } => ScanError::Unsettled(error),
            other => ScanError::Export(other),
        }
    }
}

impl Scan {
    /// Whether more of the records the store knows are missing from the
    /// export than `max_ratio` allows.
    pub fn too_many_missing(&self, max_ratio: f64) -> bool {
        self.known > 0 && self.missing_from_export as f64 / self.known as f64 > max_ratio
    }

    /// Each duplicated external id with the error that names every place.
    pub fn duplicate_errors(&self) -> impl Iterator<Item = (&str, String)> {
        self.duplicates.iter().map(|(external_id, places)| {
            let places: Vec<String> = places.iter().map(ToString::to_string).collect();
            let message = format!(
                "external id {external_id} occurs {} times: {}; none of its rows is sent",
                places.len(),
                places.join(", ")
            );
            (external_id.as_str(), message)
        })
    }

    /// Whether the record with this id and hash should be pushed; `None`
    /// for records pass one did not take up (unchanged, invalid,
    /// duplicated, filtered out, or not seen).
    pub fn work_for(&self, external_id: &str, hash: DocHash) -> Option<WorkFor> {
        let id = IdKey::of(external_id);
        let reason = self.find(id)?.verdict.work()?;
        let at = self
            .work_hashes
            .binary_search_by_key(&id, |(id, _)| *id)
            .ok()?;
        if self.work_hashes.get(at).map(|(_, hash)| *hash) != Some(hash) {
            return Some(WorkFor::ChangedSinceScan);
        }
        Some(WorkFor::Push(reason))
    }

    /// Records taken up for the push phase.
    pub fn work_count(&self) -> u64 {
        self.work_count
    }

    fn find(&self, id: IdKey) -> Option<&Seen> {
        let at = self.seen.binary_search_by_key(&id, Seen::id).ok()?;
        self.seen.get(at)
    }

    fn location(&self, seen: &Seen) -> RecordLocation {
        seen.location(&self.files)
    }
}

/// The records pass one took up, in export order, each document kept as its
/// canonical JSON text and turned back into a record when the push phase
/// takes it: a quarter of the memory of the documents themselves.
#[derive(Debug, Default)]
pub struct Retained {
    records: Vec<RetainedRecord>,
}

#[derive(Debug)]
struct RetainedRecord {
    external_id: String,
    referral_id: Option<String>,
    document: RetainedDocument,
    hash: DocHash,
    reason: WorkReason,
    fingerprint: Option<[u8; 16]>,
}

/// A record pass one took up, as the push phase takes it.
#[derive(Debug)]
pub struct TakenUp {
    pub mapped: MappedRecord,
    pub hash: DocHash,
    pub reason: WorkReason,
    /// The stored fingerprint of the bytes it was read from, to be written
    /// with the record when it settles with `hash`; `None` when the store
    /// has it already or the cycle writes nothing.
    pub fingerprint: Option<[u8; 16]>,
}

#[derive(Debug)]
enum RetainedDocument {
    Text(Box<str>),
    /// Documents too deep for serde_json to read back (its recursion limit
    /// is 128) stay as they are.
    Tree(Value),
}

/// Deeper documents are kept as trees; mapped documents are a few levels
/// deep.
const MAX_TEXT_DEPTH: usize = 64;

impl Retained {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Keep `mapped`, whose canonical JSON is `canonical`.
    fn push(
        &mut self,
        mapped: MappedRecord,
        canonical: &[u8],
        hash: DocHash,
        reason: WorkReason,
        fingerprint: Option<[u8; 16]>,
    ) {
        let document = match std::str::from_utf8(canonical) {
            Ok(text) if depth(&mapped.document) <= MAX_TEXT_DEPTH => {
                RetainedDocument::Text(text.into())
            }
            _ => RetainedDocument::Tree(mapped.document),
        };
        self.records.push(RetainedRecord {
            external_id: mapped.external_id,
            referral_id: mapped.referral_id,
            document,
            hash,
            reason,
            fingerprint,
        });
    }

    /// `(external id, referral id)` of every record that gives a referral
    /// id in the export.
    pub fn referral_claims(&self) -> impl Iterator<Item = (&str, &str)> {
        self.records.iter().filter_map(|record| {
            Some((record.external_id.as_str(), record.referral_id.as_deref()?))
        })
    }

    fn retain_ids(&mut self, keep: impl Fn(&str) -> bool) {
        self.records.retain(|record| keep(&record.external_id));
    }
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
        Value::Array(elements) => 1 + elements.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

impl IntoIterator for Retained {
    type Item = TakenUp;
    type IntoIter = RetainedRecords;

    fn into_iter(self) -> RetainedRecords {
        RetainedRecords(self.records.into_iter())
    }
}

/// The retained records, read back one at a time.
#[derive(Debug)]
pub struct RetainedRecords(std::vec::IntoIter<RetainedRecord>);

impl Iterator for RetainedRecords {
    type Item = TakenUp;

    fn next(&mut self) -> Option<Self::Item> {
        for record in self.0.by_ref() {
            let document = match record.document {
                RetainedDocument::Tree(document) => document,
                RetainedDocument::Text(text) => match serde_json::from_str(&text) {
                    Ok(document) => document,
                    // serde_json reads back what it wrote at this depth;
                    // should that ever fail, the record is not sent and its
                    // stored state, untouched, takes it up next cycle.
                    Err(error) => {
                        tracing::error!(
                            external_id = %record.external_id,
                            error = %error,
                            "retained document unreadable; the record waits for the next cycle"
                        );
                        continue;
                    }
                },
            };
            let mapped = MappedRecord {
                external_id: record.external_id,
                referral_id: record.referral_id,
                document,
            };
            return Some(TakenUp {
                mapped,
                hash: record.hash,
                reason: record.reason,
                fingerprint: record.fingerprint,
            });
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.0.len()))
    }
}

/// The push phase's verdict on a record read the second time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkFor {
    Push(WorkReason),
    /// The export was rewritten between the two reads.
    ChangedSinceScan,
}

/// Run pass one. `store` is only read, except that the fingerprints of the
/// unchanged records parsed are kept when [`Fingerprints::record`] asks
/// for it.
pub fn scan_export(
    export_options: &ExportOptions,
    mapper: &Mapper,
    store: &Store,
    options: &ScanOptions,
) -> Result<Scan, ScanError> {
    let known = StoreKnows::load(store, options.resync, options.fingerprints.skip)?;
    let mut deciding = Deciding::new(mapper, options, &known, store);
    let prefilter = KnownRecords::new(mapper, options, &known);
    let (summary, prefilter) = read_and_decide(export_options, prefilter, &mut deciding);
    deciding.found.finish()?;
    let mut read = deciding.into_read(summary?, prefilter);
    // The rest reads the store once more, in one snapshot.
    let _snapshot = read_snapshot(store)?;
    // Before anything is planned: a field fed before whose columns are
    // gone would be cleared on every referral.
    read.scan.schema = schema::compare(
        mapper,
        &read.scan.export.columns,
        &schema::fed_before(store)?,
    );
    if !read.scan.schema.dropped.is_empty() && options.schema == SchemaPolicy::Guard {
        return Err(SchemaChanged(read.scan.schema.dropped.clone()).into());
    }
    let repeated = read.keep_unique();
    if !repeated.is_empty() {
        read.scan.duplicates = name_duplicates(export_options, mapper, &read.scan, &repeated)?;
        let repeated_ids: HashSet<IdKey> = repeated.iter().map(|run| run[0].id()).collect();
        read.retained
            .retain_ids(|id| !repeated_ids.contains(&IdKey::of(id)));
    }
    read.refuse_unmappable_twins();
    read.count_missing(&known, &repeated);
    Ok(read.into_scan())
}

/// The deciding half of pass one: each record the reading thread hands
/// over is parsed (when it was not), mapped, hashed and decided here.
struct Deciding<'a> {
    mapper: &'a Mapper,
    options: &'a ScanOptions,
    known: &'a StoreKnows,
    found: FoundFingerprints<'a>,
    /// The canonical JSON of the record being decided.
    canonical: Vec<u8>,
    record_errors: Vec<RecordError>,
    files: Vec<PathBuf>,
    seen: Vec<Seen>,
    work_hashes: Vec<(IdKey, DocHash)>,
    retained: Retained,
    over_budget: bool,
    /// `(ordinal, external id)`, when asked to list them.
    unchanged_ids: Vec<(u64, String)>,
}

impl<'a> Deciding<'a> {
    fn new(
        mapper: &'a Mapper,
        options: &'a ScanOptions,
        known: &'a StoreKnows,
        store: &'a Store,
    ) -> Self {
        Deciding {
            mapper,
            options,
            known,
            found: FoundFingerprints::new(store),
            canonical: Vec::new(),
            record_errors: Vec::new(),
            files: Vec::new(),
            seen: Vec::new(),
            work_hashes: Vec::new(),
            retained: Retained::default(),
            over_budget: false,
            unchanged_ids: Vec::new(),
        }
    }

    /// Map, hash and decide one record; stop once the store failed.
    fn decide(&mut self, record: &Record) -> ControlFlow<()> {
        let mapped = match self.mapper.map(record) {
            Ok(mapped) => mapped,
            Err(error) => {
                self.record_errors.push(error);
                return ControlFlow::Continue(());
            }
        };
        let hash = canonical_hash(&mapped.document, &mut self.canonical);
        let id = IdKey::of(&mapped.external_id);
        let only = self.options.only.as_ref();
        let verdict = Verdict::of(
            only.is_none_or(|only| only.contains(&mapped.external_id)),
            self.options.resync,
            self.known.settled_with(id, hash),
        );
        // What these bytes map to, kept for the next cycle: trusted while
        // the record is settled with this hash. A record taken up has its
        // fingerprint written with it when it settles; the others now.
        let fingerprint = stored_fingerprint(record.fingerprint, self.options.fingerprints.context);
        let fresh = (self.options.fingerprints.record && !self.known.known_by(id, &fingerprint))
            .then_some(fingerprint);
        if let (Some(fingerprint), Verdict::Unchanged | Verdict::NotSelected) = (fresh, verdict)
            && self
                .found
                .add(&mapped.external_id, fingerprint, hash)
                .is_err()
        {
            return ControlFlow::Break(());
        }
        self.seen.push(Seen {
            id: id.halves(),
            file: file_index(&mut self.files, &record.location.file),
            line: record.location.line,
            ordinal: record.location.ordinal,
            verdict,
        });
        match verdict {
            Verdict::Unchanged if self.options.list_unchanged => self
                .unchanged_ids
                .push((record.location.ordinal, mapped.external_id)),
            Verdict::Work(reason) => {
                self.work_hashes.push((id, hash));
                self.retain(mapped, hash, reason, fresh);
            }
            Verdict::Unchanged | Verdict::NotSelected => {}
        }
        ControlFlow::Continue(())
    }

    /// Keep a record taken up for the push phase while the budget lasts;
    /// past it, keep none (the push phase reads the export again).
    fn retain(
        &mut self,
        mapped: MappedRecord,
        hash: DocHash,
        reason: WorkReason,
        fingerprint: Option<[u8; 16]>,
    ) {
        if self.over_budget {
            return;
        }
        if self.retained.len() < self.options.retain_budget {
            self.retained
                .push(mapped, &self.canonical, hash, reason, fingerprint);
        } else {
            self.over_budget = true;
            self.retained = Retained::default();
        }
    }

    /// What both threads learnt, under one numbering of the files.
    fn into_read(mut self, summary: ExportSummary, mut prefilter: KnownRecords<'_>) -> ReadExport {
        let renumbered: Vec<u32> = prefilter
            .files
            .iter()
            .map(|file| file_index(&mut self.files, file))
            .collect();
        for known in &mut prefilter.seen {
            known.file = renumbered
                .get(known.file as usize)
                .copied()
                .unwrap_or(u32::MAX);
        }
        let known_by_fingerprint = prefilter.seen.len() as u64;
        // The smaller list joins the larger one, so that a million records
        // are not held twice on the way.
        let seen = join(self.seen, std::mem::take(&mut prefilter.seen));
        let mut unchanged_ids = self.unchanged_ids;
        unchanged_ids.append(&mut prefilter.unchanged_ids);
        unchanged_ids.sort_unstable_by_key(|(ordinal, _)| *ordinal);
        let scan = Scan {
            export: summary,
            record_errors: self.record_errors,
            unchanged_ids: unchanged_ids.into_iter().map(|(_, id)| id).collect(),
            fingerprinted: self.found.recorded,
            known_by_fingerprint,
            fingerprint_context: self
                .options
                .fingerprints
                .record
                .then_some(self.options.fingerprints.context),
            files: self.files,
            ..Scan::default()
        };
        ReadExport {
            scan,
            seen,
            work_hashes: self.work_hashes,
            retained: self.retained,
            over_budget: self.over_budget,
        }
    }
}

/// Read the export on a thread of its own while this one maps, hashes and
/// decides. Parsing is about half the work, so with a second core free the
/// pass costs little more than the parse. Records the store knows by their
/// fingerprint are settled on the reading thread, unparsed; with a
/// prefilter, the JSON records it does not know are parsed here too, so
/// that the reading thread — the one that bounds the pass — only copies
/// them, running ahead of this one by up to [`IN_FLIGHT_BUDGET`] through
/// a run of them.
fn read_and_decide<'p>(
    export_options: &ExportOptions,
    mut prefilter: KnownRecords<'p>,
    deciding: &mut Deciding<'_>,
) -> (Result<ExportSummary, ExportError>, KnownRecords<'p>) {
    // Bounded by the budget, which the reading thread keeps: a batch is
    // sent only when what is in flight leaves room for it.
    let (batches, received) = mpsc::channel::<Vec<Offered>>();
    // Batches go back to the reading thread once decided, so that what it
    // allocated is freed by it (the allocator's fast path), batch buffers
    // are reused, and the budget is given back.
    let (recycle, recycled) = mpsc::channel::<Vec<Offered>>();
    thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            let mut in_flight = InFlight::new(recycled);
            let use_prefilter = prefilter.known.fingerprinted > 0;
            let mut on_offered = |offered| {
                batch.push(offered);
                if batch.len() < BATCH {
                    return ControlFlow::Continue(());
                }
                // Gone: the other half stopped, on a store error or on a
                // record that does not parse.
                let cost = batch_cost(&batch);
                let Ok(next) = in_flight.make_room(cost) else {
                    return ControlFlow::Break(());
                };
                let full = std::mem::replace(&mut batch, next);
                match batches.send(full) {
                    Ok(()) => {
                        in_flight.cost += cost;
                        ControlFlow::Continue(())
                    }
                    Err(_) => ControlFlow::Break(()),
                }
            };
            let summary = if use_prefilter {
                export::read_export_offering(export_options, &mut prefilter, &mut on_offered)
            } else {
                let mut on_record = |record| on_offered(Offered::Parsed(record));
                export::read_export_with(export_options, None, &mut on_record)
            };
            if !batch.is_empty() {
                let _ = batches.send(batch);
            }
            (summary, prefilter)
        });
        // A record that does not parse ends the read here: the records
        // before it were decided, the reading thread stops at its next
        // batch, and its error is the read's — unless the reading thread
        // met one earlier in the same file (the exact reader, reading a
        // file again from its start, can refuse a record the slice parse
        // took: one nested deeper than serde_json allows in the whole
        // file).
        let unparsable = decide_batches(received, recycle, deciding);
        let (summary, prefilter) = reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        match unparsable {
            Some(error) if !is_before(&summary, &error) => (Err(error), prefilter),
            _ => (summary, prefilter),
        }
    })
}

/// The deciding half of [`read_and_decide`]: each batch handed over, in
/// order, given back once decided; the error of a record that does not
/// parse, which ends it, as a store error does. Both channel ends are
/// dropped when it returns, so that a reading thread waiting on either
/// learns that the other half stopped.
fn decide_batches(
    received: mpsc::Receiver<Vec<Offered>>,
    give_back: mpsc::Sender<Vec<Offered>>,
    deciding: &mut Deciding<'_>,
) -> Option<ExportError> {
    for batch in received {
        for offered in &batch {
            let flow = match offered {
                Offered::Parsed(record) => deciding.decide(record),
                Offered::Unparsed(unparsed) => match unparsed.parse() {
                    Ok(record) => deciding.decide(&record),
                    Err(error) => return Some(error),
                },
            };
            if flow.is_break() {
                return None;
            }
        }
        // Once the reading thread is done, it frees nothing more: the
        // rest is freed here.
        let _ = give_back.send(batch);
    }
    None
}

/// What a batch counts for against [`IN_FLIGHT_BUDGET`].
fn batch_cost(batch: &[Offered]) -> usize {
    batch
        .iter()
        .map(|offered| match offered {
            Offered::Parsed(_) => PARSED_COST,
            Offered::Unparsed(unparsed) => unparsed.text_len(),
        })
        .sum()
}

/// The reading thread's account of the batches handed over and not yet
/// given back, and the buffers given back.
struct InFlight {
    returned: mpsc::Receiver<Vec<Offered>>,
    cost: usize,
    spare: Option<Vec<Offered>>,
}

impl InFlight {
    fn new(returned: mpsc::Receiver<Vec<Offered>>) -> Self {
        InFlight {
            returned,
            cost: 0,
            spare: None,
        }
    }

    /// Take back the batches decided, waiting for them while a batch of
    /// `cost` would take what is in flight past the budget (a batch alone
    /// past it goes once nothing else is in flight); an empty buffer for
    /// the next batch. `Err` once the deciding thread is gone.
    fn make_room(&mut self, cost: usize) -> Result<Vec<Offered>, ()> {
        while let Ok(batch) = self.returned.try_recv() {
            self.take_back(batch);
        }
        while self.cost > 0 && self.cost + cost > IN_FLIGHT_BUDGET {
            let batch = self.returned.recv().map_err(|_| ())?;
            self.take_back(batch);
        }
        Ok(self
            .spare
            .take()
            .unwrap_or_else(|| Vec::with_capacity(BATCH)))
    }

    /// Its records freed here, where most were allocated.
    fn take_back(&mut self, mut batch: Vec<Offered>) {
        self.cost = self.cost.saturating_sub(batch_cost(&batch));
        batch.clear();
        self.spare = Some(batch);
    }
}

/// Whether the read ended with a parse error in the file of `error`,
/// before it.
fn is_before(read: &Result<ExportSummary, ExportError>, error: &ExportError) -> bool {
    match (read, error) {
        (
            Err(ExportError::Parse {
                path, line, column, ..
            }),
            ExportError::Parse {
                path: other,
                line: other_line,
                column: other_column,
                ..
            },
        ) => path == other && (line, column) < (other_line, other_column),
        _ => false,
    }
}

/// Pass one once the export is read: the scan so far, and what is still
/// to be sorted, checked and counted before it is one.
struct ReadExport {
    scan: Scan,
    seen: Vec<Seen>,
    work_hashes: Vec<(IdKey, DocHash)>,
    retained: Retained,
    over_budget: bool,
}

impl ReadExport {
    /// Sort the occurrences by id, keep in the scan the ids that occur
    /// once, and return every occurrence of the others, one run per id.
    fn keep_unique(&mut self) -> Vec<Vec<Seen>> {
        let mut seen = std::mem::take(&mut self.seen);
        // Sorted by id then place, an id's occurrences are neighbours: the
        // first of a run is where it first occurred.
        seen.sort_unstable_by_key(|s| (s.id, s.ordinal));
        let repeated = keep_unique(&mut seen);
        self.scan.seen = seen;
        let mut work_hashes = std::mem::take(&mut self.work_hashes);
        work_hashes.sort_unstable_by_key(|(id, _)| *id);
        self.scan.work_hashes = work_hashes;
        repeated
    }

    /// An id that also occurs on a row that could not be mapped is
    /// duplicated too: none of its rows is sent.
    fn refuse_unmappable_twins(&mut self) {
        let scan = &mut self.scan;
        let unmappable: HashMap<IdKey, (&str, &RecordLocation)> = scan
            .record_errors
            .iter()
            .filter_map(|e| {
                let id = e.external_id.as_deref()?;
                Some((IdKey::of(id), (id, &e.location)))
            })
            .collect();
        if unmappable.is_empty() {
            return;
        }
        let files = &scan.files;
        let mut twins = Vec::new();
        scan.seen.retain(|s| match unmappable.get(&s.id()) {
            Some((id, at)) => {
                let mut places = vec![(*at).clone(), s.location(files)];
                places.sort_by_key(|p| p.ordinal);
                twins.push((id.to_string(), places));
                false
            }
            None => true,
        });
        self.retained
            .retain_ids(|id| !unmappable.contains_key(&IdKey::of(id)));
        scan.duplicates.extend(twins);
        scan.duplicates.sort_by(|a, b| a.0.cmp(&b.0));
    }

    /// The records the store knows (`known`, sorted) that this export
    /// lacks. Ids that are in the export, if not valid there, are not
    /// missing.
    fn count_missing(&mut self, known: &StoreKnows, repeated: &[Vec<Seen>]) {
        let mut in_export: HashSet<IdKey> = self
            .scan
            .record_errors
            .iter()
            .filter_map(|e| e.external_id.as_deref())
            .map(IdKey::of)
            .collect();
        in_export.extend(repeated.iter().map(|run| run[0].id()));
        // Both sorted by id: one walk through each.
        let mut valid = self.scan.seen.iter().map(Seen::id).peekable();
        let mut missing = 0u64;
        for id in known.ids() {
            while valid.next_if(|seen| *seen < id).is_some() {}
            if valid.next_if_eq(&id).is_none() && !in_export.contains(&id) {
                missing += 1;
            }
        }
        self.scan.known = known.records.len() as u64;
        self.scan.missing_from_export = missing;
    }

    fn into_scan(self) -> Scan {
        let mut scan = self.scan;
        if !scan.unchanged_ids.is_empty() {
            // Duplicated or unmappable ids were taken out of `seen`.
            let valid: HashSet<IdKey> = scan.seen.iter().map(Seen::id).collect();
            scan.unchanged_ids
                .retain(|id| valid.contains(&IdKey::of(id)));
        }
        let count = |verdict: fn(&Verdict) -> bool| {
            scan.seen.iter().filter(|s| verdict(&s.verdict)).count() as u64
        };
        scan.valid = scan.seen.len() as u64;
        scan.work_count = count(|v| matches!(v, Verdict::Work(_)));
        scan.not_selected = count(|v| *v == Verdict::NotSelected);
        scan.unchanged = count(|v| *v == Verdict::Unchanged);
        scan.retained = (!self.over_budget).then_some(self.retained);
        scan
    }
}

/// A read transaction: every query in it sees one state of the store, and
/// SQLite takes its file lock once.
fn read_snapshot(store: &Store) -> Result<rusqlite::Transaction<'_>, StoreError> {
    store
        .connection()
        .unchecked_transaction()
        .map_err(|source| StoreError::Sqlite {
            path: store.path().to_path_buf(),
            source,
        })
}

/// The prefilter of pass one, on the reading thread: a record whose id and
/// stored fingerprint the store holds as settled is unchanged, and is
/// neither parsed nor mapped. It is still seen — for duplicates, for the
/// records missing from the export, for `only` — under its normalised id.
struct KnownRecords<'a> {
    id_column: &'static str,
    known: &'a StoreKnows,
    context: u128,
    only: Option<&'a HashSet<String>>,
    list_unchanged: bool,
    seen: Vec<Seen>,
    /// `(ordinal, external id)`, when asked to list them.
    unchanged_ids: Vec<(u64, String)>,
    /// The files of `seen`, numbered on this thread.
    files: Vec<PathBuf>,
    /// The keys of the last ids [`Prefilter::expect`] was given, a ring.
    upcoming: [Option<IdKey>; 2],
    next_upcoming: usize,
}

impl<'a> KnownRecords<'a> {
    fn new(mapper: &Mapper, options: &'a ScanOptions, known: &'a StoreKnows) -> Self {
        KnownRecords {
            id_column: mapper.id_column(),
            known,
            context: options.fingerprints.context,
            only: options.only.as_ref(),
            list_unchanged: options.list_unchanged,
            seen: Vec::new(),
            unchanged_ids: Vec::new(),
            files: Vec::new(),
            upcoming: [None; 2],
            next_upcoming: 0,
        }
    }
}

impl Prefilter for KnownRecords<'_> {
    fn id_column(&self) -> &str {
        self.id_column
    }

    fn known(&mut self, id: &str, fingerprint: RawFingerprint, place: Place<'_>) -> bool {
        with_normalised_external_id(id, |external_id| {
            self.known_as(external_id, fingerprint, place)
        })
    }

    /// The table is larger than the caches: a lookup waits on memory,
    /// twice (the bucket's start, then its entries). Both are fetched while
    /// the reader reads the records before: the start when the id is
    /// glanced at, the entries two glances later.
    fn expect(&mut self, id: &str) {
        let key = with_normalised_external_id(id, IdKey::of);
        self.known.prefetch_start(key);
        if let Some(earlier) = self.upcoming[self.next_upcoming].replace(key) {
            self.known.prefetch_entries(earlier);
        }
        self.next_upcoming = (self.next_upcoming + 1) % self.upcoming.len();
    }
}

impl KnownRecords<'_> {
    fn known_as(
        &mut self,
        external_id: &str,
        fingerprint: RawFingerprint,
        place: Place<'_>,
    ) -> bool {
        let key = IdKey::of(external_id);
        if !self
            .known
            .known_by(key, &stored_fingerprint(fingerprint, self.context))
        {
            return false;
        }
        let wanted = self.only.is_none_or(|only| only.contains(external_id));
        self.seen.push(Seen {
            id: key.halves(),
            file: file_index(&mut self.files, place.file),
            line: place.line,
            ordinal: place.ordinal,
            verdict: if wanted {
                Verdict::Unchanged
            } else {
                Verdict::NotSelected
            },
        });
        if self.list_unchanged && wanted {
            self.unchanged_ids
                .push((place.ordinal, external_id.to_owned()));
        }
        true
    }
}

/// Fingerprints of the unchanged records parsed (those taken up carry
/// theirs to their settle), with the hash each maps to, written to the
/// store in batches as they are found (each batch one short transaction),
/// so that the next cycle knows them without parsing them.
struct FoundFingerprints<'a> {
    store: &'a Store,
    batch: Vec<(String, [u8; 16], String)>,
    recorded: u64,
    failed: Option<StoreError>,
}

/// Fingerprints written to the store at a time.
const FINGERPRINT_BATCH: usize = 10_000;

impl<'a> FoundFingerprints<'a> {
    fn new(store: &'a Store) -> Self {
        FoundFingerprints {
            store,
            batch: Vec::new(),
            recorded: 0,
            failed: None,
        }
    }

    /// Note that `external_id`'s record, with `fingerprint`, maps to `hash`
    /// (asked only when the cycle records fingerprints); an error once the
    /// store failed.
    fn add(&mut self, external_id: &str, fingerprint: [u8; 16], hash: DocHash) -> Result<(), ()> {
        self.batch
            .push((external_id.to_owned(), fingerprint, hash.to_hex()));
        if self.batch.len() >= FINGERPRINT_BATCH {
            self.flush();
        }
        if self.failed.is_some() {
            Err(())
        } else {
            Ok(())
        }
    }

    fn flush(&mut self) {
        if self.batch.is_empty() || self.failed.is_some() {
            return;
        }
        match self.store.record_fingerprints(&self.batch) {
            Ok(()) => self.recorded += self.batch.len() as u64,
            Err(error) => self.failed = Some(error),
        }
        self.batch.clear();
    }

    /// Write what is left; the store's error, if it failed.
    fn finish(&mut self) -> Result<(), StoreError> {
        self.flush();
        match self.failed.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// The index of `file` in `files`, added when new. Records arrive file by
/// file, so the last one is nearly always the one.
fn file_index(files: &mut Vec<PathBuf>, file: &Path) -> u32 {
    let index = match files.iter().rposition(|known| known == file) {
        Some(index) => index,
        None => {
            files.push(file.to_path_buf());
            files.len() - 1
        }
    };
    // An export of more than four billion files is not read to this point.
    u32::try_from(index).unwrap_or(u32::MAX)
}

/// Both lists in one, grown to exactly their sum: the larger one keeps its
/// allocation (a large one is grown in place by the allocator's remapping),
/// and the smaller is copied after it.
fn join(a: Vec<Seen>, b: Vec<Seen>) -> Vec<Seen> {
    let (mut into, from) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    into.reserve_exact(from.len());
    into.extend_from_slice(&from);
    into
}

/// Leave in `seen` (sorted by id) the ids that occur once; return every
/// occurrence of the others, one run per id.
fn keep_unique(seen: &mut Vec<Seen>) -> Vec<Vec<Seen>> {
    let mut repeated = Vec::new();
    let mut kept = 0;
    let mut start = 0;
    while start < seen.len() {
        let id = seen[start].id;
        let end = start + seen[start..].iter().take_while(|s| s.id == id).count();
        if end - start == 1 {
            seen[kept] = seen[start];
            kept += 1;
        } else {
            repeated.push(seen[start..end].to_vec());
        }
        start = end;
    }
    seen.truncate(kept);
    repeated
}

/// The duplicated ids by name, with every place. Pass one keeps only keys
/// of ids, so the names come from reading the export once more — only when
/// it has duplicates, which is an error its owner must fix anyway.
fn name_duplicates(
    export_options: &ExportOptions,
    mapper: &Mapper,
    scan: &Scan,
    repeated: &[Vec<Seen>],
) -> Result<Vec<(String, Vec<RecordLocation>)>, ScanError> {
    let mut names: HashMap<IdKey, Option<String>> =
        repeated.iter().map(|run| (run[0].id(), None)).collect();
    let summary = export::read_export(export_options, &mut |record| {
        if let Ok(mapped) = mapper.map(&record)
            && let Some(name @ None) = names.get_mut(&IdKey::of(&mapped.external_id))
        {
            *name = Some(mapped.external_id);
        }
        ControlFlow::Continue(())
    })?;
    let changed = || {
        let path = summary
            .files
            .iter()
            .zip(&scan.export.files)
            .find(|(now, before)| now != before)
            .map(|(now, _)| now.path.clone())
            .unwrap_or_else(|| export_options.path.clone());
        ScanError::Changed(ExportError::Changed {
            path,
            change: export::FileChange::Modified,
        })
    };
    if summary.files != scan.export.files {
        return Err(changed());
    }
    let mut duplicates = Vec::with_capacity(repeated.len());
    for run in repeated {
        let Some(Some(name)) = names.remove(&run[0].id()) else {
            return Err(changed());
        };
        let places = run.iter().map(|seen| scan.location(seen)).collect();
        duplicates.push((name, places));
    }
    duplicates.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(duplicates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::MappingSpec;
    use crate::model::Entity;
    use crate::store::{Applied, SyncState};
    use serde_json::{Value, json};

    fn mapper() -> Mapper {
        Mapper::new(
            &MappingSpec::default_for(Entity::Opportunity),
            Entity::Opportunity,
            "USD",
        )
        .unwrap()
    }

    fn opportunity(id: &str, value: u64) -> Value {
        json!({
            "opportunityid": id,
            "name": format!("Deal {id}"),
            "estimatedvalue": value,
            "statecode": 0,
            "statuscode": 1,
        })
    }

    fn id(n: u32) -> String {
        format!("0b000000-0000-4000-8000-{n:012}")
    }

    /// One OData page file holding `records`, one a line.
    fn write_page(path: &Path, records: &[Value]) {
        let lines: Vec<String> = records.iter().map(Value::to_string).collect();
        let text = format!("{{\"value\": [\n{}\n]}}\n", lines.join(",\n"));
        std::fs::write(path, text).unwrap();
    }

    /// A directory of OData pages, one record per line.
    fn export(pages: &[Vec<Value>]) -> (tempfile::TempDir, ExportOptions) {
        let dir = tempfile::tempdir().unwrap();
        for (n, records) in pages.iter().enumerate() {
            write_page(&dir.path().join(format!("page-{}.json", n + 1)), records);
        }
        let options = ExportOptions {
            path: dir.path().to_path_buf(),
            format: crate::export::ExportFormat::Auto,
            entity: Entity::Opportunity,
            header_aliases: Default::default(),
            checks: Default::default(),
        };
        (dir, options)
    }

    fn desired_hash(record: &Value) -> String {
        let record = crate::export::Record {
            fingerprint: Default::default(),
            fields: record.as_object().unwrap().clone(),
            location: RecordLocation {
                file: PathBuf::new(),
                line: 1,
                ordinal: 1,
            },
        };
        document_hash(&mapper().map(&record).unwrap().document).to_hex()
    }

    /// A store in which each of `records` is settled with the document it
    /// maps to.
    fn settled(records: &[Value]) -> Store {
        let store = Store::open_in_memory().unwrap();
        for record in records {
            applied(&store, record, &desired_hash(record));
        }
        store
    }

    fn applied(store: &Store, record: &Value, hash: &str) {
        applied_from(store, record, hash, None);
    }

    /// `record` settled with `hash`, and with the fingerprint of the bytes
    /// it was read from when given, as the push phase settles it.
    fn applied_from(store: &Store, record: &Value, hash: &str, fingerprint: Option<&[u8; 16]>) {
        let external_id = record["opportunityid"].as_str().unwrap();
        store
            .record_applied(
                external_id,
                &Applied {
                    referral_id: "r",
                    etag: Some("e"),
                    base: None,
                    refused: &[],
                    snapshot: &json!({}),
                    desired_hash: hash,
                    fingerprint,
                    state: SyncState::Synced,
                    error: None,
                },
            )
            .unwrap();
    }

    fn budget(retain_budget: usize) -> ScanOptions {
        ScanOptions {
            retain_budget,
            ..ScanOptions::default()
        }
    }

    #[test]
    fn the_verdict_on_a_record_follows_selection_then_resync_then_the_store() {
        use Verdict::*;
        use WorkReason::*;
        // (selected by `only`, resync, settled with this document) → verdict
        let table = [
            ((false, false, false), NotSelected),
            ((false, false, true), NotSelected),
            ((false, true, false), NotSelected),
            ((false, true, true), NotSelected),
            ((true, true, false), Work(Resync)),
            ((true, true, true), Work(Resync)),
            ((true, false, true), Unchanged),
            ((true, false, false), Work(Outdated)),
        ];
        for ((selected, resync, settled), expected) in table {
            assert_eq!(
                Verdict::of(selected, resync, settled),
                expected,
                "selected {selected}, resync {resync}, settled {settled}"
            );
        }
    }

    #[test]
    fn the_store_is_known_alike_read_on_one_connection_or_two() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let hash = |n: u8| DocHash([n; 16]).to_hex();
        // 0: settled, its fingerprint maps to its hash; 1: settled, the
        // fingerprint maps to an older hash; 2: settled, none kept;
        // 3: pending with a fingerprint; 4: only a fingerprint; 5: a kept
        // hash edited into something that is not one.
        for n in 0..4u32 {
            applied_from(&store, &opportunity(&id(n), 1), &hash(n as u8), None);
        }
        store.mark_pending(&id(3), None).unwrap();
        store
            .record_fingerprints(&[
                (id(0), [10; 16], hash(0)),
                (id(1), [11; 16], hash(9)),
                (id(3), [13; 16], hash(3)),
                (id(4), [14; 16], hash(4)),
                (id(5), [15; 16], "not a hash".into()),
            ])
            .unwrap();
        applied_from(&store, &opportunity(&id(5), 1), &hash(5), None);

        let alone = StoreKnows::load_beside(&store, None, false, true).unwrap();
        let beside = store.reader_beside().unwrap();
        assert!(beside.is_some());
        let two = StoreKnows::load_beside(&store, beside, false, true).unwrap();
        assert_eq!(two.records, alone.records);
        assert_eq!(two.fingerprinted, 1);
        let key = |n: u32| IdKey::of(&id(n));
        assert!(two.known_by(key(0), &[10; 16]));
        for (n, fingerprint) in [(1, 11), (2, 12), (3, 13), (4, 14), (5, 15)] {
            assert!(!two.known_by(key(n), &[fingerprint; 16]), "{n}");
        }
        assert!(two.settled_with(key(2), DocHash([2; 16])));
        assert!(!two.settled_with(key(3), DocHash([3; 16])), "pending");
        assert_eq!(two.get(key(4)), None);

        // A second connection whose read fails (here: a store without the
        // table) leaves the fingerprints to the first.
        let broken_dir = tempfile::tempdir().unwrap();
        let broken = Store::open(&broken_dir.path().join("s.db")).unwrap();
        broken
            .connection()
            .execute_batch("DROP TABLE export_fingerprints")
            .unwrap();
        let fell_back = StoreKnows::load_beside(&store, Some(broken), false, true).unwrap();
        assert_eq!(fell_back.records, alone.records);

        // Without skipping, or on a resync, nothing is trusted; a resync
        // keeps only the ids.
        for (resync, skip) in [(false, false), (true, true)] {
            let beside = store.reader_beside().unwrap();
            let known = StoreKnows::load_beside(&store, beside, resync, skip).unwrap();
            assert_eq!(known.fingerprinted, 0);
            assert_eq!(known.records.len(), 5);
            assert_eq!(known.records.iter().any(|k| k.settled.is_some()), !resync);
        }
    }

    #[test]
    fn fingerprints_read_at_another_moment_than_the_records_trust_nothing_stale() {
        let key = IdKey::of(&id(1)).halves();
        let record = |hash: u8| Known {
            id: key,
            settled: Some(DocHash([hash; 16])),
            fingerprint: None,
        };
        let kept = |fingerprint: u8, hash: u8| KeptFingerprint {
            id: key,
            fingerprint: [fingerprint; 16],
            maps_to: DocHash([hash; 16]),
        };
        let trusted = |record: Known, kept: &[KeptFingerprint]| {
            let mut records = [record];
            trust_fingerprints(&mut records, kept);
            records[0].fingerprint
        };
        // Settled with 1 by bytes 1, then settled with 2 by bytes 2: the
        // records read before and the fingerprints after, or the reverse.
        assert_eq!(trusted(record(1), &[kept(2, 2)]), None);
        assert_eq!(trusted(record(2), &[kept(1, 1)]), None);
        // Taken out of the settled state (a retry released it) after its
        // fingerprint was read.
        let released = Known {
            settled: None,
            ..record(1)
        };
        assert_eq!(trusted(released, &[kept(1, 1)]), None);
        // Read at the same moment.
        assert_eq!(trusted(record(2), &[kept(2, 2)]), Some([2; 16]));
        // Fingerprints of other ids, before and after, are walked past.
        let mut around = [
            KeptFingerprint {
                id: [0, 0],
                ..kept(9, 2)
            },
            kept(2, 2),
            KeptFingerprint {
                id: [u64::MAX, u64::MAX],
                ..kept(9, 2)
            },
        ];
        around.sort_unstable_by_key(|k| k.id);
        assert_eq!(trusted(record(2), &around), Some([2; 16]));
    }

    #[test]
    fn what_the_store_knows_is_found_by_id_and_nothing_else_is() {
        for count in [0u32, 1, 2, 3, 1000, 70_000] {
            let records: Vec<Known> = (0..count)
                .map(|n| Known {
                    id: IdKey::of(&id(n)).halves(),
                    settled: (n % 3 != 0).then_some(DocHash([n as u8; 16])),
                    fingerprint: (n % 2 == 0).then_some([n as u8 ^ 0xff; 16]),
                })
                .collect();
            let known = StoreKnows::new(records);
            assert_eq!(known.ids().count(), count as usize);
            for n in 0..count {
                let key = IdKey::of(&id(n));
                assert_eq!(known.settled_with(key, DocHash([n as u8; 16])), n % 3 != 0);
                assert!(!known.settled_with(key, DocHash([n as u8 ^ 1; 16])));
                assert_eq!(known.known_by(key, &[n as u8 ^ 0xff; 16]), n % 2 == 0);
                assert!(!known.known_by(key, &[n as u8; 16]));
            }
            for n in count..count + 100 {
                assert_eq!(known.get(IdKey::of(&id(n))), None, "{n} of {count}");
            }
        }
    }

    #[test]
    fn records_missing_from_the_export_are_counted_in_one_walk() {
        let keys: Vec<IdKey> = (0..6).map(|n| IdKey::of(&id(n))).collect();
        let seen = |n: usize| Seen {
            id: keys[n].halves(),
            file: 0,
            line: 1,
            ordinal: n as u64,
            verdict: Verdict::Unchanged,
        };
        let mut read = ReadExport {
            scan: Scan::default(),
            seen: vec![seen(1), seen(4), seen(5)],
            work_hashes: Vec::new(),
            retained: Retained::default(),
            over_budget: false,
        };
        assert!(read.keep_unique().is_empty());
        // 2 is in the export on a row that could not be mapped, 3 more than
        // once: neither is missing.
        read.scan.record_errors = vec![RecordError {
            external_id: Some(id(2)),
            location: RecordLocation {
                file: PathBuf::from("export.json"),
                line: 3,
                ordinal: 3,
            },
            problems: Vec::new(),
        }];
        let repeated = vec![vec![seen(3), seen(3)]];
        let known = StoreKnows::new(
            keys.iter()
                .map(|id| Known {
                    id: id.halves(),
                    settled: None,
                    fingerprint: None,
                })
                .collect(),
        );
        read.count_missing(&known, &repeated);
        assert_eq!((read.scan.known, read.scan.missing_from_export), (6, 1));
    }

    #[test]
    fn the_document_hash_is_the_one_stores_already_hold() {
        let document = json!({"name": "Contoso \"quoted\" ü", "details": {"dealValue": 1.5}});
        let expected = &blake3::hash(document.to_string().as_bytes()).to_hex()[..32];
        assert_eq!(document_hash(&document).to_hex(), expected);
        assert_eq!(DocHash::from_hex(expected), Some(document_hash(&document)));
        assert_eq!(
            DocHash::from_hex(&expected.to_uppercase()),
            Some(document_hash(&document))
        );
        assert_eq!(DocHash::from_hex("short"), None);
        assert_eq!(DocHash::from_hex(&"g".repeat(32)), None);
        assert_eq!(DocHash::from_hex(&format!("0x{}", &expected[2..])), None);
    }

    proptest::proptest! {
        /// The hand-written decoding answers as the `hex` crate's does, for
        /// text of any length and any bytes, hex digits or not.
        #[test]
        fn a_hash_is_decoded_as_the_hex_crate_decodes_it(
            text in proptest::string::string_regex(
                "[0-9a-fA-F]{32}|[0-9a-fA-F]{0,34}|[0-9a-fA-F]{0,31}.[0-9a-fA-F]{0,31}|.{0,40}"
            ).unwrap(),
            bytes in proptest::prelude::any::<[u8; 16]>(),
        ) {
            let mut decoded = [0u8; 16];
            let expected = hex::decode_to_slice(&text, &mut decoded).ok().map(|()| DocHash(decoded));
            proptest::prop_assert_eq!(DocHash::from_hex(&text), expected);
            proptest::prop_assert_eq!(DocHash::from_hex(&DocHash(bytes).to_hex()), Some(DocHash(bytes)));
        }
    }

    #[test]
    fn decides_per_record_from_the_stored_state() {
        let unchanged = opportunity(&id(1), 100);
        let changed = opportunity(&id(2), 200);
        let failed = opportunity(&id(3), 300);
        let new = opportunity(&id(4), 400);
        let store = Store::open_in_memory().unwrap();
        applied(&store, &unchanged, &desired_hash(&unchanged));
        applied(&store, &changed, &desired_hash(&opportunity(&id(2), 1)));
        store.record_failed(&id(3), Some("r3"), "503").unwrap();
        applied(&store, &opportunity(&id(5), 500), "gone");
        // Pending with the same document: its last write is unsettled.
        let pending = opportunity(&id(6), 600);
        applied(&store, &pending, &desired_hash(&pending));
        store.mark_pending(&id(6), None).unwrap();
        // Refused locally with this very document: left alone until it
        // changes; refused with another one: taken up.
        let invalid_same = opportunity(&id(7), 700);
        let invalid_other = opportunity(&id(8), 800);
        for (record, hash) in [
            (&invalid_same, desired_hash(&invalid_same)),
            (&invalid_other, desired_hash(&opportunity(&id(8), 1))),
        ] {
            let external_id = record["opportunityid"].as_str().unwrap();
            store
                .record_invalid(external_id, Some("r"), &hash, "refused")
                .unwrap();
        }
        // A hash edited by hand into something that is not one.
        let edited = opportunity(&id(9), 900);
        applied(&store, &edited, "not a hash");
        let (_dir, options) = export(&[vec![
            unchanged,
            changed.clone(),
            failed,
            new,
            pending,
            invalid_same,
            invalid_other,
            edited,
        ]]);

        let mut scan = scan_export(&options, &mapper(), &store, &budget(10)).unwrap();
        assert_eq!((scan.valid, scan.unchanged, scan.work_count()), (8, 2, 6));
        assert_eq!((scan.known, scan.missing_from_export), (8, 1));
        let retained: Vec<(String, WorkReason)> = scan
            .retained
            .take()
            .unwrap()
            .into_iter()
            .map(|taken| (taken.mapped.external_id, taken.reason))
            .collect();
        assert_eq!(
            retained,
            [
                (id(2), WorkReason::Outdated),
                (id(3), WorkReason::Outdated),
                (id(4), WorkReason::Outdated),
                (id(6), WorkReason::Outdated),
                (id(8), WorkReason::Outdated),
                (id(9), WorkReason::Outdated),
            ]
        );
        let hash_of = |record: &Value| DocHash::from_hex(&desired_hash(record)).unwrap();
        assert_eq!(
            scan.work_for(&id(2), hash_of(&changed)),
            Some(WorkFor::Push(WorkReason::Outdated))
        );
        assert_eq!(
            scan.work_for(&id(2), hash_of(&opportunity(&id(2), 7))),
            Some(WorkFor::ChangedSinceScan)
        );
        assert_eq!(
            scan.work_for(&id(1), hash_of(&opportunity(&id(1), 100))),
            None
        );
        assert_eq!(scan.work_for(&id(10), hash_of(&changed)), None);
    }

    #[test]
    fn names_every_place_of_a_duplicate_and_sends_none_of_its_rows() {
        let twice = opportunity(&id(7), 1);
        let (dir, options) = export(&[
            vec![opportunity(&id(1), 1), twice.clone()],
            vec![opportunity(&id(7), 2), opportunity(&id(2), 2)],
            vec![twice],
        ]);
        let store = Store::open_in_memory().unwrap();
        applied(&store, &opportunity(&id(7), 1), "old");

        let mut scan = scan_export(&options, &mapper(), &store, &budget(10)).unwrap();
        let page = |n: u32| dir.path().join(format!("page-{n}.json"));
        let place = |file: PathBuf, line: u64, ordinal: u64| RecordLocation {
            file,
            line,
            ordinal,
        };
        assert_eq!(
            scan.duplicates,
            [(
                id(7),
                vec![
                    place(page(1), 3, 2),
                    place(page(2), 2, 3),
                    place(page(3), 2, 5)
                ]
            )]
        );
        assert_eq!((scan.valid, scan.work_count()), (2, 2));
        let retained: Vec<String> = scan
            .retained
            .take()
            .unwrap()
            .into_iter()
            .map(|taken| taken.mapped.external_id)
            .collect();
        assert_eq!(retained, [id(1), id(2)]);
        assert_eq!(scan.work_for(&id(7), DocHash([0; 16])), None);
        // Known to the store and present, though not valid: not missing.
        assert_eq!((scan.known, scan.missing_from_export), (1, 0));
    }

    #[test]
    fn an_invalid_record_is_not_missing() {
        let mut broken = opportunity(&id(1), 1);
        broken["statuscode"] = json!(99);
        let store = Store::open_in_memory().unwrap();
        applied(&store, &opportunity(&id(1), 1), "h");
        let (_dir, options) = export(&[vec![broken]]);
        let scan = scan_export(&options, &mapper(), &store, &budget(10)).unwrap();
        assert_eq!(scan.record_errors.len(), 1);
        assert_eq!(
            (scan.valid, scan.known, scan.missing_from_export),
            (0, 1, 0)
        );
    }

    #[test]
    fn over_the_budget_nothing_is_retained_but_every_verdict_is_kept() {
        let records: Vec<Value> = (1..=3).map(|n| opportunity(&id(n), 1)).collect();
        let (_dir, options) = export(std::slice::from_ref(&records));
        let store = Store::open_in_memory().unwrap();
        for (budget_size, fits) in [(3, true), (2, false), (0, false)] {
            let scan = scan_export(&options, &mapper(), &store, &budget(budget_size)).unwrap();
            assert_eq!(scan.retained.is_some(), fits, "budget {budget_size}");
            assert_eq!(scan.work_count(), 3);
        }
        let scan = scan_export(&options, &mapper(), &store, &budget(0)).unwrap();
        let hash = {
            let mut bytes = [0u8; 16];
            hex::decode_to_slice(desired_hash(&records[2]), &mut bytes).unwrap();
            DocHash(bytes)
        };
        assert_eq!(
            scan.work_for(&id(3), hash),
            Some(WorkFor::Push(WorkReason::Outdated))
        );
    }

    #[test]
    fn only_and_resync_choose_the_records_taken_up() {
        let records: Vec<Value> = (1..=3).map(|n| opportunity(&id(n), 1)).collect();
        let (_dir, options) = export(std::slice::from_ref(&records));
        let store = settled(&records);
        let only = ScanOptions {
            only: Some(HashSet::from([id(2)])),
            resync: true,
            retain_budget: 10,
            ..ScanOptions::default()
        };
        let mut scan = scan_export(&options, &mapper(), &store, &only).unwrap();
        let retained: Vec<(String, WorkReason)> = scan
            .retained
            .take()
            .unwrap()
            .into_iter()
            .map(|taken| (taken.mapped.external_id, taken.reason))
            .collect();
        assert_eq!(retained, [(id(2), WorkReason::Resync)]);
        // The two left out are neither work nor unchanged.
        assert_eq!(
            (
                scan.valid,
                scan.work_count(),
                scan.unchanged,
                scan.not_selected
            ),
            (3, 1, 0, 2)
        );
    }

    #[test]
    fn retained_documents_come_back_as_they_were_mapped() {
        let mut deep = json!("bottom");
        for _ in 0..MAX_TEXT_DEPTH + 10 {
            deep = json!({"down": deep});
        }
        let documents = [
            json!({"name": "Contoso \"quoted\" ü", "details": {"dealValue": 1.5, "notes": null}, "team": [{"a": 1}]}),
            deep,
        ];
        let mut retained = Retained::default();
        let mut text = Vec::new();
        for (n, document) in documents.iter().enumerate() {
            let hash = canonical_hash(document, &mut text);
            let mapped = MappedRecord {
                external_id: id(n as u32),
                referral_id: Some("r".into()),
                document: document.clone(),
            };
            retained.push(mapped, &text, hash, WorkReason::Outdated, None);
        }
        assert!(matches!(
            retained.records[0].document,
            RetainedDocument::Text(_)
        ));
        assert!(matches!(
            retained.records[1].document,
            RetainedDocument::Tree(_)
        ));
        let back: Vec<TakenUp> = retained.into_iter().collect();
        for (taken, (n, document)) in back.iter().zip(documents.iter().enumerate()) {
            assert_eq!(taken.mapped.external_id, id(n as u32));
            assert_eq!(taken.mapped.referral_id.as_deref(), Some("r"));
            assert_eq!(&taken.mapped.document, document);
            assert_eq!(taken.hash, document_hash(document));
            assert_eq!(taken.reason, WorkReason::Outdated);
        }
        assert_eq!(back.len(), 2);
    }

    #[test]
    fn an_unreadable_export_is_an_export_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("page-1.json"), "{\"value\": [ {\"a\": 1} ").unwrap();
        let options = ExportOptions {
            path: dir.path().to_path_buf(),
            format: crate::export::ExportFormat::Auto,
            entity: Entity::Opportunity,
            header_aliases: Default::default(),
            checks: Default::default(),
        };
        let store = Store::open_in_memory().unwrap();
        let error = scan_export(&options, &mapper(), &store, &budget(10)).unwrap_err();
        assert!(
            matches!(&error, ScanError::Export(ExportError::Parse { path, .. }) if path.ends_with("page-1.json")),
            "{error}"
        );
    }

    /// Skipping records by their fingerprint must never change what pass
    /// one decides: over random histories of exports (values changed in
    /// mapped and unmapped columns, records re-formatted, re-ordered,
    /// duplicated, dropped, broken), a scan that skips known records and
    /// one that parses every record agree on every verdict, and a record
    /// whose mapped value changed is always taken up.
    mod fingerprints {
        use proptest::prelude::*;

        use super::*;

        /// One record's text: its fields in a chosen order and layout.
        fn text_of(record: &Value, pretty: bool, reversed: bool) -> String {
            let Value::Object(fields) = record else {
                return record.to_string();
            };
            let mut members: Vec<String> = fields
                .iter()
                .map(|(key, value)| format!("{}: {value}", Value::from(key.as_str())))
                .collect();
            if reversed {
                members.reverse();
            }
            let separator = if pretty { ",\n    " } else { ", " };
            format!("{{{}}}", members.join(separator))
        }

        fn write_pages(dir: &Path, texts: &[String]) {
            for entry in std::fs::read_dir(dir).unwrap() {
                std::fs::remove_file(entry.unwrap().path()).unwrap();
            }
            for (n, chunk) in texts.chunks(4).enumerate() {
                let page = format!("{{\"value\": [\n{}\n]}}\n", chunk.join(",\n"));
                std::fs::write(dir.join(format!("page-{}.json", n + 1)), page).unwrap();
            }
            if texts.is_empty() {
                std::fs::write(dir.join("page-1.json"), "{\"value\": []}\n").unwrap();
            }
        }

        #[derive(Debug, Clone)]
        enum Edit {
            /// A mapped column (the deal value) of record `n`.
            Mapped(usize, u64),
            /// A column the mapping does not read.
            Unmapped(usize, u64),
            /// Record `n` laid out another way, same values.
            Reformat(usize),
            /// A copy of record `n` appended.
            Duplicate(usize),
            /// Record `n` dropped from the export.
            Drop(usize),
            /// Record `n` given a status the mapping refuses.
            Break(usize),
            /// Record `n` back to how it was before its last edit.
            Restore(usize),
        }

        fn edit() -> impl Strategy<Value = Edit> {
            prop_oneof![
                3 => (0..8usize, 1..4u64).prop_map(|(n, v)| Edit::Mapped(n, v)),
                1 => (0..8usize, 1..4u64).prop_map(|(n, v)| Edit::Unmapped(n, v)),
                1 => (0..8usize).prop_map(Edit::Reformat),
                1 => (0..8usize).prop_map(Edit::Duplicate),
                1 => (0..8usize).prop_map(Edit::Drop),
                1 => (0..8usize).prop_map(Edit::Break),
                3 => (0..8usize).prop_map(Edit::Restore),
            ]
        }

        /// What a scan decided, in a form two scans can be compared by.
        fn verdicts(scan: &mut Scan) -> impl PartialEq + std::fmt::Debug {
            let mut work: Vec<(String, WorkReason)> = scan
                .retained
                .take()
                .unwrap()
                .into_iter()
                .map(|taken| (taken.mapped.external_id, taken.reason))
                .collect();
            work.sort_by(|a, b| a.0.cmp(&b.0));
            (
                (
                    scan.valid,
                    scan.unchanged,
                    scan.work_count(),
                    scan.not_selected,
                ),
                (
                    scan.known,
                    scan.missing_from_export,
                    scan.record_errors.len(),
                ),
                scan.duplicates.clone(),
                scan.unchanged_ids.clone(),
                work,
                scan.export.columns.clone(),
                scan.export.records,
            )
        }

        fn scan(options: &ExportOptions, store: &Store, skip: bool, record: bool) -> Scan {
            try_scan(options, store, skip, record).unwrap()
        }

        fn try_scan(
            options: &ExportOptions,
            store: &Store,
            skip: bool,
            record: bool,
        ) -> Result<Scan, ScanError> {
            let mapper = mapper();
            let scan_options = ScanOptions {
                retain_budget: 100,
                list_unchanged: true,
                fingerprints: Fingerprints {
                    context: fingerprint_context(&mapper, crate::diff::OnCleared::Null),
                    skip,
                    record,
                },
                ..ScanOptions::default()
            };
            scan_export(options, &mapper, store, &scan_options)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]

            #[test]
            fn skipping_known_records_never_changes_a_verdict(
                edits in proptest::collection::vec(proptest::collection::vec(edit(), 1..4), 1..8),
                pushed in proptest::collection::vec(proptest::bool::weighted(0.8), 8),
            ) {
                let originals: Vec<Value> = (0..4u32)
                    .map(|n| {
                        let mut record = opportunity(&id(n), u64::from(n) * 100);
                        record["description"] = json!("first");
                        record
                    })
                    .collect();
                // (record, layout) of every row of the export, in order.
                let mut rows: Vec<(Value, bool, bool)> =
                    originals.iter().map(|r| (r.clone(), false, false)).collect();
                let mut earlier: HashMap<String, Vec<(Value, bool, bool)>> = HashMap::new();
                let (dir, options) = export(&[]);
                // A store in a file, so that its fingerprints are read by a
                // second connection as in a real cycle.
                let store_dir = tempfile::tempdir().unwrap();
                let store = Store::open(&store_dir.path().join("s.db")).unwrap();
                for (step, step_edits) in edits.iter().enumerate() {
                    for edit in step_edits {
                        let at = |n: &usize| *n % rows.len().max(1);
                        // What a row was before this edit, for a later
                        // `Restore` to go back to.
                        if let (Some(row), false) = (
                            rows.get(match edit {
                                Edit::Mapped(n, _) | Edit::Unmapped(n, _) | Edit::Reformat(n) | Edit::Break(n) => at(n),
                                _ => usize::MAX,
                            }),
                            rows.is_empty(),
                        ) {
                            earlier
                                .entry(row.0["opportunityid"].to_string())
                                .or_default()
                                .push(row.clone());
                        }
                        match edit {
                            _ if rows.is_empty() => {}
                            Edit::Mapped(n, v) => {
                                let n = at(n);
                                let value = rows[n].0["estimatedvalue"].as_u64().unwrap_or(0);
                                rows[n].0["estimatedvalue"] = json!(value + v);
                            }
                            Edit::Unmapped(n, v) => {
                                let n = at(n);
                                rows[n].0["unmapped_column"] = json!(v);
                            }
                            Edit::Reformat(n) => {
                                let n = at(n);
                                rows[n].1 = !rows[n].1;
                                rows[n].2 = !rows[n].2;
                            }
                            Edit::Duplicate(n) => {
                                let n = at(n);
                                rows.push(rows[n].clone());
                            }
                            Edit::Drop(n) => {
                                let n = at(n);
                                rows.remove(n);
                            }
                            Edit::Break(n) => {
                                let n = at(n);
                                rows[n].0["statuscode"] = json!(99);
                            }
                            Edit::Restore(n) => {
                                let n = at(n);
                                let external_id = rows[n].0["opportunityid"].to_string();
                                if let Some(before) = earlier
                                    .get_mut(&external_id)
                                    .and_then(Vec::pop)
                                {
                                    rows[n] = before;
                                }
                            }
                        }
                    }
                    let texts: Vec<String> = rows
                        .iter()
                        .map(|(record, pretty, reversed)| text_of(record, *pretty, *reversed))
                        .collect();
                    write_pages(dir.path(), &texts);

                    let mut skipping = scan(&options, &store, true, true);
                    let mut parsing = scan(&options, &store, false, false);
                    let skipped = skipping.known_by_fingerprint;
                    prop_assert_eq!(verdicts(&mut skipping), verdicts(&mut parsing), "step {}", step);
                    prop_assert!(skipped <= parsing.export.records);

                    // Records the scan took up were pushed, each settled
                    // with the fingerprint it was read with (or, now and
                    // then, their push failed and they stay outdated).
                    if pushed[step] {
                        let mut all = scan(&options, &store, false, true);
                        for taken in all.retained.take().unwrap() {
                            applied_from(
                                &store,
                                &json!({"opportunityid": taken.mapped.external_id}),
                                &taken.hash.to_hex(),
                                taken.fingerprint.as_ref(),
                            );
                        }
                    }
                }
                drop(dir);
            }
        }

        /// The scan's error, which must be the one a read of the export
        /// gives.
        fn fails_as_a_read(options: &ExportOptions, store: &Store, record: bool) -> ScanError {
            let read = crate::export::read_export(options, &mut |_| ControlFlow::Continue(()))
                .unwrap_err();
            let error = try_scan(options, store, true, record).unwrap_err();
            assert_eq!(error.to_string(), ScanError::from(read).to_string());
            error
        }

        #[test]
        fn a_changed_record_that_does_not_parse_fails_the_scan_as_a_read_would() {
            // Changed records are parsed on the deciding thread, not the
            // reading one: the error, its place and what the store keeps
            // must be those of a read that parses every record itself.
            let records: Vec<Value> = (1..=3).map(|n| opportunity(&id(n), 1)).collect();
            let lines: Vec<String> = records.iter().map(Value::to_string).collect();
            let damaged = |line: &str| {
                // A repeated key, and a value cut short two lines on.
                line.replacen("{", "{\"name\": \"x\",\n ", 1).replacen(
                    "\"statecode\":0",
                    "\"statecode\":0,\n\"a\": tru",
                    1,
                )
            };
            for (file, good, bad) in [
                (
                    "page-1.json",
                    format!("{{\"value\": [\n{}\n]}}\n", lines.join(",\n")),
                    format!(
                        "{{\"value\": [\n{},\n   {},\n{}\n]}}\n",
                        lines[0],
                        damaged(&lines[1]),
                        lines[2]
                    ),
                ),
                (
                    "leads.jsonl",
                    format!("{}\n", lines.join("\n")),
                    format!(
                        "{}\n  {}\n{}\n",
                        lines[0],
                        damaged(&lines[1]).replace('\n', ""),
                        lines[2]
                    ),
                ),
            ] {
                let (dir, mut options) = export(&[]);
                std::fs::remove_file(dir.path().join("page-1.json")).ok();
                options.path = dir.path().join(file);
                std::fs::write(&options.path, &good).unwrap();
                let store = settled(&records);
                let _ = scan(&options, &store, true, true);
                let known = scan(&options, &store, true, true);
                assert_eq!(known.known_by_fingerprint, 3, "{file}");

                std::fs::write(&options.path, &bad).unwrap();
                let error = fails_as_a_read(&options, &store, true);
                assert!(
                    matches!(error, ScanError::Export(ExportError::Parse { .. })),
                    "{file}: {error}"
                );
                // Nothing the store knows moved: the good export is still
                // known by its fingerprints.
                std::fs::write(&options.path, &good).unwrap();
                let again = scan(&options, &store, true, true);
                assert_eq!(
                    (again.known_by_fingerprint, again.fingerprinted),
                    (3, 0),
                    "{file}"
                );
            }
        }

        #[test]
        fn of_two_errors_in_one_file_the_scan_names_the_first_as_a_read_does() {
            // A record nested deeper than serde_json allows in the whole
            // page (but not in its own slice), then one with a repeated
            // key, then an element that sends the file to the exact
            // reader: that reader refuses the deep record, the deciding
            // thread the repeated key; the read names the deep one.
            let records: Vec<Value> = (1..=2).map(|n| opportunity(&id(n), 1)).collect();
            let (dir, options) = export(std::slice::from_ref(&records));
            let store = settled(&records);
            let _ = scan(&options, &store, true, true);
            let deep = format!(
                "{{\"opportunityid\": \"{}\", \"a\": {}{}}}",
                id(7),
                "[".repeat(126),
                "]".repeat(126)
            );
            let repeated = format!("{{\"opportunityid\": \"{}\", \"a\": 1, \"a\": 2}}", id(8));
            let page = format!(
                "{{\"value\": [\n{},\n{deep},\n{repeated},\n1\n]}}\n",
                records[0]
            );
            std::fs::write(dir.path().join("page-1.json"), page).unwrap();
            let error = fails_as_a_read(&options, &store, true);
            assert!(error.to_string().contains("recursion limit"), "{error}");
        }

        #[test]
        fn a_known_record_is_not_parsed_and_a_changed_one_always_is() {
            let records: Vec<Value> = (1..=3).map(|n| opportunity(&id(n), 1)).collect();
            let (dir, options) = export(std::slice::from_ref(&records));
            let store = settled(&records);
            // The first scan parses every record and records fingerprints;
            // a dry run records none.
            let dry = scan(&options, &store, true, false);
            assert_eq!((dry.known_by_fingerprint, dry.fingerprinted), (0, 0));
            let first = scan(&options, &store, true, true);
            assert_eq!(
                (
                    first.unchanged,
                    first.known_by_fingerprint,
                    first.fingerprinted
                ),
                (3, 0, 3)
            );
            let second = scan(&options, &store, true, true);
            assert_eq!(
                (
                    second.unchanged,
                    second.known_by_fingerprint,
                    second.fingerprinted
                ),
                (3, 3, 0)
            );
            // Without skipping (`check`) every record is parsed again.
            let check = scan(&options, &store, false, false);
            assert_eq!((check.unchanged, check.known_by_fingerprint), (3, 0));

            // Another mapping context (say `sync.on_cleared` changed): no
            // fingerprint is trusted.
            let mapper = mapper();
            let other = ScanOptions {
                retain_budget: 10,
                fingerprints: Fingerprints {
                    context: fingerprint_context(&mapper, crate::diff::OnCleared::Skip),
                    skip: true,
                    record: false,
                },
                ..ScanOptions::default()
            };
            let changed_context = scan_export(&options, &mapper, &store, &other).unwrap();
            assert_eq!(
                (
                    changed_context.unchanged,
                    changed_context.known_by_fingerprint
                ),
                (3, 0)
            );

            // A changed deal value: the record is parsed and taken up.
            let mut changed = records.clone();
            changed[1]["estimatedvalue"] = json!(2);
            write_page(&dir.path().join("page-1.json"), &changed);
            let mut third = scan(&options, &store, true, true);
            assert_eq!(
                (
                    third.unchanged,
                    third.known_by_fingerprint,
                    third.work_count()
                ),
                (2, 2, 1)
            );
            let taken: Vec<String> = third
                .retained
                .take()
                .unwrap()
                .into_iter()
                .map(|taken| taken.mapped.external_id)
                .collect();
            assert_eq!(taken, [id(2)]);

            // Pushed: its row's hash moves on, and the fingerprint recorded
            // for the old hash is not trusted for the new one. The record
            // changed back before any scan saw the new one: its old
            // fingerprint is stale, and it is taken up.
            applied(&store, &changed[1], &desired_hash(&changed[1]));
            write_page(&dir.path().join("page-1.json"), &records);
            let fifth = scan(&options, &store, true, true);
            assert_eq!(
                (
                    fifth.unchanged,
                    fifth.known_by_fingerprint,
                    fifth.work_count()
                ),
                (2, 2, 1)
            );
        }

        /// A prefilter that knows no record: every JSON record is handed
        /// over unparsed.
        struct KnowsNone;

        impl Prefilter for KnowsNone {
            fn id_column(&self) -> &str {
                "opportunityid"
            }

            fn known(&mut self, _: &str, _: RawFingerprint, _: Place<'_>) -> bool {
                false
            }
        }

        #[test]
        fn the_reading_thread_keeps_to_its_budget_and_waits_only_past_it() {
            let records: Vec<Value> = (1..=3).map(|n| opportunity(&id(n), n.into())).collect();
            let lines: Vec<String> = records.iter().map(Value::to_string).collect();
            let (dir, mut options) = export(&[]);
            options.path = dir.path().join("opportunities.jsonl");
            std::fs::write(&options.path, format!("{}\n", lines.join("\n"))).unwrap();
            let mut batch = Vec::new();
            export::read_export_offering(&options, &mut KnowsNone, &mut |offered| {
                batch.push(offered);
                ControlFlow::Continue(())
            })
            .unwrap();
            // Unparsed records count their text; parsed ones a fixed share.
            let cost = batch_cost(&batch);
            assert_eq!(cost, lines.iter().map(String::len).sum::<usize>());
            let Offered::Unparsed(unparsed) = &batch[0] else {
                panic!("not handed over unparsed: {:?}", batch[0]);
            };
            let parsed = [Offered::Parsed(unparsed.parse().unwrap())];
            assert_eq!(batch_cost(&parsed), PARSED_COST);

            let (give_back, returned) = mpsc::channel();
            let mut in_flight = InFlight::new(returned);
            // Nothing in flight: a batch past the budget on its own goes.
            assert!(in_flight.make_room(2 * IN_FLIGHT_BUDGET).is_ok());
            // Within the budget: no wait, though nothing comes back.
            in_flight.cost = IN_FLIGHT_BUDGET - cost;
            assert!(in_flight.make_room(cost).unwrap().is_empty());
            // Past it: a batch given back frees its share and its buffer,
            // emptied, is the next one.
            in_flight.cost = IN_FLIGHT_BUDGET;
            let capacity = batch.capacity();
            give_back.send(batch).unwrap();
            let next = in_flight.make_room(cost).unwrap();
            assert_eq!(in_flight.cost, IN_FLIGHT_BUDGET - cost);
            assert!(next.is_empty() && next.capacity() == capacity);
            // Past it with the deciding thread gone: no room will come.
            in_flight.cost = IN_FLIGHT_BUDGET;
            drop(give_back);
            assert!(in_flight.make_room(cost).is_err());
        }

        #[test]
        fn a_run_of_changed_records_past_the_budget_is_decided_whole_or_fails_as_a_read() {
            // 12 MB of records the store does not know, after one it knows
            // by its fingerprint: more than the reading thread may hand
            // over before the deciding thread gives batches back.
            let note = "Quarter proposal stakeholders pilot migration. ".repeat(44);
            let records: Vec<Value> = (1..=6000)
                .map(|n| {
                    let mut record = opportunity(&id(n), n.into());
                    record["description"] = json!(note);
                    record
                })
                .collect();
            let mut lines: Vec<String> = records.iter().map(Value::to_string).collect();
            let (dir, mut options) = export(&[]);
            options.path = dir.path().join("opportunities.jsonl");
            let store = Store::open_in_memory().unwrap();
            applied(&store, &records[0], &desired_hash(&records[0]));
            std::fs::write(&options.path, format!("{}\n", lines[0])).unwrap();
            let _ = scan(&options, &store, true, true);
            assert_eq!(scan(&options, &store, true, true).known_by_fingerprint, 1);

            let text = |lines: &[String]| format!("{}\n", lines.join("\n"));
            std::fs::write(&options.path, text(&lines)).unwrap();
            assert!(note.len() * 5999 > IN_FLIGHT_BUDGET);
            let whole = scan(&options, &store, true, false);
            assert_eq!(
                (whole.valid, whole.known_by_fingerprint, whole.work_count()),
                (6000, 1, 5999)
            );
            assert!(whole.record_errors.is_empty());

            // One far into the run does not parse: the deciding thread
            // stops there, most likely while the reading thread waits for
            // room, and the scan ends with the read's error.
            lines[5000] = lines[5000].replacen('{', "{\"name\": \"x\", ", 1);
            std::fs::write(&options.path, text(&lines)).unwrap();
            fails_as_a_read(&options, &store, false);
        }
    }
}
