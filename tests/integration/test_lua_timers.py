#!/usr/bin/env python3
"""Background work from Lua (docs/lua-api.md, "Timers and background work"):
proxy.timer.at/every and proxy.spawn in the real engine: they run detached from the
request, may yield, are cancellable and bounded (lua.max_timers, lua.max_running_timers,
counted in GET /status), a failure or a runaway loop in one is logged and stopped without
hurting the worker, timers made in init_worker start once the worker serves, and pending
timers run once with premature = true when a reload or a shutdown ends their
generation."""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reload"))
import reloadtest as RT  # noqa: E402
from reloadtest import H  # noqa: E402

R = H.LuaRaw

PLUGIN = r'''
local P = { name = "bg", priority = 10, schema = { fields = {
  tag = { type = "string", default = "g1", description = "generation tag" } } } }
local state = { ticks = 0, sum = 0 }
P.state = state

function P.init_worker(conf)
  -- Started once the worker serves; a pending one-shot far in the future goes premature
  -- at the end of its generation.
  proxy.timer.every(0.05, function(premature)
    state.ticks = state.ticks + 1
  end)
  proxy.timer.at(3600, function(premature, tag)
    proxy.log.warn("FAR TIMER " .. tag .. " premature=" .. tostring(premature))
  end, conf.tag)
end

local handlers = {}

-- A timer and a spawned thread run after the answer: the answer does not wait for them.
-- Both wait (yielding) until the file ?flag= exists, which the test makes only once it has
-- the answer.
local function wait_file(path)
  while true do
    local f = io.open(path)
    if f then f:close() return end
    proxy.sleep(0.02)
  end
end

function handlers.detached(req)
  local flag = req:query("flag")
  proxy.timer.at(0.2, function(premature, a, b)
    wait_file(flag) -- timers may yield
    proxy.log.warn(string.format("AT ran a=%s b=%s premature=%s", a, b, tostring(premature)))
  end, "x", 7)
  assert(proxy.spawn(function(n)
    wait_file(flag)
    proxy.log.warn("SPAWN ran n=" .. n)
  end, 42))
  return req:respond(200, "answered")
end

function handlers.ticks(req)
  return req:respond(200, tostring(state.ticks))
end

function handlers.cancel(req)
  local hits = 0
  local h = assert(proxy.timer.at(0.05, function() hits = hits + 1 end))
  local ok, err = h:cancel()
  local again_ok, again_err = h:cancel()
  local e = assert(proxy.timer.every(0.02, function() hits = hits + 100 end))
  for _ = 1, 200 do -- until it ran at least once (a loaded machine may delay it)
    proxy.sleep(0.01)
    if hits >= 100 then break end
  end
  assert(e:cancel())
  local after = hits
  proxy.sleep(0.1)
  return req:respond(200, string.format("%s %s %s %s %s", tostring(ok), tostring(again_ok),
    tostring(again_err), tostring(after >= 100), tostring(hits == after)))
end

-- lua.max_timers is 5 in this config, init_worker's two take 2: the handler gets 3, and
-- the 4th is refused.
function handlers.limit(req)
  local made, err = {}, nil
  for i = 1, 10 do
    local h, e = proxy.timer.at(30, function() end)
    if not h then err = e break end
    made[#made + 1] = h
  end
  for _, h in ipairs(made) do h:cancel() end
  return req:respond(200, string.format("%d %s", #made, tostring(err)))
end

function handlers.fail(req)
  proxy.timer.at(0, function() error("boom in a timer") end)
  proxy.spawn(function() local x = 0 while true do x = x + 1 end end)
  return req:respond(200, "ok")
end

function handlers.counts(req)
  return req:respond(200, proxy.timer.pending_count() .. " " .. proxy.timer.running_count())
end

function P.request(req, conf)
  local h = handlers[req:path():match("^/bg/(%w+)")]
  if h then return h(req) end
end
return P
'''


