//! The export readers over a corpus of good and bad export files in
//! `tests/fixtures/export/`, plus generated exports too large to commit.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use referral_sync::export::{
    ExportChecks, ExportError, ExportFormat, ExportOptions, ExportSummary, FileChange,
    FinalLineEnd, Record, read_export,
};
use referral_sync::model::Entity;
use serde_json::{Map, Value, json};

/// Counts the bytes live on the current thread, so a test can check that a
/// read's memory does not grow with the export.
struct ThreadCountingAllocator;

thread_local! {
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
    static PEAK_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn note_allocation(delta: isize) {
    // try_with: the thread's counters may already be gone while it exits.
    let _ = LIVE_BYTES.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK_BYTES.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl GlobalAlloc for ThreadCountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_allocation(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: ThreadCountingAllocator = ThreadCountingAllocator;

/// Runs `work` and returns its result with the most memory it had live at
/// once on this thread, beyond what was live when it started.
fn peak_memory<T>(work: impl FnOnce() -> T) -> (T, isize) {
    let start = LIVE_BYTES.with(Cell::get);
    PEAK_BYTES.with(|peak| peak.set(start));
    let result = work();
    let peak = PEAK_BYTES.with(Cell::get);
    (result, peak - start)
}

fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/export")
        .join(relative)
}

fn options(path: impl Into<PathBuf>) -> ExportOptions {
    ExportOptions {
        path: path.into(),
        format: ExportFormat::Auto,
        entity: Entity::Opportunity,
        header_aliases: BTreeMap::new(),
        checks: ExportChecks::default(),
    }
}

fn aliases(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|&(display, logical)| (display.to_owned(), logical.to_owned()))
        .collect()
}

/// Display names of the leads view; `Business Phone` is left out on
/// purpose, to show an unaliased header kept as it is.
fn lead_aliases() -> BTreeMap<String, String> {
    aliases(&[
        ("Lead", "leadid"),
        ("Topic", "subject"),
        ("First Name", "firstname"),
        ("Last Name", "lastname"),
        ("Company Name", "companyname"),
        ("Email", "emailaddress1"),
        ("Street 1", "address1_line1"),
        ("City", "address1_city"),
        ("State/Province", "address1_stateorprovince"),
        ("ZIP/Postal Code", "address1_postalcode"),
        ("Country/Region", "address1_country"),
        ("est. value", "estimatedamount"),
        ("Est. Close Date", "estimatedclosedate"),
        ("Description", "description"),
        ("STATUS", "statecode"),
        ("Status Reason", "statuscode"),
    ])
}

fn opportunity_aliases() -> BTreeMap<String, String> {
    aliases(&[
        ("Opportunity", "opportunityid"),
        ("Topic", "name"),
        ("Est. Revenue", "estimatedvalue"),
        ("Est. Close Date", "estimatedclosedate"),
        ("Status", "statecode"),
        ("Status Reason", "statuscode"),
        ("Description", "description"),
    ])
}

fn read_all(options: &ExportOptions) -> Result<(ExportSummary, Vec<Record>), ExportError> {
    let mut records = Vec::new();
    let summary = read_export(options, &mut |record| {
        records.push(record);
        ControlFlow::Continue(())
    })?;
    assert_eq!(summary.records, records.len() as u64);
    Ok((summary, records))
}

/// Reads an export that must fail; returns the error and the records
/// handed over before it.
fn read_failing(options: &ExportOptions) -> (ExportError, Vec<Record>) {
    let mut records = Vec::new();
    let result = read_export(options, &mut |record| {
        records.push(record);
        ControlFlow::Continue(())
    });
    match result {
        Err(error) => (error, records),
        Ok(summary) => panic!("{} read without error: {summary:?}", options.path.display()),
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(fields) => fields,
        other => panic!("not an object: {other}"),
    }
}

/// `(file, line, ordinal)` of each record.
fn locations(records: &[Record]) -> Vec<(PathBuf, u64, u64)> {
    records
        .iter()
        .map(|record| {
            let location = &record.location;
            (location.file.clone(), location.line, location.ordinal)
        })
        .collect()
}

fn file_lengths(summary: &ExportSummary) -> Vec<(PathBuf, u64)> {
    summary
        .files
        .iter()
        .map(|fingerprint| (fingerprint.path.clone(), fingerprint.len))
        .collect()
}

fn on_disk(paths: &[&Path]) -> Vec<(PathBuf, u64)> {
    paths
        .iter()
        .map(|path| (path.to_path_buf(), fs::metadata(path).unwrap().len()))
        .collect()
}

#[test]
fn odata_sample_is_read_record_by_record_at_its_braces() {
    let path = fixture("opportunities.odata.json");
    let (summary, records) = read_all(&options(&path)).unwrap();

    let expected_locations: Vec<_> = [4, 29, 54, 79, 104]
        .into_iter()
        .zip(1..)
        .map(|(line, ordinal)| (path.clone(), line, ordinal))
        .collect();
    assert_eq!(locations(&records), expected_locations);
    assert_eq!(file_lengths(&summary), on_disk(&[&path]));
    assert!(summary.files[0].modified.is_some());

    // Field for field what a whole-document parse of the small sample gives.
    let whole: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let expected: Vec<&Value> = whole["value"].as_array().unwrap().iter().collect();
    let actual: Vec<Value> = records
        .iter()
        .map(|record| Value::Object(record.fields.clone()))
        .collect();
    assert_eq!(actual.iter().collect::<Vec<_>>(), expected);

    assert_eq!(
        Value::Object(records[4].fields.clone()),
        json!({
            "@odata.etag": "W/\"81052990\"",
            "opportunityid": "3f2504e0-4f89-41d3-9a0c-0305e82c3305",
            "name": "Wide World Importers \u{2014} Copilot pilot",
            "estimatedvalue": 9900.0,
            "estimatedvalue@OData.Community.Display.V1.FormattedValue": "$9,900.00",
            "estimatedclosedate": "2025-01-31",
            "description": "Pilot for 50 seats; \"quotes\", commas, and \u{fc}n\u{ef}c\u{f6}d\u{e9} in notes.",
            "statecode": 0,
            "statecode@OData.Community.Display.V1.FormattedValue": "Open",
            "statuscode": 1,
            "statuscode@OData.Community.Display.V1.FormattedValue": "In Progress",
            "_customerid_value": "b1f7a3c2-0000-4000-8000-000000000005",
            "_customerid_value@OData.Community.Display.V1.FormattedValue": "Wide World Importers",
            "_customerid_value@Microsoft.Dynamics.CRM.lookuplogicalname": "account",
            "_transactioncurrencyid_value": "7c1e0a55-1111-4000-8000-000000000001",
            "_transactioncurrencyid_value@OData.Community.Display.V1.FormattedValue": "Euro",
            "transactioncurrencyid": {
                "@odata.etag": "W/\"1001\"",
                "isocurrencycode": "EUR",
                "transactioncurrencyid": "7c1e0a55-1111-4000-8000-000000000001"
            },
            "modifiedon": "2024-05-01T10:00:00Z",
            "versionnumber": 81052990
        })
    );
}

#[test]
fn csv_sample_with_display_names_bom_and_a_quoted_newline() {
    let path = fixture("leads.csv");
    let mut options = options(&path);
    options.entity = Entity::Lead;
    options.header_aliases = lead_aliases();
    let (summary, records) = read_all(&options).unwrap();

    assert_eq!(
        locations(&records),
        [
            (path.clone(), 2, 1),
            (path.clone(), 3, 2),
            (path.clone(), 5, 3)
        ]
    );
    assert_eq!(file_lengths(&summary), on_disk(&[&path]));
    let fields: Vec<Map<String, Value>> = records.into_iter().map(|record| record.fields).collect();
    assert_eq!(
        fields,
        [
            object(json!({
                "leadid": "9a1c2b3d-0000-4000-8000-00000000a001",
                "subject": "Adatum cloud migration",
                "firstname": "Sue",
                "lastname": "Smith",
                "companyname": "Adatum Corporation",
                "emailaddress1": "sue.smith@adatum.example",
                "Business Phone": "1234567890",
                "address1_line1": "One Microsoft Way",
                "address1_city": "Redmond",
                "address1_stateorprovince": "WA",
                "address1_postalcode": "98052",
                "address1_country": "United States",
                "estimatedamount": "$75,000.00",
                "estimatedclosedate": "12/31/2024",
                "description": "Wants to move 40 VMs; budget approved.",
                "statecode": "Open",
                "statuscode": "New"
            })),
            object(json!({
                "leadid": "9a1c2b3d-0000-4000-8000-00000000a002",
                "subject": "Litware analytics",
                "firstname": "Joe",
                "lastname": "Hansen",
                "companyname": "Litware, Inc.",
                "emailaddress1": "joe.hansen@litware.example",
                "Business Phone": "4035698759",
                "address1_line1": "12 Harbour Rd",
                "address1_city": "Dublin",
                "address1_stateorprovince": null,
                "address1_postalcode": "D02 X285",
                "address1_country": "Ireland",
                "estimatedamount": "\u{20ac}20,000.00",
                "estimatedclosedate": "3/15/2025",
                "description": "Follow-up after the webinar,\nasked for a demo.",
                "statecode": "Open",
                "statuscode": "Contacted"
            })),
            object(json!({
                "leadid": "9a1c2b3d-0000-4000-8000-00000000a003",
                "subject": "Proseware ERP",
                "firstname": "Ana",
                "lastname": "Lima",
                "companyname": "Proseware",
                "emailaddress1": "ana.lima@proseware.example",
                "Business Phone": "+55 11 5555 0101",
                "address1_line1": "Av. Paulista 1000",
                "address1_city": "S\u{e3}o Paulo",
                "address1_stateorprovince": "SP",
                "address1_postalcode": "01310-100",
                "address1_country": "Brazil",
                "estimatedamount": "$30,000.00",
                "estimatedclosedate": "1/20/2025",
                "description": "Not a fit right now.",
                "statecode": "Disqualified",
                "statuscode": "No Longer Interested"
            })),
        ]
    );
}

#[test]
fn a_directory_of_pages_is_one_export_in_natural_name_order() {
    let directory = fixture("pages");
    let (summary, records) = read_all(&options(&directory)).unwrap();

    let page_1 = directory.join("page-1.json");
    let page_2 = directory.join("page-2.json");
    let page_10 = directory.join("page-10.json");
    // Hidden, partial, temporary and backup files and the subdirectory are
    // garbage that would fail the read if it were looked at.
    assert_eq!(
        file_lengths(&summary),
        on_disk(&[&page_1, &page_2, &page_10])
    );
    assert_eq!(
        locations(&records),
        [
            (page_1.clone(), 5, 1),
            (page_1, 13, 2),
            (page_2, 1, 3),
            (page_10.clone(), 4, 4),
            (page_10, 6, 5),
        ]
    );
    let fields: Vec<Map<String, Value>> = records.into_iter().map(|record| record.fields).collect();
    assert_eq!(
        fields,
        [
            object(json!({
                "@odata.etag": "W/\"5001\"",
                "opportunityid": "0a000000-0000-4000-8000-000000000001",
                "name": "Page one, first",
                "estimatedvalue": 1000.0,
                "statecode": 0,
                "statuscode": 1
            })),
            object(json!({
                "@odata.etag": "W/\"5002\"",
                "opportunityid": "0a000000-0000-4000-8000-000000000002",
                "name": "Page one, second",
                "estimatedvalue": null,
                "statecode": 1,
                "statuscode": 3
            })),
            object(json!({
                "@odata.etag": "W/\"5003\"",
                "opportunityid": "0a000000-0000-4000-8000-000000000003",
                "name": "Page two, only",
                "estimatedvalue": 250.5,
                "statecode": 2,
                "statuscode": 5,
                "statuscode@OData.Community.Display.V1.FormattedValue": "Out-Sold"
            })),
            object(json!({
                "opportunityid": "0a000000-0000-4000-8000-000000000004",
                "name": "Page ten, first",
                "transactioncurrencyid": {"isocurrencycode": "EUR"}
            })),
            object(json!({
                "opportunityid": "0a000000-0000-4000-8000-000000000005",
                "name": "Page ten, second"
            })),
        ]
    );
}

#[test]
fn csv_with_logical_headers_and_codes() {
    let path = fixture("opportunities-logical.csv");
    let (_, records) = read_all(&options(&path)).unwrap();
    assert_eq!(
        locations(&records),
        [
            (path.clone(), 2, 1),
            (path.clone(), 3, 2),
            (path.clone(), 4, 3)
        ]
    );
    let fields: Vec<Map<String, Value>> = records.into_iter().map(|record| record.fields).collect();
    assert_eq!(
        fields,
        [
            object(json!({
                "opportunityid": "0b000000-0000-4000-8000-000000000001",
                "name": "Contoso rollout",
                "estimatedvalue": "50000",
                "estimatedclosedate": "2024-11-14",
                "statecode": "0",
                "statuscode": "1",
                "description": "Plain description"
            })),
            object(json!({
                "opportunityid": "0b000000-0000-4000-8000-000000000002",
                "name": "Fabrikam migration",
                "estimatedvalue": "125000.00",
                "estimatedclosedate": "2024-09-30",
                "statecode": "1",
                "statuscode": "3",
                "description": null
            })),
            object(json!({
                "opportunityid": "0b000000-0000-4000-8000-000000000003",
                "name": "Northwind, phase 2",
                "estimatedvalue": null,
                "estimatedclosedate": "2024-06-15",
                "statecode": "2",
                "statuscode": "5",
                "description": "Lost to \"the other vendor\""
            })),
        ]
    );
}

#[test]
fn csv_with_display_headers_labels_crlf_and_quoted_newlines() {
    let path = fixture("opportunities-display.csv");
    let mut options = options(&path);
    options.header_aliases = opportunity_aliases();
    let (_, records) = read_all(&options).unwrap();
    // Row 1 spans lines 2–3; a blank line 5 comes before the last row.
    assert_eq!(
        locations(&records),
        [
            (path.clone(), 2, 1),
            (path.clone(), 4, 2),
            (path.clone(), 6, 3)
        ]
    );
    let fields: Vec<Map<String, Value>> = records.into_iter().map(|record| record.fields).collect();
    assert_eq!(
        fields,
        [
            object(json!({
                "opportunityid": "0c000000-0000-4000-8000-000000000001",
                "name": "Contoso rollout",
                "estimatedvalue": "$50,000.00",
                "estimatedclosedate": "11/14/2024",
                "statecode": "Open",
                "statuscode": "In Progress",
                "description": "Two lines:\r\nfirst, then second",
                "Owner": "Sue Smith"
            })),
            object(json!({
                "opportunityid": "0c000000-0000-4000-8000-000000000002",
                "name": "Fabrikam \"Data\" platform",
                "estimatedvalue": "\u{20ac}125,000.00",
                "estimatedclosedate": "9/30/2024",
                "statecode": "Won",
                "statuscode": "Won",
                "description": null,
                "Owner": null
            })),
            object(json!({
                "opportunityid": "0c000000-0000-4000-8000-000000000003",
                "name": "S\u{e3}o Paulo ERP",
                "estimatedvalue": "$42,000.50",
                "estimatedclosedate": "6/15/2024",
                "statecode": "Lost",
                "statuscode": "Out-Sold",
                "description": "a\nb\nc",
                "Owner": "Ana Lima"
            })),
        ]
    );
}

#[test]
fn json_lines_skip_blank_lines_and_accept_crlf() {
    let path = fixture("leads.jsonl");
    let (_, records) = read_all(&options(&path)).unwrap();
    assert_eq!(
        locations(&records),
        [
            (path.clone(), 1, 1),
            (path.clone(), 3, 2),
            (path.clone(), 5, 3)
        ]
    );
    let fields: Vec<Map<String, Value>> = records.into_iter().map(|record| record.fields).collect();
    assert_eq!(
        fields,
        [
            object(json!({
                "leadid": "0d000000-0000-4000-8000-000000000001",
                "subject": "Adatum",
                "estimatedamount": 75000,
                "statecode": 0,
                "statuscode": 1
            })),
            object(json!({
                "leadid": "0d000000-0000-4000-8000-000000000002",
                "subject": "Litware",
                "estimatedamount": null,
                "transactioncurrencyid": {"isocurrencycode": "EUR"}
            })),
            object(json!({
                "leadid": "0d000000-0000-4000-8000-000000000003",
                "subject": "Line\nbreak \"quoted\" \u{fc}n\u{ef}c\u{f6}d\u{e9}",
                "tags": ["a", "b"]
            })),
        ]
    );
}

#[test]
fn empty_and_extensionless_files_that_are_not_errors() {
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("edge/header-only.csv", &[]),
        ("edge/empty.jsonl", &[]),
        (
            "edge/leads-export",
            &[
                ("leadid", "0e000000-0000-4000-8000-000000000001"),
                ("leadid", "0e000000-0000-4000-8000-000000000002"),
            ],
        ),
        (
            "edge/page-export",
            &[("opportunityid", "0e000000-0000-4000-8000-000000000003")],
        ),
        (
            "edge/leads-export.txt",
            &[("leadid", "0e000000-0000-4000-8000-000000000004")],
        ),
    ];
    for &(file, expected_ids) in cases {
        let (summary, records) = read_all(&options(fixture(file))).unwrap();
        assert_eq!(summary.files.len(), 1, "{file}");
        let ids: Vec<(&str, &str)> = records
            .iter()
            .flat_map(|record| {
                ["leadid", "opportunityid"]
                    .into_iter()
                    .filter_map(|column| Some((column, record.fields.get(column)?.as_str()?)))
            })
            .collect();
        assert_eq!(ids, expected_ids, "{file}");
    }
}

