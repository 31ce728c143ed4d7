#!/usr/bin/env python3
"""W3C trace context and span export (docs/tracing.md): a valid incoming traceparent is
continued and the origin sees the proxy's span as parent; an absent or invalid one starts a
new trace; tracestate is combined and passed on; the ids are in Lua, in the access log and
in the error log's upstream errors; spans reach a collector stub as OTLP/HTTP JSON (a SERVER
span per request, a CLIENT span per upstream try); a dead or slow collector never slows
responses and what it loses is counted in GET /status."""

import http.server
import json
import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua"))
import luatest as L  # noqa: E402
from luatest import H  # noqa: E402

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = "00-%s-%s-01" % (TRACE, PARENT)
TP_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

# A plugin that answers the ids Lua sees as response headers.
PLUGINS = {
    "plugins/traceids.lua": r'''
local P = { name = "traceids", priority = 10, schema = { fields = {} } }
function P.request(req)
  req.ctx.ids = { req:trace_id() or "nil", req:span_id() or "nil",
                  req:parent_span_id() or "nil", tostring(req:trace_sampled()) }
end
function P.response(req)
  local ids = req.ctx.ids
  req:set_resp_header("X-Trace-Id", ids[1])
  req:set_resp_header("X-Span-Id", ids[2])
  req:set_resp_header("X-Parent-Span-Id", ids[3])
  req:set_resp_header("X-Sampled", ids[4])
  -- The same in the response phase.
  req:set_resp_header("X-Same", tostring(req:trace_id() == ids[1] and req:span_id() == ids[2]))
end
return P
''',
    "plugins/traceboom.lua": r'''
local P = { name = "traceboom", priority = 10, schema = { fields = {} } }
function P.request(req) error("boom " .. req:path()) end
return P
''',
}

LOG_FORMAT = "$request trace=$trace_id span=$span_id parent=$parent_span_id status=$status"


def build(cls, ups, routes, name, files=None, **kw):
    """A started proxy whose access log uses LOG_FORMAT (stopped by the class cleanups)."""
    p = H.Proxy.build(ups, routes, name=name, **kw)
    p.cfg["log"]["format"] = LOG_FORMAT
    L.copy_files(p.dir, files)
    cls.addClassCleanup(p.stop)
    return p.start()


class Collector:
    """An OTLP/HTTP collector stub on 127.0.0.1 port 0. mode: "ok" (200), "slow" (holds
    every POST until stop()), "fail" (500)."""

    def __init__(self, mode="ok"):
        self.mode = mode
        self.lock = threading.Lock()
        self.bodies = []
        self.posts = 0
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                with outer.lock:
                    outer.posts += 1
                    outer.bodies.append((self.path, self.headers.get("Content-Type"), body))
                if outer.mode == "slow":
                    outer.release.wait(H.T(30))
                code = 500 if outer.mode == "fail" else 200
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                except OSError:
                    pass  # the proxy gave up on a slow answer and closed: expected

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self):
        return "http://127.0.0.1:%d/v1/traces" % self.port

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def documents(self):
        with self.lock:
            return [json.loads(b) for _, _, b in self.bodies]

    def spans(self):
        """Every span received, each with its resource's attributes under "_resource"."""
        out = []
        for doc in self.documents():
            for rs in doc["resourceSpans"]:
                res = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}
                for ss in rs["scopeSpans"]:
                    for s in ss["spans"]:
                        s = dict(s)
                        s["_resource"] = res
                        s["_scope"] = ss["scope"]
                        out.append(s)
        return out


def attrs(span):
    out = {}
    for a in span.get("attributes", []):
        (kind, v), = a["value"].items()
        out[a["key"]] = int(v) if kind == "intValue" else v
    return out


def origin_traceparent(resp):
    hdrs = L.origin_headers(resp)
    tps = L.hvalues(hdrs, "traceparent")
    return tps, L.hvalues(hdrs, "tracestate")


