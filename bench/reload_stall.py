#!/usr/bin/env python3
"""Do reloads stall requests? Latency of a request stream while the config (a TLS listener
and two https upstreams, so every reload resolves names and builds three TLS contexts) is
reloaded back to back, against the same stream without reloads.

  python3 bench/reload_stall.py            # about 20 s
  RELOADS=50 SECONDS=3 python3 bench/reload_stall.py

Environment (all optional):
  LUAPROXY   luaproxy binary (default build/luaproxy)
  WORKERS    worker threads (default 2)
  SECONDS    length of each phase (default 5)
  CLIENTS    keep-alive clients of the request stream (default 2)
  SLOW_CA_MS delay (ms) in serving one upstream's CA file through a named pipe, to stand
             for slow storage or DNS in the materialise step (default 0: a plain file)
  RESULTS    JSON output (default bench/results/reload_stall.json)

Measured, per phase (quiet, reloading):
  - the request stream: each client sends GET /h (a Lua handler on the workers) on its
    keep-alive connection, one after another; latency percentiles, the max, and how many
    took over 5 ms;
  - the admin API: GET /status once every 20 ms from another thread (the main loop);
  - the reloads: count, POST /reload's took_ms, and the materialise step's time from the
    log line `(names and TLS contexts: M ms, off the loops)`.
Figures only: nothing is asserted. Processes are stopped by PID."""

import json
import math
import os
import re
import statistics
import sys
import threading
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
os.environ.setdefault("LUAPROXY", os.path.join(REPO, "build", "luaproxy"))
sys.path.insert(0, os.path.join(REPO, "tests", "integration", "reload"))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import reloadtest as RT  # noqa: E402
from reloadtest import H  # noqa: E402
import test_tls_upstream as TU  # noqa: E402

WORKERS = int(os.environ.get("WORKERS", "2"))
SECONDS = float(os.environ.get("SECONDS", "5"))
CLIENTS = int(os.environ.get("CLIENTS", "2"))
SLOW_CA_MS = int(os.environ.get("SLOW_CA_MS", "0"))
RESULTS = os.environ.get("RESULTS", os.path.join(BENCH_DIR, "results", "reload_stall.json"))


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[max(0, math.ceil(p / 100.0 * len(xs)) - 1)]


def summary(lat_ms):
    return {"n": len(lat_ms), "p50_ms": round(pct(lat_ms, 50), 3),
            "p99_ms": round(pct(lat_ms, 99), 3), "p999_ms": round(pct(lat_ms, 99.9), 3),
            "max_ms": round(max(lat_ms), 3) if lat_ms else None,
            "over_5ms": sum(1 for x in lat_ms if x > 5)}


class SlowCA:
    """Serves the CA file through a named pipe, each read after SLOW_CA_MS."""

    def __init__(self, path, ca):
        self.path = path
        with open(ca, "rb") as f:
            self.data = f.read()
        os.mkfifo(path)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            fd = os.open(self.path, os.O_WRONLY)  # blocks until a reader opens it
            if self.stop.is_set():
                os.close(fd)
                return
            time.sleep(SLOW_CA_MS / 1000.0)  # the slow storage this stands for
            try:
                os.write(fd, self.data)
            except OSError:
                pass  # that reader was gone already (it had read the last copy)
            os.close(fd)

    def close(self):
        self.stop.set()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # frees a waiting open
            os.close(fd)
        except OSError:
            pass
        self.thread.join(5)


def main():
    d = H.Workdir.new("reload-stall")
    TU.make_certs(d)
    p = lambda n: os.path.join(d, n)  # noqa: E731
    origins = [TU.TLSOrigin("o%d" % i, p("good.pem"), p("good.key")) for i in range(2)]
    slow = SlowCA(p("slow-ca.pem"), p("ca.pem")) if SLOW_CA_MS else None
    cas = [p("slow-ca.pem") if slow else p("ca.pem"), p("ca.pem")]
    ups = {"s%d" % i: H.upstream("127.0.0.1:%d" % o.port, tls={"ca": cas[i], "sni": "origin.test"})
           for i, o in enumerate(origins)}
    routes = [RT.route("/h", handler=RT.respond_handler("v")),
              RT.route("/s0", upstream="s0"), RT.route("/s1", upstream="s1"),
              RT.route("/", upstream="s0")]
    proxy = H.Proxy.build(ups, routes, name="bench-reload-stall", workers=WORKERS,
                          access_log=False, level="notice",
                          admin={"address": "127.0.0.1:0"})
    proxy.cfg["listen"].append({"address": "127.0.0.1:0",
                                "tls": {"cert": p("front.pem"), "key": p("front.key")}})
    try:
        proxy.start()
    except AssertionError as e:
        raise SystemExit("luaproxy did not start: %s\n%s" % (e, proxy.stderr()[-3000:]))
    out = {"workers": WORKERS, "seconds": SECONDS, "clients": CLIENTS,
           "slow_ca_ms": SLOW_CA_MS, "phases": {}}
    try:
        for path in ("/h", "/s0", "/s1"):
            r = H.get(proxy.port, path, timeout=10)
            if r.status != 200:
                raise SystemExit("sanity GET %s: %d" % (path, r.status))
        for phase in ("quiet", "reloading"):
            lat, admin_lat, took = [], [], []
            stop = threading.Event()
            lock = threading.Lock()

            def stream():
                mine = []
                with H.Client(proxy.port, timeout=30) as c:
                    while not stop.is_set():
                        t0 = time.perf_counter()
                        r = c.request("GET", "/h")
                        mine.append((time.perf_counter() - t0) * 1000)
                        if r.status != 200:
                            mine.append(float("inf"))
                with lock:
                    lat.extend(mine)

            def admin_poll():
                while not stop.is_set():
                    t0 = time.perf_counter()
                    with H.Client(proxy.admin_port, timeout=30) as c:
                        c.request("GET", "/status", host="admin")
                    admin_lat.append((time.perf_counter() - t0) * 1000)
                    stop.wait(0.02)

            threads = [threading.Thread(target=stream) for _ in range(CLIENTS)]
            threads.append(threading.Thread(target=admin_poll))
            for t in threads:
                t.start()
            log_before = len(proxy.stderr())
            t_end = time.monotonic() + SECONDS
            if phase == "reloading":
                while time.monotonic() < t_end:
                    with H.Client(proxy.admin_port, timeout=30) as c:
                        j = c.request("POST", "/reload", host="admin").json()
                    if not j.get("ok"):
                        raise SystemExit("reload refused: %s" % j)
                    took.append(j["took_ms"])
            else:
                time.sleep(SECONDS)
            stop.set()
            for t in threads:
                t.join(60)
            mat = [float(m) for m in re.findall(r"names and TLS contexts: ([0-9.]+) ms",
                                                 proxy.stderr()[log_before:])]
            out["phases"][phase] = {
                "requests": summary(lat), "admin_status": summary(admin_lat),
                "reloads": len(took),
                "reload_took_ms_median": round(statistics.median(took), 3) if took else None,
                "materialise_ms_median": round(statistics.median(mat), 3) if mat else None,
                "materialise_ms_max": round(max(mat), 3) if mat else None}
    finally:
        proxy.stop()
        for o in origins:
            o.stop()
        if slow:
            slow.close()
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
