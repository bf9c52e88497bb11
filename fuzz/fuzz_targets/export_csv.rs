//! Any bytes, read as a csv export file: no panic, errors name the
//! file, line and column, records are numbered and map or are refused with
//! a bounded message. See `checks::check_export`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    checks::check_export(checks::ExportKind::Csv, bytes);
});
