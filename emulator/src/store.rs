//! The referrals the emulator holds, and every way they change: a client's
//! create, patch and replace under the service rules, a seller's edit in
//! Partner Center, an insert of a referral made elsewhere.
//!
//! No clock and no randomness here: timestamps, eTags and ids come from a
//! [`Mint`], so the store is a pure function of its inputs.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::listing::{ListQuery, OrderField, SortKey};
use super::rejection::Rejection;
use super::rules;

/// Where new timestamps, eTags and ids come from.
pub trait Mint {
    /// Strictly later than the previous call, so that `updatedDateTime`
    /// moves on every write.
    fn now(&mut self) -> DateTime<Utc>;
    /// A quoted, opaque eTag.
    fn etag(&mut self) -> String;
    fn id(&mut self) -> String;
}

/// The wall clock and random GUIDs.
#[derive(Debug, Default)]
pub struct SystemMint {
    last: Option<DateTime<Utc>>,
}

impl Mint for SystemMint {
    fn now(&mut self) -> DateTime<Utc> {
        let mut now = Utc::now();
        // Timestamps are written with 100 ns precision, like the service's.
        let tick = chrono::Duration::nanoseconds(100);
        now = now - chrono::Duration::nanoseconds(i64::from(now.timestamp_subsec_nanos() % 100));
        if let Some(last) = self.last
            && now <= last
        {
            now = last + tick;
        }
        self.last = Some(now);
        now
    }

    fn etag(&mut self) -> String {
        format!("\"{}\"", uuid::Uuid::new_v4())
    }

    fn id(&mut self) -> String {
        uuid::Uuid::new_v4().to_string()
    }
}

/// `2018-11-06T18:40:42.6178337Z`: seven fractional digits, as the service
/// writes them.
pub fn format_timestamp(at: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}Z",
        at.format("%Y-%m-%dT%H:%M:%S"),
        at.timestamp_subsec_nanos() / 100
    )
}

/// One page of the list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub value: Vec<Value>,
    /// How many referrals match the filter, over all pages.
    pub count: usize,
    /// The last referral of this page when more follow.
    pub next: Option<SortKey>,
}

#[derive(Debug, Clone)]
struct Stored {
    document: Value,
    created: DateTime<Utc>,
    updated: DateTime<Utc>,
}

#[derive(Debug, Default)]
pub struct ReferralStore {
    referrals: HashMap<String, Stored>,
}

