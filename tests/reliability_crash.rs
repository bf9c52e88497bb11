//! Crash safety: `referral-sync sync` killed with SIGKILL at a random
//! moment of a cycle — while it reads, while requests are in flight, after
//! the service applied a write it has not yet acknowledged — then started
//! again. After every restart the store is sound, every referral holds the
//! export's desired document on every managed path, and nothing was applied
//! twice: one referral per record, no team member twice.
//!
//! Three ways of running are killed: `referral-sync sync`, restarted as
//! `sync`; the daemon (`referral-sync run`) in its startup cycle; and the
//! daemon in the middle of a resync asked for with SIGHUP once its startup
//! cycle is done. Both daemons are restarted as a daemon whose startup cycle
//! must converge. The normal run does a few trials of each;
//! `scripts/crash-trials.sh` runs the ignored `crash_trials_many` for a
//! hundred (`CRASH_TRIALS`, `CRASH_SEED`), a third of them in each way.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// Requests take this long at the emulator, so that a cycle lasts long
/// enough to be killed in the middle.
const LATENCY_MS: &str = "15";
/// How long the service holds back the answer to a write it applied, when
/// a trial asks for it: a kill then leaves an applied write unacknowledged.
const HELD_ANSWER_MS: u64 = 60;

/// xorshift64*: deterministic, so a failing trial replays from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What one kill hit, for the summary of a run of trials.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    /// The process was still running when killed.
    killed_running: u32,
    /// The kill cut a cycle off: the store shows it unfinished.
    killed_mid_cycle: u32,
    /// Of those, resync cycles.
    killed_mid_resync: u32,
    /// It had already finished.
    finished_first: u32,
    /// Records left `pending` by the kill: a write whose outcome the store
    /// did not know.
    pending_left: u32,
    /// Of those, the ones whose write the service had in fact applied.
    applied_unacknowledged: u32,
}

/// What is killed and restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `sync`, in its one cycle.
    Sync,
    /// The daemon, in its startup cycle.
    Daemon,
    /// The daemon, in a resync asked for with SIGHUP after its startup
    /// cycle went over the export as it was before the phase's change.
    Resync,
}

struct Trial {
    mode: Mode,
    seed: u64,
    rng: Rng,
    emulator: Emulator,
    ws: Workspace,
    records: Vec<Value>,
    /// The export as the last phase left it, converged.
    converged_export: String,
    tally: Tally,
}

impl Trial {
    fn new(mode: Mode, seed: u64) -> Trial {
        let emulator = Emulator::start(&json!([]), &["--latency-ms", LATENCY_MS]);
        // The daemon's schedule never fires here: only its startup cycle
        // runs, so that each restart is one cycle, as with `sync`.
        let ws = Workspace::new(
            &emulator,
            "lead",
            "export.jsonl",
            &format!(
                "[sync]\ncreate_missing = true\ncreate_confirm_secs = 0\n\n[schedule]\ncron = \"0 0 0 1 1 *\"\n\n[daemon]\nshutdown_grace_secs = 5\n{SECOND_MEMBER_MAPPING}"
            ),
        );
        Trial {
            mode,
            seed,
            rng: Rng::new(seed),
            emulator,
            ws,
            records: Vec::new(),
            converged_export: String::new(),
            tally: Tally::default(),
        }
    }

    fn context(&self, phase: &str) -> String {
        format!("crash trial seed {} ({:?}, {phase})", self.seed, self.mode)
    }

    /// Maybe make the service hold back its answers to writes.
    fn maybe_hold_answers(&mut self) {
        self.emulator.clear_faults();
        if self.rng.below(2) == 0 {
            self.emulator.add_faults(json!([
                {"method": "POST", "times": 0, "kind": "delay_after", "ms": HELD_ANSWER_MS},
                {"method": "PATCH", "times": 0, "kind": "delay_after", "ms": HELD_ANSWER_MS},
            ]));
        }
    }

