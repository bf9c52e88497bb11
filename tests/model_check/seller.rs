//! The Partner Center side of a history: what a Microsoft seller edits in
//! a referral, written as the JSON Patch the emulator's
//! `POST /_admin/referrals/{id}/edit` applies.

use std::fmt;

use serde_json::{Value, json};

use crate::crm::AddressField;

/// A member the mapping owns, as a seller changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnedMember {
    Name,
    DealValue,
    Currency,
    Closing,
    Notes,
    Company,
    Address(AddressField),
}

impl OwnedMember {
    pub const ALL: [OwnedMember; 12] = [
        OwnedMember::Name,
        OwnedMember::DealValue,
        OwnedMember::Currency,
        OwnedMember::Closing,
        OwnedMember::Notes,
        OwnedMember::Company,
        OwnedMember::Address(AddressField::Line1),
        OwnedMember::Address(AddressField::Line2),
        OwnedMember::Address(AddressField::City),
        OwnedMember::Address(AddressField::State),
        OwnedMember::Address(AddressField::PostalCode),
        OwnedMember::Address(AddressField::Country),
    ];

    pub fn pointer(self) -> String {
        match self {
            OwnedMember::Name => "/name".into(),
            OwnedMember::DealValue => "/details/dealValue".into(),
            OwnedMember::Currency => "/details/currency".into(),
            OwnedMember::Closing => "/details/closingDateTime".into(),
            OwnedMember::Notes => "/details/notes".into(),
            OwnedMember::Company => "/customerProfile/name".into(),
            OwnedMember::Address(field) => format!("/customerProfile/address/{}", field.member()),
        }
    }

    /// A seller's value number `k`: never one the CRM produces.
    pub fn seller_value(self, k: u32) -> Value {
        match self {
            OwnedMember::Name => json!(format!("Seller name {k}")),
            OwnedMember::DealValue => json!(5000 + 500 * i64::from(k)),
            OwnedMember::Currency => json!(["EUR", "GBP", "JPY"][k as usize % 3]),
            OwnedMember::Closing => json!(format!("2030-0{}-01T00:00:00Z", 1 + k % 9)),
            OwnedMember::Notes => json!(format!("Seller notes {k}")),
            OwnedMember::Company => json!(format!("Seller Co {k}")),
            OwnedMember::Address(field) => json!(field.seller_value(k)),
        }
    }
}

/// A member of a team element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactMember {
    FirstName,
    LastName,
    PhoneNumber,
}

impl ContactMember {
    pub const ALL: [ContactMember; 3] = [
        ContactMember::FirstName,
        ContactMember::LastName,
        ContactMember::PhoneNumber,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ContactMember::FirstName => "firstName",
            ContactMember::LastName => "lastName",
            ContactMember::PhoneNumber => "phoneNumber",
        }
    }

    pub fn seller_value(self, k: u32) -> Value {
        match self {
            ContactMember::FirstName => json!(format!("Sal{k}")),
            ContactMember::LastName => json!(format!("Sellerson{k}")),
            ContactMember::PhoneNumber => json!(format!("+44 20 7946 00{k}")),
        }
    }
}

/// Members the mapping does not own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnownedMember {
    Region,
    Size,
    Requirements,
}

impl UnownedMember {
    pub const ALL: [UnownedMember; 3] = [
        UnownedMember::Region,
        UnownedMember::Size,
        UnownedMember::Requirements,
    ];

    pub fn pointer(self) -> &'static str {
        match self {
            UnownedMember::Region => "/customerProfile/address/region",
            UnownedMember::Size => "/customerProfile/size",
            UnownedMember::Requirements => "/details/requirements",
        }
    }

    pub fn seller_value(self, k: u32) -> Value {
        match self {
            UnownedMember::Region => json!(format!("Region {k}")),
            UnownedMember::Size => json!(["Small", "Medium", "Large"][k as usize % 3]),
            UnownedMember::Requirements => {
                json!({"industries": [{"id": format!("industry-{k}")}]})
            }
        }
    }
}

/// A team member a seller adds; its email is unique in the history.
pub fn seller_member(k: u32) -> Value {
    json!({
        "firstName": "Sam",
        "lastName": format!("Partner{k}"),
        "email": format!("seller{k}@partner.example"),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SellerStatus {
    /// New → Active/Accepted.
    Accept,
    /// → Closed with this substatus.
    Close(&'static str),
}

/// One edit a seller makes in Partner Center.
#[derive(Debug, Clone, PartialEq)]
pub enum SellerEdit {
    Owned(OwnedMember, u32),
    /// A member of the team element that carries the CRM contact's email.
    Contact(ContactMember, u32),
    Unowned(UnownedMember, u32),
    AddMember(u32),
    /// The last name of a member a seller added (the `pick`-th of them).
    EditMember {
        pick: u32,
        k: u32,
    },
    Status(SellerStatus),
}

impl fmt::Display for SellerEdit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SellerEdit::Owned(member, k) => {
                write!(f, "{} = {}", member.pointer(), member.seller_value(*k))
            }
            SellerEdit::Contact(member, k) => write!(
                f,
                "the CRM contact's {} = {}",
                member.name(),
                member.seller_value(*k)
            ),
            SellerEdit::Unowned(member, k) => {
                write!(f, "{} = {}", member.pointer(), member.seller_value(*k))
            }
            SellerEdit::AddMember(k) => write!(f, "adds team member {}", seller_member(*k)),
            SellerEdit::EditMember { pick, k } => {
                write!(f, "renames seller-added team member #{pick} to Partner{k}b")
            }
            SellerEdit::Status(SellerStatus::Accept) => write!(f, "accepts (Active/Accepted)"),
            SellerEdit::Status(SellerStatus::Close(substatus)) => {
                write!(f, "closes (Closed/{substatus})")
            }
        }
    }
}

/// The op that sets the member at `pointer` to `value` in `live`: an `add`
/// of the first missing ancestor, holding the rest.
pub fn set_member(live: &Value, pointer: &str, value: Value) -> Value {
    let tokens: Vec<&str> = pointer.split('/').skip(1).collect();
    let mut depth = 0;
    let mut node = live;
    while depth + 1 < tokens.len() {
        match node.get(tokens[depth]) {
            Some(child) if child.is_object() => {
                node = child;
                depth += 1;
            }
            _ => break,
        }
    }
    let mut built = value;
    for token in tokens[depth + 1..].iter().rev() {
        built = json!({ *token: built });
    }
    let path = format!("/{}", tokens[..=depth].join("/"));
    json!({"op": "add", "path": path, "value": built})
}

/// Index of the team element carrying `email` (case-insensitive).
pub fn team_index(live: &Value, email: &str) -> Option<usize> {
    live.pointer("/customerProfile/team")?
        .as_array()?
        .iter()
        .position(|m| {
            m.get("email")
                .and_then(Value::as_str)
                .is_some_and(|e| e.eq_ignore_ascii_case(email))
        })
}

/// The op that appends `member` to the customer's team.
pub fn append_member(live: &Value, member: Value) -> Value {
    if live
        .pointer("/customerProfile/team")
        .is_some_and(Value::is_array)
    {
        json!({"op": "add", "path": "/customerProfile/team/-", "value": member})
    } else {
        set_member(live, "/customerProfile/team", json!([member]))
    }
}

/// Whether the service's transition table lets `from` move to `to`.
pub fn may_move(from: &str, to: &str) -> bool {
    match from {
        "New" => matches!(to, "New" | "Active" | "Closed"),
        "Active" => matches!(to, "Active" | "Closed"),
        "Closed" => to == "Closed",
        _ => true,
    }
}
