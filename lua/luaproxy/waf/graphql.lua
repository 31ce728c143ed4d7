-- waf: the string literals of a GraphQL document, as the server reads them: the values a
-- client put into it. Its names and punctuation are the API's, not data, and comments are
-- not read at all. Each literal is decoded as the GraphQL spec (October 2021, "String
-- Value") says, and with the later \u{...} form: inspected with its escapes as written,
-- x\u0027 OR \u00271\u0027=\u00271 passed CRS where x' OR '1'='1 did not.
-- Docs: docs/plugins/waf.md, "Targets (variables)".
local utf8 = require("luaproxy.waf.transforms")._utf8
local byte, find, sub, gsub, match = string.byte, string.find, string.sub, string.gsub,
  string.match
local concat = table.concat
local tonumber = tonumber

local M = {}

-- \" \\ \/ \b \f \n \r \t
local ESC = { [34] = '"', [92] = "\\", [47] = "/", [98] = "\b", [102] = "\f", [110] = "\n",
              [114] = "\r", [116] = "\t" }

-- The escape at j of s (a backslash): what it stands for and the position after it, or
-- nil when it is none the spec has (an unknown letter, a short \u, a lone surrogate).
local function escape(s, j)
  local e = byte(s, j + 1)
  local r = ESC[e]
  if r then return r, j + 2 end
  if e ~= 117 then return nil end -- u
  local h = match(s, "^{(%x+)}", j + 2)
  if h then
    local digits = gsub(h, "^0+", "")
    local cp = #digits <= 6 and (tonumber(digits, 16) or 0)
    if not cp or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then return nil end
    return utf8(cp), j + 4 + #h
  end
  h = match(s, "^%x%x%x%x", j + 2)
  if not h then return nil end
  local cp = tonumber(h, 16)
  if cp >= 0xDC00 and cp <= 0xDFFF then return nil end
  if cp >= 0xD800 and cp <= 0xDBFF then
    -- a surrogate pair, \uD83D\uDE00: one code point
    local lo = match(s, "^\\u(%x%x%x%x)", j + 6)
    lo = lo and tonumber(lo, 16)
    if not lo or lo < 0xDC00 or lo > 0xDFFF then return nil end
    return utf8(0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)), j + 12
  end
  return utf8(cp), j + 6
end

-- The raw text of a "..." literal (between its quotes) decoded. With an escape the spec
-- does not have, nil and the text with the valid escapes decoded and the others as written
-- (a server that is lenient about them may read it so).
local function unescape(s)
  local j = find(s, "\\", 1, true)
  if not j then return s end
  local out, n, i = {}, 0, 1
  local bad = false
  while j do
    if j > i then
      n = n + 1
      out[n] = sub(s, i, j - 1)
    end
    local r, nxt = escape(s, j)
    if not r then bad, r, nxt = true, "\\", j + 1 end
    n = n + 1
    out[n] = r
    i = nxt
    j = find(s, "\\", i, true)
  end
  n = n + 1
  out[n] = sub(s, i)
  local v = concat(out, "", 1, n)
  if bad then return nil, v end
  return v
end

