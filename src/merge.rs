//! Three-way merge: snapshot (what we last applied), desired (the CRM now)
//! and live (Partner Center now) → the patch to send against the live
//! referral. Pure: no I/O, no clock.
//!
//! Only what the CRM changed (snapshot → desired) is ever sent, so an edit a
//! seller made in Partner Center on any path the CRM left alone survives.
//! Each CRM change is then checked against live: already there → dropped;
//! changed there too → a [`Conflict`] settled by the [`ConflictPolicy`];
//! otherwise sent, re-expressed against live (`add` vs `replace`, missing
//! parents added whole, appends not repeated).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::diff::{
    Change, DiffOptions, Edit, Location, Rejection, crm_changes, equivalent, locate, non_null,
    pointer, render, same, status_edits, value_at,
};
use crate::model::{ManagedPaths, Op};

/// Who wins a path changed both in the CRM and in Partner Center.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictPolicy {
    #[default]
    CrmWins,
    RemoteWins,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MergeOptions {
    pub diff: DiffOptions,
    pub conflict: ConflictPolicy,
}

/// A path changed on both sides, and how it was settled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conflict {
    pub path: String,
    pub snapshot: Option<Value>,
    pub live: Option<Value>,
    pub desired: Option<Value>,
    pub resolution: ConflictPolicy,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct MergeOutcome {
    /// The ops to send against `live`.
    pub ops: Vec<Op>,
    pub conflicts: Vec<Conflict>,
    pub rejected: Vec<Rejection>,
    /// CRM changes dropped because live already holds the desired value.
    pub already_applied: usize,
}

/// Merge three ways. With `snapshot == live` this is [`crate::diff::plan_patch`].
///
/// `null` and an absent member are the same empty value on all three sides.
/// Status changes are checked against the live status (a referral closed in
/// Partner Center stays closed); `/status` still travels with `/substatus`.
pub fn three_way(
    snapshot: &Value,
    desired: &Value,
    live: &Value,
    managed: &ManagedPaths,
    options: &MergeOptions,
) -> MergeOutcome {
    let mut merge = ThreeWayMerge {
        snapshot,
        desired,
        live,
        managed,
        policy: options.conflict,
        edits: Vec::new(),
        settled_obstacles: HashSet::new(),
        outcome: MergeOutcome::default(),
    };
    for change in crm_changes(snapshot, desired, managed, &options.diff) {
        match change {
            Change::Edit(edit) => merge.edit(edit),
            Change::Status { status, substatus } => merge.status(status, substatus),
        }
    }
    let rendered = render(live, merge.edits);
    let mut outcome = merge.outcome;
    outcome.ops = rendered.ops;
    outcome.rejected.extend(rendered.rejected);
    outcome
}

struct ThreeWayMerge<'a> {
    snapshot: &'a Value,
    desired: &'a Value,
    live: &'a Value,
    managed: &'a ManagedPaths,
    policy: ConflictPolicy,
    /// The CRM changes to send, rendered against live at the end.
    edits: Vec<Edit<'a>>,
    /// Managed ancestors Partner Center turned into non-objects, settled once
    /// for every edit below them.
    settled_obstacles: HashSet<String>,
    outcome: MergeOutcome,
}

/// How live stands to one CRM change.
enum Standing {
    /// Live already holds the desired value.
    Applied,
    /// Live changed it too; the policy decided.
    Conflict,
    /// Live still holds the snapshot's value.
    Clean,
}

impl<'a> ThreeWayMerge<'a> {
    fn edit(&mut self, edit: Edit<'a>) {
        if let Location::Obstructed { depth, .. } = locate(self.live, edit.tokens()) {
            let obstacle = &edit.tokens()[..depth];
            if self.managed.contains(obstacle) {
                self.settle_obstacle(obstacle.to_vec());
            } else if matches!(edit, Edit::Set { value, .. } if value.is_null()) {
                // Nothing can be below a non-object: the clear is done.
                self.outcome.already_applied += 1;
            } else {
                // Partner Center's own member is in the way: rendering
                // refuses the edit.
                self.edits.push(edit);
            }
            return;
        }
        match edit {
            Edit::Set { tokens, value } => {
                if self.stand(&tokens, Some(value)).sends(self.policy) {
                    self.edits.push(Edit::Set { tokens, value });
                }
            }
            Edit::Append {
                tokens,
                elements,
                whole,
            } => self.append(tokens, elements, whole),
        }
    }

