#!/usr/bin/env python3
"""Payments over a 3-node RabbitMQ cluster while its nodes are killed with
SIGKILL and started again.

usage: test_rabbit_chaos.py PROFILE ACCOUNT PAYMENT EVENT DEPLOY_RABBITMQ

A private cluster (deploy/rabbitmq, under .run/, its own ports, cookie and
epmd) carries the event flow: the four services run with
BUS_URL=amqp://...@node1,node2,node3/paycore, so their outbox relays and
inboxes use quorum queues. Clients pay between the accounts of CUSTOMERS
customers (each request with its Idempotency-Key, retried with the same key
when the answer is lost or 503) for LOAD_SECONDS, while node 1 (where every
service connects first) and later node 2 are killed with SIGKILL, each
started again after DOWN_SECONDS. Afterwards, within DRAIN_SECONDS:

  - every payment is final, none stuck; no hold is left open;
  - the money of these accounts is what it was, every currency sums to
    zero, each completed payment settled exactly once, failed ones never;
  - nothing lost: every event the payment and account services wrote for
    these payments was published (no outbox row left) and is in the audit
    log; nothing applied twice: each event id is there once;
  - no event was dead-lettered;
  - and then the dead-letter path: an event the account service can never
    apply is tried 5 times, dead-lettered by RabbitMQ and recorded by the
    event service as the account group's dead letter; an operator's
    redrive sends it over RabbitMQ again, it fails again, and the letter is
    open again.

Exit 77 (skipped) when rabbitmq-server is not installed. Everything it
starts (the cluster, epmd, the services) is stopped at exit, failed or not.
"""
import atexit
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration", "lib"))
import paytest as t  # noqa: E402

CUSTOMERS = 10
FUNDING = 200000
LOAD_SECONDS = 40
DOWN_SECONDS = 6
DRAIN_SECONDS = 120
PAYERS = 4
RABBIT_BIN = "/usr/lib/rabbitmq/bin/rabbitmq-server"


