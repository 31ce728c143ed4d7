#!/usr/bin/env python3
"""A memory hit's body through a response_body filter that sends little or nothing (issue
#13, engine/conn.c's conn_cache_pump): such a filter never fills the client's queue, so
nothing made the pump stop, and it ran the filter over the whole entry (a 32 MiB entry: 512
Lua calls) in one loop turn while the worker served nobody else. The pump now moves a
bounded share of the entry per turn and goes on at the next (engine/turn.h).

One worker, the hitdrop fixture (tests/integration/lua/plugins/hitdrop.lua): a request on
another connection waits, a loop turn at a time, until the hit's filter ran once; the
filter's last output says whether that request had been answered by then. Before the fix
it never had (the whole hit ran in the turn that started it); now it has. Ordering, not
time. The same over HTTP/2; then the endings a continuation must survive: the client
leaving mid-hit (HTTP/1.1 close, HTTP/2 reset and close) and the filter raising mid-hit
(run under ASan too)."""

import os
import re
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
from test_h2 import Client as H2Client  # noqa: E402 - python3-h2, as test_h2.py finds it
import h2.settings  # noqa: E402 - on the path test_h2 set

ZONE = "t"
SIZE = 32 * 1024 * 1024  # 512 chunks of 64 KiB: the filter's calls are 513 with eof's
BODY = H.large_body(SIZE)
WHOLE = re.compile(rb"^calls=513\|waiter=(\w+( up)?)$")


