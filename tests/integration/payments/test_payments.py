#!/usr/bin/env python3
"""The payment saga with real busd, real PostgreSQL, every service.

usage: test_payments.py BUSD BUSCTL PROFILE ACCOUNT PAYMENT EVENT GATEWAY CERTS_SH

Needs the deploy/pg URLs (eval "$(deploy/pg env)").

Every path, each checked afterwards on the payer's and payee's balance,
held amount and ledger lines, and the payment's final state, reason and
history:
  happy path; insufficient funds; over the per-payment limit and over the
  daily limit (the compensation releases the hold); payee frozen; payee in
  another currency; hold expired before settlement (the settlement
  refuses it); hold expired and released by the sweeper while the payment
  service was stopped.
Then: bad input refused with the right status and nothing changed;
Idempotency-Key rules (replay, other body, concurrent); duplicates and
out-of-order events injected with busctl, absorbed; a consumer that keeps
failing (a constraint set by hand) dead-letters the event, the stuck
payment is reported, an operator fixes the cause and redrives it, the
saga resumes and the redrive is audited; one correlation id followed from
the gateway's access log through every service's log and every event.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import paytest as t  # noqa: E402
import contract  # noqa: E402

MAX_AMOUNT = 50000
DAILY_MAX = 80000
SWEEP_MS = 200


class Saga:
    """The platform and the helpers of these tests."""

    def __init__(self, bins):
        self.bins = bins
        self.plat = t.Platform(
            {k: bins[k] for k in ("busd", "profile", "account", "payment", "event")},
            extra_env={"LOG_LEVEL": "debug"},
            env_for={"busd": {"BUSD_MAX_ATTEMPTS": "3", "BUSD_RETRY_BACKOFF_MS": "200",
                              "BUSD_RETRY_BACKOFF_MAX_MS": "400"},
                     "account": {"HOLD_TTL": "60s", "HOLD_SWEEP_INTERVAL": "%dms" % SWEEP_MS},
                     "payment": {"PAYMENT_MAX_AMOUNT": str(MAX_AMOUNT),
                                 "PAYMENT_DAILY_MAX": str(DAILY_MAX),
                                 "SAGA_STUCK_AFTER": "2s"}})
        self.plat.start("busd", "profile", "account", "payment", "event")
        self.bank = t.Bank(self.plat.port("profile"), self.plat.port("account"))
        self.acct_url = t.db_url("account")
        self.pay_url = t.db_url("payment")
        self.event_url = t.db_url("event")

    def pp(self):
        return self.plat.port("payment")

    def restart_account(self, **env):
        acc = self.plat.proc("account")
        t.check(acc.stop() == 0, "account drains and exits 0 before a restart")
        acc.env.update(env)
        acc.start()

    def pay(self, cust, src, dst, amount, currency="EUR", key=None, rid=None, body_extra=None):
        body = {"from_account_id": src, "to_account_id": dst, "amount": amount,
                "currency": currency}
        body.update(body_extra or {})
        h = {"Idempotency-Key": key or "pay-" + uuid.uuid4().hex}
        if rid:
            h["X-Request-Id"] = rid
        return t.jcall(self.pp(), "POST", "/v1/payments", body, who=(cust, "customer"), headers=h)

    def wait_final(self, cust, pid, wait_ms=15000):
        s, d, text, _ = t.jcall(self.pp(), "GET", "/v1/payments/%s?wait=%d" % (pid, wait_ms),
                                who=(cust, "customer"), timeout=wait_ms / 1000 + 10)
        return d if s == 200 else {"state": "?", "error": text}

    def run(self, cust, src, dst, amount, currency="EUR"):
        s, d, text, _ = self.pay(cust, src, dst, amount, currency)
        if not t.check(s == 202 and d["state"] == "pending", "POST /v1/payments: 202 pending (%d %s)"
                       % (s, text[:200])):
            return None
        return self.wait_final(cust, d["id"])

    def lines(self, account, payment=None):
        """(kind, bucket, amount) of an account's ledger lines [for one payment]."""
        q = ("SELECT t.kind, e.bucket, e.amount FROM ledger_entries e JOIN transactions t ON"
             " t.id = e.transaction_id WHERE e.account_id = '%s'" % account)
        if payment:
            q += " AND t.payment_id = '%s'" % payment
        return [(k, b, int(a)) for k, b, a in t.sql_rows(self.acct_url, q + " ORDER BY e.seq")]

    def hold(self, payment):
        rows = t.sql_rows(self.acct_url, "SELECT state, coalesce(reason, ''), amount FROM holds"
                                         " WHERE payment_id = '%s'" % payment)
        return tuple(rows[0]) if rows else None

    def funded(self, amount=100000, currency="EUR"):
        cust = self.bank.new_customer()
        return cust, self.bank.new_account(cust, currency, funded=amount)


