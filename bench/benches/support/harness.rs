//! The cycle benchmark: synthetic exports of each size in each layout (a
//! single OData file, OData pages, CSV, JSON Lines), read parse-only by the
//! daemon's reader and by the comparators the targets are stated against,
//! then synced for real by the `referral-sync` binary against `pc-emulator`
//! on loopback — a first cycle, a fingerprint-refresh cycle, no-change,
//! one-changed and 1%-changed cycles — and pushes of a fixed number of
//! changed records at each latency and concurrency. Every step runs in its
//! own process, so each has its own peak RSS.
//!
//! Shared by `benches/cycle.rs` (the real run) and `tests/bench_smoke.rs`
//! (a tiny run in CI, so this code keeps working).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use serde_json::Value;

#[path = "../../../tests/common/sibling_bin.rs"]
mod sibling_bin;
use sibling_bin::sibling_bin;

pub const RESULTS_BEGIN: &str = "<!-- results:begin -->";
pub const RESULTS_END: &str = "<!-- results:end -->";

const TOKEN: &str = "bench-token-7d1f0c";

/// The peak RSS every product process must stay under.
pub const RSS_LIMIT_MB: f64 = 150.0;

/// The binaries under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub referral_sync: PathBuf,
    pub pc_emulator: PathBuf,
    pub gen_export: PathBuf,
}

impl Binaries {
    /// `gen-export` of this package, and `referral-sync` and `pc-emulator`
    /// of the workspace's other members.
    pub fn find() -> anyhow::Result<Binaries> {
        Ok(Binaries {
            referral_sync: sibling_bin("referral-sync", "referral-sync").map_err(|e| anyhow!(e))?,
            pc_emulator: sibling_bin("pc-emulator", "pc-emulator").map_err(|e| anyhow!(e))?,
            gen_export: PathBuf::from(env!("CARGO_BIN_EXE_gen-export")),
        })
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub sizes: Vec<u64>,
    /// The layouts, in the order they run; the first of a family runs the
    /// family's first cycle.
    pub layouts: Vec<Layout>,
    /// Records per OData page file.
    pub page_size: u64,
    /// Sizes above this are only read parse-only: their first cycle would
    /// take too long for a routine run.
    pub max_cycle_size: u64,
    /// The sizes at which the push matrix runs (on the OData pages layout).
    pub push_sizes: Vec<u64>,
    /// Changed records pushed in each push measurement.
    pub push_records: u64,
    pub concurrencies: Vec<usize>,
    /// Added latency of the emulator, in milliseconds; 0 included or not.
    pub latencies_ms: Vec<u64>,
    /// Concurrency of the cycles other than the push matrix.
    pub cycle_concurrency: usize,
    /// Runs of each parse-only read and of the no-change cycle; the median
    /// is reported.
    pub repeats: usize,
    pub seed: u64,
    /// Exports, stores and logs go here; each size's files are removed when
    /// the size is done, each export when its layout is done.
    pub work_dir: PathBuf,
}

impl Plan {
    /// The default plan of `scripts/bench.sh`.
    pub fn default_for(work_dir: PathBuf) -> Plan {
        Plan {
            sizes: vec![50_000, 1_000_000],
            layouts: Layout::ALL.to_vec(),
            page_size: 5_000,
            max_cycle_size: 1_000_000,
            push_sizes: vec![50_000],
            push_records: 2_000,
            concurrencies: vec![1, 4, 16],
            latencies_ms: vec![0, 50],
            cycle_concurrency: 16,
            repeats: 3,
            seed: 1,
            work_dir,
        }
    }

    /// The plan as the flags of `scripts/bench.sh` that reproduce it.
    pub fn flags(&self) -> String {
        let join = |items: Vec<String>| items.join(",");
        format!(
            "--sizes {} --layouts {} --page-size {} --max-cycle-size {} --push-sizes {} \
             --push-records {} --concurrency {} --latency {} --cycle-concurrency {} --repeats {} --seed {}",
            join(self.sizes.iter().map(u64::to_string).collect()),
            join(self.layouts.iter().map(|l| l.name().to_owned()).collect()),
            self.page_size,
            self.max_cycle_size,
            if self.push_sizes.is_empty() {
                "none".to_owned()
            } else {
                join(self.push_sizes.iter().map(u64::to_string).collect())
            },
            self.push_records,
            join(self.concurrencies.iter().map(usize::to_string).collect()),
            join(self.latencies_ms.iter().map(u64::to_string).collect()),
            self.cycle_concurrency,
            self.repeats.max(1),
            self.seed,
        )
    }

    fn runs_push(&self, size: u64) -> bool {
        self.push_sizes.contains(&size) && size <= self.max_cycle_size
    }
}

/// How an export is laid out on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layout {
    /// One OData file holding every record, as a Dataverse export job
    /// writes it (~2 GB at a million records).
    OdataFile,
    /// A directory of OData pages of `page_size` records.
    OdataPages,
    Csv,
    Jsonl,
}

