#!/usr/bin/env python3
"""Coalesced misses answered from the entry as it fills (issue #13): requests waiting for
another request's fill of a key get the response's head as soon as the fill's head is
written and its body as it comes from the origin (engine/conn.c's fill stream), over HTTP/1.1
(Content-Length, or chunked when the origin's length is unknown) and HTTP/2, on two workers,
with one origin request; a waiter of another Vary variant never follows the fill. A fill
that fails mid-body cuts every waiter's answer short (never a complete wrong body) and the
next request fetches again; a waiter that goes mid-stream leaves the others whole.

The origin holds the rest of the body back until every client has its first body byte (an
event, not a timing): without streaming to waiters, those first bytes would never come."""

import os
import socket
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness as H  # noqa: E402

ZONE = "fs"
BODY = H.large_body(100 * 1024)
PARTS = 10


class Reader:
    """A raw HTTP/1.1 GET on its own connection, read as it comes."""

    def __init__(self, port, path, host="a.test", fields=""):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=H.T(20))
        self.s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (path, host, fields)).encode())
        self.buf = bytearray()
        self.eof = False

    def _more(self):
        try:
            d = self.s.recv(65536)
        except ConnectionResetError:
            d = b""
        if not d:
            self.eof = True
        self.buf += d

    def first_byte(self):
        """Waits for the head and at least one body byte (a socket timeout fails)."""
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0 and len(self.buf) > i + 4:
                return
            if self.eof:
                raise AssertionError("closed before the first body byte: %r" % bytes(self.buf))
            self._more()

    def finish(self):
        """(head fields, body, complete): reads to the framing's end or the close."""
        while self.buf.find(b"\r\n\r\n") < 0 and not self.eof:
            self._more()
        i = self.buf.find(b"\r\n\r\n")
        if i < 0:
            return {}, b"", False
        lines = bytes(self.buf[:i]).decode("latin-1").split("\r\n")
        fields = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            fields[k.strip().lower()] = v.strip()
        rest = self.buf[i + 4:]
        if "content-length" in fields:
            n = int(fields["content-length"])
            while len(rest) < n and not self.eof:
                self._more()
                rest = self.buf[i + 4:]
            return fields, bytes(rest[:n]), len(rest) >= n
        # chunked
        body = bytearray()
        off = 0
        while True:
            j = rest.find(b"\r\n", off)
            if j < 0:
                if self.eof:
                    return fields, bytes(body), False
                self._more()
                rest = self.buf[i + 4:]
                continue
            size = int(bytes(rest[off:j]).split(b";")[0], 16)
            if len(rest) < j + 2 + size + 2:
                if self.eof:
                    return fields, bytes(body), False
                self._more()
                rest = self.buf[i + 4:]
                continue
            if size == 0:
                return fields, bytes(body), True
            body += rest[j + 2:j + 2 + size]
            off = j + 2 + size + 2

    def close(self):
        self.s.close()


def parts(body, n):
    step = (len(body) + n - 1) // n
    return [body[i:i + step] for i in range(0, len(body), step)]


