//! A history: the records it starts from and the steps drawn for it, all
//! from one seed. Printing a history gives the step list a failure report
//! shows; generating it again from the seed gives the same list.

use std::fmt;

use serde_json::{Value, json};

use crate::crm::{ADDRESS_FIELDS, AMOUNTS, Contact, CrmEdit, ExportShape, Lead};
use crate::rng::Rng;
use crate::seller::{
    ContactMember, OwnedMember, SellerEdit, SellerStatus, UnownedMember, seller_member,
};

/// How long the race fault holds the PATCH; the seller's edit is made
/// meanwhile.
pub const RACE_HOLD_MS: u64 = 150;

/// A fault armed for the next cycle.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// The record's first PATCH of the cycle is held before it is
    /// handled; meanwhile the seller makes this edit, so the PATCH meets a
    /// new eTag (412). With no PATCH in the cycle (or no referral yet) the
    /// edit is made after it. `saves_late` (hand-written histories only):
    /// the seller reads the referral while the PATCH is held and saves
    /// only once the PATCH was applied, the order a loaded machine may
    /// give any race (the save is refused with 412 and made again from a
    /// new read).
    Race {
        record: usize,
        edit: SellerEdit,
        saves_late: bool,
    },
    /// `429` with `Retry-After`.
    Throttle {
        method: &'static str,
        after: u64,
        retry_after: u64,
    },
    /// The connection dropped before the service handled the request.
    ResetBefore { method: &'static str, after: u64 },
    /// The service applied the request, then the connection dropped.
    ResetAfter { method: &'static str, after: u64 },
    /// Every PATCH answered `204 No Content`, without the referral.
    NoRepresentation,
}

impl Fault {
    /// The emulator's rules for it; `race_referral` is the referral the
    /// race edits, when it exists.
    pub fn rules(&self, race_referral: Option<&str>) -> Value {
        match self {
            Fault::Race { .. } => match race_referral {
                Some(id) => json!([{
                    "method": "PATCH", "path_contains": format!("/referrals/{id}"),
                    "kind": "delay", "ms": RACE_HOLD_MS,
                }]),
                None => json!([]),
            },
            Fault::Throttle {
                method,
                after,
                retry_after,
            } => json!([{
                "method": method, "after": after, "kind": "status",
                "status": 429, "retry_after": retry_after,
            }]),
            Fault::ResetBefore { method, after } => {
                json!([{"method": method, "after": after, "kind": "reset_before"}])
            }
            Fault::ResetAfter { method, after } => {
                json!([{"method": method, "after": after, "kind": "reset_after"}])
            }
            Fault::NoRepresentation => {
                json!([{"method": "PATCH", "kind": "ignore_prefer", "times": 0}])
            }
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Race {
                record,
                edit,
                saves_late,
            } => write!(
                f,
                "412 race: record {record}'s seller edit ({edit}) while the first PATCH waits{}",
                if *saves_late {
                    ", read while it waits and saved once it was applied"
                } else {
                    ""
                }
            ),
            Fault::Throttle {
                method,
                after,
                retry_after,
            } => write!(
                f,
                "429 Retry-After {retry_after} on {method} (after {after})"
            ),
            Fault::ResetBefore { method, after } => {
                write!(f, "reset before apply on {method} (after {after})")
            }
            Fault::ResetAfter { method, after } => {
                write!(f, "reset after apply on {method} (after {after})")
            }
            Fault::NoRepresentation => write!(f, "PATCH answered 204 without the referral"),
        }
    }
}

/// How a cycle is cut off, as a crash would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kill {
    /// The cycle future is dropped when it is polled this many times...
    pub polls: u32,
    /// ...or at its first wake-up this long after the start.
    pub after_ms: u64,
    /// The service holds back its answer to every applied write for 25 ms,
    /// so that a kill often falls after a write took effect.
    pub hold_answers: bool,
    /// With `hold_answers`: killed as soon as the service has applied a
    /// write of this cycle, before its answer arrives.
    pub at_write: bool,
    /// Every write is held 300 ms before the service handles it, and the
    /// cycle is killed as soon as one arrives: the write was sent (its
    /// intent recorded) but never applied.
    pub at_request: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Crm { record: usize, edit: CrmEdit },
    Seller { record: usize, edit: SellerEdit },
    Cycle { fault: Option<Fault> },
    Kill(Kill),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Crm { record, edit } => write!(f, "CRM edits record {record}: {edit}"),
            Step::Seller { record, edit } => write!(f, "seller edits record {record}: {edit}"),
            Step::Cycle { fault: None } => write!(f, "cycle"),
            Step::Cycle { fault: Some(fault) } => write!(f, "cycle with fault: {fault}"),
            Step::Kill(kill) => write!(
                f,
                "cycle killed after {} polls or {} ms{}",
                kill.polls,
                kill.after_ms,
                match (kill.hold_answers, kill.at_write || kill.at_request) {
                    _ if kill.at_request => {
                        ", writes held 300 ms before they are handled, killed at the first one sent"
                    }
                    (true, true) =>
                        ", answers to writes held 25 ms, killed at the first applied write",
                    (true, false) => ", answers to writes held 25 ms",
                    _ => "",
                }
            ),
        }
    }
}

