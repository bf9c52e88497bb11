//! Fault injection: rules that make the emulator misbehave on purpose, so
//! that retries, timeouts and lost acknowledgements can be tested.
//!
//! A rule matches requests by method and path fragment. Every rule counts
//! every request it matches; it acts on the matches after its first `after`
//! ones, `times` times (0: forever). When several rules would act on one
//! request, the first in order wins.
//!
//! ```json
//! [
//!   {"method": "PATCH", "kind": "status", "status": 429, "retry_after": 2},
//!   {"method": "PATCH", "path_contains": "/referrals/", "after": 1, "kind": "reset_after"},
//!   {"method": "GET", "kind": "delay", "ms": 5000, "times": 0},
//!   {"method": "POST", "kind": "delay_after", "ms": 200},
//!   {"method": "PATCH", "kind": "ignore_prefer", "times": 0}
//! ]
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

/// What an acting rule does to the request.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultAction {
    /// Answer with this status (and `Retry-After`) without handling the
    /// request.
    Status {
        status: u16,
        retry_after: Option<u64>,
        body: Option<Value>,
    },
    /// Wait, then handle the request as usual; if the client gives up
    /// meanwhile, nothing is applied.
    Delay { ms: u64 },
    /// Handle the request, then wait before answering: a client that gives
    /// up (or dies) meanwhile never learns that its write was applied.
    DelayAfter { ms: u64 },
    /// Drop the connection without handling the request.
    ResetBefore,
    /// Handle the request, then drop the connection without answering.
    ResetAfter,
    /// Handle the request as if it carried no `Prefer` header, as a service
    /// that ignores the preference may: a PATCH that succeeds is answered
    /// `204 No Content`, with the new eTag in an `ETag` header only.
    IgnorePrefer,
}

impl FaultAction {
    pub fn kind(&self) -> &'static str {
        match self {
            FaultAction::Status { .. } => "status",
            FaultAction::Delay { .. } => "delay",
            FaultAction::DelayAfter { .. } => "delay_after",
            FaultAction::ResetBefore => "reset_before",
            FaultAction::ResetAfter => "reset_after",
            FaultAction::IgnorePrefer => "ignore_prefer",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    /// Upper-case HTTP method; `None` matches any.
    pub method: Option<String>,
    pub path_contains: Option<String>,
    /// Matches to let through before acting.
    pub after: u64,
    /// Matches to act on; 0 acts on all of them.
    pub times: u64,
    pub action: FaultAction,
}

impl FaultRule {
    fn matches(&self, method: &str, path: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|wanted| wanted.eq_ignore_ascii_case(method))
            && self
                .path_contains
                .as_deref()
                .is_none_or(|fragment| path.contains(fragment))
    }
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum FaultRuleError {
    #[error("fault rules must be an array of rule objects or a single rule object")]
    NotRules,
    #[error("fault rule {index}: {reason}")]
    InvalidRule { index: usize, reason: String },
}

/// The rule as written in a file or an admin request.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawFaultRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_contains: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    times: Option<u64>,
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ms: Option<u64>,
}

/// Parse an array of rules, or a single rule.
pub fn parse_fault_rules(value: &Value) -> Result<Vec<FaultRule>, FaultRuleError> {
    let raw_rules: Vec<&Value> = match value {
        Value::Array(rules) => rules.iter().collect(),
        Value::Object(_) => vec![value],
        _ => return Err(FaultRuleError::NotRules),
    };
    raw_rules
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let invalid = |reason: String| FaultRuleError::InvalidRule { index, reason };
            let raw: RawFaultRule =
                serde_json::from_value(raw.clone()).map_err(|e| invalid(e.to_string()))?;
            validate(raw).map_err(invalid)
        })
        .collect()
}

