#!/usr/bin/env python3
"""proxy.re (PCRE2) in the real engine (docs/lua-api.md, "Regular expressions"): the router's
regex routes with named captures and header regexes, proxy.re in a handler (found through
ffi.C in the executable, JIT-compiled), a catastrophic pattern stopped by the match limit
while the worker keeps serving, and an invalid regex in a config refused by `-t` and by a
reload with the key named, the running generation still serving.

Origins are lp_origin processes told apart by X-Origin-Id; /headers shows the URL and the
headers that reached them."""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reload"))
import reloadtest as RT  # noqa: E402
from reloadtest import H  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua"))
import luatest as L  # noqa: E402

R = H.LuaRaw

RULES = [
    {"path_regex": r"^/users/(?<id>\d+)/orders/(?<order>\d+)$",
     "rewrite": "/headers?user=${id}&order=$2", "upstream": "b"},
    {"header_regex": {"User-Agent": r"(?i)^curl/\d"}, "upstream": "c"},
    {"query_regex": {"v": r"^2\.\d+$"}, "upstream": "c"},
]

# Copies the router's captures into headers the origin echoes.
CAPTURES_HANDLER = R(r'''function(req)
  local m = req.ctx.route_captures
  if m then
    req:set_header("X-Cap-Id", m.id)
    req:set_header("X-Cap-0", m[0])
  end
  req:set_header("X-Rule", tostring(req.ctx.route_rule))
end''')

# proxy.re used directly: a gsub with a function, a match with ctx, find, gmatch.
RE_HANDLER = R(r'''function(req)
  local re = proxy.re
  local q = req:query("s") or ""
  local out = {}
  local s, n, err = re.gsub(q, [[(?<k>\w+)=(\d+)]], function(m) return m.k:upper() .. ":" .. m[2] end)
  out[#out + 1] = "gsub=" .. tostring(s) .. "/" .. tostring(n) .. "/" .. tostring(err)
  local ctx = { pos = 1 }
  local m = re.match(q, [[\d+]], "jo", ctx)
  out[#out + 1] = "match=" .. tostring(m and m[0]) .. "@" .. tostring(ctx.pos)
  local from, to = re.find(q, "[a-z]+", "i")
  out[#out + 1] = "find=" .. tostring(from) .. "-" .. tostring(to)
  local words = {}
  for w in re.gmatch(q, [[[a-z]+]]) do words[#words + 1] = w[0] end
  out[#out + 1] = "gmatch=" .. table.concat(words, ",")
  local _, berr = re.match(q, "(unclosed")
  out[#out + 1] = "bad=" .. tostring(berr)
  out[#out + 1] = "lib=" .. tostring(re.library) .. " jit=" .. tostring(re.jit_available)
  return req:respond(200, table.concat(out, "\n"))
end''')

# A pattern that backtracks exponentially: the match limit ends it with nil, err. ?n=16
# takes about 2^16 steps: within PCRE2's default limit, over the 1000 the config sets.
EVIL_HANDLER = R(r'''function(req)
  local t0 = proxy.monotonic()
  local n = tonumber(req:query("n")) or 64
  local m, err = proxy.re.match(string.rep("a", n) .. "b", "^(a+)+$")
  return req:respond(200, tostring(m) .. "|" .. tostring(err) .. "|"
    .. string.format("%.3f", proxy.monotonic() - t0))
end''')


def bad_regex_routes(regex):
    return [RT.route("/", upstream="a", plugins=[{"name": "router", "rules": [
        {"prefix": "/x/", "upstream": "b"},
        {"path_regex": regex, "upstream": "c"}]}])]


