//! The diff: snapshot + desired document → the smallest JSON Patch the
//! Referrals API accepts. Pure: no I/O, no clock.
//!
//! Planning is two steps, shared with the three-way merge ([`crate::merge`]):
//!
//! 1. [`crm_changes`] walks the snapshot and the desired document through the
//!    managed tree and lists what the CRM changed, each at the deepest changed
//!    member. It does not look at any referral.
//! 2. [`render`] turns the changes that are to be sent into ops against a
//!    *base* document — the snapshot here, the live referral in the merge:
//!    `add` or `replace` depending on whether the member is there, a missing
//!    parent added whole, appends as `/-`.
//!
//! Throughout, `null` and an absent member are the same "empty" value.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::iter::Peekable;
use std::sync::LazyLock;

use json_patch::jsonptr::Pointer;
use json_patch::{AddOperation, PatchOperation, ReplaceOperation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::{ManagedNode, ManagedPaths, Op, escape_pointer_token};
use crate::status::{ReferralStatus, ReferralSubstatus, check_transition, read_status};

/// What to send when a managed member is cleared in the CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnCleared {
    /// `replace` it with `null`.
    #[default]
    Null,
    /// Leave the referral's value alone.
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiffOptions {
    pub on_cleared: OnCleared,
}

/// A change the diff refused to send, with the reason (e.g. an invalid
/// status transition). The record's other changes still go out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// JSON Pointer of the refused member(s), e.g. `/status`.
    pub path: String,
    pub reason: String,
}

/// The patch for one record.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlannedPatch {
    pub ops: Vec<Op>,
    pub rejected: Vec<Rejection>,
}

/// Plan the patch that turns `snapshot` into `desired` on every managed path.
///
/// Members outside `managed` are never touched. Each change is sent at the
/// deepest changed member; arrays either grow by appends (`/path/-`) or are
/// replaced whole; a cleared member follows `options.on_cleared`; `status`
/// travels with `substatus` and an invalid transition is refused (listed in
/// `rejected`) without holding back the other ops.
pub fn plan_patch(
    snapshot: &Value,
    desired: &Value,
    managed: &ManagedPaths,
    options: &DiffOptions,
) -> PlannedPatch {
    let mut rejected = Vec::new();
    // Changes become edits as `render` takes them, without a list between.
    let edits = crm_changes(snapshot, desired, managed, options)
        .into_iter()
        .flat_map(|change| match change {
            Change::Edit(edit) => Some(edit).into_iter().chain(Vec::new()),
            Change::Status { status, substatus } => {
                let edits = status_edits(snapshot, desired, managed, status, substatus)
                    .unwrap_or_else(|rejection| {
                        rejected.push(rejection);
                        Vec::new()
                    });
                None.into_iter().chain(edits)
            }
        });
    let rendered = render(snapshot, edits);
    rejected.extend(rendered.rejected);
    PlannedPatch {
        ops: rendered.ops,
        rejected,
    }
}

/// Why [`apply_ops`] could not apply a patch. The document is left as it was.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("op {index} ({kind} {path:?}): the path is not a JSON Pointer: {reason}")]
    InvalidPath {
        index: usize,
        kind: &'static str,
        path: String,
        reason: String,
    },
    #[error(transparent)]
    Patch(#[from] json_patch::PatchError),
}

/// Apply `ops` to `document` (json-patch's `patch`), as the service would:
/// all or nothing.
pub fn apply_ops(document: &mut Value, ops: &[Op]) -> Result<(), ApplyError> {
    let operations = ops
        .iter()
        .enumerate()
        .map(|(index, op)| patch_operation(index, op))
        .collect::<Result<Vec<_>, _>>()?;
    json_patch::patch(document, &operations)?;
    Ok(())
}

fn patch_operation(index: usize, op: &Op) -> Result<PatchOperation, ApplyError> {
    let path = Pointer::parse(op.path())
        .map_err(|error| ApplyError::InvalidPath {
            index,
            kind: op.kind(),
            path: op.path().to_owned(),
            reason: error.to_string(),
        })?
        .to_buf();
    Ok(match op {
        Op::Add { value, .. } => PatchOperation::Add(AddOperation {
            path,
            value: value.clone(),
        }),
        Op::Replace { value, .. } => PatchOperation::Replace(ReplaceOperation {
            path,
            value: value.clone(),
        }),
    })
}

// ---------------------------------------------------------------------------
// Step 1: what the CRM changed.

static NULL: Value = Value::Null;
static ALL: ManagedNode = ManagedNode::All;

/// Object keys from the root of a document.
pub(crate) type Tokens<'a> = Vec<&'a str>;

/// One change to a member, to be rendered as op(s) against a base document.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Edit<'a> {
    /// The member at `tokens` takes `value` (`null` when cleared).
    Set {
        tokens: Tokens<'a>,
        value: &'a Value,
    },
    /// `elements` go at the end of the array at `tokens`; `whole` is the
    /// desired array, sent instead when the base has no array there.
    Append {
        tokens: Tokens<'a>,
        elements: Vec<&'a Value>,
        whole: &'a Value,
    },
}