    /// How live stands to the CRM's change of `tokens` to `desired`;
    /// counts and records it.
    fn stand(&mut self, tokens: &[&str], desired: Option<&'a Value>) -> Standing {
        let live = value_at(self.live, tokens);
        let snapshot = value_at(self.snapshot, tokens);
        if same(live, desired) {
            self.outcome.already_applied += 1;
            Standing::Applied
        } else if !same(live, snapshot) {
            self.conflict(tokens, snapshot, live, desired);
            Standing::Conflict
        } else {
            Standing::Clean
        }
    }

    fn conflict(
        &mut self,
        tokens: &[&str],
        snapshot: Option<&Value>,
        live: Option<&Value>,
        desired: Option<&Value>,
    ) {
        self.outcome.conflicts.push(Conflict {
            path: pointer(tokens),
            snapshot: non_null(snapshot).cloned(),
            live: non_null(live).cloned(),
            desired: non_null(desired).cloned(),
            resolution: self.policy,
        });
    }

    /// Partner Center holds a non-object at a managed `obstacle` the CRM
    /// changes members below: both sides changed it.
    fn settle_obstacle(&mut self, obstacle: Vec<&'a str>) {
        if !self.settled_obstacles.insert(pointer(&obstacle)) {
            return;
        }
        let desired = value_at(self.desired, &obstacle);
        self.conflict(
            &obstacle,
            value_at(self.snapshot, &obstacle),
            value_at(self.live, &obstacle),
            desired,
        );
        if self.policy == ConflictPolicy::CrmWins
            && let Some(desired) = desired
        {
            self.edits.push(Edit::Set {
                tokens: obstacle,
                value: desired,
            });
        }
    }

    fn append(&mut self, tokens: Vec<&'a str>, elements: Vec<&'a Value>, whole: &'a Value) {
        let live = non_null(value_at(self.live, &tokens));
        let Some(live) = live else {
            // Live has no array at all: rendering adds the desired one whole.
            self.edits.push(Edit::Append {
                tokens,
                elements,
                whole,
            });
            return;
        };
        let Value::Array(live) = live else {
            let snapshot = value_at(self.snapshot, &tokens);
            self.conflict(&tokens, snapshot, Some(live), Some(whole));
            if self.policy == ConflictPolicy::CrmWins {
                self.edits.push(Edit::Set {
                    tokens,
                    value: whole,
                });
            }
            return;
        };

        // The elements live gained since the snapshot — by a seller, or by
        // our own write whose answer was lost. An appended element found
        // among them is already there; each one can match only once, so
        // with `snapshot == live` every element is appended.
        let mut gained: Vec<&Value> = live.iter().collect();
        let snapshot = value_at(self.snapshot, &tokens).and_then(Value::as_array);
        for element in snapshot.into_iter().flatten() {
            if let Some(index) = gained.iter().position(|other| same_element(element, other)) {
                gained.remove(index);
            }
        }
        let mut missing = Vec::with_capacity(elements.len());
        for element in elements {
            match gained.iter().position(|other| same_element(element, other)) {
                Some(index) => {
                    gained.remove(index);
                    self.outcome.already_applied += 1;
                }
                None => missing.push(element),
            }
        }
        if !missing.is_empty() {
            self.edits.push(Edit::Append {
                tokens,
                elements: missing,
                whole,
            });
        }
    }

    fn status(&mut self, status_changed: bool, substatus_changed: bool) {
        let conflicts_before = self.outcome.conflicts.len();
        let send = |merge: &mut Self, member: &'static str, changed: bool| {
            changed
                && merge
                    .stand(&[member], merge.desired.get(member))
                    .sends(merge.policy)
        };
        let send_status = send(self, "status", status_changed);
        let send_substatus = send(self, "substatus", substatus_changed);

        if send_status {
            // A status change must carry its substatus, so a substatus the
            // seller changed is overwritten whatever the policy says.
            for conflict in &mut self.outcome.conflicts[conflicts_before..] {
                if conflict.path == "/substatus" {
                    conflict.resolution = ConflictPolicy::CrmWins;
                }
            }
        }
        match status_edits(
            self.live,
            self.desired,
            self.managed,
            send_status,
            send_substatus,
        ) {
            Ok(edits) => self.edits.extend(edits),
            Err(rejection) => self.outcome.rejected.push(rejection),
        }
    }
}

