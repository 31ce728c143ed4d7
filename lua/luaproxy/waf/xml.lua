-- waf: a small XML reader for request bodies, what ModSecurity's XML body processor gives
-- the rules: the root element's string value (XPath /*: every text node under it, CDATA
-- sections included, character and predefined entity references decoded) and its
-- attributes' values (//@*). It checks what makes a document malformed for libxml2 there
-- (tags that do not nest, a second root, text outside the root, a bad reference, nesting
-- past libxml2's 256 levels), so that a body the rules could not read is a body error,
-- as ModSecurity's REQBODY_ERROR is. It never expands a DTD's entities nor loads anything:
-- a DOCTYPE naming an external DTD is skipped (a reference to an entity it may declare stays
-- as written); one with an internal subset, or a declared encoding other than UTF-8, ASCII
-- or Latin-1, makes a body error (what the application reads could differ from the bytes).
-- One pass of plain finds over the text: linear in the body, bounded by body_limit.
-- Docs: docs/plugins/waf.md, "Targets (variables)".
local utf8 = require("luaproxy.waf.transforms")._utf8
local byte, find, sub, gsub, gmatch, match, lower, format = string.byte, string.find, string.sub,
  string.gsub, string.gmatch, string.match, string.lower, string.format
local concat = table.concat
local tonumber = tonumber

local M = {}

M.MAX_DEPTH = 256 -- libxml2's, without XML_PARSE_HUGE

local PREDEFINED = { lt = "<", gt = ">", amp = "&", apos = "'", quot = '"' }
-- Declared encodings whose bytes the rules read as they are.
local READABLE = { ["utf-8"] = true, utf8 = true, ["us-ascii"] = true, ascii = true,
                   ["iso-8859-1"] = true, ["latin1"] = true, ["iso_8859-1"] = true }

local function fail(why, at) return nil, format("XML: %s at byte %d", why, at) end
-- (a name the client chose, in a problem: at most 40 bytes of it)
local function cut(name) return #name > 40 and sub(name, 1, 40) .. "..." or name end

-- Text t (at byte `at` of the body) with its references decoded; nil, problem for a bad
-- one. dtd: the document has a DOCTYPE, whose entities a reference may name (kept as
-- written: never expanded).
local function decode(t, at, dtd)
  local a = find(t, "&", 1, true)
  if not a then return t end
  local out, n, i = {}, 0, 1
  while a do
    n = n + 1
    out[n] = sub(t, i, a - 1)
    local name, e = match(t, "^&([#%w._:%-]+);()", a)
    if not name then return fail("a & that starts no reference", at + a - 1) end
    local r
    if byte(name, 1) == 35 then -- #
      local h, d = match(name, "^#x(%x+)$"), match(name, "^#(%d+)$")
      local cp = h and #h <= 8 and tonumber(h, 16) or d and #d <= 10 and tonumber(d)
      -- (XML's Char: no NUL, no other C0 control but tab and line ends, no surrogate)
      if not cp or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF)
        or (cp < 32 and cp ~= 9 and cp ~= 10 and cp ~= 13) then
        return fail("a bad character reference &" .. cut(name) .. ";", at + a - 1)
      end
      r = utf8(cp)
    else
      r = PREDEFINED[name] or dtd and "&" .. name .. ";"
      if not r then return fail("an undefined entity &" .. cut(name) .. ";", at + a - 1) end
    end
    n = n + 1
    out[n] = r
    i = e
    a = find(t, "&", i, true)
  end
  n = n + 1
  out[n] = sub(t, i)
  return concat(out, "", 1, n)
end

-- The end (the position after its >) of the DOCTYPE at i, whose quoted literals may hold
-- a >; nil and why for one that has an internal subset (below) or no end.
local function doctype_end(s, i)
  local j = i + 9
  while true do
    local k = find(s, "[\"'%[%]<>]", j)
    if not k then return nil end
    local b = byte(s, k)
    if b == 34 or b == 39 then
      local q = find(s, b == 34 and '"' or "'", k + 1, true)
      if not q then return nil end
      j = q + 1
    elseif b == 62 then
      return k + 1
    elseif b == 91 then
      -- An internal subset declares entities the root's text may name, and holds literals,
      -- comments and processing instructions a reader must skip exactly as libxml2 does or
      -- lose the real root: <!DOCTYPE r [<!ENTITY x "1' UNION ...">]><r>&x;</r> reads as
      -- the SQL to the application. Nothing is ever expanded here, so such a document is
      -- one the rules could not read: a body error (ModSecurity's XML processor expands
      -- internal entities; a request API has no use for a DTD).
      return nil, "a DOCTYPE with an internal subset"
    else
      j = k + 1
    end
  end
end

-- Document s: { text = the root's string value, attrs = { values }, truncated = more
-- than max attributes (the rest not read) }, or nil, "XML: problem at byte N".
function M.read(s, max)
  local n = #s
  -- UTF-16 or UTF-32 (a byte order mark, or a NUL in the first bytes): not this reader's
  local b1, b2 = byte(s, 1, 2)
  if (b1 == 0xFE and b2 == 0xFF) or (b1 == 0xFF and b2 == 0xFE) or find(sub(s, 1, 4), "\0", 1, true) then
    return fail("an encoding this reader does not decode (UTF-16 or UTF-32)", 1)
  end
  local start = sub(s, 1, 3) == "\239\187\191" and 4 or 1
  local parts, np = {}, 0
  local attrs, na = {}, 0
  local stack, depth = {}, 0
  local root_done, dtd, truncated = false, false, false
  local i = start
  while i <= n do
    local lt = find(s, "<", i, true)
    local stop = (lt or n + 1) - 1
    if stop >= i then
      if depth == 0 then
        local k = find(s, "[^ \t\r\n]", i)
        if k and k <= stop then return fail("text outside the root element", k) end
      else
        local t, err = decode(sub(s, i, stop), i, dtd)
        if not t then return nil, err end
        np = np + 1
        parts[np] = t
      end
    end
    if not lt then break end
    local b = byte(s, lt + 1)
    if b == 33 then -- <!
      if sub(s, lt, lt + 3) == "<!--" then
        local e = find(s, "-->", lt + 4, true)
        if not e then return fail("a comment without its end", lt) end
        i = e + 3
      elseif sub(s, lt, lt + 8) == "<![CDATA[" then
        if depth == 0 then return fail("CDATA outside the root element", lt) end
        local e = find(s, "]]>", lt + 9, true)
        if not e then return fail("a CDATA section without its end", lt) end
        np = np + 1
        parts[np] = sub(s, lt + 9, e - 1)
        i = e + 3
      elseif sub(s, lt, lt + 8) == "<!DOCTYPE" then
        if dtd or depth > 0 or root_done then return fail("a DOCTYPE after the start", lt) end
        local e, why = doctype_end(s, lt)
        if not e then return fail(why or "a DOCTYPE without its end", lt) end
        dtd, i = true, e
      else
        return fail("a <! that is no comment, CDATA or DOCTYPE", lt)
      end
    elseif b == 63 then -- <? a processing instruction; the XML declaration only first
      local e = find(s, "?>", lt + 2, true)
      if not e then return fail("a processing instruction without its end", lt) end
      local target = match(s, "^<%?([^ \t\r\n?]*)", lt)
      if target == "" then return fail("a processing instruction without a target", lt) end
      if lower(target) == "xml" and lt ~= start then
        return fail("an XML declaration after the start", lt)
      end
      -- The text is read as UTF-8 (ASCII and Latin-1 read the same for the rules): in
      -- another declared encoding (UTF-7, UTF-16, EBCDIC...) the application's parser reads
      -- other characters than these bytes, <r>1+ACc- OR +ACc-1+ACc-=+ACc-1</r> in UTF-7 is
      -- 1' OR '1'='1. A body error.
      local enc = lower(target) == "xml" and match(sub(s, lt, e), "encoding%s*=%s*[\"']([^\"']*)[\"']")
      if enc and not READABLE[lower(enc)] then
        return fail("an encoding this reader does not decode (" .. cut(enc) .. ")", lt)
      end
      i = e + 2
    elseif b == 47 then -- </name>
      -- the open element's name, then white space and >
      local top = stack[depth]
      local j = top and lt + 2 + #top
      local c = j and sub(s, lt + 2, j - 1) == top and byte(s, j)
      while c == 32 or c == 9 or c == 10 or c == 13 do
        j = j + 1
        c = byte(s, j)
      end
      if c ~= 62 then return fail("an end tag that closes no open element", lt) end
      stack[depth] = nil
      depth = depth - 1
      if depth == 0 then root_done = true end
      i = j + 1
    else -- <name attr="v" ...> or />
      -- (byte loops, not patterns, here and below: LuaJIT compiles them)
      local j = lt + 1
      local c = byte(s, j)
      -- a name starts with a letter, _, : or a non-ASCII byte
      if not c or not ((c >= 65 and c <= 90) or (c >= 97 and c <= 122) or c == 95 or c == 58
        or c >= 128) then
        return fail("a < that opens no tag", lt)
      end
      while c and c ~= 32 and c ~= 9 and c ~= 10 and c ~= 13 and c ~= 47 and c ~= 62 do
        if c == 60 or c == 61 or c == 34 or c == 39 or c == 38 then -- < = " ' &
          return fail("a < that opens no tag", lt)
        end
        j = j + 1
        c = byte(s, j)
      end
      local name = sub(s, lt + 1, j - 1)
      if depth == 0 and root_done then return fail("a second root element", lt) end
      local empty
      while true do
        local k = j
        c = byte(s, k)
        while c == 32 or c == 9 or c == 10 or c == 13 do
          k = k + 1
          c = byte(s, k)
        end
        if not c then return fail("a tag without its end", lt) end
        if c == 62 then -- >
          empty, j = false, k + 1
          break
        elseif c == 47 then -- />
          if byte(s, k + 1) ~= 62 then return fail("a / in a tag", k) end
          empty, j = true, k + 2
          break
        end
        if k == j then return fail("attributes without white space between them", k) end
        -- name = "value" (or 'value')
        local e = k
        while c and c ~= 32 and c ~= 9 and c ~= 10 and c ~= 13 and c ~= 47 and c ~= 62
          and c ~= 61 and c ~= 34 and c ~= 39 and c ~= 60 do
          e = e + 1
          c = byte(s, e)
        end
        while c == 32 or c == 9 or c == 10 or c == 13 do
          e = e + 1
          c = byte(s, e)
        end
        local q
        if e > k and c == 61 then
          e = e + 1
          q = byte(s, e)
          while q == 32 or q == 9 or q == 10 or q == 13 do
            e = e + 1
            q = byte(s, e)
          end
        end
        if q ~= 34 and q ~= 39 then return fail("an attribute without a quoted value", k) end
        local close = find(s, q == 34 and '"' or "'", e + 1, true)
        if not close then return fail("an attribute value without its end", e) end
        local v = sub(s, e + 1, close - 1)
        if find(v, "<", 1, true) then return fail("a < in an attribute value", e) end
        -- (white space in a value reads as spaces: attribute value normalisation)
        if find(v, "\n", 1, true) or find(v, "\t", 1, true) or find(v, "\r", 1, true) then
          v = gsub(v, "[\t\r\n]", " ")
        end
        local err
        v, err = decode(v, e + 1, dtd)
        if not v then return nil, err end
        if na < max then
          na = na + 1
          attrs[na] = v
        else
          truncated = true
        end
        j = close + 1
      end
      if empty then
        if depth == 0 then root_done = true end
      else
        if depth >= M.MAX_DEPTH then
          return fail(format("elements nested deeper than %d", M.MAX_DEPTH), lt)
        end
        depth = depth + 1
        stack[depth] = name
      end
      i = j
    end
  end
  if depth > 0 then return fail("<" .. cut(stack[depth]) .. "> not closed", n + 1) end
  if not root_done then return fail("no root element", n + 1) end
  return { text = concat(parts, "", 1, np), attrs = attrs, truncated = truncated }
end


-- A Content-Type's charset parameter (it overrides the document's own declaration, RFC
-- 7303) naming an encoding other than UTF-8, ASCII or Latin-1 is a body error as such a
-- declaration is (charset=utf-7: +ACc- is a quote to the application); the problem, or nil.
-- Every "charset=" is looked at, even one inside a quoted parameter: parsers differ on which
-- of two they take (the first, the last, or only the unquoted one), so two are an error too.
function M.charset_problem(ctype)
  local seen
  for cs in gmatch(lower(ctype or ""), ";%s*charset%s*=%s*\"?([^\";%s]*)") do
    if seen then return "XML: the Content-Type names a charset twice" end
    if not READABLE[cs] then
      return "XML: the Content-Type's charset is an encoding this reader does not decode (" .. cut(cs) .. ")"
    end
    seen = true
  end
  return nil
end

return M
