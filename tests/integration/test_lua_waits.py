#!/usr/bin/env python3
"""Lua that waits, at its edges (docs/lua-api.md): a response phase or response_body filter
that waits longer than timeouts.read does not make the upstream late (the read timeout
stops while Lua holds the response); log lines and API errors name the plugin that waits,
even when other requests ran meanwhile; a wait inside a call from C raises at the
caller's line; a response whose filter fails still shows its status; init_worker waits
are bounded by lua.init_timeout (the reload is refused, the old generation serves); and a
detached log phase of an old generation is stopped past timeouts.drain."""

import os
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reload"))
import reloadtest as RT  # noqa: E402
from reloadtest import H  # noqa: E402

PLUGINS = {
    "plugins/waiter.lua": r'''
local P = { name = "waiter", priority = 10, schema = { fields = {} } }
function P.response(req)
  if req:query("resp_sleep") then proxy.sleep(tonumber(req:query("resp_sleep"))) end
  if req:query("resp_fail") then error("response phase fails") end
end
function P.response_body(req, chunk, eof)
  if req:query("body_sleep") then proxy.sleep(tonumber(req:query("body_sleep"))) end
  if req:query("body_fail") then error("filter fails") end
  return chunk
end
return P
''',
    "plugins/tagged.lua": r'''
local P = { name = "tagged", priority = 10, schema = { fields = {} } }
function P.request(req)
  proxy.log.warn("TAG before " .. req:query("n"))
  proxy.sleep(tonumber(req:query("s") or "0"))
  proxy.log.warn("TAG after " .. req:query("n"))
  if req:query("misuse") then return req:set_status(200) end
end
return P
''',
    "plugins/other.lua": r'''
local P = { name = "other", priority = 10, schema = { fields = {} } }
function P.request(req)
  proxy.log.warn("OTHER " .. (req:query("n") or ""))
  if req:query("cowrap") then
    coroutine.wrap(function() proxy.sleep(0.01) end)()
  end
  if req:query("sort") then
    local t = { 3, 1, 2 }
    table.sort(t, function(a, b) proxy.sleep(0) return a < b end)
  end
  return req:respond(200, "other")
end
return P
''',
    "plugins/looplog.lua": r'''
local P = { name = "looplog", priority = 10, schema = { fields = {} } }
function P.log(req)
  for i = 1, 600 do
    proxy.log.warn("LOOPLOG " .. i)
    proxy.sleep(0.1)
  end
end
return P
''',
}


def route(prefix, plugins, upstream="o"):
    return RT.route(prefix, upstream=upstream, strip_prefix=True,
                    plugins=[{"name": p} for p in plugins])


class WaitsTest(RT.ReloadTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("o")
        cls.ups = {"o": H.upstream(cls.origin.address())}
        cls.routes = [route("/w/", ["waiter"]), route("/t/", ["tagged"]),
                      route("/x/", ["other"]), route("/loop/", ["looplog"])]
        cls.proxy = cls.start_reload_proxy(cls.ups, cls.routes, files=PLUGINS, workers=1,
                                           timeouts={"read": 0.5, "drain": 1})

    def test_lua_waits_do_not_time_the_upstream_out(self):
        r = self.get("/w/fixed?size=20&body_sleep=1")
        self.assertEqual((r.status, r.body), (200, b"x" * 20))
        r = self.get("/w/fixed?size=20&resp_sleep=1")
        self.assertEqual((r.status, r.body), (200, b"x" * 20))
        self.assertNotIn("read timed out", self.proxy.stderr())

    def test_failing_filter_still_shows_the_status(self):
        with H.Client(self.proxy.port) as c:
            c.send(H.build_request("GET", "/w/fixed?size=20&resp_fail=1&body_fail=1"))
            closed, got = c.wait_closed()
        self.assertTrue(closed)
        self.assertTrue(got.startswith(b"HTTP/1.1 500 "), got[:80])

    def test_logs_and_errors_name_the_plugin_that_waits(self):
        out = {}

        def slow():
            out["r"] = self.get("/t/?n=slow1&s=0.5&misuse=1")

        th = threading.Thread(target=slow)
        th.start()
        H.wait_for(lambda: "TAG before slow1" in self.proxy.stderr(), H.T(5), what="slow1")
        self.assertEqual(self.get("/x/?n=fast1").status, 200)
        th.join(H.T(10))
        self.assertEqual(out["r"].status, 500)
        self.wait_log_line("TAG after slow1")
        err = self.proxy.stderr()
        after = [l for l in err.splitlines() if "TAG after slow1" in l][0]
        self.assertIn("[tagged]", after)
        fast = [l for l in err.splitlines() if "OTHER fast1" in l][0]
        self.assertIn("[other]", fast)
        misuse = [l for l in err.splitlines() if "req:set_status() cannot be called" in l][0]
        self.assertIn("tagged.lua", misuse)
        self.assertNotIn("other.lua", misuse)

    def test_wait_inside_a_call_from_c_names_the_caller(self):
        r = self.get("/x/?sort=1")
        self.assertEqual(r.status, 500)
        self.wait_log_line("cannot wait here: inside a call from C")
        line = [l for l in self.proxy.stderr().splitlines() if "cannot wait here" in l][0]
        self.assertIn("other.lua:", line)

    def test_wait_inside_a_coroutine_of_the_plugins_own_raises(self):
        r = self.get("/x/?cowrap=1")
        self.assertEqual(r.status, 500)
        self.wait_log_line("cannot wait here: inside a coroutine of your own")

    def wait_log_line(self, needle):
        H.wait_for(lambda: needle in self.proxy.stderr(), H.T(5),
                   what=repr(needle) + " in:\n" + self.proxy.stderr()[-2000:])


class InitAndReloadTest(RT.ReloadTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("o")
        cls.ups = {"o": H.upstream(cls.origin.address())}
        cls.proxy = cls.start_reload_proxy(cls.ups, [route("/loop/", ["looplog"])],
                                           files=dict(PLUGINS, **{
                                               "plugins/slowinit.lua": r'''
return { name = "slowinit", priority = 1, schema = { fields = {} },
  init_worker = function() proxy.sleep(30) end }
'''}), workers=1, timeouts={"drain": 1})

    def test_init_worker_waits_are_bounded(self):
        gen = self.status()["generation"]
        self.rewrite(routes=[route("/loop/", ["looplog", "slowinit"])],
                     lua={"plugin_paths": self.proxy.cfg["lua"]["plugin_paths"],
                          "init_timeout": 0.5})
        j = self.reload_fails()
        self.assertIn("lua.init_timeout", j["error"])
        self.assertEqual(self.status()["generation"], gen)
        self.assertEqual(self.get("/loop/fixed?size=1").status, 200)

    def test_detached_log_phase_of_an_old_generation_is_stopped(self):
        self.rewrite(routes=[route("/loop/", ["looplog"])],
                     lua={"plugin_paths": self.proxy.cfg["lua"]["plugin_paths"]})
        self.assertEqual(self.get("/loop/fixed?size=1").status, 200)
        H.wait_for(lambda: "LOOPLOG 2" in self.proxy.stderr(), H.T(5), what="the log phase")
        self.reload()
        H.wait_for(lambda: "a log phase still waiting after its generation ended"
                   in self.proxy.stderr(), H.T(10), what="the old log phase to be stopped:\n"
                   + self.proxy.stderr()[-2000:])


if __name__ == "__main__":
    H.main()
