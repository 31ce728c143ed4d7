#!/usr/bin/env python3
"""The cookbook (docs/cookbook/): every recipe's config and code, as its page shows them,
served by a real luaproxy with origins in place of its addresses, and the page's curl session
replayed. For the requests that reach an upstream or get a local answer, `luaproxy explain`
must say the same (route, upstream, answer). A page must show its files verbatim."""

import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua"))
import luatest as L  # noqa: E402
from luatest import H  # noqa: E402

COOKBOOK = os.path.join(L.REPO, "docs", "cookbook")


class RecipeProxy(H.Proxy):
    """A luaproxy serving a recipe's files (copied), with the recipe's addresses replaced:
    listeners and the admin API on port 0, 127.0.0.1:900N by the given origins."""

    def __init__(self, recipe, targets):
        self.recipe = os.path.join(COOKBOOK, recipe)
        with open(os.path.join(self.recipe, "proxy.lua")) as f:
            self.text = f.read()
        self.targets = targets
        cfg = {"listen": [{"address": "127.0.0.1:0"}]}
        if "127.0.0.1:9901" in self.text:
            cfg["admin"] = {"address": "127.0.0.1:0"}
        super().__init__(cfg, name="cookbook-" + recipe)
        shutil.copytree(self.recipe, self.dir, dirs_exist_ok=True)

    def config(self, text=None):
        text = text if text is not None else self.text
        text = text.replace("127.0.0.1:8080", "127.0.0.1:0").replace("127.0.0.1:9901",
                                                                       "127.0.0.1:0")
        for i, addr in enumerate(self.targets):
            text = text.replace("127.0.0.1:%d" % (9001 + i), addr)
        return text

    def write_config(self, text=None):
        with open(self.config_path, "w") as f:
            f.write(self.config(text))


def explain(proxy, line, headers=()):
    args = [H.LUAPROXY, "explain", "-c", proxy.config_path, line, "--json"]
    for h in headers:
        args += ["-H", h]
    p = subprocess.run(args, capture_output=True, stdin=subprocess.DEVNULL, timeout=H.T(60),
                       preexec_fn=H._preexec)
    assert p.returncode == 0, (p.stdout, p.stderr)
    return json.loads(p.stdout)


class Recipe(L.LuaTestCase):
    RECIPE = None
    ORIGINS = ()      # origin idents, in the order of 127.0.0.1:9001, 9002...
    DEAD = 0          # or this many dead addresses instead

    @classmethod
    def setUpClass(cls):
        if cls.DEAD:
            targets = ["127.0.0.1:%d" % H.dead_port() for _ in range(cls.DEAD)]
        else:
            cls.origins = [cls.start_origin(i) for i in cls.ORIGINS]
            targets = [o.address() for o in cls.origins]
        cls.proxy = RecipeProxy(cls.RECIPE, targets)
        cls.addClassCleanup(cls.proxy.stop)
        cls.proxy.start()
        if cls.proxy.admin_port:
            H.wait_for(lambda: H.port_accepts(cls.proxy.admin_port), H.T(10), what="admin")

    def req(self, path, headers=(), method="GET", host="shop.test"):
        hdrs = [tuple(h.split(": ", 1)) for h in headers]
        return H.get(self.proxy.port, path, host=host, headers=hdrs, method=method,
                     body=b"" if method in ("POST", "DELETE") else None)

    def agree(self, path, headers=(), method="GET", host="shop.test"):
        """Sends the request and checks explain said the same; returns the response."""
        x = explain(self.proxy, "%s http://%s%s" % (method, host, path), headers)
        r = self.req(path, headers, method, host)
        what = "%s %s %s: %s" % (method, path, headers, json.dumps(x)[:2000])
        if x.get("answer"):
            self.assertEqual(r.status, x["answer"]["status"], what)
        else:
            self.assertEqual(r.header("X-Origin-Id"), x["upstream"]["name"], what)
        return r

    def test_page_shows_the_files(self):
        with open(os.path.join(COOKBOOK, self.RECIPE + ".md")) as f:
            page = f.read()
        for root, _, files in os.walk(os.path.join(COOKBOOK, self.RECIPE)):
            for name in files:
                if name.endswith(".lua"):
                    with open(os.path.join(root, name)) as f:
                        self.assertIn(f.read().strip(), page, name + " is not on the page")


