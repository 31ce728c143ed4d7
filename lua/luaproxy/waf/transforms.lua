-- waf transformations: string -> string, each linear in its input and never raising, on
-- any bytes (invalid UTF-8, bad %-escapes, broken entities, bad base64 all pass through as
-- bytes). Each returns its input itself when there is nothing to change, so the common case
-- allocates nothing. Docs: docs/plugins/waf.md, "Transformations".
local byte, char, find, gsub, lower, format = string.byte, string.char, string.find,
  string.gsub, string.lower, string.format
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
T._utf8 = utf8 -- (not a transformation: GraphQL string escapes, XML character references)

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


---------------------------------------------------------------------------------------------
-- Transformations the OWASP Core Rule Set names (issue #20), as ModSecurity's reference
-- manual describes them; written for this project.

T.uppercase = string.upper

-- \xHH \uHHHH \OOO and \n-style escapes (JavaScript); anything else: the escaped byte.
local JS_SIMPLE = { a = "\a", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t", v = "\v" }
function T.js_decode(s)
  if not find(s, "\\", 1, true) then return s end
  s = gsub(s, "\\[uU](%x%x%x%x)", function(h)
    local cp = tonumber(h, 16)
    -- ModSecurity keeps the low byte of a %u escape unless it is a full-width ASCII form.
    if cp >= 0xFF01 and cp <= 0xFF5E then return char(cp - 0xFEE0) end
    return char(band(cp, 0xFF))
  end)
  s = gsub(s, "\\[xX](%x%x)", hexbyte)
  s = gsub(s, "\\([0-7][0-7]?[0-7]?)", function(o)
    local n = tonumber(o, 8)
    return n < 256 and char(n) or char(band(n, 0xFF))
  end)
  return (gsub(s, "\\(.)", function(c) return JS_SIMPLE[c] or c end))
end

-- CSS escapes: \ followed by 1..6 hex digits (and one optional space), or by any other
-- character (itself); a backslash before a newline goes.
function T.css_decode(s)
  if not find(s, "\\", 1, true) then return s end
  s = gsub(s, "\\(%x%x?%x?%x?%x?%x?) ?", function(h)
    local cp = tonumber(h, 16)
    if cp >= 0xFF01 and cp <= 0xFF5E then return char(cp - 0xFEE0) end
    return char(band(cp, 0xFF))
  end)
  s = gsub(s, "\\\n", "")
  return (gsub(s, "\\(.)", "%1"))
end

-- ModSecurity's cmdLine: drops \ " ' ^, drops spaces before / and (, turns , and ; into a
-- space, runs of whitespace into one space, lower case (what CRS's 932 rules expect).
function T.cmdline_modsec(s)
  if find(s, "[\\\"'^,;%s]") then
    s = gsub(s, "[\\\"'^]", "")
    s = gsub(s, "[,;]", " ")
    s = gsub(s, "%s+", " ")
    s = gsub(s, " ([/(])", "%1")
  end
  return lower(s)
end

function T.replace_nulls(s)
  if not find(s, "%z") then return s end
  return (gsub(s, "%z", " "))
end

-- Comments removed: /* */ (an unterminated one to the end), <!-- -->, and -- or # to the
-- end of the line (SQL and shell).
function T.remove_comments(s)
  if not find(s, "[/<%-#]") then return s end
  s = gsub(s, "/%*.-%*/", "")
  s = gsub(s, "/%*.*$", "")
  s = gsub(s, "<!%-%-.-%-%->", "")
  s = gsub(s, "%-%-[^\n]*", "")
  return (gsub(s, "#[^\n]*", ""))
end

-- The comment characters themselves removed: /* */ -- # <!-- -->.
function T.remove_comments_char(s)
  if not find(s, "[/%*<%->#]") then return s end
  s = gsub(s, "/%*", "")
  s = gsub(s, "%*/", "")
  s = gsub(s, "<!%-%-", "")
  s = gsub(s, "%-%->", "")
  s = gsub(s, "%-%-", "")
  return (gsub(s, "#", ""))
end

-- normalizePath without the backslash step (normalizePathWin is T.normalize_path).
function T.normalize_path_posix(s)
  if find(s, "\\", 1, true) then
    -- Keep backslashes: swap them out, normalise, swap back.
    local r = T.normalize_path(gsub(s, "\\", "\1"))
    return (gsub(r, "\1", "\\"))
  end
  return T.normalize_path(s)
end

-- Hex pairs to bytes (a value that is not all hex pairs stays as it is).
function T.hex_decode(s)
  if #s % 2 ~= 0 or find(s, "%X") then return s end
  return (gsub(s, "%x%x", hexbyte))
end

function T.hex_encode(s)
  return (gsub(s, ".", function(c) return format("%02x", byte(c)) end))
end

-- Multi-byte UTF-8 sequences become %uHHHH (as ModSecurity's utf8toUnicode writes them);
-- invalid bytes stay.
function T.utf8_to_unicode(s)
  if not find(s, "[\128-\255]") then return s end
  return (gsub(s, "[\192-\247][\128-\191]+", function(seq)
    local b1 = byte(seq, 1)
    local n = #seq
    local cp
    if b1 < 0xE0 and n == 2 then cp = band(b1, 0x1F) * 64 + band(byte(seq, 2), 0x3F)
    elseif b1 >= 0xE0 and b1 < 0xF0 and n == 3 then
      cp = band(b1, 0x0F) * 4096 + band(byte(seq, 2), 0x3F) * 64 + band(byte(seq, 3), 0x3F)
    elseif b1 >= 0xF0 and n == 4 then
      cp = band(b1, 0x07) * 262144 + band(byte(seq, 2), 0x3F) * 4096 + band(byte(seq, 3), 0x3F) * 64
        + band(byte(seq, 4), 0x3F)
    else
      return seq
    end
    return format("%%u%04x", cp)
  end))
end

-- C escapes: \a \b \f \n \r \t \v \\ \? \' \" \xHH \OOO.
local C_SIMPLE = { a = "\a", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t", v = "\v",
                   ["\\"] = "\\", ["?"] = "?", ["'"] = "'", ['"'] = '"' }
function T.escape_seq_decode(s)
  if not find(s, "\\", 1, true) then return s end
  s = gsub(s, "\\[xX](%x%x)", hexbyte)
  s = gsub(s, "\\([0-7][0-7]?[0-7]?)", function(o) return char(band(tonumber(o, 8), 0xFF)) end)
  return (gsub(s, "\\(.)", function(c) return C_SIMPLE[c] or "\\" .. c end))
end

function T.trim_left(s)
  if not find(s, "^[%s%z]") then return s end
  return (gsub(s, "^[%s%z]+", ""))
end

function T.trim_right(s)
  if not find(s, "[%s%z]$") then return s end
  return (gsub(s, "[%s%z]+$", ""))
end

-- SHA-1 (raw bytes) through OpenSSL's libcrypto (the engine links it), loaded on first use.
local crypto
function T.sha1(s)
  if crypto == nil then
    local ffi = require "ffi"
    pcall(ffi.cdef, "unsigned char *SHA1(const unsigned char *d, size_t n, unsigned char *md);")
    local ok = pcall(function() return ffi.C.SHA1 end)
    crypto = ok and ffi.C or false
    if not crypto then
      local lok, l = pcall(ffi.load, "crypto")
      crypto = lok and l or false
    end
    T._md = ffi.new("unsigned char[20]")
    T._ffi = ffi
  end
  if not crypto then return s end
  crypto.SHA1(s, #s, T._md)
  return T._ffi.string(T._md, 20)
end

T.names = {}
for k in pairs(T) do if k ~= "names" and k:sub(1, 1) ~= "_" then T.names[#T.names + 1] = k end end
table.sort(T.names)

return T
