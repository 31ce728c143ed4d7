#!/usr/bin/env python3
"""Config routes through the compiled router (engine/router.c, docs/routing.md), one real
request per match kind: hosts (exact, *.suffix, prefix.*), exact paths, :params and *rest
(req:param), prefixes, regexes with named groups, methods, headers and query arguments
(present, equal, regex), client CIDR, SNI; OPTIONS *; first match in order; the shadow
warnings of -t; Lua predicates on config routes (false tries the next route, an error is
a 500 with its traceback logged, the worker lives on; luaproxy explain shows them)."""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

# A handler answering with the route's captures, so the test sees what req:param() gives.
PARAMS = H.LuaRaw(r'''function(req)
      local out = {}
      for _, k in ipairs({ "id", "rest", "ver", "thing" }) do
        local v = req:param(k)
        if v then out[#out + 1] = k .. "=" .. v end
      end
      req:respond(200, table.concat(out, " "))
    end''')


# Adds 8 KiB of headers first: the request head's buffer grows (and the old one goes back to
# the pool, poisoned under ASan), the captures must move with it.
GROW = H.LuaRaw(r'''function(req)
      req:set_header("X-Big", string.rep("b", 8000))
      req:respond(200, req:param("id") .. " " .. req:param("rest"))
    end''')


def self_signed(d, names):
    cert, key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
    san = ",".join("DNS:" + n for n in names)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-subj", "/CN=" + names[0], "-days", "2",
                    "-addext", "subjectAltName=" + san],
                   check=True, capture_output=True, timeout=H.T(30), stdin=subprocess.DEVNULL)
    return cert, key


class RoutingTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        H.require_tool("openssl")
        names = "exact wild pfx path param prefix regex method hdr hdrpresent hdrre query " \
                "queryre cidr sni last".split()
        cls.origins = {n: cls.start_origin(n) for n in names}
        ups = {n: H.upstream(o.address()) for n, o in cls.origins.items()}
        d = H.Workdir.new("routing-tls")
        cert, key = self_signed(d, ["sni.test", "other.test"])
        routes = [
            {"match": {"host": "exact.test"}, "upstream": "exact"},
            {"match": {"host": "*.wild.test"}, "upstream": "wild"},
            {"match": {"host": "api.*"}, "upstream": "pfx"},
            {"match": {"path": "/x/exact"}, "upstream": "path"},
            {"match": {"path": "/users/:id/orders/*rest"}, "handler": PARAMS},
            {"match": {"path": "/grow/:id/*rest"}, "handler": GROW},
            {"match": {"path": "/users/:id"}, "upstream": "param"},
            {"match": {"regex": r"^/v(?<ver>\d+)/(?<thing>[a-z]+)$"}, "handler": PARAMS},
            {"match": {"prefix": "/static/"}, "upstream": "prefix"},
            {"match": {"regex": r"^/re/[0-9]+$"}, "upstream": "regex"},
            {"match": {"prefix": "/m", "methods": ["PUT", "delete"]}, "upstream": "method"},
            {"match": {"prefix": "/h", "headers": {"X-Env": "prod"}}, "upstream": "hdr"},
            {"match": {"prefix": "/h", "headers": {"X-Debug": True}}, "upstream": "hdrpresent"},
            {"match": {"prefix": "/h", "header_regex": {"User-Agent": "^curl/"}},
             "upstream": "hdrre"},
            {"match": {"prefix": "/q", "query": {"v": "a b"}}, "upstream": "query"},
            {"match": {"prefix": "/q", "query_regex": {"n": "^[0-9]+$"}}, "upstream": "queryre"},
            {"match": {"prefix": "/c", "cidr": ["10.0.0.0/8"]}, "upstream": "exact"},
            {"match": {"prefix": "/c", "cidr": ["::1", "127.0.0.0/8"]}, "upstream": "cidr"},
            {"match": {"sni": "sni.test"}, "upstream": "sni"},
            {"upstream": "last"},
        ]
        listen = [{"address": "127.0.0.1:0"},
                  {"address": "127.0.0.1:0", "tls": {"certificates": [{"cert": cert, "key": key}]}}]
        cls.proxy = cls.start_proxy(ups, routes, workers=1, listen=listen)

    def origin(self, path, host="other.test", **kw):
        # Which origin answered (it answers 404 for paths it does not serve itself).
        r = H.get(self.proxy.port, path, host=host, **kw)
        return r.header("X-Origin-Id")

    def test_hosts(self):
        self.assertEqual(self.origin("/", host="EXACT.test:8080"), "exact")
        self.assertEqual(self.origin("/", host="a.b.wild.test"), "wild")
        self.assertEqual(self.origin("/", host="wild.test"), "last")
        self.assertEqual(self.origin("/", host="api.internal"), "pfx")

    def test_paths_params_regex(self):
        self.assertEqual(self.origin("/x/exact?q=1"), "path")
        self.assertEqual(self.origin("/x/exact/"), "last")
        r = H.get(self.proxy.port, "/users/42/orders/7/items", host="other.test")
        self.assertEqual(r.body, b"id=42 rest=7/items")
        # Captures are the path's bytes as sent, not percent-decoded (docs/lua-api.md).
        r = H.get(self.proxy.port, "/users/a%20b/orders/x%2Fy", host="other.test")
        self.assertEqual(r.body, b"id=a%20b rest=x%2Fy")
        r = H.get(self.proxy.port, "/grow/abc/d/e", host="other.test")
        self.assertEqual(r.body, b"abc d/e")
        self.assertEqual(self.origin("/users/42"), "param")
        r = H.get(self.proxy.port, "/v2/cats", host="other.test")
        self.assertEqual(r.body, b"ver=2 thing=cats")
        self.assertEqual(self.origin("/static/app.js"), "prefix")
        self.assertEqual(self.origin("/re/123"), "regex")
        self.assertEqual(self.origin("/re/12a"), "last")

    def test_methods_headers_query(self):
        self.assertEqual(self.origin("/m", method="DELETE"), "method")
        self.assertEqual(self.origin("/m", method="GET"), "last")
        self.assertEqual(self.origin("/h", headers=[("X-Env", "prod")]), "hdr")
        self.assertEqual(self.origin("/h", headers=[("X-Env", "dev")]), "last")
        self.assertEqual(self.origin("/h", headers=[("x-debug", "")]), "hdrpresent")
        self.assertEqual(self.origin("/h", headers=[("User-Agent", "curl/8.5")]), "hdrre")
        self.assertEqual(self.origin("/q?v=a+b"), "query")
        self.assertEqual(self.origin("/q?x=1&v=a%20b"), "query")
        self.assertEqual(self.origin("/q?n=12"), "queryre")
        self.assertEqual(self.origin("/q?n=1x"), "last")

    def test_cidr_uses_the_peer_address(self):
        self.assertEqual(self.origin("/c"), "cidr")

    def test_sni(self):
        status, fields, _ = H.tls_get(self.proxy.ports[1], "/", "sni.test")
        self.assertEqual(fields.get("x-origin-id"), "sni", status)
        status, fields, _ = H.tls_get(self.proxy.ports[1], "/", "other.test")
        self.assertEqual(fields.get("x-origin-id"), "last", status)
        # Plain HTTP with the same Host never matches an sni route.
        self.assertEqual(self.origin("/", host="sni.test"), "last")

    def test_options_asterisk(self):
        with H.Client(self.proxy.port) as c:
            c.send(b"OPTIONS * HTTP/1.1\r\nHost: other.test\r\n\r\n")
            r = c.read_response()
        self.assertEqual(r.header("X-Origin-Id"), "last")


PREDICATE_ROUTES = [
    {"name": "beta", "match": {"path": "/u/:id", "predicate": H.LuaRaw(
        'function(req) return req:header("x-beta") == "1" and req:param("id") ~= "0" end')},
     "handler": H.LuaRaw('function(req) req:respond(200, "beta " .. req:param("id")) end')},
    {"name": "boom", "match": {"prefix": "/boom", "predicate": H.LuaRaw(
        'function(req) error("predicate kaboom") end')}, "upstream": "u"},
    # A predicate cannot wait: proxy.sleep parks the request's task, then its yield fails.
    {"name": "nap", "match": {"prefix": "/nap", "predicate": H.LuaRaw(
        'function(req) require("proxy").sleep(0.05) return true end')}, "upstream": "u"},
    {"name": "rest", "upstream": "u"},
]


