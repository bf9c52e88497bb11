//! The service's rules for referral documents and patches, as pure
//! functions: which operations and paths a client may write, which status
//! moves are allowed, which values are acceptable.
//!
//! Values are checked only where a write changed them, so a seeded or
//! seller-edited referral with odd content stays patchable in its other
//! fields — as in Partner Center, where old data predates newer checks.

use chrono::DateTime;
use json_patch::PatchOperation;
use json_patch::jsonptr::Pointer;
use serde_json::Value;

use super::rejection::Rejection;

/// Set by the service; a client write to any of them is refused.
pub const READ_ONLY_FIELDS: &[&str] = &[
    "id",
    "eTag",
    "createdDateTime",
    "updatedDateTime",
    "expirationDateTime",
    "links",
];

/// The fields a seller edit may not touch either: they identify the
/// referral, or the emulator itself maintains them on every write.
const SERVICE_MAINTAINED_FIELDS: &[&str] =
    &["id", "eTag", "createdDateTime", "updatedDateTime", "links"];

/// Required on create and on a full replace.
pub const REQUIRED_FIELDS: &[&str] = &["type", "customerProfile", "consent", "details"];

pub const STATUSES: &[&str] = &["None", "New", "Active", "Closed"];

const TYPES: &[&str] = &["Shared", "Independent"];
const QUALIFICATIONS: &[&str] = &["None", "Direct", "MarketingQualified", "SalesQualified"];
const CUSTOMER_SIZES: &[&str] = &[
    "1to50employees",
    "51to500employees",
    "Morethan500employees",
    "1to9employees",
    "10to50employees",
    "51to250employees",
    "251to1000employees",
    "1001to5000employees",
    "5001to10000employees",
    "10001to20000employees",
    "Morethan20000employees",
];

/// The statuses a referral in `from` may move to, or `None` when `from` is
/// not one of the table's rows (`None` or unknown), which the emulator
/// treats as unconstrained.
pub fn moves_from(from: &str) -> Option<&'static [&'static str]> {
    match from {
        "New" => Some(&["New", "Active", "Closed"]),
        "Active" => Some(&["Active", "Closed"]),
        "Closed" => Some(&["Closed"]),
        _ => None,
    }
}

/// The substatuses that agree with `status`, or `None` when a client may
/// not set that status at all.
pub fn substatuses_for(status: &str) -> Option<&'static [&'static str]> {
    match status {
        "New" => Some(&["Pending", "Received"]),
        "Active" => Some(&["Accepted"]),
        "Closed" => Some(&["Won", "Lost", "Declined", "Expired"]),
        _ => None,
    }
}

/// Parse a client's JSON Patch: only `add` and `replace`, never on a
/// read-only field or the whole document.
pub fn parse_client_patch(body: &Value) -> Result<Vec<PatchOperation>, Rejection> {
    let operations = patch_operations(body)?;
    let mut parsed = Vec::with_capacity(operations.len());
    for (index, raw) in operations.iter().enumerate() {
        let op = operation_name(index, raw)?;
        if op != "add" && op != "replace" {
            return Err(Rejection::UnsupportedOperation {
                index,
                op: op.to_owned(),
            });
        }
        let operation = parse_operation(index, raw)?;
        check_writable(index, operation.path(), READ_ONLY_FIELDS)?;
        parsed.push(operation);
    }
    Ok(parsed)
}

/// Parse a seller edit: any RFC 6902 operation, except on the fields the
/// service maintains itself.
pub fn parse_seller_edit(body: &Value) -> Result<Vec<PatchOperation>, Rejection> {
    let operations = patch_operations(body)?;
    let mut parsed = Vec::with_capacity(operations.len());
    for (index, raw) in operations.iter().enumerate() {
        operation_name(index, raw)?;
        let operation = parse_operation(index, raw)?;
        check_writable(index, operation.path(), SERVICE_MAINTAINED_FIELDS)?;
        if let PatchOperation::Move(json_patch::MoveOperation { from, .. }) = &operation {
            check_writable(index, from, SERVICE_MAINTAINED_FIELDS)?;
        }
        parsed.push(operation);
    }
    Ok(parsed)
}

