#!/usr/bin/env python3
"""PostgreSQL over TLS, with the server's certificate and name verified.

usage: test_pg_tls.py DEPLOY_PG PG_PROBE PROFILE TEST_PG

A private primary and one replica (deploy/pg start --replicas 1 with
PG_TLS=1, in a directory of the test's own). Then:

  - `deploy/pg env` gives every URL sslmode=verify-full and sslrootcert=
    the cluster's CA, and the server's certificate verifies against that
    CA for localhost and 127.0.0.1;
  - the replica streams from the primary over TLS;
  - runtime/pg (pg_probe) connects with a service's URL, and its own
    backend says TLS; with the read URL (the replica first) too;
  - refused, each with libpq's reason in runtime/pg's log: a CA of another
    cluster ("certificate verify failed"), a host name the certificate
    does not carry ("does not match host name"), no TLS at all (the
    server's pg_hba.conf: "no encryption");
  - the profile service runs on its URL (/readyz 200, every connection of
    its role is TLS); given the other CA it does not start, and says why;
  - runtime/pg's own suite (test_pg: pipelining with its bound on writes,
    deadlines, LISTEN, a SIGKILLed server) passes over TLS.
"""
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import paytest as t  # noqa: E402
import pgcluster  # noqa: E402


def url_params(url):
    return dict(p.split("=", 1) for p in url.partition("?")[2].split("&") if "=" in p)


def with_params(url, **params):
    """url with these parameters set (others kept)."""
    base, _, _ = url.partition("?")
    merged = url_params(url)
    merged.update(params)
    return base + "?" + "&".join("%s=%s" % kv for kv in merged.items())


def probe(pg_probe, url, timeout_ms):
    """runtime/pg's connect: (exit status, stdout, stderr)."""
    p = subprocess.run([pg_probe, url, str(timeout_ms)], capture_output=True, text=True,
                       timeout=timeout_ms / 1000 + 30)
    return p.returncode, p.stdout.strip(), p.stderr


def check_env(cluster):
    ca = os.path.join(cluster.dir, "certs", "ca.crt")
    names = [k for k in cluster.urls if k.endswith("_URL")]
    bad = [k for k in names if url_params(cluster.urls[k]).get("sslmode") != "verify-full"
           or url_params(cluster.urls[k]).get("sslrootcert") != ca]
    t.check(len(names) >= 6 and not bad,
            "every URL of deploy/pg env has sslmode=verify-full&sslrootcert=%s (not: %s)"
            % (ca, bad))
    cert = os.path.join(cluster.dir, "certs", "server.crt")
    ok = subprocess.run(["openssl", "verify", "-CAfile", ca, cert], capture_output=True).returncode
    names = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-checkhost", "localhost",
                            "-checkip", "127.0.0.1"], capture_output=True, text=True).stdout
    t.check(ok == 0 and "does match certificate" in names
            and "NOT match" not in names,
            "the server's certificate verifies against the CA, for localhost and 127.0.0.1 (%s)"
            % names.strip())
    return ca


def check_replica(cluster):
    tls = t.wait_for(lambda: t.sql(cluster.admin(), "SELECT s.ssl FROM pg_stat_replication r"
                                                    " JOIN pg_stat_ssl s USING (pid)") == "t",
                     20, step=0.2)
    t.check(tls, "the replica streams from the primary over TLS (pg_stat_ssl of its walsender)")


