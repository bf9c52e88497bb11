//! The push phase end to end: the real `referral-sync` binary against the
//! real `pc-emulator` on loopback. Each test has its own emulator and
//! workspace, and asserts what reached the service (the journal), what the
//! service holds, what the store recorded and what the command said.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Records, referrals and journal helpers.

fn title(external_id: &str) -> String {
    format!("Deal {external_id}")
}

/// An open ("In Progress") opportunity worth `value` USD.
fn open_deal(external_id: &str, value: i64) -> Value {
    opportunity(external_id, &title(external_id), value as f64, 0, 1)
}

/// What Partner Center holds for [`open_deal`], plus members no CRM column
/// maps (size, the customer's team, consent) that must survive every write.
fn seeded_deal(referral_id: &str, external_id: &str, value: i64) -> Value {
    let name = title(external_id);
    json!({
        "id": referral_id,
        "externalReferenceId": external_id,
        "name": name,
        "status": "Active",
        "substatus": "Accepted",
        "type": "Independent",
        "qualification": "SalesQualified",
        "customerProfile": {
            "name": format!("{name} Customer"),
            "size": "51to500employees",
            "team": [{
                "firstName": "Sue",
                "lastName": "Smith",
                "email": "sue.smith@customer.example",
                "contactPreference": {"locale": "en-us", "disableNotifications": false},
            }],
        },
        "consent": {"consentToToShareInfoWithOthers": true, "consentToContact": true},
        "details": {
            "notes": format!("{name} notes"),
            "dealValue": value,
            "currency": "USD",
            "closingDateTime": "2025-03-31T00:00:00Z",
        },
    })
}

fn external_id(n: usize) -> String {
    format!("opp-{n}")
}

fn referral_id(n: usize) -> String {
    format!("ref-{n}")
}

fn base_value(n: usize) -> i64 {
    1000 * n as i64
}

/// Deals 1..=n at their base values.
fn base_deals(n: usize) -> Vec<Value> {
    (1..=n)
        .map(|i| open_deal(&external_id(i), base_value(i)))
        .collect()
}

fn write_deals(ws: &Workspace, deals: &[Value]) {
    ws.write_export(&odata_page(deals));
}

/// An emulator holding referrals 1..=n, and a workspace whose first sync
/// adopted them without writing anything. The journal is cleared.
fn adopted(n: usize, configure: impl FnOnce(&Workspace)) -> (Emulator, Workspace) {
    let seed: Vec<Value> = (1..=n)
        .map(|i| seeded_deal(&referral_id(i), &external_id(i), base_value(i)))
        .collect();
    let emulator = Emulator::start(&Value::Array(seed), &[]);
    let ws = Workspace::new(&emulator, "opportunity", "export.json", "");
    configure(&ws);
    write_deals(&ws, &base_deals(n));
    ws.run(&["sync"]).assert_code(0);
    assert_eq!(writes(&emulator), Vec::<Value>::new(), "adoption wrote");
    for i in 1..=n {
        let row = ws.stored(&external_id(i)).unwrap();
        assert_eq!(row.state, "synced");
        assert_eq!(row.referral_id.as_deref(), Some(referral_id(i).as_str()));
    }
    emulator.clear_requests();
    (emulator, ws)
}

/// Journal entries that are not reads.
fn writes(emulator: &Emulator) -> Vec<Value> {
    emulator
        .requests()
        .into_iter()
        .filter(|r| r["method"] != json!("GET"))
        .collect()
}

/// Journal entries with `method` on one referral.
fn requests_to(emulator: &Emulator, method: &str, referral_id: &str) -> Vec<Value> {
    let suffix = format!("/engagements/referrals/{referral_id}");
    emulator
        .requests_with_method(method)
        .into_iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.ends_with(&suffix)))
        .collect()
}

