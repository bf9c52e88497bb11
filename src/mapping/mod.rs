//! Mapping: a CRM [`Record`] → the desired referral document, driven by a
//! [`MappingSpec`] (the defaults in `config/mapping/*.toml`, overridable per
//! field from the configuration file).
//!
//! [`MappingSpec`] is the configuration as written; [`Mapper::new`] checks
//! it once and turns it into a [`Mapper`], so that mapping a record can only
//! fail because of the record. The TOML syntax is documented in the shipped
//! defaults, `config/mapping/opportunity.toml` and `config/mapping/lead.toml`.

mod amount;
mod column;
mod convert;
mod country;
mod currency;
mod date;
mod name_key;
mod path;
mod status_table;

use std::collections::BTreeMap;
use std::fmt;

use chrono::NaiveDate;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::export::{Record, RecordLocation};
use crate::model::{Document, Entity, ListKey, ManagedPaths};

use self::column::ColumnRef;
use self::convert::{Context, FieldType};
use self::path::{FieldPath, Shape};
use self::status_table::StatusTable;

/// The mapping as written in TOML. Every member is optional so that the
/// configuration's `[mapping]` section can override the shipped default per
/// field; see [`MappingSpec::overlay`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingSpec {
    /// An export column holding the Partner Center referral id.
    pub referral_id_column: Option<String>,
    /// CSV display-name header → logical column name.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Referral field path (`details.dealValue`, `customerProfile.team[0].email`)
    /// → where its value comes from.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldSpec>,
    /// Dynamics status reason → referral status/substatus.
    #[serde(default)]
    pub status: Vec<StatusRule>,
    /// Referral list path (`customerProfile.team`) → how its elements are
    /// told apart. Every list whose elements the fields fill must have one.
    #[serde(default)]
    pub lists: BTreeMap<String, ListSpec>,
}

/// How the elements of one referral list are told apart.
///
/// ```toml
/// [lists."customerProfile.team"]
/// key = "email"
/// ignore_case = true
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListSpec {
    /// The element member that identifies an element (`email`).
    pub key: String,
    /// Compare keys ignoring letter case (default `true`).
    #[serde(default = "default_true")]
    pub ignore_case: bool,
}

fn default_true() -> bool {
    true
}

/// Where one referral field comes from.
///
/// ```toml
/// [fields."details.dealValue"]
/// from = ["estimatedvalue", "estimatedvalue@OData.Community.Display.V1.FormattedValue"]
/// type = "money"
/// required = true
///
/// [fields."details.notes"]
/// enabled = false
/// ```
///
/// An override replaces a shipped field whole, so it repeats `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// Column references, tried in order; the first that is not empty
    /// gives the value. `a/b` reads member `b` of the expanded lookup `a`;
    /// `~1` and `~0` stand for `/` and `~` in a name. A single string is
    /// one column.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub from: Vec<String>,
    /// `text`, `number`, `integer`, `money`, `date`, `datetime`, `country`,
    /// `currency`, `email`, `bool` or `guid`. Required unless the field is
    /// disabled (optional here so that `enabled = false` can stand alone).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The value when every column is empty, written as the export would
    /// write it (it goes through the same conversion). A `currency` field
    /// without one falls back to the configured default currency. With an
    /// empty `from`, the field is a constant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// An empty value is an error for the record instead of a left-out
    /// member.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// `false` takes a shipped field out of the mapping: it is neither set
    /// nor owned, so Partner Center's value is left alone.
    #[serde(default = "enabled_by_default", skip_serializing_if = "is_true")]
    pub enabled: bool,
    /// `money` fields only: a negative amount is an error for the record
    /// (a deal value below zero is a data-entry slip or an accounting
    /// notation, `($1,200.00)`) unless this is set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_negative: bool,
    /// `date` and `datetime` fields only: calendar dates (`YYYY-MM-DD`)
    /// that mean "no date" and are read as empty, e.g. `["0001-01-01"]`
    /// for .NET's `DateTime.MinValue`. Any other date before 1753-01-01,
    /// the earliest Dynamics 365 holds, is an error for the record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub empty_dates: Vec<String>,
}

