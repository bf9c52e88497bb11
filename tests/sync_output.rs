//! What `sync` and `resync` print and log for many records: the real
//! binaries against the emulator. The text output lists the ops of the
//! first records and counts the rest (`--verbose` lists every one); JSON
//! output is never cut; at the default log level no line is logged per
//! created or updated record, while conflicts and the cycle's counts are.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{Value, json};

/// How many records the text output lists without `--verbose`.
const LIMIT: usize = 20;
/// More records than that.
const RECORDS: u32 = 25;

const MORE: &str = "more records (use --verbose to list every one)";

fn leads(amount: impl Fn(u32) -> i64) -> Vec<Value> {
    (1..=RECORDS)
        .map(|n| lead(n, &format!("Lead {n}"), amount(n)))
        .collect()
}

fn creating_workspace(emulator: &Emulator) -> Workspace {
    Workspace::new(
        emulator,
        "lead",
        "export.jsonl",
        "[sync]\ncreate_missing = true\n",
    )
}

/// The record blocks of a text output: each record's first line (its
/// action and id, unindented) with the indented lines under it.
fn blocks(stdout: &str) -> Vec<Vec<String>> {
    let mut blocks: Vec<Vec<String>> = Vec::new();
    for line in stdout.lines() {
        if line.starts_with("    ") {
            blocks
                .last_mut()
                .unwrap_or_else(|| panic!("an indented line before any record:\n{stdout}"))
                .push(line.to_owned());
        } else if [
            "create ",
            "update ",
            "unchanged ",
            "failed ",
            "invalid ",
            "unresolved ",
        ]
        .iter()
        .any(|action| line.starts_with(action))
        {
            blocks.push(vec![line.to_owned()]);
        }
    }
    blocks
}

/// The external id a block is about.
fn block_id(block: &[String]) -> String {
    block[0]
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("{block:?}"))
        .to_owned()
}

/// The lines of stdout that are neither a record block nor the summary.
fn other_lines(stdout: &str, summary_prefix: &str) -> Vec<String> {
    let in_blocks: usize = blocks(stdout).iter().map(Vec::len).sum();
    let rest: Vec<String> = stdout
        .lines()
        .filter(|l| !l.starts_with("    ") && !l.starts_with(summary_prefix))
        .filter(|l| blocks(&format!("{l}\n")).is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(
        in_blocks + rest.len() + 1,
        stdout.lines().count(),
        "{stdout}"
    );
    rest
}

fn log_lines<'a>(stderr: &'a str, message: &str) -> Vec<&'a str> {
    stderr.lines().filter(|l| l.contains(message)).collect()
}

fn all_ids() -> BTreeSet<String> {
    (1..=RECORDS).map(lead_id).collect()
}

#[test]
fn a_first_sync_of_many_records_prints_the_first_ones_and_counts_the_rest() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = creating_workspace(&emulator);
    ws.write_export(&jsonl(&leads(|n| 1000 + i64::from(n))));

    let run = ws.run(&["sync"]);
    run.assert_code(0);
    assert_eq!(emulator.referrals().len(), RECORDS as usize);
    let stdout = run.stdout();
    let shown = blocks(&stdout);
    assert_eq!(shown.len(), LIMIT, "{stdout}");
    let mut ids = BTreeSet::new();
    for block in &shown {
        let id = block_id(block);
        assert!(block[0].starts_with("create "), "{block:?}");
        // Each listed record with its referral and the document posted.
        let referral = emulator.referral_for(&id);
        assert!(
            block[0].ends_with(&format!("  referral {}", referral["id"].as_str().unwrap())),
            "{block:?}"
        );
        assert_eq!(block.len(), 2, "{block:?}");
        let posted: Value =
            serde_json::from_str(block[1].strip_prefix("    POST ").unwrap()).unwrap();
        assert_eq!(posted["externalReferenceId"], json!(id));
        ids.insert(id);
    }
    assert_eq!(ids.len(), LIMIT, "a record listed twice: {stdout}");
    assert!(ids.is_subset(&all_ids()));
    assert_eq!(
        other_lines(&stdout, "synced: "),
        [format!("\u{2026} and {} {MORE}", RECORDS as usize - LIMIT)]
    );
    // The counts are complete, and come last.
    let last = stdout.lines().last().unwrap();
    assert!(
        last.starts_with(&format!(
            "synced: seen {RECORDS}, unchanged 0, created {RECORDS}, updated 0,"
        )),
        "{stdout}"
    );

    // The log: no line per created record at the default level, the
    // cycle's counts in its last line.
    let stderr = run.stderr();
    assert_eq!(log_lines(&stderr, "referral created"), Vec::<&str>::new());
    let finished = log_lines(&stderr, "cycle finished");
    assert_eq!(finished.len(), 1, "{stderr}");
    assert!(
        finished[0].contains(&format!("created {RECORDS}, updated 0")),
        "{stderr}"
    );
    assert!(
        finished[0].contains(&format!("created={RECORDS}")),
        "{stderr}"
    );
}

