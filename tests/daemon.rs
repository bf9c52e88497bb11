//! `referral-sync run` and `referral-sync resync`, end to end: the real
//! binaries against the emulator on loopback, signals, a fake systemd
//! notify socket, the store read directly. Waits are bounded; timings are
//! never asserted, only what happened.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);

const CONTOSO: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
const FABRIKAM: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3302";
const EXAMPLE_IDS: [&str; 5] = [
    "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
    "3f2504e0-4f89-41d3-9a0c-0305e82c3302",
    "3f2504e0-4f89-41d3-9a0c-0305e82c3303",
    "3f2504e0-4f89-41d3-9a0c-0305e82c3304",
    "3f2504e0-4f89-41d3-9a0c-0305e82c3305",
];

/// Never fires during a test: only the startup cycle and resyncs run.
const YEARLY: &str = "0 0 0 1 1 *";

fn example_seed() -> Value {
    let text = std::fs::read_to_string(repo_path("examples/emulator-seed.json")).unwrap();
    let seed: Value = serde_json::from_str(&text).unwrap();
    seed.get("value").cloned().unwrap_or(seed)
}

/// The example export against the example seed, with `cron` and `extra`.
fn example_workspace(emulator: &Emulator, cron: &str, extra: &str) -> Workspace {
    let ws = Workspace::new(
        emulator,
        "opportunity",
        "export.json",
        &format!(
            "[sync]\ncreate_missing = true\ncreate_confirm_secs = 0\n\n[schedule]\ncron = \"{cron}\"\n\n[log]\nformat = \"json\"\n\n{extra}"
        ),
    );
    std::fs::copy(repo_path("examples/opportunities.odata.json"), &ws.export).unwrap();
    ws
}

