//! Retry schedules. The only module that knows the `backoff` crate, so that
//! it can be swapped (RUSTSEC-2025-0012 flags it unmaintained).
