#!/usr/bin/env bash
#
# bench/transfer/sync_cost.sh - what synchronous replication costs a
# transfer. The load of bench/compare transfer (ours: wrk -> POST
# /v1/transfers on the account service; pgbench: the same SQL, prepared and
# pipelined) on a primary with one streaming replica (deploy/pg start
# --replicas 1, in a cluster of its own: .run/pg-sync), the replication
# modes alternated round by round so that the machine's noisy moments hit
# each alike:
#
#   off           asynchronous: a commit is answered once it is on the
#                 primary's disk; the replica follows a few ms behind
#   on            synchronous: ... and on the replica's disk
#                 (synchronous_standby_names = 'ANY 1 (replica1)')
#   remote_apply  ... and applied on the replica, so reads there see it
#
# Progress on stderr; the table on stdout; one JSON line in
# .run/bench-sync.json. The cluster is stopped at the end.
set -euo pipefail

# shellcheck source=bench/transfer/compare.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/compare.sh"

BENCH_SYNC_MODES=${BENCH_SYNC_MODES:-off on remote_apply}
export PG_DIR=${PG_DIR:-$RUN_DIR/pg-sync}

sync_usage() {
  cat <<EOF
usage: bench/transfer/sync_cost.sh

Environment: as bench/compare transfer (bench/transfer/compare.sh --help), and
  BENCH_SYNC_MODES='$BENCH_SYNC_MODES'   PG_SYNC values, alternated per round
  PG_DIR=$PG_DIR        the cluster (primary + 1 replica) it runs on
EOF
}

sync_cleanup() {
  cleanup
  "$REPO_ROOT/deploy/pg" stop >/dev/null 2>&1 || true
}

# set_mode MODE: the primary's synchronous replication, reloaded.
set_mode() {
  PG_SYNC=$1 "$REPO_ROOT/deploy/pg" start >/dev/null 2>&1 || die "deploy/pg start (PG_SYNC=$1) failed"
  local got
  got=$(psql "$PG_ADMIN_URL" -X -At -c "SHOW synchronous_commit")
  [[ $1 == off && $got == on ]] || [[ $got == "$1" ]] || die "PG_SYNC=$1 not in effect (synchronous_commit=$got)"
}

sync_main() {
  case ${1:-} in
    -h | --help) sync_usage; return 0 ;;
    '') ;;
    *) sync_usage >&2; return 2 ;;
  esac
  need wrk wrk
  need pgbench postgresql-client
  need psql postgresql-client
  trap sync_cleanup EXIT
  TMP_DIR=$(mktemp -d)
  mkdir -p "$RUN_DIR"
  build
  "$REPO_ROOT/deploy/pg" start --replicas 1
  eval "$("$REPO_ROOT/deploy/pg" env)"
  AUTH_KEY=bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  step "applying the account service's migrations"
  env AUTH_HMAC_KEY="$AUTH_KEY" LOG_LEVEL=warn "$BUILD_DIR/actors/account/account" --migrate >&2
  seed
  "$BUILD_DIR/actors/account/account" --statements |
    python3 "$HERE/make_pgbench.py" "$BENCH_ACCOUNTS" >"$TMP_DIR/transfer.pgbench"
  local port r mode
  port=$(free_port)
  start_service "$port"
  step "warm-up: ${BENCH_WARMUP}s each"
  run_wrk "$port" "$BENCH_WARMUP" "$TMP_DIR/wrk-warmup.txt"
  run_pgbench "$BENCH_WARMUP" "" >"$TMP_DIR/pgbench-warmup.txt" 2>&1 ||
    { cat "$TMP_DIR/pgbench-warmup.txt" >&2; die "pgbench failed"; }
  : >"$TMP_DIR/rows.txt"
  for ((r = 1; r <= BENCH_ROUNDS; r++)); do
    for mode in $BENCH_SYNC_MODES; do
      set_mode "$mode"
      step "round $r/$BENCH_ROUNDS, PG_SYNC=$mode: ours, then pgbench, ${BENCH_DURATION}s each"
      run_wrk "$port" "$BENCH_DURATION" "$TMP_DIR/wrk.txt"
      run_pgbench "$BENCH_DURATION" "$TMP_DIR/pgb-$mode-$r" >"$TMP_DIR/pgbench.txt" 2>&1 ||
        { cat "$TMP_DIR/pgbench.txt" >&2; die "pgbench failed"; }
      printf '%s %s %s\n' "$mode" "$(wrk_parse "$TMP_DIR/wrk.txt")" \
        "$(pgbench_parse "$TMP_DIR/pgbench.txt" "$TMP_DIR/pgb-$mode-$r")" >>"$TMP_DIR/rows.txt"
      info "$(tail -n 1 "$TMP_DIR/rows.txt")"
    done
  done
  set_mode off
  python3 - "$TMP_DIR/rows.txt" "$BENCH_ROUNDS" "$BENCH_DURATION" "$RUN_DIR/bench-sync.json" \
    "$BENCH_SYNC_MODES" <<'PY'
import json, statistics, sys, time
rows_f, rounds, secs, out, modes = sys.argv[1:]
modes = modes.split()
rows = [l.split() for l in open(rows_f) if l.strip()]
doc = {"bench": "sync_cost", "time": int(time.time()), "rounds": int(rounds),
       "seconds": int(secs), "modes": {}}
print("%-13s %-9s %12s %9s %9s   %s" % ("PG_SYNC", "side", "transfers/s", "p50 ms", "p99 ms",
                                        "vs off (median of per-round ratios)"))
base = {}
for m in modes:
    mine = [[float(x) for x in r[1:]] for r in rows if r[0] == m]
    res = {}
    for side, off in (("ours", 0), ("pgbench", 5)):
        runs = [x[off] for x in mine]
        res[side] = {"tps": statistics.median(runs), "runs_tps": runs,
                     "p50_ms": statistics.median(x[off + 1] for x in mine),
                     "p99_ms": statistics.median(x[off + 2] for x in mine)}
        if m == modes[0]:
            base[side] = runs
        rel = statistics.median(a / b for a, b in zip(runs, base[side]) if b)
        res[side]["vs_first"] = round(rel, 3)
        print("%-13s %-9s %12.0f %9.2f %9.2f   %.2f   (runs %s)" % (
            m, side, res[side]["tps"], res[side]["p50_ms"], res[side]["p99_ms"], rel,
            " ".join("%.0f" % x for x in runs)))
    doc["modes"][m] = res
with open(out, "w") as f:
    f.write(json.dumps(doc) + "\n")
PY
  info "result in $RUN_DIR/bench-sync.json"
}

sync_main "$@"
