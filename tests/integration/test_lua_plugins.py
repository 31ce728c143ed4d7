#!/usr/bin/env python3
"""The bundled plugins end to end through the real engine, each as its page in
docs/plugins/ describes it: router, headers, request_id, redirect, ab.

Origins are lp_origin processes told apart by X-Origin-Id; /headers shows what reached
them, /echo (X-Echo-Method) the method."""

import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua"))
import luatest as L  # noqa: E402
from luatest import H  # noqa: E402

R = H.LuaRaw
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def route(prefix, **kw):
    r = {"match": {"prefix": prefix}}
    r.update(kw)
    return r


def fnv1a(s):
    h = 2166136261
    for ch in s.encode():
        h ^= ch
        h = (h * 16777619) & 0xFFFFFFFF
    return h


class PluginTestCase(L.LuaTestCase):
    ORIGINS = ("a", "b", "c", "d")

    @classmethod
    def start_origins(cls):
        cls.origins = {i: cls.start_origin(i) for i in cls.ORIGINS}
        return {i: H.upstream(o.address()) for i, o in cls.origins.items()}

    def origin_of(self, r):
        return r.header("X-Origin-Id")

    def url_at_origin(self, r):
        self.assertEqual(r.status, 200, r)
        return r.json()["url"]


# =============================================================================== router

ROUTER_RULES = [
    {"host": "api.example.com", "prefix": "/v1/", "upstream": "b", "strip_prefix": True},
    {"pattern": "^/users/(%d+)/posts/(%d+)$", "rewrite": "/headers?user=%1&post=%2",
     "upstream": "c"},
    {"methods": ["POST", "put"], "prefix": "/upload", "upstream": "c", "rewrite": "/echo"},
    {"headers": {"X-Canary": "1"}, "upstream": "b"},
    {"query": {"beta": "1"}, "upstream": "c"},
    {"host": "*.static.test", "upstream": "b"},
    {"path": "/exact", "rewrite": "/headers", "upstream": "c"},
    {"prefix": "/keepq/", "rewrite": "/headers", "upstream": "b"},
    {"prefix": "/dropq/", "rewrite": "/headers?", "upstream": "b"},
    {"pattern": "^/whole/.*$", "rewrite": "/headers?was=%0", "upstream": "c"},
]


