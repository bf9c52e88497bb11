//! The schema guard: the export's columns compared with the mapping before
//! anything is planned.
//!
//! A renamed CSV header or a Dataverse `$select` without a column parses
//! fine; every record then reads that column as empty, and the field would
//! be cleared on every referral. So a referral field that was fed from the
//! export before (some record of a completed scan gave it a value) refuses
//! the cycle when none of its columns is in the export any more, until the
//! change is confirmed (`sync --allow-schema-change`). A field the export
//! never fed (a default column this export never had) is not guarded.
//!
//! [`compare`] is pure; the store keeps what was fed in tables of its own
//! (`fed_fields`, `export_columns`, migration 0005), read by [`fed_before`]
//! and written by [`record`] only after a scan that completed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use rusqlite::params;
use tracing::info;

use crate::export::ColumnSeen;
use crate::mapping::Mapper;
use crate::store::{Store, StoreError};

/// Whether the cycle may go on when fed fields lost their columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchemaPolicy {
    /// Refuse the cycle (exit 3).
    #[default]
    Guard,
    /// The change is deliberate (`--allow-schema-change`): go on, and stop
    /// guarding the fields that lost their columns.
    AllowChange,
}

/// A field fed before whose columns are all missing from the export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedField {
    pub field: String,
    /// Its column references, as the mapping writes them.
    pub columns: Vec<String>,
}

