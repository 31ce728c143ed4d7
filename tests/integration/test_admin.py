#!/usr/bin/env python3
"""The admin API (docs/admin-api.md): GET /status, POST /reload, GET /config, JSON errors
for unknown paths (404) and wrong methods (405), secrets redacted, one request per
connection, never reachable on a public listener, and its address following reloads."""

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


class AdminTest(RT.ReloadTestCase):
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
        for method, path in (("GET", "/"), ("GET", "/nope"), ("POST", "/statusx"),
                             ("GET", "/h")):
            j = self.admin_json(method, path, 404)
            self.assertIs(j["ok"], False)
            self.assertIsInstance(j["error"], str)

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


class AdminNoCatchAllTest(RT.ReloadTestCase):
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


class AdminAddressReloadTest(RT.ReloadTestCase):
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


if __name__ == "__main__":
    H.main()
