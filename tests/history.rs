//! `referral-sync history`: a record's story, newest first, from the
//! store's `record_events`.

mod common;

use common::*;
use serde_json::{Value, json};

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["kind"].as_str()).collect()
}

fn history_json(ws: &Workspace, id: &str) -> Vec<Value> {
    let run = ws.run(&["history", id, "--json"]);
    run.assert_code(0);
    run.json_lines()
}

#[test]
fn history_tells_a_create_an_update_a_412_round_a_drift_repair_and_a_failure() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = Workspace::new(
        &emulator,
        "lead",
        "export.jsonl",
        "[sync]\ncreate_missing = true\ncreate_confirm_secs = 0\n",
    );
    let id = lead_id(1);

    // Created.
    ws.write_export(&jsonl(&[lead(1, "Lead 1", 1000)]));
    ws.run(&["sync"]).assert_code(0);
    let events = history_json(&ws, &id);
    assert_eq!(kinds(&events), ["settled", "sent"]);
    assert_eq!(events[1]["detail"]["method"], "POST");
    let referral_id = events[0]["detail"]["referralId"]
        .as_str()
        .unwrap()
        .to_owned();
    let cycle = events[0]["cycleId"].as_str().unwrap().to_owned();
    assert_eq!(events[1]["cycleId"], json!(cycle));

    // A seller's edit makes the next update a 412 round.
    emulator.seller_edit(
        &referral_id,
        json!([{"op": "replace", "path": "/details/notes", "value": "seller"}]),
    );
    ws.write_export(&jsonl(&[lead(1, "Lead 1", 2000)]));
    ws.run(&["sync"]).assert_code(0);
    let events = history_json(&ws, &id);
    assert_eq!(
        kinds(&events)[..5],
        ["settled", "sent", "replanned", "sent", "planned"]
    );
    assert_eq!(events[3]["detail"]["answer"]["status"], 412);
    assert_eq!(events[2]["detail"]["against"], "live");
    assert_eq!(
        events[1]["detail"]["ops"],
        json!([{"op": "replace", "path": "/details/dealValue", "value": 2000}])
    );
    let live = emulator.referral(&referral_id);
    assert_eq!(events[0]["detail"]["eTag"], live["eTag"]);

    // A resync repairs the seller's drift.
    ws.run(&["resync"]).assert_code(0);
    let events = history_json(&ws, &id);
    let planned = events.iter().find(|e| e["kind"] == "planned").unwrap();
    assert_eq!(
        planned["detail"]["drift"],
        json!([{"path": "/details/notes", "partnerCenter": "seller", "crm": "Lead 1 notes", "action": "repaired"}])
    );

    // A refusal by the service.
    emulator.add_faults(json!([{"method": "PATCH", "kind": "status", "status": 400, "times": 0}]));
    ws.write_export(&jsonl(&[lead(1, "Lead 1", 3000)]));
    ws.run(&["sync"]).assert_code(1);
    let events = history_json(&ws, &id);
    assert_eq!(kinds(&events)[..3], ["failed", "sent", "planned"]);
    assert_eq!(events[0]["detail"]["status"], 400);
    assert_eq!(events[1]["detail"]["answer"]["status"], 400);

    // Text for people, newest first; --limit bounds it.
    let run = ws.run(&["history", &id, "--limit", "3"]);
    run.assert_code(0);
    let text = run.stdout();
    assert!(text.lines().next().unwrap().contains("failed"), "{text}");
    assert!(text.contains("PATCH"), "{text}");
    assert_eq!(
        text.lines().filter(|l| !l.starts_with(' ')).count(),
        3,
        "{text}"
    );
}

#[test]
fn a_record_without_history_is_an_error_naming_it() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = Workspace::new(
        &emulator,
        "lead",
        "export.jsonl",
        "[sync]\ncreate_missing = true\n",
    );
    ws.write_export(&jsonl(&[lead(1, "Lead 1", 1000)]));
    ws.run(&["sync"]).assert_code(0);
    let run = ws.run(&["history", "no-such-record"]);
    run.assert_code(1);
    assert!(
        run.stderr()
            .contains("no history for record no-such-record"),
        "{}",
        run.stderr()
    );
}

#[test]
fn a_dry_run_writes_no_history() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = Workspace::new(
        &emulator,
        "lead",
        "export.jsonl",
        "[sync]\ncreate_missing = true\n",
    );
    ws.write_export(&jsonl(&[lead(1, "Lead 1", 1000)]));
    ws.run(&["sync"]).assert_code(0);
    let before = history_json(&ws, &lead_id(1));
    ws.write_export(&jsonl(&[lead(1, "Lead 1", 5000)]));
    ws.run(&["sync", "--dry-run"]).assert_code(0);
    assert_eq!(history_json(&ws, &lead_id(1)), before);
}
