//! The cycle benchmark: synthetic exports of each size, read parse-only
//! (the floor), then synced for real by the `referral-sync` binary against
//! `pc-emulator` on loopback — first cycle, no-change cycle, a 1%-changed
//! cycle, and pushes of a fixed number of changed records at each latency
//! and concurrency. Every step runs in its own process, so each has its own
//! peak RSS.
//!
//! Shared by `benches/cycle.rs` (the real run) and `tests/bench_smoke.rs`
//! (a tiny run in CI, so this code keeps working).
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use serde_json::Value;

pub const RESULTS_BEGIN: &str = "<!-- results:begin -->";
pub const RESULTS_END: &str = "<!-- results:end -->";

const TOKEN: &str = "bench-token-7d1f0c";

/// The binaries under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub referral_sync: PathBuf,
    pub pc_emulator: PathBuf,
    pub gen_export: PathBuf,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub sizes: Vec<u64>,
    /// Records per OData page file.
    pub page_size: u64,
    /// Sizes above this are only read parse-only: their first cycle would
    /// take too long for a routine run.
    pub max_cycle_size: u64,
    /// Changed records pushed in each push measurement.
    pub push_records: u64,
    pub concurrencies: Vec<usize>,
    /// Added latency of the emulator, in milliseconds; 0 included or not.
    pub latencies_ms: Vec<u64>,
    /// Concurrency of the first, no-change and 1% cycles.
    pub cycle_concurrency: usize,
    /// Runs of each parse-only read and of the no-change cycle; the median
    /// is reported.
    pub repeats: usize,
    pub seed: u64,
    /// Exports, stores and logs go here; each size's files are removed when
    /// the size is done.
    pub work_dir: PathBuf,
}

/// One step of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `read_export` with a callback that drops each record: the daemon's
    /// own reader, nothing after it.
    ReadExport,
    /// serde_json streaming each page, or the csv crate, alone, each record
    /// into a field map: the limit the targets are taken against.
    BareParse,
    /// serde_json alone over each page read whole into memory.
    BareParseInMemory,
    FirstCycle,
    NoChange,
    OnePercent,
    Push {
        latency_ms: u64,
        concurrency: usize,
    },
}