fn patch_operations(body: &Value) -> Result<&Vec<Value>, Rejection> {
    body.as_array().ok_or(Rejection::WrongBodyShape {
        expected: "a JSON Patch document (an array of operations)",
    })
}

fn operation_name(index: usize, raw: &Value) -> Result<&str, Rejection> {
    raw.get("op")
        .and_then(Value::as_str)
        .ok_or_else(|| Rejection::MalformedOperation {
            index,
            reason: "it has no \"op\" string".to_owned(),
        })
}

fn parse_operation(index: usize, raw: &Value) -> Result<PatchOperation, Rejection> {
    serde_json::from_value(raw.clone()).map_err(|error| Rejection::MalformedOperation {
        index,
        reason: error.to_string(),
    })
}

fn check_writable(index: usize, path: &Pointer, protected: &[&str]) -> Result<(), Rejection> {
    let Some(first) = path.first() else {
        return Err(Rejection::WholeDocument { index });
    };
    if protected.contains(&first.decoded().as_ref()) {
        return Err(Rejection::ReadOnlyField {
            path: path.as_str().to_owned(),
        });
    }
    Ok(())
}

/// Apply parsed operations to a copy of `document`; the original is left
/// as it was when an operation fails.
pub fn apply_patch(document: &Value, operations: &[PatchOperation]) -> Result<Value, Rejection> {
    let mut patched = document.clone();
    json_patch::patch(&mut patched, operations).map_err(|error| Rejection::PatchFailed {
        index: error.operation,
        path: error.path.as_str().to_owned(),
        reason: error.kind.to_string(),
    })?;
    Ok(patched)
}

/// Create and full replace need these members, and not `links`.
pub fn check_complete(body: &Value) -> Result<(), Rejection> {
    let Some(object) = body.as_object() else {
        return Err(Rejection::WrongBodyShape {
            expected: "a referral object",
        });
    };
    if object.contains_key("links") {
        return Err(Rejection::ReadOnlyField {
            path: "/links".to_owned(),
        });
    }
    for field in REQUIRED_FIELDS {
        if object.get(*field).is_none_or(Value::is_null) {
            return Err(Rejection::MissingField {
                field: (*field).to_owned(),
            });
        }
    }
    Ok(())
}

/// Check a write that turns `before` (absent for a create) into `after`:
/// the status move and every value the write changed.
pub fn check_write(before: Option<&Value>, after: &Value) -> Result<(), Rejection> {
    check_status(before, after)?;
    for rule in FIELD_RULES {
        let Some(value) = after.pointer(rule.pointer) else {
            continue;
        };
        if before.and_then(|b| b.pointer(rule.pointer)) == Some(value) {
            continue;
        }
        if value.is_null() && rule.nullable {
            continue;
        }
        if !rule.check.accepts(value) {
            return Err(Rejection::InvalidValue {
                path: rule.pointer.to_owned(),
                value: value.to_string(),
                expected: rule.check.describe(),
            });
        }
    }
    Ok(())
}

fn check_status(before: Option<&Value>, after: &Value) -> Result<(), Rejection> {
    let status = after.get("status");
    let substatus = after.get("substatus");
    if let Some(before) = before
        && before.get("status") == status
        && before.get("substatus") == substatus
    {
        return Ok(());
    }
    let status = match status {
        None | Some(Value::Null) => {
            return Err(Rejection::MissingField {
                field: "status".to_owned(),
            });
        }
        Some(Value::String(status)) => status.as_str(),
        Some(other) => return Err(invalid_status(other)),
    };
    let Some(agreeing) = substatuses_for(status) else {
        return Err(invalid_status(&Value::String(status.to_owned())));
    };
    if let Some(from) = before.and_then(|b| b.get("status")).and_then(Value::as_str)
        && let Some(allowed) = moves_from(from)
        && !allowed.contains(&status)
    {
        return Err(Rejection::TransitionNotAllowed {
            from: from.to_owned(),
            to: status.to_owned(),
        });
    }
    let substatus = match substatus {
        None | Some(Value::Null) => {
            return Err(Rejection::MissingField {
                field: "substatus".to_owned(),
            });
        }
        Some(Value::String(substatus)) => substatus.as_str(),
        Some(other) => {
            return Err(Rejection::InvalidValue {
                path: "/substatus".to_owned(),
                value: other.to_string(),
                expected: "a ReferralSubstatus string".to_owned(),
            });
        }
    };
    if !agreeing.contains(&substatus) {
        return Err(Rejection::SubstatusMismatch {
            status: status.to_owned(),
            substatus: substatus.to_owned(),
        });
    }
    Ok(())
}

