#!/usr/bin/env python3
"""Statements in the order money moved; ids and system accounts alike.

usage: test_statements.py PROFILE_BIN ACCOUNT_BIN

Needs PROFILE_DB_URL and ACCOUNT_DB_URL (eval "$(deploy/pg env)").

1. Writers hammer three hot accounts with transfers, top-ups and
   withdrawals over the API while one reader per account follows its
   statement page by page (GET /v1/accounts/{id}/transactions with
   next_cursor, small pages, going on from the last cursor as money keeps
   moving). Afterwards each reader must have seen every entry exactly once,
   numbered 1, 2, 3, ...; each balance_after is the previous one plus the
   amount; the last one is the balance; times never go backwards.
2. An id in upper case names the same account everywhere (read, top-up,
   withdrawal, transfer, ledger), and comes back in lower case.
3. A top-up or withdrawal naming a system account is answered 404 like any
   account the caller does not own, and changes nothing.
"""
import os
import random
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import paytest as t  # noqa: E402

HAMMER_SECONDS = 8
WRITERS = 6
PAGE = 7


def follow(bank, who, account, stop, seen, errors):
    """Reads the statement from the start, then keeps following the cursor
    until stop is set and one more pass found nothing new."""
    cursor = None
    quiet_after_stop = False
    while True:
        path = "/v1/accounts/%s/transactions?limit=%d" % (account, PAGE)
        if cursor:
            path += "&cursor=" + cursor
        s, d, text, _ = t.jcall(bank.ap, "GET", path, who=who)
        if s != 200:
            errors.append("reader %d %s" % (s, text[:120]))
            time.sleep(0.05)
            continue
        seen += d["items"]
        if d["items"]:
            cursor = str(d["items"][-1]["seq"])
        if d["next_cursor"] is not None:
            t.check(d["next_cursor"] == cursor, "next_cursor is the last item's seq")
            continue
        if stop.is_set():
            if quiet_after_stop:
                return
            quiet_after_stop = True  # one more pass after the writers are done
        time.sleep(0.01)


def hammer(bank, cust, accounts, stop, counts, errors):
    rnd = random.Random()
    me = (cust, "customer")
    while not stop.is_set():
        a, b = rnd.sample(accounts, 2)
        r = rnd.random()
        if r < 0.6:
            s, d, text, _ = t.jcall(bank.ap, "POST", "/v1/transfers",
                                    {"from_account_id": a, "to_account_id": b,
                                     "amount": rnd.randint(1, 1500), "currency": "EUR"}, who=me)
        elif r < 0.8:
            s, d, text, _ = t.jcall(bank.ap, "POST", "/v1/accounts/%s/topups" % a,
                                    {"amount": rnd.randint(1, 1500), "currency": "EUR"}, who=me)
        else:
            s, d, text, _ = t.jcall(bank.ap, "POST", "/v1/accounts/%s/withdrawals" % a,
                                    {"amount": rnd.randint(1, 1500), "currency": "EUR"}, who=me)
        if s == 201:
            counts["ok"] += 1
        elif s == 422 and t.error_code(d) == "insufficient_funds":
            counts["refused"] += 1
        else:
            errors.append("writer %d %s" % (s, text[:120]))


