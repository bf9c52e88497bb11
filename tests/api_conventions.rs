//! The current Referrals API conventions, end to end against the emulator:
//! `client-request-id` on every request, the service's `request-id` named
//! with every error, and the newer create members from `[create]`.

mod common;

use common::*;
use serde_json::{Value, json};

const CONTOSO: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
const FABRIKAM: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3302";

fn two_opportunities(ws: &Workspace) {
    ws.write_export(&odata_page(&[
        opportunity(CONTOSO, "Contoso", 125000.0, 0, 1),
        opportunity(FABRIKAM, "Fabrikam", 5000.0, 0, 1),
    ]));
}

#[test]
fn every_request_of_a_sync_carries_a_client_request_id_of_its_own() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = Workspace::new(
        &emulator,
        "opportunity",
        "export.json",
        "[sync]\ncreate_missing = true\n",
    );
    two_opportunities(&ws);
    ws.run(&["sync"]).assert_code(0);
    ws.write_export(&odata_page(&[
        opportunity(CONTOSO, "Contoso renamed", 125000.0, 0, 1),
        opportunity(FABRIKAM, "Fabrikam", 5000.0, 0, 1),
    ]));
    ws.run(&["sync"]).assert_code(0);

    let requests = emulator.requests();
    let methods: Vec<&str> = requests
        .iter()
        .map(|r| r["method"].as_str().unwrap())
        .collect();
    assert!(
        methods.contains(&"POST") && methods.contains(&"PATCH"),
        "{methods:?}"
    );
    let mut seen = std::collections::HashSet::new();
    for request in &requests {
        let client_request_id = request["client_request_id"].as_str().unwrap_or_else(|| {
            panic!("no client-request-id: {request}");
        });
        assert!(
            uuid::Uuid::try_parse(client_request_id).is_ok(),
            "{request}"
        );
        assert_ne!(request["client_request_id"], request["request_id"]);
        assert!(request["correlation_id"].is_string(), "{request}");
        assert!(
            seen.insert(client_request_id.to_owned()),
            "repeated: {request}"
        );
    }
}

#[test]
fn an_error_answer_is_logged_with_the_services_request_id() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = Workspace::new(
        &emulator,
        "opportunity",
        "export.json",
        "[sync]\ncreate_missing = true\n",
    );
    ws.write_export(&odata_page(&[opportunity(CONTOSO, "Contoso", 1.0, 0, 1)]));
    emulator.add_faults(json!({"method": "POST", "kind": "status", "status": 400, "times": 0}));

    let run = ws.run(&["sync"]);

    run.assert_code(1);
    let posted: Vec<Value> = emulator.requests_with_method("POST");
    assert_eq!(posted.len(), 1);
    let service_request_id = posted[0]["service_request_id"].as_str().unwrap();
    let ms_request_id = posted[0]["request_id"].as_str().unwrap();
    let stderr = run.stderr();
    let line = stderr
        .lines()
        .find(|line| {
            line.contains(&format!(
                "(request-id {service_request_id}, MS-RequestId {ms_request_id})"
            ))
        })
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("WARN") && line.contains("HTTP 400"), "{line}");
}

/// `[create]` defaults on a create, and a column mapped to one of them
/// winning over the default.
#[test]
fn a_create_carries_the_configured_solution_area_and_play() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = Workspace::new(
        &emulator,
        "opportunity",
        "export.json",
        r#"[sync]
create_missing = true

[create]
partner_role = "Seller"
solution_area = "Business Applications"
solution_play = "Finance and Supply Chain"
consent_to_share_referral_with_microsoft_sellers = true
customer_ids = [{ profile_type = "Duns", id = "123456789" }]

[create.requirements]
solutions = [{ id = "sol-1", name = "Dynamics 365 Finance", type = "MicrosoftSolution" }]

[mapping.fields."solutionPlay"]
from = "new_solutionplay"
type = "text"
"#,
    );
    let mut fabrikam = opportunity(FABRIKAM, "Fabrikam", 5000.0, 0, 1);
    fabrikam["new_solutionplay"] = json!("Migrate and Modernize");
    ws.write_export(&odata_page(&[
        opportunity(CONTOSO, "Contoso", 125000.0, 0, 1),
        fabrikam,
    ]));

    ws.run(&["sync"]).assert_code(0);

    let contoso = emulator.referral_for(CONTOSO);
    assert_eq!(contoso["partnerRole"], "Seller");
    assert_eq!(contoso["solutionArea"], "Business Applications");
    assert_eq!(contoso["solutionPlay"], "Finance and Supply Chain");
    assert_eq!(
        contoso["consent"]["consentToShareReferralWithMicrosoftSellers"],
        true
    );
    assert_eq!(
        contoso["customerProfile"]["ids"],
        json!([{"profileType": "Duns", "id": "123456789"}])
    );
    assert_eq!(
        contoso["details"]["requirements"]["solutions"],
        json!([{"id": "sol-1", "name": "Dynamics 365 Finance", "type": "MicrosoftSolution"}])
    );
    let fabrikam = emulator.referral_for(FABRIKAM);
    assert_eq!(fabrikam["solutionPlay"], "Migrate and Modernize");
    assert_eq!(fabrikam["solutionArea"], "Business Applications");
}
