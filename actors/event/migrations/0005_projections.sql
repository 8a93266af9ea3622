-- Projections: read models kept up to date from the events as they are
-- audited, and rebuilt by replaying the audit log (projections.c).
--
-- One function applies one event to the projections (all of them, or the
-- one named), and it is the only code that writes them: the live path
-- calls it in the transaction that audits the event, a rebuild calls it
-- for every audited event in log order. Every update either adds
-- (counts, sums) or keeps the furthest state reached, so the result does
-- not depend on the order events arrive in: a rebuilt projection equals
-- the live one.

-- Money in and out per account, day (UTC, of when the event was audited)
-- and currency.
CREATE TABLE proj_account_daily (
  account_id uuid NOT NULL,
  day        date NOT NULL,
  currency   char(3) NOT NULL,
  movements  bigint NOT NULL,
  money_in   bigint NOT NULL,
  money_out  bigint NOT NULL,
  PRIMARY KEY (account_id, day, currency)
);

-- Final payments per day, currency and final state.
CREATE TABLE proj_payment_volume (
  day      date NOT NULL,
  currency char(3) NOT NULL,
  state    text NOT NULL,
  payments bigint NOT NULL,
  amount   bigint NOT NULL,
  PRIMARY KEY (day, currency, state)
);

-- Every payment's furthest state (rank: pending 1, authorized 2,
-- cancelled 3, completed or failed 4), with its age.
CREATE TABLE proj_payments (
  payment_id  uuid PRIMARY KEY,
  state       text NOT NULL,
  rank        int NOT NULL,
  amount      bigint,
  currency    char(3),
  customer_id uuid,
  created_at  timestamptz,
  updated_at  timestamptz NOT NULL
);
CREATE INDEX proj_payments_state ON proj_payments (state, payment_id);

-- Every account's balance and held amount as the events tell them: what
-- reconciliation compares with the account service's own figures.
CREATE TABLE proj_balances (
  account_id uuid PRIMARY KEY,
  currency   char(3) NOT NULL,
  balance    bigint NOT NULL,
  held       bigint NOT NULL
);

-- Fields of a payload, or NULL when absent or malformed. The audit log
-- keeps whatever was published; the projections take only what they can
-- read, so a malformed event is audited and skipped here, never an error
-- that would stop the audit (or a rebuild).
CREATE FUNCTION proj_uuid(p text) RETURNS uuid LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN p ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
              THEN p::uuid END
$$;

CREATE FUNCTION proj_amount(p text) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN p ~ '^[0-9]{1,18}$' THEN p::bigint END
$$;

