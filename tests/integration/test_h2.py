#!/usr/bin/env python3
"""HTTP/2 downstream (issue #17, engine/h2.c): h2 by ALPN on a TLS listener beside HTTP/1.1,
h2c by prior knowledge on a cleartext listener beside HTTP/1.1, multiplexing, flow control
with a slow reader, large uploads and downloads, Lua phases (a header rewrite plugin,
req:http_version(), an error on one stream only), the limits and floods (concurrent
streams, header list size and HPACK bombs, HPACK table size, rapid reset, PING, SETTINGS,
empty DATA and CONTINUATION floods, idle timeout, requests per connection), endings
(client reset mid-body, connection closed with streams in flight, upstream failure
mid-stream) and GOAWAY on shutdown with a stream in flight.

Clients: curl (--http2, --http2-prior-knowledge), nghttp, h2load and Debian's python3-h2
for scripted frames, all on 127.0.0.1 and bounded in time."""

import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness as H  # noqa: E402
sys.path.insert(0, os.path.join(HERE, "reload"))
import reloadtest as RT  # noqa: E402

try:
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions
    import h2.settings
except ImportError:  # ctest's python may be another build than Debian's (python3-h2)
    sys.path.append("/usr/lib/python3/dist-packages")
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions
    import h2.settings

CURL = shutil.which("curl")
NGHTTP = shutil.which("nghttp")
H2LOAD = shutil.which("h2load")
OPENSSL = shutil.which("openssl")

ENHANCE_YOUR_CALM = 11
LIMITS = {
    "max_concurrent_streams": 8,
    "max_header_list_size": 4096,
    "hpack_table_size": 2048,
    "max_resets": 20,
    "max_control_frames": 50,
    "max_continuations": 4,
}


def run(argv, timeout=None):
    return subprocess.run(argv, capture_output=True, timeout=timeout or H.T(30),
                          stdin=subprocess.DEVNULL)


class Client:
    """A scripted HTTP/2 client (python3-h2) on a cleartext h2c connection."""

    def __init__(self, port, ack=True):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=H.T(10))
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.ack = ack  # give the window back as data arrives
        self.hold = set()  # streams whose data is not acknowledged (slow readers)
        self.streams = {}
        self.goaway = None
        self.eof = False
        self.remote_settings = {}
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def st(self, sid):
        return self.streams.setdefault(sid, {"status": None, "headers": {}, "data": bytearray(),
                                             "ended": False, "reset": None})

    def request(self, path, method="GET", headers=(), body=None, end=True):
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", "http"), (":authority", "localhost"),
                (":path", path)] + list(headers)
        self.st(sid)
        self.conn.send_headers(sid, hdrs, end_stream=end and body is None)
        self.flush()
        if body is not None:
            self.send_body(sid, body, end=end)
        return sid

    def post_with_trailers(self, path, body, trailers, headers=()):
        """A POST of body, then trailers: its stream once done."""
        sid = self.request(path, method="POST", headers=headers, body=body, end=False)
        self.conn.send_headers(sid, trailers, end_stream=True)
        self.flush()
        self.pump(lambda: self.done(sid))
        return self.streams[sid]

    def send_body(self, sid, body, end=True):
        off = 0
        while off < len(body):
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if room <= 0:
                self.pump(lambda: self.conn.local_flow_control_window(sid) > 0 or self.eof
                          or self.streams[sid]["reset"] is not None)
                if self.eof or self.streams[sid]["reset"] is not None:
                    return
                continue
            self.conn.send_data(sid, body[off:off + room])
            off += room
            self.flush()
        if end:
            self.conn.end_stream(sid)
            self.flush()

    def handle(self, ev):
        if isinstance(ev, h2.events.ResponseReceived):
            s = self.st(ev.stream_id)
            s["headers"] = dict(ev.headers)
            s["status"] = int(s["headers"][":status"])
        elif isinstance(ev, h2.events.DataReceived):
            self.st(ev.stream_id)["data"] += ev.data
            if ev.stream_id in self.hold:
                self.conn.increment_flow_control_window(ev.flow_controlled_length)
            elif self.ack and ev.flow_controlled_length:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            self.st(ev.stream_id)["trailers"] = dict(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded):
            self.st(ev.stream_id)["ended"] = True
        elif isinstance(ev, h2.events.StreamReset):
            self.st(ev.stream_id)["reset"] = ev.error_code
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            for k, v in ev.changed_settings.items():
                self.remote_settings[int(k)] = v.new_value

    def pump(self, until, timeout=None):
        """Reads and handles frames until until() is true (or the connection ends)."""
        def step():
            if until():
                return True
            if self.eof:
                return True
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            except OSError:
                data = b""
            if not data:
                self.eof = True
                return True
            try:
                for ev in self.conn.receive_data(data):
                    self.handle(ev)
            except h2.exceptions.ProtocolError:
                self.eof = True
            self.flush()
            return until() or None
        self.sock.settimeout(0.2)
        H.wait_for(step, timeout or H.T(20), interval=0, what="HTTP/2 frames")
        return until()

    def done(self, *sids):
        return all(self.streams[s]["ended"] or self.streams[s]["reset"] is not None
                   for s in sids)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


raw_frame = H.h2_frame


def read_until_close(sock, timeout):
    """Everything the server sends until it closes (bounded); the frame types seen."""
    sock.settimeout(0.2)
    buf = bytearray()

    def step():
        try:
            d = sock.recv(65536)
        except socket.timeout:
            return None
        except OSError:
            return True
        if not d:
            return True
        buf.extend(d)
        return None
    H.wait_for(step, timeout, interval=0, what="the server to close")
    return [(t, pl) for t, _, _, pl in H.h2_take_frames(buf)]


class RawReader:
    """Frames as they come, for GOAWAY followed by more frames (python-h2 refuses frames
    after a GOAWAY, which a graceful shutdown sends before the streams it lets finish)."""

    def __init__(self, client):
        import hpack
        self.c = client
        self.dec = hpack.Decoder()
        self.buf = bytearray()
        self.status = {}
        self.ended = set()
        self.goaway = None  # (last_stream_id, error_code)
        self.eof = False
        self.started = False

    def pump(self, until, timeout=None):
        sock = self.c.sock
        sock.settimeout(0.2)

        def step():
            if until() or self.eof:
                return True
            try:
                d = sock.recv(65536)
            except socket.timeout:
                return None
            except OSError:
                d = b""
            if not d:
                self.eof = True
                return True
            self.buf += d
            self.parse()
            return until() or None
        H.wait_for(step, timeout or H.T(20), interval=0, what="frames")

    def parse(self):
        for frame in H.h2_take_frames(self.buf):
            self.frame(*frame)

    def frame(self, t, fl, sid, pl):
        if t == 0x1:  # HEADERS (nghttp2 sends no padding or priority)
            for k, v in self.dec.decode(pl):
                if k == ":status":
                    self.status[sid] = int(v)
        elif t == 0x4 and not fl & 1:
            self.c.sock.sendall(raw_frame(0x4, 1, 0))  # SETTINGS ACK
        elif t == 0x7:
            self.goaway = (int.from_bytes(pl[0:4], "big") & 0x7fffffff,
                           int.from_bytes(pl[4:8], "big"))
        if t in (0x0, 0x1) and fl & 1:
            self.ended.add(sid)


