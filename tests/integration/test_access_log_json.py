#!/usr/bin/env python3
"""JSON access log (`log.json`): one object per line that Python's json module parses,
whatever the client sent: quotes, backslashes, control bytes and invalid UTF-8 in the path,
the headers and the user agent, including requests the proxy refused. Numbers are JSON
numbers, absent values null, and bytes that are not well-formed UTF-8 come back as the
code point of the same number (docs/access-log.md)."""

import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

MEMBERS = {
    "addr": "$remote_addr",
    "bytes": "$body_bytes_sent",
    "host": "$host",
    "method": "$request_method",
    "mixed": "$request_method $uri -> $status in $request_time s ($http_x_missing)",
    "request": "$request",
    "referer": "$http_referer",
    "rt": "$request_time",
    "status": "$status",
    "tag": "$http_x_tag",
    "time": "$time_iso8601",
    "tls": "$ssl_protocol",
    "ua": "$http_user_agent",
    "up": "$upstream_addr",
    "uri": "$uri",
    "urt": "$upstream_response_time",
    "x": "$http_x_custom",
    'we"ird\\name\u00e9': "lit\"eral\\ \t$status",
}

DEFAULT_MEMBERS = {"time", "remote_addr", "request", "method", "uri", "host", "scheme",
                   "status", "body_bytes_sent", "referer", "user_agent", "upstream_addr",
                   "request_time", "upstream_response_time"}


def expected(b):
    """What the log shows for the bytes b once parsed: well-formed UTF-8 as its characters,
    every other byte as the code point of its value."""
    def per_byte(e):
        return "".join(chr(x) for x in e.object[e.start:e.end]), e.end
    import codecs
    try:
        codecs.register_error("lp_bytes", per_byte)
    except Exception:
        pass
    return b.decode("utf-8", errors="lp_bytes")


def parse_all(proxy, testcase):
    """Every line of the access log, each parsed strictly (no raw control characters,
    no NaN)."""
    objs = []
    path = proxy.access_log_path
    if not os.path.exists(path):
        return objs
    with open(path, "rb") as f:
        data = f.read()
    testcase.assertTrue(data == b"" or data.endswith(b"\n"), "a line is cut: %r" % data[-200:])
    for raw in data.split(b"\n")[:-1]:
        try:
            text = raw.decode("utf-8")  # the whole line is valid UTF-8
            obj = json.loads(text, parse_constant=lambda c: testcase.fail("constant " + c))
        except ValueError as e:
            testcase.fail("access log line is not JSON (%s): %r" % (e, raw))
        testcase.assertIsInstance(obj, dict, raw)
        objs.append(obj)
    return objs


class AccessLogJsonTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        p = H.Proxy.build({"app": H.upstream(cls.a.address())},
                          [{"match": {"prefix": "/"}, "upstream": "app"}],
                          name=cls.__name__, workers=1)
        p.cfg["log"]["json"] = MEMBERS
        cls.addClassCleanup(p.stop)
        cls.proxy = p.start()

    def lines_with(self, tag, n=1):
        def find():
            hits = [o for o in parse_all(self.proxy, self) if o.get("tag") == tag]
            return hits if len(hits) >= n else None
        hits = H.wait_for(find, H.T(10), what="%d access log line(s) tagged %r" % (n, tag))
        self.assertEqual(len(hits), n, hits)
        return hits

    def raw(self, head):
        """Sends raw request bytes on a fresh connection; returns the status (None when the
        proxy closed without answering)."""
        r, _, _ = H.raw_exchange(self.proxy.port, head)
        return r.status if r else None

    def test_plain_request_types(self):
        tag = "plain%d" % time.monotonic_ns()
        r = H.get(self.proxy.port, "/fixed?size=321", headers={"X-Tag": tag})
        self.assertEqual(r.status, 200)
        o = self.lines_with(tag)[0]
        self.assertEqual(o["status"], 200)
        self.assertIsInstance(o["bytes"], int)
        self.assertTrue(321 <= o["bytes"] < 321 + 4096, o)
        self.assertIsInstance(o["rt"], (int, float))
        self.assertIsInstance(o["urt"], (int, float))
        self.assertGreaterEqual(o["rt"], o["urt"])
        self.assertEqual(o["method"], "GET")
        self.assertEqual(o["uri"], "/fixed?size=321")  # the target as sent (origin form)
        self.assertEqual(o["request"], "GET /fixed?size=321 HTTP/1.1")
        self.assertEqual(o["host"], "a.test")
        self.assertEqual(o["addr"], "127.0.0.1")
        self.assertEqual(o["up"], self.a.address())
        self.assertIsNone(o["referer"])  # absent header
        self.assertIsNone(o["tls"])      # plain connection
        self.assertRegex(o["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$")
        self.assertRegex(o["mixed"], r"^GET /fixed\?size=321 -> 200 in \d+\.\d{3} s \(\)$")
        self.assertEqual(o['we"ird\\name\u00e9'], "lit\"eral\\ \t200")
        self.assertEqual(list(o), sorted(o, key=lambda k: k.encode()), "members in name order")

    def test_hostile_bytes_round_trip(self):
        """Quotes, backslashes, obs-text, invalid UTF-8 and a JSON-looking injection in the
        path, a header and the user agent: the line parses and shows every byte."""
        tag = "hostile%d" % time.monotonic_ns()
        # (bytes over 0x7f in header values: the parser refuses them in the target)
        path = b'/q"uo\\te/caf/x?a="}{\\u0000'
        ua = (b'Mozilla "5.0" \\ \t back\\slash \xe2\x82 \xf0\x9f\x98\x80 \x80\xbf '
              b'\xc3\xa9 \xff\xfe\xc0\xaf\xed\xa0\x80\xf4\x90\x80\x80 ","status":999,"x":"')
        custom = b'{"injected": true}\\n \xe2\x80\xa8 \xef\xbf\xbf \xc1\x81'
        head = (b"GET " + path + b" HTTP/1.1\r\nHost: a.test\r\nX-Tag: " + tag.encode() +
                b"\r\nUser-Agent: " + ua + b"\r\nX-Custom: " + custom +
                b"\r\nReferer: \"'\\\r\nConnection: close\r\n\r\n")
        status = self.raw(head)
        o = self.lines_with(tag)[0]
        self.assertEqual(o["status"], status)
        self.assertEqual(o["ua"], expected(ua))
        self.assertEqual(o["x"], expected(custom))
        self.assertEqual(o["referer"], "\"'\\")
        self.assertEqual(o["request"], expected(b"GET " + path + b" HTTP/1.1"))
        self.assertEqual(o["uri"], expected(path))
        self.assertTrue(o["uri"].startswith('/q"uo\\te/caf/'), o["uri"])
        self.assertIn("\u00ff\u00fe\u00c0\u00af", o["ua"])

    def test_refused_requests_still_parse(self):
        """Heads the proxy refuses (control bytes, NUL, bad header names, bad Host) are
        logged when it answers them; every such line parses too."""
        before = len(parse_all(self.proxy, self))
        heads = [
            b"GET /a\x01b\x7f HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"GET /nul\x00\"x HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"GET /ok HTTP/1.1\r\nHost: a.test\r\nUser-Agent: a\x01b\x1b[31m\r\n\r\n",
            b"GET /ok HTTP/1.1\r\nHost: a.test\r\nX-\xff\"name: v\r\n\r\n",
            b"GET /ok HTTP/1.1\r\nHost: a\"b\\\xff.test\r\n\r\n",
            b"GET /\xff\"\\ HTTP/1.1\r\n\r\n",  # no Host
            b"G\"T\xff / HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nUser-Agent: x\ny\r\n\r\n",  # bare LF
        ]
        statuses = [self.raw(h) for h in heads]
        self.assertTrue(all(s is None or s >= 400 for s in statuses), statuses)
        answered = sum(1 for s in statuses if s is not None)
        H.wait_for(lambda: len(parse_all(self.proxy, self)) >= before + answered, H.T(10),
                   what="%d more lines" % answered)
        time.sleep(0.2)
        objs = parse_all(self.proxy, self)
        for o in objs[before:]:
            self.assertIsInstance(o["status"], int)
            self.assertGreaterEqual(o["status"], 400, o)
            # Refused before the head parsed: no method, no request line.
            self.assertIsNone(o["method"], o)
            self.assertIsNone(o["request"], o)
        self.assertAlive()

    def test_many_lines_each_parses(self):
        """Lines across buffer flushes and long values: each line is one whole object."""
        tag = "many%d" % time.monotonic_ns()
        long_ua = b"\"\\\t" * 1000 + b"\xff\xc3" * 3000
        with H.Client(self.proxy.port) as c:
            for i in range(40):
                r = c.request("GET", "/headers?i=%d" % i,
                              headers=[("X-Tag", tag), ("User-Agent", long_ua.decode("latin-1"))])
                self.assertEqual(r.status, 200)
        objs = self.lines_with(tag, 40)
        for o in objs:
            self.assertEqual(o["ua"], expected(long_ua))

    def test_zz_alive(self):
        self.assertAlive()


class AccessLogJsonDefaultTest(H.ProxyTestCase):
    """`log.json = true`: the default members."""

    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        p = H.Proxy.build({"app": H.upstream(cls.a.address())},
                          [{"match": {"prefix": "/"}, "upstream": "app"}],
                          name=cls.__name__, workers=1)
        p.cfg["log"]["json"] = True
        cls.addClassCleanup(p.stop)
        cls.proxy = p.start()

    def test_default_members(self):
        tag = "/headers?default%d" % time.monotonic_ns()
        self.assertEqual(H.get(self.proxy.port, tag, headers={"User-Agent": 'ua "1"'}).status, 200)
        objs = H.wait_for(lambda: [o for o in parse_all(self.proxy, self)
                                   if o["uri"].startswith(tag)] or None, H.T(10),
                          what="a line for %s" % tag)
        o = objs[0]
        self.assertEqual(set(o), DEFAULT_MEMBERS)
        self.assertEqual(o["status"], 200)
        self.assertEqual(o["user_agent"], 'ua "1"')
        self.assertEqual(o["request"], "GET %s HTTP/1.1" % tag)
        self.assertEqual(o["scheme"], "http")
        self.assertIsNone(o["referer"])
        self.assertIsInstance(o["body_bytes_sent"], int)
        self.assertIsInstance(o["request_time"], (int, float))


class AccessLogJsonReloadTest(H.ProxyTestCase):
    """A reload switches between text and JSON lines: the log is reopened with the new
    generation's template."""

    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.proxy = cls.start_proxy({"app": H.upstream(cls.a.address())},
                                    [{"match": {"prefix": "/"}, "upstream": "app"}], workers=2)

    def reload(self):
        n = self.proxy.log_count("live in")
        self.proxy.write_config()
        self.proxy.signal(signal.SIGHUP)
        self.proxy.wait_log("live in", count=n + 1)

    def lines(self, tag, n):
        return H.wait_for(lambda: (lambda l: l if len(l) >= n else None)(
            [l for l in self.proxy.access_lines() if tag in l]), H.T(10),
            what="%d lines with %s" % (n, tag))

    def test_text_to_json_and_back(self):
        tag = "sw%d" % time.monotonic_ns()
        for i in range(4):
            self.assertEqual(H.get(self.proxy.port, "/headers?%s=text%d" % (tag, i)).status, 200)
        self.lines(tag + "=text", 4)
        self.proxy.cfg["log"]["json"] = {"status": "$status", "request": "$request"}
        self.reload()
        for i in range(4):
            self.assertEqual(H.get(self.proxy.port, "/headers?%s=json%d" % (tag, i)).status, 200)
        for l in self.lines(tag + "=json", 4):
            o = json.loads(l)
            self.assertEqual(o["status"], 200)
            self.assertEqual(set(o), {"status", "request"})
        for l in self.lines(tag + "=text", 4):
            self.assertFalse(l.startswith("{"), l)
        del self.proxy.cfg["log"]["json"]
        self.reload()
        self.assertEqual(H.get(self.proxy.port, "/headers?%s=again" % tag).status, 200)
        self.assertFalse(self.lines(tag + "=again", 1)[0].startswith("{"))
        self.assertAlive()


class AccessLogJsonConfigTest(H.ProxyTestCase):
    """Config errors name the member; format and json exclude each other."""

    def check(self, log):
        p = H.Proxy.build({"app": H.upstream("127.0.0.1:%d" % H.dead_port())},
                          [{"match": {"prefix": "/"}, "upstream": "app"}],
                          name="jsoncfg", workers=1)
        p.cfg["log"].update(log)
        p.write_config()
        import subprocess
        r = subprocess.run([H.LUAPROXY, "-t", "-c", p.config_path], capture_output=True,
                           text=True, timeout=H.T(20))
        return r.returncode, r.stderr + r.stdout

    def test_unknown_variable(self):
        rc, out = self.check({"json": {"ok": "$status", "bad": "x $nosuch"}})
        self.assertNotEqual(rc, 0)
        self.assertIn("log.json.bad: unknown variable $nosuch", out)

    def test_format_and_json(self):
        rc, out = self.check({"json": True, "format": "$status"})
        self.assertNotEqual(rc, 0)
        self.assertIn("log.json: set format (text lines) or json (JSON lines), not both", out)

    def test_ok(self):
        rc, out = self.check({"json": {"s": "$status"}})
        self.assertEqual(rc, 0, out)


if __name__ == "__main__":
    H.main()
