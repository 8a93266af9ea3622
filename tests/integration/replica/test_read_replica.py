#!/usr/bin/env python3
"""Reads that may be stale go to a streaming replica; money stays on the
primary.

usage: test_read_replica.py DEPLOY_PG PROFILE ACCOUNT PAYMENT

A private primary with one replica (deploy/pg start --replicas 1 in a
directory of the test's own). profile, account and payment run with
<SVC>_DB_URL on the primary and <SVC>_DB_READ_URL as deploy/pg env prints
it (the replica, then the primary, target_session_attrs=prefer-standby),
with the bus off. Then:

  - the read pools' connections are on the replica (pg_stat_activity
    there shows account-read, profile-read, payment-read) and not on the
    primary;
  - WAL replay on the replica is paused (pg_wal_replay_pause()). A new
    customer, account, top-up, transfer and payment are answered by the
    primary, and the reads that decide money see them at once (the
    account's balance, the transfer refused past it, the payment by id).
    The lists (customers, accounts, payments) and the new account's
    ledger page do not show them: they come from the replica, which is
    behind while the primary has the rows;
  - replay resumes, and the lists and the ledger catch up;
  - a host that accepts connections and never answers, listed first in a
    read URL, does not keep a pool from the hosts after it: each connect
    attempt that times out starts the next one at the next host;
  - the replica is killed with SIGKILL: the read pools reconnect by
    themselves to the next host of the URL, the primary, and the lists
    answer again with everything in them.
"""
import os
import socket
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import paytest as t  # noqa: E402
import pgcluster  # noqa: E402


def app_names(url):
    return t.sql_set(url, "SELECT DISTINCT application_name FROM pg_stat_activity"
                          " WHERE backend_type = 'client backend' AND application_name <> ''")


LAST_ERROR = []


def list_ids(port, path, who):
    """Every id of a list, following the cursor: None when not answered 200
    (the answer is kept in LAST_ERROR)."""
    ids, cursor = [], None
    for _ in range(1000):
        p = path + ("&" if "?" in path else "?") + "limit=100" + (
            "&cursor=" + cursor if cursor else "")
        s, d, text, _ = t.jcall(port, "GET", p, who=who)
        if s != 200:
            LAST_ERROR[:] = [s, text[:300]]
            return None
        ids += [i["id"] for i in d["items"]]
        cursor = d["next_cursor"]
        if not cursor:
            return ids
    return None