class RouterTest(PluginTestCase):
    @classmethod
    def setUpClass(cls):
        ups = cls.start_origins()
        routes = [
            route("/nodefault/", upstream="a",
                  plugins=[{"name": "router", "rules": [
                      {"path": "/nodefault/headers", "upstream": "b"}]}]),
            route("/strip/", upstream="c", plugins=[{"name": "router", "rules": [
                {"prefix": "/strip/", "strip_prefix": True}]}]),
            route("/", plugins=[{"name": "router", "rules": ROUTER_RULES,
                                 "default_upstream": "d"}],
                  handler=R('''function(req)
                    req:set_header("X-Route-Rule", tostring(req.ctx.route_rule))
                  end''')),
        ]
        cls.proxy = cls.start_lua_proxy(ups, routes, workers=1)

    def rule_seen(self, r):
        return L.hvalues(L.origin_headers(r), "X-Route-Rule")

    def test_host_prefix_strip(self):
        for host in ("api.example.com", "API.Example.COM", "api.example.com:8080"):
            with self.subTest(host=host):
                r = self.get("/v1/headers?q=1", host=host)
                self.assertEqual(self.origin_of(r), "b")
                self.assertEqual(self.url_at_origin(r), "/headers?q=1")
                self.assertEqual(self.rule_seen(r), ["1"])
        r = self.get("/v1/", host="api.example.com")
        self.assertEqual((r.status, self.origin_of(r), r.body), (200, "b", b"hello"))
        # another host: the rule does not match, the default upstream takes it
        r = self.get("/v1/headers", host="www.example.com")
        self.assertEqual(self.origin_of(r), "d")

    def test_pattern_rewrite_with_captures(self):
        r = self.get("/users/42/posts/7")
        self.assertEqual(self.origin_of(r), "c")
        self.assertEqual(self.url_at_origin(r), "/headers?user=42&post=7")
        self.assertEqual(self.rule_seen(r), ["2"])
        # a rewrite bringing its own query replaces the request's
        r = self.get("/users/1/posts/2?z=9")
        self.assertEqual(self.url_at_origin(r), "/headers?user=1&post=2")
        # no match (not digits, or anchored end)
        self.assertEqual(self.origin_of(self.get("/users/x/posts/7")), "d")
        self.assertEqual(self.origin_of(self.get("/users/1/posts/2/more")), "d")

    def test_whole_match_capture(self):
        r = self.get("/whole/thing")
        self.assertEqual(self.url_at_origin(r), "/headers?was=/whole/thing")

    def test_methods(self):
        for m in ("POST", "PUT"):
            with self.subTest(method=m):
                r = self.get("/upload/x", method=m, body=b"data")
                self.assertEqual(self.origin_of(r), "c")
                self.assertEqual(r.header("X-Echo-Method"), m)
                self.assertEqual(r.body, b"data")
        r = self.get("/upload/x")
        self.assertEqual(self.origin_of(r), "d")
        self.assertEqual(r.status, 404)

    def test_headers_condition(self):
        r = self.get("/headers", headers={"X-Canary": "1"})
        self.assertEqual(self.origin_of(r), "b")
        self.assertEqual(self.rule_seen(r), ["4"])
        self.assertEqual(self.origin_of(self.get("/headers", headers={"X-Canary": "2"})), "d")
        self.assertEqual(self.origin_of(self.get("/headers", headers={"x-canary": "1"})), "b")

    def test_query_condition(self):
        for q in ("beta=1", "a=2&beta=1", "beta=%31"):
            with self.subTest(q=q):
                r = self.get("/headers?" + q)
                self.assertEqual(self.origin_of(r), "c")
                self.assertEqual(self.url_at_origin(r), "/headers?" + q)
        self.assertEqual(self.origin_of(self.get("/headers?beta=2")), "d")
        self.assertEqual(self.origin_of(self.get("/headers?betax=1")), "d")

    def test_first_match_wins(self):
        # rules 4 (X-Canary) and 5 (beta=1) both match: 4 comes first
        r = self.get("/headers?beta=1", headers={"X-Canary": "1"})
        self.assertEqual(self.origin_of(r), "b")
        self.assertEqual(self.rule_seen(r), ["4"])

    def test_wildcard_host(self):
        for host in ("img.static.test", "a.b.static.test", "IMG.STATIC.TEST:81"):
            with self.subTest(host=host):
                self.assertEqual(self.origin_of(self.get("/", host=host)), "b")
        self.assertEqual(self.origin_of(self.get("/", host="static.test")), "d")
        self.assertEqual(self.origin_of(self.get("/", host="xstatic.test")), "d")

    def test_exact_path_and_query_carried(self):
        r = self.get("/exact")
        self.assertEqual((self.origin_of(r), self.url_at_origin(r)), ("c", "/headers"))
        r = self.get("/exact?q=1&r=2")
        self.assertEqual(self.url_at_origin(r), "/headers?q=1&r=2")
        self.assertEqual(self.origin_of(self.get("/exact/")), "d")
        self.assertEqual(self.origin_of(self.get("/exactly")), "d")

    def test_rewrite_keeps_or_drops_query(self):
        r = self.get("/keepq/x?y=1")
        self.assertEqual(self.url_at_origin(r), "/headers?y=1")
        r = self.get("/dropq/x?y=1")
        # "/b?" drops the query (an empty query left behind is the same thing)
        self.assertIn(self.url_at_origin(r), ("/headers", "/headers?"))

    def test_rule_without_upstream_only_rewrites(self):
        # the rule strips the prefix; the route's upstream (c) stays
        r = self.get("/strip/headers?k=v")
        self.assertEqual(self.origin_of(r), "c")
        self.assertEqual(self.url_at_origin(r), "/headers?k=v")

    def test_default_upstream(self):
        r = self.get("/headers")
        self.assertEqual(self.origin_of(r), "d")
        self.assertEqual(self.rule_seen(r), ["nil"])

    def test_without_default_route_upstream_stays(self):
        r = self.get("/nodefault/headers")
        self.assertEqual(self.origin_of(r), "b")
        r = self.get("/nodefault/other")
        self.assertEqual((r.status, self.origin_of(r)), (404, "a"))


