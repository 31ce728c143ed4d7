-- Microbench of proxy.re (lua/luaproxy/re.lua) against string.find, per call, in one
-- LuaJIT VM: run `luajit bench/re_micro.lua` from the repository root (PCRE2 loaded by
-- name, as under busted; the engine calls the same functions through ffi.C). Not a test:
-- it prints nanoseconds per call and asserts nothing.
package.path = "lua/?.lua;" .. package.path
local re = require "luaproxy.re"
local clock = os.clock
local N = tonumber(arg[1]) or 2000000

local path = "/users/12345/orders/678"
local cases = {
  { "string.find, anchored, 2 captures", function()
      return string.find(path, "^/users/(%d+)/orders/(%d+)$") end },
  { "proxy.re.find (no table)", function()
      return re.find(path, [[^/users/(\d+)/orders/(\d+)$]], "jo") end },
  { "proxy.re.match, 2 named captures", function()
      return re.match(path, [[^/users/(?<u>\d+)/orders/(?<o>\d+)$]], "jo") end },
  { "proxy.re.match with res_table", (function()
      local res = {}
      return function() return re.match(path, [[^/users/(\d+)/orders/(\d+)$]], "jo", nil, res) end
    end)() },
  { "proxy.re.find, no match", function()
      return re.find(path, [[^/admin/]], "jo") end },
  { "proxy.re.gsub, 2 matches, template", function()
      return re.gsub(path, [[\d+]], "<$0>", "jo") end },
}

print(string.format("PCRE2 through %s, JIT %s, %d calls each", re.library, tostring(re.jit_available), N))
for _, c in ipairs(cases) do
  local name, fn = c[1], c[2]
  for _ = 1, N / 10 do fn() end -- warm up (traces)
  local t0 = clock()
  for _ = 1, N do fn() end
  print(string.format("%-40s %7.1f ns/call", name, (clock() - t0) / N * 1e9))
end
