#!/usr/bin/env python3
"""The event service as an auditor needs it: the hash chain, signed
checkpoints, projections rebuilt by replay, reconciliation with the
account service.

usage: test_audit.py BUSD PROFILE ACCOUNT PAYMENT EVENT CERTS_SH

Needs the deploy/pg URLs (eval "$(deploy/pg env)"). The account, payment
and event services run on scratch databases (deploy/pg lets each role
into <service>_scratch), so that the audit log holds exactly the history
this test makes.

  1. Load: customers, accounts, top-ups, withdrawals, transfers and
     payments over the bus, a few thousand events, at a steady pace
     (WORKER_OPS_S per worker); the event service is killed with SIGKILL
     halfway and restarted. The chain's lag is sampled throughout and
     reported against the event rate.
  2. The chain: every published event is in it once, positions 1..N
     without a gap, verify says ok, the hashes recomputed here from the
     documented canonical bytes (GET /v1/events) match, every checkpoint's
     signature checks with openssl and the public key alone.
  3. Tampering as the superuser (a payload, a stored hash, the order of
     two records, a record removed): verify fails at exactly that
     position; a checkpoint signed before a rewritten record no longer
     matches (event verify-checkpoint); undone, everything verifies again.
  4. Append-only: the service's role cannot UPDATE, DELETE or TRUNCATE.
  5. Projections: each checked against the services' own data, then
     rebuilt by replay (endpoint and command) and compared with the live
     one; read endpoints and their refusals.
  6. Reconciliation: 0 differences after the load; one balance changed in
     SQL is reported exactly; the command agrees.
  7. GET /v1/events filters: key, correlation id, topic, time, refusals.
"""
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import paytest as t  # noqa: E402

AUDITOR = ("auditor-1", "auditor")
ADMIN = ("admin-1", "admin")
OPERATOR = ("op-1", "operator")
CHECKPOINT_EVERY = 400
# Each load worker's operations per second (6 workers, about 2.8 events per
# operation: some 600 events/s). Paced, so that the lag check says whether
# the chain keeps up with a steady load through a restart, not whether the
# producers outrun it: unpaced, on two CPUs under ASan with the whole
# platform running, they reach 900 to 1 000 events/s, about what the event
# service can audit and chain there at all (see the README's status).
WORKER_OPS_S = 35


class Audit:
    def __init__(self, bins, certs_sh):
        self.bins = bins
        self.keys = os.path.join(t.WORK_DIR, "keys")
        subprocess.run(["bash", certs_sh, self.keys], check=True, capture_output=True)
        self.priv = os.path.join(self.keys, "audit", "signing.pem")
        self.pub = os.path.join(self.keys, "audit", "signing.pub.pem")
        self.urls = {s: t.scratch_db(s) for s in ("account", "payment", "event")}
        self.admin = {s: t.admin_url(s + "_scratch") for s in ("account", "event")}
        env_for = {s: {"%s_DB_URL" % s.upper(): self.urls[s]} for s in self.urls}
        env_for["event"].update({"EVENT_SIGNING_KEY": self.priv,
                                 "CHECKPOINT_EVERY": str(CHECKPOINT_EVERY),
                                 "CHECKPOINT_INTERVAL": "1s", "EVENT_THREADS": "2"})
        env_for["account"]["HOLD_TTL"] = "60s"
        self.plat = t.Platform({k: bins[k] for k in ("busd", "profile", "account", "payment",
                                                     "event")},
                               extra_env={"DB_CONNS": "4"}, env_for=env_for)
        self.plat.start("busd", "profile", "account", "payment", "event")
        self.bank = t.Bank(self.plat.port("profile"), self.plat.port("account"))

    def ep(self):
        return self.plat.port("event")

    def get(self, path, who=AUDITOR):
        return t.jcall(self.ep(), "GET", path, who=who)

    def command(self, *args):
        """`event ARGS` with the service's configuration: (status, JSON or None)."""
        env = dict(os.environ)
        env.update(self.plat.env("event"))
        env["LOG_LEVEL"] = "warn"
        out = subprocess.run([self.bins["event"]] + list(args), env=env, capture_output=True,
                             text=True, timeout=300)
        try:
            doc = json.loads(out.stdout) if out.stdout.strip() else None
        except ValueError:
            doc = None
        if doc is None:
            t.say("event %s: exit %d\n%s%s" % (" ".join(args), out.returncode, out.stdout,
                                               out.stderr[-2000:]))
        return out.returncode, doc

    def event_sql(self, q):
        return t.sql(self.urls["event"], q)

    def unchained(self):
        return t.sql_int(self.urls["event"], "SELECT count(*) FROM audit_unchained")

    def quiet(self, seconds=60):
        """Until every outbox is drained, every published event audited and
        chained (nothing changes for a while)."""
        def settled():
            pending = sum(t.sql_int(self.urls[s], "SELECT count(*) FROM outbox WHERE"
                                    " published_at IS NULL") for s in ("account", "payment"))
            return pending == 0 and self.unchained() == 0
        ok = t.wait_for(settled, seconds, 0.2)
        n = self.event_sql("SELECT count(*) FROM audit_log")
        time.sleep(1.0)
        return ok and settled() and n == self.event_sql("SELECT count(*) FROM audit_log")


