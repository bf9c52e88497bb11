//! `referral-sync login` end to end: the device-code sign-in against the
//! emulator's Entra ID v2 endpoints, approved or declined through its
//! admin endpoints, then `sync` and `run` with the refresh token it wrote.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const CONTOSO: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";

/// A workspace on the refresh-token flow whose authority is the emulator,
/// with no refresh token yet.
fn login_workspace(emulator: &Emulator) -> (Workspace, PathBuf) {
    let ws = Workspace::new(
        emulator,
        "opportunity",
        "export.json",
        "[sync]\ncreate_missing = true\n\n[schedule]\ncron = \"0 0 0 1 1 *\"\n",
    );
    ws.write_export(&odata_page(&[opportunity(
        CONTOSO, "Contoso", 125000.0, 0, 1,
    )]));
    let refresh_file = ws.dir.path().join("refresh-token");
    let token_file = ws.dir.path().join("token");
    ws.edit_config(|text| {
        text.replace(
            &format!("token_file = \"{}\"", token_file.display()),
            &format!(
                "tenant = \"contoso\"\nclient_id = \"referral-sync-test\"\nauthority = \"{}\"\nrefresh_token_file = \"{}\"",
                emulator.base,
                refresh_file.display()
            ),
        )
    });
    std::fs::remove_file(token_file).unwrap();
    (ws, refresh_file)
}

fn admin(emulator: &Emulator, method: reqwest::Method, path: &str) -> (u16, Value) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .request(method, format!("{}{path}", emulator.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    })
}

/// `login` started in the background, with the code it printed.
struct Login {
    child: Child,
    user_code: String,
    first_line: String,
}

fn start_login(ws: &Workspace) -> Login {
    let mut child = ws
        .command(&["login"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first_line)
        .unwrap();
    let user_code = first_line
        .trim_end()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_owned();
    Login {
        child,
        user_code,
        first_line,
    }
}

fn finish(mut login: Login) -> (i32, String) {
    let mut status = None;
    wait_until(Duration::from_secs(60), "login to end", || {
        status = login.child.try_wait().unwrap();
        status.is_some()
    });
    let mut stderr = String::new();
    use std::io::Read;
    login
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.and_then(|s| s.code()).unwrap_or(-1), stderr)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The requests to the v2 token endpoint, in the order they came.
fn v2_token_requests(emulator: &Emulator) -> Vec<Value> {
    emulator
        .requests()
        .into_iter()
        .filter(|r| r["path"] == json!("/contoso/oauth2/v2.0/token"))
        .collect()
}

/// A sign-in approved after `login` has polled at least once, and what
/// was seen on the way: the shared set-up of the tests below.
struct SignedIn {
    emulator: Emulator,
    ws: Workspace,
    refresh_file: PathBuf,
    first_line: String,
    user_code: String,
    written_before_approval: bool,
    pending: Value,
    code: i32,
    stderr: String,
    /// The refresh token `login` wrote.
    written: String,
    polls: Vec<Value>,
}

fn sign_in() -> SignedIn {
    let emulator = Emulator::start(&json!([]), &["--device-code-interval-secs", "1"]);
    let (ws, refresh_file) = login_workspace(&emulator);
    let login = start_login(&ws);
    wait_until(
        Duration::from_secs(30),
        "a poll answered while the sign-in is pending",
        || {
            v2_token_requests(&emulator)
                .iter()
                .any(|r| r["status"] == 400)
        },
    );
    let written_before_approval = refresh_file.exists();
    let (status, pending) = admin(&emulator, reqwest::Method::GET, "/_admin/device-codes");
    assert_eq!(status, 200);
    let (status, _) = admin(
        &emulator,
        reqwest::Method::POST,
        &format!("/_admin/device-codes/{}/approve", login.user_code),
    );
    assert_eq!(status, 200);
    let first_line = login.first_line.clone();
    let user_code = login.user_code.clone();
    let (code, stderr) = finish(login);
    let written = std::fs::read_to_string(&refresh_file).unwrap_or_default();
    let polls = v2_token_requests(&emulator);
    SignedIn {
        emulator,
        ws,
        refresh_file,
        first_line,
        user_code,
        written_before_approval,
        pending,
        code,
        stderr,
        written,
        polls,
    }
}

#[test]
fn login_prints_where_to_sign_in_and_an_eight_character_code() {
    let signed_in = sign_in();
    assert!(
        signed_in.first_line.starts_with(&format!(
            "To sign in, open {}/devicelogin in a browser and enter the code ",
            signed_in.emulator.base
        )),
        "{}",
        signed_in.first_line
    );
    assert_eq!(signed_in.user_code.len(), 8, "{}", signed_in.first_line);
}

#[test]
fn login_writes_nothing_while_the_sign_in_is_pending() {
    let signed_in = sign_in();
    assert!(!signed_in.written_before_approval);
    assert_eq!(
        signed_in.pending["value"][0]["user_code"],
        json!(signed_in.user_code)
    );
    assert_eq!(
        signed_in.pending["value"][0]["scope"],
        "https://api.partner.microsoft.com/.default offline_access"
    );
}

#[test]
fn an_approved_login_writes_one_refresh_token_line_with_mode_0600_and_prints_it_nowhere() {
    let signed_in = sign_in();
    assert_eq!(signed_in.code, 0, "{}", signed_in.stderr);
    assert_eq!(mode(&signed_in.refresh_file), 0o600);
    let written = &signed_in.written;
    assert!(
        written.starts_with("emulator-refresh-") && written.ends_with('\n'),
        "{written}"
    );
    assert_eq!(written.lines().count(), 1);
    assert!(
        !signed_in.stderr.contains(written.trim()),
        "the refresh token leaked: {}",
        signed_in.stderr
    );
}

#[test]
fn login_polls_the_v2_endpoint_with_the_device_code_grant_until_approved() {
    let signed_in = sign_in();
    let polls = &signed_in.polls;
    // None faster than the interval: no slow_down.
    assert!(polls.len() >= 2, "{polls:?}");
    for poll in polls {
        assert_eq!(
            poll["body"]["grant_type"],
            "urn:ietf:params:oauth:grant-type:device_code"
        );
        assert_eq!(poll["body"]["device_code"], "<redacted>");
    }
    assert_eq!(polls.last().unwrap()["status"], 200);
    assert!(polls[..polls.len() - 1].iter().all(|p| p["status"] == 400));
}

#[test]
fn sync_refreshes_with_the_written_token_at_the_v2_endpoint_and_keeps_the_rotated_one_private() {
    let signed_in = sign_in();
    let emulator = &signed_in.emulator;
    emulator.clear_requests();
    signed_in.ws.run(&["sync"]).assert_code(0);
    assert_eq!(emulator.referral_for(CONTOSO)["name"], "Contoso");
    let grants = v2_token_requests(emulator);
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0]["body"]["grant_type"], "refresh_token");
    assert_eq!(
        grants[0]["body"]["scope"],
        "https://api.partner.microsoft.com/.default offline_access"
    );
    assert_eq!(
        grants[0]["body"]["refresh_token"],
        json!(signed_in.written.trim())
    );
    assert_eq!(grants[0]["status"], 200);
    assert_ne!(
        std::fs::read_to_string(&signed_in.refresh_file).unwrap(),
        signed_in.written
    );
    assert_eq!(mode(&signed_in.refresh_file), 0o600);
}