class TracingTest(L.LuaTestCase):
    @classmethod
    def setUpClass(cls):
        cls.o = cls.start_origin("o")
        cls.collector = Collector()
        cls.addClassCleanup(cls.collector.stop)
        dead1, dead2 = "127.0.0.1:%d" % H.dead_port(), "127.0.0.1:%d" % H.dead_port()
        cls.proxy = build(
            cls, {"app": H.upstream(cls.o.address()),
             "gone": H.upstream(dead1, dead2, retries=1)},
            [{"match": {"host": "gone.test", "prefix": "/"}, "upstream": "gone"},
             {"match": {"host": "boom.test", "prefix": "/"}, "upstream": "app",
              "plugins": [{"name": "traceboom"}]},
             {"match": {"host": "lua.test", "prefix": "/"}, "upstream": "app",
              "plugins": [{"name": "traceids"}]},
             {"match": {"prefix": "/"}, "upstream": "app"}],
            "Tracing", files=PLUGINS, workers=2, lua=L.lua_section(),
            admin={"address": "127.0.0.1:0"},
            tracing={"export": {"endpoint": cls.collector.url(), "interval": 0.05,
                                "batch_size": 8, "service_name": "edge-test"}})

    def access_line(self, tag):
        def find():
            hits = [l for l in self.proxy.access_lines() if tag in l]
            return hits[0] if hits else None
        line = H.wait_for(find, H.T(10), what="access log line with " + tag)
        m = re.search(r"trace=(\S+) span=(\S+) parent=(\S+) status=(\d+)", line)
        self.assertIsNotNone(m, line)
        return m.groups()

    def wait_spans(self, pred, n=1, what="spans"):
        def find():
            hits = [s for s in self.collector.spans() if pred(s)]
            return hits if len(hits) >= n else None
        return H.wait_for(find, H.T(10), what=what)

    def status(self):
        r = H.get(self.proxy.admin_port, "/status", host="admin")
        self.assertEqual(r.status, 200)
        return r.json()

    # ---- propagation ----

    def test_continues_a_valid_traceparent(self):
        tag = "cont%d" % time.monotonic_ns()
        r = self.get("/headers?tag=" + tag, headers=[("traceparent", VALID)])
        self.assertEqual(r.status, 200)
        tps, _ = origin_traceparent(r)
        self.assertEqual(len(tps), 1, tps)
        m = TP_RE.match(tps[0])
        self.assertIsNotNone(m, tps[0])
        self.assertEqual(m.group(1), TRACE)
        self.assertNotEqual(m.group(2), PARENT, "the proxy must send its own span as parent")
        self.assertEqual(m.group(3), "01", "sampled flag kept")
        trace, span, parent, status = self.access_line(tag)
        self.assertEqual((trace, parent, status), (TRACE, PARENT, "200"))
        self.assertRegex(span, r"^[0-9a-f]{16}$")
        # The collector: the SERVER span (the access log's span id, the client's parent)
        # and one CLIENT child whose id the origin saw as its parent.
        server = self.wait_spans(lambda s: s["spanId"] == span, what="server span")[0]
        self.assertEqual(server["traceId"], TRACE)
        self.assertEqual(server["parentSpanId"], PARENT)
        self.assertEqual(server["kind"], 2)
        a = attrs(server)
        self.assertEqual(a["http.request.method"], "GET")
        self.assertEqual(a["url.path"], "/headers")
        self.assertEqual(a["http.response.status_code"], 200)
        self.assertEqual(a["server.address"], "a.test")
        self.assertEqual(a["network.peer.address"], "127.0.0.1")
        self.assertRegex(server["startTimeUnixNano"], r"^\d{19}$")
        self.assertLessEqual(int(server["startTimeUnixNano"]), int(server["endTimeUnixNano"]))
        self.assertLess(abs(int(server["startTimeUnixNano"]) / 1e9 - time.time()), 60)
        self.assertEqual(server["_resource"]["service.name"], {"stringValue": "edge-test"})
        self.assertEqual(server["_scope"]["name"], "luaproxy")
        kids = self.wait_spans(lambda s: s.get("parentSpanId") == span, what="client span")
        self.assertEqual(len(kids), 1, kids)
        kid = kids[0]
        self.assertEqual(kid["kind"], 3)
        self.assertEqual(kid["spanId"], m.group(2))
        self.assertEqual(kid["traceId"], TRACE)
        ka = attrs(kid)
        self.assertEqual(ka["server.address"], "127.0.0.1")
        self.assertEqual(ka["server.port"], self.o.port)
        self.assertEqual(ka["http.response.status_code"], 200)
        self.assertNotIn("code", kid.get("status", {}))
        self.assertLessEqual(int(server["startTimeUnixNano"]), int(kid["startTimeUnixNano"]))
        self.assertLessEqual(int(kid["endTimeUnixNano"]), int(server["endTimeUnixNano"]))

    def test_absent_traceparent_starts_a_trace(self):
        tag = "new%d" % time.monotonic_ns()
        r = self.get("/headers?tag=" + tag, headers=[("tracestate", "orphan=1")])
        tps, tss = origin_traceparent(r)
        self.assertEqual(len(tps), 1, tps)
        m = TP_RE.match(tps[0])
        self.assertIsNotNone(m, tps[0])
        self.assertEqual(tss, [], "a tracestate without a traceparent is dropped")
        trace, span, parent, _ = self.access_line(tag)
        self.assertEqual(trace, m.group(1))
        self.assertEqual(parent, "-")
        server = self.wait_spans(lambda s: s["spanId"] == span, what="server span")[0]
        self.assertNotIn("parentSpanId", server)

    def test_invalid_traceparents_start_new_traces(self):
        bad = {
            "upper case": "00-%s-%s-01" % (TRACE.upper(), PARENT),
            "zero trace id": "00-%s-%s-01" % ("0" * 32, PARENT),
            "zero parent id": "00-%s-%s-01" % (TRACE, "0" * 16),
            "version ff": "ff-%s-%s-01" % (TRACE, PARENT),
            "version 00 longer": VALID + "-extra",
            "short": VALID[:-1],
            "bad separator": "00_%s-%s-01" % (TRACE, PARENT),
            "non-hex flags": "00-%s-%s-0g" % (TRACE, PARENT),
            "future version, no dash after flags": "cc-%s-%s-01.x" % (TRACE, PARENT),
        }
        for what, tp in bad.items():
            with self.subTest(what):
                r = self.get("/headers", headers=[("traceparent", tp), ("tracestate", "k=v")])
                tps, tss = origin_traceparent(r)
                self.assertEqual(len(tps), 1, tps)
                m = TP_RE.match(tps[0])
                self.assertIsNotNone(m, tps[0])
                self.assertNotEqual(m.group(1), TRACE, what)
                self.assertEqual(tss, [], "tracestate of an invalid parent must go")
        # Two traceparents: neither is believed.
        r = self.get("/headers", headers=[("traceparent", VALID), ("traceparent", VALID)])
        tps, _ = origin_traceparent(r)
        self.assertEqual(len(tps), 1, tps)
        self.assertNotEqual(TP_RE.match(tps[0]).group(1), TRACE)

    def test_future_version_and_tracestate(self):
        tp = "cc-%s-%s-01-what-the-future-will-be-like" % (TRACE, PARENT)
        r = self.get("/headers", headers=[("traceparent", tp), ("tracestate", "a=1, b=2"),
                                          ("tracestate", "c@d=x y,,")])
        tps, tss = origin_traceparent(r)
        m = TP_RE.match(tps[0])
        self.assertIsNotNone(m, tps)
        self.assertEqual(m.group(1), TRACE)
        self.assertEqual(tss, ["a=1,b=2,c@d=x y"])
        # An invalid tracestate (a key twice) is dropped, the traceparent kept.
        r = self.get("/headers", headers=[("traceparent", VALID), ("tracestate", "a=1,a=2")])
        tps, tss = origin_traceparent(r)
        self.assertEqual(TP_RE.match(tps[0]).group(1), TRACE)
        self.assertEqual(tss, [])
        # Not sampled: the flag goes on as 00, and nothing is exported.
        tag = "unsampled%d" % time.monotonic_ns()
        r = self.get("/headers?tag=" + tag,
                     headers=[("traceparent", "00-%s-%s-00" % (TRACE, PARENT))])
        tps, _ = origin_traceparent(r)
        self.assertEqual(TP_RE.match(tps[0]).group(3), "00")
        _, span, _, _ = self.access_line(tag)
        # A sampled request sent after it is exported; the unsampled one never is.
        tag2 = "after%d" % time.monotonic_ns()
        self.get("/fixed?tag=" + tag2)
        _, span2, _, _ = self.access_line(tag2)
        self.wait_spans(lambda s: s["spanId"] == span2, what="the later span")
        self.assertEqual([s for s in self.collector.spans() if s["spanId"] == span], [])

    # ---- Lua ----

    def test_lua_sees_the_ids(self):
        tag = "lua%d" % time.monotonic_ns()
        r = self.get("/headers?tag=" + tag, host="lua.test", headers=[("traceparent", VALID)])
        self.assertEqual(r.status, 200)
        trace, span, parent, _ = self.access_line(tag)
        self.assertEqual(r.header("X-Trace-Id"), TRACE)
        self.assertEqual(r.header("X-Span-Id"), span)
        self.assertEqual(r.header("X-Parent-Span-Id"), PARENT)
        self.assertEqual(r.header("X-Sampled"), "true")
        self.assertEqual(r.header("X-Same"), "true")
        r = self.get("/fixed", host="lua.test")
        self.assertRegex(r.header("X-Trace-Id"), r"^[0-9a-f]{32}$")
        self.assertEqual(r.header("X-Parent-Span-Id"), "nil")

    # ---- retries, errors ----

    def test_retries_are_child_spans_and_the_502_is_in_the_error_log(self):
        tag = "gone%d" % time.monotonic_ns()
        r = self.get("/x?tag=" + tag, host="gone.test")
        self.assertEqual(r.status, 502)
        trace, span, _, status = self.access_line(tag)
        self.assertEqual(status, "502")
        server = self.wait_spans(lambda s: s["spanId"] == span, what="server span")[0]
        self.assertEqual(server["status"].get("code"), 2)
        self.assertEqual(attrs(server)["http.response.status_code"], 502)
        kids = self.wait_spans(lambda s: s.get("parentSpanId") == span, n=2, what="2 tries")
        self.assertEqual(len(kids), 2, kids)
        kids.sort(key=lambda s: int(s["startTimeUnixNano"]))
        for i, k in enumerate(kids):
            ka = attrs(k)
            self.assertEqual(k["status"].get("code"), 2)
            self.assertEqual(ka["error.type"], "connect")
            self.assertEqual(ka.get("http.request.resend_count", 0), i)
        self.assertNotEqual(attrs(kids[0])["server.port"], attrs(kids[1])["server.port"])
        # The error log line behind the 502 names the trace.
        H.wait_for(lambda: [l for l in self.proxy.stderr().splitlines()
                            if "/x?tag=" + tag in l and "trace_id=" + trace in l],
                   H.T(5), what="the upstream error with its trace id:\n"
                   + self.proxy.stderr()[-3000:])

    def test_a_failing_plugin_names_the_trace(self):
        tag = "boom%d" % time.monotonic_ns()
        r = self.get("/b-" + tag, host="boom.test")  # the plugin's error names the path
        self.assertEqual(r.status, 500)
        trace, _, _, status = self.access_line(tag)
        self.assertEqual(status, "500")
        H.wait_for(lambda: [l for l in self.proxy.stderr().splitlines()
                            if "request phase failed trace_id=" + trace in l and tag in l],
                   H.T(5), what="the plugin failure with its trace id:\n"
                   + self.proxy.stderr()[-3000:])

    def test_status_counts_exports(self):
        for _ in range(3):
            self.get("/fixed")
        H.wait_for(lambda: self.status()["tracing"]["exported"] >= 3, H.T(10),
                   what="exported spans in /status")
        t = self.status()["tracing"]
        self.assertIs(t["enabled"], True)
        self.assertIs(t["export"], True)
        self.assertEqual(t["dropped"], 0)
        self.assertGreaterEqual(t["batches"], 1)
        paths = {p for p, _, _ in self.collector.bodies}
        types = {ct for _, ct, _ in self.collector.bodies}
        self.assertEqual(paths, {"/v1/traces"})
        self.assertEqual(types, {"application/json"})


