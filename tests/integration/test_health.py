#!/usr/bin/env python3
"""Upstream health (docs/health.md): active HTTP and TCP checks, passive ejection with
back-off, failover without client errors when one of three origins dies under load, the
target coming back, 503 at once when no target is available, drain / disable / enable
through the admin API, and every transition visible in GET /upstreams.

Origins are lp_origins (killed and restarted on the same port) and small Python origins
whose answers a test flips. Waits are bounded and poll GET /upstreams; nothing asserts how
long a transition took, except that a 503 for an upstream with no available target comes
well before the configured upstream timeouts could have elapsed."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reload"))
import reloadtest as RT  # noqa: E402
from reloadtest import H  # noqa: E402


def host_route(host, upstream):
    return {"match": {"host": host, "prefix": "/"}, "upstream": upstream}


def fast_active(**kw):
    a = {"type": "http", "path": "/", "interval": 0.2, "timeout": 0.5, "healthy": 2,
         "unhealthy": 2}
    a.update(kw)
    return a


class Switch:
    """A Python origin whose answer a test changes: `status` for ordinary requests,
    `check_status` for luaproxy's health checks (User-Agent luaproxy-health/...)."""

    def __init__(self, ident, status=200, check_status=200):
        self.ident = ident
        self.status = status
        self.check_status = check_status
        self.checks = 0
        self.requests = 0
        self.hold = None       # a threading.Event: ordinary requests wait for it
        self.arrived = threading.Event()

    def __call__(self, req):
        if (req.header("User-Agent") or "").startswith("luaproxy-health/"):
            self.checks += 1
            st = self.check_status
        else:
            self.requests += 1
            self.arrived.set()
            if self.hold is not None:
                self.hold.wait(H.T(30))
            st = self.status
        return H.simple_response(st, b"status %d from %s" % (st, self.ident.encode()),
                                 [("X-Origin-Id", self.ident)])


