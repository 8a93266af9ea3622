#!/usr/bin/env python3
"""Turn a rendered overlay into what `podman kube play` (podman 4.3) runs.

    podman_play.py RENDERED.yaml OUTDIR --prefix P [--publish W:PORT=IP:HOSTPORT]...
                   [--image-tag TAG]

Kubernetes has Services, StatefulSets, Secrets and a scheduler; podman 4.3's
kube play has pods, volumes and one network. This script maps the one onto
the other, and writes down everything it leaves out:

- every Deployment and StatefulSet becomes one Pod named P-<workload> (one
  replica: this is one machine);
- a Service becomes network aliases of the pod it selects, so that a name
  such as `profile` or `profile-db-rw` resolves on the podman network as it
  does in the cluster (Services themselves are not played);
- a StatefulSet's volumeClaimTemplates become podman volumes P-<claim>-<sts>;
- environment from ConfigMaps and Secrets is written out as values, and
  `$(VAR)` references are expanded, as the kubelet does: podman 4.3 expands
  none of them, and its Secret support is broken (containers/podman#17071;
  a secret volume crashes it), so secret values are passed literally and
  secret volumes become files in OUTDIR/files (mode 0440) mounted read-only;
- a Localhost seccomp profile becomes the pod annotation podman reads (the
  profile root is given to kube play with --seccomp-profile-root);
- an httpGet liveness probe becomes the image's own health check command,
  since the images carry no curl; startup and readiness probes and preStop
  hooks, which kube play 4.3 does not run, are dropped;
- --image-tag replaces the tag of the localhost/paycore/ images (a test run
  plays the images it built, whatever `dev` holds);
- only the container ports named by --publish are published, on the given
  host address (kube play would publish every declared port on 0.0.0.0).

NetworkPolicies, HPAs, PDBs and the Namespace are not played: podman has no
equivalent. They are listed in OUTDIR/plan.json with the pods, in start
order, and the volumes and files to remove afterwards.
"""

import argparse
import base64
import copy
import json
import os
import re
import sys

import yaml

# Start order: databases and the bus first, then each service after the
# ones it calls, the gateway last. Workloads not named here come after.
START_ORDER = ["postgres", "busd", "profile", "account", "payment", "event", "gateway"]
NOT_PLAYED = {"NetworkPolicy", "HorizontalPodAutoscaler", "PodDisruptionBudget",
              "Namespace", "ServiceAccount"}
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def fail(msg):
    print("podman_play: " + msg, file=sys.stderr)
    sys.exit(1)


