"""The authentication plugins (docs/plugins/basic_auth.md, key_auth.md, jwt.md,
forward_auth.md) in the real proxy with real sockets: an htpasswd file with hashes made by
`openssl passwd` (apr1, SHA-crypt) and bcrypt fixtures, tokens signed by `openssl`, a JWKS
server and an auth service in Python (threads of this process, on port 0), lp_origin's
/headers telling what reached the upstream. Bad input gets a clear 401 (or 503 for a
service that cannot answer), never a 500; a JWKS endpoint that fails or answers junk keeps
the last good keys and logs; GET /config shows no credential; a reload re-reads the
htpasswd file."""

import base64
import hashlib
import hmac
import http.server
import json
import os
import re
import signal
import subprocess
import threading
import time
import unittest

import harness as H

# bcrypt fixtures, made once with libxcrypt through Python's crypt module (this machine has
# no bcrypt tool): "bcrypt-pass" at cost 10 ($2y$) and at cost 5 ($2b$); and OpenBSD's
# published vector for "U*U" ($2a$).
BCRYPT_2Y = "$2y$10$abcdefghijklmnopqrstuuuTb1taSW3tyVcS0KVY/Unq9g6oOZKYm"
BCRYPT_2B = "$2b$05$ZzSmhvtMSZn/spKO5aT1A.10eesmtqNttzbFbh3Cek15v.3glb3BC"
BCRYPT_2A = "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"
# "slow-pass" at cost 13: about 0.8 s of CPU, to see that the worker serves others meanwhile.
BCRYPT_SLOW = "$2y$13$ABCDEFGHIJKLMNOPQRSTUu4DfmWDLNyMXIe9zvSyJnngRY0aaIUFG"

HMAC_SECRET = "integration-hmac-secret"
API_KEY = "k-7f3a9c"


def openssl(*args, data=None):
    H.require_tool("openssl")
    return subprocess.run(["openssl"] + list(args), input=data, capture_output=True,
                          check=True, timeout=H.T(30)).stdout


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def basic(user, pw):
    return "Basic " + base64.b64encode((user + ":" + pw).encode()).decode()


def der_to_raw(der, size):
    # ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }
    pos = 2 if der[1] < 0x80 else 2 + (der[1] - 0x80)
    out = b""
    for _ in range(2):
        assert der[pos] == 0x02
        n = der[pos + 1]
        v = der[pos + 2:pos + 2 + n].lstrip(b"\0")
        out += b"\0" * (size - len(v)) + v
        pos += 2 + n
    return out