def expect_money(saga, cust, acc, balance, held, what):
    a = saga.bank.account(cust, acc) or {}
    t.check(a.get("balance") == balance and a.get("held") == held,
            "%s: balance %d, held %d (got %s, %s)" % (what, balance, held, a.get("balance"),
                                                      a.get("held")))


def history(p):
    return [h["to"] for h in p.get("history", [])]


# ---------------------------------------------------------------------------
# Every path


def test_happy(saga):
    cust, src = saga.funded(10000)
    payee = saga.bank.new_customer()
    dst = saga.bank.new_account(payee)
    at_commit = "outbox_sent_at_commit_total"
    a_before = t.metric(saga.plat.port("account"), at_commit) or 0
    p_before = t.metric(saga.pp(), at_commit) or 0
    dup_metric = 'inbox_events_total{outcome="duplicate"}'
    e_dup_before = t.metric(saga.plat.port("event"), dup_metric) or 0
    p = saga.run(cust, src, dst, 2500)
    t.check(p and p["state"] == "completed" and p["reason"] is None, "happy: completed (%s)" % p)
    t.check(p and history(p) == ["pending", "reserved", "authorized", "completed"],
            "happy: history pending, reserved, authorized, completed (%s)" % (p and history(p)))
    expect_money(saga, cust, src, 7500, 0, "happy payer")
    expect_money(saga, payee, dst, 2500, 0, "happy payee")
    t.check(saga.lines(src, p["id"]) == [("hold", "balance", -2500), ("hold", "held", 2500),
                                         ("payment", "held", -2500)],
            "happy: payer lines hold (balance -> held), payment (held out): %s"
            % saga.lines(src, p["id"]))
    t.check(saga.lines(dst, p["id"]) == [("payment", "balance", 2500)],
            "happy: payee line payment (balance in)")
    t.check(saga.hold(p["id"]) == ("settled", "", "2500"), "happy: the hold is settled")
    # The events of the POST and of the saga's steps are published when
    # their transaction commits (read back in it), not by a scan, and once.
    # A scan already under way (the relay's tick, or a NOTIFY from the
    # accounts opened just before) may take one of them first, and a relay
    # backing off leaves them to its scan: most, not every one, go this way.
    a_sent = (t.metric(saga.plat.port("account"), at_commit) or 0) - a_before
    p_sent = (t.metric(saga.pp(), at_commit) or 0) - p_before
    t.check(a_sent + p_sent >= 3,
            "happy: most of the saga's 5 events published at their commit (account %s,"
            " payment %s)" % (a_sent, p_sent))
    # Published twice, an event would reach the event service twice.
    t.check(t.wait_for(lambda: audit_event(saga, "payment.completed", p["id"]) is not None, 10),
            "happy: payment.completed audited")
    dup = (t.metric(saga.plat.port("event"), dup_metric) or 0) - e_dup_before
    t.check(dup == 0, "happy: no saga event delivered twice to the event service (%s)" % dup)
    # So are batched movements' (top-ups), the same way.
    before = t.metric(saga.plat.port("account"), at_commit) or 0
    for _ in range(10):
        saga.bank.topup(payee, dst, 1)
    after = t.metric(saga.plat.port("account"), at_commit) or 0
    t.check(7 <= after - before <= 10,
            "happy: most of 10 top-ups' events published at their commit (%s)" % (after - before))


def expect_failed(saga, what, p, reason, steps):
    t.check(p and p["state"] == "failed" and p["reason"] == reason,
            "%s: failed with %s (%s)" % (what, reason, p and (p["state"], p["reason"])))
    t.check(p and history(p) == steps, "%s: history %s (%s)" % (what, steps, p and history(p)))


def test_insufficient(saga):
    cust, src = saga.funded(1000)
    dst = saga.bank.new_account(cust)
    p = saga.run(cust, src, dst, 1500)
    expect_failed(saga, "insufficient funds", p, "insufficient_funds", ["pending", "failed"])
    expect_money(saga, cust, src, 1000, 0, "insufficient payer")
    expect_money(saga, cust, dst, 0, 0, "insufficient payee")
    t.check(saga.lines(src, p["id"]) == [], "insufficient: no ledger line")
    t.check(saga.hold(p["id"]) == ("rejected", "insufficient_funds", "1500"),
            "insufficient: the hold was refused (%s)" % (saga.hold(p["id"]),))


