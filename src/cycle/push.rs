//! The push phase for one record, as a sequence of steps:
//!
//! 1. **resolve** — which referral, and what the plan is made against: the
//!    stored base and eTag, or the live referral (adoption, an unknown base,
//!    a write intent left by a crash, a resync);
//! 2. **plan** — [`merge::plan`], pure;
//! 3. **write** — with `If-Match`, the intent stored first; after a 412 or an
//!    unknown outcome the live referral is read and the plan made again;
//! 4. **settle** — the base Partner Center acknowledged, its eTag and the
//!    CRM's document advance together.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::Mutex as AsyncMutex;
use tracing::{debug, info, warn};

use crate::api::retry::RetrySchedule;
use crate::api::{ApiClient, ApiError, Referral, RequestContext};
use crate::config::{Settings, UpdateMethod};
use crate::diff::{self, DiffOptions, OnCleared, same};
use crate::mapping::{self, MappedRecord};
use crate::merge::{self, ConflictPolicy, MergeOptions, Plan, PlanInput};
use crate::model::{ManagedPaths, Op};
use crate::ownership::{self, Slot, Slots};
use crate::store::{Applied, IntentKind, Store, StoreError, StoredRecord, SyncState, WriteIntent};

use super::mode::{Mode, Poisoned, Recorder};
use super::outcome::{Action, Counters, RecordOutcome};
use super::scan::{TakenUp, WorkReason};

/// Members the service sets; never sent in a PUT body.
const READ_ONLY_MEMBERS: [&str; 5] = [
    "links",
    "eTag",
    "createdDateTime",
    "updatedDateTime",
    "expirationDateTime",
];

/// Members a create needs (the spec's required fields).
const CREATE_REQUIRED: [&str; 4] = ["type", "customerProfile", "consent", "details"];

/// One record taken up by the push phase.
#[derive(Debug, Clone)]
pub struct WorkItem {
    pub mapped: MappedRecord,
    pub hash: String,
    pub reason: WorkReason,
    /// Written with the record when it settles (see [`TakenUp`]).
    pub fingerprint: Option<[u8; 16]>,
}

impl From<TakenUp> for WorkItem {
    fn from(taken: TakenUp) -> WorkItem {
        WorkItem {
            mapped: taken.mapped,
            hash: taken.hash.to_hex(),
            reason: taken.reason,
            fingerprint: taken.fingerprint,
        }
    }
}

/// `externalReferenceId -> id`, built once per cycle, lazily, by paging
/// the referral list (filtering by externalReferenceId is undocumented).
#[derive(Default)]
pub struct ReferralIndex {
    entries: AsyncMutex<Option<IndexListing>>,
}

/// The referral list as one cycle read it.
struct Listing {
    /// `externalReferenceId -> ids` (more than one id is ambiguous).
    ids: HashMap<String, Vec<String>>,
    /// When the listing started: a referral created before then is in it,
    /// as far as the list is consistent.
    started_at: DateTime<Utc>,
}

type IndexListing = Result<Listing, String>;

/// What the index says of one external id.
enum Indexed {
    Found(String),
    /// No referral carries the id in a listing that started at this time.
    Absent(DateTime<Utc>),
}

impl ReferralIndex {
    /// Build the index now (a resync rebuilds it whether or not a record
    /// needs it). A failure is kept and reported by the records that need
    /// the index.
    pub async fn build(&self, pusher: &Pusher) {
        *self.entries.lock().await = Some(pusher.build_index().await);
    }

    /// The referral carrying `external_id`. An id carried by several
    /// referrals fails its record; a list that cannot be read stops the
    /// push phase, since every record that needs it would fail the same way.
    async fn lookup(&self, pusher: &Pusher, external_id: &str) -> Result<Indexed, Stop> {
        let mut entries = self.entries.lock().await;
        if entries.is_none() {
            *entries = Some(pusher.build_index().await);
        }
        match entries.as_ref() {
            Some(Ok(listing)) => match listing.ids.get(external_id).map(Vec::as_slice) {
                None | Some([]) => Ok(Indexed::Absent(listing.started_at)),
                Some([one]) => Ok(Indexed::Found(one.clone())),
                Some(many) => Err(Stop::failed(
                    None,
                    format!(
                        "{} referrals carry externalReferenceId {external_id}: {}; set the referral id in the export (mapping.referral_id_column)",
                        many.len(),
                        many.join(", ")
                    ),
                )),
            },
            Some(Err(e)) => Err(Stop::Halt {
                message: e.clone(),
                status: None,
            }),
            None => Ok(Indexed::Absent(Utc::now())),
        }
    }
}

/// Shared by the workers of one cycle.
pub struct Pusher {
    pub settings: Arc<Settings>,
    pub managed: ManagedPaths,
    /// Read from here; every write goes through `recorder`.
    pub store: Arc<Mutex<Store>>,
    pub mode: Mode,
    pub recorder: Recorder,
    pub index: ReferralIndex,
    pub correlation_id: uuid::Uuid,
    /// The cycle's counters: the push phase adds its retries and
    /// conflict rounds.
    pub counters: Arc<Counters>,
    /// Set when a failure no record can get past (credentials refused, the
    /// referral list unreadable, the store failing) stops the push phase:
    /// records not taken up yet stay as they were, rather than each failing
    /// the same way.
    pub halted: OnceLock<String>,
    /// Set when the store failed: the cycle ends as "the store failed".
    pub store_failed: OnceLock<String>,
    /// Referral ids taken from the export's referral id column this cycle,
    /// with the record that claimed each: one referral, one record.
    pub claims: Mutex<HashMap<String, String>>,
}

/// Why a record stopped.
enum Stop {
    Failed {
        referral_id: Option<String>,
        message: String,
        status: Option<u16>,
        code: Option<String>,
        /// The service refused a write outright: it was not applied, and
        /// its intent goes.
        refused: bool,
    },
    Store(StoreError),
    /// A failure that every record would meet: the push phase stops. Nothing
    /// more is recorded for the record: its row stays as it is, `pending`
    /// with its intent if a write was started, else as the last settled
    /// state.
    Halt {
        message: String,
        status: Option<u16>,
    },
}

impl Stop {
    fn failed(referral_id: Option<&str>, message: String) -> Stop {
        Stop::answered(referral_id, message, None, None)
    }

    /// A failure with the service's answer, not yet known to be a refusal
    /// of the write ([`refused`]).
    fn answered(
        referral_id: Option<&str>,
        message: String,
        status: Option<u16>,
        code: Option<String>,
    ) -> Stop {
        Stop::Failed {
            referral_id: referral_id.map(str::to_owned),
            message,
            status,
            code,
            refused: false,
        }
    }
}

impl From<Poisoned> for Stop {
    fn from(_: Poisoned) -> Self {
        Stop::Halt {
            message: "internal error: the store lock was poisoned".into(),
            status: None,
        }
    }
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Store(e)
    }
}

/// A record's failure, as [`Pusher::record_failure`] keeps it.
#[derive(Clone, Copy)]
struct Failure<'a> {
    referral_id: Option<&'a str>,
    message: &'a str,
    status: Option<u16>,
    code: Option<&'a str>,
    refused: bool,
}

/// What a plan is made against (step 1's result).
struct Footing {
    referral_id: String,
    /// The eTag `base` (or `live`) goes with: the `If-Match` of the write.
    etag: String,
    /// What Partner Center acknowledged at the last sync, projected.
    base: Value,
    /// The CRM's document at the last sync; `None` when adopting.
    before: Option<Value>,
    /// The live referral, when it was read.
    live: Option<Value>,
    /// The CRM's status was refused at the last sync.
    status_refused: bool,
}

/// Where resolving a record leads.
enum Resolved {
    Plan(Footing),
    Create,
    /// Nothing can be done this cycle; the outcome says why.
    Done(RecordOutcome),
}

impl Pusher {
    /// Stop the push phase for `reason`; the first reason is kept.
    fn halt(&self, reason: &str) {
        if self.halted.set(reason.to_owned()).is_ok() {
            tracing::error!(
                correlation_id = %self.correlation_id,
                error = %reason,
                "push phase stopped: no record can be synced; records not reached stay as they were"
            );
        }
    }

