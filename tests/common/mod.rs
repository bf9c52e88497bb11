//! The harness the integration tests share: a real `pc-emulator` on
//! loopback, a temporary workspace with a configuration, an export and a
//! token, and the real `referral-sync` binary run against them.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod sibling_bin;
pub use sibling_bin::sibling_bin;

pub const TOKEN: &str = "integration-test-token-5f0c2a";

pub fn referral_sync_bin() -> &'static str {
    env!("CARGO_BIN_EXE_referral-sync")
}

/// The `pc-emulator` binary of the workspace's `emulator` member;
/// `cargo test` at the root builds it.
pub fn emulator_bin() -> PathBuf {
    sibling_bin("pc-emulator", "pc-emulator").unwrap_or_else(|missing| {
        panic!("{missing} (`cargo test` at the workspace root builds it)")
    })
}

/// Path of a file under `tests/fixtures` or the repository root.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A running emulator; killed on drop.
pub struct Emulator {
    child: Child,
    pub base: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
    pub stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Emulator {
    /// Start with `seed` (an array of referral documents) and extra flags.
    pub fn start(seed: &Value, extra_args: &[&str]) -> Emulator {
        let dir = tempfile::tempdir().expect("tempdir");
        let seed_path = dir.path().join("seed.json");
        std::fs::write(&seed_path, serde_json::to_vec(seed).unwrap()).unwrap();
        let stderr_path = dir.path().join("emulator.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = Command::new(emulator_bin())
            .args(["--listen", "127.0.0.1:0", "--token", TOKEN, "--seed"])
            .arg(&seed_path)
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start pc-emulator");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected emulator output: {line:?}"))
            .to_owned();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Emulator {
            child,
            base,
            http: reqwest::Client::new(),
            rt,
            stderr_path,
            _dir: dir,
        }
    }

    pub fn api_url(&self) -> String {
        format!("{}/v1.0", self.base)
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        self.rt.block_on(async {
            let mut request = self.http.request(method, &url);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.expect("admin request");
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        })
    }

    /// Every referral the emulator holds.
    pub fn referrals(&self) -> Vec<Value> {
        let (_, body) = self.call(reqwest::Method::GET, "/_admin/referrals", None);
        body["value"].as_array().cloned().unwrap_or_default()
    }

    pub fn referral(&self, id: &str) -> Value {
        self.call(
            reqwest::Method::GET,
            &format!("/_admin/referrals/{id}"),
            None,
        )
        .1
    }

    /// The referral whose externalReferenceId is `external_id` (exactly one).
    pub fn referral_for(&self, external_id: &str) -> Value {
        let matching: Vec<Value> = self
            .referrals()
            .into_iter()
            .filter(|r| r["externalReferenceId"] == json!(external_id))
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "referrals for {external_id}: {matching:?}"
        );
        matching.into_iter().next().unwrap()
    }

    /// The request journal.
    pub fn requests(&self) -> Vec<Value> {
        let (_, body) = self.call(reqwest::Method::GET, "/_admin/requests", None);
        body["value"].as_array().cloned().unwrap_or_default()
    }

    /// Journal entries for one method (e.g. "PATCH").
    pub fn requests_with_method(&self, method: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["method"] == json!(method))
            .collect()
    }

    pub fn clear_requests(&self) {
        self.call(reqwest::Method::DELETE, "/_admin/requests", None);
    }

    /// Append fault rules (one rule or an array).
    pub fn add_faults(&self, rules: Value) {
        let (status, body) = self.call(reqwest::Method::POST, "/_admin/faults", Some(rules));
        assert!(status < 300, "faults refused: {status} {body}");
    }

    pub fn clear_faults(&self) {
        self.call(reqwest::Method::DELETE, "/_admin/faults", None);
    }

    /// A seller's edit in Partner Center: any JSON Patch, new eTag.
    pub fn seller_edit(&self, id: &str, patch: Value) -> Value {
        let (status, body) = self.call(
            reqwest::Method::POST,
            &format!("/_admin/referrals/{id}/edit"),
            Some(patch),
        );
        assert_eq!(status, 200, "edit refused: {body}");
        body
    }

    /// The fault rules in force, each with its `matched` and `fired`
    /// counters.
    pub fn faults(&self) -> Vec<Value> {
        let (_, body) = self.call(reqwest::Method::GET, "/_admin/faults", None);
        body["value"].as_array().cloned().unwrap_or_default()
    }

    /// Every access token the emulator issued (or was started with) stops
    /// working now.
    pub fn expire_tokens(&self) {
        let (status, body) = self.call(reqwest::Method::POST, "/_admin/tokens/expire", None);
        assert_eq!(status, 200, "expire refused: {body}");
    }

    /// The token endpoint of `tenant` (`auth.token_url`).
    pub fn token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/token", self.base)
    }

    pub fn insert(&self, referral: Value) {
        let (status, body) = self.call(reqwest::Method::POST, "/_admin/referrals", Some(referral));
        assert_eq!(status, 201, "insert refused: {body}");
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory with a configuration, a token and an export.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub export: PathBuf,
    pub store: PathBuf,
}

