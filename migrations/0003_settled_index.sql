-- Pass one of a cycle reads the id and desired hash of every settled record
-- up front instead of looking each record up: this index holds exactly
-- those columns, so the read never touches the table and its snapshots.
-- It also serves the per-state counts `records_by_state` was for.
DROP INDEX records_by_state;
CREATE INDEX records_by_state_brief ON records (state, external_id, desired_hash);
