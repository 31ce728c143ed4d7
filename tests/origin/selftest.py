#!/usr/bin/env python3
"""Self-test of lp_origin over raw sockets: python3 selftest.py path/to/lp_origin

Starts the origin on an ephemeral port, checks every endpoint (framing, pipelining, keep-alive,
HTTP/1.0, backpressure, WebSocket, malformed responses), stops it with SIGTERM and checks that
it exits 0. Prints one line per check; exits non-zero on the first failure.
"""
import base64
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import time

PROC = None
PORT = 0


def alpha(n, start=0):
    return bytes(97 + (i % 26) for i in range(start, start + n))


class Conn:
    def __init__(self):
        self.s = socket.create_connection(("127.0.0.1", PORT), timeout=10)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def fill(self):
        d = self.s.recv(1 << 20)
        if not d:
            raise EOFError
        self.buf += d

    def line(self):
        while b"\r\n" not in self.buf:
            self.fill()
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln

    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def until_eof(self):
        try:
            while True:
                self.fill()
        except EOFError:
            pass
        d, self.buf = self.buf, b""
        return d

    def at_eof(self, timeout=3):
        self.s.settimeout(timeout)
        try:
            return self.buf == b"" and self.s.recv(1) == b""
        finally:
            self.s.settimeout(10)

    def response(self, head=False):
        """Reads one response: (status, {lowercase name: value}, raw header list, body)."""
        status_line = self.line()
        status = int(status_line.split(b" ")[1])
        hdrs, raw = {}, []
        while True:
            ln = self.line()
            if not ln:
                break
            n, v = ln.split(b":", 1)
            raw.append((n.decode(), v.strip().decode()))
            hdrs[n.decode().lower()] = v.strip().decode()
        if status == 100 or status == 101:
            return status, hdrs, raw, b""
        if head or status in (204, 304):
            return status, hdrs, raw, b""
        if hdrs.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(self.line().split(b";")[0], 16)
                if size == 0:
                    while self.line():
                        pass
                    break
                body += self.exact(size)
                assert self.exact(2) == b"\r\n"
            return status, hdrs, raw, body
        if "content-length" in hdrs:
            return status, hdrs, raw, self.exact(int(hdrs["content-length"]))
        return status, hdrs, raw, self.until_eof()

    def close(self):
        self.s.close()


def req(method, target, headers=(), body=b"", version="1.1"):
    h = "%s %s HTTP/%s\r\nHost: t\r\n" % (method, target, version)
    for n, v in headers:
        h += "%s: %s\r\n" % (n, v)
    if body and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers):
        h += "Content-Length: %d\r\n" % len(body)
    return h.encode() + b"\r\n" + body


def check(name, cond, detail=""):
    if not cond:
        print("FAIL", name, detail)
        if PROC:
            PROC.kill()
        sys.exit(1)
    print("ok  ", name)


def get(target, **kw):
    c = Conn()
    c.send(req("GET", target, **kw))
    r = c.response()
    c.close()
    return r


