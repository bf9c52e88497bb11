//! The CRM side of a history: lead records as the export holds them, the
//! edits a CRM user makes, and the export file written from them.
//!
//! Values come from small pools so that edits often go back to an earlier
//! value (a revert). CRM values and seller values never share a pool: a
//! live value equal to the CRM's can only be there because the CRM's value
//! was written.

use std::fmt;
use std::path::Path;

use serde_json::{Map, Value, json};

/// The address columns of a lead, in mapping order.
pub const ADDRESS_FIELDS: [AddressField; 6] = [
    AddressField::Line1,
    AddressField::Line2,
    AddressField::City,
    AddressField::State,
    AddressField::PostalCode,
    AddressField::Country,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressField {
    Line1,
    Line2,
    City,
    State,
    PostalCode,
    Country,
}

impl AddressField {
    pub fn column(self) -> &'static str {
        match self {
            AddressField::Line1 => "address1_line1",
            AddressField::Line2 => "address1_line2",
            AddressField::City => "address1_city",
            AddressField::State => "address1_stateorprovince",
            AddressField::PostalCode => "address1_postalcode",
            AddressField::Country => "address1_country",
        }
    }

    /// The member of `customerProfile.address` it maps to.
    pub fn member(self) -> &'static str {
        match self {
            AddressField::Line1 => "addressLine1",
            AddressField::Line2 => "addressLine2",
            AddressField::City => "city",
            AddressField::State => "state",
            AddressField::PostalCode => "postalCode",
            AddressField::Country => "country",
        }
    }

    /// The CRM's value number `k`.
    pub fn crm_value(self, k: u32) -> String {
        match self {
            AddressField::Line1 => format!("{k} Crm Street"),
            AddressField::Line2 => format!("Floor {k}"),
            AddressField::City => format!("Crmtown {k}"),
            AddressField::State => format!("CRM-{k}"),
            AddressField::PostalCode => format!("C{k}00"),
            AddressField::Country => ["US", "DE", "FR"][k as usize % 3].to_owned(),
        }
    }

    /// A seller's value number `k` (never one of the CRM's).
    pub fn seller_value(self, k: u32) -> String {
        match self {
            AddressField::Line1 => format!("{k} Seller Road"),
            AddressField::Line2 => format!("Suite {k}"),
            AddressField::City => format!("Sellerville {k}"),
            AddressField::State => format!("SEL-{k}"),
            AddressField::PostalCode => format!("S{k}99"),
            AddressField::Country => ["GB", "JP", "CA"][k as usize % 3].to_owned(),
        }
    }
}

/// The lead's contact person (`customerProfile.team`'s CRM member).
#[derive(Debug, Clone, PartialEq)]
pub struct Contact {
    /// Every contact a history makes gets a fresh address: a CRM contact
    /// is never re-keyed to an address used before.
    pub email: String,
    pub first: u32,
    pub last: Option<u32>,
    pub phone: Option<u32>,
}

pub fn contact_first(k: u32) -> String {
    ["Ann", "Bo", "Cy"][k as usize % 3].to_owned()
}

pub fn contact_last(k: u32) -> String {
    format!("Crmson{k}")
}

pub fn contact_phone(k: u32) -> String {
    format!("+1 555 010{k}")
}

/// A lead as the export holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lead {
    pub id: String,
    pub subject: u32,
    pub amount: i64,
    pub notes: Option<u32>,
    pub company: u32,
    pub closing: Option<u32>,
    pub address: [Option<u32>; 6],
    pub contact: Option<Contact>,
    /// The lead's `statuscode`, 1–7.
    pub status: u8,
}

/// `(statecode, label)` of a lead status code.
pub fn lead_status(code: u8) -> (u8, &'static str) {
    match code {
        1 => (0, "New"),
        2 => (0, "Contacted"),
        3 => (1, "Qualified"),
        4 => (2, "Lost"),
        5 => (2, "Cannot Contact"),
        6 => (2, "No Longer Interested"),
        _ => (2, "Canceled"),
    }
}

pub const AMOUNTS: [i64; 3] = [1000, 2000, 3000];

/// Columns a record may leave empty, besides the address.
const CONTACT_AND_DEAL_COLUMNS: [&str; 6] = [
    "description",
    "estimatedclosedate",
    "firstname",
    "lastname",
    "emailaddress1",
    "telephone1",
];

impl Lead {
    pub fn to_json(&self) -> Value {
        let mut record = Map::new();
        record.insert("leadid".into(), json!(self.id));
        record.insert("subject".into(), json!(format!("Deal {}", self.subject)));
        record.insert("estimatedamount".into(), json!(self.amount));
        if let Some(k) = self.notes {
            record.insert("description".into(), json!(format!("CRM notes {k}")));
        }
        record.insert(
            "companyname".into(),
            json!(format!("Customer {}", self.company)),
        );
        if let Some(k) = self.closing {
            record.insert(
                "estimatedclosedate".into(),
                json!(format!("2026-0{}-15", 1 + k % 9)),
            );
        }
        for (field, value) in ADDRESS_FIELDS.iter().zip(self.address) {
            if let Some(k) = value {
                record.insert(field.column().into(), json!(field.crm_value(k)));
            }
        }
        if let Some(c) = &self.contact {
            record.insert("firstname".into(), json!(contact_first(c.first)));
            record.insert("emailaddress1".into(), json!(c.email));
            if let Some(k) = c.last {
                record.insert("lastname".into(), json!(contact_last(k)));
            }
            if let Some(k) = c.phone {
                record.insert("telephone1".into(), json!(contact_phone(k)));
            }
        }
        let (state, _) = lead_status(self.status);
        record.insert("statecode".into(), json!(state));
        record.insert("statuscode".into(), json!(self.status));
        // An export names every column it selects, `null` where the record
        // has no value (as the Web API writes it), so that a cleared field
        // is never mistaken for a dropped column.
        let columns = ADDRESS_FIELDS
            .iter()
            .map(|field| field.column())
            .chain(CONTACT_AND_DEAL_COLUMNS);
        for column in columns {
            record.entry(column).or_insert(Value::Null);
        }
        Value::Object(record)
    }

