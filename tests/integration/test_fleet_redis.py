#!/usr/bin/env python3
"""State across a fleet of luaproxy instances through Redis (issue #18, docs/fleet.md): three
instances (two workers each) with the same config and one redis-server (Debian's package,
started as test_lua_redis.Redis does: a reserved port, stopped by PID).

- rate_limit, policy redis: load spread over the three holds the global rate within 5%;
- Redis killed: the `local` fallback counts locally, `allow` fails open, `deny` fails closed,
  each logged at most once per worker (not per request) and every degraded decision counted
  in rate_limit_redis_failures_total; Redis back: the limit is shared again;
- sticky choices without shared state: the `ab` plugin's arm (sticky by header, and by
  cookie) and the `hash` balancer's target are the same on every instance for 300 keys, and
  again on an instance started afresh from the same config;
- the cache's Redis L2 tier, with two instances: a response stored by one is a hit on the
  other without an origin request (Cache-Status `hit; ...; detail=l2`); Vary variants are
  served only to the requests they belong to, and an unsafe method's invalidation orphans
  them (a Vary marker's generation); concurrent misses on one key make one Redis read (the
  fill lock is taken before L2 is asked); Redis killed: the cache goes on without L2
  (one log line per worker, cache_l2_operations_total{result="failed"}), and stores to
  Redis again once it is back."""

import copy
import os
import re
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reload"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__))))
import reloadtest as RT  # noqa: E402
from reloadtest import H  # noqa: E402
from test_lua_redis import Redis  # noqa: E402

WORKERS = 2


def route(prefix, plugins=(), upstream="o"):
    return {"match": {"prefix": prefix}, "upstream": upstream, "plugins": list(plugins),
            "strip_prefix": True}


def metric(text, name, **labels):
    """The value of one series in a Prometheus text page (0 when absent)."""
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    for line in text.split("\n"):
        m = re.match(r"^(\w+)\{([^}]*)\} (\S+)$", line)
        if m and m.group(1) == name:
            got = ",".join(sorted(m.group(2).split(",")))
            if got == want:
                return float(m.group(3))
    return 0


