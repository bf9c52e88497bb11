//! The mapper as a whole: shipped defaults, record errors, overlay and
//! configuration errors. Conversions are tested beside their code; the
//! sample exports in `tests/mapping.rs`.

use serde_json::{Value, json};

use super::*;

fn record(fields: Value) -> Record {
    let Value::Object(fields) = fields else {
        panic!("a record is an object");
    };
    Record {
        fingerprint: Default::default(),
        fields,
        location: RecordLocation {
            file: "export/opportunities.json".into(),
            line: 7,
            ordinal: 3,
        },
    }
}

fn mapper(entity: Entity) -> Mapper {
    Mapper::new(&MappingSpec::default_for(entity), entity, "USD").unwrap()
}

/// The shipped default for `entity` with `overrides` (TOML) on top.
fn mapper_with(entity: Entity, overrides: &str) -> Result<Mapper, MappingConfigError> {
    let spec = MappingSpec::default_for(entity).overlay(MappingSpec::from_toml(overrides).unwrap());
    Mapper::new(&spec, entity, "USD")
}

fn problem(field: &str, column: Option<&str>, value: Option<&str>, reason: &str) -> FieldProblem {
    FieldProblem {
        field: field.to_owned(),
        column: column.map(str::to_owned),
        value: value.map(str::to_owned),
        reason: reason.to_owned(),
    }
}

fn problems(result: Result<MappedRecord, RecordError>) -> Vec<FieldProblem> {
    result.unwrap_err().problems
}

const ID: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";

/// An opportunity with everything the default mapping reads, the account
/// expanded.
fn full_opportunity() -> Value {
    json!({
        "opportunityid": "{3F2504E0-4F89-41D3-9A0C-0305E82C3301}",
        "name": "  Contoso ERP  ",
        "estimatedvalue": 50000.0,
        "estimatedclosedate": "2024-11-14",
        "description": "Phase one.\nPhase two.",
        "statecode": 2,
        "statuscode": 5,
        "statuscode@OData.Community.Display.V1.FormattedValue": "Out-Sold",
        "_customerid_value": "b1f7a3c2-0000-4000-8000-000000000001",
        "customerid_account": {
            "name": "Contoso Ltd (account)",
            "address1_line1": "One Microsoft Way",
            "address1_line2": "",
            "address1_city": "Redmond",
            "address1_stateorprovince": "WA",
            "address1_postalcode": "98052",
            "address1_country": "United States"
        },
        "transactioncurrencyid": {"isocurrencycode": "EUR"}
    })
}

#[test]
fn shipped_defaults_parse_and_validate() {
    for entity in [Entity::Opportunity, Entity::Lead] {
        let spec = MappingSpec::default_for(entity);
        assert!(
            !spec.fields.is_empty() && !spec.status.is_empty(),
            "{entity}"
        );
        assert_eq!(spec.referral_id_column, None, "{entity}");
        Mapper::new(&spec, entity, "USD").unwrap();
    }
}

#[test]
fn shipped_defaults_share_one_reference_text() {
    let section = |text: &'static str| {
        let start = text.find("# ─── Fields").unwrap();
        let end = text.find("# ─── Other settings").unwrap();
        &text[start..end]
    };
    assert_eq!(section(OPPORTUNITY_DEFAULT), section(LEAD_DEFAULT));
}

#[test]
fn shipped_headers_translate_the_display_names_of_the_spec() {
    let cases = [
        (Entity::Opportunity, "Opportunity", "opportunityid"),
        (Entity::Opportunity, "Topic", "name"),
        (Entity::Opportunity, "Est. Revenue", "estimatedvalue"),
        (Entity::Opportunity, "Est. Close Date", "estimatedclosedate"),
        (Entity::Opportunity, "Status", "statecode"),
        (Entity::Opportunity, "Status Reason", "statuscode"),
        (Entity::Lead, "Lead", "leadid"),
        (Entity::Lead, "Topic", "subject"),
        (Entity::Lead, "Company Name", "companyname"),
        (Entity::Lead, "Country/Region", "address1_country"),
        (Entity::Lead, "Est. Value", "estimatedamount"),
        (Entity::Lead, "Business Phone", "telephone1"),
    ];
    for (entity, header, column) in cases {
        let spec = MappingSpec::default_for(entity);
        assert_eq!(
            spec.headers.get(header).map(String::as_str),
            Some(column),
            "{entity} {header}"
        );
    }
}

