#!/usr/bin/env python3
"""The gateway's API behaviour over HTTPS, against a stand-in service.

    test_api.py GATEWAY GW_JWT_TOOL CERTS_SH

The stand-in (gwtest.Inspector) answers every path, checks the identity
headers with the shared key, and records what it received. Checks: the
token endpoint (good and bad credentials, the token it issues works); the
JWT attack corpus, each token answered 401; the RBAC matrix, every route of
`gateway --routes` against no token and each role, expected cell computed
from the route table; identity headers signed and never forgeable; request
ids; the verification keys published as a JWKS, each the same public key
openssl reads from its file; unknown routes 404; rate limits 429 with Retry-After; a service down
503, slow 504, an idempotent request retried on the other address; and
finally no token, password, e-mail or card number in any log.
"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest as t  # noqa: E402

ROLES = ["customer", "operator", "auditor", "admin"]
EMAIL, PASSWORD = "alice@example.com", "correct horse battery"
CARD = "4111 1111 1111 1111"


def bearer(token):
    return {"Authorization": "Bearer " + token}


def check_token_endpoint(gw, inspector):
    body = json.dumps({"email": EMAIL, "password": PASSWORD})
    st, h, data = gw.request("POST", "/v1/auth/token", {"Content-Type": "application/json"}, body)
    ok = st == 200
    t.check("POST /v1/auth/token with good credentials: 200", ok, "%d %s" % (st, data[:200]))
    if not ok:
        return None
    reply = json.loads(data)
    token = reply.get("access_token", "")
    t.check("the answer is a Bearer token with expires_in",
            reply.get("token_type") == "Bearer" and reply.get("expires_in", 0) > 0 and
            token.count(".") == 2)
    t.check("Cache-Control: no-store on the token answer", h.get("cache-control") == "no-store")
    calls = [r for r in inspector.seen if r["path"] == "/internal/credentials/verify"]
    t.check("profile was asked as the gateway, with a valid signed identity (role service)",
            calls and calls[-1]["identity_valid"])
    st, _, data = gw.request("GET", "/v1/accounts", bearer(token))
    seen = json.loads(data) if st == 200 else {}
    t.check("the issued token opens GET /v1/accounts as that customer",
            st == 200 and seen.get("subject") == "0190c0de-0000-7000-8000-00000000a11c" and
            seen.get("roles") == "customer" and seen.get("identity_valid"), data[:200])
    for name, b in (("wrong password", {"email": EMAIL, "password": "nope"}),
                    ("unknown e-mail", {"email": "mallory@example.com", "password": PASSWORD})):
        st, _, data = gw.request("POST", "/v1/auth/token", {"Content-Type": "application/json"},
                                 json.dumps(b))
        t.check("%s: 401 invalid_credentials" % name,
                st == 401 and json.loads(data)["error"]["code"] == "invalid_credentials")
    st, _, _ = gw.request("POST", "/v1/auth/token", {"Content-Type": "application/json"},
                          '{"email": 1}')
    t.check("malformed credentials body: 400", st == 400)
    return token


def check_corpus(gw, tool, certs):
    out = subprocess.run([tool, "corpus", os.path.join(certs, "jwt"), "k1", "k2", t.ISS, t.AUD,
                          "30"], capture_output=True, text=True, timeout=20, check=True).stdout
    items = [line.split("\t") for line in out.splitlines() if line]
    t.check("the attack corpus has 25+ tokens", len(items) >= 25, len(items))
    wrong = []
    for name, expect, token in items:
        st, h, _ = gw.request("GET", "/v1/accounts", bearer(token))
        want = 200 if expect == "0" else 401
        if st != want or (want == 401 and "bearer" not in h.get("www-authenticate", "").lower()):
            wrong.append("%s: %d" % (name, st))
    t.check("JWT corpus over HTTPS: valid tokens 200, every attack 401 with WWW-Authenticate",
            not wrong, ", ".join(wrong))


def concrete(pattern):
    return pattern.replace("{id}", "0190c0de-0000-7000-8000-0000000000aa")


def check_rbac_matrix(gw, binary, tool, certs, inspector):
    routes = [json.loads(line) for line in subprocess.run(
        [binary, "--routes"], capture_output=True, text=True, timeout=10).stdout.splitlines()]
    t.check("gateway --routes lists the API (27 routes)", len(routes) == 27, len(routes))
    tokens = {r: t.mint(tool, certs, "k1", "user-" + r, [r]) for r in ROLES}
    wrong, cells = [], 0
    for route in routes:
        if route["service"] == "gateway":
            continue  # the token endpoint, checked on its own
        path = concrete(route["pattern"])
        body = "{}" if route["method"] in ("POST", "PATCH", "PUT") else None
        for who in [None] + ROLES:
            if who is None:
                want = "allow" if route["anonymous"] else 401
            else:
                want = "allow" if who in route["roles"] else 403
            before = len(inspector.seen)
            st, _, data = gw.request(route["method"], path,
                                     bearer(tokens[who]) if who else {"Content-Type": "text/plain"},
                                     body)
            # Health probes reach the stand-in too: look for this path only.
            reached = any(r["path"] == path for r in inspector.seen[before:])
            cells += 1
            if want == "allow":
                good = st == 200 and reached and json.loads(data).get("path") == path
                if good and who is not None:
                    good = json.loads(data).get("identity_valid") and \
                        json.loads(data).get("roles") == who
            else:
                good = st == want and not reached
            if not good:
                wrong.append("%s %s as %s: %d (want %s)" % (route["method"], path, who, st, want))
    t.check("RBAC matrix: %d cells (routes x {none, %s}) as the table says" % (cells, ", ".join(ROLES)),
            not wrong and cells >= 60, "; ".join(wrong[:8]))


def last_seen(inspector, path):
    """The stand-in's latest record for path (health probes interleave)."""
    return next(r for r in reversed(inspector.seen) if r["path"] == path)


