//! The bad-input corpus (`tests/bad_input/`) run through `referral-sync
//! check` and `referral-sync sync`: every case against a store and a
//! Partner Center that already hold four synced leads.
//!
//! What must hold: the error names the file and the line (and column), or
//! the record; an export that does not parse changes nothing and sends
//! nothing (exit 3); a bad record is refused alone while the others sync
//! (exit 1) and its store row stays exactly as it was; an export that lacks
//! more of the known records than `sync.max_missing_ratio` allows changes
//! nothing (exit 4) until `sync --allow-missing`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use serde_json::{Value, json};

const CORPUS: &str = "tests/bad_input";

const NO_FINAL_LINE_END: &str = "the last line has no line end: the file is cut short or still being written (set export.require_final_newline = false if the exporter writes none)";

/// Four leads synced by a clean cycle; then the baseline export is taken
/// away, leaving an empty export directory for a case.
struct Bench {
    emulator: Emulator,
    ws: Workspace,
    rows_before: BTreeMap<String, StoredRow>,
    live_before: BTreeMap<String, Value>,
}

fn baseline_record(n: u32) -> Value {
    json!({
        "leadid": lead_id(n),
        "subject": format!("Lead {n}"),
        "estimatedamount": 100 * n,
        "statecode": 0,
        "statuscode": 1,
        "companyname": format!("Company {n}"),
    })
}

impl Bench {
    fn new(extra_config: &str) -> Bench {
        let emulator = Emulator::start(&json!([]), &[]);
        let ws = Workspace::new(
            &emulator,
            "lead",
            "export",
            &format!("[sync]\ncreate_missing = true\n{extra_config}"),
        );
        std::fs::create_dir(&ws.export).unwrap();
        let baseline = ws.export.join("baseline.jsonl");
        let records: Vec<Value> = (1..=4).map(baseline_record).collect();
        std::fs::write(&baseline, jsonl(&records)).unwrap();
        ws.run(&["sync"]).assert_code(0);
        std::fs::remove_file(&baseline).unwrap();
        emulator.clear_requests();
        let rows_before = ws.all_stored();
        assert_eq!(rows_before.len(), 4);
        let live_before = emulator
            .referrals()
            .into_iter()
            .map(|r| (r["externalReferenceId"].as_str().unwrap().to_owned(), r))
            .collect();
        Bench {
            emulator,
            ws,
            rows_before,
            live_before,
        }
    }

    /// Put the corpus file (or the files of the corpus directory) `case`
    /// into the export directory.
    fn install(&self, case: &str) {
        let source = repo_path(CORPUS).join(case);
        if source.is_dir() {
            for entry in std::fs::read_dir(&source).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), self.ws.export.join(entry.file_name())).unwrap();
            }
        } else {
            std::fs::copy(&source, self.ws.export.join(case)).unwrap();
        }
    }

    /// `<export dir>/<rest>`: how messages name a file of the export.
    fn at(&self, rest: &str) -> String {
        format!("{}/{rest}", self.ws.export.display())
    }

    /// The store row and the live referral of lead `n` are exactly as the
    /// baseline left them.
    #[track_caller]
    fn assert_untouched(&self, n: u32, case: &str) {
        let id = lead_id(n);
        assert_eq!(
            self.ws.stored(&id).as_ref(),
            self.rows_before.get(&id),
            "{case}: the store row of lead {n} changed"
        );
        assert_eq!(
            self.emulator.referral_for(&id),
            self.live_before[&id],
            "{case}: the referral of lead {n} changed"
        );
    }

    /// Lead `n` now holds the case file's version: renamed, synced.
    #[track_caller]
    fn assert_synced(&self, n: u32, case: &str) {
        let id = lead_id(n);
        let row = self.ws.stored(&id).unwrap();
        assert_eq!(row.state, "synced", "{case}: lead {n}: {row:?}");
        let name = format!("Lead {n} renamed");
        assert_eq!(
            row.snapshot.as_ref().unwrap()["name"],
            json!(name),
            "{case}"
        );
        assert_eq!(
            self.emulator.referral_for(&id)["name"],
            json!(name),
            "{case}"
        );
    }

    #[track_caller]
    fn assert_nothing_sent(&self, case: &str) {
        let requests = self.emulator.requests();
        assert!(
            requests.is_empty(),
            "{case}: requests were sent: {requests:#?}"
        );
    }

    fn last_cycle(&self) -> Value {
        self.ws.status()["cycles"][0].clone()
    }
}

