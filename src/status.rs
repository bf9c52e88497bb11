//! Referral status and substatus, and the transition table of the
//! Referrals API.
//!
//! | from status | may move to         | substatus allowed with that status |
//! |-------------|---------------------|------------------------------------|
//! | New         | New, Active, Closed | Pending, Received                  |
//! | Active      | Active, Closed      | Accepted                           |
//! | Closed      | Closed              | Won, Lost, Declined, Expired       |
//!
//! A Closed referral is final. A referral without a status (`None`, or no
//! `status` member at all) has not entered the table yet and may move
//! anywhere; nothing moves back to `None`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

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

impl ReferralStatus {
    pub const ALL: [ReferralStatus; 4] = [
        ReferralStatus::None,
        ReferralStatus::New,
        ReferralStatus::Active,
        ReferralStatus::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReferralStatus::None => "None",
            ReferralStatus::New => "New",
            ReferralStatus::Active => "Active",
            ReferralStatus::Closed => "Closed",
        }
    }

    /// The statuses a referral in this status may move to (itself included).
    pub fn next_statuses(self) -> &'static [ReferralStatus] {
        use ReferralStatus::*;
        match self {
            None => &[None, New, Active, Closed],
            New => &[New, Active, Closed],
            Active => &[Active, Closed],
            Closed => &[Closed],
        }
    }

    pub fn may_move_to(self, to: ReferralStatus) -> bool {
        self.next_statuses().contains(&to)
    }

    /// The substatuses that go with this status.
    pub fn substatuses(self) -> &'static [ReferralSubstatus] {
        use ReferralSubstatus::*;
        match self {
            ReferralStatus::None => &[None],
            ReferralStatus::New => &[Pending, Received],
            ReferralStatus::Active => &[Accepted],
            ReferralStatus::Closed => &[Won, Lost, Declined, Expired],
        }
    }

    pub fn allows(self, substatus: ReferralSubstatus) -> bool {
        self.substatuses().contains(&substatus)
    }

    /// Read a `status` member; empty (absent or `null`) is `None`.
    pub fn from_json(value: Option<&Value>) -> Result<Self, StatusFieldError> {
        read_member(value, "status", ReferralStatus::None)
    }
}

impl ReferralSubstatus {
    pub const ALL: [ReferralSubstatus; 8] = [
        ReferralSubstatus::None,
        ReferralSubstatus::Pending,
        ReferralSubstatus::Received,
        ReferralSubstatus::Accepted,
        ReferralSubstatus::Won,
        ReferralSubstatus::Lost,
        ReferralSubstatus::Declined,
        ReferralSubstatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReferralSubstatus::None => "None",
            ReferralSubstatus::Pending => "Pending",
            ReferralSubstatus::Received => "Received",
            ReferralSubstatus::Accepted => "Accepted",
            ReferralSubstatus::Won => "Won",
            ReferralSubstatus::Lost => "Lost",
            ReferralSubstatus::Declined => "Declined",
            ReferralSubstatus::Expired => "Expired",
        }
    }

    /// Read a `substatus` member; empty (absent or `null`) is `None`.
    pub fn from_json(value: Option<&Value>) -> Result<Self, StatusFieldError> {
        read_member(value, "substatus", ReferralSubstatus::None)
    }
}

impl fmt::Display for ReferralStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for ReferralSubstatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the PascalCase names of the enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a referral {kind} (expected one of {expected})")]
pub struct ParseStatusError {
    /// `status` or `substatus`.
    pub kind: &'static str,
    pub value: String,
    expected: String,
}

impl FromStr for ReferralStatus {
    type Err = ParseStatusError;

    /// The PascalCase names only, as on the wire.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ReferralStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| ParseStatusError {
                kind: "status",
                value: s.to_owned(),
                expected: names(&ReferralStatus::ALL),
            })
    }
}

impl FromStr for ReferralSubstatus {
    type Err = ParseStatusError;

    /// The PascalCase names only, as on the wire.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ReferralSubstatus::ALL
            .into_iter()
            .find(|substatus| substatus.as_str() == s)
            .ok_or_else(|| ParseStatusError {
                kind: "substatus",
                value: s.to_owned(),
                expected: names(&ReferralSubstatus::ALL),
            })
    }
}

