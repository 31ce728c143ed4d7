#!/usr/bin/env python3
"""Log outputs and the log writer (docs/access-log.md): the access log and the error log to
syslog (RFC 5424 over UDP and over a unix datagram socket), the JSON error log,
req:log_field() in JSON and text lines, sampling with its always-log rules, and the writer
that drops and counts lines rather than stalling requests when its output stops taking
them (a FIFO nobody reads)."""

import json
import os
import re
import socket
import stat
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua"))
import harness as H  # noqa: E402
import luatest as LT  # noqa: E402

# <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG (RFC 5424 section 6)
RFC5424 = re.compile(rb"^<(\d{1,3})>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) ([!-~]{1,255}) "
                     rb"([!-~]{1,48}) ([!-~]{1,128}) ([!-~]{1,32}) - (.*)$", re.S)

# A plugin that adds fields to the access log line, and logs an error when asked.
LF_PLUGIN = r'''
local P = { name = "lf", priority = 10, schema = {} }
function P.request(req, conf)
  if req:query("nofields") then return end
  assert(req:log_field("plugin", "lf"))
  assert(req:log_field("n", 42))
  assert(req:log_field("ratio", 0.25))
  assert(req:log_field("ok", true))
  assert(req:log_field("nan", 0/0))
  assert(req:log_field("weird", "q\"b\\s\n\1\255\237\160\128" .. "\195\169"))
  assert(req:log_field("gone", "x"))
  assert(req:log_field("gone", nil))
  assert(req:log_field("status", "a plugin's status is left out"))
  local ok, err = req:log_field("big", string.rep("x", 3000))
  assert(ok == nil and err:find("longer"), "a long value is refused")
  local bad = pcall(req.log_field, req, "no spaces", 1)
  assert(not bad, "a bad name raises")
  if req:query("err") then proxy.log.err("lf plugin error ", req:query("err")) end
  if req:query("many") then
    local n = 0
    for i = 1, 40 do if req:log_field("f" .. i, i) then n = n + 1 end end
    req:log_field("many_set", n)
  end
end
function P.log(req, conf)
  if req:query("nofields") then return end
  req:log_field("late", "set in the log phase")
end
return P
'''


def lf_files():
    return {"myplugins/lf.lua": LF_PLUGIN}


class UdpReceiver:
    def __init__(self):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind(("127.0.0.1", 0))
        self.s.settimeout(0.2)
        self.got = []

    @property
    def address(self):
        return "127.0.0.1:%d" % self.s.getsockname()[1]

    def drain(self):
        while True:
            try:
                self.got.append(self.s.recv(70000))
            except (socket.timeout, BlockingIOError):
                return self.got

    def close(self):
        self.s.close()


class UnixReceiver(UdpReceiver):
    def __init__(self, path):
        self.path = path
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.s.bind(path)
        self.s.settimeout(0.2)
        self.got = []


def start_pinned(cls, upstreams, routes, **kw):
    """A Lua proxy on a port chosen here: its error log goes elsewhere than stderr, where
    the harness reads the bound ports from, so the test waits for the port to accept."""
    kw.setdefault("lua", LT.lua_section(None, ["myplugins"]))
    p = H.Proxy.build(upstreams, routes, name=cls.__name__, **kw)
    p.cfg["listen"][0]["address"] = "127.0.0.1:%d" % H.reserved_port()
    LT.copy_files(p.dir, lf_files())
    cls.addClassCleanup(p.stop)
    p.start(wait=False)
    H.wait_for(lambda: H.port_accepts(p.port) or p.proc.poll() is not None, H.T(10),
               what="the proxy's port")
    if p.proc.poll() is not None:
        raise AssertionError("luaproxy exited: %s" % p.stderr()[-3000:])
    return p


def parse_syslog(test, dgram):
    m = RFC5424.match(dgram)
    test.assertIsNotNone(m, "not RFC 5424: %r" % dgram[:200])
    pri, ts, host, app, procid, msgid, msg = m.groups()
    test.assertNotIn(b"\n", msg, "one record per datagram, no newline")
    return int(pri), host.decode(), app.decode(), int(procid), msgid.decode(), msg


