#!/usr/bin/env python3
"""The gateway's TLS record buffers as real clients see them.

    test_tls_records.py GATEWAY BENCH_HTTPD CERTS_SH

A connection holds record buffers only while one of its records is partly
received (gateway/tls_filter.c). One loop thread and HTTP_CONNS_MAX=8 give
3 connections that may hold some at once. Checks, over real sockets:
pipelined requests in one write; a 256 KiB upload sent in 1000-byte pieces,
so that records arrive across many reads; the answers to idle connections;
three connections each stopped half-way through a record, a fourth that
does the same closed and counted, the three then completing; renegotiation
refused (openssl s_client's "R"); a resumed session; SIGTERM.
"""
import os
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest as t  # noqa: E402

EXTRA = "GET /hello event customer+anonymous;POST /echo event customer+anonymous"
HELLO = b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n"
RECORDS_HELD_MAX = 3  # HTTP_CONNS_MAX / 4 + 1 (gateway/main.c)


class Client:
    """A TLS client whose records are sent as the test decides: the request
    is encrypted into memory, then written to the socket in pieces."""

    def __init__(self, gw):
        self.sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = gw.context().wrap_bio(self.inc, self.out, server_hostname="localhost")
        self.plain = b""
        for _ in range(32):
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                self.receive()
        self.flush()

    def flush(self):
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def receive(self):
        data = self.sock.recv(65536)
        if not data:
            raise OSError("the gateway closed the connection")
        self.inc.write(data)

    def records(self, plain):
        """The records that carry `plain`, not sent."""
        self.tls.write(plain)
        return self.out.read()

    def send_in_pieces(self, data, piece, pause_every=0, pause_s=0.0):
        for i in range(0, len(data), piece):
            self.sock.sendall(data[i:i + piece])
            if pause_every and (i // piece) % pause_every == pause_every - 1:
                time.sleep(pause_s)

    def responses(self, count):
        """Reads `count` whole responses: [(status, body)]."""
        out = []
        for _ in range(4096):
            while True:
                try:
                    self.plain += self.tls.read(65536)
                except ssl.SSLWantReadError:
                    break
            while len(out) < count:
                r = parse_one(self.plain)
                if r is None:
                    break
                status, body, used = r
                out.append((status, body))
                self.plain = self.plain[used:]
            if len(out) == count:
                return out
            self.receive()
        return out

    def closed_within(self, seconds):
        self.sock.settimeout(0.2)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if self.sock.recv(4096) == b"":
                    return True
            except socket.timeout:
                continue
            except OSError:
                return True
        return False

    def close(self):
        self.sock.close()


def parse_one(data):
    """(status, body, bytes used) of the first whole response, or None."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if len(data) < end + 4 + length:
        return None
    return int(lines[0].split()[1]), data[end + 4:end + 4 + length], end + 4 + length


def echo_request(body):
    return (b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


def check_pipelined(gw):
    c = Client(gw)
    c.sock.sendall(c.records(HELLO * 3))
    got = c.responses(3)
    t.check("three pipelined requests in one write: three answers, in order",
            [s for s, _ in got] == [200, 200, 200] and all(b == b"hello, world\n" for _, b in got),
            got)
    c.close()


def check_slow_upload(gw):
    c = Client(gw)
    body = os.urandom(256 * 1024)
    recs = c.records(echo_request(body))
    c.send_in_pieces(recs, 1000, pause_every=16, pause_s=0.005)
    got = c.responses(1)
    t.check("256 KiB upload in 1000-byte pieces: echoed byte for byte",
            len(got) == 1 and got[0][0] == 200 and got[0][1] == body,
            got[0][0] if got else "no answer")
    # The same connection, idle now, then asked again: the answer comes.
    time.sleep(0.2)
    c.sock.sendall(c.records(HELLO))
    got = c.responses(1)
    t.check("the same connection after a pause: answered", got and got[0][0] == 200)
    c.close()


def check_exhausted(gw):
    before = gw.metric("gw_tls_record_buffers_exhausted_total") or 0
    held = [Client(gw) for _ in range(RECORDS_HELD_MAX)]
    rest = []
    for c in held:
        recs = c.records(HELLO)
        c.sock.sendall(recs[:10])
        rest.append(recs[10:])
    time.sleep(0.3)
    extra = Client(gw)
    extra.sock.sendall(extra.records(HELLO)[:10])
    t.check("a 4th connection half-way through a record, no buffer left: closed",
            extra.closed_within(3))
    t.check("gw_tls_record_buffers_exhausted_total counts it",
            t.wait_for(lambda: gw.metric("gw_tls_record_buffers_exhausted_total") == before + 1, 3),
            gw.metric("gw_tls_record_buffers_exhausted_total"))
    answered = 0
    for c, r in zip(held, rest):
        c.sock.sendall(r)
        got = c.responses(1)
        answered += bool(got) and got[0][0] == 200
        c.close()
    t.check("the %d that held buffers complete their records and are answered" % RECORDS_HELD_MAX,
            answered == RECORDS_HELD_MAX, answered)
    extra.close()
    c = Client(gw)
    c.sock.sendall(c.records(HELLO))
    got = c.responses(1)
    t.check("a new connection afterwards: answered", got and got[0][0] == 200)
    c.close()


def check_renegotiation(gw):
    before = gw.metric("gw_tls_handshakes_total") or 0
    # "R" on its own line asks s_client to renegotiate.
    script = "sleep 1; printf 'R\\n'; sleep 1"
    p = subprocess.run("(%s) | openssl s_client -connect 127.0.0.1:%d -tls1_2 -servername localhost"
                       % (script, gw.port), shell=True, capture_output=True, timeout=20)
    out = (p.stdout + p.stderr).decode(errors="replace")
    t.check("renegotiation asked by the client: refused (no_renegotiation)",
            "RENEGOTIATING" in out and "no renegotiation" in out, out[-400:])
    t.check("and no second handshake completed",
            gw.metric("gw_tls_handshakes_total") == before + 1,
            (before, gw.metric("gw_tls_handshakes_total")))
    c = Client(gw)
    c.sock.sendall(c.records(HELLO))
    got = c.responses(1)
    t.check("others are served as before", got and got[0][0] == 200)
    c.close()


def check_resumed(gw):
    ctx = gw.context()
    s1 = ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.port), timeout=5),
                         server_hostname="localhost")
    s1.sendall(HELLO)
    s1.recv(4096)
    session = s1.session
    s1.close()
    before = gw.metric("gw_tls_resumed_total") or 0
    s2 = ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.port), timeout=5),
                         server_hostname="localhost", session=session)
    s2.sendall(HELLO)
    data = s2.recv(4096)
    t.check("a resumed session, then a request on it",
            s2.session_reused and data.startswith(b"HTTP/1.1 200"), data[:40])
    t.check("gw_tls_resumed_total counts it", gw.metric("gw_tls_resumed_total") == before + 1)
    s2.close()


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    binary, httpd, certs_sh = sys.argv[1:4]
    t.need("openssl")
    t.watchdog(150)
    certs = t.make_certs(certs_sh)
    up_port = t.free_port()
    t.start("bench_httpd", [httpd, "--port", str(up_port)], port=up_port)
    env = {"GW_EXTRA_ROUTES": EXTRA, "GW_THREADS": "1", "HTTP_CONNS_MAX": "8",
           "GW_TLS_HANDSHAKE_TIMEOUT": "10s"}
    gw = t.Gateway(binary, certs, "http://127.0.0.1:%d" % up_port, env=env)
    if not t.check("gateway starts (1 thread, 8 connections)", gw.ok):
        t.finish()
    t.check("it says how it sized its thread",
            '"tls_record_buffers":%d' % RECORDS_HELD_MAX in open(gw.log).read())
    check_pipelined(gw)
    check_slow_upload(gw)
    check_exhausted(gw)
    check_renegotiation(gw)
    check_resumed(gw)
    t.check("SIGTERM: exit status 0", gw.stop() == 0)
    t.check_logs_clean()
    t.finish()


if __name__ == "__main__":
    main()
