//! Running a history: the emulator served in process on loopback, the
//! export written into a temporary directory, cycles run with the
//! library's `Engine` (or the real binary), faults armed through the
//! emulator's `/_admin/faults`, seller edits through `/_admin/referrals/{id}/edit`,
//! and crashes simulated by dropping the cycle future at an await point
//! and opening the store again from its file, as a new process would.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pc_emulator::{Emulator, EmulatorOptions};
use referral_sync::config::Settings;
use referral_sync::cycle::{Action, CycleRequest, Engine, RecordOutcome, Trigger};
use referral_sync::mapping::Mapper;
use referral_sync::store::Store;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

use crate::crm::{Lead, write_export};
use crate::history::{Fault, History, Kill, Step};
use crate::model::{INTEGRITY, Key, NO_INVALID_REQUEST, QUIET, RecordModel, Violation};
use crate::seller::{
    SellerEdit, SellerStatus, append_member, may_move, seller_member, set_member, team_index,
};

pub const TOKEN: &str = "model-check-token-81c3e0";

/// How cycles are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    /// `Engine::run_cycle` in this process; a kill drops the cycle future.
    InProcess,
    /// `referral-sync sync`, the real binary; a kill is a SIGKILL after a
    /// random delay.
    Binary,
}

/// What a history ended with.
pub struct Report {
    pub violations: Vec<Violation>,
    /// What happened at each step, for the failure report.
    pub log: Vec<String>,
    pub tally: Tally,
}

/// How often the faults a history drew did what they were meant to, so a
/// run can show that it exercised them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub cycles: u64,
    /// Kills that cut a cycle off, and kills that came after it ended.
    pub kills_cut: u64,
    pub kills_late: u64,
    /// Race edits made while the PATCH was held, and races with no PATCH.
    pub races_held: u64,
    pub races_missed: u64,
    /// 412s, 429s, resets and 204s the emulator answered.
    pub precondition_failed: u64,
    pub throttled: u64,
    pub resets: u64,
    pub no_representation: u64,
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.cycles += other.cycles;
        self.kills_cut += other.kills_cut;
        self.kills_late += other.kills_late;
        self.races_held += other.races_held;
        self.races_missed += other.races_missed;
        self.precondition_failed += other.precondition_failed;
        self.throttled += other.throttled;
        self.resets += other.resets;
        self.no_representation += other.no_representation;
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} cycles; kills: {} cut a cycle off, {} came after it; races: {} edits while the PATCH was held, {} without a PATCH; answered 412 {}, 429 {}, reset {}, 204 {}",
            self.cycles,
            self.kills_cut,
            self.kills_late,
            self.races_held,
            self.races_missed,
            self.precondition_failed,
            self.throttled,
            self.resets,
            self.no_representation
        )
    }
}

/// The cycle future, dropped when it has been polled `polls` times or
/// at its first wake-up after `deadline`: a crash at an await point.
struct Cut<F> {
    inner: Pin<Box<F>>,
    polls_left: u32,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Completes when the kill is due for another reason (a write applied).
    signal: Pin<Box<dyn Future<Output = ()> + Send>>,
    polls: u32,
}

