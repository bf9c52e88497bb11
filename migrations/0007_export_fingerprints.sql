-- The fingerprint of the export record a settled row was last found
-- unchanged against: 16 bytes over the record's raw bytes and everything
-- that shapes its desired document (see ARCHITECTURE.md, "Skipping
-- unchanged records"), with the desired hash it was found to map to. A
-- record of the next export with the same fingerprint maps to that hash,
-- so while the row still holds it (`fingerprint_for = desired_hash`) the
-- record is unchanged without being parsed. A row whose desired hash moved
-- on leaves a stale pair behind that no query trusts.
ALTER TABLE records ADD COLUMN export_fingerprint BLOB;
ALTER TABLE records ADD COLUMN fingerprint_for TEXT;

-- Pass one reads the settled rows' ids, hashes and fingerprints from this
-- index alone, as it read ids and hashes from the one it replaces.
DROP INDEX records_by_state_brief;
CREATE INDEX records_by_state_brief
    ON records (state, external_id, desired_hash, export_fingerprint, fingerprint_for);