impl Standing {
    fn sends(&self, policy: ConflictPolicy) -> bool {
        match self {
            Standing::Applied => false,
            Standing::Conflict => policy == ConflictPolicy::CrmWins,
            Standing::Clean => true,
        }
    }
}

/// Carry into `document` the members of the live referral's array elements
/// that the mapping does not fill (a seller's `contactPreference` on a team
/// member), so that a whole-array write keeps them. An element is matched
/// with the live element of the same e-mail address, or, when it has none,
/// with the live element at the same position that has none either.
pub fn carry_unmanaged_element_members(document: &mut Value, live: &Value, managed: &ManagedPaths) {
    for (pointer, filled) in managed.element_members() {
        let (Some(Value::Array(elements)), Some(Value::Array(live_elements))) =
            (document.pointer_mut(pointer), live.pointer(pointer))
        else {
            continue;
        };
        for (index, element) in elements.iter_mut().enumerate() {
            let Value::Object(members) = element else {
                continue;
            };
            let own_email = members
                .get("email")
                .and_then(Value::as_str)
                .map(str::to_lowercase);
            let matched = match &own_email {
                Some(address) => live_elements
                    .iter()
                    .find(|candidate| email_of(candidate).as_ref() == Some(address)),
                None => live_elements
                    .get(index)
                    .filter(|candidate| email_of(candidate).is_none()),
            };
            let Some(Value::Object(live_members)) = matched else {
                continue;
            };
            for (key, value) in live_members {
                if !filled.contains(key) && !members.contains_key(key) {
                    members.insert(key.clone(), value.clone());
                }
            }
        }
    }
}

/// A team member's e-mail address, in lower case: how members are told
/// apart across the CRM and Partner Center.
fn email_of(value: &Value) -> Option<String> {
    value
        .get("email")
        .and_then(Value::as_str)
        .map(str::to_lowercase)
}

