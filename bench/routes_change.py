#!/usr/bin/env python3
"""One route changed among N (issue #22): how long POST /routes takes, and whether it stalls
requests. N prefix routes built in a Lua loop (ROUTES_N, default 100,000); the request
stream asks for the last of them (a Lua handler answers, so no origin adds noise), and the
admin API replaces one route (the one before it) CHANGES times, one change after another.

Measured: the request stream's latency percentiles in two phases of SECONDS each, quiet and
changing; per change, the client's round trip and the server's build_ms and switch_ms.
Figures only: nothing is asserted. Processes are stopped by PID.

  python3 bench/routes_change.py [path/to/luaproxy]

Environment: ROUTES_N, SECONDS (default 5), CLIENTS (default 2), WORKERS (default 1)."""

import json
import os
import re
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as B  # noqa: E402

LUAPROXY = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("LUAPROXY", "build/luaproxy")
N = int(os.environ.get("ROUTES_N", "100000"))
SECONDS = float(os.environ.get("SECONDS", "5"))
CLIENTS = int(os.environ.get("CLIENTS", "2"))
WORKERS = int(os.environ.get("WORKERS", "1"))

CONFIG = """\
local routes = {}
for i = 1, %(n)d - 1 do
  routes[i] = { match = { prefix = "/r" .. i .. "/" }, upstream = "app" }
end
routes[%(n)d] = { match = { prefix = "/last/" },
                  handler = function(req) return req:respond(200, "ok") end }
return {
  workers = %(workers)d,
  listen = { { address = "127.0.0.1:0" } },
  admin = { address = "127.0.0.1:0" },
  upstreams = { app = { targets = { "127.0.0.1:9" } } },
  routes = routes,
  log = { access = false, level = "notice" },
  lua = { phase_timeout = 60 },
}
"""


def http(port, method, path, body=b"", sock=None):
    req = ("%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
           % (method, path, len(body))).encode() + body
    own = sock is None
    s = sock or socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        m = re.search(rb"(?i)content-length:\s*(\d+)", head)
        need = int(m.group(1)) if m else 0
        while len(rest) < need:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            rest += chunk
        return int(head.split()[1]), rest
    finally:
        if own:
            s.close()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100.0))] if xs else None


def phase(port, admin, changing):
    stop = threading.Event()
    lat, failed = [], [0]
    lock = threading.Lock()

    def stream():
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    st, _ = http(port, "GET", "/last/x", sock=s)
                except OSError:
                    st = 0
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                    if st != 200:
                        failed[0] += 1

    threads = [threading.Thread(target=stream) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    changes = []
    t_end = time.monotonic() + SECONDS
    i = 0
    while time.monotonic() < t_end:
        if changing:
            body = json.dumps({"ops": [{"op": "replace", "index": N - 1, "route": {
                "match": {"prefix": "/changed%d/" % i}, "upstream": "app"}}]}).encode()
            t0 = time.perf_counter()
            st, ans = http(admin, "POST", "/routes", body)
            rt = time.perf_counter() - t0
            if st != 200:
                raise SystemExit("POST /routes: %d %s" % (st, ans[:300]))
            j = json.loads(ans)
            changes.append((rt * 1e3, j["build_ms"], j["switch_ms"]))
            i += 1
        else:
            time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    ms = [x * 1e3 for x in lat]
    out = {"requests": len(ms), "failed": failed[0], "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99),
           "max_ms": max(ms) if ms else None}
    if changing:
        rts = [c[0] for c in changes]
        out.update({"changes": len(changes), "change_ms_p50": pct(rts, 50),
                    "change_ms_p99": pct(rts, 99), "change_ms_max": max(rts),
                    "build_ms_p50": pct([c[1] for c in changes], 50),
                    "build_ms_max": max(c[1] for c in changes),
                    "switch_ms_p50": pct([c[2] for c in changes], 50),
                    "first_changes": [round(c[0], 1) for c in changes[:5]]})
    return out


def main():
    workdir = tempfile.mkdtemp(prefix="lp-rchange-")
    path = os.path.join(workdir, "routes.lua")
    with open(path, "w") as f:
        f.write(CONFIG % {"n": N, "workers": WORKERS})
    proc, port, admin, _ = B.start_luaproxy(LUAPROXY, path, os.path.join(workdir, "stderr"))
    try:
        quiet = phase(port, admin, False)
        changing = phase(port, admin, True)
        print("N=%d workers=%d clients=%d" % (N, WORKERS, CLIENTS))
        print("quiet:    %s" % json.dumps(quiet))
        print("changing: %s" % json.dumps(changing))
        if quiet["p99_ms"]:
            print("p99 ratio (changing / quiet): %.2f" % (changing["p99_ms"] / quiet["p99_ms"]))
    finally:
        B.stop_luaproxy(proc)


if __name__ == "__main__":
    main()
