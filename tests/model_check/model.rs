//! The reference model: for every owned path of every record, what the
//! issue's rules say Partner Center must hold once a quiet cycle has run,
//! kept as the history unfolds; and for every member set only in Partner
//! Center, the value that must survive.
//!
//! The rule, per owned path (`sync.conflict = "crm-wins"`, the default):
//!
//! - the CRM's last value lands, unless a seller changed the path after
//!   the CRM's last change of it *and* after that value had landed in
//!   Partner Center: then the seller's value survives;
//! - if both changed between two syncs (the seller's edit came before the
//!   CRM's value landed), the CRM wins;
//! - an owned path the CRM never had a value for is left as Partner Center
//!   has it (absent is not cleared); a value the CRM had, that landed, and
//!   that it then lost is cleared (`sync.on_cleared = "null"`).
//!
//! A CRM change is one a sync can see: the CRM read in the exports its
//! cycles read. A path the CRM takes back, before the next cycle, to the
//! value it had when the last one ran has not changed at all (a lead moved
//! from Lost to Qualified and back to Lost between two cycles leaves a
//! seller's close made meanwhile standing, as it leaves any other value).
//!
//! Where the rules leave two outcomes open the model accepts both, and
//! says why: a landing seen only after a crash or a `204` (the sync cannot
//! know its write was the last one), or a CRM value that never landed and
//! was then cleared.
//!
//! Status and substatus are one path. A CRM status the transition table
//! forbids from the status Partner Center holds is not expected to land:
//! then Partner Center's status must be kept and the record reported
//! invalid.
//!
//! Team members are keyed by email: the CRM's contact is the element
//! carrying its email, wherever it stands in the list.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Value, json};

use crate::seller::{ContactMember, OwnedMember, may_move, team_index};

/// Owned members other than status, the team and `externalReferenceId`.
pub fn owned_pointers() -> Vec<String> {
    let mut pointers: Vec<String> = OwnedMember::ALL.iter().map(|m| m.pointer()).collect();
    pointers.push("/statusReason".into());
    pointers
}

/// An owned path: a member, a member of a keyed team element, or the
/// status pair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Pointer(String),
    Contact { email: String, member: &'static str },
    Status,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Pointer(p) => f.write_str(p),
            Key::Contact { email, member } => {
                write!(f, "/customerProfile/team[email={email}]/{member}")
            }
            Key::Status => f.write_str("/status + /substatus"),
        }
    }
}

/// `null` and absent are the same empty value.
fn non_null(value: Option<&Value>) -> Option<Value> {
    value.filter(|v| !v.is_null()).cloned()
}

/// The value `key` has in `document`.
pub fn value_of(document: &Value, key: &Key) -> Option<Value> {
    match key {
        Key::Pointer(p) => non_null(document.pointer(p)),
        Key::Contact { email, member } => {
            let index = team_index(document, email)?;
            non_null(document.pointer(&format!("/customerProfile/team/{index}/{member}")))
        }
        Key::Status => {
            let status = non_null(document.get("status"));
            let substatus = non_null(document.get("substatus"));
            match (status, substatus) {
                (None, None) => None,
                (a, b) => Some(json!([a, b])),
            }
        }
    }
}

/// The CRM's owned values in a desired document: every pointer (empty
/// when absent), the status pair, and the members of every team element
/// with an email.
pub fn crm_values(desired: &Value) -> BTreeMap<Key, Option<Value>> {
    let mut values = BTreeMap::new();
    for p in owned_pointers() {
        let key = Key::Pointer(p);
        values.insert(key.clone(), value_of(desired, &key));
    }
    values.insert(Key::Status, value_of(desired, &Key::Status));
    if let Some(team) = desired
        .pointer("/customerProfile/team")
        .and_then(Value::as_array)
    {
        for element in team {
            let Some(email) = element.get("email").and_then(Value::as_str) else {
                continue;
            };
            for member in ContactMember::ALL {
                values.insert(
                    Key::Contact {
                        email: email.to_ascii_lowercase(),
                        member: member.name(),
                    },
                    non_null(element.get(member.name())),
                );
            }
        }
    }
    values
}

