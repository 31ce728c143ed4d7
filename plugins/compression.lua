-- compression: gzip and brotli response bodies. The plugin decides in the response phase
-- (Accept-Encoding with q-values, content type, length, what the upstream did) and sets
-- the headers; the engine compresses the body as it streams (engine/compress.c), after
-- the response_body filters, through the same blocks, write batches and backpressure as
-- any body. Docs: docs/plugins/compression.md.
local vary = require "luaproxy.vary"

local find, lower, sub, byte, match = string.find, string.lower, string.sub, string.byte,
  string.match
local tonumber, ipairs = tonumber, ipairs

local P = {
  name = "compression",
  -- Low: the response phase runs by priority too, so the decision comes after the plugins
  -- that change the status, Content-Type or caching headers (headers, 800), and after the
  -- cache (50), which stores the upstream's own head and body: a hit is then compressed
  -- for its own client like a miss (before, the stored head said gzip over a plain body).
  priority = 40,
  schema = {
    fields = {
      codings = {
        type = "array", default = { "br", "gzip" }, min = 1,
        elements = { type = "string", one_of = { "br", "gzip" } },
        description = "codings offered, in the server's order of preference: when the "
          .. "client gives two the same q-value, the first listed wins",
      },
      gzip_level = { type = "integer", default = 5, min = 1, max = 9,
        description = "zlib level for gzip (1 fastest, 9 smallest)" },
      br_level = { type = "integer", default = 4, min = 0, max = 11,
        description = "brotli quality (0 fastest, 11 smallest; above 6 costs far more CPU)" },
      min_length = { type = "integer", default = 256, min = 0,
        description = "bodies known to be shorter (Content-Length, local answers) go as "
          .. "they are; bodies of unknown length are compressed" },
      types = {
        type = "array",
        default = { "text/*", "application/json", "application/*+json", "application/javascript",
          "application/x-javascript", "application/xml", "application/*+xml", "image/svg+xml" },
        elements = { type = "string", pattern = "^[%w!#$&^_.+%-*]+/[%w!#$&^_.+%-*]+$" },
        description = "media types to compress: exact (application/json), a whole type "
          .. "(text/*), or a structured suffix (application/*+json); \"*/*\" for all, "
          .. "answers without a Content-Type included",
      },
      vary = { type = "boolean", default = true,
        description = "add Accept-Encoding to Vary on every response that could be "
          .. "compressed (compressed or not: caches must keep the variants apart)" },
    },
  },
}

-- ---- Accept-Encoding (RFC 9110 12.5.3) ----
-- q-values as integers 0-1000. A malformed element is skipped (as if absent); a malformed
-- header gives no coding, never an error. At most MAX_ELEMENTS elements are read.
local MAX_ELEMENTS = 64

-- "q=0.5" -> 500; nil when malformed (RFC: "0" ["." 0*3DIGIT] / "1" ["." 0*3("0")]).
local function qvalue(s)
  local int, frac = match(s, "^([01])%.?(%d*)$")
  if not int or #frac > 3 then return nil end
  local q = (int == "1" and 1000 or 0) + (frac ~= "" and tonumber((frac .. "00"):sub(1, 3)) or 0)
  if q > 1000 then return nil end
  return q
end

-- Parses the header into { [coding] = q } (lower-case names; "x-gzip" counts as gzip).
local function parse(ae)
  local out = {}
  local n, pos, len = 0, 1, #ae
  while pos <= len and n < MAX_ELEMENTS do
    local stop = find(ae, ",", pos, true) or len + 1
    local el = sub(ae, pos, stop - 1)
    pos = stop + 1
    local name, params = match(el, "^[ \t]*([%w!#$%%&'*+.^_`|~-]+)[ \t]*(.*)$")
    if name then
      n = n + 1
      name = lower(name)
      if name == "x-gzip" then name = "gzip" end
      local q = 1000
      -- Parameters: ";q=..." is the one that counts; others are ignored.
      for p in params:gmatch(";[ \t]*([^;]*)") do
        local k, v = match(p, "^([%a]+)[ \t]*=[ \t]*([^ \t]*)[ \t]*$")
        if k and lower(k) == "q" then
          q = qvalue(v)
          break
        elseif not k and match(p, "%S") then
          q = nil -- garbage parameter: skip the element
          break
        end
      end
      if params ~= "" and byte(params, 1) ~= 59 then q = nil end -- junk after the name
      if q and (out[name] == nil or q > out[name]) then out[name] = q end
    end
  end
  return out
end
P.parse_accept_encoding = parse

