//! The status table: a Dynamics status reason (`statuscode`) → the referral
//! `status`, `substatus` and `statusReason`.
//!
//! A record names its status reason by code (`3`, as JSON or text) or by
//! label (`Won`, case-insensitive), in `statuscode` or, failing that, in its
//! formatted-value annotation. When the record also has a `statecode` (code
//! or label) it must be the state the rule belongs to. An unknown status
//! reason is an error for the record, never a guess: Dynamics organisations
//! add their own.

use serde_json::{Map, Value};

use super::{FieldProblem, MappingConfigError, StatusReason, StatusRule};

pub(super) const STATUS_COLUMN: &str = "statuscode";
pub(super) const STATE_COLUMN: &str = "statecode";
const FORMATTED_VALUE: &str = "@OData.Community.Display.V1.FormattedValue";
/// The columns a status comes from (the state only narrows it down), for
/// the schema guard.
pub(super) const SOURCE_COLUMNS: [&str; 2] = [
    STATUS_COLUMN,
    "statuscode@OData.Community.Display.V1.FormattedValue",
];
/// Every column the status table reads.
pub(super) const READ_COLUMNS: [&str; 4] = [
    STATUS_COLUMN,
    "statuscode@OData.Community.Display.V1.FormattedValue",
    STATE_COLUMN,
    "statecode@OData.Community.Display.V1.FormattedValue",
];

const STATUSES: &[&str] = &["None", "New", "Active", "Closed"];
const SUBSTATUSES: &[&str] = &[
    "None", "Pending", "Received", "Accepted", "Won", "Lost", "Declined", "Expired",
];

/// The substatuses Partner Center accepts with a status.
fn substatuses_of(status: &str) -> &'static [&'static str] {
    match status {
        "New" => &["Pending", "Received"],
        "Active" => &["Accepted"],
        "Closed" => &["Won", "Lost", "Declined", "Expired"],
        _ => &[],
    }
}

/// What a rule sets on the referral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReferralStatus {
    pub status: &'static str,
    pub substatus: &'static str,
    pub reason: Option<String>,
}

/// A validated status table.
#[derive(Debug, Clone, Default)]
pub(super) struct StatusTable {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    code: i64,
    label: String,
    state: i64,
    state_label: String,
    outcome: ReferralStatus,
}

/// A status or state as a record gives it.
#[derive(Debug, Clone, PartialEq)]
enum Given {
    Code(i64),
    Label(String),
}

/// Where a record gave it, and how it was written.
#[derive(Debug, Clone)]
struct Reading {
    column: String,
    raw: String,
    given: Given,
}

fn rule_error(code: i64, member: &str, message: String) -> MappingConfigError {
    MappingConfigError {
        key: format!("status[code={code}]{member}"),
        message,
    }
}

/// One rule, checked on its own and then against the rules before it.
fn compile_rule(rule: &StatusRule, earlier: &[Rule]) -> Result<Rule, MappingConfigError> {
    let error = |member: &str, message: String| rule_error(rule.code, member, message);
    if earlier.iter().any(|other| other.code == rule.code) {
        return Err(error(
            "",
            format!("two rules have status code {}", rule.code),
        ));
    }
    let label = rule.label.trim();
    if label.is_empty() {
        return Err(error(".label", "is empty".to_owned()));
    }
    let state_label = rule.state_label.trim();
    if state_label.is_empty() {
        return Err(error(".state_label", "is empty".to_owned()));
    }
    let compiled = Rule {
        code: rule.code,
        label: label.to_owned(),
        state: rule.state,
        state_label: state_label.to_owned(),
        outcome: rule_outcome(rule, label)?,
    };
    for other in earlier {
        tell_apart(&compiled, other)?;
    }
    Ok(compiled)
}

/// What a rule sets: a status Partner Center can move to, a substatus
/// that goes with it, and the status reason.
fn rule_outcome(rule: &StatusRule, label: &str) -> Result<ReferralStatus, MappingConfigError> {
    let error = |member: &str, message: String| rule_error(rule.code, member, message);
    let status =
        canonical(&rule.status, STATUSES, "status").map_err(|message| error(".status", message))?;
    if status == "None" {
        return Err(error(
            ".status",
            "a referral cannot be moved to `None`; expected New, Active or Closed".to_owned(),
        ));
    }
    let substatus = canonical(&rule.substatus, SUBSTATUSES, "substatus")
        .map_err(|message| error(".substatus", message))?;
    let allowed = substatuses_of(status);
    if !allowed.contains(&substatus) {
        return Err(error(
            ".substatus",
            format!(
                "`{substatus}` does not go with status `{status}`, which allows {}",
                allowed.join(", ")
            ),
        ));
    }
    let reason = match &rule.status_reason {
        None => None,
        Some(StatusReason::Label) => Some(label.to_owned()),
        Some(StatusReason::Text(text)) if text.trim().is_empty() => {
            return Err(error(".status_reason.text", "is empty".to_owned()));
        }
        Some(StatusReason::Text(text)) => Some(text.trim().to_owned()),
    };
    Ok(ReferralStatus {
        status,
        substatus,
        reason,
    })
}

/// A state has one label, and within a state a label names one status
/// reason: a record that gives only labels must still find one rule.
fn tell_apart(rule: &Rule, other: &Rule) -> Result<(), MappingConfigError> {
    let same_state = other.state == rule.state;
    let same_state_label = other.state_label.to_lowercase() == rule.state_label.to_lowercase();
    if same_state != same_state_label {
        return Err(rule_error(
            rule.code,
            ".state_label",
            format!(
                "state {} is `{}` here, but the rule for status code {} has state {} as `{}`",
                rule.state, rule.state_label, other.code, other.state, other.state_label
            ),
        ));
    }
    if same_state && other.label.to_lowercase() == rule.label.to_lowercase() {
        return Err(rule_error(
            rule.code,
            ".label",
            format!(
                "status code {} in the same state has the label `{}` too, so a label alone could not tell them apart",
                other.code, other.label
            ),
        ));
    }
    Ok(())
}