    /// Start a cycle, kill it with SIGKILL after a random delay, then
    /// restart it once and check that it converged.
    fn kill_and_recover(&mut self, phase: &str) {
        self.maybe_hold_answers();
        let delay = Duration::from_millis(self.rng.below(250));
        let mut spawned = match self.mode {
            Mode::Sync => self.ws.spawn(&["sync"], phase),
            Mode::Daemon => self.ws.spawn(&["run"], phase),
            Mode::Resync => self.resync_in_a_running_daemon(phase),
        };
        let started = Instant::now();
        while started.elapsed() < delay {
            if spawned.child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        match spawned.child.try_wait().unwrap() {
            Some(_) => self.tally.finished_first += 1,
            None => {
                // Child::kill sends SIGKILL: no destructor, no flush.
                spawned.child.kill().unwrap();
                spawned.child.wait().unwrap();
                self.tally.killed_running += 1;
            }
        }
        let cut_off = &self.ws.status()["cycles"][0];
        if cut_off["outcome"].is_null() {
            self.tally.killed_mid_cycle += 1;
            if cut_off["trigger"]
                .as_str()
                .is_some_and(|t| t != "startup" && t != "manual")
            {
                self.tally.killed_mid_resync += 1;
            }
        }
        let pending: Vec<String> = self
            .ws
            .all_stored()
            .into_iter()
            .filter(|(_, row)| row.state == "pending")
            .map(|(id, _)| id)
            .collect();
        self.tally.pending_left += pending.len() as u32;
        let desired = self.ws.desired();
        let live = self.emulator.referrals_by_external_id();
        self.tally.applied_unacknowledged += pending
            .iter()
            .filter(|id| {
                live.get(*id)
                    .and_then(|r| r.first())
                    .is_some_and(|referral| {
                        mapped_differences(referral, &desired.documents[*id], &desired.managed)
                            .is_empty()
                    })
            })
            .count() as u32;

        // The service keeps behaving as it did; the restart must cope.
        let context = format!("{}, killed after {delay:?}", self.context(phase));
        match self.mode {
            Mode::Sync => {
                let run = self.ws.run(&["sync"]);
                assert_eq!(
                    run.code(),
                    0,
                    "{context}: the restarted cycle did not converge\n--- stdout\n{}\n--- stderr\n{}\n--- killed run's stderr\n{}",
                    run.stdout(),
                    run.stderr(),
                    spawned.stderr()
                );
            }
            Mode::Daemon | Mode::Resync => self.restart_daemon(&context, phase),
        }
        self.check(&context);
        self.converged_export = jsonl(&self.records);
    }

    /// Start the daemon over the export the last phase converged, wait for
    /// its startup cycle, then put the phase's export in place and ask for a
    /// resync with SIGHUP: the daemon is then busy with the phase's changes
    /// in a resync cycle, where the caller kills it.
    fn resync_in_a_running_daemon(&self, phase: &str) -> Spawned {
        self.ws.write_export(&self.converged_export);
        let before = self.ws.status()["cycles"][0]["cycle_id"].clone();
        let mut daemon = self.ws.spawn(&["run"], phase);
        let context = self.context(phase);
        let mut startup = Value::Null;
        wait_until(
            Duration::from_secs(60),
            "the daemon's startup cycle over the converged export",
            || {
                let status = self.ws.status();
                let latest = &status["cycles"][0];
                if latest["cycle_id"] != before && !latest["outcome"].is_null() {
                    startup = latest.clone();
                    return true;
                }
                daemon.child.try_wait().ok().flatten().is_some()
            },
        );
        assert!(
            daemon.child.try_wait().unwrap().is_none(),
            "{context}: the daemon ended before the resync\n{}",
            daemon.stderr()
        );
        assert_eq!(
            (&startup["trigger"], &startup["outcome"]),
            (&json!("startup"), &json!("ok")),
            "{context}: the startup cycle over the converged export\n{}",
            daemon.stderr()
        );
        self.write_export();
        std::process::Command::new("kill")
            .args(["-HUP", &daemon.child.id().to_string()])
            .status()
            .unwrap();
        daemon
    }

    /// Start the daemon again, wait for its startup cycle to end, stop it
    /// with SIGTERM; the cycle must have ended `ok`.
    fn restart_daemon(&self, context: &str, phase: &str) {
        let before = self.ws.status()["cycles"][0]["cycle_id"].clone();
        let mut daemon = self.ws.spawn(&["run"], &format!("{phase}-restart"));
        let mut cycle = Value::Null;
        wait_until(
            Duration::from_secs(60),
            "the restarted daemon's startup cycle",
            || {
                let status = self.ws.status();
                let latest = &status["cycles"][0];
                if latest["cycle_id"] != before
                    && latest["trigger"] == "startup"
                    && !latest["outcome"].is_null()
                {
                    cycle = latest.clone();
                    return true;
                }
                false
            },
        );
        let pid = daemon.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let stopped = Instant::now();
        loop {
            if let Some(code) = daemon.child.try_wait().unwrap() {
                assert_eq!(
                    code.code(),
                    Some(0),
                    "{context}: the daemon's exit\n{}",
                    daemon.stderr()
                );
                break;
            }
            assert!(
                stopped.elapsed() < Duration::from_secs(30),
                "{context}: the daemon did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            cycle["outcome"],
            "ok",
            "{context}: the restarted daemon's cycle: {cycle}\n{}",
            daemon.stderr()
        );
    }

    #[track_caller]
    fn check(&self, context: &str) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let live = assert_converged(&self.emulator, &self.ws);
            assert_eq!(live.len(), self.records.len());
            // Created once each: the journal holds one applied create per id.
            let mut creates: BTreeMap<String, u32> = BTreeMap::new();
            for entry in self.emulator.requests_with_method("POST") {
                if entry["outcome"] == "applied" || entry["outcome"] == "fault:reset_after" {
                    let id = entry["body"]["externalReferenceId"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    *creates.entry(id).or_default() += 1;
                }
            }
            for (id, count) in creates {
                assert_eq!(count, 1, "{id} was created {count} times");
            }
        }));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!("{context}: {message}");
        }
    }

    fn write_export(&self) {
        self.ws.write_export(&jsonl(&self.records));
    }

    /// Create: the first cycle over a fresh export.
    fn creation(&mut self) {
        self.records = (1..=16)
            .map(|n| lead(n, &format!("Lead {n}"), 1000 * i64::from(n)))
            .collect();
        self.write_export();
        self.kill_and_recover("creation");
    }

    /// Update: renames, amounts, appended team members, status moves and a
    /// few new records.
    fn updates(&mut self) {
        let round = 2;
        for i in 0..self.records.len() {
            match self.rng.below(4) {
                0 => {}
                1 => {
                    self.records[i]["subject"] = json!(format!("Lead {} r{round}", i + 1));
                    self.records[i]["estimatedamount"] = json!(self.rng.below(100_000));
                }
                2 => {
                    if self.records[i].get("new_secondemail").is_none() {
                        self.records[i] = with_second_member(self.records[i].clone(), "Bo");
                    }
                }
                _ => self.records[i]["statuscode"] = json!(2),
            }
        }
        let next = self.records.len() as u32 + 1;
        for n in next..next + 3 {
            self.records
                .push(lead(n, &format!("Lead {n} late"), 700 * i64::from(n)));
        }
        self.write_export();
        self.kill_and_recover("updates");
    }

    /// Conflicts: a seller renames referrals and sets members the mapping
    /// does not own; the CRM renames the same referrals and appends.
    fn conflicts(&mut self) {
        let mut marks = BTreeMap::new();
        for referral in self.emulator.referrals() {
            if self.rng.below(2) == 0 {
                let id = referral["id"].as_str().unwrap();
                let size = ["1to50employees", "51to500employees"][self.rng.below(2) as usize];
                self.emulator.seller_edit(
                    id,
                    json!([
                        {"op": "replace", "path": "/name", "value": "Seller's name"},
                        {"op": "add", "path": "/customerProfile/size", "value": size},
                    ]),
                );
                marks.insert(
                    referral["externalReferenceId"].as_str().unwrap().to_owned(),
                    size,
                );
            }
        }
        for (i, record) in self.records.iter_mut().enumerate() {
            record["subject"] = json!(format!("Lead {} r3", i + 1));
            if record.get("new_secondemail").is_none() && i % 2 == 1 {
                *record = with_second_member(record.clone(), "Cy");
            }
        }
        self.write_export();
        self.kill_and_recover("conflicts");
        for (external_id, size) in marks {
            let live = self.emulator.referral_for(&external_id);
            assert_eq!(
                live["customerProfile"]["size"],
                json!(size),
                "{}: the seller's member was lost",
                self.context("conflicts")
            );
        }
    }
}

