-- @detectSQLi's first question in C (engine/waf_detect.c, through lp_native) against its Lua
-- twin (luaproxy/waf/detect.lua's written_may): the same answer over the corpora's values
-- (decoded too) and over random strings of the bytes it looks at.
require "luaproxy.ffi"
local N = require "luaproxy.native"
local D = require "luaproxy.waf.detect"
local T = require "luaproxy.waf.transforms"

local PIECES = { "(", ";", "@", "union", "UNION", "SeLeCt", "waitfor", "null", "TRUE", "False",
                 "nullx", " ", "\t", "\160", "\0", "1", ".", "'", '"', "/", "*", "a", "Z", "_", "$",
                 "\195\169", "-", "=", "x", "or", "sel", "ect" }

describe("waf @detectSQLi prefilter in C", function()
  it("is the one detect.lua uses when lp_native is loaded", function()
    assert.is_not.equal(D._written_may_lua, D._written_may)
  end)

  it("answers as the Lua twin over the corpora and random strings", function()
    local vals = {}
    for _, f in ipairs({ "tests/waf/attacks.jsonl", "tests/waf/ordinary.jsonl" }) do
      for line in io.lines(f) do
        local r = require("cjson").decode(line)
        for _, v in ipairs({ r.uri, type(r.body) == "string" and r.body or "" }) do
          vals[#vals + 1] = v
          vals[#vals + 1] = T.urldecode(v)
        end
        for _, v in pairs(r.headers or {}) do if type(v) == "string" then vals[#vals + 1] = v end end
      end
    end
    math.randomseed(11)
    for i = 1, 30000 do
      local p = {}
      for k = 1, math.random(0, 12) do p[k] = PIECES[math.random(#PIECES)] end
      vals[#vals + 1] = table.concat(p)
    end
    local bad = {}
    for _, v in ipairs(vals) do
      local want, got = D._written_may_lua(v), N.lp_ffi_waf_sql_written_may(v, #v) ~= 0
      if want ~= got and #bad < 10 then bad[#bad + 1] = string.format("%q: lua %s, C %s", v, want, got) end
    end
    assert.same({}, bad)
  end)
end)
