//! The Partner Center Referrals API client: list, GET, POST, PATCH, PUT,
//! with bearer auth, correlation/request ids, one shared request gate
//! (concurrency, rate, `Retry-After` pauses) and retries.

pub mod auth;
pub mod gate;
pub mod retry;

#[cfg(test)]
mod test_support;
