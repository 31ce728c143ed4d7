#!/usr/bin/env python3
"""Configuration checking: `luaproxy -t -c FILE` accepts good configs and rejects bad ones
with `FILE: key.path: problem` on stderr; a bad config never serves; CLI flags."""

import copy
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402


def base_config(port=18080, log_dir="/tmp"):
    return {
        "workers": 1,
        "listen": [{"address": "127.0.0.1:%d" % port}],
        "upstreams": {
            "app": {"targets": ["127.0.0.1:19001", {"address": "127.0.0.1:19002", "weight": 2}],
                    "balance": "round_robin", "keepalive": 32, "keepalive_timeout": 60},
        },
        "routes": [
            {"match": {"host": "api.example.com", "prefix": "/api/"}, "upstream": "app",
             "strip_prefix": True},
            {"match": {"prefix": "/"}, "upstream": "app"},
        ],
        "timeouts": {"connect": 5, "read": 60, "send": 60, "client_header": 10,
                     "client_body": 60, "keepalive": 75, "drain": 30},
        "limits": {"max_header_size": 16384, "max_uri_size": 8192, "max_body_size": 1048576,
                   "max_headers": 100},
        "log": {"access": os.path.join(log_dir, "access.log"), "level": "info"},
    }


def setp(cfg, path, value):
    """setp(cfg, ["routes", 1, "upstream"], "x") with Python 0-based list indexes."""
    cur = cfg
    for k in path[:-1]:
        cur = cur[k]
    if value is DELETE:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return cfg


DELETE = object()

# (name, path (0-based), value, substrings that must all appear in stderr).
# Error paths in messages use Lua's 1-based indexes.
BAD = [
    ("unknown top-level key", ["bogus"], 1, ["bogus"]),
    ("unknown upstream key", ["upstreams", "app", "bogus"], 1, ["upstreams", "app", "bogus"]),
    ("unknown match key", ["routes", 1, "match", "bogus"], 1, ["routes[2]", "bogus"]),
    ("unknown timeouts key", ["timeouts", "bogus"], 1, ["timeouts", "bogus"]),
    ("unknown limits key", ["limits", "bogus"], 1, ["limits", "bogus"]),
    ("unknown listen key", ["listen", 0, "bogus"], 1, ["listen[1]", "bogus"]),
    ("unknown log key", ["log", "bogus"], 1, ["log", "bogus"]),
    ("workers wrong type", ["workers"], "two", ["workers"]),
    ("workers zero", ["workers"], 0, ["workers"]),
    ("workers not integer", ["workers"], 1.5, ["workers"]),
    ("timeout wrong type", ["timeouts", "read"], "slow", ["timeouts.read"]),
    ("timeout negative", ["timeouts", "read"], -1, ["timeouts.read"]),
    ("limit wrong type", ["limits", "max_body_size"], "big", ["limits.max_body_size"]),
    ("limit negative", ["limits", "max_header_size"], -5, ["limits.max_header_size"]),
    ("strip_prefix wrong type", ["routes", 0, "strip_prefix"], "yes",
     ["routes[1].strip_prefix"]),
    ("listen not a list", ["listen"], "127.0.0.1:8080", ["listen"]),
    ("routes not a list", ["routes"], "everything", ["routes"]),
    ("upstreams wrong type", ["upstreams"], 5, ["upstreams"]),
    ("route names missing upstream", ["routes", 1, "upstream"], "nope",
     ["routes[2].upstream", "nope"]),
    ("route without upstream", ["routes", 1, "upstream"], DELETE, ["routes[2]"]),
    ("listen address garbage", ["listen", 0, "address"], "not-an-address",
     ["listen[1].address"]),
    ("listen port out of range", ["listen", 0, "address"], "127.0.0.1:99999",
     ["listen[1].address"]),
    ("listen missing port", ["listen", 0, "address"], "127.0.0.1", ["listen[1].address"]),
    ("target address garbage", ["upstreams", "app", "targets", 0], "nohost:",
     ["upstreams", "app", "targets[1]"]),
    ("target port out of range", ["upstreams", "app", "targets", 1, "address"],
     "127.0.0.1:70000", ["upstreams", "app", "targets[2]"]),
    ("target weight negative", ["upstreams", "app", "targets", 1, "weight"], -1,
     ["targets[2]", "weight"]),
    ("target weight wrong type", ["upstreams", "app", "targets", 1, "weight"], "heavy",
     ["targets[2]", "weight"]),
    ("no targets", ["upstreams", "app", "targets"], [], ["upstreams", "app", "targets"]),
    ("unknown balance", ["upstreams", "app", "balance"], "bogus",
     ["upstreams", "app", "balance"]),
    ("prefix wrong type", ["routes", 1, "match", "prefix"], 5, ["routes[2].match.prefix"]),
    ("prefix without slash", ["routes", 1, "match", "prefix"], "api", ["routes[2].match.prefix"]),
    ("host wrong type", ["routes", 0, "match", "host"], True, ["routes[1].match.host"]),
    ("log level unknown", ["log", "level"], "loud", ["log.level"]),
]


