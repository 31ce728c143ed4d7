-- proxy.metrics (lua/luaproxy/metrics.lua) through the proxy.test double, which runs the
-- engine's own API code over Lua tables: declarations in init_worker, name and label
-- rules, updates by label values, histogram buckets, the overflow series.
local T = require "proxy.test"
local proxy = require "proxy"

local function plugin(init, request)
  return { name = "m", priority = 1, schema = { fields = {} }, init_worker = init,
           request = request }
end

describe("proxy.metrics", function()
  before_each(function() T.reset() end)

  it("counts by label values and reads them back", function()
    local hits
    local p = plugin(function()
      hits = proxy.metrics.counter("app_hits_total", "Hits.", { "kind", "code" })
    end, function(req)
      hits:inc(1, req:header("x-kind"), 200)
      hits:inc(2.5, "other", "500")
    end)
    T.run(p, {}, { headers = { ["X-Kind"] = "a" } })
    T.run(p, {}, { headers = { ["X-Kind"] = "a" } })
    assert.equal(2, T.metric("app_hits_total", { kind = "a", code = 200 }))
    assert.equal(5, T.metric("app_hits_total", { kind = "other", code = "500" }))
    assert.equal(0, T.metric("app_hits_total", { kind = "b", code = "200" }))
  end)

  it("has gauges and histograms with cumulative buckets", function()
    local g, h
    local p = plugin(function()
      g = proxy.metrics.gauge("app_level", "Level.")
      h = proxy.metrics.histogram("app_size", "Sizes.", { "route" }, { 1, 10, 100 })
    end, function()
      g:set(10)
      g:inc(2)
      g:dec()
      for _, v in ipairs({ 0.5, 1, 5, 50, 500 }) do h:observe(v, "r") end
    end)
    T.run(p)
    assert.equal(11, T.metric("app_level"))
    local got = T.metric("app_size", { route = "r" })
    assert.equal(5, got.count)
    assert.equal(556.5, got.sum)
    assert.same({ [1] = 2, [10] = 3, [100] = 4, [math.huge] = 5 }, got.buckets)
  end)

  it("creates metrics in init_worker only and updates them outside it", function()
    local err = select(2, pcall(proxy.metrics.counter, "app_x_total", "X."))
    assert.matches("metrics are created in init_worker", err)
    local c
    local p = plugin(function()
      c = proxy.metrics.counter("app_y_total", "Y.")
      c:inc()
    end, function() end)
    local ok, e = pcall(T.run, p)
    assert.is_false(ok)
    assert.matches("updated in init_worker", tostring(e))
  end)

  it("refuses bad names, labels, buckets and values", function()
    local errs = {}
    local p = plugin(function()
      for _, f in ipairs({
        function() proxy.metrics.counter("9bad_total", "") end,
        function() proxy.metrics.counter("app_no_suffix", "") end,
        function() proxy.metrics.counter("luaproxy_mine_total", "") end,
        function() proxy.metrics.gauge("app_g_total", "") end,
        function() proxy.metrics.gauge("app_g", "", { "bad-label" }) end,
        function() proxy.metrics.gauge("app_g", "", { "__x" }) end,
        function() proxy.metrics.gauge("app_g", "", { "a", "a" }) end,
        function() proxy.metrics.histogram("app_h", "", { "le" }) end,
        function() proxy.metrics.histogram("app_h", "", {}, { 2, 1 }) end,
        function() proxy.metrics.gauge("app_g", 7) end,
      }) do
        local ok, e = pcall(f)
        errs[#errs + 1] = not ok and tostring(e) or "accepted"
      end
    end, function() end)
    T.run(p)
    for i, e in ipairs(errs) do
      assert.is_not.equal("accepted", e, "case " .. i)
    end
    assert.matches("invalid metric name", errs[1])
    assert.matches("ends in _total", errs[2])
    assert.matches("luaproxy_ prefix", errs[3])
    assert.matches("invalid label name", errs[5])
    assert.matches("increasing", errs[9])
  end)

  it("checks updates: label count, negative counter steps", function()
    local c
    local p = plugin(function()
      c = proxy.metrics.counter("app_z_total", "Z.", { "a", "b" })
    end, function(req)
      local ok1, e1 = pcall(c.inc, c, 1, "only-one")
      local ok2, e2 = pcall(c.inc, c, -1, "x", "y")
      req.ctx.e1, req.ctx.e2 = not ok1 and e1, not ok2 and e2
    end)
    local r = T.run(p)
    assert.matches("expected 2 label values", r.ctx.e1)
    assert.matches(">= 0", r.ctx.e2)
  end)

  it("sends label sets past max_series to the overflow series, counted", function()
    T.metrics_max_series = 2
    local c
    local p = plugin(function()
      c = proxy.metrics.counter("app_o_total", "O.", { "k" })
    end, function()
      for _, k in ipairs({ "a", "b", "c", "d", "a" }) do c:inc(1, k) end
    end)
    T.run(p)
    assert.equal(2, T.metric("app_o_total", { k = "a" }))
    assert.equal(1, T.metric("app_o_total", { k = "b" }))
    assert.equal(0, T.metric("app_o_total", { k = "c" }))
    assert.equal(2, T.metric_overflow("app_o_total"))
  end)

  it("finds a metric declared again (a reload) and refuses another declaration", function()
    local a, b
    local p = plugin(function()
      a = proxy.metrics.counter("app_r_total", "R.", { "k" })
      b = proxy.metrics.counter("app_r_total", "R.", { "k" })
      local ok, e = pcall(proxy.metrics.counter, "app_r_total", "R.", { "other" })
      assert(not ok and e:find("already declared"), e)
    end, function()
      a:inc(1, "x")
      b:inc(1, "x")
    end)
    T.run(p)
    assert.equal(2, T.metric("app_r_total", { k = "x" }))
  end)
end)