class CanaryTest(Recipe):
    RECIPE = "canary"
    ORIGINS = ("stable", "canary")

    def test_header_and_cookie_force_a_side(self):
        self.assertEqual(self.agree("/headers", ["X-Canary: 1"]).header("X-Origin-Id"), "canary")
        self.assertEqual(self.agree("/headers", ["Cookie: a=b; canary=1"])
                         .header("X-Origin-Id"), "canary")
        self.assertEqual(self.agree("/headers", ["X-Canary: 0", "Cookie: canary=1"])
                         .header("X-Origin-Id"), "stable")

    def test_percentage_is_stable_per_user(self):
        seen = {}
        for i in range(300):
            r = self.req("/headers", ["X-User-Id: user-%d" % i])
            seen[i] = r.header("X-Origin-Id")
        share = sum(1 for v in seen.values() if v == "canary") / 300
        self.assertTrue(0.04 <= share <= 0.18, share)
        for i in range(0, 300, 30):
            self.assertEqual(self.agree("/headers", ["X-User-Id: user-%d" % i])
                             .header("X-Origin-Id"), seen[i])


class ApiVersioningTest(Recipe):
    RECIPE = "api-versioning"
    ORIGINS = ("v1", "v2")

    def test_versions(self):
        self.assertEqual(self.agree("/api/items", ["Accept-Version: 2"]).header("X-Origin-Id"),
                         "v2")
        self.assertEqual(self.agree("/api/items", ["Accept: application/vnd.shop.v2+json"])
                         .header("X-Origin-Id"), "v2")
        self.assertEqual(self.agree("/api/items", ["Accept-Version: 1"]).header("X-Origin-Id"),
                         "v1")
        r = self.agree("/api/items")
        self.assertEqual((r.header("X-Origin-Id"), r.header("X-API-Version")), ("v1", "1"))
        self.assertEqual(self.agree("/other").status, 404)


class FallbackPageTest(Recipe):
    RECIPE = "fallback-page"
    DEAD = 2

    def test_every_target_down_gives_the_page(self):
        r = self.agree("/")
        # explain has no live state: it sends upstream; the engine finds no target.
        self.assertEqual(r.status, 503)
        self.assertIn(b"We will be right back", r.body)
        self.assertTrue(r.header("Content-Type").startswith("text/html"), r.header("Content-Type"))
        self.assertEqual(r.header("Retry-After"), "30")

    def agree(self, path, headers=(), method="GET", host="shop.test"):
        x = explain(self.proxy, "GET http://shop.test" + path)
        self.assertEqual(x["upstream"]["name"], "app")
        return self.req(path, headers, method, host)


class MaintenanceTest(Recipe):
    RECIPE = "maintenance"
    ORIGINS = ("app",)

    def test_allow_list_and_reload(self):
        r = self.agree("/")
        self.assertEqual(r.status, 503)
        self.assertEqual(r.header("Retry-After"), "600")
        self.assertIn(b"Back at 14:00 UTC", r.body)
        self.assertEqual(self.agree("/health").header("X-Origin-Id"), "app")
        # The office now includes us: edit the allow-list, reload.
        text = self.proxy.text.replace('"192.168.0.0/16" }', '"192.168.0.0/16", "127.0.0.1" }')
        self.assertNotEqual(text, self.proxy.text)
        self.proxy.write_config(text)
        try:
            self.proxy.signal(signal.SIGHUP)
            H.wait_for(lambda: self.req("/").status == 200, H.T(10), what="the reload")
            self.assertEqual(self.agree("/").header("X-Origin-Id"), "app")
        finally:
            self.proxy.write_config()
            self.proxy.signal(signal.SIGHUP)
            H.wait_for(lambda: self.req("/").status == 503, H.T(10), what="the reload back")


