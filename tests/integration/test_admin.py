#!/usr/bin/env python3
"""The admin API (docs/admin-api.md): GET /status, POST /reload, GET /config, JSON errors
for unknown paths (404) and wrong methods (405), secrets redacted, one request per
connection, never reachable on a public listener, and its address following reloads."""

import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reload"))
import reloadtest as RT  # noqa: E402
from reloadtest import H  # noqa: E402

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def routes_v(version, catch_all=True):
    rs = [RT.route("/h", handler=RT.respond_handler(version))]
    if catch_all:
        rs.append(RT.route("/", upstream="a",
                           plugins=[{"name": "reloadfix", "label": "L", "api_token": "s3cr3t",
                                     "password": "hunter2"}]))
    return rs


class AdminCase(RT.ReloadTestCase):
    @classmethod
    def start_reload_proxy(cls, *a, **kw):
        # The admin listener opens just after the proxy's own: wait for it too.
        p = super().start_reload_proxy(*a, **kw)
        H.wait_for(lambda: H.port_accepts(p.admin_port), H.T(10), what="the admin API")
        return p


class AdminTest(AdminCase):
    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.proxy = cls.start_reload_proxy({"a": H.upstream(cls.a.address())}, routes_v("v1"),
                                           workers=2)

    def test_status_fields_and_types(self):
        j = self.status()
        types = {"ok": bool, "version": str, "pid": int, "started_at": str, "uptime": (int, float),
                 "generation": int, "loaded_at": str, "workers": int, "connections": int,
                 "requests": int, "reloads": int, "reloads_failed": int, "config": str}
        for k, t in types.items():
            self.assertIn(k, j)
            self.assertIsInstance(j[k], t, "%s: %r" % (k, j[k]))
        self.assertIs(j["ok"], True)
        self.assertEqual(j["pid"], self.proxy.pid)
        self.assertEqual(j["workers"], 2)
        self.assertEqual(j["config"], os.path.realpath(self.proxy.config_path))
        self.assertRegex(j["started_at"], ISO)
        self.assertRegex(j["loaded_at"], ISO)
        self.assertGreaterEqual(j["uptime"], 0)
        self.assertGreaterEqual(j["loaded_at"], j["started_at"])
        self.assertGreaterEqual(j["generation"], 1)
        rc, out, _ = self.cli("-v")
        self.assertIn(j["version"], out)

    def test_status_query_string_and_head(self):
        self.assertIs(self.admin_json("GET", "/status?pretty=1")["ok"], True)
        r = self.admin("HEAD", "/status")
        self.assertEqual(r.status, 200)

    def test_head_has_no_body(self):
        c = H.Client(self.proxy.admin_port)
        self.addCleanup(c.close)
        c.send(H.build_request("HEAD", "/status", host="admin"))
        r = c.read_response("HEAD")
        self.assertEqual(r.status, 200)
        closed, extra = c.wait_closed(H.T(5))
        self.assertTrue(closed)
        self.assertEqual(extra, b"", "bytes after the head of a HEAD answer")

    def test_requests_and_connections_count(self):
        before = self.status()["requests"]
        for _ in range(5):
            self.assertEqual(self.version(), self.version())
        self.assertGreaterEqual(self.status()["requests"], before + 10)
        c = H.Client(self.proxy.port)
        self.addCleanup(c.close)
        self.assertEqual(c.request("GET", "/h").status, 200)
        self.assertGreaterEqual(self.status()["connections"], 1)

    def test_generation_and_counters(self):
        s0 = self.status()
        self.rewrite(routes=routes_v("v2"))
        j = self.reload()
        self.assertEqual(j["generation"], s0["generation"] + 1)
        s1 = self.status()
        self.assertEqual(s1["generation"], s0["generation"] + 1)
        self.assertEqual(s1["reloads"], s0["reloads"] + 1)
        self.assertEqual(s1["reloads_failed"], s0["reloads_failed"])
        self.assertGreaterEqual(s1["loaded_at"], s0["loaded_at"])
        self.assertEqual(s1["started_at"], s0["started_at"])
        self.assertEqual(s1["pid"], s0["pid"])
        good = H.config_text(self.proxy.cfg)
        self.write_raw(good.replace("return {", "return {{", 1))
        try:
            j = self.reload_fails()
        finally:
            self.write_raw(good)
        self.assertEqual(j["generation"], s1["generation"])
        self.assertRegex(j["error"], r"proxy\.lua:\d+: ")
        s2 = self.status()
        self.assertEqual(s2["generation"], s1["generation"])
        self.assertEqual(s2["reloads_failed"], s1["reloads_failed"] + 1)
        self.assertEqual(s2["reloads"], s1["reloads"])
        self.assertEqual(s2["loaded_at"], s1["loaded_at"])

    def test_config_redacted(self):
        j = self.admin_json("GET", "/config")
        self.assertIs(j["ok"], True)
        self.assertEqual(j["path"], os.path.realpath(self.proxy.config_path))
        cfg = j["config"]
        self.assertEqual(cfg["workers"], 2)
        self.assertEqual(cfg["listen"], self.proxy.cfg["listen"])
        self.assertEqual(cfg["admin"], self.proxy.cfg["admin"])
        self.assertEqual(cfg["routes"][0]["handler"], "<function>")
        plug = cfg["routes"][1]["plugins"][0]
        self.assertEqual(plug["name"], "reloadfix")
        self.assertEqual(plug["label"], "L")
        self.assertEqual(plug["api_token"], "<redacted>")
        self.assertEqual(plug["password"], "<redacted>")
        r = self.admin("GET", "/config")
        self.assertNotIn(b"s3cr3t", r.body)
        self.assertNotIn(b"hunter2", r.body)

    def test_config_shows_the_live_generation(self):
        self.rewrite(routes=routes_v("v3"))
        self.reload()
        live = self.admin_json("GET", "/config")["config"]
        # A refused config does not show up in /config.
        good = H.config_text(self.proxy.cfg)
        cfg = dict(self.proxy.cfg)
        cfg["routes"] = [RT.route("/", upstream="nope")]
        self.write_raw(H.config_text(cfg))
        try:
            self.reload_fails()
            self.assertEqual(self.admin_json("GET", "/config")["config"], live)
        finally:
            self.write_raw(good)
        # A successful one does.
        self.rewrite(routes=routes_v("v4", catch_all=False))
        self.reload()
        self.assertEqual(len(self.admin_json("GET", "/config")["config"]["routes"]), 1)
        self.rewrite(routes=routes_v("v5"))
        self.reload()

    def test_404_json(self):
        # GET / is the status page (test_admin_page.py); /index.html is not.
        for method, path in (("GET", "/index.html"), ("GET", "/nope"), ("POST", "/statusx"),
                             ("GET", "/h")):
            j = self.admin_json(method, path, 404)
            self.assertIs(j["ok"], False)
            self.assertIsInstance(j["error"], str)
        # The 404 names every endpoint docs/admin-api.md's table lists, and no other.
        with open(os.path.join(H.REPO, "docs", "admin-api.md")) as f:
            doc = re.findall(r"^\| \[`(/[^`]*)`\]", f.read(), re.M)
        said = re.findall(r"(?:GET|POST|DELETE|GET/POST) (/[^,)]*)", j["error"])
        self.assertEqual(sorted(set(doc)), sorted(set(said)), j["error"])
        self.assertIn("GET /ready", j["error"])

    def test_405_json(self):
        for method, path in (("POST", "/status"), ("GET", "/reload"), ("PUT", "/reload"),
                             ("DELETE", "/config"), ("POST", "/config")):
            j = self.admin_json(method, path, 405)
            self.assertIs(j["ok"], False)
            self.assertIn(path, j["error"])

    def test_one_request_per_connection(self):
        c = H.Client(self.proxy.admin_port)
        self.addCleanup(c.close)
        c.send(H.build_request("GET", "/status", host="admin") +
               H.build_request("GET", "/status", host="admin"))
        r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertIn("close", r.tokens("connection"))
        closed, extra = c.wait_closed(H.T(5))
        self.assertTrue(closed)
        self.assertEqual(extra, b"")

    def test_bad_request(self):
        c = H.Client(self.proxy.admin_port)
        self.addCleanup(c.close)
        c.send(b"GARBAGE\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 400)
        self.assertIs(r.json()["ok"], False)

    def test_not_on_the_public_listener(self):
        # With a catch-all route /status is proxied to the origin ...
        r = self.get("/status")
        self.assertEqual(r.header("X-Origin-Id"), "a")
        self.assertEqual(r.body, b"status 200\n")
        r = self.get("/reload", method="POST", body=b"")
        self.assertEqual(r.header("X-Origin-Id"), "a")
        self.assertNotEqual(r.header("Content-Type"), "application/json")

    def test_admin_port_serves_no_traffic(self):
        r = self.admin("GET", "/h")
        self.assertEqual(r.status, 404)
        self.assertIsNone(r.header("X-Version"))


class AdminNoCatchAllTest(AdminCase):
    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.proxy = cls.start_reload_proxy({"a": H.upstream(cls.a.address())},
                                           routes_v("v1", catch_all=False))

    def test_status_on_public_listener_is_404(self):
        gen_before = self.status()["generation"]
        r = self.get("/status")
        self.assertEqual(r.status, 404)
        self.assertNotIn(b'"generation"', r.body)
        r = self.get("/reload", method="POST", body=b"")
        self.assertEqual(r.status, 404)
        self.assertEqual(self.status()["generation"], gen_before)


class AdminAddressReloadTest(AdminCase):
    """The admin address follows the config: moved by a reload, the old port stops and the
    new one answers; removed, the API goes (SIGHUP still reloads)."""

    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.proxy = cls.start_reload_proxy({"a": H.upstream(cls.a.address())}, routes_v("v1"))

    def test_move_then_remove(self):
        old = self.proxy.admin_port
        new = H.reserved_port()
        self.rewrite(admin={"address": "127.0.0.1:%d" % new}, routes=routes_v("v2"))
        j = self.reload()  # answered on the old port
        self.assertIs(j["ok"], True)
        self.proxy.admin_port = new
        self.assertEqual(self.status()["generation"], j["generation"])
        H.wait_for(lambda: H.connect_refused(old), H.T(5), what="old admin port closed")
        self.assertEqual(self.version(), "v2")
        # removed: the API goes away; SIGHUP brings it back
        cfg = dict(self.proxy.cfg)
        del cfg["admin"]
        self.write_raw(H.config_text(cfg))
        self.reload()
        H.wait_for(lambda: H.connect_refused(new), H.T(5), what="admin API gone")
        self.proxy.write_config()
        import signal
        self.proxy.signal(signal.SIGHUP)
        H.wait_for(lambda: H.port_accepts(new), H.T(5), what="admin API back")
        self.assertIs(self.status()["ok"], True)


class AdminJSONTest(AdminCase):
    """Request bodies are parsed as JSON (a real decoder, not a substring search) and every
    answer is encoded by one (issue #10, defect 7)."""

    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.target = cls.a.address()
        cls.proxy = cls.start_reload_proxy({"a": H.upstream(cls.target)}, routes_v("v1"))

    def post_state(self, body=None, query="", status=200, headers=None):
        path = "/upstreams/a/targets/%s%s" % (self.target, query)
        with H.Client(self.proxy.admin_port, timeout=H.T(30)) as c:
            r = c.request("POST", path, headers, body, host="admin")
        self.assertEqual(r.status, status, r.body)
        self.assertEqual(r.header("Content-Type"), "application/json", r)
        j = r.json()
        self.assertIs(j["ok"], status == 200, j)
        return j

    def tearDown(self):
        self.post_state(query="?state=enable")

    def test_other_members_do_not_change_the_state(self):
        self.post_state(query="?state=drain")
        j = self.post_state('{"state":"enable","note":"do not disable"}')
        self.assertEqual(j["state"], "up")
        j = self.post_state('{"note":"enable it later","state":"drain"}')
        self.assertEqual(j["state"], "drained")

    def test_escapes_are_decoded(self):
        j = self.post_state('{"state":"dis\\u0061ble"}')
        self.assertEqual(j["state"], "disabled")
        self.assertEqual(j["address"], self.target)

    def test_query_parameter_still_works(self):
        self.assertEqual(self.post_state(query="?state=drain")["state"], "drained")
        self.assertEqual(self.post_state(query="?x=1&state=disable")["state"], "disabled")

    def test_chunked_body(self):
        body = H.chunked(b'{"state": "drain"}', sizes=[3, 5, 1])
        j = self.post_state(body, headers=[("Transfer-Encoding", "chunked")])
        self.assertEqual(j["state"], "drained")

    def test_expect_100_continue(self):
        body = b'{"state": "drain"}'
        with H.Client(self.proxy.admin_port, timeout=H.T(10)) as c:
            c.send(H.build_request("POST", "/upstreams/a/targets/%s" % self.target, host="admin",
                                   headers=[("Expect", "100-continue"),
                                            ("Content-Length", str(len(body)))]))
            r = c.read_response(stop_at_interim=True)
            self.assertEqual(r.status, 100)
            c.send(body)
            r = c.read_response("POST")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["state"], "drained")

    def test_malformed_json_is_400(self):
        for body in ('{"state": "drain', '{"state": drain}', 'drain', '{"state":"drain"} x',
                     '\xff\xfe'):
            with self.subTest(body=body):
                j = self.post_state(body, status=400)
                self.assertIn("JSON", j["error"])
        self.assertEqual(self.target_state(), "up")

    def test_wrong_shapes_are_400(self):
        for body in ('["drain"]', '{"state": 1}', '{"state": null}', '{"state": "nope"}',
                     '{"State": "drain"}', '"drain"', '{}'):
            with self.subTest(body=body):
                self.post_state(body, status=400)
        self.assertEqual(self.target_state(), "up")

    def target_state(self):
        j = self.admin_json("GET", "/upstreams")
        return j["upstreams"][0]["targets"][0]["state"]

    def test_answers_are_json_with_escapes(self):
        # A refused reload's error holds quotes, backslashes and a newline.
        good = H.config_text(self.proxy.cfg)
        self.write_raw('error("a \\"quoted\\" \\\\ back\\nslash\\1")\n')
        try:
            r = self.admin("POST", "/reload")
        finally:
            self.write_raw(good)
        self.assertEqual(r.status, 500, r.body)
        j = json.loads(r.body)
        self.assertIn('a "quoted" \\ back\nslash\x01', j["error"])
        self.assertIs(j["ok"], False)
        self.assertIsInstance(j["generation"], int)
        j = self.admin_json("GET", "/upstreams")
        self.assertEqual(j["upstreams"][0]["targets"][0]["address"], self.target)
        self.assertIsInstance(j["upstreams"][0]["targets"][0]["weight"], int)
        self.assertIs(j["upstreams"][0]["active_checks"], False)


