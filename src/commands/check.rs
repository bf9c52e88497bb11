//! `referral-sync check`: the configuration, the secret files and the
//! export validated; every problem printed.

use std::path::PathBuf;

use crate::api::auth::{SecretFile, check_secret_file};
use crate::config::Settings;
use crate::cycle::scan::{self, ScanOptions};
use crate::exit::{ExitCode, Failure, OrExit};
use crate::outln;
use crate::store::Store;

use super::output::printable;

pub fn check_command(settings: Settings) -> Result<ExitCode, Failure> {
    let mut problems: Vec<String> = Vec::new();
    outln!("configuration {}: ok", settings.source.display());
    for (key, kind, path) in secret_files(&settings) {
        match check_secret_file(kind, &path) {
            Ok(None) => outln!("{key} {}: readable", path.display()),
            Ok(Some(mode)) => outln!(
                "{key} {}: readable, but mode {mode:o} lets group or others read it too (chmod 600)",
                path.display()
            ),
            Err(e) => problems.push(format!("{key}: {e}")),
        }
    }
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
    // Dropped columns are reported below with the rest, not in place of it.
    let options = ScanOptions {
        retain_budget: 0,
        schema: crate::cycle::schema::SchemaPolicy::AllowChange,
        ..ScanOptions::default()
    };
    let mut export_options = settings.export_options();
    let mut scanned = scan::scan_export(&export_options, &mapper, &store, &options);
    if let Err(scan::ScanError::Unsettled(unsettled)) = &scanned {
        // Not a problem of the export: say so, and check its content anyway.
        outln!(
            "note: {}",
            printable(&crate::export::settle_note(unsettled))
        );
        export_options.checks.settle = std::time::Duration::ZERO;
        scanned = scan::scan_export(&export_options, &mapper, &store, &options);
    }
    match scanned {
        Ok(scan) => {
            outln!(
                "export {}: {} records in {} file(s), {} valid",
                settings.export.path.display(),
                scan.export.records,
                scan.export.files.len(),
                scan.valid
            );
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
        }
        Err(e) => problems.push(e.to_string()),
    }
    for p in &problems {
        outln!("problem: {}", printable(p));
    }
    if problems.is_empty() {
        outln!("no problems found");
        Ok(ExitCode::Ok)
    } else {
        outln!("{} problem(s) found", problems.len());
        Ok(ExitCode::Records)
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
