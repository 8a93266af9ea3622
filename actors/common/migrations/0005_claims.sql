-- One claim mechanism for the Idempotency-Key and the inbox (svc.h,
-- "Claims"): the first statement of a transaction that makes a change
-- inserts its (scope, key); a duplicate violates the key and rolls the
-- whole transaction back. The inbox becomes claims of scope '#inbox' keyed
-- by event id; each claim says until when it is kept.
ALTER TABLE idempotency_keys RENAME TO claims;
ALTER INDEX idempotency_keys_pkey RENAME TO claims_pkey;
ALTER TABLE claims
  ADD COLUMN expires_at timestamptz,
  -- Two-phase claims (status -1: work under way elsewhere): whose, and
  -- until when the lock holds before the same request may take it over.
  ADD COLUMN lock_token uuid,
  ADD COLUMN locked_until timestamptz;
UPDATE claims SET expires_at = created_at + interval '48 hours';
ALTER TABLE claims ALTER COLUMN expires_at SET NOT NULL;
DROP INDEX idempotency_keys_created_at;
CREATE INDEX claims_expires_at ON claims (expires_at);

INSERT INTO claims (scope, key, request_hash, status, response_body, created_at, expires_at)
  SELECT '#inbox', event_id::text, topic, 1, '', received_at, received_at + interval '30 days'
  FROM inbox
  ON CONFLICT DO NOTHING;
DROP TABLE inbox;

-- Events carry headers (svc.h, "Events: producing"): event id, type,
-- schema version, time, correlation and causation ids.
ALTER TABLE outbox ADD COLUMN headers jsonb NOT NULL DEFAULT '{}'::jsonb;
