//! Amounts as exports write them: JSON numbers, or labels such as
//! `$12,500.00`, `12.500,00 €`, `CHF 1'200.50`, `₹1,00,000` or `(1,200.00)`.
//!
//! How a label is read:
//! - A currency marker (an ISO code or a symbol) may stand before or after
//!   the digits, never both; it is reported, not checked against anything.
//! - A minus sign may stand before or after the marker (`-$5`, `$-5`) or at
//!   the very end (`5,00 €-`). Parentheses are the accounting notation for a
//!   negative amount (Dynamics writes `($1,200.00)` for en-US): `(1,200.00)`
//!   is -1200. Parentheses together with a sign are refused.
//! - With both `.` and `,` present, the later one is the decimal separator.
//!   With only one of them: several occurrences are digit grouping
//!   (`1,000,000`); a single one followed by exactly three digits after one
//!   to three leading digits is grouping too (`$12,500` is 12500, and so is
//!   `12.500 €`), otherwise it is the decimal separator (`12,5` is 12.5).
//!   When spaces or apostrophes group the digits, a single `.` or `,` is
//!   always the decimal separator (`1 200,50`).
//! - Groups after the first hold two or three digits and the last holds
//!   three, which admits Indian grouping (`1,00,000`) and refuses typos
//!   (`1,2345,678`).
//! - Anything else between the digits is refused, as is a value with more
//!   significant digits than a JSON number holds exactly.

use serde_json::{Number, Value};

use super::currency::{self, CurrencyMarker};

/// A decimal amount, exactly as written: `integer` without leading zeros
/// (`"0"` for none), `fraction` without trailing zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Amount {
    negative: bool,
    integer: String,
    fraction: String,
}

/// An amount and what its label said about the currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MoneyLabel {
    pub amount: Amount,
    pub currency: Option<CurrencyMarker>,
}

/// Why a text is not an amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum AmountError {
    #[error("not an amount: it has no digits")]
    NoDigits,
    #[error("not an amount: unexpected `{0}` among the digits")]
    UnexpectedCharacter(char),
    #[error("not an amount: unknown currency `{0}`")]
    UnknownMarker(String),
    #[error("not an amount: two currencies `{0}` and `{1}`")]
    TwoMarkers(String, String),
    #[error("not an amount: a currency is not expected here")]
    UnexpectedMarker,
    #[error("not an amount: more than one sign")]
    ConflictingSigns,
    #[error("not an amount: unbalanced parenthesis")]
    UnbalancedParenthesis,
    #[error("not an amount: cannot tell the decimal separator from digit grouping")]
    AmbiguousSeparators,
    #[error("not an amount: digit grouping `{0}` is not in thousands")]
    BadGrouping(String),
    #[error("not a whole number")]
    NotWhole,
    #[error("{0} does not fit in a 64-bit integer")]
    TooLarge(String),
    #[error(
        "{0} has more than {MAX_SIGNIFICANT_DIGITS} significant digits, more than a JSON number holds exactly"
    )]
    TooPrecise(String),
}

/// A double holds every decimal of up to 15 significant digits exactly.
const MAX_SIGNIFICANT_DIGITS: usize = 15;

/// Characters that group digits and can never be a decimal separator.
fn is_group_only(c: char) -> bool {
    matches!(c, ' ' | '\u{a0}' | '\u{202f}' | '\u{2009}' | '\'' | '’')
}

fn is_minus(c: char) -> bool {
    c == '-' || c == '\u{2212}'
}

fn is_sign(c: char) -> bool {
    is_minus(c) || c == '+'
}

