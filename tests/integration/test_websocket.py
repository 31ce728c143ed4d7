#!/usr/bin/env python3
"""WebSocket through the proxy: the Upgrade handshake is relayed (101), then the two
connections form a raw tunnel and frames are echoed both ways (RFC 6455)."""

import base64
import hashlib
import os
import select
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def encode_frame(opcode, payload, fin=True, mask=True):
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
    else:
        head = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else \
        _mask_fast(payload, key)
    return head + key + masked


def _mask_fast(payload, key):
    n = len(payload)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def read_frame(c):
    b0, b1 = c.read_exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", c.read_exact(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", c.read_exact(8))[0]
    key = c.read_exact(4) if b1 & 0x80 else None
    payload = c.read_exact(n)
    if key:
        payload = _mask_fast(payload, key) if n else payload
    return b0 & 0x0F, bool(b0 & 0x80), payload


def handshake(port, path="/ws", host="a.test"):
    c = H.Client(port, timeout=H.T(10))
    key = base64.b64encode(os.urandom(16)).decode()
    c.send(H.build_request("GET", path, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                         ("Sec-WebSocket-Key", key),
                                         ("Sec-WebSocket-Version", "13")], host=host))
    r = c.read_response()
    return c, r, key


class WebSocketTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.proxy = cls.start_proxy({"a": H.upstream(cls.a.address())},
                                    [{"match": {"prefix": "/"}, "upstream": "a"}], workers=2)

    def open_ws(self):
        c, r, key = handshake(self.proxy.port)
        self.addCleanup(c.close)
        self.assertEqual(r.status, 101, r)
        self.assertIn("websocket", r.tokens("upgrade"))
        self.assertIn("upgrade", r.tokens("connection"))
        accept = r.header("Sec-WebSocket-Accept")
        if accept is not None:
            expect = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
            self.assertEqual(accept, expect)
        return c

    def test_handshake_and_text_echo(self):
        c = self.open_ws()
        c.send(encode_frame(0x1, b"hello"))
        op, fin, payload = read_frame(c)
        self.assertEqual((op, fin, payload), (0x1, True, b"hello"))

    def test_binary_frames_both_sizes(self):
        c = self.open_ws()
        for n in (0, 1, 125, 126, 65535, 65536, 300000):
            with self.subTest(size=n):
                data = os.urandom(n)
                c.send(encode_frame(0x2, data))
                op, fin, payload = read_frame(c)
                self.assertEqual(op, 0x2)
                self.assertTrue(payload == data)

    def test_many_frames_in_one_write(self):
        c = self.open_ws()
        msgs = [("msg %d" % i).encode() * (i + 1) for i in range(50)]
        c.send(b"".join(encode_frame(0x1, m) for m in msgs))
        for m in msgs:
            op, fin, payload = read_frame(c)
            self.assertEqual(payload, m)

    def test_frames_split_into_bytes(self):
        c = self.open_ws()
        c.send_split(encode_frame(0x1, b"split across writes"), 10, 0.005)
        self.assertEqual(read_frame(c)[2], b"split across writes")

    def test_close_handshake_closes_tunnel(self):
        c = self.open_ws()
        c.send(encode_frame(0x8, struct.pack("!H", 1000) + b"bye"))
        op, fin, payload = read_frame(c)
        self.assertEqual(op, 0x8)
        c.shutdown_write()
        closed, _ = c.wait_closed(H.T(10))
        self.assertTrue(closed, "tunnel not closed after the WebSocket close handshake")

    def test_half_close_with_the_upgrade_request_ends_the_tunnel(self):
        # The Upgrade request and the client's FIN together: the 101 still comes, then the
        # tunnel ends (the origin hears the end as it would inside the tunnel) instead of
        # staying open for as long as the origin keeps it. Found by tests/fuzz/fuzz_conn.c.
        for _ in range(3):
            c = H.Client(self.proxy.port, timeout=H.T(10))
            self.addCleanup(c.close)
            key = base64.b64encode(os.urandom(16)).decode()
            c.send(H.build_request("GET", "/ws", [("Upgrade", "websocket"),
                                                  ("Connection", "Upgrade"),
                                                  ("Sec-WebSocket-Key", key),
                                                  ("Sec-WebSocket-Version", "13")],
                                   host="a.test"))
            c.shutdown_write()
            r = c.read_response()
            self.assertEqual(r.status, 101, r)
            closed, _ = c.wait_closed(H.T(5))
            self.assertTrue(closed, "the tunnel stayed open after the client's FIN")

    def test_client_abort_leaves_proxy_healthy(self):
        for _ in range(5):
            c = self.open_ws()
            c.send(encode_frame(0x1, b"x" * 1000))
            c.abort()
        c = self.open_ws()
        c.send(encode_frame(0x1, b"still here"))
        self.assertEqual(read_frame(c)[2], b"still here")

    def test_concurrent_tunnels(self):
        errors = []

        def run(i):
            try:
                c, r, _ = handshake(self.proxy.port)
                with c:
                    if r.status != 101:
                        errors.append("status %d" % r.status)
                        return
                    for j in range(20):
                        m = ("t%d-%d" % (i, j)).encode() * 50
                        c.send(encode_frame(0x2, m))
                        if read_frame(c)[2] != m:
                            errors.append("mismatch %d/%d" % (i, j))
            except Exception as e:
                errors.append(repr(e))

        ts = [threading.Thread(target=run, args=(i,)) for i in range(10)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(H.T(60))
        self.assertEqual(errors, [])

    def test_upgrade_refused_by_origin_stays_http(self):
        # The origin answers "/" with 200 and no upgrade: the connection stays HTTP.
        c, r, _ = handshake(self.proxy.port, path="/")
        with c:
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"hello")
            if not c.eof:
                r2 = c.request("GET", "/headers")
                self.assertEqual(r2.status, 200)
                self.assertEqual(r2.json()["url"], "/headers")

    def test_upgrade_headers_reach_origin(self):
        r = H.get(self.proxy.port, "/headers",
                  headers=[("Upgrade", "websocket"), ("Connection", "Upgrade"),
                           ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                           ("Sec-WebSocket-Version", "13")])
        self.assertEqual(r.status, 200)
        h = {n.lower(): v for n, v in r.json()["headers"]}
        self.assertEqual(h.get("upgrade", "").lower(), "websocket")
        self.assertIn("upgrade", h.get("connection", "").lower())
        self.assertEqual(h.get("sec-websocket-key"), "dGhlIHNhbXBsZSBub25jZQ==")

    def test_zz_alive(self):
        self.assertAlive()


