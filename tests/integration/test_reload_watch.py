#!/usr/bin/env python3
"""--watch and `watch = true` (docs/reload.md): an edit of a *.lua file in the config's
directory (a route handler module, the config itself) or its plugins/ subdirectory reloads
within a few seconds (200 ms after the last change); other files do not; a broken edit is
refused and the old generation keeps serving until the file is fixed."""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reload"))
import reloadtest as RT  # noqa: E402
from reloadtest import H  # noqa: E402


def module(text):
    return ("return { handler = function(req)\n"
            "  return req:respond(200, \"%s\") end }\n" % text)


PLUGIN = """local P = { name = "wplug", priority = 5, schema = { fields = {} } }
function P.response(req, conf) req:set_resp_header("X-Wplug", "%s") end
return P
"""


class WatchTestBase(RT.ReloadTestCase):
    ARGS = ()
    EXTRA = {}

    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.proxy = cls.start_reload_proxy(
            {"a": H.upstream(cls.a.address())},
            [RT.route("/h", handler="wmod"),
             RT.route("/", upstream="a", plugins=[{"name": "wplug"}])],
            args=cls.ARGS, files={"wmod.lua": module("m1"), "plugins/wplug.lua": PLUGIN % "p1"},
            **cls.EXTRA)
        H.wait_for(lambda: "watch: reloading on changes" in cls.proxy.stderr(), H.T(5),
                   what="the watch started")

    def path(self, rel):
        return os.path.join(self.proxy.dir, rel)

    def write(self, rel, text, atomic=False):
        p = self.path(rel)
        if atomic:  # as editors do: a temporary file renamed over the old one
            tmp = os.path.join(os.path.dirname(p), ".%s.tmp" % os.path.basename(p))
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, p)
        else:
            with open(p, "w") as f:
                f.write(text)

    def settle(self):
        """Waits until no reload happened for 0.6 s; returns the reload count."""
        last = self.status()["reloads"] + self.status()["reloads_failed"]
        while True:
            time.sleep(0.6)
            st = self.status()
            n = st["reloads"] + st["reloads_failed"]
            if n == last:
                return st
            last = n


class WatchFlagTest(WatchTestBase):
    ARGS = ("--watch",)

    def test_1_handler_module_edit(self):
        self.assertEqual(self.version(), "m1")
        self.write("wmod.lua", module("m2"))
        t0 = time.monotonic()
        self.wait_version("m2", timeout=H.T(5))
        self.assertLess(time.monotonic() - t0, H.T(5))
        self.assertIn("watch: a file changed, reloading", self.proxy.stderr())

    def test_2_atomic_replace(self):
        self.write("wmod.lua", module("m3"), atomic=True)
        self.wait_version("m3", timeout=H.T(5))

    def test_3_plugin_edit(self):
        self.write("plugins/wplug.lua", PLUGIN % "p2")
        H.wait_for(lambda: self.get("/").header("X-Wplug") == "p2", H.T(5),
                   what="the plugin edit live")

    def test_4_config_edit(self):
        self.rewrite(routes=[RT.route("/h", handler=RT.respond_handler("c1")),
                             RT.route("/", upstream="a")])
        self.wait_version("c1", timeout=H.T(5))
        self.rewrite(routes=[RT.route("/h", handler="wmod"),
                             RT.route("/", upstream="a", plugins=[{"name": "wplug"}])])
        self.wait_version("m3", timeout=H.T(5))

    def test_5_other_files_ignored(self):
        st = self.settle()
        with open(self.path("notes.txt"), "w") as f:
            f.write("not Lua\n")
        with open(self.path("wmod.lua.bak"), "w") as f:
            f.write(module("bak"))
        time.sleep(0.8)
        st2 = self.status()
        self.assertEqual(st2["generation"], st["generation"])
        self.assertEqual(st2["reloads"] + st2["reloads_failed"],
                         st["reloads"] + st["reloads_failed"])

    def test_6_burst_of_writes_is_one_reload(self):
        st = self.settle()
        for i in range(5):
            self.write("wmod.lua", module("burst%d" % i))
            time.sleep(0.02)
        self.wait_version("burst4", timeout=H.T(5))
        st2 = self.settle()
        self.assertEqual(st2["reloads"], st["reloads"] + 1)

    def test_7_broken_edit_keeps_old_generation(self):
        self.write("wmod.lua", module("good"))
        self.wait_version("good", timeout=H.T(5))
        gen = self.settle()["generation"]
        failed = self.status()["reloads_failed"]
        self.write("wmod.lua", "return { handler = function(req)\n  return req:respond(200, 'x' end }\n")
        H.wait_for(lambda: self.status()["reloads_failed"] == failed + 1, H.T(5),
                   what="the broken edit refused")
        self.assertIn("wmod.lua:2:", self.proxy.stderr())
        self.assertEqual(self.version(), "good")
        self.assertEqual(self.status()["generation"], gen)
        self.write("wmod.lua", module("fixed"))
        self.wait_version("fixed", timeout=H.T(5))


class WatchConfigKeyTest(WatchTestBase):
    EXTRA = {"watch": True}

    def test_watch_key(self):
        self.assertEqual(self.version(), "m1")
        self.write("wmod.lua", module("k2"))
        self.wait_version("k2", timeout=H.T(5))


class NoWatchTest(RT.ReloadTestCase):
    def test_no_watch_without_flag_or_key(self):
        a = self.start_origin("a")
        p = self.start_reload_proxy({"a": H.upstream(a.address())},
                                    [RT.route("/h", handler="wmod")],
                                    files={"wmod.lua": module("n1")}, name="NoWatch")
        self.addCleanup(p.stop)
        self.assertEqual(self.version(proxy=p), "n1")
        with open(os.path.join(p.dir, "wmod.lua"), "w") as f:
            f.write(module("n2"))
        time.sleep(1.0)
        self.assertEqual(self.version(proxy=p), "n1")
        self.assertNotIn("watch:", p.stderr())


if __name__ == "__main__":
    H.main()
