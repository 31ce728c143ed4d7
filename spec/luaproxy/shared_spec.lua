-- lua/luaproxy/shared.lua over the real store (engine/shdict.c), loaded into LuaJIT as the
-- library lp_shdict_ffi (built with the project; ctest passes its path in LP_SHDICT_LIB).
-- The same cases as the proxy.test double (shared_dict_cases.lua), on an injected clock.
local ffi = require "ffi"
local lib = os.getenv("LP_SHDICT_LIB")

describe("proxy.shared over the engine's store", function()
  it("finds the store library (LP_SHDICT_LIB, set by ctest: build/spec/liblp_shdict_ffi.so)",
     function()
    assert.is_string(lib, "LP_SHDICT_LIB is not set: run through ctest, or set it to "
      .. "build/spec/liblp_shdict_ffi.so")
  end)
  if not lib then return end

  ffi.load(lib, true) -- global: ffi.C finds the lp_ffi_shdict_* functions, as in the engine
  local shared = require "luaproxy.shared"
  ffi.cdef [[
    void *lp_shdict_new(const char *name, size_t capacity);
    void lp_shdict_free(void *d);
    void *lp_shdict_acquire(const char *name, size_t capacity);
    void lp_shdict_release(void *d);
    void lp_shdict_set_clock(double (*now)(void));
  ]]
  local C = ffi.C
  -- The store calls this clock back: no JIT trace may contain those calls.
  jit.off()
  local now = 1000
  local clock = ffi.cast("double (*)(void)", function() return now end)
  C.lp_shdict_set_clock(clock)

  local made = {}
  after_each(function()
    for _, d in ipairs(made) do C.lp_shdict_free(d) end
    made = {}
  end)

  describe("behaves as documented", function()
    local cases = dofile("spec/luaproxy/shared_dict_cases.lua")
    cases(it, assert, function(name, capacity)
      local d = C.lp_shdict_new(name, capacity)
      made[#made + 1] = d
      return setmetatable({ _d = d, name = name }, shared.Dict)
    end, function(seconds) now = now + seconds end)
  end)

  it("proxy.shared.NAME finds declared dicts in the registry, and only those", function()
    local d = C.lp_shdict_acquire("spec_reg", 65536)
    shared.declare({ spec_reg = 65536, missing = 65536 })
    local dict = shared.dicts.spec_reg
    assert.is_table(dict)
    assert.equal(dict, shared.dicts.spec_reg) -- made once per VM
    assert.is_true(dict:set("k", "v"))
    assert.equal("v", dict:get("k"))
    assert.is_nil(shared.dicts.missing) -- declared but not in the registry
    assert.is_nil(shared.dicts.other)   -- not declared
    C.lp_shdict_release(d)
  end)
end)
