//! The daemon's own rows in the store: resync requests (`resync_requests`,
//! written by `referral-sync resync`, taken up and answered by the daemon)
//! and the cycles a shutdown or a crash cut off.
//!
//! Every function here is one short statement or transaction, so that a
//! connection used beside a running cycle never holds the write lock long.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::cycle::{CycleOutcome, CycleSummary};
use crate::exit::ExitCode;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("store {}: resync requests: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store {}: resync request {id}: only_ids is not a JSON array of external ids: {message}", path.display())]
    CorruptOnly {
        path: PathBuf,
        id: i64,
        message: String,
    },
}

fn sqlite_error(path: &Path) -> impl Fn(rusqlite::Error) -> RequestError + '_ {
    move |source| RequestError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A resync somebody asked for and nobody has started yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResyncRequest {
    pub id: i64,
    /// `None`: every record.
    pub only: Option<Vec<String>>,
    /// The `referral-sync resync` process; `None` for `systemctl reload`.
    pub requested_by_pid: Option<i64>,
}

/// How a resync request ended (`resync_requests.outcome`): as its cycle
/// did, or withdrawn before it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    Cycle(CycleOutcome),
    Cancelled,
}

impl RequestOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestOutcome::Cycle(outcome) => outcome.as_str(),
            RequestOutcome::Cancelled => "cancelled",
        }
    }

    /// As stored; a request closed without a known outcome failed.
    fn parse(text: Option<&str>) -> RequestOutcome {
        match text {
            Some("cancelled") => RequestOutcome::Cancelled,
            Some(text) => RequestOutcome::Cycle(text.parse().unwrap_or(CycleOutcome::Failed)),
            None => RequestOutcome::Cycle(CycleOutcome::Failed),
        }
    }
}

impl std::fmt::Display for RequestOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a resync came to, as the command that asked for it reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResyncResult {
    pub outcome: RequestOutcome,
    pub summary: CycleSummary,
    /// The exit code `referral-sync resync` ends with.
    pub exit_code: ExitCode,
    pub error: Option<String>,
}

/// The `summary` column: the cycle's counts and the exit code.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSummary {
    #[serde(flatten)]
    summary: CycleSummary,
    exit_code: u8,
}

/// Where a request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestState {
    Queued,
    Running,
    Finished(ResyncResult),
    /// No such request (the store was replaced).
    Missing,
}

/// Queue a resync. Returns the request's id.
pub fn insert(
    store: &Store,
    only: Option<&[String]>,
    requested_by_pid: Option<u32>,
) -> Result<i64, RequestError> {
    let err = sqlite_error(store.path());
    let only = only
        .map(serde_json::to_string)
        .transpose()
        // A list of strings always serialises.
        .unwrap_or_default();
    let conn = store.connection();
    conn.execute(
        "INSERT INTO resync_requests (only_ids, requested_at, requested_by_pid) VALUES (?1, ?2, ?3)",
        params![only, now(), requested_by_pid],
    )
    .map_err(&err)?;
    Ok(conn.last_insert_rowid())
}

/// Requests nobody has started, oldest first.
pub fn queued(store: &Store) -> Result<Vec<ResyncRequest>, RequestError> {
    let err = sqlite_error(store.path());
    let mut stmt = store
        .connection()
        .prepare_cached(
            "SELECT id, only_ids, requested_by_pid FROM resync_requests
             WHERE started_at IS NULL AND finished_at IS NULL ORDER BY id",
        )
        .map_err(&err)?;
    let rows = stmt
        .query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, Option<String>>(1)?,
                row.get::<_, Option<i64>>(2)?,
            ))
        })
        .map_err(&err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(&err)?;
    rows.into_iter()
        .map(|(id, only, requested_by_pid)| {
            let only = only
                .map(|text| {
                    serde_json::from_str::<Vec<String>>(&text).map_err(|e| {
                        RequestError::CorruptOnly {
                            path: store.path().to_owned(),
                            id,
                            message: e.to_string(),
                        }
                    })
                })
                .transpose()?;
            Ok(ResyncRequest {
                id,
                only,
                requested_by_pid,
            })
        })
        .collect()
}

