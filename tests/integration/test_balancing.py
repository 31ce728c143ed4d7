#!/usr/bin/env python3
"""Load balancing policies through the real proxy (docs/balancing.md): round_robin weights
exact per cycle, least_conn and p2c steering away from a slow target, hash stickiness on
every hash_on kind (same key, same target, across workers and connections; different keys
spread), about 1/N of keys remapped when one of N targets is removed by a reload, and
unknown policies or hash_on values rejected by `luaproxy -t` with the key's path.

Three lp_origins (a, b, c) answer with X-Origin-Id; a slow target is a Python origin that
sleeps before answering. Routes pick the upstream by Host. Every count is of answers, never
of time."""

import collections
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reload"))
import reloadtest as RT  # noqa: E402
from reloadtest import H  # noqa: E402


def host_route(host, upstream):
    return {"match": {"host": host, "prefix": "/"}, "upstream": upstream}


def slow_origin_handler(ident, delay):
    def handler(req):
        time.sleep(delay)
        return H.simple_response(200, b"slow", [("X-Origin-Id", ident)])
    return handler


def note(msg):
    sys.stderr.write("  [%s]\n" % msg)


def origin_of(r):
    return r.header("X-Origin-Id")


class Requests:
    """Sequential requests on one keep-alive connection (reopened when the proxy closes)."""

    def __init__(self, test, port, host):
        self.test = test
        self.port = port
        self.host = host
        self.client = None

    def get(self, path="/", headers=None):
        if self.client is None:
            self.client = H.Client(self.port, timeout=H.T(20))
        r = self.client.request("GET", path, headers=headers, host=self.host)
        if "close" in r.tokens("connection") or not r.complete:
            self.client.close()
            self.client = None
        return r

    def close(self):
        if self.client is not None:
            self.client.close()
            self.client = None


def concurrent_origins(port, host, threads, per_thread, path="/"):
    """`threads` keep-alive clients, `per_thread` requests each; returns (Counter of
    X-Origin-Id, [failures])."""
    counts = collections.Counter()
    failures = []
    lock = threading.Lock()

    def run():
        c = None
        for _ in range(per_thread):
            try:
                if c is None:
                    c = H.Client(port, timeout=H.T(20))
                r = c.request("GET", path, host=host)
            except Exception as e:  # noqa: BLE001
                with lock:
                    failures.append(repr(e))
                if c is not None:
                    c.close()
                c = None
                continue
            with lock:
                if r.status == 200 and r.complete:
                    counts[origin_of(r)] += 1
                else:
                    failures.append("status %s complete=%s" % (r.status, r.complete))
            if "close" in r.tokens("connection"):
                c.close()
                c = None
        if c is not None:
            c.close()

    ts = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(H.T(120))
    if any(t.is_alive() for t in ts):
        raise AssertionError("load threads did not finish")
    return counts, failures


class BalancingTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.b = cls.start_origin("b")
        cls.c = cls.start_origin("c")
        cls.slow = cls.start_raw_origin(slow_origin_handler("slow", 0.05))
        cls.slow2 = cls.start_raw_origin(slow_origin_handler("slow2", 0.05))
        A, B, C = cls.a.address(), cls.b.address(), cls.c.address()
        weighted = [{"address": A, "weight": 2}, {"address": B, "weight": 3},
                    {"address": C, "weight": 5}]
        upstreams = {
            "rr": H.upstream(*weighted, balance="round_robin"),
            "rrdefault": H.upstream(A, B, C),
            "lcidle": H.upstream(*weighted, balance="least_conn"),
            "lc": H.upstream(A, B, cls.slow.address(), balance="least_conn"),
            "p2c": H.upstream(A, B, cls.slow2.address(), balance="p2c"),
            "hheader": H.upstream(A, B, C, balance="hash", hash_on="header:X-User"),
            "hcookie": H.upstream(A, B, C, balance="hash", hash_on="cookie:sid"),
            "hquery": H.upstream(A, B, C, balance="hash", hash_on="query:user"),
            "hpath": H.upstream(A, B, C, balance="hash", hash_on="path"),
            "hip": H.upstream(A, B, C, balance="hash"),
            "hkeyless": H.upstream(*weighted, balance="hash", hash_on="header:X-Nope"),
        }
        routes = [host_route(name + ".test", name) for name in upstreams]
        cls.proxy = cls.start_proxy(upstreams, routes, workers=2)

    def seq(self, host, n, path="/", headers=None):
        rq = Requests(self, self.proxy.port, host)
        self.addCleanup(rq.close)
        out = []
        for _ in range(n):
            r = rq.get(path, headers)
            self.assertEqual(r.status, 200, r)
            out.append(origin_of(r))
        return out

    def one(self, host, path="/", headers=None):
        """One request on a fresh connection (either worker may take it). lp_origin answers
        404 to unknown paths: that answer names the origin too."""
        r = H.get(self.proxy.port, path, host=host, headers=headers, timeout=H.T(20))
        self.assertIn(r.status, (200, 404), r)
        self.assertTrue(origin_of(r), r)
        return origin_of(r)

    def assertShares(self, counts, want, tolerance, total=None):
        total = total or sum(counts.values())
        wsum = sum(want.values())
        for k, w in want.items():
            share = counts.get(k, 0) / total
            self.assertAlmostEqual(share, w / wsum, delta=tolerance,
                                   msg="%s: %.3f of %d, want %.3f ± %.3f (%s)" %
                                   (k, share, total, w / wsum, tolerance, dict(counts)))

    # ---- round_robin ----

    def test_round_robin_exact_per_cycle(self):
        # One keep-alive connection: one worker, one balancer. Weights 2/3/5: every cycle of
        # 10 picks has exactly 2 a, 3 b, 5 c, interleaved, and the sequence repeats.
        s = self.seq("rr.test", 3000)
        for i in range(0, 3000 - 10 + 1):
            w = collections.Counter(s[i:i + 10])
            self.assertEqual(w, {"a": 2, "b": 3, "c": 5}, "window at %d: %s" % (i, s[i:i + 10]))
        self.assertEqual(s[:10], s[10:20])
        # Smooth: c (weight 5) never runs three in a row.
        self.assertNotIn("c,c,c", ",".join(s))

    def test_round_robin_weights_across_workers(self):
        counts, failures = concurrent_origins(self.proxy.port, "rr.test", 6, 500)
        self.assertEqual(failures, [])
        self.assertEqual(sum(counts.values()), 3000)
        # Each worker is exact per cycle: overall within a few picks of 20/30/50%.
        self.assertShares(counts, {"a": 2, "b": 3, "c": 5}, 0.01)

    def test_round_robin_is_the_default(self):
        s = self.seq("rrdefault.test", 300)
        for i in range(0, 300, 3):
            self.assertEqual(sorted(s[i:i + 3]), ["a", "b", "c"], s[i:i + 3])

    # ---- least_conn ----

    def test_least_conn_idle_follows_weights(self):
        # Sequential: nothing in flight at each pick, ties drawn in proportion to weight.
        s = self.seq("lcidle.test", 3000)
        self.assertShares(collections.Counter(s), {"a": 2, "b": 3, "c": 5}, 0.05)

    def test_least_conn_slow_target_gets_fewer(self):
        # The slow target (50 ms) keeps requests in flight, so it is picked less than its
        # third; round robin would give it exactly a third.
        counts, failures = concurrent_origins(self.proxy.port, "lc.test", 8, 150)
        self.assertEqual(failures, [])
        total = sum(counts.values())
        self.assertEqual(total, 1200)
        note("least_conn, 8 clients, one 50 ms target: %s" % dict(counts))
        self.assertLess(counts["slow"] / total, 0.15, dict(counts))
        self.assertGreater(counts["a"], total * 0.3, dict(counts))
        self.assertGreater(counts["b"], total * 0.3, dict(counts))

    # ---- p2c ----

    def test_p2c_prefers_the_fast_targets(self):
        counts, failures = concurrent_origins(self.proxy.port, "p2c.test", 4, 300)
        self.assertEqual(failures, [])
        total = sum(counts.values())
        self.assertEqual(total, 1200)
        note("p2c, 4 clients, one 50 ms target: %s" % dict(counts))
        # The slow one is probed (unmeasured targets are tried) but then shunned.
        self.assertLess(counts["slow2"] / total, 0.05, dict(counts))
        # Both fast ones serve (at low load equal latencies need not split evenly).
        self.assertGreater(counts["a"], total * 0.2, dict(counts))
        self.assertGreater(counts["b"], total * 0.2, dict(counts))

    # ---- hash ----

    def check_sticky(self, host, request_for_key, nkeys=60, repeats=3):
        owner = {}
        for k in range(nkeys):
            key = "user-%d" % k
            seen = set()
            for rep in range(repeats):
                path, headers = request_for_key(key, rep)
                seen.add(self.one(host, path, headers))
            self.assertEqual(len(seen), 1, "%s: key %s reached %s" % (host, key, seen))
            owner[key] = seen.pop()
        spread = collections.Counter(owner.values())
        self.assertEqual(set(spread), {"a", "b", "c"}, "keys not spread: %s" % dict(spread))
        for t, n in spread.items():
            self.assertGreater(n, nkeys // 10, "%s: %s" % (host, dict(spread)))
        return owner

    def test_hash_on_header_is_sticky_and_spreads(self):
        self.check_sticky("hheader.test",
                          lambda key, rep: ("/?r=%d" % rep, {"X-User": key}))

    def test_hash_on_cookie_is_sticky_and_spreads(self):
        # The cookie among others, in varying positions and headers.
        def req(key, rep):
            cookies = ["sid=%s" % key, "theme=dark; sid=%s; lang=en" % key,
                       "a=1; sid=%s" % key][rep]
            return "/?r=%d" % rep, {"Cookie": cookies}
        self.check_sticky("hcookie.test", req)

    def test_hash_on_query_is_sticky_and_spreads(self):
        def req(key, rep):
            return ["/?user=%s" % key, "/x?a=1&user=%s" % key,
                    "/y?user=%s&b=2" % key][rep], None
        self.check_sticky("hquery.test", req)

    def test_hash_on_path_is_sticky_and_spreads(self):
        # The path without its query string is the key.
        def req(key, rep):
            return "/%s?rep=%d" % (key, rep), None
        self.check_sticky("hpath.test", req)

    def test_hash_on_ip_is_sticky(self):
        # Every test client is 127.0.0.1: one target for all of them, on both workers.
        seen = {self.one("hip.test", "/?i=%d" % i) for i in range(30)}
        self.assertEqual(len(seen), 1, seen)

    def test_hash_without_key_is_weighted_random(self):
        s = self.seq("hkeyless.test", 3000)
        self.assertShares(collections.Counter(s), {"a": 2, "b": 3, "c": 5}, 0.05)


class HashReloadTest(RT.ReloadTestCase):
    """Removing one of three targets by a reload moves the removed target's keys (about a
    third) and hardly any other."""

    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.b = cls.start_origin("b")
        cls.c = cls.start_origin("c")
        cls.targets = [cls.a.address(), cls.b.address(), cls.c.address()]
        cls.proxy = cls.start_reload_proxy(
            {"app": H.upstream(*cls.targets, balance="hash", hash_on="query:k")},
            [{"match": {"prefix": "/"}, "upstream": "app"}], workers=2)
        H.wait_for(lambda: H.port_accepts(cls.proxy.admin_port), H.T(10), what="the admin API")

    def mapping(self, keys):
        out = {}
        c = None
        for k in keys:
            if c is None:
                c = H.Client(self.proxy.port, timeout=H.T(20))
            r = c.request("GET", "/?k=%s" % k)
            self.assertEqual(r.status, 200, r)
            out[k] = origin_of(r)
            if "close" in r.tokens("connection"):
                c.close()
                c = None
        if c is not None:
            c.close()
        return out

    def test_removing_a_target_remaps_about_a_third(self):
        keys = ["key%d" % i for i in range(300)]
        before = self.mapping(keys)
        self.assertEqual(self.mapping(keys), before, "not stable without a change")
        self.assertEqual(set(before.values()), {"a", "b", "c"})
        on_c = [k for k in keys if before[k] == "c"]
        self.assertGreater(len(on_c), 45, "c has too few keys to measure: %d" % len(on_c))

        up = dict(self.proxy.cfg["upstreams"])
        up["app"] = H.upstream(self.targets[0], self.targets[1], balance="hash",
                               hash_on="query:k")
        self.rewrite(upstreams=up)
        self.reload()
        after = self.mapping(keys)  # fresh connections: the new generation
        self.assertNotIn("c", after.values())
        moved = [k for k in keys if after[k] != before[k]]
        frac = len(moved) / len(keys)
        note("hash: %d of %d keys were on c; %d moved" % (len(on_c), len(keys), len(moved)))
        self.assertGreaterEqual(frac, 0.15, "moved %.2f" % frac)
        self.assertLessEqual(frac, 0.50, "moved %.2f" % frac)
        # Maglev: keys that were not on c almost all stay where they were.
        stayed_off_c = [k for k in keys if before[k] != "c"]
        strays = [k for k in stayed_off_c if after[k] != before[k]]
        self.assertLessEqual(len(strays), len(stayed_off_c) * 0.05,
                             "%d of %d keys not on c moved" % (len(strays), len(stayed_off_c)))
        # c's keys spread over both survivors.
        self.assertEqual({after[k] for k in on_c}, {"a", "b"})

        # Putting c back gives it exactly its keys back.
        up["app"] = H.upstream(*self.targets, balance="hash", hash_on="query:k")
        self.rewrite(upstreams=up)
        self.reload()
        self.assertEqual(self.mapping(keys), before)


class BalanceConfigTest(H.ProxyTestCase):
    """`luaproxy -t` names the key path of a bad balance or hash_on."""

    @classmethod
    def setUpClass(cls):
        H.require_proxy()
        cls.dir = H.Workdir.new("balance-config")

    def check(self, **upstream_keys):
        cfg = H.make_config(0, {"app": H.upstream("127.0.0.1:9", **upstream_keys)},
                            [{"match": {"prefix": "/"}, "upstream": "app"}])
        path = os.path.join(self.dir, "%d.lua" % time.monotonic_ns())
        with open(path, "w") as f:
            f.write(H.config_text(cfg))
        p = subprocess.run([H.LUAPROXY, "-t", "-c", path], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=H.T(20), preexec_fn=H._preexec)
        err = p.stderr.decode("utf-8", "replace") + p.stdout.decode("utf-8", "replace")
        self.assertEqual(H.sanitizer_errors(err), [], err)
        return p.returncode, err

    def test_good_policies(self):
        for kw in ({"balance": "round_robin"}, {"balance": "least_conn"}, {"balance": "p2c"},
                   {"balance": "hash"}, {"balance": "hash", "hash_on": "ip"},
                   {"balance": "hash", "hash_on": "path"},
                   {"balance": "hash", "hash_on": "header:X-User"},
                   {"balance": "hash", "hash_on": "cookie:sid"},
                   {"balance": "hash", "hash_on": "query:u"}):
            with self.subTest(**kw):
                rc, err = self.check(**kw)
                self.assertEqual(rc, 0, err)

    def test_unknown_balance(self):
        for bad in ("bogus", "roundrobin", "", "HASH"):
            with self.subTest(balance=bad):
                rc, err = self.check(balance=bad)
                self.assertNotEqual(rc, 0, err)
                self.assertIn("upstreams.app.balance", err)

    def test_balance_not_a_string(self):
        rc, err = self.check(balance=3)
        self.assertNotEqual(rc, 0, err)
        self.assertIn("upstreams.app.balance", err)

    def test_bad_hash_on(self):
        for bad in ("bogus", "header:", "cookie:", "query:", "header", "cookie", "IP",
                    "path:x", ""):
            with self.subTest(hash_on=bad):
                rc, err = self.check(balance="hash", hash_on=bad)
                self.assertNotEqual(rc, 0, err)
                self.assertIn("upstreams.app.hash_on", err)


if __name__ == "__main__":
    H.main()
