#!/usr/bin/env python3
"""Request lifetimes (engine/request.h): a request is never freed under its caller, and a Lua
handle dies with its request.

- More requests than the worker's free list holds (256), all parked in Lua at once and then
  ending every way there is: a local answer, a Lua error, proxied, retried on another
  target, and abandoned by the client while parked.
- A handle kept past its request (an upvalue) raises instead of reading another client's
  request.
- Each phase works alone (a plugin with only that phase), response_body included.
- A body filter that changes the length: HTTP/1.1 gets chunks, HTTP/1.0 a close-delimited
  body without Content-Length, HEAD no Content-Length; a filter that waits (per chunk and
  at the end, on proxied and local bodies) completes the body, and a client that leaves
  meanwhile ends the request cleanly.
- req:body() that stops gathering in the middle of a read: nothing of the body is lost, and
  a request answered there does not crash the parser that was feeding it.

Run under ASan (./dev test does) these fail on a use-after-free, not only on a crash."""

import asyncio
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua"))
import luatest as L  # noqa: E402
from luatest import H  # noqa: E402

R = H.LuaRaw

PLUGINS = {
    # Parks every request (proxy.sleep), then ends it the way the path says.
    "plugins/ender.lua": r'''
local P = { name = "ender", priority = 500, schema = { fields = {} } }
function P.request(req)
  local path = req:path()
  proxy.sleep(path:find("abort", 1, true) and 0.4 or 0.2)
  if path:find("respond", 1, true) then return req:respond(200, "answered") end
  if path:find("error", 1, true) then error("ender: failing on purpose") end
end
return P
''',
    # Keeps the first request's handle and reads it from the next request.
    "plugins/keeper.lua": r'''
local saved
local P = { name = "keeper", priority = 500, schema = { fields = {} } }
function P.request(req)
  if req:header("x-save") then
    saved = req
    return req:respond(200, "saved")
  end
  local ok, err = pcall(function() return saved:header("x-secret") end)
  local ok2, err2 = pcall(function() return saved:phase() end)
  return req:respond(200, (ok and "LEAK:" .. tostring(err) or "raised: " .. tostring(err))
    .. "\n" .. (ok2 and "LEAK" or "raised2"))
end
return P
''',
    "plugins/only_request.lua": r'''
return { name = "only_request", priority = 10, schema = { fields = {} },
  request = function(req) req:set_header("X-Only", "request") end }
''',
    "plugins/only_upstream.lua": r'''
return { name = "only_upstream", priority = 10, schema = { fields = {} },
  upstream = function(req) req:set_header("X-Only", "upstream") end }
''',
    "plugins/only_response.lua": r'''
return { name = "only_response", priority = 10, schema = { fields = {} },
  response = function(req) req:set_resp_header("X-Only", "response") end }
''',
    "plugins/only_body.lua": r'''
return { name = "only_body", priority = 10, schema = { fields = {} },
  response_body = function(req, chunk, eof)
    chunk = chunk:upper()
    if eof then chunk = chunk .. "<appended by the filter>" end
    return chunk
  end }
''',
    "plugins/only_log.lua": r'''
return { name = "only_log", priority = 10, schema = { fields = {} },
  log = function(req) proxy.log.warn("only_log saw status " .. tostring(req:status())) end }
''',
    "plugins/sleepy_body.lua": r'''
return { name = "sleepy_body", priority = 10, schema = { fields = {} },
  request = function(req)
    if req:query("local") then return req:respond(200, string.rep("l", 1000)) end
  end,
  response_body = function(req, chunk, eof)
    proxy.sleep(0.001)
    if eof then proxy.sleep(0.01); return chunk .. "<end>" end
    return chunk:upper()
  end }
''',
    # req:body(limit): answers 413 itself (?answer) or lets the request go upstream.
    "plugins/gather.lua": r'''
return { name = "gather", priority = 10, schema = { fields = {} },
  request = function(req)
    local body, err = req:body(100)
    req:set_header("X-Gathered", body and tostring(#body) or tostring(err))
    if not body and req:query("answer") then return req:respond(413, "too large for me") end
  end }
''',
    # Waits for the body in the request phase, then notes whether it ever went on; the log
    # phase says it ran as the log phase.
    "plugins/bodywait.lua": r'''
return { name = "bodywait", priority = 10, schema = { fields = {} },
  request = function(req)
    local body = req:body(1000000)
    proxy.log.warn("BODYWAIT resumed in phase " .. req:phase() .. " with " .. tostring(body and #body))
  end,
  log = function(req)
    proxy.log.warn("BODYWAIT log phase ran as " .. req:phase() .. " status " .. tostring(req:status()))
  end }
''',
    # Uses the handle kept from request A inside request B's phase.
    "plugins/crosser.lua": r'''
local saved
return { name = "crosser", priority = 10, schema = { fields = {} },
  request = function(req)
    if req:header("x-first") then saved = req; proxy.log.warn("CROSSER saved A"); return end
    local ok, err = pcall(saved.respond, saved, 200, "from B")
    return req:respond(200, ok and "CROSSED" or tostring(err))
  end }
''',
    "plugins/badfilter.lua": r'''
return { name = "badfilter", priority = 10, schema = { fields = {} },
  response_body = function(req, chunk, eof) error("bad filter") end }
''',
    # A plugin in a folder of its own, with a helper beside it (docs/plugins.md).
    "plugins/multi/init.lua": r'''
local helper = require "multi.helper"
return { name = "multi", priority = 10, schema = { fields = {} },
  response = function(req) req:set_resp_header("X-Multi", helper.word()) end }
''',
    "plugins/multi/helper.lua": r'''
return { word = function() return "from-the-helper" end }
''',
    "plugins/huge_body.lua": r'''
return { name = "huge_body", priority = 10, schema = { fields = {} },
  request = function(req)
    local ok, err = pcall(req.body, req, math.huge)
    return req:respond(200, ok and "accepted" or tostring(err))
  end }
''',
}


