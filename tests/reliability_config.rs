//! Configuration errors at the binary level: every command refuses to
//! start (exit 2) with a message naming the key, creates no store and sends
//! nothing; secret files that cannot be read are reported by `check` under
//! their key and stop `sync` from sending anything.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{Value, json};

/// A configuration whose last table is `[api]`, so that a case can append
/// keys to it or start a table of its own.
struct Setup {
    emulator: Emulator,
    dir: tempfile::TempDir,
    config: PathBuf,
    store: PathBuf,
    token: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let emulator = Emulator::start(&json!([]), &[]);
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        set_mode(&token, 0o600);
        let records: Vec<Value> = (1..=2)
            .map(|n| lead(n, &format!("Lead {n}"), 100))
            .collect();
        std::fs::write(dir.path().join("export.jsonl"), jsonl(&records)).unwrap();
        let store = dir.path().join("store.db");
        let config = dir.path().join("referral-sync.toml");
        let setup = Setup {
            emulator,
            dir,
            config,
            store,
            token,
        };
        setup.write_config("");
        setup
    }

    fn write_config(&self, appended: &str) {
        let text = format!(
            "[export]\npath = \"export.jsonl\"\nentity = \"lead\"\n\n\
             [store]\npath = \"{store}\"\n\n\
             [auth]\ntoken_file = \"{token}\"\n\n\
             [sync]\ncreate_missing = true\n\n\
             [api]\nbase_url = \"{api}\"\nrequest_timeout_secs = 5\n{appended}\n",
            store = self.store.display(),
            token = self.token.display(),
            api = self.emulator.api_url(),
        );
        std::fs::write(&self.config, text).unwrap();
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut command = Command::new(referral_sync_bin());
        command
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1");
        for (key, value) in env {
            command.env(key, value);
        }
        let started = std::time::Instant::now();
        let output = command.output().unwrap();
        Run {
            output,
            elapsed: started.elapsed(),
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `(appended to [api], environment, the message after "error: ")`.
type ConfigCase = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

const CONFIG_ERRORS: &[ConfigCase] = &[
    (
        "concurency = 4",
        &[],
        "unknown field `concurency`, expected one of `base_url`, `concurrency`,",
    ),
    (
        "[apii]\nconcurrency = 4",
        &[],
        "unknown field `apii`, expected one of `export`, `store`, `api`,",
    ),
    (
        "[sync.extra]\nx = 1",
        &[],
        "unknown field `extra`, expected one of `default_currency`,",
    ),
    (
        "",
        &[("REFERRAL_SYNC__SYNC__MAX_MISING_RATIO", "0.2")],
        "unknown field `max_mising_ratio`",
    ),
    (
        "[schedule]\ncron = \"0 61 * * * *\"",
        &[],
        "configuration key `schedule.cron`: \"0 61 * * * *\" is not a valid expression",
    ),
    (
        "[schedule]\ncron = \"*/5 * * * *\"",
        &[],
        "configuration key `schedule.cron`: \"*/5 * * * *\" has 5 fields; six are needed (seconds first)",
    ),
    (
        "[schedule]\ncron = \"every five minutes\"",
        &[],
        "configuration key `schedule.cron`: \"every five minutes\" has 3 fields",
    ),
    (
        "",
        &[(
            "REFERRAL_SYNC__API__BASE_URL",
            "http://partner.example.com/v1.0",
        )],
        "configuration key `api.base_url`: \"http://partner.example.com/v1.0\" is plain http to a host that is not loopback; use https, or set api.allow_insecure = true",
    ),
    (
        "",
        &[("REFERRAL_SYNC__API__BASE_URL", "http://10.1.2.3:8080/v1.0")],
        "configuration key `api.base_url`: \"http://10.1.2.3:8080/v1.0\" is plain http to a host that is not loopback",
    ),
    (
        "concurrency = \"many\"",
        &[],
        "invalid type: string \"many\", expected an integer for key `api.concurrency`",
    ),
    (
        "",
        &[("REFERRAL_SYNC__SYNC__MAX_MISSING_RATIO", "1.5")],
        "configuration key `sync.max_missing_ratio`: must be between 0 and 1",
    ),
    ("[api", &[], "TOML parse error at line 17, column 5"),
];

#[test]
fn a_configuration_error_stops_every_command_with_exit_2_naming_the_key() {
    let setup = Setup::new();
    for &(appended, env, message) in CONFIG_ERRORS {
        setup.write_config(appended);
        for args in [
            &["check"][..],
            &["sync"],
            &["sync", "--dry-run"],
            &["status", "--json"],
        ] {
            let run = setup.run(args, env);
            let case = format!("{appended:?} {env:?}, {args:?}");
            assert_eq!(run.code(), 2, "{case}: {}{}", run.stdout(), run.stderr());
            assert!(
                run.stderr().starts_with("error: ") && run.stderr().contains(message),
                "{case}: expected {message:?} in\n{}",
                run.stderr()
            );
            assert_eq!(run.stdout(), "", "{case}");
        }
    }
    assert!(!setup.store.exists(), "a store was created");
    assert!(setup.emulator.requests().is_empty());
}

#[test]
fn a_missing_configuration_file_is_named() {
    let setup = Setup::new();
    let missing = setup.dir.path().join("nowhere.toml");
    let run = Command::new(referral_sync_bin())
        .arg("--config")
        .arg(&missing)
        .arg("sync")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(&format!(
            "configuration key `--config`: {} is not a readable file",
            missing.display()
        )),
        "{stderr}"
    );
}

#[test]
fn plain_http_to_another_host_needs_the_explicit_opt_in() {
    let setup = Setup::new();
    setup.write_config("allow_insecure = true");
    let env = [(
        "REFERRAL_SYNC__API__BASE_URL",
        "http://partner.example.com/v1.0",
    )];
    let check = setup.run(&["check"], &env);
    check.assert_code(0);
    assert!(
        check.stdout().contains("referral-sync.toml: ok"),
        "{}",
        check.stdout()
    );
    setup
        .run(&["sync", "--dry-run", "--offline"], &env)
        .assert_code(0);
    // Loopback needs no opt-in.
    setup.write_config("");
    for url in [
        "http://localhost:9/v1.0",
        "http://127.0.0.1:9/v1.0",
        "http://[::1]:9/v1.0",
    ] {
        setup
            .run(&["check"], &[("REFERRAL_SYNC__API__BASE_URL", url)])
            .assert_code(0);
    }
}

#[test]
fn check_names_the_key_of_a_secret_file_it_cannot_read() {
    let setup = Setup::new();
    let missing = setup.dir.path().join("no-such-token");
    let run = setup.run(
        &["check"],
        &[("REFERRAL_SYNC__AUTH__TOKEN_FILE", missing.to_str().unwrap())],
    );
    run.assert_code(1);
    assert!(
        run.stdout().contains(&format!(
            "problem: auth.token_file: cannot read the token file {}: No such file or directory",
            missing.display()
        )),
        "{}",
        run.stdout()
    );

    // The refresh-token flow: each of its files under its own key.
    let refresh = setup.dir.path().join("refresh-token");
    std::fs::write(&refresh, "r").unwrap();
    let text = std::fs::read_to_string(&setup.config).unwrap().replace(
        &format!("token_file = \"{}\"", setup.token.display()),
        &format!(
            "tenant = \"contoso\"\nclient_id = \"c\"\nrefresh_token_file = \"{}\"\nclient_secret_file = \"{}\"",
            refresh.display(),
            missing.display()
        ),
    );
    std::fs::write(&setup.config, text).unwrap();
    let run = setup.run(&["check"], &[]);
    run.assert_code(1);
    assert!(
        run.stdout().contains(&format!(
            "auth.refresh_token_file {}: readable",
            refresh.display()
        )),
        "{}",
        run.stdout()
    );
    assert!(
        run.stdout().contains(&format!(
            "problem: auth.client_secret_file: cannot read the client secret file {}: No such file or directory",
            missing.display()
        )),
        "{}",
        run.stdout()
    );
}

/// `check` reads a secret file as the client will
/// (`api::auth::check_secret_file`), so that a directory or an empty file
/// is a problem, not "readable" (see RELIABILITY.md, "Open").
#[test]
fn check_reads_a_secret_file_as_the_client_will() {
    let setup = Setup::new();
    let directory = setup.dir.path().join("a-directory");
    std::fs::create_dir(&directory).unwrap();
    let blank = setup.dir.path().join("blank");
    std::fs::write(&blank, "\n").unwrap();
    for (path, reason) in [(&directory, "Is a directory"), (&blank, "is empty")] {
        let run = setup.run(
            &["check"],
            &[("REFERRAL_SYNC__AUTH__TOKEN_FILE", path.to_str().unwrap())],
        );
        run.assert_code(1);
        assert!(
            run.stdout().contains("problem: auth.token_file") && run.stdout().contains(reason),
            "{}",
            run.stdout()
        );
    }
}

#[test]
fn sync_with_an_unreadable_token_file_sends_nothing_and_advances_nothing() {
    let setup = Setup::new();
    setup.run(&["sync"], &[]).assert_code(0);
    let before: Vec<Value> = setup.emulator.referrals();
    let records: Vec<Value> = (1..=2)
        .map(|n| lead(n, &format!("Lead {n} renamed"), 200))
        .collect();
    std::fs::write(setup.dir.path().join("export.jsonl"), jsonl(&records)).unwrap();
    setup.emulator.clear_requests();
    std::fs::remove_file(&setup.token).unwrap();

    let run = setup.run(&["sync"], &[]);
    assert_ne!(run.code(), 0);
    assert!(
        run.stderr().contains(&format!(
            "cannot read the token file {}: No such file or directory",
            setup.token.display()
        )),
        "{}",
        run.stderr()
    );
    assert!(setup.emulator.requests().is_empty());
    assert_eq!(setup.emulator.referrals(), before);
    let conn = rusqlite::Connection::open(&setup.store).unwrap();
    let names: Vec<String> = conn
        .prepare("SELECT json_extract(snapshot, '$.name') FROM records ORDER BY external_id")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(names, ["Lead 1", "Lead 2"]);
}

/// `sync` reads its secret files before the cycle, as `check`
/// does, and stops with exit 2 naming the key instead of failing every
/// record one by one (see RELIABILITY.md, "Open").
#[test]
fn sync_with_an_unreadable_token_file_stops_before_the_cycle_with_exit_2() {
    let setup = Setup::new();
    std::fs::remove_file(&setup.token).unwrap();
    let run = setup.run(&["sync"], &[]);
    run.assert_code(2);
    assert!(run.stderr().contains("auth.token_file"), "{}", run.stderr());
    assert!(!run.stdout().contains("failed "), "{}", run.stdout());
}

/// Output cut short by a closed pipe (`| head`) ends the command
/// quietly, as ripgrep does, instead of a panic with exit 101.
#[test]
fn a_closed_stdout_pipe_is_not_a_panic() {
    use std::process::Stdio;
    let setup = Setup::new();
    let mut child = Command::new(referral_sync_bin())
        .arg("--config")
        .arg(&setup.config)
        .arg("check")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(output.status.code(), Some(101));
}

/// A token file that is not one header-safe line: `check` names the key,
/// the file and where the line breaks (never the token); `sync` and `run`
/// stop before any request with exit 2, saying the same.
#[test]
fn a_token_file_of_two_lines_or_with_a_control_byte_is_refused_by_key_and_file() {
    let setup = Setup::new();
    let cases = [
        (
            format!("{TOKEN}\nsecond-line\n"),
            "it has 2 lines".to_owned(),
        ),
        (
            format!("{TOKEN}\u{1b}[0m\n"),
            format!("control byte 0x1b at byte {}", TOKEN.len() + 1),
        ),
        (format!("Bearer {TOKEN}\n"), "a space at byte 7".to_owned()),
    ];
    for (content, problem) in cases {
        std::fs::write(&setup.token, &content).unwrap();
        set_mode(&setup.token, 0o600);
        let expected = format!(
            "auth.token_file: the token file {} is not one line of printable ASCII: {problem} (one line is expected; a trailing newline is allowed)",
            setup.token.display()
        );

        let check = setup.run(&["check"], &[]);
        check.assert_code(1);
        assert!(
            check.stdout().contains(&format!("problem: {expected}")),
            "{}",
            check.stdout()
        );
        for command in [&["sync"][..], &["run"][..]] {
            let run = setup.run(command, &[]);
            run.assert_code(2);
            assert!(
                run.stderr().contains(&expected),
                "{command:?}: {}",
                run.stderr()
            );
            assert!(!run.stderr().contains("builder error"), "{}", run.stderr());
        }
        for run_output in [check.stdout(), check.stderr()] {
            assert!(!run_output.contains(TOKEN), "{run_output}");
        }
        assert!(setup.emulator.requests().is_empty());
    }
    // A trailing newline (or CRLF) is fine.
    std::fs::write(&setup.token, format!("{TOKEN}\r\n")).unwrap();
    setup.run(&["check"], &[]).assert_code(0);
}

#[test]
fn a_refresh_token_file_of_two_lines_is_refused_by_key_and_file() {
    let setup = Setup::new();
    let refresh = setup.dir.path().join("refresh-token");
    std::fs::write(&refresh, "rt-first\nrt-second\n").unwrap();
    set_mode(&refresh, 0o600);
    let text = std::fs::read_to_string(&setup.config).unwrap().replace(
        &format!("token_file = \"{}\"", setup.token.display()),
        &format!(
            "tenant = \"contoso\"\nclient_id = \"c\"\ntoken_url = \"{}/contoso/oauth2/token\"\nrefresh_token_file = \"{}\"",
            setup.emulator.base,
            refresh.display()
        ),
    );
    std::fs::write(&setup.config, text).unwrap();
    let expected = format!(
        "auth.refresh_token_file: the refresh token file {} is not one line of printable ASCII: it has 2 lines",
        refresh.display()
    );
    let check = setup.run(&["check"], &[]);
    check.assert_code(1);
    assert!(
        check.stdout().contains(&format!("problem: {expected}")),
        "{}",
        check.stdout()
    );
    for command in [&["sync"][..], &["run"][..]] {
        let run = setup.run(command, &[]);
        run.assert_code(2);
        assert!(
            run.stderr().contains(&expected),
            "{command:?}: {}",
            run.stderr()
        );
        assert!(!run.stderr().contains("rt-first"), "{}", run.stderr());
    }
    assert!(setup.emulator.requests().is_empty());
}
