-- Events carry headers (event id, type, schema version, occurred-at,
-- correlation and causation ids): kept with each audit row, and the
-- correlation id indexed, so that an auditor can pull every event of one
-- payment or request.
ALTER TABLE audit_log ADD COLUMN headers jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE audit_log ADD COLUMN correlation_id text
  GENERATED ALWAYS AS (headers->>'correlation-id') STORED;
CREATE INDEX audit_log_correlation ON audit_log (correlation_id, seq)
  WHERE correlation_id IS NOT NULL;
