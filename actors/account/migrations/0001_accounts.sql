-- Accounts and their double-entry ledger. Money is a bigint count of minor
-- units. Every movement is one row in transactions and two rows in
-- ledger_entries whose amounts sum to zero; top-ups and withdrawals move
-- money against the system account of their currency (kind 'system', one
-- per currency, unlimited overdraft), so that the sum of all balances,
-- system accounts included, is zero per currency at every commit.
CREATE TABLE accounts (
  id              uuid PRIMARY KEY,
  customer_id     uuid,
  kind            text NOT NULL DEFAULT 'customer' CHECK (kind IN ('customer', 'system')),
  currency        char(3) NOT NULL,
  balance         bigint NOT NULL DEFAULT 0,
  overdraft_limit bigint NOT NULL DEFAULT 0 CHECK (overdraft_limit >= 0),
  status          text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now(),
  -- The last line of defence behind the guarded UPDATEs.
  CONSTRAINT accounts_no_overdraft CHECK (balance >= -overdraft_limit),
  CONSTRAINT accounts_owner CHECK ((kind = 'system') = (customer_id IS NULL))
);
CREATE INDEX accounts_customer ON accounts (customer_id, id);
CREATE UNIQUE INDEX accounts_system_currency ON accounts (currency) WHERE kind = 'system';

CREATE TABLE transactions (
  id                uuid PRIMARY KEY,
  kind              text NOT NULL CHECK (kind IN ('topup', 'withdrawal', 'transfer')),
  debit_account_id  uuid NOT NULL REFERENCES accounts (id),
  credit_account_id uuid NOT NULL REFERENCES accounts (id),
  amount            bigint NOT NULL CHECK (amount > 0),
  currency          char(3) NOT NULL,
  created_at        timestamptz NOT NULL,
  CHECK (debit_account_id <> credit_account_id)
);

-- One line per account and movement; amount is signed (negative: money
-- out), balance_after is the account's balance right after it.
CREATE TABLE ledger_entries (
  id             uuid PRIMARY KEY,
  transaction_id uuid NOT NULL REFERENCES transactions (id),
  account_id     uuid NOT NULL REFERENCES accounts (id),
  amount         bigint NOT NULL CHECK (amount <> 0),
  currency       char(3) NOT NULL,
  balance_after  bigint NOT NULL,
  created_at     timestamptz NOT NULL
);
CREATE INDEX ledger_entries_account ON ledger_entries (account_id, id);
CREATE INDEX ledger_entries_transaction ON ledger_entries (transaction_id);