class TunnelIdleTest(H.ProxyTestCase):
    """timeouts.tunnel: a tunnel with no byte either way for that long is closed (a client
    that left without its FIN or reset arriving must not hold both connections forever);
    traffic either way keeps it open. Found by tests/fuzz/fuzz_conn.c's liveness check."""

    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.proxy = cls.start_proxy({"a": H.upstream(cls.a.address())},
                                    [{"match": {"prefix": "/"}, "upstream": "a"}], workers=1,
                                    timeouts={"tunnel": 1.5})

    def test_traffic_keeps_it_and_silence_ends_it(self):
        c, r, _ = handshake(self.proxy.port)
        self.addCleanup(c.close)
        self.assertEqual(r.status, 101, r)
        # Four echoes 0.5 s apart: 2 s in all, longer than the timeout, never idle for it.
        for i in range(4):
            time.sleep(0.5)
            c.send(encode_frame(0x1, b"ping %d" % i))
            self.assertEqual(read_frame(c)[2], b"ping %d" % i)
        closed, _ = c.wait_closed(H.T(10))
        self.assertTrue(closed, "the idle tunnel stayed open")
        self.proxy.wait_log("idle for timeouts.tunnel", timeout=H.T(5))
        self.assertAlive()



class StalledOrigin:
    """Answers one Upgrade with 101, then never reads again (until stopped)."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(4)
        self.port = self.lsock.getsockname()[1]
        self.socks = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            s, _ = self.lsock.accept()
        except OSError:
            return
        self.socks.append(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = s.recv(4096)
            if not d:
                return
            buf += d
        s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                  b"Upgrade: websocket\r\n\r\n")

    def stop(self):
        for s in self.socks + [self.lsock]:
            s.close()


class StalledTunnelTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = StalledOrigin()
        cls.addClassCleanup(cls.origin.stop)
        cls.proxy = cls.start_proxy(
            {"s": H.upstream("127.0.0.1:%d" % cls.origin.port)},
            [{"match": {"prefix": "/"}, "upstream": "s"}], workers=1, timeouts={"send": 1})

    def test_origin_that_stops_reading_ends_the_tunnel(self):
        # The client fills the tunnel while the origin reads nothing: the proxy stops
        # reading the client (backpressure). Then the client goes. The upstream's send
        # timeout must end the tunnel; before, both connections stayed for as long as the
        # origin kept its socket. Found by tests/fuzz/fuzz_conn.c's liveness check.
        c, r, _ = handshake(self.proxy.port)
        self.addCleanup(c.close)
        self.assertEqual(r.status, 101, r)
        c.sock.setblocking(False)
        chunk = b"x" * 65536
        sent = 0
        stalled = False
        deadline = time.monotonic() + H.T(30)
        while sent < (64 << 20) and time.monotonic() < deadline:
            try:
                sent += c.sock.send(chunk)
            except BlockingIOError:
                # Nothing moves for 2 s: the proxy stopped reading us (backpressure). A
                # shorter wait took a busy machine's pause for backpressure; the proxy,
                # still reading, then saw the reset below and ended the tunnel without
                # needing the timeout.
                if select.select([], [c.sock], [], 2)[1] == []:
                    stalled = True
                    break
            except (ConnectionResetError, BrokenPipeError):
                stalled = True  # the send timeout (1 s) already ended the tunnel
                break
        self.assertTrue(stalled, "the proxy kept reading %d bytes the origin never read" % sent)
        c.abort()
        self.proxy.wait_log("send timed out", timeout=H.T(10))
        self.assertAlive()

if __name__ == "__main__":
    H.main()
