//! The members a referral is created with when the record does not set
//! them (`[create]`): its type, qualification, consent, targets, and the
//! newer `partnerRole`, `solutionArea`, `solutionPlay`,
//! `customerProfile.ids` and `details.requirements`.
//!
//! Pure: [`apply`] fills a create body from validated [`CreateDefaults`].
//! A value the record maps from a column wins over the default, leaf by
//! leaf: a mapped `consent.consentToContact` keeps the other consent
//! defaults, a mapped `details.requirements.solutions` keeps the default
//! industries. Only creates get these members; nothing here is patched.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

/// `customerProfile.ids` profile types the API names.
pub const PROFILE_TYPES: [&str; 2] = ["Duns", "External"];

/// One `customerProfile.ids` element as configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfileId {
    pub profile_type: String,
    pub id: String,
}

/// One requirement (`industries`, `products`, `services`): its id.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequirement {
    pub id: String,
}

/// One solution requirement.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSolution {
    pub id: String,
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// `[create.requirements]` as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRequirements {
    pub industries: Vec<RawRequirement>,
    pub products: Vec<RawRequirement>,
    pub services: Vec<RawRequirement>,
    pub solutions: Vec<RawSolution>,
}

/// The `[create]` keys this module owns, as written.
#[derive(Debug, Clone, PartialEq)]
pub struct RawCreateDefaults<'a> {
    pub referral_type: &'a str,
    pub qualification: &'a str,
    pub consent_to_share_info_with_others: bool,
    pub consent_to_contact: bool,
    pub consent_to_share_referral_with_microsoft_sellers: Option<bool>,
    pub target: &'a [BTreeMap<String, String>],
    pub partner_role: Option<&'a str>,
    pub solution_area: Option<&'a str>,
    pub solution_play: Option<&'a str>,
    pub customer_ids: &'a [RawProfileId],
    pub requirements: &'a RawRequirements,
}

/// A `[create]` value that cannot be sent, by key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration key `{key}`: {message}")]
pub struct CreateDefaultsError {
    pub key: String,
    pub message: String,
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> CreateDefaultsError {
    CreateDefaultsError {
        key: key.into(),
        message: message.into(),
    }
}

/// A place in the create body: `["consent", "consentToContact"]`.
type Place = &'static [&'static str];

/// The validated defaults: each a place in the body and its value, in the
/// order they are applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreateDefaults {
    members: Vec<(Place, Value)>,
}

impl CreateDefaults {
    /// Validate the configured defaults once, at start-up.
    pub fn new(raw: &RawCreateDefaults<'_>) -> Result<CreateDefaults, CreateDefaultsError> {
        let mut members = always_sent(raw);
        if !raw.target.is_empty() {
            members.push((&["target"], targets(raw.target)));
        }
        let texts: [(Place, &str, Option<&str>); 3] = [
            (&["partnerRole"], "create.partner_role", raw.partner_role),
            (&["solutionArea"], "create.solution_area", raw.solution_area),
            (&["solutionPlay"], "create.solution_play", raw.solution_play),
        ];
        for (place, key, value) in texts {
            if let Some(value) = value {
                members.push((place, Value::from(text(key, value)?)));
            }
        }
        if !raw.customer_ids.is_empty() {
            members.push((&["customerProfile", "ids"], customer_ids(raw.customer_ids)?));
        }
        let requirements = raw.requirements;
        let lists: [(Place, &str, &[RawRequirement]); 3] = [
            (
                &["details", "requirements", "industries"],
                "industries",
                &requirements.industries,
            ),
            (
                &["details", "requirements", "products"],
                "products",
                &requirements.products,
            ),
            (
                &["details", "requirements", "services"],
                "services",
                &requirements.services,
            ),
        ];
        for (place, name, list) in lists {
            if !list.is_empty() {
                members.push((place, requirement_ids(name, list)?));
            }
        }
        if !requirements.solutions.is_empty() {
            members.push((
                &["details", "requirements", "solutions"],
                solutions(&requirements.solutions)?,
            ));
        }
        Ok(CreateDefaults { members })
    }
}

/// The type, the qualification and the consent: every create sends them.
fn always_sent(raw: &RawCreateDefaults<'_>) -> Vec<(Place, Value)> {
    let mut members: Vec<(Place, Value)> = vec![
        (&["type"], Value::from(raw.referral_type)),
        (&["qualification"], Value::from(raw.qualification)),
        (
            &["consent", "consentToToShareInfoWithOthers"],
            Value::Bool(raw.consent_to_share_info_with_others),
        ),
        (
            &["consent", "consentToContact"],
            Value::Bool(raw.consent_to_contact),
        ),
    ];
    if let Some(share) = raw.consent_to_share_referral_with_microsoft_sellers {
        members.push((
            &["consent", "consentToShareReferralWithMicrosoftSellers"],
            Value::Bool(share),
        ));
    }
    members
}