#[test]
fn managed_paths_stop_at_lists_and_include_the_status() {
    assert_eq!(
        mapper(Entity::Opportunity).managed_paths().leaves(),
        [
            "/customerProfile/address/addressLine1",
            "/customerProfile/address/addressLine2",
            "/customerProfile/address/city",
            "/customerProfile/address/country",
            "/customerProfile/address/postalCode",
            "/customerProfile/address/state",
            "/customerProfile/name",
            "/details/closingDateTime",
            "/details/currency",
            "/details/dealValue",
            "/details/notes",
            "/externalReferenceId",
            "/name",
            "/status",
            "/statusReason",
            "/substatus",
        ]
    );
    let lead = mapper(Entity::Lead);
    let leaves = lead.managed_paths().leaves();
    assert!(
        leaves.contains(&"/customerProfile/team".to_owned()),
        "{leaves:?}"
    );
    assert!(
        !leaves
            .iter()
            .any(|leaf| leaf.starts_with("/customerProfile/team/"))
    );
    // …but which members of each element it fills is known.
    let filled: Vec<&str> = lead.managed_paths().element_members()["/customerProfile/team"]
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(filled, ["email", "firstName", "lastName", "phoneNumber"]);
    assert!(
        mapper(Entity::Opportunity)
            .managed_paths()
            .element_members()
            .is_empty()
    );

    // Without a status table nothing of the status is owned; a disabled
    // field is not owned either.
    let mut spec = MappingSpec::default_for(Entity::Opportunity);
    spec.status.clear();
    spec.fields.get_mut("details.notes").unwrap().enabled = false;
    let bare = Mapper::new(&spec, Entity::Opportunity, "USD").unwrap();
    let managed = bare.managed_paths();
    assert!(!managed.contains(&["status"]) && !managed.contains(&["statusReason"]));
    assert!(!managed.contains(&["details", "notes"]));
    assert!(managed.contains(&["externalReferenceId"]));
}

#[test]
fn an_opportunity_with_an_expanded_account_maps_every_field() {
    let mapped = mapper(Entity::Opportunity)
        .map(&record(full_opportunity()))
        .unwrap();
    assert_eq!(mapped.external_id, ID);
    assert_eq!(mapped.referral_id, None);
    assert_eq!(
        mapped.document,
        json!({
            "externalReferenceId": ID,
            "name": "Contoso ERP",
            "status": "Closed",
            "substatus": "Lost",
            "statusReason": "Out-Sold",
            "details": {
                "dealValue": 50000,
                "currency": "EUR",
                "closingDateTime": "2024-11-14T00:00:00Z",
                "notes": "Phase one.\nPhase two."
            },
            "customerProfile": {
                "name": "Contoso Ltd (account)",
                "address": {
                    "addressLine1": "One Microsoft Way",
                    "city": "Redmond",
                    "state": "WA",
                    "postalCode": "98052",
                    "country": "US"
                }
            }
        })
    );
}

#[test]
fn empty_columns_are_left_out_and_the_currency_falls_back_to_the_default() {
    let mapped = mapper(Entity::Opportunity)
        .map(&record(json!({
            "opportunityid": ID,
            "name": "Bare",
            "description": "   ",
            "estimatedvalue": null,
            "customerid_account": null
        })))
        .unwrap();
    assert_eq!(
        mapped.document,
        json!({
            "externalReferenceId": ID,
            "name": "Bare",
            "details": {"currency": "USD"}
        })
    );
    let cad = Mapper::new(
        &MappingSpec::default_for(Entity::Opportunity),
        Entity::Opportunity,
        "cad",
    )
    .unwrap();
    let label = record(json!({
        "opportunityid": ID,
        "estimatedvalue@OData.Community.Display.V1.FormattedValue": "$9,900.00"
    }));
    assert_eq!(
        cad.map(&label).unwrap().document["details"]["currency"],
        json!("CAD")
    );
}

#[test]
fn lead_team_members_without_values_are_dropped() {
    let lead = mapper(Entity::Lead);
    let without_contact = lead
        .map(&record(json!({
            "leadid": "9a1c2b3d-0000-4000-8000-00000000a001",
            "subject": "Topic",
            "firstname": "",
            "lastname": null
        })))
        .unwrap();
    assert_eq!(
        without_contact.document,
        json!({
            "externalReferenceId": "9a1c2b3d-0000-4000-8000-00000000a001",
            "name": "Topic",
            "details": {"currency": "USD"}
        })
    );
    let phone_only = lead
        .map(&record(
            json!({"leadid": "L-1", "telephone1": 4035698759u64}),
        ))
        .unwrap();
    assert_eq!(
        phone_only.document["customerProfile"],
        json!({"team": [{"phoneNumber": "4035698759"}]})
    );
    assert_eq!(phone_only.external_id, "L-1");
}

#[test]
fn status_reasons_are_read_from_codes_labels_and_annotations() {
    let lead = mapper(Entity::Lead);
    let cases = [
        (json!({"statuscode": 1}), json!(["New", "Received", null])),
        (
            json!({"statuscode": "2"}),
            json!(["Active", "Accepted", null]),
        ),
        (
            json!({"statuscode": 3.0, "statecode": 1}),
            json!(["Active", "Accepted", null]),
        ),
        (
            json!({"statuscode": "no longer interested", "statecode": "DISQUALIFIED"}),
            json!(["Closed", "Declined", "No Longer Interested"]),
        ),
        (
            json!({"statuscode@OData.Community.Display.V1.FormattedValue": "Cannot Contact"}),
            json!(["Closed", "Lost", "Cannot Contact"]),
        ),
        (
            json!({"statuscode": 7, "statecode@OData.Community.Display.V1.FormattedValue": "Disqualified"}),
            json!(["Closed", "Lost", "Canceled"]),
        ),
        (json!({"statecode": 0}), json!([null, null, null])),
        (json!({"statuscode": " "}), json!([null, null, null])),
    ];
    for (fields, expected) in cases {
        let mut fields = fields;
        fields["leadid"] = json!("L-1");
        let document = lead.map(&record(fields.clone())).unwrap().document;
        let got = json!([
            document.get("status"),
            document.get("substatus"),
            document.get("statusReason")
        ]);
        assert_eq!(got, expected, "record {fields}");
    }
}