class DenyListTest(Recipe):
    RECIPE = "deny-list"
    ORIGINS = ("app",)

    def test_deny_at_run_time(self):
        self.assertEqual(self.agree("/headers", ["X-User-Id: mallory"]).status, 200)
        self.assertEqual(self.req("/_deny/mallory", method="POST").status, 200)
        r = self.req("/headers", ["X-User-Id: mallory"])
        self.assertEqual((r.status, r.body), (403, b"denied\n"))
        self.assertEqual(self.req("/headers", ["X-User-Id: alice"]).status, 200)
        self.assertEqual(json.loads(self.req("/_deny").body), ["mallory"])
        self.assertEqual(self.req("/_deny/mallory", method="DELETE").status, 200)
        self.assertEqual(self.req("/headers", ["X-User-Id: mallory"]).status, 200)
        # With a TTL the entry goes by itself.
        self.assertEqual(self.req("/_deny/eve?ttl=0.5", method="POST").status, 200)
        self.assertEqual(self.req("/headers", ["X-User-Id: eve"]).status, 403)
        H.wait_for(lambda: self.req("/headers", ["X-User-Id: eve"]).status == 200, H.T(5),
                   what="the entry's expiry")


class SlowLogTest(Recipe):
    RECIPE = "slow-log"
    ORIGINS = ("app",)

    def test_slow_requests_are_logged_with_timings(self):
        self.assertEqual(self.agree("/headers").status, 200)
        self.assertEqual(self.agree("/delay?ms=400").status, 200)
        needle = "slow request: GET /delay?ms=400 -> app (%s) status 200:" % (
            self.origins[0].address())
        self.wait_log(needle)
        line = self.log_lines(needle)[0]
        m = re.search(r"([\d.]+) s to the response head, ([\d.]+) s in all", line)
        self.assertTrue(m, line)
        self.assertGreaterEqual(float(m.group(1)), 0.35)
        self.assertGreaterEqual(float(m.group(2)), float(m.group(1)))
        self.assertEqual(self.log_lines("slow request: GET /headers"), [])


class BlueGreenTest(Recipe):
    RECIPE = "blue-green"
    ORIGINS = ("blue", "green")

    def state(self, addr, state):
        c = H.Client(self.proxy.admin_port)
        try:
            r = c.request("POST", "/upstreams/app/targets/%s?state=%s" % (addr, state), [],
                          b"", "HTTP/1.1", "127.0.0.1")
        finally:
            c.close()
        self.assertEqual(r.status, 200, r.body)

    def colours(self, n=6):
        return {self.agree("/").header("X-Origin-Id") for _ in range(n)}

    def agree(self, path, headers=(), method="GET", host="shop.test"):
        x = explain(self.proxy, "GET http://shop.test" + path)
        self.assertEqual(x["upstream"]["name"], "app")
        return self.req(path, headers, method, host)

    def test_switch_through_the_admin_api(self):
        blue, green = (o.address() for o in self.origins)
        self.assertEqual(self.colours(), {"blue", "green"})
        self.state(green, "disable")
        self.assertEqual(self.colours(), {"blue"})
        self.state(green, "enable")
        self.state(blue, "disable")
        self.assertEqual(self.colours(), {"green"})
        # The switch survives a reload.
        self.proxy.signal(signal.SIGHUP)
        H.wait_for(lambda: "live in" in self.proxy.stderr(), H.T(10), what="the reload")
        self.assertEqual(self.colours(), {"green"})
        self.state(blue, "enable")


class TenantRateLimitTest(Recipe):
    RECIPE = "tenant-rate-limit"
    ORIGINS = ("api",)

    def test_each_tenant_has_its_own_allowance(self):
        got = [self.req("/api/x", ["X-Tenant: acme"]).status for _ in range(4)]
        self.assertEqual(got, [404, 404, 404, 429])  # the origin has no /api/x: 404 is it
        r = self.req("/api/x", ["X-Tenant: acme"])
        self.assertEqual(r.status, 429)
        self.assertIsNotNone(r.header("Retry-After"))
        self.assertEqual(self.agree("/api/x", ["X-Tenant: globex"]).status, 404)
        premium = [self.req("/api/x", ["X-Tenant: acme", "X-Plan: premium"]).status
                   for _ in range(10)]
        self.assertEqual(set(premium), {404})