#[test]
fn verbose_and_json_output_list_every_record() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = creating_workspace(&emulator);
    ws.write_export(&jsonl(&leads(|n| 1000 + i64::from(n))));

    // `-v` and `--verbose`, a plan and a cycle.
    let plan = ws.run(&["sync", "--dry-run", "-v"]);
    plan.assert_code(0);
    let planned = blocks(&plan.stdout());
    assert_eq!(planned.len(), RECORDS as usize, "{}", plan.stdout());
    assert!(planned.iter().all(|b| b[0].starts_with("create ")));
    assert!(!plan.stdout().contains(MORE), "{}", plan.stdout());
    assert_eq!(emulator.referrals().len(), 0);

    let run = ws.run(&["sync", "--verbose"]);
    run.assert_code(0);
    let shown = blocks(&run.stdout());
    let ids: BTreeSet<String> = shown.iter().map(|b| block_id(b)).collect();
    assert_eq!(shown.len(), RECORDS as usize, "{}", run.stdout());
    assert_eq!(ids, all_ids());
    assert!(other_lines(&run.stdout(), "synced: ").is_empty());

    // An update of every record, as JSON Lines: every record, whole.
    ws.write_export(&jsonl(&leads(|n| 2000 + i64::from(n))));
    let run = ws.run(&["sync", "--output", "json"]);
    run.assert_code(0);
    assert!(!run.stdout().contains(MORE), "{}", run.stdout());
    let lines = run.json_lines();
    assert_eq!(lines.len(), RECORDS as usize, "{}", run.stdout());
    assert_eq!(run.stdout().lines().count(), RECORDS as usize);
    for line in &lines {
        let id = line["externalReferenceId"].as_str().unwrap();
        let n: u32 = id.rsplit('-').next().unwrap().parse().unwrap();
        assert_eq!(line["action"], "update", "{line}");
        assert_eq!(
            line["patch"],
            json!([{"op": "replace", "path": "/details/dealValue", "value": 2000 + n}]),
            "{line}"
        );
    }
    let ids: BTreeSet<String> = lines
        .iter()
        .map(|l| l["externalReferenceId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, all_ids());
}

/// Every lead created by a first sync run with `env`: the shared set-up of
/// the log level tests.
fn created_with_env(env: &[(&str, &str)]) -> (Emulator, Workspace, Run) {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = creating_workspace(&emulator);
    ws.write_export(&jsonl(&leads(|n| 1000 + i64::from(n))));
    let run = ws.run_with_env(&["sync"], env);
    run.assert_code(0);
    (emulator, ws, run)
}

/// A sync at the default level where a seller and the CRM changed the same
/// field of lead 1, and every other record changes too.
fn sync_with_one_conflict(emulator: &Emulator, ws: &Workspace) -> Run {
    let referral = emulator.referral_for(&lead_id(1));
    emulator.seller_edit(
        referral["id"].as_str().unwrap(),
        json!([{"op": "replace", "path": "/details/dealValue", "value": 9999}]),
    );
    ws.write_export(&jsonl(&leads(|n| 3000 + i64::from(n))));
    let run = ws.run(&["sync"]);
    run.assert_code(0);
    run
}

#[test]
fn rust_log_at_debug_logs_one_line_per_created_record() {
    let (_emulator, _ws, run) = created_with_env(&[("RUST_LOG", "referral_sync=debug")]);
    let stderr = run.stderr();
    let created = log_lines(&stderr, "referral created");
    assert_eq!(created.len(), RECORDS as usize, "{stderr}");
    for n in 1..=RECORDS {
        let id = lead_id(n);
        assert_eq!(
            created
                .iter()
                .filter(|l| l.contains(&format!("external_id=\"{id}\"")))
                .count(),
            1,
            "{id}: {stderr}"
        );
    }
}

#[test]
fn log_level_at_debug_logs_one_line_per_updated_record() {
    let (_emulator, ws, _) = created_with_env(&[]);
    ws.write_export(&jsonl(&leads(|n| 2000 + i64::from(n))));
    // `log.level`, here from the environment.
    let run = ws.run_with_env(&["sync"], &[("REFERRAL_SYNC__LOG__LEVEL", "debug")]);
    run.assert_code(0);
    assert_eq!(
        log_lines(&run.stderr(), "referral updated").len(),
        RECORDS as usize,
        "{}",
        run.stderr()
    );
}

#[test]
fn at_the_default_level_the_412_and_its_conflict_are_logged_and_routine_writes_are_not() {
    let (emulator, ws, _) = created_with_env(&[]);
    let run = sync_with_one_conflict(&emulator, &ws);
    let stderr = run.stderr();
    assert_eq!(log_lines(&stderr, "referral updated"), Vec::<&str>::new());
    assert_eq!(log_lines(&stderr, "referral created"), Vec::<&str>::new());
    let merged = log_lines(
        &stderr,
        "412: the referral changed in Partner Center; merging three ways",
    );
    assert_eq!(merged.len(), 1, "{stderr}");
    assert!(merged[0].contains(&lead_id(1)), "{stderr}");
    let conflict = log_lines(
        &stderr,
        "conflict: changed in the CRM and in Partner Center",
    );
    assert_eq!(conflict.len(), 1, "{stderr}");
    assert!(conflict[0].contains("path=/details/dealValue"), "{stderr}");
    assert!(conflict[0].contains("winner=\"crm\""), "{stderr}");
    let finished = log_lines(&stderr, "cycle finished");
    assert_eq!(finished.len(), 1, "{stderr}");
    assert!(
        finished[0].contains(&format!("updated {RECORDS}, conflicts resolved 1")),
        "{stderr}"
    );
    assert_eq!(
        emulator.referral_for(&lead_id(1))["details"]["dealValue"],
        3001
    );
}

#[test]
fn the_text_output_of_a_cycle_with_a_conflict_lists_the_first_records_and_counts_the_rest() {
    let (emulator, ws, _) = created_with_env(&[]);
    let run = sync_with_one_conflict(&emulator, &ws);
    // The conflict's record is listed only if it is among the first.
    assert_eq!(blocks(&run.stdout()).len(), LIMIT, "{}", run.stdout());
    assert!(
        run.stdout()
            .contains(&format!("\u{2026} and {} {MORE}", RECORDS as usize - LIMIT)),
        "{}",
        run.stdout()
    );
}

#[test]
fn a_resync_of_many_drifted_records_lists_the_first_unless_verbose() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = creating_workspace(&emulator);
    ws.write_export(&jsonl(&leads(|n| 1000 + i64::from(n))));
    ws.run(&["sync"]).assert_code(0);
    for referral in emulator.referrals() {
        emulator.seller_edit(
            referral["id"].as_str().unwrap(),
            json!([{"op": "replace", "path": "/details/dealValue", "value": 9999}]),
        );
    }

    let plan = ws.run(&["resync", "--dry-run"]);
    plan.assert_code(0);
    let stdout = plan.stdout();
    let shown = blocks(&stdout);
    assert_eq!(shown.len(), LIMIT, "{stdout}");
    for block in &shown {
        assert!(block[0].starts_with("update "), "{block:?}");
        assert!(
            block
                .iter()
                .any(|l| l
                    .starts_with("    drift repaired /details/dealValue: Partner Center has 9999")),
            "{block:?}"
        );
    }
    assert_eq!(
        other_lines(&stdout, "plan: "),
        [format!("\u{2026} and {} {MORE}", RECORDS as usize - LIMIT)]
    );
    // Drift is the operator's concern: logged per field at the default level.
    assert_eq!(
        log_lines(&plan.stderr(), "drift repaired").len(),
        RECORDS as usize,
        "{}",
        plan.stderr()
    );

    let run = ws.run(&["resync", "--verbose"]);
    run.assert_code(0);
    let shown = blocks(&run.stdout());
    let ids: BTreeSet<String> = shown.iter().map(|b| block_id(b)).collect();
    assert_eq!(shown.len(), RECORDS as usize, "{}", run.stdout());
    assert_eq!(ids, all_ids());
    assert!(!run.stdout().contains(MORE), "{}", run.stdout());
    for n in 1..=RECORDS {
        assert_eq!(
            emulator.referral_for(&lead_id(n))["details"]["dealValue"],
            1000 + i64::from(n)
        );
    }
}