/// Read a money label. `text` must not be blank.
pub(super) fn parse_money_label(text: &str) -> Result<MoneyLabel, AmountError> {
    let mut rest = text.trim();
    let mut parenthesised = false;
    match (rest.strip_prefix('('), rest.ends_with(')')) {
        (Some(inner), true) => {
            parenthesised = true;
            rest = inner[..inner.len() - 1].trim();
        }
        (None, false) => {}
        _ => return Err(AmountError::UnbalancedParenthesis),
    }

    let first_digit = rest.find(|c: char| c.is_ascii_digit());
    let last_digit = rest.rfind(|c: char| c.is_ascii_digit());
    let (Some(mut start), Some(last)) = (first_digit, last_digit) else {
        return Err(AmountError::NoDigits);
    };
    // `$.50`: a separator right before the first digit belongs to the number.
    if rest[..start].ends_with(['.', ',']) {
        start -= 1;
    }
    let (before, digits, after) = (&rest[..start], &rest[start..=last], &rest[last + 1..]);

    let mut signs = Vec::new();
    let before_marker = strip_sign(before.trim(), &mut signs, true);
    let after_marker = strip_sign(after.trim(), &mut signs, false);
    if signs.len() > 1 || (parenthesised && !signs.is_empty()) {
        return Err(AmountError::ConflictingSigns);
    }
    let negative = parenthesised || signs.first().is_some_and(|c| is_minus(*c));

    let currency = match (before_marker, after_marker) {
        ("", "") => None,
        (marker, "") | ("", marker) => Some(
            currency::marker(marker)
                .ok_or_else(|| AmountError::UnknownMarker(marker.to_owned()))?,
        ),
        (first, second) => {
            return Err(AmountError::TwoMarkers(first.to_owned(), second.to_owned()));
        }
    };

    let mut amount = parse_digits(digits)?;
    amount.negative = negative && !amount.is_zero();
    Ok(MoneyLabel { amount, currency })
}

/// Read a plain number written as text (`1,234.5`, `-7`); no currency.
pub(super) fn parse_number(text: &str) -> Result<Amount, AmountError> {
    let label = parse_money_label(text)?;
    match label.currency {
        Some(_) => Err(AmountError::UnexpectedMarker),
        None => Ok(label.amount),
    }
}

/// Take the signs off the outer ends of a marker: before the digits a
/// sign may open (`-$`) or close (`$-`) it; after the digits only a minus,
/// which is the trailing-minus notation (`5,00 €-`, `5 -€`).
fn strip_sign<'a>(text: &'a str, signs: &mut Vec<char>, before_digits: bool) -> &'a str {
    let allowed = |c: &char| {
        if before_digits {
            is_sign(*c)
        } else {
            is_minus(*c)
        }
    };
    let mut text = text;
    loop {
        if let Some(c) = text.chars().next().filter(allowed) {
            signs.push(c);
            text = text[c.len_utf8()..].trim();
        } else if let Some(c) = text.chars().next_back().filter(allowed) {
            signs.push(c);
            text = text[..text.len() - c.len_utf8()].trim();
        } else {
            return text;
        }
    }
}

/// The digits from the first to the last, with separators, → an amount.
fn parse_digits(digits: &str) -> Result<Amount, AmountError> {
    if let Some(c) = digits
        .chars()
        .find(|c| !(c.is_ascii_digit() || *c == '.' || *c == ',' || is_group_only(*c)))
    {
        return Err(AmountError::UnexpectedCharacter(c));
    }
    let dots = digits.matches('.').count();
    let commas = digits.matches(',').count();
    let spaced = digits.chars().any(is_group_only);

    let decimal = match (dots, commas) {
        (0, 0) => None,
        (_, 0) | (0, _) => {
            let (separator, count) = if dots > 0 { ('.', dots) } else { (',', commas) };
            if count > 1 {
                None
            } else if spaced || !looks_like_thousands(digits, separator) {
                Some(separator)
            } else {
                None
            }
        }
        _ => {
            let last_dot = digits.rfind('.');
            let last_comma = digits.rfind(',');
            let (separator, count) = if last_dot > last_comma {
                ('.', dots)
            } else {
                (',', commas)
            };
            if count > 1 {
                return Err(AmountError::AmbiguousSeparators);
            }
            Some(separator)
        }
    };

    let (integer_part, fraction_part) = match decimal {
        Some(separator) => match digits.split_once(separator) {
            Some((integer, fraction)) => (integer, fraction),
            None => (digits, ""),
        },
        None => (digits, ""),
    };
    if !fraction_part.chars().all(|c| c.is_ascii_digit()) {
        return Err(AmountError::BadGrouping(digits.to_owned()));
    }
    let integer = ungroup(integer_part, digits)?;

    let integer = integer.trim_start_matches('0');
    let fraction = fraction_part.trim_end_matches('0');
    Ok(Amount {
        negative: false,
        integer: if integer.is_empty() { "0" } else { integer }.to_owned(),
        fraction: fraction.to_owned(),
    })
}

