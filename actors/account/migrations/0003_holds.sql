-- Holds: the account side of the payment saga.
--
-- An account has two buckets: `balance`, the money its owner may spend,
-- and `held`, money reserved for payments under way. Reserving moves money
-- from balance to held, settling moves it from the payer's held to the
-- payee's balance, releasing moves it back; each as a transaction whose
-- ledger lines sum to zero, each line saying which bucket it changed and
-- what that bucket holds afterwards. So the sum over every account of
-- balance + held is zero per currency, holds included.
ALTER TABLE accounts ADD COLUMN held bigint NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD CONSTRAINT accounts_held_nonneg CHECK (held >= 0);
-- An operator may freeze an account: it neither sends nor receives.
ALTER TABLE accounts DROP CONSTRAINT accounts_status_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_status_check
  CHECK (status IN ('open', 'frozen', 'closed'));

ALTER TABLE ledger_entries ADD COLUMN bucket text NOT NULL DEFAULT 'balance'
  CHECK (bucket IN ('balance', 'held'));

-- A hold and its release move money inside one account; a settlement
-- moves it from the payer's held bucket to the payee.
ALTER TABLE transactions DROP CONSTRAINT transactions_kind_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_kind_check
  CHECK (kind IN ('topup', 'withdrawal', 'transfer', 'hold', 'release', 'payment'));
ALTER TABLE transactions DROP CONSTRAINT transactions_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_accounts_differ
  CHECK (debit_account_id <> credit_account_id OR kind IN ('hold', 'release'));
ALTER TABLE transactions ADD COLUMN payment_id uuid;
CREATE INDEX transactions_payment ON transactions (payment_id) WHERE payment_id IS NOT NULL;

-- One hold per payment, resolved exactly once: 'held' goes to 'settled'
-- or 'released', each by one guarded statement under the row lock. A
-- release that finds no hold leaves a 'released' tombstone (amount 0), so
-- a reservation arriving after it is refused instead of holding money for
-- a payment that is already being cancelled.
CREATE TABLE holds (
  payment_id       uuid PRIMARY KEY,
  account_id       uuid NOT NULL,  -- the payer; no such account: rejected
  payee_account_id uuid NOT NULL,
  amount           bigint NOT NULL CHECK (amount >= 0),
  currency         char(3) NOT NULL,
  state            text NOT NULL CHECK (state IN ('new', 'held', 'rejected', 'settled', 'released')),
  reason           text,
  expires_at       timestamptz NOT NULL,
  created_at       timestamptz NOT NULL DEFAULT now(),
  resolved_at      timestamptz,
  correlation_id   text,           -- the payment's, for the sweeper's events
  CHECK ((state IN ('new', 'held')) = (resolved_at IS NULL))
);
-- The sweeper's scan: open holds by expiry.
CREATE INDEX holds_expiry ON holds (expires_at) WHERE state = 'held';
