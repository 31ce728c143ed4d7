#!/usr/bin/env python3
"""Hot reload figures: how long a reload takes to go live, whether requests fail while
reloading under load, and whether memory comes back after many reloads.

  python3 bench/reload.py                  # everything (about a minute)
  RELOADS=20 MEM_RELOADS=200 python3 bench/reload.py   # shorter

Environment (all optional):
  LUAPROXY      luaproxy binary (default build/luaproxy)
  ORIGIN        lp_origin binary (default build/tests/origin/lp_origin)
  WRK           wrk binary (default /usr/bin/wrk; the wrk phase is skipped without it)
  RELOADS       reloads per latency run and per load phase (default 100)
  MEM_RELOADS   reloads for the memory figure (default 1000)
  LOAD_CONNS    connections of the Python load client (default 6)
  WRK_CONNS     wrk connections (default 32)
  RESULTS       JSON output (default bench/results/reload.json)

Measured:
  1. live latency, workers=1 and workers=2: t0 before POST /reload, t1 when the answer is
     in AND a request on a fresh connection shows the new handler's answer (retried until
     it does). Median and p99 of t1 - t0 over RELOADS, plus the engine's own took_ms.
  2. failures under load during RELOADS reloads (workers=2): (a) Python keep-alive clients
     (GET of a handler route, proxied GETs of 5 B..100 KiB, POSTs of 1..20 KiB echoed) with
     every answer checked byte for byte; (b) wrk on a proxied route, errors and non-2xx
     counted. Reported as failed/total (wrk: total = completed responses + socket errors).
  3. RSS (VmRSS of the proxy, workers=2) after a warm-up, then after MEM_RELOADS reloads.

Exit status: 1 when a process failed to start (or the proxy died); never because of the
figures. Processes are started with PR_SET_PDEATHSIG and stopped by PID.
"""
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
os.environ.setdefault("LUAPROXY", os.path.join(REPO, "build", "luaproxy"))
os.environ.setdefault("LP_ORIGIN", os.environ.get("ORIGIN") or
                      os.path.join(REPO, "build", "tests", "origin", "lp_origin"))
# The integration harness (tests/integration/harness.py, not bench/harness.py): reloadtest
# puts its directory first on sys.path before importing it.
sys.path.insert(0, os.path.join(REPO, "tests", "integration", "reload"))
import reloadtest as RT  # noqa: E402
from reloadtest import H  # noqa: E402

RELOADS = int(os.environ.get("RELOADS", "100"))
MEM_RELOADS = int(os.environ.get("MEM_RELOADS", "1000"))
LOAD_CONNS = int(os.environ.get("LOAD_CONNS", "6"))
WRK_CONNS = int(os.environ.get("WRK_CONNS", "32"))
WRK = os.environ.get("WRK", "/usr/bin/wrk")
RESULTS = os.environ.get("RESULTS", os.path.join(BENCH_DIR, "results", "reload.json"))


class StartError(Exception):
    pass


def routes_v(v):
    return [RT.route("/h", handler=RT.respond_handler(v)),
            RT.route("/", upstream="a", plugins=[{"name": "reloadfix", "label": v}])]


class Bench:
    def __init__(self, origin, workers):
        self.origin = origin
        self.proxy = None
        self.workers = workers

    def start(self):
        admin = H.free_port()
        p = H.Proxy.build({"a": H.upstream(self.origin.address())}, routes_v("v0"),
                          name="bench-reload-w%d" % self.workers, workers=self.workers,
                          access_log=False, level="notice",
                          lua={"plugin_paths": [RT.FIXTURE_PLUGINS]},
                          admin={"address": "127.0.0.1:%d" % admin})
        p.admin_port = admin
        try:
            p.start()
        except AssertionError as e:
            raise StartError(str(e))
        self.proxy = p
        return self

    def stop(self):
        if self.proxy:
            self.proxy.stop()

    def check_alive(self):
        if not self.proxy.alive():
            raise StartError("luaproxy died (exit %s):\n%s" % (self.proxy.proc.poll(),
                                                              self.proxy.stderr()[-3000:]))

    def set_version(self, v):
        self.proxy.cfg["routes"] = routes_v(v)
        self.proxy.write_config()

    def reload(self):
        try:
            with H.Client(self.proxy.admin_port, timeout=30) as c:
                r = c.request("POST", "/reload", host="admin")
        except (OSError, H.PeerClosed):
            time.sleep(0.2)
            self.check_alive()
            raise
        j = r.json()
        if r.status != 200 or not j.get("ok"):
            raise StartError("reload refused: %s" % r.body[:500])
        return j

    def get_h(self):
        try:
            return H.get(self.proxy.port, "/h", timeout=10).body.decode()
        except (OSError, H.PeerClosed):
            self.check_alive()
            return None


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[max(0, math.ceil(p / 100.0 * len(xs)) - 1)]  # nearest rank


def live_latency(origin, workers):
    b = Bench(origin, workers).start()
    try:
        lat, took, retries = [], [], 0
        for i in range(1, RELOADS + 1):
            v = "v%d" % i
            b.set_version(v)
            t0 = time.perf_counter()
            j = b.reload()
            while b.get_h() != v:
                retries += 1
                if time.perf_counter() - t0 > 5:
                    raise StartError("generation %s not live after 5 s" % v)
            lat.append((time.perf_counter() - t0) * 1000)
            took.append(j["took_ms"])
        b.check_alive()
        return {"workers": workers, "reloads": RELOADS, "median_ms": statistics.median(lat),
                "p99_ms": pct(lat, 99), "max_ms": max(lat),
                "took_ms_median": statistics.median(took), "took_ms_p99": pct(took, 99),
                "stale_answers_after_reload": retries}
    finally:
        b.stop()


