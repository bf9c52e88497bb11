//! Properties of the diff and the three-way merge over random documents.
//!
//! Documents are objects nested up to four deep, with scalars, nulls and
//! arrays of scalars or objects, over a small set of keys (two of which need
//! JSON Pointer escaping) and values, so that the desired document and the
//! live referral overlap the snapshot often. The desired document is mostly
//! the snapshot with CRM edits, the live one the snapshot with seller edits.
//! Status and substatus are always valid pairs reached by valid moves, so
//! every status change in here may be sent.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::sample::Index;
use referral_sync::diff::{DiffOptions, OnCleared, PlannedPatch, apply_ops, plan_patch};
use referral_sync::merge::{
    Before, Cell, ConflictPolicy, MergeOptions, Mode, Plan, PlanInput, Verdict, decide,
};
use referral_sync::model::{ManagedNode, ManagedPaths, Op};
use referral_sync::ownership::{Slots, project};
use referral_sync::status::{ReferralStatus, ReferralSubstatus};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Generators.

const KEYS: [&str; 6] = ["a", "b", "c", "d", "x/y", "m~n"];

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(KEYS.to_vec()).prop_map(str::to_owned)
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0i64..3).prop_map(Value::from),
        Just(json!(1.0)),
        prop::sample::select(vec!["p", "q", "r"]).prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            3 => prop::collection::btree_map(key(), inner.clone(), 0..4)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
            2 => prop::collection::vec(inner, 0..4).prop_map(Value::Array),
        ]
    })
}

fn document() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(key(), value(), 0..5)
        .prop_map(|members| Value::Object(members.into_iter().collect()))
}

/// An edit the CRM makes to a record.
#[derive(Debug, Clone)]
enum CrmEdit {
    Replace(Index, Value),
    Remove(Index),
    Null(Index),
    Add(Index, String, Value),
    Append(Index, Value),
    Reverse(Index),
    DropFirst(Index),
}

fn crm_edit() -> impl Strategy<Value = CrmEdit> {
    prop_oneof![
        3 => (any::<Index>(), value()).prop_map(|(at, value)| CrmEdit::Replace(at, value)),
        1 => any::<Index>().prop_map(CrmEdit::Remove),
        1 => any::<Index>().prop_map(CrmEdit::Null),
        2 => (any::<Index>(), key(), value()).prop_map(|(at, key, value)| CrmEdit::Add(at, key, value)),
        4 => (any::<Index>(), value()).prop_map(|(at, value)| CrmEdit::Append(at, value)),
        1 => any::<Index>().prop_map(CrmEdit::Reverse),
        1 => any::<Index>().prop_map(CrmEdit::DropFirst),
    ]
}

/// An edit a seller makes in Partner Center. Sellers change scalars, add
/// members and append; `CopyDesired` is a write of ours whose answer was
/// lost (live already holds the desired value at some path).
#[derive(Debug, Clone)]
enum SellerEdit {
    Scalar(Index, u8),
    Null(Index),
    Add(Index, String, u8),
    Append(Index, u8),
    CopyDesired(Index),
}

fn seller_edit() -> impl Strategy<Value = SellerEdit> {
    prop_oneof![
        3 => (any::<Index>(), any::<u8>()).prop_map(|(at, n)| SellerEdit::Scalar(at, n)),
        1 => any::<Index>().prop_map(SellerEdit::Null),
        2 => (any::<Index>(), key(), any::<u8>()).prop_map(|(at, key, n)| SellerEdit::Add(at, key, n)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, n)| SellerEdit::Append(at, n)),
        3 => any::<Index>().prop_map(SellerEdit::CopyDesired),
    ]
}

/// Values only a seller writes, so they never equal a CRM value by chance.
fn seller_value(n: u8) -> Value {
    json!(format!("seller-{n}"))
}

type Path = Vec<String>;

/// Paths of the object members of `document`, walking through objects only.
fn member_paths(document: &Value) -> Vec<Path> {
    fn walk(value: &Value, prefix: &mut Path, out: &mut Vec<Path>) {
        if let Value::Object(members) = value {
            for (key, child) in members {
                prefix.push(key.clone());
                out.push(prefix.clone());
                walk(child, prefix, out);
                prefix.pop();
            }
        }
    }
    let mut out = Vec::new();
    walk(document, &mut Vec::new(), &mut out);
    out
}

