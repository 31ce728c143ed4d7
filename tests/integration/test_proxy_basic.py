#!/usr/bin/env python3
"""Basic proxying: methods, routing (host exact/wildcard, prefix, strip_prefix, order),
404 without a route, Host and X-Forwarded-* headers, hop-by-hop removal both ways,
load balancing across targets."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402


def origin_headers(resp):
    """The /headers JSON as a list of (lower-name, value)."""
    j = resp.json()
    return [(n.lower(), v) for n, v in j["headers"]]


def values(hdrs, name):
    return [v for n, v in hdrs if n == name.lower()]


def hop_response(req):
    # An origin response that carries every hop-by-hop header plus a Connection-listed one.
    return H.simple_response(200, b"hop", [
        ("Connection", "keep-alive, X-Resp-Hop"),
        ("Keep-Alive", "timeout=5, max=100"),
        ("Proxy-Connection", "keep-alive"),
        ("X-Resp-Hop", "secret"),
        ("Upgrade", "h2c"),
        ("Set-Cookie", "a=1; Path=/"),
        ("Set-Cookie", "b=2; Path=/"),
        ("X-End-To-End", "kept"),
    ])


class BasicProxyTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.b = cls.start_origin("b")
        cls.raw = cls.start_raw_origin(hop_response)
        ups = {
            "a": H.upstream(cls.a.address()),
            "b": H.upstream(cls.b.address()),
            "raw": H.upstream(cls.raw.address()),
            "rr": H.upstream(cls.a.address(), {"address": cls.b.address(), "weight": 2},
                             balance="round_robin"),
        }
        routes = [
            {"match": {"host": "api.example.com", "prefix": "/api/v2/"}, "upstream": "a",
             "strip_prefix": True},
            {"match": {"host": "api.example.com", "prefix": "/api/"}, "upstream": "b",
             "strip_prefix": True},
            {"match": {"host": "*.wild.test", "prefix": "/"}, "upstream": "b"},
            {"match": {"host": "rr.test", "prefix": "/"}, "upstream": "rr"},
            {"match": {"host": "order.test", "prefix": "/"}, "upstream": "a"},
            {"match": {"host": "order.test", "prefix": "/headers"}, "upstream": "b"},
            {"match": {"host": "raw.test", "prefix": "/"}, "upstream": "raw"},
            {"match": {"host": "a.test", "prefix": "/"}, "upstream": "a"},
            {"match": {"prefix": "/any/"}, "upstream": "a"},
        ]
        cls.proxy = cls.start_proxy(ups, routes, workers=1)

    def get(self, path="/", host="a.test", **kw):
        return H.get(self.proxy.port, path, host=host, **kw)

    # ---------------------------------------------------------------- methods

    def test_get(self):
        r = self.get("/")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"hello")
        self.assertEqual(r.header("X-Origin-Id"), "a")
        self.assertTrue(r.complete)

    def test_post_body_reaches_origin(self):
        body = os.urandom(5000)
        r = self.get("/echo", method="POST", body=body)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("X-Echo-Method"), "POST")
        self.assertEqual(r.body, body)

    def test_other_methods(self):
        for m in ("PUT", "PATCH", "DELETE", "OPTIONS"):
            with self.subTest(method=m):
                r = self.get("/echo", method=m, body=b"payload-" + m.encode())
                self.assertEqual(r.status, 200)
                self.assertEqual(r.header("X-Echo-Method"), m)
                self.assertEqual(r.body, b"payload-" + m.encode())

    def test_head_has_no_body_and_connection_stays_usable(self):
        with H.Client(self.proxy.port) as c:
            r = c.request("HEAD", "/fixed?size=1000")
            self.assertEqual(r.status, 200)
            cl = r.header("Content-Length")
            self.assertIn(cl, (None, "1000"))
            # If a body leaked after the HEAD response, the next response would be garbage.
            r2 = c.request("GET", "/")
            self.assertEqual(r2.status, 200)
            self.assertEqual(r2.body, b"hello")

    def test_status_codes_relayed(self):
        for code in (201, 202, 301, 400, 403, 404, 418, 500, 503):
            with self.subTest(code=code):
                r = self.get("/status?code=%d" % code)
                self.assertEqual(r.status, code)
                self.assertEqual(r.header("X-Origin-Id"), "a")

    def test_query_string_and_path_passed_verbatim(self):
        path = "/headers?a=1&b=%20x&c=%2F&d"
        r = self.get(path)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["url"], path)
        r = self.get("/headers?%7B%22a%22%3A1%7D=%E2%9C%93&&x=;y")
        self.assertEqual(r.json()["url"], "/headers?%7B%22a%22%3A1%7D=%E2%9C%93&&x=;y")

    # ---------------------------------------------------------------- routing

    def test_route_exact_host_first_match_wins(self):
        # Both /api/v2/ (first, to a) and /api/ (second, to b) match.
        r = self.get("/api/v2/headers", host="api.example.com")
        self.assertEqual(r.header("X-Origin-Id"), "a")
        self.assertEqual(r.json()["url"], "/headers")

    def test_route_order_not_longest_prefix(self):
        # order.test: "/" comes before "/headers"; the first match wins.
        r = self.get("/headers", host="order.test")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("X-Origin-Id"), "a")

    def test_route_strip_prefix(self):
        r = self.get("/api/headers?q=1", host="api.example.com")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("X-Origin-Id"), "b")
        self.assertEqual(r.json()["url"], "/headers?q=1")

    def test_route_strip_prefix_whole_path_becomes_slash(self):
        r = self.get("/api/", host="api.example.com")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("X-Origin-Id"), "b")
        self.assertEqual(r.body, b"hello")

    def test_route_host_case_insensitive_and_port_ignored(self):
        for host in ("API.Example.COM", "api.example.com:%d" % self.proxy.port, "api.example.com."):
            with self.subTest(host=host):
                r = self.get("/api/headers", host=host)
                if host.endswith(".") and r.status == 404:
                    continue  # a trailing dot is allowed to not match
                self.assertEqual(r.status, 200)
                self.assertEqual(r.header("X-Origin-Id"), "b")

    def test_route_host_matches_but_prefix_does_not(self):
        r = self.get("/other", host="api.example.com")
        self.assertEqual(r.status, 404)
        self.assertIsNone(r.header("X-Origin-Id"))

    def test_route_wildcard_host(self):
        for host in ("x.wild.test", "deep.sub.wild.test", "X.WILD.TEST"):
            with self.subTest(host=host):
                r = self.get("/", host=host)
                self.assertEqual(r.status, 200)
                self.assertEqual(r.header("X-Origin-Id"), "b")

    def test_route_wildcard_does_not_match_bare_domain(self):
        for host in ("wild.test", "xwild.test", "wild.test.evil"):
            with self.subTest(host=host):
                r = self.get("/", host=host)
                self.assertEqual(r.status, 404)
                self.assertIsNone(r.header("X-Origin-Id"))

    def test_route_prefix_without_host_matches_any_host(self):
        r = self.get("/any/thing", host="whatever.test")
        self.assertEqual(r.header("X-Origin-Id"), "a")

    def test_no_route_is_404_and_connection_reusable(self):
        with H.Client(self.proxy.port) as c:
            r = c.request("GET", "/nothing-here", host="nomatch.test")
            self.assertEqual(r.status, 404)
            self.assertIsNone(r.header("X-Origin-Id"))
            self.assertTrue(r.complete)
            r2 = c.request("GET", "/", host="a.test")
            self.assertEqual(r2.status, 200)
            self.assertEqual(r2.body, b"hello")

    def test_http10_without_host_uses_hostless_routes(self):
        r = self.get("/any/x", host=None, version="HTTP/1.0")
        self.assertEqual(r.header("X-Origin-Id"), "a")

    def test_absolute_form_target(self):
        # RFC 9112 3.2.2: the authority of an absolute-form target replaces Host.
        r = self.get("http://a.test/headers?x=1", host="a.test")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["url"], "/headers?x=1")

    def test_absolute_form_target_overrides_host_header(self):
        r = self.get("http://a.test/headers", host="nomatch.test")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("X-Origin-Id"), "a")

    # ---------------------------------------------------------------- request headers

    def test_host_passed_through(self):
        for host in ("a.test", "a.test:8080"):
            with self.subTest(host=host):
                route_host = host
                r = self.get("/headers", host=route_host)
                self.assertEqual(r.status, 200)
                self.assertEqual(values(origin_headers(r), "host"), [host])

    def test_x_forwarded_headers_set(self):
        r = self.get("/headers")
        h = origin_headers(r)
        self.assertEqual([v.strip() for v in ",".join(values(h, "x-forwarded-for")).split(",")],
                         ["127.0.0.1"])
        self.assertEqual(values(h, "x-forwarded-proto"), ["http"])
        self.assertEqual(values(h, "x-forwarded-host"), ["a.test"])

    def test_x_forwarded_for_appended(self):
        r = self.get("/headers", headers=[("X-Forwarded-For", "203.0.113.7")])
        xff = ",".join(values(origin_headers(r), "x-forwarded-for"))
        self.assertEqual([v.strip() for v in xff.split(",")], ["203.0.113.7", "127.0.0.1"])

    def test_x_forwarded_for_appended_to_several_lines(self):
        r = self.get("/headers", headers=[("X-Forwarded-For", "203.0.113.7, 198.51.100.1"),
                                          ("X-Forwarded-For", "192.0.2.9")])
        xff = ",".join(values(origin_headers(r), "x-forwarded-for"))
        self.assertEqual([v.strip() for v in xff.split(",")],
                         ["203.0.113.7", "198.51.100.1", "192.0.2.9", "127.0.0.1"])

    def test_x_forwarded_proto_not_spoofable(self):
        r = self.get("/headers", headers=[("X-Forwarded-Proto", "https")])
        self.assertEqual(values(origin_headers(r), "x-forwarded-proto"), ["http"])

    def test_end_to_end_headers_preserved(self):
        long_val = "v" * 6000
        r = self.get("/headers", headers=[
            ("X-Multi", "one"), ("X-Multi", "two"), ("X-Long", long_val),
            ("X-Spaces", "a  b\tc"), ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
            ("Cookie", "a=1; b=2"), ("Accept", "*/*"), ("User-Agent", "it/1.0"),
        ])
        self.assertEqual(r.status, 200)
        h = origin_headers(r)
        self.assertEqual(values(h, "x-multi") if len(values(h, "x-multi")) == 2
                         else [x.strip() for x in ",".join(values(h, "x-multi")).split(",")],
                         ["one", "two"])
        self.assertEqual(values(h, "x-long"), [long_val])
        self.assertEqual(values(h, "x-spaces"), ["a  b\tc"])
        self.assertEqual(values(h, "proxy-authorization"), ["Basic Zm9vOmJhcg=="])
        self.assertEqual(values(h, "cookie"), ["a=1; b=2"])
        self.assertEqual(values(h, "user-agent"), ["it/1.0"])

    def test_hop_by_hop_request_headers_removed(self):
        r = self.get("/headers", headers=[
            ("Connection", "keep-alive, X-Custom-Hop, TE"),
            ("X-Custom-Hop", "must-not-pass"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "deflate"),
            ("Trailer", "X-Foo"),
            ("Upgrade", "h2c"),
            ("X-Keep-Me", "yes"),
        ])
        self.assertEqual(r.status, 200)
        h = origin_headers(r)
        names = {n for n, _ in h}
        for gone in ("x-custom-hop", "keep-alive", "proxy-connection", "trailer", "upgrade"):
            self.assertNotIn(gone, names, "%s reached the origin: %r" % (gone, h))
        for v in values(h, "te"):
            self.assertNotIn("deflate", v.lower())
        for v in values(h, "connection"):
            self.assertNotIn("x-custom-hop", v.lower())
        self.assertEqual(values(h, "x-keep-me"), ["yes"])

    def test_connection_listed_header_removed_case_insensitively(self):
        r = self.get("/headers", headers=[("Connection", "x-LOWER-hop"),
                                          ("X-Lower-Hop", "1"), ("X-Other", "2")])
        names = {n for n, _ in origin_headers(r)}
        self.assertNotIn("x-lower-hop", names)
        self.assertIn("x-other", names)

    # ---------------------------------------------------------------- response headers

    def test_hop_by_hop_response_headers_removed(self):
        with H.Client(self.proxy.port) as c:
            r = c.request("GET", "/", host="raw.test")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"hop")
            names = {n.lower() for n, _ in r.headers}
            for gone in ("x-resp-hop", "keep-alive", "proxy-connection", "upgrade"):
                self.assertNotIn(gone, names, "response kept %s: %r" % (gone, r.headers))
            self.assertNotIn("x-resp-hop", r.tokens("connection"))
            self.assertEqual(r.header("X-End-To-End"), "kept")
            # Set-Cookie must never be combined into one field.
            self.assertEqual(r.header_all("Set-Cookie"), ["a=1; Path=/", "b=2; Path=/"])

    def test_response_content_length_kept_when_known(self):
        r = self.get("/fixed?size=12345")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.framing, "length")
        self.assertEqual(r.header("Content-Length"), "12345")
        self.assertEqual(r.body_len, 12345)

    # ---------------------------------------------------------------- balancing

    def test_weighted_round_robin(self):
        counts = {}
        for _ in range(30):
            r = self.get("/", host="rr.test")
            self.assertEqual(r.status, 200)
            oid = r.header("X-Origin-Id")
            counts[oid] = counts.get(oid, 0) + 1
        self.assertEqual(set(counts), {"a", "b"}, counts)
        self.assertTrue(8 <= counts["a"] <= 12, counts)
        self.assertTrue(18 <= counts["b"] <= 22, counts)

    def test_zz_proxy_still_alive(self):
        self.assertAlive()


if __name__ == "__main__":
    H.main()
