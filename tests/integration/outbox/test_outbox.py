#!/usr/bin/env python3
"""Outbox to bus to inbox, end to end, with crashes.

usage: test_outbox.py BUSD_BIN PROFILE_BIN ACCOUNT_BIN EVENT_BIN

Needs PROFILE_DB_URL, ACCOUNT_DB_URL and EVENT_DB_URL (eval "$(deploy/pg
env)"); fails without them. Starts busd (private data directory), profile,
account and event on free loopback ports, drives customer creations,
top-ups and transfers while SIGKILL hits the account service and busd
several times (each is started again), then waits until everything is
drained and checks, over the events of this run:

  - every outbox row of profile and account has published_at set;
  - the set of outbox event ids equals the set of audit_log event ids of
    the event service: none missing, none extra, none twice;
  - rows made unpublished on purpose are sent again, and the inbox absorbs
    every one of them (the duplicate counter on event's /metrics grows by
    at least as many) without a second audit_log row;
  - GET /v1/events pages through the log for an auditor, filters by topic,
    refuses a customer;
  - the services drain and exit 0 on SIGTERM.

Prints the figures, then "N passed, N failed" like the other tests. Always
stops what it started and removes the data directory.
"""
import http.client
import os
import random
import signal
import sys
import threading
import time
import traceback
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import paytest  # noqa: E402
from paytest import (KEY, PROCS, WORK_DIR, Proc, check, free_port, jcall, metric,  # noqa: E402
                     metric_label, sql, sql_set, stop_all)

LOAD_SECONDS = 24
DRAIN_SECONDS = 90


# ---------------------------------------------------------------------------
# Load


class Load:
    """Customers, accounts, top-ups and transfers from a few threads; any
    failure while a process is down is expected and only counted."""

    def __init__(self, pport, aport):
        self.pport, self.aport = pport, aport
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = {"customer": 0, "account": 0, "topup": 0, "transfer": 0}
        self.failed = 0

    def count(self, what, ok):
        with self.lock:
            if ok:
                self.ok[what] += 1
            else:
                self.failed += 1

    def new_customer(self):
        email = "O-%s@example.com" % uuid.uuid4().hex[:12]
        s, d, _, _ = jcall(self.pport, "POST", "/v1/customers",
                     {"name": "Outbox Test", "email": email, "password": "s3cret-pass"})
        self.count("customer", s == 201)
        return d["id"] if s == 201 else None

    def new_account(self, cust):
        s, d, _, _ = jcall(self.aport, "POST", "/v1/accounts", {"currency": "EUR"}, who=(cust, "customer"))
        self.count("account", s == 201)
        return d["id"] if s == 201 else None

    def worker(self, seed):
        rnd = random.Random(seed)
        mine = []  # (customer, account)
        while not self.stop.is_set():
            try:
                if len(mine) < 3 or rnd.random() < 0.05:
                    cust = self.new_customer()
                    acc = self.new_account(cust) if cust else None
                    if acc:
                        mine.append((cust, acc))
                    continue
                cust, acc = rnd.choice(mine)
                if rnd.random() < 0.5:
                    s, _, _, _ = jcall(self.aport, "POST", "/v1/accounts/%s/topups" % acc,
                                 {"amount": rnd.randint(100, 5000), "currency": "EUR"},
                                 who=(cust, "customer"))
                    self.count("topup", s == 201)
                else:
                    _, dest = rnd.choice(mine)
                    s, _, _, _ = jcall(self.aport, "POST", "/v1/transfers",
                                 {"from_account_id": acc, "to_account_id": dest, "amount": rnd.randint(1, 300),
                                  "currency": "EUR"}, who=(cust, "customer"))
                    self.count("transfer", s == 201)
            except (OSError, http.client.HTTPException, KeyError, TypeError):
                self.count("topup", False)
                time.sleep(0.05)


def chaos(busd, account, stop, kills):
    """Alternates SIGKILL of account and busd; each comes back at once."""
    victims = [account, busd, account, busd, account, busd]
    for v in victims:
        if stop.wait(LOAD_SECONDS / (len(victims) + 1)):
            return
        v.kill9()
        kills[v.name] += 1
        time.sleep(0.3 if v is busd else 0.1)
        v.start()


# ---------------------------------------------------------------------------
# Checks


def producer_ids(urls, t0):
    ids = set()
    for url in urls:
        ids |= sql_set(url, "SELECT id FROM outbox WHERE created_at >= '%s'" % t0)
    return ids


def unpublished(urls):
    return sum(int(sql(u, "SELECT count(*) FROM outbox WHERE published_at IS NULL")) for u in urls)


def wait_drained(urls, event_url, t0, deadline):
    """Until no outbox row is unpublished and the audit log holds every
    event of the run; returns the seconds it took or None."""
    start = time.time()
    while time.time() < deadline:
        if unpublished(urls) == 0:
            want = producer_ids(urls, t0)
            have = sql_set(event_url, "SELECT event_id FROM audit_log WHERE received_at >= '%s'" % t0)
            if want <= have:
                return time.time() - start
        time.sleep(0.5)
    return None


