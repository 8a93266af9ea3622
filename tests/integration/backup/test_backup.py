#!/usr/bin/env python3
"""Backups under load, a point-in-time restore, and busd's data directory
backed up and restored.

usage: test_backup.py DEPLOY_PG DEPLOY_BACKUP BUSD PROFILE ACCOUNT PAYMENT

A private deploy/pg cluster (PG_DIR of the test's own) with pgBackRest set
up by deploy/backup (repository in the test's directory). busd, profile,
account and payment run on it while clients sign up customers, transfer
and pay, each request with its Idempotency-Key.

  1. Under that load: a full backup (deploy/backup full), and a hot copy
     of busd's data directory (deploy/backup busd-backup) at time B.
  2. The load goes on. In the middle, at T, it is held for a moment so
     that nothing is in flight (the clients wait, nothing is refused),
     then goes on again.
  3. deploy/backup restore --time T into a new data directory, started as
     a separate server: it holds exactly the customers, transfers and
     payments acknowledged before T, none of those sent after T; the
     ledger invariants hold and every currency sums to zero there.
  4. busd is killed, its data directory deleted, restored from the copy
     made at B and started again; busd-replay --since B has the relays
     publish again what they had published since: every payment ends
     final, each completed one settled once, and the money of the test's
     accounts is all there.
  5. deploy/backup replace --time T restores the cluster itself in place
     (the runbook's disaster recovery): exactly the transfers acknowledged
     before T, running as the primary with archiving on.

It prints how long each step took (the figures of deploy/RUNBOOK.md).
"""
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import paytest as t  # noqa: E402
import pgcluster  # noqa: E402

CUSTOMERS = 6
FUNDING = 100000
WATCHDOG_S = 270
DRAIN_SECONDS = 90


class Load:
    """Clients that can be held at a point with nothing in flight."""

    def __init__(self, plat, bank, accounts):
        self.plat, self.bank, self.accounts = plat, bank, accounts
        self.stop = threading.Event()
        self.cv = threading.Condition()
        self.held = False
        self.inflight = 0
        self.acks = []  # (kind, id, sent_at, answered_at)
        self.lock = threading.Lock()

    def begin(self):
        with self.cv:
            while self.held:
                self.cv.wait()
            self.inflight += 1

    def end(self):
        with self.cv:
            self.inflight -= 1
            self.cv.notify_all()

    def hold(self):
        """Waits until nothing is in flight and keeps new requests waiting;
        returns the time at which that was so."""
        with self.cv:
            self.held = True
            while self.inflight:
                self.cv.wait()
        return time.time()

    def release(self):
        with self.cv:
            self.held = False
            self.cv.notify_all()

    def post(self, port, path, body, who, key):
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                s, d, _, _ = t.jcall(port, "POST", path, body, who=who,
                                     headers={"Idempotency-Key": key}, timeout=10)
                if s < 500 and s != 409:
                    return s, d
            except OSError:
                pass
            time.sleep(0.1)
        return None, None

    def one(self, rnd, kind):
        cust, src = rnd.choice(self.accounts)
        sent = time.time()
        if kind == "customer":
            # A sign-up takes no Idempotency-Key: one attempt, counted
            # only when answered.
            try:
                s, d, _, _ = t.jcall(self.plat.port("profile"), "POST", "/v1/customers",
                                     {"name": "Backup Person",
                                      "email": "b-%s@example.com" % uuid.uuid4().hex[:12],
                                      "phone": "+4915100000000", "password": "s3cret-pass"})
            except OSError:
                s, d = None, None
            ok = 201
        elif kind == "transfer":
            dst = [a for c, a in self.accounts if c == cust and a != src][0]
            s, d = self.post(self.plat.port("account"), "/v1/transfers",
                             {"from_account_id": src, "to_account_id": dst,
                              "amount": rnd.randint(1, 500), "currency": "EUR"},
                             (cust, "customer"), "bk-t-" + uuid.uuid4().hex)
            ok = 201
        else:
            dst = rnd.choice([a for c, a in self.accounts if a != src])
            s, d = self.post(self.plat.port("payment"), "/v1/payments",
                             {"from_account_id": src, "to_account_id": dst,
                              "amount": rnd.randint(1, 500), "currency": "EUR"},
                             (cust, "customer"), "bk-p-" + uuid.uuid4().hex)
            ok = 202
        if s == ok:
            with self.lock:
                self.acks.append((kind, d["id"], sent, time.time()))

    def worker(self, seed, kinds):
        rnd = random.Random(seed)
        while not self.stop.is_set():
            self.begin()
            try:
                self.one(rnd, rnd.choice(kinds))
            finally:
                self.end()
            time.sleep(0.01)


