#!/usr/bin/env python3
"""`luaproxy check` (docs/plugins.md "Checking plugins"): the command line on the fixtures
of tests/check and on clean files, and the same check when a config loads: `-t` and a
reload log the warnings of the config's own plugins and scripts; with
`lint.warnings_are_errors` they refuse the load with file:line and the running config keeps
serving."""

import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua"))
import luatest as L  # noqa: E402
from luatest import H  # noqa: E402

GOOD = r'''
local P = { name = "tagger", priority = 10, schema = { fields = {} } }
function P.request(req)
  req:set_header("X-Tag", "%s")
end
return P
'''
# A misspelled request method on line 4: the engine would fail only when a request runs it.
TYPO = r'''
local P = { name = "tagger", priority = 10, schema = { fields = {} } }
function P.request(req)
  if req:heder("X-Skip") then return end
  req:set_header("X-Tag", "%s")
end
return P
'''


def run_check(*args, cwd=None):
    p = subprocess.run([H.LUAPROXY, "check"] + list(args), capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=H.T(60), cwd=cwd,
                       preexec_fn=H._preexec)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


class CheckCliTest(L.LuaTestCase):
    def test_fixtures_are_found_with_file_and_line(self):
        d = os.path.join(L.REPO, "tests", "check")
        rc, out, err = run_check(d)
        self.assertEqual(rc, 1, err)
        for name in sorted(os.listdir(d)):
            if not name.endswith(".lua"):
                continue
            with open(os.path.join(d, name)) as f:
                code, line = f.readline().split()[2:4]
            self.assertRegex(out, r"(?m)^%s:%s:\d+: .*\(%s\)$"
                             % (os.path.join(d, name), line, code))

    def test_clean_files_exit_zero(self):
        d = H.Workdir.new("check-clean")
        with open(os.path.join(d, "tagger.lua"), "w") as f:
            f.write(GOOD % "a")
        rc, out, err = run_check(cwd=d)
        self.assertEqual((rc, out), (0, ""), err)
        self.assertIn("0 warnings in 0 of 1 file", err)

    def test_bundled_plugins_and_scripts_are_clean(self):
        rc, out, err = run_check(os.path.join(L.REPO, "plugins"),
                                 os.path.join(L.REPO, "scripts"))
        self.assertEqual((rc, out), (0, ""), err)

    def test_config_files(self):
        d = H.Workdir.new("check-config")
        os.makedirs(os.path.join(d, "plugins"))
        with open(os.path.join(d, "plugins", "tagger.lua"), "w") as f:
            f.write(TYPO % "a")
        cfg = os.path.join(d, "proxy.lua")
        with open(cfg, "w") as f:
            f.write('return { listen = { { address = "127.0.0.1:0" } }, upstreams = { o = '
                    '{ targets = { "127.0.0.1:1" } } }, routes = { { match = { prefix = "/" },'
                    ' upstream = "o", plugins = { { name = "tagger" }, { name = "request_id" }'
                    ' } } } }\n')
        rc, out, err = run_check("-c", cfg, cwd="/")
        self.assertEqual(rc, 1, err)
        self.assertIn("plugins/tagger.lua:4:6: req:heder", out)
        # The bundled request_id is not the user's to check.
        self.assertNotIn("request_id", out)


class CheckOnLoadTest(L.LuaTestCase):
    def config(self, errors):
        return ('return { listen = { { address = "127.0.0.1:0" } }, upstreams = { o = '
                '{ targets = { "127.0.0.1:1" } } }, lint = { warnings_are_errors = %s }, '
                'routes = { { match = { prefix = "/" }, upstream = "o", plugins = { { name = '
                '"tagger" } } } } }\n' % ("true" if errors else "false"))

    def test_dash_t_logs_warnings(self):
        rc, out, err, _ = L.check_config(self.config(False),
                                         files={"plugins/tagger.lua": TYPO % "a"})
        self.assertEqual(rc, 0, err)
        self.assertRegex(err, r"lint: \S*plugins/tagger\.lua:4:6: req:heder: .*\(LP01\)")

    def test_dash_t_refuses_with_warnings_are_errors(self):
        rc, out, err, _ = L.check_config(self.config(True),
                                         files={"plugins/tagger.lua": TYPO % "a"})
        self.assertEqual(rc, 1, out)
        self.assertRegex(err, r"lint: 1 warning \(lint\.warnings_are_errors\): "
                              r"\S*plugins/tagger\.lua:4:6: req:heder")
        rc, out, err, _ = L.check_config(self.config(True),
                                         files={"plugins/tagger.lua": GOOD % "a"})
        self.assertEqual(rc, 0, err)
        self.assertNotIn("lint:", err)


class CheckOnReloadTest(L.LuaTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("o")
        ups = {"o": H.upstream(cls.origin.address())}
        routes = [{"match": {"prefix": "/"}, "upstream": "o",
                   "plugins": [{"name": "tagger"}]}]
        cls.proxy = cls.start_lua_proxy(ups, routes, files={"plugins/tagger.lua": GOOD % "v1"},
                                        workers=1, lint={"warnings_are_errors": True})
        cls.plugin = os.path.join(cls.proxy.dir, "plugins", "tagger.lua")

    def tag(self):
        r = self.get("/headers")
        self.assertEqual(r.status, 200)
        tags = L.hvalues(L.origin_headers(r), "x-tag")
        return tags[0] if tags else None

    def write(self, text):
        with open(self.plugin, "w") as f:
            f.write(text)

    def reload_and_wait(self, needle, count):
        self.proxy.signal(signal.SIGHUP)
        H.wait_for(lambda: self.proxy.stderr().count(needle) >= count, H.T(10),
                   what=needle + " in the log:\n" + self.proxy.stderr()[-2000:])

    def test_a_warning_refuses_the_reload_and_the_old_config_serves(self):
        self.assertEqual(self.tag(), "v1")
        self.write(TYPO % "v2")
        try:
            self.reload_and_wait("reload failed", 1)
            line = [l for l in self.proxy.stderr().splitlines() if "reload failed" in l][-1]
            self.assertRegex(line, r"plugins/tagger\.lua:4:6: req:heder")
            self.assertEqual(self.tag(), "v1")
        finally:
            self.write(GOOD % "v3")
        self.reload_and_wait("live in", 1)
        self.assertEqual(self.tag(), "v3")


if __name__ == "__main__":
    H.main()
