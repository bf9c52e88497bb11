//! The sync model against the emulator, one test per way the promise used
//! to break: the base is what Partner Center acknowledged, contacts are
//! people (keyed by e-mail), every write records its intent, a refused
//! status is never resent, a referral id from the export is verified, one
//! lock per store, a lost create is not repeated blindly, and a resync
//! re-asserts what the CRM owns. Each asserts the requests sent and the
//! live referral, not only exit codes.

mod common;

use common::*;
use serde_json::{Value, json};

/// Journal entries that are writes.
fn writes(emulator: &Emulator) -> Vec<Value> {
    emulator
        .requests()
        .into_iter()
        .filter(|r| r["method"] != json!("GET"))
        .collect()
}

/// The bodies of the PATCHes the emulator applied (a 412 applies nothing).
fn patch_bodies(emulator: &Emulator) -> Vec<Value> {
    emulator
        .requests_with_method("PATCH")
        .into_iter()
        .filter(|r| r["status"] == json!(200) || r["status"] == json!(204))
        .map(|r| r["body"].clone())
        .collect()
}

/// Writes the emulator applied.
fn applied_writes(emulator: &Emulator) -> Vec<Value> {
    writes(emulator)
        .into_iter()
        .filter(|r| {
            r["status"]
                .as_u64()
                .is_some_and(|s| (200..300).contains(&s))
        })
        .collect()
}

/// A referral Partner Center holds for lead `n`, as the CRM has it, plus
/// `extra` members merged in at the top and in `customerProfile`.
fn seeded(n: u32, customer_profile: Value) -> Value {
    let mut profile = json!({
        "name": format!("Lead {n} Ltd"),
        "team": [{"email": format!("ann.{n}@example.com"), "firstName": "Ann", "lastName": format!("Lee {n}")}],
    });
    if let (Some(profile), Value::Object(extra)) = (profile.as_object_mut(), customer_profile) {
        profile.extend(extra);
    }
    json!({
        "id": format!("ref-{n}"),
        "externalReferenceId": lead_id(n),
        "name": format!("Lead {n}"),
        "status": "New",
        "substatus": "Received",
        "type": "Independent",
        "qualification": "MarketingQualified",
        "customerProfile": profile,
        "consent": {"consentToToShareInfoWithOthers": false, "consentToContact": true},
        "details": {"dealValue": 1000 * n, "currency": "USD", "notes": format!("Lead {n} notes")},
    })
}

fn workspace(emulator: &Emulator, extra: &str) -> Workspace {
    Workspace::new(
        emulator,
        "lead",
        "export.jsonl",
        &format!("[sync]\ncreate_missing = true\ncreate_confirm_secs = 0\n{extra}"),
    )
}

/// Sync `records`; the journal is cleared afterwards.
fn sync_ok(emulator: &Emulator, ws: &Workspace, records: &[Value]) -> Run {
    ws.write_export(&jsonl(records));
    let run = ws.run(&["sync"]);
    run.assert_code(0);
    emulator.clear_requests();
    run
}

// ---------------------------------------------------------------------------
// 1. Adoption takes Partner Center's values as the base.

#[test]
fn after_adoption_a_new_member_is_added_below_the_address_partner_center_has() {
    let address = json!({"addressLine1": "1 Main St", "postalCode": "98052", "country": "US", "region": "NA"});
    let emulator = Emulator::start(&json!([seeded(1, json!({"address": address}))]), &[]);
    let ws = workspace(&emulator, "");
    let mut record = lead(1, "Lead 1", 1000);
    ws.write_export(&jsonl(&[record.clone()]));
    ws.run(&["sync"]).assert_code(0);
    assert_eq!(writes(&emulator), Vec::<Value>::new(), "adoption wrote");
    emulator.clear_requests();

    record["address1_city"] = json!("Redmond");
    sync_ok_keeping(&emulator, &ws, &[record]);
    let live = emulator.referral("ref-1");
    let mut expected = address.clone();
    expected["city"] = json!("Redmond");
    assert_eq!(live["customerProfile"]["address"], expected);
}

