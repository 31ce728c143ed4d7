#!/usr/bin/env python3
"""The Lua API as documented, in the real engine: every variable in every phase gives one
value, API misuse names the plugin's file even from a tail call, the clocks, and the
proxy's own answers (404, 502, 500...) going through the response and log phases with a
Date header and a counted body."""

import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua"))
import luatest as L  # noqa: E402
from luatest import H  # noqa: E402

PLUGINS = {
    # Checks req:var() for every documented variable in every phase; the log phase says.
    "plugins/allvars.lua": r'''
local phases = require "luaproxy.phases"
local P = { name = "allvars", priority = 50, schema = { fields = {} } }
local function probe(req)
  local bad = req.ctx.bad or {}
  req.ctx.bad = bad
  for _, name in ipairs(phases.vars) do
    local n = select("#", req:var(name))
    local v = req:var(name)
    if n ~= 1 or not (v == nil or type(v) == "string") then
      bad[#bad + 1] = req:phase() .. ":" .. name .. ":" .. n
    end
    local _ = tostring(req:var(name))
  end
end
P.request, P.upstream, P.response = probe, probe, probe
function P.response_body(req, chunk) probe(req) return chunk end
function P.log(req)
  probe(req)
  proxy.log.warn("ALLVARS " .. (#req.ctx.bad == 0 and "ok" or table.concat(req.ctx.bad, ",")))
end
return P
''',
    "plugins/tailcall.lua": r'''
local P = { name = "tailcall", priority = 50, schema = { fields = {} } }
function P.request(req)
  return req:respond(100, "not a final status")
end
return P
''',
    # Marks every answer in the response phase and logs it in the log phase.
    "plugins/marker.lua": r'''
local P = { name = "marker", priority = 50, schema = { fields = {} } }
function P.response(req)
  req:set_resp_header("X-Marked", tostring(req:status()))
end
function P.log(req)
  proxy.log.warn("MARKER log phase saw " .. tostring(req:status()))
end
return P
''',
    "plugins/nodesc.lua": r'''
return { name = "nodesc", priority = 1, schema = { fields = {
  limit = { type = "number", default = 1 } } } }
''',
    "plugins/clocks.lua": r'''
local P = { name = "clocks", priority = 50, schema = { fields = {} } }
function P.request(req)
  local t0, m0 = proxy.now(), proxy.monotonic()
  local steps, last = 0, proxy.now()
  for _ = 1, 200000 do
    local t = proxy.now()
    if t ~= last then steps = steps + 1; last = t end
  end
  local m1 = proxy.monotonic()
  return req:respond(200, proxy.json.encode({
    now = t0, start = req:start_time(), mono_delta = m1 - m0, steps = steps,
  }))
end
return P
''',
}


def route(prefix, plugins=None, upstream="o", **kw):
    r = {"match": {"prefix": prefix}, "upstream": upstream, "strip_prefix": True}
    if plugins:
        r["plugins"] = [{"name": p} for p in plugins]
    r.update(kw)
    return r


class LuaApiTest(L.LuaTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("o")
        dead = H.dead_port()
        cls.access = os.path.join(H.Workdir.new("access"), "access.log")
        ups = {"o": H.upstream(cls.origin.address()),
               "dead": H.upstream("127.0.0.1:%d" % dead, retries=0)}
        routes = [
            route("/vars", ["allvars"]),
            route("/tail", ["tailcall"]),
            route("/marked-dead", ["marker"], upstream="dead"),
            route("/marked-error", ["marker", "tailcall"]),
            route("/marked", ["marker"]),
            route("/clocks", ["clocks"]),
            route("/nodesc1", ["nodesc"]),
            route("/nodesc2", ["nodesc"]),
        ]
        cls.proxy = cls.start_lua_proxy(
            ups, routes, files=PLUGINS, workers=1,
            log={"level": "info", "access": cls.access,
                 "format": "$uri $status $body_bytes_sent"})

    def access_lines(self):
        with open(self.access) as f:
            return f.read().splitlines()

    def test_every_variable_in_every_phase(self):
        r = self.get("/vars/fixed?size=5")
        self.assertEqual(r.status, 200)
        self.wait_log("ALLVARS")
        lines = self.log_lines("ALLVARS")
        self.assertTrue(lines)
        for line in lines:
            self.assertIn("ALLVARS ok", line)

    def test_tail_call_misuse_names_the_plugin_file(self):
        r = self.get("/tail")
        self.assertEqual(r.status, 500)
        self.wait_log("req:respond(): expected a status")
        line = self.log_lines("req:respond(): expected a status")[0]
        self.assertRegex(line, r"tailcall\.lua:\d+: req:respond\(\)")
        self.assertNotRegex(line, r"runtime\.chain\d+:\d+: req:respond")

    def test_own_answers_run_the_response_and_log_phases(self):
        r = self.get("/marked-dead/x")
        self.assertEqual(r.status, 502)
        self.assertEqual(r.header("X-Marked"), "502")
        self.assertIsNotNone(r.header("Date"))
        self.assertTrue(r.body)
        self.wait_log("MARKER log phase saw 502")
        # A 500 for a failed request phase goes through the response phase too.
        r = self.get("/marked-error/x")
        self.assertEqual(r.status, 500)
        self.assertEqual(r.header("X-Marked"), "500")
        # A 404 with no route meets no route plugins, but keeps its Date.
        r = self.get("/no-such-route-here")
        self.assertEqual(r.status, 404)
        self.assertIsNotNone(r.header("Date"))
        self.assertRegex(r.header("Date"),
                         r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d [A-Z][a-z]{2} \d{4} "
                         r"\d\d:\d\d:\d\d GMT$")

    def test_own_answers_count_their_body_in_the_access_log(self):
        r = self.get("/marked-dead/counted")
        self.assertEqual(r.status, 502)
        want = "/marked-dead/counted 502 %d" % len(r.body)
        H.wait_for(lambda: want in self.access_lines(), H.T(5),
                   what="%r in the access log: %r" % (want, self.access_lines()[-5:]))

    def test_proxied_answer_keeps_or_gets_a_date(self):
        r = self.get("/marked/fixed?size=3")
        self.assertEqual(r.status, 200)
        self.assertEqual(len(r.header_all("Date")), 1)

    def test_schema_warnings_are_logged_once(self):
        # A plugin field without a description: one warning when the config loads (not one
        # per route or per worker VM).
        log = self.proxy.stderr()
        hits = [l for l in log.splitlines() if "field has no description" in l]
        self.assertEqual(len(hits), 1, hits)
        self.assertIn("schema.limit", hits[0])

    def test_clocks(self):
        r = self.get("/clocks")
        self.assertEqual(r.status, 200)
        j = r.json()
        self.assertGreater(j["steps"], 20, "proxy.now() moves in fine steps")
        self.assertGreater(j["mono_delta"], 0)
        self.assertLessEqual(j["start"], j["now"])
        self.assertGreater(j["start"], j["now"] - 5)


if __name__ == "__main__":
    H.main()