/// `12,500` and `1.500`: one separator, one to three digits before it (not
/// just `0`), exactly three after.
fn looks_like_thousands(digits: &str, separator: char) -> bool {
    match digits.split_once(separator) {
        Some((before, after)) => {
            (1..=3).contains(&before.len()) && before != "0" && after.len() == 3
        }
        None => false,
    }
}

/// The integer digits with their grouping removed, after checking that
/// the grouping is consistent.
fn ungroup(integer_part: &str, whole: &str) -> Result<String, AmountError> {
    let separators: Vec<char> = {
        let mut found: Vec<char> = integer_part
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .collect();
        found.dedup();
        found
    };
    if separators.is_empty() {
        return Ok(integer_part.to_owned());
    }
    let separator = separators[0];
    if separators.iter().any(|c| *c != separator) {
        return Err(AmountError::BadGrouping(whole.to_owned()));
    }
    let groups: Vec<&str> = integer_part.split(separator).collect();
    let last = groups.len() - 1;
    let well_grouped = groups.iter().enumerate().all(|(index, group)| {
        let len = group.len();
        let digits_only = group.chars().all(|c| c.is_ascii_digit());
        digits_only
            && match index {
                0 => (1..=3).contains(&len),
                i if i == last => len == 3,
                _ => len == 2 || len == 3,
            }
    });
    if !well_grouped {
        return Err(AmountError::BadGrouping(whole.to_owned()));
    }
    Ok(groups.concat())
}

impl Amount {
    fn is_zero(&self) -> bool {
        self.integer == "0" && self.fraction.is_empty()
    }

    pub(super) fn is_whole(&self) -> bool {
        self.fraction.is_empty()
    }

    /// The amount as written, e.g. `-12500.5`.
    fn decimal(&self) -> String {
        let sign = if self.negative { "-" } else { "" };
        if self.fraction.is_empty() {
            format!("{sign}{}", self.integer)
        } else {
            format!("{sign}{}.{}", self.integer, self.fraction)
        }
    }

    /// The amount as a JSON number: an integer when it is whole (so that
    /// 50000 and 50000.00 are the same value), else a double, provided the
    /// double holds it exactly.
    pub(super) fn to_json(&self) -> Result<Value, AmountError> {
        let decimal = self.decimal();
        if self.is_whole() {
            return decimal
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| AmountError::TooLarge(decimal));
        }
        let significant = if self.integer == "0" {
            self.fraction.trim_start_matches('0').len()
        } else {
            self.integer.len() + self.fraction.len()
        };
        if significant > MAX_SIGNIFICANT_DIGITS {
            return Err(AmountError::TooPrecise(decimal));
        }
        decimal
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .ok_or(AmountError::TooPrecise(decimal))
    }
}

/// A JSON number in the same normal form as [`Amount::to_json`]: a double
/// that holds a whole number becomes an integer.
pub(super) fn normalise_number(number: &Number) -> Value {
    // 2^53: beyond it not every whole double is a distinct integer.
    const EXACT_LIMIT: f64 = 9_007_199_254_740_992.0;
    match number.as_f64() {
        Some(float) if !number.is_i64() && !number.is_u64() => {
            if float.fract() == 0.0 && float.abs() < EXACT_LIMIT {
                // Exact: the value is whole and within ±2^53.
                Value::from(float as i64)
            } else {
                Value::Number(number.clone())
            }
        }
        _ => Value::Number(number.clone()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn amount_json(text: &str) -> Result<(Value, Option<CurrencyMarker>), AmountError> {
        let label = parse_money_label(text)?;
        Ok((label.amount.to_json()?, label.currency))
    }

    #[test]
    fn labels_become_amounts() {
        use CurrencyMarker::{Code, Symbol};
        let cases: &[(&str, Value, Option<CurrencyMarker>)] = &[
            ("$12,500.00", json!(12500), Some(Symbol("$"))),
            ("$42,000.50", json!(42000.5), Some(Symbol("$"))),
            ("€20,000.00", json!(20000), Some(Symbol("€"))),
            ("12.500,00 €", json!(12500), Some(Symbol("€"))),
            ("12 500,75 €", json!(12500.75), Some(Symbol("€"))),
            ("1\u{a0}200,5\u{a0}€", json!(1200.5), Some(Symbol("€"))),
            ("CHF 1'200.50", json!(1200.5), Some(Code("CHF"))),
            ("USD 12,500.00", json!(12500), Some(Code("USD"))),
            ("12500 usd", json!(12500), Some(Code("USD"))),
            ("₹1,00,000.00", json!(100000), Some(Symbol("₹"))),
            ("(1,200.00)", json!(-1200), None),
            ("($1,200.00)", json!(-1200), Some(Symbol("$"))),
            ("-$1,200.00", json!(-1200), Some(Symbol("$"))),
            ("$-1,200.00", json!(-1200), Some(Symbol("$"))),
            ("−5", json!(-5), None),
            ("1.200,00 €-", json!(-1200), Some(Symbol("€"))),
            ("+7", json!(7), None),
            ("$12,500", json!(12500), Some(Symbol("$"))),
            ("12.500 €", json!(12500), Some(Symbol("€"))),
            ("12,5", json!(12.5), None),
            ("0.500", json!(0.5), None),
            ("1234.567", json!(1234.567), None),
            ("1,000,000", json!(1000000), None),
            ("$.50", json!(0.5), Some(Symbol("$"))),
            ("-0.00", json!(0), None),
            ("R$ 1.234,56", json!(1234.56), Some(Symbol("R$"))),
            ("kr 99", json!(99), Some(Symbol("kr"))),
            ("  75000 ", json!(75000), None),
            ("0.000000000000001", json!(0.000000000000001), None),
            ("9223372036854775807", json!(9223372036854775807i64), None),
        ];
        for (text, value, currency) in cases {
            assert_eq!(
                amount_json(text),
                Ok((value.clone(), *currency)),
                "label {text:?}"
            );
        }
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let cases = [
            ("abc", AmountError::NoDigits),
            ("N/A", AmountError::NoDigits),
            ("12 apples", AmountError::UnknownMarker("apples".into())),
            ("1e5", AmountError::UnexpectedCharacter('e')),
            ("12-5", AmountError::UnexpectedCharacter('-')),
            ("$12 €", AmountError::TwoMarkers("$".into(), "€".into())),
            ("(12", AmountError::UnbalancedParenthesis),
            ("(-12)", AmountError::ConflictingSigns),
            ("--12", AmountError::ConflictingSigns),
            ("1.234.567,89.5", AmountError::AmbiguousSeparators),
            ("1,2345,678", AmountError::BadGrouping("1,2345,678".into())),
            ("5+", AmountError::UnknownMarker("+".into())),
            ("1,234,56", AmountError::BadGrouping("1,234,56".into())),
            (
                "1234,567,890",
                AmountError::BadGrouping("1234,567,890".into()),
            ),
            (
                "1 234.567,5",
                AmountError::BadGrouping("1 234.567,5".into()),
            ),
            (
                "99999999999999999999",
                AmountError::TooLarge("99999999999999999999".into()),
            ),
            (
                "1234567890123.456",
                AmountError::TooPrecise("1234567890123.456".into()),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(amount_json(text), Err(expected), "label {text:?}");
        }
    }

    #[test]
    fn plain_numbers_refuse_currencies() {
        assert_eq!(
            parse_number("1,234.5").map(|a| a.to_json()),
            Ok(Ok(json!(1234.5)))
        );
        assert_eq!(parse_number("$5"), Err(AmountError::UnexpectedMarker));
        assert!(parse_number("40").is_ok_and(|a| a.is_whole()));
        assert!(parse_number("40.5").is_ok_and(|a| !a.is_whole()));
    }

    #[test]
    fn whole_doubles_become_integers() {
        let cases = [
            (json!(50000.0), json!(50000)),
            (json!(42000.5), json!(42000.5)),
            (json!(-3.0), json!(-3)),
            (json!(7), json!(7)),
            (json!(1e300), json!(1e300)),
        ];
        for (input, expected) in cases {
            let Value::Number(number) = &input else {
                unreachable!()
            };
            let normal = normalise_number(number);
            assert_eq!(normal, expected, "number {input}");
            // Integer and double JSON numbers never compare equal, so the
            // kind matters, not only the value.
            assert_eq!(normal.is_i64(), expected.is_i64(), "number {input}");
        }
    }
}
