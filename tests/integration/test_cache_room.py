#!/usr/bin/env python3
"""The response cache at the edges of a request's header slots (issue #13, engine/cache_room.c):
a request holds limits.max_headers + 16 fields (proxy-t.h, LP_HEADERS_SPARE), and a cache
answer adds its own (a miss its Cache-Status, a hit its Age and Cache-Status).

- A miss whose response fills every slot (the upstream's fullest response and what plugins
  before the cache added) is proxied as it would be without the cache: 200 with every field,
  without a Cache-Status, not stored, logged; never a 500.
- An entry stored before a reload that lowered limits.max_headers, or written to disk by a
  process with a higher one, is served whole afterwards (every stored field, Age and
  Cache-Status): never a 500. The room requests make for it goes with it (purged: the
  requests made next hold the config's slots again).
- A 304 that would grow a stored head past what a hit can carry makes the plugin fetch the
  full response (not a 500)."""

import os
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reload"))
import harness as H  # noqa: E402
import reloadtest as RT  # noqa: E402

ZONE = "r"

Origin = H.ScriptedOrigin


def padded(nfields, body):
    """A cacheable 200 with nfields X-F fields beside its Cache-Control and Content-Length."""
    return lambda req, n: H.cacheable(body + b"-%d" % n,
                                      *[("X-F%d" % i, "v%d" % i) for i in range(nfields)])


class CacheRoomTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = Origin()
        cls.addClassCleanup(cls.origin.stop)

    FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua", "plugins")

    def start(self, plugins=(), disk=None, cache=True, limits=None, **kw):
        zone = {"memory": "16m"}
        if disk:
            zone["disk"] = {"path": disk, "size": "64m"}
        chain = list(plugins) + ([{"name": "cache", "zone": ZONE}] if cache else [])
        p = H.Proxy.build({"o": H.upstream(self.origin.address())},
                          [{"match": {"prefix": "/"}, "upstream": "o", "plugins": chain}],
                          name=self._testMethodName, workers=2, limits=limits,
                          admin={"address": "127.0.0.1:0"},
                          cache={"zones": {ZONE: zone}}, **kw)
        self.addCleanup(p.stop)
        p.start()
        if disk:
            H.wait_for(lambda: not self.zone(p)["disk"]["loading"], H.T(10), what="the disk scan")
        return p

    @staticmethod
    def proxy_has_read(proxy_port, client_port):
        """True once nothing the client on client_port sent waits in the proxy's receive
        queue (/proc/net/tcp; test_upstream_limits.py's proxy_has_read)."""
        for local, remote, _, rx_queue in RT.proc_net_tcp():
            if local == proxy_port and remote == client_port:
                return rx_queue == 0
        return False  # not accepted yet

    def admin(self, p, method, path):
        return H.admin_json(p.admin_port, method, path)

    def zone(self, p):
        st, j = self.admin(p, "GET", "/status")
        self.assertEqual(st, 200)
        return j["cache"][ZONE]

    def get(self, p, path, headers=None):
        r = H.get(p.port, path, host="a.test", headers=headers, timeout=H.T(20))
        self.assertTrue(p.alive(), p.stderr()[-4000:])
        return r

    def gets_at_once(self, p, path, n=8):
        """n concurrent GETs: more requests in flight than a worker keeps recycled, so some
        take header arrays made under the current config."""
        out = [None] * n
        barrier = threading.Barrier(n)

        def one(i):
            try:
                barrier.wait(H.T(10))
                out[i] = H.get(p.port, path, host="a.test", timeout=H.T(20))
            except Exception as e:  # noqa: BLE001 - reported by the caller's assertion
                out[i] = e
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(H.T(30))
        return out

    def path(self, suffix=""):
        return "/" + self._testMethodName + suffix

    def assert_whole_hit(self, r, nfields, body, what):
        self.assertFalse(isinstance(r, Exception), "%s: %r" % (what, r))
        self.assertEqual((r.status, r.body), (200, body), what)
        self.assertRegex(r.header("cache-status") or "", r"^luaproxy; hit; ttl=\d+(; detail=disk)?$", what)
        self.assertIsNotNone(r.header("age"), what)
        for i in range(nfields):
            self.assertEqual(r.header("x-f%d" % i), "v%d" % i, what)

    def reload_with(self, p, **limits):
        p.cfg["limits"] = limits
        p.write_config()
        st, j = self.admin(p, "POST", "/reload")
        self.assertEqual(st, 200, j)
        # No wait for the workers' recycled requests to be given back: one taken again whose
        # header arrays are not the current size has them made again (request.c lp_req_new).

    # ------------------------------------------------------------------ a full miss

    def begun_before_wide_misses(self, a, p):
        """A request for p begun under a's config, whose head ends after a reload to
        max_headers = 100 stored p's 100-field entry: its header slots were sized before, so
        it cannot carry that hit and goes upstream (p's origin answers small-2 then)."""
        c = H.Client(a.port, timeout=H.T(20))
        try:
            c.send(b"GET " + p.encode())
            # Its worker read those bytes (none wait in the proxy's receive queue): the read
            # callback that took them made the request, under a's max_headers, before that
            # worker could switch to the generation the reload below builds.
            client_port = c.sock.getsockname()[1]
            H.wait_for(lambda: self.proxy_has_read(a.port, client_port), H.T(10),
                       what="the proxy reading the request's first bytes")
            self.reload_with(a, max_headers=100)
            self.assertEqual(self.get(a, p).body, b"wide-1")  # stored: 100 fields
            c.send(b" HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            r = c.read_response()
        finally:
            c.close()
        self.assertEqual((r.status, r.body), (200, b"small-2"), a.stderr()[-3000:])
        # RFC 9211 §2.2: fwd=miss, the cache had none it could use (uri-miss: none stored)
        self.assertRegex(r.header("cache-status"), r"^luaproxy; fwd=miss; fwd-status=200")
        self.assertEqual(a.log_count("[error]"), 0, a.stderr()[-3000:])

    def test_miss_filling_every_header_slot_is_proxied(self):
        # The upstream's fullest response (limits.max_headers = 100 fields: 99 and its
        # Content-Length, which the proxy keeps out of the list) and 17 fields set by a plugin
        # that runs before the cache: 116 fields, every slot a request has. The proxy sends it
        # without the cache; with it, the miss's Cache-Status has no slot: the response goes
        # without it (logged), not stored (a hit could not carry its own fields either), never
        # a 500. One field fewer leaves the Cache-Status its slot.
        p = self.path()
        added = {"X-Plugin-%d" % i: "p%d" % i for i in range(17)}
        headers = [{"name": "headers", "response": {"set": added}}]
        plain = self.start(plugins=headers, cache=False)
        a = self.start(plugins=headers)
        for nf, full in ((98, True), (97, False)):  # + Cache-Control (+ Content-Length)
            q = p + "/%d" % nf
            self.origin.script(q, padded(nf, b"full"))
            r = self.get(plain, q)
            self.assertEqual(r.status, 200, "without the cache")
            for n in (2, 3):
                r = self.get(a, q)
                self.assertEqual((r.status, r.body), (200, b"full-%d" % n), nf)
                self.assertEqual((r.header("x-f%d" % (nf - 1)), r.header("x-plugin-16")),
                                 ("v%d" % (nf - 1), "p16"), nf)
                if full:
                    self.assertIsNone(r.header("cache-status"))
                else:
                    self.assertEqual(r.header("cache-status"),
                                     "luaproxy; fwd=uri-miss; fwd-status=200")
        # The plugin's other Cache-Status (policy.cache_status), here fwd=request: an entry
        # (stored from a smaller response) that the request's no-cache sends upstream, and an
        # answer that fills every slot. Served without the line, the entry left as it was.
        q = p + "/revalidated"
        self.origin.script(q, lambda req, n: H.cacheable(
            b"rv-%d" % n, *[("X-F%d" % i, "v%d" % i) for i in range(90 if n == 1 else 98)]))
        self.assertEqual(self.get(a, q).body, b"rv-1")
        r = self.get(a, q, headers=[("Cache-Control", "no-cache")])
        self.assertEqual((r.status, r.body, r.header("x-f97")), (200, b"rv-2", "v97"))
        self.assertIsNone(r.header("cache-status"))
        r = self.get(a, q)
        self.assertEqual((r.status, r.body), (200, b"rv-1"))
        self.assertRegex(r.header("cache-status"), r"^luaproxy; hit; ")
        a.wait_log("no Cache-Status")
        self.assertEqual(self.zone(a)["entries"], 1)  # the smaller response's
        self.assertEqual(a.log_count("[error]"), 0, a.stderr()[-3000:])

    def test_range_on_a_full_miss_is_answered_with_the_whole_200(self):
        # The full miss above with a Range: the 206's Content-Range has no slot left, so the
        # whole 200 goes, as a server that ignores Range sends it (RFC 9110 §14.2), not a 500.
        # One that fits still gets its 206.
        p = self.path()
        added = {"X-Plugin-%d" % i: "p%d" % i for i in range(17)}
        a = self.start(plugins=[{"name": "headers", "response": {"set": added}}])
        for nf in (98, 97):
            q = p + "/%d" % nf
            self.origin.script(q, padded(nf, b"full"))
            r = self.get(a, q, headers=[("Range", "bytes=0-1")])
            self.assertEqual((r.status, r.body, r.header("x-plugin-16")), (200, b"full-1", "p16"), nf)
            self.assertIsNone(r.header("content-range"))
        q = p + "/small"
        self.origin.script(q, padded(10, b"small"))
        r = self.get(a, q, headers=[("Range", "bytes=0-1")])
        self.assertEqual((r.status, r.body, r.header("content-range")), (206, b"sm", "bytes 0-1/7"))
        self.assertEqual(a.log_count("[error]"), 0, a.stderr()[-3000:])

    def test_full_miss_with_the_upstreams_cache_status(self):
        # The general path's Cache-Status (policy.cache_status, after the upstream's own
        # member) replaces the upstream's line: it needs no slot of its own, and a full list
        # is served with it.
        p = self.path()
        added = {"X-Plugin-%d" % i: "p%d" % i for i in range(17)}
        a = self.start(plugins=[{"name": "headers", "response": {"set": added}}])
        self.origin.script(p, lambda req, n: H.cacheable(
            b"cs-%d" % n, ("Cache-Status", "upstream; fwd=miss"),
            *[("X-F%d" % i, "v%d" % i) for i in range(97)]))
        r = self.get(a, p)
        self.assertEqual((r.status, r.body), (200, b"cs-1"))
        self.assertEqual(r.header("cache-status"),
                         "upstream; fwd=miss, luaproxy; fwd=uri-miss; fwd-status=200")
        self.assertEqual(a.log_count("[error]"), 0, a.stderr()[-3000:])

    def test_revalidation_growing_the_head_past_a_hits_room(self):
        # A stale entry of 95 fields revalidated by a 304 carrying 30 new ones: merged, the
        # head would have more fields than a hit can carry (it is not refreshed), and serving
        # it failed (500). The full response is fetched instead (what the client gets without
        # the cache); a 304 that keeps the head within the room still updates it.
        p = self.path()

        def origin(req, n):
            if req.header("if-none-match") == '"v1"':
                extra = 30 if "wide" in req.target else 2
                return H.simple_response(304, b"", [("ETag", '"v1"'), ("Cache-Control", "max-age=0")]
                                         + [("X-New%d" % i, "n") for i in range(extra)])
            return H.simple_response(200, b"body-%d" % n, [("ETag", '"v1"'),
                                                           ("Cache-Control", "max-age=0")]
                                     + [("X-F%d" % i, "v%d" % i) for i in range(95)])
        a = self.start()
        for q in (p + "/wide", p + "/narrow"):
            self.origin.script(q, origin)
            self.assertEqual(self.get(a, q).body, b"body-1")
        r = self.get(a, p + "/wide")
        self.assertEqual((r.status, r.body, r.header("x-f94")), (200, b"body-3", "v94"))
        self.assertRegex(r.header("cache-status"), r"fwd=stale; fwd-status=200")
        self.assertEqual(self.origin.count(p + "/wide"), 3)  # 200, its 304, the full 200
        r = self.get(a, p + "/narrow")
        self.assertEqual((r.status, r.body, r.header("x-new1")), (200, b"body-1", "n"))
        self.assertEqual(self.origin.count(p + "/narrow"), 2)
        self.assertEqual(a.log_count("[error]"), 0, a.stderr()[-3000:])

    def test_zone_put_from_init_worker(self):
        # A zone:put from init_worker (warming a cache) checks the head against no request's
        # config; it once crashed every worker at the start (a NULL config).
        p = self.path()
        self.origin.script(p, lambda req, n: H.simple_response(
            200, (req.header("x-warm") or "none").encode(), []))
        a = self.start(plugins=[{"name": "cachewarm", "zone": ZONE}], cache=False,
                       lua={"plugin_paths": [self.FIXTURES]})
        r = self.get(a, p)
        self.assertEqual((r.status, r.body), (200, b"put=true got=9"))
        self.assertEqual(a.log_count("[error]"), 0, a.stderr()[-3000:])

    def test_pipelined_hit_waits_for_its_response_phase(self):
        # Two pipelined hits: a 4 MiB one, then a small one whose response phase sleeps. The
        # big one's drain must not send the small one's body before its head (its response
        # phase still waiting): the client once got /small's body with no head, then nothing.
        p = self.path()
        big = H.large_body(4 << 20)
        self.origin.script(p + "/big", lambda req, n: H.cacheable(big))
        self.origin.script(p + "/small", lambda req, n: H.cacheable(b"small-%d" % n))
        cache = {"name": "cache", "zone": ZONE}
        a = H.Proxy.build({"o": H.upstream(self.origin.address())},
                          [{"match": {"prefix": p + "/small"}, "upstream": "o",
                            "plugins": [{"name": "sleeper", "response": 0.3}, cache]},
                           {"match": {"prefix": "/"}, "upstream": "o", "plugins": [cache]}],
                          name=self._testMethodName, workers=1,
                          lua={"plugin_paths": [self.FIXTURES]},
                          cache={"zones": {ZONE: {"memory": "16m"}}})
        self.addCleanup(a.stop)
        a.start()
        for q in ("/big", "/small"):
            self.assertEqual(self.get(a, p + q).status, 200)
        for i in range(3):
            with H.Client(a.port, timeout=H.T(10), rcvbuf=65536) as c:
                c.send(H.build_request("GET", p + "/big") + H.build_request("GET", p + "/small"))
                r1 = c.read_response()
                self.assertEqual((r1.status, len(r1.body), r1.body == big), (200, len(big), True), i)
                r2 = c.read_response()
                self.assertEqual((r2.status, r2.body), (200, b"small-1"), i)
                self.assertRegex(r2.header("cache-status"), r"^luaproxy; hit")
                self.assertIsNotNone(r2.header("x-slept"))
        self.assertTrue(a.alive(), a.stderr()[-3000:])
        self.assertEqual(a.log_count("[error]"), 0, a.stderr()[-3000:])

    # ------------------------------------------------------------------ after a reload

    def test_entry_stored_before_a_reload_lowering_max_headers_is_served(self):
        # 100 fields stored under max_headers = 100 (98 X-F, Cache-Control, Content-Length);
        # a reload to 40 makes a request's slots 56, fewer than the entry's fields. Its hits
        # are served whole, as before the reload (a request makes room for the widest head
        # the process stored), on new requests and recycled ones alike.
        p = self.path()
        self.origin.script(p, padded(98, b"wide"))
        a = self.start()
        self.assertEqual(self.get(a, p).body, b"wide-1")
        self.assert_whole_hit(self.get(a, p), 98, b"wide-1", "before the reload")
        self.reload_with(a, max_headers=40)
        for i in range(3):
            self.assert_whole_hit(self.get(a, p), 98, b"wide-1", "hit %d after the reload" % i)
        for i, r in enumerate(self.gets_at_once(a, p)):
            self.assert_whole_hit(r, 98, b"wide-1", "concurrent hit %d" % i)
        self.assertEqual(self.origin.count(p), 1)
        self.assertEqual(a.log_count("[error]"), 0, a.stderr()[-3000:])
        # The new limit holds for what an upstream sends: a new response of 100 fields is
        # refused (502), as without the cache.
        q = self.path("/new")
        self.origin.script(q, padded(98, b"new"))
        self.assertEqual(self.get(a, q).status, 502)

    def test_request_begun_before_a_wider_head_was_stored_goes_upstream(self):
        # A request's header slots are sized when its first bytes arrive (limits.max_headers
        # + 16, or the widest head stored so far + 4). One begun under max_headers = 40 (56
        # slots) that finds an entry of 100 fields, stored after a reload to 100 while it
        # was still sending its head, has no room for that hit: it goes upstream as on a
        # miss (it once got a 500). Requests begun since make room for the entry.
        p = self.path()
        wide = padded(98, b"wide")
        self.origin.script(p, lambda req, n: wide(req, n) if n == 1 else H.cacheable(b"small-%d" % n))
        a = self.start(limits={"max_headers": 40})
        self.begun_before_wide_misses(a, p)

    def test_room_made_for_wide_entries_goes_with_them(self):
        # 100 fields stored under max_headers = 100, then a reload to 40: requests make room
        # for the entry (104 slots). Once it is purged, requests made from then on hold 56
        # slots again: one begun after the purge, finding a 100-field entry stored after a
        # reload back to 100 while it was still sending its head, cannot carry it and goes
        # upstream. The room once never shrank: that request had 104 slots, for an entry
        # long gone, and took the hit.
        p, q = self.path(), self.path("/q")
        self.origin.script(p, padded(98, b"wide"))
        wide = padded(98, b"wide")
        self.origin.script(q, lambda req, n: wide(req, n) if n == 1 else H.cacheable(b"small-%d" % n))
        a = self.start()
        self.assertEqual(self.get(a, p).body, b"wide-1")
        self.reload_with(a, max_headers=40)
        self.assert_whole_hit(self.get(a, p), 98, b"wide-1", "after the reload")
        st, j = self.admin(a, "DELETE", "/cache/" + ZONE)
        self.assertEqual((st, j.get("purged")), (200, 1), j)
        self.begun_before_wide_misses(a, q)

    def test_revalidation_of_an_entry_stored_before_a_reload_lowering_max_headers(self):
        # A stale entry of 98 fields (ETag, max-age=0) stored under max_headers = 100; a
        # reload to 40; its 304 merges into a head no wider than the entry's, which the
        # request can carry: served (fwd=stale; fwd-status=304), one upstream request. It
        # once made the plugin fetch the full response, which could not be stored under the
        # new limit: 502 on every request.
        p = self.path()

        def origin(req, n):
            if req.header("if-none-match") == '"v1"':
                return H.simple_response(304, b"", [("ETag", '"v1"'), ("Cache-Control", "max-age=0")])
            return H.simple_response(200, b"body-%d" % n, [("ETag", '"v1"'),
                                                           ("Cache-Control", "max-age=0")]
                                     + [("X-F%d" % i, "v%d" % i) for i in range(96)])
        self.origin.script(p, origin)
        a = self.start()
        self.assertEqual(self.get(a, p).body, b"body-1")
        self.reload_with(a, max_headers=40)
        for i in range(2):
            r = self.get(a, p)
            self.assertEqual((r.status, r.body, r.header("x-f95")), (200, b"body-1", "v95"), i)
            self.assertRegex(r.header("cache-status"), r"fwd=stale; fwd-status=304")
        self.assertEqual(self.origin.count(p), 3)  # the 200, two 304s
        self.assertEqual(a.log_count("[error]"), 0, a.stderr()[-3000:])

    def test_disk_entry_written_under_a_higher_max_headers_is_served_after_restart(self):
        # The same across a restart: the file of a 100-field entry, indexed by a process whose
        # max_headers is 40, is served whole from disk (its fields counted at the scan).
        p = self.path()
        root = os.path.join(H.Workdir.new("cache-room"), "zone")
        self.origin.script(p, padded(98, b"disk"))
        a = self.start(disk=root)
        self.assertEqual(self.get(a, p).body, b"disk-1")
        H.wait_for(lambda: self.zone(a)["disk"]["entries"] >= 1 or None, H.T(10),
                   what="the entry on disk")
        a.stop()
        b = self.start(disk=root, limits={"max_headers": 40})
        for i in range(2):
            self.assert_whole_hit(self.get(b, p), 98, b"disk-1", "disk hit %d" % i)
        for i, r in enumerate(self.gets_at_once(b, p)):
            self.assert_whole_hit(r, 98, b"disk-1", "concurrent disk hit %d" % i)
        self.assertEqual(self.origin.count(p), 1)
        self.assertEqual(b.log_count("[error]"), 0, b.stderr()[-3000:])


if __name__ == "__main__":
    H.main()
