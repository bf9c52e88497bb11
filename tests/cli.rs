//! The commands that need no service: `diff`, `check`, `sync --dry-run
//! --offline`, `status`, and the exit codes they promise.

mod common;

use std::process::Command;

use common::*;
use serde_json::{Value, json};

fn referral_sync(args: &[&str]) -> Run {
    let output = Command::new(referral_sync_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("REFERRAL_SYNC_CONFIG")
        .output()
        .unwrap();
    Run {
        output,
        elapsed: std::time::Duration::ZERO,
    }
}

/// A workspace that talks to no emulator (offline commands only).
fn offline_workspace(export_name: &str, export: &str, extra: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(export_name), export).unwrap();
    let config = dir.path().join("referral-sync.toml");
    std::fs::write(
        &config,
        format!(
            "[export]\npath = \"{export_name}\"\nentity = \"opportunity\"\n[store]\npath = \"store.db\"\n{extra}\n"
        ),
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    (dir, config)
}

#[test]
fn diff_prints_the_vector_patch() {
    let vectors: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("tests/fixtures/patch-vectors.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for vector in vectors.as_array().unwrap() {
        let before = dir.path().join("before.json");
        let after = dir.path().join("after.json");
        std::fs::write(&before, vector["before"].to_string()).unwrap();
        std::fs::write(&after, vector["after"].to_string()).unwrap();
        let run = referral_sync(&["diff", before.to_str().unwrap(), after.to_str().unwrap()]);
        run.assert_code(0);
        let printed: Value = serde_json::from_str(&run.stdout()).unwrap();
        assert_eq!(printed, vector["expected"], "vector {}", vector["name"]);
    }
}

#[test]
fn diff_refuses_an_invalid_transition_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let before = dir.path().join("before.json");
    let after = dir.path().join("after.json");
    std::fs::write(
        &before,
        json!({"status": "Closed", "substatus": "Won", "name": "a"}).to_string(),
    )
    .unwrap();
    std::fs::write(
        &after,
        json!({"status": "Active", "substatus": "Accepted", "name": "b"}).to_string(),
    )
    .unwrap();
    let run = referral_sync(&["diff", before.to_str().unwrap(), after.to_str().unwrap()]);
    run.assert_code(1);
    let printed: Value = serde_json::from_str(&run.stdout()).unwrap();
    assert_eq!(
        printed,
        json!([{"op": "replace", "path": "/name", "value": "b"}])
    );
    assert!(
        run.stderr().contains("not sent: /status"),
        "{}",
        run.stderr()
    );
    assert!(run.stderr().contains("Closed"), "{}", run.stderr());
}

#[test]
fn diff_names_a_bad_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let before = dir.path().join("before.json");
    std::fs::write(&before, "{\n  \"name\": \n").unwrap();
    let run = referral_sync(&["diff", before.to_str().unwrap(), before.to_str().unwrap()]);
    run.assert_code(2);
    assert!(run.stderr().contains("before.json:3:"), "{}", run.stderr());
}

#[test]
fn dry_run_offline_plans_creates_as_json_lines_and_writes_nothing() {
    let export = std::fs::read_to_string(repo_path("examples/opportunities.odata.json")).unwrap();
    let (dir, config) =
        offline_workspace("export.json", &export, "[sync]\ncreate_missing = true\n");
    let run = referral_sync(&["--config", &config, "sync", "--dry-run", "--output", "json"]);
    run.assert_code(0);
    let lines = run.json_lines();
    assert_eq!(lines.len(), 5);
    let first = &lines[0];
    assert_eq!(
        first["externalReferenceId"],
        json!("3f2504e0-4f89-41d3-9a0c-0305e82c3301")
    );
    assert_eq!(first["action"], json!("create"));
    assert_eq!(first["patch"], json!([]));
    assert_eq!(first["errors"], json!([]));
    assert_eq!(first["document"]["details"]["dealValue"], json!(50000));
    assert_eq!(first["document"]["status"], json!("Active"));
    assert_eq!(first["document"]["type"], json!("Independent"));
    let lost = &lines[3];
    assert_eq!(lost["document"]["statusReason"], json!("Out-Sold"));
    assert_eq!(lost["document"]["substatus"], json!("Lost"));
    assert!(
        !dir.path().join("store.db").exists(),
        "a dry run created the store"
    );
    // The summary goes to stderr with --output json, so stdout stays JSON Lines.
    assert!(run.stderr().contains("plan: seen 5"), "{}", run.stderr());
}

#[test]
fn dry_run_without_creation_reports_unresolved_with_exit_1() {
    let export = std::fs::read_to_string(repo_path("examples/opportunities.odata.json")).unwrap();
    let (_dir, config) = offline_workspace("export.json", &export, "");
    let run = referral_sync(&["--config", &config, "sync", "--dry-run"]);
    run.assert_code(1);
    assert!(
        run.stdout()
            .contains("unresolved 3f2504e0-4f89-41d3-9a0c-0305e82c3301"),
        "{}",
        run.stdout()
    );
    assert!(run.stdout().contains("creation is off"), "{}", run.stdout());
}