class RouterGlobalTest(PluginTestCase):
    """A global router: it also routes requests no config route matches."""

    @classmethod
    def setUpClass(cls):
        ups = cls.start_origins()
        cls.proxy = cls.start_lua_proxy(
            ups, [route("/route-a/", upstream="a", strip_prefix=True)], workers=1,
            plugins=[{"name": "router", "rules": [
                {"prefix": "/to-b/", "upstream": "b", "strip_prefix": True},
                {"host": "fallback.test", "upstream": "c"}]}])

    def test_rule_routes(self):
        r = self.get("/to-b/headers")
        self.assertEqual((self.origin_of(r), self.url_at_origin(r)), ("b", "/headers"))

    def test_route_without_match_uses_route(self):
        r = self.get("/route-a/headers")
        self.assertEqual((self.origin_of(r), self.url_at_origin(r)), ("a", "/headers"))

    def test_request_matching_no_route_routed_by_global_plugin(self):
        r = self.get("/anything", host="fallback.test")
        self.assertEqual((r.status, self.origin_of(r)), (404, "c"))
        r = self.get("/headers", host="fallback.test")
        self.assertEqual((r.status, self.origin_of(r)), (200, "c"))

    def test_no_route_no_rule_is_404(self):
        r = self.get("/nowhere", host="other.test")
        self.assertEqual(r.status, 404)
        self.assertIsNone(self.origin_of(r))


# =============================================================================== headers