/// A record's starting point.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub lead: Lead,
    /// A referral already in Partner Center for this lead (made there, not
    /// by us): the first cycle adopts it.
    pub existing: Option<Value>,
}

/// What a history leans towards: most are mixed; some dwell on status
/// moves, crashes around writes, or the team, where the interleavings
/// that matter need several steps of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Mixed,
    Status,
    Crashes,
    Team,
}

#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// A hand-written history's name; generated ones have none.
    pub name: Option<&'static str>,
    pub seed: u64,
    pub profile: Profile,
    pub shape: ExportShape,
    pub concurrency: usize,
    pub starts: Vec<Start>,
    pub steps: Vec<Step>,
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name {
            Some(name) => write!(f, "history \"{name}\"")?,
            None => write!(f, "history seed {}", self.seed)?,
        }
        writeln!(
            f,
            " ({:?}, {:?} export, api.concurrency {}):",
            self.profile, self.shape, self.concurrency
        )?;
        for (i, start) in self.starts.iter().enumerate() {
            writeln!(
                f,
                "  record {i}: {} {}",
                start.lead.id,
                start.lead.to_json()
            )?;
            if let Some(existing) = &start.existing {
                writeln!(f, "    already in Partner Center: {existing}")?;
            }
        }
        for (i, step) in self.steps.iter().enumerate() {
            writeln!(f, "  step {:>2}: {step}", i + 1)?;
        }
        write!(
            f,
            "  then: a quiet cycle, the invariants, a second quiet cycle"
        )
    }
}

/// The external id of record `i`.
pub fn lead_id(i: usize) -> String {
    format!("0d000000-0000-4000-8000-{:012}", i + 1)
}

/// Draws a history. `max_records` and `max_steps` bound its size.
pub fn generate(seed: u64, max_records: usize, max_steps: usize) -> History {
    let mut g = Generator {
        rng: Rng::new(seed),
        next_email: 0,
        next_member: 0,
        profile: Profile::Mixed,
    };
    g.profile = match g.rng.below(20) {
        0..=9 => Profile::Mixed,
        10..=13 => Profile::Status,
        14..=16 => Profile::Crashes,
        _ => Profile::Team,
    };
    let shape = if g.rng.chance(50) {
        ExportShape::JsonLines
    } else {
        ExportShape::OdataPage
    };
    let concurrency = 1 + g.rng.below(3) as usize;
    // A status history dwells on one record: its moves meet more often.
    let records = match g.profile {
        Profile::Status => 1,
        _ => 1 + g.rng.below(max_records as u64) as usize,
    };
    let starts: Vec<Start> = (0..records).map(|i| g.start(i)).collect();
    let mut leads: Vec<Lead> = starts.iter().map(|s| s.lead.clone()).collect();
    let mut members_added = vec![0u32; records];
    for (i, start) in starts.iter().enumerate() {
        members_added[i] = start
            .existing
            .as_ref()
            .and_then(|e| e.pointer("/customerProfile/team"))
            .and_then(Value::as_array)
            .map_or(0, |t| t.len() as u32);
    }
    let count = 3 + g.rng.below(max_steps.saturating_sub(2) as u64) as usize;
    let mut steps = Vec::with_capacity(count);
    // Most histories start by syncing what they were given.
    if g.rng.chance(70) {
        steps.push(Step::Cycle { fault: None });
    }
    while steps.len() < count {
        let record = g.rng.below(records as u64) as usize;
        // Upper bounds (exclusive) of CRM edits, seller edits, plain
        // cycles and cycles with a fault; the rest are kills.
        let [crm, seller, cycle, faulty] = match g.profile {
            Profile::Crashes => [30, 40, 52, 68],
            _ => [30, 50, 72, 90],
        };
        let roll = g.rng.below(100);
        let step = match roll {
            r if r < crm => {
                let edit = g.crm_edit(&leads[record]);
                leads[record].apply(&edit);
                Step::Crm { record, edit }
            }
            r if r < seller => Step::Seller {
                record,
                edit: g.seller_edit(&mut members_added[record]),
            },
            r if r < cycle => Step::Cycle { fault: None },
            r if r < faulty => {
                let fault = g.fault(record, &mut members_added[record]);
                // A fault needs requests to act on: most come after a CRM
                // edit (a race always, of the record it races on).
                if matches!(fault, Fault::Race { .. }) || g.rng.chance(60) {
                    let edit = g.crm_edit(&leads[record]);
                    leads[record].apply(&edit);
                    steps.push(Step::Crm { record, edit });
                }
                Step::Cycle { fault: Some(fault) }
            }
            _ => {
                let hold_answers = g.rng.chance(if g.profile == Profile::Crashes {
                    80
                } else {
                    50
                });
                // A kill needs a cycle with work in it to cut off.
                if g.rng.chance(60) {
                    let edit = g.crm_edit(&leads[record]);
                    leads[record].apply(&edit);
                    steps.push(Step::Crm { record, edit });
                }
                Step::Kill(Kill {
                    polls: 1 + g.rng.below_u32(40),
                    after_ms: g.rng.below(40),
                    hold_answers,
                    at_write: hold_answers && g.rng.chance(50),
                    at_request: false,
                })
            }
        };
        steps.push(step);
    }
    History {
        name: None,
        seed,
        profile: g.profile,
        shape,
        concurrency,
        starts,
        steps,
    }
}

