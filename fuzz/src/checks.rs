//! What every fuzz input must satisfy. Shared by the fuzz targets and by
//! `tests/reliability_fuzz_corpus.rs`, which runs the committed corpus
//! through the same functions in every test run.
//!
//! Each check panics (with the reason) when a property fails; an input the
//! check cannot use (e.g. a diff input that is not JSON) is simply skipped.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::OnceLock;

use referral_sync::diff::{DiffOptions, OnCleared, apply_ops, plan_patch};
use referral_sync::export::{ExportError, ExportFormat, ExportOptions, Record, read_export_bytes};
use referral_sync::mapping::{Mapper, MappingSpec};
use referral_sync::model::{Entity, ManagedNode, ManagedPaths, Op};
use serde_json::Value;

/// A record error may name a value, never repeat a huge one.
const MAX_RECORD_ERROR_BYTES: usize = 16 * 1024;
/// A parse error says what and where, it does not quote the file.
const MAX_PARSE_MESSAGE_BYTES: usize = 2 * 1024;

/// The shapes of export the readers take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    OData,
    Csv,
    Jsonl,
}

impl ExportKind {
    /// The file name the format is decided from.
    fn file_name(self) -> &'static str {
        match self {
            ExportKind::OData => "page-1.json",
            ExportKind::Csv => "export.csv",
            ExportKind::Jsonl => "export.jsonl",
        }
    }

    /// The corpus folder and fuzz target of this shape.
    pub fn target(self) -> &'static str {
        match self {
            ExportKind::OData => "export_odata",
            ExportKind::Csv => "export_csv",
            ExportKind::Jsonl => "export_jsonl",
        }
    }
}

fn mappers() -> &'static [Mapper; 2] {
    static MAPPERS: OnceLock<[Mapper; 2]> = OnceLock::new();
    MAPPERS.get_or_init(|| {
        [Entity::Opportunity, Entity::Lead].map(|entity| {
            Mapper::new(&MappingSpec::default_for(entity), entity, "USD")
                .unwrap_or_else(|e| panic!("the default {entity:?} mapping: {e}"))
        })
    })
}

/// Read `bytes` as a file of `kind` (format from the extension) and as a
/// file without an extension (format from the content), and check both.
pub fn check_export(kind: ExportKind, bytes: &[u8]) {
    check_export_as(Path::new(kind.file_name()), bytes);
    check_export_as(Path::new("export"), bytes);
}

fn read(path: &Path, bytes: &[u8]) -> (Result<u64, ExportError>, Vec<Record>) {
    let options = ExportOptions {
        path: path.to_path_buf(),
        format: ExportFormat::Auto,
        entity: Entity::Lead,
        header_aliases: BTreeMap::from([("Topic".to_owned(), "subject".to_owned())]),
        checks: Default::default(),
    };
    let mut records = Vec::new();
    let result = read_export_bytes(&options, path, bytes, &mut |record| {
        records.push(record);
        ControlFlow::Continue(())
    })
    .map(|summary| summary.records);
    (result, records)
}

fn check_export_as(path: &Path, bytes: &[u8]) {
    let (result, records) = read(path, bytes);
    let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64 + 1;

    // Records are numbered 1, 2, … in order, on lines that exist and never
    // go backwards.
    let mut last_line = 0;
    for (i, record) in records.iter().enumerate() {
        let location = &record.location;
        assert_eq!(location.file, path);
        assert_eq!(location.ordinal, i as u64 + 1, "ordinals");
        assert!(
            (1..=lines).contains(&location.line),
            "record {} on line {} of {lines}",
            location.ordinal,
            location.line
        );
        assert!(
            location.line >= last_line,
            "lines go backwards at {location}"
        );
        last_line = location.line;
    }

    match &result {
        Ok(count) => assert_eq!(*count, records.len() as u64),
        Err(ExportError::Parse {
            path: error_path,
            line,
            column,
            message,
        }) => {
            assert_eq!(error_path, path);
            assert!(
                (1..=lines).contains(line),
                "error on line {line} of {lines}"
            );
            assert!(*column >= 1, "column {column}");
            assert!(!message.is_empty());
            assert!(
                message.len() <= MAX_PARSE_MESSAGE_BYTES,
                "a {}-byte parse message",
                message.len()
            );
            let text = result.as_ref().unwrap_err().to_string();
            assert!(
                text.starts_with(&format!("{}:{line}:{column}: ", path.display())),
                "{text}"
            );
        }
        // Nothing else can go wrong without a disk.
        Err(other) => panic!("unexpected error for an in-memory file: {other}"),
    }

    // The same bytes read the same way again.
    let (again, records_again) = read(path, bytes);
    assert_eq!(records_again, records, "a second read differs");
    assert_eq!(
        again.map_err(|e| e.to_string()),
        result.map_err(|e| e.to_string())
    );

    // Every record maps or is refused with a bounded message naming it.
    for record in &records {
        for mapper in mappers() {
            match mapper.map(record) {
                Ok(mapped) => {
                    assert_eq!(
                        mapped.document["externalReferenceId"],
                        Value::from(mapped.external_id.clone())
                    );
                    assert!(!mapped.external_id.is_empty());
                }
                Err(error) => {
                    let text = error.to_string();
                    assert!(
                        text.len() <= MAX_RECORD_ERROR_BYTES,
                        "a {}-byte record error",
                        text.len()
                    );
                    assert!(text.starts_with(&record.location.to_string()), "{text}");
                }
            }
        }
    }
}

