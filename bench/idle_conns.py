#!/usr/bin/env python3
"""Open many idle HTTP/1.1 keep-alive client connections to 127.0.0.1:PORT.

Each connection sends one GET, reads the whole response, then stays open and
silent. Used by harness.py for the idle-connection memory figure; can be run by
hand too:  python3 bench/idle_conns.py --port 18080 --n 10000
(prints 'open N', holds the connections until stdin closes or a line arrives).
Needs an open-file limit above N (ulimit -n).
"""
import argparse
import errno
import selectors
import socket
import sys
import time

HOST = "127.0.0.1"


class _Conn:
    __slots__ = ("sock", "out", "buf", "done")

    def __init__(self, sock, req):
        self.sock = sock
        self.out = req
        self.buf = b""
        self.done = False


def _response_complete(buf):
    """True when buf holds one whole response (Content-Length or chunked)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = buf[:end].lower()
    body = buf[end + 4:]
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip()
        if name == b"content-length":
            return len(body) >= int(value.strip())
        if name == b"transfer-encoding" and b"chunked" in value:
            return body.endswith(b"0\r\n\r\n")
    return True  # no body framing: a 204/304-like response


def open_idle(port, n, path="/", inflight=200, timeout=60.0):
    """Return (idle_sockets, failures). Never more than `inflight` connections
    are mid-request at once, so the listen backlog is never flooded."""
    req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: lp-bench-idle\r\n\r\n"
           % (path, port)).encode()
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
        sel.register(s, selectors.EVENT_WRITE, _Conn(s, req))
        return True

    while len(idle) + failures < n:
        if time.monotonic() > deadline:
            break
        while pending < inflight and started < n:
            started += 1
            if start_one():
                pending += 1
            else:
                failures += 1
        for key, ev in sel.select(timeout=0.5):
            c = key.data
            try:
                if ev & selectors.EVENT_WRITE and c.out:
                    sent = c.sock.send(c.out)
                    c.out = c.out[sent:]
                    if not c.out:
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                    continue
                if ev & selectors.EVENT_READ:
                    chunk = c.sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed before the response ended")
                    c.buf += chunk
                    if _response_complete(c.buf):
                        sel.unregister(c.sock)
                        c.buf = b""
                        idle.append(c.sock)
                        pending -= 1
            except (OSError, ConnectionError, ValueError):
                sel.unregister(c.sock)
                c.sock.close()
                failures += 1
                pending -= 1
    # whatever is still mid-request at the deadline counts as failed
    for key in list(sel.get_map().values()):
        key.fileobj.close()
        failures += 1
    sel.close()
    return idle, failures


def count_open(socks):
    """How many of socks the server has not closed (peek without blocking)."""
    alive = 0
    for s in socks:
        try:
            data = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            if data:
                alive += 1  # unexpected bytes, but the connection is open
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


def close_all(socks):
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def serve_idle(description, open_idle_fn, count_open_fn, default_n):
    """The command line of an idle-connection holder (this one and idle_h2.py): opens --n
    connections with open_idle_fn, says so, holds them until a line on stdin, then says how
    many are still open (count_open_fn) and closes them."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n", type=int, default=default_n)
    ap.add_argument("--path", default="/")
    args = ap.parse_args()
    t0 = time.monotonic()
    socks, failures = open_idle_fn(args.port, args.n, args.path)
    print("open %d failed %d in %.1fs" % (len(socks), failures, time.monotonic() - t0),
          flush=True)
    try:
        sys.stdin.readline()
    finally:
        print("still open %d" % count_open_fn(socks), flush=True)
        close_all(socks)


if __name__ == "__main__":
    serve_idle(__doc__.splitlines()[0], open_idle, count_open, 10000)