-- The value of a """block""" literal from its raw text: \""" is """, the lines' common
-- indentation (of every line but the first, white space only lines aside) goes, and so do
-- the blank lines at its start and end (the spec's BlockStringValue()).
local function block_value(raw)
  raw = gsub(gsub(raw, '\\"""', '"""'), "\r\n?", "\n")
  if not find(raw, "\n", 1, true) then
    return find(raw, "[^ \t]") and raw or ""
  end
  local lines, n = {}, 0
  for l in (raw .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    lines[n] = l
  end
  local common
  for k = 2, n do
    local first = find(lines[k], "[^ \t]")
    if first and (not common or first - 1 < common) then common = first - 1 end
  end
  if common and common > 0 then
    for k = 2, n do lines[k] = sub(lines[k], common + 1) end
  end
  local a, b = 1, n
  while a <= b and not find(lines[a], "[^ \t]") do a = a + 1 end
  while b >= a and not find(lines[b], "[^ \t]") do b = b - 1 end
  return concat(lines, "\n", a, b)
end

-- Does q read as a GraphQL executable document: after what the lexer ignores (a byte order
-- mark, white space, commas, # comments), an operation or a fragment?
function M.looks(q)
  local i = 1
  while true do
    i = find(q, "[^ \t\r\n,]", i)
    if not i then return false end
    local b = byte(q, i)
    if b == 35 then -- # comment
      i = find(q, "[\r\n]", i)
      if not i then return false end
    elseif b == 239 and sub(q, i, i + 2) == "\239\187\191" then
      i = i + 3
    else
      break
    end
  end
  return find(q, "^{", i) or find(q, "^query[%s{(#,]", i) or find(q, "^mutation[%s{(#,]", i)
    or find(q, "^subscription[%s{(#,]", i) or find(q, "^fragment[%s#,]", i) or false
end

-- The bytes GraphQL's tokens are made of, outside strings and comments: names, numbers,
-- punctuators (! $ & ( ) ... : = @ [ ] { | }) and what the lexer ignores.
local CODE = {}
for b in ("_!$&():=@[]{|}.-+ \t\r\n,"):gmatch(".") do CODE[byte(b)] = true end
for b = 48, 57 do CODE[b] = true end
for b = 65, 90 do CODE[b] = true end
for b = 97, 122 do CODE[b] = true end

-- Are bytes i..j of q (outside strings and comments) GraphQL tokens? A - only before a
-- digit, a + only after an exponent's e. (What is not, ' ; / * < > --, makes the text no
-- GraphQL document: a JSON API's "query" that starts like one, {"query":"{ ' OR 1=1 }"},
-- is then inspected whole, not read for string literals it does not have.)
local function code_ok(q, i, j)
  for p = i, j do
    local b = byte(q, p)
    if not CODE[b] then return false end
    if b == 45 then -- -
      local d = byte(q, p + 1)
      if not d or d < 48 or d > 57 then return false end
    elseif b == 43 then -- +
      local e = byte(q, p - 1)
      if e ~= 101 and e ~= 69 then return false end
    end
  end
  return true
end

-- Each string literal of document q into collection c as value name.1, name.2, ... by
-- add(c, name, value, max); false (some added) when q is no GraphQL document after all
-- (code_ok). A literal that does not decode (an escape the spec does not have, no closing
-- quote) goes in as written, and with its valid escapes decoded: never dropped. (Plain
-- finds and byte loops: LuaJIT compiles those, not a find with a pattern. The next "#" is
-- kept from literal to literal, found again only once passed.)
function M.strings(c, name, q, max, add)
  local n, k = #q, 0
  local i = sub(q, 1, 3) == "\239\187\191" and 4 or 1
  local hash = 0
  while true do
    local s = find(q, '"', i, true) or n + 1
    if hash < i then hash = find(q, "#", i, true) or n + 1 end
    if not code_ok(q, i, (hash < s and hash or s) - 1) then return false end
    if s > n and hash > n then return true end
    if hash < s then
      -- a comment, up to the line's end: a quote in it opens no string
      local j = hash + 1
      while j <= n do
        local b = byte(q, j)
        if b == 10 or b == 13 then break end
        j = j + 1
      end
      if j > n then return true end
      i = j
    elseif byte(q, s + 1) == 34 and byte(q, s + 2) == 34 then
      -- """block""": ends at the first """ that no backslash escapes
      local e = find(q, '"""', s + 3, true)
      while e and byte(q, e - 1) == 92 do e = find(q, '"""', e + 3, true) end
      k = k + 1
      add(c, name .. "." .. k, block_value(sub(q, s + 3, (e or n + 1) - 1)), max)
      if not e then return true end
      i = e + 3
    else
      -- "...": ends at a quote no backslash escapes, or (unterminated) at a line's end
      local j, esc = s + 1, false
      local b
      while j <= n do
        b = byte(q, j)
        if b == 92 then
          esc, j = true, j + 2
        elseif b == 34 or b == 10 or b == 13 then
          break
        else
          j = j + 1
        end
      end
      local closed = j <= n and b == 34
      local raw = sub(q, s + 1, (j <= n and j or n + 1) - 1)
      k = k + 1
      local v, best
      if esc then v, best = unescape(raw) else v = raw end
      if v and closed then
        add(c, name .. "." .. k, v, max)
      else
        add(c, name .. "." .. k, raw, max)
        v = v or best
        if v ~= raw then add(c, name .. "." .. k, v, max) end
      end
      if j > n then return true end
      i = j + 1
    end
  end
end

return M