#[test]
fn the_daemon_runs_on_the_written_token_after_a_sync_rotated_it() {
    let signed_in = sign_in();
    let ws = &signed_in.ws;
    ws.run(&["sync"]).assert_code(0);
    ws.write_export(&odata_page(&[opportunity(
        CONTOSO,
        "Contoso renamed",
        125000.0,
        0,
        1,
    )]));
    let mut daemon = ws.spawn(&["run"], "daemon");
    wait_until(
        Duration::from_secs(60),
        "the daemon's startup cycle",
        || daemon.stderr().contains("cycle finished"),
    );
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(daemon.child.id() as libc::pid_t, libc::SIGTERM) };
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "{}", daemon.stderr());
    assert_eq!(
        signed_in.emulator.referral_for(CONTOSO)["name"],
        "Contoso renamed"
    );
}

#[test]
fn a_declined_sign_in_exits_1_and_writes_nothing() {
    let emulator = Emulator::start(&json!([]), &["--device-code-interval-secs", "1"]);
    let (ws, refresh_file) = login_workspace(&emulator);
    let login = start_login(&ws);
    let (status, _) = admin(
        &emulator,
        reqwest::Method::POST,
        &format!("/_admin/device-codes/{}/deny", login.user_code),
    );
    assert_eq!(status, 200);
    let (code, stderr) = finish(login);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "error: sign-in failed: the sign-in was declined: the user declined the sign-in"
        ),
        "{stderr}"
    );
    assert!(!refresh_file.exists());
}

#[test]
fn a_code_left_to_expire_exits_1_and_writes_nothing() {
    let emulator = Emulator::start(
        &json!([]),
        &[
            "--device-code-interval-secs",
            "1",
            "--device-code-lifetime-secs",
            "2",
        ],
    );
    let (ws, refresh_file) = login_workspace(&emulator);
    let login = start_login(&ws);
    let (code, stderr) = finish(login);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "error: sign-in failed: the code expired before the sign-in was completed; run `referral-sync login` again"
        ),
        "{stderr}"
    );
    assert!(!refresh_file.exists());
}

#[test]
fn login_needs_the_refresh_token_flow() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = Workspace::new(&emulator, "opportunity", "export.json", "");
    let run = ws.run(&["login"]);
    run.assert_code(2);
    assert!(
        run.stderr()
            .contains("login writes auth.refresh_token_file: configure the refresh-token flow"),
        "{}",
        run.stderr()
    );
    assert!(emulator.requests().is_empty());
}
