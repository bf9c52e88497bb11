//! Field types: one export value → the JSON value a referral field holds.
//!
//! Every conversion is pure. A conversion answers `Ok(None)` for an empty
//! value (null, a blank string, or — for a currency — an amount that names
//! no currency), so that the next column, the default or nothing is used.

use serde_json::{Number, Value};

use super::amount::{self, AmountError};
use super::country::{self, CountryError};
use super::currency::{self, CurrencyError};
use super::date::{self, DateError};

/// What a field holds, as written in `type = "…"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FieldType {
    /// Text, trimmed; numbers and booleans as written in JSON.
    Text,
    /// A number: JSON number or `1,234.5`.
    Number,
    /// A whole number.
    Integer,
    /// An amount: JSON number or a label such as `$12,500.00`.
    Money,
    /// A calendar date → `YYYY-MM-DDT00:00:00Z`.
    Date,
    /// A moment → UTC `YYYY-MM-DDTHH:MM:SSZ`.
    DateTime,
    /// A country name or code → ISO 3166 alpha-2.
    Country,
    /// A currency code, name or money label → ISO 4217.
    Currency,
    /// An email address, checked for its shape.
    Email,
    /// `true`/`false`, `yes`/`no`, `1`/`0`.
    Bool,
    /// A GUID → lower case, hyphenated, without braces.
    Guid,
}

impl FieldType {
    pub(super) const NAMES: &'static [(&'static str, FieldType)] = &[
        ("text", FieldType::Text),
        ("number", FieldType::Number),
        ("integer", FieldType::Integer),
        ("money", FieldType::Money),
        ("date", FieldType::Date),
        ("datetime", FieldType::DateTime),
        ("country", FieldType::Country),
        ("currency", FieldType::Currency),
        ("email", FieldType::Email),
        ("bool", FieldType::Bool),
        ("guid", FieldType::Guid),
    ];

    pub(super) fn from_name(name: &str) -> Option<FieldType> {
        FieldType::NAMES
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, kind)| *kind)
    }
}

