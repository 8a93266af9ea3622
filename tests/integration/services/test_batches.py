#!/usr/bin/env python3
"""Movements in batches: each one checked, guarded and answered on its own.

usage: test_batches.py PROFILE_BIN ACCOUNT_BIN

Needs PROFILE_DB_URL, ACCOUNT_DB_URL and PG_ADMIN_URL (eval "$(deploy/pg env)").

The account service runs with ACCOUNT_MOVE_WINDOW=5ms and one batch in
flight per thread, so concurrent requests surely share batches.

1. A burst of concurrent movements of every outcome at once: transfers
   that fit and transfers that do not (insufficient funds), the same
   Idempotency-Key sent twice at the same moment, a source account of
   another customer (404), a currency the accounts do not have (422),
   top-ups and withdrawals. Afterwards: batches held several movements;
   every 201 names a transaction written exactly once; no refusal wrote
   anything; a key's two requests moved money once; each balance is what
   the answers say; the ledger's invariants hold.
2. A movement that makes its batch fail (a trigger, added for the test,
   refuses one amount) fails alone: the batch rolls back, every movement
   of it runs alone, the others are answered 201 and moved once, the
   failing one 500 and nothing of it is written.
"""
import os
import random
import sys
import threading
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import paytest as t  # noqa: E402

BURST = 60
FAIL_AMOUNT = 777777