fn paths_where(document: &Value, keep: impl Fn(&Value) -> bool) -> Vec<Path> {
    let mut paths = vec![Vec::new()];
    paths.extend(member_paths(document));
    paths
        .into_iter()
        .filter(|path| get(document, path).is_some_and(&keep))
        .collect()
}

fn get<'v>(document: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter()
        .try_fold(document, |value, key| value.as_object()?.get(key))
}

fn get_mut<'v>(document: &'v mut Value, path: &[String]) -> Option<&'v mut Value> {
    path.iter()
        .try_fold(document, |value, key| value.as_object_mut()?.get_mut(key))
}

fn pick<'p>(at: &Index, paths: &'p [Path]) -> Option<&'p Path> {
    (!paths.is_empty()).then(|| at.get(paths))
}

fn apply_crm_edit(document: &mut Value, edit: &CrmEdit) {
    let members = member_paths(document);
    let objects = paths_where(document, Value::is_object);
    let arrays = paths_where(document, Value::is_array);
    match edit {
        CrmEdit::Replace(at, value) => {
            if let Some(target) = pick(at, &members).and_then(|path| get_mut(document, path)) {
                *target = value.clone();
            }
        }
        CrmEdit::Null(at) => {
            if let Some(target) = pick(at, &members).and_then(|path| get_mut(document, path)) {
                *target = Value::Null;
            }
        }
        CrmEdit::Remove(at) => {
            if let Some((last, parent)) = pick(at, &members).and_then(|path| path.split_last())
                && let Some(Value::Object(parent)) = get_mut(document, parent)
            {
                parent.remove(last);
            }
        }
        CrmEdit::Add(at, key, value) => {
            if let Some(Value::Object(target)) =
                pick(at, &objects).and_then(|path| get_mut(document, path))
            {
                target.insert(key.clone(), value.clone());
            }
        }
        CrmEdit::Append(at, value) => {
            if let Some(Value::Array(target)) =
                pick(at, &arrays).and_then(|path| get_mut(document, path))
            {
                target.push(value.clone());
            }
        }
        CrmEdit::Reverse(at) => {
            if let Some(Value::Array(target)) =
                pick(at, &arrays).and_then(|path| get_mut(document, path))
            {
                target.reverse();
            }
        }
        CrmEdit::DropFirst(at) => {
            if let Some(Value::Array(target)) =
                pick(at, &arrays).and_then(|path| get_mut(document, path))
                && !target.is_empty()
            {
                target.remove(0);
            }
        }
    }
}

fn is_scalar(value: &Value) -> bool {
    !value.is_object() && !value.is_array()
}

fn apply_seller_edit(live: &mut Value, desired: &Value, edit: &SellerEdit) {
    let scalars: Vec<Path> = member_paths(live)
        .into_iter()
        .filter(|path| get(live, path).is_some_and(is_scalar))
        .collect();
    let objects = paths_where(live, Value::is_object);
    let arrays = paths_where(live, Value::is_array);
    match edit {
        SellerEdit::Scalar(at, n) => {
            if let Some(target) = pick(at, &scalars).and_then(|path| get_mut(live, path)) {
                *target = seller_value(*n);
            }
        }
        SellerEdit::Null(at) => {
            if let Some(target) = pick(at, &scalars).and_then(|path| get_mut(live, path)) {
                *target = Value::Null;
            }
        }
        SellerEdit::Add(at, key, n) => {
            if let Some(Value::Object(target)) =
                pick(at, &objects).and_then(|path| get_mut(live, path))
                && !target.contains_key(key)
            {
                target.insert(key.clone(), seller_value(*n));
            }
        }
        SellerEdit::Append(at, n) => {
            if let Some(Value::Array(target)) =
                pick(at, &arrays).and_then(|path| get_mut(live, path))
            {
                target.push(seller_value(*n));
            }
        }
        SellerEdit::CopyDesired(at) => {
            let paths = member_paths(desired);
            if let Some((path, value)) =
                pick(at, &paths).and_then(|path| Some((path, get(desired, path)?.clone())))
                && let Some((last, parent)) = path.split_last()
                && let Some(Value::Object(parent)) = get_mut(live, parent)
            {
                parent.insert(last.clone(), value);
            }
        }
    }
}

