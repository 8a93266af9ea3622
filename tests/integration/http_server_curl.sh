#!/usr/bin/env bash
#
# http_server_curl.sh - bench_httpd as a real HTTP client sees it.
#
#   bash http_server_curl.sh PATH_TO_BENCH_HTTPD
#
# Starts the server on a free loopback port, checks it with curl, stops it
# with SIGTERM and expects exit status 0. The server is always stopped, even
# when a check hangs (a watchdog ends the whole test after TEST_TIMEOUT_S).
# Prints "N passed, N failed"; exits 77 (skipped) when curl is missing.
# shellcheck disable=SC2317  # functions are reached through check and traps
set -uo pipefail

TEST_TIMEOUT_S=90
START_TIMEOUT_S=20
STOP_TIMEOUT_S=10

bin=${1:?usage: http_server_curl.sh PATH_TO_BENCH_HTTPD}
command -v curl >/dev/null 2>&1 || { echo "curl not installed: skipped"; exit 77; }
command -v python3 >/dev/null 2>&1 || { echo "python3 not installed: skipped"; exit 77; }

passed=0
failed=0
server_pid=
watchdog_pid=
tmp=$(mktemp -d)

cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
  fi
  [[ -n $watchdog_pid ]] && kill "$watchdog_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'echo "interrupted or timed out" >&2; exit 1' TERM INT

# The watchdog: SIGTERM to this script, whose trap then stops the server.
# Stopping the watchdog stops its sleep too, and it holds none of the output
# pipes, so nothing of it outlives the test.
(
  trap 'kill "$sleep_pid" 2>/dev/null; exit 0' TERM
  sleep "$TEST_TIMEOUT_S" &
  sleep_pid=$!
  wait "$sleep_pid" && kill -TERM $$
) </dev/null >/dev/null 2>&1 &
watchdog_pid=$!

# check NAME CMD...: run CMD, count and report the outcome.
check() {
  local name=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
    echo "ok   $name" >&2
  else
    failed=$((failed + 1))
    echo "FAIL $name" >&2
  fi
}

finish() {
  echo "$passed passed, $failed failed"
  ((failed == 0 && passed > 0))
  exit $?
}

port=$(python3 -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()')
base=http://127.0.0.1:$port
CURL=(curl -sS --http1.1 --max-time 10)

HTTPD_HOST=127.0.0.1 HTTPD_PORT=$port HTTPD_THREADS=${HTTPD_THREADS:-1} LOG_LEVEL=info \
  HTTP_HEADER_TIMEOUT_MS=300 HTTP_IDLE_TIMEOUT_MS=1000 \
  "$bin" </dev/null 2>"$tmp/server.log" &
server_pid=$!
echo "server pid $server_pid on 127.0.0.1:$port" >&2

started=0
deadline=$((SECONDS + START_TIMEOUT_S))
while ((SECONDS < deadline)) && kill -0 "$server_pid" 2>/dev/null; do
  if curl -fsS --max-time 1 -o /dev/null "$base/healthz" 2>/dev/null; then
    started=1
    break
  fi
  sleep 0.05
done
check "server answers /healthz within ${START_TIMEOUT_S}s" test "$started" = 1
if ((!started)); then
  echo "--- server log" >&2
  cat "$tmp/server.log" >&2
  finish
fi

# --- the checks -------------------------------------------------------------

healthz_body() {
  "${CURL[@]}" -o "$tmp/healthz" "$base/healthz" && printf 'ok\n' | cmp -s - "$tmp/healthz"
}
check "GET /healthz body is \"ok\\n\"" healthz_body

reuses_connection() {
  "${CURL[@]}" -v -o /dev/null -o /dev/null "$base/healthz" "$base/hello" 2>"$tmp/reuse.txt" &&
    grep -Eq 'Re-using existing connection|Reusing existing connection' "$tmp/reuse.txt"
}
check "two URLs in one curl run share one connection" reuses_connection

echo_roundtrip() {
  head -c 102400 /dev/urandom >"$tmp/in.bin"
  local code
  code=$("${CURL[@]}" --data-binary @"$tmp/in.bin" -H 'Content-Type: application/octet-stream' \
    -o "$tmp/out.bin" -w '%{http_code} %{content_type}' "$base/echo") &&
    [[ $code == "200 application/octet-stream" ]] && cmp -s "$tmp/in.bin" "$tmp/out.bin"
}
check "POST /echo round-trips 100 KiB byte for byte" echo_roundtrip

not_found_json() {
  local code
  code=$("${CURL[@]}" -o "$tmp/404.json" -w '%{http_code}' "$base/no/such/path") &&
    [[ $code == 404 ]] &&
    python3 -c 'import json, sys; e = json.load(open(sys.argv[1]))["error"]
sys.exit(0 if e["code"] == "not_found" and e["message"] else 1)' "$tmp/404.json"
}
check "unknown path: 404 with a JSON error" not_found_json

metrics_counter() {
  "${CURL[@]}" "$base/metrics" >"$tmp/metrics.txt" &&
    grep -Eq '^http_requests_total([{ ]|$)' "$tmp/metrics.txt"
}
check "/metrics has http_requests_total" metrics_counter

listening_logged() {
  python3 - "$tmp/server.log" "$port" <<'PY'
import json, sys
port = int(sys.argv[2])
for line in open(sys.argv[1], errors="replace"):
    try:
        rec = json.loads(line)
    except ValueError:
        continue
    if rec.get("msg") == "listening" and int(rec.get("port", -1)) == port:
        sys.exit(0)
sys.exit(1)
PY
}
check "stderr has a JSON \"listening\" line with the port" listening_logged

stops_on_sigterm() {
  local deadline rc
  kill -TERM "$server_pid" || return 1
  deadline=$((SECONDS + STOP_TIMEOUT_S))
  while kill -0 "$server_pid" 2>/dev/null && ((SECONDS < deadline)); do
    sleep 0.05
  done
  kill -0 "$server_pid" 2>/dev/null && return 1
  wait "$server_pid"
  rc=$?
  server_pid=
  echo "server exit status $rc" >&2
  [[ $rc == 0 ]]
}
check "SIGTERM: exits with status 0 within ${STOP_TIMEOUT_S}s" stops_on_sigterm

if ((failed > 0)); then
  echo "--- server log (last 30 lines)" >&2
  tail -n 30 "$tmp/server.log" >&2
fi
finish