#[test]
fn check_reports_every_problem_with_its_place() {
    let lines = [
        json!({"opportunityid": "a1", "name": "ok", "statuscode": 1, "statecode": 0}),
        json!({"opportunityid": "a2", "name": "bad code", "statuscode": 42}),
        json!({"opportunityid": "a3", "name": "bad date", "statuscode": 1, "estimatedclosedate": "2/30/2024"}),
        json!({"opportunityid": "a1", "name": "duplicate", "statuscode": 1}),
        json!({"name": "no id", "statuscode": 1}),
    ];
    let export: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let (_dir, config) = offline_workspace("export.jsonl", &export, "");
    let run = referral_sync(&["--config", &config, "check"]);
    run.assert_code(1);
    let out = run.stdout();
    assert!(out.contains("export.jsonl:2"), "{out}");
    assert!(out.contains("42"), "{out}");
    assert!(out.contains("export.jsonl:3"), "{out}");
    assert!(out.contains("2/30/2024"), "{out}");
    assert!(out.contains("external id a1 occurs 2 times"), "{out}");
    assert!(
        out.contains("export.jsonl:1") && out.contains("export.jsonl:4"),
        "{out}"
    );
    assert!(out.contains("export.jsonl:5"), "{out}");
    assert!(
        out.contains("5 problem(s) found") || out.contains("problem(s) found"),
        "{out}"
    );
}

#[test]
fn check_and_sync_refuse_an_unparsable_export_naming_file_and_line() {
    let (dir, config) = offline_workspace(
        "export.json",
        "{\"value\": [\n  {\"opportunityid\": \"a1\", \"statuscode\": 1},\n  {\"opportunityid\": \"a2\",",
        "[sync]\ncreate_missing = true\n",
    );
    let run = referral_sync(&["--config", &config, "check"]);
    run.assert_code(1);
    assert!(run.stdout().contains("export.json:3"), "{}", run.stdout());
    let run = referral_sync(&["--config", &config, "sync", "--dry-run"]);
    run.assert_code(3);
    assert!(run.stderr().contains("export.json:3"), "{}", run.stderr());
    assert!(
        run.stderr().contains("nothing was changed"),
        "{}",
        run.stderr()
    );
    assert!(!run.stdout().contains("create "), "{}", run.stdout());
    assert!(!dir.path().join("store.db").exists());
}

#[test]
fn configuration_errors_exit_2_naming_the_key() {
    let (_dir, config) = offline_workspace(
        "export.json",
        "{\"value\": []}",
        "[sync]\nconflikt = \"crm-wins\"\n",
    );
    let run = referral_sync(&["--config", &config, "check"]);
    run.assert_code(2);
    assert!(
        run.stderr().contains("unknown field `conflikt`"),
        "{}",
        run.stderr()
    );
    assert!(run.stderr().contains("sync"), "{}", run.stderr());
    let run = referral_sync(&["--config", "/nonexistent/referral-sync.toml", "status"]);
    run.assert_code(2);
    assert!(
        run.stderr().contains("/nonexistent/referral-sync.toml"),
        "{}",
        run.stderr()
    );
}

#[test]
fn status_before_any_cycle_and_a_held_lock() {
    let (dir, config) = offline_workspace("export.json", "{\"value\": []}", "");
    let run = referral_sync(&["--config", &config, "status"]);
    run.assert_code(0);
    assert!(run.stdout().contains("not created yet"), "{}", run.stdout());

    // Another process holding the store makes `sync` exit 5 naming its pid.
    let store = dir.path().join("store.db");
    let lock = referral_sync::lock::StoreLock::acquire(&store).unwrap();
    let run = referral_sync(&["--config", &config, "sync"]);
    run.assert_code(5);
    assert!(
        run.stderr()
            .contains(&format!("pid {}", std::process::id())),
        "{}",
        run.stderr()
    );
    drop(lock);
}

