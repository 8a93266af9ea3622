#!/usr/bin/env bash
#
# bench/payment/compare.sh - the payment saga end to end, measured by our
# load harness (bench/run): POST /v1/payments, then long-polls until the
# payment is final, with profile, account, payment and event running
# (release build, private ports, the development PostgreSQL) on each bus
# transport in turn: busd, then a 3-node RabbitMQ quorum-queue cluster
# (deploy/rabbitmq, private, under .run/bench-rabbit; BUS_URL=amqp://...).
#
# Per transport, open loop (latency from each payment's intended start):
#   1. the search: the rate steps up (BENCH_PAYMENT_START, +STEP every
#      STEP_S seconds) until a step does not keep up (completions under 95%
#      of the rate, sends late, or errors); the last step that kept up is
#      the sustained rate.
#   2. the measure: half of that rate for BENCH_PAYMENT_SECONDS; p50, p99
#      and p99.9 of POST-to-final.
# Then, side by side, both at one common rate (half the lower sustained
# rate), so their latencies compare at the same load. The ratios are
# busd/RabbitMQ. No external system runs this saga, so busd's figure is
# also reported against the target (p99 <= BENCH_PAYMENT_TARGET_P99_MS).
# Every run ends with the harness's invariant check (money, holds,
# outboxes). BENCH_PAYMENT_BUS=busd skips RabbitMQ (and is what runs when
# rabbitmq-server is missing).
# After busd's measured run, where its time went, hop by hop, from the
# event service's audit log (bench/payment/hops.sql, over the payments
# whose payment.requested occurred during that run): for each of the five
# events (payment.requested, account.funds_reserved, payment.authorized,
# account.payment_settled, payment.completed), p50/p99 of occurred ->
# stored (the rest of the producing transaction, its commit, the outbox
# relay) and of stored -> the next event's occurred-at (the bus's fsync and
# delivery, the consumer's start); the sum of the p50s next to the chain
# measured per payment and to the harness's POST-to-final p50/p99. The
# audit log's timestamps are whole milliseconds: each span is +-1 ms.
# By hand, for any run (Unix ms; without them, every payment logged):
#   eval "$(deploy/pg env)"
#   psql "$EVENT_DB_URL" -X -f bench/payment/hops.sql -v since_ms=... -v until_ms=...
# Results: a table on stdout, one JSON line in .run/bench-payment.json
# (the hops under "hops"), busd's measured run's JSON and chart in
# .run/bench-payment-run.{json,png}.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
RUN_DIR=$REPO_ROOT/.run
# shellcheck source=deploy/lib/common.sh
source "$REPO_ROOT/deploy/lib/common.sh"

