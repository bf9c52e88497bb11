use serde_json::{Value, json};

use super::*;
use crate::diff::apply_ops;
use crate::model::ListKey;

// ---------------------------------------------------------------------------
// The table, row by row.

fn v(n: i64) -> Value {
    json!(n)
}

#[derive(Clone, Copy)]
struct Row {
    base: Option<i64>,
    before: Option<Option<i64>>,
    crm: Option<i64>,
    live: Option<i64>,
    gone: bool,
    policy: ConflictPolicy,
    on_cleared: OnCleared,
    mode: Mode,
    expect: Verdict,
}

/// base 1, CRM 1 → 1, live 1: in step.
fn row(expect: Verdict) -> Row {
    Row {
        base: Some(1),
        before: Some(Some(1)),
        crm: Some(1),
        live: Some(1),
        gone: false,
        policy: ConflictPolicy::CrmWins,
        on_cleared: OnCleared::Null,
        mode: Mode::Sync,
        expect,
    }
}

#[test]
fn the_merge_table() {
    use ConflictPolicy::{CrmWins, RemoteWins};
    use Verdict::{Keep, Set};
    let rows = [
        // Sync: only what the CRM changed since the last sync goes.
        row(Keep(Why::InStep)),
        Row {
            live: Some(9),
            ..row(Keep(Why::SellerEdit))
        },
        Row {
            crm: Some(2),
            ..row(Set(Why::CrmChange))
        },
        Row {
            crm: Some(2),
            live: Some(2),
            ..row(Keep(Why::AlreadyThere))
        },
        Row {
            crm: Some(2),
            live: Some(9),
            ..row(Set(Why::Conflict))
        },
        Row {
            crm: Some(2),
            live: Some(9),
            policy: RemoteWins,
            ..row(Keep(Why::Conflict))
        },
        Row {
            crm: None,
            ..row(Set(Why::CrmChange))
        },
        Row {
            crm: None,
            on_cleared: OnCleared::Skip,
            ..row(Keep(Why::ClearSkipped))
        },
        Row {
            crm: None,
            live: None,
            ..row(Keep(Why::AlreadyThere))
        },
        Row {
            crm: None,
            live: Some(9),
            ..row(Set(Why::Conflict))
        },
        // Base and CRM apart with no change on either side (a refused
        // move, a remote-wins decision): nothing is re-sent.
        Row {
            before: Some(Some(2)),
            crm: Some(2),
            ..row(Keep(Why::InStep))
        },
        // A revert after our own write: base holds it, the CRM goes back.
        Row {
            base: Some(2),
            before: Some(Some(2)),
            crm: Some(1),
            live: Some(2),
            ..row(Set(Why::CrmChange))
        },
        // Adoption: every value the CRM has is its word; absent is not cleared.
        Row {
            before: None,
            crm: Some(2),
            ..row(Set(Why::CrmChange))
        },
        Row {
            before: None,
            crm: Some(1),
            ..row(Keep(Why::AlreadyThere))
        },
        Row {
            before: None,
            crm: None,
            ..row(Keep(Why::InStep))
        },
        // A list element the CRM no longer has stays, whatever the mode.
        Row {
            crm: None,
            gone: true,
            ..row(Keep(Why::ElementGone))
        },
        Row {
            crm: None,
            gone: true,
            mode: Mode::Resync,
            ..row(Keep(Why::ElementGone))
        },
        // Resync re-asserts the CRM's values.
        Row {
            live: Some(9),
            mode: Mode::Resync,
            ..row(Set(Why::Drift))
        },
        Row {
            live: Some(9),
            mode: Mode::Resync,
            policy: RemoteWins,
            ..row(Keep(Why::Drift))
        },
        Row {
            before: Some(Some(2)),
            crm: Some(2),
            mode: Mode::Resync,
            ..row(Set(Why::Drift))
        },
        Row {
            mode: Mode::Resync,
            ..row(Keep(Why::InStep))
        },
        Row {
            crm: None,
            before: Some(None),
            live: Some(9),
            mode: Mode::Resync,
            ..row(Keep(Why::SellerEdit))
        },
        Row {
            crm: Some(2),
            live: Some(9),
            mode: Mode::Resync,
            ..row(Set(Why::Conflict))
        },
        Row {
            crm: None,
            on_cleared: OnCleared::Skip,
            mode: Mode::Resync,
            ..row(Keep(Why::ClearSkipped))
        },
        Row {
            crm: Some(2),
            mode: Mode::Resync,
            policy: CrmWins,
            ..row(Set(Why::CrmChange))
        },
    ];
    let mut failures = Vec::new();
    for (index, r) in rows.iter().enumerate() {
        let (base, crm, live) = (r.base.map(v), r.crm.map(v), r.live.map(v));
        let before_value = r.before.flatten().map(v);
        let cell = Cell {
            base: base.as_ref(),
            before: match r.before {
                Some(_) => Before::Known(before_value.as_ref()),
                None => Before::Unknown,
            },
            crm: crm.as_ref(),
            live: live.as_ref(),
            element_gone: r.gone,
        };
        let options = MergeOptions {
            diff: DiffOptions {
                on_cleared: r.on_cleared,
            },
            conflict: r.policy,
            mode: r.mode,
        };
        let got = decide(&cell, &options);
        if got != r.expect {
            failures.push(format!("row {index}: expected {:?}, got {got:?}", r.expect));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------
// Plans.

fn managed() -> ManagedPaths {
    let mut managed = ManagedPaths::empty();
    for path in [
        &["externalReferenceId"][..],
        &["status"],
        &["substatus"],
        &["details", "dealValue"],
        &["details", "notes"],
        &["customerProfile", "name"],
        &["customerProfile", "address", "city"],
        &["customerProfile", "address", "postalCode"],
        &["customerProfile", "team"],
    ] {
        managed.insert(path);
    }
    for member in ["email", "firstName", "lastName"] {
        managed.insert_element_member(&["customerProfile", "team"], member);
    }
    managed.insert_list_key(
        &["customerProfile", "team"],
        ListKey {
            member: "email".into(),
            ignore_case: true,
        },
    );
    managed
}

fn options() -> MergeOptions {
    MergeOptions::default()
}

fn ops(value: Value) -> Vec<Op> {
    serde_json::from_value(value).unwrap()
}

fn plan_against(
    crm: &Value,
    before: Option<&Value>,
    base: &Value,
    live: Option<&Value>,
    options: MergeOptions,
) -> Plan {
    let managed = managed();
    let base = crate::ownership::project(base, &managed);
    plan(&PlanInput {
        crm,
        before,
        base: &base,
        live,
        managed: &managed,
        options,
        status_refused: false,
    })
}

/// Apply the plan to live and check the result keeps everything outside
/// the slots.
fn applied(live: &Value, plan: &Plan) -> Value {
    let mut after = live.clone();
    apply_ops(&mut after, &plan.ops).unwrap();
    after
}

#[test]
fn adoption_adds_below_an_existing_parent_and_keeps_the_sellers_members() {
    let live = json!({
        "id": "r", "name": "Deal",
        "customerProfile": {"name": "Contoso", "address": {"addressLine1": "1 Way", "postalCode": "98052", "country": "US", "region": "NA"}}
    });
    let crm = json!({"customerProfile": {"name": "Contoso", "address": {"city": "Redmond"}}});
    let plan = plan_against(&crm, None, &live, Some(&live), options());
    assert_eq!(
        plan.ops,
        ops(json!([{"op": "add", "path": "/customerProfile/address/city", "value": "Redmond"}]))
    );
    // The CRM had no postal code: absent is not cleared.
    let after = applied(&live, &plan);
    assert_eq!(after["customerProfile"]["address"]["postalCode"], "98052");
    assert_eq!(after["customerProfile"]["address"]["region"], "NA");
}

#[test]
fn a_whole_member_is_added_only_where_the_base_shows_it_absent() {
    let managed = managed();
    let crm = json!({"customerProfile": {"address": {"city": "Redmond"}}});
    let before = json!({"customerProfile": {}});
    // The base says Partner Center has an address (with a seller's region).
    let with_address = crate::ownership::project(
        &json!({"customerProfile": {"address": {"region": "NA"}}}),
        &managed,
    );
    let plan = plan(&PlanInput {
        crm: &crm,
        before: Some(&before),
        base: &with_address,
        live: None,
        managed: &managed,
        options: options(),
        status_refused: false,
    });
    assert_eq!(
        plan.ops,
        ops(json!([{"op": "add", "path": "/customerProfile/address/city", "value": "Redmond"}]))
    );
    // It says there is none: the parent goes whole.
    let without = crate::ownership::project(&json!({"customerProfile": {}}), &managed);
    let plan = super::plan(&PlanInput {
        crm: &crm,
        before: Some(&before),
        base: &without,
        live: None,
        managed: &managed,
        options: options(),
        status_refused: false,
    });
    assert_eq!(
        plan.ops,
        ops(
            json!([{"op": "add", "path": "/customerProfile/address", "value": {"city": "Redmond"}}])
        )
    );
}

fn team_live() -> Value {
    json!({
        "id": "r",
        "customerProfile": {"team": [
            {"email": "seller-added@x", "firstName": "Sam", "contactPreference": {"email": true}},
            {"email": "Jane@X", "firstName": "Jane", "lastName": "Doe", "phoneNumber": "555", "contactPreference": {"phone": true}}
        ]}
    })
}

#[test]
fn a_contact_edit_is_one_member_replace_at_its_position_in_partner_center() {
    let live = team_live();
    let before = json!({"customerProfile": {"team": [{"email": "jane@x", "firstName": "Jane", "lastName": "Doe"}]}});
    let crm = json!({"customerProfile": {"team": [{"email": "jane@x", "firstName": "Jane", "lastName": "Smith"}]}});
    let plan = plan_against(&crm, Some(&before), &live, None, options());
    assert_eq!(
        plan.ops,
        ops(
            json!([{"op": "replace", "path": "/customerProfile/team/1/lastName", "value": "Smith"}])
        )
    );
    let after = applied(&live, &plan);
    assert_eq!(
        after["customerProfile"]["team"][0],
        live["customerProfile"]["team"][0]
    );
    assert_eq!(after["customerProfile"]["team"][1]["phoneNumber"], "555");
    assert_eq!(
        after["customerProfile"]["team"][1]["contactPreference"],
        json!({"phone": true})
    );
}

#[test]
fn adoption_matches_contacts_by_key_and_appends_new_ones() {
    let live = team_live();
    let crm = json!({"customerProfile": {"team": [
        {"email": "JANE@x", "firstName": "Jane", "lastName": "Doe"},
        {"email": "new@x", "lastName": "New"}
    ]}});
    let plan = plan_against(&crm, None, &live, Some(&live), options());
    assert_eq!(
        plan.ops,
        ops(
            json!([{"op": "add", "path": "/customerProfile/team/-", "value": {"email": "new@x", "lastName": "New"}}])
        )
    );
    let after = applied(&live, &plan);
    assert_eq!(
        after["customerProfile"]["team"].as_array().unwrap().len(),
        3
    );
}

#[test]
fn a_contact_the_crm_no_longer_has_is_left_in_place_and_reported() {
    let live = team_live();
    let before = json!({"customerProfile": {"team": [{"email": "jane@x", "lastName": "Doe"}]}});
    let crm = json!({"customerProfile": {}});
    let plan = plan_against(&crm, Some(&before), &live, Some(&live), options());
    assert!(plan.ops.is_empty(), "{:?}", plan.ops);
    assert_eq!(plan.left_in_place, ["/customerProfile/team[jane@x]"]);
}

#[test]
fn a_new_list_is_added_whole_where_partner_center_has_none() {
    let live = json!({"id": "r", "customerProfile": {"name": "C"}});
    let crm = json!({"customerProfile": {"name": "C", "team": [{"email": "a@x"}]}});
    let plan = plan_against(
        &crm,
        Some(&json!({"customerProfile": {"name": "C"}})),
        &live,
        None,
        options(),
    );
    assert_eq!(
        plan.ops,
        ops(json!([{"op": "add", "path": "/customerProfile/team", "value": [{"email": "a@x"}]}]))
    );
}

fn referral(status: &str, substatus: &str, deal: i64) -> Value {
    json!({"status": status, "substatus": substatus, "details": {"dealValue": deal}})
}

#[test]
fn a_refused_status_is_never_resent_and_the_other_changes_go() {
    // The seller closed it; the CRM moved it on.
    let base = referral("New", "Pending", 100);
    let live = referral("Closed", "Lost", 100);
    let before = referral("New", "Pending", 100);
    let crm = referral("Active", "Accepted", 100);
    let first = plan_against(&crm, Some(&before), &base, Some(&live), options());
    assert!(first.ops.is_empty(), "{:?}", first.ops);
    assert_eq!(first.rejected.len(), 1);
    assert!(
        first.rejected[0]
            .reason
            .starts_with("Partner Center holds Closed/Lost, the CRM says Active/Accepted"),
        "{}",
        first.rejected[0].reason
    );

    // Next cycle: the base is what Partner Center holds, the CRM's last
    // word is Active; the CRM changes the deal value.
    let crm = referral("Active", "Accepted", 200);
    let before = referral("Active", "Accepted", 100);
    let managed = managed();
    let base = crate::ownership::project(&live, &managed);
    let next = |status_refused| {
        plan(&PlanInput {
            crm: &crm,
            before: Some(&before),
            base: &base,
            live: None,
            managed: &managed,
            options: options(),
            status_refused,
        })
    };
    let refused = next(true);
    assert_eq!(
        refused.ops,
        ops(json!([{"op": "replace", "path": "/details/dealValue", "value": 200}]))
    );
    assert_eq!(
        refused.rejected.len(),
        1,
        "still reported until the two agree"
    );
    // The same standing without a refusal is a seller's close the CRM did
    // not contradict: nothing to report.
    assert_eq!(next(false).rejected, []);
}

#[test]
fn status_travels_with_the_crms_substatus() {
    let base = referral("New", "Pending", 1);
    let crm = referral("Closed", "Won", 1);
    let plan = plan_against(&crm, Some(&base), &base, None, options());
    assert_eq!(
        plan.ops,
        ops(json!([
            {"op": "replace", "path": "/status", "value": "Closed"},
            {"op": "replace", "path": "/substatus", "value": "Won"}
        ]))
    );
}

#[test]
fn resync_repairs_drift_and_reports_it() {
    let base = referral("Active", "Accepted", 100);
    let live = referral("Active", "Accepted", 900);
    let crm = referral("Active", "Accepted", 100);
    let sync = plan_against(&crm, Some(&crm), &base, Some(&live), options());
    assert!(
        sync.ops.is_empty(),
        "a seller's edit survives an ordinary cycle"
    );
    let resync = MergeOptions {
        mode: Mode::Resync,
        ..options()
    };
    let repaired = plan_against(&crm, Some(&crm), &base, Some(&live), resync);
    assert_eq!(
        repaired.ops,
        ops(json!([{"op": "replace", "path": "/details/dealValue", "value": 100}]))
    );
    assert_eq!(
        repaired.drift,
        [Drift {
            path: "/details/dealValue".into(),
            partner_center: Some(json!(900)),
            crm: Some(json!(100)),
            action: DriftAction::Repaired
        }]
    );
    let kept = plan_against(
        &crm,
        Some(&crm),
        &base,
        Some(&live),
        MergeOptions {
            conflict: ConflictPolicy::RemoteWins,
            ..resync
        },
    );
    assert!(kept.ops.is_empty());
    assert_eq!(kept.drift[0].action, DriftAction::Kept);
}

#[test]
fn conflicts_follow_the_policy() {
    let base = referral("Active", "Accepted", 100);
    let live = referral("Active", "Accepted", 900);
    let before = base.clone();
    let crm = referral("Active", "Accepted", 200);
    let crm_wins = plan_against(&crm, Some(&before), &base, Some(&live), options());
    assert_eq!(
        crm_wins.ops,
        ops(json!([{"op": "replace", "path": "/details/dealValue", "value": 200}]))
    );
    assert_eq!(crm_wins.conflicts.len(), 1);
    assert_eq!(crm_wins.conflicts[0].live, Some(json!(900)));
    let remote = plan_against(
        &crm,
        Some(&before),
        &base,
        Some(&live),
        MergeOptions {
            conflict: ConflictPolicy::RemoteWins,
            ..options()
        },
    );
    assert!(remote.ops.is_empty());
    assert_eq!(remote.conflicts[0].resolution, ConflictPolicy::RemoteWins);
}

#[test]
fn targets_name_what_each_op_sets() {
    let base = referral("Active", "Accepted", 100);
    let crm = referral("Active", "Accepted", 300);
    let plan = plan_against(&crm, Some(&base), &base, None, options());
    assert_eq!(
        plan.targets,
        [(Slot::leaf(&["details", "dealValue"]), json!(300))]
    );
}