fn enabled_by_default() -> bool {
    true
}

fn is_true(flag: &bool) -> bool {
    *flag
}

/// One row of the status table: a Dynamics status reason and the state it
/// belongs to → the referral's status and substatus.
///
/// ```toml
/// [[status]]
/// code = 5
/// label = "Out-Sold"
/// state = 2
/// state_label = "Lost"
/// status = "Closed"
/// substatus = "Lost"
/// status_reason = "label"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRule {
    /// The `statuscode` value.
    pub code: i64,
    /// The `statuscode` label, as CSV exports and formatted values write it.
    pub label: String,
    /// The `statecode` this status reason belongs to.
    pub state: i64,
    /// The `statecode` label.
    pub state_label: String,
    /// Referral status: `New`, `Active` or `Closed`.
    pub status: String,
    /// Referral substatus, one that goes with `status`.
    pub substatus: String,
    /// What `statusReason` is set to; not set when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<StatusReason>,
}

/// The referral `statusReason` a status rule sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusReason {
    /// `status_reason = "label"`: the rule's status-reason label.
    Label,
    /// `status_reason = { text = "…" }`: a fixed text.
    Text(String),
}

impl MappingSpec {
    /// The shipped default for `entity`.
    pub fn default_for(entity: Entity) -> MappingSpec {
        let text = match entity {
            Entity::Opportunity => OPPORTUNITY_DEFAULT,
            Entity::Lead => LEAD_DEFAULT,
        };
        // The text is part of the binary and a unit test parses both, so
        // this can only fail in a build whose tests fail.
        MappingSpec::from_toml(text).unwrap_or_else(|error| {
            panic!("the shipped {entity} mapping (config/mapping/{entity}.toml) is broken: {error}")
        })
    }

    /// Parse a mapping written in TOML, the way the configuration file's
    /// `[mapping]` section is read.
    pub fn from_toml(text: &str) -> Result<MappingSpec, config::ConfigError> {
        config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()?
            .try_deserialize()
    }

    /// `overrides` applied on top of `self`, field by field: a field
    /// replaces the field of the same path whole, a status rule replaces the
    /// rule with the same code (or is appended), headers are merged (a
    /// header differing only in case or surrounding space is replaced), and
    /// `referral_id_column` replaces when set.
    pub fn overlay(mut self, overrides: MappingSpec) -> MappingSpec {
        if overrides.referral_id_column.is_some() {
            self.referral_id_column = overrides.referral_id_column;
        }
        for (header, column) in overrides.headers {
            let key = header.trim().to_lowercase();
            self.headers
                .retain(|existing, _| existing.trim().to_lowercase() != key);
            self.headers.insert(header, column);
        }
        self.fields.extend(overrides.fields);
        self.lists.extend(overrides.lists);
        for rule in overrides.status {
            match self
                .status
                .iter_mut()
                .find(|existing| existing.code == rule.code)
            {
                Some(existing) => *existing = rule,
                None => self.status.push(rule),
            }
        }
        self
    }
}

const OPPORTUNITY_DEFAULT: &str = include_str!("../../config/mapping/opportunity.toml");
const LEAD_DEFAULT: &str = include_str!("../../config/mapping/lead.toml");

/// A mapping that is not usable; names the key.
#[derive(Debug, thiserror::Error)]
#[error("mapping.{key}: {message}")]
pub struct MappingConfigError {
    pub key: String,
    pub message: String,
}

/// One problem with one field of one record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldProblem {
    /// The referral field (`details.dealValue`), or `externalReferenceId`.
    pub field: String,
    /// The export column the value came from, when there is one.
    pub column: Option<String>,
    /// The offending value as it appeared in the export.
    pub value: Option<String>,
    pub reason: String,
}

