#!/usr/bin/env python3
"""`luaproxy new plugin NAME --dir DIR` (docs/plugins.md): the scaffold passes its own spec
through `luaproxy test DIR` run from another directory, `luaproxy check DIR`, and
`luaproxy -t` on its example config; its .luarc.json points at the annotations; it never
overwrites. A broken copy fails both the spec and the check (the checks are not empty)."""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402


def run(*args, cwd="/"):
    H.require_proxy()
    p = subprocess.run([H.LUAPROXY] + list(args), capture_output=True, cwd=cwd,
                       stdin=subprocess.DEVNULL, timeout=H.T(120), preexec_fn=H._preexec)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


class ScaffoldTest(H.ProxyTestCase):
    def test_fresh_scaffold_passes_its_spec_and_the_check(self):
        d = os.path.join(H.Workdir.new("scaffold"), "proj")
        rc, out, err = run("new", "plugin", "tenant_tag", "--dir", d)
        self.assertEqual(rc, 0, err)
        for rel in ("plugins/tenant_tag.lua", "spec/tenant_tag_spec.lua", "docs/tenant_tag.md",
                    "tenant_tag.example.lua", ".luarc.json"):
            self.assertTrue(os.path.isfile(os.path.join(d, rel)), rel)
            self.assertIn(os.path.join(d, rel), out)
        rc, out, err = run("test", d)
        self.assertEqual(rc, 0, out + err)
        self.assertRegex(out + err, r"3 successes / 0 failures / 0 errors")
        rc, out, err = run("check", d)
        self.assertEqual((rc, out), (0, ""), err)
        rc, out, err = run("-t", "-c", os.path.join(d, "tenant_tag.example.lua"))
        self.assertEqual(rc, 0, err)
        self.assertNotIn("lint:", err)
        with open(os.path.join(d, ".luarc.json")) as f:
            luarc = json.load(f)
        lib = luarc["workspace.library"][0]
        self.assertTrue(os.path.isfile(os.path.join(lib, "proxy.lua")), lib)
        self.assertEqual(luarc["runtime.version"], "LuaJIT")

    def test_a_broken_plugin_fails_spec_and_check(self):
        d = os.path.join(H.Workdir.new("scaffold-broken"), "proj")
        self.assertEqual(run("new", "plugin", "tagger", "--dir", d)[0], 0)
        path = os.path.join(d, "plugins", "tagger.lua")
        with open(path) as f:
            src = f.read()
        with open(path, "w") as f:
            f.write(src.replace("req:set_header(", "req:set_heder("))
        rc, out, err = run("test", d)
        self.assertNotEqual(rc, 0, out)
        rc, out, err = run("check", d)
        self.assertEqual(rc, 1, err)
        self.assertIn("plugins/tagger.lua:", out)
        self.assertIn("(did you mean req:set_header?) (LP01)", out)

    def test_refuses_to_overwrite_and_bad_names(self):
        d = H.Workdir.new("scaffold-twice")
        self.assertEqual(run("new", "plugin", "once", "--dir", d)[0], 0)
        with open(os.path.join(d, "plugins", "once.lua")) as f:
            before = f.read()
        rc, out, err = run("new", "plugin", "once", "--dir", d)
        self.assertEqual(rc, 2)
        self.assertIn("exists: nothing written", err)
        with open(os.path.join(d, "plugins", "once.lua")) as f:
            self.assertEqual(f.read(), before)
        rc, out, err = run("new", "plugin", "bad-name", "--dir", d)
        self.assertEqual(rc, 2)
        self.assertIn("invalid plugin name", err)
        rc, out, err = run("new", "widget", "x")
        self.assertEqual(rc, 2)
        self.assertIn("usage: luaproxy new plugin", err)


if __name__ == "__main__":
    H.main()
