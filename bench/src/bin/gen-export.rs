//! Synthetic Dynamics 365 opportunity exports for benchmarks, and the
//! parse-only readers that give the floor a cycle is measured against.
//!
//! `generate` writes N opportunities in one of four layouts: Web API (OData)
//! JSON pages in a directory, the way a Dataverse query saves them
//! (`odata`); one OData file holding every record, as a Dataverse export
//! job writes it (`odata-file`); JSON Lines, one record object per line with
//! the same fields as the OData records (`jsonl`); or one CSV export of a
//! view with display-name headers and formatted labels (`csv`). Everything
//! follows from `--seed`: the same arguments write the same bytes.
//!
//! `--changed K` derives a later export of the same records: the records at
//! positions `0..K` of a fixed pseudo-random permutation (taken round and
//! round when K exceeds N) carry one more revision each — a new deal value,
//! a longer note, and for every third record a closed status. Going from
//! `--changed K1` to `--changed K2` (with `K2 - K1 <= N`) therefore changes
//! exactly `K2 - K1` records, so a sequence of exports can change a chosen
//! number of records at each step.
//!
//! `--changed` means the same in every layout: the same K records carry
//! the same revisions.
//!
//! `ids` prints the external ids the step `K1 → K2` changes; `read` parses an
//! export without mapping it: through `read_export` with a callback that
//! does nothing, or with serde_json or the csv crate alone (see [`Reader`]).
//! It prints the seconds taken inside the process, reading the files
//! included; the in-memory readers hold a whole file (or page) at a time,
//! so their peak RSS includes it.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use referral_sync::export::{ExportFormat, ExportOptions, read_export};
use referral_sync::mapping::MappingSpec;
use referral_sync::model::Entity;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};