impl<'a> Edit<'a> {
    pub(crate) fn tokens(&self) -> &[&'a str] {
        match self {
            Edit::Set { tokens, .. } | Edit::Append { tokens, .. } => tokens,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change<'a> {
    Edit(Edit<'a>),
    /// Which of `/status` and `/substatus` the CRM changed. They are settled
    /// together (see [`status_edits`]), at the position of `status` when it
    /// changed and of `substatus` otherwise.
    Status {
        status: bool,
        substatus: bool,
    },
}

/// The CRM's changes from `snapshot` to `desired` on the managed paths, in
/// document order (object members in sorted key order).
pub(crate) fn crm_changes<'a>(
    snapshot: &'a Value,
    desired: &'a Value,
    managed: &'a ManagedPaths,
    options: &DiffOptions,
) -> Vec<Change<'a>> {
    let mut walk = Walk {
        on_cleared: options.on_cleared,
        changes: Vec::new(),
    };
    walk.member(&Trail::Root, Some(snapshot), Some(desired), managed.root());
    walk.changes
}

struct Walk<'a> {
    on_cleared: OnCleared,
    changes: Vec<Change<'a>>,
}

/// The keys from the root down to the member being walked, kept on the
/// stack: a token list is built only for the members that changed.
enum Trail<'t, 'a> {
    Root,
    Member {
        parent: &'t Trail<'t, 'a>,
        key: &'a str,
    },
}

impl<'a> Trail<'_, 'a> {
    fn tokens(&self) -> Tokens<'a> {
        let mut depth = 0;
        let mut trail = self;
        while let Trail::Member { parent, .. } = trail {
            depth += 1;
            trail = parent;
        }
        let mut tokens = vec![""; depth];
        let mut trail = self;
        while let Trail::Member { parent, key } = trail {
            depth -= 1;
            tokens[depth] = *key;
            trail = parent;
        }
        tokens
    }
}

impl<'a> Walk<'a> {
    fn member(
        &mut self,
        trail: &Trail<'_, 'a>,
        snapshot: Option<&'a Value>,
        desired: Option<&'a Value>,
        node: &'a ManagedNode,
    ) {
        let (snapshot, desired) = (non_null(snapshot), non_null(desired));
        match node {
            // Only some members below are managed: a value that is not an
            // object exposes none of them, so it reads as empty.
            ManagedNode::Members(members) => self.object(
                trail,
                snapshot.and_then(Value::as_object),
                desired.and_then(Value::as_object),
                Some(members),
            ),
            ManagedNode::All => match (snapshot, desired) {
                (None, None) => {}
                (Some(_), None) => {
                    if self.on_cleared == OnCleared::Null {
                        self.set(trail, &NULL);
                    }
                }
                (None, Some(desired)) => self.set(trail, desired),
                (Some(Value::Object(snapshot)), Some(Value::Object(desired))) => {
                    self.object(trail, Some(snapshot), Some(desired), None)
                }
                (Some(Value::Array(snapshot)), Some(whole @ Value::Array(desired))) => {
                    self.array(trail, snapshot, desired, whole)
                }
                (Some(snapshot), Some(desired)) => {
                    if !equivalent(snapshot, desired) {
                        self.set(trail, desired);
                    }
                }
            },
        }
    }

    /// Walk the members of an object; `members` is `None` when all of them
    /// are managed.
    fn object(
        &mut self,
        trail: &Trail<'_, 'a>,
        snapshot: Option<&'a Map<String, Value>>,
        desired: Option<&'a Map<String, Value>>,
        members: Option<&'a BTreeMap<String, ManagedNode>>,
    ) {
        let child_node = |key: &str| -> Option<&'a ManagedNode> {
            match members {
                None => Some(&ALL),
                Some(members) => members.get(key),
            }
        };
        let at_root = matches!(trail, Trail::Root);
        let on_cleared = self.on_cleared;
        // Settled when the walk first meets either member: most objects
        // have neither, and need no lookups for them.
        let mut status_group: Option<(bool, bool)> = None;
        let status_changed = |member: &str| {
            matches!(child_node(member), Some(ManagedNode::All))
                && member_changed(
                    on_cleared,
                    snapshot.and_then(|map| map.get(member)),
                    desired.and_then(|map| map.get(member)),
                )
        };

        for (key, snapshot_value, desired_value) in members_of(snapshot, desired, members) {
            if at_root && (key == "status" || key == "substatus") {
                let (status, substatus) = *status_group
                    .get_or_insert_with(|| (status_changed("status"), status_changed("substatus")));
                let anchor = if status { "status" } else { "substatus" };
                if (status || substatus) && key == anchor {
                    self.changes.push(Change::Status { status, substatus });
                }
                continue;
            }
            let Some(node) = child_node(key) else {
                continue;
            };
            self.member(
                &Trail::Member { parent: trail, key },
                snapshot_value,
                desired_value,
                node,
            );
        }
    }

    fn array(
        &mut self,
        trail: &Trail<'_, 'a>,
        snapshot: &'a [Value],
        desired: &'a [Value],
        whole: &'a Value,
    ) {
        let prefix_kept = snapshot.len() <= desired.len()
            && snapshot
                .iter()
                .zip(desired)
                .all(|(snapshot, desired)| equivalent(snapshot, desired));
        if !prefix_kept {
            self.set(trail, whole);
        } else if desired.len() > snapshot.len() {
            self.changes.push(Change::Edit(Edit::Append {
                tokens: trail.tokens(),
                elements: desired[snapshot.len()..].iter().collect(),
                whole,
            }));
        }
    }

    fn set(&mut self, trail: &Trail<'_, 'a>, value: &'a Value) {
        self.changes.push(Change::Edit(Edit::Set {
            tokens: trail.tokens(),
            value,
        }));
    }
}

