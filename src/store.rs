//! The SQLite store: per external id the referral id, the last eTag, the
//! snapshot (the desired document last applied) and its hash, the sync
//! state; plus the cycles and the `externalReferenceId -> id` index.
//!
//! Every write that advances a record happens in one transaction, and only
//! after the service acknowledged it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::Op;
use crate::ownership::Slot;

/// One open [`Store::together`], counted while it runs (a panic included).
struct JoinedScope<'a>(&'a std::cell::Cell<u32>);

impl<'a> JoinedScope<'a> {
    fn enter(depth: &'a std::cell::Cell<u32>) -> Self {
        depth.set(depth.get() + 1);
        JoinedScope(depth)
    }
}

impl Drop for JoinedScope<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// A transaction a write owns, which it commits, or `None` when it joined
/// an open one, which commits for it; dropped uncommitted, an owned one
/// rolls back.
struct Joined<'c>(Option<rusqlite::Transaction<'c>>);

impl Joined<'_> {
    fn commit(self) -> rusqlite::Result<()> {
        self.0.map_or(Ok(()), rusqlite::Transaction::commit)
    }
}

/// Keep the fingerprint `?2` of the export record `?1` was read from, with
/// the desired hash `?3` those bytes map to.
const RECORD_FINGERPRINT: &str =
    "INSERT INTO export_fingerprints (external_id, fingerprint, desired_hash)
     VALUES (?1, ?2, ?3)
     ON CONFLICT (external_id) DO UPDATE SET
        fingerprint = excluded.fingerprint,
        desired_hash = excluded.desired_hash";

/// The records [`Store::for_each_record_brief`] gives as settled.
const SETTLED: &str = "state IN ('synced', 'invalid') AND desired_hash IS NOT NULL";

/// The schema, in order. `PRAGMA user_version` records how many are applied.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_initial",
        include_str!("../migrations/0001_initial.sql"),
    ),
    (
        "0002_resync_requests",
        include_str!("../migrations/0002_resync_requests.sql"),
    ),
    (
        "0003_settled_index",
        include_str!("../migrations/0003_settled_index.sql"),
    ),
    (
        "0004_base_and_intent",
        include_str!("../migrations/0004_base_and_intent.sql"),
    ),
    (
        "0005_fed_fields",
        include_str!("../migrations/0005_fed_fields.sql"),
    ),
    (
        "0006_record_events",
        include_str!("../migrations/0006_record_events.sql"),
    ),
    (
        "0007_export_fingerprints",
        include_str!("../migrations/0007_export_fingerprints.sql"),
    ),
    (
        "0008_known_records_index",
        include_str!("../migrations/0008_known_records_index.sql"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store {}: schema version {found} is newer than this build knows ({known})", path.display())]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("store {}: schema version {found} is older than this build; run `referral-sync sync` once to migrate it", path.display())]
    TooOld { path: PathBuf, found: i64 },
    #[error("store {}: record {external_id}: snapshot, base or intent is not valid JSON: {message}", path.display())]
    CorruptSnapshot {
        path: PathBuf,
        external_id: String,
        message: String,
    },
}

/// Where a record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncState {
    /// The referral holds the snapshot.
    Synced,
    /// A write was started and its outcome is not known yet.
    Pending,
    /// The last attempt failed; the snapshot is the last one acknowledged.
    Failed,
    /// The record cannot be sent as it is (e.g. an invalid status
    /// transition); its other changes were applied.
    Invalid,
    /// The service refused the record for good; it waits for its document
    /// to change, a resync or `referral-sync retry`. (Stored as `invalid`
    /// with `held` set.)
    Held,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Synced => "synced",
            SyncState::Pending => "pending",
            SyncState::Failed => "failed",
            SyncState::Invalid => "invalid",
            SyncState::Held => "held",
        }
    }

    fn parse(s: &str) -> SyncState {
        match s {
            "synced" => SyncState::Synced,
            "failed" => SyncState::Failed,
            "invalid" => SyncState::Invalid,
            // The CHECK constraint admits nothing else; treat anything odd
            // as an unknown outcome, the safe reading.
            _ => SyncState::Pending,
        }
    }
}

/// What a settled record leaves behind: after an acknowledged write, or a
/// plan that had nothing to send.
#[derive(Debug, Clone, Copy)]
pub struct Applied<'a> {
    pub referral_id: &'a str,
    /// The eTag that goes with `base`. `None` when the acknowledgement
    /// carried no eTag (a 204): the next change is then planned against the
    /// live referral, never sent blind.
    pub etag: Option<&'a str>,
    /// The owned part of the referral as Partner Center acknowledged it
    /// (see [`crate::ownership::project`]); `None` when not known.
    pub base: Option<&'a Value>,
    /// The CRM's desired document this sync settled.
    pub snapshot: &'a Value,
    /// Owned paths whose CRM value Partner Center cannot take (`/status`).
    pub refused: &'a [String],
    pub desired_hash: &'a str,
    /// The stored fingerprint of the export bytes `snapshot` was mapped
    /// from, written in the same transaction: trusted from the moment the
    /// record is settled with `desired_hash`.
    pub fingerprint: Option<&'a [u8; 16]>,
    /// `Synced`, or `Invalid` when part of the change was refused locally
    /// (then `error` says why).
    pub state: SyncState,
    pub error: Option<&'a str>,
}

/// A write under way, stored before it is sent (in the transaction that
/// marks the record pending) and cleared when its outcome is known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteIntent {
    pub kind: IntentKind,
    /// The `If-Match` eTag sent (none for a create).
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub ops: Vec<Op>,
    /// What the ops set, slot by slot.
    #[serde(default)]
    pub targets: Vec<(Slot, Value)>,
    /// The owned part of the referral the ops were planned against.
    #[serde(default)]
    pub against: Value,
    /// The base and the CRM document of the last sync the plan was made
    /// with (`before` is `None` when adopting): what stands again if the
    /// write turns out not to have been applied.
    #[serde(default)]
    pub base: Option<Value>,
    #[serde(default)]
    pub before: Option<Value>,
    /// The CRM's desired document the write carries.
    pub desired: Value,
    pub desired_hash: String,
    /// When the write was started (RFC 3339, UTC).
    pub started_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntentKind {
    Create,
    Update,
}