/// How sure we are that the sync knew its value had landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Landing {
    /// Seen after a crash, a `204`, or mid-cycle: applied, but perhaps
    /// never acknowledged.
    Unacknowledged,
    /// Seen after a cycle that settled the record.
    Acknowledged,
}

#[derive(Debug, Clone)]
struct SellerMark {
    at: u64,
    value: Value,
    /// Whether the CRM's value (as of `at`) had landed when the seller
    /// made the edit.
    after_landing: Option<Landing>,
    /// What the last settled sync had left there when the seller made the
    /// edit.
    acknowledged_before: Option<Option<Value>>,
}

#[derive(Debug, Clone)]
struct PathState {
    /// `None`: the CRM does not map this path now (a contact it no longer
    /// has). `Some(None)`: it maps it, empty.
    crm: Option<Option<Value>>,
    crm_changed_at: u64,
    /// Since `crm_changed_at`.
    landed: Option<Landing>,
    crm_had_value: bool,
    /// A value of the CRM's was seen landed after a cycle settled the
    /// record (not only after a crash or a 204).
    crm_had_landed_value: bool,
    seller: Option<SellerMark>,
    /// The value Partner Center held when a cycle last settled the record.
    acknowledged: Option<Option<Value>>,
    /// The CRM's side as the last cycle left it.
    after_cycle: Option<AfterCycle>,
}

/// The CRM's value of a path, when it last changed and whether it had
/// landed, as they stood once a cycle had run (at `at`). A sync sees the
/// CRM only in the exports its cycles read: when the CRM goes back to this
/// value before the next cycle, the values it held in between were never
/// seen, and its last change is this one again.
#[derive(Debug, Clone)]
struct AfterCycle {
    at: u64,
    crm: Option<Option<Value>>,
    crm_changed_at: u64,
    landed: Option<Landing>,
}

impl PathState {
    fn unmapped() -> PathState {
        PathState {
            crm: None,
            crm_changed_at: 0,
            landed: None,
            crm_had_value: false,
            crm_had_landed_value: false,
            seller: None,
            acknowledged: None,
            after_cycle: None,
        }
    }

    /// The values the rules allow once a quiet cycle has run, and why;
    /// `None` when the CRM has no say.
    fn acceptable(&self) -> Option<(Vec<Option<Value>>, &'static str)> {
        let (mut values, why) = self.rule()?;
        let mut unique = Vec::with_capacity(values.len());
        for v in values.drain(..) {
            if !unique.contains(&v) {
                unique.push(v);
            }
        }
        Some((unique, why))
    }

    fn rule(&self) -> Option<(Vec<Option<Value>>, &'static str)> {
        let crm = self.crm.clone()?;
        if let Some(s) = &self.seller
            && s.at > self.crm_changed_at
        {
            match s.after_landing {
                Some(Landing::Acknowledged) => {
                    return Some((
                        vec![Some(s.value.clone())],
                        "a seller changed it after the CRM's value had landed: the seller's value survives",
                    ));
                }
                Some(Landing::Unacknowledged) => {
                    return Some((
                        vec![Some(s.value.clone()), crm],
                        "a seller changed it after the CRM's value was applied but perhaps never acknowledged: either may stand",
                    ));
                }
                None if crm.is_some() => {
                    return Some((
                        vec![crm],
                        "changed in the CRM and by a seller between two syncs: crm-wins",
                    ));
                }
                None => {}
            }
        }
        // The CRM changed it after the seller, but only back to what the
        // last settled sync left: between the two syncs only the seller's
        // change shows.
        if let Some(s) = &self.seller
            && s.at > 0
            && s.acknowledged_before.as_ref() == Some(&crm)
        {
            return Some((
                vec![Some(s.value.clone()), crm],
                "the CRM went back to the value of the last sync after a seller changed it: either may stand",
            ));
        }
        if crm.is_none() {
            let partner_center = self.seller.as_ref().map(|s| s.value.clone());
            if !self.crm_had_value {
                return Some((
                    vec![partner_center],
                    "the CRM never had a value: Partner Center's is kept (absent is not cleared)",
                ));
            }
            if self.crm_had_landed_value {
                return Some((
                    vec![None],
                    "the CRM had a value that landed and then cleared it: cleared",
                ));
            }
            if partner_center.is_none() {
                return Some((
                    vec![None],
                    "the CRM had a value, then cleared it, and no seller set one: cleared",
                ));
            }
            return Some((
                vec![None, partner_center],
                "the CRM had a value that never landed as far as the sync could know, then cleared it: either",
            ));
        }
        Some((vec![crm], "the CRM's last value lands"))
    }
}

