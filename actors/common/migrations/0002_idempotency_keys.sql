-- Idempotency-Key records (see actors/common/svc.h). status 0 means "being
-- executed by the transaction that inserted the row"; that row is never
-- visible to anyone else with status 0, because the same transaction
-- stores the final status before it commits.
CREATE TABLE idempotency_keys (
  scope         text NOT NULL,
  key           text NOT NULL,
  request_hash  text NOT NULL,
  status        int NOT NULL,
  response_body text NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (scope, key)
);

-- Pruning of keys older than the retention period.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
