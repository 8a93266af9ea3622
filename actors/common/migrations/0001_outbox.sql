-- Events written in the same transaction as the state change they
-- describe; a relay publishes rows with published_at NULL to the bus and
-- sets it once the bus has acknowledged them.
CREATE TABLE outbox (
  id           uuid PRIMARY KEY,
  topic        text NOT NULL,
  key          text NOT NULL,
  payload      jsonb NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  published_at timestamptz
);

-- The relay's scan: unpublished rows, oldest first.
CREATE INDEX outbox_unpublished ON outbox (created_at) WHERE published_at IS NULL;