class Keys:
    def __init__(self, d):
        self.dir = d
        self.rsa = os.path.join(d, "rsa.pem")
        self.rsa_pub = os.path.join(d, "rsa.pub.pem")
        self.ec = os.path.join(d, "ec.pem")
        self.ec_pub = os.path.join(d, "ec.pub.pem")
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", self.rsa)
        openssl("pkey", "-in", self.rsa, "-pubout", "-out", self.rsa_pub)
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", self.ec)
        openssl("pkey", "-in", self.ec, "-pubout", "-out", self.ec_pub)

    def token(self, alg, claims, header=None, key=None):
        header = dict(header or {})
        header.setdefault("alg", alg)
        signing = (b64url(json.dumps(header).encode()) + "." +
                   b64url(json.dumps(claims).encode())).encode()
        if alg == "HS256":
            sig = hmac.new((key or HMAC_SECRET).encode(), signing, hashlib.sha256).digest()
        elif alg == "RS256":
            sig = openssl("dgst", "-sha256", "-sign", self.rsa, "-binary", data=signing)
        elif alg == "ES256":
            sig = der_to_raw(openssl("dgst", "-sha256", "-sign", self.ec, "-binary", data=signing), 32)
        else:
            raise ValueError(alg)
        return signing.decode() + "." + b64url(sig)

    def ec_jwk(self, kid):
        der = openssl("pkey", "-pubin", "-in", self.ec_pub, "-outform", "DER")
        pt = der[-64:]
        return {"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                "x": b64url(pt[:32]), "y": b64url(pt[32:])}


class Service:
    """A threaded HTTP server on 127.0.0.1:0 answering with self.handler(request) ->
    (status, headers, body); it counts the requests it saw."""

    def __init__(self, handler):
        self.handler = handler
        self.count = 0
        self.lock = threading.Lock()
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                with outer.lock:
                    outer.count += 1
                    outer.requests.append((self.command, self.path, dict(self.headers)))
                status, headers, body = outer.handler(self)
                if status is None:
                    return  # hang up without answering
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                try:
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the proxy gave up first (forward_auth's timeout): expected

            do_POST = do_GET
            do_DELETE = do_GET

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class TestAuth(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        origin = cls.start_origin()
        cls.keydir = H.Workdir.new("auth-keys")
        cls.keys = Keys(cls.keydir)
        cls.jwks_mode = "good"
        cls.release = threading.Event()

        def jwks(handler):
            mode = cls.jwks_mode
            if mode == "good":
                return 200, [("Content-Type", "application/json")], json.dumps(
                    {"keys": [cls.keys.ec_jwk("ec1")]}).encode()
            if mode == "junk":
                return 200, [("Content-Type", "application/json")], b"<html>not json"
            return 500, [], b"down"

        cls.jwks = Service(jwks)
        cls.addClassCleanup(cls.jwks.stop)

        def auth(handler):
            a = handler.headers.get("Authorization")
            if a == "Bearer good":
                return 200, [("X-User", "ann"), ("X-Groups", "staff")], b""
            if a == "Bearer hang":
                cls.release.wait(H.T(10))  # longer than forward_auth's timeout
                return 200, [], b""
            return 403, [("WWW-Authenticate", 'Bearer realm="svc"'), ("X-Internal", "x")], b"go away\n"

        cls.auth = Service(auth)
        cls.addClassCleanup(cls.auth.stop)
        cls.addClassCleanup(cls.release.set)

        def route(host, plugin):
            return {"match": {"host": host}, "upstream": "o", "plugins": [plugin]}

        routes = [
            route("basic.test", {"name": "basic_auth", "realm": "staff", "htpasswd": "users.htpasswd",
                                 "users": [{"username": "cfg", "password": "cfg-pass"}]}),
            route("slow.test", {"name": "basic_auth", "cache_ttl": 0,
                                "users": [{"username": "slow", "hash": BCRYPT_SLOW}]}),
            route("key.test", {"name": "key_auth", "keys": {API_KEY: "mobile"},
                               "query_names": ["apikey"]}),
            route("jwt.test", {"name": "jwt", "keys": [
                {"kid": "hs", "secret": HMAC_SECRET, "alg": "HS256"},
                {"kid": "rs", "pem_file": cls.keys.rsa_pub}]}),
            route("jwks.test", {"name": "jwt", "jwks_url": "http://127.0.0.1:%d/jwks" % cls.jwks.port,
                                "jwks_refresh": 1, "jwks_timeout": 1}),
            route("jwksdead.test", {"name": "jwt", "jwks_dict": "jwks_dead",
                                    "jwks_url": "http://127.0.0.1:%d/jwks" % H.dead_port(),
                                    "jwks_timeout": 1}),
            route("fa.test", {"name": "forward_auth", "url": "http://127.0.0.1:%d/check" % cls.auth.port,
                              "upstream_headers": ["X-User", "X-Groups"], "consumer_from": "X-User",
                              "timeout": 0.5}),
            route("fadown.test", {"name": "forward_auth", "url": "http://127.0.0.1:%d/check" % H.dead_port()}),
            {"match": {"prefix": "/"}, "upstream": "o"},
        ]
        p = H.Proxy.build({"o": H.upstream(origin.port)}, routes, name="auth", level="info",
                          shared={"jwks": "1m", "jwks_dead": "64k"}, admin={"address": "127.0.0.1:0"})
        cls.addClassCleanup(p.stop)
        cls.htpasswd = os.path.join(p.dir, "users.htpasswd")
        cls.write_htpasswd([
            "apr:" + openssl("passwd", "-apr1", "apr-pass").decode().strip(),
            "sha5:" + openssl("passwd", "-5", "sha5-pass").decode().strip(),
            "sha6:" + openssl("passwd", "-6", "sha6-pass").decode().strip(),
            "b2y:" + BCRYPT_2Y, "b2b:" + BCRYPT_2B, "b2a:" + BCRYPT_2A,
        ])
        cls.proxy = p.start()

    @classmethod
    def write_htpasswd(cls, lines):
        with open(cls.htpasswd, "w") as f:
            f.write("# made by test_auth.py\n" + "\n".join(lines) + "\n")

    def get(self, host, path="/headers", headers=None):
        return H.get(self.proxy.port, path, host=host, headers=headers)

    def upstream_headers(self, r):
        self.assertEqual(r.status, 200, r.body[:300])
        return {k.lower(): v for k, v in r.json()["headers"]}

    # ---- basic_auth ----

    def test_basic_every_hash(self):
        for user, pw in [("apr", "apr-pass"), ("sha5", "sha5-pass"), ("sha6", "sha6-pass"),
                         ("b2y", "bcrypt-pass"), ("b2b", "bcrypt-pass"), ("b2a", "U*U"),
                         ("cfg", "cfg-pass")]:
            r = self.get("basic.test", headers={"Authorization": basic(user, pw), "X-Consumer-Id": "root"})
            h = self.upstream_headers(r)
            self.assertEqual(h["x-consumer-id"], user)
            self.assertNotIn("authorization", h)
            r = self.get("basic.test", headers={"Authorization": basic(user, pw + "!")})
            self.assertEqual(r.status, 401, user)

    def test_basic_bad_input(self):
        cases = [None, "apr:apr-pass", "Basic", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(),
                 "Bearer abc", basic("nobody", "x"), "Basic " + "QUFB" * 2000]
        for a in cases:
            r = self.get("basic.test", headers={"Authorization": a} if a else {})
            self.assertEqual(r.status, 401, a)
            self.assertEqual(r.header("WWW-Authenticate"), 'Basic realm="staff", charset="UTF-8"')
        self.assertAlive()
        self.assertNotIn("apr-pass", self.proxy.stderr())

    def test_basic_bcrypt_is_cached(self):
        # The first request pays bcrypt at cost 10; the next ones are answered from the
        # cache: counted by how, not timed (the proxy has one worker, so one cache).
        auth = {"Authorization": basic("b2y", "bcrypt-pass")}
        self.assertEqual(self.get("basic.test", headers=auth).status, 200)
        hashed, cached = self.checks("hash"), self.checks("cache")
        for _ in range(20):
            self.assertEqual(self.get("basic.test", headers=auth).status, 200)
        self.assertEqual(self.checks("hash"), hashed, "no hash computed again")
        self.assertEqual(self.checks("cache"), cached + 20, "each check answered from the cache")
        # A wrong password is never cached: each one is hashed.
        bad = {"Authorization": basic("b2y", "not-the-password")}
        for _ in range(2):
            self.assertEqual(self.get("basic.test", headers=bad).status, 401)
        self.assertEqual(self.checks("hash"), hashed + 2)

    def checks(self, by):
        text = H.get(self.proxy.admin_port, "/metrics", host="admin").body.decode()
        m = re.search(r'^basic_auth_password_checks_total\{by="%s"\} (\S+)$' % by, text, re.M)
        return float(m.group(1)) if m else 0.0

    def test_basic_bcrypt_does_not_block_the_worker(self):
        # One worker: while it checks a cost-13 bcrypt (on the thread pool), requests of
        # other clients are answered.
        done = threading.Event()
        result = {}

        def slow():
            try:
                result["r"] = self.get("slow.test", headers={"Authorization": basic("slow", "slow-pass")})
            finally:
                done.set()

        th = threading.Thread(target=slow)
        th.start()
        served = 0
        # A blocked worker would answer at most the one request queued behind the check
        # before it ends; three answered while it runs show it was not blocked (no timing).
        while not done.is_set():
            self.assertEqual(self.get("plain.test", path="/").status, 200)
            if not done.is_set():
                served += 1
        th.join(H.T(30))
        self.assertEqual(result["r"].status, 200)
        self.assertGreaterEqual(served, 3, "requests answered during the bcrypt check")

    def test_basic_htpasswd_reloads(self):
        self.assertEqual(self.get("basic.test", headers={"Authorization": basic("new", "new-pass")}).status, 401)
        with open(self.htpasswd) as f:
            old = f.read()
        try:
            with open(self.htpasswd, "a") as f:
                f.write("new:" + openssl("passwd", "-apr1", "new-pass").decode())
            n = self.proxy.stderr().count("live in")
            self.proxy.signal(signal.SIGHUP)
            H.wait_for(lambda: self.proxy.stderr().count("live in") > n, H.T(10), what="reload")
            r = self.get("basic.test", headers={"Authorization": basic("new", "new-pass")})
            self.assertEqual(self.upstream_headers(r)["x-consumer-id"], "new")
        finally:
            with open(self.htpasswd, "w") as f:
                f.write(old)
            n = self.proxy.stderr().count("live in")
            self.proxy.signal(signal.SIGHUP)
            H.wait_for(lambda: self.proxy.stderr().count("live in") > n, H.T(10), what="reload")

    # ---- key_auth ----

    def test_key_header_and_query(self):
        h = self.upstream_headers(self.get("key.test", headers={"X-Api-Key": API_KEY}))
        self.assertEqual(h["x-consumer-id"], "mobile")
        self.assertNotIn("x-api-key", h)
        r = self.get("key.test", path="/headers?a=1&apikey=" + API_KEY)
        self.upstream_headers(r)
        self.assertEqual(r.json()["url"], "/headers?a=1")
        for headers in [{}, {"X-Api-Key": "wrong"}, {"X-Api-Key": "k" * 4000}]:
            r = self.get("key.test", headers=headers)
            self.assertEqual(r.status, 401)
            self.assertEqual(r.header("WWW-Authenticate"), 'Key realm="luaproxy"')

    # ---- jwt ----

    def bearer(self, tok):
        return {"Authorization": "Bearer " + tok}

    def test_jwt_hs256_and_rs256(self):
        now = int(time.time())
        for alg, kid in [("HS256", "hs"), ("RS256", "rs")]:
            tok = self.keys.token(alg, {"sub": "ann", "exp": now + 60}, {"kid": kid})
            h = self.upstream_headers(self.get("jwt.test", headers=self.bearer(tok)))
            self.assertEqual(h["x-consumer-id"], "ann")
            self.assertNotIn("authorization", h)

    def assert_invalid(self, host, tok, desc):
        r = self.get(host, headers=self.bearer(tok))
        self.assertEqual(r.status, 401, (desc, r.body))
        self.assertEqual(r.header("WWW-Authenticate"),
                         'Bearer realm="luaproxy", error="invalid_token", error_description="%s"' % desc)

    def test_jwt_bad_tokens(self):
        now = int(time.time())
        good = self.keys.token("HS256", {"sub": "a", "exp": now + 60}, {"kid": "hs"})
        h, p, s = good.split(".")
        self.assert_invalid("jwt.test", self.keys.token("HS256", {"sub": "a", "exp": now - 5}, {"kid": "hs"}),
                            "token expired")
        self.assert_invalid("jwt.test", b64url(b'{"alg":"none"}') + "." + p + ".", "algorithm not supported")
        self.assert_invalid("jwt.test", h + "." + p, "not three segments")
        self.assert_invalid("jwt.test", "%%%." + p + "." + s, "bad base64url in the header")
        self.assert_invalid("jwt.test", b64url(b"{junk") + "." + p + "." + s, "the header is not a JSON object")
        self.assert_invalid("jwt.test", h + "." + p + "." + s[:-2] + ("AA" if s[-2:] != "AA" else "BB"),
                            "bad signature")
        self.assert_invalid("jwt.test", "a" * 9000, "token too large")
        # The RSA public key (PEM text) as an HMAC secret, with the RSA key's kid.
        with open(self.keys.rsa_pub) as f:
            pem = f.read()
        self.assert_invalid("jwt.test", self.keys.token("HS256", {"sub": "a"}, {"kid": "rs"}, key=pem),
                            "algorithm HS256 not allowed for the key")
        r = self.get("jwt.test")
        self.assertEqual(r.status, 401)
        self.assertEqual(r.header("WWW-Authenticate"), 'Bearer realm="luaproxy"')
        self.assertAlive()

    def test_jwks_down_or_junk_keeps_the_last_good_keys(self):
        tok = self.keys.token("ES256", {"sub": "ec-user", "exp": int(time.time()) + 600}, {"kid": "ec1"})
        type(self).jwks_mode = "good"
        h = self.upstream_headers(self.get("jwks.test", headers=self.bearer(tok)))
        self.assertEqual(h["x-consumer-id"], "ec-user")
        try:
            for mode, logged in [("junk", "not a JWKS"), ("down", "status 500")]:
                type(self).jwks_mode = mode
                n = self.jwks.count
                # The refresh timer (1 s) fetches again: wait for the fetch and its log line.
                H.wait_for(lambda: self.jwks.count > n + 1, H.T(10), what="a JWKS refresh")
                H.wait_for(lambda: "keeping the last good keys" in self.proxy.stderr()
                           and logged in self.proxy.stderr(), H.T(10), what="the JWKS warning")
                h = self.upstream_headers(self.get("jwks.test", headers=self.bearer(tok)))
                self.assertEqual(h["x-consumer-id"], "ec-user")
            # The worker was never blocked: other routes answer at once meanwhile.
            t0 = time.monotonic()
            self.assertEqual(self.get("plain.test", path="/").status, 200)
            self.assertLess(time.monotonic() - t0, H.T(1))
        finally:
            type(self).jwks_mode = "good"

    def test_jwks_never_reachable(self):
        tok = self.keys.token("ES256", {"sub": "x", "exp": int(time.time()) + 600}, {"kid": "ec1"})
        self.assert_invalid("jwksdead.test", tok, "no keys")
        H.wait_for(lambda: "no keys yet" in self.proxy.stderr(), H.T(10), what="the JWKS warning")
        self.assertAlive()

    # ---- forward_auth ----

    def test_forward_auth(self):
        r = self.get("fa.test", path="/headers?q=1",
                     headers={"Authorization": "Bearer good", "X-User": "root"})
        h = self.upstream_headers(r)
        self.assertEqual(h["x-user"], "ann")
        self.assertEqual(h["x-groups"], "staff")
        self.assertEqual(h["x-consumer-id"], "ann")
        self.assertNotIn("authorization", h)
        sent = self.auth.requests[-1][2]
        self.assertEqual(sent["X-Forwarded-Method"], "GET")
        self.assertEqual(sent["X-Forwarded-Uri"], "/headers?q=1")
        self.assertEqual(sent["X-Forwarded-Host"], "fa.test")
        r = self.get("fa.test", headers={"Authorization": "Bearer bad"})
        self.assertEqual(r.status, 403)
        self.assertEqual(r.body, b"go away\n")
        self.assertEqual(r.header("WWW-Authenticate"), 'Bearer realm="svc"')
        self.assertIsNone(r.header("X-Internal"))

    def test_forward_auth_down_or_slow_is_503(self):
        self.assertEqual(self.get("fadown.test").status, 503)
        t0 = time.monotonic()
        r = self.get("fa.test", headers={"Authorization": "Bearer hang"})
        self.assertEqual(r.status, 503)
        self.assertLess(time.monotonic() - t0, H.T(5))
        self.assertAlive()

    # ---- secrets ----

    def test_config_shows_no_credential(self):
        r = H.get(self.proxy.admin_port, "/config", host="admin")
        self.assertEqual(r.status, 200)
        for secret in [b"cfg-pass", API_KEY.encode(), HMAC_SECRET.encode()]:
            self.assertNotIn(secret, r.body)
        plugin = {rt["match"].get("host"): rt.get("plugins", [None])[0]
                  for rt in r.json()["config"]["routes"]}
        self.assertEqual(plugin["basic.test"]["users"], "<redacted>")
        self.assertEqual(plugin["key.test"]["keys"], "<redacted>")
        self.assertEqual(plugin["jwt.test"]["keys"], "<redacted>")
        self.assertEqual(plugin["jwt.test"]["name"], "jwt")
        # and the log has none either
        err = self.proxy.stderr()
        for secret in ["cfg-pass", API_KEY, HMAC_SECRET, "bcrypt-pass"]:
            self.assertNotIn(secret, err)


if __name__ == "__main__":
    H.main()