fn validate(raw: RawFaultRule) -> Result<FaultRule, String> {
    let only_for = |field: &str, present: bool, kind: &str| {
        if present && raw.kind != kind {
            Err(format!(
                "{field} applies to kind {kind} only, not {}",
                raw.kind
            ))
        } else {
            Ok(())
        }
    };
    only_for("status", raw.status.is_some(), "status")?;
    only_for("retry_after", raw.retry_after.is_some(), "status")?;
    only_for("body", raw.body.is_some(), "status")?;
    if raw.ms.is_some() && raw.kind != "delay" && raw.kind != "delay_after" {
        return Err(format!(
            "ms applies to kinds delay and delay_after only, not {}",
            raw.kind
        ));
    }
    let action = match raw.kind.as_str() {
        "status" => {
            let status = raw.status.ok_or("kind status needs a status")?;
            if !(200..=599).contains(&status) {
                return Err(format!("status {status} is not between 200 and 599"));
            }
            FaultAction::Status {
                status,
                retry_after: raw.retry_after,
                body: raw.body,
            }
        }
        "delay" => FaultAction::Delay {
            ms: raw.ms.ok_or("kind delay needs ms")?,
        },
        "delay_after" => FaultAction::DelayAfter {
            ms: raw.ms.ok_or("kind delay_after needs ms")?,
        },
        "reset_before" => FaultAction::ResetBefore,
        "reset_after" => FaultAction::ResetAfter,
        "ignore_prefer" => FaultAction::IgnorePrefer,
        other => {
            return Err(format!(
                "unknown kind {other:?}: expected status, delay, delay_after, reset_before, reset_after or ignore_prefer"
            ));
        }
    };
    let method = match raw.method {
        Some(method) if method.trim().is_empty() => return Err("method is empty".to_owned()),
        Some(method) => Some(method.trim().to_ascii_uppercase()),
        None => None,
    };
    Ok(FaultRule {
        method,
        path_contains: raw.path_contains,
        after: raw.after.unwrap_or(0),
        times: raw.times.unwrap_or(1),
        action,
    })
}

impl Serialize for FaultRule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut raw = RawFaultRule {
            method: self.method.clone(),
            path_contains: self.path_contains.clone(),
            after: Some(self.after),
            times: Some(self.times),
            kind: self.action.kind().to_owned(),
            ..RawFaultRule::default()
        };
        match &self.action {
            FaultAction::Status {
                status,
                retry_after,
                body,
            } => {
                raw.status = Some(*status);
                raw.retry_after = *retry_after;
                raw.body = body.clone();
            }
            FaultAction::Delay { ms } | FaultAction::DelayAfter { ms } => raw.ms = Some(*ms),
            FaultAction::ResetBefore | FaultAction::ResetAfter | FaultAction::IgnorePrefer => {}
        }
        raw.serialize(serializer)
    }
}

#[derive(Debug, Clone, Serialize)]
struct ArmedRule {
    #[serde(flatten)]
    rule: FaultRule,
    matched: u64,
    fired: u64,
}

/// The rules in force, with how often each matched and acted.
#[derive(Debug, Default)]
pub struct FaultBook {
    rules: Vec<ArmedRule>,
}

impl FaultBook {
    pub fn new(rules: Vec<FaultRule>) -> Self {
        let mut book = FaultBook::default();
        book.add(rules);
        book
    }

    pub fn add(&mut self, rules: Vec<FaultRule>) {
        self.rules.extend(rules.into_iter().map(|rule| ArmedRule {
            rule,
            matched: 0,
            fired: 0,
        }));
    }

    pub fn clear(&mut self) {
        self.rules.clear();
    }

    /// Count this request against every matching rule and return what the
    /// first acting one does, if any.
    pub fn take(&mut self, method: &str, path: &str) -> Option<FaultAction> {
        let mut chosen = None;
        for armed in &mut self.rules {
            if !armed.rule.matches(method, path) {
                continue;
            }
            armed.matched += 1;
            let past_skip = armed.matched > armed.rule.after;
            let within_times =
                armed.rule.times == 0 || armed.matched <= armed.rule.after + armed.rule.times;
            if chosen.is_none() && past_skip && within_times {
                armed.fired += 1;
                chosen = Some(armed.rule.action.clone());
            }
        }
        chosen
    }

