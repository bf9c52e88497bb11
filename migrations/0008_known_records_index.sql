-- Pass one of a cycle reads, for every record the store knows, its id, its
-- state and its desired hash, beside the export fingerprint kept for it, in
-- one pass: both in id order, merged as they are read. This index holds
-- exactly those columns in id order, as `export_fingerprints` (clustered by
-- id) is, so the read never touches the table and its snapshots. It
-- replaces the index by state, which only the settled-records read used.
DROP INDEX records_by_state_brief;
CREATE INDEX records_brief ON records (external_id, state, desired_hash);
