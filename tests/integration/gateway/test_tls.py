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

A third gateway holds both pairs (GW_TLS_CERT_RSA): a client offering only
ECDSA suites or signatures gets the ECDSA certificate, one offering only RSA
the RSA one, one offering both the ECDSA one, and each completes a verified
request; sessions resume on the chain they began on; SIGHUP replaces both
pairs at once, or neither when one does not load; an RSA slot holding an EC
pair, or a certificate without its key, is refused at start-up.
"""
import hashlib
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
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


def start_refused(binary, certs, name, env):
    """Starts a gateway expected to refuse its configuration: (exit
    status or None when it kept running, its log)."""
    base = {"GW_PORT": str(t.free_port()), "GW_ADMIN_PORT": str(t.free_port()),
            "AUTH_HMAC_KEY": t.HMAC_KEY, "GW_JWT_KEYS_DIR": os.path.join(certs, "jwt")}
    base.update(env)
    p, log = t.start(name, [binary], base)
    try:
        rc = p.wait(10)
    except subprocess.TimeoutExpired:
        rc = None
        t.stop(p)
    return rc, open(log, errors="replace").read()


def check_mismatched_key(binary, certs, upstream):
    rc, log = start_refused(binary, certs, "gateway-mismatch", {
        "GW_TLS_CERT": os.path.join(certs, "tls-ecdsa.crt"),
        "GW_TLS_KEY": os.path.join(certs, "tls-rsa.key")})
    t.check("certificate with another key's private key: refuses to start (exit 1)", rc == 1, rc)
    t.check("and says why", "cannot load the TLS certificate" in log)


# ---------------------------------------------------------------------------
# Two pairs on one gateway

def file_cert(path):
    with open(path) as f:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()


def served(out):
    """(SHA-256 of the leaf certificate, the key's signature type "ECDSA" or
    "RSA") from s_client's output; None where it does not say."""
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    sha = hashlib.sha256(ssl.PEM_cert_to_DER_cert(m.group(0))).hexdigest() if m else None
    m = re.search(r"^Peer signature type: (\S+)", out, re.M)
    return sha, m.group(1) if m else None


