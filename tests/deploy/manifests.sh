#!/usr/bin/env bash
#
# The deploy suite, manifests: both overlays render with kubectl kustomize,
# the sources and the renders pass yamllint, the renders pass
# deploy/k8s/policy-check (prod also with no plain Secret, and every
# database URL verify-full against its cluster's CA, and every process on
# mutual TLS with its probes on a plain port), and the check does
# catch what it is meant to: a fixture breaking each rule, the dev render
# with a `latest` image and a probe removed, and the prod render with TLS
# to the databases weakened, all fail with the expected reports. Exit 77
# (skipped) when kubectl, yamllint or PyYAML is missing.
set -euo pipefail
REPO_ROOT=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)}
K8S=$REPO_ROOT/deploy/k8s
HERE=$REPO_ROOT/tests/deploy

skip() { echo "SKIP: $*"; exit 77; }
command -v kubectl >/dev/null || skip "kubectl is not installed (it renders the overlays: kubectl kustomize)"
command -v yamllint >/dev/null || skip "yamllint is not installed (Debian package yamllint)"
python3 -c 'import yaml' 2>/dev/null || skip "PyYAML is not installed (Debian package python3-yaml)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$K8S/dev-secrets" >/dev/null
for overlay in dev prod; do
  kubectl kustomize "$K8S/overlays/$overlay" >"$tmp/$overlay.yaml" || fail "kubectl kustomize overlays/$overlay"
  echo "rendered $overlay: $(grep -c '^kind:' "$tmp/$overlay.yaml") objects"
done
kubectl kustomize "$K8S/base" >"$tmp/base.yaml" || fail "kubectl kustomize base"

yamllint -c "$K8S/.yamllint" "$K8S" || fail "yamllint of deploy/k8s"
yamllint -c "$K8S/.yamllint" "$tmp/dev.yaml" "$tmp/prod.yaml" || fail "yamllint of the renders"
echo "yamllint: sources and renders pass"

"$K8S/policy-check" "$tmp/dev.yaml" || fail "policy-check of the dev overlay"
"$K8S/policy-check" --no-secrets --db-tls --inner-tls "$tmp/prod.yaml" ||
  fail "policy-check of the prod overlay"

# The checker must catch each broken rule.
if "$K8S/policy-check" --no-secrets --db-tls "$HERE/fixtures/bad.yaml" >"$tmp/bad.out"; then
  fail "policy-check passed tests/deploy/fixtures/bad.yaml"
fi
expected=(
  "Deployment/loose: container loose: image 'example/loose:latest' has no tag, or \`latest\`"
  "StatefulSet/untagged: container untagged: image 'example/untagged' has no tag, or \`latest\`"
  "Deployment/loose: container loose: no startupProbe"
  "Deployment/loose: container loose: no readinessProbe"
  "Deployment/loose: container loose: no memory limit"
  "Deployment/loose: container loose: runAsNonRoot is not true"
  "Deployment/loose: container loose: root filesystem is not read-only"
  "Deployment/loose: container loose: allowPrivilegeEscalation is not false"
  "Deployment/loose: container loose: capabilities are not all dropped"
  "Deployment/loose: no seccompProfile"
  "Deployment/loose: no terminationGracePeriodSeconds"
  "Deployment/loose: no HorizontalPodAutoscaler"
  "Deployment/loose: no PodDisruptionBudget"
  "Deployment/loose: no NetworkPolicy of its own"
  "StatefulSet/untagged: no NetworkPolicy of its own"
  "no default-deny NetworkPolicy"
  "ConfigMap/leaky: key DB_PASSWORD looks like a secret"
  "ConfigMap/leaky: value of DB_URL looks like a secret"
  "Secret/plain: a Secret in the manifests"
  "Cluster/small-db: fewer than 3 instances"
  "Cluster/small-db: no backups to object storage"
  "Cluster/small-db: no ScheduledBackup"
  "Cluster/small-db: no NetworkPolicy selects its instances"
  "Deployment/loose: container loose: DB_URL: sslmode is 'require', not verify-full"
  "Deployment/loose: container loose: DB_URL: no sslrootcert"
  "StatefulSet/untagged: container untagged: SMALL_DB_URL: mounts the whole Secret small-db-ca (ca.key too); project ca.crt only"
  "StatefulSet/untagged: container untagged: OTHER_DB_URL: no Cluster other-db in the manifests"
  "StatefulSet/untagged: container untagged: OTHER_DB_URL: sslrootcert comes from Secret small-db-ca, not other-db-ca (the CA of other-db)"
)
for e in "${expected[@]}"; do
  grep -qF "$e" "$tmp/bad.out" || { cat "$tmp/bad.out"; fail "policy-check did not report: $e"; }