pub fn mark_started(store: &Store, ids: &[i64]) -> Result<(), RequestError> {
    update_each(
        store,
        ids,
        "UPDATE resync_requests SET started_at = ?2 WHERE id = ?1 AND started_at IS NULL",
        &now(),
    )
}

pub fn finish(store: &Store, ids: &[i64], result: &ResyncResult) -> Result<(), RequestError> {
    let err = sqlite_error(store.path());
    let summary = serde_json::to_string(&StoredSummary {
        summary: result.summary,
        exit_code: result.exit_code.as_u8(),
    })
    .unwrap_or_default();
    let finished_at = now();
    let tx = store.connection().unchecked_transaction().map_err(&err)?;
    {
        let mut stmt = tx
            .prepare_cached(
                "UPDATE resync_requests
                 SET started_at = COALESCE(started_at, ?2), finished_at = ?2,
                     outcome = ?3, summary = ?4, error = ?5
                 WHERE id = ?1 AND finished_at IS NULL",
            )
            .map_err(&err)?;
        for id in ids {
            stmt.execute(params![
                id,
                finished_at,
                result.outcome.as_str(),
                summary,
                result.error
            ])
            .map_err(&err)?;
        }
    }
    tx.commit().map_err(&err)
}

/// Withdraw a request nobody has started. Returns false when it had been
/// started (or finished) meanwhile.
pub fn cancel_queued(store: &Store, id: i64, reason: &str) -> Result<bool, RequestError> {
    let changed = store
        .connection()
        .execute(
            "UPDATE resync_requests SET finished_at = ?2, outcome = 'cancelled', error = ?3
             WHERE id = ?1 AND started_at IS NULL AND finished_at IS NULL",
            params![id, now(), reason],
        )
        .map_err(sqlite_error(store.path()))?;
    Ok(changed > 0)
}

/// Requests a previous daemon started and never finished (it crashed or
/// was killed): they are answered as failed, so that nobody waits on them.
pub fn fail_abandoned(store: &Store) -> Result<usize, RequestError> {
    store
        .connection()
        .execute(
            "UPDATE resync_requests SET finished_at = ?1, outcome = 'failed',
                 error = 'the daemon stopped before this resync finished'
             WHERE started_at IS NOT NULL AND finished_at IS NULL",
            params![now()],
        )
        .map_err(sqlite_error(store.path()))
}

pub fn state(store: &Store, id: i64) -> Result<RequestState, RequestError> {
    let err = sqlite_error(store.path());
    let row = store
        .connection()
        .query_row(
            "SELECT started_at, finished_at, outcome, summary, error FROM resync_requests
             WHERE id = ?1",
            [id],
            |row| {
                Ok((
                    row.get::<_, Option<String>>(0)?,
                    row.get::<_, Option<String>>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, Option<String>>(4)?,
                ))
            },
        )
        .optional()
        .map_err(&err)?;
    let Some((started_at, finished_at, outcome, summary, error)) = row else {
        return Ok(RequestState::Missing);
    };
    Ok(match (started_at, finished_at) {
        (_, Some(_)) => {
            let stored = summary.and_then(|s| serde_json::from_str::<StoredSummary>(&s).ok());
            let outcome = RequestOutcome::parse(outcome.as_deref());
            let exit_code = match &stored {
                Some(stored) => ExitCode::from_u8(stored.exit_code).unwrap_or(ExitCode::Runtime),
                None if outcome == RequestOutcome::Cycle(CycleOutcome::Ok) => ExitCode::Ok,
                None => ExitCode::Runtime,
            };
            RequestState::Finished(ResyncResult {
                outcome,
                summary: stored.map(|s| s.summary).unwrap_or_default(),
                exit_code,
                error,
            })
        }
        (Some(_), None) => RequestState::Running,
        (None, None) => RequestState::Queued,
    })
}