class H2Test(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        for tool in (CURL, NGHTTP, H2LOAD, OPENSSL):
            if not tool:
                raise H.MissingDependency("curl, nghttp, h2load (nghttp2-client) and openssl")
        cls.origin = cls.start_origin("o1")
        d = H.Workdir.new("h2-certs")
        cls.cert, cls.key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
        p = run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", cls.key,
                 "-out", cls.cert, "-days", "2", "-subj", "/CN=localhost"])
        assert p.returncode == 0, p.stderr
        cls.proxy = cls.make_proxy(LIMITS)
        cls.tls_port, cls.h2c_port = cls.proxy.ports

    @classmethod
    def make_proxy(cls, limits, name=None):
        ups = {"app": H.upstream(cls.origin.address())}
        routes = [
            {"match": {"prefix": "/version"}, "upstream": "app",
             "handler": H.LuaRaw('''function(req)
                 return req:respond(200, "v=" .. tostring(req:http_version()), {})
               end''')},
            {"match": {"prefix": "/boom"}, "upstream": "app",
             "handler": H.LuaRaw('function(req) error("boom in one stream") end')},
            {"match": {"prefix": "/parked"}, "upstream": "app",
             "handler": H.LuaRaw('''function(req)
                 proxy.sleep(0.3)
                 req:set_path(req:path():sub(8) .. "?size=2")
               end''')},
            {"match": {"prefix": "/"}, "upstream": "app",
             "plugins": [{"name": "headers", "request": {"set": {"X-Via-H2": "yes"}}}]},
        ]
        p = H.Proxy.build(ups, routes, name=name or cls.__name__, http2=limits,
                          limits={"max_body_size": 0})
        p.cfg["listen"] = [
            {"address": "127.0.0.1:0", "tls": {"cert": cls.cert, "key": cls.key}, "http2": True},
            {"address": "127.0.0.1:0", "http2": True},
        ]
        cls.addClassCleanup(p.stop)
        return p.start()

    def curl(self, *args):
        p = run([CURL, "-sS", "-k", "--max-time", str(H.T(20)), "-w", "\n%{http_version} %{http_code}"]
                + list(args))
        self.assertEqual(p.returncode, 0, p.stderr)
        body, _, tail = p.stdout.rpartition(b"\n")
        return body, tail.decode()

    def tearDown(self):
        self.assertAlive()

    # ---- protocols and listeners

    def test_alpn_h2_and_h1_on_one_tls_listener(self):
        url = "https://127.0.0.1:%d/fixed?size=7" % self.tls_port
        body, tail = self.curl("--http2", url)
        self.assertEqual((body, tail), (b"x" * 7, "2 200"))
        body, tail = self.curl("--http1.1", url)
        self.assertEqual((body, tail), (b"x" * 7, "1.1 200"))
        H.wait_for(lambda: all(any(w in l for l in self.proxy.access_lines()) for w in
                               ('"GET /fixed?size=7 HTTP/2.0" 200', '"GET /fixed?size=7 HTTP/1.1" 200')),
                   H.T(10), what="both access log lines")

    def test_h2c_prior_knowledge_and_h1_on_one_cleartext_listener(self):
        url = "http://127.0.0.1:%d/fixed?size=3" % self.h2c_port
        self.assertEqual(self.curl("--http2-prior-knowledge", url), (b"xxx", "2 200"))
        self.assertEqual(self.curl("--http1.1", url), (b"xxx", "1.1 200"))

    def test_pseudo_headers_map_to_the_request_and_plugins_run(self):
        body, tail = self.curl("--http2", "https://127.0.0.1:%d/headers?q=1" % self.tls_port,
                               "-H", "Cookie: a=1", "-H", "X-Up: v")
        self.assertEqual(tail, "2 200")
        import json
        j = json.loads(body)
        hdrs = {k.lower(): v for k, v in j["headers"]}
        self.assertEqual(j["method"], "GET")
        self.assertEqual(j["url"], "/headers?q=1")
        self.assertEqual(hdrs["host"], "127.0.0.1:%d" % self.tls_port)
        self.assertEqual(hdrs["x-forwarded-proto"], "https")
        self.assertEqual(hdrs["x-via-h2"], "yes")  # the headers plugin's request phase
        self.assertEqual(hdrs["x-up"], "v")
        self.assertEqual(hdrs["cookie"], "a=1")

    def test_max_headers_counts_the_clients_fields_only(self):
        # limits.max_headers (100) regular fields: the Host made from :authority and the
        # Transfer-Encoding made for a body without content-length are the proxy's lines,
        # not the client's, and do not push it over (before: 431).
        c = Client(self.h2c_port)
        try:
            fields = [("x-f%d" % i, "v") for i in range(100)]
            sid = c.request("/headers", method="POST", headers=fields, body=b"abc")
            c.pump(lambda: c.done(sid))
            self.assertEqual(c.streams[sid]["status"], 200, c.streams[sid])
            over = c.request("/headers", headers=fields + [("x-f100", "v")])
            c.pump(lambda: c.done(over))
            self.assertEqual(c.streams[over]["status"], 431)
        finally:
            c.close()

    def test_http_version_is_2_in_lua(self):
        self.assertEqual(self.curl("--http2-prior-knowledge",
                                   "http://127.0.0.1:%d/version" % self.h2c_port),
                         (b"v=2", "2 200"))
        self.assertEqual(self.curl("--http1.1", "http://127.0.0.1:%d/version" % self.h2c_port),
                         (b"v=1.1", "1.1 200"))

    # ---- streams

    def test_multiplexing_many_streams_on_one_connection(self):
        c = Client(self.h2c_port)
        try:
            sids = [c.request("/delay?ms=200") for _ in range(6)]
            sids += [c.request("/fixed?size=%d" % (i + 1)) for i in range(2)]
            c.pump(lambda: c.done(*sids))
            for s in sids:
                self.assertEqual(c.streams[s]["status"], 200, c.streams[s])
                self.assertTrue(c.streams[s]["ended"])
            self.assertEqual(bytes(c.streams[sids[-1]]["data"]), b"xx")
        finally:
            c.close()
        p = run([H2LOAD, "-n", "400", "-c", "4", "-m", "8",
                 "https://127.0.0.1:%d/fixed?size=100" % self.tls_port])
        self.assertIn(b"400 succeeded", p.stdout, p.stdout + p.stderr)
        self.assertIn(b"400 2xx", p.stdout)

    def test_large_upload_and_download(self):
        body = os.urandom(3 * 1024 * 1024)
        d = H.Workdir.new("h2-up")
        src, out = os.path.join(d, "in"), os.path.join(d, "out")
        with open(src, "wb") as f:
            f.write(body)
        _, tail = self.curl("--http2", "--data-binary", "@" + src, "-o", out,
                            "https://127.0.0.1:%d/echo" % self.tls_port)
        self.assertEqual(tail, "2 200")
        with open(out, "rb") as f:
            self.assertEqual(f.read(), body)
        # chunked upstream (no content-length from the client)
        c = Client(self.h2c_port)
        try:
            sid = c.request("/echo", method="POST", body=body[:500000])
            c.pump(lambda: c.done(sid))
            self.assertEqual(c.streams[sid]["status"], 200)
            self.assertEqual(bytes(c.streams[sid]["data"]), body[:500000])
        finally:
            c.close()
        _, tail = self.curl("--http2", "-o", out,
                            "https://127.0.0.1:%d/large?bytes=30000000" % self.tls_port)
        self.assertEqual(tail, "2 200")
        self.assertEqual(os.path.getsize(out), 30000000)

    def test_large_download_over_h2c(self):
        # Cleartext: a write the socket takes whole completes at once, without `written`.
        d = H.Workdir.new("h2c-down")
        out = os.path.join(d, "out")
        _, tail = self.curl("--http2-prior-knowledge", "-o", out,
                            "http://127.0.0.1:%d/large?bytes=3000000" % self.h2c_port)
        self.assertEqual(tail, "2 200")
        self.assertEqual(os.path.getsize(out), 3000000)

    def test_slow_reader_stalls_only_its_stream_and_is_not_buffered(self):
        c = Client(self.h2c_port)
        try:
            c.conn.increment_flow_control_window(200 * 1024 * 1024)  # connection level
            c.flush()
            total = 200 * 1024 * 1024
            slow = c.request("/large?bytes=%d" % total)
            c.hold.add(slow)
            c.pump(lambda: len(c.streams[slow]["data"]) >= 65535)
            rss0 = H.rss_kib(self.proxy.pid)
            fast = c.request("/fixed?size=10")
            c.pump(lambda: c.done(fast))
            self.assertEqual(c.streams[fast]["status"], 200)
            self.assertEqual(bytes(c.streams[fast]["data"]), b"x" * 10)
            self.assertLessEqual(len(c.streams[slow]["data"]), 65535)
            # The origin could send 200 MB; the proxy stops reading it at its watermark.
            grew = []

            def bounded():
                grew.append(H.rss_kib(self.proxy.pid) - rss0)
                return None if len(grew) < 10 else True
            H.wait_for(bounded, H.T(10), interval=0.1, what="RSS samples")
            self.assertLess(max(grew), 32 * 1024, grew)
            # The reader catches up: the rest flows.
            c.hold.discard(slow)
            c.conn.acknowledge_received_data(len(c.streams[slow]["data"]), slow)
            c.flush()
            c.pump(lambda: c.done(slow), timeout=H.T(60))
            self.assertEqual(len(c.streams[slow]["data"]), total)
        finally:
            c.close()

    def test_lua_error_fails_only_its_stream(self):
        c = Client(self.h2c_port)
        try:
            a = c.request("/delay?ms=100")
            b = c.request("/boom")
            c.pump(lambda: c.done(a, b))
            self.assertEqual(c.streams[b]["status"], 500)
            self.assertEqual(c.streams[a]["status"], 200)
            self.assertIsNone(c.goaway)
        finally:
            c.close()

    # ---- endings

    def test_client_reset_mid_body(self):
        c = Client(self.h2c_port)
        try:
            sid = c.request("/echo", method="POST", headers=[("content-length", "100000")],
                            body=b"a" * 10000, end=False)
            c.conn.reset_stream(sid)
            c.flush()
            other = c.request("/fixed?size=2")
            c.pump(lambda: c.done(other))
            self.assertEqual(c.streams[other]["status"], 200)
        finally:
            c.close()
        H.wait_for(lambda: any('"POST /echo HTTP/2.0" 499' in l or '"POST /echo HTTP/2.0" 200' in l
                               for l in self.proxy.access_lines()), H.T(10), what="its log line")

    def test_body_without_length_is_framed_despite_a_lookalike_field(self):
        # A body without content-length goes upstream chunked; a field whose name or value
        # merely contains "content-length:" must not pass for one (the body went upstream
        # unframed: the origin read no body and took the bytes for its next request).
        c = Client(self.h2c_port)
        try:
            sids = [c.request("/echo", method="POST", headers=hdrs, body=b"hello")
                    for hdrs in ([("x-content-length", "5")], [("x-note", "content-length: 5")],
                                 [])]
            c.pump(lambda: c.done(*sids))
            for i, s in enumerate(sids):
                st = c.streams[s]
                self.assertEqual(st["status"], 200, (i, st))
                self.assertEqual(st["headers"].get("x-echo-body-framing"), "chunked", st)
                self.assertEqual(bytes(st["data"]), b"hello", st)
        finally:
            c.close()

    def test_body_waits_for_the_upstream_connection(self):
        # Bodies that arrive while their upstream connections are still being made wait
        # for the heads (they went before them, with the chunked end, and the origin
        # answered 400).
        c = Client(self.h2c_port)
        try:
            sids = [c.request("/echo", method="POST", body=b"hello%d" % i) for i in range(4)]
            sids.append(c.request("/echo", method="POST", headers=[("content-length", "6")],
                                  body=b"sized!"))
            c.pump(lambda: c.done(*sids))
            for i, s in enumerate(sids):
                st = c.streams[s]
                self.assertEqual(st["status"], 200, (i, st))
                self.assertEqual(bytes(st["data"]), b"hello%d" % i if i < 4 else b"sized!")
        finally:
            c.close()

    def test_connection_closed_with_streams_in_flight(self):
        c = Client(self.h2c_port)
        # Heads at once, bodies of 100 bytes over 5 s: cut by the close.
        sids = [c.request("/slow?bytes=100&chunk=1&delay_ms=50&id=cut%d" % i) for i in range(3)]
        c.pump(lambda: all(c.streams[s]["status"] for s in sids))
        c.close()
        cut = []

        def logged():
            cut[:] = [l for l in self.proxy.access_lines() if "&id=cut" in l]
            return len(cut) == 3
        H.wait_for(logged, H.T(10), what="three log lines")
        for l in cut:
            self.assertIn('HTTP/2.0" 200 ', l)
            self.assertNotIn('" 200 100 ', l)  # cut short, not the whole body

    def test_upstream_failure_mid_stream(self):
        c = Client(self.h2c_port)
        try:
            bad = c.request("/close-mid?bytes=100000")
            good = c.request("/fixed?size=4")
            c.pump(lambda: c.done(bad, good))
            self.assertEqual(c.streams[good]["status"], 200)
            self.assertIsNotNone(c.streams[bad]["reset"], c.streams[bad])
            self.assertIsNone(c.goaway)
        finally:
            c.close()

    # ---- limits and floods

    def test_settings_advertise_the_limits(self):
        c = Client(self.h2c_port)
        try:
            c.pump(lambda: h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS in c.remote_settings)
            s = c.remote_settings
            self.assertEqual(s[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS], 8)
            self.assertEqual(s[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE], 4096)
            self.assertEqual(s[h2.settings.SettingCodes.HEADER_TABLE_SIZE], 2048)
            self.assertEqual(s[h2.settings.SettingCodes.ENABLE_PUSH], 0)
        finally:
            c.close()

    def test_max_concurrent_streams(self):
        c = Client(self.h2c_port)
        try:
            # Sent before the server's SETTINGS is read: the client does not know the limit.
            sids = [c.request("/delay?ms=300") for _ in range(12)]
            c.pump(lambda: c.done(*sids))
            ok = [s for s in sids if c.streams[s]["status"] == 200]
            refused = [s for s in sids if c.streams[s]["reset"] is not None]
            self.assertLessEqual(len(ok), 8)
            self.assertGreaterEqual(len(refused), 4)
        finally:
            c.close()

    def test_streams_over_the_limit_after_the_ack_are_refused_alone(self):
        # A client that acknowledged our SETTINGS and still opens more than
        # max_concurrent_streams: only the extra streams are refused (REFUSED_STREAM, which
        # a client may retry), the accepted ones complete and the connection goes on.
        # (Before: nghttp2's GOAWAY PROTOCOL_ERROR, and the accepted streams were lost.)
        mcs = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
        c = Client(self.h2c_port)
        try:
            c.pump(lambda: mcs in c.remote_settings)  # read; our ACK is sent with it
            first = c.request("/fixed?size=1")  # answered after the ACK was processed
            c.pump(lambda: c.done(first))
            self.assertEqual(c.streams[first]["status"], 200)
            c.conn.remote_settings[mcs] = 100  # the client's own check, lifted
            c.conn.remote_settings.acknowledge()
            sids = [c.request("/delay?ms=400&i=%d" % i) for i in range(10)]
            c.pump(lambda: c.done(*sids))
            self.assertIsNone(c.goaway)
            for s in sids[:8]:
                self.assertEqual((c.streams[s]["status"], c.streams[s]["ended"]), (200, True),
                                 c.streams[s])
            for s in sids[8:]:
                self.assertEqual(c.streams[s]["reset"], 7, c.streams[s])  # REFUSED_STREAM
                self.assertIsNone(c.streams[s]["status"])
            last = c.request("/fixed?size=2")
            c.pump(lambda: c.done(last))
            self.assertEqual(bytes(c.streams[last]["data"]), b"xx")
        finally:
            c.close()

    def test_header_list_size_and_hpack_bomb(self):
        # Over max_header_list_size: 431 (RFC 9113 10.5.1, as HTTP/1.1 answers), not a reset
        # (INTERNAL_ERROR before); the head's fields are not kept, and the other streams go on.
        c = Client(self.h2c_port)
        try:
            big = c.request("/fixed", headers=[("x-big", "b" * 5000)])
            # A small encoding of a large list: one table entry referenced again and again.
            bomb = c.request("/fixed", headers=[("x-bomb", "c" * 900)] * 10)
            # With a body still coming: answered at once; the rest of the body is dropped.
            post = c.request("/echo?id=big-post", method="POST",
                             headers=[("content-length", "6"), ("cookie", "a=1"),
                                      ("x-big", "b" * 5000)], body=b"abc", end=False)
            ok = c.request("/fixed?size=1")
            c.pump(lambda: c.done(big, bomb, ok) and (c.streams[post]["status"]
                                                      or c.streams[post]["reset"] is not None))
            self.assertEqual(c.streams[post]["status"], 431, c.streams[post])
            c.send_body(post, b"def")
            c.pump(lambda: c.done(post))
            for s in (big, bomb, post):
                self.assertEqual(c.streams[s]["status"], 431, c.streams[s])
                self.assertIsNone(c.streams[s]["reset"], c.streams[s])
                self.assertIn(b"431", bytes(c.streams[s]["data"]))
            self.assertEqual(c.streams[ok]["status"], 200)
            # Trailers after a 431 for the head: a field section of their own, and the
            # answer stands.
            pt = c.request("/echo?id=big-post-trl", method="POST",
                           headers=[("x-big", "b" * 5000)], body=b"abc", end=False)
            c.pump(lambda: c.streams[pt]["status"] or c.streams[pt]["reset"] is not None)
            c.conn.send_headers(pt, [("x-t", "1")], end_stream=True)
            c.flush()
            c.pump(lambda: c.done(pt))
            self.assertEqual((c.streams[pt]["status"], c.streams[pt]["reset"]), (431, None))
            # Trailers over it, the response not started: 431 too.
            trl = c.post_with_trailers("/headers?id=big-trailers", b"abc",
                                       [("x-big-trailer", "t" * 5000)])
            self.assertEqual(trl["status"], 431, trl)
            again = c.request("/fixed?size=2")
            c.pump(lambda: c.done(again))
            self.assertEqual(bytes(c.streams[again]["data"]), b"xx")
            self.assertIsNone(c.goaway)
        finally:
            c.close()
        lines = self.proxy.access_lines()
        self.assertFalse([l for l in lines if "big-post" in l and '" 200 ' in l], lines)
        self.proxy.wait_log("header list over http2.max_header_list_size: 431")
        self.proxy.wait_log("trailer list over http2.max_header_list_size: 431")

    def test_trailers_over_the_limit_while_lua_holds_the_request(self):
        # The trailers come while the handler sleeps: the 431 waits for the body's end to
        # reach the request (as on HTTP/1.1), not answered under the parked handler.
        c = Client(self.h2c_port)
        try:
            sid = c.request("/parked/echo", method="POST", body=b"abc", end=False)
            c.conn.send_headers(sid, [("x-big-trailer", "t" * 5000)], end_stream=True)
            c.flush()
            ok = c.request("/fixed?size=1")
            c.pump(lambda: c.done(sid, ok))
            self.assertEqual((c.streams[sid]["status"], c.streams[sid]["reset"]), (431, None))
            self.assertEqual(c.streams[ok]["status"], 200)
            again = c.request("/parked/fixed")
            c.pump(lambda: c.done(again))
            self.assertEqual((c.streams[again]["status"], bytes(c.streams[again]["data"])),
                             (200, b"xx"))
            self.assertIsNone(c.goaway)
        finally:
            c.close()
        self.proxy.wait_log("trailer list over http2.max_header_list_size: 431")

    def assertCalm(self, c):
        c.pump(lambda: c.goaway is not None)
        self.assertIsNotNone(c.goaway, "no GOAWAY")
        self.assertEqual(c.goaway.error_code, ENHANCE_YOUR_CALM)

    def test_rapid_reset(self):
        c = Client(self.h2c_port)
        try:
            for _ in range(40):
                sid = c.conn.get_next_available_stream_id()
                c.conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"),
                                          (":authority", "x"), (":path", "/delay?ms=500")],
                                    end_stream=True)
                c.conn.reset_stream(sid)
            c.flush()
            self.assertCalm(c)
        finally:
            c.close()
        self.proxy.wait_log("RST_STREAM flood")

    def test_ping_flood(self):
        c = Client(self.h2c_port)
        try:
            for i in range(100):
                c.conn.ping(struct.pack(">Q", i))
            c.flush()
            self.assertCalm(c)
        finally:
            c.close()

    def test_settings_flood(self):
        c = Client(self.h2c_port)
        try:
            for _ in range(100):
                c.sock.sendall(raw_frame(0x4, 0, 0))
            c.pump(lambda: c.goaway is not None)
            self.assertCalm(c)
        finally:
            c.close()

    def test_empty_data_flood(self):
        c = Client(self.h2c_port)
        try:
            sid = c.request("/echo", method="POST", end=False)
            for _ in range(100):
                c.sock.sendall(raw_frame(0x0, 0, sid))
            self.assertCalm(c)
        finally:
            c.close()

    def test_continuation_flood(self):
        s = socket.create_connection(("127.0.0.1", self.h2c_port), timeout=H.T(10))
        try:
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + raw_frame(0x4, 0, 0))
            # HEADERS without END_HEADERS, then CONTINUATIONs that never end the block.
            s.sendall(raw_frame(0x1, 0x1, 1, b"\x82"))  # :method GET, END_STREAM
            for _ in range(20):
                try:
                    s.sendall(raw_frame(0x9, 0, 1, b"\x00\x01a\x01b"))  # a: b
                except OSError:
                    break
            frames = read_until_close(s, H.T(10))
            self.assertIn(0x7, [t for t, _ in frames], frames)  # GOAWAY, then closed
        finally:
            s.close()