done
echo "policy-check reports all ${#expected[@]} violations of the fixture"

# And in a real render: a `latest` tag and a missing probe.
python3 - "$tmp/dev.yaml" "$tmp/dev-broken.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    if d["kind"] == "Deployment" and d["metadata"]["name"] == "account":
        c = d["spec"]["template"]["spec"]["containers"][0]
        c["image"] = "localhost/paycore/account:latest"
        del c["readinessProbe"]
    if d["kind"] == "HorizontalPodAutoscaler" and d["metadata"]["name"] == "payment":
        d["spec"]["metrics"] = d["spec"]["metrics"][:1]
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
PY
if "$K8S/policy-check" "$tmp/dev-broken.yaml" >"$tmp/broken.out"; then
  fail "policy-check passed a render with a latest tag"
fi
for e in "Deployment/account: container account: image 'localhost/paycore/account:latest'" \
  "Deployment/account: container account: no readinessProbe" \
  "HorizontalPodAutoscaler/payment: no custom metric"; do
  grep -qF "$e" "$tmp/broken.out" || { cat "$tmp/broken.out"; fail "policy-check did not report: $e"; }
done
echo "policy-check catches a latest tag, a missing probe and an HPA on CPU alone in the dev render"

# And in the prod render: TLS to the databases weakened to sslmode=require,
# and one service's CA mount widened to the whole Secret.
python3 - "$tmp/prod.yaml" "$tmp/prod-broken.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "paycore-config":
        d["data"]["DB_SSL_PARAMS"] = "sslmode=require&sslrootcert=/etc/paycore/db-ca/ca.crt"
    if d["kind"] == "Deployment" and d["metadata"]["name"] == "payment":
        for v in d["spec"]["template"]["spec"]["volumes"]:
            if v["name"] == "db-ca":
                del v["secret"]["items"]
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
PY
if "$K8S/policy-check" --no-secrets --db-tls "$tmp/prod-broken.yaml" >"$tmp/prod-broken.out"; then
  fail "policy-check passed a prod render with sslmode=require"
fi
for e in "Deployment/account: container account: ACCOUNT_DB_URL: sslmode is 'require', not verify-full" \
  "Deployment/profile: container profile: PROFILE_DB_READ_URL: sslmode is 'require', not verify-full" \
  "Deployment/payment: container payment: PAYMENT_DB_URL: mounts the whole Secret payment-db-ca (ca.key too); project ca.crt only"; do
  grep -qF "$e" "$tmp/prod-broken.out" || { cat "$tmp/prod-broken.out"; fail "policy-check did not report: $e"; }
done
echo "policy-check catches database URLs without verify-full and a whole CA Secret mounted in the prod render"

# And mutual TLS between the processes: one service without it, another
# probed on the port that takes only clients with a certificate.
python3 - "$tmp/prod.yaml" "$tmp/prod-plain.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    if d["kind"] == "Deployment" and d["metadata"]["name"] == "event":
        c = d["spec"]["template"]["spec"]["containers"][0]
        c["env"] = [e for e in c["env"] if e["name"] != "TLS_CA"]
    if d["kind"] == "Deployment" and d["metadata"]["name"] == "account":
        c = d["spec"]["template"]["spec"]["containers"][0]
        c["readinessProbe"]["httpGet"]["port"] = "http"
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
PY
if "$K8S/policy-check" --no-secrets --db-tls --inner-tls "$tmp/prod-plain.yaml" >"$tmp/prod-plain.out"; then
  fail "policy-check passed a prod render with a service without mutual TLS"
fi
for e in "Deployment/event: container event: no TLS_CA (mutual TLS between our processes)" \
  "Deployment/account: container account: readinessProbe on port 7002, which takes only mutual TLS clients (plain: 7012)"; do
  grep -qF "$e" "$tmp/prod-plain.out" || { cat "$tmp/prod-plain.out"; fail "policy-check did not report: $e"; }
done
echo "policy-check catches a service without mutual TLS and a probe on its TLS port in the prod render"
echo "manifests: ok"
