#!/usr/bin/env python3
"""Routing at scale (issue #22): `luaproxy -t` time, start-up time (to "listening on") and
RSS per route for N prefix routes built in a Lua loop, N = 1 and 100,000 (ROUTES_N to
change the large one); then, when the admin API is on, the time of one route change among
them (POST /routes), measured by the client around the call.

Not a test: it prints figures and asserts nothing. Usage:
  python3 bench/routes_load.py [path/to/luaproxy]
"""

import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as B  # noqa: E402

LUAPROXY = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("LUAPROXY", "build/luaproxy")
BIG = int(os.environ.get("ROUTES_N", "100000"))

CONFIG = """\
local routes = {}
for i = 1, %(n)d do
  routes[i] = { match = { prefix = "/r" .. i .. "/" }, upstream = "app", strip_prefix = true }
end
return {
  workers = 1,
  listen = { { address = "127.0.0.1:0" } },
  admin = { address = "127.0.0.1:0" },
  upstreams = { app = { targets = { "127.0.0.1:9" } } },
  routes = routes,
  log = { access = false, level = "notice" },
  -- Evaluating and validating 100k routes may take longer than a phase may (1 s) on a
  -- loaded machine.
  lua = { phase_timeout = 60 },
}
"""


def measure(n, workdir):
    path = os.path.join(workdir, "routes-%d.lua" % n)
    B.write_fresh_config(path, CONFIG % {"n": n})
    t0 = time.monotonic()
    p = subprocess.run([LUAPROXY, "-t", "-c", path], capture_output=True, timeout=300)
    t_check = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit("-t failed: %s" % p.stderr.decode()[-2000:])
    proc, _, admin, t_start = B.start_luaproxy(LUAPROXY, path,
                                               os.path.join(workdir, "stderr-%d" % n))
    try:
        rss = B.rss_kib(proc.pid)
        change = None
        if admin:
            body = {"ops": [{"op": "replace", "index": n,
                             "route": {"match": {"prefix": "/changed/"}, "upstream": "app"}}]}
            times, server = [], []
            for _ in range(5):
                t0 = time.monotonic()
                status, answer = B.admin_call(admin, "POST", "/routes", body)
                times.append(time.monotonic() - t0)
                if status != 200:
                    times = None
                    break
                j = json.loads(answer)
                server.append((j["build_ms"], j["switch_ms"]))
            change = sorted(times)[len(times) // 2] if times else None
            if server:
                print("N=%d: server-side build_ms, switch_ms per change: %s" % (n, server))
        return {"routes": n, "check_s": t_check, "start_s": t_start, "rss_kib": rss,
                "admin_change_s": change}
    finally:
        B.stop_luaproxy(proc)


def main():
    workdir = tempfile.mkdtemp(prefix="lp-routes-")
    small, big = measure(1, workdir), measure(BIG, workdir)
    for r in (small, big):
        print("N=%-7d  -t %.3f s   start %.3f s   RSS %d KiB   admin change %s" % (
            r["routes"], r["check_s"], r["start_s"], r["rss_kib"],
            "%.1f ms" % (1e3 * r["admin_change_s"]) if r["admin_change_s"] else "n/a"))
    print("RSS per route: %.0f bytes" % (1024.0 * (big["rss_kib"] - small["rss_kib"]) / (BIG - 1)))
    print(json.dumps({"small": small, "big": big}))


if __name__ == "__main__":
    main()
