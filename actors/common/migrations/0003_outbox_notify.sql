-- The relay (svc_relay.c) scans unpublished rows in id order (UUID v7: time
-- order); this index keeps that scan proportional to the backlog, not to
-- the table.
CREATE INDEX outbox_unpublished_id ON outbox (id) WHERE published_at IS NULL;

-- Wakes the relay as soon as an event commits: NOTIFY is delivered at
-- commit only, and several inserts of one transaction fold into one
-- notification. The relay also scans on a timer, so a lost notification
-- (its LISTEN connection down) only delays publication.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('svc_outbox', '');
  RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
  FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