impl ReferralStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.referrals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.referrals.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Value> {
        self.referrals.get(id).map(|stored| &stored.document)
    }

    /// Every referral, oldest first.
    pub fn all(&self) -> Vec<Value> {
        let mut stored: Vec<&Stored> = self.referrals.values().collect();
        stored
            .sort_by(|a, b| (a.created, id_of(&a.document)).cmp(&(b.created, id_of(&b.document))));
        stored.into_iter().map(|s| s.document.clone()).collect()
    }

    /// Insert a referral made elsewhere (a seed, or one Microsoft created),
    /// as it is; only what identifies and orders it is filled in when
    /// missing. `links` is dropped: the emulator computes it per response.
    pub fn insert(&mut self, document: Value, mint: &mut dyn Mint) -> Result<Value, Rejection> {
        let Value::Object(mut object) = document else {
            return Err(Rejection::WrongBodyShape {
                expected: "a referral object",
            });
        };
        object.remove("links");
        let id = match object.get("id") {
            None | Some(Value::Null) => mint.id(),
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            Some(other) => {
                return Err(Rejection::InvalidValue {
                    path: "/id".to_owned(),
                    value: other.to_string(),
                    expected: "a non-empty string".to_owned(),
                });
            }
        };
        if self.referrals.contains_key(&id) {
            return Err(Rejection::AlreadyExists { id });
        }
        object.insert("id".to_owned(), Value::String(id.clone()));
        if object.get("engagementId").is_none_or(Value::is_null) {
            object.insert("engagementId".to_owned(), Value::String(mint.id()));
        }
        if object.get("eTag").is_none_or(Value::is_null) {
            object.insert("eTag".to_owned(), Value::String(mint.etag()));
        }
        let now = mint.now();
        let created = timestamp_or(&mut object, "createdDateTime", now)?;
        let updated = timestamp_or(&mut object, "updatedDateTime", created)?;
        let document = Value::Object(object);
        self.referrals.insert(
            id,
            Stored {
                document: document.clone(),
                created,
                updated,
            },
        );
        Ok(document)
    }

    /// `POST /engagements/referrals`.
    pub fn create(&mut self, body: &Value, mint: &mut dyn Mint) -> Result<Value, Rejection> {
        rules::check_complete(body)?;
        let mut document = body.clone();
        if let Some(object) = document.as_object_mut() {
            // What the service assigns itself is not the client's to choose.
            for field in rules::READ_ONLY_FIELDS {
                object.remove(*field);
            }
            if !object.contains_key("status") && !object.contains_key("substatus") {
                object.insert("status".to_owned(), json!("New"));
                object.insert("substatus".to_owned(), json!("Received"));
            }
        }
        rules::check_write(None, &document)?;
        let now = mint.now();
        let id = mint.id();
        let stamp = format_timestamp(now);
        if let Some(object) = document.as_object_mut() {
            object.insert("id".to_owned(), Value::String(id.clone()));
            if object.get("engagementId").is_none_or(Value::is_null) {
                object.insert("engagementId".to_owned(), Value::String(mint.id()));
            }
            object.insert("createdDateTime".to_owned(), Value::String(stamp.clone()));
            object.insert("updatedDateTime".to_owned(), Value::String(stamp));
            object.insert("eTag".to_owned(), Value::String(mint.etag()));
        }
        self.referrals.insert(
            id,
            Stored {
                document: document.clone(),
                created: now,
                updated: now,
            },
        );
        Ok(document)
    }

    /// `PATCH /engagements/referrals/{id}`: `add`/`replace` only, `If-Match`
    /// honoured when given, the result checked against the service rules.
    pub fn patch(
        &mut self,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
        mint: &mut dyn Mint,
    ) -> Result<Value, Rejection> {
        let before = self.existing(id)?;
        let operations = rules::parse_client_patch(body)?;
        if let Some(if_match) = if_match {
            check_if_match(id, if_match, &before.document)?;
        }
        let after = rules::apply_patch(&before.document, &operations)?;
        rules::check_write(Some(&before.document), &after)?;
        Ok(self.save(id, after, mint))
    }

    /// `PUT /engagements/referrals/{id}`: a full replace that needs
    /// `If-Match` and keeps what the service owns.
    pub fn replace(
        &mut self,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
        mint: &mut dyn Mint,
    ) -> Result<Value, Rejection> {
        let before = self.existing(id)?;
        let Some(if_match) = if_match else {
            return Err(Rejection::PreconditionRequired { id: id.to_owned() });
        };
        rules::check_complete(body)?;
        check_if_match(id, if_match, &before.document)?;
        let mut after = body.clone();
        if let Some(object) = after.as_object_mut() {
            for field in rules::READ_ONLY_FIELDS {
                match before.document.get(*field) {
                    Some(kept) => object.insert((*field).to_owned(), kept.clone()),
                    None => object.remove(*field),
                };
            }
        }
        rules::check_write(Some(&before.document), &after)?;
        Ok(self.save(id, after, mint))
    }

    /// Someone editing the referral in Partner Center: any JSON Patch
    /// operation, no status rules, but a new eTag like any write. With
    /// `if_match`, only on the version the edit was made from (a seller
    /// saving a page loaded before someone else's write gets 412).
    pub fn seller_edit(
        &mut self,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
        mint: &mut dyn Mint,
    ) -> Result<Value, Rejection> {
        let before = self.existing(id)?;
        let operations = rules::parse_seller_edit(body)?;
        if let Some(if_match) = if_match {
            check_if_match(id, if_match, &before.document)?;
        }
        let after = rules::apply_patch(&before.document, &operations)?;
        Ok(self.save(id, after, mint))
    }

    /// The referral is gone from Partner Center.
    pub fn remove(&mut self, id: &str) -> Result<Value, Rejection> {
        self.referrals
            .remove(id)
            .map(|stored| stored.document)
            .ok_or_else(|| Rejection::NotFound { id: id.to_owned() })
    }

    pub fn list(&self, query: &ListQuery) -> Page {
        let mut matching: Vec<(SortKey, &Value)> = self
            .referrals
            .iter()
            .filter(|(_, stored)| query.matches(&stored.document))
            .map(|(id, stored)| {
                let at = match query.order.field {
                    OrderField::CreatedDateTime => stored.created,
                    OrderField::UpdatedDateTime => stored.updated,
                };
                (SortKey { at, id: id.clone() }, &stored.document)
            })
            .collect();
        matching.sort_by(|(a, _), (b, _)| a.cmp(b));
        if query.order.descending {
            matching.reverse();
        }
        let start = match &query.after {
            None => 0,
            Some(after) if query.order.descending => {
                matching.partition_point(|(key, _)| key >= after)
            }
            Some(after) => matching.partition_point(|(key, _)| key <= after),
        };
        let end = (start + query.top).min(matching.len());
        let next = (end < matching.len() && end > start).then(|| matching[end - 1].0.clone());
        Page {
            value: matching[start..end]
                .iter()
                .map(|(_, document)| query.project(document))
                .collect(),
            count: matching.len(),
            next,
        }
    }

    fn existing(&self, id: &str) -> Result<Stored, Rejection> {
        self.referrals
            .get(id)
            .cloned()
            .ok_or_else(|| Rejection::NotFound { id: id.to_owned() })
    }

    /// Every successful write gets a new eTag and `updatedDateTime`.
    fn save(&mut self, id: &str, mut document: Value, mint: &mut dyn Mint) -> Value {
        let now = mint.now();
        if let Some(object) = document.as_object_mut() {
            object.insert("eTag".to_owned(), Value::String(mint.etag()));
            object.insert(
                "updatedDateTime".to_owned(),
                Value::String(format_timestamp(now)),
            );
        }
        if let Some(stored) = self.referrals.get_mut(id) {
            stored.document = document.clone();
            stored.updated = now;
        }
        document
    }
}

