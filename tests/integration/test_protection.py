#!/usr/bin/env python3
"""The protection plugins through real requests (docs/plugins/rate_limit.md, limit_conn.md,
request_limits.md):

- rate_limit, local policy: burst then 429 with Retry-After and the RateLimit headers,
  counted together by 2 workers, kept across a reload, dry_run;
- rate_limit, redis policy against a real redis-server: two luaproxy instances sharing one
  limit hold the global rate within 5% over a 10 s run; Redis stopped: the local fallback
  and one log line per interval;
- limit_conn: max in flight, 503, slots given back after clients abort mid-request;
- request_limits: a route's body limit above and below the global one (Content-Length and
  chunked), 405 with Allow, 414, 431;
- ip_filter: deny and allow lists for the client address, a 100,000-line CIDR file loaded
  at start and at reload, and a bad file refused at reload with the old lists still serving."""

import json
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


def route(prefix, plugins, **kw):
    r = {"match": {"prefix": prefix}, "upstream": "o", "plugins": plugins,
         "strip_prefix": prefix != "/"}
    r.update(kw)
    return r


def local_routes():
    return [
        route("/rl/", [{"name": "rate_limit", "rate": 1, "period": 5, "burst": 3, "id": "rl"}]),
        route("/dry/fixed", [{"name": "rate_limit", "rate": 1, "dry_run": True}]),
        route("/conn/", [{"name": "limit_conn", "max": 2}]),
        route("/big/", [{"name": "request_limits", "max_body_size": 100000}]),
        route("/small/", [{"name": "request_limits", "max_body_size": 100,
                           "methods": ["GET", "POST"], "max_uri_length": 40,
                           "max_headers": 8}]),
        route("/", []),
    ]