    /// Why the push phase stopped, if it did.
    pub fn halted(&self) -> Option<&str> {
        self.halted.get().map(String::as_str)
    }

    /// Why the store failed, if it did.
    pub fn store_failed(&self) -> Option<&str> {
        self.store_failed.get().map(String::as_str)
    }

    fn ctx(&self, external_id: &str) -> RequestContext {
        RequestContext {
            correlation_id: self.correlation_id,
            external_id: Some(external_id.to_owned()),
        }
    }

    /// The store to read; writes go through `self.recorder`.
    fn store(&self) -> Result<std::sync::MutexGuard<'_, Store>, Stop> {
        self.store.lock().map_err(|_| Stop::from(Poisoned))
    }

    /// Add an event to the record's history (a plan writes none).
    fn event(&self, external_id: &str, kind: &str, detail: Value) -> Result<(), Stop> {
        self.recorder
            .write(|store| self.event_in(store, external_id, kind, detail))
    }

    /// Add an event to the record's history in `store`, as part of a
    /// larger write.
    fn event_in(
        &self,
        store: &Store,
        external_id: &str,
        kind: &str,
        mut detail: Value,
    ) -> Result<(), Stop> {
        let cycle_id = self.correlation_id.to_string();
        bound_strings(&mut detail);
        store.record_event(external_id, Some(&cycle_id), kind, &detail)?;
        Ok(())
    }

    /// The record settled as `applied`, with the events `held` back for it
    /// and the `settled` event, in one transaction.
    fn write_settled(
        &self,
        ext: &str,
        applied: &Applied<'_>,
        held: Held,
        settled: Value,
    ) -> Result<(), Stop> {
        self.recorder.write(|store| {
            store.together(|store| {
                self.events_in(store, ext, held)?;
                store.record_applied(ext, applied)?;
                self.event_in(store, ext, "settled", settled)
            })
        })
    }

    /// Events held back to go into the record's next write.
    fn events_in(&self, store: &Store, external_id: &str, events: Held) -> Result<(), Stop> {
        for (kind, detail) in events {
            self.event_in(store, external_id, kind, detail)?;
        }
        Ok(())
    }

    fn merge_options(&self, item: &WorkItem, adopting: bool) -> MergeOptions {
        MergeOptions {
            diff: DiffOptions {
                // Adopting a referral someone else filled in: an empty CRM
                // column is no reason to clear what is there.
                on_cleared: if adopting {
                    OnCleared::Skip
                } else {
                    self.settings.sync.on_cleared
                },
            },
            conflict: self.settings.sync.conflict,
            mode: if item.reason == WorkReason::Resync {
                merge::Mode::Resync
            } else {
                merge::Mode::Sync
            },
        }
    }

    /// Page through the referral list once; the store keeps a copy.
    async fn build_index(&self) -> Result<Listing, String> {
        let Some(client) = self.mode.client() else {
            return Err("no credentials configured (offline)".into());
        };
        let ctx = RequestContext {
            correlation_id: self.correlation_id,
            external_id: None,
        };
        let started_at = Utc::now();
        let mut ids: HashMap<String, Vec<String>> = HashMap::new();
        let count = client
            .list(&ctx, |page: Vec<Value>| {
                for referral in page {
                    let ext = referral
                        .get("externalReferenceId")
                        .and_then(Value::as_str)
                        .map(mapping::normalise_external_id);
                    let id = referral.get("id").and_then(Value::as_str);
                    if let (Some(ext), Some(id)) = (ext, id)
                        && !ext.is_empty()
                    {
                        let entry = ids.entry(ext).or_default();
                        // A referral listed twice (pages shifting under the
                        // listing) is one referral.
                        if !entry.iter().any(|known| known.eq_ignore_ascii_case(id)) {
                            entry.push(id.to_owned());
                        }
                    }
                }
            })
            .await
            .map_err(|e| format!("listing referrals to resolve external ids failed: {e}"))?;
        info!(correlation_id = %self.correlation_id, referrals = count, indexed = ids.len(), "referral index built");
        let saved = self.recorder.write(|store| {
            let entries: Vec<(String, String)> = ids
                .iter()
                .filter(|(_, ids)| ids.len() == 1)
                .map(|(ext, ids)| (ext.clone(), ids[0].clone()))
                .collect();
            store.replace_index(&entries).map_err(Stop::from)
        });
        // A poisoned lock leaves the copy as it was: the index itself is in
        // hand.
        if let Err(Stop::Store(e)) = saved {
            warn!(error = %e, "could not save the referral index");
        }
        Ok(Listing { ids, started_at })
    }

    /// Plan and push one record; never panics, never returns early without
    /// an outcome.
    pub async fn sync_record(&self, item: WorkItem) -> RecordOutcome {
        let external_id = item.mapped.external_id.clone();
        match self.sync_record_inner(&item).await {
            Ok(outcome) => outcome,
            Err(stop) => self.stopped(&external_id, &item.hash, stop),
        }
    }

    /// Record and report why a record stopped.
    fn stopped(&self, external_id: &str, hash: &str, stop: Stop) -> RecordOutcome {
        let mut outcome = RecordOutcome::new(Some(external_id.to_owned()), Action::Failed);
        match stop {
            Stop::Failed {
                referral_id,
                message,
                status,
                code,
                refused,
            } => {
                warn!(
                    correlation_id = %self.correlation_id,
                    external_id = %external_id,
                    referral_id = referral_id.as_deref().unwrap_or(""),
                    status = status.map(u64::from),
                    code = code.as_deref().unwrap_or(""),
                    error = %message,
                    "record failed"
                );
                let failure = Failure {
                    referral_id: referral_id.as_deref(),
                    message: &message,
                    status,
                    code: code.as_deref(),
                    refused,
                };
                outcome.note = self.keep_failure(external_id, hash, &failure);
                outcome.referral_id = referral_id;
                outcome.errors.push(message);
            }
            Stop::Store(e) => {
                self.fail_store(external_id, &e);
                outcome.errors.push(e.to_string());
            }
            Stop::Halt { message, status } => {
                warn!(
                    correlation_id = %self.correlation_id,
                    external_id = %external_id,
                    status = status.map(u64::from),
                    error = %message,
                    "record not synced: the push phase stops"
                );
                self.halt(&message);
                outcome.errors.push(message);
            }
        }
        outcome
    }

    /// [`record_failure`](Self::record_failure), counting a held record;
    /// returns its note. A store that fails here stops the push phase.
    fn keep_failure(&self, external_id: &str, hash: &str, failure: &Failure<'_>) -> Option<String> {
        let kept = self
            .recorder
            .write(|store| self.record_failure(store, external_id, hash, failure));
        match kept {
            Ok(held) => {
                if held.is_some() {
                    Counters::add(&self.counters.held, 1);
                }
                held
            }
            Err(Stop::Store(e)) => {
                self.fail_store(external_id, &e);
                None
            }
            Err(Stop::Halt { message, .. } | Stop::Failed { message, .. }) => {
                self.halt(&message);
                None
            }
        }
    }

    /// Keep a record's failure in its history and its row: held when the
    /// service refused the write for good ([`refused_for_good`]), failed
    /// with its intent gone when it refused it otherwise, else failed (and
    /// still `pending` if an intent is outstanding). Returns the note of a
    /// held record.
    fn record_failure(
        &self,
        store: &Store,
        external_id: &str,
        hash: &str,
        failure: &Failure<'_>,
    ) -> Result<Option<String>, Stop> {
        let Failure {
            referral_id,
            message,
            status,
            code,
            refused,
        } = *failure;
        let cycle_id = self.correlation_id.to_string();
        let mut detail = serde_json::json!({
            "referralId": referral_id, "status": status, "code": code,
            "error": message, "writeRefused": refused,
        });
        bound_strings(&mut detail);
        store.record_event(external_id, Some(&cycle_id), "failed", &detail)?;
        if !(refused && status.is_some_and(refused_for_good)) {
            if refused {
                store.record_refused(external_id, referral_id, message)?;
            } else {
                store.record_failed(external_id, referral_id, message)?;
            }
            return Ok(None);
        }
        let gone = status == Some(404);
        let held = serde_json::json!({
            "status": status, "code": code, "message": message, "referralGone": gone,
        });
        let why = if gone {
            let creates = if self.settings.sync.create_missing {
                " and creates it"
            } else {
                ""
            };
            format!(
                "held: the referral is gone ({message}); `referral-sync retry {external_id}` looks it up again{creates}"
            )
        } else {
            format!(
                "held: {message}; tried again when the record changes, on a resync or on `referral-sync retry {external_id}`"
            )
        };
        store.record_held(external_id, referral_id, hash, &held, &why)?;
        Ok(Some(format!(
            "held: not retried until the record changes, a resync, or `referral-sync retry {external_id}`"
        )))
    }

    /// The store failed: no new record is taken up, records in flight
    /// finish, and the cycle ends as "the store failed".
    fn fail_store(&self, external_id: &str, error: &StoreError) {
        let reason = format!("the store failed: {error}");
        if self.store_failed.set(reason.clone()).is_ok() {
            tracing::error!(
                correlation_id = %self.correlation_id,
                external_id,
                error = %error,
                "the store failed; no further record is taken up"
            );
        }
        let _ = self.halted.set(reason);
    }

    async fn sync_record_inner(&self, item: &WorkItem) -> Result<RecordOutcome, Stop> {
        let stored = self.store()?.record(&item.mapped.external_id)?;
        match self.resolve(item, stored.as_ref()).await? {
            Resolved::Done(outcome) => Ok(outcome),
            Resolved::Create => self.create(item).await,
            Resolved::Plan(footing) => {
                let adopting = footing.before.is_none();
                let plan = self.plan(item, &footing, adopting);
                let mut writing = Writing::new(footing, plan);
                match self.mode.writer() {
                    Some(client) => self.write(client, item, writing).await,
                    None => {
                        writing.sent_all();
                        Ok(writing.outcome(&item.mapped.external_id).0)
                    }
                }
            }
        }
    }

    // -- step 1: resolve -----------------------------------------------------

    /// Which referral the record is, and what to plan against.
    async fn resolve(
        &self,
        item: &WorkItem,
        stored: Option<&StoredRecord>,
    ) -> Result<Resolved, Stop> {
        let ext = item.mapped.external_id.as_str();
        if let Some(rec) = stored
            && let Some(referral_id) = &rec.referral_id
        {
            return self.resolve_known(item, rec, referral_id).await;
        }
        if let Some(intent) = stored.and_then(|r| r.intent.as_ref())
            && intent.kind == IntentKind::Create
        {
            return self.resolve_lost_create(item, intent).await;
        }
        if let Some(referral_id) = &item.mapped.referral_id {
            return self.resolve_claimed(item, referral_id).await;
        }
        let Some(client) = self.mode.client() else {
            let indexed = self.store()?.index_lookup(ext)?;
            return Ok(match indexed {
                Some(referral_id) => Resolved::Done(offline_note(ext, Some(referral_id))),
                None => Resolved::Create,
            });
        };
        match self.index.lookup(self, ext).await? {
            Indexed::Found(referral_id) => {
                let live = self.get_live(client, ext, &referral_id).await?;
                self.event(ext, "adopted", serde_json::json!({"referralId": referral_id, "eTag": live.etag, "how": "the referral list shows its externalReferenceId"}))?;
                Ok(Resolved::Plan(adopt(live, &self.managed)))
            }
            Indexed::Absent(_) => Ok(Resolved::Create),
        }
    }

    /// A referral the store binds the record to.
    async fn resolve_known(
        &self,
        item: &WorkItem,
        rec: &StoredRecord,
        referral_id: &str,
    ) -> Result<Resolved, Stop> {
        let ext = item.mapped.external_id.as_str();
        let trusted = rec.intent.is_none()
            && rec.state != SyncState::Pending
            && item.reason != WorkReason::Resync;
        if trusted && let (Some(etag), Some(base)) = (&rec.etag, &rec.base) {
            return Ok(Resolved::Plan(Footing {
                referral_id: referral_id.to_owned(),
                etag: etag.clone(),
                base: base.clone(),
                before: rec.snapshot.clone(),
                live: None,
                status_refused: refused_status(rec),
            }));
        }
        // An unknown base (a 204, a store from an older release), an
        // unsettled write, or a resync: read the live referral.
        let Some(client) = self.mode.client() else {
            return Ok(Resolved::Done(offline_note(
                ext,
                Some(referral_id.to_owned()),
            )));
        };
        let live = self.get_live(client, ext, referral_id).await?;
        let mut footing = Footing {
            referral_id: referral_id.to_owned(),
            etag: live.etag.clone(),
            base: rec
                .base
                .clone()
                .unwrap_or_else(|| ownership::project(&live.document, &self.managed)),
            before: rec.snapshot.clone(),
            live: Some(live.document.clone()),
            status_refused: refused_status(rec),
        };
        if let Some(intent) = &rec.intent {
            self.recover(ext, intent, &mut footing, &live)?;
        }
        Ok(Resolved::Plan(footing))
    }

    /// A create whose answer was lost: adopt the referral once a listing
    /// shows it; create again only when a listing made long enough after
    /// the create shows none.
    async fn resolve_lost_create(
        &self,
        item: &WorkItem,
        intent: &WriteIntent,
    ) -> Result<Resolved, Stop> {
        let ext = item.mapped.external_id.as_str();
        let Some(client) = self.mode.client() else {
            return Ok(Resolved::Done(offline_note(ext, None)));
        };
        match self.index.lookup(self, ext).await? {
            Indexed::Found(referral_id) => {
                let live = self.get_live(client, ext, &referral_id).await?;
                info!(correlation_id = %self.correlation_id, external_id = ext, referral_id = %referral_id, "the create whose answer was lost took effect; adopting its referral");
                self.event(ext, "adopted", serde_json::json!({"referralId": referral_id, "eTag": live.etag, "how": "the create whose answer was lost took effect"}))?;
                let mut footing = adopt(live, &self.managed);
                footing.before = Some(intent.desired.clone());
                Ok(Resolved::Plan(footing))
            }
            Indexed::Absent(listed_at) => {
                let started = DateTime::parse_from_rfc3339(&intent.started_at)
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or(listed_at);
                let wait = chrono::Duration::seconds(
                    i64::try_from(self.settings.sync.create_confirm_secs).unwrap_or(i64::MAX),
                );
                let confirmed_at = started.checked_add_signed(wait).unwrap_or(started);
                if listed_at >= confirmed_at {
                    info!(correlation_id = %self.correlation_id, external_id = ext, "no referral appeared for the create whose answer was lost; creating again");
                    self.event(ext, "create confirmed lost", serde_json::json!({"createdAt": intent.started_at, "listedAt": listed_at.to_rfc3339()}))?;
                    return Ok(Resolved::Create);
                }
                let mut outcome = RecordOutcome::new(Some(ext.to_owned()), Action::Failed);
                outcome.errors.push(format!(
                    "create outcome unknown since {}: held until a listing made after {} (sync.create_confirm_secs = {}) shows no referral with this externalReferenceId",
                    intent.started_at,
                    confirmed_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    self.settings.sync.create_confirm_secs
                ));
                self.event(
                    ext,
                    "held",
                    serde_json::json!({"reason": outcome.errors[0]}),
                )?;
                Ok(Resolved::Done(outcome))
            }
        }
    }

    /// A referral id from the export's referral id column: used only once
    /// the live referral shows it is this record's (or nobody's).
    async fn resolve_claimed(&self, item: &WorkItem, referral_id: &str) -> Result<Resolved, Stop> {
        let ext = item.mapped.external_id.as_str();
        if let Some(other) = self.store()?.record_of_referral(referral_id)?
            && other != ext
        {
            return Err(Stop::failed(
                Some(referral_id),
                format!(
                    "the export gives referral {referral_id}, which record {other} is synced to; a record is bound to a referral only by its externalReferenceId (a copied CRM row?)"
                ),
            ));
        }
        {
            let mut claims = self
                .claims
                .lock()
                .map_err(|_| Stop::failed(None, "internal error: claims lock poisoned".into()))?;
            match claims.get(referral_id) {
                Some(other) if other != ext => {
                    return Err(Stop::failed(
                        Some(referral_id),
                        format!(
                            "records {other} and {ext} both give referral {referral_id} in the export; neither is sent"
                        ),
                    ));
                }
                _ => {
                    claims.insert(referral_id.to_owned(), ext.to_owned());
                }
            }
        }
        let Some(client) = self.mode.client() else {
            return Ok(Resolved::Done(offline_note(
                ext,
                Some(referral_id.to_owned()),
            )));
        };
        let live = self.get_live(client, ext, referral_id).await?;
        let carried = live
            .document
            .get("externalReferenceId")
            .and_then(Value::as_str)
            .map(mapping::normalise_external_id)
            .unwrap_or_default();
        if !carried.is_empty() && carried != ext {
            return Err(Stop::failed(
                Some(referral_id),
                format!(
                    "the export gives referral {referral_id}, but that referral carries externalReferenceId {carried}, another record's; it is not touched"
                ),
            ));
        }
        self.event(ext, "adopted", serde_json::json!({"referralId": referral_id, "eTag": live.etag, "how": "the export's referral id column, verified against the live referral"}))?;
        Ok(Resolved::Plan(adopt(live, &self.managed)))
    }

    /// Settle a write intent left by a crash or an unknown outcome against
    /// the live referral ([`settle_intent`]) and say so in the history:
    /// when the write was applied, the base is what it made of the referral
    /// and the CRM document it carried is the last sync's; when not, the
    /// base and CRM document its plan was made with stand again (they may
    /// hold an earlier write this store never saw acknowledged); when only
    /// some slots hold the value written, those slots are synced and the
    /// others stand as the plan found them ([`settle_in_part`]). Returns
    /// whether it was applied whole.
    fn recover(
        &self,
        ext: &str,
        intent: &WriteIntent,
        footing: &mut Footing,
        live: &Referral,
    ) -> Result<bool, Stop> {
        let settle = settle_intent(intent, live, &self.managed);
        match &settle {
            IntentSettle::Applied => {
                footing.base = applied_base(&intent.against, &intent.ops, &self.managed)
                    .unwrap_or_else(|| ownership::project(&live.document, &self.managed));
                footing.before = Some(intent.desired.clone());
            }
            IntentSettle::NotApplied => {
                if let Some(base) = &intent.base {
                    footing.base = base.clone();
                    footing.before = intent.before.clone();
                }
            }
            IntentSettle::Partly { held } => {
                let (base, before) = match &intent.base {
                    Some(base) => (base, intent.before.as_ref()),
                    None => (&footing.base, footing.before.as_ref()),
                };
                let (base, before) =
                    settle_in_part(base, before, &intent.desired, held, &self.managed);
                footing.base = base;
                footing.before = Some(before);
            }
        }
        let applied = settle == IntentSettle::Applied;
        info!(
            correlation_id = %self.correlation_id,
            external_id = ext,
            referral_id = %footing.referral_id,
            applied,
            slots_held = match &settle {
                IntentSettle::Applied => intent.targets.len(),
                IntentSettle::NotApplied => 0,
                IntentSettle::Partly { held } => held.len(),
            },
            slots_set = intent.targets.len(),
            ops = intent.ops.len(),
            "settled the write whose outcome was unknown against the live referral"
        );
        self.event(ext, "intent settled", intent_event(intent, &settle, live))?;
        Ok(applied)
    }

    async fn get_live(
        &self,
        client: &ApiClient,
        external_id: &str,
        referral_id: &str,
    ) -> Result<Referral, Stop> {
        client
            .get(&self.ctx(external_id), referral_id)
            .await
            .map_err(|e| match api_stop(Some(referral_id), &e) {
                // The referral was deleted: the record is held, not retried
                // every cycle.
                stop @ Stop::Failed {
                    status: Some(404), ..
                } => refused(stop),
                stop => stop,
            })
    }

    // -- step 2: plan --------------------------------------------------------

    fn plan(&self, item: &WorkItem, footing: &Footing, adopting: bool) -> Plan {
        let plan = merge::plan(&PlanInput {
            crm: &item.mapped.document,
            before: footing.before.as_ref(),
            base: &footing.base,
            live: footing.live.as_ref(),
            managed: &self.managed,
            options: self.merge_options(item, adopting),
            status_refused: footing.status_refused,
        });
        let ext = item.mapped.external_id.as_str();
        log_conflicts(self.correlation_id, ext, &plan.conflicts);
        log_drift(self.correlation_id, ext, &plan.drift);
        for element in &plan.left_in_place {
            info!(correlation_id = %self.correlation_id, external_id = ext, element = %element, "the CRM no longer has this list element; left in Partner Center (there is no remove)");
        }
        plan
    }

    // -- create --------------------------------------------------------------

    /// A referral for a record none is known for: what it would be, and,
    /// when the cycle writes, sent.
    async fn create(&self, item: &WorkItem) -> Result<RecordOutcome, Stop> {
        if !self.settings.sync.create_missing {
            return self.not_created(item);
        }
        let body = self.create_body(&item.mapped.document);
        if let Some(outcome) = self.incomplete(item, &body)? {
            return Ok(outcome);
        }
        let mut outcome = RecordOutcome::new(Some(item.mapped.external_id.clone()), Action::Create);
        outcome.document = Some(body.clone());
        match self.mode.writer() {
            Some(client) => self.send_create(client, item, &body, outcome).await,
            None => Ok(outcome),
        }
    }

    /// Creation is off: the record stays unresolved.
    fn not_created(&self, item: &WorkItem) -> Result<RecordOutcome, Stop> {
        let ext = item.mapped.external_id.as_str();
        let mut outcome = RecordOutcome::new(Some(ext.to_owned()), Action::Unresolved);
        outcome.errors.push(format!(
            "no referral with externalReferenceId {ext} is known (store, {}index); creation is off (sync.create_missing = false)",
            if item.mapped.referral_id.is_none() { "referral id column, " } else { "" }
        ));
        self.recorder.write(|store| {
            store
                .record_failed(ext, None, &outcome.errors[0])
                .map_err(Stop::from)
        })?;
        Ok(outcome)
    }

    /// The outcome of a create `body` that lacks a required member, if it
    /// does.
    fn incomplete(&self, item: &WorkItem, body: &Value) -> Result<Option<RecordOutcome>, Stop> {
        let missing: Vec<&str> = CREATE_REQUIRED
            .iter()
            .copied()
            .filter(|k| body.get(*k).is_none_or(Value::is_null))
            .collect();
        if missing.is_empty() {
            return Ok(None);
        }
        let ext = item.mapped.external_id.as_str();
        let mut outcome = RecordOutcome::new(Some(ext.to_owned()), Action::Invalid);
        outcome.errors.push(format!(
            "cannot create a referral: required member(s) {} have no value in the record",
            missing.join(", ")
        ));
        self.recorder.write(|store| {
            store
                .record_invalid(ext, None, &item.hash, &outcome.errors[0])
                .map_err(Stop::from)
        })?;
        Ok(Some(outcome))
    }

    /// POST `body`, its intent stored first, and settle what came back.
    async fn send_create(
        &self,
        client: &ApiClient,
        item: &WorkItem,
        body: &Value,
        mut outcome: RecordOutcome,
    ) -> Result<RecordOutcome, Stop> {
        let ext = item.mapped.external_id.as_str();
        let intent = WriteIntent {
            kind: IntentKind::Create,
            etag: None,
            ops: Vec::new(),
            targets: Vec::new(),
            against: Value::Null,
            base: None,
            before: None,
            desired: item.mapped.document.clone(),
            desired_hash: item.hash.clone(),
            started_at: now_rfc3339(),
        };
        self.recorder
            .write(|store| store.begin_write(ext, None, &intent).map_err(Stop::from))?;
        let result = client.create(&self.ctx(ext), body).await;
        let sent = sent_event("POST", None, None, &[], &result.as_ref().map(Some));
        match result {
            // Acknowledged: the sending and the settling go in together.
            Ok(referral) => {
                self.created(item, &referral, vec![("sent", sent)])?;
                outcome.referral_id = Some(referral.id);
                Ok(outcome)
            }
            Err(error) => {
                self.event(ext, "sent", sent)?;
                match error {
                    ApiError::OutcomeUnknown { reason, .. } => self.create_unknown(ext, &reason),
                    e => Err(refused(api_stop(None, &e))),
                }
            }
        }
    }

    /// Settle a create Partner Center acknowledged, with the events `held`
    /// back for it, in one write.
    fn created(&self, item: &WorkItem, referral: &Referral, held: Held) -> Result<(), Stop> {
        let ext = item.mapped.external_id.as_str();
        // The answer is the base: the service may have set another status
        // than the one sent.
        let base = ownership::project(&referral.document, &self.managed);
        let applied = Applied {
            referral_id: &referral.id,
            etag: Some(&referral.etag),
            base: Some(&base),
            snapshot: &item.mapped.document,
            refused: &[],
            desired_hash: &item.hash,
            fingerprint: item.fingerprint.as_ref(),
            state: SyncState::Synced,
            error: None,
        };
        let settled = serde_json::json!({"referralId": referral.id, "eTag": referral.etag, "state": "synced", "created": true});
        self.write_settled(ext, &applied, held, settled)?;
        debug!(correlation_id = %self.correlation_id, external_id = ext, referral_id = %referral.id, "referral created");
        Ok(())
    }

    /// The create may have taken effect. The record stays `pending` with
    /// its intent: later cycles look for the referral before creating
    /// again.
    fn create_unknown(&self, ext: &str, reason: &str) -> Result<RecordOutcome, Stop> {
        Counters::add(&self.counters.retried, 1);
        let message = format!(
            "create: outcome unknown ({reason}); later listings look for the referral, and it is created again only if none shows up {} s after this attempt (sync.create_confirm_secs)",
            self.settings.sync.create_confirm_secs
        );
        warn!(correlation_id = %self.correlation_id, external_id = ext, error = %message, "record pending");
        self.recorder
            .write(|store| store.record_failed(ext, None, &message).map_err(Stop::from))?;
        let mut outcome = RecordOutcome::new(Some(ext.to_owned()), Action::Failed);
        outcome.errors.push(message);
        Ok(outcome)
    }

    /// The create body: the desired document plus the creation defaults
    /// (`[create]`) for every member the record leaves out, which are sent
    /// only here.
    fn create_body(&self, desired: &Value) -> Value {
        let mut body = desired.clone();
        crate::create_defaults::apply(&self.settings.create_defaults, &mut body);
        body
    }

    // -- steps 3 and 4: write and settle ---------------------------------------

    /// Count one round of the referral changing under us (a 412, or a
    /// PUT's read finding a new eTag); past the limit the record fails.
    fn conflict_round(&self, rounds: &mut u32, referral_id: &str) -> Result<(), Stop> {
        *rounds += 1;
        Counters::add(&self.counters.conflicts, 1);
        let limit = self.settings.sync.max_conflict_retries;
        if *rounds > limit {
            return Err(Stop::answered(
                Some(referral_id),
                format!(
                    "412 Precondition Failed (or a new eTag read before a PUT) {rounds} times: the referral keeps changing (sync.max_conflict_retries = {limit})"
                ),
                Some(412),
                Some("preconditionFailed".into()),
            ));
        }
        Ok(())
    }

    /// Take in the live referral after a 412 or an unknown outcome, plan
    /// again against it, record the plan in the history, and keep its
    /// conflicts and drift with those of earlier rounds (one per path).
    fn replan(&self, item: &WorkItem, writing: &mut Writing, live: Referral) -> Result<(), Stop> {
        let footing = &mut writing.footing;
        footing.etag = live.etag;
        footing.live = Some(live.document);
        let adopting = footing.before.is_none();
        let mut plan = self.plan(item, footing, adopting);
        let ext = item.mapped.external_id.as_str();
        debug!(
            external_id = ext,
            ops = plan.ops.len(),
            already_applied = plan.already_applied,
            "re-planned against the live referral"
        );
        self.event(
            ext,
            "replanned",
            plan_event(footing, &plan, &plan.conflicts, &plan.drift),
        )?;
        keep_latest(&mut writing.conflicts, std::mem::take(&mut plan.conflicts));
        keep_latest_drift(&mut writing.drift, std::mem::take(&mut plan.drift));
        writing.plan = plan;
        Ok(())
    }

    /// The write intent for `plan` against `footing`.
    fn intent(&self, item: &WorkItem, footing: &Footing, plan: &Plan) -> WriteIntent {
        let against = footing.live.as_ref().unwrap_or(&footing.base);
        WriteIntent {
            kind: IntentKind::Update,
            etag: Some(footing.etag.clone()),
            ops: plan.ops.clone(),
            targets: plan.targets.clone(),
            against: ownership::project(against, &self.managed),
            base: Some(footing.base.clone()),
            before: footing.before.clone(),
            desired: item.mapped.document.clone(),
            desired_hash: item.hash.clone(),
            started_at: now_rfc3339(),
        }
    }

    /// Send the plan, merging again after a 412 or an unknown outcome,
    /// until acknowledged or out of attempts; then settle.
    async fn write(
        &self,
        client: &ApiClient,
        item: &WorkItem,
        mut writing: Writing,
    ) -> Result<RecordOutcome, Stop> {
        // The plan goes into the record's next write: its intent, or its
        // settling when there is nothing to send.
        let planned = plan_event(
            &writing.footing,
            &writing.plan,
            &writing.conflicts,
            &writing.drift,
        );
        writing.held.push(("planned", planned));
        let mut unknown = RetrySchedule::new(&self.settings.api.retry);
        let settled = loop {
            let round = self.write_round(client, item, &mut writing, &mut unknown);
            if let Some(settled) = round.await? {
                break settled;
            }
        };
        self.settle(item, writing, settled)
    }

    /// One round of a write: the intent stored, the request sent, its
    /// answer taken in. `None` when the plan was made again (the referral
    /// changed, or the outcome is unknown) and another round goes.
    async fn write_round(
        &self,
        client: &ApiClient,
        item: &WorkItem,
        writing: &mut Writing,
        unknown: &mut RetrySchedule,
    ) -> Result<Option<Settled>, Stop> {
        let ext = item.mapped.external_id.as_str();
        if writing.plan.ops.is_empty() {
            return Ok(Some(writing.holds(&self.managed)));
        }
        let intent = self.intent(item, &writing.footing, &writing.plan);
        let referral_id = writing.footing.referral_id.clone();
        let held = std::mem::take(&mut writing.held);
        self.recorder.write(|store| {
            store.together(|store| {
                self.events_in(store, ext, held)?;
                store
                    .begin_write(ext, Some(&referral_id), &intent)
                    .map_err(Stop::from)
            })
        })?;
        let method = self.settings.api.update_method;
        let Some(result) = self.send(client, item, writing, method).await? else {
            return Ok(None);
        };
        let sent = sent_event(
            method_name(method),
            Some(&referral_id),
            Some(&writing.footing.etag),
            &writing.plan.ops,
            &result.as_ref().map(Option::as_ref),
        );
        // An acknowledgement is settled next, with no wait between: the
        // sending goes into that write. Any other answer is kept now.
        if result.is_ok() {
            writing.held.push(("sent", sent));
        } else {
            self.event(ext, "sent", sent)?;
        }
        match result {
            Ok(Some(referral)) => {
                writing.sent_all();
                let base = ownership::project(&referral.document, &self.managed);
                Ok(Some(Settled {
                    etag: Some(referral.etag),
                    base: Some(base),
                }))
            }
            Ok(None) => {
                // A 204 (the service ignored `Prefer`): the ops were
                // taken, but neither the representation nor the eTag came
                // back. The base is what the ops made of what they were
                // planned against; with no eTag the next plan reads the
                // live referral before it sends anything.
                writing.sent_all();
                Ok(Some(Settled {
                    etag: None,
                    base: applied_base(&intent.against, &writing.plan.ops, &self.managed),
                }))
            }
            Err(ApiError::PreconditionFailed { .. }) => {
                self.after_conflict(client, item, writing).await?;
                Ok(None)
            }
            Err(ApiError::OutcomeUnknown { reason, .. }) => {
                let retry = self.after_unknown(client, item, writing, &intent, unknown, &reason);
                retry.await?;
                Ok(None)
            }
            Err(e) => Err(refused(api_stop(Some(&referral_id), &e))),
        }
    }

    /// The plan's request, as `sync.update_method` says. `None` when a
    /// PUT's read found the referral changed since the base the ops were
    /// planned against: the plan is made again first, as after a 412.
    async fn send(
        &self,
        client: &ApiClient,
        item: &WorkItem,
        writing: &mut Writing,
        method: UpdateMethod,
    ) -> Result<Option<Answer>, Stop> {
        let ext = item.mapped.external_id.as_str();
        let footing = &writing.footing;
        if method == UpdateMethod::Patch {
            let ctx = self.ctx(ext);
            let sent = client.patch(&ctx, &footing.referral_id, &footing.etag, &writing.plan.ops);
            return Ok(Some(sent.await));
        }
        let live = match footing.live.clone() {
            Some(live) => live,
            None => {
                let live = self.get_live(client, ext, &footing.referral_id).await?;
                if live.etag != footing.etag {
                    let referral_id = footing.referral_id.clone();
                    self.conflict_round(&mut writing.conflict_rounds, &referral_id)?;
                    self.replan(item, writing, live)?;
                    return Ok(None);
                }
                live.document
            }
        };
        let body = put_body(&live, &writing.plan.ops)
            .map_err(|message| Stop::failed(Some(&footing.referral_id), message))?;
        let ctx = self.ctx(ext);
        let sent = client.put(&ctx, &footing.referral_id, &footing.etag, &body);
        Ok(Some(sent.await))
    }

    /// A 412: the referral changed in Partner Center; read it and plan
    /// against it.
    async fn after_conflict(
        &self,
        client: &ApiClient,
        item: &WorkItem,
        writing: &mut Writing,
    ) -> Result<(), Stop> {
        let ext = item.mapped.external_id.as_str();
        let referral_id = writing.footing.referral_id.clone();
        self.conflict_round(&mut writing.conflict_rounds, &referral_id)?;
        info!(correlation_id = %self.correlation_id, external_id = ext, referral_id = %referral_id, round = writing.conflict_rounds, "412: the referral changed in Partner Center; merging three ways");
        let live = self.get_live(client, ext, &referral_id).await?;
        self.replan(item, writing, live)
    }

    /// A write whose outcome is unknown: after a pause, read the referral,
    /// settle the write against it and plan again; out of attempts, the
    /// record fails.
    async fn after_unknown(
        &self,
        client: &ApiClient,
        item: &WorkItem,
        writing: &mut Writing,
        intent: &WriteIntent,
        unknown: &mut RetrySchedule,
        reason: &str,
    ) -> Result<(), Stop> {
        let ext = item.mapped.external_id.as_str();
        let referral_id = writing.footing.referral_id.clone();
        Counters::add(&self.counters.retried, 1);
        let Some(delay) = unknown.next_delay() else {
            return Err(Stop::failed(
                Some(&referral_id),
                format!(
                    "write outcome unknown and retries exhausted: {reason}; the next cycle reads the referral and settles the write before sending again"
                ),
            ));
        };
        info!(correlation_id = %self.correlation_id, external_id = ext, referral_id = %referral_id, wait_ms = delay.as_millis() as u64, reason = %reason, "write outcome unknown; reading the referral before retrying");
        tokio::time::sleep(delay).await;
        let live = self.get_live(client, ext, &referral_id).await?;
        if self.recover(ext, intent, &mut writing.footing, &live)? {
            writing.sent_all();
        }
        self.replan(item, writing, live)
    }

    /// Keep what Partner Center acknowledged: the base, its eTag and the
    /// CRM's document advance together.
    fn settle(
        &self,
        item: &WorkItem,
        mut writing: Writing,
        settled: Settled,
    ) -> Result<RecordOutcome, Stop> {
        let ext = item.mapped.external_id.as_str();
        let (outcome, state) = writing.outcome(ext);
        let error = (!outcome.errors.is_empty()).then(|| outcome.errors.join("; "));
        let (etag, base) = (settled.etag.as_deref(), settled.base.as_ref());
        let refused: Vec<String> = writing
            .plan
            .rejected
            .iter()
            .filter(|r| r.path == "/status")
            .map(|r| r.path.clone())
            .take(1)
            .collect();
        let referral_id = writing.footing.referral_id.as_str();
        let applied = Applied {
            referral_id,
            etag,
            base,
            snapshot: &item.mapped.document,
            refused: &refused,
            desired_hash: &item.hash,
            fingerprint: item.fingerprint.as_ref(),
            state,
            error: error.as_deref(),
        };
        let held = std::mem::take(&mut writing.held);
        let settled = serde_json::json!({
            "referralId": referral_id, "eTag": etag, "state": state.as_str(),
            "error": error, "baseKnown": base.is_some(),
        });
        self.write_settled(ext, &applied, held, settled)?;
        if state == SyncState::Invalid {
            warn!(correlation_id = %self.correlation_id, external_id = ext, referral_id = %referral_id, error = error.as_deref().unwrap_or(""), "record invalid");
        } else if outcome.action == Action::Update {
            debug!(correlation_id = %self.correlation_id, external_id = ext, referral_id = %referral_id, ops = outcome.patch.len(), "referral updated");
        }
        Ok(outcome)
    }
}