impl Layout {
    pub const ALL: [Layout; 4] = [
        Layout::OdataFile,
        Layout::OdataPages,
        Layout::Csv,
        Layout::Jsonl,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Layout::OdataFile => "OData, one file",
            Layout::OdataPages => "OData pages",
            Layout::Csv => "CSV",
            Layout::Jsonl => "JSONL",
        }
    }

    /// The name `--layouts` and `gen-export generate --format` take.
    pub fn name(self) -> &'static str {
        match self {
            Layout::OdataFile => "odata-file",
            Layout::OdataPages => "odata",
            Layout::Csv => "csv",
            Layout::Jsonl => "jsonl",
        }
    }

    pub fn parse(name: &str) -> anyhow::Result<Layout> {
        Layout::ALL
            .into_iter()
            .find(|layout| layout.name() == name)
            .ok_or_else(|| anyhow!("unknown layout {name:?}: odata-file, odata, csv or jsonl"))
    }

    fn file_name(self) -> &'static str {
        match self {
            Layout::OdataFile => "export.json",
            Layout::OdataPages => "export",
            Layout::Csv => "export.csv",
            Layout::Jsonl => "export.jsonl",
        }
    }

    /// `export.format` in the daemon's configuration.
    fn config_format(self) -> &'static str {
        match self {
            Layout::OdataFile | Layout::OdataPages => "odata-json",
            Layout::Csv => "csv",
            Layout::Jsonl => "jsonl",
        }
    }

    /// The parse-only reads of this layout, the daemon's reader first.
    pub fn reads(self) -> &'static [Step] {
        match self {
            Layout::Csv => &[Step::ReadExport, Step::CsvMaps],
            _ => &[
                Step::ReadExport,
                Step::ValueTree,
                Step::IgnoredAny,
                Step::SerdeMaps,
            ],
        }
    }

    /// The comparator "field maps" stands for in this layout.
    pub fn field_maps(self) -> Step {
        match self {
            Layout::Csv => Step::CsvMaps,
            _ => Step::SerdeMaps,
        }
    }

    /// Layouts of one family map to the same documents, so they share an
    /// emulator and a store: switching between them sends nothing. A CSV
    /// view carries fewer columns than the OData records (no address, no
    /// currency code), so it maps to other documents and syncs on its own.
    fn family(self) -> Family {
        match self {
            Layout::Csv => Family::Csv,
            _ => Family::Json,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    Json,
    Csv,
}

/// One step of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `read_export` with a callback that drops each record: the daemon's
    /// own reader, nothing after it.
    ReadExport,
    /// Each file (page, line) in memory, `serde_json::from_slice::<Value>`.
    ValueTree,
    /// Each file (page, line) in memory, `from_slice::<IgnoredAny>`: the
    /// validate-only floor.
    IgnoredAny,
    /// Each file (page) in memory, each record from the slice into a
    /// `Map<String, Value>`; per line for JSONL.
    SerdeMaps,
    /// The csv crate, each row into a field map keyed by header.
    CsvMaps,
    FirstCycle,
    /// The first unchanged cycle after a first cycle or a layout change.
    FingerprintRefresh,
    NoChange,
    OneChanged,
    OnePercent,
    /// A no-change cycle of the export the 1%-changed cycle read, after it:
    /// the same file, as the page cache holds it. What a file costs to read
    /// differs from file to file by more than the 1% of changes costs (the
    /// kernel's copy of one just written: 0.05 s or 0.07 s for the same
    /// 423 MB here), so the 1%-changed cycle is held against this one.
    NoChangeAfter,
    Push {
        latency_ms: u64,
        concurrency: usize,
    },
}

impl Step {
    pub fn label(self) -> String {
        match self {
            Step::ReadExport => "parse only: read_export, no-op callback".into(),
            Step::ValueTree => "parse only: Value tree (from_slice)".into(),
            Step::IgnoredAny => "parse only: validate only (IgnoredAny)".into(),
            Step::SerdeMaps => "parse only: field maps (serde_json)".into(),
            Step::CsvMaps => "parse only: field maps (csv crate)".into(),
            Step::FirstCycle => "first cycle (empty store, creates all)".into(),
            Step::FingerprintRefresh => {
                "fingerprint-refresh cycle (first unchanged cycle of the layout)".into()
            }
            Step::NoChange => "no-change cycle".into(),
            Step::OneChanged => "one-changed cycle".into(),
            Step::OnePercent => "1%-changed cycle".into(),
            Step::NoChangeAfter => "no-change cycle of the 1%-changed export, after it".into(),
            Step::Push {
                latency_ms,
                concurrency,
            } => format!("push, {latency_ms} ms latency, concurrency {concurrency}"),
        }
    }

