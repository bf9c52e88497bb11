//! Three-way merge: snapshot (what we last applied), desired (the CRM now)
//! and live (Partner Center now) → the patch to send against the live
//! referral. Pure: no I/O, no clock.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::diff::{DiffOptions, Rejection};
use crate::model::{ManagedPaths, Op};

/// Who wins a path changed both in the CRM and in Partner Center.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictPolicy {
    #[default]
    CrmWins,
    RemoteWins,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MergeOptions {
    pub diff: DiffOptions,
    pub conflict: ConflictPolicy,
}

/// A path changed on both sides, and how it was settled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conflict {
    pub path: String,
    pub snapshot: Option<Value>,
    pub live: Option<Value>,
    pub desired: Option<Value>,
    pub resolution: ConflictPolicy,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct MergeOutcome {
    /// The ops to send against `live`.
    pub ops: Vec<Op>,
    pub conflicts: Vec<Conflict>,
    pub rejected: Vec<Rejection>,
    /// CRM changes dropped because live already holds the desired value.
    pub already_applied: usize,
}

/// Merge three ways. With `snapshot == live` this is [`crate::diff::plan_patch`].
pub fn three_way(
    snapshot: &Value,
    desired: &Value,
    live: &Value,
    managed: &ManagedPaths,
    options: &MergeOptions,
) -> MergeOutcome {
    let _ = (snapshot, desired, live, managed, options);
    todo!("merge")
}