/// A diff input: `{"snapshot": {…}, "desired": {…}, "managed": ["/name",
/// …] or "all", "on_cleared": "null" | "skip"}`.
///
/// The planned patch, applied to the snapshot, must succeed and give the
/// desired document on every managed path (except what was refused, and
/// clears when they are skipped), leave every other member as the
/// snapshot had it, and planning again from the result must send nothing.
pub fn check_diff(bytes: &[u8]) {
    let Ok(input) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    let (Some(snapshot), Some(desired)) = (input.get("snapshot"), input.get("desired")) else {
        return;
    };
    if !snapshot.is_object() || !desired.is_object() {
        return;
    }
    let managed = match input.get("managed") {
        Some(Value::Array(pointers)) => {
            let mut managed = ManagedPaths::empty();
            for pointer in pointers {
                let Some(tokens) = pointer.as_str().and_then(pointer_tokens) else {
                    return;
                };
                if tokens.is_empty() {
                    return;
                }
                managed.insert(&tokens);
            }
            managed
        }
        _ => ManagedPaths::all(),
    };
    let on_cleared = match input.get("on_cleared").and_then(Value::as_str) {
        Some("skip") => OnCleared::Skip,
        _ => OnCleared::Null,
    };
    let options = DiffOptions { on_cleared };

    let planned = plan_patch(snapshot, desired, &managed, &options);
    for op in &planned.ops {
        assert!(
            inside_managed(op, &managed),
            "{} {} is outside the managed tree",
            op.kind(),
            op.path()
        );
    }
    let mut result = snapshot.clone();
    if let Err(error) = apply_ops(&mut result, &planned.ops) {
        panic!(
            "the planned patch does not apply to its snapshot: {error}\nops: {}",
            serde_json::to_string(&planned.ops).unwrap_or_default()
        );
    }

    let refused: Vec<String> = planned.rejected.iter().map(|r| r.path.clone()).collect();
    let failures = managed_failures(&managed, snapshot, desired, &result, &refused, on_cleared);
    assert!(
        failures.is_empty(),
        "{}\nops: {}",
        failures.join("\n"),
        serde_json::to_string(&planned.ops).unwrap_or_default()
    );

    let again = plan_patch(&result, desired, &managed, &options);
    assert!(
        again.ops.is_empty(),
        "planning again from the patched snapshot sends {}",
        serde_json::to_string(&again.ops).unwrap_or_default()
    );
}

/// Where `result` is not what a patch from `snapshot` towards `desired`
/// must leave: the desired value on managed paths, except `refused` paths
/// (a refused `/status` covers `/substatus`) and, under
/// [`OnCleared::Skip`], cleared members, which keep the snapshot's value;
/// the snapshot's value everywhere else.
pub fn managed_failures(
    managed: &ManagedPaths,
    snapshot: &Value,
    desired: &Value,
    result: &Value,
    refused: &[String],
    on_cleared: OnCleared,
) -> Vec<String> {
    let mut refused: Vec<Vec<String>> = refused.iter().filter_map(|p| pointer_tokens(p)).collect();
    if refused.iter().any(|path| path == &["status"]) {
        refused.push(vec!["substatus".to_owned()]);
    }
    let mut failures = Vec::new();
    compare(
        managed.root(),
        [Some(snapshot), Some(desired), Some(result)],
        &mut Vec::new(),
        &refused,
        on_cleared,
        &mut failures,
    );
    failures
}

