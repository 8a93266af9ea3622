#!/usr/bin/env python3
"""The PostgreSQL primary dies; Patroni promotes a replica; the services
carry on by themselves, and nothing acknowledged is lost or doubled.

usage: test_failover.py DEPLOY_PATRONI BUSD PROFILE ACCOUNT PAYMENT

deploy/patroni runs etcd and three Patroni members (synchronous_mode) in a
directory of the test's own, on free loopback ports. busd, profile,
account and payment run with <SVC>_DB_URL naming the three members with
target_session_attrs=read-write: no proxy, no address that changes (and
account and payment with <SVC>_DB_READ_URL, prefer-standby, for lists).

Clients transfer and pay between the accounts of CUSTOMERS customers, each
request with its Idempotency-Key, retried with the same key when the
answer is lost, 503 or 409 (the service answers 503 while no member takes
writes). After LOAD_BEFORE seconds the leader's postmaster is killed with
SIGKILL; Patroni on that member gives up the leader key at once
(primary_start_timeout 0) and the synchronous standby is promoted. The
load goes on for LOAD_AFTER seconds once a new leader is there. Then:

  - every acknowledged transfer (201) is in the new primary's ledger, and
    there are exactly as many transfers as acknowledgements: none lost,
    none applied twice;
  - every accepted payment (202) exists once and ends final; each
    completed one was settled exactly once, a failed one never;
  - the money of these accounts is what it was, every currency sums to
    zero, and the ledger invariants hold;
  - the old primary comes back as a replica of the new one (pg_rewind).

It prints the unavailability window seen by the clients: from the kill to
the first write acknowledged that was sent after it; and how long Patroni
took to promote. The whole test is bounded by WATCHDOG_S and stops
everything it started, even when it fails.
"""
import os
import random
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration", "lib"))
import paytest as t  # noqa: E402
import pgcluster  # noqa: E402

CUSTOMERS = 6
FUNDING = 100000
LOAD_BEFORE = 5
LOAD_AFTER = 6
PROMOTE_WAIT_S = 45
DRAIN_SECONDS = 60
WATCHDOG_S = 280
PAYERS = 2
TRANSFERRERS = 2


class Load:
    """Clients that keep every acknowledgement: (kind, id, started, done)."""

    def __init__(self, plat, accounts):
        self.plat, self.accounts = plat, accounts
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acks = []           # (kind, id, sent_at, answered_at)
        self.unavailable = 0     # 503s and lost answers, retried
        self.unanswered = 0      # gave up at the deadline: outcome unknown
        self.refused = 0

    def post(self, port, path, body, who, key, deadline):
        """(status, doc, sent_at of the attempt that was answered)."""
        while time.time() < deadline:
            sent = time.time()
            try:
                s, d, _, _ = t.jcall(port, "POST", path, body, who=who,
                                     headers={"Idempotency-Key": key}, timeout=10)
                if s < 500 and s != 409:
                    return s, d, sent
            except OSError:
                pass
            with self.lock:
                self.unavailable += 1
            time.sleep(0.1)
        return None, None, None

    def worker(self, seed, kind):
        rnd = random.Random(seed)
        while not self.stop.is_set():
            cust, src = rnd.choice(self.accounts)
            if kind == "transfer":
                dst = [a for c, a in self.accounts if c == cust and a != src][0]
                port, path, amount = self.plat.port("account"), "/v1/transfers", rnd.randint(1, 900)
            else:
                dst = rnd.choice([a for c, a in self.accounts if a != src])
                port, path, amount = self.plat.port("payment"), "/v1/payments", rnd.randint(1, 900)
            body = {"from_account_id": src, "to_account_id": dst, "amount": amount,
                    "currency": "EUR"}
            s, d, sent = self.post(port, path, body, (cust, "customer"),
                                   "fo-%s-%s" % (kind[0], uuid.uuid4().hex), time.time() + 60)
            with self.lock:
                if s in (201, 202):
                    self.acks.append((kind, d["id"], sent, time.time()))
                elif s is None:
                    self.unanswered += 1
                else:
                    self.refused += 1


