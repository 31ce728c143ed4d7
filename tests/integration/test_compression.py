#!/usr/bin/env python3
"""The compression plugin end to end (docs/plugins/compression.md): gzip and brotli bodies
streamed by the engine, decompressed here (gzip with zlib, brotli with libbrotlidec through
ctypes: Debian's python3 has no brotli module and there is no brotli CLI here, so the
library the proxy links is the reference), with the headers the plugin sets; HTTP/1.0
clients, pipelining, Accept-Encoding garbage, error pages, a response_body filter before
the compressor, an upstream that aborts mid-body, and a slow client reading a large
incompressible body (backpressure: the proxy's RSS stays bounded)."""

import ctypes
import ctypes.util
import os
import sys
import threading
import time
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua"))
import luatest as L  # noqa: E402
from luatest import H  # noqa: E402

MiB = 1 << 20


def _load_brotli():
    for name in (ctypes.util.find_library("brotlidec"), "libbrotlidec.so.1"):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.BrotliDecoderDecompress.argtypes = [ctypes.c_size_t, ctypes.c_char_p,
                                                ctypes.POINTER(ctypes.c_size_t), ctypes.c_char_p]
        lib.BrotliDecoderDecompress.restype = ctypes.c_int
        return lib
    raise H.MissingDependency("libbrotlidec (libbrotli1) is needed to check brotli bodies")


BROTLI = _load_brotli()


def unbrotli(data, max_out):
    out = ctypes.create_string_buffer(max_out)
    n = ctypes.c_size_t(max_out)
    if BROTLI.BrotliDecoderDecompress(len(data), data, ctypes.byref(n), out) != 1:
        raise AssertionError("not a valid brotli stream (%d bytes)" % len(data))
    return out.raw[:n.value]


def gunzip(data):
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = d.decompress(data) + d.flush()
    assert d.eof and not d.unused_data, "gzip stream incomplete or followed by junk"
    return out


def pattern(n):
    """lp_origin's /large, /close-mid, /chunked bytes."""
    return bytes((97 + i % 26) for i in range(n))


SHOUT = r'''
local P = { name = "shout", priority = 50, schema = { fields = {} } }
function P.response_body(req, chunk, eof) return chunk and chunk:upper() end
return P
'''


def route(prefix, upstream, **kw):
    r = {"match": {"prefix": prefix}, "upstream": upstream}
    r.update(kw)
    return r


