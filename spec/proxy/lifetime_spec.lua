-- The test double ends a request the way the engine does: a handle kept past its request
-- raises, a response_body filter may not wait, and req:var() gives exactly one value.
local T = require "proxy.test"
local phases = require "luaproxy.phases"

describe("proxy.test request lifetime", function()
  before_each(function() T.reset() end)

  it("raises on a handle used after its request ended", function()
    local saved
    local plugin = { name = "keeper", priority = 1, schema = { fields = {} },
      request = function(req) saved = req end }
    T.run(plugin, {}, { headers = { ["X-Secret"] = "a" } })
    for _, call in ipairs({
      function() return saved:header("x-secret") end,
      function() return saved:phase() end,
      function() return saved:var("host") end,
      function() saved:set_phase("request") end,
    }) do
      local ok, err = pcall(call)
      assert.is_false(ok)
      assert.matches("request handle used after the request ended", err, 1, true)
    end
  end)

  it("ends a request by hand with T.finish", function()
    local req = T.request({ uri = "/x" })
    assert.equal("/x", req:path())
    T.finish(req)
    assert.has_error(function() req:path() end, phases.ENDED)
  end)

  it("refuses a wait inside the plugin's own coroutine, like the engine", function()
    local plugin = { name = "cowrap", priority = 1, schema = { fields = {} },
      request = function(req)
        coroutine.wrap(function() proxy.sleep(1) end)()
      end }
    local ok, err = pcall(T.run, plugin, {}, {})
    assert.is_false(ok)
    assert.matches("coroutine of your own", err, 1, true)
  end)

  it("lets a response_body filter wait, like the engine", function()
    local plugin = { name = "sleepy", priority = 1, schema = { fields = {} },
      response_body = function(req, chunk)
        local t0 = proxy.now()
        proxy.sleep(0.1)
        return chunk and chunk:upper() .. (proxy.now() - t0 > 0.09 and "" or "?")
      end }
    local res = T.run(plugin, {}, {}, { body = "x" })
    assert.equal("X", res.body)
  end)

  it("refuses a body limit that is not a finite size", function()
    local req = T.request({ body = "abc" })
    assert.has_error(function() req:body(math.huge) end)
    assert.has_error(function() req:body(0 / 0) end)
    assert.equal("abc", req:body(10))
  end)
end)

describe("proxy.test API errors and variables", function()
  before_each(function() T.reset() end)

  it("names the plugin's file when the misuse is a tail call", function()
    local plugin = { name = "tail", priority = 1, schema = { fields = {} },
      request = function(req) return req:respond(100, "x") end }
    local ok, err = pcall(T.run, plugin, {}, {})
    assert.is_false(ok)
    assert.matches("lifetime_spec.lua:%d+: req:respond%(%)", err)
    plugin.request = function(req) req:respond(100, "x") end
    ok, err = pcall(T.run, plugin, {}, {})
    assert.is_false(ok)
    assert.matches("lifetime_spec.lua:%d+: req:respond%(%)", err)
  end)

  it("gives exactly one value for every variable in every phase", function()
    local seen = {}
    local plugin = { name = "vars", priority = 1, schema = { fields = {} } }
    for _, phase in ipairs(phases.order) do
      local function probe(req, a, b)
        for _, name in ipairs(phases.vars) do
          local n = select("#", req:var(name))
          assert.equal(1, n, phase .. ": req:var(" .. name .. ")")
          local v = req:var(name)
          assert.is_true(v == nil or type(v) == "string", phase .. ": " .. name)
          tostring(req:var(name))
        end
        seen[phase] = true
        if phase == "response_body" then return a end
      end
      plugin[phase] = probe
    end
    T.run(plugin, {}, {}, { body = "x" })
    for _, phase in ipairs(phases.order) do assert.is_true(seen[phase], phase) end
  end)
end)
