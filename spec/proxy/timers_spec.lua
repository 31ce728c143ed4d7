-- proxy.timer and proxy.spawn in the proxy.test double: on the fake clock, with the
-- engine's argument checks, bounds, cancel and premature semantics.
local T = require "proxy.test"

describe("proxy.test timers", function()
  before_each(function() T.reset() end)

  it("runs a timer once its time comes, with its arguments", function()
    local got
    assert.truthy(proxy.timer.at(5, function(premature, a, b) got = { premature, a, b } end,
      "x", 2))
    T.advance(4.9)
    assert.is_nil(got)
    T.advance(0.1)
    assert.same({ false, "x", 2 }, got)
    assert.equal(0, proxy.timer.pending_count())
  end)

  it("runs every timers at their interval, in time order with others", function()
    local seen = {}
    proxy.timer.every(1, function() seen[#seen + 1] = "every@" .. (T.now() % 100) end)
    proxy.timer.at(1.5, function() seen[#seen + 1] = "at@" .. (T.now() % 100) end)
    T.advance(3)
    assert.same({ "every@1", "at@1.5", "every@2", "every@3" }, seen)
  end)

  it("cancels pending timers; a started one-shot is not pending", function()
    local n = 0
    local h = proxy.timer.at(1, function() n = n + 1 end)
    assert.is_true(h:cancel())
    assert.same({ nil, "not pending" }, { h:cancel() })
    local e = proxy.timer.every(1, function() n = n + 10 end)
    T.advance(2)
    assert.is_true(e:cancel())
    T.advance(5)
    assert.equal(20, n)
  end)

  it("timers may sleep, and their failures are logged, not raised", function()
    local after
    proxy.timer.at(0, function() proxy.sleep(2); after = true end)
    proxy.timer.at(0, function() error("boom") end)
    T.advance(0)
    assert.is_true(after)
    assert.matches("timer failed: .*boom", T.log_lines("err")[1])
  end)

  it("refuses timers over the bound with an error", function()
    T.max_timers = 2
    assert.truthy(proxy.timer.at(1, function() end))
    assert.truthy(proxy.timer.at(1, function() end))
    assert.same({ nil, "too many pending timers (lua.max_timers)" },
      { proxy.timer.at(1, function() end) })
    T.max_timers = 1024
  end)

  it("runs pending timers premature when the generation ends, then refuses new ones", function()
    local got
    proxy.timer.at(3600, function(premature) got = premature end)
    T.end_generation()
    assert.is_true(got)
    assert.is_true(proxy.exiting())
    assert.same({ nil, "process exiting" }, { proxy.timer.at(1, function() end) })
  end)

  it("runs spawned threads after the phase that spawned them", function()
    local order = {}
    T.call(function()
      proxy.spawn(function(x) order[#order + 1] = "thread " .. x end, 1)
      order[#order + 1] = "phase"
    end)
    assert.same({ "phase", "thread 1" }, order)
  end)

  it("checks arguments like the engine", function()
    assert.has_error(function() proxy.timer.at(-1, function() end) end)
    assert.has_error(function() proxy.timer.at(1, "nope") end)
    assert.has_error(function() proxy.timer.every(0, function() end) end)
    assert.has_error(function() proxy.spawn(42) end)
  end)
end)
