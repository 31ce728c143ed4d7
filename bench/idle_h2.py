#!/usr/bin/env python3
"""Open many idle HTTP/2-over-TLS client connections to 127.0.0.1:PORT.

Each connection does the TLS handshake (ALPN h2), sends the client preface, an empty
SETTINGS frame and one GET on stream 1, reads until that stream ends (END_STREAM on DATA or
HEADERS), acknowledges the server's SETTINGS, then stays open and silent. Used by
harness.py for the idle-h2-connection memory figure (IDLE_H2); can be run by hand too:
  python3 bench/idle_h2.py --port 18443 --n 3000
(prints 'open N', holds the connections until stdin closes or a line arrives).
Standard library only (the few frames it needs are written by hand, no python3-h2), so
it runs under any python3. Needs an open-file limit above N (ulimit -n).
"""
import errno
import os
import selectors
import socket
import ssl
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from idle_conns import close_all, serve_idle  # noqa: E402,F401 (close_all: bench/harness.py)

HOST = "127.0.0.1"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY, RST = 0x0, 0x1, 0x4, 0x6, 0x7, 0x3
END_STREAM, ACK = 0x1, 0x1


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", ftype, flags, stream) + payload


def _hpack_literal(name_index, value):
    """Literal header field without indexing, indexed name (RFC 7541 6.2.2); value < 127."""
    v = value.encode()
    assert len(v) < 127
    # a 4-bit prefix integer (RFC 7541 5.1); the names used here are below 128 + 15
    idx = bytes([name_index]) if name_index < 15 else bytes([15, name_index - 15])
    return idx + bytes([len(v)]) + v


def request_bytes(port, path):
    # :method GET (static 2), :scheme https (7), :path (name 4), :authority (name 1)
    block = b"\x82\x87" + _hpack_literal(4, path) + _hpack_literal(1, "%s:%d" % (HOST, port))
    block += _hpack_literal(58, "lp-bench-idle-h2")  # user-agent (static 58)
    return (PREFACE + frame(SETTINGS, 0, 0)
            + frame(HEADERS, 0x4 | END_STREAM, 1, block))  # END_HEADERS | END_STREAM


class _Conn:
    __slots__ = ("raw", "tls", "state", "out", "buf", "done")

    def __init__(self, raw, tls):
        self.raw, self.tls = raw, tls
        self.state = "connect"
        self.out = b""
        self.buf = b""
        self.done = False


def _feed(c):
    """Parses whole frames in c.buf; queues SETTINGS ACKs; True once stream 1 ended."""
    while len(c.buf) >= 9:
        length = int.from_bytes(c.buf[:3], "big")
        if len(c.buf) < 9 + length:
            break
        ftype, flags = c.buf[3], c.buf[4]
        stream = struct.unpack(">I", c.buf[5:9])[0] & 0x7FFFFFFF
        c.buf = c.buf[9 + length:]
        if ftype == SETTINGS and not flags & ACK:
            c.out += frame(SETTINGS, ACK, 0)
        elif ftype in (GOAWAY,) or (ftype == RST and stream == 1):
            raise ConnectionError("GOAWAY or RST_STREAM before the response ended")
        elif ftype in (DATA, HEADERS) and stream == 1 and flags & END_STREAM:
            c.done = True
    return c.done


def open_idle(port, n, path="/", inflight=100, timeout=120.0):
    """Return (idle TLS sockets, failures)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    req = request_bytes(port, path)
    sel = selectors.DefaultSelector()
    idle, failures, started, pending = [], 0, 0, 0
    deadline = time.monotonic() + timeout

    def start_one():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex((HOST, port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            return False
        sel.register(s, selectors.EVENT_WRITE, _Conn(s, None))
        return True

    def fail(c):
        nonlocal failures, pending
        sel.unregister(c.raw)
        (c.tls or c.raw).close()
        failures += 1
        pending -= 1

    while len(idle) + failures < n and time.monotonic() < deadline:
        while pending < inflight and started < n:
            started += 1
            if start_one():
                pending += 1
            else:
                failures += 1
        for key, _ev in sel.select(timeout=0.5):
            c = key.data
            try:
                if c.state == "connect":
                    err = c.raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, "connect")
                    c.tls = ctx.wrap_socket(c.raw, do_handshake_on_connect=False,
                                            server_hostname="bench.test")
                    c.state = "handshake"
                if c.state == "handshake":
                    try:
                        c.tls.do_handshake()
                    except ssl.SSLWantReadError:
                        sel.modify(c.raw, selectors.EVENT_READ, c)
                        continue
                    except ssl.SSLWantWriteError:
                        sel.modify(c.raw, selectors.EVENT_WRITE, c)
                        continue
                    if c.tls.selected_alpn_protocol() != "h2":
                        raise ConnectionError("ALPN did not select h2")
                    c.state = "request"
                    c.out = req
                if c.out:
                    try:
                        sent = c.tls.send(c.out)
                        c.out = c.out[sent:]
                    except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                        pass
                try:
                    while True:
                        chunk = c.tls.recv(65536)
                        if not chunk:
                            raise ConnectionError("closed before the response ended")
                        c.buf += chunk
                        _feed(c)
                except ssl.SSLWantReadError:
                    pass
                if c.done and not c.out:
                    sel.unregister(c.raw)
                    idle.append(c.tls)
                    pending -= 1
                else:
                    sel.modify(c.raw, selectors.EVENT_WRITE if c.out else selectors.EVENT_READ, c)
            except (OSError, ConnectionError, ValueError) as e:
                if not failures:
                    print("idle_h2: first failure: %r" % (e,), file=sys.stderr)
                fail(c)
    for key in list(sel.get_map().values()):
        (key.data.tls or key.data.raw).close()
        failures += 1
    sel.close()
    return idle, failures


def count_open(socks):
    """How many of socks the server has not closed (peek at the raw socket, no TLS read)."""
    alive = 0
    for s in socks:
        try:
            raw = socket.socket(fileno=s.fileno())
            try:
                data = raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                if data:
                    alive += 1  # e.g. a session ticket or PING: the connection is open
            finally:
                raw.detach()
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


if __name__ == "__main__":
    serve_idle(__doc__.splitlines()[0], open_idle, count_open, 3000)
