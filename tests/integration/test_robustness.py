#!/usr/bin/env python3
"""Robustness: thousands of garbage, mutated, truncated and randomly split requests over
many connections, abrupt client aborts mid-response, many idle connections.  Afterwards
the proxy is alive, serves normally, and its file descriptors return to the baseline."""

import os
import random
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

SEED = int(os.environ.get("LP_IT_SEED", "12345"))

VALID = [
    H.build_request("GET", "/"),
    H.build_request("GET", "/headers?x=1", [("X-A", "b"), ("Cookie", "c=d")]),
    H.build_request("POST", "/echo", body=b"hello body"),
    H.build_request("POST", "/echo", [("Transfer-Encoding", "chunked")],
                    H.chunked(b"chunked hello", [3])),
    H.build_request("HEAD", "/fixed?size=10"),
    H.build_request("GET", "/", version="HTTP/1.0", host=None),
    H.build_request("GET", "/fixed?size=100", [("Connection", "close")]),
]

TOKENS = [b"GET", b"POST", b" ", b"/", b"HTTP/1.1", b"HTTP/1.0", b"\r\n", b"\n", b"\r",
          b":", b"Host", b"Content-Length", b"Transfer-Encoding", b"chunked", b"0", b"-1",
          b"ffffffff", b"\x00", b"\xff", b"Connection", b"close", b"Upgrade", b"websocket",
          b"Expect", b"100-continue", b",", b"\t", b"99999999999999999999"]


def mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 5)):
        op = rng.randrange(4)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            data[pos:pos] = bytes([rng.randrange(256)])
        elif op == 2 and data:
            del data[min(pos, len(data) - 1)]
        else:
            data[pos:pos] = rng.choice(TOKENS)
    return bytes(data)


def garbage(rng):
    kind = rng.randrange(5)
    if kind == 0:
        return "random", bytes(rng.randrange(256) for _ in range(rng.randint(1, 600)))
    if kind == 1:
        return "tokens", b"".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 60)))
    if kind == 2:
        v = rng.choice(VALID)
        return "truncated", v[:rng.randrange(1, len(v))]
    if kind == 3:
        return "mutated", mutate(rng, rng.choice(VALID) + rng.choice(VALID))
    reqs = [rng.choice(VALID[:5]) for _ in range(rng.randint(1, 4))]
    return "valid", b"".join(reqs), [r.split(b" ", 1)[0].decode() for r in reqs]


class RobustnessTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.proxy = cls.start_proxy({"a": H.upstream(cls.a.address())},
                                    [{"match": {"prefix": "/"}, "upstream": "a"}],
                                    workers=2, timeouts={"client_header": 2, "client_body": 2,
                                                         "keepalive": 2})
        # Baseline after some normal traffic (pooled upstream connections exist).
        for _ in range(5):
            H.get(cls.proxy.port, "/")
        cls.base_fds = H.fd_count(cls.proxy.pid)

    def assertFdsSettle(self, slack=16):
        H.wait_for(lambda: H.fd_count(self.proxy.pid) <= self.base_fds + slack, H.T(20),
                   interval=0.2,
                   what="proxy fds back near %d (now %d)" % (self.base_fds,
                                                             H.fd_count(self.proxy.pid)))

    def assertServes(self):
        self.assertAlive()
        r = H.get(self.proxy.port, "/")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"hello")

    def test_garbage_requests(self):
        n_conns = 4800
        n_threads = 12
        problems = []
        hung = []
        counts = {}
        lock = threading.Lock()

        def one(rng):
            kind, data, *methods = garbage(rng)
            with lock:
                counts[kind] = counts.get(kind, 0) + 1
            try:
                c = H.Client(self.proxy.port, timeout=H.T(10))
            except OSError as e:
                with lock:
                    problems.append(("connect", repr(e)))
                return
            try:
                try:
                    if rng.random() < 0.5:
                        c.send_split(data, rng.randint(2, 8))
                    else:
                        c.send(data)
                except OSError:
                    return  # the proxy refused and closed early: fine
                if kind == "valid":
                    # Every request of a clean pipeline gets a good answer, in order.
                    try:
                        for method in methods[0]:
                            r = c.read_response(method)
                            if r.status != 200 or not r.complete:
                                raise AssertionError("bad answer %r" % r)
                    except (AssertionError, OSError, H.PeerClosed) as e:
                        with lock:
                            problems.append(("valid request not answered", data[:300],
                                             repr(e)))
                    return
                c.shutdown_write()
                closed, out = c.wait_closed(H.T(8))
                if not closed:
                    with lock:
                        hung.append((kind, data[:200]))
            finally:
                c.close()

        def worker(k):
            rng = random.Random(SEED + k)
            for _ in range(n_conns // n_threads):
                one(rng)

        ts = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(n_threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(H.T(300))
        sys.stderr.write("\n  garbage connections by kind: %r\n" % counts)
        self.assertAlive()
        self.assertEqual(problems[:5], [], "%d problems" % len(problems))
        self.assertEqual(hung[:5], [], "%d connections not closed after client EOF" % len(hung))
        self.assertServes()
        self.assertFdsSettle()

    def test_byte_at_a_time_requests(self):
        rng = random.Random(SEED)
        for v in VALID[:5]:
            with H.Client(self.proxy.port) as c:
                c.send_split(v + H.build_request("GET", "/headers?after"), len(v), 0.001)
                method = v.split(b" ", 1)[0].decode()
                r = c.read_response(method)
                self.assertEqual(r.status, 200)
                r = c.read_response()
                self.assertEqual(r.json()["url"], "/headers?after")
        self.assertServes()

    def test_abrupt_client_aborts(self):
        rng = random.Random(SEED + 99)
        for i in range(60):
            c = H.Client(self.proxy.port)
            what = i % 4
            try:
                if what == 0:
                    c.send(H.build_request("GET", "/large?bytes=%d" % (20 << 20)))
                    c.read_head()
                    c.read_exact(rng.randint(1, 1 << 20))
                elif what == 1:
                    c.send(H.build_request("GET", "/slow?bytes=10000&chunk=100&delay_ms=20"))
                    c.read_head()
                elif what == 2:
                    c.send(H.build_request("POST", "/echo", [("Content-Length", "1000000")]) +
                           b"x" * rng.randint(0, 100000))
                else:
                    c.send(H.build_request("GET", "/delay?ms=300"))
            finally:
                if rng.random() < 0.5:
                    c.abort()
                else:
                    c.close()
        self.assertServes()
        self.assertFdsSettle()

    def test_many_idle_connections(self):
        conns = []
        try:
            for _ in range(500):
                conns.append(H.Client(self.proxy.port))
            for c in conns[::50]:
                r = c.request("GET", "/")
                self.assertEqual(r.status, 200)
            self.assertServes()
        finally:
            for c in conns:
                c.close()
        self.assertFdsSettle()

    def test_zz_final(self):
        self.assertServes()


if __name__ == "__main__":
    H.main()