class TimersTest(RT.ReloadTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("o")
        cls.ups = {"o": H.upstream(cls.origin.address())}
        cls.routes = [RT.route("/bg/", upstream="o", plugins=[{"name": "bg"}])]
        cls.proxy = cls.start_reload_proxy(
            cls.ups, cls.routes, files={"plugins/bg.lua": PLUGIN}, workers=1,
            lua={"max_timers": 5, "max_running_timers": 3, "phase_timeout": 0.2},
            timeouts={"drain": 2})

    def body(self, path):
        r = self.get(path)
        self.assertEqual(r.status, 200, r.body)
        return r.body.decode()

    def wait_log(self, needle, timeout=None):
        H.wait_for(lambda: needle in self.proxy.stderr(), timeout or H.T(5),
                   what=repr(needle) + " in:\n" + self.proxy.stderr()[-3000:])

    def test_timer_and_spawn_run_detached(self):
        # They cannot end before the flag exists: an answer now did not wait for them.
        flag = os.path.join(H.Workdir.new("detached"), "go")
        self.assertEqual(self.body("/bg/detached?flag=" + flag), "answered")
        self.assertNotIn("AT ran", self.proxy.stderr())
        self.assertNotIn("SPAWN ran", self.proxy.stderr())
        with open(flag, "w"):
            pass
        self.wait_log("AT ran a=x b=7 premature=false")
        self.wait_log("SPAWN ran n=42")

    def test_init_worker_every_timer_ticks(self):
        first = int(self.body("/bg/ticks"))
        H.wait_for(lambda: int(self.body("/bg/ticks")) >= first + 3, H.T(5),
                   what="the every timer made by init_worker to tick")

    def test_cancel(self):
        self.assertEqual(self.body("/bg/cancel"), "true nil not pending true true")

    def test_bounds_are_errors_and_counted(self):
        before = self.status()["lua"]["timers_refused"]
        made, err = self.body("/bg/limit").split(" ", 1)
        # 2 pending from init_worker (the every timer and the far one) leave 3.
        self.assertEqual(int(made), 3)
        self.assertEqual(err, "too many pending timers (lua.max_timers)")
        st = self.status()["lua"]
        self.assertEqual(st["timers_refused"], before + 1)
        H.wait_for(lambda: self.status()["lua"]["timers_pending"] == 2, H.T(5),
                   what="cancelled timers to leave the pending count")

    def test_failure_and_runaway_are_logged_and_stopped(self):
        self.assertEqual(self.body("/bg/fail"), "ok")
        self.wait_log("timer failed: ")
        self.wait_log("boom in a timer")
        self.wait_log("lua.phase_timeout")
        # The worker still serves, and the runaway thread gave its slot back.
        H.wait_for(lambda: self.body("/bg/counts").split()[1] == "0", H.T(5),
                   what="no background task left running")
        self.assertEqual(self.body("/bg/cancel"), "true nil not pending true true")


class PrematureTest(RT.ReloadTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("o")
        cls.ups = {"o": H.upstream(cls.origin.address())}
        cls.proxy = cls.start_reload_proxy(
            cls.ups, [RT.route("/bg/", upstream="o", plugins=[{"name": "bg", "tag": "g1"}])],
            files={"plugins/bg.lua": PLUGIN}, workers=2)

    def test_reload_then_shutdown(self):
        self.wait_for_ticks()
        self.rewrite(routes=[RT.route("/bg/", upstream="o",
                                      plugins=[{"name": "bg", "tag": "g2"}])])
        self.reload()
        # Both workers' pending timers of generation 1 ran once, premature.
        H.wait_for(lambda: self.proxy.log_count("FAR TIMER g1 premature=true") == 2, H.T(5),
                   what="premature timers of generation 1:\n" + self.proxy.stderr()[-2000:])
        self.assertNotIn("FAR TIMER g2", self.proxy.stderr())
        self.proxy.signal(signal.SIGTERM)
        self.proxy.wait_exit(H.T(10))
        self.assertEqual(self.proxy.log_count("FAR TIMER g2 premature=true"), 2,
                         self.proxy.stderr()[-2000:])

    def wait_for_ticks(self):
        H.wait_for(lambda: self.get("/bg/ticks").status == 200, H.T(5), what="serving")


if __name__ == "__main__":
    H.main()
