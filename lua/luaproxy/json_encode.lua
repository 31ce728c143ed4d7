-- A JSON encoder for documents decoded by lua-cjson and changed in Lua (the transform
-- plugin). Not cjson's own encoder: cjson 2.1.0 (Debian's) writes numbers with at most 14
-- significant digits, which would change ids such as 1234567890123456. Here an integral
-- number up to 2^53 is written whole, and others with the fewest digits (14 or 17) that read
-- back the same. cjson decodes [] and {} alike into an empty table: the caller says which
-- one an empty table becomes. Strings are escaped by cjson (in C). Object key order is
-- pairs() order. It lives with the engine's Lua (not guarded: it walks a finite tree, with
-- a depth bound against a cyclic table).
local json = require("cjson").new()
local type, pairs, next, tostring, tonumber, error = type, pairs, next, tostring, tonumber, error
local format, concat = string.format, table.concat
local floor, huge = math.floor, math.huge
local null = json.null
local encode_string = json.encode

local M = {}

local MAX_DEPTH = 1000

local encode_value
local function encode_table(t, out, n, empty_array, depth)
  if depth > MAX_DEPTH then error("cannot encode a document nested over 1000 levels (a cycle?)") end
  if next(t) == nil then
    n = n + 1; out[n] = empty_array and "[]" or "{}"
    return n
  end
  local len = #t
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  if len > 0 and count == len then
    n = n + 1; out[n] = "["
    for i = 1, len do
      if i > 1 then n = n + 1; out[n] = "," end
      n = encode_value(t[i], out, n, empty_array, depth + 1)
    end
    n = n + 1; out[n] = "]"
    return n
  end
  n = n + 1; out[n] = "{"
  local first = true
  for k, v in pairs(t) do
    if not first then n = n + 1; out[n] = "," end
    first = false
    n = n + 1; out[n] = encode_string(tostring(k))
    n = n + 1; out[n] = ":"
    n = encode_value(v, out, n, empty_array, depth + 1)
  end
  n = n + 1; out[n] = "}"
  return n
end

encode_value = function(v, out, n, empty_array, depth)
  local t = type(v)
  local s
  if t == "table" then return encode_table(v, out, n, empty_array, depth)
  elseif t == "string" then s = encode_string(v)
  elseif t == "number" then
    if v ~= v or v == huge or v == -huge then error("cannot encode " .. tostring(v) .. " in JSON") end
    if v == floor(v) and v >= -9007199254740992 and v <= 9007199254740992 then
      s = format("%d", v)
    else
      s = format("%.14g", v)
      if tonumber(s) ~= v then s = format("%.17g", v) end
    end
  elseif t == "boolean" then s = v and "true" or "false"
  elseif v == nil or v == null then s = "null"
  else error("cannot encode a " .. t .. " in JSON") end
  n = n + 1; out[n] = s
  return n
end

-- doc (a table, string, number, boolean or cjson.null) as JSON text; `empty_array`: an
-- empty table is written [] (else {}). Raises for what JSON cannot hold.
function M.encode(doc, empty_array)
  local out = {}
  local n = encode_value(doc, out, 0, empty_array, 0)
  return concat(out, "", 1, n)
end

return M
