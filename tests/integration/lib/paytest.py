"""The shared harness of the Python integration tests.

Real processes on free loopback ports, real PostgreSQL (the URLs come from
`deploy/pg env`), plain HTTP with the identity headers the gateway would
sign. A test imports this module, starts what it needs with Proc or
Platform, checks with check() (or check_named(), which also reports the
checks that pass), and ends with finish(), which prints "N passed,
N failed" and the exit status. Everything started here is stopped at exit,
whatever happened to the test. The gateway's tests reach it through their
own fixtures (gateway/gwtest.py).
"""
import atexit
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid

import ledger  # noqa: E402 (this folder is on sys.path with paytest)
import stopped  # noqa: E402

KEY = "integration-test-key-%s" % uuid.uuid4().hex
WORK_DIR = tempfile.mkdtemp(prefix="paytest-")
PROCS = []
_counts = {"passed": 0, "failed": 0}


def check(cond, what):
    """Counts one check; prints where a failed one was made."""
    if cond:
        _counts["passed"] += 1
    else:
        _counts["failed"] += 1
        frame = traceback.extract_stack(limit=2)[0]
        print("%s:%d: check failed: %s" % (os.path.basename(frame.filename), frame.lineno, what),
              file=sys.stderr, flush=True)
    return cond


def check_named(name, cond, detail=""):
    """Counts one check and reports it by name on stderr, passed or not;
    cond may be a callable (an exception it raises is a failure)."""
    try:
        ok = bool(cond() if callable(cond) else cond)
    except Exception as e:  # noqa: BLE001 - a broken check is a failed check
        ok, detail = False, "%s: %r" % (detail, e) if detail else repr(e)
    if ok:
        _counts["passed"] += 1
        print("ok   " + name, file=sys.stderr)
    else:
        _counts["failed"] += 1
        print("FAIL " + name + (" -- " + str(detail) if detail else ""), file=sys.stderr)
    return ok


def failed():
    return _counts["failed"]


def finish(keep_logs_on_failure=True, keep_logs=False):
    """Stops everything, prints the counts, returns the exit status. The
    work directory (logs) is removed unless kept."""
    stop_all()
    print("%d passed, %d failed" % (_counts["passed"], _counts["failed"]), flush=True)
    if keep_logs or (_counts["failed"] and keep_logs_on_failure):
        print("logs kept in " + WORK_DIR, file=sys.stderr)
    else:
        shutil.rmtree(WORK_DIR, ignore_errors=True)
    return 1 if _counts["failed"] or _counts["passed"] == 0 else 0


def skip(why):
    """Ends the test as skipped (exit status 77, as meson counts it)."""
    print("skipped: " + why, flush=True)
    stop_all()
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    sys.exit(77)


def need(*programs):
    """Skips the test unless every program is installed."""
    for prog in programs:
        if shutil.which(prog) is None:
            skip(prog + " not installed")


def run_cases(cases):
    """Runs each (name, fn) in turn; one that raises is a failed check (its
    traceback on stderr) and the rest still run."""
    for name, fn in cases:
        say("== " + name)
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - a crash is a failure, the rest still runs
            traceback.print_exc()
            check(False, "%s raised %r" % (name, e))


