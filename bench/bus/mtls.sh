#!/usr/bin/env bash
#
# bench/bus/mtls.sh - what mutual TLS on the bus costs busd: the same
# bus_bench run (one publisher with confirms, one consumer, ACK per message)
# against a fresh busd in plain TCP and on mutual TLS (TLS_CA, TLS_CERT,
# TLS_KEY from deploy/certs.sh --internal), rounds alternating.
#
# Reported per run: busd's own CPU time per published message (utime + stime
# from /proc/PID/stat, over the whole run, divided by busd_published_total),
# which does not depend much on the machine's load, and the harness's
# msgs/s and p99 (which do). Then the medians and the ratio plain/mTLS of
# the CPU per message: below 1 means mutual TLS costs busd that much more.
#
# usage: bench/bus/mtls.sh [BUILD_DIR]   (default build-release)
# env:   BENCH_MTLS_ROUNDS (3), BENCH_BUS_SECONDS (5), BENCH_BUS_SIZE (200),
#        BENCH_BUS_WINDOW (100)
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${1:-$REPO_ROOT/build-release}
BUSD=$BUILD/wire/busd/busd
BENCH=$BUILD/bench/bus/bus_bench
ROUNDS=${BENCH_MTLS_ROUNDS:-3}
[[ -x $BUSD && -x $BENCH ]] || { echo "bench/bus/mtls.sh: build $BUILD first (ninja -C $BUILD)" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bus-mtls.XXXXXX")
BUSD_PID=
cleanup() {
  [[ -n $BUSD_PID ]] && kill "$BUSD_PID" 2>/dev/null && wait "$BUSD_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
bash "$REPO_ROOT/deploy/certs.sh" --internal "$WORK/certs" >"$WORK/certs.log" 2>&1 ||
  { cat "$WORK/certs.log" >&2; echo "bench/bus/mtls.sh: deploy/certs.sh --internal failed" >&2; exit 1; }
CERTS=$WORK/certs

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run MODE: one busd, one bus_bench; prints "us_per_msg msgs_per_s p99_us".
run() {
  local mode=$1 port http
  port=$(free_port)
  http=$(free_port)
  local -a server=() client=()
  if [[ $mode == mtls ]]; then
    server=(TLS_CA="$CERTS/ca.crt" TLS_CERT="$CERTS/busd.crt" TLS_KEY="$CERTS/busd.key")
    client=(TLS_CA="$CERTS/ca.crt" TLS_CERT="$CERTS/bench.crt" TLS_KEY="$CERTS/bench.key")
  fi
  rm -rf "$WORK/data"
  mkdir -p "$WORK/data"
  env "${server[@]}" BUSD_PORT="$port" BUSD_HTTP_PORT="$http" BUSD_DATA_DIR="$WORK/data" \
    LOG_LEVEL=warn "$BUSD" >"$WORK/busd-$mode.log" 2>&1 &
  BUSD_PID=$!
  local i
  for i in $(seq 50); do
    curl -sf "http://127.0.0.1:$http/readyz" >/dev/null && break
    sleep 0.1
  done
  local c0 c1 out published
  c0=$(cpu_ticks "$BUSD_PID")
  out=$(env "${client[@]}" BENCH_BUS_SECONDS="${BENCH_BUS_SECONDS:-5}" BENCH_BUS_WARMUP=1 \
    BENCH_BUS_WINDOW="${BENCH_BUS_WINDOW:-100}" BENCH_BUS_SIZE="${BENCH_BUS_SIZE:-200}" \
    "$BENCH" 127.0.0.1 "$port" 2>/dev/null | grep '^{' | tail -n 1)
  c1=$(cpu_ticks "$BUSD_PID")
  published=$(curl -s "http://127.0.0.1:$http/metrics" | awk '/^busd_published_total/ {print $2}')
  kill "$BUSD_PID"
  wait "$BUSD_PID" 2>/dev/null || true
  BUSD_PID=
  python3 - "$((c1 - c0))" "$(getconf CLK_TCK)" "${published:-0}" "$out" <<'EOF'
import json, sys
ticks, hz, published, out = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
r = json.loads(out) if out else {}
us = ticks * 1e6 / hz / published if published else float("nan")
print("%.2f %.0f %s" % (us, r.get("msgs_per_s", 0), r.get("p99_us", "-")))
EOF
}

echo "busd, plain TCP vs mutual TLS: $ROUNDS alternating rounds of bus_bench (${BENCH_BUS_SECONDS:-5}s," \
  "${BENCH_BUS_SIZE:-200}-byte events, window ${BENCH_BUS_WINDOW:-100}); load average $(cut -d' ' -f1 /proc/loadavg)"
printf '%-6s %-6s %14s %10s %10s\n' mode round "busd us/msg" "msgs/s" "p99 us"
plain=() mtls=()
for r in $(seq "$ROUNDS"); do
  for mode in plain mtls; do
    read -r us rate p99 <<<"$(run "$mode")"
    printf '%-6s %-6s %14s %10s %10s\n' "$mode" "$r" "$us" "$rate" "$p99"
    if [[ $mode == plain ]]; then plain+=("$us"); else mtls+=("$us"); fi
  done
done
python3 - "${plain[*]}" "${mtls[*]}" <<'EOF'
import statistics, sys
p = statistics.median(float(x) for x in sys.argv[1].split())
m = statistics.median(float(x) for x in sys.argv[2].split())
print("median busd CPU per message: plain %.2f us, mutual TLS %.2f us; ratio plain/mTLS %.2f" % (p, m, p / m))
EOF