fn targets(targets: &[BTreeMap<String, String>]) -> Value {
    let targets = targets
        .iter()
        .map(|target| {
            let fields: Map<String, Value> = target
                .iter()
                .map(|(key, value)| (key.clone(), Value::from(value.as_str())))
                .collect();
            Value::Object(fields)
        })
        .collect();
    Value::Array(targets)
}

fn customer_ids(profiles: &[RawProfileId]) -> Result<Value, CreateDefaultsError> {
    let mut ids = Vec::new();
    for (index, profile) in profiles.iter().enumerate() {
        let key = format!("create.customer_ids[{index}]");
        if !PROFILE_TYPES.contains(&profile.profile_type.as_str()) {
            return Err(invalid(
                format!("{key}.profile_type"),
                format!("{:?} is not one of {PROFILE_TYPES:?}", profile.profile_type),
            ));
        }
        let id = text(&format!("{key}.id"), &profile.id)?;
        ids.push(serde_json::json!({"profileType": profile.profile_type, "id": id}));
    }
    Ok(Value::Array(ids))
}

/// `industries`, `products` or `services`: their ids.
fn requirement_ids(name: &str, list: &[RawRequirement]) -> Result<Value, CreateDefaultsError> {
    let mut elements = Vec::new();
    for (index, requirement) in list.iter().enumerate() {
        let id = text(
            &format!("create.requirements.{name}[{index}].id"),
            &requirement.id,
        )?;
        elements.push(serde_json::json!({ "id": id }));
    }
    Ok(Value::Array(elements))
}

fn solutions(list: &[RawSolution]) -> Result<Value, CreateDefaultsError> {
    let mut solutions = Vec::new();
    for (index, solution) in list.iter().enumerate() {
        let key = format!("create.requirements.solutions[{index}]");
        let mut element = Map::new();
        element.insert(
            "id".to_owned(),
            Value::from(text(&format!("{key}.id"), &solution.id)?),
        );
        if let Some(name) = &solution.name {
            element.insert(
                "name".to_owned(),
                Value::from(text(&format!("{key}.name"), name)?),
            );
        }
        if let Some(kind) = &solution.kind {
            element.insert(
                "type".to_owned(),
                Value::from(text(&format!("{key}.type"), kind)?),
            );
        }
        solutions.push(Value::Object(element));
    }
    Ok(Value::Array(solutions))
}

/// A configured text: trimmed, not empty, no control characters.
fn text(key: &str, value: &str) -> Result<String, CreateDefaultsError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(invalid(
            key,
            "must not be empty (leave the key out instead)",
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(invalid(key, "must not hold control characters"));
    }
    Ok(trimmed.to_owned())
}

/// Fill `body` (a create body: the desired document) with every default
/// the record does not set. A member counts as set when it holds anything
/// but `null`; a default is never put under a member that is not an object
/// (the record's value stays as it is).
pub fn apply(defaults: &CreateDefaults, body: &mut Value) {
    for (place, value) in &defaults.members {
        fill(body, place, value);
    }
}