class LuaReTest(RT.ReloadTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origins = {i: cls.start_origin(i) for i in ("a", "b", "c")}
        cls.ups = {i: H.upstream(o.address()) for i, o in cls.origins.items()}
        cls.routes = [
            RT.route("/re", handler=RE_HANDLER),
            RT.route("/evil", handler=EVIL_HANDLER),
            RT.route("/", upstream="a", handler=CAPTURES_HANDLER,
                     plugins=[{"name": "router", "rules": RULES}]),
        ]
        cls.proxy = cls.start_reload_proxy(cls.ups, cls.routes, workers=2,
                                           lua={"regex_match_limit": 1000})

    def origin(self, r):
        return r.header("X-Origin-Id")

    def test_regex_route_named_captures_and_rewrite(self):
        r = self.get("/users/42/orders/7?x=1")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.origin(r), "b")
        j = r.json()
        self.assertEqual(j["url"], "/headers?user=42&order=7")
        hdrs = L.origin_headers(r)
        self.assertEqual(L.hvalues(hdrs, "X-Cap-Id"), ["42"])
        self.assertEqual(L.hvalues(hdrs, "X-Cap-0"), ["/users/42/orders/7"])
        self.assertEqual(L.hvalues(hdrs, "X-Rule"), ["1"])
        # not digits, or more after the anchored end: no rule, the route's upstream
        self.assertEqual(self.origin(self.get("/users/x/orders/7")), "a")
        self.assertEqual(self.origin(self.get("/users/1/orders/2/more")), "a")

    def test_header_and_query_regex(self):
        self.assertEqual(self.origin(self.get("/", headers={"User-Agent": "CURL/8.4"})), "c")
        self.assertEqual(self.origin(self.get("/", headers={"User-Agent": "Mozilla curl/8"})),
                         "a")
        self.assertEqual(self.origin(self.get("/?v=2.11")), "c")
        self.assertEqual(self.origin(self.get("/?v=3.1")), "a")

    def test_proxy_re_in_a_handler(self):
        r = self.get("/re?s=ab%3D12%26cd%3D345")
        self.assertEqual(r.status, 200, r)
        lines = r.body.decode().split("\n")
        self.assertEqual(lines[0], "gsub=AB:12&CD:345/2/nil")
        self.assertEqual(lines[1], "match=12@6")
        self.assertEqual(lines[2], "find=1-2")
        self.assertEqual(lines[3], "gmatch=ab,cd")
        self.assertEqual(lines[4],
                         'bad=failed to compile regex "(unclosed": missing closing parenthesis '
                         'at offset 9')
        # the engine links libpcre2-8: found through ffi.C, with its JIT
        self.assertEqual(lines[5], "lib=ffi.C jit=true")

    def test_match_limit_stops_catastrophic_backtracking(self):
        t0 = time.monotonic()
        r = self.get("/evil")
        self.assertEqual(r.status, 200, r)
        m, err, took = r.body.decode().split("|")
        self.assertEqual((m, err), ("nil", "pcre2_match: match limit exceeded"))
        # The match limit ended it: without it, 2^64 steps (slow machines take a second or so).
        self.assertLess(float(took), H.T(5.0))
        self.assertLess(time.monotonic() - t0, H.T(5))
        # the worker goes on serving
        self.assertEqual(self.get("/re?s=x1").status, 200)

    def test_match_limit_from_the_config(self):
        # lua.regex_match_limit = 1000 reaches every worker's proxy.re (PCRE2's default,
        # 10,000,000, lets this one end with no match); 2 workers, so ask a few times
        for _ in range(4):
            r = self.get("/evil?n=16")
            self.assertEqual(r.body.decode().split("|")[:2],
                             ["nil", "pcre2_match: match limit exceeded"])

    def test_invalid_regex_refused_by_check_and_reload(self):
        key = "routes[1].plugins[1](router).rules[2].path_regex"
        # luaproxy -t
        cfg = dict(self.proxy.cfg)
        cfg["routes"] = bad_regex_routes("^/(x")
        rc, out, err, path = L.check_config(H.config_text(cfg))
        self.assertEqual(rc, 1, (out, err))
        self.assertIn("%s: invalid regex: missing closing parenthesis at offset 4" % key, err)
        # a reload: refused with the key named, the running generation keeps serving
        good = H.config_text(self.proxy.cfg)
        gen = self.status()["generation"]
        self.write_raw(H.config_text(cfg))
        try:
            j = self.reload_fails()
            self.assertIn("%s: invalid regex: missing closing parenthesis at offset 4" % key,
                          j["error"])
            self.assertEqual(self.status()["generation"], gen)
            r = self.get("/users/5/orders/6")
            self.assertEqual((r.status, self.origin(r)), (200, "b"))
        finally:
            self.write_raw(good)
        self.assertAlive()
        # and the good config reloads again
        self.reload()
        self.assertEqual(self.status()["generation"], gen + 1)
        self.assertEqual(self.origin(self.get("/users/5/orders/6")), "b")


if __name__ == "__main__":
    H.main()
