#!/usr/bin/env python3
"""Instructions per request of the waf plugin running the OWASP CRS, in the real proxy and in
the in-process double (bench/waf/cpu_run.lua), for bench/waf_crs.py's two requests
(bench/waf/requests.json): where the proxy's WAF request costs more than the double's.

    python3 bench/waf_callgrind.py [N] [--paranoia 1] [--only proxy|double] [--keep]

proxy: luaproxy (build/luaproxy, best built RelWithDebInfo) with one worker under
`valgrind --tool=callgrind --instr-atstart=no`, in front of bench/waf_crs.py's Python
origin, with a route running the waf and one without (the base). After a warm-up (traces
compiled, Hyperscan's databases ready), collection is switched on for N requests pipelined
on one keep-alive connection and the total divided by N; the WAF's part is the WAF route
minus the base. double: cpu_run.lua under callgrind, collection on for its measured loop
only (WAF_PAUSE=1). Instructions, not time: steady on a loaded machine. Loading CRS under
valgrind takes minutes. A figure for docs, never a test. --keep keeps the callgrind.out
files (printed); read one with `callgrind_annotate --inclusive=yes FILE | head -60`.
"""
import argparse
import glob
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


def proxy(a, work, kept):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), waf_crs.Origin)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = waf_crs.free_port()
    conf = os.path.join(work, "proxy.lua")
    with open(conf, "w") as f:
        f.write(CONF.format(port=port, origin=srv.server_address[1], crs=a.crs, pl=a.paranoia))
    log = os.path.join(work, "proxy.out")
    proc = subprocess.Popen(callgrind([a.luaproxy, "-c", conf, "-w", "1"],
                                      os.path.join(work, "callgrind.out.proxy")),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
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

        for label, req in (("GET", waf_crs.BROWSER_GET), ("JSON", waf_crs.JSON_POST)):
            for prefix in ("/base", "/waf"):
                run(prefix, req, a.warm)
                tot, files = measure(proc.pid, work, seen, lambda: run(prefix, req, a.n))
                kept += files
                res[(label, prefix)] = tot / a.n
        s.close()
    finally:
        H.stop_group(proc, 60)
        srv.shutdown()
    return res


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
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))
    work = tempfile.mkdtemp(prefix="lp-waf-cg-")
    kept = []
    try:
        print("instructions per request, PL%d, %d requests per case (after %d warm-up)"
              % (a.paranoia, a.n, a.warm), flush=True)
        if "proxy" in a.only:
            r = proxy(a, work, kept)
            for label in ("GET", "JSON"):
                b, w = r[(label, "/base")], r[(label, "/waf")]
                print("  proxy  %-4s waf route %10.0f  base %8.0f  waf part %10.0f"
                      % (label, w, b, w - b), flush=True)
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
