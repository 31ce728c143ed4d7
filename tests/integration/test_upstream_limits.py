#!/usr/bin/env python3
"""Upstream limits and DNS targets (README, docs/health.md, docs/balancing.md):
total_timeout across all tries (504, no retry after it), max_pending (requests wait in a
FIFO for max_connections, 503 at once beyond the queue, 503 after pending_timeout), and
targets given as host names (`localhost` resolves to 127.0.0.1 here; a name that does
not resolve is logged and leaves the others serving; answers are applied again every
dns_ttl).

lp_origins answer /delay?ms=N after N ms. One worker: max_connections and the queue are
per worker. Time bounds are generous upper limits, never exact durations."""

import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reload"))
import reloadtest as RT  # noqa: E402
from reloadtest import H  # noqa: E402

# /remove?addr= takes a target out of this worker's set; /targets lists it.
TARGETS = r'''
local P = { name = "targets", priority = 200,
            schema = { fields = { upstream = { type = "string" } } } }
function P.request(req, conf)
  local u = proxy.upstream(conf.upstream)
  if req:path() == "/targets" then return req:respond(200, proxy.json.encode(u:targets())) end
  if req:path() == "/remove" then
    local ok, err = u:remove_target(req:query("addr"))
    return req:respond(ok and 200 or 404, err or "ok")
  end
end
return P
'''


def route(host, upstream, **kw):
    r = {"match": {"host": host, "prefix": "/"}, "upstream": upstream}
    r.update(kw)
    return r


def proxy_has_read(proxy_port, client_port):
    """True when nothing the client on client_port sent waits in the proxy's receive queue
    (/proc/net/tcp): with one worker and no Lua on the route, a request the proxy has read
    is in flight or in the upstream's queue."""
    for local, remote, _, rx_queue in RT.proc_net_tcp():
        if local == proxy_port and remote == client_port:
            return rx_queue == 0
    return True  # the proxy's side is gone: it read the request and answered


class Timed:
    """A request in a thread: .status, .elapsed (seconds), .origin, .conn (lp_origin's
    (X-Conn-Id, X-Conn-Requests): which upstream connection served it, and in what order).
    .sent is set once the request is written: proxy_read() then tells whether the proxy
    has read it."""

    def __init__(self, port, host, path):
        self.status = self.elapsed = self.origin = self.error = self.conn = None
        self.port = port
        self.client_port = None
        self.sent = threading.Event()
        self.t = threading.Thread(target=self._run, args=(port, host, path), daemon=True)
        self.t.start()

    def _run(self, port, host, path):
        t0 = time.monotonic()
        try:
            with H.Client(port, timeout=H.T(20)) as c:
                self.client_port = c.sock.getsockname()[1]
                c.send(H.build_request("GET", path, host=host))
                self.sent.set()
                r = c.read_response()
            self.status, self.origin, self.body = r.status, r.header("X-Origin-Id"), r.body
            if r.header("X-Conn-Id"):
                self.conn = (int(r.header("X-Conn-Id")), int(r.header("X-Conn-Requests")))
        except Exception as e:  # noqa: BLE001
            self.error = repr(e)
        finally:
            self.sent.set()
        self.elapsed = time.monotonic() - t0

    def proxy_read(self):
        """True once the request was written and the proxy has read it (proxy_has_read)."""
        if not self.sent.is_set():
            return False
        return self.client_port is None or proxy_has_read(self.port, self.client_port)

    def wait_read(self):
        H.wait_for(self.proxy_read, H.T(10), what="the proxy reading the request")
        return self

    def join(self):
        self.t.join(H.T(30))
        if self.t.is_alive():
            raise AssertionError("request did not finish")
        return self