class HeadersPluginTest(PluginTestCase):
    ORIGINS = ("a", "b")

    @classmethod
    def setUpClass(cls):
        ups = cls.start_origins()
        headers_conf = {
            "name": "headers",
            "request": {
                "set": {"X-Env": "prod", "X-Client": "$client_ip", "X-Host-Seen": "${host}_h",
                        "X-Rid": "$request_id", "X-Up": "$upstream", "X-Lit": "$$5 $foo",
                        "X-Replace": "new", "X-Method": "$method", "X-Path": "$path",
                        "X-Uri": "$uri", "X-Scheme": "$scheme"},
                "add": {"X-Tag": ["a", "b"], "X-Replace": "added", "X-Single": "one"},
                "remove": ["X-Internal-Debug", "x-both"],
            },
            "response": {
                "set": {"X-Status": "$status", "X-Resp-Rid": "$request_id",
                        "X-Resp-Up": "$upstream", "X-Origin-Id": "masked"},
                "add": {"Set-Cookie": ["c1=1", "c2=2"], "X-Both": "1"},
                "remove": ["X-Conn-Id", "X-Conn-Requests", "X-Both"],
            },
        }
        routes = [
            route("/local", handler=R('''function(req)
                    return req:respond(403, "no", { ["X-Conn-Id"] = "local" })
                  end''')),
            route("/to-b/", plugins=[{"name": "router", "rules": [
                {"prefix": "/to-b/", "upstream": "b", "strip_prefix": True}]}]),
            route("/", upstream="a"),
        ]
        cls.proxy = cls.start_lua_proxy(ups, routes, workers=1,
                                        plugins=[{"name": "request_id"}, headers_conf])

    def test_request_set_add_remove_and_variables(self):
        r = self.get("/headers?q=1", host="Web.Test:8080",
                     headers=[("X-Replace", "old"), ("X-Tag", "z"), ("X-Internal-Debug", "1"),
                              ("x-internal-debug", "2"), ("X-Env", "dev"), ("X-Both", "b")])
        self.assertEqual(r.status, 200)
        h = L.origin_headers(r)
        v = lambda n: L.hvalues(h, n)  # noqa: E731
        self.assertEqual(v("X-Env"), ["prod"])
        self.assertEqual(v("X-Client"), ["127.0.0.1"])
        self.assertEqual(v("X-Host-Seen"), ["web.test_h"])
        self.assertEqual(v("X-Up"), ["a"])
        self.assertEqual(v("X-Lit"), ["$5 $foo"])
        self.assertEqual(v("X-Replace"), ["new", "added"])
        self.assertEqual(v("X-Tag"), ["z", "a", "b"])
        self.assertEqual(v("X-Single"), ["one"])
        self.assertEqual(v("X-Internal-Debug"), [])
        self.assertEqual(v("X-Both"), [])
        self.assertEqual(v("X-Method"), ["GET"])
        self.assertEqual(v("X-Path"), ["/headers"])
        self.assertEqual(v("X-Uri"), ["/headers?q=1"])
        self.assertEqual(v("X-Scheme"), ["http"])
        # $request_id: the request_id plugin (priority 3000) ran first
        rid = v("X-Request-Id")
        self.assertEqual(len(rid), 1)
        self.assertEqual(v("X-Rid"), rid)
        # names sent with the case written in the config
        names = [n for n, _ in r.json()["headers"]]
        self.assertIn("X-Env", names)
        self.assertIn("X-Tag", names)

    def test_upstream_variable_after_router(self):
        r = self.get("/to-b/headers")
        self.assertEqual(r.json()["url"], "/headers")
        self.assertEqual(L.hvalues(L.origin_headers(r), "X-Up"), ["b"])
        self.assertEqual(r.header("X-Resp-Up"), "b")

    def test_response_set_add_remove(self):
        r = self.get("/")
        self.assertEqual((r.status, r.body), (200, b"hello"))
        self.assertEqual(r.header_all("X-Origin-Id"), ["masked"])
        self.assertEqual(r.header("X-Status"), "200")
        self.assertEqual(r.header("X-Resp-Up"), "a")
        self.assertEqual(r.header("X-Resp-Rid"), r.header("X-Request-Id"))
        self.assertIsNotNone(r.header("X-Request-Id"))
        self.assertIsNone(r.header("X-Conn-Id"))
        self.assertIsNone(r.header("X-Conn-Requests"))
        self.assertEqual(r.header_all("Set-Cookie"), ["c1=1", "c2=2"])
        # remove, then set, then add: X-Both (removed and added) is there once
        self.assertEqual(r.header_all("X-Both"), ["1"])

    def test_status_variable_follows_the_upstream(self):
        for code in (201, 404, 503):
            with self.subTest(code=code):
                r = self.get("/status?code=%d" % code)
                self.assertEqual(r.status, code)
                self.assertEqual(r.header("X-Status"), str(code))

    def test_local_answers_are_decorated(self):
        r = self.get("/local")
        self.assertEqual((r.status, r.body), (403, b"no"))
        self.assertEqual(r.header("X-Status"), "403")
        self.assertIsNone(r.header("X-Conn-Id"))
        self.assertEqual(r.header_all("Set-Cookie"), ["c1=1", "c2=2"])
        self.assertIsNotNone(r.header("X-Request-Id"))
        self.assertEqual(r.header("X-Resp-Rid"), r.header("X-Request-Id"))

    def test_status_variable_in_request_part_is_config_error(self):
        cfg = H.make_config(18999, {"a": H.upstream("127.0.0.1:1")}, [route("/", upstream="a")],
                            plugins=[{"name": "headers",
                                      "request": {"set": {"X-S": "$status"}}}])
        rc, out, err, path = L.check_config(H.config_text(cfg))
        self.assertNotEqual(rc, 0)
        self.assertIn("plugins[1](headers)", err)
        self.assertIn("request.set.X-S", err)
        cfg["plugins"] = [{"name": "headers", "request": {"set": {"Bad Name": "x"}}}]
        rc, out, err, path = L.check_config(H.config_text(cfg))
        self.assertNotEqual(rc, 0)
        self.assertIn("plugins[1](headers).request.set", err)


# =============================================================================== request_id