def main():
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    deploy_pg, profile, account, payment = sys.argv[1:]
    pgcluster.pg_bin()
    pgcluster.need_programs("psql")
    cluster = pgcluster.Cluster(deploy_pg, replicas=1)
    pgcluster.watchdog(200, cluster)
    cluster.start()
    cluster.export()
    u = cluster.urls
    replica = cluster.replica_ports()[0]
    t.check("127.0.0.1:%d," % replica in u["ACCOUNT_DB_READ_URL"]
            and "target_session_attrs=prefer-standby" in u["ACCOUNT_DB_READ_URL"],
            "deploy/pg env prints a read URL: the replica first, the primary last")
    rep_admin = cluster.admin(replica)
    t.check(t.sql(rep_admin, "SELECT pg_is_in_recovery()") == "t", "the replica is a standby")

    env_for = {name: {"%s_DB_READ_URL" % name.upper(): u["%s_DB_READ_URL" % name.upper()]}
               for name in ("profile", "account", "payment")}
    plat = t.Platform({"profile": profile, "account": account, "payment": payment}, bus=False,
                      env_for=env_for)
    plat.start("profile", "account", "payment")
    bank = t.Bank(plat.port("profile"), plat.port("account"))
    op = ("op-1", "operator")
    cust = bank.new_customer()
    a1 = bank.new_account(cust, funded=10000)
    a2 = bank.new_account(cust)
    me = (cust, "customer")
    ap, pp, yp = plat.port("account"), plat.port("profile"), plat.port("payment")

    # The read pools connect in the background; lists answer from the
    # primary meanwhile. Once connected, they are on the replica.
    want = {"account-read", "profile-read", "payment-read"}
    t.check(t.wait_for(lambda: want <= app_names(rep_admin), 30, step=0.2),
            "the read pools are connected to the replica (%s)" % sorted(app_names(rep_admin)))
    on_primary = app_names(cluster.admin())
    t.check(not (want & on_primary) and {"account", "profile", "payment"} <= on_primary,
            "the primary has the services' own pools and no read pool (%s)" % sorted(on_primary))
    t.check(t.wait_for(lambda: a1 in (list_ids(ap, "/v1/accounts", me) or []), 10),
            "the account list, read on the replica, shows the funded account")
    before = t.metric(ap, "pg_read_batches_total") or 0
    list_ids(ap, "/v1/accounts", me)
    t.check((t.metric(ap, "pg_read_batches_total") or 0) > before,
            "a list is a batch of the read pool (pg_read_batches_total)")

    # Stop the replica's clock: it receives WAL but applies none.
    t.sql(rep_admin, "SELECT pg_wal_replay_pause()")
    t.check(t.wait_for(lambda: t.sql(rep_admin, "SELECT pg_get_wal_replay_pause_state()")
                       == "paused", 10), "replay is paused on the replica")
    cust2 = bank.new_customer()
    a3 = bank.new_account(cust, funded=5000)
    s, d, text, _ = t.jcall(ap, "POST", "/v1/transfers",
                            {"from_account_id": a3, "to_account_id": a2, "amount": 1500,
                             "currency": "EUR"}, who=me,
                            headers={"Idempotency-Key": "rr-" + uuid.uuid4().hex})
    t.check(s == 201, "a transfer from the new account is answered by the primary: %d %s"
            % (s, text))
    s, d, text, _ = t.jcall(ap, "POST", "/v1/transfers",
                            {"from_account_id": a3, "to_account_id": a2, "amount": 3501,
                             "currency": "EUR"}, who=me,
                            headers={"Idempotency-Key": "rr-" + uuid.uuid4().hex})
    t.check(s == 422, "one past the balance is refused: the decision reads the primary (%d %s)"
            % (s, text))
    t.check(bank.balance(cust, a3) == 3500, "GET /v1/accounts/{id} (primary) shows 3500")
    s, pay, text, _ = t.jcall(yp, "POST", "/v1/payments",
                              {"from_account_id": a1, "to_account_id": a2, "amount": 100,
                               "currency": "EUR"}, who=me,
                              headers={"Idempotency-Key": "rr-" + uuid.uuid4().hex})
    t.check(s == 202, "a payment is accepted (%d %s)" % (s, text))
    pay_id = pay["id"] if pay else ""
    s, _, _, _ = t.jcall(yp, "GET", "/v1/payments/" + pay_id, who=me)
    t.check(s == 200, "GET /v1/payments/{id} (primary) finds it at once")
    acct_url = u["ACCOUNT_DB_URL"]
    t.check(t.sql_int(acct_url, "SELECT count(*) FROM accounts WHERE id = '%s'" % a3) == 1,
            "the primary has the new account")

    accounts = list_ids(ap, "/v1/accounts", me) or []
    t.check(a1 in accounts and a3 not in accounts,
            "the account list comes from the paused replica: the new account is not in it yet")
    t.check(cust2 not in (list_ids(pp, "/v1/customers", op) or [cust2]),
            "the customer list comes from the replica: the new customer is not in it yet")
    payments = list_ids(yp, "/v1/payments", me)
    t.check(payments is not None and pay_id not in payments,
            "the payment list comes from the replica: the new payment is not in it yet (%s)"
            % (LAST_ERROR if payments is None else len(payments)))
    s, _, _, _ = t.jcall(ap, "GET", "/v1/accounts/%s/transactions" % a3, who=me)
    t.check(s == 404, "the new account's ledger page comes from the replica, which has no such"
            " account yet (%d)" % s)

    t.sql(rep_admin, "SELECT pg_wal_replay_resume()")
    t.check(t.wait_for(lambda: a3 in (list_ids(ap, "/v1/accounts", me) or []), 20, step=0.2),
            "after replay resumes, the account list shows the new account")
    t.check(t.wait_for(lambda: pay_id in (list_ids(yp, "/v1/payments", me) or []), 20, step=0.2),
            "and the payment list the new payment")
    lines = bank.statement(me, a3)
    t.check([x["amount"] for x in lines] == [5000, -1500],
            "and the ledger page the new account's two lines (%s)"
            % [x["amount"] for x in lines])

    # A host that hangs (accepts, never answers: a machine gone rather
    # than a server down) listed first: the pool's connect timeout moves
    # the next attempt on to the following host, the replica.
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(64)
    held = []
    threading.Thread(target=lambda: [held.append(hang.accept()) for _ in range(64)],
                     daemon=True).start()
    rot_url = u["ACCOUNT_DB_READ_URL"].replace(
        "@127.0.0.1:", "@127.0.0.1:%d,127.0.0.1:" % hang.getsockname()[1], 1)
    rot_url += "&application_name=account-rotated"
    rot_port = t.free_port()
    env = plat.env("account")
    env.update({"ACCOUNT_PORT": str(rot_port), "ACCOUNT_DB_READ_URL": rot_url,
                "DB_CONNECT_TIMEOUT": "1s", "BUS_ADDR": "off"})
    rotated = t.Proc("account-rotated", [account], env, rot_port).start()
    t.check(t.wait_for(lambda: "account-rotated" in app_names(rep_admin), 30, step=0.2),
            "with a hanging host first in the read URL, the read pool still reaches the"
            " replica (the next attempt starts at the next host)")
    t.check(rotated.stop() == 0, "that account service stops cleanly")
    hang.close()
    for c, _ in held:
        c.close()

    # The replica goes away: the read pools find the primary, the last host.
    cluster.run("kill9", "replica1")
    t0 = time.time()
    ok = t.wait_for(lambda: a3 in (list_ids(ap, "/v1/accounts", me) or []), 60, step=0.2)
    t.check(ok, "with the replica killed, the account list answers again (from the primary)")
    t.say("lists answered again %.1f s after the replica was killed" % (time.time() - t0))
    t.check(t.wait_for(lambda: "account-read" in app_names(cluster.admin()), 30, step=0.2),
            "the read pool has moved to the primary by itself")
    t.check(cust2 in (list_ids(pp, "/v1/customers", op) or []),
            "the customer list answers with the new customer")

    for name in ("payment", "account", "profile"):
        t.check(plat.proc(name).stop() == 0, "%s stops cleanly" % name)
    cluster.stop()
    return t.finish()


if __name__ == "__main__":
    sys.exit(main())
