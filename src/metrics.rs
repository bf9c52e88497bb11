//! Prometheus metrics: one [`Metrics`] value per process, made by the
//! command or the daemon and handed to the API client (requests, durations,
//! throttled time) and the cycle engine (cycles, record states, conflicts,
//! drift).
//!
//! Exposed in the Prometheus text format 0.0.4 two ways: the daemon serves
//! `GET /metrics` on `metrics.listen` ([`serve`]), and every cycle ends by
//! replacing `metrics.textfile` atomically ([`Metrics::write_textfile`]) for
//! node_exporter's textfile collector. A `sync` run from cron is a new
//! process each time, so the counters (and the last success) start from
//! the values in the previous textfile: they keep counting across runs as
//! Prometheus expects. A textfile that cannot be read is a counter reset.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use reqwest::Method;

use crate::api::RequestObserver;
use crate::config::MetricsSettings;
use crate::cycle::RecordOutcome;
use crate::store::StateCounts;

/// Upper bounds (seconds) of the request duration histogram's buckets.
pub const REQUEST_DURATION_BUCKETS: [f64; 11] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// The counter families, by their name without `_total`.
const COUNTERS: [&str; 5] = [
    "referral_sync_cycles",
    "referral_sync_requests",
    "referral_sync_throttled_seconds",
    "referral_sync_conflicts",
    "referral_sync_drift",
];

