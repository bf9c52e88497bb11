//! What the mapping owns in a referral, place by place.
//!
//! A document is seen as a set of owned *slots*: each managed leaf
//! (`/details/dealValue`) is one, and in a keyed list
//! (`customerProfile.team`, keyed by `email`) each mapped member of each
//! element is one (`team[jane@contoso.example].lastName`). The merge
//! decides slot by slot; nothing outside the slots is ever read for a
//! decision or written. Pure: no I/O, no clock.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::{ListKey, ManagedNode, ManagedPaths, escape_pointer_token};

/// One owned place in a referral.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Slot {
    /// Object keys from the root: the leaf, or the keyed list.
    pub tokens: Vec<String>,
    /// For a member of a keyed list's element: which element, which member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub element: Option<ElementSlot>,
}

/// A member of one element of a keyed list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ElementSlot {
    /// The element's key, as [`ListKey::of`] gives it.
    pub key: String,
    pub member: String,
}

impl Slot {
    pub fn leaf(tokens: &[&str]) -> Slot {
        Slot {
            tokens: tokens.iter().map(|t| (*t).to_owned()).collect(),
            element: None,
        }
    }

    /// The JSON Pointer of the leaf or of the list.
    pub fn pointer(&self) -> String {
        self.tokens
            .iter()
            .map(|t| format!("/{}", escape_pointer_token(t)))
            .collect()
    }

    pub fn is_status(&self) -> bool {
        self.element.is_none()
            && self.tokens.len() == 1
            && (self.tokens[0] == "status" || self.tokens[0] == "substatus")
    }
}

impl fmt::Display for Slot {
    /// `/details/dealValue`, or `/customerProfile/team[jane@contoso.example]/lastName`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pointer())?;
        if let Some(element) = &self.element {
            write!(
                f,
                "[{}]/{}",
                element.key,
                escape_pointer_token(&element.member)
            )?;
        }
        Ok(())
    }
}

/// The owned slots of one document, with where each keyed element stands.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slots {
    /// Non-empty values only: `null` and absent are the same empty value.
    pub values: BTreeMap<Slot, Value>,
    /// Keyed list pointer → element key → the element as found.
    pub elements: BTreeMap<String, BTreeMap<String, FoundElement>>,
    /// Elements of keyed lists that cannot be told apart.
    pub problems: Vec<ListProblem>,
}

/// An element of a keyed list.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundElement {
    /// Its position in the list (the first, when the key repeats).
    pub index: usize,
    /// Its key as written (before any case folding).
    pub key_value: Value,
}

/// An element of a keyed list that cannot be told apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListProblem {
    NoKey { list: String, index: usize },
    RepeatedKey { list: String, key: String },
}

impl Slots {
    /// The slots of `document` under `managed`.
    pub fn of(document: &Value, managed: &ManagedPaths) -> Slots {
        let mut slots = Slots::default();
        let mut tokens = Vec::new();
        slots.walk(Some(document), managed.root(), managed, &mut tokens);
        slots
    }

    pub fn get(&self, slot: &Slot) -> Option<&Value> {
        self.values.get(slot)
    }

    /// Whether the element `key` of the list at `pointer` is there.
    pub fn element(&self, pointer: &str, key: &str) -> Option<&FoundElement> {
        self.elements.get(pointer)?.get(key)
    }

    fn walk(
        &mut self,
        value: Option<&Value>,
        node: &ManagedNode,
        managed: &ManagedPaths,
        tokens: &mut Vec<String>,
    ) {
        let Some(value) = value.filter(|v| !v.is_null()) else {
            return;
        };
        match node {
            ManagedNode::Members(members) => {
                let Value::Object(object) = value else { return };
                for (key, child) in members {
                    tokens.push(key.clone());
                    self.walk(object.get(key), child, managed, tokens);
                    tokens.pop();
                }
            }
            ManagedNode::All => {
                let pointer = pointer_of(tokens);
                match managed.list_key(&pointer) {
                    Some(key) => self.keyed_list(value, &pointer, key, managed, tokens),
                    None => {
                        self.values.insert(
                            Slot {
                                tokens: tokens.clone(),
                                element: None,
                            },
                            value.clone(),
                        );
                    }
                }
            }
        }
    }