/// Like [`sync_ok`], and check the one PATCH is exactly the city's `add`.
fn sync_ok_keeping(emulator: &Emulator, ws: &Workspace, records: &[Value]) {
    ws.write_export(&jsonl(records));
    ws.run(&["sync"]).assert_code(0);
    assert_eq!(
        patch_bodies(emulator),
        [json!([{"op": "add", "path": "/customerProfile/address/city", "value": "Redmond"}])]
    );
}

// ---------------------------------------------------------------------------
// 2. Contacts are keyed by e-mail.

fn seller_contact() -> Value {
    json!({"email": "pat.seller@example.com", "firstName": "Pat", "contactPreference": {"locale": "en-us"}})
}

fn team_seed() -> Value {
    json!([seeded(
        1,
        json!({"team": [
            seller_contact(),
            {"email": "ANN.1@example.com", "firstName": "Ann", "lastName": "Lee 1", "phoneNumber": "555-0100"},
        ]})
    )])
}

#[test]
fn adoption_matches_the_crms_contact_by_email_and_keeps_the_others() {
    let emulator = Emulator::start(&team_seed(), &[]);
    let ws = workspace(&emulator, "");
    ws.write_export(&jsonl(&[lead(1, "Lead 1", 1000)]));
    ws.run(&["sync"]).assert_code(0);
    assert_eq!(writes(&emulator), Vec::<Value>::new(), "adoption wrote");
    assert_eq!(
        emulator.referral("ref-1")["customerProfile"]["team"],
        team_seed()[0]["customerProfile"]["team"]
    );
}

#[test]
fn a_contact_edit_is_one_member_replace_and_seller_contacts_survive() {
    let emulator = Emulator::start(&team_seed(), &[]);
    let ws = workspace(&emulator, SECOND_MEMBER_MAPPING);
    sync_ok(&emulator, &ws, &[lead(1, "Lead 1", 1000)]);

    let mut record = lead(1, "Lead 1", 1000);
    record["lastname"] = json!("Lee-Smith");
    sync_ok_with(&emulator, &ws, std::slice::from_ref(&record), |bodies| {
        assert_eq!(
            bodies,
            [
                json!([{"op": "replace", "path": "/customerProfile/team/1/lastName", "value": "Lee-Smith"}])
            ]
        )
    });
    let team = &emulator.referral("ref-1")["customerProfile"]["team"];
    assert_eq!(team[0], seller_contact());
    assert_eq!(team[1]["phoneNumber"], "555-0100");

    // A seller adds a contact; the CRM adds its second one: appended, and
    // the seller's stays.
    let added = json!({"email": "kim@example.com", "firstName": "Kim"});
    emulator.seller_edit(
        "ref-1",
        json!([{"op": "add", "path": "/customerProfile/team/-", "value": added}]),
    );
    let record = with_second_member(record, "Bo");
    sync_ok_with(&emulator, &ws, std::slice::from_ref(&record), |bodies| {
        assert_eq!(
            bodies,
            [json!([{"op": "add", "path": "/customerProfile/team/-",
                     "value": {"email": "bo.Lee-Smith@example.com", "firstName": "Bo"}}])]
        )
    });
    let team = emulator.referral("ref-1")["customerProfile"]["team"].clone();
    assert_eq!(team.as_array().map(Vec::len), Some(4), "{team}");
    assert_eq!(team[0], seller_contact());
    assert_eq!(team[2], added);

    // The CRM drops its first contact (its columns empty, as the Web API
    // writes them): nothing is removed, it is reported.
    let mut dropped = record;
    for column in ["firstname", "lastname", "emailaddress1"] {
        dropped[column] = Value::Null;
    }
    ws.write_export(&jsonl(&[dropped]));
    let run = ws.run(&["sync"]);
    run.assert_code(0);
    assert!(
        run.stdout()
            .contains("left in Partner Center: /customerProfile/team[ann.1@example.com]"),
        "{}",
        run.stdout()
    );
    assert_eq!(writes(&emulator), Vec::<Value>::new());
    assert_eq!(emulator.referral("ref-1")["customerProfile"]["team"], team);
}

/// Sync `records`, hand the PATCH bodies sent to `check`, clear the journal.
fn sync_ok_with(
    emulator: &Emulator,
    ws: &Workspace,
    records: &[Value],
    check: impl FnOnce(Vec<Value>),
) {
    ws.write_export(&jsonl(records));
    let run = ws.run(&["sync"]);
    run.assert_code(0);
    check(patch_bodies(emulator));
    emulator.clear_requests();
}

