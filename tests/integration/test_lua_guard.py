#!/usr/bin/env python3
"""The runaway guard (lua/luaproxy/guard.lua, docs/architecture.md "Runaway guard") in the
real engine: a user plugin's runaway loop, in its own file or in a module it requires, is
stopped within lua.phase_timeout (500) and the only worker goes on serving; a user plugin's
hot path is JIT-compiled (jit.v shows its traces); init_worker failing or spinning at
start-up is a refused start, never a crash.

The user plugins live in a directory of the test's own (not the fixture directory), the
required module beside the config (on package.path)."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua"))
import luatest as L  # noqa: E402
from luatest import H  # noqa: E402

GUARD = os.path.join(L.LUA_DIR, "guard")


def route(prefix, **kw):
    r = {"match": {"prefix": prefix}}
    r.update(kw)
    return r


def user_files():
    return {"myplugins/hot.lua": os.path.join(GUARD, "hot.lua"),
            "myplugins/spinreq.lua": os.path.join(GUARD, "spinreq.lua"),
            "spinlib.lua": os.path.join(GUARD, "spinlib.lua")}


class GuardTest(L.LuaTestCase):
    @classmethod
    def setUpClass(cls):
        cls.one = cls.start_origin("one")
        ups = {"one": H.upstream(cls.one.address())}
        cls.jitlog = os.path.join(H.Workdir.new("jitlog"), "jit.v.log")
        routes = [
            route("/here/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "spinreq", "where": "here"}]),
            route("/module/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "spinreq", "where": "module"}]),
            route("/hot/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "hot", "jitlog": cls.jitlog}]),
            route("/", upstream="one"),
        ]
        cls.proxy = cls.start_lua_proxy(ups, routes, workers=1, files=user_files(),
                                        lua={"phase_timeout": 0.5,
                                             "plugin_paths": ["myplugins"]},
                                        timeouts={"drain": 1})
        proc = cls.proxy.proc
        # When the guard misses a loop the only worker spins for good: SIGKILL then.
        cls.addClassCleanup(lambda: H.stop_process(proc, sig=signal.SIGKILL))

    def assertServes(self):
        for _ in range(3):
            r = self.get("/", timeout=H.T(5))
            self.assertEqual((r.status, r.body), (200, b"hello"))
        r = self.get("/here/", timeout=H.T(5))  # the spinning plugin's other paths too
        self.assertEqual((r.status, r.body), (200, b"hello"))

    def spin(self, path, where):
        before = len(self.proxy.stderr())
        t0 = time.monotonic()
        try:
            r = self.get(path, timeout=H.T(8))
        except socket.timeout:
            self.fail("a runaway loop %s was not stopped by lua.phase_timeout = 0.5 within "
                      "%.0fs: the worker hangs" % (where, H.T(8)))
        dt = time.monotonic() - t0
        self.assertEqual(r.status, 500)
        self.assertGreaterEqual(dt, 0.45)
        self.assertLess(dt, H.T(2), "stopped after %.2fs (phase_timeout 0.5 s)" % dt)
        self.wait_log("phase timed out")
        return self.proxy.stderr()[before:]

    def test_loop_in_user_plugin_is_stopped(self):
        log = self.spin("/here/spin", "in a user plugin's request phase")
        self.assertIn("lua.phase_timeout 0.500s", log)
        self.assertRegex(log, r"myplugins/spinreq\.lua:\d+: phase timed out")
        self.assertServes()

    def test_loop_in_required_module_is_stopped(self):
        log = self.spin("/module/spin", "in a module a user plugin requires")
        # the error names the module's file and line: the check sits in its loop
        self.assertRegex(log, r"spinlib\.lua:6: phase timed out")
        self.assertServes()

    def test_again_and_again(self):
        # the flag is cleared after each phase: no later request inherits a timeout
        for _ in range(2):
            self.spin("/here/spin", "in a user plugin (again)")
            self.assertServes()

    def test_user_plugin_hot_path_is_compiled(self):
        path = "/hot/?q=" + "abcdefghij" * 20
        with H.Client(self.proxy.port, timeout=H.T(5)) as c:
            for _ in range(300):
                r = c.request("GET", path)
                self.assertEqual(r.status, 200)
        with open(self.jitlog) as f:
            lines = f.read().splitlines()
        mine = [l for l in lines if "hot.lua:" in l]
        compiled = [l for l in mine if re.match(r"\[TRACE\s+\d+ ", l)]
        self.assertTrue(compiled, "no trace of the user plugin hot.lua was compiled; jit.v "
                        "said:\n" + "\n".join(lines[-40:]))
        # the checksum loop itself (a loop trace starting in hot.lua)
        self.assertTrue([l for l in compiled if re.search(r"hot\.lua:\d+ loop\]", l)],
                        "\n".join(mine))
        # and every request still went through it
        r = self.get("/hot/headers", timeout=H.T(5))
        self.assertEqual(r.status, 200)
        self.assertEqual(len(L.hvalues(L.origin_headers(r), "X-Hot")), 1)


class InitWorkerStartTest(L.LuaTestCase):
    """init_worker runs protected: an error or a runaway loop there refuses the start with
    the plugin's file:line and exit status 1; the process never aborts. Loading is guarded
    too: a loop in a plugin's main chunk, in its compile() or in a module it requires at
    load refuses the start (and `luaproxy -t`) instead of hanging the main thread."""

    def start_failing(self, body, plugin=None):
        """Start-up (and `luaproxy -t`, except for init_worker, which -t does not run yet:
        issue 11, item 12) exits 1; returns their error output."""
        one = self.start_origin("one")
        in_init_worker = plugin is None
        plugin = plugin or ("local P = { name = \"badinit\", priority = 5, "
                            "schema = { fields = {} } }\n"
                            "function P.init_worker(conf)\n" + body + "\nend\nreturn P\n")
        p = H.Proxy.build({"one": H.upstream(one.address())}, [route("/", upstream="one")],
                          name="badinit", workers=1,
                          plugins=[{"name": "badinit"}],
                          lua={"phase_timeout": 0.5, "init_timeout": 1,
                               "plugin_paths": ["myplugins"]},
                          # A start that fails after the workers were made leaks them
                          # (lp_workers_start's error path, worker.c): not what this
                          # test is about, so LeakSanitizer is off for these processes.
                          env={"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "")
                               + ":abort_on_error=0:detect_leaks=0"})
        L.copy_files(p.dir, {"myplugins/badinit.lua": plugin, "loadspin.lua": LOADSPIN})
        self.addCleanup(p.stop)
        p.write_config()
        rc, out, err, _ = L.check_config(p.config_path)
        if in_init_worker:
            err = ""
        else:
            self.assertEqual(rc, 1, out + err)
        p.start(wait=False)
        rc = p.wait_exit(H.T(40))  # a loop at load is stopped after 10 s
        self.assertIsNotNone(rc, "luaproxy did not exit:\n" + p.stderr()[-3000:])
        self.assertEqual(rc, 1, p.stderr()[-3000:])
        return err + p.stderr()

    def test_error_in_init_worker(self):
        err = self.start_failing("  local t = nil\n  return t.x")
        self.assertRegex(err, r"badinit\.lua:4: attempt to index")
        self.assertIn("init_worker", err)

    def test_runaway_init_worker(self):
        err = self.start_failing("  while true do end")
        self.assertRegex(err, r"badinit\.lua:3: phase timed out")

    def test_runaway_plugin_main_chunk(self):
        err = self.start_failing(None, plugin=(
            "local n = 0\nwhile true do n = n + 1 end\n"
            "return { name = \"badinit\", priority = 5, schema = { fields = {} } }\n"))
        self.assertRegex(err, r"badinit\.lua:2: phase timed out")

    def test_runaway_compile(self):
        err = self.start_failing(None, plugin=(
            "local P = { name = \"badinit\", priority = 5, schema = { fields = {} } }\n"
            "function P.compile(conf)\n  repeat until false\nend\nreturn P\n"))
        self.assertRegex(err, r"badinit\.lua:3: phase timed out")

    def test_runaway_module_required_at_load(self):
        err = self.start_failing(None, plugin=(
            "local lib = require \"loadspin\"\n"
            "return { name = \"badinit\", priority = 5, schema = { fields = {} } }\n"))
        self.assertRegex(err, r"loadspin\.lua:2: phase timed out")


# A module whose main chunk never ends (beside the config, on package.path).
LOADSPIN = "local t = {}\nfor i = 1, math.huge do t[i % 10] = i end\nreturn t\n"


if __name__ == "__main__":
    H.main()
