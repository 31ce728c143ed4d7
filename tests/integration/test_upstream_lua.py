#!/usr/bin/env python3
"""The Lua side of balancing (docs/lua-api.md, docs/balancing.md): the upstream phase runs
again before each retry and sees why the last try failed (req:last_failure()); Lua may
remove the failed target there, or pick another itself; init_worker and the phases add,
remove and reweight targets (proxy.upstream(name)), per worker, and a reload starts again
from the config.

Origins are lp_origins answering with X-Origin-Id; a "dead" target is a port nothing
listens on. One worker, so that per-worker changes are seen by every request."""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reload"))
import reloadtest as RT  # noqa: E402
from reloadtest import H  # noqa: E402

R = H.LuaRaw

# Records every run of the upstream phase in X-Tries: "first", then one entry per retry
# ("kind status address"); with conf.drop, removes a target that refused a connect.
RETRYLOG = r'''
local P = { name = "retrylog", priority = 100,
            schema = { fields = { drop = { type = "boolean", default = false } } } }
function P.upstream(req, conf)
  local kind, status, addr = req:last_failure()
  local seen = req.ctx.tries or {}
  req.ctx.tries = seen
  seen[#seen + 1] = kind and (kind .. " " .. tostring(status) .. " " .. addr) or "first"
  if conf.drop and kind == "connect" then
    assert(proxy.upstream(req:upstream_name()):remove_target(addr))
  end
end
function P.response(req)
  req:set_resp_header("X-Tries", table.concat(req.ctx.tries or {}, "|"))
end
return P
'''

# init_worker adds a target; /targets answers the set as JSON; /weight and /remove change it.
TARGETS = r'''
local P = { name = "targets", priority = 200,
            schema = { fields = { add = { type = "string" }, upstream = { type = "string" } } } }
function P.init_worker(conf)
  if conf.add then assert(proxy.upstream(conf.upstream):add_target(conf.add, 3)) end
end
function P.request(req, conf)
  local u = proxy.upstream(conf.upstream)
  local path = req:path()
  if path == "/targets" then
    return req:respond(200, proxy.json.encode(u:targets()))
  elseif path == "/weight" then
    local ok, err = u:set_weight(req:query("addr"), tonumber(req:query("w")))
    return req:respond(ok and 200 or 404, err or "ok")
  elseif path == "/remove" then
    local ok, err = u:remove_target(req:query("addr"))
    return req:respond(ok and 200 or 404, err or "ok")
  elseif path == "/add" then
    local ok, err = u:add_target(req:query("addr"), tonumber(req:query("w") or 1))
    return req:respond(ok and 200 or 400, err or "ok")
  end
end
return P
'''


def route(host, upstream, plugins):
    return {"match": {"host": host, "prefix": "/"}, "upstream": upstream, "plugins": plugins}