struct Generator {
    rng: Rng,
    next_email: u32,
    next_member: u32,
    profile: Profile,
}

impl Generator {
    fn k(&mut self) -> u32 {
        self.rng.below_u32(3)
    }

    fn maybe(&mut self, percent: u64) -> Option<u32> {
        if self.rng.chance(percent) {
            Some(self.k())
        } else {
            None
        }
    }

    fn contact(&mut self) -> Contact {
        self.next_email += 1;
        Contact {
            email: format!("contact{}@customer.example", self.next_email),
            first: self.k(),
            last: self.maybe(80),
            phone: self.maybe(50),
        }
    }

    fn start(&mut self, i: usize) -> Start {
        let mut address = [None; 6];
        for slot in &mut address {
            *slot = self.maybe(40);
        }
        let lead = Lead {
            id: lead_id(i),
            subject: self.k(),
            amount: *self.rng.pick(&AMOUNTS),
            notes: self.maybe(60),
            company: self.k(),
            closing: self.maybe(50),
            address,
            contact: if self.rng.chance(70) {
                Some(self.contact())
            } else {
                None
            },
            status: *self.rng.pick(&[1, 1, 1, 2, 2, 3, 4, 6]),
        };
        let existing = if self.rng.chance(35) {
            Some(self.existing_referral(&lead))
        } else {
            None
        };
        Start { lead, existing }
    }

    /// A referral Partner Center already holds for `lead`, filled in by a
    /// seller: some owned members with the seller's values, some unowned
    /// ones, team members of its own and perhaps the CRM's contact.
    fn existing_referral(&mut self, lead: &Lead) -> Value {
        let mut referral = json!({
            "externalReferenceId": lead.id,
            "name": format!("Seller name {}", self.k()),
            "type": "Independent",
            "qualification": "None",
            "consent": {"consentToContact": false, "consentToToShareInfoWithOthers": false},
            "customerProfile": {"name": format!("Seller Co {}", self.k())},
            "details": {"dealValue": 7000, "currency": "USD"},
        });
        let (status, substatus) = *self.rng.pick(&[
            ("New", "Received"),
            ("New", "Pending"),
            ("Active", "Accepted"),
        ]);
        referral["status"] = json!(status);
        referral["substatus"] = json!(substatus);
        let mut address = serde_json::Map::new();
        for field in ADDRESS_FIELDS {
            if self.rng.chance(45) {
                let k = self.k();
                address.insert(field.member().into(), json!(field.seller_value(k)));
            }
        }
        if self.rng.chance(60) {
            address.insert("region".into(), json!(format!("Region {}", self.k())));
        }
        if !address.is_empty() {
            referral["customerProfile"]["address"] = Value::Object(address);
        }
        if self.rng.chance(40) {
            referral["customerProfile"]["size"] = json!("Medium");
        }
        if self.rng.chance(40) {
            referral["details"]["notes"] = json!(format!("Seller notes {}", self.k()));
        }
        if self.rng.chance(30) {
            referral["details"]["requirements"] =
                json!({"products": [{"id": format!("product-{}", self.k())}]});
        }
        let mut team = Vec::new();
        if self.rng.chance(60) {
            team.push(seller_member(self.member()));
        }
        if let Some(contact) = &lead.contact
            && self.rng.chance(50)
        {
            let crm_contact = json!({
                "firstName": format!("Sal{}", self.k()),
                "lastName": format!("Sellerson{}", self.k()),
                "phoneNumber": "+44 20 7946 0999",
                "email": contact.email,
            });
            if self.rng.chance(50) {
                team.push(crm_contact);
            } else {
                team.insert(0, crm_contact);
            }
        }
        if self.rng.chance(30) {
            team.push(seller_member(self.member()));
        }
        if !team.is_empty() {
            referral["customerProfile"]["team"] = Value::Array(team);
        }
        referral
    }

