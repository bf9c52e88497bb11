//! Mapping: a CRM [`Record`] → the desired referral document, driven by a
//! [`MappingSpec`] (the defaults in `config/mapping/*.toml`, overridable per
//! field from the configuration file).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use crate::export::{Record, RecordLocation};
use crate::model::{Document, Entity, ManagedPaths};

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
}

/// Where one referral field comes from. Defined by the mapping module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {}

/// One row of the status table. Defined by the mapping module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRule {}

impl MappingSpec {
    /// The shipped default for `entity`.
    pub fn default_for(entity: Entity) -> MappingSpec {
        let _ = entity;
        todo!("mapping")
    }

    /// `overrides` applied on top of `self`, field by field.
    pub fn overlay(self, overrides: MappingSpec) -> MappingSpec {
        let _ = overrides;
        todo!("mapping")
    }
}

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

impl std::fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.field)?;
        if let Some(column) = &self.column {
            write!(f, " (column {column}")?;
            if let Some(value) = &self.value {
                write!(f, ", value {value:?}")?;
            }
            write!(f, ")")?;
        }
        write!(f, ": {}", self.reason)
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

/// A validated mapping, ready to map records.
#[derive(Debug, Clone)]
pub struct Mapper {}

impl Mapper {
    /// Validate `spec` (field paths, types, status rules) for `entity`.
    /// `default_currency` is the ISO 4217 code used when a record names none.
    pub fn new(
        spec: &MappingSpec,
        entity: Entity,
        default_currency: &str,
    ) -> Result<Mapper, MappingConfigError> {
        let _ = (spec, entity, default_currency);
        todo!("mapping")
    }

    /// The referral paths this mapping owns.
    pub fn managed_paths(&self) -> &ManagedPaths {
        todo!("mapping")
    }

    /// Map one record. Pure: no clock, no I/O.
    pub fn map(&self, record: &Record) -> Result<MappedRecord, RecordError> {
        let _ = record;
        todo!("mapping")
    }
}