class RequestIdTest(PluginTestCase):
    ORIGINS = ("a",)

    @classmethod
    def setUpClass(cls):
        ups = cls.start_origins()
        routes = [
            route("/custom/", upstream="a", strip_prefix=True,
                  plugins=[{"name": "request_id", "header": "X-Trace-Id", "generate": "hex",
                            "trust_incoming": False, "echo": False}]),
            route("/local", handler=R('''function(req)
                    return req:respond(200, tostring(req.ctx.request_id))
                  end''')),
            route("/var", handler=R('''function(req)
                    return req:respond(200, tostring(req:var("request_id")))
                  end''')),
            route("/copied/", upstream="a", strip_prefix=True,
                  plugins=[{"name": "headers", "request": {"set": {"X-Copied": "$request_id"}},
                            "response": {"set": {"X-Copied": "$request_id"}}}]),
            route("/", upstream="a"),
        ]
        cls.proxy = cls.start_lua_proxy(ups, routes, workers=1,
                                        plugins=[{"name": "request_id"}])

    def ids_at_origin(self, r, name="X-Request-Id"):
        return L.hvalues(L.origin_headers(r), name)

    def test_generated_uuid4_sent_upstream_and_echoed(self):
        r = self.get("/headers")
        ids = self.ids_at_origin(r)
        self.assertEqual(len(ids), 1)
        self.assertRegex(ids[0], UUID4)
        self.assertEqual(r.header_all("X-Request-Id"), ids)

    def test_ids_unique(self):
        seen = set()
        with H.Client(self.proxy.port) as c:
            for _ in range(200):
                r = c.request("GET", "/")
                rid = r.header("X-Request-Id")
                self.assertRegex(rid, UUID4)
                seen.add(rid)
        self.assertEqual(len(seen), 200)

    def test_valid_incoming_id_kept(self):
        for rid in ("abc-123", "A.b_c:d-9", "x" * 200):
            with self.subTest(rid=rid):
                r = self.get("/headers", headers={"X-Request-Id": rid})
                self.assertEqual(self.ids_at_origin(r), [rid])
                self.assertEqual(r.header("X-Request-Id"), rid)

    def test_invalid_incoming_id_replaced(self):
        for rid in ("has space", "semi;colon", "x" * 201, "\u00e9t\u00e9".encode().decode(
                "latin-1")):
            with self.subTest(rid=rid):
                r = self.get("/headers", headers={"X-Request-Id": rid})
                ids = self.ids_at_origin(r)
                self.assertEqual(len(ids), 1)
                self.assertRegex(ids[0], UUID4)
                self.assertEqual(r.header("X-Request-Id"), ids[0])

    def test_repeated_incoming_header_becomes_one(self):
        r = self.get("/headers", headers=[("X-Request-Id", "first-id"),
                                          ("X-Request-Id", "second-id")])
        ids = self.ids_at_origin(r)
        self.assertEqual(len(ids), 1)
        self.assertEqual(r.header_all("X-Request-Id"), ids)

    def test_ctx_and_var(self):
        r = self.get("/local", headers={"X-Request-Id": "from-client-1"})
        self.assertEqual(r.body, b"from-client-1")
        r = self.get("/var")
        self.assertRegex(r.body.decode(), UUID4)

    def test_local_answer_echoes_id(self):
        r = self.get("/local")
        self.assertEqual(r.status, 200)
        self.assertRegex(r.body.decode(), UUID4)
        self.assertEqual(r.header("X-Request-Id"), r.body.decode())

    def test_visible_to_headers_plugin(self):
        r = self.get("/copied/headers", headers={"X-Request-Id": "copy-me"})
        self.assertEqual(L.hvalues(L.origin_headers(r), "X-Copied"), ["copy-me"])
        self.assertEqual(r.header("X-Copied"), "copy-me")
        r = self.get("/copied/headers")
        rid = L.hvalues(L.origin_headers(r), "X-Request-Id")
        self.assertEqual(L.hvalues(L.origin_headers(r), "X-Copied"), rid)

    def test_custom_header_hex_untrusted_no_echo(self):
        r = self.get("/custom/headers", headers={"X-Trace-Id": "client-chosen"})
        ids = self.ids_at_origin(r, "X-Trace-Id")
        self.assertEqual(len(ids), 1)
        self.assertRegex(ids[0], HEX32)
        self.assertIsNone(r.header("X-Trace-Id"))


# =============================================================================== redirect

