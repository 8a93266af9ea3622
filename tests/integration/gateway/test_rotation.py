#!/usr/bin/env python3
"""JWT key and TLS certificate rotation without a restart, under load.

    test_rotation.py GATEWAY CERTS_SH

A gateway signs with k1. Clients call it all along on keep-alive
connections opened before the first reload, with a k1 token and then with
the newest token they got. Then:

  1. a new key k2 is added to the key directory, SIGHUP: new tokens carry
     kid k2, the k1 token still passes, the JWKS shows both, and no request
     failed and no connection was dropped;
  2. a broken key file is added, SIGHUP: the reload is refused, the keys in
     use stay and every token still passes; the file is removed;
  3. k1 is removed, SIGHUP: the k1 token gets 401 at once (even the one
     its cache had verified), the k2 token passes, the JWKS shows only k2;
  4. a new TLS certificate is written over the old file with the old key
     left: the pair does not match, SIGHUP refuses it and the old
     certificate is still served; then the new key too, SIGHUP: new
     handshakes get the new certificate, while the keep-alive connections
     opened before go on (every request 200, none dropped).
"""
import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest as t  # noqa: E402

EMAIL, PASSWORD = "alice@example.com", "correct horse battery"


def login(gw):
    st, _, data = gw.request("POST", "/v1/auth/token", {"Content-Type": "application/json"},
                             json.dumps({"email": EMAIL, "password": PASSWORD}))
    return json.loads(data)["access_token"] if st == 200 else None


def kid_of(token):
    head = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))).get("kid")


def jwks_kids(gw):
    st, _, data = gw.request("GET", "/.well-known/jwks.json")
    return sorted(k["kid"] for k in json.loads(data)["keys"]) if st == 200 else None


def status(gw, token, conn=None):
    return gw.request("GET", "/v1/accounts", {"Authorization": "Bearer " + token}, conn=conn)[0]


class Load:
    """Clients on connections opened once: every answer counted by status,
    every transport error counted apart."""

    def __init__(self, gw, token, clients=3):
        self.gw, self.token = gw, token
        self.lock = threading.Lock()
        self.statuses, self.errors = {}, []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run) for _ in range(clients)]
        for th in self.threads:
            th.start()

    def run(self):
        conn = self.gw.connection()
        while not self.stop.is_set():
            try:
                s = status(self.gw, self.token, conn)
            except Exception as e:  # noqa: BLE001 - a dropped connection is the finding
                with self.lock:
                    self.errors.append(repr(e))
                conn = self.gw.connection()
                continue
            with self.lock:
                self.statuses[s] = self.statuses.get(s, 0) + 1
            time.sleep(0.005)
        conn.close()

    def finish(self):
        self.stop.set()
        for th in self.threads:
            th.join(30)
        return dict(self.statuses), list(self.errors)


def new_key(jwt_dir, kid):
    priv = os.path.join(jwt_dir, kid + ".pem")
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", priv], check=True, capture_output=True, timeout=30)
    subprocess.run(["openssl", "pkey", "-in", priv, "-pubout", "-out",
                    os.path.join(jwt_dir, kid + ".pub.pem")], check=True, capture_output=True,
                   timeout=30)


def reloads(gw, word):
    with open(gw.log, errors="replace") as f:
        return f.read().count(word)


def sighup(gw, word, before):
    gw.proc.send_signal(signal.SIGHUP)
    return t.wait_for(lambda: reloads(gw, word) > before, 10)


