//! A snapshot, a desired document and managed paths (JSON): the planned
//! patch applied to the snapshot gives the desired document on managed
//! paths and nothing else. See `checks::check_diff`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    checks::check_diff(bytes);
});
