//! Referral status and substatus, and the transition table of the
//! Referrals API.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReferralStatus {
    None,
    New,
    Active,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReferralSubstatus {
    None,
    Pending,
    Received,
    Accepted,
    Won,
    Lost,
    Declined,
    Expired,
}

/// Why a status change cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {}

/// Check that `to` may follow `from` (`None` when the referral has no status
/// yet) and that the substatus agrees with the status.
pub fn check_transition(
    from: Option<(ReferralStatus, ReferralSubstatus)>,
    to: (ReferralStatus, ReferralSubstatus),
) -> Result<(), TransitionError> {
    let _ = (from, to);
    todo!("status")
}