#[test]
fn bad_files_are_errors_naming_file_line_and_column() {
    struct Case {
        file: &'static str,
        aliases: BTreeMap<String, String>,
        line: u64,
        column: u64,
        message: &'static str,
        /// Records handed over before the problem was met.
        handed_over: usize,
    }
    let case = |file, line, column, message, handed_over| Case {
        file,
        aliases: BTreeMap::new(),
        line,
        column,
        message,
        handed_over,
    };
    let cases = [
        case(
            "bad/empty.json",
            1,
            1,
            "no OData envelope: the file is empty",
            0,
        ),
        case(
            "bad/truncated.json",
            10,
            23,
            "EOF while parsing a string (the file is truncated, or still being written)",
            1,
        ),
        case("bad/invalid-utf8.json", 3, 75, "invalid UTF-8 byte 0xE9", 0),
        case("bad/invalid-utf8.csv", 3, 41, "invalid UTF-8 byte 0xE9", 1),
        case(
            "bad/invalid-utf8.jsonl",
            2,
            67,
            "invalid UTF-8 byte 0xE9",
            1,
        ),
        case(
            "bad/unbalanced-quote.csv",
            3,
            45,
            "quoted field is never closed: the quote opened here has no closing `\"`",
            1,
        ),
        case(
            "bad/ragged-row.csv",
            4,
            1,
            "row has 2 fields but the header has 3",
            1,
        ),
        case("bad/bad-line-3.jsonl", 3, 63, "expected value", 2),
        case(
            "bad/non-object-element.json",
            4,
            5,
            "expected a record object, found a string",
            1,
        ),
        case("bad/trailing-garbage.json", 2, 1, "trailing characters", 1),
        case(
            "bad/no-value-array.json",
            4,
            1,
            "not an OData page: it has no `value` array",
            0,
        ),
        Case {
            aliases: aliases(&[("Lead", "leadid"), ("Topic", "subject")]),
            ..case(
                "bad/duplicate-header.csv",
                1,
                12,
                "header `subject` of column 3 names `subject`, as column 2 does",
                0,
            )
        },
        case(
            "bad/empty-header.csv",
            1,
            8,
            "header of column 2 is empty",
            0,
        ),
    ];
    for case in cases {
        let path = fixture(case.file);
        let mut options = options(&path);
        options.header_aliases = case.aliases;
        let (error, records) = read_failing(&options);
        match &error {
            ExportError::Parse {
                path: error_path,
                line,
                column,
                message,
            } => {
                assert_eq!(
                    (error_path, *line, *column, message.as_str()),
                    (&path, case.line, case.column, case.message),
                    "{}",
                    case.file
                );
            }
            other => panic!("{}: expected a parse error, got {other:?}", case.file),
        }
        assert_eq!(
            error.to_string(),
            format!(
                "{}:{}:{}: {}",
                path.display(),
                case.line,
                case.column,
                case.message
            )
        );
        assert_eq!(records.len(), case.handed_over, "{}", case.file);
    }
}

