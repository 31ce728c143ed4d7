#!/usr/bin/env python3
"""The request head an upstream gets is one definition (engine/upstream_head.c) written for
HTTP/1.1 (lp_origin) and HTTP/2 (test_h2's H2Origin) upstreams: the same request through
each must reach its origin with the same path (the route's prefix stripped), Host or
:authority, X-Forwarded-For/-Proto/-Host, hop-by-hop fields removed, trace context and
Content-Length. And the response head an HTTP/2 upstream sends (engine/h2_up.c puts its
fields straight into the request's response) keeps what a parsed one gives: 1xx heads
dropped, every field, the field limit answered with 502."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

from test_h2 import H2Origin  # noqa: E402 (python3-h2: an install step, never skipped)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = "00-%s-00f067aa0ba902b7-01" % TRACE

# Fields the client sends: the proxy's own replace theirs, hop-by-hop ones (and the one its
# Connection names) stop here, the rest goes on.
CLIENT = [
    ("X-Forwarded-For", "198.51.100.7"),
    ("X-Forwarded-For", "203.0.113.9"),
    ("X-Forwarded-Proto", "ftp"),
    ("X-Forwarded-Host", "evil.test"),
    ("Connection", "x-hop"),
    ("X-Hop", "1"),
    ("Keep-Alive", "timeout=5"),
    ("Proxy-Connection", "keep-alive"),
    ("TE", "gzip"),
    ("X-Keep", "yes"),
    ("traceparent", TRACEPARENT),
    ("tracestate", "k=v"),
]


class UpstreamHeadTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.o1 = cls.start_origin("o1")
        cls.o2 = H2Origin()
        cls.addClassCleanup(cls.o2.stop)
        ups = {"h1": H.upstream(cls.o1.address()),
               "h2": H.upstream(cls.o2.address(), protocol="h2")}
        routes = []
        for proto in ("h1", "h2"):
            routes += [
                {"match": {"prefix": "/%s/strip/" % proto}, "upstream": proto,
                 "strip_prefix": True},
                {"match": {"prefix": "/%s/keep/" % proto}, "upstream": proto},
            ]
        routes.append({"match": {"prefix": "/"}, "upstream": "h2"})
        cls.proxy = cls.start_proxy(ups, routes, workers=1)

    def seen(self, proto, path, method="GET", body=None, headers=CLIENT, host="site.test",
             version="HTTP/1.1"):
        """What the origin got: (method, url, {lower-name: [values]})."""
        r = H.get(self.proxy.port, "/%s%s" % (proto, path), host=host, method=method,
                  headers=headers, body=body, version=version)
        self.assertEqual(r.status, 200, (proto, r.body))
        j = r.json()
        fields = {}
        for n, v in j["headers"]:
            fields.setdefault(n.lower(), []).append(v)
        return j["method"], j["url"], fields

    def both(self, path, **kw):
        return [self.seen(proto, path, **kw) for proto in ("h1", "h2")]

    def test_same_head_on_both_protocols(self):
        for (method, url, f), proto in zip(self.both("/strip/headers?q=1"), ("h1", "h2")):
            with self.subTest(proto=proto):
                self.assertEqual((method, url), ("GET", "/headers?q=1"))
                self.assertEqual(f["host"], ["site.test"])
                self.assertEqual(f["x-forwarded-for"],
                                 ["198.51.100.7, 203.0.113.9, 127.0.0.1"])
                self.assertEqual(f["x-forwarded-proto"], ["http"])
                self.assertEqual(f["x-forwarded-host"], ["site.test"])
                self.assertEqual(f["x-keep"], ["yes"])
                for hop in ("connection", "x-hop", "keep-alive", "proxy-connection", "te",
                            "content-length", "transfer-encoding", "expect"):
                    self.assertNotIn(hop, f)
                tp = f["traceparent"]
                self.assertEqual(len(tp), 1)
                self.assertEqual(tp[0].split("-")[1], TRACE)  # the client's trace goes on
                self.assertNotEqual(tp[0], TRACEPARENT)  # with the proxy's span as parent
                self.assertEqual(f["tracestate"], ["k=v"])
        h1, h2 = self.both("/strip/headers?q=1")
        strip = ("traceparent",)  # a span id of each request's own
        self.assertEqual({k: v for k, v in h1[2].items() if k not in strip},
                         {k: v for k, v in h2[2].items() if k not in strip})

    def test_prefix_strip_and_keep(self):
        # "/h2/strip/" off "/h2/strip/headers": "headers" gets its "/" back.
        for proto in ("h1", "h2"):
            with self.subTest(proto=proto):
                self.assertEqual(self.seen(proto, "/strip/headers", headers=[])[1],
                                 "/headers")
        # (lp_origin answers /headers only: a kept prefix is checked on HTTP/2 here, on
        # HTTP/1.1 in test_proxy_basic.)
        self.assertEqual(self.seen("h2", "/keep/headers", headers=[])[1], "/h2/keep/headers")

    def test_body_length_and_expect(self):
        for proto in ("h1", "h2"):
            with self.subTest(proto=proto):
                method, url, f = self.seen(proto, "/strip/headers", method="POST",
                                           body=b"abcd", headers=[("Expect", "100-continue")])
                self.assertEqual(method, "POST")
                self.assertEqual(f["content-length"], ["4"])
                self.assertNotIn("expect", f)

    def test_no_host_gives_the_targets_address(self):
        for proto, o in (("h1", self.o1), ("h2", self.o2)):
            with self.subTest(proto=proto):
                f = self.seen(proto, "/strip/headers", headers=[], host=None,
                              version="HTTP/1.0")[2]
                self.assertEqual(f["host"], [o.address()])
                self.assertNotIn("x-forwarded-host", f)

    # ---- the response head from an HTTP/2 upstream

    def test_interim_head_dropped_final_fields_kept(self):
        r = H.get(self.proxy.port, "/early")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("x-final"), "1")
        self.assertIsNone(r.header("link"))  # the 103's field is not the response's

    def test_field_limit(self):
        # limits.max_headers (100) counts the upstream's fields too: 90 go, 120 is a 502.
        r = H.get(self.proxy.port, "/many?n=90")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("x-f89"), "89")
        r = H.get(self.proxy.port, "/many?n=120")
        self.assertEqual(r.status, 502)
        self.proxy.wait_log("too many header fields")


if __name__ == "__main__":
    H.main()