/// A record that could not be mapped: every problem, with where it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{location}{}: {}", external_id.as_deref().map(|id| format!(" [{id}]")).unwrap_or_default(), problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
pub struct RecordError {
    pub external_id: Option<String>,
    pub location: RecordLocation,
    pub problems: Vec<FieldProblem>,
}

/// How much of a value a message quotes: a 10 MB cell must not become a
/// 10 MB log line.
const MAX_QUOTED_VALUE_CHARS: usize = 120;
/// Reasons are ours, but some repeat the value.
const MAX_REASON_CHARS: usize = 400;

/// `text`, or its first `limit` characters, with the whole length in bytes
/// when it was cut.
fn quotable(text: &str, limit: usize) -> (&str, Option<usize>) {
    match text.char_indices().nth(limit) {
        Some((cut, _)) => (&text[..cut], Some(text.len())),
        None => (text, None),
    }
}

impl std::fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.field)?;
        if let Some(column) = &self.column {
            write!(f, " (column {column}")?;
            if let Some(value) = &self.value {
                match quotable(value, MAX_QUOTED_VALUE_CHARS) {
                    (whole, None) => write!(f, ", value {whole:?}")?,
                    (start, Some(bytes)) => {
                        write!(f, ", value {:?} ({bytes} bytes)", format!("{start}…"))?
                    }
                }
            }
            write!(f, ")")?;
        }
        match quotable(&self.reason, MAX_REASON_CHARS) {
            (whole, None) => write!(f, ": {whole}"),
            (start, Some(_)) => write!(f, ": {start}…"),
        }
    }
}

/// A record turned into what Partner Center should hold.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedRecord {
    pub external_id: String,
    /// From `referral_id_column`, when configured and present.
    pub referral_id: Option<String>,
    /// The desired document: only managed members, empty columns omitted.
    pub document: Document,
}

/// Raised whenever a change to the mapping code (not its configuration)
/// can map a record to another document than before, so that stored
/// fingerprints of export records ([`Mapper::fingerprint`]) are not trusted
/// across it. A release changes the crate version, which counts too.
pub const MAPPING_REVISION: u32 = 1;

fn mapping_fingerprint(spec: &MappingSpec, entity: Entity, default_currency: &str) -> u128 {
    // A spec is plain data with ordered maps: it serialises the same way
    // every time.
    let described = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": MAPPING_REVISION,
        "entity": entity,
        "default_currency": default_currency,
        "spec": spec,
    });
    xxhash_rust::xxh3::xxh3_128(described.to_string().as_bytes())
}

/// An external id as the store and the referral index key it: a GUID in
/// canonical form (lower case, no braces), anything else trimmed. Partner
/// Center may hold `externalReferenceId` in another spelling of the same
/// GUID than the export.
pub fn normalise_external_id(text: &str) -> String {
    with_normalised_external_id(text, str::to_owned)
}

/// `f` of [`normalise_external_id`]'s answer, without allocating it: pass
/// one asks for the id of every record of the export.
pub fn with_normalised_external_id<R>(text: &str, f: impl FnOnce(&str) -> R) -> R {
    // Dynamics writes its ids so: they are their own canonical form.
    if is_canonical_guid(text) {
        return f(text);
    }
    match uuid::Uuid::try_parse(text.trim()) {
        Ok(guid) => f(guid
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer())),
        Err(_) => f(text.trim()),
    }
}

/// Whether `text` is a GUID in canonical form already: 36 bytes, lower-case
/// hex digits in groups of 8-4-4-4-12 joined by hyphens.
fn is_canonical_guid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(at, &byte)| match at {
            8 | 13 | 18 | 23 => byte == b'-',
            _ => matches!(byte, b'0'..=b'9' | b'a'..=b'f'),
        })
}

/// One referral field and where the mapping reads it from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSources {
    /// The referral field path (`details.notes`), or `status`.
    pub field: String,
    /// Its column references as written in the mapping.
    pub columns: Vec<String>,
    /// The record keys those references start at (`a` for `a/b`).
    pub keys: Vec<String>,
}