// ---------------------------------------------------------------------------
// 3. Write intents: our own unacknowledged write is not a seller's edit.

#[test]
fn a_revert_after_an_applied_but_unacknowledged_write_lands() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = workspace(&emulator, "");
    sync_ok(&emulator, &ws, &[lead(1, "Lead 1", 1000)]);

    // The PATCH to 2000 is applied and its answer lost; reading the
    // referral fails too, so the outcome stays unknown.
    emulator.add_faults(json!([
        {"method": "PATCH", "kind": "reset_after", "times": 1},
        {"method": "GET", "kind": "reset_before", "times": 0},
    ]));
    ws.write_export(&jsonl(&[lead(1, "Lead 1", 2000)]));
    ws.run(&["sync"]).assert_code(1);
    assert_eq!(
        emulator.referral_for(&lead_id(1))["details"]["dealValue"],
        2000
    );
    assert_eq!(ws.stored(&lead_id(1)).unwrap().state, "pending");
    emulator.clear_faults();
    emulator.clear_requests();

    // The CRM goes back to 1000.
    ws.write_export(&jsonl(&[lead(1, "Lead 1", 1000)]));
    ws.run(&["sync"]).assert_code(0);
    assert_eq!(
        patch_bodies(&emulator),
        [json!([{"op": "replace", "path": "/details/dealValue", "value": 1000}])]
    );
    let live = emulator.referral_for(&lead_id(1));
    assert_eq!(live["details"]["dealValue"], 1000);
    let row = ws.stored(&lead_id(1)).unwrap();
    assert_eq!(row.state, "synced");
    assert_eq!(row.etag.as_deref(), live["eTag"].as_str());
}

/// A PATCH that set two members is applied and its answer lost; a seller
/// then edits one of them and the CRM takes the other back. The next cycle
/// finds the eTag moved and only one member holding the value written: that
/// one is synced, so the CRM's revert of it lands; the one the seller
/// edited is weighed against the CRM's value as before the write (kept
/// under `remote-wins`, the CRM's under `crm-wins`).
#[test]
fn a_write_found_applied_in_part_lands_the_crm_s_later_word_on_the_slots_that_hold_it() {
    for (policy, notes_sent) in [("remote-wins", false), ("crm-wins", true)] {
        let emulator = Emulator::start(&json!([]), &[]);
        let ws = workspace(&emulator, &format!("conflict = \"{policy}\"\n"));
        sync_ok(&emulator, &ws, &[lead(1, "Lead 1", 1000)]);
        let id = emulator.referral_for(&lead_id(1))["id"]
            .as_str()
            .unwrap()
            .to_owned();

        let mut edited = lead(1, "Lead 1", 2000);
        edited["description"] = json!("CRM notes 2");
        emulator.add_faults(json!([
            {"method": "PATCH", "kind": "reset_after", "times": 1},
            {"method": "GET", "kind": "reset_before", "times": 0},
        ]));
        ws.write_export(&jsonl(&[edited.clone()]));
        ws.run(&["sync"]).assert_code(1);
        let live = emulator.referral_for(&lead_id(1));
        assert_eq!(live["details"]["dealValue"], 2000, "{policy}");
        assert_eq!(live["details"]["notes"], "CRM notes 2", "{policy}");
        assert_eq!(ws.stored(&lead_id(1)).unwrap().state, "pending", "{policy}");
        emulator.clear_faults();

        emulator.seller_edit(
            &id,
            json!([{"op": "replace", "path": "/details/notes", "value": "Seller notes"}]),
        );
        edited["estimatedamount"] = json!(1000);
        ws.write_export(&jsonl(&[edited]));
        emulator.clear_requests();
        ws.run(&["sync"]).assert_code(0);

        let mut ops = vec![json!({"op": "replace", "path": "/details/dealValue", "value": 1000})];
        if notes_sent {
            ops.push(json!({"op": "replace", "path": "/details/notes", "value": "CRM notes 2"}));
        }
        assert_eq!(patch_bodies(&emulator), [Value::Array(ops)], "{policy}");
        let live = emulator.referral_for(&lead_id(1));
        assert_eq!(live["details"]["dealValue"], 1000, "{policy}");
        let notes = if notes_sent {
            "CRM notes 2"
        } else {
            "Seller notes"
        };
        assert_eq!(live["details"]["notes"], notes, "{policy}");
        let row = ws.stored(&lead_id(1)).unwrap();
        assert_eq!(row.state, "synced", "{policy}");
        assert_eq!(row.etag.as_deref(), live["eTag"].as_str(), "{policy}");

        // The history says which slots the settle found holding the write.
        let history = ws.run(&["history", &lead_id(1), "--json"]);
        history.assert_code(0);
        let events = history.json_lines();
        let settled = events
            .iter()
            .find(|e| e["kind"] == "intent settled")
            .unwrap_or_else(|| panic!("{policy}: no settle in {events:?}"));
        assert_eq!(settled["detail"]["applied"], false, "{policy}");
        assert_eq!(
            settled["detail"]["slotsHeld"],
            json!(["/details/dealValue"]),
            "{policy}"
        );
    }
}