class RandomSeedTest(H.ProxyTestCase):
    """math.random is seeded per Lua VM from the OS (engine/lua_vm.c): two starts of the same
    config draw different numbers (unseeded, LuaJIT gives the same sequence every time)."""

    def test_two_starts_draw_differently(self):
        routes = [{"handler": H.LuaRaw(
            'function(req) req:respond(200, string.format("%.17g %.17g", math.random(), '
            'math.random())) end')}]
        seen = []
        for _ in range(2):
            p = self.start_proxy({}, routes, workers=1)
            r = H.get(p.port, "/")
            self.assertEqual(r.status, 200, r)
            seen.append(r.body)
            p.stop()
        self.assertNotEqual(seen[0], seen[1])


class PredicateTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("rest")
        cls.proxy = cls.start_proxy({"u": H.upstream(cls.origin.address())}, PREDICATE_ROUTES,
                                    workers=1)

    def test_predicate_decides_last(self):
        p = self.proxy.port
        r = H.get(p, "/u/7", headers=[("X-Beta", "1")])
        self.assertEqual((r.status, r.body), (200, b"beta 7"))  # req:param works in it
        self.assertEqual(H.get(p, "/u/7").header("X-Origin-Id"), "rest")  # false: next route
        self.assertEqual(H.get(p, "/u/0", headers=[("X-Beta", "1")]).header("X-Origin-Id"),
                         "rest")

    def test_error_is_a_500_and_the_worker_lives(self):
        p = self.proxy.port
        for _ in range(3):
            r = H.get(p, "/boom")
            self.assertEqual(r.status, 500)
        self.proxy.wait_log("routes[2].match.predicate failed", count=3)
        self.proxy.wait_log("predicate kaboom", count=3)
        self.proxy.wait_log("stack traceback", count=3)
        r = H.get(p, "/u/8", headers=[("X-Beta", "1")])
        self.assertEqual((r.status, r.body), (200, b"beta 8"))

    def test_a_predicate_that_waits_fails_its_request_only(self):
        # The sleep's timer was armed on the request's task before the yield failed: it must
        # not wake that task (or the next request's, on the same slot) later.
        p = self.proxy.port
        with H.Client(p) as c:
            for i in range(3):
                c.send(b"GET /nap HTTP/1.1\r\nHost: x\r\n\r\n")
                self.assertEqual(c.read_response().status, 500)
                c.send(b"GET /u/%d HTTP/1.1\r\nHost: x\r\nX-Beta: 1\r\n\r\n" % (i + 1))
                r = c.read_response()
                self.assertEqual((r.status, r.body), (200, b"beta %d" % (i + 1)))
        self.proxy.wait_log("routes[3].match.predicate failed", count=3)
        r = H.get(p, "/u/9", headers=[("X-Beta", "1")])
        self.assertEqual((r.status, r.body), (200, b"beta 9"))
        self.assertTrue(self.proxy.alive())

    def test_explain_shows_it(self):
        d = H.Workdir.new("routing-predicate")
        path = os.path.join(d, "proxy.lua")
        with open(path, "w") as f:
            f.write(H.config_text(H.make_config(0, {"u": H.upstream("127.0.0.1:9")},
                                                PREDICATE_ROUTES)))

        def explain(line, *headers):
            args = [H.LUAPROXY, "explain", "-c", path, line]
            for h in headers:
                args += ["-H", h]
            p = subprocess.run(args, capture_output=True, timeout=H.T(20),
                               stdin=subprocess.DEVNULL, preexec_fn=H._preexec)
            return p.stdout.decode() + p.stderr.decode()
        out = explain("GET http://a.test/u/7", "X-Beta: 1")
        self.assertIn('#1 beta: matched (path "/u/:id"; predicate (a Lua function))', out)
        out = explain("GET http://a.test/u/7")
        self.assertIn("#1 beta: no (predicate (a Lua function) does not hold)", out)
        self.assertIn("#4 rest: matched", out)
        # A predicate is not run when another condition of its route failed: not named.
        self.assertIn('#2 boom: no (prefix "/boom" does not hold)\n', out)
        out = explain("GET http://a.test/boom")
        self.assertIn('#1 beta: no (path "/u/:id" does not hold)\n', out)
        self.assertIn("#2 boom: no (predicate failed (the proxy answers 500): ", out)
        self.assertIn("predicate kaboom", out)
        self.assertIn("500 (routes[2].match.predicate failed)", out)
        self.assertNotIn("#4 rest", out)


