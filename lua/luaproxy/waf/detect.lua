-- @detectSQLi and @detectXSS for the waf engine: our own tokenizer-based detectors (Debian
-- has no libinjection; nothing here is taken from it). Docs: docs/plugins/waf.md,
-- "detectSQLi and detectXSS".
--
-- SQLi: the value is tokenized as SQL three times, as libinjection's idea goes: as written,
-- and as if it started inside a '...' or a "..." literal (the value closes the literal the
-- application opened). Tokens fold into classes (s string, n number, k keyword, U union,
-- & and/or, o operator, f function call, v @variable, c comment, ( ) , ; b bareword), and a
-- value is SQL injection when its token sequence has SQL's structure, not prose's:
--   - UNION [ALL] SELECT; SELECT with a column list and FROM; (SELECT;
--   - in a quote context, right after the literal closes: a comment, AND/OR followed by an
--     operand and a comparison or a function call, ; with a statement, ORDER/GROUP BY, an
--     operator with an operand;
--   - as written: a number then AND/OR and a comparison (1 AND 1=1), a number then ORDER BY;
--   - ; followed by a statement with its own structure (DROP TABLE, DELETE FROM, ...);
--   - a call of a function only attacks use (sleep, benchmark, updatexml, xp_cmdshell, ...).
-- Prose with apostrophes ("It's great -- I'd buy it again") stays prose: its quote closes
-- into words, never into a comment or a comparison.
--
-- XSS: the value is parsed as HTML as written and as if it started inside an attribute
-- value ("...", '...', unquoted). It is XSS when it makes a tag of the dangerous kinds
-- (script, iframe, object, embed, svg, base, ...), an event handler attribute (on...), an
-- attribute whose URL is javascript:/vbscript:/data:text/html, a style with expression()
-- or a javascript: url(), or when the whole value is a javascript: URL. Plain markup a
-- comment form allows (<b>, <i>, <a href="https://...">, <p>) is not.
local byte, find, lower, sub, match, gsub = string.byte, string.find, string.lower,
  string.sub, string.match, string.gsub

local M = {}

---------------------------------------------------------------------------------------------
-- SQL

local KEYWORDS = {
  select = "k", from = "k", where = "k", insert = "k", into = "k", values = "k", update = "k",
  set = "k", delete = "k", drop = "k", table = "k", database = "k", create = "k", alter = "k",
  truncate = "k", exec = "k", execute = "k", declare = "k", shutdown = "k", having = "k",
  limit = "k", offset = "k", order = "k", group = "k", by = "k", union = "U", all = "k",
  ["and"] = "&", ["or"] = "&", xor = "&", ["not"] = "o", like = "o", rlike = "o", regexp = "o",
  is = "o", ["in"] = "o", between = "o", div = "o", mod = "o", ["null"] = "n", ["true"] = "n",
  ["false"] = "n", waitfor = "k", delay = "k", case = "k", when = "k", ["then"] = "k",
  ["else"] = "k", ["end"] = "k", as = "k", cast = "f", convert = "f", procedure = "k",
  outfile = "k", dumpfile = "k", load_file = "f", sounds = "o",
}
-- Functions only attacks call (a call of one is SQLi wherever it stands).
local ATTACK_FUNCS = {
  sleep = true, pg_sleep = true, benchmark = true, updatexml = true, extractvalue = true,
  load_file = true, xp_cmdshell = true, sp_executesql = true, dbms_pipe = true,
  utl_inaddr = true, get_host_address = true, waitfor = true, sys_eval = true, sys_exec = true,
  randomblob = true, dbms_lock = true, receive_message = true, make_set = true,
  name_const = true, geometrycollection = true, polygon = true, multipoint = true,
  exp = false, information_schema = true,
}
-- Functions SQLi uses for data (a call after AND/OR, or in a select list, is SQLi).
local SQL_FUNCS = {
  version = true, database = true, user = true, current_user = true, system_user = true,
  session_user = true, schema = true, concat = true, concat_ws = true, group_concat = true,
  char = true, chr = true, ascii = true, substring = true, substr = true, mid = true,
  ord = true, hex = true, unhex = true, count = true, length = true, md5 = true, if_ = true,
  ["if"] = true, ifnull = true, coalesce = true, exists = true, cast = true, convert = true,
  floor = true, rand = true, left = true, right = true, lower = true, upper = true,
  row = true, elt = true, iif = true, db_name = true, table_name = true, column_name = true,
}
-- Statements after ;, and what must follow them to be one.
local STATEMENT = { drop = { table = true, database = true, procedure = true, ["function"] = true, view = true },
  delete = { from = true }, insert = { into = true }, update = "b", select = true, exec = true,
  execute = true, shutdown = true, declare = true, truncate = { table = true }, create = { table = true, user = true },
  alter = { table = true, user = true }, waitfor = true }

-- Tokenizes v from position i; quote: the value starts inside a literal of this quote.
-- Returns a list of { t = class, w = word (lower), a = start, b = end }.
local function sql_tokens(v, quote)
  local toks = {}
  local n = #v
  local i = 1
  if quote then
    local j = find(v, quote, 1, true)
    if not j then return nil end
    toks[1] = { t = "s", a = 1, b = j }
    i = j + 1
  end
  while i <= n and #toks < 64 do
    local c = byte(v, i)
    if c <= 32 or c == 0xA0 then
      i = i + 1
    elseif c == 39 or c == 34 or c == 96 then -- ' " `
      local j = i + 1
      while true do
        local k = find(v, c == 39 and "'" or c == 34 and '"' or "`", j, true)
        if not k then j = n break end
        if byte(v, k + 1) == c then j = k + 2 else j = k break end
      end
      toks[#toks + 1] = { t = c == 96 and "b" or "s", a = i, b = j }
      i = j + 1
    elseif c == 45 and byte(v, i + 1) == 45 then -- --
      toks[#toks + 1] = { t = "c", a = i, b = n }
      break
    elseif c == 35 then -- #
      toks[#toks + 1] = { t = "c", a = i, b = n }
      break
    elseif c == 47 and byte(v, i + 1) == 42 then -- /* */
      local e = find(v, "*/", i + 2, true)
      if byte(v, i + 2) == 33 then
        -- MySQL's /*! ... */ runs its content: skip the marker and its version digits
        local j = i + 3
        while j <= n and byte(v, j) >= 48 and byte(v, j) <= 57 do j = j + 1 end
        i = j
      else
        toks[#toks + 1] = { t = "c", a = i, b = e and e + 1 or n }
        i = e and e + 2 or n + 1
      end
    elseif c == 42 and byte(v, i + 1) == 47 then
      i = i + 2
    elseif (c >= 48 and c <= 57) or (c == 46 and find(v, "^%d", i + 1)) then
      local a, b = find(v, "^0[xX]%x+", i)
      if not a then a, b = find(v, "^%d*%.?%d+[eE]?[+-]?%d*", i) end
      if not a then a, b = i, i end
      toks[#toks + 1] = { t = "n", a = a, b = b }
      i = b + 1
    elseif c == 64 then -- @ @@
      local a, b = find(v, "^@@?[%w_$.]+", i)
      if a then
        toks[#toks + 1] = { t = "v", a = a, b = b }
        i = b + 1
      else
        i = i + 1
      end
    elseif (c >= 65 and c <= 90) or (c >= 97 and c <= 122) or c == 95 or c >= 128 then
      local a, b = find(v, "^[%w_$\128-\255]+", i)
      local w = lower(sub(v, a, b))
      -- a.b names: one word
      while byte(v, b + 1) == 46 and find(v, "^[%a_]", b + 2) do
        local _, b2 = find(v, "^[%w_$]+", b + 2)
        b = b2
      end
      local t = KEYWORDS[w]
      local nx = find(v, "^%s*%(", b + 1)
      if nx and (SQL_FUNCS[w] or ATTACK_FUNCS[w] or t == "f") then t = "f"
      elseif not t then t = "b" end
      toks[#toks + 1] = { t = t, w = w, a = a, b = b }
      i = b + 1
    elseif c == 40 or c == 41 or c == 44 or c == 59 then
      toks[#toks + 1] = { t = string.char(c), a = i, b = i }
      i = i + 1
    else
      local a, b = find(v, "^[=<>!|&^~+%-*/%%:]+", i)
      if a then
        local op = sub(v, a, b)
        toks[#toks + 1] = { t = (op == "||" or op == "&&") and "&" or "o", w = op, a = a, b = b }
        i = b + 1
      else
        toks[#toks + 1] = { t = "x", a = i, b = i }
        i = i + 1
      end
    end
  end
  return toks
end

local OPERAND = { n = true, s = true, b = true, v = true, f = true, ["("] = true }

-- Index of the next non-comment token from k, or nil.
local function nextnc(toks, k)
  while toks[k] and toks[k].t == "c" do k = k + 1 end
  return toks[k] and k or nil
end

local function attack_at(toks, quote)
  local n = #toks
  for k = 1, n do
    local t = toks[k]
    local tt = t.t
    if tt == "U" then
      local j = nextnc(toks, k + 1)
      if j and toks[j].w == "all" then j = nextnc(toks, j + 1) end
      if j and (toks[j].w == "select" or toks[j].t == "(") then return k end
    elseif tt == "f" and ATTACK_FUNCS[t.w] then
      return k
    elseif t.w == "waitfor" then
      local j = nextnc(toks, k + 1)
      if j and toks[j].w == "delay" then return k end
    elseif tt == "(" then
      local j = nextnc(toks, k + 1)
      if j and toks[j].w == "select" then return k end
    elseif t.w == "select" then
      -- SELECT with a column list (* @@x f() n 'x' a,b) and FROM, or with a call / @@var
      local j = nextnc(toks, k + 1)
      local tj = j and toks[j]
      if tj and (tj.t == "f" or tj.t == "v" or (tj.w == "*" and toks[j + 1] and toks[j + 1].w == "from")) then return k end
      if tj and (tj.t == "n" or tj.t == "s" or tj.t == "b") and toks[j + 1] and toks[j + 1].t == "," then
        for m = j + 2, n do if toks[m].w == "from" or toks[m].t == "c" or m == n then return k end end
      end
    elseif tt == ";" and k > 1 then
      local j = nextnc(toks, k + 1)
      local tj = j and toks[j]
      local need = tj and STATEMENT[tj.w]
      if need == true then
        local j2 = nextnc(toks, j + 1)
        if tj.w == "shutdown" or tj.w == "waitfor" or (j2 and toks[j2].t ~= "b") or (j2 and (find(toks[j2].w or "", "^xp_") or find(toks[j2].w or "", "^sp_") or toks[j2].w == "master")) then return k end
        if tj.w == "declare" and j2 and toks[j2].t == "v" then return k end
      elseif type(need) == "table" then
        local j2 = nextnc(toks, j + 1)
        if j2 and need[toks[j2].w] then return k end
      elseif need == "b" then
        local j2 = nextnc(toks, j + 1)
        local j3 = j2 and nextnc(toks, j2 + 1)
        if j3 and toks[j3].w == "set" then return k end
      end
    elseif tt == "v" and sub(t.w or "", 1, 2) == "@@" then
      return k
    end
  end
  -- A value closing the application's literal: what follows it right away.
  if quote then
    local j = 2
    -- ') or ('a'='a: the literal closes, then parentheses the application opened
    while toks[j] and toks[j].t == ")" do j = j + 1 end
    local tj = toks[j]
    if tj then
      if tj.t == "c" then return j end
      if tj.t == "&" then
        local a0 = j + 1
        while toks[a0] and toks[a0].t == "(" do a0 = a0 + 1 end
        if a0 > j + 1 then j = a0 - 1 end
        local a = toks[j + 1]
        if a and a.t == "f" then return j end
        if a and OPERAND[a.t] then
          local o = toks[j + 2]
          if o and o.t == "o" and toks[j + 3] and OPERAND[toks[j + 3].t] then return j end
          if o and (o.t == "c" or o.t == ";") then return j end
          if not o and (a.t == "n") then return j end
        end
      elseif tj.t == ";" then
        return j
      elseif tj.t == "o" and tj.w ~= "-" and toks[j + 1] and (toks[j + 1].t == "s" or toks[j + 1].t == "n") then
        if toks[j + 2] == nil or toks[j + 2].t == "&" or toks[j + 2].t == "c" or toks[j + 1].t == "s" then return j end
      elseif (tj.w == "order" or tj.w == "group") and toks[j + 1] and toks[j + 1].w == "by" then
        local x, y = toks[j + 2], toks[j + 3]
        if x and (x.t == "n" or (x.t == "b" and (not y or y.t == "c" or y.t == ","))) then return j end
      elseif tj.w == "having" or tj.w == "limit" then
        return j
      end
    end
  else
    -- As written: a call of a SQL function on literals (char(49,50)), a number, then
    -- AND/OR with a comparison or a call; a number then ORDER BY.
    local a = toks[1]
    if a and a.t == "f" and toks[2] and toks[2].t == "(" and toks[3]
      and (toks[3].t == "n" or toks[3].t == "s" or toks[3].t == "v") and toks[4]
      and (toks[4].t == "," or toks[4].t == ")") then
      -- the call closes, and SQL (or nothing) follows it: not "count(3) apples"
      local m = 3
      while toks[m] and toks[m].t ~= ")" do m = m + 1 end
      local after = toks[m] and toks[m + 1]
      if toks[m] and (not after or after.t == "c" or after.t == "&" or after.t == "o" or after.t == ";") then
        return 1
      end
    end
    if a and (a.t == "n" or a.t == "s") then
      local j = 2
      local tj = toks[j]
      if tj and tj.t == "&" then
        local x = toks[j + 1]
        if x and x.t == "f" then return j end
        if x and OPERAND[x.t] and toks[j + 2] and toks[j + 2].t == "o" and toks[j + 3] and OPERAND[toks[j + 3].t] then
          return j
        end
      elseif tj and (tj.w == "order" or tj.w == "group") and toks[j + 1] and toks[j + 1].w == "by" then
        return j
      end
    end
  end
  return nil
end

local function fingerprint(toks, k)
  local out = {}
  for m = k, math.min(#toks, k + 5) do out[#out + 1] = toks[m].t end
  return table.concat(out)
end

-- Can the pass "as written" (attack_at without a quote) find anything in v? Only with one
-- of: a parenthesis (every call, "(select"), ";", "@@", the words UNION, SELECT or WAITFOR,
-- or a first token that is a number or a literal (1 AND 1=1, 'a' OR ...). A byte test, so
-- that ordinary values (a User-Agent without those, a cookie, a name) skip the tokenizer;
-- it only ever answers yes when unsure (a leading comment or MySQL's /*! marker).
local NSTART = { ["null"] = true, ["true"] = true, ["false"] = true }
local function written_may_lua(v)
  if find(v, "[(;@]") then return true end
  local lv = lower(v)
  if find(lv, "union", 1, true) or find(lv, "select", 1, true) or find(lv, "waitfor", 1, true) then
    return true
  end
  local i, n = 1, #v
  while i <= n do
    local c = byte(v, i)
    if c > 32 and c ~= 0xA0 then break end
    i = i + 1
  end
  if i > n then return false end
  local c = byte(v, i)
  -- a digit, . ' " / *: a number, a literal or a comment marker may come first
  if (c >= 48 and c <= 57) or c == 46 or c == 39 or c == 34 or c == 47 or c == 42 then return true end
  if (c >= 65 and c <= 90) or (c >= 97 and c <= 122) or c == 95 or c >= 128 then
    -- a word: a number only when it is NULL, TRUE or FALSE
    local w = match(lv, "^[%w_$\128-\255]+", i)
    return NSTART[w] == true
  end
  return false
end

M._written_may_lua = written_may_lua
-- The same question in C (engine/waf_detect.c) when the engine or lp_native has it: no
-- lower-cased copy of the value.
local written_may = written_may_lua
do
  local W = require("luaproxy.waf.hs").native
  if W and pcall(function() return W.lp_ffi_waf_sql_written_may end) then
    written_may = function(v) return W.lp_ffi_waf_sql_written_may(v, #v) ~= 0 end
  end
end
M._written_may = written_may

local QUOTES = { false, "'", '"' }

-- from, to of the injected SQL and a fingerprint; nil for anything else.
function M.sqli(v)
  if #v < 2 or not find(v, "[%s'\"();,=@#%-*/<>|&]") then return nil end
  if #v > 4096 then v = sub(v, 1, 4096) end
  for qi = 1, 3 do
    local q = QUOTES[qi]
    if (q and find(v, q, 1, true)) or (not q and written_may(v)) then
      local toks = sql_tokens(v, q or nil)
      if toks then
        local k = attack_at(toks, q)
        if k then return toks[k].a, toks[#toks].b, fingerprint(toks, k) end
      end
    end
  end
  return nil
end

---------------------------------------------------------------------------------------------
-- HTML

local BAD_TAGS = {
  script = true, iframe = true, frame = true, frameset = true, object = true, embed = true,
  applet = true, base = true, svg = true, math = true, meta = true, link = true, style = true,
  xml = true, xss = true, import = true, isindex = true, template = true, portal = true,
  animate = true, set = true, handler = true, listener = true, vmlframe = true,
}
local URL_ATTRS = { href = true, src = true, action = true, formaction = true, data = true,
  ["xlink:href"] = true, background = true, lowsrc = true, dynsrc = true, poster = true,
  codebase = true, srcdoc = true, from = true, to = true, values = true, by = true }

local function decode_entities(s)
  s = gsub(s, "&#[xX](%x+);?", function(h) local c = tonumber(h, 16); return c and c < 128 and string.char(c) or "" end)
  s = gsub(s, "&#(%d+);?", function(d) local c = tonumber(d); return c and c < 128 and string.char(c) or "" end)
  s = gsub(s, "&[cC][oO][lL][oO][nN];", ":")
  s = gsub(s, "&[tT][aA][bB];", "")
  s = gsub(s, "&[nN][eE][wW][lL][iI][nN][eE];", "")
  return s
end

local function bad_url(val)
  local u = lower(gsub(decode_entities(val), "[%z\1-\32]", ""))
  return find(u, "^javascript:") or find(u, "^vbscript:") or find(u, "^data:text/html")
    or find(u, "^data:image/svg") or find(u, "^livescript:")
end

-- Scans attributes from position i (inside a tag); returns the position of a dangerous one.
local function bad_attrs(v, i)
  local n = #v
  while i <= n do
    local c = byte(v, i)
    if c == 62 then return nil, i + 1 end -- >
    if c <= 32 or c == 47 or c == 34 or c == 39 then
      i = i + 1
    else
      local a, b = find(v, "^[^%s/>=]+", i)
      if not a then return nil, i + 1 end
      local name = lower(sub(v, a, b))
      i = b + 1
      local val = ""
      local e = find(v, "^%s*=%s*", i)
      if e then
        local _, eb = find(v, "^%s*=%s*", i)
        i = eb + 1
        local q = byte(v, i)
        if q == 34 or q == 39 or q == 96 then
          local close = find(v, string.char(q), i + 1, true) or n + 1
          val = sub(v, i + 1, close - 1)
          i = close + 1
        else
          local _, vb = find(v, "^[^%s>]*", i)
          val = sub(v, i, vb)
          i = vb + 1
        end
      end
      if sub(name, 1, 2) == "on" and #name > 2 and e then return a end
      if URL_ATTRS[name] and bad_url(val) then return a end
      if name == "style" then
        local sv = lower(decode_entities(val))
        if find(sv, "expression%s*%(") or find(sv, "url%s*%(%s*['\"]?%s*javascript:") or find(sv, "behavior%s*:") then
          return a
        end
      end
    end
  end
  return nil, i
end

-- Parses v as HTML text from position i.
local function html_scan(v, i)
  local n = #v
  while i <= n do
    local lt = find(v, "<", i, true)
    if not lt then return nil end
    local a, b, slash, tag = find(v, "^<%s*(/?)%s*([%a][%w:%-]*)", lt)
    if a then
      local t = lower(tag)
      if slash == "" and (BAD_TAGS[t] or BAD_TAGS[match(t, "[^:]*$")]) then return lt end
      local bad, nx = bad_attrs(v, b + 1)
      if bad then return bad end
      i = nx
    elseif find(v, "^<!%-%-", lt) then
      local e = find(v, "-->", lt + 4, true)
      i = e and e + 3 or n + 1
    elseif find(v, "^<[!?]", lt) then
      local e = find(v, ">", lt, true)
      -- <!ENTITY / <?xml: markup no comment form needs
      if find(lower(sub(v, lt, lt + 9)), "^<!entity") or find(lower(sub(v, lt, lt + 5)), "^<%?xml") then return lt end
      i = e and e + 1 or n + 1
    else
      i = lt + 1
    end
  end
  return nil
end

-- from, to of the markup; nil for anything else.
function M.xss(v)
  if #v > 65536 then v = sub(v, 1, 65536) end
  -- The whole value a script URL with code after the scheme ("javascript: the good
  -- parts" is a book title)
  -- (a script URL needs ":", written or as an entity: "&colon;", "&#58;")
  if find(v, "[(`=]") and find(v, "[:&]") and bad_url(v) then return 1, #v end
  if not find(v, "[<\"'=]") then return nil end
  local at = html_scan(v, 1)
  if at then return at, #v end
  -- As if the value started inside an attribute value of the application's tag.
  for _, q in ipairs({ '"', "'" }) do
    local close = find(v, q, 1, true)
    if close then
      local bad, nx = bad_attrs(v, close + 1)
      if bad then return bad, #v end
      at = html_scan(v, nx or close + 1)
      if at then return at, #v end
    end
  end
  return nil
end

return M