/// Everything stored for one record.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    pub external_id: String,
    pub referral_id: Option<String>,
    pub etag: Option<String>,
    /// The CRM's desired document at the last sync.
    pub snapshot: Option<Value>,
    /// The owned part of the referral as Partner Center acknowledged it.
    pub base: Option<Value>,
    /// A write whose outcome is not known yet.
    pub intent: Option<WriteIntent>,
    /// Owned paths whose CRM value Partner Center could not take at the
    /// last sync.
    pub refused: Vec<String>,
    pub desired_hash: Option<String>,
    pub state: SyncState,
    pub last_error: Option<String>,
    pub attempts: i64,
}

/// One event of a record's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordEvent {
    pub at: String,
    pub cycle_id: Option<String>,
    pub kind: String,
    pub detail: Value,
}

/// A record's columns as SQLite holds them.
struct RawRecord {
    referral_id: Option<String>,
    etag: Option<String>,
    snapshot: Option<String>,
    desired_hash: Option<String>,
    state: String,
    last_error: Option<String>,
    attempts: i64,
    base: Option<String>,
    intent: Option<String>,
    refused: Option<String>,
    held: bool,
}

/// A finished or running cycle, for `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CycleRow {
    pub cycle_id: String,
    pub trigger: String,
    pub dry_run: bool,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub outcome: Option<String>,
    pub summary: Option<Value>,
    pub error: Option<String>,
}

/// A record that is not synced, for `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProblemRow {
    pub external_id: String,
    pub referral_id: Option<String>,
    pub state: SyncState,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub updated_at: String,
    /// For a held record: the service's status, code and message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct StateCounts {
    pub synced: u64,
    pub pending: u64,
    pub failed: u64,
    pub invalid: u64,
    /// Refused by the service for good and waiting (not counted in
    /// `invalid`).
    pub held: u64,
}

/// One record as pass one reads it ([`Store::for_each_record_brief`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordBrief<'a> {
    pub external_id: &'a str,
    /// The desired hash the record is settled with, when it is settled.
    pub settled: Option<&'a str>,
}

