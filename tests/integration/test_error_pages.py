#!/usr/bin/env python3
"""Custom error pages (`error_pages`, docs/error-pages.md): a file page on 502 and 404, a
body with ${status}/${reason}/${detail} on 503, a route's page over the global one (and
`false` for the built-in answer), `status =`, HEAD without a body, the body counted in the
access log, the response and log phases still seeing (and changing) these answers, and the
config errors: a missing file named by its key path, a key that is not a status."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua"))
import luatest as L  # noqa: E402
from luatest import H  # noqa: E402

PAGE_502 = "<html><h1>${status} ${reason}</h1><p>costs $$5</p></html>\n"
PAGE_404 = "<p>nothing here</p>\n"
RENDERED_502 = "<html><h1>502 Bad Gateway</h1><p>costs $5</p></html>\n"

FILES = {
    "pages/502.html": PAGE_502,
    "pages/404.html": PAGE_404,
    # Marks every answer in the response phase; ?status= changes it; logs the status.
    "plugins/marker.lua": r'''
local P = { name = "marker", priority = 50, schema = { fields = {} } }
function P.response(req)
  req:set_resp_header("X-Marked", tostring(req:status()))
  local s = req:query("status")
  if s then req:set_status(tonumber(s)) end
end
function P.log(req)
  proxy.log.warn("MARKER log phase saw " .. tostring(req:status()) .. " " .. req:path())
end
return P
''',
    # A response_body filter may replace the page (the response phase cannot).
    "plugins/shout.lua": r'''
local P = { name = "shout", priority = 50, schema = { fields = {} } }
function P.response_body(req, chunk, eof)
  return chunk and chunk:upper()
end
return P
''',
}


def route(prefix, upstream, **kw):
    r = {"match": {"prefix": prefix}, "upstream": upstream}
    r.update(kw)
    return r


class ErrorPagesTest(L.LuaTestCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("o")
        dead = H.dead_port()
        cls.access = os.path.join(H.Workdir.new("access"), "access.log")
        ups = {
            "o": H.upstream(cls.origin.address()),
            # Passive checks off: the dead target stays a 502, never ejected (503).
            "dead": H.upstream("127.0.0.1:%d" % dead, retries=0,
                               health={"passive": {"failures": 0}}),
            # Its only target fails its first tcp probe: down, every request gets a 503.
            "probed": H.upstream("127.0.0.1:%d" % H.dead_port(), retries=0,
                                 health={"active": {"type": "tcp", "interval": 0.2,
                                                    "timeout": 0.2, "unhealthy": 1}}),
        }
        routes = [
            route("/own", "dead", error_pages={502: {"body": "route page ${status}"}}),
            route("/off", "dead", error_pages={502: False}),
            route("/soft", "dead", error_pages={502: {"body": "soft", "status": 200}}),
            route("/marked", "dead", plugins=[{"name": "marker"}]),
            route("/shout", "dead", plugins=[{"name": "shout"}]),
            route("/probed", "probed"),
            route("/dead", "dead"),
            route("/ok", "o", strip_prefix=True),
        ]
        cls.proxy = cls.start_lua_proxy(
            ups, routes, files=FILES, workers=1,
            error_pages={
                502: {"file": "pages/502.html"},
                404: {"file": "pages/404.html"},
                503: {"body": "busy: ${detail} (${status} ${reason})", "status": 503,
                      "content_type": "text/plain; charset=utf-8"},
            },
            log={"level": "info", "access": cls.access,
                 "format": "$request_method $uri $status $body_bytes_sent"})

    def access_lines(self):
        with open(self.access) as f:
            return f.read().splitlines()

    def wait_access(self, want):
        H.wait_for(lambda: want in self.access_lines(), H.T(5),
                   what="%r in the access log: %r" % (want, self.access_lines()[-5:]))

    def test_file_page_on_502(self):
        r = self.get("/dead/x")
        self.assertEqual(r.status, 502)
        self.assertEqual(r.header("Content-Type"), "text/html; charset=utf-8")
        self.assertEqual(r.body.decode(), RENDERED_502)
        self.assertEqual(int(r.header("Content-Length")), len(r.body))
        self.assertIsNotNone(r.header("Date"))
        self.wait_access("GET /dead/x 502 %d" % len(r.body))

    def test_file_page_on_404(self):
        # No route's prefix matches /nowhere.
        r = self.get("/nowhere")
        self.assertEqual(r.status, 404)
        self.assertEqual(r.body.decode(), PAGE_404)
        self.assertEqual(r.header("Content-Type"), "text/html; charset=utf-8")

    def test_body_with_substitution_on_503(self):
        H.wait_for(lambda: self.get("/probed/a").status == 503, H.T(10),
                   what="the probed upstream's only target found down")
        r = self.get("/probed/b")
        self.assertEqual(r.status, 503)
        self.assertEqual(r.header("Content-Type"), "text/plain; charset=utf-8")
        self.assertEqual(r.body.decode(),
                         "busy: no available target (down, drained or disabled) "
                         "(503 Service Unavailable)")

    def test_route_page_overrides_the_global_one(self):
        r = self.get("/own/x")
        self.assertEqual(r.status, 502)
        self.assertEqual(r.body, b"route page 502")
        self.assertEqual(r.header("Content-Type"), "text/plain; charset=utf-8")
        # false: the built-in answer, though the global config has a 502 page.
        r = self.get("/off/x")
        self.assertEqual(r.status, 502)
        self.assertEqual(r.body, b"502 Bad Gateway\n")
        self.assertEqual(r.header("Content-Type"), "text/plain")

    def test_status_replaced(self):
        r = self.get("/soft/x")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"soft")
        self.wait_access("GET /soft/x 200 4")

    def test_head_gets_no_body(self):
        r = self.get("/dead/h", method="HEAD")
        self.assertEqual(r.status, 502)
        self.assertEqual(r.body, b"")
        self.assertEqual(int(r.header("Content-Length")), len(RENDERED_502))
        self.wait_access("HEAD /dead/h 502 0")
        # A 404 keeps the connection: the next answer follows the bodiless HEAD one.
        with H.Client(self.proxy.port) as c:
            r = c.request("HEAD", "/nowhere", None, None, "HTTP/1.1", "a.test")
            self.assertEqual(r.status, 404)
            self.assertEqual(r.body, b"")
            self.assertEqual(int(r.header("Content-Length")), len(PAGE_404))
            r = c.request("GET", "/ok/fixed?size=3", None, None, "HTTP/1.1", "a.test")
            self.assertEqual(r.status, 200)
            self.assertEqual(len(r.body), 3)

    def test_response_phase_sees_and_changes_the_page(self):
        r = self.get("/marked/x")
        self.assertEqual(r.status, 502)
        self.assertEqual(r.header("X-Marked"), "502")
        self.assertIn(b"<h1>502 Bad Gateway</h1>", r.body)
        self.wait_log("MARKER log phase saw 502 /marked/x")
        r = self.get("/marked/y?status=503")
        self.assertEqual(r.status, 503)
        self.assertEqual(r.header("X-Marked"), "502")
        self.assertIn(b"<h1>502 Bad Gateway</h1>", r.body)  # the page of the answer made
        self.wait_log("MARKER log phase saw 503 /marked/y")
        self.wait_access("GET /marked/y?status=503 503 %d" % len(r.body))

    def test_body_filter_may_replace_the_page(self):
        r = self.get("/shout/x")
        self.assertEqual(r.status, 502)
        self.assertIn(b"<H1>502 BAD GATEWAY</H1>", r.body)


class ErrorPagesConfigTest(H.ProxyTestCase):
    """`luaproxy -t` rejects bad error_pages with the key path."""

    def check(self, error_pages=None, route_pages=None, files=None):
        r = {"match": {"prefix": "/"}, "upstream": "app"}
        if route_pages is not None:
            r["error_pages"] = route_pages
        cfg = H.make_config(0, {"app": H.upstream("127.0.0.1:9")}, [r])
        if error_pages is not None:
            cfg["error_pages"] = error_pages
        rc, out, err, path = L.check_config(H.config_text(cfg), files=files)
        return rc, err

    def test_good(self):
        rc, err = self.check({502: {"file": "p/50x.html"}, "503": {"body": "x"}},
                             {404: False}, files={"p/50x.html": "<p>x</p>"})
        self.assertEqual(rc, 0, err)

    def test_missing_file_names_the_key_path(self):
        rc, err = self.check({502: {"file": "pages/none.html"}})
        self.assertNotEqual(rc, 0)
        self.assertIn("error_pages.502.file: cannot read", err)
        self.assertIn("pages/none.html", err)
        self.assertIn("No such file", err)
        rc, err = self.check(route_pages={504: {"file": "gone.html"}})
        self.assertNotEqual(rc, 0)
        self.assertIn("routes[1].error_pages.504.file: cannot read", err)

    def test_file_too_large(self):
        rc, err = self.check({502: {"file": "big.html"}},
                             files={"big.html": "x" * (1024 * 1024 + 1)})
        self.assertNotEqual(rc, 0)
        self.assertIn("error_pages.502.file:", err)
        self.assertIn("above the limit of 1048576", err)

    def test_key_not_a_status(self):
        for key, shown in (("oops", '"oops"'), (302, "302"), (600, "600")):
            rc, err = self.check({key: {"body": "x"}})
            self.assertNotEqual(rc, 0)
            self.assertIn("error_pages.%s: expected an error status 400–599" % key, err)
            self.assertIn("got " + shown, err)

    def test_bad_entries(self):
        cases = [
            ({502: {}}, "error_pages.502: expected file, body, or false"),
            ({502: {"file": "a", "body": "b"}}, "error_pages.502: file, body and builtin are "
                                                 "exclusive"),
            ({502: {"body": "x", "status": 100}}, "error_pages.502.status"),
            ({502: {"body": "x", "content_type": "a\nb"}}, "error_pages.502.content_type"),
            ({502: "page.html"}, "error_pages.502: expected a record"),
        ]
        for pages, want in cases:
            rc, err = self.check(pages)
            self.assertNotEqual(rc, 0, pages)
            self.assertIn(want, err)


if __name__ == "__main__":
    H.main()
