//! The merge: per owned slot, what the referral should hold, and the patch
//! that gets it there. Pure: no I/O, no clock.
//!
//! Four values meet in every slot ([`crate::ownership::Slot`]):
//!
//! - **base** — what Partner Center acknowledged at the last sync (the
//!   answer to our write, or what we read), stored with its eTag;
//! - **before** — the CRM's value at the last sync (unknown when a
//!   referral is adopted);
//! - **crm** — the CRM's value now;
//! - **live** — Partner Center's value now (the base, when the plan is made
//!   against the stored eTag without reading the referral).
//!
//! [`decide`] is the whole rule, one table (`ARCHITECTURE.md` shows it);
//! [`plan`] applies it to every slot, checks the status move against the
//! transition table from the status Partner Center holds, and renders the
//! decisions as the smallest `add`/`replace` patch against live.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::diff::{DiffOptions, Edit, OnCleared, Rejection, render, same};
use crate::model::{ManagedPaths, Op};
use crate::ownership::{ElementSlot, ListProblem, Slot, Slots};
use crate::status::{ReferralStatus, ReferralSubstatus, check_transition, read_status};

/// Who wins a path changed both in the CRM and in Partner Center.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictPolicy {
    #[default]
    CrmWins,
    RemoteWins,
}

/// An ordinary cycle, or a resync that re-asserts what the CRM owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Only what changed in the CRM since the last sync is sent.
    #[default]
    Sync,
    /// Also every owned slot where Partner Center drifted from the CRM's
    /// value: set back under `crm-wins`, kept (and reported) under
    /// `remote-wins`.
    Resync,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MergeOptions {
    pub diff: DiffOptions,
    pub conflict: ConflictPolicy,
    pub mode: Mode,
}

/// A slot changed on both sides since the last sync, and how it was settled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conflict {
    pub path: String,
    /// The value both sides started from (the base).
    pub snapshot: Option<Value>,
    pub live: Option<Value>,
    pub desired: Option<Value>,
    pub resolution: ConflictPolicy,
}

/// What a resync found where Partner Center differs from the CRM's value
/// that the CRM did not change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Drift {
    pub path: String,
    #[serde(rename = "partnerCenter")]
    pub partner_center: Option<Value>,
    pub crm: Option<Value>,
    pub action: DriftAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftAction {
    /// Set back to the CRM's value (`crm-wins`).
    Repaired,
    /// Left as Partner Center has it (`remote-wins`).
    Kept,
}

impl DriftAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftAction::Repaired => "repaired",
            DriftAction::Kept => "kept",
        }
    }
}

/// The CRM's value at the last sync.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Before<'a> {
    Known(Option<&'a Value>),
    /// Adopting a referral: every value the CRM has counts as its word;
    /// a value it lacks is left as Partner Center has it.
    Unknown,
}

/// One slot's four values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cell<'a> {
    pub base: Option<&'a Value>,
    pub before: Before<'a>,
    pub crm: Option<&'a Value>,
    pub live: Option<&'a Value>,
    /// The slot belongs to a list element the CRM had and no longer has.
    pub element_gone: bool,
}

/// What the referral should hold in one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Leave Partner Center's value.
    Keep(Why),
    /// Send the CRM's value (`null` when the CRM cleared it).
    Set(Why),
}

/// Why a slot was decided as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Neither side changed it.
    InStep,
    /// A seller changed it; the CRM did not.
    SellerEdit,
    /// The CRM changed it and Partner Center already holds that value.
    AlreadyThere,
    /// The CRM changed it and Partner Center did not: the CRM's word.
    CrmChange,
    /// The CRM cleared it and `sync.on_cleared = "skip"`.
    ClearSkipped,
    /// Both changed it since the last sync; the policy decided.
    Conflict,
    /// A resync found Partner Center's value differing from the CRM's.
    Drift,
    /// The CRM no longer has the list element: left in place.
    ElementGone,
}

