//! Commands with a file of their own (mini-redis's `cmd/`): each takes the
//! validated settings and returns its exit code.

pub mod history;
pub mod login;
pub mod retry;
