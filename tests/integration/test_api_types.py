#!/usr/bin/env python3
"""The LuaLS annotations (lua/types/proxy.lua) against the API the engine exports to Lua at
run time: a plugin in a real luaproxy walks `proxy`, the request handle's methods and the
objects the API hands out (shared dict, upstream, socket, timer, router, HTTP response,
Redis client, metrics), and compares them with the annotated functions
(lua/luaproxy/tools/api.lua). A function without an annotation, or an annotation naming a
function the engine does not have, fails the test; the coverage figure is printed."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua"))
import luatest as L  # noqa: E402
from luatest import H  # noqa: E402

DUMP = r'''
local api = require "luaproxy.tools.api"
local P = { name = "api_dump", priority = 10, schema = { fields = {} } }
local metrics = {}
function P.init_worker()
  metrics.counter = proxy.metrics.counter("api_dump_total", "drift test")
  metrics.gauge = proxy.metrics.gauge("api_dump_gauge", "drift test")
  metrics.histogram = proxy.metrics.histogram("api_dump_seconds", "drift test")
end
function P.request(req)
  local _ = proxy.re, proxy.router -- loaded on first use
  local timer = assert(proxy.timer.at(3600, function() end))
  local v = {
    proxy = proxy, req = req, dict = proxy.shared.d, upstream = proxy.upstream("o"),
    sock = proxy.tcp(), timer = timer,
    router = assert(proxy.router.new({ { prefix = "/" } })),
    http_response = require("luaproxy.http").Response,
    redis_client = assert(proxy.redis.new()),
    counter = metrics.counter, gauge = metrics.gauge, histogram = metrics.histogram,
  }
  local runtime = api.walk(api.engine_roots(v))
  timer:cancel()
  local here = package.searchpath("luaproxy.tools.api", package.path)
  local types = here:gsub("luaproxy/tools/api%.lua$", "types/proxy.lua")
  local annotated = api.annotated(api.parse({ types }), api.ENGINE_CLASSES)
  local missing, stale = api.diff(runtime, annotated)
  return req:respond(200, proxy.json.encode({ runtime = runtime, annotated = annotated,
    missing = missing, stale = stale, types = types }),
    { ["Content-Type"] = "application/json" })
end
return P
'''


class ApiTypesTest(L.LuaTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("o")
        ups = {"o": H.upstream(cls.origin.address())}
        routes = [{"match": {"prefix": "/"}, "upstream": "o",
                   "plugins": [{"name": "api_dump"}]}]
        cls.proxy = cls.start_lua_proxy(ups, routes, files={"plugins/api_dump.lua": DUMP},
                                        workers=1, shared={"d": "64k"},
                                        lua=L.lua_section(plugin_paths=[]))

    def test_annotations_match_the_engine(self):
        r = self.get("/dump")
        self.assertEqual(r.status, 200, r.body)
        j = r.json()
        # cjson gives an empty list as {}.
        runtime, annotated = j["runtime"] or [], j["annotated"] or []
        missing, stale = list(j["missing"] or []), list(j["stale"] or [])
        # The walk reached every part of the API (not an empty comparison).
        for name in ("proxy.Request.set_header", "proxy.SharedDict.gcra", "proxy.log.err",
                     "proxy.timer.every", "proxy.TcpSocket.receiveuntil", "proxy.re.gsub",
                     "proxy.Router.match", "proxy.http.Response.body_reader",
                     "proxy.redis.Client.commit_pipeline", "proxy.metrics.Counter.inc",
                     "proxy.Upstream.add_target", "proxy.Timer.cancel", "proxy.json.encode"):
            self.assertIn(name, runtime)
        self.assertGreater(len(runtime), 150)
        self.assertEqual(missing, [], "exported by the engine, not annotated in %s"
                         % j["types"])
        self.assertEqual(stale, [], "annotated in %s, not exported by the engine"
                         % j["types"])
        covered = len(set(runtime) & set(annotated))
        print("annotation coverage: %d/%d exported functions (%.1f%%)"
              % (covered, len(runtime), 100.0 * covered / len(runtime)), file=sys.stderr)


if __name__ == "__main__":
    H.main()
