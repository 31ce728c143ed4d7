#!/usr/bin/env python3
"""The example configs in scripts/ do what their comments promise, against three
demo-like origins (web, api-1, api-2) on free ports: each example is copied with its
ports rewritten (9001-9003 for the origins, 8080 for the proxy) and served; `luaproxy -t`
accepts the originals as shipped."""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua"))
import luatest as L  # noqa: E402
from luatest import H  # noqa: E402

EXAMPLES = ["path-routing", "canary", "tester-routing", "maintenance", "routing-script",
            "redis-rate-limit", "cache"]  # redis-rate-limit runs in test_lua_redis.py


def fnv1a(s):
    h = 2166136261
    for ch in s.encode():
        h ^= ch
        h = (h * 16777619) & 0xFFFFFFFF
    return h


class ExampleProxy(H.Proxy):
    """A luaproxy serving a copy of scripts/NAME.lua with the ports rewritten."""

    def __init__(self, name, ports, listeners=1):
        H.require_proxy()
        self.example = name
        self.dir = H.Workdir.new("example-" + name)
        self.config_path = os.path.join(self.dir, name + ".lua")
        self.stdout_path = os.path.join(self.dir, "stdout")
        self.stderr_path = os.path.join(self.dir, "stderr")
        self.proc = None
        self.returncode = None
        self.args = []
        self.env = None
        # The example's listeners move to port 0; wait_ready() reads the bound ports.
        self.cfg = {"log": {"access": "-"},
                    "listen": [{"address": "127.0.0.1:0"} for _ in range(listeners)]}
        self._ports_from_config()
        with open(os.path.join(L.SCRIPTS, name + ".lua")) as f:
            text = f.read()
        for demo, port in ports.items():
            text = text.replace("127.0.0.1:%d" % demo, "127.0.0.1:%d" % port)
        text = text.replace("127.0.0.1:8080", "127.0.0.1:0")
        text = text.replace("127.0.0.1:9901", "127.0.0.1:0")  # an admin API, if any
        self.text = text

    def write_config(self):
        with open(self.config_path, "w") as f:
            f.write(self.text)


class ExampleTestCase(L.LuaTestCase):
    EXAMPLE = None

    @classmethod
    def setUpClass(cls):
        cls.web = cls.start_origin("web")
        cls.api1 = cls.start_origin("api-1")
        cls.api2 = cls.start_origin("api-2")
        ports = {9001: cls.web.port, 9002: cls.api1.port, 9003: cls.api2.port}
        p = ExampleProxy(cls.EXAMPLE, ports)
        for demo in ports:
            assert ":%d" % demo not in p.text, "a demo port was not rewritten"
        cls.addClassCleanup(p.stop)
        cls.proxy = p.start()

    def origin(self, r):
        return r.header("X-Origin-Id")