#[test]
fn dry_run_plans_the_lead_sample_from_its_display_name_csv() {
    let export = std::fs::read_to_string(repo_path("examples/leads.csv")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("leads.csv"), export).unwrap();
    let config = dir.path().join("referral-sync.toml");
    std::fs::write(
        &config,
        "[export]\npath = \"leads.csv\"\nentity = \"lead\"\n[store]\npath = \"store.db\"\n[sync]\ncreate_missing = true\n",
    )
    .unwrap();
    let run = referral_sync(&[
        "--config",
        config.to_str().unwrap(),
        "sync",
        "--dry-run",
        "--output",
        "json",
    ]);
    run.assert_code(0);
    let lines = run.json_lines();
    assert_eq!(lines.len(), 3);
    let adatum = &lines[0]["document"];
    assert_eq!(
        lines[0]["externalReferenceId"],
        json!("9a1c2b3d-0000-4000-8000-00000000a001")
    );
    assert_eq!(adatum["status"], json!("New"));
    assert_eq!(adatum["substatus"], json!("Received"));
    assert_eq!(adatum["details"]["dealValue"], json!(75000));
    assert_eq!(adatum["details"]["currency"], json!("USD"));
    assert_eq!(
        adatum["details"]["closingDateTime"],
        json!("2024-12-31T00:00:00Z")
    );
    assert_eq!(adatum["customerProfile"]["address"]["country"], json!("US"));
    assert_eq!(
        adatum["customerProfile"]["team"],
        json!([{"firstName": "Sue", "lastName": "Smith", "email": "sue.smith@adatum.example", "phoneNumber": "1234567890"}])
    );
    let litware = &lines[1]["document"];
    assert_eq!(litware["status"], json!("Active"));
    assert_eq!(litware["details"]["currency"], json!("EUR"));
    assert_eq!(litware["details"]["dealValue"], json!(20000));
    assert_eq!(litware["customerProfile"]["name"], json!("Litware, Inc."));
    assert_eq!(
        litware["customerProfile"]["address"]["country"],
        json!("IE")
    );
    assert_eq!(
        litware["details"]["notes"],
        json!("Follow-up after the webinar,\nasked for a demo.")
    );
    let proseware = &lines[2]["document"];
    assert_eq!(proseware["status"], json!("Closed"));
    assert_eq!(proseware["substatus"], json!("Declined"));
    assert_eq!(
        proseware["customerProfile"]["address"]["country"],
        json!("BR")
    );
    assert_eq!(
        proseware["customerProfile"]["address"]["city"],
        json!("São Paulo")
    );
}

#[test]
fn an_id_on_an_unmappable_row_and_a_valid_row_is_sent_from_neither() {
    let lines = [
        json!({"opportunityid": "b1", "name": "bad code", "statuscode": 42}),
        json!({"opportunityid": "b1", "name": "fine", "statuscode": 1}),
        json!({"opportunityid": "b2", "name": "fine", "statuscode": 1,
               "_customerid_value@OData.Community.Display.V1.FormattedValue": "Contoso"}),
    ];
    let export: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let (_dir, config) =
        offline_workspace("export.jsonl", &export, "[sync]\ncreate_missing = true\n");
    let run = referral_sync(&["--config", &config, "sync", "--dry-run", "--output", "json"]);
    run.assert_code(1);
    let lines = run.json_lines();
    let created: Vec<&Value> = lines
        .iter()
        .filter(|l| l["action"] == json!("create"))
        .collect();
    assert_eq!(created.len(), 1, "{lines:?}");
    assert_eq!(created[0]["externalReferenceId"], json!("b2"));
    let duplicate = lines
        .iter()
        .find(|l| {
            l["errors"][0]
                .as_str()
                .is_some_and(|e| e.contains("external id b1 occurs 2 times"))
        })
        .unwrap_or_else(|| panic!("{lines:?}"));
    let message = duplicate["errors"][0].as_str().unwrap();
    assert!(
        message.contains("export.jsonl:1") && message.contains("export.jsonl:2"),
        "{message}"
    );
}

#[test]
fn a_text_plan_lists_every_invalid_record_and_the_first_creates_then_a_count() {
    // 28 records that cannot be sent, between 28 that would be created:
    // more of each than the text output lists by default.
    let lines: Vec<Value> = (1..=56)
        .map(|n| {
            if n % 2 == 0 {
                json!({"opportunityid": format!("bad-{n}"), "name": "bad code", "statuscode": 42})
            } else {
                json!({"opportunityid": format!("ok-{n}"), "name": format!("Deal {n}"), "statuscode": 1,
                       "_customerid_value@OData.Community.Display.V1.FormattedValue": "Contoso"})
            }
        })
        .collect();
    let invalid: Vec<String> = (1..=56)
        .filter(|n| n % 2 == 0)
        .map(|n| format!("bad-{n}"))
        .collect();
    let export: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let (_dir, config) =
        offline_workspace("export.jsonl", &export, "[sync]\ncreate_missing = true\n");

    let run = referral_sync(&["--config", &config, "sync", "--dry-run"]);
    run.assert_code(1);
    let out = run.stdout();
    for id in &invalid {
        assert!(
            out.contains(&format!("invalid    {id}\n    error: ")),
            "{id}: {out}"
        );
    }
    let invalid_lines = out.lines().filter(|l| l.starts_with("invalid ")).count();
    assert_eq!(invalid_lines, invalid.len(), "{out}");
    let creates = out.lines().filter(|l| l.starts_with("create ")).count();
    assert_eq!(creates, 20, "{out}");
    let posts = out.lines().filter(|l| l.starts_with("    POST {")).count();
    assert_eq!(posts, 20, "{out}");
    assert!(
        out.contains(
            "\n\u{2026} and 8 more records (use --verbose to list every one)\nplan: seen 56,"
        ),
        "{out}"
    );
    assert!(out.contains("created 28, updated 0"), "{out}");

    let verbose = referral_sync(&["--config", &config, "sync", "--dry-run", "--verbose"]);
    verbose.assert_code(1);
    let out = verbose.stdout();
    assert_eq!(out.lines().filter(|l| l.starts_with("create ")).count(), 28);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("invalid ")).count(),
        invalid.len()
    );
    assert!(!out.contains("more records"), "{out}");
}