fn id_of(document: &Value) -> &str {
    document
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// `If-Match` holds the eTag exactly as the service sent it (quotes
/// included), a comma-separated list of such, or `*`.
fn check_if_match(id: &str, if_match: &str, current: &Value) -> Result<(), Rejection> {
    let current = current
        .get("eTag")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let sent = if_match.trim();
    if sent == "*" || sent.split(',').any(|candidate| candidate.trim() == current) {
        return Ok(());
    }
    Err(Rejection::PreconditionFailed {
        id: id.to_owned(),
        sent: sent.to_owned(),
        current: current.to_owned(),
    })
}

fn timestamp_or(
    object: &mut serde_json::Map<String, Value>,
    member: &str,
    default: DateTime<Utc>,
) -> Result<DateTime<Utc>, Rejection> {
    match object.get(member) {
        None | Some(Value::Null) => {
            object.insert(member.to_owned(), Value::String(format_timestamp(default)));
            Ok(default)
        }
        Some(Value::String(text)) => DateTime::parse_from_rfc3339(text)
            .map(|at| at.with_timezone(&Utc))
            .map_err(|_| invalid_timestamp(member, &Value::String(text.clone()))),
        Some(other) => Err(invalid_timestamp(member, other)),
    }
}

fn invalid_timestamp(member: &str, value: &Value) -> Rejection {
    Rejection::InvalidValue {
        path: format!("/{member}"),
        value: value.to_string(),
        expected: "an RFC 3339 date-time".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic: one second per tick, numbered eTags and ids.
    struct CountingMint {
        tick: i64,
    }

    impl Mint for CountingMint {
        fn now(&mut self) -> DateTime<Utc> {
            self.tick += 1;
            DateTime::UNIX_EPOCH + chrono::Duration::seconds(self.tick)
        }
        fn etag(&mut self) -> String {
            self.tick += 1;
            format!("\"etag-{}\"", self.tick)
        }
        fn id(&mut self) -> String {
            self.tick += 1;
            format!("id-{}", self.tick)
        }
    }

    fn mint() -> CountingMint {
        CountingMint { tick: 0 }
    }

    fn new_referral() -> Value {
        json!({
            "name": "Contoso",
            "type": "Independent",
            "customerProfile": {"name": "Contoso"},
            "consent": {"consentToContact": true},
            "details": {"dealValue": 10, "currency": "USD"},
        })
    }

    fn store_with_one(mint: &mut CountingMint) -> (ReferralStore, Value) {
        let mut store = ReferralStore::new();
        let created = store.create(&new_referral(), mint).unwrap();
        (store, created)
    }

    #[test]
    fn create_assigns_what_the_service_owns_and_defaults_the_status() {
        let mut mint = mint();
        let mut body = new_referral();
        body["id"] = json!("chosen-by-client");
        let (_, created) = {
            let mut store = ReferralStore::new();
            let created = store.create(&body, &mut mint).unwrap();
            (store, created)
        };
        assert_eq!(created["id"], "id-2");
        assert_eq!(created["engagementId"], "id-3");
        assert_eq!(created["eTag"], "\"etag-4\"");
        assert_eq!(created["createdDateTime"], "1970-01-01T00:00:01.0000000Z");
        assert_eq!(created["updatedDateTime"], created["createdDateTime"]);
        assert_eq!(created["status"], "New");
        assert_eq!(created["substatus"], "Received");
    }

    #[test]
    fn create_refuses_a_missing_required_member() {
        let mut body = new_referral();
        body.as_object_mut().unwrap().remove("consent");
        let error = ReferralStore::new().create(&body, &mut mint()).unwrap_err();
        assert_eq!(error.to_string(), "consent is required");
    }

    #[test]
    fn patch_applies_and_stamps_a_new_etag_and_update_time() {
        let mut mint = mint();
        let (mut store, created) = store_with_one(&mut mint);
        let id = created["id"].as_str().unwrap();
        let body = json!([
            {"op": "replace", "path": "/details/dealValue", "value": 20},
            {"op": "add", "path": "/details/notes", "value": "n"},
            {"op": "replace", "path": "/status", "value": "Active"},
            {"op": "replace", "path": "/substatus", "value": "Accepted"},
        ]);
        let etag = created["eTag"].as_str().unwrap();
        let patched = store.patch(id, &body, Some(etag), &mut mint).unwrap();
        assert_eq!(patched["details"]["dealValue"], 20);
        assert_eq!(patched["details"]["notes"], "n");
        assert_eq!(patched["status"], "Active");
        assert_ne!(patched["eTag"], created["eTag"]);
        assert!(patched["updatedDateTime"].as_str() > created["updatedDateTime"].as_str());
        assert_eq!(store.get(id), Some(&patched));
    }

    #[test]
    fn patch_with_a_stale_etag_changes_nothing() {
        let mut mint = mint();
        let (mut store, created) = store_with_one(&mut mint);
        let id = created["id"].as_str().unwrap();
        let body = json!([{"op": "replace", "path": "/name", "value": "x"}]);
        let error = store
            .patch(id, &body, Some("\"stale\""), &mut mint)
            .unwrap_err();
        assert_eq!(
            error,
            Rejection::PreconditionFailed {
                id: id.into(),
                sent: "\"stale\"".into(),
                current: "\"etag-4\"".into(),
            }
        );
        assert_eq!(store.get(id), Some(&created));
        // Unquoted is not the eTag the service sent; `*` matches any.
        assert!(store.patch(id, &body, Some("etag-4"), &mut mint).is_err());
        assert!(store.patch(id, &body, Some("*"), &mut mint).is_ok());
    }

    #[test]
    fn a_rejected_patch_changes_nothing() {
        let mut mint = mint();
        let (mut store, created) = store_with_one(&mut mint);
        let id = created["id"].as_str().unwrap();
        let closing = json!([
            {"op": "replace", "path": "/status", "value": "Closed"},
            {"op": "replace", "path": "/substatus", "value": "Won"},
        ]);
        store.patch(id, &closing, None, &mut mint).unwrap();
        let closed = store.get(id).cloned().unwrap();
        let reopening = json!([
            {"op": "replace", "path": "/name", "value": "renamed"},
            {"op": "replace", "path": "/status", "value": "Active"},
            {"op": "replace", "path": "/substatus", "value": "Accepted"},
        ]);
        assert_eq!(
            store.patch(id, &reopening, None, &mut mint),
            Err(Rejection::TransitionNotAllowed {
                from: "Closed".into(),
                to: "Active".into()
            })
        );
        assert_eq!(store.get(id), Some(&closed));
    }

    #[test]
    fn patch_of_an_unknown_referral_is_not_found() {
        let body = json!([{"op": "replace", "path": "/name", "value": "x"}]);
        assert_eq!(
            ReferralStore::new().patch("nope", &body, None, &mut mint()),
            Err(Rejection::NotFound { id: "nope".into() })
        );
    }

    #[test]
    fn replace_needs_if_match_and_keeps_service_fields() {
        let mut mint = mint();
        let (mut store, created) = store_with_one(&mut mint);
        let id = created["id"].as_str().unwrap();
        let mut body = new_referral();
        body["name"] = json!("replaced");
        body["id"] = json!("other");
        body["createdDateTime"] = json!("2000-01-01T00:00:00Z");
        body["status"] = json!("New");
        body["substatus"] = json!("Pending");
        assert_eq!(
            store.replace(id, &body, None, &mut mint),
            Err(Rejection::PreconditionRequired { id: id.into() })
        );
        assert!(matches!(
            store.replace(id, &body, Some("\"old\""), &mut mint),
            Err(Rejection::PreconditionFailed { .. })
        ));
        let mut with_links = body.clone();
        with_links["links"] = json!({});
        assert_eq!(
            store.replace(id, &with_links, Some("*"), &mut mint),
            Err(Rejection::ReadOnlyField {
                path: "/links".into()
            })
        );
        let etag = created["eTag"].as_str().unwrap();
        let replaced = store.replace(id, &body, Some(etag), &mut mint).unwrap();
        assert_eq!(replaced["name"], "replaced");
        assert_eq!(replaced["id"], created["id"]);
        assert_eq!(replaced["createdDateTime"], created["createdDateTime"]);
        assert_eq!(replaced["substatus"], "Pending");
        assert_ne!(replaced["eTag"], created["eTag"]);
    }

    #[test]
    fn seller_edits_skip_the_status_rules_but_bump_the_etag() {
        let mut mint = mint();
        let (mut store, created) = store_with_one(&mut mint);
        let id = created["id"].as_str().unwrap();
        let edit = json!([
            {"op": "replace", "path": "/status", "value": "Closed"},
            {"op": "replace", "path": "/substatus", "value": "Accepted"},
            {"op": "remove", "path": "/name"},
        ]);
        let edited = store.seller_edit(id, &edit, None, &mut mint).unwrap();
        assert_eq!(edited["status"], "Closed");
        assert!(edited.get("name").is_none());
        assert_ne!(edited["eTag"], created["eTag"]);
    }

    #[test]
    fn a_seller_edit_with_if_match_applies_only_to_that_version() {
        let mut mint = mint();
        let (mut store, created) = store_with_one(&mut mint);
        let id = created["id"].as_str().unwrap();
        let etag = created["eTag"].as_str().unwrap();
        let edit = json!([{"op": "add", "path": "/name", "value": "seller"}]);
        let edited = store.seller_edit(id, &edit, Some(etag), &mut mint).unwrap();
        assert_eq!(edited["name"], "seller");
        let again = json!([{"op": "add", "path": "/name", "value": "stale"}]);
        assert!(matches!(
            store.seller_edit(id, &again, Some(etag), &mut mint),
            Err(Rejection::PreconditionFailed { .. })
        ));
        assert_eq!(store.get(id).unwrap()["name"], "seller");
    }

    #[test]
    fn insert_fills_in_identity_and_refuses_duplicates_and_bad_dates() {
        let mut mint = mint();
        let mut store = ReferralStore::new();
        let inserted = store
            .insert(json!({"name": "seeded", "links": {"self": {}}}), &mut mint)
            .unwrap();
        assert_eq!(inserted["id"], "id-1");
        assert!(inserted.get("links").is_none());
        assert_eq!(inserted["updatedDateTime"], inserted["createdDateTime"]);
        assert_eq!(
            store.insert(json!({"id": "id-1"}), &mut mint),
            Err(Rejection::AlreadyExists { id: "id-1".into() })
        );
        let error = store
            .insert(
                json!({"id": "x", "createdDateTime": "yesterday"}),
                &mut mint,
            )
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "/createdDateTime: \"yesterday\" is not an RFC 3339 date-time"
        );
        let kept = store
            .insert(
                json!({"id": "y", "eTag": "\"seeded\"", "createdDateTime": "2018-11-06T18:40:42.6178337Z"}),
                &mut mint,
            )
            .unwrap();
        assert_eq!(kept["eTag"], "\"seeded\"");
        assert_eq!(kept["createdDateTime"], "2018-11-06T18:40:42.6178337Z");
    }

    fn seeded(count: usize) -> ReferralStore {
        let mut mint = mint();
        let mut store = ReferralStore::new();
        for n in 0..count {
            // Pairs share a creation time so that the id breaks the tie.
            let created = format!("2024-01-01T00:00:{:02}Z", n / 2);
            let status = if n % 3 == 0 { "Active" } else { "New" };
            store
                .insert(
                    json!({"id": format!("r{n:03}"), "createdDateTime": created, "status": status}),
                    &mut mint,
                )
                .unwrap();
        }
        store
    }

    fn ids(page: &Page) -> Vec<&str> {
        page.value
            .iter()
            .map(|d| d["id"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn pages_follow_creation_order_and_end_without_a_next_key() {
        let store = seeded(25);
        let mut query = ListQuery::parse(&[("$top".into(), "10".into())]).unwrap();
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let page = store.list(&query);
            assert_eq!(page.count, 25);
            seen.extend(ids(&page).into_iter().map(str::to_owned));
            pages += 1;
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        let expected: Vec<String> = (0..25).map(|n| format!("r{n:03}")).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_full_last_page_has_no_next_key() {
        let store = seeded(20);
        let query = ListQuery::parse(&[("$top".into(), "20".into())]).unwrap();
        let page = store.list(&query);
        assert_eq!(page.value.len(), 20);
        assert_eq!(page.next, None);
    }

    #[test]
    fn descending_pages_and_filters() {
        let store = seeded(9);
        let pairs = [
            ("$top".to_owned(), "2".to_owned()),
            ("$orderby".to_owned(), "createdDateTime desc".to_owned()),
            ("$filter".to_owned(), "status eq 'Active'".to_owned()),
        ];
        let mut query = ListQuery::parse(&pairs).unwrap();
        let first = store.list(&query);
        assert_eq!(ids(&first), ["r006", "r003"]);
        assert_eq!(first.count, 3);
        query.after = first.next;
        let second = store.list(&query);
        assert_eq!(ids(&second), ["r000"]);
        assert_eq!(second.next, None);
    }

    #[test]
    fn ordering_by_update_time_follows_writes() {
        let mut mint = mint();
        let mut store = ReferralStore::new();
        for id in ["a", "b", "c"] {
            store.insert(json!({"id": id}), &mut mint).unwrap();
        }
        store
            .seller_edit(
                "a",
                &json!([{"op": "add", "path": "/x", "value": 1}]),
                None,
                &mut mint,
            )
            .unwrap();
        let query = ListQuery::parse(&[("$orderby".into(), "updatedDateTime".into())]).unwrap();
        assert_eq!(ids(&store.list(&query)), ["b", "c", "a"]);
    }

    #[test]
    fn timestamps_have_seven_fractional_digits() {
        let at = DateTime::parse_from_rfc3339("2018-11-06T18:40:42.617833712Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(format_timestamp(at), "2018-11-06T18:40:42.6178337Z");
    }

    #[test]
    fn the_system_mint_never_repeats_a_timestamp() {
        let mut mint = SystemMint::default();
        let stamps: Vec<String> = (0..1000).map(|_| format_timestamp(mint.now())).collect();
        assert!(stamps.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(mint.etag().starts_with('"') && mint.etag().ends_with('"'));
    }
}