fn names<T: fmt::Display>(values: &[T]) -> String {
    values
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `status` or `substatus` member of a referral document that cannot be
/// read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusFieldError {
    #[error("/{member} must be a string, found {found}")]
    NotAString { member: &'static str, found: String },
    #[error("/{kind}: {error}", kind = .0.kind, error = .0)]
    Unknown(#[from] ParseStatusError),
}

fn read_member<T: FromStr<Err = ParseStatusError>>(
    value: Option<&Value>,
    member: &'static str,
    empty: T,
) -> Result<T, StatusFieldError> {
    match value {
        None | Some(Value::Null) => Ok(empty),
        Some(Value::String(text)) => Ok(text.parse::<T>()?),
        Some(other) => Err(StatusFieldError::NotAString {
            member,
            found: other.to_string(),
        }),
    }
}

/// The `(status, substatus)` of a referral document, or `None` when it has no
/// `status` member (or a `null` one) — a referral with no status yet. A
/// missing substatus next to a status reads as `ReferralSubstatus::None`.
pub fn read_status(
    document: &Value,
) -> Result<Option<(ReferralStatus, ReferralSubstatus)>, StatusFieldError> {
    let status = document.get("status");
    if matches!(status, None | Some(Value::Null)) {
        return Ok(None);
    }
    Ok(Some((
        ReferralStatus::from_json(status)?,
        ReferralSubstatus::from_json(document.get("substatus"))?,
    )))
}

/// Why a status change cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("{from} referral cannot move to {to} ({})", move_hint(*.from))]
    Move {
        from: ReferralStatus,
        to: ReferralStatus,
    },
    #[error(
        "substatus {substatus} does not go with status {status} ({status} takes {})",
        names(.status.substatuses())
    )]
    SubstatusMismatch {
        status: ReferralStatus,
        substatus: ReferralSubstatus,
    },
}

fn move_hint(from: ReferralStatus) -> String {
    match from {
        ReferralStatus::Closed => "a Closed referral is final".to_owned(),
        _ => format!("{from} may move to {} only", names(from.next_statuses())),
    }
}