def under_load_python(origin):
    b = Bench(origin, 2).start()
    try:
        load = RT.Load(b.proxy.port, connections=LOAD_CONNS,
                       versions=["v%d" % i for i in range(RELOADS + 1)]).start()
        died, done = None, 0
        try:
            time.sleep(0.3)
            for i in range(1, RELOADS + 1):
                b.set_version("v%d" % i)
                b.reload()
                done = i
                time.sleep(0.02)
            time.sleep(0.3)
        except (StartError, OSError, H.PeerClosed) as e:
            died = str(e).split("\n")[0]
        finally:
            load.stop()
        return {"client": "python keep-alive x%d" % LOAD_CONNS, "reloads": done,
                "total": load.total, "failed": load.failed, "keepalive_closes": load.closes,
                "first_failures": load.failures[:5], "died": died}
    finally:
        b.stop()


def under_load_wrk(origin):
    if not os.access(WRK, os.X_OK):
        return None
    b = Bench(origin, 2).start()
    try:
        duration = max(3, int(RELOADS * 0.03) + 2)
        wrk = subprocess.Popen([WRK, "-t1", "-c%d" % WRK_CONNS, "-d%ds" % duration,
                                "http://127.0.0.1:%d/fixed?size=4096" % b.proxy.port],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               preexec_fn=H._preexec)
        died, done = None, 0
        try:
            time.sleep(0.5)
            for i in range(1, RELOADS + 1):
                b.set_version("v%d" % i)
                b.reload()
                done = i
                time.sleep(0.02)
        except (StartError, OSError, H.PeerClosed) as e:
            died = str(e).split("\n")[0]
        try:
            out, _ = wrk.communicate(timeout=duration + 30)
        finally:
            if wrk.poll() is None:
                wrk.kill()
                wrk.wait(10)
        out = out.decode("utf-8", "replace")
        m = re.search(r"(\d+) requests in", out)
        total = int(m.group(1)) if m else 0
        errs = 0
        m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                      out)
        if m:
            errs += sum(int(x) for x in m.groups())
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        non2xx = int(m.group(1)) if m else 0
        return {"client": "wrk -c%d (proxied GET, 4 KiB)" % WRK_CONNS, "reloads": done,
                "total": total + errs, "failed": errs + non2xx, "socket_errors": errs,
                "non_2xx": non2xx, "died": died}
    finally:
        b.stop()


def memory(origin):
    b = Bench(origin, 2).start()
    try:
        pid = b.proxy.pid
        for i in range(20):
            b.set_version("w%d" % i)
            b.reload()
            for _ in range(5):
                b.get_h()
        time.sleep(0.3)
        rss0, fds0 = H.rss_kib(pid), H.fd_count(pid)
        t0 = time.monotonic()
        for i in range(1, MEM_RELOADS + 1):
            if i % 100 == 0:
                b.set_version("m%d" % i)
            b.reload()
        took = time.monotonic() - t0
        for _ in range(5):
            b.get_h()
        time.sleep(0.5)
        b.check_alive()
        rss1, fds1 = H.rss_kib(pid), H.fd_count(pid)
        return {"workers": 2, "reloads": MEM_RELOADS, "rss_before_kib": rss0,
                "rss_after_kib": rss1, "growth_kib": rss1 - rss0, "fds_before": fds0,
                "fds_after": fds1, "seconds": took}
    finally:
        b.stop()


def main():
    for path in (H.LUAPROXY, H.LP_ORIGIN):
        if not path or not os.access(path, os.X_OK):
            print("reload.py: %s not found (build first, or set LUAPROXY/ORIGIN)" % path,
                  file=sys.stderr)
            return 1
    res = {"luaproxy": H.LUAPROXY, "sanitized": H.SANITIZED}
    origin = H.Origin("a")
    try:
        origin.start()
        res["live"] = [live_latency(origin, 1), live_latency(origin, 2)]
        res["load"] = [under_load_python(origin)]
        w = under_load_wrk(origin)
        if w:
            res["load"].append(w)
        res["memory"] = memory(origin)
    except StartError as e:
        print("reload.py: %s" % e, file=sys.stderr)
        return 1
    finally:
        origin.stop()

    print("\nreload: time from POST /reload to the new handler answering (%d reloads)" %
          RELOADS)
    print("| workers | median ms | p99 ms | max ms | engine took_ms median / p99 |")
    print("|---|---|---|---|---|")
    for r in res["live"]:
        print("| %d | %.2f | %.2f | %.2f | %.2f / %.2f |" % (
            r["workers"], r["median_ms"], r["p99_ms"], r["max_ms"], r["took_ms_median"],
            r["took_ms_p99"]))
    print("\nrequests during %d reloads (workers=2)" % RELOADS)
    print("| client | reloads done | failed / total | |")
    print("|---|---|---|---|")
    for r in res["load"]:
        print("| %s | %d | %d / %d | %s |" % (r["client"], r["reloads"], r["failed"],
                                            r["total"],
                                            "PROXY DIED: " + r["died"] if r["died"] else ""))
    m = res["memory"]
    print("\nmemory (workers=2): RSS %d KiB before, %d KiB after %d reloads (%+d KiB); "
          "descriptors %d -> %d; %.1f s" % (m["rss_before_kib"], m["rss_after_kib"],
                                            m["reloads"], m["growth_kib"], m["fds_before"],
                                            m["fds_after"], m["seconds"]))
    try:
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        with open(RESULTS, "w") as f:
            json.dump(res, f, indent=2)
        print("\n(%s)" % RESULTS)
    except OSError as e:
        print("reload.py: cannot write %s: %s" % (RESULTS, e), file=sys.stderr)
    return 1 if any(r["died"] for r in res["load"]) else 0


if __name__ == "__main__":
    sys.exit(main())
