//! The model checker: seeded random histories of CRM edits, seller edits
//! in Partner Center, faults and crashes, run against the emulator, each
//! followed by a quiet cycle and the invariants of the sync model
//! (RELIABILITY.md, "Model checker"):
//!
//! 1. every owned path holds the CRM's last value, unless a seller changed
//!    it after that value had landed (`crm-wins` when both changed between
//!    two syncs); a status the transition table forbids is not forced;
//! 2. every member and team element set only in Partner Center survives;
//! 3. one referral per `externalReferenceId`;
//! 4. no request refused as invalid (400);
//! 5. the store passes `PRAGMA integrity_check`;
//! 6. a second quiet cycle sends nothing;
//! 7. every record is settled (`synced`, or `invalid` for a refused
//!    status) after the quiet cycle.
//!
//! `REFERRAL_SYNC_MODEL_SEED` (first seed) and
//! `REFERRAL_SYNC_MODEL_HISTORIES` (how many) override the defaults; a
//! failure prints each failing seed with its steps, and
//! `REFERRAL_SYNC_MODEL_SEED=<seed> REFERRAL_SYNC_MODEL_HISTORIES=1`
//! replays it. `scripts/model-soak.sh` runs a long soak.

#[path = "model_check/crm.rs"]
mod crm;
#[path = "model_check/history.rs"]
mod history;
#[path = "model_check/model.rs"]
mod model;
#[path = "model_check/rng.rs"]
mod rng;
#[path = "model_check/seller.rs"]
mod seller;
#[path = "model_check/sim.rs"]
mod sim;
#[path = "model_check/situations.rs"]
mod situations;

use std::time::Instant;

use futures_util::StreamExt;

use history::History;
use sim::{Runner, Sim};

/// What a `cargo test` run does without the environment variables.
const DEFAULT_SEED: u64 = 1;
const DEFAULT_HISTORIES: u64 = 1000;
const MAX_RECORDS: usize = 3;
const MAX_STEPS: usize = 10;
/// Histories run at once (each has its own emulator and store).
const PARALLEL: usize = 6;
/// Failing histories printed in full.
const PRINTED: usize = 5;

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    match text.trim().parse() {
        Ok(n) => Some(n),
        Err(e) => panic!("{name}={text:?}: {e}"),
    }
}

struct Failure {
    history: History,
    outcome: Result<sim::Report, String>,
}

impl Failure {
    fn label(&self) -> String {
        match self.history.name {
            Some(name) => format!("\"{name}\""),
            None => format!("seed {}", self.history.seed),
        }
    }

    fn summary(&self) -> String {
        match &self.outcome {
            Ok(report) => format!(
                "{}: {} violation(s), first: {}",
                self.label(),
                report.violations.len(),
                report.violations[0]
            ),
            Err(e) => format!("{}: the harness failed: {e}", self.label()),
        }
    }

    fn details(&self) -> String {
        let mut text = format!("{}\n", self.history);
        match &self.outcome {
            Ok(report) => {
                text.push_str("what happened:\n");
                for line in &report.log {
                    text.push_str(&format!("  {line}\n"));
                }
                text.push_str("violations:\n");
                for v in &report.violations {
                    text.push_str(&format!("  {v}\n"));
                }
            }
            Err(e) => text.push_str(&format!("harness error: {e}\n")),
        }
        match self.history.name {
            Some(_) => text.push_str("replay: cargo test --test model_check issue_10_situations\n"),
            None => text.push_str(&format!(
                "replay: REFERRAL_SYNC_MODEL_SEED={} REFERRAL_SYNC_MODEL_HISTORIES=1 cargo test --test model_check model_histories\n",
                self.history.seed
            )),
        }
        text
    }
}

/// Every kind of violation (invariant and path, emails left out) with
/// the histories that showed it.
fn by_kind(failures: &[Failure]) -> String {
    let mut kinds: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for f in failures {
        let Ok(report) = &f.outcome else {
            kinds
                .entry("harness error".into())
                .or_default()
                .push(f.history.seed);
            continue;
        };
        let mut seen = std::collections::BTreeSet::new();
        for v in &report.violations {
            let path = match v.path.find("[email=") {
                Some(start) => match v.path[start..].find(']') {
                    Some(end) => format!(
                        "{}[email=…]{}",
                        &v.path[..start],
                        &v.path[start + end + 1..]
                    ),
                    None => v.path.clone(),
                },
                None => v.path.clone(),
            };
            let path = if v.invariant == model::QUIET || v.invariant == model::NO_INVALID_REQUEST {
                path.split(' ').next().unwrap_or("").to_owned()
            } else {
                path
            };
            let kind = format!("[{}] {path}", v.invariant);
            if seen.insert(kind.clone()) {
                kinds.entry(kind).or_default().push(f.history.seed);
            }
        }
    }
    let mut text = String::new();
    for (kind, seeds) in kinds {
        let first: Vec<String> = seeds.iter().take(8).map(u64::to_string).collect();
        text.push_str(&format!(
            "  {kind}: {} ({})\n",
            seeds.len(),
            first.join(", ")
        ));
    }
    text
}

/// Run `count` histories from `first` with `runner`; panic with every
/// failing seed if any fails.
fn check_histories(first: u64, count: u64, runner: Runner, parallel: usize) {
    let histories =
        (first..first + count).map(|seed| history::generate(seed, MAX_RECORDS, MAX_STEPS));
    check(
        histories,
        &format!("{count} histories from seed {first}"),
        runner,
        parallel,
    );
}