fn fill(body: &mut Value, place: &[&str], value: &Value) {
    let Some((last, parents)) = place.split_last() else {
        return;
    };
    let mut node = body;
    for parent in parents {
        let Value::Object(fields) = node else {
            return;
        };
        let child = fields
            .entry((*parent).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if child.is_null() {
            *child = Value::Object(Map::new());
        }
        node = child;
    }
    let Value::Object(fields) = node else {
        return;
    };
    let slot = fields.entry((*last).to_owned()).or_insert(Value::Null);
    if slot.is_null() {
        *slot = value.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw<'a>(
        requirements: &'a RawRequirements,
        ids: &'a [RawProfileId],
    ) -> RawCreateDefaults<'a> {
        RawCreateDefaults {
            referral_type: "Independent",
            qualification: "None",
            consent_to_share_info_with_others: false,
            consent_to_contact: true,
            consent_to_share_referral_with_microsoft_sellers: Some(true),
            target: &[],
            partner_role: Some("Seller"),
            solution_area: Some("Business Applications"),
            solution_play: Some("Finance and Supply Chain"),
            customer_ids: ids,
            requirements,
        }
    }

    fn full() -> CreateDefaults {
        let requirements = RawRequirements {
            industries: vec![RawRequirement { id: "ind-1".into() }],
            solutions: vec![RawSolution {
                id: "sol-1".into(),
                name: Some("Dynamics 365 Finance".into()),
                kind: Some("MicrosoftSolution".into()),
            }],
            ..RawRequirements::default()
        };
        let ids = [RawProfileId {
            profile_type: "Duns".into(),
            id: "123456789".into(),
        }];
        CreateDefaults::new(&raw(&requirements, &ids)).unwrap()
    }

    #[test]
    fn defaults_fill_what_the_record_leaves_out_and_never_what_it_maps() {
        // (the mapped document, the create body expected)
        let cases = [
            (
                json!({"name": "Contoso", "details": {"dealValue": 5}}),
                json!({
                    "name": "Contoso",
                    "type": "Independent",
                    "qualification": "None",
                    "consent": {
                        "consentToToShareInfoWithOthers": false,
                        "consentToContact": true,
                        "consentToShareReferralWithMicrosoftSellers": true,
                    },
                    "partnerRole": "Seller",
                    "solutionArea": "Business Applications",
                    "solutionPlay": "Finance and Supply Chain",
                    "customerProfile": {"ids": [{"profileType": "Duns", "id": "123456789"}]},
                    "details": {
                        "dealValue": 5,
                        "requirements": {
                            "industries": [{"id": "ind-1"}],
                            "solutions": [{"id": "sol-1", "name": "Dynamics 365 Finance", "type": "MicrosoftSolution"}],
                        },
                    },
                }),
            ),
            // Mapped from columns: kept, leaf by leaf.
            (
                json!({
                    "solutionArea": "Azure",
                    "solutionPlay": null,
                    "consent": {"consentToContact": false},
                    "customerProfile": {"name": "C", "ids": [{"profileType": "External", "id": "crm-1"}]},
                    "details": {"requirements": {"solutions": [{"id": "mapped"}]}},
                }),
                json!({
                    "solutionArea": "Azure",
                    "solutionPlay": "Finance and Supply Chain",
                    "type": "Independent",
                    "qualification": "None",
                    "partnerRole": "Seller",
                    "consent": {
                        "consentToContact": false,
                        "consentToToShareInfoWithOthers": false,
                        "consentToShareReferralWithMicrosoftSellers": true,
                    },
                    "customerProfile": {"name": "C", "ids": [{"profileType": "External", "id": "crm-1"}]},
                    "details": {"requirements": {
                        "solutions": [{"id": "mapped"}],
                        "industries": [{"id": "ind-1"}],
                    }},
                }),
            ),
            // A member that is not an object is left alone.
            (
                json!({"details": "odd", "customerProfile": null}),
                json!({
                    "details": "odd",
                    "type": "Independent",
                    "qualification": "None",
                    "consent": {
                        "consentToToShareInfoWithOthers": false,
                        "consentToContact": true,
                        "consentToShareReferralWithMicrosoftSellers": true,
                    },
                    "partnerRole": "Seller",
                    "solutionArea": "Business Applications",
                    "solutionPlay": "Finance and Supply Chain",
                    "customerProfile": {"ids": [{"profileType": "Duns", "id": "123456789"}]},
                }),
            ),
        ];
        let defaults = full();
        for (mapped, expected) in cases {
            let mut body = mapped.clone();
            apply(&defaults, &mut body);
            assert_eq!(body, expected, "{mapped}");
            // Applying twice changes nothing.
            apply(&defaults, &mut body);
            assert_eq!(body, expected, "{mapped}");
        }
    }

    #[test]
    fn only_the_configured_members_are_added() {
        let requirements = RawRequirements::default();
        let bare = RawCreateDefaults {
            consent_to_share_referral_with_microsoft_sellers: None,
            partner_role: None,
            solution_area: None,
            solution_play: None,
            ..raw(&requirements, &[])
        };
        let mut body = json!({"name": "x"});
        apply(&CreateDefaults::new(&bare).unwrap(), &mut body);
        assert_eq!(
            body,
            json!({
                "name": "x",
                "type": "Independent",
                "qualification": "None",
                "consent": {"consentToToShareInfoWithOthers": false, "consentToContact": true},
            })
        );
    }

    #[test]
    fn errors_name_the_key() {
        let requirements = RawRequirements {
            services: vec![RawRequirement { id: " ".into() }],
            ..RawRequirements::default()
        };
        let bad_type = [RawProfileId {
            profile_type: "Vat".into(),
            id: "1".into(),
        }];
        let empty_id = [RawProfileId {
            profile_type: "External".into(),
            id: "".into(),
        }];
        let no_requirements = RawRequirements::default();
        let cases = [
            (
                RawCreateDefaults {
                    solution_play: Some("  "),
                    ..raw(&no_requirements, &[])
                },
                "configuration key `create.solution_play`: must not be empty (leave the key out instead)",
            ),
            (
                RawCreateDefaults {
                    partner_role: Some("a\nb"),
                    ..raw(&no_requirements, &[])
                },
                "configuration key `create.partner_role`: must not hold control characters",
            ),
            (
                raw(&no_requirements, &bad_type),
                "configuration key `create.customer_ids[0].profile_type`: \"Vat\" is not one of [\"Duns\", \"External\"]",
            ),
            (
                raw(&no_requirements, &empty_id),
                "configuration key `create.customer_ids[0].id`: must not be empty (leave the key out instead)",
            ),
            (
                raw(&requirements, &[]),
                "configuration key `create.requirements.services[0].id`: must not be empty (leave the key out instead)",
            ),
        ];
        for (raw, message) in cases {
            assert_eq!(CreateDefaults::new(&raw).unwrap_err().to_string(), message);
        }
    }
}
