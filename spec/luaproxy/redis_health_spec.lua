-- luaproxy.redis_health: a Redis that failed is skipped for retry_interval and logged once
-- per log_interval (rate_limit's and the cache's L2 tier's shared rule).
local T = require "proxy.test"
local redis_health = require "luaproxy.redis_health"
local redis = require "luaproxy.redis"

describe("luaproxy.redis_health", function()
  before_each(function() T.reset() end)

  it("skips a failed Redis for retry_interval, then asks it again", function()
    local h = redis_health.new("t: Redis %s failed (%s)")
    local k = redis_health.down_key({ host = "h", port = 1 })
    assert.is_false(h:skip(k))
    h:failed(k, "h:1", "refused", 2, 60)
    assert.is_true(h:skip(k))
    T.advance(1.5)
    assert.is_true(h:skip(k))
    T.advance(1)
    assert.is_false(h:skip(k)) -- past it: this one asks Redis
    assert.is_false(h:skip(k))
  end)

  it("logs once per log_interval per address, whichever entries fail", function()
    local h = redis_health.new("t: Redis %s failed (%s); fallback: %s")
    local a = redis_health.down_key({ host = "h", port = 1, db = 0 })
    local b = redis_health.down_key({ host = "h", port = 1, db = 2 })
    h:failed(a, "h:1", "timeout", 1, 10, "local")
    h:failed(b, "h:1", "timeout", 1, 10, "deny")
    h:failed(a, "h:1", "timeout", 1, 10, "local")
    assert.same({ "t: Redis h:1 failed (timeout); fallback: local" }, T.log_lines("warn"))
    T.advance(10)
    h:failed(b, "h:1", nil, 1, 10, "deny")
    assert.equal("t: Redis h:1 failed (nil); fallback: deny", T.log_lines("warn")[2])
  end)

  it("keeps failures apart by database and credentials, and per tracker", function()
    local h1, h2 = redis_health.new("one %s %s"), redis_health.new("two %s %s")
    local right = redis_health.down_key({ host = "h", port = 1, password = "right" })
    local wrong = redis_health.down_key({ host = "h", port = 1, password = "wrong" })
    assert.are_not.equal(right, wrong)
    h1:failed(wrong, "h:1", "WRONGPASS", 5, 60)
    assert.is_true(h1:skip(wrong))
    assert.is_false(h1:skip(right))
    assert.is_false(h2:skip(wrong)) -- another plugin's view is its own
    h1:forget()
    assert.is_false(h1:skip(wrong))
  end)

  it("builds both plugins' redis records from one helper", function()
    local rec = redis.schema_record { description = "d", timeout = 7, timeout_description = "t",
      prefix = "p:", prefix_description = "pd" }
    assert.equal("record", rec.type)
    assert.equal(7, rec.fields.timeout.default)
    assert.equal("p:", rec.fields.prefix.default)
    assert.is_true(rec.fields.password.secret)
    local rl = require("rate_limit").schema.fields.redis
    local l2 = require("cache").schema.fields.l2.fields.redis
    assert.equal(100, rl.fields.timeout.default)
    assert.equal(50, l2.fields.timeout.default)
    for name in pairs(rec.fields) do
      assert.is_table(rl.fields[name], name)
      assert.is_table(l2.fields[name], name)
    end
    assert.same({ host = "h", port = 2, password = "x", user = "u", db = 3, timeout = 4,
      pool_size = 5 }, redis.connect_opts { host = "h", port = 2, password = "x", user = "u",
      db = 3, timeout = 4, pool_size = 5, prefix = "ignored" })
  end)
end)