/// A running `referral-sync run`; its standard error is collected line by
/// line. Killed on drop if still running.
struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    fn start(ws: &Workspace, env: &[(&str, &str)]) -> Daemon {
        let mut command = ws.command(&["run"]);
        command
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start referral-sync run");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Daemon {
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: libc::c_int) {
        let result = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(result, 0, "kill {signal}");
    }

    fn raw_log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Every log line, parsed: the daemon runs with `log.format = "json"`.
    fn log(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|line| {
                let value: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
                assert!(value.is_object(), "log line is not an object: {line}");
                value
            })
            .collect()
    }

    fn lines_with(&self, message: &str) -> Vec<Value> {
        self.log()
            .into_iter()
            .filter(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
            })
            .collect()
    }

    #[track_caller]
    fn wait_for_lines(&mut self, message: &str, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self.lines_with(message);
            if found.len() >= count {
                return found;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the daemon exited ({status}) before logging {count} x {message:?}:\n{}",
                    self.raw_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {count} x {message:?}:\n{}",
                self.raw_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[track_caller]
    fn wait_for_line(&mut self, message: &str) -> Value {
        self.wait_for_lines(message, 1).remove(0)
    }

    #[track_caller]
    fn wait_for_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(reader) = self.reader.take() {
                    wait_until(WAIT, "the daemon's standard error read to its end", || {
                        reader.is_finished()
                    });
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit:\n{}",
                self.raw_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[track_caller]
    fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_for_exit()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Debug, Clone)]
struct CycleRow {
    cycle_id: String,
    trigger: String,
    started_at: String,
    finished_at: Option<String>,
    outcome: Option<String>,
    summary: Option<Value>,
}

fn cycles(store: &Path) -> Vec<CycleRow> {
    let conn = rusqlite::Connection::open(store).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT cycle_id, trigger, started_at, finished_at, outcome, summary FROM cycles ORDER BY id",
        )
        .unwrap();
    stmt.query_map([], |row| {
        Ok(CycleRow {
            cycle_id: row.get(0)?,
            trigger: row.get(1)?,
            started_at: row.get(2)?,
            finished_at: row.get(3)?,
            outcome: row.get(4)?,
            summary: row
                .get::<_, Option<String>>(5)?
                .map(|s| serde_json::from_str(&s).unwrap()),
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

#[derive(Debug, Clone)]
struct RequestRow {
    only_ids: Option<String>,
    requested_by_pid: Option<i64>,
    started_at: Option<String>,
    finished_at: Option<String>,
    outcome: Option<String>,
    summary: Option<Value>,
}

fn resync_requests(store: &Path) -> Vec<RequestRow> {
    let conn = rusqlite::Connection::open(store).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT only_ids, requested_by_pid, started_at, finished_at, outcome, summary
             FROM resync_requests ORDER BY id",
        )
        .unwrap();
    stmt.query_map([], |row| {
        Ok(RequestRow {
            only_ids: row.get(0)?,
            requested_by_pid: row.get(1)?,
            started_at: row.get(2)?,
            finished_at: row.get(3)?,
            outcome: row.get(4)?,
            summary: row
                .get::<_, Option<String>>(5)?
                .map(|s| serde_json::from_str(&s).unwrap()),
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn record_states(store: &Path) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open(store).unwrap();
    let mut stmt = conn
        .prepare("SELECT external_id, state FROM records ORDER BY external_id")
        .unwrap();
    stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn integrity(store: &Path) -> String {
    rusqlite::Connection::open(store)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap()
}

/// The referral ids whose single referral was read (GET by id).
fn referrals_read(emulator: &Emulator) -> Vec<String> {
    let mut ids: Vec<String> = emulator
        .requests_with_method("GET")
        .iter()
        .filter_map(|r| r["path"].as_str())
        .filter_map(|p| p.strip_prefix("/v1.0/engagements/referrals/"))
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn referral_id(ws: &Workspace, external_id: &str) -> String {
    ws.stored(external_id)
        .and_then(|row| row.referral_id)
        .unwrap_or_else(|| panic!("no referral id stored for {external_id}"))
}

/// No two cycles ran at once: each started after the previous finished.
#[track_caller]
fn assert_no_overlap(rows: &[CycleRow]) {
    for pair in rows.windows(2) {
        let finished = pair[0]
            .finished_at
            .as_deref()
            .unwrap_or_else(|| panic!("cycle {} never finished: {rows:#?}", pair[0].cycle_id));
        assert!(
            pair[1].started_at.as_str() >= finished,
            "cycle {} started before {} finished: {rows:#?}",
            pair[1].cycle_id,
            pair[0].cycle_id
        );
    }
}

/// Every external id has exactly one referral, and no referral lists a
/// team member twice.
#[track_caller]
fn assert_no_duplicates(emulator: &Emulator, external_ids: &[String]) {
    let referrals = emulator.referrals();
    for id in external_ids {
        let count = referrals
            .iter()
            .filter(|r| r["externalReferenceId"] == json!(id))
            .count();
        assert_eq!(count, 1, "referrals for {id}");
    }
    for referral in &referrals {
        let team = referral["customerProfile"]["team"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut members: Vec<String> = team.iter().map(|m| m.to_string()).collect();
        let all = members.len();
        members.sort();
        members.dedup();
        assert_eq!(members.len(), all, "team member listed twice in {referral}");
    }
}

// ---------------------------------------------------------------------------

#[test]
fn cycles_run_on_a_seconds_schedule() {
    let emulator = Emulator::start(&example_seed(), &[]);
    let ws = example_workspace(&emulator, "*/2 * * * * *", "");
    let mut daemon = Daemon::start(&ws, &[]);

    let started = daemon.wait_for_line("daemon started");
    assert_eq!(started["pid"], json!(daemon.pid()));
    assert_eq!(started["schedule"], json!("*/2 * * * * *"));
    assert_eq!(started["timezone"], json!("UTC"));
    assert_eq!(started["config"], json!(ws.config.display().to_string()));
    assert!(
        started["next_tick"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{started}"
    );
    daemon.wait_for_line("daemon ready");

    // The startup cycle and two scheduled ones.
    wait_until(WAIT, "three finished cycles", || {
        cycles(&ws.store)
            .iter()
            .filter(|c| c.finished_at.is_some())
            .count()
            >= 3
    });
    let status = ws.status();
    let from_status: Vec<&str> = status["cycles"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|c| c["trigger"].as_str().unwrap())
        .collect();
    assert_eq!(
        &from_status[..3],
        ["startup", "schedule", "schedule"],
        "{status}"
    );
    assert_eq!(status["lock_holder_pid"], json!(daemon.pid().to_string()));

    assert!(daemon.terminate().success());
    let rows = cycles(&ws.store);
    assert_eq!(rows[0].trigger, "startup");
    assert_eq!(rows[0].outcome.as_deref(), Some("ok"));
    assert_eq!(rows[0].summary.as_ref().unwrap()["created"], json!(3));
    for row in &rows[1..] {
        assert_eq!(row.trigger, "schedule");
        // Nothing changed in the export: nothing more to send.
        let summary = row.summary.as_ref().unwrap();
        assert_eq!(
            (summary["seen"].clone(), summary["unchanged"].clone()),
            (json!(5), json!(5))
        );
    }
    assert_no_overlap(&rows);
    assert_eq!(emulator.requests_with_method("POST").len(), 3);
}

#[test]
fn json_log_lines_carry_cycle_id_trigger_and_counts() {
    let emulator = Emulator::start(&example_seed(), &[]);
    let ws = example_workspace(&emulator, "*/2 * * * * *", "");
    let mut daemon = Daemon::start(&ws, &[]);
    daemon.wait_for_lines("cycle finished", 2);
    assert!(daemon.terminate().success());

    // Every line is one JSON object with a level and a message.
    let log = daemon.log();
    assert!(
        log.iter()
            .all(|l| l["level"].is_string() && l["message"].is_string())
    );

    let rows = cycles(&ws.store);
    let finished = daemon.lines_with("cycle finished");
    for line in &finished {
        let cycle_id = line["cycle_id"].as_str().expect("cycle_id");
        let row = rows
            .iter()
            .find(|r| r.cycle_id == cycle_id)
            .unwrap_or_else(|| panic!("{cycle_id} not in the cycles table"));
        assert_eq!(line["trigger"], json!(row.trigger));
        assert_eq!(line["outcome"], json!("ok"));
        for count in [
            "seen",
            "unchanged",
            "created",
            "updated",
            "failed",
            "invalid",
            "unresolved",
        ] {
            assert_eq!(
                line[count],
                row.summary.as_ref().unwrap()[count],
                "{count} in {line}"
            );
        }
    }
    assert_eq!(finished[0]["trigger"], json!("startup"));
    assert_eq!(
        (
            finished[0]["seen"].clone(),
            finished[0]["created"].clone(),
            finished[0]["updated"].clone()
        ),
        (json!(5), json!(3), json!(2))
    );
    assert_eq!(finished[1]["trigger"], json!("schedule"));
    assert_eq!(finished[1]["unchanged"], json!(5));

    let begun = daemon.wait_for_line("shutdown begun");
    assert_eq!(begun["signal"], json!("SIGTERM"));
    assert_eq!(
        daemon.wait_for_line("shutdown finished")["cut_off"],
        json!(false)
    );
}

#[test]
fn a_tick_during_a_running_cycle_is_skipped() {
    let emulator = Emulator::start(&example_seed(), &[]);
    // Every API request takes a while: the startup cycle outlasts ticks.
    emulator.add_faults(json!({"path_contains": "/v1.0/", "kind": "delay", "ms": 700, "times": 0}));
    let ws = example_workspace(&emulator, "* * * * * *", "");
    let mut daemon = Daemon::start(&ws, &[]);

    let skipped = daemon.wait_for_line("tick skipped: a cycle is still running");
    assert_eq!(skipped["level"], json!("INFO"));
    assert_eq!(skipped["running_trigger"], json!("startup"));
    // Later cycles have nothing to send and are quick.
    emulator.clear_faults();
    daemon.wait_for_lines("cycle finished", 3);
    assert!(daemon.terminate().success());

    let rows = cycles(&ws.store);
    let startup = rows.iter().find(|r| r.trigger == "startup").unwrap();
    assert_eq!(skipped["running_cycle_id"], json!(startup.cycle_id));
    assert!(
        rows.iter().skip(1).all(|r| r.trigger == "schedule"),
        "{rows:#?}"
    );
    assert_no_overlap(&rows);
    assert_no_duplicates(&emulator, &EXAMPLE_IDS.map(String::from));
}

#[test]
fn resync_command_asks_the_running_daemon() {
    let emulator = Emulator::start(&example_seed(), &[]);
    let ws = example_workspace(&emulator, YEARLY, "");
    let mut daemon = Daemon::start(&ws, &[]);
    daemon.wait_for_line("cycle finished");
    let contoso = referral_id(&ws, CONTOSO);
    let fabrikam = referral_id(&ws, FABRIKAM);

    // One record: only its referral is read again.
    emulator.clear_requests();
    let run = ws.run(&["resync", "--only", CONTOSO]);
    run.assert_code(0);
    // The four records left out are counted as such, not as unchanged.
    assert!(
        run.stdout().starts_with("resynced: seen 5")
            && run.stdout().contains(", not selected 4 in "),
        "{}",
        run.stdout()
    );
    assert_eq!(referrals_read(&emulator), vec![contoso.clone()]);
    let requested = daemon.wait_for_line("resync requested");
    assert_eq!(requested["source"], json!("command"));
    assert_eq!(requested["only"], json!(CONTOSO));

    // A record that fails: the command exits as `sync` would.
    emulator.add_faults(json!({
        "method": "GET", "path_contains": fabrikam, "kind": "status", "status": 400, "times": 0
    }));
    let run = ws.run(&["resync", "--only", FABRIKAM]);
    run.assert_code(1);
    emulator.clear_faults();

    // Everything: every referral is read again.
    emulator.clear_requests();
    let run = ws.run(&["resync"]);
    run.assert_code(0);
    let mut all: Vec<String> = EXAMPLE_IDS.iter().map(|id| referral_id(&ws, id)).collect();
    all.sort();
    assert_eq!(referrals_read(&emulator), all);

    let requests = resync_requests(&ws.store);
    assert_eq!(requests.len(), 3, "{requests:#?}");
    assert_eq!(
        requests[0].only_ids.as_deref(),
        Some(format!("[\"{CONTOSO}\"]").as_str())
    );
    assert_eq!(requests[2].only_ids, None);
    let outcomes: Vec<Option<&str>> = requests.iter().map(|r| r.outcome.as_deref()).collect();
    assert_eq!(outcomes, [Some("ok"), Some("partial"), Some("ok")]);
    assert!(
        requests
            .iter()
            .all(|r| r.requested_by_pid.is_some() && r.started_at.is_some())
    );
    assert_eq!(requests[1].summary.as_ref().unwrap()["exit_code"], json!(1));

    assert!(daemon.terminate().success());
    let triggers: Vec<String> = cycles(&ws.store).into_iter().map(|c| c.trigger).collect();
    assert_eq!(triggers, ["startup", "resync", "resync", "resync"]);
    let finished = daemon.lines_with("resync finished");
    assert_eq!(finished.len(), 3);
    assert_eq!(finished[2]["seen"], json!(5));
    assert_eq!(finished[2]["exit_code"], json!(0));
}

#[test]
fn resync_without_a_daemon_runs_in_the_command() {
    let emulator = Emulator::start(&example_seed(), &[]);
    let ws = example_workspace(&emulator, YEARLY, "");
    ws.run(&["sync"]).assert_code(0);
    emulator.clear_requests();

    let run = ws.run(&["resync"]);
    run.assert_code(0);
    assert!(
        run.stdout().contains("resynced: seen 5"),
        "{}",
        run.stdout()
    );
    let mut all: Vec<String> = EXAMPLE_IDS.iter().map(|id| referral_id(&ws, id)).collect();
    all.sort();
    assert_eq!(referrals_read(&emulator), all);
    let triggers: Vec<String> = cycles(&ws.store).into_iter().map(|c| c.trigger).collect();
    assert_eq!(triggers, ["manual", "resync"]);
    assert!(resync_requests(&ws.store).is_empty());
    // Nothing held the store afterwards.
    assert_eq!(ws.status()["lock_holder_pid"], Value::Null);
}

#[test]
fn sighup_runs_a_full_resync() {
    let emulator = Emulator::start(&example_seed(), &[]);
    let ws = example_workspace(&emulator, YEARLY, "");
    let mut daemon = Daemon::start(&ws, &[]);
    daemon.wait_for_line("cycle finished");
    emulator.clear_requests();

    daemon.signal(libc::SIGHUP);
    let requested = daemon.wait_for_line("resync requested");
    assert_eq!(requested["source"], json!("SIGHUP"));
    assert_eq!(requested["only"], json!("all"));
    let finished = daemon.wait_for_line("resync finished");
    assert_eq!(finished["outcome"], json!("ok"));
    assert_eq!(finished["seen"], json!(5));

    let mut all: Vec<String> = EXAMPLE_IDS.iter().map(|id| referral_id(&ws, id)).collect();
    all.sort();
    assert_eq!(referrals_read(&emulator), all);
    let requests = resync_requests(&ws.store);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].requested_by_pid, None);
    assert_eq!(requests[0].outcome.as_deref(), Some("ok"));
    assert!(requests[0].finished_at.is_some());
    assert!(daemon.terminate().success());
    let triggers: Vec<String> = cycles(&ws.store).into_iter().map(|c| c.trigger).collect();
    assert_eq!(triggers, ["startup", "resync"]);
}

/// Twelve new opportunities, so that a cycle has records left to start.
fn twelve_new_records(ws: &Workspace) -> Vec<String> {
    let ids: Vec<String> = (0..12)
        .map(|n| format!("9d3c7e1a-0000-4000-8000-{n:012}"))
        .collect();
    let records: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| opportunity(id, &format!("Opportunity {n}"), 1000.0 + n as f64, 0, 1))
        .collect();
    ws.write_export(&odata_page(&records));
    ids
}

/// Until the emulator holds a create (its POSTs are delayed).
fn wait_for_a_create_in_flight(emulator: &Emulator) {
    wait_until(WAIT, "a create in flight", || {
        emulator
            .requests_with_method("POST")
            .iter()
            .any(|r| r["outcome"] == "in_progress")
    });
}

#[test]
fn sigterm_lets_records_in_flight_finish_within_the_grace_period() {
    let emulator = Emulator::start(&json!([]), &[]);
    emulator.add_faults(json!({"method": "POST", "kind": "delay", "ms": 1500, "times": 0}));
    let ws = example_workspace(&emulator, YEARLY, "[daemon]\nshutdown_grace_secs = 60\n");
    let ids = twelve_new_records(&ws);
    let mut daemon = Daemon::start(&ws, &[("REFERRAL_SYNC__API__CONCURRENCY", "2")]);
    daemon.wait_for_line("referral index built");
    wait_for_a_create_in_flight(&emulator);

    let status = daemon.terminate();
    assert_eq!(status.code(), Some(0), "{}", daemon.raw_log());
    assert_eq!(
        daemon.wait_for_line("shutdown finished")["cut_off"],
        json!(false)
    );
    assert_eq!(integrity(&ws.store), "ok");
    let rows = cycles(&ws.store);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].outcome.as_deref(), Some("interrupted"));
    // Those in flight finished and were recorded; none was left pending,
    // and the cycle stopped before the end.
    let states = record_states(&ws.store);
    assert!(!states.is_empty() && states.len() < ids.len(), "{states:?}");
    assert!(
        states.iter().all(|(_, state)| state == "synced"),
        "{states:?}"
    );
    assert_eq!(emulator.referrals().len(), states.len());

    // The next run converges.
    emulator.clear_faults();
    ws.run(&["sync"]).assert_code(0);
    assert!(record_states(&ws.store).iter().all(|(_, s)| s == "synced"));
    assert_eq!(record_states(&ws.store).len(), ids.len());
    assert_no_duplicates(&emulator, &ids);
}

#[test]
fn sigterm_past_the_grace_period_leaves_records_pending_and_loses_nothing() {
    let emulator = Emulator::start(&json!([]), &[]);
    emulator.add_faults(json!({"method": "POST", "kind": "delay", "ms": 5000, "times": 0}));
    let ws = example_workspace(&emulator, YEARLY, "[daemon]\nshutdown_grace_secs = 0.3\n");
    let ids = twelve_new_records(&ws);
    let mut daemon = Daemon::start(&ws, &[("REFERRAL_SYNC__API__CONCURRENCY", "2")]);
    daemon.wait_for_line("referral index built");
    wait_for_a_create_in_flight(&emulator);

    let status = daemon.terminate();
    assert_eq!(status.code(), Some(0), "{}", daemon.raw_log());
    let cut = daemon.wait_for_line("cycle cut off by the shutdown grace period");
    assert_eq!(cut["level"], json!("WARN"));
    assert_eq!(
        daemon.wait_for_line("shutdown finished")["cut_off"],
        json!(true)
    );

    // The store is consistent: the cycle is closed, the records whose
    // create was cut off are pending, nothing is half recorded.
    assert_eq!(integrity(&ws.store), "ok");
    let rows = cycles(&ws.store);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].outcome.as_deref(), Some("interrupted"));
    assert!(rows[0].finished_at.is_some());
    let states = record_states(&ws.store);
    assert!(states.iter().any(|(_, s)| s == "pending"), "{states:?}");
    assert!(
        states.iter().all(|(_, s)| s == "pending" || s == "synced"),
        "{states:?}"
    );
    for (id, state) in &states {
        let row = ws.stored(id).unwrap();
        if state == "pending" {
            assert_eq!(row.snapshot, None, "{id}: a cut-off create has no snapshot");
        }
    }

    // The next run resolves the pending ones and creates the rest, once.
    emulator.clear_faults();
    ws.run(&["sync"]).assert_code(0);
    let states = record_states(&ws.store);
    assert_eq!(states.len(), ids.len());
    assert!(states.iter().all(|(_, s)| s == "synced"), "{states:?}");
    assert_no_duplicates(&emulator, &ids);
    assert_eq!(emulator.referrals().len(), ids.len());
}

/// Datagrams the daemon sent to the fake NOTIFY_SOCKET so far.
struct NotifySocket {
    socket: UnixDatagram,
    received: Vec<String>,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket {
            socket,
            received: Vec::new(),
        }
    }

    /// Read until a message satisfies `wanted`; returns it.
    #[track_caller]
    fn wait_for(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut buffer = [0u8; 4096];
        loop {
            if let Ok(n) = self.socket.recv(&mut buffer) {
                let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
                self.received.push(message.clone());
                if wanted(&message) {
                    return message;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; received {:?}",
                self.received
            );
        }
    }
}

fn notify_lines(message: &str) -> Vec<&str> {
    message.lines().collect()
}

#[test]
fn ready_status_reloading_and_watchdog_reach_the_notify_socket() {
    let emulator = Emulator::start(&example_seed(), &[]);
    let ws = example_workspace(&emulator, YEARLY, "");
    let socket_path = ws.dir.path().join("notify.sock");
    let mut socket = NotifySocket::bind(&socket_path);
    let socket_env = socket_path.display().to_string();
    let mut daemon = Daemon::start(
        &ws,
        &[("NOTIFY_SOCKET", &socket_env), ("WATCHDOG_USEC", "600000")],
    );

    let ready = socket.wait_for("READY=1", |m| notify_lines(m).contains(&"READY=1"));
    assert!(ready.contains("STATUS="), "{ready}");
    let status = socket.wait_for("the startup cycle's STATUS", |m| {
        m.contains("STATUS=last cycle (startup")
    });
    assert!(
        status.contains("ok: seen 5, unchanged 0, created 3, updated 2"),
        "{status}"
    );
    socket.wait_for("a watchdog ping", |m| {
        notify_lines(m).contains(&"WATCHDOG=1")
    });

    daemon.signal(libc::SIGHUP);
    let reloading = socket.wait_for("RELOADING=1", |m| notify_lines(m).contains(&"RELOADING=1"));
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let ready_again = socket.wait_for("READY=1 after the resync", |m| {
        notify_lines(m).contains(&"READY=1") && m.contains("STATUS=last cycle (resync")
    });
    assert!(ready_again.contains("ok: seen 5"), "{ready_again}");

    daemon.signal(libc::SIGTERM);
    socket.wait_for("STOPPING=1", |m| notify_lines(m).contains(&"STOPPING=1"));
    assert!(daemon.wait_for_exit().success());
}

#[test]
fn the_lock_loser_names_the_holder_and_exits_5() {
    let emulator = Emulator::start(&example_seed(), &[]);
    let ws = example_workspace(&emulator, YEARLY, "");
    let mut daemon = Daemon::start(&ws, &[]);
    daemon.wait_for_line("daemon ready");
    let pid = format!("pid {}", daemon.pid());

    for args in [&["run"][..], &["sync"][..]] {
        let run = ws.run(args);
        run.assert_code(5);
        assert!(run.stderr().contains(&pid), "{args:?}: {}", run.stderr());
        assert!(
            run.stderr()
                .contains("in use by another referral-sync process"),
            "{}",
            run.stderr()
        );
    }
    assert!(daemon.terminate().success());

    // A holder that is not a daemon is never signalled: `resync` refuses.
    let lock = referral_sync::lock::StoreLock::acquire(&ws.store).unwrap();
    let run = ws.run(&["resync"]);
    run.assert_code(5);
    assert!(
        run.stderr().contains(&format!(
            "in use by pid {}, which is not a referral-sync daemon",
            std::process::id()
        )),
        "{}",
        run.stderr()
    );
    drop(lock);
    assert!(resync_requests(&ws.store).is_empty());
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo_path("systemd/referral-sync.service")).unwrap();
    let analyze = Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        eprintln!("note: systemd-analyze is not installed; the unit was not verified");
        return;
    }
    // verify checks that ExecStart's binary exists: point it at ours.
    assert!(
        unit.contains("ExecStart=/usr/local/bin/referral-sync "),
        "{unit}"
    );
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("referral-sync.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/referral-sync", referral_sync_bin()),
    )
    .unwrap();

    let verify = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "systemd-analyze verify: {stderr}");
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("referral-sync.service"))
        .collect();
    assert!(complaints.is_empty(), "{complaints:?}");

    // An exposure of 2.0 or less is rated OK or better.
    let security = std::process::Command::new(analyze)
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&copy)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&security.stdout);
    assert!(
        security.status.success(),
        "systemd-analyze security: {stdout}{}",
        String::from_utf8_lossy(&security.stderr)
    );
    assert!(
        stdout.contains("Overall exposure level for referral-sync.service"),
        "{stdout}"
    );
}