/// Whether `serde_json::Map` iterates in key order. It does unless its
/// `preserve_order` feature is on, which any crate in the build could turn
/// on; then [`members_of`] sorts for itself.
static MAPS_ARE_SORTED: LazyLock<bool> = LazyLock::new(|| {
    let mut probe = Map::new();
    probe.insert("b".to_owned(), Value::Null);
    probe.insert("a".to_owned(), Value::Null);
    probe.keys().next().map(String::as_str) == Some("a")
});

/// Whether a wholly managed member changed, as [`Walk::member`] sees it.
fn member_changed(
    on_cleared: OnCleared,
    snapshot: Option<&Value>,
    desired: Option<&Value>,
) -> bool {
    match (non_null(snapshot), non_null(desired)) {
        (Some(_), None) => on_cleared == OnCleared::Null,
        (snapshot, desired) => !same(snapshot, desired),
    }
}

/// The members to walk in an object, in key order, with their values on
/// either side: the managed members when only some are managed, else every
/// key of either side. Sorted maps are merged as they are, without
/// collecting keys or looking values up.
fn members_of<'a>(
    snapshot: Option<&'a Map<String, Value>>,
    desired: Option<&'a Map<String, Value>>,
    members: Option<&'a BTreeMap<String, ManagedNode>>,
) -> Members<'a> {
    if let Some(members) = members {
        return Members::Managed {
            keys: members.keys(),
            snapshot,
            desired,
        };
    }
    if !*MAPS_ARE_SORTED {
        let keys: BTreeSet<&'a str> = snapshot
            .into_iter()
            .chain(desired)
            .flat_map(|map| map.keys().map(String::as_str))
            .collect();
        return Members::Collected {
            keys: keys.into_iter(),
            snapshot,
            desired,
        };
    }
    let entries = |map: Option<&'a Map<String, Value>>| map.unwrap_or(&EMPTY).iter().peekable();
    Members::Merged(entries(snapshot), entries(desired))
}

static EMPTY: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);

type Entries<'a> = serde_json::map::Iter<'a>;

/// `(key, snapshot's value, desired value)` in key order.
enum Members<'a> {
    Managed {
        keys: std::collections::btree_map::Keys<'a, String, ManagedNode>,
        snapshot: Option<&'a Map<String, Value>>,
        desired: Option<&'a Map<String, Value>>,
    },
    Collected {
        keys: std::collections::btree_set::IntoIter<&'a str>,
        snapshot: Option<&'a Map<String, Value>>,
        desired: Option<&'a Map<String, Value>>,
    },
    /// Two sorted maps, merged; a key in both comes once.
    Merged(Peekable<Entries<'a>>, Peekable<Entries<'a>>),
}

type Member<'a> = (&'a str, Option<&'a Value>, Option<&'a Value>);

impl<'a> Iterator for Members<'a> {
    type Item = Member<'a>;

    fn next(&mut self) -> Option<Member<'a>> {
        let look_up = |key: &'a str,
                       snapshot: Option<&'a Map<String, Value>>,
                       desired: Option<&'a Map<String, Value>>| {
            (
                key,
                snapshot.and_then(|map| map.get(key)),
                desired.and_then(|map| map.get(key)),
            )
        };
        match self {
            Members::Managed {
                keys,
                snapshot,
                desired,
            } => keys.next().map(|key| look_up(key, *snapshot, *desired)),
            Members::Collected {
                keys,
                snapshot,
                desired,
            } => keys.next().map(|key| look_up(key, *snapshot, *desired)),
            Members::Merged(left, right) => {
                let order = match (left.peek(), right.peek()) {
                    (Some((l, _)), Some((r, _))) => l.cmp(r),
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (None, None) => return None,
                };
                Some(match order {
                    Ordering::Less => left
                        .next()
                        .map(|(key, value)| (key.as_str(), Some(value), None))?,
                    Ordering::Greater => right
                        .next()
                        .map(|(key, value)| (key.as_str(), None, Some(value)))?,
                    Ordering::Equal => {
                        let (key, snapshot_value) = left.next()?;
                        let desired_value = right.next().map(|(_, value)| value);
                        (key.as_str(), Some(snapshot_value), desired_value)
                    }
                })
            }
        }
    }
}

/// `None` for an absent member and for `null`.
pub(crate) fn non_null(value: Option<&Value>) -> Option<&Value> {
    value.filter(|value| !value.is_null())
}

/// Equality of two possibly empty members, `null` being the same as absent.
pub(crate) fn same(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (non_null(a), non_null(b)) {
        (None, None) => true,
        (Some(a), Some(b)) => equivalent(a, b),
        _ => false,
    }
}

/// Equality of JSON values where a `null` member is the same as an absent
/// one and an integer equals the float of the same value (`50000` and
/// `50000.0` are one deal value).
pub(crate) fn equivalent(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            a.iter().all(|(key, value)| same(Some(value), b.get(key)))
                && b.iter()
                    .all(|(key, value)| value.is_null() || a.contains_key(key))
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| equivalent(a, b))
        }
        (Value::Number(a), Value::Number(b)) if a.is_f64() || b.is_f64() => {
            a.as_f64() == b.as_f64()
        }
        _ => a == b,
    }
}

