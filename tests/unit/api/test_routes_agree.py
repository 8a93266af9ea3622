#!/usr/bin/env python3
"""The gateway and every service agree with wire/api/api.table, the one table of
the public API:

  - `gateway --routes` lists exactly the table's routed routes, each to its
    service with its roles (anyone: every token role and no token);
  - `<service> --routes` lists, under /v1, exactly the table's routes of
    that service, each with the table's roles, and identity required
    (optional for "anyone"). A route the gateway forwards that no service
    serves, a route a service serves that the table does not list, or a
    route whose roles differ, fails here.

    test_routes_agree.py GEN_API_PY API_TABLE GATEWAY SERVICE...
"""
import json
import os
import subprocess
import sys


def routes_of(exe):
    env = {k: v for k, v in os.environ.items() if k != "GW_EXTRA_ROUTES"}
    out = subprocess.run([exe, "--routes"], env=env, check=True, capture_output=True,
                         text=True, timeout=30).stdout
    return {(r["method"], r["pattern"]): r for r in map(json.loads, out.splitlines())}


def compare(what, got, want, failures):
    for key in sorted(set(want) - set(got)):
        failures.append("%s: %s %s is in api.table but not served" % ((what,) + key))
    for key in sorted(set(got) - set(want)):
        failures.append("%s: %s %s is served but not in api.table" % ((what,) + key))
    for key in sorted(set(got) & set(want)):
        fields = {k: got[key][k] for k in want[key]}
        if fields != want[key]:
            failures.append("%s: %s %s is %s, api.table says %s"
                            % (what, key[0], key[1], fields, want[key]))


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))
    import gen_api
    roles, routes = gen_api.parse(sys.argv[2])
    token_roles = [r.name for r in roles if r.grant == "token"]
    failures = []

    want = {(r.method, r.pattern): {"service": r.service, "anonymous": r.anonymous,
                                    "roles": token_roles if r.anonymous else
                                    [n for n in token_roles if n in r.roles]}
            for r in routes if r.routed}
    compare("gateway", routes_of(sys.argv[3]), want, failures)

    served = set()
    for exe in sys.argv[4:]:
        name = os.path.basename(exe)
        served.add(name)
        order = [r.name for r in roles]
        want = {(r.method, r.pattern): {"auth": "optional" if r.anonymous else "required",
                                        "roles": [n for n in order if n in r.roles]}
                for r in routes if r.service == name}
        got = {k: v for k, v in routes_of(exe).items() if k[1].startswith("/v1/")}
        compare(name, got, want, failures)
    for r in routes:
        if r.service != "gateway" and r.service not in served:
            failures.append("no binary given for service %s" % r.service)

    for f in failures:
        print("FAIL " + f)
    print("%d routes, %d services checked, %d failures"
          % (len(routes), len(served), len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
