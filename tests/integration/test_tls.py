#!/usr/bin/env python3
"""TLS termination on listeners (issue 6): SNI selection (exact, wildcard, default, names
override, RSA beside ECDSA), ALPN, protocol versions and ciphers, resumption (tickets and the
session cache, across workers and reloads), mTLS, plain HTTP on a TLS port and a TLS hello on
a plain port, the handshake timeout, HTTP/1.1 and WebSocket over TLS, config errors, reloads
that change (or fail to change) the certificate, and bounded load runs.

Every certificate is made during the test with the openssl CLI (a CA, server certificates
signed by it, a client certificate signed by it, a self-signed client certificate).  Clients
are Python's ssl module, `openssl s_client` and curl, all on 127.0.0.1 and all bounded in
time."""

import os
import random
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "reload"))
import harness as H  # noqa: E402
import reloadtest as RT  # noqa: E402
from test_websocket import encode_frame, read_frame  # noqa: E402

OPENSSL = shutil.which("openssl")
CURL = shutil.which("curl")

# --------------------------------------------------------------------------- certificates


def run(argv, timeout=60, input=None):
    p = subprocess.run(argv, input=input, capture_output=True, timeout=timeout,
                       stdin=None if input is not None else subprocess.DEVNULL)
    if p.returncode != 0:
        raise AssertionError("%s failed (%d): %s" % (" ".join(argv), p.returncode,
                                                     p.stderr.decode(errors="replace")))
    return p


class Certs:
    """Certificates under one directory: cert(name), key(name) give the paths."""

    def __init__(self, d):
        self.dir = d
        os.makedirs(d, exist_ok=True)
        self.ca = self.cert("ca")
        run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
             self.key("ca"), "-out", self.ca, "-days", "3", "-subj", "/CN=LP Test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash"])

    def cert(self, name):
        return os.path.join(self.dir, name + ".pem")

    def key(self, name):
        return os.path.join(self.dir, name + ".key")

    def issue(self, name, cn, dns=(), ec=False, client=False, self_signed=False):
        """A leaf certificate `name` with subject CN=cn and these SAN DNS names, signed by
        the CA (or by itself)."""
        keyopt = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"] if ec else \
            ["-newkey", "rsa:2048"]
        ext = ["basicConstraints=CA:FALSE",
               "extendedKeyUsage=" + ("clientAuth" if client else "serverAuth"),
               "subjectKeyIdentifier=hash"]
        if dns:
            ext.append("subjectAltName=" + ",".join("DNS:" + n for n in dns))
        if self_signed:
            args = [OPENSSL, "req", "-x509"] + keyopt + [
                "-nodes", "-keyout", self.key(name), "-out", self.cert(name), "-days", "3",
                "-subj", "/CN=" + cn]
            for e in ext:
                args += ["-addext", e]
            run(args)
            return self
        csr = os.path.join(self.dir, name + ".csr")
        extfile = os.path.join(self.dir, name + ".ext")
        with open(extfile, "w") as f:
            f.write("\n".join(ext + ["authorityKeyIdentifier=keyid:always"]) + "\n")
        run([OPENSSL, "req", "-new"] + keyopt + ["-nodes", "-keyout", self.key(name),
                                                 "-out", csr, "-subj", "/CN=" + cn])
        run([OPENSSL, "x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.key("ca"),
             "-set_serial", str(random.randrange(1, 1 << 62)), "-days", "3",
             "-out", self.cert(name), "-extfile", extfile])
        return self


CERTS = None


def setUpModule():
    global CERTS
    H.require_tool("openssl")
    c = Certs(os.path.join(H.Workdir.new("tls-certs"), "certs"))
    c.issue("default", "default-cert", ["default.test"])
    c.issue("exact", "exact-cert", ["a.test", "b.test"])
    c.issue("wild", "wild-cert", ["*.wild.test"], ec=True)
    c.issue("dual-rsa", "dual-rsa", ["dual.test"])
    c.issue("dual-ec", "dual-ec", ["dual.test"], ec=True)
    c.issue("override", "override-cert", ["ignored.test"])   # served as opt.override only
    c.issue("cnonly", "cnonly.test")                         # no SAN: the CN is the name
    c.issue("v2", "v2-cert", ["default.test"])
    c.issue("client", "alice", client=True)
    c.issue("selfclient", "mallory", client=True, self_signed=True)
    with open(c.cert("garbage"), "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n"
                "-----END CERTIFICATE-----\n")
    with open(c.key("garbage"), "w") as f:
        f.write("this is not a PEM key\n")
    CERTS = c


# --------------------------------------------------------------------------- clients


