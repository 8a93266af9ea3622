-- Movements in batches: many top-ups, withdrawals and transfers in one
-- transaction, one round trip, one commit (one WAL flush) and one NOTIFY.
--
-- The account service gathers the movements that arrive while its earlier
-- batches are at the database (account's mover.c) and hands them to
-- move_batch() as one JSON array, in arrival order. Each movement keeps
-- its own checks, its own guard and its own outcome, exactly as when it ran
-- alone:
--
--   1. every account of the batch is locked at once, in id order, so two
--      batches (or a batch and a saga transition, which lock the same way)
--      never wait for each other in a cycle;
--   2. per movement, in order, under those locks: the checks the request
--      used to make with a read of its own (the account exists and is the
--      caller's, the destination exists, currencies match, both open, the
--      credit cannot overflow), then whether its Idempotency-Key was
--      claimed before, then the guarded debit (balance >= amount -
--      overdraft_limit), then the credit. Each debit and credit takes the account's next entry number
--      and time under the lock (migration 0002), so a later movement of
--      the same account in the batch sees the balance the earlier one left;
--   3. once for the whole batch, set-based: the keys' claims with their
--      answers, the transaction rows, the ledger lines, the outbox events.
--
-- A movement refused by its checks writes nothing and claims no key (as
-- before: the same key may be tried again). One refused by its guard
-- (insufficient funds) stores that answer under its key. A key claimed
-- before, or twice in the batch, answers 'duplicate': the service runs that
-- request alone, which replays the stored answer. A key claimed by another
-- transaction between the check and the claim rolls the batch back.
-- Anything unexpected raises, and the whole batch rolls back: the service
-- then runs each movement alone, so a failure stays with its movement.
CREATE TYPE move_item AS (
  i              int,     -- the movement's place in the batch
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
  it move_item;
  m record;               -- mine
  o record;               -- other
  c_balance bigint;       -- the credited account's balance before
  d_bal bigint; d_seq bigint; d_at timestamptz;
  c_bal bigint; c_seq bigint; c_at timestamptz;
  answer text;
  -- What the batch writes at the end, one element per moved movement.
  t_id uuid[] := '{}'; t_kind text[] := '{}'; t_debit uuid[] := '{}'; t_credit uuid[] := '{}';
  t_amount bigint[] := '{}'; t_cur text[] := '{}'; t_at timestamptz[] := '{}';
  l_id uuid[] := '{}'; l_tx uuid[] := '{}'; l_acct uuid[] := '{}'; l_seq bigint[] := '{}';
  l_amount bigint[] := '{}'; l_cur text[] := '{}'; l_bal bigint[] := '{}';
  l_at timestamptz[] := '{}';
  moved int[] := '{}';
  k_scope text[] := '{}'; k_key text[] := '{}'; k_hash text[] := '{}';
  k_status int[] := '{}'; k_body text[] := '{}';
  k_seen move_key[] := '{}';
  claimed bigint;
BEGIN
  SELECT array_agg(x ORDER BY x.i) INTO items
    FROM jsonb_populate_recordset(NULL::move_item, p_items) x;
  IF items IS NULL THEN
    RETURN;
  END IF;

  PERFORM 1 FROM accounts
    WHERE id IN (SELECT u.mine FROM unnest(items) u UNION SELECT u.other FROM unnest(items) u)
    ORDER BY id FOR UPDATE;

  FOREACH it IN ARRAY items LOOP
    out_i := it.i;
    out_code := NULL;
    out_body := NULL;
    SELECT a.customer_id::text AS customer, a.kind, a.currency, a.status, a.balance
      INTO m FROM accounts a WHERE a.id = it.mine;
    IF NOT FOUND OR m.kind <> 'customer' OR (it.owner IS NOT NULL AND m.customer IS DISTINCT FROM it.owner) THEN
      out_status := 404; out_code := 'account_not_found'; RETURN NEXT; CONTINUE;
    END IF;
    SELECT a.kind, a.currency, a.status, a.balance INTO o FROM accounts a WHERE a.id = it.other;
    IF NOT FOUND OR (it.kind = 'transfer' AND o.kind <> 'customer') THEN
      out_status := 404; out_code := 'destination_not_found'; RETURN NEXT; CONTINUE;
    END IF;
    IF m.currency <> it.currency OR o.currency <> it.currency THEN
      out_status := 422; out_code := 'currency_mismatch'; RETURN NEXT; CONTINUE;
    END IF;
    IF m.status <> 'open' OR o.status <> 'open' THEN
      out_status := 422; out_code := 'account_closed'; RETURN NEXT; CONTINUE;
    END IF;
    -- The credited balance, as the movements before this one left it.
    c_balance := CASE WHEN it.credit = it.mine THEN m.balance ELSE o.balance END;
    IF c_balance > 9223372036854775807 - it.amount THEN
      out_status := 422; out_code := 'amount_out_of_range'; RETURN NEXT; CONTINUE;
    END IF;

    -- A key claimed before (or twice in this batch) is the first request's.
    IF it.key IS NOT NULL THEN
      IF (it.scope, it.key)::move_key = ANY (k_seen)
         OR EXISTS (SELECT 1 FROM claims k WHERE k.scope = it.scope AND k.key = it.key) THEN
        out_status := 0; out_code := 'duplicate'; RETURN NEXT; CONTINUE;
      END IF;
      k_seen := k_seen || (it.scope, it.key)::move_key;
    END IF;

    UPDATE accounts SET balance = balance - it.amount, entries_count = entries_count + 1,
        updated_at = GREATEST(updated_at, clock_timestamp())
      WHERE id = it.debit AND currency = it.currency AND status = 'open'
        AND balance >= it.amount - overdraft_limit
      RETURNING balance, entries_count, updated_at INTO d_bal, d_seq, d_at;
    IF NOT FOUND THEN
      IF it.key IS NOT NULL THEN
        k_scope := k_scope || it.scope; k_key := k_key || it.key; k_hash := k_hash || it.hash;
        k_status := k_status || 422; k_body := k_body || p_insufficient;
      END IF;
      out_status := 422; out_code := 'insufficient_funds'; RETURN NEXT; CONTINUE;
    END IF;
    UPDATE accounts SET balance = balance + it.amount, entries_count = entries_count + 1,
        updated_at = GREATEST(updated_at, clock_timestamp())
      WHERE id = it.credit AND currency = it.currency AND status = 'open'
        AND balance <= 9223372036854775807 - it.amount
      RETURNING balance, entries_count, updated_at INTO c_bal, c_seq, c_at;
    IF NOT FOUND THEN
      -- Checked above under the same lock: cannot happen. The whole batch
      -- rolls back and its movements run alone.
      RAISE EXCEPTION 'move_batch: credit of % refused after its checks', it.credit;
    END IF;

    IF it.kind = 'transfer' THEN
      answer := json_build_object('id', it.tx, 'kind', it.kind, 'from_account_id', it.debit,
        'to_account_id', it.credit, 'amount', it.amount, 'currency', it.currency,
        'created_at', to_char(d_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))::text;
    ELSE
      answer := json_build_object('id', it.tx, 'kind', it.kind, 'account_id', it.mine,
        'amount', it.amount, 'currency', it.currency,
        'created_at', to_char(d_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))::text;
    END IF;
    t_id := t_id || it.tx; t_kind := t_kind || it.kind; t_debit := t_debit || it.debit;
    t_credit := t_credit || it.credit; t_amount := t_amount || it.amount;
    t_cur := t_cur || it.currency; t_at := t_at || d_at;
    l_id := l_id || ARRAY[it.e1, it.e2]; l_tx := l_tx || ARRAY[it.tx, it.tx];
    l_acct := l_acct || ARRAY[it.debit, it.credit]; l_seq := l_seq || ARRAY[d_seq, c_seq];
    l_amount := l_amount || ARRAY[-it.amount, it.amount];
    l_cur := l_cur || ARRAY[it.currency, it.currency]; l_bal := l_bal || ARRAY[d_bal, c_bal];
    l_at := l_at || ARRAY[d_at, c_at];
    moved := moved || it.i;
    IF it.key IS NOT NULL THEN
      k_scope := k_scope || it.scope; k_key := k_key || it.key; k_hash := k_hash || it.hash;
      k_status := k_status || 201; k_body := k_body || answer;
    END IF;
    out_status := 201; out_body := answer; RETURN NEXT;
  END LOOP;

  -- The keys, each with its answer, in one statement. A key that another
  -- transaction claimed since the check above (a request with the same key
  -- on another connection) makes the whole batch roll back: its movements
  -- run alone, and that one replays the other's answer.
  IF cardinality(k_key) > 0 THEN
    INSERT INTO claims (scope, key, request_hash, status, response_body, created_at, expires_at)
      SELECT v.scope, v.key, v.hash, v.status, v.body, now(), now() + make_interval(hours => p_keep_hours)
        FROM unnest(k_scope, k_key, k_hash, k_status, k_body) AS v(scope, key, hash, status, body)
      ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS claimed = ROW_COUNT;
    IF claimed <> cardinality(k_key) THEN
      RAISE EXCEPTION 'move_batch: % of % keys claimed meanwhile', cardinality(k_key) - claimed,
        cardinality(k_key) USING ERRCODE = 'serialization_failure';
    END IF;
  END IF;
  IF cardinality(moved) = 0 THEN
    RETURN;
  END IF;
  INSERT INTO transactions (id, kind, debit_account_id, credit_account_id, amount, currency, created_at)
    SELECT * FROM unnest(t_id, t_kind, t_debit, t_credit, t_amount, t_cur, t_at);
  INSERT INTO ledger_entries (id, transaction_id, account_id, seq, amount, currency, balance_after, created_at)
    SELECT * FROM unnest(l_id, l_tx, l_acct, l_seq, l_amount, l_cur, l_bal, l_at);
  INSERT INTO outbox (id, topic, key, payload, headers, created_at)
    SELECT u.event, u.topic, u.mine::text, u.payload, u.headers, now()
      FROM unnest(items) u WHERE u.i = ANY (moved);
END;
$$;