def main():
    if len(sys.argv) != 6:
        print(__doc__, file=sys.stderr)
        return 2
    deploy_patroni, busd, profile, account, payment = sys.argv[1:]
    pgcluster.need_programs("patroni", "etcd", "psql")
    pgcluster.pg_bin()
    cluster = pgcluster.Patroni(deploy_patroni, sync="on")
    pgcluster.watchdog(WATCHDOG_S, cluster)
    t0 = time.time()
    cluster.start()
    t.say("patroni cluster up in %.1f s" % (time.time() - t0))
    cluster.export()
    acct_url, pay_url = t.db_url("account"), t.db_url("payment")
    t.check("target_session_attrs=read-write" in acct_url and acct_url.count("127.0.0.1:") == 3,
            "the services' URL names the three members, read-write")

    # The read pools too, on the replicas (prefer-standby), through the
    # failover.
    reads = {name: {"%s_DB_READ_URL" % name.upper(): cluster.urls["%s_DB_READ_URL"
                                                                  % name.upper()]}
             for name in ("account", "payment")}
    reads["account"]["HOLD_TTL"] = "60s"
    reads["payment"].update({"PAYMENT_MAX_AMOUNT": "100000000",
                             "PAYMENT_DAILY_MAX": "100000000000"})
    plat = t.Platform({"busd": busd, "profile": profile, "account": account, "payment": payment},
                      env_for=reads)
    plat.start("busd", "profile", "account", "payment")
    bank = t.Bank(plat.port("profile"), plat.port("account"))
    accounts = bank.funded_pairs(CUSTOMERS, FUNDING)
    ids = ",".join("'%s'" % a for _, a in accounts)
    total_before = t.sql_int(acct_url, "SELECT sum(balance + held) FROM accounts WHERE id IN (%s)"
                             % ids)
    t.check(total_before == len(accounts) * FUNDING, "funded: %d" % total_before)

    load = Load(plat, accounts)
    workers = [threading.Thread(target=load.worker, args=(i, "payment")) for i in range(PAYERS)]
    workers += [threading.Thread(target=load.worker, args=(100 + i, "transfer"))
                for i in range(TRANSFERRERS)]
    for w in workers:
        w.start()
    time.sleep(LOAD_BEFORE)

    old = cluster.leader()
    victim = cluster.kill_leader()
    killed_at = time.time()
    t.say("SIGKILL to the leader's postmaster: member %s, port %s, pid %s" % tuple(victim))
    promoted_at = None
    while time.time() < killed_at + PROMOTE_WAIT_S:
        new = cluster.leader()
        if new is not None and new != old:
            promoted_at = time.time()
            break
        time.sleep(0.1)
    t.check(promoted_at is not None, "Patroni promoted another member within %ds" % PROMOTE_WAIT_S)
    time.sleep(LOAD_AFTER)
    load.stop.set()
    for w in workers:
        w.join(90)

    after = sorted(a[3] for a in load.acks if a[2] >= killed_at)
    before = sorted(a[3] for a in load.acks if a[3] < killed_at)
    window = (after[0] - killed_at) if after else None
    t.say("load: %d acknowledged (%d transfers, %d payments), %d retried (503 or lost),"
          " %d refused, %d unanswered"
          % (len(load.acks), sum(1 for a in load.acks if a[0] == "transfer"),
             sum(1 for a in load.acks if a[0] == "payment"), load.unavailable, load.refused,
             load.unanswered))
    t.say("failover: Patroni promoted a replica %.2f s after the kill; writes unavailable to"
          " clients for %s s (kill to the first write sent after it and acknowledged)"
          % ((promoted_at or killed_at) - killed_at,
             "%.2f" % window if window is not None else "?"))
    t.check(len(before) >= 10, "writes were acknowledged before the kill (%d)" % len(before))
    t.check(window is not None, "writes are acknowledged again after the failover")
    t.check(load.unanswered == 0, "every request got an answer in the end (%d did not)"
            % load.unanswered)

    # No transfer lost, none doubled: the acknowledged ids are all there,
    # and there are no others between these accounts.
    acked_t = set(a[1] for a in load.acks if a[0] == "transfer")
    stored_t = t.sql_set(acct_url, "SELECT id FROM transactions WHERE kind = 'transfer' AND"
                                   " debit_account_id IN (%s)" % ids)
    t.check(acked_t <= stored_t, "every acknowledged transfer is in the new primary's ledger"
            " (%d missing)" % len(acked_t - stored_t))
    t.check(stored_t == acked_t, "no transfer without its acknowledgement: none applied twice"
            " (%d stored, %d acknowledged)" % (len(stored_t), len(acked_t)))

    acked_p = set(a[1] for a in load.acks if a[0] == "payment")
    t.payments_settled(acct_url, pay_url, accounts, acked_p, total_before, DRAIN_SECONDS,
                       exact=True)
    t.ledger_invariants(acct_url, "after the failover")

    t.check(t.wait_for(lambda: cluster.roles().get(old) == "replica", 60, step=0.5),
            "the old primary is back, as a replica of the new one")
    cust0, acct0 = accounts[0]
    s, d, _, _ = t.jcall(plat.port("account"), "GET", "/v1/accounts", who=(cust0, "customer"))
    t.check(s == 200 and acct0 in [x["id"] for x in d["items"]],
            "lists answer after the failover (read pool, %d)" % s)
    t.check((t.metric(plat.port("account"), "pg_read_batches_total") or 0) > 0,
            "and they went through the read pool")
    for name in ("payment", "account", "profile"):
        t.check(plat.proc(name).stop() in (0, None), "%s stops" % name)
    cluster.stop()
    return t.finish()


if __name__ == "__main__":
    sys.exit(main())