fn pointer_tokens(pointer: &str) -> Option<Vec<String>> {
    if pointer.is_empty() {
        return Some(Vec::new());
    }
    let rest = pointer.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|token| token.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

fn non_null(value: Option<&Value>) -> Option<&Value> {
    value.filter(|v| !v.is_null())
}

/// `null` and absent are the same; `1` and `1.0` are the same.
fn same(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (non_null(a), non_null(b)) {
        (None, None) => true,
        (Some(Value::Object(a)), Some(Value::Object(b))) => a
            .keys()
            .chain(b.keys())
            .all(|key| same(a.get(key), b.get(key))),
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same(Some(a), Some(b)))
        }
        (Some(Value::Number(a)), Some(Value::Number(b))) => a.as_f64() == b.as_f64(),
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

fn member<'v>(value: Option<&'v Value>, key: &str) -> Option<&'v Value> {
    value?.as_object()?.get(key)
}

fn keys<'v>(values: &[Option<&'v Value>]) -> Vec<&'v str> {
    let mut keys: Vec<&str> = values
        .iter()
        .filter_map(|v| v.and_then(Value::as_object))
        .flat_map(|members| members.keys().map(String::as_str))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Walk snapshot `s`, desired `d` and result `r` through the managed tree.
fn compare(
    node: &ManagedNode,
    [s, d, r]: [Option<&Value>; 3],
    path: &mut Vec<String>,
    refused: &[Vec<String>],
    on_cleared: OnCleared,
    failures: &mut Vec<String>,
) {
    let at = |path: &[String]| format!("/{}", path.join("/"));
    if refused.iter().any(|refused| path.starts_with(refused)) {
        if !same(r, s) {
            failures.push(format!("{}: refused, yet changed to {r:?}", at(path)));
        }
        return;
    }
    match node {
        ManagedNode::Members(members) => {
            for key in keys(&[s, d, r]) {
                path.push(key.to_owned());
                let values = [s, d, r].map(|v| member(v, key));
                match members.get(key) {
                    Some(child) => compare(child, values, path, refused, on_cleared, failures),
                    None => {
                        if !same(values[2], values[0]) {
                            failures.push(format!(
                                "{}: unmanaged, changed from {:?} to {:?}",
                                at(path),
                                values[0],
                                values[2]
                            ));
                        }
                    }
                }
                path.pop();
            }
        }
        ManagedNode::All => {
            if same(r, d) {
                return;
            }
            let cleared = non_null(d).is_none() && non_null(s).is_some();
            match (non_null(s), non_null(d), non_null(r)) {
                _ if cleared && on_cleared == OnCleared::Skip => {
                    if !same(r, s) {
                        failures.push(format!("{}: clear skipped, yet {r:?}", at(path)));
                    }
                }
                (_, Some(Value::Object(_)), Some(Value::Object(_))) => {
                    static ALL: ManagedNode = ManagedNode::All;
                    for key in keys(&[s, d, r]) {
                        path.push(key.to_owned());
                        let values = [s, d, r].map(|v| member(v, key));
                        compare(&ALL, values, path, refused, on_cleared, failures);
                        path.pop();
                    }
                }
                _ => failures.push(format!("{}: expected {d:?}, got {r:?}", at(path))),
            }
        }
    }
}

/// An op's path is managed, or it adds a missing parent that holds managed
/// members only.
fn inside_managed(op: &Op, managed: &ManagedPaths) -> bool {
    let Some(mut tokens) = pointer_tokens(op.path()) else {
        return false;
    };
    if tokens.last().is_some_and(|t| t == "-") {
        tokens.pop();
    }
    if managed.contains(&tokens) {
        return true;
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
    holds_managed_only(node, op.value())
}

fn holds_managed_only(node: &ManagedNode, value: &Value) -> bool {
    match (node, value) {
        (ManagedNode::All, _) => true,
        (ManagedNode::Members(members), Value::Object(object)) => {
            object.iter().all(|(key, child)| match members.get(key) {
                Some(node) => holds_managed_only(node, child),
                None => false,
            })
        }
        _ => false,
    }
}
