"""gwtest.py - the gateway's test fixtures, on the shared harness.

Checks, processes, the work directory, free ports and the identity headers'
signature are the shared harness's (tests/integration/lib/paytest.py); this
module adds what only the gateway's tests use: certificates and tokens, the
gateway as a process, a stand-in service, and the scan of the logs.
Processes started here are stopped on every way out: normal end, exception,
SIGTERM/SIGINT (meson's timeout), and the watchdog that ends the whole test
after a deadline. Logs are kept when a check failed, or always with
GW_TEST_KEEP=1. Checks are reported by name and the test ends with
"N passed, N failed" (exit 77 means skipped).

Every request made through Gateway.request() is checked against the API's
contract (tests/integration/lib/contract.py, gateway/openapi.json); finish()
fails the test when any exchange broke it.
"""
import hmac
import http.client
import http.server
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import contract  # noqa: E402
import paytest  # noqa: E402
from paytest import free_port, need, skip, wait_for, watchdog  # noqa: E402,F401 - for the tests

CONTRACT = contract.Contract()
TMP = paytest.WORK_DIR
check = paytest.check_named

# ---------------------------------------------------------------------------
# Results


def check_contract():
    """One check for every exchange recorded so far; run by finish()."""
    if CONTRACT.checked == 0:
        return
    check("every exchange through the gateway keeps the contract: " + CONTRACT.summary(),
          not CONTRACT.problems, "; ".join(CONTRACT.problems[:10]))


def finish():
    check_contract()
    sys.stdout.flush()
    if paytest.failed():
        for path in logs():
            tail(path)
    sys.exit(paytest.finish(keep_logs=os.environ.get("GW_TEST_KEEP") == "1"))


def tail(path, lines=25):
    try:
        with open(path, errors="replace") as f:
            content = f.readlines()[-lines:]
        print("--- " + path, file=sys.stderr)
        sys.stderr.writelines(content)
    except OSError:
        pass


# ---------------------------------------------------------------------------
# Processes

_extra_logs = []  # logs of what is not a process (the stand-in service)


def logs():
    """Every log this test produced."""
    return [p.log_path for p in paytest.PROCS] + _extra_logs


def start(name, argv, env=None, port=None):
    """Starts a process with its output to TMP/<name>.log; returns (Popen,
    log path). With a port, waits (20 s at most) until it accepts TCP
    connections there: an upstream the gateway is sent to at once must be
    listening first, or the first requests get 503 on a busy machine."""
    # Services started here run without the bus (no busd in these tests).
    full_env = {"BUS_ADDR": "off"}
    full_env.update(env or {})
    p = paytest.Proc(name, argv, full_env, None, new_session=True).start()
    if port is not None:
        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        if not wait_for(listening, 20):
            raise RuntimeError("%s not listening on %d in 20 s" % (name, port))
    return p.proc, p.log_path


paytest.stop_on_signals()


# ---------------------------------------------------------------------------
# Certificates, keys, tokens

HMAC_KEY = paytest.KEY
ISS, AUD = "paycore", "paycore-api"


def make_certs(certs_sh, kids=("k1", "k2")):
    d = os.path.join(TMP, "certs")
    argv = ["bash", certs_sh]
    for k in kids:
        argv += ["--kid", k]
    subprocess.run(argv + [d], check=True, stderr=subprocess.DEVNULL, timeout=60)
    return d


def mint(tool, certs, kid, sub, roles, ttl=600):
    out = subprocess.run([tool, "mint", os.path.join(certs, "jwt"), kid, sub, ",".join(roles),
                          ISS, AUD, str(ttl)], check=True, capture_output=True, text=True,
                         timeout=10)
    return out.stdout.strip()


# ---------------------------------------------------------------------------
# The gateway

