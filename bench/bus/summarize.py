#!/usr/bin/env python3
"""Summarize bench/bus/compare.sh runs: medians per system, the table, the
ratios, and one JSON line for .run/bench-bus.json.

usage: summarize.py RESULTS.jsonl OUT.json NATS_SAME_PROMISE_SYSTEM
"""
import json
import os
import platform
import statistics
import sys
import time

ORDER = ["ours", "rabbitmq", "nats-sync", "nats-default", "ours-loop"]
NAMES = {
    "ours": "ours (busd)",
    "rabbitmq": "rabbitmq",
    "nats-sync": "nats jetstream (synced)",
    "nats-default": "nats jetstream (default)",
    "ours-loop": "ours on the loop mount",
}


def load_runs(path):
    runs = {}
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            runs.setdefault(r["system"], []).append(r)
    return runs


def medians(runs):
    med = {}
    for k, rs in runs.items():
        m = {f: statistics.median(r[f] for r in rs)
             for f in ("msgs_per_s", "p50_us", "p99_us", "confirm_per_s")}
        m["lost"] = sum(r["lost"] for r in rs)
        m["duplicates"] = sum(r["duplicates"] for r in rs)
        m["durability"] = rs[0]["durability"]
        m["runs"] = [round(r["msgs_per_s"]) for r in rs]
        med[k] = m
    return med


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def main():
    runs = load_runs(sys.argv[1])
    nats_same = sys.argv[3]
    med = medians(runs)
    env = {k: os.environ.get(k) for k in ("BENCH_BUS_SECONDS", "BENCH_BUS_WARMUP",
                                          "BENCH_BUS_WINDOW", "BENCH_BUS_SIZE", "BENCH_BUS_ROUNDS")}
    load = open("/proc/loadavg").read().split()[:3]
    cpu = cpu_model()
    print("bench/bus/compare.sh: 1 publisher + 1 consumer at once, %s-byte messages, window %s"
          % (env["BENCH_BUS_SIZE"], env["BENCH_BUS_WINDOW"]))
    print("runs:    %s per system, alternating, %ss measured after %ss warm-up; medians below"
          % (env["BENCH_BUS_ROUNDS"], env["BENCH_BUS_SECONDS"], env["BENCH_BUS_WARMUP"]))
    print("machine: %d CPUs, Linux %s, %s; load average at the end %s"
          % (os.cpu_count(), platform.release(), cpu, " ".join(load)))
    print()
    print("%-26s %9s %9s %9s %5s %5s  %-24s %s"
          % ("system", "msgs/s", "p50", "p99", "lost", "dup", "runs (msgs/s)", "a confirm means"))
    for k in ORDER:
        if k not in med:
            continue
        m = med[k]
        print("%-26s %9.0f %6.2f ms %6.2f ms %5d %5d  %-24s %s"
              % (NAMES[k], m["msgs_per_s"], m["p50_us"] / 1000, m["p99_us"] / 1000, m["lost"],
                 m["duplicates"], "/".join(str(x) for x in m["runs"]), m["durability"]))
    print()
    ratios = {}
    ours = med.get("ours", {}).get("msgs_per_s", 0)
    for peer, key in (("rabbitmq", "rabbitmq"), ("nats", nats_same)):
        if key in med and med[key]["msgs_per_s"] > 0:
            ratios[peer] = ours / med[key]["msgs_per_s"]
            note = "  (nats acks NOT fsynced: not the same promise)" if key == "nats-default" else ""
            print("ratio ours/%s: %.2f%s" % (peer, ratios[peer], note))
    if nats_same != "nats-default" and med.get("nats-default", {}).get("msgs_per_s", 0) > 0:
        print("ratio ours/nats with nats defaults (acks not on disk, not the same promise): %.2f"
              % (ours / med["nats-default"]["msgs_per_s"]))
    record = {
        "bench": "bus",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": cpu,
                    "loadavg_end": load},
        "config": env,
        "medians": med,
        "runs": runs,
        "nats_same_promise": nats_same,
        "ratio_ours_rabbitmq": round(ratios.get("rabbitmq", 0), 4),
        "ratio_ours_nats": round(ratios.get("nats", 0), 4),
    }
    with open(sys.argv[2], "w") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