# ---------------------------------------------------------------------------
# 1. Load, with the event service killed halfway


def load(a):
    bank = a.bank
    customers = [bank.new_customer() for _ in range(12)]
    accounts = []  # (customer, account)
    for c in customers:
        for _ in range(3):
            accounts.append((c, bank.new_account(c, "EUR", funded=500000)))
    by_customer = {}
    for c, acc in accounts:
        by_customer.setdefault(c, []).append(acc)
    stop = threading.Event()
    errors = []
    counts = {"ops": 0}
    lock = threading.Lock()

    def worker(seed):
        rnd = random.Random(seed)
        due = time.monotonic()
        while not stop.is_set():
            due += 1.0 / WORKER_OPS_S
            time.sleep(max(0.0, due - time.monotonic()))
            c, acc = rnd.choice(accounts)
            kind = rnd.random()
            try:
                if kind < 0.3:
                    dst = rnd.choice(accounts)[1]
                    if dst == acc:
                        continue
                    s, _, txt, _ = t.jcall(bank.ap, "POST", "/v1/transfers",
                                           {"from_account_id": acc, "to_account_id": dst,
                                            "amount": rnd.randint(1, 900), "currency": "EUR"},
                                           who=(c, "customer"),
                                           headers={"Idempotency-Key": uuid.uuid4().hex})
                    ok = s in (201, 422)
                elif kind < 0.45:
                    s, _, txt, _ = t.jcall(bank.ap, "POST", "/v1/accounts/%s/withdrawals" % acc,
                                           {"amount": rnd.randint(1, 500), "currency": "EUR"},
                                           who=(c, "customer"),
                                           headers={"Idempotency-Key": uuid.uuid4().hex})
                    ok = s in (201, 422)
                elif kind < 0.55:
                    s, _, txt, _ = t.jcall(bank.ap, "POST", "/v1/accounts/%s/topups" % acc,
                                           {"amount": rnd.randint(1, 2000), "currency": "EUR"},
                                           who=(c, "customer"),
                                           headers={"Idempotency-Key": uuid.uuid4().hex})
                    ok = s == 201
                else:
                    dst = rnd.choice(accounts)[1]
                    if dst == acc:
                        continue
                    # Some beyond the payer's means: the saga's failure path.
                    amount = rnd.randint(1, 1500) if rnd.random() < 0.9 else 10 ** 7
                    s, _, txt, _ = t.jcall(a.plat.port("payment"), "POST", "/v1/payments",
                                           {"from_account_id": acc, "to_account_id": dst,
                                            "amount": amount, "currency": "EUR"},
                                           who=(c, "customer"),
                                           headers={"Idempotency-Key": uuid.uuid4().hex})
                    ok = s in (201, 202)
                if not ok:
                    errors.append((s, txt[:200]))
            except OSError as e:
                errors.append((0, str(e)))
            with lock:
                counts["ops"] += 1

    ev = a.plat.proc("event")
    samples = []  # (time, audited events, chain lag)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    started = time.time()
    for th in threads:
        th.start()
    killed = False
    while time.time() - started < 24:
        time.sleep(0.25)
        audited = t.sql_int(a.urls["event"], "SELECT count(*) FROM audit_log")
        lag = a.unchained()
        samples.append((time.time() - started, audited, lag))
        if not killed and time.time() - started > 10:
            t.say("SIGKILL to the event service under load (%d events audited so far)" % audited)
            ev.kill9()
            time.sleep(1.0)
            ev.start()
            killed = True
    stop.set()
    for th in threads:
        th.join(30)
    t.check(not errors, "every operation of the load was answered as expected: %s" % errors[:5])
    t.check(a.quiet(120), "the outboxes drain and every event is chained after the load")
    n = t.sql_int(a.urls["event"], "SELECT count(*) FROM audit_log")
    t.check(n >= 2000, "a few thousand events were audited (%d)" % n)
    # The chain kept up: the rate events were audited at, and the lag
    # (audited but not yet chained) meanwhile.
    span = [s for s in samples if s[0] > 1.0]
    rate = (span[-1][1] - span[0][1]) / max(span[-1][0] - span[0][0], 0.001) if span else 0
    lags = [s[2] for s in samples]
    late = [s[2] for s in samples if s[0] > 16]
    t.say("load: %d operations, %d events audited, %.0f events/s; chain lag max %d, mean %.1f,"
          " over the last 8 s max %d" % (counts["ops"], n, rate, max(lags),
                                         sum(lags) / max(len(lags), 1), max(late or [0])))
    t.say("CHAIN_LAG rate=%.0f max=%d mean=%.1f last8s_max=%d" % (
        rate, max(lags), sum(lags) / max(len(lags), 1), max(late or [0])))
    # Not growing: after the restart the lag stays within a couple of the
    # chainer's batches of what arrives in a sample interval.
    t.check(max(late or [0]) <= max(2000, rate), "the chain lag does not grow under load: %s"
            % late)
    return accounts


