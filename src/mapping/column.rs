//! Column references: where in a record a value is read from.
//!
//! A reference is a column name, or a path into an expanded lookup with `/`
//! between the steps, as OData writes navigation paths:
//! `transactioncurrencyid/isocurrencycode` is the `isocurrencycode` member of
//! the expanded `transactioncurrencyid` object. A step that is a number
//! indexes an expanded collection (`contact_customer_accounts/0/fullname`).
//!
//! The separator is `/`, not `.`, because annotation keys are full of dots
//! (`statuscode@OData.Community.Display.V1.FormattedValue`) and CSV display
//! names may be too (`Est. Revenue`); no logical name or annotation contains
//! a `/`. A column whose name does contain `/` or `~` (a CSV display header
//! such as `Country/Region` that has no alias) is written with the JSON
//! Pointer escapes: `~1` for `/`, `~0` for `~` (`Country~1Region`).

use serde_json::{Map, Value};

/// A parsed column reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ColumnRef {
    /// As written in the mapping, for messages.
    text: String,
    /// Unescaped steps; never empty.
    steps: Vec<String>,
}

impl ColumnRef {
    /// Parse a reference; the error says what is wrong with it.
    pub(super) fn parse(text: &str) -> Result<ColumnRef, String> {
        if text.trim().is_empty() {
            return Err("a column name is empty".to_owned());
        }
        let mut steps = Vec::new();
        for raw in text.split('/') {
            if raw.is_empty() {
                return Err(format!(
                    "`{text}` has an empty step; `/` separates the steps into an expanded lookup (write `~1` for a `/` in a column name)"
                ));
            }
            steps.push(unescape(raw).ok_or_else(|| {
                format!("`{text}` has a `~` that is neither `~0` (for `~`) nor `~1` (for `/`)")
            })?);
        }
        Ok(ColumnRef {
            text: text.to_owned(),
            steps,
        })
    }

    pub(super) fn text(&self) -> &str {
        &self.text
    }

    /// The record key the reference starts at: the column itself, or the
    /// expanded lookup it steps into.
    pub(super) fn column(&self) -> &str {
        self.steps
            .first()
            .map_or(self.text.as_str(), String::as_str)
    }

    /// The value the reference points at, if the record has it. A step into
    /// something that is not an object (or, for a number, a list) finds
    /// nothing: the lookup was not expanded in this export.
    pub(super) fn lookup<'r>(&self, fields: &'r Map<String, Value>) -> Option<&'r Value> {
        let (first, rest) = self.steps.split_first()?;
        let mut value = fields.get(first)?;
        for step in rest {
            value = match value {
                Value::Object(members) => members.get(step)?,
                Value::Array(items) => items.get(step.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(value)
    }
}

fn unescape(step: &str) -> Option<String> {
    let mut out = String::with_capacity(step.len());
    let mut chars = step.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record() -> Map<String, Value> {
        let value = json!({
            "name": "Contoso",
            "statuscode@OData.Community.Display.V1.FormattedValue": "In Progress",
            "transactioncurrencyid": {"isocurrencycode": "USD"},
            "_transactioncurrencyid_value": "7c1e0a55-1111-4000-8000-000000000001",
            "contacts": [{"fullname": "Sue Smith"}],
            "Country/Region": "Ireland",
            "a~b": 1,
            "Est. Revenue": "$5"
        });
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn references_find_columns_lookups_and_annotations() {
        let record = record();
        let cases = [
            ("name", Some(json!("Contoso"))),
            (
                "statuscode@OData.Community.Display.V1.FormattedValue",
                Some(json!("In Progress")),
            ),
            ("transactioncurrencyid/isocurrencycode", Some(json!("USD"))),
            ("transactioncurrencyid/currencyname", None),
            ("_transactioncurrencyid_value/isocurrencycode", None),
            ("contacts/0/fullname", Some(json!("Sue Smith"))),
            ("contacts/1/fullname", None),
            ("contacts/first/fullname", None),
            ("Country~1Region", Some(json!("Ireland"))),
            ("a~0b", Some(json!(1))),
            ("Est. Revenue", Some(json!("$5"))),
            ("missing", None),
        ];
        for (text, expected) in cases {
            let reference = ColumnRef::parse(text).unwrap();
            assert_eq!(
                reference.lookup(&record).cloned(),
                expected,
                "reference {text:?}"
            );
            assert_eq!(reference.text(), text);
        }
    }

    #[test]
    fn malformed_references_are_refused() {
        let cases = [
            ("", "a column name is empty"),
            ("a//b", "`a//b` has an empty step"),
            ("a/", "`a/` has an empty step"),
            ("/a", "`/a` has an empty step"),
            ("a~2", "`a~2` has a `~` that is neither"),
            ("a~", "`a~` has a `~` that is neither"),
        ];
        for (text, message) in cases {
            let error = ColumnRef::parse(text).unwrap_err();
            assert!(error.starts_with(message), "{text:?}: {error}");
        }
    }
}