class Gateway:
    """rsa: the RSA pair only (else the ECDSA one); both: the ECDSA pair and
    the RSA one (GW_TLS_CERT_RSA). self.ca is the certificate clients
    trust: the RSA one with rsa, else the ECDSA one."""

    def __init__(self, binary, certs, upstream_url, name="gateway", env=None, rsa=False,
                 both=False):
        self.port = free_port()
        self.admin_port = free_port()
        cert = "tls-rsa" if rsa else "tls-ecdsa"
        self.ca = os.path.join(certs, cert + ".crt")
        base = {
            "GW_HOST": "127.0.0.1", "GW_PORT": str(self.port),
            "GW_ADMIN_HOST": "127.0.0.1", "GW_ADMIN_PORT": str(self.admin_port),
            "GW_THREADS": "2",
            "GW_TLS_CERT": self.ca, "GW_TLS_KEY": os.path.join(certs, cert + ".key"),
            "GW_JWT_KEYS_DIR": os.path.join(certs, "jwt"),
            "AUTH_HMAC_KEY": HMAC_KEY, "LOG_LEVEL": "info",
            "PROFILE_URL": upstream_url, "ACCOUNT_URL": upstream_url,
            "PAYMENT_URL": upstream_url, "EVENT_URL": upstream_url,
            "GW_RATE_ADDR_RPS": "0", "GW_RATE_SUBJECT_RPS": "0", "GW_RATE_LOGIN_RPS": "0",
            "GW_HEALTH_INTERVAL": "200ms",
        }
        if both:
            base["GW_TLS_CERT_RSA"] = os.path.join(certs, "tls-rsa.crt")
            base["GW_TLS_KEY_RSA"] = os.path.join(certs, "tls-rsa.key")
        base.update(env or {})
        self.handle = paytest.Proc(name, [binary], dict({"BUS_ADDR": "off"}, **base), None,
                                   new_session=True).start()
        self.proc, self.log = self.handle.proc, self.handle.log_path
        self.ok = wait_for(lambda: self.admin("/healthz")[0] == 200, 20) and \
            wait_for(self._tls_up, 10)

    def _tls_up(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True

    def admin(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read().decode()
        finally:
            c.close()

    def metric(self, name):
        _, text = self.admin("/metrics")
        m = re.search(r"^%s (\d+)$" % re.escape(name), text, re.M)
        return int(m.group(1)) if m else None

    def context(self):
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def connection(self, timeout=10):
        return http.client.HTTPSConnection("localhost", self.port, timeout=timeout,
                                           context=self.context())

    def request(self, method, path, headers=None, body=None, conn=None, timeout=10):
        """(status, headers dict lower-cased, body bytes) over HTTPS."""
        c = conn or self.connection(timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            got = {k.lower(): v for k, v in r.getheaders()}
            CONTRACT.record(method, path, r.status, headers, body, got, data)
            return r.status, got, data
        finally:
            if conn is None:
                c.close()

    def stop(self):
        return self.handle.stop(15)


# ---------------------------------------------------------------------------
# A stand-in service: answers every path, checks the identity headers, and
# records what it was sent. Its own log goes to TMP/inspector.log, so the
# final scan covers what a service would have logged as well.

CREDENTIALS = {"alice@example.com": ("correct horse battery", "0190c0de-0000-7000-8000-00000000a11c",
                                     ["customer"])}


def identity_valid(method, path, headers):
    sub, roles = headers.get("x-auth-subject"), headers.get("x-auth-roles")
    ts, sig = headers.get("x-auth-timestamp"), headers.get("x-auth-signature")
    if not all((sub, roles, ts, sig)):
        return False
    want = paytest.identity_signature(sub, roles, method, path, ts, HMAC_KEY)
    return hmac.compare_digest(want, sig) and abs(int(ts) - time.time()) < 60


class Inspector:
    def __init__(self, slow_s=3.0):
        self.seen = []
        self.slow_s = slow_s
        inspector = self
        self.log_path = os.path.join(TMP, "inspector.log")
        _extra_logs.append(self.log_path)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                with open(inspector.log_path, "a") as f:
                    f.write("%s %s\n" % (self.command, self.path))

            def _reply(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Service", "inspector")
                self.end_headers()
                self.wfile.write(data)

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                hdrs = [(k.lower(), v) for k, v in self.headers.items()]
                one = {k: v for k, v in hdrs}
                rec = {"method": self.command, "path": self.path, "headers": hdrs,
                       "identity_valid": identity_valid(self.command, self.path, one),
                       "body_len": len(body)}
                inspector.seen.append(rec)
                if self.path == "/healthz":
                    return self._reply(200, {"ok": True})
                if self.path == "/internal/credentials/verify":
                    return self._verify(one, body)
                if "slow" in self.path:
                    time.sleep(inspector.slow_s)
                self._reply(200, {"path": self.path, "method": self.command,
                                  "identity_valid": rec["identity_valid"],
                                  "subject": one.get("x-auth-subject"),
                                  "roles": one.get("x-auth-roles")})

            def _verify(self, one, body):
                ok_caller = identity_valid("POST", self.path, one) and \
                    one.get("x-auth-roles") == "service"
                try:
                    req = json.loads(body)
                    pw, cid, roles = CREDENTIALS[req["email"]]
                    good = hmac.compare_digest(pw, req["password"])
                except (ValueError, KeyError, TypeError):
                    good = False
                if not ok_caller:
                    return self._reply(401, {"error": {"code": "unauthenticated"}})
                if not good:
                    return self._reply(401, {"error": {"code": "invalid_credentials"}})
                self._reply(200, {"customer_id": cid, "roles": roles})

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


# ---------------------------------------------------------------------------
# The log scan

TOKEN_RE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}")
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+\.[A-Za-z0-9.-]+")
# A run of digits standing alone: one inside a longer word (a hex hash, an
# id) is part of that word, not a card number written into a log.
DIGITS_RE = re.compile(r"(?<![0-9A-Za-z])(?:[0-9][ -]?){12,18}[0-9](?![0-9A-Za-z])")


def luhn(digits):
    total, alt = 0, False
    for ch in reversed(digits):
        d = int(ch)
        if alt:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        alt = not alt
    return total % 10 == 0


def scan_logs(secrets=()):
    """Every finding of a token, e-mail, card-like number or given secret
    in any log this test produced, as (file, what, excerpt)."""
    findings = []
    for path in logs():
        try:
            text = open(path, errors="replace").read()
        except OSError:
            continue
        for m in TOKEN_RE.finditer(text):
            findings.append((path, "token", m.group(0)[:24]))
        for m in EMAIL_RE.finditer(text):
            findings.append((path, "email", m.group(0)))
        for m in DIGITS_RE.finditer(text):
            digits = re.sub(r"[ -]", "", m.group(0))
            if 13 <= len(digits) <= 19 and luhn(digits):
                findings.append((path, "card-like number", m.group(0)))
        for s in secrets:
            if s and s in text:
                findings.append((path, "secret", s[:6] + "..."))
    return findings


SANITIZER_RE = re.compile(r"runtime error:|AddressSanitizer|LeakSanitizer|ThreadSanitizer")


def check_logs_clean(secrets=()):
    reports = []
    for path in logs():
        try:
            reports += ["%s: %s" % (os.path.basename(path), m.group(0))
                        for m in SANITIZER_RE.finditer(open(path, errors="replace").read())]
        except OSError:
            pass
    check("no sanitizer report in any log", not reports, "; ".join(reports[:5]))
    findings = scan_logs(secrets)
    check("logs hold no token, e-mail, password or card-like number (%d files)" % len(logs()),
          not findings, "; ".join("%s: %s %s" % (os.path.basename(f), w, e)
                                  for f, w, e in findings[:10]))