def compensated(saga, what, cust, src, dst, p, amount, reason, steps, payee=None, dst_bal=0):
    expect_failed(saga, what, p, reason, steps)
    expect_money(saga, cust, src, 100000, 0, what + " payer (hold released)")
    if dst is not None:
        expect_money(saga, payee or cust, dst, dst_bal, 0, what + " payee untouched")
    t.check(saga.lines(src, p["id"]) == [("hold", "balance", -amount), ("hold", "held", amount),
                                         ("release", "held", -amount),
                                         ("release", "balance", amount)],
            "%s: payer lines hold then release (%s)" % (what, saga.lines(src, p["id"])))
    if dst is not None:
        t.check(saga.lines(dst, p["id"]) == [], what + ": no line on the payee")


def test_limits(saga):
    cust, src = saga.funded()
    dst = saga.bank.new_account(cust)
    p = saga.run(cust, src, dst, MAX_AMOUNT + 1)
    compensated(saga, "over the per-payment limit", cust, src, dst, p, MAX_AMOUNT + 1,
                "limit_exceeded", ["pending", "reserved", "cancelled", "failed"])
    t.check(saga.hold(p["id"])[:2] == ("released", "cancelled"), "the cancel released the hold")
    # The daily limit: 30000 + 30000 pass, 30000 more would make 90000.
    cust2, src2 = saga.funded()
    dst2 = saga.bank.new_account(cust2)
    done = [saga.run(cust2, src2, dst2, 30000) for _ in range(2)]
    t.check(all(d and d["state"] == "completed" for d in done), "two payments under the daily limit")
    p3 = saga.run(cust2, src2, dst2, 30000)
    expect_failed(saga, "over the daily limit", p3, "limit_exceeded",
                  ["pending", "reserved", "cancelled", "failed"])
    expect_money(saga, cust2, src2, 40000, 0, "daily limit payer")
    expect_money(saga, cust2, dst2, 60000, 0, "daily limit payee")
    day = t.sql(saga.pay_url, "SELECT amount FROM customer_daily WHERE customer_id = '%s'" % cust2)
    t.check(day == "60000", "the day counts what was authorized, not the refused one (%s)" % day)


def test_payee_frozen(saga):
    cust, src = saga.funded()
    payee = saga.bank.new_customer()
    dst = saga.bank.new_account(payee, funded=50)
    s, d, _, _ = t.jcall(saga.plat.port("account"), "PATCH", "/v1/accounts/" + dst,
                         {"status": "frozen"}, who=saga.bank.operator)
    t.check(s == 200 and d["status"] == "frozen", "an operator freezes the payee (%d)" % s)
    p = saga.run(cust, src, dst, 4000)
    compensated(saga, "payee frozen", cust, src, dst, p, 4000, "payee_unavailable",
                ["pending", "reserved", "authorized", "failed"], payee=payee, dst_bal=50)
    t.check(saga.hold(p["id"])[:2] == ("released", "payee_unavailable"),
            "the settlement refused and released the hold")
    s, _, _, _ = t.jcall(saga.plat.port("account"), "PATCH", "/v1/accounts/" + dst,
                         {"status": "closed"}, who=saga.bank.operator)
    t.check(s == 409, "an account with money in it cannot be closed (%d)" % s)


def test_currency_mismatch(saga):
    cust, src = saga.funded()
    dst = saga.bank.new_account(cust, "USD")
    p = saga.run(cust, src, dst, 700)
    compensated(saga, "payee in another currency", cust, src, None, p, 700, "currency_mismatch",
                ["pending", "reserved", "authorized", "failed"])
    expect_money(saga, cust, dst, 0, 0, "the USD payee")


def test_hold_expired_at_settlement(saga):
    # Holds expire at once and the sweeper sleeps: the settlement finds an
    # expired hold and refuses it.
    saga.restart_account(HOLD_TTL="1", HOLD_SWEEP_INTERVAL="10m")
    cust, src = saga.funded()
    dst = saga.bank.new_account(cust)
    p = saga.run(cust, src, dst, 900)
    compensated(saga, "hold expired at settlement", cust, src, dst, p, 900, "hold_expired",
                ["pending", "reserved", "authorized", "failed"])
    t.check(saga.hold(p["id"])[:2] == ("released", "hold_expired"),
            "the settlement refused the expired hold with its own reason")
    saga.restart_account(HOLD_TTL="1500ms", HOLD_SWEEP_INTERVAL="%dms" % SWEEP_MS)