/// A validated mapping, ready to map records.
#[derive(Debug, Clone)]
pub struct Mapper {
    /// What shapes the documents this mapper makes: see [`Mapper::fingerprint`].
    fingerprint: u128,
    id_column: &'static str,
    referral_id_column: Option<ColumnRef>,
    fields: Vec<Field>,
    shape: Shape,
    status: StatusTable,
    managed: ManagedPaths,
    context: Context,
}

/// One enabled field, checked.
#[derive(Debug, Clone)]
struct Field {
    path: String,
    columns: Vec<ColumnRef>,
    kind: FieldType,
    default: Option<Value>,
    required: bool,
    allow_negative: bool,
    empty_dates: Vec<NaiveDate>,
}

/// The earliest date Dynamics 365 (Dataverse) holds.
fn earliest_crm_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(1753, 1, 1).unwrap_or(NaiveDate::MIN)
}

/// What a field makes of a value its type accepted.
enum Verdict {
    Keep,
    /// A placeholder for "no value" (`empty_dates`).
    Empty,
    Refuse(String),
}

/// Give every list whose elements the fields fill its key from `lists`:
/// a list of people is matched by who they are, never by position.
fn key_lists(
    lists: &BTreeMap<String, ListSpec>,
    managed: &mut ManagedPaths,
) -> Result<(), MappingConfigError> {
    let mut keyed = Vec::new();
    for (pointer, members) in managed.element_members() {
        let tokens: Vec<String> = pointer
            .split('/')
            .skip(1)
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        let dotted = tokens.join(".");
        let Some(spec) = lists.get(&dotted) else {
            return Err(MappingConfigError {
                key: format!("lists.{dotted:?}"),
                message: format!(
                    "the fields fill members of the elements of `{dotted}` ({}), but the list has no key; \
                     add `[mapping.lists.\"{dotted}\"] key = \"<member>\"` (for people: `email`) so that its \
                     elements are matched by who they are, not by position",
                    members.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        };
        if !members.contains(&spec.key) {
            return Err(MappingConfigError {
                key: format!("lists.{dotted:?}.key"),
                message: format!(
                    "`{}` identifies the elements of `{dotted}`, but no field fills `{dotted}[n].{}`",
                    spec.key, spec.key
                ),
            });
        }
        keyed.push((
            tokens,
            ListKey {
                member: spec.key.clone(),
                ignore_case: spec.ignore_case,
            },
        ));
    }
    for (tokens, key) in keyed {
        managed.insert_list_key(&tokens, key);
    }
    Ok(())
}

/// The referral members a mapping field may not write.
fn reserved_member(member: &str, has_status_table: bool) -> Option<&'static str> {
    match member {
        "externalReferenceId" => Some("it is always the record's id"),
        "status" | "substatus" => Some("the status table (mapping.status) sets it"),
        "statusReason" if has_status_table => Some("the status table (mapping.status) sets it"),
        "id" | "engagementId" | "eTag" | "links" | "createdDateTime" | "updatedDateTime"
        | "expirationDateTime" => Some("Partner Center sets it"),
        "type" | "qualification" | "consent" | "target" => Some(
            "it is sent only when a referral is created, from the creation defaults, never patched",
        ),
        _ => None,
    }
}

impl Mapper {
    /// Validate `spec` (field paths, types, status rules) for `entity`.
    /// `default_currency` is the ISO 4217 code used when a record names none.
    pub fn new(
        spec: &MappingSpec,
        entity: Entity,
        default_currency: &str,
    ) -> Result<Mapper, MappingConfigError> {
        let default_currency =
            currency::iso_code(default_currency.trim()).ok_or_else(|| MappingConfigError {
                key: "default_currency".to_owned(),
                message: format!("`{default_currency}` is not an ISO 4217 currency code"),
            })?;
        let context = Context { default_currency };

        check_headers(&spec.headers)?;
        let referral_id_column = spec
            .referral_id_column
            .as_deref()
            .map(ColumnRef::parse)
            .transpose()
            .map_err(|message| MappingConfigError {
                key: "referral_id_column".to_owned(),
                message,
            })?;
        let status = StatusTable::compile(&spec.status)?;

        let mut managed = ManagedPaths::empty();
        managed.insert(&["externalReferenceId"]);
        if !status.is_empty() {
            for member in ["status", "substatus", "statusReason"] {
                managed.insert(&[member]);
            }
        }

        let mut fields = Vec::new();
        let mut shape = Shape::new();
        for (path_text, field_spec) in spec.fields.iter().filter(|(_, f)| f.enabled) {
            let error = |member: &str, message: String| MappingConfigError {
                key: format!("fields.{path_text:?}{member}"),
                message,
            };
            let path = FieldPath::parse(path_text).map_err(|message| error("", message))?;
            if let Some(why) = reserved_member(path.root(), !status.is_empty()) {
                let root = path.root();
                return Err(error("", format!("`{root}` cannot be mapped: {why}")));
            }
            let field = compile_field(path_text, field_spec, &context, error)?;
            shape.insert(&path, fields.len()).map_err(|conflict| {
                let other = fields
                    .get(conflict.other)
                    .map_or("another field", |other: &Field| other.path.as_str());
                error(
                    "",
                    format!("conflicts with field `{other}`, which {}", conflict.reason),
                )
            })?;
            managed.insert(&path.managed_members());
            if let Some((array, member)) = path.element_member() {
                managed.insert_element_member(&array, member);
            }
            fields.push(field);
        }

        key_lists(&spec.lists, &mut managed)?;

        Ok(Mapper {
            fingerprint: mapping_fingerprint(spec, entity, default_currency),
            id_column: entity.id_column(),
            referral_id_column,
            fields,
            shape,
            status,
            managed,
            context,
        })
    }

    /// 128 bits over everything that decides which document a record maps
    /// to: the mapping spec (after overrides, header aliases and keyed
    /// lists included), the entity, the default currency, and the version of
    /// this code with [`MAPPING_REVISION`]. Two mappers with the same
    /// fingerprint map every record to the same document.
    pub fn fingerprint(&self) -> u128 {
        self.fingerprint
    }

    /// The column holding a record's id.
    pub fn id_column(&self) -> &'static str {
        self.id_column
    }

    /// The referral paths this mapping owns.
    pub fn managed_paths(&self) -> &ManagedPaths {
        &self.managed
    }

    /// Every referral field read from the export, with the columns it
    /// reads, for the schema guard: fields that are constants are left out;
    /// the status table counts as the field `status`.
    pub fn field_sources(&self) -> Vec<FieldSources> {
        let mut sources: Vec<FieldSources> = self
            .fields
            .iter()
            .filter(|field| !field.columns.is_empty())
            .map(|field| FieldSources {
                field: field.path.clone(),
                columns: field.columns.iter().map(|c| c.text().to_owned()).collect(),
                keys: field
                    .columns
                    .iter()
                    .map(|c| c.column().to_owned())
                    .collect(),
            })
            .collect();
        if !self.status.is_empty() {
            sources.push(FieldSources {
                field: "status".to_owned(),
                columns: status_table::SOURCE_COLUMNS.map(str::to_owned).to_vec(),
                keys: status_table::SOURCE_COLUMNS.map(str::to_owned).to_vec(),
            });
        }
        sources
    }

    /// Whether `key`, a key of a record, is read by this mapping (a field,
    /// the status table, the id or the referral id column).
    pub fn reads_column(&self, key: &str) -> bool {
        key == self.id_column
            || self
                .referral_id_column
                .as_ref()
                .is_some_and(|column| column.column() == key)
            || self
                .fields
                .iter()
                .any(|field| field.columns.iter().any(|column| column.column() == key))
            || (!self.status.is_empty() && status_table::READ_COLUMNS.contains(&key))
    }

    /// Map one record. Pure: no clock, no I/O.
    pub fn map(&self, record: &Record) -> Result<MappedRecord, RecordError> {
        let mut problems = Vec::new();
        let external_id = self.external_id(record).map_or_else(
            |problem| {
                problems.push(problem);
                None
            },
            Some,
        );

        let values: Vec<Option<Value>> = self
            .fields
            .iter()
            .map(|field| {
                field
                    .value(record, &self.context)
                    .unwrap_or_else(|problem| {
                        problems.push(problem);
                        None
                    })
            })
            .collect();

        let status = self
            .status
            .resolve(&record.fields)
            .unwrap_or_else(|problem| {
                problems.push(problem);
                None
            });

        let referral_id = self.referral_id(record).unwrap_or_else(|problem| {
            problems.push(problem);
            None
        });

        let external_id = match external_id {
            Some(id) if problems.is_empty() => id,
            external_id => {
                return Err(RecordError {
                    external_id,
                    location: record.location.clone(),
                    problems,
                });
            }
        };

        let mut document = match self.shape.render(&values) {
            Some(Value::Object(members)) => members,
            _ => Map::new(),
        };
        document.insert(
            "externalReferenceId".to_owned(),
            Value::from(external_id.clone()),
        );
        if let Some(status) = status {
            document.insert("status".to_owned(), Value::from(status.status));
            document.insert("substatus".to_owned(), Value::from(status.substatus));
            if let Some(reason) = status.reason {
                document.insert("statusReason".to_owned(), Value::from(reason));
            }
        }
        Ok(MappedRecord {
            external_id,
            referral_id,
            document: Value::Object(document),
        })
    }

    /// The record's id, trimmed; a GUID in canonical form (lower case,
    /// no braces), any other id as written.
    fn external_id(&self, record: &Record) -> Result<String, FieldProblem> {
        let problem = |value: Option<&Value>, reason: &str| FieldProblem {
            field: "externalReferenceId".to_owned(),
            column: Some(self.id_column.to_owned()),
            value: value.map(raw_text),
            reason: reason.to_owned(),
        };
        match record.fields.get(self.id_column) {
            None | Some(Value::Null) => Err(problem(None, "the record has no id")),
            Some(Value::String(text)) if text.trim().is_empty() => {
                Err(problem(None, "the record has no id"))
            }
            Some(value @ Value::String(text)) => match text.chars().find(|c| c.is_control()) {
                Some(control) => Err(problem(
                    Some(value),
                    &format!(
                        "the id holds the control character U+{:04X}; an external id must be printable",
                        u32::from(control)
                    ),
                )),
                None => Ok(normalise_external_id(text)),
            },
            Some(Value::Number(number)) => Ok(number.to_string()),
            Some(other) => Err(problem(Some(other), "not an id")),
        }
    }

    /// The referral id from `referral_id_column`, when the record has one.
    fn referral_id(&self, record: &Record) -> Result<Option<String>, FieldProblem> {
        let Some(column) = &self.referral_id_column else {
            return Ok(None);
        };
        match column.lookup(&record.fields) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
            Some(value) => {
                let guid = match value {
                    Value::String(text) => convert::normalise_guid(text).ok(),
                    _ => None,
                };
                guid.map(Some).ok_or_else(|| FieldProblem {
                    field: "id".to_owned(),
                    column: Some(column.text().to_owned()),
                    value: Some(raw_text(value)),
                    reason: "not a referral id: expected a GUID".to_owned(),
                })
            }
        }
    }
}