/// `(method, status)` of every journal entry, in order.
fn exchanges(emulator: &Emulator) -> Vec<(String, u64)> {
    emulator
        .requests()
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap_or("").to_owned(),
                r["status"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn replace(path: &str, value: Value) -> Value {
    json!({"op": "replace", "path": path, "value": value})
}

/// The outcome line `sync --output json` printed for `external_id`.
fn outcome_for(run: &Run, external_id: &str) -> Value {
    let lines: Vec<Value> = run
        .json_lines()
        .into_iter()
        .filter(|l| l["externalReferenceId"] == json!(external_id))
        .collect();
    assert_eq!(lines.len(), 1, "{external_id}: {}", run.stdout());
    lines.into_iter().next().unwrap()
}

fn etag_of(emulator: &Emulator, referral_id: &str) -> String {
    emulator.referral(referral_id)["eTag"]
        .as_str()
        .unwrap()
        .to_owned()
}

// ---------------------------------------------------------------------------
// 1. First sync: adoption, creation, unresolved records.

#[test]
fn first_sync_adopts_existing_referrals_and_creates_missing_ones() {
    let seed = json!([
        // Partner Center has an older deal value.
        seeded_deal("ref-1", "opp-1", 900),
        seeded_deal("ref-2", "opp-2", 2000),
    ]);
    let emulator = Emulator::start(&seed, &[]);
    let ws = Workspace::new(
        &emulator,
        "opportunity",
        "export.json",
        "[sync]\ncreate_missing = true\n",
    );
    write_deals(&ws, &base_deals(3));
    let seeded_etag = etag_of(&emulator, "ref-1");

    let run = ws.run(&["sync", "--output", "json"]);
    run.assert_code(0);
    assert_eq!(outcome_for(&run, "opp-1")["action"], "update");
    assert_eq!(outcome_for(&run, "opp-2")["action"], "unchanged");
    assert_eq!(outcome_for(&run, "opp-3")["action"], "create");

    // Adopted: only the member the CRM disagrees on, under the seeded eTag.
    let patches = emulator.requests_with_method("PATCH");
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(patches[0]["path"], "/v1.0/engagements/referrals/ref-1");
    assert_eq!(
        patches[0]["body"],
        json!([replace("/details/dealValue", json!(1000))])
    );
    assert_eq!(patches[0]["if_match"], json!(seeded_etag));
    let adopted = emulator.referral("ref-1");
    assert_eq!(adopted["details"]["dealValue"], 1000);
    assert_eq!(adopted["customerProfile"]["size"], "51to500employees");
    assert_eq!(adopted["customerProfile"]["team"][0]["firstName"], "Sue");

    // Created: one POST carrying the external id and the creation defaults.
    let posts = emulator.requests_with_method("POST");
    assert_eq!(posts.len(), 1, "{posts:?}");
    let body = &posts[0]["body"];
    assert_eq!(body["externalReferenceId"], "opp-3");
    assert_eq!(body["details"]["dealValue"], 3000);
    assert_eq!(body["type"], "Independent");
    assert_eq!(body["status"], "Active");
    let created = emulator.referral_for("opp-3");
    assert_eq!(emulator.referrals().len(), 3);

    for (external, referral) in [
        ("opp-1", adopted.clone()),
        ("opp-2", emulator.referral("ref-2")),
        ("opp-3", created.clone()),
    ] {
        let row = ws.stored(external).unwrap();
        assert_eq!(row.state, "synced", "{external}");
        assert_eq!(
            row.referral_id.as_ref(),
            referral["id"].as_str().map(String::from).as_ref()
        );
        assert_eq!(row.etag.as_deref(), referral["eTag"].as_str(), "{external}");
    }
    // The snapshot is the desired document: what we applied, not what the
    // referral holds besides.
    let snapshot = ws.stored("opp-1").unwrap().snapshot.unwrap();
    assert_eq!(snapshot["details"]["dealValue"], 1000);
    assert!(
        snapshot["customerProfile"].get("size").is_none(),
        "{snapshot}"
    );
}

#[test]
fn first_sync_without_create_missing_reports_unresolved_records() {
    let emulator = Emulator::start(&json!([seeded_deal("ref-1", "opp-1", 900)]), &[]);
    let ws = Workspace::new(&emulator, "opportunity", "export.json", "");
    write_deals(&ws, &base_deals(2));

    let run = ws.run(&["sync", "--output", "json"]);
    run.assert_code(1);
    let unresolved = outcome_for(&run, "opp-2");
    assert_eq!(unresolved["action"], "unresolved");
    let error = unresolved["errors"][0].as_str().unwrap();
    assert!(
        error.contains("no referral with externalReferenceId opp-2 is known")
            && error.contains("creation is off (sync.create_missing = false)"),
        "{error}"
    );
    assert!(run.stderr().contains("unresolved 1"), "{}", run.stderr());
    // The other record was still adopted; nothing was created.
    assert_eq!(outcome_for(&run, "opp-1")["action"], "update");
    assert_eq!(emulator.referral("ref-1")["details"]["dealValue"], 1000);
    assert!(emulator.requests_with_method("POST").is_empty());
    assert_eq!(emulator.referrals().len(), 1);

    let row = ws.stored("opp-2").unwrap();
    assert_eq!(row.referral_id, None);
    assert_eq!(row.snapshot, None);
    assert!(
        row.last_error
            .as_deref()
            .is_some_and(|e| e.contains("sync.create_missing = false")),
        "{row:?}"
    );
}

// ---------------------------------------------------------------------------
// 2. Minimal patches with If-Match.

#[test]
fn an_edited_export_sends_only_the_minimal_patches_under_the_stored_etags() {
    let (emulator, ws) = adopted(3, |_| {});
    let stored: Vec<StoredRow> = (1..=3)
        .map(|i| ws.stored(&external_id(i)).unwrap())
        .collect();

    let mut deals = base_deals(3);
    deals[0] = open_deal("opp-1", 1500);
    // Won: statecode 1, status reason 3.
    deals[1] = opportunity("opp-2", &title("opp-2"), 2000.0, 1, 3);
    write_deals(&ws, &deals);

    let run = ws.run(&["sync", "--output", "json"]);
    run.assert_code(0);
    let patches = emulator.requests_with_method("PATCH");
    assert_eq!(patches.len(), 2, "{patches:?}");

    let deal_value = requests_to(&emulator, "PATCH", "ref-1");
    assert_eq!(
        deal_value[0]["body"],
        json!([replace("/details/dealValue", json!(1500))])
    );
    assert_eq!(
        deal_value[0]["if_match"].as_str(),
        stored[0].etag.as_deref()
    );

    let won = requests_to(&emulator, "PATCH", "ref-2");
    assert_eq!(
        won[0]["body"],
        json!([
            replace("/status", json!("Closed")),
            replace("/substatus", json!("Won")),
        ])
    );
    assert_eq!(won[0]["if_match"].as_str(), stored[1].etag.as_deref());
    assert_eq!(outcome_for(&run, "opp-2")["patch"], won[0]["body"]);
    // An unchanged record is not even planned.
    assert_eq!(run.json_lines().len(), 2, "{}", run.stdout());

    let first = emulator.referral("ref-1");
    assert_eq!(first["details"]["dealValue"], 1500);
    assert_eq!(first["customerProfile"]["size"], "51to500employees");
    let second = emulator.referral("ref-2");
    assert_eq!(
        (&second["status"], &second["substatus"]),
        (&json!("Closed"), &json!("Won"))
    );

    // The store advanced to what the service acknowledged.
    for (external, referral) in [("opp-1", &first), ("opp-2", &second)] {
        let row = ws.stored(external).unwrap();
        assert_eq!(row.etag.as_deref(), referral["eTag"].as_str());
        assert_eq!(row.state, "synced");
    }
    assert_eq!(
        ws.stored("opp-1").unwrap().snapshot.unwrap()["details"]["dealValue"],
        1500
    );
    assert_eq!(ws.stored("opp-3").unwrap(), stored[2]);

    // And a second pass has nothing left to send.
    emulator.clear_requests();
    ws.run(&["sync"]).assert_code(0);
    assert_eq!(writes(&emulator), Vec::<Value>::new());
}

/// A lead export whose mapping adds a second customer contact from three
/// custom columns.
const SECOND_CONTACT_MAPPING: &str = r#"
[mapping.fields."customerProfile.team[1].firstName"]
from = "new_contact2_first"
type = "text"
[mapping.fields."customerProfile.team[1].lastName"]
from = "new_contact2_last"
type = "text"
[mapping.fields."customerProfile.team[1].email"]
from = "new_contact2_email"
type = "email"
"#;

const LEAD_HEADER: &str = "leadid,subject,firstname,lastname,companyname,emailaddress1,estimatedamount,estimatedclosedate,description,statecode,statuscode,new_contact2_first,new_contact2_last,new_contact2_email";

fn lead_csv(second_contact: bool) -> String {
    let second = if second_contact {
        "Raj,Patel,raj.patel@adatum.example"
    } else {
        ",,"
    };
    format!(
        "{LEAD_HEADER}\nL-1,Adatum cloud migration,Sue,Smith,Adatum,sue.smith@adatum.example,\"$75,000.00\",12/31/2024,Forty VMs,0,1,{second}\n"
    )
}

/// A lead referral whose customer team holds Sue as the CRM has her.
fn seeded_lead(sue: Value) -> Value {
    json!([{
        "id": "ref-L1",
        "externalReferenceId": "L-1",
        "name": "Adatum cloud migration",
        "status": "New",
        "substatus": "Received",
        "type": "Independent",
        "qualification": "MarketingQualified",
        "customerProfile": {
            "name": "Adatum",
            "size": "1to50employees",
            "team": [sue],
        },
        "consent": {"consentToToShareInfoWithOthers": false, "consentToContact": true},
        "details": {
            "notes": "Forty VMs",
            "dealValue": 75000,
            "currency": "USD",
            "closingDateTime": "2024-12-31T00:00:00Z",
        },
    }])
}

fn sue() -> Value {
    json!({"email": "sue.smith@adatum.example", "firstName": "Sue", "lastName": "Smith"})
}

/// [`seeded_lead`], adopted without a write; the journal is cleared.
fn adopted_lead() -> (Emulator, Workspace) {
    let emulator = Emulator::start(&seeded_lead(sue()), &[]);
    let ws = Workspace::new(&emulator, "lead", "leads.csv", SECOND_CONTACT_MAPPING);
    ws.write_export(&lead_csv(false));
    ws.run(&["sync"]).assert_code(0);
    assert_eq!(writes(&emulator), Vec::<Value>::new(), "adoption wrote");
    emulator.clear_requests();
    (emulator, ws)
}

fn raj() -> Value {
    json!({"email": "raj.patel@adatum.example", "firstName": "Raj", "lastName": "Patel"})
}

#[test]
fn a_new_team_member_is_one_append() {
    let (emulator, ws) = adopted_lead();
    let before = ws.stored("L-1").unwrap();
    ws.write_export(&lead_csv(true));

    ws.run(&["sync"]).assert_code(0);
    let patches = emulator.requests_with_method("PATCH");
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(
        patches[0]["body"],
        json!([{"op": "add", "path": "/customerProfile/team/-", "value": raj()}])
    );
    assert_eq!(patches[0]["if_match"].as_str(), before.etag.as_deref());
    let live = emulator.referral("ref-L1");
    assert_eq!(live["customerProfile"]["team"], json!([sue(), raj()]));
    assert_eq!(live["customerProfile"]["size"], "1to50employees");
}

/// `customerProfile.team` is keyed by e-mail: members of its elements the
/// CRM does not map (a seller's `contactPreference`) survive adoption, and a
/// later edit of the contact is one member-level replace.
#[test]
fn adopting_a_customer_team_keeps_members_the_crm_does_not_map() {
    let mut sue = sue();
    sue["contactPreference"] = json!({"locale": "en-us", "disableNotifications": false});
    let emulator = Emulator::start(&seeded_lead(sue.clone()), &[]);
    let ws = Workspace::new(&emulator, "lead", "leads.csv", SECOND_CONTACT_MAPPING);
    ws.write_export(&lead_csv(false));
    ws.run(&["sync"]).assert_code(0);
    assert_eq!(writes(&emulator), Vec::<Value>::new());
    assert_eq!(
        emulator.referral("ref-L1")["customerProfile"]["team"],
        json!([sue])
    );

    // The CRM then edits Sue: one replace of her last name, at her
    // position in Partner Center; nothing else of hers is written.
    ws.write_export(&lead_csv(false).replace(",Sue,Smith,", ",Sue,Smith-Jones,"));
    ws.run(&["sync"]).assert_code(0);
    let patches = emulator.requests_with_method("PATCH");
    assert_eq!(patches.len(), 1, "{patches:?}");
    let mut edited = sue.clone();
    edited["lastName"] = json!("Smith-Jones");
    assert_eq!(
        patches[0]["body"],
        json!([{"op": "replace", "path": "/customerProfile/team/0/lastName", "value": "Smith-Jones"}])
    );
    assert_eq!(
        emulator.referral("ref-L1")["customerProfile"]["team"],
        json!([edited])
    );
}

// ---------------------------------------------------------------------------
// 3. Concurrent edits in Partner Center: 412, three-way merge, conflicts.

#[test]
fn partner_center_edits_survive_a_412_round_while_the_crm_change_lands() {
    let (emulator, ws) = adopted(1, |_| {});
    let before = ws.stored("opp-1").unwrap();
    let edited = emulator.seller_edit(
        "ref-1",
        json!([
            // Not mapped at all.
            replace("/customerProfile/size", json!("Morethan500employees")),
            // Mapped, but the CRM does not change it.
            replace("/details/notes", json!("Seller: call back in May")),
        ]),
    );
    let mut deals = base_deals(1);
    deals[0] = open_deal("opp-1", 1500);
    write_deals(&ws, &deals);

    let run = ws.run(&["sync", "--output", "json"]);
    run.assert_code(0);
    assert_eq!(
        exchanges(&emulator),
        [
            ("PATCH".to_owned(), 412),
            ("GET".to_owned(), 200),
            ("PATCH".to_owned(), 200)
        ]
    );
    let patches = emulator.requests_with_method("PATCH");
    let crm_change = json!([replace("/details/dealValue", json!(1500))]);
    assert_eq!(patches[0]["if_match"].as_str(), before.etag.as_deref());
    assert_eq!(patches[0]["body"], crm_change);
    assert_eq!(patches[1]["if_match"], edited["eTag"]);
    assert_eq!(patches[1]["body"], crm_change);

    let live = emulator.referral("ref-1");
    assert_eq!(live["customerProfile"]["size"], "Morethan500employees");
    assert_eq!(live["details"]["notes"], "Seller: call back in May");
    assert_eq!(live["details"]["dealValue"], 1500);

    let outcome = outcome_for(&run, "opp-1");
    assert_eq!(outcome["action"], "update");
    assert_eq!(outcome["patch"], crm_change);
    assert!(
        run.stderr().contains("updated 1, conflicts resolved 1"),
        "{}",
        run.stderr()
    );
    // The merge is logged at the default level; a routine update is not.
    assert!(
        run.stderr()
            .contains("412: the referral changed in Partner Center; merging three ways"),
        "{}",
        run.stderr()
    );
    assert!(
        !run.stderr().contains("referral updated"),
        "{}",
        run.stderr()
    );
    assert!(outcome.get("conflicts").is_none(), "{outcome}");
    let row = ws.stored("opp-1").unwrap();
    assert_eq!(row.state, "synced");
    assert_eq!(row.etag.as_deref(), live["eTag"].as_str());

    // The seller's notes stay; the next cycle sends nothing.
    emulator.clear_requests();
    ws.run(&["sync"]).assert_code(0);
    assert_eq!(writes(&emulator), Vec::<Value>::new());
    assert_eq!(
        emulator.referral("ref-1")["details"]["notes"],
        "Seller: call back in May"
    );
}

#[test]
fn after_a_204_no_etag_is_kept_and_the_next_change_is_merged_against_the_live_referral() {
    let (emulator, ws) = adopted(1, |_| {});
    // The service answers writes 204 No Content, ignoring `Prefer`.
    emulator.add_faults(json!({"method": "PATCH", "kind": "ignore_prefer", "times": 0}));
    let mut deals = base_deals(1);
    deals[0] = open_deal("opp-1", 1500);
    write_deals(&ws, &deals);
    ws.run(&["sync"]).assert_code(0);
    assert_eq!(exchanges(&emulator), [("PATCH".to_owned(), 204)]);
    let row = ws.stored("opp-1").unwrap();
    assert_eq!(row.state, "synced");
    // A 204 carries the referral's new state in no body: no eTag is kept,
    // rather than one read later that could cover someone else's edit.
    assert_eq!(row.etag, None);
    assert_eq!(emulator.referral("ref-1")["details"]["dealValue"], 1500);

    // A seller edits the referral, then the CRM changes the deal again.
    let edited = emulator.seller_edit(
        "ref-1",
        json!([
            replace("/customerProfile/size", json!("Morethan500employees")),
            replace("/details/notes", json!("Seller: call back in May")),
        ]),
    );
    deals[0] = open_deal("opp-1", 2500);
    write_deals(&ws, &deals);
    emulator.clear_requests();
    ws.run(&["sync"]).assert_code(0);
    // Nothing is sent blind: the live referral is read first, the change is
    // merged against it and sent under its eTag, and the seller's edits stay.
    assert_eq!(
        exchanges(&emulator),
        [("GET".to_owned(), 200), ("PATCH".to_owned(), 204)]
    );
    let patches = emulator.requests_with_method("PATCH");
    assert_eq!(patches[0]["if_match"], edited["eTag"]);
    assert_eq!(
        patches[0]["body"],
        json!([replace("/details/dealValue", json!(2500))])
    );
    let live = emulator.referral("ref-1");
    assert_eq!(live["details"]["dealValue"], 2500);
    assert_eq!(live["details"]["notes"], "Seller: call back in May");
    assert_eq!(live["customerProfile"]["size"], "Morethan500employees");
    assert_eq!(ws.stored("opp-1").unwrap().etag, None);

    // Once writes are answered with the referral again, its eTag is kept
    // and the change after that goes out under it alone.
    emulator.clear_faults();
    for (value, expected) in [
        (
            3500,
            vec![("GET".to_owned(), 200), ("PATCH".to_owned(), 200)],
        ),
        (4500, vec![("PATCH".to_owned(), 200)]),
    ] {
        deals[0] = open_deal("opp-1", value);
        write_deals(&ws, &deals);
        emulator.clear_requests();
        ws.run(&["sync"]).assert_code(0);
        assert_eq!(exchanges(&emulator), expected, "deal value {value}");
        let live = emulator.referral("ref-1");
        assert_eq!(live["details"]["dealValue"], value);
        assert_eq!(
            ws.stored("opp-1").unwrap().etag.as_deref(),
            live["eTag"].as_str()
        );
    }
}

/// How a conflict on `/details/dealValue` ends under a `conflict` policy.
struct PolicyCase {
    policy: Option<&'static str>,
    resolution: &'static str,
    winner: &'static str,
    live_value: i64,
    second_patch: Value,
}

fn policy_cases() -> [PolicyCase; 2] {
    [
        PolicyCase {
            policy: None,
            resolution: "crm-wins",
            winner: "crm",
            live_value: 1500,
            second_patch: json!([
                replace("/details/dealValue", json!(1500)),
                replace("/name", json!("Renamed in the CRM")),
            ]),
        },
        PolicyCase {
            policy: Some("remote-wins"),
            resolution: "remote-wins",
            winner: "partner-center",
            live_value: 99999,
            second_patch: json!([replace("/name", json!("Renamed in the CRM"))]),
        },
    ]
}

/// One adopted deal whose value a seller and the CRM both changed (and the
/// CRM its name), synced under the case's policy: the shared set-up of the
/// conflict policy tests.
fn changed_on_both_sides(case: &PolicyCase) -> (Emulator, Workspace, Run) {
    changed_on_both_sides_with(|ws| {
        if let Some(policy) = case.policy {
            ws.edit_config(|text| format!("{text}\n[sync]\nconflict = \"{policy}\"\n"));
        }
    })
}

/// The same, with the workspace configured by `configure`.
fn changed_on_both_sides_with(configure: impl FnOnce(&Workspace)) -> (Emulator, Workspace, Run) {
    let (emulator, ws) = adopted(1, configure);
    emulator.seller_edit(
        "ref-1",
        json!([replace("/details/dealValue", json!(99999))]),
    );
    let mut deal = open_deal("opp-1", 1500);
    deal["name"] = json!("Renamed in the CRM");
    write_deals(&ws, &[deal]);
    let run = ws.run(&["sync", "--output", "json"]);
    run.assert_code(0);
    (emulator, ws, run)
}

#[test]
fn a_field_changed_on_both_sides_is_merged_after_the_412_as_the_conflict_policy_says() {
    for case in policy_cases() {
        let (emulator, _ws, _run) = changed_on_both_sides(&case);
        let patches = emulator.requests_with_method("PATCH");
        assert_eq!(patches.len(), 2, "{}: {patches:?}", case.resolution);
        assert_eq!(patches[0]["status"], 412);
        assert_eq!(patches[1]["body"], case.second_patch, "{}", case.resolution);
        let live = emulator.referral("ref-1");
        assert_eq!(
            live["details"]["dealValue"], case.live_value,
            "{}",
            case.resolution
        );
        assert_eq!(live["name"], "Renamed in the CRM");
    }
}

#[test]
fn a_conflict_is_in_the_record_outcome_and_logged_with_its_winner() {
    for case in policy_cases() {
        let (_emulator, _ws, run) = changed_on_both_sides(&case);
        let outcome = outcome_for(&run, "opp-1");
        assert_eq!(
            outcome["conflicts"],
            json!([{
                "path": "/details/dealValue",
                "snapshot": 1000,
                "live": 99999,
                "desired": 1500,
                "resolution": case.resolution,
            }]),
            "{}",
            case.resolution
        );
        let log = run.stderr();
        let logged = log.lines().any(|line| {
            line.contains("conflict: changed in the CRM and in Partner Center")
                && line.contains("path=/details/dealValue")
                && line.contains(&format!("winner=\"{}\"", case.winner))
        });
        assert!(logged, "{}: {log}", case.resolution);
    }
}

#[test]
fn after_a_conflict_the_next_cycle_sends_nothing_whoever_won() {
    for case in policy_cases() {
        let (emulator, ws, _run) = changed_on_both_sides(&case);
        emulator.clear_requests();
        ws.run(&["sync"]).assert_code(0);
        assert_eq!(
            writes(&emulator),
            Vec::<Value>::new(),
            "{}",
            case.resolution
        );
    }
}

// ---------------------------------------------------------------------------
// 4. Throttling.

#[test]
fn retry_after_on_a_429_holds_every_request_until_the_time() {
    // `early`: requests the other workers may start before the client
    // has read the 429 (one on the way, one started in the moment the
    // answer is on its way back); none may start once it has paused.
    for (concurrency, early) in [(1usize, 0usize), (2, 2)] {
        let (emulator, ws) = adopted(4, |ws| {
            ws.set_in_table("api", &format!("concurrency = {concurrency}"));
            ws.edit_config(|text| format!("{text}\n[log]\nformat = \"json\"\n"));
        });
        emulator.add_faults(
            json!({"method": "PATCH", "kind": "status", "status": 429, "retry_after": 1}),
        );
        let deals: Vec<Value> = (1..=4)
            .map(|i| open_deal(&external_id(i), base_value(i) + 1))
            .collect();
        write_deals(&ws, &deals);

        let run = ws.run(&["sync"]);
        run.assert_code(0);
        // When the client paused every worker, on the clock the emulator
        // stamps requests with.
        let paused_ms = run
            .stderr()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| {
                line["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("pausing every request"))
            })
            .and_then(|line| chrono::DateTime::parse_from_rfc3339(line["timestamp"].as_str()?).ok())
            .map(|at| at.timestamp_millis() as u64)
            .unwrap_or_else(|| panic!("no pause logged: {}", run.stderr()));
        let journal = emulator.requests();
        let throttled: Vec<&Value> = journal.iter().filter(|r| r["status"] == 429).collect();
        assert_eq!(throttled.len(), 1, "{journal:?}");
        let throttled = throttled[0];
        let at = throttled["at_ms"].as_u64().unwrap();
        let later: Vec<&Value> = journal
            .iter()
            .filter(|r| r["seq"].as_u64() > throttled["seq"].as_u64())
            .collect();
        let too_soon: Vec<&&Value> = later
            .iter()
            .filter(|r| r["at_ms"].as_u64().unwrap() < at + 1000)
            .collect();
        assert!(
            too_soon.len() <= early,
            "concurrency {concurrency}: sent within Retry-After: {too_soon:?}"
        );
        // Each of them reached the emulator before the client paused (a
        // millisecond of rounding either way).
        for request in &too_soon {
            assert!(
                request["at_ms"].as_u64().unwrap() <= paused_ms + 1,
                "concurrency {concurrency}: sent after the pause at {paused_ms}: {request:?}"
            );
        }
        // The throttled PATCH itself went again, as it was, after the time.
        let again: Vec<&&Value> = later
            .iter()
            .filter(|r| r["path"] == throttled["path"] && r["method"] == "PATCH")
            .collect();
        assert_eq!(again.len(), 1, "{journal:?}");
        assert!(again[0]["at_ms"].as_u64().unwrap() >= at + 1000);
        assert_eq!(again[0]["status"], 200);
        assert_eq!(again[0]["body"], throttled["body"]);
        assert_eq!(again[0]["if_match"], throttled["if_match"]);
        assert_eq!(emulator.requests_with_method("PATCH").len(), 5);
        for i in 1..=4 {
            assert_eq!(
                emulator.referral(&referral_id(i))["details"]["dealValue"],
                base_value(i) + 1
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 5. A reset after the service applied a PATCH.

#[test]
fn a_reset_after_an_applied_append_does_not_duplicate_the_team_member() {
    let (emulator, ws) = adopted_lead();
    emulator.add_faults(json!({"method": "PATCH", "kind": "reset_after"}));
    ws.write_export(&lead_csv(true));

    let run = ws.run(&["sync", "--output", "json"]);
    run.assert_code(0);
    let patches = emulator.requests_with_method("PATCH");
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(patches[0]["outcome"], "fault:reset_after");
    // Applied once, not appended again after the lost answer.
    let live = emulator.referral("ref-L1");
    assert_eq!(live["customerProfile"]["team"], json!([sue(), raj()]));
    assert_eq!(
        exchanges(&emulator),
        [("PATCH".to_owned(), 200), ("GET".to_owned(), 200)]
    );

    // The write was ours even though its answer was lost.
    let outcome = outcome_for(&run, "L-1");
    assert_eq!(outcome["action"], "update", "{outcome}");
    assert_eq!(outcome["patch"], patches[0]["body"]);
    let row = ws.stored("L-1").unwrap();
    assert_eq!(row.state, "synced");
    assert_eq!(row.etag.as_deref(), live["eTag"].as_str());
    assert_eq!(row.snapshot.unwrap()["customerProfile"]["team"][1], raj());

    emulator.clear_requests();
    ws.run(&["sync"]).assert_code(0);
    assert_eq!(writes(&emulator), Vec::<Value>::new());
}

// ---------------------------------------------------------------------------
// 6. A permanent refusal fails one record only.

/// Three adopted deals changed, the PATCH of the second refused for good
/// with a 400, synced once: the shared set-up of the held-record tests.
struct HeldBy400 {
    emulator: Emulator,
    ws: Workspace,
    /// The refused record's row before the cycle.
    before: StoredRow,
    run: Run,
}

fn held_by_a_permanent_400() -> HeldBy400 {
    let (emulator, ws) = adopted(3, |_| {});
    let before = ws.stored("opp-2").unwrap();
    emulator.add_faults(json!({
        "method": "PATCH",
        "path_contains": "/referrals/ref-2",
        "times": 0,
        "kind": "status",
        "status": 400,
        "body": {"error": {
            "code": "InvalidDealValue",
            "message": "dealValue exceeds the partner's limit",
            "target": "details.dealValue",
        }},
    }));
    let deals: Vec<Value> = (1..=3)
        .map(|i| open_deal(&external_id(i), base_value(i) + 5))
        .collect();
    write_deals(&ws, &deals);
    let run = ws.run(&["sync", "--output", "json"]);
    HeldBy400 {
        emulator,
        ws,
        before,
        run,
    }
}

/// The error stored and shown for the held record.
fn held_error() -> String {
    let refusal = "PATCH /v1.0/engagements/referrals/ref-2: HTTP 400 rejected: InvalidDealValue: dealValue exceeds the partner's limit (target: details.dealValue)";
    format!(
        "held: {refusal}; tried again when the record changes, on a resync or on `referral-sync retry opp-2`"
    )
}

#[test]
fn a_permanent_400_fails_its_record_and_the_summary_counts_it_held() {
    let HeldBy400 { run, .. } = held_by_a_permanent_400();
    run.assert_code(1);
    assert_eq!(outcome_for(&run, "opp-2")["action"], "failed");
    // The summary and the cycle's log line count the held record.
    assert!(
        run.stderr()
            .contains("updated 2, conflicts resolved 0, retried 0, failed 1 (held 1), invalid 0"),
        "{}",
        run.stderr()
    );
    assert!(
        run.stderr()
            .lines()
            .any(|l| l.contains("cycle finished") && l.contains("failed=1 held=1")),
        "{}",
        run.stderr()
    );
    assert!(
        outcome_for(&run, "opp-2")["note"]
            .as_str()
            .unwrap()
            .starts_with("held: not retried until the record changes"),
        "{}",
        run.stdout()
    );
}

#[test]
fn the_other_records_of_a_cycle_with_a_permanent_400_land() {
    let HeldBy400 {
        emulator, ws, run, ..
    } = held_by_a_permanent_400();
    for i in [1, 3] {
        assert_eq!(outcome_for(&run, &external_id(i))["action"], "update");
        assert_eq!(
            emulator.referral(&referral_id(i))["details"]["dealValue"],
            base_value(i) + 5
        );
        assert_eq!(ws.stored(&external_id(i)).unwrap().state, "synced");
    }
}

#[test]
fn a_permanent_400_is_sent_once_and_leaves_the_snapshot_and_etag_as_they_were() {
    let HeldBy400 {
        emulator,
        ws,
        before,
        ..
    } = held_by_a_permanent_400();
    assert_eq!(requests_to(&emulator, "PATCH", "ref-2").len(), 1);
    assert_eq!(emulator.referral("ref-2")["details"]["dealValue"], 2000);
    let row = ws.stored("opp-2").unwrap();
    assert_eq!(row.snapshot, before.snapshot);
    assert_eq!(row.etag, before.etag);
    assert_eq!(row.last_error.as_deref(), Some(held_error().as_str()));
}

#[test]
fn status_lists_the_held_record_as_the_one_problem() {
    let HeldBy400 { ws, .. } = held_by_a_permanent_400();
    let status = ws.status();
    assert_eq!(status["counts"]["held"], 1);
    assert_eq!(status["counts"]["synced"], 2);
    let problems = status["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{status}");
    assert_eq!(problems[0]["external_id"], "opp-2");
    assert_eq!(problems[0]["referral_id"], "ref-2");
    assert_eq!(problems[0]["state"], "held");
    assert_eq!(problems[0]["held"]["status"], 400);
    assert_eq!(problems[0]["held"]["code"], "InvalidDealValue");
    assert_eq!(problems[0]["last_error"], json!(held_error()));
}

#[test]
fn a_held_record_left_unchanged_is_not_sent_again() {
    let HeldBy400 { emulator, ws, .. } = held_by_a_permanent_400();
    emulator.clear_faults();
    emulator.clear_requests();
    ws.run(&["sync"]).assert_code(0);
    assert_eq!(writes(&emulator), Vec::<Value>::new());
}

#[test]
fn retry_releases_a_held_record_and_the_next_sync_sends_its_patch_once_under_the_same_etag() {
    let HeldBy400 {
        emulator,
        ws,
        before,
        ..
    } = held_by_a_permanent_400();
    emulator.clear_faults();
    emulator.clear_requests();
    let retry = ws.run(&["retry", "opp-2", "opp-9"]);
    retry.assert_code(1);
    assert!(
        retry.stdout().contains("released opp-2"),
        "{}",
        retry.stdout()
    );
    assert!(
        retry.stderr().contains("record opp-9 is not held"),
        "{}",
        retry.stderr()
    );
    ws.run(&["sync"]).assert_code(0);
    let writes = writes(&emulator);
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0]["path"], "/v1.0/engagements/referrals/ref-2");
    assert_eq!(
        writes[0]["body"],
        json!([replace("/details/dealValue", json!(2005))])
    );
    assert_eq!(writes[0]["if_match"].as_str(), before.etag.as_deref());
    let row = ws.stored("opp-2").unwrap();
    assert_eq!(row.state, "synced");
    assert_eq!(
        row.etag.as_deref(),
        emulator.referral("ref-2")["eTag"].as_str()
    );
    assert_eq!(ws.status()["problems"], json!([]));
}

// ---------------------------------------------------------------------------
// 7. Nothing unacknowledged reaches the store.

#[test]
fn a_write_the_service_never_acknowledged_leaves_the_store_as_it_was() {
    let faults = [
        json!({"method": "PATCH", "path_contains": "/referrals/ref-1", "times": 0, "kind": "reset_before"}),
        json!({"method": "PATCH", "path_contains": "/referrals/ref-1", "times": 0, "kind": "status", "status": 500}),
    ];
    for fault in faults {
        let (emulator, ws) = adopted(2, |_| {});
        let before = ws.stored("opp-1").unwrap();
        let live_before = emulator.referral("ref-1");
        emulator.add_faults(fault.clone());
        write_deals(&ws, &[open_deal("opp-1", 1111), open_deal("opp-2", 2222)]);

        let run = ws.run(&["sync", "--output", "json"]);
        run.assert_code(1);
        let attempts = requests_to(&emulator, "PATCH", "ref-1");
        assert!(attempts.len() > 1, "{fault}: not retried: {attempts:?}");
        for attempt in &attempts {
            assert_eq!(
                attempt["body"],
                json!([replace("/details/dealValue", json!(1111))]),
                "{fault}"
            );
            assert_eq!(
                attempt["if_match"].as_str(),
                before.etag.as_deref(),
                "{fault}"
            );
        }
        assert_eq!(emulator.referral("ref-1"), live_before, "{fault}");
        let row = ws.stored("opp-1").unwrap();
        assert!(
            ["failed", "pending"].contains(&row.state.as_str()),
            "{fault}: {row:?}"
        );
        assert_eq!(row.snapshot, before.snapshot, "{fault}");
        assert_eq!(row.etag, before.etag, "{fault}");
        assert_eq!(row.referral_id, before.referral_id, "{fault}");
        let outcome = outcome_for(&run, "opp-1");
        assert_eq!(outcome["action"], "failed", "{fault}");
        // The other record went through meanwhile.
        assert_eq!(emulator.referral("ref-2")["details"]["dealValue"], 2222);

        // Without the fault: one PATCH, the same ops, and the record converges.
        emulator.clear_faults();
        emulator.clear_requests();
        ws.run(&["sync"]).assert_code(0);
        let writes = writes(&emulator);
        assert_eq!(writes.len(), 1, "{fault}: {writes:?}");
        assert_eq!(writes[0]["body"], attempts[0]["body"], "{fault}");
        assert_eq!(writes[0]["if_match"].as_str(), before.etag.as_deref());
        let live = emulator.referral("ref-1");
        assert_eq!(live["details"]["dealValue"], 1111);
        let row = ws.stored("opp-1").unwrap();
        assert_eq!(row.state, "synced");
        assert_eq!(row.etag.as_deref(), live["eTag"].as_str());
    }
}

// ---------------------------------------------------------------------------
// 8. PUT, the obsolete full update.

#[test]
fn put_sends_the_whole_referral_without_links_under_if_match() {
    let (emulator, ws) = adopted(1, |ws| ws.set_in_table("api", "update_method = \"put\""));
    // An unmapped member the seller changed since: the PUT must carry it.
    let edited = emulator.seller_edit(
        "ref-1",
        json!([replace(
            "/customerProfile/size",
            json!("Morethan500employees")
        )]),
    );
    write_deals(&ws, &[open_deal("opp-1", 1234)]);

    ws.run(&["sync"]).assert_code(0);
    // Read, then replace under the eTag just read.
    assert_eq!(
        exchanges(&emulator),
        [("GET".to_owned(), 200), ("PUT".to_owned(), 200)]
    );
    let put = &emulator.requests_with_method("PUT")[0];
    assert_eq!(put["path"], "/v1.0/engagements/referrals/ref-1");
    assert_eq!(put["if_match"], edited["eTag"]);
    let body = put["body"].as_object().unwrap();
    for member in ["links", "eTag", "createdDateTime", "updatedDateTime"] {
        assert!(!body.contains_key(member), "{member} sent: {put}");
    }
    assert_eq!(body["details"]["dealValue"], 1234);
    assert_eq!(body["customerProfile"]["size"], "Morethan500employees");
    assert_eq!(body["customerProfile"]["team"][0]["firstName"], "Sue");

    let live = emulator.referral("ref-1");
    assert_eq!(live["details"]["dealValue"], 1234);
    assert_eq!(live["customerProfile"]["size"], "Morethan500employees");
    assert_eq!(live["consent"]["consentToContact"], true);
    let row = ws.stored("opp-1").unwrap();
    assert_eq!(row.state, "synced");
    assert_eq!(row.etag.as_deref(), live["eTag"].as_str());

    emulator.clear_requests();
    ws.run(&["sync"]).assert_code(0);
    assert_eq!(writes(&emulator), Vec::<Value>::new());
}

#[test]
fn put_keeps_a_remote_win_on_a_field_changed_on_both_sides() {
    let (emulator, _ws, run) = changed_on_both_sides_with(|ws| {
        ws.set_in_table("api", "update_method = \"put\"");
        ws.edit_config(|text| format!("{text}\n[sync]\nconflict = \"remote-wins\"\n"));
    });
    // The read before the PUT shows the referral changed since the
    // snapshot: the record is merged three ways before anything is sent.
    let puts = emulator.requests_with_method("PUT");
    assert_eq!(puts.len(), 1, "{puts:?}");
    assert_eq!(puts[0]["body"]["details"]["dealValue"], 99999);
    assert_eq!(puts[0]["body"]["name"], "Renamed in the CRM");
    let live = emulator.referral("ref-1");
    assert_eq!(live["details"]["dealValue"], 99999, "{}", run.stderr());
    assert_eq!(live["name"], "Renamed in the CRM");
    let outcome = outcome_for(&run, "opp-1");
    assert_eq!(
        outcome["patch"],
        json!([replace("/name", json!("Renamed in the CRM"))])
    );
    assert_eq!(outcome["conflicts"][0]["path"], "/details/dealValue");
    assert_eq!(outcome["conflicts"][0]["resolution"], "remote-wins");
    assert!(
        run.stderr().contains("winner=\"partner-center\""),
        "{}",
        run.stderr()
    );
}

// ---------------------------------------------------------------------------
// 9. Tokens from a refresh token.

const INITIAL_REFRESH_TOKEN: &str = "initial-refresh-token-4d1c9e";

fn use_refresh_token(emulator: &Emulator, ws: &Workspace) -> std::path::PathBuf {
    let refresh_file = ws.dir.path().join("refresh-token");
    std::fs::write(&refresh_file, INITIAL_REFRESH_TOKEN).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&refresh_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let auth = format!(
        "[auth]\nrefresh_token_file = \"{}\"\nclient_id = \"0b7d5a40-2f4e-4c57-9a55-0f0e2c6b1d11\"\ntoken_url = \"{}\"\n",
        refresh_file.display(),
        emulator.token_url("contoso.onmicrosoft.com"),
    );
    ws.edit_config(|text| {
        let start = text.find("[auth]\n").unwrap();
        let end = start + text[start..].find("\n\n").unwrap();
        format!("{}{auth}{}", &text[..start], &text[end..])
    });
    refresh_file
}

fn grants(emulator: &Emulator) -> Vec<Value> {
    emulator
        .requests_with_method("POST")
        .into_iter()
        .filter(|r| r["path"] == "/contoso.onmicrosoft.com/oauth2/token")
        .collect()
}

fn assert_no_token_in(output: &str, known: &[String]) {
    for token in known {
        assert!(
            !output.contains(token.as_str()),
            "a token was printed: {token}"
        );
    }
    for prefix in ["emulator-access-", "emulator-refresh-", "Bearer "] {
        assert!(!output.contains(prefix), "{prefix} printed:\n{output}");
    }
}

/// Traced cycles on the refresh-token flow over two deals, one request at
/// a time so that the tokens can expire between two: the shared set-up of
/// the token tests. Every refresh token seen is kept, for the test that
/// looks for them in the output.
struct TokenCycles {
    emulator: Emulator,
    ws: Workspace,
    refresh_file: std::path::PathBuf,
    outputs: Vec<std::process::Output>,
    known_tokens: Vec<String>,
}

impl TokenCycles {
    fn start() -> TokenCycles {
        let emulator = Emulator::start(
            &json!([
                seeded_deal("ref-1", "opp-1", 1000),
                seeded_deal("ref-2", "opp-2", 2000),
            ]),
            &["--refresh-token", INITIAL_REFRESH_TOKEN],
        );
        let ws = Workspace::new(&emulator, "opportunity", "export.json", "");
        ws.set_in_table("api", "concurrency = 1");
        let refresh_file = use_refresh_token(&emulator, &ws);
        write_deals(&ws, &base_deals(2));
        TokenCycles {
            emulator,
            ws,
            refresh_file,
            outputs: Vec::new(),
            known_tokens: vec![INITIAL_REFRESH_TOKEN.to_owned()],
        }
    }

    fn traced_sync(&self) -> std::process::Command {
        let mut command = self.ws.command(&["sync"]);
        command.env("RUST_LOG", "trace");
        command
    }

    fn refresh_token_on_file(&self) -> String {
        std::fs::read_to_string(&self.refresh_file).unwrap()
    }

    fn finished(&mut self, output: std::process::Output) {
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        self.outputs.push(output);
        self.known_tokens.push(self.refresh_token_on_file());
        for grant in grants(&self.emulator) {
            if let Some(token) = grant["body"]["refresh_token"].as_str() {
                self.known_tokens.push(token.to_owned());
            }
        }
    }

    /// The initial refresh token exchanged for the first access token.
    fn first_cycle(&mut self) {
        let output = self.traced_sync().output().unwrap();
        self.finished(output);
    }

    /// The access token expires while the cycle's first PATCH is held.
    fn cycle_expiring_mid_patch(&mut self) {
        self.emulator.clear_requests();
        self.emulator
            .add_faults(json!({"method": "PATCH", "kind": "delay", "ms": 1000}));
        write_deals(
            &self.ws,
            &[open_deal("opp-1", 1001), open_deal("opp-2", 2002)],
        );
        let cycle = self
            .traced_sync()
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_until(
            Duration::from_secs(10),
            "the first PATCH to be held",
            || {
                self.emulator
                    .requests_with_method("PATCH")
                    .iter()
                    .any(|r| r["outcome"] == "in_progress")
            },
        );
        self.emulator.expire_tokens();
        let output = cycle.wait_with_output().unwrap();
        self.finished(output);
    }

    /// The access token expired before the cycle starts.
    fn cycle_after_expiry(&mut self) {
        self.emulator.clear_faults();
        self.emulator.clear_requests();
        self.emulator.expire_tokens();
        write_deals(
            &self.ws,
            &[open_deal("opp-1", 1003), open_deal("opp-2", 2002)],
        );
        let output = self.traced_sync().output().unwrap();
        self.finished(output);
    }
}

#[test]
fn the_first_cycle_exchanges_the_configured_refresh_token_once_and_authorizes_every_call() {
    let mut cycles = TokenCycles::start();
    cycles.first_cycle();
    let first_grants = grants(&cycles.emulator);
    assert_eq!(first_grants.len(), 1, "{first_grants:?}");
    assert_eq!(first_grants[0]["body"]["grant_type"], "refresh_token");
    assert_eq!(
        first_grants[0]["body"]["refresh_token"],
        INITIAL_REFRESH_TOKEN
    );
    let api: Vec<Value> = cycles
        .emulator
        .requests()
        .into_iter()
        .filter(|r| r["path"].as_str().unwrap().starts_with("/v1.0/"))
        .collect();
    assert!(!api.is_empty());
    assert!(api.iter().all(|r| r["authorized"] == true), "{api:?}");
}

#[test]
fn the_rotated_refresh_token_is_written_back_with_mode_0600() {
    let mut cycles = TokenCycles::start();
    cycles.first_cycle();
    let rotated = cycles.refresh_token_on_file();
    assert_ne!(rotated.trim(), INITIAL_REFRESH_TOKEN);
    assert!(rotated.starts_with("emulator-refresh-"), "{rotated}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cycles.refresh_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
}

#[test]
fn a_token_expiring_mid_cycle_is_refreshed_and_the_refused_patch_sent_again() {
    let mut cycles = TokenCycles::start();
    cycles.first_cycle();
    cycles.cycle_expiring_mid_patch();
    let journal = cycles.emulator.requests();
    let steps: Vec<(String, Option<bool>, u64)> = journal
        .iter()
        .map(|r| {
            (
                format!(
                    "{} {}",
                    r["method"].as_str().unwrap(),
                    r["path"].as_str().unwrap()
                ),
                r["authorized"].as_bool(),
                r["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let token_path = "POST /contoso.onmicrosoft.com/oauth2/token".to_owned();
    let patch = |id: &str| format!("PATCH /v1.0/engagements/referrals/{id}");
    assert_eq!(
        steps,
        [
            (token_path.clone(), None, 200),
            (patch("ref-1"), Some(true), 200),
            (patch("ref-2"), Some(false), 401),
            (token_path, None, 200),
            (patch("ref-2"), Some(true), 200),
        ],
        "{journal:?}"
    );
    assert_eq!(
        cycles.emulator.referral("ref-2")["details"]["dealValue"],
        2002
    );
}

#[test]
fn a_refresh_mid_cycle_exchanges_the_token_on_file_and_keeps_the_one_it_rotated_to() {
    let mut cycles = TokenCycles::start();
    cycles.first_cycle();
    let rotated = cycles.refresh_token_on_file();
    cycles.cycle_expiring_mid_patch();
    let second_grants = grants(&cycles.emulator);
    assert_eq!(second_grants[0]["body"]["refresh_token"], rotated.trim());
    let newest = cycles.refresh_token_on_file();
    let used: Vec<&str> = second_grants
        .iter()
        .map(|g| g["body"]["refresh_token"].as_str().unwrap())
        .collect();
    assert_ne!(used[0], used[1], "the refresh token was not rotated");
    assert!(!used.contains(&newest.trim()), "{newest} {used:?}");
}

#[test]
fn a_token_expired_between_cycles_is_refreshed_with_the_newest_refresh_token() {
    let mut cycles = TokenCycles::start();
    cycles.first_cycle();
    cycles.cycle_expiring_mid_patch();
    let newest = cycles.refresh_token_on_file();
    cycles.cycle_after_expiry();
    let third_grants = grants(&cycles.emulator);
    assert_eq!(third_grants.len(), 1);
    assert_eq!(third_grants[0]["body"]["refresh_token"], newest.trim());
    assert_eq!(
        cycles.emulator.referral("ref-1")["details"]["dealValue"],
        1003
    );
}

#[test]
fn no_token_is_printed_by_a_traced_cycle() {
    let mut cycles = TokenCycles::start();
    cycles.first_cycle();
    cycles.cycle_expiring_mid_patch();
    cycles.cycle_after_expiry();
    assert_eq!(cycles.outputs.len(), 3);
    for output in &cycles.outputs {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            text.contains("TRACE") || text.contains("DEBUG"),
            "not traced"
        );
        assert_no_token_in(&text, &cycles.known_tokens);
    }
}

// ---------------------------------------------------------------------------
// 10. Dry run.

#[test]
fn a_dry_run_writes_nothing_and_plans_what_the_sync_then_sends() {
    let emulator = Emulator::start(
        &json!([
            seeded_deal("ref-1", "opp-1", 900),
            seeded_deal("ref-2", "opp-2", 2000),
        ]),
        &[],
    );
    let ws = Workspace::new(
        &emulator,
        "opportunity",
        "export.json",
        "[sync]\ncreate_missing = true\n",
    );
    write_deals(&ws, &base_deals(3));

    // On a first run the store is not even created.
    let plan = ws.run(&["sync", "--dry-run", "--output", "json"]);
    plan.assert_code(0);
    assert!(!ws.store.exists(), "the dry run created the store");
    let methods: Vec<String> = emulator
        .requests()
        .iter()
        .map(|r| r["method"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        !methods.is_empty() && methods.iter().all(|m| m == "GET"),
        "{methods:?}"
    );
    emulator.clear_requests();

    let sync = ws.run(&["sync", "--output", "json"]);
    sync.assert_code(0);
    assert_plan_matches_the_sync(&emulator, &plan, &sync);

    // Against an existing store: the file is left byte for byte.
    let mut deals = base_deals(3);
    deals[0] = open_deal("opp-1", 1700);
    deals[2] = opportunity("opp-3", &title("opp-3"), 3000.0, 1, 3);
    deals.push(open_deal("opp-4", 4000));
    write_deals(&ws, &deals);
    let store_before = std::fs::read(&ws.store).unwrap();
    let rows_before: Vec<Option<StoredRow>> = (1..=4).map(|i| ws.stored(&external_id(i))).collect();
    emulator.clear_requests();

    let plan = ws.run(&["sync", "--dry-run", "--output", "json"]);
    plan.assert_code(0);
    assert!(
        emulator.requests().iter().all(|r| r["method"] == "GET"),
        "{:?}",
        emulator.requests()
    );
    assert_eq!(std::fs::read(&ws.store).unwrap(), store_before);
    let rows_after: Vec<Option<StoredRow>> = (1..=4).map(|i| ws.stored(&external_id(i))).collect();
    assert_eq!(rows_after, rows_before);
    emulator.clear_requests();

    let sync = ws.run(&["sync", "--output", "json"]);
    sync.assert_code(0);
    assert_plan_matches_the_sync(&emulator, &plan, &sync);
    assert_eq!(emulator.requests_with_method("PATCH").len(), 2);
    assert_eq!(emulator.requests_with_method("POST").len(), 1);
}

/// Every planned record line equals the synced one (referral ids of
/// creations aside), and every planned patch or creation is exactly what
/// reached the emulator.
fn assert_plan_matches_the_sync(emulator: &Emulator, plan: &Run, sync: &Run) {
    let planned = plan.json_lines();
    let synced = sync.json_lines();
    assert_eq!(
        planned.len(),
        synced.len(),
        "{}\n{}",
        plan.stdout(),
        sync.stdout()
    );
    for line in &planned {
        let external = line["externalReferenceId"].as_str().unwrap();
        let done = outcome_for(sync, external);
        assert_eq!(line["action"], done["action"], "{external}");
        assert_eq!(line["patch"], done["patch"], "{external}");
        assert_eq!(line["document"], done["document"], "{external}");
        match line["action"].as_str().unwrap() {
            "update" => {
                let id = done["referralId"].as_str().unwrap();
                assert_eq!(line["referralId"], id, "{external}");
                let sent = requests_to(emulator, "PATCH", id);
                assert_eq!(sent.len(), 1, "{external}: {sent:?}");
                assert_eq!(sent[0]["body"], line["patch"], "{external}");
            }
            "create" => {
                let sent: Vec<Value> = emulator
                    .requests_with_method("POST")
                    .into_iter()
                    .filter(|r| r["body"]["externalReferenceId"] == json!(external))
                    .collect();
                assert_eq!(sent.len(), 1, "{external}");
                assert_eq!(sent[0]["body"], line["document"], "{external}");
            }
            "unchanged" => {}
            other => panic!("{external}: unexpected action {other}"),
        }
    }
}

// ---------------------------------------------------------------------------
// 11. A create whose answer was lost.

#[test]
fn a_create_whose_answer_was_lost_is_not_repeated() {
    let emulator = Emulator::start(&json!([seeded_deal("ref-1", "opp-1", 1000)]), &[]);
    let ws = Workspace::new(
        &emulator,
        "opportunity",
        "export.json",
        "[sync]\ncreate_missing = true\n",
    );
    emulator.add_faults(json!({
        "method": "POST",
        "path_contains": "/engagements/referrals",
        "kind": "reset_after",
    }));
    write_deals(&ws, &base_deals(2));

    let run = ws.run(&["sync", "--output", "json"]);
    run.assert_code(1);
    let outcome = outcome_for(&run, "opp-2");
    assert_eq!(outcome["action"], "failed");
    assert!(
        outcome["errors"][0]
            .as_str()
            .unwrap()
            .contains("outcome unknown"),
        "{outcome}"
    );
    let created = emulator.referral_for("opp-2");
    let row = ws.stored("opp-2").unwrap();
    assert_eq!(row.state, "pending");
    assert_eq!(row.snapshot, None);

    emulator.clear_requests();
    let run = ws.run(&["sync", "--output", "json"]);
    run.assert_code(0);
    assert!(emulator.requests_with_method("POST").is_empty());
    assert_eq!(emulator.referral_for("opp-2")["id"], created["id"]);
    let row = ws.stored("opp-2").unwrap();
    assert_eq!(row.state, "synced");
    assert_eq!(row.referral_id.as_deref(), created["id"].as_str());
    assert_eq!(
        row.etag.as_deref(),
        emulator.referral_for("opp-2")["eTag"].as_str()
    );
    assert_eq!(outcome_for(&run, "opp-2")["action"], "unchanged");
}

// ---------------------------------------------------------------------------
// 12. Concurrency.

#[test]
fn with_concurrency_one_no_two_requests_are_in_flight_at_once() {
    let (emulator, ws) = adopted(4, |ws| ws.set_in_table("api", "concurrency = 1"));
    emulator.add_faults(json!({"method": "PATCH", "kind": "delay", "ms": 150, "times": 0}));
    let deals: Vec<Value> = (1..=4)
        .map(|i| open_deal(&external_id(i), base_value(i) + 7))
        .collect();
    write_deals(&ws, &deals);

    ws.run(&["sync"]).assert_code(0);
    let journal = emulator.requests();
    assert_eq!(journal.len(), 4, "{journal:?}");
    for pair in journal.windows(2) {
        let done = pair[0]["at_ms"].as_u64().unwrap() + pair[0]["duration_ms"].as_u64().unwrap();
        let next = pair[1]["at_ms"].as_u64().unwrap();
        assert!(next >= done, "overlap: {} and {}", pair[0], pair[1]);
    }
}

#[test]
fn one_record_failing_does_not_hold_up_the_others() {
    let (emulator, ws) = adopted(4, |ws| ws.set_in_table("api", "concurrency = 2"));
    emulator.add_faults(json!({
        "method": "PATCH",
        "path_contains": "/referrals/ref-1",
        "times": 0,
        "kind": "status",
        "status": 500,
    }));
    let deals: Vec<Value> = (1..=4)
        .map(|i| open_deal(&external_id(i), base_value(i) + 9))
        .collect();
    write_deals(&ws, &deals);

    let run = ws.run(&["sync", "--output", "json"]);
    run.assert_code(1);
    let failing = requests_to(&emulator, "PATCH", "ref-1");
    assert!(failing.len() > 1, "{failing:?}");
    let last_attempt = failing.last().unwrap()["seq"].as_u64().unwrap();
    for i in 2..=4 {
        let sent = requests_to(&emulator, "PATCH", &referral_id(i));
        assert_eq!(sent.len(), 1);
        // Done while the failing record was still being retried.
        assert!(sent[0]["seq"].as_u64().unwrap() < last_attempt, "{sent:?}");
        assert_eq!(ws.stored(&external_id(i)).unwrap().state, "synced");
    }
    let error = outcome_for(&run, "opp-1")["errors"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.contains("write outcome unknown and retries exhausted") && error.contains("HTTP 500"),
        "{error}"
    );
}
