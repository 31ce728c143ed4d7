#!/usr/bin/env python3
"""Access log: one line per request with method, path, status, bytes and upstream;
`access = "-"` writes to stdout, `access = false` disables it; SIGUSR1 and every reload
reopen the file (logrotate renames it, then signals)."""

import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402


class AccessLogTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.dead = "127.0.0.1:%d" % H.dead_port()
        cls.proxy = cls.start_proxy(
            {"app": H.upstream(cls.a.address()), "gone": H.upstream(cls.dead)},
            [{"match": {"host": "gone.test", "prefix": "/"}, "upstream": "gone"},
             {"match": {"host": "a.test", "prefix": "/"}, "upstream": "app"}],
            workers=1)

    def wait_line(self, needle, timeout=None):
        """The access-log line containing needle (polls: the log may be buffered)."""
        def find():
            hits = [l for l in self.proxy.access_lines() if needle in l]
            return hits
        hits = H.wait_for(find, timeout or H.T(10), what="access log line with %r" % needle)
        self.assertEqual(len(hits), 1, "more than one line for one request: %r" % hits)
        return hits[0]

    def assertBytes(self, line, n, slack=4096):
        nums = [int(x) for x in re.findall(r"(?<![\w.:])\d+(?![\w.:])", line)]
        self.assertTrue(any(n <= x <= n + slack for x in nums),
                        "no byte count ~%d in %r" % (n, line))

    def test_get_line(self):
        tag = "get%d" % time.monotonic_ns()
        r = H.get(self.proxy.port, "/fixed?size=12345&tag=" + tag)
        self.assertEqual(r.status, 200)
        line = self.wait_line(tag)
        self.assertIn("GET", line)
        self.assertIn("/fixed", line)
        self.assertRegex(line, r"(?<!\d)200(?!\d)")
        self.assertBytes(line, 12345)
        self.assertTrue("app" in line or self.a.address() in line,
                        "upstream missing from %r" % line)

    def test_post_line(self):
        tag = "post%d" % time.monotonic_ns()
        r = H.get(self.proxy.port, "/echo?tag=" + tag, method="POST", body=b"z" * 7777)
        self.assertEqual(r.status, 200)
        line = self.wait_line(tag)
        self.assertIn("POST", line)
        self.assertIn("/echo", line)
        self.assertRegex(line, r"(?<!\d)200(?!\d)")
        self.assertBytes(line, 7777)

    def test_no_route_line(self):
        tag = "nr%d" % time.monotonic_ns()
        r = H.get(self.proxy.port, "/missing/" + tag, host="nomatch.test")
        self.assertEqual(r.status, 404)
        line = self.wait_line(tag)
        self.assertRegex(line, r"(?<!\d)404(?!\d)")

    def test_upstream_error_line(self):
        tag = "dead%d" % time.monotonic_ns()
        r = H.get(self.proxy.port, "/x/" + tag, host="gone.test")
        self.assertEqual(r.status, 502)
        line = self.wait_line(tag)
        self.assertRegex(line, r"(?<!\d)502(?!\d)")
        self.assertTrue("gone" in line or self.dead in line, "upstream missing from %r" % line)

    def test_one_line_per_request(self):
        tag = "many%d" % time.monotonic_ns()
        with H.Client(self.proxy.port) as c:
            for i in range(10):
                self.assertEqual(c.request("GET", "/headers?%s=%d" % (tag, i)).status, 200)
        pipelined = b"".join(H.build_request("GET", "/headers?%s=p%d" % (tag, i))
                             for i in range(5))
        with H.Client(self.proxy.port) as c:
            c.send(pipelined)
            for i in range(5):
                self.assertEqual(c.read_response().status, 200)
        H.wait_for(lambda: len([l for l in self.proxy.access_lines() if tag in l]) >= 15,
                   H.T(10), what="15 access log lines")
        time.sleep(0.3)
        lines = [l for l in self.proxy.access_lines() if tag in l]
        self.assertEqual(len(lines), 15, lines)

    def test_text_escaping(self):
        """Text lines escape what could forge or garble a line (control bytes, quotes,
        backslashes, bytes 0x7f and above) as \\xXX, as nginx does. (Bytes over 0x7f reach
        the log in header values: the parser refuses them in the target.)"""
        tag = "esc%d" % time.monotonic_ns()
        r, _, _ = H.raw_exchange(self.proxy.port, (
            b"GET /" + tag.encode() + b"/q\"u\\o HTTP/1.1\r\nHost: a.test\r\n"
            b"User-Agent: ua \"x\" \t\\ \xc3\xa9\xff\xfe\r\nConnection: close\r\n\r\n"))
        self.assertIsNotNone(r)
        line = self.wait_line(tag)
        self.assertIn('"GET /%s/q\\x22u\\x5Co HTTP/1.1"' % tag, line)
        self.assertIn('"ua \\x22x\\x22 \\x09\\x5C \\xC3\\xA9\\xFF\\xFE"', line)

    def test_refused_head_has_no_request_line(self):
        tag = "refused%d" % time.monotonic_ns()
        r, _, _ = H.raw_exchange(self.proxy.port, (
            b"GET /" + tag.encode() + b"\x01 HTTP/1.1\r\nHost: a.test\r\n\r\n"))
        self.assertEqual(r.status, 400)
        H.wait_for(lambda: [l for l in self.proxy.access_lines() if '"-" 400 ' in l],
                   H.T(10), what="a 400 line without a request line")
        self.assertFalse([l for l in self.proxy.access_lines() if "DELETE" in l])

    def test_zz_alive(self):
        self.assertAlive()