impl Workspace {
    /// `entity` is "opportunity" or "lead"; `export_name` the export's file
    /// name (its extension decides the format); `extra` is appended to the
    /// configuration (TOML).
    pub fn new(emulator: &Emulator, entity: &str, export_name: &str, extra: &str) -> Workspace {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let export = dir.path().join(export_name);
        let store = dir.path().join("store.db");
        let config = dir.path().join("referral-sync.toml");
        let text = format!(
            r#"[export]
path = "{export}"
entity = "{entity}"

[store]
path = "{store}"

[api]
base_url = "{api}"
request_timeout_secs = 5
connect_timeout_secs = 2

[api.retry]
initial = "20ms"
max_interval = "200ms"
max_elapsed = "20s"
max_attempts = 6

[auth]
token_file = "{token}"

{extra}
"#,
            export = export.display(),
            store = store.display(),
            api = emulator.api_url(),
            token = token.display(),
        );
        std::fs::write(&config, text).unwrap();
        Workspace {
            dir,
            config,
            export,
            store,
        }
    }

    /// Rewrite the configuration file, e.g. to put a key under a table
    /// `new` already wrote (`[api]`, `[auth]`): TOML allows a table once.
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, edit(text)).unwrap();
    }

    /// Add `key = value` lines at the top of the `[table]` `new` wrote.
    pub fn set_in_table(&self, table: &str, lines: &str) {
        let header = format!("[{table}]\n");
        self.edit_config(|text| {
            assert!(text.contains(&header), "no {header:?} in the configuration");
            text.replacen(&header, &format!("{header}{lines}\n"), 1)
        });
    }

    pub fn write_export(&self, contents: &str) {
        std::fs::write(&self.export, contents).unwrap();
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(referral_sync_bin());
        command
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1");
        command
    }

    /// Run referral-sync to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        let started = Instant::now();
        let output = self.command(args).output().expect("run referral-sync");
        Run {
            output,
            elapsed: started.elapsed(),
        }
    }

    /// `status --json`.
    pub fn status(&self) -> Value {
        let run = self.run(&["status", "--json"]);
        assert_eq!(run.code(), 0, "status failed: {}", run.stderr());
        serde_json::from_str(&run.stdout()).expect("status JSON")
    }

    /// One row of the store, read directly.
    pub fn stored(&self, external_id: &str) -> Option<StoredRow> {
        let conn = rusqlite::Connection::open(&self.store).ok()?;
        conn.query_row(
            "SELECT referral_id, etag, snapshot, state, last_error, attempts FROM records WHERE external_id = ?1",
            [external_id],
            |row| {
                Ok(StoredRow {
                    referral_id: row.get(0)?,
                    etag: row.get(1)?,
                    snapshot: row
                        .get::<_, Option<String>>(2)?
                        .map(|s| serde_json::from_str(&s).unwrap()),
                    state: row.get(3)?,
                    last_error: row.get(4)?,
                    attempts: row.get(5)?,
                })
            },
        )
        .ok()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    pub referral_id: Option<String>,
    pub etag: Option<String>,
    pub snapshot: Option<Value>,
    pub state: String,
    pub last_error: Option<String>,
    pub attempts: i64,
}

pub struct Run {
    pub output: Output,
    pub elapsed: Duration,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    /// stdout parsed as JSON Lines (for `--output json`).
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout()
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
    #[track_caller]
    pub fn assert_code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.code(),
            expected,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }
}

/// An OData page holding `records`.
pub fn odata_page(records: &[Value]) -> String {
    serde_json::to_string_pretty(&json!({
        "@odata.context": "https://contoso.crm.dynamics.com/api/data/v9.2/$metadata#opportunities",
        "value": records,
    }))
    .unwrap()
}

/// An opportunity record in Web API shape.
pub fn opportunity(id: &str, name: &str, value: f64, statecode: i64, statuscode: i64) -> Value {
    json!({
        "@odata.etag": "W/\"1\"",
        "opportunityid": id,
        "name": name,
        "estimatedvalue": value,
        "estimatedclosedate": "2025-03-31",
        "description": format!("{name} notes"),
        "statecode": statecode,
        "statuscode": statuscode,
        "_customerid_value@OData.Community.Display.V1.FormattedValue": format!("{name} Customer"),
        "transactioncurrencyid": {"isocurrencycode": "USD"},
    })
}