def route(prefix, upstream="o", plugins=None, **kw):
    r = {"match": {"prefix": prefix}, "upstream": upstream, "strip_prefix": True}
    if plugins:
        r["plugins"] = [{"name": p} for p in plugins]
    r.update(kw)
    return r


class LifetimeTest(L.LuaTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("o")
        dead = H.dead_port()  # nothing listens there: the retry test's first target
        ups = {
            "o": H.upstream(cls.origin.address()),
            # round robin from the dead target: every first try fails to connect
            "retry": H.upstream("127.0.0.1:%d" % dead, cls.origin.address(), retries=2,
                                 retry_budget=10),
        }
        routes = [
            route("/end/retry", upstream="retry", plugins=["ender"]),
            route("/end/", plugins=["ender"]),
            route("/keep", plugins=["keeper"]),
            route("/alone/request", plugins=["only_request"]),
            route("/alone/upstream", plugins=["only_upstream"]),
            route("/alone/response", plugins=["only_response"]),
            route("/alone/body", plugins=["only_body"]),
            route("/alone/log", plugins=["only_log"]),
            route("/sleepy-body", plugins=["sleepy_body"]),
            route("/gather", plugins=["gather"]),
            route("/huge", plugins=["huge_body"]),
            route("/bodywait", plugins=["bodywait"]),
            route("/badfilter", plugins=["badfilter"]),
            route("/multi", plugins=["multi"]),
            route("/cross", plugins=["crosser"]),
        ]
        cls.proxy = cls.start_lua_proxy(ups, routes, files=PLUGINS, workers=1,
                                        timeouts={"connect": 2})

    # ---- many parked requests ending every way ----

    def test_parked_requests_end_every_way(self):
        kinds = ["respond", "error", "upstream", "retry", "abort"]
        n = 1200  # > 256 recycled requests: ended ones are really freed

        async def one(i):
            kind = kinds[i % len(kinds)]
            path = "/end/retry/fixed?size=7" if kind == "retry" else "/end/%s/%d" % (kind, i)
            if kind == "upstream":
                path = "/end/fixed?size=%d" % (10 + i % 50)
            reader, writer = await asyncio.open_connection("127.0.0.1", self.proxy.port)
            writer.write(("GET %s HTTP/1.1\r\nHost: a.test\r\n\r\n" % path).encode())
            await writer.drain()
            if kind == "abort":
                await asyncio.sleep(0.05)
                writer.transport.abort()  # RST while the request is parked in Lua
                return kind, None, None
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), H.T(30))
            finally:
                pass
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await asyncio.wait_for(reader.readexactly(length), H.T(30))
            writer.close()
            return kind, status, body

        async def run():
            return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)

        results = asyncio.run(run())
        errors = [r for r in results if isinstance(r, BaseException)]
        self.assertEqual(errors, [], "clients failed: %r" % errors[:5])
        want = {"respond": 200, "error": 500, "upstream": 200, "retry": 200}
        for kind, status, body in results:
            if kind == "abort":
                continue
            self.assertEqual(status, want[kind], (kind, status, body[:200]))
            if kind == "respond":
                self.assertEqual(body, b"answered")
        self.assertTrue(self.proxy.alive(), self.proxy.stderr()[-3000:])
        # The worker still serves, and every aborted request was logged as such (499).
        r = self.get("/end/respond/after")
        self.assertEqual(r.status, 200)
        self.assertNotIn("AddressSanitizer", self.proxy.stderr())

    # ---- a handle kept past its request ----

    def test_kept_handle_raises_after_its_request(self):
        with H.Client(self.proxy.port) as c:
            r = c.request("GET", "/keep", headers={"X-Save": "1", "X-Secret": "client-a"})
            self.assertEqual(r.status, 200)
        for _ in range(3):  # recycled request objects: the next one reuses the memory
            r = self.get("/keep", headers={"X-Secret": "client-b"})
            self.assertEqual(r.status, 200)
            text = r.body.decode()
            self.assertNotIn("LEAK", text)
            self.assertNotIn("client-", text)
            self.assertIn("request handle used after the request ended", text)
            self.assertIn("raised2", text)

    # ---- every phase alone ----

    def test_each_phase_alone(self):
        r = self.get("/alone/request/headers")
        hv = L.hvalues(L.origin_headers(r), "x-only")
        self.assertEqual(hv, ["request"])
        r = self.get("/alone/upstream/headers")
        self.assertEqual(L.hvalues(L.origin_headers(r), "x-only"), ["upstream"])
        r = self.get("/alone/response/")
        self.assertEqual(r.header("X-Only"), "response")
        r = self.get("/alone/log/")
        self.assertEqual(r.status, 200)
        self.wait_log("only_log saw status 200")

    def test_body_filter_alone(self):
        with H.Client(self.proxy.port) as c:
            r = c.request("GET", "/alone/body/fixed?size=10")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"X" * 10 + b"<appended by the filter>")
            self.assertEqual(r.framing, "chunked")
            self.assertIsNone(r.header("Content-Length"))
            self.assertTrue(c.is_open())  # keep-alive holds

    def test_body_filter_http10_closes_without_length(self):
        with H.Client(self.proxy.port) as c:
            r = c.request("GET", "/alone/body/fixed?size=10", version="HTTP/1.0")
            self.assertEqual(r.status, 200)
            self.assertIsNone(r.header("Content-Length"))
            self.assertIsNone(r.header("Transfer-Encoding"))
            self.assertEqual(r.framing, "close")
            self.assertEqual(r.body, b"X" * 10 + b"<appended by the filter>")
            closed, _ = c.wait_closed()
            self.assertTrue(closed)

    def test_body_filter_head_has_no_length(self):
        with H.Client(self.proxy.port) as c:
            r = c.request("HEAD", "/alone/body/fixed?size=10")
            self.assertEqual(r.status, 200)
            self.assertIsNone(r.header("Content-Length"))
            self.assertEqual(r.body, b"")
            self.assertTrue(c.is_open())

    def test_body_filter_that_waits(self):
        # Each chunk waits in the filter; the upstream read pauses meanwhile; the end waits
        # too and appends. Upstream bodies small and large, and a local answer's body.
        for size in (10, 300000):
            r = H.get(self.proxy.port, "/sleepy-body/fixed?size=%d" % size)
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"X" * size + b"<end>")
        r = H.get(self.proxy.port, "/sleepy-body/x?local=1")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"L" * 1000 + b"<end>")
        # Keep-alive goes on after a waiting filter.
        with H.Client(self.proxy.port) as c:
            for _ in range(3):
                r = c.request("GET", "/sleepy-body/fixed?size=100")
                self.assertEqual(r.body, b"X" * 100 + b"<end>")

    def test_client_gone_while_a_body_filter_waits(self):
        for _ in range(20):
            with H.Client(self.proxy.port) as c:
                c.send(H.build_request("GET", "/sleepy-body/fixed?size=1000000"))
                c.sock.recv(1000)
        r = H.get(self.proxy.port, "/sleepy-body/fixed?size=10")
        self.assertEqual(r.body, b"X" * 10 + b"<end>")
        self.assertTrue(self.proxy.alive())

    # ---- req:body() stopping mid-read ----

    def test_body_gathering_stops_mid_read_and_loses_nothing(self):
        body = bytes((i * 7) % 251 for i in range(200000))
        with H.Client(self.proxy.port) as c:
            r = c.request("POST", "/gather/echo", body=body)
            self.assertEqual(r.status, 200)
            self.assertEqual(len(r.body), len(body))
            self.assertEqual(r.body, body)

    def test_body_gathering_answered_mid_read(self):
        body = b"y" * 300000
        for _ in range(5):
            with H.Client(self.proxy.port) as c:
                r = c.request("POST", "/gather/echo?answer=1", body=body)
                self.assertEqual(r.status, 413)
                self.assertEqual(r.body, b"too large for me")
        self.assertTrue(self.proxy.alive())

    def test_a_phase_parked_on_the_body_is_abandoned_not_resumed(self):
        # The client fails its chunked body while the request phase waits for it: the 400
        # goes out, and the log phase runs as the log phase, never resuming the request
        # phase's coroutine in its place.
        with H.Client(self.proxy.port) as c:
            c.send(b"POST /bodywait/echo HTTP/1.1\r\nHost: a.test\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
            r = c.read_response()
            self.assertEqual(r.status, 400)
        self.wait_log("BODYWAIT log phase ran as log status 400")
        self.assertNotIn("BODYWAIT resumed", self.proxy.stderr())

    def test_body_limit_hit_by_the_last_span(self):
        # The span that passes req:body()'s limit is the body's last: the message completes
        # without more input and goes upstream whole.
        with H.Client(self.proxy.port) as c:
            c.send(b"POST /gather/echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 150\r\n\r\n"
                   + b"a" * 60)
            time.sleep(0.1)  # the second part arrives in a read of its own
            c.send(b"b" * 90)
            r = c.read_response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"a" * 60 + b"b" * 90)

    def test_handle_of_another_request_cannot_answer_for_it(self):
        # A keeps its handle and waits on a slow upstream; B's phase tries to answer through
        # it: B gets the error, A gets its upstream's answer.
        import threading
        out = {}

        def first():
            out["a"] = self.get("/cross/delay?ms=1500", headers={"X-First": "1"})
        t = threading.Thread(target=first)
        t.start()
        self.wait_log("CROSSER saved A")  # A is parked on its upstream, its handle kept
        r = self.get("/cross/x")
        t.join(H.T(10))
        self.assertEqual(r.status, 200)
        self.assertIn(b"belongs to another request", r.body)
        self.assertEqual(out["a"].status, 200)
        self.assertNotIn(b"from B", out["a"].body)

    def test_a_failing_body_filter_does_not_eject_the_upstream(self):
        # The proxy's own Lua failed, not the upstream: ten failures in a row (passive
        # ejection takes five) leave the upstream serving other routes.
        for _ in range(10):
            with H.Client(self.proxy.port) as c:
                c.send(H.build_request("GET", "/badfilter/fixed?size=10"))
                closed, got = c.wait_closed()
                self.assertTrue(closed)
        self.assertEqual(self.get("/alone/response/").status, 200)
        log = self.proxy.stderr()
        self.assertIn("response_body filter failed", log)
        self.assertNotIn("body handler failed", log)
        self.assertNotIn("ejected", log)

    def test_plugin_folder_requires_its_helper(self):
        r = self.get("/multi/")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("X-Multi"), "from-the-helper")

    def test_body_limit_must_be_finite(self):
        r = self.get("/huge")
        self.assertEqual(r.status, 200)
        self.assertIn(b"expected a maximum size in bytes", r.body)


if __name__ == "__main__":
    H.main()