/// The merge rule for one slot. The table in `ARCHITECTURE.md` is this
/// function; the unit tests below go through it row by row.
pub fn decide(cell: &Cell<'_>, options: &MergeOptions) -> Verdict {
    use Verdict::{Keep, Set};
    if cell.element_gone {
        return Keep(Why::ElementGone);
    }
    let crm_changed = match cell.before {
        Before::Known(before) => !same(before, cell.crm),
        Before::Unknown => cell.crm.is_some_and(|v| !v.is_null()),
    };
    let seller_changed = !same(cell.live, cell.base);
    let live_is_crm = same(cell.live, cell.crm);
    let cleared = crm_changed && same(cell.crm, None);

    let verdict = if !crm_changed {
        if seller_changed {
            Keep(Why::SellerEdit)
        } else {
            Keep(Why::InStep)
        }
    } else if live_is_crm {
        Keep(Why::AlreadyThere)
    } else if cleared && options.diff.on_cleared == OnCleared::Skip {
        Keep(Why::ClearSkipped)
    } else if !seller_changed {
        Set(Why::CrmChange)
    } else {
        match options.conflict {
            ConflictPolicy::CrmWins => Set(Why::Conflict),
            ConflictPolicy::RemoteWins => Keep(Why::Conflict),
        }
    };

    // A resync re-asserts every value the CRM has. A value it does not
    // have is not re-asserted: absent is not cleared.
    let crm_has_value = !same(cell.crm, None);
    match verdict {
        Keep(Why::InStep | Why::SellerEdit | Why::ClearSkipped)
            if options.mode == Mode::Resync && crm_has_value && !live_is_crm =>
        {
            match options.conflict {
                ConflictPolicy::CrmWins => Set(Why::Drift),
                ConflictPolicy::RemoteWins => Keep(Why::Drift),
            }
        }
        verdict => verdict,
    }
}

/// Everything a plan is made from.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// The desired document: the CRM now.
    pub crm: &'a Value,
    /// The desired document of the last sync; `None` when adopting.
    pub before: Option<&'a Value>,
    /// What Partner Center acknowledged at the last sync (a projection, see
    /// [`crate::ownership::project`]); when it is not known, the live
    /// referral.
    pub base: &'a Value,
    /// The live referral, when it was read; `None` plans against `base`
    /// and the stored eTag.
    pub live: Option<&'a Value>,
    pub managed: &'a ManagedPaths,
    pub options: MergeOptions,
    /// The CRM's status was refused at the last sync: it is reported again
    /// while Partner Center still cannot take it.
    pub status_refused: bool,
}

/// The plan for one record against one referral.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// The ops to send, against live (or the base).
    pub ops: Vec<Op>,
    /// What each op sets, slot by slot: the write intent.
    pub targets: Vec<(Slot, Value)>,
    pub conflicts: Vec<Conflict>,
    pub drift: Vec<Drift>,
    /// Changes that cannot be sent (an invalid status move, an element
    /// without a key); the other ops still go.
    pub rejected: Vec<Rejection>,
    /// Keyed elements the CRM no longer has, left in place (there is no
    /// `remove`), as `/customerProfile/team[jane@…]`.
    pub left_in_place: Vec<String>,
    /// CRM changes Partner Center already holds.
    pub already_applied: usize,
}