class H2CacheTest(H.ProxyTestCase):
    """The cache over HTTP/2: a cold Range request is filled whole while only its window
    reaches the client (the cache lane's window, applied in conn.c for both protocols), and
    hits answer streams."""

    @classmethod
    def setUpClass(cls):
        if not CURL:
            raise H.MissingDependency("curl")
        cls.origin = cls.start_origin("o3")
        ups = {"app": H.upstream(cls.origin.address())}
        routes = [{"match": {"prefix": "/"}, "upstream": "app",
                   "plugins": [{"name": "cache", "zone": "h2z", "default_ttl": {200: 3600}}]}]
        p = H.Proxy.build(ups, routes, name="h2cache",
                          cache={"zones": {"h2z": {"memory": "16m", "max_object_size": "4m"}}})
        p.cfg["listen"] = [{"address": "127.0.0.1:0", "http2": True}]
        cls.addClassCleanup(p.stop)
        cls.proxy = p.start()

    def curl(self, path, *args):
        p = run([CURL, "-sS", "--http2-prior-knowledge", "--max-time", str(H.T(10)), "-D", "-",
                 "-o", "/dev/stderr", "http://127.0.0.1:%d%s" % (self.proxy.port, path)]
                + list(args))
        self.assertEqual(p.returncode, 0, p.stderr[-300:])
        lines = p.stdout.decode().split("\r\n")
        hdrs = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            if k:
                hdrs[k.strip().lower()] = v.strip()
        return int(lines[0].split()[1]), hdrs, p.stderr

    def tearDown(self):
        self.assertAlive()

    BODY = bytes(ord("a") + i % 26 for i in range(300000))

    def test_cold_range_then_hits(self):
        path = "/large?bytes=300000&t=range"
        st, h, got = self.curl(path, "-r", "200000-200009")
        self.assertEqual((st, got, h.get("content-range")),
                         (206, self.BODY[200000:200010], "bytes 200000-200009/300000"), h)
        self.assertEqual(h.get("content-length"), "10", h)
        st, h, got = self.curl(path, "-r", "0-9")
        self.assertEqual((st, got), (206, self.BODY[:10]), h)
        self.assertIn("hit", h.get("cache-status", ""), h)

    def test_large_hit(self):
        # A hit is queued on its stream whole: its DATA frames must all go, paced by the
        # client's windows (it stopped at the connection's 128 KB of output).
        path = "/large?bytes=300000&t=hit"
        for want in ("miss", "hit"):
            with self.subTest(want):
                st, h, got = self.curl(path)
                self.assertEqual((st, len(got), got == self.BODY), (200, 300000, True), h)
                self.assertIn(want, h.get("cache-status", "").lower(), h)


