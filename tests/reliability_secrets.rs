//! Secrets stay secret: full cycles at trace level, with a token file and
//! with the refresh-token flow (tokens expiring mid-cycle, a refused
//! grant, a rejected token), and no token, refresh token or client secret
//! in standard output, standard error, `status`, or the bytes of the store
//! and its WAL. Secret files open to group or others are warned about by
//! name.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{Value, json};

const CLIENT_SECRET: &str = "client-secret-9d8f7a6b5c4e";
const SEED_REFRESH_TOKEN: &str = "refresh-seed-1a2b3c4d5e6f";
const WRONG_TOKEN: &str = "wrong-token-77aa66bb55cc";
/// Every access and refresh token the emulator issues starts so.
const ISSUED_PREFIXES: [&str; 2] = ["emulator-access-", "emulator-refresh-"];

const TRACE: [(&str, &str); 1] = [("RUST_LOG", "trace")];

/// Everything a person or a program could read after the runs.
fn exposed_text(ws: &Workspace, runs: &[&Run]) -> Vec<(String, Vec<u8>)> {
    let mut places: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        places.push((format!("stdout of run {i}"), run.output.stdout.clone()));
        places.push((format!("stderr of run {i}"), run.output.stderr.clone()));
    }
    let status = ws.run(&["status", "--json"]);
    places.push(("status --json".into(), status.output.stdout));
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let mut path = ws.store.clone().into_os_string();
        path.push(suffix);
        if let Ok(bytes) = std::fs::read(PathBuf::from(path)) {
            places.push((format!("store{suffix}"), bytes));
        }
    }
    places
}

#[track_caller]
fn assert_absent(places: &[(String, Vec<u8>)], secrets: &[&str]) {
    for (place, bytes) in places {
        for secret in secrets {
            let found = bytes
                .windows(secret.len())
                .any(|window| window == secret.as_bytes());
            assert!(!found, "`{secret}` appears in {place}");
        }
    }
}

/// The log must have been at trace level for the check to mean anything.
#[track_caller]
fn assert_traced(run: &Run) {
    let stderr = run.stderr();
    assert!(stderr.contains("TRACE"), "no trace lines:\n{stderr}");
    assert!(stderr.contains("DEBUG"), "no debug lines:\n{stderr}");
}

fn records(round: u32) -> Vec<Value> {
    (1..=5)
        .map(|n| {
            lead(
                n,
                &format!("Lead {n} r{round}"),
                1000 * i64::from(n + round),
            )
        })
        .collect()
}

#[test]
fn a_token_file_never_leaves_its_file() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = Workspace::new(
        &emulator,
        "lead",
        "export.jsonl",
        "[sync]\ncreate_missing = true\n",
    );
    ws.write_export(&jsonl(&records(1)));
    let create = ws.run_with_env(&["sync"], &TRACE);
    create.assert_code(0);
    assert_traced(&create);

    // A second cycle through retries and a 412, at trace level too.
    ws.write_export(&jsonl(&records(2)));
    let id = emulator.referral_for(&lead_id(2))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    emulator.seller_edit(
        &id,
        json!([{"op": "replace", "path": "/name", "value": "seller"}]),
    );
    emulator.add_faults(json!([
        {"method": "PATCH", "times": 1, "kind": "status", "status": 429, "retry_after": 1},
        {"method": "PATCH", "after": 1, "times": 1, "kind": "reset_after"},
    ]));
    let update = ws.run_with_env(&["sync"], &TRACE);
    update.assert_code(0);
    assert_traced(&update);
    let dry_run = ws.run_with_env(&["sync", "--dry-run", "--output", "json"], &TRACE);
    dry_run.assert_code(0);
    let check = ws.run_with_env(&["check"], &TRACE);
    check.assert_code(0);

    // The emulator did receive the token: the check has something to find.
    assert!(
        emulator
            .requests()
            .iter()
            .all(|r| r["authorized"] == json!(true))
    );
    let mut places = exposed_text(&ws, &[&create, &update, &dry_run, &check]);
    assert!(places.iter().any(|(p, _)| p == "store-wal" || p == "store"));
    assert_absent(&places, &[TOKEN]);
    // The search itself finds a token where there is one.
    places.push((
        "token file".into(),
        std::fs::read(ws.dir.path().join("token")).unwrap(),
    ));
    let found = std::panic::catch_unwind(|| assert_absent(&places, &[TOKEN]));
    assert!(found.is_err());
}

#[test]
fn a_rejected_token_is_not_quoted_in_the_errors() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = Workspace::new(
        &emulator,
        "lead",
        "export.jsonl",
        "[sync]\ncreate_missing = true\n",
    );
    ws.write_export(&jsonl(&records(1)));
    let token_file = ws.dir.path().join("token");
    std::fs::write(&token_file, WRONG_TOKEN).unwrap();
    let run = ws.run_with_env(&["sync"], &TRACE);
    // Refused credentials stop the run part-way.
    run.assert_code(6);
    assert!(run.stderr().contains("HTTP 401"), "{}", run.stderr());
    assert!(
        emulator
            .requests()
            .iter()
            .any(|r| r["authorized"] == json!(false)),
        "the wrong token was never sent"
    );
    assert_absent(&exposed_text(&ws, &[&run]), &[WRONG_TOKEN]);
}