#[test]
fn a_configured_format_applies_to_every_file() {
    let directory = tempfile::tempdir().unwrap();
    let lines = fs::read(fixture("leads.jsonl")).unwrap();
    fs::write(directory.path().join("a.json"), &lines).unwrap();
    fs::write(directory.path().join("b.csv"), &lines).unwrap();

    let mut options = options(directory.path());
    options.format = ExportFormat::Jsonl;
    let (summary, records) = read_all(&options).unwrap();
    assert_eq!(summary.files.len(), 2);
    assert_eq!(records.len(), 6);
    assert_eq!(records[3].location.file, directory.path().join("b.csv"));
    assert_eq!(records[3].location.ordinal, 4);

    // Left to the extension, the first file is taken for an OData page,
    // and its first line for the page's envelope.
    options.format = ExportFormat::Auto;
    let (error, _) = read_failing(&options);
    assert!(
        matches!(&error, ExportError::Parse { path, line: 1, column: 130, message }
            if *path == directory.path().join("a.json")
                && message == "not an OData page: it has no `value` array"),
        "{error:?}"
    );
}

#[test]
fn a_10_mb_string_field_is_read_whole_in_every_format() {
    let directory = tempfile::tempdir().unwrap();
    let big = "\u{e9}t\u{e9} ".repeat(2 * 1024 * 1024);
    assert!(big.len() > 10_000_000);
    let files = [
        (
            "big.json",
            format!(
                "{{\"value\": [\n{{\"id\": \"1\", \"description\": \"{big}\"}},\n\n{{\"id\": \"2\"}}\n]}}\n"
            ),
            4,
        ),
        (
            "big.jsonl",
            format!("{{\"id\": \"1\", \"description\": \"{big}\"}}\n\n{{\"id\": \"2\"}}\n"),
            3,
        ),
        ("big.csv", format!("id,description\n1,\"{big}\n\"\n2,\n"), 4),
    ];
    for (name, content, second_line) in files {
        let path = directory.path().join(name);
        fs::write(&path, content).unwrap();
        let (_, records) = read_all(&options(&path)).unwrap();
        assert_eq!(records.len(), 2, "{name}");
        let description = records[0].fields["description"].as_str().unwrap();
        assert_eq!(description.trim_end_matches('\n'), big, "{name}");
        assert_eq!(records[1].fields["id"], json!("2"), "{name}");
        assert_eq!(records[1].location.line, second_line, "{name}");
    }
}

