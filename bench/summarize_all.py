#!/usr/bin/env python3
"""One table from the result files of every comparison (bench/compare all).

usage: summarize_all.py RUN_DIR OUT.json STATUS...

RUN_DIR holds .run/bench-<what>.json as each compare script writes them;
each STATUS is WHAT=EXIT_CODE of that script in this run. Prints one row
per figure: ours, the peer's, the ratio (ours/peer; for the payment saga,
which has no peer, the target instead), and the machine; writes all of it
as one JSON line to OUT.json.
"""
import json
import os
import platform
import sys
import time


def load(run_dir, what):
    try:
        with open(os.path.join(run_dir, "bench-%s.json" % what)) as f:
            return json.loads(f.readline())
    except (OSError, ValueError):
        return None


def rows_http(r):
    return [("http", "GET /hello req/s", r["ours"]["rps_median"], "nginx",
             r["nginx"]["rps_median"], r["ratio_rps"])]


def rows_transfer(r):
    out = [("transfer", "POST /v1/transfers/s", r["ours"]["tps"], "plain transfer (pgbench)",
            r["plain"]["tps"], r["ratio"])]
    if r.get("pgbench"):
        out.append(("transfer", "POST /v1/transfers/s", r["ours"]["tps"], "own SQL (pgbench)",
                    r["pgbench"]["tps"], r.get("ratio_own_sql")))
    return out


def rows_bus(r):
    med = r["medians"]
    ours = med.get("ours", {}).get("msgs_per_s", 0)
    out = []
    for peer, key in (("rabbitmq", "rabbitmq"), ("nats", r.get("nats_same_promise", "nats"))):
        if key in med:
            theirs = med[key]["msgs_per_s"]
            out.append(("bus", "durable msgs/s", ours, key, theirs, ours / theirs if theirs else None))
    return out


def rows_gateway(r):
    out = []
    for kind, res in sorted(r["results"].items()):
        out.append(("gateway", "%s req/s" % kind, res["gateway"]["rps_median"], "nginx",
                    res["nginx"]["rps_median"], r["ratio_rps"].get(kind)))
    mem = r.get("memory") or {}
    if "gateway" in mem and "nginx" in mem:
        g, n, ratio = mem["gateway"], mem["nginx"], r.get("ratio_memory") or {}
        out.append(("gateway", "RSS at start MiB (lower is better)", g["rss_start_kib"] / 1024.0,
                    "nginx", n["rss_start_kib"] / 1024.0, ratio.get("rss_start")))
        out.append(("gateway", "KiB per idle TLS conn (%d idle)" % g["conns"],
                    g["rss_bytes_per_conn"] / 1024.0, "nginx", n["rss_bytes_per_conn"] / 1024.0,
                    ratio.get("per_idle_conn")))
    return out


def rows_payment(r):
    o = r["ours"]
    return [("payment", "sustained payments/s", o["sustained_rate"], "-", None, None),
            ("payment", "p99 ms at %.0f/s (target <= %.0f)" % (o["rate"], r["target"]["p99_ms"]),
             o["p99_ms"], "-", None, None),
            ("payment", "p50 / p99.9 ms", "%.2f / %.2f" % (o["p50_ms"], o["p99_9_ms"]), "-", None,
             None)] + rows_payment_rabbitmq(r)


def rows_payment_rabbitmq(r):
    """busd against the same saga on a RabbitMQ cluster (ratio busd/RabbitMQ)."""
    rb, c = r.get("rabbitmq"), r.get("common_rate")
    if not rb or not c:
        return []
    ratio = r.get("ratio_busd_over_rabbitmq") or {}
    p99 = ratio.get("p99_at_common")
    return [("payment", "sustained payments/s, busd vs RabbitMQ", o_rate(r), "rabbitmq",
             rb["sustained_rate"], ratio.get("sustained")),
            ("payment", "p99 ms at %.0f/s, busd vs RabbitMQ" % c["busd"]["rate"],
             c["busd"]["p99_ms"], "rabbitmq", c["rabbitmq"]["p99_ms"], 1 / p99 if p99 else None)]


def o_rate(r):
    return r["ours"]["sustained_rate"]


ROWS = {"http": rows_http, "transfer": rows_transfer, "bus": rows_bus, "gateway": rows_gateway,
        "payment": rows_payment}


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return "%.2f" % v if v < 100 else "%.0f" % v


def main():
    run_dir, out_path = sys.argv[1], sys.argv[2]
    status = dict(a.split("=", 1) for a in sys.argv[3:])
    machine = "%d CPUs, Linux %s, %s" % (os.cpu_count(), platform.release(), cpu_model())
    table, results = [], {}
    for what, code in status.items():
        r = load(run_dir, what) if code == "0" else None
        results[what] = {"exit_status": int(code), "result": r}
        if r is None:
            table.append((what, "(failed: exit %s)" % code, None, "", None, None))
            continue
        table.extend(ROWS[what](r))
    print("bench/compare all, %s" % time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print("machine: %s" % machine)
    print()
    print("%-9s %-34s %12s  %-9s %12s %7s" % ("what", "figure", "ours", "peer", "peer's", "ratio"))
    for what, figure, ours, peer, theirs, ratio in table:
        print("%-9s %-34s %12s  %-9s %12s %7s" % (what, figure, fmt(ours), peer, fmt(theirs),
                                                  fmt(ratio)))
    rec = {"bench": "all", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": cpu_model()},
           "rows": [dict(zip(("what", "figure", "ours", "peer", "peer_value", "ratio"), row))
                    for row in table],
           "results": results}
    with open(out_path, "w") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")
    return 0 if all(v == "0" for v in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
