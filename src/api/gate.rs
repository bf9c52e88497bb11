//! The request gate shared by every worker: at most `concurrency` requests
//! in flight, an optional request rate, and `Retry-After` pauses.
