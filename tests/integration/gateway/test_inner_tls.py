#!/usr/bin/env python3
"""Mutual TLS inside the platform: the gateway, profile and account with
the platform CA (TLS_CA, TLS_CERT, TLS_KEY from deploy/certs.sh --internal).

    test_inner_tls.py GATEWAY GW_JWT_TOOL CERTS_SH PROFILE_BIN ACCOUNT_BIN BUSD BUSCTL

Needs PostgreSQL with PROFILE_DB_URL and ACCOUNT_DB_URL set; skipped (77)
without them.

Checks: a client showing a certificate of the platform CA gets answers from
a service's port; one without a certificate, one with a certificate of
another CA, and one speaking plain HTTP are each refused before any HTTP
is read; the plain health port answers probes and nothing else. Through the
gateway, sign-up, login and opening an account work, which takes the
gateway's proxy to profile and account and account's own call to profile,
every one of them over mutual TLS (the services take nothing else); and
the customer.created event profile's outbox relay published to busd over
mutual TLS is delivered to a consumer that also speaks it.
"""
import http.client
import os
import socket
import ssl
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest as t  # noqa: E402
import test_real  # noqa: E402  (sign-up and account flows)


def internal_certs(certs_sh, name):
    d = os.path.join(t.TMP, name)
    subprocess.run(["bash", certs_sh, "--internal", d], check=True, stderr=subprocess.DEVNULL,
                   timeout=60)
    return d


def tls_env(inner, name):
    return {"TLS_CA": os.path.join(inner, "ca.crt"),
            "TLS_CERT": os.path.join(inner, name + ".crt"),
            "TLS_KEY": os.path.join(inner, name + ".key")}


def tls_get(port, ca, pair=None, name="profile", path="/healthz"):
    """GET over TLS 1.2 as a client showing `pair` (crt, key) or none: the
    HTTP status, or the error that ended the exchange (a string)."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if pair:
        ctx.load_cert_chain(*pair)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as s:
                s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                           % (path, name)).encode())
                data = b""
                while len(data) < 65536:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
    except (ssl.SSLError, OSError) as e:
        return "refused: %s" % e
    if not data.startswith(b"HTTP/1.1 "):
        return "refused: no HTTP answer (%d bytes)" % len(data)
    return int(data[9:12])


def plain_get(port, path="/healthz"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        return c.getresponse().status
    except (OSError, http.client.HTTPException) as e:
        return "refused: %r" % e
    finally:
        c.close()


def start_busd(busd_bin, inner):
    port, http_port = t.free_port(), t.free_port()
    t.start("busd", [busd_bin], dict(tls_env(inner, "busd"), BUSD_HOST="127.0.0.1",
                                     BUSD_PORT=str(port), BUSD_HTTP_PORT=str(http_port),
                                     BUSD_DATA_DIR=os.path.join(t.TMP, "busd")))
    ok = t.wait_for(lambda: plain_get(http_port, "/readyz") == 200, 20)
    return ok, port


def delivered(busctl_bin, inner, port, topic, needle):
    """Consumes one event of `topic` over mutual TLS: True when it names needle."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TLS_")}
    env.update(tls_env(inner, "bench"), BUSD_HOST="127.0.0.1", BUSD_PORT=str(port))
    p = subprocess.run([busctl_bin, "sub", "--topic", topic, "--group", "itest", "--count", "1"],
                       env=env, capture_output=True, text=True, timeout=20)
    return p.returncode == 0 and needle in p.stdout


def start_services(profile_bin, account_bin, inner, bus_port):
    pport, aport, phealth, ahealth = (t.free_port() for _ in range(4))
    common = {"AUTH_HMAC_KEY": t.HMAC_KEY, "LOG_LEVEL": "info", "ARGON2_M_KIB": "1024",
              "ARGON2_T_COST": "1", "DB_CONNS": "2", "BUS_ADDR": "127.0.0.1:%d" % bus_port}
    t.start("profile", [profile_bin], dict(common, PROFILE_PORT=str(pport),
                                           PROFILE_HEALTH_PORT=str(phealth),
                                           **tls_env(inner, "profile")))
    t.start("account", [account_bin], dict(common, ACCOUNT_PORT=str(aport),
                                           ACCOUNT_HEALTH_PORT=str(ahealth),
                                           PROFILE_ADDR="127.0.0.1:%d" % pport,
                                           **tls_env(inner, "account")))
    ok = t.wait_for(lambda: plain_get(phealth, "/readyz") == 200, 60) and \
        t.wait_for(lambda: plain_get(ahealth, "/readyz") == 200, 60)
    return ok, pport, aport, phealth


def check_service_port(inner, other, pport, phealth):
    ca = os.path.join(inner, "ca.crt")
    ours = (os.path.join(inner, "bench.crt"), os.path.join(inner, "bench.key"))
    theirs = (os.path.join(other, "bench.crt"), os.path.join(other, "bench.key"))
    st = tls_get(pport, ca, ours)
    t.check("our client with the platform CA's certificate: 200", st == 200, st)
    st = tls_get(pport, ca, None)
    t.check("a client without a certificate: refused", str(st).startswith("refused"), st)
    st = tls_get(pport, ca, theirs)
    t.check("a client with another CA's certificate: refused", str(st).startswith("refused"), st)
    st = plain_get(pport)
    t.check("a plain-text client: refused", str(st).startswith("refused"), st)
    st = tls_get(pport, os.path.join(other, "ca.crt"), theirs)
    t.check("a client trusting another CA does not take the service for its peer",
            str(st).startswith("refused"), st)
    t.check("the health port answers probes in plain HTTP", plain_get(phealth) == 200)
    t.check("the health port serves nothing else", plain_get(phealth, "/v1/customers/x") == 404)


def main():
    if len(sys.argv) != 8:
        sys.exit(__doc__)
    binary, tool, certs_sh, profile_bin, account_bin, busd_bin, busctl_bin = sys.argv[1:8]
    if not (os.environ.get("PROFILE_DB_URL") and os.environ.get("ACCOUNT_DB_URL")):
        t.skip("PROFILE_DB_URL/ACCOUNT_DB_URL not set (deploy/pg start; eval \"$(deploy/pg env)\")")
    t.watchdog(170)
    certs = t.make_certs(certs_sh, kids=("k1",))
    inner = internal_certs(certs_sh, "inner")
    other = internal_certs(certs_sh, "other")
    ok, bus_port = start_busd(busd_bin, inner)
    if not t.check("busd starts with mutual TLS", ok):
        t.finish()
    ok, pport, aport, phealth = start_services(profile_bin, account_bin, inner, bus_port)
    if not t.check("profile and account start with mutual TLS and are ready", ok):
        t.finish()
    check_service_port(inner, other, pport, phealth)
    stand_in = t.Inspector()
    gw = t.Gateway(binary, certs, stand_in.url, name="gateway-inner-tls",
                   env=dict(tls_env(inner, "gateway"),
                            PROFILE_URL="http://127.0.0.1:%d" % pport,
                            ACCOUNT_URL="http://127.0.0.1:%d" % aport))
    if not t.check("gateway starts with TLS_CA", gw.ok):
        t.finish()
    own = test_real.check_flows(test_real.Client(gw))
    t.check("sign-up, login and an account through the gateway, all over mutual TLS", own)
    if own:
        t.check("customer.created went to busd over mutual TLS and is delivered",
                delivered(busctl_bin, inner, bus_port, "customer.created", own["customer_id"]))
    t.check("SIGTERM: gateway exits 0", gw.stop() == 0)
    t.finish()


if __name__ == "__main__":
    main()