/// Why a value cannot be held by a field of its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum ConversionError {
    #[error("expected {expected}, found {found}")]
    WrongKind {
        expected: &'static str,
        found: &'static str,
    },
    #[error(transparent)]
    Amount(#[from] AmountError),
    #[error(transparent)]
    Date(#[from] DateError),
    #[error(transparent)]
    Country(#[from] CountryError),
    #[error(transparent)]
    Currency(#[from] CurrencyError),
    #[error(
        "not a currency: expected an ISO 4217 code, a currency name or an amount with a currency symbol"
    )]
    NotACurrency,
    #[error("not an email address")]
    NotAnEmail,
    #[error("not a yes/no value: expected true, false, yes, no, 1 or 0")]
    NotABool,
    #[error("not a GUID")]
    NotAGuid,
}

/// What conversions need to know about the configuration.
#[derive(Debug, Clone)]
pub(super) struct Context {
    /// ISO 4217, validated.
    pub default_currency: &'static str,
}

/// Convert `value` for a field of type `kind`.
pub(super) fn convert(
    kind: FieldType,
    value: &Value,
    context: &Context,
) -> Result<Option<Value>, ConversionError> {
    let scalar = match value {
        Value::Null => return Ok(None),
        Value::String(text) if text.trim().is_empty() => return Ok(None),
        Value::String(text) => Scalar::Text(text.trim()),
        Value::Number(number) => Scalar::Number(number),
        Value::Bool(flag) => Scalar::Bool(*flag),
        Value::Object(_) | Value::Array(_) => return Err(wrong_kind(kind, value)),
    };
    let converted = match kind {
        FieldType::Text => text_value(scalar),
        FieldType::Number | FieldType::Money => amount_value(kind, scalar)?,
        FieldType::Integer => integer_value(scalar)?,
        FieldType::Date => match scalar {
            Scalar::Text(text) => Converted::Value(Value::from(date::to_utc_date(text)?)),
            _ => Converted::WrongKind,
        },
        FieldType::DateTime => match scalar {
            Scalar::Text(text) => Converted::Value(Value::from(date::to_utc_datetime(text)?)),
            _ => Converted::WrongKind,
        },
        FieldType::Country => country_value(scalar)?,
        FieldType::Currency => currency_value(scalar, context)?,
        FieldType::Email => email_value(scalar)?,
        FieldType::Bool => bool_value(scalar)?,
        FieldType::Guid => match scalar {
            Scalar::Text(text) => Converted::Value(Value::from(normalise_guid(text)?)),
            _ => Converted::WrongKind,
        },
    };
    match converted {
        Converted::Value(converted) => Ok(Some(converted)),
        Converted::Empty => Ok(None),
        Converted::WrongKind => Err(wrong_kind(kind, value)),
    }
}

/// A value that is neither empty nor a list or an object; text trimmed.
#[derive(Clone, Copy)]
enum Scalar<'a> {
    Text(&'a str),
    Number(&'a Number),
    Bool(bool),
}

/// What a type makes of a scalar it did not refuse.
enum Converted {
    Value(Value),
    /// An empty value: a currency field's amount that names no currency.
    Empty,
    /// The type does not hold this kind of value at all.
    WrongKind,
}

fn wrong_kind(kind: FieldType, value: &Value) -> ConversionError {
    ConversionError::WrongKind {
        expected: expected(kind),
        found: found(value),
    }
}

/// Numbers and booleans as JSON writes them.
fn text_value(scalar: Scalar<'_>) -> Converted {
    Converted::Value(match scalar {
        Scalar::Text(text) => Value::from(text),
        Scalar::Number(number) => Value::from(number.to_string()),
        Scalar::Bool(flag) => Value::from(flag.to_string()),
    })
}

/// A `number` or a `money` field.
fn amount_value(kind: FieldType, scalar: Scalar<'_>) -> Result<Converted, ConversionError> {
    let amount = match scalar {
        // An integer serde_json held exactly may still have more digits
        // than the referral's number holds: read like text, it is refused
        // as text is. (A JSON number a double would round reaches here as
        // text: the export readers keep it so.)
        Scalar::Number(number) if number.is_i64() || number.is_u64() => {
            amount::parse_number(&number.to_string())?.to_json()?
        }
        Scalar::Number(number) => amount::normalise_number(number),
        Scalar::Text(text) if kind == FieldType::Number => amount::parse_number(text)?.to_json()?,
        Scalar::Text(text) => amount::parse_money_label(text)?.amount.to_json()?,
        Scalar::Bool(_) => return Ok(Converted::WrongKind),
    };
    Ok(Converted::Value(amount))
}

fn integer_value(scalar: Scalar<'_>) -> Result<Converted, ConversionError> {
    let whole = match scalar {
        Scalar::Number(number) => match amount::normalise_number(number) {
            whole @ Value::Number(_) if whole.is_i64() || whole.is_u64() => whole,
            _ => return Err(AmountError::NotWhole.into()),
        },
        Scalar::Text(text) => {
            let amount = amount::parse_number(text)?;
            if !amount.is_whole() {
                return Err(AmountError::NotWhole.into());
            }
            amount.to_json()?
        }
        Scalar::Bool(_) => return Ok(Converted::WrongKind),
    };
    Ok(Converted::Value(whole))
}

fn country_value(scalar: Scalar<'_>) -> Result<Converted, ConversionError> {
    let alpha2 = match scalar {
        Scalar::Text(text) => country::country_alpha2(text)?,
        Scalar::Number(number) => country::country_alpha2(&number.to_string())?,
        Scalar::Bool(_) => return Ok(Converted::WrongKind),
    };
    Ok(Converted::Value(Value::from(alpha2)))
}

fn currency_value(scalar: Scalar<'_>, context: &Context) -> Result<Converted, ConversionError> {
    match scalar {
        Scalar::Text(text) => Ok(match currency_of(text, context)? {
            Some(code) => Converted::Value(Value::from(code)),
            None => Converted::Empty,
        }),
        // An amount alone names no currency.
        Scalar::Number(_) => Ok(Converted::Empty),
        Scalar::Bool(_) => Ok(Converted::WrongKind),
    }
}

fn email_value(scalar: Scalar<'_>) -> Result<Converted, ConversionError> {
    match scalar {
        Scalar::Text(text) if is_email(text) => Ok(Converted::Value(Value::from(text))),
        Scalar::Text(_) => Err(ConversionError::NotAnEmail),
        Scalar::Number(_) | Scalar::Bool(_) => Ok(Converted::WrongKind),
    }
}

fn bool_value(scalar: Scalar<'_>) -> Result<Converted, ConversionError> {
    let flag = match scalar {
        Scalar::Bool(flag) => flag,
        Scalar::Number(number) => match number.as_f64() {
            Some(0.0) => false,
            Some(1.0) => true,
            _ => return Err(ConversionError::NotABool),
        },
        Scalar::Text(text) => parse_bool(text)?,
    };
    Ok(Converted::Value(Value::from(flag)))
}

/// A GUID in its canonical form: lower case, hyphenated, no braces.
pub(super) fn normalise_guid(text: &str) -> Result<String, ConversionError> {
    uuid::Uuid::try_parse(text.trim())
        .map(|guid| guid.hyphenated().to_string())
        .map_err(|_| ConversionError::NotAGuid)
}

/// A code, a name, or a money label's marker → ISO 4217; `None` for an
/// amount without a marker.
fn currency_of(text: &str, context: &Context) -> Result<Option<&'static str>, ConversionError> {
    if let Some(code) = currency::iso_code(text).or_else(|| currency::by_name(text)) {
        return Ok(Some(code));
    }
    let looks_like_code = text.len() == 3 && text.chars().all(|c| c.is_ascii_alphabetic());
    if looks_like_code {
        return Err(CurrencyError::UnknownCode(text.to_owned()).into());
    }
    match amount::parse_money_label(text) {
        Ok(label) => match label.currency {
            Some(marker) => Ok(Some(currency::resolve_marker(
                marker,
                context.default_currency,
            )?)),
            None => Ok(None),
        },
        Err(_) => Err(ConversionError::NotACurrency),
    }
}

/// `local@domain.tld`: one `@`, no whitespace, a dotted domain without
/// empty labels. Deliberately loose: the point is to catch a phone number
/// or a name in the email column, not to implement RFC 5322.
fn is_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && !text.chars().any(char::is_whitespace)
        && domain.contains('.')
        && domain.split('.').all(|label| !label.is_empty())
}