class AccessLogReopenTest(H.ProxyTestCase):
    """As logrotate does: rename the file, then SIGUSR1 (nginx's convention) or a reload;
    every worker's next lines go to a new file at the configured path."""

    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.proxy = cls.start_proxy({"app": H.upstream(cls.a.address())},
                                    [{"match": {"prefix": "/"}, "upstream": "app"}], workers=2)

    def requests(self, tag, n=16):
        """n requests on fresh connections (the kernel spreads them over both workers)."""
        for i in range(n):
            self.assertEqual(H.get(self.proxy.port, "/headers?%s=%d" % (tag, i)).status, 200)

    def lines(self, path, tag):
        try:
            with open(path, errors="replace") as f:
                return [l for l in f if tag in l]
        except FileNotFoundError:
            return []

    def rotate(self, reopen, done):
        path = self.proxy.access_log_path
        rotated = "%s.%d" % (path, time.monotonic_ns())
        tag = "r%d" % time.monotonic_ns()
        self.requests(tag + "a")
        H.wait_for(lambda: len(self.lines(path, tag + "a")) == 16, H.T(10),
                   what="16 lines before the rotation")
        os.rename(path, rotated)
        n = self.proxy.log_count(done)
        reopen()
        self.proxy.wait_log(done, count=n + 1)
        self.requests(tag + "b")
        H.wait_for(lambda: len(self.lines(path, tag + "b")) == 16, H.T(10),
                   what="16 lines in the new file (every worker reopened it)")
        self.assertEqual(self.lines(rotated, tag + "b"), [])
        self.assertEqual(len(self.lines(rotated, tag + "a")), 16)
        self.assertEqual(self.lines(path, tag + "a"), [])

    def test_sigusr1(self):
        self.rotate(lambda: self.proxy.signal(signal.SIGUSR1), "logs reopened")
        self.assertAlive()

    def test_reload(self):
        self.rotate(lambda: self.proxy.signal(signal.SIGHUP), "live in")
        self.assertAlive()


class AccessLogDestinationsTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")

    def proxy_with(self, access):
        p = H.Proxy.build({"app": H.upstream(self.a.address())},
                          [{"match": {"prefix": "/"}, "upstream": "app"}],
                          name="alog", workers=1, access_log=access)
        self.addCleanup(p.stop)
        return p.start()

    def test_stdout(self):
        p = self.proxy_with("-")
        tag = "stdout%d" % time.monotonic_ns()
        self.assertEqual(H.get(p.port, "/headers?" + tag).status, 200)
        H.wait_for(lambda: tag in p.stdout(), H.T(10), what="access line on stdout")

    def test_disabled(self):
        p = self.proxy_with(False)
        tag = "off%d" % time.monotonic_ns()
        self.assertEqual(H.get(p.port, "/headers?" + tag).status, 200)
        p.stop()  # a graceful stop writes whatever the proxy would have logged
        self.assertNotIn(tag, p.stdout())


if __name__ == "__main__":
    H.main()
