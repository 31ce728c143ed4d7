#!/usr/bin/env python3
"""Active health checks speak to targets the way the proxy path does (issue #10, defect 6,
docs/health.md): through the upstream's TLS settings (verification, SNI) and with the
engine's response parser.

- an https upstream whose target answers 200 stays up, and its probes arrive (decrypted)
  with the SNI the proxy path sends; a DNS target's probes send and verify its name;
- a target whose certificate fails verification is marked down, with the reason logged;
  with verify = false the same target is up;
- the status is read right when the answer comes in pieces (TLS records or TCP segments a
  few milliseconds apart), after an interim 103, and a target answering 503 in pieces goes
  down; a response head the proxy would refuse is a failed probe;
- a target that takes the request and never answers, one that accepts the connection and
  never speaks TLS, and one that closes before the head are failed probes, each with its
  reason (the probe's deadline runs in the main loop's endpoint heap).

The origins are small Python servers that write their answer piece by piece."""

import os
import socket
import ssl
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reload"))
sys.path.insert(0, HERE)
import test_health as TH  # noqa: E402
import test_tls_upstream as TU  # noqa: E402
from reloadtest import H  # noqa: E402


class PieceOrigin:
    """Accepts connections (TLS when cert is given), reads a request head and answers with
    `pieces`, each written on its own (its own TLS record) `gap` seconds apart, then closes.
    Records the User-Agent and the SNI of every request."""

    def __init__(self, pieces, cert=None, key=None, gap=0.03, hold=False):
        """hold: after the request head, answer nothing and keep the connection open until
        close()."""
        self.pieces = [p.encode() if isinstance(p, str) else p for p in pieces]
        self.hold = hold
        self.gap = gap
        self.ctx = None
        self.lock = threading.Lock()
        self.probes = 0
        self.snis = set()
        if cert:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(cert, key)
            self.ctx.sni_callback = self._on_sni
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _on_sni(self, sslobj, name, _ctx):
        with self.lock:
            self.snis.add(name)

    def address(self):
        return "127.0.0.1:%d" % self.port

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        try:
            conn.settimeout(H.T(5))
            if self.ctx:
                conn = self.ctx.wrap_socket(conn, server_side=True)
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = conn.recv(4096)
                if not d:
                    return
                buf += d
            if b"user-agent: luaproxy-health/" in buf.lower():
                with self.lock:
                    self.probes += 1
            if self.hold:
                self._stop.wait()
            for piece in self.pieces:
                conn.sendall(piece)
                time.sleep(self.gap)
        except (OSError, ssl.SSLError):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def count(self):
        with self.lock:
            return self.probes

    def close(self):
        self._stop.set()
        self.thread.join(H.T(5))
        self.sock.close()


OK_IN_PIECES = ["HTTP/1.1 2", "00 O", "K\r\nContent-Le", "ngth: 2\r\n", "\r\n", "ok"]
UNAVAILABLE_IN_PIECES = ["HTTP/1.1 5", "03 Service Unavailable\r\nContent-Length: 0\r\n",
                         "\r\n"]
EARLY_HINTS_THEN_OK = ["HTTP/1.1 10", "3 Early Hints\r\nLink: </s.css>\r\n", "\r\nHTTP/1.1 2",
                       "00 OK\r\nContent-Length: 2\r\n\r\nok"]
BIG_HEAD = ["HTTP/1.1 200 OK\r\nX-Big: " + "x" * 3000, "x" * 3000 + "\r\n",
            "X-More: " + "y" * 5000 + "\r\n", "Content-Length: 0\r\n\r\n"]
BAD_HEAD = ["HTTP/1.1 200 OK\r\n", "Content-Length: 2\r\nno colon here\r\n\r\nok"]


