-- proxy.test's shared dicts (lua/proxy/test_shared.lua): the same behaviour as the engine's
-- (shared_dict_cases.lua), on the double's fake clock, declared by T.shared_dicts.
local T = require "proxy.test"
local cases = dofile("spec/luaproxy/shared_dict_cases.lua")

describe("proxy.test shared dicts", function()
  before_each(function() T.reset() end)

  describe("behave as the engine's", function()
    cases(it, assert, function(name, capacity)
      T.shared_dicts({ [name] = capacity })
      return proxy.shared[name]
    end, T.advance)
  end)

  it("are declared with sizes as the config's, others are nil", function()
    T.shared_dicts({ limits = "10m", small = "8k" })
    assert.equal(10 * 1048576, proxy.shared.limits:capacity())
    assert.equal(8192, proxy.shared.small:capacity())
    assert.is_nil(proxy.shared.other)
    assert.has_error(function() T.shared_dicts({ tiny = "1k" }) end)
  end)

  it("are emptied by T.reset, the same objects a plugin may hold", function()
    T.shared_dicts({ d = "1m" })
    local d = proxy.shared.d
    d:set("k", 1)
    T.reset()
    assert.equal(d, proxy.shared.d)
    assert.is_nil(d:get("k"))
  end)

  it("are shared by the phases of a plugin run through T.run", function()
    T.shared_dicts({ hits = "1m" })
    local plugin = {
      name = "counter", priority = 1, schema = { fields = {} },
      request = function(req)
        local n = proxy.shared.hits:incr(req:path(), 1, 0)
        req:set_header("X-Hits", tostring(n))
      end,
    }
    for i = 1, 3 do
      local res = T.run(plugin, {}, { uri = "/a" })
      assert.equal(tostring(i), res.request_headers["X-Hits"])
    end
    assert.equal(3, proxy.shared.hits:get("/a"))
  end)
end)