/// One record of the history, as the model sees it.
pub struct RecordModel {
    pub external_id: String,
    paths: BTreeMap<Key, PathState>,
    /// Unowned members a seller set: pointer → value.
    unowned: BTreeMap<String, Value>,
    /// Team members a seller added, by email, in the order added.
    seller_members: Vec<(String, Value)>,
    /// Every email the CRM's contact has had.
    crm_emails: BTreeSet<String>,
    /// Of those, the ones seen in Partner Center's team.
    crm_emails_seen_live: BTreeSet<String>,
    /// Every status pair Partner Center has been seen holding or a seller
    /// set.
    statuses_seen: BTreeSet<String>,
    /// The CRM's contact email now.
    pub contact_email: Option<String>,
}

/// A broken invariant.
#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: &'static str,
    pub record: Option<String>,
    pub path: String,
    pub expected: String,
    pub found: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.invariant)?;
        if let Some(record) = &self.record {
            write!(f, " record {record}")?;
        }
        write!(
            f,
            " {}: expected {}, found {}",
            self.path, self.expected, self.found
        )
    }
}

pub const OWNED: &str = "1 owned path";
pub const SURVIVES: &str = "2 Partner Center's own edit survives";
pub const ONE_REFERRAL: &str = "3 one referral per externalReferenceId";
pub const NO_INVALID_REQUEST: &str = "4 no request refused as invalid";
pub const INTEGRITY: &str = "5 store integrity";
pub const QUIET: &str = "6 a second quiet cycle sends nothing";
pub const SETTLED: &str = "7 record settled after a quiet cycle";

fn show(value: &Option<Value>) -> String {
    value
        .as_ref()
        .map(Value::to_string)
        .unwrap_or_else(|| "nothing".into())
}

impl RecordModel {
    pub fn new(external_id: String) -> RecordModel {
        let mut paths = BTreeMap::new();
        for p in owned_pointers() {
            let mut state = PathState::unmapped();
            state.crm = Some(None);
            paths.insert(Key::Pointer(p), state);
        }
        let mut status = PathState::unmapped();
        status.crm = Some(None);
        paths.insert(Key::Status, status);
        RecordModel {
            external_id,
            paths,
            unowned: BTreeMap::new(),
            seller_members: Vec::new(),
            crm_emails: BTreeSet::new(),
            crm_emails_seen_live: BTreeSet::new(),
            statuses_seen: BTreeSet::new(),
            contact_email: None,
        }
    }