/// Exports that do not parse: refused whole. `(case, where, message)`;
/// `where` is the file (relative to the export directory), line and column.
const UNREADABLE: &[(&str, &str, &str)] = &[
    (
        "truncated.odata.json",
        "truncated.odata.json:14:25",
        "EOF while parsing a string (the file is truncated, or still being written)",
    ),
    (
        "empty.json",
        "empty.json:1:1",
        "no OData envelope: the file is empty",
    ),
    (
        "half-written.jsonl",
        "half-written.jsonl:3:74",
        NO_FINAL_LINE_END,
    ),
    // Cut inside its last cell (`12` for `1200`), the last row still has
    // every cell: only the missing line end tells.
    (
        "cut-last-row.csv",
        "cut-last-row.csv:5:55",
        NO_FINAL_LINE_END,
    ),
    (
        "not-an-object.jsonl",
        "not-an-object.jsonl:2:1",
        "expected a record object, found an array",
    ),
    (
        "odata-error-envelope.json",
        "odata-error-envelope.json:6:1",
        "not an OData page: it has no `value` array",
    ),
    (
        "invalid-utf8.csv",
        "invalid-utf8.csv:3:41",
        "invalid UTF-8 byte 0xE9",
    ),
    (
        "unbalanced-quote.csv",
        "unbalanced-quote.csv:3:38",
        "quoted field is never closed: the quote opened here has no closing `\"`",
    ),
    // Quotes the csv crate would drop silently: `ACME Corp`, `Company quoteinside`.
    (
        "quote-after-close.csv",
        "quote-after-close.csv:3:66",
        "text after the closing quote of the field quoted at column 60: a quote inside a quoted field is written twice (`\"\"`)",
    ),
    (
        "quote-in-unquoted.csv",
        "quote-in-unquoted.csv:3:70",
        "a quote inside a field that does not start with one: quote the whole field and write the quote twice (`\"\"`)",
    ),
    // The first page is fine; the second, cut short, spoils the export.
    (
        "second-page-truncated",
        "page-2.json:13:20",
        "EOF while parsing a string (the file is truncated, or still being written)",
    ),
];

#[test]
fn an_export_that_does_not_parse_is_refused_whole_naming_file_line_and_column() {
    for &(case, place, message) in UNREADABLE {
        let bench = Bench::new("");
        bench.install(case);
        let expected = format!("{}: {message}", bench.at(place));

        let check = bench.ws.run(&["check"]);
        check.assert_code(1);
        assert!(
            check.stdout().contains(&format!(
                "problem: export unreadable, nothing was changed: {expected}"
            )),
            "{case}: check said\n{}",
            check.stdout()
        );

        let sync = bench.ws.run(&["sync"]);
        sync.assert_code(3);
        assert!(
            sync.stderr().contains(&format!(
                "error: export unreadable, nothing was changed: {expected}"
            )),
            "{case}: sync said\n{}",
            sync.stderr()
        );
        bench.assert_nothing_sent(case);
        for n in 1..=4 {
            bench.assert_untouched(n, case);
        }
        let cycle = bench.last_cycle();
        assert_eq!(cycle["outcome"], "failed", "{case}");
        assert!(
            cycle["error"].as_str().unwrap().contains(&expected),
            "{case}: {cycle}"
        );
    }
}

#[test]
fn an_export_directory_without_a_page_is_refused() {
    let bench = Bench::new("");
    // Only files being written, which are never read.
    std::fs::write(bench.ws.export.join("page-1.json.part"), "{\"value\": [").unwrap();
    let sync = bench.ws.run(&["sync"]);
    sync.assert_code(3);
    let expected = format!(
        "error: export unreadable, nothing was changed: {}: no export files found",
        bench.ws.export.display()
    );
    assert!(sync.stderr().contains(&expected), "{}", sync.stderr());
    bench.assert_nothing_sent("no pages");
    for n in 1..=4 {
        bench.assert_untouched(n, "no pages");
    }
}

/// Records that cannot be synced as they are. `(case, messages, synced,
/// untouched)`: every message is reported by both `check` and `sync`; the
/// `synced` leads get the case file's version, the `untouched` ones stay as
/// the baseline left them in the store and in Partner Center.
type RecordCase = (
    &'static str,
    &'static [&'static str],
    &'static [u32],
    &'static [u32],
);

