#!/usr/bin/env bash
#
# bench/bus/compare.sh - durable at-least-once throughput and publish-to-
# deliver latency of our bus next to RabbitMQ and NATS JetStream, one run.
#
# Same workload for all (bench/bus/bench_bus.h): one publisher and one
# consumer at once, ~200-byte messages, at most 100 unconfirmed publishes,
# 100 unacked deliveries, one ack per message. Same promise for all: a
# confirm means the message is on disk.
#   ours      PUB_ACK after fdatasync (group commit); consumers only ever
#             see durable records, so our latency includes the fsync
#   rabbitmq  durable classic queue, persistent messages, publisher
#             confirms (sent once persisted, or once consumed and acked),
#             prefetch 100, manual acks
#   nats      JetStream file storage. With `sync_interval: always` when the
#             server knows it; Debian bookworm's nats-server 2.9.10 does not,
#             so its store goes on an ext4 image mounted -o sync (every write
#             reaches the disk before JetStream acks it). For context nats is
#             also run with its defaults, where an ack does NOT mean on disk.
#   ours-loop our bus on that same -o sync loop mount, so the cost of the
#             loop device itself can be read off.
# All servers are started first (privately: temporary directories,
# 127.0.0.1, free ports; stopped on exit), then the clients run one at a
# time in BENCH_BUS_ROUNDS alternating rounds and the medians are reported,
# so that a burst of other load on the machine does not land on one system
# only. Results: a table on stdout, one JSON line in .run/bench-bus.json.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RUN_DIR=$REPO_ROOT/.run
# shellcheck source=deploy/lib/common.sh
source "$REPO_ROOT/deploy/lib/common.sh"

export BENCH_BUS_SECONDS=${BENCH_BUS_SECONDS:-4}   # measured seconds per run
export BENCH_BUS_WARMUP=${BENCH_BUS_WARMUP:-1}     # unmeasured seconds first
export BENCH_BUS_WINDOW=${BENCH_BUS_WINDOW:-100}   # unconfirmed / unacked at most
export BENCH_BUS_SIZE=${BENCH_BUS_SIZE:-200}       # payload bytes
export BENCH_BUS_ROUNDS=${BENCH_BUS_ROUNDS:-3}     # alternating runs per system
BENCH_BUS_NATS_DEFAULT=${BENCH_BUS_NATS_DEFAULT:-1} # 1: also run nats with its defaults
BENCH_BUS_LOOP_CONTROL=${BENCH_BUS_LOOP_CONTROL:-1} # 1: also run ours on the loop mount
BUILD_DIR=${BENCH_BUS_BUILD_DIR:-build-release}
PEER_PACKAGES=(rabbitmq-server librabbitmq-dev nats-server libnats-dev e2fsprogs)

usage() {
  cat <<USAGE
usage: bench/bus/compare.sh

Durable at-least-once throughput (msgs/s) and publish-to-deliver latency
(p50/p99) of busd, RabbitMQ and NATS JetStream; see the header of this file.

Environment:
  BENCH_BUS_SECONDS=$BENCH_BUS_SECONDS      measured seconds per run
  BENCH_BUS_WARMUP=$BENCH_BUS_WARMUP       unmeasured seconds before each run
  BENCH_BUS_ROUNDS=$BENCH_BUS_ROUNDS       runs per system, alternating; medians reported
  BENCH_BUS_WINDOW=$BENCH_BUS_WINDOW     unconfirmed publishes / unacked deliveries
  BENCH_BUS_SIZE=$BENCH_BUS_SIZE       payload bytes
  BENCH_BUS_NATS_DEFAULT=1  also run NATS with default durability (context)
  BENCH_BUS_LOOP_CONTROL=1  also run ours on the -o sync loop mount
  BENCH_BUS_BUILD_DIR=$BUILD_DIR  meson build directory (release)
USAGE
}

# ---------------------------------------------------------------------------
# Processes and mounts made here, undone by the EXIT trap.

TMP_DIR=
STARTED_PIDS=()
STARTED_NAMES=()
MOUNTS=()

cleanup() {
  local i
  for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
    stop_pid "${STARTED_PIDS[$i]}" "${STARTED_NAMES[$i]}" 20 || true
  done
  STARTED_PIDS=()
  STARTED_NAMES=()
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}" 2>/dev/null || true
  done
  MOUNTS=()
  [[ -n $TMP_DIR && -d $TMP_DIR ]] && rm -rf "$TMP_DIR"
  TMP_DIR=
}

