-- proxy.redis (lua/luaproxy/redis.lua) through the proxy.test double's fake Redis
-- (lua/proxy/test_redis.lua): command encoding, every RESP2 reply type (whole and split
-- into pieces), errors, pipelines, keepalive, AUTH/SELECT, and a plugin that falls back.
local T = require "proxy.test"
local redis_mod = require "luaproxy.redis"
local R = T.redis

describe("proxy.redis", function()
  local redis = T.proxy.redis
  local null = T.proxy.null
  local srv

  before_each(function()
    T.reset()
    srv = T.redis_server { port = 6379 }
  end)

  local function client(o)
    local red, err = redis.connect(o or { port = 6379 })
    assert.is_nil(err)
    assert.truthy(red)
    return red
  end

  describe("encoding", function()
    it("sends a RESP array of bulk strings", function()
      local red = client()
      assert.equal("OK", red:set("k", "v", "EX", 10))
      assert.equal("*5\r\n$3\r\nset\r\n$1\r\nk\r\n$1\r\nv\r\n$2\r\nEX\r\n$2\r\n10\r\n",
        srv:sent(1))
      assert.same({ "set", "k", "v", "EX", "10" }, srv.commands[1])
      assert.equal(0, srv.protocol_errors)
    end)

    it("encodes numbers exactly, booleans as lua-resty-redis, binary and empty strings", function()
      assert.equal("*3\r\n$3\r\nset\r\n$1\r\nk\r\n$16\r\n9007199254740994\r\n",
        redis_mod.encode("set", "k", 2 ^ 53 + 2))
      assert.equal("*2\r\n$4\r\necho\r\n$3\r\n1.5\r\n", redis_mod.encode("echo", 1.5))
      assert.equal("*2\r\n$4\r\necho\r\n$2\r\n-7\r\n", redis_mod.encode("echo", -7))
      assert.equal("*2\r\n$4\r\necho\r\n$4\r\ntrue\r\n", redis_mod.encode("echo", true))
      assert.equal("*2\r\n$4\r\necho\r\n$0\r\n\r\n", redis_mod.encode("echo", ""))
      local bin = "a\r\nb\0c"
      assert.equal("*2\r\n$4\r\necho\r\n$6\r\n" .. bin .. "\r\n", redis_mod.encode("echo", bin))
      local red = client()
      assert.equal(bin, red:echo(bin))
      assert.equal("", red:echo(""))
    end)

    it("spreads array arguments (mget(list), del(keys))", function()
      local red = client()
      red:mset("a", 1, "b", 2)
      assert.same({ "1", "2", null }, red:mget({ "a", "b", "c" }))
      assert.same({ "mget", "a", "b", "c" }, srv.commands[2])
      assert.equal(2, red:del({ "a", "b" }))
    end)

    it("hmset takes a table like lua-resty-redis", function()
      local red = client()
      assert.equal("OK", red:hmset("h", { x = "1" }))
      assert.equal("OK", red:hmset("h", "y", "2"))
      assert.same({ "x", "1", "y", "2" }, red:hgetall("h"))
      assert.same({ x = "1", y = "2" }, red:array_to_hash(red:hgetall("h")))
    end)

    it("returns nil, err for an argument it cannot send, without sending anything", function()
      local red = client()
      local res, err = red:set("k", nil)
      assert.is_nil(res)
      assert.equal("bad argument #2: string, number or boolean expected, got nil", err)
      res, err = red:set("k", null)
      assert.is_nil(res)
      assert.matches("got null", err)
      res, err = red:set("k", 0 / 0)
      assert.is_nil(res)
      assert.matches("not a finite number", err)
      assert.equal(0, #srv.commands)
      assert.equal("PONG", red:ping()) -- the connection is still good
    end)

    it("makes any command a method, in any case", function()
      local red = client()
      assert.equal("PONG", red:PING())
      assert.equal(1, red:Incr("n"))
      local res, err = red:frobnicate("x")
      assert.is_false(res)
      assert.equal("ERR unknown command 'frobnicate', with args beginning with: 'x'", err)
      assert.is_nil(rawget(red, "frobnicate")) -- methods live in the class, not the client
      assert.is_nil(red._no_such_field) -- fields are never mistaken for commands
    end)
  end)

  describe("replies", function()
    -- Each reply type, given as raw bytes, read whole and then split into 1- and 3-byte pieces.
    local cases = {
      { "status", "+OK\r\n", "OK" },
      { "empty status", "+\r\n", "" },
      { "integer", ":42\r\n", 42 },
      { "negative integer", ":-3\r\n", -3 },
      { "bulk", "$5\r\nhello\r\n", "hello" },
      { "empty bulk", "$0\r\n\r\n", "" },
      { "bulk holding CRLF", "$4\r\n\r\n\r\n\r\n", "\r\n\r\n" },
      { "nil bulk", "$-1\r\n", null },
      { "nil array", "*-1\r\n", null },
      { "empty array", "*0\r\n", {} },
      { "array", "*3\r\n$1\r\na\r\n:2\r\n$-1\r\n", { "a", 2, null } },
      { "nested arrays", "*2\r\n*2\r\n:1\r\n*1\r\n$1\r\nx\r\n*0\r\n", { { 1, { "x" } }, {} } },
      { "error inside an array", "*2\r\n+OK\r\n-ERR bad\r\n", { "OK", { false, "ERR bad" } } },
    }
    for _, chunk in ipairs({ false, 1, 3 }) do
      for _, case in ipairs(cases) do
        it(case[1] .. (chunk and (" in pieces of " .. chunk) or ""), function()
          srv.chunk_size = chunk or nil
          local red = client()
          srv:reply(R.raw(case[2]))
          local res, err = red:get("k")
          assert.is_nil(err)
          assert.same(case[3], res)
          assert.equal("PONG", red:ping()) -- nothing left over in the stream
        end)
      end
    end

    it("error replies are false, message (the connection stays usable)", function()
      local red = client()
      srv:reply(R.error("ERR something"))
      local res, err = red:get("k")
      assert.is_false(res)
      assert.equal("ERR something", err)
      red:set("s", "x")
      res, err = red:incr("s")
      assert.is_false(res)
      assert.equal("ERR value is not an integer or out of range", err)
      red:lpush("l", "x")
      res, err = red:get("l")
      assert.is_false(res)
      assert.matches("^WRONGTYPE", err)
      assert.equal("x", red:get("s"))
    end)

    it("reads a large bulk (over the one-read size) in pieces", function()
      srv.chunk_size = 4000
      local red = client()
      local big = string.rep("0123456789", 5000)
      assert.equal("OK", red:set("big", big))
      assert.equal(big, red:get("big"))
      assert.equal("PONG", red:ping())
    end)

    it("a reply of an unknown type is a protocol error: nil, err, connection closed", function()
      local red = client()
      srv:reply(R.raw("%3\r\n"))
      local res, err = red:get("k")
      assert.is_nil(res)
      assert.equal('bad reply from redis: unknown type "%"', err)
      res, err = red:get("k")
      assert.is_nil(res)
      assert.equal("closed", err)
      assert.same({ nil, "closed" }, { red:set_keepalive() })
    end)

    it("a bulk whose CRLF is missing is a protocol error", function()
      local red = client()
      srv:reply(R.raw("$2\r\nabcd\r\n"))
      local res, err = red:get("k")
      assert.is_nil(res)
      assert.equal("bad reply from redis: bulk not ended by CRLF", err)
    end)

    it("arrays nested too deep are a protocol error, not a stack overflow", function()
      local red = client()
      srv:reply(R.raw(string.rep("*1\r\n", 100000) .. ":1\r\n"))
      local res, err = red:get("k")
      assert.is_nil(res)
      assert.equal("bad reply from redis: arrays nested too deep", err)
      red = client()
      srv:reply(R.raw(string.rep("*1\r\n", 64) .. ":1\r\n"))
      res = red:get("k")
      for _ = 1, 64 do res = res[1] end
      assert.equal(1, res)
    end)

    it("a bad length is a protocol error", function()
      local red = client()
      srv:reply(R.raw("$x\r\n"))
      local res, err = red:get("k")
      assert.is_nil(res)
      assert.equal("bad reply from redis: $x", err)
      red = client()
      srv:reply(R.raw("$99999999999\r\n")) -- over Redis's 512 MiB: never buffered
      res, err = red:get("k")
      assert.is_nil(res)
      assert.equal("bad reply from redis: $99999999999", err)
    end)
  end)

  describe("failures are returned, never raised", function()
    it("connection refused", function()
      local red, err = redis.connect { port = 6380 }
      assert.is_nil(red)
      assert.equal("redis 127.0.0.1:6380: connection refused", err)
    end)

    it("a read timeout after the configured time, and the connection is not pooled", function()
      local red = client { port = 6379, timeout = 250 }
      srv:reply(R.hang)
      local t0 = T.now()
      local res, err = red:get("k")
      assert.is_nil(res)
      assert.equal("timeout", err)
      assert.near(0.25, T.now() - t0, 1e-6)
      assert.same({ nil, "closed" }, { red:set_keepalive(1000, 10) })
      assert.same({ nil, "closed" }, { red:get("k") })
    end)

    it("separate connect/send/read timeouts; the default is 1 s", function()
      local red = client()
      srv:reply(R.hang)
      local t0 = T.now()
      assert.same({ nil, "timeout" }, { red:get("k") })
      assert.near(1, T.now() - t0, 1e-6)
      red = client { port = 6379, timeout = 5000, read_timeout = 100 }
      srv:reply(R.hang)
      t0 = T.now()
      assert.same({ nil, "timeout" }, { red:get("k") })
      assert.near(0.1, T.now() - t0, 1e-6)
    end)

    it("the peer closing mid-reply", function()
      local red = client()
      srv:reply(R.raw("$10\r\nhel", true))
      local res, err = red:get("k")
      assert.is_nil(res)
      assert.equal("closed", err)
      srv:reply(R.raw("*3\r\n:1\r\n", true))
      red = client()
      res, err = red:lrange("l", 0, -1)
      assert.is_nil(res)
      assert.equal("closed", err)
    end)

    it("the peer closing instead of answering", function()
      local red = client()
      srv:reply(R.close)
      assert.same({ nil, "closed" }, { red:get("k") })
    end)

    it("an outage: open connections fail, new ones are refused, then it comes back", function()
      local red = client()
      assert.equal("OK", red:set("k", "v"))
      srv:stop()
      assert.same({ nil, "closed" }, { red:get("k") })
      local red2, err = redis.connect { port = 6379 }
      assert.is_nil(red2)
      assert.equal("redis 127.0.0.1:6379: connection refused", err)
      srv:start()
      assert.equal("v", client():get("k"))
    end)

    it("a wrong password, a missing one, a bad db", function()
      T.redis_server { port = 7000, password = "s3cret" }
      local red, err = redis.connect { port = 7000, password = "nope" }
      assert.is_nil(red)
      assert.equal("redis 127.0.0.1:7000: AUTH failed: "
        .. "WRONGPASS invalid username-password pair or user is disabled.", err)
      red = client { port = 7000 }
      local res
      res, err = red:get("k")
      assert.is_false(res)
      assert.equal("NOAUTH Authentication required.", err)
      red, err = redis.connect { port = 7000, password = "s3cret", db = 99 }
      assert.is_nil(red)
      assert.equal("redis 127.0.0.1:7000: SELECT 99 failed: ERR DB index is out of range", err)
    end)

    it("a closed client answers closed", function()
      local red = client()
      assert.equal(1, red:close())
      assert.same({ nil, "closed" }, { red:get("k") })
      assert.same({ nil, "closed" }, { red:close() })
    end)

    it("raises only for a call that is not a table of options", function()
      assert.error_matches(function() redis.connect("127.0.0.1") end,
        "proxy.redis.connect: expected a table of options", 1, true)
      assert.error_matches(function() redis.connect { port = 0 } end,
        "proxy.redis.connect: host must be a string and port a number from 1 to 65535", 1, true)
      assert.error_matches(function() redis.connect { db = "x" } end,
        "proxy.redis.connect: db must be a number", 1, true)
    end)
  end)

  describe("pipelines", function()
    it("sends every command at once and returns the replies in order", function()
      local red = client()
      red:init_pipeline()
      assert.is_true(red:set("a", "1"))
      assert.is_true(red:incr("a"))
      assert.is_true(red:get("a"))
      assert.is_true(red:get("missing"))
      assert.is_true(red:lpush("a", "x")) -- wrong type: an error reply among the others
      assert.equal(0, #srv.commands)     -- nothing sent yet
      local res, err = red:commit_pipeline()
      assert.is_nil(err)
      assert.same({ "OK", 2, "2", null,
        { false, "WRONGTYPE Operation against a key holding the wrong kind of value" } }, res)
      assert.equal(5, #srv.commands)
    end)

    it("pipeline()/commit() are the same, and cancel drops what was queued", function()
      local red = client()
      red:pipeline()
      red:set("a", "1")
      red:cancel_pipeline()
      assert.equal(null, red:get("a"))
      red:pipeline()
      red:set("b", "2")
      red:get("b")
      assert.same({ "OK", "2" }, red:commit())
      assert.same({}, (function() red:init_pipeline(); return red:commit_pipeline() end)())
      assert.same({ nil, "no pipeline" }, { red:commit_pipeline() })
    end)

    it("in pieces of 1 byte", function()
      srv.chunk_size = 1
      local red = client()
      red:init_pipeline()
      for i = 1, 20 do red:rpush("l", i) end
      red:lrange("l", 0, -1)
      local res = red:commit_pipeline()
      assert.equal(21, #res)
      assert.equal(20, res[20])
      assert.equal("20", res[21][20])
    end)

    it("a failure mid-pipeline is nil, err and closes the connection", function()
      local red = client()
      red:init_pipeline()
      red:set("a", "1")
      red:get("a")
      srv:reply(R.status("OK"), R.raw("$1\r\n", true))
      assert.same({ nil, "closed" }, { red:commit_pipeline() })
      assert.same({ nil, "closed" }, { red:set_keepalive() })
    end)

    it("set_keepalive refuses an uncommitted pipeline", function()
      local red = client()
      red:init_pipeline()
      red:get("a")
      assert.same({ nil, "pipeline not committed" }, { red:set_keepalive() })
    end)
  end)

  describe("eval and evalsha", function()
    it("send the script, the key count, keys and arguments", function()
      srv:on("EVAL", function(args) return { args[2], args[3], args[4], args[5] } end)
      local red = client()
      assert.same({ "return 1", "1", "k", "arg" }, red:eval("return 1", 1, "k", "arg"))
      local res, err = red:evalsha("0123", 0)
      assert.is_false(res)
      assert.equal("NOSCRIPT No matching script. Please use EVAL.", err)
    end)
  end)

  describe("pub/sub", function()
    it("subscribe, then read_reply for each message; no pooling while subscribed", function()
      srv:on("SUBSCRIBE", function()
        return R.raw("*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
          .. "*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n")
      end)
      local red = client { port = 6379, read_timeout = 100 }
      assert.same({ nil, "not subscribed" }, { red:read_reply() })
      assert.same({ "subscribe", "ch", 1 }, red:subscribe("ch"))
      assert.same({ "message", "ch", "hi" }, red:read_reply())
      assert.same({ nil, "subscribed state" }, { red:set_keepalive() })
      assert.same({ nil, "timeout" }, { red:read_reply() }) -- no message yet: still usable
      assert.same({ nil, "timeout" }, { red:read_reply() })
      assert.equal(1, red:close())
    end)
  end)

  describe("keepalive", function()
    it("reuses a pooled connection without AUTH or SELECT again", function()
      local s = T.redis_server { port = 7001, password = "pw" }
      local red = client { port = 7001, password = "pw", db = 2 }
      assert.equal(0, red:get_reused_times())
      red:set("k", "v")
      assert.equal(1, red:set_keepalive(10000, 8))
      assert.same({ nil, "closed" }, { red:get("k") }) -- the client let it go
      red = client { port = 7001, password = "pw", db = 2 }
      assert.equal(1, red:get_reused_times())
      assert.equal("v", red:get("k"))
      assert.equal(1, s.connections)
      local names = {}
      for i, c in ipairs(s.commands) do names[i] = c[1] end
      assert.same({ "auth", "select", "set", "get" }, names)
      assert.same({ k = "v" }, s:dump(2))
    end)

    it("keeps connections to other databases and credentials apart", function()
      local red = client { port = 6379 }
      red:set("k", "db0")
      red:set_keepalive()
      red = client { port = 6379, db = 1 }
      assert.equal(0, red:get_reused_times())
      assert.equal(null, red:get("k"))
      assert.equal(2, srv.connections)
    end)

    it("an idle connection past its idle time is not reused", function()
      local red = client()
      red:set_keepalive(500)
      T.advance(1)
      red = client()
      assert.equal(0, red:get_reused_times())
      assert.equal(2, srv.connections)
    end)

    it("the OpenResty style works too: new, set_timeouts, connect", function()
      local red = redis.new()
      red:set_timeouts(100, 100, 100)
      assert.equal(true, red:connect("127.0.0.1", 6379))
      assert.equal("OK", red:set("x", 1))
      assert.equal(1, red:set_keepalive(1000, 4))
      assert.equal(true, red:connect("127.0.0.1", 6379)) -- the same client connects again
      assert.equal(1, red:get_reused_times())
      assert.equal("1", red:get("x"))
    end)
  end)

  describe("in a plugin", function()
    local P = {
      name = "visits", priority = 1,
      schema = { fields = { port = { type = "integer", default = 6379 } } },
    }
    function P.request(req, conf)
      local red, err = proxy.redis.connect { port = conf.port, timeout = 100 }
      local n
      if red then
        n, err = red:incr("visits:" .. req:path())
        if n then red:set_keepalive(10000, 16) end
      end
      if not n then
        proxy.log.warn("redis: ", err)
        return req:respond(200, "visits unknown")
      end
      return req:respond(200, "visits " .. n)
    end

    it("counts, pools and falls back when Redis is down", function()
      assert.equal("visits 1", T.run(P, {}, { uri = "/a" }).body)
      assert.equal("visits 2", T.run(P, {}, { uri = "/a" }).body)
      assert.equal(1, srv.connections)
      srv:stop()
      local res = T.run(P, {}, { uri = "/a" })
      assert.equal(200, res.status)
      assert.equal("visits unknown", res.body)
      srv:start()
      assert.equal("visits 3", T.run(P, {}, { uri = "/a" }).body)
      assert.equal(2, srv.connections)
    end)

    it("works in every phase that may wait, response_body filters included", function()
      local F = { name = "f", priority = 1 }
      function F.response_body(req, chunk, eof)
        local red = assert(proxy.redis.connect { port = 6379 })
        local n = assert(red:incr("chunks"))
        red:set_keepalive()
        return chunk .. "[" .. n .. "]"
      end
      function F.log(req)
        local red = assert(proxy.redis.connect { port = 6379 })
        assert(red:set("logged", req:path()))
        red:set_keepalive()
      end
      local res = T.run(F, {}, { uri = "/x" }, { body = { "a", "b" } })
      assert.equal("a[1]b[2]", res.body)
      assert.same({ chunks = "2", logged = "/x" }, srv:dump())
      assert.equal(1, srv.connections)
    end)
  end)
end)
