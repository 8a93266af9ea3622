#!/usr/bin/env python3
"""Does the audit hash chain keep up? Its lag against the event rate.

usage: bench/audit/chain_lag.py [--events N] [--build DIR]

Needs PostgreSQL (deploy/pg start; eval "$(deploy/pg env)"). The event
service runs on the scratch database event_scratch, with busd.

  1. Audit rate at saturation: N account.topped_up events are published to
     busd first (busctl, fsynced), then the event service starts and
     audits the backlog as fast as it can (one transaction per event: the
     claim, the row, the queue, the projections), while its chainer puts
     the rows into the chain. Sampled every 250 ms: events audited, rows
     waiting for the chain (the lag).
  2. Chain capacity: N more rows are queued at once by SQL, with nothing
     else running, and the time the chainer takes to place them is
     measured.

The chain keeps up when its capacity is above the audit rate (the ratio,
reported) and the lag does not grow while the event service audits at
saturation: no rate the event service can reach makes it fall behind.
Prints a table and one JSON line (also written to .run/bench-audit.json).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration", "lib"))
import paytest as t  # noqa: E402


def progress(*args):
    print(*args, file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=int(os.environ.get("BENCH_AUDIT_EVENTS",
                                                                      "20000")))
    ap.add_argument("--build", default=os.environ.get("BUILD_DIR", "build"))
    args = ap.parse_args()
    build = os.path.join(ROOT, args.build)
    bins = {"busd": os.path.join(build, "wire/busd/busd"),
            "event": os.path.join(build, "actors/event/event")}
    busctl = os.path.join(build, "wire/busd/busctl")
    keys = os.path.join(t.WORK_DIR, "keys")
    subprocess.run(["bash", os.path.join(ROOT, "deploy/certs.sh"), keys], check=True,
                   capture_output=True)
    url = t.scratch_db("event")
    plat = t.Platform(bins, env_for={"event": {
        "EVENT_DB_URL": url, "EVENT_SIGNING_KEY": os.path.join(keys, "audit/signing.pem"),
        "LOG_LEVEL": "warn", "DB_CONNS": "8", "CONSUME_IN_FLIGHT": "256"}})
    plat.start("busd")
    account = str(uuid.uuid4())
    payload = json.dumps({"account_id": account, "transaction_id": str(uuid.uuid4()),
                          "amount": 1, "currency": "EUR", "balance": 1})
    progress("publishing %d events to busd (fsynced) ..." % args.events)
    rc, _ = plat.busctl(busctl, "pub", "--topic", "account.topped_up", "--key", account,
                        "--data", payload, "--count", str(args.events), "--window", "512",
                        timeout=600)
    if rc != 0:
        progress("busctl pub failed")
        return 1

    # 1. The event service audits the backlog at its own pace.
    progress("starting the event service on the backlog ...")
    started = time.time()
    plat.start("event")
    samples = []
    while True:
        row = t.sql_rows(url, "SELECT (SELECT count(*) FROM audit_log),"
                              " (SELECT count(*) FROM audit_unchained)")[0]
        audited, lag = int(row[0]), int(row[1])
        samples.append((time.time() - started, audited, lag))
        if audited >= args.events and lag == 0:
            break
        if time.time() - started > 900:
            progress("gave up after 900 s")
            return 1
        time.sleep(0.25)
    busy = [s for s in samples if 0 < s[1] < args.events]
    t0, t1 = (busy[0], busy[-1]) if len(busy) >= 2 else (samples[0], samples[-1])
    audit_rate = (t1[1] - t0[1]) / max(t1[0] - t0[0], 0.001)
    lags = [s[2] for s in busy] or [0]
    half = len(lags) // 2
    first_half, second_half = max(lags[:half] or [0]), max(lags[half:] or [0])
    drained = samples[-1][0] - (busy[-1][0] if busy else 0)
    verify = t.jcall(plat.port("event"), "GET", "/v1/events/verify", who=("bench", "auditor"),
                     timeout=600)[1] or {}

    # 2. The chainer alone, on rows queued at once.
    plat.proc("event").stop()
    progress("queueing %d rows by SQL and timing the chainer alone ..." % args.events)
    t.sql(url, "WITH a AS (INSERT INTO audit_log (event_id, topic, key, payload, bus_partition,"
               " bus_offset, stored_at, headers) SELECT gen_random_uuid(), 'account.topped_up',"
               " '%s', '%s'::jsonb, 0, g, now(), '{}' FROM generate_series(1, %d) g"
               " RETURNING seq) INSERT INTO audit_unchained SELECT seq FROM a"
          % (account, payload, args.events))
    start2 = time.time()
    plat.proc("event").start()
    t.wait_for(lambda: t.sql_int(url, "SELECT count(*) FROM audit_unchained") == 0, 900, 0.05)
    chain_rate = args.events / max(time.time() - start2, 0.001)
    plat.proc("event").stop()

    result = {"bench": "audit", "events": args.events, "audit_events_per_s": round(audit_rate),
              "chain_rows_per_s": round(chain_rate), "ratio": round(chain_rate / audit_rate, 2)
              if audit_rate else None, "lag_max": max(lags), "lag_max_first_half": first_half,
              "lag_max_second_half": second_half, "drained_after_s": round(drained, 2),
              "verify_ok": bool(verify.get("ok")), "chain_length": verify.get("checked")}
    print("audit chain vs event rate, %d events (event service: 1 thread, DB_CONNS=8)"
          % args.events)
    print("  audit rate at saturation     %8d events/s" % result["audit_events_per_s"])
    print("  chain capacity (alone)       %8d rows/s" % result["chain_rows_per_s"])
    print("  ratio capacity / audit rate  %8.2f" % (result["ratio"] or 0))
    print("  lag while auditing: max %d (first half %d, second half %d); 0 %.2f s after the"
          " last event" % (max(lags), first_half, second_half, drained))
    print("  chain verifies: %s (%s records)" % (result["verify_ok"], result["chain_length"]))
    print(json.dumps(result))
    os.makedirs(os.path.join(ROOT, ".run"), exist_ok=True)
    with open(os.path.join(ROOT, ".run", "bench-audit.json"), "w") as f:
        f.write(json.dumps(result) + "\n")
    t.stop_all()
    shutil.rmtree(t.WORK_DIR, ignore_errors=True)
    return 0 if result["verify_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