def say(*args):
    print(*args, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(pred, seconds, step=0.05):
    """True once pred() is, within `seconds`. An exception pred raises (a
    connection refused while a server starts) counts as not yet."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if pred():
                return True
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


# ---------------------------------------------------------------------------
# Processes


class Proc:
    """One child process; GET health_path on health_port answers 200 when
    it is ready (health_port None: start() does not wait). Its output goes
    to WORK_DIR/<name>.log (appended across restarts). new_session puts it
    in a session of its own, out of reach of signals sent to the test's
    process group: stop_all() stops it."""

    def __init__(self, name, argv, env, health_port, health_path="/healthz", new_session=False):
        self.name, self.argv, self.env = name, list(argv), dict(env)
        self.health_port, self.health_path = health_port, health_path
        self.new_session = new_session
        self.proc = None
        self.log_path = os.path.join(WORK_DIR, name + ".log")
        PROCS.append(self)

    def start(self, timeout=60):
        env = dict(os.environ)
        env.update(self.env)
        self.log_offset = stopped.log_size(self.log_path)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=env, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL,
                                         start_new_session=self.new_session)
        if self.health_port is None:
            return self
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s:\n%s" % (self.name, self.proc.returncode,
                                                              self.log_tail()))
            try:
                if call(self.health_port, "GET", self.health_path, timeout=1)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("%s not ready in %ds:\n%s" % (self.name, timeout, self.log_tail()))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, wait_s=20):
        """SIGTERM, wait_s to drain, then SIGKILL. Returns the exit status
        (None when it had to be killed). A drain that left pooled objects
        or messages out is a failed check."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None
        left, line = stopped.leftovers(self.log_path, self.log_offset)
        check(left == 0, "%s stops with nothing left over: %s" % (self.name, line))
        return rc

    def log_tail(self, n=20):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_records(self):
        """The JSON log lines of the process, parsed."""
        out = []
        for line in self.log_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


def stop_all():
    for p in reversed(PROCS):
        try:
            p.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


atexit.register(stop_all)


def stop_on_signals():
    """On SIGTERM (meson's timeout) or SIGINT: stop everything, exit 1."""
    def handler(signum, frame):
        print("interrupted (signal %d)" % signum, file=sys.stderr, flush=True)
        stop_all()
        os._exit(1)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def watchdog(seconds):
    """Ends the test, and everything it started, after `seconds`."""
    def fire():
        print("watchdog: test took more than %ds" % seconds, file=sys.stderr, flush=True)
        stop_all()
        os._exit(1)
    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


# ---------------------------------------------------------------------------
# HTTP with the identity headers the gateway signs


def identity_signature(subject, roles, method, path, ts, key=None):
    """The HMAC-SHA256 the gateway puts in X-Auth-Signature (wire/http.h):
    over subject|roles|method|path without the query|timestamp."""
    msg = "%s|%s|%s|%s|%s" % (subject, roles, method, path.split("?")[0], ts)
    return hmac.new((key or KEY).encode(), msg.encode(), hashlib.sha256).hexdigest()


def auth_headers(method, path, subject, roles, ts=None, key=None):
    ts = str(int(time.time()) if ts is None else ts)
    return {"X-Auth-Subject": subject, "X-Auth-Roles": roles, "X-Auth-Timestamp": ts,
            "X-Auth-Signature": identity_signature(subject, roles, method, path, ts, key)}


def call(port, method, path, body=None, who=None, headers=None, timeout=10, conn=None):
    """One request: (status, text, headers lower-cased). who = (subject,
    roles); body: dict (JSON), str or bytes."""
    h = {"Content-Type": "application/json"}
    if who is not None:
        h.update(auth_headers(method, path, who[0], who[1]))
    if headers:
        h.update(headers)
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        return r.status, data.decode(errors="replace"), {k.lower(): v for k, v in r.getheaders()}
    finally:
        if own:
            c.close()


def jcall(*args, **kw):
    """As call(), with the body parsed: (status, doc or None, text, headers)."""
    status, text, headers = call(*args, **kw)
    try:
        doc = json.loads(text) if text else None
    except ValueError:
        doc = None
    return status, doc, text, headers


def error_code(doc):
    try:
        return doc["error"]["code"]
    except (TypeError, KeyError):
        return None


def metric(port, name):
    """The sum of the samples of one metric on a /metrics page, or None."""
    try:
        status, text, _ = call(port, "GET", "/metrics")
    except OSError:
        return None
    if status != 200:
        return None
    total, seen = 0.0, False
    for line in text.splitlines():
        m = re.match(r"^%s(\{[^}]*\})? (\S+)$" % re.escape(name), line)
        if m:
            total += float(m.group(2))
            seen = True
    return total if seen else None


def metric_label(port, name, label):
    """One sample, name{label}, or None."""
    status, text, _ = call(port, "GET", "/metrics")
    for line in text.splitlines() if status == 200 else []:
        if line.startswith("%s{%s} " % (name, label)):
            return float(line.split()[-1])
    return None


# ---------------------------------------------------------------------------
# SQL, through psql


def sql(url, query, sep="|"):
    out = subprocess.run(["psql", url, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-F", sep,
                          "-c", query], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError("psql: " + out.stderr)
    return out.stdout.strip()


def sql_int(url, query):
    return int(sql(url, query) or 0)


def sql_set(url, query):
    return set(x for x in sql(url, query).split("\n") if x)


def sql_rows(url, query, sep="|"):
    return [line.split(sep) for line in sql(url, query, sep).split("\n") if line]


def with_database(url, database):
    """The same URL naming another database; its parameters (sslmode,
    sslrootcert=/a/path, ...) kept."""
    base, sep, query = url.partition("?")
    return base.rsplit("/", 1)[0] + "/" + database + sep + query


def db_url(service):
    name = service.upper() + "_DB_URL"
    url = os.environ.get(name)
    if not url:
        print("%s is not set: run deploy/pg start && eval \"$(deploy/pg env)\"" % name,
              file=sys.stderr)
        sys.exit(1)
    return url


def scratch_db(service):
    """A new, empty database <service>_scratch owned by the service's role
    (deploy/pg lets the role in), for a test that needs a history of its
    own; dropped at exit. Returns its URL."""
    admin = os.environ.get("PG_ADMIN_URL")
    if not admin:
        print("PG_ADMIN_URL is not set: eval \"$(deploy/pg env)\"", file=sys.stderr)
        sys.exit(1)
    name = service + "_scratch"
    for q in ("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name,
              "CREATE DATABASE %s OWNER %s" % (name, service),
              "REVOKE CONNECT, TEMPORARY ON DATABASE %s FROM PUBLIC" % name,
              "GRANT CONNECT, TEMPORARY ON DATABASE %s TO %s" % (name, service)):
        sql(admin, q)
    def drop():
        stop_all()  # the processes first: they hold connections to it
        subprocess.run(["psql", admin, "-X", "-q", "-c",
                        "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name],
                       capture_output=True, timeout=60)
    atexit.register(drop)
    return with_database(db_url(service), name)


def admin_url(database):
    """The superuser's URL on one database (tampering, as an attacker with
    the keys to the server would)."""
    return with_database(os.environ["PG_ADMIN_URL"], database)


# ---------------------------------------------------------------------------
# The platform: busd and the services, each on free ports


class Platform:
    """Starts the processes a test asks for, wired to each other.

    binaries: {"busd": path, "profile": path, ...}; only those given can be
    started. bus: True to run busd (and BUS_ADDR on in the services), else
    the services run with BUS_ADDR=off. extra_env: added to every service
    (per-service dicts in env_for)."""

    def __init__(self, binaries, bus=True, extra_env=None, env_for=None):
        self.bin = dict(binaries)
        self.bus = bus and "busd" in self.bin
        names = set(self.bin) | {"profile", "account", "payment", "event"}
        self.ports = {name: free_port() for name in names if name != "busd"}
        self.busd_port, self.busd_http = free_port(), free_port()
        self.busd_dir = os.path.join(WORK_DIR, "busd-data")
        self.extra_env = dict(extra_env or {})
        self.env_for = dict(env_for or {})
        self.procs = {}

    def env(self, name):
        e = {"AUTH_HMAC_KEY": KEY, "LOG_LEVEL": "info", "DB_CONNS": "2", "ARGON2_M_KIB": "1024",
             "ARGON2_T_COST": "1",
             "BUS_ADDR": "127.0.0.1:%d" % self.busd_port if self.bus else "off",
             "PROFILE_ADDR": "127.0.0.1:%d" % self.ports["profile"],
             "ACCOUNT_ADDR": "127.0.0.1:%d" % self.ports["account"],
             "PAYMENT_ADDR": "127.0.0.1:%d" % self.ports["payment"]}
        e["%s_PORT" % name.upper()] = str(self.ports[name])
        e["%s_DB_URL" % name.upper()] = db_url(name)
        e.update(self.extra_env)
        e.update(self.env_for.get(name, {}))
        return e

    def proc(self, name):
        if name not in self.procs:
            if name == "busd":
                env = {"BUSD_PORT": str(self.busd_port), "BUSD_HTTP_PORT": str(self.busd_http),
                       "BUSD_DATA_DIR": self.busd_dir, "LOG_LEVEL": "info"}
                env.update(self.env_for.get("busd", {}))
                self.procs[name] = Proc("busd", [self.bin["busd"]], env, self.busd_http)
            else:
                self.procs[name] = Proc(name, [self.bin[name]], self.env(name), self.ports[name])
        return self.procs[name]

    def start(self, *names):
        for name in names:
            self.proc(name).start()
        return self

    def port(self, name):
        return self.busd_http if name == "busd" else self.ports[name]

    def busctl(self, busctl_bin, *args, timeout=30):
        """Runs busctl against this platform's busd: (exit status, stdout)."""
        proc = subprocess.Popen([busctl_bin, "--port", str(self.busd_port)] + list(args),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            return None, out  # what arrived before the deadline
        return proc.returncode, out

    def publish(self, busctl_bin, topic, key, payload, event_id=None, headers=None):
        """Publishes one event as a producer would (busd confirms it)."""
        args = ["pub", "--topic", topic, "--key", key, "--data", json.dumps(payload)]
        if event_id:
            args += ["--id", event_id]
        for k, v in (headers or {}).items():
            args += ["--header", "%s=%s" % (k, v)]
        rc, _ = self.busctl(busctl_bin, *args)
        if rc != 0:
            raise RuntimeError("busctl pub %s failed" % topic)

    def read_topic(self, busctl_bin, topic, group, count, timeout=30):
        """The first `count` deliveries of a topic to a new group, each as
        (attempt, id, payload text, headers dict)."""
        rc, out = self.busctl(busctl_bin, "sub", "--topic", topic, "--group", group,
                              "--count", str(count), "--headers", timeout=timeout)
        items = []
        for line in out.splitlines():
            if line.startswith("\t"):
                k, _, v = line[1:].partition("=")
                if items:
                    items[-1][3][k] = v
                continue
            parts = line.split(" ", 5)
            if len(parts) == 6:
                items.append((int(parts[3]), parts[4], parts[5], {}))
        return items


# ---------------------------------------------------------------------------
# Customers, accounts and money through the services


class Bank:
    """Helpers over a running profile and account service."""

    def __init__(self, profile_port, account_port):
        self.pp, self.ap = profile_port, account_port
        self.operator = ("op-1", "operator")

    def new_customer(self):
        email = "T-%s@Example.com" % uuid.uuid4().hex[:12]
        status, doc, text, _ = jcall(self.pp, "POST", "/v1/customers",
                                     {"name": "Test Person", "email": email,
                                      "phone": "+4915100000000", "password": "s3cret-pass"})
        if status != 201:
            raise RuntimeError("create customer: %d %s" % (status, text))
        return doc["id"]

    def funded_pairs(self, customers, funding, per_customer=2):
        """New customers with `per_customer` accounts each, each topped up
        with `funding`: [(customer, account)]."""
        out = []
        for _ in range(customers):
            cust = self.new_customer()
            for _ in range(per_customer):
                out.append((cust, self.new_account(cust, funded=funding)))
        return out

    def new_account(self, customer, currency="EUR", funded=0):
        status, doc, text, _ = jcall(self.ap, "POST", "/v1/accounts", {"currency": currency},
                                     who=(customer, "customer"))
        if status != 201:
            raise RuntimeError("open account: %d %s" % (status, text))
        if funded:
            self.topup(customer, doc["id"], funded, currency)
        return doc["id"]

    def topup(self, customer, account, amount, currency="EUR"):
        s, d, t, _ = jcall(self.ap, "POST", "/v1/accounts/%s/topups" % account,
                           {"amount": amount, "currency": currency}, who=(customer, "customer"),
                           headers={"Idempotency-Key": "topup-" + uuid.uuid4().hex})
        if s != 201:
            raise RuntimeError("topup: %d %s" % (s, t))
        return d

    def account(self, customer, account):
        status, doc, _, _ = jcall(self.ap, "GET", "/v1/accounts/" + account,
                                  who=(customer, "customer"))
        return doc if status == 200 else None

    def balance(self, customer, account):
        doc = self.account(customer, account)
        return doc["balance"] if doc else None

    def statement(self, who, account, limit=100):
        """Every ledger line of an account, following the cursor."""
        items, cursor = [], None
        for _ in range(100000):
            path = "/v1/accounts/%s/transactions?limit=%d" % (account, limit)
            if cursor:
                path += "&cursor=" + cursor
            s, d, t, _ = jcall(self.ap, "GET", path, who=who)
            if s != 200:
                raise RuntimeError("statement: %d %s" % (s, t))
            items += d["items"]
            cursor = d["next_cursor"]
            if not cursor:
                return items
        raise RuntimeError("statement: too many pages")


def ledger_invariants(url, label):
    """The double-entry invariants over the whole account database (ledger.py)."""
    ledger.invariants(url, label, check, sql)


def sql_list(values):
    """A SQL list of quoted values: 'a','b' (NULL when empty)."""
    return ",".join("'%s'" % v for v in sorted(values)) or "NULL"


def payments_settled(acct_url, pay_url, accounts, accepted, total_before, drain_s, exact=False):
    """The saga's guarantees for these accounts [(customer, account)] after a
    chaos run: every payment final within drain_s, every accepted (202) one
    stored (exact: and no other), no hold left open, the money of the
    accounts (balance + held) what it was, each completed payment settled
    exactly once and no other settled. Returns the completed ids."""
    ids = sql_list(a for _, a in accounts)
    mine = "customer_id IN (%s)" % sql_list(set(c for c, _ in accounts))

    def open_payments():
        return sql_int(pay_url, "SELECT count(*) FROM payments WHERE %s AND state NOT IN"
                                " ('completed', 'failed')" % mine)

    t0 = time.time()
    check(wait_for(lambda: open_payments() == 0, drain_s, step=0.5),
          "every payment is final (%d open after %ds)" % (open_payments(), drain_s))
    say("all final %.1f s after the load" % (time.time() - t0))
    say("payments: " + sql(pay_url, "SELECT string_agg(state || '=' || n, ' ') FROM (SELECT"
                                    " state, count(*) n FROM payments WHERE %s GROUP BY state) x"
                                    % mine))
    stored = sql_set(pay_url, "SELECT id FROM payments WHERE %s" % mine)
    if exact:
        check(stored == set(accepted), "the payments are exactly the accepted ones (%d stored,"
              " %d accepted, %d missing)" % (len(stored), len(accepted), len(set(accepted) - stored)))
    else:
        check(set(accepted) <= stored, "every accepted payment exists")
    open_holds = sql_int(acct_url, "SELECT count(*) FROM holds WHERE state IN ('new', 'held')"
                                   " AND account_id IN (%s)" % ids)
    check(open_holds == 0, "no hold is left open (%d)" % open_holds)
    total_after = sql_int(acct_url, "SELECT sum(balance + held) FROM accounts WHERE id IN (%s)"
                          % ids)
    check(total_after == total_before, "the money is all there: %d before, %d after"
          % (total_before, total_after))
    completed = sql_set(pay_url, "SELECT id FROM payments WHERE %s AND state = 'completed'" % mine)
    settled = sql_rows(acct_url, "SELECT payment_id, count(*) FROM transactions WHERE kind ="
                                 " 'payment' AND payment_id IS NOT NULL AND debit_account_id IN"
                                 " (%s) GROUP BY payment_id" % ids)
    twice = [p for p, n in settled if n != "1"]
    check(not twice, "no payment settled twice (%s)" % twice[:3])
    settled_once = set(p for p, n in settled if n == "1")
    check(settled_once == completed,
          "the settled payments are exactly the completed ones (%d completed, %d settled)"
          % (len(completed), len(settled_once)))
    return completed
