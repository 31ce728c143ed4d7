#!/usr/bin/env python3
"""Malformed or ambiguous requests are refused with the right status, the connection is
closed, and nothing of the request reaches the origin (RFC 9112 sections 2-7, RFC 9110
7.2; request smuggling defences).  The origin here is a Python RawOrigin that records
every byte it receives."""

import os
import select
import socket
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

LIMITS = {"max_header_size": 4096, "max_uri_size": 1024, "max_body_size": 65536,
          "max_headers": 20}

HOST = "Host: a.test\r\n"

# (name, request template, allowed statuses).  {M} is replaced by a unique marker; none
# of the request's bytes may reach the origin.
HEAD_CASES = [
    # request line
    ("extra token in request line", "GET /{M} HTTP/1.1 extra\r\n" + HOST + "\r\n", {400}),
    ("double space in request line", "GET  /{M} HTTP/1.1\r\n" + HOST + "\r\n", {400}),
    ("leading space in request line", " GET /{M} HTTP/1.1\r\n" + HOST + "\r\n", {400}),
    ("space in target", "GET /a b{M} HTTP/1.1\r\n" + HOST + "\r\n", {400}),
    ("raw non-ASCII byte in target", "GET /{M}\xe9 HTTP/1.1\r\n" + HOST + "\r\n", {400}),
    ("control char in target", "GET /{M}\x01 HTTP/1.1\r\n" + HOST + "\r\n", {400}),
    ("NUL in target", "GET /{M}\x00 HTTP/1.1\r\n" + HOST + "\r\n", {400}),
    ("bad protocol name", "GET /{M} HTTX/1.1\r\n" + HOST + "\r\n", {400}),
    ("lowercase protocol", "GET /{M} http/1.1\r\n" + HOST + "\r\n", {400}),
    ("no version", "GET /{M}\r\n" + HOST + "\r\n", {400, 505}),
    ("bad method chars", "G{}T /{M} HTTP/1.1\r\n" + HOST + "\r\n", {400, 501}),
    # versions
    ("HTTP/2.0", "GET /{M} HTTP/2.0\r\n" + HOST + "\r\n", {505, 400}),
    ("HTTP/3.0", "GET /{M} HTTP/3.0\r\n" + HOST + "\r\n", {505, 400}),
    ("HTTP/0.9", "GET /{M} HTTP/0.9\r\n" + HOST + "\r\n", {505, 400}),
    ("HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n{M}", {505, 400}),
    # header field syntax
    ("NUL in header value", "GET /{M} HTTP/1.1\r\n" + HOST + "X-A: a\x00b\r\n\r\n", {400}),
    ("control char in header value", "GET /{M} HTTP/1.1\r\n" + HOST + "X-A: a\x01b\r\n\r\n",
     {400}),
    ("DEL in header value", "GET /{M} HTTP/1.1\r\n" + HOST + "X-A: a\x7fb\r\n\r\n", {400}),
    ("NUL in header name", "GET /{M} HTTP/1.1\r\n" + HOST + "X-\x00A: b\r\n\r\n", {400}),
    ("space inside header name", "GET /{M} HTTP/1.1\r\n" + HOST + "X Bad: 1\r\n\r\n", {400}),
    ("space before colon", "GET /{M} HTTP/1.1\r\n" + HOST + "X-Bad : 1\r\n\r\n", {400}),
    ("tab before colon", "GET /{M} HTTP/1.1\r\n" + HOST + "X-Bad\t: 1\r\n\r\n", {400}),
    ("space before colon on Host", "GET /{M} HTTP/1.1\r\nHost : a.test\r\n\r\n", {400}),
    ("empty header name", "GET /{M} HTTP/1.1\r\n" + HOST + ": value\r\n\r\n", {400}),
    ("non-token header name", "GET /{M} HTTP/1.1\r\n" + HOST + "X(A): 1\r\n\r\n", {400}),
    ("header line without colon", "GET /{M} HTTP/1.1\r\n" + HOST + "X-NoColon\r\n\r\n", {400}),
    ("leading whitespace first header", "GET /{M} HTTP/1.1\r\n " + HOST + "\r\n", {400}),
    ("obs-fold", "GET /{M} HTTP/1.1\r\n" + HOST + "X-A: a\r\n  folded\r\n\r\n", {400}),
    ("obs-fold with tab", "GET /{M} HTTP/1.1\r\n" + HOST + "X-A: a\r\n\tfolded\r\n\r\n", {400}),
    # line endings
    ("bare LF everywhere", "GET /{M} HTTP/1.1\nHost: a.test\n\n", {400}),
    ("bare LF in header section", "GET /{M} HTTP/1.1\r\nHost: a.test\nX-A: b\r\n\r\n", {400}),
    ("bare CR in header value", "GET /{M} HTTP/1.1\r\n" + HOST + "X-A: b\rc\r\n\r\n", {400}),
    # a CR with no LF after it must not end a line (llhttp's loose mode took any byte after
    # it as the LF, so "Host: \rb" was an empty Host and "X: \rb\r\n" let the next CRLF
    # end the head early)
    ("bare CR after OWS in header value", "GET /{M} HTTP/1.1\r\n" + HOST + "X-A: \rb\r\n\r\n",
     {400}),
    ("bare CR as empty Host", "GET /{M} HTTP/1.1\r\nHost: \ra.test\r\n\r\n", {400}),
    ("bare CR ending the request line", "GET /{M} HTTP/1.1\rX" + HOST + "\r\n", {400}),
    ("bare CR ending the head", "GET /{M} HTTP/1.1\r\n" + HOST + "\rX", {400}),
    ("bare CR ending request line", "GET /{M} HTTP/1.1\rHost: a.test\r\n\r\n", {400}),
    # message framing
    ("CL and TE", "POST /{M} HTTP/1.1\r\n" + HOST + "Content-Length: 4\r\n"
     "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled{M} HTTP/1.1\r\n" + HOST + "\r\n",
     {400}),
    ("TE and CL", "POST /{M} HTTP/1.1\r\n" + HOST + "Transfer-Encoding: chunked\r\n"
     "Content-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled{M} HTTP/1.1\r\n" + HOST + "\r\n", {400}),
    ("differing Content-Length", "POST /{M} HTTP/1.1\r\n" + HOST + "Content-Length: 5\r\n"
     "Content-Length: 6\r\n\r\nhello!", {400}),
    ("duplicate Content-Length", "POST /{M} HTTP/1.1\r\n" + HOST + "Content-Length: 5\r\n"
     "Content-Length: 5\r\n\r\nhello", {400}),
    ("Content-Length list", "POST /{M} HTTP/1.1\r\n" + HOST + "Content-Length: 5, 5\r\n\r\n"
     "hello", {400}),
    ("Content-Length list differing", "POST /{M} HTTP/1.1\r\n" + HOST +
     "Content-Length: 5, 6\r\n\r\nhello!", {400}),
    ("non-numeric Content-Length", "POST /{M} HTTP/1.1\r\n" + HOST +
     "Content-Length: abc\r\n\r\n", {400}),
    ("negative Content-Length", "POST /{M} HTTP/1.1\r\n" + HOST +
     "Content-Length: -1\r\n\r\n", {400}),
    ("signed Content-Length", "POST /{M} HTTP/1.1\r\n" + HOST +
     "Content-Length: +5\r\n\r\nhello", {400}),
    ("hex Content-Length", "POST /{M} HTTP/1.1\r\n" + HOST +
     "Content-Length: 0x5\r\n\r\nhello", {400}),
    ("Content-Length with inner space", "POST /{M} HTTP/1.1\r\n" + HOST +
     "Content-Length: 1 2\r\n\r\nhello", {400}),
    ("empty Content-Length", "POST /{M} HTTP/1.1\r\n" + HOST + "Content-Length:\r\n\r\n",
     {400}),
    ("overflowing Content-Length", "POST /{M} HTTP/1.1\r\n" + HOST +
     "Content-Length: 99999999999999999999999999\r\n\r\n", {400, 413}),
    ("TE chunked not final", "POST /{M} HTTP/1.1\r\n" + HOST +
     "Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", {400}),
    ("TE gzip then chunked", "POST /{M} HTTP/1.1\r\n" + HOST +
     "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", {400, 501}),
    ("TE xchunked", "POST /{M} HTTP/1.1\r\n" + HOST +
     "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", {400, 501}),
    ("TE chunkedx", "POST /{M} HTTP/1.1\r\n" + HOST +
     "Transfer-Encoding: chunkedx\r\n\r\n0\r\n\r\n", {400, 501}),
    ("TE identity", "POST /{M} HTTP/1.1\r\n" + HOST +
     "Transfer-Encoding: identity\r\n\r\n", {400, 501}),
    ("TE chunked twice", "POST /{M} HTTP/1.1\r\n" + HOST +
     "Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", {400}),
    ("TE two lines", "POST /{M} HTTP/1.1\r\n" + HOST + "Transfer-Encoding: chunked\r\n"
     "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400}),
    ("TE with vertical tab", "POST /{M} HTTP/1.1\r\n" + HOST +
     "Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", {400, 501}),
    # Host
    ("HTTP/1.1 without Host", "GET /{M} HTTP/1.1\r\nX-A: 1\r\n\r\n", {400}),
    ("two Host headers", "GET /{M} HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", {400}),
    ("two identical Host headers", "GET /{M} HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n",
     {400}),
    ("Host with space", "GET /{M} HTTP/1.1\r\nHost: a test\r\n\r\n", {400}),
    ("Host with slash", "GET /{M} HTTP/1.1\r\nHost: a.test/x\r\n\r\n", {400}),
    ("Host with userinfo", "GET /{M} HTTP/1.1\r\nHost: user@a.test\r\n\r\n", {400}),
    ("Host with bad port", "GET /{M} HTTP/1.1\r\nHost: a.test:80x\r\n\r\n", {400}),
    ("Host with list", "GET /{M} HTTP/1.1\r\nHost: a.test, b.test\r\n\r\n", {400}),
    ("Host unterminated IPv6", "GET /{M} HTTP/1.1\r\nHost: [::1\r\n\r\n", {400}),
    # limits
    ("header section too large", "GET /{M} HTTP/1.1\r\n" + HOST + "X-Big: " + "b" * 8000 +
     "\r\n\r\n", {431}),
    ("too many header lines", "GET /{M} HTTP/1.1\r\n" + HOST +
     "".join("X-H%d: v\r\n" % i for i in range(40)) + "\r\n", {431}),
    ("URI too long", "GET /{M}" + "u" * 2000 + " HTTP/1.1\r\n" + HOST + "\r\n", {414}),
    ("declared body too large", "POST /{M} HTTP/1.1\r\n" + HOST +
     "Content-Length: 100000\r\n\r\n", {413}),
]

# Errors in the body: the head may legitimately have been forwarded before the body
# arrived, so only the bytes after the error (the smuggled request) must not reach the
# origin, and the origin must not have received a complete request.
BODY_CASES = [
    ("chunk size not hex", "zz\r\nhello\r\n0\r\n\r\n", {400}),
    ("negative chunk size", "-5\r\nhello\r\n0\r\n\r\n", {400}),
    ("chunk size with 0x", "0x5\r\nhello\r\n0\r\n\r\n", {400}),
    ("chunk size overflow", "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n", {400, 413}),
    ("chunk size with space inside", "5 5\r\nhello\r\n0\r\n\r\n", {400}),
    ("chunk data longer than size", "3\r\nhello\r\n0\r\n\r\n", {400}),
    ("chunk size bare LF", "5\nhello\r\n0\r\n\r\n", {400}),
    ("chunk size bare CR", "5\rXhello\r\n0\r\n\r\n", {400}),
    ("chunk data ended by bare CR", "5\r\nhello\rX0\r\n\r\n", {400}),
    ("last chunk ended by bare CR", "5\r\nhello\r\n0\r\n\rX", {400}),
    ("chunked body over limit", "".join("%x\r\n%s\r\n" % (8192, "c" * 8192)
                                        for _ in range(12)) + "0\r\n\r\n", {413}),
]


class BadInputTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.raw = cls.start_raw_origin()
        cls.proxy = cls.start_proxy({"raw": H.upstream(cls.raw.address())},
                                    [{"match": {"prefix": "/"}, "upstream": "raw"}],
                                    workers=1, limits=LIMITS)

    def exchange(self, data):
        c = H.Client(self.proxy.port, timeout=H.T(10))
        try:
            try:
                c.send(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the proxy may have answered and closed before reading it all
            try:
                r = c.read_response()
            except H.PeerClosed:
                r = None
            closed, _ = c.wait_closed(H.T(10))
            return r, closed
        finally:
            c.close()

    def origin_saw(self, marker):
        """Whether marker reached the origin. Instead of a sleep, a fence: a good request
        sent after the exchange ended, awaited at the origin (one worker, which handled
        the bad request first, so anything it forwarded was written before the fence)."""
        fence = "fence%d" % time.monotonic_ns()
        self.assertEqual(H.get(self.proxy.port, "/" + fence).status, 200)
        H.wait_for(lambda: fence.encode() in self.raw.received, H.T(5),
                   what="the fence request at the origin")
        return marker.encode() in self.raw.received

    def complete_request_with(self, marker):
        with self.raw.lock:
            return [r.target for r in self.raw.requests if marker in r.target]

    def test_head_errors(self):
        for name, tmpl, statuses in HEAD_CASES:
            with self.subTest(name):
                m = "m" + uuid.uuid4().hex
                r, closed = self.exchange(tmpl.replace("{M}", m).encode("latin-1"))
                self.assertIsNotNone(r, "connection closed without a response")
                self.assertIn(r.status, statuses, "got %d" % r.status)
                self.assertTrue(closed, "connection left open after %d" % r.status)
                self.assertFalse(self.origin_saw(m), "request bytes reached the origin")
        self.assertAlive()

    def test_body_errors(self):
        for name, body, statuses in BODY_CASES:
            with self.subTest(name):
                m = "m" + uuid.uuid4().hex
                data = ("POST /{M} HTTP/1.1\r\n" + HOST + "Transfer-Encoding: chunked\r\n\r\n" +
                        body + "GET /smuggled{M} HTTP/1.1\r\n" + HOST + "\r\n")
                r, closed = self.exchange(data.replace("{M}", m).encode("latin-1"))
                self.assertIsNotNone(r, "connection closed without a response")
                self.assertIn(r.status, statuses, "got %d" % r.status)
                self.assertTrue(closed, "connection left open after %d" % r.status)
                self.assertFalse(self.origin_saw("smuggled" + m), "smuggled request forwarded")
                self.assertEqual(self.complete_request_with(m), [],
                                 "the origin received a complete request")
        self.assertAlive()

    def test_content_length_body_over_limit_while_streaming(self):
        # Declared within the limit is fine; this checks the limit itself is exact.
        ok = H.get(self.proxy.port, "/ok", method="POST", body=b"x" * 65536)
        self.assertEqual(ok.status, 200)
        r, closed = self.exchange(H.build_request("POST", "/big", body=b"x" * 65537))
        self.assertIsNotNone(r)
        self.assertEqual(r.status, 413)
        self.assertTrue(closed)

    def test_uri_at_limit_accepted(self):
        path = "/" + "u" * 900
        r = H.get(self.proxy.port, path)
        self.assertEqual(r.status, 200)

    def test_valid_edge_cases_accepted(self):
        """Positive controls: unusual but valid requests must not be refused."""
        cases = [
            ("obs-text in value", [("X-Latin", "caf\xe9")]),
            ("tab in value", [("X-Tab", "a\tb")]),
            ("empty value", [("X-Empty", "")]),
            ("OWS around value", [("X-Ows", "  padded  ")]),
            ("token chars in name", [("X-!#$%&'*+-.^_`|~09az", "1")]),
            ("Content-Length zero", [("Content-Length", "0")]),
            ("Host with port", [("Host", "a.test:8080")]),
            ("Host IPv6 literal", [("Host", "[::1]:8080")]),
            ("Host IPv4", [("Host", "127.0.0.1")]),
            ("TE with OWS", [("Transfer-Encoding", " chunked")]),
        ]
        for name, headers in cases:
            with self.subTest(name):
                body = H.chunked(b"", [1]) if any(k == "Transfer-Encoding" for k, _ in headers) \
                    else None
                r = H.get(self.proxy.port, "/valid", headers=headers, body=body,
                          method="POST" if body else "GET")
                self.assertEqual(r.status, 200, r)
        r = H.get(self.proxy.port, "/valid10", host=None, version="HTTP/1.0")
        self.assertEqual(r.status, 200)

    def test_garbage_after_valid_request_is_refused(self):
        m = "m" + uuid.uuid4().hex
        with H.Client(self.proxy.port) as c:
            c.send(H.build_request("GET", "/first") + ("BAD LINE {M}\r\n\r\n".replace("{M}", m))
                   .encode())
            r = c.read_response()
            self.assertEqual(r.status, 200)
            r2 = c.read_response()
            self.assertEqual(r2.status, 400)
            self.assertClosed(c)
        self.assertFalse(self.origin_saw(m))

    def test_zz_alive(self):
        self.assertAlive()


class ClientTimeoutTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.raw = cls.start_raw_origin()
        cls.proxy = cls.start_proxy({"raw": H.upstream(cls.raw.address())},
                                    [{"match": {"prefix": "/"}, "upstream": "raw"}],
                                    workers=1,
                                    timeouts={"client_header": 1, "client_body": 1})

    def test_slow_header_gets_408(self):
        m = "m" + uuid.uuid4().hex
        with H.Client(self.proxy.port, timeout=H.T(15)) as c:
            c.send("GET /%s HTTP/1.1\r\nHost: a.test\r\n" % m)
            try:
                r = c.read_response()
            except socket.timeout:
                self.fail("no response to an incomplete header section")
            self.assertEqual(r.status, 408)
            self.assertClosed(c)
        self.assertNotIn(m.encode(), self.raw.received)

    def test_trickled_header_is_cut_off(self):
        # A slowloris client must not hold a connection by sending a byte now and then.
        data = b"GET /trickle HTTP/1.1\r\nHost: a.test\r\nX-Slow: " + b"s" * 3000
        with H.Client(self.proxy.port, timeout=H.T(15)) as c:
            deadline = time.monotonic() + H.T(20)
            closed = False
            for i in range(len(data)):
                if time.monotonic() > deadline:
                    break
                try:
                    c.send(data[i:i + 1])
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                ready, _, _ = select.select([c.sock], [], [], 0.3)
                if ready:  # an answer (408) or EOF/RST: either way it was cut off
                    closed = True
                    break
            self.assertTrue(closed, "trickling client kept its connection for %ds" %
                            H.T(20))

    def test_slow_body_times_out(self):
        with H.Client(self.proxy.port, timeout=H.T(15)) as c:
            c.send(H.build_request("POST", "/slowbody", [("Content-Length", "100")]) + b"x" * 10)
            try:
                r = c.read_response("POST")
            except H.PeerClosed:
                r = None
            except socket.timeout:
                self.fail("stalled request body never timed out")
            if r is not None:
                self.assertIn(r.status, (408, 400))
            self.assertClosed(c)

    def test_zz_alive(self):
        self.assertAlive()


if __name__ == "__main__":
    H.main()