class CacheTurnTest(H.ProxyTestCase):
    FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua", "plugins")

    @classmethod
    def setUpClass(cls):
        cls.origin = H.ScriptedOrigin()
        cls.addClassCleanup(cls.origin.stop)

    def start(self):
        hd = lambda role: {"name": "hitdrop", "role": role}  # noqa: E731
        p = H.Proxy.build(
            {"o": H.upstream(self.origin.address())},
            [{"match": {"prefix": "/wait"}, "upstream": "o", "plugins": [hd("wait")]},
             {"match": {"prefix": "/peek"}, "upstream": "o", "plugins": [hd("peek")]},
             {"match": {"prefix": "/"}, "upstream": "o",
              "plugins": [hd("drop"), {"name": "cache", "zone": ZONE}]}],
            name=self._testMethodName, workers=1, lua={"plugin_paths": [self.FIXTURES]},
            cache={"zones": {ZONE: {"memory": "64m", "max_object_size": "40m"}}})
        p.cfg["listen"] = [{"address": "127.0.0.1:0", "http2": True}]  # h2c beside HTTP/1.1
        self.addCleanup(p.stop)
        p.start()
        path = "/" + self._testMethodName
        self.origin.script(path, lambda req, n: H.cacheable(BODY))
        r = self.get(p, path)  # the miss that stores the entry (its body dropped too)
        self.assertEqual(r.status, 200)
        self.assertNotIn("hit", r.header("cache-status") or "")
        return p, path

    def get(self, p, path, headers=None):
        r = H.get(p.port, path, host="a.test", headers=headers, timeout=H.T(60))
        self.assertTrue(p.alive(), p.stderr()[-4000:])
        return r

    def hit_whole(self, p, path, headers=None):
        """A hit whose filter ran over the whole entry: the waiter's state its end saw."""
        r = self.get(p, path, headers)
        self.assertEqual(r.status, 200)
        self.assertRegex(r.header("cache-status") or "", r"; hit")
        m = WHOLE.match(r.body)
        self.assertIsNotNone(m, r.body[:200])
        return m.group(1).decode()

    def waiting(self, p):
        """A request on its own connection, held in its request phase until a marked hit's
        filter ran: its client, once the proxy says it waits."""
        w = H.Client(p.port, timeout=H.T(60))
        self.addCleanup(w.close)
        w.send(H.build_request("GET", "/wait"))
        H.wait_for(lambda: self.get(p, "/peek").body == b"waiting" or None, H.T(20),
                   what="the waiting request")
        return w

    def h2_client(self, p):
        c = H2Client(p.port)
        self.addCleanup(c.close)
        c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        c.conn.increment_flow_control_window(64 << 20)
        c.flush()
        return c

    @staticmethod
    def h2_open(c, path, headers=()):
        sid = c.conn.get_next_available_stream_id()
        c.st(sid)
        c.conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"),
                                  (":authority", "a.test"), (":path", path)] + list(headers),
                            end_stream=True)
        c.flush()
        return sid

    def test_other_connections_are_served_during_a_dropped_hit(self):
        p, path = self.start()
        # HTTP/1.1: the waiter is answered before the hit's filter ends.
        w = self.waiting(p)
        self.assertEqual(self.hit_whole(p, path, {"X-Hitdrop": "1"}), "answered")
        r = w.read_response()
        self.assertEqual((r.status, r.body), (200, b"answered"))
        # HTTP/2: the same pump under a stream.
        w = self.waiting(p)
        c = self.h2_client(p)
        sid = self.h2_open(c, path, [("x-hitdrop", "1")])
        c.pump(lambda: c.done(sid), timeout=H.T(60))
        st = c.streams[sid]
        self.assertEqual((st["status"], st["ended"], st["reset"]), (200, True, None))
        m = WHOLE.match(bytes(st["data"]))
        self.assertIsNotNone(m, bytes(st["data"])[:200])
        self.assertEqual(m.group(1), b"answered")
        r = w.read_response()
        self.assertEqual((r.status, r.body), (200, b"answered"))
        self.assertEqual(self.origin.count(path), 1)

    def test_client_leaving_mid_hit(self):
        # Clients that leave once the head came (the rest of the hit goes on turn by turn):
        # HTTP/1.1 closed and reset, an HTTP/2 stream reset, an HTTP/2 connection closed.
        # The proxy goes on serving whole hits.
        p, path = self.start()
        for abort in (False, True):
            for _ in range(3):
                c = H.Client(p.port, timeout=H.T(60))
                c.send(H.build_request("GET", path))
                c.read_head()
                c.abort() if abort else c.close()
        c = self.h2_client(p)
        for _ in range(3):
            sid = self.h2_open(c, path)
            c.pump(lambda: c.streams[sid]["status"] is not None or c.done(sid))
            if not c.done(sid):  # else the hit ended in the read that brought its head
                c.conn.reset_stream(sid)
                c.flush()
        sid = self.h2_open(c, path)
        c.pump(lambda: c.done(sid), timeout=H.T(60))
        self.assertIsNotNone(WHOLE.match(bytes(c.streams[sid]["data"])))
        for _ in range(3):
            c2 = self.h2_client(p)
            sid = self.h2_open(c2, path)
            c2.pump(lambda: c2.streams[sid]["status"] is not None or c2.done(sid))
            c2.close()
        self.hit_whole(p, path)
        self.assertEqual(self.origin.count(path), 1)

    def test_filter_raising_mid_hit(self):
        # The filter raises on its 9th call: past the first turn's share. The answer is cut
        # short (the HTTP/1.1 connection ends without the body's end, the HTTP/2 stream is
        # reset); the error is logged; the next hits are whole.
        p, path = self.start()
        bad = {"X-Hitdrop-Error": "9"}
        for _ in range(2):
            c = H.Client(p.port, timeout=H.T(60))
            self.addCleanup(c.close)
            c.send(H.build_request("GET", path, bad))
            closed, got = c.wait_closed(H.T(60))
            self.assertTrue(closed)
            self.assertNotIn(b"calls=", got)
        p.wait_log("hitdrop: error on call 9", count=2)
        c = self.h2_client(p)
        sid = self.h2_open(c, path, [("x-hitdrop-error", "9")])
        c.pump(lambda: c.done(sid), timeout=H.T(60))
        self.assertNotIn(b"calls=", bytes(c.streams[sid]["data"]))
        self.assertIsNotNone(c.streams[sid]["reset"])
        sid = self.h2_open(c, path)
        c.pump(lambda: c.done(sid), timeout=H.T(60))
        self.assertIsNotNone(WHOLE.match(bytes(c.streams[sid]["data"])))
        self.hit_whole(p, path)
        self.assertEqual(self.origin.count(path), 1)


if __name__ == "__main__":
    H.main()
