-- The cache's field order is written three times: engine/lua_api.h LP_FFI_CACHE_FIELDS (the
-- engine's lp_ffi_cache_fields bits), lua/luaproxy/ffi.lua CACHE_FIELDS (the plugin's reading
-- of them) and engine/cache_req.h's LP_CF_* enum (lp__cache_field_index's results, which
-- engine/cache_native.c's F_* bits name). They must not drift.
local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function c_fields()
  local h = read("engine/lua_api.h")
  local body = assert(h:match("#define LP_FFI_CACHE_FIELDS(.-)\nint "), "LP_FFI_CACHE_FIELDS")
  local names = {}
  for n in body:gmatch('"([^"]+)"') do names[#names + 1] = n end
  return names
end

-- engine/cache_req.h's LP_CF_* enum: name -> index (its order), as lower-case field names.
local function enum_fields()
  local h = read("engine/cache_req.h")
  local body = assert(h:match("enum {\n    LP_CF_CACHE_CONTROL(.-)LP_CF_N"), "LP_CF_ enum")
  local idx, i = { ["cache-control"] = 0 }, 1
  for name in body:gmatch("LP_CF_([A-Z_]+)") do
    idx[name:lower():gsub("_", "-")] = i
    i = i + 1
  end
  return idx
end

local function native_bits()
  local c = read("engine/cache_native.c")
  local idx = enum_fields()
  local bits = {}
  for name, cf in c:gmatch("#define F_([A-Z_]+)%s+F_BIT%(LP_CF_([A-Z_]+)%)") do
    assert.equal(name, cf, "F_" .. name .. " is LP_CF_" .. name .. "'s bit")
    bits[name:lower():gsub("_", "-")] = assert(idx[cf:lower():gsub("_", "-")], cf)
  end
  return bits, c
end

describe("cache field order", function()
  it("ffi.lua's CACHE_FIELDS is the engine's LP_FFI_CACHE_FIELDS", function()
    local ffi_src = read("lua/luaproxy/ffi.lua")
    local body = assert(ffi_src:match("CACHE_FIELDS = (%b{})"))
    local names = {}
    for n in body:gmatch('"([^"]+)"') do names[#names + 1] = n end
    assert.same(c_fields(), names)
  end)

  it("cache_req.h's LP_CF_* enum, and cache_native.c's bits, name the fields at their index", function()
    local fields = c_fields()
    local n = 0
    for name, i in pairs(enum_fields()) do
      assert.equal(name, fields[i + 1], "LP_CF_" .. name)
      n = n + 1
    end
    assert.equal(#fields, n)
  end)

  it("cache_native.c's bits name the fields at their index", function()
    local fields = c_fields()
    local bits = native_bits()
    local n = 0
    for name, i in pairs(bits) do
      assert.equal(name, fields[i + 1], "F_" .. name)
      n = n + 1
    end
    assert.is_true(n >= 11)
  end)

  it("SHAPE_OTHER names only fields with a bit", function()
    local bits, c = native_bits()
    local body = assert(c:match("#define SHAPE_OTHER(.-)\n\n"))
    local n = 0
    for name in body:gmatch("F_([A-Z_]+)") do
      assert.is_not_nil(bits[name:lower():gsub("_", "-")], name)
      n = n + 1
    end
    assert.is_true(n >= 7)
  end)

  -- cache_native.c replays the plugin's decision for responses with the same status, shape
  -- (validators or not) and Cache-Control value: what the policy reads of a response of the
  -- replayed shape must be among those, the Date (whose value the plugin reports) and the
  -- fields SHAPE_OTHER sends to the plugin. A new field the policy reads fails this test
  -- until SHAPE_OTHER (or the replay) names it.
  it("the policy reads only what the engine's replay keys on or leaves to the plugin", function()
    local P = require "luaproxy.cache.policy"
    local _, c = native_bits()
    local allowed = { ["cache-control"] = true, date = true, etag = true, ["last-modified"] = true }
    for name in assert(c:match("#define SHAPE_OTHER(.-)\n\n")):gmatch("F_([A-Z_]+)") do
      allowed[(name:lower():gsub("_", "-"))] = true
    end
    local seen = {}
    local function recording(h)
      return setmetatable({}, { __index = function(_, k)
        seen[k] = true
        return h[k]
      end })
    end
    local now = 1700000000
    local optss = {
      {}, { shared = false }, { cache_set_cookie = "strip" }, { default_ttl = { [200] = 600 } },
      { stale_while_revalidate = 30, stale_if_error = 60 }, { statuses = { 200, 404 } },
    }
    local ccs = { false, "max-age=300", "no-store", "private", "no-cache", 'no-cache="x"',
      "public, s-maxage=120, stale-while-revalidate=30", "max-age=0, must-revalidate",
      "proxy-revalidate, max-age=5", "stale-if-error=10, max-age=1", 'private="y", max-age=9' }
    local n = 0
    for _, opts in ipairs(optss) do
      for _, status in ipairs { 200, 203, 204, 301, 404, 500 } do
        for _, cc in ipairs(ccs) do
          for _, v in ipairs { {}, { etag = '"e"' }, { ["last-modified"] = P.http_date(now - 99) } } do
            local h = { date = P.http_date(now - 1), ["cache-control"] = cc or nil }
            for k, x in pairs(v) do h[k] = x end
            local rsh = recording(h)
            local ok = P.storable("GET", status, {}, rsh, opts)
            local meta = P.meta(status, rsh, now - 2, now, opts)
            P.current_age(meta, now + 1)
            P.stores_all_fields(rsh, opts)
            n = n + (ok and 1 or 0)
          end
        end
      end
    end
    assert.is_true(n > 0)
    for k in pairs(seen) do
      assert.is_true(allowed[k] ~= nil, "the policy reads " .. k .. ", which SHAPE_OTHER does not name")
    end
    assert.is_true(seen["cache-control"] and seen.date and seen.etag and true or false)
  end)
end)

