#!/usr/bin/env bash
#
# The deploy suite, containers: the images build from the repository
# (deploy/images build, the base image included when it is missing), the
# dev overlay runs under podman kube play (deploy/k8s/play) and the flow of
# `deploy/dev up` passes against it; every container answers its liveness
# check, runs as its own user on a read-only root filesystem; then busd's
# container is killed (SIGKILL) and started again, and every event it had
# acknowledged before is still delivered, and the flow passes again.
# Everything started is removed at the end, whatever happens; the images
# are kept (they are the build cache) under this run's tag only until then.
#
# Exit 77 (skipped) when podman cannot run containers here, with the reason.
set -euo pipefail
REPO_ROOT=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)}
# shellcheck source=deploy/lib/common.sh
source "$REPO_ROOT/deploy/lib/common.sh"
export CONTAINERS_CONF=$REPO_ROOT/deploy/containers/containers.conf

if ! why=$("$REPO_ROOT/deploy/images" check 2>&1); then
  echo "SKIP: $why"
  exit 77
fi
command -v kubectl >/dev/null || { echo "SKIP: kubectl is not installed (kubectl kustomize renders the overlay)"; exit 77; }

export IMAGE_TAG=test-$$
export PLAY_IMAGE_TAG=$IMAGE_TAG
export PLAY_NAME=t$$-deploy
PLAY_HTTPS_PORT=$(free_port)
PLAY_ADMIN_PORT=$(free_port)
while [[ $PLAY_ADMIN_PORT == "$PLAY_HTTPS_PORT" ]]; do PLAY_ADMIN_PORT=$(free_port); done
export PLAY_HTTPS_PORT PLAY_ADMIN_PORT
IMAGES=(busd profile account payment event gateway postgres)
PG=$PLAY_NAME-postgres-postgres
BUSD=$PLAY_NAME-busd-busd
CA=$REPO_ROOT/deploy/k8s/overlays/dev/secrets/tls.crt