    /// A referral Partner Center held before the history began, as if a
    /// seller had filled it in at time 0. `crm_email` is the CRM contact's.
    pub fn existing(&mut self, referral: &Value, crm_email: Option<&str>) {
        for p in owned_pointers() {
            if let Some(v) = non_null(referral.pointer(&p)) {
                self.seller_set(0, Key::Pointer(p), v);
            }
        }
        if let Some(status) = value_of(referral, &Key::Status) {
            self.seller_set(0, Key::Status, status);
        }
        for pointer in [
            "/customerProfile/address/region",
            "/customerProfile/size",
            "/details/requirements",
        ] {
            if let Some(v) = non_null(referral.pointer(pointer)) {
                self.unowned.insert(pointer.into(), v);
            }
        }
        let team = referral
            .pointer("/customerProfile/team")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for member in team {
            let email = member["email"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if Some(email.as_str()) == crm_email {
                for m in ContactMember::ALL {
                    if let Some(v) = non_null(member.get(m.name())) {
                        self.seller_set(
                            0,
                            Key::Contact {
                                email: email.clone(),
                                member: m.name(),
                            },
                            v,
                        );
                    }
                }
            } else {
                self.seller_members.push((email, member));
            }
        }
    }

    /// The CRM's desired document at time `at`.
    pub fn crm_now(&mut self, at: u64, desired: &Value) {
        let values = crm_values(desired);
        let keys: BTreeSet<Key> = self.paths.keys().chain(values.keys()).cloned().collect();
        for key in keys {
            let new = match (&key, values.get(&key)) {
                (_, Some(v)) => Some(v.clone()),
                (Key::Contact { .. }, None) => None,
                (_, None) => Some(None),
            };
            let state = self
                .paths
                .entry(key.clone())
                .or_insert_with(PathState::unmapped);
            if state.crm != new {
                state.crm = new.clone();
                match state.after_cycle.as_ref().filter(|seen| seen.crm == new) {
                    // Back to what the last cycle left: no cycle saw the
                    // values in between. A seller's edit made meanwhile
                    // came after the change and the landing as the sync
                    // knows them.
                    Some(seen) => {
                        state.crm_changed_at = seen.crm_changed_at;
                        state.landed = seen.landed;
                        if let Some(mark) = &mut state.seller
                            && mark.at > seen.at
                            && mark.after_landing.is_none()
                        {
                            mark.after_landing = seen.landed;
                        }
                    }
                    None => {
                        state.crm_changed_at = at;
                        state.landed = None;
                    }
                }
            }
            if matches!(new, Some(Some(_))) {
                state.crm_had_value = true;
            }
            if let Key::Contact { email, .. } = &key
                && new.is_some()
            {
                self.crm_emails.insert(email.clone());
            }
        }
        self.contact_email = desired
            .pointer("/customerProfile/team/0/email")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase);
    }

    /// What Partner Center holds now (`None`: no referral yet).
    /// `acknowledged`: a cycle just settled the record, so the sync has
    /// what it holds as its base.
    pub fn observe(&mut self, live: Option<&Value>, acknowledged: bool) {
        let Some(live) = live else { return };
        if let Some(status) = value_of(live, &Key::Status) {
            self.statuses_seen.insert(status.to_string());
        }
        for email in &self.crm_emails {
            if team_index(live, email).is_some() {
                self.crm_emails_seen_live.insert(email.clone());
            }
        }
        for (key, state) in &mut self.paths {
            let Some(crm) = state.crm.clone() else {
                continue;
            };
            let here = value_of(live, key);
            // The CRM's value written over a seller's edit that the rules
            // say it wins against: that edit is gone from Partner Center.
            if crm.is_some()
                && here == crm
                && state.seller.is_some()
                && state
                    .acceptable()
                    .is_some_and(|(values, _)| values == [crm.clone()])
            {
                state.seller = None;
            }
            let crm = &crm;
            if &here == crm {
                // Only a cycle that settled the record after the CRM's change
                // makes the landing certain: Partner Center merely holding
                // the value (a seller's equal status, a revert to what the
                // last sync left) reads either way — the base says nothing
                // is to send, the timeline says no sync has run since.
                let landing = if acknowledged {
                    Landing::Acknowledged
                } else {
                    Landing::Unacknowledged
                };
                state.landed = state.landed.max(Some(landing));
                if crm.is_some() && landing == Landing::Acknowledged {
                    state.crm_had_landed_value = true;
                }
            }
            if acknowledged {
                state.acknowledged = Some(here);
            }
        }
    }

    /// A cycle has run and Partner Center has been observed after it, at
    /// time `at`.
    pub fn cycle_ran(&mut self, at: u64) {
        for state in self.paths.values_mut() {
            state.after_cycle = Some(AfterCycle {
                at,
                crm: state.crm.clone(),
                crm_changed_at: state.crm_changed_at,
                landed: state.landed,
            });
        }
    }