type Pair = (ReferralStatus, ReferralSubstatus);

fn valid_pairs() -> Vec<Pair> {
    ReferralStatus::ALL
        .into_iter()
        .flat_map(|status| {
            status
                .substatuses()
                .iter()
                .map(move |&substatus| (status, substatus))
        })
        .collect()
}

/// Snapshot, desired and live pairs: desired is a valid move from the
/// snapshot; live is either the snapshot's pair or the desired one.
fn statuses() -> impl Strategy<Value = (Option<Pair>, Option<Pair>, Option<Pair>)> {
    let snapshot = prop_oneof![
        1 => Just(None),
        4 => prop::sample::select(valid_pairs()).prop_map(Some),
    ];
    snapshot
        .prop_flat_map(|snapshot| {
            let targets: Vec<Pair> = valid_pairs()
                .into_iter()
                .filter(|(to, _)| snapshot.is_none_or(|(from, _)| from.may_move_to(*to)))
                .collect();
            let desired = match snapshot {
                None => {
                    prop_oneof![Just(None), prop::sample::select(targets).prop_map(Some)].boxed()
                }
                Some(_) => prop::sample::select(targets).prop_map(Some).boxed(),
            };
            (Just(snapshot), desired, any::<bool>())
        })
        .prop_map(|(snapshot, desired, live_has_desired)| {
            (
                snapshot,
                desired,
                if live_has_desired { desired } else { snapshot },
            )
        })
}

fn set_status(document: &mut Value, pair: Option<Pair>) {
    if let (Some((status, substatus)), Value::Object(members)) = (pair, document) {
        members.insert("status".into(), json!(status.to_string()));
        members.insert("substatus".into(), json!(substatus.to_string()));
    }
}

/// A managed tree: every path, or a random tree over the same keys, with
/// status and substatus managed together, not at all, or one without the
/// other.
#[derive(Debug, Clone)]
enum Spec {
    Leaf,
    Members(BTreeMap<String, Spec>),
}

fn spec() -> impl Strategy<Value = Spec> {
    Just(Spec::Leaf).prop_recursive(3, 16, 3, |inner| {
        prop::collection::btree_map(key(), inner, 1..4).prop_map(Spec::Members)
    })
}

fn managed_paths() -> impl Strategy<Value = ManagedPaths> {
    fn insert(spec: &Spec, prefix: &mut Vec<String>, managed: &mut ManagedPaths) {
        match spec {
            Spec::Leaf => managed.insert(prefix),
            Spec::Members(members) => {
                for (key, child) in members {
                    prefix.push(key.clone());
                    insert(child, prefix, managed);
                    prefix.pop();
                }
            }
        }
    }
    prop_oneof![
        1 => Just(ManagedPaths::all()),
        2 => (prop::collection::btree_map(key(), spec(), 0..4), 0u8..6).prop_map(|(members, status)| {
            let mut managed = ManagedPaths::empty();
            insert(&Spec::Members(members), &mut Vec::new(), &mut managed);
            match status {
                0 | 1 => {}
                4 => managed.insert(&["status"]),
                5 => managed.insert(&["substatus"]),
                _ => {
                    managed.insert(&["status"]);
                    managed.insert(&["substatus"]);
                }
            }
            managed
        }),
    ]
}

