#!/usr/bin/env bash
#
# bench/transfer/compare.sh - transfers per second through the account
# service's HTTP API, side by side with the plain transfer a user would
# write by hand, on the same PostgreSQL, in alternating rounds.
#
#   ours:     wrk (keep-alive, BENCH_CONNECTIONS connections) -> POST
#             /v1/transfers on the account service (release build), random
#             pairs among BENCH_ACCOUNTS funded accounts, each request with
#             its own Idempotency-Key; the outbox relay on and busd running,
#             as in production (BENCH_BUS=off: no relay, no busd)
#   plain:    the peer. pgbench, BENCH_PG_CLIENTS clients, -M prepared, one
#             pipeline per transfer: guarded debit, credit, two ledger rows,
#             one outbox row, commit (plain.sql, plain.pgbench)
#   own SQL:  a second line (BENCH_OWN_SQL=1): pgbench running exactly the
#             statements of a movement that runs alone (from `account
#             --statements`: a key claimed before, or a batch rolled back,
#             takes that path) in the same two pipelines, plus one lookup
#             that draws the ids and timestamp the service makes in C. It
#             measures that path's SQL against itself; the API sends
#             movements in batches (account's mover.c), one call of
#             move_batch() per batch.
#
# During our rounds the outbox is sampled: rows not yet published and the
# age of the oldest (the relay keeping up or not). Every round also counts
# the CPU time the servers used per transfer (PostgreSQL with all its
# processes; for ours also the account service and busd; not the load
# generators): a second ratio, which the machine's other work moves less.
#
# Progress on stderr; the result table on stdout; one JSON line in
# .run/bench-transfer.json. Everything started here is stopped on exit;
# PostgreSQL (deploy/pg) is started if needed and left running.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RUN_DIR=$REPO_ROOT/.run
HERE=$REPO_ROOT/bench/transfer
# shellcheck source=deploy/lib/common.sh
source "$REPO_ROOT/deploy/lib/common.sh"