class GeoRoutingTest(Recipe):
    RECIPE = "geo-routing"
    ORIGINS = ("us", "eu")
    # tests/fixtures/test-country.mmdb: 192.0.2.0/24 FR, 198.51.100.0/24 DE,
    # 198.51.100.128/25 US, 203.0.113.0/24 CN.

    @classmethod
    def setUpClass(cls):
        db = os.path.join(L.REPO, "tests", "fixtures", "test-country.mmdb")
        orig = RecipeProxy.config

        def config(self, text=None):
            return orig(self, text).replace("/var/lib/GeoIP/GeoLite2-Country.mmdb", db)
        RecipeProxy.config = config
        try:
            super().setUpClass()
        finally:
            RecipeProxy.config = orig

    def agree_from(self, ip):
        # explain does not read real_ip: the client address is given to it.
        p = subprocess.run([H.LUAPROXY, "explain", "-c", self.proxy.config_path, "--json",
                            "--client-ip", ip, "GET http://shop.test/headers"],
                           capture_output=True, timeout=H.T(60), stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 0, p.stderr)
        x = json.loads(p.stdout)
        r = self.req("/headers", ["X-Forwarded-For: " + ip])
        self.assertEqual(r.header("X-Origin-Id"), x["upstream"]["name"], json.dumps(x)[:1500])
        got = L.hvalues(L.origin_headers(r), "x-country")
        self.assertEqual(got[:1], [x["sent"]["headers"]["x-country"]]
                         if "x-country" in x["sent"]["headers"] else [])
        return r.header("X-Origin-Id"), got

    def test_countries(self):
        self.assertEqual(self.agree_from("198.51.100.7"), ("eu", ["DE"]))
        self.assertEqual(self.agree_from("192.0.2.9"), ("eu", ["FR"]))
        self.assertEqual(self.agree_from("198.51.100.200"), ("us", ["US"]))
        self.assertEqual(self.agree_from("203.0.113.5"), ("us", ["CN"]))
        self.assertEqual(self.agree_from("10.9.9.9"), ("us", []))


class AbStickyTest(Recipe):
    RECIPE = "ab-sticky"
    ORIGINS = ("checkout_a", "checkout_b")

    def test_sticky_across_reloads(self):
        r = self.req("/checkout/headers")
        cookie = r.header("Set-Cookie")
        self.assertRegex(cookie, r"^exp_checkout=(a|b); Path=/; Max-Age=2592000; HttpOnly")
        arm = cookie.split(";")[0].split("=")[1]
        want = "checkout_" + arm
        self.assertEqual(r.header("X-Origin-Id"), want)
        for _ in range(5):
            r = self.agree("/checkout/headers", ["Cookie: exp_checkout=" + arm])
            self.assertEqual((r.header("X-Origin-Id"), r.header("X-Arm")), (want, arm))
            self.assertIsNone(r.header("Set-Cookie"))
        # Shift the weights and reload: a user with the cookie keeps the arm.
        other = "b" if arm == "a" else "a"
        text = self.proxy.text.replace('weight = 50 },\n', 'weight = 10 },\n', 1) \
            if arm == "a" else self.proxy.text.replace('weight = 50 } } } } },',
                                                       'weight = 10 } } } } },')
        self.assertNotEqual(text, self.proxy.text)
        self.proxy.write_config(text)
        self.proxy.signal(signal.SIGHUP)
        H.wait_for(lambda: "live in" in self.proxy.stderr(), H.T(10), what="the reload")
        for _ in range(5):
            r = self.agree("/checkout/headers", ["Cookie: exp_checkout=" + arm])
            self.assertEqual(r.header("X-Origin-Id"), want)
        # A tester forces the other arm; the cookie moves with it.
        r = self.req("/checkout/headers", ["X-AB-Arm: " + other])
        self.assertEqual(r.header("X-Origin-Id"), "checkout_" + other)
        self.assertTrue(r.header("Set-Cookie").startswith("exp_checkout=" + other))