#[derive(Debug, Clone)]
struct Scenario {
    snapshot: Value,
    desired: Value,
    live: Value,
    managed: ManagedPaths,
    options: MergeOptions,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        (document(), prop::option::weighted(0.15, document())),
        prop::collection::vec(crm_edit(), 1..7),
        prop::collection::vec(seller_edit(), 0..6),
        statuses(),
        managed_paths(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |((snapshot, unrelated), crm_edits, seller_edits, (s, d, l), managed, skip, remote)| {
                let mut desired = unrelated.unwrap_or_else(|| snapshot.clone());
                for edit in &crm_edits {
                    apply_crm_edit(&mut desired, edit);
                }
                let mut live = snapshot.clone();
                for edit in &seller_edits {
                    apply_seller_edit(&mut live, &desired, edit);
                }
                let (mut snapshot, mut desired) = (snapshot, desired);
                set_status(&mut snapshot, s);
                set_status(&mut desired, d);
                set_status(&mut live, l);
                let options = MergeOptions {
                    diff: DiffOptions {
                        on_cleared: if skip {
                            OnCleared::Skip
                        } else {
                            OnCleared::Null
                        },
                    },
                    conflict: if remote {
                        ConflictPolicy::RemoteWins
                    } else {
                        ConflictPolicy::CrmWins
                    },
                    mode: Mode::Sync,
                };
                Scenario {
                    snapshot,
                    desired,
                    live,
                    managed,
                    options,
                }
            },
        )
}

// ---------------------------------------------------------------------------
// The reference: what the referral must look like after the patch.

fn non_null(value: Option<&Value>) -> Option<&Value> {
    value.filter(|value| !value.is_null())
}

/// Equality with `null` ≡ absent and `1` ≡ `1.0`, as the product defines it.
fn equivalent(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => a
            .keys()
            .chain(b.keys())
            .all(|key| same(a.get(key), b.get(key))),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| equivalent(a, b))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => a == b,
    }
}

fn same(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (non_null(a), non_null(b)) {
        (None, None) => true,
        (Some(a), Some(b)) => equivalent(a, b),
        _ => false,
    }
}

fn member<'v>(value: Option<&'v Value>, key: &str) -> Option<&'v Value> {
    value?.as_object()?.get(key)
}

fn keys<'v>(values: &[Option<&'v Value>]) -> Vec<&'v str> {
    let mut keys: Vec<&str> = values
        .iter()
        .filter_map(|value| value.and_then(Value::as_object))
        .flat_map(|members| members.keys().map(String::as_str))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

fn unescape(pointer: &str) -> Path {
    pointer
        .split('/')
        .skip(1)
        .map(|token| token.replace("~1", "/").replace("~0", "~"))
        .collect()
}

static ALL: ManagedNode = ManagedNode::All;

/// Walks snapshot `s`, desired `d`, live `l` and the patched result `r`
/// together and lists every path where `r` is not what it should be: the
/// desired value where the CRM changed a managed member (unless the remote
/// side wins a conflict, or the member was cleared and clears are skipped),
/// the live value everywhere else. A path that was refused (`rejected`)
/// keeps its live value.
struct Reference {
    on_cleared: OnCleared,
    policy: ConflictPolicy,
    rejected: Vec<Path>,
    failures: Vec<String>,
}

impl Reference {
    fn expect(&mut self, holds: bool, path: &[String], what: &str, r: Option<&Value>) {
        if !holds {
            self.failures
                .push(format!("/{}: expected {what}, got {r:?}", path.join("/")));
        }
    }

    fn check(&mut self, node: &ManagedNode, [s, d, l, r]: [Option<&Value>; 4], path: &mut Path) {
        if self
            .rejected
            .iter()
            .any(|rejected| path.starts_with(rejected))
        {
            return self.expect(same(r, l), path, &format!("live {l:?} (refused)"), r);
        }
        match node {
            ManagedNode::Members(members) => {
                for key in keys(&[s, d, l, r]) {
                    path.push(key.to_owned());
                    let values = [s, d, l, r].map(|value| member(value, key));
                    match members.get(key) {
                        Some(child) => self.check(child, values, path),
                        None => {
                            let [_, _, l, r] = values;
                            self.expect(same(r, l), path, &format!("live {l:?} (unmanaged)"), r);
                        }
                    }
                    path.pop();
                }
            }
            ManagedNode::All => self.check_managed([s, d, l, r], path),
        }
    }

