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
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

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


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def admin_call(port, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else b""
    req = ("%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
           "Content-Length: %d\r\n\r\n" % (method, path, len(data))).encode() + data
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(req)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def measure(n, workdir):
    path = os.path.join(workdir, "routes-%d.lua" % n)
    for f in (path, path + ".routes.json"):
        if os.path.exists(f):
            os.unlink(f)
    with open(path, "w") as f:
        f.write(CONFIG % {"n": n})
    t0 = time.monotonic()
    p = subprocess.run([LUAPROXY, "-t", "-c", path], capture_output=True, timeout=300)
    t_check = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit("-t failed: %s" % p.stderr.decode()[-2000:])
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
        rss = rss_kib(proc.pid)
        change = None
        if admin:
            body = {"ops": [{"op": "replace", "index": n,
                             "route": {"match": {"prefix": "/changed/"}, "upstream": "app"}}]}
            times, server = [], []
            for _ in range(5):
                t0 = time.monotonic()
                status, answer = admin_call(admin, "POST", "/routes", body)
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
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
