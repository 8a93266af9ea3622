-- The audit log: every event the services publish, once per event id
-- (svc_inbox_apply() records the id in inbox in the same transaction).
-- Rows are only ever appended; seq is the order of arrival and the order
-- of GET /v1/events.
CREATE TABLE audit_log (
  seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  event_id      uuid NOT NULL UNIQUE,
  topic         text NOT NULL,
  key           text NOT NULL,
  payload       jsonb NOT NULL,
  bus_partition int NOT NULL,
  bus_offset    bigint NOT NULL,
  stored_at     timestamptz NOT NULL,           -- when busd made it durable
  received_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX audit_log_topic_seq ON audit_log (topic, seq);
CREATE INDEX audit_log_stored_at ON audit_log (stored_at);

-- Append-only, whoever connects as the service's role.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_log is append-only';
END
$$;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
  FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
