#!/usr/bin/env python3
"""`luaproxy test` (docs/testing-plugins.md): a user's plugin and its specs in a directory of
their own, outside the source tree, run under busted with LuaJIT, proxy.test and the
plugin's helper modules found; a failing spec fails the command; `-p DIR` adds a plugin
directory; a missing busted is said clearly. Needs busted (Debian: lua-busted) and luajit."""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

PLUGIN = r'''local util = require "greet_util"   -- a helper beside the plugin
local P = {
  name = "greet",
  priority = 100,
  schema = { fields = {
    greeting = { type = "string", default = "hello", description = "what to say" },
  } },
}
function P.request(req, conf)
  if req:path() == "/hi" then return req:respond(200, util.shout(conf.greeting)) end
  req:set_header("X-Greet", conf.greeting)
end
return P
'''

UTIL = 'return { shout = function(s) return s:upper() .. "!" end }\n'

SPEC = r'''local T = require "proxy.test"
local greet = require "greet"

describe("greet", function()
  it("answers /hi itself", function()
    local res = T.run(greet, {}, { uri = "/hi" })
    assert.is_true(res.responded)
    assert.equal("HELLO!", res.body)
  end)

  it("sets a header otherwise, and runs under LuaJIT", function()
    local res = T.run(greet, { greeting = "hey" }, { uri = "/x" })
    assert.equal("hey", res.request_headers["X-Greet"])
    assert.is_table(jit)
    assert.is_truthy(require("ffi"))
  end)
end)
'''

FAILING = r'''local T = require "proxy.test"
local greet = require "greet"
describe("greet", function()
  it("is wrong on purpose", function()
    assert.equal("bye", T.run(greet, {}, { uri = "/hi" }).body)
  end)
end)
'''


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


class PluginSpecsTest(unittest.TestCase):
    def setUp(self):
        H.require_proxy()
        # Outside the source tree on purpose (the test is about a user's own directory).
        self.dir = tempfile.mkdtemp(prefix="lp-user-plugin-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)
        write(os.path.join(self.dir, "plugins", "greet.lua"), PLUGIN)
        write(os.path.join(self.dir, "plugins", "greet_util.lua"), UTIL)
        write(os.path.join(self.dir, "spec", "greet_spec.lua"), SPEC)

    def run_test(self, *args, cwd=None, env=None):
        e = dict(os.environ)
        e.pop("LUA_PATH", None)
        e.update(env or {})
        p = subprocess.run([H.LUAPROXY, "test"] + list(args), cwd=cwd or self.dir, env=e,
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=H.T(60))
        return (p.returncode, p.stdout.decode("utf-8", "replace")
                + p.stderr.decode("utf-8", "replace"))

    def test_specs_of_a_plugin_in_its_own_directory(self):
        rc, out = self.run_test()
        self.assertEqual(rc, 0, out)
        self.assertIn("2 successes / 0 failures / 0 errors", out)

    def test_failing_spec_fails_the_command(self):
        write(os.path.join(self.dir, "spec", "wrong_spec.lua"), FAILING)
        rc, out = self.run_test()
        self.assertNotEqual(rc, 0, out)
        self.assertIn("2 successes / 1 failure", out)

    def test_plugin_directory_and_spec_named_from_elsewhere(self):
        other = tempfile.mkdtemp(prefix="lp-elsewhere-", dir="/tmp")
        self.addCleanup(shutil.rmtree, other, True)
        rc, out = self.run_test("-p", os.path.join(self.dir, "plugins"), "-o", "TAP",
                                os.path.join(self.dir, "spec", "greet_spec.lua"), cwd=other)
        self.assertEqual(rc, 0, out)
        self.assertIn("ok 2 - greet sets a header otherwise", out)

    def test_without_the_plugin_directory_the_plugin_is_not_found(self):
        other = tempfile.mkdtemp(prefix="lp-elsewhere-", dir="/tmp")
        self.addCleanup(shutil.rmtree, other, True)
        rc, out = self.run_test(os.path.join(self.dir, "spec", "greet_spec.lua"), cwd=other)
        self.assertNotEqual(rc, 0, out)
        self.assertIn("module 'greet' not found", out)

    def test_missing_busted_is_said(self):
        rc, out = self.run_test(env={"BUSTED": "/nonexistent/busted"})
        self.assertEqual(rc, 127)
        self.assertIn("busted not found", out)


if __name__ == "__main__":
    H.main()
