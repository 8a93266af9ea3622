#!/usr/bin/env python3
"""Hostile clients over TLS: request smuggling, slowloris, oversized input.

    test_abuse.py GATEWAY BENCH_HTTPD CERTS_SH WIRE_CORPUS_DIR

The smuggling corpus is the wire parser's own (tests/unit/wire/corpus), here
sent through TLS to the live gateway: every malformed request is answered
with its error status and the connection closed; the few well-formed ones
are routed (404: no such route). Slowloris: many connections trickling a
handshake or a request head one byte at a time are all cut off by the
timeouts, while normal clients keep being served quickly. Oversized heads,
targets and bodies get 431, 414 and 413.
"""
import os
import re
import socket
import ssl
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest as t  # noqa: E402

EXTRA = "GET /hello event customer+anonymous;POST /echo event customer+anonymous"


def corpus_file(path):
    """(expected status, request bytes) of one corpus file."""
    expect, body = None, []
    for line in open(path, encoding="utf-8").read().split("\n"):
        if line.startswith("#"):
            m = re.match(r"# expect: (\d+)", line)
            if m:
                expect = int(m.group(1))
            continue
        body.append(line)
    text = "".join(body)
    out, i = bytearray(), 0
    escapes = {"r": 13, "n": 10, "t": 9, "0": 0, "\\": 92}
    while i < len(text):
        c = text[i]
        if c == "\\" and text[i + 1] == "x":
            out.append(int(text[i + 2:i + 4], 16))
            i += 4
        elif c == "\\":
            out.append(escapes[text[i + 1]])
            i += 2
        else:
            out += c.encode("utf-8")
            i += 1
    return expect, bytes(out)


def tls_socket(gw, timeout=5):
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=timeout)
    return gw.context().wrap_socket(raw, server_hostname="localhost")


def exchange(gw, data, seconds=4):
    """Sends data over a new TLS connection; returns (statuses, closed)."""
    s = tls_socket(gw)
    s.sendall(data)
    got, closed = b"", False
    deadline = time.monotonic() + seconds
    s.settimeout(0.3)
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except (ssl.SSLError, OSError):
            closed = True
            break
        if not chunk:
            closed = True
            break
        got += chunk
    s.close()
    return [int(x) for x in re.findall(rb"HTTP/1\.1 (\d{3}) ", got)], closed


def check_smuggling(gw, corpus_dir):
    files = sorted(f for f in os.listdir(corpus_dir) if f.endswith(".txt"))
    wrong = []
    for name in files:
        expect, data = corpus_file(os.path.join(corpus_dir, name))
        statuses, closed = exchange(gw, data)
        if expect == 200:
            good = statuses and all(s in (404, 405) for s in statuses)
        else:
            good = expect in statuses and closed and \
                all(s in (404, 405) for s in statuses[:statuses.index(expect)])
        if not good:
            wrong.append("%s: %s%s" % (name, statuses, "" if closed else " (left open)"))
    t.check("smuggling corpus over TLS: %d requests refused or routed as the parser says" % len(files),
            len(files) > 50 and not wrong, "; ".join(wrong[:8]))


def trickle(sock, data, stop, every=0.2):
    """Sends data a byte at a time; returns when cut off or told to stop."""
    for i in range(len(data)):
        if stop.is_set():
            return False
        try:
            sock.send(data[i:i + 1])
        except OSError:
            return True
        time.sleep(every)
    return False


def hold(gw, kind, results, stop):
    try:
        if kind == "handshake":
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            data = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64
        else:
            s = tls_socket(gw)
            data = b"GET /hello HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 200
        start = time.monotonic()
        cut = trickle(s, data, stop)  # False: all sent, or told to stop
        results.append((kind, cut, time.monotonic() - start))
        s.close()
    except Exception as e:
        results.append((kind, False, repr(e)))


def check_slowloris(gw):
    results, stop, threads = [], threading.Event(), []
    for i in range(40):
        th = threading.Thread(target=hold, args=(gw, "handshake" if i % 2 else "head", results, stop))
        th.start()
        threads.append(th)
    # Meanwhile, normal clients: each request on a new TLS connection.
    worst, served = 0.0, 0
    start = time.monotonic()
    while time.monotonic() - start < 4:
        t0 = time.monotonic()
        st, _, body = gw.request("GET", "/hello", timeout=5)
        worst = max(worst, time.monotonic() - t0)
        served += st == 200 and body == b"hello, world\n"
        time.sleep(0.1)
    for th in threads:
        th.join(15)
    stop.set()
    cut = [r for r in results if r[1] is True]
    late = [r for r in cut if r[2] > 5]
    t.check("slowloris: all 40 trickling connections (20 handshakes, 20 heads) cut off",
            len(cut) == 40, [r for r in results if r[1] is not True][:5])
    t.check("... each within the timeouts (< 5 s)", not late, late[:5])
    t.check("normal clients served meanwhile (%d requests, worst %.0f ms)" % (served, worst * 1000),
            served >= 20 and worst < 1.0)
    t.check("408s or stalls counted",
            (gw.metric("gw_http_request_timeouts_total") or 0) + (gw.metric("gw_tls_stalled_total") or 0) >= 20)


def check_sizes(gw):
    st, _, _ = gw.request("GET", "/hello", {"X-Big": "a" * 9000})
    t.check("header block above 8 KiB: 431", st == 431, st)
    st, _, _ = gw.request("GET", "/hello?" + "q" * 3000)
    t.check("target above 2 KiB: 414", st == 414, st)
    st, _, _ = gw.request("POST", "/echo", {"Content-Type": "application/octet-stream"}, b"x" * 5000)
    t.check("body above HTTP_BODY_BYTES_MAX (4 KiB here): 413", st == 413, st)
    st, _, body = gw.request("POST", "/echo", {"Content-Type": "application/octet-stream"}, b"y" * 4000)
    t.check("body just under it: proxied", st == 200 and body == b"y" * 4000, st)


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    binary, httpd, certs_sh, corpus_dir = sys.argv[1:5]
    t.need("openssl")
    t.watchdog(150)
    certs = t.make_certs(certs_sh)
    up_port = t.free_port()
    t.start("bench_httpd", [httpd, "--port", str(up_port)], port=up_port)
    gw = t.Gateway(binary, certs, "http://127.0.0.1:%d" % up_port, name="gateway-abuse",
                   env={"GW_EXTRA_ROUTES": EXTRA, "GW_TLS_HANDSHAKE_TIMEOUT": "2s",
                        "HTTP_HEADER_TIMEOUT_MS": "2000", "HTTP_BODY_BYTES_MAX": "4096"})
    if not t.check("gateway starts", gw.ok):
        t.finish()
    check_smuggling(gw, corpus_dir)
    check_sizes(gw)
    check_slowloris(gw)
    t.check("SIGTERM: exit status 0", gw.stop() == 0)
    t.check_logs_clean()
    t.finish()


if __name__ == "__main__":
    main()