class FleetRedisTest(RT.ReloadTestCase):
    """Three instances, one Redis: rate limits, fallbacks, sticky choices."""

    # GCRA loses capacity only when no request comes for about BURST / RATE seconds (see
    # test_protection.RedisLimitsTest): with these a stall of 1.5 s of every client (a
    # loaded machine, the ASan build) loses nothing, so the admitted count is the limit's.
    RATE = 40
    BURST = 60
    DURATION = 8.0

    @classmethod
    def setUpClass(cls):
        cls.redis = Redis()
        cls.addClassCleanup(cls.redis.stop)
        cls.redis.start()
        cls.origins = [cls.start_origin("o%d" % i) for i in range(3)]
        # A slow machine must not make Redis look down during the shared runs.
        redis = {"port": cls.redis.port, "timeout": int(H.T(5000))}

        def rl(ident, rate, **kw):
            p = {"name": "rate_limit", "id": ident, "rate": rate, "policy": "redis",
                 "redis": redis, "log_interval": 60, "retry_interval": 0.2}
            p.update(kw)
            return p
        routes = [
            route("/rl/", [rl("fleet", cls.RATE, burst=cls.BURST)]),
            route("/open/", [rl("open", 1, period=600, fallback="allow")]),
            route("/closed/", [rl("closed", 1000, burst=1000, fallback="deny")]),
            route("/one/", [rl("one", 1, period=600)]),
            route("/ab/", [{"name": "ab", "sticky": "header", "header": "X-User-Id",
                            "response_header": "X-Arm",
                            "arms": [{"name": "a", "upstream": "a", "weight": 1},
                                     {"name": "b", "upstream": "b", "weight": 2},
                                     {"name": "c", "upstream": "c", "weight": 3}]}]),
            route("/abc/", [{"name": "ab", "sticky": "cookie", "response_header": "X-Arm",
                             "arms": [{"name": "a", "upstream": "a"},
                                      {"name": "b", "upstream": "b"},
                                      {"name": "c", "upstream": "c"}]}]),
            route("/hash/", upstream="h"),
        ]
        o = [x.address() for x in cls.origins]
        cls.upstreams = {"o": H.upstream(o[0]), "a": H.upstream(o[0]), "b": H.upstream(o[1]),
                         "c": H.upstream(o[2]),
                         "h": H.upstream(*o, balance="hash", hash_on="header:X-Key")}
        cls.routes = routes
        cls.proxies = [
            cls.start_reload_proxy(cls.upstreams, routes, workers=WORKERS,
                                   shared={"rate_limit": "1m"}, name="fleet%d" % i)
            for i in range(3)]
        cls.proxy = cls.proxies[0]

    def metrics(self, p):
        r = self.admin("GET", "/metrics", proxy=p)
        self.assertEqual(r.status, 200)
        return r.body.decode()

    # ------------------------------------------------------------------ rate limit

    def test_a_rate_limit_holds_within_5_percent_across_three_instances(self):
        counts, errors, spans = H.load_clients([p.port for p in self.proxies], "/rl/fixed",
                                               self.DURATION)
        self.assertEqual(errors, [])
        self.assertEqual(set(counts) - {200, 429}, set(), counts)
        # The bucket's burst at once, then RATE per second from the first decision to the
        # last. The first was made while the earliest first request was in flight, the last
        # while the latest last one was: each is taken at the middle of its round trip (a
        # loaded machine's round trips are long enough to matter at 5%).
        t0 = min((a + b) / 2 for (a, b), _ in spans)
        t1 = max((a + b) / 2 for _, (a, b) in spans)
        elapsed = t1 - t0
        expected = self.RATE * elapsed + self.BURST + 1
        self.assertGreater(counts.get(429, 0), counts.get(200, 0), "the load went over the limit")
        print("\nredis rate limit across 3 instances: %d allowed, %d refused in %.2f s "
              "(expected %.0f: %+.1f%%)" % (counts[200], counts[429], elapsed, expected,
                                             100.0 * (counts[200] - expected) / expected))
        self.assertLess(abs(counts[200] - expected) / expected, 0.05,
                        "allowed %d in %.1f s, expected about %.0f" % (counts[200], elapsed,
                                                                      expected))
        # Nothing was decided by a fallback.
        for p in self.proxies:
            self.assertEqual(metric(self.metrics(p), "rate_limit_redis_failures_total",
                                    limit="fleet"), 0)

    # ------------------------------------------------------------------ sticky choices

    def choices(self, p, keys):
        """For each key: (the ab arm by header, the hash balancer's target) on proxy p."""
        out = {}
        with H.Client(p.port, timeout=H.T(10)) as c:
            for k in keys:
                r1 = c.request("GET", "/ab/fixed", headers=[("X-User-Id", k)])
                r2 = c.request("GET", "/hash/fixed", headers=[("X-Key", k)])
                self.assertEqual((r1.status, r2.status), (200, 200))
                out[k] = (r1.header("X-Arm"), r2.header("X-Origin-Id"))
        return out

    def test_b_sticky_choices_are_the_same_on_every_instance_and_after_a_restart(self):
        keys = ["user-%d" % i for i in range(300)]
        first = self.choices(self.proxies[0], keys)
        arms = [a for a, _ in first.values()]
        targets = [t for _, t in first.values()]
        # Every arm and target is used, roughly by weight (a: 1/6, c: 1/2 of 300 keys).
        self.assertEqual(set(arms), {"a", "b", "c"})
        self.assertEqual(set(targets), {"o0", "o1", "o2"})
        self.assertLess(arms.count("a"), arms.count("c"))
        for p in self.proxies[1:]:
            self.assertEqual(self.choices(p, keys), first, "instance %s" % p.dir)
        # An instance started afresh from the same config (a restart, a new machine).
        fresh = H.Proxy(copy.deepcopy(self.proxies[2].cfg), name="fleet-restarted")
        self.addCleanup(fresh.stop)
        fresh.start()
        self.assertEqual(self.choices(fresh, keys), first, "a restarted instance")
        # sticky = cookie: the first visit draws an arm, the cookie then names it, and every
        # instance honours it.
        r = H.get(self.proxies[0].port, "/abc/fixed")
        cookie = r.header("Set-Cookie").split(";", 1)[0]
        arm = r.header("X-Arm")
        self.assertEqual(cookie, "lp_ab=" + arm)
        for p in self.proxies + [fresh]:
            for _ in range(5):
                r = H.get(p.port, "/abc/fixed", headers=[("Cookie", cookie)])
                self.assertEqual(r.header("X-Arm"), arm)
                self.assertIsNone(r.header("Set-Cookie"))

    # ------------------------------------------------------------------ Redis down, then back

    def test_z_redis_killed_fallbacks_then_shared_again(self):
        """Runs last: it kills redis-server, then starts it again on the same port."""
        port = self.redis.port
        self.redis.kill()
        n = 12
        for p in self.proxies:
            with H.Client(p.port, timeout=H.T(10)) as c:
                # allow: fails open (rate 1 per 600 s would refuse the second).
                self.assertEqual([c.request("GET", "/open/fixed").status for _ in range(n)],
                                 [200] * n)
                # deny: fails closed (1000 per second would allow them all).
                self.assertEqual([c.request("GET", "/closed/fixed").status for _ in range(n)],
                                 [429] * n)
                # local: each instance counts alone (in the dict its workers share): its
                # burst at once, then the rate; asked until a 429 comes (a slow machine only
                # makes that take longer).
                start = time.monotonic()
                codes = []
                while 429 not in codes and time.monotonic() - start < H.T(30):
                    codes.append(c.request("GET", "/rl/fixed").status)
                elapsed = time.monotonic() - start
            self.assertEqual(set(codes), {200, 429}, codes)
            self.assertGreaterEqual(codes.count(200), self.BURST + 1)
            self.assertLessEqual(codes.count(200), self.BURST + 1 + self.RATE * elapsed + 1,
                                 "the local fallback holds the rate")
            text = self.metrics(p)
            # Every degraded decision is counted (failed attempts and the ones made without
            # asking Redis within retry_interval alike).
            self.assertEqual(metric(text, "rate_limit_redis_failures_total", limit="open"), n)
            self.assertEqual(metric(text, "rate_limit_redis_failures_total", limit="closed"), n)
            self.assertEqual(metric(text, "rate_limit_redis_failures_total", limit="fleet"),
                             len(codes))
            self.assertEqual(metric(text, "rate_limit_requests_total", limit="closed",
                                    result="refused"), n)
            # Logged once per worker at most (log_interval 60), not once per request.
            lines = self.log_lines("rate_limit: Redis 127.0.0.1:%d failed" % port, proxy=p)
            self.assertGreaterEqual(len(lines), 1)
            self.assertLessEqual(len(lines), WORKERS, lines)
        # Redis back: the limit is shared again (within retry_interval). /one/ allows one
        # request per 600 s for the whole fleet: once a request has been decided by Redis
        # again (its key is there), every other instance refuses.
        self.redis.start(port)

        def shared_again():
            r = H.get(self.proxies[0].port, "/one/fixed")
            return r.status in (200, 429) and bool(self.redis.command("KEYS", "luaproxy:rl:*one*"))
        H.wait_for(shared_again, H.T(10), what="the /one/ limit decided by Redis again")
        for p in self.proxies[1:]:
            # Each worker of p asks Redis again after retry_interval (0.2 s); until then its
            # local fallback decides. Shared again: four requests in a row refused, none of
            # them by a fallback (the degraded count does not move).
            def refused_by_redis():
                before = metric(self.metrics(p), "rate_limit_redis_failures_total", limit="one")
                codes = [H.get(p.port, "/one/fixed").status for _ in range(4)]
                after = metric(self.metrics(p), "rate_limit_redis_failures_total", limit="one")
                return (codes == [429] * 4 and after == before) or None
            H.wait_for(refused_by_redis, H.T(10), what="refusals decided by Redis again")


