#!/usr/bin/env python3
"""bench/run against the whole platform, started here on free ports.

usage: test_bench_run.py BENCH_RUN_SCRIPT BENCH_RUN_BIN BUSD PROFILE ACCOUNT PAYMENT EVENT
                         GATEWAY CERTS_SH

Needs the deploy/pg URLs (eval "$(deploy/pg env)").

1. A short mixed run through the gateway (TLS, JWTs) with every check:
   requests succeeded, the invariant check ran (API and SQL) and passed,
   the JSON and the PNG were written.
2. A short closed-loop payment run straight to the services.
3. An invariant broken on purpose while a run is under way (one balance
   changed by SQL while the run only reads): the harness finds it and
   exits 3. The balance is put back afterwards, and the ledger is whole.
"""
import json
import os
import select
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import paytest as t  # noqa: E402

RUN_TIMEOUT_S = 240


class Bench:
    def __init__(self, argv):
        (self.script, self.binary, busd, profile, account, payment, event, self.gateway_bin,
         certs_sh) = argv
        self.plat = t.Platform({"busd": busd, "profile": profile, "account": account,
                                "payment": payment, "event": event})
        self.plat.start("busd", "profile", "account", "payment", "event")
        self.certs = os.path.join(t.WORK_DIR, "certs")
        subprocess.run(["bash", certs_sh, self.certs], check=True, stderr=subprocess.DEVNULL,
                       timeout=60)
        self.gw_port, gw_admin = t.free_port(), t.free_port()
        url = lambda n: "http://127.0.0.1:%d" % self.plat.port(n)  # noqa: E731
        t.Proc("gateway", [self.gateway_bin], {
            "GW_HOST": "127.0.0.1", "GW_PORT": str(self.gw_port),
            "GW_ADMIN_HOST": "127.0.0.1", "GW_ADMIN_PORT": str(gw_admin), "GW_THREADS": "1",
            "GW_TLS_CERT": os.path.join(self.certs, "tls-ecdsa.crt"),
            "GW_TLS_KEY": os.path.join(self.certs, "tls-ecdsa.key"),
            "GW_JWT_KEYS_DIR": os.path.join(self.certs, "jwt"), "AUTH_HMAC_KEY": t.KEY,
            "LOG_LEVEL": "warn", "PROFILE_URL": url("profile"), "ACCOUNT_URL": url("account"),
            "PAYMENT_URL": url("payment"), "EVENT_URL": url("event"),
        }, gw_admin).start()

    def argv(self, name, *extra):
        """The common flags: the services (for the checks), the databases,
        results in the work directory."""
        self.json = os.path.join(t.WORK_DIR, name + ".json")
        self.png = os.path.join(t.WORK_DIR, name + ".png")
        args = [self.script, "--progress", "plain", "--json", self.json, "--png", self.png,
                "--timeout", "20s", "--drain-timeout", "20s"]
        for n in ("profile", "account", "payment", "event"):
            args += ["--" + n, "127.0.0.1:%d" % self.plat.port(n), "--db-" + n, t.db_url(n)]
        return args + list(extra)

    def env(self):
        e = dict(os.environ)
        e.update({"BENCH_RUN_BIN": self.binary, "AUTH_HMAC_KEY": t.KEY,
                  "PAYCORE_RUN_DIR": t.WORK_DIR})
        return e

    def run(self, name, *extra):
        p = subprocess.run(self.argv(name, *extra), env=self.env(), capture_output=True,
                           text=True, timeout=RUN_TIMEOUT_S)
        if p.returncode != 0:
            t.say(p.stdout[-4000:])
            t.say(p.stderr[-4000:])
        return p

    def result(self):
        with open(self.json) as f:
            return json.load(f)


def checks_by_status(doc):
    out = {"pass": [], "fail": [], "skip": []}
    for c in doc["checks"]:
        out[c["status"]].append(c["name"])
    return out