def served_cert(gw):
    """SHA-256 of the certificate a new full handshake gets (not checked)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def file_cert(path):
    with open(path) as f:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()


def replace(src, dst):
    """dst's content becomes src's, by rename (a reader never sees half)."""
    tmp = dst + ".new"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    binary, certs_sh = sys.argv[1:3]
    t.need("openssl")
    t.watchdog(150)
    certs = t.make_certs(certs_sh, kids=("k1",))
    jwt_dir = os.path.join(certs, "jwt")
    inspector = t.Inspector()
    gw = t.Gateway(binary, certs, inspector.url, name="gateway-rotation")
    if not t.check("gateway starts with k1", gw.ok and
                   t.wait_for(lambda: gw.admin("/readyz")[0] == 200, 10)):
        t.finish()
    old = login(gw)
    t.check("a token is issued with kid k1", old is not None and kid_of(old) == "k1")
    load = Load(gw, old)
    time.sleep(0.5)

    # 1. A new key.
    new_key(jwt_dir, "k2")
    ok = sighup(gw, "JWT keys reloaded", reloads(gw, "JWT keys reloaded"))
    t.check("SIGHUP: the keys are reloaded (log line)", ok)
    t.check("the gateway is still the same process", gw.proc.poll() is None)
    fresh = login(gw)
    t.check("new tokens carry the new kid k2", fresh is not None and kid_of(fresh) == "k2",
            fresh and kid_of(fresh))
    t.check("the k1 token still passes", status(gw, old) == 200)
    t.check("the k2 token passes", fresh is not None and status(gw, fresh) == 200)
    t.check("the JWKS shows k1 and k2", jwks_kids(gw) == ["k1", "k2"], jwks_kids(gw))
    time.sleep(0.5)
    statuses, errors = load.finish()
    t.check("under load through the reload: every request 200, none dropped (%s)" % statuses,
            set(statuses) == {200} and sum(statuses.values()) > 20 and not errors,
            "%s %s" % (statuses, errors[:3]))

    # 2. A broken key file: refused, nothing changes.
    load = Load(gw, fresh)
    bad = os.path.join(jwt_dir, "k3.pub.pem")
    with open(bad, "w") as f:
        f.write("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    ok = sighup(gw, "the keys were not reloaded", reloads(gw, "the keys were not reloaded"))
    t.check("a broken key file: the reload is refused (log line)", ok)
    t.check("... and both tokens still pass", status(gw, old) == 200 and status(gw, fresh) == 200)
    os.remove(bad)

    # 3. The old key removed.
    os.remove(os.path.join(jwt_dir, "k1.pem"))
    os.remove(os.path.join(jwt_dir, "k1.pub.pem"))
    ok = sighup(gw, "JWT keys reloaded", reloads(gw, "JWT keys reloaded"))
    t.check("SIGHUP after removing k1: reloaded", ok)
    st = gw.request("GET", "/v1/accounts", {"Authorization": "Bearer " + old})
    t.check("the k1 token now gets 401 invalid_token, though it was verified and cached",
            st[0] == 401 and json.loads(st[2])["error"]["code"] == "invalid_token", st[0])
    t.check("the k2 token passes", status(gw, fresh) == 200)
    t.check("the JWKS shows only k2", jwks_kids(gw) == ["k2"], jwks_kids(gw))
    statuses, errors = load.finish()
    t.check("the k2 clients through both reloads: every request 200, none dropped (%s)"
            % statuses, set(statuses) == {200} and not errors, "%s %s" % (statuses, errors[:3]))

    # 4. A new TLS certificate and key over the old files.
    crt, key = gw.ca, gw.ca[:-len(".crt")] + ".key"
    old_cert = served_cert(gw)
    t.check("the certificate served is the file's", old_cert == file_cert(crt))
    other = os.path.join(os.path.dirname(certs), "certs-next")
    subprocess.run(["bash", certs_sh, "--kid", "k9", other], check=True,
                   stderr=subprocess.DEVNULL, timeout=60)
    next_crt = os.path.join(other, os.path.basename(crt))
    next_key = os.path.join(other, os.path.basename(key))
    load = Load(gw, fresh)
    time.sleep(0.3)
    replace(next_crt, crt)
    ok = sighup(gw, "TLS certificate was not reloaded", reloads(gw, "TLS certificate was not reloaded"))
    t.check("a certificate that does not match the key: the reload is refused (log line)", ok)
    t.check("... and the old certificate is still served", served_cert(gw) == old_cert)
    replace(next_key, key)
    ok = sighup(gw, "TLS certificate reloaded", reloads(gw, "TLS certificate reloaded"))
    t.check("SIGHUP with the new pair: the certificate is reloaded (log line)", ok)
    now = served_cert(gw)
    t.check("new handshakes get the new certificate", now == file_cert(next_crt) and now != old_cert)
    t.check("a verified request over a new connection (the new certificate as CA) passes",
            status(gw, fresh) == 200)
    statuses, errors = load.finish()
    t.check("clients on connections opened before the new certificate: every request 200,"
            " none dropped (%s)" % statuses, set(statuses) == {200} and not errors,
            "%s %s" % (statuses, errors[:3]))
    t.check("SIGTERM: exit status 0", gw.stop() == 0)
    t.finish()


if __name__ == "__main__":
    main()
