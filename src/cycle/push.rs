//! The push phase for one record: resolve its referral, plan the patch,
//! send it with `If-Match`, and recover from 412s and unknown outcomes by
//! reading the live referral and merging three ways. The store advances
//! only after the service acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value};
use tokio::sync::Mutex as AsyncMutex;
use tracing::{debug, info, warn};

use crate::api::retry::RetrySchedule;
use crate::api::{ApiClient, ApiError, Referral, RequestContext};
use crate::config::{Settings, UpdateMethod};
use crate::diff::{self, DiffOptions, OnCleared, Rejection};
use crate::mapping::{self, MappedRecord};
use crate::merge::{self, ConflictPolicy, MergeOptions};
use crate::model::{ManagedPaths, Op};
use crate::store::{Applied, Store, StoreError, StoredRecord, SyncState};

use super::outcome::{Action, Counters, RecordOutcome};
use super::scan::WorkReason;

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
}

/// `externalReferenceId -> id`, built once per cycle, lazily, by paging
/// the referral list (filtering by externalReferenceId is undocumented).
#[derive(Default)]
pub struct ReferralIndex {
    entries: AsyncMutex<Option<IndexListing>>,
}

/// `externalReferenceId -> ids` (more than one id is ambiguous), or why the
/// list could not be read.
type IndexListing = Result<HashMap<String, Vec<String>>, String>;

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
    async fn lookup(&self, pusher: &Pusher, external_id: &str) -> Result<Option<String>, Stop> {
        let mut entries = self.entries.lock().await;
        if entries.is_none() {
            *entries = Some(pusher.build_index().await);
        }
        match entries.as_ref() {
            Some(Ok(map)) => match map.get(external_id).map(Vec::as_slice) {
                None | Some([]) => Ok(None),
                Some([one]) => Ok(Some(one.clone())),
                Some(many) => Err(Stop::Failed {
                    referral_id: None,
                    message: format!(
                        "{} referrals carry externalReferenceId {external_id}: {}; set the referral id in the export (mapping.referral_id_column)",
                        many.len(),
                        many.join(", ")
                    ),
                    status: None,
                    code: None,
                    unsettled: false,
                }),
            },
            Some(Err(e)) => Err(Stop::Halt {
                message: e.clone(),
                status: None,
            }),
            None => Ok(None),
        }
    }
}

/// Shared by the workers of one cycle.
pub struct Pusher {
    pub settings: Arc<Settings>,
    pub managed: ManagedPaths,
    pub store: Arc<Mutex<Store>>,
    pub client: Option<ApiClient>,
    pub index: ReferralIndex,
    pub correlation_id: uuid::Uuid,
    pub dry_run: bool,
    /// The cycle's counters: the push phase adds its retries and
    /// conflict rounds.
    pub counters: Arc<Counters>,
    /// Set when a failure no record can get past (credentials refused, the
    /// referral list unreadable) stops the push phase: records not taken up
    /// yet stay as they were, rather than each failing the same way.
    pub halted: OnceLock<String>,
}

/// Why a record stopped.
enum Stop {
    Failed {
        referral_id: Option<String>,
        message: String,
        status: Option<u16>,
        code: Option<String>,
        /// A write of this cycle may have been applied: the record stays
        /// `pending` rather than `failed`.
        unsettled: bool,
    },
    Store(StoreError),
    /// A failure that every record would meet: the push phase stops. Nothing
    /// more is recorded for the record: its row stays as it is, `pending`
    /// if a write was started (so the next cycle reads the live referral
    /// before sending anything), else as the last acknowledged state.
    Halt {
        message: String,
        status: Option<u16>,
    },
}

impl Stop {
    /// The same stop, after a write whose outcome is not known.
    fn unsettled(self) -> Stop {
        match self {
            Stop::Failed {
                referral_id,
                message,
                status,
                code,
                ..
            } => Stop::Failed {
                referral_id,
                message,
                status,
                code,
                unsettled: true,
            },
            other => other,
        }
    }
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Store(e)
    }
}

/// The state a plan is made against.
struct Base {
    referral_id: String,
    etag: String,
    /// What we last applied (or the live referral when adopting).
    snapshot: Value,
    /// The live referral when it was read this cycle.
    live: Option<Value>,
    adopting: bool,
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

    fn ctx(&self, external_id: &str) -> RequestContext {
        RequestContext {
            correlation_id: self.correlation_id,
            external_id: Some(external_id.to_owned()),
        }
    }

