"""Shared helpers for the Lua integration tests (tests/integration/test_lua_*.py).

Builds on harness.py (which is not edited here): a proxy whose config directory also holds
Lua files (handler modules are looked up next to the config), the fixture plugin directory
on `lua.plugin_paths`, `luaproxy -t` runs, and small readers for lp_origin's /headers JSON
and the error log.
"""

import os
import shutil
import subprocess
import sys
import time

LUA_DIR = os.path.dirname(os.path.abspath(__file__))
IT_DIR = os.path.dirname(LUA_DIR)
sys.path.insert(0, IT_DIR)
import harness as H  # noqa: E402

FIXTURE_PLUGINS = os.path.join(LUA_DIR, "plugins")
FIXTURE_SCRIPTS = os.path.join(LUA_DIR, "scripts")
REPO = H.REPO
SCRIPTS = os.path.join(REPO, "scripts")


def lua_section(phase_timeout=None, plugin_paths=None, fixtures=True):
    """The config's `lua` table; the fixture plugins directory (absolute) comes first."""
    lua = {}
    paths = [FIXTURE_PLUGINS] if fixtures else []
    paths += list(plugin_paths or [])
    if paths:
        lua["plugin_paths"] = paths
    if phase_timeout is not None:
        lua["phase_timeout"] = phase_timeout
    return lua


def copy_files(dest, files):
    """files: {relative name: text, or a path (str) to an existing file to copy}."""
    for rel, src in (files or {}).items():
        out = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        if isinstance(src, str) and os.path.isfile(src) and "\n" not in src:
            shutil.copyfile(src, out)
        else:
            with open(out, "w") as f:
                f.write(src)


def fixture(name):
    """Path of a fixture script under tests/integration/lua/scripts."""
    return os.path.join(FIXTURE_SCRIPTS, name)


class LuaTestCase(H.ProxyTestCase):
    """ProxyTestCase with Lua conveniences."""

    @classmethod
    def start_lua_proxy(cls, upstreams, routes, files=None, phase_timeout=None,
                        plugin_paths=None, **kw):
        kw.setdefault("lua", lua_section(phase_timeout, plugin_paths))
        p = H.Proxy.build(upstreams, routes, name=cls.__name__, **kw)
        copy_files(p.dir, files)
        cls.addClassCleanup(p.stop)
        return p.start()

    def get(self, path="/", host="a.test", **kw):
        return H.get(self.proxy.port, path, host=host, **kw)

    def wait_log(self, needle, proxy=None, timeout=None):
        proxy = proxy or self.proxy
        return H.wait_for(lambda: needle in proxy.stderr(), timeout or H.T(5), what=repr(needle)
                          + " in the error log:\n" + proxy.stderr()[-3000:])

    def log_lines(self, needle, proxy=None):
        proxy = proxy or self.proxy
        return [l for l in proxy.stderr().splitlines() if needle in l]


def origin_headers(resp):
    """lp_origin /headers JSON as a list of (lower-case name, value)."""
    j = resp.json()
    return [(n.lower(), v) for n, v in j["headers"]]


def hvalues(hdrs, name):
    return [v for n, v in hdrs if n == name.lower()]


def check_config(text_or_path, files=None, workdir=None):
    """Runs `luaproxy -t -c FILE`; returns (returncode, stdout, stderr, path)."""
    H.require_proxy()
    d = workdir or H.Workdir.new("check")
    if os.path.isfile(text_or_path) and "\n" not in text_or_path:
        path = text_or_path
    else:
        path = os.path.join(d, "c-%d.lua" % time.monotonic_ns())
        with open(path, "w") as f:
            f.write(text_or_path)
    copy_files(os.path.dirname(path), files)
    try:
        p = subprocess.run([H.LUAPROXY, "-t", "-c", path], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=H.T(60), preexec_fn=H._preexec)
    except subprocess.TimeoutExpired:
        raise AssertionError("luaproxy -t -c %s did not exit" % path)
    return (p.returncode, p.stdout.decode("utf-8", "replace"),
            p.stderr.decode("utf-8", "replace"), path)


def parallel(fn, n):
    """Runs fn(i) for i in range(n) in threads; returns the results in order (exceptions
    are returned, not raised)."""
    import threading
    out = [None] * n

    def run(i):
        try:
            out[i] = fn(i)
        except Exception as e:  # noqa: BLE001
            out[i] = e

    ts = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(H.T(60))
    return out
