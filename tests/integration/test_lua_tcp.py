#!/usr/bin/env python3
"""proxy.tcp() cosockets (docs/lua-api.md, "TCP sockets: proxy.tcp") in the real engine:
against a line server started here (plain and TLS, certificates made by the openssl CLI),
a closed port, a name that does not resolve, a peer that never answers (timeouts), a peer
closing mid-reply, keep-alive reuse through the per-worker pool, sockets a request forgets
(closed with it: the fd count stays flat), and sockets in a timer, an every-timer, a
spawned thread, init_worker, a response_body filter and the log phase."""

import os
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reload"))
import reloadtest as RT  # noqa: E402
from reloadtest import H  # noqa: E402


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, timeout=H.T(60),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_certs(d):
    """A CA and a server certificate for tcp.test / 127.0.0.1 signed by it."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "30", "-subj",
            "/CN=Test CA", cwd=d)
    with open(os.path.join(d, "ext"), "w") as f:
        f.write("subjectAltName=DNS:tcp.test,IP:127.0.0.1\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=tcp.test", cwd=d)
    openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "srv.pem", "-days", "30", "-extfile", "ext", cwd=d)


class LineServer:
    """A line protocol server on 127.0.0.1, port 0 (TLS when given a context). Commands:
    ECHO text -> text\\r\\n; CONN -> the connection's number; LEN n -> n bytes "x";
    HANG -> nothing, ever; HALF text -> text without its newline, then close;
    BYE -> bye\\n, then close; SINK n -> reads n bytes, then sunk\\n; RST -> closes with
    a reset; RESUMED -> 1 when the TLS session was resumed, else 0."""

    def __init__(self, tls=None):
        self.tls = tls
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = 0
        self.open = set()
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns += 1
                no = self.conns
                self.open.add(s)
            threading.Thread(target=self._serve, args=(s, no), daemon=True).start()

    def _serve(self, s, no):
        try:
            if self.tls:
                s.settimeout(H.T(10))
                s = self.tls.wrap_socket(s, server_side=True)
                s.settimeout(None)
            f = s.makefile("rb")
            while True:
                line = f.readline()
                if not line:
                    break
                cmd, _, arg = line.rstrip(b"\r\n").partition(b" ")
                if cmd == b"ECHO":
                    s.sendall(arg + b"\r\n")
                elif cmd == b"CONN":
                    s.sendall(b"%d\n" % no)
                elif cmd == b"LEN":
                    s.sendall(b"x" * int(arg))
                elif cmd == b"HANG":
                    pass
                elif cmd == b"HALF":
                    s.sendall(arg)
                    break
                elif cmd == b"BYE":
                    s.sendall(b"bye\n")
                    break
                elif cmd == b"SINK":
                    n = int(arg)
                    while n > 0:
                        chunk = f.read1(min(n, 65536))
                        if not chunk:
                            break
                        n -= len(chunk)
                    s.sendall(b"sunk\n")
                elif cmd == b"RESUMED":
                    s.sendall(b"%d\n" % int(bool(getattr(s, "session_reused", False))))
                elif cmd == b"RST":
                    # close with a reset: later sends of the client fail
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 struct.pack("ii", 1, 0))
                    break
        except (OSError, ValueError, ssl.SSLError):
            pass
        finally:
            with self.lock:
                self.open.discard(s)
            try:
                s.close()
            except OSError:
                pass

    def close_all(self):
        """Closes every connection the server holds (pooled ones on the proxy's side)."""
        with self.lock:
            for s in list(self.open):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def open_count(self):
        with self.lock:
            return len(self.open)

    def stop(self):
        self.stopping = True
        self.sock.close()
        with self.lock:
            for s in list(self.open):
                try:
                    s.close()
                except OSError:
                    pass


PLUGIN = r'''
local P = { name = "tcp", priority = 10, schema = { fields = {
  port = { type = "integer", description = "line server" },
  tls_port = { type = "integer", description = "TLS line server" },
  dead_port = { type = "integer", description = "nothing listens" },
  hole_port = { type = "integer", description = "connects never complete" } } } }

local init_result = "not run"
local timer_result = "not run"
local log_result = "not run"
local kept -- a socket kept past its request

function P.init_worker(conf)
  local s = proxy.tcp()
  local ok, err = s:connect("127.0.0.1", conf.port)
  if not ok then init_result = "connect: " .. err return end
  assert(s:send("ECHO init\n"))
  local line, rerr = s:receive()
  init_result = line or ("receive: " .. rerr)
  -- Not closed: the end of init_worker closes it. A keepalive there is a close.
end

local function line_cmd(port, cmd, opts)
  local s = proxy.tcp()
  s:settimeout(2000)
  local ok, err = s:connect("127.0.0.1", port, opts)
  if not ok then return nil, err end
  local n, serr = s:send(cmd .. "\n")
  if not n then return nil, serr end
  return s:receive("*l"), s
end

local H = {}

function H.echo(req, conf)
  local s = proxy.tcp()
  assert(s:connect("127.0.0.1", conf.port))
  -- a table of strings and numbers, as OpenResty's send
  local n = assert(s:send({ "ECHO ", "a", { "b", 1 }, "\n" }))
  local line = assert(s:receive())
  assert(s:send("LEN 5\n"))
  local five = assert(s:receive(5))
  assert(s:send("BYE\n"))
  local all = assert(s:receive("*a"))
  local again, aerr = s:receive()
  assert(s:close() == nil)
  return req:respond(200, table.concat({ n, line, five, all, tostring(again), aerr }, "|"))
end

function H.name(req, conf)
  local s = proxy.tcp()
  assert(s:connect("localhost", conf.port))
  assert(s:send("ECHO via-name\n"))
  return req:respond(200, (assert(s:receive())))
end

function H.refused(req, conf)
  local s = proxy.tcp()
  local ok, err = s:connect("127.0.0.1", conf.dead_port)
  local sent, serr = s:send("x")
  return req:respond(200, tostring(ok) .. "|" .. tostring(err) .. "|" .. tostring(sent)
    .. "|" .. tostring(serr))
end

function H.nxdomain(req, conf)
  local s = proxy.tcp()
  local ok, err = s:connect("nonexistent.invalid", 80)
  return req:respond(200, tostring(ok) .. "|" .. tostring(err))
end

function H.connect_timeout(req, conf)
  local s = proxy.tcp()
  s:settimeouts(200, 1000, 1000)
  local t0 = proxy.monotonic()
  local ok, err = s:connect("127.0.0.1", conf.hole_port)
  return req:respond(200, string.format("%s|%s|%.2f", tostring(ok), tostring(err),
    proxy.monotonic() - t0))
end

function H.read_timeout(req, conf)
  local s = proxy.tcp()
  s:settimeouts(1000, 1000, 200)
  assert(s:connect("127.0.0.1", conf.port))
  assert(s:send("HANG\n"))
  local t0 = proxy.monotonic()
  local data, err, partial = s:receive()
  local dt = proxy.monotonic() - t0
  -- a read timeout keeps the connection: it still works
  assert(s:send("ECHO after\n"))
  local after = s:receive()
  s:close()
  return req:respond(200, string.format("%s|%s|%s|%.2f|%s", tostring(data), tostring(err),
    tostring(partial), dt, tostring(after)))
end

function H.half(req, conf)
  local s = proxy.tcp()
  assert(s:connect("127.0.0.1", conf.port))
  assert(s:send("HALF partial-line\n"))
  local data, err, partial = s:receive()
  local d2, e2 = s:receive(1)
  return req:respond(200, table.concat({ tostring(data), tostring(err), tostring(partial),
    tostring(d2), tostring(e2) }, "|"))
end

function H.until_(req, conf)
  local s = proxy.tcp()
  assert(s:connect("127.0.0.1", conf.port))
  assert(s:send("ECHO one--two--three\n"))
  local it = s:receiveuntil("--")
  local a = assert(it())
  local chunks = {}
  local it2 = s:receiveuntil("--", { inclusive = true })
  local b = assert(it2())
  local rest = assert(s:receive())
  assert(s:send("ECHO abcdefgh--z\n"))
  local it3 = s:receiveuntil("--")
  while true do
    local d, e, p = it3(3)
    if not d then assert(not e, e) break end
    chunks[#chunks + 1] = d
  end
  local z = assert(s:receive())
  s:close()
  return req:respond(200, table.concat({ a, b, rest, table.concat(chunks, ","), z }, "|"))
end

function H.keepalive(req, conf)
  local line, s = line_cmd(conf.port, "CONN", { pool = "ka" })
  assert(line, s)
  local reused = s:getreusedtimes()
  assert(s:setkeepalive(10000, 4))
  local after, aerr = s:send("x")
  return req:respond(200, line .. "|" .. reused .. "|" .. tostring(after) .. "|" .. aerr)
end

function H.forget(req, conf)
  local s = proxy.tcp()
  assert(s:connect("127.0.0.1", conf.port))
  assert(s:send("ECHO hi\n"))
  assert(s:receive())
  kept = s -- held by the module: the request's end still closes it
  return req:respond(200, "ok")
end

function H.kept(req, conf)
  if not kept then return req:respond(200, "none") end
  local ok, err = kept:send("ECHO again\n")
  return req:respond(200, tostring(ok) .. "|" .. tostring(err))
end

function H.other_task(req, conf)
  -- a socket of this request used from a spawned thread: refused, not touched
  local s = proxy.tcp()
  assert(s:connect("127.0.0.1", conf.port))
  local res
  proxy.spawn(function() local ok, err = s:send("ECHO x\n") res = tostring(ok) .. "|" .. err end)
  while not res do proxy.sleep(0.01) end
  assert(s:send("ECHO mine\n"))
  return req:respond(200, res .. "|" .. assert(s:receive()))
end

function H.big(req, conf)
  local s = proxy.tcp()
  assert(s:connect("127.0.0.1", conf.port))
  local n = 3 * 1024 * 1024
  assert(s:send("SINK " .. n .. "\n"))
  assert(s:send(string.rep("y", n))) -- past the send high-water mark: it waits
  local sunk = assert(s:receive())
  assert(s:send("LEN " .. n .. "\n"))
  local got = assert(s:receive(n))
  assert(s:send("LEN 100000\n"))
  assert(s:send("BYE\n"))
  local all = assert(s:receive("*a"))
  return req:respond(200, sunk .. "|" .. #got .. "|" .. #all)
end

function H.longline(req, conf)
  local s = proxy.tcp()
  assert(s:connect("127.0.0.1", conf.port))
  assert(s:send("LEN " .. (17 * 1024 * 1024) .. "\n"))
  local data, err, partial = s:receive()
  return req:respond(200, tostring(data) .. "|" .. tostring(err) .. "|" .. tostring(#partial >= 16 * 1024 * 1024))
end

function H.reset(req, conf)
  local s = proxy.tcp()
  assert(s:connect("127.0.0.1", conf.port))
  assert(s:send("RST\n"))
  local data, err = s:receive()
  local errs = { tostring(data), tostring(err) }
  -- a send to the reset peer, on a second connection told to reset
  local s2 = proxy.tcp()
  assert(s2:connect("127.0.0.1", conf.port))
  assert(s2:send("RST\n"))
  proxy.sleep(0.1)
  local ok, serr
  for _ = 1, 50 do
    ok, serr = s2:send(string.rep("z", 65536))
    if not ok then break end
    proxy.sleep(0.01)
  end
  errs[#errs + 1] = tostring(ok)
  errs[#errs + 1] = tostring(serr)
  return req:respond(200, table.concat(errs, "|"))
end

function H.hang(req, conf)
  local s = proxy.tcp()
  s:settimeout(20000)
  assert(s:connect("127.0.0.1", conf.port))
  assert(s:send("HANG\n"))
  s:receive() -- the client goes away meanwhile
  return req:respond(200, "unreachable")
end

function H.drop(req, conf)
  -- a socket Lua no longer references is collected, and its connection closed
  do
    local s = proxy.tcp()
    assert(s:connect("127.0.0.1", conf.port))
    assert(s:send("ECHO x\n"))
    assert(s:receive())
  end
  collectgarbage()
  collectgarbage()
  return req:respond(200, "dropped")
end

function H.spawned(req, conf)
  local res
  assert(proxy.spawn(function()
    local line, s = line_cmd(conf.port, "ECHO from-thread")
    res = line or ("error: " .. tostring(s))
  end))
  while not res do proxy.sleep(0.01) end
  return req:respond(200, res)
end

function H.tls(req, conf)
  local s = proxy.tcp()
  assert(s:connect("127.0.0.1", conf.tls_port))
  local sess, err = s:sslhandshake(nil, "tcp.test", true)
  if not sess then return req:respond(200, "handshake: " .. tostring(err)) end
  assert(s:send("ECHO secret\n"))
  local line = assert(s:receive())
  assert(s:setkeepalive())
  -- a second socket takes the pooled TLS connection
  local s2 = proxy.tcp()
  assert(s2:connect("127.0.0.1", conf.tls_port))
  local reused = s2:getreusedtimes()
  assert(s2:sslhandshake(false, "tcp.test", true))
  assert(s2:send("ECHO again\n"))
  local line2 = assert(s2:receive())
  s2:close()
  return req:respond(200, table.concat({ line, reused, line2, type(sess) }, "|"))
end

function H.resume(req, conf)
  local out = {}
  for i = 1, 2 do
    local s = proxy.tcp()
    assert(s:connect("127.0.0.1", conf.tls_port, { pool = "resume" }))
    assert(s:sslhandshake(false, "tcp.test", true))
    assert(s:send("RESUMED\n"))
    out[i] = assert(s:receive())
    s:close() -- not pooled: the next one is a new connection, which resumes the session
  end
  return req:respond(200, table.concat(out, "|"))
end

function H.tls_bad_name(req, conf)
  local s = proxy.tcp()
  assert(s:connect("127.0.0.1", conf.tls_port))
  local ok, err = s:sslhandshake(nil, "wrong.test", true)
  local s2 = proxy.tcp()
  assert(s2:connect("127.0.0.1", conf.tls_port))
  local ok2, err2 = s2:sslhandshake(false, "wrong.test", false) -- not verified: accepted
  if ok2 then
    assert(s2:send("ECHO unverified\n"))
    ok2 = s2:receive()
  end
  return req:respond(200, tostring(ok) .. "|" .. tostring(err) .. "|" .. tostring(ok2)
    .. "|" .. tostring(err2))
end

function H.misuse(req, conf)
  local s = proxy.tcp()
  local ok, err = pcall(s.connect, s, 42, 80)
  return req:respond(200, tostring(ok) .. "|" .. tostring(err))
end

function H.timer(req, conf)
  timer_result = "pending"
  proxy.timer.at(0, function()
    local line, s = line_cmd(conf.port, "ECHO from-timer")
    timer_result = line or ("error: " .. tostring(s))
  end)
  return req:respond(200, "started")
end

local every_result = "not run"
function H.every(req, conf)
  every_result = "pending"
  local runs, first = 0, nil
  local h
  h = proxy.timer.every(0.01, function()
    runs = runs + 1
    if runs == 1 then
      first = proxy.tcp()
      local ok, err = first:connect("127.0.0.1", conf.port)
      if not ok then every_result = "connect: " .. err end
    elseif runs == 2 then
      -- the first run returned: its socket was closed with it
      local ok, err = first:send("ECHO x\n")
      every_result = tostring(ok) .. "|" .. tostring(err)
      h:cancel()
    end
  end)
  while every_result == "pending" do proxy.sleep(0.01) end
  return req:respond(200, every_result)
end

function H.results(req, conf)
  return req:respond(200, init_result .. "|" .. timer_result .. "|" .. log_result)
end

function H.logphase(req, conf)
  req._tcp_log = true
  return req:respond(200, "ok")
end

function P.request(req, conf)
  local h = H[req:path():match("^/t/([%w_]+)")]
  if h then return h(req, conf) end
end

-- A response_body filter may wait too: the first chunk becomes a line from the server.
function P.response_body(req, chunk, eof, conf)
  if req:path() ~= "/t/filter" then return chunk end
  if req.ctx.filtered or chunk == "" then return "" end
  req.ctx.filtered = true
  local line, s = line_cmd(conf.port, "ECHO filtered")
  if s and line then s:setkeepalive() end
  return line or ("error: " .. tostring(s))
end

function P.log(req, conf)
  if req:path() == "/t/logphase" then
    local line, s = line_cmd(conf.port, "ECHO from-log")
    log_result = line or ("error: " .. tostring(s))
    if s and line then s:setkeepalive() end
  end
end

return P
'''


def black_hole():
    """A listener whose accept queue is full, so that connects to it never complete (the
    kernel drops their SYNs): for connect timeouts without relying on outside networks."""
    lsn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(0)
    held = [lsn]

    def full():
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.settimeout(0.2)
        try:
            c.connect(lsn.getsockname())
        except socket.timeout:
            c.close()
            return True
        held.append(c)
        return False

    H.wait_for(full, H.T(5), interval=0, what="the black-hole listener to fill")
    return lsn.getsockname()[1], held


class LuaTcpTest(RT.ReloadTestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="lp-tcp-")
        make_certs(cls.tmp)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(cls.tmp, "srv.pem"), os.path.join(cls.tmp, "srv.key"))
        with open(os.path.join(cls.tmp, "ca.pem")) as f:
            ca_pem = f.read()
        cls.srv = LineServer()
        cls.addClassCleanup(cls.srv.stop)
        cls.tls_srv = LineServer(tls=ctx)
        cls.addClassCleanup(cls.tls_srv.stop)
        cls.origin = cls.start_origin("o")
        ups = {"o": H.upstream(cls.origin.address())}
        conf = {"name": "tcp", "port": cls.srv.port, "tls_port": cls.tls_srv.port,
                "dead_port": H.dead_port()}
        conf["hole_port"], cls.hole = black_hole()
        for sock in cls.hole:
            cls.addClassCleanup(sock.close)
        cls.proxy = cls.start_reload_proxy(
            ups, [RT.route("/t/", upstream="o", plugins=[conf])],
            files={"plugins/tcp.lua": PLUGIN, "ca.pem": ca_pem}, workers=1,
            lua={"ssl_trusted_certificate": "ca.pem"})  # relative to the config file

    def body(self, path):
        r = self.get(path)
        self.assertEqual(r.status, 200, (r.body, self.proxy.stderr()[-3000:]))
        return r.body.decode()

    def test_echo_send_receive_close(self):
        self.assertEqual(self.body("/t/echo"), "9|ab1|xxxxx|bye\n|nil|closed")

    def test_name_resolved_off_the_loop(self):
        self.assertEqual(self.body("/t/name"), "via-name")

    def test_refused(self):
        self.assertEqual(self.body("/t/refused"), "nil|connection refused|nil|closed")

    def test_dns_failure(self):
        self.assertEqual(self.body("/t/nxdomain"), "nil|host not found: nonexistent.invalid")

    def test_connect_timeout(self):
        ok, err, dt = self.body("/t/connect_timeout").split("|")
        self.assertEqual((ok, err), ("nil", "timeout"))
        self.assertGreaterEqual(float(dt), 0.15)
        self.assertLess(float(dt), 1.5)

    def test_read_timeout_keeps_the_connection(self):
        data, err, partial, dt, after = self.body("/t/read_timeout").split("|")
        self.assertEqual((data, err, partial), ("nil", "timeout", ""))
        self.assertGreaterEqual(float(dt), 0.15)
        self.assertLess(float(dt), 1.5)
        self.assertEqual(after, "after")

    def test_peer_closing_mid_reply(self):
        self.assertEqual(self.body("/t/half"), "nil|closed|partial-line|nil|closed")

    def test_receiveuntil(self):
        self.assertEqual(self.body("/t/until_"), "one|two--|three|abc,def,gh|z")

    def test_keepalive_reuse(self):
        first = self.body("/t/keepalive").split("|")
        second = self.body("/t/keepalive").split("|")
        self.assertEqual(first[2:], ["nil", "closed"])
        self.assertEqual(first[0], second[0], "the second request reused the connection")
        self.assertGreater(int(second[1]), 0)

    def test_forgotten_sockets_are_closed(self):
        pid = self.proxy.pid
        self.body("/t/forget")
        base = H.fd_count(pid)
        for _ in range(60):
            self.body("/t/forget")
        H.wait_for(lambda: H.fd_count(pid) <= base + 2, H.T(5),
                   what="the fd count to come back (%d)" % base)
        self.assertEqual(self.body("/t/kept"), "nil|closed")

    def test_socket_of_another_task(self):
        res = self.body("/t/other_task").split("|")
        self.assertEqual(res[0], "nil")
        self.assertTrue(res[1].startswith("bad request"), res)
        self.assertEqual(res[2], "mine")

    def test_tls(self):
        line, reused, line2, sess = self.body("/t/tls").split("|")
        self.assertEqual((line, line2), ("secret", "again"))
        self.assertGreater(int(reused), 0)
        self.assertIn(sess, ("table", "boolean"))

    def test_tls_session_resumed_by_a_new_connection(self):
        self.assertEqual(self.body("/t/resume"), "0|1")

    def test_tls_verify_failure(self):
        ok, err, ok2, err2 = self.body("/t/tls_bad_name").split("|")
        self.assertEqual(ok, "nil")
        self.assertIn("handshake failed", err)
        self.assertEqual((ok2, err2), ("unverified", "nil"))

    def test_misuse_raises_naming_the_plugin(self):
        ok, err = self.body("/t/misuse").split("|", 1)
        self.assertEqual(ok, "false")
        self.assertIn("expected a host string", err)
        self.assertIn("tcp.lua:", err)

    def test_timer_init_worker_and_log_phase(self):
        self.assertEqual(self.body("/t/timer"), "started")
        self.body("/t/logphase")
        H.wait_for(lambda: self.body("/t/results") == "init|from-timer|from-log", H.T(5),
                   what="results: " + self.body("/t/results"))

    def test_large_transfers(self):
        n = 3 * 1024 * 1024
        self.assertEqual(self.body("/t/big"), "sunk|%d|%d" % (n, 100000 + 4))

    def test_line_length_is_bounded(self):
        self.assertEqual(self.body("/t/longline"), "nil|line too long|true")

    def test_reset_peer(self):
        data, err, ok, serr = self.body("/t/reset").split("|")
        self.assertEqual(data, "nil")
        self.assertIn(err, ("closed", "connection reset by peer"))
        self.assertEqual(ok, "nil")
        self.assertIn(serr, ("broken pipe", "connection reset by peer"))

    def test_abandoned_request_closes_its_socket(self):
        # By the server's accept counter and the plugin's own socket, not the open count: a
        # connection of an earlier test closing meanwhile would hide the new one.
        with self.srv.lock:
            accepted, before = self.srv.conns, set(self.srv.open)
        c = H.Client(self.proxy.port)
        c.send(H.build_request("GET", "/t/hang", headers={"Host": "a.test"}))
        H.wait_for(lambda: self.srv.conns > accepted, H.T(10), what="the plugin to connect")

        def still_open():
            with self.srv.lock:
                return self.srv.open - before
        theirs = still_open()
        c.abort()
        H.wait_for(lambda: not (still_open() & theirs), H.T(10),
                   what="the abandoned request's socket to close")
        self.assertEqual(self.body("/t/name"), "via-name")

    def test_collected_socket_is_closed(self):
        base = self.srv.open_count()
        self.assertEqual(self.body("/t/drop"), "dropped")
        H.wait_for(lambda: self.srv.open_count() <= base, H.T(5),
                   what="the collected socket's connection to close")

    def test_pooled_connection_closed_by_peer(self):
        self.body("/t/keepalive")
        first = self.body("/t/keepalive").split("|")
        self.assertGreater(int(first[1]), 0)
        self.srv.close_all()
        # the idle pooled connection notices at once (no CLOSE_WAIT left behind) ...
        H.wait_for(lambda: not [st for lp, rp, st in RT.tcp_states(self.srv.port)
                                if rp == self.srv.port and st == "08"], H.T(5),
                   what="the pooled connection to be closed after its peer closed")
        # ... and the next request connects afresh
        again = self.body("/t/keepalive").split("|")
        self.assertEqual(again[1], "0")

    def test_every_timer_run_closes_its_sockets(self):
        self.assertEqual(self.body("/t/every"), "nil|closed")

    def test_response_body_filter(self):
        # the origin's answer (whatever its status) is rewritten by the filter
        self.assertEqual(self.get("/t/filter").body, b"filtered")

    def test_spawned_thread(self):
        self.assertEqual(self.body("/t/spawned"), "from-thread")

    def test_zz_no_sanitizer_errors(self):
        self.assertAlive()
        self.assertEqual(H.sanitizer_errors(self.proxy.stderr()), [])


if __name__ == "__main__":
    H.main()
