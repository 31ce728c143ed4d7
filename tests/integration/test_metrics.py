#!/usr/bin/env python3
"""GET /metrics on the admin API (docs/metrics.md): real traffic moves the counters by the
right amounts, with route, upstream and status class labels; a reload keeps counters
monotonic; OpenMetrics when Accept asks for it; plugins' own metrics (proxy.metrics) show
up; and the text passes `promtool check metrics` (which must be installed: this test fails
without it)."""

import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reload"))
import reloadtest as RT  # noqa: E402
from reloadtest import H  # noqa: E402

R = H.LuaRaw
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

PLUGIN = """
local M = { name = "metered", priority = 100 }
local hits, sizes, level
function M.init_worker(conf)
  hits = proxy.metrics.counter("myplugin_hits_total", "Hits seen by the plugin.", { "kind" })
  sizes = proxy.metrics.histogram("myplugin_size", "Sizes.", { "kind" }, { 1, 10, 100 })
  level = proxy.metrics.gauge("myplugin_level", "A level.")
end
function M.request(req, conf)
  if req:header("x-fail") then error("boom") end
  if req:header("x-spin") then local n = 0 while true do n = n + 1 end end
  local kind = req:header("x-kind") or "none"
  hits:inc(1, kind)
  sizes:observe(5, kind)
  level:set(7)
end
return M
"""