const RECORD_PROBLEMS: &[RecordCase] = &[
    (
        "duplicate-ids.jsonl",
        &[
            "external id 0d000000-0000-4000-8000-000000000001 occurs 2 times: {dir}/duplicate-ids.jsonl:1 (record 1), {dir}/duplicate-ids.jsonl:3 (record 3)",
        ],
        &[2, 3, 4],
        &[1],
    ),
    (
        "unknown-status.jsonl",
        &[
            "{dir}/unknown-status.jsonl:2 (record 2) [0d000000-0000-4000-8000-000000000002]: status (column statuscode, value \"99\"): unknown status code 99: no rule in mapping.status has it",
            "{dir}/unknown-status.jsonl:3 (record 3) [0d000000-0000-4000-8000-000000000003]: status (column statuscode, value \"Pondering\"): unknown status reason `Pondering`: no rule in mapping.status has that label or code",
        ],
        &[1, 4],
        &[2, 3],
    ),
    (
        "invalid-values.csv",
        &[
            "{dir}/invalid-values.csv:3 (record 2) [0d000000-0000-4000-8000-000000000002]: details.closingDateTime (column estimatedclosedate, value \"2/30/2024\"): no such date",
            "{dir}/invalid-values.csv:4 (record 3) [0d000000-0000-4000-8000-000000000003]: details.currency (column transactioncurrencyidname, value \"Galactic Credits\"): not a currency",
            "{dir}/invalid-values.csv:5 (record 4) [0d000000-0000-4000-8000-000000000004]: customerProfile.address.country (column address1_country, value \"Atlantis\"): unknown country `Atlantis`",
            // Every problem of a record, not only the first.
            "{dir}/invalid-values.csv:6 (record 5) [0d000000-0000-4000-8000-000000000005]: customerProfile.team[0].email (column emailaddress1, value \"ann at example\"): not an email address; details.dealValue (column estimatedamount, value \"twelve thousand\"): not an amount",
        ],
        &[1],
        &[2, 3, 4],
    ),
];

#[test]
fn a_bad_record_is_refused_alone_naming_file_line_and_column_and_the_others_sync() {
    for &(case, messages, synced, untouched) in RECORD_PROBLEMS {
        let bench = Bench::new("");
        bench.install(case);
        let dir = bench.ws.export.display().to_string();
        let messages: Vec<String> = messages.iter().map(|m| m.replace("{dir}", &dir)).collect();

        let check = bench.ws.run(&["check"]);
        check.assert_code(1);
        for message in &messages {
            assert!(
                check.stdout().contains(&format!("problem: {message}")),
                "{case}: check did not say {message:?}:\n{}",
                check.stdout()
            );
        }
        assert!(
            check
                .stdout()
                .contains(&format!("{} problem(s) found", messages.len())),
            "{case}:\n{}",
            check.stdout()
        );

        let sync = bench.ws.run(&["sync"]);
        sync.assert_code(1);
        for message in &messages {
            assert!(
                sync.stdout().contains(&format!("    error: {message}")),
                "{case}: sync did not print {message:?}:\n{}",
                sync.stdout()
            );
            assert!(
                sync.stderr().contains(message.as_str()),
                "{case}: the log does not say {message:?}:\n{}",
                sync.stderr()
            );
        }
        assert!(
            sync.stdout()
                .contains(&format!("invalid {}", messages.len())),
            "{case}:\n{}",
            sync.stdout()
        );
        for &n in synced {
            bench.assert_synced(n, case);
        }
        for &n in untouched {
            bench.assert_untouched(n, case);
        }
        // A record the store never knew stays unknown.
        if case == "invalid-values.csv" {
            assert_eq!(bench.ws.stored(&lead_id(5)), None);
            let live = bench.emulator.referrals_by_external_id();
            assert!(!live.contains_key(&lead_id(5)));
        }
        assert_eq!(bench.last_cycle()["outcome"], "partial", "{case}");
        assert_eq!(bench.ws.integrity_check(), "ok");
    }
}

