#!/usr/bin/env python3
"""The skeleton's consumer table, with real busd and PostgreSQL.

usage: test_consume.py BUSD BUSCTL PROBE ACCOUNT PROFILE EVENT

Needs PROBE_DB_URL, ACCOUNT_DB_URL, PROFILE_DB_URL and EVENT_DB_URL
(eval "$(deploy/pg env)"). The probe service (probe.c) consumes
payment.requested and payment.cancelled into a state machine of guarded
transitions; events are published into busd on purpose with busctl.

1. One event delivered twice: one effect; the duplicate is counted.
2. Two events delivered out of order (the cancel before the request):
   one effect each at most: the cancel makes a tombstone, the late
   request is absorbed (counted per type), nothing applied twice.
3. A handler that keeps failing: the event is NACKed, retried, and
   dead-lettered after exactly BUSD_MAX_ATTEMPTS deliveries, with the
   handler's reason in x-dead-error, although busd is killed with SIGKILL
   and restarted between attempts (the count goes on from where it was).
4. Long-polls parked on three loop threads are woken by the event applied
   on thread 0 (the cross-thread notify) long before their deadline; one
   with nothing to wait for answers at its deadline. The loops, sized from
   the configuration, show on /metrics what they held and that nothing
   was refused.
6. Many deliveries to one transaction (payment.completed, the probe's
   apply_many consumer, with a long batch window): a duplicate in the
   burst applies once and is counted; one event that makes its batch fail
   sends the others of that batch back one by one: each of them applies
   once, and only that one is NACKed, with the database's reason.
5. Correlation: an X-Request-Id on an HTTP request comes back on the
   answer, is in the outbox row's headers, in the event's bus headers and
   the audit log, and in log lines of every process that handled the
   request or its event; an event caused by an event carries its cause's
   correlation id and names it as causation.
"""
import json
import os
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import paytest as t  # noqa: E402

MAX_ATTEMPTS = 4
BACKOFF_MS = 1500
BATCH_WINDOW_MS = 1500  # the probe's: the test's burst joins one batch


def uuid7():
    ms = int(time.time() * 1000)
    r = uuid.uuid4().int
    v = (ms << 80) | (0x7 << 76) | (r & ((1 << 76) - 1))
    v = (v & ~(0xC << 60)) | (0x8 << 60)
    return str(uuid.UUID(int=v))


def item(plat, pid):
    s, d, _, _ = t.jcall(plat.port("probe"), "GET", "/probe/items/" + pid)
    return d if s == 200 else None


def counter(plat, name):
    return t.metric(plat.port("probe"), name) or 0


def test_duplicate(plat, busctl):
    pid, eid = "pay-dup-" + uuid.uuid4().hex[:8], uuid7()
    before = counter(plat, 'inbox_events_total{outcome="duplicate"}')
    for _ in range(2):
        plat.publish(busctl, "payment.requested", pid, {"payment_id": pid}, event_id=eid)
    t.wait_for(lambda: counter(plat, 'inbox_events_total{outcome="duplicate"}') > before, 20)
    it = item(plat, pid)
    t.check(it is not None and it["state"] == "requested" and it["effects"] == 1,
            "an event delivered twice has one effect (%s)" % it)
    t.check(counter(plat, 'inbox_events_total{outcome="duplicate"}') == before + 1,
            "the second delivery is counted as a duplicate")


def test_out_of_order(plat, busctl, url):
    pid = "pay-ooo-" + uuid.uuid4().hex[:8]
    absorbed = 'svc_events_total{type="payment.requested",outcome="absorbed"}'
    before = t.metric_label(plat.port("probe"), "svc_events_total",
                            'type="payment.requested",outcome="absorbed"') or 0
    plat.publish(busctl, "payment.cancelled", pid, {"payment_id": pid}, event_id=uuid7())
    t.wait_for(lambda: item(plat, pid) is not None, 20)
    plat.publish(busctl, "payment.requested", pid, {"payment_id": pid}, event_id=uuid7())
    t.wait_for(lambda: (t.metric_label(plat.port("probe"), "svc_events_total",
                                       'type="payment.requested",outcome="absorbed"') or 0) > before,
               20)
    it = item(plat, pid)
    t.check(it is not None and it["state"] == "cancelled" and it["effects"] == 1,
            "cancel before request: a tombstone, the late request changes nothing (%s)" % it)
    after = t.metric_label(plat.port("probe"), "svc_events_total",
                           'type="payment.requested",outcome="absorbed"') or 0
    t.check(after == before + 1, "the late request is counted as absorbed (%s)" % absorbed)
    kinds = t.sql(url, "SELECT string_agg(kind, ',' ORDER BY kind) FROM probe_effects"
                       " WHERE item = '%s'" % pid)
    t.check(kinds == "cancelled", "effects: the cancel only (%s)" % kinds)


