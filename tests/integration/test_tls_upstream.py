#!/usr/bin/env python3
"""TLS to upstreams (docs/tls.md): a Python HTTPS origin with certificates made here by the
openssl CLI. A valid certificate is verified (CA file, SNI name, IP address, the name of a DNS target); an expired
one, a wrong host name and an unknown CA give 502 with a log line naming the reason;
verify = false accepts them; connections are pooled (one TLS connection serves many
requests) and a new connection resumes the TLS session. Also, through a TLS listener:
req:tls() in a Lua handler, X-Forwarded-Proto, the hsts option of the headers plugin and
the $ssl_* access-log variables."""

import http.server
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, timeout=H.T(60),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_certs(d):
    """A CA; server certs signed by it (valid, expired, self-signed); a client CA cert."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "30", "-subj", "/CN=Test CA", cwd=d)
    with open(os.path.join(d, "ext"), "w") as f:
        f.write("subjectAltName=DNS:origin.test,DNS:localhost,IP:127.0.0.1\n")

    def signed(name, days):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", name + ".key", "-out",
                name + ".csr", "-subj", "/CN=origin.test", cwd=d)
        openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", name + ".pem", "-days", str(days), "-extfile", "ext",
                cwd=d)

    signed("good", 30)
    signed("expired", 0)  # notAfter = now: expired a second later
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "self.key", "-out",
            "self.pem", "-days", "30", "-subj", "/CN=origin.test", "-addext",
            "subjectAltName=DNS:origin.test,IP:127.0.0.1", cwd=d)
    # The proxy's own listener certificate.
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "front.key", "-out", "front.pem", "-days", "30", "-subj",
            "/CN=front.test", "-addext", "subjectAltName=DNS:front.test", cwd=d)


class TLSOrigin:
    """An HTTP/1.1 keep-alive origin over TLS. Each answer names the origin, the SNI it
    saw, the TCP connection (client port) and whether the TLS session was resumed."""

    def __init__(self, ident, cert, key):
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                body = json.dumps({
                    "origin": ident,
                    "sni": getattr(self.connection, "lp_sni", None),
                    "port": self.client_address[1],
                    "resumed": self.connection.session_reused,
                    "proto": self.headers.get("X-Forwarded-Proto"),
                    "path": self.path,
                }).encode()
                with origin.lock:
                    origin.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)

        def on_sni(sslobj, name, _ctx):
            sslobj.lp_sni = name  # read back through the connection in do_GET

        ctx.sni_callback = on_sni
        self.lock = threading.Lock()
        self.requests = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class UpstreamTLSTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = H.Workdir.new("tls-upstream")
        make_certs(cls.dir)
        p = lambda n: os.path.join(cls.dir, n)  # noqa: E731
        cls.good = TLSOrigin("good", p("good.pem"), p("good.key"))
        cls.expired = TLSOrigin("expired", p("expired.pem"), p("expired.key"))
        cls.selfsigned = TLSOrigin("self", p("self.pem"), p("self.key"))
        time.sleep(1.1)  # the expired certificate's notAfter is now in the past

        def ups(origin, tls, **kw):
            return H.upstream("127.0.0.1:%d" % origin.port, tls=tls, **kw)

        ca = p("ca.pem")
        upstreams = {
            "byname": ups(cls.good, {"ca": ca, "sni": "origin.test"}),
            "byip": ups(cls.good, {"ca": ca}),
            "bydns": H.upstream("localhost:%d" % cls.good.port, tls={"ca": ca}),
            "byurl": H.upstream("https://localhost:%d/" % cls.good.port, tls={"ca": ca}),
            "urlsystem": H.upstream("https://127.0.0.1:%d" % cls.good.port),
            "pooled": ups(cls.good, {"ca": ca, "sni": "origin.test"}, keepalive=16),
            "fresh": ups(cls.good, {"ca": ca, "sni": "origin.test"}, keepalive=0),
            "expired": ups(cls.expired, {"ca": ca, "sni": "origin.test"}),
            "wronghost": ups(cls.good, {"ca": ca, "sni": "other.test"}),
            "unknownca": ups(cls.selfsigned, {"ca": ca, "sni": "origin.test"}),
            "systemstore": ups(cls.good, True),
            "noverify": ups(cls.selfsigned, {"verify": False, "sni": "origin.test"}),
        }
        routes = [{"match": {"prefix": "/%s/" % n}, "upstream": n, "strip_prefix": True}
                  for n in upstreams]
        routes.append({"match": {"prefix": "/tls"}, "handler": H.LuaRaw(
            'function(req) local t = req:tls() '
            'req:respond(200, require("cjson").encode(t or { none = true }), '
            '{ ["Content-Type"] = "application/json" }) end')})
        routes.append({"match": {"prefix": "/hsts"}, "upstream": "byname",
                       "plugins": [{"name": "headers", "hsts": {"max_age": 600}}]})
        cls.proxy = H.Proxy.build(upstreams, routes, name="tls-upstream")
        cls.proxy.cfg["log"]["format"] = \
            "$scheme $ssl_protocol $ssl_server_name $ssl_session_reused $status"
        cls.proxy.cfg["listen"].append({"address": "127.0.0.1:0",
                                        "tls": {"cert": p("front.pem"), "key": p("front.key")}})
        cls.proxy.start()
        cls.front_port = cls.proxy.ports[1]

    @classmethod
    def tearDownClass(cls):
        try:
            cls.proxy.stop()
        finally:
            for o in (cls.good, cls.expired, cls.selfsigned):
                o.stop()

    def get(self, path, port=None):
        with H.Client(port or self.proxy.port, timeout=H.T(20)) as c:
            return c.request("GET", path, host="app.test")

    def log_has(self, text):
        return text in self.proxy.stderr()

    # ---- verification ----

    def test_valid_certificate_by_name_and_by_ip(self):
        r = self.get("/byname/x")
        self.assertEqual(r.status, 200, r.body)
        j = r.json()
        self.assertEqual(j["origin"], "good")
        self.assertEqual(j["sni"], "origin.test")
        self.assertEqual(j["path"], "/x")
        r = self.get("/byip/")
        self.assertEqual(r.status, 200, r.body)
        self.assertIsNone(r.json()["sni"], "no SNI is sent for an IP address (RFC 6066)")

    def test_dns_target_sends_and_verifies_its_name(self):
        # A DNS target connects to the addresses the name resolves to, but TLS speaks to
        # the name: SNI "localhost", checked against the certificate's DNS:localhost.
        r = self.get("/bydns/d")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["sni"], "localhost")

    def test_https_target_urls(self):
        # https:// turns TLS on; tls = { ca = } still configures it.
        r = self.get("/byurl/u")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["sni"], "localhost")
        # Without a tls table: the system CA store, which does not know our CA.
        self.assertEqual(self.get("/urlsystem/").status, 502)

    def test_mixed_https_and_plain_targets_is_a_config_error(self):
        cfg = H.make_config(0, {"m": H.upstream("https://127.0.0.1:1", "127.0.0.1:2")},
                            [{"match": {"prefix": "/"}, "upstream": "m"}])
        path = os.path.join(self.dir, "mixed.lua")
        with open(path, "w") as f:
            f.write(H.config_text(cfg))
        p = subprocess.run([H.LUAPROXY, "-t", "-c", path], capture_output=True, text=True,
                           timeout=H.T(30))
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("upstreams.m.targets: https:// and plain targets cannot share an upstream",
                      p.stdout + p.stderr)

    def test_expired_certificate_is_502_and_logged(self):
        r = self.get("/expired/")
        self.assertEqual(r.status, 502)
        H.wait_for(lambda: self.log_has("certificate has expired"), H.T(5),
                   what="log line about the expired certificate")

    def test_wrong_host_is_502_and_logged(self):
        r = self.get("/wronghost/")
        self.assertEqual(r.status, 502)
        H.wait_for(lambda: self.log_has("hostname mismatch"), H.T(5),
                   what="log line about the host name")

    def test_unknown_ca_and_system_store_refuse(self):
        self.assertEqual(self.get("/unknownca/").status, 502)
        # Our test CA is not in the system store.
        self.assertEqual(self.get("/systemstore/").status, 502)
        H.wait_for(lambda: self.log_has("certificate verify failed"), H.T(5),
                   what="verify failure log line")

    def test_verify_false_accepts_any_certificate(self):
        r = self.get("/noverify/")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["origin"], "self")

    # ---- pooling and resumption ----

    def test_keepalive_reuses_one_tls_connection(self):
        ports = set()
        with H.Client(self.proxy.port, timeout=H.T(20)) as c:
            for i in range(20):
                r = c.request("GET", "/pooled/n%d" % i, host="app.test")
                self.assertEqual(r.status, 200, r.body)
                ports.add(r.json()["port"])
        self.assertEqual(len(ports), 1, "sequential requests share one pooled TLS connection")

    def test_new_connections_resume_the_session(self):
        results = []
        for i in range(4):
            r = self.get("/fresh/r%d" % i)
            self.assertEqual(r.status, 200, r.body)
            results.append(r.json())
        self.assertEqual(len({j["port"] for j in results}), 4, "keepalive = 0: new connections")
        self.assertTrue(any(j["resumed"] for j in results[1:]),
                        "a later connection resumes the TLS session: %r" % results)

    def test_parallel_load_over_upstream_tls(self):
        errors = []

        def worker(k):
            try:
                with H.Client(self.proxy.port, timeout=H.T(20)) as c:
                    for i in range(50):
                        r = c.request("GET", "/pooled/w%d-%d" % (k, i), host="app.test")
                        if r.status != 200 or r.json()["path"] != "/w%d-%d" % (k, i):
                            errors.append((k, i, r.status))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append((k, repr(e)))

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(H.T(60))
        self.assertEqual(errors, [])

    # ---- through the TLS listener ----

    def tls_get(self, path, sni="front.test"):
        return H.tls_get(self.front_port, path, sni, cafile=os.path.join(self.dir, "front.pem"))

    def test_req_tls_in_lua(self):
        status, _, body = self.tls_get("/tls")
        self.assertEqual(status, 200, body)
        t = json.loads(body)
        self.assertEqual(t["protocol"], "TLSv1.3")
        self.assertEqual(t["sni"], "front.test")
        self.assertEqual(t["alpn"], "http/1.1")
        self.assertIn("cipher", t)
        self.assertFalse(t["client_verified"])
        # Plain HTTP: nil.
        r = self.get("/tls")
        self.assertEqual(r.json(), {"none": True})

    def test_forwarded_proto_and_hsts_over_tls(self):
        status, headers, body = self.tls_get("/byname/p")
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["proto"], "https")
        status, headers, body = self.tls_get("/hsts")
        self.assertEqual(status, 200)
        self.assertEqual(headers.get("strict-transport-security"), "max-age=600")
        r = self.get("/hsts")
        self.assertEqual(r.status, 200)
        self.assertFalse(r.has_header("Strict-Transport-Security"), "never over plain HTTP")

    def test_handshake_burst_all_complete(self):
        # 64 handshakes at once: beyond the per-turn handshake budget they wait for later
        # loop turns, in order; every one completes and is answered.
        results = []
        lock = threading.Lock()

        def one(i):
            try:
                # The Lua handler answers: no upstream pool is filled by the burst.
                status, _, body = self.tls_get("/tls?burst=%d" % i)
                ok = status == 200 and json.loads(body)["sni"] == "front.test"
            except Exception as e:  # noqa: BLE001 - counted below
                ok = repr(e)
            with lock:
                results.append(ok)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(H.T(60))
        self.assertEqual(len(results), 64)
        self.assertEqual([r for r in results if r is not True], [])

    def test_access_log_tls_variables(self):
        self.tls_get("/byname/log")
        self.get("/byname/log")

        def lines():
            return [l for l in self.proxy.access_lines() if l.endswith(" 200")]

        H.wait_for(lambda: any(l.startswith("https TLSv1.3 front.test ") for l in lines()) and
                   any(l.startswith("http - - - ") for l in lines()), H.T(5),
                   what="access log lines with $scheme and $ssl_*: %r" % lines())


class WatchCertTest(unittest.TestCase):
    """--watch (watch = true) reloads when a certificate file the config names changes."""

    def test_replaced_certificate_is_served_after_the_watch_reload(self):
        d = H.Workdir.new("tls-watch")
        for name in ("one", "two"):
            openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", name + ".key",
                    "-out", name + ".pem", "-days", "3", "-subj", "/CN=" + name, cwd=d)
        certs = os.path.join(d, "certs")
        os.mkdir(certs)
        for ext in ("pem", "key"):
            with open(os.path.join(d, "one." + ext), "rb") as src, \
                    open(os.path.join(certs, "site." + ext), "wb") as dst:
                dst.write(src.read())
        cfg = H.make_config(0, {}, [{"match": {"prefix": "/"}, "handler": H.LuaRaw(
            'function(req) req:respond(200, "ok") end')}], watch=True)
        cfg["listen"][0]["tls"] = {"cert": os.path.join(certs, "site.pem"),
                                   "key": os.path.join(certs, "site.key")}
        proxy = H.Proxy(cfg, name="tls-watch")
        proxy.start()
        port = proxy.port
        try:
            def served():
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                with socket.create_connection(("127.0.0.1", port), timeout=H.T(5)) as s:
                    with ctx.wrap_socket(s) as t:
                        return t.getpeercert(binary_form=True)

            def der(name):
                with open(os.path.join(d, name + ".pem")) as f:
                    return ssl.PEM_cert_to_DER_cert(f.read())

            self.assertEqual(served(), der("one"))
            # As a renewal tool does: new files beside, then renamed over the old ones.
            for ext in ("key", "pem"):
                tmp = os.path.join(certs, "site.%s.new" % ext)
                with open(os.path.join(d, "two." + ext), "rb") as src, open(tmp, "wb") as dst:
                    dst.write(src.read())
                os.rename(tmp, os.path.join(certs, "site." + ext))
            H.wait_for(lambda: served() == der("two"), H.T(10),
                       what="the new certificate after the watch reload")
        finally:
            proxy.stop()


class TicketKeyFileTest(unittest.TestCase):
    """session_ticket_keys: instances sharing a key file resume each other's tickets."""

    def test_ticket_from_one_instance_resumes_on_another(self):
        d = H.Workdir.new("tls-tickets")
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "c.key", "-out",
                "c.pem", "-days", "3", "-subj", "/CN=t", cwd=d)
        openssl("rand", "-out", "shared.key", "80", cwd=d)
        openssl("rand", "-out", "short.key", "48", cwd=d)

        def proxy(keys, name):
            cfg = H.make_config(0, {}, [{"match": {"prefix": "/"}, "handler": H.LuaRaw(
                'function(req) req:respond(200, "ok") end')}])
            tls = {"cert": os.path.join(d, "c.pem"), "key": os.path.join(d, "c.key")}
            if keys:
                tls["session_ticket_keys"] = [os.path.join(d, k) for k in keys]
            cfg["listen"][0]["tls"] = tls
            return H.Proxy(cfg, name=name)

        def s_client(port, *args):
            # TLS 1.3 tickets arrive after the handshake, before any answer: s_client asks
            # for a page and reads to the end of it (-ign_eof: stdin's end does not stop it),
            # so the ticket is in -sess_out by the time it exits, however slow the machine.
            p = subprocess.run(["openssl", "s_client", "-ign_eof", "-connect",
                                "127.0.0.1:%d" % port] + list(args),
                               input="GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=H.T(30))
            self.assertIn("HTTP/1.1 200", p.stdout, "the page was read to its end")
            return p.stdout

        a, b, c = proxy(["shared.key"], "tk-a"), proxy(["shared.key"], "tk-b"), proxy([], "tk-c")
        for px in (a, b, c):
            px.start()
        try:
            sess = os.path.join(d, "sess.pem")
            self.assertIn("New,", s_client(a.port, "-sess_out", sess))
            self.assertIn("Reused,", s_client(b.port, "-sess_in", sess),
                          "the same key file: the other instance resumes the ticket")
            self.assertIn("New,", s_client(c.port, "-sess_in", sess),
                          "its own key ring: a full handshake")
        finally:
            for px in (a, b, c):
                px.stop()
        # A key file of the wrong size is a config error naming it.
        bad = proxy(["short.key"], "tk-bad")
        bad.write_config()
        p = subprocess.run([H.LUAPROXY, "-t", "-c", bad.config_path], capture_output=True,
                           text=True, timeout=H.T(30))
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("listen[1].tls: session ticket key", p.stdout + p.stderr)
        self.assertIn("short.key", p.stdout + p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