    /// `gen-export read --with` for a parse-only step.
    fn reader(self) -> Option<&'static str> {
        match self {
            Step::ReadExport => Some("export"),
            Step::ValueTree => Some("value-tree"),
            Step::IgnoredAny => Some("ignored-any"),
            Step::SerdeMaps => Some("serde-maps"),
            Step::CsvMaps => Some("csv-maps"),
            _ => None,
        }
    }

    pub fn is_read(self) -> bool {
        self.reader().is_some()
    }

    /// The comparators, in the order of the table's ratio columns.
    pub const COMPARATORS: [(Step, &'static str); 4] = [
        (Step::ValueTree, "× Value tree"),
        (Step::IgnoredAny, "× validate only"),
        (Step::SerdeMaps, "× field maps (serde_json)"),
        (Step::CsvMaps, "× field maps (csv crate)"),
    ];
}

/// One measured step.
#[derive(Debug, Clone)]
pub struct Row {
    pub size: u64,
    pub layout: Layout,
    pub step: Step,
    /// Wall-clock seconds of the whole process (median over repeats).
    pub seconds: f64,
    /// User + system CPU seconds of the process, when GNU time measured it.
    pub cpu_seconds: Option<f64>,
    /// A parse-only read as timed inside its process (reading the files
    /// included, start-up excluded).
    pub in_process_seconds: Option<f64>,
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
    pub elapsed_seconds: f64,
}

/// Everything the plan asks for, in order; what a complete report holds.
pub fn expected_steps(plan: &Plan, size: u64) -> Vec<(Layout, Step)> {
    let mut steps = Vec::new();
    let cycles = size <= plan.max_cycle_size;
    let mut synced = Vec::new();
    for &layout in &plan.layouts {
        for &step in layout.reads() {
            steps.push((layout, step));
        }
        if !cycles {
            continue;
        }
        if !synced.contains(&layout.family()) {
            synced.push(layout.family());
            steps.push((layout, Step::FirstCycle));
        }
        for step in [
            Step::FingerprintRefresh,
            Step::NoChange,
            Step::OneChanged,
            Step::OnePercent,
            Step::NoChangeAfter,
        ] {
            steps.push((layout, step));
        }
    }
    if plan.runs_push(size) {
        if !synced.contains(&Family::Json) {
            steps.push((Layout::OdataPages, Step::FirstCycle));
        }
        for &latency_ms in &plan.latencies_ms {
            for &concurrency in &plan.concurrencies {
                steps.push((
                    Layout::OdataPages,
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
    ensure!(!plan.sizes.is_empty(), "no sizes to run");
    ensure!(!plan.layouts.is_empty(), "no layouts to run");
    let begun = Instant::now();
    let load_before = load_average();
    let started = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    fs::create_dir_all(&plan.work_dir)
        .with_context(|| format!("create {}", plan.work_dir.display()))?;
    check_disk(plan, progress)?;
    check_memory(plan, progress);
    let mut rows = Vec::new();
    for &size in &plan.sizes {
        let dir = plan.work_dir.join(format!("n{size}"));
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
        }
        fs::create_dir_all(&dir)?;
        {
            let mut sized = SizeRun {
                plan,
                bins,
                size,
                dir: dir.clone(),
                families: BTreeMap::new(),
                rows: &mut rows,
                progress: &mut *progress,
            };
            sized.run()?;
            // The emulators stop here, before their directory goes.
        }
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
        elapsed_seconds: begun.elapsed().as_secs_f64(),
    })
}

/// Bytes a size needs on disk at its peak: the export of the largest
/// layout and the copy written beside it while it is replaced (~2.2 KB a
/// record each for OData), a store per family (~1.4 KB a record) and the
/// first cycle's log (~250 B a record).
fn disk_needed(plan: &Plan, size: u64) -> u64 {
    let families = if plan.layouts.iter().any(|l| l.family() == Family::Csv) {
        2
    } else {
        1
    };
    let cycles = size <= plan.max_cycle_size;
    size * (2 * 2_300 + if cycles { families * 1_500 + 300 } else { 0 })
}

fn check_disk(plan: &Plan, progress: &mut dyn FnMut(&str)) -> anyhow::Result<()> {
    let needed = plan
        .sizes
        .iter()
        .map(|&size| disk_needed(plan, size))
        .max()
        .unwrap_or(0);
    let output = Command::new("df")
        .args(["-Pk"])
        .arg(&plan.work_dir)
        .output()
        .context("run df")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let available_kb: Option<u64> = text
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|field| field.parse().ok());
    let Some(available_kb) = available_kb.filter(|_| output.status.success()) else {
        progress(&format!(
            "could not read the free space of {} from df; going on",
            plan.work_dir.display()
        ));
        return Ok(());
    };
    let available = available_kb * 1024;
    progress(&format!(
        "disk: {:.1} GB free at {}, the largest size needs ~{:.1} GB",
        available as f64 / 1e9,
        plan.work_dir.display(),
        needed as f64 / 1e9
    ));
    ensure!(
        available >= needed,
        "{}: {:.1} GB free, the plan needs ~{:.1} GB at its largest size; free some space or pass --work",
        plan.work_dir.display(),
        available as f64 / 1e9,
        needed as f64 / 1e9
    );
    Ok(())
}

/// The `Value` tree of the single OData file takes ~4.5 times the file
/// (~9.4 GB at a million records): say so up front when the machine has
/// less memory available than that, rather than be killed half way.
fn check_memory(plan: &Plan, progress: &mut dyn FnMut(&str)) {
    if !plan.layouts.contains(&Layout::OdataFile) {
        return;
    }
    let largest = plan.sizes.iter().max().copied().unwrap_or(0);
    let needed_kb = largest * 2_300 * 9 / 2 / 1024;
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let available_kb: Option<u64> = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse().ok());
    if let Some(available_kb) = available_kb
        && available_kb < needed_kb
    {
        progress(&format!(
            "warning: {:.1} GB of memory available; the Value tree of the single OData file at {} records needs ~{:.1} GB",
            available_kb as f64 / 1e6 * 1.024,
            thousands(largest),
            needed_kb as f64 / 1e6 * 1.024
        ));
    }
}

/// An emulator and a store, shared by the layouts of a family.
struct Synced {
    emulator: Emulator,
    workspace: Workspace,
    /// The `--changed` the emulator and store are in step with.
    changed: u64,
    /// Whether the first cycle ran.
    created: bool,
}

struct SizeRun<'r> {
    plan: &'r Plan,
    bins: &'r Binaries,
    size: u64,
    dir: PathBuf,
    families: BTreeMap<Family, Synced>,
    rows: &'r mut Vec<Row>,
    progress: &'r mut dyn FnMut(&str),
}

