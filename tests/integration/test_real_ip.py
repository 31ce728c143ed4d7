#!/usr/bin/env python3
"""The real client address (docs/real-ip.md) over real sockets: `real_ip` on listeners
(X-Forwarded-For, Forwarded, a named header; trusted and untrusted peers, so spoofing from
an untrusted peer is ignored; garbage falls back to the peer, never a 500), and PROXY
protocol v1 and v2 (TCP4, TCP6, LOCAL, UNKNOWN, TLVs; malformed, missing and truncated
headers close the connection; TLS behind PROXY, with the header and the ClientHello in one
segment). What req:client_ip(), req:peer_ip(), $remote_addr, $realip_remote_addr and the
X-Forwarded-For sent upstream say is checked for each."""

import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

R = H.LuaRaw
IP_HANDLER = R('function(req) return req:respond(200, req:client_ip() .. " " .. req:peer_ip() '
               '.. " " .. req:var("realip_remote_addr")) end')

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_header(cmd=1, fam=0x11, body=b""):
    return V2_SIG + bytes([0x20 | cmd, fam]) + struct.pack("!H", len(body)) + body


def v2_tcp4(src, dst, sport, dport, tlvs=b""):
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return v2_header(1, 0x11, body + tlvs)


def v2_tcp6(src, dst, sport, dport):
    body = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + \
        struct.pack("!HH", sport, dport)
    return v2_header(1, 0x21, body)


class RealIpTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        openssl = shutil.which("openssl")
        if not openssl:
            raise H.MissingDependency("openssl (the CLI) is needed to make a certificate")
        cls.origin = cls.start_origin("a")
        d = H.Workdir.new("realip-certs")
        cls.cert, cls.key = os.path.join(d, "c.pem"), os.path.join(d, "c.key")
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        cls.key, "-out", cls.cert, "-days", "2", "-subj", "/CN=a.test"],
                       check=True, capture_output=True, timeout=60)
        listen = [
            # 0: the test client (127.0.0.1) is a trusted proxy; X-Forwarded-For
            {"address": "127.0.0.1:0", "real_ip": {"trusted": ["127.0.0.0/8", "::1"]}},
            # 1: the test client is not trusted: every header it sends is ignored
            {"address": "127.0.0.1:0",
             "real_ip": {"trusted": ["10.0.0.0/8"], "header": "X-Forwarded-For"}},
            # 2: PROXY protocol; the balancer's clients in 192.0.2.0/24 are trusted proxies
            {"address": "127.0.0.1:0", "proxy_protocol": True,
             "real_ip": {"trusted": ["192.0.2.0/24"], "header": "Forwarded"}},
            # 3: PROXY protocol, then TLS
            {"address": "127.0.0.1:0", "proxy_protocol": True,
             "tls": {"cert": cls.cert, "key": cls.key}},
            # 4: a named header
            {"address": "127.0.0.1:0",
             "real_ip": {"trusted": ["127.0.0.1"], "header": "X-Real-IP"}},
            # 5: no real_ip, no PROXY: as before
            {"address": "127.0.0.1:0"},
        ]
        routes = [{"match": {"prefix": "/ip"}, "handler": IP_HANDLER},
                  {"match": {"prefix": "/"}, "upstream": "a"}]
        p = H.Proxy.build({"a": H.upstream(cls.origin.address())}, routes, name="realip",
                          timeouts={"client_header": 1.5},
                          log={"level": "info", "format": "$remote_addr|$realip_remote_addr|$uri"})
        p.cfg["listen"] = listen
        p.cfg["log"]["access"] = os.path.join(p.dir, "access.log")
        cls.addClassCleanup(p.stop)
        cls.proxy = p.start()

    def port(self, i):
        return self.proxy.ports[i]

    def ip(self, i, headers=None, pre=b""):
        """GET /ip on listener i (with `pre` bytes first): [client_ip, peer_ip, var]."""
        with H.Client(self.port(i)) as c:
            if pre:
                c.send(pre)
            r = c.request("GET", "/ip", headers=headers)
        self.assertEqual(r.status, 200, r)
        return r.body.decode().split()

    def upstream_xff(self, i, headers=None, pre=b""):
        with H.Client(self.port(i)) as c:
            if pre:
                c.send(pre)
            r = c.request("GET", "/headers", headers=headers)
        self.assertEqual(r.status, 200, r)
        got = [v for n, v in r.json()["headers"] if n.lower() == "x-forwarded-for"]
        self.assertEqual(len(got), 1, got)
        return got[0]

    def closed_without_answer(self, i, data, wait=None):
        with H.Client(self.port(i)) as c:
            try:
                c.send(data)
            except OSError:
                return  # reset while sending: closed indeed
            closed, extra = c.wait_closed(wait or H.T(5))
            self.assertTrue(closed, "connection left open after %r" % data[:60])
            self.assertEqual(extra, b"", "answered %r" % extra[:200])

    # ---- real_ip with X-Forwarded-For, Forwarded, a named header ----

    def test_xff_trusted_peer(self):
        xff = "6.6.6.6, 1.1.1.1, 127.0.0.9"
        self.assertEqual(self.ip(0, {"X-Forwarded-For": xff}),
                         ["1.1.1.1", "127.0.0.1", "127.0.0.1"])
        # several lines are one list
        self.assertEqual(self.ip(0, [("X-Forwarded-For", "6.6.6.6, 2.2.2.2"),
                                     ("X-Forwarded-For", "127.0.0.3")])[0], "2.2.2.2")
        # every hop trusted: the left-most
        self.assertEqual(self.ip(0, {"X-Forwarded-For": "127.0.0.7, ::1"})[0], "127.0.0.7")
        # upstream: the list received, then the client address found
        self.assertEqual(self.upstream_xff(0, {"X-Forwarded-For": xff}), xff + ", 1.1.1.1")
        # without the header: the peer
        self.assertEqual(self.ip(0), ["127.0.0.1", "127.0.0.1", "127.0.0.1"])

    def test_spoofing_from_untrusted_peer_is_ignored(self):
        for h in ({"X-Forwarded-For": "1.1.1.1"}, {"Forwarded": "for=1.1.1.1"},
                  {"X-Real-IP": "1.1.1.1"}, {"X-Forwarded-For": "10.0.0.1"}):
            self.assertEqual(self.ip(1, h)[0], "127.0.0.1", h)
            self.assertEqual(self.ip(5, h)[0], "127.0.0.1", h)
        # what the proxy sends upstream ends with the real peer
        self.assertEqual(self.upstream_xff(1, {"X-Forwarded-For": "1.1.1.1"}),
                         "1.1.1.1, 127.0.0.1")

    def test_garbage_falls_back_to_the_peer(self):
        long_list = ", ".join("203.0.113.%d" % (i % 250) for i in range(900))
        for v in ("garbage", "", " , ", "fe80::1%eth0", "1.1.1.1:99999", "[::1", "<script>",
                  "1.1.1.1,,127.0.0.1", "\xff\xfe", "unknown", "1" * 200):
            r = self.ip(0, {"X-Forwarded-For": v})
            self.assertEqual(r[0], "127.0.0.1", repr(v))
        # an over-long list is walked from the right: the client is found
        self.assertEqual(self.ip(0, {"X-Forwarded-For": long_list + ", 127.0.0.2"})[0],
                         "203.0.113.149")
        # more trusted hops than the walk keeps: the peer
        many = ", ".join(["127.0.0.5"] * 80)
        self.assertEqual(self.ip(0, {"X-Forwarded-For": "1.1.1.1, " + many})[0], "127.0.0.1")
        # the request is still proxied with what it had
        self.assertEqual(self.upstream_xff(0, {"X-Forwarded-For": "garbage"}),
                         "garbage, 127.0.0.1")
        self.assertAlive()

    def test_named_header(self):
        self.assertEqual(self.ip(4, {"X-Real-IP": "4.4.4.4"})[0], "4.4.4.4")
        self.assertEqual(self.ip(4, {"X-Real-IP": "2a00::9"})[0], "2a00::9")
        self.assertEqual(self.ip(4, {"X-Real-IP": "nope"})[0], "127.0.0.1")
        self.assertEqual(self.ip(4, {"X-Forwarded-For": "4.4.4.4"})[0], "127.0.0.1")

    # ---- PROXY protocol ----

    def test_proxy_v1(self):
        pre = b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 80\r\n"
        self.assertEqual(self.ip(2, pre=pre), ["192.0.2.7", "127.0.0.1", "127.0.0.1"])
        # the PROXY source is a trusted proxy here: its Forwarded header is walked
        self.assertEqual(self.ip(2, {"Forwarded": "for=3.3.3.3;proto=https"}, pre=pre)[0],
                         "3.3.3.3")
        self.assertEqual(self.ip(2, {"Forwarded": 'for="[2a00::3]:77", for=192.0.2.1'},
                                 pre=pre)[0], "2a00::3")
        # obfuscated identifiers are not addresses: the connection's stands
        self.assertEqual(self.ip(2, {"Forwarded": "for=_hidden"}, pre=pre)[0], "192.0.2.7")
        # TCP6, and an untrusted source: its headers are ignored
        pre6 = b"PROXY TCP6 2001:db8::5 2001:db8::1 4000 443\r\n"
        self.assertEqual(self.ip(2, {"Forwarded": "for=3.3.3.3"}, pre=pre6)[0], "2001:db8::5")
        # UNKNOWN: the connection's own address
        self.assertEqual(self.ip(2, pre=b"PROXY UNKNOWN\r\n")[0], "127.0.0.1")
        # upstream sees the PROXY source as the client
        self.assertEqual(self.upstream_xff(2, pre=pre), "192.0.2.7")

    def test_proxy_v1_keepalive_and_split(self):
        with H.Client(self.port(2)) as c:
            c.send_split(b"PROXY TCP4 192.0.2.8 10.0.0.1 5555 80\r\nGET /ip HTTP/1.1\r\n"
                         b"Host: a\r\n\r\n", 7)
            r = c.read_response()
            self.assertEqual(r.body.decode().split()[0], "192.0.2.8")
            r = c.request("GET", "/ip")  # the second request: same connection, same client
            self.assertEqual(r.body.decode().split()[0], "192.0.2.8")

    def test_proxy_v2(self):
        tlvs = b"\x01\x00\x02h2" + b"\xea\x00\x05vpc-1"
        pre = v2_tcp4("192.0.2.44", "10.0.0.1", 1234, 80, tlvs)
        self.assertEqual(self.ip(2, pre=pre)[0], "192.0.2.44")
        self.assertEqual(self.ip(2, pre=v2_tcp6("2001:db8::44", "::1", 1, 2))[0],
                         "2001:db8::44")
        # LOCAL (a balancer's health check): the connection's address
        self.assertEqual(self.ip(2, pre=v2_header(0, 0x00))[0], "127.0.0.1")
        # UNSPEC: the same
        self.assertEqual(self.ip(2, pre=v2_header(1, 0x00, b"xyz"))[0], "127.0.0.1")

    def test_bad_proxy_headers_close(self):
        self.closed_without_answer(2, b"GET /ip HTTP/1.1\r\nHost: a\r\n\r\n")  # missing
        self.closed_without_answer(2, b"PROXY TCP4 192.0.2.7 10.0.0.1 5555\r\n")
        self.closed_without_answer(2, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\nGET / HTTP/1.1\r\n\r\n")
        self.closed_without_answer(2, b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n")
        self.closed_without_answer(2, b"PROXY " + b"A" * 200)
        self.closed_without_answer(2, V2_SIG + b"\x31\x11\x00\x0c" + b"\0" * 12)  # version 3
        self.closed_without_answer(2, v2_tcp4("1.2.3.4", "5.6.7.8", 1, 2, b"\x01\x00\x09h2"))
        self.closed_without_answer(2, V2_SIG + b"\x21\x11\xff\xff")  # longer than allowed
        self.closed_without_answer(3, b"GET / HTTP/1.1\r\n\r\n")  # TLS listener: same rule
        # truncated: closed when timeouts.client_header (1.5 s here) runs out
        t0 = time.monotonic()
        self.closed_without_answer(2, b"PROXY TCP4 192.0.2.7 10.0", wait=H.T(6))
        self.closed_without_answer(2, v2_tcp4("1.2.3.4", "5.6.7.8", 1, 2)[:20], wait=H.T(6))
        self.assertGreater(time.monotonic() - t0, 1.0)
        H.wait_for(lambda: "missing or malformed PROXY protocol header" in self.proxy.stderr(),
                   H.T(5), what="the log line")
        H.wait_for(lambda: "no PROXY protocol header in time" in self.proxy.stderr(),
                   H.T(5), what="the timeout log line")
        self.assertAlive()

    # ---- TLS behind PROXY ----

    def tls_ip(self, pre, together):
        """GET /ip over TLS on listener 3 after `pre`; `together`: the header and the
        ClientHello in one send (the proxy must hand the rest of the segment to TLS)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", self.port(3)), timeout=H.T(10)) as s:
            if not together:
                s.sendall(pre)
                with ctx.wrap_socket(s, server_hostname="a.test") as t:
                    return self.tls_exchange(t)
            inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = ctx.wrap_bio(inc, out, server_hostname="a.test")
            first = True
            while True:
                try:
                    obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    data = out.read()
                    s.sendall((pre + data) if first else data)
                    first = False
                    chunk = s.recv(65536)
                    if not chunk:
                        raise AssertionError("closed during the handshake")
                    inc.write(chunk)
            s.sendall(out.read())
            obj.write(b"GET /ip HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            s.sendall(out.read())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                inc.write(chunk)
                try:
                    while True:
                        got = obj.read(65536)
                        if not got:
                            break
                        data += got
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    pass
            return data.split(b"\r\n\r\n", 1)[1].decode().split()

    def tls_exchange(self, t):
        t.sendall(b"GET /ip HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = t.recv(65536)
            if not chunk:
                break
            data += chunk
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), data[:200])
        return data.split(b"\r\n\r\n", 1)[1].decode().split()

    def test_tls_behind_proxy(self):
        pre = b"PROXY TCP4 198.51.100.7 10.0.0.1 5555 443\r\n"
        self.assertEqual(self.tls_ip(pre, together=False), ["198.51.100.7", "127.0.0.1",
                                                           "127.0.0.1"])
        self.assertEqual(self.tls_ip(pre, together=True)[0], "198.51.100.7")
        pre2 = v2_tcp6("2001:db8::77", "::1", 1, 443)
        self.assertEqual(self.tls_ip(pre2, together=True)[0], "2001:db8::77")

    # ---- the access log ----

    def test_zz_access_log(self):
        """Runs last (zz): the lines of the requests above."""
        self.ip(0, {"X-Forwarded-For": "5.5.5.5"})
        self.ip(2, pre=b"PROXY TCP4 192.0.2.99 10.0.0.1 5555 80\r\n")

        def lines():
            return [l for l in self.proxy.access_lines() if l.startswith(("5.5.5.5|",
                                                                          "192.0.2.99|"))]
        H.wait_for(lambda: len(lines()) >= 2, H.T(5), what="the access log lines")
        self.assertIn("5.5.5.5|127.0.0.1|/ip", lines())
        self.assertIn("192.0.2.99|127.0.0.1|/ip", lines())


class RealIpConfigTest(H.ProxyTestCase):
    """Bad real_ip settings are config errors naming the key."""

    def check(self, listen):
        cfg = H.make_config(0, {}, [{"match": {"prefix": "/"}, "handler": IP_HANDLER}])
        cfg["listen"] = [listen]
        d = H.Workdir.new("realip-cfg")
        path = os.path.join(d, "c.lua")
        with open(path, "w") as f:
            f.write(H.config_text(cfg))
        p = subprocess.run([H.LUAPROXY, "-t", "-c", path], capture_output=True,
                           timeout=H.T(30), stdin=subprocess.DEVNULL)
        return p.returncode, p.stderr.decode()

    def test_errors(self):
        rc, err = self.check({"address": "127.0.0.1:0", "real_ip": {"trusted": ["10.1.0.0/8"]}})
        self.assertEqual(rc, 1)
        self.assertIn("listen[1].real_ip.trusted[1]", err)
        self.assertIn("bits set past the /8 prefix", err)
        rc, err = self.check({"address": "127.0.0.1:0", "real_ip": {"trusted": ["fe80::1%lo"]}})
        self.assertIn("is not an IP address", err)
        rc, err = self.check({"address": "127.0.0.1:0", "real_ip": {"trusted": []}})
        self.assertIn("listen[1].real_ip.trusted", err)
        rc, err = self.check({"address": "127.0.0.1:0",
                              "real_ip": {"trusted": ["::1"], "header": "X Bad"}})
        self.assertIn("listen[1].real_ip.header", err)
        rc, err = self.check({"address": "127.0.0.1:0", "proxy_protocol": "yes"})
        self.assertIn("listen[1].proxy_protocol: expected a boolean", err)
        rc, err = self.check({"address": "127.0.0.1:0", "proxy_protocol": True,
                              "real_ip": {"trusted": ["2001:db8::/32", "0.0.0.0/0"]}})
        self.assertEqual(rc, 0, err)


if __name__ == "__main__":
    H.main()
