//! Unchanged records known by the fingerprint of their bytes, end to end:
//! the real binaries against the emulator. Whatever is skipped, the
//! requests sent and the referrals' state are those of a full evaluation.

mod common;

use common::*;
use serde_json::{Value, json};

fn id(n: u32) -> String {
    format!("6f9619ff-8b86-4011-b42d-00c04fc9{n:04}")
}

fn records(values: &[f64]) -> Vec<Value> {
    values
        .iter()
        .enumerate()
        .map(|(n, value)| opportunity(&id(n as u32 + 1), &format!("Deal {}", n + 1), *value, 0, 1))
        .collect()
}

/// The value of `field=` on the `export read` log line of a run.
fn export_read(run: &Run, field: &str) -> Option<u64> {
    let stderr = run.stderr();
    let line = stderr.lines().find(|line| line.contains("export read"))?;
    let start = line.find(&format!("{field}="))? + field.len() + 1;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn deal_value(emulator: &Emulator, n: u32) -> f64 {
    emulator.referral_for(&id(n))["details"]["dealValue"]
        .as_f64()
        .unwrap_or(f64::NAN)
}

fn writes(emulator: &Emulator) -> Vec<Value> {
    let mut writes = emulator.requests_with_method("PATCH");
    writes.extend(emulator.requests_with_method("POST"));
    writes
}

fn setup(extra: &str) -> (Emulator, Workspace) {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = Workspace::new(
        &emulator,
        "opportunity",
        "export.json",
        &format!("[sync]\ncreate_missing = true\n{extra}"),
    );
    (emulator, ws)
}

#[test]
fn after_a_first_cycle_every_record_is_known_by_its_bytes() {
    let (emulator, ws) = setup("");
    ws.write_export(&odata_page(&records(&[1000.0, 2000.0, 3000.0, 4000.0])));
    let first = ws.run(&["sync"]);
    first.assert_code(0);
    assert_eq!(export_read(&first, "known_by_fingerprint"), Some(0));
    // Pass one records the fingerprints of unchanged records only; the
    // records it takes up have theirs written as they settle.
    assert_eq!(export_read(&first, "fingerprints_recorded"), Some(0));
    assert_eq!(emulator.requests_with_method("POST").len(), 4);

    emulator.clear_requests();
    let second = ws.run(&["sync"]);
    second.assert_code(0);
    assert_eq!(export_read(&second, "known_by_fingerprint"), Some(4));
    assert_eq!(export_read(&second, "fingerprints_recorded"), Some(0));
    assert!(
        second.stdout().contains("unchanged 4"),
        "{}",
        second.stdout()
    );
    assert_eq!(writes(&emulator), Vec::<Value>::new());
}

#[test]
fn a_changed_value_is_parsed_and_sent_and_a_reformatted_record_is_evaluated_not_skipped() {
    let (emulator, ws) = setup("");
    ws.write_export(&odata_page(&records(&[1000.0, 2000.0, 3000.0])));
    ws.run(&["sync"]).assert_code(0);
    ws.run(&["sync"]).assert_code(0);

    // One deal value edited in place, same length.
    emulator.clear_requests();
    let text = std::fs::read_to_string(&ws.export).unwrap();
    ws.write_export(&text.replacen("2000.0", "2500.0", 1));
    let changed = ws.run(&["sync"]);
    changed.assert_code(0);
    assert_eq!(export_read(&changed, "known_by_fingerprint"), Some(2));
    let patches = emulator.requests_with_method("PATCH");
    assert_eq!(patches.len(), 1, "{patches:?}");
    let ops = patches[0]["body"].as_array().unwrap();
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(
        (
            ops[0]["op"].as_str(),
            ops[0]["path"].as_str(),
            ops[0]["value"].as_f64()
        ),
        (Some("replace"), Some("/details/dealValue"), Some(2500.0))
    );
    assert_eq!(deal_value(&emulator, 2), 2500.0);

    // The same records written compactly, members in another order: every
    // record is parsed again, found unchanged, and nothing is sent.
    emulator.clear_requests();
    let mut compact = records(&[1000.0, 2500.0, 3000.0]);
    compact.reverse();
    let lines: Vec<String> = compact.iter().map(Value::to_string).collect();
    ws.write_export(&format!("{{\"value\": [{}]}}\n", lines.join(",")));
    let reformatted = ws.run(&["sync"]);
    reformatted.assert_code(0);
    assert_eq!(export_read(&reformatted, "known_by_fingerprint"), Some(0));
    assert_eq!(export_read(&reformatted, "fingerprints_recorded"), Some(3));
    assert!(
        reformatted.stdout().contains("unchanged 3"),
        "{}",
        reformatted.stdout()
    );
    assert_eq!(writes(&emulator), Vec::<Value>::new());
    let again = ws.run(&["sync"]);
    assert_eq!(export_read(&again, "known_by_fingerprint"), Some(3));
}

#[test]
fn a_record_changed_back_after_its_push_is_sent_again() {
    let (emulator, ws) = setup("");
    let before = odata_page(&records(&[1000.0, 2000.0]));
    ws.write_export(&before);
    ws.run(&["sync"]).assert_code(0);
    ws.run(&["sync"]).assert_code(0);
    ws.write_export(&before.replacen("2000.0", "2200.0", 1));
    ws.run(&["sync"]).assert_code(0);
    assert_eq!(deal_value(&emulator, 2), 2200.0);

    // The old bytes again: their fingerprint is on record, but for a hash
    // the record no longer holds.
    emulator.clear_requests();
    ws.write_export(&before);
    let back = ws.run(&["sync"]);
    back.assert_code(0);
    assert_eq!(export_read(&back, "known_by_fingerprint"), Some(1));
    assert_eq!(emulator.requests_with_method("PATCH").len(), 1);
    assert_eq!(deal_value(&emulator, 2), 2000.0);
}

#[test]
fn a_configuration_change_makes_every_fingerprint_a_stranger() {
    let (emulator, ws) = setup("");
    ws.write_export(&odata_page(&records(&[1000.0, 2000.0])));
    ws.run(&["sync"]).assert_code(0);
    let known = ws.run(&["sync"]);
    assert_eq!(export_read(&known, "known_by_fingerprint"), Some(2));

    // `sync.on_cleared` shapes what is planned: every record is evaluated.
    ws.edit_config(|config| config.replace("[sync]\n", "[sync]\non_cleared = \"skip\"\n"));
    emulator.clear_requests();
    let after = ws.run(&["sync"]);
    after.assert_code(0);
    assert_eq!(export_read(&after, "known_by_fingerprint"), Some(0));
    assert_eq!(writes(&emulator), Vec::<Value>::new());
    let settled = ws.run(&["sync"]);
    assert_eq!(export_read(&settled, "known_by_fingerprint"), Some(2));
}

#[test]
fn a_record_damaged_in_place_is_never_taken_as_known() {
    let (emulator, ws) = setup("");
    let text = odata_page(&records(&[1000.0, 2000.0, 3000.0]));
    ws.write_export(&text);
    ws.run(&["sync"]).assert_code(0);
    ws.run(&["sync"]).assert_code(0);

    // A quote lost inside the second record: the export does not parse.
    emulator.clear_requests();
    ws.write_export(&text.replacen("\"Deal 2\"", "\"Deal 2", 1));
    let broken = ws.run(&["sync"]);
    broken.assert_code(3);
    assert!(
        broken.stderr().contains("export.json:") && broken.stderr().contains("export unreadable"),
        "{}",
        broken.stderr()
    );
    assert_eq!(writes(&emulator), Vec::<Value>::new());

    // A copy of a known record: both copies are refused as duplicates,
    // exactly as when they are parsed.
    let mut twice = records(&[1000.0, 2000.0, 3000.0]);
    twice.push(twice[0].clone());
    ws.write_export(&odata_page(&twice));
    let duplicated = ws.run(&["sync"]);
    assert_eq!(export_read(&duplicated, "known_by_fingerprint"), Some(4));
    assert!(
        duplicated
            .stderr()
            .contains(&format!("external id {} occurs 2 times", id(1))),
        "{}",
        duplicated.stderr()
    );
    assert_eq!(writes(&emulator), Vec::<Value>::new());
}

#[test]
fn a_dry_run_and_a_resync_neither_trust_nor_keep_what_they_should_not() {
    let (emulator, ws) = setup("");
    ws.write_export(&odata_page(&records(&[1000.0, 2000.0])));
    ws.run(&["sync"]).assert_code(0);

    // A dry run skips what is known but records no fingerprint.
    let dry = ws.run(&["sync", "--dry-run"]);
    dry.assert_code(0);
    assert_eq!(export_read(&dry, "known_by_fingerprint"), Some(2));
    assert_eq!(export_read(&dry, "fingerprints_recorded"), Some(0));

    // A seller's change is drift a resync sees, whatever the fingerprints.
    let referral = emulator.referral_for(&id(1));
    emulator.seller_edit(
        referral["id"].as_str().unwrap(),
        json!([{"op": "replace", "path": "/details/dealValue", "value": 9999}]),
    );
    emulator.clear_requests();
    let resync = ws.run(&["resync"]);
    resync.assert_code(0);
    assert_eq!(deal_value(&emulator, 1), 1000.0);
}

#[test]
fn a_record_whose_push_fails_leaves_no_fingerprint_and_is_parsed_again() {
    let (emulator, ws) = setup("");
    let before = odata_page(&records(&[1000.0, 2000.0, 3000.0]));
    ws.write_export(&before);
    ws.run(&["sync"]).assert_code(0);

    // The change to the second record is refused by the service.
    emulator.add_faults(json!({"method": "PATCH", "kind": "status", "status": 503, "times": 0}));
    ws.write_export(&before.replacen("2000.0", "2500.0", 1));
    let failed = ws.run(&["sync"]);
    assert_ne!(failed.code(), 0, "{}", failed.stderr());
    assert_eq!(export_read(&failed, "known_by_fingerprint"), Some(2));
    assert_eq!(deal_value(&emulator, 2), 2000.0);

    // Its bytes were never settled: the next cycle parses it and sends it.
    emulator.clear_faults();
    emulator.clear_requests();
    let retried = ws.run(&["sync"]);
    retried.assert_code(0);
    assert_eq!(export_read(&retried, "known_by_fingerprint"), Some(2));
    assert_eq!(emulator.requests_with_method("PATCH").len(), 1);
    assert_eq!(deal_value(&emulator, 2), 2500.0);

    // Settled, with its fingerprint: known from now on.
    let settled = ws.run(&["sync"]);
    assert_eq!(export_read(&settled, "known_by_fingerprint"), Some(3));
    assert_eq!(export_read(&settled, "fingerprints_recorded"), Some(0));
}
