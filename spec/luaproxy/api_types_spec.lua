-- The proxy.test double against the LuaLS annotations (lua/types/proxy_test.lua and
-- proxy.lua): the double's helpers are annotated, it offers every annotated request method,
-- and its fake `proxy` module has the engine's functions (the engine's side is
-- tests/integration/test_api_types.py).
local T = require "proxy.test"
local api = require "luaproxy.tools.api"

local TYPES = { "lua/types/proxy.lua", "lua/types/proxy_test.lua" }

describe("annotations and the proxy.test double", function()
  local A = api.parse(TYPES)

  it("annotate every helper of proxy.test, and no helper it lacks", function()
    local runtime = api.walk({ { "proxy.test", T } })
    local missing, stale = api.diff(runtime, api.annotated(A, { ["proxy.test"] = true }))
    assert.same({}, missing)
    assert.same({}, stale)
    assert.truthy(#runtime > 20)
  end)

  it("the double's request has the annotated methods and its own helpers", function()
    local runtime = api.walk({ { "proxy.test.Request", T.request({}) } })
    local want = {}
    for m in pairs(api.functions_of(A, "proxy.test.Request")) do
      want[#want + 1] = "proxy.test.Request." .. m
    end
    table.sort(want)
    local missing, stale = api.diff(runtime, want)
    assert.same({}, missing)
    assert.same({}, stale)
  end)

  it("the fake proxy module has the engine's functions", function()
    -- proxy.router's fields are made on first use (an __index function): name them.
    local fake = setmetatable({ router = { new = T.proxy.router.new } }, { __index = T.proxy })
    local mods = { log = "proxy.log", json = "proxy.json", timer = "proxy.timer",
      http = "proxy.http", redis = "proxy.redis", re = "proxy.re", router = "proxy.router",
      metrics = "proxy.metrics" }
    local only = { proxy = true }
    for _, c in pairs(mods) do only[c] = true end
    local runtime = api.walk({ { "proxy", fake, mods } })
    local missing, stale = api.diff(runtime, api.annotated(A, only))
    assert.same({}, missing)
    assert.same({}, stale)
  end)

  it("parse refuses a function on a table no class names", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write("---@class a.B\nlocal B = {}\nfunction B:x() end\nfunction C.y() end\n")
    f:close()
    local ok, err = pcall(api.parse, { path })
    os.remove(path)
    assert.is_false(ok)
    assert.matches(":4: function on C", err)
  end)
end)