def test_hot_statements(bank, url):
    cust = bank.new_customer()
    me = (cust, "customer")
    accounts = [bank.new_account(cust, funded=5000) for _ in range(3)]
    stop = threading.Event()
    counts = {"ok": 0, "refused": 0}
    errors = []
    seen = {a: [] for a in accounts}
    readers = [threading.Thread(target=follow, args=(bank, me, a, stop, seen[a], errors))
               for a in accounts]
    # The readers' last pass must come after the writers' last commit: they
    # are told to stop only once every writer has had its last answer.
    writers_stop = threading.Event()
    writers = [threading.Thread(target=hammer, args=(bank, cust, accounts, writers_stop, counts,
                                                     errors))
               for _ in range(WRITERS)]
    for th in readers + writers:
        th.start()
    time.sleep(HAMMER_SECONDS)
    writers_stop.set()
    for th in writers:
        th.join()
    stop.set()
    for th in readers:
        th.join(60)
    t.say("statements: %d movements, %d refused for funds, %d lines followed"
          % (counts["ok"], counts["refused"], sum(len(v) for v in seen.values())))
    t.check(not errors, "no request failed: %s" % errors[:3])
    t.check(counts["ok"] > 50, "money moved (%d movements)" % counts["ok"])
    for a in accounts:
        lines = seen[a]
        ids = [x["id"] for x in lines]
        t.check(len(ids) == len(set(ids)), "%s: no line seen twice" % a)
        total = t.sql_int(url, "SELECT count(*) FROM ledger_entries WHERE account_id = '%s'" % a)
        t.check(len(ids) == total, "%s: the reader saw every line (%d of %d)" % (a, len(ids), total))
        t.check([x["seq"] for x in lines] == list(range(1, len(lines) + 1)),
                "%s: lines numbered 1, 2, 3, ... in the order read" % a)
        prev, breaks, backwards = 0, 0, 0
        for i, x in enumerate(lines):
            if prev + x["amount"] != x["balance_after"]:
                breaks += 1
            prev = x["balance_after"]
            if i > 0 and x["created_at"] < lines[i - 1]["created_at"]:
                backwards += 1
        t.check(breaks == 0, "%s: balance_after chains (%d breaks)" % (a, breaks))
        t.check(backwards == 0, "%s: times never go backwards (%d)" % (a, backwards))
        bal = bank.balance(cust, a)
        t.check(lines and lines[-1]["balance_after"] == bal,
                "%s: the last line is the balance (%s vs %s)"
                % (a, lines[-1]["balance_after"] if lines else None, bal))
        # The same statement read again in one go is the same list.
        again = bank.statement(me, a, limit=100)
        t.check([x["id"] for x in again] == ids, "%s: a second reading is identical" % a)
    t.ledger_invariants(url, "after the hot accounts")


def test_uppercase_ids(bank):
    cust = bank.new_customer()
    me = (cust, "customer")
    a = bank.new_account(cust, funded=1000)
    b = bank.new_account(cust)
    A, B = a.upper(), b.upper()
    s, d, _, _ = t.jcall(bank.ap, "GET", "/v1/accounts/" + A, who=me)
    t.check(s == 200 and d["id"] == a, "GET by an upper-case id: 200, lower-case id (%d)" % s)
    s, d, text, _ = t.jcall(bank.ap, "POST", "/v1/accounts/%s/topups" % A,
                            {"amount": 10, "currency": "EUR"}, who=me)
    t.check(s == 201 and d["account_id"] == a, "top-up by an upper-case id: 201 (%d %s)" % (s, text))
    s, d, text, _ = t.jcall(bank.ap, "POST", "/v1/accounts/%s/withdrawals" % A,
                            {"amount": 5, "currency": "EUR"}, who=me)
    t.check(s == 201 and d["account_id"] == a, "withdrawal by an upper-case id: 201 (%d %s)"
            % (s, text))
    s, d, text, _ = t.jcall(bank.ap, "POST", "/v1/transfers",
                            {"from_account_id": A, "to_account_id": B, "amount": 5,
                             "currency": "EUR"}, who=me)
    t.check(s == 201 and d["from_account_id"] == a and d["to_account_id"] == b,
            "transfer between upper-case ids: 201, lower-case ids back (%d %s)" % (s, text))
    s, d, text, _ = t.jcall(bank.ap, "POST", "/v1/transfers",
                            {"from_account_id": A, "to_account_id": a, "amount": 5,
                             "currency": "EUR"}, who=me)
    t.check(s == 422 and t.error_code(d) == "same_account",
            "the same account in two cases is the same account: 422 (%d)" % s)
    s, d, _, _ = t.jcall(bank.ap, "GET", "/v1/accounts/%s/transactions" % A, who=me)
    t.check(s == 200 and len(d["items"]) == 4, "ledger by an upper-case id (%d)" % s)
    s, d, _, _ = t.jcall(bank.ap, "GET", "/v1/accounts?customer_id=" + cust.upper(),
                         who=bank.operator)
    t.check(s == 200 and sorted(x["id"] for x in d["items"]) == sorted([a, b]),
            "operator lists by an upper-case customer id (%d)" % s)
    s, d, _, _ = t.jcall(bank.pp, "GET", "/v1/customers/" + cust.upper(), who=me)
    t.check(s == 200 and d["id"] == cust, "profile by an upper-case id: own customer (%d)" % s)
    t.check(bank.balance(cust, a) == 1000 + 10 - 5 - 5 and bank.balance(cust, b) == 5,
            "balances as moved")
    s, d, _, _ = t.jcall(bank.ap, "GET", "/v1/accounts/%s/transactions?cursor=%s" % (a, a), who=me)
    t.check(s == 422 and t.error_code(d) == "invalid_cursor", "an id is not a ledger cursor (%d)" % s)