class Gates:
    """The origin's script for one path: it tells when the request arrived, sends the head
    with the first part once `head` is set, the other parts (a slow origin: 10 parts over
    2 s) once `rest` is set, then ends as told: "whole", or "fail" (closes mid-body)."""

    def __init__(self, body, chunked=False, end="whole", fields=""):
        self.arrived = threading.Event()
        self.head = threading.Event()
        self.rest = threading.Event()
        self.body, self.chunked, self.end, self.fields = body, chunked, end, fields
        self.later = H.cacheable(body)  # a later fetch (after a failed fill)

    def __call__(self, req, n):
        if n > 1:
            return self.later
        return self.gen()

    def frame(self, part):
        return b"%x\r\n%s\r\n" % (len(part), part) if self.chunked else part

    def gen(self):
        self.arrived.set()
        self.head.wait(H.T(30))
        framing = ("Transfer-Encoding: chunked" if self.chunked
                   else "Content-Length: %d" % len(self.body))
        head = ("HTTP/1.1 200 OK\r\nCache-Control: max-age=3600\r\n%s%s\r\n\r\n"
                % (self.fields, framing)).encode()
        ps = parts(self.body, PARTS)
        yield head + self.frame(ps[0])
        self.rest.wait(H.T(30))
        for p in ps[1:]:
            if self.end == "fail" and p is ps[PARTS // 2]:
                yield "close"
            time.sleep(0.2)  # the origin's pace, not a synchronisation
            yield self.frame(p)
        if self.chunked:
            yield b"0\r\n\r\n"


class FillStreamTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = H.ScriptedOrigin()
        cls.addClassCleanup(cls.origin.stop)
        p = H.Proxy.build(
            {"o": H.upstream(cls.origin.address())},
            [{"match": {"prefix": "/"}, "upstream": "o",
              "plugins": [{"name": "cache", "zone": ZONE, "lock_timeout": 20}]}],
            name=cls.__name__, workers=2,
            cache={"zones": {ZONE: {"memory": "16m", "max_object_size": "1m"}}})
        p.cfg["listen"] = [{"address": "127.0.0.1:0", "http2": True}]
        cls.addClassCleanup(p.stop)
        cls.proxy = p.start()
        cls.port = cls.proxy.port

    def tearDown(self):
        self.assertAlive()

    def path(self):
        return "/" + self._testMethodName

    def start(self, gates, waiters=5):
        """The filler's request, then the waiters' once the origin has it: every client
        with its first body byte while the origin holds the rest back."""
        p = self.path()
        self.origin.script(p, gates)
        filler = Reader(self.port, p)
        self.assertTrue(gates.arrived.wait(H.T(20)), "the fill's request never came")
        ws = [Reader(self.port, p) for _ in range(waiters)]
        # Most of them are waiting on the key by the time the head goes (woken early);
        # any later one attaches at once: both are what is tested.
        time.sleep(0.3)
        gates.head.set()
        for r in [filler] + ws:
            r.first_byte()
        return filler, ws

    def test_waiters_read_as_it_fills(self):
        g = Gates(BODY)
        filler, ws = self.start(g)
        g.rest.set()  # only now can the fill end: every first byte came before it
        for r in [filler] + ws:
            fields, body, complete = r.finish()
            self.assertTrue(complete)
            self.assertEqual(len(body), len(BODY))
            self.assertEqual(body, BODY)
            r.close()
        self.assertEqual(self.origin.count(self.path()), 1)
        r = H.get(self.port, self.path(), host="a.test", timeout=H.T(10))
        self.assertEqual(r.body, BODY)
        self.assertRegex(r.header("cache-status"), r"hit")

    def test_waiters_of_unknown_length_get_chunks(self):
        g = Gates(BODY, chunked=True)
        filler, ws = self.start(g, waiters=3)
        g.rest.set()
        for r in ws:
            fields, body, complete = r.finish()
            self.assertEqual(fields.get("transfer-encoding"), "chunked", fields)
            self.assertIn("collapsed", fields.get("cache-status", ""), fields)
            self.assertTrue(complete)
            self.assertEqual(body, BODY)
            r.close()
        self.assertEqual(filler.finish()[1], BODY)
        filler.close()
        self.assertEqual(self.origin.count(self.path()), 1)

    def test_fill_failing_mid_body_cuts_waiters_short(self):
        g = Gates(BODY, end="fail")
        filler, ws = self.start(g, waiters=3)
        g.rest.set()
        for r in [filler] + ws:
            fields, body, complete = r.finish()
            self.assertFalse(complete, "a truncated body must show")
            self.assertTrue(r.eof, "the connection is closed")
            self.assertLess(len(body), len(BODY))
            self.assertEqual(body, BODY[:len(body)])
            r.close()
        # Nothing was stored: the next request fetches again, whole.
        r = H.get(self.port, self.path(), host="a.test", timeout=H.T(10))
        self.assertEqual(r.body, BODY)
        self.assertEqual(self.origin.count(self.path()), 2)

    def test_http10_waiter_never_follows(self):
        # An HTTP/1.0 client's answer of unknown length ends at the close, which a failing
        # fill would make look whole: such a waiter does not follow the fill; it waits, and
        # when the fill fails it goes upstream itself and gets the whole body.
        g = Gates(BODY, chunked=True, end="fail")
        p = self.path()
        self.origin.script(p, g)
        filler = Reader(self.port, p)
        self.assertTrue(g.arrived.wait(H.T(20)), "the fill's request never came")
        s = socket.create_connection(("127.0.0.1", self.port), timeout=H.T(30))
        s.sendall(("GET %s HTTP/1.0\r\nHost: a.test\r\n\r\n" % p).encode())
        time.sleep(0.3)  # waiting on the key when the head goes, or coming after: either way
        g.head.set()
        filler.first_byte()
        g.rest.set()
        fields, body, complete = filler.finish()
        self.assertFalse(complete)
        filler.close()
        got = bytearray()
        while True:
            d = s.recv(65536)
            if not d:
                break
            got += d
        s.close()
        head, _, body = bytes(got).partition(b"\r\n\r\n")
        self.assertIn(b" 200 ", head.split(b"\r\n")[0])
        self.assertEqual(body, BODY)
        self.assertEqual(self.origin.count(p), 2)

    def test_waiter_leaving_mid_stream(self):
        g = Gates(BODY)
        filler, ws = self.start(g, waiters=3)
        ws[0].close()  # gone after its first byte, with the fill going on
        g.rest.set()
        for r in [filler] + ws[1:]:
            fields, body, complete = r.finish()
            self.assertTrue(complete)
            self.assertEqual(body, BODY)
            r.close()
        self.assertEqual(self.origin.count(self.path()), 1)

    def test_other_variant_never_follows(self):
        # A waiter of another Vary variant is not answered from the fill (nor from its
        # entry): it goes upstream itself once the fill ends; one of the same variant
        # follows the fill.
        p = self.path()
        other = b"the other variant"
        g = Gates(BODY, fields="Vary: Accept-Encoding\r\n")
        g.later = H.cacheable(other, ("Vary", "Accept-Encoding"))
        self.origin.script(p, g)
        filler = Reader(self.port, p, fields="Accept-Encoding: gzip\r\n")
        self.assertTrue(g.arrived.wait(H.T(20)))
        same = Reader(self.port, p, fields="Accept-Encoding: gzip\r\n")
        diff = Reader(self.port, p, fields="Accept-Encoding: br\r\n")
        time.sleep(0.3)  # as in start(): early or late, both pass
        g.head.set()
        filler.first_byte()
        same.first_byte()
        g.rest.set()
        for r, want in ((filler, BODY), (same, BODY), (diff, other)):
            fields, body, complete = r.finish()
            self.assertTrue(complete)
            self.assertEqual(body, want)
            r.close()
        self.assertEqual(self.origin.count(p), 2)

    def test_http2_waiter(self):
        import test_h2
        g = Gates(BODY)
        p = self.path()
        self.origin.script(p, g)
        filler = Reader(self.port, p, host="localhost")  # the h2 client's :authority
        self.assertTrue(g.arrived.wait(H.T(20)))
        c = test_h2.Client(self.port)
        try:
            sid = c.request(p)
            time.sleep(0.3)  # as in start(): early or late, both pass
            g.head.set()
            filler.first_byte()
            c.pump(lambda: len(c.streams[sid]["data"]) > 0 or c.done(sid))
            self.assertGreater(len(c.streams[sid]["data"]), 0)
            self.assertFalse(c.done(sid))
            g.rest.set()
            c.pump(lambda: c.done(sid))
            st = c.streams[sid]
            self.assertEqual(st["reset"], None)
            self.assertEqual(bytes(st["data"]), BODY)
            self.assertIn("collapsed", st["headers"].get("cache-status", ""), st["headers"])
        finally:
            c.close()
        self.assertEqual(filler.finish()[1], BODY)
        filler.close()
        self.assertEqual(self.origin.count(p), 1)


if __name__ == "__main__":
    unittest.main()