/// How a field's problems are named: `fields."details.dealValue".type`.
type FieldError<'a> = &'a dyn Fn(&str, String) -> MappingConfigError;

fn compile_field(
    path_text: &str,
    spec: &FieldSpec,
    context: &Context,
    error: impl Fn(&str, String) -> MappingConfigError,
) -> Result<Field, MappingConfigError> {
    let (kind, kind_name) = field_type(spec, &error)?;
    let columns = spec
        .from
        .iter()
        .enumerate()
        .map(|(index, text)| {
            ColumnRef::parse(text).map_err(|message| error(&format!(".from[{index}]"), message))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let default = field_default(kind, spec, context, &error)?;
    check_type_options(spec, kind, kind_name, &error)?;
    let empty_dates = empty_dates(spec, &error)?;
    if columns.is_empty() && default.is_none() {
        return Err(error(
            ".from",
            "no column to read: give `from`, or a `default` for a constant, or set `enabled = false`"
                .to_owned(),
        ));
    }
    Ok(Field {
        path: path_text.to_owned(),
        columns,
        kind,
        default,
        required: spec.required,
        allow_negative: spec.allow_negative,
        empty_dates,
    })
}

/// The field's `type`, and its name as written.
fn field_type<'s>(
    spec: &'s FieldSpec,
    error: FieldError<'_>,
) -> Result<(FieldType, &'s str), MappingConfigError> {
    let known = || {
        let names: Vec<&str> = FieldType::NAMES.iter().map(|(name, _)| *name).collect();
        names.join(", ")
    };
    // Required, because an override replaces a field whole: an override
    // that changed only `from` would otherwise turn money into text.
    let Some(kind_name) = spec.kind.as_deref() else {
        return Err(error(
            ".type",
            format!("missing; expected one of {}", known()),
        ));
    };
    let kind = FieldType::from_name(kind_name).ok_or_else(|| {
        error(
            ".type",
            format!("unknown type `{kind_name}`; expected one of {}", known()),
        )
    })?;
    Ok((kind, kind_name))
}

/// The `default`, converted as a value from the export would be; a
/// currency field without one falls back to the default currency.
fn field_default(
    kind: FieldType,
    spec: &FieldSpec,
    context: &Context,
    error: FieldError<'_>,
) -> Result<Option<Value>, MappingConfigError> {
    match &spec.default {
        Some(written) => {
            let converted = convert::convert(kind, written, context)
                .map_err(|problem| error(".default", format!("{written}: {problem}")))?;
            Ok(Some(
                converted.ok_or_else(|| error(".default", "is empty".to_owned()))?,
            ))
        }
        None if kind == FieldType::Currency => Ok(Some(Value::from(context.default_currency))),
        None => Ok(None),
    }
}

/// `allow_negative` and `empty_dates` only where the type has a use for them.
fn check_type_options(
    spec: &FieldSpec,
    kind: FieldType,
    kind_name: &str,
    error: FieldError<'_>,
) -> Result<(), MappingConfigError> {
    if spec.allow_negative && kind != FieldType::Money {
        return Err(error(
            ".allow_negative",
            format!("applies to `money` fields only, not `{kind_name}`"),
        ));
    }
    if !spec.empty_dates.is_empty() && !matches!(kind, FieldType::Date | FieldType::DateTime) {
        return Err(error(
            ".empty_dates",
            format!("applies to `date` and `datetime` fields only, not `{kind_name}`"),
        ));
    }
    Ok(())
}

fn empty_dates(
    spec: &FieldSpec,
    error: FieldError<'_>,
) -> Result<Vec<NaiveDate>, MappingConfigError> {
    spec.empty_dates
        .iter()
        .enumerate()
        .map(|(index, text)| {
            NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").map_err(|_| {
                error(
                    &format!(".empty_dates[{index}]"),
                    format!("{text:?} is not a date written YYYY-MM-DD"),
                )
            })
        })
        .collect()
}