BENCH_DURATION=${BENCH_DURATION:-10}          # seconds per measured run
BENCH_ROUNDS=${BENCH_ROUNDS:-3}               # measured runs per side, alternating; medians
BENCH_WARMUP=${BENCH_WARMUP:-3}               # seconds of unmeasured run first
BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-64}    # wrk connections (16..64)
BENCH_WRK_THREADS=${BENCH_WRK_THREADS:-2}
BENCH_PG_CLIENTS=${BENCH_PG_CLIENTS:-16}      # pgbench -c
BENCH_ACCOUNTS=${BENCH_ACCOUNTS:-100000}
BENCH_THREADS=${BENCH_THREADS:-1}             # account service loop threads
BENCH_DB_CONNS=${BENCH_DB_CONNS:-15}          # its data connections per thread; with the relay's LISTEN one, 16 backends as pgbench's 16 clients (15 is the most a pool with a relay takes)
BENCH_BUS=${BENCH_BUS:-on}                    # on: busd runs and the relay publishes
BENCH_OWN_SQL=${BENCH_OWN_SQL:-0}             # 1: also run the own-SQL pgbench line
BUILD_DIR=${BENCH_BUILD_DIR:-build-release} # relative to the repository, or absolute
[[ $BUILD_DIR == /* ]] || BUILD_DIR=$REPO_ROOT/$BUILD_DIR
BENCH_CUSTOMER=00000000-0000-7000-8003-000000000001

usage() {
  cat <<EOF
usage: bench/transfer/compare.sh

Environment:
  BENCH_DURATION=$BENCH_DURATION       seconds per measured run (each side)
  BENCH_ROUNDS=$BENCH_ROUNDS          measured runs per side, alternating; medians reported
  BENCH_WARMUP=$BENCH_WARMUP          seconds of warm-up per side
  BENCH_CONNECTIONS=$BENCH_CONNECTIONS     wrk keep-alive connections
  BENCH_WRK_THREADS=$BENCH_WRK_THREADS      wrk threads
  BENCH_PG_CLIENTS=$BENCH_PG_CLIENTS      pgbench clients
  BENCH_ACCOUNTS=$BENCH_ACCOUNTS    funded accounts, picked at random
  BENCH_THREADS=$BENCH_THREADS          account service loop threads
  BENCH_DB_CONNS=$BENCH_DB_CONNS         its database connections per thread
  BENCH_BUS=$BENCH_BUS            on: busd runs and the outbox relay publishes; off: neither
  BENCH_OWN_SQL=$BENCH_OWN_SQL          1: also run pgbench with the statements of a movement alone
  BENCH_BUILD_DIR=$BUILD_DIR  release build used (configured if missing)
EOF
}

TMP_DIR=
SERVICE_PID=
BUSD_PID=
BUS=off

cleanup() {
  if [[ -n $SERVICE_PID ]]; then
    stop_pid "$SERVICE_PID" account 10 || true
  fi
  if [[ -n $BUSD_PID ]]; then
    stop_pid "$BUSD_PID" busd 10 || true
  fi
  [[ -n $TMP_DIR && -d $TMP_DIR ]] && rm -rf "$TMP_DIR"
  return 0
}

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found (Debian package $2)"
}

build() {
  release_build "$BUILD_DIR" actors/account/account wire/busd/busd
}

# start_busd: a busd of this run, on a free port, its log in TMP_DIR.
start_busd() {
  local port http
  port=$(free_port)
  http=$(free_port)
  while [[ $http == "$port" ]]; do http=$(free_port); done
  step "starting busd on 127.0.0.1:$port (the relay publishes to it)"
  mkdir -p "$TMP_DIR/busd"
  (exec env BUSD_HOST=127.0.0.1 BUSD_PORT="$port" BUSD_HTTP_PORT="$http" \
    BUSD_DATA_DIR="$TMP_DIR/busd" LOG_LEVEL=warn "$BUILD_DIR/wire/busd/busd") \
    </dev/null >"$TMP_DIR/busd.log" 2>&1 &
  BUSD_PID=$!
  if ! wait_http "http://127.0.0.1:$http/healthz" 30 "$BUSD_PID"; then
    tail -n 20 "$TMP_DIR/busd.log" >&2 || true
    die "busd did not become ready"
  fi
  BUS=127.0.0.1:$port
}

# seed_plain: the peer's own tables and funded accounts (plain.sql), once.
seed_plain() {
  step "the plain transfer's tables: $BENCH_ACCOUNTS funded accounts (kept across runs)"
  psql_account -v count="$BENCH_ACCOUNTS" -f "$HERE/plain.sql" >/dev/null
}

# outbox_sampler FILE: until killed, every 0.5 s one line "PENDING AGE_MS"
# of the account service's outbox. One psql session for the whole round
# (\watch): a new psql and backend per sample cost about 5% of the
# machine's CPU, taken from the side being measured.
outbox_sampler() {
  local q="SELECT count(*), coalesce((extract(epoch FROM clock_timestamp() - min(created_at))"
  q+=" * 1000)::bigint, 0) FROM outbox WHERE published_at IS NULL \\watch 0.5"
  exec psql "$ACCOUNT_DB_URL" -X -At -F ' ' >>"$1" 2>/dev/null <<<"$q"
}

# server_ticks PID...: the CPU time (clock ticks) the processes have used,
# with their children's: live ones, and those exited and waited for
# (cutime, cstime). The servers' own cost per transfer, which the load
# generator and the machine's other work disturb less than the rate does.
server_ticks() {
  python3 - "$@" <<'PY'
import os, sys
roots, total = set(sys.argv[1:]), 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open("/proc/%s/stat" % pid) as f:
            st = f.read()
    except OSError:
        continue
    fields = st[st.rindex(")") + 2:].split()  # fields[0] is field 3, state
    if pid in roots:
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    elif fields[1] in roots:
        total += int(fields[11]) + int(fields[12])
print(total)
PY
}

# postmaster: the pid of deploy/pg's PostgreSQL server.
postmaster() {
  head -n 1 "$RUN_DIR/pg/data/postmaster.pid"
}

psql_account() {
  psql "$ACCOUNT_DB_URL" -X -q -v ON_ERROR_STOP=1 "$@"
}

# seed: BENCH_ACCOUNTS accounts of the bench customer, each funded by a
# top-up from the EUR system account, ledger lines included, so that the
# double-entry invariants hold for the bench data too. Done once.
seed() {
  local have
  psql_account -c "CREATE TABLE IF NOT EXISTS bench_accounts (n int PRIMARY KEY, id uuid NOT NULL UNIQUE)"
  have=$(psql_account -At -c "SELECT count(*) FROM bench_accounts")
  if [[ $have -ge $BENCH_ACCOUNTS ]]; then
    info "$have bench accounts already funded"
    return
  fi
  step "funding $BENCH_ACCOUNTS bench accounts (once)"
  psql_account -v count="$BENCH_ACCOUNTS" -v cust="$BENCH_CUSTOMER" <<'SQL'
BEGIN;
CREATE TEMP TABLE s ON COMMIT DROP AS
  SELECT n, ('00000000-0000-7000-8001-' || lpad(n::text, 12, '0'))::uuid AS id,
            ('00000000-0000-7000-8002-' || lpad(n::text, 12, '0'))::uuid AS tx
  FROM generate_series(1, :count) AS g(n)
  WHERE NOT EXISTS (SELECT 1 FROM bench_accounts b WHERE b.n = g.n);
INSERT INTO accounts (id, customer_id, currency, balance, entries_count)
  SELECT id, :'cust', 'EUR', 1000000000, 1 FROM s;
INSERT INTO transactions (id, kind, debit_account_id, credit_account_id, amount, currency, created_at)
  SELECT tx, 'topup', '00000000-0000-7000-8000-000000455552', id, 1000000000, 'EUR', now() FROM s;
INSERT INTO ledger_entries (id, transaction_id, account_id, amount, currency, balance_after,
                            created_at, seq)
  SELECT gen_random_uuid(), tx, id, 1000000000, 'EUR', 1000000000, now(), 1 FROM s;
-- The system account's lines follow its own, numbered on from its count.
WITH sys AS (
  UPDATE accounts SET balance = balance - 1000000000 * (SELECT count(*) FROM s),
                      entries_count = entries_count + (SELECT count(*) FROM s)
  WHERE id = '00000000-0000-7000-8000-000000455552' RETURNING balance, entries_count)
INSERT INTO ledger_entries (id, transaction_id, account_id, amount, currency, balance_after,
                            created_at, seq)
  SELECT gen_random_uuid(), s.tx, '00000000-0000-7000-8000-000000455552', -1000000000, 'EUR',
         (SELECT balance FROM sys)
           + 1000000000 * ((SELECT count(*) FROM s) - row_number() OVER (ORDER BY s.n)), now(),
         (SELECT entries_count FROM sys) - (SELECT count(*) FROM s) + row_number() OVER (ORDER BY s.n)
  FROM s;
INSERT INTO bench_accounts SELECT n, id FROM s;
COMMIT;
ANALYZE accounts;
ANALYZE bench_accounts;
SQL
}

start_service() {
  local port=$1 bin=$BUILD_DIR/actors/account/account
  step "starting the account service ($BENCH_THREADS thread(s), $BENCH_DB_CONNS db connections each) on 127.0.0.1:$port"
  # BUS is busd's address, or off (BENCH_BUS=off): then nothing publishes
  # the outbox rows, which are still written.
  (exec env ACCOUNT_HOST=127.0.0.1 ACCOUNT_PORT="$port" ACCOUNT_THREADS="$BENCH_THREADS" \
    DB_CONNS="$BENCH_DB_CONNS" AUTH_HMAC_KEY="$AUTH_KEY" AUTH_MAX_SKEW=60m LOG_LEVEL=warn \
    PROFILE_ADDR=127.0.0.1:1 BUS_ADDR="$BUS" "$bin") </dev/null >"$TMP_DIR/account.log" 2>&1 &
  SERVICE_PID=$!
  if ! wait_http "http://127.0.0.1:$port/readyz" 30 "$SERVICE_PID"; then
    tail -n 20 "$TMP_DIR/account.log" >&2 || true
    die "the account service did not become ready"
  fi
}

# sign METHOD PATH TS: the X-Auth-Signature of the bench customer.
sign() {
  python3 - "$AUTH_KEY" "$BENCH_CUSTOMER" customer "$1" "$2" "$3" <<'PY'
import hashlib, hmac, sys
key, subject, roles, method, path, ts = sys.argv[1:]
msg = "|".join([subject, roles, method, path, ts]).encode()
print(hmac.new(key.encode(), msg, hashlib.sha256).hexdigest())
PY
}

run_wrk() {
  local port=$1 seconds=$2 out=$3 ts sig
  ts=$(date +%s)
  sig=$(sign POST /v1/transfers "$ts")
  wrk -t"$BENCH_WRK_THREADS" -c"$BENCH_CONNECTIONS" -d"${seconds}s" --latency \
    -s "$HERE/transfer.lua" "http://127.0.0.1:$port" \
    -- "$BENCH_ACCOUNTS" "$BENCH_CUSTOMER" customer "$ts" "$sig" >"$out" 2>&1
}

# wrk_parse FILE: "RPS P50_MS P99_MS ERRORS NON2XX"
wrk_parse() {
  python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
unit = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
def pct(p):
    m = re.search(r"^\s+%s%%\s+([0-9.]+)(us|ms|s|m)\s*$" % p, text, re.M)
    return float(m.group(1)) * unit[m.group(2)] if m else float("nan")
rps = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
if not rps:
    sys.exit("cannot read the output of wrk:\n" + text)
err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(rps.group(1), "%.3f" % pct(50), "%.3f" % pct(99),
      sum(int(x) for x in err.groups()) if err else 0, non2xx.group(1) if non2xx else 0)
PY
}

run_pgbench() {
  local seconds=$1 prefix=$2 hash payload fail_body
  hash=$(printf 'bench' | sha256sum | cut -c1-64)
  payload='{"transaction_id":"01a20aa1-e139-72b8-aeef-5360cb42038b","from_account_id":"00000000-0000-7000-8001-000000000001","to_account_id":"00000000-0000-7000-8001-000000000002","amount":50,"currency":"EUR"}'
  fail_body='{"error":{"code":"insufficient_funds","message":"the balance (with its overdraft limit) does not cover the amount"}}'
  pgbench -n -M prepared -c "$BENCH_PG_CLIENTS" -j 2 -T "$seconds" -f "$TMP_DIR/transfer.pgbench" \
    -D scope="pgbench-$(date +%s%N)" -D hash="$hash" -D kind=transfer -D cur=EUR \
    -D topic=account.transferred -D st_ok=201 -D st_fail=422 -D hours=48 \
    -D headers='{"type":"account.transferred","schema-version":"1"}' \
    -D payload="$payload" -D fail_body="$fail_body" \
    ${prefix:+-l --log-prefix="$prefix"} "$ACCOUNT_DB_URL"
}

run_plain() {
  local seconds=$1 prefix=$2
  pgbench -n -M prepared -c "$BENCH_PG_CLIENTS" -j 2 -T "$seconds" --max-tries=10 \
    -f "$HERE/plain.pgbench" -D accounts="$BENCH_ACCOUNTS" \
    ${prefix:+-l --log-prefix="$prefix"} "$ACCOUNT_DB_URL"
}

# pgbench_parse OUTPUT LOGPREFIX: "TPS P50_MS P99_MS FAILED"
pgbench_parse() {
  python3 - "$1" "$2" <<'PY'
import glob, re, sys
text = open(sys.argv[1]).read()
tps = re.search(r"^tps = ([0-9.]+)", text, re.M)
if not tps:
    sys.exit("cannot read the output of pgbench:\n" + text)
failed = re.search(r"number of failed transactions: (\d+)", text)
lat = []
for path in glob.glob(sys.argv[2] + "*"):
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2].isdigit():
                lat.append(int(parts[2]) / 1000.0)
lat.sort()
def pct(p):
    return lat[min(len(lat) - 1, int(len(lat) * p / 100))] if lat else float("nan")
print(tps.group(1), "%.3f" % pct(50), "%.3f" % pct(99), failed.group(1) if failed else 0)
PY
}

main() {
  case ${1:-} in
    -h | --help) usage; return 0 ;;
    '') ;;
    *) usage >&2; return 2 ;;
  esac
  need wrk wrk
  need pgbench postgresql-client
  need psql postgresql-client
  trap cleanup EXIT
  TMP_DIR=$(mktemp -d)
  mkdir -p "$RUN_DIR"
  build
  "$REPO_ROOT/deploy/pg" start
  eval "$("$REPO_ROOT/deploy/pg" env)"
  AUTH_KEY=bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')

  step "applying the account service's migrations"
  env AUTH_HMAC_KEY="$AUTH_KEY" LOG_LEVEL=warn "$BUILD_DIR/actors/account/account" --migrate >&2
  seed
  seed_plain
  "$BUILD_DIR/actors/account/account" --statements |
    python3 "$HERE/make_pgbench.py" "$BENCH_ACCOUNTS" >"$TMP_DIR/transfer.pgbench"
  local sum_before plain_before
  sum_before=$(psql_account -At -c "SELECT sum(balance) FROM accounts WHERE currency = 'EUR'")
  plain_before=$(psql_account -At -c "SELECT sum(balance) FROM plain.accounts")

  [[ $BENCH_BUS == off ]] || start_busd
  local port
  port=$(free_port)
  start_service "$port"
  step "warm-up: ${BENCH_WARMUP}s each"
  run_wrk "$port" "$BENCH_WARMUP" "$TMP_DIR/wrk-warmup.txt"
  run_plain "$BENCH_WARMUP" "" >"$TMP_DIR/plain-warmup.txt" 2>&1 ||
    { cat "$TMP_DIR/plain-warmup.txt" >&2; die "pgbench (plain) failed"; }
  if [[ $BENCH_OWN_SQL == 1 ]]; then
    run_pgbench "$BENCH_WARMUP" "" >"$TMP_DIR/pgbench-warmup.txt" 2>&1 ||
      { cat "$TMP_DIR/pgbench-warmup.txt" >&2; die "pgbench failed"; }
  fi
  # Alternating rounds, so that a noisy moment of the machine hits every side.
  local r sampler t0 t1 pm ours=() plain=() theirs=()
  pm=$(postmaster)
  : >"$TMP_DIR/outbox.txt"
  for ((r = 1; r <= BENCH_ROUNDS; r++)); do
    step "round $r/$BENCH_ROUNDS: ours, ${BENCH_DURATION}s, $BENCH_CONNECTIONS connections, bus $BUS"
    outbox_sampler "$TMP_DIR/outbox.txt" &
    sampler=$!
    t0=$(server_ticks "$pm" "$SERVICE_PID" ${BUSD_PID:+"$BUSD_PID"})
    run_wrk "$port" "$BENCH_DURATION" "$TMP_DIR/wrk-$r.txt"
    t1=$(server_ticks "$pm" "$SERVICE_PID" ${BUSD_PID:+"$BUSD_PID"})
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    ours+=("$(wrk_parse "$TMP_DIR/wrk-$r.txt") $((t1 - t0))")
    info "${ours[-1]}"
    step "round $r/$BENCH_ROUNDS: plain transfer, pgbench, ${BENCH_DURATION}s, $BENCH_PG_CLIENTS clients, -M prepared, pipelined"
    t0=$(server_ticks "$pm")
    run_plain "$BENCH_DURATION" "$TMP_DIR/plain$r" >"$TMP_DIR/plain-$r.txt" 2>&1 ||
      { cat "$TMP_DIR/plain-$r.txt" >&2; die "pgbench (plain) failed"; }
    t1=$(server_ticks "$pm")
    plain+=("$(pgbench_parse "$TMP_DIR/plain-$r.txt" "$TMP_DIR/plain$r") $((t1 - t0))")
    info "${plain[-1]}"
    if [[ $BENCH_OWN_SQL == 1 ]]; then
      step "round $r/$BENCH_ROUNDS: own SQL, pgbench, ${BENCH_DURATION}s, $BENCH_PG_CLIENTS clients"
      run_pgbench "$BENCH_DURATION" "$TMP_DIR/pgb$r" >"$TMP_DIR/pgbench-$r.txt" 2>&1 ||
        { cat "$TMP_DIR/pgbench-$r.txt" >&2; die "pgbench failed"; }
      theirs+=("$(pgbench_parse "$TMP_DIR/pgbench-$r.txt" "$TMP_DIR/pgb$r")")
      info "${theirs[-1]}"
    fi
  done
  stop_pid "$SERVICE_PID" account 10 || true
  SERVICE_PID=

  local plain_after
  plain_after=$(psql_account -At -c "SELECT sum(balance) FROM plain.accounts")
  [[ $plain_before == "$plain_after" ]] ||
    die "the plain transfer changed the sum of its balances: $plain_before -> $plain_after"

  local sum_after
  sum_after=$(psql_account -At -c "SELECT sum(balance) FROM accounts WHERE currency = 'EUR'")
  [[ $sum_before == "$sum_after" ]] || die "EUR balances changed in sum: $sum_before -> $sum_after"

  printf '%s\n' "${ours[@]}" >"$TMP_DIR/ours.txt"
  printf '%s\n' "${plain[@]}" >"$TMP_DIR/plain.txt"
  printf '%s\n' "${theirs[@]}" >"$TMP_DIR/theirs.txt"
  python3 - "$TMP_DIR/ours.txt" "$TMP_DIR/plain.txt" "$TMP_DIR/theirs.txt" "$TMP_DIR/outbox.txt" \
    "$BENCH_DURATION" "$BENCH_ROUNDS" "$BENCH_CONNECTIONS" "$BENCH_PG_CLIENTS" "$BENCH_ACCOUNTS" \
    "$BENCH_THREADS" "$BENCH_DB_CONNS" "$BUS" "$RUN_DIR/bench-transfer.json" <<'PY'
import json, os, statistics, sys, time
(ours_f, plain_f, theirs_f, outbox_f, secs, rounds, conns, clients, accounts, threads, db_conns,
 bus, out) = sys.argv[1:]
rows = lambda f: [[float(x) for x in l.split()] for l in open(f) if l.strip()]
ours, plain, theirs, outbox = rows(ours_f), rows(plain_f), rows(theirs_f), rows(outbox_f)
med = lambda rs, i: statistics.median(r[i] for r in rs)
o = {"tps": med(ours, 0), "p50_ms": med(ours, 1), "p99_ms": med(ours, 2),
     "socket_errors": int(sum(r[3] for r in ours)), "non_2xx": int(sum(r[4] for r in ours)),
     "runs_tps": [r[0] for r in ours], "bus": bus,
     "outbox_pending_max": int(max((r[0] for r in outbox), default=0)),
     "outbox_oldest_ms_max": int(max((r[1] for r in outbox), default=0)),
     "outbox_samples": len(outbox)}
# Server CPU per transfer: ticks of PostgreSQL (and for ours the account
# service and busd) over the transfers of the round.
hz = os.sysconf("SC_CLK_TCK")
cpu_us = lambda r, i: r[i] * 1e6 / hz / (r[0] * float(secs)) if r[0] else float("nan")
o["server_cpu_us"] = statistics.median(cpu_us(r, 5) for r in ours)


def peer(rs):
    if not rs:
        return None
    d = {"tps": med(rs, 0), "p50_ms": med(rs, 1), "p99_ms": med(rs, 2),
         "failed": int(sum(r[3] for r in rs)), "runs_tps": [r[0] for r in rs]}
    if all(len(r) > 4 for r in rs):
        d["server_cpu_us"] = statistics.median(cpu_us(r, 4) for r in rs)
    return d


pl, own = peer(plain), peer(theirs)
ratio = o["tps"] / pl["tps"] if pl["tps"] else float("nan")
ratio_own = o["tps"] / own["tps"] if own and own["tps"] else None
line = "%-50s %12.0f %9.2f %9.2f %7d"
print("%-50s %12s %9s %9s %7s" % ("median of %s rounds" % rounds, "transfers/s", "p50 ms",
                                  "p99 ms", "errors"))
print(line % ("account service (HTTP, wrk -c%s, bus %s)" % (conns, bus), o["tps"], o["p50_ms"],
              o["p99_ms"], o["socket_errors"] + o["non_2xx"]))
print(line % ("plain transfer (pgbench -c%s, prepared, pipelined)" % clients, pl["tps"],
              pl["p50_ms"], pl["p99_ms"], pl["failed"]))
if own:
    print(line % ("own SQL (pgbench -c%s, the service's statements)" % clients, own["tps"],
                  own["p50_ms"], own["p99_ms"], own["failed"]))
print("ratio ours/plain transfer: %.2f   (runs: ours %s, plain %s)" % (ratio,
      " ".join("%.0f" % x for x in o["runs_tps"]), " ".join("%.0f" % x for x in pl["runs_tps"])))
if ratio_own is not None:
    print("ratio ours/own SQL:        %.2f" % ratio_own)
cpu_ratio = pl["server_cpu_us"] / o["server_cpu_us"]
print("server CPU per transfer: ours %.0f us (PostgreSQL, account, busd), plain %.0f us"
      " (PostgreSQL): plain/ours %.2f" % (o["server_cpu_us"], pl["server_cpu_us"], cpu_ratio))
print("outbox during our rounds: at most %d rows unpublished, the oldest at most %d ms old"
      " (%d samples)" % (o["outbox_pending_max"], o["outbox_oldest_ms_max"], o["outbox_samples"]))
doc = {"bench": "transfer", "time": int(time.time()), "ours": o, "plain": pl, "pgbench": own,
       "ratio": round(ratio, 3), "cpu_ratio": round(cpu_ratio, 3),
       "ratio_own_sql": round(ratio_own, 3) if ratio_own else None,
       "config": {"seconds": int(secs), "rounds": int(rounds), "wrk_connections": int(conns),
                  "pgbench_clients": int(clients), "accounts": int(accounts),
                  "service_threads": int(threads), "db_conns_per_thread": int(db_conns)}}
with open(out, "w") as f:
    f.write(json.dumps(doc) + "\n")
PY
  info "result in $RUN_DIR/bench-transfer.json"
}

# Sourced (bench/transfer/sync_cost.sh), it only defines its functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