def parse(text):
    """{(name, frozenset(labels.items())): value} of the samples of an exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        labels = frozenset((k, v.encode().decode("unicode_escape"))
                           for k, v in LABEL.findall(m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def val(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


class MetricsTest(RT.ReloadTestCase):
    @classmethod
    def setUpClass(cls):
        cls.promtool = H.require_tool("promtool")
        cls.a = cls.start_origin("a")
        cls.plugin_dir = os.path.join(H.Workdir.new("metrics-plugins"), "plugins")
        os.makedirs(cls.plugin_dir, exist_ok=True)
        with open(os.path.join(cls.plugin_dir, "metered.lua"), "w") as f:
            f.write(PLUGIN)
        cls.proxy = cls.start_reload_proxy(
            {"a": H.upstream(cls.a.address()), "b": H.upstream(cls.a.address(), balance="p2c")},
            [RT.route("/api", name="api", upstream="a", strip_prefix=True,
                      plugins=[{"name": "metered"}]),
             RT.route("/local", handler=RT.respond_handler("x", 201)),
             RT.route("/exact", upstream="a", strip_prefix=True),
             RT.route("/p2c", upstream="b", strip_prefix=True)],
            workers=2, lua={"plugin_paths": [RT.FIXTURE_PLUGINS, cls.plugin_dir],
                            "phase_timeout": 0.05},
            metrics={"buckets": [0.001, 0.01, 0.1, 1]})
        H.wait_for(lambda: H.port_accepts(cls.proxy.admin_port), H.T(10), what="the admin API")

    def scrape(self, accept=None):
        with H.Client(self.proxy.admin_port, timeout=H.T(30)) as c:
            r = c.request("GET", "/metrics", host="admin",
                          headers=[("Accept", accept)] if accept else None)
        self.assertEqual(r.status, 200, r.body)
        return r

    def samples(self):
        r = self.scrape()
        self.assertEqual(r.header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8")
        return parse(r.body.decode())

    def settled(self, before, want):
        """The samples once every (name, labels): delta of `want` is reached (a request is
        counted when its log line is written, just after its last byte left: a scrape may
        come first); then every delta must be exact."""
        got = [None]

        def check():
            got[0] = self.samples()
            return all(val(got[0], n, **l) - val(before, n, **l) >= d for (n, l), d in want)
        try:
            H.wait_for(check, H.T(5), what="the counters")
        except AssertionError:
            pass  # the exact comparison below says which
        for (n, l), d in want:
            self.assertEqual(val(got[0], n, **l) - val(before, n, **l), d, (n, l))
        return got[0]

    def promtool_check(self, text):
        p = subprocess.run([self.promtool, "check", "metrics"], input=text, capture_output=True,
                           timeout=H.T(60))
        self.assertEqual(p.returncode, 0, "promtool check metrics:\n%s%s\n--- text:\n%s" %
                         (p.stdout.decode(), p.stderr.decode(), text.decode()[:3000]))

    def test_requests_by_route_and_class(self):
        before = self.samples()
        for _ in range(5):
            self.assertEqual(self.get("/api/fixed").status, 200)
        for _ in range(3):
            self.assertEqual(self.get("/api/status?code=503").status, 503)
        for _ in range(2):
            self.assertEqual(self.get("/local").status, 201)
        self.assertEqual(self.get("/exact/status?code=404").status, 404)
        after = self.settled(before, [
            (("luaproxy_requests_total", dict(route="api", code="2xx")), 5),
            (("luaproxy_requests_total", dict(route="api", code="5xx")), 3),
            (("luaproxy_requests_total", dict(route="route#2", code="2xx")), 2),
            (("luaproxy_requests_total", dict(route="route#3", code="4xx")), 1),
            (("luaproxy_upstream_response_seconds_count", dict(upstream="a")), 9)])

        def d(name, **l):
            return val(after, name, **l) - val(before, name, **l)
        self.assertEqual(d("luaproxy_requests_total", route="api", code="2xx"), 5)
        self.assertEqual(d("luaproxy_requests_total", route="api", code="5xx"), 3)
        self.assertEqual(d("luaproxy_requests_total", route="route#2", code="2xx"), 2)
        self.assertEqual(d("luaproxy_requests_total", route="route#3", code="4xx"), 1)
        self.assertEqual(d("luaproxy_requests_total", route="route#3", code="2xx"), 0)
        # Histograms: the count moves with the requests; buckets are cumulative.
        self.assertEqual(d("luaproxy_request_duration_seconds_count", route="api"), 8)
        self.assertEqual(d("luaproxy_request_duration_seconds_bucket", route="api", le="+Inf"),
                         8)
        self.assertGreater(d("luaproxy_request_duration_seconds_sum", route="api"), 0)
        self.assertLessEqual(val(after, "luaproxy_request_duration_seconds_bucket", route="api",
                                 le="0.01"),
                             val(after, "luaproxy_request_duration_seconds_bucket", route="api",
                                 le="0.1"))
        self.assertEqual(d("luaproxy_upstream_response_seconds_count", upstream="a"), 9)
        self.assertGreater(d("luaproxy_response_bytes_total", route="api"), 0)
        self.assertGreaterEqual(d("luaproxy_connections_accepted_total"), 11)

    def test_no_route_is_empty_label(self):
        # Every prefix above is specific: / matches none.
        before = self.samples()
        self.assertEqual(self.get("/nothing-here").status, 404)
        self.settled(before, [(("luaproxy_requests_total", dict(route="", code="4xx")), 1)])

    def test_plugin_metrics(self):
        before = self.samples()
        for kind in ("x", "x", "y"):
            self.get("/api/fixed", headers=[("X-Kind", kind)])
        after = self.settled(before, [
            (("luaproxy_requests_total", dict(route="api", code="2xx")), 3)])
        self.assertEqual(val(after, "myplugin_hits_total", kind="x") -
                         val(before, "myplugin_hits_total", kind="x"), 2)
        self.assertEqual(val(after, "myplugin_hits_total", kind="y") -
                         val(before, "myplugin_hits_total", kind="y"), 1)
        self.assertEqual(val(after, "myplugin_size_bucket", kind="y", le="10.0") -
                         val(before, "myplugin_size_bucket", kind="y", le="10.0"), 1)
        self.assertEqual(val(after, "myplugin_size_bucket", kind="y", le="1.0") -
                         val(before, "myplugin_size_bucket", kind="y", le="1.0"), 0)
        self.assertGreaterEqual(val(after, "myplugin_level"), 7)

    def test_lua_errors_watchdog_and_cost(self):
        before = self.samples()
        self.assertEqual(self.get("/api/fixed", headers=[("X-Fail", "1")]).status, 500)
        self.assertEqual(self.get("/api/fixed", headers=[("X-Spin", "1")]).status, 500)
        self.get("/api/fixed")
        after = self.settled(before, [
            (("luaproxy_lua_errors_total", dict(plugin="metered")), 2),
            (("luaproxy_lua_watchdog_stops_total", dict(plugin="metered")), 1)])
        cost = val(after, "luaproxy_lua_plugin_seconds_total", plugin="metered", phase="request")
        self.assertGreater(cost, 0)
        self.assertLess(cost, 10)

    def test_promtool_and_openmetrics(self):
        self.get("/api/fixed")
        self.get("/nothing-here")
        r = self.scrape()
        self.promtool_check(r.body)
        om = self.scrape("application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
        self.assertEqual(om.header("Content-Type"),
                         "application/openmetrics-text; version=1.0.0; charset=utf-8")
        text = om.body.decode()
        self.assertTrue(text.endswith("# EOF\n"), text[-200:])
        self.assertIn("# TYPE luaproxy_requests counter\n", text)
        self.assertIn("luaproxy_requests_total{", text)
        # promtool reads the Prometheus text format only: OpenMetrics is checked by shape.
        self.assertNotIn("# TYPE luaproxy_requests_total", text)
        self.assertIn('le="+Inf"', text)

    def test_reload_keeps_counters_monotonic(self):
        start = self.samples()
        for _ in range(4):
            self.get("/api/fixed")
        before = self.settled(start, [
            (("luaproxy_requests_total", dict(route="api", code="2xx")), 4)])
        gen = val(before, "luaproxy_config_generation")
        self.reload()
        after = self.samples()
        self.assertEqual(val(after, "luaproxy_config_generation"), gen + 1)
        for key, v in before.items():
            if key[0].endswith(("_total", "_count", "_bucket", "_sum")) and key in after:
                self.assertGreaterEqual(after[key], v, key)
        self.assertGreaterEqual(val(after, "luaproxy_requests_total", route="api", code="2xx"), 4)
        self.assertGreaterEqual(val(after, "luaproxy_reloads_total", result="ok"), 1)
        self.get("/api/fixed")
        self.settled(after, [(("luaproxy_requests_total", dict(route="api", code="2xx")), 1)])

    def test_inflight(self):
        import threading
        target = self.a.address()
        done = []
        th = threading.Thread(target=lambda: done.append(self.get("/api/delay?ms=1500").status))
        th.start()
        try:
            H.wait_for(lambda: val(self.samples(), "luaproxy_upstream_inflight", upstream="a",
                                   target=target) == 1, H.T(5), what="one try in flight")
        finally:
            th.join(H.T(10))
        self.assertEqual(done, [200])
        H.wait_for(lambda: val(self.samples(), "luaproxy_upstream_inflight", upstream="a",
                               target=target) == 0, H.T(5), what="no try in flight")

    def test_p2c_ewma(self):
        self.assertEqual(self.get("/p2c/delay?ms=20").status, 200)
        got = [0]

        def check():
            got[0] = val(self.samples(), "luaproxy_upstream_latency_ewma_seconds",
                         upstream="b", target=self.a.address())
            return got[0] > 0
        H.wait_for(check, H.T(5), what="an EWMA")
        self.assertGreater(got[0], 0.015)
        self.assertLess(got[0], 5)
        # Only p2c keeps one.
        self.assertNotIn(("luaproxy_upstream_latency_ewma_seconds",
                          frozenset({("upstream", "a"), ("target", self.a.address())})),
                         self.samples())

    def test_head_and_method(self):
        r = self.admin("HEAD", "/metrics")
        self.assertEqual(r.status, 200)
        r = self.admin("POST", "/metrics")
        self.assertEqual(r.status, 405)

    def test_target_health_and_gauges(self):
        s = self.samples()
        self.assertEqual(val(s, "luaproxy_upstream_target_healthy", upstream="a",
                             target=self.a.address()), 1)
        self.assertGreaterEqual(val(s, "luaproxy_connections_open"), 0)
        self.assertIn(("luaproxy_lua_memory_bytes", frozenset({("worker", "1")})), s)


class MetricsOffTest(RT.ReloadTestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.proxy = cls.start_reload_proxy({"a": H.upstream(cls.a.address())},
                                           [RT.route("/", upstream="a")],
                                           metrics={"enabled": False})
        H.wait_for(lambda: H.port_accepts(cls.proxy.admin_port), H.T(10), what="the admin API")

    def test_off_counts_nothing_per_route(self):
        self.get("/fixed")
        r = self.admin("GET", "/metrics")
        self.assertEqual(r.status, 200)
        s = parse(r.body.decode())
        self.assertEqual(val(s, "luaproxy_requests_total", route="route#1", code="2xx"), 0)
        self.assertGreaterEqual(val(s, "luaproxy_connections_accepted_total"), 1)


if __name__ == "__main__":
    H.main()