/// One resync cycle and the requests it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResyncBatch {
    pub request_ids: Vec<i64>,
    /// `None`: every record.
    pub only: Option<HashSet<String>>,
}

/// Decide the cycles for the queued requests: one full resync answers
/// every request when any of them asks for everything; otherwise each
/// request gets its own cycle, so that its result is its own.
pub fn plan_batches(queued: &[ResyncRequest]) -> Vec<ResyncBatch> {
    if queued.iter().any(|r| r.only.is_none()) {
        return vec![ResyncBatch {
            request_ids: queued.iter().map(|r| r.id).collect(),
            only: None,
        }];
    }
    queued
        .iter()
        .map(|r| ResyncBatch {
            request_ids: vec![r.id],
            only: r.only.as_ref().map(|ids| ids.iter().cloned().collect()),
        })
        .collect()
}

fn update_each(store: &Store, ids: &[i64], sql: &str, value: &str) -> Result<(), RequestError> {
    let err = sqlite_error(store.path());
    let tx = store.connection().unchecked_transaction().map_err(&err)?;
    {
        let mut stmt = tx.prepare_cached(sql).map_err(&err)?;
        for id in ids {
            stmt.execute(params![id, value]).map_err(&err)?;
        }
    }
    tx.commit().map_err(&err)
}

// -- cycles ---------------------------------------------------------------

/// The highest cycle row id so far; a cycle started afterwards has a
/// higher one.
pub fn last_cycle_row(store: &Store) -> Result<i64, RequestError> {
    store
        .connection()
        .query_row("SELECT COALESCE(MAX(id), 0) FROM cycles", [], |row| {
            row.get(0)
        })
        .map_err(sqlite_error(store.path()))
}

/// The first cycle started after row `after`, once it has begun: its id
/// and, once it has finished, its outcome.
pub fn cycle_started_after(
    store: &Store,
    after: i64,
) -> Result<Option<(String, Option<String>)>, RequestError> {
    store
        .connection()
        .query_row(
            "SELECT cycle_id, outcome FROM cycles WHERE id > ?1 ORDER BY id LIMIT 1",
            [after],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(sqlite_error(store.path()))
}

/// Close the unfinished cycles after row `after` as interrupted, saying
/// why. Returns their cycle ids.
pub fn close_unfinished_cycles(
    store: &Store,
    after: i64,
    error: &str,
) -> Result<Vec<String>, RequestError> {
    let err = sqlite_error(store.path());
    let tx = store.connection().unchecked_transaction().map_err(&err)?;
    let ids = {
        let mut stmt = tx
            .prepare(
                "SELECT cycle_id FROM cycles WHERE id > ?1 AND finished_at IS NULL ORDER BY id",
            )
            .map_err(&err)?;
        stmt.query_map([after], |row| row.get::<_, String>(0))
            .map_err(&err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&err)?
    };
    tx.execute(
        "UPDATE cycles SET finished_at = ?2, outcome = 'interrupted', error = ?3
         WHERE id > ?1 AND finished_at IS NULL",
        params![after, now(), error],
    )
    .map_err(&err)?;
    tx.commit().map_err(&err)?;
    Ok(ids)
}

/// How many resync requests wait or run, for `status`.
pub fn open_count(store: &Store) -> Result<u64, RequestError> {
    store
        .connection()
        .query_row(
            "SELECT COUNT(*) FROM resync_requests WHERE finished_at IS NULL",
            [],
            |row| row.get::<_, i64>(0),
        )
        .map(|n| n.max(0) as u64)
        .map_err(sqlite_error(store.path()))
}

/// The ids of `only` that no record of the cycle carried, in the order
/// given.
pub fn unmatched_ids<'a>(only: &'a [String], reported: &HashSet<String>) -> Vec<&'a str> {
    only.iter()
        .filter(|id| !reported.contains(*id))
        .map(String::as_str)
        .collect()
}