def check_headers(gw, tool, certs, inspector):
    token = t.mint(tool, certs, "k2", "cust-7", ["customer"])
    spoof = dict(bearer(token))
    spoof.update({"X-Auth-Subject": "admin", "X-Auth-Roles": "admin,service",
                  "X-Auth-Timestamp": "1", "X-Auth-Signature": "f" * 64,
                  "X-Forwarded-For": "10.9.9.9", "Idempotency-Key": "idem-1",
                  "Content-Type": "application/json"})
    st, h, _ = gw.request("POST", "/v1/transfers", spoof, json.dumps({"note": CARD}))
    rec = last_seen(inspector, "/v1/transfers")
    hdrs = rec["headers"]
    subjects = [v for k, v in hdrs if k == "x-auth-subject"]
    t.check("spoofed X-Auth-* replaced: the service sees one subject, the token's",
            st == 200 and subjects == ["cust-7"] and rec["identity_valid"], hdrs)
    t.check("Authorization and X-Forwarded-For not passed on",
            not any(k in ("authorization", "x-forwarded-for") for k, _ in hdrs))
    t.check("Idempotency-Key passed on", ("idempotency-key", "idem-1") in hdrs)
    rid = [v for k, v in hdrs if k == "x-request-id"]
    t.check("X-Request-Id added when absent, same on the answer",
            len(rid) == 1 and h.get("x-request-id") == rid[0])
    gw.request("GET", "/v1/accounts", dict(bearer(token), **{"X-Request-Id": "client-rid-42"}))
    rid = [v for k, v in last_seen(inspector, "/v1/accounts")["headers"] if k == "x-request-id"]
    t.check("a client's safe X-Request-Id is kept", rid == ["client-rid-42"])
    t.check("answers from the service keep their own headers (X-Service)", h.get("x-service") == "inspector")
    t.check("HSTS on every answer", "max-age" in h.get("strict-transport-security", ""))
    # Two Authorization headers, even two valid ones: ambiguous, refused.
    other = t.mint(tool, certs, "k2", "cust-8", ["customer"])
    before = len(inspector.seen)
    c = gw.connection()
    try:
        c.putrequest("GET", "/v1/accounts?dup=1")
        c.putheader("Authorization", "Bearer " + token)
        c.putheader("Authorization", "Bearer " + other)
        c.endheaders()
        r = c.getresponse()
        body = json.loads(r.read() or b"{}")
        t.check("two Authorization headers: 400 ambiguous_credentials",
                r.status == 400 and body.get("error", {}).get("code") == "ambiguous_credentials",
                (r.status, body))
    finally:
        c.close()
    t.check("the ambiguous request never reached the service",
            not any(rec["path"].startswith("/v1/accounts?dup") for rec in inspector.seen[before:]))


