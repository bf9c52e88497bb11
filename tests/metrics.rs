//! Prometheus metrics with the real binaries: the textfile a `sync` writes,
//! and `/metrics` from a running daemon.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;

const FAMILIES: [&str; 9] = [
    "referral_sync_cycles_total",
    "referral_sync_last_success_timestamp_seconds",
    "referral_sync_cycle_duration_seconds",
    "referral_sync_records",
    "referral_sync_requests_total",
    "referral_sync_request_duration_seconds",
    "referral_sync_throttled_seconds_total",
    "referral_sync_conflicts_total",
    "referral_sync_drift_total",
];

fn example_seed() -> Value {
    let text = std::fs::read_to_string(repo_path("examples/emulator-seed.json")).unwrap();
    let seed: Value = serde_json::from_str(&text).unwrap();
    seed.get("value").cloned().unwrap_or(seed)
}

/// Text format 0.0.4, parsed strictly: every sample belongs to a family
/// declared by `# TYPE` before it (histograms by their suffixes), no family
/// is declared twice, every value is a number. Returns the families' types
/// and every sample as `name{k="v",...}` (labels sorted) → value.
fn parse(text: &str) -> (BTreeMap<String, String>, BTreeMap<String, f64>) {
    assert!(text.ends_with('\n'), "no final newline: {text:?}");
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(line);
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "twice: {line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "unexpected line {line:?}"
        );
        let sample = referral_sync::metrics::parse_sample(line).expect(line);
        let family = types
            .iter()
            .find(|(name, kind)| {
                sample.name == **name
                    || (kind.as_str() == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| sample.name == format!("{name}{s}")))
            })
            .unwrap_or_else(|| panic!("sample of no declared family: {line}"));
        if family.1 == "counter" {
            assert!(family.0.ends_with("_total"), "{line}");
        }
        let labels: BTreeMap<_, _> = sample.labels.into_iter().collect();
        let key = if labels.is_empty() {
            sample.name.clone()
        } else {
            let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{}{{{}}}", sample.name, inner.join(","))
        };
        assert!(samples.insert(key, sample.value).is_none(), "twice: {line}");
    }
    (types, samples)
}

fn textfile(ws: &Workspace) -> std::path::PathBuf {
    ws.dir.path().join("textfile").join("referral-sync.prom")
}

fn read_textfile(ws: &Workspace) -> (BTreeMap<String, String>, BTreeMap<String, f64>) {
    parse(&std::fs::read_to_string(textfile(ws)).unwrap())
}

fn metrics_workspace(emulator: &Emulator, metrics: &str) -> Workspace {
    let ws = Workspace::new(
        emulator,
        "opportunity",
        "export.json",
        &format!(
            "[sync]\ncreate_missing = true\ncreate_confirm_secs = 0\n\n[metrics]\n{metrics}\n"
        ),
    );
    std::fs::create_dir(ws.dir.path().join("textfile")).unwrap();
    std::fs::copy(repo_path("examples/opportunities.odata.json"), &ws.export).unwrap();
    ws
}

type Samples = BTreeMap<String, f64>;

/// The example synced once with the textfile on, and what that first
/// cycle sent: the shared set-up of the textfile tests.
struct SyncedOnce {
    emulator: Emulator,
    ws: Workspace,
    /// Seconds since the epoch before the first sync.
    started: f64,
    types: BTreeMap<String, String>,
    first: Samples,
    patches: f64,
    posts: f64,
    sent: f64,
}

fn synced_once() -> SyncedOnce {
    let emulator = Emulator::start(&example_seed(), &[]);
    let ws = metrics_workspace(&emulator, "textfile = \"textfile/referral-sync.prom\"");
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    ws.run(&["sync"]).assert_code(0);
    let (types, first) = read_textfile(&ws);
    let patches = emulator.requests_with_method("PATCH").len() as f64;
    let posts = emulator.requests_with_method("POST").len() as f64;
    let sent = emulator.requests().len() as f64;
    SyncedOnce {
        emulator,
        ws,
        started,
        types,
        first,
        patches,
        posts,
        sent,
    }
}

impl SyncedOnce {
    /// A change in the CRM synced: one more PATCH. The emulator's journal
    /// then holds this cycle's requests only.
    fn sync_a_change(&self) -> Samples {
        let export = std::fs::read_to_string(&self.ws.export).unwrap();
        assert!(export.contains("50000"), "the example export changed");
        self.ws.write_export(&export.replacen("50000", "50100", 1));
        self.emulator.clear_requests();
        self.ws.run(&["sync"]).assert_code(0);
        assert_eq!(self.emulator.requests_with_method("PATCH").len(), 1);
        read_textfile(&self.ws).1
    }

    fn dry_run(&self) {
        self.ws.run(&["sync", "--dry-run"]).assert_code(0);
    }

    /// A cycle that fails on an export that is not JSON.
    fn fail_a_sync(&self) -> Samples {
        std::fs::write(&self.ws.export, "{ not json").unwrap();
        let run = self.ws.run(&["sync"]);
        assert_ne!(run.code(), 0);
        read_textfile(&self.ws).1
    }
}

