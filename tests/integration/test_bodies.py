#!/usr/bin/env python3
"""Message bodies: Content-Length and chunked uploads reach the origin intact; chunked,
close-delimited and fixed responses reach the client intact and correctly framed;
HEAD/204/304 carry no body; large responses stream intact."""

import os
import random
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402


def concurrent_exchange(client, data, method="POST", sink=None):
    """Send data (a full request) from a thread while reading the response here, so a
    streaming echo cannot deadlock on full socket buffers."""
    err = []

    def sender():
        try:
            client.send(data)
        except Exception as e:  # reported below
            err.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    r = client.read_response(method, sink=sink)
    t.join(H.T(60))
    if err:
        raise err[0]
    return r


class BodiesTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.proxy = cls.start_proxy({"a": H.upstream(cls.a.address())},
                                    [{"match": {"prefix": "/"}, "upstream": "a"}],
                                    workers=2, limits={"max_body_size": 0})

    def client(self):
        return H.Client(self.proxy.port)

    # ---------------------------------------------------------------- uploads

    def test_content_length_uploads(self):
        for n in (0, 1, 1000, 65536, 1 << 20, 3 * (1 << 20) + 7):
            with self.subTest(size=n), self.client() as c:
                body = os.urandom(n)
                r = concurrent_exchange(c, H.build_request("POST", "/echo", body=body))
                self.assertEqual(r.status, 200)
                self.assertEqual(r.body_len, n)
                self.assertTrue(r.body == body, "echoed body differs (size %d)" % n)

    def test_chunked_uploads(self):
        cases = [(b"", [1]), (b"hello world", [1]), (os.urandom(10000), [1, 7, 4096, 3]),
                 (os.urandom(1 << 20), [65536]), (os.urandom(300000), [100000, 1, 99999])]
        for body, sizes in cases:
            with self.subTest(size=len(body), sizes=sizes), self.client() as c:
                data = H.build_request("POST", "/echo", [("Transfer-Encoding", "chunked")],
                                       H.chunked(body, sizes))
                r = concurrent_exchange(c, data)
                self.assertEqual(r.status, 200)
                self.assertTrue(r.body == body, "echoed body differs")

    def test_chunked_upload_with_extensions_and_trailers(self):
        body = b"0123456789" * 100
        with self.client() as c:
            data = H.build_request("POST", "/echo", [("Transfer-Encoding", "chunked")],
                                   H.chunked(body, [33], ext=True,
                                             trailers=[("X-Trailer", "t")]))
            c.send(data)
            r = c.read_response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, body)
            # The connection is still in sync after the trailer section.
            self.assertEqual(c.request("GET", "/").body, b"hello")

    def test_transfer_coding_name_case_insensitive(self):
        with self.client() as c:
            r = c.request("POST", "/echo", [("Transfer-Encoding", "Chunked")],
                          H.chunked(b"abc" * 10, [4]))
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"abc" * 10)

    def test_upload_arriving_in_small_pieces(self):
        random.seed(3)
        body = os.urandom(20000)
        for headers, payload in (([], body),
                                 ([("Transfer-Encoding", "chunked")], H.chunked(body, [999]))):
            with self.subTest(chunked=bool(headers)), self.client() as c:
                c.send_split(H.build_request("POST", "/echo", headers, payload), 40, 0.002)
                r = c.read_response()
                self.assertEqual(r.status, 200)
                self.assertTrue(r.body == body)

    def test_large_upload_streams_through(self):
        body = os.urandom(24 << 20)
        with self.client() as c:
            r = concurrent_exchange(c, H.build_request("PUT", "/echo", body=body))
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body_len, len(body))
            self.assertTrue(r.body == body)

    def test_request_without_body_has_no_length_at_origin(self):
        r = H.get(self.proxy.port, "/headers")
        names = {n.lower() for n, _ in r.json()["headers"]}
        self.assertNotIn("transfer-encoding", names)

    # ---------------------------------------------------------------- responses

    def test_chunked_response(self):
        with self.client() as c:
            r = c.request("GET", "/chunked?chunks=20&size=1000")
            self.assertEqual(r.status, 200)
            self.assertIn(r.framing, ("chunked", "length"))
            self.assertTrue(r.complete)
            self.assertEqual(r.body_len, 20000)
            self.assertEqual(c.request("GET", "/").body, b"hello")

    def test_chunked_response_with_delays(self):
        r = H.get(self.proxy.port, "/chunked?chunks=5&size=10&delay_ms=100")
        self.assertTrue(r.complete)
        self.assertEqual(r.body_len, 50)

    def test_close_delimited_response_rechunked_for_http11(self):
        with self.client() as c:
            r = c.request("GET", "/nolength?bytes=70000")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.framing, "chunked",
                             "an HTTP/1.1 response of unknown length must be re-chunked")
            self.assertTrue(r.complete)
            self.assertEqual(r.body_len, 70000)
            # ... and the client connection survives it.
            self.assertEqual(c.request("GET", "/").body, b"hello")

    def test_close_delimited_response_for_http10(self):
        with self.client() as c:
            r = c.request("GET", "/nolength?bytes=70000", version="HTTP/1.0")
            self.assertEqual(r.status, 200)
            self.assertNotEqual(r.framing, "chunked")
            self.assertEqual(r.body_len, 70000)
            self.assertTrue(c.eof or r.framing == "length")

    def test_slow_response_intact(self):
        r = H.get(self.proxy.port, "/slow?bytes=20000&chunk=1000&delay_ms=20")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.complete)
        self.assertEqual(r.body_len, 20000)

    def test_fixed_zero_length(self):
        with self.client() as c:
            r = c.request("GET", "/fixed?size=0")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body_len, 0)
            self.assertEqual(c.request("GET", "/").body, b"hello")

    def test_head_has_no_body(self):
        for path in ("/fixed?size=5000", "/chunked?chunks=3&size=10", "/large?bytes=100000",
                     "/"):
            with self.subTest(path=path), self.client() as c:
                r = c.request("HEAD", path)
                self.assertEqual(r.status, 200)
                # The next response must parse: no body bytes followed the HEAD response.
                r2 = c.request("GET", "/headers?after-head")
                self.assertEqual(r2.status, 200)
                self.assertEqual(r2.json()["url"], "/headers?after-head")

    def test_204_and_304_have_no_body(self):
        for code in (204, 304):
            with self.subTest(code=code), self.client() as c:
                r = c.request("GET", "/status?code=%d" % code)
                self.assertEqual(r.status, code)
                self.assertNotIn("chunked", r.tokens("transfer-encoding"))
                r2 = c.request("GET", "/headers?after=%d" % code)
                self.assertEqual(r2.status, 200)
                self.assertEqual(r2.json()["url"], "/headers?after=%d" % code)

    def test_large_response_streams_intact(self):
        n = 128 << 20
        check = H.PatternChecker()
        with H.Client(self.proxy.port, timeout=H.T(30)) as c:
            r = c.request("GET", "/large?bytes=%d" % n, sink=check)
            self.assertEqual(r.status, 200)
            self.assertTrue(r.complete)
            self.assertEqual(r.body_len, n)
            self.assertIsNone(check.bad_at, "corrupt byte at offset %s" % check.bad_at)
            self.assertEqual(c.request("GET", "/").body, b"hello")

    def test_many_concurrent_medium_responses(self):
        results = []

        def worker(i):
            try:
                check = H.PatternChecker()
                r = H.get(self.proxy.port, "/large?bytes=%d" % (1000000 + i), sink=check,
                          timeout=H.T(30))
                results.append((r.status, r.body_len == 1000000 + i, check.bad_at))
            except Exception as e:
                results.append(("error", repr(e), None))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(H.T(60))
        self.assertEqual(results, [(200, True, None)] * 16)

    def test_zz_alive(self):
        self.assertAlive()


if __name__ == "__main__":
    H.main()