def check_routing(gw):
    for method, path, want in (("GET", "/v1/nope", 404), ("GET", "/internal/credentials/verify", 404),
                               ("GET", "/healthz", 404), ("DELETE", "/v1/accounts/x", 405),
                               ("GET", "/v1/accounts/x/secret", 404)):
        st, h, _ = gw.request(method, path)
        t.check("%s %s: %d" % (method, path, want), st == want, st)


def check_rate_limits(binary, tool, certs, inspector):
    gw = t.Gateway(binary, certs, inspector.url, name="gateway-limits",
                   env={"GW_RATE_SUBJECT_RPS": "1", "GW_RATE_SUBJECT_BURST": "3",
                        "GW_RATE_ADDR_RPS": "1", "GW_RATE_ADDR_BURST": "8"})
    if not t.check("gateway with small rate limits starts", gw.ok):
        return
    token = t.mint(tool, certs, "k1", "busy-1", ["customer"])
    conn = gw.connection()
    got = [gw.request("GET", "/v1/accounts", bearer(token), conn=conn) for _ in range(4)]
    statuses = [g[0] for g in got]
    t.check("per subject: burst of 3 served, the 4th gets 429", statuses == [200, 200, 200, 429],
            statuses)
    t.check("429 carries Retry-After >= 1", int(got[3][1].get("retry-after", "0")) >= 1)
    # RateLimit-* (IETF httpapi draft): the tighter of the address and the
    # subject limit, on answers from the service and from the gateway.
    told = [(g[1].get("ratelimit-limit"), g[1].get("ratelimit-remaining"),
             g[1].get("ratelimit-reset")) for g in got]
    t.check("every answer carries RateLimit-Limit, -Remaining and -Reset", all(
        all(v is not None and v.isdigit() for v in h) for h in told), told)
    t.check("... the subject's quota of 3, counting down 2, 1, 0, then 0 with the 429",
            [h[0] for h in told] == ["3"] * 4 and [h[1] for h in told] == ["2", "1", "0", "0"],
            told)
    t.check("... and the seconds until the quota is whole again (1 rps: 1, 2, 3, 3)",
            [int(h[2]) for h in told] == [1, 2, 3, 3], told)
    t.check("429 body is a JSON error rate_limited",
            json.loads(got[3][2])["error"]["code"] == "rate_limited")
    other = t.mint(tool, certs, "k1", "busy-2", ["customer"])
    statuses = [gw.request("GET", "/v1/accounts", bearer(other), conn=conn)[0] for _ in range(5)]
    t.check("per address: the same client is cut at its burst whatever the token",
            statuses[:3] == [200, 200, 200] and 429 in statuses, statuses)
    conn.close()
    t.check("gw_rate_limited_total counts them", (gw.metric("gw_rate_limited_total") or 0) >= 2)
    t.check("SIGTERM: exit status 0 (limits gateway)", gw.stop() == 0)


