#!/usr/bin/env python3
"""Instructions per request of luaproxy (1 worker) under callgrind, for the response cache's
paths: a plain proxied request, a cache hit (5 B, 16 KiB), and a miss that stores (every
request a new key). The proxy runs under `valgrind --tool=callgrind` with collection off; a
warm-up (traces compiled, pools filled) runs first, then collection is switched on for a
fixed number of requests on one keep-alive connection and the total divided by it. Steady
on a loaded machine (instructions, not time). A figure for docs, never a test.

  python3 bench/cache_callgrind.py [N]              # N requests per case (default 2000)
  LUAPROXY=/path/to/luaproxy python3 bench/cache_callgrind.py
  CASES=hit-5B,miss-store-5B python3 bench/cache_callgrind.py
  KEEP=1 ...                                       # keep the callgrind.out files (printed)

Annotate a kept file with `callgrind_annotate --inclusive=yes FILE | head -60`.
"""

import glob
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import harness as H  # stop_group

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUAPROXY = os.environ.get("LUAPROXY", os.path.join(ROOT, "build", "luaproxy"))
ORIGIN = os.environ.get("ORIGIN", os.path.join(ROOT, "build", "tests", "origin", "lp_origin"))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
WARM = int(os.environ.get("WARM", "3000"))
JITOPT = os.environ.get("JITOPT", "")  # e.g. "maxrecord=8000 maxsnap=1000"

PLAIN = """return {
  workers = 1,
  listen = { { address = "127.0.0.1:%(port)d" } },
  upstreams = { app = { targets = { "127.0.0.1:%(origin)d" }, keepalive = 64 } },
  routes = { { match = { prefix = "/" }, upstream = "app"%(plugins)s } },
  log = { access = false },%(extra)s%(global)s
}
"""
CACHE_PLUGINS = (',\n    plugins = { { name = "cache", zone = "b", '
                 'default_ttl = { [200] = 3600 } } }')
CACHE_EXTRA = '\n  cache = { zones = { b = { memory = "256m", max_object_size = "8m" } } },'

# name -> (cached?, path for request i[, request fields])
CASES = {
    "plain-5B": (False, lambda i: "/fixed?size=5"),
    "plain-unique-5B": (False, lambda i: "/fixed?size=5&k=%d" % i),
    "hit-5B": (True, lambda i: "/fixed?size=5"),
    "hit-16KiB": (True, lambda i: "/fixed?size=16384"),
    # A hit on an entry this worker has not served before (the warm-up stored keys 1..WARM,
    # each measured request hits the next): a cache of many keys, each hit a few times.
    "hit-first-5B": (True, lambda i: "/fixed?size=5&k=%d" % i),
    # Hits spread over 1,000 hot keys (each stored and hit during the warm-up).
    "hit-1000-keys-5B": (True, lambda i: "/fixed?size=5&k=%d" % (i % 1000)),
    "miss-store-5B": (True, lambda i: "/fixed?size=5&k=%d" % i),
    # The plugin's own miss (a request directive the engine's replay leaves to the plugin):
    # its Lua path, meta encoding included.
    "miss-store-lua-5B": (True, lambda i: "/fixed?size=5&k=%d" % i,
                          {"Cache-Control": "max-stale=1"}),
}


def wait_line(proc, pattern, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(pattern, line)
        if m:
            return m
    raise RuntimeError("no %r from %s" % (pattern, proc.args[0]))


def wait_port(port, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/__not_cached_probe")
            c.getresponse().read()
            c.close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("proxy did not answer on %d" % port)


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def run(conn, path_of, start, n, headers=None):
    for i in range(start, start + n):
        conn.request("GET", path_of(i), headers=headers or {})
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError("status %d for %s" % (r.status, path_of(i)))


def total_ir(outdir, before):
    files = sorted(set(glob.glob(os.path.join(outdir, "callgrind.out.*"))) - before)
    tot = 0
    for f in files:
        with open(f) as fh:
            for line in fh:
                if line.startswith("totals:") or line.startswith("summary:"):
                    tot = max(tot, int(line.split()[1]))
    return tot, files


def one(name, origin_port):
    cached, path_of = CASES[name][:2]
    headers = CASES[name][2] if len(CASES[name]) > 2 else None
    work = tempfile.mkdtemp(prefix="lp-cg-")
    port = free_port()
    conf = os.path.join(work, "proxy.lua")
    with open(conf, "w") as f:
        f.write(PLAIN % {"port": port, "origin": origin_port,
                         "plugins": CACHE_PLUGINS if cached else "",
                         "extra": CACHE_EXTRA if cached else "",
                         "global": '\n  plugins = { { name = "jitopt" } },' if JITOPT else ""})
    if JITOPT:
        # development: LuaJIT options for the worker's VM, set by a plugin's init_worker
        os.mkdir(os.path.join(work, "plugins"))
        with open(os.path.join(work, "plugins", "jitopt.lua"), "w") as f:
            f.write('return { name = "jitopt", priority = 0, schema = { fields = {} }, init_worker = '
                    'function() require("jit").opt.start(%s) end }\n'
                    % ", ".join('"%s"' % o for o in JITOPT.split()))
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--trace-children=no",
         "--callgrind-out-file=" + os.path.join(work, "callgrind.out.%p"),
         LUAPROXY, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        wait_port(port, 120)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        run(conn, path_of, 1, WARM, headers)
        # hits: every measured request the same (stored) key; misses: keys not seen yet
        start = WARM + 1 if not name.startswith("hit") else 1
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run(conn, path_of, start, N, headers)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        conn.close()
    finally:
        H.stop_group(proc, 60)
    tot, files = total_ir(work, set())
    if os.environ.get("KEEP"):
        print("  kept:", " ".join(files))
    else:
        shutil.rmtree(work, ignore_errors=True)
    return tot / N


def main():
    names = os.environ.get("CASES", ",".join(CASES)).split(",")
    origin = subprocess.Popen([ORIGIN, "-p", "0"], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        origin_port = int(wait_line(origin, r"ready (\d+)", 30).group(1))
        print("%s, %d requests per case (after %d warm-up), instructions per request"
              % (LUAPROXY, N, WARM))
        res = {}
        for name in names:
            res[name] = one(name, origin_port)
            print("  %-18s %8.0f" % (name, res[name]), flush=True)
        if "plain-5B" in res and "hit-5B" in res:
            print("  hit-5B / plain-5B: %.2f" % (res["hit-5B"] / res["plain-5B"]))
        if "plain-unique-5B" in res and "miss-store-5B" in res:
            print("  miss-store / plain-unique: %.2f"
                  % (res["miss-store-5B"] / res["plain-unique-5B"]))
    finally:
        os.killpg(origin.pid, signal.SIGTERM)
        origin.wait(10)


if __name__ == "__main__":
    main()