class H2ConnectionLimitsTest(H.ProxyTestCase):
    """Idle timeout, max requests per connection and GOAWAY on shutdown: a proxy each."""

    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("o2")

    def start(self, limits):
        ups = {"app": H.upstream(self.origin.address())}
        routes = [{"match": {"prefix": "/"}, "upstream": "app"}]
        p = H.Proxy.build(ups, routes, name="h2lim", http2=limits)
        p.cfg["listen"] = [{"address": "127.0.0.1:0", "http2": True}]
        self.addCleanup(p.stop)
        return p.start()

    def test_idle_timeout(self):
        p = self.start({"idle_timeout": 0.3})
        c = Client(p.port)
        try:
            sid = c.request("/fixed?size=1")
            c.pump(lambda: c.done(sid))
            c.pump(lambda: c.goaway is not None and c.eof, timeout=H.T(10))
            self.assertEqual(c.goaway.error_code, 0)
        finally:
            c.close()

    def test_idle_session_parks_and_wakes(self):
        """An idle connection's session is packed away after 1 s (engine/h2_mem.c, parking)
        and comes back whole: the client's settings (its stream window), the request HPACK
        table it indexed into, PING, and further requests, across two idle spells."""
        ups = {"app": H.upstream(self.origin.address())}
        routes = [{"match": {"prefix": "/"}, "upstream": "app"}]
        p = H.Proxy.build(ups, routes, name="h2park", http2={}, level="debug")
        p.cfg["listen"] = [{"address": "127.0.0.1:0", "http2": True}]
        self.addCleanup(p.stop)
        p.start()
        c = Client(p.port)
        pings = []
        handle = c.handle

        def handle_ping(ev):
            if isinstance(ev, h2.events.PingAckReceived):
                pings.append(ev.ping_data)
            handle(ev)
        c.handle = handle_ping
        try:
            c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
            c.flush()
            # python3-h2 indexes these: later requests send only their table indexes.
            hdrs = [("x-park-a", "a" * 40), ("x-park-b", "b" * 40)]

            def echoed(sid):
                c.pump(lambda: c.done(sid))
                self.assertEqual(c.streams[sid]["status"], 200)
                j = json.loads(bytes(c.streams[sid]["data"]))
                got = {k.lower(): v for k, v in j["headers"]}
                self.assertEqual((got.get("x-park-a"), got.get("x-park-b")), ("a" * 40, "b" * 40))
            echoed(c.request("/headers", headers=hdrs))
            for spell in (1, 2):
                H.wait_for(lambda: p.stderr().count("HTTP/2 idle session parked") >= spell,
                           H.T(10), what="the idle session to be parked")
                if spell == 1:  # a PING wakes it, and it is parked again
                    c.conn.ping(b"parked!!")
                    c.flush()
                    c.pump(lambda: pings)
                    self.assertEqual(pings, [b"parked!!"])
                    continue
                echoed(c.request("/headers", headers=hdrs))
                # The client's INITIAL_WINDOW_SIZE still holds: 1000 bytes, then the rest
                # once the stream's window is given back.
                sid = c.request("/fixed?size=3000")
                c.hold.add(sid)
                c.pump(lambda: len(c.streams[sid]["data"]) >= 1000)
                try:  # nothing more comes while the stream's window is shut
                    c.pump(lambda: len(c.streams[sid]["data"]) > 1000 or c.done(sid),
                           timeout=0.5)
                except AssertionError:
                    pass
                self.assertEqual(len(c.streams[sid]["data"]), 1000)
                c.hold.discard(sid)
                c.conn.increment_flow_control_window(5000, sid)
                c.flush()
                c.pump(lambda: c.done(sid))
                self.assertEqual(bytes(c.streams[sid]["data"]), b"x" * 3000)
            self.assertGreaterEqual(p.stderr().count("HTTP/2 idle session parked"), 2)
            self.assertIsNone(c.goaway)
        finally:
            c.close()

    def test_max_requests(self):
        p = self.start({"max_requests": 3})
        c = Client(p.port)
        r = RawReader(c)
        try:
            sids = [c.request("/fixed?size=1") for _ in range(3)]
            r.pump(lambda: all(s in r.ended for s in sids) and r.goaway is not None and r.eof)
            self.assertEqual(r.goaway, (sids[-1], 0))
            for s in sids:
                self.assertEqual(r.status.get(s), 200)
            self.assertTrue(r.eof)  # closed once the last stream ended
        finally:
            c.close()

    def test_goaway_on_shutdown_lets_open_streams_finish(self):
        p = self.start({})
        c = Client(p.port)
        try:
            # The head comes at once, the body over about half a second.
            sid = c.request("/slow?bytes=100&chunk=10&delay_ms=50")
            r = RawReader(c)
            r.pump(lambda: sid in r.status)
            p.signal(signal.SIGTERM)
            r.pump(lambda: r.goaway is not None and sid in r.ended)
            self.assertEqual(r.goaway, (sid, 0))
            self.assertEqual(r.status[sid], 200)
            self.assertIn(sid, r.ended)
            self.assertEqual(p.wait_exit(H.T(20)), 0)
        finally:
            c.close()


