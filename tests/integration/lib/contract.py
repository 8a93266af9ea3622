"""contract.py - every exchange with the gateway checked against the API's
contract, gateway/openapi.json (OpenAPI 3.1, schemas in JSON Schema 2020-12).

A test hands each exchange it made to Contract.record(); at the end,
Contract.problems lists what broke the contract, and the test fails when
the list is not empty. What counts as broken:

- a path under /v1 that the document does not have, or a method a
  documented path does not take, answered with anything but the documented
  404 / 405 error (a route the gateway serves must be in the document);
- a status the operation does not list;
- a response body that its schema refuses (objects are closed with
  additionalProperties: false, so an undocumented field is refused), or a
  required response header (X-Request-Id; Retry-After on 429; Allow on 405)
  that is missing or malformed;
- a request the document refuses (body, query parameter, required header)
  that was answered with success: what the server takes must be written down.
  A refused request answered 4xx is a test of the refusal, not a breach.

Paths outside /v1 that the document does not name (routes a test adds to
the gateway with GW_EXTRA_ROUTES) are not part of the contract and are only
counted. An answer relayed from a stand-in service (X-Service: inspector,
which takes any request and answers 200) is checked for its route only;
what the gateway itself answers on the way there (401, 403, 429, ...) is
checked in full.

Validation is python3-jsonschema (Debian), Draft 2020-12.
"""
import json
import os
import re
from urllib.parse import parse_qsl, urlsplit

try:
    import jsonschema
except ImportError:  # pragma: no cover - reported by the test that uses it
    jsonschema = None

DOCUMENT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                         "..", "..", "..", "gateway", "openapi.json"))
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
PROBLEMS_KEPT = 50


def _template_re(template):
    """A path template as a regular expression: {name} is one segment."""
    parts = re.split(r"(\{[^}/]+\})", template)
    return re.compile("^" + "".join("[^/]+" if p.startswith("{") else re.escape(p)
                                    for p in parts) + "$")