def check_upstream_failures(binary, tool, certs, inspector):
    dead = "http://127.0.0.1:%d" % t.free_port()
    gw = t.Gateway(binary, certs, inspector.url, name="gateway-upstreams",
                   env={"PAYMENT_URL": dead, "ACCOUNT_URL": dead + "," + inspector.url,
                        "GW_UPSTREAM_TIMEOUT": "700ms", "GW_UPSTREAM_FAILS": "100",
                        "GW_HEALTH_INTERVAL": "60s"})
    if not t.check("gateway with a dead payment service starts", gw.ok):
        return
    token = t.mint(tool, certs, "k1", "cust-9", ["customer"])
    st, _, data = gw.request("GET", "/v1/payments/p1", bearer(token))
    t.check("service down: 503 upstream_unavailable",
            st == 503 and json.loads(data)["error"]["code"] == "upstream_unavailable", (st, data))
    start = time.monotonic()
    st, _, data = gw.request("GET", "/v1/customers/slow", bearer(token))
    took = time.monotonic() - start
    t.check("service too slow: 504 upstream_timeout after ~0.7 s (%.2fs)" % took,
            st == 504 and 0.5 < took < 2.5 and json.loads(data)["error"]["code"] == "upstream_timeout",
            (st, data))
    statuses = [gw.request("GET", "/v1/accounts", bearer(token))[0] for _ in range(6)]
    t.check("idempotent GET with one of two addresses dead: always 200 (retried)",
            statuses == [200] * 6, statuses)
    t.check("gw_upstream_retries_total counts the retries",
            (gw.metric("gw_upstream_retries_total") or 0) >= 1)
    st, body = gw.admin("/readyz")
    t.check("/readyz: 503 while the payment service is down",
            st == 503 and json.loads(body)["services"]["payment"]["up"] == 0, body)
    t.check("SIGTERM: exit status 0 (upstreams gateway)", gw.stop() == 0)


def check_wrong_key(binary, certs, inspector):
    """A gateway whose identity key the services do not share: logins must
    not be told "wrong password", and the operator must be told why."""
    gw = t.Gateway(binary, certs, inspector.url, name="gateway-wrong-key",
                   env={"AUTH_HMAC_KEY": "not-the-key-the-services-have-0123456789"})
    if not t.check("gateway with a foreign AUTH_HMAC_KEY starts", gw.ok):
        return
    st, _, data = gw.request("POST", "/v1/auth/token", {"Content-Type": "application/json"},
                             json.dumps({"email": EMAIL, "password": PASSWORD}))
    t.check("profile refusing the gateway itself: 503, not 401",
            st == 503 and json.loads(data)["error"]["code"] == "upstream_unavailable", (st, data))
    t.check("... and an error line names AUTH_HMAC_KEY", "AUTH_HMAC_KEY" in open(gw.log).read())
    t.check("SIGTERM: exit status 0 (wrong-key gateway)", gw.stop() == 0)


def check_drain(gw, tool, certs):
    """SIGTERM with a request in flight: it completes, then the process exits 0."""
    import threading
    token = t.mint(tool, certs, "k1", "cust-drain", ["customer"])
    result = {}

    def slow():
        result["reply"] = gw.request("GET", "/v1/customers/slow-drain", bearer(token), timeout=15)
    th = threading.Thread(target=slow)
    th.start()
    time.sleep(0.5)
    gw.proc.send_signal(15)
    th.join(15)
    st = result.get("reply", (0,))[0]
    t.check("SIGTERM during a 3 s upstream request: the request still gets its 200", st == 200, st)
    try:
        rc = gw.proc.wait(15)
    except Exception:
        rc = None
    t.check("... then the gateway exits 0 (graceful drain)", rc == 0, rc)


def b64url_int(s):
    import base64
    return int.from_bytes(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)), "big")