def test_hold_expired_by_sweeper(saga, busctl):
    # The payment service sleeps (SIGSTOP) while its payment's request is
    # delivered to the account service: the hold is taken, expires, and the
    # sweeper releases it; then the payment service wakes up, takes note of
    # the reservation and of its release, in whichever order, and fails
    # the payment. The payment is written as the service would, since it
    # cannot take a POST while it sleeps.
    cust, src = saga.funded()
    dst = saga.bank.new_account(cust)
    pid = str(uuid.uuid4())
    subprocess.run([saga.bins["deploy_pg"], "psql", "payment", "-qc",
                    "INSERT INTO payments (id, customer_id, from_account_id, to_account_id, amount,"
                    " currency, state, transitions, created_at, updated_at) VALUES ('%s', '%s',"
                    " '%s', '%s', 1100, 'EUR', 'pending', 1, now(), now());"
                    " INSERT INTO payment_history (payment_id, seq, to_state, at)"
                    " VALUES ('%s', 1, 'pending', now())" % (pid, cust, src, dst, pid)],
                   check=True, capture_output=True)
    pay = saga.plat.proc("payment")
    pay.proc.send_signal(signal.SIGSTOP)
    try:
        saga.plat.publish(busctl, "payment.requested", pid,
                          {"payment_id": pid, "customer_id": cust, "from_account_id": src,
                           "to_account_id": dst, "amount": 1100, "currency": "EUR"},
                          event_id=str(uuid.uuid4()))
        held = t.wait_for(lambda: (saga.hold(pid) or ("",))[0] == "held", 10)
        t.check(held, "the account service took the hold")
        released = t.wait_for(lambda: (saga.hold(pid) or ("",))[0] == "released", 15)
        t.check(released, "the sweeper released the expired hold while the payment service slept")
    finally:
        pay.proc.send_signal(signal.SIGCONT)
    p = saga.wait_final(cust, pid)
    t.check(p["state"] == "failed" and p["reason"] == "hold_expired",
            "sweeper: the payment failed with hold_expired (%s %s)" % (p["state"], p.get("reason")))
    expect_money(saga, cust, src, 100000, 0, "sweeper payer")
    t.check(saga.hold(pid)[:2] == ("released", "expired"), "released with reason expired")
    t.check(saga.lines(src, pid) == [("hold", "balance", -1100), ("hold", "held", 1100),
                                     ("release", "held", -1100), ("release", "balance", 1100)],
            "sweeper: hold then release lines")
    saga.restart_account(HOLD_TTL="60s", HOLD_SWEEP_INTERVAL="%dms" % SWEEP_MS)


# ---------------------------------------------------------------------------
# Refusals and idempotency


def test_bad_input(saga):
    cust, src = saga.funded(5000)
    dst = saga.bank.new_account(cust)
    other, theirs = saga.funded(5000)
    before_pay = t.sql_int(saga.pay_url, "SELECT count(*) FROM payments")
    before_out = t.sql_int(saga.pay_url, "SELECT count(*) FROM outbox")
    before_claims = t.sql_int(saga.pay_url, "SELECT count(*) FROM claims")
    base = {"from_account_id": src, "to_account_id": dst, "amount": 100, "currency": "EUR"}
    me = (cust, "customer")

    def expect(status, code, body, headers=None, who=me, what=""):
        h = {"Idempotency-Key": "bad-" + uuid.uuid4().hex}
        h.update(headers or {})
        s, d, text, _ = t.jcall(saga.pp(), "POST", "/v1/payments", body, who=who, headers=h)
        t.check(s == status and t.error_code(d) == code,
                "%s: %d %s (%d %s)" % (what, status, code, s, text[:150]))

    def b(**kw):
        x = dict(base)
        x.update(kw)
        return x

    expect(422, "invalid_amount", b(amount=-5), what="negative amount")
    expect(422, "invalid_amount", b(amount=0), what="zero amount")
    expect(422, "out_of_range", json.dumps(base).replace('"amount": 100', '"amount": 99999999999999999999'),
           what="overflowing amount")
    expect(400, "invalid_type", b(amount=10.5), what="fractional amount")
    expect(422, "invalid_currency", b(currency="XXX"), what="unknown currency")
    expect(422, "currency_mismatch", b(currency="USD"), what="currency not the account's")
    expect(422, "same_account", b(to_account_id=src), what="the same account on both sides")
    expect(422, "same_account", b(to_account_id=src.upper()), what="the same account, in capitals")
    expect(404, "account_not_found", b(from_account_id=theirs), what="another customer's account")
    expect(404, "account_not_found", b(from_account_id=str(uuid.uuid4())), what="no such account")
    expect(400, "unknown_field", b(note="hi"), what="unknown field")
    expect(422, "missing_field", {"from_account_id": src, "to_account_id": dst, "amount": 1},
           what="currency missing")
    expect(400, "malformed_json", "{\"from_account_id\":", what="malformed JSON")
    expect(422, "invalid_field", b(reference="x" * 141), what="reference too long")
    s, d, _, _ = t.jcall(saga.pp(), "POST", "/v1/payments", base, who=me)
    t.check(s == 400 and t.error_code(d) == "idempotency_key_required",
            "no Idempotency-Key: 400 (%d)" % s)
    s, _, _, _ = t.jcall(saga.pp(), "POST", "/v1/payments", base, who=saga.bank.operator,
                         headers={"Idempotency-Key": "op"})
    t.check(s == 403, "an operator cannot pay from a customer's account (%d)" % s)
    s, _, _, _ = t.jcall(saga.pp(), "GET", "/v1/payments/%s?wait=40000" % uuid.uuid4(), who=me)
    t.check(s == 422, "wait above 30 s: 422 (%d)" % s)
    t.check(t.sql_int(saga.pay_url, "SELECT count(*) FROM payments") == before_pay,
            "refused payments left no payment")
    t.check(t.sql_int(saga.pay_url, "SELECT count(*) FROM outbox") == before_out,
            "refused payments left no event")
    t.wait_for(lambda: t.sql_int(saga.pay_url, "SELECT count(*) FROM claims") == before_claims, 5)
    t.check(t.sql_int(saga.pay_url, "SELECT count(*) FROM claims") == before_claims,
            "refused payments keep no Idempotency-Key (the same key may be used again)")
    expect_money(saga, cust, src, 5000, 0, "the payer after the refusals")


