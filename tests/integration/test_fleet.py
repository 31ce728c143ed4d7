#!/usr/bin/env python3
"""A fleet of three luaproxy instances configured through etcd (issue #18, docs/fleet.md).

A real etcd (Debian's etcd-server) runs on 127.0.0.1 with a data directory in the test's
work directory; etcd cannot listen on port 0 and report the port, so its two ports are
picked by binding and closing a socket (the one place these tests do so), and the process
is stopped by PID. Each instance has its own bootstrap file (listen and admin on port 0,
config_source.etcd) and watches the same prefix.

Checks: a route written to etcd is served by all three within 1 s; GET /ready is 503
before the first config and 200 after; a broken config is refused by all three, with their
errors under PREFIX status/INSTANCE, while the old config keeps serving; `luaproxy push`
checks a file as -t does and writes it; with etcd killed all three keep serving, and the
watch resumes when it comes back; an instance started while etcd is down serves its last
good copy. Propagation (etcd write -> all three serving) over 100 changes is printed
(median, p99)."""

import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

PREFIX = "/luaproxy/"


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def b64(s):
    return base64.b64encode(s.encode()).decode()


class Etcd:
    def __init__(self):
        self.bin = H.require_tool("etcd")
        self.dir = H.Workdir.new("etcd")
        self.client = free_port()
        self.peer = free_port()
        self.proc = None

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.client

    def start(self):
        peer = "http://127.0.0.1:%d" % self.peer
        argv = [self.bin, "--name", "lp", "--data-dir", os.path.join(self.dir, "data"),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", "lp=" + peer]
        self.proc = H.spawn(argv, os.path.join(self.dir, "stdout"),
                            os.path.join(self.dir, "stderr"))

        def up():
            if self.proc.poll() is not None:
                raise AssertionError("etcd exited: " + self.stderr()[-2000:])
            try:
                self.call("/v3/kv/range", {"key": b64("x")})
                return True
            except OSError:
                return False
        H.wait_for(up, H.T(20), what="etcd answering")
        return self

    def stop(self, sig=signal.SIGTERM):
        if self.proc is not None:
            H.stop_process(self.proc, sig)
            self.proc = None

    def stderr(self):
        with open(os.path.join(self.dir, "stderr"), errors="replace") as f:
            return f.read()

    def call(self, path, body):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=H.T(5)) as r:
            return json.loads(r.read())

    def put(self, key, value):
        r = self.call("/v3/kv/put", {"key": b64(key), "value": b64(value)})
        return int(r["header"]["revision"])

    def get(self, key):
        r = self.call("/v3/kv/range", {"key": b64(key)})
        kvs = r.get("kvs") or []
        return base64.b64decode(kvs[0]["value"]).decode() if kvs else None

    def revision(self):
        r = self.call("/v3/kv/range", {"key": b64("x")})
        return int(r["header"]["revision"])


def config(origin, *names, extra_upstream=None):
    """Routes by host (NAME.test) to the origin's `/`, which answers 200."""
    routes = [{"match": {"host": n + ".test"}, "upstream": extra_upstream or "o"}
              for n in names]
    return json.dumps({"upstreams": {"o": {"targets": [origin.address()]}}, "routes": routes})


def status_code(port, name):
    try:
        return H.get(port, "/", host=name + ".test", timeout=H.T(2)).status
    except (OSError, H.PeerClosed):
        return None


def admin_json(proxy, path):
    r = H.get(proxy.admin_port, path, timeout=H.T(5))
    return r.status, json.loads(r.body)


class FleetTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = H.Origin("fleet").start()
        cls.addClassCleanup(cls.origin.stop)
        cls.etcd = Etcd().start()
        cls.addClassCleanup(cls.etcd.stop)
        cls.proxies = []
        for i in range(3):
            p = cls.make_proxy("i%d" % i)
            cls.addClassCleanup(p.stop)
            p.start()
            cls.proxies.append(p)
        H.wait_for(lambda: all(admin_json(p, "/status")[1]["etcd"]["connected"]
                               for p in cls.proxies), H.T(10), what="instances connected")

    @classmethod
    def make_proxy(cls, name):
        cfg = {"workers": 1, "listen": [{"address": "127.0.0.1:0"}],
               "admin": {"address": "127.0.0.1:0"}, "log": {"level": "info"},
               "config_source": {"etcd": {"endpoints": [cls.etcd.url], "instance": name}}}
        return H.Proxy(cfg, name="fleet-" + name)

    def all_serve(self, path, want=200, proxies=None):
        return all(status_code(p.port, path) == want for p in proxies or self.proxies)

    def wait_all_serve(self, path, timeout, proxies=None):
        H.wait_for(lambda: self.all_serve(path, proxies=proxies), timeout, interval=0.005,
                   what="%s served by every instance" % path)

    def statuses(self):
        out = {}
        for p in self.proxies:
            name = p.cfg["config_source"]["etcd"]["instance"]
            v = self.etcd.get(PREFIX + "status/" + name)
            out[name] = json.loads(v) if v else None
        return out

    def test_a_route_from_etcd_everywhere_within_1s(self):
        for p in self.proxies:
            st, body = admin_json(p, "/ready")
            self.assertEqual(st, 503, body)
        t0 = time.monotonic()
        rev = self.etcd.put(PREFIX + "config", config(self.origin, "a"))
        # The first reload of each instance; "within 1 s" is asserted on the median of 100
        # changes (test_f), which a loaded machine does not make flaky.
        self.wait_all_serve("a", H.T(5))
        print("first route served by all three in %.1f ms" % ((time.monotonic() - t0) * 1e3))
        for p in self.proxies:
            st, body = admin_json(p, "/ready")
            self.assertEqual(st, 200, body)
            H.wait_for(lambda: admin_json(p, "/status")[1]["etcd"]["revision"] == rev,
                       H.T(5), what="revision in /status")
        H.wait_for(lambda: all(s and s["ok"] and s["revision"] == rev
                               for s in self.statuses().values()), H.T(5),
                   what="ok statuses in etcd")

    def test_b_broken_config_refused_by_all(self):
        good = self.etcd.put(PREFIX + "config", config(self.origin, "b"))
        self.wait_all_serve("b", H.T(5))
        bad = self.etcd.put(PREFIX + "config", config(self.origin, "bad", extra_upstream="nope"))

        def refused():
            s = self.statuses()
            return all(v and v.get("failed_revision") == bad for v in s.values()) and s
        s = H.wait_for(refused, H.T(5), what="errors under status/")
        for v in s.values():
            self.assertFalse(v["ok"])
            self.assertIn('no upstream named "nope"', v["error"])
            self.assertEqual(v["revision"], good)
        self.assertTrue(self.all_serve("b"))
        self.assertTrue(self.all_serve("bad", want=404))
        for p in self.proxies:
            self.assertEqual(admin_json(p, "/status")[1]["etcd"]["failed_revision"], bad)

    def test_c_push(self):
        d = H.Workdir.new("push")
        good = os.path.join(d, "good.lua")
        with open(good, "w") as f:
            f.write(H.config_text({"listen": [{"address": "127.0.0.1:0"}],
                                   "upstreams": {"o": {"targets": [self.origin.address()]}},
                                   "routes": [{"match": {"host": "pushed.test"},
                                               "upstream": "o"}]}))
        bad = os.path.join(d, "bad.lua")
        with open(bad, "w") as f:
            f.write(H.config_text({"listen": [{"address": "127.0.0.1:0"}], "routes": [{"match": {"host": "x.test"}, "upstream": "nope"}]}))
        before = self.etcd.revision()
        r = subprocess.run([H.LUAPROXY, "push", "-c", bad, "--etcd", self.etcd.url],
                           capture_output=True, text=True, timeout=H.T(30))
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn('no upstream named "nope"', r.stderr)
        self.assertEqual(self.etcd.revision(), before)
        r = subprocess.run([H.LUAPROXY, "push", "-c", good, "--etcd", self.etcd.url],
                           capture_output=True, text=True, timeout=H.T(30))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("pushed", r.stdout)
        self.wait_all_serve("pushed", H.T(5))

    def test_d_etcd_down_keeps_serving_and_watch_resumes(self):
        self.etcd.put(PREFIX + "config", config(self.origin, "d"))
        self.wait_all_serve("d", H.T(5))
        self.etcd.stop(signal.SIGKILL)
        H.wait_for(lambda: not any(admin_json(p, "/status")[1]["etcd"]["connected"]
                                   for p in self.proxies), H.T(10), what="etcd seen down")
        for _ in range(20):
            self.assertTrue(self.all_serve("d"))
        self.etcd.start()
        rev = self.etcd.put(PREFIX + "config", config(self.origin, "d2"))
        self.wait_all_serve("d2", H.T(10))
        for p in self.proxies:
            self.assertEqual(admin_json(p, "/status")[1]["etcd"]["revision"], rev)
            # Applied once: one reload per revision, none again after the reconnection.
            self.assertEqual(p.log_count("etcd: revision %d serving" % rev), 1)

    def test_e_start_with_etcd_down_serves_last_good(self):
        self.etcd.put(PREFIX + "config", config(self.origin, "e"))
        self.wait_all_serve("e", H.T(5))
        p = self.proxies[0]
        p.stop()
        self.etcd.stop(signal.SIGKILL)
        try:
            p.start()
            self.assertEqual(status_code(p.port, "e"), 200)
            st, body = admin_json(p, "/ready")
            self.assertEqual(st, 200, body)
            self.assertFalse(body.get("reason"))
        finally:
            self.etcd.start()
        rev = self.etcd.put(PREFIX + "config", config(self.origin, "e2"))
        self.wait_all_serve("e2", H.T(10))
        self.assertEqual(admin_json(p, "/status")[1]["etcd"]["revision"], rev)

    def test_f_propagation_100_changes(self):
        times = []
        for i in range(100):
            path = "p%d" % i
            t0 = time.monotonic()
            self.etcd.put(PREFIX + "config", config(self.origin, path))
            self.wait_all_serve(path, H.T(5))
            times.append((time.monotonic() - t0) * 1e3)
        times.sort()
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print("propagation over %d changes (etcd write -> all three serving): median %.1f ms, "
              "p99 %.1f ms, max %.1f ms" % (len(times), statistics.median(times), p99,
                                            times[-1]))
        self.assertLess(statistics.median(times), H.T(1) * 1e3)