fn parse_bool(text: &str) -> Result<bool, ConversionError> {
    match text.to_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(ConversionError::NotABool),
    }
}

fn expected(kind: FieldType) -> &'static str {
    match kind {
        FieldType::Text => "text",
        FieldType::Number => "a number",
        FieldType::Integer => "a whole number",
        FieldType::Money => "an amount",
        FieldType::Date => "a date",
        FieldType::DateTime => "a date-time",
        FieldType::Country => "a country",
        FieldType::Currency => "a currency",
        FieldType::Email => "an email address",
        FieldType::Bool => "a yes/no value",
        FieldType::Guid => "a GUID",
    }
}

fn found(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn context(default_currency: &'static str) -> Context {
        Context { default_currency }
    }

    fn check(kind: FieldType, cases: &[(Value, Result<Option<Value>, &str>)]) {
        for (input, expected) in cases {
            let converted = convert(kind, input, &context("USD")).map_err(|e| e.to_string());
            let expected = expected.clone().map_err(str::to_owned);
            assert_eq!(converted, expected, "{kind:?} of {input}");
        }
    }

    #[test]
    fn empties_are_empty_for_every_type() {
        for (_, kind) in FieldType::NAMES {
            for empty in [json!(null), json!(""), json!("  \t ")] {
                assert_eq!(
                    convert(*kind, &empty, &context("USD")),
                    Ok(None),
                    "{kind:?}"
                );
            }
        }
    }

    #[test]
    fn text() {
        check(
            FieldType::Text,
            &[
                (json!("  Contoso  "), Ok(Some(json!("Contoso")))),
                (
                    json!("line one,\nline two"),
                    Ok(Some(json!("line one,\nline two"))),
                ),
                (json!(98052), Ok(Some(json!("98052")))),
                (json!(true), Ok(Some(json!("true")))),
                (json!({"name": "x"}), Err("expected text, found an object")),
                (json!(["x"]), Err("expected text, found a list")),
            ],
        );
    }

    #[test]
    fn numbers_and_money() {
        check(
            FieldType::Money,
            &[
                (json!(50000.0), Ok(Some(json!(50000)))),
                (json!(42000.5), Ok(Some(json!(42000.5)))),
                (json!("$12,500.00"), Ok(Some(json!(12500)))),
                (json!("12.500,00 €"), Ok(Some(json!(12500)))),
                (json!("(1,200.00)"), Ok(Some(json!(-1200)))),
                (json!("lots"), Err("not an amount: it has no digits")),
                (json!(true), Err("expected an amount, found a boolean")),
            ],
        );
        check(
            FieldType::Number,
            &[
                (json!(0.25), Ok(Some(json!(0.25)))),
                (json!("1,234.5"), Ok(Some(json!(1234.5)))),
                (
                    json!("$5"),
                    Err("not an amount: a currency is not expected here"),
                ),
            ],
        );
        check(
            FieldType::Integer,
            &[
                (json!(40), Ok(Some(json!(40)))),
                (json!(40.0), Ok(Some(json!(40)))),
                (json!("1,000"), Ok(Some(json!(1000)))),
                (json!(40.5), Err("not a whole number")),
                (json!("40.5"), Err("not a whole number")),
            ],
        );
    }

    #[test]
    fn dates() {
        check(
            FieldType::Date,
            &[
                (json!("2024-05-30"), Ok(Some(json!("2024-05-30T00:00:00Z")))),
                (json!("5/30/2024"), Ok(Some(json!("2024-05-30T00:00:00Z")))),
                (json!("2/30/2024"), Err("no such date")),
                (json!(20240530), Err("expected a date, found a number")),
            ],
        );
        check(
            FieldType::DateTime,
            &[
                (
                    json!("2024-05-30T21:59:01Z"),
                    Ok(Some(json!("2024-05-30T21:59:01Z"))),
                ),
                (
                    json!("2024-05-30T23:59:01+02:00"),
                    Ok(Some(json!("2024-05-30T21:59:01Z"))),
                ),
                (json!("2024-05-30"), Ok(Some(json!("2024-05-30T00:00:00Z")))),
            ],
        );
    }

    #[test]
    fn countries() {
        check(
            FieldType::Country,
            &[
                (json!("United States"), Ok(Some(json!("US")))),
                (json!("irl"), Ok(Some(json!("IE")))),
                (json!(" Brazil "), Ok(Some(json!("BR")))),
                (json!(276), Ok(Some(json!("DE")))),
                (
                    json!("Narnia"),
                    Err(
                        "unknown country `Narnia`: expected an ISO 3166 alpha-2 or alpha-3 code or an English country name",
                    ),
                ),
            ],
        );
    }

    #[test]
    fn currencies() {
        check(
            FieldType::Currency,
            &[
                (json!("USD"), Ok(Some(json!("USD")))),
                (json!("eur"), Ok(Some(json!("EUR")))),
                (json!("US Dollar"), Ok(Some(json!("USD")))),
                (json!("Pound Sterling"), Ok(Some(json!("GBP")))),
                (json!("Japanese Yen"), Ok(Some(json!("JPY")))),
                (json!("€20,000.00"), Ok(Some(json!("EUR")))),
                (json!("12.500,00 €"), Ok(Some(json!("EUR")))),
                (json!("$75,000.00"), Ok(Some(json!("USD")))),
                (json!("75,000.00"), Ok(None)),
                (json!(75000), Ok(None)),
                (json!("XYZ"), Err("unknown ISO 4217 currency code `XYZ`")),
                (
                    json!("Monopoly money"),
                    Err(
                        "not a currency: expected an ISO 4217 code, a currency name or an amount with a currency symbol",
                    ),
                ),
            ],
        );
        let dollar = |default| convert(FieldType::Currency, &json!("$5"), &context(default));
        assert_eq!(dollar("CAD"), Ok(Some(json!("CAD"))));
        assert_eq!(dollar("EUR"), Ok(Some(json!("USD"))));
    }

    #[test]
    fn emails_bools_guids() {
        check(
            FieldType::Email,
            &[
                (
                    json!(" sue.smith@adatum.example "),
                    Ok(Some(json!("sue.smith@adatum.example"))),
                ),
                (json!("Sue Smith"), Err("not an email address")),
                (json!("sue@localhost"), Err("not an email address")),
                (json!("a@b@c.d"), Err("not an email address")),
                (
                    json!("sue smith@adatum.example"),
                    Err("not an email address"),
                ),
                (json!("sue@adatum..example"), Err("not an email address")),
            ],
        );
        check(
            FieldType::Bool,
            &[
                (json!(true), Ok(Some(json!(true)))),
                (json!("Yes"), Ok(Some(json!(true)))),
                (json!("no"), Ok(Some(json!(false)))),
                (json!(0), Ok(Some(json!(false)))),
                (
                    json!(2),
                    Err("not a yes/no value: expected true, false, yes, no, 1 or 0"),
                ),
                (
                    json!("maybe"),
                    Err("not a yes/no value: expected true, false, yes, no, 1 or 0"),
                ),
            ],
        );
        check(
            FieldType::Guid,
            &[
                (
                    json!("{3F2504E0-4F89-41D3-9A0C-0305E82C3301}"),
                    Ok(Some(json!("3f2504e0-4f89-41d3-9a0c-0305e82c3301"))),
                ),
                (
                    json!("3F2504E04F8941D39A0C0305E82C3301"),
                    Ok(Some(json!("3f2504e0-4f89-41d3-9a0c-0305e82c3301"))),
                ),
                (json!("not-a-guid"), Err("not a GUID")),
            ],
        );
    }
}
