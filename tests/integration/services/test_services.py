#!/usr/bin/env python3
"""The profile and account services as real processes on a real PostgreSQL.

usage: test_services.py PROFILE_BIN ACCOUNT_BIN DEPLOY_PG

Needs PROFILE_DB_URL and ACCOUNT_DB_URL (eval "$(deploy/pg env)"); fails
without them. Starts both services on free loopback ports with a test HMAC
key, drives them over HTTP (http.client, keep-alive), checks the database
with psql, and always stops what it started. One test kills PostgreSQL with
SIGKILL and starts it again through DEPLOY_PG.

Prints "N passed, N failed" like the C tests.
"""
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import paytest  # noqa: E402
from paytest import (KEY, auth_headers, call, check, error_code, free_port, jcall,  # noqa: E402
                     ledger_invariants, sql, sql_int, stop_all)


def service(name, binary, env):
    """A service on the port its environment names, without the bus: the
    relay stays off, so these tests neither need busd nor publish into one
    a developer may be running (tests/integration/outbox covers the bus)."""
    port = int(env[name.upper() + "_PORT"])
    return paytest.Proc(name, [binary], dict(env, BUS_ADDR="off"), port)


# ---------------------------------------------------------------------------
# Fixtures


class World:
    def __init__(self, profile, account):
        self.profile, self.account = profile, account
        self.pp, self.ap = profile.health_port, account.health_port
        self.operator = ("op-1", "operator")

    def new_customer(self):
        email = "T-%s@Example.com" % uuid.uuid4().hex[:12]
        status, doc, text, _ = jcall(self.pp, "POST", "/v1/customers",
                                     {"name": "Test Person", "email": email,
                                      "phone": "+4915100000000", "password": "s3cret-pass"})
        if status != 201:
            raise RuntimeError("create customer: %d %s" % (status, text))
        return doc["id"], email

    def new_account(self, customer, currency="EUR", funded=0):
        status, doc, text, _ = jcall(self.ap, "POST", "/v1/accounts", {"currency": currency},
                                     who=(customer, "customer"))
        if status != 201:
            raise RuntimeError("open account: %d %s" % (status, text))
        if funded:
            s, d, t, _ = jcall(self.ap, "POST", "/v1/accounts/%s/topups" % doc["id"],
                               {"amount": funded, "currency": currency}, who=(customer, "customer"))
            if s != 201:
                raise RuntimeError("topup: %d %s" % (s, t))
        return doc["id"]

    def balance(self, customer, account):
        status, doc, _, _ = jcall(self.ap, "GET", "/v1/accounts/" + account, who=(customer, "customer"))
        return doc["balance"] if status == 200 else None


# ---------------------------------------------------------------------------
# Tests


def test_identity(w):
    cust, _ = w.new_customer()
    acc = w.new_account(cust)
    path = "/v1/accounts/" + acc
    s, d, _, _ = jcall(w.ap, "GET", path)
    check(s == 401 and error_code(d) == "unauthenticated", "no identity: 401 (%d)" % s)
    h = auth_headers("GET", path, cust, "customer", key="not-the-key-0123456789abcdef01234")
    s, _, _, _ = jcall(w.ap, "GET", path, headers=h)
    check(s == 401, "forged signature: 401 (%d)" % s)
    h = auth_headers("GET", path, cust, "customer", ts=int(time.time()) - 3600)
    s, _, _, _ = jcall(w.ap, "GET", path, headers=h)
    check(s == 401, "stale timestamp: 401 (%d)" % s)
    h = auth_headers("GET", path, cust, "customer")
    h["X-Auth-Roles"] = "operator"  # escalation after signing
    s, _, _, _ = jcall(w.ap, "GET", path, headers=h)
    check(s == 401, "roles changed after signing: 401 (%d)" % s)
    h = auth_headers("GET", "/v1/accounts", cust, "customer")  # signed for another path
    s, _, _, _ = jcall(w.ap, "GET", path, headers=h)
    check(s == 401, "signature of another path: 401 (%d)" % s)
    h = auth_headers("GET", path, cust, "customer")
    del h["X-Auth-Signature"]
    s, _, _, _ = jcall(w.ap, "GET", path, headers=h)
    check(s == 401, "signature missing: 401 (%d)" % s)
    s, _, _, _ = jcall(w.ap, "GET", path, who=(cust, "superuser"))
    check(s == 401, "unknown role: 401 (%d)" % s)
    s, _, _, _ = jcall(w.ap, "GET", path, who=(cust, "customer"))
    check(s == 200, "valid identity: 200 (%d)" % s)
    s, _, _, _ = jcall(w.ap, "GET", path, who=("aud-1", "auditor"))
    check(s == 403, "auditor may not read an account: 403 (%d)" % s)
    s, _, _, _ = jcall(w.ap, "GET", path + "/transactions", who=("aud-1", "auditor"))
    check(s == 200, "auditor reads ledger lines: 200 (%d)" % s)
    s, _, _, _ = jcall(w.pp, "GET", "/internal/customers/" + cust, who=(cust, "customer"))
    check(s == 403, "customers may not call internal routes: 403 (%d)" % s)


