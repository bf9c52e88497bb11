-- The export's schema as the cycles have seen it, for the schema guard of
-- pass one: a referral field once fed from the export whose columns all
-- vanish from a later export (a renamed CSV header, a narrower `$select`)
-- would otherwise be cleared on every referral. Written only after a scan
-- that completed without error.

-- Referral fields (mapping.fields paths) that some record of the export
-- gave a value.
CREATE TABLE fed_fields (
    field        TEXT PRIMARY KEY NOT NULL,
    first_fed_at TEXT NOT NULL,
    last_fed_at  TEXT NOT NULL
) STRICT;

-- Export columns seen so far, so that a new one is logged once.
CREATE TABLE export_columns (
    name          TEXT PRIMARY KEY NOT NULL,
    first_seen_at TEXT NOT NULL
) STRICT;

-- A cycle can end `skipped`: the export was modified less than
-- export.settle_secs ago and was not read. SQLite cannot change a CHECK
-- constraint in place, so the table is rebuilt with its rows and ids.
CREATE TABLE cycles_rebuilt (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    cycle_id    TEXT NOT NULL,
    trigger     TEXT NOT NULL,
    dry_run     INTEGER NOT NULL DEFAULT 0,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    outcome     TEXT CHECK (outcome IN ('ok', 'partial', 'failed', 'interrupted', 'skipped')),
    summary     TEXT,
    error       TEXT
) STRICT;
INSERT INTO cycles_rebuilt (id, cycle_id, trigger, dry_run, started_at, finished_at, outcome, summary, error)
    SELECT id, cycle_id, trigger, dry_run, started_at, finished_at, outcome, summary, error FROM cycles;
DROP TABLE cycles;
ALTER TABLE cycles_rebuilt RENAME TO cycles;