/// Decide every owned slot and render the decisions as a patch.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let managed = input.managed;
    let current_doc = input.live.unwrap_or(input.base);
    let crm = Slots::of(input.crm, managed);
    let before = input.before.map(|b| Slots::of(b, managed));
    let base = Slots::of(input.base, managed);
    let live = Slots::of(current_doc, managed);

    let mut out = Plan::default();
    report_list_problems(&crm, &mut out);

    let mut all: Vec<&Slot> = crm
        .values
        .keys()
        .chain(before.iter().flat_map(|b| b.values.keys()))
        .chain(base.values.keys())
        .chain(live.values.keys())
        .collect();
    all.sort();
    all.dedup();

    let mut targets: BTreeMap<Slot, Value> = BTreeMap::new();
    for slot in all {
        let element_gone = slot.element.as_ref().is_some_and(|element| {
            let pointer = slot.pointer();
            crm.element(&pointer, &element.key).is_none()
                && before
                    .as_ref()
                    .is_some_and(|b| b.element(&pointer, &element.key).is_some())
        });
        let cell = Cell {
            base: base.get(slot),
            before: match &before {
                Some(b) => Before::Known(b.get(slot)),
                None => Before::Unknown,
            },
            crm: crm.get(slot),
            live: live.get(slot),
            element_gone,
        };
        let verdict = decide(&cell, &input.options);
        note_decision(&mut out, slot, &cell, verdict, &input.options);
        if let Verdict::Set(_) = verdict {
            targets.insert(slot.clone(), cell.crm.cloned().unwrap_or(Value::Null));
        }
    }
    note_elements_gone(&crm, before.as_ref(), &mut out);
    settle_status(input, current_doc, &mut targets, &mut out);

    let (ops, rejected) = render_targets(current_doc, &live, &crm, &targets, managed);
    out.ops = ops;
    out.rejected.extend(rejected);
    out.targets = targets.into_iter().collect();
    out
}

/// Count and report one slot's decision.
fn note_decision(
    out: &mut Plan,
    slot: &Slot,
    cell: &Cell<'_>,
    verdict: Verdict,
    options: &MergeOptions,
) {
    let owned = |v: Option<&Value>| v.filter(|v| !v.is_null()).cloned();
    match verdict {
        Verdict::Keep(Why::AlreadyThere) => out.already_applied += 1,
        Verdict::Set(Why::Conflict) | Verdict::Keep(Why::Conflict) => {
            out.conflicts.push(Conflict {
                path: slot.to_string(),
                snapshot: owned(cell.base),
                live: owned(cell.live),
                desired: owned(cell.crm),
                resolution: options.conflict,
            })
        }
        Verdict::Set(Why::Drift) | Verdict::Keep(Why::Drift) => out.drift.push(Drift {
            path: slot.to_string(),
            partner_center: owned(cell.live),
            crm: owned(cell.crm),
            action: if matches!(verdict, Verdict::Set(_)) {
                DriftAction::Repaired
            } else {
                DriftAction::Kept
            },
        }),
        _ => {}
    }
}

fn report_list_problems(crm: &Slots, out: &mut Plan) {
    for problem in &crm.problems {
        out.rejected.push(match problem {
            ListProblem::NoKey { list, index } => Rejection {
                path: list.clone(),
                reason: format!(
                    "element {index} of the record's {list} has no key, so it cannot be matched with a Partner Center element; it is not sent"
                ),
            },
            ListProblem::RepeatedKey { list, key } => Rejection {
                path: list.clone(),
                reason: format!(
                    "the record's {list} has {key} more than once; only the first is sent"
                ),
            },
        });
    }
}

fn note_elements_gone(crm: &Slots, before: Option<&Slots>, out: &mut Plan) {
    let Some(before) = before else { return };
    for (list, elements) in &before.elements {
        for key in elements.keys() {
            if crm.element(list, key).is_none() {
                out.left_in_place.push(format!("{list}[{key}]"));
            }
        }
    }
}

