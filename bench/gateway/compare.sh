#!/usr/bin/env bash
#
# bench/gateway/compare.sh - the gateway against nginx as a TLS reverse proxy.
#
#   bench/gateway/compare.sh          (also: bench/compare gateway)
#
# Both proxy an authenticated GET /hello to the same upstream (bench_httpd,
# a separate process) over keep-alive connections, terminating TLS 1.2 with
# ECDHE-ECDSA-AES128-GCM-SHA256 on the same ECDSA P-256 certificate, with the
# same number of loop threads / worker processes. wrk on the same machine
# measures, in alternating rounds:
#
#   keep-alive   requests per second and p99 over long-lived connections
#   resumed      new connections per second ("Connection: close"), where
#                wrk resumes its TLS session (session caches on both sides)
#   full         the same with both session caches off: every connection
#                is a full ECDHE handshake with an ECDSA signature
#   memory       fresh processes, one loop thread / one worker, the same
#                connection limit: resident memory at start, then with
#                BENCH_IDLE_CONNS TLS keep-alive connections open and idle
#                after one request each (bench/gateway/idle_conns.py)
#
#   bench/gateway/compare.sh memory   the memory runs alone
#   bench/gateway/compare.sh inner    the cost of mutual TLS inside the
#                platform: the gateway alone, keep-alive, with its upstream
#                in plain HTTP and with the upstream on mutual TLS
#                (TLS_CA/TLS_CERT/TLS_KEY on both, certificates of
#                deploy/certs.sh --internal), alternating; the ratio of the
#                two to stdout and .run/bench-gateway-inner.json
#
# Progress goes to stderr, the table to stdout, one JSON line to
# .run/bench-gateway.json. Everything started here is stopped on exit.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
RUN_DIR=$REPO_ROOT/.run
# shellcheck source=deploy/lib/common.sh
source "$REPO_ROOT/deploy/lib/common.sh"

BENCH_DURATION=${BENCH_DURATION:-10s}       # wrk -d of each measured run
BENCH_ROUNDS=${BENCH_ROUNDS:-3}             # measured runs per server and kind
BENCH_WARMUP=${BENCH_WARMUP:-2s}            # unmeasured run per server first
BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-64}  # wrk -c, keep-alive runs
BENCH_HS_CONNECTIONS=${BENCH_HS_CONNECTIONS:-16} # wrk -c, handshake runs
BENCH_THREADS=${BENCH_THREADS:-1}           # gateway loop threads = nginx workers
BENCH_PIN=${BENCH_PIN:-1}                   # 1: servers, upstream and wrk on own CPUs
BENCH_ACCESS_LOG=${BENCH_ACCESS_LOG:-1}     # 1: both write an access log (to a file)
BENCH_IDLE_CONNS=${BENCH_IDLE_CONNS:-5000}  # idle connections of the memory runs
# The connection limit both servers get in the memory runs (the gateway's
# HTTP_CONNS_MAX, nginx's worker_connections): what each sizes itself for.
BENCH_IDLE_CONNS_MAX=${BENCH_IDLE_CONNS_MAX:-$((BENCH_IDLE_CONNS + 1024))}
BUILD_DIR=build-release
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}

usage() {
  sed -n '3,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  echo
  echo "Environment (current value):"
  printf '  %-26s %s\n' \
    "BENCH_DURATION=$BENCH_DURATION" "length of each measured wrk run" \
    "BENCH_ROUNDS=$BENCH_ROUNDS" "measured runs per server and kind (medians reported)" \
    "BENCH_WARMUP=$BENCH_WARMUP" "unmeasured wrk run per server first" \
    "BENCH_CONNECTIONS=$BENCH_CONNECTIONS" "wrk connections, keep-alive runs" \
    "BENCH_HS_CONNECTIONS=$BENCH_HS_CONNECTIONS" "wrk connections, handshake runs" \
    "BENCH_THREADS=$BENCH_THREADS" "gateway loop threads and nginx workers" \
    "BENCH_PIN=$BENCH_PIN" "1: pin servers, upstream and wrk to separate CPUs" \
    "BENCH_ACCESS_LOG=$BENCH_ACCESS_LOG" "1: access log on for both (to files)" \
    "BENCH_IDLE_CONNS=$BENCH_IDLE_CONNS" "idle TLS connections of the memory runs" \
    "BENCH_IDLE_CONNS_MAX=$BENCH_IDLE_CONNS_MAX" "connection limit of both servers in the memory runs"
}

# ---------------------------------------------------------------------------
# Processes started here, stopped by the EXIT trap.

