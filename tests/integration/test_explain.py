#!/usr/bin/env python3
"""`luaproxy explain` agrees with the engine (docs/explain.md): for several configs, each
request is explained (--json) and then sent through a real luaproxy to echoing origins
(lp_origin /headers, one origin per upstream, told apart by X-Origin-Id); the route's
upstream, the local answer's status, the path sent and the request headers the plugins
changed must be what the engine did. Also the text output names the route, why earlier
routes did not match, the shadowed routes and the network calls it refused."""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua"))
import luatest as L  # noqa: E402
from luatest import H  # noqa: E402

TAGGER = r'''
-- Routes a cookie's "b" arm to upstream b (and rewrites its path), stamps a tenant header
-- from the query, and asks an auth service (refused under explain: it goes on without).
local P = { name = "tagger", priority = 10, schema = { fields = {} } }
function P.request(req)
  local ck = req:header("Cookie") or ""
  if ck:find("ab=b", 1, true) then
    req:set_upstream("b")
    req:set_path("/headers")
  end
  local tenant = req:query("tenant")
  if tenant then req:set_header("X-Tenant", tenant) end
  req:clear_header("X-Drop")
end
return P
'''

GATE = r'''
-- Answers locally for a closed tenant; adds a header on the upstream phase.
local P = { name = "gate", priority = 20, schema = { fields = {} } }
function P.request(req)
  if req:query("tenant") == "closed" then
    return req:respond(403, "closed", { ["X-Gate"] = "closed" })
  end
end
function P.upstream(req)
  req:set_header("X-Gate", "passed")
end
return P
'''

PARAM = r'''
-- Passes the route's capture "page" on (req:param: a regex route's named group).
local P = { name = "param", priority = 5, schema = { fields = {} } }
function P.request(req)
  req:set_header("X-Page", req:param("page") or "none")
end
return P
'''

# Headers the engine itself adds or rewrites on the way upstream (docs/architecture.md):
# not the plugins' doing, so not part of explain's promise.
ENGINE_HEADERS = {"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                  "traceparent", "tracestate", "connection", "content-length",
                  "x-request-id"}


def explain(cfg_path, line, headers=(), text=False):
    args = [H.LUAPROXY, "explain", "-c", cfg_path, line]
    for h in headers:
        args += ["-H", h]
    if not text:
        args.append("--json")
    p = subprocess.run(args, capture_output=True, stdin=subprocess.DEVNULL,
                       timeout=H.T(60), preexec_fn=H._preexec)
    out = p.stdout.decode()
    assert p.returncode == 0, (p.returncode, out, p.stderr.decode())
    return out if text else json.loads(out)


