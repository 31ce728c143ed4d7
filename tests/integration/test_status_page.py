#!/usr/bin/env python3
"""The status page (GET / on the admin API) in a real headless browser: Debian's chromium
driven by puppeteer-core (tests/browser/statuspage.js). While a paced load runs, the page
asks for the admin token, then its numbers move; its req/s agrees with the rate /metrics
gives over the same time, its request total and status codes with /metrics once the load
stops; a reload (ok and failed) shows in its history and a connect error in its recent
errors; landmarks, labels, contrast and keyboard order are checked; a screenshot is saved
under the test's build directory ($LP_TEST_OUTPUT). Fails (never skips) when chromium, node
or puppeteer-core is missing (./dev deps installs them)."""

import http.client
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

BROWSER_DIR = os.path.join(H.REPO, "tests", "browser")
DRIVER = os.path.join(BROWSER_DIR, "statuspage.js")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
OUTPUT = os.environ.get("LP_TEST_OUTPUT") or H.Workdir.new("status-page-output")
TOKEN = "page-t0ken-0123456789abcdef"
RATE = 80  # requests per second of the paced load


class Browser:
    """The driver process: one command a line on its stdin, one JSON answer a line."""

    def __init__(self):
        if not os.access(CHROMIUM, os.X_OK):
            raise H.MissingDependency("chromium not found at %s (apt-get install chromium; "
                                      "./dev deps)" % CHROMIUM)
        node = H.require_tool("node")
        if not os.path.exists(os.path.join(BROWSER_DIR, "node_modules", "puppeteer-core",
                                           "package.json")):
            raise H.MissingDependency("puppeteer-core is not installed in tests/browser: run "
                                      "`npm ci` there (./dev deps does)")
        self.stderr_path = os.path.join(OUTPUT, "driver.stderr")
        err = open(self.stderr_path, "wb")
        try:
            self.proc = subprocess.Popen(
                [node, DRIVER], cwd=BROWSER_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=err, env=dict(os.environ, CHROMIUM=CHROMIUM,
                                     LP_BROWSER_TIMEOUT_MS=str(int(H.T(30) * 1000))),
                preexec_fn=H._preexec, close_fds=True)
        finally:
            err.close()
        with H._LIVE_LOCK:
            H._LIVE[self.proc.pid] = self.proc
        self.buf = b""

    def cmd(self, line, timeout=None):
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + (timeout or H.T(60))
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("the browser driver did not answer %r in time" % line)
            r, _, _ = select.select([self.proc.stdout], [], [], left)
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    with open(self.stderr_path, errors="replace") as f:
                        raise AssertionError("the browser driver exited (%r): %s" %
                                             (line, f.read()[-4000:]))
                self.buf += chunk
        out, self.buf = self.buf.split(b"\n", 1)
        j = json.loads(out)
        if "error" in j:
            raise AssertionError("browser driver, %r: %s" % (line.split(" ")[0], j["error"]))
        return j

    def close(self):
        if self.proc.poll() is None:
            try:
                self.cmd("quit", H.T(20))
            except (AssertionError, OSError, ValueError):
                pass
        H.stop_process(self.proc)