def test_idempotency(saga):
    cust, src = saga.funded(10000)
    dst = saga.bank.new_account(cust)
    key = "idem-" + uuid.uuid4().hex
    s1, d1, t1, h1 = saga.pay(cust, src, dst, 300, key=key)
    s2, d2, t2, h2 = saga.pay(cust, src, dst, 300, key=key)
    t.check(s1 == 202 and s2 == 202 and t1 == t2, "same key, same body: the first answer again")
    t.check(h2.get("idempotent-replayed") == "true", "the replay says so")
    s3, d3, _, _ = saga.pay(cust, src, dst, 301, key=key)
    t.check(s3 == 422 and t.error_code(d3) == "idempotency_key_reused",
            "same key, another body: 422 (%d)" % s3)
    saga.wait_final(cust, d1["id"])
    # Concurrent requests with one key: one payment; the others replay or
    # are told the first is still under way (409).
    key2 = "idem-c-" + uuid.uuid4().hex
    out = []
    threads = [threading.Thread(target=lambda: out.append(saga.pay(cust, src, dst, 200, key=key2)))
               for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    statuses = sorted(o[0] for o in out)
    ids = set(o[1]["id"] for o in out if o[0] == 202)
    t.check(set(statuses) <= {202, 409} and 202 in statuses and len(ids) == 1,
            "concurrent same key: one payment, answers 202 or 409 (%s)" % statuses)
    n = t.sql_int(saga.pay_url, "SELECT count(*) FROM payments WHERE customer_id = '%s'" % cust)
    t.check(n == 2, "two keys, two payments (%d)" % n)
    pid = ids.pop() if ids else None
    if pid:
        p = saga.wait_final(cust, pid)
        t.check(p["state"] == "completed", "the concurrent one completed once")
    expect_money(saga, cust, src, 10000 - 500, 0, "the payer paid each payment once")


# ---------------------------------------------------------------------------
# Events on purpose: duplicates and out of order


def audit_event(saga, topic, key):
    rows = t.sql_rows(saga.event_url, "SELECT event_id, payload::text, headers::text FROM audit_log"
                                      " WHERE topic = '%s' AND key = '%s'" % (topic, key), sep="\t")
    return rows[0] if rows else None


def test_duplicates_out_of_order(saga, busctl):
    cust, src = saga.funded(10000)
    dst = saga.bank.new_account(cust)
    p = saga.run(cust, src, dst, 1000)
    pid = p["id"]
    t.wait_for(lambda: audit_event(saga, "payment.authorized", pid) is not None, 10)
    lines_before = (saga.lines(src), saga.lines(dst))
    dup_before = t.metric(saga.plat.port("account"), 'inbox_events_total{outcome="duplicate"}') or 0
    pdup_before = t.metric(saga.pp(), 'inbox_events_total{outcome="duplicate"}') or 0
    for topic in ("payment.requested", "payment.authorized", "account.payment_settled",
                  "account.funds_reserved"):
        ev = audit_event(saga, topic, pid)
        if not t.check(ev is not None, "%s is in the audit log" % topic):
            continue
        eid, payload, headers = ev
        saga.plat.publish(busctl, topic, pid, json.loads(payload), event_id=eid,
                          headers=json.loads(headers))
    t.wait_for(lambda: (t.metric(saga.plat.port("account"), 'inbox_events_total{outcome="duplicate"}')
                        or 0) >= dup_before + 2 and
               (t.metric(saga.pp(), 'inbox_events_total{outcome="duplicate"}') or 0) >= pdup_before + 2,
               15)
    t.check((saga.lines(src), saga.lines(dst)) == lines_before,
            "every step delivered again changed no ledger line")
    expect_money(saga, cust, src, 9000, 0, "payer after the duplicates")
    expect_money(saga, cust, dst, 1000, 0, "payee after the duplicates")
    t.check(saga.wait_final(cust, pid)["state"] == "completed", "the payment is still completed")

    # A release that overtakes the reservation it undoes.
    ghost = str(uuid.uuid4())
    fields = {"payment_id": ghost, "from_account_id": src, "to_account_id": dst, "amount": 500,
              "currency": "EUR", "customer_id": cust}
    saga.plat.publish(busctl, "payment.cancelled", ghost, fields, event_id=str(uuid.uuid4()))
    t.wait_for(lambda: saga.hold(ghost) is not None, 10)
    absorbed = ('svc_events_total', 'type="payment.requested",outcome="absorbed"')
    before = t.metric_label(saga.plat.port("account"), *absorbed) or 0
    saga.plat.publish(busctl, "payment.requested", ghost, fields, event_id=str(uuid.uuid4()))
    t.wait_for(lambda: (t.metric_label(saga.plat.port("account"), *absorbed) or 0) > before, 10)
    t.check(saga.hold(ghost) == ("released", "cancelled_before_reserve", "0"),
            "the early release left a tombstone; the late reservation was absorbed (%s)"
            % (saga.hold(ghost),))
    t.check(saga.lines(src, ghost) == [], "no money moved for it")
    expect_money(saga, cust, src, 9000, 0, "payer after the out-of-order pair")


# ---------------------------------------------------------------------------
# Dead letters, stuck payments, redrive


def test_dead_letter_redrive(saga):
    cust, src = saga.funded(10000)
    dst = saga.bank.new_account(cust)
    # A fault the account service cannot get past: amounts of 777 break a
    # constraint an operator "forgot" on the holds table.
    subprocess.run([saga.bins["deploy_pg"], "psql", "account", "-qc",
                    "ALTER TABLE holds ADD CONSTRAINT test_no_777 CHECK (amount <> 777) NOT VALID"],
                   check=True, capture_output=True)
    try:
        s, d, _, _ = saga.pay(cust, src, dst, 777)
        pid = d["id"]
        op = ("op-7", "operator")
        ep = saga.plat.port("event")

        def dead_row():
            s, d, _, _ = t.jcall(ep, "GET", "/v1/dead-letters?topic=payment.requested&state=dead",
                                 who=op)
            rows = [x for x in (d or {}).get("items", []) if x["key"] == pid]
            return rows[0] if rows else None

        t.check(t.wait_for(lambda: dead_row() is not None, 20),
                "the event the account kept failing on is a dead letter")
        row = dead_row() or {}
        t.check(row.get("consumer_group") == "account" and row.get("attempts") == 3 and
                "sqlstate 23514" in row.get("last_error", ""),
                "it says who gave up, after how many attempts, and why (%s)"
                % {k: row.get(k) for k in ("consumer_group", "attempts", "last_error")})
        t.check(t.wait_for(lambda: (t.metric_label(ep, "dead_letters", 'topic="payment.requested"')
                                    or 0) >= 1, 10), "dead_letters{topic} counts it")
        t.check(t.wait_for(lambda: (t.metric(saga.pp(), "payment_stuck") or 0) >= 1, 15),
                "the payment is reported stuck")
        t.check(t.wait_for(lambda: any(r.get("msg") == "payment stuck: not final" and
                                       r.get("payment") == pid and r.get("age_s") is not None
                                       for r in saga.plat.proc("payment").log_records()), 15),
                "and logged with its state and age")
        s, _, _, _ = t.jcall(ep, "POST", "/v1/dead-letters/%s/redrive" % row.get("id"),
                             who=(cust, "customer"))
        t.check(s == 403, "a customer may not redrive (%d)" % s)
    finally:
        subprocess.run([saga.bins["deploy_pg"], "psql", "account", "-qc",
                        "ALTER TABLE holds DROP CONSTRAINT IF EXISTS test_no_777"],
                       check=True, capture_output=True)
    s, d, _, _ = t.jcall(ep, "POST", "/v1/dead-letters/%s/redrive" % row.get("id"), who=op)
    t.check(s == 200 and d["state"] == "redriven" and d["redriven_by"] == "op-7",
            "the operator redrives it (%d)" % s)
    s, _, _, _ = t.jcall(ep, "POST", "/v1/dead-letters/%s/redrive" % row.get("id"), who=op)
    t.check(s == 409, "a second redrive of the same one: 409 (%d)" % s)
    p = saga.wait_final(cust, pid)
    t.check(p["state"] == "completed", "the saga resumed and completed (%s)" % p["state"])
    expect_money(saga, cust, src, 10000 - 777, 0, "redriven payer")
    expect_money(saga, cust, dst, 777, 0, "redriven payee")
    t.check(t.wait_for(lambda: t.sql(saga.event_url, "SELECT count(*) FROM audit_log WHERE topic ="
                                                     " 'event.dead_letter_redriven' AND key = '%s'"
                                                     % d["event_id"]) == "1", 10),
            "the redrive is itself an audited event")
    s, d2, _, _ = t.jcall(ep, "POST", "/v1/dead-letters/redrive?topic=payment.nope", who=op)
    t.check(s == 422, "redrive of an unknown topic: 422 (%d)" % s)
    # Redrive-all takes every dead letter there is (other tests may have
    # left some: events made up on purpose), a hundred at a time.
    dead = t.sql_int(saga.event_url, "SELECT count(*) FROM dead_letters WHERE state = 'dead'")
    s, d2, _, _ = t.jcall(ep, "POST", "/v1/dead-letters/redrive", who=op)
    t.check(s == 200 and d2["redriven"] == min(dead, 100) and d2["more"] == (dead >= 100),
            "redrive-all redrove the %d dead letters there were (%s)" % (dead, d2))


# ---------------------------------------------------------------------------
# One correlation id through the gateway, the services, the events


def test_correlation(saga, certs_sh):
    gw_port, gw_admin = t.free_port(), t.free_port()
    certs = os.path.join(t.WORK_DIR, "certs")
    subprocess.run(["bash", certs_sh, certs], check=True, capture_output=True, timeout=60)
    ports = saga.plat.ports
    gw = t.Proc("gateway", [saga.bins["gateway"]], {
        "GW_HOST": "127.0.0.1", "GW_PORT": str(gw_port), "GW_ADMIN_HOST": "127.0.0.1",
        "GW_ADMIN_PORT": str(gw_admin), "GW_THREADS": "1",
        "GW_TLS_CERT": os.path.join(certs, "tls-ecdsa.crt"),
        "GW_TLS_KEY": os.path.join(certs, "tls-ecdsa.key"),
        "GW_JWT_KEYS_DIR": os.path.join(certs, "jwt"), "AUTH_HMAC_KEY": t.KEY,
        "LOG_LEVEL": "info", "GW_ACCESS_LOG": "on",
        "PROFILE_URL": "http://127.0.0.1:%d" % ports["profile"],
        "ACCOUNT_URL": "http://127.0.0.1:%d" % ports["account"],
        "PAYMENT_URL": "http://127.0.0.1:%d" % ports["payment"],
        "EVENT_URL": "http://127.0.0.1:%d" % ports["event"]}, gw_admin)
    gw.start()
    import http.client
    import ssl
    ctx = ssl.create_default_context(cafile=os.path.join(certs, "tls-ecdsa.crt"))
    api = contract.Contract()  # every exchange below is checked against the document

    def https(method, path, body=None, token=None, rid=None, key=None):
        c = http.client.HTTPSConnection("localhost", gw_port, timeout=20, context=ctx)
        h = {"Content-Type": "application/json"}
        if token:
            h["Authorization"] = "Bearer " + token
        if rid:
            h["X-Request-Id"] = rid
        if key:
            h["Idempotency-Key"] = key
        data = json.dumps(body) if body is not None else None
        try:
            c.request(method, path, body=data, headers=h)
            r = c.getresponse()
            raw = r.read()
            api.record(method, path, r.status, h, data, dict(r.getheaders()), raw)
            return r.status, json.loads(raw or b"null")
        finally:
            c.close()

    email = "corr-%s@example.com" % uuid.uuid4().hex[:8]
    s, cust = https("POST", "/v1/customers", {"name": "Corr", "email": email, "password": "pw-pw-pw-pw"})
    s, tok = https("POST", "/v1/auth/token", {"email": email, "password": "pw-pw-pw-pw"})
    token = tok["access_token"]
    s, a = https("POST", "/v1/accounts", {"currency": "EUR"}, token)
    s, b = https("POST", "/v1/accounts", {"currency": "EUR"}, token)
    https("POST", "/v1/accounts/%s/topups" % a["id"], {"amount": 5000, "currency": "EUR"}, token,
          key="t-" + uuid.uuid4().hex)
    rid = "corr-pay-" + uuid.uuid4().hex[:10]
    s, p = https("POST", "/v1/payments", {"from_account_id": a["id"], "to_account_id": b["id"],
                                          "amount": 1234, "currency": "EUR"}, token, rid=rid,
                 key="p-" + uuid.uuid4().hex)
    t.check(s == 202, "a payment through the gateway: 202 (%d)" % s)
    s, final = https("GET", "/v1/payments/%s?wait=15000" % p["id"], token=token)
    t.check(s == 200 and final["state"] == "completed", "and it completes (%s)" % final.get("state"))
    t.check(t.wait_for(lambda: t.sql(saga.event_url, "SELECT count(*) FROM audit_log WHERE"
                                                     " correlation_id = '%s'" % rid) == "5", 10),
            "its five events carry the request's id as correlation id")
    # The audit log stores them in the order they arrived, topic by topic;
    # the saga's order is the order of causes.
    rows = t.sql(saga.event_url, "SELECT topic, event_id, coalesce(headers->>'causation-id', '')"
                                 " FROM audit_log WHERE correlation_id = '%s'" % rid).split("\n")
    caused_by = {}
    for r in rows:
        topic, eid, cause = r.split("|")
        caused_by[cause] = (topic, eid)
    order, cause = [], ""
    while cause in caused_by and len(order) < len(rows):
        topic, cause = caused_by[cause]
        order.append(topic)
    topics = ",".join(order)
    t.check(topics == "payment.requested,account.funds_reserved,payment.authorized,"
                      "account.payment_settled,payment.completed",
            "in the saga's order, each caused by the one before (%s)" % topics)
    causes = t.sql(saga.event_url, "SELECT count(*) FROM audit_log a JOIN audit_log c ON"
                                   " c.event_id::text = a.headers->>'causation-id' WHERE"
                                   " a.correlation_id = '%s'" % rid)
    t.check(causes == "4", "each step names the event that caused it (%s of 4)" % causes)
    for name in ("gateway", "payment", "account", "event"):
        proc = gw if name == "gateway" else saga.plat.proc(name)
        t.check(any(r.get("rid") == rid for r in proc.log_records()),
                "the %s log has lines with the correlation id" % name)
    t.check(api.checked > 0 and not api.problems,
            "every exchange through the gateway keeps the contract: %s (%s)"
            % (api.summary(), "; ".join(api.problems[:10])))
    gw.stop()


def main():
    names = ["busd", "busctl", "profile", "account", "payment", "event", "gateway", "certs_sh"]
    if len(sys.argv) != len(names) + 1:
        print(__doc__, file=sys.stderr)
        return 2
    bins = dict(zip(names, sys.argv[1:]))
    bins["deploy_pg"] = os.path.join(HERE, "..", "..", "..", "deploy", "pg")
    saga = Saga(bins)
    tests = [("happy path", lambda: test_happy(saga)),
             ("insufficient funds", lambda: test_insufficient(saga)),
             ("limits", lambda: test_limits(saga)),
             ("payee frozen", lambda: test_payee_frozen(saga)),
             ("currency mismatch", lambda: test_currency_mismatch(saga)),
             ("hold expired at settlement", lambda: test_hold_expired_at_settlement(saga)),
             ("hold expired by the sweeper",
              lambda: test_hold_expired_by_sweeper(saga, bins["busctl"])),
             ("bad input", lambda: test_bad_input(saga)),
             ("idempotency", lambda: test_idempotency(saga)),
             ("duplicates and out of order", lambda: test_duplicates_out_of_order(saga, bins["busctl"])),
             ("dead letter, stuck, redrive", lambda: test_dead_letter_redrive(saga)),
             ("correlation", lambda: test_correlation(saga, bins["certs_sh"]))]
    t.run_cases(tests)
    t.ledger_invariants(saga.acct_url, "after the saga tests")
    open_holds = t.sql_int(saga.acct_url, "SELECT count(*) FROM holds WHERE state IN ('new', 'held')")
    t.check(open_holds == 0, "no hold left open (%d)" % open_holds)
    for name in ("event", "payment", "account", "profile"):
        t.check(saga.plat.proc(name).stop() == 0, "%s drains and exits 0" % name)
    return t.finish()


if __name__ == "__main__":
    sys.exit(main())