#[test]
fn a_write_interrupted_before_it_was_applied_is_sent_once_more() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = workspace(&emulator, "");
    sync_ok(&emulator, &ws, &[lead(1, "Lead 1", 1000)]);
    emulator.add_faults(json!([
        {"method": "PATCH", "kind": "reset_before", "times": 1},
        {"method": "GET", "kind": "reset_before", "times": 0},
    ]));
    ws.write_export(&jsonl(&[lead(1, "Lead 1", 2000)]));
    ws.run(&["sync"]).assert_code(1);
    assert_eq!(
        emulator.referral_for(&lead_id(1))["details"]["dealValue"],
        1000
    );
    emulator.clear_faults();
    emulator.clear_requests();
    ws.run(&["sync"]).assert_code(0);
    assert_eq!(
        patch_bodies(&emulator),
        [json!([{"op": "replace", "path": "/details/dealValue", "value": 2000}])]
    );
}

// ---------------------------------------------------------------------------
// 4. and 5. Partner Center's status is respected, and is what a create got.

fn contacted(mut record: Value) -> Value {
    record["statuscode"] = json!(2);
    record
}

#[test]
fn a_status_move_partner_center_refuses_is_never_resent_and_the_rest_lands() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = workspace(&emulator, "");
    sync_ok(&emulator, &ws, &[lead(1, "Lead 1", 1000)]);
    let id = emulator.referral_for(&lead_id(1))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A seller closes it while the CRM moves it on.
    emulator.seller_edit(
        &id,
        json!([
            {"op": "replace", "path": "/status", "value": "Closed"},
            {"op": "replace", "path": "/substatus", "value": "Lost"},
        ]),
    );
    ws.write_export(&jsonl(&[contacted(lead(1, "Lead 1", 1000))]));
    let run = ws.run(&["sync"]);
    run.assert_code(1);
    let refusal = "Partner Center holds Closed/Lost, the CRM says Active/Accepted";
    assert!(run.stdout().contains(refusal), "{}", run.stdout());
    // Planned against the stored base the move was valid; If-Match caught
    // the seller's close, and against live it was not sent again.
    assert_eq!(applied_writes(&emulator), Vec::<Value>::new());
    assert_eq!(emulator.referral(&id)["status"], "Closed");
    let row = ws.stored(&lead_id(1)).unwrap();
    assert_eq!(row.state, "invalid");
    emulator.clear_requests();

    // The CRM changes the deal value: it lands, the status stays out.
    ws.write_export(&jsonl(&[contacted(lead(1, "Lead 1", 5000))]));
    let run = ws.run(&["sync"]);
    run.assert_code(1);
    assert_eq!(
        patch_bodies(&emulator),
        [json!([{"op": "replace", "path": "/details/dealValue", "value": 5000}])]
    );
    assert!(
        emulator
            .requests()
            .iter()
            .all(|r| r["status"] != json!(400)),
        "{:?}",
        emulator.requests()
    );
    let live = emulator.referral(&id);
    assert_eq!(
        (live["status"].clone(), live["details"]["dealValue"].clone()),
        (json!("Closed"), json!(5000))
    );
    let status = ws.status();
    let problem = status["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["external_id"] == json!(lead_id(1)))
        .unwrap_or_else(|| panic!("{status:#}"))
        .clone();
    assert_eq!(problem["state"], "invalid");
    assert!(
        problem["last_error"].as_str().unwrap().contains(refusal),
        "{problem}"
    );
}

