-- waf transformations: string -> string, each linear in its input and never raising, on
-- any bytes (invalid UTF-8, bad %-escapes, broken entities, bad base64 all pass through as
-- bytes). Each returns its input itself when there is nothing to change, so the common case
-- allocates nothing. Docs: docs/plugins/waf.md, "Transformations".
local byte, char, find, gsub, lower = string.byte, string.char, string.find,
  string.gsub, string.lower
local concat = table.concat
local tonumber, tostring = tonumber, tostring
local band, bor, rshift, lshift = bit.band, bit.bor, bit.rshift, bit.lshift

local T = {}

-- Code point to UTF-8 (values over 0x10FFFF and surrogates become U+FFFD).
local function utf8(cp)
  if cp < 0x80 then return char(cp) end
  if cp < 0x800 then return char(bor(0xC0, rshift(cp, 6)), bor(0x80, band(cp, 0x3F))) end
  if cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then cp = 0xFFFD end
  if cp < 0x10000 then
    return char(bor(0xE0, rshift(cp, 12)), bor(0x80, band(rshift(cp, 6), 0x3F)),
      bor(0x80, band(cp, 0x3F)))
  end
  return char(bor(0xF0, rshift(cp, 18)), bor(0x80, band(rshift(cp, 12), 0x3F)),
    bor(0x80, band(rshift(cp, 6), 0x3F)), bor(0x80, band(cp, 0x3F)))
end

local function hexbyte(h) return char(tonumber(h, 16)) end
local function uni(h)
  local cp = tonumber(h, 16)
  -- IIS's %uFFxx full-width forms of ASCII decode to the ASCII byte, as IIS did.
  if cp >= 0xFF01 and cp <= 0xFF5E then return char(cp - 0xFEE0) end
  return utf8(cp)
end

-- %XX and + ; %uXXXX (IIS); an invalid escape stays as it is.
function T.urldecode(s)
  if not find(s, "%", 1, true) and not find(s, "+", 1, true) then return s end
  s = gsub(s, "+", " ")
  if not find(s, "%", 1, true) then return s end
  s = gsub(s, "%%[uU](%x%x%x%x)", uni)
  return (gsub(s, "%%(%x%x)", hexbyte))
end

T.lowercase = lower

local ENTITIES = {
  lt = "<", gt = ">", amp = "&", quot = '"', apos = "'", nbsp = " ", colon = ":",
  tab = "\t", newline = "\n", lpar = "(", rpar = ")", sol = "/", bsol = "\\", semi = ";",
  comma = ",", period = ".", excl = "!", num = "#", equals = "=", grave = "`", plus = "+",
  lsqb = "[", rsqb = "]", lcub = "{", rcub = "}", vert = "|", ast = "*", percnt = "%",
}
local function num_entity(digits)
  local cp = tonumber(digits)
  if not cp or cp > 0x10FFFF then return "\239\191\189" end
  return utf8(cp)
end
local function hex_entity(digits)
  if #digits > 8 then return "\239\191\189" end
  local cp = tonumber(digits, 16)
  if cp > 0x10FFFF then return "\239\191\189" end
  return utf8(cp)
end
local function named_entity(name, semi)
  local v = ENTITIES[lower(name)]
  if v then return v end
  return "&" .. name .. semi
end

-- &name; &#NN; &#xHH; (the numeric forms with or without the semicolon, as browsers take
-- them); unknown names stay.
function T.html_decode(s)
  if not find(s, "&", 1, true) then return s end
  s = gsub(s, "&#[xX](%x+);?", hex_entity)
  s = gsub(s, "&#(%d+);?", num_entity)
  return (gsub(s, "&(%a+)(;?)", named_entity))
end

-- Runs of whitespace (and NUL, and the vertical tab) become one space. The common case
-- (single spaces only) is found by a byte loop, which LuaJIT compiles; a pattern class
-- would run in C's pattern matcher, several times slower on short values.
function T.compress_ws(s)
  local prev = false
  for i = 1, #s do
    local b = byte(s, i)
    if b <= 32 then
      if b ~= 32 or prev then return (gsub(s, "[%s%z]+", " ")) end
      prev = true
    else
      prev = false
    end
  end
  return s