#[test]
fn the_textfile_declares_every_family() {
    let synced = synced_once();
    let declared: BTreeSet<&str> = synced.types.keys().map(String::as_str).collect();
    assert_eq!(
        declared,
        FAMILIES.into_iter().collect(),
        "{:?}",
        synced.types
    );
}

#[test]
fn the_textfile_counts_the_cycle_the_requests_and_the_records_of_a_sync() {
    let synced = synced_once();
    let first = &synced.first;
    assert_eq!(
        first["referral_sync_cycles_total{outcome=\"ok\",trigger=\"manual\"}"],
        1.0
    );
    // Two adopted referrals patched, three created: what the emulator saw.
    assert_eq!(synced.patches, 2.0);
    assert_eq!(
        first["referral_sync_requests_total{method=\"PATCH\",status=\"200\"}"],
        synced.patches
    );
    assert_eq!(
        first["referral_sync_requests_total{method=\"POST\",status=\"201\"}"],
        synced.posts
    );
    assert_eq!(first["referral_sync_records{state=\"synced\"}"], 5.0);
    for state in ["pending", "failed", "invalid", "held"] {
        assert_eq!(
            first[&format!("referral_sync_records{{state=\"{state}\"}}")],
            0.0,
            "{state}"
        );
    }
    assert_eq!(
        first["referral_sync_request_duration_seconds_count"],
        synced.sent
    );
    assert_eq!(
        first["referral_sync_request_duration_seconds_bucket{le=\"+Inf\"}"],
        synced.sent
    );
    assert_eq!(first["referral_sync_throttled_seconds_total"], 0.0);
    let success = first["referral_sync_last_success_timestamp_seconds"];
    assert!(
        success >= synced.started.floor(),
        "{success} < {}",
        synced.started
    );
}

#[test]
fn the_counters_of_a_second_sync_go_on_from_the_first_ones() {
    let synced = synced_once();
    let second = synced.sync_a_change();
    assert_eq!(
        second["referral_sync_cycles_total{outcome=\"ok\",trigger=\"manual\"}"],
        2.0
    );
    assert_eq!(
        second["referral_sync_requests_total{method=\"PATCH\",status=\"200\"}"],
        synced.patches + 1.0
    );
    assert_eq!(
        second["referral_sync_requests_total{method=\"POST\",status=\"201\"}"],
        synced.posts
    );
    assert_eq!(second["referral_sync_records{state=\"synced\"}"], 5.0);
    assert_eq!(
        second["referral_sync_request_duration_seconds_count"],
        synced.sent + synced.emulator.requests().len() as f64
    );
    assert!(
        second["referral_sync_last_success_timestamp_seconds"]
            >= synced.first["referral_sync_last_success_timestamp_seconds"]
    );
}

#[test]
fn a_dry_run_counts_nothing_and_leaves_the_textfile_alone() {
    let synced = synced_once();
    synced.sync_a_change();
    let text = std::fs::read_to_string(textfile(&synced.ws)).unwrap();
    synced.dry_run();
    assert_eq!(std::fs::read_to_string(textfile(&synced.ws)).unwrap(), text);
}

#[test]
fn a_failed_cycle_is_counted_and_the_last_success_stays() {
    let synced = synced_once();
    let second = synced.sync_a_change();
    let third = synced.fail_a_sync();
    assert_eq!(
        third["referral_sync_cycles_total{outcome=\"failed\",trigger=\"manual\"}"],
        1.0
    );
    assert_eq!(
        third["referral_sync_cycles_total{outcome=\"ok\",trigger=\"manual\"}"],
        2.0
    );
    assert_eq!(
        third["referral_sync_last_success_timestamp_seconds"],
        second["referral_sync_last_success_timestamp_seconds"]
    );
}

#[test]
fn the_textfile_is_the_only_file_in_its_directory_after_every_kind_of_cycle() {
    let synced = synced_once();
    synced.sync_a_change();
    synced.dry_run();
    synced.fail_a_sync();
    // No temporary file left.
    let names: Vec<String> = std::fs::read_dir(synced.ws.dir.path().join("textfile"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["referral-sync.prom".to_owned()]);
}

#[test]
fn the_textfile_is_never_seen_half_written() {
    let emulator = Emulator::start(&example_seed(), &[]);
    let ws = metrics_workspace(&emulator, "textfile = \"textfile/referral-sync.prom\"");
    ws.run(&["sync"]).assert_code(0);
    let path = textfile(&ws);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = std::sync::Arc::clone(&stop);
        let path = path.clone();
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = std::fs::read_to_string(&path).expect("the textfile is always there");
                let (types, _) = parse(&text);
                assert_eq!(types.len(), FAMILIES.len(), "{text}");
                reads += 1;
            }
            reads
        })
    };
    for _ in 0..4 {
        ws.run(&["sync"]).assert_code(0);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().expect("every read parsed");
    assert!(reads > 0);
    let (_, samples) = read_textfile(&ws);
    assert_eq!(
        samples["referral_sync_cycles_total{outcome=\"ok\",trigger=\"manual\"}"],
        5.0
    );
}

fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.to_owned(), body.to_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_running_daemon_serves_the_same_families() {
    let emulator = Emulator::start(&example_seed(), &[]);
    let addr = format!("127.0.0.1:{}", free_port());
    let ws = metrics_workspace(
        &emulator,
        &format!(
            "listen = \"{addr}\"\ntextfile = \"textfile/referral-sync.prom\"\n\n[schedule]\ncron = \"0 0 0 1 1 *\""
        ),
    );
    let mut daemon = ws
        .command(&["run"])
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The startup cycle ends by writing the textfile.
    wait_until(
        Duration::from_secs(30),
        "the startup cycle's textfile",
        || textfile(&ws).exists(),
    );
    let (head, body) = http_get(&addr, "/metrics");
    let (not_found, _) = http_get(&addr, "/other");
    let (too_large_head, _) = {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = write!(
            stream,
            "GET /metrics HTTP/1.1\r\nX: {}\r\n",
            "a".repeat(20_000)
        );
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        (answer.lines().next().unwrap_or("").to_owned(), ())
    };
    unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
    let status = daemon.wait().unwrap();
    assert!(status.success(), "{status:?}");

    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(not_found.starts_with("HTTP/1.1 404"), "{not_found}");
    assert!(
        too_large_head.starts_with("HTTP/1.1 431"),
        "{too_large_head}"
    );
    let (types, samples) = parse(&body);
    let (file_types, file_samples) = read_textfile(&ws);
    assert_eq!(types, file_types);
    let declared: BTreeSet<&str> = types.keys().map(String::as_str).collect();
    assert_eq!(declared, FAMILIES.into_iter().collect());
    assert_eq!(
        samples["referral_sync_cycles_total{outcome=\"ok\",trigger=\"startup\"}"],
        1.0
    );
    assert_eq!(samples["referral_sync_records{state=\"synced\"}"], 5.0);
    assert_eq!(
        samples["referral_sync_requests_total{method=\"PATCH\",status=\"200\"}"],
        emulator.requests_with_method("PATCH").len() as f64
    );
    assert_eq!(
        samples["referral_sync_requests_total{method=\"PATCH\",status=\"200\"}"],
        file_samples["referral_sync_requests_total{method=\"PATCH\",status=\"200\"}"]
    );
}

#[test]
fn a_remote_listen_address_is_refused() {
    let emulator = Emulator::start(&example_seed(), &[]);
    let ws = metrics_workspace(&emulator, "listen = \"0.0.0.0:9464\"");
    let run = ws.run(&["run"]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert!(run.stderr().contains("metrics.listen"), "{}", run.stderr());
    assert!(
        run.stderr().contains("metrics.allow_remote"),
        "{}",
        run.stderr()
    );
    let run = ws.run(&["sync"]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert!(run.stderr().contains("metrics.listen"), "{}", run.stderr());
    // Nothing was sent.
    assert!(emulator.requests().is_empty());

    let ws = metrics_workspace(&emulator, "listen = \"localhost:9464\"");
    let run = ws.run(&["sync"]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert!(run.stderr().contains("metrics.listen"), "{}", run.stderr());

    let ws = metrics_workspace(&emulator, "textfile = \"x\"\nport = 1");
    let run = ws.run(&["sync"]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert!(run.stderr().contains("port"), "{}", run.stderr());
}

#[test]
fn throttled_time_and_refusals_are_counted() {
    let emulator = Emulator::start(&example_seed(), &[]);
    let ws = metrics_workspace(&emulator, "textfile = \"textfile/referral-sync.prom\"");
    emulator.add_faults(serde_json::json!([
        {"method": "PATCH", "times": 1, "kind": "status", "status": 429, "retry_after": 1},
    ]));
    ws.run(&["sync"]).assert_code(0);
    let (_, samples) = read_textfile(&ws);
    assert_eq!(
        samples["referral_sync_requests_total{method=\"PATCH\",status=\"429\"}"],
        1.0
    );
    assert_eq!(
        samples["referral_sync_requests_total{method=\"PATCH\",status=\"200\"}"],
        emulator
            .requests_with_method("PATCH")
            .iter()
            .filter(|r| r["status"] == 200)
            .count() as f64
    );
    // At least the second the service asked for.
    let throttled = samples["referral_sync_throttled_seconds_total"];
    assert!((1.0..5.0).contains(&throttled), "{throttled}");
}

#[test]
fn a_textfile_that_cannot_be_written_is_logged_and_the_sync_goes_on() {
    let emulator = Emulator::start(&example_seed(), &[]);
    let ws = metrics_workspace(&emulator, "textfile = \"missing/referral-sync.prom\"");
    let run = ws.run(&["sync"]);
    run.assert_code(0);
    assert!(
        run.stderr().contains("metrics.textfile: cannot write"),
        "{}",
        run.stderr()
    );
    assert!(
        run.stderr().contains("missing/referral-sync.prom"),
        "{}",
        run.stderr()
    );
    assert_eq!(
        ws.stored("3f2504e0-4f89-41d3-9a0c-0305e82c3301")
            .unwrap()
            .state,
        "synced"
    );
}