def test_gateway_mixed(b):
    p = b.run("gateway", "--gateway", "127.0.0.1:%d" % b.gw_port, "--server-name", "localhost",
              "--ca", os.path.join(b.certs, "tls-ecdsa.crt"), "--customers", "4",
              "--rate", "40", "--duration", "3s", "--max-error-rate", "0%")
    t.check(p.returncode == 0, "a mixed run through the gateway exits 0 (%d)" % p.returncode)
    t.check("verdict: thresholds met, invariants hold" in p.stdout, "the table ends with the verdict")
    doc = b.result()
    run = doc["run"]
    t.check(run["ok"] >= 100 and run["errors"] == 0,
            "requests succeeded: %d ok, %d errors" % (run["ok"], run["errors"]))
    for kind in ("topup", "transfer", "payment", "read"):
        t.check(doc["latency"][kind]["count"] > 0, "mixed ran %s operations" % kind)
    t.check(run["payments_completed"] > 0, "payments were waited for until completed")
    t.check(doc["latency"]["all"]["p99_ms"] > 0, "latency percentiles were reported")
    t.check(doc["config"]["target"].startswith("https://"), "through the gateway, over TLS")
    st = checks_by_status(doc)
    t.check(doc["checked"] and not st["fail"], "no invariant check failed: %s" % st["fail"])
    names = " | ".join(st["pass"])
    for what in ("harness's own model (API)", "harness's own model (SQL)",
                 "money unchanged by transfers and payments", "sums to zero per currency",
                 "money moved only by top-ups", "every payment final", "no open holds",
                 "below its overdraft", "outbox drained in every service database"):
        t.check(what in names, "the check ran and passed: %s" % what)
    t.check(len(doc["per_second"]) >= 3, "a throughput figure per second")
    with open(b.png, "rb") as f:
        t.check(f.read(8) == b"\x89PNG\r\n\x1a\n", "the chart is a PNG")


def test_direct_payments(b):
    p = b.run("direct", "--direct", "--scenario", "payment", "--clients", "4",
              "--customers", "2", "--duration", "2s")
    t.check(p.returncode == 0, "a closed-loop payment run straight to the services exits 0 (%d)"
            % p.returncode)
    doc = b.result()
    t.check(doc["config"]["loop"] == "closed" and doc["run"]["payments_completed"] > 0,
            "payments completed in the closed loop (%d)" % doc["run"]["payments_completed"])
    t.check(doc["latency"]["payment"]["count"] == doc["run"]["ok"], "only payments ran")
    t.check(not checks_by_status(doc)["fail"], "its invariant check passed")


def test_one_step(b):
    """A stepped open loop whose run is exactly one step long."""
    p = b.run("one-step", "--direct", "--scenario", "topup", "--customers", "2", "--rate", "20",
              "--step-rate", "10", "--step-every", "2s", "--duration", "2s")
    t.check(p.returncode == 0, "a stepped run one step long exits 0 (%d)" % p.returncode)
    steps = b.result().get("steps") or []
    t.check(len(steps) == 1 and steps[0]["rate"] == 20 and steps[0]["ok"] > 0,
            "one step, at the first rate: %s" % steps)


def test_broken_invariant(b):
    """One balance changed behind the platform's back while a run goes on:
    the model and the per-currency sum both see it. The run only reads, so
    no ledger line is written on top of the change, and taking it back
    leaves the ledger as it was (the other tests check it whole)."""
    args = b.argv("broken", "--direct", "--customers", "3", "--scenario", "read",
                  "--rate", "30", "--duration", "3s")
    proc = subprocess.Popen(args, env=b.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    url = t.db_url("account")
    target = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stderr], [], [], 1.0)
        if ready and proc.stderr.readline().startswith("phase: run"):
            # The run's setup is over: its last account is the newest one.
            target = t.sql(url, "SELECT id FROM accounts WHERE kind = 'customer'"
                                " ORDER BY created_at DESC, id LIMIT 1")
            t.sql(url, "UPDATE accounts SET balance = balance + 1 WHERE id = '%s'" % target)
            break
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    if target:
        t.sql(url, "UPDATE accounts SET balance = balance - 1 WHERE id = '%s'" % target)
    t.check(target is not None, "the run reached its load phase and a balance was changed")
    t.check(proc.returncode == 3, "the harness exits 3 on a broken invariant (%s)" % proc.returncode)
    t.check("FAIL" in out and "verdict: " in out, "the table says which check failed")
    st = checks_by_status(b.result())
    failed = " | ".join(st["fail"])
    t.check("harness's own model (API)" in failed, "the model check saw the balance: %s" % failed)
    t.check("harness's own model (SQL)" in failed, "so did the SQL one: %s" % failed)
    t.check("sums to zero per currency" in failed, "the per-currency sum saw it: %s" % failed)
    t.check(target and target in json.dumps(b.result()), "the account changed is named")
    t.ledger_invariants(url, "after the change was taken back")


def main():
    b = Bench(sys.argv[1:10])
    for test in (test_gateway_mixed, test_direct_payments, test_one_step, test_broken_invariant):
        t.say("== " + test.__name__)
        try:
            test(b)
        except Exception as e:  # noqa: BLE001 - a crashed test is a failed check
            t.check(False, "%s raised %r" % (test.__name__, e))
    return t.finish()


if __name__ == "__main__":
    sys.exit(main())
