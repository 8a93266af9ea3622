#!/usr/bin/env python3
"""The API's contract and its checker.

    test_contract.py GATEWAY CERTS_SH

Checks: the document is OpenAPI 3.1 with every route of the gateway's table
(gateway --routes) and nothing else under /v1 but itself; every schema is
valid Draft 2020-12; the checker (tests/integration/lib/contract.py) passes
a good exchange and fails an undocumented field, an unknown route, an
undocumented status and a missing X-Request-Id; and a running gateway
serves GET /v1/openapi.json, without a token, byte for byte the file.
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest as t  # noqa: E402
import contract  # noqa: E402

ACCOUNT = {"id": "0190c0de-0000-7000-8000-0000000000a1",
           "customer_id": "0190c0de-0000-7000-8000-00000000a11c", "currency": "EUR",
           "balance": 100, "held": 0, "overdraft_limit": 0, "status": "open",
           "created_at": "2024-01-01T00:00:00.000Z"}
JSON = {"content-type": "application/json", "x-request-id": "r1"}


def check_document(c, binary):
    doc = c.doc
    t.check("the document is OpenAPI 3.1", doc.get("openapi", "").startswith("3.1"))
    for name, schema in doc["components"]["schemas"].items():
        try:
            c.errors(schema, None)  # builds the validator: a bad schema raises
            import jsonschema
            jsonschema.Draft202012Validator.check_schema(schema)
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            t.check("schema %s is valid Draft 2020-12" % name, False, repr(e))
    routes = [json.loads(line) for line in subprocess.run(
        [binary, "--routes"], capture_output=True, text=True, timeout=10).stdout.splitlines()]
    table = {(r["method"].lower(), r["pattern"]) for r in routes}
    documented = {(m, p) for p, item in doc["paths"].items() for m in item
                  if m in contract.METHODS and p.startswith("/v1/")}
    t.check("every route of the gateway's table is documented (%d)" % len(table),
            table and table <= documented, sorted(table - documented))
    t.check("nothing under /v1 is documented that the gateway does not route",
            documented - table == {("get", "/v1/openapi.json")}, sorted(documented - table))
    codes = doc["components"]["schemas"]["ErrorCode"]["enum"]
    t.check("the error codes are listed (%d)" % len(codes), len(codes) >= 40)


def check_checker(c):
    good = c.check("GET", "/v1/accounts/%s" % ACCOUNT["id"], 200, {}, None, JSON,
                   json.dumps(ACCOUNT))
    t.check("a documented exchange passes", good == [], good)
    extra = dict(ACCOUNT, secret="x")
    bad = c.check("GET", "/v1/accounts/%s" % ACCOUNT["id"], 200, {}, None, JSON, json.dumps(extra))
    t.check("an undocumented response field fails", any("secret" in m for m in bad), bad)
    bad = c.check("GET", "/v1/accounts?flavour=1", 200, {}, None, JSON,
                  json.dumps({"items": [ACCOUNT], "next_cursor": None}))
    t.check("an undocumented query parameter answered 200 fails", any("flavour" in m for m in bad), bad)
    bad = c.check("POST", "/v1/accounts", 201, {}, json.dumps({"currency": "EUR", "colour": "red"}),
                  JSON, json.dumps(ACCOUNT))
    t.check("an undocumented request field accepted with 201 fails", any("colour" in m for m in bad), bad)
    refused = c.check("POST", "/v1/accounts", 400, {}, json.dumps({"currency": "EUR", "colour": "red"}),
                      JSON, json.dumps({"error": {"code": "unknown_field", "message": "unknown field"}}))
    t.check("the same request refused with 400 passes", refused == [], refused)
    bad = c.check("GET", "/v1/nope", 200, {}, None, JSON, "{}")
    t.check("an unknown route answered 200 fails", any("not in the document" in m for m in bad), bad)
    gone = c.check("GET", "/v1/nope", 404, {}, None, JSON,
                   json.dumps({"error": {"code": "not_found", "message": "no such route"}}))
    t.check("an unknown route answered 404 in the error shape passes", gone == [], gone)
    bad = c.check("GET", "/v1/accounts/%s" % ACCOUNT["id"], 418, {}, None, JSON, "{}")
    t.check("an undocumented status fails", any("418" in m for m in bad), bad)
    bad = c.check("GET", "/v1/accounts/%s" % ACCOUNT["id"], 404, {}, None, JSON,
                  json.dumps({"error": {"code": "no_such_code", "message": "m"}}))
    t.check("an error code not in the list fails", any("no_such_code" in m for m in bad), bad)
    bad = c.check("GET", "/v1/accounts/%s" % ACCOUNT["id"], 200, {}, None,
                  {"content-type": "application/json"}, json.dumps(ACCOUNT))
    t.check("a missing X-Request-Id fails", any("X-Request-Id" in m for m in bad), bad)
    bad = c.check("GET", "/v1/accounts", 429, {}, None, JSON,
                  json.dumps({"error": {"code": "rate_limited", "message": "m"}}))
    t.check("a 429 without Retry-After fails", any("Retry-After" in m for m in bad), bad)
    bad = c.check("POST", "/v1/payments", 202, {}, json.dumps({
        "from_account_id": ACCOUNT["id"], "to_account_id": ACCOUNT["customer_id"], "amount": 1,
        "currency": "EUR"}), JSON, "{}")
    t.check("a payment accepted without Idempotency-Key fails",
            any("Idempotency-Key" in m for m in bad), bad)


def check_served(binary, certs_sh):
    certs = t.make_certs(certs_sh, kids=("k1",))
    inspector = t.Inspector()
    gw = t.Gateway(binary, certs, inspector.url, name="gateway-contract")
    if not t.check("gateway starts", gw.ok):
        return
    st, h, data = gw.request("GET", "/v1/openapi.json")
    with open(contract.DOCUMENT, "rb") as f:
        want = f.read()
    t.check("GET /v1/openapi.json without a token: 200, application/json",
            st == 200 and h.get("content-type", "").startswith("application/json"), (st, h))
    t.check("the served document is the file, byte for byte (%d bytes)" % len(want), data == want,
            "%d bytes served" % len(data))
    st, _, _ = gw.request("POST", "/v1/openapi.json")
    t.check("POST /v1/openapi.json: 405", st == 405, st)
    t.check("SIGTERM: gateway exits 0", gw.stop() == 0)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    binary, certs_sh = sys.argv[1:3]
    t.watchdog(120)
    c = contract.Contract()
    check_document(c, binary)
    check_checker(c)
    check_served(binary, certs_sh)
    t.finish()


if __name__ == "__main__":
    main()