/// History events `(kind, detail)` held back to be written with the
/// record's next write, in its transaction.
type Held = Vec<(&'static str, Value)>;

/// A request's answer: the referral, or `None` after a 204.
type Answer = Result<Option<Referral>, ApiError>;

/// A write across its rounds: the latest plan, what was sent, and the
/// conflicts and drift of every round (one per path).
struct Writing {
    footing: Footing,
    plan: Plan,
    sent: Vec<Op>,
    /// History events held back to go into the record's next write.
    held: Held,
    conflicts: Vec<merge::Conflict>,
    drift: Vec<merge::Drift>,
    conflict_rounds: u32,
}

/// What Partner Center holds once the write is in: the base, and the eTag
/// that goes with it (`None` after a 204, which carries neither eTag nor
/// representation).
struct Settled {
    etag: Option<String>,
    base: Option<Value>,
}

impl Writing {
    fn new(footing: Footing, mut plan: Plan) -> Writing {
        Writing {
            conflicts: std::mem::take(&mut plan.conflicts),
            drift: std::mem::take(&mut plan.drift),
            footing,
            plan,
            sent: Vec::new(),
            held: Vec::new(),
            conflict_rounds: 0,
        }
    }

    /// The latest plan's ops were taken (or, in a plan, would be sent).
    fn sent_all(&mut self) {
        self.sent.extend(self.plan.ops.iter().cloned());
    }

    /// What the referral holds when there is nothing (more) to send.
    fn holds(&self, managed: &ManagedPaths) -> Settled {
        let footing = &self.footing;
        let base = footing.live.as_ref().map_or_else(
            || footing.base.clone(),
            |live| ownership::project(live, managed),
        );
        Settled {
            etag: Some(footing.etag.clone()),
            base: Some(base),
        }
    }

    /// The record's outcome and the state it settles in; what was sent,
    /// the conflicts and the drift move into the outcome.
    fn outcome(&mut self, ext: &str) -> (RecordOutcome, SyncState) {
        let plan = &self.plan;
        let mut outcome = RecordOutcome::new(Some(ext.to_owned()), Action::Update);
        outcome.referral_id = Some(self.footing.referral_id.clone());
        outcome.patch = std::mem::take(&mut self.sent);
        outcome.conflicts = std::mem::take(&mut self.conflicts);
        outcome.drift = std::mem::take(&mut self.drift);
        outcome.errors = plan
            .rejected
            .iter()
            .map(|r| format!("{} not sent: {}", r.path, r.reason))
            .collect();
        if !plan.left_in_place.is_empty() {
            outcome.note = Some(format!(
                "no longer in the CRM, left in Partner Center: {}",
                plan.left_in_place.join(", ")
            ));
        }
        let state = if plan.rejected.is_empty() {
            SyncState::Synced
        } else {
            outcome.action = Action::Invalid;
            SyncState::Invalid
        };
        if outcome.patch.is_empty() && plan.rejected.is_empty() {
            outcome.action = Action::Unchanged;
        }
        (outcome, state)
    }
}

/// Adopting a referral found by id: its owned part is the base, and every
/// value the CRM has is its word.
fn adopt(live: Referral, managed: &ManagedPaths) -> Footing {
    Footing {
        base: ownership::project(&live.document, managed),
        referral_id: live.id,
        etag: live.etag,
        before: None,
        live: Some(live.document),
        status_refused: false,
    }
}

/// An answer that says the record itself is at fault: sending it again
/// unchanged would be refused again.
fn refused_for_good(status: u16) -> bool {
    matches!(status, 400 | 403 | 404 | 409 | 413 | 422)
}

fn refused_status(rec: &StoredRecord) -> bool {
    rec.refused.iter().any(|path| path == "/status")
}

/// What `ops` make of `against` (the owned part they were planned
/// against), projected: the base once they are known to be applied.
fn applied_base(against: &Value, ops: &[Op], managed: &ManagedPaths) -> Option<Value> {
    let mut after = against.clone();
    diff::apply_ops(&mut after, ops).ok()?;
    Some(ownership::project(&after, managed))
}

/// What the live referral shows of a write whose outcome was unknown.
#[derive(Debug, Clone, PartialEq)]
enum IntentSettle {
    /// The eTag moved and every slot the write set holds the value it set.
    Applied,
    /// The eTag did not move, or no slot holds the value the write set.
    NotApplied,
    /// The eTag moved and some slots hold the value the write set, others
    /// not: either the write was applied and a seller changed some of its
    /// slots since, or it was not and a seller typed some of its values.
    /// Which, the referral cannot tell; slot by slot it can.
    Partly {
        /// The slots holding the value written, with that value.
        held: Vec<(Slot, Value)>,
    },
}

/// Settle the write `intent` against the live referral, slot by slot.
fn settle_intent(intent: &WriteIntent, live: &Referral, managed: &ManagedPaths) -> IntentSettle {
    if intent.etag.as_deref() == Some(live.etag.as_str()) || intent.targets.is_empty() {
        return IntentSettle::NotApplied;
    }
    let slots = Slots::of(&live.document, managed);
    let held: Vec<(Slot, Value)> = intent
        .targets
        .iter()
        .filter(|(slot, value)| same(slots.get(slot), Some(value)))
        .cloned()
        .collect();
    if held.len() == intent.targets.len() {
        IntentSettle::Applied
    } else if held.is_empty() {
        IntentSettle::NotApplied
    } else {
        IntentSettle::Partly { held }
    }
}

/// The base and CRM document to plan with after a write settled
/// [`IntentSettle::Partly`]: those the plan was made with (`base`, and
/// `before`, `None` when adopting), and in every slot holding the value the
/// write set, that value as the base and the CRM's value the write carried
/// as *before* — as if that slot had been synced, which it has been,
/// whether by the write or by a seller who typed the same value. Every
/// other slot stands as the plan found it, so a seller's value there is
/// weighed against the CRM's as before the write. A slot that cannot be
/// put in one of the two documents is left as not held in both.
fn settle_in_part(
    base: &Value,
    before: Option<&Value>,
    desired: &Value,
    held: &[(Slot, Value)],
    managed: &ManagedPaths,
) -> (Value, Value) {
    let mut base = base.clone();
    // Adopting, nothing was known of the CRM's values: a document without
    // the slot is what the merge reads the same as unknown.
    let mut before = before
        .cloned()
        .unwrap_or_else(|| Value::Object(serde_json::Map::new()));
    let crm = Slots::of(desired, managed);
    for (slot, written) in held {
        let (mut next_base, mut next_before) = (base.clone(), before.clone());
        if ownership::set_slot(&mut next_base, slot, Some(written), managed)
            && ownership::set_slot(&mut next_before, slot, crm.get(slot), managed)
        {
            (base, before) = (next_base, next_before);
        }
    }
    (base, before)
}

/// Longest string an event keeps whole; a longer one (a 10 MB note) is cut,
/// with its size, so that the history stays small whatever the records hold.
const EVENT_STRING_LIMIT: usize = 1_000;

fn bound_strings(value: &mut Value) {
    match value {
        Value::String(text) if text.len() > EVENT_STRING_LIMIT => {
            let mut end = EVENT_STRING_LIMIT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            *text = format!("{}… ({} bytes)", &text[..end], text.len());
        }
        Value::Array(items) => items.iter_mut().for_each(bound_strings),
        Value::Object(members) => members.values_mut().for_each(bound_strings),
        _ => {}
    }
}

/// The history's account of a plan: what it was made against and decided.
fn plan_event(
    footing: &Footing,
    plan: &Plan,
    conflicts: &[merge::Conflict],
    drift: &[merge::Drift],
) -> Value {
    serde_json::json!({
        "referralId": footing.referral_id,
        "against": if footing.live.is_some() { "live" } else { "base" },
        "eTag": footing.etag,
        "adopting": footing.before.is_none(),
        "ops": plan.ops,
        "conflicts": conflicts,
        "drift": drift,
        "refused": plan.rejected,
        "leftInPlace": plan.left_in_place,
    })
}

/// The history's account of one request and its answer.
fn sent_event(
    method: &str,
    referral_id: Option<&str>,
    if_match: Option<&str>,
    ops: &[Op],
    result: &Result<Option<&Referral>, &ApiError>,
) -> Value {
    let answer = match result {
        Ok(Some(referral)) => {
            serde_json::json!({"ok": true, "eTag": referral.etag, "referralId": referral.id})
        }
        Ok(None) => serde_json::json!({"ok": true, "status": 204}),
        Err(ApiError::PreconditionFailed { .. }) => serde_json::json!({"ok": false, "status": 412}),
        Err(ApiError::OutcomeUnknown { reason, .. }) => {
            serde_json::json!({"ok": false, "outcomeUnknown": reason})
        }
        Err(ApiError::Rejected { status, code, .. }) => {
            serde_json::json!({"ok": false, "status": status, "code": code, "error": result.as_ref().err().map(ToString::to_string)})
        }
        Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
    };
    let mut answer = answer;
    if let (Err(e), Value::Object(members)) = (result, &mut answer)
        && let Some(request_id) = e.service_request_id()
    {
        // The service's `request-id`, for a support case.
        members.insert("requestId".into(), Value::String(request_id.to_owned()));
    }
    serde_json::json!({
        "method": method,
        "referralId": referral_id,
        "ifMatch": if_match,
        "ops": ops,
        "answer": answer,
    })
}

/// The history's account of a settled write: whether it was applied, and
/// when only some of the slots it set hold their value, which (those are
/// taken as synced; the others are planned again).
fn intent_event(intent: &WriteIntent, settle: &IntentSettle, live: &Referral) -> Value {
    let mut event = serde_json::json!({
        "applied": *settle == IntentSettle::Applied,
        "ops": intent.ops,
        "startedAt": intent.started_at,
        "ifMatch": intent.etag,
        "liveETag": live.etag,
    });
    if let (IntentSettle::Partly { held }, Value::Object(members)) = (settle, &mut event) {
        let held = held.iter().map(|(slot, _)| Value::String(slot.to_string()));
        members.insert("slotsHeld".into(), Value::Array(held.collect()));
    }
    event
}

fn method_name(method: UpdateMethod) -> &'static str {
    match method {
        UpdateMethod::Patch => "PATCH",
        UpdateMethod::Put => "PUT",
    }
}