class HealthTLSTest(TH.HealthCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = H.Workdir.new("health-tls")
        TU.make_certs(cls.dir)
        p = lambda n: os.path.join(cls.dir, n)  # noqa: E731
        ca = p("ca.pem")
        cls.origins = {
            "good": PieceOrigin(OK_IN_PIECES, p("good.pem"), p("good.key")),
            "bydns": PieceOrigin(OK_IN_PIECES, p("good.pem"), p("good.key")),
            "unknownca": PieceOrigin(OK_IN_PIECES, p("self.pem"), p("self.key")),
            "noverify": PieceOrigin(OK_IN_PIECES, p("self.pem"), p("self.key")),
            "tls503": PieceOrigin(UNAVAILABLE_IN_PIECES, p("good.pem"), p("good.key")),
            "plain": PieceOrigin(OK_IN_PIECES),
            "hints": PieceOrigin(EARLY_HINTS_THEN_OK),
            "badhead": PieceOrigin(BAD_HEAD),
            "bighead": PieceOrigin(BIG_HEAD, p("good.pem"), p("good.key")),
            "silent": PieceOrigin([], hold=True),
            "silenttls": PieceOrigin([], p("good.pem"), p("good.key"), hold=True),
            # Plain TCP where TLS is expected: it reads the ClientHello and never answers.
            "nohandshake": PieceOrigin([]),
            "closes": PieceOrigin([]),
        }
        for o in cls.origins.values():
            cls.addClassCleanup(o.close)
        o = cls.origins
        active = {"active": TH.fast_active(timeout=2)}
        quick = {"active": TH.fast_active(timeout=0.3)}
        tls_ca = {"ca": ca, "sni": "origin.test"}
        ups = {
            "good": H.upstream(o["good"].address(), tls=tls_ca, health=active),
            "bydns": H.upstream("localhost:%d" % o["bydns"].port, tls={"ca": ca}, health=active),
            "unknownca": H.upstream(o["unknownca"].address(), tls=tls_ca, health=active),
            "noverify": H.upstream(o["noverify"].address(),
                                   tls={"verify": False, "sni": "origin.test"}, health=active),
            "tls503": H.upstream(o["tls503"].address(), tls=tls_ca, health=active),
            "plain": H.upstream(o["plain"].address(), health=active),
            "hints": H.upstream(o["hints"].address(), health=active),
            "badhead": H.upstream(o["badhead"].address(), health=active),
            "bighead": H.upstream(o["bighead"].address(), tls=tls_ca, health=active),
            "silent": H.upstream(o["silent"].address(), health=quick),
            "silenttls": H.upstream(o["silenttls"].address(), tls=tls_ca, health=quick),
            "nohandshake": H.upstream(o["nohandshake"].address(), tls=tls_ca, health=quick),
            "closes": H.upstream(o["closes"].address(), health=active),
        }
        routes = [TH.host_route(n + ".test", n) for n in ups]
        cls.proxy = cls.start_reload_proxy(ups, routes)

    def wait_probes(self, name, n=4):
        o = self.origins[name]
        H.wait_for(lambda: o.count() >= n, H.T(15),
                   what="%d probes of %s (got %d); log:\n%s" %
                   (n, name, o.count(), self.proxy.stderr()[-2000:]))

    def assertStaysUp(self, name, address=None):
        """The target's probes pass: they arrive, and the target is up and stays up."""
        address = address or self.origins[name].address()
        self.wait_probes(name, 3)
        seen = self.origins[name].count()
        self.wait_probes(name, seen + 3)
        self.assertEqual(self.target(name, address)["state"], "up",
                         self.proxy.stderr()[-2000:])
        self.assertFalse(self.log_lines("upstream %s: unhealthy" % address),
                         self.proxy.stderr()[-2000:])

    def test_https_target_stays_up(self):
        self.assertStaysUp("good")
        self.assertEqual(self.origins["good"].snis, {"origin.test"})

    def test_dns_target_sends_and_verifies_its_name(self):
        t = [t for t in self.upstreams()["bydns"]["targets"]
             if t["address"].startswith("127.0.0.1:")]
        self.assertTrue(t, self.upstreams()["bydns"])
        self.assertStaysUp("bydns", t[0]["address"])
        self.assertEqual(self.origins["bydns"].snis, {"localhost"})

    def test_failed_verification_is_down(self):
        addr = self.origins["unknownca"].address()
        self.wait_state("unknownca", addr, "down")
        H.wait_for(lambda: self.log_lines("upstream %s: unhealthy (active check: TLS handshake "
                                          "failed" % addr), H.T(5), what="the reason logged")
        self.assertIn("certificate verify failed",
                      self.log_lines("upstream %s: unhealthy" % addr)[0])
        self.assertEqual(self.origins["unknownca"].count(), 0, "no request after a failed "
                         "verification")

    def test_verify_false_accepts_the_same_certificate(self):
        self.assertStaysUp("noverify")

    def test_status_in_pieces_over_tls_503_is_down(self):
        self.wait_probes("tls503", 2)
        self.wait_state("tls503", self.origins["tls503"].address(), "down")
        self.assertTrue(self.log_lines("upstream %s: unhealthy (active check: status 503)" %
                                       self.origins["tls503"].address()))

    def test_plain_status_in_pieces(self):
        self.assertStaysUp("plain")

    def test_interim_response_is_skipped(self):
        self.assertStaysUp("hints")

    def test_large_head_in_pieces(self):
        # 11 KiB of header fields, in pieces over TLS: more than a small arena holds.
        self.assertStaysUp("bighead")

    def test_invalid_head_is_a_failed_probe(self):
        addr = self.origins["badhead"].address()
        self.wait_state("badhead", addr, "down")
        self.assertTrue(self.log_lines("upstream %s: unhealthy (active check: invalid response"
                                       % addr), self.proxy.stderr()[-2000:])

    def assertDownFor(self, name, reason):
        addr = self.origins[name].address()
        self.wait_state(name, addr, "down")
        line = "upstream %s: unhealthy (active check: %s)" % (addr, reason)
        H.wait_for(lambda: self.log_lines(line), H.T(5),
                   what="%r in the log:\n%s" % (line, self.proxy.stderr()[-2000:]))

    def test_no_answer_times_out(self):
        # The request arrives (counted), the answer never does: the probe's deadline.
        self.wait_probes("silent", 2)
        self.assertDownFor("silent", "timed out")

    def test_no_answer_over_tls_times_out(self):
        self.wait_probes("silenttls", 2)
        self.assertDownFor("silenttls", "timed out")

    def test_no_handshake_times_out_in_the_handshake(self):
        self.assertDownFor("nohandshake", "timed out in the TLS handshake")
        self.assertEqual(self.origins["nohandshake"].count(), 0)

    def test_closed_before_the_head(self):
        self.wait_probes("closes", 2)
        self.assertDownFor("closes", "closed before the response head")


if __name__ == "__main__":
    H.main()
