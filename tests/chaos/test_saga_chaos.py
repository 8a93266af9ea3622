#!/usr/bin/env python3
"""Payments and transfers while account, payment, busd and PostgreSQL are
killed with SIGKILL and started again.

usage: test_saga_chaos.py BUSD PROFILE ACCOUNT PAYMENT EVENT DEPLOY_PG

Clients pay and transfer between the accounts of CUSTOMERS customers
(each request with its Idempotency-Key, retried with the same key when the
answer is lost or 503) for LOAD_SECONDS, while a chaos thread kills one
process every KILL_EVERY seconds, in turn: account, payment, busd,
PostgreSQL (then starts it again). Afterwards, within DRAIN_SECONDS:

  - every payment is final (completed or failed), none stuck;
  - no hold is left open;
  - the money of these accounts (balance + held) is what it was, and every
    currency still sums to zero over all accounts;
  - every payment's money moved exactly once: a completed payment has one
    settlement and its payee's ledger shows it once, a failed one none;
  - the statements chain, per account and bucket.
"""
import os
import random
import subprocess
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration", "lib"))
import paytest as t  # noqa: E402

CUSTOMERS = 12
FUNDING = 200000
LOAD_SECONDS = 24
KILL_EVERY = 4.0
DRAIN_SECONDS = 120
PAYERS = 4
TRANSFERRERS = 2


class Load:
    def __init__(self, plat, accounts):
        self.plat, self.accounts = plat, accounts  # [(customer, account)]
        self.stop = threading.Event()
        self.payments = set()
        self.counts = {"payments": 0, "transfers": 0, "retries": 0, "refused": 0}
        self.lock = threading.Lock()

    def post(self, port, path, body, who, key, deadline):
        """One request, retried with its key until it is answered (or the
        deadline passes): 2xx/4xx are answers, 503 and lost ones are not."""
        while time.time() < deadline:
            try:
                s, d, _, _ = t.jcall(port, "POST", path, body, who=who,
                                     headers={"Idempotency-Key": key}, timeout=5)
                if s < 500 and s != 409:
                    return s, d
            except OSError:
                pass
            with self.lock:
                self.counts["retries"] += 1
            time.sleep(0.1)
        return None, None

    def payer(self, seed):
        rnd = random.Random(seed)
        while not self.stop.is_set():
            cust, src = rnd.choice(self.accounts)
            _, dst = rnd.choice(self.accounts)
            if dst == src:
                continue
            body = {"from_account_id": src, "to_account_id": dst,
                    "amount": rnd.randint(1, 3000), "currency": "EUR"}
            s, d = self.post(self.plat.port("payment"), "/v1/payments", body, (cust, "customer"),
                             "chaos-p-" + uuid.uuid4().hex, time.time() + 60)
            with self.lock:
                if s == 202:
                    self.payments.add(d["id"])
                    self.counts["payments"] += 1
                else:
                    self.counts["refused"] += 1

    def transferrer(self, seed):
        rnd = random.Random(seed)
        while not self.stop.is_set():
            cust, src = rnd.choice(self.accounts)
            mine = [a for c, a in self.accounts if c == cust and a != src]
            body = {"from_account_id": src, "to_account_id": mine[0],
                    "amount": rnd.randint(1, 2000), "currency": "EUR"}
            s, _ = self.post(self.plat.port("account"), "/v1/transfers", body, (cust, "customer"),
                             "chaos-t-" + uuid.uuid4().hex, time.time() + 60)
            with self.lock:
                self.counts["transfers" if s == 201 else "refused"] += 1


def chaos(plat, deploy_pg, stop, kills):
    victims = ["account", "payment", "busd", "postgres"]
    i = 0
    while not stop.wait(KILL_EVERY):
        who = victims[i % len(victims)]
        i += 1
        try:
            if who == "postgres":
                subprocess.run([deploy_pg, "kill9"], capture_output=True, timeout=30)
                time.sleep(0.5)
                subprocess.run([deploy_pg, "start"], capture_output=True, timeout=120)
            else:
                plat.proc(who).kill9()
                time.sleep(0.3)
                plat.proc(who).start(timeout=90)
            kills.append(who)
        except Exception as e:  # noqa: BLE001 - a failed restart is reported below
            t.check(False, "restart of %s failed: %r" % (who, e))


