-- The outbox keeps one index for its backlog. outbox_unpublished (on
-- created_at) served the relay's first scan; since migration 0003 the relay
-- scans in id order (outbox_unpublished_id), and the age of the oldest
-- unpublished row (the outbox lag metric) reads the backlog through that
-- index too. Every event paid for an entry in both.
DROP INDEX outbox_unpublished;