def nack_attempts(probe, event_id):
    return [r.get("attempt") for r in probe.log_records()
            if r.get("msg") == "event not applied, NACKed" and r.get("event") == event_id]


def test_dead_letter(plat, busctl):
    pid, eid = "pay-dead-" + uuid.uuid4().hex[:8], uuid7()
    probe, busd = plat.proc("probe"), plat.proc("busd")
    plat.publish(busctl, "payment.authorized", pid, {"payment_id": pid}, event_id=eid)
    t.check(t.wait_for(lambda: len(nack_attempts(probe, eid)) >= 2, 30),
            "the failing handler NACKs twice")
    time.sleep(0.4)  # the second failure is on busd's disk well before its retry
    busd.kill9()
    busd.start()
    t.say("busd killed with SIGKILL after 2 failed deliveries, and restarted")
    dead = plat.read_topic(busctl, "payment.authorized.dead", "test-dead-" + uuid.uuid4().hex[:6],
                           2, timeout=20)
    # The account service, which consumes payment.* too, gives up on this
    # made-up event as well: only the probe's dead letter is looked at.
    mine = [d for d in dead if d[1] == eid and d[3].get("x-dead-group") == "probe"]
    t.check(len(mine) == 1, "the event is in payment.authorized.dead (%d)" % len(mine))
    time.sleep(2 * BACKOFF_MS / 1000.0)  # no further delivery may come
    attempts = nack_attempts(probe, eid)
    t.check(attempts == list(range(1, MAX_ATTEMPTS + 1)),
            "exactly %d deliveries, numbered across the restart: %s" % (MAX_ATTEMPTS, attempts))
    if mine:
        h = mine[0][3]
        t.check(h.get("x-dead-attempts") == str(MAX_ATTEMPTS),
                "x-dead-attempts says %d (%s)" % (MAX_ATTEMPTS, h.get("x-dead-attempts")))
        t.check("schema" in h.get("x-dead-error", ""),
                "x-dead-error gives the handler's reason (%s)" % h.get("x-dead-error"))
        t.check(h.get("x-dead-group") == "probe", "x-dead-group names the consumer group")


def test_long_poll(plat, busctl):
    pid = "pay-poll-" + uuid.uuid4().hex[:8]
    results = []

    def poll():
        t0 = time.time()
        s, d, _, _ = t.jcall(plat.port("probe"), "GET", "/probe/items/%s?wait=20000" % pid,
                             timeout=30)
        results.append((s, (d or {}).get("state"), time.time() - t0))

    threads = [threading.Thread(target=poll) for _ in range(6)]
    for th in threads:
        th.start()
    time.sleep(0.5)  # all parked
    plat.publish(busctl, "payment.requested", pid, {"payment_id": pid}, event_id=uuid7())
    time.sleep(0.3)
    plat.publish(busctl, "payment.cancelled", pid, {"payment_id": pid}, event_id=uuid7())
    for th in threads:
        th.join(40)
    t.say("long-polls answered after %s s" % ", ".join("%.2f" % r[2] for r in results))
    t.check(len(results) == 6 and all(r[0] == 200 and r[1] == "cancelled" for r in results),
            "every long-poll answers the final state (%s)" % results)
    t.check(all(r[2] < 10 for r in results), "woken by the event, not by their 20 s deadline")
    t0 = time.time()
    s, _, _, _ = t.jcall(plat.port("probe"), "GET", "/probe/items/never-%s?wait=600" % pid)
    took = time.time() - t0
    t.check(s == 404 and 0.55 <= took < 5, "nothing to wait for: answered at the deadline"
            " (%d after %.2f s)" % (s, took))


