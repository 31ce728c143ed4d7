#!/usr/bin/env python3
"""`cmake --install` and the installed luaproxy (README "Install").

Installs the build tree into a fresh prefix outside the source tree, then runs the
installed binary with LUAPROXY_HOME unset: it must find its Lua runtime, bundled plugins and
scripts in PREFIX/share/luaproxy by its own path. When `unshare -rm` works, the installed
binary runs with the source tree (its compiled-in fallback) hidden under an empty tmpfs, so
nothing can come from there; a plugin that exists only in the prefix is used either way.
Also: the build-tree binary still uses the source tree; the installed unit file passes
`systemd-analyze verify` (when that tool exists) and a structural check (always); the
sd_notify messages (READY, RELOADING, STOPPING) reach $NOTIFY_SOCKET.

Every check prints what it checked (stderr, `ctest -V` shows it); nothing is skipped
silently. Needs: cmake (ctest passes $CMAKE), the build dir ($LP_BUILD_DIR), lp_origin."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

SOURCE = os.path.realpath(os.environ.get("LP_SOURCE_DIR") or H.REPO)
BUILD = os.environ.get("LP_BUILD_DIR") or os.path.dirname(H.LUAPROXY or "")
CMAKE = os.environ.get("CMAKE") or shutil.which("cmake")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

MARKER_PLUGIN = """-- written by test_install.py into the prefix only
return {
  name = "lp_install_marker", priority = 100, schema = { fields = {} },
  response = function(req) req:set_resp_header("X-Install-Marker", "prefix") end,
}
"""


def note(msg):
    sys.stderr.write("[install] %s\n" % msg)
    sys.stderr.flush()


def inside(path, root):
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def clean_env(**extra):
    env = dict(os.environ)
    env.pop("LUAPROXY_HOME", None)
    env.pop("NOTIFY_SOCKET", None)
    env.update(extra)
    return env


class InstallTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        H.require_proxy()
        H.require_origin()
        # H.spawn passes os.environ on: the installed binary must do without these.
        os.environ.pop("LUAPROXY_HOME", None)
        os.environ.pop("NOTIFY_SOCKET", None)
        if not CMAKE:
            raise H.MissingDependency("cmake not found (ctest sets $CMAKE)")
        if not BUILD or not os.path.exists(os.path.join(BUILD, "CMakeCache.txt")):
            raise H.MissingDependency("build dir not found (set LP_BUILD_DIR): %r" % BUILD)
        # The prefix must be outside the source tree, which may be hidden below.
        base = os.environ.get("LP_INSTALL_TMP") or "/tmp"
        cls.prefix = tempfile.mkdtemp(prefix="lp-install-", dir=base)
        if not os.environ.get("LP_IT_KEEP"):
            cls.addClassCleanup(shutil.rmtree, cls.prefix, True)
        if inside(cls.prefix, SOURCE):
            raise AssertionError("the install prefix %s is inside the source tree %s: set "
                                 "LP_INSTALL_TMP" % (cls.prefix, SOURCE))
        r = subprocess.run([CMAKE, "--install", BUILD, "--prefix", cls.prefix],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=H.T(120))
        if r.returncode:
            raise AssertionError("cmake --install failed (%d):\n%s" % (r.returncode, r.stdout))
        note("cmake --install %s --prefix %s: ok" % (BUILD, cls.prefix))
        cls.bin = os.path.join(cls.prefix, "bin", "luaproxy")
        cls.share = os.path.join(cls.prefix, "share", "luaproxy")
        cls.unit = os.path.join(cls.prefix, "lib", "systemd", "system", "luaproxy.service")
        cls.wrap, cls.hidden = cls.hiding_wrapper()

    @classmethod
    def hiding_wrapper(cls):
        """argv prefix that runs a command with the source tree hidden (an empty tmpfs
        mounted over it in a private mount namespace), or [] when unshare cannot."""
        script = 'mount -t tmpfs lp-hidden "$0" && test ! -e "$0/CMakeLists.txt" && exec "$@"'
        unshare = shutil.which("unshare")
        if not unshare:
            note("source tree NOT hidden: unshare not found; relying on the prefix-only "
                 "plugin and `-v` to show what the installed binary loads")
            return [], False
        wrap = [unshare, "-rm", "sh", "-c", script, SOURCE]
        r = subprocess.run(wrap + ["true"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=H.T(20))
        if r.returncode:
            note("source tree NOT hidden: `unshare -rm` + tmpfs failed here (%s); relying on "
                 "the prefix-only plugin and `-v`" % r.stdout.strip())
            return [], False
        note("source tree %s hidden from the installed binary (unshare -rm, tmpfs over it)"
             % SOURCE)
        return wrap, True

    def run_bin(self, *args, env=None, hide=True):
        argv = (self.wrap if hide else []) + [self.bin] + list(args)
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env or clean_env(), timeout=H.T(60))

    def test_01_layout(self):
        for rel in ("bin/luaproxy", "share/luaproxy/lua/luaproxy/runtime.lua",
                    "share/luaproxy/lua/proxy.lua", "share/luaproxy/lua/proxy/test.lua",
                    "share/luaproxy/scripts/demo.lua", "share/luaproxy/scripts/lib",
                    "share/luaproxy/examples/luaproxy.lua", "share/doc/luaproxy/README.md",
                    "share/luaproxy/status/index.html", "share/luaproxy/status/status.js",
                    "share/luaproxy/status/status.css",
                    "share/doc/luaproxy/plugins.md", "lib/systemd/system/luaproxy.service"):
            self.assertTrue(os.path.exists(os.path.join(self.prefix, rel)), rel)
        self.assertTrue(os.access(self.bin, os.X_OK))
        bundled = sorted(f for f in os.listdir(os.path.join(SOURCE, "plugins"))
                         if f.endswith(".lua"))
        self.assertTrue(bundled)
        for f in bundled:
            self.assertTrue(os.path.exists(os.path.join(self.share, "plugins", f)), f)
        note("layout: binary, lua/, %d bundled plugins, scripts/, example config, docs, unit"
             % len(bundled))

    def test_02_runtime_root(self):
        r = self.run_bin("-v")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("runtime: %s (the install prefix)" % os.path.realpath(self.share),
                      r.stdout)
        # LUAPROXY_HOME still wins when set.
        r = self.run_bin("-v", env=clean_env(LUAPROXY_HOME="/nonexistent-home"))
        self.assertIn("runtime: /nonexistent-home (LUAPROXY_HOME)", r.stdout)
        # A symlink to the installed binary finds the same prefix (/proc/self/exe).
        link = os.path.join(tempfile.mkdtemp(dir=self.prefix), "luaproxy")
        os.symlink(self.bin, link)
        r = subprocess.run([link, "-v"], stdout=subprocess.PIPE, text=True, env=clean_env(),
                           timeout=H.T(30))
        self.assertIn("(the install prefix)", r.stdout)
        # The build-tree binary keeps using the source tree.
        r = subprocess.run([H.LUAPROXY, "-v"], stdout=subprocess.PIPE, text=True,
                           env=clean_env(), timeout=H.T(30))
        self.assertIn("(the source tree)", r.stdout)
        note("-v: installed binary -> %s (prefix), via a symlink too; LUAPROXY_HOME "
             "overrides; build-tree binary -> source tree" % self.share)

    def write_config(self, origin_port, access_log):
        d = tempfile.mkdtemp(prefix="conf-", dir=self.prefix)
        path = os.path.join(d, "proxy.lua")
        with open(path, "w") as f:
            f.write("""return {
  workers = 1,
  listen = { { address = "127.0.0.1:0" } },
  admin = { address = "127.0.0.1:0" },
  upstreams = { app = { targets = { "127.0.0.1:%d" } } },
  plugins = {
    { name = "request_id" },
    { name = "headers", response = { set = { ["X-Via-Installed"] = "yes" } } },
    { name = "lp_install_marker" },
  },
  routes = { { match = { prefix = "/" }, upstream = "app" } },
  log = { access = %r, level = "info" },
}
""" % (origin_port, access_log))
        return path

    def test_03_check_and_serve(self):
        with open(os.path.join(self.share, "plugins", "lp_install_marker.lua"), "w") as f:
            f.write(MARKER_PLUGIN)
        # The shipped example config (bundled request_id plugin) checks with -t.
        example = os.path.join(self.share, "examples", "luaproxy.lua")
        r = self.run_bin("-t", "-c", example)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("configuration ok", r.stdout)

        origin = H.Origin("inst").start()
        self.addCleanup(origin.stop)
        access = os.path.join(self.prefix, "access.log")
        conf = self.write_config(origin.port, access)
        r = self.run_bin("-t", "-c", conf)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        note("-t: the example config and a config using request_id, headers and a "
             "prefix-only plugin check ok%s" % (" with the source tree hidden"
                                                if self.hidden else ""))

        # Serve, with a NOTIFY_SOCKET to see the sd_notify messages.
        nsock_path = os.path.join(self.prefix, "notify.sock")
        nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(nsock.close)
        nsock.bind(nsock_path)
        nsock.settimeout(H.T(10))
        err_path = os.path.join(self.prefix, "stderr")
        p = H.spawn(self.wrap + [self.bin, "-c", conf],
                    os.path.join(self.prefix, "stdout"), err_path,
                    env={"NOTIFY_SOCKET": nsock_path})
        self.addCleanup(H.stop_process, p)

        def stderr():
            with open(err_path, errors="replace") as f:
                return f.read()

        def listening():
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", stderr())
            if not m and p.poll() is not None:
                raise AssertionError("installed luaproxy exited (%s):\n%s"
                                     % (p.returncode, stderr()))
            return int(m.group(1)) if m else None

        port = H.wait_for(listening, H.T(15), what="`listening on` from the installed binary")
        self.assertEqual(nsock.recv(4096).decode(), "READY=1\nSTATUS=serving")

        resp = H.get(port, "/headers")
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.header("X-Origin-Id"), "inst")
        self.assertRegex(resp.header("X-Request-Id") or "", UUID4)
        self.assertEqual(resp.header("X-Via-Installed"), "yes")
        self.assertEqual(resp.header("X-Install-Marker"), "prefix")
        self.assertIn(b"x-request-id", resp.body.lower())
        note("served GET /headers on 127.0.0.1:%d through request_id, headers and the "
             "prefix-only plugin" % port)

        # The status page comes from the prefix's share/luaproxy/status/.
        admin = int(re.search(r"admin API on http://127\.0\.0\.1:(\d+)", stderr()).group(1))
        for path, needle in (("/", b"/ui/status.js"), ("/ui/status.js", b"sessionStorage"),
                             ("/ui/status.css", b"--fg")):
            page = H.get(admin, path, host="127.0.0.1")
            self.assertEqual(page.status, 200, path)
            self.assertIn(needle, page.body)
        note("GET / on the admin API: the status page from %s/status" % self.share)

        os.kill(p.pid, signal.SIGHUP)
        self.assertEqual(nsock.recv(4096).decode(), "RELOADING=1")
        self.assertEqual(nsock.recv(4096).decode(), "READY=1\nSTATUS=serving")
        H.wait_for(lambda: "reload: generation 2 live" in stderr(), H.T(10), what="reload")
        self.assertEqual(H.get(port, "/").status, 200)
        os.kill(p.pid, signal.SIGTERM)
        self.assertEqual(nsock.recv(4096).decode(), "STOPPING=1")
        self.assertEqual(p.wait(H.T(40)), 0, stderr())
        self.assertIn("stopped", stderr())
        self.assertEqual(H.sanitizer_errors(stderr()), [])
        note("sd_notify: READY=1 at start, RELOADING=1/READY=1 around SIGHUP, STOPPING=1 on "
             "SIGTERM; exit 0")

    def test_04_unit(self):
        with open(self.unit) as f:
            text = f.read()
        # Structure: sections and the keys the README documents, paths of this prefix.
        sections, keys = [], {}
        for n, line in enumerate(text.split("\n"), 1):
            s = line.strip()
            if not s or s[0] in "#;":
                continue
            if s.startswith("["):
                self.assertRegex(s, r"^\[[A-Za-z]+\]$", "line %d" % n)
                sections.append(s)
                continue
            self.assertRegex(s, r"^[A-Za-z]+=", "line %d: not a key=value" % n)
            k, _, v = s.partition("=")
            keys.setdefault((sections[-1], k), []).append(v)
        self.assertEqual(sections, ["[Unit]", "[Service]", "[Install]"])
        self.assertEqual(keys[("[Service]", "ExecStart")],
                         ["%s -c /etc/luaproxy/luaproxy.lua" % self.bin])
        self.assertEqual(keys[("[Service]", "ExecReload")], ["/bin/kill -HUP $MAINPID"])
        self.assertEqual(keys[("[Service]", "Type")], ["notify"])
        self.assertEqual(keys[("[Service]", "KillSignal")], ["SIGTERM"])
        with open(os.path.join(SOURCE, "README.md")) as f:
            drain = int(re.search(r"\| `timeouts.drain` \| (\d+) \|", f.read()).group(1))
        stop = int(keys[("[Service]", "TimeoutStopSec")][0])
        self.assertGreater(stop, drain, "TimeoutStopSec must exceed timeouts.drain")
        self.assertNotIn("/usr/local", text.split("[Unit]", 1)[1])
        note("unit structure: sections, Type=notify, ExecStart=%s, ExecReload kill -HUP, "
             "KillSignal=SIGTERM, TimeoutStopSec=%d > timeouts.drain=%d" % (self.bin, stop,
                                                                            drain))
        sa = shutil.which("systemd-analyze")
        if not sa:
            note("systemd-analyze NOT available: only the structural check above ran")
            return
        r = subprocess.run([sa, "verify", self.unit], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=H.T(60))
        ours = [l for l in r.stdout.split("\n") if "luaproxy" in l]
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertEqual(ours, [], r.stdout)
        note("systemd-analyze verify %s: ok" % self.unit)


if __name__ == "__main__":
    H.main()
