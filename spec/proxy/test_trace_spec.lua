-- Trace context: the `tracing` config section (lua/luaproxy/config_schema.lua) and the
-- proxy.test double's req:trace_id() and friends (lua/proxy/test.lua), which mirror the
-- engine's (engine/trace.c, docs/tracing.md).
local config = require "luaproxy.config"
local T = require "proxy.test"

local TRACE, PARENT = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"

local function base(tracing)
  return {
    listen = { { address = "127.0.0.1:8080" } },
    upstreams = { app = { targets = { "127.0.0.1:9001" } } },
    routes = { { upstream = "app" } },
    tracing = tracing,
  }
end

describe("tracing config", function()
  it("is on by default, trusting incoming context, without export", function()
    local c = assert(config.check(base()))
    assert.is_true(c.tracing.enabled)
    assert.is_true(c.tracing.accept)
    assert.equal(1, c.tracing.sample)
    assert.is_nil(c.tracing.export)
  end)

  it("fills the export defaults", function()
    local c = assert(config.check(base({ export = { endpoint = "http://127.0.0.1:4318/v1/traces" } })))
    local e = c.tracing.export
    assert.same({ 512, 1, 4096, 2, "luaproxy" },
                { e.batch_size, e.interval, e.max_queue, e.timeout, e.service_name })
    assert.truthy(config.check(base({ export = { endpoint = "http://collector.local" } })))
  end)

  it("refuses what it cannot use", function()
    for _, case in ipairs({
      { { sample = 1.5 }, "tracing.sample" },
      { { export = { endpoint = "https://127.0.0.1:4318/v1/traces" } }, "tracing.export.endpoint" },
      { { export = { endpoint = "127.0.0.1:4318" } }, "tracing.export.endpoint" },
      { { export = {} }, "tracing.export.endpoint" },
      { { export = { endpoint = "http://127.0.0.1:4318", batch_size = 0 } },
        "tracing.export.batch_size" },
    }) do
      local ok, err = config.check(base(case[1]))
      assert.is_nil(ok)
      assert.truthy(err:find(case[2], 1, true), err)
    end
  end)
end)

describe("proxy.test trace context", function()
  it("continues a valid version-00 traceparent", function()
    local r = T.request { headers = { traceparent = "00-" .. TRACE .. "-" .. PARENT .. "-00" } }
    assert.equal(TRACE, r:trace_id())
    assert.equal(PARENT, r:parent_span_id())
    assert.is_false(r:trace_sampled())
    assert.matches("^%x+$", r:span_id())
    assert.equal(16, #r:span_id())
    assert.not_equal(PARENT, r:span_id())
  end)

  it("starts a trace for an absent or invalid traceparent", function()
    for _, tp in ipairs({ false, "00-" .. TRACE:upper() .. "-" .. PARENT .. "-01",
                          "00-" .. ("0"):rep(32) .. "-" .. PARENT .. "-01",
                          "00-" .. TRACE .. "-" .. PARENT .. "-01-x" }) do
      local r = T.request { headers = tp and { traceparent = tp } or nil }
      assert.equal(32, #r:trace_id())
      assert.not_equal(TRACE, r:trace_id())
      assert.is_nil(r:parent_span_id())
      assert.is_true(r:trace_sampled())
    end
  end)

  it("takes given ids, or none (tracing off)", function()
    local r = T.request { trace = { trace_id = TRACE, span_id = PARENT, sampled = true } }
    assert.same({ TRACE, PARENT, true }, { r:trace_id(), r:span_id(), r:trace_sampled() })
    r = T.request { trace = false }
    assert.is_nil(r:trace_id())
    assert.is_nil(r:span_id())
    assert.is_nil(r:parent_span_id())
    assert.is_nil(r:trace_sampled())
  end)

  it("answers in every phase", function()
    local seen = {}
    local P = { name = "t", priority = 1 }
    for _, ph in ipairs({ "request", "upstream", "response", "log" }) do
      P[ph] = function(req) seen[ph] = req:trace_id() end
    end
    T.run(P, {}, { trace = { trace_id = TRACE, span_id = PARENT, sampled = true } })
    assert.same({ request = TRACE, upstream = TRACE, response = TRACE, log = TRACE }, seen)
  end)
end)
