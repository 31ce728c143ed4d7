#!/usr/bin/env python3
"""The cache plugin against what a new user's trial found, end to end with a scripted origin
that counts what reaches it: a cache_key returning nil for a request with a Cookie bypasses
the cache (it was given the default key: Bob got Alice's page), a cache_key that raises
answers 500 without a Cache-Status claiming a miss, and `luaproxy -t` refuses the absurd or
useless settings it accepted (non-finite and huge TTLs, statuses = {206}, a zone name that
is no identifier, at its line) and warns about a disk smaller than max_object_size and a
zone shared by routes to different upstreams."""

import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

ZONE = "t"


class CacheTrialTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = H.ScriptedOrigin()
        cls.addClassCleanup(cls.origin.stop)
        route = {"upstream": "o"}
        nil_for_cookie = H.LuaRaw(
            'function(req) if req:header("Cookie") then return nil end '
            'return "k:" .. req:path() end')
        cls.proxy = cls.start_proxy(
            {"o": H.upstream(cls.origin.address())},
            [dict(route, match={"prefix": "/nilkey/"},
                  plugins=[{"name": "cache", "zone": ZONE, "cache_key": nil_for_cookie}]),
             dict(route, match={"prefix": "/errkey/"},
                  plugins=[{"name": "cache", "zone": ZONE,
                            "cache_key": H.LuaRaw('function() error("broken rule") end')}]),
             dict(route, match={"prefix": "/"}, plugins=[{"name": "cache", "zone": ZONE}])],
            cache={"zones": {ZONE: {"memory": "16m"}}})
        cls.port = cls.proxy.port

    def get(self, path, headers=None):
        r = H.get(self.port, path, host="a.test", headers=headers, timeout=H.T(10))
        self.assertAlive()
        return r

    def test_nil_cache_key_bypasses(self):
        p = "/nilkey/me"
        self.origin.script(p, lambda req, n: H.cacheable(
            ("page of %s" % req.header("cookie")).encode()))
        alice = self.get(p, {"Cookie": "user=alice"})
        self.assertEqual(alice.body, b"page of user=alice")
        self.assertEqual(alice.header("cache-status"), "luaproxy; fwd=bypass; fwd-status=200")
        bob = self.get(p, {"Cookie": "user=bob"})
        self.assertEqual(bob.body, b"page of user=bob")
        self.assertEqual(bob.header("cache-status"), "luaproxy; fwd=bypass; fwd-status=200")
        # and nothing was stored under the default key for a request without a Cookie
        anon = self.get(p)
        self.assertIn("fwd=uri-miss", anon.header("cache-status"))
        self.assertEqual(self.origin.count(p), 3)

    def test_raising_cache_key_claims_no_miss(self):
        p = "/errkey/x"
        self.origin.script(p, lambda req, n: H.cacheable(b"never"))
        r = self.get(p)
        self.assertEqual(r.status, 500)
        self.assertIsNone(r.header("cache-status"))
        self.assertEqual(self.origin.count(p), 0)


def check(config_text):
    """luaproxy -t on a config: (returncode, stdout + stderr)."""
    H.require_proxy()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "c.lua")
        with open(path, "w") as f:
            f.write(config_text)
        p = subprocess.run([H.LUAPROXY, "-t", "-c", path], capture_output=True, text=True,
                           timeout=H.T(30))
        return p.returncode, p.stdout + p.stderr


CONFIG = """return {
  listen = { { address = "127.0.0.1:0" } },
  upstreams = { stable = { targets = { "127.0.0.1:1" } }, beta = { targets = { "127.0.0.1:2" } } },
  cache = { zones = { %s } },
  routes = {
    %s
  },
}
"""


class CacheTrialCheckTest(H.ProxyTestCase):
    def test_refuses_absurd_lifetimes_with_the_line(self):
        for opt, says in (("default_ttl = { [200] = 1/0 }", "got inf"),
                          ("default_ttl = { [200] = 1e300 }", "got 1e+300"),
                          ("stale_if_error = 1e300", "above the maximum 2147483648")):
            with self.subTest(opt=opt):
                rc, out = check(CONFIG % ('z = { memory = "1m" }', (
                    '{ match = { prefix = "/" }, upstream = "stable",\n'
                    '      plugins = { { name = "cache", zone = "z", %s } } },') % opt))
                self.assertNotEqual(rc, 0, out)
                self.assertIn("c.lua:7:", out)  # the plugin entry's line
                self.assertIn(says, out)

    def test_refuses_useless_settings_with_the_line(self):
        route = ('{ match = { prefix = "/" }, upstream = "stable",\n'
                 '      plugins = { { name = "cache", zone = "z", %s } } },')
        for zones, opt, says in (
                ('z = { memory = "1m" }', "statuses = { 200, 206 }",
                 "c.lua:7: routes[1].plugins[1](cache).statuses: [2]: 206: a 206 is never "
                 "stored"),
                ('\n    ["bad name"] = { memory = "1m" }', "",
                 'c.lua:5: cache.zones.bad name: "bad name" does not match')):
            with self.subTest(zones=zones, opt=opt):
                rc, out = check(CONFIG % (zones, route % opt))
                self.assertNotEqual(rc, 0, out)
                self.assertIn(says, out)

    def test_warns_about_a_disk_smaller_than_max_object_size(self):
        rc, out = check(CONFIG % ('z = { memory = "1m", max_object_size = "512k",\n'
                                  '    disk = { path = "d", size = "64k" } }',
                                  '{ match = { prefix = "/" }, upstream = "stable",\n'
                                  '      plugins = { { name = "cache", zone = "z" } } },'))
        self.assertEqual(rc, 0, out)
        self.assertIn('cache zone "z": disk.size "64k" is smaller than max_object_size "512k"',
                      out)

    def test_warns_about_a_zone_shared_across_upstreams(self):
        rc, out = check(CONFIG % ('z = { memory = "1m" }', (
            '{ name = "canary", match = { prefix = "/", headers = { ["X-Canary"] = "1" } },\n'
            '      upstream = "beta", plugins = { { name = "cache", zone = "z" } } },\n'
            '    { match = { prefix = "/" }, upstream = "stable",\n'
            '      plugins = { { name = "cache", zone = "z" } } },')))
        self.assertEqual(rc, 0, out)
        self.assertIn('cache zone "z" is shared by routes whose requests go to different '
                      'upstreams (routes[1] ("canary") -> upstream "beta"; routes[2] -> '
                      'upstream "stable")', out)


if __name__ == "__main__":
    H.main()