# ---------------------------------------------------------------------------
# 2. The chain


def be64(v):
    return v.to_bytes(8, "big", signed=True)


def field(s):
    b = s.encode()
    return len(b).to_bytes(4, "big") + b


def record_hash(prev, e):
    """hash(n) = SHA-256(hash(n - 1) || record(n)), as README "Audit log"
    documents it."""
    rec = (b"paycore.audit.v1" + be64(e["seq"]) + uuid.UUID(e["event_id"]).bytes +
           field(e["topic"]) + field(e["key"]) + field(e["headers_text"]) +
           field(e["payload_text"]) + be64(e["recorded_us"]))
    return hashlib.sha256(prev + rec).digest()


def all_events(a, query=""):
    out, cursor = [], None
    for _ in range(100000):
        path = "/v1/events?limit=100" + query + ("&cursor=" + cursor if cursor else "")
        s, d, txt, _ = a.get(path)
        if s != 200:
            raise RuntimeError("GET %s: %d %s" % (path, s, txt))
        out += d["items"]
        cursor = d["next_cursor"]
        if not cursor:
            return out
    raise RuntimeError("too many pages")


def der_signature(raw):
    def integer(b):
        b = b.lstrip(b"\0") or b"\0"
        if b[0] & 0x80:
            b = b"\0" + b
        return b"\x02" + bytes([len(b)]) + b
    body = integer(raw[:32]) + integer(raw[32:])
    return b"\x30" + bytes([len(body)]) + body


def openssl_verify(pub, message, raw_sig):
    msg = os.path.join(t.WORK_DIR, "cp.msg")
    sig = os.path.join(t.WORK_DIR, "cp.sig")
    with open(msg, "wb") as f:
        f.write(message)
    with open(sig, "wb") as f:
        f.write(der_signature(raw_sig))
    out = subprocess.run(["openssl", "dgst", "-sha256", "-verify", pub, "-signature", sig, msg],
                         capture_output=True, text=True)
    return out.returncode == 0


def iso_us(ts):
    """Microseconds since the epoch of PostgreSQL's JSON timestamptz."""
    from datetime import datetime
    return int(round(datetime.fromisoformat(ts).timestamp() * 1000000))