def check_sets(urls, event_url, t0, label):
    want = producer_ids(urls, t0)
    all_outbox = set()
    for url in urls:
        all_outbox |= sql_set(url, "SELECT id FROM outbox")
    have_rows = sql(event_url, "SELECT event_id FROM audit_log WHERE received_at >= '%s'" % t0)
    have_list = [x for x in have_rows.split("\n") if x]
    have = set(have_list)
    missing = want - have
    extra = have - all_outbox
    dups = int(sql(event_url, "SELECT count(*) FROM (SELECT event_id FROM audit_log"
                              " GROUP BY event_id HAVING count(*) > 1) x"))
    print("%s: outbox rows %d, audit rows %d, missing %d, extra %d, duplicated ids %d" %
          (label, len(want), len(have_list), len(missing), len(extra), dups), file=sys.stderr)
    check(len(want) > 0, "%s: the run produced events" % label)
    check(not missing, "%s: every outbox event is in the audit log (missing %s)" %
          (label, sorted(missing)[:5]))
    check(not extra, "%s: no audit event without an outbox row (extra %s)" % (label, sorted(extra)[:5]))
    check(dups == 0 and len(have_list) == len(have), "%s: no event id twice in the audit log" % label)
    return want


def check_api(eport):
    auditor = ("aud-1", "auditor")
    s, d, _, _ = jcall(eport, "GET", "/v1/events?limit=100", who=auditor)
    check(s == 200 and isinstance(d.get("items"), list) and len(d["items"]) > 0,
          "auditor lists events (%d)" % s)
    seen, pages, cursor = set(), 0, None
    while pages < 3 and s == 200:
        path = "/v1/events?limit=50&topic=account.topped_up" + ("&cursor=" + cursor if cursor else "")
        s, d, _, _ = jcall(eport, "GET", path, who=auditor)
        if s != 200:
            break
        for it in d["items"]:
            check(it["topic"] == "account.topped_up", "topic filter holds")
            check(it["event_id"] not in seen, "pages do not overlap")
            seen.add(it["event_id"])
        pages += 1
        cursor = d["next_cursor"]
        if not cursor:
            break
    check(len(seen) > 0, "topic filter finds top-ups (%d)" % len(seen))
    s, d, _, _ = jcall(eport, "GET", "/v1/events?since=2999-01-01T00:00:00Z", who=("adm-1", "admin"))
    check(s == 200 and d["items"] == [], "admin: since in the future gives nothing (%d)" % s)
    s, _, _, _ = jcall(eport, "GET", "/v1/events?since=yesterday", who=auditor)
    check(s == 422, "a bad time is 422 (%d)" % s)
    s, _, _, _ = jcall(eport, "GET", "/v1/events", who=(str(uuid.uuid4()), "customer"))
    check(s == 403, "a customer may not read the audit log (%d)" % s)


def redeliver(urls, event_url, eport, t0):
    """Makes published rows unpublished again, as a relay that crashed
    between PUB_ACK and its mark would leave them: they are sent again and
    the inbox must absorb every one."""
    before = metric_label(eport, "inbox_events_total", 'outcome="duplicate"') or 0
    n = 0
    for url in urls:
        n += int(sql(url, "WITH u AS (UPDATE outbox SET published_at = NULL WHERE id IN"
                          " (SELECT id FROM outbox WHERE created_at >= '%s' ORDER BY id LIMIT 40)"
                          " RETURNING 1) SELECT count(*) FROM u" % t0))
    deadline = time.time() + 60
    after = before
    while time.time() < deadline:
        after = metric_label(eport, "inbox_events_total", 'outcome="duplicate"') or 0
        if unpublished(urls) == 0 and after - before >= n:
            break
        time.sleep(0.3)
    print("re-sent on purpose: %d rows; duplicates absorbed meanwhile: %d" % (n, after - before),
          file=sys.stderr)
    check(n > 0, "rows were made unpublished (%d)" % n)
    check(unpublished(urls) == 0, "re-sent rows are published again")
    check(after - before >= n, "the inbox absorbed every re-sent event (%d of %d)" % (after - before, n))
    check_sets(urls, event_url, t0, "after re-sending")


BACKLOG_MAX = 2000


def set_aside(urls):
    """Runs without a bus (the service tests, benchmarks) leave unpublished
    rows behind; the relay would publish them first, in id order. Up to
    BACKLOG_MAX of them are left to it (and checked like the run's own);
    a larger backlog is marked published so that the drain stays bounded."""
    for url in urls:
        n = int(sql(url, "SELECT count(*) FROM outbox WHERE published_at IS NULL"))
        if n > BACKLOG_MAX:
            sql(url, "UPDATE outbox SET published_at = now() WHERE published_at IS NULL")
        print("earlier unpublished rows: %d (%s)" %
              (n, "set aside" if n > BACKLOG_MAX else "left to the relay"), file=sys.stderr)