impl SizeRun<'_> {
    fn export_path(&self, layout: Layout) -> PathBuf {
        self.dir.join(layout.file_name())
    }

    fn say(&mut self, text: &str) {
        (self.progress)(&format!("[{} records] {text}", self.size));
    }

    fn run(&mut self) -> anyhow::Result<()> {
        let cycles = self.size <= self.plan.max_cycle_size;
        if !cycles {
            self.say("larger than --max-cycle-size: parse-only reads alone");
        }
        for &layout in &self.plan.layouts.clone() {
            let changed = self
                .families
                .get(&layout.family())
                .map_or(0, |family| family.changed);
            self.say(&format!("{}: generating the export", layout.label()));
            let bytes = self.generate(layout, changed)?;
            for &step in layout.reads() {
                self.say(&format!("{}: {}", layout.label(), step.label()));
                let row = self.read_only(layout, step, bytes)?;
                self.rows.push(row);
            }
            if cycles {
                self.cycles(layout, bytes)?;
            }
            remove_any(&self.export_path(layout))?;
        }
        if self.plan.runs_push(self.size) {
            self.push_matrix()?;
            remove_any(&self.export_path(Layout::OdataPages))?;
        }
        Ok(())
    }

    /// The family's emulator and store, started on first use.
    fn family(&mut self, layout: Layout) -> anyhow::Result<&mut Synced> {
        let family = layout.family();
        if !self.families.contains_key(&family) {
            let name = format!("{family:?}").to_lowercase();
            let emulator = Emulator::start(
                &self.bins.pc_emulator,
                0,
                None,
                &self.dir.join(format!("emulator-{name}.log")),
            )?;
            let workspace = Workspace::new(&self.dir, &name)?;
            self.families.insert(
                family,
                Synced {
                    emulator,
                    workspace,
                    changed: 0,
                    created: false,
                },
            );
        }
        self.families
            .get_mut(&family)
            .ok_or_else(|| anyhow!("family {family:?} missing"))
    }

    /// Point the family's configuration at `layout`'s export.
    fn configure(
        &mut self,
        layout: Layout,
        concurrency: usize,
        api_url: Option<String>,
    ) -> anyhow::Result<()> {
        let export = self.export_path(layout);
        let synced = self.family(layout)?;
        let api_url = api_url.unwrap_or_else(|| synced.emulator.api_url());
        synced
            .workspace
            .configure(&api_url, &export, layout, concurrency)
    }

    /// The first cycle (when the family has none yet), then the
    /// fingerprint-refresh, no-change, one-changed and 1%-changed cycles.
    fn cycles(&mut self, layout: Layout, bytes: u64) -> anyhow::Result<()> {
        let size = self.size;
        self.configure(layout, self.plan.cycle_concurrency, None)?;
        if !self.family(layout)?.created {
            self.say(&format!("{}: first cycle", layout.label()));
            let first = self.cycle(layout, Step::FirstCycle, bytes)?;
            ensure!(
                first.created == size && first.failed == 0,
                "first cycle ({}): expected {size} created, got {first:?}",
                layout.label()
            );
            self.rows.push(first.row);
            self.family(layout)?.created = true;
        }

        self.say(&format!("{}: fingerprint-refresh cycle", layout.label()));
        let refresh = self.cycle(layout, Step::FingerprintRefresh, bytes)?;
        ensure_unchanged(&refresh, size, layout, Step::FingerprintRefresh)?;
        self.rows.push(refresh.row);

        self.no_change(layout, Step::NoChange, bytes)?;

        let one_percent = (size / 100).max(1);
        let mut last_bytes = bytes;
        for (step, count) in [(Step::OneChanged, 1), (Step::OnePercent, one_percent)] {
            self.say(&format!(
                "{}: {} ({count} records)",
                layout.label(),
                step.label()
            ));
            let changed = self.family(layout)?.changed + count;
            let bytes = self.generate(layout, changed)?;
            last_bytes = bytes;
            let run = self.cycle(layout, step, bytes)?;
            ensure!(
                run.updated == count && run.created == 0 && run.failed == 0,
                "{} ({}): expected {count} updated, got {run:?}",
                step.label(),
                layout.label()
            );
            self.family(layout)?.changed = changed;
            self.rows.push(run.row);
        }

        self.no_change(layout, Step::NoChangeAfter, last_bytes)
    }

    /// The repeats of a cycle of an export the store is settled with; their
    /// median is the row.
    fn no_change(&mut self, layout: Layout, step: Step, bytes: u64) -> anyhow::Result<()> {
        self.say(&format!("{}: {}", layout.label(), step.label()));
        let mut runs = Vec::new();
        for _ in 0..self.plan.repeats.max(1) {
            let run = self.cycle(layout, step, bytes)?;
            ensure_unchanged(&run, self.size, layout, step)?;
            runs.push(run.row);
        }
        self.rows.push(median_row(runs));
        Ok(())
    }

    /// Pushes of `push_records` changed records at each latency and
    /// concurrency, on the OData pages layout.
    fn push_matrix(&mut self) -> anyhow::Result<()> {
        let layout = Layout::OdataPages;
        let changed = self.family(layout)?.changed;
        self.say("push matrix: generating the OData pages");
        let bytes = self.generate(layout, changed)?;
        if !self.family(layout)?.created {
            self.configure(layout, self.plan.cycle_concurrency, None)?;
            self.say("push matrix: first cycle");
            let first = self.cycle(layout, Step::FirstCycle, bytes)?;
            ensure!(
                first.created == self.size && first.failed == 0,
                "first cycle: expected {} created, got {first:?}",
                self.size
            );
            self.rows.push(first.row);
            self.family(layout)?.created = true;
        }
        for &latency_ms in &self.plan.latencies_ms.clone() {
            // The referrals the coming pushes touch, copied into an emulator
            // with the added latency; the store's eTags stay valid.
            let slow = if latency_ms == 0 {
                None
            } else {
                let count = self.plan.push_records * self.plan.concurrencies.len() as u64;
                let seed = self.seed_for_next(layout, count)?;
                Some(Emulator::start(
                    &self.bins.pc_emulator,
                    latency_ms,
                    Some(&seed),
                    &self.dir.join(format!("emulator-{latency_ms}ms.log")),
                )?)
            };
            let api_url = slow.as_ref().map(Emulator::api_url);
            for &concurrency in &self.plan.concurrencies.clone() {
                let step = Step::Push {
                    latency_ms,
                    concurrency,
                };
                self.say(&step.label());
                self.configure(layout, concurrency, api_url.clone())?;
                let changed = self.family(layout)?.changed + self.plan.push_records;
                let bytes = self.generate(layout, changed)?;
                let run = self.cycle(layout, step, bytes)?;
                ensure!(
                    run.updated == self.plan.push_records && run.failed == 0,
                    "{}: expected {} updated, got {run:?}",
                    step.label(),
                    self.plan.push_records
                );
                self.family(layout)?.changed = changed;
                self.rows.push(run.row);
            }
        }
        Ok(())
    }

    /// Write `layout`'s export at `--changed changed`; its size in bytes.
    fn generate(&mut self, layout: Layout, changed: u64) -> anyhow::Result<u64> {
        let out = self.export_path(layout);
        let output = Command::new(&self.bins.gen_export)
            .args(["generate", "--format", layout.name()])
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
        // each step measured reads one the page cache holds alike. And write
        // it to disk first: otherwise the kernel writes its pages back about
        // 30 s later (`vm.dirty_expire_centisecs`), in the middle of whichever
        // step runs then — as it would not for an export another job wrote
        // minutes before the daemon's poll.
        read_through(&out).with_context(|| format!("read {} once", out.display()))?;
        summary["bytes"]
            .as_u64()
            .ok_or_else(|| anyhow!("gen-export summary without bytes: {summary}"))
    }

    fn read_only(&mut self, layout: Layout, step: Step, bytes: u64) -> anyhow::Result<Row> {
        let reader = step
            .reader()
            .ok_or_else(|| anyhow!("{step:?} is not a read"))?;
        let path = self.export_path(layout);
        let mut runs = Vec::new();
        for _ in 0..self.plan.repeats.max(1) {
            let mut job = Job::new(&self.bins.gen_export);
            job.args(["read", "--with", reader]).arg(&path);
            let stdout = self.dir.join("read.out");
            let measured = job.measure(&stdout, &self.dir.join("read.err"))?;
            ensure!(
                measured.status.success(),
                "gen-export read --with {reader} {} failed: {}",
                path.display(),
                fs::read_to_string(self.dir.join("read.err")).unwrap_or_default()
            );
            let summary: Value = serde_json::from_str(&fs::read_to_string(&stdout)?)
                .context("gen-export read printed no summary")?;
            ensure!(
                summary["records"].as_u64() == Some(self.size),
                "gen-export read --with {reader} {}: expected {} records, got {summary}",
                path.display(),
                self.size
            );
            runs.push(Row {
                size: self.size,
                layout,
                step,
                seconds: measured.seconds,
                cpu_seconds: measured.cpu_seconds,
                in_process_seconds: summary["seconds"].as_f64(),
                scan_seconds: None,
                push_seconds: None,
                pushed: 0,
                peak_rss_kb: measured.peak_rss_kb,
                export_bytes: bytes,
            });
        }
        Ok(median_row(runs))
    }

    fn cycle(&mut self, layout: Layout, step: Step, bytes: u64) -> anyhow::Result<Cycle> {
        let log = self.dir.join("sync.log");
        let size = self.size;
        let config = self.family(layout)?.workspace.config.clone();
        let mut job = Job::new(&self.bins.referral_sync);
        job.arg("--config")
            .arg(&config)
            .arg("sync")
            .env("NO_COLOR", "1");
        let measured = job.measure(Path::new("/dev/null"), &log)?;
        let cycle = Cycle::from_log(&log, measured.status, step)
            .with_context(|| format!("{} ({}, {size} records)", step.label(), layout.label()))?;
        Ok(Cycle {
            row: Row {
                size,
                layout,
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

    /// A seed file holding, as the family's emulator has them, the
    /// referrals of the next `count` records the exports will change.
    fn seed_for_next(&mut self, layout: Layout, count: u64) -> anyhow::Result<PathBuf> {
        let size = self.size;
        let seed = self.plan.seed;
        let gen_export = self.bins.gen_export.clone();
        let path = self.dir.join("slow-seed.json");
        let synced = self.family(layout)?;
        let output = Command::new(&gen_export)
            .args(["ids", "--records"])
            .arg(size.to_string())
            .arg("--seed")
            .arg(seed.to_string())
            .arg("--from")
            .arg(synced.changed.to_string())
            .arg("--to")
            .arg((synced.changed + count.min(size)).to_string())
            .output()
            .context("run gen-export ids")?;
        ensure!(
            output.status.success(),
            "gen-export ids failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let store = rusqlite::Connection::open_with_flags(
            &synced.workspace.store,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let mut lookup = store.prepare("SELECT referral_id FROM records WHERE external_id = ?1")?;
        let mut referrals = Vec::new();
        for external_id in String::from_utf8(output.stdout)?.lines() {
            let referral_id: String = lookup
                .query_row([external_id], |row| row.get(0))
                .with_context(|| format!("no referral id stored for {external_id}"))?;
            let (status, referral) = synced
                .emulator
                .admin_get(&format!("/_admin/referrals/{referral_id}"))?;
            ensure!(status == 200, "referral {referral_id}: {status} {referral}");
            referrals.push(referral);
        }
        fs::write(&path, serde_json::to_vec(&referrals)?)?;
        Ok(path)
    }
}

fn ensure_unchanged(run: &Cycle, size: u64, layout: Layout, step: Step) -> anyhow::Result<()> {
    ensure!(
        run.unchanged == size && run.pushed() == 0 && run.failed == 0,
        "{} ({}): expected {size} unchanged and nothing sent, got {run:?}",
        step.label(),
        layout.label()
    );
    Ok(())
}

fn remove_any(path: &Path) -> anyhow::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.with_context(|| format!("remove {}", path.display()))
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
                layout: Layout::OdataPages,
                in_process_seconds: None,
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

/// A configuration, token and store for one family of one size.
struct Workspace {
    config: PathBuf,
    store: PathBuf,
    token: PathBuf,
}

impl Workspace {
    fn new(dir: &Path, name: &str) -> anyhow::Result<Workspace> {
        let token = dir.join(format!("token-{name}"));
        fs::write(&token, format!("{TOKEN}\n"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&token, fs::Permissions::from_mode(0o600))?;
        }
        Ok(Workspace {
            config: dir.join(format!("referral-sync-{name}.toml")),
            store: dir.join(format!("store-{name}.db")),
            token,
        })
    }

    fn configure(
        &self,
        api_url: &str,
        export: &Path,
        layout: Layout,
        concurrency: usize,
    ) -> anyhow::Result<()> {
        let text = format!(
            r#"[export]
path = "{export}"
format = "{format}"
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
            export = export.display(),
            format = layout.config_format(),
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

/// One target of the issue, checked against the rows.
#[derive(Debug, Clone)]
pub struct TargetCheck {
    pub target: String,
    pub size: u64,
    pub layout: Option<Layout>,
    /// The figures the verdict is taken from.
    pub measured: String,
    /// The measured ratio or value, and the bound, as the table shows them.
    pub value: String,
    pub bound: String,
    pub met: bool,
}

impl Report {
    pub fn find(&self, size: u64, layout: Layout, step: Step) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.size == size && r.layout == layout && r.step == step)
    }

    /// The results section of BENCHMARKS.md, between the markers.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let plan = &self.plan;
        let _ = writeln!(out, "{RESULTS_BEGIN}");
        let _ = writeln!(
            out,
            "_Written by `scripts/bench.sh` on {} at commit `{}`, in {:.0} minutes._\n",
            self.started,
            self.commit,
            self.elapsed_seconds / 60.0
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
        let default = Plan::default_for(plan.work_dir.clone());
        let _ = writeln!(
            out,
            "Plan ({}): `scripts/bench.sh {}`. Layouts in the order run; OData pages of {} records; \
             median of {} run(s) for every parse-only read and the no-change cycle; \
             cycles at concurrency {}; push matrix on OData pages at {} with {} changed records per measurement.\n",
            if plan.flags() == default.flags() {
                "the default plan"
            } else {
                "**not the default plan**"
            },
            plan.flags(),
            plan.page_size,
            plan.repeats.max(1),
            plan.cycle_concurrency,
            if plan.push_sizes.is_empty() {
                "no size".to_owned()
            } else {
                plan.push_sizes
                    .iter()
                    .map(|s| thousands(*s))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            plan.push_records,
        );

        let _ = writeln!(out, "### Reading and cycles\n");
        let mut header = String::from("| Records | Layout | Step | Wall (s) |");
        let mut rule = String::from("|---:|---|---|---:|");
        for (_, name) in Step::COMPARATORS {
            let _ = write!(header, " {name} |");
            rule.push_str("---:|");
        }
        header.push_str(
            " CPU (s) | Read in process (s) | Scan (s) | Push (s) | Sent | Peak RSS (MB) |",
        );
        rule.push_str("---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(out, "{header}\n{rule}");
        for row in self
            .rows
            .iter()
            .filter(|r| !matches!(r.step, Step::Push { .. }))
        {
            let _ = write!(
                out,
                "| {} | {} ({:.0} MB) | {} | {:.2} |",
                thousands(row.size),
                row.layout.label(),
                row.export_bytes as f64 / 1e6,
                row.step.label(),
                row.seconds,
            );
            for (comparator, _) in Step::COMPARATORS {
                let cell = self
                    .find(row.size, row.layout, comparator)
                    .filter(|c| c.seconds > 0.0 && row.step != comparator)
                    .map(|c| format!("{:.2}", row.seconds / c.seconds))
                    .unwrap_or_else(|| "–".into());
                let _ = write!(out, " {cell} |");
            }
            let _ = writeln!(
                out,
                " {} | {} | {} | {} | {} | {} |",
                optional_seconds(row.cpu_seconds),
                optional_seconds(row.in_process_seconds),
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
                "| Records | Layout | Latency (ms) | Concurrency | Sent | Push (s) | Rate (/s) | Bound: concurrency ÷ latency (/s) | % of bound | Wall (s) | Peak RSS (MB) |"
            );
            let _ = writeln!(
                out,
                "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
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
                    "| {} | {} | {latency_ms} | {concurrency} | {} | {push:.2} | {rate:.0} | {bound} | {share} | {:.2} | {} |",
                    thousands(row.size),
                    row.layout.label(),
                    thousands(row.pushed),
                    row.seconds,
                    row.peak_rss_cell()
                );
            }
        }

        let checks = self.target_checks();
        let _ = writeln!(out, "\n### Targets\n");
        let _ = writeln!(
            out,
            "Computed by the harness from the rows above (wall time). {} of {} met.\n",
            checks.iter().filter(|c| c.met).count(),
            checks.len()
        );
        let _ = writeln!(
            out,
            "| Target | Records | Layout | Measured | Value | Bound | Verdict |"
        );
        let _ = writeln!(out, "|---|---:|---|---|---:|---:|---|");
        for check in &checks {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                check.target,
                thousands(check.size),
                check.layout.map_or("–", Layout::label),
                check.measured,
                check.value,
                check.bound,
                if check.met { "met" } else { "**missed**" }
            );
        }
        let _ = writeln!(out, "\n{RESULTS_END}");
        out
    }

    /// Every target of the plan that was measured, met or missed.
    pub fn target_checks(&self) -> Vec<TargetCheck> {
        let mut checks = Vec::new();
        for &size in &self.plan.sizes {
            for &layout in &self.plan.layouts {
                self.layout_checks(size, layout, &mut checks);
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
                    checks.push(TargetCheck {
                        target: format!(
                            "push at {latency_ms} ms, concurrency {concurrency} ≥ 90 % of concurrency ÷ latency"
                        ),
                        size,
                        layout: Some(row.layout),
                        measured: format!(
                            "{} sent in {push:.2} s = {rate:.1}/s of {bound:.0}/s",
                            thousands(row.pushed)
                        ),
                        value: format!("{:.0} %", 100.0 * rate / bound),
                        bound: "≥ 90 %".into(),
                        met: rate >= 0.9 * bound,
                    });
                }
            }
        }
        checks
    }

    fn layout_checks(&self, size: u64, layout: Layout, checks: &mut Vec<TargetCheck>) {
        let find = |step| self.find(size, layout, step);
        let ratio = |target: String, row: Option<&Row>, against: Option<&Row>, bound: f64| {
            let (row, against) = (row?, against?);
            let value = row.seconds / against.seconds;
            Some(TargetCheck {
                target,
                size,
                layout: Some(layout),
                measured: format!("{} vs {}", secs(row.seconds), secs(against.seconds)),
                value: format!("{value:.3}×"),
                bound: format!("≤ {bound:.1}×"),
                met: value <= bound,
            })
        };
        let one = find(Step::OneChanged);
        let no_change = find(Step::NoChange);
        let maps = find(layout.field_maps());
        let maps_name = if layout == Layout::Csv {
            "field maps (csv crate)"
        } else if layout == Layout::Jsonl {
            "field maps (serde_json per line)"
        } else {
            "field maps (serde_json)"
        };
        if layout == Layout::OdataFile {
            checks.extend(ratio(
                "one-changed cycle ≤ 0.5 × Value tree (from_slice)".into(),
                one,
                find(Step::ValueTree),
                0.5,
            ));
            checks.extend(ratio(
                "one-changed cycle ≤ 3 × validate only (IgnoredAny)".into(),
                one,
                find(Step::IgnoredAny),
                3.0,
            ));
        }
        if matches!(layout, Layout::Csv | Layout::Jsonl) {
            checks.extend(ratio(
                format!("no-change cycle ≤ 1.0 × {maps_name}"),
                no_change,
                maps,
                1.0,
            ));
        }
        checks.extend(ratio(
            format!("reader alone (read_export) ≤ 1.0 × {maps_name}"),
            find(Step::ReadExport),
            maps,
            1.0,
        ));
        // Every process of the product: its reader and every cycle.
        let peak = self
            .rows
            .iter()
            .filter(|r| {
                r.size == size
                    && r.layout == layout
                    && (r.scan_seconds.is_some() || r.step == Step::ReadExport)
                    && !matches!(r.step, Step::Push { .. })
            })
            .max_by_key(|r| r.peak_rss_kb);
        if let Some(peak) = peak {
            checks.push(TargetCheck {
                target: format!("peak RSS ≤ {RSS_LIMIT_MB:.0} MB (read_export and every cycle)"),
                size,
                layout: Some(layout),
                measured: format!(
                    "highest: {}, export {:.0} MB",
                    peak.step.label(),
                    peak.export_bytes as f64 / 1e6
                ),
                value: format!("{:.1} MB", peak.peak_rss_mb()),
                bound: format!("≤ {RSS_LIMIT_MB:.0} MB"),
                met: peak.peak_rss_mb() <= RSS_LIMIT_MB,
            });
        }
        let same_file = find(Step::NoChangeAfter).or(no_change);
        if let (Some(no_change), Some(one_percent)) = (same_file, find(Step::OnePercent)) {
            let push = one_percent.push_seconds.unwrap_or(0.0);
            let bound = no_change.seconds + push;
            checks.push(TargetCheck {
                target: "1%-changed cycle ≤ no-change cycle of its export + its push time".into(),
                size,
                layout: Some(layout),
                measured: format!(
                    "{} vs {} + {}",
                    secs(one_percent.seconds),
                    secs(no_change.seconds),
                    secs(push)
                ),
                value: secs(one_percent.seconds),
                bound: format!("≤ {}", secs(bound)),
                met: one_percent.seconds <= bound,
            });
        }
    }
}

/// Write the file at `path`, or every file in the directory at `path`, to
/// disk (`fsync`), then read it to the end, keeping nothing.
fn read_through(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        for entry in fs::read_dir(path)? {
            read_through(&entry?.path())?;
        }
        return Ok(());
    }
    let mut file = fs::File::open(path)?;
    file.sync_all()?;
    std::io::copy(&mut file, &mut std::io::sink())?;
    Ok(())
}

/// Seconds for the targets table, with a third decimal below ten seconds
/// so that a verdict never rests on figures shown equal.
fn secs(seconds: f64) -> String {
    if seconds < 10.0 {
        format!("{seconds:.3} s")
    } else {
        format!("{seconds:.2} s")
    }
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