/// Check that `to` may follow `from` (`None` when the referral has no status
/// yet) and that the substatus agrees with the status.
///
/// The move is checked before the substatus, so a Closed referral asked to
/// become Active is reported as a forbidden move whatever substatus came
/// with it.
pub fn check_transition(
    from: Option<(ReferralStatus, ReferralSubstatus)>,
    to: (ReferralStatus, ReferralSubstatus),
) -> Result<(), TransitionError> {
    let (to_status, to_substatus) = to;
    if let Some((from_status, _)) = from
        && !from_status.may_move_to(to_status)
    {
        return Err(TransitionError::Move {
            from: from_status,
            to: to_status,
        });
    }
    if !to_status.allows(to_substatus) {
        return Err(TransitionError::SubstatusMismatch {
            status: to_status,
            substatus: to_substatus,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ReferralStatus as S;
    use super::ReferralSubstatus as Sub;
    use super::*;
    use serde_json::json;

    type Pair = (S, Sub);

    #[test]
    fn transition_table() {
        // (from, to, expected error text or "" for allowed)
        let cases: &[(Option<Pair>, Pair, &str)] = &[
            (None, (S::New, Sub::Pending), ""),
            (None, (S::Closed, Sub::Won), ""),
            (None, (S::None, Sub::None), ""),
            (Some((S::None, Sub::None)), (S::Active, Sub::Accepted), ""),
            (Some((S::New, Sub::Pending)), (S::New, Sub::Received), ""),
            (Some((S::New, Sub::Pending)), (S::Active, Sub::Accepted), ""),
            (
                Some((S::New, Sub::Received)),
                (S::Closed, Sub::Declined),
                "",
            ),
            (
                Some((S::Active, Sub::Accepted)),
                (S::Active, Sub::Accepted),
                "",
            ),
            (Some((S::Active, Sub::Accepted)), (S::Closed, Sub::Won), ""),
            (Some((S::Closed, Sub::Won)), (S::Closed, Sub::Lost), ""),
            (
                Some((S::Closed, Sub::Won)),
                (S::Active, Sub::Accepted),
                "Closed referral cannot move to Active (a Closed referral is final)",
            ),
            (
                Some((S::Closed, Sub::Lost)),
                (S::New, Sub::Pending),
                "Closed referral cannot move to New (a Closed referral is final)",
            ),
            (
                Some((S::Active, Sub::Accepted)),
                (S::New, Sub::Pending),
                "Active referral cannot move to New (Active may move to Active, Closed only)",
            ),
            (
                Some((S::New, Sub::Pending)),
                (S::None, Sub::None),
                "New referral cannot move to None (New may move to New, Active, Closed only)",
            ),
            (
                Some((S::Active, Sub::Accepted)),
                (S::Active, Sub::Won),
                "substatus Won does not go with status Active (Active takes Accepted)",
            ),
            (
                Some((S::New, Sub::Pending)),
                (S::Closed, Sub::Accepted),
                "substatus Accepted does not go with status Closed \
                 (Closed takes Won, Lost, Declined, Expired)",
            ),
            (
                None,
                (S::New, Sub::None),
                "substatus None does not go with status New (New takes Pending, Received)",
            ),
            (
                None,
                (S::None, Sub::Won),
                "substatus Won does not go with status None (None takes None)",
            ),
            // The move is reported before the substatus.
            (
                Some((S::Closed, Sub::Won)),
                (S::Active, Sub::Won),
                "Closed referral cannot move to Active (a Closed referral is final)",
            ),
        ];
        for (from, to, expected) in cases {
            let got = check_transition(*from, *to);
            match (got, *expected) {
                (Ok(()), "") => {}
                (Err(error), expected) if !expected.is_empty() => {
                    assert_eq!(error.to_string(), expected, "{from:?} -> {to:?}")
                }
                (got, expected) => panic!("{from:?} -> {to:?}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn every_valid_pair_may_stay_where_it_is() {
        for status in S::ALL {
            for &substatus in status.substatuses() {
                assert_eq!(
                    check_transition(Some((status, substatus)), (status, substatus)),
                    Ok(())
                );
            }
        }
    }

    #[test]
    fn closed_is_final_for_every_target() {
        for to in S::ALL {
            for &substatus in to.substatuses() {
                let result = check_transition(Some((S::Closed, Sub::Expired)), (to, substatus));
                assert_eq!(
                    result.is_ok(),
                    to == S::Closed,
                    "Closed -> {to}/{substatus}"
                );
            }
        }
    }

    #[test]
    fn names_round_trip_through_serde_display_and_from_str() {
        for status in S::ALL {
            let name = status.to_string();
            assert_eq!(serde_json::to_value(status).unwrap(), json!(name));
            assert_eq!(serde_json::from_value::<S>(json!(name)).unwrap(), status);
            assert_eq!(name.parse::<S>().unwrap(), status);
        }
        for substatus in Sub::ALL {
            let name = substatus.to_string();
            assert_eq!(serde_json::to_value(substatus).unwrap(), json!(name));
            assert_eq!(
                serde_json::from_value::<Sub>(json!(name)).unwrap(),
                substatus
            );
            assert_eq!(name.parse::<Sub>().unwrap(), substatus);
        }
    }

    #[test]
    fn unknown_names_are_refused_with_the_expected_ones() {
        assert_eq!(
            "closed".parse::<S>().unwrap_err().to_string(),
            "\"closed\" is not a referral status (expected one of None, New, Active, Closed)"
        );
        assert_eq!(
            "Archived".parse::<Sub>().unwrap_err().to_string(),
            "\"Archived\" is not a referral substatus (expected one of None, Pending, \
             Received, Accepted, Won, Lost, Declined, Expired)"
        );
    }

    #[test]
    fn read_status_from_documents() {
        let cases: &[(Value, Result<Option<Pair>, &str>)] = &[
            (json!({}), Ok(None)),
            (json!({"status": null, "substatus": "Won"}), Ok(None)),
            (
                json!({"status": "Active", "substatus": "Accepted"}),
                Ok(Some((S::Active, Sub::Accepted))),
            ),
            (json!({"status": "New"}), Ok(Some((S::New, Sub::None)))),
            (
                json!({"status": "New", "substatus": null}),
                Ok(Some((S::New, Sub::None))),
            ),
            (
                json!({"status": 3}),
                Err("/status must be a string, found 3"),
            ),
            (
                json!({"status": "Closed", "substatus": ["Won"]}),
                Err("/substatus must be a string, found [\"Won\"]"),
            ),
            (
                json!({"status": "Open"}),
                Err(
                    "/status: \"Open\" is not a referral status (expected one of None, New, Active, Closed)",
                ),
            ),
        ];
        for (document, expected) in cases {
            let got = read_status(document).map_err(|error| error.to_string());
            assert_eq!(got, expected.map_err(str::to_owned), "{document}");
        }
    }
}