#[test]
fn a_large_odata_export_streams_in_bounded_memory() {
    const RECORDS: u64 = 200_000;
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("opportunities.json");
    let mut out = BufWriter::new(File::create(&path).unwrap());
    write!(
        out,
        "{{\"@odata.context\": \"https://contoso.crm.dynamics.com/api/data/v9.2/$metadata#opportunities\",\n\"value\": ["
    )
    .unwrap();
    for number in 1..=RECORDS {
        let separator = if number == 1 { "" } else { "," };
        write!(
            out,
            "{separator}\n{{\"@odata.etag\": \"W/\\\"{number}\\\"\", \"opportunityid\": \"00000000-0000-4000-8000-{number:012}\", \"name\": \"Opportunity {number}\", \"estimatedvalue\": {number}.5, \"statecode\": 0, \"statuscode\": 1}}"
        )
        .unwrap();
    }
    writeln!(out, "\n]}}").unwrap();
    out.into_inner().unwrap().sync_all().unwrap();
    let file_len = fs::metadata(&path).unwrap().len();

    // The measure itself works: it sees a buffer the size of the bound.
    let ((), seen) = peak_memory(|| drop(vec![0_u8; 1_000_000]));
    assert!(seen >= 1_000_000, "{seen}");

    let mut count = 0;
    let mut last = None;
    let (summary, peak) = peak_memory(|| {
        read_export(&options(&path), &mut |record| {
            count += 1;
            assert_eq!(record.location.ordinal, count);
            assert_eq!(record.location.line, count + 2);
            last = Some(record.fields);
            ControlFlow::Continue(())
        })
    });
    let summary = summary.unwrap();
    assert_eq!(summary.records, RECORDS);
    assert_eq!(count, RECORDS);
    assert_eq!(summary.files[0].len, file_len);
    assert_eq!(
        last.unwrap()["opportunityid"],
        json!(format!("00000000-0000-4000-8000-{RECORDS:012}"))
    );
    // Holding the records, or the page as one value, would take well over
    // the file's own size; the reader needs its window (a 4 MiB block, more
    // only for a longer record) and one record.
    assert!(file_len > 30_000_000, "{file_len}");
    assert!(
        peak < 6 * 1024 * 1024,
        "peak {peak} bytes while reading {file_len} bytes"
    );
}

