#!/usr/bin/env python3
"""The flow `deploy/dev up` shows, replayed against a containerized platform.

    smoke_flow.py --gateway https://localhost:PORT --cacert CRT --pg-container NAME

Through the gateway over TLS: a customer signs up and logs in, opens two
accounts, tops one up, transfers to the other, pays with POST /v1/payments
and long-polls the payment until the saga over busd has completed it; the
balances and the ledger are checked. Then, in the event service's database
(psql inside the PostgreSQL container), the payment's five events are in the
audit log with one correlation id. Prints one line per step; exits 1 at the
first step that does not hold.
"""

import argparse
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

SAGA_TOPICS = ["payment.requested", "account.funds_reserved", "payment.authorized",
               "account.payment_settled", "payment.completed"]


class Fail(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)


class Client:
    def __init__(self, base, cacert):
        self.base = base.rstrip("/")
        self.ctx = ssl.create_default_context(cafile=cacert)
        self.token = None

    def call(self, method, path, body=None, headers=None, timeout=15):
        h = {"Content-Type": "application/json"}
        if self.token:
            h["Authorization"] = "Bearer " + self.token
        h.update(headers or {})
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode(errors="replace")


def step(msg):
    print("  " + msg, flush=True)


def audit_rows(container, payment_id):
    sql = ("SELECT topic, correlation_id FROM audit_log WHERE key = '%s' ORDER BY seq"
           % payment_id)
    out = subprocess.run(["podman", "exec", container, "psql", "-X", "-h", "/tmp", "-U",
                          "postgres", "-d", "event", "-AtF", "|", "-c", sql],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise Fail("psql in %s failed: %s" % (container, out.stderr.strip()))
    return [tuple(line.split("|", 1)) for line in out.stdout.splitlines() if line]


def flow(a):
    c = Client(a.gateway, a.cacert)
    email = "ada.%s@example.com" % uuid.uuid4().hex[:12]
    pw = "correct horse battery"
    st, cust = c.call("POST", "/v1/customers", {"name": "Ada Smoke", "email": email, "password": pw})
    check(st == 201 and "id" in cust, "sign-up: %s %s" % (st, cust))
    step("POST /v1/customers -> 201, customer %s" % cust["id"])
    st, tok = c.call("POST", "/v1/auth/token", {"email": email, "password": pw})
    check(st == 200 and tok.get("access_token"), "login: %s %s" % (st, tok))
    c.token = tok["access_token"]
    step("POST /v1/auth/token -> 200, a JWT")

    ids = []
    for _ in range(2):
        st, acc = c.call("POST", "/v1/accounts", {"currency": "EUR"})
        check(st == 201 and acc.get("status") == "open", "open account: %s %s" % (st, acc))
        ids.append(acc["id"])
    a1, a2 = ids
    step("POST /v1/accounts x2 -> %s, %s" % (a1, a2))

    st, r = c.call("POST", "/v1/accounts/%s/topups" % a1, {"amount": 10000, "currency": "EUR"},
                   {"Idempotency-Key": "smoke-top-" + a1})
    check(st in (200, 201), "top-up: %s %s" % (st, r))
    step("top-up 100.00 EUR -> %s" % st)
    st, r = c.call("POST", "/v1/transfers", {"from_account_id": a1, "to_account_id": a2,
                                             "amount": 2550, "currency": "EUR"},
                   {"Idempotency-Key": "smoke-tr-" + a1})
    check(st in (200, 201), "transfer: %s %s" % (st, r))
    step("transfer 25.50 EUR -> %s" % st)

    st, pay = c.call("POST", "/v1/payments", {"from_account_id": a1, "to_account_id": a2,
                                              "amount": 1200, "currency": "EUR",
                                              "reference": "smoke"},
                     {"Idempotency-Key": "smoke-pay-" + a1})
    check(st == 202 and pay.get("id"), "payment: %s %s" % (st, pay))
    pid = pay["id"]
    # Long-polls shorter than the gateway's upstream timeout (5 s), repeated.
    deadline = time.monotonic() + a.saga_wait
    while True:
        st, p = c.call("GET", "/v1/payments/%s?wait=3000" % pid, timeout=20)
        check(st == 200, "GET payment: %s %s" % (st, p))
        if p["state"] in ("completed", "failed") or time.monotonic() > deadline:
            break
    check(p["state"] == "completed", "payment %s ended %s: %s" % (pid, p["state"], p))
    step("payment %s: %s, via %s" % (pid, p["state"], [h["to"] for h in p.get("history", [])]))

    for acc_id, want in ((a1, 10000 - 2550 - 1200), (a2, 2550 + 1200)):
        st, acc = c.call("GET", "/v1/accounts/%s" % acc_id)
        check(st == 200 and acc["balance"] == want and acc["held"] == 0,
              "balance of %s: want %d, got %s %s" % (acc_id, want, st, acc))
    st, lines = c.call("GET", "/v1/accounts/%s/transactions" % a1)
    check(st == 200, "ledger: %s %s" % (st, lines))
    items = lines.get("items") or []
    spendable = [x for x in items if x.get("bucket") == "balance"]
    check(spendable and spendable[-1]["balance_after"] == 6250
          and sum(x["amount"] for x in spendable) == 6250,
          "the balance lines of %s do not end at 6250: %s" % (a1, lines))
    step("balances 62.50 and 37.50 EUR; ledger of %s: %d lines" % (a1, len(items)))

    st, r = c.call("GET", "/v1/accounts/%s" % a1, headers={"Authorization": ""})
    check(st == 401, "no token should be 401, got %s" % st)
    step("GET without a token -> 401")

    deadline = time.monotonic() + a.audit_wait
    while True:
        rows = audit_rows(a.pg_container, pid)
        if [t for t, _ in rows] == SAGA_TOPICS or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    check([t for t, _ in rows] == SAGA_TOPICS, "audit log of %s: %s" % (pid, rows))
    corr = {cid for _, cid in rows}
    check(len(corr) == 1, "more than one correlation id: %s" % corr)
    step("audit log: %s (correlation %s)" % (", ".join(t for t, _ in rows), corr.pop()))
    return pid


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--cacert", required=True)
    ap.add_argument("--pg-container", required=True)
    ap.add_argument("--saga-wait", type=float, default=30)
    ap.add_argument("--audit-wait", type=float, default=20)
    a = ap.parse_args()
    if not os.path.exists(a.cacert):
        print("smoke: no certificate at %s" % a.cacert, file=sys.stderr)
        return 1
    try:
        flow(a)
    except Fail as e:
        print("smoke: FAILED: %s" % e, file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError) as e:
        print("smoke: FAILED: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 1
    print("smoke: the flow passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