impl fmt::Display for DroppedField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` (column", self.field)?;
        if self.columns.len() > 1 {
            write!(f, "s")?;
        }
        write!(f, " {})", self.columns.join(", "))
    }
}

/// The refusal: every field, so that one run names them all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the export's columns changed, nothing was changed: {} fed from the export before, but none of {} columns is in it now; a renamed or dropped column would clear {} on every referral. Fix the export or the mapping (mapping.headers, mapping.fields), or confirm a deliberate change with `referral-sync sync --allow-schema-change`",
    list(.0), if .0.len() == 1 { "its" } else { "their" }, if .0.len() == 1 { "it" } else { "them" }
)]
pub struct SchemaChanged(pub Vec<DroppedField>);

fn list(fields: &[DroppedField]) -> String {
    let names: Vec<String> = fields.iter().map(ToString::to_string).collect();
    let verb = if fields.len() == 1 { "was" } else { "were" };
    format!("{} {verb}", names.join(", "))
}

/// What the export's columns say against the mapping and the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaReport {
    /// Fed before, no column left.
    pub dropped: Vec<DroppedField>,
    /// Fields some record of this export gave a value, sorted.
    pub fed: Vec<String>,
    /// Columns of the export the mapping does not read, sorted.
    pub unmapped: Vec<String>,
    /// Every column of the export, sorted.
    pub columns: Vec<String>,
}

/// Compare the export's `columns` with `mapper`, given the fields the store
/// knows were fed before. An export that names no column at all (no record,
/// no CSV header) says nothing about its schema: nothing is dropped.
pub fn compare(
    mapper: &Mapper,
    columns: &BTreeMap<String, ColumnSeen>,
    fed_before: &BTreeSet<String>,
) -> SchemaReport {
    let mut report = SchemaReport {
        columns: columns.keys().cloned().collect(),
        unmapped: columns
            .keys()
            .filter(|column| !mapper.reads_column(column))
            .cloned()
            .collect(),
        ..SchemaReport::default()
    };
    for sources in mapper.field_sources() {
        let seen: Vec<ColumnSeen> = sources
            .keys
            .iter()
            .filter_map(|key| columns.get(key).copied())
            .collect();
        if seen.contains(&ColumnSeen::WithValues) {
            report.fed.push(sources.field.clone());
        }
        if seen.is_empty() && !columns.is_empty() && fed_before.contains(&sources.field) {
            report.dropped.push(DroppedField {
                field: sources.field,
                columns: sources.columns,
            });
        }
    }
    report.fed.sort();
    report
}

fn sqlite_error(store: &Store) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: store.path().to_path_buf(),
        source,
    }
}

/// The fields completed scans found fed.
pub fn fed_before(store: &Store) -> Result<BTreeSet<String>, StoreError> {
    let err = sqlite_error(store);
    let mut statement = store
        .connection()
        .prepare("SELECT field FROM fed_fields")
        .map_err(&err)?;
    let fields = statement
        .query_map([], |row| row.get::<_, String>(0))
        .map_err(&err)?
        .collect::<Result<BTreeSet<String>, _>>()
        .map_err(&err)?;
    Ok(fields)
}

/// Log each unmapped column the store has not seen before, once, at info.
/// Returns them.
pub fn log_new_columns(store: &Store, report: &SchemaReport) -> Result<Vec<String>, StoreError> {
    let err = sqlite_error(store);
    let mut known = store
        .connection()
        .prepare("SELECT 1 FROM export_columns WHERE name = ?1")
        .map_err(&err)?;
    let mut new = Vec::new();
    for column in &report.unmapped {
        if !known.exists(params![column]).map_err(&err)? {
            info!(column = %column, "new column in the export; the mapping does not read it");
            new.push(column.clone());
        }
    }
    Ok(new)
}

/// Keep what a completed scan learnt: the fields it found fed, the columns
/// it saw; the fields that lost their columns (a confirmed change) are no
/// longer guarded. One transaction.
pub fn record(store: &Store, report: &SchemaReport) -> Result<(), StoreError> {
    let err = sqlite_error(store);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let tx = store.connection().unchecked_transaction().map_err(&err)?;
    for field in &report.fed {
        tx.execute(
            "INSERT INTO fed_fields (field, first_fed_at, last_fed_at) VALUES (?1, ?2, ?2)
             ON CONFLICT (field) DO UPDATE SET last_fed_at = excluded.last_fed_at",
            params![field, now],
        )
        .map_err(&err)?;
    }
    for dropped in &report.dropped {
        tx.execute(
            "DELETE FROM fed_fields WHERE field = ?1",
            params![dropped.field],
        )
        .map_err(&err)?;
    }
    for column in &report.columns {
        tx.execute(
            "INSERT OR IGNORE INTO export_columns (name, first_seen_at) VALUES (?1, ?2)",
            params![column, now],
        )
        .map_err(&err)?;
    }
    tx.commit().map_err(&err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::MappingSpec;
    use crate::model::Entity;

    fn mapper() -> Mapper {
        let spec = MappingSpec::from_toml(
            r#"
            [fields."name"]
            from = "topic"
            type = "text"
            [fields."details.notes"]
            from = ["description", "new_notes"]
            type = "text"
            [fields."details.dealValue"]
            from = "amount"
            type = "money"
            [fields."customerProfile.name"]
            from = "parentaccountid/name"
            type = "text"
            [fields."details.currency"]
            type = "currency"
            "#,
        )
        .unwrap();
        Mapper::new(&spec, Entity::Lead, "USD").unwrap()
    }

    fn columns(pairs: &[(&str, ColumnSeen)]) -> BTreeMap<String, ColumnSeen> {
        pairs.iter().map(|(c, s)| (c.to_string(), *s)).collect()
    }

    fn fed(fields: &[&str]) -> BTreeSet<String> {
        fields.iter().map(|f| f.to_string()).collect()
    }

    use ColumnSeen::{OnlyEmpty, WithValues};

    #[test]
    fn compares_the_columns_with_what_was_fed_before() {
        struct Case {
            columns: &'static [(&'static str, ColumnSeen)],
            fed_before: &'static [&'static str],
            dropped: &'static [&'static str],
            fed: &'static [&'static str],
        }
        let cases = [
            // Renamed: `description` became `Description2`; notes were fed.
            Case {
                columns: &[
                    ("leadid", WithValues),
                    ("topic", WithValues),
                    ("Description2", WithValues),
                ],
                fed_before: &["name", "details.notes"],
                dropped: &["details.notes"],
                fed: &["name"],
            },
            // One of two columns is left: not dropped.
            Case {
                columns: &[("leadid", WithValues), ("new_notes", OnlyEmpty)],
                fed_before: &["details.notes"],
                dropped: &[],
                fed: &[],
            },
            // Never fed: a default column this export never had.
            Case {
                columns: &[("leadid", WithValues)],
                fed_before: &[],
                dropped: &[],
                fed: &[],
            },
            // An expanded lookup is present by its first step.
            Case {
                columns: &[("leadid", WithValues), ("parentaccountid", WithValues)],
                fed_before: &["customerProfile.name"],
                dropped: &[],
                fed: &["customerProfile.name"],
            },
            // No column at all (no record, no header): no evidence.
            Case {
                columns: &[],
                fed_before: &["name", "details.notes"],
                dropped: &[],
                fed: &[],
            },
            // Several at once, each named.
            Case {
                columns: &[("leadid", WithValues)],
                fed_before: &["name", "details.dealValue", "details.currency"],
                dropped: &["details.dealValue", "name"],
                fed: &[],
            },
        ];
        let mapper = mapper();
        for (n, case) in cases.iter().enumerate() {
            let report = compare(&mapper, &columns(case.columns), &fed(case.fed_before));
            let dropped: Vec<&str> = report.dropped.iter().map(|d| d.field.as_str()).collect();
            assert_eq!(dropped, case.dropped, "case {n}");
            assert_eq!(report.fed, case.fed, "case {n}");
        }
    }

    #[test]
    fn names_every_dropped_field_with_its_columns() {
        let error = SchemaChanged(vec![
            DroppedField {
                field: "details.notes".into(),
                columns: vec!["description".into(), "new_notes".into()],
            },
            DroppedField {
                field: "name".into(),
                columns: vec!["topic".into()],
            },
        ]);
        assert_eq!(
            error.to_string(),
            "the export's columns changed, nothing was changed: `details.notes` (columns description, new_notes), `name` (column topic) were fed from the export before, but none of their columns is in it now; a renamed or dropped column would clear them on every referral. Fix the export or the mapping (mapping.headers, mapping.fields), or confirm a deliberate change with `referral-sync sync --allow-schema-change`"
        );
    }

    #[test]
    fn unmapped_columns_are_logged_once_and_fed_fields_kept() {
        let store = Store::open_in_memory().unwrap();
        let mapper = mapper();
        let export = columns(&[
            ("leadid", WithValues),
            ("topic", WithValues),
            ("description", OnlyEmpty),
            ("new_col", WithValues),
        ]);
        let report = compare(&mapper, &export, &fed_before(&store).unwrap());
        assert_eq!(report.unmapped, ["new_col"]);
        assert_eq!(log_new_columns(&store, &report).unwrap(), ["new_col"]);
        record(&store, &report).unwrap();
        assert_eq!(
            log_new_columns(&store, &report).unwrap(),
            Vec::<String>::new()
        );
        // Only fields given a value count as fed.
        assert_eq!(fed_before(&store).unwrap(), fed(&["name"]));

        // A confirmed change stops guarding the field.
        let renamed = columns(&[("leadid", WithValues), ("subject", WithValues)]);
        let report = compare(&mapper, &renamed, &fed_before(&store).unwrap());
        assert_eq!(report.dropped.len(), 1);
        record(&store, &report).unwrap();
        assert_eq!(fed_before(&store).unwrap(), fed(&[]));
    }
}
