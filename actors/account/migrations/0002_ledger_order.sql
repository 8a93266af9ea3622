-- A statement lists an account's entries in the order they were applied.
--
-- Ids and times made before a transaction takes its row locks do not give
-- that order: two movements on one account can commit in the other order
-- than their ids. So every account counts its entries, and a movement takes
-- the next number in the same guarded UPDATE that changes the balance,
-- under the row lock: entry n + 1 can only be written after entry n
-- committed, its balance_after is entry n's plus its amount, and a reader
-- who has seen entry n + 1 has seen every entry before it. The time of an
-- entry is taken under the same lock and never goes backwards.
ALTER TABLE accounts ADD COLUMN entries_count bigint NOT NULL DEFAULT 0
  CHECK (entries_count >= 0);
ALTER TABLE ledger_entries ADD COLUMN seq bigint;

-- Entries written before this migration: numbered in their old order.
UPDATE ledger_entries e SET seq = n.seq
  FROM (SELECT id, row_number() OVER (PARTITION BY account_id ORDER BY created_at, id) AS seq
        FROM ledger_entries) n
  WHERE n.id = e.id;
UPDATE accounts a SET entries_count = n.count
  FROM (SELECT account_id, count(*) AS count FROM ledger_entries GROUP BY account_id) n
  WHERE n.account_id = a.id;

ALTER TABLE ledger_entries ALTER COLUMN seq SET NOT NULL;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_seq_positive CHECK (seq > 0);
-- One entry per number per account: the statement's order and its cursor.
CREATE UNIQUE INDEX ledger_entries_account_seq ON ledger_entries (account_id, seq);
DROP INDEX ledger_entries_account;