class SecurityHeadersTest(Recipe):
    RECIPE = "security-headers"
    ORIGINS = ("app",)

    @classmethod
    def setUpClass(cls):
        cls.origins = [cls.start_origin("app")]
        cls.proxy = RecipeProxy(cls.RECIPE, [cls.origins[0].address()])
        cls.proxy.cfg["listen"].append({"address": "127.0.0.1:0"})
        certs = os.path.join(cls.proxy.dir, "certs")
        os.makedirs(certs, exist_ok=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        os.path.join(certs, "shop.key"), "-out",
                        os.path.join(certs, "shop.pem"), "-days", "2", "-subj", "/CN=shop.test",
                        "-addext", "subjectAltName=DNS:shop.test"],
                       check=True, capture_output=True, timeout=H.T(60))
        cls.proxy.write_config = lambda text=None: RecipeProxy.write_config(
            cls.proxy, (text or cls.proxy.text).replace("127.0.0.1:8443", "127.0.0.1:0"))
        cls.addClassCleanup(cls.proxy.stop)
        cls.proxy.start()

    def https(self, path, method="GET"):
        import http.client
        import ssl
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c = http.client.HTTPSConnection("127.0.0.1", self.proxy.ports[1], context=ctx,
                                        timeout=H.T(10))
        try:
            c.request(method, path, headers={"Host": "shop.test"})
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def test_http_redirects_to_https(self):
        r = self.agree("/a?b=1")
        self.assertEqual((r.status, r.header("Location")), (301, "https://shop.test/a?b=1"))
        self.assertIsNone(r.header("Strict-Transport-Security"))
        r = self.req("/form", method="POST")
        self.assertEqual(r.status, 308)

    def test_https_gets_hsts_and_the_headers(self):
        status, h, _ = self.https("/headers")
        self.assertEqual(status, 200)
        self.assertEqual(h["x-origin-id"], "app")
        self.assertEqual(h["strict-transport-security"], "max-age=31536000; includeSubDomains")
        self.assertEqual(h["x-content-type-options"], "nosniff")
        self.assertEqual(h["x-frame-options"], "DENY")
        self.assertEqual(h["content-security-policy"], "default-src 'self'")
        x = explain(self.proxy, "GET https://shop.test/headers")
        self.assertEqual(x["upstream"]["name"], "app")
        self.assertEqual(x["tls"]["certificate"]["why"], "exact name shop.test")
        self.assertIsNone(x.get("answer"))


def hs256(claims, secret, kid):
    """A JWS compact token signed with HMAC-SHA256."""
    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), (head + "." + body).encode(), hashlib.sha256).digest()
    return head + "." + body + "." + b64(sig)


class JwtRoutingTest(Recipe):
    RECIPE = "jwt-routing"
    ORIGINS = ("standard", "premium")

    def token(self, plan=None, secret="change-me-to-32-random-bytes!!!", **kw):
        claims = {"sub": "alice", "exp": int(time.time()) + 3600}
        if plan is not None:
            claims["plan"] = plan
        claims.update(kw)
        return "Authorization: Bearer " + hs256(claims, secret, "shop")

    def tampered(self):
        """A free token whose payload was swapped for a premium one's."""
        free, premium = self.token("free").split("."), self.token("premium").split(".")
        return ".".join([free[0], premium[1], free[2]])

    def test_routes_on_the_plan_claim(self):
        r = self.agree("/headers", [self.token("premium")])
        self.assertEqual((r.status, r.header("X-Origin-Id")), (200, "premium"))
        hdrs = L.origin_headers(r)
        self.assertEqual(L.hvalues(hdrs, "x-plan"), ["premium"])
        self.assertEqual(L.hvalues(hdrs, "x-consumer-id"), ["alice"])
        self.assertEqual(L.hvalues(hdrs, "authorization"), [])
        self.assertEqual(self.agree("/headers", [self.token("free")]).header("X-Origin-Id"),
                         "standard")
        self.assertEqual(self.agree("/headers", [self.token()]).header("X-Origin-Id"),
                         "standard")

    def test_a_forged_plan_header_does_not_count(self):
        r = self.agree("/headers", [self.token("free"), "X-Plan: premium"])
        self.assertEqual(r.header("X-Origin-Id"), "standard")
        self.assertEqual(L.hvalues(L.origin_headers(r), "x-plan"), ["free"])
        r = self.agree("/headers", [self.token(), "X-Plan: premium"])
        self.assertEqual(r.header("X-Origin-Id"), "standard")
        self.assertEqual(L.hvalues(L.origin_headers(r), "x-plan"), [])

    def test_invalid_tokens_get_401(self):
        for h in ([self.token("premium", secret="another-secret-another-secret!!")],
                  [self.tampered()],
                  []):
            r = self.agree("/headers", h)
            self.assertEqual(r.status, 401, h)
            self.assertIsNone(r.header("X-Origin-Id"))
            self.assertTrue(r.header("WWW-Authenticate").startswith("Bearer"))
        # Expired: not explained, as explain runs plugins on the proxy.test double's fixed
        # clock (2023-11-14), where this token has not expired yet.
        r = self.req("/headers", [self.token("premium", exp=int(time.time()) - 60)])
        self.assertEqual((r.status, json.loads(r.body)["error_description"]),
                         (401, "token expired"))


