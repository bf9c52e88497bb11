//! The shipped mappings applied to the sample exports in `examples/`.
//!
//! The records are built here the way the export readers deliver them: the
//! OData page's `value` objects as they are, and the CSV rows as strings
//! under logical names (display headers translated with the mapping's
//! `headers`, matched ignoring case), an empty cell as null.

use std::path::{Path, PathBuf};

use referral_sync::export::{Record, RecordLocation};
use referral_sync::mapping::{Mapper, MappingSpec};
use referral_sync::model::Entity;
use serde_json::{Map, Value, json};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

fn odata_records(name: &str) -> Vec<Record> {
    let path = example(name);
    let page: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let Value::Array(records) = &page["value"] else {
        panic!("{name} has no value array");
    };
    records
        .iter()
        .enumerate()
        .map(|(index, record)| Record {
            fingerprint: Default::default(),
            fields: record.as_object().unwrap().clone(),
            location: RecordLocation {
                file: path.clone(),
                line: 1,
                ordinal: index as u64 + 1,
            },
        })
        .collect()
}

fn csv_records(name: &str, spec: &MappingSpec) -> Vec<Record> {
    let path = example(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let logical = |header: &str| {
        spec.headers
            .iter()
            .find(|(display, _)| display.trim().eq_ignore_ascii_case(header.trim()))
            .map(|(_, column)| column.clone())
            .unwrap_or_else(|| header.to_owned())
    };
    let headers: Vec<String> = reader.headers().unwrap().iter().map(logical).collect();
    reader
        .records()
        .enumerate()
        .map(|(index, row)| {
            let row = row.unwrap();
            let fields: Map<String, Value> = headers
                .iter()
                .zip(row.iter())
                .map(|(column, cell)| {
                    let value = if cell.is_empty() {
                        Value::Null
                    } else {
                        json!(cell)
                    };
                    (column.clone(), value)
                })
                .collect();
            Record {
                fingerprint: Default::default(),
                fields,
                location: RecordLocation {
                    file: path.clone(),
                    // Only used in messages here; the reader owns real line numbers.
                    line: row.position().map_or(0, |p| p.line()),
                    ordinal: index as u64 + 1,
                },
            }
        })
        .collect()
}

#[test]
fn every_sample_opportunity_maps_to_its_referral() {
    let spec = MappingSpec::default_for(Entity::Opportunity);
    let mapper = Mapper::new(&spec, Entity::Opportunity, "USD").unwrap();
    let expected = [
        json!({
            "externalReferenceId": "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
            "name": "Contoso supply chain on Dynamics 365",
            "status": "Active",
            "substatus": "Accepted",
            "details": {
                "dealValue": 50000,
                "currency": "USD",
                "closingDateTime": "2024-11-14T00:00:00Z",
                "notes": "Customer is looking to leverage Dynamics 365 to manage their supply chain."
            },
            "customerProfile": {"name": "Contoso Customer Inc"}
        }),
        json!({
            "externalReferenceId": "3f2504e0-4f89-41d3-9a0c-0305e82c3302",
            "name": "Fabrikam data platform migration",
            "status": "Active",
            "substatus": "Accepted",
            "details": {
                "dealValue": 125000,
                "currency": "USD",
                "closingDateTime": "2024-09-30T00:00:00Z",
                "notes": "Lift-and-shift of the on-premises warehouse, then modernise."
            },
            "customerProfile": {"name": "Fabrikam, Inc."}
        }),
        json!({
            "externalReferenceId": "3f2504e0-4f89-41d3-9a0c-0305e82c3303",
            "name": "Northwind field service rollout",
            "status": "Closed",
            "substatus": "Won",
            "details": {
                "dealValue": 42000.5,
                "currency": "USD",
                "closingDateTime": "2024-06-15T00:00:00Z",
                "notes": "Closed after pilot in two regions."
            },
            "customerProfile": {"name": "Northwind Traders"}
        }),
        json!({
            "externalReferenceId": "3f2504e0-4f89-41d3-9a0c-0305e82c3304",
            "name": "Tailspin security assessment",
            "status": "Closed",
            "substatus": "Lost",
            "statusReason": "Out-Sold",
            "details": {
                "dealValue": 18000,
                "currency": "USD",
                "closingDateTime": "2024-07-01T00:00:00Z",
                "notes": "Customer chose another vendor."
            },
            "customerProfile": {"name": "Tailspin Toys"}
        }),
        json!({
            "externalReferenceId": "3f2504e0-4f89-41d3-9a0c-0305e82c3305",
            "name": "Wide World Importers — Copilot pilot",
            "status": "Active",
            "substatus": "Accepted",
            "details": {
                "dealValue": 9900,
                "currency": "EUR",
                "closingDateTime": "2025-01-31T00:00:00Z",
                "notes": "Pilot for 50 seats; \"quotes\", commas, and ünïcödé in notes."
            },
            "customerProfile": {"name": "Wide World Importers"}
        }),
    ];
    let records = odata_records("opportunities.odata.json");
    assert_eq!(records.len(), expected.len());
    for (record, expected) in records.iter().zip(expected) {
        let mapped = mapper.map(record).unwrap();
        assert_eq!(mapped.external_id, expected["externalReferenceId"]);
        assert_eq!(mapped.referral_id, None);
        assert_eq!(mapped.document, expected, "record {}", record.location);
        // Whole amounts are integers, so they equal what Partner Center
        // returns (`"dealValue": 50000`).
        let deal_value = &mapped.document["details"]["dealValue"];
        assert_eq!(
            deal_value.is_i64(),
            deal_value.as_f64().is_some_and(|v| v.fract() == 0.0)
        );
    }
}

fn expected_leads(currency_of_dollars: &str) -> [Value; 3] {
    [
        json!({
            "externalReferenceId": "9a1c2b3d-0000-4000-8000-00000000a001",
            "name": "Adatum cloud migration",
            "status": "New",
            "substatus": "Received",
            "details": {
                "dealValue": 75000,
                "currency": currency_of_dollars,
                "closingDateTime": "2024-12-31T00:00:00Z",
                "notes": "Wants to move 40 VMs; budget approved."
            },
            "customerProfile": {
                "name": "Adatum Corporation",
                "address": {
                    "addressLine1": "One Microsoft Way",
                    "city": "Redmond",
                    "state": "WA",
                    "postalCode": "98052",
                    "country": "US"
                },
                "team": [{
                    "firstName": "Sue",
                    "lastName": "Smith",
                    "email": "sue.smith@adatum.example",
                    "phoneNumber": "1234567890"
                }]
            }
        }),
        json!({
            "externalReferenceId": "9a1c2b3d-0000-4000-8000-00000000a002",
            "name": "Litware analytics",
            "status": "Active",
            "substatus": "Accepted",
            "details": {
                "dealValue": 20000,
                "currency": "EUR",
                "closingDateTime": "2025-03-15T00:00:00Z",
                "notes": "Follow-up after the webinar,\nasked for a demo."
            },
            "customerProfile": {
                "name": "Litware, Inc.",
                "address": {
                    "addressLine1": "12 Harbour Rd",
                    "city": "Dublin",
                    "postalCode": "D02 X285",
                    "country": "IE"
                },
                "team": [{
                    "firstName": "Joe",
                    "lastName": "Hansen",
                    "email": "joe.hansen@litware.example",
                    "phoneNumber": "4035698759"
                }]
            }
        }),
        json!({
            "externalReferenceId": "9a1c2b3d-0000-4000-8000-00000000a003",
            "name": "Proseware ERP",
            "status": "Closed",
            "substatus": "Declined",
            "statusReason": "No Longer Interested",
            "details": {
                "dealValue": 30000,
                "currency": currency_of_dollars,
                "closingDateTime": "2025-01-20T00:00:00Z",
                "notes": "Not a fit right now."
            },
            "customerProfile": {
                "name": "Proseware",
                "address": {
                    "addressLine1": "Av. Paulista 1000",
                    "city": "São Paulo",
                    "state": "SP",
                    "postalCode": "01310-100",
                    "country": "BR"
                },
                "team": [{
                    "firstName": "Ana",
                    "lastName": "Lima",
                    "email": "ana.lima@proseware.example",
                    "phoneNumber": "+55 11 5555 0101"
                }]
            }
        }),
    ]
}

#[test]
fn every_sample_lead_maps_to_its_referral() {
    let spec = MappingSpec::default_for(Entity::Lead);
    let records = csv_records("leads.csv", &spec);
    assert_eq!(records.len(), 3);
    // Every header of the sample is translated to a column the mapping knows.
    for column in records[0].fields.keys() {
        assert!(
            column
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "header not translated: {column:?}"
        );
    }
    // `$` is read as the default currency when that is a dollar currency,
    // else as USD; `€` is EUR whatever the default.
    for (default_currency, dollars) in [("USD", "USD"), ("CAD", "CAD"), ("EUR", "USD")] {
        let mapper = Mapper::new(&spec, Entity::Lead, default_currency).unwrap();
        for (record, expected) in records.iter().zip(expected_leads(dollars)) {
            let mapped = mapper.map(record).unwrap();
            assert_eq!(
                mapped.document, expected,
                "record {} with default currency {default_currency}",
                record.location
            );
        }
    }
}

#[test]
fn a_broken_sample_row_reports_every_problem_with_its_place() {
    let spec = MappingSpec::default_for(Entity::Lead);
    let mapper = Mapper::new(&spec, Entity::Lead, "USD").unwrap();
    let mut record = csv_records("leads.csv", &spec).remove(1);
    record
        .fields
        .insert("estimatedclosedate".into(), json!("2/30/2025"));
    record
        .fields
        .insert("statuscode".into(), json!("Nurturing"));
    record
        .fields
        .insert("address1_country".into(), json!("Irland"));
    let error = mapper.map(&record).unwrap_err();
    assert_eq!(
        error.external_id.as_deref(),
        Some("9a1c2b3d-0000-4000-8000-00000000a002")
    );
    let message = error.to_string();
    let place = format!(
        "{} [9a1c2b3d-0000-4000-8000-00000000a002]: ",
        record.location
    );
    assert!(message.starts_with(&place), "{message}");
    let expected_fragments = [
        "customerProfile.address.country (column address1_country, value \"Irland\"): unknown country `Irland`",
        "details.closingDateTime (column estimatedclosedate, value \"2/30/2025\"): no such date",
        "status (column statuscode, value \"Nurturing\"): unknown status reason `Nurturing`",
    ];
    for fragment in expected_fragments {
        assert!(message.contains(fragment), "{fragment:?} not in {message}");
    }
    assert_eq!(error.problems.len(), 3);
}
