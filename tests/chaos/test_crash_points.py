#!/usr/bin/env python3
"""The payment saga crashed at every step boundary (FAULT_POINT).

usage: test_crash_points.py BUSD BUSCTL PROFILE ACCOUNT PAYMENT EVENT

A process runs with FAULT_POINT=<point>: it exits at once (status 86, no
drain) the first time it reaches that point. The test starts it again
without the fault and checks that the payment reaches its correct final
state exactly once: the history has each transition once, the money moved
once (balances, held, ledger lines), the hold is resolved.

  payment  relay_before_publish  payment committed, payment.requested not
                                 yet published (the POST's answer may be
                                 lost too: the client retries its key)
  account  consume_before_ack    the reservation committed, not ACKed
  account  relay_before_mark     account.funds_reserved published and
                                 durable, not marked sent
  payment  consume_before_ack    the authorization committed, not ACKed
  payment  relay_before_mark     payment.authorized durable, not marked
  account  sweeper_after_commit  an expired hold released, nothing after
"""
import os
import signal
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration", "lib"))
import paytest as t  # noqa: E402

DEPLOY_PG = os.path.join(HERE, "..", "..", "deploy", "pg")


def post_retrying(plat, cust, body, key, deadline_s=60):
    """POST /v1/payments until an answer comes back, with one key."""
    end = time.time() + deadline_s
    while time.time() < end:
        try:
            s, d, text, _ = t.jcall(plat.port("payment"), "POST", "/v1/payments", body,
                                    who=(cust, "customer"), headers={"Idempotency-Key": key},
                                    timeout=5)
            if s in (202, 422):
                return s, d
        except OSError:
            pass
        time.sleep(0.2)
    return None, None


def wait_exit(proc, seconds=20):
    end = time.time() + seconds
    while time.time() < end and proc.alive():
        time.sleep(0.05)
    return None if proc.alive() else proc.proc.returncode


def run_point(plat, bank, name, point, busctl):
    t.say("== %s crashes at %s" % (name, point))
    cust = bank.new_customer()
    src = bank.new_account(cust, funded=10000)
    dst = bank.new_account(cust)
    # The accounts' own events out first, so that the fault hits the saga.
    for svc in ("profile", "account", "payment"):
        t.wait_for(lambda: t.sql_int(t.db_url(svc), "SELECT count(*) FROM outbox WHERE"
                                                    " published_at IS NULL") == 0, 15)
    proc = plat.proc(name)
    proc.stop()
    proc.env["FAULT_POINT"] = point
    proc.start()
    pid = None
    if point == "sweeper_after_commit":
        pid = expired_hold(plat, cust, src, dst, busctl)
    else:
        body = {"from_account_id": src, "to_account_id": dst, "amount": 1000, "currency": "EUR"}
        key = "crash-" + uuid.uuid4().hex
        # The request itself may be lost with the process: its key is retried.
        import threading
        got = {}
        th = threading.Thread(target=lambda: got.update(r=post_retrying(plat, cust, body, key)))
        th.start()
    code = wait_exit(proc)
    t.check(code == 86, "%s exited at %s (%s)" % (name, point, code))
    proc.env.pop("FAULT_POINT", None)
    proc.start()
    if pid is None:
        th.join(70)
        s, d = got.get("r", (None, None))
        t.check(s == 202, "the payment was accepted (with its key, retried: %s)" % s)
        pid = d["id"] if d else None
    if pid is None:
        return
    if point == "sweeper_after_commit":
        plat.proc("payment").proc.send_signal(signal.SIGCONT)
    s, p, _, _ = t.jcall(plat.port("payment"), "GET", "/v1/payments/%s?wait=20000" % pid,
                         who=(cust, "customer"), timeout=30)
    want = "failed" if point == "sweeper_after_commit" else "completed"
    t.check(s == 200 and p["state"] == want, "%s: the payment is %s (%s)" % (point, want,
                                                                          p and p.get("state")))
    steps = [h["to"] for h in (p or {}).get("history", [])]
    if want == "completed":
        t.check(steps == ["pending", "reserved", "authorized", "completed"],
                "%s: each transition once (%s)" % (point, steps))
        exp_src, exp_dst = 9000 if point != "sweeper_after_commit" else 10000, 1000
    else:
        t.check(steps[-1:] == ["failed"] and p.get("reason") == "hold_expired" and
                steps.count("failed") == 1, "%s: failed once, hold_expired (%s)" % (point, steps))
        exp_src, exp_dst = 10000, 0
    a, b = bank.account(cust, src), bank.account(cust, dst)
    t.check(a["balance"] == exp_src and a["held"] == 0 and b["balance"] == exp_dst,
            "%s: money moved once (payer %s held %s, payee %s)" % (point, a["balance"], a["held"],
                                                                b["balance"]))
    url = t.db_url("account")
    kinds = t.sql(url, "SELECT string_agg(t.kind || ':' || e.bucket, ',' ORDER BY e.seq) FROM"
                       " ledger_entries e JOIN transactions t ON t.id = e.transaction_id WHERE"
                       " t.payment_id = '%s' AND e.account_id = '%s'" % (pid, src))
    want_lines = ("hold:balance,hold:held,payment:held" if want == "completed"
                  else "hold:balance,hold:held,release:held,release:balance")
    t.check(kinds == want_lines, "%s: payer's lines %s (%s)" % (point, want_lines, kinds))
    state = t.sql(url, "SELECT state FROM holds WHERE payment_id = '%s'" % pid)
    t.check(state == ("settled" if want == "completed" else "released"),
            "%s: the hold resolved once (%s)" % (point, state))