/// A workspace on the refresh-token flow against the emulator's token
/// endpoint, with a client secret.
fn refresh_workspace(emulator: &Emulator, refresh_token: &str) -> (Workspace, PathBuf, PathBuf) {
    let ws = Workspace::new(
        emulator,
        "lead",
        "export.jsonl",
        "[sync]\ncreate_missing = true\n",
    );
    let refresh_file = ws.dir.path().join("refresh-token");
    let secret_file = ws.dir.path().join("client-secret");
    std::fs::write(&refresh_file, format!("{refresh_token}\n")).unwrap();
    std::fs::write(&secret_file, format!("{CLIENT_SECRET}\n")).unwrap();
    for file in [&refresh_file, &secret_file] {
        set_mode(file, 0o600);
    }
    let token_file = ws.dir.path().join("token");
    let text = std::fs::read_to_string(&ws.config).unwrap().replace(
        &format!("token_file = \"{}\"", token_file.display()),
        &format!(
            "tenant = \"contoso\"\nclient_id = \"referral-sync-test\"\n\
             token_url = \"{}/contoso/oauth2/token\"\n\
             refresh_token_file = \"{}\"\nclient_secret_file = \"{}\"",
            emulator.base,
            refresh_file.display(),
            secret_file.display()
        ),
    );
    std::fs::write(&ws.config, text).unwrap();
    std::fs::remove_file(token_file).unwrap();
    (ws, refresh_file, secret_file)
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_refresh_token_flow_keeps_every_token_and_the_client_secret_out_of_sight() {
    let emulator = Emulator::start(&json!([]), &["--refresh-token", SEED_REFRESH_TOKEN]);
    let (ws, refresh_file, _) = refresh_workspace(&emulator, SEED_REFRESH_TOKEN);
    ws.write_export(&jsonl(&records(1)));
    let first = ws.run_with_env(&["sync"], &TRACE);
    first.assert_code(0);
    assert_traced(&first);

    // The rotated refresh token was written back, privately.
    let rotated = std::fs::read_to_string(&refresh_file).unwrap();
    assert!(rotated.starts_with("emulator-refresh-"), "{rotated}");
    assert_eq!(mode(&refresh_file), 0o600);

    // Tokens expire: the next cycle gets a 401, refreshes, goes on.
    ws.write_export(&jsonl(&records(2)));
    let expired: Value = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            reqwest::Client::new()
                .post(format!("{}/_admin/tokens/expire", emulator.base))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap_or(Value::Null)
        })
    };
    let second = ws.run_with_env(&["sync"], &TRACE);
    second.assert_code(0);
    let grants = emulator
        .requests()
        .into_iter()
        .filter(|r| r["path"] == json!("/contoso/oauth2/token"))
        .count();
    assert!(grants >= 2, "{grants} token grants; expire said {expired}");
    // The grant carried the client secret (the journal redacts it).
    let grant = emulator
        .requests()
        .into_iter()
        .find(|r| r["path"] == json!("/contoso/oauth2/token"))
        .unwrap();
    assert_eq!(grant["body"]["client_secret"], json!("<redacted>"));

    let places = exposed_text(&ws, &[&first, &second]);
    let rotated_now = std::fs::read_to_string(&refresh_file).unwrap();
    assert_absent(
        &places,
        &[
            SEED_REFRESH_TOKEN,
            CLIENT_SECRET,
            rotated.trim(),
            rotated_now.trim(),
            ISSUED_PREFIXES[0],
            ISSUED_PREFIXES[1],
        ],
    );
}

#[test]
fn a_refused_grant_names_the_endpoint_not_the_secrets() {
    let emulator = Emulator::start(&json!([]), &["--refresh-token", SEED_REFRESH_TOKEN]);
    // A refresh token the endpoint does not know.
    let (ws, _, _) = refresh_workspace(&emulator, WRONG_TOKEN);
    ws.write_export(&jsonl(&records(1)));
    let run = ws.run_with_env(&["sync"], &TRACE);
    assert_ne!(run.code(), 0);
    let stderr = run.stderr();
    assert!(
        stderr.contains("refused the refresh token grant with HTTP 400")
            && stderr.contains("invalid_grant"),
        "{stderr}"
    );
    assert_absent(
        &exposed_text(&ws, &[&run]),
        &[WRONG_TOKEN, CLIENT_SECRET, SEED_REFRESH_TOKEN],
    );
}

#[test]
fn secret_files_open_to_group_or_others_are_warned_about_by_name() {
    let emulator = Emulator::start(&json!([]), &[]);
    let ws = Workspace::new(
        &emulator,
        "lead",
        "export.jsonl",
        "[sync]\ncreate_missing = true\n",
    );
    ws.write_export(&jsonl(&records(1)));
    let token_file = ws.dir.path().join("token");
    set_mode(&token_file, 0o644);
    let run = ws.run(&["sync"]);
    run.assert_code(0);
    assert!(
        run.stderr().contains(&format!(
            "the token file {} is accessible by group or others (mode 644); restrict it with chmod 600",
            token_file.display()
        )),
        "{}",
        run.stderr()
    );

    let emulator = Emulator::start(&json!([]), &["--refresh-token", SEED_REFRESH_TOKEN]);
    let (ws, refresh_file, secret_file) = refresh_workspace(&emulator, SEED_REFRESH_TOKEN);
    ws.write_export(&jsonl(&records(1)));
    set_mode(&secret_file, 0o640);
    let run = ws.run(&["sync"]);
    run.assert_code(0);
    let stderr = run.stderr();
    assert!(
        stderr.contains(&format!(
            "the client secret file {} is accessible by group or others (mode 640)",
            secret_file.display()
        )),
        "{stderr}"
    );
    // The refresh token file was private and is written back private.
    assert!(
        !stderr.contains(&format!(
            "the refresh token file {}",
            refresh_file.display()
        )),
        "{stderr}"
    );
    assert_eq!(mode(&refresh_file), 0o600);
}