-- The coding to use for header `ae` given the server's preference list, or nil (send as
-- it is). A coding's q is its own, else "*"'s, else 0 (not acceptable). Highest q wins,
-- ties go to the earlier in `prefs`; no coding when the client lists identity with a
-- higher q than the best coding's. Identity not listed does not compete: it is always
-- acceptable (RFC 9110 12.5.3), but "gzip;q=0.8" alone still asks for gzip.
local function choose(ae, prefs)
  local q = parse(ae)
  local star = q["*"]
  local best, bestq = nil, 0
  for i = 1, #prefs do
    local c = prefs[i]
    local cq = q[c] or star or 0
    if cq > bestq then best, bestq = c, cq end
  end
  if not best then return nil end
  local idq = q.identity or 0
  if idq > bestq then return nil end
  return best
end
P.choose = choose

-- Per-worker memo of header value -> choice (a handful of Accept-Encoding values cover
-- nearly every client), cleared when it grows past MEMO_MAX.
local MEMO_MAX = 256
local NONE = false

-- ---- content types ----
local function type_matcher(list)
  local exact, major, suffix, any = {}, {}, {}, false
  for _, t in ipairs(list) do
    t = lower(t)
    if t == "*/*" then
      any = true
    else
      local m, s = match(t, "^([^/]+)/%*(%+[^/]+)$")
      if m then
        suffix[#suffix + 1] = { m .. "/", s }
      elseif match(t, "/%*$") then
        major[sub(t, 1, #t - 1)] = true
      else
        exact[t] = true
      end
    end
  end
  return any, function(ct)
    if any then return true end
    local mt = lower(match(ct, "^[ \t]*([^;]-)[ \t]*;") or match(ct, "^[ \t]*(.-)[ \t]*$"))
    if exact[mt] then return true end
    local slash = find(mt, "/", 1, true)
    if not slash then return false end
    if major[sub(mt, 1, slash)] then return true end
    for i = 1, #suffix do
      local sfx = suffix[i]
      if sub(mt, 1, #sfx[1]) == sfx[1] and sub(mt, -#sfx[2]) == sfx[2] then return true end
    end
    return false
  end
end

function P.compile(conf)
  local seen, prefs = {}, {}
  for i, c in ipairs(conf.codings) do
    if seen[c] then return nil, "codings[" .. i .. "]: " .. c .. " is listed twice" end
    seen[c] = true
    prefs[#prefs + 1] = c
  end
  local levels = { gzip = conf.gzip_level, br = conf.br_level }
  local any_type, type_ok = type_matcher(conf.types)
  return {
    prefs = prefs, levels = levels, min_length = conf.min_length, vary = conf.vary,
    type_ok = type_ok, any_type = any_type,
    memo = {}, nmemo = 0, -- Accept-Encoding value -> coding or NONE (per entry, per worker)
    tmemo = {}, ntmemo = 0, -- Content-Type value -> boolean
  }
end

-- Statuses whose answer has no body, or a body that is not the representation (206).
local SKIP_STATUS = { [204] = true, [206] = true, [304] = true }

local function no_transform(cc)
  return cc ~= nil and find(lower(cc), "no-transform", 1, true) ~= nil
end

function P.response(req, conf)
  local status = req:status()
  if status < 200 or SKIP_STATUS[status] or req:method() == "HEAD" then return end
  if req:resp_header("Content-Encoding") then return end -- already encoded upstream
  local ct = req:resp_header("Content-Type")
  if not ct then
    if not conf.any_type then return end -- unknown content: only with "*/*"
    ct = ""
  end
  local ok = conf.tmemo[ct]
  if ok == nil then
    ok = conf.type_ok(ct)
    if conf.ntmemo >= MEMO_MAX then conf.tmemo, conf.ntmemo = {}, 0 end
    conf.tmemo[ct], conf.ntmemo = ok, conf.ntmemo + 1
  end
  if not ok or no_transform(req:resp_header("Cache-Control")) then return end

  local ae = req:header("Accept-Encoding")
  local coding = NONE
  if ae then
    coding = conf.memo[ae]
    if coding == nil then
      coding = choose(ae, conf.prefs) or NONE
      if conf.nmemo >= MEMO_MAX then conf.memo, conf.nmemo = {}, 0 end
      conf.memo[ae], conf.nmemo = coding, conf.nmemo + 1
    end
  end
  if coding and req:compress(coding, conf.levels[coding], conf.min_length) then
    req:set_resp_header("Content-Encoding", coding)
    -- The bytes change: a strong validator would claim byte-identity (RFC 9110 8.8.3).
    local etag = req:resp_header("ETag")
    if etag and sub(etag, 1, 2) ~= "W/" then req:set_resp_header("ETag", "W/" .. etag) end
    -- Ranges of the compressed body are not ranges of the representation.
    req:clear_resp_header("Accept-Ranges")
  end
  if conf.vary then vary.add(req, "Accept-Encoding") end
end

return P
