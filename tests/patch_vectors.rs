//! The patch vectors shipped in `tests/fixtures/patch-vectors.json`: for each
//! `before`/`after` pair with every path managed, the plan must be exactly
//! the `expected` ops, in order.

use referral_sync::diff::{DiffOptions, apply_ops, plan_patch};
use referral_sync::model::{ManagedPaths, Op};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
struct Vector {
    name: String,
    #[serde(default)]
    note: String,
    before: Value,
    after: Value,
    expected: Vec<Op>,
}

fn vectors() -> Vec<Vector> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/patch-vectors.json"
    );
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn every_vector_plans_exactly_the_expected_ops() {
    let vectors = vectors();
    assert!(
        vectors.len() >= 6,
        "only {} vectors were read",
        vectors.len()
    );
    let mut failures = Vec::new();
    for vector in &vectors {
        let plan = plan_patch(
            &vector.before,
            &vector.after,
            &ManagedPaths::all(),
            &DiffOptions::default(),
        );
        if plan.ops != vector.expected || !plan.rejected.is_empty() {
            failures.push(format!(
                "vector {:?} ({}):\n  expected: {}\n  planned:  {}\n  rejected: {:?}",
                vector.name,
                vector.note,
                serde_json::to_string(&vector.expected).unwrap(),
                serde_json::to_string(&plan.ops).unwrap(),
                plan.rejected,
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_vector_patch_turns_before_into_after() {
    for vector in vectors() {
        let mut document = vector.before.clone();
        apply_ops(&mut document, &vector.expected)
            .unwrap_or_else(|error| panic!("vector {:?}: {error}", vector.name));
        assert_eq!(document, vector.after, "vector {:?}", vector.name);
    }
}