    pub fn apply(&mut self, edit: &CrmEdit) {
        match edit {
            CrmEdit::Amount(v) => self.amount = *v,
            CrmEdit::Subject(k) => self.subject = *k,
            CrmEdit::Notes(k) => self.notes = *k,
            CrmEdit::Company(k) => self.company = *k,
            CrmEdit::Closing(k) => self.closing = *k,
            CrmEdit::Address(field, k) => {
                let index = ADDRESS_FIELDS.iter().position(|f| f == field).unwrap_or(0);
                self.address[index] = *k;
            }
            CrmEdit::NewContact(contact) => self.contact = Some(contact.clone()),
            CrmEdit::ContactFirst(k) => {
                if let Some(c) = &mut self.contact {
                    c.first = *k;
                }
            }
            CrmEdit::ContactLast(k) => {
                if let Some(c) = &mut self.contact {
                    c.last = *k;
                }
            }
            CrmEdit::ContactPhone(k) => {
                if let Some(c) = &mut self.contact {
                    c.phone = *k;
                }
            }
            CrmEdit::RemoveContact => self.contact = None,
            CrmEdit::Status(code) => self.status = *code,
        }
    }
}

/// One change a CRM user makes to a lead.
#[derive(Debug, Clone, PartialEq)]
pub enum CrmEdit {
    Amount(i64),
    Subject(u32),
    Notes(Option<u32>),
    Company(u32),
    Closing(Option<u32>),
    Address(AddressField, Option<u32>),
    /// A contact with a new email replaces the lead's contact (or is the
    /// first one).
    NewContact(Contact),
    ContactFirst(u32),
    ContactLast(Option<u32>),
    ContactPhone(Option<u32>),
    RemoveContact,
    Status(u8),
}

impl fmt::Display for CrmEdit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |k: &Option<u32>, show: &dyn Fn(u32) -> String| {
            k.map(show).unwrap_or_else(|| "(cleared)".to_owned())
        };
        match self {
            CrmEdit::Amount(v) => write!(f, "estimatedamount = {v}"),
            CrmEdit::Subject(k) => write!(f, "subject = Deal {k}"),
            CrmEdit::Notes(k) => {
                write!(f, "description = {}", opt(k, &|k| format!("CRM notes {k}")))
            }
            CrmEdit::Company(k) => write!(f, "companyname = Customer {k}"),
            CrmEdit::Closing(k) => write!(
                f,
                "estimatedclosedate = {}",
                opt(k, &|k| format!("2026-0{}-15", 1 + k % 9))
            ),
            CrmEdit::Address(field, k) => write!(
                f,
                "{} = {}",
                field.column(),
                opt(k, &|k| field.crm_value(k))
            ),
            CrmEdit::NewContact(c) => write!(
                f,
                "new contact {} ({} {}, phone {})",
                c.email,
                contact_first(c.first),
                opt(&c.last, &contact_last),
                opt(&c.phone, &contact_phone)
            ),
            CrmEdit::ContactFirst(k) => write!(f, "firstname = {}", contact_first(*k)),
            CrmEdit::ContactLast(k) => write!(f, "lastname = {}", opt(k, &contact_last)),
            CrmEdit::ContactPhone(k) => write!(f, "telephone1 = {}", opt(k, &contact_phone)),
            CrmEdit::RemoveContact => write!(f, "contact removed (its columns cleared)"),
            CrmEdit::Status(code) => {
                let (state, label) = lead_status(*code);
                write!(f, "status {label} (statecode {state}, statuscode {code})")
            }
        }
    }
}

/// How the export is written; chosen per history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportShape {
    JsonLines,
    OdataPage,
}

impl ExportShape {
    pub fn file_name(self) -> &'static str {
        match self {
            ExportShape::JsonLines => "leads.jsonl",
            ExportShape::OdataPage => "leads.json",
        }
    }
}

/// Write the export whole, as the job that produces it would: a temporary
/// file renamed into place.
pub fn write_export(path: &Path, shape: ExportShape, leads: &[Lead]) -> std::io::Result<()> {
    let text = match shape {
        ExportShape::JsonLines => leads.iter().map(|l| format!("{}\n", l.to_json())).collect(),
        ExportShape::OdataPage => {
            let records: Vec<Value> = leads
                .iter()
                .enumerate()
                .map(|(i, lead)| {
                    let mut record = lead.to_json();
                    record["@odata.etag"] = json!(format!("W/\"{}\"", 1000 + i));
                    record
                })
                .collect();
            serde_json::to_string_pretty(&json!({
                "@odata.context": "https://contoso.crm.dynamics.com/api/data/v9.2/$metadata#leads",
                "value": records,
            }))
            .unwrap_or_default()
        }
    };
    let partial = path.with_extension("part");
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, path)
}