class Blackhole:
    """A listening socket that never accepts: connects complete, nothing is ever answered."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def address(self):
        return "127.0.0.1:%d" % self.port

    def close(self):
        self.sock.close()


class Load:
    """Keep-alive clients in threads, GET `path` with Host `host` until stop(); every
    answer is recorded as (monotonic time, status or exception, X-Origin-Id)."""

    def __init__(self, port, host, clients=3, path="/fixed?size=100"):
        self.port = port
        self.host = host
        self.clients = clients
        self.path = path
        self.lock = threading.Lock()
        self.log = []
        self._stop = threading.Event()
        self.threads = []

    def start(self):
        for _ in range(self.clients):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def _run(self):
        c = None
        while not self._stop.is_set():
            try:
                if c is None:
                    c = H.Client(self.port, timeout=H.T(20))
                r = c.request("GET", self.path, host=self.host)
            except Exception as e:  # noqa: BLE001
                with self.lock:
                    self.log.append((time.monotonic(), repr(e), None))
                if c is not None:
                    c.close()
                c = None
                time.sleep(0.01)
                continue
            ok = r.status == 200 and r.complete
            with self.lock:
                self.log.append((time.monotonic(), r.status if ok else
                                 "status %s complete=%s" % (r.status, r.complete),
                                 r.header("X-Origin-Id")))
            if "close" in r.tokens("connection"):
                c.close()
                c = None
            time.sleep(0.002)  # bounded load: a few hundred requests a second
        if c is not None:
            c.close()

    def stop(self):
        self._stop.set()
        for t in self.threads:
            t.join(H.T(30))
        if any(t.is_alive() for t in self.threads):
            raise AssertionError("load threads did not stop")

    def snapshot(self):
        with self.lock:
            return list(self.log)

    def errors(self, since=0.0):
        return [e for e in self.snapshot() if e[0] >= since and e[1] != 200]

    def origins(self, since=0.0):
        out = {}
        for t, st, o in self.snapshot():
            if t >= since and st == 200:
                out[o] = out.get(o, 0) + 1
        return out


class HealthCase(RT.ReloadTestCase):
    """Helpers on GET /upstreams."""

    @classmethod
    def start_reload_proxy(cls, *a, **kw):
        # The admin listener opens just after the proxy's own: wait for it too.
        p = super().start_reload_proxy(*a, **kw)
        H.wait_for(lambda: H.port_accepts(p.admin_port), H.T(10), what="the admin API")
        return p

    def upstreams(self):
        j = self.admin_json("GET", "/upstreams")
        self.assertIs(j["ok"], True, j)
        return {u["name"]: u for u in j["upstreams"]}

    def target(self, upstream, address):
        for t in self.upstreams()[upstream]["targets"]:
            if t["address"] == address:
                return t
        self.fail("no target %s in upstream %s" % (address, upstream))

    def wait_state(self, upstream, address, state, timeout=None):
        got = [None]

        def check():
            got[0] = self.target(upstream, address)
            return got[0]["state"] == state
        try:
            H.wait_for(check, timeout or H.T(10), interval=0.05,
                       what="%s %s %s" % (upstream, address, state))
        except AssertionError:
            self.fail("%s in %s: still %s, not %s; error log:\n%s" %
                      (address, upstream, got[0], state, self.proxy.stderr()[-3000:]))
        return got[0]

    def set_state(self, upstream, address, state, as_body=False, status=200):
        path = "/upstreams/%s/targets/%s" % (upstream, address)
        if as_body:
            r = self.admin("POST", path, body=json.dumps({"state": state}))
        else:
            r = self.admin("POST", path + "?state=" + state)
        self.assertEqual(r.status, status, r.body)
        self.assertEqual(r.header("Content-Type"), "application/json", r)
        return r.json()

    def assertFailoverErrors(self, load, t_kill, t_detected):
        """No client error at all, not even between the kill and the detection: a failed
        connect moves the request to another target, and so does a GET that the dying
        origin reset before answering (on a pooled connection: first again on a fresh one,
        whose connect then fails)."""
        errs = load.errors()
        self.assertEqual(errs, [], "client errors (kill at %.3f, detected at %.3f): %s" %
                         (t_kill, t_detected, errs[:10]))

    def warm(self, load, origins):
        """Until load has reached every origin and made 200 requests (pools warm)."""
        H.wait_for(lambda: set(load.origins()) == set(origins) and len(load.snapshot()) > 200,
                   H.T(20), what="load reaching %s" % sorted(origins))

    def hits(self, host, n, path="/"):
        """n sequential requests on fresh connections: {X-Origin-Id or status: count}."""
        out = {}
        for _ in range(n):
            r = self.get(path, host=host)
            k = r.header("X-Origin-Id") if r.status == 200 else r.status
            out[k] = out.get(k, 0) + 1
        return out


# --------------------------------------------------------------------------- failover

class ActiveFailoverTest(HealthCase):
    """One of three origins killed under load, active checks: no client error, the target
    is marked down and gets no more tries, and comes back when its origin restarts."""

    @classmethod
    def setUpClass(cls):
        cls.o = {i: cls.start_origin(i) for i in ("a", "b", "c")}
        cls.addr = {i: o.address() for i, o in cls.o.items()}
        cls.proxy = cls.start_reload_proxy(
            {"app": H.upstream(*cls.addr.values(), health={"active": fast_active()})},
            [host_route("app.test", "app")], workers=2)

    def test_kill_and_restart_one_of_three(self):
        for i in "abc":
            self.wait_state("app", self.addr[i], "up")
        u = self.upstreams()["app"]
        self.assertIs(u["active_checks"], True)
        load = Load(self.proxy.port, "app.test").start()
        self.addCleanup(load.stop)
        self.warm(load, "abc")

        c = self.o["c"]
        port = c.port
        t_kill = time.monotonic()
        c.stop(signal.SIGKILL)
        self.wait_state("app", self.addr["c"], "down")
        t_down = time.monotonic()
        self.assertTrue(self.log_lines("unhealthy (active check"), self.proxy.stderr()[-2000:])
        # Detected: c gets no more tries (its failure count stops moving).
        time.sleep(0.3)
        f0 = self.target("app", self.addr["c"])["failures"]
        n0 = len(load.snapshot())
        H.wait_for(lambda: len(load.snapshot()) > n0 + 200, H.T(20), what="200 more requests")
        self.assertEqual(self.target("app", self.addr["c"])["failures"], f0)
        self.assertEqual(self.target("app", self.addr["c"])["state"], "down")
        served = load.origins(since=t_down + 0.3)
        self.assertNotIn("c", served)
        self.assertEqual(set(served), {"a", "b"}, served)
        # A failed connect moves the request to another target: no client saw an error
        # after the detection, and before it at most the requests in flight at the kill.
        self.assertFailoverErrors(load, t_kill, t_down)

        # The origin comes back on the same port: healthy again after `healthy` checks.
        self.o["c"] = restarted = H.Origin("c", port)
        self.addCleanup(restarted.stop)
        restarted.start()
        t_up = time.monotonic()
        self.wait_state("app", self.addr["c"], "up")
        H.wait_for(lambda: "c" in load.origins(since=t_up), H.T(10),
                   what="requests reaching the restarted origin")
        load.stop()
        self.assertFailoverErrors(load, t_kill, t_down)
        self.assertTrue(self.log_lines("healthy (active check)"))
        self.assertGreater(len(load.snapshot()), 300)
        self.assertAlive()


class PassiveFailoverTest(HealthCase):
    """The same without active checks: consecutive connect failures eject the dead target
    for `ejection` seconds (doubling while it stays dead); it serves again once its origin
    is back and the back-off has run out."""

    @classmethod
    def setUpClass(cls):
        cls.o = {i: cls.start_origin(i) for i in ("a", "b", "c")}
        cls.addr = {i: o.address() for i, o in cls.o.items()}
        cls.proxy = cls.start_reload_proxy(
            {"app": H.upstream(*cls.addr.values(),
                               health={"passive": {"failures": 3, "ejection": 0.5}})},
            [host_route("app.test", "app")], workers=2)

    def test_kill_eject_and_come_back(self):
        u = self.upstreams()["app"]
        self.assertIs(u["active_checks"], False)
        load = Load(self.proxy.port, "app.test").start()
        self.addCleanup(load.stop)
        self.warm(load, "abc")
        c = self.o["c"]
        port = c.port
        t_kill = time.monotonic()
        c.stop(signal.SIGKILL)
        t = self.wait_state("app", self.addr["c"], "ejected")
        t_ejected = time.monotonic()
        self.assertGreaterEqual(t["ejections"], 1, t)
        self.assertGreaterEqual(t["failures"], 3, t)
        self.assertTrue(self.log_lines("ejected for"), self.proxy.stderr()[-2000:])
        # While it stays dead it is ejected again and again, for longer each time.
        H.wait_for(lambda: self.target("app", self.addr["c"])["ejections"] >= 2, H.T(10),
                   what="a second ejection")
        self.assertFailoverErrors(load, t_kill, t_ejected)

        self.o["c"] = restarted = H.Origin("c", port)
        self.addCleanup(restarted.stop)
        restarted.start()
        t_up = time.monotonic()
        # Back after the back-off (at most 0.5 s x 32): the first success clears it.
        H.wait_for(lambda: "c" in load.origins(since=t_up), H.T(30),
                   what="requests reaching the restarted origin")
        t = self.wait_state("app", self.addr["c"], "up")
        self.assertEqual(t["ejections"], 0, t)
        self.assertEqual(t["consecutive_failures"], 0, t)
        self.assertGreater(t["successes"], 0, t)
        load.stop()
        self.assertFailoverErrors(load, t_kill, t_ejected)
        self.assertTrue(self.log_lines("back (a request succeeded)"))
        self.assertAlive()


# --------------------------------------------------------------------------- checks

class ChecksTest(HealthCase):
    """What active and passive checks count as a failure."""

    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.d = cls.start_origin("d")
        cls.e = cls.start_origin("e")
        cls.sw = Switch("sw", check_status=500)
        cls.swo = cls.start_raw_origin(cls.sw)
        cls.tcp500 = cls.start_raw_origin(Switch("tcp500", status=500, check_status=500))
        cls.p500 = Switch("p500", status=500)
        cls.p500o = cls.start_raw_origin(cls.p500)
        cls.d500 = cls.start_raw_origin(Switch("d500", status=500))
        cls.solo = Switch("solo", status=500)
        cls.soloo = cls.start_raw_origin(cls.solo)
        cls.dead = "127.0.0.1:%d" % H.dead_port()
        ups = {
            # the Switch answers its health checks 500, ordinary requests 200
            "chk": H.upstream(cls.a.address(), cls.swo.address(),
                              health={"active": fast_active()}),
            # only 200 is healthy here: lp_origin's 302 is not
            "strict": H.upstream(cls.d.address(),
                                 health={"active": fast_active(path="/status?code=302",
                                                               statuses=[200])}),
            # tcp: a connect is enough (an origin answering 500 is up), a refused one is not
            "tcp": H.upstream(cls.e.address(), cls.tcp500.address(), cls.dead,
                              health={"active": fast_active(type="tcp", healthy=1,
                                                            unhealthy=1)}),
            # passive with statuses = {500}: a target answering 500 is ejected
            "p": H.upstream(cls.a.address(), cls.p500o.address(),
                            health={"passive": {"failures": 3, "ejection": 60,
                                                "statuses": [500]}}),
            # an upstream whose only target gets ejected: tried anyway (panic)
            "solo": H.upstream(cls.soloo.address(),
                               health={"passive": {"failures": 3, "ejection": 60,
                                                   "statuses": [500]}}),
            # default passive statuses: 500 answers are not failures
            "pdefault": H.upstream(cls.d500.address(),
                                   health={"passive": {"failures": 3, "ejection": 60}}),
        }
        routes = [host_route(n + ".test", n) for n in ups]
        cls.proxy = cls.start_reload_proxy(ups, routes, workers=2)

    def test_active_unexpected_status_marks_down_then_up(self):
        sw = self.swo.address()
        self.wait_state("chk", sw, "down")
        self.assertEqual(self.target("chk", self.a.address())["state"], "up")
        self.assertGreaterEqual(self.sw.checks, 2)
        self.assertTrue(self.log_lines("unhealthy (active check: status 500)"),
                        self.proxy.stderr()[-2000:])
        before = self.sw.requests
        self.assertEqual(self.hits("chk.test", 30), {"a": 30})
        self.assertEqual(self.sw.requests, before)
        # Its checks pass again: back after `healthy` (2) passing checks.
        self.sw.check_status = 204
        self.addCleanup(setattr, self.sw, "check_status", 500)
        self.wait_state("chk", sw, "up")
        got = self.hits("chk.test", 30)
        self.assertEqual(set(got), {"a", "sw"}, got)

    def test_active_statuses_list(self):
        self.wait_state("strict", self.d.address(), "down")
        self.assertTrue(self.log_lines("(active check: status 302)"))
        # Its only target is down: 503 at once.
        r = self.get("/", host="strict.test")
        self.assertEqual(r.status, 503, r)

    def test_tcp_checks(self):
        self.wait_state("tcp", self.dead, "down")
        self.assertEqual(self.target("tcp", self.e.address())["state"], "up")
        self.assertEqual(self.target("tcp", self.tcp500.address())["state"], "up")
        got = self.hits("tcp.test", 20)
        self.assertNotIn(502, got)
        self.assertEqual(sum(got.values()), 20)

    def test_passive_statuses_eject(self):
        p = self.p500o.address()
        seen_500 = 0
        for _ in range(20):
            r = self.get("/", host="p.test")
            self.assertIn(r.status, (200, 500), r)
            seen_500 += r.status == 500
        # The 500s reach the client (passive checks never retry), three in a row eject it.
        self.assertGreaterEqual(seen_500, 1)
        self.assertLessEqual(seen_500, 6)  # 3 per worker at most before the ejection
        t = self.wait_state("p", p, "ejected")
        self.assertGreaterEqual(t["ejections"], 1, t)
        self.assertGreaterEqual(t["failures"], 3, t)
        before = self.p500.requests
        self.assertEqual(self.hits("p.test", 20), {"a": 20})
        self.assertEqual(self.p500.requests, before)

    def test_passive_ejection_of_every_target_still_tries_them(self):
        """An ejection that left no target is no reason to refuse every request: the
        ejected targets are tried (nginx ignores max_fails for a single server; Envoy
        balances over every host below its panic threshold), and a success ends it."""
        s = self.soloo.address()
        got = self.hits("solo.test", 8)
        self.assertEqual(got, {500: 8}, "ejected, yet still tried: 500s, no 503")
        t = self.wait_state("solo", s, "ejected")
        self.assertGreaterEqual(t["ejections"], 1, t)
        self.solo.status = 200
        before = self.solo.requests
        self.assertEqual(self.hits("solo.test", 5), {"solo": 5})
        self.assertEqual(self.solo.requests, before + 5)
        self.assertEqual(self.target("solo", s)["state"], "up")

    def test_passive_default_counts_no_status(self):
        d = self.d500.address()
        got = self.hits("pdefault.test", 20)
        self.assertEqual(got, {500: 20})
        t = self.target("pdefault", d)
        self.assertEqual(t["state"], "up", t)
        self.assertEqual(t["failures"], 0, t)
        self.assertEqual(t["ejections"], 0, t)
        self.assertGreaterEqual(t["successes"], 20, t)


# --------------------------------------------------------------------------- no target

class NoTargetTest(HealthCase):
    """No available target: 503 at once, not after a connect or read timeout."""

    @classmethod
    def setUpClass(cls):
        cls.holes = [Blackhole(), Blackhole()]
        for h in cls.holes:
            cls.addClassCleanup(h.close)
        cls.a = cls.start_origin("a")
        cls.b = cls.start_origin("b")
        ups = {
            # Connects succeed, nothing answers: the checks time out.
            "hole": H.upstream(*[h.address() for h in cls.holes],
                               health={"active": fast_active(unhealthy=1, timeout=0.2)}),
            "app": H.upstream(cls.a.address(), cls.b.address()),
        }
        cls.proxy = cls.start_reload_proxy(
            ups, [host_route("hole.test", "hole"), host_route("app.test", "app")],
            timeouts={"connect": 20, "read": 30, "send": 30}, workers=2)

    def check_503(self, host):
        t0 = time.monotonic()
        r = self.get("/", host=host, timeout=H.T(10))
        took = time.monotonic() - t0
        self.assertEqual(r.status, 503, r)
        self.assertTrue(r.complete, r)
        self.assertEqual(r.body,
                         b"503 Service Unavailable: no available target (down, drained or disabled)\n")
        # Well before any upstream timeout (20 s, 30 s) could have run out (a loaded
        # machine may take a few seconds; a wait for a target would take 20).
        self.assertLess(took, H.T(10.0), "503 after %.2f s" % took)

    def test_all_down_is_503_at_once(self):
        for h in self.holes:
            self.wait_state("hole", h.address(), "down")
        self.assertTrue(self.log_lines("timed out"), self.proxy.stderr()[-2000:])
        for _ in range(5):
            self.check_503("hole.test")
        self.assertTrue(self.log_lines("no available target"))

    def test_all_disabled_or_drained_is_503_at_once(self):
        A, B = self.a.address(), self.b.address()
        self.addCleanup(self.set_state, "app", A, "enable")
        self.addCleanup(self.set_state, "app", B, "enable")
        self.set_state("app", A, "disable")
        self.set_state("app", B, "drain")
        self.check_503("app.test")
        self.set_state("app", B, "enable")
        self.assertEqual(self.hits("app.test", 6), {"b": 6})


# --------------------------------------------------------------------------- admin API

class AdminStateTest(HealthCase):
    """GET /upstreams and POST /upstreams/NAME/targets/ADDR."""

    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.b = cls.start_origin("b")
        cls.c = cls.start_origin("c")
        cls.held = Switch("held")
        cls.heldo = cls.start_raw_origin(cls.held)
        cls.A, cls.B, cls.C = cls.a.address(), cls.b.address(), cls.c.address()
        ups = {
            "app": H.upstream(cls.A, {"address": cls.B, "weight": 2}, cls.C,
                              balance="least_conn"),
            "one": H.upstream(cls.heldo.address()),
            "h": H.upstream(cls.A, cls.B, cls.C, balance="hash", hash_on="query:k"),
        }
        cls.proxy = cls.start_reload_proxy(
            ups, [host_route("app.test", "app"), host_route("one.test", "one"),
                  host_route("h.test", "h")], workers=2)

    def test_upstreams_json(self):
        ups = self.upstreams()
        self.assertEqual(set(ups), {"app", "one", "h"})
        app = ups["app"]
        self.assertEqual(app["balance"], "least_conn")
        self.assertIs(app["active_checks"], False)
        self.assertEqual([t["address"] for t in app["targets"]], [self.A, self.B, self.C])
        self.assertEqual([t["weight"] for t in app["targets"]], [1, 2, 1])
        for t in app["targets"]:
            self.assertEqual(t["state"], "up", t)
            for k in ("consecutive_failures", "failures", "successes", "ejections"):
                self.assertIsInstance(t[k], int, (k, t))
        self.assertEqual(ups["one"]["balance"], "round_robin")
        # Successes count.
        s0 = sum(t["successes"] for t in self.upstreams()["app"]["targets"])
        self.hits("app.test", 10)
        s1 = sum(t["successes"] for t in self.upstreams()["app"]["targets"])
        self.assertEqual(s1 - s0, 10)
        r = self.admin("HEAD", "/upstreams")
        self.assertEqual(r.status, 200)

    def test_drain_lets_in_flight_finish_and_takes_no_new_request(self):
        H_ = self.heldo.address()
        self.addCleanup(self.set_state, "one", H_, "enable")
        self.held.hold = threading.Event()
        self.held.arrived.clear()
        self.addCleanup(self.held.hold.set)
        result = {}

        def slow():
            try:
                result["r"] = H.get(self.proxy.port, "/", host="one.test", timeout=H.T(30))
            except Exception as e:  # noqa: BLE001
                result["e"] = e
        t = threading.Thread(target=slow, daemon=True)
        t.start()
        self.assertTrue(self.held.arrived.wait(H.T(10)), "the held request never arrived")
        j = self.set_state("one", H_, "drain")
        self.assertEqual(j, {"ok": True, "address": H_, "state": "drained"})
        self.assertEqual(self.target("one", H_)["state"], "drained")
        n = self.held.requests
        r = self.get("/", host="one.test")
        self.assertEqual(r.status, 503, r)
        self.assertEqual(self.held.requests, n)
        self.held.hold.set()
        t.join(H.T(30))
        self.assertIn("r", result, result)
        self.assertEqual(result["r"].status, 200, result["r"])
        self.assertEqual(result["r"].header("X-Origin-Id"), "held")
        j = self.set_state("one", H_, "enable", as_body=True)
        self.assertEqual(j["state"], "up")
        self.assertEqual(self.get("/", host="one.test").status, 200)

    def test_drain_disable_enable_steer_traffic(self):
        for x in (self.A, self.B, self.C):
            self.addCleanup(self.set_state, "app", x, "enable")
        self.assertEqual(self.set_state("app", self.B, "drain")["state"], "drained")
        got = self.hits("app.test", 40)
        self.assertEqual(set(got), {"a", "c"}, got)
        self.assertEqual(self.set_state("app", self.C, "disable", as_body=True)["state"],
                         "disabled")
        self.assertEqual(self.target("app", self.C)["state"], "disabled")
        self.assertEqual(self.hits("app.test", 20), {"a": 20})
        self.assertEqual(self.set_state("app", self.B, "enable")["state"], "up")
        self.assertEqual(self.set_state("app", self.C, "enable")["state"], "up")
        got = self.hits("app.test", 60)
        self.assertEqual(set(got), {"a", "b", "c"}, got)
        self.assertTrue(self.log_lines("admin: upstream app target %s: drain" % self.B))

    def test_hash_keys_of_a_drained_target_move_and_come_back(self):
        def mapping():
            out = {}
            for i in range(150):
                r = self.get("/?k=key%d" % i, host="h.test")
                self.assertEqual(r.status, 200, r)
                out[i] = r.header("X-Origin-Id")
            return out
        before = mapping()
        self.assertEqual(set(before.values()), {"a", "b", "c"})
        self.addCleanup(self.set_state, "h", self.C, "enable")
        self.set_state("h", self.C, "drain")
        during = mapping()
        self.assertNotIn("c", during.values())
        for i, o in before.items():
            if o != "c":
                self.assertEqual(during[i], o, "key%d moved off %s" % (i, o))
        self.assertEqual({during[i] for i, o in before.items() if o == "c"}, {"a", "b"})
        self.set_state("h", self.C, "enable")
        self.assertEqual(mapping(), before)

    def test_errors(self):
        for path, status in (("/upstreams/nope/targets/%s?state=drain" % self.A, 404),
                             ("/upstreams/app/targets/127.0.0.1:1?state=drain", 404),
                             ("/upstreams/app/targets/?state=drain", 404),
                             ("/upstreams/app?state=drain", 404),
                             ("/upstreams/app/bogus/%s?state=drain" % self.A, 404),
                             ("/upstreams/app/targets/%s?state=bogus" % self.A, 400),
                             ("/upstreams/app/targets/%s" % self.A, 400)):
            with self.subTest(path=path):
                r = self.admin("POST", path)
                self.assertEqual(r.status, status, r.body)
                self.assertEqual(r.header("Content-Type"), "application/json")
                j = r.json()
                self.assertIs(j["ok"], False, j)
                self.assertTrue(j["error"], j)
        r = self.admin("POST", "/upstreams/app/targets/%s" % self.A, body='{"state": "nah"}')
        self.assertEqual(r.status, 400, r.body)
        r = self.admin("GET", "/upstreams/app/targets/%s?state=drain" % self.A)
        self.assertEqual(r.status, 405, r.body)
        r = self.admin("POST", "/upstreams")
        self.assertEqual(r.status, 405, r.body)
        # Nothing changed.
        for t in self.upstreams()["app"]["targets"]:
            self.assertEqual(t["state"], "up", t)


# --------------------------------------------------------------------------- reload

class ReloadHealthTest(HealthCase):
    """Health belongs to the address and survives reloads; dropping `health.active`
    forgets an active verdict."""

    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.sw = Switch("sw", check_status=500)
        cls.swo = cls.start_raw_origin(cls.sw)
        cls.proxy = cls.start_reload_proxy(
            {"app": H.upstream(cls.a.address(), cls.swo.address(),
                               health={"active": fast_active()})},
            [host_route("app.test", "app")], workers=2)

    def test_reload_keeps_then_clears_down(self):
        sw = self.swo.address()
        self.wait_state("app", sw, "down")
        # A drain survives a reload too.
        self.set_state("app", self.a.address(), "drain")
        self.addCleanup(self.set_state, "app", self.a.address(), "enable")
        ups = dict(self.proxy.cfg["upstreams"])
        ups["app"] = H.upstream(self.a.address(), self.swo.address(),
                                health={"active": fast_active(interval=0.3)})
        self.rewrite(upstreams=ups)
        self.reload()
        self.assertEqual(self.target("app", sw)["state"], "down")
        self.assertEqual(self.target("app", self.a.address())["state"], "drained")
        self.assertEqual(self.get("/", host="app.test").status, 503)
        # Without active checks, the old verdict must not keep it down for good.
        ups["app"] = H.upstream(self.a.address(), self.swo.address())
        self.rewrite(upstreams=ups)
        self.reload()
        self.assertIs(self.upstreams()["app"]["active_checks"], False)
        self.assertEqual(self.target("app", sw)["state"], "up")
        r = self.get("/", host="app.test")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("X-Origin-Id"), "sw")


# --------------------------------------------------------------------------- config

class HealthConfigTest(H.ProxyTestCase):
    """`luaproxy -t` checks the health table and names the key path."""

    @classmethod
    def setUpClass(cls):
        H.require_proxy()
        cls.dir = H.Workdir.new("health-config")

    def check(self, health):
        cfg = H.make_config(0, {"app": H.upstream("127.0.0.1:9", health=health)},
                            [{"match": {"prefix": "/"}, "upstream": "app"}])
        path = os.path.join(self.dir, "%d.lua" % time.monotonic_ns())
        with open(path, "w") as f:
            f.write(H.config_text(cfg))
        p = subprocess.run([H.LUAPROXY, "-t", "-c", path], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=H.T(20), preexec_fn=H._preexec)
        err = p.stderr.decode("utf-8", "replace") + p.stdout.decode("utf-8", "replace")
        self.assertEqual(H.sanitizer_errors(err), [], err)
        return p.returncode, err

    def test_good(self):
        for h in ({}, {"active": {}}, {"passive": {}},
                  {"active": {"type": "tcp", "interval": 0.5, "timeout": 0.25}},
                  {"active": fast_active(statuses=[200, 204])},
                  {"passive": {"failures": 0}},
                  {"passive": {"failures": 1, "ejection": 0.5, "statuses": [500, 502, 503]}}):
            with self.subTest(health=h):
                rc, err = self.check(h)
                self.assertEqual(rc, 0, err)

    def test_bad(self):
        P = "upstreams.app.health"
        for h, where in (
                ({"bogus": 1}, P + ".bogus"),
                ("yes", P),
                ({"active": {"type": "udp"}}, P + ".active.type"),
                ({"active": {"path": "health"}}, P + ".active.path"),
                ({"active": {"interval": 0}}, P + ".active.interval"),
                ({"active": {"timeout": -1}}, P + ".active.timeout"),
                ({"active": {"healthy": 0}}, P + ".active.healthy"),
                ({"active": {"unhealthy": 101}}, P + ".active.unhealthy"),
                ({"active": {"statuses": [99]}}, P + ".active.statuses"),
                ({"active": {"statuses": 200}}, P + ".active.statuses"),
                ({"active": {"bogus": 1}}, P + ".active.bogus"),
                ({"passive": {"failures": -1}}, P + ".passive.failures"),
                ({"passive": {"ejection": 0}}, P + ".passive.ejection"),
                ({"passive": {"statuses": [600]}}, P + ".passive.statuses"),
                ({"passive": {"statuses": [500.5]}}, P + ".passive.statuses"),
                ({"passive": {"bogus": 1}}, P + ".passive.bogus")):
            with self.subTest(health=h):
                rc, err = self.check(h)
                self.assertNotEqual(rc, 0, "accepted: %r" % (h,))
                self.assertIn(where, err)


if __name__ == "__main__":
    H.main()