started() {
  STARTED_NAMES+=("$1")
  STARTED_PIDS+=("$2")
}

wait_port() { # PORT SECONDS PID
  local deadline=$((SECONDS + $2))
  while ((SECONDS < deadline)); do
    port_in_use "$1" && return 0
    alive "$3" || return 1
    sleep 0.1
  done
  return 1
}

ensure_peer_packages() {
  local pkg status missing=()
  for pkg in "${PEER_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  step "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  # policy-rc.d may deny starting the system services: we start our own.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends "${missing[@]}" >&2
}

# The peers' clients are built only when their libraries were there when
# the build was configured; release_build reconfigures when they are not.
build() {
  release_build "$BUILD_DIR" wire/busd/busd bench/bus/bus_bench bench/bus/rmq_bench \
    bench/bus/nats_bench
}

# ---------------------------------------------------------------------------
# The servers, started once; each system remembers how to run its client.

declare -A CLIENT=() LABEL=()
SYSTEMS=()

start_busd() { # NAME DATA_DIR
  local name=$1 data=$2 port http pid
  port=$(free_port)
  http=$(free_port)
  mkdir -p "$data"
  step "$name: busd on 127.0.0.1:$port, data in $data"
  (exec env BUSD_HOST=127.0.0.1 BUSD_PORT="$port" BUSD_HTTP_PORT="$http" BUSD_DATA_DIR="$data" \
    LOG_LEVEL=warn "$REPO_ROOT/$BUILD_DIR/wire/busd/busd") </dev/null >"$TMP_DIR/$name.log" 2>&1 &
  pid=$!
  started "$name" "$pid"
  if ! wait_http "http://127.0.0.1:$http/readyz" 20 "$pid"; then
    cat "$TMP_DIR/$name.log" >&2
    die "busd did not start"
  fi
  CLIENT[$name]="$REPO_ROOT/$BUILD_DIR/bench/bus/bus_bench 127.0.0.1 $port"
  SYSTEMS+=("$name")
}

rabbitmq_config() { # DIR PORT
  {
    echo "listeners.tcp.default = 127.0.0.1:$2"
    echo "loopback_users.guest = true"
    echo "log.console = false"
    echo "log.file.level = warning"
  } >"$1/rabbitmq.conf"
  echo "[]." >"$1/enabled_plugins"
}

