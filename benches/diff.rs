//! `plan_patch` against json-patch's generic `diff` on the same pairs.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use referral_sync::diff::{DiffOptions, plan_patch};
use referral_sync::model::ManagedPaths;
use serde_json::{Value, json};

fn small_pair() -> (Value, Value) {
    let snapshot = json!({"name": "Contoso", "details": {"dealValue": 50000, "currency": "USD"}});
    let mut desired = snapshot.clone();
    desired["details"]["dealValue"] = json!(10000);
    (snapshot, desired)
}

fn referral_pair() -> (Value, Value) {
    let snapshot: Value = serde_json::from_str(include_str!("../tests/fixtures/referral.json"))
        .expect("tests/fixtures/referral.json is JSON");
    let mut desired = snapshot.clone();
    desired["status"] = json!("Closed");
    desired["substatus"] = json!("Lost");
    desired["statusReason"] = json!("Out-Sold");
    desired["details"]["dealValue"] = json!(75000);
    desired["details"]["notes"] = json!("Customer chose another partner.");
    desired["details"]["closingDateTime"] = json!("2019-01-31T00:00:00Z");
    desired["customerProfile"]["address"]["city"] = json!("Bellevue");
    desired["team"]
        .as_array_mut()
        .expect("the sample referral has a team")
        .push(json!({"firstName": "Jane", "lastName": "Doe", "email": "jane.doe@contoso.com"}));
    (snapshot, desired)
}

fn long_array_pair() -> (Value, Value) {
    let member = |n: usize| json!({"firstName": format!("Member {n}"), "email": format!("member{n}@contoso.com")});
    let snapshot = json!({"name": "Contoso", "team": (0..200).map(member).collect::<Vec<_>>()});
    let mut desired = snapshot.clone();
    desired["team"] = json!((0..205).map(member).collect::<Vec<_>>());
    (snapshot, desired)
}

fn bench(criterion: &mut Criterion) {
    let managed = ManagedPaths::all();
    let options = DiffOptions::default();
    for (name, (snapshot, desired)) in [
        ("small document, one change", small_pair()),
        ("sample referral, several changes", referral_pair()),
        ("200-element array appended to", long_array_pair()),
    ] {
        // Faster must not mean a longer patch.
        let planned = plan_patch(&snapshot, &desired, &managed, &options)
            .ops
            .len();
        let generic = json_patch::diff(&snapshot, &desired).0.len();
        assert!(
            planned <= generic,
            "{name}: plan_patch sends {planned} ops, json_patch::diff {generic}"
        );
        let mut group = criterion.benchmark_group(name);
        group.bench_function("plan_patch", |bencher| {
            bencher.iter(|| {
                plan_patch(
                    black_box(&snapshot),
                    black_box(&desired),
                    &managed,
                    &options,
                )
            })
        });
        group.bench_function("json_patch::diff", |bencher| {
            bencher.iter(|| json_patch::diff(black_box(&snapshot), black_box(&desired)))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