def check_chain(a):
    rows = t.sql_rows(a.urls["event"], "SELECT count(*), coalesce(max(chain_seq), 0),"
                      " count(DISTINCT audit_seq) FROM audit_chain")[0]
    logged = t.sql_int(a.urls["event"], "SELECT count(*) FROM audit_log")
    t.check(int(rows[0]) == logged and int(rows[1]) == logged and int(rows[2]) == logged,
            "the chain holds every audited event once, positions 1..%d without a gap: %s"
            % (logged, rows))
    published = set()
    for s in ("account", "payment"):
        published |= t.sql_set(a.urls[s], "SELECT id FROM outbox")
    audited = t.sql_set(a.urls["event"], "SELECT event_id FROM audit_log")
    t.check(published <= audited, "every event the services published is audited (%d missing)"
            % len(published - audited))

    s, v, txt, _ = a.get("/v1/events/verify")
    t.check(s == 200 and v["ok"] and v["checked"] == logged and v["head"]["seq"] == logged
            and v["broken"] is None, "GET /v1/events/verify: the whole chain verifies: %s"
            % txt[:300])
    t.check(v["checkpoints"]["checked"] >= logged // CHECKPOINT_EVERY and
            v["checkpoints"]["bad"] == 0, "verify checks every checkpoint: %s" % v["checkpoints"])

    events = all_events(a)
    t.check([e["seq"] for e in events] == list(range(1, logged + 1)),
            "GET /v1/events pages through the chain in order, once each")
    prev, bad = bytes(32), None
    for e in events:
        h = record_hash(prev, e)
        if bad is None and (e["prev_hash"] != prev.hex() or e["hash"] != h.hex()):
            bad = e["seq"]
        prev = h
    t.check(bad is None, "the hashes recomputed from the documented canonical bytes match"
            " (first mismatch: %s)" % bad)
    t.check(v["head"]["hash"] == events[-1]["hash"], "verify reports the head's hash")

    s, d, txt, _ = a.get("/v1/events/checkpoints?limit=100")
    cps = d["items"] if s == 200 else []
    with open(a.pub) as f:
        pem = f.read()
    t.check(s == 200 and d["key"]["alg"] == "ES256" and d["key"]["public_key_pem"].strip()
            == pem.strip(), "GET /v1/events/checkpoints names the key and gives its public half")
    t.check(len(cps) >= 2, "checkpoints were signed (%d)" % len(cps))
    by_seq = {e["seq"]: e for e in events}
    good = 0
    for cp in cps:
        msg = (b"paycore.checkpoint.v1" + be64(cp["seq"]) + bytes.fromhex(cp["hash"]) +
               be64(iso_us(cp["signed_at"])))
        if (cp["hash"] == by_seq[cp["seq"]]["hash"] and
                openssl_verify(a.pub, msg, bytes.fromhex(cp["signature"]))):
            good += 1
    t.check(good == len(cps), "every checkpoint signature checks with openssl and the public"
            " key alone, over the documented bytes (%d of %d)" % (good, len(cps)))
    return events, cps


# ---------------------------------------------------------------------------
# 3. Tampering, as the superuser


def superuser(a, q):
    """As an attacker with the server's keys: the triggers (append-only
    and foreign keys) off for this session."""
    return t.sql(a.admin["event"], "SET session_replication_role = replica; " + q)


def verify(a, query=""):
    s, v, txt, _ = a.get("/v1/events/verify" + query)
    if s != 200:
        raise RuntimeError("verify: %d %s" % (s, txt))
    return v