TMP_DIR=
STARTED_PIDS=()
STARTED_NAMES=()

cleanup() {
  local i
  for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
    stop_pid "${STARTED_PIDS[$i]}" "${STARTED_NAMES[$i]}" 10 || true
  done
  STARTED_PIDS=()
  STARTED_NAMES=()
  [[ -n $TMP_DIR && -d $TMP_DIR ]] && rm -rf "$TMP_DIR"
  TMP_DIR=
}

started() {
  STARTED_NAMES+=("$1")
  STARTED_PIDS+=("$2")
}

# stop_named NAME: stop the most recently started process called NAME.
stop_named() {
  local i
  for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
    if [[ ${STARTED_NAMES[$i]} == "$1" ]]; then
      stop_pid "${STARTED_PIDS[$i]}" "$1" 10 || true
      unset 'STARTED_PIDS[i]' 'STARTED_NAMES[i]'
      STARTED_PIDS=("${STARTED_PIDS[@]}")
      STARTED_NAMES=("${STARTED_NAMES[@]}")
      return 0
    fi
  done
}

# ---------------------------------------------------------------------------
# CPU placement: servers on the first BENCH_THREADS CPUs, the upstream on
# the next, wrk on the rest; with too few CPUs, servers and upstream share
# all but the last, which is wrk's.

plan_cpus() {
  local n
  n=$(nproc)
  SERVER_PIN=()
  UPSTREAM_PIN=()
  WRK_PIN=()
  WRK_THREADS=1
  PINNING="none"
  if [[ $BENCH_PIN != 1 ]] || ! command -v taskset >/dev/null || ((n < 2)); then
    return 0
  fi
  if ((n >= BENCH_THREADS + 2)); then
    SERVER_PIN=(taskset -c "0-$((BENCH_THREADS - 1))")
    UPSTREAM_PIN=(taskset -c "$BENCH_THREADS")
    WRK_PIN=(taskset -c "$((BENCH_THREADS + 1))-$((n - 1))")
    WRK_THREADS=$((n - BENCH_THREADS - 1))
    PINNING="servers on CPU 0-$((BENCH_THREADS - 1)), upstream on CPU $BENCH_THREADS, wrk on CPU $((BENCH_THREADS + 1))-$((n - 1))"
  else
    SERVER_PIN=(taskset -c "0-$((n - 2))")
    UPSTREAM_PIN=("${SERVER_PIN[@]}")
    WRK_PIN=(taskset -c "$((n - 1))")
    PINNING="servers and upstream on CPU 0-$((n - 2)), wrk on CPU $((n - 1))"
  fi
}

# ---------------------------------------------------------------------------
# Servers

