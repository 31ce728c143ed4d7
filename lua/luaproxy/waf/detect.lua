-- The waf engine's operators that are C functions: @detectSQLi and @detectXSS, our own
-- tokenizer-based detectors (Debian has no libinjection; nothing here is taken from it;
-- engine/waf_sqli.c and engine/waf_xss.c say what they look for), and @validateByteRange,
-- @validateUrlEncoding, @validateUtf8Encoding (engine/waf_validate.c). Docs:
-- docs/plugins/waf.md, "detectSQLi and detectXSS". The engine's own functions in the proxy
-- (ffi.C), the lp_native library under the proxy.test double (luaproxy.native:
-- LP_NATIVE_LIB, as ctest and `luaproxy test` set). No Lua twin: the specs and the tools
-- always have one of the two (lua/luaproxy/native.lua).
local ffi = require "ffi"
local N = require "luaproxy.native"

local M = {}

local out = ffi.new("lp_waf_detect_t")

-- from, to of the injected SQL and its fingerprint (the token classes from the attack on);
-- nil for anything else.
function M.sqli(v)
  if N.lp_ffi_waf_sqli(v, #v, out) == 0 then return nil end
  return out.from, out.to, ffi.string(out.fp)
end

-- from, to of the markup; nil for anything else.
function M.xss(v)
  if N.lp_ffi_waf_xss(v, #v, out) == 0 then return nil end
  return out.from, out.to
end

-- The set of bytes outside ok ({ [byte] = true }) as @validateByteRange's bitmap.
function M.byte_set(ok)
  local bad = ffi.new("unsigned char[32]")
  for c = 0, 255 do
    if not ok[c] then
      local k = bit.rshift(c, 3)
      bad[k] = bit.bor(bad[k], bit.lshift(1, bit.band(c, 7)))
    end
  end
  return bad
end

-- The first byte of v (from 1) in the set bad (M.byte_set), or nil.
function M.byte_range(bad, v)
  local i = N.lp_ffi_waf_byte_range(bad, v, #v)
  if i ~= 0 then return tonumber(i) end
end

-- The first '%' of v not followed by two hex digits, or nil.
function M.urlenc_invalid(v)
  local i = N.lp_ffi_waf_urlenc_invalid(v, #v)
  if i ~= 0 then return tonumber(i) end
end

-- The first byte of an invalid UTF-8 sequence in v, or nil.
function M.utf8_invalid(v)
  local i = N.lp_ffi_waf_utf8_invalid(v, #v)
  if i ~= 0 then return tonumber(i) end
end

return M