def fire(bank, requests):
    """Sends every request at once (one thread each, released together);
    returns [(request, status, doc, headers)]."""
    out = [None] * len(requests)
    gate = threading.Barrier(len(requests))

    def one(i, req):
        who, path, body, key = req
        headers = {"Idempotency-Key": key} if key else None
        gate.wait()
        s, d, _, h = t.jcall(bank.ap, "POST", path, body, who=who, headers=headers)
        out[i] = (req, s, d, h)

    threads = [threading.Thread(target=one, args=(i, r)) for i, r in enumerate(requests)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    return out


def transfer(who, a, b, amount, currency="EUR", key=None):
    return (who, "/v1/transfers",
            {"from_account_id": a, "to_account_id": b, "amount": amount, "currency": currency}, key)


def test_burst(bank, url, port):
    rnd = random.Random(7)
    cust = bank.new_customer()
    other = bank.new_customer()
    me = (cust, "customer")
    mine = [bank.new_account(cust, funded=10000) for _ in range(4)]
    theirs = bank.new_account(other, funded=10000)
    batches0 = t.metric(port, "account_move_batches_total") or 0
    moved0 = t.metric(port, "account_move_batched_total") or 0
    reqs, expect = [], {}
    for _ in range(BURST - 16):
        a, b = rnd.sample(mine, 2)
        reqs.append(transfer(me, a, b, rnd.randint(1, 6000)))
    for k in range(4):  # each key twice, at the same moment
        key = "dup-%d-%s" % (k, uuid.uuid4().hex)
        a, b = rnd.sample(mine, 2)
        reqs += [transfer(me, a, b, 10 + k, key=key)] * 2
    reqs.append(transfer(me, theirs, mine[0], 5))
    expect[len(reqs) - 1] = (404, "account_not_found")
    reqs.append(transfer(me, mine[0], mine[1], 5, currency="USD"))
    expect[len(reqs) - 1] = (422, "currency_mismatch")
    for a in mine[:2]:
        reqs.append((me, "/v1/accounts/%s/topups" % a, {"amount": 100, "currency": "EUR"}, None))
        reqs.append((me, "/v1/accounts/%s/withdrawals" % a, {"amount": 50, "currency": "EUR"},
                     "wd-" + uuid.uuid4().hex))
    reqs.append(transfer(me, mine[2], mine[3], 10 ** 12))
    expect[len(reqs) - 1] = (422, "insufficient_funds")
    tx_before = t.sql_int(url, "SELECT count(*) FROM transactions")
    results = fire(bank, reqs)

    t.check(all(r is not None for r in results), "every request answered")
    for i, (status, code) in expect.items():
        _, s, d, _ = results[i]
        t.check(s == status and t.error_code(d) == code,
                "request %d: %d %s (got %d %s)" % (i, status, code, s, t.error_code(d)))
    statuses = {}
    for _, s, d, _ in results:
        key = s if s < 300 else "%d %s" % (s, t.error_code(d))
        statuses[key] = statuses.get(key, 0) + 1
    t.say("burst answers: %s" % statuses)
    allowed = {201, "422 insufficient_funds", "404 account_not_found", "422 currency_mismatch",
               "409 idempotency_key_in_use"}
    t.check(set(statuses) <= allowed, "only expected answers: %s" % statuses)

    new_ids = [d["id"] for _, s, d, h in results if s == 201 and h.get("idempotent-replayed") != "true"]
    t.check(len(new_ids) == len(set(new_ids)), "no transaction id answered twice as new")
    written = t.sql_int(url, "SELECT count(*) FROM transactions") - tx_before
    t.check(written == len(new_ids), "transactions written = new 201 answers (%d vs %d)"
            % (written, len(new_ids)))
    found = t.sql_int(url, "SELECT count(*) FROM transactions WHERE id IN (%s)"
                      % t.sql_list(new_ids)) if new_ids else 0
    t.check(found == len(new_ids), "every new 201 names a written transaction")

    # The two requests of one key: one new answer, the other a replay of it
    # or 409 while it was in flight; money moved once.
    by_key = {}
    for (who, path, body, key), s, d, h in results:
        if key and key.startswith("dup-"):
            by_key.setdefault(key, []).append((s, d, h))
    for key, pair in by_key.items():
        news = [d["id"] for s, d, h in pair if s == 201 and h.get("idempotent-replayed") != "true"]
        replays = [d["id"] for s, d, h in pair if s == 201 and h.get("idempotent-replayed") == "true"]
        busy = [s for s, d, h in pair if s == 409]
        t.check(len(news) == 1 and len(replays) + len(busy) == 1 and set(replays) <= set(news),
                "%s: one new answer, the other replayed or 409 (%s)" % (key, [p[0] for p in pair]))

    # Each balance is what the answers say.
    model = {a: 10000 for a in mine}
    model[theirs] = 10000
    for (who, path, body, key), s, d, h in results:
        if s != 201 or h.get("idempotent-replayed") == "true":
            continue
        if path == "/v1/transfers":
            model[body["from_account_id"]] -= body["amount"]
            model[body["to_account_id"]] += body["amount"]
        elif path.endswith("/topups"):
            model[path.split("/")[3]] += body["amount"]
        else:
            model[path.split("/")[3]] -= body["amount"]
    for a in mine:
        t.check(bank.balance(cust, a) == model[a], "%s: balance as answered (%s vs %s)"
                % (a, bank.balance(cust, a), model[a]))
    t.check(bank.balance(other, theirs) == 10000, "the other customer's account untouched")

    batches = (t.metric(port, "account_move_batches_total") or 0) - batches0
    moved = (t.metric(port, "account_move_batched_total") or 0) - moved0
    t.say("batches: %d movements in %d batches" % (moved, batches))
    t.check(batches > 0 and moved / batches > 1.5,
            "movements shared batches (%d in %d)" % (moved, batches))
    t.ledger_invariants(url, "after the burst")


def test_fails_alone(bank, url, port):
    cust = bank.new_customer()
    me = (cust, "customer")
    a, b = bank.new_account(cust, funded=2000000), bank.new_account(cust, funded=1000)
    admin = t.admin_url("account")
    t.sql(admin, "CREATE FUNCTION test_refuse_amount() RETURNS trigger LANGUAGE plpgsql AS $$"
                 " BEGIN IF NEW.amount = %d THEN RAISE EXCEPTION 'refused by the test'; END IF;"
                 " RETURN NEW; END $$" % FAIL_AMOUNT)
    t.sql(admin, "CREATE TRIGGER test_refuse_amount BEFORE INSERT ON transactions"
                 " FOR EACH ROW EXECUTE FUNCTION test_refuse_amount()")
    try:
        rolled0 = t.metric(port, "account_move_batches_rolled_back_total") or 0
        tx_before = t.sql_int(url, "SELECT count(*) FROM transactions")
        reqs = [transfer(me, a, b, 100 + i) for i in range(11)]
        reqs.insert(5, transfer(me, a, b, FAIL_AMOUNT))
        results = fire(bank, reqs)
    finally:
        t.sql(admin, "DROP TRIGGER test_refuse_amount ON transactions")
        t.sql(admin, "DROP FUNCTION test_refuse_amount()")
    failed = results[5]
    t.check(failed[1] == 500, "the refused movement: 500 (%d)" % failed[1])
    others = [r for i, r in enumerate(results) if i != 5]
    t.check(all(s == 201 for _, s, _, _ in others),
            "every other movement of its batch: 201 (%s)" % [s for _, s, _, _ in others])
    written = t.sql_int(url, "SELECT count(*) FROM transactions") - tx_before
    t.check(written == len(others), "only the others written (%d)" % written)
    t.check(t.sql_int(url, "SELECT count(*) FROM transactions WHERE amount = %d AND debit_account_id = '%s'"
                      % (FAIL_AMOUNT, a)) == 0, "nothing of the refused one written")
    moved = sum(100 + i for i in range(11))
    t.check(bank.balance(cust, a) == 2000000 - moved and bank.balance(cust, b) == 1000 + moved,
            "balances: the others moved once each")
    rolled = (t.metric(port, "account_move_batches_rolled_back_total") or 0) - rolled0
    t.check(rolled >= 1, "its batch rolled back as a whole (%d)" % rolled)
    t.ledger_invariants(url, "after the refused movement")


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    plat = t.Platform({"profile": sys.argv[1], "account": sys.argv[2]}, bus=False,
                      env_for={"account": {"ACCOUNT_MOVE_WINDOW": "5ms", "ACCOUNT_MOVE_BATCHES": "1"}})
    plat.start("profile", "account")
    bank = t.Bank(plat.port("profile"), plat.port("account"))
    url = t.db_url("account")
    port = plat.port("account")
    t.run_cases((("a burst of every outcome", lambda: test_burst(bank, url, port)),
                 ("a failure stays with its movement", lambda: test_fails_alone(bank, url, port))))
    for name in ("account", "profile"):
        t.check(plat.proc(name).stop() == 0, "%s drains and exits 0" % name)
    return t.finish()


if __name__ == "__main__":
    sys.exit(main())