class LocalLimitsTest(RT.ReloadTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("o")
        cls.proxy = cls.start_reload_proxy(
            {"o": H.upstream(cls.origin.address())}, local_routes(), workers=2,
            shared={"rate_limit": "1m", "limit_conn": "1m"}, limits={"max_body_size": 1000})

    def test_rate_limit_burst_then_429_with_headers_across_workers_and_a_reload(self):
        codes = []
        for _ in range(4):  # fresh connections: the two workers take turns
            r = H.get(self.proxy.port, "/rl/fixed")
            codes.append(r.status)
            self.assertEqual(r.header("RateLimit-Policy"), '"rl";q=1;w=5')
        # 1 per 5 s, burst 3: four at once, then refused.
        self.assertEqual(codes, [200] * 4)
        r = H.get(self.proxy.port, "/rl/fixed")
        self.assertEqual(r.status, 429, r.body)
        self.assertEqual(r.body, b"too many requests\n")
        self.assertIn(r.header("Retry-After"), ("1", "2", "3", "4", "5"))
        self.assertRegex(r.header("RateLimit"), r'^"rl";r=0;t=(1[5-9]|20)$')
        # Decisions are counted on GET /metrics, summed over the workers.
        m = self.admin("GET", "/metrics").body.decode()
        self.assertIn('rate_limit_requests_total{limit="rl",result="allowed"} 4', m)
        self.assertIn('rate_limit_requests_total{limit="rl",result="refused"} 1', m)
        # The counts live in the shared dict: a reload keeps them.
        self.reload()
        self.assertEqual(H.get(self.proxy.port, "/rl/fixed").status, 429)
        # They refill at the rate.
        H.wait_for(lambda: H.get(self.proxy.port, "/rl/fixed").status == 200, H.T(10),
                   what="a refilled token")

    def test_dry_run_only_logs(self):
        for _ in range(3):
            self.assertEqual(H.get(self.proxy.port, "/dry/fixed").status, 200)
        H.wait_for(lambda: "rate_limit: would refuse ip:127.0.0.1 (dry run)" in self.proxy.stderr(),
                   H.T(5), what="the dry-run line in the error log")

    def test_limit_conn_refuses_beyond_max_and_frees_slots_of_aborted_clients(self):
        # Two slow requests hold both slots; their clients give up mid-request.
        socks = []
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=H.T(5))
            s.sendall(b"GET /conn/delay?ms=20000 HTTP/1.1\r\nHost: a\r\n\r\n")
            socks.append(s)
        # Both must hold their slot before the first probe: a probe counted between them
        # would take the second slot and leave one of them refused instead.
        H.wait_for(lambda: re.search(r'limit_conn_requests_total\{[^}]*result="allowed"\} 2\b',
                                     self.admin("GET", "/metrics").body.decode()),
                   H.T(5), what="both slow requests counted by limit_conn")
        for s in socks:
            s.setblocking(False)
            try:
                self.assertFalse(s.recv(1), "a slow request was answered early")
            except BlockingIOError:
                pass
            s.setblocking(True)
        H.wait_for(lambda: H.get(self.proxy.port, "/conn/fixed").status == 503, H.T(5),
                   what="the third request refused")
        r = H.get(self.proxy.port, "/conn/fixed")
        self.assertEqual(r.status, 503)
        self.assertEqual(r.body, b"too many requests in flight\n")
        for s in socks:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()  # a reset: the client is gone
        H.wait_for(lambda: H.get(self.proxy.port, "/conn/fixed").status == 200, H.T(5),
                   what="slots given back after the aborts")
        # Both slots, not one: two requests in flight at once are allowed again.
        results = []

        def slow():
            results.append(H.get(self.proxy.port, "/conn/delay?ms=300").status)
        ts = [threading.Thread(target=slow) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(H.T(10))
        self.assertEqual(sorted(results), [200, 200])

    def test_request_limits_body_size_per_route(self):
        # Above the global 1000 bytes on /big/, below it on /small/.
        r = H.get(self.proxy.port, "/big/echo", method="POST", body=b"x" * 5000)
        self.assertEqual(len(r.body), 5000)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(H.get(self.proxy.port, "/", method="POST", body=b"x" * 5000).status, 413)
        self.assertEqual(H.get(self.proxy.port, "/small/echo", method="POST", body=b"x" * 100).status,
                         200)
        self.assertEqual(H.get(self.proxy.port, "/small/echo", method="POST", body=b"x" * 101).status,
                         413)
        # A chunked body learns its size as it goes.
        chunked = b"96\r\n" + b"y" * 150 + b"\r\n0\r\n\r\n"
        resp, _, c = H.raw_exchange(
            self.proxy.port,
            b"POST /small/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
        c.close()
        self.assertIsNotNone(resp)
        self.assertEqual(resp.status, 413)

    def test_request_limits_methods_uri_and_headers(self):
        r = H.get(self.proxy.port, "/small/", method="DELETE")
        self.assertEqual(r.status, 405)
        self.assertEqual(r.header("Allow"), "GET, HEAD, POST")
        self.assertEqual(H.get(self.proxy.port, "/small/" + "a" * 40).status, 414)
        many = {"X-%d" % i: "v" for i in range(10)}
        self.assertEqual(H.get(self.proxy.port, "/small/", headers=many).status, 431)
        self.assertEqual(H.get(self.proxy.port, "/small/fixed").status, 200)


# A plugin whose response_body filter fails once the response started (it answers locally
# in the request phase, then its filter raises): the connection closes, and limit_conn's
# slot must still come back (the log phase runs for requests cut short).
FAILING_FILTER = """
return {
  name = "failing_filter", priority = 10, schema = { fields = {} },
  request = function(req)
    proxy.log.warn("failing_filter: answering")
    return req:respond(200, string.rep("x", 100))
  end,
  response_body = function(req, chunk) error("the filter fails") end,
}
"""


class FilterFailureTest(RT.ReloadTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("o")
        cls.proxy = cls.start_reload_proxy(
            {"o": H.upstream(cls.origin.address())},
            [route("/f/", [{"name": "limit_conn", "max": 1}, {"name": "failing_filter"}]),
             route("/", [])],
            workers=1, shared={"limit_conn": "1m"},
            files={"plugins/failing_filter.lua": FAILING_FILTER})

    def test_a_failed_filter_gives_the_slot_back(self):
        for _ in range(3):
            try:
                H.get(self.proxy.port, "/f/x")
            except (OSError, H.PeerClosed):
                pass  # the response is cut: that is the point
        # Each time the slot was free again: every request passed limit_conn and reached the
        # plugin's request phase (a slot kept would have refused the next ones with 503).
        self.assertEqual(self.proxy.stderr().count("failing_filter: answering"), 3,
                         self.proxy.stderr()[-2000:])


class ClientAbortCloseTest(RT.ReloadTestCase):
    """client_abort = "close": a client that closes (FIN, not a reset) while its request
    waits for the upstream is gone: 499, and limit_conn's slot comes back at once."""

    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("o")
        cls.proxy = cls.start_reload_proxy(
            {"o": H.upstream(cls.origin.address())},
            [route("/conn/", [{"name": "limit_conn", "max": 1}]), route("/", [])],
            workers=1, shared={"limit_conn": "1m"}, client_abort="close",
            access_log=os.path.join(H.Workdir.new("abort"), "access.log"))

    def test_a_client_closing_while_waiting_frees_its_slot(self):
        def allowed():
            m = re.search(r'limit_conn_requests_total\{[^}]*result="allowed"\} (\d+)',
                          self.admin("GET", "/metrics").body.decode())
            return int(m.group(1)) if m else 0

        for _ in range(3):
            before = allowed()
            s = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=H.T(5))
            s.sendall(b"GET /conn/delay?ms=20000 HTTP/1.1\r\nHost: a\r\n\r\n")
            # The slow request holds the slot before the first probe (a probe first would
            # take it and leave the slow one refused).
            H.wait_for(lambda: allowed() == before + 1, H.T(5), what="the slow request counted")
            H.wait_for(lambda: H.get(self.proxy.port, "/conn/fixed").status == 503, H.T(5),
                       what="the slot taken")
            s.close()  # a FIN, as curl -m gives up
            H.wait_for(lambda: H.get(self.proxy.port, "/conn/fixed").status == 200, H.T(5),
                       what="the slot given back after the client closed")
        H.wait_for(lambda: len([l for l in self.proxy.access_lines() if " 499 " in l]) >= 3,
                   H.T(5), what="three requests logged 499")


class IpFilterTest(RT.ReloadTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("o")
        cls.dir = H.Workdir.new("ipfilter")
        cls.big = os.path.join(cls.dir, "deny.txt")
        with open(cls.big, "w") as f:
            f.write("# generated: 100,000 prefixes, none containing 127.0.0.0/8\n")
            for i in range(100000):
                f.write("%d.%d.%d.0/24\n" % (10 + i % 100, (i // 100) % 256, i % 256))
        cls.proxy = cls.start_reload_proxy(
            {"o": H.upstream(cls.origin.address())}, cls.routes(cls.big), workers=2)

    @staticmethod
    def routes(deny_file):
        return [
            route("/deny-me/", [{"name": "ip_filter", "deny": ["127.0.0.0/8"]}]),
            route("/allow-other/", [{"name": "ip_filter", "allow": ["192.0.2.0/24", "::1"],
                                     "status": 404, "message": "nothing here\n"}]),
            route("/allow-me/", [{"name": "ip_filter", "allow": ["127.0.0.1"],
                                  "deny": ["127.0.0.0/8"]}]),
            route("/big/", [{"name": "ip_filter", "deny_file": deny_file}]),
            route("/", []),
        ]

    def test_lists_decide_by_the_most_specific_entry(self):
        r = H.get(self.proxy.port, "/deny-me/fixed")
        self.assertEqual((r.status, r.body), (403, b"forbidden\n"))
        r = H.get(self.proxy.port, "/allow-other/fixed")
        self.assertEqual((r.status, r.body), (404, b"nothing here\n"))
        self.assertEqual(H.get(self.proxy.port, "/allow-me/fixed").status, 200)
        self.assertEqual(H.get(self.proxy.port, "/fixed").status, 200)

    def test_a_large_file_loads_and_a_bad_one_is_refused_at_reload(self):
        self.assertEqual(H.get(self.proxy.port, "/big/fixed").status, 200)
        bad = os.path.join(self.dir, "bad.txt")
        with open(bad, "w") as f:
            f.write("10.0.0.0/8\n127.0.0.0/8\n300.1.2.3/8\n")
        self.rewrite(routes=self.routes(bad))
        j = self.reload_fails()
        self.assertIn('bad.txt:3: \\"300.1.2.3/8\\" is not an address or CIDR', json.dumps(j))
        # The old lists still serve.
        self.assertEqual(H.get(self.proxy.port, "/big/fixed").status, 200)
        with open(bad, "w") as f:
            f.write("10.0.0.0/8\n127.0.0.0/8\n")
        self.reload()
        self.assertEqual(H.get(self.proxy.port, "/big/fixed").status, 403)
        self.rewrite(routes=self.routes(self.big))
        self.reload()
        self.assertEqual(H.get(self.proxy.port, "/big/fixed").status, 200)


class RedisLimitsTest(RT.ReloadTestCase):
    """Two proxies, one Redis: the limit holds for both together."""

    # GCRA loses capacity only when no request comes for about BURST / RATE seconds: with
    # these, a stall of a whole second of both proxies and all four clients (a loaded
    # machine) still loses nothing, so the admitted count is the limit's, not the machine's.
    RATE = 20
    BURST = 20

    @classmethod
    def setUpClass(cls):
        cls.redis = Redis()
        cls.addClassCleanup(cls.redis.stop)
        cls.redis.start()
        cls.origin = cls.start_origin("o")
        plugin = {"name": "rate_limit", "rate": cls.RATE, "burst": cls.BURST, "id": "global",
                  # A slow machine must not make Redis look down during the shared run: it
                  # would switch to the fallback there (and log it before the test means to).
                  "policy": "redis", "redis": {"port": cls.redis.port,
                                               "timeout": int(H.T(5000))},
                  "log_interval": 60}
        routes = [route("/", [plugin])]
        cls.proxies = [
            cls.start_reload_proxy({"o": H.upstream(cls.origin.address())}, routes, workers=1,
                                   shared={"rate_limit": "1m"}, name="redis%d" % i)
            for i in range(2)]
        cls.proxy = cls.proxies[0]

    def test_two_instances_share_one_rate_within_5_percent_and_fall_back_when_redis_stops(self):
        counts, errors, spans = H.load_clients([p.port for p in self.proxies], "/fixed", 10.0)
        self.assertEqual(errors, [])
        # Every decision was made between the first request sent and the last answer read.
        elapsed = max(b for _, (_, b) in spans) - min(a for (a, _), _ in spans)
        self.assertEqual(set(counts) - {200, 429}, set(), counts)
        expected = self.RATE * elapsed + self.BURST + 1
        self.assertGreater(counts.get(429, 0), counts.get(200, 0), "the load went over the limit")
        self.assertLess(abs(counts[200] - expected) / expected, 0.05,
                        "allowed %d in %.1f s, expected about %.0f" % (counts[200], elapsed, expected))
        # Redis gone: each proxy counts locally, and logs it once (per interval).
        self.redis.stop()
        for p in self.proxies:
            self.assert_local_fallback(p)
            self.wait_log("rate_limit: Redis 127.0.0.1:%d failed" % self.redis.port, proxy=p)
            self.assertEqual(len(self.log_lines("rate_limit: Redis", proxy=p)), 1)

    def assert_local_fallback(self, p):
        """p's local count: its burst at once, then 429 once requests come faster than the
        rate, and never more than the rate allows. Clients keep asking until a 429 comes,
        so a slow machine (requests further apart than 1/RATE) only makes it take longer."""
        start = time.monotonic()
        with H.Client(p.port, timeout=H.T(10)) as c:
            codes = [c.request("GET", "/fixed").status for _ in range(self.BURST + 1)]
        self.assertEqual(codes, [200] * (self.BURST + 1), "the burst, counted locally")
        counts = {200: self.BURST + 1}
        errors = []
        refused = threading.Event()
        lock = threading.Lock()

        def load():
            try:
                with H.Client(p.port, timeout=H.T(10)) as c:
                    while not refused.is_set() and time.monotonic() - start < H.T(30):
                        status = c.request("GET", "/fixed").status
                        with lock:
                            counts[status] = counts.get(status, 0) + 1
                        if status == 429:
                            refused.set()
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        ts = [threading.Thread(target=load) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(H.T(60))
        elapsed = time.monotonic() - start
        self.assertEqual(errors, [])
        self.assertEqual(set(counts) - {200, 429}, set(), counts)
        self.assertTrue(refused.is_set(), "no 429 from the local fallback: %r" % counts)
        self.assertLessEqual(counts[200], self.BURST + 1 + self.RATE * elapsed + 1,
                             "the local fallback holds the rate: %r in %.2f s" % (counts, elapsed))

    def wait_log(self, needle, proxy):
        return H.wait_for(lambda: needle in proxy.stderr(), H.T(5),
                          what=repr(needle) + " in the error log:\n" + proxy.stderr()[-3000:])


if __name__ == "__main__":
    H.main()
