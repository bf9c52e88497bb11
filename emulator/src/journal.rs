//! The journal: every request to the API and the token endpoint, in the
//! order received, with what the emulator did about it. Tests read it to
//! check what a client actually sent.

use std::collections::VecDeque;

use serde::{Serialize, Serializer};
use serde_json::Value;

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Still being handled (or delayed).
    InProgress,
    /// A read answered with success.
    Served,
    /// A write (or a token grant) that took effect and was answered.
    Applied,
    /// Refused: 4xx, or a 5xx from the emulator itself.
    Rejected,
    /// A fault rule answered with a status instead.
    FaultStatus,
    /// A fault rule dropped the connection before handling.
    FaultResetBefore,
    /// Handled (the `status` says how), then the connection was dropped.
    FaultResetAfter,
    /// The client went away before the emulator answered.
    Abandoned,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::InProgress => "in_progress",
            Outcome::Served => "served",
            Outcome::Applied => "applied",
            Outcome::Rejected => "rejected",
            Outcome::FaultStatus => "fault:status",
            Outcome::FaultResetBefore => "fault:reset_before",
            Outcome::FaultResetAfter => "fault:reset_after",
            Outcome::Abandoned => "abandoned",
        }
    }
}

impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JournalEntry {
    pub seq: u64,
    /// Milliseconds since the Unix epoch when the request arrived.
    pub at_ms: u64,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub if_match: Option<String>,
    pub prefer: Option<String>,
    pub correlation_id: Option<String>,
    pub request_id: Option<String>,
    /// The client's `client-request-id` header.
    pub client_request_id: Option<String>,
    /// The `request-id` the emulator answered with.
    pub service_request_id: Option<String>,
    /// Whether a valid bearer token came with it; `None` for the token
    /// endpoint, which needs none.
    pub authorized: Option<bool>,
    /// The body as JSON (a form as an object, secrets redacted), or null.
    pub body: Value,
    /// The status the emulator produced, even if a reset kept it from the
    /// client; `None` when it produced none.
    pub status: Option<u16>,
    pub outcome: Outcome,
    /// The kind of the fault rule that acted on it.
    pub fault: Option<&'static str>,
    pub duration_ms: Option<u64>,
}

/// Bounded: the oldest entries go first once `limit` is reached.
#[derive(Debug)]
pub struct Journal {
    entries: VecDeque<JournalEntry>,
    next_seq: u64,
    limit: usize,
}

impl Journal {
    pub fn new(limit: usize) -> Self {
        Journal {
            entries: VecDeque::new(),
            next_seq: 1,
            limit: limit.max(1),
        }
    }

    /// Record an arriving request; its `seq` is assigned here.
    pub fn open(&mut self, mut entry: JournalEntry) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        entry.seq = seq;
        if self.entries.len() == self.limit {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
        seq
    }

    /// Fill in how the request ended; a no-op if it was trimmed or cleared.
    pub fn close(&mut self, seq: u64, close: impl FnOnce(&mut JournalEntry)) {
        if let Ok(index) = self.entries.binary_search_by_key(&seq, |entry| entry.seq) {
            close(&mut self.entries[index]);
        }
    }

    /// Entries with `seq` greater than `since`.
    pub fn since(&self, since: u64) -> Vec<JournalEntry> {
        self.entries
            .iter()
            .filter(|entry| entry.seq > since)
            .cloned()
            .collect()
    }

    /// Forget the entries; sequence numbers keep counting up.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> JournalEntry {
        JournalEntry {
            seq: 0,
            at_ms: 0,
            method: "GET".into(),
            path: path.into(),
            query: None,
            if_match: None,
            prefer: None,
            correlation_id: None,
            request_id: None,
            client_request_id: None,
            service_request_id: None,
            authorized: Some(true),
            body: Value::Null,
            status: None,
            outcome: Outcome::InProgress,
            fault: None,
            duration_ms: None,
        }
    }

    #[test]
    fn entries_keep_arrival_order_and_are_closed_in_place() {
        let mut journal = Journal::new(10);
        let first = journal.open(entry("/a"));
        let second = journal.open(entry("/b"));
        journal.close(second, |e| {
            e.status = Some(204);
            e.outcome = Outcome::Applied;
        });
        journal.close(first, |e| e.outcome = Outcome::Abandoned);
        let entries = journal.since(0);
        assert_eq!(
            entries
                .iter()
                .map(|e| (e.seq, e.path.as_str(), e.outcome))
                .collect::<Vec<_>>(),
            [(1, "/a", Outcome::Abandoned), (2, "/b", Outcome::Applied)]
        );
        assert_eq!(
            serde_json::to_value(&entries[1]).unwrap()["outcome"],
            "applied"
        );
    }

    #[test]
    fn the_limit_drops_the_oldest_and_clear_keeps_counting() {
        let mut journal = Journal::new(2);
        for path in ["/a", "/b", "/c"] {
            journal.open(entry(path));
        }
        assert_eq!(
            journal.since(0).iter().map(|e| e.seq).collect::<Vec<_>>(),
            [2, 3]
        );
        journal.close(1, |e| e.status = Some(500));
        journal.clear();
        assert_eq!(journal.open(entry("/d")), 4);
        assert_eq!(journal.since(3).len(), 1);
        assert!(journal.since(4).is_empty());
    }
}