#[test]
fn the_callback_can_stop_the_read() {
    let directory = fixture("pages");
    let mut seen = Vec::new();
    let summary = read_export(&options(&directory), &mut |record| {
        seen.push(record.location.ordinal);
        if seen.len() == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(seen, [1, 2, 3]);
    assert_eq!(summary.records, 3);
    assert_eq!(
        file_lengths(&summary),
        on_disk(&[
            &directory.join("page-1.json"),
            &directory.join("page-2.json")
        ])
    );
}

#[test]
fn fingerprints_tell_a_changed_export_apart() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("leads.jsonl");
    fs::copy(fixture("leads.jsonl"), &path).unwrap();

    let (first, _) = read_all(&options(&path)).unwrap();
    let (again, _) = read_all(&options(&path)).unwrap();
    assert_eq!(first, again);

    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    writeln!(
        file,
        "{{\"leadid\": \"0d000000-0000-4000-8000-000000000004\"}}"
    )
    .unwrap();
    drop(file);
    let (changed, records) = read_all(&options(&path)).unwrap();
    assert_eq!(records.len(), 4);
    assert_ne!(first.files, changed.files);
    assert_eq!(changed.files[0].len, fs::metadata(&path).unwrap().len());
}

#[test]
fn a_file_that_grows_while_it_is_read_is_an_error() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("leads.jsonl");
    fs::copy(fixture("leads.jsonl"), &path).unwrap();

    let mut appended = false;
    let result = read_export(&options(&path), &mut |_| {
        if !appended {
            // The writer appends after the reader has buffered the file.
            let mut file = OpenOptions::new().append(true).open(&path).unwrap();
            writeln!(file, "{{\"leadid\": \"late\"}}").unwrap();
            appended = true;
        }
        ControlFlow::Continue(())
    });
    match result {
        Err(ExportError::Changed {
            path: changed,
            change,
        }) => {
            assert_eq!(changed, path);
            assert_eq!(change, FileChange::Modified);
        }
        other => panic!("expected Changed, got {other:?}"),
    }
}

