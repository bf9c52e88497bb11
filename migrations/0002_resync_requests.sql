-- Manual resyncs asked of a running daemon: `referral-sync resync` inserts a
-- row and signals the daemon (SIGHUP); the daemon picks it up, runs the
-- resync and writes the result back, which the command waits for.
CREATE TABLE resync_requests (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    only_ids         TEXT,              -- JSON array of external ids, or NULL for all
    requested_at     TEXT NOT NULL,
    requested_by_pid INTEGER,
    started_at       TEXT,
    finished_at      TEXT,
    outcome          TEXT,              -- as cycles.outcome
    summary          TEXT,              -- JSON counts
    error            TEXT
) STRICT;