def test_loop_limits(plat):
    port = plat.port("probe")
    cap = t.metric_label(port, "rt_loop_capacity", 'resource="timers"')
    t.check(cap is not None and 0 < cap < 3 * 65536,
            "the loops are sized from the configuration (%s timers on 3 threads)" % cap)
    armed = t.metric_label(port, "rt_loop_in_use_max", 'resource="timers"')
    t.check(armed is not None and armed >= 6,
            "the parked long-polls' deadlines were counted (%s timers at most)" % armed)
    for what in ("timers", "messages", "recv_buffers"):
        n = t.metric_label(port, "rt_loop_exhausted_total", 'resource="%s"' % what)
        t.check(n == 0, "none of the loops ran out of %s (%s)" % (what, n))


def records_with(proc, rid):
    return [r for r in proc.log_records() if r.get("rid") == rid]


def test_correlation(plat, busctl, urls):
    bank = t.Bank(plat.port("profile"), plat.port("account"))
    cust = bank.new_customer()
    acc = bank.new_account(cust)
    rid = "corr-" + uuid.uuid4().hex[:12]
    s, d, _, h = t.jcall(plat.port("account"), "POST", "/v1/accounts/%s/topups" % acc,
                         {"amount": 500, "currency": "EUR"}, who=(cust, "customer"),
                         headers={"X-Request-Id": rid, "Idempotency-Key": uuid.uuid4().hex})
    t.check(s == 201 and h.get("x-request-id") == rid, "the answer echoes X-Request-Id (%d)" % s)
    hdr = t.sql(urls["account"], "SELECT headers::text FROM outbox WHERE topic = 'account.topped_up'"
                                 " AND key = '%s'" % acc)
    headers = json.loads(hdr) if hdr else {}
    t.check(headers.get("correlation-id") == rid and headers.get("type") == "account.topped_up"
            and headers.get("schema-version") == "1" and headers.get("causation-id") == ""
            and len(headers.get("event-id", "")) == 36 and headers.get("occurred-at"),
            "the outbox row carries the event's headers (%s)" % headers)
    ok = t.wait_for(lambda: t.sql(urls["event"], "SELECT count(*) FROM audit_log WHERE"
                                                 " correlation_id = '%s'" % rid) == "1", 20)
    t.check(ok, "the audit log has the event under its correlation id")
    # The list shows chained records; the chainer follows the log a moment later.
    found = {}

    def listed():
        found["s"], found["d"], _, _ = t.jcall(plat.port("event"), "GET",
                                               "/v1/events?correlation_id=" + rid,
                                               who=("aud-1", "auditor"))
        return found["s"] == 200 and len(found["d"]["items"]) > 0

    t.wait_for(listed, 20)
    s, d = found["s"], found["d"]
    t.check(s == 200 and len(d["items"]) == 1 and d["items"][0]["headers"]["correlation-id"] == rid,
            "GET /v1/events?correlation_id= finds it (%d)" % s)
    for name in ("account", "event"):
        t.check(len(records_with(plat.proc(name), rid)) > 0,
                "%s wrote log lines with the correlation id" % name)

    # An event caused by an event: the probe's payment.failed.
    pid, cause = "pay-corr-" + uuid.uuid4().hex[:8], uuid7()
    corr = "corr-" + uuid.uuid4().hex[:12]
    plat.publish(busctl, "payment.requested", pid, {"payment_id": pid}, event_id=uuid7(),
                 headers={"correlation-id": corr})
    t.wait_for(lambda: item(plat, pid) is not None, 20)
    plat.publish(busctl, "payment.cancelled", pid, {"payment_id": pid}, event_id=cause,
                 headers={"correlation-id": corr})
    t.wait_for(lambda: (item(plat, pid) or {}).get("state") == "cancelled", 20)
    ok = t.wait_for(lambda: t.sql(urls["event"], "SELECT count(*) FROM audit_log WHERE topic ="
                                                 " 'payment.failed' AND key = '%s'" % pid) == "1", 20)
    t.check(ok, "the follow-up event reached the audit log")
    row = t.sql(urls["event"], "SELECT headers::text FROM audit_log WHERE topic = 'payment.failed'"
                               " AND key = '%s'" % pid)
    hh = json.loads(row) if row else {}
    t.check(hh.get("correlation-id") == corr and hh.get("causation-id") == cause,
            "the follow-up keeps the correlation id and names its cause (%s)" % hh)
    t.check(len(records_with(plat.proc("probe"), corr)) > 0,
            "the probe's log lines for that event carry its correlation id")
    t.check(t.sql_int(urls["event"], "SELECT count(*) FROM audit_log WHERE correlation_id = '%s'"
                      % corr) == 3, "an auditor pulls the three events of that flow by correlation")