start_rabbitmq() {
  local dir=$TMP_DIR/rabbitmq port dist epmd_port pid
  port=$(free_port)
  dist=$(free_port)
  epmd_port=$(free_port)
  mkdir -p "$dir/mnesia" "$dir/log"
  rabbitmq_config "$dir" "$port"
  step "rabbitmq $(dpkg-query -W -f='${Version}' rabbitmq-server) on 127.0.0.1:$port (private node)"
  # Our own epmd, in the foreground so that we know its pid and stop it.
  (exec epmd -port "$epmd_port" -address 127.0.0.1) >"$dir/epmd.log" 2>&1 &
  started epmd $!
  (exec env HOME="$dir" ERL_EPMD_PORT="$epmd_port" RABBITMQ_NODENAME="bench$$@localhost" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$port" RABBITMQ_DIST_PORT="$dist" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_PID_FILE="$dir/pid" /usr/lib/rabbitmq/bin/rabbitmq-server) </dev/null >"$dir/out.log" 2>&1 &
  pid=$!
  started rabbitmq "$pid"
  if ! wait_port "$port" 60 "$pid"; then
    tail -n 30 "$dir/out.log" >&2
    die "rabbitmq did not start"
  fi
  CLIENT[rabbitmq]="$REPO_ROOT/$BUILD_DIR/bench/bus/rmq_bench 127.0.0.1 $port"
  SYSTEMS+=(rabbitmq)
}

nats_knows_sync_interval() {
  printf 'listen: 127.0.0.1:1\njetstream { store_dir: "%s/probe", sync_interval: always }\n' \
    "$TMP_DIR" >"$TMP_DIR/probe.conf"
  nats-server -t -c "$TMP_DIR/probe.conf" >/dev/null 2>&1
}

# mount_sync DIR: an ext4 image on a loop device, mounted -o sync at DIR.
mount_sync() {
  local dir=$1
  [[ $(id -u) -eq 0 ]] || return 1
  mkdir -p "$dir"
  truncate -s 4G "$TMP_DIR/sync.img"
  mkfs.ext4 -q -F "$TMP_DIR/sync.img" >/dev/null 2>&1 || return 1
  mount -o loop,sync "$TMP_DIR/sync.img" "$dir" 2>/dev/null || return 1
  MOUNTS+=("$dir")
}

start_nats() { # NAME STORE_DIR SYNC_ALWAYS LABEL
  local name=$1 store=$2 sync=$3 label=$4 port pid
  port=$(free_port)
  mkdir -p "$store"
  {
    echo "listen: 127.0.0.1:$port"
    echo "jetstream {"
    echo "  store_dir: \"$store\""
    [[ $sync == 1 ]] && echo "  sync_interval: always"
    echo "}"
  } >"$TMP_DIR/$name.conf"
  step "$name: nats-server $(nats-server --version | awk '{print $2}') on 127.0.0.1:$port"
  info "$label"
  (exec nats-server -c "$TMP_DIR/$name.conf") </dev/null >"$TMP_DIR/$name.log" 2>&1 &
  pid=$!
  started "$name" "$pid"
  if ! wait_port "$port" 20 "$pid"; then
    cat "$TMP_DIR/$name.log" >&2
    die "nats-server did not start"
  fi
  CLIENT[$name]="$REPO_ROOT/$BUILD_DIR/bench/bus/nats_bench nats://127.0.0.1:$port"
  LABEL[$name]=$label
  SYSTEMS+=("$name")
}

# run_client NAME ROUND: one measured run; its JSON line joins the results.
run_client() {
  local name=$1 out=$TMP_DIR/run-$1-$2.json
  # shellcheck disable=SC2086  # the client command is kept as words
  if [[ -n ${LABEL[$name]:-} ]]; then
    ${CLIENT[$name]} "${LABEL[$name]}" >"$out"
  else
    ${CLIENT[$name]} >"$out"
  fi
  sed -i "s/\"system\":\"[a-z]*\"/\"system\":\"$name\"/" "$out"
  if [[ $name == ours-loop ]]; then
    sed -i 's/"durability":"[^"]*"/"durability":"as ours, on the same ext4 -o sync loop mount as nats"/' "$out"
  fi
  cat "$out" >>"$TMP_DIR/results.jsonl"
}

# ---------------------------------------------------------------------------

summarize() {
  mkdir -p "$RUN_DIR"
  python3 "$REPO_ROOT/bench/bus/summarize.py" "$TMP_DIR/results.jsonl" "$RUN_DIR/bench-bus.json" \
    "$NATS_SAME"
  info "result written to $RUN_DIR/bench-bus.json"
}

main() {
  case ${1:-} in
    -h | --help | help) usage; exit 0 ;;
    "") ;;
    *) usage >&2; exit 2 ;;
  esac
  [[ $BENCH_BUS_ROUNDS =~ ^[1-9][0-9]*$ ]] || die "BENCH_BUS_ROUNDS must be a positive integer"
  ensure_peer_packages
  build
  TMP_DIR=$(mktemp -d /tmp/bench-bus.XXXXXX)
  trap cleanup EXIT
  trap 'exit 130' INT TERM

  start_busd ours "$TMP_DIR/ours"
  start_rabbitmq
  NATS_SAME=nats-sync
  if nats_knows_sync_interval; then
    start_nats nats-sync "$TMP_DIR/nats-sync" 1 "ack after fsync (sync_interval: always)"
  elif mount_sync "$TMP_DIR/syncmnt"; then
    start_nats nats-sync "$TMP_DIR/syncmnt/nats" 0 \
      "ack after a synchronous write: no sync_interval in this nats-server, store on ext4 -o sync (loop device)"
    [[ $BENCH_BUS_LOOP_CONTROL == 1 ]] && start_busd ours-loop "$TMP_DIR/syncmnt/busd"
  else
    warn "this nats-server has no sync_interval and no -o sync mount could be made: nats runs with weaker durability"
    NATS_SAME=nats-default
  fi
  if [[ $BENCH_BUS_NATS_DEFAULT == 1 || $NATS_SAME == nats-default ]]; then
    start_nats nats-default "$TMP_DIR/nats-default" 0 "ack NOT after fsync (nats defaults: sync every 2 min)"
  fi

  local r name
  : >"$TMP_DIR/results.jsonl"
  for ((r = 1; r <= BENCH_BUS_ROUNDS; r++)); do
    for name in "${SYSTEMS[@]}"; do
      step "round $r/$BENCH_BUS_ROUNDS: $name"
      run_client "$name" "$r"
    done
  done
  summarize
}

main "$@"