/// `referral-sync resync` signals the pid in the daemon's pid file. A
/// SIGHUP sent the moment that file appears must find the handlers in
/// place: it asks for a resync and never kills the daemon.
#[test]
fn sighup_the_moment_the_pid_file_appears_asks_for_a_resync() {
    let emulator = Emulator::start(&example_seed(), &[]);
    let ws = example_workspace(&emulator, YEARLY, "");
    let mut pid_path = ws.store.clone().into_os_string();
    pid_path.push(".daemon.pid");
    let pid_path = std::path::PathBuf::from(pid_path);
    for round in 0..5 {
        let mut daemon = Daemon::start(&ws, &[]);
        let deadline = Instant::now() + WAIT;
        while !pid_path.exists() {
            assert!(Instant::now() < deadline, "no pid file");
            std::hint::spin_loop();
        }
        daemon.signal(libc::SIGHUP);
        let requested = daemon.wait_for_line("resync requested");
        assert_eq!(requested["source"], json!("SIGHUP"), "round {round}");
        daemon.wait_for_line("resync finished");
        let status = daemon.terminate();
        assert!(
            status.success(),
            "round {round}: {status}\n{}",
            daemon.raw_log()
        );
    }
}

#[test]
fn resync_only_matches_ids_spelled_as_the_scan_spells_them() {
    let emulator = Emulator::start(&example_seed(), &[]);
    let ws = example_workspace(&emulator, YEARLY, "");
    ws.run(&["sync"]).assert_code(0);
    let contoso = referral_id(&ws, CONTOSO);
    let braced_upper = format!("{{{}}}", CONTOSO.to_ascii_uppercase());

    // Without a daemon: the command runs the resync itself.
    emulator.clear_requests();
    let run = ws.run(&["resync", "--only", &braced_upper]);
    run.assert_code(0);
    assert!(
        run.stdout().contains(", not selected 4 in "),
        "{}",
        run.stdout()
    );
    assert_eq!(referrals_read(&emulator), vec![contoso.clone()]);

    // Through the daemon.
    let mut daemon = Daemon::start(&ws, &[]);
    daemon.wait_for_line("cycle finished");
    emulator.clear_requests();
    let run = ws.run(&["resync", "--only", &braced_upper]);
    run.assert_code(0);
    assert_eq!(referrals_read(&emulator), vec![contoso]);
    assert!(daemon.terminate().success());
    let requests = resync_requests(&ws.store);
    assert_eq!(
        requests[0].only_ids.as_deref(),
        Some(format!("[\"{CONTOSO}\"]").as_str())
    );
}