def main():
    if len(sys.argv) != 7:
        print(__doc__, file=sys.stderr)
        return 2
    busd, profile, account, payment, event, deploy_pg = sys.argv[1:]
    plat = t.Platform({"busd": busd, "profile": profile, "account": account, "payment": payment,
                       "event": event},
                      env_for={"account": {"HOLD_TTL": "60s"},
                               "payment": {"PAYMENT_MAX_AMOUNT": "100000000",
                                           "PAYMENT_DAILY_MAX": "100000000000"}})
    plat.start("busd", "profile", "account", "payment", "event")
    bank = t.Bank(plat.port("profile"), plat.port("account"))
    accounts = bank.funded_pairs(CUSTOMERS, FUNDING)
    ids = ",".join("'%s'" % a for _, a in accounts)
    acct_url, pay_url = t.db_url("account"), t.db_url("payment")
    total_before = t.sql_int(acct_url, "SELECT sum(balance + held) FROM accounts WHERE id IN (%s)"
                             % ids)
    t.check(total_before == CUSTOMERS * 2 * FUNDING, "funded: %d" % total_before)

    load = Load(plat, accounts)
    workers = [threading.Thread(target=load.payer, args=(i,)) for i in range(PAYERS)]
    workers += [threading.Thread(target=load.transferrer, args=(100 + i,))
                for i in range(TRANSFERRERS)]
    kills, stop_chaos = [], threading.Event()
    killer = threading.Thread(target=chaos, args=(plat, deploy_pg, stop_chaos, kills))
    for w in workers:
        w.start()
    killer.start()
    time.sleep(LOAD_SECONDS)
    stop_chaos.set()
    killer.join(180)
    load.stop.set()
    for w in workers:
        w.join(90)
    t.say("load: %s; SIGKILLs: %s" % (load.counts, ", ".join(kills)))
    t.check(len(kills) >= 4, "every victim was killed at least once (%s)" % kills)
    t.check(load.counts["payments"] >= 50, "payments went through the chaos (%d)"
            % load.counts["payments"])

    completed = t.payments_settled(acct_url, pay_url, accounts, load.payments, total_before,
                                   DRAIN_SECONDS)
    mine = "customer_id IN (%s)" % t.sql_list(set(c for c, _ in accounts))
    amounts = dict(t.sql_rows(pay_url, "SELECT id, amount FROM payments WHERE %s AND state ="
                                       " 'completed'" % mine))
    moved = dict(t.sql_rows(acct_url, "SELECT t.payment_id, e.amount FROM ledger_entries e JOIN"
                                      " transactions t ON t.id = e.transaction_id WHERE t.kind ="
                                      " 'payment' AND e.bucket = 'balance' AND e.account_id IN (%s)"
                                      % ids))
    wrong = [p for p in completed if moved.get(p) != amounts.get(p)]
    t.check(not wrong, "each payee received each completed payment's amount once (%d wrong)"
            % len(wrong))
    _, page, _ = t.call(plat.port("busd"), "GET", "/metrics")
    dead = sum(float(line.split()[-1]) for line in page.splitlines()
               if line.startswith("busd_partition_end_offset{") and '.dead"' in line)
    t.check(dead == 0, "no event was dead-lettered: the consumers wait out a database that is"
            " down instead of giving up on good events (%s)" % dead)
    t.ledger_invariants(acct_url, "after the chaos")
    for name in ("event", "payment", "account", "profile"):
        t.check(plat.proc(name).stop() in (0, None), "%s stops" % name)
    return t.finish()


if __name__ == "__main__":
    sys.exit(main())