def client_ctx(cert=None, alpn=None, minv=None, maxv=None, ciphers=None):
    """A client context that verifies the server against the test CA (the name is not
    checked: the tests look at which certificate came)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(CERTS.ca)
    if cert:
        ctx.load_cert_chain(CERTS.cert(cert), CERTS.key(cert))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if minv:
        ctx.minimum_version = minv
    if maxv:
        ctx.maximum_version = maxv
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


class TLSClient(H.Client):
    """H.Client over TLS: the same request/response helpers on an SSLSocket."""

    def __init__(self, port, sni="a.test", ctx=None, timeout=None, session=None):
        self.timeout = timeout if timeout is not None else H.T(10)
        raw = socket.create_connection(("127.0.0.1", port), timeout=self.timeout)
        try:
            self.sock = (ctx or client_ctx()).wrap_socket(raw, server_hostname=sni,
                                                          session=session)
        except BaseException:
            raw.close()
            raise
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self.tls_error = None

    def _fill(self, timeout=None):
        if self.eof:
            return False
        self.sock.settimeout(timeout if timeout is not None else self.timeout)
        try:
            data = self.sock.recv(1 << 18)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError) as e:
            self.eof = self.reset = True
            self.tls_error = e
            return False
        except ssl.SSLError as e:
            self.eof = self.reset = True
            self.tls_error = e
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def is_open(self, wait=0.3):
        if self.eof:
            return False
        try:
            self._fill(timeout=wait)
        except socket.timeout:
            return True
        return not self.eof

    def cn(self):
        return peer_cn(self.sock)



class MemTLS:
    """A single-threaded TLS client over a non-blocking socket (ssl.SSLObject on memory
    BIOs): sends and receives at the same time, and can send a close_notify while the
    response is still coming."""

    def __init__(self, port, sni="a.test", ctx=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=H.T(10))
        self.sock.setblocking(False)
        self.inc, self.outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = (ctx or client_ctx()).wrap_bio(self.inc, self.outb, server_hostname=sni)
        self.wpending = bytearray()
        self.plain = bytearray()
        self.tcp_eof = False
        self.tls_end = None   # "close_notify" or the error that ended the input
        self.pump(lambda: self._try(self.obj.do_handshake), H.T(10), "handshake")

    def close(self):
        self.sock.close()

    def _try(self, f):
        try:
            f()
            return True
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False

    def _read_plain(self):
        while self.tls_end is None:
            try:
                d = self.obj.read(1 << 17)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except ssl.SSLZeroReturnError:
                self.tls_end = "close_notify"
                return
            except ssl.SSLError as e:
                self.tls_end = e
                return
            if not d:
                self.tls_end = "close_notify"
                return
            self.plain += d

    def pump(self, done, timeout, what, feed=None):
        """Moves bytes both ways until done() is true.  feed() is called when the socket
        can take more and returns plaintext to send (b"" when there is nothing more)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.obj.server_side is False and self.obj.version() is not None:
                self._read_plain()
            if done():
                self.wpending += self.outb.read()
                if not self.wpending:
                    return
            if feed and len(self.wpending) < (256 << 10):
                piece = feed()
                if piece:
                    self.obj.write(piece)
            self.wpending += self.outb.read()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out waiting for %s" % what)
            r, w, _ = select.select([] if self.tcp_eof else [self.sock],
                                    [self.sock] if self.wpending else [], [], min(left, 0.5))
            if w:
                try:
                    n = self.sock.send(self.wpending)
                    del self.wpending[:n]
                except BlockingIOError:
                    pass
            if r:
                try:
                    d = self.sock.recv(1 << 17)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    d = b""
                if d:
                    self.inc.write(d)
                else:
                    self.tcp_eof = True
                    self.inc.write_eof()
            if self.tcp_eof and not self.wpending and done() is False and \
                    self.tls_end is not None:
                raise AssertionError("connection ended (%s) before %s; have %d bytes: %r" % (self.tls_end, what, len(self.plain), bytes(self.plain[:300])))

    def response_complete(self):
        """A complete Content-Length response at the start of plain: (head, body)."""
        i = self.plain.find(b"\r\n\r\n")
        if i < 0:
            return None
        head = bytes(self.plain[:i])
        n = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                n = int(v)
        if len(self.plain) < i + 4 + n:
            return None
        return head, bytes(self.plain[i + 4:i + 4 + n])


def peer_cn(sock):
    subj = sock.getpeercert()["subject"]
    return dict(x[0] for x in subj)["commonName"]


def s_client(port, *args, request=None, hold=0.0, timeout=None):
    """Runs `openssl s_client` against port; returns (returncode, stdout+stderr text).
    request: bytes written to stdin (with -ign_eof the client waits for the server to
    close); hold: seconds stdin stays open before EOF."""
    argv = [OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % port, "-CAfile", CERTS.ca]
    argv += list(args)
    if request is not None:
        argv.append("-ign_eof")
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, preexec_fn=H._preexec)
    with H._LIVE_LOCK:
        H._LIVE[p.pid] = p
    try:
        try:
            if request:
                p.stdin.write(request)
                p.stdin.flush()
        except BrokenPipeError:
            pass
        if hold:
            time.sleep(hold)
        try:
            out, _ = p.communicate(timeout=timeout or H.T(15))
        except subprocess.TimeoutExpired:
            H.stop_process(p, signal.SIGKILL)
            raise AssertionError("openssl s_client %s did not finish" % " ".join(args))
    finally:
        H.stop_process(p, signal.SIGKILL)
    return p.returncode, out.decode("utf-8", "replace")


def subject_cn(text):
    """The CN of the server certificate in s_client output."""
    for line in text.splitlines():
        if line.startswith("subject="):
            for part in line[len("subject="):].split(","):
                k, _, v = part.strip().partition("=")
                if k.strip() == "CN":
                    return v.strip()
    return None


def handshake_ok(text):
    return "Cipher is (NONE)" not in text and ("New, TLSv" in text or "Reused, TLSv" in text)


CLOSE_REQ = b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"


# --------------------------------------------------------------------------- the main proxy


