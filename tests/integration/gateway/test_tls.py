#!/usr/bin/env python3
"""The gateway's TLS as real clients see it (curl, openssl s_client).

    test_tls.py GATEWAY BENCH_HTTPD CERTS_SH

bench_httpd stands in for the services. Checks: HTTPS through curl with the
dev certificate (proxying, a 100 KiB body, keep-alive reuse, HSTS on every
answer, the gateway's own 404s included); a handshake with each allowed suite
(ECDSA certificate, then an RSA one on a second gateway); TLS 1.0, 1.1 and
1.3, CBC suites and static RSA refused; session resumption across loop
threads; slow and silent handshakes cut off; the per-address connection cap;
a certificate that does not match its key refused at start-up; SIGTERM.
"""
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest as t  # noqa: E402

ECDSA_SUITES = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                "ECDHE-ECDSA-CHACHA20-POLY1305"]
RSA_SUITES = ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
              "ECDHE-RSA-CHACHA20-POLY1305"]
EXTRA = "GET /hello event customer+anonymous;POST /echo event customer+anonymous"


def s_client(port, *args, sess_out=None, sess_in=None, timeout=10):
    """Runs openssl s_client; returns (exit status, combined output)."""
    argv = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
            "-servername", "localhost"] + list(args)
    if sess_out:
        argv += ["-sess_out", sess_out]
    if sess_in:
        argv += ["-sess_in", sess_in]
    try:
        p = subprocess.run(argv, input=b"", capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "timeout"
    return p.returncode, (p.stdout + p.stderr).decode(errors="replace")


def negotiated(out, suite):
    return ("Cipher is " + suite) in out and "TLSv1.2" in out


def refused(rc, out):
    return rc != 0 and "Cipher is (NONE)" in out or ("Cipher is" not in out and rc != 0)


def curl(gw, *args):
    argv = ["curl", "-sS", "--http1.1", "--tlsv1.2", "--max-time", "10",
            "--cacert", gw.ca] + list(args)
    p = subprocess.run(argv, capture_output=True, timeout=20)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def check_https(gw):
    base = "https://localhost:%d" % gw.port
    rc, out, _ = curl(gw, "-i", base + "/hello")
    t.check("curl GET /hello through the gateway: 200, body from the upstream",
            rc == 0 and out.startswith("HTTP/1.1 200") and out.endswith("hello, world\n"), out[:200])
    t.check("HSTS header on a proxied answer",
            "Strict-Transport-Security: max-age=31536000; includeSubDomains" in out, out[:300])
    t.check("X-Request-Id on the answer", "X-Request-Id: " in out)
    rc, out, _ = curl(gw, "-i", base + "/no/such/route")
    t.check("unknown route: 404, and HSTS even on the server's own answer",
            out.startswith("HTTP/1.1 404") and "Strict-Transport-Security:" in out, out[:200])
    body = os.urandom(100 * 1024)
    path = os.path.join(t.TMP, "in.bin")
    open(path, "wb").write(body)
    rc, out, err = curl(gw, "-o", os.path.join(t.TMP, "out.bin"), "-w", "%{http_code}",
                        "--data-binary", "@" + path, "-H", "Content-Type: application/octet-stream",
                        base + "/echo")
    t.check("POST /echo: 100 KiB round trip byte for byte through TLS and the proxy",
            out == "200" and open(os.path.join(t.TMP, "out.bin"), "rb").read() == body, out + err)
    rc, out, err = curl(gw, "-v", "-o", "/dev/null", "-o", "/dev/null", base + "/hello",
                        base + "/hello")
    t.check("keep-alive: two requests on one TLS connection",
            "Re-using existing connection" in err or "Reusing existing connection" in err, err[-300:])


def check_suites(gw, suites, label):
    for suite in suites:
        rc, out = s_client(gw.port, "-tls1_2", "-cipher", suite)
        t.check("%s certificate: handshake with %s" % (label, suite), rc == 0 and negotiated(out, suite),
                out[-400:])


def check_groups(gw, gw_rsa, label):
    """ECDHE over X25519 (preferred) and over P-256, each key exchange path."""
    rc, out = s_client(gw.port, "-tls1_2")
    t.check("%s: default client gets X25519 ECDHE" % label,
            rc == 0 and "Server Temp Key: X25519" in out, out[-300:])
    rc, out = s_client(gw.port, "-tls1_2", "-curves", "prime256v1")
    t.check("%s: P-256-only client gets P-256 ECDHE" % label,
            rc == 0 and "prime256v1" in out and "Cipher is ECDHE" in out, out[-300:])
    if gw_rsa is not None:
        # With an ECDSA certificate OpenSSL insists on P-256 in the list, so
        # X25519 alone is tried against the RSA certificate.
        rc, out = s_client(gw_rsa.port, "-tls1_2", "-curves", "X25519")
        t.check("%s: X25519-only client (RSA certificate)" % label,
                rc == 0 and "Server Temp Key: X25519" in out, out[-300:])


def check_refusals(gw_ec, gw_rsa):
    # The client is allowed every old thing (SECLEVEL=0) so that it is the
    # server that says no.
    for flag in ("-tls1", "-tls1_1"):
        rc, out = s_client(gw_ec.port, flag, "-cipher", "DEFAULT@SECLEVEL=0")
        t.check("%s refused" % flag, rc != 0 and "Cipher is" not in out.replace("Cipher is (NONE)", ""),
                out[-300:])
    rc, out = s_client(gw_ec.port, "-tls1_3")
    t.check("TLS 1.3 only client refused (TLS 1.2 only)", rc != 0, out[-300:])
    for suite in ("ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384"):
        rc, out = s_client(gw_ec.port, "-tls1_2", "-cipher", suite + "@SECLEVEL=0")
        t.check("CBC suite %s refused" % suite, rc != 0 and not negotiated(out, suite), out[-300:])
    for gw, label in ((gw_rsa, "RSA"), (gw_ec, "ECDSA")):
        rc, out = s_client(gw.port, "-tls1_2", "-cipher", "AES128-GCM-SHA256")
        t.check("static RSA (AES128-GCM-SHA256) refused, %s certificate" % label,
                rc != 0 and not negotiated(out, "AES128-GCM-SHA256"), out[-300:])
        rc, out = s_client(gw.port, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA@SECLEVEL=0")
        t.check("ECDHE-RSA CBC refused, %s certificate" % label, rc != 0, out[-300:])
    rc, out = s_client(gw_rsa.port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
    t.check("ECDSA suite against the RSA certificate: no shared suite", rc != 0, out[-300:])


def check_resumption(gw):
    sess = os.path.join(t.TMP, "session.pem")
    rc, out = s_client(gw.port, "-tls1_2", sess_out=sess)
    t.check("first handshake is new", rc == 0 and "New, TLSv1.2" in out, out[-300:])
    reused = 0
    for _ in range(6):  # connections land on both loop threads
        rc, out = s_client(gw.port, "-tls1_2", sess_in=sess)
        reused += rc == 0 and "Reused, TLSv1.2" in out
    t.check("session resumption: 6 of 6 handshakes show \"Reused\" (cache shared by threads)",
            reused == 6, "reused %d" % reused)
    t.check("gw_tls_resumed_total counts them", (gw.metric("gw_tls_resumed_total") or 0) >= 6)


def closed_within(sock, seconds):
    """True when the peer closes (EOF or reset) within `seconds`."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if sock.recv(4096) == b"":
                return True
        except socket.timeout:
            continue
        except OSError:
            return True
    return False


def check_slow_handshakes(gw):
    # A ClientHello record header, one byte every 300 ms: never completes.
    trickle = socket.create_connection(("127.0.0.1", gw.port))
    silent = socket.create_connection(("127.0.0.1", gw.port))
    start = time.monotonic()
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32
    closed = False
    for i in range(len(hello)):
        try:
            trickle.send(hello[i:i + 1])
        except OSError:
            closed = True
            break
        if closed_within(trickle, 0.3):
            closed = True
            break
    took = time.monotonic() - start
    t.check("handshake sent a byte at a time: cut off by the 1 s handshake timeout (%.1fs)" % took,
            closed and took < 3.5)
    t.check("silent connection: cut off too", closed_within(silent, 3))
    trickle.close()
    silent.close()
    t.check("gw_tls_stalled_total counts them", (gw.metric("gw_tls_stalled_total") or 0) >= 2)
    rc, out, _ = curl(gw, "https://localhost:%d/hello" % gw.port)
    t.check("normal clients still served", out == "hello, world\n")


def check_conn_cap(binary, certs, upstream):
    # This one also runs on BearSSL's own curve arithmetic, so that both
    # back ends shake hands with real clients.
    gw = t.Gateway(binary, certs, upstream, name="gateway-cap",
                   env={"GW_CONNS_PER_ADDR": "5", "GW_EXTRA_ROUTES": EXTRA,
                        "GW_TLS_HANDSHAKE_TIMEOUT": "10s", "GW_TLS_EC": "bearssl"})
    if not t.check("gateway with GW_CONNS_PER_ADDR=5 and GW_TLS_EC=bearssl starts", gw.ok):
        return
    t.check("it says so in its start-up line", '"tls_ec":"bearssl"' in open(gw.log).read())
    check_suites(gw, ECDSA_SUITES, "BearSSL curves, ECDSA")
    check_groups(gw, None, "BearSSL curves")
    # The start-up probe's connection must be gone before counting.
    t.wait_for(lambda: gw.metric("gw_http_connections_active") == 0, 5)
    held = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(5)]
    time.sleep(0.2)
    sixth = socket.create_connection(("127.0.0.1", gw.port))
    t.check("6th connection from one address closed at once", closed_within(sixth, 2))
    t.check("held connections stay open", not any(closed_within(s, 0.05) for s in held))
    t.check("gw_conns_refused_per_addr_total counts it",
            (gw.metric("gw_conns_refused_per_addr_total") or 0) >= 1)
    for s in held:
        s.close()
    ok = t.wait_for(lambda: curl(gw, "https://localhost:%d/hello" % gw.port)[1] == "hello, world\n", 5)
    t.check("after they close, the address is served again", ok)
    t.check("SIGTERM: exit status 0 (cap gateway)", gw.stop() == 0)


def check_mismatched_key(binary, certs, upstream):
    env = {"GW_TLS_CERT": os.path.join(certs, "tls-ecdsa.crt"),
           "GW_TLS_KEY": os.path.join(certs, "tls-rsa.key")}
    gw = t.Gateway.__new__(t.Gateway)
    gw.port, gw.admin_port = t.free_port(), t.free_port()
    base = {"GW_PORT": str(gw.port), "GW_ADMIN_PORT": str(gw.admin_port), "AUTH_HMAC_KEY": t.HMAC_KEY,
            "GW_JWT_KEYS_DIR": os.path.join(certs, "jwt")}
    base.update(env)
    p, log = t.start("gateway-mismatch", [binary], base)
    try:
        rc = p.wait(10)
    except subprocess.TimeoutExpired:
        rc = None
    t.check("certificate with another key's private key: refuses to start (exit 1)", rc == 1, rc)
    t.check("and says why", "cannot load the TLS certificate" in open(log).read())


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    binary, httpd, certs_sh = sys.argv[1:4]
    t.need("openssl", "curl")
    t.watchdog(150)
    certs = t.make_certs(certs_sh, rsa=True)
    up_port = t.free_port()
    t.start("bench_httpd", [httpd, "--port", str(up_port)])
    upstream = "http://127.0.0.1:%d" % up_port
    env = {"GW_EXTRA_ROUTES": EXTRA, "GW_TLS_HANDSHAKE_TIMEOUT": "1s"}
    gw = t.Gateway(binary, certs, upstream, name="gateway-ecdsa", env=env)
    gw_rsa = t.Gateway(binary, certs, upstream, name="gateway-rsa", env=env, rsa=True)
    if not t.check("both gateways start (ECDSA and RSA certificates)", gw.ok and gw_rsa.ok):
        t.finish()
    check_https(gw)
    ec = "libcrypto" if '"tls_ec":"libcrypto"' in open(gw.log).read() else "bearssl"
    check_suites(gw, ECDSA_SUITES, "ECDSA")
    check_suites(gw_rsa, RSA_SUITES, "RSA")
    check_groups(gw, gw_rsa, "%s curves" % ec)
    check_refusals(gw, gw_rsa)
    check_resumption(gw)
    check_slow_handshakes(gw)
    check_conn_cap(binary, certs, upstream)
    check_mismatched_key(binary, certs, upstream)
    t.check("SIGTERM: exit status 0 (ECDSA gateway)", gw.stop() == 0)
    t.check("SIGTERM: exit status 0 (RSA gateway)", gw_rsa.stop() == 0)
    t.check_logs_clean()
    t.finish()


if __name__ == "__main__":
    main()