fn offline_note(external_id: &str, referral_id: Option<String>) -> RecordOutcome {
    let mut outcome = RecordOutcome::new(Some(external_id.to_owned()), Action::Update);
    outcome.referral_id = referral_id;
    outcome.note = Some(
        "the patch is computed against the live referral, which an offline dry run does not read"
            .into(),
    );
    outcome
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A failure of the write itself: the service said no, so the write was not
/// applied.
fn refused(mut stop: Stop) -> Stop {
    if let Stop::Failed {
        status, refused, ..
    } = &mut stop
    {
        *refused = status.is_some();
    }
    stop
}

/// Add the conflicts of a merge round to those of earlier rounds, one per
/// path: a path decided again in a later round (the seller edited it once
/// more) is reported as that round decided it, since that is what was sent.
fn keep_latest(conflicts: &mut Vec<merge::Conflict>, latest: Vec<merge::Conflict>) {
    conflicts.retain(|earlier| latest.iter().all(|c| c.path != earlier.path));
    conflicts.extend(latest);
}

fn keep_latest_drift(drift: &mut Vec<merge::Drift>, latest: Vec<merge::Drift>) {
    drift.retain(|earlier| latest.iter().all(|d| d.path != earlier.path));
    drift.extend(latest);
}

fn log_conflicts(correlation_id: uuid::Uuid, external_id: &str, conflicts: &[merge::Conflict]) {
    for c in conflicts {
        let winner = match c.resolution {
            ConflictPolicy::CrmWins => "crm",
            ConflictPolicy::RemoteWins => "partner-center",
        };
        info!(
            correlation_id = %correlation_id,
            external_id,
            path = %c.path,
            winner,
            "conflict: changed in the CRM and in Partner Center"
        );
    }
}

fn log_drift(correlation_id: uuid::Uuid, external_id: &str, drift: &[merge::Drift]) {
    for d in drift {
        let show = |v: &Option<Value>| {
            v.as_ref()
                .map_or_else(|| "(none)".to_owned(), Value::to_string)
        };
        let partner_center = show(&d.partner_center);
        let crm = show(&d.crm);
        match d.action {
            merge::DriftAction::Repaired => info!(
                correlation_id = %correlation_id,
                external_id,
                path = %d.path,
                partner_center = %partner_center,
                crm = %crm,
                "drift repaired"
            ),
            merge::DriftAction::Kept => info!(
                correlation_id = %correlation_id,
                external_id,
                path = %d.path,
                partner_center = %partner_center,
                crm = %crm,
                "drift kept"
            ),
        }
    }
}

/// The live referral with `ops` applied, less what the service owns.
fn put_body(live: &Value, ops: &[Op]) -> Result<Value, String> {
    let mut body = live.clone();
    diff::apply_ops(&mut body, ops).map_err(|e| format!("cannot build the PUT body: {e}"))?;
    if let Value::Object(map) = &mut body {
        for member in READ_ONLY_MEMBERS {
            map.remove(member);
        }
    }
    Ok(body)
}

fn api_stop(referral_id: Option<&str>, error: &ApiError) -> Stop {
    // Credentials the service or the token endpoint refuses fail every
    // record alike; so do a shutdown and a Retry-After beyond our limit.
    if error.stops_every_request() {
        return Stop::Halt {
            message: error.to_string(),
            status: None,
        };
    }
    match error {
        ApiError::Unauthorized { .. } => {
            return Stop::Halt {
                message: error.to_string(),
                status: Some(401),
            };
        }
        ApiError::Auth(_) => {
            return Stop::Halt {
                message: error.to_string(),
                status: None,
            };
        }
        _ => {}
    }
    let (status, code) = match error {
        ApiError::Rejected { status, code, .. } => (Some(*status), code.clone()),
        ApiError::PreconditionFailed { .. } => (Some(412), Some("preconditionFailed".into())),
        _ => (None, None),
    };
    Stop::answered(referral_id, error.to_string(), status, code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_path_decided_in_several_rounds_is_reported_once_as_last_decided() {
        let conflict = |path: &str, live: &str| merge::Conflict {
            path: path.to_owned(),
            snapshot: Some(json!("crm-old")),
            live: Some(json!(live)),
            desired: Some(json!("crm-new")),
            resolution: ConflictPolicy::CrmWins,
        };
        let mut conflicts = vec![
            conflict("/name", "seller-1"),
            conflict("/details/notes", "n"),
        ];
        keep_latest(&mut conflicts, vec![conflict("/name", "seller-2")]);
        keep_latest(&mut conflicts, vec![]);
        assert_eq!(
            conflicts,
            [
                conflict("/details/notes", "n"),
                conflict("/name", "seller-2")
            ]
        );
    }

    fn managed() -> ManagedPaths {
        let mut managed = ManagedPaths::empty();
        managed.insert(&["details", "dealValue"]);
        managed.insert(&["name"]);
        managed
    }

    fn intent(etag: &str, deal: i64) -> WriteIntent {
        WriteIntent {
            kind: IntentKind::Update,
            etag: Some(etag.into()),
            ops: vec![Op::Replace {
                path: "/details/dealValue".into(),
                value: json!(deal),
            }],
            targets: vec![(
                ownership::Slot::leaf(&["details", "dealValue"]),
                json!(deal),
            )],
            against: json!({"details": {"dealValue": 1000}}),
            base: None,
            before: None,
            desired: json!({"details": {"dealValue": deal}}),
            desired_hash: "h".into(),
            started_at: now_rfc3339(),
        }
    }

    fn referral(etag: &str, deal: i64) -> Referral {
        Referral {
            id: "r".into(),
            etag: etag.into(),
            document: json!({"id": "r", "name": "n", "details": {"dealValue": deal}}),
        }
    }

    #[test]
    fn an_intent_is_applied_only_when_the_etag_moved_and_every_slot_holds_its_value() {
        let managed = managed();
        let cases = [
            (
                "same eTag",
                referral("\"1\"", 2000),
                IntentSettle::NotApplied,
            ),
            (
                "moved, value there",
                referral("\"2\"", 2000),
                IntentSettle::Applied,
            ),
            (
                "moved, value not there",
                referral("\"2\"", 1500),
                IntentSettle::NotApplied,
            ),
        ];
        for (name, live, expected) in cases {
            assert_eq!(
                settle_intent(&intent("\"1\"", 2000), &live, &managed),
                expected,
                "{name}"
            );
        }
        let mut two = intent("\"1\"", 2000);
        two.targets
            .push((ownership::Slot::leaf(&["name"]), json!("renamed")));
        assert_eq!(
            settle_intent(&two, &referral("\"2\"", 2000), &managed),
            IntentSettle::Partly {
                held: vec![(
                    ownership::Slot::leaf(&["details", "dealValue"]),
                    json!(2000)
                )]
            },
            "one of two slots holding its value: that slot is settled, the other is not"
        );
        assert_eq!(
            settle_intent(&two, &referral("\"1\"", 2000), &managed),
            IntentSettle::NotApplied,
            "with the eTag where it was, no write was applied"
        );
    }

    /// A write that set the deal value and the name, settled when only the
    /// deal value holds it: the deal value is synced (base and *before* hold
    /// the write's), the name stands as planned (the earlier base and CRM
    /// value), whether the plan was made with a known CRM document or was
    /// adopting; what lies outside the slots is untouched.
    #[test]
    fn a_write_settled_in_part_syncs_the_slots_that_hold_it_and_no_other() {
        let managed = managed();
        let held = vec![(
            ownership::Slot::leaf(&["details", "dealValue"]),
            json!(2000),
        )];
        let desired = json!({"name": "crm name", "details": {"dealValue": 2000, "notes": "crm"}});
        let base = json!({"name": "old name", "details": {"dealValue": 1000}});
        let before =
            json!({"name": "older crm name", "details": {"dealValue": 1000, "notes": "crm"}});

        let (b, f) = settle_in_part(&base, Some(&before), &desired, &held, &managed);
        assert_eq!(
            b,
            json!({"name": "old name", "details": {"dealValue": 2000}})
        );
        assert_eq!(
            f,
            json!({"name": "older crm name", "details": {"dealValue": 2000, "notes": "crm"}})
        );

        let (b, f) = settle_in_part(&base, None, &desired, &held, &managed);
        assert_eq!(
            b,
            json!({"name": "old name", "details": {"dealValue": 2000}})
        );
        assert_eq!(
            f,
            json!({"details": {"dealValue": 2000}}),
            "adopting: only what is known"
        );

        // A clear the write made and the referral holds: synced as empty.
        let cleared = vec![(
            ownership::Slot::leaf(&["details", "dealValue"]),
            Value::Null,
        )];
        let (b, f) = settle_in_part(
            &base,
            Some(&before),
            &json!({"name": "crm name"}),
            &cleared,
            &managed,
        );
        assert_eq!(b, json!({"name": "old name", "details": {}}));
        assert_eq!(
            f,
            json!({"name": "older crm name", "details": {"notes": "crm"}})
        );
    }
}