def expired_hold(plat, cust, src, dst, busctl):
    """A payment whose hold expires while the payment service sleeps (as in
    tests/integration/payments): written by hand, requested with busctl."""
    pid = str(uuid.uuid4())
    subprocess.run([DEPLOY_PG, "psql", "payment", "-qc",
                    "INSERT INTO payments (id, customer_id, from_account_id, to_account_id, amount,"
                    " currency, state, transitions, created_at, updated_at) VALUES ('%s', '%s',"
                    " '%s', '%s', 1000, 'EUR', 'pending', 1, now(), now());"
                    " INSERT INTO payment_history (payment_id, seq, to_state, at)"
                    " VALUES ('%s', 1, 'pending', now())" % (pid, cust, src, dst, pid)],
                   check=True, capture_output=True)
    plat.proc("payment").proc.send_signal(signal.SIGSTOP)
    plat.publish(busctl, "payment.requested", pid,
                 {"payment_id": pid, "customer_id": cust, "from_account_id": src,
                  "to_account_id": dst, "amount": 1000, "currency": "EUR"},
                 event_id=str(uuid.uuid4()))
    return pid


def main():
    if len(sys.argv) != 7:
        print(__doc__, file=sys.stderr)
        return 2
    busd, busctl, profile, account, payment, event = sys.argv[1:]
    plat = t.Platform({"busd": busd, "profile": profile, "account": account, "payment": payment,
                       "event": event},
                      env_for={"account": {"HOLD_TTL": "60s", "HOLD_SWEEP_INTERVAL": "100ms"}})
    plat.start("busd", "profile", "account", "payment", "event")
    bank = t.Bank(plat.port("profile"), plat.port("account"))
    points = [("payment", "relay_before_publish"), ("account", "consume_before_ack"),
              ("account", "relay_before_mark"), ("payment", "consume_before_ack"),
              ("payment", "relay_before_mark")]
    for name, point in points:
        try:
            run_point(plat, bank, name, point, busctl)
        except Exception as e:  # noqa: BLE001 - one point's crash does not end the matrix
            t.check(False, "%s/%s raised %r" % (name, point, e))
    acc = plat.proc("account")
    acc.stop()
    acc.env.update({"HOLD_TTL": "1s"})
    acc.start()
    try:
        run_point(plat, bank, "account", "sweeper_after_commit", busctl)
    except Exception as e:  # noqa: BLE001
        t.check(False, "sweeper_after_commit raised %r" % e)
    finally:
        if plat.proc("payment").alive():
            plat.proc("payment").proc.send_signal(signal.SIGCONT)
    t.ledger_invariants(t.db_url("account"), "after the crash matrix")
    for name in ("event", "payment", "account", "profile"):
        t.check(plat.proc(name).stop() == 0, "%s drains and exits 0" % name)
    return t.finish()


if __name__ == "__main__":
    sys.exit(main())