/// The largest textfile read back at start-up.
const MAX_TEXTFILE_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CycleLabels {
    trigger: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResolutionLabels {
    resolution: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics.textfile: cannot write {path}: {source}")]
    Textfile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metrics: cannot encode the metrics")]
    Encode,
    #[error("metrics.listen: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Every metric of the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    cycles: Family<CycleLabels, Counter>,
    last_success: Gauge<f64, AtomicU64>,
    cycle_duration: Gauge<f64, AtomicU64>,
    records: Family<StateLabels, Gauge>,
    requests: Family<RequestLabels, Counter>,
    request_duration: DurationHistogram,
    throttled: Counter<f64, AtomicU64>,
    conflicts: Family<ResolutionLabels, Counter>,
    drift: Family<ActionLabels, Counter>,
    textfile: Option<PathBuf>,
}

impl Metrics {
    /// The metrics for `settings`, the counters carried on from the
    /// textfile if there is one. The second value is why an existing
    /// textfile could not be read back, if it could not.
    pub fn new(settings: &MetricsSettings) -> (Arc<Metrics>, Option<String>) {
        let metrics = Metrics::empty(settings.textfile.clone());
        let mut problem = None;
        if let Some(path) = &settings.textfile {
            match read_bounded(path) {
                Ok(None) => {}
                Ok(Some(text)) => {
                    if let Err(e) = metrics.seed(&text) {
                        problem = Some(format!(
                            "metrics.textfile: {} is not as written here ({e}); the counters start from zero",
                            path.display()
                        ));
                    }
                }
                Err(e) => {
                    problem = Some(format!(
                        "metrics.textfile: cannot read {} ({e}); the counters start from zero",
                        path.display()
                    ));
                }
            }
        }
        (Arc::new(metrics), problem)
    }

    fn empty(textfile: Option<PathBuf>) -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::default(),
            cycles: Family::default(),
            last_success: Gauge::default(),
            cycle_duration: Gauge::default(),
            records: Family::default(),
            requests: Family::default(),
            request_duration: DurationHistogram::default(),
            throttled: Counter::default(),
            conflicts: Family::default(),
            drift: Family::default(),
            textfile,
        };
        metrics.register_series();
        metrics.create_zero_series();
        metrics
    }

    /// Every series in the registry, in the order they are written out.
    fn register_series(&mut self) {
        let registry = &mut self.registry;
        registry.register(
            "referral_sync_cycles",
            "Cycles finished, by what started them and how they ended (ok, partial, interrupted, failed)",
            self.cycles.clone(),
        );
        registry.register(
            "referral_sync_last_success_timestamp_seconds",
            "When the last cycle that reached every record (outcome ok or partial) finished, in seconds since the Unix epoch",
            self.last_success.clone(),
        );
        registry.register(
            "referral_sync_cycle_duration_seconds",
            "How long the last cycle took",
            self.cycle_duration.clone(),
        );
        registry.register(
            "referral_sync_records",
            "Records in the store by state, as the last cycle left them",
            self.records.clone(),
        );
        registry.register(
            "referral_sync_requests",
            "Requests sent to Partner Center (every attempt), by method and HTTP status (\"error\" when no answer came)",
            self.requests.clone(),
        );
        registry.register(
            "referral_sync_request_duration_seconds",
            "How long each request to Partner Center took, to the end of its answer",
            self.request_duration.clone(),
        );
        registry.register(
            "referral_sync_throttled_seconds",
            "Seconds of pause Partner Center asked for with Retry-After (429, 503), during which no request is sent",
            self.throttled.clone(),
        );
        registry.register(
            "referral_sync_conflicts",
            "Paths changed both in the CRM and in Partner Center, by who won (crm-wins, remote-wins)",
            self.conflicts.clone(),
        );
        registry.register(
            "referral_sync_drift",
            "Paths a resync found changed in Partner Center, by what was done (repaired, kept)",
            self.drift.clone(),
        );
    }

    /// Every series an alert may name is there from the start, at zero.
    fn create_zero_series(&self) {
        for state in ["synced", "pending", "failed", "invalid", "held"] {
            drop(self.records.get_or_create(&StateLabels {
                state: state.to_owned(),
            }));
        }
        for resolution in ["crm-wins", "remote-wins"] {
            drop(self.conflicts.get_or_create(&ResolutionLabels {
                resolution: resolution.to_owned(),
            }));
        }
        for action in ["repaired", "kept"] {
            drop(self.drift.get_or_create(&ActionLabels {
                action: action.to_owned(),
            }));
        }
    }

    /// Count a record's conflicts and drift.
    pub fn record_outcome(&self, outcome: &RecordOutcome) {
        for conflict in &outcome.conflicts {
            let resolution = serde_json::to_value(conflict.resolution)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "unknown".to_owned());
            self.conflicts
                .get_or_create(&ResolutionLabels { resolution })
                .inc();
        }
        for drift in &outcome.drift {
            self.drift
                .get_or_create(&ActionLabels {
                    action: drift.action.as_str().to_owned(),
                })
                .inc();
        }
    }

    /// A cycle ended with `outcome` (ok, partial, interrupted, failed).
    pub fn record_cycle(&self, trigger: &str, outcome: &str, duration: Duration) {
        self.cycles
            .get_or_create(&CycleLabels {
                trigger: trigger.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.cycle_duration.set(duration.as_secs_f64());
        if matches!(outcome, "ok" | "partial") {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.last_success.set(now);
        }
    }

    /// The store's records by state.
    pub fn set_record_states(&self, counts: &StateCounts) {
        for (state, n) in [
            ("synced", counts.synced),
            ("pending", counts.pending),
            ("failed", counts.failed),
            ("invalid", counts.invalid),
            ("held", counts.held),
        ] {
            self.records
                .get_or_create(&StateLabels {
                    state: state.to_owned(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The metrics in the Prometheus text format 0.0.4.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut open_metrics = String::new();
        prometheus_client::encoding::text::encode(&mut open_metrics, &self.registry)
            .map_err(|_| MetricsError::Encode)?;
        Ok(to_text_format(&open_metrics))
    }

    /// Replace `metrics.textfile`, if configured, atomically: a temporary
    /// file in the same directory, flushed to disk, renamed over it.
    pub fn write_textfile(&self) -> Result<(), MetricsError> {
        let Some(path) = &self.textfile else {
            return Ok(());
        };
        let text = self.encode()?;
        write_atomically(path, text.as_bytes()).map_err(|source| MetricsError::Textfile {
            path: path.clone(),
            source,
        })
    }

    /// Carry on the counters and the last success from `text`, a textfile
    /// this process wrote before.
    fn seed(&self, text: &str) -> Result<(), String> {
        let mut durations = DurationSeed::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at_line = |e: String| format!("line {}: {e}", index + 1);
            let sample = parse_sample(line).map_err(at_line)?;
            self.seed_sample(&sample, &mut durations).map_err(at_line)?;
        }
        if !durations.buckets.is_empty() {
            self.request_duration
                .seed(durations.sum, durations.count, &durations.buckets)?;
        }
        Ok(())
    }

    /// Carry on one sample; those of the request durations are collected
    /// in `durations`, to seed the histogram once all are read.
    fn seed_sample(&self, sample: &Sample, durations: &mut DurationSeed) -> Result<(), String> {
        let label = |name: &str| sample.labels.get(name).cloned().unwrap_or_default();
        let whole = || whole_count(sample.value);
        match sample.name.as_str() {
            "referral_sync_cycles_total" => {
                self.cycles
                    .get_or_create(&CycleLabels {
                        trigger: label("trigger"),
                        outcome: label("outcome"),
                    })
                    .inc_by(whole()?);
            }
            "referral_sync_requests_total" => {
                self.requests
                    .get_or_create(&RequestLabels {
                        method: label("method"),
                        status: label("status"),
                    })
                    .inc_by(whole()?);
            }
            "referral_sync_conflicts_total" => {
                self.conflicts
                    .get_or_create(&ResolutionLabels {
                        resolution: label("resolution"),
                    })
                    .inc_by(whole()?);
            }
            "referral_sync_drift_total" => {
                self.drift
                    .get_or_create(&ActionLabels {
                        action: label("action"),
                    })
                    .inc_by(whole()?);
            }
            "referral_sync_throttled_seconds_total" if sample.value >= 0.0 => {
                self.throttled.inc_by(sample.value);
            }
            "referral_sync_last_success_timestamp_seconds" => {
                self.last_success.set(sample.value);
            }
            "referral_sync_request_duration_seconds_sum" => durations.sum = sample.value,
            "referral_sync_request_duration_seconds_count" => durations.count = whole()?,
            "referral_sync_request_duration_seconds_bucket" => {
                let bound = bucket_bound(&label("le"))?;
                durations.buckets.push((bound, whole()?));
            }
            _ => {}
        }
        Ok(())
    }
}

/// The request-duration histogram as a textfile holds it, gathered line by line.
#[derive(Default)]
struct DurationSeed {
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

/// A counter's value, which the textfile writes as a float.
fn whole_count(value: f64) -> Result<u64, String> {
    if value >= 0.0 && value.fract() == 0.0 {
        Ok(value as u64)
    } else {
        Err(format!("{value} is not a count"))
    }
}

/// A bucket's upper bound, its `le` label.
fn bucket_bound(le: &str) -> Result<f64, String> {
    if le == "+Inf" {
        Ok(f64::INFINITY)
    } else {
        le.parse::<f64>().map_err(|_| format!("le {le:?}"))
    }
}

impl RequestObserver for Metrics {
    fn request(&self, method: &Method, status: Option<u16>, elapsed: Duration) {
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        self.requests
            .get_or_create(&RequestLabels {
                method: method.as_str().to_owned(),
                status,
            })
            .inc();
        self.request_duration.observe(elapsed.as_secs_f64());
    }

    fn throttled(&self, pause: Duration) {
        self.throttled.inc_by(pause.as_secs_f64());
    }
}

/// A histogram whose counts can be carried on from an earlier process
/// (`prometheus_client`'s own cannot be seeded).
#[derive(Debug, Clone, Default)]
struct DurationHistogram {
    state: Arc<Mutex<HistogramState>>,
}

#[derive(Debug)]
struct HistogramState {
    sum: f64,
    count: u64,
    /// Per bucket (not cumulative); the last is `+Inf`.
    buckets: Vec<u64>,
}

impl Default for HistogramState {
    fn default() -> Self {
        HistogramState {
            sum: 0.0,
            count: 0,
            buckets: vec![0; REQUEST_DURATION_BUCKETS.len() + 1],
        }
    }
}

impl DurationHistogram {
    fn lock(&self) -> std::sync::MutexGuard<'_, HistogramState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn observe(&self, seconds: f64) {
        let index = REQUEST_DURATION_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(REQUEST_DURATION_BUCKETS.len());
        let mut state = self.lock();
        state.sum += seconds;
        state.count += 1;
        state.buckets[index] += 1;
    }

    /// From cumulative `buckets` as the text format has them.
    fn seed(&self, sum: f64, count: u64, buckets: &[(f64, u64)]) -> Result<(), String> {
        let bounds: Vec<f64> = REQUEST_DURATION_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .collect();
        if buckets.len() != bounds.len() || buckets.iter().zip(&bounds).any(|(b, e)| b.0 != *e) {
            return Err("the request duration buckets differ".to_owned());
        }
        let mut per_bucket = Vec::with_capacity(buckets.len());
        let mut previous = 0u64;
        for (_, cumulative) in buckets {
            per_bucket.push(
                cumulative
                    .checked_sub(previous)
                    .ok_or("the request duration buckets are not cumulative")?,
            );
            previous = *cumulative;
        }
        if previous != count {
            return Err("the request duration count differs from its +Inf bucket".to_owned());
        }
        let mut state = self.lock();
        state.sum += sum;
        state.count += count;
        for (slot, n) in state.buckets.iter_mut().zip(per_bucket) {
            *slot += n;
        }
        Ok(())
    }
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = {
            let state = self.lock();
            let buckets: Vec<(f64, u64)> = REQUEST_DURATION_BUCKETS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(state.buckets.iter().copied())
                .collect();
            (state.sum, state.count, buckets)
        };
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// OpenMetrics text (what `prometheus_client` writes) as the Prometheus
/// text format 0.0.4 that node_exporter's textfile collector and every
/// scraper read: a counter's `HELP` and `TYPE` name its `_total` samples,
/// and there is no `# EOF`.
fn to_text_format(open_metrics: &str) -> String {
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let mut renamed = None;
        for kind in ["# HELP ", "# TYPE "] {
            if let Some(rest) = line.strip_prefix(kind)
                && let Some((name, tail)) = rest.split_once(' ')
                && COUNTERS.contains(&name)
            {
                renamed = Some(format!("{kind}{name}_total {tail}"));
            }
        }
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// One sample line of the text format.
#[derive(Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// Parse `name{label="value",...} value` strictly.
pub fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("{line:?} does not start with a metric name"));
    }
    let mut rest = &line[name_end..];
    let mut labels = HashMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        loop {
            let Some((start, c)) = chars.next() else {
                return Err("unclosed labels".to_owned());
            };
            if c == '}' {
                rest = &after[start + 1..];
                break;
            }
            if c == ',' {
                continue;
            }
            let eq = after[start..].find('=').ok_or("label without =")? + start;
            let key = &after[start..eq];
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("bad label name {key:?}"));
            }
            while chars.peek().is_some_and(|(i, _)| *i < eq) {
                chars.next();
            }
            chars.next(); // '='
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key} is not quoted"));
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    None => return Err(format!("label {key} is not closed")),
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => return Err(format!("bad escape {other:?} in label {key}")),
                    },
                    Some(c) => value.push(c),
                }
            }
            if labels.insert(key.to_owned(), value).is_some() {
                return Err(format!("label {key} twice"));
            }
        }
    }
    let value_text = rest
        .strip_prefix(' ')
        .ok_or_else(|| format!("{line:?}: no space before the value"))?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        text => text
            .parse::<f64>()
            .map_err(|_| format!("{line:?}: {text:?} is not a number"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `path`'s text, `None` if there is no such file; at most
/// [`MAX_TEXTFILE_BYTES`].
fn read_bounded(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    file.take(MAX_TEXTFILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_TEXTFILE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_TEXTFILE_BYTES} bytes"
        )));
    }
    Ok(Some(text))
}