    /// A seller set `key` to `value` at time `at` (after [`observe`]).
    pub fn seller_set(&mut self, at: u64, key: Key, value: Value) {
        if key == Key::Status {
            self.statuses_seen.insert(value.to_string());
        }
        let state = self.paths.entry(key).or_insert_with(PathState::unmapped);
        state.seller = Some(SellerMark {
            at,
            value,
            after_landing: state.landed,
            acknowledged_before: state.acknowledged.clone(),
        });
    }

    /// The seller's last edit of `key` may have come before or after the
    /// sync's write of it (a race whose order could not be pinned down):
    /// either value may stand.
    pub fn seller_order_unknown(&mut self, key: &Key) {
        if let Some(state) = self.paths.get_mut(key)
            && let Some(mark) = &mut state.seller
            && mark.after_landing.is_none()
        {
            mark.after_landing = Some(Landing::Unacknowledged);
        }
    }

    pub fn seller_unowned(&mut self, pointer: &str, value: Value) {
        self.unowned.insert(pointer.into(), value);
    }

    pub fn seller_added_member(&mut self, member: Value) {
        let email = member["email"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        self.seller_members.push((email, member));
    }

    /// The email of the `pick`-th member a seller added.
    pub fn seller_member_email(&self, pick: u32) -> Option<String> {
        if self.seller_members.is_empty() {
            return None;
        }
        let index = pick as usize % self.seller_members.len();
        Some(self.seller_members[index].0.clone())
    }

    pub fn seller_renamed_member(&mut self, email: &str, last_name: Value) {
        for (e, member) in &mut self.seller_members {
            if e == email {
                member["lastName"] = last_name.clone();
            }
        }
    }

    /// Check Partner Center's referrals for this record (all of those
    /// carrying its external id) after a quiet cycle, and the record's
    /// state in the store; every broken invariant goes to `violations`.
    pub fn check(
        &self,
        referrals: &[&Value],
        store_state: Option<&str>,
        violations: &mut Vec<Violation>,
    ) {
        let record = Some(self.external_id.clone());
        let mut violation = |invariant, path: String, expected: String, found: String| {
            violations.push(Violation {
                invariant,
                record: record.clone(),
                path,
                expected,
                found,
            });
        };
        let live = match referrals {
            [one] => *one,
            [] => {
                violation(
                    ONE_REFERRAL,
                    "/".into(),
                    "one referral".into(),
                    "none".into(),
                );
                return;
            }
            many => {
                let ids: Vec<String> = many.iter().map(|r| r["id"].to_string()).collect();
                violation(
                    ONE_REFERRAL,
                    "/".into(),
                    "one referral".into(),
                    format!("{} referrals: {}", many.len(), ids.join(", ")),
                );
                many[0]
            }
        };
        let mut refused_status = false;
        // A CRM status Partner Center's cannot move to, where the rules
        // allow either the CRM's or the seller's: the sync may have tried
        // (and reported the record invalid) or not.
        let mut refusal_possible = false;
        for (key, state) in &self.paths {
            let Some((acceptable, why)) = state.acceptable() else {
                continue;
            };
            let here = value_of(live, key);
            if *key == Key::Status
                && let (Some(Some(crm)), Some(held)) = (&state.crm, &here)
                && crm != held
                && acceptable.contains(&Some(crm.clone()))
                && !may_move(
                    held[0].as_str().unwrap_or(""),
                    crm[0].as_str().unwrap_or(""),
                )
            {
                refusal_possible = true;
            }
            if acceptable.contains(&here) {
                continue;
            }
            if *key == Key::Status
                && let (Some(Some(wanted)), Some(held)) = (&state.crm, &here)
                && acceptable.contains(&Some(wanted.clone()))
                && !may_move(
                    held[0].as_str().unwrap_or(""),
                    wanted[0].as_str().unwrap_or(""),
                )
                && self.statuses_seen.contains(&held.to_string())
            {
                // The table forbids the CRM's move from what Partner Center
                // holds: kept, and the record reported invalid (certainly
                // when the CRM's status was the only one allowed).
                if acceptable.len() == 1 {
                    refused_status = true;
                }
                continue;
            }
            if *key == Key::Pointer("/statusReason".into()) {
                continue;
            }
            if let Key::Contact { email, .. } = key
                && team_index(live, email).is_none()
            {
                continue;
            }
            let expected = acceptable.iter().map(show).collect::<Vec<_>>().join(" or ");
            violation(
                OWNED,
                key.to_string(),
                format!("{expected} ({why})"),
                show(&here),
            );
        }
        // The status reason moves with the status: checked when the status
        // is the CRM's.
        if !refused_status
            && let Some(state) = self.paths.get(&Key::Pointer("/statusReason".into()))
            && let Some((acceptable, why)) = state.acceptable()
            && self.paths[&Key::Status].acceptable().is_some_and(|(a, _)| {
                a.len() == 1 && a[0] == self.paths[&Key::Status].crm.clone().flatten()
            })
        {
            let here = value_of(live, &Key::Pointer("/statusReason".into()));
            if !acceptable.contains(&here) {
                let expected = acceptable.iter().map(show).collect::<Vec<_>>().join(" or ");
                violation(
                    OWNED,
                    "/statusReason".into(),
                    format!("{expected} ({why})"),
                    show(&here),
                );
            }
        }
        if let Some(email) = &self.contact_email
            && team_index(live, email).is_none()
        {
            violation(
                OWNED,
                format!("/customerProfile/team[email={email}]"),
                "the CRM's contact in the team".into(),
                format!(
                    "no member with that email; team {}",
                    show(&non_null(live.pointer("/customerProfile/team")))
                ),
            );
        }
        for email in &self.crm_emails_seen_live {
            if Some(email) != self.contact_email.as_ref() && team_index(live, email).is_none() {
                violation(
                    SURVIVES,
                    format!("/customerProfile/team[email={email}]"),
                    "a contact the CRM no longer has left in place (there is no remove)".into(),
                    format!(
                        "gone; team {}",
                        show(&non_null(live.pointer("/customerProfile/team")))
                    ),
                );
            }
        }
        for (pointer, value) in &self.unowned {
            let here = non_null(live.pointer(pointer));
            if here.as_ref() != Some(value) {
                violation(
                    SURVIVES,
                    pointer.clone(),
                    format!("{value} (set only in Partner Center)"),
                    show(&here),
                );
            }
        }
        for (email, member) in &self.seller_members {
            let path = format!("/customerProfile/team[email={email}]");
            match team_index(live, email) {
                None => violation(
                    SURVIVES,
                    path,
                    format!("{member} (added in Partner Center)"),
                    format!(
                        "no member with that email; team {}",
                        show(&non_null(live.pointer("/customerProfile/team")))
                    ),
                ),
                Some(index) => {
                    let here = &live["customerProfile"]["team"][index];
                    for name in ["firstName", "lastName", "email"] {
                        if here.get(name) != member.get(name) {
                            violation(
                                SURVIVES,
                                format!("{path}/{name}"),
                                format!("{} (set in Partner Center)", member[name]),
                                show(&non_null(here.get(name))),
                            );
                        }
                    }
                }
            }
        }
        let wanted_state = if refused_status { "invalid" } else { "synced" };
        // A contact the CRM no longer has is left in place and reported: the
        // report may be the record's state.
        let contact_left = self
            .crm_emails_seen_live
            .iter()
            .any(|e| Some(e) != self.contact_email.as_ref());
        let either =
            (refusal_possible || contact_left) && matches!(store_state, Some("synced" | "invalid"));
        if store_state != Some(wanted_state) && !either {
            violation(
                SETTLED,
                "store row".into(),
                format!(
                    "state {wanted_state}{}",
                    if refused_status {
                        " (Partner Center keeps a status the CRM's cannot move to)"
                    } else {
                        ""
                    }
                ),
                store_state.unwrap_or("no row").to_owned(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path the CRM set to `crm` at time 2 (the record appeared at 1).
    fn path(crm: Option<Value>) -> PathState {
        let mut state = PathState::unmapped();
        state.crm = Some(crm.clone());
        state.crm_changed_at = 2;
        state.crm_had_value = crm.is_some();
        state
    }

    fn seller(at: u64, value: Value, after_landing: Option<Landing>) -> Option<SellerMark> {
        Some(SellerMark {
            at,
            value,
            after_landing,
            acknowledged_before: None,
        })
    }

    #[test]
    fn the_rule_per_owned_path() {
        let c = json!("crm");
        let s = json!("seller");
        let cases: Vec<(&str, PathState, Vec<Option<Value>>)> = vec![
            (
                "the CRM alone",
                path(Some(c.clone())),
                vec![Some(c.clone())],
            ),
            (
                "a seller after the CRM's value was acknowledged",
                PathState {
                    seller: seller(3, s.clone(), Some(Landing::Acknowledged)),
                    ..path(Some(c.clone()))
                },
                vec![Some(s.clone())],
            ),
            (
                "a seller after an unacknowledged landing",
                PathState {
                    seller: seller(3, s.clone(), Some(Landing::Unacknowledged)),
                    ..path(Some(c.clone()))
                },
                vec![Some(s.clone()), Some(c.clone())],
            ),
            (
                "both between two syncs",
                PathState {
                    seller: seller(3, s.clone(), None),
                    ..path(Some(c.clone()))
                },
                vec![Some(c.clone())],
            ),
            (
                "a seller before the CRM's change",
                PathState {
                    seller: seller(1, s.clone(), Some(Landing::Acknowledged)),
                    ..path(Some(c.clone()))
                },
                vec![Some(c.clone())],
            ),
            (
                "the CRM never had a value",
                PathState {
                    seller: seller(0, s.clone(), None),
                    ..path(None)
                },
                vec![Some(s.clone())],
            ),
            (
                "the CRM had a value that landed, then cleared it",
                PathState {
                    crm_had_value: true,
                    crm_had_landed_value: true,
                    ..path(None)
                },
                vec![None],
            ),
            (
                "the CRM had a value that never landed, then cleared it",
                PathState {
                    crm_had_value: true,
                    seller: seller(0, s.clone(), None),
                    ..path(None)
                },
                vec![None, Some(s.clone())],
            ),
            (
                "the CRM back to the last sync's value after a seller's edit",
                PathState {
                    seller: Some(SellerMark {
                        at: 1,
                        value: s.clone(),
                        after_landing: None,
                        acknowledged_before: Some(Some(c.clone())),
                    }),
                    ..path(Some(c.clone()))
                },
                vec![Some(s.clone()), Some(c.clone())],
            ),
        ];
        for (name, state, expected) in cases {
            let (acceptable, _) = state.acceptable().expect(name);
            assert_eq!(acceptable, expected, "{name}");
        }
        assert!(PathState::unmapped().acceptable().is_none());
    }

    fn name_rule(model: &RecordModel) -> Vec<Option<Value>> {
        model.paths[&Key::Pointer("/name".into())]
            .acceptable()
            .map(|(values, _)| values)
            .unwrap_or_default()
    }

    #[test]
    fn a_seller_edit_the_crm_won_against_is_gone_once_the_crm_value_lands() {
        let mut model = RecordModel::new("r".into());
        model.crm_now(1, &json!({"name": "A"}));
        model.observe(Some(&json!({"name": "A"})), true);
        model.seller_set(3, Key::Pointer("/name".into()), json!("S"));
        model.crm_now(4, &json!({"name": "B"}));
        assert_eq!(name_rule(&model), [Some(json!("B"))]);
        model.observe(Some(&json!({"name": "B"})), true);
        // Back to A: the seller's S was overwritten by B, it cannot stand.
        model.crm_now(5, &json!({"name": "A"}));
        assert_eq!(name_rule(&model), [Some(json!("A"))]);
    }

    #[test]
    fn a_seller_edit_overwritten_against_the_rules_stays_expected() {
        let mut model = RecordModel::new("r".into());
        model.crm_now(1, &json!({"name": "A"}));
        model.observe(Some(&json!({"name": "A"})), true);
        model.seller_set(3, Key::Pointer("/name".into()), json!("S"));
        // A sync that wrote A back over the seller's later edit.
        model.observe(Some(&json!({"name": "A"})), true);
        assert_eq!(name_rule(&model), [Some(json!("S"))]);
    }
}
