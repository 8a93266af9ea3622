#!/usr/bin/env python3
"""The gateway in front of the real profile and account services.

    test_real.py GATEWAY GW_JWT_TOOL CERTS_SH PROFILE_BIN ACCOUNT_BIN

Needs PostgreSQL with PROFILE_DB_URL and ACCOUNT_DB_URL set
(deploy/pg start && eval "$(deploy/pg env)"); skipped (77) without them.
Payment and event do not exist yet: a stand-in answers for them.

Checks: sign-up and login end to end through the gateway (the token comes
from profile's credential check); a customer opens and reads an account;
another customer cannot read it (the service's ownership check, behind the
gateway's role check); and the RBAC matrix of every profile and account
route against no token and each role, where a cell is "allowed" when the
gateway forwarded the request (its access log names the service for that
request id) and "denied" when the gateway itself answered 401 or 403.
"""
import http.client
import json
import os
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest as t  # noqa: E402

ROLES = ["customer", "operator", "auditor", "admin"]
PASSWORD = "correct horse battery staple 42"


def start_services(profile_bin, account_bin):
    pport, aport = t.free_port(), t.free_port()
    common = {"AUTH_HMAC_KEY": t.HMAC_KEY, "LOG_LEVEL": "info", "ARGON2_M_KIB": "1024",
              "ARGON2_T_COST": "1", "DB_CONNS": "2"}
    t.start("profile", [profile_bin], dict(common, PROFILE_PORT=str(pport)))
    t.start("account", [account_bin], dict(common, ACCOUNT_PORT=str(aport),
                                           PROFILE_ADDR="127.0.0.1:%d" % pport))
    def up(port):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            c.request("GET", "/readyz")
            return c.getresponse().status == 200
        finally:
            c.close()
    ok = t.wait_for(lambda: up(pport), 60) and t.wait_for(lambda: up(aport), 60)
    return ok, "http://127.0.0.1:%d" % pport, "http://127.0.0.1:%d" % aport


def access_lines(gw):
    out = {}
    for line in open(gw.log, errors="replace"):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("msg") == "access":
            out[rec.get("rid")] = rec
    return out


class Client:
    """Requests with a fresh request id each, so the access log can tell
    whether the gateway forwarded them."""

    def __init__(self, gw):
        self.gw, self.n = gw, 0

    def call(self, method, path, token=None, body=None):
        self.n += 1
        rid = "itest-%d-%s" % (self.n, uuid.uuid4().hex[:8])
        headers = {"X-Request-Id": rid, "Content-Type": "application/json"}
        if token:
            headers["Authorization"] = "Bearer " + token
        data = json.dumps(body) if body is not None else None
        st, _, raw = self.gw.request(method, path, headers, data)
        try:
            reply = json.loads(raw) if raw else {}
        except ValueError:
            reply = {}
        return st, reply, rid


def sign_up(c, label):
    email = "%s-%s@example.com" % (label, uuid.uuid4().hex[:10])
    st, reply, _ = c.call("POST", "/v1/customers",
                          body={"name": "Test " + label, "email": email, "password": PASSWORD})
    cid = reply.get("id") or reply.get("customer_id")
    st2, tok, _ = c.call("POST", "/v1/auth/token", body={"email": email, "password": PASSWORD})
    return st, cid, st2, tok.get("access_token")


def check_flows(c):
    st, alice, st2, token = sign_up(c, "alice")
    t.check("sign-up through the gateway without a token: 201 with an id", st == 201 and alice, st)
    t.check("login through the gateway (profile checks the password): 200 with a token",
            st2 == 200 and token, st2)
    if not token:
        return None
    st, reply, _ = c.call("GET", "/v1/customers/" + alice, token)
    t.check("GET /v1/customers/{own id}: 200", st == 200 and reply.get("id") == alice, (st, reply))
    st, acct, _ = c.call("POST", "/v1/accounts", token, {"currency": "EUR"})
    account_id = acct.get("id")
    t.check("POST /v1/accounts as that customer: 201", st == 201 and account_id, (st, acct))
    st, reply, _ = c.call("GET", "/v1/accounts/%s" % account_id, token)
    t.check("GET /v1/accounts/{own}: 200", st == 200, (st, reply))
    _, _, _, bob_token = sign_up(c, "bob")
    st, reply, _ = c.call("GET", "/v1/accounts/%s" % account_id, bob_token)
    t.check("another customer reading it: refused by the service (403/404), not by the gateway",
            st in (403, 404), (st, reply))
    st, reply, _ = c.call("GET", "/v1/customers/" + alice, bob_token)
    t.check("another customer's profile: refused by the service", st in (403, 404), (st, reply))
    return {"customer": token, "customer_id": alice, "account_id": account_id}


def check_matrix(gw, binary, tool, certs, c, own):
    routes = [json.loads(line) for line in subprocess.run(
        [binary, "--routes"], capture_output=True, text=True, timeout=10).stdout.splitlines()]
    routes = [r for r in routes if r["service"] in ("profile", "account")]
    tokens = {r: t.mint(tool, certs, "k1", "staff-" + r, [r]) for r in ROLES if r != "customer"}
    tokens["customer"] = own["customer"]
    cells = []
    for route in routes:
        path = route["pattern"].replace("{id}", own["account_id"] if "accounts" in route["pattern"]
                                        else own["customer_id"])
        body = {} if route["method"] in ("POST", "PATCH") else None
        for who in [None] + ROLES:
            want = ("allow" if route["anonymous"] else 401) if who is None else \
                ("allow" if who in route["roles"] else 403)
            st, reply, rid = c.call(route["method"], path, tokens.get(who), body)
            cells.append((route, path, who, want, st, rid))
    time.sleep(0.3)  # access lines are flushed once per loop turn
    lines = access_lines(gw)
    wrong = []
    for route, path, who, want, st, rid in cells:
        rec = lines.get(rid)
        forwarded = rec is not None and rec.get("upstream") == route["service"]
        if want == "allow":
            good = forwarded and st < 500
        else:
            good = rec is not None and not forwarded and st == want
        if not good:
            wrong.append("%s %s as %s: %d %s (want %s)" % (route["method"], path, who, st,
                                                          "forwarded" if forwarded else "answered",
                                                          want))
    t.check("RBAC matrix with the real services: %d cells as the route table says" % len(cells),
            not wrong and len(cells) >= 50, "; ".join(wrong[:8]))


def main():
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    binary, tool, certs_sh, profile_bin, account_bin = sys.argv[1:6]
    if not (os.environ.get("PROFILE_DB_URL") and os.environ.get("ACCOUNT_DB_URL")):
        t.skip("PROFILE_DB_URL/ACCOUNT_DB_URL not set (deploy/pg start; eval \"$(deploy/pg env)\")")
    t.watchdog(170)
    certs = t.make_certs(certs_sh, kids=("k1", "k2"))
    ok, profile_url, account_url = start_services(profile_bin, account_bin)
    if not t.check("profile and account start and are ready", ok):
        t.finish()
    stand_in = t.Inspector()
    gw = t.Gateway(binary, certs, stand_in.url, name="gateway-real",
                   env={"PROFILE_URL": profile_url, "ACCOUNT_URL": account_url})
    if not t.check("gateway starts in front of them", gw.ok):
        t.finish()
    c = Client(gw)
    own = check_flows(c)
    if own:
        check_matrix(gw, binary, tool, certs, c, own)
    t.check("SIGTERM: gateway exits 0", gw.stop() == 0)
    t.check_logs_clean(secrets=[PASSWORD] + ([own["customer"]] if own else []))
    t.finish()


if __name__ == "__main__":
    main()