class ExplainAgreesTest(L.LuaTestCase):
    CONFIGS = {
        "prefixes": [
            {"name": "v1", "match": {"prefix": "/api/v1"}, "upstream": "api",
             "strip_prefix": True, "plugins": [{"name": "gate"}]},
            {"name": "api", "match": {"prefix": "/api/"}, "upstream": "api",
             "strip_prefix": True,
             "plugins": [{"name": "headers", "request": {"set": {"X-Env": "prod"}}},
                         {"name": "tagger"}, {"name": "gate"}]},
            {"name": "all", "match": {"prefix": "/"}, "upstream": "app"},
            {"name": "never", "match": {"prefix": "/static/"}, "upstream": "app"},
        ],
        "hosts": [
            {"name": "admin", "match": {"host": "admin.test", "methods": ["POST"]},
             "upstream": "b"},
            {"name": "shop", "match": {"host": "*.shop.test",
                                       "headers": {"X-Beta": "1"}}, "upstream": "b",
             "plugins": [{"name": "tagger"}]},
            {"name": "moved", "match": {"prefix": "/old/"}, "upstream": "app",
             "plugins": [{"name": "redirect", "rules": [
                 {"prefix": "/old/", "to": "/headers", "status": 308}]}]},
            {"name": "rest", "upstream": "app",
             "plugins": [{"name": "headers", "request": {"add": {"X-Via": "rest"}}}]},
        ],
        "captures": [
            {"name": "page", "match": {"regex": "^/(?<page>head)ers$"}, "upstream": "app",
             "plugins": [{"name": "param"}]},
            {"name": "all", "match": {"prefix": "/"}, "upstream": "app",
             "plugins": [{"name": "param"}]},
        ],
    }
    REQUESTS = {
        "prefixes": [
            ("GET http://a.test/api/headers?tenant=t1", ["X-Drop: x"]),
            ("GET http://a.test/api/headers?tenant=closed", []),
            ("GET http://a.test/api/x?tenant=t2", ["Cookie: ab=b"]),
            ("GET http://a.test/headers", []),
            ("GET http://a.test/api/v1/headers", []),
            # routed as normalised (engine/pathnorm.c): not the /api/ routes
            ("GET http://a.test/api/../headers", []),
            ("GET http://a.test/x/%2e%2E/api/headers?tenant=t1", []),
        ],
        "hosts": [
            ("POST http://admin.test/headers", []),
            ("GET http://admin.test/headers", []),
            ("GET http://www.shop.test/headers?tenant=s", ["X-Beta: 1"]),
            ("GET http://www.shop.test/headers", ["X-Beta: 1", "Cookie: ab=b"]),
            ("GET http://www.shop.test/old/a", []),
            ("GET http://x.test/headers", ["X-Beta: 1"]),
        ],
        "captures": [
            ("GET http://a.test/headers", []),
            ("GET http://a.test/headers?x=1", []),
            ("GET http://a.test/x/./../h%65aders?x=1", []),
        ],
    }

    @classmethod
    def setUpClass(cls):
        cls.origins = {name: cls.start_origin(name) for name in ("app", "api", "b")}
        cls.proxies = {}
        ups = {name: H.upstream(o.address()) for name, o in cls.origins.items()}
        for key, routes in cls.CONFIGS.items():
            cls.proxies[key] = cls.start_lua_proxy(
                ups, routes, files={"plugins/tagger.lua": TAGGER, "plugins/gate.lua": GATE,
                                       "plugins/param.lua": PARAM},
                workers=1, lua=L.lua_section(fixtures=False))

    def send(self, proxy, line, headers):
        method, url = line.split(" ", 1)
        rest = url.split("://", 1)[1]
        host, _, path = rest.partition("/")
        hdrs = [tuple(h.split(": ", 1)) for h in headers]
        return H.get(proxy.port, "/" + path, host=host, headers=hdrs, method=method,
                     body=b"" if method == "POST" else None)

    def check_one(self, key, line, headers):
        proxy = self.proxies[key]
        x = explain(proxy.config_path, line, headers)
        r = self.send(proxy, line, headers)
        what = "%s %s %s\nexplain: %s" % (key, line, headers, json.dumps(x, indent=1)[:3000])
        if x.get("answer"):
            self.assertEqual(r.status, x["answer"]["status"], what)
            for name, value in (x["answer"].get("headers") or {}).items():
                self.assertEqual(r.header(name), value if isinstance(value, str)
                                 else ", ".join(value), what)
            return
        self.assertEqual(r.status, 200, what + "\n" + r.body.decode(errors="replace"))
        self.assertEqual(r.header("X-Origin-Id"), x["upstream"]["name"], what)
        echo = r.json()
        self.assertEqual(echo["url"], x["sent"]["uri"], what)
        got = {}
        for n, v in echo["headers"]:
            if n.lower() not in ENGINE_HEADERS:
                got.setdefault(n.lower(), []).append(v)
        got = {n: ", ".join(v) for n, v in got.items()}
        want = {n: (v if isinstance(v, str) else ", ".join(v))
                for n, v in x["sent"]["headers"].items() if n not in ENGINE_HEADERS}
        self.assertEqual(got, want, what)

    def test_prefix_config(self):
        for line, headers in self.REQUESTS["prefixes"]:
            self.check_one("prefixes", line, headers)

    def test_host_config(self):
        for line, headers in self.REQUESTS["hosts"]:
            self.check_one("hosts", line, headers)

    def test_capture_config(self):
        for line, headers in self.REQUESTS["captures"]:
            self.check_one("captures", line, headers)

    def test_regex_captures_are_shown(self):
        path = self.proxies["captures"].config_path
        x = explain(path, "GET http://a.test/headers")
        self.assertEqual(x["routing"]["route"]["params"], {"page": "head"})
        self.assertEqual(x["sent"]["headers"].get("x-page"), "head")
        out = explain(path, "GET http://a.test/headers", text=True)
        self.assertIn("-> #1 page: matched", out)
        self.assertIn('       captures: page="head"', out)
        out = explain(path, "GET http://a.test/other", text=True)  # no captures: no line
        self.assertIn("-> #2 all: matched", out)
        self.assertNotIn("captures:", out)

    def test_a_bad_overlay_is_named_and_the_config_routes_explained(self):
        # An overlay the proxy would refuse (its load fails with it): explain says so, with
        # the file:line of a JSON error, and explains the config's own routes.
        path = self.proxies["captures"].config_path
        x = explain(path, "GET http://a.test/headers")
        self.assertNotIn("overlay", x["routing"])
        overlay = path + ".routes.json"
        with open(overlay, "w") as f:
            f.write('{"config_routes": "x",\n "ops": [\n  oops ]}\n')
        self.addCleanup(os.unlink, overlay)
        x = explain(path, "GET http://a.test/headers")
        ov = x["routing"]["overlay"]
        self.assertIs(ov["applied"], False)
        self.assertRegex(ov["error"], r"^%s:3:\d+: " % overlay)
        self.assertEqual(x["routing"]["route"]["name"], "page")
        self.assertEqual(x["upstream"]["name"], "app")
        out = explain(path, "GET http://a.test/headers", text=True)
        self.assertIn("warning: the admin overlay is not applied: %s:3:" % overlay, out)
        self.assertIn("the config's own routes are explained", out)
        self.assertIn("-> #1 page: matched", out)
        # Well-formed but made against other config routes: refused by the same check.
        with open(overlay, "w") as f:
            f.write('{"config_routes": "x", "ops": []}')
        x = explain(path, "GET http://a.test/headers")
        self.assertIn("was made against other config routes", x["routing"]["overlay"]["error"])
        self.assertEqual(x["routing"]["route"]["name"], "page")

    def test_text_says_why(self):
        out = explain(self.proxies["prefixes"].config_path,
                      "GET http://a.test/api/x?tenant=t2", ["Cookie: ab=b"], text=True)
        self.assertIn('#1 v1: no (prefix "/api/v1" does not hold)', out)
        self.assertIn("-> #2 api: matched", out)
        # The engine's check and its one sentence, as `luaproxy -t` says it.
        self.assertIn("warning: routes[4] (never) can never match: routes[3] (all) before it "
                      "takes all its requests", out)
        check = subprocess.run([H.LUAPROXY, "-t", "-c", self.proxies["prefixes"].config_path],
                               capture_output=True, text=True, timeout=H.T(60))
        self.assertIn("routes[4] (never) can never match: routes[3] (all) before it takes all "
                      "its requests", check.stderr)
        self.assertRegex(out, r"tagger \[request\] .*path /api/x\?tenant=t2 -> /headers; "
                              r"upstream api -> b")
        self.assertIn("added header x-env: prod", out)
        out = explain(self.proxies["prefixes"].config_path,
                      "GET http://a.test/api/headers?tenant=closed", text=True)
        self.assertIn("answered 403 locally", out)
        self.assertIn("answer     403 from gate", out)

    def test_network_calls_are_refused_with_a_note(self):
        d = H.Workdir.new("explain-net")
        os.makedirs(os.path.join(d, "plugins"))
        with open(os.path.join(d, "plugins", "caller.lua"), "w") as f:
            f.write('local P = { name = "caller", priority = 1, schema = { fields = {} } }\n'
                    'function P.request(req)\n'
                    '  local res, err = proxy.http.request({ url = "http://auth.internal/ok" })\n'
                    '  req:set_header("X-Auth", res and "ok" or "refused")\n'
                    '  proxy.timer.at(5, function() end)\n'
                    'end\nreturn P\n')
        cfg = os.path.join(d, "proxy.lua")
        with open(cfg, "w") as f:
            f.write('return { listen = { { address = "127.0.0.1:0" } }, upstreams = { o = '
                    '{ targets = { "127.0.0.1:1", "127.0.0.1:2" } } }, routes = { { upstream = '
                    '"o", plugins = { { name = "caller" } } } } }\n')
        out = explain(cfg, "GET http://a.test/", text=True)
        self.assertIn("proxy.http GET http://auth.internal/ok: refused", out)
        self.assertIn("1 timer(s) scheduled: not run by explain", out)
        self.assertIn("added header x-auth: refused", out)
        self.assertIn("smooth weighted round robin over 2 targets", out)