impl Step {
    pub fn label(self) -> String {
        match self {
            Step::ReadExport => "parse only: read_export, no-op callback".into(),
            Step::BareParse => "parse only (the limit): streaming serde_json / csv".into(),
            Step::BareParseInMemory => "parse only: bare serde_json, page in memory".into(),
            Step::FirstCycle => "first cycle (empty store, creates all)".into(),
            Step::NoChange => "no-change cycle".into(),
            Step::OnePercent => "1%-changed cycle".into(),
            Step::Push {
                latency_ms,
                concurrency,
            } => format!("push, {latency_ms} ms latency, concurrency {concurrency}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Odata,
    Csv,
}

impl Format {
    pub fn label(self) -> &'static str {
        match self {
            Format::Odata => "OData pages",
            Format::Csv => "CSV",
        }
    }
}

/// One measured step.
#[derive(Debug, Clone)]
pub struct Row {
    pub size: u64,
    pub format: Format,
    pub step: Step,
    /// Wall-clock seconds of the whole process (median over repeats).
    pub seconds: f64,
    /// User + system CPU seconds of the process, when GNU time measured it.
    pub cpu_seconds: Option<f64>,
    /// Pass one of a cycle: read, map, hash, compare with the store.
    pub scan_seconds: Option<f64>,
    /// The push phase of a cycle.
    pub push_seconds: Option<f64>,
    /// Records created or updated by the cycle.
    pub pushed: u64,
    pub peak_rss_kb: u64,
    pub export_bytes: u64,
}

impl Row {
    pub fn peak_rss_mb(&self) -> f64 {
        self.peak_rss_kb as f64 / 1024.0
    }

    /// The peak RSS for the table; polling can miss a process that ends
    /// within its first few milliseconds.
    fn peak_rss_cell(&self) -> String {
        if self.peak_rss_kb == 0 {
            "–".into()
        } else {
            format!("{:.1}", self.peak_rss_mb())
        }
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub plan: Plan,
    pub rows: Vec<Row>,
    pub machine: Machine,
    pub load_before: String,
    pub load_after: String,
    pub started: String,
    pub commit: String,
}

/// Everything the plan asks for, in order; what a complete report holds.
pub fn expected_steps(plan: &Plan, size: u64) -> Vec<(Format, Step)> {
    let mut steps = vec![
        (Format::Odata, Step::BareParse),
        (Format::Odata, Step::ReadExport),
        (Format::Odata, Step::BareParseInMemory),
        (Format::Csv, Step::BareParse),
        (Format::Csv, Step::ReadExport),
    ];
    if size <= plan.max_cycle_size {
        steps.extend([
            (Format::Odata, Step::FirstCycle),
            (Format::Odata, Step::NoChange),
            (Format::Odata, Step::OnePercent),
        ]);
        for &latency_ms in &plan.latencies_ms {
            for &concurrency in &plan.concurrencies {
                steps.push((
                    Format::Odata,
                    Step::Push {
                        latency_ms,
                        concurrency,
                    },
                ));
            }
        }
    }
    steps
}

/// Run the whole plan. `progress` hears what is happening.
pub fn run(plan: &Plan, bins: &Binaries, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Report> {
    let load_before = load_average();
    let started = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    fs::create_dir_all(&plan.work_dir)
        .with_context(|| format!("create {}", plan.work_dir.display()))?;
    let mut rows = Vec::new();
    for &size in &plan.sizes {
        let dir = plan.work_dir.join(format!("n{size}"));
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
        }
        fs::create_dir_all(&dir)?;
        let mut sized = SizeRun {
            plan,
            bins,
            size,
            dir: dir.clone(),
            changed: 0,
            rows: &mut rows,
            progress: &mut *progress,
        };
        sized.run()?;
        fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    Ok(Report {
        plan: plan.clone(),
        rows,
        machine: Machine::probe(),
        load_before,
        load_after: load_average(),
        started,
        commit: git_commit(),
    })
}

struct SizeRun<'r> {
    plan: &'r Plan,
    bins: &'r Binaries,
    size: u64,
    dir: PathBuf,
    /// The `--changed` of the export on disk.
    changed: u64,
    rows: &'r mut Vec<Row>,
    progress: &'r mut dyn FnMut(&str),
}

impl SizeRun<'_> {
    fn odata(&self) -> PathBuf {
        self.dir.join("export")
    }

    fn csv(&self) -> PathBuf {
        self.dir.join("export.csv")
    }

    fn say(&mut self, text: &str) {
        (self.progress)(&format!("[{} records] {text}", self.size));
    }

    fn run(&mut self) -> anyhow::Result<()> {
        self.say("generating the exports");
        let odata_bytes = self.generate(Format::Odata, 0)?;
        let csv_bytes = self.generate(Format::Csv, 0)?;

        for (format, path, bytes) in [
            (Format::Odata, self.odata(), odata_bytes),
            (Format::Csv, self.csv(), csv_bytes),
        ] {
            let readers: &[(Step, &str)] = match format {
                Format::Odata => &[
                    (Step::BareParse, "serde-json"),
                    (Step::ReadExport, "export"),
                    (Step::BareParseInMemory, "serde-json-pages"),
                ],
                Format::Csv => &[(Step::BareParse, "csv"), (Step::ReadExport, "export")],
            };
            for &(step, reader) in readers {
                self.say(&format!("{} {}", format.label(), step.label()));
                let row = self.read_only(format, step, reader, &path, bytes)?;
                self.rows.push(row);
            }
        }
        fs::remove_file(self.csv())?;
        if self.size > self.plan.max_cycle_size {
            self.say("larger than --max-cycle-size: cycles skipped");
            return Ok(());
        }

        let emulator = Emulator::start(
            &self.bins.pc_emulator,
            0,
            None,
            &self.dir.join("emulator-0ms.log"),
        )?;
        let workspace = Workspace::new(&self.dir, &self.odata())?;
        workspace.configure(&emulator.api_url(), self.plan.cycle_concurrency)?;

        self.say("first cycle");
        let first = self.cycle(&workspace, Step::FirstCycle, odata_bytes)?;
        ensure!(
            first.created == self.size && first.failed == 0,
            "first cycle: expected {} created, got {first:?}",
            self.size
        );
        self.rows.push(first.row);

        self.say("no-change cycle");
        let mut runs = Vec::new();
        for _ in 0..self.plan.repeats.max(1) {
            let run = self.cycle(&workspace, Step::NoChange, odata_bytes)?;
            ensure!(
                run.unchanged == self.size && run.pushed() == 0 && run.failed == 0,
                "no-change cycle: expected {} unchanged and nothing sent, got {run:?}",
                self.size
            );
            runs.push(run.row);
        }
        self.rows.push(median_row(runs));

        let one_percent = (self.size / 100).max(1);
        self.say(&format!("1%-changed cycle ({one_percent} records)"));
        let bytes = self.generate(Format::Odata, self.changed + one_percent)?;
        let run = self.cycle(&workspace, Step::OnePercent, bytes)?;
        ensure!(
            run.updated == one_percent && run.failed == 0,
            "1% cycle: expected {one_percent} updated, got {run:?}"
        );
        self.rows.push(run.row);

        for &latency_ms in &self.plan.latencies_ms {
            // The referrals the coming pushes touch, copied into an emulator
            // with the added latency; the store's eTags stay valid.
            let slow;
            let target = if latency_ms == 0 {
                &emulator
            } else {
                let count = self.plan.push_records * self.plan.concurrencies.len() as u64;
                let seed = self.seed_for_next(&emulator, &workspace, count)?;
                slow = Emulator::start(
                    &self.bins.pc_emulator,
                    latency_ms,
                    Some(&seed),
                    &self.dir.join(format!("emulator-{latency_ms}ms.log")),
                )?;
                &slow
            };
            for &concurrency in &self.plan.concurrencies {
                let step = Step::Push {
                    latency_ms,
                    concurrency,
                };
                self.say(&step.label());
                workspace.configure(&target.api_url(), concurrency)?;
                let bytes = self.generate(Format::Odata, self.changed + self.plan.push_records)?;
                let run = self.cycle(&workspace, step, bytes)?;
                ensure!(
                    run.updated == self.plan.push_records && run.failed == 0,
                    "{}: expected {} updated, got {run:?}",
                    step.label(),
                    self.plan.push_records
                );
                self.rows.push(run.row);
            }
        }
        Ok(())
    }

    fn generate(&mut self, format: Format, changed: u64) -> anyhow::Result<u64> {
        let (name, out) = match format {
            Format::Odata => ("odata", self.odata()),
            Format::Csv => ("csv", self.csv()),
        };
        let output = Command::new(&self.bins.gen_export)
            .args(["generate", "--format", name])
            .arg("--records")
            .arg(self.size.to_string())
            .arg("--seed")
            .arg(self.plan.seed.to_string())
            .arg("--page-size")
            .arg(self.plan.page_size.to_string())
            .arg("--changed")
            .arg(changed.to_string())
            .arg("--out")
            .arg(&out)
            .output()
            .context("run gen-export")?;
        ensure!(
            output.status.success(),
            "gen-export generate failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let summary: Value =
            serde_json::from_slice(&output.stdout).context("gen-export printed no summary")?;
        // The first read of a file just written costs more system time than
        // later ones (~0.4 s for 2 GB here); read every export once, so that
        // each step measured reads one the page cache holds alike.
        read_through(&out).with_context(|| format!("read {} once", out.display()))?;
        if format == Format::Odata {
            self.changed = changed;
        }
        summary["bytes"]
            .as_u64()
            .ok_or_else(|| anyhow!("gen-export summary without bytes: {summary}"))
    }

    fn read_only(
        &mut self,
        format: Format,
        step: Step,
        reader: &str,
        path: &Path,
        bytes: u64,
    ) -> anyhow::Result<Row> {
        let mut runs = Vec::new();
        for _ in 0..self.plan.repeats.max(1) {
            let mut job = Job::new(&self.bins.gen_export);
            job.args(["read", "--with", reader]).arg(path);
            let stdout = self.dir.join("read.out");
            let measured = job.measure(&stdout, &self.dir.join("read.err"))?;
            ensure!(
                measured.status.success(),
                "gen-export read --with {reader} failed: {}",
                fs::read_to_string(self.dir.join("read.err")).unwrap_or_default()
            );
            let summary: Value = serde_json::from_str(&fs::read_to_string(&stdout)?)
                .context("gen-export read printed no summary")?;
            ensure!(
                summary["records"].as_u64() == Some(self.size),
                "gen-export read --with {reader}: expected {} records, got {summary}",
                self.size
            );
            runs.push(Row {
                size: self.size,
                format,
                step,
                seconds: measured.seconds,
                cpu_seconds: measured.cpu_seconds,
                scan_seconds: None,
                push_seconds: None,
                pushed: 0,
                peak_rss_kb: measured.peak_rss_kb,
                export_bytes: bytes,
            });
        }
        Ok(median_row(runs))
    }

    fn cycle(&mut self, workspace: &Workspace, step: Step, bytes: u64) -> anyhow::Result<Cycle> {
        let log = self.dir.join("sync.log");
        let mut job = Job::new(&self.bins.referral_sync);
        job.arg("--config")
            .arg(&workspace.config)
            .arg("sync")
            .env("NO_COLOR", "1");
        let measured = job.measure(Path::new("/dev/null"), &log)?;
        let cycle = Cycle::from_log(&log, measured.status, step)
            .with_context(|| format!("{} ({} records)", step.label(), self.size))?;
        Ok(Cycle {
            row: Row {
                size: self.size,
                format: Format::Odata,
                step,
                seconds: measured.seconds,
                cpu_seconds: measured.cpu_seconds,
                peak_rss_kb: measured.peak_rss_kb,
                export_bytes: bytes,
                ..cycle.row
            },
            ..cycle
        })
    }

    /// A seed file holding, as `emulator` has them, the referrals of the
    /// next `count` records the exports will change.
    fn seed_for_next(
        &mut self,
        emulator: &Emulator,
        workspace: &Workspace,
        count: u64,
    ) -> anyhow::Result<PathBuf> {
        let output = Command::new(&self.bins.gen_export)
            .args(["ids", "--records"])
            .arg(self.size.to_string())
            .arg("--seed")
            .arg(self.plan.seed.to_string())
            .arg("--from")
            .arg(self.changed.to_string())
            .arg("--to")
            .arg((self.changed + count.min(self.size)).to_string())
            .output()
            .context("run gen-export ids")?;
        ensure!(
            output.status.success(),
            "gen-export ids failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let store = rusqlite::Connection::open_with_flags(
            &workspace.store,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let mut lookup = store.prepare("SELECT referral_id FROM records WHERE external_id = ?1")?;
        let mut referrals = Vec::new();
        for external_id in String::from_utf8(output.stdout)?.lines() {
            let referral_id: String = lookup
                .query_row([external_id], |row| row.get(0))
                .with_context(|| format!("no referral id stored for {external_id}"))?;
            let (status, referral) =
                emulator.admin_get(&format!("/_admin/referrals/{referral_id}"))?;
            ensure!(status == 200, "referral {referral_id}: {status} {referral}");
            referrals.push(referral);
        }
        let path = self.dir.join("slow-seed.json");
        fs::write(&path, serde_json::to_vec(&referrals)?)?;
        Ok(path)
    }
}

/// The median by wall time (the lower middle of an even count).
fn median_row(mut runs: Vec<Row>) -> Row {
    runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let middle = (runs.len() - 1) / 2;
    runs.swap_remove(middle)
}

/// What a `referral-sync sync` run reported in its JSON log.
#[derive(Debug)]
struct Cycle {
    row: Row,
    seen: u64,
    unchanged: u64,
    created: u64,
    updated: u64,
    failed: u64,
    invalid: u64,
}

impl Cycle {
    fn pushed(&self) -> u64 {
        self.created + self.updated
    }

    /// Phase times from the timestamps of `cycle started`, `export read`
    /// and `cycle finished`; counts from `cycle finished`.
    fn from_log(log: &Path, status: ExitStatus, step: Step) -> anyhow::Result<Cycle> {
        let reader = BufReader::new(File::open(log)?);
        let (mut started, mut read, mut finished) = (None, None, None);
        let mut summary = Value::Null;
        let mut errors = Vec::new();
        for line in reader.lines() {
            let line = line?;
            // Records are logged one line each; skip them unparsed.
            let wanted = [
                "\"cycle started\"",
                "\"export read\"",
                "\"cycle finished",
                "\"ERROR\"",
                "\"cycle failed\"",
            ];
            if !wanted.iter().any(|marker| line.contains(marker)) {
                continue;
            }
            let event: Value = serde_json::from_str(&line)
                .with_context(|| format!("{}: not a JSON log line: {line}", log.display()))?;
            let at = event["timestamp"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            let message = event["message"].as_str().unwrap_or_default();
            match message {
                "cycle started" => started = at,
                "export read" => read = at,
                m if m.starts_with("cycle finished") => {
                    finished = at;
                    summary = event.clone();
                }
                _ => errors.push(line.clone()),
            }
        }
        let (Some(started), Some(read), Some(finished)) = (started, read, finished) else {
            bail!(
                "the cycle did not finish (exit {status}); see {}: {}",
                log.display(),
                errors.join("\n")
            );
        };
        let seconds = |from: chrono::DateTime<chrono::FixedOffset>,
                       to: chrono::DateTime<chrono::FixedOffset>| {
            (to - from).num_microseconds().unwrap_or(0) as f64 / 1e6
        };
        let count = |key: &str| summary[key].as_u64().unwrap_or(0);
        let cycle = Cycle {
            seen: count("seen"),
            unchanged: count("unchanged"),
            created: count("created"),
            updated: count("updated"),
            failed: count("failed"),
            invalid: count("invalid"),
            row: Row {
                size: 0,
                format: Format::Odata,
                step,
                seconds: 0.0,
                cpu_seconds: None,
                scan_seconds: Some(seconds(started, read)),
                push_seconds: Some(seconds(read, finished)),
                pushed: count("created") + count("updated"),
                peak_rss_kb: 0,
                export_bytes: 0,
            },
        };
        if !status.success() {
            bail!(
                "referral-sync sync exited with {status}: {cycle:?}; see {}",
                log.display()
            );
        }
        Ok(cycle)
    }
}

// ---------------------------------------------------------------------------
// Processes.

/// A command run to completion with its wall time and peak RSS measured.
struct Job {
    program: PathBuf,
    args: Vec<std::ffi::OsString>,
    envs: Vec<(String, String)>,
}

struct Measured {
    status: ExitStatus,
    seconds: f64,
    cpu_seconds: Option<f64>,
    peak_rss_kb: u64,
}

impl Job {
    fn new(program: &Path) -> Job {
        Job {
            program: program.to_path_buf(),
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    fn arg(&mut self, arg: impl AsRef<std::ffi::OsStr>) -> &mut Job {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(&mut self, args: I) -> &mut Job {
        for arg in args {
            self.arg(arg);
        }
        self
    }

    fn env(&mut self, key: &str, value: &str) -> &mut Job {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Run with standard output and error to files. The peak RSS comes
    /// from GNU time when it is installed, else from polling the process's
    /// `VmHWM` (which can miss growth in the last few milliseconds).
    fn measure(&self, stdout: &Path, stderr: &Path) -> anyhow::Result<Measured> {
        let gnu_time = Path::new("/usr/bin/time");
        let rss_file = stderr.with_extension("rss");
        let mut command = if gnu_time.exists() {
            let mut command = Command::new(gnu_time);
            command
                .arg("-f")
                .arg("%M %U %S")
                .arg("-o")
                .arg(&rss_file)
                .arg(&self.program);
            command
        } else {
            Command::new(&self.program)
        };
        command
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(File::create(stdout)?)
            .stderr(File::create(stderr)?);
        let started = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("start {}", self.program.display()))?;
        let mut polled_kb = 0;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            polled_kb = polled_kb.max(vm_hwm_kb(child.id()).unwrap_or(0));
            std::thread::sleep(Duration::from_millis(5));
        };
        let seconds = started.elapsed().as_secs_f64();
        let (peak_rss_kb, cpu_seconds) = if gnu_time.exists() {
            let text = fs::read_to_string(&rss_file)
                .with_context(|| format!("read {}", rss_file.display()))?;
            // GNU time writes "Command exited with non-zero status N" first
            // when the command fails; the figures are on the last line.
            let figures: Vec<f64> = text
                .lines()
                .last()
                .map(|line| {
                    line.split_whitespace()
                        .filter_map(|f| f.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            let [rss, user, system] = figures[..] else {
                bail!(
                    "{}: expected peak RSS, user and system time in {text:?}",
                    rss_file.display()
                );
            };
            (rss as u64, Some(user + system))
        } else {
            (polled_kb, None)
        };
        Ok(Measured {
            status,
            seconds,
            cpu_seconds,
            peak_rss_kb,
        })
    }
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A running `pc-emulator`; stopped on drop.
pub struct Emulator {
    child: Child,
    base: String,
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Emulator {
    fn start(
        bin: &Path,
        latency_ms: u64,
        seed: Option<&Path>,
        log: &Path,
    ) -> anyhow::Result<Emulator> {
        let mut command = Command::new(bin);
        command
            .args([
                "--listen",
                "127.0.0.1:0",
                "--token",
                TOKEN,
                "--journal-limit",
                "1000",
            ])
            .arg("--latency-ms")
            .arg(latency_ms.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(log)?);
        if let Some(seed) = seed {
            command.arg("--seed").arg(seed);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            BufReader::new(stdout).read_line(&mut line)?;
        }
        let Some(base) = line.trim().strip_prefix("listening on ").map(str::to_owned) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "pc-emulator did not start: {line:?}; {}",
                fs::read_to_string(log).unwrap_or_default()
            );
        };
        Ok(Emulator {
            child,
            base,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            http: reqwest::Client::new(),
        })
    }

    fn api_url(&self) -> String {
        format!("{}/v1.0", self.base)
    }

    fn admin_get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        self.runtime.block_on(async {
            let response = self.http.get(&url).send().await?;
            let status = response.status().as_u16();
            let body = response.json::<Value>().await.unwrap_or(Value::Null);
            Ok((status, body))
        })
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A configuration, token and store for one size.
struct Workspace {
    config: PathBuf,
    export: PathBuf,
    store: PathBuf,
    token: PathBuf,
}

impl Workspace {
    fn new(dir: &Path, export: &Path) -> anyhow::Result<Workspace> {
        let token = dir.join("token");
        fs::write(&token, format!("{TOKEN}\n"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&token, fs::Permissions::from_mode(0o600))?;
        }
        Ok(Workspace {
            config: dir.join("referral-sync.toml"),
            export: export.to_path_buf(),
            store: dir.join("store.db"),
            token,
        })
    }

    fn configure(&self, api_url: &str, concurrency: usize) -> anyhow::Result<()> {
        let text = format!(
            r#"[export]
path = "{export}"
entity = "opportunity"

[store]
path = "{store}"

[api]
base_url = "{api_url}"
concurrency = {concurrency}

[auth]
token_file = "{token}"

[sync]
default_currency = "USD"
create_missing = true

[create]
type = "Independent"
qualification = "SalesQualified"
consent_to_share_info_with_others = false
consent_to_contact = true

[log]
format = "json"
level = "info"
"#,
            export = self.export.display(),
            store = self.store.display(),
            token = self.token.display(),
        );
        fs::write(&self.config, text)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The machine.

#[derive(Debug, Clone)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
}

impl Machine {
    fn probe() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, model)| model.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kb: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            memory_gib: memory_kb / (1024.0 * 1024.0),
        }
    }
}

pub fn load_average() -> String {
    let mut text = String::new();
    let _ = File::open("/proc/loadavg").and_then(|mut f| f.read_to_string(&mut text));
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

// ---------------------------------------------------------------------------
// The report.

impl Report {
    fn find(&self, size: u64, format: Format, step: Step) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.size == size && r.format == format && r.step == step)
    }

    /// The results section of BENCHMARKS.md, between the markers.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let plan = &self.plan;
        let _ = writeln!(out, "{RESULTS_BEGIN}");
        let _ = writeln!(
            out,
            "_Written by `scripts/bench.sh` on {} at commit `{}`._\n",
            self.started, self.commit
        );
        let _ = writeln!(
            out,
            "Machine: {} CPUs (`nproc`), {:.1} GiB memory, {}. Load average before the run: {}; after: {}. \
             **The machine is shared with other builds**: figures move by 10–30% from run to run; compare ratios, not absolute times.\n",
            self.machine.cpus,
            self.machine.memory_gib,
            self.machine.cpu_model,
            self.load_before,
            self.load_after
        );
        let _ = writeln!(
            out,
            "Plan: sizes {}, OData pages of {} records, median of {} run(s) for the parse-only reads and the no-change cycle, \
             {} changed records per push measurement, cycles other than the push matrix at concurrency {}.\n",
            plan.sizes
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            plan.page_size,
            plan.repeats.max(1),
            plan.push_records,
            plan.cycle_concurrency,
        );

        let _ = writeln!(out, "### Reading and cycles\n");
        let _ = writeln!(
            out,
            "| Records | Export | Step | Wall (s) | × limit | CPU (s) | CPU × limit | Scan (s) | Push (s) | Sent | Peak RSS (MB) |"
        );
        let _ = writeln!(
            out,
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for row in self
            .rows
            .iter()
            .filter(|r| !matches!(r.step, Step::Push { .. }))
        {
            let limit = self.find(row.size, row.format, Step::BareParse);
            let ratio = limit
                .filter(|l| l.seconds > 0.0)
                .map(|l| format!("{:.2}", row.seconds / l.seconds))
                .unwrap_or_else(|| "–".into());
            let cpu_ratio = match (row.cpu_seconds, limit.and_then(|l| l.cpu_seconds)) {
                (Some(cpu), Some(limit)) if limit > 0.0 => format!("{:.2}", cpu / limit),
                _ => "–".into(),
            };
            let _ = writeln!(
                out,
                "| {} | {} ({:.0} MB) | {} | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
                thousands(row.size),
                row.format.label(),
                row.export_bytes as f64 / 1e6,
                row.step.label(),
                row.seconds,
                ratio,
                optional_seconds(row.cpu_seconds),
                cpu_ratio,
                optional_seconds(row.scan_seconds),
                optional_seconds(row.push_seconds),
                if row.scan_seconds.is_some() {
                    thousands(row.pushed)
                } else {
                    "–".into()
                },
                row.peak_rss_cell()
            );
        }

        let pushes: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| matches!(r.step, Step::Push { .. }))
            .collect();
        if !pushes.is_empty() {
            let _ = writeln!(out, "\n### Push throughput\n");
            let _ = writeln!(
                out,
                "| Records | Latency (ms) | Concurrency | Sent | Push (s) | Rate (/s) | Bound: concurrency ÷ latency (/s) | % of bound | Wall (s) | Peak RSS (MB) |"
            );
            let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            for row in pushes {
                let Step::Push {
                    latency_ms,
                    concurrency,
                } = row.step
                else {
                    continue;
                };
                let push = row.push_seconds.unwrap_or(0.0);
                let rate = if push > 0.0 {
                    row.pushed as f64 / push
                } else {
                    0.0
                };
                let (bound, share) = if latency_ms > 0 {
                    let bound = concurrency as f64 * 1000.0 / latency_ms as f64;
                    (
                        format!("{bound:.0}"),
                        format!("{:.0}%", 100.0 * rate / bound),
                    )
                } else {
                    ("–".into(), "–".into())
                };
                let _ = writeln!(
                    out,
                    "| {} | {latency_ms} | {concurrency} | {} | {push:.2} | {rate:.0} | {bound} | {share} | {:.2} | {} |",
                    thousands(row.size),
                    thousands(row.pushed),
                    row.seconds,
                    row.peak_rss_cell()
                );
            }
        }

        let _ = writeln!(out, "\n### Targets\n");
        for line in self.target_checks() {
            let _ = writeln!(out, "- {line}");
        }
        let _ = writeln!(out, "\n{RESULTS_END}");
        out
    }

    /// One line per target and size: met or missed, with the figures.
    pub fn target_checks(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let verdict = |ok: bool| if ok { "**met**" } else { "**missed**" };
        for &size in &self.plan.sizes {
            let n = thousands(size);
            let limit = self.find(size, Format::Odata, Step::BareParse);
            let own_reader = self.find(size, Format::Odata, Step::ReadExport);
            let no_change = self.find(size, Format::Odata, Step::NoChange);
            let one = self.find(size, Format::Odata, Step::OnePercent);
            let against = |cycle: &Row, read: &Row| {
                let cpu = match (cycle.cpu_seconds, read.cpu_seconds) {
                    (Some(cycle), Some(read)) if read > 0.0 => format!(
                        "; CPU time {cycle:.2} s vs {read:.2} s = {:.2}×",
                        cycle / read
                    ),
                    _ => String::new(),
                };
                format!(
                    "wall {:.2} s vs {:.2} s = {:.2}×{cpu}",
                    cycle.seconds,
                    read.seconds,
                    cycle.seconds / read.seconds
                )
            };
            if let (Some(limit), Some(no_change)) = (limit, no_change) {
                let ratio = no_change.seconds / limit.seconds;
                // Measured against the daemon's own reader too: since that
                // reads pages from memory it is faster than the limit, and
                // the rest of the cycle stands out against it.
                let own = own_reader
                    .map(|read| {
                        format!(
                            " (against `read_export` alone: {})",
                            against(no_change, read)
                        )
                    })
                    .unwrap_or_default();
                lines.push(format!(
                    "{n}: no-change cycle ≤ 1.5 × parse-only (streaming serde_json): {}{own} — {}",
                    against(no_change, limit),
                    verdict(ratio <= 1.5)
                ));
            }
            if let (Some(no_change), Some(one)) = (no_change, one) {
                let push = one.push_seconds.unwrap_or(0.0);
                let bound = no_change.seconds + push;
                // 5% of the no-change cycle: the noise of a shared machine.
                lines.push(format!(
                    "{n}: 1%-changed cycle ≤ no-change + push: {:.2} s vs {:.2} s + {push:.2} s = {bound:.2} s — {}",
                    one.seconds,
                    no_change.seconds,
                    verdict(one.seconds <= bound + 0.05 * no_change.seconds)
                ));
            }
            let peak = self
                .rows
                .iter()
                .filter(|r| r.size == size && r.scan_seconds.is_some())
                .max_by_key(|r| r.peak_rss_kb);
            if let Some(peak) = peak {
                lines.push(format!(
                    "{n}: peak RSS of a cycle ≤ 150 MB: {:.1} MB ({}) — {}",
                    peak.peak_rss_mb(),
                    peak.step.label(),
                    verdict(peak.peak_rss_mb() <= 150.0)
                ));
            }
            for row in self.rows.iter().filter(|r| r.size == size) {
                if let Step::Push {
                    latency_ms,
                    concurrency,
                } = row.step
                    && latency_ms > 0
                {
                    let push = row.push_seconds.unwrap_or(f64::INFINITY);
                    let rate = row.pushed as f64 / push;
                    let bound = concurrency as f64 * 1000.0 / latency_ms as f64;
                    lines.push(format!(
                        "{n}: push at {latency_ms} ms, concurrency {concurrency} ≥ 90% of {bound:.0}/s: {rate:.1}/s = {:.0}% — {}",
                        100.0 * rate / bound,
                        verdict(rate >= 0.9 * bound)
                    ));
                }
            }
        }
        lines
    }
}

/// Read the file at `path`, or every file in the directory at `path`, to
/// the end, keeping nothing.
fn read_through(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        for entry in fs::read_dir(path)? {
            read_through(&entry?.path())?;
        }
        return Ok(());
    }
    std::io::copy(&mut fs::File::open(path)?, &mut std::io::sink())?;
    Ok(())
}

fn optional_seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "–".into(), |s| format!("{s:.2}"))
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// `document` with its results section replaced by `results` (appended
/// when it has none).
pub fn splice_results(document: &str, results: &str) -> String {
    match (document.find(RESULTS_BEGIN), document.find(RESULTS_END)) {
        (Some(begin), Some(end)) if begin < end => format!(
            "{}{}{}",
            &document[..begin],
            results.trim_end(),
            &document[end + RESULTS_END.len()..]
        ),
        _ => format!("{}\n\n{}", document.trim_end(), results),
    }
}
