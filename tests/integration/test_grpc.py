#!/usr/bin/env python3
"""gRPC through luaproxy (issue #17, engine/h2_up.c): a grpcio server behind an upstream with
`protocol = "h2"` (h2c, and TLS with ALPN h2), grpcio clients to the proxy over h2c and TLS.
Unary, server streaming and bidirectional streaming (each request message waits for the
echo of the one before: both bodies flow at once), grpc-status and grpc-message trailers
passed through, grpc-timeout giving DEADLINE_EXCEEDED from the proxy, and the proxy's own
failures as gRPC statuses (UNAVAILABLE for a target that is down, INTERNAL for a Lua
error, RESOURCE_EXHAUSTED for a limit).

Handlers are generic (raw bytes, no protoc code generation); the server runs in this
process (grpcio threads) and is stopped by the class cleanups."""

import os
import queue
import socket
import subprocess
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness as H  # noqa: E402

try:
    import grpc
    import h2.config
    import h2.connection
    import h2.events
except ImportError:  # ctest's python may be another build than Debian's (python3-grpcio)
    sys.path.append("/usr/lib/python3/dist-packages")
    import grpc
    import h2.config
    import h2.connection
    import h2.events

SVC = "test.Echo"


class Service:
    """The handlers: raw bytes in and out."""

    def __init__(self):
        self.release = threading.Event()  # ends Slow early (cleanup)
        self.cancelled = threading.Event()  # Slow saw its call cancelled

    def unary(self, req, ctx):
        return b"echo:" + req

    def count(self, req, ctx):
        for i in range(int(req)):
            yield b"n%d" % i

    def bidi(self, it, ctx):
        for m in it:
            yield b"re:" + m

    def fail(self, req, ctx):
        ctx.abort(grpc.StatusCode.NOT_FOUND, "nope: " + req.decode())

    def slow(self, req, ctx):
        ctx.add_callback(self.cancelled.set)
        self.release.wait(H.T(10))
        return b"late"

    def handler(self):
        h = grpc.method_handlers_generic_handler(SVC, {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "Count": grpc.unary_stream_rpc_method_handler(self.count),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
        })
        return h


def make_cert(d):
    cert, key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
    p = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost"],
                       capture_output=True, timeout=H.T(30))
    assert p.returncode == 0, p.stderr
    return cert, key


class GrpcTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        d = H.Workdir.new("grpc-certs")
        cls.cert, cls.key = make_cert(d)
        with open(cls.cert, "rb") as f:
            cls.cert_pem = f.read()
        with open(cls.key, "rb") as f:
            key_pem = f.read()
        cls.svc = Service()
        cls.server = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(8))
        cls.server.add_generic_rpc_handlers((cls.svc.handler(),))
        cls.gport = cls.server.add_insecure_port("127.0.0.1:0")
        creds = grpc.ssl_server_credentials([(key_pem, cls.cert_pem)])
        cls.gtls_port = cls.server.add_secure_port("127.0.0.1:0", creds)
        cls.server.start()
        cls.addClassCleanup(cls.server.stop, None)
        cls.addClassCleanup(cls.svc.release.set)
        ups = {
            "grpc": H.upstream(cls.gport, protocol="h2"),
            "grpctls": H.upstream(cls.gtls_port, protocol="h2",
                                  tls={"verify": True, "ca": cls.cert, "sni": "localhost"}),
            "down": H.upstream(H.dead_port(), protocol="h2", retries=0),
        }
        routes = [
            {"match": {"prefix": "/down."}, "upstream": "down"},
            {"match": {"prefix": "/boom."}, "upstream": "grpc",
             "handler": H.LuaRaw('function(req) error("boom") end')},
            {"match": {"prefix": "/limited."}, "upstream": "grpc",
             "handler": H.LuaRaw('function(req) return req:respond(429, "slow down") end')},
            {"match": {"prefix": "/tls."}, "upstream": "grpctls",
             "handler": H.LuaRaw('''function(req)
                 req:set_path("/" .. req:path():sub(6))
               end''')},
            {"match": {"prefix": "/"}, "upstream": "grpc"},
        ]
        p = H.Proxy.build(ups, routes, name="grpc", timeouts={"read": 5})
        p.cfg["listen"] = [
            {"address": "127.0.0.1:0", "http2": True},
            {"address": "127.0.0.1:0", "http2": True,
             "tls": {"cert": cls.cert, "key": cls.key}},
        ]
        cls.addClassCleanup(p.stop)
        cls.proxy = p.start()
        cls.h2c_port, cls.tls_port = p.ports
        cls.chan = grpc.insecure_channel("127.0.0.1:%d" % cls.h2c_port)
        cls.addClassCleanup(cls.chan.close)

    def tearDown(self):
        self.assertAlive()

    def call(self, method, kind="unary_unary", chan=None):
        return getattr(chan or self.chan, kind)("/%s/%s" % (SVC, method))

    # ---- pass-through

    def test_unary(self):
        self.assertEqual(self.call("Unary")(b"hi", timeout=H.T(10)), b"echo:hi")

    def test_unary_tls_client_and_tls_upstream(self):
        creds = grpc.ssl_channel_credentials(root_certificates=self.cert_pem)
        chan = grpc.secure_channel("127.0.0.1:%d" % self.tls_port, creds,
                                   options=(("grpc.ssl_target_name_override", "localhost"),))
        try:
            # /tls.test.Echo/Unary goes to the TLS upstream (ALPN h2) as /test.Echo/Unary.
            m = chan.unary_unary("/tls.%s/Unary" % SVC)
            self.assertEqual(m(b"secure", timeout=H.T(10)), b"echo:secure")
        finally:
            chan.close()

    def test_server_streaming(self):
        got = list(self.call("Count", "unary_stream")(b"5", timeout=H.T(10)))
        self.assertEqual(got, [b"n0", b"n1", b"n2", b"n3", b"n4"])

    def test_server_streaming_of_no_message(self):
        # Head and trailers may come in one read: the status still arrives (no message, OK).
        for _ in range(5):
            call = self.call("Count", "unary_stream")(b"0", timeout=H.T(10))
            self.assertEqual(list(call), [])
            self.assertEqual(call.code(), grpc.StatusCode.OK)

    def test_bidirectional_streaming(self):
        # Each message is sent only once the echo of the previous one came back through
        # the proxy: the request body and the response body flow at the same time.
        q = queue.Queue()

        def requests():
            for i in range(5):
                yield b"m%d" % i
                if q.get(timeout=H.T(10)) is None:
                    return

        got = []
        for r in self.call("Bidi", "stream_stream")(requests(), timeout=H.T(20)):
            got.append(r)
            q.put(r)
        self.assertEqual(got, [b"re:m%d" % i for i in range(5)])

    def test_status_and_message_trailers_pass_through(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.call("Fail")(b"x", timeout=H.T(10))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(cm.exception.details(), "nope: x")

    def test_many_calls_share_the_channel(self):
        futs = [self.call("Unary").future(b"%d" % i, timeout=H.T(20)) for i in range(20)]
        self.assertEqual([f.result() for f in futs], [b"echo:%d" % i for i in range(20)])

    # ---- deadlines

    def test_grpc_timeout_gives_deadline_exceeded_from_the_proxy(self):
        # A raw HTTP/2 client sends grpc-timeout without enforcing it itself: the answer
        # (grpc-status 4, trailers-only) can only come from the proxy.
        self.svc.cancelled.clear()
        t0 = time.monotonic()
        status, headers, _ = h2_call(self.h2c_port, "/%s/Slow" % SVC, b"",
                                     [("grpc-timeout", "300m")])
        took = time.monotonic() - t0
        self.assertEqual(status, "200")
        self.assertEqual(headers.get("grpc-status"), "4", headers)
        self.assertLess(took, H.T(4), "the deadline was not the proxy's read timeout (5 s)")
        # The upstream call was cancelled (the stream reset), not left running.
        self.assertTrue(self.svc.cancelled.wait(H.T(10)))

    def test_client_deadline(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.call("Slow")(b"", timeout=0.3)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)

    # ---- the proxy's own failures

    def test_upstream_down_is_unavailable(self):
        m = self.chan.unary_unary("/down.Svc/X")
        with self.assertRaises(grpc.RpcError) as cm:
            m(b"", timeout=H.T(10))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertIn("502", cm.exception.details())
        # Trailers-only: HTTP 200 and the status in the one HEADERS frame, no page.
        status, headers, body = h2_call(self.h2c_port, "/down.Svc/X", b"", [])
        self.assertEqual((status, headers.get("grpc-status"), body), ("200", "14", b""))
        self.assertEqual(headers.get("content-type"), "application/grpc")

    def test_lua_error_is_internal(self):
        m = self.chan.unary_unary("/boom.Svc/X")
        with self.assertRaises(grpc.RpcError) as cm:
            m(b"", timeout=H.T(10))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INTERNAL)

    def test_limit_is_resource_exhausted(self):
        m = self.chan.unary_unary("/limited.Svc/X")
        with self.assertRaises(grpc.RpcError) as cm:
            m(b"", timeout=H.T(10))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)


def grpc_frame(msg):
    return b"\0" + len(msg).to_bytes(4, "big") + msg


def h2_call(port, path, msg, extra):
    """One gRPC call over h2c with python3-h2: (status, head and trailer fields, body)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=H.T(10))
    try:
        c = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        c.initiate_connection()
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", path),
                             (":authority", "grpc.test"), ("content-type", "application/grpc"),
                             ("te", "trailers")] + extra)
        c.send_data(sid, grpc_frame(msg), end_stream=True)
        sock.sendall(c.data_to_send())
        fields, body, status = {}, b"", None
        deadline = time.monotonic() + H.T(10)
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            for ev in c.receive_data(data):
                if isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    for k, v in ev.headers:
                        if k == ":status":
                            status = v
                        else:
                            fields[k] = v
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                    return status, fields, body
            out = c.data_to_send()
            if out:
                sock.sendall(out)
        raise AssertionError("no end of stream")
    finally:
        sock.close()


if __name__ == "__main__":
    H.main()
