#!/usr/bin/env python3
"""proxy.redis against a real redis-server (Debian's package; ./dev installs it): GET, SET,
INCR, error replies, a pipeline and EVAL from a plugin, AUTH and SELECT on a fresh
connection only, keep-alive reuse through the cosocket pool (Redis's own connection count
stays flat), a stalled Redis (SIGSTOP) answered by the client's timeout, and a Redis
outage in the middle of a load: every request is still answered 200 by a plugin that
handles `nil, err`, and the plugin gets Redis back once it returns.

redis-server cannot listen on port 0: it gets a port from harness.reserved_port() (a
port in TIME_WAIT on our side, which the kernel does not hand out for port 0 meanwhile and
redis, binding with SO_REUSEADDR, may take). It runs with --save "" --appendonly no in its
own directory and is stopped by PID."""

import json
import os
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua"))
import luatest as L  # noqa: E402
from luatest import H  # noqa: E402

PASSWORD = "s3cret pass"  # with a space: AUTH's argument is a bulk string, not a word

PLUGIN = r'''
local P = { name = "rtest", priority = 10, schema = { fields = {
  port = { type = "integer", required = true, description = "redis port" },
  password = { type = "string", description = "redis password" },
  db = { type = "integer", default = 0, description = "database" } } } }

local function show(v)
  if v == proxy.null then return "null" end
  if type(v) == "table" then
    local parts = {}
    for i = 1, #v do parts[i] = show(v[i]) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  return tostring(v)
end

local function client(conf)
  return proxy.redis.connect { port = conf.port, password = conf.password, db = conf.db,
                               timeout = 500, pool_size = 16 }
end

local H = {}

function H.set(req, red) return red:set(req:query("k"), req:query("v")) end
function H.get(req, red) return red:get(req:query("k")) end
function H.incr(req, red) return red:incr(req:query("k")) end
function H.setex(req, red) return red:set(req:query("k"), req:query("v"), "EX", 100) end
function H.ttl(req, red) return red:ttl(req:query("k")) end

function H.pipeline(req, red)
  red:init_pipeline()
  red:set("p:a", "1")
  red:incr("p:a")
  red:get("p:a")
  red:get("p:missing")
  red:hset("p:a", "f", "v") -- a wrong-type error among the replies
  red:rpush("p:l", "x", "y")
  red:lrange("p:l", 0, -1)
  red:del("p:a", "p:l")
  return red:commit_pipeline()
end

function H.eval(req, red)
  local script = "return { KEYS[1], ARGV[1], redis.call('incrby', KEYS[1], ARGV[2]) }"
  local res, err = red:eval(script, 1, "e:k", "hello", 5)
  if not res then return res, err end
  local sha = red:script("load", script)
  local res2, err2 = red:evalsha(sha, 1, "e:k", "again", 1)
  if not res2 then return res2, err2 end
  return { res, res2 }
end

function H.reused(req, red) return red:get_reused_times() end

-- The OpenResty form, with one client object connecting twice (pooled in between).
function H.openresty(req, red, conf)
  local r = proxy.redis.new()
  r:set_timeouts(500, 500, 500)
  local ok, err = r:connect("127.0.0.1", conf.port, { pool = "openresty-style" })
  if not ok then return nil, err end
  if r:get_reused_times() == 0 then
    local res, aerr = r:auth(conf.password)
    if not res then return res, aerr end
  end
  r:set("or:k", "v1")
  ok, err = r:set_keepalive(10000, 4)
  if not ok then return nil, err end
  ok, err = r:connect("127.0.0.1", conf.port, { pool = "openresty-style" })
  if not ok then return nil, err end
  local reused = r:get_reused_times()
  local v = r:get("or:k")
  r:set_keepalive(10000, 4)
  return { reused, v }
end

function H.error(req, red)
  red:set("e:str", "abc")
  return red:incr("e:str")
end

-- What the issue asks plugins to be able to do: Redis down means a fallback, not a 500.
function H.fallback(req, red, err)
  if not red then return "fallback: " .. err end
  local v, gerr = red:incr("load:n")
  if not v then return "fallback: " .. tostring(gerr) end
  red:set_keepalive(10000, 16)
  return "value: " .. v
end

function P.request(req, conf)
  local name = req:path():match("^/r/(%w+)")
  local h = H[name]
  if not h then return end
  local red, err = client(conf)
  if name == "fallback" then return req:respond(200, h(req, red, err)) end
  if not red then return req:respond(502, "connect: " .. err) end
  local res, rerr = h(req, red, conf)
  if res == nil then return req:respond(502, "nil " .. tostring(rerr)) end
  local ok, kerr = red:set_keepalive(10000, 16)
  if not ok then return req:respond(500, "keepalive: " .. tostring(kerr)) end
  if res == false then return req:respond(200, "false " .. rerr) end
  return req:respond(200, show(res))
end
return P
'''