def test_batch(plat, busctl, url):
    tag = "pay-batch-" + uuid.uuid4().hex[:8]
    probe = plat.proc("probe")
    ids, poison = [uuid7() for _ in range(6)], uuid7()
    dup = 'inbox_events_total{outcome="duplicate"}'
    before = counter(plat, dup)
    started = time.time()
    for i, eid in enumerate(ids):
        plat.publish(busctl, "payment.completed", tag, {"payment_id": tag, "n": i}, event_id=eid)
        if i == 2:
            plat.publish(busctl, "payment.completed", tag, {"payment_id": tag, "n": "x"},
                         event_id=poison)
    plat.publish(busctl, "payment.completed", tag, {"payment_id": tag, "n": 0}, event_id=ids[0])
    t.say("8 events published in %.2f s (the probe's batch window: %s ms)"
          % (time.time() - started, BATCH_WINDOW_MS))

    def effects():
        return t.sql_rows(url, "SELECT event_id::text, count(*) FROM probe_effects"
                               " WHERE item = '%s' GROUP BY 1" % tag)
    t.check(t.wait_for(lambda: len(effects()) >= len(ids) and counter(plat, dup) > before, 30),
            "the batched events are applied")
    rows = dict((r[0], int(r[1])) for r in effects())
    t.check(sorted(rows) == sorted(ids) and set(rows.values()) == {1},
            "each good event has exactly one effect, the poisoned one none: %s" % rows)
    t.check(counter(plat, dup) == before + 1, "the duplicate is counted once (%s)"
            % (counter(plat, dup) - before))
    split = [r for r in probe.log_records()
             if r.get("msg") == "event batch refused, its events go again one by one"]
    t.check(split and all(r.get("events", 0) >= 2 for r in split) and
            split[0].get("sqlstate") == "22P02",
            "the poisoned batch was split, with the database's reason: %s" % split[:2])
    t.check(t.wait_for(lambda: len(nack_attempts(probe, poison)) >= 1, 20),
            "the poisoned event alone is NACKed")
    nacked = set(r.get("event") for r in probe.log_records()
                 if r.get("msg") == "event not applied, NACKed" and r.get("type") ==
                 "payment.completed")
    t.check(nacked == {poison}, "no other event of the batch is NACKed: %s" % nacked)


def main():
    if len(sys.argv) != 7:
        print(__doc__, file=sys.stderr)
        return 2
    busd, busctl, probe, account, profile, event = sys.argv[1:]
    plat = t.Platform({"busd": busd, "probe": probe, "account": account, "profile": profile,
                       "event": event},
                      extra_env={"LOG_LEVEL": "debug"},
                      env_for={"busd": {"BUSD_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
                                        "BUSD_RETRY_BACKOFF_MS": str(BACKOFF_MS),
                                        "BUSD_RETRY_BACKOFF_MAX_MS": str(BACKOFF_MS),
                                        "BUSD_PARTITIONS": "2"},
                               "probe": {"PROBE_FAIL_TYPE": "payment.authorized",
                                         "PROBE_THREADS": "3",
                                         "CONSUME_BATCH_WINDOW": "%dms" % BATCH_WINDOW_MS}})
    plat.start("busd", "probe", "profile", "account", "event")
    urls = {n: t.db_url(n) for n in ("probe", "account", "event")}
    t.run_cases((("duplicate", lambda: test_duplicate(plat, busctl)),
                 ("out of order", lambda: test_out_of_order(plat, busctl, urls["probe"])),
                 ("dead letter across a busd crash", lambda: test_dead_letter(plat, busctl)),
                 ("long-polls across threads", lambda: test_long_poll(plat, busctl)),
                 ("the loops' limits", lambda: test_loop_limits(plat)),
                 ("correlation", lambda: test_correlation(plat, busctl, urls)),
                 ("many deliveries, one transaction", lambda: test_batch(plat, busctl,
                                                                         urls["probe"]))))
    for name in ("event", "account", "profile", "probe"):
        t.check(plat.proc(name).stop() == 0, "%s drains and exits 0" % name)
    return t.finish()


if __name__ == "__main__":
    sys.exit(main())