#[test]
fn an_empty_directory_is_an_empty_export() {
    let directory = tempfile::tempdir().unwrap();
    let only_skipped = tempfile::tempdir().unwrap();
    fs::write(only_skipped.path().join(".hidden.json"), "[]").unwrap();
    fs::write(only_skipped.path().join("page-1.json.part"), "[]").unwrap();
    fs::create_dir(only_skipped.path().join("archive")).unwrap();

    for path in [directory.path(), only_skipped.path()] {
        match read_all(&options(path)) {
            Err(error @ ExportError::Empty { .. }) => {
                assert_eq!(
                    error.to_string(),
                    format!("{}: no export files found", path.display())
                );
            }
            other => panic!("expected Empty for {}, got {other:?}", path.display()),
        }
    }
}

#[test]
fn a_missing_path_is_an_io_error_naming_it() {
    let path = fixture("no-such-export.json");
    match read_all(&options(&path)) {
        Err(ExportError::Io {
            path: error_path,
            source,
        }) => {
            assert_eq!(error_path, path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn conflicting_header_aliases_are_refused() {
    let mut options = options(fixture("leads.csv"));
    options.header_aliases = aliases(&[("Topic", "subject"), (" topic", "name")]);
    match read_all(&options) {
        Err(error @ ExportError::ConflictingHeaderAlias { .. }) => assert_eq!(
            error.to_string(),
            "header alias `Topic` is configured for both `name` and `subject`"
        ),
        other => panic!("expected ConflictingHeaderAlias, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Hostile exports: half-written, too fresh, changed under the reader, not
// regular files.

fn two_pages(directory: &Path) {
    let page = |id: u32| {
        format!(
            "{{\"value\": [{{\"opportunityid\": \"0b000000-0000-4000-8000-00000000000{id}\"}}]}}\n"
        )
    };
    fs::write(directory.join("page-1.json"), page(1)).unwrap();
    fs::write(directory.join("page-2.json"), page(2)).unwrap();
}

#[test]
fn a_page_replaced_after_it_was_read_spoils_the_whole_read() {
    let directory = tempfile::tempdir().unwrap();
    two_pages(directory.path());
    let page_1 = directory.path().join("page-1.json");
    let mut replaced = false;
    let result = read_export(&options(directory.path()), &mut |record| {
        // While page 2 is read, a new export renames a new page 1 into place
        // (same size, so only the inode tells).
        if record.location.ordinal == 2 && !replaced {
            let fresh = directory.path().join("page-1.json.tmp");
            fs::copy(&page_1, &fresh).unwrap();
            fs::rename(&fresh, &page_1).unwrap();
            replaced = true;
        }
        ControlFlow::Continue(())
    });
    assert!(replaced);
    match result {
        Err(error @ ExportError::Changed { .. }) => {
            assert_eq!(
                error.to_string(),
                format!(
                    "{}: changed while the export was being read: it was replaced by another file",
                    page_1.display()
                )
            );
        }
        other => panic!("expected Changed, got {other:?}"),
    }
}

#[test]
fn a_page_added_or_removed_during_the_read_spoils_it() {
    for add in [true, false] {
        let directory = tempfile::tempdir().unwrap();
        two_pages(directory.path());
        let page_3 = directory.path().join("page-3.json");
        if !add {
            fs::write(&page_3, "{\"value\": []}\n").unwrap();
        }
        let result = read_export(&options(directory.path()), &mut |record| {
            if record.location.ordinal == 1 {
                if add {
                    fs::write(&page_3, "{\"value\": []}\n").unwrap();
                } else {
                    fs::remove_file(&page_3).unwrap();
                }
            }
            ControlFlow::Continue(())
        });
        let expected = if add {
            FileChange::Added
        } else {
            FileChange::Removed
        };
        match result {
            Err(ExportError::Changed { path, change }) => {
                assert_eq!((path, change), (page_3.clone(), expected))
            }
            other => panic!("add {add}: expected Changed, got {other:?}"),
        }
    }
}

#[test]
fn a_half_written_csv_or_jsonl_file_is_refused_at_its_last_line() {
    let directory = tempfile::tempdir().unwrap();
    let cases = [
        (
            "leads.csv",
            "leadid,description\nL-1,short\nL-2,longer",
            (3, 11),
        ),
        (
            "leads.jsonl",
            "{\"leadid\": \"L-1\"}\n{\"leadid\": \"L-2\", \"amount\": 12}",
            (2, 32),
        ),
    ];
    for (name, content, (line, column)) in cases {
        let path = directory.path().join(name);
        fs::write(&path, content).unwrap();
        let (error, _) = read_failing(&options(&path));
        assert_eq!(
            error.to_string(),
            format!(
                "{}:{line}:{column}: the last line has no line end: the file is cut short or still being written (set export.require_final_newline = false if the exporter writes none)",
                path.display()
            ),
            "{name}"
        );
        let mut lenient = options(&path);
        lenient.checks.final_line_end = FinalLineEnd::Optional;
        let (_, records) = read_all(&lenient).unwrap();
        assert_eq!(records.len(), 2, "{name}");
    }
}

#[test]
fn a_file_modified_within_the_settle_time_is_not_read() {
    let directory = tempfile::tempdir().unwrap();
    two_pages(directory.path());
    let page_2 = directory.path().join("page-2.json");
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    File::options()
        .write(true)
        .open(directory.path().join("page-1.json"))
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    let mut settling = options(directory.path());
    settling.checks.settle = std::time::Duration::from_secs(60);

    let mut handed_over = 0;
    let result = read_export(&settling, &mut |_| {
        handed_over += 1;
        ControlFlow::Continue(())
    });
    match result {
        Err(error @ ExportError::Unsettled { .. }) => {
            let text = error.to_string();
            let start = format!("{}: modified ", page_2.display());
            assert!(text.starts_with(&start), "{text}");
            assert!(
                text.contains("sooner than export.settle_secs = 60 allows: not read this cycle"),
                "{text}"
            );
        }
        other => panic!("expected Unsettled, got {other:?}"),
    }
    assert_eq!(handed_over, 0, "nothing is read from a fresh export");

    // Settled: read. From the future: not settled, and said so.
    File::options()
        .write(true)
        .open(&page_2)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    assert_eq!(read_all(&settling).unwrap().1.len(), 2);
    let tomorrow = std::time::SystemTime::now() + std::time::Duration::from_secs(86_400);
    File::options()
        .write(true)
        .open(&page_2)
        .unwrap()
        .set_modified(tomorrow)
        .unwrap();
    let (error, _) = read_failing(&settling);
    assert!(
        error.to_string().contains("modified in the future"),
        "{error}"
    );
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs `read` on a thread and fails the test if it has not returned
/// within five seconds: a read that blocks is the bug.
fn within_seconds<T: Send + 'static>(read: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(read());
    });
    result
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("the read blocked")
}

#[test]
fn only_regular_files_are_read_and_nothing_blocks() {
    let directory = tempfile::tempdir().unwrap();
    let fifo = directory.path().join("leads.csv");
    mkfifo(&fifo);
    let socket_dir = tempfile::tempdir().unwrap();
    two_pages(socket_dir.path());
    let socket = socket_dir.path().join("page-3.json");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let fifo_dir = tempfile::tempdir().unwrap();
    two_pages(fifo_dir.path());
    let fifo_page = fifo_dir.path().join("page-10.json");
    mkfifo(&fifo_page);

    let cases = [
        (fifo.clone(), fifo.clone(), "a FIFO (named pipe)"),
        (
            PathBuf::from("/dev/zero"),
            PathBuf::from("/dev/zero"),
            "a character device",
        ),
        (socket_dir.path().to_path_buf(), socket.clone(), "a socket"),
        (
            fifo_dir.path().to_path_buf(),
            fifo_page.clone(),
            "a FIFO (named pipe)",
        ),
    ];
    for (export, named, kind) in cases {
        let error = within_seconds({
            let export = export.clone();
            move || read_failing(&options(&export)).0
        });
        assert_eq!(
            error.to_string(),
            format!(
                "{}: is {kind}, not a regular file; only regular files are read",
                named.display()
            ),
            "{}",
            export.display()
        );
    }
}