class H2Origin:
    """An HTTP/2 origin (h2c, python3-h2, a thread per connection in this process) for the
    upstream side: it counts the connections it accepted and answers by path:
    /hold?n=K waits until K streams are open at once on its connection (at most 1.5 s),
    then answers with x-conn (the connection's number) and x-max (the most open at once);
    /trailers answers with a body and trailers, echoing the request's trailers in x-req-trailers;
    /goaway is refused with GOAWAY when refuse_next is set (then cleared), else answered
    (and then it stops listening, when refuse_closes is set);
    /echo is refused as /goaway is, else answered with the SHA-256 (hex) of the request's
    body and its trailers (x-req-trailers); /slowecho answers as /echo, but as a slow reader:
    its window is given back only once the connection has been quiet for 50 ms;
    /drop closes the connection without an answer;
    /rst resets the stream (RST_STREAM INTERNAL_ERROR) without an answer; /rstmid after a
    head and some data; /badlen sends more DATA than its content-length says (a stream error
    to the proxy's nghttp2, which resets the stream itself);
    /big sends 8 MiB as the proxy's flow control window allows (big_sent, big_blocked);
    a path with /headers in it is answered with the request's head as JSON (lp_origin's /headers: method, url,
    headers, and the body's length);
    /early sends a 103 head before the final one; /many?n=K answers with K fields;
    /bighead?n=K with a field of K bytes."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.accepted = 0
        self.lock = threading.Lock()
        self.stopping = False
        self.refuse_next = False  # the next /goaway or /echo is refused with GOAWAY
        self.refuse_closes = False  # ... and the origin stops listening then
        self.big_sent = 0  # bytes of /big sent so far (as the proxy's window allowed)
        self.big_blocked = False  # /big waits for the proxy's window
        self.socks = []
        self.threads = [threading.Thread(target=self.accept_loop, daemon=True)]
        self.threads[0].start()

    def address(self):
        return "127.0.0.1:%d" % self.port

    def stop(self):
        self.stopping = True
        for s in [self.lsock] + self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        for t in self.threads:
            t.join(H.T(10))

    def accept_loop(self):
        while not self.stopping:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                n = self.accepted
            self.socks.append(s)
            t = threading.Thread(target=self.serve, args=(s, n), daemon=True)
            self.threads.append(t)
            t.start()

    def serve(self, s, num):
        try:
            self.serve_one(s, num)
        finally:
            s.close()  # a failed handler shows as a lost connection, never as a hang

    def serve_one(self, s, num):
        c = h2.connection.H2Connection(config=h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8"))
        c.initiate_connection()
        s.sendall(c.data_to_send())
        reqs, held, maxopen, big, unacked = {}, [], [0], {}, {}
        s.settimeout(0.05)

        def ack(sid):
            n = unacked.pop(sid, 0)
            if n:
                c.acknowledge_received_data(n, sid)

        def answer(sid, status="200", body=b"ok", extra=(), trailers=None):
            c.send_headers(sid, [(":status", status)] + list(extra))
            c.send_data(sid, body, end_stream=trailers is None)
            if trailers:
                c.send_headers(sid, trailers, end_stream=True)

        while not self.stopping:
            try:
                data = s.recv(65536)
                if not data:
                    return
                events = c.receive_data(data)
            except socket.timeout:
                events = []
                for sid in list(unacked):  # quiet: the slow reader catches up
                    ack(sid)
            except (OSError, h2.exceptions.ProtocolError):
                return
            for ev in events:
                if isinstance(ev, h2.events.RequestReceived):
                    reqs[ev.stream_id] = {"h": dict(ev.headers), "t": {}, "b": bytearray(),
                                          "t0": time.monotonic()}
                    maxopen[0] = max(maxopen[0], c.open_inbound_streams)
                elif isinstance(ev, h2.events.TrailersReceived):
                    reqs[ev.stream_id]["t"] = dict(ev.headers)
                elif isinstance(ev, h2.events.DataReceived):
                    reqs[ev.stream_id]["b"] += ev.data
                    if reqs[ev.stream_id]["h"][":path"] == "/slowecho":
                        unacked[ev.stream_id] = (unacked.get(ev.stream_id, 0)
                                                 + ev.flow_controlled_length)
                    else:
                        c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamReset):
                    # The proxy cancelled it (with a window update before, at times): no
                    # more DATA, and the connection goes on.
                    big.pop(ev.stream_id, None)
                if not isinstance(ev, h2.events.StreamEnded):
                    continue
                sid = ev.stream_id
                path = reqs[sid]["h"][":path"]
                if path.startswith("/hold"):
                    held.append((sid, int(path.split("n=")[1])))
                elif path == "/trailers":
                    got = ",".join("%s=%s" % kv for kv in sorted(reqs[sid]["t"].items()))
                    answer(sid, body=b"body", extra=[("x-req-trailers", got)],
                           trailers=[("x-trailer", "t1"), ("grpc-status", "0"),
                                     ("x-forwarded-for", "203.0.113.66")])
                elif path in ("/goaway", "/echo") and self.refuse_next:
                    self.refuse_next = False
                    if self.refuse_closes:
                        try:
                            self.lsock.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                        self.lsock.close()
                    c.close_connection(last_stream_id=sid - 2 if sid > 1 else 0)
                    s.sendall(c.data_to_send())
                    return
                elif path in ("/echo", "/slowecho"):
                    ack(sid)
                    got = ",".join("%s=%s" % kv for kv in sorted(reqs[sid]["t"].items()))
                    answer(sid, body=hashlib.sha256(reqs[sid]["b"]).hexdigest().encode(),
                           extra=[("x-req-trailers", got), ("x-conn", str(num))])
                elif "/headers" in path:
                    h = reqs[sid]["h"]
                    answer(sid, body=json.dumps({
                        "method": h[":method"], "url": path, "body": len(reqs[sid]["b"]),
                        "headers": [[k, v] for k, v in h.items() if k[0] != ":"]
                        + [["host", h[":authority"]]]}).encode(),
                        extra=[("content-type", "application/json")])
                elif path == "/early":
                    c.send_headers(sid, [(":status", "103"), ("link", "</s.css>; rel=preload")])
                    answer(sid, extra=[("x-final", "1")])
                elif path.startswith("/bighead"):
                    answer(sid, extra=[("x-big", "b" * int(path.split("n=")[1]))])
                elif path.startswith("/many"):
                    n = int(path.split("n=")[1])
                    answer(sid, extra=[("x-f%d" % i, str(i)) for i in range(n)])
                elif path == "/drop":
                    s.close()
                    return
                elif path == "/rst":
                    c.reset_stream(sid, error_code=2)
                elif path == "/rstmid":
                    c.send_headers(sid, [(":status", "200")])
                    c.send_data(sid, b"part")
                    c.reset_stream(sid, error_code=2)
                elif path == "/badlen":
                    c.send_headers(sid, [(":status", "200"), ("content-length", "2")])
                    c.send_data(sid, b"0123456789", end_stream=True)
                elif path == "/big":
                    c.send_headers(sid, [(":status", "200")])
                    big[sid] = 8 << 20
                else:
                    answer(sid, body=b"conn %d" % num)
            for sid in list(big):
                room = min(c.local_flow_control_window(sid), big[sid], c.max_outbound_frame_size)
                while room > 0:
                    c.send_data(sid, b"x" * room, end_stream=big[sid] == room)
                    big[sid] -= room
                    self.big_sent += room
                    room = min(c.local_flow_control_window(sid), big[sid],
                               c.max_outbound_frame_size) if big[sid] else 0
                self.big_blocked = big[sid] > 0
                if not big[sid]:
                    del big[sid]
            # Held streams go once n of them are held here at once, or after 1.5 s. (Counted
            # now, not over the connection's life: a pooled connection that once held n must
            # not answer the next test's streams at once.)
            now, holding = time.monotonic(), len(held)
            for sid, n in list(held):
                if holding >= n or now - reqs[sid]["t0"] > 1.5:
                    held.remove((sid, n))
                    answer(sid, extra=[("x-conn", str(num)), ("x-max", str(maxopen[0]))])
            out = c.data_to_send()
            if out:
                try:
                    s.sendall(out)
                except OSError:
                    return


class H2UpstreamTest(H.ProxyTestCase):
    """Upstream HTTP/2 (engine/h2_up.c): streams multiplexed on one connection, a new one when
    max_streams are open, trailers both ways (to HTTP/2 and HTTP/1.1 clients), GOAWAY's
    refused streams going again on a new connection, a lost connection giving 502."""

    @classmethod
    def setUpClass(cls):
        cls.origin = H2Origin()
        cls.addClassCleanup(cls.origin.stop)
        ups = {"h2o": H.upstream(cls.origin.address(), protocol="h2", max_streams=4)}
        routes = [{"match": {"prefix": "/"}, "upstream": "h2o"}]
        p = H.Proxy.build(ups, routes, name="h2up", admin={"address": "127.0.0.1:0"})
        p.cfg["listen"] = [{"address": "127.0.0.1:0", "http2": True}]
        cls.addClassCleanup(p.stop)
        cls.proxy = p.start()

    def tearDown(self):
        self.assertAlive()

    def streams(self, paths, **kw):
        c = Client(self.proxy.port)
        try:
            sids = [c.request(p, **kw) for p in paths]
            c.pump(lambda: c.done(*sids))
            return [c.streams[s] for s in sids]
        finally:
            c.close()

    def test_streams_share_one_upstream_connection(self):
        got = self.streams(["/hold?n=4"] * 4)
        self.assertEqual([s["status"] for s in got], [200] * 4)
        conns = {s["headers"]["x-conn"] for s in got}
        self.assertEqual(len(conns), 1, got)  # one upstream connection carried all four...
        self.assertEqual(max(int(s["headers"]["x-max"]) for s in got), 4)  # ...at once

    def test_new_connection_when_max_streams_are_open(self):
        before = self.origin.accepted
        # Held until six are open on one connection, which max_streams = 4 never allows: each
        # connection answers after 1.5 s, so the fifth and sixth cannot reuse the first's
        # streams once they close (with n=4 the first four were answered at once, and a late
        # fifth went on the same connection: [6] != [2, 4]).
        got = self.streams(["/hold?n=6"] * 6)
        self.assertEqual([s["status"] for s in got], [200] * 6)
        per = {}
        for s in got:
            per[s["headers"]["x-conn"]] = per.get(s["headers"]["x-conn"], 0) + 1
        self.assertEqual(sorted(per.values()), [2, 4], per)  # max_streams = 4
        self.assertGreaterEqual(self.origin.accepted - before, 1)

    def test_trailers_both_ways(self):
        c = Client(self.proxy.port)
        try:
            # Fields a trailer must not carry (RFC 9110 6.5.1), or that the proxy sets itself,
            # are dropped in both directions.
            st = c.post_with_trailers("/trailers", b"data", [
                ("x-req-t", "rt1"), ("x-forwarded-for", "203.0.113.66"),
                ("authorization", "Basic eDp5"), ("cookie", "a=b")])
        finally:
            c.close()
        self.assertEqual((st["status"], bytes(st["data"])), (200, b"body"))
        self.assertEqual(st["headers"].get("x-req-trailers"), "x-req-t=rt1")
        self.assertEqual(st.get("trailers"), {"x-trailer": "t1", "grpc-status": "0"})
        # An HTTP/1.1 client gets them as chunked trailers.
        r = run([shutil.which("curl"), "-sS", "--http1.1", "-D", "-", "--max-time",
                 str(H.T(10)), "--raw", "http://127.0.0.1:%d/trailers" % self.proxy.port])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"\r\n0\r\nx-trailer: t1\r\ngrpc-status: 0\r\n\r\n", r.stdout)

    def test_goaway_refused_stream_goes_again_on_a_new_connection(self):
        # A POST too: a refused stream was not processed, whatever its method.
        for method in ("GET", "POST"):
            before = self.origin.accepted
            self.origin.refuse_next = True
            st = self.streams(["/goaway"], method=method,
                              body=b"b" if method == "POST" else None)[0]
            self.assertEqual(st["status"], 200, (method, st))
            self.assertFalse(self.origin.refuse_next)  # it was refused once...
            self.assertTrue(bytes(st["data"]).startswith(b"conn "), st)  # ...then answered
            self.assertGreater(self.origin.accepted, before)  # on a new connection
        self.proxy.wait_log("GOAWAY")

    def test_large_bodies_from_an_h2_client_reach_the_upstream_whole(self):
        # The client's body waits in its stream while the upstream stream's queue is full; the
        # upstream's drain must take up the rest. It did not (the HTTP/2 client was never marked
        # paused, so lp_conn_resume_body did nothing): the bytes behind the client's last frame
        # stayed, the request hung until the upstream's read timeout. A slow-reading upstream
        # makes that sure on every try; a fast one only under load.
        body = bytes(range(256)) * 4096  # 1 MiB: limits.max_body_size
        want = hashlib.sha256(body).hexdigest().encode()
        for path in ["/slowecho"] * 2 + ["/echo"] * 2:
            c = Client(self.proxy.port)
            try:
                sid = c.request(path, method="POST", body=body)
                c.pump(lambda: c.done(sid), timeout=H.T(15))
                st = c.streams[sid]
            finally:
                c.close()
            self.assertTrue(st["ended"], (path, st["status"], len(st["data"])))
            self.assertEqual((st["status"], bytes(st["data"])), (200, want), path)

    def test_slow_client_holds_the_upstream_back(self):
        # The client does not read: the upstream may send no more than the proxy's stream
        # window (256 KiB) and the client side's queue (high watermark) and window beyond.
        c = Client(self.proxy.port)
        try:
            sid = c.request("/big")
            c.hold.add(sid)
            c.pump(lambda: self.origin.big_blocked)
            self.assertLess(self.origin.big_sent, 1 << 20)
            # Another stream on the same connections goes on meanwhile.
            other = c.request("/ok")
            c.pump(lambda: c.done(other))
            self.assertEqual(c.streams[other]["status"], 200)
            c.hold.discard(sid)
            c.conn.acknowledge_received_data(len(c.streams[sid]["data"]), sid)
            c.flush()
            c.pump(lambda: c.done(sid), timeout=H.T(60))
            self.assertEqual(len(c.streams[sid]["data"]), 8 << 20)
        finally:
            c.close()

    def h2u_status(self):
        c = http.client.HTTPConnection("127.0.0.1", self.proxy.admin_port, timeout=H.T(10))
        try:
            c.request("GET", "/status")
            r = c.getresponse()
            self.assertEqual(r.status, 200)
            return json.loads(r.read())["http2"]["upstream"]
        finally:
            c.close()

    def h2u_metrics(self):
        promtool = H.require_tool("promtool")
        c = http.client.HTTPConnection("127.0.0.1", self.proxy.admin_port, timeout=H.T(10))
        try:
            c.request("GET", "/metrics")
            body = c.getresponse().read()
        finally:
            c.close()
        p = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                           timeout=H.T(60))
        self.assertEqual(p.returncode, 0, "promtool check metrics:\n%s%s" %
                         (p.stdout.decode(), p.stderr.decode()))
        return {name: float(v) for name, _, v in (l.rpartition(" ") for l in
                body.decode().splitlines() if l.startswith("luaproxy_h2_upstream_"))}

    def test_upstream_counters_in_status_and_metrics(self):
        s0, accepted = self.h2u_status(), self.origin.accepted
        # A refused stream that goes again, one the upstream resets, one a client resets.
        self.origin.refuse_next = True
        self.assertEqual(self.streams(["/goaway"])[0]["status"], 200)
        self.assertEqual(self.streams(["/rst"])[0]["status"], 502)
        c = Client(self.proxy.port)
        try:
            sid = c.request("/big")
            c.hold.add(sid)
            c.pump(lambda: self.origin.big_blocked)
            c.conn.reset_stream(sid)
            c.flush()
        finally:
            c.close()
        # Every stream closes; the pool keeps its idle connections open.
        H.wait_for(lambda: self.h2u_status()["streams_open"] == 0, H.T(10),
                   what="no upstream stream open")
        s1 = self.h2u_status()
        self.assertGreaterEqual(s1["streams"] - s0["streams"], 4, (s0, s1))  # the refused one twice
        self.assertGreaterEqual(s1["goaways_received"] - s0["goaways_received"], 1)
        self.assertGreaterEqual(s1["retries"]["refused"] - s0["retries"]["refused"], 1)
        self.assertGreaterEqual(s1["resets_received"] - s0["resets_received"], 1)
        self.assertGreaterEqual(s1["resets_sent"] - s0["resets_sent"], 1)
        # Every connection the origin took is counted. (Not necessarily one: the refused
        # stream may go on a pooled connection, and the reset one is not sent again.)
        self.assertEqual(s1["connections"] - s0["connections"], self.origin.accepted - accepted)
        self.assertGreaterEqual(s1["connections_open"], 1)
        self.assertLessEqual(s1["connections_open"], s1["connections"])
        m = self.h2u_metrics()
        s2 = self.h2u_status()
        self.assertEqual(m["luaproxy_h2_upstream_streams_total"], s2["streams"])
        self.assertEqual(m["luaproxy_h2_upstream_streams_open"], 0)
        self.assertEqual(m["luaproxy_h2_upstream_connections_total"], s2["connections"])
        self.assertEqual(m["luaproxy_h2_upstream_goaways_received_total"], s2["goaways_received"])
        self.assertEqual(m['luaproxy_h2_upstream_retries_total{reason="refused"}'],
                         s2["retries"]["refused"])
        self.assertEqual(m['luaproxy_h2_upstream_resets_total{direction="received"}'],
                         s2["resets_received"])
        self.assertEqual(m['luaproxy_h2_upstream_resets_total{direction="sent"}'],
                         s2["resets_sent"])

    def test_a_stream_that_dies_is_logged_as_what_happened(self):
        # One stream dies, its connection goes on: the log says whether the upstream reset
        # it (its RST_STREAM and code) or the proxy did, for an invalid response. (Before:
        # "upstream reset the stream (PROTOCOL_ERROR)" for nghttp2's own reset, as if the
        # upstream had sent it.) POSTs: not retried, one line each.
        before = self.origin.accepted
        got = self.streams(["/rst", "/rstmid", "/badlen"], method="POST")
        for s in got:
            self.assertTrue(s["status"] == 502 or s["reset"] is not None, s)
        self.assertEqual(self.streams(["/x"])[0]["status"], 200)
        self.proxy.wait_log("upstream reset the stream (RST_STREAM INTERNAL_ERROR) (POST /rst)")
        self.proxy.wait_log("upstream reset the stream (RST_STREAM INTERNAL_ERROR) (POST /rstmid)")
        log = self.proxy.wait_log(
            "invalid response: the proxy reset the stream (PROTOCOL_ERROR) (POST /badlen)")
        self.assertNotIn("closed the connection", log)
        self.assertLessEqual(self.origin.accepted - before, 1)  # the connection lived on

    def test_response_head_size_limit(self):
        # limits.max_header_size bounds an HTTP/2 upstream's head as an HTTP/1.1 one's
        # (name and value bytes): within it the head goes, beyond it a 502, not retried.
        got = self.streams(["/bighead?n=16000", "/bighead?n=16400"])
        self.assertEqual(got[0]["status"], 200, got[0])
        self.assertEqual(len(got[0]["headers"]["x-big"]), 16000)
        self.assertEqual(got[1]["status"], 502, got[1])
        self.proxy.wait_log("invalid response: header section too large (GET /bighead?n=16400)")

    def test_connection_lost_is_502(self):
        for method in ("GET", "POST"):
            st = self.streams(["/drop"], method=method, body=b"b" if method == "POST" else None)[0]
            self.assertEqual(st["status"], 502, (method, st))
        # The pool goes on with new connections.
        self.assertEqual(self.streams(["/ok"])[0]["status"], 200)


class H2BodyRetryTest(H.ProxyTestCase):
    """A try that moves on from an HTTP/2 stream takes the request body it streamed along: a
    stream refused by GOAWAY whose new connection cannot connect, and a first connection
    that cannot connect, both go to the next target with the whole body and its trailers.
    Each upstream's first target has the larger weight, so that the first try goes there."""

    @classmethod
    def setUpClass(cls):
        cls.refuser = H2Origin()
        cls.addClassCleanup(cls.refuser.stop)
        cls.good = H2Origin()
        cls.addClassCleanup(cls.good.stop)
        cls.dead = "127.0.0.1:%d" % H.dead_port()
        ups = {
            "refused": H.upstream({"address": cls.refuser.address(), "weight": 100},
                                  {"address": cls.good.address(), "weight": 1},
                                  protocol="h2", retries=2),
            "down": H.upstream({"address": cls.dead, "weight": 100},
                               {"address": cls.good.address(), "weight": 1},
                               protocol="h2", retries=2),
        }
        routes = [{"match": {"headers": {"x-up": "refused"}}, "upstream": "refused"},
                  {"match": {"prefix": "/"}, "upstream": "down"}]
        p = H.Proxy.build(ups, routes, name="h2bodyretry")
        p.cfg["listen"] = [{"address": "127.0.0.1:0", "http2": True}]
        cls.addClassCleanup(p.stop)
        cls.proxy = p.start()

    def tearDown(self):
        self.assertAlive()

    def post(self, headers=()):
        body = bytes(range(256)) * 192  # 48 KiB: several DATA frames, within H2U_REPLAY_MAX
        c = Client(self.proxy.port)
        try:
            st = c.post_with_trailers("/echo", body, [("x-req-t", "rt1")], headers=headers)
        finally:
            c.close()
        self.assertEqual(st["status"], 200, st["headers"])
        self.assertEqual(bytes(st["data"]).decode(), hashlib.sha256(body).hexdigest())
        self.assertEqual(st["headers"].get("x-req-trailers"), "x-req-t=rt1")

    def test_refused_stream_whose_new_connection_fails_goes_on_with_its_body(self):
        self.refuser.refuse_next = self.refuser.refuse_closes = True
        self.post([("x-up", "refused")])  # answered by the good one: the refuser is gone
        self.assertFalse(self.refuser.refuse_next)  # the refuser had it first
        self.proxy.wait_log("GOAWAY")

    def test_connect_failure_goes_on_with_the_streamed_body(self):
        self.post()
        self.proxy.wait_log("connect failed")