    fn store(&self) -> Result<std::sync::MutexGuard<'_, Store>, Stop> {
        self.store.lock().map_err(|_| Stop::Failed {
            referral_id: None,
            message: "internal error: the store lock was poisoned".into(),
            status: None,
            code: None,
            unsettled: false,
        })
    }

    fn diff_options(&self, adopting: bool) -> DiffOptions {
        DiffOptions {
            // Adopting a referral someone else filled in: an empty CRM
            // column is no reason to clear what is there.
            on_cleared: if adopting {
                OnCleared::Skip
            } else {
                self.settings.sync.on_cleared
            },
        }
    }

    /// Page through the referral list once; the store keeps a copy.
    async fn build_index(&self) -> Result<HashMap<String, Vec<String>>, String> {
        let Some(client) = &self.client else {
            return Err("no credentials configured (offline)".into());
        };
        let ctx = RequestContext {
            correlation_id: self.correlation_id,
            external_id: None,
        };
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
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
                        map.entry(ext).or_default().push(id.to_owned());
                    }
                }
            })
            .await
            .map_err(|e| format!("listing referrals to resolve external ids failed: {e}"))?;
        info!(correlation_id = %self.correlation_id, referrals = count, indexed = map.len(), "referral index built");
        if !self.dry_run {
            let entries: Vec<(String, String)> = map
                .iter()
                .filter(|(_, ids)| ids.len() == 1)
                .map(|(ext, ids)| (ext.clone(), ids[0].clone()))
                .collect();
            if let Ok(store) = self.store.lock()
                && let Err(e) = store.replace_index(&entries)
            {
                warn!(error = %e, "could not save the referral index");
            }
        }
        Ok(map)
    }

    /// Plan and push one record; never panics, never returns early without
    /// an outcome.
    pub async fn sync_record(&self, item: WorkItem) -> RecordOutcome {
        let external_id = item.mapped.external_id.clone();
        match self.sync_record_inner(&item).await {
            Ok(outcome) => outcome,
            Err(stop) => {
                let mut outcome = RecordOutcome::new(Some(external_id.clone()), Action::Failed);
                match stop {
                    Stop::Failed {
                        referral_id,
                        message,
                        status,
                        code,
                        unsettled,
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
                        let recorded = match self.store.lock() {
                            Ok(_) if self.dry_run => Ok(()),
                            Ok(store) if unsettled => store.record_unsettled(
                                &external_id,
                                referral_id.as_deref(),
                                &message,
                            ),
                            Ok(store) => {
                                store.record_failed(&external_id, referral_id.as_deref(), &message)
                            }
                            Err(_) => Ok(()),
                        };
                        if let Err(e) = recorded {
                            warn!(external_id = %external_id, error = %e, "could not record the failure");
                        }
                        outcome.referral_id = referral_id;
                        outcome.errors.push(message);
                    }
                    Stop::Store(e) => {
                        warn!(external_id = %external_id, error = %e, "record failed: store error");
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
        }
    }

    async fn sync_record_inner(&self, item: &WorkItem) -> Result<RecordOutcome, Stop> {
        let ext = item.mapped.external_id.as_str();
        let stored = self.store()?.record(ext)?;
        let desired = &item.mapped.document;

        // A known referral whose snapshot we trust: plan against it alone.
        if let Some(rec) = &stored
            && let (Some(id), Some(etag), Some(snapshot)) =
                (&rec.referral_id, &rec.etag, &rec.snapshot)
        {
            let trusted = rec.state != SyncState::Pending && item.reason != WorkReason::Resync;
            let planned =
                diff::plan_patch(snapshot, desired, &self.managed, &self.diff_options(false));
            // Rewriting a whole array of objects needs the live elements,
            // whose members the mapping does not fill must be carried over.
            let rewrites_elements = planned.ops.iter().any(|op| {
                matches!(op, Op::Replace { .. })
                    && self.managed.element_members().contains_key(op.path())
            });
            if trusted && !(rewrites_elements && self.client.is_some()) {
                let base = Base {
                    referral_id: id.clone(),
                    etag: etag.clone(),
                    snapshot: snapshot.clone(),
                    live: None,
                    adopting: false,
                };
                return self
                    .push(item, base, planned.ops, planned.rejected, Vec::new())
                    .await;
            }
        }

        let referral_id = self.resolve(item, stored.as_ref()).await?;
        let Some(referral_id) = referral_id else {
            return self.create(item).await;
        };

        // Adoption, an unknown outcome left by a crash, or a resync: read
        // the live referral and merge three ways.
        let Some(client) = &self.client else {
            let mut outcome = RecordOutcome::new(Some(ext.to_owned()), Action::Update);
            outcome.referral_id = Some(referral_id);
            outcome.note = Some(
                "the patch is computed against the live referral, which an offline dry run does not read"
                    .into(),
            );
            return Ok(outcome);
        };
        let live = self.get_live(client, ext, &referral_id).await?;
        let (snapshot, adopting) = match stored.as_ref().and_then(|r| r.snapshot.clone()) {
            Some(snapshot) => (snapshot, false),
            None => (live.document.clone(), true),
        };
        let merged = self.merge_with_live(&snapshot, desired, &live.document, adopting);
        let base = Base {
            referral_id,
            etag: live.etag.clone(),
            snapshot,
            live: Some(live.document),
            adopting,
        };
        self.push(item, base, merged.ops, merged.rejected, merged.conflicts)
            .await
    }

    /// Count one round of the referral changing under us (a 412, or a
    /// PUT's read finding a new eTag); past the limit the record fails.
    fn conflict_round(&self, rounds: &mut u32, base: &Base) -> Result<(), Stop> {
        *rounds += 1;
        Counters::add(&self.counters.conflicts, 1);
        let limit = self.settings.sync.max_conflict_retries;
        if *rounds > limit {
            return Err(Stop::Failed {
                referral_id: Some(base.referral_id.clone()),
                message: format!(
                    "412 Precondition Failed (or a new eTag read before a PUT) {rounds} times: the referral keeps changing (sync.max_conflict_retries = {limit})"
                ),
                status: Some(412),
                code: Some("preconditionFailed".into()),
                unsettled: false,
            });
        }
        Ok(())
    }

    /// Plan again against the live referral, which becomes the base the
    /// next write is sent against.
    fn replan(
        &self,
        external_id: &str,
        desired: &Value,
        base: &mut Base,
        live: Referral,
    ) -> merge::MergeOutcome {
        let merged = self.merge_with_live(&base.snapshot, desired, &live.document, base.adopting);
        log_conflicts(self.correlation_id, external_id, &merged.conflicts);
        debug!(
            external_id,
            ops = merged.ops.len(),
            already_applied = merged.already_applied,
            "re-planned against the live referral"
        );
        base.etag = live.etag;
        base.live = Some(live.document);
        merged
    }

    /// Three-way merge against the live referral. Array elements of the
    /// snapshot and the desired document first take over the members the
    /// mapping does not fill from their live counterparts, so that those
    /// members neither look like a conflict nor get dropped by a
    /// whole-array write.
    fn merge_with_live(
        &self,
        snapshot: &Value,
        desired: &Value,
        live: &Value,
        adopting: bool,
    ) -> merge::MergeOutcome {
        let mut snapshot = snapshot.clone();
        let mut desired = desired.clone();
        merge::carry_unmanaged_element_members(&mut snapshot, live, &self.managed);
        merge::carry_unmanaged_element_members(&mut desired, live, &self.managed);
        merge::three_way(
            &snapshot,
            &desired,
            live,
            &self.managed,
            &self.merge_options(adopting),
        )
    }

    fn merge_options(&self, adopting: bool) -> MergeOptions {
        MergeOptions {
            diff: self.diff_options(adopting),
            conflict: self.settings.sync.conflict,
        }
    }

    /// Store, then the export's referral id column, then the index.
    async fn resolve(
        &self,
        item: &WorkItem,
        stored: Option<&StoredRecord>,
    ) -> Result<Option<String>, Stop> {
        if let Some(id) = stored.and_then(|r| r.referral_id.clone()) {
            return Ok(Some(id));
        }
        if let Some(id) = &item.mapped.referral_id {
            return Ok(Some(id.clone()));
        }
        if self.client.is_none() {
            let indexed = self.store()?.index_lookup(&item.mapped.external_id)?;
            return Ok(indexed);
        }
        // The index is listed once per cycle, so a create whose answer was
        // lost in an earlier cycle (the record is `pending`) is found here.
        self.index.lookup(self, &item.mapped.external_id).await
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
            .map_err(|e| api_stop(Some(referral_id), &e))
    }

    async fn create(&self, item: &WorkItem) -> Result<RecordOutcome, Stop> {
        let ext = item.mapped.external_id.as_str();
        if !self.settings.sync.create_missing {
            let mut outcome = RecordOutcome::new(Some(ext.to_owned()), Action::Unresolved);
            outcome.errors.push(format!(
                "no referral with externalReferenceId {ext} is known (store, {}index); creation is off (sync.create_missing = false)",
                if item.mapped.referral_id.is_none() { "referral id column, " } else { "" }
            ));
            if !self.dry_run {
                self.store()?.record_failed(ext, None, &outcome.errors[0])?;
            }
            return Ok(outcome);
        }
        let body = self.create_body(&item.mapped.document);
        let missing: Vec<&str> = CREATE_REQUIRED
            .iter()
            .copied()
            .filter(|k| body.get(*k).is_none_or(Value::is_null))
            .collect();
        if !missing.is_empty() {
            let mut outcome = RecordOutcome::new(Some(ext.to_owned()), Action::Invalid);
            outcome.errors.push(format!(
                "cannot create a referral: required member(s) {} have no value in the record",
                missing.join(", ")
            ));
            if !self.dry_run {
                self.store()?
                    .record_invalid(ext, None, &item.hash, &outcome.errors[0])?;
            }
            return Ok(outcome);
        }
        let mut outcome = RecordOutcome::new(Some(ext.to_owned()), Action::Create);
        outcome.document = Some(body.clone());
        let Some(client) = self.client.as_ref().filter(|_| !self.dry_run) else {
            return Ok(outcome);
        };
        self.store()?.mark_pending(ext, None)?;
        match client.create(&self.ctx(ext), &body).await {
            Ok(referral) => {
                self.store()?.record_applied(
                    ext,
                    &Applied {
                        referral_id: &referral.id,
                        etag: Some(&referral.etag),
                        snapshot: &item.mapped.document,
                        desired_hash: &item.hash,
                        state: SyncState::Synced,
                        error: None,
                    },
                )?;
                info!(correlation_id = %self.correlation_id, external_id = ext, referral_id = %referral.id, "referral created");
                outcome.referral_id = Some(referral.id);
                Ok(outcome)
            }
            Err(ApiError::OutcomeUnknown { reason, .. }) => {
                // It may exist now. The record stays `pending`, so the next
                // cycle lists the referrals afresh before creating again.
                Counters::add(&self.counters.retried, 1);
                let message = format!(
                    "create: outcome unknown ({reason}); the next cycle looks the referral up before creating again"
                );
                warn!(correlation_id = %self.correlation_id, external_id = ext, error = %message, "record pending");
                self.store()?.record_unsettled(ext, None, &message)?;
                let mut outcome = RecordOutcome::new(Some(ext.to_owned()), Action::Failed);
                outcome.errors.push(message);
                Ok(outcome)
            }
            Err(e) => Err(api_stop(None, &e)),
        }
    }

    /// The create body: the desired document plus the creation defaults,
    /// which are sent only here and never patched.
    fn create_body(&self, desired: &Value) -> Value {
        let create = &self.settings.create;
        let mut body = desired.clone();
        if let Value::Object(map) = &mut body {
            map.entry("type")
                .or_insert_with(|| Value::String(create.referral_type.clone()));
            map.entry("qualification")
                .or_insert_with(|| Value::String(create.qualification.clone()));
            let mut consent = Map::new();
            consent.insert(
                "consentToToShareInfoWithOthers".into(),
                Value::Bool(create.consent_to_share_info_with_others),
            );
            consent.insert(
                "consentToContact".into(),
                Value::Bool(create.consent_to_contact),
            );
            if let Some(v) = create.consent_to_share_referral_with_microsoft_sellers {
                consent.insert(
                    "consentToShareReferralWithMicrosoftSellers".into(),
                    Value::Bool(v),
                );
            }
            map.entry("consent").or_insert(Value::Object(consent));
            if !create.target.is_empty() {
                map.entry("target").or_insert_with(|| {
                    serde_json::to_value(&create.target).unwrap_or(Value::Array(Vec::new()))
                });
            }
        }
        body
    }

    /// Send `ops` against `base`, merging again after a 412 or an unknown
    /// outcome, until acknowledged or out of attempts.
    async fn push(
        &self,
        item: &WorkItem,
        mut base: Base,
        mut ops: Vec<Op>,
        rejected: Vec<Rejection>,
        mut conflicts: Vec<merge::Conflict>,
    ) -> Result<RecordOutcome, Stop> {
        let ext = item.mapped.external_id.as_str();
        let desired = &item.mapped.document;
        let mut rejected = rejected;
        let mut sent: Vec<Op> = Vec::new();
        // Ops of a write whose answer was lost, until a read tells whether
        // the referral took them.
        let mut in_doubt: Vec<Op> = Vec::new();
        let mut conflict_rounds = 0u32;
        let mut unknown = RetrySchedule::new(&self.settings.api.retry);
        let method = self.settings.api.update_method;
        log_conflicts(self.correlation_id, ext, &conflicts);

        // The eTag the referral has once our changes are in it; `None` when
        // a write was acknowledged without one (204).
        let etag_after: Option<String> = loop {
            if ops.is_empty() {
                break Some(base.etag.clone());
            }
            let Some(client) = self.client.as_ref().filter(|_| !self.dry_run) else {
                sent = ops.clone();
                break None;
            };
            self.store()?.mark_pending(ext, Some(&base.referral_id))?;
            let ctx = self.ctx(ext);
            let result = match method {
                UpdateMethod::Patch => {
                    client
                        .patch(&ctx, &base.referral_id, &base.etag, &ops)
                        .await
                }
                UpdateMethod::Put => {
                    let live = match base.live.take() {
                        Some(live) => live,
                        None => {
                            let live = self.get_live(client, ext, &base.referral_id).await?;
                            if live.etag != base.etag {
                                // Changed in Partner Center since the snapshot
                                // the ops were planned against: a PUT under
                                // this fresh eTag would overwrite the change
                                // unseen. Merge first, as after a 412.
                                self.conflict_round(&mut conflict_rounds, &base)?;
                                let merged = self.replan(ext, desired, &mut base, live);
                                keep_latest_conflicts(&mut conflicts, merged.conflicts);
                                rejected = merged.rejected;
                                ops = merged.ops;
                                continue;
                            }
                            live.document
                        }
                    };
                    let body = put_body(&live, &ops).map_err(|message| Stop::Failed {
                        referral_id: Some(base.referral_id.clone()),
                        message,
                        status: None,
                        code: None,
                        unsettled: false,
                    })?;
                    client.put(&ctx, &base.referral_id, &base.etag, &body).await
                }
            };
            match result {
                Ok(acknowledged) => {
                    sent.extend(ops.iter().cloned());
                    // A 204 (the service ignored `Prefer`) carries no eTag.
                    // Reading one now could pick up someone else's later
                    // edit as if it were ours; store none, so the next
                    // change is merged against the live referral.
                    break acknowledged.map(|referral| referral.etag);
                }
                Err(ApiError::PreconditionFailed { .. }) => {
                    self.conflict_round(&mut conflict_rounds, &base)?;
                    info!(correlation_id = %self.correlation_id, external_id = ext, referral_id = %base.referral_id, round = conflict_rounds, "412: the referral changed in Partner Center; merging three ways");
                }
                Err(ApiError::OutcomeUnknown { reason, .. }) => {
                    Counters::add(&self.counters.retried, 1);
                    let Some(delay) = unknown.next_delay() else {
                        return Err(Stop::Failed {
                            referral_id: Some(base.referral_id.clone()),
                            message: format!(
                                "write outcome unknown and retries exhausted: {reason}; the next cycle reads the referral before sending again"
                            ),
                            status: None,
                            code: None,
                            unsettled: true,
                        });
                    };
                    info!(correlation_id = %self.correlation_id, external_id = ext, referral_id = %base.referral_id, wait_ms = delay.as_millis() as u64, reason = %reason, "write outcome unknown; reading the referral before retrying");
                    in_doubt = ops.clone();
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(api_stop(Some(&base.referral_id), &e)),
            }
            // Read the live referral and merge three ways against it.
            let live = match self.get_live(client, ext, &base.referral_id).await {
                Ok(live) => live,
                Err(stop) if !in_doubt.is_empty() => return Err(stop.unsettled()),
                Err(stop) => return Err(stop),
            };
            let merged = self.replan(ext, desired, &mut base, live);
            // A PATCH is all or nothing: when the referral already holds
            // changes of the write whose answer was lost, that write took
            // effect and is reported as sent.
            if merged.already_applied > 0 {
                sent.append(&mut in_doubt);
            }
            in_doubt.clear();
            keep_latest_conflicts(&mut conflicts, merged.conflicts);
            rejected = merged.rejected;
            ops = merged.ops;
        };

        let mut outcome = RecordOutcome::new(Some(ext.to_owned()), Action::Update);
        outcome.referral_id = Some(base.referral_id.clone());
        outcome.patch = sent;
        outcome.conflicts = conflicts;
        outcome.errors = rejected
            .iter()
            .map(|r| format!("{} not sent: {}", r.path, r.reason))
            .collect();
        let state = if rejected.is_empty() {
            SyncState::Synced
        } else {
            outcome.action = Action::Invalid;
            SyncState::Invalid
        };
        if outcome.patch.is_empty() && rejected.is_empty() {
            outcome.action = Action::Unchanged;
        }
        if self.dry_run || self.client.is_none() {
            return Ok(outcome);
        }
        // What the referral now holds of ours: the desired document, except
        // where a change was refused.
        let snapshot = snapshot_after(desired, &base.snapshot, &rejected);
        let error = (!outcome.errors.is_empty()).then(|| outcome.errors.join("; "));
        self.store()?.record_applied(
            ext,
            &Applied {
                referral_id: &base.referral_id,
                etag: etag_after.as_deref(),
                snapshot: &snapshot,
                desired_hash: &item.hash,
                state,
                error: error.as_deref(),
            },
        )?;
        if state == SyncState::Invalid {
            warn!(correlation_id = %self.correlation_id, external_id = ext, referral_id = %base.referral_id, error = error.as_deref().unwrap_or(""), "record invalid");
        }
        Ok(outcome)
    }
}

/// Add the conflicts of a merge round to those of earlier rounds, one per
/// path: a path decided again in a later round (the seller edited it once
/// more) is reported as that round decided it, since that is what was sent.
fn keep_latest_conflicts(conflicts: &mut Vec<merge::Conflict>, latest: Vec<merge::Conflict>) {
    conflicts.retain(|earlier| latest.iter().all(|c| c.path != earlier.path));
    conflicts.extend(latest);
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

/// The desired document with refused members put back as they were.
fn snapshot_after(desired: &Value, base: &Value, rejected: &[Rejection]) -> Value {
    let mut snapshot = desired.clone();
    for r in rejected {
        // A status refusal covers its substatus too.
        let paths: &[&str] = if r.path == "/status" {
            &["/status", "/substatus"]
        } else {
            &[r.path.as_str()]
        };
        for path in paths {
            restore(&mut snapshot, base, path);
        }
    }
    snapshot
}

/// Make the member at `pointer` in `document` what it is in `base`
/// (absent if `base` lacks it), creating parent objects as needed.
fn restore(document: &mut Value, base: &Value, pointer: &str) {
    let tokens: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let Some((last, parents)) = tokens.split_last() else {
        return;
    };
    let mut node = document;
    for token in parents {
        let Value::Object(map) = node else { return };
        node = map
            .entry(token.clone())
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
    }
    let Value::Object(map) = node else { return };
    match base.pointer(pointer) {
        Some(value) => {
            map.insert(last.clone(), value.clone());
        }
        None => {
            map.remove(last);
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
        ApiError::Unauthorized { .. } => (Some(401), None),
        _ => (None, None),
    };
    Stop::Failed {
        referral_id: referral_id.map(str::to_owned),
        message: error.to_string(),
        status,
        code,
        unsettled: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rejection(path: &str) -> Rejection {
        Rejection {
            path: path.to_owned(),
            reason: "refused".to_owned(),
        }
    }

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
        keep_latest_conflicts(&mut conflicts, vec![conflict("/name", "seller-2")]);
        keep_latest_conflicts(&mut conflicts, vec![]);
        assert_eq!(
            conflicts,
            [
                conflict("/details/notes", "n"),
                conflict("/name", "seller-2")
            ]
        );
    }

    #[test]
    fn a_refused_change_stays_out_of_the_snapshot_at_any_depth() {
        let base = json!({
            "status": "Closed", "substatus": "Won",
            "customerProfile": {"address": {"city": "Redmond"}},
        });
        let desired = json!({
            "status": "Active", "substatus": "Accepted",
            "customerProfile": {"address": {"city": "Bellevue", "state": "WA"}, "name": "C"},
            "details": {"notes": "new"},
        });
        let snapshot = snapshot_after(
            &desired,
            &base,
            &[
                rejection("/status"),
                rejection("/customerProfile/address/city"),
                rejection("/details/notes"),
            ],
        );
        assert_eq!(
            snapshot,
            json!({
                "status": "Closed", "substatus": "Won",
                "customerProfile": {"address": {"city": "Redmond", "state": "WA"}, "name": "C"},
                "details": {},
            })
        );
    }
}
