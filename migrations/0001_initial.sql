-- The last state referral-sync successfully applied, per CRM record.
CREATE TABLE records (
    external_id    TEXT PRIMARY KEY NOT NULL,   -- the CRM id = the referral's externalReferenceId
    referral_id    TEXT,                        -- Partner Center referral id, once known
    etag           TEXT,                        -- the referral's eTag after our last acknowledged write
    snapshot       TEXT,                        -- JSON: the desired document last applied
    desired_hash   TEXT,                        -- hash of the desired document the state refers to
    state          TEXT NOT NULL CHECK (state IN ('synced', 'pending', 'failed', 'invalid')),
    last_error     TEXT,
    attempts       INTEGER NOT NULL DEFAULT 0,  -- failed attempts since the last success
    first_seen_at  TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    last_synced_at TEXT
) STRICT;

CREATE INDEX records_by_state ON records (state);

-- One row per cycle: what started it and what it did.
CREATE TABLE cycles (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    cycle_id    TEXT NOT NULL,                  -- also the MS-CorrelationId of its requests
    trigger     TEXT NOT NULL,
    dry_run     INTEGER NOT NULL DEFAULT 0,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    outcome     TEXT CHECK (outcome IN ('ok', 'partial', 'failed', 'interrupted')),
    summary     TEXT,                           -- JSON counts
    error       TEXT
) STRICT;

-- externalReferenceId -> referral id, built by paging the referral list.
CREATE TABLE referral_index (
    external_id TEXT PRIMARY KEY NOT NULL,
    referral_id TEXT NOT NULL,
    indexed_at  TEXT NOT NULL
) STRICT;
