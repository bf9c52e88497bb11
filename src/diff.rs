//! The diff: snapshot + desired document → the smallest JSON Patch the
//! Referrals API accepts. Pure: no I/O, no clock.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{ManagedPaths, Op};

/// What to send when a managed member is cleared in the CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnCleared {
    /// `replace` it with `null`.
    #[default]
    Null,
    /// Leave the referral's value alone.
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiffOptions {
    pub on_cleared: OnCleared,
}

/// A change the diff refused to send, with the reason (e.g. an invalid
/// status transition). The record's other changes still go out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// JSON Pointer of the refused member(s), e.g. `/status`.
    pub path: String,
    pub reason: String,
}

/// The patch for one record.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlannedPatch {
    pub ops: Vec<Op>,
    pub rejected: Vec<Rejection>,
}

/// Plan the patch that turns `snapshot` into `desired` on every managed path.
pub fn plan_patch(
    snapshot: &Value,
    desired: &Value,
    managed: &ManagedPaths,
    options: &DiffOptions,
) -> PlannedPatch {
    let _ = (snapshot, desired, managed, options);
    todo!("diff")
}

/// Apply `ops` to `document` (json-patch's `patch`), as the service would.
pub fn apply_ops(document: &mut Value, ops: &[Op]) -> Result<(), json_patch::PatchError> {
    let _ = (document, ops);
    todo!("diff")
}