/// One kept export fingerprint ([`Store::for_each_fingerprint`]): the
/// export record of `external_id` with these bytes maps to `desired_hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FingerprintRow<'a> {
    pub external_id: &'a str,
    pub fingerprint: &'a [u8],
    pub desired_hash: &'a str,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// How many [`Store::together`] calls are open: the writes made while
    /// one is join its transaction.
    joined: std::cell::Cell<u32>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Store {
    /// Open (creating if needed) and migrate the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let err = sqlite_error(path);
        let conn = Connection::open(path).map_err(&err)?;
        let mut store = Store {
            conn,
            path: path.to_owned(),
            joined: Default::default(),
        };
        // Before any pragma that writes (the journal mode rewrites the
        // file): a store from a newer build is refused untouched.
        store.refuse_newer()?;
        store.configure()?;
        store.migrate()?;
        Ok(store)
    }

    /// Open an existing store without writing to it (`status`, dry runs).
    /// Returns `None` when there is no store yet.
    pub fn open_read_only(path: &Path) -> Result<Option<Store>, StoreError> {
        if !path.exists() {
            return Ok(None);
        }
        let (store, version) = Store::open_existing(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        if version == 0 {
            // Created but never migrated: nothing in it yet.
            return Ok(None);
        }
        store.require_schema(version)?;
        Ok(Some(store))
    }

    /// Open the store another process holds (the running daemon), to
    /// write beside it: no migration, no pragma changes. The schema must be
    /// exactly the one this build knows.
    pub fn open_shared(path: &Path) -> Result<Store, StoreError> {
        let (store, version) = Store::open_existing(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        store.require_schema(version)?;
        Ok(store)
    }

    /// Open an existing store file with `flags`, changing nothing in it;
    /// with its schema version.
    fn open_existing(path: &Path, flags: OpenFlags) -> Result<(Store, i64), StoreError> {
        let err = sqlite_error(path);
        let conn = Connection::open_with_flags(path, flags).map_err(&err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(&err)?;
        let store = Store {
            conn,
            path: path.to_owned(),
            joined: Default::default(),
        };
        let version = store.user_version()?;
        Ok((store, version))
    }

    /// Refuse a schema `version` other than the one this build knows.
    fn require_schema(&self, version: i64) -> Result<(), StoreError> {
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found: version,
                known,
            });
        }
        if version < known {
            return Err(StoreError::TooOld {
                path: self.path.clone(),
                found: version,
            });
        }
        Ok(())
    }

    /// An empty store in memory (dry runs without a store file, tests).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(sqlite_error(&path))?;
        let mut store = Store {
            conn,
            path,
            joined: Default::default(),
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, for modules that keep tables of their own (the
    /// daemon's resync requests). Record state goes through the methods
    /// here, never through raw SQL elsewhere.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Run `writes` as one transaction, so that all of them land or none
    /// does (an error, or a panic, rolls every one back) and the store's
    /// file takes one commit for them all. The record writes it may call
    /// (`begin_write`, `record_event`, `record_applied`, `record_refused`,
    /// `record_held`, and the single-statement ones) join it instead of
    /// committing on their own, and so does a `together` inside it; `writes`
    /// must pass on their errors, or what came before them is committed.
    pub fn together<T, E: From<StoreError>>(
        &self,
        writes: impl FnOnce(&Store) -> Result<T, E>,
    ) -> Result<T, E> {
        let tx = self.write_tx()?;
        let value = {
            let _joined = JoinedScope::enter(&self.joined);
            writes(self)?
        };
        tx.commit().map_err(sqlite_error(&self.path))?;
        Ok(value)
    }

    /// The transaction a write of several statements runs in: its own, or
    /// the one of the [`Store::together`] it is called in. Any other open
    /// transaction (a read snapshot) is refused by SQLite, as before.
    fn write_tx(&self) -> Result<Joined<'_>, StoreError> {
        if self.joined.get() > 0 {
            return Ok(Joined(None));
        }
        self.conn
            .unchecked_transaction()
            .map(|tx| Joined(Some(tx)))
            .map_err(sqlite_error(&self.path))
    }

    fn configure(&self) -> Result<(), StoreError> {
        let err = sqlite_error(&self.path);
        self.conn
            .busy_timeout(Duration::from_secs(10))
            .map_err(&err)?;
        // Write intents can be large and are cleared soon after: pages they
        // free are given back at the end of each cycle. Takes effect for a
        // store created now; an older store keeps its setting.
        self.conn
            .pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(&err)?;
        // WAL lets `status` read while a cycle writes; NORMAL is durable
        // across process crashes in WAL mode, which is what we need.
        self.conn
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(&err)?;
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(&err)?;
        self.conn
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(&err)?;
        Ok(())
    }

    fn user_version(&self) -> Result<i64, StoreError> {
        self.conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(sqlite_error(&self.path))
    }

    fn refuse_newer(&self) -> Result<i64, StoreError> {
        let version = self.user_version()?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found: version,
                known,
            });
        }
        Ok(version)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let err = sqlite_error(&self.path);
        let version = self.refuse_newer()?;
        if version == MIGRATIONS.len() as i64 {
            return Ok(());
        }
        // Every pending migration in one transaction: a process killed while
        // migrating leaves the store at the version it had, never between.
        let tx = self.conn.transaction().map_err(&err)?;
        for (_name, sql) in MIGRATIONS.iter().skip(version as usize) {
            tx.execute_batch(sql).map_err(&err)?;
        }
        tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
            .map_err(&err)?;
        tx.commit().map_err(&err)
    }

    /// `PRAGMA integrity_check`: `ok`, or the problems found.
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        let err = sqlite_error(&self.path);
        let mut stmt = self.conn.prepare("PRAGMA integrity_check").map_err(&err)?;
        let rows: Vec<String> = stmt
            .query_map([], |row| row.get(0))
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        Ok(rows.join("\n"))
    }

    // -- records ------------------------------------------------------------

    pub fn record(&self, external_id: &str) -> Result<Option<StoredRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT referral_id, etag, snapshot, desired_hash, state, last_error, attempts,
                        base, intent, refused, held IS NOT NULL
                 FROM records WHERE external_id = ?1",
            )
            .map_err(sqlite_error(&self.path))?;
        let row = stmt
            .query_row([external_id], |row| {
                Ok(RawRecord {
                    referral_id: row.get(0)?,
                    etag: row.get(1)?,
                    snapshot: row.get(2)?,
                    desired_hash: row.get(3)?,
                    state: row.get(4)?,
                    last_error: row.get(5)?,
                    attempts: row.get(6)?,
                    base: row.get(7)?,
                    intent: row.get(8)?,
                    refused: row.get(9)?,
                    held: row.get(10)?,
                })
            })
            .optional()
            .map_err(sqlite_error(&self.path))?;
        let Some(raw) = row else {
            return Ok(None);
        };
        let corrupt = |e: serde_json::Error| StoreError::CorruptSnapshot {
            path: self.path.clone(),
            external_id: external_id.to_owned(),
            message: e.to_string(),
        };
        let json = |text: Option<String>| {
            text.map(|text| serde_json::from_str::<Value>(&text).map_err(corrupt))
                .transpose()
        };
        let intent = raw
            .intent
            .map(|text| serde_json::from_str::<WriteIntent>(&text).map_err(corrupt))
            .transpose()?;
        let refused = raw
            .refused
            .map(|text| serde_json::from_str::<Vec<String>>(&text).map_err(corrupt))
            .transpose()?
            .unwrap_or_default();
        Ok(Some(StoredRecord {
            external_id: external_id.to_owned(),
            referral_id: raw.referral_id,
            etag: raw.etag,
            snapshot: json(raw.snapshot)?,
            base: json(raw.base)?,
            intent,
            refused,
            desired_hash: raw.desired_hash,
            state: if raw.held {
                SyncState::Held
            } else {
                SyncState::parse(&raw.state)
            },
            last_error: raw.last_error,
            attempts: raw.attempts,
        }))
    }

    /// The record a referral is bound to, if any.
    pub fn record_of_referral(&self, referral_id: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .prepare_cached("SELECT external_id FROM records WHERE referral_id = ?1 LIMIT 1")
            .and_then(|mut stmt| {
                stmt.query_row([referral_id], |row| row.get::<_, String>(0))
                    .optional()
            })
            .map_err(sqlite_error(&self.path))
    }

    /// Before a write: the record becomes `pending` and the intent is
    /// stored, in one statement, so that a crash leaves what the write was
    /// for the next attempt to settle against the live referral.
    pub fn begin_write(
        &self,
        external_id: &str,
        referral_id: Option<&str>,
        intent: &WriteIntent,
    ) -> Result<(), StoreError> {
        let now = now();
        let intent = serde_json::to_string(intent).map_err(|e| StoreError::CorruptSnapshot {
            path: self.path.clone(),
            external_id: external_id.to_owned(),
            message: e.to_string(),
        })?;
        self.conn
            .prepare_cached(
                "INSERT INTO records (external_id, referral_id, state, intent, first_seen_at, updated_at)
                 VALUES (?1, ?2, 'pending', ?3, ?4, ?4)
                 ON CONFLICT (external_id) DO UPDATE SET
                    referral_id = COALESCE(excluded.referral_id, records.referral_id),
                    state = 'pending',
                    intent = excluded.intent,
                    updated_at = excluded.updated_at",
            )
            .and_then(|mut stmt| stmt.execute(params![external_id, referral_id, intent, now]))
            .map(|_| ())
            .map_err(sqlite_error(&self.path))
    }

    /// The service refused the record for good: its intent goes, and it is
    /// held (`invalid` with the refused document's hash, so that an
    /// unchanged record is not taken up again) with the service's answer.
    pub fn record_held(
        &self,
        external_id: &str,
        referral_id: Option<&str>,
        desired_hash: &str,
        held: &Value,
        error: &str,
    ) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        self.record_problem(
            external_id,
            referral_id,
            SyncState::Invalid,
            Some(desired_hash),
            error,
        )?;
        self.conn
            .prepare_cached("UPDATE records SET intent = NULL, held = ?2 WHERE external_id = ?1")
            .and_then(|mut stmt| stmt.execute(params![external_id, held.to_string()]))
            .map_err(sqlite_error(&self.path))?;
        tx.commit().map_err(sqlite_error(&self.path))
    }

    /// Let held records be tried again next cycle: `None` releases every
    /// held record. A record whose referral is gone (404) also forgets it,
    /// so the next cycle looks it up again and, with `sync.create_missing`,
    /// creates it. Returns the external ids released.
    pub fn release_held(&self, external_ids: Option<&[String]>) -> Result<Vec<String>, StoreError> {
        let err = sqlite_error(&self.path);
        let tx = self.conn.unchecked_transaction().map_err(&err)?;
        let held: Vec<(String, Option<String>)> = {
            let mut stmt = tx
                .prepare("SELECT external_id, held FROM records WHERE held IS NOT NULL ORDER BY external_id")
                .map_err(&err)?;
            let rows = stmt
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(&err)?;
            rows.collect::<Result<_, _>>().map_err(&err)?
        };
        let mut released = Vec::new();
        for (external_id, detail) in held {
            if external_ids.is_some_and(|ids| !ids.contains(&external_id)) {
                continue;
            }
            let gone = detail
                .and_then(|text| serde_json::from_str::<Value>(&text).ok())
                .is_some_and(|d| d["referralGone"] == Value::Bool(true));
            let sql = if gone {
                "UPDATE records SET held = NULL, desired_hash = NULL, state = 'failed',
                        referral_id = NULL, etag = NULL, base = NULL,
                        last_error = 'retry asked: the referral is looked up again', updated_at = ?2
                 WHERE external_id = ?1"
            } else {
                "UPDATE records SET held = NULL, desired_hash = NULL, state = 'failed',
                        last_error = 'retry asked', updated_at = ?2
                 WHERE external_id = ?1"
            };
            tx.execute(sql, params![external_id, now()]).map_err(&err)?;
            released.push(external_id);
        }
        tx.commit().map_err(&err)?;
        Ok(released)
    }

    /// Mark a record `pending` without an intent, as a store written before
    /// intents were kept leaves a write whose outcome was lost: the next
    /// attempt reads the live referral before planning.
    pub fn mark_pending(
        &self,
        external_id: &str,
        referral_id: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now();
        self.conn
            .prepare_cached(
                "INSERT INTO records (external_id, referral_id, state, first_seen_at, updated_at)
                 VALUES (?1, ?2, 'pending', ?3, ?3)
                 ON CONFLICT (external_id) DO UPDATE SET
                    referral_id = COALESCE(excluded.referral_id, records.referral_id),
                    state = 'pending',
                    updated_at = excluded.updated_at",
            )
            .and_then(|mut stmt| stmt.execute(params![external_id, referral_id, now]))
            .map(|_| ())
            .map_err(sqlite_error(&self.path))
    }

    /// The service refused the write outright: it was not applied, so the
    /// intent goes and the record is `failed` with `error`.
    pub fn record_refused(
        &self,
        external_id: &str,
        referral_id: Option<&str>,
        error: &str,
    ) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        self.conn
            .prepare_cached("UPDATE records SET intent = NULL WHERE external_id = ?1")
            .and_then(|mut stmt| stmt.execute([external_id]))
            .map_err(sqlite_error(&self.path))?;
        self.record_failed(external_id, referral_id, error)?;
        tx.commit().map_err(sqlite_error(&self.path))
    }

    /// The record is settled: base, eTag, snapshot and hash advance
    /// together and the intent is cleared, in one statement; with the
    /// export fingerprint, when given, in the same transaction.
    pub fn record_applied(
        &self,
        external_id: &str,
        applied: &Applied<'_>,
    ) -> Result<(), StoreError> {
        let now = now();
        let Applied {
            referral_id,
            etag,
            base,
            snapshot,
            refused,
            desired_hash,
            fingerprint,
            state,
            error,
        } = *applied;
        let snapshot = snapshot.to_string();
        let base = base.map(Value::to_string);
        let refused = (!refused.is_empty())
            .then(|| serde_json::to_string(refused).unwrap_or_else(|_| "[]".into()));
        let tx = self.write_tx()?;
        self.conn
            .prepare_cached(
            "INSERT INTO records (external_id, referral_id, etag, snapshot, desired_hash, state,
                                  last_error, attempts, first_seen_at, updated_at, last_synced_at,
                                  base, intent, refused)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?8, ?8, ?9, NULL, ?10)
             ON CONFLICT (external_id) DO UPDATE SET
                referral_id = excluded.referral_id,
                etag = excluded.etag,
                base = excluded.base,
                intent = NULL,
                held = NULL,
                refused = excluded.refused,
                snapshot = excluded.snapshot,
                desired_hash = excluded.desired_hash,
                state = excluded.state,
                last_error = excluded.last_error,
                attempts = 0,
                updated_at = excluded.updated_at,
                last_synced_at = excluded.last_synced_at",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                external_id,
                referral_id,
                etag,
                snapshot,
                desired_hash,
                state.as_str(),
                error,
                now,
                base,
                refused
            ])
        })
        .map_err(sqlite_error(&self.path))?;
        if let Some(fingerprint) = fingerprint {
            self.conn
                .prepare_cached(RECORD_FINGERPRINT)
                .and_then(|mut stmt| {
                    stmt.execute(params![external_id, &fingerprint[..], desired_hash])
                })
                .map_err(sqlite_error(&self.path))?;
        }
        tx.commit().map_err(sqlite_error(&self.path))
    }

    /// An attempt failed: keep the snapshot, count the attempt, say why.
    /// `referral_id` is remembered when it became known on the way. A
    /// record with a write intent outstanding stays `pending`: whether that
    /// write was applied is still to be read from the live referral.
    pub fn record_failed(
        &self,
        external_id: &str,
        referral_id: Option<&str>,
        error: &str,
    ) -> Result<(), StoreError> {
        self.record_problem(external_id, referral_id, SyncState::Failed, None, error)
    }

    /// A write may or may not have been applied and could not be settled
    /// this cycle: the record stays `pending` (so the next cycle reads the
    /// live referral before sending anything), with the error and the
    /// attempt counted.
    pub fn record_unsettled(
        &self,
        external_id: &str,
        referral_id: Option<&str>,
        error: &str,
    ) -> Result<(), StoreError> {
        self.record_problem(external_id, referral_id, SyncState::Pending, None, error)
    }

    /// The record cannot be sent as it is; nothing was applied. The hash is
    /// kept so that the same unchanged record is not re-planned each cycle.
    pub fn record_invalid(
        &self,
        external_id: &str,
        referral_id: Option<&str>,
        desired_hash: &str,
        error: &str,
    ) -> Result<(), StoreError> {
        self.record_problem(
            external_id,
            referral_id,
            SyncState::Invalid,
            Some(desired_hash),
            error,
        )
    }

    fn record_problem(
        &self,
        external_id: &str,
        referral_id: Option<&str>,
        state: SyncState,
        desired_hash: Option<&str>,
        error: &str,
    ) -> Result<(), StoreError> {
        let now = now();
        let attempts_increment = i64::from(state != SyncState::Invalid);
        self.conn
            .prepare_cached(
                "INSERT INTO records (external_id, referral_id, desired_hash, state, last_error,
                                      attempts, first_seen_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
                 ON CONFLICT (external_id) DO UPDATE SET
                    referral_id = COALESCE(excluded.referral_id, records.referral_id),
                    desired_hash = CASE WHEN excluded.state = 'invalid'
                                        THEN excluded.desired_hash ELSE records.desired_hash END,
                    state = CASE WHEN records.intent IS NOT NULL AND excluded.state = 'failed'
                                 THEN 'pending' ELSE excluded.state END,
                    last_error = excluded.last_error,
                    attempts = records.attempts + ?6,
                    updated_at = excluded.updated_at",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    external_id,
                    referral_id,
                    desired_hash,
                    state.as_str(),
                    error,
                    attempts_increment,
                    now
                ])
            })
            .map(|_| ())
            .map_err(sqlite_error(&self.path))
    }

    // -- history -------------------------------------------------------------

    /// Add one event to a record's history.
    pub fn record_event(
        &self,
        external_id: &str,
        cycle_id: Option<&str>,
        kind: &str,
        detail: &Value,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO record_events (external_id, cycle_id, at, kind, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    external_id,
                    cycle_id,
                    now(),
                    kind,
                    detail.to_string()
                ])
            })
            .map(|_| ())
            .map_err(sqlite_error(&self.path))
    }

    /// A record's history, newest first, at most `limit` events.
    pub fn record_events(
        &self,
        external_id: &str,
        limit: usize,
    ) -> Result<Vec<RecordEvent>, StoreError> {
        let err = sqlite_error(&self.path);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT at, cycle_id, kind, detail FROM record_events
                 WHERE external_id = ?1 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(&err)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![external_id, limit], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, Option<String>>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                ))
            })
            .map_err(&err)?;
        let mut events = Vec::new();
        for row in rows {
            let (at, cycle_id, kind, detail) = row.map_err(&err)?;
            let detail = serde_json::from_str(&detail).unwrap_or(Value::String(detail));
            events.push(RecordEvent {
                at,
                cycle_id,
                kind,
                detail,
            });
        }
        Ok(events)
    }

    /// Delete events older than `days`, `batch` rows per statement so that
    /// a long-neglected history never holds the store for long; returns how
    /// many went.
    pub fn prune_events(&self, days: u32, batch: usize) -> Result<u64, StoreError> {
        let cutoff = (chrono::Utc::now() - chrono::Duration::days(i64::from(days)))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        let mut deleted = 0u64;
        loop {
            let n = self
                .conn
                .prepare_cached(
                    "DELETE FROM record_events WHERE id IN
                        (SELECT id FROM record_events WHERE at < ?1 ORDER BY at LIMIT ?2)",
                )
                .and_then(|mut stmt| stmt.execute(params![cutoff, batch]))
                .map_err(sqlite_error(&self.path))?;
            deleted += n as u64;
            if (n as i64) < batch {
                return Ok(deleted);
            }
        }
    }

    /// How many records the store knows.
    pub fn record_count(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM records", [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|n| n.max(0) as u64)
            .map_err(sqlite_error(&self.path))
    }

    /// Call `visit` once for every record the store knows, with whether it
    /// is settled (`synced` or `invalid`) and with which desired hash: read
    /// from an index that holds exactly these columns, in no promised order.
    pub fn for_each_record_brief(
        &self,
        visit: &mut dyn FnMut(RecordBrief<'_>),
    ) -> Result<(), StoreError> {
        let err = sqlite_error(&self.path);
        let mut records = self
            .conn
            .prepare(&format!(
                "SELECT external_id, {SETTLED}, desired_hash FROM records"
            ))
            .map_err(&err)?;
        let mut rows = records.query([]).map_err(&err)?;
        while let Some(row) = rows.next().map_err(&err)? {
            let external_id = row.get_ref(0).and_then(|v| Ok(v.as_str()?)).map_err(&err)?;
            let settled = row.get_ref(1).and_then(|v| Ok(v.as_i64()? != 0));
            let hash = row.get_ref(2).and_then(|v| Ok(v.as_str_or_null()?));
            // A hash edited into another type keeps its record out: it is
            // taken up as outdated.
            let settled = match (settled, hash) {
                (Ok(true), Ok(Some(hash))) => Some(hash),
                _ => None,
            };
            visit(RecordBrief {
                external_id,
                settled,
            });
        }
        Ok(())
    }

    /// Call `visit` once for every kept export fingerprint, in no promised
    /// order. Whether one is trusted is for the caller to say: only while
    /// its record is settled with the hash it maps to. A row edited into
    /// other types is passed over: its record is parsed, and its
    /// fingerprint written anew.
    pub fn for_each_fingerprint(
        &self,
        visit: &mut dyn FnMut(FingerprintRow<'_>),
    ) -> Result<(), StoreError> {
        let err = sqlite_error(&self.path);
        let mut fingerprints = self
            .conn
            .prepare("SELECT external_id, fingerprint, desired_hash FROM export_fingerprints")
            .map_err(&err)?;
        let mut rows = fingerprints.query([]).map_err(&err)?;
        while let Some(row) = rows.next().map_err(&err)? {
            let external_id = row.get_ref(0).and_then(|v| Ok(v.as_str()?));
            let fingerprint = row.get_ref(1).and_then(|v| Ok(v.as_blob()?));
            let desired_hash = row.get_ref(2).and_then(|v| Ok(v.as_str()?));
            if let (Ok(external_id), Ok(fingerprint), Ok(desired_hash)) =
                (external_id, fingerprint, desired_hash)
            {
                visit(FingerprintRow {
                    external_id,
                    fingerprint,
                    desired_hash,
                });
            }
        }
        Ok(())
    }

    /// A second connection to this store, read-only, for reading beside
    /// this one on another thread; `None` for a store in memory, which has
    /// no second connection.
    pub fn reader_beside(&self) -> Result<Option<Store>, StoreError> {
        if self.path == Path::new(":memory:") {
            return Ok(None);
        }
        let (store, version) = Store::open_existing(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // The path may name another file by now.
        store.require_schema(version)?;
        Ok(Some(store))
    }

    /// Keep, for each `(external id, fingerprint, desired hash)`, that the
    /// export record with that fingerprint maps to that desired hash,
    /// replacing what was kept for the id; in one transaction.
    pub fn record_fingerprints(
        &self,
        found: &[(String, [u8; 16], String)],
    ) -> Result<(), StoreError> {
        let err = sqlite_error(&self.path);
        let tx = self.conn.unchecked_transaction().map_err(&err)?;
        {
            let mut stmt = tx.prepare_cached(RECORD_FINGERPRINT).map_err(&err)?;
            for (external_id, fingerprint, hash) in found {
                stmt.execute(params![external_id, &fingerprint[..], hash])
                    .map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)
    }

    // -- the referral index ---------------------------------------------------

    /// Replace the whole `externalReferenceId -> id` index in one transaction.
    pub fn replace_index(&self, entries: &[(String, String)]) -> Result<(), StoreError> {
        let err = sqlite_error(&self.path);
        let now = now();
        let tx = self.conn.unchecked_transaction().map_err(&err)?;
        tx.execute("DELETE FROM referral_index", []).map_err(&err)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO referral_index (external_id, referral_id, indexed_at)
                     VALUES (?1, ?2, ?3)",
                )
                .map_err(&err)?;
            for (external_id, referral_id) in entries {
                stmt.execute(params![external_id, referral_id, now])
                    .map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)
    }

    pub fn index_lookup(&self, external_id: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .prepare_cached("SELECT referral_id FROM referral_index WHERE external_id = ?1")
            .and_then(|mut stmt| stmt.query_row([external_id], |row| row.get(0)).optional())
            .map_err(sqlite_error(&self.path))
    }

    // -- cycles ----------------------------------------------------------------

    pub fn begin_cycle(
        &self,
        cycle_id: &str,
        trigger: &str,
        dry_run: bool,
    ) -> Result<i64, StoreError> {
        let err = sqlite_error(&self.path);
        self.conn
            .execute(
                "INSERT INTO cycles (cycle_id, trigger, dry_run, started_at) VALUES (?1, ?2, ?3, ?4)",
                params![cycle_id, trigger, dry_run, now()],
            )
            .map_err(&err)?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn finish_cycle(
        &self,
        row_id: i64,
        outcome: &str,
        summary: &Value,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE cycles SET finished_at = ?2, outcome = ?3, summary = ?4, error = ?5
                 WHERE id = ?1",
                params![row_id, now(), outcome, summary.to_string(), error],
            )
            .map_err(sqlite_error(&self.path))?;
        // Give back the pages cleared intents freed (a no-op for a store
        // without incremental auto-vacuum). The pragma frees a page per
        // step, so it is stepped to the end.
        let err = sqlite_error(&self.path);
        let mut stmt = self
            .conn
            .prepare("PRAGMA incremental_vacuum")
            .map_err(&err)?;
        let mut rows = stmt.query([]).map_err(&err)?;
        while rows.next().map_err(&err)?.is_some() {}
        Ok(())
    }

    pub fn recent_cycles(&self, limit: usize) -> Result<Vec<CycleRow>, StoreError> {
        let err = sqlite_error(&self.path);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT cycle_id, trigger, dry_run, started_at, finished_at, outcome, summary, error
                 FROM cycles ORDER BY id DESC LIMIT ?1",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map([limit as i64], |row| {
                let summary: Option<String> = row.get(6)?;
                Ok(CycleRow {
                    cycle_id: row.get(0)?,
                    trigger: row.get(1)?,
                    dry_run: row.get(2)?,
                    started_at: row.get(3)?,
                    finished_at: row.get(4)?,
                    outcome: row.get(5)?,
                    summary: summary.and_then(|s| serde_json::from_str(&s).ok()),
                    error: row.get(7)?,
                })
            })
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }

    pub fn state_counts(&self) -> Result<StateCounts, StoreError> {
        let err = sqlite_error(&self.path);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT CASE WHEN held IS NOT NULL THEN 'held' ELSE state END, COUNT(*)
                 FROM records GROUP BY 1",
            )
            .map_err(&err)?;
        let mut counts = StateCounts::default();
        let rows = stmt
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(&err)?;
        for row in rows {
            let (state, n) = row.map_err(&err)?;
            let n = n.max(0) as u64;
            if state == "held" {
                counts.held = n;
                continue;
            }
            match SyncState::parse(&state) {
                SyncState::Held => counts.held = n,
                SyncState::Synced => counts.synced = n,
                SyncState::Pending => counts.pending = n,
                SyncState::Failed => counts.failed = n,
                SyncState::Invalid => counts.invalid = n,
            }
        }
        Ok(counts)
    }

    /// Records that are not synced, most recently changed first.
    pub fn problems(&self, limit: usize) -> Result<Vec<ProblemRow>, StoreError> {
        let err = sqlite_error(&self.path);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT external_id, referral_id, state, attempts, last_error, updated_at, held
                 FROM records WHERE state != 'synced'
                 ORDER BY updated_at DESC, external_id LIMIT ?1",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map([limit as i64], |row| {
                let held: Option<String> = row.get(6)?;
                let held =
                    held.map(|text| serde_json::from_str(&text).unwrap_or(Value::String(text)));
                Ok(ProblemRow {
                    external_id: row.get(0)?,
                    referral_id: row.get(1)?,
                    state: if held.is_some() {
                        SyncState::Held
                    } else {
                        SyncState::parse(&row.get::<_, String>(2)?)
                    },
                    attempts: row.get(3)?,
                    last_error: row.get(4)?,
                    updated_at: row.get(5)?,
                    held,
                })
            })
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)
    }
}

