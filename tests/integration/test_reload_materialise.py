#!/usr/bin/env python3
"""A reload's materialise step (names resolved, TLS contexts built: lp_config_materialise)
runs off the loops (docs/architecture.md, "Config"): on libuv's threadpool, while the main
loop goes on answering the admin API and the workers go on serving.

The step is held for as long as the test likes with an upstream whose `tls.ca` is a named
pipe: OpenSSL's CA load blocks opening it until a writer comes, the way a slow disk or a
slow resolver would. The test knows the step is waiting when a non-blocking open for
writing succeeds (a reader holds the pipe).

- while it waits: GET /status answers (the old generation), requests are served, and the
  POST /reload that asked has no answer yet; once the CA is written, that answer is 200 with
  the next generation, and the new upstream serves;
- a second POST /reload during the wait is answered after it, by a reload of its own that
  reads the file as it is by then;
- a CA that is not a CA (written to the pipe) refuses the reload, all or nothing: the old
  generation keeps serving."""

import os
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reload"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reloadtest as RT  # noqa: E402
from reloadtest import H  # noqa: E402
import test_tls_upstream as TU  # noqa: E402


class PostInThread:
    """POST /reload from a thread: the answer (or the exception) when done."""

    def __init__(self, case):
        self.case = case
        self.result = None
        self.error = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.result = self.case.admin("POST", "/reload")
        except Exception as e:  # reported by wait()
            self.error = e
        finally:
            self.done.set()

    def wait(self):
        self.case.assertTrue(self.done.wait(H.T(20)), "POST /reload never answered")
        self.thread.join(H.T(5))
        if self.error:
            raise self.error
        return self.result


class MaterialiseOffLoopTest(RT.ReloadTestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = H.Workdir.new("materialise")
        TU.make_certs(cls.dir)
        cls.ca = os.path.join(cls.dir, "ca.pem")
        cls.a = cls.start_origin("a")
        cls.good = TU.TLSOrigin("good", os.path.join(cls.dir, "good.pem"),
                                os.path.join(cls.dir, "good.key"))
        cls.addClassCleanup(cls.good.stop)
        cls.ups = {"a": H.upstream(cls.a.address())}
        cls.proxy = cls.start_reload_proxy(cls.ups, cls.routes(), workers=2)

    @classmethod
    def routes(cls, with_tls=False):
        r = [RT.route("/h", handler=RT.respond_handler("v"))]
        if with_tls:
            r.append(RT.route("/tls", upstream="secure"))
        return r + [RT.route("/", upstream="a")]

    def fifo(self, name):
        path = os.path.join(self.proxy.dir, name)
        if os.path.exists(path):
            os.unlink(path)
        os.mkfifo(path)
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        return path

    def config_with_ca(self, ca):
        ups = dict(self.ups)
        ups["secure"] = H.upstream("127.0.0.1:%d" % self.good.port,
                                   tls={"ca": ca, "sni": "origin.test"})
        self.rewrite(upstreams=ups, routes=self.routes(with_tls=True))

    def config_plain(self):
        self.rewrite(upstreams=dict(self.ups), routes=self.routes())

    def wait_reader(self, path):
        """Returns a write fd once the proxy has the pipe open for reading."""
        fd = [None]

        def opened():
            try:
                fd[0] = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                return True
            except OSError:
                return False
        H.wait_for(opened, H.T(10), what="the materialise step reading %s; log:\n%s" %
                   (path, self.proxy.stderr()[-2000:]))
        return fd[0]

    def write_all(self, fd, data):
        os.set_blocking(fd, True)
        try:
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)

    def test_admin_and_workers_serve_while_it_waits(self):
        gen = self.status()["generation"]
        pipe = self.fifo("slow-ca.pem")
        self.config_with_ca(pipe)
        post = PostInThread(self)
        fd = self.wait_reader(pipe)
        try:
            # The step waits on the pipe: the main loop and the workers do not.
            for _ in range(3):
                self.assertEqual(self.status()["generation"], gen)
                self.assertEqual(self.version(), "v")
                self.assertEqual(self.get("/").status, 200)
            self.assertFalse(post.done.is_set(), "the reload answered before its step ended")
            # A second reload asked meanwhile follows this one and reads the file as it is
            # then (without the pipe).
            self.config_plain()
            second = PostInThread(self)
            H.wait_for(lambda: self.log_lines("this one follows it"), H.T(10),
                       what="the second reload queued")
            self.assertFalse(second.done.is_set())
        finally:
            with open(self.ca, "rb") as f:
                self.write_all(fd, f.read())
        r = post.wait()
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["generation"], gen + 1, r.body)
        r2 = second.wait()
        self.assertEqual(r2.status, 200, r2.body)
        self.assertEqual(r2.json()["generation"], gen + 2, r2.body)
        self.assertEqual(self.status()["generation"], gen + 2)
        self.assertTrue(self.log_lines("names and TLS contexts:"), self.proxy.stderr()[-2000:])

    def test_tls_upstream_built_off_the_loop_serves(self):
        gen = self.status()["generation"]
        pipe = self.fifo("ca-later.pem")
        self.config_with_ca(pipe)
        post = PostInThread(self)
        fd = self.wait_reader(pipe)
        with open(self.ca, "rb") as f:
            self.write_all(fd, f.read())
        r = post.wait()
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["generation"], gen + 1)
        got = self.get("/tls")
        self.assertEqual(got.status, 200, got)
        self.config_plain()
        self.reload()

    def test_a_failing_step_refuses_the_reload(self):
        gen = self.status()["generation"]
        pipe = self.fifo("bad-ca.pem")
        self.config_with_ca(pipe)
        post = PostInThread(self)
        fd = self.wait_reader(pipe)
        self.write_all(fd, b"not a certificate\n")
        r = post.wait()
        self.assertEqual(r.status, 500, r.body)
        j = r.json()
        self.assertIs(j["ok"], False)
        self.assertEqual(j["generation"], gen)
        self.assertIn("upstreams.secure.tls", j["error"])
        self.assertEqual(self.status()["generation"], gen)
        self.assertEqual(self.version(), "v")
        self.config_plain()
        self.reload()


if __name__ == "__main__":
    H.main()