/// Wait until `check` holds, or panic after `timeout`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

// ---------------------------------------------------------------------------
// Reliability: the desired state computed from the export by the library,
// the invariants every fault and crash test checks, and processes that can
// be killed.

/// What the export says Partner Center should hold: the desired document
/// per external id and the mapping's managed leaves (JSON Pointers).
pub struct Desired {
    pub documents: std::collections::BTreeMap<String, Value>,
    pub managed: Vec<String>,
}

impl Emulator {
    /// Every referral, by external id (several per id would be a bug the
    /// caller checks with [`assert_no_duplicates`]).
    pub fn referrals_by_external_id(&self) -> std::collections::BTreeMap<String, Vec<Value>> {
        let mut by_id: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
        for referral in self.referrals() {
            if let Some(id) = referral["externalReferenceId"].as_str() {
                by_id.entry(id.to_owned()).or_default().push(referral);
            }
        }
        by_id
    }
}

/// A `referral-sync` process started in the background, its output going
/// to files so that it can be killed at any moment.
pub struct Spawned {
    pub child: Child,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl Spawned {
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }
}

impl Workspace {
    /// Run to completion with extra environment variables (e.g. a shorter
    /// `REFERRAL_SYNC__API__REQUEST_TIMEOUT_SECS`, or `RUST_LOG`).
    pub fn run_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let started = Instant::now();
        let mut command = self.command(args);
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().expect("run referral-sync");
        Run {
            output,
            elapsed: started.elapsed(),
        }
    }

    /// Start in the background; `tag` names the output files.
    pub fn spawn(&self, args: &[&str], tag: &str) -> Spawned {
        let stdout_path = self.dir.path().join(format!("{tag}.stdout"));
        let stderr_path = self.dir.path().join(format!("{tag}.stderr"));
        let child = self
            .command(args)
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("start referral-sync");
        Spawned {
            child,
            stdout_path,
            stderr_path,
        }
    }

    /// Every row of the `records` table, by external id.
    pub fn all_stored(&self) -> std::collections::BTreeMap<String, StoredRow> {
        let mut rows = std::collections::BTreeMap::new();
        if !self.store.exists() {
            return rows;
        }
        let conn = rusqlite::Connection::open(&self.store).unwrap();
        // A process killed before its first migration leaves an empty file.
        let mut statement =
            match conn.prepare("SELECT external_id FROM records ORDER BY external_id") {
                Ok(statement) => statement,
                Err(e) if e.to_string().contains("no such table") => return rows,
                Err(e) => panic!("store {}: {e}", self.store.display()),
            };
        let ids: Vec<String> = statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for id in ids {
            let row = self.stored(&id).unwrap();
            rows.insert(id, row);
        }
        rows
    }

    /// `PRAGMA integrity_check` of the store, read with its WAL.
    pub fn integrity_check(&self) -> String {
        let conn = rusqlite::Connection::open(&self.store).unwrap();
        let results: Vec<String> = conn
            .prepare("PRAGMA integrity_check")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        results.join("; ")
    }

    /// The desired documents, computed from the export with the library's
    /// own reader and mapper under this workspace's configuration. Records
    /// that do not map are left out.
    pub fn desired(&self) -> Desired {
        let settings = referral_sync::config::Settings::load(&self.config).unwrap();
        let mapper = settings.mapper();
        let mut documents = std::collections::BTreeMap::new();
        referral_sync::export::read_export(&settings.export_options(), &mut |record| {
            if let Ok(mapped) = mapper.map(&record) {
                documents.insert(mapped.external_id, mapped.document);
            }
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
        Desired {
            documents,
            managed: mapper.managed_paths().leaves(),
        }
    }
}

/// `null` and an absent member are the same "empty" value.
fn at_pointer<'v>(document: &'v Value, pointer: &str) -> Option<&'v Value> {
    document.pointer(pointer).filter(|value| !value.is_null())
}

/// Managed leaves on which `live` does not hold what `desired` holds, as
/// `pointer: live … desired …` lines.
pub fn mapped_differences(live: &Value, desired: &Value, managed: &[String]) -> Vec<String> {
    managed
        .iter()
        .filter_map(|pointer| {
            let (have, want) = (at_pointer(live, pointer), at_pointer(desired, pointer));
            (have != want).then(|| format!("{pointer}: live {have:?}, desired {want:?}"))
        })
        .collect()
}

