//! Vocabulary shared by every layer: entities, patch operations and the set
//! of referral paths the mapping manages.
//!
//! A *record* is a CRM row, a *referral* is the Partner Center resource, the
//! *snapshot* is the desired document last applied, a *plan* is what a cycle
//! will do for one record.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A referral document (or part of one) as JSON.
pub type Document = Value;

/// Which Dynamics table an export holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Entity {
    Opportunity,
    Lead,
}

impl Entity {
    /// The logical name of the primary-key column.
    pub fn id_column(self) -> &'static str {
        match self {
            Entity::Opportunity => "opportunityid",
            Entity::Lead => "leadid",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Opportunity => "opportunity",
            Entity::Lead => "lead",
        }
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One JSON Patch operation. The Referrals API accepts only `add` and
/// `replace`; the type makes every other operation unrepresentable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Op {
    Add { path: String, value: Value },
    Replace { path: String, value: Value },
}

impl Op {
    pub fn path(&self) -> &str {
        match self {
            Op::Add { path, .. } | Op::Replace { path, .. } => path,
        }
    }

    pub fn value(&self) -> &Value {
        match self {
            Op::Add { value, .. } | Op::Replace { value, .. } => value,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Op::Add { .. } => "add",
            Op::Replace { .. } => "replace",
        }
    }

    /// `true` for an append to an array (`/path/-`).
    pub fn is_append(&self) -> bool {
        matches!(self, Op::Add { path, .. } if path.ends_with("/-"))
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.kind(), self.path(), self.value())
    }
}

/// Escape one reference token for a JSON Pointer (RFC 6901).
pub fn escape_pointer_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// The referral paths a mapping owns, as a tree of object members.
///
/// A leaf owns the whole value below it (a scalar, an object or an array);
/// everything outside the tree belongs to Partner Center and is never
/// touched. [`ManagedPaths::all`] owns every path, which is what the `diff`
/// command and the patch vectors use.
///
/// A list of people (`customerProfile.team`) is *keyed*: its elements are
/// told apart by a member ([`ListKey`], `email`), the CRM owns only the
/// elements it maps and, in each, only the members the mapping fills
/// ([`ManagedPaths::element_members`]). Any other managed array is owned
/// whole, as a single value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ManagedPaths {
    node: ManagedNode,
    /// JSON Pointer of a managed array → the element members the mapping fills.
    element_members: BTreeMap<String, BTreeSet<String>>,
    /// JSON Pointer of a keyed list → how its elements are told apart.
    /// The CRM owns only the elements it maps, member by member; a keyed
    /// list is never written whole.
    keys: BTreeMap<String, ListKey>,
}

/// How the elements of a keyed list (`customerProfile.team`) are told
/// apart: by the value of one member (`email`), so that an element is a
/// person, not a position.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListKey {
    pub member: String,
    /// Compare keys ignoring letter case (e-mail addresses).
    pub ignore_case: bool,
}

