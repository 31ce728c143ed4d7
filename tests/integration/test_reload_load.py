#!/usr/bin/env python3
"""Hot reload under load and over many generations (docs/reload.md):

- 100 reloads while keep-alive clients send a mix of handler GETs, proxied GETs and POSTs
  with bodies: not one request may fail or come back truncated, and no keep-alive
  connection may be closed by the proxy;
- 1,000 reloads leave RSS within a few MiB and the descriptor count unchanged (skipped
  under sanitizers, whose allocators keep freed memory in quarantine)."""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reload"))
import reloadtest as RT  # noqa: E402
from reloadtest import H  # noqa: E402


def routes_v(version):
    return [RT.route("/h", handler=RT.respond_handler(version)),
            RT.route("/", upstream="a", plugins=[{"name": "reloadfix", "label": version}])]


class ReloadUnderLoadTest(RT.ReloadTestCase):
    RELOADS = 100

    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.proxy = cls.start_reload_proxy({"a": H.upstream(cls.a.address())},
                                           routes_v("v0"), workers=2, access_log=False)

    def test_100_reloads_no_failed_request(self):
        versions = ["v%d" % i for i in range(self.RELOADS + 1)]
        load = RT.Load(self.proxy.port, connections=6, versions=versions).start()
        try:
            H.wait_for(lambda: load.total >= 20, H.T(10), what="the load running")
            gen0 = self.status()["generation"]
            for i in range(1, self.RELOADS + 1):
                self.rewrite(routes=routes_v("v%d" % i))
                j = self.reload()
                self.assertEqual(j["generation"], gen0 + i)
                # Requests between every two reloads, however slow the machine: six more
                # begin before the next reload (600 or more in all, over every generation).
                n = load.total
                H.wait_for(lambda: load.total >= n + 6, H.T(30),
                           what="requests after reload %d: %s" % (i, load.summary()))
            last = "v%d" % self.RELOADS
            H.wait_for(lambda: load.seen_versions.get(last, 0) >= 20, H.T(10),
                       what="the load on the last generation")
        finally:
            load.stop()
        self.assertAlive()
        summary = load.summary()
        print("\n  under load: " + summary, file=sys.stderr)
        self.assertGreater(load.total, 500, summary)
        self.assertEqual(load.failed, 0, summary)
        self.assertEqual(load.closes, 0, summary)
        # the clients saw many generations, and the last one at the end
        self.assertGreater(len(load.seen_versions), 10, summary)
        self.assertEqual(self.version(), "v%d" % self.RELOADS)
        st = self.status()
        self.assertEqual(st["reloads_failed"], 0)
        self.assertGreaterEqual(st["reloads"], self.RELOADS)


class ReloadMemoryTest(RT.ReloadTestCase):
    RELOADS = 1000

    @classmethod
    def setUpClass(cls):
        if H.SANITIZED:
            raise H.unittest.SkipTest("RSS is meaningless under ASan (quarantine, shadow)")
        cls.a = cls.start_origin("a")
        cls.proxy = cls.start_reload_proxy({"a": H.upstream(cls.a.address())},
                                           routes_v("v0"), workers=2, access_log=False)

    def traffic(self, n=20):
        c = H.Client(self.proxy.port)
        try:
            for _ in range(n):
                self.assertEqual(c.request("GET", "/h").status, 200)
                self.assertEqual(c.request("GET", "/").status, 200)
                self.assertEqual(c.request("POST", "/echo", body=b"y" * 3000).status, 200)
        finally:
            c.close()

    def test_rss_after_1000_reloads(self):
        pid = self.proxy.pid
        # Warm-up: a few generations and some traffic, so one-time allocations are made.
        for i in range(10):
            self.rewrite(routes=routes_v("w%d" % i))
            self.reload()
            self.traffic(5)
        time.sleep(0.2)
        rss0, fds0 = H.rss_kib(pid), H.fd_count(pid)
        t0 = time.monotonic()
        for i in range(1, self.RELOADS + 1):
            if i % 100 == 0:
                self.rewrite(routes=routes_v("v%d" % i))
                self.traffic(2)
            self.reload()
        took = time.monotonic() - t0
        self.traffic(5)
        self.assertEqual(self.version(), "v%d" % self.RELOADS)
        time.sleep(0.5)
        rss1, fds1 = H.rss_kib(pid), H.fd_count(pid)
        print("\n  %d reloads in %.1f s: RSS %d -> %d KiB (%+d KiB), fds %d -> %d" %
              (self.RELOADS, took, rss0, rss1, rss1 - rss0, fds0, fds1), file=sys.stderr)
        self.assertLess(rss1 - rss0, 8 * 1024, "RSS grew from %d to %d KiB" % (rss0, rss1))
        self.assertLessEqual(fds1, fds0 + 2, "descriptors: %d -> %d" % (fds0, fds1))
        self.assertEqual(self.status()["reloads_failed"], 0)


if __name__ == "__main__":
    H.main()