    fn keyed_list(
        &mut self,
        value: &Value,
        pointer: &str,
        key: &ListKey,
        managed: &ManagedPaths,
        tokens: &[String],
    ) {
        let Value::Array(elements) = value else {
            // Not a list at all: owned as one value, so that a plan can
            // see it and refuse to write below it.
            self.values.insert(
                Slot {
                    tokens: tokens.to_vec(),
                    element: None,
                },
                value.clone(),
            );
            return;
        };
        let members = managed.element_members().get(pointer);
        let found = self.elements.entry(pointer.to_owned()).or_default();
        for (index, element) in elements.iter().enumerate() {
            let Some(identity) = key.of(element) else {
                if element.is_object() {
                    self.problems.push(ListProblem::NoKey {
                        list: pointer.to_owned(),
                        index,
                    });
                }
                continue;
            };
            if found.contains_key(&identity) {
                self.problems.push(ListProblem::RepeatedKey {
                    list: pointer.to_owned(),
                    key: identity,
                });
                continue;
            }
            found.insert(
                identity.clone(),
                FoundElement {
                    index,
                    key_value: element.get(&key.member).cloned().unwrap_or(Value::Null),
                },
            );
            // The key itself is a slot too, holding the identity: equal on
            // every side where the element is there (so never re-sent), and
            // what makes a new element with no other member worth adding.
            self.values.insert(
                Slot {
                    tokens: tokens.to_vec(),
                    element: Some(ElementSlot {
                        key: identity.clone(),
                        member: key.member.clone(),
                    }),
                },
                Value::String(identity.clone()),
            );
            for member in members.into_iter().flatten() {
                if *member == key.member {
                    continue;
                }
                if let Some(v) = element.get(member).filter(|v| !v.is_null()) {
                    self.values.insert(
                        Slot {
                            tokens: tokens.to_vec(),
                            element: Some(ElementSlot {
                                key: identity.clone(),
                                member: member.clone(),
                            }),
                        },
                        v.clone(),
                    );
                }
            }
        }
    }
}

/// The part of `referral` the mapping owns, as a document: the objects on
/// the way to every managed member (kept even when empty, so that a plan
/// knows a parent is there), each managed leaf, and each keyed list with
/// every element reduced to its key and mapped members (kept in place, so
/// that positions stay those of Partner Center). This is what the store
/// keeps as the *base*.
pub fn project(referral: &Value, managed: &ManagedPaths) -> Value {
    let mut tokens = Vec::new();
    project_node(referral, managed.root(), managed, &mut tokens).unwrap_or(Value::Null)
}

fn project_node(
    value: &Value,
    node: &ManagedNode,
    managed: &ManagedPaths,
    tokens: &mut Vec<String>,
) -> Option<Value> {
    if value.is_null() {
        return None;
    }
    match node {
        ManagedNode::Members(members) => {
            let Value::Object(object) = value else {
                // Something that is not an object where the mapping owns
                // members below: kept, so that a plan sees the obstacle.
                return Some(value.clone());
            };
            let mut out = Map::new();
            for (key, child) in members {
                if let Some(v) = object.get(key) {
                    tokens.push(key.clone());
                    if let Some(projected) = project_node(v, child, managed, tokens) {
                        out.insert(key.clone(), projected);
                    }
                    tokens.pop();
                }
            }
            Some(Value::Object(out))
        }
        ManagedNode::All => {
            let pointer = pointer_of(tokens);
            match (managed.list_key(&pointer), value) {
                (Some(key), Value::Array(elements)) => {
                    let members = managed.element_members().get(&pointer);
                    let projected = elements
                        .iter()
                        .map(|element| match element {
                            Value::Object(object) => {
                                let mut out = Map::new();
                                for (name, v) in object {
                                    let owned = *name == key.member
                                        || members.is_some_and(|m| m.contains(name));
                                    if owned && !v.is_null() {
                                        out.insert(name.clone(), v.clone());
                                    }
                                }
                                Value::Object(out)
                            }
                            _ => Value::Null,
                        })
                        .collect();
                    Some(Value::Array(projected))
                }
                _ => Some(value.clone()),
            }
        }
    }
}