class ExamplesCheckTest(L.LuaTestCase):
    def test_shipped_examples_pass_check(self):
        for name in EXAMPLES:
            with self.subTest(example=name):
                rc, out, err, path = L.check_config(os.path.join(L.SCRIPTS, name + ".lua"))
                self.assertEqual(rc, 0, err)

    def test_examples_are_commented(self):
        # "heavily commented for users starting from it": the file opens with a comment
        # block naming itself, and has a fair share of comment lines
        for name in EXAMPLES + ["lib/pick_backend"]:
            with self.subTest(example=name):
                with open(os.path.join(L.SCRIPTS, name + ".lua")) as f:
                    lines = f.read().splitlines()
                self.assertTrue(lines[0].startswith("-- " + os.path.basename(name)) or
                                lines[0].startswith("-- " + name), lines[0])
                comments = sum(1 for l in lines if l.strip().startswith("--"))
                self.assertGreater(comments, len(lines) // 4)


class PathRoutingExample(ExampleTestCase):
    EXAMPLE = "path-routing"

    def test_web_by_default(self):
        for p in ("/", "/headers", "/apix", "/api"):
            with self.subTest(path=p):
                self.assertEqual(self.origin(self.get(p)), "web")

    def test_api_prefix_stripped(self):
        r = self.get("/api/fixed?size=3")
        self.assertEqual((r.status, r.body), (200, b"xxx"))
        self.assertIn(self.origin(r), ("api-1", "api-2"))
        r = self.get("/api/headers?y=1")
        self.assertEqual(r.json()["url"], "/headers?y=1")

    def test_api_targets_take_turns(self):
        seen = set()
        with H.Client(self.proxy.port) as c:
            for _ in range(8):
                seen.add(self.origin(c.request("GET", "/api/")))
        self.assertEqual(seen, {"api-1", "api-2"})

    def test_old_api_rewrite(self):
        r = self.get("/old-api/headers?q=2")
        self.assertIn(self.origin(r), ("api-1", "api-2"))
        self.assertEqual(r.json()["url"], "/headers?q=2")


class CanaryExample(ExampleTestCase):
    EXAMPLE = "canary"

    def cookie(self, r):
        for v in r.header_all("Set-Cookie"):
            if v.startswith("release="):
                return v
        return None

    def test_about_ten_percent_to_canary(self):
        counts = {"api-1": 0, "api-2": 0}
        for _ in range(400):
            r = self.get("/")
            self.assertEqual(r.status, 200)
            counts[self.origin(r)] += 1
        # 10% of 400 = 40; generous bounds (5%..20%)
        self.assertTrue(20 <= counts["api-2"] <= 80, counts)

    def test_first_visit_sets_cookie_and_arm_header(self):
        r = self.get("/")
        arm = r.header("X-Release")
        self.assertIn(arm, ("stable", "canary"))
        self.assertEqual(self.origin(r), {"stable": "api-1", "canary": "api-2"}[arm])
        self.assertEqual(self.cookie(r), "release=%s; Path=/; Max-Age=604800; HttpOnly" % arm)

    def test_cookie_keeps_users_on_their_arm(self):
        for arm, origin in (("canary", "api-2"), ("stable", "api-1")):
            with self.subTest(arm=arm):
                for _ in range(15):
                    r = self.get("/", headers={"Cookie": "session=x; release=" + arm})
                    self.assertEqual(self.origin(r), origin)
                    self.assertEqual(r.header("X-Release"), arm)
                    self.assertIsNone(self.cookie(r))

    def test_testers_force_an_arm(self):
        r = self.get("/", headers={"X-Release-Arm": "canary", "Cookie": "release=stable"})
        self.assertEqual(self.origin(r), "api-2")
        self.assertEqual(self.cookie(r), "release=canary; Path=/; Max-Age=604800; HttpOnly")
        r = self.get("/?release=canary")
        self.assertEqual(self.origin(r), "api-2")
        self.assertEqual(self.cookie(r), "release=canary; Path=/; Max-Age=604800; HttpOnly")


class TesterRoutingExample(ExampleTestCase):
    EXAMPLE = "tester-routing"

    def test_everybody_gets_stable(self):
        for hdrs in ({}, {"X-Tester": "no"}, {"X-Tester": "YES"}, {"X-Tester": "yes please"}):
            with self.subTest(headers=hdrs):
                r = self.get("/headers", headers=hdrs)
                self.assertEqual(self.origin(r), "api-1")
                self.assertEqual(L.hvalues(L.origin_headers(r), "X-Tester-Route"), ["stable"])

    def test_testers_get_canary(self):
        for name in ("X-Tester", "x-tester"):
            with self.subTest(header=name):
                r = self.get("/headers", headers={name: "yes"})
                self.assertEqual(self.origin(r), "api-2")
                self.assertEqual(L.hvalues(L.origin_headers(r), "X-Tester-Route"), ["canary"])

    def test_web_for_everybody(self):
        for hdrs in ({}, {"X-Tester": "yes"}):
            r = self.get("/web/headers", headers=hdrs)
            self.assertEqual(self.origin(r), "web")
            self.assertEqual(r.json()["url"], "/headers")


class MaintenanceExample(ExampleTestCase):
    EXAMPLE = "maintenance"

    def test_everything_gets_the_page(self):
        for method, path in (("GET", "/"), ("GET", "/shop/cart?x=1"), ("POST", "/login"),
                             ("GET", "/healthz"), ("GET", "/health/deep")):
            with self.subTest(method=method, path=path):
                r = self.get(path, method=method, body=b"a=1" if method == "POST" else None)
                self.assertEqual(r.status, 503)
                self.assertEqual(r.header("Retry-After"), "600")
                self.assertEqual(r.header("Cache-Control"), "no-store")
                self.assertTrue(r.header("Content-Type", "").startswith("text/html"))
                self.assertIn(b"back soon", r.body)
                self.assertIsNone(self.origin(r))

    def test_head_gets_no_body(self):
        with H.Client(self.proxy.port) as c:
            r = c.request("HEAD", "/")
            self.assertEqual((r.status, r.body), (503, b""))
            self.assertEqual(r.header("Retry-After"), "600")

    def test_health_reaches_web(self):
        r = self.get("/health")
        self.assertEqual(self.origin(r), "web")
        self.assertNotEqual(r.status, 503)
        r = self.get("/health?verbose=1")
        self.assertEqual(self.origin(r), "web")

    def test_bypass_header(self):
        r = self.get("/", headers={"X-Maintenance-Bypass": "let-me-in"})
        self.assertEqual((r.status, r.body, self.origin(r)), (200, b"hello", "web"))
        r = self.get("/", headers={"X-Maintenance-Bypass": "wrong"})
        self.assertEqual(r.status, 503)

    def test_keepalive_after_page(self):
        with H.Client(self.proxy.port) as c:
            for _ in range(3):
                self.assertEqual(c.request("GET", "/").status, 503)
            self.assertEqual(self.origin(c.request("GET", "/health")), "web")


class CacheExample(ExampleTestCase):
    EXAMPLE = "cache"

    def test_lua_key_shares_one_entry(self):
        first = H.get(self.proxy.port, "/api/fixed?b=2&a=1")
        self.assertEqual(first.status, 200)
        self.assertIn("fwd=uri-miss", first.header("cache-status"))
        self.assertIn("stored", first.header("cache-status"))
        again = H.get(self.proxy.port, "/api/fixed?a=1&b=2&utm_source=x")
        self.assertEqual(again.status, 200)
        self.assertIn("hit", again.header("cache-status"))
        self.assertEqual(again.body, first.body)
        self.assertIsNotNone(again.header("age"))
        other = H.get(self.proxy.port, "/api/fixed?a=2")
        self.assertIn("fwd=uri-miss", other.header("cache-status"))

    def test_web_not_cached(self):
        r = H.get(self.proxy.port, "/")
        self.assertEqual((r.status, r.header("cache-status")), (200, None))

    def test_key_keeps_queries_and_ports_apart(self):
        # The Lua key must not make one entry of requests the origin tells apart: an
        # escaped & or = is not a separator, a repeated argument is not a comma list, and a
        # Host naming a port is not the host without it (new-user trial: each pair shared).
        pairs = [(("/api/fixed?k4a=1%26b%3D2", "a.test"), ("/api/fixed?k4a=1&b=2", "a.test")),
                 (("/api/fixed?k4b=1%2C2", "a.test"), ("/api/fixed?k4b=1&k4b=2", "a.test")),
                 (("/api/fixed?k4c=1", "a.test:666"), ("/api/fixed?k4c=1", "a.test"))]
        for (p1, h1), (p2, h2) in pairs:
            with self.subTest(first=(p1, h1), then=(p2, h2)):
                first = H.get(self.proxy.port, p1, host=h1)
                self.assertIn("stored", first.header("cache-status"))
                self.assertIn("hit", H.get(self.proxy.port, p1, host=h1).header("cache-status"))
                then = H.get(self.proxy.port, p2, host=h2)
                self.assertIn("fwd=uri-miss", then.header("cache-status"))
        # arguments of one name keep their order; other names are put in order
        self.assertIn("stored", H.get(self.proxy.port, "/api/fixed?k4d=2&k4d=1").header("cache-status"))
        self.assertIn("fwd=uri-miss",
                      H.get(self.proxy.port, "/api/fixed?k4d=1&k4d=2").header("cache-status"))
        H.get(self.proxy.port, "/api/fixed?k4f=1&k4e=2")
        self.assertIn("hit", H.get(self.proxy.port, "/api/fixed?k4e=2&k4f=1").header("cache-status"))


class RoutingScriptExample(ExampleTestCase):
    EXAMPLE = "routing-script"
    ORIGIN_OF = {"api1": "api-1", "api2": "api-2"}

    def by_hash(self, s):
        return ["api1", "api2"][fnv1a(s) % 2]

    def picked_by(self, r):
        return L.hvalues(L.origin_headers(r), "X-Picked-By")

    def test_explicit_backend_header(self):
        for name, origin in self.ORIGIN_OF.items():
            with self.subTest(backend=name):
                r = self.get("/api/headers", headers={"X-Backend": name, "X-User-Id": "u"})
                self.assertEqual(self.origin(r), origin)
                self.assertEqual(self.picked_by(r), ["header"])
                self.assertEqual(r.json()["url"], "/headers")

    def test_user_hash_is_sticky_and_spreads(self):
        seen = set()
        for i in range(20):
            user = "user-%d" % i
            want = self.ORIGIN_OF[self.by_hash(user)]
            for _ in range(2):
                r = self.get("/api/headers", headers={"X-User-Id": user})
                self.assertEqual(self.origin(r), want, user)
                self.assertEqual(self.picked_by(r), ["user"])
            seen.add(want)
        self.assertEqual(seen, {"api-1", "api-2"})

    def test_unknown_backend_falls_back_to_hash(self):
        r = self.get("/api/headers", headers={"X-Backend": "api3", "X-User-Id": "user-1"})
        self.assertEqual(self.origin(r), self.ORIGIN_OF[self.by_hash("user-1")])
        self.assertEqual(self.picked_by(r), ["user"])

    def test_client_ip_hash(self):
        want = self.ORIGIN_OF[self.by_hash("127.0.0.1")]
        for _ in range(4):
            r = self.get("/api/headers")
            self.assertEqual(self.origin(r), want)
            self.assertEqual(self.picked_by(r), ["ip"])

    def test_web_for_the_rest(self):
        r = self.get("/", headers={"X-Backend": "api2"})
        self.assertEqual((r.body, self.origin(r)), (b"hello", "web"))


class HttpsExample(ExampleTestCase):
    """scripts/https.lua, with a certificate made here the way scripts/demo.sh makes it."""
    EXAMPLE = "https"

    @classmethod
    def setUpClass(cls):
        cls.web = cls.start_origin("web")
        cls.api1 = cls.start_origin("api-1")
        cls.api2 = cls.start_origin("api-2")
        ports = {9001: cls.web.port, 9002: cls.api1.port, 9003: cls.api2.port}
        p = ExampleProxy(cls.EXAMPLE, ports, listeners=2)
        p.text = p.text.replace("127.0.0.1:8443", "127.0.0.1:0")
        os.mkdir(os.path.join(p.dir, "certs"))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=DNS:localhost,DNS:api.localhost,IP:127.0.0.1",
                        "-keyout", "certs/demo.key", "-out", "certs/demo.pem"], cwd=p.dir,
                       check=True, capture_output=True, timeout=H.T(60))
        cls.addClassCleanup(p.stop)
        cls.proxy = p.start()
        cls.tls_port = p.ports[1]

    def test_plain_http_redirects_to_https(self):
        r = self.get("/x?y=1")
        self.assertEqual(r.status, 301)
        self.assertRegex(r.header("Location"), r"^https://[^/]+:8443/x\?y=1$")

    def test_web_over_tls_with_hsts(self):
        status, fields, body = H.tls_get(self.tls_port, "/", "localhost")
        self.assertEqual(status, 200, body)
        self.assertEqual(fields.get("x-origin-id"), "web")
        self.assertEqual(fields.get("strict-transport-security"), "max-age=300")

    def test_api_by_sni(self):
        seen = set()
        for _ in range(4):
            status, fields, body = H.tls_get(self.tls_port, "/", "api.localhost")
            self.assertEqual(status, 200, body)
            seen.add(fields.get("x-origin-id"))
        self.assertEqual(seen, {"api-1", "api-2"})

    def test_tls_facts(self):
        _, _, raw = H.tls_get(self.tls_port, "/tls", "api.localhost")
        body = json.loads(raw)
        self.assertEqual((body["protocol"], body["sni"], body["alpn"]),
                         ("TLSv1.3", "api.localhost", "http/1.1"))
        self.assertEqual(self.get("/tls").json(), {"plain_http": True})


if __name__ == "__main__":
    H.main()