/// Exports that lack most known records. `(case, missing, record
/// messages, synced with --allow-missing)`.
type ShrunkCase = (&'static str, u32, &'static [&'static str], &'static [u32]);

const SHRUNK: &[ShrunkCase] = &[
    ("zero-records.csv", 4, &[], &[]),
    ("zero-records.odata.json", 4, &[], &[]),
    ("shrunken.jsonl", 3, &[], &[1]),
    // Without its id column no record can be matched: they all count as
    // missing, and each is reported.
    (
        "missing-id-column.csv",
        4,
        &[
            "{dir}/missing-id-column.csv:2 (record 1): externalReferenceId (column leadid): the record has no id",
            "{dir}/missing-id-column.csv:3 (record 2): externalReferenceId (column leadid): the record has no id",
        ],
        &[],
    ),
];

#[test]
fn an_empty_or_shrunken_export_changes_nothing_until_allow_missing() {
    for &(case, missing, messages, synced) in SHRUNK {
        let bench = Bench::new("");
        bench.install(case);
        let dir = bench.ws.export.display().to_string();
        let refusal = format!(
            "{missing} of the 4 records in the store are missing from the export (more than sync.max_missing_ratio = 0.5)"
        );

        let check = bench.ws.run(&["check"]);
        check.assert_code(1);
        assert!(
            check.stdout().contains(&format!("problem: {refusal}")),
            "{case}:\n{}",
            check.stdout()
        );
        for message in messages {
            let message = message.replace("{dir}", &dir);
            assert!(
                check.stdout().contains(&format!("problem: {message}")),
                "{case}:\n{}",
                check.stdout()
            );
        }

        let sync = bench.ws.run(&["sync"]);
        sync.assert_code(4);
        let stderr = sync.stderr();
        assert!(
            stderr.contains(&format!(
                "error: {refusal}; nothing was changed. If the export really shrank, confirm with `referral-sync sync --allow-missing` or run a resync"
            )),
            "{case}:\n{stderr}"
        );
        bench.assert_nothing_sent(case);
        for n in 1..=4 {
            bench.assert_untouched(n, case);
        }
        let cycle = bench.last_cycle();
        assert_eq!(cycle["outcome"], "failed", "{case}");
        assert!(
            cycle["error"].as_str().unwrap().contains(&refusal),
            "{case}: {cycle}"
        );

        // Confirmed: what is there is synced; what is missing is still
        // left alone, never cleared or closed.
        let confirmed = bench.ws.run(&["sync", "--allow-missing"]);
        confirmed.assert_code(if messages.is_empty() { 0 } else { 1 });
        for &n in synced {
            bench.assert_synced(n, case);
        }
        for n in (1..=4).filter(|n| !synced.contains(n)) {
            bench.assert_untouched(n, case);
        }
        let writes: Vec<Value> = bench
            .emulator
            .requests()
            .into_iter()
            .filter(|r| r["method"] != "GET")
            .collect();
        assert_eq!(writes.len(), synced.len(), "{case}: {writes:#?}");
    }
}

#[test]
fn the_missing_ratio_is_the_configured_one() {
    // 3 of 4 missing is 0.75: refused at 0.5 (above), allowed at 0.8.
    let bench = Bench::new("max_missing_ratio = 0.8\n");
    bench.install("shrunken.jsonl");
    bench.ws.run(&["check"]).assert_code(0);
    bench.ws.run(&["sync"]).assert_code(0);
    bench.assert_synced(1, "ratio 0.8");
    for n in 2..=4 {
        bench.assert_untouched(n, "ratio 0.8");
    }
}

#[test]
fn a_zero_record_export_on_a_fresh_store_does_nothing() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = Workspace::new(&emulator, "lead", "export.csv", "");
    std::fs::copy(repo_path(CORPUS).join("zero-records.csv"), &ws.export).unwrap();
    let run = ws.run(&["sync"]);
    run.assert_code(0);
    assert!(
        run.stdout()
            .contains("seen 0, unchanged 0, created 0, updated 0"),
        "{}",
        run.stdout()
    );
    assert!(emulator.requests().is_empty());
}