class RedirectTest(PluginTestCase):
    ORIGINS = ("a",)

    @classmethod
    def setUpClass(cls):
        ups = cls.start_origins()
        rules = [
            {"host": "old.test", "to": "http://www.new.test$uri"},
            {"path": "/login", "to": "/account/login", "status": 302},
            {"prefix": "/blog/", "to": "http://blog.test$path", "status": 308},
            {"pattern": "^/u/(%w+)$", "to": "/users/%1"},
            {"prefix": "/keep/", "to": "/kept"},
            {"prefix": "/nokeep/", "to": "/dropped", "keep_query": False},
            {"prefix": "/own/", "to": "/own-target?fixed=1"},
            {"host": "*.wild.test", "to": "http://wild.test$path", "status": 307},
            {"pattern": "^/pct/(%d+)$", "to": "/a%%20b/%1/%0", "status": 303},
            {"path": "/vars", "to": "/v?m=$method&h=${host}&s=$scheme&c=$client_ip"},
            {"path": "/rid", "to": "/r/$request_id"},
        ]
        routes = [
            route("/", upstream="a", plugins=[{"name": "redirect", "rules": rules},
                                              {"name": "headers", "response": {
                                                  "set": {"X-Sec": "on"}}}]),
        ]
        cls.proxy = cls.start_lua_proxy(ups, routes, workers=1,
                                        plugins=[{"name": "request_id"}])

    def redirect(self, path, host="a.test", method="GET", **kw):
        r = self.get(path, host=host, method=method, **kw)
        self.assertIsNone(r.header("X-Origin-Id"), "the origin answered")
        return r.status, r.header("Location")

    def test_host_rule_with_uri(self):
        self.assertEqual(self.redirect("/p/q?x=1", host="old.test"),
                         (301, "http://www.new.test/p/q?x=1"))
        self.assertEqual(self.redirect("/", host="OLD.test:8080"),
                         (301, "http://www.new.test/"))

    def test_path_rule(self):
        self.assertEqual(self.redirect("/login"), (302, "/account/login"))
        self.assertEqual(self.redirect("/login?next=/x"), (302, "/account/login?next=/x"))

    def test_prefix_rule(self):
        self.assertEqual(self.redirect("/blog/2024/post"), (308, "http://blog.test/blog/2024/post"))
        self.assertEqual(self.redirect("/blog/a?b=c"), (308, "http://blog.test/blog/a?b=c"))

    def test_pattern_rule_captures(self):
        self.assertEqual(self.redirect("/u/alice"), (301, "/users/alice"))
        self.assertEqual(self.redirect("/pct/12"), (303, "/a%20b/12//pct/12"))

    def test_keep_query(self):
        self.assertEqual(self.redirect("/keep/x?a=1&b=2"), (301, "/kept?a=1&b=2"))
        self.assertEqual(self.redirect("/nokeep/x?a=1"), (301, "/dropped"))
        self.assertEqual(self.redirect("/own/x?a=1"), (301, "/own-target?fixed=1"))

    def test_wildcard_host(self):
        self.assertEqual(self.redirect("/w", host="x.wild.test"), (307, "http://wild.test/w"))
        r = self.get("/", host="wild.test")
        self.assertEqual((r.status, r.header("X-Origin-Id")), (200, "a"))

    def test_variables(self):
        self.assertEqual(self.redirect("/vars", host="V.Test", method="POST", body=b""),
                         (301, "/v?m=POST&h=v.test&s=http&c=127.0.0.1"))

    def test_request_id_variable(self):
        status, loc = self.redirect("/rid", headers={"X-Request-Id": "rid-42"})
        self.assertEqual((status, loc), (301, "/r/rid-42"))

    def test_no_match_goes_upstream(self):
        for p in ("/", "/login/x", "/u/a/b", "/blog"):
            with self.subTest(path=p):
                r = self.get(p)
                self.assertEqual(r.header("X-Origin-Id"), "a")
                self.assertNotIn(r.status, (301, 302, 303, 307, 308))

    def test_redirect_decorated_by_response_phases(self):
        r = self.get("/login", headers={"X-Request-Id": "echo-me"})
        self.assertEqual(r.status, 302)
        self.assertEqual(r.header("X-Request-Id"), "echo-me")
        self.assertEqual(r.header("X-Sec"), "on")


