#!/usr/bin/env python3
"""Persistent connections: several requests per client connection, upstream reuse,
pipelining (answered in order, with bodies, HEAD, unknown-length responses), HTTP/1.0
clients, Connection: close both ways, idle keep-alive timeout."""

import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402


def closing_origin(req):
    return (H.simple_response(200, b"closing", [("Connection", "close"),
                                                ("X-Conn-No", str(req.conn_no))]), "close")


class KeepAliveTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.closer = cls.start_raw_origin(closing_origin)
        ups = {"a": H.upstream(cls.a.address(), keepalive=32),
               "closer": H.upstream(cls.closer.address())}
        routes = [{"match": {"host": "closer.test", "prefix": "/"}, "upstream": "closer"},
                  {"match": {"prefix": "/"}, "upstream": "a"}]
        cls.proxy = cls.start_proxy(ups, routes, workers=1)

    def client(self):
        return H.Client(self.proxy.port)

    def test_sequential_requests_on_one_connection(self):
        with self.client() as c:
            for i in range(10):
                r = c.request("GET", "/headers?i=%d" % i)
                self.assertEqual(r.status, 200)
                self.assertEqual(r.json()["url"], "/headers?i=%d" % i)
                r = c.request("POST", "/echo", body=b"x" * i)
                self.assertEqual(r.body, b"x" * i)
            self.assertTrue(c.is_open())

    def test_upstream_connection_reused_across_client_connections(self):
        seen = []
        for i in range(6):
            r = H.get(self.proxy.port, "/")
            self.assertEqual(r.status, 200)
            seen.append((r.header("X-Conn-Id"), int(r.header("X-Conn-Requests"))))
        # After the first request an idle pooled connection exists: every later request
        # must have been served on a connection that had served requests before.
        for cid, n in seen[1:]:
            self.assertGreater(n, 1, "upstream connection not reused: %r" % seen)
        self.assertLessEqual(len({cid for cid, _ in seen}), 2, seen)

    def _pipeline(self, specs, split=False):
        """specs: list of (method, path, headers, body, check(resp))."""
        data = b"".join(H.build_request(m, p, h, b) for m, p, h, b, _ in specs)
        with self.client() as c:
            if split:
                c.send_split(data, pieces=max(2, len(data) // 50), pause=0.001)
            else:
                c.send(data)
            for i, (m, p, h, b, check) in enumerate(specs):
                r = c.read_response(m)
                self.assertTrue(r.complete, "response %d incomplete: %r" % (i, r))
                check(r)
            self.assertTrue(c.is_open(), "connection closed after pipelined requests")
            # Nothing extra arrived.
            self.assertEqual(bytes(c.buf), b"")

    def _url_is(self, url):
        def check(r):
            self.assertEqual(r.status, 200)
            self.assertEqual(r.json()["url"], url)
        return check

    def _body_is(self, body):
        def check(r):
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, body)
        return check

    def test_pipelined_gets_answered_in_order(self):
        specs = [("GET", "/headers?n=%d" % i, None, None, self._url_is("/headers?n=%d" % i))
                 for i in range(8)]
        self._pipeline(specs)

    def _mixed_specs(self):
        big = os.urandom(100000)
        return [
            ("GET", "/headers?n=0", None, None, self._url_is("/headers?n=0")),
            ("POST", "/echo", None, b"first body", self._body_is(b"first body")),
            ("HEAD", "/fixed?size=50", None, None,
             lambda r: (self.assertEqual(r.status, 200), self.assertEqual(r.body, b""))),
            ("POST", "/echo", [("Transfer-Encoding", "chunked")],
             H.chunked(b"chunked body here", [5]), self._body_is(b"chunked body here")),
            ("GET", "/status?code=204", None, None,
             lambda r: (self.assertEqual(r.status, 204), self.assertEqual(r.body, b""))),
            ("GET", "/nolength?bytes=300", None, None, self._body_len_is(300)),
            ("GET", "/chunked?chunks=3&size=10", None, None, self._body_len_is(30)),
            ("PUT", "/echo", None, big, self._body_is(big)),
            ("GET", "/headers?n=last", None, None, self._url_is("/headers?n=last")),
        ]

    def _body_len_is(self, n):
        def check(r):
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body_len, n)
        return check

    def test_pipelined_mixed_requests_with_bodies(self):
        self._pipeline(self._mixed_specs())

    def test_pipelined_mixed_requests_split_randomly(self):
        random.seed(7)
        self._pipeline(self._mixed_specs(), split=True)

    def test_http10_closed_by_default(self):
        with self.client() as c:
            r = c.request("GET", "/", version="HTTP/1.0")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"hello")
            self.assertNotEqual(r.framing, "chunked")
            self.assertClosed(c)

    def test_http10_unknown_length_not_chunked(self):
        for path, n in (("/chunked?chunks=4&size=100", 400), ("/nolength?bytes=5000", 5000)):
            with self.subTest(path=path), self.client() as c:
                r = c.request("GET", path, version="HTTP/1.0")
                self.assertEqual(r.status, 200)
                self.assertNotIn("chunked", r.tokens("transfer-encoding"))
                self.assertEqual(r.body_len, n)
                self.assertTrue(r.complete)
                self.assertClosed(c)

    def test_http10_keepalive_requested(self):
        with self.client() as c:
            r = c.request("GET", "/fixed?size=10", version="HTTP/1.0",
                          headers=[("Connection", "keep-alive")])
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body_len, 10)
            if "keep-alive" in r.tokens("connection"):
                self.assertEqual(r.framing, "length")
                r2 = c.request("GET", "/", version="HTTP/1.0",
                               headers=[("Connection", "keep-alive")])
                self.assertEqual(r2.body, b"hello")
            else:
                self.assertClosed(c)

    def test_http10_keepalive_unknown_length_closes(self):
        with self.client() as c:
            r = c.request("GET", "/nolength?bytes=1000", version="HTTP/1.0",
                          headers=[("Connection", "keep-alive")])
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body_len, 1000)
            self.assertNotIn("chunked", r.tokens("transfer-encoding"))
            if r.framing != "length":
                self.assertTrue(c.eof, "close-delimited response but connection not closed")

    def test_connection_close_request(self):
        with self.client() as c:
            r = c.request("GET", "/", headers=[("Connection", "close")])
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"hello")
            self.assertClosed(c)

    def test_connection_close_in_pipeline_stops_there(self):
        data = (H.build_request("GET", "/headers?n=1") +
                H.build_request("GET", "/headers?n=2", [("Connection", "close")]) +
                H.build_request("GET", "/headers?n=3"))
        with self.client() as c:
            c.send(data)
            self.assertEqual(c.read_response().json()["url"], "/headers?n=1")
            self.assertEqual(c.read_response().json()["url"], "/headers?n=2")
            closed, extra = c.wait_closed(H.T(5))
            self.assertTrue(closed)
            self.assertEqual(extra, b"", "request after Connection: close was answered")

    def test_origin_connection_close_not_propagated_and_not_reused(self):
        before = self.closer.connections
        with self.client() as c:
            for i in range(3):
                r = c.request("GET", "/", host="closer.test")
                self.assertEqual(r.status, 200)
                self.assertEqual(r.body, b"closing")
            self.assertTrue(c.is_open(), "client connection closed because the origin closed")
        self.assertEqual(self.closer.connections - before, 3)

    def test_request_then_half_close_is_answered(self):
        # The request and the client's FIN arrive together, while the proxy is still
        # connecting to the origin (closer.test: never a pooled connection): the answer
        # still goes out, then the proxy closes. Found by tests/fuzz/fuzz_conn.c: the FIN
        # used to end a request whose head was parsed but whose end was not, yet.
        cases = [
            H.build_request("GET", "/", host="closer.test"),
            H.build_request("POST", "/", host="closer.test", body=b"x" * 10),
            H.build_request("POST", "/", host="closer.test",
                            headers=[("Transfer-Encoding", "chunked")],
                            body=H.chunked(b"chunked body", [4])),
            H.build_request("GET", "/a", host="closer.test") +
            H.build_request("GET", "/b", host="closer.test"),
        ]
        for i, data in enumerate(cases):
            for _ in range(5):
                with self.subTest(case=i), self.client() as c:
                    c.send(data)
                    c.shutdown_write()
                    r = c.read_response("POST" if i in (1, 2) else "GET")
                    self.assertEqual(r.status, 200)
                    self.assertEqual(r.body, b"closing")
                    if i == 3:
                        self.assertEqual(c.read_response().body, b"closing")
                    closed, extra = c.wait_closed(H.T(5))
                    self.assertTrue(closed)
                    self.assertEqual(extra, b"")

    def test_zz_alive(self):
        self.assertAlive()


class IdleTimeoutTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.proxy = cls.start_proxy({"a": H.upstream(cls.a.address())},
                                    [{"match": {"prefix": "/"}, "upstream": "a"}],
                                    workers=1, timeouts={"keepalive": 1, "client_header": 2})

    def test_idle_keepalive_connection_closed(self):
        with H.Client(self.proxy.port) as c:
            r = c.request("GET", "/")
            self.assertEqual(r.status, 200)
            closed, extra = c.wait_closed(H.T(15))
            self.assertTrue(closed, "idle keep-alive connection never closed")
            self.assertEqual(extra, b"")

    def test_idle_connection_before_first_request_closed(self):
        # Closed by timeouts.client_header (2 s here, 10 by default).
        with H.Client(self.proxy.port) as c:
            closed, extra = c.wait_closed(H.T(30))
            self.assertTrue(closed, "connection that never sent a byte was never closed")


if __name__ == "__main__":
    H.main()
