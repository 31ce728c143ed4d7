#!/usr/bin/env python3
"""gRPC unary through luaproxy (upstream protocol = "h2") vs nginx grpc_pass, 1 worker each,
h2c on both sides, one grpcio server behind both (issue #17). h2load sends the same gRPC
POST (content-type application/grpc, te: trailers, a 5-byte-framed message) in alternation
to each proxy; the figure is the proxy's CPU per request (its process: utime + stime) and
requests per second. Not a test: it asserts nothing.

    python3 bench/grpc_unary.py [ROUNDS=3] [N=20000]    (LUAPROXY=build/luaproxy)"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent import futures

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as B  # noqa: E402

try:
    import grpc
except ImportError:
    sys.path.append("/usr/lib/python3/dist-packages")
    import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUAPROXY = os.environ.get("LUAPROXY", os.path.join(ROOT, "build", "luaproxy"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
N = int(os.environ.get("N", "20000"))


def main():
    d = tempfile.mkdtemp(prefix="lp-grpc-bench-")
    server = grpc.server(futures.ThreadPoolExecutor(8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("b.E", {
        "U": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)}),))
    gport = server.add_insecure_port("127.0.0.1:0")
    server.start()
    procs = []
    try:
        lport, nport = B.free_port(), B.free_port()
        with open(os.path.join(d, "lp.lua"), "w") as f:
            f.write('return { workers = 1, listen = { { address = "127.0.0.1:%d", http2 = true } },\n'
                    '  upstreams = { g = { targets = { "127.0.0.1:%d" }, protocol = "h2" } },\n'
                    '  routes = { { match = { prefix = "/" }, upstream = "g" } },\n'
                    '  log = { level = "warn" } }\n' % (lport, gport))
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write("worker_processes 1; daemon off; pid %s/nginx.pid; error_log %s/nginx.err warn;\n"
                    "events { worker_connections 1024; }\n"
                    "http { access_log off; upstream g { server 127.0.0.1:%d; keepalive 32; }\n"
                    " server { listen 127.0.0.1:%d http2; location / { grpc_pass grpc://g; } } }\n"
                    % (d, d, gport, nport))
        lp = subprocess.Popen([LUAPROXY, "-c", os.path.join(d, "lp.lua")],
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "lp.err"), "w"),
                              start_new_session=True)
        procs.append(lp)
        ng = subprocess.Popen(["/usr/sbin/nginx", "-c", os.path.join(d, "nginx.conf"), "-p", d],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
        procs.append(ng)
        B.wait_port(lport, lp)
        B.wait_port(nport, ng)
        time.sleep(0.3)  # nginx forks its worker after it listens
        nworker = B.children(ng.pid)[0]
        body = os.path.join(d, "msg")
        with open(body, "wb") as f:
            f.write(b"\0\0\0\0\x05hello")
        targets = {"luaproxy": (lport, lp.pid), "nginx": (nport, nworker)}
        res = {k: {"cpu_us": [], "rps": []} for k in targets}
        for rnd in range(ROUNDS + 1):  # the first is a warm-up
            for name, (port, pid) in targets.items():
                c0 = B.cpu_seconds(pid)
                p = subprocess.run(["h2load", "-n", str(N), "-c", "10", "-m", "10", "-d", body,
                                    "-H", "content-type: application/grpc", "-H", "te: trailers",
                                    "http://127.0.0.1:%d/b.E/U" % port],
                                   capture_output=True, text=True, timeout=300)
                c1 = B.cpu_seconds(pid)
                ok = re.search(r"(\d+) succeeded", p.stdout)
                rps = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", p.stdout)
                okn = int(ok.group(1)) if ok else 0
                if rnd and okn:
                    res[name]["cpu_us"].append((c1 - c0) / okn * 1e6)
                    res[name]["rps"].append(float(rps.group(1)) if rps else 0.0)
                print("round %d %-8s ok=%d cpu/req=%.1f us" % (rnd, name, okn,
                      (c1 - c0) / max(okn, 1) * 1e6), flush=True)
        for name, r in res.items():
            print("%-8s median cpu/req %.1f us, median %.0f req/s" %
                  (name, B.median(r["cpu_us"]), B.median(r["rps"])))
        print("ratio luaproxy/nginx cpu/req: %.2f" %
              (B.median(res["luaproxy"]["cpu_us"]) / B.median(res["nginx"]["cpu_us"])))
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
            except OSError:
                pass
        server.stop(None)


if __name__ == "__main__":
    main()
