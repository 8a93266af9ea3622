-- The audit log as a hash chain, with signed checkpoints (chain.c).
--
-- Consumers append events to audit_log concurrently, in whatever order
-- their transactions commit, and queue each new row in audit_unchained.
-- One chainer then gives every row its place in the chain, in the order it
-- takes them from the queue, a batch per transaction:
--
--   hash(n) = SHA-256(hash(n - 1) || record(n)),   hash(0) = 32 zero bytes
--
-- where record(n) is the canonical bytes of the row at chain position n
-- (actors/event/chain.c, and README "Audit log"). A row is chained exactly
-- once (audit_seq is unique here, and its queue row is deleted in the same
-- transaction), positions have no gaps, and the chain is what
-- GET /v1/events pages through: a client following the cursor sees every
-- event exactly once, since positions are only ever added at the end.
CREATE TABLE audit_chain (
  chain_seq  bigint PRIMARY KEY CHECK (chain_seq > 0),
  audit_seq  bigint NOT NULL UNIQUE REFERENCES audit_log (seq),
  prev_hash  bytea NOT NULL CHECK (length(prev_hash) = 32),
  hash       bytea NOT NULL CHECK (length(hash) = 32),
  chained_at timestamptz NOT NULL DEFAULT now()
);

-- Rows waiting for their place in the chain: a work queue, not evidence.
CREATE TABLE audit_unchained (
  audit_seq bigint PRIMARY KEY REFERENCES audit_log (seq)
);
INSERT INTO audit_unchained (audit_seq) SELECT seq FROM audit_log;

-- The chain head, signed every so often with the service's ES256 key: an
-- auditor who holds the public key can check that the log up to `seq` is
-- still the one that was signed.
CREATE TABLE audit_checkpoints (
  seq        bigint PRIMARY KEY REFERENCES audit_chain (chain_seq),
  hash       bytea NOT NULL CHECK (length(hash) = 32),
  signed_at  timestamptz NOT NULL,
  kid        text NOT NULL,
  signature  bytea NOT NULL CHECK (length(signature) = 64)
);

-- The chain and the checkpoints are evidence: append-only for whoever
-- connects as the service's role (the trigger of migration 0001).
CREATE TRIGGER audit_chain_no_update BEFORE UPDATE OR DELETE ON audit_chain
  FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON audit_chain
  FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE OR DELETE ON audit_checkpoints
  FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
  FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

CREATE INDEX audit_log_key ON audit_log (key);