    fn check_managed(&mut self, [s, d, l, r]: [Option<&Value>; 4], path: &mut Path) {
        let [s, d, l, r] = [s, d, l, r].map(non_null);
        if same(s, d) {
            return self.expect(same(r, l), path, &format!("live {l:?} (CRM unchanged)"), r);
        }
        let conflict = !same(l, s) && !same(l, d);
        match (s, d) {
            (Some(Value::Object(_)), Some(Value::Object(_))) => match l {
                None | Some(Value::Object(_)) => {
                    for key in keys(&[s, d, l, r]) {
                        path.push(key.to_owned());
                        let values = [s, d, l, r].map(|value| member(value, key));
                        self.check(&ALL, values, path);
                        path.pop();
                    }
                }
                // Live made a non-object of what both sides keep as objects.
                Some(_) => self.winner(conflict, [d, l, r], path),
            },
            (_, None) => {
                if self.on_cleared == OnCleared::Skip {
                    self.expect(same(r, l), path, &format!("live {l:?} (clear skipped)"), r);
                } else {
                    self.winner(conflict, [None, l, r], path);
                }
            }
            (Some(Value::Array(before)), Some(Value::Array(after)))
                if before.len() < after.len()
                    && before.iter().zip(after).all(|(a, b)| equivalent(a, b)) =>
            {
                match l {
                    Some(Value::Array(live)) => {
                        // Appends merge: the elements live gained since the
                        // snapshot count as already there.
                        let mut gained: Vec<&Value> = live.iter().collect();
                        for element in before {
                            if let Some(i) = gained.iter().position(|g| equivalent(g, element)) {
                                gained.remove(i);
                            }
                        }
                        let mut expected = live.clone();
                        for element in &after[before.len()..] {
                            match gained.iter().position(|g| equivalent(g, element)) {
                                Some(i) => {
                                    gained.remove(i);
                                }
                                None => expected.push(element.clone()),
                            }
                        }
                        let expected = Value::Array(expected);
                        self.expect(
                            same(r, Some(&expected)),
                            path,
                            &format!("{expected} (appended)"),
                            r,
                        );
                    }
                    None => {
                        self.expect(same(r, d), path, &format!("desired {d:?} (whole array)"), r)
                    }
                    Some(_) => self.winner(conflict, [d, l, r], path),
                }
            }
            _ => self.winner(conflict, [d, l, r], path),
        }
    }

    fn winner(&mut self, conflict: bool, [d, l, r]: [Option<&Value>; 3], path: &[String]) {
        if conflict && self.policy == ConflictPolicy::RemoteWins {
            self.expect(same(r, l), path, &format!("live {l:?} (remote wins)"), r);
        } else {
            self.expect(same(r, d), path, &format!("desired {d:?}"), r);
        }
    }
}

fn reference_failures(
    scenario: &Scenario,
    live: &Value,
    result: &Value,
    rejected: &[String],
    policy: ConflictPolicy,
) -> Vec<String> {
    let mut rejected: Vec<Path> = rejected.iter().map(|path| unescape(path)).collect();
    if rejected.iter().any(|path| path == &["status"]) {
        rejected.push(vec!["substatus".to_owned()]);
    }
    let mut reference = Reference {
        on_cleared: scenario.options.diff.on_cleared,
        policy,
        rejected,
        failures: Vec::new(),
    };
    reference.check(
        scenario.managed.root(),
        [
            Some(&scenario.snapshot),
            Some(&scenario.desired),
            Some(live),
            Some(result),
        ],
        &mut Vec::new(),
    );
    reference.failures
}

/// Whether an op stays inside the managed tree: its path is managed, or it
/// adds a missing parent holding managed members only.
fn inside_managed(op: &Op, managed: &ManagedPaths) -> bool {
    fn holds_managed_only(node: &ManagedNode, value: &Value) -> bool {
        match (node, value) {
            (ManagedNode::All, _) => true,
            (ManagedNode::Members(members), Value::Object(object)) => {
                object.iter().all(|(key, value)| {
                    members
                        .get(key)
                        .is_some_and(|child| holds_managed_only(child, value))
                })
            }
            (ManagedNode::Members(_), _) => false,
        }
    }
    let mut tokens = unescape(op.path());
    if op.is_append() {
        tokens.pop();
    }
    let mut node = managed.root();
    for token in &tokens {
        match node {
            ManagedNode::All => return true,
            ManagedNode::Members(members) => match members.get(token) {
                Some(child) => node = child,
                None => return false,
            },
        }
    }
    matches!(node, ManagedNode::All) || (!op.is_append() && holds_managed_only(node, op.value()))
}

