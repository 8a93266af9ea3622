# shellcheck shell=bash
#
# common.sh - helpers shared by deploy/dev and bench/compare.
#
# Sourced, never run. Expects REPO_ROOT to be set by the caller. Everything
# here prints progress on stderr so that stdout stays free for results.

# The Debian packages the project needs, in one place: build tools (with
# gcc's ThreadSanitizer runtime, libtsan2, for build-tsan/), the
# libraries the C code links, the database (with Patroni and etcd for the
# failover test, pgBackRest for backups), and the tools the runner, tests
# and benchmarks call.
PROJECT_PACKAGES=(
  build-essential meson ninja-build pkg-config libtsan2
  liburing-dev libpq-dev libbearssl-dev libjwt-dev libmsgpack-dev
  libjansson-dev node-llhttp libargon2-dev libssl-dev
  postgresql
  patroni etcd-server pgbackrest
  curl wrk nginx-light python3 python3-jsonschema openssl procps gnuplot-nox
  rabbitmq-server librabbitmq-dev
)

# What the container images and the Kubernetes manifests need on the build
# machine (deploy/images, deploy/k8s, the deploy test suite): podman with
# runc and its network stack, debootstrap for the base image, and the tools
# that check the manifests. Installed by `ensure_packages "${CONTAINER_PACKAGES[@]}"`.
CONTAINER_PACKAGES=(
  podman runc conmon catatonit netavark aardvark-dns iptables
  debootstrap yamllint python3-yaml
)

# What coverage-guided fuzzing needs (deploy/dev fuzz): clang with its
# libFuzzer and sanitizer runtimes, and llvm-symbolizer for readable stack
# traces. Installed by `ensure_packages "${FUZZ_PACKAGES[@]}"`.
FUZZ_PACKAGES=(
  clang-14 libclang-rt-14-dev llvm-14
)

if [[ -t 2 ]]; then
  _c_bold=$'\e[1m' _c_red=$'\e[31m' _c_yel=$'\e[33m' _c_off=$'\e[0m'
else
  _c_bold='' _c_red='' _c_yel='' _c_off=''
fi

# step MSG: announce a step of the current command.
step() { printf '%s==> %s%s\n' "$_c_bold" "$*" "$_c_off" >&2; }
# info MSG: a detail under the current step.
info() { printf '    %s\n' "$*" >&2; }
warn() { printf '%swarning:%s %s\n' "$_c_yel" "$_c_off" "$*" >&2; }
die()  { printf '%serror:%s %s\n' "$_c_red" "$_c_off" "$*" >&2; exit 1; }

# as_root CMD...: run CMD as root, through sudo only when we are not root.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root to run: $* (install sudo or run as root)"
  fi
}

