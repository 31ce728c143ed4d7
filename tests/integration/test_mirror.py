#!/usr/bin/env python3
"""The bundled `mirror` plugin (docs/plugins/mirror.md) in the real engine: a main origin and
a mirror target, both Python HTTP/1.1 servers started here. Copies carry the method, URI,
headers and body (Content-Length and chunked, small and 300 KB); a configured upstream name
is mirrored to its target; the main request is answered while its mirror is held by the
target (ordering, not timing); a mirror target that is slow (timeout), down (accepts
nothing) or refusing fails nothing and is counted; bodies over max_body are not mirrored;
the per-worker concurrency bound drops and counts; a reload while a mirror is in flight
loses neither the main requests nor the mirror."""

import http.server
import os
import re
import socket
import socketserver
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reload"))
import reloadtest as RT  # noqa: E402
from reloadtest import H  # noqa: E402


def read_body(handler):
    """The request body, Content-Length or chunked (the proxy re-chunks)."""
    te = (handler.headers.get("Transfer-Encoding") or "").lower()
    if te == "chunked":
        out = bytearray()
        while True:
            line = handler.rfile.readline()
            n = int(line.split(b";")[0].strip(), 16)
            if n == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += handler.rfile.read(n)
            handler.rfile.readline()
    n = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(n) if n else b""


