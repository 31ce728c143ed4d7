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

import json
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
        finished = []
        # Called when the call ends: before the handler has returned, only by a cancellation
        # (a call left running ends when release.wait gives up, which is not one).
        ctx.add_callback(lambda: finished or self.cancelled.set())
        self.release.wait(H.T(10))
        finished.append(True)
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
        cls.breaker = BreakingUpstream()
        cls.addClassCleanup(cls.breaker.stop)
        plugdir = H.Workdir.new("grpc-plugins")
        for name, text in PLUGINS.items():
            with open(os.path.join(plugdir, name + ".lua"), "w") as f:
                f.write(text)
        ups = {
            "breaker": H.upstream(cls.breaker.port, protocol="h2", retries=0),
            "grpc": H.upstream(cls.gport, protocol="h2"),
            "grpctls": H.upstream(cls.gtls_port, protocol="h2",
                                  tls={"verify": True, "ca": cls.cert, "sni": "localhost"}),
            "down": H.upstream(H.dead_port(), protocol="h2", retries=0),
        }
        strip = H.LuaRaw('''function(req)
                 req:set_path("/" .. req:path():gsub("^/[^.]*%.", ""))
               end''')
        routes = [
            {"match": {"prefix": "/down."}, "upstream": "down"},
            {"match": {"prefix": "/break."}, "upstream": "breaker", "plugins": [{"name": "trl"}]},
            {"match": {"prefix": "/hang."}, "upstream": "breaker",
             "handler": H.LuaRaw('''function(req)
                 req:set_header("grpc-timeout", "300m")
               end''')},
            {"match": {"prefix": "/trl."}, "upstream": "grpc", "handler": strip,
             "plugins": [{"name": "trl"}]},
            {"match": {"prefix": "/trlb."}, "upstream": "grpc", "handler": strip,
             "plugins": [{"name": "trlb"}]},
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
        p = H.Proxy.build(ups, routes, name="grpc", timeouts={"read": 5},
                          lua={"plugin_paths": [plugdir]})
        p.cfg["log"]["json"] = True
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
        # The server's trailers-only answer stays that: nothing of the proxy's own in it
        # (content-length: 0 and date were shown as trailing metadata).
        self.assertEqual(tuple(cm.exception.trailing_metadata()), ())

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
        self.svc.cancelled.clear()
        with self.assertRaises(grpc.RpcError) as cm:
            self.call("Slow")(b"", timeout=0.3)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        # The proxy passed the end of the call on: the upstream call was cancelled, not left
        # running until its handler gave up.
        self.assertTrue(self.svc.cancelled.wait(H.T(5)), "the upstream call was not cancelled")

    # ---- failures after the response head: grpc-status trailers, not a reset

    def test_deadline_after_the_head_gives_deadline_exceeded_trailers(self):
        # The first message goes out (the head with it), then the proxy's deadline passes
        # (the upstream, unlike grpcio's server, keeps silent): the stream ends with
        # trailers saying DEADLINE_EXCEEDED, not RST_STREAM.
        r = h2_call_split(self.h2c_port, "/break.Svc/hang", b"", [("grpc-timeout", "300m")])
        self.assertEqual(r["status"], "200")
        self.assertIsNone(r["reset"], r)
        self.assertEqual(r["body"], grpc_frame(b"part"))
        self.assertNotIn("grpc-status", r["head"])
        self.assertEqual(r["trailers"].get("grpc-status"), "4", r)
        self.assertIn("504", r["trailers"].get("grpc-message", ""))
        # The log phase's status is the one the access log writes (the 504 it stands for).
        line = self.wait_access(lambda j: "/break.Svc/hang " in j.get("request", ""))
        self.assertEqual((line.get("status"), line.get("vs"), line.get("st")), (504, "504", "504"),
                         line)
        # A grpcio client reads that status (its own deadline is far later; the route sets
        # the call's grpc-timeout to 300 ms).
        call = self.chan.unary_stream("/hang.Svc/hang")(b"", timeout=H.T(10))
        got = []
        with self.assertRaises(grpc.RpcError) as cm:
            for m in call:
                got.append(m)
        self.assertEqual(got, [b"part"])
        self.assertEqual(cm.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertIn("proxy: 504", cm.exception.details())

    def test_deadline_after_a_head_with_a_length_resets(self):
        # The head said content-length: ending early with trailers would make the stream
        # malformed (RFC 9113 8.1.1), so the stream is reset as before.
        r = h2_call_split(self.h2c_port, "/break.Svc/hanglen", b"", [("grpc-timeout", "300m")])
        self.assertEqual(r["status"], "200")
        self.assertIn("content-length", r["head"])
        self.assertIsNotNone(r["reset"], r)
        self.assertEqual(r["trailers"], {}, r)

    def test_upstream_gone_after_the_head_gives_unavailable_trailers(self):
        for mode in ("close", "reset"):
            with self.subTest(mode=mode):
                r = h2_call_split(self.h2c_port, "/break.Svc/" + mode, b"", [],
                                  on_data=self.breaker.go.set)
                self.assertEqual(r["status"], "200")
                self.assertIsNone(r["reset"], r)
                self.assertEqual(r["body"], grpc_frame(b"part"))
                self.assertEqual(r["trailers"].get("grpc-status"), "14", r)
                self.assertIn("502", r["trailers"].get("grpc-message", ""))
        # The log phase reads the trailers the proxy sent; the access log says 502.
        line = self.wait_access(lambda j: "/break.Svc/reset" in j.get("request", ""))
        self.assertEqual(line.get("gs"), "14", line)
        self.assertEqual(line.get("status"), 502, line)
        # ... and so do req:var("status") and req:status() there, not the head's 200.
        self.assertEqual((line.get("vs"), line.get("st")), ("502", "502"), line)

    def test_http1_client_gets_the_status_as_chunked_trailers(self):
        self.breaker.go.set()  # no client-side signal over HTTP/1.1: the upstream goes on
        req = (b"POST /break.Svc/close HTTP/1.1\r\nHost: grpc.test\r\n"
               b"Content-Type: application/grpc\r\nTE: trailers\r\nContent-Length: 5\r\n"
               b"\r\n" + grpc_frame(b""))
        c = H.Client(self.h2c_port)
        try:
            c.send(req)
            r = c.read_response()
        finally:
            c.close()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.framing, "chunked")
        self.assertTrue(r.complete, "the chunked body ended with its last chunk")
        self.assertEqual(r.body, grpc_frame(b"part"))
        self.assertIn(("grpc-status", "14"), [(k.lower(), v) for k, v in r.trailers], r.trailers)

    # ---- Lua sees trailers (req:resp_trailers(), req:trailers())

    def wait_access(self, pred):
        found = []

        def look():
            for l in self.proxy.access_lines():
                try:
                    j = json.loads(l)
                except ValueError:
                    continue
                if pred(j):
                    found.append(j)
                    return True
            return False
        H.wait_for(look, H.T(10), what="the access log line")
        return found[0]

    def test_log_phase_reads_the_upstreams_trailers(self):
        call = self.chan.unary_stream("/trl.%s/Count" % SVC)(b"2", timeout=H.T(10))
        self.assertEqual(list(call), [b"n0", b"n1"])
        line = self.wait_access(lambda j: "/trl.%s/Count" % SVC in j.get("request", ""))
        self.assertEqual(line.get("gs"), "0", line)
        self.assertEqual((line.get("vs"), line.get("st")), ("200", "200"), line)
        # A trailers-only answer (grpcio's errors) has its status in the head instead.
        with self.assertRaises(grpc.RpcError):
            self.chan.unary_unary("/trl.%s/Fail" % SVC)(b"lua", timeout=H.T(10))
        line = self.wait_access(lambda j: "/trl.%s/Fail" % SVC in j.get("request", ""))
        self.assertEqual((line.get("gs"), line.get("gm")), ("none", "none"), line)

    def test_response_body_sees_the_trailers_at_eof(self):
        self.assertEqual(self.chan.unary_unary("/trlb.%s/Unary" % SVC)(b"x", timeout=H.T(10)),
                         b"echo:x")
        line = self.wait_access(lambda j: "/trlb.%s/Unary" % SVC in j.get("request", ""))
        self.assertEqual(line.get("eof_gs"), "0", line)
        self.assertEqual(line.get("before_eof"), "none", line)

    def test_log_phase_reads_the_clients_trailers(self):
        r = h2_call_split(self.h2c_port, "/trl.%s/Unary" % SVC, b"t", [],
                          trailers=[("x-client-trailer", "tv")])
        self.assertEqual(r["trailers"].get("grpc-status"), "0", r)
        line = self.wait_access(lambda j: "/trl.%s/Unary" % SVC in j.get("request", ""))
        self.assertEqual(line.get("rt"), "tv", line)

    # ---- the proxy's own failures

    def test_upstream_down_is_unavailable(self):
        m = self.chan.unary_unary("/down.Svc/X")
        with self.assertRaises(grpc.RpcError) as cm:
            m(b"", timeout=H.T(10))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertIn("502", cm.exception.details())
        # Trailers-only: HTTP 200 and the status in the one HEADERS frame, no page, and no
        # field of the proxy's own there: grpcio showed content-length and date as the
        # call's trailing metadata.
        self.assertEqual(tuple(cm.exception.trailing_metadata()), ())
        r = h2_call_split(self.h2c_port, "/down.Svc/X", b"", [])
        self.assertEqual((r["status"], r["body"], r["trailers"]), ("200", b"", {}))
        self.assertEqual(r["head"], {"content-type": "application/grpc", "grpc-status": "14",
                                     "grpc-message": "proxy: 502 Bad Gateway"})

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


# Log-phase and response_body readers of trailers, their findings as access log fields.
PLUGINS = {
    "trl": """
local P = { name = "trl", priority = 10, schema = {} }
function P.log(req)
  local t = req:resp_trailers()
  req:log_field("gs", t["grpc-status"] or "none")
  req:log_field("gm", t["grpc-message"] or "none")
  req:log_field("rt", req:trailers()["x-client-trailer"] or "none")
  req:log_field("vs", tostring(req:var("status")))
  req:log_field("st", tostring(req:status()))
end
return P
""",
    "trlb": """
local P = { name = "trlb", priority = 10, schema = {} }
function P.response_body(req, chunk, eof)
  local gs = req:resp_trailers()["grpc-status"] or "none"
  if eof then req:log_field("eof_gs", gs) elseif chunk ~= "" then req:log_field("before_eof", gs) end
  return chunk
end
return P
""",
}


class BreakingUpstream:
    """A raw h2c server (python3-h2) that fails each call after its response head: the head
    and one gRPC message, then, once `go` is set (the test's client got the message, so the
    proxy had sent the head), it drops the connection (path .../close) or resets the stream
    (INTERNAL_ERROR, path .../reset); path .../hang sends nothing more (and, unlike grpcio,
    enforces no deadline of its own); .../hanglen likewise, after a head whose content-length
    the body never reaches."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.go = threading.Event()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def stop(self):
        self.stopping.set()
        self.go.set()
        for t in list(self.threads):
            t.join(H.T(10))
        self.sock.close()

    def _accept(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn):
        conn.settimeout(0.2)
        c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
        c.initiate_connection()
        paths = {}
        try:
            conn.sendall(c.data_to_send())
            while not self.stopping.is_set():
                try:
                    data = conn.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    return
                for ev in c.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        paths[ev.stream_id] = dict(ev.headers).get(b":path", b"")
                    elif isinstance(ev, h2.events.StreamEnded):
                        sid = ev.stream_id
                        head = [(":status", "200"), ("content-type", "application/grpc")]
                        if paths.get(sid, b"").endswith(b"/hanglen"):
                            # a length it never reaches
                            head.append(("content-length", str(len(grpc_frame(b"part")) + 100)))
                        c.send_headers(sid, head)
                        c.send_data(sid, grpc_frame(b"part"))
                        conn.sendall(c.data_to_send())
                        if paths.get(sid, b"").endswith((b"/hang", b"/hanglen")):
                            continue  # and nothing more: the proxy's deadline ends it
                        self.go.wait(H.T(10))
                        self.go.clear()
                        if paths.get(sid, b"").endswith(b"/reset"):
                            c.reset_stream(sid, error_code=2)
                        else:
                            return  # the connection drops
                out = c.data_to_send()
                if out:
                    conn.sendall(out)
        except OSError:
            pass
        finally:
            conn.close()


def h2_call_split(port, path, msg, extra, on_data=None, trailers=None):
    """One gRPC call over h2c: {status, head, trailers, body, reset (error code or None)};
    on_data() runs when the first DATA arrives; trailers: sent after the message."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=H.T(10))
    r = {"status": None, "head": {}, "trailers": {}, "body": b"", "reset": None}
    try:
        c = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        c.initiate_connection()
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", path),
                             (":authority", "grpc.test"), ("content-type", "application/grpc"),
                             ("te", "trailers")] + extra)
        c.send_data(sid, grpc_frame(msg), end_stream=not trailers)
        if trailers:
            c.send_headers(sid, trailers, end_stream=True)
        sock.sendall(c.data_to_send())
        deadline = time.monotonic() + H.T(10)
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    for k, v in ev.headers:
                        if k == ":status":
                            r["status"] = v
                        else:
                            r["head"][k] = v
                elif isinstance(ev, h2.events.TrailersReceived):
                    r["trailers"].update(ev.headers)
                elif isinstance(ev, h2.events.DataReceived):
                    r["body"] += ev.data
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    if on_data:
                        on_data()
                elif isinstance(ev, h2.events.StreamReset):
                    r["reset"] = ev.error_code
                    return r
                elif isinstance(ev, h2.events.StreamEnded):
                    return r
            out = c.data_to_send()
            if out:
                sock.sendall(out)
        raise AssertionError("no end of stream: %r" % (r,))
    finally:
        sock.close()


def grpc_frame(msg):
    return b"\0" + len(msg).to_bytes(4, "big") + msg


def h2_call(port, path, msg, extra):
    """One gRPC call over h2c with python3-h2: (status, head and trailer fields, body)."""
    r = h2_call_split(port, path, msg, extra)
    return r["status"], dict(r["head"], **r["trailers"]), r["body"]


if __name__ == "__main__":
    H.main()