def load(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def secret_values(doc):
    out = {k: base64.b64decode(v).decode("utf-8") for k, v in (doc.get("data") or {}).items()}
    out.update(doc.get("stringData") or {})
    return out


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def expand(value, env):
    """$(VAR) -> its value when VAR is defined earlier; $$(VAR) -> $(VAR)."""
    def sub(m):
        start = m.start()
        if start > 0 and value[start - 1] == "$":
            return m.group(0)
        return env.get(m.group(1), m.group(0))
    return VAR_REF.sub(sub, value).replace("$$(", "$(")


class Converter:
    def __init__(self, docs, prefix, outdir, publish, image_tag=None):
        self.prefix = prefix
        self.image_tag = image_tag
        self.outdir = outdir
        self.publish = publish        # {(workload, port name): (ip, host port)}
        self.configmaps = {}
        self.secrets = {}
        self.services = []
        self.workloads = []
        self.dropped = []
        self.files = []
        self.volumes = []
        for d in docs:
            kind, name = d.get("kind"), d["metadata"]["name"]
            if kind == "ConfigMap":
                self.configmaps[name] = dict(d.get("data") or {})
            elif kind == "Secret":
                self.secrets[name] = secret_values(d)
            elif kind == "Service":
                self.services.append(d)
            elif kind in ("Deployment", "StatefulSet"):
                self.workloads.append(d)
            elif kind in NOT_PLAYED:
                self.dropped.append("%s/%s" % (kind, name))
            else:
                fail("%s/%s: kind %s is not supported here" % (kind, name, kind))

    # -- environment ---------------------------------------------------------

    def lookup(self, ref, table, what):
        name, key = ref["name"], ref["key"]
        if name not in table or key not in table[name]:
            if ref.get("optional"):
                return None
            fail("%s %s has no key %s" % (what, name, key))
        return table[name][key]

    def resolve_env(self, container):
        env, order = {}, []
        for src in container.pop("envFrom", []) or []:
            if "configMapRef" in src:
                items = self.configmaps.get(src["configMapRef"]["name"])
            else:
                items = self.secrets.get(src["secretRef"]["name"])
            if items is None:
                fail("envFrom names a missing ConfigMap or Secret: %s" % src)
            for k, v in items.items():
                k = src.get("prefix", "") + k
                if k not in env:
                    order.append(k)
                env[k] = v
        for e in container.get("env", []) or []:
            if "value" in e:
                v = expand(str(e["value"]), env)
            elif "configMapKeyRef" in e.get("valueFrom", {}):
                v = self.lookup(e["valueFrom"]["configMapKeyRef"], self.configmaps, "ConfigMap")
            elif "secretKeyRef" in e.get("valueFrom", {}):
                v = self.lookup(e["valueFrom"]["secretKeyRef"], self.secrets, "Secret")
            else:
                fail("env %s: only values, ConfigMap and Secret keys are supported" % e["name"])
            if v is None:
                continue
            if e["name"] not in env:
                order.append(e["name"])
            env[e["name"]] = v
        container["env"] = [{"name": k, "value": env[k]} for k in order]

    # -- volumes ---------------------------------------------------------------

    def secret_dir(self, pod_name, vol, uid, gid):
        src = vol["secret"]
        values = self.secrets.get(src["secretName"])
        if values is None:
            fail("volume %s: no Secret %s" % (vol["name"], src["secretName"]))
        path = os.path.join(self.outdir, "files", pod_name, vol["name"])
        os.makedirs(path, mode=0o750, exist_ok=True)
        items = src.get("items") or [{"key": k, "path": k} for k in values]
        for it in items:
            f = os.path.join(path, it["path"])
            with open(f, "w", encoding="utf-8") as out:
                out.write(values[it["key"]])
            os.chmod(f, 0o440)
            os.chown(f, uid, gid)
        os.chown(path, uid, gid)
        self.files.append(path)
        return {"name": vol["name"], "hostPath": {"path": path, "type": "Directory"}}

    # -- probes ----------------------------------------------------------------

    @staticmethod
    def port_number(container, port):
        if isinstance(port, int):
            return port
        for p in container.get("ports", []):
            if p.get("name") == port:
                return p["containerPort"]
        fail("container %s has no port named %s" % (container["name"], port))

    def convert_probes(self, container):
        for key in ("startupProbe", "readinessProbe"):
            container.pop(key, None)
        container.pop("lifecycle", None)
        probe = container.get("livenessProbe")
        if probe and "httpGet" in probe:
            get = probe.pop("httpGet")
            port = self.port_number(container, get["port"])
            probe["exec"] = {"command": ["/usr/local/bin/paycore-healthcheck",
                                         str(port), get.get("path", "/healthz")]}

    # -- workloads -------------------------------------------------------------

    def aliases(self, workload, labels):
        names = [workload]
        for s in self.services:
            if selects(s["spec"].get("selector"), labels):
                names.append(s["metadata"]["name"])
        return sorted(set(names), key=names.index)

    def pod(self, w):
        name = w["metadata"]["name"]
        pod_name = "%s-%s" % (self.prefix, name)
        tmpl = copy.deepcopy(w["spec"]["template"])
        spec = tmpl["spec"]
        labels = tmpl["metadata"].get("labels", {})
        annotations = dict(tmpl["metadata"].get("annotations") or {})
        sc = spec.get("securityContext") or {}
        uid, gid = sc.get("runAsUser", 0), sc.get("runAsGroup", 0)

        seccomp = sc.pop("seccompProfile", None)
        if seccomp and seccomp.get("type") == "Localhost":
            annotations["seccomp.security.alpha.kubernetes.io/pod"] = \
                "localhost/" + os.path.basename(seccomp["localhostProfile"])
        for c in spec.get("containers", []):
            c.get("securityContext", {}).pop("seccompProfile", None)

        for key in ("serviceAccountName", "automountServiceAccountToken",
                    "topologySpreadConstraints"):
            spec.pop(key, None)
        spec["restartPolicy"] = "Always"

        volumes = []
        for v in spec.get("volumes", []) or []:
            volumes.append(self.secret_dir(pod_name, v, uid, gid) if "secret" in v else v)
        for claim in w["spec"].get("volumeClaimTemplates", []) or []:
            vol = "%s-%s-%s" % (self.prefix, claim["metadata"]["name"], name)
            self.volumes.append(vol)
            volumes.append({"name": claim["metadata"]["name"],
                            "persistentVolumeClaim": {"claimName": vol}})
        spec["volumes"] = volumes

        for c in spec.get("containers", []):
            if self.image_tag and c["image"].startswith("localhost/paycore/"):
                c["image"] = c["image"].rsplit(":", 1)[0] + ":" + self.image_tag
            self.resolve_env(c)
            self.convert_probes(c)
            # kube play publishes every declared port on all host addresses
            # under its own number: only the ports asked for are kept, on
            # the address asked for. Pods reach each other over the network.
            published = []
            for p in c.get("ports", []):
                pub = self.publish.get((name, p.get("name")))
                if pub:
                    p["hostIP"], p["hostPort"] = pub
                    published.append(p)
            c["ports"] = published

        doc = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name, "labels": labels, "annotations": annotations},
               "spec": spec}
        return {"workload": name, "pod": pod_name, "doc": doc,
                "aliases": self.aliases(name, labels),
                "containers": ["%s-%s" % (pod_name, c["name"]) for c in spec["containers"]]}

    def run(self):
        def rank(w):
            n = w["metadata"]["name"]
            return (START_ORDER.index(n) if n in START_ORDER else len(START_ORDER), n)
        os.makedirs(os.path.join(self.outdir, "pods"), exist_ok=True)
        plan = {"prefix": self.prefix, "pods": [], "volumes": self.volumes,
                "files": self.files, "not_played": self.dropped,
                "services_as_aliases": sorted(s["metadata"]["name"] for s in self.services)}
        for i, w in enumerate(sorted(self.workloads, key=rank)):
            p = self.pod(w)
            path = os.path.join(self.outdir, "pods", "%02d-%s.yaml" % (i, p["workload"]))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                yaml.safe_dump(p.pop("doc"), f, sort_keys=False)
            p["file"] = path
            plan["pods"].append(p)
        plan["volumes"] = self.volumes
        plan["files"] = self.files
        with open(os.path.join(self.outdir, "plan.json"), "w", encoding="utf-8") as f:
            json.dump(plan, f, indent=1)
        return plan


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rendered")
    ap.add_argument("outdir")
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--publish", action="append", default=[],
                    help="WORKLOAD:PORTNAME=IP:HOSTPORT")
    ap.add_argument("--image-tag")
    a = ap.parse_args()
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,30}", a.prefix):
        fail("bad prefix %r" % a.prefix)
    publish = {}
    for p in a.publish:
        m = re.fullmatch(r"([a-z0-9-]+):([a-z0-9-]+)=([0-9.]+):([0-9]+)", p)
        if not m:
            fail("bad --publish %r" % p)
        publish[(m.group(1), m.group(2))] = (m.group(3), int(m.group(4)))
    if a.image_tag and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", a.image_tag):
        fail("bad --image-tag %r" % a.image_tag)
    plan = Converter(load(a.rendered), a.prefix, a.outdir, publish, a.image_tag).run()
    print(json.dumps({"pods": [p["pod"] for p in plan["pods"]],
                      "not_played": plan["not_played"]}))


if __name__ == "__main__":
    main()
