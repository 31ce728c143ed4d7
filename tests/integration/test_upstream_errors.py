#!/usr/bin/env python3
"""Upstream failures: refused (502), read timeout (504), truncation made visible to the
client, malformed responses (502, connection not reused), stale pooled connections
retried transparently, connect failures retried on another target."""

import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402


def race_handler(req):
    # Answers the first request on each connection (keep-alive), then closes the
    # connection on the next one without a byte: the stale-pooled-connection race.
    if req.index == 0:
        return H.simple_response(200, b"race-ok", [("X-Conn-No", str(req.conn_no))])
    return None


def bad101_handler(req):
    # A 101 whose Connection does not say upgrade: HTTP ends there for llhttp, so the proxy
    # must refuse it rather than wait for a final response that never comes.
    return (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upprade\r\n"
            b"Upgrade: websocket\r\n\r\n\x81\x05hello", "close")


def te_tab_handler(req):
    # "chunked" with a trailing tab: the field's value is "chunked" once its OWS goes (the
    # proxy's check), but llhttp does not read it as chunked and would relay the chunk
    # framing as a close-delimited body
    return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\t\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "close")


class UpstreamErrorsTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.b = cls.start_origin("b")
        cls.race = cls.start_raw_origin(race_handler)
        cls.bad101 = cls.start_raw_origin(bad101_handler)
        cls.te_tab = cls.start_raw_origin(te_tab_handler)
        cls.dead_port = H.dead_port()
        dead = "127.0.0.1:%d" % cls.dead_port
        ups = {
            "a": H.upstream(cls.a.address()),
            "b": H.upstream(cls.b.address()),
            "dead": H.upstream(dead),
            "mixed": H.upstream(dead, cls.a.address()),
            "race": H.upstream(cls.race.address()),
            "bad101": H.upstream(cls.bad101.address()),
            "tetab": H.upstream(cls.te_tab.address()),
        }
        routes = [{"match": {"host": h + ".test", "prefix": "/"}, "upstream": h}
                  for h in ("a", "b", "dead", "mixed", "race", "bad101", "tetab")]
        cls.proxy = cls.start_proxy(ups, routes, workers=1,
                                    timeouts={"connect": 2, "read": 1})

    def get(self, path, host="a.test", **kw):
        return H.get(self.proxy.port, path, host=host, timeout=H.T(20), **kw)

    def test_connection_refused_is_502(self):
        r = self.get("/", host="dead.test")
        self.assertEqual(r.status, 502)
        self.assertTrue(r.complete)

    def test_read_timeout_is_504(self):
        r = self.get("/delay?ms=6000")
        self.assertEqual(r.status, 504)
        self.assertTrue(r.complete)

    def test_delay_within_timeout_is_fine(self):
        r = self.get("/delay?ms=100")
        self.assertEqual(r.status, 200)

    def test_close_before_response_is_502(self):
        for path in ("/close-before", "/reset"):
            with self.subTest(path=path):
                r = self.get(path)
                self.assertEqual(r.status, 502)

    def test_truncated_response_is_visible(self):
        with H.Client(self.proxy.port, timeout=H.T(20)) as c:
            try:
                r = c.request("GET", "/close-mid?bytes=200000")
            except H.PeerClosed:
                return  # closed before any response: visible as a failure
            if r.status == 502:
                return
            self.assertEqual(r.status, 200)
            self.assertIn(r.framing, ("length", "chunked"),
                          "truncated body relayed as close-delimited: looks complete")
            self.assertFalse(r.complete, "client got a complete-looking response")
            self.assertLess(r.body_len, 200000)
            closed, _ = c.wait_closed(H.T(10))
            self.assertTrue(closed)

    def test_101_without_connection_upgrade_is_502(self):
        r = self.get("/", host="bad101.test")
        self.assertEqual(r.status, 502)

    def test_transfer_encoding_the_parser_does_not_read_as_chunked_is_502(self):
        r = self.get("/", host="tetab.test")
        self.assertEqual(r.status, 502)

    def test_malformed_responses_are_502_and_not_reused(self):
        for path in ("/bad/cl-te", "/bad/dup-cl", "/bad/status-line", "/bad/chunk-size"):
            with self.subTest(path=path):
                first = self.get("/", host="b.test")
                self.assertEqual(first.status, 200)
                cid, n = first.header("X-Conn-Id"), int(first.header("X-Conn-Requests"))
                with H.Client(self.proxy.port, timeout=H.T(20)) as c:
                    try:
                        r = c.request("GET", path, host="b.test")
                        if path == "/bad/chunk-size" and r.status == 200:
                            self.assertFalse(r.complete, "bad chunk relayed as complete")
                        else:
                            self.assertEqual(r.status, 502)
                    except H.PeerClosed:
                        self.assertEqual(path, "/bad/chunk-size", "closed without a 502")
                after = self.get("/", host="b.test")
                self.assertEqual(after.status, 200)
                # The same connection serving request n+2 means the bad one was on it and
                # the connection went back to the pool.
                if after.header("X-Conn-Id") == cid:
                    self.assertNotEqual(int(after.header("X-Conn-Requests")), n + 2,
                                        "connection that carried a bad response was reused")

    def test_connect_failure_retried_on_other_target(self):
        for i in range(6):
            r = self.get("/", host="mixed.test")
            self.assertEqual(r.status, 200, "request %d" % i)
            self.assertEqual(r.header("X-Origin-Id"), "a")

    def test_stale_pooled_connection_retried(self):
        r1 = self.get("/", host="race.test")
        self.assertEqual(r1.status, 200)
        r2 = self.get("/", host="race.test")
        self.assertEqual(r2.status, 200, "request on a connection the origin closed was not "
                         "retried on a new one")
        self.assertEqual(r2.body, b"race-ok")

    def test_zz_alive(self):
        self.assertAlive()


class OriginRestartTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.o = H.Origin("r1")
        cls.addClassCleanup(lambda: cls.o.stop())
        cls.o.start()
        cls.proxy = cls.start_proxy({"r": H.upstream(cls.o.address(), keepalive=8)},
                                    [{"match": {"prefix": "/"}, "upstream": "r"}], workers=1)

    def test_pooled_connection_to_restarted_origin(self):
        for round_ in range(3):
            r = H.get(self.proxy.port, "/")
            self.assertEqual(r.status, 200)
            r = H.get(self.proxy.port, "/")
            self.assertEqual(r.status, 200)
            self.assertGreater(int(r.header("X-Conn-Requests")), 1, "no pooling to test")
            port = self.o.port
            self.o.stop()
            self.o = type(self).o = H.Origin("r%d" % (round_ + 2), port)
            self.o.start()
            r = H.get(self.proxy.port, "/")
            self.assertEqual(r.status, 200, "stale pooled connection after origin restart")
            self.assertEqual(r.header("X-Origin-Id"), "r%d" % (round_ + 2))

    def test_origin_down_then_up(self):
        port = self.o.port
        self.o.stop()
        r = H.get(self.proxy.port, "/")
        self.assertEqual(r.status, 502)
        self.o = type(self).o = H.Origin("back", port)
        self.o.start()
        r = H.get(self.proxy.port, "/")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("X-Origin-Id"), "back")


if __name__ == "__main__":
    H.main()