def check_probe(pg_probe, cluster, other_ca):
    url = cluster.urls["PAYMENT_DB_URL"]
    rc, out, err = probe(pg_probe, url, 10000)
    m = re.match(r"^up ssl=t version=TLSv1\.([23])$", out)
    t.check(rc == 0 and m is not None,
            "runtime/pg connects with verify-full, over TLS 1.2+: %r %s" % (out, err[-300:]))
    rc, out, err = probe(pg_probe, cluster.urls["PAYMENT_DB_READ_URL"], 10000)
    t.check(rc == 0 and out.startswith("up ssl=t "),
            "... and through the read URL, the replica first: %r %s" % (out, err[-300:]))

    cases = [
        ("a CA of another cluster", with_params(url, sslrootcert=other_ca),
         "certificate verify failed"),
        # The certificate names localhost and 127.0.0.1; this asks for
        # another name at the same address.
        ("a host name the certificate does not carry",
         with_params(url.replace("@127.0.0.1:", "@db.invalid:"), hostaddr="127.0.0.1"),
         'does not match host name \\"db.invalid\\"'),
        ("no TLS at all", with_params(url, sslmode="disable"), "no encryption"),
    ]
    for what, bad_url, why in cases:
        rc, out, err = probe(pg_probe, bad_url, 1500)
        t.check(rc == 1 and out == "down", "%s: runtime/pg does not connect (%r)" % (what, out))
        t.check('"msg":"database connect failed"' in err and why in err,
                "%s: the log says why (%s): %s" % (what, why, err[:400]))


def check_service(profile, cluster, other_ca):
    plat = t.Platform({"profile": profile}, bus=False)
    plat.start("profile")
    status, _ = t.call(plat.port("profile"), "GET", "/readyz")[:2]
    t.check(status == 200, "the profile service is ready on its verify-full URL (%s)" % status)
    rows = t.sql_rows(cluster.admin(), "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s"
                                       " USING (pid) WHERE a.usename = 'profile'")
    t.check(len(rows) >= 1 and all(r == ["t"] for r in rows),
            "every connection of the profile role is TLS (%s)" % rows)

    bad = t.Proc("profile-other-ca", [profile],
                 dict(plat.env("profile"), PROFILE_PORT=str(t.free_port()), DB_WAIT="1s",
                      PROFILE_DB_URL=with_params(cluster.urls["PROFILE_DB_URL"],
                                                 sslrootcert=other_ca)),
                 t.free_port())
    try:
        bad.start(timeout=20)
        started = True
    except RuntimeError:
        started = False
    log = bad.log_text()
    t.check(not started and "database not reachable" in log
            and "certificate verify failed" in log,
            "with another CA the profile service does not start, and says why: %s"
            % log[-400:])


def check_pg_suite(test_pg, deploy_pg, cluster):
    env = dict(cluster.env, PAYMENT_DB_URL=cluster.urls["PAYMENT_DB_URL"])
    p = subprocess.run([test_pg, deploy_pg], env=env, capture_output=True, text=True,
                       timeout=150)
    writes = re.search(r"pipelining: \d+ batches in \d+ ms over \d+ writes", p.stderr)
    t.say(writes.group(0) if writes else "pipelining: no figure")
    t.check(p.returncode == 0, "runtime/pg's suite passes over TLS: %s"
            % (p.stdout.strip() + " " + p.stderr[-600:]))


def main():
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    deploy_pg, pg_probe, profile, test_pg = sys.argv[1:]
    pgcluster.pg_bin()
    pgcluster.need_programs("psql", "openssl")
    cluster = pgcluster.Cluster(deploy_pg, replicas=1, tls=True)
    pgcluster.watchdog(200, cluster)
    cluster.start()
    cluster.export()
    # Another cluster's CA, made by the same script.
    other = os.path.join(t.WORK_DIR, "other-ca")
    subprocess.run(["bash", os.path.join(os.path.dirname(deploy_pg), "certs.sh"), "--pg", other],
                   check=True, capture_output=True, timeout=60)
    other_ca = os.path.join(other, "ca.crt")
    t.run_cases([
        ("deploy/pg env", lambda: check_env(cluster)),
        ("replica over TLS", lambda: check_replica(cluster)),
        ("runtime/pg", lambda: check_probe(pg_probe, cluster, other_ca)),
        ("a service", lambda: check_service(profile, cluster, other_ca)),
        ("runtime/pg's suite", lambda: check_pg_suite(test_pg, deploy_pg, cluster)),
    ])
    cluster.stop()
    return t.finish()


if __name__ == "__main__":
    sys.exit(main())
