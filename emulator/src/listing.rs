//! The list operation's OData query options, parsed once into a validated
//! [`ListQuery`], and the skip token that carries a page boundary.
//!
//! Pages use keyset pagination on (timestamp, id): a skip token names the
//! last referral of the previous page, so referrals created while a client
//! pages through the list never shift the pages it has not read yet.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use super::rejection::Rejection;

/// The service never returns more than this many referrals in one page.
pub const MAX_PAGE_SIZE: usize = 100;

/// Members a `$filter` may compare; `externalReferenceId` is deliberately
/// absent because the real service does not document it.
const FILTERABLE: &[&str] = &["engagementId", "status", "substatus", "type"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderField {
    CreatedDateTime,
    UpdatedDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    pub field: OrderField,
    pub descending: bool,
}

/// Where a referral sits in the list order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SortKey {
    pub at: DateTime<Utc>,
    pub id: String,
}

impl SortKey {
    /// Opaque to clients: hex of `timestamp|id`.
    pub fn to_skip_token(&self) -> String {
        let at = self.at.to_rfc3339_opts(SecondsFormat::Nanos, true);
        hex::encode(format!("{at}|{}", self.id))
    }

    pub fn from_skip_token(token: &str) -> Option<SortKey> {
        let bytes = hex::decode(token).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (at, id) = text.split_once('|')?;
        let at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
        Some(SortKey {
            at,
            id: id.to_owned(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub top: usize,
    pub order: Order,
    /// Member name and the value it must equal; all must hold.
    pub filter: Vec<(String, String)>,
    pub select: Option<Vec<String>>,
    pub after: Option<SortKey>,
    /// The options as the client wrote them, echoed into the next link.
    raw_filter: Option<String>,
    raw_orderby: Option<String>,
    raw_select: Option<String>,
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery {
            top: MAX_PAGE_SIZE,
            order: Order {
                field: OrderField::CreatedDateTime,
                descending: false,
            },
            filter: Vec::new(),
            select: None,
            after: None,
            raw_filter: None,
            raw_orderby: None,
            raw_select: None,
        }
    }
}

impl ListQuery {
    /// Parse decoded query pairs. Options outside OData's `$` namespace are
    /// ignored, as a gateway would.
    pub fn parse(pairs: &[(String, String)]) -> Result<ListQuery, Rejection> {
        let mut query = ListQuery::default();
        let mut seen: Vec<&str> = Vec::new();
        for (name, value) in pairs {
            if !name.starts_with('$') {
                continue;
            }
            if seen.contains(&name.as_str()) {
                return Err(invalid(name, "is given more than once"));
            }
            seen.push(name);
            match name.as_str() {
                "$top" => query.top = parse_top(value)?,
                "$skiptoken" => {
                    query.after =
                        Some(SortKey::from_skip_token(value).ok_or_else(|| {
                            invalid(name, "is not a skip token this service issued")
                        })?);
                }
                "$orderby" => {
                    query.order = parse_orderby(value)?;
                    query.raw_orderby = Some(value.clone());
                }
                "$filter" => {
                    query.filter = parse_filter(value)?;
                    query.raw_filter = Some(value.clone());
                }
                "$select" => {
                    query.select = Some(parse_select(value)?);
                    query.raw_select = Some(value.clone());
                }
                "$count" if value == "true" || value == "false" => {}
                "$count" => return Err(invalid(name, "must be true or false")),
                _ => return Err(invalid(name, "is not supported")),
            }
        }
        Ok(query)
    }

    /// The query string of the page after `last`.
    pub fn next_page_query(&self, last: &SortKey) -> String {
        let mut parts = vec![format!("$top={}", self.top)];
        for (name, raw) in [
            ("$orderby", &self.raw_orderby),
            ("$filter", &self.raw_filter),
            ("$select", &self.raw_select),
        ] {
            if let Some(raw) = raw {
                parts.push(format!("{name}={}", encode_query_value(raw)));
            }
        }
        parts.push(format!("$skiptoken={}", last.to_skip_token()));
        parts.join("&")
    }

    pub fn matches(&self, document: &Value) -> bool {
        self.filter
            .iter()
            .all(|(member, value)| document.get(member).and_then(Value::as_str) == Some(value))
    }

    /// Keep only the `$select`ed members.
    pub fn project(&self, document: &Value) -> Value {
        match (&self.select, document.as_object()) {
            (Some(members), Some(object)) => Value::Object(
                object
                    .iter()
                    .filter(|(name, _)| members.contains(name))
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect(),
            ),
            _ => document.clone(),
        }
    }
}

fn invalid(option: &str, reason: &str) -> Rejection {
    Rejection::InvalidQuery {
        option: option.to_owned(),
        reason: reason.to_owned(),
    }
}

fn parse_top(value: &str) -> Result<usize, Rejection> {
    match value.trim().parse::<usize>() {
        Ok(0) | Err(_) => Err(invalid("$top", "must be a positive integer")),
        Ok(top) => Ok(top.min(MAX_PAGE_SIZE)),
    }
}

fn parse_orderby(value: &str) -> Result<Order, Rejection> {
    let mut words = value.split_whitespace();
    let field = match words.next() {
        Some("createdDateTime") => OrderField::CreatedDateTime,
        Some("updatedDateTime") => OrderField::UpdatedDateTime,
        _ => {
            return Err(invalid(
                "$orderby",
                "can order by createdDateTime or updatedDateTime only",
            ));
        }
    };
    let descending = match words.next() {
        None => false,
        Some(direction) if direction.eq_ignore_ascii_case("asc") => false,
        Some(direction) if direction.eq_ignore_ascii_case("desc") => true,
        Some(_) => return Err(invalid("$orderby", "direction must be asc or desc")),
    };
    if words.next().is_some() {
        return Err(invalid(
            "$orderby",
            "takes one field and an optional direction",
        ));
    }
    Ok(Order { field, descending })
}

/// `member eq 'value' [and member eq 'value' ...]`, the only form the
/// emulator understands.
fn parse_filter(value: &str) -> Result<Vec<(String, String)>, Rejection> {
    let mut clauses = Vec::new();
    let mut rest = value.trim();
    loop {
        let (member, after_member) = rest
            .split_once(char::is_whitespace)
            .ok_or_else(|| invalid("$filter", "expected `member eq 'value'`"))?;
        if member == "externalReferenceId" {
            return Err(invalid(
                "$filter",
                "filtering by externalReferenceId is not documented and not supported; page through the list instead",
            ));
        }
        if !FILTERABLE.contains(&member) {
            return Err(invalid(
                "$filter",
                &format!("can compare {} only", FILTERABLE.join(", ")),
            ));
        }
        let after_eq = after_member
            .trim_start()
            .strip_prefix("eq")
            .filter(|tail| tail.starts_with(char::is_whitespace))
            .ok_or_else(|| invalid("$filter", "supports the eq operator only"))?;
        let (literal, tail) = parse_string_literal(after_eq.trim_start())
            .ok_or_else(|| invalid("$filter", "expected a quoted string after eq"))?;
        clauses.push((member.to_owned(), literal));
        let tail = tail.trim_start();
        if tail.is_empty() {
            return Ok(clauses);
        }
        rest = tail
            .strip_prefix("and")
            .filter(|tail| tail.starts_with(char::is_whitespace))
            .ok_or_else(|| invalid("$filter", "clauses can be joined with and only"))?
            .trim_start();
    }
}

/// An OData string literal: single quotes, a quote doubled inside. Returns
/// the value and what follows the closing quote.
fn parse_string_literal(text: &str) -> Option<(String, &str)> {
    let body = text.strip_prefix('\'')?;
    let mut value = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((index, c)) = chars.next() {
        if c == '\'' {
            if let Some((_, '\'')) = chars.peek() {
                chars.next();
                value.push('\'');
            } else {
                return Some((value, &body[index + 1..]));
            }
        } else {
            value.push(c);
        }
    }
    None
}

fn parse_select(value: &str) -> Result<Vec<String>, Rejection> {
    let members: Vec<String> = value.split(',').map(|m| m.trim().to_owned()).collect();
    if members.iter().any(String::is_empty) {
        return Err(invalid(
            "$select",
            "must be a comma-separated list of member names",
        ));
    }
    Ok(members)
}

/// Percent-encode a query value, leaving RFC 3986 unreserved characters.
pub fn encode_query_value(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &str) -> Vec<(String, String)> {
        serde_urlencoded::from_str(query).unwrap()
    }

    #[test]
    fn top_is_capped_at_one_hundred_and_must_be_positive() {
        assert_eq!(ListQuery::parse(&pairs("")).unwrap().top, 100);
        assert_eq!(ListQuery::parse(&pairs("$top=7")).unwrap().top, 7);
        assert_eq!(ListQuery::parse(&pairs("%24top=500")).unwrap().top, 100);
        for bad in ["$top=0", "$top=-1", "$top=ten"] {
            assert_eq!(
                ListQuery::parse(&pairs(bad)).unwrap_err().to_string(),
                "query option $top: must be a positive integer"
            );
        }
    }

    #[test]
    fn skip_tokens_round_trip_and_foreign_ones_are_refused() {
        let key = SortKey {
            at: DateTime::parse_from_rfc3339("2018-11-06T18:40:42.6178337Z")
                .unwrap()
                .with_timezone(&Utc),
            id: "4111fffc".into(),
        };
        let token = key.to_skip_token();
        assert_eq!(SortKey::from_skip_token(&token), Some(key.clone()));
        let parsed = ListQuery::parse(&pairs(&format!("$skiptoken={token}"))).unwrap();
        assert_eq!(parsed.after, Some(key));
        assert_eq!(
            ListQuery::parse(&pairs("$skiptoken=zz"))
                .unwrap_err()
                .to_string(),
            "query option $skiptoken: is not a skip token this service issued"
        );
    }

    #[test]
    fn filters_support_eq_and_and_but_not_external_reference_id() {
        let query =
            ListQuery::parse(&pairs("$filter=engagementId eq 'e''1' and status eq 'New'")).unwrap();
        assert_eq!(
            query.filter,
            vec![
                ("engagementId".to_owned(), "e'1".to_owned()),
                ("status".to_owned(), "New".to_owned())
            ]
        );
        let cases = [
            (
                "$filter=externalReferenceId eq 'x'",
                "externalReferenceId is not documented",
            ),
            (
                "$filter=name eq 'x'",
                "can compare engagementId, status, substatus, type only",
            ),
            ("$filter=status ne 'New'", "supports the eq operator only"),
            ("$filter=status eq New", "expected a quoted string"),
            (
                "$filter=status eq 'New' or type eq 'Shared'",
                "joined with and only",
            ),
            ("$filter=status eq 'New", "expected a quoted string"),
        ];
        for (raw, fragment) in cases {
            let message = ListQuery::parse(&pairs(raw)).unwrap_err().to_string();
            assert!(message.contains(fragment), "{raw}: {message}");
        }
    }

    #[test]
    fn orderby_accepts_the_two_timestamps_in_either_direction() {
        let query = ListQuery::parse(&pairs("$orderby=updatedDateTime desc")).unwrap();
        assert_eq!(
            query.order,
            Order {
                field: OrderField::UpdatedDateTime,
                descending: true
            }
        );
        assert!(ListQuery::parse(&pairs("$orderby=name")).is_err());
        assert!(ListQuery::parse(&pairs("$orderby=createdDateTime sideways")).is_err());
    }

    #[test]
    fn unknown_and_repeated_options_are_refused_but_foreign_parameters_ignored() {
        assert_eq!(
            ListQuery::parse(&pairs("$expand=x"))
                .unwrap_err()
                .to_string(),
            "query option $expand: is not supported"
        );
        assert_eq!(
            ListQuery::parse(&pairs("$top=1&$top=2"))
                .unwrap_err()
                .to_string(),
            "query option $top: is given more than once"
        );
        assert!(ListQuery::parse(&pairs("api-version=1.0&$count=true")).is_ok());
    }

    #[test]
    fn the_next_page_query_echoes_the_options_and_carries_the_token() {
        let query = ListQuery::parse(&pairs(
            "$top=5&$filter=status eq 'New'&$select=id,name&$orderby=createdDateTime",
        ))
        .unwrap();
        let last = SortKey {
            at: DateTime::UNIX_EPOCH,
            id: "r".into(),
        };
        assert_eq!(
            query.next_page_query(&last),
            format!(
                "$top=5&$orderby=createdDateTime&$filter=status%20eq%20%27New%27&$select=id%2Cname&$skiptoken={}",
                last.to_skip_token()
            )
        );
        // What the client gets back parses to the same query.
        let again = ListQuery::parse(&pairs(&query.next_page_query(&last))).unwrap();
        assert_eq!(again.filter, query.filter);
        assert_eq!(again.select, query.select);
        assert_eq!(again.after, Some(last));
    }

    #[test]
    fn select_projects_top_level_members() {
        let query = ListQuery::parse(&pairs("$select=id, name")).unwrap();
        let document = serde_json::json!({"id": "1", "name": "n", "status": "New"});
        assert_eq!(
            query.project(&document),
            serde_json::json!({"id": "1", "name": "n"})
        );
    }
}