#[test]
fn resync_only_names_the_ids_that_match_no_record_and_exits_1() {
    let emulator = Emulator::start(&example_seed(), &[]);
    let ws = example_workspace(&emulator, YEARLY, "");
    ws.run(&["sync"]).assert_code(0);
    let unknown = "3f2504e0-4f89-41d3-9a0c-0305e82c3399";
    let expected = format!(
        "error: --only: no record in the export has the external id `{unknown}`, `no-such-record`"
    );

    // Without a daemon.
    emulator.clear_requests();
    let run = ws.run(&["resync", "--only", CONTOSO, unknown, "no-such-record"]);
    run.assert_code(1);
    assert!(run.stderr().contains(&expected), "{}", run.stderr());
    // The id that matched was resynced all the same.
    assert_eq!(referrals_read(&emulator), vec![referral_id(&ws, CONTOSO)]);
    assert!(emulator.requests_with_method("PATCH").is_empty());
    assert!(emulator.requests_with_method("POST").is_empty());

    // Through the daemon.
    let mut daemon = Daemon::start(&ws, &[]);
    daemon.wait_for_line("cycle finished");
    let run = ws.run(&["resync", "--only", unknown, "no-such-record"]);
    run.assert_code(1);
    assert!(run.stderr().contains(&expected), "{}", run.stderr());
    assert!(daemon.terminate().success());
    let requests = resync_requests(&ws.store);
    assert_eq!(requests.last().unwrap().outcome.as_deref(), Some("partial"));
}

