#!/usr/bin/env python3
"""1000 concurrent requests for one cold key: how many reach the origin, through luaproxy's
cache (coalescing, `lock = true`) and nginx's proxy_cache with proxy_cache_lock on, 1 worker
each. The origin counts requests and takes 0.5 s to answer, so every client arrives while
the first fill is in flight. A figure for the closing note (issue #13), never a test.

  python3 bench/cache_cold.py [N]          # N concurrent clients, default 1000
"""

import http.client
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scenarios  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUAPROXY = os.environ.get("LUAPROXY", os.path.join(ROOT, "build", "luaproxy"))
NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Origin(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 2048


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    count = 0
    lock = threading.Lock()

    def do_GET(self):
        with Handler.lock:
            Handler.count += 1
        time.sleep(0.5)
        body = b"cold body\n"
        self.send_response(200)
        self.send_header("Cache-Control", "max-age=60")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("port %d did not open" % port)


def storm(port, path):
    ok = [0]
    lock = threading.Lock()
    go = threading.Event()

    def one():
        go.wait()
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("GET", path)
            r = c.getresponse()
            if r.status == 200 and r.read() == b"cold body\n":
                with lock:
                    ok[0] += 1
            c.close()
        except OSError:
            pass
    threads = [threading.Thread(target=one) for _ in range(N)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    go.set()
    for t in threads:
        t.join(60)
    return ok[0], time.monotonic() - t0


def render(template, **kw):
    for k, v in kw.items():
        template = template.replace("{{%s}}" % k, str(v))
    return template


def main():
    origin_port = free_port()
    srv = Origin(("127.0.0.1", origin_port), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    d = tempfile.mkdtemp(prefix="cache-cold-")
    procs = []
    try:
        lp_port, ng_port = free_port(), free_port()
        with open(os.path.join(d, "lp.lua"), "w") as f:
            f.write(render(scenarios.LUAPROXY_CACHE, port=lp_port, origin_port=origin_port))
        os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(render(scenarios.NGINX_CACHE, port=ng_port, origin_port=origin_port, dir=d,
                           user="user root;" if os.geteuid() == 0 else "", nofile=65536))
        procs.append(subprocess.Popen([LUAPROXY, "-c", os.path.join(d, "lp.lua")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
        procs.append(subprocess.Popen([NGINX, "-c", os.path.join(d, "nginx.conf"), "-g",
                                       "daemon off;"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))
        wait_port(lp_port)
        wait_port(ng_port)
        for name, port in (("luaproxy", lp_port), ("nginx", ng_port)):
            path = "/cold-%s" % name
            before = Handler.count
            ok, took = storm(port, path)
            print("%-9s %d concurrent cold requests: %d answered 200, origin requests %d, %.2fs"
                  % (name, N, ok, Handler.count - before, took))
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(p.pid, signal.SIGKILL)
        srv.shutdown()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
