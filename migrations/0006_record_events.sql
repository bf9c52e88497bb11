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

-- A record the service refused for good (400, 403, 404, 409, 413, 422): not
-- retried until its desired document changes, a resync, or `referral-sync
-- retry`. JSON: the HTTP status, the service's code and message, whether the
-- referral is gone (404). The record's state is `invalid` meanwhile, with the
-- refused document's hash, so an unchanged record is not taken up.
ALTER TABLE records ADD COLUMN held TEXT;