class RedirectHttpsTest(PluginTestCase):
    """https = true: luaproxy only serves http for now, so everything moves."""
    ORIGINS = ("a",)

    @classmethod
    def setUpClass(cls):
        ups = cls.start_origins()
        cls.proxy = cls.start_lua_proxy(
            ups, [route("/", upstream="a")], workers=1,
            plugins=[{"name": "redirect", "https": True,
                      "rules": [{"path": "/login", "to": "/elsewhere", "status": 302}]}])

    def test_get_and_head_301(self):
        for m in ("GET", "HEAD"):
            with self.subTest(method=m):
                r = self.get("/a/b?c=1", host="Shop.Test:8080", method=m)
                self.assertEqual(r.status, 301)
                self.assertEqual(r.header("Location"), "https://shop.test/a/b?c=1")
                self.assertIsNone(r.header("X-Origin-Id"))

    def test_other_methods_308(self):
        for m in ("POST", "PUT", "DELETE"):
            with self.subTest(method=m):
                r = self.get("/form", host="shop.test", method=m, body=b"x=1")
                self.assertEqual(r.status, 308)
                self.assertEqual(r.header("Location"), "https://shop.test/form")

    def test_https_runs_before_rules(self):
        r = self.get("/login", host="shop.test")
        self.assertEqual((r.status, r.header("Location")), (301, "https://shop.test/login"))

    def test_no_host_left_alone(self):
        r = self.get("/", host=None, version="HTTP/1.0")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("X-Origin-Id"), "a")


# =============================================================================== ab