class ExplainAdminTest(L.LuaTestCase):
    """POST /explain on the admin API: the same report as the command line, against the
    running config, behind the admin token like every admin endpoint."""
    TOKEN = "explain-token-0123456789"

    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("app")
        d = H.Workdir.new("explain-admin")
        tok = os.path.join(d, "admin.token")
        with open(tok, "w") as f:
            f.write(cls.TOKEN + "\n")
        routes = [{"name": "api", "match": {"prefix": "/api/"}, "upstream": "app",
                   "strip_prefix": True, "plugins": [{"name": "tagger"}]},
                  {"name": "all", "upstream": "app"}]
        cls.proxy = cls.start_lua_proxy(
            {"app": H.upstream(cls.origin.address())}, routes,
            files={"plugins/tagger.lua": TAGGER}, workers=1,
            lua=L.lua_section(fixtures=False),
            admin={"address": "127.0.0.1:0", "token_file": tok})
        H.wait_for(lambda: H.port_accepts(cls.proxy.admin_port), H.T(10), what="the admin API")

    def post(self, body, token=TOKEN):
        hdrs = [("Content-Type", "application/json")]
        if token:
            hdrs.append(("Authorization", "Bearer " + token))
        return H.get(self.proxy.admin_port, "/explain", host="127.0.0.1", method="POST",
                     headers=hdrs, body=json.dumps(body).encode())

    def test_explain_through_the_admin_api(self):
        line = "GET http://a.test/api/headers?tenant=t9"
        r = self.post({"request": line, "headers": ["X-Drop: 1"]})
        self.assertEqual(r.status, 200, r.body)
        j = r.json()
        self.assertEqual(j["routing"]["route"]["name"], "api")
        self.assertEqual(j["upstream"]["name"], "app")
        self.assertEqual(j["sent"]["uri"], "/headers?tenant=t9")
        self.assertEqual(j["sent"]["headers"].get("x-tenant"), "t9")
        self.assertNotIn("x-drop", j["sent"]["headers"])
        cli = explain(self.proxy.config_path, line, ["X-Drop: 1"])
        self.assertEqual((cli["routing"]["route"]["name"], cli["sent"]["uri"]),
                         (j["routing"]["route"]["name"], j["sent"]["uri"]))
        # And the engine did the same.
        e = H.get(self.proxy.port, "/api/headers?tenant=t9", headers=[("X-Drop", "1")]).json()
        self.assertEqual(e["url"], j["sent"]["uri"])

    def test_needs_the_token_and_a_request(self):
        r = self.post({"request": "GET http://a.test/"}, token=None)
        self.assertEqual(r.status, 401)
        r = self.post({"request": "GET http://a.test/"}, token="wrong-token-0123456789")
        self.assertEqual(r.status, 401)
        r = self.post({"nothing": 1})
        self.assertEqual(r.status, 400)
        self.assertIn("expected", r.json()["error"])
        r = self.post({"request": "GET ftp://a.test/"})
        self.assertEqual(r.status, 400)
        self.assertIn("expected an http:// or https:// URL", r.json()["error"])
        r = H.get(self.proxy.admin_port, "/explain", host="127.0.0.1",
                  headers=[("Authorization", "Bearer " + self.TOKEN)])
        self.assertEqual(r.status, 405)