/// Write `bytes` to a temporary file beside `path` (a name node_exporter
/// does not read: it does not end in `.prom`), flush it to disk and rename
/// it over `path`, so that a reader sees the old file or the new one,
/// never part of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path does not name a file"))?;
    let temp = dir.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let _ = std::fs::remove_file(&temp);
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&temp)?
        };
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, path)?;
        // The rename itself, durable.
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Serve `GET /metrics` on `addr` until the runtime ends. Binding happens
/// before this returns, so that a bad address stops start-up.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> Result<tokio::task::JoinHandle<()>, MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Listen { addr, source })?;
    tracing::info!(address = %addr, "serving metrics on /metrics");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Beyond the limit a connection is closed at once.
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                continue;
            };
            let metrics = Arc::clone(&metrics);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, answer(stream, &metrics)).await;
                drop(slot);
            });
        }
    }))
}

/// Connections served at once.
const MAX_CONNECTIONS: usize = 16;
/// The longest a connection is kept, request and answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head read.
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// Read one request head and answer it; the connection is then closed.
async fn answer(mut stream: tokio::net::TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    let complete = loop {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            break false;
        }
        head.extend_from_slice(&buffer[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break true;
        }
        if head.len() > MAX_REQUEST_BYTES {
            break false;
        }
    };
    let response = if !complete {
        if head.is_empty() {
            return Ok(());
        }
        plain(
            431,
            "Request Header Fields Too Large",
            "request too large\n",
        )
    } else {
        let line = head
            .split(|b| *b == b'\r')
            .next()
            .and_then(|l| std::str::from_utf8(l).ok())
            .unwrap_or("");
        let mut parts = line.split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or("");
        match (method, path) {
            ("GET" | "HEAD", "/metrics") => match metrics.encode() {
                Ok(body) => {
                    let mut response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    if method == "GET" {
                        response.extend_from_slice(body.as_bytes());
                    }
                    response
                }
                Err(_) => plain(500, "Internal Server Error", "cannot encode the metrics\n"),
            },
            (_, "/metrics") => plain(405, "Method Not Allowed", "only GET\n"),
            _ => plain(404, "Not Found", "the metrics are at /metrics\n"),
        }
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}

fn plain(status: u16, reason: &str, body: &str) -> Vec<u8> {
    let allow = if status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::empty(None)
    }

    #[test]
    fn counters_are_named_by_their_total_samples() {
        let m = metrics();
        m.record_cycle("manual", "ok", Duration::from_millis(1500));
        m.request(&Method::PATCH, Some(200), Duration::from_millis(30));
        let text = m.encode().unwrap();
        assert!(
            text.contains("# TYPE referral_sync_cycles_total counter\n"),
            "{text}"
        );
        assert!(text.contains("referral_sync_cycles_total{trigger=\"manual\",outcome=\"ok\"} 1\n"));
        assert!(text.contains("referral_sync_requests_total{method=\"PATCH\",status=\"200\"} 1\n"));
        assert!(text.contains("referral_sync_request_duration_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("referral_sync_cycle_duration_seconds 1.5\n"));
        assert!(!text.contains("# EOF"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            parse_sample(line).unwrap();
        }
    }

    #[test]
    fn a_later_process_carries_the_counters_on() {
        let m = metrics();
        m.record_cycle("manual", "failed", Duration::from_secs(1));
        m.request(&Method::GET, None, Duration::from_secs(3));
        m.throttled(Duration::from_secs(2));
        let text = m.encode().unwrap();
        let next = metrics();
        next.seed(&text).unwrap();
        next.record_cycle("manual", "failed", Duration::from_secs(1));
        next.request(&Method::GET, None, Duration::from_millis(10));
        let again = next.encode().unwrap();
        assert!(
            again.contains("referral_sync_cycles_total{trigger=\"manual\",outcome=\"failed\"} 2\n"),
            "{again}"
        );
        assert!(
            again.contains("referral_sync_requests_total{method=\"GET\",status=\"error\"} 2\n")
        );
        assert!(again.contains("referral_sync_throttled_seconds_total 2.0\n"));
        assert!(again.contains("referral_sync_request_duration_seconds_count 2\n"));
        assert!(again.contains("referral_sync_request_duration_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(again.contains("referral_sync_request_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        // A failed cycle is no success.
        assert!(again.contains("referral_sync_last_success_timestamp_seconds 0.0\n"));
    }

    #[test]
    fn a_foreign_textfile_is_refused() {
        assert!(
            metrics()
                .seed("referral_sync_cycles_total{trigger=\"x\" 1\n")
                .is_err()
        );
        assert!(metrics().seed("referral_sync_cycles_total 1.5\n").is_err());
        assert!(
            metrics()
                .seed("referral_sync_cycles_total{a=b} 1\n")
                .is_err()
        );
    }

    #[test]
    fn the_textfile_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("referral-sync.prom");
        write_atomically(&path, b"one\n").unwrap();
        write_atomically(&path, b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("referral-sync.prom")]);
    }
}
