-- Dead letters: events some consumer group gave up on (busd moved them to
-- "<topic>.dead" after BUSD_MAX_ATTEMPTS failed deliveries), one row per
-- event and group, for operators to see and redrive. A redrive publishes
-- the event again, with its own id, through this service's outbox, and an
-- event.dead_letter_redriven event that the audit log keeps.
CREATE TABLE dead_letters (
  seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  id             uuid NOT NULL UNIQUE,
  event_id       uuid NOT NULL,
  topic          text NOT NULL,        -- where it was published
  consumer_group text NOT NULL,        -- who gave up on it
  key            text NOT NULL,
  headers        jsonb NOT NULL,       -- the event's own (x-dead-* apart)
  payload        jsonb NOT NULL,
  attempts       int NOT NULL,
  last_error     text NOT NULL,
  dead_partition int NOT NULL,         -- the record in <topic>.dead
  dead_offset    bigint NOT NULL,
  dead_at        timestamptz NOT NULL,
  state          text NOT NULL DEFAULT 'dead' CHECK (state IN ('dead', 'redriven')),
  redriven_at    timestamptz,
  redriven_by    text,
  UNIQUE (event_id, consumer_group)
);
CREATE INDEX dead_letters_open ON dead_letters (topic, seq) WHERE state = 'dead';

-- A UUID v7 made in SQL (RFC 9562: 48 bits of Unix ms, version 7, then
-- random bits with the variant), for events written by set-based
-- statements that cannot take one id per row from the caller.
CREATE FUNCTION uuid_v7() RETURNS uuid LANGUAGE sql VOLATILE AS $$
  SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
          || '7' || substr(r, 1, 3) || substr(r, 17, 16))::uuid
  FROM (SELECT replace(gen_random_uuid()::text, '-', '') AS r) x
$$;
