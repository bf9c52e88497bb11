-- The fingerprint of the export record each record was last read from: 16
-- bytes over the record's raw bytes and everything that shapes its desired
-- document (see ARCHITECTURE.md, "Skipping unchanged records"), with the
-- desired hash those bytes map to. While the record is settled with that
-- very desired hash, a record of the next export with the same id and
-- fingerprint is unchanged and is not parsed; once the record's hash moves
-- on, the pair is stale and not trusted. Kept apart from `records`, whose
-- rows are large: writing a fingerprint rewrites only this small row.
CREATE TABLE export_fingerprints (
    external_id  TEXT PRIMARY KEY,
    fingerprint  BLOB NOT NULL,
    desired_hash TEXT NOT NULL
) STRICT, WITHOUT ROWID;