end

function T.remove_ws(s)
  if not find(s, "[%s%z]") then return s end
  return (gsub(s, "[%s%z]+", ""))
end

function T.remove_nulls(s)
  if not find(s, "%z") then return s end
  return (gsub(s, "%z+", ""))
end

function T.trim(s)
  if not find(s, "^[%s%z]") and not find(s, "[%s%z]$") then return s end
  return (gsub(gsub(s, "^[%s%z]+", ""), "[%s%z]+$", ""))
end

-- Backslashes become slashes, `//` one slash, `/./` goes, `x/../` climbs (never above the
-- start): what a file system would open, to see traversals written in disguise.
function T.normalize_path(s)
  if not find(s, "[\\/]") then return s end
  s = gsub(s, "\\", "/")
  if not find(s, "//", 1, true) and not find(s, "/%.") and not find(s, "^%.") then return s end
  local abs = byte(s, 1) == 47
  local out, n = {}, 0
  local trailing = byte(s, #s) == 47
  for seg in s:gmatch("[^/]+") do
    if seg == ".." then
      if n > 0 and out[n] ~= ".." then
        out[n] = nil
        n = n - 1
      elseif not abs then
        n = n + 1
        out[n] = ".."
      end
    elseif seg ~= "." then
      n = n + 1
      out[n] = seg
    end
  end
  local r = concat(out, "/")
  if abs then r = "/" .. r end
  if trailing and n > 0 then r = r .. "/" end
  return r
end

-- /* ... */ comments (an unterminated one to the end) become one space.
function T.replace_comments(s)
  if not find(s, "/*", 1, true) then return s end
  s = gsub(s, "/%*.-%*/", " ")
  return (gsub(s, "/%*.*$", " "))
end

-- For shell payloads written to dodge patterns: removes \ " ' ^ (which a shell drops:
-- c\a"t is cat); line breaks become ; (a shell's separator too); commas become spaces;
-- whitespace runs become one space; lower case. Separators (; | & `) stay: rules look
-- for them.
-- Bytes cmdline changes: \ " ' ^ CR LF and the comma.
local CMD_BYTES = { [92] = true, [34] = true, [39] = true, [94] = true, [13] = true,
                    [10] = true, [44] = true }
function T.cmdline(s)
  for i = 1, #s do
    if CMD_BYTES[byte(s, i)] then
      s = gsub(s, "[\\\"'^]", "")
      s = gsub(s, "[\r\n]+", ";")
      s = gsub(s, ",", " ")
      break
    end
  end
  return lower(T.compress_ws(s))
end

local B64 = {}
do
  local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  for i = 1, 64 do B64[byte(alphabet, i)] = i - 1 end
  B64[45], B64[95] = 62, 63 -- the URL-safe alphabet's - and _
end

-- Base64 (standard or URL-safe, padding optional) when the whole value is base64 of at
-- least 8 characters; anything else stays as it is.
function T.base64_decode(s)
  local n = #s
  if n < 8 or find(s, "[^%w+/=_%-]") then return s end
  local out, o = {}, 0
  local acc, bits = 0, 0
  for i = 1, n do
    local c = byte(s, i)
    if c == 61 then break end
    acc = bor(lshift(band(acc, 0xFFFF), 6), B64[c])
    bits = bits + 6
    if bits >= 8 then
      bits = bits - 8
      o = o + 1
      out[o] = char(band(rshift(acc, bits), 0xFF))
    end
  end
  return concat(out)
end

-- The value's length in bytes, as a decimal string (for numeric operators).
function T.length(s) return tostring(#s) end

T.names = {}
for k in pairs(T) do if k ~= "names" then T.names[#T.names + 1] = k end end
table.sort(T.names)

return T
