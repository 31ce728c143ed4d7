#!/usr/bin/env python3
"""The cors plugin end to end (docs/plugins/cors.md): preflights answered by the proxy
(the upstream of those routes is a dead port, so an answer that reached it would be a
502), CORS headers on proxied answers, on the proxy's own error pages and on other
plugins' local answers, Vary merged with the upstream's, and huge or garbage Origin
headers refused without a 500."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua"))
import luatest as L  # noqa: E402
from luatest import H  # noqa: E402

DENY = r'''
local P = { name = "deny", priority = 1000, schema = { fields = {} } }
function P.request(req) return req:respond(401, "no\n", { ["WWW-Authenticate"] = "Basic" }) end
return P
'''

VARY = r'''
local P = { name = "vary_up", priority = 3000, schema = { fields = {} } }
function P.response(req) req:set_resp_header("Vary", "Accept-Language") end
return P
'''

ORIGINS = {"name": "cors", "origins": ["https://app.example.com", "https://*.example.org"],
           "origin_regex": [r"https://dev-\d+\.example\.net"], "credentials": True,
           "methods": ["GET", "POST", "PUT"], "allow_headers": ["X-Token", "Content-Type"],
           "expose_headers": ["X-Total"], "max_age": 1200}


def route(prefix, upstream, **kw):
    r = {"match": {"prefix": prefix}, "upstream": upstream}
    r.update(kw)
    return r


class CorsTest(L.LuaTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("o")
        ups = {
            "o": H.upstream(cls.origin.address()),
            "dead": H.upstream("127.0.0.1:%d" % H.dead_port(), retries=0,
                               health={"passive": {"failures": 0}}),
        }
        routes = [
            route("/star/", "dead", plugins=[{"name": "cors"}]),
            route("/dead/", "dead", plugins=[dict(ORIGINS)]),
            route("/deny/", "o", plugins=[dict(ORIGINS), {"name": "deny"}]),
            route("/vary/", "o", strip_prefix=True, plugins=[dict(ORIGINS), {"name": "vary_up"}]),
            route("/", "o", plugins=[dict(ORIGINS)]),
        ]
        cls.proxy = cls.start_lua_proxy(ups, routes, files={"plugins/deny.lua": DENY,
                                                            "plugins/vary_up.lua": VARY},
                                        workers=1)

    def preflight(self, path, origin, method="PUT", req_headers=None):
        h = {"Origin": origin, "Access-Control-Request-Method": method}
        if req_headers:
            h["Access-Control-Request-Headers"] = req_headers
        return H.get(self.proxy.port, path, method="OPTIONS", headers=h)

    def test_preflight_answered_locally(self):
        r = self.preflight("/dead/x", "https://app.example.com", req_headers="x-token")
        self.assertEqual(r.status, 204, r)
        self.assertEqual(r.body, b"")
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "https://app.example.com")
        self.assertEqual(r.header("Access-Control-Allow-Credentials"), "true")
        self.assertEqual(r.header("Access-Control-Allow-Methods"), "GET, POST, PUT")
        self.assertEqual(r.header("Access-Control-Allow-Headers"), "X-Token, Content-Type")
        self.assertEqual(r.header("Access-Control-Max-Age"), "1200")
        self.assertEqual(r.tokens("Vary"), ["origin"])
        for origin in ("https://a.b.example.org", "https://dev-7.example.net"):
            r = self.preflight("/dead/x", origin)
            self.assertEqual(r.status, 204)
            self.assertEqual(r.header("Access-Control-Allow-Origin"), origin)

    def test_preflight_with_star_echoes_requested_headers(self):
        r = self.preflight("/star/x", "https://whoever.test", req_headers="X-A, X-B")
        self.assertEqual(r.status, 204)
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "*")
        self.assertEqual(r.header("Access-Control-Allow-Headers"), "X-A, X-B")
        self.assertIsNone(r.header("Access-Control-Allow-Credentials"))

    def test_refused_preflight_has_no_cors_headers(self):
        for origin in ("https://evil.test", "https://example.org", "null",
                       "https://dev-1.example.net.evil.test"):
            r = self.preflight("/dead/x", origin)
            self.assertEqual(r.status, 204, (origin, r))
            self.assertIsNone(r.header("Access-Control-Allow-Origin"), origin)
            self.assertIsNone(r.header("Access-Control-Allow-Methods"), origin)
            self.assertEqual(r.tokens("Vary"), ["origin"])

    def test_actual_request_decorated_and_vary_merged(self):
        r = H.get(self.proxy.port, "/vary/fixed?size=10", headers={"Origin": "https://app.example.com"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "https://app.example.com")
        self.assertEqual(r.header("Access-Control-Expose-Headers"), "X-Total")
        self.assertEqual(r.header_all("Vary"), ["Accept-Language, Origin"])
        r = H.get(self.proxy.port, "/vary/fixed?size=10", headers={"Origin": "https://x.test"})
        self.assertIsNone(r.header("Access-Control-Allow-Origin"))
        self.assertEqual(r.header_all("Vary"), ["Accept-Language, Origin"])
        r = H.get(self.proxy.port, "/fixed?size=10")  # no Origin: still varies on it
        self.assertEqual(r.tokens("Vary"), ["origin"])

    def test_error_pages_and_local_answers_decorated(self):
        r = H.get(self.proxy.port, "/dead/x", headers={"Origin": "https://app.example.com"})
        self.assertEqual(r.status, 502, r)
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "https://app.example.com")
        r = H.get(self.proxy.port, "/deny/x", headers={"Origin": "https://app.example.com"})
        self.assertEqual(r.status, 401, r)
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "https://app.example.com")
        self.assertEqual(r.header("Access-Control-Allow-Credentials"), "true")
        # A preflight is answered before the auth plugin asks for credentials.
        r = self.preflight("/deny/x", "https://app.example.com")
        self.assertEqual(r.status, 204, r)

    def test_plain_options_goes_upstream(self):
        r = H.get(self.proxy.port, "/echo", method="OPTIONS",
                  headers={"Origin": "https://app.example.com"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("X-Echo-Method"), "OPTIONS")
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "https://app.example.com")

    def test_huge_and_garbage_origins(self):
        for origin in ("https://" + "a" * 6000 + ".example.org", "x" * 7000,
                       "\xff\xfe garbage ;,", "https://*.example.org", "", "   "):
            for path in ("/dead/x", "/fixed?size=5"):
                r = self.preflight(path, origin) if path.startswith("/dead") else \
                    H.get(self.proxy.port, path, headers={"Origin": origin})
                self.assertIn(r.status, (200, 204), (origin[:40], r))
                self.assertIsNone(r.header("Access-Control-Allow-Origin"), origin[:40])
        self.assertAlive()


if __name__ == "__main__":
    H.main()