/// The JSON Pointer of `tokens` (`~` written `~0`, `/` written `~1`).
pub(crate) fn pointer(tokens: &[&str]) -> String {
    let length = tokens.iter().map(|token| token.len() + 1).sum();
    let mut path = String::with_capacity(length);
    for token in tokens {
        path.push('/');
        if token.contains(['~', '/']) {
            path.push_str(&escape_pointer_token(token));
        } else {
            path.push_str(token);
        }
    }
    path
}

// ---------------------------------------------------------------------------
// Status and substatus.

/// The edits that send a status-group change against `current` (the
/// snapshot, or the live referral in the merge), or why it cannot go.
///
/// `send_status`: `/status` goes, always followed by `/substatus` (the API
/// wants a status change to carry a substatus valid for it).
/// `send_substatus` alone: only `/substatus` goes. Either way the pair the
/// referral would end up with is checked against the transition table from
/// `current`'s status.
pub(crate) fn status_edits<'a>(
    current: &Value,
    desired: &'a Value,
    managed: &ManagedPaths,
    send_status: bool,
    send_substatus: bool,
) -> Result<Vec<Edit<'a>>, Rejection> {
    if !send_status && !send_substatus {
        return Ok(Vec::new());
    }
    let path = if send_status { "/status" } else { "/substatus" };
    let reject = |reason: String| Rejection {
        path: path.to_owned(),
        reason,
    };
    if send_status && !managed.contains(&["substatus"]) {
        return Err(reject(
            "status is managed but substatus is not; a status change must carry its substatus"
                .to_owned(),
        ));
    }

    let from = read_status(current).map_err(|error| {
        reject(format!(
            "cannot read the referral's current status: {error}"
        ))
    })?;
    let desired_substatus = desired.get("substatus");
    let to_status = if send_status {
        ReferralStatus::from_json(desired.get("status"))
    } else {
        ReferralStatus::from_json(current.get("status"))
    };
    let to = to_status
        .and_then(|status| Ok((status, ReferralSubstatus::from_json(desired_substatus)?)))
        .map_err(|error| reject(format!("invalid desired status: {error}")))?;
    check_transition(from, to).map_err(|error| reject(error.to_string()))?;

    let member = |name: &'a str| Edit::Set {
        tokens: vec![name],
        value: desired.get(name).unwrap_or(&NULL),
    };
    Ok(if send_status {
        vec![member("status"), member("substatus")]
    } else {
        vec![member("substatus")]
    })
}

// ---------------------------------------------------------------------------
// Step 2: edits → ops against a base document.

#[derive(Debug, Default)]
pub(crate) struct Rendered {
    pub(crate) ops: Vec<Op>,
    pub(crate) rejected: Vec<Rejection>,
}

/// Where an edit lands in the base document.
#[derive(Debug)]
pub(crate) enum Location<'v> {
    /// The parent object is there; `current` is the member's value.
    Member {
        exists: bool,
        current: Option<&'v Value>,
    },
    /// The ancestor at `tokens[..depth]` is absent (`exists == false`) or
    /// `null`: JSON Patch cannot add below it, so it is added whole.
    MissingParent { depth: usize, exists: bool },
    /// The ancestor at `tokens[..depth]` holds `found`, which is not an
    /// object, so nothing can be set below it.
    Obstructed { depth: usize, found: &'v Value },
}

pub(crate) fn locate<'v>(base: &'v Value, tokens: &[&str]) -> Location<'v> {
    let Some((last, parents)) = tokens.split_last() else {
        return Location::Member {
            exists: true,
            current: Some(base),
        };
    };
    let mut current = base;
    for (depth, token) in parents.iter().enumerate() {
        // An element of a keyed list, addressed by its position (which the
        // eTag the plan is sent under vouches for).
        if let Value::Array(elements) = current
            && let Some(element) = token.parse::<usize>().ok().and_then(|i| elements.get(i))
        {
            current = element;
            continue;
        }
        let Value::Object(members) = current else {
            return Location::Obstructed {
                depth,
                found: current,
            };
        };
        match members.get(*token) {
            None => {
                return Location::MissingParent {
                    depth: depth + 1,
                    exists: false,
                };
            }
            Some(Value::Null) => {
                return Location::MissingParent {
                    depth: depth + 1,
                    exists: true,
                };
            }
            Some(child) => current = child,
        }
    }
    match current {
        Value::Object(members) => Location::Member {
            exists: members.contains_key(*last),
            current: members.get(*last),
        },
        found => Location::Obstructed {
            depth: parents.len(),
            found,
        },
    }
}

