local admin = require "luaproxy.admin"
local cjson = require "cjson"

local function config_json(text)
  local cfg = assert(loadstring(text))()
  local ok, out = pcall(admin.config_json, "/etc/luaproxy/test.lua", cfg)
  assert(ok, out)
  return cjson.decode(out), out
end

describe("luaproxy.admin", function()
  it("keeps empty tables (as {}: lua-cjson cannot tell an empty list)", function()
    local j = config_json("return { plugins = {}, x = { a = {} }, workers = 1 }")
    assert.same({}, j.config.plugins)
    assert.same({ a = {} }, j.config.x)
    assert.equal(1, j.config.workers)
  end)

  it("redacts secrets at any depth and names functions", function()
    local j, raw = config_json([[return { upstreams = { a = { password = "hunter2",
      tls = { key = "k.pem", ca = "ca.pem" } } }, routes = { { handler = function() end } } }]])
    assert.equal("<redacted>", j.config.upstreams.a.password)
    assert.equal("<redacted>", j.config.upstreams.a.tls.key)
    assert.equal("ca.pem", j.config.upstreams.a.tls.ca)
    assert.equal("<function>", j.config.routes[1].handler)
    assert.is_nil(raw:find("hunter2", 1, true))
  end)
end)