# ---------------------------------------------------------------------------


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    busd_bin, profile_bin, account_bin, event_bin = sys.argv[1:5]
    names = ("PROFILE_DB_URL", "ACCOUNT_DB_URL", "EVENT_DB_URL")
    missing = [v for v in names if not os.environ.get(v)]
    if missing:
        print("%s not set: start the database with deploy/pg start and "
              "eval \"$(deploy/pg env)\"" % ", ".join(missing), file=sys.stderr)
        print("0 passed, 1 failed")
        return 1
    purl, aurl, eurl = (os.environ[v] for v in names)
    bport, bhttp, pport, aport, eport = (free_port() for _ in range(5))
    bus_addr = "127.0.0.1:%d" % bport
    data_dir = os.path.join(WORK_DIR, "busd-data")
    os.mkdir(data_dir)
    busd = Proc("busd", [busd_bin], {"BUSD_PORT": str(bport), "BUSD_HTTP_PORT": str(bhttp),
                                     "BUSD_DATA_DIR": data_dir, "BUSD_ACK_TIMEOUT_MS": "3000",
                                     "LOG_LEVEL": "warn"}, bhttp, "/readyz")
    common = {"AUTH_HMAC_KEY": KEY, "LOG_LEVEL": "info", "ARGON2_M_KIB": "1024",
              "ARGON2_T_COST": "1", "DB_CONNS": "4", "LOG_HASH_KEY": "test", "BUS_ADDR": bus_addr}
    profile = Proc("profile", [profile_bin], dict(common, PROFILE_PORT=str(pport)), pport, "/healthz")
    account = Proc("account", [account_bin], dict(common, ACCOUNT_PORT=str(aport),
                                                  PROFILE_ADDR="127.0.0.1:%d" % pport),
                   aport, "/healthz")
    event = Proc("event", [event_bin], dict(common, EVENT_PORT=str(eport)), eport, "/healthz")
    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(1)))
    t_start = time.time()
    try:
        t0 = sql(eurl, "SELECT now()")
        set_aside([purl, aurl])
        busd.start()
        event.start()
        profile.start()
        account.start()
        load = Load(pport, aport)
        kills = {"account": 0, "busd": 0}
        stop = threading.Event()
        threads = [threading.Thread(target=load.worker, args=(i,)) for i in range(6)]
        chaos_thread = threading.Thread(target=chaos, args=(busd, account, stop, kills))
        for t in threads:
            t.start()
        chaos_thread.start()
        # All six kills, however long the restarts take on a busy machine
        # (the load runs on meanwhile); stop only lets a stuck one end.
        chaos_thread.join(LOAD_SECONDS + 180)
        stop.set()
        chaos_thread.join()
        load.stop.set()
        for t in threads:
            t.join()
        print("load: %s ok, %d failed requests; SIGKILLs: account %d, busd %d" %
              (load.ok, load.failed, kills["account"], kills["busd"]), file=sys.stderr)
        check(kills["account"] >= 3 and kills["busd"] >= 3, "the chaos ran (%s)" % kills)
        check(load.ok["topup"] + load.ok["transfer"] > 50, "money moved (%s)" % load.ok)
        took = wait_drained([purl, aurl], eurl, t0, time.time() + DRAIN_SECONDS)
        check(took is not None, "drained within %ds" % DRAIN_SECONDS)
        print("drained in %s s after the load" % (None if took is None else round(took, 1)),
              file=sys.stderr)
        check(unpublished([purl, aurl]) == 0, "every outbox row is published")
        check_sets([purl, aurl], eurl, t0, "after crashes")
        dup = metric_label(eport, "inbox_events_total", 'outcome="duplicate"')
        applied = metric_label(eport, "inbox_events_total", 'outcome="applied"')
        print("inbox: applied %s, duplicates absorbed %s (from crashes and re-sends)" %
              (applied, dup), file=sys.stderr)
        for p in (profile, account):
            pub = metric(p.health_port, "outbox_published_total")
            notifies = metric(p.health_port, "outbox_notifies_total")
            print("%s relay (since its last start): published %s, pending %s, errors %s,"
                  " notifies %s" % (p.name, pub, metric(p.health_port, "outbox_pending"),
                                    metric(p.health_port, "outbox_errors_total"), notifies),
                  file=sys.stderr)
            check(pub and pub > 0, "%s relay publishes" % p.name)
            check(notifies and notifies > 0, "%s relay is woken by NOTIFY" % p.name)
        redeliver([purl, aurl], eurl, eport, t0)
        check_api(eport)
        for p in (account, profile, event):
            rc = p.stop()
            check(rc == 0, "%s drains and exits 0 (%s)" % (p.name, rc))
    except Exception:  # noqa: BLE001 - a crash is a failure
        traceback.print_exc()
        check(False, "the test raised")
    finally:
        stop_all()
        if paytest.failed():
            for p in PROCS:
                print("--- %s log tail:\n%s" % (p.name, p.log_tail()), file=sys.stderr)
    print("took %.1fs" % (time.time() - t_start), file=sys.stderr)
    return paytest.finish()


if __name__ == "__main__":
    sys.exit(main())