fn status_managed_together(managed: &ManagedPaths) -> bool {
    managed.contains(&["status"]) == managed.contains(&["substatus"])
}

fn applied(document: &Value, ops: &[Op]) -> Result<Value, TestCaseError> {
    let mut document = document.clone();
    apply_ops(&mut document, ops)
        .map_err(|error| TestCaseError::fail(format!("the patch does not apply: {error}")))?;
    Ok(document)
}

fn describe(scenario: &Scenario, ops: &[Op]) -> String {
    format!(
        "snapshot {}\ndesired  {}\nlive     {}\nmanaged  {:?}\nops      {}",
        scenario.snapshot,
        scenario.desired,
        scenario.live,
        scenario.managed.leaves(),
        serde_json::to_string(ops).unwrap_or_default()
    )
}

fn plan(scenario: &Scenario) -> PlannedPatch {
    plan_patch(
        &scenario.snapshot,
        &scenario.desired,
        &scenario.managed,
        &scenario.options.diff,
    )
}

/// The merge of a synced record: the snapshot is both the CRM's document
/// of the last sync and what Partner Center acknowledged then.
fn merge(scenario: &Scenario, live: &Value) -> Plan {
    let base = project(&scenario.snapshot, &scenario.managed);
    referral_sync::merge::plan(&PlanInput {
        crm: &scenario.desired,
        before: Some(&scenario.snapshot),
        base: &base,
        live: Some(live),
        managed: &scenario.managed,
        options: scenario.options,
        status_refused: false,
    })
}

/// The document with every managed member taken out, and objects left
/// empty by that taken out too: what the merge must never change.
fn unmanaged(document: &Value, node: &ManagedNode) -> Option<Value> {
    match (node, document) {
        (ManagedNode::All, _) => None,
        (ManagedNode::Members(members), Value::Object(object)) => {
            let kept: serde_json::Map<String, Value> = object
                .iter()
                .filter_map(|(key, value)| match members.get(key) {
                    None if value.is_null() => None,
                    None => Some((key.clone(), value.clone())),
                    Some(child) => unmanaged(value, child).map(|v| (key.clone(), v)),
                })
                .collect();
            (!kept.is_empty()).then_some(Value::Object(kept))
        }
        (ManagedNode::Members(_), Value::Null) => None,
        (ManagedNode::Members(_), other) => Some(other.clone()),
    }
}

