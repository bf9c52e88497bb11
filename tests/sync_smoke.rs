//! The quick-start path end to end: the sample export against the example
//! seed, with the real binaries.

mod common;

use common::*;
use serde_json::{Value, json};

fn example_seed() -> Value {
    let text = std::fs::read_to_string(repo_path("examples/emulator-seed.json")).unwrap();
    let seed: Value = serde_json::from_str(&text).unwrap();
    seed.get("value").cloned().unwrap_or(seed)
}

#[test]
fn first_sync_adopts_existing_referrals_and_creates_the_rest() {
    let emulator = Emulator::start(&example_seed(), &[]);
    let ws = Workspace::new(
        &emulator,
        "opportunity",
        "export.json",
        "[sync]\ncreate_missing = true\n",
    );
    std::fs::copy(repo_path("examples/opportunities.odata.json"), &ws.export).unwrap();

    let run = ws.run(&["sync", "--output", "json"]);
    run.assert_code(0);
    let lines = run.json_lines();
    let actions: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["externalReferenceId"].as_str().unwrap().to_owned(),
                l["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(actions.len(), 5, "{actions:?}");
    for (id, action) in &actions {
        let expected = if id.ends_with("3301") || id.ends_with("3302") {
            "update"
        } else {
            "create"
        };
        assert_eq!(action, expected, "{id}");
    }

    // Adopted: only the managed members the CRM disagrees on were sent,
    // with If-Match, and the seller's own member survives.
    let adopted = emulator.referral_for("3f2504e0-4f89-41d3-9a0c-0305e82c3301");
    assert_eq!(adopted["details"]["dealValue"], json!(50000));
    assert_eq!(
        adopted["name"],
        json!("Contoso supply chain on Dynamics 365")
    );
    assert!(adopted["customerProfile"]["size"].is_string(), "{adopted}");
    let patches = emulator.requests_with_method("PATCH");
    assert_eq!(patches.len(), 2);
    for patch in &patches {
        assert!(patch["if_match"].is_string(), "{patch}");
        for op in patch["body"].as_array().unwrap() {
            assert!(["add", "replace"].contains(&op["op"].as_str().unwrap()));
        }
    }
    assert_eq!(emulator.requests_with_method("POST").len(), 3);
    assert_eq!(emulator.referrals().len(), 6);

    // The store holds what the service acknowledged.
    let row = ws.stored("3f2504e0-4f89-41d3-9a0c-0305e82c3301").unwrap();
    assert_eq!(row.state, "synced");
    assert_eq!(row.etag.as_deref(), adopted["eTag"].as_str());

    // A second cycle over the same export sends nothing.
    emulator.clear_requests();
    let run = ws.run(&["sync"]);
    run.assert_code(0);
    assert!(
        run.stdout().contains("seen 5, unchanged 5"),
        "{}",
        run.stdout()
    );
    let writes: Vec<Value> = emulator
        .requests()
        .into_iter()
        .filter(|r| r["method"] != json!("GET"))
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
}