#[test]
fn a_create_keeps_the_service_s_answer_as_the_base() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = workspace(&emulator, "");
    sync_ok(&emulator, &ws, &[lead(1, "Lead 1", 1000)]);
    let live = emulator.referral_for(&lead_id(1));
    let base: Value = rusqlite::Connection::open(&ws.store)
        .unwrap()
        .query_row(
            "SELECT base FROM records WHERE external_id = ?1",
            [lead_id(1)],
            |row| row.get::<_, String>(0),
        )
        .map(|text| serde_json::from_str(&text).unwrap())
        .unwrap();
    assert_eq!(base["status"], live["status"]);
    assert_eq!(base["details"]["dealValue"], live["details"]["dealValue"]);
    assert_eq!(
        base["customerProfile"]["team"],
        live["customerProfile"]["team"]
    );
    assert!(
        base.get("id").is_none() && base.get("consent").is_none(),
        "{base}"
    );
}

// ---------------------------------------------------------------------------
// 6. A referral id from the export is verified.

const REFERRAL_ID_COLUMN: &str = "[mapping]\nreferral_id_column = \"new_referralid\"\n";

/// Referral ids from the export are GUIDs.
const R1: &str = "7a000000-0000-4000-8000-000000000001";

fn seeded_with_guid(n: u32) -> Value {
    let mut referral = seeded(n, json!({}));
    referral["id"] = json!(R1);
    referral
}

fn claiming(mut record: Value, referral_id: &str) -> Value {
    record["new_referralid"] = json!(referral_id);
    record
}

#[test]
fn a_cloned_record_with_a_copied_referral_id_takes_nothing_over() {
    let emulator = Emulator::start(&json!([seeded_with_guid(1)]), &[]);
    let ws = workspace(&emulator, REFERRAL_ID_COLUMN);
    let original = claiming(lead(1, "Lead 1", 1000), R1);
    sync_ok(&emulator, &ws, std::slice::from_ref(&original));
    let before = emulator.referral(R1);

    let clone = claiming(lead(2, "Lead 1 (copy)", 7000), R1);
    ws.write_export(&jsonl(&[original.clone(), clone.clone()]));
    let run = ws.run(&["sync"]);
    run.assert_code(1);
    assert!(
        run.stdout()
            .contains(&format!("which record {} is synced to", lead_id(1))),
        "{}",
        run.stdout()
    );
    assert_eq!(writes(&emulator), Vec::<Value>::new());
    assert_eq!(emulator.referral(R1), before);

    // Both changed in one export: neither is sent, each names the other.
    emulator.clear_requests();
    let original = claiming(lead(1, "Lead 1", 1500), R1);
    ws.write_export(&jsonl(&[original, clone]));
    let run = ws.run(&["sync"]);
    run.assert_code(1);
    for (this, other) in [(lead_id(1), lead_id(2)), (lead_id(2), lead_id(1))] {
        let line = format!("records {this} and {other} give the same referral {R1}");
        assert!(run.stdout().contains(&line), "{line}\n{}", run.stdout());
    }
    assert_eq!(writes(&emulator), Vec::<Value>::new());
    assert_eq!(emulator.referral(R1), before);
}

#[test]
fn a_referral_id_carrying_another_records_external_id_is_not_touched() {
    let emulator = Emulator::start(&json!([seeded_with_guid(1)]), &[]);
    let ws = workspace(&emulator, REFERRAL_ID_COLUMN);
    ws.write_export(&jsonl(&[claiming(lead(2, "Lead 2", 2000), R1)]));
    let run = ws.run(&["sync"]);
    run.assert_code(1);
    assert!(
        run.stdout()
            .contains(&format!("carries externalReferenceId {}", lead_id(1))),
        "{}",
        run.stdout()
    );
    assert_eq!(writes(&emulator), Vec::<Value>::new());
}

// ---------------------------------------------------------------------------
// 7. One writer per store file, whatever the path.