impl<F: Future> Future for Cut<F> {
    type Output = Result<F::Output, u32>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let deadline_passed = self.deadline.as_mut().poll(cx).is_ready();
        let signalled = self.signal.as_mut().poll(cx).is_ready();
        if self.polls_left == 0 || deadline_passed || signalled {
            return Poll::Ready(Err(self.polls));
        }
        self.polls_left -= 1;
        self.polls += 1;
        match self.inner.as_mut().poll(cx) {
            Poll::Ready(output) => Poll::Ready(Ok(output)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// How many times a seller edit is made again from a new read after a
/// 412; only a write between the read and the edit causes one, and a
/// cycle makes few.
const SELLER_EDIT_ATTEMPTS: u32 = 20;

/// What one try of a seller edit came to.
enum Edited {
    /// Applied, or skipped (with why).
    Done(Option<String>),
    /// Refused with 412: the referral changed since it was read.
    Stale,
}

/// One referral-sync "process": the store opened from its file, a client
/// and an engine.
struct Process {
    engine: Engine,
    store: Arc<Mutex<Store>>,
}

pub struct Sim {
    history: History,
    runner: Runner,
    /// Holds the export, the store and the configuration; removed on drop.
    _dir: tempfile::TempDir,
    base: String,
    http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    config: PathBuf,
    export: PathBuf,
    store_path: PathBuf,
    settings: Arc<Settings>,
    mapper: Arc<Mapper>,
    leads: Vec<Lead>,
    models: Vec<RecordModel>,
    time: u64,
    process: Option<Process>,
    log: Vec<String>,
    /// The owned paths the last seller edit set.
    last_seller_keys: Vec<Key>,
    /// The race fault's seller edit was made during this cycle.
    race_done: bool,
    /// A race that saves late: the referral whose held PATCH the seller's
    /// next edit, once read, waits to see applied before it is saved.
    save_after_patch: Option<String>,
    tally: Tally,
}

/// A temporary directory on a memory file system when there is one: the
/// store's fsyncs are then cheap.
fn temp_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new()
            .prefix("model-check")
            .tempdir_in(shm)
    {
        return Ok(dir);
    }
    tempfile::Builder::new().prefix("model-check").tempdir()
}

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Keys of the reference configuration that this checker sets when the
/// code knows them (the sync model adds them).
fn known_key(key: &str) -> bool {
    std::fs::read_to_string(repo_path("config/referral-sync.toml"))
        .is_ok_and(|text| text.contains(key))
}

impl Sim {
    pub async fn start(history: History, runner: Runner) -> Result<Sim, String> {
        let dir = temp_dir().map_err(|e| format!("temporary directory: {e}"))?;
        let seed: Vec<Value> = history
            .starts
            .iter()
            .filter_map(|s| s.existing.clone())
            .collect();
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let latency = match runner {
            // Long enough for a kill to land in the middle of a cycle.
            Runner::Binary => Duration::from_millis(8),
            Runner::InProcess => Duration::ZERO,
        };
        let emulator = Emulator::new(EmulatorOptions {
            seed,
            access_tokens: vec![TOKEN.to_owned()],
            latency,
            ..EmulatorOptions::default()
        })
        .map_err(|e| format!("emulator: {e}"))?;
        let (shutdown, stop) = oneshot::channel::<()>();
        // The emulator's server future is not `Send`: it gets a thread and
        // a runtime of its own.
        let (ready_tx, ready) = oneshot::channel::<Result<(), String>>();
        std::thread::Builder::new()
            .name("emulator".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("emulator runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("emulator listener: {e}")));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let _ = emulator
                        .serve(listener, async {
                            let _ = stop.await;
                        })
                        .await;
                });
            })
            .map_err(|e| format!("emulator thread: {e}"))?;
        ready
            .await
            .map_err(|_| "the emulator thread ended early".to_owned())??;
        let base = format!("http://{address}");

        let token = dir.path().join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).map_err(|e| e.to_string())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| e.to_string())?;
        }
        let export = dir.path().join(history.shape.file_name());
        let store_path = dir.path().join("store.db");
        let config = dir.path().join("referral-sync.toml");
        let mut sync_extra = String::new();
        if known_key("create_confirm_secs") {
            // A lost create is confirmed by the next listing, not 5 minutes on.
            sync_extra.push_str("create_confirm_secs = 0\n");
        }
        let text = format!(
            r#"[export]
path = "{export}"
entity = "lead"

[store]
path = "{store}"

[api]
base_url = "{base}/v1.0"
concurrency = {concurrency}
request_timeout_secs = 5
connect_timeout_secs = 2

[api.retry]
initial = "1ms"
max_interval = "4ms"
max_elapsed = "5s"
max_attempts = 4

[auth]
token_file = "{token}"

[sync]
create_missing = true
max_missing_ratio = 1.0
{sync_extra}"#,
            export = export.display(),
            store = store_path.display(),
            concurrency = history.concurrency,
            token = token.display(),
        );
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        let settings = Settings::load_with_env(&config, Some(Default::default()))
            .map_err(|e| format!("settings: {e}"))?;
        let mapper = settings.mapper();
        let leads: Vec<Lead> = history.starts.iter().map(|s| s.lead.clone()).collect();
        let mut models: Vec<RecordModel> = leads
            .iter()
            .map(|l| RecordModel::new(l.id.clone()))
            .collect();
        for (model, start) in models.iter_mut().zip(&history.starts) {
            if let Some(existing) = &start.existing {
                let email = start.lead.contact.as_ref().map(|c| c.email.as_str());
                model.existing(existing, email);
            }
        }
        let mut sim = Sim {
            history,
            runner,
            _dir: dir,
            base,
            http: reqwest::Client::new(),
            shutdown: Some(shutdown),
            config,
            export,
            store_path,
            settings: Arc::new(settings),
            mapper,
            leads,
            models,
            time: 1,
            process: None,
            log: Vec::new(),
            last_seller_keys: Vec::new(),
            race_done: false,
            save_after_patch: None,
            tally: Tally::default(),
        };
        sim.write_crm()?;
        Ok(sim)
    }

    /// Run every step, the quiet cycles, and check.
    pub async fn run(mut self) -> Result<Report, String> {
        let steps = self.history.steps.clone();
        for (i, step) in steps.iter().enumerate() {
            self.time += 1;
            let note = match step {
                Step::Crm { record, edit } => {
                    self.leads[*record].apply(edit);
                    self.write_crm()?;
                    None
                }
                Step::Seller { record, edit } => self.seller_edit(*record, edit).await?,
                Step::Cycle { fault } => self.cycle(fault.as_ref(), None).await?,
                Step::Kill(kill) => self.cycle(None, Some(*kill)).await?,
            };
            if let Some(note) = note {
                self.log.push(format!("step {:>2}: {note}", i + 1));
            }
        }
        self.time += 1;
        if let Some(note) = self.cycle(None, None).await? {
            self.log.push(format!("quiet cycle: {note}"));
        }
        let mut violations = self.check().await?;
        let before = self
            .journal()
            .await?
            .last()
            .map_or(0, |e| e["seq"].as_u64().unwrap_or(0));
        self.time += 1;
        if let Some(note) = self.cycle(None, None).await? {
            self.log.push(format!("second quiet cycle: {note}"));
        }
        for entry in self.journal().await? {
            let seq = entry["seq"].as_u64().unwrap_or(0);
            let method = entry["method"].as_str().unwrap_or("");
            if seq > before && matches!(method, "POST" | "PATCH" | "PUT") {
                violations.push(Violation {
                    invariant: QUIET,
                    record: None,
                    path: format!("{method} {}", entry["path"].as_str().unwrap_or("")),
                    expected: "no write".into(),
                    found: format!("body {} → {}", entry["body"], entry["status"]),
                });
            }
        }
        let mut tally = self.tally;
        for entry in self.journal().await? {
            match (entry["status"].as_u64(), entry["fault"].as_str()) {
                (Some(412), _) => tally.precondition_failed += 1,
                (Some(429), _) => tally.throttled += 1,
                (_, Some("reset_before" | "reset_after")) => tally.resets += 1,
                (Some(204), _) => tally.no_representation += 1,
                _ => {}
            }
        }
        self.stop().await;
        Ok(Report {
            violations,
            log: self.log,
            tally,
        })
    }

    async fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            drop(process);
        }
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    // -----------------------------------------------------------------
    // The CRM

    /// Write the export and tell the model what the CRM now says, as the
    /// library maps it.
    fn write_crm(&mut self) -> Result<(), String> {
        write_export(&self.export, self.history.shape, &self.leads)
            .map_err(|e| format!("writing the export: {e}"))?;
        let mut desired: BTreeMap<String, Value> = BTreeMap::new();
        let mut errors = Vec::new();
        referral_sync::export::read_export(&self.settings.export_options(), &mut |record| {
            match self.mapper.map(&record) {
                Ok(mapped) => {
                    desired.insert(mapped.external_id, mapped.document);
                }
                Err(e) => errors.push(e.to_string()),
            }
            std::ops::ControlFlow::Continue(())
        })
        .map_err(|e| format!("reading the export back: {e}"))?;
        if !errors.is_empty() {
            return Err(format!(
                "the generated export does not map: {}",
                errors.join("; ")
            ));
        }
        for model in &mut self.models {
            let document = desired
                .get(&model.external_id)
                .ok_or_else(|| format!("{} is not in the export", model.external_id))?;
            model.crm_now(self.time, document);
        }
        Ok(())
    }

    // -----------------------------------------------------------------
    // Partner Center

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        self.admin_if_match(method, path, body, None).await
    }

    async fn admin_if_match(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        if_match: Option<&str>,
    ) -> Result<(u16, Value), String> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(if_match) = if_match {
            request = request.header(reqwest::header::IF_MATCH, if_match);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    pub async fn referrals(&self) -> Result<Vec<Value>, String> {
        let (_, body) = self
            .admin(reqwest::Method::GET, "/_admin/referrals", None)
            .await?;
        Ok(body["value"].as_array().cloned().unwrap_or_default())
    }

    async fn journal(&self) -> Result<Vec<Value>, String> {
        let (_, body) = self
            .admin(reqwest::Method::GET, "/_admin/requests", None)
            .await?;
        Ok(body["value"].as_array().cloned().unwrap_or_default())
    }

    async fn set_faults(&self, rules: Value) -> Result<(), String> {
        let (status, body) = self
            .admin(reqwest::Method::POST, "/_admin/faults", Some(rules))
            .await?;
        if status >= 300 {
            return Err(format!("fault rules refused: {status} {body}"));
        }
        Ok(())
    }

    async fn clear_faults(&self) -> Result<(), String> {
        self.admin(reqwest::Method::DELETE, "/_admin/faults", None)
            .await?;
        Ok(())
    }

    /// Tell every record's model what Partner Center holds now;
    /// `acknowledged` lists the records a cycle just settled.
    async fn observe(&mut self, acknowledged: &[String]) -> Result<Vec<Value>, String> {
        let referrals = self.referrals().await?;
        for model in &mut self.models {
            let live = referrals
                .iter()
                .find(|r| r["externalReferenceId"].as_str() == Some(model.external_id.as_str()));
            let settled = acknowledged.contains(&model.external_id);
            model.observe(live, settled);
        }
        Ok(referrals)
    }

    /// A seller's edit of record `record`'s referral, made now. A seller
    /// saves what they loaded: the edit is made from a read of the referral
    /// and sent under its eTag, and made again from a new read when a write
    /// came in between (a race's PATCH let go, say). Sent blind, an edit
    /// made from a stale read could undo that write: an append made while
    /// the team was absent adds the whole team, replacing the CRM contact
    /// the PATCH had just added, and the model would expect that contact.
    async fn seller_edit(
        &mut self,
        record: usize,
        edit: &SellerEdit,
    ) -> Result<Option<String>, String> {
        for attempt in 0..SELLER_EDIT_ATTEMPTS {
            if let Edited::Done(note) = self.seller_edit_from_a_read(record, edit).await? {
                if attempt == 0 {
                    return Ok(note);
                }
                let again = format!(
                    "the seller's save met a new eTag and was made again from a new read ({attempt}x)"
                );
                return Ok(Some(match note {
                    Some(n) => format!("{again}; {n}"),
                    None => again,
                }));
            }
        }
        Err(format!(
            "the seller edit ({edit}) was refused with 412 {SELLER_EDIT_ATTEMPTS} times"
        ))
    }

    /// One try of [`Sim::seller_edit`].
    async fn seller_edit_from_a_read(
        &mut self,
        record: usize,
        edit: &SellerEdit,
    ) -> Result<Edited, String> {
        self.last_seller_keys.clear();
        let referrals = self.observe(&[]).await?;
        let ext = self.models[record].external_id.clone();
        let Some(live) = referrals
            .iter()
            .find(|r| r["externalReferenceId"].as_str() == Some(ext.as_str()))
            .cloned()
        else {
            return Ok(Edited::Done(Some(
                "no referral yet: the seller edit is skipped".into(),
            )));
        };
        let id = live["id"].as_str().unwrap_or_default().to_owned();
        let model = &self.models[record];
        // The patch, and what the model learns once it is applied.
        enum Learn {
            Owned(Key, Value),
            Unowned(String, Value),
            Added(Value),
            Renamed(String, Value),
        }
        let (ops, learn) = match edit {
            SellerEdit::Owned(member, k) => {
                let value = member.seller_value(*k);
                (
                    vec![set_member(&live, &member.pointer(), value.clone())],
                    vec![Learn::Owned(Key::Pointer(member.pointer()), value)],
                )
            }
            SellerEdit::Contact(member, k) => {
                let Some(email) = model.contact_email.clone() else {
                    return Ok(Edited::Done(Some(
                        "the CRM has no contact: the seller edit is skipped".into(),
                    )));
                };
                let Some(index) = team_index(&live, &email) else {
                    return Ok(Edited::Done(Some(format!(
                        "no team member {email} yet: the seller edit is skipped"
                    ))));
                };
                let value = member.seller_value(*k);
                (
                    vec![
                        json!({"op": "add", "path": format!("/customerProfile/team/{index}/{}", member.name()), "value": value}),
                    ],
                    vec![Learn::Owned(
                        Key::Contact {
                            email,
                            member: member.name(),
                        },
                        value,
                    )],
                )
            }
            SellerEdit::Unowned(member, k) => {
                let value = member.seller_value(*k);
                (
                    vec![set_member(&live, member.pointer(), value.clone())],
                    vec![Learn::Unowned(member.pointer().to_owned(), value)],
                )
            }
            SellerEdit::AddMember(k) => {
                let member = seller_member(*k);
                (
                    vec![append_member(&live, member.clone())],
                    vec![Learn::Added(member)],
                )
            }
            SellerEdit::EditMember { pick, k } => {
                let Some(email) = model.seller_member_email(*pick) else {
                    return Ok(Edited::Done(Some(
                        "no seller-added member: the seller edit is skipped".into(),
                    )));
                };
                let Some(index) = team_index(&live, &email) else {
                    return Ok(Edited::Done(Some(format!(
                        "seller-added member {email} is gone: the seller edit is skipped"
                    ))));
                };
                let value = json!(format!("Partner{k}b"));
                (
                    vec![
                        json!({"op": "add", "path": format!("/customerProfile/team/{index}/lastName"), "value": value}),
                    ],
                    vec![Learn::Renamed(email, value)],
                )
            }
            SellerEdit::Status(status) => {
                let from = live["status"].as_str().unwrap_or("");
                let (to, substatus) = match status {
                    SellerStatus::Accept => ("Active", "Accepted"),
                    SellerStatus::Close(substatus) => ("Closed", *substatus),
                };
                let allowed = match status {
                    SellerStatus::Accept => from == "New",
                    SellerStatus::Close(_) => may_move(from, to),
                };
                if !allowed {
                    return Ok(Edited::Done(Some(format!(
                        "the referral is {from}: the seller's move to {to} is skipped"
                    ))));
                }
                (
                    vec![
                        json!({"op": "add", "path": "/status", "value": to}),
                        json!({"op": "add", "path": "/substatus", "value": substatus}),
                    ],
                    vec![Learn::Owned(Key::Status, json!([to, substatus]))],
                )
            }
        };
        if let Some(referral) = self.save_after_patch.take() {
            self.wait_until_patch_applied(&referral).await?;
        }
        let Some(etag) = live["eTag"].as_str() else {
            return Err(format!("referral {id} was read without an eTag: {live}"));
        };
        let (status, body) = self
            .admin_if_match(
                reqwest::Method::POST,
                &format!("/_admin/referrals/{id}/edit"),
                Some(Value::Array(ops.clone())),
                Some(etag),
            )
            .await?;
        if status == 412 {
            return Ok(Edited::Stale);
        }
        if status != 200 {
            return Err(format!(
                "the seller edit {} was refused: {status} {body}",
                Value::Array(ops)
            ));
        }
        let at = self.time;
        let model = &mut self.models[record];
        self.last_seller_keys.clear();
        for learned in learn {
            match learned {
                Learn::Owned(key, value) => {
                    self.last_seller_keys.push(key.clone());
                    model.seller_set(at, key, value)
                }
                Learn::Unowned(pointer, value) => model.seller_unowned(&pointer, value),
                Learn::Added(member) => model.seller_added_member(member),
                Learn::Renamed(email, value) => model.seller_renamed_member(&email, value),
            }
        }
        Ok(Edited::Done(None))
    }

    // -----------------------------------------------------------------
    // Cycles

    fn open_process(&self) -> Result<Process, String> {
        let store = Store::open(&self.store_path).map_err(|e| format!("opening the store: {e}"))?;
        let store = Arc::new(Mutex::new(store));
        let client = referral_sync::service::build_client(&self.settings)
            .map_err(|e| format!("client: {e}"))?;
        let engine = Engine::new(
            Arc::clone(&self.settings),
            Arc::clone(&self.mapper),
            Arc::clone(&store),
            Some(client),
        );
        Ok(Process { engine, store })
    }

    /// Run one cycle with `fault` armed, cut off by `kill` if given.
    /// Returns a note on what happened, for the failure report.
    async fn cycle(
        &mut self,
        fault: Option<&Fault>,
        kill: Option<Kill>,
    ) -> Result<Option<String>, String> {
        // The race holds the PATCH of the referral the seller edits.
        let mut race_referral = None;
        if let Some(Fault::Race { record, .. }) = fault {
            let ext = self.models[*record].external_id.clone();
            race_referral = self
                .referrals()
                .await?
                .iter()
                .find(|r| r["externalReferenceId"].as_str() == Some(ext.as_str()))
                .and_then(|r| r["id"].as_str().map(str::to_owned));
        }
        if let Some(fault) = fault {
            self.set_faults(fault.rules(race_referral.as_deref()))
                .await?;
        }
        if kill.is_some_and(|k| k.at_request) {
            self.set_faults(json!([
                {"method": "POST", "times": 0, "kind": "delay", "ms": 300},
                {"method": "PATCH", "times": 0, "kind": "delay", "ms": 300},
            ]))
            .await?;
        }
        if kill.is_some_and(|k| k.hold_answers) {
            self.set_faults(json!([
                {"method": "POST", "times": 0, "kind": "delay_after", "ms": 25},
                {"method": "PATCH", "times": 0, "kind": "delay_after", "ms": 25},
            ]))
            .await?;
        }
        let (note, acknowledged) = match self.runner {
            Runner::InProcess => self.cycle_in_process(fault, kill, race_referral).await?,
            Runner::Binary => self.cycle_binary(fault, kill, race_referral).await?,
        };
        self.clear_faults().await?;
        if kill.is_some() {
            self.settle().await?;
        }
        // A 204 leaves the sync without Partner Center's answer: what it
        // holds is not acknowledged.
        let acknowledged = if matches!(fault, Some(Fault::NoRepresentation)) {
            Vec::new()
        } else {
            acknowledged
        };
        self.observe(&acknowledged).await?;
        for model in &mut self.models {
            model.cycle_ran(self.time);
        }
        self.tally.cycles += 1;
        if let Some(Fault::Race { .. }) = fault {
            if self.race_done {
                self.tally.races_held += 1;
            } else {
                self.tally.races_missed += 1;
            }
        }
        // A race whose PATCH never came: the seller's edit comes after the
        // cycle instead.
        let mut note = note;
        if let Some(Fault::Race { record, edit, .. }) = fault
            && !self.race_done
        {
            let edited = self.seller_edit(*record, edit).await?;
            let text = format!(
                "no PATCH held: the seller edit came after the cycle{}",
                edited.map(|n| format!(" ({n})")).unwrap_or_default()
            );
            note = Some(match note {
                Some(n) => format!("{n}; {text}"),
                None => text,
            });
        }
        self.race_done = false;
        Ok(note)
    }

    async fn cycle_in_process(
        &mut self,
        fault: Option<&Fault>,
        kill: Option<Kill>,
        race_referral: Option<String>,
    ) -> Result<(Option<String>, Vec<String>), String> {
        let process = match self.process.take() {
            Some(process) => process,
            None => self.open_process()?,
        };
        let journal_seq = self
            .journal()
            .await?
            .last()
            .map_or(0, |e| e["seq"].as_u64().unwrap_or(0));
        let outcomes: Arc<Mutex<Vec<RecordOutcome>>> = Arc::default();
        let collected = Arc::clone(&outcomes);
        let report = move |outcome: &RecordOutcome| {
            if let Ok(mut all) = collected.lock() {
                all.push(outcome.clone());
            }
        };
        let (_stop_tx, stop_rx) = watch::channel(false);
        let cycle = process
            .engine
            .run_cycle(CycleRequest::new(Trigger::Manual), &report, stop_rx);
        let (polls, after_ms) = kill.map_or((u32::MAX, 3_600_000), |k| (k.polls, k.after_ms));
        let signal: Pin<Box<dyn Future<Output = ()> + Send>> = match kill {
            Some(k) if k.at_write => Box::pin(wait_for_applied_write(
                self.http.clone(),
                self.base.clone(),
                journal_seq,
            )),
            Some(k) if k.at_request => Box::pin(wait_for_sent_write(
                self.http.clone(),
                self.base.clone(),
                journal_seq,
            )),
            _ => Box::pin(std::future::pending()),
        };
        let mut cut = Cut {
            inner: Box::pin(cycle),
            polls_left: polls,
            deadline: Box::pin(tokio::time::sleep(Duration::from_millis(after_ms))),
            signal,
            polls: 0,
        };
        let mut race_note = None;
        let result = match fault {
            Some(Fault::Race {
                record,
                edit,
                saves_late,
            }) => {
                let watcher = wait_for_held_patch(
                    self.http.clone(),
                    self.base.clone(),
                    race_referral.clone(),
                );
                tokio::pin!(watcher);
                let raced = tokio::select! {
                    result = &mut cut => Err(result),
                    held = &mut watcher => Ok(held),
                };
                match raced {
                    // No PATCH held: the edit is made once the cycle is
                    // observed (see `cycle`).
                    Err(result) => result,
                    Ok(held) => {
                        held?;
                        if *saves_late {
                            self.save_after_patch = race_referral.clone();
                        }
                        race_note = self.seller_edit(*record, edit).await?;
                        self.race_done = true;
                        self.pin_race_order(*record, race_referral.as_deref(), &mut race_note)
                            .await?;
                        (&mut cut).await
                    }
                }
            }
            _ => (&mut cut).await,
        };
        drop(cut);
        let outcomes = outcomes.lock().map(|o| o.clone()).unwrap_or_default();
        let mut notes: Vec<String> = race_note.into_iter().collect();
        let acknowledged = match result {
            Ok(summary) => {
                if kill.is_some() {
                    self.tally.kills_late += 1;
                }
                match &summary {
                    Ok(summary) => notes.push(format!("{summary}")),
                    Err(e) => notes.push(format!("cycle error: {e}")),
                }
                self.process = Some(process);
                outcomes
                    .iter()
                    .filter(|o| {
                        matches!(
                            o.action,
                            Action::Create | Action::Update | Action::Unchanged | Action::Invalid
                        )
                    })
                    .filter_map(|o| o.external_id.clone())
                    .collect()
            }
            Err(polls) => {
                self.tally.kills_cut += 1;
                notes.push(format!(
                    "killed after {polls} polls, {} records decided",
                    outcomes.len()
                ));
                self.crash(process).await?;
                Vec::new()
            }
        };
        for o in &outcomes {
            if !o.errors.is_empty() {
                notes.push(format!(
                    "{} {}: {}",
                    o.external_id.as_deref().unwrap_or("?"),
                    o.action.as_str(),
                    o.errors.join("; ")
                ));
            }
        }
        Ok((Some(notes.join("; ")), acknowledged))
    }

    /// After a kill: let the service finish the requests it had already
    /// received (as it would after the client died), so that what the
    /// model sees next is what the killed cycle left.
    async fn settle(&self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let busy = self
                .journal()
                .await?
                .iter()
                .any(|e| e["outcome"] == "in_progress");
            if !busy {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(5) {
                return Err(
                    "the service is still handling the killed cycle's requests after 5 s".into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Until `referral`'s PATCH is no longer held and the service has
    /// answered it.
    async fn wait_until_patch_applied(&self, referral: &str) -> Result<(), String> {
        let started = Instant::now();
        while self.journal().await?.iter().any(|e| {
            e["method"] == "PATCH"
                && e["outcome"] == "in_progress"
                && e["path"].as_str().is_some_and(|p| p.ends_with(referral))
        }) {
            if started.elapsed() > Duration::from_secs(5) {
                return Err(format!("the PATCH of {referral} is still held after 5 s"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// After a race edit: if the held PATCH is no longer held, it may have
    /// been applied before the edit, and the model accepts either order.
    async fn pin_race_order(
        &mut self,
        record: usize,
        referral: Option<&str>,
        note: &mut Option<String>,
    ) -> Result<(), String> {
        let Some(referral) = referral else {
            return Ok(());
        };
        let still_held = self.journal().await?.iter().any(|e| {
            e["method"] == "PATCH"
                && e["outcome"] == "in_progress"
                && e["path"].as_str().is_some_and(|p| p.ends_with(referral))
        });
        if !still_held {
            for key in self.last_seller_keys.clone() {
                self.models[record].seller_order_unknown(&key);
            }
            let text = "the held PATCH was let go before the seller edit was in: order unknown";
            *note = Some(match note.take() {
                Some(n) => format!("{n}; {text}"),
                None => text.to_owned(),
            });
        }
        Ok(())
    }

    /// The process is gone: wait for work it left on the blocking pool to
    /// let go of the store, so that the next "process" opens the file alone.
    async fn crash(&mut self, process: Process) -> Result<(), String> {
        let Process { engine, store } = process;
        drop(engine);
        let started = Instant::now();
        while Arc::strong_count(&store) > 1 {
            if started.elapsed() > Duration::from_secs(10) {
                return Err("the killed cycle's store is still in use after 10 s".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(store);
        Ok(())
    }

    async fn cycle_binary(
        &mut self,
        fault: Option<&Fault>,
        kill: Option<Kill>,
        race_referral: Option<String>,
    ) -> Result<(Option<String>, Vec<String>), String> {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_referral-sync"));
        command
            .arg("--config")
            .arg(&self.config)
            .args(["sync", "--output", "json"])
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (key, _) in std::env::vars() {
            if key.starts_with("REFERRAL_SYNC") {
                command.env_remove(key);
            }
        }
        let journal_seq = self
            .journal()
            .await?
            .last()
            .map_or(0, |e| e["seq"].as_u64().unwrap_or(0));
        let child = command
            .spawn()
            .map_err(|e| format!("starting referral-sync: {e}"))?;
        let mut race_note = None;
        let output = if let Some(kill) = kill {
            // A process has no polls to count: the kill falls after a delay
            // of the same spread, or at the first write the service applied.
            let mut child = child;
            let delay = Duration::from_millis(kill.after_ms + u64::from(kill.polls / 2));
            let at_write: Pin<Box<dyn Future<Output = ()> + Send>> = if kill.at_write {
                Box::pin(wait_for_applied_write(
                    self.http.clone(),
                    self.base.clone(),
                    journal_seq,
                ))
            } else {
                Box::pin(std::future::pending())
            };
            let started = Instant::now();
            let exited = tokio::select! {
                _ = child.wait() => true,
                _ = tokio::time::sleep(delay) => false,
                _ = at_write => false,
            };
            if exited {
                self.tally.kills_late += 1;
            } else {
                self.tally.kills_cut += 1;
                child.start_kill().map_err(|e| format!("SIGKILL: {e}"))?;
                let _ = child.wait().await;
                return Ok((
                    Some(format!("SIGKILL after {:?}", started.elapsed())),
                    Vec::new(),
                ));
            }
            return Ok((
                Some(format!("finished within {delay:?}, before the kill")),
                Vec::new(),
            ));
        } else if let Some(Fault::Race {
            record,
            edit,
            saves_late,
        }) = fault
        {
            let watcher =
                wait_for_held_patch(self.http.clone(), self.base.clone(), race_referral.clone());
            let output = child.wait_with_output();
            tokio::pin!(output);
            tokio::pin!(watcher);
            tokio::select! {
                out = &mut output => out,
                held = &mut watcher => {
                    held?;
                    if *saves_late {
                        self.save_after_patch = race_referral.clone();
                    }
                    race_note = self.seller_edit(*record, edit).await?;
                    self.race_done = true;
                    self.pin_race_order(*record, race_referral.as_deref(), &mut race_note).await?;
                    output.await
                }
            }
        } else {
            child.wait_with_output().await
        }
        .map_err(|e| format!("waiting for referral-sync: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let acknowledged: Vec<String> = stdout
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|o| {
                matches!(
                    o["action"].as_str(),
                    Some("create" | "update" | "unchanged" | "invalid")
                )
            })
            .filter_map(|o| o["externalReferenceId"].as_str().map(str::to_owned))
            .collect();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut note = format!("exit {:?}", output.status.code());
        if let Some(r) = race_note {
            note.push_str(&format!("; {r}"));
        }
        if !output.status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
            note.push_str(&format!(
                "; {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ));
        }
        Ok((Some(note), acknowledged))
    }

    // -----------------------------------------------------------------
    // Checking

    async fn check(&self) -> Result<Vec<Violation>, String> {
        let mut violations = Vec::new();
        let referrals = self.referrals().await?;
        let store = Store::open_read_only(&self.store_path)
            .map_err(|e| format!("opening the store read-only: {e}"))?;
        for model in &self.models {
            let mine: Vec<&Value> = referrals
                .iter()
                .filter(|r| r["externalReferenceId"].as_str() == Some(model.external_id.as_str()))
                .collect();
            let state = match &store {
                Some(store) => store
                    .record(&model.external_id)
                    .map_err(|e| format!("reading the store: {e}"))?
                    .map(|r| r.state.as_str().to_owned()),
                None => None,
            };
            model.check(&mine, state.as_deref(), &mut violations);
        }
        for entry in self.journal().await? {
            if matches!(entry["status"].as_u64(), Some(400 | 422)) && entry["fault"].is_null() {
                violations.push(Violation {
                    invariant: NO_INVALID_REQUEST,
                    record: None,
                    path: format!(
                        "{} {}",
                        entry["method"].as_str().unwrap_or(""),
                        entry["path"].as_str().unwrap_or("")
                    ),
                    expected: "no request the service refuses as invalid".into(),
                    found: format!("HTTP {} for body {}", entry["status"], entry["body"]),
                });
            }
        }
        let integrity = integrity_check(&self.store_path);
        if integrity != "ok" {
            violations.push(Violation {
                invariant: INTEGRITY,
                record: None,
                path: self.store_path.display().to_string(),
                expected: "PRAGMA integrity_check = ok".into(),
                found: integrity,
            });
        }
        Ok(violations)
    }
}

/// `PRAGMA integrity_check` of the store file, read with its WAL.
fn integrity_check(path: &Path) -> String {
    let result = (|| -> rusqlite::Result<String> {
        let conn = rusqlite::Connection::open(path)?;
        let mut statement = conn.prepare("PRAGMA integrity_check")?;
        let rows: Vec<String> = statement
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows.join("; "))
    })();
    result.unwrap_or_else(|e| format!("cannot check: {e}"))
}

/// Until the journal shows a write after `since` that the service
/// applied (its answer held back), polling every millisecond.
async fn wait_for_applied_write(http: reqwest::Client, base: String, since: u64) {
    loop {
        let body = match http
            .get(format!("{base}/_admin/requests?since={since}"))
            .send()
            .await
        {
            Ok(response) => response.json::<Value>().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let applied = body["value"].as_array().is_some_and(|entries| {
            entries.iter().any(|e| {
                matches!(e["method"].as_str(), Some("POST" | "PATCH")) && e["outcome"] == "applied"
            })
        });
        if applied {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Until the journal shows a write after `since` that the service has
/// received and not handled yet (held by a delay), polling every
/// millisecond.
async fn wait_for_sent_write(http: reqwest::Client, base: String, since: u64) {
    loop {
        let body = match http
            .get(format!("{base}/_admin/requests?since={since}"))
            .send()
            .await
        {
            Ok(response) => response.json::<Value>().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let sent = body["value"].as_array().is_some_and(|entries| {
            entries.iter().any(|e| {
                matches!(e["method"].as_str(), Some("POST" | "PATCH"))
                    && e["outcome"] == "in_progress"
            })
        });
        if sent {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Until the journal shows a PATCH of `referral` the service is holding
/// (the race fault's delay), polling every 2 ms; never without a referral.
async fn wait_for_held_patch(
    http: reqwest::Client,
    base: String,
    referral: Option<String>,
) -> Result<(), String> {
    let Some(referral) = referral else {
        return std::future::pending().await;
    };
    loop {
        let body: Value = http
            .get(format!("{base}/_admin/requests"))
            .send()
            .await
            .map_err(|e| format!("journal: {e}"))?
            .json()
            .await
            .map_err(|e| format!("journal: {e}"))?;
        let held = body["value"].as_array().is_some_and(|entries| {
            entries.iter().any(|e| {
                e["method"] == "PATCH"
                    && e["outcome"] == "in_progress"
                    && e["path"].as_str().is_some_and(|p| p.ends_with(&referral))
            })
        });
        if held {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
