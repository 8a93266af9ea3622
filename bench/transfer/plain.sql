-- The peer of bench/compare transfer: the transfer a user would write by
-- hand against PostgreSQL, in a schema of its own beside the account
-- service's tables (same server, same database, same disk). psql -v
-- count=N: N accounts, each funded; made once, kept across runs.
CREATE SCHEMA IF NOT EXISTS plain;
CREATE TABLE IF NOT EXISTS plain.accounts (
  id      bigint PRIMARY KEY,
  balance bigint NOT NULL CHECK (balance >= 0)
);
CREATE TABLE IF NOT EXISTS plain.ledger (
  id          bigserial PRIMARY KEY,
  account_id  bigint NOT NULL,
  amount      bigint NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS plain.outbox (
  id          bigserial PRIMARY KEY,
  topic       text NOT NULL,
  payload     jsonb NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO plain.accounts (id, balance)
  SELECT n, 1000000000 FROM generate_series(1, :count) AS g(n)
  ON CONFLICT (id) DO NOTHING;
ANALYZE plain.accounts;