#[test]
fn a_ten_megabyte_field_is_reported_in_a_few_lines_and_the_others_sync() {
    const TEN_MB: usize = 10 * 1024 * 1024;
    let bench = Bench::new("");
    let mut records: Vec<Value> = (1..=4)
        .map(|n| {
            let mut record = baseline_record(n);
            record["subject"] = json!(format!("Lead {n} renamed"));
            record
        })
        .collect();
    // Valid but huge: sent, and refused by the service (the emulator takes
    // at most 4 MB).
    records[1]["description"] = json!("d".repeat(TEN_MB));
    // Huge and invalid: refused before anything is sent.
    records[2]["estimatedclosedate"] = json!("9".repeat(TEN_MB));
    std::fs::write(bench.ws.export.join("huge.jsonl"), jsonl(&records)).unwrap();

    let check = bench.ws.run(&["check"]);
    check.assert_code(1);
    let invalid = format!(
        "{}:3 (record 3) [{}]: details.closingDateTime (column estimatedclosedate, value \"{}…\" ({TEN_MB} bytes)): not a date",
        bench.at("huge.jsonl"),
        lead_id(3),
        "9".repeat(120)
    );
    assert!(
        check.stdout().contains(&invalid),
        "{}",
        &check.stdout()[..2000.min(check.stdout().len())]
    );
    assert!(
        check.output.stdout.len() < 10_000,
        "check printed {} bytes",
        check.output.stdout.len()
    );

    let sync = bench.ws.run(&["sync"]);
    sync.assert_code(1);
    let printed = sync.output.stdout.len() + sync.output.stderr.len();
    assert!(printed < 20_000, "sync printed {printed} bytes");
    assert!(sync.stdout().contains(&invalid), "{}", sync.stdout());
    let status = bench.ws.status();
    let failed = status["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["external_id"] == json!(lead_id(2)))
        .unwrap_or_else(|| panic!("{status:#}"));
    // Refused for good (413): held until the record changes or a retry.
    assert_eq!(failed["state"], "held");
    assert_eq!(failed["held"]["status"], 413);
    assert!(
        failed["last_error"].as_str().unwrap().contains("HTTP 413"),
        "{failed}"
    );
    assert!(sync.stderr().contains("record failed"), "{}", sync.stderr());
    // The failure advanced nothing but the record's state.
    let row = bench.ws.stored(&lead_id(2)).unwrap();
    let before = &bench.rows_before[&lead_id(2)];
    assert_eq!(
        (&row.snapshot, &row.etag, &row.referral_id),
        (&before.snapshot, &before.etag, &before.referral_id)
    );
    assert_eq!(
        bench.emulator.referral_for(&lead_id(2)),
        bench.live_before[&lead_id(2)]
    );
    bench.assert_untouched(3, "huge");
    bench.assert_synced(1, "huge");
    bench.assert_synced(4, "huge");
    // The store does not hold the huge value anywhere.
    let store_size = std::fs::metadata(&bench.ws.store).unwrap().len()
        + std::fs::metadata(bench.ws.store.with_extension("db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    assert!(store_size < TEN_MB as u64, "store is {store_size} bytes");
}

#[test]
fn every_corpus_entry_has_a_case() {
    let mut cased: Vec<&str> = UNREADABLE.iter().map(|c| c.0).collect();
    cased.extend(RECORD_PROBLEMS.iter().map(|c| c.0));
    cased.extend(SHRUNK.iter().map(|c| c.0));
    let mut entries: Vec<String> = std::fs::read_dir(repo_path(CORPUS))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "README.md")
        .collect();
    entries.sort();
    cased.sort();
    assert_eq!(
        entries, cased,
        "tests/bad_input and the cases here must match"
    );
    assert!(Path::new(&repo_path(CORPUS)).join("README.md").exists());
}

// ---------------------------------------------------------------------------
// Hostile exports: too fresh, not regular files.

/// The four baseline leads renamed, as one JSON Lines file.
fn renamed_leads() -> String {
    let records: Vec<Value> = (1..=4)
        .map(|n| {
            let mut record = baseline_record(n);
            record["subject"] = json!(format!("Lead {n} renamed"));
            record
        })
        .collect();
    jsonl(&records)
}

fn set_modified(path: &Path, ago: std::time::Duration) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - ago)
        .unwrap();
}

#[test]
fn an_export_modified_within_settle_secs_skips_the_cycle_with_exit_7() {
    let bench = Bench::new("");
    bench.ws.set_in_table("export", "settle_secs = 600");
    let page = bench.ws.export.join("leads.jsonl");
    std::fs::write(&page, renamed_leads()).unwrap();

    let check = bench.ws.run(&["check"]);
    check.assert_code(0);
    assert!(
        check
            .stdout()
            .contains(&format!("note: {}: modified ", page.display()))
            && check.stdout().contains("a cycle now would skip it"),
        "{}",
        check.stdout()
    );

    let sync = bench.ws.run(&["sync"]);
    sync.assert_code(7);
    let expected = format!(
        "skipped: cycle skipped, nothing was read or changed: {}: modified ",
        page.display()
    );
    assert!(sync.stderr().contains(&expected), "{}", sync.stderr());
    assert!(
        sync.stderr()
            .contains("sooner than export.settle_secs = 600 allows: not read this cycle"),
        "{}",
        sync.stderr()
    );
    assert!(!sync.stderr().contains("error:"), "{}", sync.stderr());
    bench.assert_nothing_sent("too fresh");
    for n in 1..=4 {
        bench.assert_untouched(n, "too fresh");
    }
    assert_eq!(bench.last_cycle()["outcome"], "skipped");

    // Settled: the next cycle reads it.
    set_modified(&page, std::time::Duration::from_secs(601));
    bench.ws.run(&["sync"]).assert_code(0);
    for n in 1..=4 {
        bench.assert_synced(n, "settled");
    }
}