/// Run `histories` with `runner`; panic naming every failing one.
fn check(
    histories: impl Iterator<Item = History> + Send + 'static,
    what: &str,
    runner: Runner,
    parallel: usize,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let tally = std::sync::Mutex::new(sim::Tally::default());
    // REFERRAL_SYNC_MODEL_SHOW=1: every history in full, passing or not.
    let show = std::env::var_os("REFERRAL_SYNC_MODEL_SHOW").is_some();
    let failures: Vec<Failure> = runtime.block_on(async {
        futures_util::stream::iter(histories)
            .map(|history| {
                tokio::spawn(async move {
                    let outcome = match Sim::start(history.clone(), runner).await {
                        Ok(sim) => sim.run().await,
                        Err(e) => Err(e),
                    };
                    Failure { history, outcome }
                })
            })
            .buffer_unordered(parallel)
            .filter_map(|joined| async {
                let failure = match joined {
                    Ok(failure) => failure,
                    Err(e) => panic!("a history panicked: {e}"),
                };
                if let (Ok(report), Ok(mut total)) = (&failure.outcome, tally.lock()) {
                    total.add(&report.tally);
                }
                if show {
                    eprintln!("{}", failure.details());
                }
                match &failure.outcome {
                    Ok(report) if report.violations.is_empty() => None,
                    _ => Some(failure),
                }
            })
            .collect()
            .await
    });
    let elapsed = started.elapsed();
    eprintln!(
        "model check ({runner:?}): {what} in {:.1} s, {} failed",
        elapsed.as_secs_f64(),
        failures.len()
    );
    if let Ok(total) = tally.lock() {
        eprintln!("  {total}");
    }
    if failures.is_empty() {
        return;
    }
    let mut failures = failures;
    failures.sort_by_key(|f| f.history.seed);
    // Every failure in full, for reading after a long run.
    let all: String = failures.iter().map(|f| f.details() + "\n").collect();
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "model-check-{runner:?}-{}.txt",
        what.replace(' ', "-")
    ));
    let written = std::fs::write(&file, all).is_ok();
    let mut message = String::new();
    if written {
        message.push_str(&format!(
            "every failing history in full: {}\n\n",
            file.display()
        ));
    }
    for f in failures.iter().take(PRINTED) {
        message.push_str(&f.details());
        message.push('\n');
    }
    message.push_str(&format!(
        "violations by kind (histories, first seeds):\n{}",
        by_kind(&failures)
    ));
    message.push_str(&format!("{} of {what} failed:\n", failures.len()));
    for f in &failures {
        message.push_str(&format!("  {}\n", f.summary()));
    }
    panic!("{message}");
}

/// At least a thousand histories in process, about a minute in a debug
/// build on two cores.
#[test]
fn model_histories() {
    let first = env_u64("REFERRAL_SYNC_MODEL_SEED").unwrap_or(DEFAULT_SEED);
    let count = env_u64("REFERRAL_SYNC_MODEL_HISTORIES").unwrap_or(DEFAULT_HISTORIES);
    check_histories(first, count, Runner::InProcess, PARALLEL);
}

/// A few histories run by the real `referral-sync sync`, killed with
/// SIGKILL at random moments instead of dropped futures.
#[test]
fn model_histories_with_real_kills() {
    let first = env_u64("REFERRAL_SYNC_MODEL_SEED").unwrap_or(DEFAULT_SEED);
    let count = env_u64("REFERRAL_SYNC_MODEL_BINARY_HISTORIES").unwrap_or(20);
    check_histories(first, count, Runner::Binary, 2);
}

#[test]
fn a_history_replays_from_its_seed() {
    let a = history::generate(424242, MAX_RECORDS, MAX_STEPS);
    let b = history::generate(424242, MAX_RECORDS, MAX_STEPS);
    assert_eq!(a, b);
    assert_eq!(a.to_string(), b.to_string());
    assert_ne!(a, history::generate(424243, MAX_RECORDS, MAX_STEPS));
}

/// Issue 10's situations 1–4, written by hand as histories and checked by
/// the same invariants: each one fails while its bug is there.
#[test]
fn issue_10_situations() {
    check(
        situations::all().into_iter(),
        "the issue 10 situations",
        Runner::InProcess,
        4,
    );
}

/// Histories long soaks found failing, kept so that they stay fixed: each
/// seed with what broke.
///
/// - 134100, 158637: a cycle killed after its PATCH was applied, then a
///   seller edits one member the PATCH set and the CRM clears another; the
///   write settled as not applied made the CRM's clear look like a
///   conflict with a seller's value, so it never landed. Fixed by settling
///   such a write slot by slot.
/// - 157921: the CRM moves a lead from Lost to Qualified and back to Lost
///   between two cycles while a seller closes it as Declined. No export
///   showed the change, so the seller's value stands; the oracle took the
///   two edits for a CRM change and expected Lost. Fixed in the oracle.
#[test]
fn histories_soaks_found() {
    const FOUND: [u64; 3] = [134100, 158637, 157921];
    check(
        FOUND
            .into_iter()
            .map(|seed| history::generate(seed, MAX_RECORDS, MAX_STEPS)),
        "the histories soaks found",
        Runner::InProcess,
        2,
    );
}
