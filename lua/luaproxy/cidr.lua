-- IP addresses and CIDRs as the config writes them ("10.0.0.0/8", "2001:db8::/32", "::1"),
-- checked the way engine/realip.c reads them (inet_pton: dotted quads without leading
-- zeros, IPv6 without a zone id; host bits beyond the prefix must be 0), so a config that
-- passes here reads there without a check left. Config time only.
local ffi = require "ffi"
local bit = require "bit"

pcall(ffi.cdef, "int inet_pton(int af, const char *src, void *dst);")
local C = ffi.C
local AF_INET, AF_INET6 = 2, 10 -- Linux

local find, tonumber, format = string.find, tonumber, string.format

local M = {}

local buf = ffi.new("uint8_t[16]")

-- true, is_v6 or nil, "problem".
function M.parse_ip(s)
  if type(s) ~= "string" then return nil, "expected an address string" end
  if #s == 0 or #s > 45 then return nil, format("%q is not an IP address", s) end
  local v6 = find(s, ":", 1, true) ~= nil
  if C.inet_pton(v6 and AF_INET6 or AF_INET, s, buf) ~= 1 then
    return nil, format("%q is not an IP address", s)
  end
  return true, v6
end

-- true or nil, "problem", for "addr" or "addr/bits".
function M.check(s)
  if type(s) ~= "string" then return nil, "expected a CIDR string such as \"10.0.0.0/8\"" end
  local addr, bits = s:match("^([^/]*)/(%d%d?%d?)$")
  if not addr then
    if find(s, "/", 1, true) then return nil, format("%q: bad prefix length", s) end
    addr = s
  end
  local ok, v6 = M.parse_ip(addr)
  if not ok then return nil, v6 end
  local max = v6 and 128 or 32
  bits = bits and tonumber(bits) or max
  if bits > max then return nil, format("%q: prefix length above %d", s, max) end
  for b = bits, max - 1 do
    local byte = buf[math.floor(b / 8)]
    if bit.band(byte, bit.rshift(0x80, b % 8)) ~= 0 then
      return nil, format("%q has bits set past the /%d prefix (did you mean %s?)", s, bits,
        "the network address")
    end
  end
  return true
end

return M