class CompressionTest(L.LuaTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("o")
        env = None
        if H.SANITIZED:
            env = {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") +
                   ":quarantine_size_mb=1:abort_on_error=0"}
        ups = {
            "o": H.upstream(cls.origin.address()),
            "dead": H.upstream("127.0.0.1:%d" % H.dead_port(), retries=0,
                               health={"passive": {"failures": 0}}),
        }
        comp = {"name": "compression", "min_length": 100}
        routes = [
            route("/any/", "o", strip_prefix=True,
                  plugins=[{"name": "compression", "types": ["*/*"], "gzip_level": 1,
                            "min_length": 0}]),
            route("/shout/", "o", strip_prefix=True,
                  plugins=[{"name": "shout"}, dict(comp)]),
            route("/gz9/", "o", strip_prefix=True,
                  plugins=[{"name": "compression", "gzip_level": 9, "codings": ["gzip"]}]),
            route("/dead", "dead", plugins=[{"name": "compression", "min_length": 0}]),
            route("/", "o", plugins=[dict(comp)]),
        ]
        cls.proxy = cls.start_lua_proxy(ups, routes, files={"plugins/shout.lua": SHOUT},
                                        plugin_paths=[], workers=1,
                                        limits={"max_body_size": 0},
                                        timeouts={"read": 120, "send": 120, "client_body": 120},
                                        env=env)

    def req(self, path, ae="gzip, deflate, br", method="GET", version="HTTP/1.1", **kw):
        headers = {"Accept-Encoding": ae} if ae is not None else {}
        headers.update(kw.pop("headers", {}))
        return H.get(self.proxy.port, path, headers=headers, method=method, version=version,
                     timeout=H.T(30), **kw)

    def test_brotli_by_default(self):
        r = self.req("/fixed?size=16384")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("Content-Encoding"), "br")
        self.assertIn("accept-encoding", r.tokens("Vary"))
        self.assertIsNone(r.header("Content-Length"))
        self.assertEqual(r.framing, "chunked")
        self.assertTrue(r.complete)
        self.assertLess(r.body_len, 200)
        self.assertEqual(unbrotli(r.body, 1 << 16), b"x" * 16384)

    def test_gzip_when_asked(self):
        r = self.req("/large?bytes=%d" % (3 * MiB), ae="gzip;q=1, br;q=0.5")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("Content-Encoding"), "gzip")
        self.assertEqual(r.framing, "chunked")
        self.assertEqual(gunzip(r.body), pattern(3 * MiB))
        r = self.req("/gz9/fixed?size=5000", ae="x-gzip")
        self.assertEqual(r.header("Content-Encoding"), "gzip")
        self.assertEqual(gunzip(r.body), b"x" * 5000)

    def test_refused_or_garbage_accept_encoding_is_identity(self):
        for ae in ("identity", "gzip;q=0, br;q=0", "@@ ;;;,,, q=zz =;=", "gzip;q=7", "gzip;q",
                   "*;q=0", "x" * 6000, None):
            r = self.req("/fixed?size=2000", ae=ae)
            self.assertEqual(r.status, 200, (ae, r))
            self.assertIsNone(r.header("Content-Encoding"), ae)
            self.assertEqual(r.body, b"x" * 2000)
            self.assertEqual(r.header("Content-Length"), "2000")
            self.assertIn("accept-encoding", r.tokens("Vary"))
        self.assertAlive()

    def test_short_and_head_and_no_body_statuses_untouched(self):
        r = self.req("/fixed?size=50")  # under min_length 100
        self.assertIsNone(r.header("Content-Encoding"))
        self.assertEqual(r.header("Content-Length"), "50")
        r = self.req("/fixed?size=2000", method="HEAD")
        self.assertIsNone(r.header("Content-Encoding"))
        self.assertEqual(r.header("Content-Length"), "2000")
        for code in (204, 304):
            r = self.req("/status?code=%d" % code)
            self.assertEqual(r.status, code)
            self.assertIsNone(r.header("Content-Encoding"))

    def test_unknown_length_compressed_whatever_its_size(self):
        r = self.req("/chunked?chunks=3&size=10")
        self.assertEqual(r.header("Content-Encoding"), "br")
        self.assertEqual(unbrotli(r.body, 1000), pattern(30))

    def test_http10_client_gets_a_close_delimited_body(self):
        r = self.req("/fixed?size=20000", ae="gzip", version="HTTP/1.0")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("Content-Encoding"), "gzip")
        self.assertEqual(r.framing, "close")
        self.assertIsNone(r.header("Transfer-Encoding"))
        self.assertEqual(gunzip(r.body), b"x" * 20000)

    def test_pipelined_requests(self):
        reqs = b"".join(H.build_request("GET", "/fixed?size=%d" % n, headers={
            "Accept-Encoding": ae}) for n, ae in
            ((3000, "gzip"), (4000, "br"), (5000, "identity"), (6000, "gzip")))
        with H.Client(self.proxy.port, timeout=H.T(20)) as c:
            c.send(reqs)
            out = [c.read_response() for _ in range(4)]
        self.assertEqual(gunzip(out[0].body), b"x" * 3000)
        self.assertEqual(unbrotli(out[1].body, 10000), b"x" * 4000)
        self.assertIsNone(out[2].header("Content-Encoding"))
        self.assertEqual(out[2].body, b"x" * 5000)
        self.assertEqual(gunzip(out[3].body), b"x" * 6000)

    def test_error_page_compressed(self):
        r = self.req("/dead", ae="gzip")
        self.assertEqual(r.status, 502, r)
        self.assertEqual(r.header("Content-Encoding"), "gzip")
        self.assertTrue(gunzip(r.body).startswith(b"502"), gunzip(r.body))

    def test_filter_runs_before_the_compressor(self):
        r = self.req("/shout/chunked?chunks=4&size=100", ae="gzip")
        self.assertEqual(r.header("Content-Encoding"), "gzip")
        self.assertEqual(gunzip(r.body), pattern(400).upper())

    def test_upstream_abort_mid_body_cuts_the_answer(self):
        r = self.req("/close-mid?bytes=400000", ae="gzip")
        self.assertEqual(r.status, 200)
        self.assertFalse(r.complete, "a cut body must not look complete")
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        got = d.decompress(r.body)
        self.assertFalse(d.eof)
        self.assertEqual(got, pattern(400000)[:len(got)])
        self.assertAlive()
        r = self.req("/fixed?size=3000", ae="gzip")  # the worker goes on
        self.assertEqual(gunzip(r.body), b"x" * 3000)

    def test_client_gone_mid_body(self):
        for _ in range(5):
            with H.Client(self.proxy.port, timeout=H.T(10)) as c:
                c.send(H.build_request("GET", "/large?bytes=%d" % (64 * MiB),
                                       headers={"Accept-Encoding": "br"}))
                c.read_head()
                c.read_exact(100)
                c.abort()
        self.assertAlive()
        r = self.req("/fixed?size=3000", ae="br")
        self.assertEqual(unbrotli(r.body, 5000), b"x" * 3000)

    def test_slow_client_large_incompressible_body_is_not_buffered(self):
        # Random bytes do not shrink: the compressed stream is as large as the body, so a
        # client that stops reading must stop the upstream, not grow the proxy.
        n = 48 * MiB
        body = os.urandom(n)
        # Warm the pools first, so the baseline includes them.
        r = self.req("/any/echo", ae="gzip", method="POST", body=body[:4 * MiB])
        self.assertEqual(gunzip(r.body), body[:4 * MiB])
        base = H.rss_kib(self.proxy.pid)
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out = []
        with H.Client(self.proxy.port, timeout=H.T(60), rcvbuf=65536) as c:
            sender = threading.Thread(target=c.send, daemon=True, args=(H.build_request(
                "POST", "/any/echo", headers={"Accept-Encoding": "gzip"}, body=body),))
            sender.start()
            c.read_head()
            # Stop reading while the body keeps coming; sample RSS meanwhile.
            peak = 0
            end = time.monotonic() + H.T(2)
            while time.monotonic() < end:
                peak = max(peak, H.rss_kib(self.proxy.pid))
                time.sleep(0.1)
            limit = (32 if H.SANITIZED else 16) * 1024
            self.assertLess(peak - base, limit, "proxy RSS grew by %d KiB while the client "
                            "was not reading" % (peak - base))
            c._read_chunked(lambda p: out.append(d.decompress(p)), H.Response())
            sender.join(H.T(30))
        out.append(d.flush())
        self.assertTrue(d.eof)
        self.assertEqual(b"".join(out), body)


if __name__ == "__main__":
    H.main()