BENCH_PAYMENT_START=${BENCH_PAYMENT_START:-50}       # payments/s of the first step
BENCH_PAYMENT_STEP=${BENCH_PAYMENT_STEP:-50}         # added at each step
BENCH_PAYMENT_STEP_S=${BENCH_PAYMENT_STEP_S:-5}      # seconds per step
BENCH_PAYMENT_MAX_S=${BENCH_PAYMENT_MAX_S:-120}      # the search stops here at the latest
BENCH_PAYMENT_SECONDS=${BENCH_PAYMENT_SECONDS:-20}   # the measured run
BENCH_PAYMENT_CUSTOMERS=${BENCH_PAYMENT_CUSTOMERS:-50} # payers (2 accounts each)
BENCH_PAYMENT_TARGET_P99_MS=${BENCH_PAYMENT_TARGET_P99_MS:-10}
BENCH_PAYMENT_BUS=${BENCH_PAYMENT_BUS:-both}         # both, busd
BUILD_DIR=${BENCH_BUILD_DIR:-build-release}
[[ $BUILD_DIR == /* ]] || BUILD_DIR=$REPO_ROOT/$BUILD_DIR

usage() {
  awk 'NR < 3 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"
  cat <<USAGE

Environment (current value):
  BENCH_PAYMENT_START=$BENCH_PAYMENT_START      first rate of the search (payments/s)
  BENCH_PAYMENT_STEP=$BENCH_PAYMENT_STEP       added every step
  BENCH_PAYMENT_STEP_S=$BENCH_PAYMENT_STEP_S      seconds per step
  BENCH_PAYMENT_MAX_S=$BENCH_PAYMENT_MAX_S     longest search
  BENCH_PAYMENT_SECONDS=$BENCH_PAYMENT_SECONDS    the measured run at half the sustained rate
  BENCH_PAYMENT_CUSTOMERS=$BENCH_PAYMENT_CUSTOMERS  customers (2 accounts each)
  BENCH_PAYMENT_TARGET_P99_MS=$BENCH_PAYMENT_TARGET_P99_MS
  BENCH_PAYMENT_BUS=$BENCH_PAYMENT_BUS        both: busd and RabbitMQ; busd: busd only
  BENCH_BUILD_DIR=$BUILD_DIR
USAGE
}

TMP_DIR=
STARTED_PIDS=()
STARTED_NAMES=()
RABBIT_DIR=$RUN_DIR/bench-rabbit
RABBIT_STARTED=0

stop_platform() {
  local i
  for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
    stop_pid "${STARTED_PIDS[$i]}" "${STARTED_NAMES[$i]}" 20 || true
  done
  STARTED_PIDS=()
  STARTED_NAMES=()
}

cleanup() {
  stop_platform
  if ((RABBIT_STARTED)); then
    RABBIT_DIR=$RABBIT_DIR "$REPO_ROOT/deploy/rabbitmq" stop >&2 || true
    rm -rf "$RABBIT_DIR"
  fi
  [[ -n $TMP_DIR && -d $TMP_DIR ]] && rm -rf "$TMP_DIR"
  TMP_DIR=
}

# start NAME HEALTH_PORT BINARY ENV...: one process in the background,
# waited for until /healthz answers.
start() {
  local name=$1 port=$2 bin=$3 pid
  shift 3
  step "starting $name (127.0.0.1:$port)"
  (exec env "$@" "$bin") </dev/null >"$TMP_DIR/$name.log" 2>&1 &
  pid=$!
  STARTED_NAMES+=("$name")
  STARTED_PIDS+=("$pid")
  if ! wait_http "http://127.0.0.1:$port/healthz" 30 "$pid"; then
    tail -n 20 "$TMP_DIR/$name.log" >&2 || true
    die "$name did not start"
  fi
}

# start_platform busd|amqp: the four services on that transport (and busd
# itself for busd; the RabbitMQ cluster runs across both of amqp's runs).
start_platform() {
  local bus=$1 key busd http p bus_env
  key=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
  export AUTH_HMAC_KEY=$key
  declare -gA PORT=()
  for p in profile account payment event; do PORT[$p]=$(free_port); done
  if [[ $bus == busd ]]; then
    busd=$(free_port)
    http=$(free_port)
    rm -rf "$TMP_DIR/busd"
    mkdir -p "$TMP_DIR/busd"
    start busd "$http" "$BUILD_DIR/wire/busd/busd" BUSD_HOST=127.0.0.1 BUSD_PORT="$busd" \
      BUSD_HTTP_PORT="$http" BUSD_DATA_DIR="$TMP_DIR/busd" LOG_LEVEL=warn
    bus_env=BUS_URL=busd://127.0.0.1:$busd
  else
    bus_env=BUS_URL=$RABBIT_URL
  fi
  local common=(AUTH_HMAC_KEY="$key" LOG_LEVEL=warn "$bus_env"
    PROFILE_ADDR=127.0.0.1:${PORT[profile]} ACCOUNT_ADDR=127.0.0.1:${PORT[account]})
  # Sign-ups are setup, not what is measured: cheap password hashing.
  start profile "${PORT[profile]}" "$BUILD_DIR/actors/profile/profile" "${common[@]}" \
    PROFILE_PORT="${PORT[profile]}" PROFILE_DB_URL="$PROFILE_DB_URL" ARGON2_M_KIB=1024 ARGON2_T_COST=1
  start account "${PORT[account]}" "$BUILD_DIR/actors/account/account" "${common[@]}" \
    ACCOUNT_PORT="${PORT[account]}" ACCOUNT_DB_URL="$ACCOUNT_DB_URL"
  start payment "${PORT[payment]}" "$BUILD_DIR/actors/payment/payment" "${common[@]}" \
    PAYMENT_PORT="${PORT[payment]}" PAYMENT_DB_URL="$PAYMENT_DB_URL"
  start event "${PORT[event]}" "$BUILD_DIR/actors/event/event" "${common[@]}" \
    EVENT_PORT="${PORT[event]}" EVENT_DB_URL="$EVENT_DB_URL"
}

# harness NAME FLAGS...: one bench/run; its JSON in $TMP_DIR/NAME.json.
harness() {
  local name=$1 rc=0
  shift
  local -a argv=("$BUILD_DIR/bench/harness/bench_run" --direct --scenario payment
    --customers "$BENCH_PAYMENT_CUSTOMERS" --progress plain --progress-every 5)
  local p
  for p in profile account payment event; do
    argv+=("--$p" "127.0.0.1:${PORT[$p]}")
  done
  step "bench/run ${argv[*]:1} $*"
  "${argv[@]}" "$@" >"$TMP_DIR/$name.txt" || rc=$?
  cat "$TMP_DIR/$name.txt" >&2
  ((rc == 0)) || warn "the $name run exited $rc (3: an invariant failed, 1: a threshold)"
  return 0
}

# hops SINCE_MS UNTIL_MS OUT: bench/payment/hops.sql over the payments
# requested in [SINCE_MS, UNTIL_MS), as CSV in OUT (empty when it could not
# run: the hops are a diagnosis, not what the benchmark stands or falls by).
# The harness is done once every payment is final, but the last events
# may still be on their way to the event service: first wait until its
# audit log stops growing.
hops() {
  local since=$1 until=$2 out=$3 n prev=-1 i
  local count="SELECT count(*) FROM audit_log WHERE stored_at >= to_timestamp($since / 1000.0)"
  : >"$out"
  for ((i = 0; i < 40; i++)); do
    n=$(psql "$EVENT_DB_URL" -X -q -At -c "$count" 2>/dev/null) || n=-2
    [[ $n == "$prev" ]] && break
    prev=$n
    sleep 0.25
  done
  step "hops: bench/payment/hops.sql, payments requested in [$since, $until) ms"
  if psql "$EVENT_DB_URL" -X -q --csv -v ON_ERROR_STOP=1 -v since_ms="$since" -v until_ms="$until" \
    -f "$REPO_ROOT/bench/payment/hops.sql" >"$out.tmp" 2>"$out.err"; then
    mv "$out.tmp" "$out"
  else
    warn "bench/payment/hops.sql failed: $(head -c 300 "$out.err")"
  fi
  printf '%s %s\n' "$since" "$until" >"$out.window"
}

# The services `deploy/dev up` started share these databases: their relays
# would publish this run's outbox rows to their own busd, and the saga
# measured here would stall. Refuse rather than measure that.
refuse_dev_platform() {
  local name pid
  for name in profile account payment event; do
    [[ -f $RUN_DIR/$name.pid ]] || continue
    pid=$(head -n 1 "$RUN_DIR/$name.pid")
    if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid"; then
      die "deploy/dev up's $name (pid $pid) uses the same databases: stop it first (deploy/dev down)"
    fi
  done
}

main() {
  case ${1:-} in
    -h | --help) usage; exit 0 ;;
    '') ;;
    *) usage >&2; exit 2 ;;
  esac
  refuse_dev_platform
  ensure_packages
  release_build "$BUILD_DIR" wire/busd/busd actors/profile/profile actors/account/account \
    actors/payment/payment actors/event/event bench/harness/bench_run
  "$REPO_ROOT/deploy/pg" start 9>&- >&2
  eval "$("$REPO_ROOT/deploy/pg" env)"
  TMP_DIR=$(mktemp -d /tmp/bench-payment.XXXXXX)
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  mkdir -p "$RUN_DIR"
  local buses=(busd)
  if [[ $BENCH_PAYMENT_BUS == both ]]; then
    if [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
      buses+=(amqp)
      # A fresh cluster: no queues or messages of an earlier run.
      RABBIT_DIR=$RABBIT_DIR "$REPO_ROOT/deploy/rabbitmq" stop >&2 || true
      rm -rf "$RABBIT_DIR"
      RABBIT_STARTED=1
      RABBIT_DIR=$RABBIT_DIR "$REPO_ROOT/deploy/rabbitmq" start >&2
      RABBIT_URL=$(RABBIT_DIR=$RABBIT_DIR "$REPO_ROOT/deploy/rabbitmq" env | sed "s/^export BUS_URL='//; s/'$//")
    else
      warn "rabbitmq-server is not installed: busd only"
    fi
  fi

  local bus sustained half common=
  declare -A HALF=()
  for bus in "${buses[@]}"; do
    start_platform "$bus"
    harness "search-$bus" --rate "$BENCH_PAYMENT_START" --step-rate "$BENCH_PAYMENT_STEP" \
      --step-every "${BENCH_PAYMENT_STEP_S}s" --duration "${BENCH_PAYMENT_MAX_S}s" \
      --stop-when-behind --json "$TMP_DIR/search-$bus.json" --png ''
    sustained=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("sustained_rate", 0))' \
      "$TMP_DIR/search-$bus.json")
    half=$(python3 -c 'import sys; print("%.1f" % (float(sys.argv[1]) / 2))' "$sustained")
    if ! python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 0 else 1)' "$half"; then
      # A busy machine can fail even the first step: measure at half of it
      # anyway, so that both transports still compare at one rate.
      half=$(python3 -c 'import sys; print("%.1f" % (float(sys.argv[1]) / 2))' "$BENCH_PAYMENT_START")
      warn "$bus: no step kept up, not even $BENCH_PAYMENT_START/s (see above): measuring at $half/s"
    fi
    info "$bus: sustained $sustained payments/s; measuring at $half/s"
    local out=$TMP_DIR/measure-$bus.json png=''
    if [[ $bus == busd ]]; then
      out=$RUN_DIR/bench-payment-run.json
      png=$RUN_DIR/bench-payment.png
    fi
    local since_ms until_ms
    since_ms=$(date +%s%3N)
    harness "measure-$bus" --rate "$half" --duration "${BENCH_PAYMENT_SECONDS}s" \
      --json "$out" --png "$png" --label "bench/compare payment ($bus)"
    until_ms=$(date +%s%3N)
    if [[ $bus == busd ]]; then
      hops "$since_ms" "$until_ms" "$TMP_DIR/hops-busd.csv"
    fi
    HALF[$bus]=$half
    if [[ -z $common ]] || python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) < float(sys.argv[2]) else 1)' "$half" "$common"; then
      common=$half
    fi
    stop_platform
  done
  # Side by side at one rate: whichever transport was measured above
  # another rate runs again at the common one.
  for bus in "${buses[@]}"; do
    if [[ ${HALF[$bus]} == "$common" ]]; then
      if [[ $bus == busd ]]; then
        cp "$RUN_DIR/bench-payment-run.json" "$TMP_DIR/common-$bus.json"
      else
        cp "$TMP_DIR/measure-$bus.json" "$TMP_DIR/common-$bus.json"
      fi
      continue
    fi
    start_platform "$bus"
    harness "common-$bus" --rate "$common" --duration "${BENCH_PAYMENT_SECONDS}s" \
      --json "$TMP_DIR/common-$bus.json" --png '' --label "bench/compare payment ($bus, common rate)"
    stop_platform
  done
  [[ -f $TMP_DIR/measure-amqp.json ]] || echo '{}' >"$TMP_DIR/measure-amqp.json"
  [[ -f $TMP_DIR/search-amqp.json ]] || echo '{}' >"$TMP_DIR/search-amqp.json"
  [[ -f $TMP_DIR/common-amqp.json ]] || echo '{}' >"$TMP_DIR/common-amqp.json"

  python3 - "$TMP_DIR/search-busd.json" "$RUN_DIR/bench-payment-run.json" \
    "$TMP_DIR/search-amqp.json" "$TMP_DIR/measure-amqp.json" "$TMP_DIR/common-busd.json" \
    "$TMP_DIR/common-amqp.json" "$BENCH_PAYMENT_TARGET_P99_MS" "$RUN_DIR/bench-payment.json" \
    "$TMP_DIR/hops-busd.csv" <<'PY'
import csv, json, os, sys, time
search, measure, r_search, r_measure, c_busd, c_amqp = (json.load(open(p)) for p in sys.argv[1:7])
target = float(sys.argv[7])


def figures(search, measure):
    lat = measure["latency"]["payment"]
    fails = [c["name"] for r in (search, measure) for c in r["checks"] if c["status"] == "fail"]
    return {"sustained_rate": search.get("sustained_rate", 0), "rate": measure["config"]["rate"],
            "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "p99_9_ms": lat["p99_9_ms"],
            "max_ms": lat["max_ms"], "completed": measure["run"]["payments_completed"],
            "failed": measure["run"]["payments_failed"], "error_rate": measure["run"]["error_rate"],
            "late": measure["run"]["late"], "steps": [
                {"rate": s["rate"], "completed_per_s": s["completed_per_s"],
                 "kept_up": s["kept_up"], "p99_ms": s["latency"]["p99_ms"]}
                for s in search["steps"] if s["issued"]],
            "invariant_failures": fails}


def at(measure):
    lat = measure["latency"]["payment"]
    return {"rate": measure["config"]["rate"], "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"],
            "p99_9_ms": lat["p99_9_ms"], "error_rate": measure["run"]["error_rate"],
            "invariant_failures": [c["name"] for c in measure["checks"] if c["status"] == "fail"]}


ours = figures(search, measure)
rabbit = figures(r_search, r_measure) if r_measure else None
common = {"busd": at(c_busd), "rabbitmq": at(c_amqp)} if c_amqp else None
m = measure["machine"]
print("bench/compare payment: POST /v1/payments to final state, 4 services, open loop,"
      " on busd and on a 3-node RabbitMQ quorum-queue cluster")
print("machine: %d CPUs, Linux %s, %s" % (m["nproc"], m["kernel"], m["cpu"]))
print("search:  from %.0f/s, +%.0f/s every %.0f s" % (search["config"]["rate"],
      search["config"]["step_rate"], search["config"]["step_s"]))
print()
print("%-40s %11s %10s %9s %9s %9s %8s" % ("", "sustained/s", "rate/s", "p50 ms", "p99 ms",
                                           "p99.9 ms", "errors"))
rows = [("busd, at half its sustained rate", ours)]
if rabbit:
    rows.append(("rabbitmq, at half its sustained rate", rabbit))
for label, f in rows:
    print("%-40s %11.0f %10.1f %9.2f %9.2f %9.2f %7.3f%%" % (label, f["sustained_rate"], f["rate"],
          f["p50_ms"], f["p99_ms"], f["p99_9_ms"], f["error_rate"] * 100))
ratio = None
if common:
    for name in ("busd", "rabbitmq"):
        c = common[name]
        print("%-40s %11s %10.1f %9.2f %9.2f %9.2f %7.3f%%" % (name + ", at the common rate", "",
              c["rate"], c["p50_ms"], c["p99_ms"], c["p99_9_ms"], c["error_rate"] * 100))
    b, r = common["busd"], common["rabbitmq"]
    ratio = {"sustained": ours["sustained_rate"] / rabbit["sustained_rate"]
             if rabbit["sustained_rate"] else None,
             "p50_at_common": r["p50_ms"] / b["p50_ms"] if b["p50_ms"] else None,
             "p99_at_common": r["p99_ms"] / b["p99_ms"] if b["p99_ms"] else None}
    print()
    sus = ("sustained rate %.2fx" % ratio["sustained"] if ratio["sustained"]
           else "rabbitmq kept up with no step (from %.0f/s)" % search["config"]["rate"])
    print("busd/rabbitmq: %s; at %.1f/s rabbitmq's p50 is %.2fx and its p99 %.2fx busd's"
          % (sus, b["rate"], ratio["p50_at_common"] or 0, ratio["p99_at_common"] or 0))
else:
    print("%-40s %11s %10s %9s %9s %9s" % ("rabbitmq", "-", "-", "-", "-", "-"))
print("target (busd): p99 <= %.0f ms: %s" % (target, "met" if ours["p99_ms"] <= target else "NOT met"))
fails = ours["invariant_failures"] + (rabbit["invariant_failures"] if rabbit else []) + \
    (common["busd"]["invariant_failures"] + common["rabbitmq"]["invariant_failures"] if common else [])
print("invariants: %s" % ("all checks passed" if not fails else "FAILED: " + "; ".join(fails)))


# busd's measured run, hop by hop (bench/payment/hops.sql): CSV rows of
# pos (1..5 the events, 6 the chain), part (1 occurred -> stored,
# 2 stored -> next occurred, 3 the chain), span, n, p50_ms, p99_ms, max_ms.
def hops_of(path, ours):
    rows = []
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path) as f:
            rows = list(csv.DictReader(f))
    if not rows:
        return None
    window = None
    if os.path.exists(path + ".window"):
        window = [int(x) for x in open(path + ".window").read().split()]
    fig = {}
    for r in rows:
        fig[(int(r["pos"]), int(r["part"]))] = {
            "n": int(r["n"]), "p50_ms": int(r["p50_ms"]), "p99_ms": int(r["p99_ms"]),
            "max_ms": int(r["max_ms"])}
    topics = ["payment.requested", "account.funds_reserved", "payment.authorized",
              "account.payment_settled", "payment.completed"]
    events = [{"topic": t, "occurred_to_stored": fig.get((i + 1, 1)),
               "stored_to_next": fig.get((i + 1, 2))} for i, t in enumerate(topics)]
    chain_spans = [fig.get((p, k)) for p in range(1, 5) for k in (1, 2)]
    last = fig.get((5, 1))
    sum_chain = sum(x["p50_ms"] for x in chain_spans) if all(chain_spans) else None
    return {"window_ms": window, "resolution_ms": 1, "events": events,
            "sum_p50_ms_requested_to_completed": sum_chain,
            "sum_p50_ms_all": sum_chain + last["p50_ms"] if sum_chain is not None and last else None,
            "chain": fig.get((6, 3)),
            "end_to_end": {"p50_ms": ours["p50_ms"], "p99_ms": ours["p99_ms"]}}


hops = hops_of(sys.argv[9], ours)
print()
if hops is None:
    print("hops (busd): none (bench/payment/hops.sql found no payments or failed; see above)")
else:
    print("hops (busd, at %.1f/s): from the event service's audit log; its timestamps are"
          " whole ms, so each span is +-1 ms" % ours["rate"])
    print("%-26s %7s %21s %21s" % ("", "", "occurred -> stored", "stored -> next occurred"))
    print("%-26s %7s %10s %10s %10s %10s" % ("event", "n", "p50 ms", "p99 ms", "p50 ms", "p99 ms"))
    for e in hops["events"]:
        a, b = e["occurred_to_stored"], e["stored_to_next"]
        print("%-26s %7s %10s %10s %10s %10s" % (
            e["topic"], a["n"] if a else "-", a["p50_ms"] if a else "-", a["p99_ms"] if a else "-",
            b["p50_ms"] if b else "-", b["p99_ms"] if b else "-"))
    c = hops["chain"]
    if hops["sum_p50_ms_requested_to_completed"] is not None:
        print("sum of the p50s, payment.requested to payment.completed occurred: %d ms"
              " (with payment.completed's own occurred -> stored: %s ms)"
              % (hops["sum_p50_ms_requested_to_completed"],
                 hops["sum_p50_ms_all"] if hops["sum_p50_ms_all"] is not None else "-"))
    if c:
        print("the same chain per payment (n %d): p50 %d ms, p99 %d ms, max %d ms"
              % (c["n"], c["p50_ms"], c["p99_ms"], c["max_ms"]))
    print("POST-to-final (harness): p50 %.2f ms, p99 %.2f ms (it also holds the POST before"
          " payment.requested and payment.completed's commit and the long-poll answer after)"
          % (ours["p50_ms"], ours["p99_ms"]))
rec = {"bench": "payment", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
       "machine": m, "ours": ours, "peer": None, "rabbitmq": rabbit, "common_rate": common,
       "ratio_busd_over_rabbitmq": ratio, "target": {"p99_ms": target},
       "meets_target": ours["p99_ms"] <= target, "hops": hops,
       "config": {"search": search["config"], "measure": measure["config"]}}
with open(sys.argv[8], "w") as f:
    f.write(json.dumps(rec, sort_keys=True) + "\n")
PY
  info "result in $RUN_DIR/bench-payment.json; busd's measured run in $RUN_DIR/bench-payment-run.json and .png"
}

main "$@"
