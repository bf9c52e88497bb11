//! The fuzz corpus as regression tests: every committed input under
//! `fuzz/corpus/<target>/` goes through the same check the fuzz target
//! runs (`fuzz/src/checks.rs`), so CI needs neither nightly nor cargo-fuzz.
//! Each export seed is also cut short and damaged at fixed points, a small
//! deterministic fuzz of its own.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

use checks::ExportKind;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "{}: only {} inputs",
        dir.display(),
        files.len()
    );
    files
}

/// Run `check` on `bytes`, naming the input when it fails.
fn run(what: &str, bytes: &[u8], check: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    if let Err(panic) = std::panic::catch_unwind(|| check(bytes)) {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        panic!("{what}: {message}");
    }
}

/// Prefixes and single-byte damage at fixed, spread-out offsets.
fn variants(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    const POINTS: usize = 12;
    const DAMAGE: [u8; 9] = [0x00, b'"', b',', b'\n', b'{', b'}', b'[', 0xFF, 0xC3];
    let mut out = Vec::new();
    if bytes.is_empty() {
        return out;
    }
    for i in 0..POINTS {
        let at = bytes.len() * i / POINTS;
        out.push((format!("cut at {at}"), bytes[..at].to_vec()));
        let mut damaged = bytes.to_vec();
        let byte = DAMAGE[i % DAMAGE.len()];
        damaged[at] = byte;
        out.push((format!("byte {at} set to {byte:#04x}"), damaged));
    }
    out
}

fn export_corpus(kind: ExportKind) {
    for path in corpus(kind.target()) {
        let bytes = std::fs::read(&path).unwrap();
        let name = path.display().to_string();
        run(&name, &bytes, |b| checks::check_export(kind, b));
        for (what, variant) in variants(&bytes) {
            run(&format!("{name}, {what}"), &variant, |b| {
                checks::check_export(kind, b)
            });
        }
    }
}

#[test]
fn export_odata_corpus() {
    export_corpus(ExportKind::OData);
}

#[test]
fn export_csv_corpus() {
    export_corpus(ExportKind::Csv);
}

#[test]
fn export_jsonl_corpus() {
    export_corpus(ExportKind::Jsonl);
}

#[test]
fn diff_corpus() {
    for path in corpus("diff") {
        let bytes = std::fs::read(&path).unwrap();
        // Every committed diff input is one the check uses.
        let input: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        assert!(input["snapshot"].is_object() && input["desired"].is_object());
        run(&path.display().to_string(), &bytes, checks::check_diff);
    }
}

#[test]
fn the_diff_check_finds_a_wrong_result() {
    use referral_sync::diff::OnCleared;
    use referral_sync::model::ManagedPaths;
    use serde_json::json;

    let mut managed = ManagedPaths::empty();
    managed.insert(&["name"]);
    managed.insert(&["details", "notes"]);
    let snapshot = json!({"name": "a", "size": "s", "details": {"notes": "n"}});
    let desired = json!({"name": "b", "details": {}});
    let failures = |result: serde_json::Value, refused: &[String], on_cleared| {
        checks::managed_failures(&managed, &snapshot, &desired, &result, refused, on_cleared)
    };
    let right = json!({"name": "b", "size": "s", "details": {"notes": null}});
    assert_eq!(failures(right, &[], OnCleared::Null), Vec::<String>::new());
    let skipped = json!({"name": "b", "size": "s", "details": {"notes": "n"}});
    assert_eq!(
        failures(skipped.clone(), &[], OnCleared::Skip),
        Vec::<String>::new()
    );
    assert_eq!(
        failures(skipped, &[], OnCleared::Null),
        ["/details/notes: expected None, got Some(String(\"n\"))"]
    );
    let unmanaged_touched = json!({"name": "b", "size": "t", "details": {}});
    assert_eq!(
        failures(unmanaged_touched, &[], OnCleared::Null),
        ["/size: unmanaged, changed from Some(String(\"s\")) to Some(String(\"t\"))"]
    );
    let refused_but_sent = json!({"name": "b", "size": "s", "details": {}});
    assert_eq!(
        failures(refused_but_sent, &["/name".to_owned()], OnCleared::Null),
        ["/name: refused, yet changed to Some(String(\"b\"))"]
    );
}

#[test]
fn unusable_inputs_are_skipped_not_failed() {
    checks::check_diff(b"not json");
    checks::check_diff(br#"{"snapshot": [], "desired": {}}"#);
    checks::check_diff(br#"{"snapshot": {}, "desired": {}, "managed": ["no-slash"]}"#);
}