class SyslogUdpTest(LT.LuaTestCase):
    """The access log (JSON) and the error log (text) over UDP, each to its own receiver."""

    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        cls.rx = UdpReceiver()
        cls.erx = UdpReceiver()
        cls.addClassCleanup(cls.rx.close)
        cls.addClassCleanup(cls.erx.close)
        log = {"level": "info", "json": True,
               "access": {"syslog": cls.rx.address, "facility": "local3", "severity": "notice",
                          "app_name": "lpx", "hostname": "testhost"},
               "error": {"syslog": cls.erx.address, "facility": "daemon"}}
        cls.proxy = start_pinned(
            cls, {"app": H.upstream(cls.a.address())},
            [{"match": {"prefix": "/"}, "upstream": "app", "plugins": [{"name": "lf"}]}],
            workers=2, log=log)

    def find(self, rx, needle):
        def hit():
            return [d for d in rx.drain() if needle in d]
        return H.wait_for(hit, H.T(10), what="a datagram with %r" % needle)

    def test_access_records(self):
        tag = "udp%d" % time.monotonic_ns()
        for i in range(5):
            self.assertEqual(self.get("/fixed?size=10&tag=%s-%d" % (tag, i)).status, 200)
        for i in range(5):
            d = self.find(self.rx, ("%s-%d" % (tag, i)).encode())
            self.assertEqual(len(d), 1, "one datagram per request")
            pri, host, app, procid, msgid, msg = parse_syslog(self, d[0])
            self.assertEqual(pri, 19 * 8 + 5)  # local3.notice
            self.assertEqual((host, app, procid, msgid), ("testhost", "lpx", self.proxy.pid,
                                                          "access"))
            line = json.loads(msg.decode("utf-8"))
            self.assertEqual(line["status"], 200)
            self.assertEqual(line["plugin"], "lf")
            self.assertEqual(line["late"], "set in the log phase")

    def test_error_records(self):
        tag = "uerr%d" % time.monotonic_ns()
        self.assertEqual(self.get("/fixed?size=1&err=" + tag).status, 200)
        d = self.find(self.erx, tag.encode())
        pri, host, app, procid, msgid, msg = parse_syslog(self, d[0])
        self.assertEqual(pri, 3 * 8 + 3)  # daemon.err
        self.assertEqual((app, msgid, procid), ("luaproxy", "error", self.proxy.pid))
        self.assertEqual(host, socket.gethostname()[:255])
        self.assertRegex(msg.decode(), r"^\[error\] w\d: .*" + tag)
        # The start-up lines (main thread) came the same way, at their own severity.
        notices = [x for x in self.erx.drain() if b"listening on" in x]
        self.assertTrue(notices, "no start-up notice over syslog")
        self.assertEqual(parse_syslog(self, notices[0])[0], 3 * 8 + 5)  # daemon.notice


class SyslogUnixTest(LT.LuaTestCase):
    """The access log (text) to a unix datagram socket, as to /dev/log."""

    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        d = H.Workdir.new("unixlog")
        cls.rx = UnixReceiver(os.path.join(d, "log.sock"))
        cls.addClassCleanup(cls.rx.close)
        log = {"level": "info", "format": "$request_method $uri $status f=$log_field_plugin",
               "access": {"syslog": cls.rx.path}}
        cls.proxy = cls.start_lua_proxy(
            {"app": H.upstream(cls.a.address())},
            [{"match": {"prefix": "/"}, "upstream": "app", "plugins": [{"name": "lf"}]}],
            files=lf_files(), plugin_paths=["myplugins"], workers=1, log=log)

    def test_records(self):
        tag = "unix%d" % time.monotonic_ns()
        self.assertEqual(self.get("/fixed?size=3&tag=" + tag).status, 200)
        self.assertEqual(self.get("/fixed?size=3&nofields=1&tag=" + tag + "x").status, 200)
        H.wait_for(lambda: len([d for d in self.rx.drain() if tag.encode() in d]) >= 2,
                   H.T(10), what="two records")
        got = [d for d in self.rx.got if tag.encode() in d]
        self.assertEqual(len(got), 2)
        for d in got:
            pri, host, app, procid, msgid, msg = parse_syslog(self, d)
            self.assertEqual(pri, 23 * 8 + 6)  # local7.info, the defaults
            self.assertEqual(msgid, "access")
        msgs = sorted(parse_syslog(self, d)[5].decode() for d in got)
        self.assertEqual(msgs[0], "GET /fixed?size=3&nofields=1&tag=%sx 200 f=-" % tag)
        self.assertEqual(msgs[1], "GET /fixed?size=3&tag=%s 200 f=lf" % tag)