def test_bad_input(w):
    cust, _ = w.new_customer()
    other, _ = w.new_customer()
    a = w.new_account(cust, funded=5000)
    b = w.new_account(cust, funded=5000)
    usd = w.new_account(cust, currency="USD", funded=100)
    theirs = w.new_account(other, funded=5000)
    me = (cust, "customer")
    url = os.environ["ACCOUNT_DB_URL"]
    tx_before = sql_int(url, "SELECT count(*) FROM transactions")
    accounts_before = sql_int(url, "SELECT count(*) FROM accounts")
    keys_before = sql_int(url, "SELECT count(*) FROM claims")

    def expect(status, code, method, path, body, who=me, headers=None, what=""):
        s, d, text, _ = jcall(w.ap, method, path, body, who=who, headers=headers)
        ok = s == status and (code is None or error_code(d) == code)
        check(ok, "%s: want %d %s, got %d %s" % (what or path, status, code, s, text[:160]))

    tp = "/v1/transfers"
    expect(400, "malformed_json", "POST", tp, '{"from_account_id": ', what="truncated JSON")
    expect(400, "malformed_json", "POST", tp, '[1,2]', what="array body")
    expect(400, "malformed_json", "POST", tp, '{"amount":1,"amount":2}', what="duplicate key")
    expect(400, "malformed_json", "POST", tp, '', what="empty body")
    expect(400, "unknown_field", "POST", "/v1/accounts", {"currency": "EUR", "balance": 100},
           what="balance in an account creation")
    s, d, _, _ = jcall(w.ap, "POST", "/v1/accounts", {"currency": "EUR", "balance": 1}, who=me)
    check(d is not None and "balance" in d["error"]["message"], "the unknown field is named")
    base = {"from_account_id": a, "to_account_id": b, "amount": 100, "currency": "EUR"}

    def body(**kw):
        x = dict(base)
        x.update(kw)
        return x

    expect(422, "invalid_amount", "POST", tp, body(amount=-5), what="negative amount")
    expect(422, "invalid_amount", "POST", tp, body(amount=0), what="zero amount")
    expect(422, "out_of_range", "POST", tp, json.dumps(base).replace('"amount": 100',
           '"amount": 9223372036854775808'), what="amount beyond int64")
    expect(400, "invalid_type", "POST", tp, body(amount=1.5), what="fractional amount")
    expect(400, "invalid_type", "POST", tp, body(amount="100"), what="amount as a string")
    expect(422, "missing_field", "POST", tp, {"from_account_id": a, "to_account_id": b,
           "currency": "EUR"}, what="amount missing")
    expect(422, "invalid_currency", "POST", tp, body(currency="XXX"), what="unknown currency")
    expect(422, "invalid_currency", "POST", tp, body(currency="eur"), what="lower-case currency")
    expect(422, "currency_mismatch", "POST", tp, body(currency="USD"), what="currency mismatch")
    expect(422, "currency_mismatch", "POST", tp, body(to_account_id=usd), what="to another currency")
    expect(404, "account_not_found", "POST", tp, body(to_account_id=str(uuid.uuid4())),
           what="unknown destination")
    expect(404, "account_not_found", "POST", tp, body(from_account_id=str(uuid.uuid4())),
           what="unknown source")
    expect(422, "invalid_field", "POST", tp, body(to_account_id="not-a-uuid"), what="malformed id")
    expect(422, "same_account", "POST", tp, body(to_account_id=a), what="transfer to itself")
    expect(404, "account_not_found", "POST", tp, body(from_account_id=theirs),
           what="from another customer's account")
    expect(422, "insufficient_funds", "POST", tp, body(amount=10 ** 12), what="more than the balance")
    expect(404, "account_not_found", "GET", "/v1/accounts/" + theirs, None,
           what="another customer's account")
    expect(404, "account_not_found", "GET", "/v1/accounts/%s/transactions" % theirs, None,
           what="another customer's ledger")
    expect(404, "account_not_found", "POST", "/v1/accounts/%s/withdrawals" % theirs,
           {"amount": 1, "currency": "EUR"}, what="withdraw from another customer's account")
    expect(422, "insufficient_funds", "POST", "/v1/accounts/%s/withdrawals" % a,
           {"amount": 5001, "currency": "EUR"}, what="withdraw more than the balance")
    expect(422, "currency_mismatch", "POST", "/v1/accounts/%s/topups" % a,
           {"amount": 1, "currency": "USD"}, what="top-up in another currency")
    expect(404, "account_not_found", "POST", "/v1/accounts/%s/topups" % uuid.uuid4(),
           {"amount": 1, "currency": "EUR"}, what="top-up of an unknown account")
    expect(403, "forbidden", "POST", "/v1/accounts", {"currency": "EUR", "customer_id": other},
           what="open an account for another customer")
    expect(403, "forbidden", "POST", "/v1/accounts", {"currency": "EUR", "overdraft_limit": 100},
           what="customer sets an overdraft")
    expect(422, "customer_not_found", "POST", "/v1/accounts",
           {"currency": "EUR", "customer_id": str(uuid.uuid4())}, who=w.operator,
           what="account for a customer that does not exist")
    expect(400, "invalid_idempotency_key", "POST", tp, body(), headers={"Idempotency-Key": "a b"},
           what="bad Idempotency-Key")
    expect(403, "forbidden", "POST", tp, body(), who=w.operator, what="operator transfers")
    # Nothing of the above changed any state.
    check(sql_int(url, "SELECT count(*) FROM transactions") == tx_before, "no transaction written")
    check(sql_int(url, "SELECT count(*) FROM accounts") == accounts_before, "no account written")
    check(sql_int(url, "SELECT count(*) FROM claims") == keys_before,
          "no idempotency key kept")
    check(w.balance(cust, a) == 5000 and w.balance(cust, b) == 5000, "balances unchanged")
    check(w.balance(other, theirs) == 5000, "the other customer's balance unchanged")
    # The overdraft limit an operator sets is honoured, and not passed.
    s, d, _, _ = jcall(w.ap, "POST", "/v1/accounts", {"currency": "EUR", "customer_id": cust,
                       "overdraft_limit": 300}, who=w.operator)
    check(s == 201, "operator opens an account with an overdraft")
    od = d["id"]
    s, _, _, _ = jcall(w.ap, "POST", "/v1/accounts/%s/withdrawals" % od, {"amount": 300,
                       "currency": "EUR"}, who=me)
    check(s == 201, "withdraw down to the overdraft limit")
    s, d, _, _ = jcall(w.ap, "POST", "/v1/accounts/%s/withdrawals" % od, {"amount": 1,
                       "currency": "EUR"}, who=me)
    check(s == 422 and error_code(d) == "insufficient_funds", "not a unit beyond it")
    check(w.balance(cust, od) == -300, "balance at -300")
    ledger_invariants(url, "after bad input")