class TrustAndOffTest(H.ProxyTestCase):
    """tracing.accept = false starts a trace for every request; tracing.enabled = false
    passes the client's headers through untouched and logs no ids."""

    @classmethod
    def setUpClass(cls):
        cls.o = cls.start_origin("o")
        ups = {"app": H.upstream(cls.o.address())}
        routes = [{"match": {"prefix": "/"}, "upstream": "app"}]
        cls.distrust = build(cls, ups, routes, "TraceDistrust",
                             tracing={"accept": False, "sample": 0})
        cls.off = build(cls, ups, routes, "TraceOff", tracing={"enabled": False})

    def test_accept_false(self):
        r = H.get(self.distrust.port, "/headers",
                  headers=[("traceparent", VALID), ("tracestate", "a=1")])
        tps, tss = origin_traceparent(r)
        m = TP_RE.match(tps[0])
        self.assertIsNotNone(m, tps)
        self.assertNotEqual(m.group(1), TRACE)
        self.assertEqual(m.group(3), "00", "sample = 0: new traces are not sampled")
        self.assertEqual(tss, [])

    def test_off_passes_through(self):
        tag = "off%d" % time.monotonic_ns()
        r = H.get(self.off.port, "/headers?tag=" + tag,
                  headers=[("traceparent", "not-a-traceparent"), ("tracestate", "a=1")])
        tps, tss = origin_traceparent(r)
        self.assertEqual((tps, tss), (["not-a-traceparent"], ["a=1"]))
        line = H.wait_for(lambda: [l for l in self.off.access_lines() if tag in l], H.T(10),
                          what="access line")[0]
        self.assertIn("trace=- span=- parent=-", line)