fn run_trial(mode: Mode, seed: u64) -> Tally {
    let mut trial = Trial::new(mode, seed);
    trial.creation();
    trial.updates();
    trial.conflicts();
    trial.tally
}

fn run_trials(seeds: impl Iterator<Item = (Mode, u64)>) -> Tally {
    let mut total = Tally::default();
    for (mode, seed) in seeds {
        let tally = run_trial(mode, seed);
        total.killed_running += tally.killed_running;
        total.killed_mid_cycle += tally.killed_mid_cycle;
        total.killed_mid_resync += tally.killed_mid_resync;
        total.finished_first += tally.finished_first;
        total.pending_left += tally.pending_left;
        total.applied_unacknowledged += tally.applied_unacknowledged;
    }
    total
}

#[test]
fn a_few_kills_at_random_moments_lose_nothing_and_apply_nothing_twice() {
    let tally = run_trials([11, 12, 13].map(|seed| (Mode::Sync, seed)).into_iter());
    eprintln!("{tally:?}");
    assert!(
        tally.killed_running > 0,
        "no kill landed during a cycle: {tally:?}"
    );
}

#[test]
fn a_killed_daemon_restarted_converges_in_its_startup_cycle() {
    let tally = run_trials([21, 22].map(|seed| (Mode::Daemon, seed)).into_iter());
    eprintln!("{tally:?}");
    // A daemon runs on after its cycle: what counts is a cycle cut off.
    assert!(
        tally.killed_mid_cycle > 0,
        "no kill landed during a cycle: {tally:?}"
    );
}

