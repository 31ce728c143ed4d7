-- The config's `shared` table (lua/luaproxy/config_schema.lua): sizes as bytes or with a
-- unit, a minimum, names usable as proxy.shared.NAME.
local config = require "luaproxy.config"

local function check(shared)
  return config.check({
    listen = { { address = "127.0.0.1:8080" } },
    upstreams = { app = { targets = { "127.0.0.1:9001" } } },
    routes = { { upstream = "app" } },
    shared = shared,
  })
end

describe("config shared", function()
  it("takes sizes in bytes or with k, m, g", function()
    local c = assert(check({ a = 8192, b = "64k", c = "10m", d = "1G", e = "9000" }))
    assert.same({ a = 8192, b = 65536, c = 10485760, d = 1073741824, e = 9000 }, c.shared)
  end)

  it("defaults to no dicts", function()
    assert.same({}, assert(check(nil)).shared)
  end)

  it("refuses malformed and too small sizes, and names Lua cannot index with a dot", function()
    local _, err = check({ a = "10x" })
    assert.matches('shared.a: expected a size %(bytes, or "64k", "10m", "1g"%), got "10x"', err)
    _, err = check({ a = "4k" })
    assert.matches("shared.a: 4096 bytes is below the minimum of 8k", err, nil, true)
    _, err = check({ a = 8192.5 })
    assert.matches("shared.a: expected a size", err, nil, true)
    _, err = check({ ["my-dict"] = "1m" })
    assert.matches("shared.my-dict", err, nil, true)
  end)
end)