fn invalid_status(value: &Value) -> Rejection {
    Rejection::InvalidValue {
        path: "/status".to_owned(),
        value: value.to_string(),
        expected: "one of New, Active, Closed".to_owned(),
    }
}

struct FieldRule {
    pointer: &'static str,
    check: Check,
    nullable: bool,
}

enum Check {
    OneOf(&'static [&'static str]),
    Text,
    Number,
    Boolean,
    Object,
    Array,
    /// ISO 4217: three upper-case letters.
    CurrencyCode,
    /// ISO 3166 alpha-2: two upper-case letters.
    CountryCode,
    /// RFC 3339 with a zero offset.
    UtcDateTime,
}

impl Check {
    fn accepts(&self, value: &Value) -> bool {
        match self {
            Check::OneOf(allowed) => value.as_str().is_some_and(|v| allowed.contains(&v)),
            Check::Text => value.is_string(),
            Check::Number => value.is_number(),
            Check::Boolean => value.is_boolean(),
            Check::Object => value.is_object(),
            Check::Array => value.is_array(),
            Check::CurrencyCode => upper_letters(value, 3),
            Check::CountryCode => upper_letters(value, 2),
            Check::UtcDateTime => value.as_str().is_some_and(|text| {
                DateTime::parse_from_rfc3339(text)
                    .is_ok_and(|at| at.offset().local_minus_utc() == 0)
            }),
        }
    }

    fn describe(&self) -> String {
        match self {
            Check::OneOf(allowed) => format!("one of {}", allowed.join(", ")),
            Check::Text => "a string".to_owned(),
            Check::Number => "a number".to_owned(),
            Check::Boolean => "a boolean".to_owned(),
            Check::Object => "an object".to_owned(),
            Check::Array => "an array".to_owned(),
            Check::CurrencyCode => "an ISO 4217 currency code such as \"USD\"".to_owned(),
            Check::CountryCode => "an ISO 3166 alpha-2 country code such as \"US\"".to_owned(),
            Check::UtcDateTime => "a UTC date-time such as \"2024-11-14T00:00:00Z\"".to_owned(),
        }
    }
}

fn upper_letters(value: &Value, length: usize) -> bool {
    value
        .as_str()
        .is_some_and(|code| code.len() == length && code.bytes().all(|b| b.is_ascii_uppercase()))
}

const fn rule(pointer: &'static str, check: Check) -> FieldRule {
    FieldRule {
        pointer,
        check,
        nullable: true,
    }
}

const fn required(pointer: &'static str, check: Check) -> FieldRule {
    FieldRule {
        pointer,
        check,
        nullable: false,
    }
}