def fetch(gw, ciphers, cafile):
    """GET /hello verified against cafile (host name included), offering
    only `ciphers`: (status, body, suite, SHA-256 of the peer's leaf)."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    c = http.client.HTTPSConnection("localhost", gw.port, timeout=10, context=ctx)
    try:
        c.request("GET", "/hello")
        r = c.getresponse()
        body = r.read().decode(errors="replace")
        return (r.status, body, c.sock.cipher()[0],
                hashlib.sha256(c.sock.getpeercert(binary_form=True)).hexdigest())
    finally:
        c.close()


def pair_files(certs):
    return {k: (os.path.join(certs, "tls-%s.crt" % k), os.path.join(certs, "tls-%s.key" % k))
            for k in ("ecdsa", "rsa")}


def check_choice(gw, files, label):
    """Which certificate each kind of client is sent, and a verified request
    through each."""
    ec, rsa = file_cert(files["ecdsa"][0]), file_cert(files["rsa"][0])
    cases = [
        ("only ECDSA suites", ["-cipher", ":".join(ECDSA_SUITES)], ec, "ECDSA"),
        ("only RSA suites", ["-cipher", ":".join(RSA_SUITES)], rsa, "RSA"),
        ("every suite, only ECDSA signatures", ["-sigalgs", "ECDSA+SHA256:ECDSA+SHA384"], ec,
         "ECDSA"),
        ("every suite, only RSA signatures", ["-sigalgs", "RSA+SHA256:RSA+SHA512"], rsa, "RSA"),
        ("both offered", [], ec, "ECDSA"),
    ]
    for what, args, want, sig in cases:
        rc, out = s_client(gw.port, "-tls1_2", *args)
        got = served(out)
        t.check("%s: a client with %s gets the %s certificate" % (label, what, sig),
                rc == 0 and got == (want, sig) and ("Cipher is ECDHE-%s-" % sig) in out,
                "%s %s" % (got, out[-300:]))
    rc, out = s_client(gw.port, "-tls1_2", "-cipher", ":".join(RSA_SUITES),
                       "-sigalgs", "ECDSA+SHA256")
    t.check("%s: RSA suites with only ECDSA signatures: no chain fits, refused" % label,
            rc != 0 and "Cipher is ECDHE" not in out, out[-300:])
    for suites, ca, want, sig in ((ECDSA_SUITES, files["ecdsa"][0], ec, "ECDSA"),
                                  (RSA_SUITES, files["rsa"][0], rsa, "RSA")):
        st, body, suite, peer = fetch(gw, ":".join(suites), ca)
        t.check("%s: a client offering only %s suites verifies the certificate and is"
                " served (%s)" % (label, sig, suite),
                st == 200 and body == "hello, world\n" and peer == want and suite in suites,
                "%s %r %s" % (st, body[:80], suite))


def check_pair_resumption(gw, files):
    ec, rsa = file_cert(files["ecdsa"][0]), file_cert(files["rsa"][0])
    for suites, want, sig in ((ECDSA_SUITES, ec, "ECDSA"), (RSA_SUITES, rsa, "RSA")):
        sess = os.path.join(t.TMP, "both-%s.pem" % sig)
        rc, out = s_client(gw.port, "-tls1_2", "-cipher", ":".join(suites), sess_out=sess)
        first = rc == 0 and "New, TLSv1.2" in out and served(out) == (want, sig)
        rc, out = s_client(gw.port, "-tls1_2", "-cipher", ":".join(suites), sess_in=sess)
        m = re.search(r"Reused, TLSv1.2, Cipher is (\S+)", out)
        t.check("two pairs: a session begun on the %s chain resumes with its suite" % sig,
                first and rc == 0 and m is not None and m.group(1) in suites, out[-300:])
    # The RSA session, offered by a client that now takes ECDSA only: its
    # suite is not offered, so a full handshake, on the ECDSA chain.
    rc, out = s_client(gw.port, "-tls1_2", "-cipher", ":".join(ECDSA_SUITES),
                       sess_in=os.path.join(t.TMP, "both-RSA.pem"))
    t.check("two pairs: an RSA session offered with ECDSA suites only: a new handshake, ECDSA",
            rc == 0 and "New, TLSv1.2" in out and served(out) == (ec, "ECDSA"), out[-300:])


def replace(src, dst):
    """dst's content becomes src's, by rename (a reader never sees half)."""
    shutil.copyfile(src, dst + ".new")
    os.replace(dst + ".new", dst)


def sighup(gw, word):
    before = open(gw.log, errors="replace").read().count(word)
    gw.proc.send_signal(signal.SIGHUP)
    return t.wait_for(lambda: open(gw.log, errors="replace").read().count(word) > before, 10)


def served_now(gw, suites):
    rc, out = s_client(gw.port, "-tls1_2", "-cipher", ":".join(suites))
    return served(out)[0] if rc == 0 else None


def check_pair_reload(gw, files, certs_sh):
    old = {k: file_cert(v[0]) for k, v in files.items()}
    nxt = pair_files(os.path.join(t.TMP, "certs-next"))
    subprocess.run(["bash", certs_sh, os.path.dirname(nxt["rsa"][0])], check=True,
                   stderr=subprocess.DEVNULL, timeout=60)
    # The new RSA certificate with the old RSA key: that pair does not load,
    # so neither pair changes.
    replace(nxt["rsa"][0], files["rsa"][0])
    ok = sighup(gw, "TLS certificate was not reloaded")
    log = open(gw.log, errors="replace").read()
    t.check("two pairs: SIGHUP with a broken RSA pair is refused, and the log names its file",
            ok and re.search(r'"msg":"TLS certificate and key not loaded","cert":"[^"]*tls-rsa\.crt"',
                             log) is not None)
    t.check("... both old certificates are still served",
            served_now(gw, ECDSA_SUITES) == old["ecdsa"] and served_now(gw, RSA_SUITES) == old["rsa"])
    for k in ("ecdsa", "rsa"):
        replace(nxt[k][0], files[k][0])
        replace(nxt[k][1], files[k][1])
    ok = sighup(gw, "TLS certificate reloaded")
    t.check("two pairs: SIGHUP with both pairs new: reloaded, the log names both keys",
            ok and '"cert_key":"ecdsa-p256,rsa-2048"' in open(gw.log, errors="replace").read())
    new = {k: file_cert(v[0]) for k, v in nxt.items()}
    t.check("... an ECDSA client gets the new ECDSA certificate",
            served_now(gw, ECDSA_SUITES) == new["ecdsa"] != old["ecdsa"])
    t.check("... an RSA client gets the new RSA certificate",
            served_now(gw, RSA_SUITES) == new["rsa"] != old["rsa"])
    check_choice(gw, files, "after the reload")


def check_pair_refusals(binary, certs):
    files = pair_files(certs)
    rc, log = start_refused(binary, certs, "gateway-two-ec", {
        "GW_TLS_CERT": files["ecdsa"][0], "GW_TLS_KEY": files["ecdsa"][1],
        "GW_TLS_CERT_RSA": files["ecdsa"][0], "GW_TLS_KEY_RSA": files["ecdsa"][1]})
    t.check("an EC pair in the RSA slot: refuses to start (exit 1), and says why",
            rc == 1 and "the second TLS certificate must be RSA" in log, log[-300:])
    rc, log = start_refused(binary, certs, "gateway-half-pair", {
        "GW_TLS_CERT": files["ecdsa"][0], "GW_TLS_KEY": files["ecdsa"][1],
        "GW_TLS_CERT_RSA": files["rsa"][0]})
    t.check("GW_TLS_CERT_RSA without GW_TLS_KEY_RSA: a configuration error (exit 2), and says why",
            rc == 2 and "GW_TLS_CERT_RSA and GW_TLS_KEY_RSA go together" in log, log[-300:])


def check_two_pairs(binary, certs, certs_sh, upstream, env):
    # A copy of its own: the reload rewrites the files.
    own = os.path.join(t.TMP, "certs-both")
    shutil.copytree(certs, own)
    gw = t.Gateway(binary, own, upstream, name="gateway-both", env=env, both=True)
    if not t.check("a gateway with both pairs starts", gw.ok):
        return
    t.check("its start-up line names both keys",
            '"cert_key":"ecdsa-p256,rsa-2048"' in open(gw.log).read())
    files = pair_files(own)
    check_choice(gw, files, "two pairs")
    check_pair_resumption(gw, files)
    check_pair_reload(gw, files, certs_sh)
    t.check("SIGTERM: exit status 0 (gateway with both pairs)", gw.stop() == 0)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    binary, httpd, certs_sh = sys.argv[1:4]
    t.need("openssl", "curl")
    t.watchdog(150)
    certs = t.make_certs(certs_sh)
    up_port = t.free_port()
    t.start("bench_httpd", [httpd, "--port", str(up_port)], port=up_port)
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
    check_two_pairs(binary, certs, certs_sh, upstream, env)
    check_pair_refusals(binary, certs)
    t.check("SIGTERM: exit status 0 (ECDSA gateway)", gw.stop() == 0)
    t.check("SIGTERM: exit status 0 (RSA gateway)", gw_rsa.stop() == 0)
    t.check_logs_clean()
    t.finish()


if __name__ == "__main__":
    main()
