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

-- The tokens of q (GraphQL spec, 2.1): kinds[k] is "name", "int", "float", "string",
-- "block" or the punctuator itself, texts[k] a name's or number's text and a string's raw
-- text (between its quotes); nil when q holds what no token is (a ' ; / * < > or --, an
-- unterminated string, a number running into a name).
local function lex(q)
  local kinds, texts, n = {}, {}, 0
  local comments -- their texts: what a server ignores, but an API that is no GraphQL reads
  local i, len = 1, #q
  if sub(q, 1, 3) == "\239\187\191" then i = 4 end
  while i <= len do
    local b = byte(q, i)
    if b == 32 or b == 9 or b == 10 or b == 13 or b == 44 then
      i = i + 1
    elseif b == 35 then -- # comment, to the line's end
      local e = find(q, "[\r\n]", i + 1) or len + 1
      comments = comments or {}
      comments[#comments + 1] = sub(q, i + 1, e - 1)
      i = e + 1
    elseif b == 34 then
      n = n + 1
      if byte(q, i + 1) == 34 and byte(q, i + 2) == 34 then
        -- """block""": ends at the first """ that no backslash escapes
        local e = find(q, '"""', i + 3, true)
        while e and byte(q, e - 1) == 92 do e = find(q, '"""', e + 3, true) end
        if not e then return nil end
        kinds[n], texts[n] = "block", sub(q, i + 3, e - 1)
        i = e + 3
      else
        -- "...": ends at a quote no backslash escapes, on its line
        local j = i + 1
        local e
        while true do
          e = find(q, '["\\\r\n]', j)
          if not e or byte(q, e) ~= 92 then break end
          local nx = byte(q, e + 1)
          if nx == 10 or nx == 13 then return nil end -- no escaped line end in GraphQL
          j = e + 2
        end
        if not e or byte(q, e) ~= 34 then return nil end
        kinds[n], texts[n] = "string", sub(q, i + 1, e - 1)
        i = e + 1
      end
    elseif b == 95 or (b >= 65 and b <= 90) or (b >= 97 and b <= 122) then
      local _, e = find(q, "^[_%w]*", i + 1)
      n = n + 1
      kinds[n], texts[n] = "name", sub(q, i, e)
      i = e + 1
    elseif b == 45 or (b >= 48 and b <= 57) then
      local _, e = find(q, "^%-?%d+", i)
      if not e or find(q, "^%-?0%d", i) then return nil end
      local kind = "int"
      local _, f = find(q, "^%.%d+", e + 1)
      if f then kind, e = "float", f end
      _, f = find(q, "^[eE][%+%-]?%d+", e + 1)
      if f then kind, e = "float", f end
      if find(q, "^[_%w%.]", e + 1) then return nil end -- the spec's lookahead
      n = n + 1
      kinds[n], texts[n] = kind, sub(q, i, e)
      i = e + 1
    elseif b == 46 and byte(q, i + 1) == 46 and byte(q, i + 2) == 46 then
      n = n + 1
      kinds[n] = "..."
      i = i + 3
    elseif find(q, "^[!$&():=@%[%]{|}]", i) then
      n = n + 1
      kinds[n] = sub(q, i, i)
      i = i + 1
    else
      return nil
    end
  end
  return kinds, texts, n, comments
end

-- The parser (spec 2.2-2.12, executable definitions only): p = { kinds, texts, i }; a
-- production that does not fit raises SYNTAX, which M.strings catches. Nesting (selection
-- sets, lists, input objects, list types) is bounded: deeper is no document it reads.
local SYNTAX = {}
local MAX_DEPTH = 64
local function fail() error(SYNTAX, 0) end
local function is(p, kind) return p.kinds[p.i] == kind end
local function take(p, kind, text)
  if p.kinds[p.i] ~= kind or (text and p.texts[p.i] ~= text) then fail() end
  p.i = p.i + 1
end

local value, selection_set

local function arguments(p, depth, const)
  if not is(p, "(") then return end
  p.i = p.i + 1
  repeat
    take(p, "name")
    take(p, ":")
    value(p, depth, const)
  until is(p, ")")
  p.i = p.i + 1
end

local function directives(p, depth, const)
  while is(p, "@") do
    p.i = p.i + 1
    take(p, "name")
    arguments(p, depth, const)
  end
end

function value(p, depth, const)
  if depth > MAX_DEPTH then fail() end
  local k = p.kinds[p.i]
  p.i = p.i + 1
  if k == "$" then
    if const then fail() end -- a default value is a constant
    take(p, "name")
  elseif k == "[" then
    while not is(p, "]") do value(p, depth + 1, const) end
    p.i = p.i + 1
  elseif k == "{" then
    while not is(p, "}") do
      take(p, "name")
      take(p, ":")
      value(p, depth + 1, const)
    end
    p.i = p.i + 1
  elseif k ~= "name" and k ~= "int" and k ~= "float" and k ~= "string" and k ~= "block" then
    fail()
  end
end

local function type_ref(p, depth)
  if depth > MAX_DEPTH then fail() end
  if is(p, "[") then
    p.i = p.i + 1
    type_ref(p, depth + 1)
    take(p, "]")
  else
    take(p, "name")
  end
  if is(p, "!") then p.i = p.i + 1 end
end

local function selection(p, depth)
  if is(p, "...") then
    p.i = p.i + 1
    if is(p, "name") and p.texts[p.i] ~= "on" then -- a fragment spread
      p.i = p.i + 1
      return directives(p, depth, false)
    end
    if is(p, "name") then -- on Type
      p.i = p.i + 1
      take(p, "name")
    end
    directives(p, depth, false)
    return selection_set(p, depth + 1)
  end
  take(p, "name")
  if is(p, ":") then -- an alias
    p.i = p.i + 1
    take(p, "name")
  end
  arguments(p, depth, false)
  directives(p, depth, false)
  if is(p, "{") then selection_set(p, depth + 1) end
end

function selection_set(p, depth)
  if depth > MAX_DEPTH then fail() end
  take(p, "{")
  repeat selection(p, depth) until is(p, "}")
  p.i = p.i + 1
end

local OPERATION = { query = true, mutation = true, subscription = true }

local function definition(p)
  if is(p, "{") then return selection_set(p, 1) end
  local word = p.texts[p.i]
  take(p, "name")
  if word == "fragment" then
    if p.texts[p.i] == "on" then fail() end
    take(p, "name")
    take(p, "name", "on")
    take(p, "name")
  elseif OPERATION[word] then
    if is(p, "name") then p.i = p.i + 1 end
    if is(p, "(") then
      p.i = p.i + 1
      repeat
        take(p, "$")
        take(p, "name")
        take(p, ":")
        type_ref(p, 1)
        if is(p, "=") then
          p.i = p.i + 1
          value(p, 1, true)
        end
        directives(p, 1, true)
      until is(p, ")")
      p.i = p.i + 1
    end
  else
    fail() -- a type system definition, or no GraphQL
  end
  directives(p, 1, false)
  selection_set(p, 1)
end

local function parses(kinds, texts, n)
  local p = { kinds = kinds, texts = texts, i = 1 }
  local ok, err = pcall(function()
    repeat definition(p) until p.i > n
  end)
  if not ok and err ~= SYNTAX then error(err, 0) end
  return ok
end

-- Each string literal of document q into collection c as value name.1, name.2, ... by
-- add(c, name, value, max); false, and nothing added, when q is no GraphQL executable
-- document (it only starts like one: {"query":"{ user(id: 1 UNION SELECT ...) { id } }"}
-- reads as names to a lexer, and the caller inspects it whole). String literals are the
-- only values a client's text can carry: names, numbers and enum values cannot hold a
-- quote, a space or a slash. A literal that does not decode (an escape the spec does not
-- have) goes in as written, and with its valid escapes decoded: never dropped.
function M.strings(c, name, q, max, add)
  local kinds, texts, n, comments = lex(q)
  if not kinds or n == 0 or not parses(kinds, texts, n) then return false end
  local k = 0
  for t = 1, n do
    local kind = kinds[t]
    if kind == "string" then
      k = k + 1
      local raw = texts[t]
      local v, best = unescape(raw)
      if v then
        add(c, name .. "." .. k, v, max)
      else
        add(c, name .. "." .. k, raw, max)
        if best ~= raw then add(c, name .. "." .. k, best, max) end
      end
    elseif kind == "block" then
      k = k + 1
      add(c, name .. "." .. k, block_value(texts[t]), max)
    end
  end
  -- Comments too: a GraphQL server ignores them, but {"query":"{a}#' UNION SELECT ..."}
  -- sent to an API that is no GraphQL is read whole there (review)
  for _, text in ipairs(comments or {}) do
    k = k + 1
    add(c, name .. "." .. k, text, max)
  end
  -- And its names and numbers, in order, one space apart (name.names): the punctuation
  -- that made CRS's rules fire on GraphQL left out, but nothing a client wrote dropped.
  -- A search API that is no GraphQL reads `{ UNION: SELECT password: FROM users }` whole,
  -- and the client chooses whether it looks like GraphQL (review)
  local words, nw = {}, 0
  for t = 1, n do
    local kind = kinds[t]
    if kind == "name" or kind == "int" or kind == "float" then
      nw = nw + 1
      words[nw] = texts[t]
    end
  end
  if nw > 0 then add(c, name .. ".names", concat(words, " ", 1, nw), max) end
  return true
end

return M