class TLSTest(H.ProxyTestCase):
    """One proxy (2 workers) with several listeners:
       main     certificates (default first, exact, wildcard, RSA+ECDSA, names override,
                CN only), default settings
       mtls     client certificate required (CA); optional on `mtlsopt`
       v13      min_version TLSv1.3
       quick    handshake_timeout 1 s
       nores    no tickets and no session cache
       plain    no TLS"""

    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_origin("a")
        C = CERTS
        certs = [
            {"cert": C.cert("default"), "key": C.key("default")},
            {"cert": C.cert("exact"), "key": C.key("exact")},
            {"cert": C.cert("wild"), "key": C.key("wild")},
            {"cert": C.cert("dual-rsa"), "key": C.key("dual-rsa")},
            {"cert": C.cert("dual-ec"), "key": C.key("dual-ec")},
            {"cert": C.cert("override"), "key": C.key("override"), "names": ["opt.override"]},
            {"cert": C.cert("cnonly"), "key": C.key("cnonly")},
        ]
        simple = {"cert": C.cert("exact"), "key": C.key("exact")}
        names = ("main", "mtls", "mtlsopt", "v13", "quick", "nores", "plain")

        def tls_listen(name, tls):
            return {"address": "127.0.0.1:0", "tls": tls}

        listen = [
            tls_listen("main", {"certificates": certs}),
            tls_listen("mtls", dict(simple, client_ca=C.ca, verify_client="required")),
            tls_listen("mtlsopt", dict(simple, client_ca=C.ca, verify_client="optional")),
            tls_listen("v13", dict(simple, min_version="TLSv1.3")),
            tls_listen("quick", dict(simple, handshake_timeout=1)),
            tls_listen("nores", dict(simple, session_tickets=False, session_cache=0)),
            {"address": "127.0.0.1:0"},
        ]
        cls.proxy = cls.start_proxy({"a": H.upstream(cls.origin.address())},
                                    [{"match": {"prefix": "/"}, "upstream": "a"}],
                                    workers=2, listen=listen,
                                    limits={"max_body_size": 16 << 20})
        # Listeners in config order, each on the port the proxy picked.
        cls.ports = dict(zip(names, cls.proxy.ports))
        cls.port = cls.ports["main"]

    def tearDown(self):
        self.assertAlive()

    def connect(self, port=None, sni="a.test", **kw):
        c = TLSClient(port or self.port, sni=sni, **kw)
        self.addCleanup(c.close)
        return c

    def sni_cn(self, sni, port=None):
        with TLSClient(port or self.port, sni=sni) as c:
            return c.cn()

    def wait_log(self, needle, what=None):
        H.wait_for(lambda: needle in self.proxy.stderr(), H.T(5), what=what or repr(needle))

    # ---------------------------------------------------------------- SNI

    def test_sni_exact_names(self):
        self.assertEqual(self.sni_cn("a.test"), "exact-cert")
        self.assertEqual(self.sni_cn("b.test"), "exact-cert")
        self.assertEqual(self.sni_cn("A.TeSt"), "exact-cert")  # names are case-insensitive
        self.assertEqual(self.sni_cn("default.test"), "default-cert")

    def test_sni_wildcard_one_label(self):
        self.assertEqual(self.sni_cn("x.wild.test"), "wild-cert")
        self.assertEqual(self.sni_cn("other-1.wild.test"), "wild-cert")
        # Not two labels, not the bare domain: those get the default certificate.
        self.assertEqual(self.sni_cn("a.b.wild.test"), "default-cert")
        self.assertEqual(self.sni_cn("wild.test"), "default-cert")

    def test_sni_unknown_and_missing_get_the_default(self):
        self.assertEqual(self.sni_cn("unknown.example"), "default-cert")
        self.assertEqual(self.sni_cn(None), "default-cert")
        # s_client without SNI too, and the request still works.
        rc, out = s_client(self.port, "-noservername", request=CLOSE_REQ)
        self.assertEqual(subject_cn(out), "default-cert", out)
        self.assertIn("HTTP/1.1 200", out)

    def test_sni_names_override_and_cn_fallback(self):
        # names = {"opt.override"} replaces the certificate's own SAN names.
        self.assertEqual(self.sni_cn("opt.override"), "override-cert")
        self.assertEqual(self.sni_cn("ignored.test"), "default-cert")
        # A certificate without subjectAltName serves its CN.
        self.assertEqual(self.sni_cn("cnonly.test"), "cnonly.test")

    def test_sni_request_still_routed_by_host(self):
        c = self.connect(sni="x.wild.test")
        r = c.request("GET", "/", host="x.wild.test")
        self.assertEqual((r.status, r.body), (200, b"hello"))

    def test_rsa_and_ecdsa_by_signature_algorithms(self):
        cases = [
            (["-tls1_3", "-sigalgs", "ecdsa_secp256r1_sha256"], "dual-ec"),
            (["-tls1_3", "-sigalgs", "rsa_pss_rsae_sha256"], "dual-rsa"),
            (["-tls1_2", "-sigalgs", "ECDSA+SHA256"], "dual-ec"),
            (["-tls1_2", "-sigalgs", "RSA+SHA256"], "dual-rsa"),
            (["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"], "dual-ec"),
            (["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"], "dual-rsa"),
        ]
        for args, want in cases:
            with self.subTest(args=args):
                rc, out = s_client(self.port, "-servername", "dual.test", *args)
                self.assertTrue(handshake_ok(out), out)
                self.assertEqual(subject_cn(out), want, out)
                self.assertIn("Verify return code: 0 (ok)", out)

    # ---------------------------------------------------------------- ALPN

    def test_alpn_http11(self):
        c = self.connect(ctx=client_ctx(alpn=["h2", "http/1.1"]))
        self.assertEqual(c.sock.selected_alpn_protocol(), "http/1.1")
        self.assertEqual(c.request("GET", "/").status, 200)
        # No ALPN at all is fine too.
        c2 = self.connect()
        self.assertIsNone(c2.sock.selected_alpn_protocol())
        self.assertEqual(c2.request("GET", "/").status, 200)

    def test_alpn_h2_only_refused(self):
        with self.assertRaises(ssl.SSLError) as cm:
            TLSClient(self.port, ctx=client_ctx(alpn=["h2"])).close()
        self.assertIn("NO APPLICATION PROTOCOL", str(cm.exception).upper().replace("_", " "))
        rc, out = s_client(self.port, "-servername", "a.test", "-alpn", "h2")
        self.assertIn("no application protocol", out)
        self.assertNotEqual(rc, 0, out)

    def test_curl_https(self):
        self.assertTrue(CURL, "curl not found in PATH (a test dependency: ./dev installs it)")
        for extra in ([], ["--http2"], ["--tlsv1.2", "--tls-max", "1.2"]):
            with self.subTest(extra=extra):
                p = subprocess.run(
                    [CURL, "-sS", "--max-time", str(int(H.T(15))), "--cacert", CERTS.ca,
                     "--resolve", "a.test:%d:127.0.0.1" % self.port,
                     "-w", "\\n%{http_code} %{http_version} %{ssl_verify_result}"] + extra +
                    ["https://a.test:%d/" % self.port],
                    capture_output=True, timeout=H.T(20), stdin=subprocess.DEVNULL)
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertEqual(p.stdout.decode(), "hello\n200 1.1 0")

    # ---------------------------------------------------------------- versions and ciphers

    def test_tls12_and_tls13_work(self):
        for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            with self.subTest(version=v):
                c = self.connect(ctx=client_ctx(minv=v, maxv=v))
                self.assertEqual(c.sock.version(), {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                                    ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[v])
                r = c.request("GET", "/")
                self.assertEqual((r.status, r.body), (200, b"hello"))
        # TLS 1.2 without asking: a Mozilla intermediate cipher with forward secrecy.
        c = self.connect(ctx=client_ctx(maxv=ssl.TLSVersion.TLSv1_2))
        name = c.sock.cipher()[0]
        self.assertTrue(name.startswith(("ECDHE-", "DHE-")), name)
        self.assertTrue("GCM" in name or "CHACHA20" in name, name)

    def test_tls10_and_tls11_refused(self):
        for flag in ("-tls1", "-tls1_1"):
            with self.subTest(flag=flag):
                # SECLEVEL=0 so that the client really offers the old protocol.
                rc, out = s_client(self.port, "-servername", "a.test", flag, "-cipher",
                                   "DEFAULT:@SECLEVEL=0")
                self.assertNotEqual(rc, 0, out)
                self.assertFalse(handshake_ok(out), out)
                self.assertIn("alert protocol version", out)
        self.wait_log("TLS handshake failed: unsupported protocol")

    def test_weak_ciphers_refused(self):
        weak = ["AES128-SHA", "AES256-SHA256", "AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA",
                "ECDHE-RSA-AES256-SHA384"]
        for extra in ("DES-CBC3-SHA", "RC4-SHA"):
            p = subprocess.run([OPENSSL, "ciphers", extra + ":@SECLEVEL=0"],
                               capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
            if p.returncode == 0:
                weak.append(extra)
        for cipher in weak:
            with self.subTest(cipher=cipher):
                rc, out = s_client(self.port, "-servername", "a.test", "-tls1_2", "-cipher",
                                   cipher + ":@SECLEVEL=0")
                self.assertNotEqual(rc, 0, out)
                self.assertFalse(handshake_ok(out), out)
                self.assertIn("alert handshake failure", out)
        self.wait_log("TLS handshake failed: no shared cipher")

    def test_min_version_tls13(self):
        port = self.ports["v13"]
        with self.assertRaises(ssl.SSLError):
            TLSClient(port, ctx=client_ctx(maxv=ssl.TLSVersion.TLSv1_2)).close()
        rc, out = s_client(port, "-servername", "a.test", "-tls1_2")
        self.assertFalse(handshake_ok(out), out)
        self.assertIn("alert protocol version", out)
        c = self.connect(port)
        self.assertEqual(c.sock.version(), "TLSv1.3")
        self.assertEqual(c.request("GET", "/").status, 200)

    # ---------------------------------------------------------------- resumption

    def resume(self, port, *args, expect_reused=True):
        sess = os.path.join(H.Workdir.new("sess"), "sess.pem")
        rc, out = s_client(port, "-servername", "a.test", "-sess_out", sess, *args,
                           request=CLOSE_REQ, hold=0.5)
        self.assertIn("New, TLSv", out)
        self.assertIn("HTTP/1.1 200", out)
        if not expect_reused and not os.path.exists(sess):
            return out
        self.assertTrue(os.path.getsize(sess) > 0, out)
        rc, out = s_client(port, "-servername", "a.test", "-sess_in", sess, *args,
                           request=CLOSE_REQ, hold=0.5)
        self.assertIn("HTTP/1.1 200", out)
        if expect_reused:
            self.assertIn("Reused, TLSv", out)
        else:
            self.assertNotIn("Reused, TLSv", out)
            self.assertIn("New, TLSv", out)
        return out

    def test_resumption_tls13_ticket(self):
        out = self.resume(self.port, "-tls1_3")
        self.assertIn("Reused, TLSv1.3", out)

    def test_resumption_tls12_ticket(self):
        out = self.resume(self.port, "-tls1_2")
        self.assertIn("Reused, TLSv1.2", out)

    def test_resumption_tls12_session_cache(self):
        out = self.resume(self.port, "-tls1_2", "-no_ticket")
        self.assertIn("Reused, TLSv1.2", out)

    def test_no_resumption_when_disabled(self):
        port = self.ports["nores"]
        self.resume(port, "-tls1_2", expect_reused=False)
        self.resume(port, "-tls1_2", "-no_ticket", expect_reused=False)
        self.resume(port, "-tls1_3", expect_reused=False)

    def test_python_session_reuse_across_workers(self):
        for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            with self.subTest(version=v):
                ctx = client_ctx(minv=v, maxv=v)
                c = TLSClient(self.port, ctx=ctx)
                self.assertEqual(c.request("GET", "/").status, 200)  # the ticket arrives
                sess = c.sock.session
                self.assertFalse(c.sock.session_reused)
                c.close()
                self.assertIsNotNone(sess)
                # Two workers: some of these land on the other one; the ticket keys are
                # shared, so every one resumes.
                for i in range(12):
                    with TLSClient(self.port, ctx=ctx, session=sess) as c2:
                        self.assertTrue(c2.sock.session_reused, "attempt %d" % i)
                        r = c2.request("GET", "/")
                        self.assertEqual((r.status, r.body), (200, b"hello"))
                        if v == ssl.TLSVersion.TLSv1_3:
                            sess = c2.sock.session  # TLS 1.3 tickets are single use

    # ---------------------------------------------------------------- mTLS

    def refused_after_handshake(self, port, ctx):
        """True when the server refuses the client certificate: the handshake fails, or
        (TLS 1.3, where the client finishes first) the first read gets an alert."""
        try:
            c = TLSClient(port, ctx=ctx)
        except (ssl.SSLError, ConnectionResetError) as e:
            return str(e)
        try:
            c.send(CLOSE_REQ)
            try:
                c._fill()
            except socket.timeout:
                return None
            if c.buf:
                return None
            return str(c.tls_error or "closed")
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
            return str(e)
        finally:
            c.close()

    def test_mtls_required(self):
        port = self.ports["mtls"]
        for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            with self.subTest(version=v):
                # A certificate from the CA: accepted.
                c = self.connect(port, ctx=client_ctx(cert="client", minv=v, maxv=v))
                r = c.request("GET", "/")
                self.assertEqual((r.status, r.body), (200, b"hello"))
                # No certificate: refused.
                err = self.refused_after_handshake(port, client_ctx(minv=v, maxv=v))
                self.assertIsNotNone(err, "no client certificate was accepted")
                # A self-signed one: refused.
                err = self.refused_after_handshake(port, client_ctx(cert="selfclient",
                                                                    minv=v, maxv=v))
                self.assertIsNotNone(err, "a self-signed client certificate was accepted")
        self.wait_log("TLS handshake failed: peer did not return a certificate")
        self.wait_log("TLS handshake failed: certificate verify failed")
        # The server asks for certificates from the CA.
        rc, out = s_client(port, "-servername", "a.test")
        self.assertIn("Acceptable client certificate CA names", out)
        self.assertIn("CN = LP Test CA", out)

    def test_mtls_optional(self):
        port = self.ports["mtlsopt"]
        c = self.connect(port)
        r = c.request("GET", "/")
        self.assertEqual((r.status, r.body), (200, b"hello"))
        c = self.connect(port, ctx=client_ctx(cert="client"))
        self.assertEqual(c.request("GET", "/").status, 200)
        # Optional still verifies a certificate that is presented.
        err = self.refused_after_handshake(port, client_ctx(cert="selfclient"))
        self.assertIsNotNone(err, "a self-signed client certificate was accepted")

    # ---------------------------------------------------------------- protocol confusion

    def test_plain_http_on_tls_port(self):
        c = H.Client(self.port)
        self.addCleanup(c.close)
        c.send(H.build_request("GET", "/", host="a.test"))
        r = c.read_response()
        self.assertEqual(r.status, 400)
        self.assertIn(b"HTTPS", r.body)
        self.assertEqual(r.header("Content-Type"), "text/plain")
        self.assertIn("close", r.tokens("connection"))
        self.assertClosed(c, H.T(5))
        self.wait_log("plain HTTP request on a TLS port: 400, closing")
        # Nothing reached the origin for it: the next TLS request is fine.
        self.assertEqual(self.connect().request("GET", "/").status, 200)

    def test_tls_hello_on_plain_port(self):
        port = self.ports["plain"]
        t0 = time.monotonic()
        with self.assertRaises((ssl.SSLError, ConnectionResetError, OSError)):
            TLSClient(port, timeout=H.T(5)).close()
        self.assertLess(time.monotonic() - t0, H.T(2), "the proxy made the TLS client wait")
        self.wait_log("TLS handshake on a plain HTTP port: closing")
        # s_client too: no hang, no handshake.
        rc, out = s_client(port, "-servername", "a.test", timeout=H.T(10))
        self.assertFalse(handshake_ok(out), out)
        # The plain port still serves plain HTTP, with X-Forwarded-Proto: http.
        r = H.get(port, "/headers")
        self.assertEqual(r.status, 200)
        hdrs = [(n.lower(), v) for n, v in r.json()["headers"]]
        self.assertIn(("x-forwarded-proto", "http"), hdrs)

    # ---------------------------------------------------------------- handshake timeout

    def test_handshake_timeout_silent_client(self):
        port = self.ports["quick"]
        c = H.Client(port, timeout=H.T(10))
        self.addCleanup(c.close)
        t0 = time.monotonic()
        closed, extra = c.wait_closed(H.T(6))
        took = time.monotonic() - t0
        self.assertTrue(closed, "a silent client was not closed")
        self.assertEqual(extra, b"")
        self.assertGreater(took, 0.8)
        self.assertLess(took, H.T(4))
        self.wait_log("TLS handshake timed out")

    def test_handshake_timeout_half_hello(self):
        port = self.ports["quick"]
        c = H.Client(port, timeout=H.T(10))
        self.addCleanup(c.close)
        # A handshake record announcing 512 bytes, of which a ClientHello's start is sent.
        c.send(b"\x16\x03\x01\x02\x00" + b"\x01\x00\x01\xfc\x03\x03" + os.urandom(32))
        t0 = time.monotonic()
        closed, extra = c.wait_closed(H.T(6))
        took = time.monotonic() - t0
        self.assertTrue(closed, "a half ClientHello kept the connection open")
        self.assertEqual(extra, b"")
        self.assertGreater(took, 0.8)
        self.assertLess(took, H.T(4))

    def test_handshake_timeout_does_not_cut_a_finished_handshake(self):
        port = self.ports["quick"]
        c = self.connect(port)
        time.sleep(1.5)  # past handshake_timeout, well within client_header
        r = c.request("GET", "/")
        self.assertEqual((r.status, r.body), (200, b"hello"))

    # ---------------------------------------------------------------- HTTP over TLS

    def test_get_post_echo(self):
        c = self.connect()
        r = c.request("GET", "/")
        self.assertEqual((r.status, r.body, r.complete), (200, b"hello", True))
        for n in (0, 1, 5000, 100000):
            body = os.urandom(n)
            r = c.request("POST", "/echo", body=body)
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, body, "echo of %d bytes" % n)

    def test_chunked_upload_and_response(self):
        c = self.connect()
        body = os.urandom(70000)
        r = c.request("POST", "/echo", headers=[("Transfer-Encoding", "chunked")],
                      body=H.chunked(body, sizes=[1, 4096, 30000]))
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, body)
        r = c.request("GET", "/chunked?chunks=40&size=3000")
        self.assertEqual((r.status, r.framing, r.complete), (200, "chunked", True))
        self.assertEqual(r.body, H.large_body(120000))

    def test_large_response_and_upload(self):
        c = self.connect()
        chk = H.PatternChecker()
        r = c.request("GET", "/large?bytes=%d" % (1 << 20), sink=chk)
        self.assertEqual((r.status, r.complete, r.body_len), (200, True, 1 << 20))
        self.assertIsNone(chk.bad_at)
        # A 3 MiB upload echoed while it is sent: the TLS input path under backpressure
        # (the client reads and writes at the same time, on one thread).
        m = MemTLS(self.port)
        self.addCleanup(m.close)
        body = os.urandom(3 << 20)
        data = [("POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\n" %
                 len(body)).encode() + body]

        def feed():
            if not data[0]:
                return b""
            piece, data[0] = data[0][:65536], data[0][65536:]
            return piece
        m.pump(lambda: m.response_complete() is not None and not data[0], H.T(60),
               "the 3 MiB echo", feed=feed)
        head, echoed = m.response_complete()
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.assertEqual(len(echoed), len(body))
        self.assertTrue(echoed == body, "upload echo differs")

    def test_keepalive_many_requests_one_connection(self):
        c = self.connect()
        conn_ids = set()
        for i in range(30):
            r = c.request("GET", "/fixed?size=%d" % (i * 997))
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"x" * (i * 997))
            conn_ids.add(r.header("X-Conn-Id"))
        self.assertTrue(c.is_open(0.2))

    def test_pipelined_requests(self):
        c = self.connect()
        paths = ["/fixed?size=%d" % n for n in (10, 70000, 0, 3, 20000)] + ["/", "/chunked"]
        c.send(b"".join(H.build_request("GET", p) for p in paths) +
               H.build_request("POST", "/echo", body=b"last one"))
        for p in paths:
            r = c.read_response()
            self.assertEqual(r.status, 200, p)
            self.assertTrue(r.complete, p)
            if p.startswith("/fixed?size="):
                n = int(p.split("=")[1])
                self.assertEqual(r.body, b"x" * n)
        r = c.read_response()
        self.assertEqual(r.body, b"last one")

    def test_x_forwarded_proto_https(self):
        r = self.connect().request("GET", "/headers",
                                   headers=[("X-Forwarded-Proto", "http")])
        self.assertEqual(r.status, 200)
        hdrs = [(n.lower(), v) for n, v in r.json()["headers"]]
        self.assertEqual([v for n, v in hdrs if n == "x-forwarded-proto"], ["https"], hdrs)

    def test_client_close_notify_after_request(self):
        # The request, then at once the client's close_notify (a TLS half-close): the
        # answer still comes, then the proxy closes.
        for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            for req in (H.build_request("GET", "/fixed?size=200000"),
                        H.build_request("POST", "/echo", body=b"x" * 200000)):
                with self.subTest(version=v, request=req[:20]):
                    m = MemTLS(self.port, ctx=client_ctx(minv=v, maxv=v))
                    self.addCleanup(m.close)
                    m.obj.write(req)
                    try:
                        m.obj.unwrap()
                    except ssl.SSLWantReadError:
                        pass
                    m.pump(lambda: m.response_complete() is not None, H.T(10),
                           "the response")
                    head, body = m.response_complete()
                    self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
                    self.assertEqual(body, b"x" * 200000)
                    m.pump(lambda: m.tcp_eof, H.T(5), "the close")
        # An idle connection that gets a close_notify is closed at once.
        m2 = MemTLS(self.port)
        self.addCleanup(m2.close)
        try:
            m2.obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        t0 = time.monotonic()
        m2.pump(lambda: m2.tcp_eof, H.T(5), "the close")
        self.assertLess(time.monotonic() - t0, H.T(2))

    def test_connection_close_ends_with_close_notify(self):
        c = self.connect()
        c.send(CLOSE_REQ)
        r = c.read_response()
        self.assertEqual((r.status, r.body), (200, b"hello"))
        closed, _ = c.wait_closed(H.T(5))
        self.assertTrue(closed)
        self.assertIsNone(c.tls_error, "closed without close_notify")

    def test_websocket_over_tls(self):
        c = self.connect()
        c.send(H.build_request("GET", "/ws", [("Upgrade", "websocket"),
                                              ("Connection", "Upgrade"),
                                              ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                              ("Sec-WebSocket-Version", "13")]))
        r = c.read_response()
        self.assertEqual(r.status, 101, r)
        self.assertEqual(r.header("Sec-WebSocket-Accept"), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        for payload, op in ((b"hello tls", 1), (os.urandom(300000), 2), (b"", 1)):
            c.send(encode_frame(op, payload))
            self.assertEqual(read_frame(c), (op, True, payload))
        # Several frames in one write.
        c.send(b"".join(encode_frame(1, b"m%d" % i) for i in range(20)))
        for i in range(20):
            self.assertEqual(read_frame(c), (1, True, b"m%d" % i))
        c.send(encode_frame(8, b"\x03\xe8bye"))
        self.assertEqual(read_frame(c), (8, True, b"\x03\xe8bye"))
        self.assertClosed(c, H.T(5))

    # ---------------------------------------------------------------- load

    def test_load_keepalive(self):
        threads, per = 8, 200
        failures = []
        ok = [0]
        lock = threading.Lock()

        def worker(k):
            rnd = random.Random(k)
            try:
                with TLSClient(self.port, timeout=H.T(20)) as c:
                    for i in range(per):
                        kind = i % 3
                        if kind == 0:
                            r = c.request("GET", "/")
                            good = r.status == 200 and r.body == b"hello"
                        elif kind == 1:
                            n = rnd.randrange(1, 40000)
                            r = c.request("GET", "/fixed?size=%d" % n)
                            good = r.status == 200 and r.body == b"x" * n
                        else:
                            body = rnd.randbytes(rnd.randrange(0, 3000))
                            r = c.request("POST", "/echo", body=body)
                            good = r.status == 200 and r.body == body
                        if not good or not r.complete:
                            with lock:
                                failures.append((k, i, r))
                            return
                        with lock:
                            ok[0] += 1
            except Exception as e:  # noqa: BLE001
                with lock:
                    failures.append((k, "exception", repr(e)))

        ts = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(H.T(120))
        self.assertFalse(any(t.is_alive() for t in ts), "load threads hung")
        self.assertEqual(failures, [])
        self.assertEqual(ok[0], threads * per)

    def test_handshake_burst_with_clients_leaving(self):
        """Many ClientHellos at once: past 1 ms of handshakes in a loop turn the rest wait for
        the next turn (conn.c, hs_q). Clients that leave while theirs waits leave a hole in
        the queue, which must be skipped; everyone else is served."""
        n, leave = 48, set(range(0, 48, 3))
        conns = []
        for i in range(n):
            inc, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = client_ctx(maxv=ssl.TLSVersion.TLSv1_2).wrap_bio(inc, outb,
                                                                 server_hostname="a.test")
            with self.assertRaises(ssl.SSLWantReadError):
                obj.do_handshake()
            sock = socket.create_connection(("127.0.0.1", self.ports["nores"]),
                                            timeout=H.T(20))
            conns.append((sock, obj, inc, outb, outb.read()))
        for i, (sock, _, _, _, hello) in enumerate(conns):
            sock.sendall(hello)
            if i in leave:
                sock.close()  # its handshake may be waiting for a later turn
        for i, (sock, obj, inc, outb, _) in enumerate(conns):
            if i in leave:
                continue
            self.addCleanup(sock.close)
            deadline = time.monotonic() + H.T(20)
            while True:
                try:
                    obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pass
                sock.sendall(outb.read())
                d = sock.recv(65536)
                self.assertTrue(d, "connection %d closed during its handshake" % i)
                inc.write(d)
                self.assertLess(time.monotonic(), deadline, "handshake %d hung" % i)
            obj.write(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            sock.sendall(outb.read())
            got = b""
            while True:
                d = sock.recv(65536)
                if not d:
                    break
                inc.write(d)
                try:
                    while True:
                        piece = obj.read(65536)
                        if not piece:
                            break
                        got += piece
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    pass
                if got.endswith(b"hello"):
                    break
            self.assertTrue(got.startswith(b"HTTP/1.1 200") and got.endswith(b"hello"),
                            "connection %d: %r" % (i, got[:200]))
        self.assertTrue(self.proxy.alive())

    def test_load_new_connections(self):
        threads, per = 4, 40
        failures = []
        ok = [0]
        lock = threading.Lock()

        def worker(k):
            for i in range(per):
                try:
                    v = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)[i % 2]
                    with TLSClient(self.port, sni=("a.test", "x.wild.test", None)[i % 3],
                                   ctx=client_ctx(minv=v, maxv=v), timeout=H.T(20)) as c:
                        r = c.request("GET", "/fixed?size=%d" % (i * 100))
                        good = r.status == 200 and r.body == b"x" * (i * 100)
                        if not good:
                            raise AssertionError(repr(r))
                    with lock:
                        ok[0] += 1
                except Exception as e:  # noqa: BLE001
                    with lock:
                        failures.append((k, i, repr(e)))

        ts = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(H.T(120))
        self.assertFalse(any(t.is_alive() for t in ts), "load threads hung")
        self.assertEqual(failures, [])
        self.assertEqual(ok[0], threads * per)


# --------------------------------------------------------------------------- config errors


class TLSConfigTest(unittest.TestCase):
    """`luaproxy -t` on TLS configs: bad files are errors naming the file and the key path;
    relative paths are relative to the config file."""

    @classmethod
    def setUpClass(cls):
        H.require_proxy()
        cls.dir = H.Workdir.new("tls-config")
        os.makedirs(os.path.join(cls.dir, "certs"))
        for n in ("exact", "wild", "default"):
            shutil.copy(CERTS.cert(n), os.path.join(cls.dir, "certs", n + ".pem"))
            shutil.copy(CERTS.key(n), os.path.join(cls.dir, "certs", n + ".key"))

    def check(self, tls, name="proxy.lua"):
        cfg = H.make_config(18443, {"a": H.upstream("127.0.0.1:19001")},
                            [{"match": {"prefix": "/"}, "upstream": "a"}], access_log=False)
        cfg["listen"] = [{"address": "127.0.0.1:18080"},
                         {"address": "127.0.0.1:18443", "tls": tls}]
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(H.config_text(cfg))
        p = subprocess.run([H.LUAPROXY, "-t", "-c", path], capture_output=True,
                           timeout=H.T(30), stdin=subprocess.DEVNULL, preexec_fn=H._preexec)
        return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace"), path

    def bad(self, tls, *needles):
        rc, out, path = self.check(tls)
        self.assertNotEqual(rc, 0, out)
        self.assertIn(path, out)
        self.assertIn("listen[2].tls", out)
        for n in needles:
            self.assertIn(n, out)
        self.assertFalse(any(m in out for m in H.SANITIZER_MARKERS), out)
        return out

    def test_good_relative_paths(self):
        rc, out, _ = self.check({"cert": "certs/exact.pem", "key": "certs/exact.key",
                                 "certificates": [{"cert": "certs/wild.pem",
                                                   "key": "certs/wild.key"}]})
        self.assertEqual(rc, 0, out)

    def test_missing_cert_file(self):
        self.bad({"cert": "certs/nope.pem", "key": "certs/exact.key"},
                 os.path.join(self.dir, "certs/nope.pem"))

    def test_missing_key_file(self):
        self.bad({"cert": "certs/exact.pem", "key": "certs/nope.key"},
                 os.path.join(self.dir, "certs/nope.key"))

    def test_key_does_not_match(self):
        out = self.bad({"cert": "certs/exact.pem", "key": "certs/wild.key"}, "does not match",
                       os.path.join(self.dir, "certs/wild.key"))
        self.assertIn(os.path.join(self.dir, "certs/exact.pem"), out)

    def test_key_does_not_match_same_type(self):
        # An RSA key for another RSA certificate: OpenSSL refuses it as it is loaded; the
        # error still names both files.
        out = self.bad({"cert": "certs/exact.pem", "key": "certs/default.key"}, "does not match",
                       os.path.join(self.dir, "certs/default.key"))
        self.assertIn(os.path.join(self.dir, "certs/exact.pem"), out)

    def test_key_does_not_match_in_certificates_list(self):
        self.bad({"certificates": [{"cert": "certs/exact.pem", "key": "certs/exact.key"},
                                   {"cert": "certs/wild.pem", "key": "certs/exact.key"}]},
                 "does not match", os.path.join(self.dir, "certs/wild.pem"))

    def test_garbage_pem(self):
        self.bad({"cert": CERTS.cert("garbage"), "key": "certs/exact.key"}, CERTS.cert("garbage"))
        self.bad({"cert": "certs/exact.pem", "key": CERTS.key("garbage")}, CERTS.key("garbage"))

    def test_missing_client_ca(self):
        self.bad({"cert": "certs/exact.pem", "key": "certs/exact.key",
                  "client_ca": "certs/no-ca.pem"}, os.path.join(self.dir, "certs/no-ca.pem"))

    def test_bad_options(self):
        base = {"cert": "certs/exact.pem", "key": "certs/exact.key"}
        self.bad(dict(base, min_version="TLSv1.1"), "min_version")
        self.bad(dict(base, verify_client="required"), "verify_client", "client_ca")
        self.bad(dict(base, verify_client="sometimes", client_ca=CERTS.ca), "verify_client")
        self.bad(dict(base, ciphers="NO-SUCH-CIPHER"), "ciphers")
        self.bad({"cert": "certs/exact.pem"}, "cert and key")
        self.bad({"certificates": []}, "certificates")
        self.bad(dict(base, bogus=1), "bogus")


# --------------------------------------------------------------------------- reload


class TLSReloadTest(RT.ReloadTestCase):
    """Certificates reload with the config: a bad certificate keeps the old one serving; a
    new one is seen by new connections while open ones keep working; tickets from before a
    reload still resume."""

    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        files = {}
        for src, dst in (("default", "cur"), ("v2", "new")):
            for ext in (".pem", ".key"):
                with open(os.path.join(CERTS.dir, src + ext)) as f:
                    files[dst + ext] = f.read()
        cls.listen = [{"address": "127.0.0.1:0", "tls": {"cert": "cur.pem", "key": "cur.key"}}]
        cls.proxy = cls.start_reload_proxy({"a": H.upstream(cls.a.address())},
                                           [RT.route("/", upstream="a")], workers=2,
                                           listen=cls.listen, files=files)
        # Reloads name the bound port: the proxy keeps the listener.
        cls.tls_port = cls.proxy.port

    def tls_listen(self, cert, key):
        return [{"address": "127.0.0.1:%d" % self.tls_port,
                 "tls": {"cert": cert, "key": key}}]

    def cn(self, **kw):
        with TLSClient(self.tls_port, sni="default.test", **kw) as c:
            r = c.request("GET", "/")
            self.assertEqual((r.status, r.body), (200, b"hello"))
            return c.cn()

    def test_reload_certificates(self):
        self.assertEqual(self.cn(), "default-cert")
        keep = TLSClient(self.tls_port, sni="default.test")
        self.addCleanup(keep.close)
        self.assertEqual(keep.request("GET", "/").status, 200)
        ctx13 = client_ctx(minv=ssl.TLSVersion.TLSv1_3)
        with TLSClient(self.tls_port, ctx=ctx13) as c:
            self.assertEqual(c.request("GET", "/").status, 200)
            sess = c.sock.session
        gen = self.status()["generation"]

        # A garbage certificate: refused by POST /reload, the old one keeps serving.
        self.rewrite(listen=self.tls_listen(CERTS.cert("garbage"), "cur.key"))
        j = self.reload_fails()
        self.assertIn(CERTS.cert("garbage"), j["error"])
        self.assertIn("listen[1].tls", j["error"])
        self.assertEqual(self.cn(), "default-cert")
        # A key that does not match, by SIGHUP: logged, the old one keeps serving.
        self.rewrite(listen=self.tls_listen("new.pem", "cur.key"))
        self.proxy.signal(signal.SIGHUP)
        needle = "reload failed, generation %d keeps serving" % gen
        H.wait_for(lambda: [l for l in self.log_lines(needle) if "cur.key" in l], H.T(5),
                   what="the failed SIGHUP reload in the log")
        line = [l for l in self.log_lines(needle) if "cur.key" in l][-1]
        self.assertIn("listen[1].tls", line)
        self.assertIn("does not match", line)
        self.assertEqual(self.status()["generation"], gen)
        self.assertEqual(self.cn(), "default-cert")
        self.assertEqual(keep.request("GET", "/").status, 200)

        # A new certificate: new connections see it, the open one keeps working.
        self.rewrite(listen=self.tls_listen("new.pem", "new.key"))
        j = self.reload()
        self.assertEqual(j["generation"], gen + 1)
        for _ in range(6):  # both workers
            self.assertEqual(self.cn(), "v2-cert")
        self.assertEqual(keep.cn(), "default-cert")
        for _ in range(3):
            r = keep.request("GET", "/fixed?size=5000")
            self.assertEqual((r.status, r.body), (200, b"x" * 5000))
        # A ticket issued before the reload still resumes (the key ring is process-wide).
        with TLSClient(self.tls_port, ctx=ctx13, session=sess) as c:
            self.assertTrue(c.sock.session_reused)
            self.assertEqual(c.request("GET", "/").status, 200)
        self.assertAlive()


if __name__ == "__main__":
    H.main()