class BadCollectorTest(H.ProxyTestCase):
    """A dead collector and one that never answers: responses stay fast, spans are dropped
    and counted, the queue stays bounded."""

    @classmethod
    def setUpClass(cls):
        cls.o = cls.start_origin("o")
        cls.slow = Collector("slow")
        cls.addClassCleanup(cls.slow.stop)
        cls.failing = Collector("fail")
        cls.addClassCleanup(cls.failing.stop)
        dead = H.dead_port()
        routes = [{"match": {"prefix": "/"}, "upstream": "app"}]
        ups = {"app": H.upstream(cls.o.address())}
        cls.dead_proxy = cls.start_proxy(
            ups, routes, admin={"address": "127.0.0.1:0"},
            tracing={"export": {"endpoint": "http://127.0.0.1:%d/v1/traces" % dead,
                                "interval": 0.02, "batch_size": 2, "max_queue": 8}})
        cls.slow_proxy = H.Proxy.build(
            ups, routes, name="SlowCollector", admin={"address": "127.0.0.1:0"},
            tracing={"export": {"endpoint": cls.slow.url(), "interval": 0.02, "batch_size": 2,
                                "max_queue": 8, "timeout": 0.3}})
        cls.addClassCleanup(cls.slow_proxy.stop)
        cls.slow_proxy.start()
        cls.failing_proxy = H.Proxy.build(
            ups, routes, name="FailingCollector", admin={"address": "127.0.0.1:0"},
            tracing={"export": {"endpoint": cls.failing.url(), "interval": 0.5,
                                "batch_size": 2, "max_queue": 8}})
        cls.addClassCleanup(cls.failing_proxy.stop)
        cls.failing_proxy.start()

    def load(self, proxy, n=60):
        worst = 0.0
        with H.Client(proxy.port) as c:
            for _ in range(n):
                t0 = time.monotonic()
                r = c.request("GET", "/fixed", None, None, "HTTP/1.1", "a.test")
                worst = max(worst, time.monotonic() - t0)
                self.assertEqual(r.status, 200)
        return worst

    def tracing(self, proxy):
        r = H.get(proxy.admin_port, "/status", host="admin")
        return r.json()["tracing"]

    def check(self, proxy):
        worst = self.load(proxy)
        # Far below the collector's timeout and interval multiples: nothing waits on it.
        self.assertLess(worst, H.T(0.25), "a response waited on the collector")
        H.wait_for(lambda: self.tracing(proxy)["dropped"] >= 60 - 8, H.T(10),
                   what="dropped spans counted: %r" % self.tracing(proxy))
        H.wait_for(lambda: self.tracing(proxy)["failures"] >= 1, H.T(10),
                   what="a failed POST counted")
        t = self.tracing(proxy)
        self.assertEqual(t["exported"], 0)
        self.assertLessEqual(t["queued"], 8)
        self.assertTrue(proxy.alive())

    def test_dead_collector(self):
        self.check(self.dead_proxy)

    def test_failing_collector(self):
        t0 = time.monotonic()
        self.check(self.failing_proxy)
        elapsed = time.monotonic() - t0
        self.assertGreaterEqual(self.failing.posts, 1)
        # After a failure the next POST waits for the next tick (interval 0.5 s), not for
        # the next full batch (60 requests made 120 spans, SERVER and CLIENT: 60 batches).
        self.assertLessEqual(self.failing.posts, elapsed / 0.5 + 2,
                             "%d POSTs in %.2f s" % (self.failing.posts, elapsed))

    def test_slow_collector(self):
        self.check(self.slow_proxy)
        self.assertGreaterEqual(self.slow.posts, 1)