def regex_many_routes():
    # 1,000 regex routes without a literal head: one Hyperscan prefilter (in chunks) over
    # them all; route 500 uses \G, which Hyperscan refuses (always a candidate), route 700 is
    # case-insensitive; the last one answers with its captures.
    def handler(tag):
        return H.LuaRaw('function(req) req:respond(200, "%s " .. req:param("n")) end' % tag)
    routes = [{"match": {"regex": r"^/(?:re%d)/(?<n>\d+)$" % i}, "upstream": "u"}
              for i in range(999)]
    routes[500] = {"match": {"regex": r"\G/g500/(?<n>\d+)$"}, "handler": handler("g")}
    routes[700] = {"match": {"regex": r"(?i)^/(?:CI)/(?<n>\d+)$"}, "handler": handler("ci")}
    routes.append({"match": {"regex": r"^/(?:last)/(?<n>\d+)$"}, "handler": handler("last")})
    return routes


class RegexManyTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("re")
        cls.proxy = cls.start_proxy({"u": H.upstream(cls.origin.address())},
                                    regex_many_routes(), workers=1)

    def test_the_last_of_1000_regex_routes(self):
        p = self.proxy.port
        r = H.get(p, "/last/42")
        self.assertEqual((r.status, r.body), (200, b"last 42"))
        r = H.get(p, "/g500/7")
        self.assertEqual((r.status, r.body), (200, b"g 7"))
        r = H.get(p, "/ci/5")
        self.assertEqual((r.status, r.body), (200, b"ci 5"))
        self.assertEqual(H.get(p, "/re998/1").header("X-Origin-Id"), "re")
        self.assertEqual(H.get(p, "/last/x").status, 404)


class ShadowWarningTest(H.ProxyTestCase):
    def test_t_warns_about_routes_that_can_never_match(self):
        d = H.Workdir.new("routing-shadow")
        cfg = H.make_config(0, {"u": H.upstream("127.0.0.1:9")}, [
            {"match": {"prefix": "/api"}, "upstream": "u"},
            {"match": {"prefix": "/api/v1"}, "upstream": "u"},
            {"match": {"host": "*.example.com"}, "upstream": "u"},
            {"match": {"host": "a.example.com", "path": "/x"}, "upstream": "u"},
            {"match": {"prefix": "/b", "methods": ["GET"]}, "upstream": "u"},
            {"match": {"prefix": "/b/c"}, "upstream": "u"},
            {"name": "user", "match": {"path": "/users/:id"}, "upstream": "u"},
            {"name": "me", "match": {"path": "/users/me"}, "upstream": "u"},
            {"match": {"path": "/users/:uid"}, "upstream": "u"},
        ])
        path = os.path.join(d, "proxy.lua")
        with open(path, "w") as f:
            f.write(H.config_text(cfg))
        p = subprocess.run([H.LUAPROXY, "-t", "-c", path], capture_output=True,
                           timeout=H.T(20), stdin=subprocess.DEVNULL, preexec_fn=H._preexec)
        err = p.stderr.decode("utf-8", "replace")
        self.assertEqual(H.sanitizer_errors(err), [], err)
        self.assertEqual(p.returncode, 0, err)
        self.assertIn("routes[2] can never match: routes[1] before it takes all its requests", err)
        self.assertIn("routes[4] can never match: routes[3]", err)
        self.assertNotIn("routes[6] can never match", err)  # routes[5] only takes GET
        # Path patterns, and routes named by their names.
        self.assertIn("routes[8] (me) can never match: routes[7] (user) before it", err)
        self.assertIn("routes[9] can never match: routes[7] (user) before it", err)
        self.assertEqual(err.count("can never match"), 4, err)


if __name__ == "__main__":
    H.main()