/// Put `value` in `slot` of `document` (`None` or `null`: take the slot's
/// value out), making the objects, the keyed list and its element on the
/// way, so that [`Slots::of`] then finds that value there and every other
/// slot as it was. An element added this way carries its key as
/// [`ListKey::of`] gives it (case-folded where the key ignores case).
/// Returns `false`, and leaves the document as it was, when something that
/// is not an object (or, for an element's member, a list or an object
/// element) stands where the slot's parents should be and a value is to be
/// put there; taking out a value that is not there succeeds.
pub fn set_slot(
    document: &mut Value,
    slot: &Slot,
    value: Option<&Value>,
    managed: &ManagedPaths,
) -> bool {
    let value = value.filter(|v| !v.is_null());
    let Some(element) = &slot.element else {
        let Some((last, parents)) = slot.tokens.split_last() else {
            return false;
        };
        let Some(parent) = container(document, parents, value.is_some()) else {
            return value.is_none();
        };
        if parent.is_null() && value.is_some() {
            *parent = Value::Object(Map::new());
        }
        let Value::Object(object) = parent else {
            return value.is_none();
        };
        match value {
            Some(v) => {
                object.insert(last.clone(), v.clone());
            }
            None => {
                object.remove(last);
            }
        }
        return true;
    };
    let Some(key) = managed.list_key(&slot.pointer()) else {
        return false;
    };
    let Some(list) = container(document, &slot.tokens, value.is_some()) else {
        return value.is_none();
    };
    if list.is_null() {
        if value.is_none() {
            return true;
        }
        *list = Value::Array(Vec::new());
    }
    let Value::Array(elements) = list else {
        return false;
    };
    let found = elements
        .iter_mut()
        .find(|e| key.of(e).as_deref() == Some(element.key.as_str()));
    match (found, value) {
        // The key member is the element's identity: it stays while the
        // element is there.
        (Some(_), _) if element.member == key.member => true,
        (Some(Value::Object(members)), Some(v)) => {
            members.insert(element.member.clone(), v.clone());
            true
        }
        (Some(Value::Object(members)), None) => {
            members.remove(&element.member);
            true
        }
        (Some(_), v) => v.is_none(),
        (None, None) => true,
        (None, Some(v)) => {
            let mut members = Map::new();
            members.insert(key.member.clone(), Value::String(element.key.clone()));
            members.insert(element.member.clone(), v.clone());
            elements.push(Value::Object(members));
            true
        }
    }
}

/// The value at `tokens` below `document`, made when `make` (objects on
/// the way, `null` at the end for the caller to fill); `None` where it is
/// missing and not made, or where something other than an object stands on
/// the way (nothing is made before such an obstacle: only a missing member
/// is made, and what is made is an object).
fn container<'a>(document: &'a mut Value, tokens: &[String], make: bool) -> Option<&'a mut Value> {
    let mut at = document;
    for token in tokens {
        if at.is_null() && make {
            *at = Value::Object(Map::new());
        }
        let Value::Object(object) = at else {
            return None;
        };
        at = if make {
            object.entry(token.clone()).or_insert(Value::Null)
        } else {
            object.get_mut(token)?
        };
    }
    Some(at)
}