class Redis:
    """A redis-server on 127.0.0.1, stopped by PID."""

    def __init__(self, password=None):
        self.binary = H.require_tool("redis-server")
        self.password = password
        self.dir = H.Workdir.new("redis")
        self.proc = None
        self.port = None

    def start(self, port=None):
        last = ""
        for _ in range(5):  # another process may take the port first: try another
            self.port = port or H.reserved_port()
            argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", self.dir,
                    "--daemonize", "no", "--databases", "16"]
            if self.password:
                argv += ["--requirepass", self.password]
            out = os.path.join(self.dir, "stdout")
            self.proc = H.spawn(argv, out, os.path.join(self.dir, "stderr"))

            def ready():
                if self.proc.poll() is not None:
                    return "exited"
                try:
                    return self.command("PING") == "PONG"
                except OSError:
                    return False
            if H.wait_for(ready, H.T(30), what="redis-server ready") is True:
                return self
            with open(out, errors="replace") as f:
                last = f.read()[-2000:]
            H.stop_process(self.proc)
            self.proc = None
            if port:
                break
        raise AssertionError("redis-server did not start:\n" + last)

    def kill(self):
        if self.proc is not None:
            H.stop_process(self.proc, signal.SIGKILL)
            self.proc = None

    def stop(self):
        if self.proc is not None:
            H.stop_process(self.proc)
            self.proc = None

    def command(self, *args, db=0):
        """One command on a fresh connection (AUTH and SELECT first): the decoded reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=H.T(5)) as s:
            f = s.makefile("rb")
            pre = []
            if self.password:
                pre.append(("AUTH", self.password))
            if db:
                pre.append(("SELECT", str(db)))
            for cmd in pre + [args]:
                s.sendall(encode(*cmd))
                reply = read_reply(f)
            return reply


def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def read_reply(f):
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise OSError("redis closed")
    t, rest = line[:1], line[1:-2]
    if t == b"+":
        return rest.decode()
    if t == b"-":
        return Exception(rest.decode())
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode()
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [read_reply(f) for _ in range(n)]
    raise OSError("bad reply %r" % line)


class LuaRedisTest(L.LuaTestCase):
    @classmethod
    def setUpClass(cls):
        cls.redis = Redis(PASSWORD)
        cls.addClassCleanup(cls.redis.stop)
        cls.redis.start()
        cls.origin = cls.start_origin("o")
        conf = {"name": "rtest", "port": cls.redis.port, "password": PASSWORD, "db": 3}
        cls.proxy = cls.start_lua_proxy(
            {"o": H.upstream(cls.origin.address())},
            [{"match": {"prefix": "/r/"}, "upstream": "o", "plugins": [conf]},
             {"match": {"prefix": "/"}, "upstream": "o"}],
            files={"plugins/rtest.lua": PLUGIN}, workers=1)

    def body(self, path, status=200):
        r = self.get(path)
        self.assertEqual(r.status, status, r.body)
        return r.body.decode()

    def test_get_set_incr_in_the_selected_db(self):
        self.assertEqual(self.body("/r/set?k=greeting&v=hello%20there"), "OK")
        self.assertEqual(self.body("/r/get?k=greeting"), "hello there")
        self.assertEqual(self.body("/r/get?k=nothing"), "null")
        self.assertEqual(self.body("/r/incr?k=n1"), "1")
        self.assertEqual(self.body("/r/incr?k=n1"), "2")
        self.assertEqual(self.body("/r/setex?k=t&v=x"), "OK")
        self.assertEqual(self.body("/r/ttl?k=t"), "100")
        # AUTH and SELECT 3 happened: the keys are in database 3, not 0.
        self.assertEqual(self.redis.command("GET", "greeting", db=3), "hello there")
        self.assertIsNone(self.redis.command("GET", "greeting"))
        self.assertEqual(self.redis.command("GET", "n1", db=3), "2")

    def test_openresty_style_new_connect_twice(self):
        self.assertRegex(self.body("/r/openresty"), r"^\[[1-9]\d*,v1\]$")

    def test_error_reply_is_false_and_message(self):
        self.assertEqual(self.body("/r/error"), "false ERR value is not an integer or out of range")

    def test_pipeline(self):
        self.assertEqual(self.body("/r/pipeline"),
                         "[OK,2,2,null,[false,WRONGTYPE Operation against a key holding the "
                         "wrong kind of value],2,[x,y],2]")

    def test_eval_and_evalsha(self):
        self.redis.command("DEL", "e:k", db=3)
        self.assertEqual(self.body("/r/eval"), "[[e:k,hello,5],[e:k,again,6]]")

    def test_keepalive_reuses_connections(self):
        self.body("/r/reused")
        before = self.total_connections()
        seen = [int(self.body("/r/reused")) for _ in range(50)]
        after = self.total_connections()
        self.assertGreaterEqual(min(seen), 1, seen)
        self.assertEqual(seen, sorted(seen))  # one pooled connection, reused each time
        # Redis saw one new connection: the INFO of `after` itself.
        self.assertEqual(after - before, 1, "the plugin opened new connections to Redis")

    def total_connections(self):
        info = self.redis.command("INFO", "stats")
        for line in info.splitlines():
            if line.startswith("total_connections_received:"):
                return int(line.split(":")[1])
        raise AssertionError("no total_connections_received in INFO:\n" + info)

    def test_z_timeout_when_redis_stalls(self):
        """redis-server stopped (SIGSTOP): the kernel still accepts, nothing answers. Each
        request gets its fallback after the plugin's 500 ms timeout, then Redis again."""
        self.body("/r/fallback")  # a pooled connection exists
        os.kill(self.redis.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(2):  # the pooled connection, then a fresh one (AUTH times out)
                t0 = time.monotonic()
                b = self.body("/r/fallback")
                took = time.monotonic() - t0
                self.assertRegex(b, r"^fallback: (redis 127\.0\.0\.1:\d+: AUTH failed: )?timeout$")
                self.assertGreaterEqual(took, 0.45, b)
                self.assertLess(took, H.T(3), b)
        finally:
            os.kill(self.redis.proc.pid, signal.SIGCONT)
        H.wait_for(lambda: self.body("/r/fallback").startswith("value: "), H.T(5),
                   what="Redis answering again after SIGCONT")

    def test_zz_outage_during_load(self):
        """Runs last (it kills redis-server, then starts it again on the same port)."""
        results = []
        stop = threading.Event()
        errors = []

        def loop():
            c = H.Client(self.proxy.port)
            try:
                while not stop.is_set():
                    r = c.request("GET", "/r/fallback", headers={"Host": "a.test"})
                    results.append((r.status, r.body.decode()))
            except Exception as e:  # noqa: BLE001
                errors.append(e)
            finally:
                c.close()

        threads = [threading.Thread(target=loop, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            H.wait_for(lambda: sum(1 for _, b in results if b.startswith("value:")) >= 200,
                       H.T(20), what="200 answers with Redis up")
            self.redis.kill()
            n = len(results)
            H.wait_for(lambda: sum(1 for _, b in results[n:] if b.startswith("fallback:")) >= 200
                       or errors, H.T(20), what="200 fallback answers with Redis down")
            self.redis.start(self.redis.port)
            n = len(results)
            H.wait_for(lambda: sum(1 for _, b in results[n:] if b.startswith("value:")) >= 50
                       or errors, H.T(20), what="answers from Redis again once it is back")
        finally:
            stop.set()
            for t in threads:
                t.join(H.T(10))
        self.assertEqual(errors, [])
        bad = [r for r in results if r[0] != 200]
        self.assertEqual(bad, [], "requests not answered 200 during the outage")
        reasons = {b[len("fallback: "):] for _, b in results if b.startswith("fallback:")}
        port = str(self.redis.port)
        for r in reasons:  # the cosocket's messages, or connect's "redis ADDR: why"
            self.assertRegex(r, r"^(redis 127\.0\.0\.1:%s: (AUTH failed: |SELECT 3 failed: )?)?"
                                r"[a-z][a-z ]+$" % port, reasons)
        self.assertAlive()


class RateLimitExampleTest(L.LuaTestCase):
    """scripts/redis-rate-limit.lua as shipped, with its ports moved (Redis, the demo
    origin, the listener): 10 requests per client and window, then 429; fail open without
    Redis."""

    @classmethod
    def setUpClass(cls):
        from test_lua_examples import ExampleProxy
        cls.redis = Redis()
        cls.addClassCleanup(cls.redis.stop)
        cls.redis.start()
        cls.origin = cls.start_origin("web")
        p = ExampleProxy("redis-rate-limit", {9001: cls.origin.port})
        assert "port = 6379" in p.text
        p.text = p.text.replace("port = 6379", "port = %d" % cls.redis.port)
        cls.addClassCleanup(p.stop)
        cls.proxy = p.start()

    def statuses(self, n):
        out = []
        for _ in range(n):
            r = self.get("/")
            out.append((r.status, r.header("Retry-After")))
        return out

    def test_limit_then_fail_open(self):
        for attempt in range(2):  # a second try only when a window boundary fell inside
            window = int(time.time() // 60)
            got = self.statuses(12)
            if int(time.time() // 60) == window:
                break
            self.redis.command("FLUSHALL")
        self.assertEqual([s for s, _ in got], [200] * 10 + [429, 429], got)
        retry = int(got[10][1])
        self.assertTrue(1 <= retry <= 60, got[10])
        self.assertEqual(self.redis.command("GET", "ratelimit:127.0.0.1:%d" % window), "12")
        ttl = self.redis.command("TTL", "ratelimit:127.0.0.1:%d" % window)
        self.assertTrue(0 < ttl <= 60, ttl)

        self.redis.kill()
        self.assertEqual([s for s, _ in self.statuses(5)], [200] * 5)
        self.wait_log("rate limit off (requests go through): redis 127.0.0.1:%d: "
                      "connection refused" % self.redis.port)
        # at most once per 10 s per worker (the example runs one per core)
        per_worker = [l.split("] ", 1)[1].split(":", 1)[0]
                      for l in self.log_lines("rate limit off")]
        self.assertEqual(len(per_worker), len(set(per_worker)), per_worker)


if __name__ == "__main__":
    H.main()