/// A status move goes with its substatus and must be allowed from the
/// status Partner Center holds; a refused move leaves both as they are and
/// says so. A CRM status that Partner Center cannot reach from where it is
/// is reported on every plan until the two agree.
fn settle_status(
    input: &PlanInput<'_>,
    current: &Value,
    targets: &mut BTreeMap<Slot, Value>,
    out: &mut Plan,
) {
    if !input.managed.contains(&["status"]) {
        return;
    }
    let status_slot = Slot::leaf(&["status"]);
    let sends_status = targets.contains_key(&status_slot);
    let sends_move = sends_status || targets.contains_key(&Slot::leaf(&["substatus"]));
    let Ok(from) = read_status(current) else {
        if sends_move {
            withdraw_status(
                targets,
                out,
                "cannot read the referral's current status".into(),
            );
        }
        return;
    };
    if sends_status && !input.managed.contains(&["substatus"]) {
        targets.remove(&status_slot);
        out.rejected.push(Rejection {
            path: "/status".into(),
            reason:
                "status is managed but substatus is not; a status change must carry its substatus"
                    .into(),
        });
        return;
    }
    if sends_move {
        if sends_status {
            carry_crm_substatus(input.crm, targets);
        }
        if let Some(reason) = refused_move(current, from, targets) {
            withdraw_status(targets, out, reason);
            return;
        }
    }
    report_standing_refusal(input, from, targets, out);
}

/// The status carries the CRM's substatus, whatever else was decided for it.
fn carry_crm_substatus(crm: &Value, targets: &mut BTreeMap<Slot, Value>) {
    let substatus = crm.get("substatus").cloned().unwrap_or(Value::Null);
    targets.insert(Slot::leaf(&["substatus"]), substatus);
}

/// Why the status and substatus the targets leave the referral with may
/// not follow `from`, if they may not.
fn refused_move(
    current: &Value,
    from: Option<(ReferralStatus, ReferralSubstatus)>,
    targets: &BTreeMap<Slot, Value>,
) -> Option<String> {
    let mut to = Map::new();
    for name in ["status", "substatus"] {
        let value = targets
            .get(&Slot::leaf(&[name]))
            .cloned()
            .or_else(|| current.get(name).cloned())
            .unwrap_or(Value::Null);
        to.insert(name.into(), value);
    }
    match read_status(&Value::Object(to)) {
        Ok(Some(pair)) => check_transition(from, pair)
            .err()
            .map(|e| refusal(from, pair, &e.to_string())),
        Ok(None) => Some("a referral's status cannot be cleared".to_owned()),
        Err(e) => Some(format!("invalid desired status: {e}")),
    }
}

/// Neither status nor substatus is sent, and the plan says why.
fn withdraw_status(targets: &mut BTreeMap<Slot, Value>, out: &mut Plan, reason: String) {
    targets.remove(&Slot::leaf(&["status"]));
    targets.remove(&Slot::leaf(&["substatus"]));
    out.rejected.push(Rejection {
        path: "/status".into(),
        reason,
    });
}

/// A CRM status refused at an earlier sync is reported until the two
/// agree. A seller's move the CRM did not contradict is no refusal.
fn report_standing_refusal(
    input: &PlanInput<'_>,
    from: Option<(ReferralStatus, ReferralSubstatus)>,
    targets: &BTreeMap<Slot, Value>,
    out: &mut Plan,
) {
    if input.status_refused
        && let Some(crm_pair) = read_status(input.crm).ok().flatten()
        && from != Some(crm_pair)
        && !targets.contains_key(&Slot::leaf(&["status"]))
        && !targets.contains_key(&Slot::leaf(&["substatus"]))
        && let Err(e) = check_transition(from, crm_pair)
    {
        out.rejected.push(Rejection {
            path: "/status".into(),
            reason: refusal(from, crm_pair, &e.to_string()),
        });
    }
}

fn refusal(
    from: Option<(ReferralStatus, ReferralSubstatus)>,
    to: (ReferralStatus, ReferralSubstatus),
    why: &str,
) -> String {
    let holds = match from {
        Some((status, substatus)) => format!("{}/{}", status.as_str(), substatus.as_str()),
        None => "no status".to_owned(),
    };
    format!(
        "Partner Center holds {holds}, the CRM says {}/{}: {why}",
        to.0.as_str(),
        to.1.as_str()
    )
}