/// The template unit: one instance per configuration, each with its own
/// configuration file, state directory and credential, verified as an
/// instance (`referral-sync@acme.service`) like the single unit.
#[test]
fn the_template_unit_verifies_as_an_instance() {
    let unit = std::fs::read_to_string(repo_path("systemd/referral-sync@.service")).unwrap();
    // What makes instances independent.
    for line in [
        "ExecStart=/usr/local/bin/referral-sync --config /etc/referral-sync/%i.toml run",
        "StateDirectory=referral-sync-%i",
        "LoadCredential=%i-partner-center-token:/etc/referral-sync/%i-partner-center-token",
        "DynamicUser=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line:?}");
    }
    // Everything else as hardened as the single unit.
    let single = std::fs::read_to_string(repo_path("systemd/referral-sync.service")).unwrap();
    let settings = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains('='))
            .filter(|l| {
                ![
                    "Description=",
                    "ExecStart=",
                    "StateDirectory=",
                    "LoadCredential=",
                ]
                .iter()
                .any(|key| l.starts_with(key))
            })
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(settings(&unit), settings(&single));

    let analyze = Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        eprintln!("note: systemd-analyze is not installed; the unit was not verified");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("referral-sync@.service");
    std::fs::write(
        &template,
        unit.replace("/usr/local/bin/referral-sync", referral_sync_bin()),
    )
    .unwrap();
    let instance = dir.path().join("referral-sync@acme.service");
    std::os::unix::fs::symlink("referral-sync@.service", &instance).unwrap();

    let verify = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&instance)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "systemd-analyze verify: {stderr}");
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("referral-sync@"))
        .collect();
    assert!(complaints.is_empty(), "{complaints:?}");

    let security = std::process::Command::new(analyze)
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&instance)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&security.stdout);
    assert!(
        security.status.success(),
        "systemd-analyze security: {stdout}{}",
        String::from_utf8_lossy(&security.stderr)
    );
    assert!(
        stdout.contains("Overall exposure level for referral-sync@acme.service"),
        "{stdout}"
    );
}
