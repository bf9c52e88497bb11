//! Issue 10's situations 1–4 as histories: the interleavings that were
//! reproduced by hand, replayed through the model checker, so that each is
//! a named case next to the random ones.

use serde_json::json;

use crate::crm::{AddressField, Contact, CrmEdit, ExportShape, Lead};
use crate::history::{Fault, History, Kill, Profile, Start, Step, lead_id};
use crate::seller::{SellerEdit, SellerStatus};

fn lead() -> Lead {
    Lead {
        id: lead_id(0),
        subject: 1,
        amount: 1000,
        notes: Some(1),
        company: 1,
        closing: None,
        address: [None; 6],
        contact: Some(Contact {
            email: "contact1@customer.example".into(),
            first: 0,
            last: Some(1),
            phone: None,
        }),
        status: 1,
    }
}

fn history(name: &'static str, number: u64, start: Start, steps: Vec<Step>) -> History {
    History {
        name: Some(name),
        seed: number,
        profile: Profile::Mixed,
        shape: ExportShape::JsonLines,
        concurrency: 1,
        starts: vec![start],
        steps,
    }
}

fn cycle() -> Step {
    Step::Cycle { fault: None }
}

fn crm(edit: CrmEdit) -> Step {
    Step::Crm { record: 0, edit }
}

fn seller(edit: SellerEdit) -> Step {
    Step::Seller { record: 0, edit }
}

/// A cycle whose PATCH is held while a seller reads the referral, the
/// seller's edit saved only once the PATCH was applied.
fn race_saved_late(edit: SellerEdit) -> Step {
    Step::Cycle {
        fault: Some(Fault::Race {
            record: 0,
            edit,
            saves_late: true,
        }),
    }
}

pub fn all() -> Vec<History> {
    let adopted = |lead: &Lead| {
        json!({
            "externalReferenceId": lead.id,
            "name": "Seller name 0",
            "type": "Independent",
            "qualification": "None",
            "consent": {"consentToContact": false, "consentToToShareInfoWithOthers": false},
            "status": "New", "substatus": "Received",
            "customerProfile": {
                "name": "Seller Co 0",
                "address": {"addressLine1": "1 Seller Road", "postalCode": "S199", "country": "GB", "region": "Region 1"},
                "team": [{"firstName": "Sam", "lastName": "Partner1", "email": "seller1@partner.example"}],
            },
            "details": {"dealValue": 7000, "currency": "USD"},
        })
    };
    let mut no_contact = lead();
    no_contact.contact = None;
    let ann = Contact {
        email: "contact3@customer.example".into(),
        first: 0,
        last: None,
        phone: None,
    };
    vec![
        // 1. Adoption, then the CRM fills a member whose parent the
        // snapshot lacks: a whole-member add would replace the address.
        history(
            "1: adoption, then a whole-member add",
            1,
            Start {
                existing: Some(adopted(&no_contact)),
                lead: no_contact.clone(),
            },
            vec![
                cycle(),
                crm(CrmEdit::Address(AddressField::City, Some(1))),
                cycle(),
            ],
        ),
        // 2. The CRM's contact is a person, not element 0: adoption and a
        // CRM edit of the contact must keep the seller's contacts.
        history(
            "2: lists owned by position",
            2,
            Start {
                existing: Some(adopted(&lead())),
                lead: lead(),
            },
            vec![
                cycle(),
                seller(SellerEdit::AddMember(7)),
                crm(CrmEdit::ContactLast(Some(2))),
                cycle(),
            ],
        ),
        // 3. The PATCH to 2000 is applied, the process killed before the
        // answer is stored; the CRM goes back to 1000.
        history(
            "3: a revert lost after an applied but unacknowledged write",
            3,
            Start {
                lead: no_contact.clone(),
                existing: None,
            },
            vec![
                cycle(),
                crm(CrmEdit::Amount(2000)),
                Step::Kill(Kill {
                    polls: u32::MAX,
                    after_ms: 5_000,
                    hold_answers: true,
                    at_write: true,
                    at_request: false,
                }),
                crm(CrmEdit::Amount(1000)),
                cycle(),
            ],
        ),
        // 3b. The same, then the revert's own write is cut off after it
        // was sent and before the service applied it: the next cycle must
        // still know the referral holds 2000.
        history(
            "3b: a revert cut off in flight after a recovered write",
            5,
            Start {
                lead: {
                    let mut l = lead();
                    l.contact = None;
                    l
                },
                existing: None,
            },
            vec![
                cycle(),
                crm(CrmEdit::Amount(2000)),
                Step::Kill(Kill {
                    polls: u32::MAX,
                    after_ms: 5_000,
                    hold_answers: true,
                    at_write: true,
                    at_request: false,
                }),
                crm(CrmEdit::Amount(1000)),
                Step::Kill(Kill {
                    polls: u32::MAX,
                    after_ms: 5_000,
                    hold_answers: false,
                    at_write: false,
                    at_request: true,
                }),
            ],
        ),
        // 4. A seller closes the referral while the CRM moves it on; the
        // refused move must not be sent again with the next change.
        history(
            "4: a refused status resent forever",
            4,
            Start {
                lead: no_contact.clone(),
                existing: None,
            },
            vec![
                cycle(),
                seller(SellerEdit::Status(SellerStatus::Close("Won"))),
                crm(CrmEdit::Status(2)),
                cycle(),
                crm(CrmEdit::Amount(3000)),
                cycle(),
            ],
        ),
        // The race's other order (model seed 229): the seller reads a
        // referral without a team while our PATCH adding the CRM's
        // contact is held, and saves after it was applied. Saved blind,
        // the seller's append was an add of the whole team that dropped
        // the contact the PATCH had just added, and the model still
        // expected it: the harness's edit, not the sync, lost it.
        history(
            "race: a seller's append saved after the held PATCH",
            229,
            Start {
                lead: no_contact.clone(),
                existing: None,
            },
            vec![
                cycle(),
                crm(CrmEdit::NewContact(ann)),
                race_saved_late(SellerEdit::AddMember(1)),
                crm(CrmEdit::ContactPhone(Some(2))),
                cycle(),
            ],
        ),
        // The same order for the status (model seed 315): our PATCH closes
        // the referral, the seller's close read before it is saved after
        // it, then the seller closes it otherwise: the CRM's close landed
        // before both seller edits, so the seller's last one stands.
        history(
            "race: a seller's close saved after the held PATCH",
            315,
            Start {
                lead: no_contact,
                existing: None,
            },
            vec![
                cycle(),
                crm(CrmEdit::Status(6)),
                race_saved_late(SellerEdit::Status(SellerStatus::Close("Won"))),
                seller(SellerEdit::Status(SellerStatus::Close("Lost"))),
                cycle(),
            ],
        ),
    ]
}
