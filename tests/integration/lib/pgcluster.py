"""Private PostgreSQL clusters for the tests that replicate, fail over or
restore: a primary with replicas made by deploy/pg in a directory of the
test's own (PG_DIR), on free loopback ports, stopped at exit whatever
happened to the test. The shared cluster of the other tests is never
touched.
"""
import atexit
import os
import re
import shutil
import subprocess
import sys

import paytest as t


def skip(why):
    """Exit 77 (meson's "skipped") with the reason."""
    print("skipped: " + why, flush=True)
    t.stop_all()
    shutil.rmtree(t.WORK_DIR, ignore_errors=True)
    sys.exit(77)


def need_programs(*names):
    """Skips the test when a program it needs is not installed."""
    missing = [n for n in names if shutil.which(n) is None and not os.path.exists(n)]
    if missing:
        skip("not installed: %s" % ", ".join(missing))


def pg_bin():
    """The PostgreSQL server binaries (as deploy/pg finds them)."""
    for d in ["/usr/lib/postgresql/15/bin"] + sorted(
            os.path.join("/usr/lib/postgresql", v, "bin")
            for v in (os.listdir("/usr/lib/postgresql") if os.path.isdir("/usr/lib/postgresql")
                      else [])):
        if os.path.exists(os.path.join(d, "pg_ctl")):
            return d
    skip("PostgreSQL server binaries not found")
    return None


def parse_env(text):
    """export NAME=VALUE lines (VALUE maybe single-quoted) into a dict."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^export ([A-Z0-9_]+)=(.*)$", line)
        if m:
            v = m.group(2)
            if len(v) >= 2 and v[0] == v[-1] == "'":
                v = v[1:-1]
            out[m.group(1)] = v
    return out


def with_port(url, port):
    """The same URL on another port of 127.0.0.1."""
    return re.sub(r"@127\.0\.0\.1:\d+/", "@127.0.0.1:%d/" % port, url)


class Cluster:
    """deploy/pg with PG_DIR and PG_PORT of this test: a primary and
    `replicas` streaming replicas; tls: PG_TLS=1 (URLs with
    sslmode=verify-full)."""

    def __init__(self, deploy_pg, replicas=1, sync=None, tls=False):
        self.deploy_pg = deploy_pg
        self.dir = os.path.join(t.WORK_DIR, "pg")
        # Run as root, the servers run as the postgres user, which must be
        # able to pass through the test's directory (mkdtemp makes it 0700).
        os.chmod(t.WORK_DIR, 0o711)
        self.port = t.free_port()
        self.replicas = replicas
        self.env = dict(os.environ)
        self.env.update({"PG_DIR": self.dir, "PG_PORT": str(self.port)})
        self.env.pop("PG_REPLICAS", None)
        self.env["PG_TLS"] = "1" if tls else "0"
        if sync:
            self.env["PG_SYNC"] = sync
        else:
            self.env.pop("PG_SYNC", None)
        self.urls = {}
        self.started = False

    def run(self, *args, timeout=180, check=True):
        out = subprocess.run([self.deploy_pg] + list(args), env=self.env, capture_output=True,
                             text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError("deploy/pg %s: %s" % (" ".join(args), out.stderr[-2000:]))
        return out

    def start(self):
        self.started = True
        atexit.register(self.stop)
        self.run("start", "--replicas", str(self.replicas))
        self.urls = parse_env(self.run("env").stdout)
        return self

    def replica_ports(self):
        return [int(p) for p in self.urls.get("PG_REPLICA_PORTS", "").split()]

    def admin(self, port=None, database="postgres"):
        """The superuser's URL on the primary (or on the server at port)."""
        url = t.with_database(self.urls["PG_ADMIN_URL"], database)
        return with_port(url, port) if port else url

    def export(self):
        """Makes paytest.db_url() and scratch_db() use this cluster."""
        for k, v in self.urls.items():
            if k.endswith("_URL") or k == "PG_PORT":
                os.environ[k] = v

    def stop(self):
        """The processes of the test first (they hold connections), then
        the servers. Call it before paytest.finish(), which deletes the
        directory the cluster lives in."""
        if self.started:
            self.started = False
            t.stop_all()
            try:
                self.run("stop", timeout=120, check=False)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass


class Patroni:
    """deploy/patroni with PATRONI_DIR of this test: etcd and three Patroni
    members on free loopback ports."""

    def __init__(self, deploy_patroni, sync="on"):
        self.script = deploy_patroni
        self.dir = os.path.join(t.WORK_DIR, "patroni")
        os.chmod(t.WORK_DIR, 0o711)
        self.env = dict(os.environ)
        self.env.update({"PATRONI_DIR": self.dir, "PATRONI_SYNC": sync})
        self.urls = {}
        self.started = False

    def run(self, *args, timeout=240, check=True):
        out = subprocess.run([self.script] + list(args), env=self.env, capture_output=True,
                             text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError("deploy/patroni %s: %s" % (" ".join(args), out.stderr[-3000:]))
        return out

    def start(self):
        self.started = True
        atexit.register(self.stop)
        self.run("start")
        self.urls = parse_env(self.run("env").stdout)
        return self

    def export(self):
        for k, v in self.urls.items():
            if k.endswith("_URL"):
                os.environ[k] = v

    def api_ports(self):
        return [int(p) for p in self.urls["PATRONI_API_PORTS"].split()]

    def pg_ports(self):
        return [int(p) for p in self.urls["PATRONI_PG_PORTS"].split()]

    def roles(self):
        """{member index: 'primary' | 'replica' | None} from the REST API."""
        out = {}
        for i, port in enumerate(self.api_ports()):
            out[i] = None
            for role in ("primary", "replica"):
                try:
                    if t.call(port, "GET", "/" + role, timeout=1)[0] == 200:
                        out[i] = role
                        break
                except OSError:
                    pass
        return out

    def leader(self):
        """The index of the member that is primary, or None."""
        for i, role in self.roles().items():
            if role == "primary":
                return i
        return None

    def kill_leader(self):
        """SIGKILLs the leader's postmaster; returns (member, port, pid)."""
        return self.run("kill-leader").stdout.split()

    def stop(self):
        """The test's processes first, then the members and etcd."""
        if self.started:
            self.started = False
            t.stop_all()
            try:
                self.run("stop", timeout=150, check=False)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass


def watchdog(seconds, *clusters):
    """Bounds the test in time: past `seconds`, stops everything it started
    and exits 1 (meson's own timeout would kill the test without letting it
    stop the servers)."""
    import threading

    def fire():
        print("over time (%ds): stopping everything" % seconds, file=sys.stderr, flush=True)
        for c in clusters:
            c.stop()
        t.stop_all()
        os._exit(1)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer
