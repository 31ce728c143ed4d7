#!/usr/bin/env python3
"""The Lua runtime in the real engine (docs/lua-api.md): phase order, priorities, req.ctx,
proxy.sleep in phases without serialising the worker, errors (500 + log with plugin,
file:line, traceback; fail_open), the phase timeout, local answers, request rewrites
(headers, path, upstream, target), response rewrites, body filters, the read API, and
`luaproxy -t` on plugin/handler configs.

Fixture plugins live in tests/integration/lua/plugins (on lua.plugin_paths), fixture
handler modules in tests/integration/lua/scripts (copied next to the config)."""

import json
import os
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua"))
import luatest as L  # noqa: E402
from luatest import H  # noqa: E402

R = H.LuaRaw


def route(prefix, **kw):
    r = {"match": {"prefix": prefix}}
    r.update(kw)
    return r


VARS_HANDLER = R(r'''function(req)
      local vars = {}
      for _, n in ipairs({ "client_ip", "host", "method", "path", "uri", "scheme",
                           "request_id", "upstream", "status", "no_such_var" }) do
        vars[n] = req:var(n) or proxy.json.null
      end
      local out = {
        method = req:method(), path = req:path(), uri = req:uri(),
        query_a = req:query("a") or proxy.json.null,
        query_sp = req:query("sp") or proxy.json.null,
        query_missing = req:query("missing") or proxy.json.null,
        args = req:args(),
        header_one = req:header("x-one") or proxy.json.null,
        header_missing = req:header("X-Missing") or proxy.json.null,
        headers = req:headers(),
        host = req:host(), scheme = req:scheme(), client_ip = req:client_ip(),
        http_version = req:http_version(), phase = req:phase(),
        upstream_name = req:upstream_name() or proxy.json.null,
        vars = vars,
        worker_id = proxy.worker_id(),
        now = proxy.now(),
        config_workers = proxy.config.workers,
      }
      return req:respond(200, proxy.json.encode(out), { ["Content-Type"] = "application/json" })
    end''')


class LuaPhasesTest(L.LuaTestCase):
    @classmethod
    def setUpClass(cls):
        cls.one = cls.start_origin("one")
        cls.two = cls.start_origin("two")
        ups = {"one": H.upstream(cls.one.address()), "two": H.upstream(cls.two.address())}
        two_port = cls.two.port
        routes = [
            # phase order and priorities: G (trace, 200, global) then S (trace, 200, this
            # route) then R (trace_low, 100)
            route("/trace/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "trace_low", "label": "R"},
                           {"name": "trace", "label": "S"}]),
            route("/ctx/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "ctx_reader"}, {"name": "ctx_writer"}],
                  handler=R('''function(req)
                    req.ctx.handler_was_here = "handler"
                    req:set_header("X-Handler-Ctx", req.ctx.shared_by_writer or "nothing")
                  end''')),
            route("/sleep-request/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "sleeper", "request": 0.3}]),
            route("/meet/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "sleeper", "meet": 10, "request": 0.3}]),
            route("/sleep-upstream/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "sleeper", "upstream": 0.3}]),
            route("/sleep-response/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "sleeper", "response": 0.3}]),
            # longer than lua.phase_timeout (0.5 s), but sleeping yields: not a timeout
            route("/sleep-long/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "sleeper", "request": 0.8}]),
            route("/boom-request/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "boom", "phase": "request"}]),
            route("/boom-upstream/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "boom", "phase": "upstream"}]),
            route("/boom-response/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "boom", "phase": "response"}]),
            route("/boom-log/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "boom", "phase": "log"}]),
            route("/boom-open/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "boom", "phase": "request", "fail_open": True},
                           {"name": "ctx_reader"}]),
            route("/boom-open-response/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "boom", "phase": "response", "fail_open": True}]),
            route("/handler-error", handler=R('''function(req)
                    local t = nil
                    return t.field -- attempt to index a nil value
                  end''')),
            route("/runaway", handler=R('''function(req)
                    local n = 0
                    while true do n = n + 1 end
                  end''')),
            route("/respond-then-code", handler=R('''function(req)
                    req:respond(202, "answered")
                    error("code after req:respond() ran")
                  end''')),
            route("/redirect-then-code", handler=R('''function(req)
                    req:redirect("/moved", 308)
                    error("code after req:redirect() ran")
                  end''')),
            route("/respond", handler=R('''function(req)
                    return req:respond(201, "made locally\\n", { ["X-Local"] = "yes",
                                       ["Content-Type"] = "text/plain" })
                  end''')),
            route("/redirect-307", handler=R('''function(req)
                    return req:redirect("/elsewhere?x=1", 307)
                  end''')),
            route("/redirect-default", handler=R('''function(req)
                    return req:redirect("http://example.test/new")
                  end''')),
            route("/hdr/", upstream="one", strip_prefix=True, handler=R('''function(req)
                    req:set_header("X-Set", "new-value")
                    req:add_header("X-Add", "second")
                    req:clear_header("X-Gone")
                    req:set_header("X-Nil", nil)
                    req:set_header("X-Fresh", "fresh")
                    req:set_header("X-Number", 42)
                  end''')),
            route("/setpath/", upstream="one", handler=R('''function(req)
                    req:set_path("/headers?rewritten=1&orig=" .. req:path())
                  end''')),
            route("/choose-unknown", handler=R('''function(req)
                    req:set_upstream("no-such-upstream")
                  end''')),
            route("/choose", handler=R('''function(req)
                    req:set_upstream(req:header("X-Want") or "one")
                    req:set_path("/headers")
                  end''')),
            route("/target", upstream="one", handler=R('''function(req)
                    req:set_target("127.0.0.1", %d)
                    req:set_path("/headers")
                  end''' % two_port)),
            route("/pick-upstream-phase/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "pick", "upstream": "two", "in_phase": "upstream"}]),
            route("/pick-request-phase/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "pick", "upstream": "two"}]),
            route("/resp/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "respmod", "status": 299}]),
            route("/resp-local", plugins=[{"name": "respmod"}], handler=R('''function(req)
                    return req:respond(404, "local", { ["X-Origin-Id"] = "local" })
                  end''')),
            route("/upper/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "bodyfilter", "mode": "upper"}]),
            route("/double/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "bodyfilter", "mode": "double"}]),
            route("/hold/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "bodyfilter", "mode": "hold"}]),
            route("/upper-local", plugins=[{"name": "bodyfilter", "mode": "upper"}],
                  handler=R('''function(req) return req:respond(200, "quiet words") end''')),
            route("/spin-upstream/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "spin", "phase": "upstream"}]),
            route("/spin-response/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "spin", "phase": "response"}]),
            route("/initw/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "initw", "value": "cache-ready"}]),
            route("/vars", handler=VARS_HANDLER),
            route("/body/", upstream="one", strip_prefix=True, handler=R('''function(req)
                    local body, err = req:body(100)
                    req:set_header("X-Lua-Body", body and ("len=" .. #body .. " first=" ..
                                   body:sub(1, 5)) or ("error=" .. tostring(err)))
                  end''')),
            route("/module", handler="module_handler"),
            route("/function-module", upstream="one", handler="function_handler"),
            route("/wrong-phase/", upstream="one", strip_prefix=True,
                  handler=R('''function(req) req:set_status(201) end''')),
            route("/logtag", plugins=[{"name": "logtag"}],
                  handler=R('''function(req) return req:respond(200, "logged") end''')),
            route("/", upstream="one"),
        ]
        cls.proxy = cls.start_lua_proxy(
            ups, routes, workers=1, phase_timeout=0.5, level="debug",
            plugins=[{"name": "trace", "label": "G", "answer_results": True}],
            files={"module_handler.lua": L.fixture("module_handler.lua"),
                   "function_handler.lua": L.fixture("function_handler.lua")})

    def assertWorks(self, c=None):
        """The proxy still answers through the Lua chain (same connection c, or a new one)."""
        r = c.request("GET", "/") if c else self.get("/")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, b"hello")
        self.assertAlive()

    # ------------------------------------------------------------------ order, ctx

    def test_phase_order_and_priority(self):
        key = "order-%d" % time.monotonic_ns()
        r = self.get("/trace/?trace=" + key)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"hello")
        self.assertEqual(r.header("X-Origin-Id"), "one")
        want_head = ["G:request", "S:request", "R:request",
                     "G:upstream", "S:upstream", "R:upstream",
                     "G:response", "S:response", "R:response"]
        self.assertEqual(r.header("X-Trace", "").split(","), want_head)
        # the log phase ran after the answer: ask for what it kept (a later request)
        want_all = want_head + ["G:body", "S:body", "R:body", "G:log", "S:log", "R:log"]

        def kept():
            rr = self.get("/trace-result?key=" + key)
            return rr.body.decode() if rr.status == 200 and rr.body != b"none" else None

        got = H.wait_for(kept, H.T(5), what="the log phase result")
        self.assertEqual(got.split(","), want_all)
        # and the error log line written from the log phase
        self.wait_log("TRACE %s %s" % (key, ",".join(want_all)))

    def test_response_and_log_phases_run_for_local_answers(self):
        key = "local-%d" % time.monotonic_ns()
        r = self.get("/respond?trace=" + key)
        self.assertEqual(r.status, 201)
        # global trace: request, (no upstream phase: answered locally), response
        self.assertEqual(r.header("X-Trace"), "G:request,G:response")
        self.wait_log("TRACE %s G:request,G:response,G:body,G:log" % key)

    def test_ctx_shared_between_plugins_and_handler(self):
        r = self.get("/ctx/headers")
        self.assertEqual(r.status, 200)
        hdrs = L.origin_headers(r)
        self.assertEqual(L.hvalues(hdrs, "X-Ctx-Seen"), ["written-by-ctx_writer"])
        self.assertEqual(L.hvalues(hdrs, "X-Handler-Ctx"), ["written-by-ctx_writer"])
        # the handler runs after the request phase of all plugins; ctx lasts to response
        self.assertEqual(r.header("X-Ctx-Resp"), "written-by-ctx_writer/handler")

    def test_ctx_is_per_request(self):
        # the trace list starts empty on every request (even on one connection)
        with H.Client(self.proxy.port) as c:
            for _ in range(3):
                r = c.request("GET", "/trace/")
                self.assertEqual(r.header("X-Trace", "").count("G:request"), 1)

    # ------------------------------------------------------------------ sleep

    def timed(self, path):
        t0 = time.monotonic()
        r = self.get(path)
        return r, time.monotonic() - t0

    def test_sleep_in_request_upstream_response(self):
        for phase in ("request", "upstream", "response"):
            with self.subTest(phase=phase):
                r, dt = self.timed("/sleep-%s/" % phase)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.body, b"hello")
                self.assertGreaterEqual(dt, 0.28)
                self.assertLess(dt, H.T(10))
                self.assertGreaterEqual(int(r.header("X-Slept")), 280)

    def test_sleep_longer_than_phase_timeout_is_not_a_timeout(self):
        r, dt = self.timed("/sleep-long/")
        self.assertEqual(r.status, 200, self.proxy.stderr()[-2000:])
        self.assertGreaterEqual(dt, 0.78)

    def test_sleeping_requests_are_not_serialised(self):
        # One worker; ten requests each sleep in the request phase until all ten are in it
        # (then 0.3 s more): serialised, the first would wait alone (60 s, then X-Met < 10).
        def one(i):
            t0 = time.monotonic()
            r = H.get(self.proxy.port, "/meet/", timeout=H.T(90))
            return r.status, time.monotonic() - t0, r.header("X-Met")

        res = L.parallel(one, 10)
        for x in res:
            self.assertNotIsInstance(x, Exception)
            self.assertEqual(x[0], 200)
            self.assertGreaterEqual(x[1], 0.28)
            self.assertEqual(x[2], "10", "all ten were sleeping in the worker at once")

    def test_other_requests_served_while_one_sleeps(self):
        import threading
        done = {}

        def slow():
            done["r"] = H.get(self.proxy.port, "/sleep-long/")

        t = threading.Thread(target=slow, daemon=True)
        t.start()
        time.sleep(0.1)
        t0 = time.monotonic()
        r = self.get("/")
        fast = time.monotonic() - t0
        t.join(H.T(10))
        self.assertEqual(r.status, 200)
        self.assertLess(fast, 0.6, "a request waited for another one's proxy.sleep")
        self.assertEqual(done["r"].status, 200)

    def test_pipelined_requests_with_sleeping_phases_answered_in_order(self):
        paths = ["/sleep-request/headers?n=1", "/headers?n=2", "/sleep-response/headers?n=3",
                 "/sleep-upstream/headers?n=4", "/headers?n=5"]
        with H.Client(self.proxy.port, timeout=H.T(20)) as c:
            c.send(b"".join(H.build_request("GET", p) for p in paths))
            for p in paths:
                r = c.read_response()
                self.assertEqual(r.status, 200)
                self.assertTrue(r.json()["url"].endswith(p.split("?")[1]), (p, r.json()))

    def test_client_gone_while_phase_sleeps(self):
        for path in ("/sleep-request/", "/sleep-upstream/", "/sleep-response/"):
            with self.subTest(path=path):
                c = H.Client(self.proxy.port)
                c.send(H.build_request("GET", path))
                time.sleep(0.05)
                c.abort()
        time.sleep(0.5)  # the sleeps end with nobody to answer
        self.assertWorks()
        r = self.get("/sleep-request/")
        self.assertEqual(r.status, 200)

    def test_init_worker_ran_before_traffic(self):
        r = self.get("/initw/headers")
        self.assertEqual(L.hvalues(L.origin_headers(r), "X-Init-Worker"),
                         ["cache-ready@1 runs=1"])

    # ------------------------------------------------------------------ errors

    def check_failure_logged(self, phase, before):
        log = self.proxy.stderr()[before:]
        self.assertIn("boom", log)
        self.assertIn("boom-fixture-error in " + phase, log)
        self.assertRegex(log, r"boom\.lua:\d+")
        self.assertIn("traceback", log)

    def test_error_in_request_upstream_response_is_500(self):
        for phase in ("request", "upstream", "response"):
            with self.subTest(phase=phase):
                before = len(self.proxy.stderr())
                with H.Client(self.proxy.port) as c:
                    r = c.request("GET", "/boom-%s/" % phase)
                    self.assertEqual(r.status, 500, r)
                    self.assertNotEqual(r.body, b"hello")
                    self.wait_log("boom-fixture-error in " + phase)
                    self.check_failure_logged(phase, before)
                    # the same connection goes on (the request itself was well-formed)
                    if "close" in r.tokens("connection"):
                        self.fail("a Lua error closed the client connection "
                                  "(Connection: close on the 500)")
                    self.assertWorks(c)
                self.assertWorks()

    def test_error_in_upstream_phase_never_reaches_origin(self):
        # The boom route's upstream is "one"; a failed upstream phase must not connect:
        # the access log line of this request names no upstream address.
        key = "k%d" % time.monotonic_ns()
        r = self.get("/boom-upstream/?" + key)
        self.assertEqual(r.status, 500)
        line = H.wait_for(lambda: [l for l in self.proxy.access_lines() if key in l],
                          H.T(5), what="the access log line")[0]
        self.assertNotIn(self.one.address(), line)

    def test_error_in_handler_is_500_with_location(self):
        before = len(self.proxy.stderr())
        with H.Client(self.proxy.port) as c:
            r = c.request("GET", "/handler-error")
            self.assertEqual(r.status, 500)
            self.wait_log("attempt to index")
            log = self.proxy.stderr()[before:]
            self.assertRegex(log, r"proxy\.lua:\d+")  # the config file holds the handler
            self.assertIn("traceback", log)
            self.assertIn("handler", log)
            self.assertNotIn("close", r.tokens("connection"))
            self.assertWorks(c)

    def test_error_in_log_phase_does_not_affect_answer(self):
        before = len(self.proxy.stderr())
        with H.Client(self.proxy.port) as c:
            r = c.request("GET", "/boom-log/")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"hello")
            self.wait_log("boom-fixture-error in log")
            self.check_failure_logged("log", before)
            self.assertWorks(c)

    def test_fail_open_error_lets_request_through(self):
        before = len(self.proxy.stderr())
        r = self.get("/boom-open/headers")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("X-Origin-Id"), "one")
        # later plugins still ran (ctx_reader set its header)
        self.assertEqual(L.hvalues(L.origin_headers(r), "X-Ctx-Seen"), ["nothing"])
        self.wait_log("boom-fixture-error in request")
        self.assertIn("boom", self.proxy.stderr()[before:])
        r = self.get("/boom-open-response/")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"hello")

    def test_runaway_loop_is_stopped(self):
        before = len(self.proxy.stderr())
        t0 = time.monotonic()
        with H.Client(self.proxy.port, timeout=H.T(15)) as c:
            r = c.request("GET", "/runaway")
        dt = time.monotonic() - t0
        self.assertEqual(r.status, 500)
        self.assertLess(dt, H.T(5), "the phase timeout (0.5 s) took %.1fs" % dt)
        self.wait_log("timed out")
        self.assertIn("phase_timeout", self.proxy.stderr()[before:])
        # the only worker is free again
        self.assertWorks()
        for _ in range(3):
            self.assertWorks()

    def test_runaway_loop_in_plugin_phases(self):
        for phase in ("upstream", "response"):
            with self.subTest(phase=phase):
                t0 = time.monotonic()
                r = H.get(self.proxy.port, "/spin-%s/" % phase, timeout=H.T(15))
                self.assertEqual(r.status, 500)
                self.assertLess(time.monotonic() - t0, H.T(5))
                self.assertWorks()

    def test_runaway_loop_does_not_stall_other_connections_for_long(self):
        import threading
        res = {}

        def run():
            res["r"] = H.get(self.proxy.port, "/runaway", timeout=H.T(15))

        t = threading.Thread(target=run, daemon=True)
        t.start()
        time.sleep(0.1)
        t0 = time.monotonic()
        r = self.get("/", timeout=H.T(15))
        self.assertEqual(r.status, 200)
        self.assertLess(time.monotonic() - t0, H.T(5))
        t.join(H.T(15))
        self.assertEqual(res["r"].status, 500)

    # ------------------------------------------------------------------ local answers

    def test_respond_with_headers_and_body(self):
        with H.Client(self.proxy.port) as c:
            r = c.request("GET", "/respond")
            self.assertEqual(r.status, 201)
            self.assertEqual(r.body, b"made locally\n")
            self.assertEqual(r.header("X-Local"), "yes")
            self.assertEqual(r.header("Content-Type"), "text/plain")
            # Content-Length, or chunked (a body filter, the global trace plugin, is on)
            self.assertIn(r.header("Content-Length"), (None, str(len(b"made locally\n"))))
            self.assertTrue(r.complete)
            self.assertWorks(c)

    def test_code_after_respond_does_not_run(self):
        # docs/lua-api.md: respond "ends the handler (code after it does not run)"
        r = self.get("/respond-then-code")
        self.assertEqual((r.status, r.body), (202, b"answered"))
        r = self.get("/redirect-then-code")
        self.assertEqual((r.status, r.header("Location")), (308, "/moved"))
        time.sleep(0.2)
        self.assertNotIn("code after req:respond() ran", self.proxy.stderr())
        self.assertNotIn("code after req:redirect() ran", self.proxy.stderr())

    def test_respond_to_head_has_no_body(self):
        with H.Client(self.proxy.port) as c:
            r = c.request("HEAD", "/respond")
            self.assertEqual(r.status, 201)
            self.assertEqual(r.body, b"")
            self.assertWorks(c)

    def test_redirect(self):
        r = self.get("/redirect-307")
        self.assertEqual(r.status, 307)
        self.assertEqual(r.header("Location"), "/elsewhere?x=1")
        r = self.get("/redirect-default")
        self.assertEqual(r.status, 302)
        self.assertEqual(r.header("Location"), "http://example.test/new")

    def test_module_handlers(self):
        r = self.get("/module")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.body.startswith(b"module handler call "))
        self.assertEqual(r.header("X-Module"), "module_handler")
        r = self.get("/function-module")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["url"], "/headers")
        self.assertEqual(L.hvalues(L.origin_headers(r), "X-Function-Handler"), ["yes"])

    # ------------------------------------------------------------------ request rewrites

    def test_set_add_clear_header_reach_origin(self):
        r = self.get("/hdr/headers", headers=[("X-Set", "old-1"), ("X-Set", "old-2"),
                                              ("X-Add", "first"), ("X-Gone", "bye"),
                                              ("X-Gone", "bye2"), ("X-Nil", "x"),
                                              ("X-Kept", "kept")])
        self.assertEqual(r.status, 200)
        h = L.origin_headers(r)
        self.assertEqual(L.hvalues(h, "X-Set"), ["new-value"])
        self.assertEqual(L.hvalues(h, "X-Add"), ["first", "second"])
        self.assertEqual(L.hvalues(h, "X-Gone"), [])
        self.assertEqual(L.hvalues(h, "X-Nil"), [])
        self.assertEqual(L.hvalues(h, "X-Fresh"), ["fresh"])
        self.assertEqual(L.hvalues(h, "X-Number"), ["42"])
        self.assertEqual(L.hvalues(h, "X-Kept"), ["kept"])
        self.assertEqual(L.hvalues(h, "Host"), ["a.test"])

    def test_set_path(self):
        r = self.get("/setpath/abc?q=1")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["url"], "/headers?rewritten=1&orig=/setpath/abc")

    def test_set_upstream(self):
        r = self.get("/choose", headers={"X-Want": "two"})
        self.assertEqual((r.status, r.header("X-Origin-Id")), (200, "two"))
        r = self.get("/choose", headers={"X-Want": "one"})
        self.assertEqual((r.status, r.header("X-Origin-Id")), (200, "one"))
        r = self.get("/choose")
        self.assertEqual((r.status, r.header("X-Origin-Id")), (200, "one"))

    def test_set_upstream_unknown_is_500(self):
        before = len(self.proxy.stderr())
        r = self.get("/choose-unknown")
        self.assertEqual(r.status, 500)
        self.wait_log("no-such-upstream")
        self.assertIn("traceback", self.proxy.stderr()[before:])

    def test_set_target(self):
        r = self.get("/target")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("X-Origin-Id"), "two")
        self.assertEqual(r.json()["url"], "/headers")

    def test_set_upstream_in_upstream_phase(self):
        r = self.get("/pick-upstream-phase/headers")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("X-Origin-Id"), "two")
        # the upstream phase saw the change it made
        self.assertEqual(L.hvalues(L.origin_headers(r), "X-Upstream-Phase-Saw"), ["two"])
        r = self.get("/pick-request-phase/headers")
        self.assertEqual(r.header("X-Origin-Id"), "two")
        # the upstream phase sees what the request phase chose
        self.assertEqual(L.hvalues(L.origin_headers(r), "X-Upstream-Phase-Saw"), ["two"])

    def test_wrong_phase_call_raises(self):
        before = len(self.proxy.stderr())
        r = self.get("/wrong-phase/")
        self.assertEqual(r.status, 500)
        self.wait_log("set_status")
        self.assertIn("cannot be called in the request phase", self.proxy.stderr()[before:])

    # ------------------------------------------------------------------ response rewrites

    def test_response_phase_rewrites(self):
        r = self.get("/resp/")
        self.assertEqual(r.status, 299)
        self.assertEqual(r.body, b"hello")
        self.assertEqual(r.header("X-Origin-Id"), "replaced")
        self.assertEqual(r.header_all("X-Origin-Id"), ["replaced"])
        self.assertIsNone(r.header("X-Conn-Id"))
        self.assertEqual(r.header_all("X-Multi"), ["one", "two"])
        self.assertEqual(r.header("X-Resp-Seen"),
                         "status=200 origin=one addr=%s" % self.one.address())

    def test_response_phase_on_local_answer(self):
        r = self.get("/resp-local")
        self.assertEqual(r.status, 404)
        self.assertEqual(r.body, b"local")
        self.assertEqual(r.header("X-Origin-Id"), "replaced")
        self.assertEqual(r.header_all("X-Multi"), ["one", "two"])
        self.assertEqual(r.header("X-Resp-Seen"), "status=404 origin=local addr=nil")

    # ------------------------------------------------------------------ body filters

    def test_body_filter_upper_length_body(self):
        r = self.get("/upper/fixed?size=3000")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.complete)
        self.assertEqual(r.body, b"X" * 3000)

    def test_body_filter_upper_chunked_body(self):
        r = self.get("/upper/chunked?chunks=5&size=100")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.complete)
        want = bytes(ord("A") + i % 26 for i in range(500))
        self.assertEqual(r.body, want)

    def test_body_filter_upper_large_body(self):
        r = self.get("/upper/large?bytes=300000")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.complete)
        self.assertEqual(r.body, H.large_body(300000).upper())

    def test_body_filter_on_local_answer(self):
        r = self.get("/upper-local")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"QUIET WORDS")

    def test_body_filter_that_grows_the_body(self):
        # the filter doubles every chunk: the framing must follow (no stale Content-Length)
        with H.Client(self.proxy.port) as c:
            r = c.request("GET", "/double/fixed?size=1000")
            self.assertEqual(r.status, 200)
            self.assertTrue(r.complete, r)
            self.assertEqual(r.body, b"x" * 2000)
            self.assertWorks(c)

    def test_body_filter_that_holds_back(self):
        with H.Client(self.proxy.port) as c:
            r = c.request("GET", "/hold/chunked?chunks=4&size=50")
            self.assertEqual(r.status, 200)
            self.assertTrue(r.complete, r)
            self.assertEqual(r.body, bytes(ord("A") + i % 26 for i in range(200)))
            r = c.request("GET", "/hold/fixed?size=700")
            self.assertTrue(r.complete, r)
            self.assertEqual(r.body, b"X" * 700)
            self.assertWorks(c)

    # ------------------------------------------------------------------ the read API

    def test_request_values_round_trip(self):
        r = self.get("/vars?a=1&a=2&sp=%20x%2By&flag",
                     host="Vars.Example.TEST:8080",
                     headers=[("X-One", "first"), ("X-One", "second"), ("X-Two", "2")])
        self.assertEqual(r.status, 200, r)
        j = r.json()
        self.assertEqual(j["method"], "GET")
        self.assertEqual(j["path"], "/vars")
        self.assertEqual(j["uri"], "/vars?a=1&a=2&sp=%20x%2By&flag")
        self.assertEqual(j["query_a"], "1")
        self.assertEqual(j["query_sp"], " x+y")
        self.assertIsNone(j["query_missing"])
        self.assertEqual(j["args"]["a"], ["1", "2"])
        self.assertEqual(j["args"]["sp"], " x+y")
        self.assertIn("flag", j["args"])
        self.assertEqual(j["header_one"], "first")
        self.assertIsNone(j["header_missing"])
        self.assertEqual(j["headers"]["x-one"], ["first", "second"])
        self.assertEqual(j["headers"]["x-two"], "2")
        self.assertEqual(j["headers"]["host"], "Vars.Example.TEST:8080")
        self.assertEqual(j["host"], "vars.example.test")
        self.assertEqual(j["scheme"], "http")
        self.assertEqual(j["client_ip"], "127.0.0.1")
        self.assertEqual(j["http_version"], 1.1)
        self.assertEqual(j["phase"], "request")
        self.assertIsNone(j["upstream_name"])
        v = j["vars"]
        self.assertEqual(v["client_ip"], "127.0.0.1")
        self.assertEqual(v["host"], "vars.example.test")
        self.assertEqual(v["method"], "GET")
        self.assertEqual(v["path"], "/vars")
        self.assertEqual(v["uri"], "/vars?a=1&a=2&sp=%20x%2By&flag")
        self.assertEqual(v["scheme"], "http")
        self.assertIsNone(v["request_id"])
        self.assertIsNone(v["upstream"])
        self.assertIsNone(v["status"])
        self.assertIsNone(v["no_such_var"])
        self.assertEqual(j["worker_id"], 1)
        self.assertEqual(j["config_workers"], 1)
        self.assertAlmostEqual(j["now"], time.time(), delta=60)

    def test_request_values_http10_and_post(self):
        r = self.get("/vars", method="POST", body=b"ignored", version="HTTP/1.0")
        self.assertEqual(r.status, 200)
        j = r.json()
        self.assertEqual(j["method"], "POST")
        self.assertEqual(j["http_version"], 1.0)
        self.assertEqual(j["args"], {})

    def body_seen(self, r):
        self.assertEqual(r.status, 200, r)
        return L.hvalues(L.origin_headers(r), "X-Lua-Body")

    def test_body_read_content_length(self):
        # req:body(max): the whole body as a string; it still goes upstream in full
        r = self.get("/body/echo", method="POST", body=b"hello body")
        self.assertEqual((r.status, r.body), (200, b"hello body"))
        r = self.get("/body/headers", method="POST", body=b"hello body")
        self.assertEqual(self.body_seen(r), ["len=10 first=hello"])

    def test_body_read_chunked(self):
        r = self.get("/body/headers", method="POST", body=H.chunked(b"abcdefgh", [3]),
                     headers={"Transfer-Encoding": "chunked"}, timeout=H.T(5))
        self.assertEqual(self.body_seen(r), ["len=8 first=abcde"])

    def test_body_read_too_large(self):
        # over the limit: nil, "too large", and the body still reaches the upstream
        big = b"z" * 5000
        r = self.get("/body/echo", method="POST", body=big, timeout=H.T(5))
        self.assertEqual((r.status, r.body), (200, big))
        r = self.get("/body/headers", method="POST", body=big, timeout=H.T(5))
        self.assertEqual(self.body_seen(r), ["error=too large"])

    def test_body_read_without_body(self):
        r = self.get("/body/headers", timeout=H.T(5))
        self.assertEqual(self.body_seen(r), ["len=0 first="])

    def test_log_lines_from_plugins(self):
        key = "k%d" % time.monotonic_ns()
        r = self.get("/logtag?logkey=" + key)
        self.assertEqual(r.status, 200)
        self.wait_log("LOGTAG-DEBUG " + key)
        lines = self.log_lines(key)
        for lvl in ("ERR", "WARN", "NOTICE", "INFO", "DEBUG"):
            self.assertTrue(any("LOGTAG-%s %s" % (lvl, key) in l for l in lines), lines)
        # tagged with the plugin name (docs/lua-api.md: proxy.log)
        for l in lines:
            self.assertIn("logtag", l.split("LOGTAG-")[0], "line not tagged with the plugin: "
                          + l)


class LuaBodyFilterErrorTest(L.LuaTestCase):
    """An error in a response_body filter (own proxy: it has crashed the worker)."""

    @classmethod
    def setUpClass(cls):
        cls.one = cls.start_origin("one")
        routes = [
            route("/boom-body/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "boom", "phase": "response_body"}]),
            route("/", upstream="one"),
        ]
        cls.proxy = cls.start_lua_proxy({"one": H.upstream(cls.one.address())}, routes,
                                        workers=1)

    def check_failure_logged(self, phase, before):
        LuaPhasesTest.check_failure_logged(self, phase, before)

    def assertWorks(self, c=None):
        time.sleep(0.2)
        self.assertTrue(self.proxy.alive(), "proxy died (exit status %s):\n%s" % (
            self.proxy.proc.poll(), self.proxy.stderr()[-1500:]))
        LuaPhasesTest.assertWorks(self, c)

    def test_error_in_response_body_filter(self):
        # The head may already be out: either a 500, or a response that is visibly cut
        # short (connection closed). Never a complete 200 "hello" as if nothing happened.
        before = len(self.proxy.stderr())
        with H.Client(self.proxy.port) as c:
            c.send(H.build_request("GET", "/boom-body/"))
            try:
                r = c.read_response()
            except H.PeerClosed:
                r = None
            self.wait_log("boom-fixture-error in response_body")
            self.check_failure_logged("response_body", before)
            if r is not None and r.status == 200:
                self.assertFalse(r.complete and r.body == b"hello",
                                 "body filter error went unnoticed: %r" % r)
        self.assertWorks()
        self.assertWorks()

    def test_error_in_response_body_filter_chunked(self):
        before = len(self.proxy.stderr())
        with H.Client(self.proxy.port) as c:
            c.send(H.build_request("GET", "/boom-body/chunked?chunks=3&size=10"))
            try:
                r = c.read_response()
            except H.PeerClosed:
                r = None
            self.wait_log("boom-fixture-error in response_body")
            if r is not None and r.status == 200:
                self.assertFalse(r.complete, "body filter error went unnoticed: %r" % r)
        self.assertWorks()


class LuaRunawayHelperTest(L.LuaTestCase):
    """A runaway loop in a helper function a plugin's phase calls (not in the phase
    function itself) is stopped by lua.phase_timeout too. Own proxy: when the watchdog
    misses it, the only worker spins for good (the proxy is then SIGKILLed)."""

    @classmethod
    def setUpClass(cls):
        cls.one = cls.start_origin("one")
        routes = [
            route("/spin-helper/", upstream="one", strip_prefix=True,
                  plugins=[{"name": "spin", "phase": "request", "helper": True}]),
            route("/", upstream="one"),
        ]
        cls.proxy = cls.start_lua_proxy({"one": H.upstream(cls.one.address())}, routes,
                                        workers=1, phase_timeout=0.5,
                                        timeouts={"drain": 1})
        proc = cls.proxy.proc
        cls.addClassCleanup(lambda: H.stop_process(proc, sig=signal.SIGKILL))

    def test_helper_loop_is_stopped(self):
        t0 = time.monotonic()
        try:
            r = self.get("/spin-helper/", timeout=H.T(6))
        except socket.timeout:
            self.fail("a runaway loop in a helper function was not stopped by "
                      "lua.phase_timeout = 0.5 within %.0fs: the worker hangs" % H.T(6))
        self.assertEqual(r.status, 500)
        self.assertLess(time.monotonic() - t0, H.T(5))
        r = self.get("/", timeout=H.T(5))
        self.assertEqual((r.status, r.body), (200, b"hello"))


class LuaPhaseTimeoutOffTest(L.LuaTestCase):
    """lua.phase_timeout = 0 disables the watchdog: a long busy phase finishes."""

    @classmethod
    def setUpClass(cls):
        cls.one = cls.start_origin("one")
        routes = [
            route("/busy", handler=R('''function(req)
                    local t0 = os.clock()
                    while os.clock() - t0 < 0.7 do end
                    return req:respond(200, "finished")
                  end''')),
            route("/", upstream="one"),
        ]
        cls.proxy = cls.start_lua_proxy({"one": H.upstream(cls.one.address())}, routes,
                                        workers=1, phase_timeout=0)

    def test_long_phase_completes(self):
        r = self.get("/busy", timeout=H.T(20))
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"finished")


class LuaDefaultPhaseTimeoutTest(L.LuaTestCase):
    """Without lua.phase_timeout the default (1 s) applies."""

    @classmethod
    def setUpClass(cls):
        cls.one = cls.start_origin("one")
        routes = [
            route("/runaway", handler=R('''function(req) while true do end end''')),
            route("/", upstream="one"),
        ]
        cls.proxy = cls.start_lua_proxy({"one": H.upstream(cls.one.address())}, routes,
                                        workers=1)

    def test_default_timeout_stops_loop(self):
        t0 = time.monotonic()
        r = self.get("/runaway", timeout=H.T(20))
        self.assertEqual(r.status, 500)
        dt = time.monotonic() - t0
        self.assertGreaterEqual(dt, 0.9)
        self.assertLess(dt, H.T(6))
        self.assertWorks()

    def assertWorks(self):
        r = self.get("/")
        self.assertEqual((r.status, r.body), (200, b"hello"))


class LuaConfigCheckTest(L.LuaTestCase):
    """`luaproxy -t` validates plugin entries and handlers."""

    @classmethod
    def setUpClass(cls):
        H.require_proxy()
        cls.dir = H.Workdir.new("lua-check")

    def cfg(self, routes=None, plugins=None, **extra):
        cfg = H.make_config(free_port_stub(), {"one": H.upstream("127.0.0.1:1")},
                            routes or [route("/", upstream="one")], workers=1,
                            lua=L.lua_section(), **extra)
        if plugins is not None:
            cfg["plugins"] = plugins
        return H.config_text(cfg)

    def check(self, text, files=None):
        d = H.Workdir.new("lua-check")
        return L.check_config(text, files=files, workdir=d)

    def assertRejected(self, text, *needles, files=None):
        rc, out, err, path = self.check(text, files)
        self.assertNotEqual(rc, 0, "accepted:\n" + text)
        self.assertIn(path, err)
        for n in needles:
            self.assertIn(n, err)
        return err

    def test_good_config_accepted(self):
        rc, out, err, path = self.check(self.cfg(
            plugins=[{"name": "strict", "level": 3}, {"name": "request_id"}],
            routes=[route("/m", handler="module_handler"),
                    route("/f", handler=R("function(req) end"), upstream="one"),
                    route("/", upstream="one", plugins=[{"name": "headers"}])]),
            files={"module_handler.lua": L.fixture("module_handler.lua")})
        self.assertEqual(rc, 0, err)

    def test_bad_plugin_config_names_path(self):
        self.assertRejected(self.cfg(plugins=[{"name": "strict", "level": "high"}]),
                            "plugins[1](strict).level")
        self.assertRejected(self.cfg(plugins=[{"name": "strict", "level": 9}]),
                            "plugins[1](strict).level")
        self.assertRejected(self.cfg(plugins=[{"name": "strict"}]), "plugins[1](strict).level")
        self.assertRejected(self.cfg(plugins=[{"name": "request_id"},
                                              {"name": "strict", "level": 2, "mode": "c"}]),
                            "plugins[2](strict).mode")
        self.assertRejected(self.cfg(plugins=[{"name": "strict", "level": 2, "levle": 1}]),
                            "plugins[1](strict)", "levle")

    def test_bad_route_plugin_config_names_path(self):
        self.assertRejected(self.cfg(routes=[
            route("/", upstream="one", plugins=[{"name": "headers", "request": {
                "set": {"X-A": 5}}}])]), "routes[1].plugins[1](headers).request.set")

    def test_bad_bundled_plugin_config(self):
        self.assertRejected(self.cfg(plugins=[{"name": "request_id", "generate": "uuid7"}]),
                            "plugins[1](request_id).generate")
        self.assertRejected(self.cfg(plugins=[{"name": "router", "rules": [
            {"pattern": "^/(%d+", "upstream": "one"}]}]), "plugins[1](router)")

    def test_fail_open_must_be_boolean(self):
        self.assertRejected(self.cfg(plugins=[{"name": "strict", "level": 1,
                                               "fail_open": "yes"}]),
                            "plugins[1](strict).fail_open")

    def test_unknown_plugin(self):
        err = self.assertRejected(self.cfg(plugins=[{"name": "no_such_plugin"}]),
                                  "plugins[1]", "no_such_plugin")
        self.assertIn("not found", err)
        self.assertRejected(self.cfg(routes=[route("/", upstream="one",
                                                   plugins=[{"name": "nope_plugin"}])]),
                            "routes[1].plugins[1]", "nope_plugin")

    def test_handler_module_syntax_error(self):
        err = self.assertRejected(
            self.cfg(routes=[route("/", handler="broken_handler")]),
            "routes[1].handler", files={"broken_handler.lua": L.fixture("broken_handler.lua")})
        self.assertIn("broken_handler.lua:5", err)

    def test_handler_module_missing(self):
        self.assertRejected(self.cfg(routes=[route("/", handler="no_such_module")]),
                            "routes[1].handler", "no_such_module")

    def test_handler_wrong_type(self):
        self.assertRejected(self.cfg(routes=[route("/", handler=5)]), "routes[1].handler")

    def test_route_without_upstream_or_lua(self):
        self.assertRejected(self.cfg(routes=[route("/")]), "routes[1].upstream")

    def test_lua_section_checked(self):
        self.assertRejected(H.config_text(H.make_config(
            free_port_stub(), {"one": H.upstream("127.0.0.1:1")},
            [route("/", upstream="one")], lua={"phase_timeout": "long"})),
            "lua.phase_timeout")
        self.assertRejected(H.config_text(H.make_config(
            free_port_stub(), {"one": H.upstream("127.0.0.1:1")},
            [route("/", upstream="one")], lua={"bogus": 1})), "lua", "bogus")

    def test_plugin_paths_relative_to_config(self):
        d = H.Workdir.new("lua-relpath")
        with open(os.path.join(L.FIXTURE_PLUGINS, "strict.lua")) as f:
            src = f.read()
        cfg = H.make_config(free_port_stub(), {"one": H.upstream("127.0.0.1:1")},
                            [route("/", upstream="one")], workers=1,
                            lua={"plugin_paths": ["my-plugins"]},
                            plugins=[{"name": "strict", "level": 1}])
        rc, out, err, path = L.check_config(H.config_text(cfg),
                                            files={"my-plugins/strict.lua": src}, workdir=d)
        self.assertEqual(rc, 0, err)

    def test_plugin_syntax_error(self):
        d = H.Workdir.new("lua-badplugin")
        cfg = H.make_config(free_port_stub(), {"one": H.upstream("127.0.0.1:1")},
                            [route("/", upstream="one")], workers=1,
                            lua={"plugin_paths": ["pl"]}, plugins=[{"name": "oops"}])
        rc, out, err, path = L.check_config(
            H.config_text(cfg), files={"pl/oops.lua": "local P = {\n name = 'oops'\n"
                                       "return P\n"}, workdir=d)
        self.assertNotEqual(rc, 0)
        self.assertIn("oops.lua:3", err)

    def test_plugin_config_naming_a_missing_upstream(self):
        # Fields of type upstream in plugin schemas are checked against the config's.
        self.assertRejected(self.cfg(plugins=[{"name": "router", "rules": [
            {"prefix": "/a", "upstream": "one"}, {"prefix": "/b", "upstream": "nope"}]}]),
            'plugins[1](router).rules[2].upstream: no upstream named "nope"')
        self.assertRejected(self.cfg(plugins=[{"name": "router", "default_upstream": "gone"}]),
                            'plugins[1](router).default_upstream: no upstream named "gone"')
        self.assertRejected(self.cfg(routes=[route("/", plugins=[{"name": "ab", "arms": [
            {"name": "a", "upstream": "one"}, {"name": "b", "upstream": "ghost"}]}])]),
            'routes[1].plugins[1](ab).arms[2].upstream: no upstream named "ghost"')
        rc, out, err, path = self.check(self.cfg(plugins=[{"name": "router", "rules": [
            {"prefix": "/a", "upstream": "one"}]}]))
        self.assertEqual(rc, 0, err)

    def test_init_worker_that_fails_is_refused(self):
        # -t loads the config as a start does: init_worker runs in a throwaway VM.
        plugin = ("return { name = 'initfail', priority = 1,\n"
                  "  init_worker = function(conf) error('boom-init') end,\n"
                  "  request = function(req, conf) end }\n")
        err = self.assertRejected(self.cfg(plugins=[{"name": "initfail"}]), "initfail",
                                  "init_worker failed", "boom-init",
                                  files={"plugins/initfail.lua": plugin})
        self.assertNotIn("configuration ok", err)
        ok = plugin.replace("error('boom-init')", "proxy.log.info('init ok')")
        rc, out, err, path = self.check(self.cfg(plugins=[{"name": "initfail"}]),
                                        files={"plugins/initfail.lua": ok})
        self.assertEqual(rc, 0, err)

    def test_bad_config_does_not_serve(self):
        port = H.dead_port()
        cfg = H.make_config(port, {"one": H.upstream("127.0.0.1:1")},
                            [route("/", upstream="one")], workers=1, lua=L.lua_section(),
                            plugins=[{"name": "strict", "level": "x"}])
        d = H.Workdir.new("lua-noserve")
        path = os.path.join(d, "c.lua")
        with open(path, "w") as f:
            f.write(H.config_text(cfg))
        p = H.spawn([H.LUAPROXY, "-c", path], os.path.join(d, "out"), os.path.join(d, "err"))
        try:
            p.wait(H.T(10))
        except Exception:  # noqa: BLE001
            pass
        rc = H.stop_process(p)
        self.assertNotEqual(rc, 0)
        with open(os.path.join(d, "err")) as f:
            self.assertIn("plugins[1](strict).level", f.read())
        self.assertTrue(H.connect_refused(port))


def free_port_stub():
    return 0  # -t never binds


if __name__ == "__main__":
    H.main()
