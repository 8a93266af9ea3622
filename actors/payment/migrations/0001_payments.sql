-- Payments and their saga state (actors/payment/payment.c).
--
--   pending --account.funds_reserved--> reserved --limits ok--> authorized
--   authorized --account.payment_settled--> completed
--   pending --account.funds_rejected--> failed
--   reserved --limit exceeded--> cancelled --account.funds_released--> failed
--   authorized --account.settlement_failed / funds_released--> failed
--
-- 'reserved' is passed through within one transaction (the limits are
-- checked as the reservation is taken note of), so it shows in the
-- history, not as a current state. Every change is one guarded UPDATE
-- (... WHERE state IN (allowed) RETURNING) that also writes the history
-- line and the next event: an event that finds the payment elsewhere
-- changes nothing.
CREATE TABLE payments (
  id              uuid PRIMARY KEY,
  customer_id     uuid NOT NULL,       -- who asked: the owner of the payer
  from_account_id uuid NOT NULL,
  to_account_id   uuid NOT NULL,
  amount          bigint NOT NULL CHECK (amount > 0),
  currency        char(3) NOT NULL,
  reference       text,
  state           text NOT NULL CHECK (state IN ('pending', 'reserved', 'authorized', 'cancelled',
                                                 'completed', 'failed')),
  reason          text,                -- why it failed (or is being cancelled)
  transitions     int NOT NULL,        -- history lines so far
  limit_day       date,                -- the day whose limit it counts against
  correlation_id  text,                -- X-Request-Id of the request
  created_at      timestamptz NOT NULL,
  updated_at      timestamptz NOT NULL,
  final_at        timestamptz,
  CHECK (from_account_id <> to_account_id),
  CHECK ((state IN ('completed', 'failed')) = (final_at IS NOT NULL)),
  CHECK (state <> 'failed' OR reason IS NOT NULL)
);
CREATE INDEX payments_customer ON payments (customer_id, id);
-- The stuck-saga detector's scan.
CREATE INDEX payments_open ON payments (created_at) WHERE state NOT IN ('completed', 'failed');

-- Every transition, with the event that caused it.
CREATE TABLE payment_history (
  payment_id uuid NOT NULL REFERENCES payments (id),
  seq        int NOT NULL,
  from_state text,
  to_state   text NOT NULL,
  reason     text,
  event_id   uuid,
  at         timestamptz NOT NULL,
  PRIMARY KEY (payment_id, seq)
);

-- What each customer has had authorized per day and currency, against
-- PAYMENT_DAILY_MAX: raised by a guarded upsert as a payment is
-- authorized, lowered again when an authorized payment fails.
CREATE TABLE customer_daily (
  customer_id uuid NOT NULL,
  day         date NOT NULL,
  currency    char(3) NOT NULL,
  amount      bigint NOT NULL CHECK (amount >= 0),
  PRIMARY KEY (customer_id, day, currency)
);
