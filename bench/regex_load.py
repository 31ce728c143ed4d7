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
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from routes_load import admin_call, rss_kib  # noqa: E402

LUAPROXY = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("LUAPROXY", "build/luaproxy")
SIZES = [int(x) for x in os.environ.get("REGEX_N", "1 1000 10000").split()]
CHECK_RUNS = int(os.environ.get("CHECK_RUNS", "3"))
TICK = os.sysconf("SC_CLK_TCK")

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


def compile_thread(pid):
    """(state, cpu seconds) of the process's lp-hs-compile thread, or None."""
    base = "/proc/%d/task" % pid
    for tid in os.listdir(base):
        try:
            with open("%s/%s/comm" % (base, tid)) as f:
                if f.read().strip() != "lp-hs-compile":
                    continue
            with open("%s/%s/stat" % (base, tid)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return fields[0], (int(fields[11]) + int(fields[12])) / TICK
        except OSError:
            continue
    return None


def wait_compiled(pid, timeout=600):
    """Waits until the compile thread sleeps with its CPU time unchanged for 1 s: (seconds
    waited, its CPU seconds so far)."""
    t0 = time.monotonic()
    last, since = None, time.monotonic()
    while time.monotonic() - t0 < timeout:
        st = compile_thread(pid)
        if st is None:
            return time.monotonic() - t0, 0.0
        if st != last:
            last, since = st, time.monotonic()
        elif st[0] == "S" and time.monotonic() - since >= 1.0:
            return since - t0, st[1]
        time.sleep(0.05)
    return None, last[1] if last else None


def measure(n, workdir):
    path = os.path.join(workdir, "regex-%d.lua" % n)
    for f in (path, path + ".routes.json"):
        if os.path.exists(f):
            os.unlink(f)
    with open(path, "w") as f:
        f.write(CONFIG % {"n": n})
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
    err_path = os.path.join(workdir, "stderr-%d" % n)
    with open(err_path, "wb") as errf:
        t0 = time.monotonic()
        proc = subprocess.Popen([LUAPROXY, "-c", path], stdout=subprocess.DEVNULL, stderr=errf,
                                stdin=subprocess.DEVNULL)
    try:
        admin = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            text = open(err_path).read()
            m = re.search(r"admin API on http://127\.0\.0\.1:(\d+)", text)
            if "listening on" in text and m:
                admin = int(m.group(1))
                break
            if proc.poll() is not None:
                raise SystemExit("luaproxy exited: %s" % text[-2000:])
            time.sleep(0.01)
        t_start = time.monotonic() - t0
        t_compiled, cpu = wait_compiled(proc.pid)
        rss = rss_kib(proc.pid)
        change = None
        if admin and n > 1:
            body = {"ops": [{"op": "replace", "index": 2,
                             "route": {"match": {"regex": "/changed/\\d+$"}, "upstream": "app"}}]}
            t0 = time.monotonic()
            status, answer = admin_call(admin, "POST", "/routes", body)
            t_call = time.monotonic() - t0
            j = json.loads(answer) if status == 200 else {}
            t_rc, cpu2 = wait_compiled(proc.pid)
            change = {"status": status, "call_s": t_call, "build_ms": j.get("build_ms"),
                      "switch_ms": j.get("switch_ms"), "recompiled_s": t_rc,
                      "recompile_cpu_s": (cpu2 - cpu) if cpu2 is not None and cpu else None}
        return {"routes": n, "check_s": statistics.median(checks), "checks_s": checks,
                "check_cpu_s": statistics.median(check_cpu),
                "start_s": t_start, "compiled_after_s": t_compiled, "compile_cpu_s": cpu,
                "rss_kib": rss, "change": change}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
