-- A record's history: every attempt and decision of the push phase, one row
-- each, with the cycle it belongs to. `detail` is JSON; it holds CRM and
-- Partner Center values and request ids, never a secret. Pruned after
-- `store.history_days`.
CREATE TABLE record_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    external_id TEXT NOT NULL,
    cycle_id    TEXT,
    at          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    detail      TEXT NOT NULL
) STRICT;

CREATE INDEX record_events_by_record ON record_events (external_id, id);
CREATE INDEX record_events_by_time ON record_events (at);