/// Why nothing can be set below a non-object value.
pub(crate) fn obstruction(obstacle: &[&str], found: &Value, edit: &[&str]) -> Rejection {
    let kind = match found {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    let place = if obstacle.is_empty() {
        "the document root".to_owned()
    } else {
        pointer(obstacle)
    };
    Rejection {
        path: pointer(obstacle),
        reason: format!(
            "{place} is {kind} in the referral, not an object, so the managed member {} cannot be set below it",
            pointer(edit)
        ),
    }
}

fn set_op(exists: bool, path: String, value: Value) -> Op {
    if exists {
        Op::Replace { path, value }
    } else {
        Op::Add { path, value }
    }
}

/// Express `edits` as ops against `base`, in order.
pub(crate) fn render<'a>(base: &Value, edits: impl IntoIterator<Item = Edit<'a>>) -> Rendered {
    let mut ops: Vec<Op> = Vec::new();
    // Missing parents added whole, with the index of their op, whose value
    // the edits below them fill in; and obstacles already reported. A
    // patch has a handful of each at most (bounded by the managed tree), so
    // a list beats a hash map.
    let mut parents: Vec<(String, usize)> = Vec::new();
    let mut obstacles: Vec<String> = Vec::new();
    let mut rejected = Vec::new();

    for edit in edits {
        let tokens = edit.tokens();
        match locate(base, tokens) {
            Location::Member { exists, current } => {
                let path = pointer(tokens);
                match edit {
                    Edit::Set { value, .. } => ops.push(set_op(exists, path, value.clone())),
                    Edit::Append {
                        elements, whole, ..
                    } => match non_null(current) {
                        Some(Value::Array(_)) => {
                            ops.extend(elements.into_iter().map(|element| Op::Add {
                                path: format!("{path}/-"),
                                value: element.clone(),
                            }))
                        }
                        // No array to append to: the desired array goes whole.
                        _ => ops.push(set_op(exists, path, whole.clone())),
                    },
                }
            }
            Location::MissingParent { depth, exists } => {
                let value = match &edit {
                    Edit::Set { value, .. } => (*value).clone(),
                    Edit::Append { whole, .. } => (*whole).clone(),
                };
                let path = pointer(&tokens[..depth]);
                let index = match parents.iter().find(|(parent, _)| *parent == path) {
                    Some(&(_, index)) => index,
                    None => {
                        ops.push(set_op(exists, path.clone(), Value::Object(Map::new())));
                        parents.push((path, ops.len() - 1));
                        ops.len() - 1
                    }
                };
                if let Some(Op::Add { value: parent, .. } | Op::Replace { value: parent, .. }) =
                    ops.get_mut(index)
                {
                    insert_at(parent, &tokens[depth..], value);
                }
            }
            Location::Obstructed { depth, found } => {
                let obstacle = pointer(&tokens[..depth]);
                if !obstacles.contains(&obstacle) {
                    rejected.push(obstruction(&tokens[..depth], found, tokens));
                    obstacles.push(obstacle);
                }
            }
        }
    }
    Rendered { ops, rejected }
}