/// The error for ids of `--only` that match no record.
pub fn unmatched_message(ids: &[&str]) -> String {
    let shown: Vec<String> = ids
        .iter()
        .map(|id| format!("`{}`", crate::api::cut_text(id, 120)))
        .collect();
    format!(
        "--only: no record in the export has the external id {}",
        shown.join(", ")
    )
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

    fn request(id: i64, only: Option<&[&str]>) -> ResyncRequest {
        ResyncRequest {
            id,
            only: only.map(|ids| ids.iter().map(|s| s.to_string()).collect()),
            requested_by_pid: None,
        }
    }

    fn ids(list: &[&str]) -> Option<HashSet<String>> {
        Some(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn unmatched_ids_are_named_in_the_order_given() {
        let only = ["b".to_owned(), "a".to_owned(), "c\n".to_owned()];
        let reported = HashSet::from(["a".to_owned()]);
        let unmatched = unmatched_ids(&only, &reported);
        assert_eq!(unmatched, ["b", "c\n"]);
        assert_eq!(
            unmatched_message(&unmatched),
            "--only: no record in the export has the external id `b`, `c\\n`"
        );
        assert!(unmatched_ids(&only[1..2], &reported).is_empty());
    }

    #[test]
    fn batches_for_queued_requests() {
        let cases: Vec<(&str, Vec<ResyncRequest>, Vec<ResyncBatch>)> = vec![
            ("nothing queued", vec![], vec![]),
            (
                "one full request",
                vec![request(1, None)],
                vec![ResyncBatch {
                    request_ids: vec![1],
                    only: None,
                }],
            ),
            (
                "a full request answers the targeted ones too",
                vec![
                    request(1, Some(&["a"])),
                    request(2, None),
                    request(3, Some(&["b"])),
                ],
                vec![ResyncBatch {
                    request_ids: vec![1, 2, 3],
                    only: None,
                }],
            ),
            (
                "targeted requests run one by one",
                vec![request(4, Some(&["a", "b"])), request(5, Some(&["c"]))],
                vec![
                    ResyncBatch {
                        request_ids: vec![4],
                        only: ids(&["a", "b"]),
                    },
                    ResyncBatch {
                        request_ids: vec![5],
                        only: ids(&["c"]),
                    },
                ],
            ),
        ];
        for (name, queued, expected) in cases {
            assert_eq!(plan_batches(&queued), expected, "{name}");
        }
    }

    #[test]
    fn a_request_goes_from_queued_to_finished() {
        let (_dir, store) = store();
        let only = vec!["ext-1".to_owned(), "ext-2".to_owned()];
        let id = insert(&store, Some(&only), Some(4242)).unwrap();
        let full = insert(&store, None, None).unwrap();
        assert_eq!(state(&store, id).unwrap(), RequestState::Queued);
        assert_eq!(
            queued(&store).unwrap(),
            vec![
                ResyncRequest {
                    id,
                    only: Some(only),
                    requested_by_pid: Some(4242)
                },
                ResyncRequest {
                    id: full,
                    only: None,
                    requested_by_pid: None
                },
            ]
        );
        mark_started(&store, &[id, full]).unwrap();
        assert_eq!(state(&store, id).unwrap(), RequestState::Running);
        assert!(queued(&store).unwrap().is_empty());
        assert_eq!(open_count(&store).unwrap(), 2);
        let result = ResyncResult {
            outcome: RequestOutcome::Cycle(CycleOutcome::Partial),
            summary: CycleSummary {
                seen: 5,
                updated: 2,
                failed: 1,
                ..CycleSummary::default()
            },
            exit_code: ExitCode::Records,
            error: None,
        };
        finish(&store, &[id, full], &result).unwrap();
        assert_eq!(
            state(&store, id).unwrap(),
            RequestState::Finished(result.clone())
        );
        assert_eq!(state(&store, full).unwrap(), RequestState::Finished(result));
        assert_eq!(open_count(&store).unwrap(), 0);
        assert_eq!(state(&store, 999).unwrap(), RequestState::Missing);
    }

    #[test]
    fn the_summary_column_stays_readable_as_cycle_counts() {
        let (_dir, store) = store();
        let id = insert(&store, None, None).unwrap();
        let result = ResyncResult {
            outcome: RequestOutcome::Cycle(CycleOutcome::Ok),
            summary: CycleSummary {
                seen: 3,
                unchanged: 3,
                ..CycleSummary::default()
            },
            exit_code: ExitCode::Ok,
            error: None,
        };
        finish(&store, &[id], &result).unwrap();
        let text: String = store
            .connection()
            .query_row(
                "SELECT summary FROM resync_requests WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["seen"], json!(3));
        assert_eq!(value["exit_code"], json!(0));
        let counts: CycleSummary = serde_json::from_value(value).unwrap();
        assert_eq!(counts.unchanged, 3);
    }

    #[test]
    fn cancel_only_withdraws_what_nobody_started() {
        let (_dir, store) = store();
        let queued_id = insert(&store, None, None).unwrap();
        let started_id = insert(&store, None, None).unwrap();
        mark_started(&store, &[started_id]).unwrap();
        assert!(cancel_queued(&store, queued_id, "gone").unwrap());
        assert!(!cancel_queued(&store, started_id, "gone").unwrap());
        match state(&store, queued_id).unwrap() {
            RequestState::Finished(r) => {
                assert_eq!(r.outcome, RequestOutcome::Cancelled);
                assert_eq!(r.exit_code, ExitCode::Runtime);
                assert_eq!(r.error.as_deref(), Some("gone"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(state(&store, started_id).unwrap(), RequestState::Running);
    }

    #[test]
    fn abandoned_requests_are_answered_as_failed() {
        let (_dir, store) = store();
        let started = insert(&store, None, None).unwrap();
        let waiting = insert(&store, None, None).unwrap();
        mark_started(&store, &[started]).unwrap();
        assert_eq!(fail_abandoned(&store).unwrap(), 1);
        match state(&store, started).unwrap() {
            RequestState::Finished(r) => {
                assert_eq!(r.outcome.to_string(), "failed");
                assert_eq!(
                    r.error.as_deref(),
                    Some("the daemon stopped before this resync finished")
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(state(&store, waiting).unwrap(), RequestState::Queued);
    }

    #[test]
    fn corrupt_only_ids_name_the_request() {
        let (_dir, store) = store();
        let id = insert(&store, None, None).unwrap();
        store
            .connection()
            .execute(
                "UPDATE resync_requests SET only_ids = 'nope' WHERE id = ?1",
                [id],
            )
            .unwrap();
        let err = queued(&store).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "resync request {id}: only_ids is not a JSON array"
            )),
            "{err}"
        );
    }

    #[test]
    fn unfinished_cycles_after_a_row_are_closed_as_interrupted() {
        let (_dir, store) = store();
        let done = store.begin_cycle("c-done", "schedule", false).unwrap();
        store.finish_cycle(done, "ok", &json!({}), None).unwrap();
        let before = last_cycle_row(&store).unwrap();
        assert_eq!(cycle_started_after(&store, before).unwrap(), None);
        store.begin_cycle("c-open", "resync", false).unwrap();
        assert_eq!(
            cycle_started_after(&store, before).unwrap(),
            Some(("c-open".to_owned(), None))
        );
        let closed = close_unfinished_cycles(&store, 0, "cut off").unwrap();
        assert_eq!(closed, vec!["c-open".to_owned()]);
        let cycles = store.recent_cycles(5).unwrap();
        assert_eq!(cycles[0].outcome.as_deref(), Some("interrupted"));
        assert_eq!(cycles[0].error.as_deref(), Some("cut off"));
        assert_eq!(cycles[1].outcome.as_deref(), Some("ok"));
        assert!(cycles.iter().all(|c| c.finished_at.is_some()));
    }
}