class Load(threading.Thread):
    """GETs at RATE per second on keep-alive connections, until stopped (at most 3 min)."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.stop_ev = threading.Event()
        self.sent = self.ok = 0
        self.failures = []

    def run(self):
        conn = None
        t0 = time.monotonic()
        i = 0
        while not self.stop_ev.is_set() and time.monotonic() - t0 < 180:
            # Pacing, not synchronisation: request i leaves at t0 + i / RATE.
            if self.stop_ev.wait(max(0.0, t0 + i / RATE - time.monotonic())):
                break
            i += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=H.T(10))
                conn.request("GET", "/fixed?size=100", headers={"Host": "a.test"})
                r = conn.getresponse()
                r.read()
                self.sent += 1
                self.ok += r.status == 200
            except (OSError, http.client.HTTPException) as e:
                self.failures.append(repr(e))
                conn = None

    def stop(self):
        self.stop_ev.set()
        self.join(H.T(20))


def admin(port, method, path, token=TOKEN):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=H.T(30))
    try:
        c.request(method, path, headers={"Authorization": "Bearer " + token})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')


def metrics(port):
    st, body = admin(port, "GET", "/metrics")
    assert st == 200, body
    out = []
    for line in body.decode().splitlines():
        m = SAMPLE.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def requests_total(port, code=None):
    return sum(v for n, l, v in metrics(port)
               if n == "luaproxy_requests_total" and (code is None or l.get("code") == code))


class StatusPageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(OUTPUT, exist_ok=True)
        cls.browser = Browser()  # first: a missing browser fails before anything starts
        cls.origin = H.Origin("o1").start()
        cls.dead = H.dead_port()
        d = H.Workdir.new("status-page")
        tok = os.path.join(d, "admin.token")
        with open(tok, "w") as f:
            f.write(TOKEN + "\n")
        cfg = H.make_config(
            0, {"web": H.upstream(cls.origin.port, balance="p2c"), "dead": H.upstream(cls.dead)},
            [{"name": "dead", "match": {"prefix": "/dead"}, "upstream": "dead"},
             {"name": "web", "match": {"prefix": "/"}, "upstream": "web"}],
            workers=2, admin={"address": "127.0.0.1:0", "token_file": tok},
            shared={"sessions": "1m"}, plugins=[{"name": "request_id"}])
        cls.proxy = H.Proxy(cfg, name="status-page")
        cls.proxy.start()
        H.wait_for(lambda: H.port_accepts(cls.proxy.admin_port), H.T(10), what="the admin API")
        cls.load = Load(cls.proxy.port)

    @classmethod
    def tearDownClass(cls):
        cls.load.stop()
        cls.browser.close()
        cls.proxy.stop()
        cls.origin.stop()
        errs = H.sanitizer_errors(cls.proxy.stderr())
        assert not errs, "sanitizer: %s\n%s" % (errs, cls.proxy.stderr()[-4000:])

    def sample_when(self, pred, what, timeout=None):
        """Samples the page until pred(sample) holds; returns that sample."""
        last = {}

        def ok():
            s = self.browser.cmd("sample")
            last["s"] = s
            return s if pred(s) else None
        try:
            return H.wait_for(ok, timeout or H.T(40), interval=0.25, what=what)
        except AssertionError as e:
            raise AssertionError("%s; the page showed: %s" % (e, json.dumps(last.get("s"))[:3000]))

    def test_page(self):
        b, port = self.browser, self.proxy.admin_port
        self.load.start()
        H.wait_for(lambda: self.load.ok > 0, H.T(10), what="the load's first answer")

        # 1. The page loads without the token and asks for it; a wrong one is refused.
        url = "http://127.0.0.1:%d/" % port
        self.assertTrue(b.cmd("open " + url, H.T(90))["login"], "the page did not ask for a token")
        r = b.cmd("login wrong-token-0123456789")
        self.assertTrue(r["login"])
        self.assertIn("refused", r["loginError"])
        self.assertFalse(r["stored"])
        r = b.cmd("login " + TOKEN)
        self.assertFalse(r["login"], r)
        self.assertTrue(r["stored"], "the token is not in session storage")

        # 2. The numbers move while the load runs.
        a = self.sample_when(lambda s: s["rps"] is not None and s["rps"] > 0 and
                             s["p50"] is not None, "a request rate and latency on the page")
        self.sample_when(lambda s: s["scrapes"] > a["scrapes"] and s["total"] > a["total"],
                         "the request total to move")

        # 3. req/s agrees with /metrics over the same span: two scrapes of our own around
        # two refreshes of the page, the page's rate read right after the second.
        t0, m0 = time.monotonic(), requests_total(port)
        s0 = b.cmd("sample")
        s = self.sample_when(lambda x: x["scrapes"] >= s0["scrapes"] + 2, "two more refreshes")
        t1, m1 = time.monotonic(), requests_total(port)
        want = (m1 - m0) / (t1 - t0)
        self.assertGreater(want, RATE * 0.5, "the load did not reach its pace")
        self.assertLess(abs(s["rps"] - want), 0.3 * want + 3,
                        "page req/s %.1f vs /metrics %.1f" % (s["rps"], want))
        self.assertGreater(s["p99"], 0)
        self.assertGreaterEqual(s["p99"], s["p50"])
        self.assertLess(s["p99"], 10)
        # The sparkline has points and its text alternative numbers.
        self.assertGreaterEqual(s["rpsSparkPoints"], 2)
        self.assertRegex(s["rpsSparkLabel"], r"^Requests per second, last \d+ (s|min): low [\d.,]+, "
                                             r"high [\d.,]+, now [\d.,]+$")
        self.assertEqual(s["rpsRange"], s["rpsSparkLabel"].split(", ", 1)[1])
        self.assertEqual(s["metricsNote"], "")

        # 4. A reload that works and one that fails show in the history; a connect error in
        # the recent errors.
        st, body = admin(port, "POST", "/reload")
        self.assertEqual(st, 200, body)
        gen = json.loads(body)["generation"]
        with open(self.proxy.config_path) as f:
            good = f.read()
        try:
            with open(self.proxy.config_path, "w") as f:
                f.write(good.replace('upstream = "web"', 'upstream = "missing"'))
            st, body = admin(port, "POST", "/reload")
            self.assertEqual(st, 500, body)
        finally:
            with open(self.proxy.config_path, "w") as f:
                f.write(good)
        c = http.client.HTTPConnection("127.0.0.1", self.proxy.port, timeout=H.T(10))
        c.request("GET", "/dead/x", headers={"Host": "a.test"})
        self.assertEqual(c.getresponse().status, 502)
        c.close()

        def history(s):
            rows = s["reloads"]
            return (len(rows) >= 3 and rows[0][3].startswith("failed") and
                    'no upstream named "missing"' in rows[0][3] and
                    rows[1][0] == str(gen) and rows[1][3] == "ok" and
                    re.match(r"admin 127\.0\.0\.1:\d+$", rows[1][2]) and
                    rows[-1][2] == "startup")
        s = self.sample_when(history, "the two reloads in the page's history")
        self.assertEqual(s["generation"], gen)
        self.sample_when(lambda x: any("127.0.0.1:%d" % self.dead in e and "connect" in e
                                       for e in x["errors"]),
                         "the connect error in the page's recent errors")

        # The screenshot, while the load still runs.
        shot = os.path.join(OUTPUT, "status_page.png")
        b.cmd("screenshot " + shot)
        with open(shot, "rb") as f:
            png = f.read()
        self.assertEqual(png[:8], b"\x89PNG\r\n\x1a\n")
        self.assertGreater(len(png), 20000)

        # 5. With the load stopped, the totals agree with /metrics exactly.
        self.load.stop()
        self.assertEqual(self.load.failures, [])
        self.assertGreater(self.load.ok, RATE * 2)
        total = requests_total(port)
        s = self.sample_when(lambda x: x["total"] == total,
                             "the page's total to reach /metrics' %d" % total)
        codes = {row[0]: row[1].replace(",", "") for row in s["codes"]}
        self.assertEqual(int(codes["2xx"]), requests_total(port, "2xx"))
        self.assertEqual(int(codes["5xx"]), requests_total(port, "5xx"))
        self.assertGreaterEqual(int(codes["5xx"]), 1)
        routes = {row[0]: row for row in s["routes"]}
        self.assertIn("web", routes)
        self.assertIn("dead", routes)
        self.assertEqual(routes["dead"][5], codes["5xx"])
        targets = {row[0]: row for row in s["targets"]}
        live = targets["127.0.0.1:%d" % self.origin.port]
        self.assertEqual(live[1], "up")
        self.assertEqual(live[3], "0", "requests in flight with the load stopped")
        self.assertRegex(live[4], r"^[\d.]+ (µs|ms|s)$", "the p2c balancer's EWMA latency")
        self.assertGreater(int(live[5].replace(",", "")), RATE)
        self.assertIn("sessions", [row[0] for row in s["shared"]])
        lua = {row[0]: row for row in s["lua"]}
        self.assertIn("request_id", lua, "Lua cost per plugin")
        self.assertGreater(float(lua["request_id"][2]), 0, "CPU seconds of request_id")
        self.assertEqual(lua["request_id"][3:], ["0", "0"])
        # /status agrees too (every request here finished).
        st, body = admin(port, "GET", "/status")
        self.assertEqual(json.loads(body)["requests"], total)

        # 6. Accessibility basics.
        a = b.cmd("a11y")
        self.assertEqual(a["lang"], "en")
        self.assertEqual(a["landmarks"], ["header", "nav", "main", "footer"])
        self.assertEqual(a["unnamedControls"], [])
        self.assertEqual(a["tablesWithoutCaption"], 0)
        for sp in a["sparks"]:
            self.assertEqual(sp["role"], "img")
            self.assertIn("low", sp["label"])
        self.assertGreaterEqual(a["contrast"]["body"], 4.5)
        self.assertGreaterEqual(a["contrast"]["muted"], 4.5)
        k = b.cmd("keyboard 14")["focused"]
        for want in ("a[#main]", "select#interval", "button#pause", "button#forget",
                     "a[#traffic]", "a[#reloads]"):
            self.assertIn(want, k)

        # 7. No script error or blocked resource on the way.
        errors = b.cmd("sample")["pageErrors"]
        # The refused token answered 401: the browser logs that; nothing else may show.
        self.assertEqual([e for e in errors if "status of 401" not in e], [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
