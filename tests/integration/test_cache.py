#!/usr/bin/env python3
"""The response cache's store and its wiring (issue #13), against a scripted origin that
counts what reaches it: hits and misses across two workers, 100 concurrent misses making one
origin request (coalescing), a large object streamed while stored and served back from the
entry, max_object_size passing responses through uncached (known and unknown length), an
origin error mid-body never stored, purge by key, prefix and all (admin API), a Lua cache
key, zone counters in GET /status, a reload under load keeping the zone, and poisoning
guards (Host, query, Vary, Authorization). The RFC 9111 rules themselves are
test_cache_rfc.py's."""

import email.utils
import json
import os
import re
import struct
import subprocess
import sys
import threading
import time
import unittest
import urllib.parse
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

ZONE = "t"
BIG = H.large_body(4 * 1024 * 1024 + 123)


Origin = H.ScriptedOrigin
fresh = H.cacheable


def chunked_response(body, headers=()):
    head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    head += "".join("%s: %s\r\n" % kv for kv in headers)
    out = [(head + "\r\n").encode()]
    for i in range(0, len(body), 16384):
        part = body[i:i + 16384]
        out.append(b"%x\r\n" % len(part) + part + b"\r\n")
    out.append(b"0\r\n\r\n")
    return b"".join(out)


def simple_no_server(body, headers):
    """A 200 with exactly these fields (and Content-Length): no Server, no Date."""
    return H.simple_response(200, body, headers)


class CacheTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = Origin()
        cls.addClassCleanup(cls.origin.stop)
        route = {"upstream": "o"}
        key_fn = H.LuaRaw('function(req) return "lua:" .. req:path() end')
        cls.proxy = cls.start_proxy(
            {"o": H.upstream(cls.origin.address())},
            [dict(route, match={"prefix": "/luakey/"},
                  plugins=[{"name": "cache", "zone": ZONE, "cache_key": key_fn}]),
             # A hit of /luakey/boomed whose response phase then fails (the boom fixture
             # runs before the cache, priority 500).
             dict(route, match={"prefix": "/boom/"},
                  plugins=[{"name": "cache", "zone": ZONE,
                            "cache_key": H.LuaRaw('function() return "lua:/luakey/boomed" end')},
                           {"name": "boom", "phase": "response"}]),
             dict(route, match={"prefix": "/gz/"},
                  plugins=[{"name": "cache", "zone": ZONE}, {"name": "compression"}]),
             # The cache alone, no Lua of the site's: the engine runs its common miss
             # (engine/cache_native.c) with the plugin's own decisions.
             dict(route, match={"prefix": "/dttl/"},
                  plugins=[{"name": "cache", "zone": ZONE,
                            "default_ttl": {"200": 600, "404": 60, "203": 1}}]),
             dict(route, match={"prefix": "/cachehead"},
                  plugins=[{"name": "cachehead", "zone": ZONE}]),
             dict(route, match={"prefix": "/bypass/"},
                  plugins=[{"name": "cachebypass"}, {"name": "cache", "zone": ZONE}]),
             # A short lock_timeout: fills whose bodies take longer than it.
             dict(route, match={"prefix": "/slowfill/"},
                  plugins=[{"name": "cache", "zone": ZONE, "lock_timeout": 1}]),
             dict(route, match={"prefix": "/"},
                  plugins=[{"name": "cache", "zone": ZONE, "lock_timeout": 10}])],
            workers=2, admin={"address": "127.0.0.1:0"},
            lua={"plugin_paths": [os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "lua", "plugins")]},
            cache={"zones": {ZONE: {"memory": "64m", "max_object_size": "8m"},
                             "small": {"memory": "1m", "max_object_size": "64k"}}})
        cls.port = cls.proxy.port

    # ------------------------------------------------------------------ helpers

    def path(self, suffix=""):
        return "/" + self._testMethodName + suffix

    def get(self, path, headers=None, host="a.test", method="GET"):
        r = H.get(self.port, path, host=host, headers=headers, method=method, timeout=H.T(20))
        self.assertAlive()
        return r

    def admin(self, method, path):
        return H.admin_json(self.proxy.admin_port, method, path)

    def zone_status(self, name=ZONE):
        st, j = self.admin("GET", "/status")
        self.assertEqual(st, 200)
        return j["cache"][name]

    def native(self):
        """The engine's replay counters of the zone (cache_native.c), all workers."""
        return dict(self.zone_status()["native"])

    def native_delta(self, before):
        now = self.native()
        return {k: now[k] - before[k] for k in now}

    def assert_native_flat(self, fn, what):
        """fn's requests all take the plugin's path: the engine replays nothing."""
        before = self.native()
        fn()
        self.assertEqual(self.native_delta(before), {"misses": 0, "stored": 0, "hits": 0}, what)

    def cache_status(self, r):
        v = r.header("cache-status")
        self.assertIsNotNone(v, "no Cache-Status")
        return v.split(",")[-1].strip()

    # ------------------------------------------------------------------ hits and misses

    def test_hits_are_compressed_per_client_like_misses(self):
        # The cache stores the upstream's head and body; compression runs after it on a
        # hit as on a miss, so a stored head never labels a plain body gzip.
        body = b"hello world, " * 500
        self.origin.script("/gz/a", lambda req, n: fresh(body, ("Content-Type", "text/plain")))
        for i, enc in enumerate(["gzip", "gzip", "identity", "br", "gzip"]):
            r = self.get("/gz/a", headers=[("Accept-Encoding", enc)])
            self.assertEqual(r.status, 200)
            if i:
                self.assertIn("hit", self.cache_status(r))
            if enc == "gzip":
                self.assertEqual(r.header("content-encoding"), "gzip")
                self.assertEqual(zlib.decompress(r.body, 31), body)
            elif enc == "identity":
                self.assertIsNone(r.header("content-encoding"))
                self.assertEqual(r.body, body)
            else:
                self.assertEqual(r.header("content-encoding"), "br")
            self.assertIn("accept-encoding", (r.header("vary") or "").lower())
        self.assertEqual(self.origin.count("/gz/a"), 1)

    def test_a_hit_replaced_by_an_error_sends_the_error_body_alone(self):
        # The entry's body was set up in the request phase; the 500 that replaces the hit
        # must go out with its own body and length, or the bytes behind it desync the
        # connection (the entry's body read as the next response).
        self.origin.script("/luakey/boomed", lambda req, n: fresh(b"E" * 5000))
        self.assertEqual(self.get("/luakey/boomed").status, 200)
        c = H.Client(self.port, timeout=H.T(10))
        try:
            c.send(b"GET /boom/a HTTP/1.1\r\nHost: a.test\r\n\r\n"
                   b"GET /luakey/boomed HTTP/1.1\r\nHost: a.test\r\n\r\n")
            r1 = c.read_response()
            self.assertEqual(r1.status, 500)
            self.assertNotIn(b"EEEE", r1.body)
            r2 = c.read_response()
            self.assertEqual(r2.status, 200)
            self.assertEqual(r2.body, b"E" * 5000)
        finally:
            c.close()
        self.assertAlive()


    def test_miss_then_hits_on_every_worker(self):
        p = self.path()
        self.origin.script(p, lambda req, n: fresh(b"v%d" % n))
        first = self.get(p)
        self.assertEqual((first.status, first.body), (200, b"v1"))
        # The common miss's Cache-Status, written by the engine (lp_ffi_cache_miss_status):
        # max-age=3600 and an age of 0, so the TTL left is 3600 or (a second passed) 3599.
        self.assertRegex(first.header("cache-status"),
                         r"^luaproxy; fwd=uri-miss; fwd-status=200; stored; ttl=(3600|3599)$")
        # Fresh connections land on either worker: all served from the one shared entry.
        for _ in range(20):
            r = self.get(p)
            self.assertEqual((r.status, r.body), (200, b"v1"))
            self.assertIn("hit", self.cache_status(r))
            self.assertIsNotNone(r.header("age"))
            self.assertEqual(r.header("content-length"), "2")
        self.assertEqual(self.origin.count(p), 1)
        head = self.get(p, method="HEAD")
        self.assertEqual((head.status, head.body, head.header("content-length")), (200, b"", "2"))
        self.assertEqual(self.origin.count(p), 1)

    def test_common_miss_run_by_engine_as_the_plugin_decides(self):
        # No Cache-Control from the origin, default_ttl on the route: after the plugin decided
        # once (per worker, per status and shape, per Date), the engine stores such a miss
        # itself. Every request must see exactly what the plugin makes of it.
        date = email.utils.formatdate(usegmt=True)

        def ok(tag, with_date):
            def fn(req, n):
                hs = [("ETag", '"%s"' % tag)] if tag else []
                if with_date:
                    hs.append(("Date", date))
                return H.simple_response(200, b"body " + tag.encode(), hs)
            return fn

        before = self.zone_status()
        nat = self.native()
        keys = []
        for i in range(12):
            tag = "e%d" % i if i % 2 else ""
            p = "/dttl/k%d" % i
            self.origin.script(p, ok(tag, i % 3 != 0))
            keys.append((p, tag))
        for p, tag in keys:
            r = self.get(p)
            self.assertEqual((r.status, r.body), (200, b"body " + tag.encode()))
            self.assertRegex(r.header("cache-status"),
                             r"^luaproxy; fwd=uri-miss; fwd-status=200; stored; ttl=(600|599|598)$")
        # Every miss went upstream from the engine's request phase; once each worker's plugin
        # decided (per ETag-or-not, per Date: at most 3 a worker), the engine stored the rest.
        d = self.native_delta(nat)
        self.assertEqual(d["misses"], len(keys))
        self.assertGreaterEqual(d["stored"], len(keys) - 6)
        self.assertEqual(d["hits"], 0)
        for p, tag in keys:
            r = self.get(p)
            self.assertEqual((r.status, r.body), (200, b"body " + tag.encode()))
            self.assertRegex(r.header("cache-status"), r"^luaproxy; hit; ttl=(600|599|598)$")
            self.assertIn(r.header("age"), ("0", "1", "2"))
            if tag:
                self.assertEqual(r.header("etag"), '"%s"' % tag)
                c = self.get(p, headers=[("If-None-Match", '"%s"' % tag)])
                self.assertEqual((c.status, c.body), (304, b""))
            self.assertEqual(self.origin.count(p), 1)
        after = self.zone_status()
        self.assertEqual(after["miss"] - before["miss"], len(keys))
        self.assertEqual(after["stored"] - before["stored"], len(keys))
        # A status the plugin does not store, several times over: never stored, said so.
        self.origin.script("/dttl/err", lambda req, n: H.simple_response(500, b"e"))
        for n in range(1, 4):
            r = self.get("/dttl/err")
            self.assertEqual(r.status, 500)
            self.assertEqual(r.header("cache-status"), "luaproxy; fwd=uri-miss; fwd-status=500")
            self.assertEqual(self.origin.count("/dttl/err"), n)
        # 404 has its own default_ttl.
        self.origin.script("/dttl/gone", lambda req, n: H.simple_response(404, b"g"))
        for _ in range(3):
            r = self.get("/dttl/gone")
            self.assertEqual(r.status, 404)
        self.assertRegex(r.header("cache-status"), r"^luaproxy; hit; ttl=(60|59|58)$")
        self.assertEqual(self.origin.count("/dttl/gone"), 1)
        # Responses of another shape after many of the common one: the plugin's rules.
        self.origin.script("/dttl/cookie", lambda req, n: H.simple_response(
            200, b"c%d" % n, [("Set-Cookie", "s=%d" % n)]))
        self.origin.script("/dttl/cc", lambda req, n: H.simple_response(
            200, b"p%d" % n, [("Cache-Control", "private")]))
        self.origin.script("/dttl/vary", lambda req, n: H.simple_response(
            200, b"v%d" % n, [("Vary", "X-Lang")]))
        nat = self.native()
        for p, c in (("/dttl/cookie", b"c"), ("/dttl/cc", b"p")):
            self.assertEqual(self.get(p).body, c + b"1")
            self.assertEqual(self.get(p).body, c + b"2")
        self.assertEqual(self.get("/dttl/vary", headers=[("X-Lang", "a")]).body, b"v1")
        self.assertEqual(self.get("/dttl/vary", headers=[("X-Lang", "b")]).body, b"v2")
        self.assertEqual(self.get("/dttl/vary", headers=[("X-Lang", "a")]).body, b"v1")
        # Their requests were plain (the engine's misses), their responses the plugin's.
        d = self.native_delta(nat)
        self.assertGreaterEqual(d["misses"], 4)
        self.assertEqual((d["stored"], d["hits"]), (0, 0))
        # Cache-Control values: the plugin's decision for each value, replayed for the next
        # responses with that value (and only that value).
        for cc, stored, ttl in (("max-age=300", True, r"(300|299|298)"),
                                ("public, s-maxage=120, stale-while-revalidate=30", True,
                                 r"(120|119|118)"),
                                ("no-store", False, None), ("private", False, None),
                                ("max-age=0, must-revalidate", True, r"(0|-1|-2)")):
            for i in range(4):
                q = "/dttl/cc%d-%s" % (i, cc.replace(" ", "").replace(",", "."))
                self.origin.script(q, lambda req, n, cc=cc: H.simple_response(
                    200, b"x%d" % n, [("Cache-Control", cc)]))
                r = self.get(q)
                self.assertEqual((r.status, r.body), (200, b"x1"))
                if stored:
                    self.assertRegex(r.header("cache-status"),
                                     r"^luaproxy; fwd=uri-miss; fwd-status=200; stored; ttl=%s$" % ttl)
                else:
                    self.assertEqual(r.header("cache-status"), "luaproxy; fwd=uri-miss; fwd-status=200")
                r = self.get(q)
                fresh_hit = stored and not cc.startswith("max-age=0")
                self.assertEqual(r.body, b"x1" if fresh_hit else b"x2", cc)
                self.assertEqual("hit" in r.header("cache-status"), fresh_hit, cc)
        # Two Cache-Control lines: the plugin's path every time (a plain request's miss is
        # still the engine's; nothing stored by it).
        self.origin.script("/dttl/cc2", lambda req, n: H.simple_response(
            200, b"y%d" % n, [("Cache-Control", "max-age=60"), ("Cache-Control", "no-store")]))
        nat = self.native()
        for n in (1, 2):
            self.assertEqual(self.get("/dttl/cc2").body, b"y%d" % n)
        self.assertEqual(self.native_delta(nat), {"misses": 2, "stored": 0, "hits": 0})
        # A request with a field the policy reads takes the plugin's path (no-store).
        self.origin.script("/dttl/nostore", lambda req, n: H.simple_response(200, b"n%d" % n))
        self.assert_native_flat(
            lambda: self.get("/dttl/nostore", headers=[("Cache-Control", "no-store")]),
            "request no-store")
        self.assertEqual(self.get("/dttl/nostore").body, b"n2")
        self.assertEqual(self.get("/dttl/nostore").body, b"n2")
        # Requests with Authorization, Range, a conditional, Pragma; HEAD: the plugin's.
        self.origin.script("/dttl/req", lambda req, n: H.simple_response(200, b"q%d" % n))
        for hs, m in (([("Authorization", "Basic eDp5")], "GET"), ([("Range", "bytes=0-0")], "GET"),
                      ([("If-None-Match", '"x"')], "GET"), ([("Pragma", "no-cache")], "GET"),
                      ([], "HEAD")):
            self.assert_native_flat(lambda: self.get("/dttl/req", headers=hs, method=m),
                                    "%s %s" % (m, hs))

    def test_engine_hits_on_many_entries_in_any_worker(self):
        # The plugin's first plain hit on an entry teaches the engine how to serve it, and
        # that is kept with the entry (lp_cache_served_t): every later plain hit is the
        # engine's, whichever of the two workers takes it and however many entries are hot.
        # Each worker kept it in a table of 256 slots before: a hit on the other worker, or
        # on an entry whose slot another took, ran the plugin's Lua again.
        keys = ["/dttl/many%d" % i for i in range(300)]
        for q in keys:
            self.origin.script(q, lambda req, n: H.simple_response(200, b"m%d" % n))
        for q in keys:
            self.assertEqual(self.get(q).body, b"m1")  # stored
        for q in keys:
            self.assertEqual(self.get(q).body, b"m1")  # the first hit (the plugin's, learned)
        nat = self.native()
        for q in keys:
            r = self.get(q)
            self.assertEqual(r.body, b"m1")
            self.assertTrue(r.header("cache-status").startswith("luaproxy; hit; ttl="), q)
            self.assertTrue(r.header("age") is not None, q)
        self.assertEqual(self.native_delta(nat)["hits"], len(keys))
        self.assertEqual(self.origin.count("/dttl/many7"), 1)

    def test_engine_first_hit_on_its_own_store(self):
        # An entry the engine stored (a decision replayed) is served by the engine from its
        # first hit on: its head is the engine's rendering, so the engine reads how to serve
        # it from the head (cache_native.c learn_plain) instead of running the plugin's Lua
        # for that first hit. The answer is the plugin's, field for field.
        fields = [("Cache-Control", "max-age=300"), ("X-Kind", "first"), ("X-Mid", "m"),
                  ("x-kind", "second"), ("ETag", '"v1"'),
                  ("Last-Modified", "Tue, 01 Dec 2026 10:00:00 GMT"), ("X-KIND", "third")]
        for i in range(12):  # both workers learn the decision (the plugin stores these)
            q = "/dttl/own-learn%d" % i
            self.origin.script(q, lambda req, n: H.simple_response(200, b"l", fields))
            self.assertEqual(self.get(q).status, 200)
        keys = ["/dttl/own%d" % i for i in range(40)]
        for q in keys:
            self.origin.script(q, lambda req, n, q=q: H.simple_response(
                200, b"o%d %s" % (n, q.encode()), fields))
        nat = self.native()
        for q in keys:
            self.assertEqual(self.get(q).status, 200)
        self.assertEqual(self.native_delta(nat)["stored"], len(keys))
        nat = self.native()
        for q in keys:
            r = self.get(q)
            self.assertEqual(r.body, b"o1 " + q.encode())
            self.assertTrue(r.header("cache-status").startswith("luaproxy; hit; ttl="), q)
        self.assertEqual(self.native_delta(nat)["hits"], len(keys))
        # The plugin's answer for the same entry (a request directive takes its path): the
        # same fields, Date and Age aside.
        nat = self.native()
        plugin = self.get(keys[0], headers=[("Cache-Control", "max-stale=5")])
        self.assertEqual(self.native_delta(nat)["hits"], 0)
        engine = self.get(keys[0])

        def fields_of(r):  # in order, as sent (a field's lines grouped where it first came)
            return [(k, v) for k, v in r.headers if k.lower() not in ("date", "age")]
        self.assertEqual(fields_of(engine), fields_of(plugin))
        self.assertEqual([(k, v) for k, v in engine.headers if k.lower() == "x-kind"],
                         [("X-KIND", "first"), ("X-KIND", "second"), ("X-KIND", "third")])
        # A no-cache decision's entry is never a plain hit: revalidated, not learned.
        self.origin.script("/dttl/own-nc", lambda req, n: H.simple_response(
            200, b"nc%d" % n, [("Cache-Control", "no-cache"), ("ETag", '"n"')]))
        self.get("/dttl/own-nc")
        nat = self.native()
        self.assertEqual(self.get("/dttl/own-nc").body, b"nc2")  # no-cache: revalidated
        self.assertEqual(self.native_delta(nat)["hits"], 0)

    def test_engine_hits_after_revalidations(self):
        # Each revalidation gives the entry a new head, and its first plain hit teaches the
        # engine again; the memos of older heads are freed when nobody else holds the entry,
        # so an entry revalidated again and again keeps its hits in the engine (they stopped
        # after the fourth revalidation: the memos of older heads were kept, at most four).
        def answer(req, n):
            if req.header("if-none-match") == '"r"':
                return H.simple_response(304, b"", [("Cache-Control", "max-age=1"), ("ETag", '"r"')])
            return H.simple_response(200, b"r%d" % n, [("Cache-Control", "max-age=1"), ("ETag", '"r"')])
        self.origin.script("/dttl/reval", answer)
        self.assertEqual(self.get("/dttl/reval").body, b"r1")
        for rnd in range(6):
            time.sleep(1.1)  # stale: the next request revalidates (a 304)
            self.assertEqual(self.get("/dttl/reval").body, b"r1")
            nat = self.native()
            hits = 0
            for _ in range(5):
                r = self.get("/dttl/reval")
                self.assertEqual(r.body, b"r1")
                hits += r.header("cache-status").startswith("luaproxy; hit")
            # every hit but the first on the new head is the engine's (a slow machine may see
            # the entry stale again within the round: those requests revalidate instead)
            self.assertGreaterEqual(hits, 1, "round %d" % rnd)
            self.assertGreaterEqual(self.native_delta(nat)["hits"], hits - 1, "round %d" % rnd)

    def test_engine_miss_of_the_fullest_response(self):
        # The fullest response an upstream may send (max_headers, 100, with its
        # Content-Length), stored by the engine (a decision replayed): its Cache-Status still
        # has room (the engine drops framing fields from the list and the head arena grows
        # to twice the head limits), stored once, no plugin run after the engine's (which
        # would fill a second time and fail its own Cache-Status). Had the line no room, the
        # engine would still not hand the response to the plugin (cache_native.c miss_status).
        for i in range(12):  # both workers learn the plain 200's decision
            q = "/dttl/full-learn%d" % i
            self.origin.script(q, lambda req, n: H.simple_response(200, b"l"))
            self.assertEqual(self.get(q).status, 200)
        nat = self.native()
        served = 0
        for k in range(97, 102):
            q = "/dttl/full-pad%d" % k
            self.origin.script(q, lambda req, n, k=k: H.simple_response(
                200, b"p%d" % n, [("X-Pad-%d" % i, "v" * 60) for i in range(k)]))
            before = self.zone_status()
            errors = self.proxy.log_count("[error]")
            r = self.get(q)
            if r.status == 502:
                continue  # more fields than an upstream response may have
            served += 1
            self.assertEqual((r.status, r.body), (200, b"p1"), k)
            self.assertRegex(r.header("cache-status"),
                             r"^luaproxy; fwd=uri-miss; fwd-status=200; stored; ttl=(600|599|598)$")
            self.assertEqual(self.proxy.log_count("[error]"), errors, k)
            after = self.zone_status()
            self.assertEqual(after["stored"] - before["stored"], 1, k)
            self.assertEqual(after["abandoned"], before["abandoned"], k)
            # And served as a hit: the stored fields plus Age and Cache-Status (the request's
            # header slots keep room beyond max_headers for what the proxy adds).
            for _ in range(2):
                r = self.get(q)
                self.assertEqual((r.status, r.body), (200, b"p1"), k)
                self.assertRegex(r.header("cache-status"), r"^luaproxy; hit; ttl=", k)
                self.assertEqual(r.header("x-pad-%d" % (k - 1)), "v" * 60, k)
        self.assertEqual(served, 3)  # 97..99 X-Pad fields and Content-Length
        self.assertGreaterEqual(self.native_delta(nat)["stored"], 1)

    def stored_meta(self, path):
        """The meta of the entry stored for path (the plugin's head, layout 2, decoded as its
        decode() reads it: the two times from the binary prefix; then n numbers, s strings,
        b flags)."""
        r = self.get("/cachehead?p=" + urllib.parse.quote(path, safe="/"))
        self.assertEqual(r.status, 200, path)
        self.assertEqual((r.body[:2], r.body[18:19]), (b"L2", b"\n"))
        meta = dict(zip(("request_time", "response_time"), struct.unpack("<dd", r.body[2:18])))
        for line in r.body[19:].decode("latin-1").split("\n"):
            if not line or line.startswith("h ") or line.startswith("c "):
                continue
            kind, rest = line.split(" ", 1)
            k, v = rest.split("\t", 1)
            meta[k] = float(v) if kind == "n" else (v == "1" if kind == "b" else v)
        return meta

    def test_engine_meta_is_the_plugins(self):
        # The engine writes the meta lines the plugin's encode_meta writes (cache_native.c
        # has its own writer): the same response stored by each decodes to the same meta,
        # the request and response times aside.
        lm = email.utils.formatdate(time.time() - 86400, usegmt=True)
        for back, cc in ((100, "max-age=300, stale-while-revalidate=7, stale-if-error=9"),
                         (200, None)):
            # A Date no other test sends: each worker's plugin stores the first response
            # (it has not parsed that Date yet), the engine the next ones.
            date = email.utils.formatdate(time.time() - back, usegmt=True)
            metas = {}
            for i in range(24):
                q = "/dttl/meta-%s-%d" % ("cc" if cc else "none", i)
                hs = [("ETag", '"m"'), ("Last-Modified", lm), ("Date", date)]
                if cc:
                    hs.append(("Cache-Control", cc))
                self.origin.script(q, lambda req, n, hs=hs: H.simple_response(200, b"m", hs))
                nat = self.native()
                r = self.get(q)
                self.assertIn("stored", r.header("cache-status"))
                by = "engine" if self.native_delta(nat)["stored"] else "plugin"
                metas.setdefault(by, self.stored_meta(q))
                if len(metas) == 2:
                    break
            self.assertEqual(set(metas), {"engine", "plugin"}, cc)
            now = time.time()
            for m in metas.values():
                for k in ("request_time", "response_time"):
                    self.assertLess(abs(m.pop(k) - now), 30, k)
            self.assertEqual(metas["engine"], metas["plugin"], cc)
            self.assertEqual(metas["plugin"]["etag"], '"m"')

    def test_hits_answered_by_engine_as_the_plugin_answers(self):
        # After the plugin served a plain hit on an entry (per worker), the engine answers the
        # next ones on that entry's head itself: the same status, fields, Age and
        # Cache-Status; never once the entry is stale, purged or replaced.
        p = "/dttl/hits"
        self.origin.script(p, lambda req, n: H.simple_response(
            200, b"h%d" % n, [("ETag", '"h%d"' % n), ("X-Kept", "a, b"), ("X-Kept", "c")]))
        self.assertEqual(self.get(p).body, b"h1")
        nat = self.native()
        for _ in range(12):  # fresh connections: both workers learn, then answer
            r = self.get(p)
            self.assertEqual((r.status, r.body), (200, b"h1"))
            self.assertRegex(r.header("cache-status"), r"^luaproxy; hit; ttl=(600|599|598)$")
            self.assertIn(r.header("age"), ("0", "1", "2"))
            self.assertEqual(r.header("etag"), '"h1"')
            self.assertEqual(r.header("content-length"), "2")
            self.assertEqual([v for k, v in r.headers if k.lower() == "x-kept"], ["a, b", "c"])
        # The plugin served the first hit in each worker (at most 2), the engine the rest.
        d = self.native_delta(nat)
        self.assertGreaterEqual(d["hits"], 10)
        self.assertEqual((d["misses"], d["stored"]), (0, 0))
        # Requests with fields the policy reads still get the plugin's answers.
        self.assert_native_flat(
            lambda: self.assertEqual(self.get(p, headers=[("If-None-Match", '"h1"')]).status, 304),
            "If-None-Match")

        def ranged():
            r = self.get(p, headers=[("Range", "bytes=1-1")])
            self.assertEqual((r.status, r.body), (206, b"1"))
        self.assert_native_flat(ranged, "Range")
        self.assert_native_flat(lambda: self.assertEqual(self.get(p, method="HEAD").body, b""),
                                "HEAD")
        self.assertEqual(self.origin.count(p), 1)
        # Purged: the next request goes upstream, and its new entry is served, not the old.
        key = "GET http://a.test" + p
        st, j = self.admin("DELETE", "/cache/%s?key=%s" % (ZONE, urllib.parse.quote(key, safe="")))
        self.assertEqual((st, j["purged"]), (200, 1))
        self.assertEqual(self.get(p).body, b"h2")
        for _ in range(6):
            r = self.get(p)
            self.assertEqual((r.body, r.header("etag")), (b"h2", '"h2"'))
        self.assertEqual(self.origin.count(p), 2)
        # Fresh for a second (default_ttl 203 = 1): once stale, never answered as fresh.
        q = "/dttl/short"
        self.origin.script(q, lambda req, n: H.simple_response(203, b"s%d" % n, reason="X"))
        before = self.native()
        for _ in range(6):  # a miss, each worker's plugin hit, then the engine's (in 1 s)
            self.assertEqual(self.get(q).body, b"s1")
        self.assertGreaterEqual(self.native_delta(before)["hits"], 1)
        time.sleep(2.2)  # past the TTL: time must pass, there is nothing to wait for
        r = self.get(q)
        self.assertEqual(r.body, b"s2")
        self.assertNotIn("hit", r.header("cache-status"))

    def test_miss_not_stored_says_so(self):
        p = self.path()
        self.origin.script(p, lambda req, n: H.simple_response(
            200, b"x", [("Cache-Control", "no-store")]))
        r = self.get(p)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("cache-status"), "luaproxy; fwd=uri-miss; fwd-status=200")

    def test_cache_status_says_which_miss(self):
        # RFC 9211 §2.2's fwd: uri-miss (nothing stored for the URI), vary-miss (responses for
        # the URI, none for this request's Vary fields), method (a method the cache does not
        # look up), bypass (a site's rule), request (the request's own directives).
        p = self.path()
        self.origin.script(p, lambda req, n: fresh(("lang=%s" % req.header("accept-language")).encode(),
                                                   ("Vary", "Accept-Language")))
        self.assertRegex(self.cache_status(self.get(p, {"Accept-Language": "fr"})),
                         r"^luaproxy; fwd=uri-miss; fwd-status=200; stored; ttl=\d+$")
        self.assertRegex(self.cache_status(self.get(p, {"Accept-Language": "de"})),
                         r"^luaproxy; fwd=vary-miss; fwd-status=200; stored; ttl=\d+$")
        self.assertRegex(self.cache_status(self.get(p, {"Accept-Language": "de"})),
                         r"^luaproxy; hit; ttl=\d+$")
        r = self.get(p, {"Accept-Language": "de", "Cache-Control": "no-cache"})
        self.assertRegex(self.cache_status(r), r"^luaproxy; fwd=request; fwd-status=200; stored; ttl=\d+$")
        for method in ("POST", "OPTIONS"):
            r = self.get(p, {"Accept-Language": "fr"}, method=method)
            self.assertEqual((r.status, self.cache_status(r)),
                             (200, "luaproxy; fwd=method; fwd-status=200"), method)
        self.assertEqual(self.origin.count(p), 5)
        # A site's rule bypassing the lookup (req:cache_bypass()).
        q = "/bypass" + p
        self.origin.script(q, lambda req, n: fresh(b"b%d" % n))
        self.get(q)
        r = self.get(q, {"X-Bypass": "1"})
        self.assertEqual(r.body, b"b2")
        self.assertRegex(self.cache_status(r), r"^luaproxy; fwd=bypass; fwd-status=200; stored; ttl=\d+$")

    def test_request_refusing_a_fresh_entry_is_not_counted_expired(self):
        # Cache-Control: no-cache on a fresh entry: not an expired entry. A 304 to the cache's
        # validator counts revalidated; a full answer a miss (as a forced miss elsewhere).
        p = self.path()

        def answer(req, n):
            if req.header("if-none-match") == '"v1"':
                return H.simple_response(304, b"", [("ETag", '"v1"'), ("Cache-Control", "max-age=3600")])
            return fresh(b"v%d" % n, ("ETag", '"v%d"' % n))
        self.origin.script(p, answer)
        self.get(p)
        counts = ("hit", "miss", "expired", "revalidated", "stale")
        before = self.zone_status()
        r = self.get(p, {"Cache-Control": "no-cache"})
        self.assertEqual((r.status, r.body), (200, b"v1"))
        self.assertRegex(self.cache_status(r), r"^luaproxy; fwd=request; fwd-status=304; ttl=\d+$")
        mid = self.zone_status()
        self.assertEqual({k: mid[k] - before[k] for k in counts},
                         {"hit": 0, "miss": 0, "expired": 0, "revalidated": 1, "stale": 0})
        # The origin's validator changes: the next forced request gets a full 200.
        self.origin.script(p, lambda req, n: fresh(b"v2", ("ETag", '"v2"')))
        r = self.get(p, {"Cache-Control": "no-cache"})
        self.assertEqual((r.status, r.body), (200, b"v2"))
        after = self.zone_status()
        self.assertEqual({k: after[k] - mid[k] for k in counts},
                         {"hit": 0, "miss": 1, "expired": 0, "revalidated": 0, "stale": 0})
        # A stale entry revalidated stays counted in expired.
        q = self.path("-stale")
        self.origin.script(q, lambda req, n: H.simple_response(
            200 if n == 1 else 304, b"s" if n == 1 else b"",
            [("Cache-Control", "max-age=1"), ("Age", "5"), ("ETag", '"s"')]))
        self.get(q)
        before = self.zone_status()
        self.assertEqual(self.get(q).body, b"s")
        after = self.zone_status()
        self.assertEqual({k: after[k] - before[k] for k in counts},
                         {"hit": 0, "miss": 0, "expired": 1, "revalidated": 1, "stale": 0})

    def test_status_counts(self):
        p = self.path()
        self.origin.script(p, lambda req, n: fresh(b"x"))
        before = self.zone_status()
        self.get(p)
        self.get(p)
        self.get(p)
        after = self.zone_status()
        self.assertEqual(after["miss"] - before["miss"], 1)
        self.assertEqual(after["hit"] - before["hit"], 2)
        self.assertEqual(after["stored"] - before["stored"], 1)
        self.assertGreater(after["entries"], 0)
        self.assertGreater(after["bytes"], 0)
        for k in ("expired", "stale", "revalidated", "bypass", "capacity", "evicted"):
            self.assertIn(k, after)
        self.assertGreater(after["index_bytes"], 0)  # the key index, outside `bytes`
        text = H.admin_text(self.proxy.admin_port, "/metrics")
        self.assertIn('luaproxy_cache_requests_total{zone="t",result="hit"} %d' % after["hit"], text)
        self.assertIn('luaproxy_cache_fills_total{zone="t",result="stored"} %d' % after["stored"], text)
        self.assertIn('luaproxy_cache_entries{zone="t"}', text)
        # The engine's replays, as /status's `native` (all workers): the same numbers.
        nat = after["native"]
        for result, key in (("miss", "misses"), ("stored", "stored"), ("hit", "hits")):
            self.assertIn('luaproxy_cache_native_total{zone="t",result="%s"} %d'
                          % (result, nat[key]), text)
        # test_metrics.py checks a proxy without zones: here, the cache families.
        p = subprocess.run([H.require_tool("promtool"), "check", "metrics"], input=text,
                           capture_output=True, text=True, timeout=H.T(30))
        self.assertNotIn("luaproxy_cache", p.stdout + p.stderr)

    def test_lua_cache_key(self):
        # The route's cache_key ignores the query: both share one entry.
        self.origin.script("/luakey/a", lambda req, n: fresh(b"k%d" % n))
        self.assertEqual(self.get("/luakey/a?x=1").body, b"k1")
        self.assertEqual(self.get("/luakey/a?x=2").body, b"k1")
        self.assertEqual(self.origin.count("/luakey/a"), 1)

    # ------------------------------------------------------------------ coalescing

    def test_100_concurrent_misses_one_origin_request(self):
        p = self.path()
        body = H.large_body(200 * 1024)

        def slow(req, n):
            time.sleep(0.5)  # the origin is slow: every client arrives during the fill
            return fresh(body)
        self.origin.script(p, slow)
        results = [None] * 100
        errors = []

        def client(i):
            try:
                results[i] = H.get(self.port, p, timeout=H.T(30))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))
        threads = [threading.Thread(target=client, args=(i,)) for i in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(H.T(60))
        self.assertEqual(errors, [])
        for r in results:
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, body)
        self.assertEqual(self.origin.count(p), 1)
        collapsed = [self.cache_status(r) for r in results
                     if "collapsed" in (r.header("cache-status") or "")]
        self.assertGreater(len(collapsed), 0)
        # RFC 9211: collapsed goes with fwd (the request was collapsed into the one
        # forwarded), never with hit.
        for cs in collapsed:
            self.assertRegex(cs, r"^luaproxy; fwd=uri-miss; collapsed; ttl=\d+$")

    def test_uncacheable_answer_releases_waiters(self):
        p = self.path()

        def slow(req, n):
            time.sleep(0.3)
            return H.simple_response(200, b"private", [("Cache-Control", "private")])
        self.origin.script(p, slow)
        results = []

        def client():
            results.append(H.get(self.port, p, timeout=H.T(30)))
        threads = [threading.Thread(target=client) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(H.T(30))
        self.assertEqual([r.body for r in results], [b"private"] * 5)
        self.assertEqual(self.origin.count(p), 5)

    def paced_fill(self, gaps, headers=None):
        """A fill whose body comes in pieces after the given pauses (the route's lock_timeout
        is 1 s) while 6 requests (with `headers`) wait on it: the origin requests made, and
        the answers."""
        p = "/slowfill/" + self._testMethodName
        body = H.large_body(len(gaps) * 1000)
        waiting = threading.Event()

        def pieces():
            yield (b"HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(body))
            waiting.wait(H.T(10))
            for i, gap in enumerate(gaps):
                time.sleep(gap)  # the body's pace (what is tested), not a synchronisation
                yield body[i * 1000:(i + 1) * 1000]
        # A waiter that went upstream itself gets the body at once.
        self.origin.script(p, lambda req, n: pieces() if n == 1 else fresh(body))
        results = []
        first = threading.Thread(target=lambda: results.append(H.get(self.port, p,
                                                                     timeout=H.T(30))))
        first.start()
        H.wait_for(lambda: self.origin.count(p) == 1, H.T(10), what="the fill's request")
        threads = [threading.Thread(target=lambda: results.append(
            H.get(self.port, p, headers=headers, timeout=H.T(30)))) for _ in range(6)]
        for t in threads:
            t.start()
        # The body goes on once every waiter is connected (they reach the lock at once).
        H.wait_for(lambda: self.admin("GET", "/status")[1]["connections"] >= 7 or None,
                   H.T(10), what="the waiters' connections")
        waiting.set()
        for t in [first] + threads:
            t.join(H.T(40))
        self.assertEqual([r.body for r in results], [body] * 7)
        return self.origin.count(p), results

    def test_slow_body_keeps_its_waiters(self):
        # The body takes about 3 s, longer than lock_timeout (1 s), but a piece comes every
        # 0.25 s: the waiters wait for the whole fill (their bound counts from its last
        # progress), and only the filler went upstream.
        n, results = self.paced_fill([0.25] * 12)
        self.assertEqual(n, 1)
        collapsed = [r for r in results if "collapsed" in (r.header("cache-status") or "")]
        self.assertEqual(len(collapsed), 6)

    def variant_waiters(self, first, waiting):
        """The key's first fill (Accept-Encoding `first`) is held at the origin while two
        requests for each variant in `waiting` wait on the key; then it goes on. Checks that
        every request got its own variant's body, and returns the variants the origin was
        asked for (sorted)."""
        p = self.path()
        gate = threading.Event()
        asked = []

        def answer(req, n):
            ae = req.header("accept-encoding")
            asked.append(ae)
            if ae == first:
                gate.wait(H.T(10))
            return fresh(b"ae=" + ae.encode(), ("Vary", "Accept-Encoding"))
        self.origin.script(p, answer)
        out = []

        def fetch(ae):
            out.append((ae, H.get(self.port, p, headers={"Accept-Encoding": ae},
                                  timeout=H.T(30))))
        threads = [threading.Thread(target=fetch, args=(first,))]
        threads[0].start()
        H.wait_for(lambda: self.origin.count(p) == 1, H.T(10), what="the first fill's request")
        threads += [threading.Thread(target=fetch, args=(v,)) for v in waiting for _ in range(2)]
        for t in threads[1:]:
            t.start()
        H.wait_for(lambda: self.admin("GET", "/status")[1]["connections"] >= len(threads)
                   or None, H.T(10), what="the waiting requests' connections")
        gate.set()
        for t in threads:
            t.join(H.T(40))
        self.assertEqual(sorted((ae, r.body) for ae, r in out),
                         sorted([(first, b"ae=" + first.encode())]
                                + [(v, b"ae=" + v.encode()) for v in waiting for _ in range(2)]))
        return sorted(asked)

    def test_waiters_for_another_variant_coalesced(self):
        # Two requests for the br variant wait on the key's gzip fill. Once it is stored, the
        # first takes the key's lock to fill br, and the second waits for that fill in turn:
        # one upstream request for br (both went upstream before).
        self.assertEqual(self.variant_waiters("gzip", ["br"]), ["br", "gzip"])

    def test_waiters_of_many_variants_coalesced(self):
        # Two requests for each of six variants wait on the key while its first fill (v0)
        # is held: each looks again whenever a fill of the key ends, so a variant's waiters
        # are served from its entry once it is stored, whichever variants fill meanwhile,
        # and every variant reaches the origin once (7 variants made 9 origin requests when
        # a waiter looked only once, after the key's lock was free).
        variants = ["v%d" % i for i in range(6)]
        self.assertEqual(self.variant_waiters("v0", variants), variants)

    def test_hits_keep_the_stored_field_order_and_add_nothing(self):
        # Hits (on either worker, each with its own VM) list the stored fields in one order,
        # the same every time; an origin that sends no Server gets none on its hits either.
        p = self.path()
        fields = [("X-F%d" % i, "v%d" % i) for i in range(12)] + [("X-Dup", "a"), ("X-Dup", "b")]
        self.origin.script(p, lambda req, n: simple_no_server(
            b"ordered", [("Cache-Control", "max-age=3600")] + fields))
        miss = self.get(p)
        self.assertIsNone(miss.header("server"))
        orders = set()
        for _ in range(12):
            r = self.get(p)
            self.assertIn("hit", self.cache_status(r))
            self.assertIsNone(r.header("server"), "a hit added a Server field")
            names = tuple((k.lower(), v) for k, v in r.headers
                          if k.lower().startswith("x-") or k.lower() == "cache-control")
            orders.add(names)
        self.assertEqual(len(orders), 1, "hits listed their fields in different orders")
        order = orders.pop()
        self.assertEqual([v for k, v in order if k == "x-dup"], ["a", "b"])
        # The engine stored this one (a cache-only route): in the upstream's order.
        self.assertEqual(order, tuple((k.lower(), v) for k, v in miss.headers
                                      if k.lower().startswith("x-")
                                      or k.lower() == "cache-control"))

    def test_hits_keep_the_field_order_after_a_revalidation(self):
        # A 304 writes the entry a new head: its fields keep the order the stored head had
        # (the merge's table was written in pairs' order: each revalidation gave the hits a
        # new order, and the plugin's 304 answer a sorted one).
        p = self.path()
        fields = [("X-Zed", "1"), ("x-alpha", "2"), ("X-Dup", "a"), ("X-Mid", "m"),
                  ("X-Dup", "b"), ("ETag", '"o"')]

        def answer(req, n):
            if req.header("if-none-match") == '"o"':
                return H.simple_response(304, b"", [("Cache-Control", "max-age=1"), ("ETag", '"o"')])
            return simple_no_server(b"ord", [("Cache-Control", "max-age=1")] + fields)
        self.origin.script(p, answer)

        def order(r):
            return [(k.lower(), v) for k, v in r.headers if k.lower().startswith("x-")]
        first = order(self.get(p))
        self.assertEqual(first, [("x-zed", "1"), ("x-alpha", "2"), ("x-dup", "a"),
                                 ("x-mid", "m"), ("x-dup", "b")])
        hit = order(self.get(p))
        for _ in range(2):
            time.sleep(1.1)  # stale: the next request revalidates (a 304)
            self.assertEqual(order(self.get(p)), hit, "the 304's answer")
            self.assertEqual(order(self.get(p)), hit, "a hit after the 304")

    def test_stalled_fill_releases_its_waiters(self):
        # A body that stops for 3 s (3 x lock_timeout) lets its waiters go upstream: the
        # bound still holds for a fill that makes no progress. (Waiters that wait for the
        # whole entry: a request directive keeps them from following the fill.)
        n, _ = self.paced_fill([0.1, 3.0, 0.1], headers={"Cache-Control": "max-stale=1"})
        self.assertGreater(n, 1)

    def test_stalled_fill_keeps_its_followers(self):
        # Plain GETs follow the fill from its head on (fill streams): they are its body's
        # readers then, and a pause in it pauses them as it would a client of the origin;
        # the fill's own upstream timeouts bound it (a failed fill cuts them short).
        n, results = self.paced_fill([0.1, 3.0, 0.1])
        self.assertEqual(n, 1)
        collapsed = [r for r in results if "collapsed" in (r.header("cache-status") or "")]
        self.assertEqual(len(collapsed), 6)

    # ------------------------------------------------------------------ bodies

    def test_large_object_streamed_and_served_back(self):
        p = self.path()
        self.origin.script(p, lambda req, n: fresh(BIG))
        r = self.get(p)
        self.assertEqual(r.body, BIG)
        for _ in range(3):
            r = self.get(p)
            self.assertEqual(len(r.body), len(BIG))
            self.assertEqual(r.body, BIG)
            self.assertIn("hit", self.cache_status(r))
        self.assertEqual(self.origin.count(p), 1)
        # A range of it, from the entry.
        r = self.get(p, {"Range": "bytes=1000000-1000099"})
        self.assertEqual(r.status, 206)
        self.assertEqual(r.body, BIG[1000000:1000100])
        self.assertEqual(r.header("content-range"), "bytes 1000000-1000099/%d" % len(BIG))

    def test_chunked_origin_body_stored(self):
        # Its length unknown when the head goes out, a chunked body may still go over
        # max_object_size: the miss's Cache-Status does not claim `stored` (the hit after
        # shows it was). The plugin's miss, then the engine's replay of it (cache_native.c).
        body = H.large_body(300 * 1024)
        for i in range(2):
            p = self.path("/%d" % i)
            self.origin.script(p, lambda req, n: chunked_response(body, [("Cache-Control", "max-age=60")]))
            r = self.get(p)
            self.assertEqual((r.body, self.cache_status(r)), (body, "luaproxy; fwd=uri-miss; fwd-status=200"))
            r = self.get(p)
            self.assertEqual((r.body, r.header("content-length")), (body, str(len(body))))
            self.assertRegex(self.cache_status(r), r"^luaproxy; hit; ttl=\d+$")
            self.assertEqual(self.origin.count(p), 1)

    def test_over_max_object_size_passes_uncached(self):
        big = H.large_body(9 * 1024 * 1024)
        p = self.path("-length")
        self.origin.script(p, lambda req, n: fresh(big))
        before = self.zone_status()["abandoned"]
        for _ in range(2):
            r = self.get(p)
            self.assertEqual(r.body, big)
            # Refused by its Content-Length: counted in abandoned (as documented), and the
            # Cache-Status says why it was not stored.
            self.assertRegex(self.cache_status(r),
                             r"^luaproxy; fwd=uri-miss; fwd-status=200; detail=too-large$")
        self.assertEqual(self.origin.count(p), 2)
        after = self.zone_status()["abandoned"]
        self.assertEqual(after - before, 2)
        text = H.admin_text(self.proxy.admin_port, "/metrics")
        self.assertIn('luaproxy_cache_fills_total{zone="%s",result="abandoned"} %d'
                      % (ZONE, after), text)
        # Length unknown: the fill is dropped when the body goes over.
        q = self.path("-chunked")
        self.origin.script(q, lambda req, n: chunked_response(big, [("Cache-Control", "max-age=60")]))
        for _ in range(2):
            r = self.get(q)
            self.assertEqual(r.body, big)
            # Sent before the body went over: it never said stored.
            self.assertEqual(self.cache_status(r), "luaproxy; fwd=uri-miss; fwd-status=200")
        self.assertEqual(self.origin.count(q), 2)
        self.assertGreater(self.zone_status()["abandoned"], 0)

    def test_origin_error_mid_body_not_stored(self):
        p = self.path()

        def answer(req, n):
            if n == 1:
                head = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\nContent-Length: 100000\r\n\r\n"
                return (head + b"x" * 40000, "close")
            return fresh(b"whole")
        self.origin.script(p, answer)
        c = H.Client(self.port, timeout=H.T(10))
        try:
            r = c.request("GET", p, host="a.test")
            self.assertFalse(r.complete, "the truncation must show")
        except (H.PeerClosed, OSError):
            pass
        finally:
            c.close()
        r = self.get(p)
        self.assertEqual(r.body, b"whole")
        self.assertEqual(self.origin.count(p), 2)

    # ------------------------------------------------------------------ purge

    def test_purge_key_prefix_all(self):
        base = self.path()
        for s in ("/a", "/b", "/c"):
            self.origin.script(base + s, lambda req, n: fresh(b"p%d" % n))
            self.get(base + s)
        key = "GET http://a.test" + base + "/a"
        st, j = self.admin("DELETE", "/cache/%s?key=%s" % (ZONE, urllib.parse.quote(key, safe="")))
        self.assertEqual((st, j["purged"]), (200, 1))
        self.assertEqual(self.get(base + "/a").body, b"p2")
        self.assertEqual(self.get(base + "/b").body, b"p1")
        prefix = "GET http://a.test" + base + "/"
        st, j = self.admin("DELETE", "/cache/%s?prefix=%s" % (ZONE, urllib.parse.quote(prefix, safe="")))
        self.assertEqual((st, j["purged"]), (200, 3))
        self.assertEqual(self.get(base + "/b").body, b"p2")
        st, j = self.admin("DELETE", "/cache/" + ZONE)
        self.assertEqual(st, 200)
        self.assertGreaterEqual(j["purged"], 1)  # /b again, and whatever other tests stored
        self.assertEqual(self.get(base + "/c").body, b"p2")
        self.assertEqual(self.admin("DELETE", "/cache/nope"),
                         (404, {"ok": False, "error": "no such cache zone: nope"}))
        self.assertEqual(self.admin("GET", "/cache/" + ZONE)[0], 405)
        # A misspelt or empty argument purges nothing (before: everything).
        self.get(base + "/c")
        for q in ("?foo=1", "?prefix=", "?key=", "?key=a&prefix=b", "?key=a&key=b"):
            st, j = self.admin("DELETE", "/cache/" + ZONE + q)
            self.assertEqual(st, 400, q)
            self.assertFalse(j["ok"])
        self.assertIn("hit", self.cache_status(self.get(base + "/c")))

    # ------------------------------------------------------------------ poisoning guards

    def test_host_and_query_never_cross(self):
        p = self.path()
        self.origin.script(p, lambda req, n: fresh(("%s %s" % (req.header("host"), req.target)).encode()))
        a = self.get(p + "?q=1", host="a.test").body
        b = self.get(p + "?q=1", host="b.test").body
        c = self.get(p + "?q=2", host="a.test").body
        self.assertEqual(len({a, b, c}), 3)
        self.assertEqual(self.get(p + "?q=1", host="b.test").body, b)
        self.assertEqual(self.get(p + "?q=2", host="a.test").body, c)
        self.assertEqual(self.origin.count(p), 3)

    def test_host_port_is_part_of_the_key(self):
        # The port is part of the target URI (RFC 9111 2): an answer made for `Host: a:9999`
        # must not be served to `Host: a`. The scheme's default port is the same origin.
        p = self.path()
        self.origin.script(p, lambda req, n: fresh(("host=%s" % req.header("host")).encode()))
        self.assertEqual(self.get(p, host="a.test:8081").body, b"host=a.test:8081")
        self.assertEqual(self.get(p, host="a.test:9999").body, b"host=a.test:9999")
        self.assertEqual(self.get(p, host="a.test").body, b"host=a.test")
        self.assertEqual(self.get(p, host="A.test:80").body, b"host=a.test")
        self.assertEqual(self.get(p, host="a.test:8081").body, b"host=a.test:8081")
        # The host is lowered in the key, short (byte by byte) or long (a word at a time).
        self.assertEqual(self.get(p, host="A.TEST").body, b"host=a.test")
        self.assertEqual(self.get(p, host="A.TeST:8081").body, b"host=a.test:8081")
        self.assertEqual(self.origin.count(p), 3)

    def test_vary_variants_never_cross(self):
        p = self.path()
        self.origin.script(p, lambda req, n: fresh(("lang=%s" % req.header("accept-language")).encode(),
                                                   ("Vary", "Accept-Language")))
        self.assertEqual(self.get(p, {"Accept-Language": "fr"}).body, b"lang=fr")
        self.assertEqual(self.get(p, {"Accept-Language": "de"}).body, b"lang=de")
        self.assertEqual(self.get(p, {"Accept-Language": "fr"}).body, b"lang=fr")
        self.assertEqual(self.get(p, {"Accept-Language": "de"}).body, b"lang=de")
        self.assertEqual(self.origin.count(p), 2)
        # A purge of the key counts the responses it removed: both variants (not the key's
        # Vary marker).
        key = "GET http://a.test" + p
        st, j = self.admin("DELETE", "/cache/%s?key=%s" % (ZONE, urllib.parse.quote(key, safe="")))
        self.assertEqual((st, j["purged"]), (200, 2))
        self.assertEqual(self.get(p, {"Accept-Language": "fr"}).body, b"lang=fr")
        self.assertEqual(self.origin.count(p), 3)

    def test_authorization_response_not_shared(self):
        p = self.path()
        self.origin.script(p, lambda req, n: fresh(("user=%s" % req.header("authorization")).encode()))
        self.assertEqual(self.get(p, {"Authorization": "Bearer alice"}).body, b"user=Bearer alice")
        self.assertEqual(self.get(p).body, b"user=None")
        self.assertEqual(self.origin.count(p), 2)

    # ------------------------------------------------------------------ reload

    def test_reload_under_load_keeps_zone(self):
        kept = self.path("-kept")
        self.origin.script(kept, lambda req, n: fresh(b"kept%d" % n))
        self.assertEqual(self.get(kept).body, b"kept1")
        paths = [self.path("-%d" % i) for i in range(8)]
        for q in paths:
            self.origin.script(q, lambda req, n: fresh(H.large_body(64 * 1024)))
        stop = threading.Event()
        bad = []

        def load():
            i = 0
            while not stop.is_set():
                q = paths[i % len(paths)]
                i += 1
                try:
                    r = H.get(self.port, q, timeout=H.T(20))
                    if r.status != 200 or r.body != H.large_body(64 * 1024):
                        bad.append((q, r.status, len(r.body)))
                except Exception as e:  # noqa: BLE001 - reported below
                    bad.append((q, repr(e)))
        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            for _ in range(3):
                st, j = self.admin("POST", "/reload")
                self.assertEqual(st, 200, j)
        finally:
            stop.set()
            for t in threads:
                t.join(H.T(30))
        self.assertEqual(bad, [])
        self.assertEqual(self.get(kept).body, b"kept1", "the zone survives a reload")
        self.assertEqual(self.origin.count(kept), 1)


class CacheConfigTest(H.ProxyTestCase):
    """Zone mistakes are refused when the config loads (-t, start, reload), naming the file,
    the route's plugin entry and the zone; on a reload the running config keeps serving."""

    @classmethod
    def setUpClass(cls):
        cls.origin = Origin()
        cls.addClassCleanup(cls.origin.stop)
        cls.proxy = cls.start_proxy(
            {"o": H.upstream(cls.origin.address())},
            [{"match": {"prefix": "/"}, "upstream": "o",
              "plugins": [{"name": "cache", "zone": ZONE}]}],
            admin={"address": "127.0.0.1:0"},
            cache={"zones": {ZONE: {"memory": "32m"}}})
        cls.good = H.config_text(cls.proxy.cfg)

    def variant(self, zone=ZONE, **zone_conf):
        cfg = json.loads(json.dumps(self.proxy.cfg))
        cfg["routes"][0]["plugins"][0]["zone"] = zone
        cfg["cache"]["zones"][ZONE].update(zone_conf)
        return H.config_text(cfg)

    def refused(self, text, needle):
        path = self.proxy.config_path
        bad = os.path.join(self.proxy.dir, "bad.lua")
        with open(bad, "w") as f:
            f.write(text)
        # -t
        t = subprocess.run([H.LUAPROXY, "-t", "-c", bad], capture_output=True, text=True,
                           timeout=H.T(60))
        self.assertEqual(t.returncode, 1, t.stdout + t.stderr)
        # FILE:LINE: (the line that writes the key: lua/luaproxy/config_line.lua)
        self.assertRegex(t.stderr, re.escape(bad) + r":\d+: " + re.escape(needle))
        # start: refused, the process exits
        try:
            st = subprocess.run([H.LUAPROXY, "-c", bad], capture_output=True, text=True,
                                timeout=H.T(60))
        except subprocess.TimeoutExpired:
            self.fail("a proxy started with " + needle)
        self.assertNotEqual(st.returncode, 0)
        self.assertIn(needle, st.stderr)
        # reload: refused, the running config keeps serving (cached)
        p = "/" + self._testMethodName
        self.origin.script(p, lambda req, n: fresh(b"v%d" % n))
        self.assertEqual(H.get(self.proxy.port, p).body, b"v1")
        with open(path, "w") as f:
            f.write(text)
        try:
            code, j = H.admin_json(self.proxy.admin_port, "POST", "/reload")
            self.assertEqual(code, 500, j)
            self.assertRegex(j["error"], re.escape(path) + r":\d+: " + re.escape(needle))
        finally:
            with open(path, "w") as f:
                f.write(self.good)
        r = H.get(self.proxy.port, p)
        self.assertEqual(r.body, b"v1")
        self.assertIn("hit", r.header("cache-status"))
        self.assertNotIn("cache: no zone", self.proxy.stderr())  # never run uncached

    def test_undeclared_zone_refused(self):
        self.refused(self.variant(zone="nope"),
                     'routes[1].plugins[1](cache).zone: no zone "nope" in the config\'s '
                     'cache.zones (declared: "%s")' % ZONE)

    def test_max_object_size_over_memory_refused(self):
        self.refused(self.variant(max_object_size="64m"),
                     'cache.zones.%s.max_object_size: max_object_size "64m" is larger than '
                     'memory "32m"' % ZONE)


if __name__ == "__main__":
    H.main()