class ShadowTrafficTest(Recipe):
    RECIPE = "shadow-traffic"

    @classmethod
    def setUpClass(cls):
        cls.origins = [cls.start_origin("app")]
        cls.shadow = cls.start_raw_origin(lambda req: H.simple_response(200, b"shadow"))
        cls.proxy = RecipeProxy(cls.RECIPE, [cls.origins[0].address(), cls.shadow.address()])
        cls.addClassCleanup(cls.proxy.stop)
        cls.proxy.start()

    def test_a_share_is_copied_to_the_shadow(self):
        self.assertEqual(self.agree("/echo", method="POST").header("X-Origin-Id"), "app")
        before = len(self.shadow.requests)
        sent = {"/echo": b""}  # the one explained and sent above may be copied too
        for i in range(200):
            body = b"order=%d" % i
            r = H.get(self.proxy.port, "/echo?n=%d" % i, host="shop.test", method="POST",
                      body=body, headers=[("Content-Type", "text/plain")])
            self.assertEqual((r.status, r.header("X-Origin-Id"), r.body), (200, "app", body))
            sent["/echo?n=%d" % i] = body
            # The predicate: a DELETE is never copied.
            r = self.req("/headers?n=%d" % i, method="DELETE")
            self.assertEqual(r.header("X-Origin-Id"), "app")
        # Each copy goes out after its client's answer: wait for them.
        H.wait_for(lambda: len(self.shadow.requests) - before >= 10, H.T(10),
                   what="copies on the shadow")
        got = self.shadow.requests[before:]
        for q in got:
            self.assertEqual(q.method, "POST")  # never a DELETE
            self.assertIn(q.target, sent)
            self.assertEqual(q.body, sent[q.target])
            self.assertEqual(q.header("X-Mirrored-By"), "luaproxy")
            self.assertEqual(q.header("Host"), "shop.test")
        self.assertLess(len(got), 120)  # a share (20 %), not every request


class CacheCoalescingTest(Recipe):
    RECIPE = "cache-coalescing"

    @classmethod
    def setUpClass(cls):
        # An origin that is slow to build a report and counts what reaches it.
        def report(req):
            time.sleep(0.5)  # the origin's work: every client arrives while it builds
            return H.simple_response(200, b"report " + req.target.encode(),
                                     [("X-Origin-Id", "app")])
        cls.origin = cls.start_raw_origin(report)
        cls.proxy = RecipeProxy(cls.RECIPE, [cls.origin.address()])
        cls.addClassCleanup(cls.proxy.stop)
        cls.proxy.start()

    def count(self, path):
        return sum(1 for q in list(self.origin.requests) if q.target == path)

    def test_50_concurrent_misses_make_one_origin_request(self):
        path = "/reports/daily"
        results = L.parallel(lambda i: H.get(self.proxy.port, path, host="shop.test",
                                             timeout=H.T(30)), 50)
        for r in results:
            self.assertNotIsInstance(r, Exception)
            self.assertEqual((r.status, r.body), (200, b"report " + path.encode()))
        self.assertEqual(self.count(path), 1)
        states = [r.header("Cache-Status") or "" for r in results]
        self.assertGreater(sum(1 for v in states if "collapsed" in v), 0, states)
        r = self.req(path)
        self.assertEqual(r.status, 200)
        self.assertIn("hit", r.header("Cache-Status"))
        self.assertEqual(self.count(path), 1)
        # Another key is another miss; explain (no live state: an empty cache) says upstream.
        self.assertEqual(self.agree("/reports/weekly").status, 200)
        self.assertEqual(self.count("/reports/weekly"), 1)