/// Run `args` and fail if it takes more than ten seconds: a read that
/// blocks on a FIFO or never ends on a device is the bug.
fn run_bounded(ws: &Workspace, args: &[&str], tag: &str) -> (i32, String, String) {
    let mut spawned = ws.spawn(args, tag);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(status) = spawned.child.try_wait().unwrap() {
            let stdout = std::fs::read_to_string(&spawned.stdout_path).unwrap_or_default();
            return (status.code().unwrap_or(-1), stdout, spawned.stderr());
        }
        if std::time::Instant::now() > deadline {
            let _ = spawned.child.kill();
            let _ = spawned.child.wait();
            panic!("`{}` blocked on the export", args.join(" "));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_fifo_or_a_device_as_export_is_refused_without_blocking() {
    let bench = Bench::new("");
    // A page of the export directory that is a FIFO nobody writes to.
    let fifo = bench.ws.export.join("leads.jsonl");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::write(bench.ws.export.join("other.jsonl"), renamed_leads()).unwrap();
    let cases = [
        (bench.ws.export.clone(), fifo.clone(), "a FIFO (named pipe)"),
        (fifo.clone(), fifo.clone(), "a FIFO (named pipe)"),
        (
            std::path::PathBuf::from("/dev/zero"),
            std::path::PathBuf::from("/dev/zero"),
            "a character device",
        ),
    ];
    let mut configured = bench.ws.export.display().to_string();
    for (export, named, kind) in cases {
        let case = export.display().to_string();
        bench.ws.edit_config(|text| {
            text.replacen(
                &format!("path = \"{configured}\""),
                &format!("path = \"{case}\""),
                1,
            )
        });
        configured = case.clone();
        let expected = format!(
            "export unreadable, nothing was changed: {}: is {kind}, not a regular file; only regular files are read",
            named.display()
        );
        let (code, stdout, _) = run_bounded(&bench.ws, &["check"], "check");
        assert_eq!(code, 1, "{case}: {stdout}");
        assert!(
            stdout.contains(&format!("problem: {expected}")),
            "{case}: {stdout}"
        );
        let (code, _, stderr) = run_bounded(&bench.ws, &["sync"], "sync");
        assert_eq!(code, 3, "{case}: {stderr}");
        assert!(
            stderr.contains(&format!("error: {expected}")),
            "{case}: {stderr}"
        );
        bench.assert_nothing_sent(&case);
        for n in 1..=4 {
            bench.assert_untouched(n, &case);
        }
    }
}

// ---------------------------------------------------------------------------
// Schema guard: a column the store was fed from vanishes.

/// The four leads renamed, with `companyname` (→ `customerProfile.name`,
/// fed by the baseline) under another name, as JSON Lines or CSV.
fn renamed_company_column(csv: bool) -> (&'static str, String) {
    if csv {
        let mut text =
            String::from("leadid,subject,estimatedamount,statecode,statuscode,company_name\n");
        for n in 1..=4 {
            text.push_str(&format!(
                "{},Lead {n} renamed,{},0,1,Company {n}\n",
                lead_id(n),
                100 * n
            ));
        }
        ("renamed.csv", text)
    } else {
        let records: Vec<Value> = (1..=4)
            .map(|n| {
                let mut record = baseline_record(n);
                record["subject"] = json!(format!("Lead {n} renamed"));
                let company = record
                    .as_object_mut()
                    .unwrap()
                    .remove("companyname")
                    .unwrap();
                record["company_name"] = company;
                record
            })
            .collect();
        ("renamed.jsonl", jsonl(&records))
    }
}

const SCHEMA_REFUSAL: &str = "the export's columns changed, nothing was changed: `customerProfile.name` (column companyname) was fed from the export before, but none of its columns is in it now; a renamed or dropped column would clear it on every referral. Fix the export or the mapping (mapping.headers, mapping.fields), or confirm a deliberate change with `referral-sync sync --allow-schema-change`";

#[test]
fn a_column_fed_before_that_vanishes_refuses_the_cycle_until_confirmed() {
    for csv in [false, true] {
        // Without the guard, `null` would clear the name on every referral.
        let bench = Bench::new("on_cleared = \"null\"\n");
        let (name, text) = renamed_company_column(csv);
        std::fs::write(bench.ws.export.join(name), text).unwrap();

        let check = bench.ws.run(&["check"]);
        check.assert_code(1);
        assert!(
            check
                .stdout()
                .contains(&format!("problem: {SCHEMA_REFUSAL}")),
            "{name}: {}",
            check.stdout()
        );
        let sync = bench.ws.run(&["sync"]);
        sync.assert_code(3);
        assert!(
            sync.stderr().contains(&format!("error: {SCHEMA_REFUSAL}")),
            "{name}: {}",
            sync.stderr()
        );
        bench.assert_nothing_sent(name);
        for n in 1..=4 {
            bench.assert_untouched(n, name);
        }
        assert_eq!(bench.last_cycle()["outcome"], "failed", "{name}");
        // A dry run is refused the same way.
        bench.ws.run(&["sync", "--dry-run"]).assert_code(3);
        // A confirmed cycle that fails on something else confirms nothing:
        // the field stays guarded.
        let cut = bench.ws.export.join("cut.jsonl");
        std::fs::write(&cut, "{\"leadid\": \"x\"").unwrap();
        bench
            .ws
            .run(&["sync", "--allow-schema-change"])
            .assert_code(3);
        std::fs::remove_file(&cut).unwrap();
        let again = bench.ws.run(&["sync"]);
        again.assert_code(3);
        assert!(
            again.stderr().contains(SCHEMA_REFUSAL),
            "{name}: {}",
            again.stderr()
        );
        bench.assert_nothing_sent(name);

        // Confirmed: the change goes through, and is not guarded again.
        bench
            .ws
            .run(&["sync", "--allow-schema-change"])
            .assert_code(0);
        for n in 1..=4 {
            bench.assert_synced(n, name);
            let live = bench.emulator.referral_for(&lead_id(n));
            // Cleared, as confirmed (`on_cleared = "null"`).
            assert!(live["customerProfile"]["name"].is_null(), "{name}: {live}");
        }
        bench.emulator.clear_requests();
        bench.ws.run(&["sync"]).assert_code(0);
        bench.assert_nothing_sent(name);
    }
}

#[test]
fn new_unmapped_columns_are_logged_once_at_info() {
    let bench = Bench::new("");
    let mut records: Vec<Value> = (1..=4).map(baseline_record).collect();
    records[2]["new_region"] = json!("EMEA");
    std::fs::write(bench.ws.export.join("leads.jsonl"), jsonl(&records)).unwrap();
    let line = "new column in the export; the mapping does not read it column=new_region";
    let first = bench.ws.run(&["sync"]);
    first.assert_code(0);
    assert!(first.stderr().contains(line), "{}", first.stderr());
    let again = bench.ws.run(&["sync"]);
    again.assert_code(0);
    assert!(!again.stderr().contains("new column"), "{}", again.stderr());
}

// ---------------------------------------------------------------------------
// Values the referral cannot carry as written.

/// The four leads renamed, with lead 1's amount a JSON number beyond a
/// double, lead 2's negative, lead 3's closing date .NET's "no date"; and
/// a new lead whose id holds a newline and an escape sequence.
fn hostile_values() -> String {
    let mut records: Vec<Value> = (1..=4)
        .map(|n| {
            let mut record = baseline_record(n);
            record["subject"] = json!(format!("Lead {n} renamed"));
            record
        })
        .collect();
    records[0]["estimatedamount"] = json!("__BIG__");
    records[1]["estimatedamount"] = json!(-5000);
    records[2]["estimatedclosedate"] = json!("0001-01-01");
    let mut forged = baseline_record(5);
    forged["leadid"] = json!("L-5\nunchanged  L-6\u{1b}[2J");
    records.push(forged);
    jsonl(&records).replace("\"__BIG__\"", "123456789012345678901234567890")
}

#[test]
fn values_a_referral_cannot_carry_are_refused_per_record_and_printed_escaped() {
    let bench = Bench::new("");
    std::fs::write(bench.ws.export.join("leads.jsonl"), hostile_values()).unwrap();
    let at = |line: u32, n: u32| {
        format!(
            "{}:{line} (record {line}) [{}]",
            bench.at("leads.jsonl"),
            lead_id(n)
        )
    };
    let messages = [
        format!(
            "{}: details.dealValue (column estimatedamount, value \"123456789012345678901234567890\"): 123456789012345678901234567890 does not fit in a 64-bit integer",
            at(1, 1)
        ),
        format!(
            "{}: details.dealValue (column estimatedamount, value \"-5000\"): a negative amount; set allow_negative = true on the field if the CRM means it",
            at(2, 2)
        ),
        format!(
            "{}: details.closingDateTime (column estimatedclosedate, value \"0001-01-01\"): 0001-01-01 is before 1753-01-01, the earliest date Dynamics 365 holds: a placeholder for no date? List it in the field's empty_dates to read it as empty",
            at(3, 3)
        ),
        format!(
            "{}:5 (record 5): externalReferenceId (column leadid, value \"L-5\\nunchanged  L-6\\u{{1b}}[2J\"): the id holds the control character U+000A; an external id must be printable",
            bench.at("leads.jsonl")
        ),
    ];

    let check = bench.ws.run(&["check"]);
    check.assert_code(1);
    for message in &messages {
        assert!(
            check.stdout().contains(&format!("problem: {message}")),
            "check did not say {message}:\n{}",
            check.stdout()
        );
    }
    let sync = bench.ws.run(&["sync"]);
    sync.assert_code(1);
    for message in &messages {
        assert!(
            sync.stdout().contains(&format!("    error: {message}")),
            "sync did not print {message}:\n{}",
            sync.stdout()
        );
    }
    for output in [check.stdout(), sync.stdout(), sync.stderr()] {
        assert!(
            !output.contains('\u{1b}'),
            "a raw ESC reached the terminal:\n{output}"
        );
        assert!(
            !output
                .lines()
                .any(|line| line.starts_with("unchanged  L-6")),
            "the id forged a line:\n{output}"
        );
    }
    for n in 1..=3 {
        bench.assert_untouched(n, "hostile values");
    }
    bench.assert_synced(4, "hostile values");
    assert!(bench.emulator.requests_with_method("POST").is_empty());
    assert_eq!(bench.ws.all_stored().len(), 4);
}

#[test]
fn a_listed_sentinel_date_is_read_as_empty_and_a_negative_amount_allowed() {
    let bench = Bench::new("");
    bench.ws.edit_config(|text| {
        format!(
            "{text}\n[mapping.fields.\"details.closingDateTime\"]\nfrom = \"estimatedclosedate\"\ntype = \"date\"\nempty_dates = [\"0001-01-01\"]\n\n[mapping.fields.\"details.dealValue\"]\nfrom = \"estimatedamount\"\ntype = \"money\"\nallow_negative = true\n"
        )
    });
    let records: Vec<Value> = (1..=4)
        .map(|n| {
            let mut record = baseline_record(n);
            record["subject"] = json!(format!("Lead {n} renamed"));
            record["estimatedclosedate"] = json!("0001-01-01T00:00:00Z");
            record
        })
        .collect();
    let mut records = records;
    records[1]["estimatedamount"] = json!("($1,200.00)");
    std::fs::write(bench.ws.export.join("leads.jsonl"), jsonl(&records)).unwrap();
    bench.ws.run(&["sync"]).assert_code(0);
    for n in 1..=4 {
        bench.assert_synced(n, "sentinel");
        let live = bench.emulator.referral_for(&lead_id(n));
        assert_eq!(live["details"].get("closingDateTime"), None, "{live}");
    }
    let live = bench.emulator.referral_for(&lead_id(2));
    assert_eq!(live["details"]["dealValue"], json!(-1200));
}

#[test]
fn a_file_name_with_control_characters_is_printed_escaped() {
    let bench = Bench::new("");
    let name = "cut\nerror: forged\u{1b}[2J.jsonl";
    std::fs::write(bench.ws.export.join(name), "{\"leadid\": \"x\"").unwrap();
    let escaped = "cut\\nerror: forged\\u{1b}[2J.jsonl";
    let check = bench.ws.run(&["check"]);
    check.assert_code(1);
    let sync = bench.ws.run(&["sync"]);
    sync.assert_code(3);
    // The command's own lines; log lines are tracing's (it escapes ESC
    // on a terminal, not newlines).
    let error_line: String = sync
        .stderr()
        .lines()
        .filter(|line| line.starts_with("error: ") && line.contains("export unreadable"))
        .collect();
    for (what, output) in [("check", check.stdout()), ("sync", error_line)] {
        assert!(output.contains(escaped), "{what}: {output}");
        assert!(!output.contains('\u{1b}'), "{what}: a raw ESC: {output}");
        assert!(
            !output.lines().any(|line| line.starts_with("error: forged")),
            "{what}: a forged line: {output}"
        );
    }
    bench.assert_nothing_sent("file name");
}
