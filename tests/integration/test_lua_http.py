#!/usr/bin/env python3
"""proxy.http (docs/lua-api.md, "HTTP client: proxy.http") in the real engine, against a
Python HTTP/1.1 origin started here (plain, and TLS with certificates made by the openssl
CLI): GET and POST with bodies, a chunked response, a large body streamed through
body_reader, keep-alive reuse (and none when asked), HEAD, TLS with verification on and
off, an IPv6 literal, a closed port, a read timeout, a name that does not resolve, and header injection
refused before anything is sent. Then the bundled example scripts/auth-subrequest.lua end
to end: allowed, denied, cached verdicts, and the auth service down (503)."""

import http.server
import json
import os
import re
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reload"))
import reloadtest as RT  # noqa: E402
from reloadtest import H  # noqa: E402


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, timeout=H.T(60),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_certs(d):
    """A CA, a server certificate for http.test / 127.0.0.1 signed by it, and a
    self-signed one."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "30",
            "-subj", "/CN=Test CA", cwd=d)
    with open(os.path.join(d, "ext"), "w") as f:
        f.write("subjectAltName=DNS:http.test,IP:127.0.0.1\n")
    openssl("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=http.test",
            cwd=d)
    openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "srv.pem", "-days", "30", "-extfile", "ext", cwd=d)
    openssl("req", "-x509", *ec, "-keyout", "self.key", "-out", "self.pem", "-days", "30",
            "-subj", "/CN=http.test", "-addext", "subjectAltName=DNS:http.test,IP:127.0.0.1",
            cwd=d)


class Origin:
    """A threaded HTTP/1.1 keep-alive origin. Paths:
    /echo       JSON: method, path, headers, body, the client's port (the connection)
    /chunked    "hello world" in three chunks
    /big?n=N    N bytes (a repeating alphabet), Content-Length
    /slow       answers after 2 s
    /close      answers with Connection: close
    /auth       Authorization "Bearer good*" -> 200 X-User: <rest>; else 403. Counted.
    Every request is counted by path."""

    def __init__(self, tls=None, ipv6=False):
        origin = self
        self.lock = threading.Lock()
        self.hits = {}
        self.conns = set()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                with origin.lock:
                    origin.conns.add(self.connection)

            def finish(self):
                with origin.lock:
                    origin.conns.discard(self.connection)
                super().finish()

            def _count(self, path):
                with origin.lock:
                    origin.hits[path] = origin.hits.get(path, 0) + 1

            def _send(self, status, body, headers=None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self):
                path, _, query = self.path.partition("?")
                self._count(path)
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                if path == "/echo":
                    out = json.dumps({
                        "method": self.command, "path": self.path,
                        "headers": {k.lower(): ", ".join(self.headers.get_all(k))
                                    for k in set(self.headers.keys())},
                        "body": body.decode(), "port": self.client_address[1],
                    }).encode()
                    self._send(200, out, {"Content-Type": "application/json",
                                          "Set-Cookie": "a=1", "X-Dup": "x"})
                elif path == "/chunked":
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for part in (b"hello", b" ", b"world"):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                elif path == "/big":
                    size = int(query.split("=", 1)[1])
                    self.send_response(200)
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    if self.command != "HEAD":
                        block = (b"abcdefghijklmnopqrstuvwxyz" * 2521)[:65536]
                        left = size
                        while left > 0:
                            self.wfile.write(block[:min(left, len(block))])
                            left -= len(block)
                elif path == "/slow":
                    time.sleep(2)
                    self._send(200, b"late")
                elif path == "/close":
                    self.close_connection = True
                    self._send(200, b"bye", {"Connection": "close"})
                elif path == "/auth":
                    a = self.headers.get("Authorization") or ""
                    if a.startswith("Bearer good"):
                        self._send(200, b"", {"X-User": a[len("Bearer good"):] or "ann"})
                    else:
                        self._send(403, b"no")
                else:
                    self._send(404, b"not found")

            do_GET = do_POST = do_HEAD = do_PUT = _handle

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            address_family = socket.AF_INET6 if ipv6 else socket.AF_INET

            def handle_error(self, request, client_address):
                pass  # a client that stops reading (max_body, a test's end) is expected

        self.server = Server(("::1" if ipv6 else "127.0.0.1", 0), Handler)
        if tls:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, path):
        with self.lock:
            return self.hits.get(path, 0)

    def stop(self):
        """Stops listening and cuts the kept-alive connections too."""
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            for c in list(self.conns):
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


PLUGIN = r'''
local P = { name = "httpc", priority = 10, schema = { fields = {
  port = { type = "integer", description = "origin" },
  tls_port = { type = "integer", description = "TLS origin, CA-signed" },
  self_port = { type = "integer", description = "TLS origin, self-signed" },
  dead_port = { type = "integer", description = "nothing listens" },
  v6_port = { type = "integer", description = "origin on [::1]" } } } }

local json = proxy.json
local H = {}

local function base(conf) return "http://127.0.0.1:" .. conf.port end

local function answer(req, t) return req:respond(200, json.encode(t)) end

function H.get(req, conf)
  local res, err = proxy.http.request { url = base(conf) .. "/echo?x=1#frag",
    query = { y = "a b" }, headers = { ["X-Test"] = "one", ["X-Multi"] = { "1", "2" } } }
  if not res then return req:respond(500, err) end
  local e = json.decode(res.body)
  return answer(req, { status = res.status, ctype = res.headers["Content-Type"],
    ctype_name = res.header_names["content-type"], cookie_name = res.header_names["set-cookie"],
    cookie = res.headers.set_cookie, method = e.method, path = e.path,
    host = e.headers.host, ua = e.headers["user-agent"], xtest = e.headers["x-test"],
    multi = e.headers["x-multi"] })
end

function H.post(req, conf)
  local res, err = proxy.http.request { method = "POST", url = base(conf) .. "/echo",
    body = "payload=1", headers = { ["Content-Type"] = "text/plain" } }
  if not res then return req:respond(500, err) end
  local e = json.decode(res.body)
  return answer(req, { method = e.method, body = e.body, length = e.headers["content-length"] })
end

function H.chunked(req, conf)
  local res, err = proxy.http.request { url = base(conf) .. "/chunked" }
  if not res then return req:respond(500, err) end
  return answer(req, { status = res.status, body = res.body, te = res.headers["transfer-encoding"] })
end

function H.stream(req, conf)
  local n = tonumber(req:query("n"))
  local res, err = proxy.http.request_stream { url = base(conf) .. "/big?n=" .. n }
  if not res then return req:respond(500, err) end
  local bytes, chunks, ok, maxc = 0, 0, true, 0
  local expect = string.rep("abcdefghijklmnopqrstuvwxyz", 2521):sub(1, 65536)
  for chunk, rerr in res:body_reader() do
    if rerr then return req:respond(500, rerr) end
    -- the content at this offset
    local off = bytes % 65536
    local k = math.min(16, #chunk, 65536 - off)
    if chunk:sub(1, k) ~= expect:sub(off + 1, off + k) then ok = false end
    bytes = bytes + #chunk
    chunks = chunks + 1
    if #chunk > maxc then maxc = #chunk end
  end
  -- the connection went back to the pool: the next call reuses it
  local again = assert(proxy.http.request { url = base(conf) .. "/echo" })
  return answer(req, { bytes = bytes, chunks = chunks, ok = ok, max_chunk = maxc,
    mem_kb = collectgarbage("count") })
end

function H.big_buffered(req, conf)
  local res, err = proxy.http.request { url = base(conf) .. "/big?n=" .. req:query("n"),
    max_body = tonumber(req:query("max")) }
  if not res then return req:respond(200, "ERR " .. err) end
  return req:respond(200, "OK " .. #res.body)
end

function H.keepalive(req, conf)
  local ports = {}
  for i = 1, 3 do
    local res = assert(proxy.http.request { url = base(conf) .. "/echo" })
    ports[i] = json.decode(res.body).port
  end
  local fresh = {}
  for _, k in ipairs({ "a", "b" }) do
    local res = assert(proxy.http.request { url = base(conf) .. "/echo", keepalive = false })
    local e = json.decode(res.body)
    fresh[k] = e.port
    fresh.conn = e.headers.connection
  end
  -- Connection: close from the server: that connection is not pooled
  local c1 = assert(proxy.http.request { url = base(conf) .. "/close" })
  local after = json.decode(assert(proxy.http.request { url = base(conf) .. "/echo" }).body).port
  -- HEAD: no body, and the connection stays usable
  local h = assert(proxy.http.request { method = "HEAD", url = base(conf) .. "/big?n=1000" })
  local after_head = json.decode(assert(proxy.http.request { url = base(conf) .. "/echo" }).body).port
  return answer(req, { ports = ports, fresh = fresh, close_body = c1.body, after_close = after,
    head_len = h.headers["content-length"], head_body = h.body, after_head = after_head })
end

function H.tls(req, conf)
  local out = {}
  local function try(name, opts)
    local res, err = proxy.http.request(opts)
    out[name] = res and (res.status .. " " .. json.decode(res.body).method) or err
  end
  try("verified", { url = "https://127.0.0.1:" .. conf.tls_port .. "/echo" })
  try("by_name", { url = "https://127.0.0.1:" .. conf.tls_port .. "/echo", server_name = "http.test" })
  try("reused", { url = "https://127.0.0.1:" .. conf.tls_port .. "/echo" })
  try("self_verify", { url = "https://127.0.0.1:" .. conf.self_port .. "/echo" })
  try("self_noverify", { url = "https://127.0.0.1:" .. conf.self_port .. "/echo", ssl_verify = false })
  try("wrong_name", { url = "https://127.0.0.1:" .. conf.tls_port .. "/echo", server_name = "other.test" })
  return answer(req, out)
end

function H.ipv6(req, conf)
  local res, err = proxy.http.request { url = "http://[::1]:" .. conf.v6_port .. "/echo?v=6" }
  if not res then return req:respond(500, err) end
  local e = json.decode(res.body)
  return answer(req, { status = res.status, host = e.headers.host, path = e.path })
end

function H.errors(req, conf)
  local out = {}
  local _, e1 = proxy.http.request { url = "http://127.0.0.1:" .. conf.dead_port .. "/" }
  out.refused = e1
  local _, e2 = proxy.http.request { url = base(conf) .. "/slow", timeout = 0.3 }
  out.timeout = e2
  local _, e3 = proxy.http.request { url = "http://nonexistent.invalid/" }
  out.dns = e3
  local _, e4 = proxy.http.request { url = base(conf) .. "/echo",
    headers = { ["X-Evil"] = "a\r\nX-Injected: 1" } }
  out.inject_value = e4
  local _, e5 = proxy.http.request { url = base(conf) .. "/echo", headers = { ["X-A\r\nB"] = "1" } }
  out.inject_name = e5
  local _, e6 = proxy.http.request { url = base(conf) .. "/echo x" }
  out.bad_url = e6
  return answer(req, out)
end

function P.request(req, conf)
  local h = H[req:path():match("^/h/([%w_]+)")]
  if h then return h(req, conf) end
end
return P
'''


class HttpClientTest(RT.ReloadTestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = H.Workdir.new("lua-http")
        make_certs(cls.dir)
        p = lambda n: os.path.join(cls.dir, n)  # noqa: E731
        cls.origin = Origin()
        cls.addClassCleanup(cls.origin.stop)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(p("srv.pem"), p("srv.key"))
        cls.tls_origin = Origin(ctx)
        cls.addClassCleanup(cls.tls_origin.stop)
        ctx2 = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx2.load_cert_chain(p("self.pem"), p("self.key"))
        cls.self_origin = Origin(ctx2)
        cls.addClassCleanup(cls.self_origin.stop)
        cls.dead = H.dead_port()
        cls.v6_origin = Origin(ipv6=True)
        cls.addClassCleanup(cls.v6_origin.stop)
        conf = {"name": "httpc", "port": cls.origin.port, "tls_port": cls.tls_origin.port,
                "self_port": cls.self_origin.port, "dead_port": cls.dead,
                "v6_port": cls.v6_origin.port}
        cls.proxy = cls.start_reload_proxy(
            {"o": H.upstream(cls.origin.port)},
            [RT.route("/h/", upstream="o", plugins=[conf])],
            files={"plugins/httpc.lua": PLUGIN}, workers=1,
            lua={"ssl_trusted_certificate": p("ca.pem")})

    def json(self, path):
        r = self.get(path)
        self.assertEqual(r.status, 200, r.body)
        return json.loads(r.body)

    def test_get(self):
        j = self.json("/h/get")
        self.assertEqual(j["status"], 200)
        self.assertEqual(j["ctype"], "application/json")
        self.assertEqual(j["cookie"], "a=1")
        # The names as the origin wrote them (res.header_names).
        self.assertEqual((j["ctype_name"], j["cookie_name"]), ("Content-Type", "Set-Cookie"))
        self.assertEqual(j["method"], "GET")
        self.assertEqual(j["path"], "/echo?x=1&y=a%20b")  # the fragment is not sent
        self.assertEqual(j["host"], "127.0.0.1:%d" % self.origin.port)
        self.assertTrue(j["ua"].startswith("luaproxy/"), j["ua"])
        self.assertEqual(j["xtest"], "one")
        self.assertEqual(j["multi"], "1, 2")  # two fields, joined by http.server

    def test_post_with_body(self):
        j = self.json("/h/post")
        self.assertEqual(j, {"method": "POST", "body": "payload=1", "length": "9"})

    def test_chunked_response(self):
        j = self.json("/h/chunked")
        self.assertEqual(j, {"status": 200, "body": "hello world", "te": "chunked"})

    def test_large_body_streamed(self):
        n = 20 * 1024 * 1024 + 7
        j = self.json("/h/stream?n=%d" % n)
        self.assertEqual(j["bytes"], n)
        self.assertTrue(j["ok"])
        self.assertGreater(j["chunks"], 20)
        self.assertLessEqual(j["max_chunk"], 65536)  # one read at a time, never the whole
        self.assertLess(j["mem_kb"], 16 * 1024, "the streamed body was held in Lua memory")

    def test_buffered_body_limit(self):
        self.assertEqual(self.get("/h/big_buffered?n=300000").body, b"OK 300000")
        self.assertEqual(self.get("/h/big_buffered?n=300000&max=1000").body,
                         b"ERR invalid response: response body larger than max_body")
        self.assertEqual(self.get("/h/big_buffered?n=10").body, b"OK 10")

    def test_keepalive_reuse(self):
        j = self.json("/h/keepalive")
        self.assertEqual(len(set(j["ports"])), 1, j)  # one pooled connection, three calls
        self.assertNotEqual(j["fresh"]["a"], j["fresh"]["b"])
        self.assertNotIn(j["fresh"]["a"], j["ports"])
        self.assertEqual(j["fresh"]["conn"], "close")
        self.assertEqual(j["close_body"], "bye")
        self.assertEqual(j["head_len"], "1000")
        self.assertEqual(j["head_body"], "")
        self.assertEqual(j["after_head"], j["after_close"])  # HEAD kept its connection
        # Pooled across requests too (one worker): the next request's calls reuse.
        j2 = self.json("/h/keepalive")
        self.assertEqual(j2["ports"][0], j["after_head"])

    def test_tls_verify_on_and_off(self):
        j = self.json("/h/tls")
        self.assertEqual(j["verified"], "200 GET")
        self.assertEqual(j["by_name"], "200 GET")
        self.assertEqual(j["reused"], "200 GET")
        self.assertTrue(j["self_verify"].startswith("TLS handshake with 127.0.0.1:%d: "
                                                    % self.self_origin.port), j["self_verify"])
        self.assertEqual(j["self_noverify"], "200 GET")
        self.assertTrue(j["wrong_name"].startswith("TLS handshake with"), j["wrong_name"])

    def test_ipv6_literal(self):
        j = self.json("/h/ipv6")
        self.assertEqual(j, {"status": 200, "host": "[::1]:%d" % self.v6_origin.port,
                             "path": "/echo?v=6"})

    def test_errors(self):
        before = self.origin.count("/echo")
        j = self.json("/h/errors")
        self.assertEqual(j["refused"], "connect to 127.0.0.1:%d: connection refused" % self.dead)
        self.assertEqual(j["timeout"], "timeout reading from 127.0.0.1:%d" % self.origin.port)
        # The message says the 0.3 s timeout fired (the origin answers after 2 s); no timing.
        self.assertTrue(j["dns"].startswith("connect to nonexistent.invalid:80: "), j["dns"])
        self.assertIn("header injection", j["inject_value"])
        self.assertIn("header injection", j["inject_name"])
        self.assertIn("url:", j["bad_url"])
        self.assertEqual(self.origin.count("/echo"), before)  # nothing was sent
        self.assertAlive()


class AuthExampleTest(RT.ReloadTestCase):
    """scripts/auth-subrequest.lua with its ports moved to the test's."""

    @classmethod
    def setUpClass(cls):
        H.require_proxy()
        cls.web = cls.start_origin("web")
        cls.auth = Origin()
        cls.addClassCleanup(cls.auth.stop)
        with open(os.path.join(H.REPO, "scripts", "auth-subrequest.lua")) as f:
            text = f.read()
        text = text.replace("127.0.0.1:9100", "127.0.0.1:%d" % cls.auth.port)
        text = text.replace("127.0.0.1:9001", "127.0.0.1:%d" % cls.web.port)
        text = text.replace("127.0.0.1:8080", "127.0.0.1:0")
        text = text.replace('log = { access = "-" }', 'log = { access = "-", level = "info" }')
        cls.dir = H.Workdir.new("auth-example")
        cls.config = os.path.join(cls.dir, "auth.lua")
        with open(cls.config, "w") as f:
            f.write(text)
        p = H.Proxy({"listen": [{"address": "127.0.0.1:0"}]}, name="auth-example")
        p.config_path = cls.config
        p.write_config = lambda: None
        cls.addClassCleanup(p.stop)
        cls.proxy = p.start()

    def test_0_shipped_config_checks(self):
        orig = os.path.join(H.REPO, "scripts", "auth-subrequest.lua")
        r = subprocess.run([H.LUAPROXY, "-t", "-c", orig], capture_output=True, text=True,
                           timeout=H.T(30))
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_1_no_credentials_401_without_asking(self):
        before = self.auth.count("/auth")
        r = self.get("/x")
        self.assertEqual(r.status, 401)
        self.assertIn("Bearer", r.header("WWW-Authenticate"))
        self.assertEqual(self.auth.count("/auth"), before)

    def test_2_allowed_then_cached(self):
        before = self.auth.count("/auth")
        r = self.get("/headers", headers={"Authorization": "Bearer goodbob"})
        self.assertEqual(r.status, 200, r.body)
        text = r.body.decode().lower()
        self.assertIn("x-user", text)
        self.assertIn("bob", text)
        self.assertNotIn("bearer goodbob", text)  # Authorization was not passed on
        self.assertEqual(self.auth.count("/auth"), before + 1)
        # The next ones are answered from the dict, shared by the 2 workers: no call more.
        for _ in range(6):
            self.assertEqual(self.get("/", headers={"Authorization": "Bearer goodbob"}).status, 200)
        calls = self.auth.count("/auth") - before
        self.assertEqual(calls, 1)

    def test_3_denied_and_cached(self):
        before = self.auth.count("/auth")
        for _ in range(4):
            self.assertEqual(self.get("/", headers={"Authorization": "Bearer evil"}).status, 403)
        self.assertEqual(self.auth.count("/auth") - before, 1)

    def test_4_auth_service_down_is_503(self):
        self.auth.stop()
        r = self.get("/", headers={"Authorization": "Bearer goodnew"})
        self.assertEqual(r.status, 503)
        self.assertIn(b"authorization service unavailable", r.body)
        H.wait_for(lambda: "auth service: " in self.proxy.stderr(), H.T(5),
                   what="the auth failure logged")
        # A verdict cached before the outage still serves, in every worker (shared dict).
        for _ in range(4):
            self.assertEqual(self.get("/", headers={"Authorization": "Bearer goodbob"}).status,
                             200)
        self.assertAlive()


if __name__ == "__main__":
    H.main()