class ABTest(PluginTestCase):
    ORIGINS = ("a", "b")

    @classmethod
    def setUpClass(cls):
        ups = cls.start_origins()
        ab = lambda **kw: dict({"name": "ab", "response_header": "X-AB-Arm"}, **kw)  # noqa
        routes = [
            route("/w/", upstream="a", strip_prefix=True, plugins=[ab(sticky="none", arms=[
                {"name": "a", "upstream": "a", "weight": 75},
                {"name": "b", "upstream": "b", "weight": 25}])]),
            route("/c/", upstream="a", strip_prefix=True, plugins=[ab(cookie_ttl=3600, arms=[
                {"name": "a", "upstream": "a"}, {"name": "b", "upstream": "b"}])]),
            route("/h/", upstream="a", strip_prefix=True, plugins=[ab(sticky="header", arms=[
                {"name": "a", "upstream": "a", "weight": 1},
                {"name": "b", "upstream": "b", "weight": 2}])]),
            route("/ip/", upstream="a", strip_prefix=True, plugins=[ab(sticky="ip", arms=[
                {"name": "a", "upstream": "a", "weight": 1},
                {"name": "b", "upstream": "b", "weight": 1}])]),
            route("/z/", upstream="a", strip_prefix=True, plugins=[ab(cookie="exp1", arms=[
                {"name": "a", "upstream": "a", "weight": 1},
                {"name": "b", "upstream": "b", "weight": 0}])]),
            route("/noheader/", upstream="a", strip_prefix=True, plugins=[
                {"name": "ab", "override_header": "", "override_query": "",
                 "arms": [{"name": "a", "upstream": "a", "weight": 1},
                          {"name": "b", "upstream": "b", "weight": 0}]}]),
            route("/routed/", upstream="a", strip_prefix=True, plugins=[
                {"name": "router", "rules": [{"upstream": "a"}]},
                ab(sticky="none", arms=[{"name": "bb", "upstream": "b"}])]),
        ]
        cls.proxy = cls.start_lua_proxy(ups, routes, workers=1)

    def arm(self, r):
        self.assertEqual(r.status, 200, r)
        arm = r.header("X-AB-Arm")
        self.assertEqual(arm, r.header("X-Origin-Id"), "the arm header names another arm "
                         "than the upstream that answered")
        return arm

    def cookie_of(self, r, name="lp_ab"):
        for v in r.header_all("Set-Cookie"):
            if v.startswith(name + "="):
                return v
        return None

    def test_weights(self):
        counts = {"a": 0, "b": 0}
        with H.Client(self.proxy.port) as c:
            for _ in range(400):
                counts[self.arm(c.request("GET", "/w/"))] += 1
        self.assertTrue(260 <= counts["a"] <= 340, counts)
        # sticky = none: never a cookie
        r = self.get("/w/")
        self.assertIsNone(self.cookie_of(r))

    def test_cookie_set_on_first_visit_and_sticky(self):
        r = self.get("/c/")
        arm = self.arm(r)
        self.assertEqual(self.cookie_of(r), "lp_ab=%s; Path=/; Max-Age=3600; HttpOnly" % arm)
        for _ in range(20):
            r = self.get("/c/", headers={"Cookie": "lp_ab=" + arm})
            self.assertEqual(self.arm(r), arm)
            self.assertIsNone(self.cookie_of(r), "cookie re-sent to a user who has it")

    def test_cookie_among_others(self):
        for cookie in ("x=1; lp_ab=b; y=2", "lp_ab=b", "a_lp_ab=a; lp_ab=b", "x=1;lp_ab=b"):
            with self.subTest(cookie=cookie):
                r = self.get("/c/", headers={"Cookie": cookie})
                self.assertEqual(self.arm(r), "b")

    def test_both_arms_drawn_without_cookie(self):
        seen = set()
        for _ in range(60):
            seen.add(self.arm(self.get("/c/")))
        self.assertEqual(seen, {"a", "b"})

    def test_unknown_cookie_value_drawn_again(self):
        r = self.get("/c/", headers={"Cookie": "lp_ab=zzz"})
        arm = self.arm(r)
        self.assertEqual(self.cookie_of(r), "lp_ab=%s; Path=/; Max-Age=3600; HttpOnly" % arm)

    def test_override_header_moves_cookie(self):
        r = self.get("/c/", headers={"Cookie": "lp_ab=b", "X-AB-Arm": "a"})
        self.assertEqual(self.arm(r), "a")
        self.assertEqual(self.cookie_of(r), "lp_ab=a; Path=/; Max-Age=3600; HttpOnly")

    def test_override_query(self):
        for _ in range(5):
            r = self.get("/c/?ab_arm=b", headers={"Cookie": "lp_ab=a"})
            self.assertEqual(self.arm(r), "b")
        # header before query
        r = self.get("/c/?ab_arm=b", headers={"X-AB-Arm": "a"})
        self.assertEqual(self.arm(r), "a")

    def test_unknown_override_ignored(self):
        r = self.get("/c/?ab_arm=nope", headers={"Cookie": "lp_ab=b", "X-AB-Arm": "nope"})
        self.assertEqual(self.arm(r), "b")

    def test_header_hash_stickiness(self):
        # FNV-1a 32-bit of the value modulo the total weight (3): < 1 is arm a, else b
        for i in range(25):
            user = "user-%d" % i
            want = "a" if fnv1a(user) % 3 < 1 else "b"
            for _ in range(3):
                r = self.get("/h/", headers={"X-User-Id": user})
                self.assertEqual(self.arm(r), want, user)
                self.assertIsNone(self.cookie_of(r))

    def test_ip_hash_stickiness(self):
        want = "a" if fnv1a("127.0.0.1") % 2 < 1 else "b"
        for _ in range(10):
            r = self.get("/ip/")
            self.assertEqual(self.arm(r), want)
            self.assertIsNone(self.cookie_of(r))

    def test_header_missing_is_drawn(self):
        seen = set()
        for _ in range(60):
            seen.add(self.arm(self.get("/h/")))
        self.assertEqual(seen, {"a", "b"})

    def test_zero_weight_releases_cookie_users_but_can_be_forced(self):
        r = self.get("/z/", headers={"Cookie": "exp1=b"})
        self.assertEqual(self.arm(r), "a")
        self.assertEqual(self.cookie_of(r, "exp1"), "exp1=a; Path=/; Max-Age=86400; HttpOnly")
        for _ in range(30):
            self.assertEqual(self.arm(self.get("/z/")), "a")
        r = self.get("/z/", headers={"X-AB-Arm": "b"})
        self.assertEqual(self.arm(r), "b")

    def test_overrides_disabled(self):
        for _ in range(10):
            r = self.get("/noheader/?ab_arm=b", headers={"X-AB-Arm": "b"})
            self.assertEqual(r.header("X-Origin-Id"), "a")
            self.assertIsNone(r.header("X-AB-Arm"))

    def test_ab_overrides_router(self):
        r = self.get("/routed/")
        self.assertEqual(r.header("X-Origin-Id"), "b")
        self.assertEqual(r.header("X-AB-Arm"), "bb")


if __name__ == "__main__":
    H.main()