impl StatusTable {
    pub(super) fn compile(rules: &[StatusRule]) -> Result<StatusTable, MappingConfigError> {
        let mut compiled: Vec<Rule> = Vec::with_capacity(rules.len());
        for rule in rules {
            let rule = compile_rule(rule, &compiled)?;
            compiled.push(rule);
        }
        Ok(StatusTable { rules: compiled })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The referral status for a record; `None` when the record gives no
    /// status reason.
    pub(super) fn resolve(
        &self,
        fields: &Map<String, Value>,
    ) -> Result<Option<ReferralStatus>, FieldProblem> {
        if self.rules.is_empty() {
            return Ok(None);
        }
        let Some(status) = read(fields, STATUS_COLUMN)? else {
            return Ok(None);
        };
        let state = read(fields, STATE_COLUMN)?;
        let candidates: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|rule| rule.is(&status.given))
            .collect();
        if candidates.is_empty() {
            let reason = match &status.given {
                Given::Code(code) => {
                    format!("unknown status code {code}: no rule in mapping.status has it")
                }
                Given::Label(label) => format!(
                    "unknown status reason `{label}`: no rule in mapping.status has that label or code"
                ),
            };
            return Err(problem(&status, reason));
        }
        let in_state: Vec<&Rule> = match &state {
            Some(state) => candidates
                .iter()
                .copied()
                .filter(|rule| rule.in_state(&state.given))
                .collect(),
            None => candidates.clone(),
        };
        match (in_state.as_slice(), &state) {
            ([rule], _) => Ok(Some(rule.outcome.clone())),
            ([], Some(state)) => {
                let belongs = candidates
                    .iter()
                    .map(|rule| {
                        format!(
                            "status reason {} ({}) belongs to state {} ({})",
                            rule.code, rule.label, rule.state, rule.state_label
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                Err(problem(
                    state,
                    format!("{belongs}, not to the record's state `{}`", state.raw),
                ))
            }
            _ => {
                let codes: Vec<String> = candidates.iter().map(|r| r.code.to_string()).collect();
                Err(problem(
                    &status,
                    format!(
                        "status reason `{}` is ambiguous: status codes {} have that label, and the record has no statecode to tell them apart",
                        status.raw.trim(),
                        codes.join(" and ")
                    ),
                ))
            }
        }
    }
}

impl Rule {
    fn is(&self, given: &Given) -> bool {
        match given {
            Given::Code(code) => self.code == *code,
            Given::Label(label) => self.label.to_lowercase() == label.to_lowercase(),
        }
    }

    fn in_state(&self, given: &Given) -> bool {
        match given {
            Given::Code(code) => self.state == *code,
            Given::Label(label) => self.state_label.to_lowercase() == label.to_lowercase(),
        }
    }
}

/// `Active` for `Active`; a helpful error for `active` or `Open`.
fn canonical(name: &str, known: &[&'static str], what: &str) -> Result<&'static str, String> {
    if let Some(exact) = known.iter().find(|k| **k == name) {
        return Ok(exact);
    }
    match known.iter().find(|k| k.eq_ignore_ascii_case(name.trim())) {
        Some(close) => Err(format!("`{name}` is not a {what}; did you mean `{close}`?")),
        None => Err(format!(
            "`{name}` is not a {what}; expected one of {}",
            known.join(", ")
        )),
    }
}

/// The column's value, or else its formatted-value annotation's.
fn read(fields: &Map<String, Value>, column: &str) -> Result<Option<Reading>, FieldProblem> {
    let annotation = format!("{column}{FORMATTED_VALUE}");
    for key in [column, annotation.as_str()] {
        let Some(value) = fields.get(key) else {
            continue;
        };
        let raw = match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let given = match value {
            Value::Null => continue,
            Value::String(text) if text.trim().is_empty() => continue,
            Value::String(text) => match text.trim().parse::<i64>() {
                Ok(code) => Given::Code(code),
                Err(_) => Given::Label(text.trim().to_owned()),
            },
            Value::Number(number) => match whole(number) {
                Some(code) => Given::Code(code),
                None => {
                    return Err(FieldProblem {
                        field: "status".to_owned(),
                        column: Some(key.to_owned()),
                        value: Some(raw),
                        reason: "not a status code: codes are whole numbers".to_owned(),
                    });
                }
            },
            _ => {
                return Err(FieldProblem {
                    field: "status".to_owned(),
                    column: Some(key.to_owned()),
                    value: Some(raw),
                    reason: "expected a status code or label".to_owned(),
                });
            }
        };
        return Ok(Some(Reading {
            column: key.to_owned(),
            raw,
            given,
        }));
    }
    Ok(None)
}

fn whole(number: &serde_json::Number) -> Option<i64> {
    number.as_i64().or_else(|| {
        let float = number.as_f64()?;
        // Whole and well inside i64, so the cast is exact.
        (float.fract() == 0.0 && float.abs() < 9.0e15).then_some(float as i64)
    })
}

fn problem(reading: &Reading, reason: String) -> FieldProblem {
    FieldProblem {
        field: "status".to_owned(),
        column: Some(reading.column.clone()),
        value: Some(reading.raw.clone()),
        reason,
    }
}