fn check_headers(headers: &BTreeMap<String, String>) -> Result<(), MappingConfigError> {
    let mut seen: BTreeMap<String, (&str, &str)> = BTreeMap::new();
    for (header, column) in headers {
        let error = |message: String| MappingConfigError {
            key: format!("headers.{header:?}"),
            message,
        };
        if header.trim().is_empty() {
            return Err(error("the header is empty".to_owned()));
        }
        if column.trim().is_empty() {
            return Err(error("the column name is empty".to_owned()));
        }
        let key = header.trim().to_lowercase();
        if let Some((other, other_column)) = seen.insert(key, (header, column))
            && other_column != column
        {
            return Err(error(format!(
                "headers are matched ignoring case, and {other:?} already maps to `{other_column}`"
            )));
        }
    }
    Ok(())
}

impl Field {
    /// The field's own rules on top of its type: no negative deal value
    /// unless allowed, no date Dynamics cannot hold.
    fn verdict(&self, value: &Value) -> Verdict {
        match self.kind {
            FieldType::Money
                if !self.allow_negative && value.as_f64().is_some_and(|amount| amount < 0.0) =>
            {
                Verdict::Refuse(
                    "a negative amount; set allow_negative = true on the field if the CRM means it"
                        .to_owned(),
                )
            }
            FieldType::Date | FieldType::DateTime => {
                let Some(date) = value
                    .as_str()
                    .and_then(|text| text.get(..10))
                    .and_then(|day| NaiveDate::parse_from_str(day, "%Y-%m-%d").ok())
                else {
                    return Verdict::Keep;
                };
                if self.empty_dates.contains(&date) {
                    Verdict::Empty
                } else if date < earliest_crm_date() {
                    Verdict::Refuse(format!(
                        "{} is before 1753-01-01, the earliest date Dynamics 365 holds: a placeholder for no date? List it in the field's empty_dates to read it as empty",
                        date.format("%Y-%m-%d")
                    ))
                } else {
                    Verdict::Keep
                }
            }
            _ => Verdict::Keep,
        }
    }