/// Render the slots to set as ops against `current` (live, or the base):
/// a leaf at its deepest member, a missing parent added whole, a keyed
/// element's member at the element's position in Partner Center, a new
/// element appended.
fn render_targets(
    current: &Value,
    live: &Slots,
    crm: &Slots,
    targets: &BTreeMap<Slot, Value>,
    managed: &ManagedPaths,
) -> (Vec<Op>, Vec<Rejection>) {
    let mut planned: Vec<PlannedEdit> = Vec::new();
    let mut new_elements = NewElements::default();
    for (slot, value) in targets {
        let Some(element) = &slot.element else {
            planned.push(PlannedEdit::set(slot.tokens.clone(), value));
            continue;
        };
        match live.element(&slot.pointer(), &element.key) {
            Some(found) => {
                let mut tokens = slot.tokens.clone();
                tokens.push(found.index.to_string());
                tokens.push(element.member.clone());
                planned.push(PlannedEdit::set(tokens, value));
            }
            None => new_elements.add_member(slot, element, value, crm, managed),
        }
    }
    // Elements whose every member is cleared are not worth adding; an
    // element the CRM adds with only its key has no slot and no target.
    planned.extend(new_elements.into_appends());
    planned.sort_by(|a, b| a.tokens.cmp(&b.tokens));
    let rendered = render(current, planned.iter().map(PlannedEdit::edit));
    (rendered.ops, rendered.rejected)
}

/// An edit with tokens of its own, for the [`Edit`] that borrows them: a
/// member set, or new elements appended to a list.
struct PlannedEdit {
    tokens: Vec<String>,
    value: Value,
    append: bool,
}

impl PlannedEdit {
    fn set(tokens: Vec<String>, value: &Value) -> PlannedEdit {
        PlannedEdit {
            tokens,
            value: value.clone(),
            append: false,
        }
    }

    fn edit(&self) -> Edit<'_> {
        let tokens: Vec<&str> = self.tokens.iter().map(String::as_str).collect();
        if !self.append {
            return Edit::Set {
                tokens,
                value: &self.value,
            };
        }
        let elements = match &self.value {
            Value::Array(elements) => elements.iter().collect(),
            _ => Vec::new(),
        };
        Edit::Append {
            tokens,
            elements,
            whole: &self.value,
        }
    }
}

/// The elements the CRM adds to keyed lists Partner Center holds without
/// them: per list (its tokens), each element where its first member put it.
#[derive(Default)]
struct NewElements {
    lists: BTreeMap<Vec<String>, Vec<Value>>,
    index: BTreeMap<(Vec<String>, String), usize>,
}

impl NewElements {
    /// A member of a new element: the element starts with its key as the
    /// CRM writes it; a member cleared, or the key itself, adds nothing.
    fn add_member(
        &mut self,
        slot: &Slot,
        element: &ElementSlot,
        value: &Value,
        crm: &Slots,
        managed: &ManagedPaths,
    ) {
        let pointer = slot.pointer();
        let list_key = managed.list_key(&pointer);
        let list = self.lists.entry(slot.tokens.clone()).or_default();
        let index = *self
            .index
            .entry((slot.tokens.clone(), element.key.clone()))
            .or_insert_with(|| {
                let mut fresh = Map::new();
                if let (Some(key), Some(found)) = (list_key, crm.element(&pointer, &element.key)) {
                    fresh.insert(key.member.clone(), found.key_value.clone());
                }
                list.push(Value::Object(fresh));
                list.len() - 1
            });
        let is_key = list_key.is_some_and(|key| key.member == element.member);
        if let Some(Value::Object(fresh)) = list.get_mut(index)
            && !value.is_null()
            && !is_key
        {
            fresh.insert(element.member.clone(), value.clone());
        }
    }

    fn into_appends(self) -> impl Iterator<Item = PlannedEdit> {
        self.lists
            .into_iter()
            .map(|(tokens, elements)| PlannedEdit {
                tokens,
                value: Value::Array(elements),
                append: true,
            })
    }
}

#[cfg(test)]
mod tests;
