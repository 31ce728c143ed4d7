#!/usr/bin/env python3
"""Instructions per request of the waf plugin running the OWASP CRS, in the real proxy and in
the in-process double (bench/waf/cpu_run.lua), for bench/waf_crs.py's two requests
(bench/waf/requests.json): where the proxy's WAF request costs more than the double's.

    python3 bench/waf_callgrind.py [N] [--paranoia 1] [--only proxy|double] [--keep]
                                   [--home-b DIR] [--rounds R]

proxy: luaproxy (build/luaproxy, best built RelWithDebInfo) with one worker under
`valgrind --tool=callgrind --instr-atstart=no`, in front of bench/waf_crs.py's Python
origin, with a route running the waf and one without (the base). After a warm-up (traces
compiled; Hyperscan's databases ready: the waf logs "Hyperscan databases ready" once no
database of its rule set is pending, before which its rules run through PCRE2 alone),
collection is switched on for N requests pipelined on one keep-alive connection and the
total divided by N; the WAF's part is the WAF route minus the base.

The garbage collector made the figure jump by ±8% from run to run: the worker's Lua heap
is mostly the compiled rule set (~10 MB, every byte of it marked by each GC cycle), and a
cycle came every few hundred requests, so whether one fell inside the N requests decided
the total. So before each window a bench-only route (/gc: collectgarbage("collect"), never
on a measured request) runs a full collection: every window starts with the collector in
the same state and, the live heap being larger than N requests allocate, no cycle runs in
it. What that leaves out, the collector's share, is given beside it as an estimate from
two exact figures: the Lua bytes each request allocates (the heap's growth over the
window) and the instructions of one full cycle (the /gc after the window, measured); a
cycle starts once the heap has doubled (LuaJIT's default pause of 200), so per request the
collector costs about cycle * allocated / live heap. Measured, not estimated: the
instructions of everything else. --rounds R repeats each window R times (medians): they
agree within about 0.5%. Two processes of the same tree still differ by 2-9%, a longer
warm-up or not (most likely which traces form, LuaJIT seeding the PRNG behind its
trace-abort penalties from /dev/urandom, and the order of hash tables: the bytes a request
allocates differ a little too), so an A/B starts --procs P
proxies per side in turn and compares medians: --home-b DIR runs the second side with
LUAPROXY_HOME=DIR (another version's Lua, e.g. a main checkout) in the same run. double: cpu_run.lua under callgrind, collection on for its measured loop
only (WAF_PAUSE=1). Instructions, not time: steady on a loaded machine. Loading CRS under
valgrind takes minutes. A figure for docs, never a test. --keep keeps the callgrind.out
files (printed); read one with `callgrind_annotate --inclusive=yes FILE | head -60`.
"""
import argparse
import glob
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import waf_crs  # noqa: E402  (the origin, the requests and the pipelined client)
import harness as H  # noqa: E402  (stop_group)

CONF = """\
return {{
  workers = 1,
  listen = {{ {{ address = "127.0.0.1:{port}" }} }},
  upstreams = {{ app = {{ targets = {{ "127.0.0.1:{origin}" }}, keepalive = 64 }} }},
  routes = {{
    {{ match = {{ prefix = "/waf/" }}, upstream = "app", strip_prefix = true,
      plugins = {{ {{ name = "waf", crs = "{crs}", paranoia = {pl} }} }} }},
    {{ match = {{ prefix = "/base/" }}, upstream = "app", strip_prefix = true }},
    -- bench only: a full collection between windows, and the heap before and after it
    {{ match = {{ path = "/gc" }}, handler = function(req)
      local before = collectgarbage("count")
      collectgarbage("collect")
      req:respond(200, string.format("%.0f %.0f\\n", before * 1024, collectgarbage("count") * 1024))
    end }},
  }},
  log = {{ access = false, level = "info" }},
  lua = {{ phase_timeout = 600, init_timeout = 600 }},  -- CRS's load under valgrind
}}
"""


def callgrind(args, out):
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no",
            "--callgrind-out-file=" + out] + args


