-- The sync base and write intents.
--
-- `base` is the part of the referral the mapping owns as Partner Center
-- acknowledged it (the answer to our last write, or what we last read),
-- and `etag` is the eTag that goes with it; NULL when it is not known (a
-- 204 without a representation, a store written before this migration):
-- the next plan reads the live referral first. `snapshot` stays the CRM's
-- desired document at the last sync.
--
-- `intent` is the write under way, recorded in the same transaction that
-- marks the record pending: the ops, what they set slot by slot, the
-- document they were planned against and the desired document they carry.
-- After a crash or an unknown outcome the next attempt reads the live
-- referral and tells from it whether the write was applied.
ALTER TABLE records ADD COLUMN base TEXT;
ALTER TABLE records ADD COLUMN intent TEXT;

-- JSON array of the owned paths whose CRM value Partner Center cannot take
-- (`/status`: a move the transition table forbids from where the referral
-- is): reported on every plan until the two agree.
ALTER TABLE records ADD COLUMN refused TEXT;

-- Which record a referral is bound to: a referral id from the export is
-- used only when no other record holds it.
CREATE INDEX records_by_referral ON records (referral_id) WHERE referral_id IS NOT NULL;