class Contract:
    def __init__(self, path=DOCUMENT):
        if jsonschema is None:
            raise RuntimeError("python3-jsonschema is not installed (deploy/dev installs it)")
        with open(path, encoding="utf-8") as f:
            self.doc = json.load(f)
        self.path = path
        # Literal templates before templated ones, as the gateway's router
        # prefers them: /v1/dead-letters/redrive is not /v1/dead-letters/{id}/...
        self.templates = sorted(((t, _template_re(t)) for t in self.doc["paths"]),
                                key=lambda tr: (tr[0].count("{"), tr[0]))
        self.checked = 0
        self.outside = 0
        self.problems = []

    # -- the document -------------------------------------------------------

    def resolve(self, node):
        """Follows a local $ref (#/a/b) to what it names."""
        seen = 0
        while isinstance(node, dict) and "$ref" in node and seen < 16:
            ptr = node["$ref"]
            if not ptr.startswith("#/"):
                raise ValueError("only local references: " + ptr)
            node = self.doc
            for part in ptr[2:].split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            seen += 1
        return node

    def find(self, method, path):
        """(template, operation or None) for a request path; (None, None)
        when no template matches."""
        path = urlsplit(path).path
        for template, rx in self.templates:
            if rx.match(path):
                return template, self.doc["paths"][template].get(method.lower())
        return None, None

    def errors(self, schema, value):
        """Messages of every way value breaks schema ($refs resolved within
        the document): the schema is validated as part of a root that holds
        the document's components."""
        root = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                "components": self.doc.get("components", {}), "allOf": [schema]}
        v = jsonschema.Draft202012Validator(root)
        return ["%s: %s" % ("/".join(str(p) for p in e.absolute_path) or "(body)", e.message)
                for e in v.iter_errors(value)]

    # -- one exchange -------------------------------------------------------

    def check(self, method, path, status, req_headers=None, req_body=None, resp_headers=None,
              resp_body=None):
        """Every way the exchange breaks the contract, as messages (empty:
        kept). Headers are dicts (any case); bodies bytes, str or None."""
        req_headers = {k.lower(): v for k, v in (req_headers or {}).items()}
        resp_headers = {k.lower(): v for k, v in (resp_headers or {}).items()}
        template, operation = self.find(method, path)
        if template is None or operation is None:
            return self._unknown(method, path, template, status, resp_headers, resp_body)
        if resp_headers.get("x-service") == "inspector":
            return []  # a stand-in answers anything: only the route is the contract's
        out = []
        ok = 200 <= status < 300
        responses = operation.get("responses", {})
        if str(status) not in responses:
            out.append("status %d is not documented for %s %s" % (status, method, template))
        else:
            out += self._response(self.resolve(responses[str(status)]), resp_headers, resp_body)
        if ok:
            out += ["request " + m for m in self._request(operation, path, req_headers, req_body)]
        return out

    def record(self, method, path, status, req_headers=None, req_body=None, resp_headers=None,
               resp_body=None):
        """check(), counted; problems kept in self.problems."""
        template, _ = self.find(method, path)
        if template is None and not urlsplit(path).path.startswith("/v1"):
            self.outside += 1
            return []
        self.checked += 1
        found = self.check(method, path, status, req_headers, req_body, resp_headers, resp_body)
        for m in found:
            if len(self.problems) < PROBLEMS_KEPT:
                self.problems.append("%s %s -> %d: %s" % (method, path[:120], status, m))
        return found

    def summary(self):
        return "%d exchanges checked against %s (%d outside the contract): %d problems" % (
            self.checked, os.path.basename(self.path), self.outside, len(self.problems))

    # -- parts --------------------------------------------------------------

    def _unknown(self, method, path, template, status, resp_headers, resp_body):
        """A route the document lacks is answered 404 (no such path) or 405
        (a documented path, another method), in the error shape."""
        want = 405 if template is not None else 404
        if status != want:
            what = "%s %s" % (method, template or urlsplit(path).path)
            return ["route %s is not in the document (answered %d)" % (what, status)]
        name = "MethodNotAllowed" if want == 405 else "NoRoute"
        return self._response(self.doc["components"]["responses"][name], resp_headers, resp_body)

    def _response(self, response, headers, body):
        out = []
        for name, h in response.get("headers", {}).items():
            h = self.resolve(h)
            value = headers.get(name.lower())
            if value is None:
                if h.get("required"):
                    out.append("response header %s missing" % name)
                continue
            out += ["response header %s: %s" % (name, m) for m in self.errors(h["schema"], value)]
        content = response.get("content")
        if not content:
            if body:
                out.append("a body where the document has none")
            return out
        ctype = (headers.get("content-type") or "").split(";")[0].strip()
        media = content.get(ctype)
        if media is None:
            return out + ["content type %r is not documented (%s)" % (ctype, ", ".join(content))]
        try:
            value = json.loads(body if body else b"")
        except ValueError:
            return out + ["response body is not JSON"]
        return out + ["response " + m for m in self.errors(media.get("schema", {}), value)]

    def _request(self, operation, path, headers, body):
        out = []
        params = [self.resolve(p) for p in operation.get("parameters", [])]
        query = [p for p in params if p["in"] == "query"]
        names = {p["name"] for p in query}
        given = parse_qsl(urlsplit(path).query, keep_blank_values=True)
        for name, value in given:
            if name not in names:
                out.append("query parameter %r is not documented" % name)
        values = dict(given)
        for p in query:
            if p["name"] in values:
                out += ["query %s: %s" % (p["name"], m)
                        for m in self.errors(p.get("schema", {}), values[p["name"]])]
            elif p.get("required"):
                out.append("query parameter %s missing" % p["name"])
        for p in params:
            if p["in"] == "header" and p.get("required") and p["name"].lower() not in headers:
                out.append("header %s missing" % p["name"])
        rb = self.resolve(operation.get("requestBody", {})) if "requestBody" in operation else None
        if rb is None:
            if body:
                out.append("a body where the document takes none")
            return out
        if not body:
            if rb.get("required"):
                out.append("body missing")
            return out
        try:
            value = json.loads(body)
        except ValueError:
            return out + ["body is not JSON"]
        schema = rb.get("content", {}).get("application/json", {}).get("schema", {})
        return out + ["body " + m for m in self.errors(schema, value)]
