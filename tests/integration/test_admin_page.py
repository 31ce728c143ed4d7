#!/usr/bin/env python3
"""What the status page reads and how the admin API is guarded (docs/admin-api.md): the
page's files (GET /, /ui/...) with their security headers, GET /reloads (who asked, ok or
failed with the error), GET /errors (recent error-log lines), the bearer token of
admin.token_file (401 with WWW-Authenticate without it, constant answers for wrong ones,
`luaproxy -s` sending it), the refusal of a non-loopback admin address without a token, and
cross-origin requests refused. Plain HTTP from the standard library."""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

TOKEN = "s3cr3t-t0ken-0123456789abcdef"


def request(port, method, path, headers=None, body=None):
    """(status, headers dict with lower-case names, body bytes) of one admin request."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=H.T(20))
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def bearer(token=TOKEN):
    return {"Authorization": "Bearer " + token}


class PageCase(unittest.TestCase):
    @classmethod
    def start(cls, admin, routes=None, upstreams=None):
        cls.origin = H.Origin("o1").start()
        cls.dead = H.dead_port()
        cfg = H.make_config(
            0, upstreams or {"web": H.upstream(cls.origin.port), "dead": H.upstream(cls.dead)},
            routes or [{"name": "dead", "match": {"prefix": "/dead"}, "upstream": "dead"},
                       {"name": "web", "match": {"prefix": "/"}, "upstream": "web"}],
            workers=2, admin=admin)
        cls.proxy = H.Proxy(cfg, name="page")
        cls.proxy.start()
        H.wait_for(lambda: H.port_accepts(cls.proxy.admin_port), H.T(10), what="the admin API")

    @classmethod
    def tearDownClass(cls):
        cls.proxy.stop()
        cls.origin.stop()
        errs = H.sanitizer_errors(cls.proxy.stderr())
        assert not errs, "sanitizer: %s\n%s" % (errs, cls.proxy.stderr()[-4000:])


class TokenTest(PageCase):
    @classmethod
    def setUpClass(cls):
        d = H.Workdir.new("token")
        cls.token_file = os.path.join(d, "admin.token")
        with open(cls.token_file, "w") as f:
            f.write(TOKEN + "\n")  # the trailing newline is not part of the token
        cls.start({"address": "127.0.0.1:0", "token_file": cls.token_file})

    def get(self, path, headers=None, method="GET", body=None):
        return request(self.proxy.admin_port, method, path, headers, body)

    def test_no_token_401_with_www_authenticate(self):
        for method, path in (("GET", "/status"), ("GET", "/metrics"), ("GET", "/reloads"),
                             ("GET", "/errors"), ("GET", "/config"), ("GET", "/upstreams"),
                             ("POST", "/reload"), ("POST", "/stop"), ("GET", "/nope")):
            st, h, body = self.get(path, method=method)
            self.assertEqual(st, 401, "%s %s" % (method, path))
            self.assertEqual(h.get("www-authenticate"), 'Bearer realm="luaproxy admin"')
            j = json.loads(body)
            self.assertIs(j["ok"], False)
            self.assertIn("Authorization: Bearer", j["error"])
        self.assertTrue(self.proxy.alive(), "POST /stop without a token stopped the proxy")

    def test_wrong_tokens_401_invalid_token(self):
        for value in ("Bearer wrong", "Bearer " + TOKEN + "x", "Bearer " + TOKEN[:-1],
                      "Basic " + TOKEN, "Bearer", "Bearer  ", TOKEN, "Bearer " + TOKEN.upper()):
            st, h, body = self.get("/status", {"Authorization": value})
            self.assertEqual(st, 401, value)
            self.assertIn("Bearer realm=", h.get("www-authenticate", ""))
            if value.startswith("Bearer ") and value.strip() != "Bearer":
                self.assertIn('error="invalid_token"', h["www-authenticate"])

    def test_right_token(self):
        st, _, body = self.get("/status", bearer())
        self.assertEqual(st, 200)
        self.assertIs(json.loads(body)["ok"], True)
        # The scheme is case-insensitive (RFC 9110), the token is not.
        st, _, _ = self.get("/status", {"Authorization": "bearer " + TOKEN})
        self.assertEqual(st, 200)
        st, h, body = self.get("/metrics", bearer())
        self.assertEqual(st, 200)
        self.assertIn(b"luaproxy_requests_total", body)

    def test_reload_needs_the_token(self):
        gen = json.loads(self.get("/status", bearer())[2])["generation"]
        st, _, _ = self.get("/reload", method="POST")
        self.assertEqual(st, 401)
        self.assertEqual(json.loads(self.get("/status", bearer())[2])["generation"], gen)
        st, _, body = self.get("/reload", bearer(), method="POST")
        self.assertEqual(st, 200, body)
        self.assertEqual(json.loads(body)["generation"], gen + 1)

    def test_page_files_served_without_token(self):
        # They hold no data: the page asks for the token and sends it on its own requests.
        st, h, body = self.get("/")
        self.assertEqual(st, 200)
        self.assertTrue(h["content-type"].startswith("text/html"))
        self.assertIn(b"<main", body)
        csp = h["content-security-policy"]
        for d in ("default-src 'none'", "script-src 'self'", "connect-src 'self'",
                  "frame-ancestors 'none'"):
            self.assertIn(d, csp)
        self.assertEqual(h["x-content-type-options"], "nosniff")
        self.assertEqual(h["cache-control"], "no-store")
        for path, ctype, needle in (("/ui/status.js", "text/javascript", b"sessionStorage"),
                                    ("/ui/status.css", "text/css", b"--fg")):
            st, h, body = self.get(path)
            self.assertEqual(st, 200, path)
            self.assertTrue(h["content-type"].startswith(ctype), h["content-type"])
            self.assertIn(needle, body)
        st, h, body = self.get("/", method="HEAD")
        self.assertEqual((st, body), (200, b""))
        self.assertGreater(int(h["content-length"]), 1000)
        # Only those names: anything else is an endpoint (so it needs the token), and no
        # path reaches the file system.
        for path in ("/ui/../status/index.html", "/ui/index.html", "/index.html",
                     "/ui/status.js/", "/ui/%2e%2e/CMakeLists.txt"):
            st, _, _ = self.get(path)
            self.assertEqual(st, 401, path)
            st, _, _ = self.get(path, bearer())
            self.assertEqual(st, 404, path)
        st, _, _ = self.get("/", method="POST")
        self.assertEqual(st, 405)

    def test_cross_origin_refused(self):
        # A page on another site cannot make a browser POST here (no preflight is needed
        # for a simple POST): the Origin it sends does not match the Host.
        port = self.proxy.admin_port
        gen = json.loads(self.get("/status", bearer())[2])["generation"]
        for origin in ("http://evil.example", "http://127.0.0.1:%d.evil.example" % port, "null",
                       "https://127.0.0.1:%d" % port):
            st, _, body = self.get("/reload", dict(bearer(), Origin=origin), method="POST")
            self.assertEqual(st, 403, origin)
            self.assertIn("another origin", json.loads(body)["error"])
        self.assertEqual(json.loads(self.get("/status", bearer())[2])["generation"], gen)
        # The page's own origin passes.
        st, _, _ = self.get("/status", dict(bearer(), Origin="http://127.0.0.1:%d" % port))
        self.assertEqual(st, 200)

    def test_cli_reload_sends_the_token(self):
        cfg = self.proxy.bound_config()
        path = os.path.join(H.Workdir.new("cli"), "proxy.lua")
        with open(path, "w") as f:
            f.write(H.config_text(cfg))
        p = subprocess.run([H.LUAPROXY, "-s", "reload", "-c", path], capture_output=True,
                           text=True, timeout=H.T(60))
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn('"ok":true', p.stdout)
        st, _, body = self.get("/reloads", bearer())
        latest = json.loads(body)["reloads"][0]
        self.assertTrue(latest["ok"])
        self.assertRegex(latest["by"], r"^admin 127\.0\.0\.1:\d+$")


class HistoryAndErrorsTest(PageCase):
    @classmethod
    def setUpClass(cls):
        cls.start({"address": "127.0.0.1:0"})

    def admin(self, method, path):
        st, h, body = request(self.proxy.admin_port, method, path)
        return st, json.loads(body)

    def reloads(self):
        st, j = self.admin("GET", "/reloads")
        self.assertEqual(st, 200)
        self.assertIs(j["ok"], True)
        return j["reloads"]

    def test_startup_admin_sighup_failed(self):
        first = self.reloads()[-1]
        self.assertEqual(first["by"], "startup")
        self.assertIs(first["ok"], True)
        self.assertEqual(first["generation"], 1)
        self.assertRegex(first["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertGreater(first["took_ms"], 0)
        self.assertNotIn("error", first)

        st, j = self.admin("POST", "/reload")
        self.assertEqual(st, 200)
        top = self.reloads()[0]
        self.assertEqual((top["generation"], top["ok"]), (j["generation"], True))
        self.assertRegex(top["by"], r"^admin 127\.0\.0\.1:\d+$")

        n = len(self.reloads())
        self.proxy.signal(signal.SIGHUP)
        H.wait_for(lambda: len(self.reloads()) > n, H.T(20), what="the SIGHUP reload")
        top = self.reloads()[0]
        self.assertEqual(top["by"], "SIGHUP")
        self.assertIs(top["ok"], True)

        # A refused reload: the old generation keeps serving, the error is kept.
        with open(self.proxy.config_path) as f:
            good = f.read()
        try:
            with open(self.proxy.config_path, "w") as f:
                f.write(good.replace('upstream = "web"', 'upstream = "nosuch"'))
            st, j = self.admin("POST", "/reload")
            self.assertEqual(st, 500)
        finally:
            with open(self.proxy.config_path, "w") as f:
                f.write(good)
        top = self.reloads()[0]
        self.assertIs(top["ok"], False)
        self.assertEqual(top["generation"], j["generation"])
        self.assertIn('no upstream named "nosuch"', top["error"])
        self.assertRegex(top["by"], r"^admin 127\.0\.0\.1:\d+$")
        self.assertEqual(self.reloads()[1]["by"], "SIGHUP", "newest first")

    def test_errors_ring(self):
        st, j = self.admin("GET", "/errors")
        self.assertEqual(st, 200)
        before = j["total"]
        r = H.get(self.proxy.port, "/dead")
        self.assertEqual(r.status, 502)
        needle = "127.0.0.1:%d" % self.dead

        def seen():
            st, j = self.admin("GET", "/errors")
            hits = [e for e in j["errors"] if needle in e["message"]]
            return (j, hits) if hits else None
        j, hits = H.wait_for(seen, H.T(10), what="the connect error in GET /errors")
        self.assertGreater(j["total"], before)
        e = hits[0]
        self.assertIn(e["level"], ("error", "warn"))
        self.assertRegex(e["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertRegex(e["message"], r"^w\d+: ")  # the time and level are apart
        self.assertIn(e["message"], self.proxy.stderr())
        # Newest first, info lines (listening on ...) never kept.
        self.assertFalse(any("listening on" in x["message"] for x in j["errors"]))
        times = [x["time"] for x in j["errors"]]
        self.assertEqual(times, sorted(times, reverse=True))

    def test_no_token_needed_on_loopback(self):
        st, j = self.admin("GET", "/status")
        self.assertEqual(st, 200)


class ConfigCheckTest(unittest.TestCase):
    """`luaproxy -t`: an admin address off loopback needs a token; the token file is checked."""

    def check(self, admin, token=None):
        d = H.Workdir.new("check")
        if token is not None:
            with open(os.path.join(d, "admin.token"), "w") as f:
                f.write(token)
            admin = dict(admin, token_file="admin.token")  # relative to the config
        cfg = H.make_config(0, {"a": H.upstream(H.dead_port())},
                            [{"match": {"prefix": "/"}, "upstream": "a"}], admin=admin)
        path = os.path.join(d, "proxy.lua")
        with open(path, "w") as f:
            f.write(H.config_text(cfg))
        p = subprocess.run([H.LUAPROXY, "-t", "-c", path], capture_output=True, text=True,
                           timeout=H.T(60))
        return p.returncode, p.stdout + p.stderr

    def test_public_without_token_refused(self):
        for addr in ("0.0.0.0:0", "[::]:0", "10.1.2.3:9901", "[::ffff:10.0.0.1]:9901"):
            rc, out = self.check({"address": addr})
            self.assertEqual(rc, 1, out)
            self.assertIn("admin.address: %s is not a loopback address" % addr, out)
            self.assertIn("admin.token_file", out)

    def test_public_with_token_accepted(self):
        rc, out = self.check({"address": "0.0.0.0:0"}, token=TOKEN + "\n")
        self.assertEqual(rc, 0, out)

    def test_loopback_without_token_accepted(self):
        for addr in ("127.0.0.1:0", "127.0.0.2:0", "[::1]:0"):
            rc, out = self.check({"address": addr})
            self.assertEqual(rc, 0, addr + ": " + out)

    def test_bad_token_files(self):
        rc, out = self.check({"address": "127.0.0.1:0"}, token="short\n")
        self.assertEqual(rc, 1)
        self.assertIn("admin.token_file", out)
        self.assertIn("at least 16", out)
        rc, out = self.check({"address": "127.0.0.1:0"}, token="two words here 0123456789\n")
        self.assertEqual(rc, 1)
        self.assertIn("visible ASCII", out)
        rc, out = self.check({"address": "127.0.0.1:0", "token_file": "/nonexistent/tok"})
        self.assertEqual(rc, 1)
        self.assertRegex(out, r'admin.token_file: cannot read "/nonexistent/tok"')


if __name__ == "__main__":
    unittest.main(verbosity=2)