fn pointer_of(tokens: &[String]) -> String {
    tokens
        .iter()
        .map(|t| format!("/{}", escape_pointer_token(t)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn team_managed() -> ManagedPaths {
        let mut managed = ManagedPaths::empty();
        managed.insert(&["details", "dealValue"]);
        managed.insert(&["customerProfile", "address", "city"]);
        managed.insert(&["customerProfile", "team"]);
        for member in ["email", "lastName"] {
            managed.insert_element_member(&["customerProfile", "team"], member);
        }
        managed.insert_list_key(
            &["customerProfile", "team"],
            ListKey {
                member: "email".into(),
                ignore_case: true,
            },
        );
        managed
    }

    #[test]
    fn slots_are_leaves_and_keyed_element_members() {
        let doc = json!({
            "details": {"dealValue": 5, "notes": "x"},
            "customerProfile": {
                "address": {"city": null, "region": "EMEA"},
                "team": [
                    {"email": "Jane@X.example", "lastName": "Doe", "contactPreference": {"email": true}},
                    {"email": "sue@x.example"},
                    {"lastName": "no key"},
                    {"email": "jane@x.example", "lastName": "again"}
                ]
            }
        });
        let slots = Slots::of(&doc, &team_managed());
        let shown: Vec<String> = slots
            .values
            .iter()
            .map(|(s, v)| format!("{s}={v}"))
            .collect();
        assert_eq!(
            shown,
            [
                "/customerProfile/team[jane@x.example]/email=\"jane@x.example\"",
                "/customerProfile/team[jane@x.example]/lastName=\"Doe\"",
                "/customerProfile/team[sue@x.example]/email=\"sue@x.example\"",
                "/details/dealValue=5"
            ]
        );
        let pointer = "/customerProfile/team";
        assert_eq!(
            slots.element(pointer, "sue@x.example").map(|e| e.index),
            Some(1)
        );
        assert_eq!(
            slots.problems,
            [
                ListProblem::NoKey {
                    list: pointer.into(),
                    index: 2
                },
                ListProblem::RepeatedKey {
                    list: pointer.into(),
                    key: "jane@x.example".into()
                }
            ]
        );
    }

    #[test]
    fn projection_keeps_parents_positions_and_owned_members_only() {
        let live = json!({
            "id": "r1",
            "details": {"notes": "seller"},
            "customerProfile": {
                "address": {"region": "EMEA"},
                "team": [{"email": "a@x", "phoneNumber": "1"}, "odd", {"email": "b@x", "lastName": "B"}]
            }
        });
        assert_eq!(
            project(&live, &team_managed()),
            json!({
                "details": {},
                "customerProfile": {
                    "address": {},
                    "team": [{"email": "a@x"}, null, {"email": "b@x", "lastName": "B"}]
                }
            })
        );
    }

    fn team_slot(key: &str, member: &str) -> Slot {
        Slot {
            tokens: vec!["customerProfile".into(), "team".into()],
            element: Some(ElementSlot {
                key: key.into(),
                member: member.into(),
            }),
        }
    }

    #[test]
    fn a_slot_is_set_or_taken_out_and_every_other_slot_stays() {
        let managed = team_managed();
        let doc = json!({
            "details": {"dealValue": 5, "notes": "x"},
            "customerProfile": {"team": [{"email": "Jane@X.example", "lastName": "Doe", "phoneNumber": "1"}]}
        });
        let deal = Slot::leaf(&["details", "dealValue"]);
        let city = Slot::leaf(&["customerProfile", "address", "city"]);
        let cases: Vec<(&str, Value, Slot, Option<Value>)> = vec![
            ("a leaf replaced", doc.clone(), deal.clone(), Some(json!(7))),
            ("a leaf taken out", doc.clone(), deal.clone(), None),
            (
                "a leaf taken out by null",
                doc.clone(),
                deal.clone(),
                Some(Value::Null),
            ),
            (
                "a leaf under a missing parent",
                doc.clone(),
                city.clone(),
                Some(json!("Oslo")),
            ),
            ("a missing leaf taken out", doc.clone(), city.clone(), None),
            (
                "a leaf in an empty document",
                Value::Null,
                city.clone(),
                Some(json!("Oslo")),
            ),
            (
                "an element's member replaced",
                doc.clone(),
                team_slot("jane@x.example", "lastName"),
                Some(json!("Roe")),
            ),
            (
                "an element's member taken out",
                doc.clone(),
                team_slot("jane@x.example", "lastName"),
                None,
            ),
            (
                "a member of a new element",
                doc.clone(),
                team_slot("sue@x.example", "lastName"),
                Some(json!("Sue")),
            ),
            (
                "a new element by its key",
                doc.clone(),
                team_slot("sue@x.example", "email"),
                Some(json!("sue@x.example")),
            ),
            (
                "a member of an element of a missing list",
                json!({}),
                team_slot("sue@x.example", "lastName"),
                Some(json!("Sue")),
            ),
            (
                "a member of a missing element taken out",
                doc.clone(),
                team_slot("sue@x.example", "lastName"),
                None,
            ),
        ];
        for (name, mut document, slot, value) in cases {
            let before = Slots::of(&document, &managed);
            assert!(
                set_slot(&mut document, &slot, value.as_ref(), &managed),
                "{name}"
            );
            let after = Slots::of(&document, &managed);
            let wanted = value.filter(|v| !v.is_null());
            assert_eq!(after.get(&slot), wanted.as_ref(), "{name}: {document}");
            let others = |slots: &Slots| -> Vec<(Slot, Value)> {
                slots
                    .values
                    .iter()
                    .filter(|(s, _)| {
                        **s != slot
                            // A new element brings its key slot with it.
                            && !(s.element.as_ref().is_some_and(|e| {
                                slot.element.as_ref().is_some_and(|k| k.key == e.key)
                                    && e.member == "email"
                            }))
                    })
                    .map(|(s, v)| (s.clone(), v.clone()))
                    .collect()
            };
            assert_eq!(others(&after), others(&before), "{name}: {document}");
            assert!(after.problems.is_empty(), "{name}");
        }
        // What is outside the slots is kept.
        let mut document = doc.clone();
        set_slot(
            &mut document,
            &team_slot("jane@x.example", "lastName"),
            Some(&json!("Roe")),
            &managed,
        );
        assert_eq!(document["details"]["notes"], "x");
        assert_eq!(document["customerProfile"]["team"][0]["phoneNumber"], "1");
    }

    #[test]
    fn a_slot_behind_something_that_is_not_an_object_is_not_set() {
        let managed = team_managed();
        for mut document in [
            json!({"customerProfile": {"address": "12 Main St"}}),
            json!({"customerProfile": "Contoso"}),
        ] {
            let kept = document.clone();
            let city = Slot::leaf(&["customerProfile", "address", "city"]);
            assert!(!set_slot(
                &mut document,
                &city,
                Some(&json!("Oslo")),
                &managed
            ));
            assert_eq!(document, kept);
            assert!(
                set_slot(&mut document, &city, None, &managed),
                "nothing to take out"
            );
        }
        let mut document = json!({"customerProfile": {"team": "everyone"}});
        let kept = document.clone();
        assert!(!set_slot(
            &mut document,
            &team_slot("a@x", "lastName"),
            Some(&json!("A")),
            &managed
        ));
        assert_eq!(document, kept);
    }
}