/// At most one referral per external id, and no array anywhere in any
/// referral holding the same element twice (or two team members with the
/// same email).
#[track_caller]
pub fn assert_no_duplicates(emulator: &Emulator) {
    for (external_id, referrals) in emulator.referrals_by_external_id() {
        assert_eq!(
            referrals.len(),
            1,
            "{} referrals carry externalReferenceId {external_id}: {referrals:#?}",
            referrals.len()
        );
        assert_no_repeated_elements(&referrals[0], "");
    }
}

#[track_caller]
fn assert_no_repeated_elements(value: &Value, at: &str) {
    match value {
        Value::Array(elements) => {
            for (i, element) in elements.iter().enumerate() {
                assert!(
                    !elements[..i].contains(element),
                    "{at}/{i} repeats an earlier element: {element}"
                );
                assert_no_repeated_elements(element, &format!("{at}/{i}"));
            }
            let emails: Vec<String> = elements
                .iter()
                .filter_map(|e| e["email"].as_str())
                .map(str::to_ascii_lowercase)
                .collect();
            for (i, email) in emails.iter().enumerate() {
                assert!(
                    !emails[..i].contains(email),
                    "{at}: two members with email {email}"
                );
            }
        }
        Value::Object(members) => {
            for (key, member) in members {
                assert_no_repeated_elements(member, &format!("{at}/{key}"));
            }
        }
        _ => {}
    }
}

/// The end state every fault and crash test must reach: the store is
/// sound; one referral per record, nothing duplicated; every live referral
/// holds the desired document on every managed path; every record is
/// `synced` with the live referral's id and eTag and the desired document
/// as its snapshot. Returns the live referrals by external id.
#[track_caller]
pub fn assert_converged(
    emulator: &Emulator,
    ws: &Workspace,
) -> std::collections::BTreeMap<String, Value> {
    assert_eq!(ws.integrity_check(), "ok");
    assert_no_duplicates(emulator);
    let desired = ws.desired();
    let live = emulator.referrals_by_external_id();
    let stored = ws.all_stored();
    let mut out = std::collections::BTreeMap::new();
    for (external_id, document) in &desired.documents {
        let referral = live
            .get(external_id)
            .and_then(|r| r.first())
            .unwrap_or_else(|| panic!("no referral for {external_id}"));
        let differences = mapped_differences(referral, document, &desired.managed);
        assert!(
            differences.is_empty(),
            "{external_id} differs on managed paths:\n{}",
            differences.join("\n")
        );
        let row = stored
            .get(external_id)
            .unwrap_or_else(|| panic!("no store row for {external_id}"));
        assert_eq!(row.state, "synced", "{external_id}: {row:?}");
        assert_eq!(
            row.referral_id.as_ref(),
            referral["id"].as_str().map(str::to_owned).as_ref()
        );
        assert_eq!(
            row.etag.as_deref(),
            referral["eTag"].as_str(),
            "{external_id}"
        );
        assert_eq!(row.snapshot.as_ref(), Some(document), "{external_id}");
        out.insert(external_id.clone(), referral.clone());
    }
    out
}

/// The external id of lead number `n`.
pub fn lead_id(n: u32) -> String {
    format!("0d000000-0000-4000-8000-{n:012}")
}

/// A lead record (JSON Lines shape): status New, one team member.
pub fn lead(n: u32, name: &str, amount: i64) -> Value {
    json!({
        "leadid": lead_id(n),
        "subject": name,
        "estimatedamount": amount,
        "statecode": 0,
        "statuscode": 1,
        "companyname": format!("{name} Ltd"),
        "firstname": "Ann",
        "lastname": format!("Lee {n}"),
        "emailaddress1": format!("ann.{n}@example.com"),
        "description": format!("{name} notes"),
    })
}

/// Records as JSON Lines.
pub fn jsonl(records: &[Value]) -> String {
    records.iter().map(|r| format!("{r}\n")).collect()
}

/// Configuration that maps a second team member (`new_secondemail`,
/// `new_secondfirstname`), so that a CRM change can append to an array.
pub const SECOND_MEMBER_MAPPING: &str = r#"
[mapping.fields."customerProfile.team[1].email"]
from = "new_secondemail"
type = "email"

[mapping.fields."customerProfile.team[1].firstName"]
from = "new_secondfirstname"
type = "text"
"#;

/// Give lead `record` a second team member.
pub fn with_second_member(mut record: Value, first_name: &str) -> Value {
    let n = record["lastname"].as_str().unwrap_or_default().to_owned();
    record["new_secondemail"] = json!(format!(
        "{}.{}@example.com",
        first_name.to_ascii_lowercase(),
        n.replace(' ', "")
    ));
    record["new_secondfirstname"] = json!(first_name);
    record
}