def control(pid, *opts):
    subprocess.run(["callgrind_control"] + list(opts) + [str(pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def dumped_total(work, seen):
    """Instructions in the dump files written since `seen` (callgrind_control -d)."""
    files = sorted(set(glob.glob(os.path.join(work, "callgrind.out*"))) - seen)
    tot = 0
    for f in files:
        with open(f) as fh:
            for line in fh:
                if line.startswith("totals:"):
                    tot += int(line.split()[1])
        seen.add(f)
    return tot, files


def measure(pid, work, seen, fn):
    control(pid, "-z")
    control(pid, "-i", "on")
    fn()
    control(pid, "-i", "off")
    control(pid, "-d")
    time.sleep(0.5)  # the dump file is written by the process itself
    return dumped_total(work, seen)


def full_gc(port):
    """GET /gc: the worker's Lua heap (bytes) before and after a full collection."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        c.request("GET", "/gc")
        r = c.getresponse()
        body = r.read().decode()
        if r.status != 200:
            sys.exit("/gc: status %d %s" % (r.status, body))
        before, after = body.split()
        return int(before), int(after)
    finally:
        c.close()


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def proxy(a, work, kept, home=None, tag="a"):
    """Per case (label, prefix): instructions per request of each round's window, Lua bytes
    allocated per request; and the instructions of a full cycle, the live heap (bytes)."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), waf_crs.Origin)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = waf_crs.free_port()
    conf = os.path.join(work, "proxy-%s.lua" % tag)
    with open(conf, "w") as f:
        f.write(CONF.format(port=port, origin=srv.server_address[1], crs=a.crs, pl=a.paranoia))
    log = os.path.join(work, "proxy-%s.out" % tag)
    env = dict(os.environ)
    if home:
        env["LUAPROXY_HOME"] = home
    proc = subprocess.Popen(callgrind([a.luaproxy, "-c", conf, "-w", "1"],
                                      os.path.join(work, "callgrind.out.proxy-" + tag)),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env=env)
    res = {}
    try:
        end = time.monotonic() + 1800
        while open(log).read().count("Hyperscan databases ready") < 1:
            if time.monotonic() > end or proc.poll() is not None:
                sys.exit("luaproxy not ready:\n" + open(log).read()[-3000:])
            time.sleep(1)  # the databases compile on a thread of their own: no signal
        seen = set(glob.glob(os.path.join(work, "callgrind.out*")))
        s = socket.create_connection(("127.0.0.1", port), 60)
        s.settimeout(600)
        buf = [b""]

        def run(prefix, req, n):
            st, buf[0] = waf_crs.pipelined(s, waf_crs.raw_request(req, prefix=prefix), n, 8, buf[0])
            if st != 200:
                sys.exit("%s: status %d (measured requests must pass)" % (prefix, st))

        cycles, lives = [], []
        for label, req in (("GET", waf_crs.BROWSER_GET), ("JSON", waf_crs.JSON_POST)):
            for prefix in ("/base", "/waf"):
                run(prefix, req, a.warm)
                instr, alloc = [], []
                for _ in range(a.rounds):
                    _, live = full_gc(port)
                    tot, files = measure(proc.pid, work, seen, lambda: run(prefix, req, a.n))
                    kept += files
                    box = []
                    cyc, files = measure(proc.pid, work, seen, lambda: box.append(full_gc(port)))
                    kept += files
                    grown = box[0][0] - live
                    if grown > live:
                        print("  (%s %s: the heap more than doubled in the window, %d -> %d bytes: "
                              "a GC cycle ran in it; use a smaller N)" % (label, prefix, live,
                                                                         live + grown), flush=True)
                    instr.append(tot / a.n)
                    alloc.append(grown / a.n)
                    cycles.append(cyc)
                    lives.append(live)
                res[(label, prefix)] = (instr, alloc)
        s.close()
        res["cycle"], res["live"] = median(cycles), median(lives)
    finally:
        H.stop_group(proc, 60)
        srv.shutdown()
    return res


def report_proxy(name, r):
    cyc, live = r["cycle"], r["live"]
    print("  %s: a full GC cycle %.1f M instructions, live Lua heap %.1f MB" % (name, cyc / 1e6, live / 1e6))
    out = {}
    for label in ("GET", "JSON"):
        (bi, ba), (wi, wa) = r[(label, "/base")], r[(label, "/waf")]
        part = [w - b for w, b in zip(wi, bi)]
        alloc = median(wa) - median(ba)
        gc = cyc * alloc / live
        out[label] = (median(part), gc)
        print("  %s %-4s waf route %10.0f  base %8.0f  waf part %10.0f (rounds %s)  "
              "+ GC est. %7.0f (%5.0f bytes allocated)"
              % (name, label, median(wi), median(bi), median(part),
                 " ".join("%.0f" % x for x in part), gc, alloc), flush=True)
    return out


def double(a, work, kept):
    env = dict(os.environ, WAF_PAUSE="1",
               LP_NATIVE_LIB=os.path.join(ROOT, "build", "liblp_native.so"))
    proc = subprocess.Popen(callgrind(["luajit", "bench/waf/cpu_run.lua", a.crs, str(a.paranoia),
                                       str(a.n)], os.path.join(work, "callgrind.out.double")),
                            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    res = {}
    seen = set(glob.glob(os.path.join(work, "callgrind.out*")))
    try:
        for line in proc.stdout:
            parts = line.split()
            if parts[:1] != ["pause"]:
                continue
            if parts[1] == "start":
                control(proc.pid, "-z")
                control(proc.pid, "-i", "on")
            else:
                control(proc.pid, "-i", "off")
                control(proc.pid, "-d")
                time.sleep(0.5)
                tot, files = dumped_total(work, seen)
                kept += files
                res["GET" if parts[2] == "get" else "JSON"] = tot / a.n
            proc.stdin.write("\n")
            proc.stdin.flush()
        proc.wait(600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=200, help="measured requests per case")
    ap.add_argument("--warm", type=int, default=300)
    ap.add_argument("--paranoia", type=int, default=1)
    ap.add_argument("--crs", default="/usr/share/modsecurity-crs")
    ap.add_argument("--only", default="proxy,double")
    ap.add_argument("--luaproxy", default=os.path.join(ROOT, "build", "luaproxy"))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="windows per case (medians)")
    ap.add_argument("--home", default=None, help="the Lua (LUAPROXY_HOME) of the first proxy")
    ap.add_argument("--procs", type=int, default=1,
                    help="proxies started per side, one after the other (medians)")
    ap.add_argument("--home-b", default=None, help="another tree's Lua (LUAPROXY_HOME), beside")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))
    work = tempfile.mkdtemp(prefix="lp-waf-cg-")
    kept = []
    try:
        print("instructions per request, PL%d, %d requests per case (after %d warm-up)"
              % (a.paranoia, a.n, a.warm), flush=True)
        if "proxy" in a.only:
            ras, rbs = [], []
            for k in range(a.procs):
                ras.append(report_proxy("proxy", proxy(a, work, kept, a.home, "a%d" % k)))
                if a.home_b:
                    rbs.append(report_proxy("proxy-b", proxy(a, work, kept, a.home_b, "b%d" % k)))
            for label in ("GET", "JSON"):
                pa = [r[label][0] for r in ras]
                print("  %-4s waf part, median of %d processes: %.0f (%s) + GC est. %.0f"
                      % (label, len(pa), median(pa), " ".join("%.0f" % x for x in pa),
                         median([r[label][1] for r in ras])), flush=True)
                if rbs:
                    pb = [r[label][0] for r in rbs]
                    print("  %-4s home-b: %.0f (%s) + GC est. %.0f; this tree / home-b: %.3f "
                          "(with GC est. %.3f)"
                          % (label, median(pb), " ".join("%.0f" % x for x in pb),
                             median([r[label][1] for r in rbs]), median(pa) / median(pb),
                             (median(pa) + median([r[label][1] for r in ras]))
                             / (median(pb) + median([r[label][1] for r in rbs]))), flush=True)
        if "double" in a.only:
            r = double(a, work, kept)
            for label in ("GET", "JSON"):
                print("  double %-4s %10.0f" % (label, r[label]), flush=True)
    finally:
        if a.keep:
            print("kept:", " ".join(kept))
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
