-- The projection writers in PL/pgSQL, with the same statements.
--
-- A LANGUAGE sql function that is not inlined (these three write, so they
-- never are) parses and plans its statement at every call: sampled under
-- a steady payment load, that was a fifth of the event database's CPU.
-- PL/pgSQL keeps each statement's plan for the life of the session.

CREATE OR REPLACE FUNCTION proj_money(p_account uuid, p_day date, p_currency text, p_in bigint,
                                      p_out bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO proj_account_daily AS d VALUES (p_account, p_day, p_currency, 1, p_in, p_out)
  ON CONFLICT (account_id, day, currency) DO UPDATE
  SET movements = d.movements + 1, money_in = d.money_in + p_in, money_out = d.money_out + p_out;
END
$$;

CREATE OR REPLACE FUNCTION proj_balance(p_account uuid, p_currency text, p_balance bigint,
                                        p_held bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO proj_balances AS b VALUES (p_account, p_currency, p_balance, p_held)
  ON CONFLICT (account_id) DO UPDATE
  SET balance = b.balance + p_balance, held = b.held + p_held;
END
$$;

CREATE OR REPLACE FUNCTION proj_payment(p_payment uuid, p_state text, p_rank int, p_payload jsonb,
                                        p_at timestamptz) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
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
    created_at = coalesce(p.created_at, EXCLUDED.created_at);
END
$$;
