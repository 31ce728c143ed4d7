#!/usr/bin/env python3
"""Memory per cache entry: luaproxy (1 worker) with a 64 MiB memory zone stores N (100,000)
keys of 5 B bodies, one request per key on a few keep-alive connections; the process's RSS
before (after a warm-up of 2,000 requests through the cache) and after, the zone's entries
and bytes from GET /status, and (RSS after - RSS before) / entries. A figure for the closing
note (issue #13), never a test. Steady on a loaded machine (it counts bytes, not time).

  python3 bench/cache_keys.py [N]
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUAPROXY = os.environ.get("LUAPROXY", os.path.join(ROOT, "build", "luaproxy"))
ORIGIN = os.environ.get("ORIGIN", os.path.join(ROOT, "build", "tests", "origin", "lp_origin"))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
CONNS = 8

CONF = """return {
  workers = 1,
  listen = { { address = "127.0.0.1:%(port)d" } },
  admin = { address = "127.0.0.1:%(admin)d" },
  upstreams = { app = { targets = { "127.0.0.1:%(origin)d" }, keepalive = 64 } },
  cache = { zones = { b = { memory = "64m" } } },
  routes = { { match = { prefix = "/" }, upstream = "app",
    plugins = { { name = "cache", zone = "b", default_ttl = { [200] = 3600 } } } } },
  log = { access = false },
}
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def fill(port, start, stop, step, errors):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for i in range(start, stop, step):
        c.request("GET", "/fixed?size=5&k=%d" % i)
        r = c.getresponse()
        r.read()
        if r.status != 200:
            errors.append(r.status)
    c.close()


def run_fill(port, first, n):
    errors = []
    ts = [threading.Thread(target=fill, args=(port, first + k, first + n, CONNS, errors))
          for k in range(CONNS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return errors


def zone(admin):
    st, body = get(admin, "/status")
    z = json.loads(body)["cache"]
    return z["b"] if "b" in z else z


def main():
    work = tempfile.mkdtemp(prefix="lp-keys-")
    origin = subprocess.Popen([ORIGIN, "-p", "0"], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    proxy = None
    try:
        oport = int(re.search(r"ready (\d+)", origin.stdout.readline()).group(1))
        port, admin = free_port(), free_port()
        conf = os.path.join(work, "proxy.lua")
        with open(conf, "w") as f:
            f.write(CONF % {"port": port, "admin": admin, "origin": oport})
        proxy = subprocess.Popen([LUAPROXY, "-c", conf], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                get(admin, "/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        run_fill(port, 10 ** 9, 2000)  # warm-up: VM, pools, traces
        z0, r0 = zone(admin), rss_kib(proxy.pid)
        t0 = time.monotonic()
        errors = run_fill(port, 1, N)
        dt = time.monotonic() - t0
        z1, r1 = zone(admin), rss_kib(proxy.pid)
        e0, e1 = z0.get("entries", 0), z1.get("entries", 0)
        print("%d requests in %.1f s (%d errors)" % (N, dt, len(errors)))
        print("zone before: %s" % json.dumps(z0, sort_keys=True))
        print("zone after:  %s" % json.dumps(z1, sort_keys=True))
        print("RSS KiB before %d, after %d: %+d KiB" % (r0, r1, r1 - r0))
        if e1 > e0:
            print("entries +%d; RSS per entry %.0f B; zone bytes per entry %.0f B"
                  % (e1 - e0, (r1 - r0) * 1024.0 / (e1 - e0),
                     (z1.get("bytes", 0) - z0.get("bytes", 0)) / (e1 - e0)))
    finally:
        for p in (proxy, origin):
            if p:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