class Server:
    """A threaded keep-alive HTTP/1.1 server recording every request (method, path,
    lower-cased headers, body). While `gate` is clear, answers wait for it (a slow target)."""

    def __init__(self, name):
        srv = self
        self.name = name
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.requests = []
        self.gate = threading.Event()
        self.gate.set()
        self.conns = set()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                with srv.lock:
                    srv.conns.add(self.connection)

            def finish(self):
                with srv.lock:
                    srv.conns.discard(self.connection)
                super().finish()

            def _handle(self):
                body = read_body(self)
                rec = {"method": self.command, "path": self.path, "body": body,
                       "headers": {k.lower(): v for k, v in self.headers.items()}}
                with srv.cond:
                    srv.requests.append(rec)
                    srv.cond.notify_all()
                srv.gate.wait(H.T(30))
                out = ("%s %d" % (srv.name, len(body))).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request, client_address):
                pass

        self.server = S(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self):
        with self.lock:
            return len(self.requests)

    def wait_count(self, n, what="requests"):
        H.wait_for(lambda: self.count() >= n, H.T(10), what="%s: %d %s" % (self.name, n, what))
        with self.lock:
            return list(self.requests)

    def stop(self):
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            for c in list(self.conns):
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def blackhole():
    """A listening socket that never accepts: connects complete (the kernel's backlog), no
    byte is ever read or answered."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s


class MirrorTest(RT.ReloadTestCase):
    @classmethod
    def setUpClass(cls):
        cls.main = Server("main")
        cls.addClassCleanup(cls.main.stop)
        cls.shadow = Server("shadow")
        cls.addClassCleanup(cls.shadow.stop)
        cls.hole = blackhole()
        cls.addClassCleanup(cls.hole.close)
        dead = H.dead_port()
        shadow_url = "http://127.0.0.1:%d" % cls.shadow.port

        def mirror(prefix, **conf):
            c = {"name": "mirror"}
            c.update(conf)
            return RT.route(prefix, upstream="main", plugins=[c])

        routes = [
            mirror("/m/", url=shadow_url, headers={"X-Mirrored-By": "luaproxy"}, timeout=10),
            mirror("/host/", url=shadow_url + "/pre", host="target"),
            mirror("/up/", upstream="shadow", timeout=10),
            mirror("/small/", url=shadow_url, max_body=10, timeout=10),
            mirror("/gate/", url=shadow_url, max_concurrent=2, timeout=20),
            mirror("/slow/", url=shadow_url, timeout=0.3),
            mirror("/refused/", url="http://127.0.0.1:%d" % dead),
            mirror("/down/", url="http://127.0.0.1:%d" % cls.hole.getsockname()[1],
                   timeout=0.3),
            mirror("/half/", url=shadow_url, percentage=50, timeout=10),
            RT.route("/", upstream="main"),
        ]
        cls.proxy = cls.start_reload_proxy(
            {"main": H.upstream(cls.main.port), "shadow": H.upstream(cls.shadow.port)},
            routes, workers=1)

    def setUp(self):
        self.shadow.gate.set()

    # ---- helpers ----

    def metric(self, name, label, value):
        text = self.admin("GET", "/metrics").body.decode()
        m = re.search(r'^%s\{%s="%s"\} (\S+)$' % (name, label, value), text, re.M)
        return float(m.group(1)) if m else 0.0

    def in_flight(self):
        text = self.admin("GET", "/metrics").body.decode()
        m = re.search(r"(?m)^mirror_in_flight (\S+)$", text)
        return float(m.group(1)) if m else 0.0

    def wait_metric(self, name, label, value, want):
        H.wait_for(lambda: self.metric(name, label, value) >= want, H.T(10),
                   what="%s{%s=%s} >= %s" % (name, label, value, want))

    def post(self, path, body, headers=None, chunked=None):
        hdrs = dict(headers or {})
        if chunked:
            hdrs["Transfer-Encoding"] = "chunked"
            body = H.chunked(body, sizes=chunked)
        return self.get(path, method="POST", headers=hdrs, body=body)

    def mirrored(self, n):
        """Waits for the shadow's n-th request and returns it."""
        return self.shadow.wait_count(n, "mirrored requests")[n - 1]

    # ---- tests ----

    def test_1_copy_has_method_uri_headers_body(self):
        before = self.shadow.count()
        r = self.post("/m/a?x=1", b"hello mirror", {"X-User": "ann", "Connection": "keep-alive"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, b"main 12")
        m = self.mirrored(before + 1)
        self.assertEqual(m["method"], "POST")
        self.assertEqual(m["path"], "/m/a?x=1")
        self.assertEqual(m["body"], b"hello mirror")
        self.assertEqual(m["headers"]["x-user"], "ann")
        self.assertEqual(m["headers"]["x-mirrored-by"], "luaproxy")
        self.assertEqual(m["headers"]["host"], "a.test")
        self.assertEqual(m["headers"]["content-length"], "12")
        self.assertIn("127.0.0.1", m["headers"]["x-forwarded-for"])
        self.wait_metric("mirror_requests_total", "outcome", "sent", 1)

    def test_2_large_chunked_body(self):
        body = bytes(range(256)) * 1200  # 300 KiB, across many reads
        before = self.shadow.count()
        r = self.post("/m/big", body, chunked=[7000, 65536, 3])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, ("main %d" % len(body)).encode())
        m = self.mirrored(before + 1)
        self.assertEqual(len(m["body"]), len(body))
        self.assertEqual(m["body"], body)
        self.assertNotIn("transfer-encoding", m["headers"])

    def test_3_host_target_and_path_prefix(self):
        before = self.shadow.count()
        self.assertEqual(self.get("/host/x").status, 200)
        m = self.mirrored(before + 1)
        self.assertEqual(m["path"], "/pre/host/x")
        self.assertEqual(m["headers"]["host"], "127.0.0.1:%d" % self.shadow.port)

    def test_4_upstream_name(self):
        before = self.shadow.count()
        self.assertEqual(self.get("/up/q").status, 200)
        self.assertEqual(self.mirrored(before + 1)["path"], "/up/q")

    def test_5_main_not_delayed_by_a_slow_mirror(self):
        self.shadow.gate.clear()  # the shadow holds its answers from now on
        before = self.shadow.count()
        r = self.post("/m/held", b"x" * 1000)
        # The main answer came while the mirror target still holds the mirrored request:
        # it was received (below) and the gate is still closed.
        self.assertEqual(r.status, 200, r)
        self.mirrored(before + 1)
        self.assertFalse(self.shadow.gate.is_set())
        sent = self.metric("mirror_requests_total", "outcome", "sent")
        self.shadow.gate.set()
        self.wait_metric("mirror_requests_total", "outcome", "sent", sent + 1)

    def test_6_concurrency_bound_drops(self):
        self.shadow.gate.clear()
        before = self.shadow.count()
        busy = self.metric("mirror_dropped_total", "reason", "busy")
        for i in range(5):
            self.assertEqual(self.get("/gate/%d" % i).status, 200)
        self.shadow.wait_count(before + 2)
        self.wait_metric("mirror_dropped_total", "reason", "busy", busy + 3)
        self.assertEqual(self.shadow.count(), before + 2)
        self.assertEqual(self.in_flight(), 2)
        self.shadow.gate.set()
        H.wait_for(lambda: self.in_flight() == 0, H.T(10), what="mirrors done")

    def test_7_slow_down_refused_targets_are_counted(self):
        self.shadow.gate.clear()
        t0 = self.metric("mirror_requests_total", "outcome", "timeout")
        f0 = self.metric("mirror_requests_total", "outcome", "failed")
        for path in ("/slow/a", "/down/a", "/refused/a"):
            r = self.post(path, b"abc")
            self.assertEqual(r.status, 200, (path, r))
            self.assertEqual(r.body, b"main 3")
        self.wait_metric("mirror_requests_total", "outcome", "timeout", t0 + 2)
        self.wait_metric("mirror_requests_total", "outcome", "failed", f0 + 1)
        self.shadow.gate.set()
        self.assertAlive()

    def test_8_body_over_max_body_not_mirrored(self):
        before = self.shadow.count()
        big = self.metric("mirror_dropped_total", "reason", "too_large")
        self.assertEqual(self.post("/small/a", b"y" * 11).body, b"main 11")
        self.assertEqual(self.post("/small/b", b"y" * 40, chunked=[5]).body, b"main 40")
        self.wait_metric("mirror_dropped_total", "reason", "too_large", big + 2)
        self.assertEqual(self.post("/small/c", b"y" * 10).body, b"main 10")
        self.assertEqual(self.mirrored(before + 1)["path"], "/small/c")

    def test_9_percentage(self):
        before = self.shadow.count()
        for i in range(200):
            self.assertEqual(self.get("/half/%d" % i).status, 200)
        # 50% of 200: far from 0 and from 200 (binomial: 100 +- 7 for one sigma).
        H.wait_for(lambda: self.in_flight() == 0, H.T(10), what="mirrors done")
        n = len([x for x in self.shadow.requests[before:] if x["path"].startswith("/half/")])
        self.assertGreater(n, 40)
        self.assertLess(n, 160)

    def test_z_reload_mid_mirror(self):
        self.shadow.gate.clear()
        before = self.shadow.count()
        sent = self.metric("mirror_requests_total", "outcome", "sent")
        self.assertEqual(self.post("/m/reload", b"r" * 5000).status, 200)
        self.mirrored(before + 1)  # in flight, held by the target
        self.reload()
        for _ in range(5):
            self.assertEqual(self.get("/x").status, 200)
        self.shadow.gate.set()
        # The old generation's thread finishes its mirror (metrics keep counting by name).
        self.wait_metric("mirror_requests_total", "outcome", "sent", sent + 1)
        self.assertEqual(self.post("/m/after", b"z").status, 200)
        self.mirrored(before + 2)
        self.assertAlive()


class MirrorShutdownTest(H.ProxyTestCase):
    """A worker that stops while a mirror is in flight waits for it only up to its drain
    deadline, then exits cleanly (0, no sanitizer report)."""

    def test_stop_mid_mirror_is_bounded_by_drain(self):
        main = Server("main")
        self.addCleanup(main.stop)
        shadow = Server("shadow")
        self.addCleanup(shadow.stop)
        shadow.gate.clear()  # never answers during this test
        p = H.Proxy.build({"main": H.upstream(main.port)},
                          [RT.route("/", upstream="main", plugins=[
                              {"name": "mirror", "url": "http://127.0.0.1:%d" % shadow.port,
                               "timeout": 60}])],
                          name="MirrorShutdown", timeouts={"drain": 1})
        self.addCleanup(p.stop)
        p.start()
        r = H.get(p.port, "/stop", method="POST", body=b"s" * 3000)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(shadow.wait_count(1)[0]["body"], b"s" * 3000)  # held in flight
        p.signal(15)
        self.assertEqual(p.wait_exit(H.T(20)), 0, p.stderr()[-3000:])
        p.check_sanitizers()


if __name__ == "__main__":
    H.main()
