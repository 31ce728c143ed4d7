#!/usr/bin/env python3
"""Request paths are normalised before routing (engine/pathnorm.c, docs/routing.md): a policy
on a prefix is not bypassed by dot segments, plain or percent-encoded, over HTTP/1.1 and
HTTP/2; the upstream gets the normalised path; a path climbing above the root and a bad
escape are 400; normalize_path = false restores the path as sent."""

import json
import os
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

CURL = shutil.which("curl")


def routes():
    tag = [{"name": "headers", "request": {"set": {"X-Api-Policy": "ran"}}}]
    return [
        {"match": {"prefix": "/api/"}, "upstream": "api", "strip_prefix": True, "plugins": tag},
        {"match": {"prefix": "/h/"}, "upstream": "h", "strip_prefix": True},
        {"upstream": "rest"},
    ]


class PathNormTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origins = {n: cls.start_origin(n) for n in ("api", "h", "rest")}
        ups = {n: H.upstream(o.address()) for n, o in cls.origins.items()}
        cls.proxy = cls.start_proxy(ups, routes(), workers=1,
                                    listen=[{"address": "127.0.0.1:0", "http2": True}])

    def seen(self, r):
        """(origin, the upstream's request target, the /api/ plugin's header)"""
        self.assertEqual(r.status, 200, r.body[:200])
        doc = json.loads(r.body)
        hdrs = {k.lower(): v for k, v in doc["headers"]} if isinstance(doc["headers"], list) \
            else {k.lower(): v for k, v in doc["headers"].items()}
        return r.header("X-Origin-Id"), doc["url"], hdrs.get("x-api-policy")

    def test_dot_segments_route_as_resolved_http1(self):
        for p in ("/api/../h/headers", "/api/%2e%2e/h/headers", "/api/.%2E/h/headers",
                  "/api/./../h/./headers", "/api/x/../../h/%68eaders"):
            self.assertEqual(self.seen(H.get(self.proxy.port, p)), ("h", "/headers", None), p)
        # the query is left as sent; an escape of a reserved character stays one
        self.assertEqual(self.seen(H.get(self.proxy.port, "/x/../api/headers?a=/../%2e")),
                         ("api", "/headers?a=/../%2e", "ran"))
        r = H.get(self.proxy.port, "/api%2F..%2Fh/headers")
        self.assertEqual((r.status, r.header("X-Origin-Id")), (404, "rest"))
        # absolute-form: the target's path is normalised too
        r = H.get(self.proxy.port, "http://a.test/api/../h/headers")
        self.assertEqual(self.seen(r), ("h", "/headers", None))

    def test_above_root_and_bad_escapes_are_400(self):
        for p in ("/../h/headers", "/api/../../h/headers", "/%2e%2e/x", "/h/%zz", "/h/%4"):
            r, closed, c = H.raw_exchange(self.proxy.port, H.build_request("GET", p))
            c.close()
            self.assertEqual(r.status if r else None, 400, p)
        self.assertAlive()

    def test_http2(self):
        if not CURL:
            raise H.MissingDependency("curl")
        base = "http://127.0.0.1:%d" % self.proxy.port
        for p, want in (("/api/../h/headers", 200), ("/api/%2e%2e/h/headers", 200),
                        ("/../h/headers", 400)):
            out = subprocess.run([CURL, "-s", "--http2-prior-knowledge", "--path-as-is",
                                  "-D", "-", base + p], capture_output=True, timeout=H.T(20),
                                 stdin=subprocess.DEVNULL).stdout.decode("latin-1")
            head, _, body = out.partition("\r\n\r\n")
            self.assertTrue(head.startswith("HTTP/2 %d" % want), (p, head))
            if want == 200:
                self.assertIn("x-origin-id: h", head.lower())
                doc = json.loads(body)
                self.assertEqual(doc["url"], "/headers")
                self.assertNotIn("x-api-policy", body.lower())


class PathNormOffTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origins = {n: cls.start_origin(n) for n in ("api", "h", "rest")}
        ups = {n: H.upstream(o.address()) for n, o in cls.origins.items()}
        cls.proxy = cls.start_proxy(ups, routes(), workers=1,
                                    normalize_path=False, merge_slashes=False)

    def test_off_keeps_the_path_as_sent(self):
        # routed by the path as sent: the /api/ route, whose upstream gets "/../h/headers"
        r = H.get(self.proxy.port, "/api/../h/headers")
        self.assertEqual((r.status, r.header("X-Origin-Id")), (404, "api"))
        r = H.get(self.proxy.port, "/api/%2e%2e/h/headers")
        self.assertEqual(r.header("X-Origin-Id"), "api")


class MergeSlashesTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origins = {n: cls.start_origin(n) for n in ("api", "h", "rest")}
        ups = {n: H.upstream(o.address()) for n, o in cls.origins.items()}
        cls.proxy = cls.start_proxy(ups, routes(), workers=1, merge_slashes=True)

    def test_merged(self):
        r = H.get(self.proxy.port, "//h//headers")
        self.assertEqual(r.header("X-Origin-Id"), "h")
        self.assertEqual(json.loads(r.body)["url"], "/headers")


if __name__ == "__main__":
    unittest.main()
