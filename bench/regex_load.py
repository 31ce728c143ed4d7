#!/usr/bin/env python3
"""Regex routes at load (issue #22): `luaproxy -t` time, start-up time (to "listening on"),
and the time and CPU the compile thread (`lp-hs-compile`) then spends compiling the router's
Hyperscan prefilter in the background, for N unanchored regex routes (no literal head: one
list, chunks of 128), N = 1, 1,000 and 10,000 (REGEX_N="1 1000" to change); then one route
replaced through the admin API (POST /routes) and what the thread compiles for it (one
chunk). Serving starts before the compile ends: until then PCRE2 alone answers.

Not a test: it prints figures and asserts nothing. Usage:
  python3 bench/regex_load.py [path/to/luaproxy]
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as B  # noqa: E402

LUAPROXY = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("LUAPROXY", "build/luaproxy")
SIZES = [int(x) for x in os.environ.get("REGEX_N", "1 1000 10000").split()]
CHECK_RUNS = int(os.environ.get("CHECK_RUNS", "3"))

CONFIG = """\
local routes = {}
for i = 1, %(n)d - 1 do
  routes[i] = { match = { regex = "/re" .. i .. "/\\\\d+$" }, upstream = "app" }
end
routes[%(n)d] = { match = { regex = "^/fixed$" }, upstream = "app" }
return {
  workers = 1,
  listen = { { address = "127.0.0.1:0" } },
  admin = { address = "127.0.0.1:0" },
  upstreams = { app = { targets = { "127.0.0.1:9" } } },
  routes = routes,
  log = { access = false, level = "notice" },
  lua = { phase_timeout = 60 },
}
"""


def measure(n, workdir):
    path = os.path.join(workdir, "regex-%d.lua" % n)
    B.write_fresh_config(path, CONFIG % {"n": n})
    checks, check_cpu = [], []
    for _ in range(CHECK_RUNS):
        t0 = time.monotonic()
        p = subprocess.Popen([LUAPROXY, "-t", "-c", path], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        err = p.stderr.read()
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        checks.append(time.monotonic() - t0)
        check_cpu.append(ru.ru_utime + ru.ru_stime)
        if p.returncode != 0:
            raise SystemExit("-t failed: %s" % err.decode()[-2000:])
    proc, _, admin, t_start = B.start_luaproxy(LUAPROXY, path,
                                               os.path.join(workdir, "stderr-%d" % n))
    try:
        t_compiled, cpu = B.wait_compiled(proc.pid)
        rss = B.rss_kib(proc.pid)
        change = None
        if admin and n > 1:
            body = {"ops": [{"op": "replace", "index": 2,
                             "route": {"match": {"regex": "/changed/\\d+$"}, "upstream": "app"}}]}
            t0 = time.monotonic()
            status, answer = B.admin_call(admin, "POST", "/routes", body)
            t_call = time.monotonic() - t0
            j = json.loads(answer) if status == 200 else {}
            t_rc, cpu2 = B.wait_compiled(proc.pid)
            change = {"status": status, "call_s": t_call, "build_ms": j.get("build_ms"),
                      "switch_ms": j.get("switch_ms"), "recompiled_s": t_rc,
                      "recompile_cpu_s": (cpu2 - cpu) if cpu2 is not None and cpu else None}
        return {"routes": n, "check_s": statistics.median(checks), "checks_s": checks,
                "check_cpu_s": statistics.median(check_cpu),
                "start_s": t_start, "compiled_after_s": t_compiled, "compile_cpu_s": cpu,
                "rss_kib": rss, "change": change}
    finally:
        B.stop_luaproxy(proc, 60)


def main():
    workdir = tempfile.mkdtemp(prefix="lp-regex-")
    out = []
    for n in SIZES:
        r = measure(n, workdir)
        out.append(r)
        c = r["change"]
        print("N=%-6d -t %.2f s, CPU %.2f s (medians of %d)  start %.2f s  compiled %s s after start "
              "(thread CPU %.2f s)  RSS %d KiB%s" % (
                  n, r["check_s"], r["check_cpu_s"], CHECK_RUNS, r["start_s"],
                  "%.2f" % r["compiled_after_s"] if r["compiled_after_s"] is not None else "?",
                  r["compile_cpu_s"] or 0.0, r["rss_kib"],
                  "" if not c else "  | POST /routes: %d in %.1f ms (build %s ms, switch %s ms), "
                  "recompiled after %.2f s, thread CPU %.2f s" % (
                      c["status"], 1e3 * c["call_s"], c["build_ms"], c["switch_ms"],
                      c["recompiled_s"] or -1, c["recompile_cpu_s"] or -1)))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