class AdminLimitsTest(AdminCase):
    """Bounded admin connections (issue #10, defect 5): an idle or slow request is cut after
    ADMIN_TIMEOUT, no more than ADMIN_MAX_CONNS connections at once, and request heads and
    bodies have a size limit."""

    TIMEOUT = 10
    MAX_CONNS = 64

    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.proxy = cls.start_reload_proxy({"a": H.upstream(cls.a.address())}, routes_v("v1"))

    def raw(self, data, timeout=None):
        c = H.Client(self.proxy.admin_port, timeout=timeout or H.T(10))
        self.addCleanup(c.close)
        c.send(data)
        return c

    def test_idle_and_slow_connections_are_closed(self):
        idle = H.Client(self.proxy.admin_port, timeout=H.T(30))
        self.addCleanup(idle.close)
        slow = self.raw(b"GET /status HTTP/1.1\r\nHost: ad", timeout=H.T(30))
        body = self.raw(b"POST /reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 10\r\n\r\n12",
                        timeout=H.T(30))
        t0 = time.monotonic()
        r = slow.read_response()
        self.assertEqual(r.status, 408, r.body)
        self.assertIs(r.json()["ok"], False)
        self.assertEqual(body.read_response().status, 408)
        closed, _ = idle.wait_closed(H.T(30))
        self.assertTrue(closed, "an idle admin connection stays open")
        took = time.monotonic() - t0
        self.assertGreater(took, self.TIMEOUT - 1)
        self.assertLess(took, H.T(self.TIMEOUT + 5))
        self.assertIs(self.status()["ok"], True)

    def test_connection_cap(self):
        conns = []
        try:
            for _ in range(self.MAX_CONNS):
                conns.append(H.Client(self.proxy.admin_port, timeout=H.T(10)))
            # Every one of them is accepted (and counted) before the next is tried.
            conns[-1].send(b"GET /status HTTP/1.1\r\n")
            time.sleep(H.T(1.0))  # the main loop accepts them (slower under sanitizers)
            # Under heavy load the kernel may hand a later connection to accept() before an
            # earlier one whose handshake it completed late: an extra connection can then be
            # served while the cap is not yet full. A few tries must meet the cap.
            statuses = []
            for _ in range(5):
                over = H.Client(self.proxy.admin_port, timeout=H.T(10))
                self.addCleanup(over.close)
                over.send(H.build_request("GET", "/status", host="admin"))
                r = over.read_response()
                statuses.append(r.status)
                if r.status == 503:
                    break
                time.sleep(H.T(0.5))
            self.assertEqual(r.status, 503, statuses)
            self.assertIn("too many", r.json()["error"])
            closed, _ = over.wait_closed(H.T(5))
            self.assertTrue(closed)
        finally:
            for c in conns:
                c.close()
        H.wait_for(lambda: self.admin("GET", "/status").status == 200, H.T(10),
                   what="the admin API serves again")
        H.wait_for(lambda: self.log_lines("admin API: too many connections"), H.T(5),
                   what="a log line about the cap")

    def test_large_head_is_431_and_long_target_414(self):
        c = self.raw(H.build_request("GET", "/status", host="admin",
                                     headers=[("X-Big", "x" * 9000)]))
        r = c.read_response()
        self.assertEqual(r.status, 431, r.body)
        self.assertIs(r.json()["ok"], False)
        c = self.raw(H.build_request("GET", "/status?" + "q" * 4000, host="admin"))
        r = c.read_response()
        self.assertEqual(r.status, 414, r.body)
        self.assertIs(r.json()["ok"], False)

    def test_large_body_is_413(self):
        # Announced: answered before the body is sent.
        c = self.raw(b"POST /reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 100000\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 413, r.body)
        self.assertIs(r.json()["ok"], False)
        # Chunked: cut when it passes the limit.
        c = self.raw(b"POST /reload HTTP/1.1\r\nHost: admin\r\nTransfer-Encoding: chunked\r\n"
                     b"\r\n" + b"1000\r\n" + b"x" * 4096 + b"\r\n" + b"1000\r\n" +
                     b"x" * 4096 + b"\r\n" + b"1000\r\n" + b"x" * 4096 + b"\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 413, r.body)
        self.assertIs(self.status()["ok"], True)


if __name__ == "__main__":
    H.main()
