#!/usr/bin/env python3
"""What an HTTP/2 upstream's stream reset does to the request (engine/h2_up.c, stream_fail).

RFC 9113 8.7: only REFUSED_STREAM, or a GOAWAY whose last stream id is below the stream,
says the upstream did not process a request. Any other RST_STREAM (INTERNAL_ERROR, CANCEL)
may come after it acted on it: that is a failed try which the route's retries decide as
for an HTTP/1.1 upstream that failed after the request went out (an idempotent bodiless
request may go to another target, within `retries`; a POST never goes again), it is not a
stale connection (not sent again on a new one, not counted as `stale`), and the connection
stays in the pool. A refused stream still goes again, whatever its method and `retries`.

Before: a stream reset with INTERNAL_ERROR on a reused connection was sent again on a new
connection to the same target, outside `retries` (with `retries = 0` too), and counted as a
stale retry. The origins count what they received, by path."""

import http.client
import json
import os
import socket
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness as H  # noqa: E402
import test_h2 as T2  # noqa: E402  (python3-h2, and its scripted HTTP/2 client)

h2 = T2.h2
INTERNAL_ERROR, REFUSED_STREAM, CANCEL = 2, 7, 8


class ResetOrigin(T2.H2Origin):
    """An h2c origin (python3-h2, a thread per connection). With `resets`:
    /reset?code=C&... resets the stream with code C, without an answer, every time;
    /refuse-once?... resets it with REFUSED_STREAM the first time, answers after;
    /resetmid?... sends a head and some data, then resets with INTERNAL_ERROR;
    /took?... sends GOAWAY with the stream's id as the last (it took the request), then
    closes the connection without an answer.
    Any other path (and every path without `resets`) is answered 200 with x-conn (the
    connection's number) and the request body's length. `counts`: requests received (their
    END_STREAM), by path; `accepted`: connections. Listening, accepting and stopping are
    test_h2's H2Origin's."""

    def __init__(self, resets=True):
        # set before the base starts accepting: its connections' threads read them
        self.resets = resets
        self.counts = {}
        super().__init__()

    def address(self, weight=1):
        return {"address": "127.0.0.1:%d" % self.port, "weight": weight}

    def count(self, path):
        with self.lock:
            return self.counts.get(path, 0)

    def serve_one(self, s, num):
        c = h2.connection.H2Connection(config=h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8"))
        c.initiate_connection()
        s.sendall(c.data_to_send())
        s.settimeout(0.05)
        reqs = {}
        while not self.stopping:
            try:
                data = s.recv(65536)
                if not data:
                    return
                events = c.receive_data(data)
            except socket.timeout:
                continue
            except (OSError, h2.exceptions.ProtocolError):
                return
            for ev in events:
                if isinstance(ev, h2.events.RequestReceived):
                    reqs[ev.stream_id] = {"h": dict(ev.headers), "n": 0}
                elif isinstance(ev, h2.events.DataReceived):
                    reqs[ev.stream_id]["n"] += len(ev.data)
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if not isinstance(ev, h2.events.StreamEnded):
                    continue
                sid = ev.stream_id
                path = reqs[sid]["h"][":path"]
                with self.lock:
                    seen = self.counts[path] = self.counts.get(path, 0) + 1
                if self.resets and path.startswith("/reset?code="):
                    c.reset_stream(sid, error_code=int(path.split("=")[1].split("&")[0]))
                elif self.resets and path.startswith("/refuse-once") and seen == 1:
                    c.reset_stream(sid, error_code=REFUSED_STREAM)
                elif self.resets and path.startswith("/took"):
                    c.close_connection(last_stream_id=sid)
                    s.sendall(c.data_to_send())
                    return
                elif self.resets and path.startswith("/resetmid"):
                    # The head and data go out first, so that the response has started at
                    # the client when the reset comes.
                    c.send_headers(sid, [(":status", "200")])
                    c.send_data(sid, b"part")
                    s.sendall(c.data_to_send())
                    time.sleep(0.3)
                    c.reset_stream(sid, error_code=INTERNAL_ERROR)
                else:
                    c.send_headers(sid, [(":status", "200"), ("x-conn", str(num)),
                                         ("x-port", str(self.port))])
                    c.send_data(sid, b"got %d" % reqs[sid]["n"], end_stream=True)
            out = c.data_to_send()
            if out:
                try:
                    s.sendall(out)
                except OSError:
                    return


class H2RetryTest(H.ProxyTestCase):
    """One proxy (one worker, so one pool per target), three upstreams over the same two
    origins: `one` (the resetting origin alone, retries = 2), `two` (the resetting origin
    first, weight 100 to 1, then a good one; retries = 1) and `two0` (the same, retries =
    0). Each test first warms the resetting origin's pooled connection, so that the stream
    that is reset is on a connection that was up already (the case that counted as stale)."""

    @classmethod
    def setUpClass(cls):
        cls.bad = ResetOrigin(resets=True)
        cls.addClassCleanup(cls.bad.stop)
        cls.good = ResetOrigin(resets=False)
        cls.addClassCleanup(cls.good.stop)
        ups = {
            "one": H.upstream(cls.bad.address(), protocol="h2", retries=2),
            "two": H.upstream(cls.bad.address(100), cls.good.address(1), protocol="h2",
                              retries=1),
            "two0": H.upstream(cls.bad.address(100), cls.good.address(1), protocol="h2",
                               retries=0),
        }
        routes = [{"match": {"headers": {"x-up": name}}, "upstream": name}
                  for name in ("two", "two0")] + [{"match": {"prefix": "/"}, "upstream": "one"}]
        p = H.Proxy.build(ups, routes, name="h2retry", admin={"address": "127.0.0.1:0"})
        p.cfg["listen"] = [{"address": "127.0.0.1:0", "http2": True}]
        cls.addClassCleanup(p.stop)
        cls.proxy = p.start()

    def tearDown(self):
        self.assertAlive()

    def request(self, path, up="one", method="GET", body=None):
        """An HTTP/1.1 request to the proxy: (status, headers, body)."""
        c = http.client.HTTPConnection("127.0.0.1", self.proxy.port, timeout=H.T(20))
        try:
            c.request(method, path, body=body, headers={"x-up": up})
            r = c.getresponse()
            return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
        finally:
            c.close()

    def retries(self):
        c = http.client.HTTPConnection("127.0.0.1", self.proxy.admin_port, timeout=H.T(10))
        try:
            c.request("GET", "/status")
            r = c.getresponse()
            self.assertEqual(r.status, 200)
            return json.loads(r.read())["http2"]["upstream"]["retries"]
        finally:
            c.close()

    def warm(self, up="one"):
        """The resetting origin's pooled connection is up: its number."""
        status, hdrs, _ = self.request("/ok", up)
        self.assertEqual((status, hdrs.get("x-port")), (200, str(self.bad.port)), hdrs)
        return hdrs["x-conn"]

    def assertSameConnection(self, conn, accepted):
        """The connection the reset stream was on is still the pool's: no new one."""
        self.assertEqual(self.warm(), conn)
        self.assertEqual(self.bad.accepted, accepted)

    def test_a_reset_post_is_not_sent_again(self):
        for up, path in (("one", "/reset?code=2&t=post1"), ("two", "/reset?code=2&t=post2"),
                         ("one", "/reset?code=8&t=post3")):
            conn, accepted, r0 = self.warm(up), self.bad.accepted, self.retries()
            status, _, _ = self.request(path, up, method="POST", body=b"x" * 1000)
            self.assertEqual(status, 502, (up, path))
            self.assertEqual(self.bad.count(path), 1, (up, path))  # processed once at most
            self.assertEqual(self.good.count(path), 0, (up, path))
            self.assertEqual(self.retries(), r0)  # neither refused nor stale
            self.assertSameConnection(conn, accepted)
        self.proxy.wait_log("upstream reset the stream (RST_STREAM INTERNAL_ERROR) "
                            "(POST /reset?code=2&t=post1)")
        self.proxy.wait_log("upstream reset the stream (RST_STREAM CANCEL) "
                            "(POST /reset?code=8&t=post3)")

    def test_a_reset_get_follows_the_retry_policy(self):
        # One target: nothing else to try, whatever `retries`; the same one is not tried
        # again (before: again on a new connection, as a stale retry).
        conn, accepted, r0 = self.warm(), self.bad.accepted, self.retries()
        self.assertEqual(self.request("/reset?code=2&t=get1")[0], 502)
        self.assertEqual(self.bad.count("/reset?code=2&t=get1"), 1)
        self.assertEqual(self.retries(), r0)
        self.assertSameConnection(conn, accepted)
        # retries = 1: the next target answers.
        conn, accepted = self.warm("two"), self.bad.accepted
        status, hdrs, body = self.request("/reset?code=2&t=get2", "two")
        self.assertEqual((status, hdrs.get("x-port"), body), (200, str(self.good.port), b"got 0"))
        self.assertEqual(self.bad.count("/reset?code=2&t=get2"), 1)
        self.assertEqual(self.good.count("/reset?code=2&t=get2"), 1)
        self.assertEqual(self.retries(), r0)
        self.proxy.wait_log("upstream reset the stream (RST_STREAM INTERNAL_ERROR); retrying "
                            "(try 2)")
        self.assertSameConnection(conn, accepted)
        # retries = 0: the failure goes to the client.
        conn, accepted = self.warm("two0"), self.bad.accepted
        self.assertEqual(self.request("/reset?code=8&t=get3", "two0")[0], 502)
        self.assertEqual(self.bad.count("/reset?code=8&t=get3"), 1)
        self.assertEqual(self.good.count("/reset?code=8&t=get3"), 0)
        self.assertEqual(self.retries(), r0)
        self.assertSameConnection(conn, accepted)

    def test_a_refused_stream_still_goes_again(self):
        # REFUSED_STREAM: not processed, so sent again on another connection, a POST with
        # its body too, and with retries = 0 (it is the same try).
        self.warm("two0")
        r0 = self.retries()
        path = "/refuse-once?t=post"
        status, hdrs, body = self.request(path, "two0", method="POST", body=b"y" * 1000)
        self.assertEqual((status, hdrs.get("x-port"), body), (200, str(self.bad.port), b"got 1000"))
        self.assertEqual(self.bad.count(path), 2)  # refused, then answered
        self.assertEqual(self.good.count(path), 0)
        r1 = self.retries()
        self.assertEqual((r1["refused"] - r0["refused"], r1["stale"] - r0["stale"]), (1, 0))

    def test_a_connection_lost_after_its_goaway_took_the_stream_is_not_stale(self):
        # GOAWAY's last stream id says the origin took the stream: when the connection then
        # ends without an answer, the request may have been processed; retries decide (0
        # here), it is not sent again as on a stale connection (before: it was, counted).
        self.warm("two0")
        r0 = self.retries()
        self.assertEqual(self.request("/took?t=get", "two0")[0], 502)
        self.assertEqual(self.bad.count("/took?t=get"), 1)
        self.assertEqual(self.good.count("/took?t=get"), 0)
        self.assertEqual(self.retries(), r0)
        self.proxy.wait_log("(GET /took?t=get)")

    def test_an_h2_client_stream_reset_mid_response_is_logged_as_such(self):
        # The response started, then the upstream reset the stream: an HTTP/2 client's stream
        # is reset, its connection goes on, and the log says so (before: "closing").
        c = T2.Client(self.proxy.port)
        try:
            sid = c.request("/resetmid?t=h2", method="POST", body=b"z")
            c.pump(lambda: c.done(sid))
            self.assertIsNotNone(c.streams[sid]["reset"], c.streams[sid])
            other = c.request("/ok")
            c.pump(lambda: c.done(other))
            self.assertEqual(c.streams[other]["status"], 200)
        finally:
            c.close()
        log = self.proxy.wait_log("upstream reset the stream (RST_STREAM INTERNAL_ERROR) after "
                                  "the response started; resetting the stream")
        self.assertNotIn("POST /resetmid?t=h2: upstream reset the stream (RST_STREAM "
                         "INTERNAL_ERROR) after the response started; closing", log)
        self.assertEqual(self.bad.count("/resetmid?t=h2"), 1)


if __name__ == "__main__":
    unittest.main()