def tampering(a, events, cps):
    cp = cps[-1]["seq"]
    k = max(2, cp // 2)  # a record the last checkpoint covers
    row = t.sql_rows(a.urls["event"], "SELECT audit_seq, encode(hash, 'hex') FROM audit_chain"
                     " WHERE chain_seq = %d" % k)[0]
    audit_seq, stored = int(row[0]), row[1]
    rc, doc = a.command("verify-checkpoint", "--seq", str(cp), "--public-key", a.pub)
    t.check(rc == 0 and doc and doc["ok"] and doc["checkpoint"]["result"] == "valid",
            "event verify-checkpoint: the checkpoint at %d proves the log up to it" % cp)

    # A payload rewritten.
    original = a.event_sql("SELECT payload::text FROM audit_log WHERE seq = %d" % audit_seq)
    superuser(a, "UPDATE audit_log SET payload = jsonb_set(payload, '{tampered}', 'true')"
              " WHERE seq = %d" % audit_seq)
    try:
        v = verify(a)
        t.check(not v["ok"] and v["broken"]["seq"] == k and v["broken"]["what"] == "hash"
                and v["broken"]["found"] == stored and v["broken"]["expected"] != stored,
                "a rewritten payload: verify fails at exactly position %d, expected vs found:"
                " %s" % (k, v["broken"]))
        t.check(v["checkpoints"]["bad"] >= 1 and min(v["checkpoints"]["bad_seqs"]) >= k,
                "the checkpoints after the rewritten record no longer match: %s"
                % v["checkpoints"])
        rc, doc = a.command("verify-checkpoint", "--seq", str(cp), "--public-key", a.pub)
        t.check(rc == 1 and doc and not doc["ok"] and doc["checkpoint"]["result"] != "valid",
                "event verify-checkpoint: the checkpoint signed before the rewrite no longer"
                " matches (exit %d)" % rc)
        v = verify(a, "?from=%d" % (k + 1))
        t.check(v["ok"] and v["from"] == k + 1, "verify of a range after it still passes")
        v = verify(a, "?from=1&to=%d" % (k - 1))
        t.check(v["ok"] and v["to"] == k - 1, "verify of a range before it still passes")
    finally:
        superuser(a, "UPDATE audit_log SET payload = '%s'::jsonb WHERE seq = %d"
                  % (original.replace("'", "''"), audit_seq))
    t.check(verify(a)["ok"], "undone, the chain verifies again")

    # A stored hash replaced.
    superuser(a, "UPDATE audit_chain SET hash = decode(repeat('ab', 32), 'hex')"
              " WHERE chain_seq = %d" % k)
    try:
        v = verify(a)
        t.check(not v["ok"] and v["broken"]["seq"] == k and v["broken"]["what"] == "hash"
                and v["broken"]["found"] == "ab" * 32 and v["broken"]["expected"] == stored,
                "a replaced hash: verify fails at exactly position %d: %s" % (k, v["broken"]))
    finally:
        superuser(a, "UPDATE audit_chain SET hash = decode('%s', 'hex') WHERE chain_seq = %d"
                  % (stored, k))

    # Two records swapped.
    pair = t.sql_rows(a.urls["event"], "SELECT chain_seq, audit_seq FROM audit_chain"
                      " WHERE chain_seq IN (%d, %d) ORDER BY chain_seq" % (k, k + 1))
    x, y = int(pair[0][1]), int(pair[1][1])
    swap = ("UPDATE audit_chain SET audit_seq = -audit_seq WHERE chain_seq IN (%d, %d);"
            " UPDATE audit_chain SET audit_seq = CASE chain_seq WHEN %d THEN %d ELSE %d END"
            " WHERE chain_seq IN (%d, %d)")
    superuser(a, swap % (k, k + 1, k, y, x, k, k + 1))
    try:
        v = verify(a)
        t.check(not v["ok"] and v["broken"]["seq"] == k,
                "two records swapped: verify fails at exactly position %d: %s" % (k, v["broken"]))
    finally:
        superuser(a, swap % (k, k + 1, k, x, y, k, k + 1))

    # A record removed from the chain.
    saved = t.sql_rows(a.urls["event"], "SELECT audit_seq, encode(prev_hash, 'hex'),"
                       " encode(hash, 'hex'), chained_at FROM audit_chain WHERE chain_seq = %d"
                       % (k + 2))[0]
    superuser(a, "DELETE FROM audit_chain WHERE chain_seq = %d" % (k + 2))
    try:
        v = verify(a)
        t.check(not v["ok"] and v["broken"]["seq"] == k + 2 and v["broken"]["what"] == "missing",
                "a record removed: verify reports position %d missing: %s"
                % (k + 2, v["broken"]))
    finally:
        superuser(a, "INSERT INTO audit_chain VALUES (%d, %s, decode('%s', 'hex'),"
                  " decode('%s', 'hex'), '%s')" % (k + 2, saved[0], saved[1], saved[2], saved[3]))
    v = verify(a)
    t.check(v["ok"] and v["checkpoints"]["bad"] == 0, "every tampering undone: ok again")
    rc, doc = a.command("verify")
    t.check(rc == 0 and doc and doc["ok"], "event verify (the command) agrees: exit %d" % rc)


# ---------------------------------------------------------------------------
# 4. Append-only


def append_only(a):
    before = a.event_sql("SELECT count(*) || ':' || md5(string_agg(event_id::text || payload::text,"
                         " ',' ORDER BY seq)) FROM audit_log")
    chain_before = a.event_sql("SELECT md5(string_agg(encode(hash, 'hex'), ',' ORDER BY"
                               " chain_seq)) FROM audit_chain")
    for q in ("UPDATE audit_log SET payload = '{}' WHERE seq = 1",
              "DELETE FROM audit_log WHERE seq = 1",
              "TRUNCATE audit_log CASCADE",
              "UPDATE audit_chain SET hash = prev_hash WHERE chain_seq = 1",
              "DELETE FROM audit_chain WHERE chain_seq = 1",
              "TRUNCATE audit_chain CASCADE",
              "DELETE FROM audit_checkpoints",
              "UPDATE audit_checkpoints SET kid = 'x'"):
        try:
            t.sql(a.urls["event"], q)
            t.check(False, "as the service's role, refused: " + q)
        except RuntimeError as e:
            t.check("append-only" in str(e), "as the service's role, refused: %s (%s)"
                    % (q, str(e).strip()[:80]))
    t.check(before == a.event_sql("SELECT count(*) || ':' || md5(string_agg(event_id::text ||"
                                  " payload::text, ',' ORDER BY seq)) FROM audit_log") and
            chain_before == a.event_sql("SELECT md5(string_agg(encode(hash, 'hex'), ',' ORDER BY"
                                        " chain_seq)) FROM audit_chain"),
            "nothing changed")


# ---------------------------------------------------------------------------
# 5. Projections


PROJ_DUMP = {
    "account-daily": "SELECT account_id, day, currency, movements, money_in, money_out"
                     " FROM proj_account_daily ORDER BY 1, 2, 3",
    "payment-volume": "SELECT day, currency, state, payments, amount FROM proj_payment_volume"
                      " ORDER BY 1, 2, 3",
    "payments": "SELECT payment_id, state, rank, amount, currency, customer_id, created_at,"
                " updated_at FROM proj_payments ORDER BY 1",
    "balances": "SELECT account_id, currency, balance, held FROM proj_balances ORDER BY 1",
}


def dump(a, name):
    return a.event_sql(PROJ_DUMP[name])


def projections(a, accounts):
    # Against the services' own figures.
    states = dict((r[0], int(r[1])) for r in t.sql_rows(
        a.urls["payment"], "SELECT state, count(*) FROM payments GROUP BY state"))
    proj = dict((r[0], int(r[1])) for r in t.sql_rows(
        a.urls["event"], "SELECT state, count(*) FROM proj_payments GROUP BY state"))
    t.check(states == proj, "payments by state equal the payment service's: %s vs %s"
            % (proj, states))
    s, d, txt, _ = a.get("/v1/projections/payment-states", who=OPERATOR)
    t.check(s == 200 and {x["state"]: x["payments"] for x in d["items"]} == states and
            all(x["oldest_age_seconds"] >= 0 for x in d["items"]),
            "GET /v1/projections/payment-states: %s" % txt[:300])
    completed = t.sql_rows(a.urls["payment"], "SELECT count(*), coalesce(sum(amount), 0) FROM"
                           " payments WHERE state = 'completed'")[0]
    s, d, txt, _ = a.get("/v1/projections/payment-volume?currency=EUR")
    vol = [x for x in d["items"] if x["state"] == "completed"] if s == 200 else []
    t.check(s == 200 and sum(x["payments"] for x in vol) == int(completed[0]) and
            sum(x["amount"] for x in vol) == int(completed[1]),
            "GET /v1/projections/payment-volume: completed payments and amount equal the"
            " payment service's (%s): %s" % (completed, txt[:200]))
    page, cursor, seen = 0, None, []
    while True:
        s, d, txt, _ = a.get("/v1/projections/payments?state=completed&limit=7" +
                             ("&cursor=" + cursor if cursor else ""))
        if s != 200:
            break
        seen += d["items"]
        cursor, page = d["next_cursor"], page + 1
        if not cursor or page > 1000:
            break
    t.check(len(seen) == int(completed[0]) and len(set(x["payment_id"] for x in seen)) ==
            len(seen) and all(x["state"] == "completed" and x["age_seconds"] >= 0
                              for x in seen),
            "GET /v1/projections/payments pages through every completed payment once, with"
            " its age (%d pages)" % page)
    # Daily activity: money in minus out is what each account holds.
    c, acc = accounts[0]
    held = t.sql_rows(a.urls["account"], "SELECT balance + held FROM accounts WHERE id = '%s'"
                      % acc)[0][0]
    s, d, txt, _ = a.get("/v1/projections/account-daily?account_id=" + acc.upper(),
                         who=OPERATOR)
    t.check(s == 200 and len(d["items"]) >= 1 and
            sum(x["money_in"] - x["money_out"] for x in d["items"]) == int(held),
            "GET /v1/projections/account-daily: money in minus out equals what the account"
            " holds (%s): %s" % (held, txt[:200]))
    totals = t.sql_rows(a.urls["event"], "SELECT account_id, sum(money_in - money_out) FROM"
                        " proj_account_daily GROUP BY 1 ORDER BY 1")
    truth = t.sql_rows(a.urls["account"], "SELECT id, balance + held FROM accounts WHERE kind ="
                       " 'customer' ORDER BY 1")
    t.check(totals == truth, "for every account, the daily projection sums to what it holds")

    # Rebuilt by replay equals live.
    live = {name: dump(a, name) for name in PROJ_DUMP}
    for name in ("account-daily", "payments"):
        s, d, txt, _ = t.jcall(a.ep(), "POST", "/v1/projections/%s/rebuild" % name, who=ADMIN)
        t.check(s == 200 and d["replayed"] == len(all_events_ids(a)),
                "POST /v1/projections/%s/rebuild replays the whole log: %s" % (name, txt[:200]))
    for name in ("payment-volume", "balances"):
        rc, doc = a.command("rebuild", name)
        t.check(rc == 0 and doc and doc["replayed"] > 0, "event rebuild %s: exit %d" % (name, rc))
    for name in PROJ_DUMP:
        t.check(dump(a, name) == live[name] and live[name] != "",
                "the rebuilt %s projection equals the live one" % name)

    # Refusals.
    for path, who, status, code in (
            ("/v1/projections/account-daily", AUDITOR, 422, "invalid_field"),
            ("/v1/projections/account-daily?account_id=nope", AUDITOR, 422, "invalid_field"),
            ("/v1/projections/account-daily?account_id=%s&from=2026-1-1" % acc, AUDITOR, 422,
             "invalid_day"),
            ("/v1/projections/account-daily?account_id=%s&cursor=xx" % acc, AUDITOR, 422,
             "invalid_cursor"),
            ("/v1/projections/payment-volume?from=2026-02-30", AUDITOR, 422, "invalid_field"),
            ("/v1/projections/payment-volume?currency=XXX", AUDITOR, 422, "invalid_currency"),
            ("/v1/projections/payments?state=lost", AUDITOR, 422, "invalid_state"),
            ("/v1/projections/payments", (c, "customer"), 403, "forbidden")):
        s, d, txt, _ = a.get(path, who=who)
        t.check(s == status and t.error_code(d) == code, "GET %s as %s: %d %s (%s)"
                % (path, who[1], status, code, txt[:120]))
    for name, who, status in (("nope", ADMIN, 404), ("payments", OPERATOR, 403),
                              ("payments", AUDITOR, 403)):
        s, d, txt, _ = t.jcall(a.ep(), "POST", "/v1/projections/%s/rebuild" % name, who=who)
        t.check(s == status and "error" in (d or {}), "POST rebuild %s as %s: %d" % (name, who[1],
                                                                                   status))
    t.check(all(dump(a, name) == live[name] for name in PROJ_DUMP),
            "refused calls changed no projection")


def all_events_ids(a):
    return t.sql_set(a.urls["event"], "SELECT seq FROM audit_log")


# ---------------------------------------------------------------------------
# 6. Reconciliation


def reconciliation(a, accounts):
    n = t.sql_int(a.urls["account"], "SELECT count(*) FROM accounts WHERE kind = 'customer'")
    s, d, txt, _ = t.jcall(a.ep(), "POST", "/v1/reconciliation", who=ADMIN)
    t.check(s == 200 and d["ok"] and d["differences"] == 0 and d["accounts"] == n,
            "POST /v1/reconciliation after the load: %d accounts, 0 differences: %s"
            % (n, txt[:300]))
    rc, doc = a.command("reconcile")
    t.check(rc == 0 and doc and doc["differences"] == 0, "event reconcile agrees: exit %d" % rc)

    victim = accounts[len(accounts) // 2][1]
    t.sql(a.admin["account"], "SET session_replication_role = replica;"
          " UPDATE accounts SET balance = balance + 137 WHERE id = '%s'" % victim)
    try:
        s, d, txt, _ = t.jcall(a.ep(), "POST", "/v1/reconciliation", who=ADMIN)
        items = d["items"] if s == 200 else []
        t.check(s == 200 and not d["ok"] and d["differences"] == 1 and len(items) == 1 and
                items[0]["account_id"] == victim and items[0]["balance_difference"] == 137 and
                items[0]["held_difference"] == 0 and
                items[0]["account_balance"] - items[0]["audit_balance"] == 137,
                "a balance changed in SQL: exactly that account, by exactly 137: %s" % txt[:400])
        rc, doc = a.command("reconcile")
        t.check(rc == 1 and doc and doc["differences"] == 1 and
                doc["items"][0]["account_id"] == victim, "event reconcile: exit 1, the same"
                " account")
    finally:
        t.sql(a.admin["account"], "SET session_replication_role = replica;"
              " UPDATE accounts SET balance = balance - 137 WHERE id = '%s'" % victim)
    s, d, txt, _ = t.jcall(a.ep(), "POST", "/v1/reconciliation", who=ADMIN)
    t.check(s == 200 and d["differences"] == 0, "undone: 0 differences")
    for who in (AUDITOR, OPERATOR):
        s, d, _, _ = t.jcall(a.ep(), "POST", "/v1/reconciliation", who=who)
        t.check(s == 403, "POST /v1/reconciliation as %s: 403" % who[1])


# ---------------------------------------------------------------------------
# 7. Querying


def querying(a, events):
    pid = t.sql(a.urls["payment"], "SELECT id FROM payments WHERE state = 'completed' LIMIT 1")
    by_key = all_events(a, "&key=" + pid)
    topics = [e["topic"] for e in by_key]
    t.check("payment.requested" in topics and "payment.completed" in topics and
            all(e["key"] == pid for e in by_key),
            "GET /v1/events?key=<payment id>: the payment's events: %s" % topics)
    corr = next(e["headers"].get("correlation-id") for e in by_key
                if e["topic"] == "payment.requested")
    by_corr = all_events(a, "&correlation_id=" + corr)
    t.check(len(by_corr) >= 4 and all(e["headers"].get("correlation-id") == corr
                                      for e in by_corr) and
            {"payment.requested", "account.funds_reserved", "payment.completed"} <=
            set(e["topic"] for e in by_corr),
            "GET /v1/events?correlation_id=: every event of the payment, across services: %s"
            % [e["topic"] for e in by_corr])
    seqs = [e["seq"] for e in by_corr]
    t.check(seqs == sorted(seqs), "... in chain order")
    topped = all_events(a, "&topic=account.topped_up")
    t.check(len(topped) == sum(1 for e in events if e["topic"] == "account.topped_up"),
            "GET /v1/events?topic=: exactly that topic's events")
    mid = events[len(events) // 2]["stored_at"]
    since = [e for e in events if e["stored_at"] >= mid]
    from urllib.parse import quote
    got = all_events(a, "&since=" + quote(mid))
    t.check(len(got) == len(since), "since= selects by store time (%d vs %d)"
            % (len(got), len(since)))
    for q, code in (("?key=", "invalid_key"), ("?key=" + "k" * 300, "invalid_key"),
                    ("?topic=a%20b", "invalid_topic"), ("?since=yesterday", "invalid_time"),
                    ("?since=2026-13-45T00:00:00Z", "invalid_time"),
                    ("?cursor=-1", "invalid_cursor"), ("?limit=0", "invalid_limit")):
        s, d, txt, _ = a.get("/v1/events" + q)
        t.check(s == 422 and t.error_code(d) == code, "GET /v1/events%s: 422 %s (%s)"
                % (q[:30], code, txt[:100]))
    for q in ("?from=0", "?from=x", "?from=5&to=2", "?to=-3"):
        s, d, txt, _ = a.get("/v1/events/verify" + q)
        t.check(s == 422 and t.error_code(d) == "invalid_range", "verify%s: 422" % q)
    for who in (OPERATOR, ("c", "customer")):
        for path in ("/v1/events", "/v1/events/verify", "/v1/events/checkpoints"):
            s, _, _, _ = a.get(path, who=who)
            t.check(s == 403, "GET %s as %s: 403" % (path, who[1]))
    s, _, _, _ = t.jcall(a.ep(), "GET", "/v1/events/verify")
    t.check(s == 401, "GET /v1/events/verify without identity: 401")


def main():
    if len(sys.argv) != 7:
        print(__doc__, file=sys.stderr)
        return 2
    bins = dict(zip(("busd", "profile", "account", "payment", "event"), sys.argv[1:6]))
    a = Audit(bins, sys.argv[6])
    accounts = load(a)
    events, cps = check_chain(a)
    tampering(a, events, cps)
    append_only(a)
    projections(a, accounts)
    reconciliation(a, accounts)
    querying(a, events)
    t.check(verify(a)["ok"], "the chain verifies at the end")
    return t.finish()


if __name__ == "__main__":
    sys.exit(main())