#[test]
fn a_second_sync_through_a_symlinked_store_path_is_refused_naming_the_holder() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = workspace(&emulator, "");
    sync_ok(&emulator, &ws, &[lead(1, "Lead 1", 1000)]);
    let link = ws.dir.path().join("elsewhere");
    std::os::unix::fs::symlink(ws.dir.path(), &link).unwrap();
    let held = referral_sync::lock::StoreLock::acquire(&ws.store).unwrap();
    let via_link = link.join("store.db");
    ws.edit_config(|text| {
        text.replace(
            &ws.store.display().to_string(),
            &via_link.display().to_string(),
        )
    });
    ws.write_export(&jsonl(&[lead(1, "Lead 1", 1000), lead(2, "Lead 2", 2000)]));
    let run = ws.run(&["sync"]);
    run.assert_code(5);
    assert!(
        run.stderr()
            .contains(&format!("pid {}", std::process::id())),
        "{}",
        run.stderr()
    );
    assert_eq!(writes(&emulator), Vec::<Value>::new());
    drop(held);
}

// ---------------------------------------------------------------------------
// 8. A create whose answer was lost is not repeated blindly.

#[test]
fn a_lost_create_is_held_until_a_late_enough_listing_shows_no_referral() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = Workspace::new(
        &emulator,
        "lead",
        "export.jsonl",
        "[sync]\ncreate_missing = true\ncreate_confirm_secs = 300\n",
    );
    emulator.add_faults(json!([{"method": "POST", "kind": "reset_before", "times": 1}]));
    ws.write_export(&jsonl(&[lead(1, "Lead 1", 1000)]));
    ws.run(&["sync"]).assert_code(1);
    assert_eq!(emulator.referrals().len(), 0);
    emulator.clear_requests();

    let run = ws.run(&["sync"]);
    run.assert_code(1);
    assert!(
        run.stdout().contains("create outcome unknown since"),
        "{}",
        run.stdout()
    );
    assert!(
        run.stdout().contains("sync.create_confirm_secs = 300"),
        "{}",
        run.stdout()
    );
    assert_eq!(emulator.requests_with_method("POST"), Vec::<Value>::new());
    let status = ws.status();
    assert!(
        status["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["external_id"] == json!(lead_id(1)) && p["state"] == "pending"),
        "{status:#}"
    );

    // Once the wait is over (here: set to nothing), it is created, once.
    ws.edit_config(|text| text.replace("create_confirm_secs = 300", "create_confirm_secs = 0"));
    ws.run(&["sync"]).assert_code(0);
    assert_eq!(emulator.requests_with_method("POST").len(), 1);
    assert_no_duplicates(&emulator);
    assert_eq!(emulator.referrals().len(), 1);
}

#[test]
fn a_lost_create_that_took_effect_is_adopted_not_repeated() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = Workspace::new(
        &emulator,
        "lead",
        "export.jsonl",
        "[sync]\ncreate_missing = true\ncreate_confirm_secs = 300\n",
    );
    emulator.add_faults(json!([{"method": "POST", "kind": "reset_after", "times": 1}]));
    ws.write_export(&jsonl(&[lead(1, "Lead 1", 1000)]));
    ws.run(&["sync"]).assert_code(1);
    assert_eq!(emulator.referrals().len(), 1);
    emulator.clear_requests();
    ws.write_export(&jsonl(&[lead(1, "Lead 1", 1500)]));
    ws.run(&["sync"]).assert_code(0);
    assert_eq!(emulator.requests_with_method("POST"), Vec::<Value>::new());
    assert_eq!(
        patch_bodies(&emulator),
        [json!([{"op": "replace", "path": "/details/dealValue", "value": 1500}])]
    );
    assert_eq!(emulator.referrals().len(), 1);
}

// ---------------------------------------------------------------------------
// 9. A resync re-asserts what the CRM owns.

fn drifted(extra: &str) -> (Emulator, Workspace, String) {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = workspace(&emulator, extra);
    sync_ok(&emulator, &ws, &[lead(1, "Lead 1", 1000)]);
    let id = emulator.referral_for(&lead_id(1))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    emulator.seller_edit(
        &id,
        json!([
            {"op": "replace", "path": "/details/dealValue", "value": 9999},
            {"op": "add", "path": "/customerProfile/size", "value": "1to50employees"},
        ]),
    );
    // An ordinary cycle leaves the seller's edit alone.
    ws.run(&["sync"]).assert_code(0);
    assert_eq!(writes(&emulator), Vec::<Value>::new());
    emulator.clear_requests();
    (emulator, ws, id)
}