class ExplainOverlayTest(L.LuaTestCase):
    """Routes added through a running proxy's admin API (POST /routes), which the proxy
    persists to CONFIG.routes.json: explain -c CONFIG applies them as a load does (the
    engine's own code, `luaproxy routes`), says which routes came from there, and agrees
    with the proxy; --no-overlay leaves them out; POST /explain sees them too."""
    TOKEN = "explain-overlay-token-0123456789"

    @classmethod
    def setUpClass(cls):
        cls.origins = {name: cls.start_origin(name) for name in ("app", "b")}
        d = H.Workdir.new("explain-overlay")
        tok = os.path.join(d, "admin.token")
        with open(tok, "w") as f:
            f.write(cls.TOKEN + "\n")
        routes = [{"name": "api", "match": {"prefix": "/api/"}, "upstream": "app",
                   "strip_prefix": True, "plugins": [{"name": "tagger"}]},
                  {"name": "all", "upstream": "app"}]
        cls.proxy = cls.start_lua_proxy(
            {name: H.upstream(o.address()) for name, o in cls.origins.items()}, routes,
            files={"plugins/tagger.lua": TAGGER}, workers=1,
            lua=L.lua_section(fixtures=False),
            admin={"address": "127.0.0.1:0", "token_file": tok})
        H.wait_for(lambda: H.port_accepts(cls.proxy.admin_port), H.T(10), what="the admin API")
        # A canary in front of the config's /api/ route, and the catch-all replaced: written
        # to the overlay file by the proxy itself.
        r = cls.admin_post("/routes", {"ops": [
            {"op": "add", "at": 1, "route": {
                "name": "canary", "match": {"prefix": "/api/", "headers": {"X-Canary": "1"}},
                "upstream": "b", "strip_prefix": True}},
            {"op": "replace", "index": 3, "route": {"name": "rest", "upstream": "b"}}]})
        assert r.status == 200, r.body
        assert r.json()["persisted"] is True, r.body
        cls.overlay = cls.proxy.config_path + ".routes.json"
        assert os.path.exists(cls.overlay)

    @classmethod
    def admin_post(cls, path, body):
        return H.get(cls.proxy.admin_port, path, host="127.0.0.1", method="POST",
                     headers=[("Content-Type", "application/json"),
                              ("Authorization", "Bearer " + cls.TOKEN)],
                     body=json.dumps(body).encode())

    def agrees(self, line, headers, route, source, upstream, uri):
        x = explain(self.proxy.config_path, line, headers)
        what = json.dumps(x, indent=1)[:3000]
        got = x["routing"]["route"]
        self.assertEqual((got["name"], got["source"], x["upstream"]["name"], x["sent"]["uri"]),
                         (route, source, upstream, uri), what)
        # and the proxy did the same
        path = line.split("://", 1)[1].partition("/")[2]
        r = H.get(self.proxy.port, "/" + path, host="a.test",
                  headers=[tuple(h.split(": ", 1)) for h in headers])
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.header("X-Origin-Id"), upstream, what)
        self.assertEqual(r.json()["url"], uri, what)
        return x

    def test_overlay_routes_win_where_they_should(self):
        x = self.agrees("GET http://a.test/api/headers?tenant=t1", ["X-Canary: 1"],
                        "canary", "overlay", "b", "/headers?tenant=t1")
        # an overlay route meets the global plugins only: tagger (the config route's) did not run
        self.assertNotIn("x-tenant", x["sent"]["headers"])
        self.assertEqual(x["routing"]["tried"][0]["index"], 1)
        x = self.agrees("GET http://a.test/api/headers?tenant=t2", [], "api", "config", "app",
                        "/headers?tenant=t2")
        self.assertEqual(x["sent"]["headers"].get("x-tenant"), "t2")
        tried = x["routing"]["tried"]
        self.assertEqual([(t["index"], t["name"], t["matched"]) for t in tried],
                         [(1, "canary", False), (2, "api", True)])
        self.assertEqual(tried[1]["config_route"], 1)
        self.agrees("GET http://a.test/headers", [], "rest", "overlay", "b", "/headers")
        ov = x["routing"]["overlay"]
        self.assertEqual((ov["file"], ov["applied"]), (self.overlay, True))
        self.assertEqual(ov["routes"], [{"index": 1, "name": "canary"},
                                        {"index": 3, "name": "rest"}])
        self.assertEqual(ov["removed"], [{"config_route": 2, "name": "all"}])
        # The same table as the proxy's GET /routes.
        r = H.get(self.proxy.admin_port, "/routes", host="127.0.0.1",
                  headers=[("Authorization", "Bearer " + self.TOKEN)])
        live = [(e["name"], e["config_route"]) for e in r.json()["table"]]
        self.assertEqual(live, [("canary", None), ("api", 1), ("rest", None)])
        p = subprocess.run([H.LUAPROXY, "routes", "-c", self.proxy.config_path],
                           capture_output=True, timeout=H.T(60), preexec_fn=H._preexec)
        self.assertEqual(p.returncode, 0, p.stderr)
        loaded = json.loads(p.stdout)
        self.assertEqual([(e["name"], e["config_route"]) for e in loaded["routes"]], live)
        self.assertEqual(loaded["routes"], r.json()["table"])

    def test_text_names_the_overlay_routes(self):
        out = explain(self.proxy.config_path, "GET http://a.test/api/x", ["X-Canary: 1"],
                      text=True)
        self.assertIn("overlay: %s applied, as the proxy applies it at load: routes #1 canary, "
                      "#3 rest come from the admin API; it removed or replaced config "
                      "routes[2] (all)" % self.overlay, out)
        self.assertIn("-> #1 canary [admin overlay]: matched", out)
        self.assertNotIn("warning", out)
        out = explain(self.proxy.config_path, "GET http://a.test/api/x", text=True)
        self.assertIn("#1 canary [admin overlay]: no (headers {x-canary=1} does not hold)", out)
        self.assertIn("-> #2 api [config routes[1]]: matched", out)

    def test_no_overlay(self):
        args = [H.LUAPROXY, "explain", "-c", self.proxy.config_path, "--no-overlay", "--json",
                "GET http://a.test/headers"]
        p = subprocess.run(args, capture_output=True, timeout=H.T(60), preexec_fn=H._preexec)
        self.assertEqual(p.returncode, 0, p.stderr)
        x = json.loads(p.stdout)
        self.assertEqual((x["routing"]["route"]["name"], x["upstream"]["name"]), ("all", "app"))
        self.assertIs(x["routing"]["overlay"]["skipped"], True)
        self.assertIs(x["routing"]["overlay"]["applied"], False)

    def test_an_overlay_that_no_longer_applies(self):
        # The same config routes (the fingerprint holds) without the upstream the overlay's
        # routes name: the proxy refuses the load (luaproxy -t says why); explain names the
        # file and the reason and explains the config's routes.
        d = H.Workdir.new("explain-overlay-gone")
        cfg = json.loads(json.dumps(self.proxy.cfg))
        del cfg["upstreams"]["b"]
        cfg.pop("admin", None)
        path = os.path.join(d, "proxy.lua")
        with open(path, "w") as f:
            f.write(H.config_text(cfg))
        os.makedirs(os.path.join(d, "plugins"))
        with open(os.path.join(d, "plugins", "tagger.lua"), "w") as f:
            f.write(TAGGER)
        with open(self.overlay) as src, open(path + ".routes.json", "w") as f:
            f.write(src.read())
        check = subprocess.run([H.LUAPROXY, "-t", "-c", path], capture_output=True, text=True,
                               timeout=H.T(60))
        self.assertEqual(check.returncode, 1)
        self.assertIn('no upstream named \"b\"', check.stderr)
        x = explain(path, "GET http://a.test/api/x", ["X-Canary: 1"])
        err = x["routing"]["overlay"]["error"]
        self.assertTrue(err.startswith(path + ".routes.json: "), err)
        self.assertIn('no upstream named "b"', err)
        self.assertEqual((x["routing"]["route"]["name"], x["routing"]["route"]["source"]),
                         ("api", "config"))

    def test_admin_explain_sees_the_overlay(self):
        r = self.admin_post("/explain", {"request": "GET http://a.test/api/headers",
                                         "headers": ["X-Canary: 1"]})
        self.assertEqual(r.status, 200, r.body)
        j = r.json()
        self.assertEqual((j["routing"]["route"]["name"], j["routing"]["route"]["source"],
                          j["upstream"]["name"]), ("canary", "overlay", "b"))
        r = self.admin_post("/explain", {"request": "GET http://a.test/other"})
        self.assertEqual(r.json()["routing"]["route"]["name"], "rest")


if __name__ == "__main__":
    H.main()
