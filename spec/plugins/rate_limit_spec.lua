local T = require "proxy.test"
local rate_limit = require "rate_limit"

describe("rate_limit plugin", function()
  before_each(function()
    T.reset()
    T.shared_dicts({ rate_limit = "1m" })
  end)

  local function run(conf, spec)
    return T.run(rate_limit, conf, spec or { client_ip = "192.0.2.1" })
  end

  it("allows rate + burst at once, then answers 429 with Retry-After and the draft's headers", function()
    local conf = { rate = 2, period = 1, burst = 1 }
    for i = 1, 2 do
      local res = run(conf)
      assert.is_false(res.responded)
      assert.equal('"default";q=2;w=1', res.headers["RateLimit-Policy"])
      assert.equal('"default";r=' .. (2 - i) .. ';t=1', res.headers["RateLimit"])
    end
    local res = run(conf)
    assert.is_true(res.responded)
    assert.equal(429, res.status)
    assert.equal("1", res.headers["Retry-After"])
    assert.equal('"default";r=0;t=1', res.headers["RateLimit"])
    assert.is_true(res.ctx.rate_limited)
    -- Half a second later one more request fits (2 per second).
    T.advance(0.5)
    assert.is_false(run(conf).responded)
    assert.is_true(run(conf).responded)
  end)

  it("counts each key apart, and falls back to the address when the key is missing", function()
    local conf = { rate = 1, limit_by = "header", header = "X-Api-Key" }
    assert.is_false(run(conf, { headers = { ["X-Api-Key"] = "a" } }).responded)
    assert.is_true(run(conf, { headers = { ["X-Api-Key"] = "a" } }).responded)
    assert.is_false(run(conf, { headers = { ["X-Api-Key"] = "b" } }).responded)
    assert.is_false(run(conf, { client_ip = "198.51.100.7" }).responded)
    assert.is_true(run(conf, { client_ip = "198.51.100.7" }).responded)
    -- The header value "ip:..." is not the address's counter.
    assert.is_false(run(conf, { client_ip = "203.0.113.1",
      headers = { ["X-Api-Key"] = "ip:198.51.100.7" } }).responded)
  end)

  it("counts by consumer (a table with id, or a string) and by a Lua function", function()
    local auth = { name = "auth", priority = 2000, schema = { fields = {} },
      request = function(req) req.ctx.consumer = { id = req:header("X-User") } end }
    local function chain(user)
      return T.run_chain({ { auth, {} }, { rate_limit, { rate = 1, limit_by = "consumer" } } },
        { headers = { ["X-User"] = user } })
    end
    assert.is_false(chain("alice").responded)
    assert.is_true(chain("alice").responded)
    assert.is_false(chain("bob").responded)
    local conf = { rate = 1, limit_by = "function", key = function(req) return req:path() end }
    assert.is_false(run(conf, { uri = "/a" }).responded)
    assert.is_true(run(conf, { uri = "/a?x=1" }).responded)
    assert.is_false(run(conf, { uri = "/b" }).responded)
  end)

  it("refuses nothing in dry_run, and logs and counts what it would have refused", function()
    local conf = { rate = 1, dry_run = true, id = "dry" }
    run(conf)
    local res = run(conf)
    assert.is_false(res.responded)
    assert.is_true(res.ctx.rate_limited)
    assert.same({ "rate_limit: would refuse ip:192.0.2.1 (dry run)" }, T.log_lines("info"))
    assert.equal(1, T.metric("rate_limit_requests_total", { limit = "dry", result = "allowed" }))
    assert.equal(1, T.metric("rate_limit_requests_total", { limit = "dry", result = "dry_run" }))
  end)

  it("names its policy, and instances with the same id share counters", function()
    local conf = { rate = 1, id = "shared" }
    assert.is_false(T.run(rate_limit, conf, {}, nil).responded)
    local res = T.run_chain({ { rate_limit, conf } }, {})
    assert.is_true(res.responded)
    assert.equal('"shared";q=1;w=1', res.headers["RateLimit-Policy"])
  end)

  it("can leave the headers out, and answer with another status and message", function()
    local conf = { rate = 1, headers = false, status = 503, message = "slow down" }
    assert.is_nil(run(conf).headers["RateLimit"])
    local res = run(conf)
    assert.equal(503, res.status)
    assert.equal("slow down", res.body)
  end)

  it("rejects configs it cannot run, with the key path", function()
    assert.error_matches(function() run({ rate = 0 }) end, "rate", 1, true)
    assert.error_matches(function() run({ rate = 1, limit_by = "header" }) end,
      'limit_by = "header" needs `header`', 1, true)
    assert.error_matches(function() run({ rate = 1, policy = "memcached" }) end, "policy", 1, true)
    assert.error_matches(function() run({ rate = 1, dict = "missing" }) end,
      'no shared dict "missing": declare it in the config', 1, true)
  end)

  describe("with the redis policy", function()
    local srv
    before_each(function()
      srv = T.redis_server({ port = 6390 })
      rate_limit._forget_failures()
    end)
    after_each(function() srv:stop() end)

    it("runs one script per decision, EVAL once when Redis does not know it", function()
      local calls = {}
      local function answer(args)
        calls[#calls + 1] = args[1]
        assert.equal("1", args[3])
        assert.matches("^luaproxy:rl:.*|ip|ip:192.0.2.1$", args[4])
        assert.same({ "1000000", "1000000", "1" }, { args[5], args[6], args[7] })
        return { 1, 0, 0, 1000000 }
      end
      srv:on("EVAL", answer)
      local evalsha = 0
      srv:on("EVALSHA", function(args)
        evalsha = evalsha + 1
        assert.equal(rate_limit.REDIS_SCRIPT_SHA1, args[2])
        if evalsha == 1 then return T.redis.error("NOSCRIPT No matching script.") end
        return answer(args)
      end)
      local conf = { rate = 1, policy = "redis", redis = { port = 6390 } }
      assert.is_false(run(conf).responded)
      assert.is_false(run(conf).responded)
      assert.same({ "eval", "evalsha" }, calls)
      srv:on("EVALSHA", function() return { 0, 0, 2500000, 3000000 } end)
      local res = run(conf)
      assert.equal(429, res.status)
      assert.equal("3", res.headers["Retry-After"])
    end)

    it("falls back to local counting when Redis is down, and says so once per interval", function()
      srv:stop()
      local conf = { rate = 1, policy = "redis", redis = { port = 6390 }, log_interval = 10 }
      assert.is_false(run(conf).responded)
      assert.is_true(run(conf).responded)
      assert.equal(1, #T.log_lines("warn"))
      assert.equal("rate_limit: Redis 127.0.0.1:6390 failed (redis 127.0.0.1:6390: "
        .. "connection refused); fallback: local", T.log_lines("warn")[1])
    end)

    it("fails open or closed when configured to", function()
      srv:stop()
      local open = { rate = 1, policy = "redis", redis = { port = 6390 }, fallback = "allow" }
      for _ = 1, 3 do assert.is_false(run(open).responded) end
      local closed = { rate = 1, policy = "redis", redis = { port = 6390 }, fallback = "deny" }
      assert.equal(429, run(closed).status)
    end)

    it("lets the fallback decide for retry_interval after a failure, then asks Redis again", function()
      srv:stop()
      local conf = { rate = 100, burst = 5, policy = "redis", redis = { port = 6390 },
        retry_interval = 2 }
      assert.is_false(run(conf).responded) -- the local fallback counts
      srv = T.redis_server({ port = 6390 })
      local asked = 0
      srv:on("EVALSHA", function()
        asked = asked + 1
        return { 0, 0, 1000000, 1000000 }
      end)
      assert.is_false(run(conf).responded) -- still the fallback: Redis not asked
      assert.equal(0, asked)
      T.advance(2)
      assert.equal(429, run(conf).status) -- Redis decides again
      assert.equal(1, asked)
      assert.equal(1, #T.log_lines("warn"))
    end)
  end)

  it("keeps its Redis script's SHA-1 in step with the script", function()
    local f = assert(io.popen("printf '%s' " .. ("'" .. rate_limit.REDIS_SCRIPT:gsub("'", "'\\''") .. "'")
      .. " | sha1sum"))
    local sum = f:read("*l"):match("^(%x+)")
    f:close()
    assert.equal(sum, rate_limit.REDIS_SCRIPT_SHA1)
  end)
end)