#[derive(Debug, Parser)]
#[command(
    name = "gen-export",
    version,
    about = "Synthetic Dynamics 365 opportunity exports, and parse-only reads of them"
)]
struct Flags {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write an export of N opportunities.
    Generate {
        #[command(flatten)]
        set: SetArgs,
        #[arg(long, value_enum)]
        format: Shape,
        /// A directory of pages (odata) or a file (odata-file, csv, jsonl).
        /// Replaced whole:
        /// the new export is written beside it and renamed into place.
        #[arg(long)]
        out: PathBuf,
        /// Records per OData page file.
        #[arg(long, default_value_t = 5_000)]
        page_size: u64,
        /// How many revisions to apply (see the module docs).
        #[arg(long, default_value_t = 0)]
        changed: u64,
    },
    /// Print the external ids whose records differ between `--changed FROM`
    /// and `--changed TO`, one per line.
    Ids {
        #[command(flatten)]
        set: SetArgs,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
    },
    /// Parse an export without mapping it; print one JSON line with the
    /// record count, the bytes and the seconds taken.
    Read {
        #[arg(long, value_enum)]
        with: Reader,
        /// A page file, a directory of page files, an OData file, a JSON
        /// Lines file or a CSV file.
        path: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct SetArgs {
    /// How many opportunities.
    #[arg(long)]
    records: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Shape {
    /// OData pages of `--page-size` records in a directory.
    Odata,
    /// One OData file `{"@odata.context":…,"value":[…]}` holding every
    /// record, one record per line.
    OdataFile,
    /// Excel-style CSV of a view.
    Csv,
    /// JSON Lines: one OData record object per line.
    Jsonl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Reader {
    /// `referral_sync::export::read_export` with a callback that drops
    /// each record: the daemon's reader, nothing after it.
    Export,
    /// serde_json alone, streaming each page's `value` elements into
    /// field maps (what any reader must hand out), no checks on top.
    SerdeJson,
    /// Each JSON file (page) read whole into memory and parsed with
    /// `serde_json::from_slice::<Value>`, the whole tree built and dropped;
    /// for JSON Lines, each line of the file in memory into a `Value`.
    ValueTree,
    /// Each JSON file (page) read whole into memory and checked with
    /// `serde_json::from_slice::<IgnoredAny>`, the records counted as the
    /// `value` array is walked; for JSON Lines, per line. Nothing is
    /// built: the validate-only floor of any JSON reader.
    IgnoredAny,
    /// Each JSON file (page) read whole into memory; the envelope parsed
    /// from the slice with the `value` array streamed element by element,
    /// each record into a field map `Map<String, Value>` that is dropped
    /// before the next is parsed (so only the file is held, not a Vec of
    /// maps); for JSON Lines, `from_slice` per line into a field map.
    #[value(alias = "serde-json-pages")]
    SerdeMaps,
    /// The csv crate alone, each row into a field map keyed by header.
    #[value(alias = "csv")]
    CsvMaps,
}

fn main() -> anyhow::Result<()> {
    match Flags::parse().command {
        Command::Generate {
            set,
            format,
            out,
            page_size,
            changed,
        } => {
            let export = Synthetic::new(set.records, set.seed)?;
            if page_size == 0 {
                bail!("--page-size must be at least 1");
            }
            let written = match format {
                Shape::Odata => replace_with(&out, |tmp| {
                    write_odata_pages(&export, changed, page_size, tmp)
                })?,
                Shape::OdataFile => {
                    replace_with(&out, |tmp| write_odata_file(&export, changed, tmp))?
                }
                Shape::Csv => replace_with(&out, |tmp| write_csv(&export, changed, tmp))?,
                Shape::Jsonl => replace_with(&out, |tmp| write_jsonl(&export, changed, tmp))?,
            };
            println!(
                "{}",
                json!({"records": set.records, "changed": changed, "bytes": written, "path": out})
            );
        }
        Command::Ids { set, from, to } => {
            if to < from || to - from > set.records {
                bail!("--to must be between --from and --from + --records");
            }
            let export = Synthetic::new(set.records, set.seed)?;
            let mut out = BufWriter::new(io::stdout().lock());
            for index in 0..set.records {
                if export.version(index, from) != export.version(index, to) {
                    writeln!(out, "{}", export.external_id(index))?;
                }
            }
            out.flush()?;
        }
        Command::Read { with, path } => {
            let started = Instant::now();
            let records = match with {
                Reader::Export => read_with_export(&path)?,
                Reader::SerdeJson => read_with_serde_json(&path)?,
                Reader::ValueTree => read_in_memory(&path, InMemory::ValueTree)?,
                Reader::IgnoredAny => read_in_memory(&path, InMemory::IgnoredAny)?,
                Reader::SerdeMaps => read_in_memory(&path, InMemory::FieldMaps)?,
                Reader::CsvMaps => read_with_csv(&path)?,
            };
            let seconds = started.elapsed().as_secs_f64();
            let bytes: u64 = export_files(&path)?
                .iter()
                .map(|file| fs::metadata(file).map(|m| m.len()).unwrap_or(0))
                .sum();
            println!(
                "{}",
                json!({"reader": format!("{with:?}"), "records": records, "bytes": bytes, "seconds": seconds})
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The synthetic records.

/// splitmix64: small, fast, and good enough to pick names and amounts.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bound > 0); the modulo bias is irrelevant here.
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// N records from one seed, and the permutation that decides the order in
/// which revisions reach them.
struct Synthetic {
    records: u64,
    seed: u64,
    /// `position(i) = (i * stride + offset) mod records`, a bijection
    /// because `stride` and `records` are coprime.
    stride: u64,
    offset: u64,
}

const COMPANIES: &[&str] = &[
    "Contoso",
    "Fabrikam",
    "Northwind Traders",
    "Tailspin Toys",
    "Wide World Importers",
    "Adventure Works",
    "Alpine Ski House",
    "Blue Yonder Airlines",
    "Coho Winery",
    "Datum Corporation",
    "Fourth Coffee",
    "Graphic Design Institute",
    "Humongous Insurance",
    "Litware",
    "Lucerne Publishing",
    "Margie's Travel",
    "Munson's Pickles and Preserves",
    "Nod Publishers",
    "Proseware",
    "Relecloud",
    "School of Fine Art",
    "Southridge Video",
    "Trey Research",
    "VanArsdel",
    "Woodgrove Bank",
    "Wingtip Toys",
    "First Up Consultants",
    "Consolidated Messenger",
];
const COMPANY_SUFFIXES: &[&str] = &["", " Inc", " Ltd", " GmbH", " Group", " & Co", " S.A."];
const PROJECTS: &[&str] = &[
    "supply chain on Dynamics 365",
    "data platform migration",
    "field service rollout",
    "security assessment",
    "Copilot pilot",
    "Azure landing zone",
    "SAP on Azure",
    "contact centre modernisation",
    "Power BI enterprise rollout",
    "Teams Phone migration",
    "zero-trust network refresh",
    "ERP consolidation",
    "AI document processing",
    "Windows 11 upgrade",
    "data warehouse modernisation",
    "customer portal rebuild",
];
const OWNERS: &[&str] = &[
    "Sue Smith",
    "Joe Hansen",
    "Ana Lima",
    "Kenji Watanabe",
    "Priya Raman",
    "Lars Nilsson",
    "Chloé Martin",
    "Óscar Núñez",
];
/// (ISO code, Dynamics currency name, symbol before, symbol after, decimals)
const CURRENCIES: &[(&str, &str, &str, &str, usize)] = &[
    ("USD", "US Dollar", "$", "", 2),
    ("USD", "US Dollar", "$", "", 2),
    ("USD", "US Dollar", "$", "", 2),
    ("EUR", "Euro", "€", "", 2),
    ("GBP", "Pound Sterling", "£", "", 2),
    ("JPY", "Japanese Yen", "¥", "", 0),
    ("CHF", "Swiss Franc", "CHF ", "", 2),
];
/// (city, state, postal code, country as Dynamics users type it)
const PLACES: &[(&str, &str, &str, &str)] = &[
    ("Redmond", "WA", "98052", "United States"),
    ("New York", "NY", "10001", "USA"),
    ("Austin", "TX", "73301", "United States"),
    ("Dublin", "", "D02 X285", "Ireland"),
    ("München", "BY", "80331", "Germany"),
    ("Paris", "", "75001", "France"),
    ("London", "", "EC1A 1BB", "United Kingdom"),
    ("São Paulo", "SP", "01310-100", "Brazil"),
    ("Bengaluru", "KA", "560001", "India"),
    ("Toronto", "ON", "M5H 2N2", "Canada"),
    ("Sydney", "NSW", "2000", "Australia"),
    ("Tokyo", "", "100-0001", "Japan"),
    ("Amsterdam", "", "1012 JS", "Netherlands"),
];
const STREETS: &[&str] = &[
    "Main Street",
    "Harbour Road",
    "Microsoft Way",
    "Avenida Paulista",
    "Leopoldstraße",
    "Rue de Rivoli",
    "King Street West",
    "George Street",
];
const WORDS: &[&str] = &[
    "customer",
    "budget",
    "approved",
    "pilot",
    "licences",
    "seats",
    "migration",
    "workload",
    "timeline",
    "procurement",
    "stakeholders",
    "security",
    "review",
    "follow-up",
    "demo",
    "workshop",
    "proposal",
    "renewal",
    "competitor",
    "pricing",
    "discount",
    "contract",
    "legal",
    "sign-off",
    "quarter",
    "regions",
    "integration",
    "requirements",
    "decision",
    "champion",
    "executive",
    "sponsor",
    "onboarding",
    "training",
    "support",
];
/// (statecode, state label, statuscode, status reason label, percent)
const STATUSES: &[(u64, &str, u64, &str, u64)] = &[
    (0, "Open", 1, "In Progress", 50),
    (0, "Open", 2, "On Hold", 10),
    (1, "Won", 3, "Won", 25),
    (2, "Lost", 4, "Canceled", 5),
    (2, "Lost", 5, "Out-Sold", 10),
];
const WON: usize = 2;
const OUT_SOLD: usize = 4;

const ODATA_CONTEXT: &str = "https://contoso.crm.dynamics.com/api/data/v9.2/$metadata#opportunities(opportunityid,name,estimatedvalue,estimatedclosedate,description,closeprobability,salesstage,statecode,statuscode,_customerid_value,_ownerid_value,createdon,modifiedon,versionnumber,transactioncurrencyid(isocurrencycode),customerid_account(name,address1_line1,address1_line2,address1_city,address1_stateorprovince,address1_postalcode,address1_country))";
const CSV_HEADERS: &[&str] = &[
    "(Do Not Modify) Opportunity",
    "(Do Not Modify) Modified On",
    "Topic",
    "Potential Customer",
    "Est. Revenue",
    "Currency",
    "Est. Close Date",
    "Probability",
    "Status",
    "Status Reason",
    "Description",
    "Owner",
];

/// One opportunity, as its fields will be written.
struct Opportunity {
    id: String,
    name: String,
    customer: String,
    customer_id: String,
    owner: &'static str,
    owner_id: String,
    currency: (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        usize,
    ),
    currency_id: String,
    value_cents: u64,
    close_date: chrono::NaiveDate,
    probability: u64,
    sales_stage: u64,
    status: usize,
    description: Option<String>,
    street: String,
    place: (&'static str, &'static str, &'static str, &'static str),
    created: chrono::NaiveDateTime,
    modified: chrono::NaiveDateTime,
    version_number: u64,
}

impl Synthetic {
    fn new(records: u64, seed: u64) -> anyhow::Result<Synthetic> {
        if records == 0 {
            bail!("--records must be at least 1");
        }
        let mut rng = Rng::new(seed ^ 0x005E_ED0F_C4A4_63E5);
        // Primes far from the sizes used; the first coprime one is taken.
        let stride = [1_000_003u64, 999_983, 7_368_787, 15_485_863]
            .into_iter()
            .map(|prime| prime % records)
            .find(|&stride| gcd(stride, records) == 1)
            .unwrap_or(1);
        Ok(Synthetic {
            records,
            seed,
            stride,
            offset: rng.below(records),
        })
    }

    fn position(&self, index: u64) -> u64 {
        ((u128::from(index) * u128::from(self.stride) + u128::from(self.offset))
            % u128::from(self.records)) as u64
    }

    /// How many revisions record `index` carries in the export `--changed K`.
    fn version(&self, index: u64, changed: u64) -> u64 {
        let position = self.position(index);
        if position >= changed {
            0
        } else {
            (changed - 1 - position) / self.records + 1
        }
    }

    fn rng(&self, index: u64) -> Rng {
        let mut rng = Rng::new(self.seed.wrapping_mul(0xA24B_AED4_963E_E407) ^ index);
        rng.next();
        rng
    }

    fn external_id(&self, index: u64) -> String {
        let mut rng = self.rng(index);
        guid(&mut rng, index)
    }

    fn opportunity(&self, index: u64, changed: u64) -> Opportunity {
        let mut rng = self.rng(index);
        let id = guid(&mut rng, index);
        let customer = format!("{}{}", rng.pick(COMPANIES), rng.pick(COMPANY_SUFFIXES));
        let name = format!("{} {}", customer, rng.pick(PROJECTS));
        let customer_id = guid(&mut rng, index);
        let owner_index = rng.below(OWNERS.len() as u64);
        let owner = OWNERS[owner_index as usize];
        let owner_id = format!("5a1d0e2f-2222-4000-8000-{:012x}", owner_index + 1);
        let currency = *rng.pick(CURRENCIES);
        let currency_id = format!("7c1e0a55-1111-4000-8000-{:012x}", iso_number(currency.0));
        // Whole hundreds mostly; some deals carry cents.
        let mut value_cents = (10 + rng.below(20_000)) * 10_000;
        if rng.chance(20) {
            value_cents += rng.below(10_000);
        }
        if currency.4 == 0 {
            value_cents -= value_cents % 100;
        }
        let epoch = chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap_or_default();
        let close_date = epoch + chrono::Days::new(rng.below(900));
        let probability = rng.below(101);
        let sales_stage = rng.below(4);
        let mut roll = rng.below(100);
        let mut status = 0;
        for (at, entry) in STATUSES.iter().enumerate() {
            if roll < entry.4 {
                status = at;
                break;
            }
            roll -= entry.4;
        }
        let description = (!rng.chance(8)).then(|| notes(&mut rng));
        let street = format!("{} {}", 1 + rng.below(400), rng.pick(STREETS));
        let place = *rng.pick(PLACES);
        let created = epoch.and_hms_opt(8, 0, 0).unwrap_or_default()
            - chrono::Duration::seconds(rng.below(3 * 365 * 86_400) as i64);
        let mut modified = created + chrono::Duration::seconds(rng.below(200 * 86_400) as i64);
        let mut version_number = 81_000_000 + index * 7 + rng.below(7);

        let mut opportunity = Opportunity {
            id,
            name,
            customer,
            customer_id,
            owner,
            owner_id,
            currency,
            currency_id,
            value_cents,
            close_date,
            probability,
            sales_stage,
            status,
            description,
            street,
            place,
            created,
            modified,
            version_number,
        };
        let version = self.version(index, changed);
        if version > 0 {
            opportunity.value_cents += version * 100_000;
            let update = format!(
                "Update {version}: {} {} {}, next step {}.",
                rng.pick(WORDS),
                rng.pick(WORDS),
                rng.pick(WORDS),
                rng.pick(WORDS)
            );
            opportunity.description = Some(match opportunity.description.take() {
                Some(text) => format!("{text}\n{update}"),
                None => update,
            });
            // Closed referrals may still move between Won and Lost; Open
            // ones may close. Never back to Open, which the service refuses.
            if index.is_multiple_of(3) {
                opportunity.status = if (version + index / 3) % 2 == 1 {
                    WON
                } else {
                    OUT_SOLD
                };
            }
            modified += chrono::Duration::days(version as i64);
            version_number += version * 1_000_000_000;
        }
        opportunity.modified = modified;
        opportunity.version_number = version_number;
        opportunity
    }
}

/// A stable number per ISO code, for the currency record's id.
fn iso_number(code: &str) -> u64 {
    code.bytes().fold(0, |n, byte| n * 256 + u64::from(byte))
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A GUID-shaped id whose last group is `unique`, so ids never collide.
fn guid(rng: &mut Rng, unique: u64) -> String {
    let (a, b) = (rng.next(), rng.next());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xFFFF,
        a & 0xFFF,
        0x8000 | (b & 0x3FFF),
        unique & 0xFFFF_FFFF_FFFF
    )
}

/// A note of a few sentences: most are short, some run to the 2,000
/// characters a Dynamics memo column allows; some span lines or quote.
fn notes(rng: &mut Rng) -> String {
    let target = match rng.below(10) {
        0..=5 => 40 + rng.below(260),
        6..=8 => 300 + rng.below(600),
        _ => 900 + rng.below(1_000),
    } as usize;
    let mut text = String::with_capacity(target + 80);
    while text.len() < target {
        let words = 5 + rng.below(10);
        let start = text.len();
        for n in 0..words {
            if n > 0 {
                text.push(' ');
            }
            let word = *rng.pick(WORDS);
            text.push_str(word);
        }
        if let Some(first) = text[start..].chars().next() {
            let upper = first.to_ascii_uppercase();
            text.replace_range(start..start + first.len_utf8(), &upper.to_string());
        }
        match rng.below(12) {
            0 => text.push_str(", \"as discussed\"."),
            1 => text.push_str(".\n"),
            _ => text.push_str(". "),
        }
    }
    text.truncate(text.trim_end().len());
    text
}

/// `$12,500.00`, `€20,000.00`, `¥1,200,000`, `CHF 1,200.50`.
fn money_label(cents: u64, currency: (&str, &str, &str, &str, usize)) -> String {
    let (_, _, before, after, decimals) = currency;
    let whole = cents / 100;
    let digits = whole.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (n, digit) in digits.chars().enumerate() {
        if n > 0 && (digits.len() - n).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let mut label = format!("{before}{grouped}");
    if decimals > 0 {
        let _ = write!(label, ".{:02}", cents % 100);
    }
    label.push_str(after);
    label
}

fn money_value(cents: u64) -> Value {
    Value::from(cents as f64 / 100.0)
}

impl Opportunity {
    fn odata(&self) -> Value {
        let (state, state_label, status, status_label, _) = STATUSES[self.status];
        let (city, region, postal_code, country) = self.place;
        let formatted = "@OData.Community.Display.V1.FormattedValue";
        let mut record = json!({
            "@odata.etag": format!("W/\"{}\"", self.version_number),
            "opportunityid": self.id,
            "name": self.name,
            "estimatedvalue": money_value(self.value_cents),
            format!("estimatedvalue{formatted}"): money_label(self.value_cents, self.currency),
            "estimatedclosedate": self.close_date.format("%Y-%m-%d").to_string(),
            format!("estimatedclosedate{formatted}"): self.close_date.format("%-m/%-d/%Y").to_string(),
            "description": self.description,
            "closeprobability": self.probability,
            "salesstage": self.sales_stage,
            "statecode": state,
            format!("statecode{formatted}"): state_label,
            "statuscode": status,
            format!("statuscode{formatted}"): status_label,
            "_customerid_value": self.customer_id,
            format!("_customerid_value{formatted}"): self.customer,
            "_customerid_value@Microsoft.Dynamics.CRM.lookuplogicalname": "account",
            "_ownerid_value": self.owner_id,
            format!("_ownerid_value{formatted}"): self.owner,
            "_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname": "systemuser",
            "_transactioncurrencyid_value": self.currency_id,
            format!("_transactioncurrencyid_value{formatted}"): self.currency.1,
            "transactioncurrencyid": {
                "@odata.etag": "W/\"1001\"",
                "isocurrencycode": self.currency.0,
                "transactioncurrencyid": self.currency_id,
            },
            "customerid_account": {
                "@odata.etag": format!("W/\"{}\"", self.version_number / 3),
                "accountid": self.customer_id,
                "name": self.customer,
                "address1_line1": self.street,
                "address1_line2": null,
                "address1_city": city,
                "address1_stateorprovince": if region.is_empty() { Value::Null } else { Value::from(region) },
                "address1_postalcode": postal_code,
                "address1_country": country,
            },
            "createdon": format!("{}Z", self.created.format("%Y-%m-%dT%H:%M:%S")),
            "modifiedon": format!("{}Z", self.modified.format("%Y-%m-%dT%H:%M:%S")),
            "versionnumber": self.version_number,
        });
        if self.version_number.is_multiple_of(5)
            && let Some(account) = record.get_mut("customerid_account")
        {
            account["address1_line2"] = Value::from(format!("Suite {}", self.version_number % 900));
        }
        record
    }

    fn csv_row(&self) -> [String; 12] {
        let (_, state_label, _, status_label, _) = STATUSES[self.status];
        [
            self.id.clone(),
            self.modified.format("%-m/%-d/%Y %-I:%M %p").to_string(),
            self.name.clone(),
            self.customer.clone(),
            money_label(self.value_cents, self.currency),
            self.currency.1.to_owned(),
            self.close_date.format("%-m/%-d/%Y").to_string(),
            self.probability.to_string(),
            state_label.to_owned(),
            status_label.to_owned(),
            self.description.clone().unwrap_or_default(),
            self.owner.to_owned(),
        ]
    }
}

// ---------------------------------------------------------------------------
// Writing.

/// Write the new export at a temporary path beside `out`, then put it in
/// place of the old one, so a reader never sees half of it.
fn replace_with(
    out: &Path,
    write: impl FnOnce(&Path) -> anyhow::Result<u64>,
) -> anyhow::Result<u64> {
    let name = out
        .file_name()
        .with_context(|| format!("{}: not a file or directory name", out.display()))?;
    let mut tmp_name = name.to_owned();
    tmp_name.push(".generating");
    let tmp = out.with_file_name(tmp_name);
    remove_any(&tmp)?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    let written = write(&tmp)?;
    remove_any(out)?;
    fs::rename(&tmp, out)
        .with_context(|| format!("rename {} to {}", tmp.display(), out.display()))?;
    Ok(written)
}

fn remove_any(path: &Path) -> anyhow::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.with_context(|| format!("remove {}", path.display()))
}

/// Counts what goes through, for the summary line.
struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn create(path: &Path) -> anyhow::Result<Counted<BufWriter<File>>> {
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    Ok(Counted {
        inner: BufWriter::with_capacity(256 * 1024, file),
        bytes: 0,
    })
}

/// Flush and sync a written file. Without the sync the kernel writes a
/// gigabyte-sized export back while the next benchmark step runs, and that
/// step pays for it.
fn finish(mut out: Counted<BufWriter<File>>, path: &Path) -> anyhow::Result<u64> {
    out.flush()?;
    out.inner
        .get_ref()
        .sync_all()
        .with_context(|| format!("sync {}", path.display()))?;
    Ok(out.bytes)
}

/// Pages of `page_size` records, one record per line, with the
/// `@odata.nextLink` Dataverse puts on every page but the last.
fn write_odata_pages(
    export: &Synthetic,
    changed: u64,
    page_size: u64,
    dir: &Path,
) -> anyhow::Result<u64> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let pages = export.records.div_ceil(page_size);
    let width = pages.to_string().len().max(3);
    let mut bytes = 0;
    for page in 0..pages {
        let path = dir.join(format!("opportunities-page-{:0width$}.json", page + 1));
        let mut out = create(&path)?;
        write!(
            out,
            "{{\"@odata.context\":{},\"value\":[",
            json!(ODATA_CONTEXT)
        )?;
        let first = page * page_size;
        let last = (first + page_size).min(export.records);
        for index in first..last {
            out.write_all(if index == first { b"\n" } else { b",\n" })?;
            serde_json::to_writer(&mut out, &export.opportunity(index, changed).odata())?;
        }
        out.write_all(b"\n]")?;
        if page + 1 < pages {
            write!(
                out,
                ",\"@odata.nextLink\":\"https://contoso.crm.dynamics.com/api/data/v9.2/opportunities?$skiptoken=%3Ccookie%20pagenumber=%22{}%22%20/%3E\"",
                page + 2
            )?;
        }
        out.write_all(b"}\n")?;
        bytes += finish(out, &path)?;
    }
    Ok(bytes)
}

/// One OData file holding every record, one record per line, without a
/// `@odata.nextLink`: what a Dataverse export job writes.
fn write_odata_file(export: &Synthetic, changed: u64, path: &Path) -> anyhow::Result<u64> {
    let mut out = create(path)?;
    write!(
        out,
        "{{\"@odata.context\":{},\"value\":[",
        json!(ODATA_CONTEXT)
    )?;
    for index in 0..export.records {
        out.write_all(if index == 0 { b"\n" } else { b",\n" })?;
        serde_json::to_writer(&mut out, &export.opportunity(index, changed).odata())?;
    }
    out.write_all(b"\n]}\n")?;
    finish(out, path)
}

/// JSON Lines: each OData record object on its own line, nothing around.
fn write_jsonl(export: &Synthetic, changed: u64, path: &Path) -> anyhow::Result<u64> {
    let mut out = create(path)?;
    for index in 0..export.records {
        serde_json::to_writer(&mut out, &export.opportunity(index, changed).odata())?;
        out.write_all(b"\n")?;
    }
    finish(out, path)
}

/// An Excel-style CSV of a view: UTF-8 with a BOM, display-name headers,
/// formatted labels; notes with commas, quotes and line breaks are quoted.
fn write_csv(export: &Synthetic, changed: u64, path: &Path) -> anyhow::Result<u64> {
    let mut out = create(path)?;
    out.write_all(b"\xEF\xBB\xBF")?;
    {
        let mut writer = csv::Writer::from_writer(&mut out);
        writer.write_record(CSV_HEADERS)?;
        for index in 0..export.records {
            writer.write_record(export.opportunity(index, changed).csv_row())?;
        }
        writer.flush()?;
    }
    finish(out, path)
}

// ---------------------------------------------------------------------------
// Parse-only reads.

fn read_with_export(path: &Path) -> anyhow::Result<u64> {
    let options = ExportOptions {
        path: path.to_path_buf(),
        format: ExportFormat::Auto,
        entity: Entity::Opportunity,
        header_aliases: MappingSpec::default_for(Entity::Opportunity).headers,
        checks: Default::default(),
    };
    let summary = read_export(&options, &mut |record| {
        std::hint::black_box(record);
        ControlFlow::Continue(())
    })?;
    Ok(summary.records)
}

/// The files of an export in name order (page numbers are zero-padded by
/// `generate`, so name order is page order).
fn export_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path).with_context(|| format!("read {}", path.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() && !entry.file_name().to_string_lossy().starts_with('.') {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

fn read_with_serde_json(path: &Path) -> anyhow::Result<u64> {
    let mut records = 0;
    for file in export_files(path)? {
        let input = BufReader::with_capacity(
            64 * 1024,
            File::open(&file).with_context(|| format!("open {}", file.display()))?,
        );
        let mut deserializer = serde_json::Deserializer::from_reader(input);
        records += Page::<Map<String, Value>>::new()
            .deserialize(&mut deserializer)
            .and_then(|count| deserializer.end().map(|()| count))
            .with_context(|| format!("parse {}", file.display()))?;
    }
    Ok(records)
}

/// What the in-memory readers build of each record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InMemory {
    ValueTree,
    IgnoredAny,
    FieldMaps,
}

/// Read each file of the export whole into memory and parse it from the
/// slice: as OData (an object with a `value` array) or, for a `.jsonl` or
/// `.ndjson` file, line by line.
fn read_in_memory(path: &Path, build: InMemory) -> anyhow::Result<u64> {
    let mut records = 0;
    for file in export_files(path)? {
        let bytes = fs::read(&file).with_context(|| format!("read {}", file.display()))?;
        let jsonl = file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("ndjson"));
        records += if jsonl {
            parse_lines(&bytes, build)
        } else {
            parse_odata_slice(&bytes, build)
        }
        .with_context(|| format!("parse {}", file.display()))?;
    }
    Ok(records)
}

fn parse_odata_slice(bytes: &[u8], build: InMemory) -> anyhow::Result<u64> {
    Ok(match build {
        InMemory::ValueTree => {
            let tree: Value = serde_json::from_slice(bytes)?;
            let records = tree
                .get("value")
                .and_then(Value::as_array)
                .map_or(0, |records| records.len() as u64);
            drop(std::hint::black_box(tree));
            records
        }
        InMemory::IgnoredAny => parse_page::<IgnoredAny>(bytes)?,
        InMemory::FieldMaps => parse_page::<Map<String, Value>>(bytes)?,
    })
}

/// The whole page from the slice, each element of `value` as `T`.
fn parse_page<T: de::DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<u64> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let records = Page::<T>::new().deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(records)
}

fn parse_lines(bytes: &[u8], build: InMemory) -> anyhow::Result<u64> {
    let mut records = 0;
    let mut start = 0;
    let mut number = 0;
    while start < bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |at| start + at);
        let line = &bytes[start..end];
        start = end + 1;
        number += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match build {
            InMemory::ValueTree => {
                std::hint::black_box(serde_json::from_slice::<Value>(line))
                    .with_context(|| format!("line {number}"))?;
            }
            InMemory::IgnoredAny => {
                serde_json::from_slice::<IgnoredAny>(line)
                    .with_context(|| format!("line {number}"))?;
            }
            InMemory::FieldMaps => {
                std::hint::black_box(serde_json::from_slice::<Map<String, Value>>(line))
                    .with_context(|| format!("line {number}"))?;
            }
        }
        records += 1;
    }
    Ok(records)
}

/// `{"value": [record, ...], ...}`: each record parsed as `T` (a field
/// map, or `IgnoredAny`), counted and dropped before the next.
struct Page<T>(std::marker::PhantomData<T>);

impl<T> Page<T> {
    fn new() -> Page<T> {
        Page(std::marker::PhantomData)
    }
}

impl<'de, T: de::Deserialize<'de>> DeserializeSeed<'de> for Page<T> {
    type Value = u64;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, T: de::Deserialize<'de>> Visitor<'de> for Page<T> {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an OData page")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let mut records = 0;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "value" {
                records += map.next_value_seed(Records::<T>(std::marker::PhantomData))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(records)
    }
}

struct Records<T>(std::marker::PhantomData<T>);

impl<'de, T: de::Deserialize<'de>> DeserializeSeed<'de> for Records<T> {
    type Value = u64;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, T: de::Deserialize<'de>> Visitor<'de> for Records<T> {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut records = 0;
        while let Some(record) = seq.next_element::<T>()? {
            std::hint::black_box(record);
            records += 1;
        }
        Ok(records)
    }
}

fn read_with_csv(path: &Path) -> anyhow::Result<u64> {
    let mut records = 0;
    for file in export_files(path)? {
        let mut input = BufReader::with_capacity(
            64 * 1024,
            File::open(&file).with_context(|| format!("open {}", file.display()))?,
        );
        // Skip a BOM, as Excel writes one.
        if input.fill_buf()?.starts_with(b"\xEF\xBB\xBF") {
            input.consume(3);
        }
        let mut reader = csv::Reader::from_reader(input);
        let headers = reader.headers()?.clone();
        let mut row = csv::StringRecord::new();
        while reader
            .read_record(&mut row)
            .with_context(|| format!("parse {}", file.display()))?
        {
            let fields: Map<String, Value> = headers
                .iter()
                .zip(row.iter())
                .map(|(header, cell)| {
                    let value = if cell.is_empty() {
                        Value::Null
                    } else {
                        Value::String(cell.to_owned())
                    };
                    (header.to_owned(), value)
                })
                .collect();
            std::hint::black_box(fields);
            records += 1;
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_changes_exactly_the_records_it_adds() {
        for records in [1u64, 7, 10, 500] {
            let export = Synthetic::new(records, 3).unwrap();
            let mut steps = [0, 1, records / 2, records, records + 3, 2 * records + 1];
            steps.sort_unstable();
            // The promise holds for steps of at most `records` revisions.
            for window in steps.windows(2).filter(|w| w[1] - w[0] <= records) {
                let (from, to) = (window[0], window[1]);
                let differ = (0..records)
                    .filter(|&i| export.version(i, from) != export.version(i, to))
                    .count() as u64;
                assert_eq!(differ, to - from, "records {records}, {from} → {to}");
            }
        }
    }

    #[test]
    fn a_changed_record_differs_in_value_notes_and_sometimes_status() {
        let export = Synthetic::new(100, 9).unwrap();
        let changed: Vec<u64> = (0..100).filter(|&i| export.version(i, 10) == 1).collect();
        assert_eq!(changed.len(), 10);
        for index in changed {
            let before = export.opportunity(index, 0).odata();
            let after = export.opportunity(index, 10).odata();
            assert_eq!(before["opportunityid"], after["opportunityid"]);
            assert_ne!(before["estimatedvalue"], after["estimatedvalue"]);
            assert_ne!(before["description"], after["description"]);
            if index.is_multiple_of(3) {
                assert_eq!(after["statecode"].as_u64().map(|s| s > 0), Some(true));
            }
        }
    }

    /// The four layouts hold the same records, and every in-memory reader
    /// counts them all.
    #[test]
    fn every_layout_holds_the_same_records() {
        let dir = tempfile::tempdir().unwrap();
        let export = Synthetic::new(23, 5).unwrap();
        let pages = dir.path().join("pages");
        let file = dir.path().join("export.json");
        let lines = dir.path().join("export.jsonl");
        let csv = dir.path().join("export.csv");
        write_odata_pages(&export, 4, 10, &pages).unwrap();
        write_odata_file(&export, 4, &file).unwrap();
        write_jsonl(&export, 4, &lines).unwrap();
        write_csv(&export, 4, &csv).unwrap();

        let mut from_pages = Vec::new();
        for page in export_files(&pages).unwrap() {
            let page: Value = serde_json::from_slice(&fs::read(page).unwrap()).unwrap();
            from_pages.extend(page["value"].as_array().unwrap().iter().cloned());
        }
        let whole: Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
        assert_eq!(whole["@odata.context"], ODATA_CONTEXT);
        assert_eq!(whole["value"].as_array().unwrap(), &from_pages);
        let text = fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), 23 + 2, "one record per line");
        let from_lines: Vec<Value> = fs::read_to_string(&lines)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(from_lines, from_pages);
        assert_eq!(from_pages[0], export.opportunity(0, 4).odata());

        for path in [&pages, &file, &lines] {
            for build in [
                InMemory::ValueTree,
                InMemory::IgnoredAny,
                InMemory::FieldMaps,
            ] {
                assert_eq!(
                    read_in_memory(path, build).unwrap(),
                    23,
                    "{path:?} {build:?}"
                );
            }
        }
        assert_eq!(read_with_serde_json(&pages).unwrap(), 23);
        assert_eq!(read_with_csv(&csv).unwrap(), 23);
        assert_eq!(read_with_export(&file).unwrap(), 23);
        assert_eq!(read_with_export(&lines).unwrap(), 23);
    }

    #[test]
    fn in_memory_readers_reject_damaged_json() {
        let bad = br#"{"value":[{"a":1},{"a":}]}"#;
        for build in [
            InMemory::ValueTree,
            InMemory::IgnoredAny,
            InMemory::FieldMaps,
        ] {
            assert!(parse_odata_slice(bad, build).is_err(), "{build:?}");
            assert!(
                parse_lines(b"{\"a\":1}\n{\"a\":\n", build).is_err(),
                "{build:?}"
            );
        }
        assert_eq!(
            parse_lines(b"{\"a\":1}\n\n{\"b\":2}", InMemory::FieldMaps).unwrap(),
            2
        );
    }

    #[test]
    fn money_labels_group_thousands() {
        let usd = CURRENCIES[0];
        let jpy = CURRENCIES[5];
        assert_eq!(money_label(1_250_000, usd), "$12,500.00");
        assert_eq!(money_label(99, usd), "$0.99");
        assert_eq!(money_label(120_000_000, jpy), "¥1,200,000");
    }

    #[test]
    fn ids_are_unique_and_stable() {
        let export = Synthetic::new(1000, 1).unwrap();
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|i| export.external_id(i)).collect();
        assert_eq!(ids.len(), 1000);
        assert_eq!(export.external_id(5), export.opportunity(5, 0).id);
    }
}
