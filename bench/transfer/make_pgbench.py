#!/usr/bin/env python3
"""Writes the pgbench script of one transfer, from the account service's own
prepared statements (`account --statements` on stdin).

usage: account --statements | make_pgbench.py COUNT > transfer.pgbench

The service runs a transfer as two round trips: the read of both accounts,
then one transaction pipelined as one batch (claim the Idempotency-Key,
lock both rows in id order, move, finish the key). The script runs the
very same statements, with the same parameters, prepared, in the same two
pipelines. pgbench cannot make UUIDs or pick them by number, so one lookup
before them draws the values the service makes in C (account ids, new
transaction, line and event ids, the timestamp): one more round trip than
the service needs, which the report mentions.
"""
import re
import sys

# Which statement, found by its text, and the pgbench variable of each $n.
STATEMENTS = [
    ("precheck", lambda s: s.startswith("SELECT id, customer_id, currency, status, kind FROM accounts"),
     ["src", "dst"]),
    ("claim", lambda s: s.startswith("INSERT INTO claims (scope, key, request_hash, status,"
                                     " response_body, created_at, expires_at) VALUES ($1, $2, $3, 0"),
     ["scope", "key", "hash", "hours"]),
    ("lock", lambda s: "FOR UPDATE" in s and s.startswith("SELECT id FROM accounts"),
     ["src", "dst"]),
    ("move", lambda s: s.startswith("WITH d AS (UPDATE accounts"),
     ["tx", "kind", "src", "dst", "amount", "cur", "scope", "key", "e1", "e2", "ev",
      "topic", "src", "payload", "st_ok", "src", "headers"]),
    ("finish", lambda s: s.startswith("WITH u AS (UPDATE claims"),
     ["scope", "key", "st_fail", "fail_body"]),
]


def colon_in_literal(sql):
    inside = False
    for ch in sql:
        if ch == "'":
            inside = not inside
        elif ch == ":" and inside:
            return True
    return False


def substitute(sql, params):
    """$n -> :variable. pgbench sends each occurrence of a variable as a
    parameter of its own, so an occurrence the server cannot type by its
    place (in the service, one $n is typed by its other occurrences) gets
    the cast written at another occurrence of the same $n, or text when
    none has one and it occurs more than once."""
    casts = dict(re.findall(r"\$(\d+)::([A-Za-z_][A-Za-z_0-9]*)", sql))
    for n in set(re.findall(r"\$(\d+)", sql)):
        if n not in casts and len(re.findall(r"\$%s(?!\d)" % n, sql)) > 1:
            casts[n] = "text"

    def one(m):
        n, has_cast = m.group(1), m.group(2) is not None
        var = ":" + params[int(n) - 1]
        if not has_cast and n in casts:
            return "%s::%s" % (var, casts[n])
        return var + ("::" if has_cast else "")
    return re.sub(r"\$(\d+)(::)?", one, sql)


def main():
    count = int(sys.argv[1])
    found = {}
    for line in sys.stdin:
        _, nparams, sql = line.rstrip("\n").split("\t", 2)
        for name, match, params in STATEMENTS:
            if match(sql):
                if int(nparams) != len(params):
                    sys.exit("make_pgbench.py: %s takes %s parameters, the map has %d"
                             % (name, nparams, len(params)))
                if colon_in_literal(sql):
                    # pgbench would take it for a variable.
                    sys.exit("make_pgbench.py: %s has a ':' in a literal" % name)
                found[name] = substitute(sql, params)
    missing = [n for n, _, _ in STATEMENTS if n not in found]
    if missing:
        sys.exit("make_pgbench.py: statements not found: %s" % ", ".join(missing))
    print("\\set a random(1, %d)" % count)
    print("\\set b random(1, %d)" % (count - 1))
    print("\\set b :b + (case when :b >= :a then 1 else 0 end)")
    print("\\set amount random(1, 100)")
    print("\\set key random(1, 1000000000000000)")
    print("SELECT a.id AS src, b.id AS dst, gen_random_uuid() AS tx, gen_random_uuid() AS e1,"
          " gen_random_uuid() AS e2, gen_random_uuid() AS ev"
          " FROM bench_accounts a, bench_accounts b WHERE a.n = :a AND b.n = :b \\gset")
    print("\\startpipeline")
    print(found["precheck"] + ";")
    print("\\endpipeline")
    print("\\startpipeline")
    for name in ("claim", "lock", "move", "finish"):
        print(found[name] + ";")
    print("\\endpipeline")


if __name__ == "__main__":
    main()
