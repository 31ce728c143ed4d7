#!/usr/bin/env python3
"""Backpressure: a client that reads a large response slowly, or an origin that reads an
upload slowly, must not make the proxy hold the body.  Measured as the growth of the
proxy's VmRSS while hundreds of MiB are pending, not as speed."""

import os
import select
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

MiB = 1 << 20
# Allowed RSS growth while the pending body is 256 MiB.
LIMIT_KIB = (32 if H.SANITIZED else 16) * 1024


class BackpressureTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        env = None
        if H.SANITIZED:
            # ASan's quarantine keeps freed blocks resident; it would measure the allocator,
            # not the proxy's buffering.
            env = {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") +
                   ":quarantine_size_mb=1:abort_on_error=0"}
        cls.proxy = cls.start_proxy({"a": H.upstream(cls.a.address())},
                                    [{"match": {"prefix": "/"}, "upstream": "a"}],
                                    workers=1, limits={"max_body_size": 0},
                                    timeouts={"read": 120, "send": 120, "client_body": 120},
                                    env=env)
        # Warm up buffer pools so the baseline includes them.
        for _ in range(2):
            r = H.get(cls.proxy.port, "/large?bytes=%d" % (16 * MiB), sink=lambda p: None,
                      timeout=H.T(30))
            assert r.status == 200 and r.body_len == 16 * MiB, r
            body = os.urandom(4 * MiB)
            with H.Client(cls.proxy.port, timeout=H.T(30)) as c:
                t = threading.Thread(target=c.send,
                                     args=(H.build_request("POST", "/echo", body=body),),
                                     daemon=True)
                t.start()
                r = c.read_response("POST", sink=lambda p: None)
                t.join(H.T(30))
                assert r.status == 200 and r.body_len == len(body), r

    def sample_rss(self, seconds):
        peak = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            peak = max(peak, H.rss_kib(self.proxy.pid))
            time.sleep(0.1)
        return peak

    def test_slow_reader_download_is_not_buffered(self):
        n = 256 * MiB
        base = H.rss_kib(self.proxy.pid)
        check = H.PatternChecker()
        with H.Client(self.proxy.port, timeout=H.T(60), rcvbuf=65536) as c:
            c.send(H.build_request("GET", "/large?bytes=%d" % n))
            ver, status, reason, headers, raw = c.read_head()
            self.assertEqual(status, 200)
            # Read a little, then stop reading while the origin keeps pushing.
            first = c.read_exact(MiB)
            check(first)
            peak = self.sample_rss(H.T(3))
            growth = peak - base
            self.assertLess(growth, LIMIT_KIB,
                            "proxy RSS grew by %d KiB while the client was not reading "
                            "(base %d KiB)" % (growth, base))
            # Read the rest in slow-ish pieces, sampling as we go.
            got = len(first)
            last_sample = time.monotonic()
            while got < n:
                piece = c.read_exact(min(4 * MiB, n - got))
                check(piece)
                got += len(piece)
                if time.monotonic() - last_sample > 0.5:
                    last_sample = time.monotonic()
                    growth = max(growth, H.rss_kib(self.proxy.pid) - base)
            self.assertLess(growth, LIMIT_KIB, "RSS growth %d KiB during slow read" % growth)
            self.assertIsNone(check.bad_at)
            self.assertEqual(got, n)

    def test_slow_origin_upload_is_not_buffered(self):
        declared = 256 * MiB
        base = H.rss_kib(self.proxy.pid)
        c = H.Client(self.proxy.port, timeout=H.T(30))
        try:
            c.send(H.build_request("POST", "/echo?read_delay_ms=200",
                                   [("Content-Length", str(declared))]))
            sock = c.sock
            sock.setblocking(False)
            block = b"u" * (256 * 1024)
            sent = 0
            stalled_since = None
            deadline = time.monotonic() + H.T(20)
            # Push as fast as the proxy accepts; a buffering proxy takes it all at once.
            while sent < declared and time.monotonic() < deadline:
                _, w, _ = select.select([], [sock], [], 0.2)
                if not w:
                    if stalled_since is None:
                        stalled_since = time.monotonic()
                    elif time.monotonic() - stalled_since > 2:
                        break
                    continue
                try:
                    k = sock.send(block[:min(len(block), declared - sent)])
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    break
                sent += k
                stalled_since = None
            peak = self.sample_rss(H.T(2))
            growth = peak - base
            self.assertLess(sent, declared, "the whole upload was accepted at once")
            self.assertLess(growth, LIMIT_KIB,
                            "proxy RSS grew by %d KiB while the origin read slowly "
                            "(%d MiB accepted)" % (growth, sent // MiB))
        finally:
            c.abort()
        # The proxy recovers and keeps serving.
        self.assertEqual(H.get(self.proxy.port, "/").body, b"hello")

    def test_abandoned_large_download_releases_memory(self):
        base = H.rss_kib(self.proxy.pid)
        for _ in range(5):
            c = H.Client(self.proxy.port)
            c.send(H.build_request("GET", "/large?bytes=%d" % (256 * MiB)))
            c.read_head()
            c.read_exact(MiB)
            c.abort()
        self.assertEqual(H.get(self.proxy.port, "/").body, b"hello")
        time.sleep(0.5)
        growth = H.rss_kib(self.proxy.pid) - base
        self.assertLess(growth, LIMIT_KIB, "RSS grew %d KiB after abandoned downloads" % growth)

    def test_zz_alive(self):
        self.assertAlive()


if __name__ == "__main__":
    H.main()