class ReloadTest(H.ProxyTestCase):
    """A reload while a POST is in flight: a new service name (the POST in flight goes, the
    queue stays), export turned off (everything waiting goes), then on again."""

    @classmethod
    def setUpClass(cls):
        cls.o = cls.start_origin("o")
        cls.slow = Collector("slow")
        cls.addClassCleanup(cls.slow.stop)
        cls.proxy = build(cls, {"app": H.upstream(cls.o.address())},
                          [{"match": {"prefix": "/"}, "upstream": "app"}], "TraceReload",
                          admin={"address": "127.0.0.1:0"},
                          tracing={"export": {"endpoint": cls.slow.url(), "interval": 0.02,
                                              "batch_size": 1, "timeout": 30}})
        cls.proxy.pin_ports()

    def reload(self, tracing):
        self.proxy.cfg["tracing"] = tracing
        self.proxy.write_config()
        r = H.get(self.proxy.admin_port, "/reload", host="admin", method="POST")
        self.assertEqual(r.status, 200, r.body)

    def status(self):
        return H.get(self.proxy.admin_port, "/status", host="admin").json()["tracing"]

    def test_reloads(self):
        for _ in range(5):
            self.assertEqual(H.get(self.proxy.port, "/").status, 200)
        H.wait_for(lambda: self.slow.posts >= 1, H.T(10), what="a POST in flight")
        export = dict(self.proxy.cfg["tracing"]["export"])
        export["service_name"] = "renamed"
        self.reload({"export": export})
        # The POST in flight was cut (its batch dropped); the others are still queued.
        H.wait_for(lambda: self.status()["dropped"] >= 1, H.T(10), what="the cut POST")
        for _ in range(3):
            self.assertEqual(H.get(self.proxy.port, "/").status, 200)
        self.reload({"enabled": True})
        t = H.wait_for(lambda: (lambda t: t if t["queued"] == 0 else None)(self.status()),
                       H.T(10), what="the queue emptied by turning export off")
        self.assertIs(t["export"], False)
        self.assertEqual(t["exported"], 0)
        self.assertEqual(t["dropped"], 16)  # 8 requests, a SERVER and a CLIENT span each
        self.reload({"export": export})
        self.assertEqual(H.get(self.proxy.port, "/").status, 200)
        self.assertIs(self.status()["export"], True)
        self.assertAlive()


if __name__ == "__main__":
    H.main()
