#!/usr/bin/env bash
#
# bench/bus/startup.sh - how long busd takes to start on a log of a few GiB,
# with its segment index files and without them.
#
# 1. Fills a private data directory through busd itself: bus_bench publishes
#    BENCH_STARTUP_GIB GiB of 256 KiB events with confirms (and consumes
#    them), over 4 partitions of 64 MiB segments (busd's defaults).
# 2. Stops busd (SIGTERM), drops the page cache if asked to, and times a start to the first 200 from /readyz: closed segments are known
#    from their index files, only each partition's last one is read from its
#    last index entry.
# 3. Removes every index file, drops the cache again, and times a start
#    again: every segment is read whole, as before index files, and its
#    index rebuilt.
# Prints both times, the ratio and busd's own "recovery done" line; deletes
# the data directory at the end (also on failure).
#
# usage: bench/bus/startup.sh [BUILD_DIR]   (default build-release)
# env:   BENCH_STARTUP_GIB (2), BENCH_STARTUP_DIR (a new directory under
#        ${TMPDIR:-/tmp}), BENCH_STARTUP_PORT (7460; +1 for HTTP),
#        BENCH_STARTUP_COLD=1 to drop the page cache before each start
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${1:-$REPO_ROOT/build-release}
BUSD=$BUILD/wire/busd/busd
BENCH=$BUILD/bench/bus/bus_bench
GIB=${BENCH_STARTUP_GIB:-2}
PORT=${BENCH_STARTUP_PORT:-7460}
HTTP_PORT=$((PORT + 1))
SIZE=262144

for bin in "$BUSD" "$BENCH"; do
  [[ -x $bin ]] || { echo "missing $bin: build it first" >&2; exit 2; }
done

DATA=${BENCH_STARTUP_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/busd-startup.XXXXXX")}
mkdir -p "$DATA"
# Twice the log free, so the disk never fills.
need_kib=$((GIB * 2 * 1024 * 1024))
free_kib=$(df -Pk "$DATA" | awk 'NR == 2 { print $4 }')
if ((free_kib < need_kib)); then
  echo "need $((need_kib / 1024 / 1024)) GiB free in $DATA, have $((free_kib / 1024 / 1024))" >&2
  exit 2
fi

BUSD_PID=
cleanup() {
  if [[ -n $BUSD_PID ]]; then kill "$BUSD_PID" 2>/dev/null || true; wait "$BUSD_PID" 2>/dev/null || true; fi
  rm -rf "$DATA"
}
trap cleanup EXIT

start_busd() { # log file
  BUSD_PORT=$PORT BUSD_HTTP_PORT=$HTTP_PORT BUSD_DATA_DIR=$DATA/data LOG_LEVEL=${LOG_LEVEL:-info} \
    "$BUSD" >"$1" 2>&1 &
  BUSD_PID=$!
}

stop_busd() {
  kill -TERM "$BUSD_PID"
  wait "$BUSD_PID" || true
  BUSD_PID=
}

now_ms() { date +%s%3N; }

# Waits for /readyz; prints the milliseconds since $1.
wait_ready() {
  local t0=$1
  for _ in $(seq 1 60000); do
    if curl -sf -o /dev/null "http://127.0.0.1:$HTTP_PORT/readyz"; then
      echo $(($(now_ms) - t0))
      return 0
    fi
    kill -0 "$BUSD_PID" 2>/dev/null || { echo "busd exited" >&2; return 1; }
    sleep 0.005
  done
  echo "busd not ready" >&2
  return 1
}

# The page cache is the machine's, shared with other work: dropped only
# when asked for (BENCH_STARTUP_COLD=1, as root).
drop_cache() {
  sync
  if [[ ${BENCH_STARTUP_COLD:-0} == 1 && -w /proc/sys/vm/drop_caches ]]; then
    echo 3 >/proc/sys/vm/drop_caches
    echo "cold"
  else
    echo "warm"
  fi
}

timed_start() { # label log
  local cache t0 ms
  cache=$(drop_cache)
  t0=$(now_ms)
  start_busd "$2"
  ms=$(wait_ready "$t0")
  stop_busd
  echo "$ms $cache"
}

echo "filling $DATA with $GIB GiB (256 KiB events, 4 partitions, 64 MiB segments)..."
start_busd "$DATA/fill.log"
wait_ready "$(now_ms)" >/dev/null
BENCH_BUS_SIZE=$SIZE BENCH_BUS_MESSAGES_MAX=$((GIB * 4096)) BENCH_BUS_WARMUP=0 \
  BENCH_BUS_SECONDS=3600 "$BENCH" 127.0.0.1 "$PORT" >"$DATA/fill.json" 2>"$DATA/fill.err"
stop_busd
log_bytes=$(find "$DATA/data" -name '*.log' -printf '%s\n' | awk '{ s += $1 } END { printf "%d", s }')
segments=$(find "$DATA/data" -name '*.log' | wc -l)
indexes=$(find "$DATA/data" -name '*.idx' | wc -l)
index_bytes=$(find "$DATA/data" -name '*.idx' -printf '%s\n' | awk '{ s += $1 } END { printf "%d", s }')
echo "log: $log_bytes bytes in $segments segments, $indexes index files ($index_bytes bytes)"
echo "load (1, 5, 15 min): $(cut -d' ' -f1-3 /proc/loadavg), cpus: $(nproc)"

read -r with_ms with_cache < <(timed_start with "$DATA/with.log")
echo "with index files:    ${with_ms} ms ($with_cache cache)"
grep -h "recovery done" "$DATA/with.log" || true

find "$DATA/data" -name '*.idx' -delete
read -r without_ms without_cache < <(timed_start without "$DATA/without.log")
echo "without index files: ${without_ms} ms ($without_cache cache; every segment read, indexes rebuilt)"
grep -h "recovery done" "$DATA/without.log" || true

awk -v a="$without_ms" -v b="$with_ms" 'BEGIN { printf "ratio: %.1fx faster with index files\n", a / (b > 0 ? b : 1) }'
echo "load after (1, 5, 15 min): $(cut -d' ' -f1-3 /proc/loadavg)"