def sql_big(url, query):
    """As paytest.sql(), the query on stdin: lists of thousands of ids do
    not fit in one argument."""
    out = subprocess.run(["psql", url, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"],
                         input=query, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError("psql: " + out.stderr)
    return out.stdout.strip()


def rabbit(deploy, env, *args, timeout=180):
    out = subprocess.run([deploy] + list(args), env=env, capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError("deploy/rabbitmq %s: %s%s" % (" ".join(args), out.stdout, out.stderr))
    return out.stdout


def payer(plat, accounts, stop, payments, counts, lock, seed):
    rnd = random.Random(seed)
    while not stop.is_set():
        cust, src = rnd.choice(accounts)
        _, dst = rnd.choice(accounts)
        if dst == src:
            continue
        body = {"from_account_id": src, "to_account_id": dst, "amount": rnd.randint(1, 3000),
                "currency": "EUR"}
        key = "rabbit-p-" + uuid.uuid4().hex
        deadline, answer = time.time() + 60, None
        while time.time() < deadline and answer is None:
            try:
                s, d, _, _ = t.jcall(plat.port("payment"), "POST", "/v1/payments", body,
                                     who=(cust, "customer"), headers={"Idempotency-Key": key},
                                     timeout=5)
                if s < 500 and s != 409:
                    answer = (s, d)
                    break
            except OSError:
                pass
            with lock:
                counts["retries"] += 1
            time.sleep(0.1)
        with lock:
            if answer and answer[0] == 202:
                payments.add(answer[1]["id"])
                counts["payments"] += 1
            else:
                counts["refused"] += 1


def chaos(deploy, env, stop, kills):
    """Node 1 down for DOWN_SECONDS, then node 2, spread over the load."""
    for node, at in (("1", 8.0), ("2", 24.0)):
        if stop.wait(at - (time.time() - chaos.t0)):
            return
        try:
            rabbit(deploy, env, "kill9", node)
            kills.append("node %s" % node)
            time.sleep(DOWN_SECONDS)
            rabbit(deploy, env, "start-node", node)
            kills.append("node %s back" % node)
        except Exception as e:  # noqa: BLE001 - reported as a failed check
            t.check(False, "kill and restart of node %s failed: %r" % (node, e))


def dead_letter_path(pay_url, ev_url, port_event):
    """An event its consumer can never apply (a payment.authorized without
    a payment id, written straight into the payment service's outbox): the
    account service fails it AMQP_MAX_ATTEMPTS (5) times, RabbitMQ moves
    it to the dead-letter exchange, and the event service records it as a
    dead letter of group account, as it does for busd's."""
    eid = str(uuid.uuid4())
    headers = ('{"event-id": "%s", "type": "payment.authorized", "schema-version": "1",'
               ' "occurred-at": "2026-01-01T00:00:00.000Z", "correlation-id": "rabbit-dead-%s",'
               ' "causation-id": ""}' % (eid, eid[:8]))
    t.sql(pay_url, "INSERT INTO outbox (id, topic, key, payload, headers, created_at) VALUES"
                   " ('%s', 'payment.authorized', 'no-such-payment', '{}', '%s', now())"
                   % (eid, headers))
    q = ("SELECT topic || '|' || consumer_group || '|' || attempts || '|' || last_error"
         " FROM dead_letters WHERE event_id = '%s'" % eid)
    t.wait_for(lambda: t.sql(ev_url, q) != "", 60, step=0.5)
    row = t.sql(ev_url, q).split("|", 3)
    t.say("dead letter: %s" % row)
    t.check(len(row) == 4 and row[0] == "payment.authorized" and row[1] == "account",
            "an event the account service keeps failing becomes its dead letter (%s)" % row)
    t.check(len(row) == 4 and row[2] == "5", "after 5 attempts (%s)" % row[2:3])
    t.check(t.sql_int(ev_url, "SELECT count(*) FROM audit_log WHERE event_id = '%s'" % eid) == 1,
            "while the event service, whose handler takes it, audited it once")
    # Redriven by an operator: published again over RabbitMQ (the event
    # service's outbox), failed again by the account service, and so dead
    # again, the letter reopened.
    dl = t.sql(ev_url, "SELECT id FROM dead_letters WHERE event_id = '%s'" % eid)
    s, doc, text, _ = t.jcall(port_event, "POST", "/v1/dead-letters/%s/redrive" % dl,
                              who=("op-1", "operator"))
    t.check(s == 200 and doc and doc.get("state") == "redriven", "redrive: %d %s" % (s, text[:200]))
    state = ("SELECT state || '|' || (redriven_at IS NULL) FROM dead_letters WHERE event_id = '%s'"
             % eid)
    t.wait_for(lambda: t.sql(ev_url, state) == "dead|true", 60, step=0.5)
    t.check(t.sql(ev_url, state) == "dead|true",
            "the redriven event failed again and its letter is open again (%s)" % t.sql(ev_url, state))


def main():
    if len(sys.argv) != 6:
        print(__doc__, file=sys.stderr)
        return 2
    profile, account, payment, event, deploy = sys.argv[1:]
    if not os.access(RABBIT_BIN, os.X_OK) or shutil.which("epmd") is None:
        print("skipped: rabbitmq-server is not installed (Debian package rabbitmq-server;"
              " deploy/dev test installs it)")
        return 77
    repo = os.path.dirname(os.path.dirname(os.path.abspath(deploy)))
    rdir = os.path.join(repo, ".run", "test-rabbit-%d" % os.getpid())
    env = dict(os.environ, RABBIT_DIR=rdir)

    def cleanup():
        t.stop_all()  # the services first: they hold connections
        subprocess.run([deploy, "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(rdir, ignore_errors=True)
    atexit.register(cleanup)

    t0 = time.time()
    rabbit(deploy, env, "start")
    url = rabbit(deploy, env, "env").split("=", 1)[1].strip().strip("'")
    t.say("cluster of 3 nodes up in %.1f s" % (time.time() - t0))

    plat = t.Platform({"profile": profile, "account": account, "payment": payment, "event": event},
                      bus=False, extra_env={"BUS_URL": url},
                      env_for={"account": {"HOLD_TTL": "120s"},
                               "payment": {"PAYMENT_MAX_AMOUNT": "100000000",
                                           "PAYMENT_DAILY_MAX": "100000000000"}})
    plat.start("profile", "account", "payment", "event")
    bank = t.Bank(plat.port("profile"), plat.port("account"))
    accounts = bank.funded_pairs(CUSTOMERS, FUNDING)
    ids = ",".join("'%s'" % a for _, a in accounts)
    acct_url, pay_url, ev_url = t.db_url("account"), t.db_url("payment"), t.db_url("event")
    total_before = t.sql_int(acct_url, "SELECT sum(balance + held) FROM accounts WHERE id IN (%s)"
                             % ids)
    t.check(total_before == CUSTOMERS * 2 * FUNDING, "funded: %d" % total_before)

    stop, lock = threading.Event(), threading.Lock()
    payments, counts, kills = set(), {"payments": 0, "retries": 0, "refused": 0}, []
    workers = [threading.Thread(target=payer, args=(plat, accounts, stop, payments, counts, lock, i))
               for i in range(PAYERS)]
    stop_chaos = threading.Event()
    chaos.t0 = time.time()
    killer = threading.Thread(target=chaos, args=(deploy, env, stop_chaos, kills))
    for w in workers:
        w.start()
    killer.start()
    time.sleep(LOAD_SECONDS)
    stop.set()
    for w in workers:
        w.join(90)
    killer.join(180)
    t.say("load: %s; chaos: %s" % (counts, ", ".join(kills)))
    t.check(len(kills) == 4, "node 1 and node 2 were each killed and started again (%s)" % kills)
    t.check(counts["payments"] >= 50, "payments went through the chaos (%d)" % counts["payments"])

    t.payments_settled(acct_url, pay_url, accounts, payments, total_before, DRAIN_SECONDS)

    # Nothing lost, nothing doubled, end to end: the saga's events of these
    # payments, from both producers' outboxes, each in the audit log once.
    pids = ",".join("'%s'" % p for p in sorted(payments)) or "NULL"
    produced = set()
    for url_ in (pay_url, acct_url):
        unsent = t.sql_int(url_, "SELECT count(*) FROM outbox WHERE published_at IS NULL")
        t.check(unsent == 0, "every outbox row was published and confirmed (%d left)" % unsent)
        produced |= set(sql_big(url_, "SELECT id FROM outbox WHERE key IN (%s)" % pids).split())

    def audited():
        return set(sql_big(ev_url, "SELECT event_id FROM audit_log WHERE key IN (%s)" % pids).split())
    t.wait_for(lambda: produced <= audited(), 60, step=0.5)
    missing = produced - audited()
    t.check(not missing, "every saga event reached the audit log (%d of %d missing)"
            % (len(missing), len(produced)))
    dup = int(sql_big(ev_url, "SELECT count(*) FROM (SELECT event_id FROM audit_log WHERE key IN"
                              " (%s) GROUP BY event_id HAVING count(*) > 1) x" % pids))
    t.check(dup == 0, "no event was applied twice (%d)" % dup)
    t.say("%d saga events, each audited once" % len(produced))
    queues = rabbit(deploy, env, "ctl", "3", "-q", "list_queues", "-p", "paycore", "name", "messages")
    dead = sum(int(line.split()[-1]) for line in queues.splitlines()
               if line.split() and ".dead" in line.split()[0] and line.split()[-1].isdigit())
    dead += int(sql_big(ev_url, "SELECT count(*) FROM dead_letters WHERE key IN (%s)" % pids))
    t.check(dead == 0, "no event was dead-lettered (%d)" % dead)
    dead_letter_path(pay_url, ev_url, plat.port("event"))
    dups = t.metric_label(plat.port("event"), "inbox_events_total", 'outcome="duplicate"')
    t.say("duplicate deliveries absorbed by the event service's inbox: %s" % dups)
    t.ledger_invariants(acct_url, "after the node losses")
    for name in ("event", "payment", "account", "profile"):
        t.check(plat.proc(name).stop() in (0, None), "%s stops" % name)
    return t.finish()


if __name__ == "__main__":
    sys.exit(main())