class H1TrailersTest(H.ProxyTestCase):
    """HTTP/1.1 chunked trailers from and to an HTTP/1.1 upstream, for HTTP/2 clients."""

    @classmethod
    def setUpClass(cls):
        def handler(req):
            return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"4\r\nbody\r\n0\r\nx-trailer: t1\r\ngrpc-status: 0\r\n\r\n")
        cls.origin = cls.start_raw_origin(handler)
        p = H.Proxy.build({"raw": H.upstream(cls.origin.address())},
                          [{"match": {"prefix": "/"}, "upstream": "raw"}], name="h1trailers")
        p.cfg["listen"] = [{"address": "127.0.0.1:0", "http2": True}]
        cls.addClassCleanup(p.stop)
        cls.proxy = p.start()

    def tearDown(self):
        self.assertAlive()

    def test_chunked_trailers_both_ways(self):
        c = Client(self.proxy.port)
        try:
            st = c.post_with_trailers("/t", b"data", [("x-req-t", "rt1")])
        finally:
            c.close()
        self.assertEqual((st["status"], bytes(st["data"])), (200, b"body"))
        self.assertEqual(st.get("trailers"), {"x-trailer": "t1", "grpc-status": "0"})
        self.assertIn(b"\r\n0\r\nx-req-t: rt1\r\n\r\n", self.origin.received)