def test_system_accounts(bank, url):
    cust = bank.new_customer()
    me = (cust, "customer")
    a = bank.new_account(cust, funded=100)
    system = t.sql(url, "SELECT id FROM accounts WHERE kind = 'system' AND currency = 'EUR'")
    before = t.sql(url, "SELECT balance FROM accounts WHERE id = '%s'" % system)
    tx = t.sql_int(url, "SELECT count(*) FROM transactions")
    for kind in ("topups", "withdrawals"):
        for who in (me, bank.operator):
            s, d, text, _ = t.jcall(bank.ap, "POST", "/v1/accounts/%s/%s" % (system, kind),
                                    {"amount": 1, "currency": "EUR"}, who=who)
            t.check(s == 404 and t.error_code(d) == "account_not_found",
                    "%s naming the system account (%s): 404 (%d %s)" % (kind, who[1], s, text))
    s, d, _, _ = t.jcall(bank.ap, "GET", "/v1/accounts/" + system, who=bank.operator)
    t.check(s == 404, "the system account is not readable as an account (%d)" % s)
    s, d, _, _ = t.jcall(bank.ap, "POST", "/v1/transfers",
                         {"from_account_id": a, "to_account_id": system, "amount": 1,
                          "currency": "EUR"}, who=me)
    t.check(s == 404 and t.error_code(d) == "account_not_found",
            "transfer to the system account: 404 (%d)" % s)
    t.check(t.sql(url, "SELECT balance FROM accounts WHERE id = '%s'" % system) == before,
            "the system account unchanged")
    t.check(t.sql_int(url, "SELECT count(*) FROM transactions") == tx, "no transaction written")


def test_append_only(bank, url):
    """The ledger cannot be rewritten, whoever connects as the service's
    role (migration 0005): lines and transactions are never changed or
    deleted, accounts never deleted; the refusal changes nothing."""
    cust = bank.new_customer()
    a = bank.new_account(cust, funded=500)
    state = ("SELECT (SELECT count(*) || '/' || sum(amount) FROM ledger_entries WHERE account_id = '{0}')"
             " || '/' || (SELECT count(*) || '/' || sum(amount) FROM transactions"
             " WHERE credit_account_id = '{0}') || '/' || (SELECT count(*) || '/' || min(balance)"
             " FROM accounts WHERE id = '{0}')").format(a)
    before = t.sql(url, state)
    for what, query in (
            ("a line changed", "UPDATE ledger_entries SET amount = amount + 1 WHERE account_id = '%s'" % a),
            ("a line deleted", "DELETE FROM ledger_entries WHERE account_id = '%s'" % a),
            ("a transaction changed", "UPDATE transactions SET amount = 1 WHERE credit_account_id = '%s'" % a),
            ("a transaction deleted", "DELETE FROM transactions WHERE credit_account_id = '%s'" % a),
            ("an account deleted", "DELETE FROM accounts WHERE id = '%s'" % a),
            ("the lines truncated", "TRUNCATE ledger_entries"),
            ("the accounts truncated", "TRUNCATE accounts CASCADE")):
        try:
            t.sql(url, query)
            refused = ""
        except RuntimeError as e:
            refused = str(e)
        t.check("append-only" in refused, "%s: refused (%s)" % (what, refused.strip()[:100]))
    after = t.sql(url, state)
    t.check(after == before, "nothing changed (%s vs %s)" % (after, before))


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    plat = t.Platform({"profile": sys.argv[1], "account": sys.argv[2]}, bus=False)
    plat.start("profile", "account")
    bank = t.Bank(plat.port("profile"), plat.port("account"))
    url = t.db_url("account")
    t.run_cases((("hot statements", lambda: test_hot_statements(bank, url)),
                 ("upper-case ids", lambda: test_uppercase_ids(bank)),
                 ("system accounts", lambda: test_system_accounts(bank, url)),
                 ("append-only ledger", lambda: test_append_only(bank, url))))
    for name in ("account", "profile"):
        t.check(plat.proc(name).stop() == 0, "%s drains and exits 0" % name)
    return t.finish()


if __name__ == "__main__":
    sys.exit(main())
