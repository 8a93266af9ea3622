-- The ledger's references, kept by how lines are written rather than by
-- foreign keys, and the ledger made append-only.
--
-- Every transaction row and ledger line is written from the account rows
-- its own guarded UPDATE has just returned, in the same statement or
-- transaction (move_batch(), and the movement, hold, settle and release
-- statements of account.c and holds.c): a line can name only an account
-- that exists, locked, and a transaction row written beside it. Accounts are
-- closed, never deleted. The four foreign keys checked that again for every
-- row, one query and one row lock each under an AFTER trigger: six per
-- transfer, more than a quarter of a batch's database time
-- (bench/compare transfer). What they guarded is kept here instead:
--   - accounts cannot be deleted or truncated;
--   - transactions and ledger lines cannot be changed, deleted or truncated;
-- whoever connects as the service's role. The suites check the references
-- themselves after every run that moves money (tests/integration/lib/ledger.py).
ALTER TABLE transactions DROP CONSTRAINT transactions_debit_account_id_fkey,
                         DROP CONSTRAINT transactions_credit_account_id_fkey;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_transaction_id_fkey,
                           DROP CONSTRAINT ledger_entries_account_id_fkey;

-- Lines are read by account (ledger_entries_account_seq) and joined to their
-- transaction by its key; nothing looks lines up by transaction.
DROP INDEX ledger_entries_transaction;

CREATE FUNCTION ledger_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '%: % refused (the ledger is append-only; accounts are closed, never deleted)',
    TG_TABLE_NAME, TG_OP;
END
$$;

CREATE TRIGGER accounts_no_delete BEFORE DELETE ON accounts
  FOR EACH ROW EXECUTE FUNCTION ledger_refuse();
CREATE TRIGGER accounts_no_truncate BEFORE TRUNCATE ON accounts
  FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse();
CREATE TRIGGER transactions_no_change BEFORE UPDATE OR DELETE ON transactions
  FOR EACH ROW EXECUTE FUNCTION ledger_refuse();
CREATE TRIGGER transactions_no_truncate BEFORE TRUNCATE ON transactions
  FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse();
CREATE TRIGGER ledger_entries_no_change BEFORE UPDATE OR DELETE ON ledger_entries
  FOR EACH ROW EXECUTE FUNCTION ledger_refuse();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
  FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse();