impl ListKey {
    /// The identity of an element, or `None` when it has no usable key.
    pub fn of(&self, element: &Value) -> Option<String> {
        let text = element.get(&self.member)?.as_str()?.trim();
        if text.is_empty() {
            return None;
        }
        Some(if self.ignore_case {
            text.to_lowercase()
        } else {
            text.to_owned()
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ManagedNode {
    /// This member and everything below it is managed.
    #[default]
    All,
    /// Only these members are managed, each with its own subtree.
    Members(BTreeMap<String, ManagedNode>),
}

impl ManagedPaths {
    /// Every path is managed.
    pub fn all() -> Self {
        ManagedPaths {
            node: ManagedNode::All,
            element_members: BTreeMap::new(),
            keys: BTreeMap::new(),
        }
    }

    /// Nothing is managed until paths are inserted.
    pub fn empty() -> Self {
        ManagedPaths {
            node: ManagedNode::Members(BTreeMap::new()),
            element_members: BTreeMap::new(),
            keys: BTreeMap::new(),
        }
    }

    /// Manage the member at `segments` (object keys from the root) and all
    /// below it. Inserting below an already managed member changes nothing.
    pub fn insert<S: AsRef<str>>(&mut self, segments: &[S]) {
        let mut node = &mut self.node;
        for segment in segments {
            match node {
                ManagedNode::All => return,
                ManagedNode::Members(members) => {
                    node = members
                        .entry(segment.as_ref().to_owned())
                        .or_insert_with(|| ManagedNode::Members(BTreeMap::new()));
                }
            }
        }
        *node = ManagedNode::All;
    }

    /// Manage each of `pointers` (`/details/dealValue`; unescaped keys) —
    /// a compact way to write a tree in tests.
    #[cfg(test)]
    pub(crate) fn from_pointers(pointers: &[&str]) -> Self {
        let mut managed = ManagedPaths::empty();
        for pointer in pointers {
            let segments: Vec<&str> = pointer.split('/').skip(1).collect();
            managed.insert(&segments);
        }
        managed
    }

    /// Record that the mapping fills `member` in each element of the array
    /// at `array` (object keys from the root).
    pub fn insert_element_member<S: AsRef<str>>(&mut self, array: &[S], member: &str) {
        let pointer: String = array
            .iter()
            .map(|s| format!("/{}", escape_pointer_token(s.as_ref())))
            .collect();
        self.element_members
            .entry(pointer)
            .or_default()
            .insert(member.to_owned());
    }

    /// Managed arrays of objects (JSON Pointer) with the element members the
    /// mapping fills.
    pub fn element_members(&self) -> &BTreeMap<String, BTreeSet<String>> {
        &self.element_members
    }

    /// Identify the elements of the managed list at `array` (object keys
    /// from the root) by `key`.
    pub fn insert_list_key<S: AsRef<str>>(&mut self, array: &[S], key: ListKey) {
        let pointer: String = array
            .iter()
            .map(|s| format!("/{}", escape_pointer_token(s.as_ref())))
            .collect();
        self.keys.insert(pointer, key);
    }

    /// The key of the list at `pointer`, when it is a keyed list.
    pub fn list_key(&self, pointer: &str) -> Option<&ListKey> {
        self.keys.get(pointer)
    }

    /// Keyed lists (JSON Pointer) and their keys.
    pub fn list_keys(&self) -> &BTreeMap<String, ListKey> {
        &self.keys
    }

    pub fn root(&self) -> &ManagedNode {
        &self.node
    }

    /// Whether the member at `segments` is managed (it or an ancestor is a
    /// leaf of the tree).
    pub fn contains<S: AsRef<str>>(&self, segments: &[S]) -> bool {
        let mut node = &self.node;
        for segment in segments {
            match node {
                ManagedNode::All => return true,
                ManagedNode::Members(members) => match members.get(segment.as_ref()) {
                    Some(child) => node = child,
                    None => return false,
                },
            }
        }
        matches!(node, ManagedNode::All)
    }

    /// The managed leaves as JSON Pointers, sorted.
    pub fn leaves(&self) -> Vec<String> {
        fn walk(node: &ManagedNode, prefix: &str, out: &mut Vec<String>) {
            match node {
                ManagedNode::All => out.push(prefix.to_owned()),
                ManagedNode::Members(members) => {
                    for (key, child) in members {
                        walk(
                            child,
                            &format!("{prefix}/{}", escape_pointer_token(key)),
                            out,
                        );
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.node, "", &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn op_serialises_as_json_patch() {
        let op = Op::Add {
            path: "/team/-".into(),
            value: json!({"email": "a@b"}),
        };
        assert_eq!(
            serde_json::to_value(&op).unwrap(),
            json!({"op": "add", "path": "/team/-", "value": {"email": "a@b"}})
        );
        assert!(op.is_append());
    }

    #[test]
    fn other_ops_do_not_deserialise() {
        let remove = json!({"op": "remove", "path": "/name"});
        assert!(serde_json::from_value::<Op>(remove).is_err());
    }

    #[test]
    fn managed_paths_tree() {
        let mut managed = ManagedPaths::empty();
        managed.insert(&["details", "dealValue"]);
        managed.insert(&["customerProfile", "address"]);
        managed.insert(&["customerProfile", "address", "city"]);
        assert!(managed.contains(&["details", "dealValue"]));
        assert!(managed.contains(&["customerProfile", "address", "city"]));
        assert!(!managed.contains(&["details"]));
        assert!(!managed.contains(&["details", "notes"]));
        assert_eq!(
            managed.leaves(),
            vec!["/customerProfile/address", "/details/dealValue"]
        );
        assert!(ManagedPaths::all().contains(&["anything"]));
    }
}