# start_upstream [VAR=VALUE...]: bench_httpd with these variables added
# (TLS_CA...: on mutual TLS, as the event service; see `inner`).
start_upstream() {
  local pid
  UPSTREAM_PORT=$(free_port)
  step "starting the upstream, bench_httpd (1 thread) on 127.0.0.1:$UPSTREAM_PORT${1:+ ($*)}"
  (exec env HTTPD_HOST=127.0.0.1 HTTPD_PORT="$UPSTREAM_PORT" HTTPD_THREADS=1 LOG_LEVEL=warn "$@" \
    "${UPSTREAM_PIN[@]}" "$REPO_ROOT/$BUILD_DIR/bench/bench_httpd") </dev/null \
    >"$TMP_DIR/upstream-$UPSTREAM_PORT.log" 2>&1 &
  pid=$!
  started upstream "$pid"
  if (($# == 0)); then
    wait_http "http://127.0.0.1:$UPSTREAM_PORT/hello" 20 "$pid" || die "bench_httpd did not start"
    return 0
  fi
  local deadline=$((SECONDS + 20)) i=$INNER_CERTS
  until curl -fs --max-time 1 -o /dev/null --cacert "$i/ca.crt" --cert "$i/bench.crt" \
    --key "$i/bench.key" --resolve "event:$UPSTREAM_PORT:127.0.0.1" \
    "https://event:$UPSTREAM_PORT/hello"; do
    { alive "$pid" && ((SECONDS < deadline)); } || die "bench_httpd on mutual TLS did not start"
    sleep 0.1
  done
}

# start_ours CACHE_ENTRIES [THREADS [VAR=VALUE...]]: the gateway with that
# many session cache entries, on THREADS loop threads (BENCH_THREADS), with
# these variables added to its environment.
start_ours() {
  local pid cache=$1 threads=${2:-$BENCH_THREADS}
  shift $(($# < 2 ? $# : 2))
  OURS_PORT=$(free_port)
  OURS_ADMIN=$(free_port)
  step "starting the gateway ($threads thread(s), session cache $cache) on 127.0.0.1:$OURS_PORT"
  (exec env GW_HOST=127.0.0.1 GW_PORT="$OURS_PORT" GW_ADMIN_PORT="$OURS_ADMIN" \
    GW_THREADS="$threads" GW_TLS_CERT="$CERTS/tls-ecdsa.crt" GW_TLS_KEY="$CERTS/tls-ecdsa.key" \
    GW_TLS_SESSION_CACHE="$cache" GW_JWT_KEYS_DIR="$CERTS/jwt" \
    AUTH_HMAC_KEY="bench-identity-key-0123456789abcdef-0123456789" \
    PROFILE_URL="http://127.0.0.1:$UPSTREAM_PORT" ACCOUNT_URL="http://127.0.0.1:$UPSTREAM_PORT" \
    PAYMENT_URL="http://127.0.0.1:$UPSTREAM_PORT" EVENT_URL="http://127.0.0.1:$UPSTREAM_PORT" \
    GW_EXTRA_ROUTES="GET /hello event customer" GW_UPSTREAM_CONNS=64 \
    GW_RATE_ADDR_RPS=10000000 GW_RATE_ADDR_BURST=10000000 \
    GW_RATE_SUBJECT_RPS=10000000 GW_RATE_SUBJECT_BURST=10000000 GW_CONNS_PER_ADDR=100000 \
    GW_ACCESS_LOG="$BENCH_ACCESS_LOG" LOG_LEVEL=info "$@" \
    "${SERVER_PIN[@]}" "$REPO_ROOT/$BUILD_DIR/gateway/gateway") </dev/null \
    >"$TMP_DIR/gateway.log" 2>&1 &
  pid=$!
  started gateway "$pid"
  OURS_PID=$pid
  wait_http "http://127.0.0.1:$OURS_ADMIN/healthz" 20 "$pid" || {
    tail -n 20 "$TMP_DIR/gateway.log" >&2
    die "the gateway did not start"
  }
}

# start_nginx on|off [WORKERS [CONNECTIONS KEEPALIVE_TIMEOUT]]: nginx with its
# session cache on or off, WORKERS worker processes (BENCH_THREADS),
# worker_connections and keepalive_timeout (4096, 65s).
start_nginx() {
  local pid cache access affinity workers=${2:-$BENCH_THREADS} conns=${3:-4096}
  local keepalive=${4:-65s}
  NGINX_PORT=$(free_port)
  [[ -x $NGINX ]] || die "nginx not found (Debian package nginx-light)"
  step "starting nginx ($workers worker(s), session cache $1) on 127.0.0.1:$NGINX_PORT"
  cache="shared:SSL:10m"
  [[ $1 == off ]] && cache="off"
  access="$TMP_DIR/nginx-access.log bench"
  [[ $BENCH_ACCESS_LOG == 1 ]] || access="off"
  affinity="auto"
  mkdir -p "$TMP_DIR/nginx"
  sed -e "s|@DIR@|$TMP_DIR/nginx|g" -e "s|@PORT@|$NGINX_PORT|g" -e "s|@WORKERS@|$workers|g" \
    -e "s|@AFFINITY@|$affinity|g" -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" \
    -e "s|@CERT@|$CERTS/tls-ecdsa.crt|g" -e "s|@KEY@|$CERTS/tls-ecdsa.key|g" \
    -e "s|@CONNECTIONS@|$conns|g" -e "s|@KEEPALIVE_TIMEOUT@|$keepalive|g" \
    -e "s|@ACCESS_LOG@|$access|g" -e "s|shared:SSL:10m|$cache|g" \
    "$REPO_ROOT/bench/gateway/nginx.conf.in" >"$TMP_DIR/nginx/nginx.conf"
  "$NGINX" -t -q -p "$TMP_DIR/nginx" -c "$TMP_DIR/nginx/nginx.conf" -e "$TMP_DIR/nginx/error.log" \
    2>"$TMP_DIR/nginx-t.log" || { cat "$TMP_DIR/nginx-t.log" >&2; die "nginx refused its configuration"; }
  (exec "${SERVER_PIN[@]}" "$NGINX" -p "$TMP_DIR/nginx" -c "$TMP_DIR/nginx/nginx.conf" \
    -e "$TMP_DIR/nginx/error.log") </dev/null >"$TMP_DIR/nginx.out" 2>&1 &
  pid=$!
  started nginx "$pid"
  NGINX_PID=$pid
  wait_https "$NGINX_PORT" 20 "$pid" || die "nginx did not answer over HTTPS"
}

# wait_https PORT SECONDS PID: until GET /hello answers over TLS.
wait_https() {
  local deadline=$((SECONDS + $2))
  while ((SECONDS < deadline)); do
    curl -fsk --max-time 1 -o /dev/null -H "Authorization: Bearer $TOKEN" \
      "https://127.0.0.1:$1/hello" 2>/dev/null && return 0
    alive "$3" || return 1
    sleep 0.1
  done
  return 1
}

# check_same NAME PORT: the answer is the upstream's 13 bytes, over the suite.
check_same() {
  local got suite
  got=$(curl -sS --http1.1 --tlsv1.2 --max-time 5 --cacert "$CERTS/tls-ecdsa.crt" \
    -H "Authorization: Bearer $TOKEN" "https://localhost:$2/hello" | od -An -c | tr -s ' ')
  [[ $got == "$(printf 'hello, world\n' | od -An -c | tr -s ' ')" ]] ||
    die "$1: GET /hello did not answer \"hello, world\\n\" (got:$got)"
  suite=$(openssl s_client -connect "127.0.0.1:$2" -tls1_2 </dev/null 2>/dev/null |
    sed -n 's/^ *Cipher *: *//p' | head -n 1)
  [[ $suite == ECDHE-ECDSA-AES128-GCM-SHA256 ]] || die "$1 negotiated $suite"
  info "$1: same body, suite $suite"
}

# ---------------------------------------------------------------------------
# Measuring

wrk_parse() {
  python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
unit_ms = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}
rps = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
p99 = re.search(r"^\s+99%\s+([0-9.]+)(us|ms|s|m|h)\s*$", text, re.M)
if not rps or not p99:
    sys.exit("cannot read the output of wrk:\n" + text)
errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(rps.group(1), "%.3f" % (float(p99.group(1)) * unit_ms[p99.group(2)]),
      sum(int(x) for x in errors.groups()) if errors else 0,
      non2xx.group(1) if non2xx else 0)
PY
}

# wrk_cmd KIND PORT: the wrk command line, run with eval.
wrk_cmd() {
  local c=$BENCH_CONNECTIONS extra=""
  if [[ $1 != keepalive ]]; then
    c=$BENCH_HS_CONNECTIONS
    extra='-H "Connection: close" '
  fi
  # $TOKEN stays literal: the command is printed in the report as run,
  # and the token must not be.
  # shellcheck disable=SC2016
  printf '%s%swrk -t%s -c%s -d%s --latency %s-H "Authorization: Bearer $TOKEN" https://127.0.0.1:%s/hello' \
    "${WRK_PIN[*]}" "${WRK_PIN[*]:+ }" "$WRK_THREADS" "$c" "$BENCH_DURATION" "$extra" "$2"
}

# measure KIND SERVER PORT: one run; appends "rps p99 errors non2xx;" to RESULTS[KIND-SERVER].
measure() {
  local out=$TMP_DIR/wrk-$1-$2-$ROUND.txt cmd parsed rps p99 errs non2xx
  cmd=$(wrk_cmd "$1" "$3")
  step "round $ROUND/$BENCH_ROUNDS: $1, $2 ($BENCH_DURATION)"
  eval "$cmd" >"$out"
  parsed=$(wrk_parse "$out")
  read -r rps p99 errs non2xx <<<"$parsed"
  info "$rps req/s, p99 $p99 ms, socket errors $errs, non-2xx $non2xx"
  RESULTS[$1-$2]+="$parsed;"
  COMMANDS[$1-$2]=$cmd
}

warm_up() {
  step "warming up $1 for $BENCH_WARMUP"
  "${WRK_PIN[@]}" wrk -t"$WRK_THREADS" -c"$BENCH_CONNECTIONS" -d"$BENCH_WARMUP" \
    -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$2/hello" >/dev/null
}

gw_metric() {
  curl -fsS --max-time 2 "http://127.0.0.1:$OURS_ADMIN/metrics" | sed -n "s/^$1 //p"
}

# Phase 1: session caches on; keep-alive and resumed handshakes.
phase_cached() {
  local h0 r0 h1 r1
  start_ours 16384
  start_nginx on
  check_same gateway "$OURS_PORT"
  check_same nginx "$NGINX_PORT"
  warm_up gateway "$OURS_PORT"
  warm_up nginx "$NGINX_PORT"
  h0=$(gw_metric gw_tls_handshakes_total)
  r0=$(gw_metric gw_tls_resumed_total)
  for ((ROUND = 1; ROUND <= BENCH_ROUNDS; ROUND++)); do
    measure keepalive gateway "$OURS_PORT"
    measure keepalive nginx "$NGINX_PORT"
    measure resumed gateway "$OURS_PORT"
    measure resumed nginx "$NGINX_PORT"
  done
  h1=$(gw_metric gw_tls_handshakes_total)
  r1=$(gw_metric gw_tls_resumed_total)
  RESUMED_SHARE=$(python3 -c "print(round(($r1-$r0)/max(1,$h1-$h0), 3))")
  info "gateway: $((h1 - h0)) handshakes, of which $((r1 - r0)) resumed"
  stop_named nginx
  stop_named gateway
}

# Phase 2: session caches off; every connection a full handshake.
phase_full() {
  local r0 r1
  start_ours 0
  start_nginx off
  r0=$(gw_metric gw_tls_resumed_total)
  for ((ROUND = 1; ROUND <= BENCH_ROUNDS; ROUND++)); do
    measure full gateway "$OURS_PORT"
    measure full nginx "$NGINX_PORT"
  done
  r1=$(gw_metric gw_tls_resumed_total)
  ((r1 == r0)) || die "the gateway resumed sessions with its cache off"
  stop_named nginx
  stop_named gateway
}

# hold_idle NAME PORT PID...: idle_conns.py against the server on PORT whose
# processes are PID...; prints its JSON line.
hold_idle() {
  local name=$1 port=$2 out
  shift 2
  step "memory: $name, $BENCH_IDLE_CONNS idle TLS connections (pids $*)"
  out=$(python3 "$REPO_ROOT/bench/gateway/idle_conns.py" "$port" "$BENCH_IDLE_CONNS" \
    "$CERTS/tls-ecdsa.crt" "$@") || die "$name: the idle connections could not be held"
  info "$out"
  echo "$out"
}

# Phase 3: memory. Fresh processes, one loop thread and one worker, both
# sized for the same number of connections, idle timeouts long enough for
# every connection to be open at once. The start figure is taken after
# check_same's requests, so one-time costs (the first handshake, the
# upstream connection) are not counted per connection.
phase_memory() {
  local workers
  start_ours 16384 1 HTTP_CONNS_MAX="$BENCH_IDLE_CONNS_MAX" HTTP_IDLE_TIMEOUT_MS=600000
  check_same gateway "$OURS_PORT"
  MEMORY[gateway]=$(hold_idle gateway "$OURS_PORT" "$OURS_PID")
  stop_named gateway
  start_nginx on 1 "$BENCH_IDLE_CONNS_MAX" 600s
  check_same nginx "$NGINX_PORT"
  workers=$(pgrep -P "$NGINX_PID" | tr '\n' ' ')
  [[ -n $workers ]] || die "nginx has no worker process"
  # shellcheck disable=SC2086  # the workers are a list of pids
  MEMORY[nginx]=$(hold_idle nginx "$NGINX_PORT" "$NGINX_PID" $workers)
  stop_named nginx
}

# inner_tls NAME: NAME's settings for mutual TLS inside the platform.
inner_tls() {
  printf '%s\n' "TLS_CA=$INNER_CERTS/ca.crt" "TLS_CERT=$INNER_CERTS/$1.crt" \
    "TLS_KEY=$INNER_CERTS/$1.key"
}

# The inner mutual TLS's cost: two gateways, one in front of a plain
# upstream and one in front of the same upstream on mutual TLS (it serves
# as the event service, which GET /hello is routed to), measured in turns.
# The gateway keeps its upstream connections alive, so this is the cost
# of the records on the upstream leg; a handshake there is paid once per
# upstream connection.
phase_inner() {
  local plain_port mtls_port
  local -a tls
  INNER_CERTS=$TMP_DIR/inner
  bash "$REPO_ROOT/deploy/certs.sh" --internal "$INNER_CERTS" 2>/dev/null
  start_upstream
  start_ours 16384
  plain_port=$OURS_PORT
  mapfile -t tls < <(inner_tls event)
  start_upstream "${tls[@]}"
  mapfile -t tls < <(inner_tls gateway)
  start_ours 16384 "$BENCH_THREADS" "${tls[@]}"
  mtls_port=$OURS_PORT
  check_same "gateway, plain upstream" "$plain_port"
  check_same "gateway, upstream on mutual TLS" "$mtls_port"
  warm_up "gateway, plain upstream" "$plain_port"
  warm_up "gateway, upstream on mutual TLS" "$mtls_port"
  for ((ROUND = 1; ROUND <= BENCH_ROUNDS; ROUND++)); do
    measure keepalive plain "$plain_port"
    measure keepalive mtls "$mtls_port"
  done
  local metrics
  metrics=$(curl -fsS --max-time 2 "http://127.0.0.1:$OURS_ADMIN/metrics")
  grep -q '^gw_upstream_ok_total [1-9]' <<<"$metrics" || die "the gateway on mutual TLS forwarded nothing"
}

report_inner() {
  mkdir -p "$RUN_DIR"
  R_plain=${RESULTS[keepalive-plain]} R_mtls=${RESULTS[keepalive-mtls]} \
    C_plain=${COMMANDS[keepalive-plain]} LOAD_BEFORE=$LOAD_BEFORE \
    LOAD_AFTER=$(cut -d' ' -f1 /proc/loadavg) PINNING=$PINNING BENCH_DURATION=$BENCH_DURATION \
    BENCH_ROUNDS=$BENCH_ROUNDS BENCH_THREADS=$BENCH_THREADS \
    python3 - "$RUN_DIR/bench-gateway-inner.json" <<'PY'
import json, os, statistics, sys, time

def series(text):
    runs = [r.split() for r in text.split(";") if r.strip()]
    return {"rps": [float(r[0]) for r in runs], "p99_ms": [float(r[1]) for r in runs],
            "errors": sum(int(r[2]) + int(r[3]) for r in runs),
            "rps_median": statistics.median(float(r[0]) for r in runs),
            "p99_ms_median": statistics.median(float(r[1]) for r in runs)}

res = {k: series(os.environ["R_" + k]) for k in ("plain", "mtls")}
ratio = round(res["mtls"]["rps_median"] / res["plain"]["rps_median"], 4)
print("bench/gateway/compare.sh inner: authenticated GET /hello through the gateway (keep-alive,")
print("TLS 1.2 from the client), its upstream bench_httpd in plain HTTP or on mutual TLS")
print("runs:    %s per setting, alternating, %s each; medians; %s loop thread(s)"
      % (os.environ["BENCH_ROUNDS"], os.environ["BENCH_DURATION"], os.environ["BENCH_THREADS"]))
print("pinning: " + os.environ["PINNING"])
print("load:    1-minute load average %s before the runs, %s after"
      % (os.environ["LOAD_BEFORE"], os.environ["LOAD_AFTER"]))
print("wrk:     " + os.environ["C_plain"])
print()
print("%-34s %12s %10s %8s" % ("", "req/s", "p99", "errors"))
for k, name in (("plain", "upstream in plain HTTP"), ("mtls", "upstream on mutual TLS")):
    s = res[k]
    print("%-34s %12.0f %7.2f ms %8d" % (name, s["rps_median"], s["p99_ms_median"], s["errors"]))
print()
print("ratio mutual TLS / plain, req/s:    %.2f" % ratio)
record = {"bench": "gateway-inner", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "duration": os.environ["BENCH_DURATION"], "rounds": int(os.environ["BENCH_ROUNDS"]),
          "threads": int(os.environ["BENCH_THREADS"]), "pinning": os.environ["PINNING"],
          "load_before": float(os.environ["LOAD_BEFORE"]),
          "load_after": float(os.environ["LOAD_AFTER"]), "results": res, "ratio_rps": ratio}
with open(sys.argv[1], "w") as f:
    f.write(json.dumps(record, sort_keys=True) + "\n")
PY
  info "result written to $RUN_DIR/bench-gateway-inner.json"
}

report() {
  mkdir -p "$RUN_DIR"
  local k
  for k in keepalive-gateway keepalive-nginx resumed-gateway resumed-nginx full-gateway full-nginx; do
    export "R_${k//-/_}=${RESULTS[$k]:-}" "C_${k//-/_}=${COMMANDS[$k]:-}"
  done
  LOAD_BEFORE=$LOAD_BEFORE LOAD_AFTER=$(cut -d' ' -f1 /proc/loadavg) \
    PINNING=$PINNING RESUMED_SHARE=$RESUMED_SHARE NGINX_VERSION=$("$NGINX" -v 2>&1) \
    BENCH_DURATION=$BENCH_DURATION BENCH_ROUNDS=$BENCH_ROUNDS BENCH_WARMUP=$BENCH_WARMUP \
    BENCH_THREADS=$BENCH_THREADS BENCH_ACCESS_LOG=$BENCH_ACCESS_LOG \
    BENCH_IDLE_CONNS_MAX=$BENCH_IDLE_CONNS_MAX \
    M_gateway=${MEMORY[gateway]:-} M_nginx=${MEMORY[nginx]:-} \
    python3 - "$RUN_DIR/bench-gateway.json" <<'PY'
import json, os, platform, statistics, sys, time

def series(text):
    runs = [r.split() for r in text.split(";") if r.strip()]
    s = {"rps": [float(r[0]) for r in runs], "p99_ms": [float(r[1]) for r in runs],
         "socket_errors": sum(int(r[2]) for r in runs), "non_2xx": sum(int(r[3]) for r in runs)}
    s["rps_median"] = statistics.median(s["rps"])
    s["p99_ms_median"] = statistics.median(s["p99_ms"])
    return s

# The kinds that ran: all three, or none with `compare.sh memory`.
kinds = [k for k in ("keepalive", "resumed", "full") if os.environ["R_%s_gateway" % k]]
res = {k: {srv: series(os.environ["R_%s_%s" % (k, srv)]) for srv in ("gateway", "nginx")}
       for k in kinds}
cmds = {k: {srv: os.environ["C_%s_%s" % (k, srv)] for srv in ("gateway", "nginx")} for k in kinds}
ratio = {k: round(res[k]["gateway"]["rps_median"] / res[k]["nginx"]["rps_median"], 4)
         if res[k]["nginx"]["rps_median"] else 0.0 for k in kinds}
memory = {srv: json.loads(os.environ["M_" + srv]) for srv in ("gateway", "nginx")
          if os.environ["M_" + srv]}
cpu = ""
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
machine = {"nproc": os.cpu_count(), "kernel": platform.release(), "arch": platform.machine(),
           "cpu": cpu}
nginx_version = os.environ["NGINX_VERSION"].split("/")[-1].strip()
threads = os.environ["BENCH_THREADS"]
print("bench/gateway/compare.sh: authenticated GET /hello through a TLS 1.2 proxy,")
print("ECDHE-ECDSA-AES128-GCM-SHA256, same P-256 certificate, same upstream (bench_httpd)")
print("machine: %d CPUs, Linux %s %s%s" % (machine["nproc"], machine["kernel"], machine["arch"],
      ", " + cpu if cpu else ""))
if kinds:
    print("runs:    %s per server and kind, alternating, %s each after a %s warm-up; medians"
          % (os.environ["BENCH_ROUNDS"], os.environ["BENCH_DURATION"], os.environ["BENCH_WARMUP"]))
    print("threads: gateway %s loop thread(s), nginx %s worker(s); access log %s"
          % (threads, threads, "on (files)" if os.environ["BENCH_ACCESS_LOG"] == "1" else "off"))
print("pinning: " + os.environ["PINNING"])
# Other work on the machine shows up here first: a load above the CPUs the
# runs use means the figures are noisy, whatever the medians say.
print("load:    1-minute load average %s before the runs, %s after"
      % (os.environ["LOAD_BEFORE"], os.environ["LOAD_AFTER"]))
if kinds:
    print("resumed: %.0f%% of the gateway's handshakes in the resumed runs were resumptions"
          % (100 * float(os.environ["RESUMED_SHARE"])))
for k in kinds:
    for srv in ("gateway", "nginx"):
        print("%-8s %-8s %s" % (k, srv, cmds[k][srv]))
labels = {"keepalive": "keep-alive", "resumed": "new conns, resumed", "full": "new conns, full handshake"}
if kinds:
    print()
    print("%-34s %12s %10s %8s" % ("", "req/s", "p99", "errors"))
for k in kinds:
    for srv, name in (("gateway", "gateway"), ("nginx", "nginx " + nginx_version)):
        s = res[k][srv]
        print("%-34s %12.0f %7.2f ms %8d" % ("%s: %s" % (labels[k], name), s["rps_median"],
              s["p99_ms_median"], s["socket_errors"] + s["non_2xx"]))
if kinds:
    print()
for k in kinds:
    print("ratio gateway/nginx, %-26s %.2f" % (labels[k] + ":", ratio[k]))

# Memory: the gateway's process; nginx's master and worker together (the
# master's pages are mostly shared with the worker, so RSS counts them
# twice; PSS, in the JSON, shares them out).
mem, mem_ratio = {}, {}
if len(memory) == 2:
    for srv, m in memory.items():
        mem[srv] = {"rss_start_kib": m["start"]["rss_kb"], "rss_idle_kib": m["idle"]["rss_kb"],
                    "pss_start_kib": m["start"]["pss_kb"], "pss_idle_kib": m["idle"]["pss_kb"],
                    "rss_bytes_per_conn": m["rss_bytes_per_conn"],
                    "pss_bytes_per_conn": m["pss_bytes_per_conn"], "conns": m["conns"],
                    "open_s": m["open_s"]}
    g, n = mem["gateway"], mem["nginx"]
    mem_ratio = {"rss_start": round(g["rss_start_kib"] / n["rss_start_kib"], 4),
                 "per_idle_conn": round(g["rss_bytes_per_conn"] / n["rss_bytes_per_conn"], 4)
                 if n["rss_bytes_per_conn"] > 0 else 0.0}
    print()
    print("memory: %d idle TLS keep-alive connections after one request each; fresh processes,"
          % g["conns"])
    print("        1 loop thread / 1 worker, both sized for %s connections; RSS (VmRSS)"
          % os.environ["BENCH_IDLE_CONNS_MAX"])
    print("%-34s %14s %16s %14s" % ("", "RSS at start", "per idle conn", "RSS idle"))
    for srv, name in (("gateway", "gateway"), ("nginx", "nginx %s (master+worker)" % nginx_version)):
        m = mem[srv]
        print("%-34s %10.1f MiB %12.1f KiB %10.1f MiB" % (name, m["rss_start_kib"] / 1024.0,
              m["rss_bytes_per_conn"] / 1024.0, m["rss_idle_kib"] / 1024.0))
    print("ratio gateway/nginx, RSS at start:          %.2f" % mem_ratio["rss_start"])
    print("ratio gateway/nginx, per idle connection:   %.2f" % mem_ratio["per_idle_conn"])

record = {"bench": "gateway", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "machine": machine, "duration": os.environ["BENCH_DURATION"],
          "rounds": int(os.environ["BENCH_ROUNDS"]), "threads": int(threads),
          "access_log": os.environ["BENCH_ACCESS_LOG"] == "1", "pinning": os.environ["PINNING"],
          "suite": "ECDHE-ECDSA-AES128-GCM-SHA256", "nginx_version": nginx_version,
          "resumed_share": float(os.environ["RESUMED_SHARE"]), "wrk": cmds, "results": res,
          "load_before": float(os.environ["LOAD_BEFORE"]), "load_after": float(os.environ["LOAD_AFTER"]),
          "ratio_rps": ratio, "memory": mem, "ratio_memory": mem_ratio,
          "memory_conns_max": int(os.environ["BENCH_IDLE_CONNS_MAX"])}
with open(sys.argv[1], "w") as f:
    f.write(json.dumps(record, sort_keys=True) + "\n")
PY
  info "result written to $RUN_DIR/bench-gateway.json"
}

main() {
  local what=${1:-all}
  case $what in
    -h | --help | help) usage; exit 0 ;;
    all | memory | inner) ;;
    *) usage >&2; exit 2 ;;
  esac
  [[ $BENCH_ROUNDS =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive integer"
  [[ $BENCH_THREADS =~ ^[1-9][0-9]*$ ]] || die "BENCH_THREADS must be a positive integer"
  [[ $BENCH_IDLE_CONNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_IDLE_CONNS must be a positive integer"
  if ! [[ $BENCH_IDLE_CONNS_MAX =~ ^[1-9][0-9]*$ ]] || ((BENCH_IDLE_CONNS_MAX <= BENCH_IDLE_CONNS)); then
    die "BENCH_IDLE_CONNS_MAX must be above BENCH_IDLE_CONNS"
  fi
  # Each idle connection is a descriptor here and one in the server.
  (($(ulimit -n) > BENCH_IDLE_CONNS_MAX + 64)) ||
    die "ulimit -n is $(ulimit -n): the memory runs need more than $((BENCH_IDLE_CONNS_MAX + 64))"
  ensure_packages
  release_build "$BUILD_DIR" gateway/gateway bench/bench_httpd \
    tests/integration/gateway/gw_jwt_tool

  TMP_DIR=$(mktemp -d /tmp/bench-gateway.XXXXXX)
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  CERTS=$TMP_DIR/certs
  bash "$REPO_ROOT/deploy/certs.sh" "$CERTS" 2>/dev/null
  TOKEN=$("$REPO_ROOT/$BUILD_DIR/tests/integration/gateway/gw_jwt_tool" mint "$CERTS/jwt" dev-1 \
    bench-user customer paycore paycore-api 86400)
  export TOKEN
  plan_cpus
  LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)
  declare -gA RESULTS=() COMMANDS=() MEMORY=()
  RESUMED_SHARE=0
  if [[ $what == inner ]]; then
    phase_inner
    report_inner
    return 0
  fi
  start_upstream
  if [[ $what == all ]]; then
    phase_cached
    phase_full
  fi
  phase_memory
  report
}

main "$@"