class BodyReader(RawReader):
    """RawReader that also counts each stream's DATA bytes (and gives the windows back)."""

    def __init__(self, client):
        super().__init__(client)
        self.data = {}

    def frame(self, t, fl, sid, pl):
        n = len(pl)
        if t == 0x0 and n:
            self.data[sid] = self.data.get(sid, 0) + n
            upd = struct.pack(">I", n)
            self.c.sock.sendall(raw_frame(0x8, 0, 0, upd) + raw_frame(0x8, 0, sid, upd))
        super().frame(t, fl, sid, pl)


class H2HardeningTest(RT.ReloadTestCase):
    """Send-stall timeout (timeouts.send) per stream and per connection, the HTTP/2 counters
    in GET /status and GET /metrics (promtool), and GOAWAY on reload with streams in flight."""

    CANCEL = 8

    @classmethod
    def setUpClass(cls):
        cls.promtool = H.require_tool("promtool")
        cls.origin = cls.start_origin("o4")
        routes = [{"match": {"prefix": "/cached/"}, "upstream": "app", "strip_prefix": True,
                   "plugins": [{"name": "cache", "zone": "hz", "default_ttl": {200: 3600}}]},
                  {"match": {"prefix": "/"}, "upstream": "app"}]
        cls.proxy = cls.start_reload_proxy(
            # No idle pool: the origin connections open are those serving a stream.
            {"app": H.upstream(cls.origin.address(), keepalive=0)}, routes, name="h2hard",
            timeouts={"send": 1}, http2={"max_resets": 20},
            cache={"zones": {"hz": {"memory": "16m", "max_object_size": "4m"}}},
            listen=[{"address": "127.0.0.1:0", "http2": True}])
        H.wait_for(lambda: H.port_accepts(cls.proxy.admin_port), H.T(10), what="the admin API")

    def tearDown(self):
        self.assertAlive()

    def upstream_sockets(self):
        """Local ports of the proxy's ESTABLISHED connections to the origin."""
        return {lp for lp, rp, st in RT.tcp_states(self.origin.port)
                if rp == self.origin.port and st == "01"}

    def h2_status(self):
        return self.status()["http2"]

    def scrape(self):
        r = self.admin("GET", "/metrics")
        self.assertEqual(r.status, 200, r.body)
        p = subprocess.run([self.promtool, "check", "metrics"], input=r.body,
                           capture_output=True, timeout=H.T(60))
        self.assertEqual(p.returncode, 0, "promtool check metrics:\n%s%s" %
                         (p.stdout.decode(), p.stderr.decode()))
        out = {}
        for line in r.body.decode().splitlines():
            if line.startswith("luaproxy_h2_"):
                name, _, v = line.rpartition(" ")
                out[name] = float(v)
        return out

    def test_stalled_stream_is_reset_and_its_upstream_released(self):
        before = self.h2_status()["protections"]["send_stall_stream"]
        c = Client(self.proxy.port)
        try:
            # A stream window of 1 KiB that is never opened; the connection's comes back.
            c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1024})
            c.flush()
            slow = c.request("/large?bytes=%d" % (8 << 20))
            c.hold.add(slow)
            c.pump(lambda: len(c.streams[slow]["data"]) >= 1024)
            t0 = time.monotonic()
            # Other streams on the connection go on meanwhile.
            fast = c.request("/fixed?size=10")
            c.pump(lambda: c.done(fast))
            self.assertEqual((c.streams[fast]["status"], bytes(c.streams[fast]["data"])),
                             (200, b"x" * 10))
            c.pump(lambda: c.streams[slow]["reset"] is not None, timeout=H.T(15))
            self.assertEqual(c.streams[slow]["reset"], self.CANCEL)
            self.assertGreaterEqual(time.monotonic() - t0, 0.8)  # timeouts.send = 1 s
            self.assertEqual(len(c.streams[slow]["data"]), 1024)
            # Its upstream connection was cut (mid-response; no idle pool either), where the
            # origin would go on sending for as long as it is read.
            H.wait_for(lambda: not self.upstream_sockets(), H.T(10),
                       what="the stalled stream's upstream connection to close")
            # The connection still serves.
            again = c.request("/fixed?size=5")
            c.pump(lambda: c.done(again))
            self.assertEqual(c.streams[again]["status"], 200)
            self.assertFalse(c.eof)
        finally:
            c.close()
        self.assertEqual(self.h2_status()["protections"]["send_stall_stream"], before + 1)
        self.proxy.wait_log("kept its window shut")

    def test_stalled_cache_hit_is_reset(self):
        """A hit's body held for a client that never opens its stream's window."""
        path = "/cached/large?bytes=300000&t=stall"
        body = bytes(ord("a") + i % 26 for i in range(300000))
        for want in ("miss", "hit"):
            c = Client(self.proxy.port)
            try:
                sid = c.request(path)
                c.pump(lambda: c.done(sid))
                h = c.streams[sid]
                self.assertEqual((h["status"], bytes(h["data"]) == body), (200, True))
                self.assertIn(want, h["headers"].get("cache-status", "").lower(), h["headers"])
            finally:
                c.close()
        before = self.h2_status()["protections"]["send_stall_stream"]
        c = Client(self.proxy.port)
        try:
            c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1024})
            c.flush()
            slow = c.request(path)
            c.hold.add(slow)
            c.pump(lambda: c.streams[slow]["reset"] is not None, timeout=H.T(15))
            self.assertEqual(c.streams[slow]["reset"], self.CANCEL)
            self.assertEqual(len(c.streams[slow]["data"]), 1024)
            self.assertIn("hit", c.streams[slow]["headers"].get("cache-status", "").lower())
            # The entry is intact, and the connection serves it.
            again = c.request(path)
            c.pump(lambda: c.done(again))
            self.assertEqual((c.streams[again]["status"], c.streams[again]["data"] == body),
                             (200, True))
        finally:
            c.close()
        self.assertEqual(self.h2_status()["protections"]["send_stall_stream"], before + 1)

    def test_shut_connection_window_ends_the_connection(self):
        before = self.h2_status()["protections"]["send_stall_connection"]
        c = Client(self.proxy.port, ack=False)  # never a WINDOW_UPDATE
        try:
            c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
            c.flush()
            sid = c.request("/large?bytes=%d" % (8 << 20))
            c.pump(lambda: len(c.streams[sid]["data"]) >= 65535)
            c.pump(lambda: c.goaway is not None and c.eof, timeout=H.T(15))
            self.assertEqual(c.goaway.error_code, ENHANCE_YOUR_CALM)
            self.assertEqual(len(c.streams[sid]["data"]), 65535)
            H.wait_for(lambda: not self.upstream_sockets(), H.T(10),
                       what="the upstream connection to close")
        finally:
            c.close()
        self.assertEqual(self.h2_status()["protections"]["send_stall_connection"], before + 1)

    def test_counters_in_status_and_metrics(self):
        s0, m0 = self.h2_status(), self.scrape()
        c = Client(self.proxy.port)
        try:
            a = c.request("/fixed?size=3")
            b = c.request("/fixed?size=4")
            c.pump(lambda: c.done(a, b))
            r = c.request("/delay?ms=2000")
            c.conn.reset_stream(r)
            c.flush()
            held = c.request("/delay?ms=5000")
            H.wait_for(lambda: self.h2_status()["streams"] == s0["streams"] + 4 and
                       self.h2_status()["resets_received"] == s0["resets_received"] + 1,
                       H.T(10), what="four streams and a reset in /status")
            s1, m1 = self.h2_status(), self.scrape()
            self.assertGreaterEqual(s1["connections_open"], s0["connections_open"] + 1, s1)
            self.assertEqual(s1["connections"], s0["connections"] + 1, s1)
            self.assertEqual(s1["streams"], s0["streams"] + 4, s1)
            self.assertEqual(s1["resets_received"], s0["resets_received"] + 1, s1)
            self.assertEqual(m1["luaproxy_h2_streams_total"], s1["streams"])
            self.assertEqual(m1["luaproxy_h2_connections_open"], s1["connections_open"])
            self.assertEqual(m1['luaproxy_h2_resets_total{direction="received"}'],
                             m0['luaproxy_h2_resets_total{direction="received"}'] + 1)
            c.conn.reset_stream(held)
            c.flush()
        finally:
            c.close()
        # A rapid reset flood: GOAWAY ENHANCE_YOUR_CALM, counted by reason.
        f = Client(self.proxy.port)
        try:
            for _ in range(30):
                sid = f.conn.get_next_available_stream_id()
                f.conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"),
                                          (":authority", "x"), (":path", "/delay?ms=500")],
                                    end_stream=True)
                f.conn.reset_stream(sid)
            f.flush()
            f.pump(lambda: f.goaway is not None)
            self.assertEqual(f.goaway.error_code, ENHANCE_YOUR_CALM)
        finally:
            f.close()
        H.wait_for(lambda: self.h2_status()["connections_open"] == s0["connections_open"],
                   H.T(10), what="the connections to close in /status")
        s2, m2 = self.h2_status(), self.scrape()
        self.assertEqual(s2["protections"]["rapid_reset"], s0["protections"]["rapid_reset"] + 1)
        self.assertGreaterEqual(s2["goaways_sent"], s0["goaways_sent"] + 1)
        self.assertGreaterEqual(s2["resets_received"], s0["resets_received"] + 21)
        self.assertEqual(s2["streams_open"], 0, s2)
        self.assertEqual(m2['luaproxy_h2_protections_total{reason="rapid_reset"}'],
                         s2["protections"]["rapid_reset"])
        self.assertEqual(m2["luaproxy_h2_goaways_sent_total"], s2["goaways_sent"])
        self.assertEqual(m2["luaproxy_h2_connections_total"], s0["connections"] + 2)

    def test_goaway_on_reload_with_streams_in_flight(self):
        c = Client(self.proxy.port)
        r = BodyReader(c)
        try:
            # Heads at once, bodies over about five seconds (a reload on a loaded machine).
            sids = [c.request("/slow?bytes=1000&chunk=50&delay_ms=250") for _ in range(3)]
            r.pump(lambda: all(s in r.status for s in sids))
            gen = self.status()["generation"]
            self.proxy.cfg = self.proxy.bound_config()  # the same listeners
            self.proxy.cfg["routes"] = [
                {"match": {"prefix": "/new"}, "upstream": "app",
                 "handler": H.LuaRaw('function(req) return req:respond(200, "new", {}) end')},
            ] + self.proxy.cfg["routes"]
            self.proxy.write_config()
            self.proxy.signal(signal.SIGHUP)
            r.pump(lambda: r.goaway is not None)
            self.assertEqual(r.goaway, (max(sids), 0))
            r.pump(lambda: all(s in r.ended for s in sids) and r.eof)
            for s in sids:
                self.assertEqual((r.status.get(s), r.data.get(s), s in r.ended), (200, 1000, True))
            self.assertTrue(r.eof)  # closed once its streams ended
            self.assertEqual(self.status()["generation"], gen + 1)
        finally:
            c.close()
        n = Client(self.proxy.port)
        try:
            sid = n.request("/new/x")
            n.pump(lambda: n.done(sid))
            self.assertEqual((n.streams[sid]["status"], bytes(n.streams[sid]["data"])),
                             (200, b"new"))
        finally:
            n.close()


if __name__ == "__main__":
    unittest.main()
