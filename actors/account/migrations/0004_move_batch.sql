-- Movements in batches: many top-ups, withdrawals and transfers in one
-- transaction, one round trip, one commit (one WAL flush) and one NOTIFY.
--
-- The account service gathers the movements that arrive while its earlier
-- batches are at the database (account's mover.c) and hands them to
-- move_batch() as one JSON array, in arrival order. Each movement keeps
-- its own checks, its own guard and its own outcome, exactly as when it ran
-- alone.
--
-- Waves. The service numbers each movement's wave: one more than the last
-- wave of the movements before it that touch either of its accounts. So
-- within a wave no account appears twice, and an account's movements come
-- in arrival order, one per wave. Each wave is then done set-based, a few
-- statements for all its movements (with accounts drawn at random nearly
-- every movement is in wave 1); no statement runs once per movement.
--
--   1. every account of the batch is locked at once, in id order, so two
--      batches (or a batch and a saga transition, which lock the same way)
--      never wait for each other in a cycle;
--   2. per wave, under those locks: the checks the request used to make
--      with a read of its own (the account exists and is the caller's, the
--      destination exists, currencies match, both open, the credit cannot
--      overflow) and whether its Idempotency-Key was claimed before (or is
--      used twice in the batch); then the guarded debits (balance >= amount
--      - overdraft_limit), then the credits of the movements debited. Each
--      debit and credit takes the account's next entry number and time
--      under the lock (migration 0002), so a later wave sees the balances
--      the earlier ones left;
--   3. once for the whole batch, set-based: the answers, the keys' claims
--      with their answers, the transaction rows, the ledger lines and the
--      outbox events.
--
-- A movement refused by its checks writes nothing and claims no key (as
-- alone: the same key may be tried again). One refused by its guard
-- (insufficient funds) stores that answer under its key. A key claimed
-- before, or twice in the batch, answers 'duplicate': the service runs that
-- request alone, which replays the stored answer. A key claimed by another
-- transaction between the check and the claim rolls the batch back.
-- Anything unexpected raises, and the whole batch rolls back: the service
-- then runs each movement alone, so a failure stays with its movement.
CREATE TYPE move_item AS (
  i              int,     -- the movement's place in the batch
  w              int,     -- its wave, 1..
  kind           text,    -- topup, withdrawal, transfer
  tx             uuid,    -- the transaction's id
  debit          uuid,
  credit         uuid,
  amount         bigint,
  currency       text,
  owner          text,    -- who must own `mine`; NULL: anyone (staff)
  mine           uuid,    -- the caller's account: top-up/withdrawal target, transfer source
  other          uuid,    -- the system account, or the transfer's destination
  scope          text,    -- the Idempotency-Key's scope and key; key NULL: none
  key            text,
  hash           text,
  e1             uuid,    -- the debit's ledger line
  e2             uuid,    -- the credit's ledger line
  event          uuid,    -- the outbox event
  topic          text,
  payload        jsonb,
  headers        jsonb
);

-- An Idempotency-Key as claims keys it.
CREATE TYPE move_key AS (scope text, key text);

CREATE FUNCTION move_batch(p_items jsonb, p_insufficient text, p_keep_hours int)
RETURNS TABLE (out_i int, out_status int, out_code text, out_body text)
LANGUAGE plpgsql AS $$
DECLARE
  items move_item[];
  waves int;
  wv int;
  passed int[];           -- this wave's movements that passed their checks
  debited int[];          -- ... and their guards
  credited int[];
  keyed move_key[] := '{}';  -- the keys of the batch so far
  short int[] := '{}';    -- refused by their guard, all waves
  -- One element per moved movement, all waves, in the order moved.
  moved int[] := '{}';
  d_bal bigint[] := '{}'; d_seq bigint[] := '{}'; d_at timestamptz[] := '{}';
  c_bal bigint[] := '{}'; c_seq bigint[] := '{}'; c_at timestamptz[] := '{}';
  w_d_bal bigint[]; w_d_seq bigint[]; w_d_at timestamptz[];
  w_c_bal bigint[]; w_c_seq bigint[]; w_c_at timestamptz[];
  chk_i int[]; chk_code text[];   -- this wave's checks: NULL code passed
  done_i int[]; done_body text[]; -- the answers of the movements made
  claims_want int;
  claimed bigint;
BEGIN
  SELECT array_agg(x ORDER BY x.i), max(x.w) INTO items, waves
    FROM jsonb_populate_recordset(NULL::move_item, p_items) x;
  IF items IS NULL THEN
    RETURN;
  END IF;

  PERFORM 1 FROM accounts
    WHERE id IN (SELECT u.mine FROM unnest(items) u UNION SELECT u.other FROM unnest(items) u)
    ORDER BY id FOR UPDATE;

  FOR wv IN 1..waves LOOP
    -- The checks, as the movements before this wave left the accounts.
    SELECT coalesce(array_agg(c.i ORDER BY c.i), '{}'), coalesce(array_agg(c.code ORDER BY c.i), '{}')
      INTO chk_i, chk_code
      FROM (SELECT u.i, CASE
          WHEN m.id IS NULL OR m.kind <> 'customer'
               OR (u.owner IS NOT NULL AND m.customer_id::text IS DISTINCT FROM u.owner)
            THEN 'account_not_found'
          WHEN o.id IS NULL OR (u.kind = 'transfer' AND o.kind <> 'customer')
            THEN 'destination_not_found'
          WHEN m.currency <> u.currency OR o.currency <> u.currency THEN 'currency_mismatch'
          WHEN m.status <> 'open' OR o.status <> 'open' THEN 'account_closed'
          WHEN (CASE WHEN u.credit = u.mine THEN m.balance ELSE o.balance END)
               > 9223372036854775807 - u.amount THEN 'amount_out_of_range'
          WHEN u.key IS NOT NULL AND (
               (u.scope, u.key)::move_key = ANY (keyed)
               OR row_number() OVER (PARTITION BY u.scope, u.key ORDER BY u.i) > 1
               OR EXISTS (SELECT 1 FROM claims k WHERE k.scope = u.scope AND k.key = u.key))
            THEN 'duplicate'
        END AS code
        FROM unnest(items) u
        LEFT JOIN accounts m ON m.id = u.mine
        LEFT JOIN accounts o ON o.id = u.other
        WHERE u.w = wv) c;
    RETURN QUERY
      SELECT c.i, CASE c.code WHEN 'account_not_found' THEN 404 WHEN 'destination_not_found' THEN 404
                              WHEN 'duplicate' THEN 0 ELSE 422 END, c.code, NULL::text
        FROM unnest(chk_i, chk_code) AS c(i, code) WHERE c.code IS NOT NULL;
    passed := ARRAY(SELECT c.i FROM unnest(chk_i, chk_code) AS c(i, code) WHERE c.code IS NULL);
    keyed := keyed || ARRAY(SELECT (u.scope, u.key)::move_key FROM unnest(items) u
                            WHERE u.i = ANY (passed) AND u.key IS NOT NULL);

    -- The guarded debits; no account twice in a wave.
    WITH d AS (
      UPDATE accounts a SET balance = a.balance - u.amount, entries_count = a.entries_count + 1,
          updated_at = GREATEST(a.updated_at, clock_timestamp())
        FROM unnest(items) u
        WHERE u.i = ANY (passed) AND a.id = u.debit AND a.currency = u.currency
          AND a.status = 'open' AND a.balance >= u.amount - a.overdraft_limit
        RETURNING u.i, a.balance, a.entries_count, a.updated_at)
    SELECT coalesce(array_agg(d.i ORDER BY d.i), '{}'), array_agg(d.balance ORDER BY d.i),
           array_agg(d.entries_count ORDER BY d.i), array_agg(d.updated_at ORDER BY d.i)
      INTO debited, w_d_bal, w_d_seq, w_d_at FROM d;
    short := short || ARRAY(SELECT x FROM unnest(passed) x WHERE x <> ALL (debited));
    IF cardinality(debited) = 0 THEN
      CONTINUE;
    END IF;

    WITH c AS (
      UPDATE accounts a SET balance = a.balance + u.amount, entries_count = a.entries_count + 1,
          updated_at = GREATEST(a.updated_at, clock_timestamp())
        FROM unnest(items) u
        WHERE u.i = ANY (debited) AND a.id = u.credit AND a.currency = u.currency
          AND a.status = 'open' AND a.balance <= 9223372036854775807 - u.amount
        RETURNING u.i, a.balance, a.entries_count, a.updated_at)
    SELECT coalesce(array_agg(c.i ORDER BY c.i), '{}'), array_agg(c.balance ORDER BY c.i),
           array_agg(c.entries_count ORDER BY c.i), array_agg(c.updated_at ORDER BY c.i)
      INTO credited, w_c_bal, w_c_seq, w_c_at FROM c;
    IF credited <> debited THEN
      -- Checked above under the same locks: cannot happen. The whole batch
      -- rolls back and its movements run alone.
      RAISE EXCEPTION 'move_batch: % credits refused after their checks',
        cardinality(debited) - cardinality(credited);
    END IF;
    moved := moved || debited;
    d_bal := d_bal || w_d_bal; d_seq := d_seq || w_d_seq; d_at := d_at || w_d_at;
    c_bal := c_bal || w_c_bal; c_seq := c_seq || w_c_seq; c_at := c_at || w_c_at;
  END LOOP;

  RETURN QUERY SELECT x, 422, 'insufficient_funds'::text, NULL::text FROM unnest(short) x;

  -- The answers of the movements made, and the keys with their answers. A
  -- key that another transaction claimed since the check (a request with the
  -- same key on another connection) makes the whole batch roll back: its
  -- movements run alone, and that one replays the other's answer.
  SELECT coalesce(array_agg(u.i ORDER BY u.i), '{}'), coalesce(array_agg(CASE WHEN u.kind = 'transfer' THEN
        json_build_object('id', u.tx, 'kind', u.kind, 'from_account_id', u.debit,
          'to_account_id', u.credit, 'amount', u.amount, 'currency', u.currency,
          'created_at', to_char(r.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))::text
      ELSE
        json_build_object('id', u.tx, 'kind', u.kind, 'account_id', u.mine,
          'amount', u.amount, 'currency', u.currency,
          'created_at', to_char(r.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))::text
      END ORDER BY u.i), '{}')
    INTO done_i, done_body
    FROM unnest(moved, d_at) AS r(i, at) JOIN unnest(items) u ON u.i = r.i;
  SELECT count(*) INTO claims_want FROM unnest(items) u
    WHERE u.key IS NOT NULL AND (u.i = ANY (moved) OR u.i = ANY (short));
  IF claims_want > 0 THEN
    INSERT INTO claims (scope, key, request_hash, status, response_body, created_at, expires_at)
      SELECT u.scope, u.key, u.hash, CASE WHEN d.i IS NULL THEN 422 ELSE 201 END,
             coalesce(d.body, p_insufficient), now(), now() + make_interval(hours => p_keep_hours)
        FROM unnest(items) u LEFT JOIN unnest(done_i, done_body) AS d(i, body) ON d.i = u.i
        WHERE u.key IS NOT NULL AND (u.i = ANY (moved) OR u.i = ANY (short))
      ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS claimed = ROW_COUNT;
    IF claimed <> claims_want THEN
      RAISE EXCEPTION 'move_batch: % of % keys claimed meanwhile', claims_want - claimed,
        claims_want USING ERRCODE = 'serialization_failure';
    END IF;
  END IF;
  IF cardinality(moved) = 0 THEN
    RETURN;
  END IF;

  INSERT INTO transactions (id, kind, debit_account_id, credit_account_id, amount, currency, created_at)
    SELECT u.tx, u.kind, u.debit, u.credit, u.amount, u.currency, r.at
      FROM unnest(moved, d_at) AS r(i, at) JOIN unnest(items) u ON u.i = r.i;
  INSERT INTO ledger_entries (id, transaction_id, account_id, seq, amount, currency, balance_after, created_at)
    SELECT u.e1, u.tx, u.debit, r.d_seq, -u.amount, u.currency, r.d_bal, r.d_at
      FROM unnest(moved, d_bal, d_seq, d_at) AS r(i, d_bal, d_seq, d_at) JOIN unnest(items) u ON u.i = r.i
    UNION ALL
    SELECT u.e2, u.tx, u.credit, r.c_seq, u.amount, u.currency, r.c_bal, r.c_at
      FROM unnest(moved, c_bal, c_seq, c_at) AS r(i, c_bal, c_seq, c_at) JOIN unnest(items) u ON u.i = r.i;
  INSERT INTO outbox (id, topic, key, payload, headers, created_at)
    SELECT u.event, u.topic, u.mine::text, u.payload, u.headers, now()
      FROM unnest(items) u WHERE u.i = ANY (moved);
  RETURN QUERY SELECT d.i, 201, NULL::text, d.body FROM unnest(done_i, done_body) AS d(i, body);
END;
$$;
