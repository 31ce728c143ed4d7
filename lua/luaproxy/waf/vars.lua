-- waf variables: what rules look at in a request, gathered lazily (a collection is built
-- the first time a rule needs it, once per request) into { n, names = {}, values = {} }.
-- Bodies are parsed as what they declare (form, JSON, multipart, XML) so that each value is
-- inspected as the thing it is: a JSON document's structure, or a GraphQL query's
-- punctuation, is never a value. Docs: docs/plugins/waf.md, "Variables".
local T = require "luaproxy.waf.transforms"
local G = require "luaproxy.waf.graphql"
local X = require "luaproxy.waf.xml"
local urldecode, lower = T.urldecode, string.lower
local byte, find, sub, match, gmatch = string.byte, string.find, string.sub, string.match,
  string.gmatch
local type, pairs, ipairs, tostring, pcall = type, pairs, ipairs, tostring, pcall
local new_tab
do
  local ok, tnew = pcall(require, "table.new")
  new_tab = ok and tnew or function() return {} end
end

local M = {}

-- Collections a target may name. `names`: the collection whose names these are.
M.BASE = {
  method = true, path = true, uri = true, query_string = true, query_args = true,
  body_args = true, headers = true, cookies = true, files = true, body = true,
  body_error = true,
  -- ModSecurity's variables the OWASP Core Rule Set reads (issue #20; luaproxy/waf/seclang.lua)
  basename = true, request_line = true, protocol = true, body_length = true,
  args_combined_size = true, files_names = true, files_combined_size = true,
  remote_addr = true, reqbody_processor = true, body_error_flag = true,
  multipart_part_headers = true, unique_id = true, duration = true,
  -- an XML body (luaproxy/waf/xml.lua): "/*", the root element's string value, and "//@*",
  -- each attribute's value, as ModSecurity's XML:/* and XML://@* give them
  xml = true,
}
M.NAMES = { query_arg_names = "query_args", body_arg_names = "body_args",
            header_names = "headers", cookie_names = "cookies" }
-- Shorthands: a target naming one of these means each of the listed collections.
M.ALIAS = { args = { "query_args", "body_args" }, arg_names = { "query_arg_names", "body_arg_names" } }
-- Collections that need the body read.
M.BODY = { body_args = true, files = true, body = true, body_error = true,
           body_arg_names = true, body_length = true, files_names = true,
           files_combined_size = true, reqbody_processor = true, body_error_flag = true,
           multipart_part_headers = true, args_combined_size = true, xml = true }

-- size: room for that many values before the lists grow (grown from empty, a browser GET's
-- 8 headers, 5 cookies and 4 arguments were reallocated three or four times per list).
local function new(size)
  return { n = 0, names = new_tab(size or 0, 0), values = new_tab(size or 0, 0) }
end

-- Read-only tables shared by every request (a collection is never changed once built: the
-- engine only reads them). A GET's empty body collections and its one-value collections
-- made three tables each per request. Each is an empty proxy reading through to its
-- contents, so that a write fails however it is made (__newindex alone does not fire for
-- a key the table holds), its names and values lists as well as itself.
local function read_only(t)
  return setmetatable({}, {
    __index = t,
    __newindex = function() error("waf vars: a shared collection is read-only", 2) end,
    __metatable = false,
  })
end
local NONE = read_only({})
local EMPTY = read_only({ n = 0, names = NONE, values = NONE })
local ONE_NAME = read_only({ "" }) -- the names of a one-value collection

-- One table, its own values list (values[1] is its [1]): two tables per one-value
-- collection made some twenty per browser GET. (values = false in the constructor: it
-- makes room in the hash part for the key set after.)
local function one(value)
  local c = { value, n = 1, names = ONE_NAME, values = false }
  c.values = c
  return c
end
local ONE_EMPTY = read_only({ n = 1, names = ONE_NAME, values = read_only({ "" }) })
local ONE_ZERO = read_only({ n = 1, names = ONE_NAME, values = read_only({ "0" }) })

local function add(c, name, value, max)
  local n = c.n
  if n >= max then
    c.truncated = true
    return
  end
  n = n + 1
  c.n = n
  c.names[n] = name
  c.values[n] = value
end

-- a=1&b=2, decoded tolerantly (a bad %-escape stays as written).
local add_value -- below: a value that is a JSON document goes in as its leaves

-- (Plain finds, not gmatch: LuaJIT compiles those, and runs patterns in its matcher.)
-- The next "=" is kept from pair to pair, found again only once passed: searched for at
-- each pair, a&a&a&...&b=1 looked at the rest of the text each time (quadratic: 1 MiB,
-- 3 s). Past max_args nothing more is read: the collection is marked truncated, which is
-- a body error (State:coll, "body_error"). gql: a `query` argument may be a GraphQL request
-- sent by GET (gql_arg).
local gql_arg, graphql_get -- below
local function same(x) return x end
local function parse_form(c, s, max, gql)
  local pos, len = 1, #s
  local eq = 0
  -- (a text without "%" or "+" decodes to itself: asked once, not twice per name and value)
  local decode = (find(s, "%", 1, true) or find(s, "+", 1, true)) and urldecode or same
  while pos <= len do
    local amp = find(s, "&", pos, true) or len + 1
    if amp > pos then -- (empty pairs, a&&b, are skipped)
      if c.n >= max then
        c.truncated = true
        return
      end
      if eq < pos then eq = find(s, "=", pos, true) or len + 1 end
      if eq < amp then
        local name, v = decode(sub(s, pos, eq - 1)), decode(sub(s, eq + 1, amp - 1))
        if not (gql and name == "query" and gql_arg(c, v, max)) then add_value(c, name, v, max) end
      else
        add(c, decode(sub(s, pos, amp - 1)), "", max)
      end
    end
    pos = amp + 1
  end
end
M.parse_form = parse_form

-- A GraphQL document's string literals, decoded (luaproxy/waf/graphql.lua); false, and
-- nothing added, when q is no GraphQL document after all (the caller adds it whole).
local function graphql_strings(c, name, q, max) return G.strings(c, name, q, max, add) end
local looks_graphql = G.looks

-- A GraphQL request sent by GET (Apollo's, express-graphql's: ?query=...&variables=...) read
-- as the same request POSTed as JSON is: the `query` argument's string literals when it
-- parses as an executable document (true), else nothing added (false: the caller adds it
-- whole, as any value). Its `variables` and `extensions` are JSON documents, read as their
-- leaves like any argument holding one (add_value).
gql_arg = function(c, v, max) return looks_graphql(v) and graphql_strings(c, "query", v, max) end

-- Whether a query string's `query` argument may be a GraphQL document: on a path whose last
-- segment names GraphQL (/graphql, /api/gql), or beside an argument only a GraphQL request
-- has. Elsewhere `query` is a search term as often as not, and is inspected whole. (These
-- hints are the client's: read as GraphQL, a document still gives its names, graphql.lua.)
-- (Patterns, not lower() and "&" .. qs: nothing is allocated for the query strings of
-- every request. Each pattern only once a plain find, which LuaJIT compiles, found what it
-- needs: a pattern runs in a call out of the trace, and most paths hold no q.)
graphql_get = function(path, qs)
  if (find(path, "q", 1, true) or find(path, "Q", 1, true))
    and (find(path, "[gG][rR][aA][pP][hH][qQ][lL][^/]*/?$") or find(path, "[gG][qQ][lL][^/]*/?$")) then
    return true
  end
  -- the argument first (at 1), or after an "&"
  local at = find(qs, "operationName=", 1, true)
  if at and (at == 1 or find(qs, "&operationName=", 1, true)) then return true end
  at = find(qs, "variables=", 1, true)
  if at and (at == 1 or find(qs, "&variables=", 1, true)) then return true end
  at = find(qs, "extensions=", 1, true)
  return at ~= nil and (at == 1 or find(qs, "&extensions=", 1, true) ~= nil)
end

-- Fallback for a document the scanner below does not follow (what cjson takes beyond JSON:
-- nan, inf): the decoded table, keys sorted so that the order is the same at every run.
local function key_order(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return ta == "number" end
  return a < b
end

-- gql: v may be a GraphQL request (json_leaves: the body's root, or an element of an array
-- at its root, a batch).
local function walk(c, v, path, max, depth, gql)
  local t = type(v)
  if t == "table" then
    if depth > 64 then
      c.too_deep = true
      return
    end
    local prefix = path == "" and "" or path .. "."
    gql = gql and type(v.query) == "string" and looks_graphql(v.query)
    gql = gql and graphql_strings(c, prefix .. "query", v.query, max)
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, key_order)
    for _, k in ipairs(keys) do
      if not (gql and k == "query") then
        -- (cjson gives an array's keys as numbers, an object's as strings)
        walk(c, v[k], prefix .. tostring(k), max, depth + 1, depth == 0 and type(k) == "number")
      end
    end
  elseif t == "string" then
    add(c, path, v, max)
  elseif t == "number" or t == "boolean" then
    add(c, path, tostring(v), max)
  end
  -- null (a lightuserdata) is no value.
end

-- The leaves of a JSON text that cjson decoded, in document order (pairs() order changes
-- from run to run, and so did which values a capped collection kept, and the order of the
-- matches): each string, number and boolean as a value named by its path (a.b.1.c, arrays
-- counted from 1), like walk() names them; a repeated key gives each of its values. A
-- container deeper than 64 levels is not looked into (c.too_deep: a body error). Strings with escapes and numbers go
-- through cjson itself, so a value reads as cjson reads it. Returns nil for a text it does
-- not follow (walk() then reads the decoded table).
local decode_one -- cjson.decode, for one string or number token

-- The closing quote of the string opening at i. (The loops are off the common path: a
-- loop in a function the scanner calls makes its trace give up, and then be blacklisted.)
local function str_end_escaped(s, j)
  while true do
    local q = find(s, '"', j, true)
    if not q then return nil end
    local k = q - 1
    while byte(s, k) == 92 do k = k - 1 end
    if (q - 1 - k) % 2 == 0 then return q end
    j = q + 1
  end
end
local function str_end(s, i)
  local q = find(s, '"', i + 1, true)
  if q and byte(s, q - 1) == 92 then return str_end_escaped(s, i + 1) end
  return q
end

-- The string from the quote at i to the one at q, unescaped as cjson does.
local function str(st, i, q)
  local s, bs = st.s, st.bs
  if bs and bs < i then
    bs = find(s, "\\", i, true)
    st.bs = bs
  end
  if not bs or bs > q then return (sub(s, i + 1, q - 1)) end
  local ok, v = pcall(decode_one, sub(s, i, q))
  if ok and type(v) == "string" then return v end
  return nil
end

-- The first byte from i on that is not JSON white space, and its position.
local function ws(s, i)
  local b = byte(s, i)
  if b == 32 or b == 9 or b == 10 or b == 13 then
    i = find(s, "[^ \t\n\r]", i) or #s + 1
    b = byte(s, i)
  end
  return i, b
end

local VALUE, AFTER, MEMBER = 0, 1, 2
local DELIM = { [44] = true, [93] = true, [125] = true, [32] = true, [9] = true, [10] = true, [13] = true }

-- One JSON value at i and what it contains; returns the position after it, or nil. One
-- loop, a state machine with its own stack of open containers, and no loop in what it
-- calls on the common path: traces follow neither recursion nor inner loops (a recursive
-- scanner was blacklisted and ran interpreted).
local function scan(c, s, i, path, max, depth0, st, doc)
  -- per open container, level L: its path and ".", object or array, members so far, the
  -- emit to restore at its end, and cjson's table of it
  local pfx, isobj, cnt, emits, tbls = {}, {}, {}, {}, {}
  local L = 0
  local cur, emit = path, true -- the path of the value read next; emit: not too deep
  local curv = doc -- cjson's reading of the value read next, when known
  local state = VALUE
  while true do
    local b
    i, b = ws(s, i)
    if state == AFTER then
      -- after a value: the next member of its container, or the container's end
      if L == 0 then return i end
      if b == 44 then -- ,
        i = i + 1
        state = MEMBER
      elseif b == (isobj[L] and 125 or 93) then
        i = i + 1
        emit = emits[L]
        L = L - 1
      else
        return nil
      end
    elseif state == MEMBER then
      -- a member of the container at level L: its name, or its index
      state = VALUE
      if isobj[L] then
        if b ~= 34 then return nil end
        local q = str_end(s, i)
        if not q then return nil end
        local name = str(st, i, q)
        if not name then return nil end
        i, b = ws(s, q + 1)
        if b ~= 58 then return nil end -- :
        i = i + 1
        local p = pfx[L]
        if name == "query" and depth0 == 0 and (L == 1 or L == 2 and not isobj[1]) then
          -- a GraphQL document: its string literals, not its syntax. (Only at the body's
          -- root, or in an element of an array there, a batch: not under an empty key, nor
          -- in an argument or cookie with an empty name.)
          local j, jb = ws(s, i)
          if jb == 34 then
            local q2 = str_end(s, j)
            local v = q2 and str(st, j, q2)
            if v and looks_graphql(v) then
              if emit and not graphql_strings(c, p .. "query", v, max) then
                add(c, p .. "query", v, max)
              end
              i = q2 + 1
              state = AFTER
            end
          end
        end
        cur = p .. name
        local t = tbls[L]
        curv = t and t[name]
      else
        local k = cnt[L] + 1
        cnt[L] = k
        cur = pfx[L] .. k
        local t = tbls[L]
        curv = t and t[k]
      end
    elseif b == 123 or b == 91 then -- { or [
      L = L + 1
      emits[L] = emit
      if depth0 + L - 1 > 64 and emit then
        emit = false
        c.too_deep = true
      end
      local obj = b == 123
      isobj[L], cnt[L] = obj, 0
      tbls[L] = type(curv) == "table" and curv or false
      pfx[L] = cur == "" and "" or cur .. "."
      i, b = ws(s, i + 1)
      if b == (obj and 125 or 93) then -- empty
        i = i + 1
        emit = emits[L]
        L = L - 1
        state = AFTER
      else
        state = MEMBER
      end
    elseif b == 34 then -- "
      local q = str_end(s, i)
      if not q then return nil end
      local v = str(st, i, q)
      if not v then return nil end
      if emit then add(c, cur, v, max) end
      i = q + 1
      state = AFTER
    else
      -- a number, true, false or null. A number as cjson read it and written as tostring
      -- writes it (2, 1.99): no need to find its end and read it again.
      local t, j
      if type(curv) == "number" then
        t = tostring(curv)
        j = i + #t
        if sub(s, i, j - 1) ~= t or not DELIM[byte(s, j) or 44] then t = nil end
      end
      if t then
        if emit then add(c, cur, t, max) end
      else
        -- up to the next delimiter
        j = find(s, "[,%]} \t\n\r]", i) or #s + 1
        if j == i then return nil end
        local tok = sub(s, i, j - 1)
        if tok == "true" or tok == "false" then
          if emit then add(c, cur, tok, max) end
        elseif tok ~= "null" then
          local n = tonumber(tok)
          if not n then
            local ok, v = pcall(decode_one, tok)
            if not ok or type(v) ~= "number" then return nil end
            n = v
          end
          if emit then add(c, cur, tostring(n), max) end
        end
      end
      i = j
      state = AFTER
    end
  end
end

local function json_leaves(c, s, doc, path, max, depth)
  decode_one = decode_one or proxy.json.decode
  -- st.bs: the next backslash (a string before it has no escape). (A table, not upvalues:
  -- closures are not compiled.)
  local st = { s = s, bs = find(s, "\\", 1, true) }
  local n0, truncated, too_deep = c.n, c.truncated, c.too_deep
  local e = scan(c, s, 1, path, max, depth, st, doc)
  if e and ws(s, e) > #s then return end
  -- not followed: the values added so far go, the decoded table is walked instead
  for i = n0 + 1, c.n do c.names[i], c.values[i] = nil, nil end
  c.n, c.truncated, c.too_deep = n0, truncated, too_deep
  walk(c, doc, path, max, depth, depth == 0)
end

-- The JSON text without its lone surrogate escapes (\ud800 without its low half, or a low
-- half alone). cjson refuses them, but a browser's JSON.stringify sends one for a string cut
-- inside an emoji, and ModSecurity's parser takes them: a body error there refused ordinary
-- requests. Dropped, not read as U+FFFD: an application that drops them would read
-- "UNI\ud800ON SELECT" as UNION SELECT, and so must the rules. Only on cjson's error.
local function mend_surrogates(s)
  local out, n, last, i = {}, 0, 1, 1
  while true do
    local a = find(s, "\\u[dD][89a-fA-F]%x%x", i)
    if not a then break end
    local k = a - 1
    while byte(s, k) == 92 do k = k - 1 end
    i = a + 6
    if (a - 1 - k) % 2 == 0 then -- the backslash opens an escape (not an escaped one's)
      local h = tonumber(sub(s, a + 2, a + 5), 16)
      local lo = h < 0xDC00 and find(s, "^\\u[dD][c-fC-F]%x%x", a + 6)
      if lo then
        i = a + 12
      else
        n = n + 1
        out[n] = sub(s, last, a - 1)
        n = n + 1
        out[n] = ""
        last = a + 6
      end
    end
  end
  if n == 0 then return s end
  out[n + 1] = sub(s, last)
  return table.concat(out)
end
M.mend_surrogates = mend_surrogates

-- A value that is a JSON object or array (a cookie holding a cart, a query parameter
-- holding a filter) goes in as its leaves, named name.key.index: its braces and quotes are
-- the format's, not data. Anything else goes in as it is. (Not one with a NUL byte: cjson
-- reads no further than one, and what followed it, {"a":1}%00<attack>, went uninspected.
-- No JSON text holds one.)
add_value = function(c, name, v, max)
  local b = byte(v, 1)
  if (b == 123 or b == 91) and #v >= 2 and find(v, "^%s*[%[{].*[%]}]%s*$")
    and not find(v, "\0", 1, true) then
    local ok, doc = pcall(proxy.json.decode, v)
    if ok and type(doc) == "table" then
      json_leaves(c, v, doc, name, max, 1)
      return
    end
  end
  add(c, name, v, max)
end
M.add_value = add_value

-- The parameters of a header value (Content-Type, Content-Disposition) from s's byte i on:
-- `; name=value` pairs, each value a token or a quoted-string (its \" and \\ escapes
-- read), into names (lower case: a parameter's name is case-insensitive) and values.
-- Returns their count, or nil for text that is not such a list. Quoted-string aware: a
-- `; filename=y.jpg` inside x="..." is x's value, not a parameter (a field's value read
-- as a file's name went uninspected, and was cut out of a body over body_limit).
local function header_params(s, i, names, values, strict)
  local n, len = 0, #s
  while true do
    i = find(s, "[^ \t]", i)
    if not i then return n end
    if byte(s, i) ~= 59 then return nil end -- ";"
    i = find(s, "[^ \t]", i + 1)
    if not i then return n end
    if byte(s, i) ~= 59 then
      local _, ne = find(s, "^[^%c%s;=\"]+", i)
      if not ne then return nil end
      local name = lower(sub(s, i, ne))
      -- "=" right after the name: PHP reads `filename =` as another parameter's name
      if byte(s, ne + 1) ~= 61 then return nil end
      i = ne + 1
      i = find(s, "[^ \t]", i + 1) or len + 1
      local v
      if byte(s, i) == 34 then
        local out, k, from = {}, 0, i + 1
        while true do
          local q = find(s, '["\\]', from)
          if not q then return nil end
          k = k + 1
          out[k] = sub(s, from, q - 1)
          if byte(s, q) == 34 then
            i = q + 1
            break
          end
          local e = byte(s, q + 1)
          -- strict (Content-Disposition): PHP reads \\ as a backslash and the \" after it
          -- as an escaped quote, so `x="\\"; filename=...` hid the rest in x's value there
          if strict and e == 92 then return nil end
          if e == 34 or e == 92 then
            k = k + 1
            out[k] = sub(s, q + 1, q + 1)
            from = q + 2
          else
            k = k + 1
            out[k] = "\\" -- (a Windows path's backslash, as old browsers sent them)
            from = q + 1
          end
        end
        v = table.concat(out)
      else
        local e = find(s, ";", i, true) or len + 1
        local j = e - 1 -- (trailing white space: a byte walk, a pattern was quadratic)
        while j >= i and (byte(s, j) == 32 or byte(s, j) == 9) do j = j - 1 end
        v = sub(s, i, j)
        if find(v, '"', 1, true) then return nil end
        -- strict: PHP takes ' as a quote (x='; filename=a.txt' is one value there);
        -- filename*'s charset'language' is its own form
        if strict and name ~= "filename*" and find(v, "'", 1, true) then return nil end
        i = e
      end
      n = n + 1
      names[n], values[n] = name, v
    end
  end
end

-- filename*=charset'language'percent-encoded (RFC 5987), decoded; nil if not that form.
local function ext_value(v)
  local enc = match(v, "^[%w!#$&+^`{}~_.-]*'[^']*'(.*)$")
  if not enc then return nil end
  return (enc:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- A part's header lines (head: each ending in CRLF) read as headers: the name at the line's
-- start, case-insensitive, a line starting with white space continuing the one above.
-- Returns its field name, file name (nil for a field), second file name (filename*, when
-- both are given), or false, problem: a part that does not say once, plainly, what it is
-- (two Content-Disposition lines, one that does not parse, a bare CR or LF) is a body
-- error, not a guess (the first of two lines, a header named X-Content-Disposition, were
-- each taken for the part's, and an application reads the other).
local function part_disposition(head)
  if find(head, "[^\r]\n") or find(head, "\r[^\n]") or byte(head, 1) == 10 then
    return false, "multipart: a bare CR or LF in a part's headers"
  end
  local disp, last
  local pos, len = 1, #head
  while pos <= len do
    local e = find(head, "\r\n", pos, true)
    local b = byte(head, pos)
    if b == 32 or b == 9 then
      -- (RFC 7578 parts do not fold; joined, many such lines cost a copy each)
      return false, "multipart: a folded part header line"
    else
      local name, v = match(sub(head, pos, e - 1), "^([!-9;-~]+):(.*)$")
      if not name then return false, "multipart: bad part header line" end
      last = lower(name)
      if last == "content-disposition" then
        if disp then return false, "multipart: two Content-Disposition headers in a part" end
        disp = v
      end
    end
    pos = e + 2
  end
  if not disp then return false, "multipart: part without Content-Disposition" end
  local _, te, kind = find(disp, "^[ \t]*([^;%s]+)")
  if not kind or lower(kind) ~= "form-data" then
    return false, "multipart: Content-Disposition not form-data"
  end
  local names, values = {}, {}
  local n = header_params(disp, te + 1, names, values, true)
  if not n then return false, "multipart: bad Content-Disposition" end
  local field, file, file2
  for i = 1, n do
    local pn, v = names[i], values[i]
    if pn == "name" then
      if field then return false, "multipart: two names in a Content-Disposition" end
      field = v
    elseif pn == "filename" then
      if file then return false, "multipart: two filenames in a Content-Disposition" end
      file = v
    elseif pn == "filename*" then
      if file2 then return false, "multipart: two filename* in a Content-Disposition" end
      file2 = ext_value(v)
      if not file2 then return false, "multipart: bad filename*" end
    end
  end
  if not file and file2 then
    -- PHP and others read only filename: a part with filename* alone is their field
    return false, "multipart: filename* without filename"
  end
  return field or "", file, file2
end

-- The first delimiter of a body, from where it starts; nil, problem when there is none or
-- a bare LF (not CRLF) comes before it. Such a delimiter PHP reads as one (it looks for
-- "\n--boundary"), and ModSecurity flags (MULTIPART_LF_LINE): each is a body error, here,
-- in a part's content (next_part), and after the closing delimiter (epilogue).
local function first_delimiter(body, delim)
  local pos = find(body, delim, 1, true)
  if not pos then return nil, "multipart: no boundary" end
  if pos > 1 and byte(body, pos - 1) == 10 and (pos == 2 or byte(body, pos - 2) ~= 13) then
    return nil, "multipart: a delimiter after a bare LF"
  end
  -- at a line's start: PHP skips a preamble line holding it (x--B) and starts at the next
  if pos > 1 and byte(body, pos - 1) ~= 10 then
    return nil, "multipart: the boundary inside the preamble"
  end
  return pos
end

-- The epilogue after the closing delimiter ending at pos - 1: nil, problem if it holds a
-- delimiter (one find: a loop over each found would let an epilogue of them cost a
-- round each).
local function epilogue(body, delim, pos)
  if find(body, "\n" .. delim, pos, true) then
    return nil, "multipart: a delimiter after the closing delimiter"
  end
  return true
end

-- The multipart part after the delimiter ending at pos - 1: nil at the closing delimiter,
-- else its header lines, the blank line's position, its content's end (the next
-- delimiter's CRLF), its field name, its file name (nil for a field) and a second file
-- name (filename* beside filename); false, problem for a body that does not follow its
-- own boundary. (One reader for parse_multipart and without_files: the parts the rules
-- see are the parts the file check measured.)
local function next_part(body, delim, pos)
  if sub(body, pos, pos + 1) == "--" then return nil end
  if sub(body, pos, pos + 1) ~= "\r\n" then return false, "multipart: bad delimiter line" end
  local hend = find(body, "\r\n\r\n", pos, true)
  if not hend then return false, "multipart: part without a blank line" end
  local head = sub(body, pos + 2, hend + 1)
  -- a delimiter line among the headers (a boundary with ":"), or one opening the content:
  -- readers that split at each "\r\n--boundary" make another part of it
  if find(head, "\r\n" .. delim, 1, true) or sub(head, 1, #delim) == delim
    or sub(body, hend + 4, hend + 3 + #delim) == delim then
    return false, "multipart: a delimiter inside a part's headers"
  end
  local nxt = find(body, "\r\n" .. delim, hend + 4, true)
  if not nxt then return false, "multipart: part without an end" end
  -- (the first "\n--boundary" is nxt's, or one after a bare LF: a scan of the content
  -- the find above made, not of the body)
  if find(body, "\n" .. delim, hend + 4, true) <= nxt then
    return false, "multipart: a delimiter after a bare LF"
  end
  local field, file, file2 = part_disposition(head)
  if not field then return false, file end
  return head, hend, nxt, field, file, file2
end

-- One multipart/form-data body: fields into body_args, file names into files (files.bytes:
-- the file contents' size), each part's header lines into pheaders. Returns nil, problem
-- for a body that does not follow its own boundary. Past max_args (a field, a file name
-- or a header line that does not fit) it stops, the collection marked truncated (a body
-- error, State:body_errors), as parse_form does: read on, a body of tiny parts cost a
-- part's work per few bytes up to body_limit, for values never inspected.
local function parse_multipart(args, files, body, boundary, max, pheaders)
  local delim = "--" .. boundary
  local pos, perr = first_delimiter(body, delim)
  if not pos then return nil, perr end
  pos = pos + #delim
  files.bytes = 0
  while true do
    local head, hend, nxt, name, filename, filename2 = next_part(body, delim, pos)
    if head == nil then return epilogue(body, delim, pos) end
    if not head then return nil, hend end
    local c = filename and files or args
    if c.n >= max or (filename2 and c.n + 1 >= max) then
      c.truncated = true
      return true
    end
    if filename then
      add(c, name, filename, max)
      if filename2 then add(c, name, filename2, max) end
      files.bytes = files.bytes + nxt - hend - 4
    else
      add(c, name, sub(body, hend + 4, nxt - 1), max)
    end
    for hl in gmatch(head, "[^\r\n]+") do
      if pheaders.n >= max then
        pheaders.truncated = true
        return true
      end
      add(pheaders, "", hl, max)
    end
    pos = nxt + 2 + #delim
  end
end

-- The boundary of a multipart/form-data Content-Type (the client's case): nil for another
-- type; nil, problem for one without a single, plain boundary parameter (a second one,
-- or a quoted xboundary="..." read as it, and the WAF split the body where the
-- application did not).
local function multipart_boundary(ct)
  if not ct or not find(lower(ct), "^[ \t]*multipart/form%-data") then return nil end

  local names, values = {}, {}
  local n = header_params(ct, find(ct, ";", 1, true) or #ct + 1, names, values)
  if not n then return nil, "multipart: bad Content-Type parameters" end
  local b
  for i = 1, n do
    if names[i] == "boundary" then
      if b then return nil, "multipart: two boundary parameters" end
      b = values[i]
    end
  end
  if not b or b == "" then return nil, "multipart: no boundary parameter" end
  -- PHP takes what follows the text's first "boundary" (case-sensitive, else in any
  -- case), wherever it stands (xboundary=, inside a quoted value): it must be this
  -- parameter, or the two split the body apart
  local a = find(ct, "boundary", 1, true) or find(lower(ct), "boundary", 1, true)
  local pre = byte(ct, a - 1)
  if not (pre == 59 or pre == 32 or pre == 9) or lower(sub(ct, a, a + 8)) ~= "boundary="
    or (sub(ct, a + 9, a + 8 + #b) ~= b and sub(ct, a + 9, a + 10 + #b) ~= '"' .. b .. '"') then
    return nil, "multipart: \"boundary\" elsewhere in Content-Type before its parameter"
  end
  return b
end
M.multipart_boundary = multipart_boundary

-- A multipart/form-data body with its files' contents left out (each file part kept with
-- its headers and name, its content empty), and the bytes left out: what the rules
-- inspect of a body over body_limit (the waf plugin's body_limit_files), as ModSecurity
-- inspects a file's name, never its content. Everything else (preamble, delimiters, part
-- headers, field values, epilogue) stays, so the result parses as the original did, and
-- its length is what must fit body_limit. nil, problem for a body that does not follow
-- its boundary: the caller treats it as over the limit, not as one without files. false
-- as soon as what is kept passes max: the parts read are bounded by max (each keeps its
-- header), not by the body (12.5 MB of tiny parts, each a part's work).
function M.without_files(body, boundary, max)
  local delim = "--" .. boundary
  local pos, perr = first_delimiter(body, delim)
  if not pos then return nil, perr end
  pos = pos + #delim
  local keep, k, from, cut = {}, 0, 1, 0
  while true do
    if pos - 1 - cut > max then return false end
    local head, hend, nxt, _, filename = next_part(body, delim, pos)
    if head == nil then
      local ok, eerr = epilogue(body, delim, pos)
      if not ok then return nil, eerr end
      break
    end
    if not head then return nil, hend end
    if filename then
      k = k + 1
      keep[k] = sub(body, from, hend + 3)
      from = nxt
      cut = cut + nxt - hend - 4
    end
    pos = nxt + 2 + #delim
  end
  if #body - cut > max then return false end
  if cut == 0 then return body, 0 end
  keep[k + 1] = sub(body, from)
  return table.concat(keep), cut
end

local function space(b) return b == 32 or (b >= 9 and b <= 13) end

-- Cookie: a=1; b=2: each pair's name and value trimmed of white space; a pair without "="
-- is a name with an empty value. (Plain finds and bytes: the patterns this did with
-- gmatch and a lazy match cost a browser GET's five cookies 87,000 instructions.)
-- eq: the first "=" at or after i (parse_cookies keeps it from pair to pair).
local function cookie(ck, s, i, j, max, eq)
  if eq <= j then
    local ki, kj, vi, vj = i, eq - 1, eq + 1, j
    -- (the space after "; " skipped before the loop: a loop that goes round once made the
    -- trace of the whole parse give up, and it ran interpreted)
    if ki <= kj and byte(s, ki) == 32 then ki = ki + 1 end
    while ki <= kj and space(byte(s, ki)) do ki = ki + 1 end
    while kj >= ki and space(byte(s, kj)) do kj = kj - 1 end
    while vi <= vj and space(byte(s, vi)) do vi = vi + 1 end
    while vj >= vi and space(byte(s, vj)) do vj = vj - 1 end
    local k, v = sub(s, ki, kj), sub(s, vi, vj)
    local b = byte(v, 1)
    if b == 37 or b == 123 or b == 91 then
      -- %7B... (a URL-encoded JSON document) is looked at decoded
      local d = b == 37 and urldecode(v) or v
      local db = byte(d, 1)
      if db == 123 or db == 91 then add_value(ck, k, d, max) else add(ck, k, v, max) end
    else
      add(ck, k, v, max)
    end
  else
    while i <= j and space(byte(s, i)) do i = i + 1 end
    while j >= i and space(byte(s, j)) do j = j - 1 end
    add(ck, sub(s, i, j), "", max)
  end
end

-- (The "=" kept and max_args as parse_form's.)
local function parse_cookies(ck, s, max)
  local pos, len = 1, #s
  local eq = 0
  while pos <= len do
    local semi = find(s, ";", pos, true) or len + 1
    if semi > pos then
      if ck.n >= max then
        ck.truncated = true
        return
      end
      if eq < pos then eq = find(s, "=", pos, true) or len + 1 end
      cookie(ck, s, pos, semi - 1, max, eq)
    end
    pos = semi + 1
  end
end
M.parse_cookies = parse_cookies

-- The request's variable state for one evaluation.
local State = {}
local protocol -- below
State.__index = State

function M.new(req, opts)
  -- (made to size: CRS builds some 25 collections per request; grown from empty, the
  -- table was rehashed five times)
  return setmetatable({ req = req, max = opts.max_args, colls = new_tab(0, 32) }, State)
end

function State:body_collections()
  local colls = self.colls
  local body = self.body
  if not body or body == "" then
    colls.body_args, colls.files, colls.body = EMPTY, EMPTY, EMPTY
    colls.multipart_part_headers, colls.xml = EMPTY, EMPTY
    colls.reqbody_processor, colls.body_length = ONE_EMPTY, ONE_ZERO
    return
  end
  local args, files, ph = new(), new(), new()
  colls.body_args, colls.files, colls.body = args, files, one(body)
  colls.multipart_part_headers, colls.xml = ph, EMPTY
  colls.reqbody_processor = one("")
  colls.body_length = one(tostring(self.body_length or #body)) -- (the whole body's, files left out or not)
  local ct = lower(self.req:header("content-type") or "")
  local proc = self.body_processor
  if proc == "JSON" then ct = "application/json"
  elseif proc == "URLENCODED" then ct = "application/x-www-form-urlencoded"
  elseif proc == "XML" then ct = "application/xml" end
  local problem
  if find(ct, "^application/x%-www%-form%-urlencoded") then
    colls.reqbody_processor.values[1] = "URLENCODED"
    parse_form(args, body, self.max)
  elseif find(ct, "^application/[%w.+-]*json") then
    colls.reqbody_processor.values[1] = "JSON"
    local text = body
    local ok, doc = pcall(proxy.json.decode, text)
    if not ok and find(tostring(doc), "invalid unicode escape", 1, true) then
      text = mend_surrogates(body)
      if text ~= body then ok, doc = pcall(proxy.json.decode, text) end
    end
    if ok and find(text, "\0", 1, true) then
      -- cjson reads no further than a NUL byte (none is JSON): what followed it went
      -- uninspected, {"a":1}\0<attack>
      problem = "JSON: a NUL byte"
    elseif ok then
      json_leaves(args, text, doc, "", self.max, 0)
    else
      -- (cjson's "at character N" counts bytes from 1)
      problem = "JSON: " .. tostring(doc):gsub("^.-: ", ""):gsub("at character (%d+)", "at byte %1")
    end
  elseif find(ct, "^multipart/form%-data") then
    colls.reqbody_processor.values[1] = "MULTIPART"
    -- (the original header: the boundary's case is the client's)
    -- (read_body's reading when it made one: self.boundary, a string or false)
    local b, berr = self.boundary, self.boundary_error
    if b == nil then b, berr = multipart_boundary(self.req:header("content-type")) end
    if not b then
      problem = berr or "multipart: no boundary parameter"
    else
      local ok, perr = parse_multipart(args, files, body, b, self.max, ph)
      if not ok then problem = perr end
    end
  elseif find(ct, "^application/xml") or find(ct, "^text/xml") or find(ct, "^application/soap%+xml") then
    -- the types ModSecurity's recommended rule 200000 gives its XML processor
    colls.reqbody_processor.values[1] = "XML"
    local err = X.charset_problem(self.req:header("content-type"))
    local doc
    if not err then doc, err = X.read(body, self.max) end
    if doc then
      local xml = new()
      add(xml, "/*", doc.text, 1)
      for i = 1, #doc.attrs do add(xml, "//@*", doc.attrs[i], self.max + 1) end
      xml.truncated = doc.truncated
      colls.xml = xml
    else
      problem = err
    end
  end
  self.body_problem = problem
end

-- What the rules could not see whole: these collections over max_args, or holding JSON
-- nested deeper than 64. Each is a body error, as ModSecurity's SecArgumentsLimit and
-- SecRequestBodyJsonDepthLimit make one (REQBODY_ERROR; its recommended rules 200002 and
-- 200007 deny): unmarked, the values past the limit went uninspected, and a client chose
-- which (an attack after 1024 dummy arguments passed).
local WHOLE = { "body_args", "files", "multipart_part_headers", "query_args", "headers", "cookies",
                "xml" }

assert(#WHOLE == 7) -- (State:body_errors names each)

-- msg, with why collection `name` was cut short, if it was.
local function cut_short(self, msg, name)
  local c = self:coll(name)
  local p = c.truncated and name .. ": more than max_args (" .. self.max .. ") values"
    or c.too_deep and name .. ": JSON nested deeper than 64"
  if p then return msg and msg .. "; " .. p or p end
  return msg
end

-- body_error (why the request's values could not all be read: the body's parse problem,
-- then each collection cut short; one value, empty when none) and body_error_flag.
function State:body_errors()
  local colls = self.colls
  if not colls.body_args then self:body_collections() end
  local msg = self.body_problem
  -- (one call per collection, not a loop: the loop's trace, seven rounds once per request,
  -- gave up and ran interpreted)
  msg = cut_short(self, msg, WHOLE[1])
  msg = cut_short(self, msg, WHOLE[2])
  msg = cut_short(self, msg, WHOLE[3])
  msg = cut_short(self, msg, WHOLE[4])
  msg = cut_short(self, msg, WHOLE[5])
  msg = cut_short(self, msg, WHOLE[6])
  msg = cut_short(self, msg, WHOLE[7])
  if msg then
    colls.body_error, colls.body_error_flag = one(msg), one("1")
  else
    colls.body_error, colls.body_error_flag = EMPTY, ONE_ZERO
  end
end

local ARGS = { "query_args", "body_args" }

-- "HTTP/1.1" of http_version() 1.1, made once per version (tostring of a number is not
-- compiled, and a concatenation makes and interns a string).
local PROTOCOL = {}
protocol = function(v)
  local p = PROTOCOL[v]
  if not p then
    p = "HTTP/" .. tostring(v)
    if v ~= nil then PROTOCOL[v] = p end -- (a version the parser took: a few at most)
  end
  return p
end

-- The request's URI, asked of the request once (four collections start from it).
function State:uri()
  local u = self.uri_
  if not u then
    u = self.req:uri()
    self.uri_ = u
  end
  return u
end

-- Collection `name` (a base or a names collection), built on first use.
function State:coll(name)
  local c = self.colls[name]
  if c then return c end
  local req = self.req
  local base = M.NAMES[name]
  if base then
    local b = self:coll(base)
    -- (the names of none are none: a GET's body_arg_names)
    c = b == EMPTY and EMPTY or { n = b.n, names = b.names, values = b.names }
  elseif name == "method" then
    c = one(req:method())
  elseif name == "path" then
    c = one(req:path())
  elseif name == "uri" then
    c = one(self:uri())
  elseif name == "query_string" then
    local u = self:uri()
    local q = find(u, "?", 1, true)
    c = q and one(sub(u, q + 1)) or ONE_EMPTY
  elseif name == "query_args" then
    local u = self:uri()
    local q = find(u, "?", 1, true)
    if q then
      c = new(8)
      local qs = sub(u, q + 1)
      parse_form(c, qs, self.max, graphql_get(sub(u, 1, q - 1), qs))
    else
      c = EMPTY -- (read-only: nothing is added to a collection once built)
    end
  elseif name == "headers" or name == "cookies" then
    -- in the order they came (req:headers() is a hash table: its order changed from run
    -- to run)
    local ck = EMPTY -- (made at the first Cookie header: most API requests send none)
    local names, values = new_tab(16, 0), new_tab(16, 0)
    local n = req:header_list(names, values)
    local h = { n = n, names = names, values = values }
    if n > self.max then
      for i = n, self.max + 1, -1 do names[i], values[i] = nil, nil end
      h.n, h.truncated = self.max, true
    end
    for i = 1, h.n do
      if names[i] == "cookie" then
        if ck == EMPTY then ck = new(8) end
        parse_cookies(ck, values[i], self.max)
      end
    end
    self.colls.headers, self.colls.cookies = h, ck
    return self.colls[name]
  elseif name == "body_error" or name == "body_error_flag" then
    self:body_errors()
    return self.colls[name]
  elseif M.BODY[name] and name ~= "files_names" and name ~= "files_combined_size"
    and name ~= "args_combined_size" then
    self:body_collections()
    return self.colls[name]
  elseif name == "basename" then
    c = one(match(req:path(), "[^/]*$") or "")
  elseif name == "protocol" then
    c = one(protocol(req:http_version()))
  elseif name == "request_line" then
    c = one(req:method() .. " " .. self:uri() .. " " .. protocol(req:http_version()))
  elseif name == "remote_addr" then
    c = one(tostring(req:client_ip() or ""))
  elseif name == "files_names" then
    local f = self:coll("files")
    c = f == EMPTY and EMPTY or { n = f.n, names = f.names, values = f.names }
  elseif name == "files_combined_size" then
    -- (the contents read, and those read_body left out of a body over body_limit)
    local f = self:coll("files")
    local total = (f.bytes or 0) + (self.files_cut or 0)
    c = total == 0 and ONE_ZERO or one(tostring(total))
  elseif name == "args_combined_size" then
    local total = 0
    for _, cn in ipairs(ARGS) do
      local a = self:coll(cn)
      for i = 1, a.n do total = total + #a.names[i] + #a.values[i] end
    end
    c = one(tostring(total))
  elseif name == "unique_id" then
    c = one(tostring(req.ctx and req.ctx.request_id or ""))
  elseif name == "duration" then
    c = ONE_ZERO
  else
    error("waf: unknown collection " .. tostring(name))
  end
  self.colls[name] = c
  return c
end

return M