const FIELD_RULES: &[FieldRule] = &[
    required("/type", Check::OneOf(TYPES)),
    required("/customerProfile", Check::Object),
    required("/consent", Check::Object),
    required("/details", Check::Object),
    rule("/qualification", Check::OneOf(QUALIFICATIONS)),
    rule("/name", Check::Text),
    rule("/externalReferenceId", Check::Text),
    rule("/engagementId", Check::Text),
    rule("/statusReason", Check::Text),
    rule("/team", Check::Array),
    rule("/target", Check::Array),
    rule("/inviteContext", Check::Object),
    rule("/customerProfile/name", Check::Text),
    rule("/customerProfile/size", Check::OneOf(CUSTOMER_SIZES)),
    rule("/customerProfile/address", Check::Object),
    rule("/customerProfile/address/country", Check::CountryCode),
    rule("/customerProfile/team", Check::Array),
    rule("/customerProfile/ids", Check::Array),
    rule("/consent/consentToToShareInfoWithOthers", Check::Boolean),
    rule("/consent/consentToContact", Check::Boolean),
    rule(
        "/consent/consentToShareReferralWithMicrosoftSellers",
        Check::Boolean,
    ),
    rule("/details/notes", Check::Text),
    rule("/details/dealValue", Check::Number),
    rule("/details/currency", Check::CurrencyCode),
    rule("/details/closingDateTime", Check::UtcDateTime),
    rule("/details/requirements", Check::Object),
    rule("/details/requirements/industries", Check::Array),
    rule("/details/requirements/products", Check::Array),
    rule("/details/requirements/services", Check::Array),
    rule("/details/requirements/solutions", Check::Array),
    // Newer create members, kept as sent.
    rule("/partnerRole", Check::Text),
    rule("/solutionArea", Check::Text),
    rule("/solutionPlay", Check::Text),
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn referral(status: &str, substatus: &str) -> Value {
        json!({
            "id": "r1",
            "status": status,
            "substatus": substatus,
            "type": "Independent",
            "customerProfile": {"name": "Contoso", "size": "odd legacy value"},
            "consent": {"consentToContact": true},
            "details": {"dealValue": 10, "currency": "USD"},
        })
    }

    fn with(mut document: Value, pointer: &str, value: Value) -> Value {
        if let Some(slot) = document.pointer_mut(pointer) {
            *slot = value;
        } else {
            let (parent, member) = pointer.rsplit_once('/').unwrap();
            document.pointer_mut(parent).unwrap()[member] = value;
        }
        document
    }

    #[test]
    fn status_moves_follow_the_table() {
        let cases = [
            ("New", "Pending", "New", "Received", true),
            ("New", "Received", "Active", "Accepted", true),
            ("New", "Received", "Closed", "Declined", true),
            ("Active", "Accepted", "Closed", "Won", true),
            ("Closed", "Won", "Closed", "Lost", true),
            ("Active", "Accepted", "New", "Received", false),
            ("Closed", "Lost", "Active", "Accepted", false),
            ("Closed", "Won", "New", "Pending", false),
        ];
        for (from, from_sub, to, to_sub, allowed) in cases {
            let result = check_write(Some(&referral(from, from_sub)), &referral(to, to_sub));
            assert_eq!(
                result.is_ok(),
                allowed,
                "{from}/{from_sub} -> {to}/{to_sub}: {result:?}"
            );
            if !allowed {
                assert_eq!(
                    result,
                    Err(Rejection::TransitionNotAllowed {
                        from: from.into(),
                        to: to.into()
                    })
                );
            }
        }
    }

    #[test]
    fn a_status_change_needs_an_agreeing_substatus() {
        let cases = [
            (
                "Active",
                "Received",
                "substatus Received is not valid with status Active",
            ),
            (
                "Closed",
                "Accepted",
                "substatus Accepted is not valid with status Closed",
            ),
            ("New", "Won", "substatus Won is not valid with status New"),
            (
                "New",
                "Bogus",
                "substatus Bogus is not valid with status New",
            ),
        ];
        for (status, substatus, message) in cases {
            let error = check_write(
                Some(&referral("New", "Pending")),
                &referral(status, substatus),
            )
            .unwrap_err();
            assert_eq!(error.to_string(), message);
        }
    }

    #[test]
    fn status_none_and_unknown_statuses_cannot_be_set() {
        for status in ["None", "Open"] {
            let error = check_write(Some(&referral("New", "Pending")), &referral(status, "None"))
                .unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("/status: \"{status}\" is not one of New, Active, Closed")
            );
        }
    }

    #[test]
    fn an_unchanged_status_is_not_rechecked() {
        // Seeded data may hold a pair the table does not allow; a write that
        // leaves it alone must still succeed.
        let odd = referral("Active", "Won");
        let renamed = with(odd.clone(), "/name", json!("renamed"));
        assert_eq!(check_write(Some(&odd), &renamed), Ok(()));
    }

    #[test]
    fn create_requires_a_status_pair() {
        let mut missing = referral("New", "Pending");
        missing.as_object_mut().unwrap().remove("substatus");
        assert_eq!(
            check_write(None, &missing),
            Err(Rejection::MissingField {
                field: "substatus".into()
            })
        );
        let mut fresh = referral("Active", "Accepted");
        fresh["customerProfile"]["size"] = json!("51to500employees");
        assert_eq!(check_write(None, &fresh), Ok(()));
    }

    #[test]
    fn changed_values_are_checked_and_unchanged_ones_are_not() {
        let before = referral("New", "Pending");
        let cases = [
            (
                "/type",
                json!("Partner"),
                Some("one of Shared, Independent"),
            ),
            ("/type", json!(null), Some("one of Shared, Independent")),
            (
                "/details/currency",
                json!("usd"),
                Some("an ISO 4217 currency code"),
            ),
            ("/details/currency", json!("EUR"), None),
            ("/details/dealValue", json!("50000"), Some("a number")),
            ("/details/dealValue", json!(null), None),
            (
                "/details/closingDateTime",
                json!("2024-11-14"),
                Some("a UTC date-time"),
            ),
            (
                "/details/closingDateTime",
                json!("2024-11-14T00:00:00+02:00"),
                Some("a UTC date-time"),
            ),
            (
                "/details/closingDateTime",
                json!("2024-11-14T00:00:00Z"),
                None,
            ),
            ("/customerProfile/size", json!("51to500employees"), None),
            (
                "/customerProfile/size",
                json!("huge"),
                Some("one of 1to50employees"),
            ),
            (
                "/customerProfile/address",
                json!({"country": "USA"}),
                Some("ISO 3166 alpha-2"),
            ),
            ("/consent/consentToContact", json!("yes"), Some("a boolean")),
            ("/details", json!("none"), Some("an object")),
        ];
        for (pointer, value, expected) in cases {
            let after = with(before.clone(), pointer, value.clone());
            let result = check_write(Some(&before), &after);
            match expected {
                None => assert_eq!(result, Ok(()), "{pointer} = {value}"),
                Some(fragment) => {
                    let message = result.unwrap_err().to_string();
                    assert!(message.contains(fragment), "{pointer} = {value}: {message}");
                    assert!(message.starts_with(pointer), "{message}");
                }
            }
        }
        // The legacy size in `before` is left alone by a write elsewhere.
        let renamed = with(before.clone(), "/name", json!("x"));
        assert_eq!(check_write(Some(&before), &renamed), Ok(()));
    }

    #[test]
    fn client_patches_allow_only_add_and_replace() {
        let cases = [
            (
                json!([{"op": "remove", "path": "/name"}]),
                "patch operation 0 is \"remove\"",
            ),
            (
                json!([{"op": "add", "path": "/name", "value": 1}, {"op": "move", "from": "/a", "path": "/b"}]),
                "patch operation 1 is \"move\"",
            ),
            (
                json!([{"op": "test", "path": "/name", "value": 1}]),
                "patch operation 0 is \"test\"",
            ),
            (
                json!([{"path": "/name", "value": 1}]),
                "patch operation 0 is malformed: it has no \"op\" string",
            ),
            (
                json!([{"op": "add", "path": "/name"}]),
                "patch operation 0 is malformed: missing field `value`",
            ),
            (
                json!([{"op": "add", "path": "name", "value": 1}]),
                "patch operation 0 is malformed",
            ),
            (
                json!({"op": "add", "path": "/name", "value": 1}),
                "must be a JSON Patch document",
            ),
        ];
        for (body, fragment) in cases {
            let message = parse_client_patch(&body).unwrap_err().to_string();
            assert!(message.contains(fragment), "{body}: {message}");
        }
    }

    #[test]
    fn client_patches_cannot_write_read_only_fields() {
        for field in READ_ONLY_FIELDS {
            let path = format!("/{field}/x");
            let body = json!([{"op": "replace", "path": path, "value": "v"}]);
            assert_eq!(
                parse_client_patch(&body),
                Err(Rejection::ReadOnlyField { path: path.clone() })
            );
        }
        let whole = json!([{"op": "replace", "path": "", "value": {}}]);
        assert_eq!(
            parse_client_patch(&whole),
            Err(Rejection::WholeDocument { index: 0 })
        );
        let fine = json!([
            {"op": "replace", "path": "/details/dealValue", "value": 1},
            {"op": "add", "path": "/team/-", "value": {"firstName": "A"}},
        ]);
        assert_eq!(parse_client_patch(&fine).unwrap().len(), 2);
    }

    #[test]
    fn seller_edits_may_remove_but_not_touch_service_fields() {
        let edit = json!([
            {"op": "remove", "path": "/details/notes"},
            {"op": "replace", "path": "/expirationDateTime", "value": "2030-01-01T00:00:00Z"},
        ]);
        assert_eq!(parse_seller_edit(&edit).unwrap().len(), 2);
        let moving_id = json!([{"op": "move", "from": "/id", "path": "/oldId"}]);
        assert_eq!(
            parse_seller_edit(&moving_id),
            Err(Rejection::ReadOnlyField { path: "/id".into() })
        );
        let etag = json!([{"op": "replace", "path": "/eTag", "value": "x"}]);
        assert_eq!(
            parse_seller_edit(&etag),
            Err(Rejection::ReadOnlyField {
                path: "/eTag".into()
            })
        );
    }

    #[test]
    fn apply_patch_reports_the_failing_operation_and_keeps_the_original() {
        let document = referral("New", "Pending");
        let operations = parse_client_patch(&json!([
            {"op": "add", "path": "/name", "value": "x"},
            {"op": "replace", "path": "/customerProfile/address/city", "value": "Oslo"},
        ]))
        .unwrap();
        let error = apply_patch(&document, &operations).unwrap_err();
        assert_eq!(
            error,
            Rejection::PatchFailed {
                index: 1,
                path: "/customerProfile/address/city".into(),
                reason: "path is invalid".into(),
            }
        );
        assert!(document.get("name").is_none());
    }

    #[test]
    fn replace_needs_an_existing_member_where_add_does_not() {
        // RFC 6902: a client must `add` a member the referral lacks.
        let document = referral("New", "Pending");
        let replace =
            parse_client_patch(&json!([{"op": "replace", "path": "/name", "value": "x"}])).unwrap();
        assert_eq!(
            apply_patch(&document, &replace),
            Err(Rejection::PatchFailed {
                index: 0,
                path: "/name".into(),
                reason: "path is invalid".into(),
            })
        );
        let add =
            parse_client_patch(&json!([{"op": "add", "path": "/name", "value": "x"}])).unwrap();
        assert_eq!(apply_patch(&document, &add).unwrap()["name"], "x");
    }

    #[test]
    fn create_and_replace_need_the_required_members_and_no_links() {
        let complete = referral("New", "Pending");
        assert_eq!(check_complete(&complete), Ok(()));
        for field in REQUIRED_FIELDS {
            let mut partial = complete.clone();
            partial.as_object_mut().unwrap().remove(*field);
            assert_eq!(
                check_complete(&partial),
                Err(Rejection::MissingField {
                    field: (*field).into()
                })
            );
        }
        let with_links = with(complete, "/links", json!({}));
        assert_eq!(
            check_complete(&with_links),
            Err(Rejection::ReadOnlyField {
                path: "/links".into()
            })
        );
        assert_eq!(
            check_complete(&json!([])),
            Err(Rejection::WrongBodyShape {
                expected: "a referral object"
            })
        );
    }
}
