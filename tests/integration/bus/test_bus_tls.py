#!/usr/bin/env python3
"""busd over mutual TLS (TLS_CA, TLS_CERT, TLS_KEY from deploy/certs.sh
--internal).

    test_bus_tls.py BUSD BUSCTL CERTS_SH

Checks: busctl with a certificate of the platform CA publishes events
that busd confirms, and a consumer with one gets them delivered; a client
without a certificate, one with another CA's, and one speaking the plain
bus protocol are refused before any frame is read (busd counts them in
busd_tls_failed_total), and none of their events reaches the log; and a
bus client that trusts another CA does not take our busd for its own.
"""
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

TMP = tempfile.mkdtemp(prefix="bus-tls-")
passed = failed = 0
procs = []


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print("ok   " + name, file=sys.stderr)
    else:
        failed += 1
        print("FAIL %s -- %s" % (name, detail), file=sys.stderr)
    return cond


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def certs(certs_sh, name):
    d = os.path.join(TMP, name)
    subprocess.run(["bash", certs_sh, "--internal", d], check=True, stderr=subprocess.DEVNULL,
                   timeout=60)
    return d


def tls_env(d, name, ca_dir=None):
    env = {"TLS_CA": os.path.join(ca_dir or d, "ca.crt")}
    if name:
        env["TLS_CERT"] = os.path.join(d, name + ".crt")
        env["TLS_KEY"] = os.path.join(d, name + ".key")
    return env


def busctl(busctl_bin, port, args, env, timeout=15):
    full = {k: v for k, v in os.environ.items() if not k.startswith("TLS_")}
    full.update(env, BUSD_HOST="127.0.0.1", BUSD_PORT=str(port))
    try:
        p = subprocess.run([busctl_bin] + args, env=full, capture_output=True, text=True,
                           timeout=timeout)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        # What it wrote so far comes as bytes whatever `text` said.
        def text(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        return None, text(e.stdout), text(e.stderr)


def metric(http_port, name):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % http_port, timeout=5).read()
    m = re.search(r"^%s (\d+)$" % re.escape(name), text.decode(), re.M)
    return int(m.group(1)) if m else None


def raw_refused(port, ctx=None):
    """True when busd closes a connection that sent a HELLO without saying
    a frame back (over TLS with ctx, else in plain)."""
    body = b"\x82\xa1t\xa5HELLO\xa1v\x01"  # any bytes: they must never be read as a frame
    frame = struct.pack(">I", len(body)) + body
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            s = ctx.wrap_socket(raw, server_hostname="busd") if ctx else raw
            s.sendall(frame)
            data = s.recv(4096)
            return data == b""
    except (ssl.SSLError, OSError):
        return True


def client_ctx(ca, pair=None):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if pair:
        ctx.load_cert_chain(*pair)
    return ctx


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    busd_bin, busctl_bin, certs_sh = sys.argv[1:4]
    ours, other = certs(certs_sh, "ours"), certs(certs_sh, "other")
    port, http_port = free_port(), free_port()
    env = dict(os.environ, BUSD_HOST="127.0.0.1", BUSD_PORT=str(port),
               BUSD_HTTP_PORT=str(http_port), BUSD_DATA_DIR=os.path.join(TMP, "data"),
               **tls_env(ours, "busd"))
    log = open(os.path.join(TMP, "busd.log"), "wb")
    busd = subprocess.Popen([busd_bin], env=env, stdout=log, stderr=log, start_new_session=True)
    procs.append(busd)
    up = False
    for _ in range(100):
        try:
            up = metric(http_port, "busd_tls_failed_total") == 0
            break
        except OSError:
            time.sleep(0.1)
    if not check("busd starts with TLS_CA", up):
        return
    rc, _, err = busctl(busctl_bin, port, ["pub", "--topic", "tls.t", "--data", "ours",
                                           "--count", "5"], tls_env(ours, "bench"))
    check("busctl with the platform CA's certificate: 5 events confirmed",
          rc == 0 and "confirmed 5" in err, (rc, err[-300:]))
    rc, out, err = busctl(busctl_bin, port, ["sub", "--topic", "tls.t", "--group", "g",
                                             "--count", "5"], tls_env(ours, "account"))
    lines = [ln for ln in out.splitlines() if ln.startswith("tls.t ")]
    check("a consumer with one gets the 5 delivered", rc == 0 and len(lines) == 5 and
          all(ln.endswith(" ours") for ln in lines), (rc, out[-300:], err[-300:]))

    failed_before = metric(http_port, "busd_tls_failed_total")
    cases = [
        ("without a certificate", tls_env(ours, None)),
        ("with another CA's certificate", tls_env(other, "bench", ca_dir=ours)),
        ("in plain TCP", {}),
    ]
    for what, cenv in cases:
        rc, _, err = busctl(busctl_bin, port, ["pub", "--topic", "tls.t", "--data", "theirs"],
                            cenv, timeout=3)
        check("busctl %s: no event confirmed" % what, rc is None and "confirmed 1" not in err,
              (rc, err[-300:]))
    ca = os.path.join(ours, "ca.crt")
    check("a raw TLS client without a certificate is closed without a frame",
          raw_refused(port, client_ctx(ca)))
    check("a raw client with another CA's certificate is closed without a frame",
          raw_refused(port, client_ctx(ca, (os.path.join(other, "bench.crt"),
                                            os.path.join(other, "bench.key")))))
    check("a raw plain client is closed without a frame", raw_refused(port))
    failed_after = metric(http_port, "busd_tls_failed_total")
    check("busd counts the refusals", failed_after - failed_before >= 5,
          (failed_before, failed_after))
    rc, _, err = busctl(busctl_bin, port, ["pub", "--topic", "tls.t", "--data", "x"],
                        tls_env(other, "bench"), timeout=3)
    check("a bus client trusting another CA does not take our busd for its own",
          rc is None and "confirmed 1" not in err, (rc, err[-300:]))
    check("the log holds our 5 events and none of theirs",
          metric(http_port, "busd_published_total") == 5,
          metric(http_port, "busd_published_total"))
    busd.send_signal(signal.SIGTERM)
    check("busd exits 0 on SIGTERM", busd.wait(15) == 0)


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        if failed:
            print(open(os.path.join(TMP, "busd.log"), errors="replace").read()[-3000:],
                  file=sys.stderr)
        shutil.rmtree(TMP, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed), file=sys.stderr)
    sys.exit(1 if failed or passed == 0 else 0)