CREATE FUNCTION proj_currency(p text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN p ~ '^[A-Z]{3}$' THEN p END
$$;

CREATE FUNCTION proj_money(p_account uuid, p_day date, p_currency text, p_in bigint,
                           p_out bigint) RETURNS void LANGUAGE sql AS $$
  INSERT INTO proj_account_daily AS d VALUES (p_account, p_day, p_currency, 1, p_in, p_out)
  ON CONFLICT (account_id, day, currency) DO UPDATE
  SET movements = d.movements + 1, money_in = d.money_in + p_in, money_out = d.money_out + p_out
$$;

CREATE FUNCTION proj_balance(p_account uuid, p_currency text, p_balance bigint, p_held bigint)
RETURNS void LANGUAGE sql AS $$
  INSERT INTO proj_balances AS b VALUES (p_account, p_currency, p_balance, p_held)
  ON CONFLICT (account_id) DO UPDATE
  SET balance = b.balance + p_balance, held = b.held + p_held
$$;

CREATE FUNCTION proj_payment(p_payment uuid, p_state text, p_rank int, p_payload jsonb,
                             p_at timestamptz) RETURNS void LANGUAGE sql AS $$
  INSERT INTO proj_payments AS p VALUES (p_payment, p_state, p_rank,
    proj_amount(p_payload->>'amount'), proj_currency(p_payload->>'currency'),
    proj_uuid(p_payload->>'customer_id'), CASE WHEN p_rank = 1 THEN p_at END, p_at)
  ON CONFLICT (payment_id) DO UPDATE SET
    state = CASE WHEN EXCLUDED.rank > p.rank THEN EXCLUDED.state ELSE p.state END,
    updated_at = CASE WHEN EXCLUDED.rank > p.rank THEN EXCLUDED.updated_at ELSE p.updated_at END,
    rank = greatest(p.rank, EXCLUDED.rank),
    amount = coalesce(p.amount, EXCLUDED.amount),
    currency = coalesce(p.currency, EXCLUDED.currency),
    customer_id = coalesce(p.customer_id, EXCLUDED.customer_id),
    created_at = coalesce(p.created_at, EXCLUDED.created_at)
$$;

-- Applies one event, audited at p_at, to projection p_only (NULL: every
-- one). Days are UTC days of when the event was audited.
CREATE FUNCTION proj_apply(p_only text, p_topic text, p_payload jsonb, p_at timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  d date := (p_at AT TIME ZONE 'UTC')::date;
  cur text := proj_currency(p_payload->>'currency');
  amt bigint := proj_amount(p_payload->>'amount');
  acc uuid := proj_uuid(p_payload->>'account_id');
  src uuid := proj_uuid(p_payload->>'from_account_id');
  dst uuid := proj_uuid(p_payload->>'to_account_id');
  pid uuid := proj_uuid(p_payload->>'payment_id');
  daily bool := p_only IS NULL OR p_only = 'account-daily';
  vol bool := p_only IS NULL OR p_only = 'payment-volume';
  pay bool := p_only IS NULL OR p_only = 'payments';
  bal bool := p_only IS NULL OR p_only = 'balances';
BEGIN
  IF p_topic LIKE 'account.%' AND (cur IS NULL OR amt IS NULL) THEN
    RETURN; -- every money movement has both; other account events move none
  END IF;
  CASE p_topic
  WHEN 'account.topped_up' THEN
    IF acc IS NULL THEN RETURN; END IF;
    IF daily THEN PERFORM proj_money(acc, d, cur, amt, 0); END IF;
    IF bal THEN PERFORM proj_balance(acc, cur, amt, 0); END IF;
  WHEN 'account.withdrawn' THEN
    IF acc IS NULL THEN RETURN; END IF;
    IF daily THEN PERFORM proj_money(acc, d, cur, 0, amt); END IF;
    IF bal THEN PERFORM proj_balance(acc, cur, -amt, 0); END IF;
  WHEN 'account.transferred' THEN
    IF src IS NULL OR dst IS NULL THEN RETURN; END IF;
    IF daily THEN
      PERFORM proj_money(src, d, cur, 0, amt);
      PERFORM proj_money(dst, d, cur, amt, 0);
    END IF;
    IF bal THEN
      PERFORM proj_balance(src, cur, -amt, 0);
      PERFORM proj_balance(dst, cur, amt, 0);
    END IF;
  WHEN 'account.funds_reserved' THEN
    IF acc IS NOT NULL AND bal THEN PERFORM proj_balance(acc, cur, -amt, amt); END IF;
  WHEN 'account.funds_released', 'account.settlement_failed' THEN
    -- What a hold gave back (0 when there was nothing left to give).
    IF acc IS NOT NULL AND bal AND amt > 0 THEN PERFORM proj_balance(acc, cur, amt, -amt); END IF;
  WHEN 'account.payment_settled' THEN
    IF src IS NULL OR dst IS NULL THEN RETURN; END IF;
    IF daily THEN
      PERFORM proj_money(src, d, cur, 0, amt);
      PERFORM proj_money(dst, d, cur, amt, 0);
    END IF;
    IF bal THEN
      PERFORM proj_balance(src, cur, 0, -amt);
      PERFORM proj_balance(dst, cur, amt, 0);
    END IF;
  WHEN 'payment.requested' THEN
    IF pid IS NOT NULL AND pay THEN PERFORM proj_payment(pid, 'pending', 1, p_payload, p_at); END IF;
  WHEN 'payment.authorized' THEN
    IF pid IS NOT NULL AND pay THEN PERFORM proj_payment(pid, 'authorized', 2, p_payload, p_at); END IF;
  WHEN 'payment.cancelled' THEN
    IF pid IS NOT NULL AND pay THEN PERFORM proj_payment(pid, 'cancelled', 3, p_payload, p_at); END IF;
  WHEN 'payment.completed', 'payment.failed' THEN
    IF pid IS NULL THEN RETURN; END IF;
    IF pay THEN
      PERFORM proj_payment(pid, split_part(p_topic, '.', 2), 4, p_payload, p_at);
    END IF;
    IF vol AND cur IS NOT NULL AND amt IS NOT NULL THEN
      INSERT INTO proj_payment_volume AS v VALUES (d, cur, split_part(p_topic, '.', 2), 1, amt)
      ON CONFLICT (day, currency, state) DO UPDATE
      SET payments = v.payments + 1, amount = v.amount + EXCLUDED.amount;
    END IF;
  ELSE
    NULL;
  END CASE;
END
$$;

-- Empties projection p_name and replays the whole audit log into it, in
-- log order, under a lock that makes live updates of it wait meanwhile.
-- Returns the number of events replayed.
CREATE FUNCTION proj_rebuild(p_name text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  n bigint := 0;
  r record;
BEGIN
  CASE p_name
  WHEN 'account-daily' THEN LOCK TABLE proj_account_daily IN EXCLUSIVE MODE;
    DELETE FROM proj_account_daily;
  WHEN 'payment-volume' THEN LOCK TABLE proj_payment_volume IN EXCLUSIVE MODE;
    DELETE FROM proj_payment_volume;
  WHEN 'payments' THEN LOCK TABLE proj_payments IN EXCLUSIVE MODE;
    DELETE FROM proj_payments;
  WHEN 'balances' THEN LOCK TABLE proj_balances IN EXCLUSIVE MODE;
    DELETE FROM proj_balances;
  ELSE
    RAISE EXCEPTION 'no projection %', p_name USING ERRCODE = '22023';
  END CASE;
  FOR r IN SELECT topic, payload, received_at AS at FROM audit_log
           ORDER BY seq LOOP
    PERFORM proj_apply(p_name, r.topic, r.payload, r.at);
    n := n + 1;
  END LOOP;
  RETURN n;
END
$$;

-- The projections of what is already audited.
DO $$
DECLARE
  r record;
BEGIN
  FOR r IN SELECT topic, payload, received_at AS at FROM audit_log
           ORDER BY seq LOOP
    PERFORM proj_apply(NULL, r.topic, r.payload, r.at);
  END LOOP;
END
$$;