class JsonErrorLogAndFieldsTest(LT.LuaTestCase):
    """The error log as JSON lines in a file; req:log_field() members in the JSON access
    log, escaped."""

    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        d = H.Workdir.new("jsonerr")
        cls.errpath = os.path.join(d, "error.log")
        cls.accpath = os.path.join(d, "access.log")
        log = {"level": "info", "access": cls.accpath, "error": cls.errpath,
               "error_format": "json", "max_fields": 20,
               "json": {"status": "$status", "uri": "$uri", "lf": "$log_field_plugin",
                        "n2": "$log_field_n", "missing": "$log_field_nope"}}
        cls.proxy = start_pinned(
            cls, {"app": H.upstream(cls.a.address())},
            [{"match": {"prefix": "/"}, "upstream": "app", "plugins": [{"name": "lf"}]}],
            workers=2, log=log)

    def lines(self, path):
        try:
            with open(path, "rb") as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def wait_json(self, path, needle):
        hits = H.wait_for(lambda: [l for l in self.lines(path) if needle.encode() in l],
                          H.T(10), what="%r in %s" % (needle, path))
        self.assertEqual(len(hits), 1)
        return json.loads(hits[0].decode("utf-8"))

    def test_every_error_line_parses(self):
        tag = "jerr%d" % time.monotonic_ns()
        self.assertEqual(self.get("/fixed?size=1&err=" + tag,
                                  headers={"X-Request-Id": "rid-" + tag}).status, 200)
        e = self.wait_json(self.errpath, tag)
        self.assertEqual(e["level"], "error")
        self.assertIn(e["worker"], (1, 2))
        self.assertEqual(e["pid"], self.proxy.proc.pid)  # two processes share it in an upgrade
        self.assertIn(tag, e["message"])
        self.assertRegex(e["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        # A line about a request carries its fields.
        self.assertEqual(e["client"], "127.0.0.1")
        self.assertEqual(e["method"], "GET")
        self.assertEqual(e["uri"], "/fixed?size=1&err=" + tag)
        self.assertEqual(e["request_id"], "rid-" + tag)
        lines = self.lines(self.errpath)
        self.assertTrue(any(b"listening on" in l for l in lines))
        for l in lines:
            j = json.loads(l.decode("utf-8"))
            self.assertEqual(sorted(set(j) & {"time", "level", "pid", "worker", "message"}),
                             ["level", "message", "pid", "time", "worker"])
        # Nothing went to stderr meanwhile but what the harness itself may print.
        self.assertNotIn(tag, self.proxy.stderr())

    def test_fields_in_json_line(self):
        tag = "jf%d" % time.monotonic_ns()
        self.assertEqual(self.get("/fixed?size=1&tag=" + tag).status, 200)
        a = self.wait_json(self.accpath, tag)
        self.assertEqual(a["status"], 200)  # the configured member, not the plugin's
        self.assertEqual(a["lf"], "lf")
        self.assertEqual(a["n2"], 42)
        self.assertIsNone(a["missing"])
        self.assertEqual((a["plugin"], a["n"], a["ratio"], a["ok"]), ("lf", 42, 0.25, True))
        self.assertIsNone(a["nan"])
        self.assertNotIn("gone", a)
        self.assertNotIn("big", a)
        self.assertEqual(a["late"], "set in the log phase")
        # Quote, backslash, newline, a control byte, a stray byte, a surrogate's bytes, é.
        self.assertEqual(a["weird"], "q\"b\\s\n\x01\xff\xed\xa0\x80\u00e9")
        raw = [l for l in self.lines(self.accpath) if tag.encode() in l][0]
        self.assertIn(rb'"weird":"q\"b\\s\n\u0001\u00ff\u00ed\u00a0\u0080' + "é".encode(),
                      raw)
        self.assertEqual(len(re.findall(rb'"status":', raw)), 1, "one member per name")

    def test_field_count_is_bounded(self):
        tag = "jmany%d" % time.monotonic_ns()
        self.assertEqual(self.get("/fixed?size=1&many=1&tag=" + tag).status, 200)
        a = self.wait_json(self.accpath, tag)
        # 20 a request: 8 set before (one removed, so 7 kept), then 13 of the 40, then
        # many_set itself does not fit.
        self.assertEqual(len([k for k in a if re.match(r"^f\d+$", k)]), 13)
        self.assertNotIn("many_set", a)


class SamplingTest(H.ProxyTestCase):
    """log.sample = 0.1: about a tenth of the requests; every 5xx and every slow one."""

    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        d = H.Workdir.new("sample")
        cls.path = os.path.join(d, "access.log")
        log = {"level": "info", "access": cls.path, "format": "$status $uri",
               "sample": 0.1, "always_status": 500, "always_slower": 0.15}
        cls.proxy = cls.start_proxy({"app": H.upstream(cls.a.address())},
                                    [{"match": {"prefix": "/"}, "upstream": "app"}],
                                    workers=2, log=log)

    def count(self, needle):
        try:
            with open(self.path) as f:
                return len([l for l in f if needle in l])
        except FileNotFoundError:
            return 0

    def test_rates_and_rules(self):
        tag = "s%d" % time.monotonic_ns()
        n = 3000
        c = H.Client(self.proxy.port)
        try:
            for i in range(n):
                r = c.request("GET", "/fixed?size=1&t=%s-ok" % tag)
                self.assertEqual(r.status, 200)
            for i in range(40):
                r = c.request("GET", "/status?code=503&t=%s-bad" % tag)
                self.assertEqual(r.status, 503)
            for i in range(5):
                r = c.request("GET", "/delay?ms=300&t=%s-slow" % tag)
                self.assertEqual(r.status, 200)
        finally:
            c.close()
        # Every 503 and every slow one is logged; wait for those, then count the others.
        H.wait_for(lambda: self.count(tag + "-bad") == 40 and self.count(tag + "-slow") == 5,
                   H.T(10), what="all 5xx and slow lines")
        # Mean 300, standard deviation ~16: 5 sigma either side.
        ok = self.count(tag + "-ok")
        self.assertGreater(ok, 300 - 85, "sampled %d of %d" % (ok, n))
        self.assertLess(ok, 300 + 85, "sampled %d of %d" % (ok, n))

    def test_text_lines_carry_the_pid(self):
        # Text to stderr (the default): the time, the pid (two processes write to one log
        # during a binary upgrade), the level, main or the worker, the message.
        line = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (\d+) "
                          r"\[(error|warn|notice|info|debug)\] (main|w\d+): ")
        text = self.proxy.wait_log("listening on")
        lines = [l for l in text.splitlines() if l[:1].isdigit()]
        self.assertTrue(lines)
        for l in lines:
            m = line.match(l)
            self.assertIsNotNone(m, l)
            self.assertEqual(int(m.group(1)), self.proxy.proc.pid, l)


class StalledOutputTest(H.ProxyTestCase):
    """The access log is a FIFO whose reader never reads: the writer falls behind, lines
    are dropped and counted, and requests are still answered promptly."""

    @classmethod
    def setUpClass(cls):
        cls.a = cls.start_origin("a")
        d = H.Workdir.new("stall")
        cls.fifo = os.path.join(d, "access.fifo")
        os.mkfifo(cls.fifo)
        # A reader that never reads: the open succeeds, the pipe fills (64 KiB).
        cls.reader = os.open(cls.fifo, os.O_RDONLY | os.O_NONBLOCK)
        cls.addClassCleanup(os.close, cls.reader)
        cls.admin_port = H.reserved_port()
        log = {"level": "info", "access": cls.fifo, "json": True, "buffer": 65536,
               "flush": 0.01}
        cls.proxy = cls.start_proxy({"app": H.upstream(cls.a.address())},
                                    [{"match": {"prefix": "/"}, "upstream": "app"}],
                                    workers=2, log=log,
                                    admin={"address": "127.0.0.1:%d" % cls.admin_port})
        H.wait_for(lambda: H.port_accepts(cls.admin_port), H.T(10), what="the admin API")

    def status(self):
        r = H.get(self.admin_port, "/status", host="admin")
        self.assertEqual(r.status, 200)
        return r.json()

    def test_drops_not_stalls(self):
        self.assertTrue(stat.S_ISFIFO(os.stat(self.fifo).st_mode))
        self.assertEqual(self.status()["log"]["lines_dropped"], 0)
        ua = "u" * 1500  # long lines fill the pipe and the queue quickly
        c = H.Client(self.proxy.port)
        worst = 0.0
        t0 = time.monotonic()
        n = 2000
        try:
            for i in range(n):
                s = time.monotonic()
                r = c.request("GET", "/fixed?size=1&i=%d" % i, headers={"User-Agent": ua})
                worst = max(worst, time.monotonic() - s)
                self.assertEqual(r.status, 200)
        finally:
            c.close()
        total = time.monotonic() - t0
        # 2000 lines of ~1.7 KB is 3.4 MB: far past the pipe (64 KiB) and the queue
        # (64 KiB). Written inline, the first full pipe would have stalled the worker.
        self.assertLess(worst, H.T(1.0), "a request waited %.3f s" % worst)
        self.assertLess(total, H.T(30), "%d requests took %.1f s" % (n, total))
        dropped = H.wait_for(lambda: self.status()["log"]["lines_dropped"] or None, H.T(10),
                             what="lines_dropped > 0")
        self.assertGreater(dropped, n // 2)
        self.assertLessEqual(dropped, n)
        # What did reach the FIFO is whole lines, each a JSON object.
        data = b""
        while True:
            try:
                chunk = os.read(self.reader, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        lines = data.split(b"\n")
        complete = lines[:-1]
        self.assertTrue(complete, "nothing reached the FIFO")
        for l in complete:
            json.loads(l.decode("utf-8"))
        self.assertAlive()

    def test_zz_stop_is_bounded(self):
        # The writer gives up on the stalled FIFO at stop (2 s) rather than hang.
        t0 = time.monotonic()
        self.proxy.stop(timeout=H.T(15))
        self.assertLess(time.monotonic() - t0, H.T(10))


if __name__ == "__main__":
    H.main()