def probe_plugin(name, priority, phase):
    """A plugin counting the requests it sees in `phase`, by path, in probe_NAME_total."""
    return """
local P = { name = "l2_%s", priority = %d, schema = {} }
local m
function P.init_worker() m = proxy.metrics.counter("probe_%s_total", "Seen.", { "path" }) end
function P.%s(req) m:inc(1, req:path()) end
return P
""" % (name, priority, name, phase)


# Where a request is, seen from outside: counted before the cache's request phase (priority
# 60 > the cache's 50) and after its log phase (10), whose L2 store has then ended (or was
# not made).
PROBES = {"l2_arrived": probe_plugin("arrived", 60, "request"),
          "l2_logged": probe_plugin("logged", 10, "log")}


class HoldingRelay:
    """A TCP relay to Redis that can hold Redis's answers back: armed, the first GET it passes
    closes the gate, and nothing Redis says reaches the proxy until release(). That read is
    then in flight for as long as the test needs, with no guess at how long."""

    def __init__(self, port):
        self.target = port
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.gate = threading.Event()
        self.gate.set()
        self.armed = False
        self.got_get = threading.Event()
        self.lock = threading.Lock()
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.srv.accept()
                r = socket.create_connection(("127.0.0.1", self.target), timeout=H.T(5))
            except OSError:
                if self.srv.fileno() < 0:
                    return
                continue
            r.settimeout(None)
            with self.lock:
                self.socks += [c, r]
            threading.Thread(target=self._pump, args=(c, r, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(r, c, False), daemon=True).start()

    def _pump(self, src, dst, to_redis):
        tail = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if to_redis:
                    seen = tail + data.lower()
                    tail = seen[-8:]
                    with self.lock:
                        if self.armed and b"\r\nget\r\n" in seen:
                            self.armed = False
                            self.gate.clear()  # before Redis can answer it
                            self.got_get.set()
                else:
                    self.gate.wait(H.T(60))
                dst.sendall(data)
        except OSError:
            pass
        for x in (src, dst):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def hold_next_get(self):
        with self.lock:
            self.armed = True

    def release(self):
        self.gate.set()

    def stop(self):
        self.gate.set()
        self.srv.close()
        with self.lock:
            for x in self.socks:
                x.close()


class FleetCacheL2Test(RT.ReloadTestCase):
    """Two instances sharing a cache L2 tier in one Redis."""

    @classmethod
    def setUpClass(cls):
        cls.redis = Redis()
        cls.addClassCleanup(cls.redis.stop)
        cls.redis.start()
        cls.origin = H.ScriptedOrigin()
        cls.addClassCleanup(cls.origin.stop)
        cls.plugdir = H.Workdir.new("l2-probes")
        for name, text in PROBES.items():
            with open(os.path.join(cls.plugdir, name + ".lua"), "w") as f:
                f.write(text)
        cls.proxies = [cls.l2_proxy("l2-%d" % i, cls.redis.port) for i in range(2)]
        cls.proxy = cls.proxies[0]

    @classmethod
    def l2_proxy(cls, name, port, timeout=5):
        cache = {"name": "cache", "zone": "t", "lock_timeout": H.T(timeout),
                 "l2": {"redis": {"port": port, "timeout": int(H.T(timeout * 1000))},
                        "max_object_size": "64k", "ttl_max": 300, "log_interval": 60}}
        return cls.start_reload_proxy(
            {"o": H.upstream(cls.origin.address())},
            [{"match": {"prefix": "/"}, "upstream": "o",
              "plugins": [{"name": "l2_arrived"}, cache, {"name": "l2_logged"}]}],
            workers=WORKERS, name=name, cache={"zones": {"t": {"memory": "16m"}}},
            lua={"plugin_paths": [RT.FIXTURE_PLUGINS, cls.plugdir]})

    def probe(self, p, name, path):
        text = self.admin("GET", "/metrics", proxy=p).body.decode()
        return metric(text, "probe_%s_total" % name, path=path)

    def l2_stored(self, p):
        text = self.admin("GET", "/metrics", proxy=p).body.decode()
        return metric(text, "cache_l2_operations_total", zone="t", result="stored")

    def rkeys(self, pattern):
        return self.redis.command("KEYS", "luaproxy:cache:t:*" + pattern + "*") or []

    def wait_in_redis(self, pattern, n=1):
        # The copy to Redis is made in the log phase, after the client got its answer.
        H.wait_for(lambda: len(self.rkeys(pattern)) >= n or None, H.T(10),
                   what="%d L2 keys for %s" % (n, pattern))

    def get(self, i, path, headers=None):
        r = H.get(self.proxies[i].port, path, headers=headers, timeout=H.T(10))
        self.assertEqual(r.status, 200, r.body)
        return r

    def test_a_stored_by_one_instance_is_a_hit_on_the_other(self):
        self.origin.script("/obj", lambda req, n: H.cacheable(b"body %d" % n,
                                                              ("ETag", '"v%d"' % n)))
        r = self.get(0, "/obj")
        self.assertEqual(r.body, b"body 1")
        self.assertIn("fwd=uri-miss", r.header("Cache-Status"))
        self.assertIn("stored", r.header("Cache-Status"))
        self.wait_in_redis("/obj")
        ttl = self.redis.command("TTL", self.rkeys("/obj")[0])
        self.assertTrue(290 <= ttl <= 300, ttl)  # ttl_max bounds max-age=3600
        r = self.get(1, "/obj")
        self.assertEqual(r.body, b"body 1")
        self.assertEqual(r.header("ETag"), '"v1"')
        self.assertRegex(r.header("Cache-Status"), r"^luaproxy; hit; ttl=\d+; detail=l2$")
        self.assertEqual(self.origin.count("/obj"), 1)
        # Then a memory hit in whichever worker it landed (or an L2 hit in the other one).
        for _ in range(4):
            r = self.get(1, "/obj")
            self.assertEqual(r.body, b"body 1")
            self.assertIn("; hit", r.header("Cache-Status"))
        self.assertEqual(self.origin.count("/obj"), 1)
        # A large object stays out of Redis (64k): the other instance asks the origin. Both
        # asked once the log phase that would have stored it has ended.
        big = b"x" * (100 * 1024)
        self.origin.script("/big", lambda req, n: H.cacheable(big))
        stored = self.l2_stored(self.proxies[0])
        self.assertEqual(self.get(0, "/big").body, big)
        H.wait_for(lambda: self.probe(self.proxies[0], "logged", "/big") >= 1, H.T(10),
                   what="the log phase of /big")
        self.assertEqual(self.l2_stored(self.proxies[0]), stored)
        self.assertEqual(self.rkeys("/big"), [])
        self.assertEqual(self.get(1, "/big").body, big)
        self.assertEqual(self.origin.count("/big"), 2)

    def test_b_vary_variants_go_only_to_their_requests(self):
        self.origin.script("/vary", lambda req, n: H.cacheable(
            ("lang=%s #%d" % (req.header("Accept-Language"), n)).encode(),
            ("Vary", "Accept-Language")))
        en = [("Accept-Language", "en")]
        fr = [("Accept-Language", "fr")]
        self.assertEqual(self.get(0, "/vary", en).body, b"lang=en #1")
        self.wait_in_redis("/vary", 2)  # the Vary marker and the en variant
        r = self.get(1, "/vary", fr)
        self.assertEqual(r.body, b"lang=fr #2")
        self.assertIn("fwd=uri-miss", r.header("Cache-Status"))
        r = self.get(1, "/vary", en)
        self.assertEqual(r.body, b"lang=en #1")
        self.assertIn("; hit", r.header("Cache-Status"))
        # The Host is part of the key: another host's request is not answered from it.
        r = H.get(self.proxies[1].port, "/vary", host="b.test", headers=en, timeout=H.T(10))
        self.assertEqual(r.body, b"lang=en #3")
        self.assertEqual(self.origin.count("/vary"), 3)

    def marker(self, path):
        return self.redis.command("GET", "luaproxy:cache:t:GET http://a.test" + path)

    def test_c_an_invalidation_orphans_the_variants_of_a_varying_key(self):
        def answer(req, n):
            if req.method != "GET":
                return H.simple_response(204, b"", [])
            return H.cacheable(("lang=%s #%d" % (req.header("Accept-Language"), n)).encode(),
                               ("Vary", "Accept-Language"))
        self.origin.script("/inv", answer)
        en = [("Accept-Language", "en")]
        fr = [("Accept-Language", "fr")]
        self.assertEqual(self.get(0, "/inv", en).body, b"lang=en #1")
        self.wait_in_redis("/inv", 2)  # the marker and the en variant
        first = self.marker("/inv")
        self.assertRegex(first, r"^LPV2\n[0-9a-f]+\nAccept-Language$")
        # An unsafe method through instance 0: its memory entry and the Redis marker go.
        r = H.get(self.proxies[0].port, "/inv", method="POST", body=b"x", timeout=H.T(10))
        self.assertEqual(r.status, 204)
        H.wait_for(lambda: self.marker("/inv") is None or None, H.T(10),
                   what="the marker deleted")
        # The fr variant stored by instance 1 makes a new marker...
        self.assertEqual(self.get(1, "/inv", fr).body, b"lang=fr #3")
        H.wait_for(lambda: self.marker("/inv") not in (None, first) or None, H.T(10),
                   what="a new marker")
        # ...through which the en variant stored before the invalidation is not reachable.
        r = self.get(1, "/inv", en)
        self.assertEqual(r.body, b"lang=en #4")
        # Instance 1 holds the fr variant: a miss of another variant (RFC 9211 vary-miss).
        self.assertIn("fwd=vary-miss", r.header("Cache-Status"))
        self.assertEqual(self.origin.count("/inv"), 4)

    def commandstats(self):
        text = self.redis.command("INFO", "commandstats")
        return {m.group(1): int(m.group(2))
                for m in re.finditer(r"^cmdstat_(\w+):calls=(\d+)", text, re.M)}

    def test_d_concurrent_misses_make_one_redis_read(self):
        self.origin.script("/co", lambda req, n: H.cacheable(b"co %d" % n))
        self.assertEqual(self.get(0, "/co").body, b"co 1")
        self.wait_in_redis("/co")
        # A third instance reads Redis through a relay that holds the answer to the first
        # request's read until every other request has reached the cache (each would read
        # Redis too if it did not wait on the fill lock).
        relay = HoldingRelay(self.redis.port)
        self.addCleanup(relay.stop)
        p = self.l2_proxy("l2-held", relay.port, timeout=30)
        self.addCleanup(p.stop)
        self.redis.command("CONFIG", "RESETSTAT")
        relay.hold_next_get()
        n = 24
        results = [None] * n

        def one(i):
            results[i] = H.get(p.port, "/co", timeout=H.T(40))
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        threads[0].start()
        self.assertTrue(relay.got_get.wait(H.T(10)), "the first request read Redis")
        for t in threads[1:]:
            t.start()
        H.wait_for(lambda: self.probe(p, "arrived", "/co") >= n, H.T(20),
                   what="every request at the cache")
        relay.release()
        for t in threads:
            t.join(H.T(60))
        for r in results:
            self.assertIsNotNone(r)
            self.assertEqual((r.status, r.body), (200, b"co 1"))
        self.assertEqual(self.origin.count("/co"), 1)
        stats = self.commandstats()
        self.assertEqual(stats.get("get", 0), 1, stats)
        # The first was the L2 hit, the others waited for it (none came after its fill).
        self.assertIn("detail=l2", results[0].header("Cache-Status"))
        for r in results[1:]:
            self.assertIn("collapsed", r.header("Cache-Status"))

    def test_z_redis_down_skips_l2_then_back(self):
        port = self.redis.port
        self.redis.kill()
        for i in range(5):
            self.origin.script("/down%d" % i, lambda req, n: H.cacheable(b"down %d" % n))
            self.assertEqual(self.get(1, "/down%d" % i).body, b"down 1")
        for p in (self.proxies[1],):
            text = self.admin("GET", "/metrics", proxy=p).body.decode()
            self.assertGreaterEqual(metric(text, "cache_l2_operations_total", zone="t",
                                           result="failed"), 5)
            lines = self.log_lines("cache: Redis L2 127.0.0.1:%d failed" % port, proxy=p)
            self.assertGreaterEqual(len(lines), 1)
            self.assertLessEqual(len(lines), WORKERS, lines)
        self.redis.start(port)
        # Back: stores reach Redis again (after retry_interval, 1 s by default).
        n = [0]

        def stored():
            n[0] += 1
            self.origin.script("/back%d" % n[0], lambda req, k: H.cacheable(b"back"))
            self.get(0, "/back%d" % n[0])
            return self.rkeys("/back") or None
        H.wait_for(stored, H.T(10), what="an L2 store after Redis came back")


if __name__ == "__main__":
    H.main()