class UpstreamLimitsTest(RT.ReloadTestCase):
    @classmethod
    def setUpClass(cls):
        H.require_proxy()
        H.require_origin()
        cls.a = cls.start_origin("a")
        cls.b = cls.start_origin("b")
        a, b = cls.a.address(), cls.b.address()
        # total_timeout against per-try read timeouts of 2 s (a proxy of its own). Each
        # total_timeout ends a request 1.5 s or more before a read timeout would: room for
        # a busy machine (0.5 s late is seen under ASan) between the two outcomes.
        cls.tproxy = cls.start_reload_proxy(
            {"total": H.upstream(a, b, total_timeout=2.5, retries=5),
             "total1": H.upstream(a, total_timeout=0.3)},
            [route("total.test", "total"), route("total1.test", "total1")],
            workers=1, timeouts={"read": 2.0}, name="total")
        # An origin whose /hold answers when the test says so: the slot is provably taken
        # for as long as a test needs it, whatever the machine's load (no delay to outrun).
        cls.release = threading.Event()
        cls.addClassCleanup(cls.release.set)

        def held(req):
            if req.target.startswith("/hold"):
                cls.release.wait(H.T(60))
            return H.simple_response(200, b"ok")
        cls.holder = H.RawOrigin(held)
        cls.addClassCleanup(cls.holder.stop)
        cls.ups = {
            "queue": H.upstream(a, max_connections=1, max_pending=2, pending_timeout=30),
            "held": H.upstream(cls.holder.address(), max_connections=1, max_pending=2,
                               pending_timeout=60),
            "qtime": H.upstream(b, max_connections=1, max_pending=5, pending_timeout=0.3),
            "dns": H.upstream("localhost:%d" % cls.a.port, dns_ttl=0.2),
            "mixed": H.upstream("no-such-host.invalid:%d" % cls.b.port, b, dns_ttl=0.2),
        }
        cls.routes = [
            route("queue.test", "queue"), route("qtime.test", "qtime"),
            route("held.test", "held"),
            route("dns.test", "dns", plugins=[{"name": "targets", "upstream": "dns"}]),
            route("mixed.test", "mixed"),
        ]
        cls.proxy = cls.start_reload_proxy(cls.ups, cls.routes, workers=1,
                                           files={"plugins/targets.lua": TARGETS})

    # ---- total_timeout ----

    def test_total_timeout_ends_the_retries(self):
        # The first try times out after read = 2 s and the GET is retried on the other
        # target, whose try total_timeout = 2.5 s cuts short (its own read timeout would end
        # it at 4 s): 504, and no third try.
        t = Timed(self.tproxy.port, "total.test", "/delay?ms=5000").join()
        self.assertEqual(t.status, 504, t.error)
        self.assertGreater(t.elapsed, 2.45)
        self.assertLess(t.elapsed, 3.9)
        self.assertTrue(self.log_lines("total_timeout reached", proxy=self.tproxy),
                        self.tproxy.stderr()[-2000:])
        self.assertEqual(len(self.log_lines("retrying (try 2)", proxy=self.tproxy)), 1)
        self.assertFalse(self.log_lines("retrying (try 3)", proxy=self.tproxy))

    def test_total_timeout_under_one_slow_try(self):
        # Shorter than the per-try read timeout: 504 at 0.3 s, not at the read timeout's
        # 2 s; a fast answer is untouched.
        t = Timed(self.tproxy.port, "total1.test", "/delay?ms=2000").join()
        self.assertEqual(t.status, 504, t.error)
        self.assertGreater(t.elapsed, 0.25)
        self.assertLess(t.elapsed, 1.9)
        t = Timed(self.tproxy.port, "total1.test", "/delay?ms=50").join()
        self.assertEqual(t.status, 200, t.error)

    # ---- max_connections, max_pending ----

    def test_requests_wait_for_a_slot_in_order(self):
        # Each request is sent once the proxy has read the one before: one in flight (it
        # takes 10 s), then two waiting, in that order.
        first = Timed(self.proxy.port, "queue.test", "/delay?ms=10000").wait_read()
        waiting = [Timed(self.proxy.port, "queue.test", "/delay?ms=10&w=0").wait_read()]
        waiting.append(Timed(self.proxy.port, "queue.test", "/delay?ms=10&w=1").wait_read())
        # One in flight, two waiting: the fourth is refused at once (not queued: it would
        # have waited for a slot, then been served or timed out).
        over = Timed(self.proxy.port, "queue.test", "/fixed?size=10").join()
        self.assertEqual(over.status, 503, over.error)
        self.assertEqual(over.body,
                         b"503 Service Unavailable: too many requests for the upstream "
                         b"(max_connections)\n")
        self.assertIsNone(first.status, "refused while the first was still in flight")
        self.assertEqual(first.join().status, 200)
        for w in waiting:
            self.assertEqual(w.join().status, 200, w.error)
        # One connection at a time to the origin: each waiting request went upstream after
        # the one before it was answered, in the order they came (X-Conn-Id, then the
        # request count on that connection, grow with each request the origin serves).
        order = [first.conn, waiting[0].conn, waiting[1].conn]
        self.assertEqual(order, sorted(order), order)
        self.assertEqual(len(set(order)), 3, order)
        self.assertTrue(self.log_lines("(max_pending): 503"))
        # The queue is empty again: a request goes through at once.
        self.assertEqual(Timed(self.proxy.port, "queue.test", "/fixed?size=10").join().status,
                         200)

    def test_pending_timeout(self):
        # The first request holds the one connection for 10 s; the second, read by the proxy
        # once the first is in flight, waits pending_timeout = 0.3 s and gets 503 (well
        # before the slot frees: it was not served).
        first = Timed(self.proxy.port, "qtime.test", "/delay?ms=10000").wait_read()
        t = Timed(self.proxy.port, "qtime.test", "/fixed?size=10").join()
        self.assertEqual(t.status, 503, t.error)
        self.assertIn(b"(pending_timeout)", t.body)
        self.assertGreater(t.elapsed, 0.25)
        self.assertIsNone(first.status, "the 503 came while the slot was still taken")
        self.assertEqual(first.join().status, 200)
        self.assertTrue(self.log_lines("waited"), self.proxy.stderr()[-2000:])

    def queue_length(self, upstream):
        """The upstream's queue as /metrics shows it (luaproxy_upstream_queue_length): set
        by the worker as a request joins or leaves the queue (upstream_try.c)."""
        r = self.admin("GET", "/metrics")
        self.assertEqual(r.status, 200, r.body)
        want = 'luaproxy_upstream_queue_length{upstream="%s"} ' % upstream
        for line in r.body.decode().splitlines():
            if line.startswith(want):
                return int(float(line[len(want):]))
        self.fail("no %s in /metrics" % want.strip())

    def wait_queue(self, n, what):
        H.wait_for(lambda: self.queue_length("held") == n, H.T(10), what=what)

    def test_a_client_that_leaves_the_queue_frees_its_place(self):
        # The first request holds the only slot (max_connections 1) until the test releases
        # it; each step waits for the state it needs (the origin's requests, the queue
        # gauge), never for time: a loaded machine only makes it slower.
        self.release.clear()
        first = Timed(self.proxy.port, "held.test", "/hold")
        H.wait_for(lambda: [r.target for r in self.holder.requests] == ["/hold"], H.T(10),
                   what="the first request at the origin")
        c = H.Client(self.proxy.port, timeout=H.T(10))
        c.send("GET /left HTTP/1.1\r\nHost: held.test\r\n\r\n")
        self.wait_queue(1, "the second request in the queue")
        c.abort()
        self.wait_queue(0, "the aborted request out of the queue")
        # max_pending 2: two more both wait (with the leaver still counted, the second of
        # them would be refused at once).
        w = [Timed(self.proxy.port, "held.test", "/after?w=%d" % i) for i in range(2)]
        self.wait_queue(2, "two more requests in the queue")
        self.assertEqual([(x.status, x.error) for x in w], [(None, None)] * 2)
        self.assertIsNone(first.status, "the slot is held until the release")
        self.release.set()
        self.assertEqual(first.join().status, 200, first.error)
        self.assertEqual([x.join().status for x in w], [200, 200], [x.error for x in w])
        # The leaver never reached the origin: it left the queue, it was not served.
        self.assertEqual(sorted(r.target for r in self.holder.requests),
                         ["/after?w=0", "/after?w=1", "/hold"])
        self.assertEqual(self.queue_length("held"), 0)
        self.assertAlive()

    # ---- DNS targets ----

    def test_localhost_resolves_and_serves(self):
        r = H.get(self.proxy.port, "/fixed?size=10", host="dns.test")
        self.assertEqual((r.status, r.header("X-Origin-Id")), (200, "a"))
        ups = {u["name"]: u for u in self.admin_json("GET", "/upstreams")["upstreams"]}
        t = ups["dns"]["targets"]
        self.assertEqual(t, [dict(t[0], address=self.a.address(),
                                  name="localhost:%d" % self.a.port)])
        r = H.get(self.proxy.port, "/targets", host="dns.test")
        self.assertEqual([x["address"] for x in json.loads(r.body)], [self.a.address()])

    def test_the_answer_is_applied_again_every_ttl(self):
        # Removed from Lua, the address comes back with the next resolution (dns_ttl 0.2 s).
        r = H.get(self.proxy.port, "/remove?addr=" + self.a.address(), host="dns.test")
        self.assertEqual(r.status, 200, r.body)

        def back():
            r = H.get(self.proxy.port, "/targets", host="dns.test")
            return [x["address"] for x in json.loads(r.body)] == [self.a.address()]
        H.wait_for(back, H.T(5), what="localhost re-resolved")
        self.assertTrue(self.log_lines("localhost:%d resolves to 1 address: %s" %
                                       (self.a.port, self.a.address())))
        r = H.get(self.proxy.port, "/fixed?size=10", host="dns.test")
        self.assertEqual(r.status, 200)

    def test_a_name_that_does_not_resolve(self):
        for _ in range(4):
            r = H.get(self.proxy.port, "/fixed?size=10", host="mixed.test")
            self.assertEqual((r.status, r.header("X-Origin-Id")), (200, "b"))
        # Logged at load, then at each failed re-resolution (sooner than 5 s when empty).
        H.wait_for(lambda: len(self.log_lines("no-such-host.invalid")) >= 2, H.T(10),
                   what="failed resolutions logged")
        self.assertTrue(self.log_lines("cannot resolve"))
        rc, out, err = self.cli("-t")
        self.assertEqual(rc, 0, out + err)  # not a config error


if __name__ == "__main__":
    H.main()