# ensure_packages [PKG...]: install whatever of these packages (default:
# PROJECT_PACKAGES) is missing. apt-get update runs once, and only when
# something has to be installed.
ensure_packages() {
  local pkg status missing=()
  local -a wanted=("$@")
  ((${#wanted[@]})) || wanted=("${PROJECT_PACKAGES[@]}")
  step "checking Debian packages (${#wanted[@]})"
  if ! command -v dpkg-query >/dev/null 2>&1; then
    warn "dpkg-query not found: not a Debian system, skipping the package check"
    return 0
  fi
  for pkg in "${wanted[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    info "all present"
    return 0
  fi
  info "missing: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends "${missing[@]}"
}

# meson_options_match DIR -Dname=value...: true when the build in DIR already
# has every one of these option values.
meson_options_match() {
  python3 - "$@" <<'PY'
import json, subprocess, sys

want = dict(a[2:].split("=", 1) for a in sys.argv[2:] if a.startswith("-D"))
out = subprocess.run(["meson", "introspect", sys.argv[1], "--buildoptions"],
                     capture_output=True, text=True)
if out.returncode != 0:
    sys.exit(1)
have = {o["name"]: o["value"] for o in json.loads(out.stdout)}

def text(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)

sys.exit(0 if all(k in have and text(have[k]) == v for k, v in want.items()) else 1)
PY
}

# meson_configure DIR [-Dname=value...]: configure DIR with these options
# (or reconfigure it when it holds a build with other values). meson's
# report goes to .run/meson-setup-DIR.log, and to the terminal only when it
# fails or under CI (CI=true).
meson_configure() {
  local dir=$1 log
  shift
  mkdir -p "$REPO_ROOT/.run"
  log=$REPO_ROOT/.run/meson-setup-$dir.log
  local -a setup=()
  if [[ ! -f $REPO_ROOT/$dir/meson-private/coredata.dat ]]; then
    step "configuring $dir ($*)"
    setup=(meson setup "$REPO_ROOT/$dir" "$REPO_ROOT" "$@")
  elif meson_options_match "$REPO_ROOT/$dir" "$@"; then
    step "$dir is configured ($*)"
  else
    step "reconfiguring $dir ($*)"
    setup=(meson setup --reconfigure "$REPO_ROOT/$dir" "$REPO_ROOT" "$@")
  fi
  if [[ ${#setup[@]} -gt 0 ]]; then
    if ! "${setup[@]}" >"$log" 2>&1; then
      cat "$log" >&2
      die "meson setup of $dir failed"
    fi
    if [[ ${CI:-} == true ]]; then
      cat "$log" >&2
    else
      info "meson's report: ${log#"$REPO_ROOT"/}"
    fi
  fi
}

# meson_build DIR [-Dname=value...]: meson_configure, then build everything.
meson_build() {
  meson_configure "$@"
  step "building $1"
  ninja -C "$REPO_ROOT/$1" >&2 || die "build of $1 failed"
}

# release_build DIR TARGET...: the optimised build in DIR (relative to the
# repository, or absolute) with these targets built. Configured when
# missing; reconfigured when one of the targets is not in it, which is what
# happens when a peer's client library (librabbitmq-dev, libnats-dev) was
# installed after DIR was configured: meson looks for optional dependencies
# only when it configures.
release_build() {
  local dir=$1 t missing=()
  shift
  [[ $dir == /* ]] || dir=$REPO_ROOT/$dir
  if [[ ! -f $dir/meson-private/coredata.dat ]]; then
    step "configuring $dir (--buildtype=release)"
    meson setup "$dir" "$REPO_ROOT" --buildtype=release >&2 || die "meson setup of $dir failed"
  fi
  for t in "$@"; do
    ninja -C "$dir" -t query "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  if ((${#missing[@]} > 0)); then
    step "reconfiguring $dir: not in the build yet: ${missing[*]}"
    meson setup --reconfigure "$dir" "$REPO_ROOT" >&2 || die "meson setup --reconfigure of $dir failed"
    missing=()
    for t in "$@"; do
      ninja -C "$dir" -t query "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    ((${#missing[@]} == 0)) || die "not in the build of $dir even after reconfiguring: ${missing[*]}"
  fi
  step "building $dir: $*"
  ninja -C "$dir" "$@" >&2 || die "build of $dir failed"
}

# free_port: print a TCP port on 127.0.0.1 that nobody listens on right now.
free_port() {
  python3 - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

# port_in_use PORT: true when something accepts connections on 127.0.0.1:PORT.
port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# wait_http URL SECONDS [PID]: poll URL until it answers 2xx, for at most
# SECONDS. Gives up early when PID (the server) has exited.
wait_http() {
  local url=$1 seconds=$2 pid=${3:-} deadline
  deadline=$((SECONDS + seconds))
  while ((SECONDS < deadline)); do
    if curl -fsS --max-time 1 -o /dev/null "$url" 2>/dev/null; then
      return 0
    fi
    if [[ -n $pid ]] && ! alive "$pid"; then
      return 1
    fi
    sleep 0.1
  done
  return 1
}

# alive PID: true while PID runs (a zombie waiting to be reaped counts as gone).
alive() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [[ -n $state && $state != Z ]]
}

# stop_pid PID NAME [SECONDS]: SIGTERM, wait up to SECONDS (default 10),
# then SIGKILL. Reaps PID when it is our child. Returns 0 when it is gone.
stop_pid() {
  local pid=$1 name=$2 seconds=${3:-10} deadline
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + seconds))
    while alive "$pid" && ((SECONDS < deadline)); do
      sleep 0.1
    done
    if alive "$pid"; then
      warn "$name (pid $pid) still running after ${seconds}s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  wait "$pid" 2>/dev/null || true
  ! alive "$pid"
}