#[test]
fn resync_dry_run_shows_the_repair_and_writes_nothing() {
    let (emulator, ws, id) = drifted("");
    let stored = ws.stored(&lead_id(1));
    let run = ws.run(&["resync", "--dry-run"]);
    run.assert_code(0);
    assert!(
        run.stdout().contains(
            "drift repaired /details/dealValue: Partner Center has 9999, the CRM has 1000"
        ),
        "{}",
        run.stdout()
    );
    assert!(
        run.stdout().contains("replace /details/dealValue 1000"),
        "{}",
        run.stdout()
    );
    assert_eq!(writes(&emulator), Vec::<Value>::new());
    assert_eq!(ws.stored(&lead_id(1)), stored);
    assert_eq!(emulator.referral(&id)["details"]["dealValue"], 9999);
}

#[test]
fn resync_under_crm_wins_repairs_owned_drift_and_keeps_the_rest() {
    let (emulator, ws, id) = drifted("");
    let run = ws.run(&["resync"]);
    run.assert_code(0);
    assert_eq!(
        patch_bodies(&emulator),
        [json!([{"op": "replace", "path": "/details/dealValue", "value": 1000}])]
    );
    assert!(run.stderr().contains("drift repaired"), "{}", run.stderr());
    assert!(
        run.stderr().contains("path=/details/dealValue"),
        "{}",
        run.stderr()
    );
    let live = emulator.referral(&id);
    assert_eq!(live["details"]["dealValue"], 1000);
    assert_eq!(live["customerProfile"]["size"], "1to50employees");
}

#[test]
fn resync_under_remote_wins_keeps_the_drift_and_says_so() {
    let (emulator, ws, id) = drifted("conflict = \"remote-wins\"\n");
    let run = ws.run(&["resync"]);
    run.assert_code(0);
    assert_eq!(writes(&emulator), Vec::<Value>::new());
    assert!(run.stderr().contains("drift kept"), "{}", run.stderr());
    assert_eq!(emulator.referral(&id)["details"]["dealValue"], 9999);
}

// ---------------------------------------------------------------------------
// A store written by the previous release.

#[test]
fn a_store_from_before_the_base_was_kept_is_migrated_and_read_live_once() {
    let emulator = Emulator::start(&json!([seeded(1, json!({}))]), &[]);
    let ws = workspace(&emulator, "");
    // The previous release's schema (migrations 1 to 3) and its row for a
    // synced record: a snapshot and an eTag, no base.
    let live = emulator.referral("ref-1");
    {
        let conn = rusqlite::Connection::open(&ws.store).unwrap();
        for sql in [
            include_str!("../migrations/0001_initial.sql"),
            include_str!("../migrations/0002_resync_requests.sql"),
            include_str!("../migrations/0003_settled_index.sql"),
        ] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        let snapshot = json!({
            "externalReferenceId": lead_id(1), "name": "Lead 1",
            "status": "New", "substatus": "Received",
            "customerProfile": {"name": "Lead 1 Ltd", "team": [{"email": "ann.1@example.com", "firstName": "Ann", "lastName": "Lee 1"}]},
            "details": {"dealValue": 1000, "currency": "USD", "notes": "Lead 1 notes"},
        });
        conn.execute(
            "INSERT INTO records (external_id, referral_id, etag, snapshot, desired_hash, state, attempts, first_seen_at, updated_at)
             VALUES (?1, 'ref-1', ?2, ?3, 'old', 'synced', 0, 'then', 'then')",
            rusqlite::params![lead_id(1), live["eTag"].as_str().unwrap(), snapshot.to_string()],
        )
        .unwrap();
    }
    // A seller edited an owned field since; the CRM changed another.
    emulator.seller_edit(
        "ref-1",
        json!([{"op": "replace", "path": "/details/notes", "value": "seller notes"}]),
    );
    ws.write_export(&jsonl(&[lead(1, "Lead 1", 2000)]));
    ws.run(&["sync"]).assert_code(0);
    assert_eq!(
        patch_bodies(&emulator),
        [json!([{"op": "replace", "path": "/details/dealValue", "value": 2000}])]
    );
    let live = emulator.referral("ref-1");
    assert_eq!(live["details"]["notes"], "seller notes");
    let row = ws.stored(&lead_id(1)).unwrap();
    assert_eq!(row.state, "synced");
    assert_eq!(row.etag.as_deref(), live["eTag"].as_str());
    assert_eq!(ws.integrity_check(), "ok");
}