def test_idempotency(w):
    cust, _ = w.new_customer()
    a = w.new_account(cust, funded=10000)
    b = w.new_account(cust)
    me = (cust, "customer")
    url = os.environ["ACCOUNT_DB_URL"]
    body = {"from_account_id": a, "to_account_id": b, "amount": 250, "currency": "EUR"}
    key = {"Idempotency-Key": "transfer-" + uuid.uuid4().hex}
    s1, _, t1, h1 = jcall(w.ap, "POST", "/v1/transfers", body, who=me, headers=key)
    s2, _, t2, h2 = jcall(w.ap, "POST", "/v1/transfers", body, who=me, headers=key)
    check(s1 == 201 and s2 == 201, "first and replay: 201 (%d, %d)" % (s1, s2))
    check(t1 == t2, "replay is byte for byte the first response")
    check("idempotent-replayed" not in h1 and h2.get("idempotent-replayed") == "true",
          "the replay says so")
    check(w.balance(cust, a) == 9750 and w.balance(cust, b) == 250, "moved once")
    s3, d3, _, _ = jcall(w.ap, "POST", "/v1/transfers", dict(body, amount=251), who=me, headers=key)
    check(s3 == 422 and error_code(d3) == "idempotency_key_reused", "other body, same key: 422")
    s4, _, _, _ = jcall(w.ap, "POST", "/v1/accounts/%s/topups" % a, {"amount": 250,
                        "currency": "EUR"}, who=me, headers=key)
    check(s4 == 422, "same key on another endpoint: 422 (%d)" % s4)
    # Keys are per caller: another customer may use the same key string.
    other, _ = w.new_customer()
    oa = w.new_account(other, funded=100)
    ob = w.new_account(other)
    s5, _, _, _ = jcall(w.ap, "POST", "/v1/transfers", {"from_account_id": oa,
                        "to_account_id": ob, "amount": 10, "currency": "EUR"},
                        who=(other, "customer"), headers=key)
    check(s5 == 201, "same key string, another caller: executes (%d)" % s5)
    # A failure is an answer too: stored and replayed.
    fkey = {"Idempotency-Key": "fail-" + uuid.uuid4().hex}
    big = dict(body, amount=10 ** 9)
    f1 = jcall(w.ap, "POST", "/v1/transfers", big, who=me, headers=fkey)
    f2 = jcall(w.ap, "POST", "/v1/transfers", big, who=me, headers=fkey)
    check(f1[0] == 422 and f2[0] == 422 and f1[2] == f2[2], "insufficient funds replayed as stored")

    # Concurrent requests with one key: executed once, all answered alike.
    ckey = {"Idempotency-Key": "race-" + uuid.uuid4().hex}
    cbody = dict(body, amount=7)
    tx_before = sql_int(url, "SELECT count(*) FROM transactions WHERE debit_account_id = '%s'" % a)
    results = []
    barrier = threading.Barrier(16)

    def racer():
        c = http.client.HTTPConnection("127.0.0.1", w.ap, timeout=20)
        barrier.wait()
        results.append(call(w.ap, "POST", "/v1/transfers", cbody, who=me, headers=ckey, conn=c))
        c.close()

    threads = [threading.Thread(target=racer) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    tx_after = sql_int(url, "SELECT count(*) FROM transactions WHERE debit_account_id = '%s'" % a)
    check(len(results) == 16, "all 16 answered")
    check(all(r[0] == 201 for r in results), "all 201: %s" % sorted(set(r[0] for r in results)))
    check(len(set(r[1] for r in results)) == 1, "all the same body")
    check(sum(1 for r in results if "idempotent-replayed" not in r[2]) == 1,
          "exactly one executed, the others replayed")
    check(tx_after - tx_before == 1, "one transaction for one key (%d)" % (tx_after - tx_before))
    check(w.balance(cust, a) == 9750 - 7, "debited once")


def test_profile(w):
    cust, email = w.new_customer()
    me = (cust, "customer")
    s, d, text, _ = jcall(w.pp, "POST", "/v1/customers", {"name": "Dup", "email": email.upper(),
                          "password": "another-pass"})
    check(s == 409 and error_code(d) == "email_taken", "duplicate email (any case): 409 (%d)" % s)
    s, d, text, _ = jcall(w.pp, "GET", "/v1/customers/" + cust, who=me)
    check(s == 200 and d["email"] == email.lower(), "own profile, email normalised")
    check("password" not in text and "argon2" not in text, "no password or hash in the answer")
    other, _ = w.new_customer()
    s, _, _, _ = jcall(w.pp, "GET", "/v1/customers/" + other, who=me)
    check(s == 404, "another customer's profile: 404 (%d)" % s)
    s, d, _, _ = jcall(w.pp, "PATCH", "/v1/customers/" + cust, {"name": "New Name",
                       "phone": "+4930123456"}, who=me)
    check(s == 200 and d["name"] == "New Name" and d["phone"] == "+4930123456", "patch name and phone")
    s, d, _, _ = jcall(w.pp, "PATCH", "/v1/customers/" + cust, {"password_hash": "x"}, who=me)
    check(s == 400 and error_code(d) == "unknown_field", "patch of an unknown field: 400 (%d)" % s)
    s, _, _, _ = jcall(w.pp, "PATCH", "/v1/customers/" + cust, {"status": "blocked"}, who=me)
    check(s == 403, "a customer cannot change its status: 403 (%d)" % s)
    s, _, _, _ = jcall(w.pp, "PATCH", "/v1/customers/" + cust, {}, who=me)
    check(s == 422, "empty patch: 422 (%d)" % s)
    for bad in ({"name": "x", "email": "no-at-sign", "password": "long-enough"},
                {"name": "x", "email": "a@b.cd", "password": "short"},
                {"name": "x", "email": "a@b.cd", "password": "long-enough", "phone": "12345"},
                {"name": "", "email": "a@b.cd", "password": "long-enough"}):
        s, _, _, _ = jcall(w.pp, "POST", "/v1/customers", bad)
        check(s == 422, "invalid sign-up %s: 422 (%d)" % (list(bad), s))
    s, _, _, _ = jcall(w.pp, "POST", "/v1/customers", {"name": "x", "email": "a@b.cd",
                       "password": "long-enough", "roles": ["admin"]})
    check(s == 400, "sign-up with roles: 400 (%d)" % s)
    # Credentials, as the gateway asks.
    gw = ("gateway", "service")
    s, d, _, _ = jcall(w.pp, "POST", "/internal/credentials/verify",
                       {"email": email, "password": "s3cret-pass"}, who=gw)
    check(s == 200 and d["customer_id"] == cust and d["roles"] == ["customer"], "credentials ok")
    s, _, _, _ = jcall(w.pp, "POST", "/internal/credentials/verify",
                       {"email": email, "password": "wrong-pass"}, who=gw)
    check(s == 401, "wrong password: 401 (%d)" % s)
    s, _, _, _ = jcall(w.pp, "POST", "/internal/credentials/verify",
                       {"email": "nobody-%s@example.com" % uuid.uuid4().hex, "password": "x"}, who=gw)
    check(s == 401, "unknown email: 401 (%d)" % s)
    # A blocked customer gets no new account.
    s, _, _, _ = jcall(w.pp, "PATCH", "/v1/customers/" + other, {"status": "blocked"}, who=w.operator)
    check(s == 200, "operator blocks a customer")
    s, d, _, _ = jcall(w.ap, "POST", "/v1/accounts", {"currency": "EUR"}, who=(other, "customer"))
    check(s == 422 and error_code(d) == "customer_inactive", "no account for a blocked customer")
    # Listing by cursor visits every customer once.
    seen, cursor, pages = [], None, 0
    while pages < 10000:
        path = "/v1/customers?limit=7" + ("&cursor=" + cursor if cursor else "")
        s, d, _, _ = jcall(w.pp, "GET", path, who=w.operator)
        if not check(s == 200, "list page: 200 (%d)" % s):
            break
        seen += [c["id"] for c in d["items"]]
        pages += 1
        cursor = d["next_cursor"]
        if cursor is None:
            break
    total = sql_int(os.environ["PROFILE_DB_URL"], "SELECT count(*) FROM customers")
    check(len(seen) == total and len(set(seen)) == total, "cursor pages cover all %d once" % total)
    check(seen == sorted(seen), "in id order")
    s, _, _, _ = jcall(w.pp, "GET", "/v1/customers?limit=0", who=w.operator)
    check(s == 422, "limit 0: 422 (%d)" % s)
    s, _, _, _ = jcall(w.pp, "GET", "/v1/customers", who=me)
    check(s == 403, "customers cannot list customers: 403 (%d)" % s)
    # Events of the changes, in the outbox, without personal data.
    url = os.environ["PROFILE_DB_URL"]
    n = sql_int(url, "SELECT count(*) FROM outbox WHERE topic = 'customer.created' AND key = '%s'" % cust)
    check(n == 1, "customer.created in the outbox")
    payloads = sql(url, "SELECT string_agg(payload::text, ' ') FROM outbox WHERE key = '%s'" % cust)
    check(email.lower() not in payloads and "New Name" not in payloads, "no personal data in events")


def test_profile_required(w, profile):
    """The account service never opens an account it could not confirm."""
    cust, _ = w.new_customer()
    url = os.environ["ACCOUNT_DB_URL"]
    before = sql_int(url, "SELECT count(*) FROM accounts")
    check(profile.stop() == 0, "profile drains and exits 0")
    s, d, _, _ = jcall(w.ap, "POST", "/v1/accounts", {"currency": "EUR"}, who=(cust, "customer"))
    check(s == 503 and error_code(d) == "profile_unavailable", "profile down: 503 (%d)" % s)
    check(sql_int(url, "SELECT count(*) FROM accounts") == before, "no account written")
    profile.start()
    s, _, _, _ = jcall(w.ap, "POST", "/v1/accounts", {"currency": "EUR"}, who=(cust, "customer"))
    check(s == 201, "profile back: 201 (%d)" % s)


def transfer_load(w, cust, accounts, seconds, clients, keyed_retry=False):
    """Random transfers among `accounts` from `clients` threads. Returns the
    statuses and the number of distinct successful keyed transfers."""
    statuses = {}
    lock = threading.Lock()
    stop = time.time() + seconds
    done_keys = []

    def client(seed):
        rnd = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", w.ap, timeout=15)
        while time.time() < stop:
            a, b = rnd.sample(accounts, 2)
            body = {"from_account_id": a, "to_account_id": b, "amount": rnd.randint(1, 3000),
                    "currency": "EUR"}
            headers = {"Idempotency-Key": uuid.uuid4().hex} if (keyed_retry or rnd.random() < .5) else None
            for attempt in range(200):
                try:
                    s, _, _ = call(w.ap, "POST", "/v1/transfers", body, who=(cust, "customer"),
                                   headers=headers, conn=conn)
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", w.ap, timeout=15)
                    s = "conn"
                with lock:
                    statuses[s] = statuses.get(s, 0) + 1
                # With a key, an unknown outcome (503, lost connection) is
                # retried with the same key until it is known.
                if not (keyed_retry and headers and s in (503, "conn")):
                    break
                time.sleep(0.05)
            if keyed_retry and s == 201:
                with lock:
                    done_keys.append(headers["Idempotency-Key"])
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    return statuses, done_keys


def test_concurrent_transfers(w):
    cust, _ = w.new_customer()
    hot = [w.new_account(cust, funded=20000) for _ in range(4)]
    url = os.environ["ACCOUNT_DB_URL"]
    ids = ",".join("'%s'" % a for a in hot)
    tx_before = sql_int(url, "SELECT count(*) FROM transactions WHERE kind = 'transfer'"
                             " AND debit_account_id IN (%s)" % ids)
    statuses, _ = transfer_load(w, cust, hot, seconds=6, clients=32)
    print("concurrent transfers: %s" % statuses, file=sys.stderr)
    ok = statuses.get(201, 0)
    check(ok > 100, "many transfers succeeded (%d)" % ok)
    check(statuses.get(422, 0) > 0, "some were refused for insufficient funds")
    check(set(statuses) <= {201, 422}, "only 201 and 422: %s" % statuses)
    tx_after = sql_int(url, "SELECT count(*) FROM transactions WHERE kind = 'transfer'"
                            " AND debit_account_id IN (%s)" % ids)
    check(tx_after - tx_before == ok, "one transaction per 201 (%d vs %d)" % (tx_after - tx_before, ok))
    total = sql_int(url, "SELECT sum(balance) FROM accounts WHERE id IN (%s)" % ids)
    check(total == 4 * 20000, "the hot accounts still hold 80000 (%d)" % total)
    check(sql_int(url, "SELECT min(balance) FROM accounts WHERE id IN (%s)" % ids) >= 0,
          "no hot account below zero")
    ledger_invariants(url, "after concurrent transfers")


def test_database_killed(w, deploy_pg):
    """SIGKILL PostgreSQL under load, start it again: the services reconnect
    by themselves, unknown outcomes are settled by idempotent retries, and
    the ledger is intact."""
    cust, _ = w.new_customer()
    hot = [w.new_account(cust, funded=50000) for _ in range(4)]
    url = os.environ["ACCOUNT_DB_URL"]
    ids = ",".join("'%s'" % a for a in hot)
    tx_before = sql_int(url, "SELECT count(*) FROM transactions WHERE kind = 'transfer'"
                             " AND debit_account_id IN (%s)" % ids)
    result = {}

    def load():
        result["statuses"], result["keys"] = transfer_load(w, cust, hot, seconds=9, clients=16,
                                                           keyed_retry=True)

    t = threading.Thread(target=load)
    t.start()
    time.sleep(2)
    killed = subprocess.run([deploy_pg, "kill9"], capture_output=True, text=True, timeout=30)
    check(killed.returncode == 0, "deploy/pg kill9: %s" % killed.stderr[-300:])
    # The pool finds the database gone at its next failed statement or
    # connect: give it up to 5 s (a slower build is slower to notice).
    s = None
    for _ in range(50):
        s = jcall(w.ap, "GET", "/readyz")[0]
        if s == 503:
            break
        time.sleep(0.1)
    check(s == 503, "account not ready while the database is down (%s)" % s)
    started = subprocess.run([deploy_pg, "start"], capture_output=True, text=True, timeout=120)
    check(started.returncode == 0, "deploy/pg start: %s" % started.stderr[-300:])
    t.join(180)
    # The pools come back by themselves (back-off up to 2 s).
    ready = False
    for _ in range(100):
        if jcall(w.ap, "GET", "/readyz")[0] == 200 and jcall(w.pp, "GET", "/readyz")[0] == 200:
            ready = True
            break
        time.sleep(0.1)
    check(ready, "both services ready again without a restart")
    statuses = result.get("statuses", {})
    print("transfers across the kill: %s" % statuses, file=sys.stderr)
    check(statuses.get(503, 0) > 0 or statuses.get("conn", 0) > 0,
          "the outage was seen (503): %s" % statuses)
    check(500 not in statuses, "never a 500: %s" % statuses)
    check(set(statuses) <= {201, 422, 503, "conn"}, "only 201/422/503: %s" % statuses)
    keys = result.get("keys", [])
    tx_after = sql_int(url, "SELECT count(*) FROM transactions WHERE kind = 'transfer'"
                            " AND debit_account_id IN (%s)" % ids)
    check(tx_after - tx_before == len(keys),
          "each settled key moved money exactly once (%d transactions, %d keys)" %
          (tx_after - tx_before, len(keys)))
    check(sql_int(url, "SELECT sum(balance) FROM accounts WHERE id IN (%s)" % ids) == 4 * 50000,
          "the hot accounts still hold 200000")
    s, _, _, _ = jcall(w.ap, "POST", "/v1/transfers", {"from_account_id": hot[0],
                       "to_account_id": hot[1], "amount": 1, "currency": "EUR"},
                       who=(cust, "customer"))
    check(s == 201, "a transfer after recovery: 201 (%d)" % s)
    ledger_invariants(url, "after the database was killed")


def scan_logs(services):
    """No sanitizer report, and no personal data in clear, in any log."""
    for svc in services:
        text = svc.log_text()
        bad = re.findall(r"(ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:).*", text)
        check(not bad, "%s log has no sanitizer report: %s" % (svc.name, bad[:3]))
        check("@example.com" not in text.lower(), "%s log has no email in clear" % svc.name)
        check("s3cret-pass" not in text and "Test Person" not in text and "+4915100000000" not in text,
              "%s log has no password, name or phone" % svc.name)
        for line in text.splitlines():
            if line.startswith("{"):
                try:
                    json.loads(line)
                except ValueError:
                    check(False, "%s log line is JSON: %s" % (svc.name, line[:120]))
                    break


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    profile_bin, account_bin, deploy_pg = sys.argv[1:4]
    missing = [v for v in ("PROFILE_DB_URL", "ACCOUNT_DB_URL") if not os.environ.get(v)]
    if missing:
        print("%s not set: start the database with deploy/pg start and "
              "eval \"$(deploy/pg env)\"" % ", ".join(missing), file=sys.stderr)
        print("0 passed, 1 failed")
        return 1
    pport, aport = free_port(), free_port()
    common = {"AUTH_HMAC_KEY": KEY, "LOG_LEVEL": "info", "ARGON2_M_KIB": "1024",
              "ARGON2_T_COST": "1", "DB_CONNS": "4", "LOG_HASH_KEY": "test"}
    profile = service("profile", profile_bin, dict(common, PROFILE_PORT=str(pport)))
    account = service("account", account_bin, dict(common, ACCOUNT_PORT=str(aport),
                                                   PROFILE_ADDR="127.0.0.1:%d" % pport))
    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(1)))
    try:
        profile.start()
        account.start()
        w = World(profile, account)
        for name, fn in (("identity", lambda: test_identity(w)),
                         ("bad_input", lambda: test_bad_input(w)),
                         ("idempotency", lambda: test_idempotency(w)),
                         ("profile", lambda: test_profile(w)),
                         ("profile_required", lambda: test_profile_required(w, profile)),
                         ("concurrent_transfers", lambda: test_concurrent_transfers(w)),
                         ("database_killed", lambda: test_database_killed(w, deploy_pg))):
            before = paytest.failed()
            t0 = time.time()
            try:
                fn()
            except Exception:  # noqa: BLE001 - a crashed test is a failed test
                traceback.print_exc()
                check(False, "%s raised" % name)
            print("%s %s (%.1fs)" % ("ok  " if paytest.failed() == before else "FAIL", name, time.time() - t0),
                  file=sys.stderr)
        check(account.stop() == 0, "account drains and exits 0")
        check(profile.stop() == 0, "profile drains and exits 0")
        scan_logs([profile, account])
    finally:
        stop_all()
        # Whatever happened, leave the database running.
        if subprocess.run([deploy_pg, "status"], capture_output=True).returncode != 0:
            subprocess.run([deploy_pg, "start"], capture_output=True, timeout=120)
    return paytest.finish()


if __name__ == "__main__":
    sys.exit(main())