/// Every way the merged referral differs from the merge rule: per slot, the
/// CRM's value where [`decide`] says set, live's where it says keep (or the
/// change was refused); and nothing outside the slots changed.
fn merge_failures(scenario: &Scenario, live: &Value, merged: &Plan, result: &Value) -> Vec<String> {
    let managed = &scenario.managed;
    let base = project(&scenario.snapshot, managed);
    let [before, base, crm, live_slots, after] =
        [&scenario.snapshot, &base, &scenario.desired, live, result]
            .map(|doc| Slots::of(doc, managed));
    let rejected: Vec<Path> = merged
        .rejected
        .iter()
        .flat_map(|r| {
            let path = unescape(&r.path);
            let substatus = (path == ["status"]).then(|| vec!["substatus".to_owned()]);
            std::iter::once(path).chain(substatus)
        })
        .collect();
    let mut slots: Vec<_> = [&before, &base, &crm, &live_slots, &after]
        .iter()
        .flat_map(|s| s.values.keys().cloned())
        .collect();
    slots.sort();
    slots.dedup();
    let mut failures = Vec::new();
    for slot in slots {
        let cell = Cell {
            base: base.get(&slot),
            before: Before::Known(before.get(&slot)),
            crm: crm.get(&slot),
            live: live_slots.get(&slot),
            element_gone: false,
        };
        let refused = rejected.iter().any(|path| slot.tokens.starts_with(path));
        let expected = match decide(&cell, &scenario.options) {
            Verdict::Set(_) if !refused => cell.crm,
            _ => cell.live,
        };
        if !same(after.get(&slot), expected) {
            failures.push(format!(
                "{slot}: expected {expected:?}, got {:?}",
                after.get(&slot)
            ));
        }
    }
    let (outside_live, outside_result) = (
        unmanaged(live, managed.root()),
        unmanaged(result, managed.root()),
    );
    if !same(outside_live.as_ref(), outside_result.as_ref()) {
        failures.push(format!(
            "outside the slots: live {outside_live:?}, after {outside_result:?}"
        ));
    }
    failures
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// (1) The plan, applied to the snapshot, gives the desired document on
    /// every managed path and leaves every other path as it was.
    #[test]
    fn plan_reaches_desired_on_managed_paths_only(scenario in scenario()) {
        let plan = plan(&scenario);
        let result = applied(&scenario.snapshot, &plan.ops)?;
        let rejected: Vec<String> = plan.rejected.iter().map(|r| r.path.clone()).collect();
        let failures = reference_failures(
            &scenario, &scenario.snapshot, &result, &rejected, ConflictPolicy::CrmWins,
        );
        prop_assert!(failures.is_empty(), "{}\n{}", failures.join("\n"), describe(&scenario, &plan.ops));
        if status_managed_together(&scenario.managed) {
            prop_assert!(
                plan.rejected.iter().all(|r| !r.path.ends_with("status")),
                "valid status moves were refused: {:?}", plan.rejected
            );
        }
    }

    /// (2) With every path managed, the plan is never longer than a generic
    /// JSON diff.
    #[test]
    fn plan_is_never_longer_than_a_generic_diff(scenario in scenario()) {
        let managed = ManagedPaths::all();
        let plan = plan_patch(&scenario.snapshot, &scenario.desired, &managed, &scenario.options.diff);
        let generic = json_patch::diff(&scenario.snapshot, &scenario.desired);
        prop_assert!(
            plan.ops.len() <= generic.0.len(),
            "{} ops against {}\n{}\ngeneric {}",
            plan.ops.len(), generic.0.len(), describe(&scenario, &plan.ops), generic
        );
    }

    /// (3) Every op is an add or a replace inside the managed tree, for the
    /// plan and for the merge.
    #[test]
    fn ops_are_add_or_replace_inside_the_managed_tree(scenario in scenario()) {
        let plan = plan(&scenario);
        let merged = merge(&scenario, &scenario.live);
        for op in plan.ops.iter().chain(&merged.ops) {
            prop_assert!(matches!(op.kind(), "add" | "replace"));
            prop_assert!(
                inside_managed(op, &scenario.managed),
                "{op} is outside the managed tree\n{}", describe(&scenario, &plan.ops)
            );
        }
    }

    /// (4) With nothing changed in Partner Center, the merge sets every
    /// slot the CRM changed and nothing else, with no conflict.
    #[test]
    fn merge_without_remote_changes_sends_the_crms_changes(scenario in scenario()) {
        let merged = merge(&scenario, &scenario.snapshot);
        prop_assert!(merged.conflicts.is_empty(), "{:?}", merged.conflicts);
        let result = applied(&scenario.snapshot, &merged.ops)?;
        let failures = merge_failures(&scenario, &scenario.snapshot, &merged, &result);
        prop_assert!(failures.is_empty(), "{}\n{}", failures.join("\n"), describe(&scenario, &merged.ops));
    }

    /// (5) The merge, applied to live, gives every slot what the merge rule
    /// decides and changes nothing outside the slots.
    #[test]
    fn merge_applies_the_rule_and_keeps_live_elsewhere(scenario in scenario()) {
        let merged = merge(&scenario, &scenario.live);
        let result = applied(&scenario.live, &merged.ops)?;
        let failures = merge_failures(&scenario, &scenario.live, &merged, &result);
        prop_assert!(
            failures.is_empty(),
            "{}\n{}\nconflicts {:?}\nrejected {:?}", failures.join("\n"), describe(&scenario, &merged.ops), merged.conflicts, merged.rejected
        );
    }

    /// Merging again after the merge's patch went through sends nothing more.
    #[test]
    fn merge_is_idempotent(scenario in scenario()) {
        let merged = merge(&scenario, &scenario.live);
        let live = applied(&scenario.live, &merged.ops)?;
        let again = merge(&scenario, &live);
        prop_assert!(again.ops.is_empty(), "{}\nfirst {:?}", describe(&scenario, &again.ops), merged.ops);
    }
}
