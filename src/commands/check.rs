//! `referral-sync check`: the configuration, the secret files and the
//! export validated; every problem printed.

use std::path::PathBuf;

use crate::api::auth::{SecretFile, check_secret_file};
use crate::config::Settings;
use crate::cycle::scan::{self, ScanOptions};
use crate::exit::{ExitCode, Failure, OrExit};
use crate::mapping::Mapper;
use crate::outln;
use crate::store::Store;

use super::output::printable;

pub fn check_command(settings: Settings) -> Result<ExitCode, Failure> {
    let mut problems: Vec<String> = Vec::new();
    outln!("configuration {}: ok", settings.source.display());
    problems.extend(secret_file_problems(&settings));
    if settings.auth.is_none() {
        outln!("auth: none configured (only `sync --dry-run` can run)");
    }
    let mapper = settings.mapper();
    let store = match Store::open_read_only(&settings.store_path) {
        Ok(Some(store)) => Ok(store),
        Ok(None) => Store::open_in_memory(),
        Err(e) => Err(e),
    };
    let store = match store {
        Ok(s) => s,
        Err(e) => {
            problems.push(e.to_string());
            Store::open_in_memory().or_exit(ExitCode::Runtime)?
        }
    };
    match scan_for_check(&settings, &mapper, &store) {
        Ok(scan) => problems.extend(export_problems(&settings, &scan)),
        Err(e) => problems.push(e.to_string()),
    }
    Ok(report(&problems))
}

/// Each secret file that can be read is shown; each that cannot is a problem.
fn secret_file_problems(settings: &Settings) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, kind, path) in secret_files(settings) {
        match check_secret_file(kind, &path) {
            Ok(None) => outln!("{key} {}: readable", path.display()),
            Ok(Some(mode)) => outln!(
                "{key} {}: readable, but mode {mode:o} lets group or others read it too (chmod 600)",
                path.display()
            ),
            Err(e) => problems.push(format!("{key}: {e}")),
        }
    }
    problems
}

/// The export scanned as a cycle would, without waiting for it to settle.
fn scan_for_check(
    settings: &Settings,
    mapper: &Mapper,
    store: &Store,
) -> Result<scan::Scan, scan::ScanError> {
    // Dropped columns are reported below with the rest, not in place of it.
    let options = ScanOptions {
        retain_budget: 0,
        schema: crate::cycle::schema::SchemaPolicy::AllowChange,
        ..ScanOptions::default()
    };
    let mut export_options = settings.export_options();
    let scanned = scan::scan_export(&export_options, mapper, store, &options);
    let Err(scan::ScanError::Unsettled(unsettled)) = &scanned else {
        return scanned;
    };
    // Not a problem of the export: say so, and check its content anyway.
    outln!(
        "note: {}",
        printable(&crate::export::settle_note(unsettled))
    );
    export_options.checks.settle = std::time::Duration::ZERO;
    scan::scan_export(&export_options, mapper, store, &options)
}

/// What the scan found wrong with the export, after a line about its size.
fn export_problems(settings: &Settings, scan: &scan::Scan) -> Vec<String> {
    outln!(
        "export {}: {} records in {} file(s), {} valid",
        settings.export.path.display(),
        scan.export.records,
        scan.export.files.len(),
        scan.valid
    );
    let mut problems = Vec::new();
    if !scan.schema.dropped.is_empty() {
        let refusal = crate::cycle::schema::SchemaChanged(scan.schema.dropped.clone());
        problems.push(refusal.to_string());
    }
    for e in &scan.record_errors {
        problems.push(e.to_string());
    }
    problems.extend(scan.duplicate_errors().map(|(_, message)| message));
    if scan.too_many_missing(settings.sync.max_missing_ratio) {
        problems.push(format!(
            "{} of the {} records in the store are missing from the export (more than sync.max_missing_ratio = {})",
            scan.missing_from_export, scan.known, settings.sync.max_missing_ratio
        ));
    }
    problems
}

fn report(problems: &[String]) -> ExitCode {
    for p in problems {
        outln!("problem: {}", printable(p));
    }
    if problems.is_empty() {
        outln!("no problems found");
        ExitCode::Ok
    } else {
        outln!("{} problem(s) found", problems.len());
        ExitCode::Records
    }
}

/// The configured secret files: the key, what the file holds, its path.
fn secret_files(settings: &Settings) -> Vec<(&'static str, SecretFile, PathBuf)> {
    use crate::config::AuthSettings;
    match &settings.auth {
        Some(AuthSettings::TokenFile(p)) => {
            vec![("auth.token_file", SecretFile::Token, p.clone())]
        }
        Some(AuthSettings::RefreshToken {
            client_secret_file,
            refresh_token_file,
            ..
        }) => {
            let mut files = vec![(
                "auth.refresh_token_file",
                SecretFile::RefreshToken,
                refresh_token_file.clone(),
            )];
            if let Some(p) = client_secret_file {
                files.push((
                    "auth.client_secret_file",
                    SecretFile::ClientSecret,
                    p.clone(),
                ));
            }
            files
        }
        None => Vec::new(),
    }
}