cleanup() {
  local rc=$?
  "$REPO_ROOT/deploy/k8s/play" down >/dev/null 2>&1 || true
  local img
  for img in "${IMAGES[@]}"; do
    podman untag "localhost/paycore/$img:$IMAGE_TAG" "localhost/paycore/$img:$IMAGE_TAG" 2>/dev/null || true
  done
  # Nothing of this run may be left behind.
  local left
  left=$(podman ps -a --format '{{.Names}}' | grep -c "^$PLAY_NAME-" || true)
  ((left == 0)) || { echo "FAIL: $left containers of $PLAY_NAME left"; rc=1; }
  podman network exists "$PLAY_NAME" && { echo "FAIL: network $PLAY_NAME left"; rc=1; }
  left=$(podman volume ls -q | grep -c "^$PLAY_NAME-" || true)
  ((left == 0)) || { echo "FAIL: $left volumes of $PLAY_NAME left"; rc=1; }
  exit "$rc"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

t0=$SECONDS
"$REPO_ROOT/deploy/images" build || fail "deploy/images build"
echo "images built in $((SECONDS - t0))s"
for img in "${IMAGES[@]}"; do
  ref=localhost/paycore/$img:$IMAGE_TAG
  user=$(podman image inspect "$ref" --format '{{.Config.User}}')
  health=$(podman image inspect "$ref" --format '{{if .Config.Healthcheck}}{{index .Config.Healthcheck.Test 1}}{{end}}')
  [[ $user =~ ^1000[12]:1000[12]$ ]] || fail "$ref runs as '$user', not as its own user"
  [[ -n $health ]] || fail "$ref has no health check"
  printf '  %-40s %s, user %s\n' "$ref" "$(podman image inspect "$ref" --format '{{.Size}}' | awk '{ printf "%.1f MB", $1 / 1e6 }')" "$user"
done

t0=$SECONDS
"$REPO_ROOT/deploy/k8s/play" up || fail "deploy/k8s/play up"
echo "kube play of the dev overlay ready in $((SECONDS - t0))s"

gw=https://localhost:$PLAY_HTTPS_PORT
t0=$SECONDS
python3 "$REPO_ROOT/tests/deploy/smoke_flow.py" --gateway "$gw" --cacert "$CA" --pg-container "$PG" ||
  fail "the flow against kube play"
echo "flow passed in $((SECONDS - t0))s"

for c in $(podman ps --format '{{.Names}}' | grep "^$PLAY_NAME-" | grep -v -- '-infra$'); do
  podman healthcheck run "$c" >/dev/null 2>&1 || fail "$c: its liveness check fails"
  uid=$(podman exec "$c" id -u)
  [[ $uid != 0 ]] || fail "$c runs as root"
  if podman exec "$c" sh -c 'echo x >/usr/local/bin/probe' 2>/dev/null; then
    fail "$c: the root filesystem is writable"
  fi
done
echo "every container: liveness check passes, uid != 0, read-only root filesystem"

# busd: acknowledged events survive a SIGKILL of its container.
n=500
topic=deploy.durability.$$
out=$(podman exec "$BUSD" busctl pub --topic "$topic" --count "$n" --data "run-$$" 2>&1) || fail "busctl pub: $out"
[[ $out == *"confirmed $n, failed 0"* ]] || fail "busctl pub: $out"
timeout 60 podman exec "$BUSD" busctl sub --topic "$topic" --group before --count "$n" |
  awk '{ print $5 }' | sort >"$REPO_ROOT/.run/deploy-before.$$" || fail "reading the events before the kill"
podman kill --signal KILL "$BUSD" >/dev/null
# Right after the kill podman may still call the container "stopped" (its
# clean-up under way) before "exited"; either way it died of SIGKILL.
state=$(podman inspect "$BUSD" --format '{{.State.Status}} {{.State.ExitCode}}')
[[ $state == "exited 137" || $state == "stopped 137" ]] || fail "busd after SIGKILL: $state"
# The pod stops with its last container (kube play's exit policy); starting
# the container starts the pod again, at the same address. The pod may take
# a moment to settle after the kill.
restarted=$(date -u +%Y-%m-%dT%H:%M:%SZ)
t_restart=$SECONDS
deadline=$((SECONDS + 20))
until podman start "$BUSD" >/dev/null 2>&1; do
  ((SECONDS < deadline)) || fail "busd's container could not be started again"
  sleep 0.5
done
deadline=$((SECONDS + 60))
until podman healthcheck run "$BUSD" >/dev/null 2>&1; do
  ((SECONDS < deadline)) || fail "busd did not come back within 60s"
  sleep 0.5
done
timeout 60 podman exec "$BUSD" busctl sub --topic "$topic" --group after --count "$n" |
  awk '{ print $5 }' | sort >"$REPO_ROOT/.run/deploy-after.$$" || fail "reading the events after the restart"
before=$(sort -u "$REPO_ROOT/.run/deploy-before.$$" | wc -l)
if ! cmp -s "$REPO_ROOT/.run/deploy-before.$$" "$REPO_ROOT/.run/deploy-after.$$" || ((before != n)); then
  rm -f "$REPO_ROOT/.run/deploy-before.$$" "$REPO_ROOT/.run/deploy-after.$$"
  fail "events acknowledged before the kill differ from those after the restart"
fi
rm -f "$REPO_ROOT/.run/deploy-before.$$" "$REPO_ROOT/.run/deploy-after.$$"
echo "busd killed (SIGKILL) and started again: all $n acknowledged events still delivered"

# The services' bus clients reconnect by themselves, with back-off.
for svc in profile account payment event; do
  until podman logs --since "$restarted" "$PLAY_NAME-$svc-$svc" 2>&1 | grep -q '"msg":"bus connected"'; do
    ((SECONDS - t_restart < 90)) || fail "$svc did not reconnect to busd within 90s"
    sleep 0.5
  done
done
echo "the four services reconnected to busd within $((SECONDS - t_restart))s of its restart"
python3 "$REPO_ROOT/tests/deploy/smoke_flow.py" --gateway "$gw" --cacert "$CA" --pg-container "$PG" ||
  fail "the flow after busd's restart"
echo "flow passed again after busd's restart (the services reconnected)"

t0=$SECONDS
"$REPO_ROOT/deploy/k8s/play" down >/dev/null || fail "deploy/k8s/play down"
echo "removed in $((SECONDS - t0))s"
echo "containers: ok"
