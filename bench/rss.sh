#!/usr/bin/env bash
#
# bench/rss.sh - the resident memory of busd and of each service once it
# has started and is idle: what its pools, loops and libraries cost before
# any work.
#
# Starts busd on a private data directory, then profile, account, payment
# and event one at a time against the private PostgreSQL of deploy/pg
# (running: deploy/pg start) and that busd, each on free loopback ports
# with its default configuration. Each is given two seconds after its
# /healthz first answers, then its RSS is read with `ps -o rss` and it is
# stopped (SIGTERM). Peers the services call are not started: their
# clients connect only when a request needs them.
#
# usage: bench/rss.sh [BUILD_DIR]   (default build-release)
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${1:-$REPO_ROOT/build-release}
for bin in wire/busd/busd actors/profile/profile actors/account/account actors/payment/payment \
           actors/event/event; do
  [[ -x $BUILD/$bin ]] || { echo "missing $BUILD/$bin: build it first" >&2; exit 2; }
done
eval "$("$REPO_ROOT/deploy/pg" env)"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_health() {
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && return 0
    sleep 0.1
  done
  return 1
}

DATA=$(mktemp -d "${TMPDIR:-/tmp}/busd-rss.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
  rm -rf "$DATA"
}
trap cleanup EXIT

# rss NAME PID HEALTH_PORT: one line, once it has settled.
rss() {
  wait_health "$3" || { echo "$1 did not answer /healthz" >&2; exit 1; }
  sleep 2
  printf '%-8s %8s KiB\n' "$1" "$(ps -o rss= -p "$2" | tr -d ' ')"
}

BUS_PORT=$(free_port)
BUS_HTTP=$(free_port)
BUSD_PORT=$BUS_PORT BUSD_HTTP_PORT=$BUS_HTTP BUSD_DATA_DIR=$DATA LOG_LEVEL=warn \
  "$BUILD/wire/busd/busd" 2>/dev/null &
PIDS+=($!)
rss busd "$!" "$BUS_HTTP"

KEY=$(head -c 24 /dev/urandom | base64)
for svc in profile account payment event; do
  port=$(free_port)
  up=${svc^^}
  url_var=${up}_DB_URL
  env "${up}_PORT=$port" "${up}_DB_URL=${!url_var}" AUTH_HMAC_KEY="$KEY" \
    BUS_ADDR="127.0.0.1:$BUS_PORT" PROFILE_ADDR=127.0.0.1:9 ACCOUNT_ADDR=127.0.0.1:9 \
    LOG_LEVEL=warn "$BUILD/actors/$svc/$svc" 2>/dev/null &
  pid=$!
  rss "$svc" "$pid" "$port"
  kill -TERM "$pid"
  wait "$pid" || true
done