#[test]
fn an_unknown_status_code_is_an_error_that_names_it() {
    let mut fields = full_opportunity();
    fields["statuscode"] = json!(100000001);
    fields["statuscode@OData.Community.Display.V1.FormattedValue"] = json!("Won via partner");
    let error = mapper(Entity::Opportunity)
        .map(&record(fields))
        .unwrap_err();
    assert_eq!(error.external_id.as_deref(), Some(ID));
    assert_eq!(
        error.problems,
        [problem(
            "status",
            Some("statuscode"),
            Some("100000001"),
            "unknown status code 100000001: no rule in mapping.status has it"
        )]
    );
    assert_eq!(
        error.to_string(),
        format!(
            "export/opportunities.json:7 (record 3) [{ID}]: status (column statuscode, value \"100000001\"): unknown status code 100000001: no rule in mapping.status has it"
        )
    );

    let label = record(json!({"opportunityid": ID, "statuscode": "Pending Approval"}));
    assert_eq!(
        problems(mapper(Entity::Opportunity).map(&label)),
        [problem(
            "status",
            Some("statuscode"),
            Some("Pending Approval"),
            "unknown status reason `Pending Approval`: no rule in mapping.status has that label or code"
        )]
    );
}

#[test]
fn a_state_that_disagrees_with_the_status_reason_is_an_error() {
    let cases = [(json!(0), "0"), (json!("0"), "0"), (json!("Open"), "Open")];
    for (state, raw) in cases {
        let mut fields = full_opportunity();
        fields["statuscode"] = json!(3);
        fields["statecode"] = state;
        assert_eq!(
            problems(mapper(Entity::Opportunity).map(&record(fields))),
            [problem(
                "status",
                Some("statecode"),
                Some(raw),
                &format!(
                    "status reason 3 (Won) belongs to state 1 (Won), not to the record's state `{raw}`"
                )
            )],
            "state {raw}"
        );
    }
}

#[test]
fn a_label_shared_by_two_states_needs_the_state() {
    let overrides = r#"
        [[status]]
        code = 8
        label = "Canceled"
        state = 1
        state_label = "Won"
        status = "Closed"
        substatus = "Expired"
    "#;
    let shared = mapper_with(Entity::Opportunity, overrides).unwrap();
    let with_state =
        record(json!({"opportunityid": ID, "statuscode": "canceled", "statecode": "Won"}));
    assert_eq!(
        shared.map(&with_state).unwrap().document["substatus"],
        json!("Expired")
    );
    let without_state = record(json!({"opportunityid": ID, "statuscode": "Canceled"}));
    assert_eq!(
        problems(shared.map(&without_state)),
        [problem(
            "status",
            Some("statuscode"),
            Some("Canceled"),
            "status reason `Canceled` is ambiguous: status codes 4 and 8 have that label, and the record has no statecode to tell them apart"
        )]
    );
    let wrong_state =
        record(json!({"opportunityid": ID, "statuscode": "Canceled", "statecode": 0}));
    assert_eq!(
        problems(shared.map(&wrong_state)),
        [problem(
            "status",
            Some("statecode"),
            Some("0"),
            "status reason 4 (Canceled) belongs to state 2 (Lost); status reason 8 (Canceled) belongs to state 1 (Won), not to the record's state `0`"
        )]
    );
}

#[test]
fn an_invalid_date_names_the_field_the_column_and_the_value() {
    let lead = mapper(Entity::Lead);
    let bad = record(json!({"leadid": "L-1", "estimatedclosedate": "2/30/2024"}));
    let error = lead.map(&bad).unwrap_err();
    assert_eq!(
        error.problems,
        [problem(
            "details.closingDateTime",
            Some("estimatedclosedate"),
            Some("2/30/2024"),
            "no such date"
        )]
    );
    assert!(
        error.to_string().ends_with(
            "details.closingDateTime (column estimatedclosedate, value \"2/30/2024\"): no such date"
        ),
        "{error}"
    );
}