// ---------------------------------------------------------------------------
// The store failing in the push phase.

#[test]
fn a_full_store_stops_the_push_phase_once_as_the_store_failed() {
    use referral_sync::cycle::{CycleError, CycleRequest, Engine, Trigger};
    use std::sync::{Arc, Mutex};

    let emulator = Emulator::start(&json!([]), &[]);
    let ws = workspace(&emulator, "");
    let records: Vec<Value> = (1..=40)
        .map(|n| lead(n, &format!("Lead {n}"), 1000))
        .collect();
    sync_ok(&emulator, &ws, &records);
    // Every record changes, with notes big enough that the intents cannot
    // fit in a store that may not grow: SQLite answers "database or disk
    // is full", as on a full disk.
    let changed: Vec<Value> = (1..=40)
        .map(|n| {
            let mut record = lead(n, &format!("Lead {n}"), 2000);
            record["description"] = json!("n".repeat(200_000));
            record
        })
        .collect();
    ws.write_export(&jsonl(&changed));
    let rows_before = ws.all_stored();

    let settings = Arc::new(referral_sync::config::Settings::load(&ws.config).unwrap());
    let mapper = settings.mapper();
    let store = referral_sync::store::Store::open(&ws.store).unwrap();
    let pages: i64 = store
        .connection()
        .pragma_query_value(None, "page_count", |row| row.get(0))
        .unwrap();
    store
        .connection()
        .pragma_update(None, "max_page_count", pages + 60)
        .unwrap();
    let runtime = referral_sync::service::async_runtime().unwrap();
    let result = runtime.block_on(async {
        let client = referral_sync::service::build_client(&settings).unwrap();
        let engine = Engine::new(
            Arc::clone(&settings),
            mapper,
            Arc::new(Mutex::new(store)),
            Some(client),
        );
        let (_stop, stop) = tokio::sync::watch::channel(false);
        engine
            .run_cycle(CycleRequest::new(Trigger::Manual), &|_| {}, stop)
            .await
    });
    match result {
        Err(CycleError::StoreFailed(message)) => {
            assert!(message.starts_with("the store failed"), "{message}");
            assert!(message.contains("full"), "{message}");
        }
        other => panic!("expected the store to fail the cycle, got {other:?}"),
    }
    // Records not reached were not sent; every record the service took is
    // either settled or pending with its intent, none lost.
    let applied = patch_bodies(&emulator).len();
    assert!(
        applied < 40,
        "{applied} PATCHes: the push phase did not stop"
    );
    let rows_after = ws.all_stored();
    for (id, before) in &rows_before {
        let after = &rows_after[id];
        let live = emulator.referral_for(id);
        if live["details"]["dealValue"] == json!(1000) {
            assert_eq!(
                after.snapshot, before.snapshot,
                "{id} advanced without a write"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The plan lists what it was asked to.

#[test]
fn a_dry_run_with_all_lists_unchanged_records_too() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = workspace(&emulator, "");
    sync_ok(
        &emulator,
        &ws,
        &[lead(1, "Lead 1", 1000), lead(2, "Lead 2", 2000)],
    );
    ws.write_export(&jsonl(&[lead(1, "Lead 1", 1000), lead(2, "Lead 2", 2500)]));

    let actions = |args: &[&str]| -> Vec<(String, String)> {
        let run = ws.run(args);
        run.assert_code(0);
        let mut actions: Vec<(String, String)> = run
            .json_lines()
            .iter()
            .map(|o| {
                (
                    o["externalReferenceId"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    o["action"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        actions.sort();
        actions
    };
    assert_eq!(
        actions(&["sync", "--dry-run", "--output", "json", "--all"]),
        [
            (lead_id(1), "unchanged".to_owned()),
            (lead_id(2), "update".to_owned())
        ]
    );
    assert_eq!(
        actions(&["sync", "--dry-run", "--output", "json"]),
        [(lead_id(2), "update".to_owned())]
    );
    assert_eq!(writes(&emulator), Vec::<Value>::new());
    let run = ws.run(&["sync", "--all"]);
    run.assert_code(2);
}