class UpstreamLuaTest(RT.ReloadTestCase):
    @classmethod
    def setUpClass(cls):
        H.require_proxy()
        H.require_origin()
        cls.a = cls.start_origin("a")
        cls.b = cls.start_origin("b")
        cls.c = cls.start_origin("c")
        cls.dead = H.dead_port()
        cls.dead_addr = "127.0.0.1:%d" % cls.dead
        a, b, c = cls.a.address(), cls.b.address(), cls.c.address()
        cls.ups = {
            # The dead target first: round robin sends the first request there.
            "retry": H.upstream(cls.dead_addr, a, retries=2),
            "drop": H.upstream(cls.dead_addr, b, retries=2),
            "status": H.upstream(a, b, retries=1, retry_on=[503]),
            "dyn": H.upstream(a, b),
            "plain": H.upstream(a, b),
        }
        cls.routes = [
            route("retry.test", "retry", [{"name": "retrylog"}]),
            route("drop.test", "drop", [{"name": "retrylog", "drop": True}]),
            route("status.test", "status", [{"name": "retrylog"}]),
            route("dyn.test", "dyn", [{"name": "targets", "upstream": "dyn", "add": c}]),
            route("plain.test", "plain", [{"name": "targets", "upstream": "plain"}]),
        ]
        cls.proxy = cls.start_reload_proxy(
            cls.ups, cls.routes, workers=1,
            files={"plugins/retrylog.lua": RETRYLOG, "plugins/targets.lua": TARGETS})

    def get(self, host, path="/fixed?size=10"):
        r = H.get(self.proxy.port, path, host=host)
        self.assertTrue(r.complete, r)
        return r

    def targets(self, host):
        r = self.get(host, "/targets")
        self.assertEqual(r.status, 200, r.body)
        return {t["address"]: t for t in json.loads(r.body)}

    def test_retry_runs_the_upstream_phase_again_with_the_failure(self):
        tries = [self.get("retry.test").header("X-Tries") for _ in range(4)]
        # Round robin: every other request tries the dead target first, is refused, and
        # the upstream phase runs again seeing why before the retry to a.
        self.assertIn("first|connect nil %s" % self.dead_addr, tries, tries)
        self.assertIn("first", tries, tries)
        for t in tries:
            self.assertIn(t, ("first", "first|connect nil %s" % self.dead_addr))

    def test_a_retry_on_status_shows_the_status(self):
        r = self.get("status.test", "/status?code=503")
        # Both answer 503: the second try's answer goes to the client (retries = 1).
        self.assertEqual(r.status, 503)
        first = r.header("X-Tries").split("|")
        self.assertEqual(len(first), 2, first)
        self.assertEqual(first[0], "first")
        kind, status, addr = first[1].split(" ")
        self.assertEqual((kind, status), ("status", "503"))
        by_id = {"a": self.a.address(), "b": self.b.address()}
        self.assertIn(addr, by_id.values())
        self.assertNotEqual(addr, by_id[r.header("X-Origin-Id")])  # the retry went elsewhere

    def test_lua_removes_the_failed_target_on_retry(self):
        seen = [self.get("drop.test").header("X-Tries") for _ in range(6)]
        refused = [t for t in seen if "connect" in t]
        # At most one request ever reached the dead target: the first retry removed it.
        self.assertLessEqual(len(refused), 1, seen)
        for _ in range(6):
            r = self.get("drop.test")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.header("X-Tries"), "first")
            self.assertEqual(r.header("X-Origin-Id"), "b")

    def test_init_worker_adds_a_target_and_phases_change_weights(self):
        t = self.targets("dyn.test")
        c = self.c.address()
        self.assertEqual(set(t), {self.a.address(), self.b.address(), c})
        self.assertEqual(t[c]["weight"], 3)
        self.assertEqual(t[c]["state"], "up")
        # Smooth round robin over weights 1/1/3: exactly 3 of every 5 go to c.
        got = [self.get("dyn.test").header("X-Origin-Id") for _ in range(10)]
        self.assertEqual(got.count("c"), 6, got)
        self.assertEqual(got.count("a"), 2, got)
        # Weight 1 for c: an even spread.
        self.assertEqual(self.get("dyn.test", "/weight?addr=%s&w=1" % c).status, 200)
        got = [self.get("dyn.test").header("X-Origin-Id") for _ in range(9)]
        self.assertEqual(sorted(got.count(x) for x in "abc"), [3, 3, 3], got)
        r = self.get("dyn.test", "/weight?addr=127.0.0.1:1&w=2")
        self.assertEqual(r.status, 404)
        self.assertIn(b"no target 127.0.0.1:1 in upstream dyn", r.body)
        r = self.get("dyn.test", "/add?addr=localhost:80")
        self.assertEqual(r.status, 400)
        self.assertIn(b"expected an IP address and port", r.body)

    def test_changes_are_per_generation_and_a_reload_starts_from_the_config(self):
        a, b = self.a.address(), self.b.address()
        self.assertEqual(self.get("plain.test", "/remove?addr=%s" % a).status, 200)
        self.assertEqual(set(self.targets("plain.test")), {b})
        for _ in range(4):
            self.assertEqual(self.get("plain.test").header("X-Origin-Id"), "b")
        self.assertEqual(self.get("plain.test", "/remove?addr=%s" % b).status, 200)
        r = self.get("plain.test")  # no target left: 503 at once, never a hang
        self.assertEqual(r.status, 503)
        self.reload()
        self.assertEqual(set(self.targets("plain.test")), {a, b})
        got = {self.get("plain.test").header("X-Origin-Id") for _ in range(4)}
        self.assertEqual(got, {"a", "b"})

    def test_proxy_upstream_outside_the_worker_is_an_error(self):
        rc, out, err = self.cli("-t")
        self.assertEqual(rc, 0, out + err)
        path = os.path.join(self.proxy.dir, "bad.lua")
        with open(path, "w") as f:
            f.write("proxy.upstream('dyn')\n" + H.config_text(self.proxy.cfg))
        try:
            p = subprocess.run([H.LUAPROXY, "-t", "-c", path], stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=H.T(40), preexec_fn=H._preexec)
        except subprocess.TimeoutExpired:
            self.fail("luaproxy -t did not exit")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(b"proxy.upstream(): only in init_worker and request phases",
                      p.stdout + p.stderr)

if __name__ == "__main__":
    H.main()