/// Whether an appended element is already in a live array: the same value,
/// or — for team members — the same e-mail address in any letter case.
fn same_element(a: &Value, b: &Value) -> bool {
    match (email_of(a), email_of(b)) {
        (Some(a), Some(b)) => a == b,
        _ => equivalent(a, b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{apply_ops, plan_patch};
    use serde_json::json;

    fn managed(paths: &[&str]) -> ManagedPaths {
        ManagedPaths::from_pointers(paths)
    }

    fn ops(value: Value) -> Vec<Op> {
        serde_json::from_value(value).unwrap()
    }

    fn crm_wins() -> MergeOptions {
        MergeOptions::default()
    }

    fn remote_wins() -> MergeOptions {
        MergeOptions {
            conflict: ConflictPolicy::RemoteWins,
            ..MergeOptions::default()
        }
    }

    struct Case {
        name: &'static str,
        snapshot: Value,
        desired: Value,
        live: Value,
        managed: ManagedPaths,
        options: MergeOptions,
        expected: Value,
        /// (path, snapshot, live, desired, resolution)
        conflicts: Vec<(&'static str, Value, Value, Value, ConflictPolicy)>,
        rejected: &'static [(&'static str, &'static str)],
        already_applied: usize,
        /// The live referral once the ops are applied.
        result: Option<Value>,
    }

    fn case(
        name: &'static str,
        snapshot: Value,
        desired: Value,
        live: Value,
        expected: Value,
    ) -> Case {
        Case {
            name,
            snapshot,
            desired,
            live,
            managed: ManagedPaths::all(),
            options: crm_wins(),
            expected,
            conflicts: Vec::new(),
            rejected: &[],
            already_applied: 0,
            result: None,
        }
    }

    fn run(cases: Vec<Case>) {
        for case in cases {
            let name = case.name;
            let outcome = three_way(
                &case.snapshot,
                &case.desired,
                &case.live,
                &case.managed,
                &case.options,
            );
            assert_eq!(outcome.ops, ops(case.expected), "case {name:?}: ops");
            let conflicts: Vec<Conflict> = case
                .conflicts
                .into_iter()
                .map(|(path, snapshot, live, desired, resolution)| Conflict {
                    path: path.to_owned(),
                    snapshot: non_null(Some(&snapshot)).cloned(),
                    live: non_null(Some(&live)).cloned(),
                    desired: non_null(Some(&desired)).cloned(),
                    resolution,
                })
                .collect();
            assert_eq!(outcome.conflicts, conflicts, "case {name:?}: conflicts");
            let rejected: Vec<(&str, &str)> = outcome
                .rejected
                .iter()
                .map(|rejection| (rejection.path.as_str(), rejection.reason.as_str()))
                .collect();
            assert_eq!(rejected, case.rejected, "case {name:?}: rejections");
            assert_eq!(
                outcome.already_applied, case.already_applied,
                "case {name:?}: already applied"
            );

            let mut applied = case.live.clone();
            apply_ops(&mut applied, &outcome.ops)
                .unwrap_or_else(|error| panic!("case {name:?}: {error}"));
            if let Some(result) = case.result {
                assert_eq!(applied, result, "case {name:?}: live after the patch");
            }
        }
    }

    fn sue() -> Value {
        json!({"firstName": "Sue", "email": "sue.smith@contoso.com"})
    }

    fn jane() -> Value {
        json!({"firstName": "Jane", "email": "jane.doe@contoso.com"})
    }

    #[test]
    fn seller_edits_the_crm_did_not_touch_survive() {
        run(vec![
            Case {
                managed: managed(&["/details/dealValue"]),
                result: Some(json!({"details": {"notes": "seller's notes", "dealValue": 2}})),
                ..case(
                    "edit on an unmapped field",
                    json!({"details": {"notes": "n", "dealValue": 1}}),
                    json!({"details": {"notes": "crm notes", "dealValue": 2}}),
                    json!({"details": {"notes": "seller's notes", "dealValue": 1}}),
                    json!([{"op": "replace", "path": "/details/dealValue", "value": 2}]),
                )
            },
            Case {
                managed: managed(&["/details"]),
                result: Some(json!({"details": {"notes": "seller's notes", "dealValue": 2}})),
                ..case(
                    "edit on a mapped field the CRM did not change",
                    json!({"details": {"notes": "n", "dealValue": 1}}),
                    json!({"details": {"notes": "n", "dealValue": 2}}),
                    json!({"details": {"notes": "seller's notes", "dealValue": 1}}),
                    json!([{"op": "replace", "path": "/details/dealValue", "value": 2}]),
                )
            },
            case(
                "member the seller added",
                json!({"details": {"dealValue": 1}}),
                json!({"details": {"dealValue": 2}}),
                json!({"details": {"dealValue": 1, "closingDateTime": "2020-01-01T00:00:00Z"}}),
                json!([{"op": "replace", "path": "/details/dealValue", "value": 2}]),
            ),
        ]);
    }

    #[test]
    fn changes_on_both_sides_follow_the_policy() {
        let snapshot = json!({"details": {"notes": "n", "dealValue": 1}});
        let desired = json!({"details": {"notes": "crm", "dealValue": 2}});
        let live = json!({"details": {"notes": "seller", "dealValue": 1}});
        run(vec![
            Case {
                conflicts: vec![(
                    "/details/notes",
                    json!("n"),
                    json!("seller"),
                    json!("crm"),
                    ConflictPolicy::CrmWins,
                )],
                result: Some(json!({"details": {"notes": "crm", "dealValue": 2}})),
                ..case(
                    "crm wins",
                    snapshot.clone(),
                    desired.clone(),
                    live.clone(),
                    json!([
                        {"op": "replace", "path": "/details/dealValue", "value": 2},
                        {"op": "replace", "path": "/details/notes", "value": "crm"},
                    ]),
                )
            },
            Case {
                options: remote_wins(),
                conflicts: vec![(
                    "/details/notes",
                    json!("n"),
                    json!("seller"),
                    json!("crm"),
                    ConflictPolicy::RemoteWins,
                )],
                result: Some(json!({"details": {"notes": "seller", "dealValue": 2}})),
                ..case(
                    "remote wins",
                    snapshot.clone(),
                    desired.clone(),
                    live.clone(),
                    json!([{"op": "replace", "path": "/details/dealValue", "value": 2}]),
                )
            },
            Case {
                conflicts: vec![(
                    "/details/notes",
                    json!("n"),
                    json!(null),
                    json!("crm"),
                    ConflictPolicy::CrmWins,
                )],
                ..case(
                    "seller cleared it, crm wins: replace becomes add",
                    json!({"details": {"notes": "n"}}),
                    json!({"details": {"notes": "crm"}}),
                    json!({"details": {}}),
                    json!([{"op": "add", "path": "/details/notes", "value": "crm"}]),
                )
            },
            Case {
                conflicts: vec![(
                    "/team",
                    json!([sue()]),
                    json!([jane()]),
                    json!([jane(), sue()]),
                    ConflictPolicy::CrmWins,
                )],
                ..case(
                    "whole-array replace, crm wins",
                    json!({"team": [sue()]}),
                    json!({"team": [jane(), sue()]}),
                    json!({"team": [jane()]}),
                    json!([{"op": "replace", "path": "/team", "value": [jane(), sue()]}]),
                )
            },
            Case {
                options: remote_wins(),
                conflicts: vec![(
                    "/team",
                    json!([sue()]),
                    json!([jane()]),
                    json!([jane(), sue()]),
                    ConflictPolicy::RemoteWins,
                )],
                ..case(
                    "whole-array replace, remote wins",
                    json!({"team": [sue()]}),
                    json!({"team": [jane(), sue()]}),
                    json!({"team": [jane()]}),
                    json!([]),
                )
            },
        ]);
    }

    #[test]
    fn changes_already_in_live_are_dropped() {
        run(vec![
            Case {
                already_applied: 2,
                ..case(
                    "both changes already applied",
                    json!({"details": {"notes": "n", "dealValue": 1}}),
                    json!({"details": {"notes": "m", "dealValue": 2}}),
                    json!({"details": {"notes": "m", "dealValue": 2}}),
                    json!([]),
                )
            },
            Case {
                already_applied: 1,
                ..case(
                    "cleared in the CRM and already empty in live",
                    json!({"details": {"notes": "n", "dealValue": 1}}),
                    json!({"details": {"dealValue": 2}}),
                    json!({"details": {"notes": null, "dealValue": 1}}),
                    json!([{"op": "replace", "path": "/details/dealValue", "value": 2}]),
                )
            },
            Case {
                already_applied: 2,
                ..case(
                    "equal up to null members and number form",
                    json!({"details": {"dealValue": 1}}),
                    json!({"details": {"dealValue": 2.0, "extra": {"x": 1}}}),
                    json!({"details": {"dealValue": 2, "extra": {"x": 1, "y": null}}}),
                    json!([]),
                )
            },
        ]);
    }

    #[test]
    fn appends_are_not_repeated() {
        run(vec![
            Case {
                already_applied: 1,
                ..case(
                    "team member already appended before a timeout",
                    json!({"team": [sue()]}),
                    json!({"team": [sue(), jane()]}),
                    json!({"team": [sue(), jane()]}),
                    json!([]),
                )
            },
            Case {
                already_applied: 1,
                ..case(
                    "same e-mail in another case counts as present",
                    json!({"team": [sue()]}),
                    json!({"team": [sue(), jane()]}),
                    json!({"team": [sue(), {"firstName": "J.", "email": "Jane.Doe@Contoso.com"}]}),
                    json!([]),
                )
            },
            Case {
                result: Some(json!({"team": [sue(), {"email": "bob@contoso.com"}, jane()]})),
                ..case(
                    "a seller's own addition does not stop ours",
                    json!({"team": [sue()]}),
                    json!({"team": [sue(), jane()]}),
                    json!({"team": [sue(), {"email": "bob@contoso.com"}]}),
                    json!([{"op": "add", "path": "/team/-", "value": jane()}]),
                )
            },
            Case {
                already_applied: 1,
                ..case(
                    "only the missing appends go",
                    json!({"ids": ["a"]}),
                    json!({"ids": ["a", "b", "c"]}),
                    json!({"ids": ["a", "b"]}),
                    json!([{"op": "add", "path": "/ids/-", "value": "c"}]),
                )
            },
            case(
                "a duplicate of a snapshot element is still appended",
                json!({"ids": ["a"]}),
                json!({"ids": ["a", "a"]}),
                json!({"ids": ["a"]}),
                json!([{"op": "add", "path": "/ids/-", "value": "a"}]),
            ),
            case(
                "appends go even when the seller reordered the array",
                json!({"ids": ["a", "b"]}),
                json!({"ids": ["a", "b", "c"]}),
                json!({"ids": ["b", "a"]}),
                json!([{"op": "add", "path": "/ids/-", "value": "c"}]),
            ),
            case(
                "live array missing: the desired array is added whole",
                json!({"team": [sue()]}),
                json!({"team": [sue(), jane()]}),
                json!({}),
                json!([{"op": "add", "path": "/team", "value": [sue(), jane()]}]),
            ),
            case(
                "live array null: the desired array replaces it",
                json!({"team": [sue()]}),
                json!({"team": [sue(), jane()]}),
                json!({"team": null}),
                json!([{"op": "replace", "path": "/team", "value": [sue(), jane()]}]),
            ),
            Case {
                conflicts: vec![(
                    "/team",
                    json!([sue()]),
                    json!("nobody"),
                    json!([sue(), jane()]),
                    ConflictPolicy::CrmWins,
                )],
                ..case(
                    "live holds no array where the CRM appends",
                    json!({"team": [sue()]}),
                    json!({"team": [sue(), jane()]}),
                    json!({"team": "nobody"}),
                    json!([{"op": "replace", "path": "/team", "value": [sue(), jane()]}]),
                )
            },
        ]);
    }

    #[test]
    fn ops_are_re_expressed_against_live() {
        run(vec![
            case(
                "add of a member live already has becomes replace",
                json!({"details": {}}),
                json!({"details": {"closingDateTime": "2020-01-01T00:00:00Z"}}),
                json!({"details": {"closingDateTime": null}}),
                json!([{"op": "replace", "path": "/details/closingDateTime", "value": "2020-01-01T00:00:00Z"}]),
            ),
            Case {
                conflicts: vec![(
                    "/details/dealValue",
                    json!(1),
                    json!(null),
                    json!(2),
                    ConflictPolicy::CrmWins,
                )],
                result: Some(json!({"name": "x", "details": {"dealValue": 2}})),
                ..case(
                    "missing parent is added whole, with the CRM's changes only",
                    json!({"name": "x", "details": {"dealValue": 1, "notes": "n", "currency": "USD"}}),
                    json!({"name": "x", "details": {"dealValue": 2, "notes": "n", "currency": "USD"}}),
                    json!({"name": "x"}),
                    json!([{"op": "add", "path": "/details", "value": {"dealValue": 2}}]),
                )
            },
            Case {
                managed: managed(&[
                    "/customerProfile/address/city",
                    "/customerProfile/address/state",
                ]),
                result: Some(
                    json!({"customerProfile": {"name": "seller", "address": {"city": "Bellevue", "state": "WA"}}}),
                ),
                ..case(
                    "two edits below one missing parent make one op",
                    json!({}),
                    json!({"customerProfile": {"address": {"city": "Bellevue", "state": "WA"}}}),
                    json!({"customerProfile": {"name": "seller"}}),
                    json!([{"op": "add", "path": "/customerProfile/address", "value": {"city": "Bellevue", "state": "WA"}}]),
                )
            },
            Case {
                managed: managed(&["/customerProfile/address/city"]),
                result: Some(
                    json!({"customerProfile": {"name": "seller", "address": {"city": "Bellevue"}}}),
                ),
                ..case(
                    "a parent the snapshot lacked but live has is not overwritten",
                    json!({}),
                    json!({"customerProfile": {"name": "crm", "address": {"city": "Bellevue"}}}),
                    json!({"customerProfile": {"name": "seller"}}),
                    json!([{"op": "add", "path": "/customerProfile/address", "value": {"city": "Bellevue"}}]),
                )
            },
            Case {
                conflicts: vec![(
                    "/customerProfile/address",
                    json!({"city": "Redmond"}),
                    json!("see notes"),
                    json!({"city": "Bellevue"}),
                    ConflictPolicy::CrmWins,
                )],
                ..case(
                    "a managed parent live turned into a scalar, crm wins",
                    json!({"customerProfile": {"address": {"city": "Redmond"}}}),
                    json!({"customerProfile": {"address": {"city": "Bellevue"}}}),
                    json!({"customerProfile": {"address": "see notes"}}),
                    json!([{"op": "replace", "path": "/customerProfile/address", "value": {"city": "Bellevue"}}]),
                )
            },
            Case {
                options: remote_wins(),
                conflicts: vec![(
                    "/customerProfile/address",
                    json!({"city": "Redmond"}),
                    json!("see notes"),
                    json!({"city": "Bellevue"}),
                    ConflictPolicy::RemoteWins,
                )],
                ..case(
                    "a managed parent live turned into a scalar, remote wins",
                    json!({"customerProfile": {"address": {"city": "Redmond"}}}),
                    json!({"customerProfile": {"address": {"city": "Bellevue"}}}),
                    json!({"customerProfile": {"address": "see notes"}}),
                    json!([]),
                )
            },
            Case {
                managed: managed(&["/customerProfile/address/city"]),
                already_applied: 1,
                ..case(
                    "a clear below an unmanaged scalar in live is already done",
                    json!({"customerProfile": {"address": {"city": "Redmond"}}}),
                    json!({"customerProfile": {"address": {}}}),
                    json!({"customerProfile": "n/a"}),
                    json!([]),
                )
            },
            Case {
                managed: managed(&["/customerProfile/address/city", "/name"]),
                rejected: &[(
                    "/customerProfile",
                    "/customerProfile is a string in the referral, not an object, so the managed \
                     member /customerProfile/address/city cannot be set below it",
                )],
                ..case(
                    "an unmanaged parent live turned into a scalar is refused",
                    json!({"name": "a", "customerProfile": {"address": {"city": "Redmond"}}}),
                    json!({"name": "b", "customerProfile": {"address": {"city": "Bellevue"}}}),
                    json!({"name": "a", "customerProfile": "n/a"}),
                    json!([{"op": "replace", "path": "/name", "value": "b"}]),
                )
            },
        ]);
    }

    fn referral(status: &str, substatus: &str, notes: &str) -> Value {
        json!({"status": status, "substatus": substatus, "details": {"notes": notes}})
    }

    #[test]
    fn status_is_checked_against_live() {
        run(vec![
            Case {
                rejected: &[(
                    "/status",
                    "Closed referral cannot move to Active (a Closed referral is final)",
                )],
                conflicts: vec![
                    (
                        "/status",
                        json!("New"),
                        json!("Closed"),
                        json!("Active"),
                        ConflictPolicy::CrmWins,
                    ),
                    (
                        "/substatus",
                        json!("Pending"),
                        json!("Declined"),
                        json!("Accepted"),
                        ConflictPolicy::CrmWins,
                    ),
                ],
                ..case(
                    "live Closed refuses Active, the rest goes",
                    referral("New", "Pending", "n"),
                    referral("Active", "Accepted", "m"),
                    referral("Closed", "Declined", "n"),
                    json!([{"op": "replace", "path": "/details/notes", "value": "m"}]),
                )
            },
            Case {
                already_applied: 2,
                ..case(
                    "status already moved",
                    referral("Active", "Accepted", "n"),
                    referral("Closed", "Won", "n"),
                    referral("Closed", "Won", "n"),
                    json!([]),
                )
            },
            Case {
                already_applied: 1,
                conflicts: vec![(
                    "/substatus",
                    json!("Accepted"),
                    json!("Lost"),
                    json!("Won"),
                    ConflictPolicy::CrmWins,
                )],
                ..case(
                    "seller closed it as lost, the CRM as won: only substatus differs",
                    referral("Active", "Accepted", "n"),
                    referral("Closed", "Won", "n"),
                    referral("Closed", "Lost", "n"),
                    json!([{"op": "replace", "path": "/substatus", "value": "Won"}]),
                )
            },
            Case {
                conflicts: vec![(
                    "/substatus",
                    json!("Pending"),
                    json!("Received"),
                    json!("Accepted"),
                    ConflictPolicy::CrmWins,
                )],
                ..case(
                    "a status change carries its substatus even when remote wins",
                    referral("New", "Pending", "n"),
                    referral("Active", "Accepted", "n"),
                    referral("New", "Received", "n"),
                    json!([
                        {"op": "replace", "path": "/status", "value": "Active"},
                        {"op": "replace", "path": "/substatus", "value": "Accepted"},
                    ]),
                )
            }
            .with_options(remote_wins()),
            Case {
                rejected: &[(
                    "/substatus",
                    "substatus Received does not go with status Active (Active takes Accepted)",
                )],
                conflicts: vec![(
                    "/substatus",
                    json!("Pending"),
                    json!("Accepted"),
                    json!("Received"),
                    ConflictPolicy::CrmWins,
                )],
                ..case(
                    "substatus-only change checked against the live status",
                    referral("New", "Pending", "n"),
                    referral("New", "Received", "n"),
                    referral("Active", "Accepted", "n"),
                    json!([]),
                )
            },
            case(
                "status moves from live, with substatus, status first",
                referral("New", "Pending", "n"),
                referral("Closed", "Won", "n"),
                referral("New", "Pending", "seller"),
                json!([
                    {"op": "replace", "path": "/status", "value": "Closed"},
                    {"op": "replace", "path": "/substatus", "value": "Won"},
                ]),
            ),
        ]);
    }

    impl Case {
        fn with_options(mut self, options: MergeOptions) -> Self {
            self.options = options;
            self
        }
    }

    #[test]
    fn with_live_equal_to_snapshot_it_is_the_plan() {
        let fixture: Value =
            serde_json::from_str(include_str!("../tests/fixtures/patch-vectors.json")).unwrap();
        let mut pairs: Vec<(Value, Value, ManagedPaths)> = fixture
            .as_array()
            .unwrap()
            .iter()
            .map(|vector| {
                (
                    vector["before"].clone(),
                    vector["after"].clone(),
                    ManagedPaths::all(),
                )
            })
            .collect();
        pairs.extend([
            (
                referral("Closed", "Won", "n"),
                referral("Active", "Accepted", "m"),
                ManagedPaths::all(),
            ),
            (
                json!({"ids": ["a"], "x": {"y": 1}, "gone": 1}),
                json!({"ids": ["a", "a"], "x": {"y": 2, "z": {"w": 1}}, "new": {"k": [1]}}),
                ManagedPaths::all(),
            ),
            (
                json!({"a": "flat", "b": 1}),
                json!({"a": {"c": 1}, "b": 2}),
                managed(&["/a/c", "/b"]),
            ),
        ]);
        for options in [crm_wins(), remote_wins()] {
            for on_cleared in [crate::diff::OnCleared::Null, crate::diff::OnCleared::Skip] {
                let options = MergeOptions {
                    diff: DiffOptions { on_cleared },
                    ..options
                };
                for (snapshot, desired, managed) in &pairs {
                    let plan = plan_patch(snapshot, desired, managed, &options.diff);
                    let merged = three_way(snapshot, desired, snapshot, managed, &options);
                    assert_eq!(merged.ops, plan.ops, "{desired}");
                    assert_eq!(merged.rejected, plan.rejected, "{desired}");
                    assert_eq!(merged.conflicts, vec![]);
                    assert_eq!(merged.already_applied, 0);
                }
            }
        }
    }

    #[test]
    fn unmanaged_element_members_are_carried_from_live() {
        let mut managed = managed(&["/customerProfile/team"]);
        for member in ["firstName", "lastName", "email"] {
            managed.insert_element_member(&["customerProfile", "team"], member);
        }
        let preference = json!({"locale": "en-us"});
        let live = json!({"customerProfile": {"team": [
            {"email": "Sue@x", "firstName": "Sue", "contactPreference": preference, "phoneNumber": "1"},
            {"firstName": "NoMail", "phoneNumber": "2"},
        ]}});
        let mut document = json!({"customerProfile": {"team": [
            {"firstName": "NoMail2"},
            {"email": "sue@x", "firstName": "Susan"},
        ]}});
        carry_unmanaged_element_members(&mut document, &live, &managed);
        assert_eq!(
            document,
            json!({"customerProfile": {"team": [
                // Position 0 in live has an address, so nothing matches.
                {"firstName": "NoMail2"},
                // Matched by address in any letter case; mapped members
                // keep the document's values.
                {"email": "sue@x", "firstName": "Susan", "contactPreference": preference, "phoneNumber": "1"},
            ]}})
        );
    }
}