#[test]
fn every_problem_of_a_record_is_reported() {
    let fields = json!({
        "opportunityid": ID,
        "estimatedvalue": "lots",
        "estimatedclosedate": "soon",
        "customerid_account": {"address1_country": "Atlantis"},
        "transactioncurrencyid": {"isocurrencycode": "XYZ"},
        "name": {"unexpected": "object"},
        "statuscode": 42
    });
    assert_eq!(
        problems(mapper(Entity::Opportunity).map(&record(fields))),
        [
            problem(
                "customerProfile.address.country",
                Some("customerid_account/address1_country"),
                Some("Atlantis"),
                "unknown country `Atlantis`: expected an ISO 3166 alpha-2 or alpha-3 code or an English country name"
            ),
            problem(
                "details.closingDateTime",
                Some("estimatedclosedate"),
                Some("soon"),
                "not a date: expected YYYY-MM-DD, M/D/YYYY or a date-time with a UTC offset such as 2024-05-30T21:59:01Z"
            ),
            problem(
                "details.currency",
                Some("transactioncurrencyid/isocurrencycode"),
                Some("XYZ"),
                "unknown ISO 4217 currency code `XYZ`"
            ),
            problem(
                "details.dealValue",
                Some("estimatedvalue"),
                Some("lots"),
                "not an amount: it has no digits"
            ),
            problem(
                "name",
                Some("name"),
                Some(r#"{"unexpected":"object"}"#),
                "expected text, found an object"
            ),
            problem(
                "status",
                Some("statuscode"),
                Some("42"),
                "unknown status code 42: no rule in mapping.status has it"
            ),
        ]
    );
}

#[test]
fn a_record_without_an_id_is_an_error_without_an_external_id() {
    for id in [None, Some(json!(null)), Some(json!("  "))] {
        let mut fields = json!({"name": "No id", "estimatedclosedate": "2/30/2024"});
        if let Some(id) = id.clone() {
            fields["opportunityid"] = id;
        }
        let error = mapper(Entity::Opportunity)
            .map(&record(fields))
            .unwrap_err();
        assert_eq!(error.external_id, None, "id {id:?}");
        assert_eq!(
            error.problems,
            [
                problem(
                    "externalReferenceId",
                    Some("opportunityid"),
                    None,
                    "the record has no id"
                ),
                problem(
                    "details.closingDateTime",
                    Some("estimatedclosedate"),
                    Some("2/30/2024"),
                    "no such date"
                ),
            ],
            "id {id:?}"
        );
        assert!(error.to_string().starts_with("export/opportunities.json:7 (record 3): externalReferenceId (column opportunityid): the record has no id;"), "{error}");
    }
    let object_id = record(json!({"opportunityid": {"id": 1}}));
    assert_eq!(
        problems(mapper(Entity::Opportunity).map(&object_id)),
        [problem(
            "externalReferenceId",
            Some("opportunityid"),
            Some(r#"{"id":1}"#),
            "not an id"
        )]
    );
}

#[test]
fn the_referral_id_column_gives_the_referral_id() {
    let with_column = mapper_with(
        Entity::Opportunity,
        r#"referral_id_column = "msp_referralid""#,
    )
    .unwrap();
    let cases = [
        (
            json!("{4111FFFC-F9EE-4D53-BBA6-569135228642}"),
            Ok(Some("4111fffc-f9ee-4d53-bba6-569135228642")),
        ),
        (json!(""), Ok(None)),
        (json!(null), Ok(None)),
        (
            json!("REF-17"),
            Err(problem(
                "id",
                Some("msp_referralid"),
                Some("REF-17"),
                "not a referral id: expected a GUID",
            )),
        ),
    ];
    for (value, expected) in cases {
        let fields = json!({"opportunityid": ID, "msp_referralid": value});
        let got = with_column
            .map(&record(fields))
            .map(|mapped| mapped.referral_id)
            .map_err(|error| error.problems);
        let expected = expected
            .map(|id| id.map(str::to_owned))
            .map_err(|p| vec![p]);
        assert_eq!(got, expected, "value {value}");
    }
    // The column is not part of the document.
    let mapped = with_column
        .map(&record(
            json!({"opportunityid": ID, "msp_referralid": "4111fffc-f9ee-4d53-bba6-569135228642"}),
        ))
        .unwrap();
    assert_eq!(
        mapped.document,
        json!({"externalReferenceId": ID, "details": {"currency": "USD"}})
    );
}

#[test]
fn defaults_constants_and_required_fields() {
    let overrides = r#"
        [fields."customerProfile.size"]
        type = "text"
        default = "10to50employees"

        [fields."details.closingDateTime"]
        from = ["estimatedclosedate", "actualclosedate"]
        type = "date"
        default = "12/31/2099"

        [fields.name]
        from = ["name", "new_shortname"]
        type = "text"
        required = true
    "#;
    let custom = mapper_with(Entity::Opportunity, overrides).unwrap();
    let mapped = custom
        .map(&record(
            json!({"opportunityid": ID, "name": "Named", "actualclosedate": "2024-01-02"}),
        ))
        .unwrap();
    assert_eq!(
        mapped.document["customerProfile"]["size"],
        json!("10to50employees")
    );
    assert_eq!(
        mapped.document["details"]["closingDateTime"],
        json!("2024-01-02T00:00:00Z")
    );
    let defaulted = custom
        .map(&record(json!({"opportunityid": ID, "name": "Named"})))
        .unwrap();
    assert_eq!(
        defaulted.document["details"]["closingDateTime"],
        json!("2099-12-31T00:00:00Z")
    );
    assert_eq!(
        problems(custom.map(&record(json!({"opportunityid": ID, "name": " "})))),
        [problem(
            "name",
            Some("name, new_shortname"),
            None,
            "required, but empty"
        )]
    );
}

#[test]
fn text_is_never_shortened() {
    let long = "x".repeat(5000);
    let mapped = mapper(Entity::Opportunity)
        .map(&record(
            json!({"opportunityid": ID, "description": format!(" {long} ")}),
        ))
        .unwrap();
    assert_eq!(mapped.document["details"]["notes"], json!(long));
}

#[test]
fn overlay_replaces_fields_whole_rules_by_code_and_merges_headers() {
    let base = MappingSpec::default_for(Entity::Opportunity);
    let overrides = MappingSpec::from_toml(
        r#"
        referral_id_column = "msp_referralid"

        [headers]
        "TOPIC " = "new_topic"
        "Partner Notes" = "new_partnernotes"

        [fields."details.notes"]
        from = "new_partnernotes"
        type = "text"

        [fields."customerProfile.address.addressLine2"]
        enabled = false

        [[status]]
        code = 2
        label = "On Hold"
        state = 0
        state_label = "Open"
        status = "New"
        substatus = "Pending"

        [[status]]
        code = 100000001
        label = "Parked"
        state = 0
        state_label = "Open"
        status = "New"
        substatus = "Pending"
        status_reason = { text = "Parked by sales" }
        "#,
    )
    .unwrap();
    let merged = base.clone().overlay(overrides);

    assert_eq!(merged.referral_id_column.as_deref(), Some("msp_referralid"));
    assert_eq!(merged.headers.get("Topic"), None);
    assert_eq!(
        merged.headers.get("TOPIC ").map(String::as_str),
        Some("new_topic")
    );
    assert_eq!(
        merged.headers.get("Partner Notes").map(String::as_str),
        Some("new_partnernotes")
    );
    assert_eq!(merged.headers.len(), base.headers.len() + 1);

    let notes = &merged.fields["details.notes"];
    assert_eq!(notes.from, ["new_partnernotes"]);
    assert_eq!(notes.kind.as_deref(), Some("text"));
    assert!(!notes.required, "a field is replaced whole, not merged");
    assert!(!merged.fields["customerProfile.address.addressLine2"].enabled);
    assert_eq!(merged.fields["name"], base.fields["name"]);
    assert_eq!(merged.fields.len(), base.fields.len());

    let codes: Vec<i64> = merged.status.iter().map(|rule| rule.code).collect();
    assert_eq!(codes, [1, 2, 3, 4, 5, 100000001]);
    assert_eq!(merged.status[1].status, "New");
    assert_eq!(
        merged.status[5].status_reason,
        Some(StatusReason::Text("Parked by sales".to_owned()))
    );

    let mapper = Mapper::new(&merged, Entity::Opportunity, "USD").unwrap();
    assert!(
        !mapper
            .managed_paths()
            .contains(&["customerProfile", "address", "addressLine2"])
    );
    let parked = mapper
        .map(&record(
            json!({"opportunityid": ID, "statuscode": 100000001, "new_partnernotes": "N"}),
        ))
        .unwrap();
    assert_eq!(
        parked.document,
        json!({
            "externalReferenceId": ID,
            "status": "New",
            "substatus": "Pending",
            "statusReason": "Parked by sales",
            "details": {"currency": "USD", "notes": "N"}
        })
    );

    // An empty overlay changes nothing.
    assert_eq!(base.clone().overlay(MappingSpec::default()), base);
}

#[test]
fn the_spec_round_trips_through_serde() {
    let spec = MappingSpec::default_for(Entity::Lead);
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(json["status"][3]["status_reason"], json!("label"));
    assert_eq!(
        json["fields"]["name"],
        json!({"from": ["subject"], "type": "text"})
    );
    let back: MappingSpec = serde_json::from_value(json).unwrap();
    assert_eq!(back, spec);
}

#[test]
fn malformed_toml_is_refused_when_read() {
    let cases = [
        (
            r#"[fields.name]
               form = "name""#,
            "unknown field `form`",
        ),
        (
            r#"[[status]]
               code = 1
               label = "New"
               state = 0
               state_label = "Open"
               status = "New"
               substatus = "Received"
               status_reason = "lable""#,
            r#"expected "label" or { text = "…" }"#,
        ),
        (
            r#"[[status]]
               code = 1
               label = "New"
               state = 0
               state_label = "Open"
               status = "New"
               substatus = "Received"
               status_reason = { txt = "x" }"#,
            "unknown field `txt`",
        ),
        (
            r#"[fields.name]
            from = 5"#,
            "a column name or a list of column names",
        ),
        (r#"colour = "blue""#, "unknown field `colour`"),
    ];
    for (text, fragment) in cases {
        let error = MappingSpec::from_toml(text).unwrap_err().to_string();
        assert!(error.contains(fragment), "{text}\n→ {error}");
    }
}

#[test]
fn unusable_mappings_are_config_errors_that_name_the_key() {
    let cases = [
        (
            r#"[fields."details.dealValue"]
               from = "estimatedvalue"
               type = "monye""#,
            r#"mapping.fields."details.dealValue".type: unknown type `monye`; expected one of text, number, integer, money, date, datetime, country, currency, email, bool, guid"#,
        ),
        (
            r#"[fields."details.dealValue"]
               from = "estimatedvalue""#,
            r#"mapping.fields."details.dealValue".type: missing; expected one of text, number"#,
        ),
        (
            r#"[fields."details..notes"]
               from = "description""#,
            r#"mapping.fields."details..notes": `details..notes` is not a field path: `` is not a member name"#,
        ),
        (
            r#"[fields."customerProfile.team[01].email"]
               from = "emailaddress1""#,
            r#"mapping.fields."customerProfile.team[01].email": `team[01]` is not `name[index]`"#,
        ),
        (
            r#"[fields.status]
               from = "statuscode""#,
            r#"mapping.fields."status": `status` cannot be mapped: the status table (mapping.status) sets it"#,
        ),
        (
            r#"[fields.statusReason]
               from = "new_reason""#,
            r#"mapping.fields."statusReason": `statusReason` cannot be mapped: the status table"#,
        ),
        (
            r#"[fields."consent.consentToContact"]
               from = "donotphone""#,
            r#"mapping.fields."consent.consentToContact": `consent` cannot be mapped: it is sent only when a referral is created"#,
        ),
        (
            r#"[fields.externalReferenceId]
               from = "name""#,
            r#"mapping.fields."externalReferenceId": `externalReferenceId` cannot be mapped: it is always the record's id"#,
        ),
        (
            r#"[fields."eTag"]
               from = "versionnumber""#,
            r#"mapping.fields."eTag": `eTag` cannot be mapped: Partner Center sets it"#,
        ),
        (
            r#"[fields."customerProfile.address"]
               from = "address1_composite"
               type = "text""#,
            r#"mapping.fields."customerProfile.address.addressLine1": conflicts with field `customerProfile.address`, which maps a single value where this field needs an object or a list"#,
        ),
        (
            r#"[fields."details.notes[0]"]
               from = "description"
               type = "text""#,
            r#"mapping.fields."details.notes[0]": conflicts with field `details.notes`, which maps a single value where this field needs an object or a list"#,
        ),
        (
            r#"[fields.name]
               from = ["name", "a//b"]
               type = "text""#,
            r#"mapping.fields."name".from[1]: `a//b` has an empty step"#,
        ),
        (
            r#"[fields."details.closingDateTime"]
               from = "estimatedclosedate"
               type = "date"
               default = "2/30/2024""#,
            r#"mapping.fields."details.closingDateTime".default: "2/30/2024": no such date"#,
        ),
        (
            r#"[fields."details.notes"]
               from = "description"
               default = " "
               type = "text""#,
            r#"mapping.fields."details.notes".default: is empty"#,
        ),
        (
            r#"[fields."details.notes"]
               type = "text""#,
            r#"mapping.fields."details.notes".from: no column to read"#,
        ),
        (
            r#"[[status]]
               code = 2
               label = "On Hold"
               state = 0
               state_label = "Open"
               status = "Activ"
               substatus = "Accepted""#,
            "mapping.status[code=2].status: `Activ` is not a status; expected one of None, New, Active, Closed",
        ),
        (
            r#"[[status]]
               code = 2
               label = "On Hold"
               state = 0
               state_label = "Open"
               status = "active"
               substatus = "Accepted""#,
            "mapping.status[code=2].status: `active` is not a status; did you mean `Active`?",
        ),
        (
            r#"[[status]]
               code = 2
               label = "On Hold"
               state = 0
               state_label = "Open"
               status = "Active"
               substatus = "Won""#,
            "mapping.status[code=2].substatus: `Won` does not go with status `Active`, which allows Accepted",
        ),
        (
            r#"[[status]]
               code = 2
               label = "On Hold"
               state = 0
               state_label = "Open"
               status = "New"
               substatus = "Pendng""#,
            "mapping.status[code=2].substatus: `Pendng` is not a substatus; expected one of None, Pending, Received, Accepted, Won, Lost, Declined, Expired",
        ),
        (
            r#"[[status]]
               code = 2
               label = "On Hold"
               state = 0
               state_label = "Open"
               status = "None"
               substatus = "None""#,
            "mapping.status[code=2].status: a referral cannot be moved to `None`",
        ),
        (
            r#"[[status]]
               code = 9
               label = "Parked"
               state = 0
               state_label = "Opened"
               status = "New"
               substatus = "Pending""#,
            "mapping.status[code=9].state_label: state 0 is `Opened` here, but the rule for status code 1 has state 0 as `Open`",
        ),
        (
            r#"[[status]]
               code = 9
               label = "on hold"
               state = 0
               state_label = "Open"
               status = "New"
               substatus = "Pending""#,
            "mapping.status[code=9].label: status code 2 in the same state has the label `On Hold` too",
        ),
        (
            r#"[[status]]
               code = 9
               label = " "
               state = 0
               state_label = "Open"
               status = "New"
               substatus = "Pending""#,
            "mapping.status[code=9].label: is empty",
        ),
        (
            r#"[[status]]
               code = 9
               label = "Parked"
               state = 0
               state_label = "Open"
               status = "New"
               substatus = "Pending"
               status_reason = { text = "" }"#,
            "mapping.status[code=9].status_reason.text: is empty",
        ),
        (
            r#"referral_id_column = "a~b""#,
            "mapping.referral_id_column: `a~b` has a `~` that is neither",
        ),
    ];
    for (overrides, message) in cases {
        let error = mapper_with(Entity::Opportunity, overrides)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with(message), "{overrides}\n→ {error}");
    }
}

#[test]
fn conflicts_an_overlay_cannot_make_are_config_errors_too() {
    let mut spec = MappingSpec::default_for(Entity::Opportunity);
    spec.status.push(spec.status[0].clone());
    let error = Mapper::new(&spec, Entity::Opportunity, "USD").unwrap_err();
    assert_eq!(
        error.to_string(),
        "mapping.status[code=1]: two rules have status code 1"
    );

    let mut spec = MappingSpec::default_for(Entity::Opportunity);
    spec.headers
        .insert("TOPIC".to_owned(), "subject".to_owned());
    let error = Mapper::new(&spec, Entity::Opportunity, "USD").unwrap_err();
    assert_eq!(
        error.to_string(),
        r#"mapping.headers."Topic": headers are matched ignoring case, and "TOPIC" already maps to `subject`"#
    );

    let spec = MappingSpec::default_for(Entity::Opportunity);
    for currency in ["US", "XYZ", "dollar", ""] {
        let error = Mapper::new(&spec, Entity::Opportunity, currency).unwrap_err();
        assert_eq!(error.key, "default_currency", "{currency:?}");
        assert_eq!(
            error.message,
            format!("`{currency}` is not an ISO 4217 currency code"),
            "{currency:?}"
        );
    }
}

#[test]
fn an_ambiguous_symbol_is_an_error_for_the_record() {
    let lead = mapper(Entity::Lead);
    let kroner = record(json!({"leadid": "L-1", "estimatedamount": "kr 5.000,00"}));
    assert_eq!(
        problems(lead.map(&kroner)),
        [problem(
            "details.currency",
            Some("estimatedamount"),
            Some("kr 5.000,00"),
            "`kr` is used by several currencies (SEK, NOK, DKK, ISK); add a currency column or set the default currency to one of them"
        )]
    );
    let norwegian =
        Mapper::new(&MappingSpec::default_for(Entity::Lead), Entity::Lead, "NOK").unwrap();
    let mapped = norwegian.map(&kroner).unwrap();
    assert_eq!(
        mapped.document["details"],
        json!({"currency": "NOK", "dealValue": 5000})
    );
}

#[test]
fn a_huge_value_is_quoted_cut_short_with_its_size() {
    let lead = mapper(Entity::Lead);
    let huge = "9".repeat(5_000_000);
    let huge_record = record(
        json!({"leadid": "L-1", "estimatedclosedate": huge, "address1_country": format!("Atlantis{huge}")}),
    );
    let message = lead.map(&huge_record).unwrap_err().to_string();
    assert!(message.len() < 2_000, "{} bytes", message.len());
    assert!(
        message.contains(&format!(
            "details.closingDateTime (column estimatedclosedate, value \"{}…\" (5000000 bytes)): ",
            "9".repeat(120)
        )),
        "{message}"
    );
    assert!(
        message
            .contains("customerProfile.address.country (column address1_country, value \"Atlantis"),
        "{message}"
    );
    assert!(
        message.contains("(5000008 bytes)): unknown country `Atlantis999"),
        "{message}"
    );
    assert!(
        message.contains("999…; details.closingDateTime"),
        "{message}"
    );

    // Short values are quoted whole.
    let short_record = record(json!({"leadid": "L-1", "estimatedclosedate": "2/30/2024"}));
    let message = lead.map(&short_record).unwrap_err().to_string();
    assert!(
        message.contains("value \"2/30/2024\"): no such date"),
        "{message}"
    );
}

/// The problems of `full_opportunity()` with `changes` applied, mapped
/// with the default mapping and `overrides`.
fn opportunity_problems(changes: Value, overrides: &str) -> Result<MappedRecord, RecordError> {
    let mut fields = full_opportunity();
    for (key, value) in changes.as_object().unwrap() {
        fields[key] = value.clone();
    }
    mapper_with(Entity::Opportunity, overrides)
        .unwrap()
        .map(&record(fields))
}

#[test]
fn negative_deal_values_are_refused_unless_the_field_allows_them() {
    let refused = "a negative amount; set allow_negative = true on the field if the CRM means it";
    for (value, written) in [
        (json!(-5000), "-5000"),
        (json!("($1,200.00)"), "($1,200.00)"),
        (json!("-€20,000.00"), "-€20,000.00"),
    ] {
        assert_eq!(
            problems(opportunity_problems(json!({"estimatedvalue": value}), "")),
            [problem(
                "details.dealValue",
                Some("estimatedvalue"),
                Some(written),
                refused
            )],
            "{written}"
        );
    }
    let allowed = r#"
        [fields."details.dealValue"]
        from = "estimatedvalue"
        type = "money"
        allow_negative = true
    "#;
    let mapped = opportunity_problems(json!({"estimatedvalue": "($1,200.00)"}), allowed).unwrap();
    assert_eq!(mapped.document["details"]["dealValue"], json!(-1200));
    // Zero is not negative.
    let mapped = opportunity_problems(json!({"estimatedvalue": "-0.00"}), "").unwrap();
    assert_eq!(mapped.document["details"]["dealValue"], json!(0));
}

#[test]
fn dates_dynamics_cannot_hold_are_refused_or_read_as_empty_when_listed() {
    let before = |date: &str| {
        format!(
            "{date} is before 1753-01-01, the earliest date Dynamics 365 holds: a placeholder for no date? List it in the field's empty_dates to read it as empty"
        )
    };
    for (written, date) in [
        ("0001-01-01", "0001-01-01"),
        ("0001-01-01T00:00:00Z", "0001-01-01"),
        ("1/1/0000", "0000-01-01"),
        ("12/31/1752", "1752-12-31"),
    ] {
        assert_eq!(
            problems(opportunity_problems(
                json!({"estimatedclosedate": written}),
                ""
            )),
            [problem(
                "details.closingDateTime",
                Some("estimatedclosedate"),
                Some(written),
                &before(date)
            )],
            "{written}"
        );
    }
    let mapped = opportunity_problems(json!({"estimatedclosedate": "1/1/1753"}), "").unwrap();
    assert_eq!(
        mapped.document["details"]["closingDateTime"],
        json!("1753-01-01T00:00:00Z")
    );

    let sentinel = r#"
        [fields."details.closingDateTime"]
        from = "estimatedclosedate"
        type = "date"
        empty_dates = ["0001-01-01"]
    "#;
    for written in ["0001-01-01", "0001-01-01T00:00:00Z", "1/1/0001"] {
        let mapped =
            opportunity_problems(json!({"estimatedclosedate": written}), sentinel).unwrap();
        assert_eq!(
            mapped.document["details"].get("closingDateTime"),
            None,
            "{written}"
        );
    }
    // Only the listed date: another one before 1753 is still refused.
    assert_eq!(
        problems(opportunity_problems(
            json!({"estimatedclosedate": "1/1/0000"}),
            sentinel
        ))
        .len(),
        1
    );
}

#[test]
fn value_options_are_checked_against_the_field_type() {
    let cases = [
        (
            "[fields.name]\nfrom = \"name\"\ntype = \"text\"\nallow_negative = true\n",
            "mapping.fields.\"name\".allow_negative: applies to `money` fields only, not `text`",
        ),
        (
            "[fields.\"details.dealValue\"]\nfrom = \"estimatedvalue\"\ntype = \"money\"\nempty_dates = [\"0001-01-01\"]\n",
            "mapping.fields.\"details.dealValue\".empty_dates: applies to `date` and `datetime` fields only, not `money`",
        ),
        (
            "[fields.\"details.closingDateTime\"]\nfrom = \"estimatedclosedate\"\ntype = \"date\"\nempty_dates = [\"1/1/0001\"]\n",
            "mapping.fields.\"details.closingDateTime\".empty_dates[0]: \"1/1/0001\" is not a date written YYYY-MM-DD",
        ),
    ];
    for (overrides, expected) in cases {
        let error = mapper_with(Entity::Opportunity, overrides).unwrap_err();
        assert_eq!(error.to_string(), expected);
    }
}

#[test]
fn an_id_with_a_control_character_is_refused() {
    for (id, code) in [
        ("L-1\nupdate L-2", "000A"),
        ("L\u{1b}[2J", "001B"),
        ("L\0", "0000"),
    ] {
        let error = opportunity_problems(json!({"opportunityid": id}), "").unwrap_err();
        assert_eq!(error.external_id, None, "{id:?}");
        assert_eq!(
            error.problems,
            [problem(
                "externalReferenceId",
                Some("opportunityid"),
                Some(id),
                &format!(
                    "the id holds the control character U+{code}; an external id must be printable"
                )
            )],
            "{id:?}"
        );
        // The message quotes it escaped.
        assert!(!error.to_string().contains(id), "{error}");
    }
}

#[test]
fn money_with_more_digits_than_a_referral_holds_is_refused_however_written() {
    // A JSON number the readers kept as its text (a double would round
    // it), and JSON integers serde_json held exactly: each refused with the
    // reason the same digits written as text get.
    let cases = [
        (
            json!("123456789012345678901234567890"),
            "123456789012345678901234567890 does not fit in a 64-bit integer",
        ),
        (
            json!("1234567.8901234567"),
            "1234567.8901234567 has more than 15 significant digits, more than a JSON number holds exactly",
        ),
        (
            json!(18446744073709551615_u64),
            "18446744073709551615 does not fit in a 64-bit integer",
        ),
    ];
    for (value, reason) in cases {
        let as_text = json!(super::raw_text(&value));
        for written in [value.clone(), as_text] {
            let found = problems(opportunity_problems(json!({"estimatedvalue": written}), ""));
            assert_eq!(found.len(), 1, "{value}: {found:?}");
            assert_eq!(found[0].field, "details.dealValue");
            assert_eq!(found[0].reason, reason, "{value}");
        }
    }
    // A whole amount is exact as a 64-bit integer, as a number and as text.
    for written in [json!(12345678901234567_u64), json!("12345678901234567")] {
        let mapped = opportunity_problems(json!({"estimatedvalue": written}), "").unwrap();
        assert_eq!(
            mapped.document["details"]["dealValue"],
            json!(12345678901234567_u64)
        );
    }
}

/// The normalisation as it was written before it stopped allocating.
fn allocating(text: &str) -> String {
    super::convert::normalise_guid(text).unwrap_or_else(|_| text.trim().to_owned())
}

#[test]
fn an_id_is_normalised_without_allocating_as_the_guid_conversion_does() {
    for text in [
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        "3F2504E0-4F89-11D3-9A0C-0305E82C3301",
        " {3f2504e0-4f89-11d3-9a0c-0305e82c3301} ",
        "3f2504e04f8911d39a0c0305e82c3301",
        "urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        "  L-17 ",
        "",
        "3f2504e0-4f89-11d3-9a0c-0305e82c330",
    ] {
        assert_eq!(
            with_normalised_external_id(text, str::to_owned),
            allocating(text),
            "{text:?}"
        );
    }
}

proptest::proptest! {
    #[test]
    fn any_id_is_normalised_without_allocating_as_the_guid_conversion_does(
        text in "[ {}]{0,2}[0-9a-fA-F-]{0,40}[ {}]{0,2}|urn:uuid:[0-9a-f-]{36}|\\PC{0,40}\
            |[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-gA-F-]{36}"
    ) {
            proptest::prop_assert_eq!(
            with_normalised_external_id(&text, str::to_owned),
            allocating(&text)
        );
    }
}