    /// The field's value for a record: the first column with a value, else
    /// the default; `None` when empty.
    fn value(&self, record: &Record, context: &Context) -> Result<Option<Value>, FieldProblem> {
        for column in &self.columns {
            let Some(raw) = column.lookup(&record.fields) else {
                continue;
            };
            let refused = |reason: String| FieldProblem {
                field: self.path.clone(),
                column: Some(column.text().to_owned()),
                value: Some(raw_text(raw)),
                reason,
            };
            match convert::convert(self.kind, raw, context) {
                Ok(Some(value)) => match self.verdict(&value) {
                    Verdict::Keep => return Ok(Some(value)),
                    Verdict::Empty => continue,
                    Verdict::Refuse(reason) => return Err(refused(reason)),
                },
                Ok(None) => continue,
                Err(problem) => return Err(refused(problem.to_string())),
            }
        }
        if let Some(default) = &self.default {
            return Ok(Some(default.clone()));
        }
        if self.required {
            let columns: Vec<&str> = self.columns.iter().map(ColumnRef::text).collect();
            return Err(FieldProblem {
                field: self.path.clone(),
                column: Some(columns.join(", ")),
                value: None,
                reason: "required, but empty".to_owned(),
            });
        }
        Ok(None)
    }
}

/// A value as the export wrote it: text as is, anything else as JSON.
fn raw_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// `from = "a"` or `from = ["a", "b"]`.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct Columns;

    impl<'de> Visitor<'de> for Columns {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a column name or a list of column names")
        }

        fn visit_str<E: de::Error>(self, column: &str) -> Result<Vec<String>, E> {
            Ok(vec![column.to_owned()])
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut columns = Vec::new();
            while let Some(column) = seq.next_element::<String>()? {
                columns.push(column);
            }
            Ok(columns)
        }
    }

    deserializer.deserialize_any(Columns)
}

impl Serialize for StatusReason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            StatusReason::Label => serializer.serialize_str("label"),
            StatusReason::Text(text) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("text", text)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for StatusReason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Reason;

        impl<'de> Visitor<'de> for Reason {
            type Value = StatusReason;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#""label" or { text = "…" }"#)
            }

            fn visit_str<E: de::Error>(self, keyword: &str) -> Result<StatusReason, E> {
                match keyword {
                    "label" => Ok(StatusReason::Label),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StatusReason, A::Error> {
                let mut text = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "text" if text.is_none() => text = Some(map.next_value::<String>()?),
                        "text" => return Err(de::Error::duplicate_field("text")),
                        other => return Err(de::Error::unknown_field(other, &["text"])),
                    }
                }
                text.map(StatusReason::Text)
                    .ok_or_else(|| de::Error::missing_field("text"))
            }
        }

        deserializer.deserialize_any(Reason)
    }
}

#[cfg(test)]
mod tests;
