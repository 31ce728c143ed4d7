#!/usr/bin/env python3
"""Routes changed without a reload (docs/admin-api.md, POST /routes): add, replace and remove,
one route or a batch, atomically; validated (a bad batch changes nothing); switched in every
worker while requests run (0 failed requests under load); persisted to the overlay file next
to the config, which a reload applies again."""

import json
import os
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reload"))
import reloadtest as RT  # noqa: E402
from reloadtest import H  # noqa: E402


class AdminRoutesTest(RT.ReloadTestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.b = cls.start_origin("b")
        ups = {"a": H.upstream(cls.a.address()), "b": H.upstream(cls.b.address())}
        # The last route has a handler: what a replace through the API drops.
        cls.routes = [RT.route("/fixed", upstream="a"), RT.route("/", upstream="a"),
                      RT.route("/h", handler=RT.respond_handler("v1"))]
        cls.proxy = cls.start_reload_proxy(ups, list(cls.routes), workers=2)
        H.wait_for(lambda: H.port_accepts(cls.proxy.admin_port), H.T(10), what="the admin API")

    def setUp(self):
        # Every test starts from the config's table: no overlay, reloaded.
        overlay = self.proxy.config_path + ".routes.json"
        if os.path.exists(overlay):
            os.unlink(overlay)
        self.rewrite(routes=list(self.routes))
        self.reload()

    def post(self, ops, status=200):
        r = self.admin("POST", "/routes", body=json.dumps({"ops": ops}).encode())
        self.assertEqual(r.status, status, r.body)
        return r.json()

    def origin(self, path="/fixed?size=3", host="a.test"):
        r = H.get(self.proxy.port, path, host=host)
        return r.status, r.header("X-Origin-Id")

    def test_add_replace_remove(self):
        self.assertEqual(self.origin(), (200, "a"))
        j = self.post([{"op": "add", "at": 1,
                        "route": {"match": {"prefix": "/fixed", "host": "b.test"}, "upstream": "b"}}])
        self.assertIs(j["ok"], True)
        self.assertEqual(j["routes"], 4)
        self.assertEqual(self.origin(host="b.test"), (200, "b"))
        self.assertEqual(self.origin(host="a.test"), (200, "a"))
        table = self.admin_json("GET", "/routes")
        self.assertEqual(table["routes"], 4)
        self.assertEqual(table["admin_routes"], 1)
        self.assertEqual([e["config_route"] for e in table["table"]], [None, 1, 2, 3])
        # Replace the config's catch-all (now routes[3]) with one to b, then remove routes[1].
        self.post([{"op": "replace", "index": 3, "route": {"upstream": "b"}},
                   {"op": "remove", "index": 1}])
        self.assertEqual(self.origin("/x", host="b.test")[1], "b")
        self.assertEqual(self.origin(host="b.test"), (200, "a"))  # routes[1] again: /fixed -> a
        self.assertEqual(self.admin_json("GET", "/routes")["routes"], 3)

    def test_params_and_regex_routes(self):
        self.post([{"op": "add", "at": 1,
                    "route": {"match": {"regex": "^/fixed$", "methods": ["POST"]}, "upstream": "b"}}])
        r = H.get(self.proxy.port, "/fixed?size=2", method="POST", body=b"x")
        self.assertEqual(r.header("X-Origin-Id"), "b")
        self.assertEqual(self.origin(), (200, "a"))

    def test_bad_batches_change_nothing(self):
        before = self.admin_json("GET", "/routes")
        bad = [
            [{"op": "add", "route": {"upstream": "nope"}}],
            [{"op": "add", "route": {"match": {"regex": "^("}, "upstream": "b"}}],
            [{"op": "remove", "index": 9}],
            [{"op": "add", "route": {"upstream": "b", "plugins": []}}],
            [{"op": "add", "route": {"match": {"prefix": "/", "path": "/x"}, "upstream": "b"}}],
            [{"op": "add", "route": {"upstream": "b", "strip_prefix": True}}],
            # What the config's schema refuses, the API refuses too.
            [{"op": "add", "route": {"match": {"host": "*"}, "upstream": "b"}}],
            [{"op": "add", "route": {"match": {"host": "a.*.test"}, "upstream": "b"}}],
            [{"op": "add", "route": {"match": {"methods": "GET"}, "upstream": "b"}}],
            [{"op": "add", "route": {"match": {"methods": ["G T"]}, "upstream": "b"}}],
            [{"op": "add", "route": {"match": {"prefix": "fixed"}, "upstream": "b"}}],
            [{"op": "add", "route": {"match": {"headers": {"a b": "1"}}, "upstream": "b"}}],
            [{"op": "add", "route": {"match": {"sni": "*"}, "upstream": "b"}}],
            [{"op": "add", "route": {"name": "a b", "upstream": "b"}}],
            [{"op": "add", "route": {"name": 7, "upstream": "b"}}],
            # A name is unique: a config route's, or another admin route's.
            [{"op": "add", "route": {"name": "route#1", "upstream": "b"}}],
            [{"op": "add", "route": {"name": "x", "upstream": "b"}},
             {"op": "add", "route": {"name": "x", "upstream": "a"}}],
            # One good operation and one bad: neither applies.
            [{"op": "add", "at": 1, "route": {"upstream": "b"}}, {"op": "frobnicate"}],
        ]
        for ops in bad:
            with self.subTest(ops=ops):
                j = self.post(ops, status=400)
                self.assertIs(j["ok"], False)
                self.assertTrue(j["error"])
        r = self.admin("POST", "/routes", body=b"{not json")
        self.assertEqual(r.status, 400)
        self.assertEqual(self.admin_json("GET", "/routes"), before)
        self.assertEqual(self.origin(), (200, "a"))
        self.assertFalse(os.path.exists(self.proxy.config_path + ".routes.json"))

    def test_persisted_and_applied_by_the_next_load(self):
        self.post([{"op": "add", "at": 1, "route": {"match": {"prefix": "/fixed"}, "upstream": "b"}}])
        overlay = self.proxy.config_path + ".routes.json"
        with open(overlay) as f:
            self.assertEqual(len(json.load(f)["ops"]), 1)
        self.reload()
        self.assertEqual(self.origin(), (200, "b"))
        self.assertEqual(self.admin_json("GET", "/routes")["admin_routes"], 1)
        # -t applies it too, and names the file when it no longer fits the config.
        with open(overlay, "w") as f:
            json.dump({"ops": [{"op": "remove", "index": 7}]}, f)
        self.reload_fails()
        self.assertEqual(self.origin(), (200, "b"))  # the running table stays

    def test_overlay_refused_when_the_config_routes_change(self):
        # The overlay names routes by position: after a route is inserted at the top of the
        # config, "remove routes[1]" would remove another route. The load is refused.
        self.post([{"op": "remove", "index": 1}])  # /fixed -> a goes: the catch-all takes it
        overlay = self.proxy.config_path + ".routes.json"
        with open(overlay) as f:
            doc = json.load(f)
        self.assertRegex(doc["config_routes"], "^[0-9a-f]{16}$")
        self.rewrite(routes=[RT.route("/new", upstream="b")] + list(self.routes))
        j = self.reload_fails()
        self.assertIn(overlay, j["error"])
        self.assertIn("other config routes", j["error"])
        self.assertIn("delete", j["error"])
        self.assertEqual(self.admin_json("GET", "/routes")["routes"], 2)  # the old table serves
        # A config route's other settings count too (its upstream here).
        changed = list(self.routes)
        changed[0] = RT.route("/fixed", upstream="b")
        self.rewrite(routes=changed)
        self.assertIn(overlay, self.reload_fails()["error"])
        # Back to the routes it was made against: applied again.
        self.rewrite(routes=list(self.routes))
        self.reload()
        self.assertEqual(self.admin_json("GET", "/routes")["routes"], 2)
        # A file without the fingerprint (written by hand) is refused too.
        with open(overlay, "w") as f:
            json.dump({"ops": [{"op": "remove", "index": 1}]}, f)
        self.assertIn("fingerprint", self.reload_fails()["error"])

    def test_admin_routes_named_counted_and_shown(self):
        self.post([{"op": "add", "at": 1, "route": {"name": "canary", "upstream": "b",
                                                    "match": {"prefix": "/fixed", "host": "b.test",
                                                              "methods": ["GET"],
                                                              "headers": {"x-c": True}}}},
                   {"op": "add", "at": 1, "route": {"match": {"path": "/fixed/:id"},
                                                    "upstream": "b"}}])
        table = self.admin_json("GET", "/routes")["table"]
        self.assertEqual(table[0], {"index": 1, "name": "admin#2", "config_route": None,
                                    "match": {"path": "/fixed/:id"}, "upstream": "b",
                                    "strip_prefix": False})
        self.assertEqual(table[1]["name"], "canary")
        self.assertEqual(table[1]["match"], {"host": "b.test", "prefix": "/fixed",
                                             "methods": ["GET"], "headers": {"x-c": True}})
        self.assertEqual(table[2], {"index": 3, "name": "route#1", "config_route": 1,
                                    "match": {"prefix": "/fixed"}, "upstream": "a",
                                    "strip_prefix": False})
        self.assertEqual((table[4]["name"], table[4]["upstream"]), ("route#3", None))
        # Series are kept by name for the life of the process: count from here.
        before = {n: self.count(n) for n in ("canary", "admin#2", "")}
        r = H.get(self.proxy.port, "/fixed?size=3", host="b.test", headers={"X-C": "1"})
        self.assertEqual(r.header("X-Origin-Id"), "b")
        self.assertEqual(H.get(self.proxy.port, "/fixed/7?size=3").header("X-Origin-Id"), "b")
        H.wait_for(lambda: self.count("canary") == before["canary"] + 1 and
                   self.count("admin#2") == before["admin#2"] + 1, H.T(10),
                   what="admin routes counted under their names")
        self.assertEqual(self.count(""), before[""])  # not as "no route matched"
        # The next load replays the overlay: the same names, the same series.
        self.reload()
        self.assertEqual([e["name"] for e in self.admin_json("GET", "/routes")["table"][:2]],
                         ["admin#2", "canary"])

    def count(self, route):
        """luaproxy_requests_total of `route`, all status classes."""
        text = self.admin("GET", "/metrics").body.decode()
        pfx = 'luaproxy_requests_total{route="%s",' % route
        return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(pfx))

    def test_replace_warns_about_what_it_drops(self):
        j = self.post([{"op": "replace", "index": 3, "route": {"upstream": "b",
                                                               "match": {"prefix": "/h"}}}])
        dropped = [w for w in j["warnings"] if "dropped" in w]
        self.assertEqual(len(dropped), 1, j)
        self.assertIn("routes[3] (route#3)", dropped[0])
        self.assertIn("a handler", dropped[0])
        # A route without Lua parts: no such warning.
        j = self.post([{"op": "replace", "index": 1, "route": {"upstream": "b"}}])
        self.assertEqual([w for w in j.get("warnings", []) if "dropped" in w], [], j)

    def test_shadowed_route_warned_by_the_change_itself(self):
        # The config's "/" (routes[2]) takes every request a route added behind it would:
        # the answer and the log say so at once, in -t's words, not only at the next load.
        said = "routes[4] (late) can never match: routes[2] before it takes all its requests"
        j = self.post([{"op": "add", "route": {"name": "late", "match": {"prefix": "/late/"},
                                                "upstream": "b"}}])
        self.assertIs(j["ok"], True)
        self.assertIn(said, j["warnings"], j)
        self.proxy.wait_log("admin: POST /routes: " + said)
        # The next load says the same of the same table (the overlay applied).
        self.reload()
        self.proxy.wait_log(self.proxy.config_path + ": " + said)
        # Added in front of the catch-all: reachable, nothing said of it.
        j = self.post([{"op": "add", "at": 1, "route": {"name": "early",
                                                        "match": {"prefix": "/early/"},
                                                        "upstream": "b"}}])
        self.assertEqual([w for w in j.get("warnings", []) if "(early)" in w], [], j)

    def test_changes_under_load_fail_no_request(self):
        stop = threading.Event()
        counts = {"ok": 0, "failed": 0}
        errors = []
        lock = threading.Lock()

        def load():
            try:
                with H.Client(self.proxy.port) as c:
                    while not stop.is_set():
                        r = c.request("GET", "/fixed?size=3", host="a.test")
                        good = r.status == 200 and r.header("X-Origin-Id") in ("a", "b")
                        with lock:
                            counts["ok" if good else "failed"] += 1
                        if not good:
                            errors.append((r.status, r.body[:80]))
            except Exception as e:  # noqa: BLE001 -- reported below
                errors.append(repr(e))
                with lock:
                    counts["failed"] += 1

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            H.wait_for(lambda: counts["ok"] > 50, H.T(20), what="requests flowing")
            for i in range(20):
                self.post([{"op": "add", "at": 1,
                            "route": {"match": {"prefix": "/fixed"}, "upstream": "ab"[i % 2]}}])
                self.post([{"op": "remove", "index": 1}])
            seen = counts["ok"]
            H.wait_for(lambda: counts["ok"] > seen + 50, H.T(20), what="requests after")
        finally:
            stop.set()
            for t in threads:
                t.join(H.T(20))
        self.assertEqual(counts["failed"], 0, errors[:5])
        self.assertGreater(counts["ok"], 100)
        self.assertAlive()


if __name__ == "__main__":
    H.main()