class ConfigTest(H.ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        H.require_proxy()
        cls.dir = H.Workdir.new("config")

    def write(self, text, name="c.lua"):
        path = os.path.join(self.dir, "%d-%s" % (time.monotonic_ns(), name))
        with open(path, "w") as f:
            f.write(text)
        return path

    def run_proxy(self, args, timeout=None):
        try:
            p = subprocess.run([H.LUAPROXY] + args, stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=timeout or H.T(20),
                               preexec_fn=H._preexec)
        except subprocess.TimeoutExpired:
            self.fail("luaproxy %s did not exit" % " ".join(args))
        err = p.stderr.decode("utf-8", "replace")
        self.assertEqual(H.sanitizer_errors(err), [], err)
        return p.returncode, p.stdout.decode("utf-8", "replace"), err

    def check(self, cfg_or_text):
        text = cfg_or_text if isinstance(cfg_or_text, str) else H.config_text(cfg_or_text)
        path = self.write(text)
        rc, out, err = self.run_proxy(["-t", "-c", path])
        return path, rc, err

    def test_good_config(self):
        path, rc, err = self.check(base_config(0, self.dir))
        self.assertEqual(rc, 0, err)

    def test_minimal_config(self):
        cfg = {"listen": [{"address": "127.0.0.1:%d" % 0}],
               "upstreams": {"u": {"targets": ["127.0.0.1:9"]}},
               "routes": [{"match": {"prefix": "/"}, "upstream": "u"}]}
        path, rc, err = self.check(cfg)
        self.assertEqual(rc, 0, err)

    def test_float_timeouts_and_unlimited_body(self):
        cfg = base_config(0, self.dir)
        cfg["timeouts"] = {"connect": 0.25, "read": 1.5, "drain": 0.5}
        cfg["limits"]["max_body_size"] = 0
        path, rc, err = self.check(cfg)
        self.assertEqual(rc, 0, err)

    def test_wildcard_host_and_access_log_variants(self):
        for access in ("-", False):
            with self.subTest(access=access):
                cfg = base_config(0, self.dir)
                cfg["routes"][0]["match"]["host"] = "*.example.com"
                cfg["log"]["access"] = access
                path, rc, err = self.check(cfg)
                self.assertEqual(rc, 0, err)

    def test_config_is_a_program(self):
        text = ("local port = %d\n"
                "local up = { targets = { '127.0.0.1:' .. (19000 + 1) } }\n"
                "local routes = {}\n"
                "for _, p in ipairs({ '/a/', '/b/', '/' }) do\n"
                "  routes[#routes + 1] = { match = { prefix = p }, upstream = 'app' }\n"
                "end\n"
                "return { workers = 1, listen = { { address = '127.0.0.1:' .. port } },\n"
                "         upstreams = { app = up }, routes = routes }\n") % 0
        path, rc, err = self.check(text)
        self.assertEqual(rc, 0, err)

    def test_bad_configs(self):
        for name, path_, value, needles in BAD:
            with self.subTest(name):
                cfg = setp(copy.deepcopy(base_config(0, self.dir)), path_, value)
                path, rc, err = self.check(cfg)
                self.assertNotEqual(rc, 0, "accepted: %s" % name)
                self.assertIn(path, err, "file name missing from: %r" % err)
                for n in needles:
                    self.assertIn(n, err, "%r missing from: %r" % (n, err))

    def test_lua_syntax_error(self):
        path, rc, err = self.check("return {\n  workers = ,\n}\n")
        self.assertNotEqual(rc, 0)
        self.assertIn(os.path.basename(path), err)
        self.assertIn(":2", err, "line number missing: %r" % err)

    def test_lua_runtime_error(self):
        path, rc, err = self.check("local t = nil\nreturn t.x\n")
        self.assertNotEqual(rc, 0)
        self.assertIn(os.path.basename(path), err)

    def test_lua_error_call(self):
        path, rc, err = self.check("error('config boom')\n")
        self.assertNotEqual(rc, 0)
        self.assertIn("config boom", err)

    def test_not_a_table(self):
        for text in ("return 42\n", "return nil\n", "return 'x'\n", "-- nothing\n"):
            with self.subTest(text=text):
                path, rc, err = self.check(text)
                self.assertNotEqual(rc, 0)
                self.assertIn(os.path.basename(path), err)

    def test_missing_file(self):
        path = os.path.join(self.dir, "does-not-exist.lua")
        rc, out, err = self.run_proxy(["-t", "-c", path])
        self.assertNotEqual(rc, 0)
        self.assertIn("does-not-exist.lua", err)

    def test_bad_config_does_not_serve(self):
        port = H.dead_port()
        cfg = base_config(port, self.dir)
        cfg["bogus"] = True
        path = self.write(H.config_text(cfg))
        rc, out, err = self.run_proxy(["-c", path])
        self.assertNotEqual(rc, 0)
        self.assertIn("bogus", err)
        self.assertFalse(H.port_accepts(port))

    def test_check_mode_does_not_serve(self):
        port = H.dead_port()
        path, rc, err = self.check(base_config(port, self.dir))
        self.assertEqual(rc, 0, err)
        self.assertFalse(H.port_accepts(port))

    def test_check_opens_the_access_log(self):
        # -t does what a start does: a log that cannot be opened fails it.
        cfg = base_config(H.dead_port(), self.dir)
        cfg["log"]["access"] = os.path.join(self.dir, "no-such-dir", "access.log")
        path, rc, err = self.check(cfg)
        self.assertNotEqual(rc, 0)
        self.assertIn("no-such-dir", err)

    def test_help(self):
        rc, out, err = self.run_proxy(["-h"])
        self.assertEqual(rc, 0)
        self.assertIn("-c", out + err)

    def test_unknown_option(self):
        rc, out, err = self.run_proxy(["--no-such-option"])
        self.assertNotEqual(rc, 0)

    def test_workers_flag_overrides(self):
        # Each worker thread names itself lp-worker-N, N from 1 as in log lines (engine/worker.c): count those, not
        # all threads, since libuv's pool and the log writer start theirs lazily.
        for w in (1, 4):
            p = H.Proxy(base_config(0, self.dir), args=["-w", str(w)],
                        name="workers%d" % w)
            self.addCleanup(p.stop)
            p.start()

            def workers():
                names = []
                for t in os.listdir("/proc/%d/task" % p.pid):
                    try:
                        with open("/proc/%d/task/%s/comm" % (p.pid, t)) as f:
                            names.append(f.read().strip())
                    except OSError:
                        pass  # the thread ended between listdir and open
                return sorted(n for n in names if n.startswith("lp-worker-"))
            H.wait_for(lambda: len(workers()) == w, H.T(10), what="%d worker threads" % w)
            self.assertEqual(workers(), sorted("lp-worker-%d" % i for i in range(1, w + 1)))
            p.stop()


# Every evaluation of this config appends a line to COUNT; its handler answers with a value
# that differs between two evaluations (a fresh table's address, the CPU clock), through a
# global function the file defines and an upvalue.
ONCE_CONFIG = """
local f = assert(io.open(%(count)r, "a"))
f:write("evaluated;")
f:close()
local stamp = tostring({}):match("0x%%x+") .. "/" .. tostring(os.clock())
local hits = 0
function config_stamp() hits = hits + 1; return stamp end
return {
  workers = 2,
  listen = { { address = "127.0.0.1:%(port)d" } },
  upstreams = { one = { targets = { "127.0.0.1:1" } } },
  routes = { { handler = function(req) return req:respond(200, config_stamp()) end } },
  admin = { address = "127.0.0.1:%(admin)d" },
  log = { access = false },
}
"""


class ConfigEvaluatedOnceTest(H.ProxyTestCase):
    """One evaluation of the config file per start and per reload, used by the engine and
    by every worker's Lua VM alike (the workers do not evaluate it again)."""

    def test_one_evaluation_per_start_and_reload(self):
        d = H.Workdir.new("config-once")
        count = os.path.join(d, "count")
        text = ONCE_CONFIG % {"count": count, "port": 0, "admin": 0}
        p = H.Proxy(base_config(0, d), name="config-once")
        self.addCleanup(p.stop)

        def write():
            with open(p.config_path, "w") as f:
                f.write(text)
        p.write_config = write

        def evaluations():
            with open(count) as f:
                return f.read().count("evaluated;")

        p.start()
        port = p.port
        self.assertEqual(evaluations(), 1, p.stderr())
        # Both workers answer with the one evaluation's value (new connections spread over
        # the workers by SO_REUSEPORT).
        stamps = {H.get(port, "/", headers={"Connection": "close"}).body for _ in range(24)}
        self.assertEqual(len(stamps), 1, stamps)
        self.assertTrue(H.get(port, "/").body.startswith(b"0x"))
        p.signal(signal.SIGHUP)
        H.wait_for(lambda: "reload: generation 2 live" in p.stderr(), H.T(10),
                   what="the reload")
        self.assertEqual(evaluations(), 2, p.stderr())
        stamps2 = {H.get(port, "/", headers={"Connection": "close"}).body for _ in range(24)}
        self.assertEqual(len(stamps2), 1, stamps2)
        self.assertNotEqual(stamps, stamps2)
        # -t evaluates it once too.
        r = subprocess.run([H.LUAPROXY, "-t", "-c", p.config_path], capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=H.T(20))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(evaluations(), 3)


    def test_a_config_that_cannot_move_is_evaluated_by_each_worker(self):
        # A handler holding a userdata (a file) cannot move to the workers' VMs: they
        # evaluate the file themselves, as before, and it still serves.
        d = H.Workdir.new("config-nomove")
        text = ("local err = io.stderr\n"
                "return { workers = 2, listen = { { address = '127.0.0.1:0' } },\n"
                "  routes = { { handler = function(req)\n"
                "    return req:respond(200, io.type(err)) end } },\n"
                "  log = { access = false } }\n")
        p = H.Proxy(base_config(0, d), name="config-nomove")
        self.addCleanup(p.stop)

        def write():
            with open(p.config_path, "w") as f:
                f.write(text)
        p.write_config = write
        p.start()
        self.assertIn("each worker evaluates the file again", p.stderr())
        self.assertIn("a userdata cannot move", p.stderr())
        self.assertEqual(H.get(p.port, "/").body, b"file")


if __name__ == "__main__":
    H.main()