class FleetAuthTest(unittest.TestCase):
    """config_source.etcd.auth: an etcd with authentication on (etcdctl sets it up)."""

    def test_auth(self):
        origin = H.Origin("fleet-auth").start()
        self.addCleanup(origin.stop)
        etcd = Etcd().start()
        self.addCleanup(etcd.stop)
        ctl = [H.require_tool("etcdctl"), "--endpoints=" + etcd.url]
        env = dict(os.environ, ETCDCTL_API="3")
        for args in (["user", "add", "root:pw"], ["auth", "enable"],
                     ["--user", "root:pw", "put", PREFIX + "config", config(origin, "auth")]):
            r = subprocess.run(ctl + args, env=env, capture_output=True, text=True,
                               timeout=H.T(20))
            self.assertEqual(r.returncode, 0, r.stderr)
        cfg = {"workers": 1, "listen": [{"address": "127.0.0.1:0"}],
               "admin": {"address": "127.0.0.1:0"}, "log": {"level": "info"},
               "config_source": {"etcd": {"endpoints": [etcd.url], "instance": "auth",
                                          "auth": {"user": "root", "password": "pw"}}}}
        p = H.Proxy(cfg, name="fleet-auth")
        self.addCleanup(p.stop)
        p.start()
        H.wait_for(lambda: status_code(p.port, "auth") == 200, H.T(5),
                   what="the route read with a token")
        st, body = admin_json(p, "/status")
        self.assertTrue(body["etcd"]["connected"], body)
        # Without credentials the same etcd refuses: the instance says why.
        bad = {"workers": 1, "listen": [{"address": "127.0.0.1:0"}],
               "admin": {"address": "127.0.0.1:0"}, "log": {"level": "info"},
               "config_source": {"etcd": {"endpoints": [etcd.url], "instance": "noauth"}}}
        q = H.Proxy(bad, name="fleet-noauth")
        self.addCleanup(q.stop)
        q.start()
        H.wait_for(lambda: admin_json(q, "/status")[1]["etcd"]["last_error"], H.T(5),
                   what="an auth error in /status")
        self.assertEqual(status_code(q.port, "auth"), 404)
        self.assertEqual(admin_json(q, "/ready")[0], 503)



if __name__ == "__main__":
    H.main()
