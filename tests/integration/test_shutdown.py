#!/usr/bin/env python3
"""Graceful shutdown on SIGTERM: listeners close at once, in-flight responses finish
intact, idle keep-alive connections are closed, the process exits 0; a drain deadline
bounds how long it waits."""

import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402


class ShutdownTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")

    def new_proxy(self, drain=30, workers=2):
        p = H.Proxy.build({"a": H.upstream(self.a.address())},
                          [{"match": {"prefix": "/"}, "upstream": "a"}],
                          name="shutdown", workers=workers,
                          timeouts={"drain": drain, "read": 60})
        self.addCleanup(p.stop)
        return p.start()

    def test_inflight_response_completes(self):
        p = self.new_proxy()
        n = 200000
        with H.Client(p.port, timeout=H.T(20)) as c:
            # ~3 s of response: 20 chunks, 150 ms apart.
            c.send(H.build_request("GET", "/slow?bytes=%d&chunk=10000&delay_ms=150" % n))
            ver, status, reason, headers, raw = c.read_head()
            self.assertEqual(status, 200)
            p.signal(signal.SIGTERM)
            # New connections are refused while the old response is still streaming.
            H.wait_for(lambda: H.connect_refused(p.port), H.T(5),
                       what="listener closed after SIGTERM")
            # The response finishes intact.
            c.buf[:0] = raw
            r = c.read_response()
            self.assertTrue(r.complete, "in-flight response cut by shutdown: %r" % r)
            self.assertEqual(r.body_len, n)
            closed, extra = c.wait_closed(H.T(10))
            self.assertTrue(closed, "connection kept open after drain")
            self.assertEqual(extra, b"")
        rc = p.wait_exit(H.T(30))
        self.assertIsNotNone(rc, "proxy did not exit after its last request")
        self.assertEqual(rc, 0)
        p.check_sanitizers()

    def test_inflight_upload_completes(self):
        p = self.new_proxy()
        body = os.urandom(300000)
        with H.Client(p.port, timeout=H.T(20)) as c:
            head = H.build_request("POST", "/echo", [("Content-Length", str(len(body)))])
            c.send(head + body[:1000])
            time.sleep(0.3)  # the head reaches the proxy, which connects upstream
            p.signal(signal.SIGTERM)
            p.wait_log("draining")
            c.send(body[1000:])
            r = c.read_response("POST")
            self.assertEqual(r.status, 200)
            self.assertTrue(r.body == body)
        rc = p.wait_exit(H.T(30))
        self.assertEqual(rc, 0)
        p.check_sanitizers()

    def test_idle_connections_closed(self):
        p = self.new_proxy()
        idle = H.Client(p.port)
        self.addCleanup(idle.close)
        self.assertEqual(idle.request("GET", "/").status, 200)
        fresh = H.Client(p.port)   # connected, never sent a byte
        self.addCleanup(fresh.close)
        time.sleep(0.2)
        p.signal(signal.SIGTERM)
        for c in (idle, fresh):
            closed, extra = c.wait_closed(H.T(10))
            self.assertTrue(closed, "idle connection not closed on shutdown")
        rc = p.wait_exit(H.T(20))
        self.assertEqual(rc, 0)
        p.check_sanitizers()

    def test_exit_without_connections(self):
        p = self.new_proxy()
        self.assertEqual(H.get(p.port, "/").status, 200)
        p.signal(signal.SIGTERM)
        rc = p.wait_exit(H.T(15))
        self.assertEqual(rc, 0)
        self.assertTrue(H.connect_refused(p.port))
        p.check_sanitizers()

    def test_drain_deadline(self):
        p = self.new_proxy(drain=1)
        with H.Client(p.port, timeout=H.T(60)) as c:
            # ~60 s of response, far beyond the drain time.
            c.send(H.build_request("GET", "/slow?bytes=60000&chunk=100&delay_ms=100"))
            ver, status, reason, headers, raw = c.read_head()
            self.assertEqual(status, 200)
            p.signal(signal.SIGTERM)
            rc = p.wait_exit(H.T(20))
            self.assertIsNotNone(rc, "proxy ignored its drain deadline")
            c.buf[:0] = raw
            r = c.read_response()
            self.assertFalse(r.complete, "a cut response must not look complete")
        p.check_sanitizers()

    def test_shutdown_under_load(self):
        p = self.new_proxy()
        stop = threading.Event()
        errors = []

        def load():
            while not stop.is_set():
                try:
                    with H.Client(p.port, timeout=H.T(10)) as c:
                        for _ in range(5):
                            r = c.request("GET", "/fixed?size=20000")
                            if r.status != 200 or not r.complete or r.body_len != 20000:
                                errors.append(r)
                            if c.eof:
                                break
                except (OSError, H.PeerClosed):
                    pass  # refused/closed during shutdown is expected

        ts = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        for t in ts:
            t.start()
        time.sleep(1)
        p.signal(signal.SIGTERM)
        rc = p.wait_exit(H.T(30))
        stop.set()
        for t in ts:
            t.join(H.T(15))
        self.assertEqual(rc, 0)
        self.assertEqual(errors, [])
        p.check_sanitizers()


if __name__ == "__main__":
    H.main()
