#!/usr/bin/env python3
"""Memory of idle TLS keep-alive connections in a server process.

usage: idle_conns.py PORT CONNS CAFILE PID [PID...]

Reads the resident memory of the server's processes (PIDs: the gateway, or
nginx's worker), opens CONNS TLS 1.2 connections to 127.0.0.1:PORT one after
the other, sends one GET /hello on each (with the bearer token in $TOKEN)
and reads its whole answer, keeps them all open and idle, waits for the
server to settle, reads the memory again, closes them, and prints one JSON
line: the memory at start and with the connections idle, and the bytes per
connection between the two.

Every connection makes a full handshake (no session is offered back), the
way distinct clients would; the suite is the one the throughput runs use.
Exits non-zero when a connection fails or an answer is not a 200.
"""
import json
import os
import socket
import ssl
import sys
import time

SUITE = "ECDHE-ECDSA-AES128-GCM-SHA256"
SETTLE_S = 1.0        # after the last answer: the server's last frees done
ANSWER_BYTES_MAX = 1 << 16


def memory_kb(pid):
    """VmRSS and Pss of a process, in KiB."""
    out = {"rss_kb": 0, "pss_kb": 0}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss_kb"] = int(line.split()[1])
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    out["pss_kb"] = int(line.split()[1])
    except OSError:
        pass
    return out


def memory_of(pids):
    per = {pid: memory_kb(pid) for pid in pids}
    return {"rss_kb": sum(m["rss_kb"] for m in per.values()),
            "pss_kb": sum(m["pss_kb"] for m in per.values())}


def read_answer(s):
    """Reads one HTTP/1.1 answer with a Content-Length; returns its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise OSError("connection closed before the answer's head")
        data += chunk
        if len(data) > ANSWER_BYTES_MAX:
            raise OSError("answer head too long")
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length > ANSWER_BYTES_MAX:
        raise OSError("answer body too long")
    while len(body) < length:
        chunk = s.recv(length - len(body))
        if not chunk:
            raise OSError("connection closed inside the answer's body")
        body += chunk
    return status


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    port, conns, cafile = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    pids = [int(p) for p in sys.argv[4:]]
    token = os.environ.get("TOKEN", "")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(SUITE)
    request = ("GET /hello HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer %s\r\n\r\n"
               % token).encode()

    start = memory_of(pids)
    t0 = time.monotonic()
    held = []
    try:
        for i in range(conns):
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            held.append(s)
            s.sendall(request)
            status = read_answer(s)
            if status != 200:
                sys.exit("connection %d: status %d" % (i, status))
        open_s = time.monotonic() - t0
        time.sleep(SETTLE_S)
        idle = memory_of(pids)
    finally:
        for s in held:
            s.close()
    per_conn = {k: (idle[k] - start[k]) * 1024.0 / conns for k in ("rss_kb", "pss_kb")}
    print(json.dumps({"conns": conns, "start": start, "idle": idle,
                      "rss_bytes_per_conn": round(per_conn["rss_kb"]),
                      "pss_bytes_per_conn": round(per_conn["pss_kb"]),
                      "open_s": round(open_s, 1)}, sort_keys=True))


if __name__ == "__main__":
    main()