    fn member(&mut self) -> u32 {
        self.next_member += 1;
        self.next_member
    }

    fn crm_edit(&mut self, lead: &Lead) -> CrmEdit {
        let k = self.k();
        let leaning = self.rng.chance(60);
        let kind = match self.profile {
            // Status moves, and deal values that go out with them.
            Profile::Status if leaning => [0, 10, 10][self.rng.below(3) as usize],
            Profile::Crashes if leaning => 0,
            Profile::Team if leaning => 8,
            _ => self.rng.below(12),
        };
        match kind {
            0 | 1 => CrmEdit::Amount(*self.rng.pick(&AMOUNTS)),
            2 => CrmEdit::Subject(k),
            3 => CrmEdit::Notes(self.maybe(70)),
            4 => CrmEdit::Company(k),
            5 => CrmEdit::Closing(self.maybe(70)),
            6 | 7 => CrmEdit::Address(*self.rng.pick(&ADDRESS_FIELDS), self.maybe(70)),
            8 | 9 => match &lead.contact {
                None => CrmEdit::NewContact(self.contact()),
                Some(_) => match self.rng.below(6) {
                    0 => CrmEdit::ContactFirst(k),
                    1 | 2 => CrmEdit::ContactLast(self.maybe(80)),
                    3 => CrmEdit::ContactPhone(self.maybe(70)),
                    4 => CrmEdit::NewContact(self.contact()),
                    _ => CrmEdit::RemoveContact,
                },
            },
            _ => CrmEdit::Status(1 + self.rng.below(7) as u8),
        }
    }

    fn seller_edit(&mut self, members_added: &mut u32) -> SellerEdit {
        let k = self.k();
        let leaning = self.rng.chance(50);
        let kind = match self.profile {
            Profile::Status if leaning => [8, 9, 9][self.rng.below(3) as usize],
            Profile::Team if leaning => [3, 6, 7][self.rng.below(3) as usize],
            _ => self.rng.below(10),
        };
        match kind {
            0..=2 => SellerEdit::Owned(*self.rng.pick(&OwnedMember::ALL), k),
            3 => SellerEdit::Contact(*self.rng.pick(&ContactMember::ALL), k),
            4 | 5 => SellerEdit::Unowned(*self.rng.pick(&UnownedMember::ALL), k),
            6 => {
                *members_added += 1;
                SellerEdit::AddMember(self.member())
            }
            7 if *members_added > 0 => SellerEdit::EditMember {
                pick: self.rng.below_u32(*members_added),
                k,
            },
            7 => {
                *members_added += 1;
                SellerEdit::AddMember(self.member())
            }
            8 => SellerEdit::Status(SellerStatus::Accept),
            _ => SellerEdit::Status(SellerStatus::Close(
                ["Won", "Lost", "Declined"][self.rng.below(3) as usize],
            )),
        }
    }

    fn fault(&mut self, record: usize, members_added: &mut u32) -> Fault {
        let method = *self.rng.pick(&["PATCH", "PATCH", "POST", "GET"]);
        let after = self.rng.below(3);
        match self.rng.below(10) {
            0 | 1 => Fault::Race {
                record,
                edit: self.seller_edit(members_added),
                saves_late: false,
            },
            // Retry-After 1 costs a second of wall time: rarer.
            2 | 3 => Fault::Throttle {
                method,
                after,
                retry_after: u64::from(self.rng.chance(15)),
            },
            4 | 5 => Fault::ResetBefore { method, after },
            6 | 7 => Fault::ResetAfter { method, after },
            _ => Fault::NoRepresentation,
        }
    }
}