def timed(label, fn, *args):
    t0 = time.time()
    out = fn(*args)
    took = time.time() - t0
    t.say("%-44s %6.2f s" % (label, took))
    return out, took


def main():
    if len(sys.argv) != 7:
        print(__doc__, file=sys.stderr)
        return 2
    deploy_pg, deploy_backup, busd, profile, account, payment = sys.argv[1:]
    pgcluster.need_programs("pgbackrest", "psql")
    pgcluster.pg_bin()
    cluster = pgcluster.Cluster(deploy_pg, replicas=0)
    pgcluster.watchdog(WATCHDOG_S, cluster)
    cluster.start()
    cluster.export()
    benv = dict(cluster.env)
    benv["BACKUP_DIR"] = os.path.join(t.WORK_DIR, "backup")
    benv.update(cluster.urls)
    restored_dir = os.path.join(t.WORK_DIR, "restored")

    def backup(*args, timeout=240):
        out = subprocess.run([deploy_backup] + list(args), env=benv, capture_output=True,
                             text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError("deploy/backup %s: %s" % (" ".join(args), out.stderr[-3000:]))
        return out.stdout

    def stop_restored():
        if os.path.exists(os.path.join(restored_dir, "PG_VERSION")):
            subprocess.run([deploy_backup, "stop-restored", restored_dir], env=benv,
                           capture_output=True, timeout=60)

    import atexit
    atexit.register(stop_restored)

    timed("deploy/backup setup (archiving on, restart)", backup, "setup")

    plat = t.Platform({"busd": busd, "profile": profile, "account": account, "payment": payment},
                      env_for={"payment": {"PAYMENT_MAX_AMOUNT": "100000000",
                                           "PAYMENT_DAILY_MAX": "100000000000"}})
    plat.start("busd", "profile", "account", "payment")
    bank = t.Bank(plat.port("profile"), plat.port("account"))
    accounts = bank.funded_pairs(CUSTOMERS, FUNDING)
    ids = ",".join("'%s'" % a for _, a in accounts)
    custs = ",".join("'%s'" % c for c in sorted(set(c for c, _ in accounts)))
    acct_url, pay_url, prof_url = t.db_url("account"), t.db_url("payment"), t.db_url("profile")
    total = len(accounts) * FUNDING

    load = Load(plat, bank, accounts)
    workers = [threading.Thread(target=load.worker, args=(i, k)) for i, k in
               enumerate([["transfer"], ["transfer", "payment"], ["payment", "customer"]])]
    for w in workers:
        w.start()
    time.sleep(1.5)
    _, full_s = timed("full backup under load (deploy/backup full)", backup, "full")
    busd_backup = os.path.join(t.WORK_DIR, "busd-backup.tar")
    b_time = time.time()
    time.sleep(0.05)
    timed("busd data directory copy (busd-backup)", backup, "busd-backup", "--data-dir",
          plat.busd_dir, "--into", busd_backup)
    time.sleep(2)
    quiet = load.hold()
    time.sleep(0.1)
    target = quiet + 0.05
    load.release()
    t.say("T = %s (load held %.2f s)" % (time.strftime("%H:%M:%S", time.gmtime(target)),
                                         time.time() - quiet))
    time.sleep(2)
    load.stop.set()
    for w in workers:
        w.join(60)
    before = [a for a in load.acks if a[3] < target]
    after = [a for a in load.acks if a[2] > target]
    t.check(len(before) == len([a for a in load.acks if a[2] < target]),
            "nothing was in flight at T")
    t.say("load: %d acknowledged, %d before T, %d after" % (len(load.acks), len(before),
                                                            len(after)))
    t.check(len(before) >= 20 and len(after) >= 5, "there was load on both sides of T")

    # Point-in-time restore as of T, into a fresh data directory.
    timed("wal-switch (the WAL past T archived)", backup, "wal-switch")
    tstamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(target)) + (
        "%.6f" % (target % 1))[1:] + "+00"
    out, restore_s = timed("restore --time T into a new directory, started",
                           backup, "restore", "--time", tstamp, "--into", restored_dir)
    port = int(out.split()[-1])

    def at(url):
        return pgcluster.with_port(url, port)

    r_acct, r_pay, r_prof = at(acct_url), at(pay_url), at(prof_url)
    for kind, url, query in (
            ("transfer", r_acct, "SELECT id FROM transactions WHERE kind = 'transfer'"
                                 " AND debit_account_id IN (%s)" % ids),
            ("payment", r_pay, "SELECT id FROM payments WHERE customer_id IN (%s)" % custs),
            ("customer", r_prof, "SELECT id FROM customers WHERE id NOT IN (%s)" % custs)):
        want = set(a[1] for a in before if a[0] == kind)
        late = set(a[1] for a in after if a[0] == kind)
        try:
            got = t.sql_set(url, query)
        except RuntimeError as e:
            t.check(False, "%s: %s" % (kind, e))
            continue
        t.check(want <= got, "the restore holds every %s acknowledged before T (%d of %d)"
                % (kind, len(want & got), len(want)))
        t.check(not (got & late), "and none sent after T (%d of %d)" % (len(got & late),
                                                                       len(late)))
        t.check(got == want, "%ss in the restore: exactly those acknowledged before T"
                " (%d, %d acknowledged)" % (kind, len(got), len(want)))
    t.ledger_invariants(r_acct, "the restore as of T")
    t.check(t.sql_int(r_acct, "SELECT sum(balance + held) FROM accounts WHERE id IN (%s)" % ids)
            == total, "the money of the test's accounts is all in the restore")
    stop_restored()

    # busd: lost, restored from the copy made at B, outboxes replayed.
    bus = plat.proc("busd")
    bus.kill9()
    shutil.rmtree(plat.busd_dir)
    t0 = time.time()
    backup("busd-restore", "--data-dir", plat.busd_dir, "--from", busd_backup)
    bus.start()
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(b_time - 1)) + "+00"
    replayed = backup("busd-replay", "--since", since)
    t.say("%-44s %6.2f s" % ("busd restored, started, outboxes replayed", time.time() - t0))
    del replayed

    def open_payments():
        return t.sql_int(pay_url, "SELECT count(*) FROM payments WHERE customer_id IN (%s) AND"
                                  " state NOT IN ('completed', 'failed')" % custs)

    t.check(t.wait_for(lambda: open_payments() == 0, DRAIN_SECONDS, step=0.5),
            "after busd's restore every payment ends final (%d open)" % open_payments())
    completed = t.sql_set(pay_url, "SELECT id FROM payments WHERE customer_id IN (%s) AND"
                                   " state = 'completed'" % custs)
    settled = t.sql_rows(acct_url, "SELECT payment_id, count(*) FROM transactions WHERE kind ="
                                   " 'payment' AND debit_account_id IN (%s) GROUP BY payment_id"
                                   % ids)
    t.check(all(n == "1" for _, n in settled), "no payment settled twice")
    t.check(set(p for p, _ in settled) == completed,
            "the settled payments are exactly the completed ones (%d, %d)"
            % (len(completed), len(settled)))
    t.check(t.sql_int(acct_url, "SELECT count(*) FROM holds WHERE state IN ('new', 'held') AND"
                                " account_id IN (%s)" % ids) == 0, "no hold left open")
    t.check(t.sql_int(acct_url, "SELECT sum(balance + held) FROM accounts WHERE id IN (%s)"
                      % ids) == total, "the money of the test's accounts is all there")
    t.ledger_invariants(acct_url, "after busd's restore")
    t.say("figures: full backup %.1f s, restore to T %.1f s" % (full_s, restore_s))

    for name in ("payment", "account", "profile"):
        t.check(plat.proc(name).stop() in (0, None), "%s stops" % name)

    # The runbook's restore in place, as of T, of the cluster itself.
    timed("replace --time T (in place)", backup, "replace", "--time", tstamp)
    want_t = set(a[1] for a in before if a[0] == "transfer")
    got_t = t.sql_set(acct_url, "SELECT id FROM transactions WHERE kind = 'transfer'"
                                " AND debit_account_id IN (%s)" % ids)
    t.check(got_t == want_t, "restored in place: exactly the transfers acknowledged before T"
            " (%d, %d acknowledged)" % (len(got_t), len(want_t)))
    t.check(t.sql(cluster.admin(), "SELECT pg_is_in_recovery()") == "f"
            and t.sql(cluster.admin(), "SHOW archive_mode") == "on",
            "and it runs as the primary again, archiving")
    cluster.stop()
    return t.finish()


if __name__ == "__main__":
    sys.exit(main())