def openssl_public(path):
    """The public numbers openssl reads from a PEM public key: {'pub': int}
    for EC (the point 04||x||y), {'n': int, 'e': int} for RSA."""
    out = subprocess.run(["openssl", "pkey", "-pubin", "-in", path, "-noout", "-text"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    import re
    def hexblock(label):
        m = re.search(label + r":\s*\n((?:\s+[0-9a-f:]+\n)+)", out)
        return int(re.sub(r"[\s:]", "", m.group(1)), 16) if m else None
    if "Modulus" in out:
        e = re.search(r"Exponent: (\d+)", out)
        return {"n": hexblock("Modulus"), "e": int(e.group(1)) if e else None}
    return {"pub": hexblock("pub")}


def check_jwks(gw, certs, token):
    st, h, data = gw.request("GET", "/.well-known/jwks.json", {})
    ok = st == 200
    t.check("GET /.well-known/jwks.json without a token: 200", ok, "%d %s" % (st, data[:200]))
    if not ok:
        return
    t.check("... as application/jwk-set+json, cacheable",
            h.get("content-type") == "application/jwk-set+json" and
            "max-age" in h.get("cache-control", ""), str(h))
    keys = {k.get("kid"): k for k in json.loads(data).get("keys", [])}
    t.check("every verification key is published, by kid: k1, k2 (ES256), r1 (RS256)",
            set(keys) == {"k1", "k2", "r1"}, str(sorted(keys)))
    for kid, k in sorted(keys.items()):
        t.check("%s: use sig, alg %s, no private part" % (kid, k.get("alg")),
                k.get("use") == "sig" and k.get("alg") in ("ES256", "RS256") and
                not ({"d", "p", "q", "dp", "dq", "qi"} & set(k)), str(k))
        pub = openssl_public(os.path.join(certs, "jwt", kid + ".pub.pem"))
        if k.get("kty") == "EC":
            x, y = b64url_int(k["x"]), b64url_int(k["y"])
            same = k.get("crv") == "P-256" and pub["pub"] == (4 << 512) | (x << 256) | y
        else:
            same = k.get("kty") == "RSA" and k.get("alg") == "RS256" and \
                pub["n"] == b64url_int(k["n"]) and pub["e"] == b64url_int(k["e"])
        t.check("%s: the JWK is the same public key openssl reads from %s.pub.pem" % (kid, kid),
                same, str(k)[:200])
    if token:
        import base64
        head = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
        t.check("the token the gateway issued names a published kid (%s)" % head.get("kid"),
                head.get("kid") in keys and keys[head["kid"]]["alg"] == head.get("alg"))


def add_rsa_verification_key(certs, kid):
    """A public RSA key only: tokens signed with it are verified, none signed."""
    key = os.path.join(certs, kid + ".rsa.pem")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", key], check=True, capture_output=True, timeout=60)
    subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-out",
                    os.path.join(certs, "jwt", kid + ".pub.pem")],
                   check=True, capture_output=True, timeout=10)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    binary, tool, certs_sh = sys.argv[1:4]
    t.need("openssl")
    t.watchdog(150)
    certs = t.make_certs(certs_sh, kids=("k1", "k2"))
    add_rsa_verification_key(certs, "r1")
    inspector = t.Inspector(slow_s=3)
    gw = t.Gateway(binary, certs, inspector.url, name="gateway-api",
                   env={"GW_UPSTREAM_TIMEOUT": "10s"})
    if not t.check("gateway starts, /readyz 200 once the stand-in answers",
                   gw.ok and t.wait_for(lambda: gw.admin("/readyz")[0] == 200, 10)):
        t.finish()
    token = check_token_endpoint(gw, inspector)
    check_jwks(gw, certs, token)
    check_corpus(gw, tool, certs)
    check_rbac_matrix(gw, binary, tool, certs, inspector)
    check_headers(gw, tool, certs, inspector)
    check_routing(gw)
    check_rate_limits(binary, tool, certs, inspector)
    check_upstream_failures(binary, tool, certs, inspector)
    check_wrong_key(binary, certs, inspector)
    t.check("token cache: hits counted", (gw.metric("gw_token_cache_hits_total") or 0) > 0)
    check_drain(gw, tool, certs)
    t.check_logs_clean(secrets=[PASSWORD] + ([token] if token else []))
    t.finish()


if __name__ == "__main__":
    main()