class RetryBudgetTest(Recipe):
    RECIPE = "retry-budget"

    @classmethod
    def setUpClass(cls):
        # The flaky target fails three requests of four: never the passive check's five in
        # a row, so it stays in rotation and only the retry budget bounds the retries.
        cls.flaky_ok = []

        def flaky(req):
            ok = len(cls.flaky.requests) % 4 == 0
            cls.flaky_ok.append(ok)
            return H.simple_response(200 if ok else 503, b"orders", [("X-Origin-Id", "orders")],
                                     reason="OK" if ok else "Service Unavailable")
        cls.flaky = cls.start_raw_origin(flaky)                     # 127.0.0.1:9001
        cls.healthy = cls.start_raw_origin(lambda req: H.simple_response(
            200, b"orders", [("X-Origin-Id", "orders")]))          # 127.0.0.1:9002
        cls.proxy = RecipeProxy(cls.RECIPE, [cls.flaky.address(), cls.healthy.address()])
        cls.addClassCleanup(cls.proxy.stop)
        cls.proxy.start()

    def tries(self):
        return len(self.flaky.requests), len(self.healthy.requests)

    def test_retried_then_the_budget_stops_the_storm(self):
        # A failure of the flaky target is retried on the other one: the client gets 200
        # (the budget's 3 free retries per worker cover the first failures).
        f0, h0 = self.tries()
        n = 0
        while self.flaky_ok[f0:].count(False) < 2:
            n += 1
            self.assertLess(n, 50, "the flaky target never failed")
            r = self.agree("/orders/%d" % n)
            self.assertEqual((r.status, r.body), (200, b"orders"))
        f1, h1 = self.tries()
        self.assertEqual((f1 - f0) + (h1 - h0) - n, self.flaky_ok[f0:f1].count(False))
        # A storm: the budget lets only a share of the failures be retried; the rest of the
        # clients get the flaky target's 503.
        N = 200
        statuses = [self.req("/orders/storm-%d" % i).status for i in range(N)]
        f2, h2 = self.tries()
        ok, failed = statuses.count(200), statuses.count(503)
        retries = (f2 - f1) + (h2 - h1) - N
        what = dict(flaky=f2 - f1, healthy=h2 - h1, retries=retries, failed=failed)
        self.assertEqual(ok + failed, N, statuses)
        self.assertGreater(f2 - f1, N // 5, what)  # never ejected: still in rotation
        self.assertGreater(retries, 0, what)
        # Without the budget every failure (about 3/8 of the requests) would be retried.
        self.assertGreater(failed, N // 10, what)
        # Each failure of the flaky target was either retried or given to its client.
        self.assertEqual(retries + failed, self.flaky_ok[f1:f2].count(False), what)
        # Per worker (2 at most here) 3 + 10 % of the window's requests, one window
        # boundary allowed for.
        self.assertLessEqual(retries, 2 * (2 * 3 + 0.1 * (N + n)), what)
        self.wait_log("upstream orders: retry budget spent")
        # The other route never retries.
        x = explain(self.proxy, "GET http://shop.test/other")
        self.assertEqual(x["upstream"]["name"], "app")
        f3, h3 = self.tries()
        self.assertEqual(self.req("/other").status, 200)
        self.assertEqual(self.tries(), (f3, h3 + 1))


del Recipe  # the base class runs nothing itself

if __name__ == "__main__":
    H.main()