#[test]
fn a_daemon_killed_in_the_middle_of_a_resync_converges_when_restarted() {
    let tally = run_trials([31, 32].map(|seed| (Mode::Resync, seed)).into_iter());
    eprintln!("{tally:?}");
    assert!(
        tally.killed_mid_resync > 0 && tally.pending_left > 0,
        "no kill landed while a resync was writing: {tally:?}"
    );
}

/// A hundred trials with random timing; run by `scripts/crash-trials.sh`.
#[test]
#[ignore = "long: run with scripts/crash-trials.sh"]
fn crash_trials_many() {
    let trials: u64 = std::env::var("CRASH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let base: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        });
    eprintln!("crash trials: {trials}, seeds {base}..{}", base + trials);
    // By seed modulo 3: `sync`, the daemon's startup cycle, a resync.
    let modes = |seed: u64| match seed % 3 {
        0 => Mode::Sync,
        1 => Mode::Daemon,
        _ => Mode::Resync,
    };
    let tally = run_trials((base..base + trials).map(|seed| (modes(seed), seed)));
    eprintln!(
        "crash trials passed: {} kills of a running process, {} of them cutting a cycle off \
         ({} a resync), {} cycles finished before the kill, \
         {} records left pending by a kill, {} of them with their write applied",
        tally.killed_running,
        tally.killed_mid_cycle,
        tally.killed_mid_resync,
        tally.finished_first,
        tally.pending_left,
        tally.applied_unacknowledged
    );
    assert!(u64::from(tally.killed_running) > trials, "{tally:?}");
    if trials >= 3 {
        assert!(
            tally.killed_mid_resync > 0,
            "no kill cut a resync off: {tally:?}"
        );
    }
    assert!(
        tally.applied_unacknowledged > 0,
        "no kill left an applied write unacknowledged: {tally:?}"
    );
}