fn sqlite_error(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn pages_a_cleared_intent_freed_are_given_back_at_the_end_of_a_cycle() {
        let (dir, store) = store();
        let page_count = |store: &Store| -> i64 {
            store
                .connection()
                .pragma_query_value(None, "page_count", |row| row.get(0))
                .unwrap()
        };
        let empty = page_count(&store);
        let huge = Value::String("d".repeat(4 << 20));
        let intent = WriteIntent {
            kind: IntentKind::Update,
            etag: Some("\"e\"".into()),
            ops: Vec::new(),
            targets: Vec::new(),
            against: Value::Null,
            base: None,
            before: None,
            desired: huge,
            desired_hash: "h".into(),
            started_at: now(),
        };
        let cycle = store.begin_cycle("c", "manual", false).unwrap();
        store.begin_write("ext-1", Some("ref-1"), &intent).unwrap();
        assert!(page_count(&store) > empty + 900);
        store
            .record_refused("ext-1", Some("ref-1"), "HTTP 413")
            .unwrap();
        store
            .finish_cycle(cycle, "partial", &Value::Null, None)
            .unwrap();
        assert!(
            page_count(&store) < empty + 10,
            "{} pages",
            page_count(&store)
        );
        let row = store.record("ext-1").unwrap().unwrap();
        assert_eq!((row.intent, row.state), (None, SyncState::Failed));
        drop(dir);
    }

    #[test]
    fn migrations_apply_once_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.user_version().unwrap(), MIGRATIONS.len() as i64);
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.integrity_check().unwrap(), "ok");
        let mode: String = store
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    /// `doc` settled as synced on referral `ref` with `hash`.
    fn synced<'a>(doc: &'a Value, hash: &'a str, fingerprint: Option<&'a [u8; 16]>) -> Applied<'a> {
        Applied {
            referral_id: "ref",
            etag: Some("\"e\""),
            base: None,
            refused: &[],
            snapshot: doc,
            desired_hash: hash,
            fingerprint,
            state: SyncState::Synced,
            error: None,
        }
    }

    /// A kept fingerprint as the tests compare it: its bytes and the hash
    /// they map to.
    type Kept = Option<(Vec<u8>, String)>;

    /// Every record with what it is settled with and the fingerprint kept
    /// for it (joined by id, not by pass one's trust rule), sorted by id.
    fn known(store: &Store) -> Vec<(String, Option<String>, Kept)> {
        let mut fingerprints = std::collections::BTreeMap::new();
        store
            .for_each_fingerprint(&mut |kept| {
                fingerprints.insert(
                    kept.external_id.to_owned(),
                    (kept.fingerprint.to_vec(), kept.desired_hash.to_owned()),
                );
            })
            .unwrap();
        let mut known = Vec::new();
        store
            .for_each_record_brief(&mut |record| {
                known.push((
                    record.external_id.to_owned(),
                    record.settled.map(str::to_owned),
                    fingerprints.get(record.external_id).cloned(),
                ))
            })
            .unwrap();
        known.sort();
        known
    }

    #[test]
    fn known_records_are_read_with_what_they_are_settled_with_and_every_fingerprint() {
        let (_dir, store) = store();
        let doc = json!({"name": "A"});
        for (id, hash) in [("ext-1", "aa"), ("ext-2", "bb"), ("ext-3", "cc")] {
            store.mark_pending(id, Some("ref")).unwrap();
            store.record_applied(id, &synced(&doc, hash, None)).unwrap();
        }
        store.mark_pending("ext-2", None).unwrap();
        store
            .record_invalid("ext-3", None, "dd", "refused")
            .unwrap();
        store.mark_pending("ext-4", None).unwrap();
        // Fingerprints for ids before, between and after the records, one
        // of them for an id the records lack.
        let fp = |n: u8| [n; 16];
        store
            .record_fingerprints(&[
                ("ext-0".into(), fp(0), "zz".into()),
                ("ext-1".into(), fp(1), "aa".into()),
                ("ext-25".into(), fp(2), "yy".into()),
                ("ext-3".into(), fp(3), "old".into()),
                ("ext-9".into(), fp(9), "xx".into()),
            ])
            .unwrap();

        assert_eq!(
            known(&store),
            [
                (
                    "ext-1".into(),
                    Some("aa".into()),
                    Some((vec![1; 16], "aa".into()))
                ),
                ("ext-2".into(), None, None),
                (
                    "ext-3".into(),
                    Some("dd".into()),
                    Some((vec![3; 16], "old".into()))
                ),
                ("ext-4".into(), None, None),
            ]
        );
        let mut kept = Vec::new();
        store
            .for_each_fingerprint(&mut |f| kept.push(f.external_id.to_owned()))
            .unwrap();
        kept.sort();
        assert_eq!(kept, ["ext-0", "ext-1", "ext-25", "ext-3", "ext-9"]);

        // The same from a second connection, as another thread reads them.
        let beside = store.reader_beside().unwrap().unwrap();
        assert_eq!(known(&beside), known(&store));
        assert!(beside.mark_pending("ext-5", None).is_err(), "read-only");
        assert!(
            Store::open_in_memory()
                .unwrap()
                .reader_beside()
                .unwrap()
                .is_none()
        );

        let plan: Vec<String> = store
            .conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN SELECT external_id, {SETTLED}, desired_hash FROM records"
            ))
            .unwrap()
            .query_map([], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.contains("COVERING INDEX records_brief")),
            "{plan:?}"
        );
    }

    #[test]
    fn writes_together_land_all_or_none() {
        let (_dir, store) = store();
        let doc = json!({"name": "A"});
        let applied = synced(&doc, "aa", Some(&[1; 16]));
        let event =
            |store: &Store, kind: &str| store.record_event("ext-1", Some("c"), kind, &json!({}));
        let kinds = |store: &Store| -> Vec<String> {
            let mut kinds: Vec<String> = store
                .record_events("ext-1", 10)
                .unwrap()
                .into_iter()
                .map(|e| e.kind)
                .collect();
            kinds.reverse();
            kinds
        };

        // A failure after every write: none of them lands, the record's
        // own transaction (and its fingerprint) included.
        let failed: Result<(), StoreError> = store.together(|store| {
            event(store, "sent")?;
            store.record_applied("ext-1", &applied)?;
            event(store, "settled")?;
            Err(StoreError::CorruptSnapshot {
                path: store.path().to_path_buf(),
                external_id: "ext-1".into(),
                message: "on purpose".into(),
            })
        });
        assert!(failed.is_err());
        assert!(store.record("ext-1").unwrap().is_none());
        assert!(kinds(&store).is_empty());
        assert_eq!(store.record_count().unwrap(), 0);

        // Nested and in order: all of it, once the outer one commits.
        store
            .together(|store| {
                event(store, "sent")?;
                store.together(|store| store.record_applied("ext-1", &applied))?;
                event(store, "settled")
            })
            .unwrap();
        assert!(store.connection().is_autocommit());
        assert_eq!(
            store.record("ext-1").unwrap().unwrap().state,
            SyncState::Synced
        );
        assert_eq!(kinds(&store), ["sent", "settled"]);
        let fingerprinted = known(&store).iter().filter(|k| k.2.is_some()).count();
        assert_eq!(fingerprinted, 1);

        // Inside a read snapshot, which rolls back, a write is refused
        // rather than joined.
        let snapshot = store.connection().unchecked_transaction().unwrap();
        assert!(store.record_applied("ext-2", &applied).is_err());
        drop(snapshot);
        assert!(store.record("ext-2").unwrap().is_none());
    }

    #[test]
    fn a_record_settled_with_its_fingerprint_is_known_by_it_at_once() {
        let (_dir, store) = store();
        let doc = json!({"name": "A"});
        let settle = |hash: &str, fingerprint: Option<&[u8; 16]>| {
            store.mark_pending("ext-1", Some("ref")).unwrap();
            store
                .record_applied("ext-1", &synced(&doc, hash, fingerprint))
                .unwrap();
        };
        let known = || -> Vec<(Option<String>, Kept)> {
            known(&store)
                .into_iter()
                .map(|(_, settled, kept)| (settled, kept))
                .collect()
        };
        settle("aa", Some(&[7; 16]));
        assert_eq!(
            known(),
            [(Some("aa".into()), Some((vec![7; 16], "aa".into())))]
        );
        // Settled again without one (a record whose bytes the store knew
        // already): the pair stays, stale once the hash moved on.
        settle("bb", None);
        assert_eq!(
            known(),
            [(Some("bb".into()), Some((vec![7; 16], "aa".into())))]
        );
        settle("cc", Some(&[8; 16]));
        assert_eq!(
            known(),
            [(Some("cc".into()), Some((vec![8; 16], "cc".into())))]
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = Store::open(&path).unwrap();
        store.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(store);
        let err = Store::open(&path).unwrap_err().to_string();
        assert!(err.contains("schema version 99 is newer"), "{err}");
    }

    #[test]
    fn a_newer_store_is_refused_before_anything_writes_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            // A store from a newer build, in rollback-journal mode.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 99;")
                .unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        assert!(Store::open(&path).is_err());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the file was rewritten"
        );
        assert!(!dir.path().join("s.db-wal").exists());
        let conn = Connection::open(&path).unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
    }

    #[test]
    fn applied_advances_everything_and_failure_keeps_snapshot() {
        let (_dir, store) = store();
        let doc = json!({"name": "A"});
        store.mark_pending("ext-1", Some("ref-1")).unwrap();
        assert_eq!(
            store.record("ext-1").unwrap().unwrap().state,
            SyncState::Pending
        );
        store
            .record_applied(
                "ext-1",
                &Applied {
                    referral_id: "ref-1",
                    etag: Some("\"e1\""),
                    base: None,
                    refused: &[],
                    snapshot: &doc,
                    desired_hash: "h1",
                    fingerprint: None,
                    state: SyncState::Synced,
                    error: None,
                },
            )
            .unwrap();
        store
            .record_failed("ext-1", None, "HTTP 400 invalidRequest: nope")
            .unwrap();
        store
            .record_failed("ext-1", None, "HTTP 400 invalidRequest: nope")
            .unwrap();
        let rec = store.record("ext-1").unwrap().unwrap();
        assert_eq!(rec.snapshot, Some(doc));
        assert_eq!(rec.etag.as_deref(), Some("\"e1\""));
        assert_eq!(rec.desired_hash.as_deref(), Some("h1"));
        assert_eq!(rec.state, SyncState::Failed);
        assert_eq!(rec.attempts, 2);
        assert_eq!(rec.referral_id.as_deref(), Some("ref-1"));
        let problems = store.problems(10).unwrap();
        assert_eq!(problems.len(), 1);
        assert_eq!(
            problems[0].last_error.as_deref(),
            Some("HTTP 400 invalidRequest: nope")
        );
        let counts = store.state_counts().unwrap();
        assert_eq!((counts.synced, counts.failed), (0, 1));
    }

    #[test]
    fn index_and_cycles_round_trip() {
        let (_dir, store) = store();
        store
            .replace_index(&[("a".into(), "r-a".into()), ("b".into(), "r-b".into())])
            .unwrap();
        store.replace_index(&[("b".into(), "r-b2".into())]).unwrap();
        assert_eq!(store.index_lookup("a").unwrap(), None);
        assert_eq!(store.index_lookup("b").unwrap().as_deref(), Some("r-b2"));
        let id = store.begin_cycle("c-1", "manual", false).unwrap();
        store
            .finish_cycle(id, "ok", &json!({"seen": 3}), None)
            .unwrap();
        let cycles = store.recent_cycles(5).unwrap();
        assert_eq!(cycles[0].summary, Some(json!({"seen": 3})));
        assert_eq!(cycles[0].outcome.as_deref(), Some("ok"));
    }

    #[test]
    fn read_only_open_of_missing_store_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            Store::open_read_only(&dir.path().join("nope.db"))
                .unwrap()
                .is_none()
        );
    }
}