/// Put `value` at `tokens` below `target`, creating objects on the way.
fn insert_at(target: &mut Value, tokens: &[&str], value: Value) {
    let Some((first, rest)) = tokens.split_first() else {
        *target = value;
        return;
    };
    // Edits never nest (the walk stops at the first changed member), so the
    // parent being built is always an object here; start one if it is not.
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(members) = target {
        let child = members
            .entry((*first).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        insert_at(child, rest, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn managed(paths: &[&str]) -> ManagedPaths {
        ManagedPaths::from_pointers(paths)
    }

    fn ops(value: Value) -> Vec<Op> {
        serde_json::from_value(value).unwrap()
    }

    fn null_options() -> DiffOptions {
        DiffOptions::default()
    }

    fn skip_options() -> DiffOptions {
        DiffOptions {
            on_cleared: OnCleared::Skip,
        }
    }

    struct Case {
        name: &'static str,
        snapshot: Value,
        desired: Value,
        managed: ManagedPaths,
        options: DiffOptions,
        expected: Value,
        rejected: &'static [(&'static str, &'static str)],
    }

    fn case(name: &'static str, snapshot: Value, desired: Value, expected: Value) -> Case {
        Case {
            name,
            snapshot,
            desired,
            managed: ManagedPaths::all(),
            options: null_options(),
            expected,
            rejected: &[],
        }
    }

    fn run(cases: Vec<Case>) {
        for case in cases {
            let plan = plan_patch(&case.snapshot, &case.desired, &case.managed, &case.options);
            assert_eq!(plan.ops, ops(case.expected.clone()), "case {:?}", case.name);
            let rejected: Vec<(&str, &str)> = plan
                .rejected
                .iter()
                .map(|rejection| (rejection.path.as_str(), rejection.reason.as_str()))
                .collect();
            assert_eq!(rejected, case.rejected, "case {:?}: rejections", case.name);
            // Every plan must apply to its snapshot.
            let mut applied = case.snapshot.clone();
            apply_ops(&mut applied, &plan.ops)
                .unwrap_or_else(|error| panic!("case {:?}: {error}", case.name));
        }
    }

    #[test]
    fn members_and_nesting() {
        run(vec![
            case(
                "equal documents",
                json!({"a": 1, "b": {"c": [1]}}),
                json!({"a": 1, "b": {"c": [1]}}),
                json!([]),
            ),
            case(
                "deepest changed member",
                json!({"customerProfile": {"name": "C", "address": {"city": "Redmond", "state": "WA"}}}),
                json!({"customerProfile": {"name": "C", "address": {"city": "Bellevue", "state": "WA"}}}),
                json!([{"op": "replace", "path": "/customerProfile/address/city", "value": "Bellevue"}]),
            ),
            case(
                "sorted key order",
                json!({"z": 1, "a": 1, "m": {"y": 1, "b": 1}}),
                json!({"z": 2, "a": 2, "m": {"y": 2, "b": 2}}),
                json!([
                    {"op": "replace", "path": "/a", "value": 2},
                    {"op": "replace", "path": "/m/b", "value": 2},
                    {"op": "replace", "path": "/m/y", "value": 2},
                    {"op": "replace", "path": "/z", "value": 2},
                ]),
            ),
            case(
                "new member is added",
                json!({"details": {"notes": "n"}}),
                json!({"details": {"notes": "n", "closingDateTime": "2019-01-31T00:00:00Z"}}),
                json!([{"op": "add", "path": "/details/closingDateTime", "value": "2019-01-31T00:00:00Z"}]),
            ),
            case(
                "new member under an absent parent adds the parent in one op",
                json!({"name": "x"}),
                json!({"name": "x", "details": {"notes": "n", "requirements": {"products": [{"id": "Azure"}]}}}),
                json!([{"op": "add", "path": "/details", "value": {"notes": "n", "requirements": {"products": [{"id": "Azure"}]}}}]),
            ),
            case(
                "a null member is replaced, not added",
                json!({"details": {"closingDateTime": null}}),
                json!({"details": {"closingDateTime": "2019-01-31T00:00:00Z"}}),
                json!([{"op": "replace", "path": "/details/closingDateTime", "value": "2019-01-31T00:00:00Z"}]),
            ),
            case(
                "a null parent is replaced whole",
                json!({"details": null}),
                json!({"details": {"notes": "n"}}),
                json!([{"op": "replace", "path": "/details", "value": {"notes": "n"}}]),
            ),
            case(
                "keys are escaped (RFC 6901)",
                json!({"a/b": {"m~n": 1}}),
                json!({"a/b": {"m~n": 2}, "~": true}),
                json!([
                    {"op": "replace", "path": "/a~1b/m~0n", "value": 2},
                    {"op": "add", "path": "/~0", "value": true},
                ]),
            ),
            case(
                "integers and floats of the same value are equal",
                json!({"details": {"dealValue": 50000}}),
                json!({"details": {"dealValue": 50000.0}}),
                json!([]),
            ),
        ]);
    }

    #[test]
    fn type_changes_replace_the_member() {
        run(vec![
            case(
                "object to scalar",
                json!({"a": {"b": 1}}),
                json!({"a": "flat"}),
                json!([{"op": "replace", "path": "/a", "value": "flat"}]),
            ),
            case(
                "scalar to object",
                json!({"a": 3}),
                json!({"a": {"b": 1}}),
                json!([{"op": "replace", "path": "/a", "value": {"b": 1}}]),
            ),
            case(
                "scalar to array",
                json!({"a": "x"}),
                json!({"a": ["x"]}),
                json!([{"op": "replace", "path": "/a", "value": ["x"]}]),
            ),
            case(
                "array to object",
                json!({"a": [1]}),
                json!({"a": {"0": 1}}),
                json!([{"op": "replace", "path": "/a", "value": {"0": 1}}]),
            ),
            case(
                "string to number",
                json!({"a": "1"}),
                json!({"a": 1}),
                json!([{"op": "replace", "path": "/a", "value": 1}]),
            ),
        ]);
    }

    #[test]
    fn arrays() {
        let sue = json!({"email": "sue@contoso.com"});
        let joe = json!({"email": "joe@contoso.com"});
        let ann = json!({"email": "ann@contoso.com"});
        run(vec![
            case(
                "equal",
                json!({"team": [sue, joe]}),
                json!({"team": [sue, joe]}),
                json!([]),
            ),
            case(
                "one appended element",
                json!({"team": [sue]}),
                json!({"team": [sue, joe]}),
                json!([{"op": "add", "path": "/team/-", "value": joe}]),
            ),
            case(
                "appends in order",
                json!({"team": [sue]}),
                json!({"team": [sue, joe, ann]}),
                json!([
                    {"op": "add", "path": "/team/-", "value": joe},
                    {"op": "add", "path": "/team/-", "value": ann},
                ]),
            ),
            case(
                "append to an empty array",
                json!({"ids": []}),
                json!({"ids": ["a"]}),
                json!([{"op": "add", "path": "/ids/-", "value": "a"}]),
            ),
            case(
                "reorder replaces the array",
                json!({"team": [sue, joe]}),
                json!({"team": [joe, sue]}),
                json!([{"op": "replace", "path": "/team", "value": [joe, sue]}]),
            ),
            case(
                "edited element replaces the array",
                json!({"team": [sue, joe]}),
                json!({"team": [sue, {"email": "joe@fabrikam.com"}]}),
                json!([{"op": "replace", "path": "/team", "value": [sue, {"email": "joe@fabrikam.com"}]}]),
            ),
            case(
                "removed element replaces the array",
                json!({"team": [sue, joe]}),
                json!({"team": [sue]}),
                json!([{"op": "replace", "path": "/team", "value": [sue]}]),
            ),
            case(
                "emptied array is replaced by []",
                json!({"team": [sue]}),
                json!({"team": []}),
                json!([{"op": "replace", "path": "/team", "value": []}]),
            ),
            case(
                "new array is added whole",
                json!({}),
                json!({"team": [sue, joe]}),
                json!([{"op": "add", "path": "/team", "value": [sue, joe]}]),
            ),
        ]);
    }

    #[test]
    fn cleared_members() {
        run(vec![
            case(
                "absent in desired: replace with null",
                json!({"details": {"notes": "n", "dealValue": 1}}),
                json!({"details": {"dealValue": 1}}),
                json!([{"op": "replace", "path": "/details/notes", "value": null}]),
            ),
            case(
                "null in desired: replace with null",
                json!({"details": {"notes": "n"}}),
                json!({"details": {"notes": null}}),
                json!([{"op": "replace", "path": "/details/notes", "value": null}]),
            ),
            case(
                "cleared object: one replace",
                json!({"details": {"notes": "n", "dealValue": 1}}),
                json!({}),
                json!([{"op": "replace", "path": "/details", "value": null}]),
            ),
            case(
                "null to absent is no change",
                json!({"a": null}),
                json!({}),
                json!([]),
            ),
            case(
                "absent to null is no change",
                json!({}),
                json!({"a": null}),
                json!([]),
            ),
            Case {
                options: skip_options(),
                ..case(
                    "skip leaves the referral's value",
                    json!({"details": {"notes": "n", "dealValue": 1}}),
                    json!({"details": {"dealValue": 2}}),
                    json!([{"op": "replace", "path": "/details/dealValue", "value": 2}]),
                )
            },
        ]);
    }

    #[test]
    fn only_managed_paths_are_touched() {
        let snapshot = json!({
            "name": "old",
            "customerProfile": {"name": "C", "address": {"city": "Redmond", "state": "WA"}},
            "details": {"notes": "n", "dealValue": 1},
        });
        let desired = json!({
            "name": "new",
            "customerProfile": {"name": "D", "address": {"city": "Bellevue", "state": "OR"}},
            "details": {"notes": "m", "dealValue": 2},
        });
        run(vec![
            Case {
                managed: managed(&["/customerProfile/address/city", "/details"]),
                ..case(
                    "unmanaged members differ but stay",
                    snapshot.clone(),
                    desired.clone(),
                    json!([
                        {"op": "replace", "path": "/customerProfile/address/city", "value": "Bellevue"},
                        {"op": "replace", "path": "/details/dealValue", "value": 2},
                        {"op": "replace", "path": "/details/notes", "value": "m"},
                    ]),
                )
            },
            Case {
                managed: ManagedPaths::empty(),
                ..case(
                    "nothing managed",
                    snapshot.clone(),
                    desired.clone(),
                    json!([]),
                )
            },
            Case {
                managed: managed(&["/customerProfile/address/city", "/details/notes"]),
                ..case(
                    "absent parent is added with the managed members only",
                    json!({"name": "x"}),
                    json!({"customerProfile": {"name": "C", "address": {"city": "Bellevue", "state": "WA"}}, "details": {"notes": "n", "dealValue": 3}}),
                    json!([
                        {"op": "add", "path": "/customerProfile", "value": {"address": {"city": "Bellevue"}}},
                        {"op": "add", "path": "/details", "value": {"notes": "n"}},
                    ]),
                )
            },
            Case {
                managed: managed(&["/customerProfile/address/city"]),
                ..case(
                    "desired without the managed members clears them only",
                    json!({"customerProfile": {"name": "C", "address": {"city": "Redmond", "state": "WA"}}}),
                    json!({"customerProfile": "gone"}),
                    json!([{"op": "replace", "path": "/customerProfile/address/city", "value": null}]),
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
                    "a non-object parent outside the managed tree is refused, the rest goes",
                    json!({"name": "a", "customerProfile": "flat"}),
                    json!({"name": "b", "customerProfile": {"address": {"city": "Bellevue"}}}),
                    json!([{"op": "replace", "path": "/name", "value": "b"}]),
                )
            },
        ]);
    }

    fn referral(status: &str, substatus: &str) -> Value {
        json!({
            "details": {"notes": "n"},
            "status": status,
            "statusReason": "r",
            "substatus": substatus,
            "team": [],
        })
    }

    #[test]
    fn status_travels_with_substatus() {
        let mut edited = referral("Closed", "Won");
        edited["details"]["notes"] = json!("m");
        edited["statusReason"] = json!("s");
        edited["team"] = json!(["t"]);
        let mut substatus_only = referral("New", "Received");
        substatus_only["statusReason"] = json!("s");

        run(vec![
            case(
                "status change carries substatus, status first",
                referral("Active", "Accepted"),
                referral("Closed", "Won"),
                json!([
                    {"op": "replace", "path": "/status", "value": "Closed"},
                    {"op": "replace", "path": "/substatus", "value": "Won"},
                ]),
            ),
            case(
                "status ops sit at the position of status",
                referral("Active", "Accepted"),
                edited,
                json!([
                    {"op": "replace", "path": "/details/notes", "value": "m"},
                    {"op": "replace", "path": "/status", "value": "Closed"},
                    {"op": "replace", "path": "/substatus", "value": "Won"},
                    {"op": "replace", "path": "/statusReason", "value": "s"},
                    {"op": "add", "path": "/team/-", "value": "t"},
                ]),
            ),
            case(
                "substatus-only change sends substatus alone, at its position",
                referral("New", "Pending"),
                substatus_only,
                json!([
                    {"op": "replace", "path": "/statusReason", "value": "s"},
                    {"op": "replace", "path": "/substatus", "value": "Received"},
                ]),
            ),
            case(
                "an unchanged substatus is still carried",
                referral("New", "Accepted"),
                referral("Active", "Accepted"),
                json!([
                    {"op": "replace", "path": "/status", "value": "Active"},
                    {"op": "replace", "path": "/substatus", "value": "Accepted"},
                ]),
            ),
            case(
                "first status: added",
                json!({"name": "x"}),
                json!({"name": "x", "status": "New", "substatus": "Pending"}),
                json!([
                    {"op": "add", "path": "/status", "value": "New"},
                    {"op": "add", "path": "/substatus", "value": "Pending"},
                ]),
            ),
        ]);
    }

    #[test]
    fn invalid_status_changes_are_refused_and_the_rest_goes() {
        let mut closed_to_active = referral("Active", "Accepted");
        closed_to_active["details"]["notes"] = json!("m");
        let mut without_status = referral("Active", "Accepted");
        without_status.as_object_mut().unwrap().remove("status");
        without_status.as_object_mut().unwrap().remove("substatus");
        let mut status_only = managed(&["/status", "/details"]);
        status_only.insert(&["team"]);

        run(vec![
            Case {
                rejected: &[(
                    "/status",
                    "Closed referral cannot move to Active (a Closed referral is final)",
                )],
                ..case(
                    "Closed cannot move to Active",
                    referral("Closed", "Won"),
                    closed_to_active,
                    json!([{"op": "replace", "path": "/details/notes", "value": "m"}]),
                )
            },
            Case {
                rejected: &[(
                    "/status",
                    "substatus Won does not go with status Active (Active takes Accepted)",
                )],
                ..case(
                    "substatus that does not fit the new status",
                    referral("New", "Pending"),
                    referral("Active", "Won"),
                    json!([]),
                )
            },
            Case {
                rejected: &[(
                    "/substatus",
                    "substatus Lost does not go with status Active (Active takes Accepted)",
                )],
                ..case(
                    "substatus-only change that does not fit the status",
                    referral("Active", "Accepted"),
                    referral("Active", "Lost"),
                    json!([]),
                )
            },
            Case {
                rejected: &[(
                    "/status",
                    "Active referral cannot move to None (Active may move to Active, Closed only)",
                )],
                ..case(
                    "a cleared status cannot be sent",
                    referral("Active", "Accepted"),
                    without_status.clone(),
                    json!([]),
                )
            },
            Case {
                options: skip_options(),
                ..case(
                    "a cleared status is left alone with skip",
                    referral("Active", "Accepted"),
                    without_status,
                    json!([]),
                )
            },
            Case {
                rejected: &[(
                    "/status",
                    "invalid desired status: /status: \"Open\" is not a referral status \
                     (expected one of None, New, Active, Closed)",
                )],
                ..case(
                    "unknown desired status",
                    referral("New", "Pending"),
                    referral("Open", "Pending"),
                    json!([]),
                )
            },
            Case {
                rejected: &[(
                    "/status",
                    "cannot read the referral's current status: /status must be a string, found 2",
                )],
                ..case(
                    "unreadable snapshot status",
                    json!({"status": 2, "substatus": "Pending"}),
                    referral("Active", "Accepted"),
                    json!([
                        {"op": "add", "path": "/details", "value": {"notes": "n"}},
                        {"op": "add", "path": "/statusReason", "value": "r"},
                        {"op": "add", "path": "/team", "value": []},
                    ]),
                )
            },
            Case {
                managed: status_only,
                rejected: &[(
                    "/status",
                    "status is managed but substatus is not; a status change must carry its substatus",
                )],
                ..case(
                    "status managed without substatus",
                    referral("New", "Pending"),
                    referral("Active", "Accepted"),
                    json!([]),
                )
            },
            Case {
                managed: managed(&["/details"]),
                ..case(
                    "unmanaged status is not sent",
                    referral("New", "Pending"),
                    referral("Active", "Accepted"),
                    json!([]),
                )
            },
        ]);
    }

    #[test]
    fn apply_ops_applies_all_or_nothing() {
        let mut document = json!({"a": {"b": 1}, "list": [1]});
        let patch = ops(json!([
            {"op": "replace", "path": "/a/b", "value": 2},
            {"op": "add", "path": "/list/-", "value": 2},
            {"op": "add", "path": "/c", "value": {"d": null}},
        ]));
        apply_ops(&mut document, &patch).unwrap();
        assert_eq!(
            document,
            json!({"a": {"b": 2}, "list": [1, 2], "c": {"d": null}})
        );

        let before = document.clone();
        let failing = ops(json!([
            {"op": "replace", "path": "/a/b", "value": 3},
            {"op": "replace", "path": "/missing/x", "value": 1},
        ]));
        let error = apply_ops(&mut document, &failing).unwrap_err();
        assert!(
            matches!(error, ApplyError::Patch(ref patch) if patch.operation == 1),
            "{error}"
        );
        assert_eq!(
            document, before,
            "a failed patch leaves the document as it was"
        );

        let invalid = ops(json!([
            {"op": "replace", "path": "/a/b", "value": 3},
            {"op": "add", "path": "a/b", "value": 1},
        ]));
        let error = apply_ops(&mut document, &invalid).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("op 1 (add \"a/b\"): the path is not a JSON Pointer"),
            "{error}"
        );
        assert_eq!(document, before);
    }

    #[test]
    fn equivalence_treats_null_as_absent() {
        let cases = [
            (json!({"a": null}), json!({}), true),
            (json!({"a": {"b": null}}), json!({"a": {}}), true),
            (json!([{"a": null}]), json!([{}]), true),
            (json!([null]), json!([]), false),
            (json!(1), json!(1.0), true),
            (json!(1), json!(1.5), false),
            (json!(u64::MAX), json!(u64::MAX - 1), false),
            (json!("1"), json!(1), false),
        ];
        for (a, b, expected) in cases {
            assert_eq!(equivalent(&a, &b), expected, "{a} vs {b}");
            assert_eq!(equivalent(&b, &a), expected, "{b} vs {a}");
        }
    }
}