def main():
    global PROC, PORT
    PROC = subprocess.Popen([sys.argv[1], "-i", "selftest"], stdout=subprocess.PIPE)
    ready = PROC.stdout.readline().decode()
    check("ready line", ready.startswith("ready "), ready)
    PORT = int(ready.split()[1])

    st, h, _, b = get("/")
    check("/ hello", st == 200 and b == b"hello" and h["content-length"] == "5", (st, h, b))
    check("origin id", h["x-origin-id"] == "selftest" and h["x-conn-requests"] == "1", h)
    st, h, _, b = get("/fixed?size=70000")
    check("/fixed large", b == b"x" * 70000, len(b))
    st, h, _, b = get("/fixed?size=0")
    check("/fixed 0", b == b"" and h["content-length"] == "0")
    st, h, _, b = get("/nope")
    check("404", st == 404)

    # Keep-alive and request counting, with request bodies consumed.
    c = Conn()
    ids = set()
    for i in range(1, 4):
        c.send(req("POST", "/fixed?size=2", body=b"z" * 1000 * i))
        st, h, _, b = c.response()
        check("keep-alive %d" % i, h["x-conn-requests"] == str(i) and b == b"xx", h)
        ids.add(h["x-conn-id"])
    check("same conn id", len(ids) == 1)
    c.close()

    # Pipelining across sync, async and streamed responses, then half-close.
    c = Conn()
    c.send(req("GET", "/fixed?size=3") + req("GET", "/delay?ms=100") + req("HEAD", "/large?bytes=5")
           + req("GET", "/chunked?chunks=2&size=4") + req("POST", "/echo", body=b"abc")
           + req("GET", "/large?bytes=300000") + req("GET", "/status?code=204")
           + req("GET", "/"))
    c.s.shutdown(socket.SHUT_WR)
    got = [c.response(), c.response(), c.response(head=True), c.response(), c.response(),
           c.response(), c.response(), c.response()]
    bodies = [r[3] for r in got]
    check("pipelined order", bodies == [b"xxx", b"delayed", b"", alpha(8), b"abc", alpha(300000),
                                        b"", b"hello"], [x[:20] for x in bodies])
    check("pipelined counters", [r[1]["x-conn-requests"] for r in got] ==
          [str(i) for i in range(1, 9)])
    check("HEAD keeps length", got[2][1]["content-length"] == "5")
    check("close after half-close", c.at_eof())
    c.close()

    # HTTP/1.0
    c = Conn()
    c.send(req("GET", "/", version="1.0"))
    st, h, _, b = c.response()
    check("1.0 close", h.get("connection") == "close" and b == b"hello" and c.at_eof())
    c = Conn()
    c.send(req("GET", "/", headers=[("Connection", "keep-alive")], version="1.0"))
    st, h, _, b = c.response()
    check("1.0 keep-alive", h.get("connection") == "keep-alive")
    c.send(req("GET", "/chunked?chunks=2&size=3", headers=[("Connection", "keep-alive")],
               version="1.0"))
    st, h, _, b = c.response()
    check("1.0 no chunked", "transfer-encoding" not in h and b == alpha(6), (h, b))
    c.close()

    # Echo
    st, h, _, b = get("/echo?x=1", body=b"hello world")
    check("echo length", b == b"hello world" and h["x-echo-body-framing"] == "length"
          and h["x-echo-url"] == "/echo?x=1" and h["x-echo-method"] == "GET", h)
    c = Conn()
    c.send(b"PUT /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    st, h, _, b = c.response()
    check("echo chunked", b == b"abcde" and h["x-echo-body-framing"] == "chunked"
          and h["transfer-encoding"] == "chunked", (h, b))
    c.send(req("GET", "/echo"))
    st, h, _, b = c.response()
    check("echo none", b == b"" and h["x-echo-body-framing"] == "none", h)
    c.send(req("POST", "/echo", headers=[("Expect", "100-continue"), ("Content-Length", "4")]))
    st, h, _, b = c.response()
    check("100 continue", st == 100)
    c.send(b"wxyz")
    st, h, _, b = c.response()
    check("echo after 100", st == 200 and b == b"wxyz")
    c.close()
    # Streaming: the echo answers before the request body ended.
    c = Conn()
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n12345")
    st, h, _, _ = c.response(head=True)
    check("echo streams", c.exact(5) == b"12345")
    c.send(b"67890")
    check("echo rest", c.exact(5) == b"67890")
    c.close()
    # read_delay_ms: 64 KiB in 16 KiB reads with 100 ms pauses takes >= 300 ms.
    t0 = time.time()
    data = os.urandom(65536)
    st, h, _, b = get("/echo?read_delay_ms=100", body=data)
    dt = time.time() - t0
    check("echo read delay", b == data and dt >= 0.3, dt)

    # /headers
    c = Conn()
    c.send(b"GET /headers?q=1 HTTP/1.1\r\nHost: t\r\nX-Mixed-Case: a\"b\\c\r\n"
           b"X-Bin: \xff\xc3\xa9\r\nX-Empty:\r\n\r\n")
    st, h, _, b = c.response()
    j = json.loads(b)
    check("/headers json", j["method"] == "GET" and j["url"] == "/headers?q=1"
          and j["version"] == "1.1" and ["X-Mixed-Case", "a\"b\\c"] in j["headers"]
          and ["X-Bin", "\u00ff\u00e9"] in j["headers"] and ["X-Empty", ""] in j["headers"], j)
    c.close()

    # /large with a reader that does not read: the origin must not buffer it all.
    def rss_kib():
        with open("/proc/%d/status" % PROC.pid) as f:
            return int([ln for ln in f if ln.startswith("VmRSS")][0].split()[1])

    base = rss_kib()
    c = Conn()
    c.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    c.send(req("GET", "/large?bytes=200000000"))
    time.sleep(0.5)
    growth = rss_kib() - base
    check("large backpressure", growth < 20000, "RSS grew by %d KiB" % growth)
    c.close()
    st, h, _, b = get("/large?bytes=3000000")
    check("large content", b == alpha(3000000))

    # /nolength, /slow, /close-mid, /close-before, /reset
    c = Conn()
    c.send(req("GET", "/nolength?bytes=100000"))
    st, h, _, b = c.response()
    check("nolength", b == alpha(100000) and "content-length" not in h
          and "transfer-encoding" not in h and h["connection"] == "close", h)
    t0 = time.time()
    st, h, _, b = get("/slow?bytes=50&chunk=10&delay_ms=50")
    dt = time.time() - t0
    check("slow", b == alpha(50) and 0.19 < dt < 5, dt)
    t0 = time.time()
    st, h, _, b = get("/chunked?chunks=3&size=5&delay_ms=100")
    check("chunked delay", b == alpha(15) and time.time() - t0 >= 0.19)
    c = Conn()
    c.send(req("GET", "/close-mid?bytes=1000"))
    st, h, _, _ = c.response(head=True)
    rest = c.until_eof()
    check("close-mid", h["content-length"] == "1000" and rest == alpha(500), len(rest))
    c = Conn()
    c.send(req("GET", "/close-before"))
    check("close-before", c.until_eof() == b"")
    c = Conn()
    c.send(req("GET", "/reset"))
    try:
        c.until_eof()
        reset = False
    except ConnectionResetError:
        reset = True
    check("reset", reset)

    # /status
    c = Conn()
    c.send(req("GET", "/status?code=204") + req("GET", "/status?code=304")
           + req("GET", "/status?code=418") + req("HEAD", "/status?code=500"))
    r1, r2, r3, r4 = c.response(), c.response(), c.response(), c.response(head=True)
    check("204", r1[0] == 204 and "content-length" not in r1[1])
    check("304", r2[0] == 304 and "content-length" not in r2[1])
    check("418", r3[0] == 418 and r3[3] == b"status 418\n")
    check("HEAD 500", r4[0] == 500 and r4[1]["content-length"] == "11")
    c.close()

    # Malformed responses, verbatim.
    for path, want in [("/bad/cl-te", b"Transfer-Encoding: chunked"),
                       ("/bad/dup-cl", b"Content-Length: 7"),
                       ("/bad/status-line", b"HTTP/1.1 2x0 OK\r\n"),
                       ("/bad/chunk-size", b"\r\n\r\nzz\r\n")]:
        c = Conn()
        c.send(req("GET", path))
        raw = c.until_eof()
        check(path, want in raw, raw)

    # Malformed request
    c = Conn()
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
    st, h, _, _ = c.response()
    check("bad request", st == 400 and c.at_eof())

    # WebSocket
    st, h, _, b = get("/ws")
    check("ws without upgrade", st == 400)
    key = base64.b64encode(os.urandom(16)).decode()
    c = Conn()
    c.send(req("GET", "/ws", headers=[("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                      ("Sec-WebSocket-Key", key),
                                      ("Sec-WebSocket-Version", "13")]))
    st, h, _, _ = c.response()
    accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
                                           .encode()).digest()).decode()
    check("ws 101", st == 101 and h["sec-websocket-accept"] == accept, h)

    def frame(b0, payload):
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            hd = struct.pack("!BB", b0, 0x80 | n)
        elif n < 65536:
            hd = struct.pack("!BBH", b0, 0x80 | 126, n)
        else:
            hd = struct.pack("!BBQ", b0, 0x80 | 127, n)
        return hd + mask + bytes(p ^ mask[i & 3] for i, p in enumerate(payload))

    def read_frame():
        b0, b1 = c.exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", c.exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", c.exact(8))[0]
        check("server frame unmasked", not (b1 & 0x80))
        return b0, c.exact(n)

    big = os.urandom(70000)
    c.send(frame(0x81, b"hi") + frame(0x89, b"pp") + frame(0x01, b"fr") + frame(0x80, b"ag"))
    check("ws text", read_frame() == (0x81, b"hi"))
    check("ws pong", read_frame() == (0x8A, b"pp"))
    check("ws fragments", read_frame() == (0x01, b"fr") and read_frame() == (0x80, b"ag"))
    c.close()
    c = Conn()
    c.send(req("GET", "/ws", headers=[("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                      ("Sec-WebSocket-Key", key)]))
    c.response()
    f = frame(0x82, big)
    c.send(f[:1000])
    time.sleep(0.05)
    c.send(f[1000:] + frame(0x88, struct.pack("!H", 1000)))
    check("ws big binary", read_frame() == (0x82, big))
    check("ws close", read_frame() == (0x88, struct.pack("!H", 1000)) and c.at_eof())
    c.close()

    PROC.send_signal(15)
    check("exit 0 on SIGTERM", PROC.wait(5) == 0)


if __name__ == "__main__":
    main()