    /// Each rule as written, plus its `matched` and `fired` counters.
    pub fn report(&self) -> Value {
        serde_json::to_value(&self.rules).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn book(rules: Value) -> FaultBook {
        FaultBook::new(parse_fault_rules(&rules).unwrap())
    }

    #[test]
    fn a_rule_acts_once_by_default_and_only_on_its_method_and_path() {
        let mut book = book(
            json!({"method": "patch", "path_contains": "/referrals/r1", "kind": "reset_before"}),
        );
        assert_eq!(book.take("GET", "/v1.0/engagements/referrals/r1"), None);
        assert_eq!(book.take("PATCH", "/v1.0/engagements/referrals/r2"), None);
        assert_eq!(
            book.take("PATCH", "/v1.0/engagements/referrals/r1"),
            Some(FaultAction::ResetBefore)
        );
        assert_eq!(book.take("PATCH", "/v1.0/engagements/referrals/r1"), None);
    }

    #[test]
    fn every_kind_reads_back_as_it_was_written() {
        let rules = json!([
            {"method": "PATCH", "after": 0, "times": 0, "kind": "ignore_prefer"},
            {"method": "GET", "after": 1, "times": 2, "kind": "delay", "ms": 5},
            {"method": "POST", "after": 0, "times": 1, "kind": "delay_after", "ms": 7},
            {"after": 0, "times": 1, "kind": "reset_before"},
            {"after": 0, "times": 1, "kind": "reset_after"},
            {"after": 0, "times": 1, "kind": "status", "status": 503, "retry_after": 2},
        ]);
        let parsed = parse_fault_rules(&rules).unwrap();
        assert_eq!(parsed[0].action, FaultAction::IgnorePrefer);
        assert_eq!(serde_json::to_value(&parsed).unwrap(), rules);
    }

    #[test]
    fn after_skips_matches_and_times_zero_is_forever() {
        let mut book =
            book(json!([{"method": "GET", "after": 2, "times": 0, "kind": "delay", "ms": 5}]));
        let acted: Vec<bool> = (0..6).map(|_| book.take("GET", "/x").is_some()).collect();
        assert_eq!(acted, [false, false, true, true, true, true]);
    }

    #[test]
    fn every_matching_rule_counts_and_the_first_acting_one_wins() {
        let mut book = book(json!([
            {"method": "PATCH", "kind": "status", "status": 429, "retry_after": 1},
            {"method": "PATCH", "after": 1, "kind": "reset_after"},
        ]));
        let kinds: Vec<Option<&'static str>> = (0..3)
            .map(|_| book.take("PATCH", "/p").map(|a| a.kind()))
            .collect();
        assert_eq!(kinds, [Some("status"), Some("reset_after"), None]);
        let report = book.report();
        assert_eq!(report[0]["matched"], 3);
        assert_eq!(report[0]["fired"], 1);
        assert_eq!(report[1]["matched"], 3);
        assert_eq!(report[1]["fired"], 1);
        assert_eq!(report[0]["retry_after"], 1);
        assert_eq!(report[1]["kind"], "reset_after");
    }

    #[test]
    fn invalid_rules_name_their_index_and_problem() {
        let cases = [
            (json!("x"), "fault rules must be an array"),
            (
                json!([{"kind": "status"}]),
                "fault rule 0: kind status needs a status",
            ),
            (
                json!([{"kind": "delay", "ms": 1}, {"kind": "delay"}]),
                "fault rule 1: kind delay needs ms",
            ),
            (
                json!([{"kind": "delay_after"}]),
                "fault rule 0: kind delay_after needs ms",
            ),
            (json!([{"kind": "explode"}]), "unknown kind \"explode\""),
            (
                json!([{"kind": "status", "status": 99}]),
                "status 99 is not between 200 and 599",
            ),
            (
                json!([{"kind": "reset_before", "ms": 5}]),
                "ms applies to kinds delay and delay_after only",
            ),
            (
                json!([{"kind": "status", "status": 429, "retry-after": 5}]),
                "unknown field `retry-after`",
            ),
            (
                json!([{"kind": "reset_after", "method": " "}]),
                "method is empty",
            ),
        ];
        for (rules, fragment) in cases {
            let message = parse_fault_rules(&rules).unwrap_err().to_string();
            assert!(message.contains(fragment), "{rules}: {message}");
        }
    }

    #[test]
    fn rules_serialize_back_to_what_parses() {
        let rules = json!([
            {"method": "POST", "path_contains": "oauth2", "after": 0, "times": 2, "kind": "status", "status": 503, "body": {"statusCode": 503, "message": "busy"}},
            {"after": 1, "times": 0, "kind": "delay", "ms": 100},
            {"after": 0, "times": 1, "kind": "delay_after", "ms": 50},
        ]);
        let parsed = parse_fault_rules(&rules).unwrap();
        assert_eq!(serde_json::to_value(&parsed).unwrap(), rules);
    }
}
