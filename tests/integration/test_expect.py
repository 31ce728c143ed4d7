#!/usr/bin/env python3
"""Expect: 100-continue (RFC 9110 10.1.1)."""

import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402


class ExpectTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.proxy = cls.start_proxy({"a": H.upstream(cls.a.address())},
                                    [{"match": {"prefix": "/"}, "upstream": "a"}],
                                    workers=1, limits={"max_body_size": 100000})

    def client(self):
        return H.Client(self.proxy.port, timeout=H.T(10))

    def expect_continue(self, expect_value, headers, body):
        with self.client() as c:
            c.send(H.build_request("POST", "/echo", [("Expect", expect_value)] + headers))
            try:
                r = c.read_response("POST", stop_at_interim=True)
            except socket.timeout:
                self.fail("no 100 Continue (or final response) after headers with Expect")
            self.assertEqual(r.status, 100, "expected 100 Continue, got %r" % r)
            self.assertEqual(r.version, "HTTP/1.1")
            c.send(body)
            r = c.read_response("POST")
            self.assertEqual(r.status, 200)
            return r

    def test_100_continue_content_length(self):
        body = os.urandom(50000)
        r = self.expect_continue("100-continue", [("Content-Length", str(len(body)))], body)
        self.assertEqual(r.body, body)

    def test_100_continue_is_case_insensitive(self):
        r = self.expect_continue("100-Continue", [("Content-Length", "5")], b"hello")
        self.assertEqual(r.body, b"hello")

    def test_100_continue_chunked(self):
        body = b"chunky" * 1000
        r = self.expect_continue("100-continue", [("Transfer-Encoding", "chunked")],
                                 H.chunked(body, [1000]))
        self.assertEqual(r.body, body)

    def test_client_not_waiting_for_100(self):
        # Clients may send the body without waiting; an interim 100 may or may not come.
        with self.client() as c:
            r = c.request("POST", "/echo", [("Expect", "100-continue")], b"no wait")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"no wait")
            for status, _ in r.interim:
                self.assertEqual(status, 100)
            self.assertEqual(c.request("GET", "/").body, b"hello")

    def test_unknown_expectation_is_417(self):
        with self.client() as c:
            c.send(H.build_request("POST", "/echo", [("Expect", "something-else"),
                                                      ("Content-Length", "5")], None))
            r = c.read_response("POST")
            self.assertEqual(r.status, 417)
            self.assertEqual(r.interim, [])

    def test_expect_with_too_large_body_gets_413_not_100(self):
        with self.client() as c:
            c.send(H.build_request("POST", "/echo", [("Expect", "100-continue"),
                                                      ("Content-Length", "5000000")]))
            r = c.read_response("POST")
            self.assertEqual(r.status, 413)
            self.assertEqual(r.interim, [], "sent 100 Continue for a body it will refuse")

    def test_http10_expect_ignored(self):
        # RFC 9110 10.1.1: a server MUST ignore 100-continue in an HTTP/1.0 request.
        with self.client() as c:
            r = c.request("POST", "/echo", [("Expect", "100-continue")], b"ten",
                          version="HTTP/1.0")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"ten")
            self.assertEqual(r.interim, [], "sent 1xx to an HTTP/1.0 client")

    def test_zz_alive(self):
        self.assertAlive()


if __name__ == "__main__":
    H.main()
