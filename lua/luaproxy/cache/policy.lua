-- luaproxy.cache.policy: the HTTP caching decisions of RFC 9111 (caching), RFC 9110 (dates
-- §5.6.7, conditional requests §13, ranges §14), RFC 9211 (Cache-Status) and RFC 5861
-- (stale-while-revalidate, stale-if-error), as plain functions the `cache` plugin calls.
-- No engine call and no global state: every input is an argument. docs/caching-rfc.md
-- lists the rules applied, section by section.
--
-- Conventions
--   headers   a table of lower-case field name -> value (string) or list of values (one per
--             field line), as req:headers() / req:response_headers() return.
--   times     numbers, seconds since the Unix epoch (fractions allowed).
--   opts      { shared = true (a shared cache: s-maxage, proxy-revalidate, private and
--                 Authorization rules apply; false for a private cache),
--               cache_set_cookie = false | true | "strip" (store responses carrying
--                 Set-Cookie: false refuses them, true stores the field, "strip" stores the
--                 response without it),
--               statuses = { [200] = true, ... } or { 200, 301, ... } (when set, only these
--                 statuses are ever stored),
--               heuristic = false | true | fraction | { fraction = 0.1, max = 86400 }
--                 (heuristic freshness from Last-Modified, RFC 9111 §4.2.2; off by default),
--               default_ttl = { [200] = seconds, ... } (freshness for a status whose response
--                 has no explicit freshness, like nginx's proxy_cache_valid; off by default),
--               stale_while_revalidate = seconds, stale_if_error = seconds (windows granted
--                 beyond what the response allows; the response's own windows still apply),
--               max_ranges = 16, max_vary_fields = 64 (bounds),
--               response_time = t (used by freshness_lifetime when Date is absent/invalid),
--               now = t (the clock for RFC 850 two-digit years) }
--
-- Functions (all pure)
--   parse_cache_control(str | {str,...}) -> { directive = true | "value" | number }
--       Directive names are lower-cased; the first occurrence of a duplicate wins (§4.2.1).
--       max-age, s-maxage, min-fresh, max-stale, stale-while-revalidate and stale-if-error
--       become numbers when their value (token or quoted-string) is delta-seconds, clamped to
--       2^31 (§1.2.2); an invalid value stays a string, which freshness treats as stale. A
--       malformed member ("max-age =5") keeps its name with the value "" (invalid).
--   field_names(value) -> { "name", ... }   lower-cased names of a qualified no-cache/private
--   request_directives(req_headers) -> { no_store, no_cache, max_age, max_stale (true|n),
--       min_fresh, only_if_cached, stale_if_error, cc = the parsed table }
--       Pragma: no-cache counts as no-cache only when the request has no Cache-Control.
--   storable(method, status, req_headers, resp_headers, opts) -> ok, reason
--   stored_headers(resp_headers, opts) -> headers (copy) without the fields a cache must not
--       store (§3.1: Connection and the fields it lists, hop-by-hop fields, Proxy-Authenticate,
--       Proxy-Authentication-Info, Proxy-Authorization, no-cache="..." fields, and in a shared
--       cache private="..." fields; Set-Cookie when cache_set_cookie == "strip")
--   stores_all_fields(resp_headers, opts) -> bool  (stored_headers drops only hop-by-hop
--       fields and Proxy-Authenticate/-Authentication-Info/-Authorization)
--   freshness_lifetime(status, resp_headers, opts) -> seconds | nil, source
--       source: "s-maxage" | "max-age" | "expires" | "default_ttl" | "heuristic" | "none",
--       with " (invalid)" appended when an invalid value made the lifetime 0.
--   meta(status, resp_headers, request_time, response_time, opts) -> meta
--       meta = { date, age_value, request_time, response_time, ttl, ttl_source,
--                must_revalidate, no_cache, stale_while_revalidate, stale_if_error,
--                etag, last_modified }  -- what the store keeps beside an entry
--   current_age(meta, now) -> seconds                          (RFC 9111 §4.2.3)
--   fresh_plain(meta, now) -> true | nil   (evaluate(meta, {}, now) == "fresh", cheaply)
--   evaluate(meta, req_dir, now, opts) -> decision, details
--       decision: "fresh" (serve), "stale_ok" (serve stale: the request allows it with
--       max-stale), "stale_while_revalidate" (serve stale, refresh in the background),
--       "revalidate" (ask upstream, conditionally when the entry has validators), "miss"
--       (no usable entry; with details.only_if_cached answer 504).
--       details = { age, ttl, left (ttl - age), staleness, why, stale_if_error (true when
--       the entry may be served if the upstream fails or answers 5xx), stale_if_disconnected
--       (true when no directive forbids serving it stale: RFC 9111 §4.2.4 allows that when
--       the origin cannot be reached, at the plugin's choice), only_if_cached, fwd (the
--       RFC 9211 fwd value when it goes upstream: "uri-miss", "stale", or "request" when
--       the request's directives refused a usable entry) }
--   secondary_key(vary_value, req_headers, max_fields) -> string | false
--       false for Vary: * or more than max_fields (64) names: never matches, do not store.
--   conditional(method, req_headers, stored_headers, stored_time) -> 304 | 412 | nil
--   updates(stored_headers, headers_304) -> bool   (§4.3.4: may this 304 update the entry?)
--   merge_304(stored_headers, headers_304, opts) -> headers, client_only
--       client_only: fields for the current response only (Set-Cookie when not stored).
--   validators(stored_headers) -> { ["if-none-match"] = etag, ["if-modified-since"] = date }
--   forward_headers(req_headers, stored_headers | nil) -> { name = value | false (remove) }
--       header changes for the request the cache sends upstream on a miss or revalidation
--   parse_range(range, length, if_range, stored_headers, opts) -> nil | {{first,last},...}
--       | "unsatisfiable"
--   invalidations(method, status, req_key_parts, resp_headers) -> { uri, ... }, { parts, ... }
--       req_key_parts = { scheme = "http", host = "example.com[:port]", path = "/p?q" }
--   cache_status(t) -> Cache-Status field value (RFC 9211)
--   parse_http_date(s, now) -> seconds | nil;  http_date(t) -> IMF-fixdate string
--   age_header(age) -> string (integer seconds, clamped to 2^31)
local find, sub, lower, byte, format, gsub = string.find, string.sub, string.lower, string.byte,
  string.format, string.gsub
local concat, sort = table.concat, table.sort
local floor, max, min = math.floor, math.max, math.min
local type, tonumber, pairs, ipairs = type, tonumber, pairs, ipairs

local P = {}

-- §1.2.2: delta-seconds beyond what we represent become 2^31.
local DELTA_MAX = 2147483648
P.DELTA_MAX = DELTA_MAX

-- Directives whose argument is delta-seconds.
local NUMERIC = {
  ["max-age"] = true, ["s-maxage"] = true, ["min-fresh"] = true, ["max-stale"] = true,
  ["stale-while-revalidate"] = true, ["stale-if-error"] = true,
}

-- RFC 9110 §15.1: statuses heuristically cacheable (cacheable by default). 206 is among
-- them but this cache stores complete responses only.
local HEURISTIC = {
  [200] = true, [203] = true, [204] = true, [206] = true, [300] = true, [301] = true,
  [308] = true, [404] = true, [405] = true, [410] = true, [414] = true, [501] = true,
}
P.HEURISTIC_STATUSES = HEURISTIC

-- Statuses whose caching requirements this cache implements, for must-understand (§5.2.2.3):
-- those RFC 9110 defines.
local UNDERSTOOD = {}
for _, s in ipairs({ 200, 201, 202, 203, 204, 205, 206, 300, 301, 302, 303, 304, 305, 307, 308,
  400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421,
  422, 426, 500, 501, 502, 503, 504, 505 }) do UNDERSTOOD[s] = true end

-- §3.1 / RFC 9110 §7.6.1: fields never stored (or updated from a 304).
local NOT_STORED = {
  connection = true, ["keep-alive"] = true, ["proxy-connection"] = true, te = true,
  ["transfer-encoding"] = true, upgrade = true, trailer = true,
  ["proxy-authenticate"] = true, ["proxy-authentication-info"] = true,
  ["proxy-authorization"] = true,
}

local SAFE_METHODS = { GET = true, HEAD = true, OPTIONS = true, TRACE = true }

-- Header access ------------------------------------------------------------------------

local function first(h, name)
  local v = h and h[name]
  if type(v) == "table" then return v[1] end
  return v
end

local function joined(h, name)
  local v = h and h[name]
  if type(v) == "table" then return (concat(v, ", ")) end
  return v
end

-- Without optional whitespace at either end; linear (no backtracking pattern).
local function trim(s)
  local a = find(s, "[^ \t]")
  if not a then return "" end
  local b = #s
  while true do
    local c = byte(s, b)
    if c ~= 32 and c ~= 9 then break end
    b = b - 1
  end
  return (sub(s, a, b))
end

-- A header table given as nil is an empty one.
local EMPTY = setmetatable({}, { __newindex = function() error("read-only", 2) end })

-- Numbers ------------------------------------------------------------------------------

-- delta-seconds = 1*DIGIT; nil when s is anything else.
local function delta_seconds(s)
  if type(s) ~= "string" or not find(s, "^%d+$") then return nil end
  local nz = find(s, "[1-9]")
  if not nz then return 0 end
  if #s - nz + 1 > 10 then return DELTA_MAX end
  return min(tonumber(s), DELTA_MAX)
end
P.delta_seconds = delta_seconds

-- Dates (RFC 9110 §5.6.7) ---------------------------------------------------------------

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8,
  Sep = 9, Oct = 10, Nov = 11, Dec = 12 }
local MONTH_NAMES = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
  "Nov", "Dec" }
local DAYS = { Mon = true, Tue = true, Wed = true, Thu = true, Fri = true, Sat = true, Sun = true }
local DAY_NAMES = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" }
local LONG_DAYS = { Monday = true, Tuesday = true, Wednesday = true, Thursday = true,
  Friday = true, Saturday = true, Sunday = true }

-- Days since 1970-01-01 of a proleptic Gregorian date (no time zone involved).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local d = doy - floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function month_days(y, m)
  if m == 2 then
    local leap = (y % 4 == 0 and y % 100 ~= 0) or y % 400 == 0
    return leap and 29 or 28
  end
  return (m == 4 or m == 6 or m == 9 or m == 11) and 30 or 31
end

local function stamp(y, mon, d, hh, mm, ss)
  local m = MONTHS[mon]
  y, d, hh, mm, ss = tonumber(y), tonumber(d), tonumber(hh), tonumber(mm), tonumber(ss)
  if not m or d < 1 or d > month_days(y, m) or hh > 23 or mm > 59 or ss > 60 then return nil end
  return days_from_civil(y, m, d) * 86400 + hh * 3600 + mm * 60 + ss
end

-- One of the three HTTP-date forms, strictly (names are case-sensitive, "GMT" only);
-- nil for anything else. `now` resolves RFC 850 two-digit years (§5.6.7: a date more than
-- 50 years in the future means the most recent past year with those digits).
-- The last IMF-fixdate parsed (its value does not depend on `now`): a Date field is the same
-- for every response of a second, and pattern matching is not compiled.
local last_date_s, last_date_t

function P.parse_http_date(s, now)
  if s == last_date_s and s ~= nil then return last_date_t end
  if type(s) ~= "string" or #s > 64 then return nil end
  local raw = s
  s = trim(s)
  local wd, d, mon, y, hh, mm, ss =
    s:match("^(%a%a%a), (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if wd then
    if not DAYS[wd] then return nil end
    local t = stamp(y, mon, d, hh, mm, ss)
    last_date_s, last_date_t = raw, t
    return t
  end
  wd, d, mon, y, hh, mm, ss = s:match("^(%a+), (%d%d)%-(%a%a%a)%-(%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if wd then
    if not LONG_DAYS[wd] then return nil end
    now = now or os.time()
    local cy = civil_from_days(floor(now / 86400))
    local year = cy - cy % 100 + tonumber(y)
    local t = stamp(year, mon, d, hh, mm, ss)
    if t and t > now + 50 * 31556952 then t = stamp(year - 100, mon, d, hh, mm, ss) end
    return t
  end
  wd, mon, d, hh, mm, ss, y = s:match("^(%a%a%a) (%a%a%a) ([ %d]%d) (%d%d):(%d%d):(%d%d) (%d%d%d%d)$")
  if wd then
    if not DAYS[wd] then return nil end
    return stamp(y, mon, trim(d), hh, mm, ss)
  end
  return nil
end

-- IMF-fixdate of t.
function P.http_date(t)
  t = floor(t)
  local days = floor(t / 86400)
  local secs = t - days * 86400
  local y, m, d = civil_from_days(days)
  return format("%s, %02d %s %04d %02d:%02d:%02d GMT", DAY_NAMES[(days + 4) % 7 + 1], d,
    MONTH_NAMES[m], y, floor(secs / 3600), floor(secs / 60) % 60, secs % 60)
end

-- Cache-Control (RFC 9111 §5.2) ---------------------------------------------------------

local TOKEN = "^[!#$%%&'*+%-.%^_`|~%w]+"

-- The quoted-string starting at s[i] == '"': its unescaped content and the index after the
-- closing quote, or nil (unterminated). Linear in its length.
local function read_quoted(s, i)
  local parts, j = nil, i + 1
  while true do
    local k = find(s, '["\\]', j)
    if not k then return nil end
    if byte(s, k) == 34 then
      if parts then
        parts[#parts + 1] = sub(s, j, k - 1)
        return concat(parts), k + 1
      end
      return sub(s, j, k - 1), k + 1
    end
    parts = parts or {}
    parts[#parts + 1] = sub(s, j, k - 1)
    parts[#parts + 1] = sub(s, k + 1, k + 1)
    j = k + 2
  end
end

-- The index of the comma ending the member that starts at i (quoted strings skipped), or
-- #s + 1.
local function member_end(s, i)
  while true do
    local k = find(s, '[,"]', i)
    if not k then return #s + 1 end
    if byte(s, k) == 44 then return k end
    local _, after = read_quoted(s, k)
    if not after then return #s + 1 end
    i = after
  end
end

local function parse_cc_line(s, out)
  local i, n = 1, #s
  while i <= n do
    local a = find(s, "[^ \t,]", i)
    if not a then break end
    local _, e = find(s, TOKEN, a)
    if not e then
      i = member_end(s, a) + 1
    else
      local name = lower(sub(s, a, e))
      local value, j, bad = true, e + 1, false
      if byte(s, j) == 61 then -- "="
        j = j + 1
        if byte(s, j) == 34 then
          local v, after = read_quoted(s, j)
          if v then value, j = v, after else value, j, bad = "", n + 1, true end
        else
          local _, te = find(s, TOKEN, j)
          if te then value, j = sub(s, j, te), te + 1 else value, bad = "", true end
        end
      end
      local k = find(s, "[^ \t]", j)
      if k and byte(s, k) ~= 44 then bad = true end
      if bad then value = "" end
      if out[name] == nil then
        if NUMERIC[name] and type(value) == "string" then
          value = delta_seconds(value) or value
        end
        out[name] = value
      end
      i = (k and byte(s, k) == 44) and k + 1 or member_end(s, j) + 1
    end
  end
  return out
end

function P.parse_cache_control(v)
  local out = {}
  if type(v) == "string" then
    parse_cc_line(v, out)
  elseif type(v) == "table" then
    for _, line in ipairs(v) do
      if type(line) == "string" then parse_cc_line(line, out) end
    end
  end
  return out
end

-- Parsed Cache-Control values for this module's own reading (never changed by it), per VM,
-- by field value: a miss parses the response's value for storable, stored_headers and meta,
-- and every request with one parses it again. Bounded: emptied at 256 values. A list of
-- lines (several fields) is parsed each time; no field is the shared EMPTY.
local cc_memo, cc_memo_n = {}, 0

local function cc_of(v)
  if v == nil then return EMPTY end
  if type(v) ~= "string" then return P.parse_cache_control(v) end
  local cc = cc_memo[v]
  if cc then return cc end
  cc = P.parse_cache_control(v)
  if cc_memo_n >= 256 then cc_memo, cc_memo_n = {}, 0 end
  cc_memo[v], cc_memo_n = cc, cc_memo_n + 1
  return cc
end

-- The lower-cased field names of a qualified no-cache / private value ("a, B" -> {"a","b"}).
function P.field_names(value)
  local out = {}
  if type(value) ~= "string" then return out end
  for name in value:gmatch("[^ \t,]+") do
    if find(name, TOKEN .. "$") then out[#out + 1] = lower(name) end
  end
  return out
end

-- A directive present without an argument, or with the empty (invalid) one, is unqualified.
local function qualified(v)
  return type(v) == "string" and find(v, "[^ \t,]") ~= nil
end

-- Request directives (§5.2.1) ------------------------------------------------------------

function P.request_directives(req_headers)
  local h = req_headers or EMPTY
  local cc_raw = h["cache-control"]
  local cc = cc_of(cc_raw)
  local d = { cc = cc }
  d.no_store = cc["no-store"] ~= nil
  d.no_cache = cc["no-cache"] ~= nil
  d.only_if_cached = cc["only-if-cached"] ~= nil
  local ma = cc["max-age"]
  -- An invalid max-age is read as 0, the most restrictive value.
  if ma ~= nil then d.max_age = type(ma) == "number" and ma or 0 end
  -- max-stale without a value accepts any staleness; an invalid value is ignored.
  local ms = cc["max-stale"]
  if ms == true or type(ms) == "number" then d.max_stale = ms end
  if type(cc["min-fresh"]) == "number" then d.min_fresh = cc["min-fresh"] end
  if type(cc["stale-if-error"]) == "number" then d.stale_if_error = cc["stale-if-error"] end
  if cc_raw == nil then
    -- RFC 9111 §5.4 (and RFC 7234 §5.4): Pragma: no-cache acts as Cache-Control: no-cache
    -- only when the request has no Cache-Control.
    local pragma = joined(h, "pragma")
    if pragma then
      for tok in pragma:gmatch("[^ \t,]+") do
        if lower(tok) == "no-cache" then d.no_cache = true end
      end
    end
  end
  return d
end

-- Freshness (§4.2.1, §4.2.2) --------------------------------------------------------------

local function is_shared(opts) return not opts or opts.shared ~= false end

local function heuristic_params(h)
  if h == true then return 0.1, 86400 end
  if type(h) == "number" and h > 0 then return h, 86400 end
  if type(h) == "table" then return h.fraction or 0.1, h.max or 86400 end
  return nil
end

local function date_of(resp_headers, opts)
  local d = P.parse_http_date(first(resp_headers, "date"), opts and opts.now)
  if d then return d end
  return opts and (opts.response_time or opts.now) or nil
end

local lifetime -- (status, headers, parsed Cache-Control, opts), defined below

function P.freshness_lifetime(status, resp_headers, opts)
  local h = resp_headers or EMPTY
  local cc = cc_of(h["cache-control"])
  return lifetime(status, h, cc, opts)
end

lifetime = function(status, h, cc, opts)
  local shared = is_shared(opts)
  if shared and cc["s-maxage"] ~= nil then
    local v = cc["s-maxage"]
    if type(v) == "number" then return v, "s-maxage" end
    return 0, "s-maxage (invalid)"
  end
  if cc["max-age"] ~= nil then
    local v = cc["max-age"]
    if type(v) == "number" then return v, "max-age" end
    return 0, "max-age (invalid)"
  end
  local exp = first(h, "expires")
  if exp ~= nil then
    -- §5.3: an invalid date, "0" above all, means already expired.
    local t = P.parse_http_date(exp, opts and opts.now)
    if not t then return 0, "expires (invalid)" end
    local date = date_of(h, opts)
    if not date then return 0, "expires (no date)" end
    return max(0, t - date), "expires"
  end
  local dt = opts and opts.default_ttl
  if dt and dt[status] then return dt[status], "default_ttl" end
  local fraction, cap = heuristic_params(opts and opts.heuristic)
  if fraction and (HEURISTIC[status] or cc.public ~= nil) then
    local lm = P.parse_http_date(first(h, "last-modified"), opts and opts.now)
    local date = date_of(h, opts)
    if lm and date and date > lm then
      return min(floor((date - lm) * fraction), cap), "heuristic"
    end
  end
  return nil, "none"
end

-- Storing (§3) ----------------------------------------------------------------------------

local function status_allowed(statuses, status)
  if not statuses then return true end
  if statuses[status] then return true end
  for _, s in ipairs(statuses) do if s == status then return true end end
  return false
end

-- True when no-cache="..." (or, in a shared cache, private="...") names Set-Cookie: the
-- response is stored without it (§3.1), so the cookie rule does not refuse it.
local function cookie_listed(cc, shared)
  for _, d in ipairs(shared and { "no-cache", "private" } or { "no-cache" }) do
    if qualified(cc[d]) then
      for _, n in ipairs(P.field_names(cc[d])) do
        if n == "set-cookie" then return true end
      end
    end
  end
  return false
end

function P.storable(method, status, req_headers, resp_headers, opts)
  local rq, rs = req_headers or EMPTY, resp_headers or EMPTY
  local shared = is_shared(opts)
  if method ~= "GET" then return false, "method" end
  if type(status) ~= "number" or status < 200 or status > 999 then return false, "status" end
  if status == 206 then return false, "partial content" end
  if status == 304 then return false, "not modified" end
  if not status_allowed(opts and opts.statuses, status) then return false, "status not allowed" end
  local rcc = cc_of(rq["cache-control"])
  if rcc["no-store"] ~= nil then return false, "request no-store" end
  -- A GET's content has no defined meaning (RFC 9110 §9.3.1) and is not part of the key: a
  -- response it chose must not be served to requests without it (a "fat GET" poisoning).
  local cl = joined(rq, "content-length")
  if rq["transfer-encoding"] ~= nil or (cl ~= nil and not find(cl, "^[ \t,0]*$")) then
    return false, "request content"
  end
  local cc = cc_of(rs["cache-control"])
  if cc["must-understand"] ~= nil then
    if not UNDERSTOOD[status] then return false, "must-understand" end
    -- §5.2.2.3: a cache that understands the status ignores no-store.
  elseif cc["no-store"] ~= nil then
    return false, "no-store"
  end
  if shared and cc.private ~= nil and not qualified(cc.private) then return false, "private" end
  if shared and rq.authorization ~= nil and cc.public == nil and cc["s-maxage"] == nil
    and cc["must-revalidate"] == nil then
    return false, "authorization"
  end
  if rs["set-cookie"] ~= nil and not (opts and opts.cache_set_cookie)
    and not cookie_listed(cc, shared) then
    return false, "set-cookie"
  end
  local vary = joined(rs, "vary")
  if vary and P.secondary_key(vary, EMPTY, opts and opts.max_vary_fields) == false then
    return false, "vary"
  end
  -- §3: something must make it cacheable.
  if cc.public ~= nil then return true, "public" end
  if not shared and cc.private ~= nil then return true, "private" end
  if cc["max-age"] ~= nil then return true, "max-age" end
  if shared and cc["s-maxage"] ~= nil then return true, "s-maxage" end
  if rs.expires ~= nil then return true, "expires" end
  if opts and opts.default_ttl and opts.default_ttl[status] then return true, "default_ttl" end
  if HEURISTIC[status] then
    local ttl = lifetime(status, rs, cc, opts)
    if (ttl and ttl > 0) or rs.etag ~= nil or rs["last-modified"] ~= nil then
      return true, "cacheable status"
    end
    return false, "no freshness and no validator"
  end
  return false, "no explicit freshness"
end

-- Adds the (lower-cased) field names a Connection value lists to `set`.
local function add_names(set, value)
  if type(value) == "table" then value = concat(value, ",") end
  if type(value) ~= "string" then return end
  for name in value:gmatch("[^ \t,]+") do set[lower(name)] = true end
end

-- The set of field names not to store for these response headers.
-- NOT_STORED is seen through the set's metatable rather than copied into it: a short pairs
-- loop per stored response aborted the trace of every miss.
local UNSTORED_MT = { __index = NOT_STORED }

local function unstored_set(h, cc, opts)
  local drop = setmetatable({}, UNSTORED_MT)
  add_names(drop, h.connection)
  if qualified(cc["no-cache"]) then
    for _, n in ipairs(P.field_names(cc["no-cache"])) do drop[n] = true end
  end
  if is_shared(opts) and qualified(cc.private) then
    for _, n in ipairs(P.field_names(cc.private)) do drop[n] = true end
  end
  if opts and opts.cache_set_cookie == "strip" then drop["set-cookie"] = true end
  -- Names the cache relies on are never dropped by a listing.
  drop["cache-control"] = nil
  return drop
end

local function copy_value(v)
  if type(v) == "table" then
    local c = {}
    for i = 1, #v do c[i] = v[i] end
    return c
  end
  return v
end

function P.stored_headers(resp_headers, opts)
  local h = resp_headers or EMPTY
  local drop = unstored_set(h, cc_of(h["cache-control"]), opts)
  local out = {}
  for k, v in pairs(h) do
    if not drop[k] then out[k] = copy_value(v) end
  end
  return out
end

-- Whether stored_headers(resp_headers, opts) drops only the fields never stored (NOT_STORED):
-- no Connection field naming others, no qualified no-cache or (shared) private, no Set-Cookie
-- to strip. The cache plugin then has the engine write the fields (Zone:store_fields).
function P.stores_all_fields(resp_headers, opts)
  local h = resp_headers or EMPTY
  if h.connection ~= nil then return false end
  if opts and opts.cache_set_cookie == "strip" and h["set-cookie"] ~= nil then return false end
  local cc = cc_of(h["cache-control"])
  if qualified(cc["no-cache"]) then return false end
  if is_shared(opts) and qualified(cc.private) then return false end
  return true
end

-- Age (§4.2.3, §5.1) --------------------------------------------------------------------------

-- The Age value: the first member of the first line; nil (ignored) when not delta-seconds.
function P.age_value(resp_headers)
  local v = first(resp_headers, "age")
  if type(v) ~= "string" then return nil end
  local c = find(v, ",", 1, true)
  if c then v = sub(v, 1, c - 1) end
  return delta_seconds(trim(v))
end

function P.meta(status, resp_headers, request_time, response_time, opts)
  local h = resp_headers or EMPTY
  local shared = is_shared(opts)
  local cc = cc_of(h["cache-control"])
  local o = { shared = shared, heuristic = opts and opts.heuristic,
    default_ttl = opts and opts.default_ttl, response_time = response_time,
    now = (opts and opts.now) or response_time }
  local ttl, source = lifetime(status, h, cc, o)
  local m = {
    status = status,
    date = P.parse_http_date(first(h, "date"), o.now),
    age_value = P.age_value(h) or 0,
    request_time = request_time or response_time,
    response_time = response_time,
    ttl = ttl or 0,
    ttl_source = source,
    -- §5.2.2.2 must-revalidate; §5.2.2.8 proxy-revalidate and §5.2.2.10 s-maxage in a
    -- shared cache: never served stale.
    must_revalidate = cc["must-revalidate"] ~= nil
      or (shared and (cc["proxy-revalidate"] ~= nil or cc["s-maxage"] ~= nil)),
    -- §5.2.2.4 unqualified no-cache: always revalidated (qualified: the fields are dropped).
    no_cache = cc["no-cache"] ~= nil and not qualified(cc["no-cache"]),
    etag = first(h, "etag"),
    last_modified = first(h, "last-modified"),
  }
  if type(cc["stale-while-revalidate"]) == "number" then
    m.stale_while_revalidate = cc["stale-while-revalidate"]
  end
  if type(cc["stale-if-error"]) == "number" then m.stale_if_error = cc["stale-if-error"] end
  return m
end

function P.current_age(meta, now)
  local response_time = meta.response_time or now
  local request_time = meta.request_time or response_time
  local apparent = meta.date and max(0, response_time - meta.date) or 0
  local delay = max(0, response_time - request_time)
  local corrected_age = (meta.age_value or 0) + delay
  local initial = max(apparent, corrected_age)
  return initial + max(0, now - response_time)
end

function P.age_header(age)
  age = floor(age or 0)
  if age < 0 then age = 0 end
  if age > DELTA_MAX then age = DELTA_MAX end
  return (format("%d", age)) -- not a tail call: that ends the hit's trace
end

-- Serving (§4, §4.2.4, RFC 5861) ---------------------------------------------------------------

-- The entry cannot be used as it is: upstream, or 504 under only-if-cached.
local function refuse(d, req_dir, why, fwd)
  d.why, d.fwd = why, fwd
  if req_dir.only_if_cached then return "miss", d end
  return "revalidate", d
end

-- evaluate's "fresh" for a request without directives, without its details table: true
-- when evaluate(meta, {}, now) answers "fresh" (nil when it may answer anything else).
function P.fresh_plain(meta, now)
  if meta.no_cache then return nil end
  return (meta.ttl or 0) - P.current_age(meta, now) > 0 or nil
end

function P.evaluate(meta, req_dir, now, opts)
  req_dir = req_dir or EMPTY
  local d = { only_if_cached = req_dir.only_if_cached or nil }
  if not meta then
    d.why, d.fwd = "no stored response", "uri-miss"
    return "miss", d
  end
  local age = P.current_age(meta, now)
  local ttl = meta.ttl or 0
  local left = ttl - age
  d.age, d.ttl, d.left, d.staleness = age, ttl, left, max(0, -left)
  local fresh = left > 0
  local may_stale = not meta.must_revalidate and not meta.no_cache
  -- stale-if-error (RFC 5861 §4): the response's window, the request's, or the configured
  -- one; never when a directive forbids serving stale (RFC 9111 §4.2.4).
  local sie = max(meta.stale_if_error or -1, req_dir.stale_if_error or -1,
    opts and opts.stale_if_error or -1)
  d.stale_if_error = may_stale and sie >= 0 and -left <= sie or false
  -- §4.2.4: a cache that cannot reach the origin may serve a stale response unless a
  -- directive forbids it; whether to is the plugin's choice.
  d.stale_if_disconnected = may_stale

  if meta.no_cache then return refuse(d, req_dir, "response no-cache", "stale") end
  -- RFC 9211 fwd=request: a fresh entry the request's own directives refused.
  local by_request = fresh and "request" or "stale"
  if req_dir.no_cache then return refuse(d, req_dir, "request no-cache", by_request) end
  if req_dir.max_age and age > req_dir.max_age then
    return refuse(d, req_dir, "request max-age", by_request)
  end
  if fresh then
    if req_dir.min_fresh and left < req_dir.min_fresh then
      return refuse(d, req_dir, "request min-fresh", "request")
    end
    d.why = "fresh"
    return "fresh", d
  end
  -- §5.2.1.3: min-fresh asks for a response fresh for N seconds more: a stale one never is,
  -- whatever max-stale or stale-while-revalidate would allow (revalidated, as max-age=0).
  if req_dir.min_fresh then return refuse(d, req_dir, "request min-fresh", "stale") end
  if not may_stale then return refuse(d, req_dir, "stale, must-revalidate", "stale") end
  local ms = req_dir.max_stale
  if ms == true or (type(ms) == "number" and -left <= ms) then
    d.why = "request max-stale"
    return "stale_ok", d
  end
  local swr = max(meta.stale_while_revalidate or -1, opts and opts.stale_while_revalidate or -1)
  if swr >= 0 and -left <= swr then
    d.why = "stale-while-revalidate"
    return "stale_while_revalidate", d
  end
  return refuse(d, req_dir, "stale", "stale")
end

-- Vary (§4.1) ---------------------------------------------------------------------------------

-- A request field value with its lines combined, the optional whitespace around list
-- members and the empty members removed (commas inside quoted strings kept). Linear.
local function normalise_value(v)
  if type(v) == "table" then v = concat(v, ",") end
  local members, cur, i, n = {}, {}, 1, #v
  while true do
    local k = find(v, '[,"]', i)
    if not k or byte(v, k) == 44 then
      cur[#cur + 1] = sub(v, i, (k or n + 1) - 1)
      local m = trim(concat(cur))
      if m ~= "" then members[#members + 1] = m end
      if not k then break end
      cur, i = {}, k + 1
    else
      local _, after = read_quoted(v, k)
      after = after or n + 1
      cur[#cur + 1] = sub(v, i, after - 1)
      i = after
    end
  end
  return concat(members, ",")
end

-- Request fields whose whole value is case-insensitive (content-codings, language tags,
-- charsets: RFC 9110 §8.4.1, §8.5.1, §12.5.2): their case does not make another variant.
local CASELESS_VALUES = { ["accept-encoding"] = true, ["accept-language"] = true,
  ["accept-charset"] = true }

function P.vary_fields(vary_value, max_fields)
  max_fields = max_fields or 64
  if type(vary_value) == "table" then vary_value = concat(vary_value, ",") end
  local names, seen, count = {}, {}, 0
  if type(vary_value) ~= "string" then return names end
  local i, n = 1, #vary_value
  while i <= n do
    local a, e = find(vary_value, "[^ \t,]+", i)
    if not a then break end
    local name = lower(sub(vary_value, a, e))
    if name == "*" then return false end
    if not seen[name] then
      seen[name] = true
      count = count + 1
      if count > max_fields then return false end
      names[count] = name
    end
    i = e + 1
  end
  sort(names)
  return names
end

function P.secondary_key(vary_value, req_headers, max_fields)
  local names = P.vary_fields(vary_value, max_fields)
  if not names then return false end
  local h = req_headers or EMPTY
  local parts = {}
  for i, name in ipairs(names) do
    local v = h[name]
    if v == nil then
      parts[i] = name .. ":-"
    else
      v = normalise_value(v)
      if CASELESS_VALUES[name] then v = lower(v) end
      parts[i] = name .. ":" .. #v .. ":" .. v
    end
  end
  return concat(parts, "\n")
end

-- Conditional requests (RFC 9110 §13) -------------------------------------------------------

-- The entity-tags of a list field value: { {weak=bool, tag="\"x\""}, ... }, or "*".
-- Members that are not entity-tags are skipped.
local function etag_list(v)
  if type(v) == "table" then v = concat(v, ",") end
  if type(v) ~= "string" then return nil end
  if find(v, "^[ \t]*%*[ \t]*$") then return "*" end
  local out, i, n = {}, 1, #v
  while i <= n do
    local a = find(v, "[^ \t,]", i)
    if not a then break end
    local weak = false
    if sub(v, a, a + 1) == "W/" then weak, a = true, a + 2 end
    if byte(v, a) == 34 then
      local k = find(v, '"', a + 1, true)
      if not k then break end
      local tag = sub(v, a, k)
      if not find(tag, "[%c ]") then out[#out + 1] = { weak = weak, tag = tag } end
      i = k + 1
    else
      local c = find(v, ",", a, true)
      if not c then break end
      i = c + 1
    end
  end
  return out
end

local function parse_etag(v)
  local l = etag_list(v)
  if type(l) == "table" and #l >= 1 then return l[1] end
  return nil
end
P.parse_etag = parse_etag

local function any_match(list, etag, strong)
  if list == "*" then return true end
  if not list or not etag then return false end
  for _, t in ipairs(list) do
    if t.tag == etag.tag and (not strong or (not t.weak and not etag.weak)) then return true end
  end
  return false
end

-- The stored response's modification time: Last-Modified, else its Date (RFC 9111 §4.3.2),
-- else stored_time.
local function stored_modified(stored, stored_time)
  return P.parse_http_date(first(stored, "last-modified"))
    or P.parse_http_date(first(stored, "date")) or stored_time
end

function P.conditional(method, req_headers, stored_headers, stored_time)
  local rq, st = req_headers or EMPTY, stored_headers or EMPTY
  local get = method == "GET" or method == "HEAD"
  local etag = parse_etag(first(st, "etag"))
  -- 1. If-Match (strong comparison).
  local im = rq["if-match"]
  if im ~= nil then
    if not any_match(etag_list(im), etag, true) then return 412 end
  else
    -- 2. If-Unmodified-Since, only without If-Match.
    local ius = rq["if-unmodified-since"]
    local t = type(ius) == "string" and P.parse_http_date(ius)
    local lm = P.parse_http_date(first(st, "last-modified"))
    if t and lm and lm > t then return 412 end
  end
  -- 3. If-None-Match (weak comparison).
  local inm = rq["if-none-match"]
  if inm ~= nil then
    if any_match(etag_list(inm), etag, false) then return get and 304 or 412 end
    return nil
  end
  -- 4. If-Modified-Since, GET/HEAD only, a single valid date.
  local ims = rq["if-modified-since"]
  if get and type(ims) == "string" then
    local t = P.parse_http_date(ims)
    local lm = stored_modified(st, stored_time)
    if t and lm and lm <= t then return 304 end
  end
  return nil
end

function P.validators(stored_headers)
  local st = stored_headers or EMPTY
  local out = {}
  local etag = first(st, "etag")
  if etag and parse_etag(etag) then out["if-none-match"] = etag end
  local lm = first(st, "last-modified")
  if lm and P.parse_http_date(lm) then out["if-modified-since"] = lm end
  return out
end

-- The request header changes for a request the cache forwards to fill or revalidate an entry
-- for a GET: { name = value | false (remove) }. The client's own preconditions and Range are
-- removed, so the origin answers in full (or 304 to the cache's validators) and the cache
-- evaluates them itself against what it then holds (RFC 9111 §4.3.1, §4.3.2); with a stored
-- entry, its validators are sent.
local CLIENT_CONDITIONS = { "if-match", "if-none-match", "if-modified-since",
  "if-unmodified-since", "if-range", "range" }

function P.forward_headers(req_headers, stored_headers)
  local rq = req_headers or EMPTY
  local out = {}
  for _, name in ipairs(CLIENT_CONDITIONS) do
    if rq[name] ~= nil then out[name] = false end
  end
  if stored_headers then
    for name, v in pairs(P.validators(stored_headers)) do out[name] = v end
  end
  return out
end

-- Whether a 304 may update the stored response it answers (§4.3.4): its strong entity-tag
-- must equal the stored one (strong comparison); a weak one, weakly; without an entity-tag,
-- its Last-Modified must equal the stored one; a 304 with no validator at all updates.
-- When false, the stored response must not be used: ask again without conditions.
function P.updates(stored_headers, headers_304)
  local st, h = stored_headers or EMPTY, headers_304 or EMPTY
  local new = parse_etag(first(h, "etag"))
  if new then
    local old = parse_etag(first(st, "etag"))
    if not old or old.tag ~= new.tag then return false end
    return new.weak or not old.weak
  end
  local lm = first(h, "last-modified")
  if lm ~= nil then
    local a, b = P.parse_http_date(lm), P.parse_http_date(first(st, "last-modified"))
    return a ~= nil and a == b
  end
  return true
end

-- 304 (§3.2, §4.3.4) ----------------------------------------------------------------------------

-- Never updated from a 304: besides what is never stored, Content-Length (the stored body's),
-- Content-Range (of a partial answer), Vary (the entry's secondary key depends on it), and the
-- fields that describe the stored bytes themselves, which a 304 cannot change: their coding and
-- digests (§3.2 lets a cache keep these for the integrity of what it stores).
local NOT_UPDATED = { ["content-length"] = true, ["content-range"] = true, vary = true,
  ["content-encoding"] = true, ["content-md5"] = true, ["content-digest"] = true,
  ["repr-digest"] = true, digest = true }

function P.merge_304(stored_headers, headers_304, opts)
  local st, h = stored_headers or EMPTY, headers_304 or EMPTY
  local out = {}
  for k, v in pairs(st) do out[k] = copy_value(v) end
  local cc = cc_of(h["cache-control"] or st["cache-control"])
  local drop = unstored_set(h, cc, opts)
  local client_only = {}
  for k, v in pairs(h) do
    if k == "set-cookie" and not (opts and opts.cache_set_cookie == true) then
      -- Sent to the client that caused the revalidation, never stored for the others.
      client_only[k] = copy_value(v)
    elseif not NOT_UPDATED[k] and not drop[k] then
      out[k] = copy_value(v)
    end
  end
  -- The age and date of the stored response are now those of the 304 (§4.3.4).
  if h.age == nil then out.age = nil end
  if h.date == nil and opts and opts.now then out.date = P.http_date(opts.now) end
  -- Fields the 304's directives exclude are dropped from the stored ones as well (not the
  -- ones its Connection lists: those are the 304 message's own).
  if qualified(cc["no-cache"]) then
    for _, n in ipairs(P.field_names(cc["no-cache"])) do out[n] = nil end
  end
  if is_shared(opts) and qualified(cc.private) then
    for _, n in ipairs(P.field_names(cc.private)) do out[n] = nil end
  end
  if not (opts and opts.cache_set_cookie == true) and h["set-cookie"] ~= nil then
    out["set-cookie"] = nil
  end
  return out, client_only
end

-- Ranges (RFC 9110 §14, §13.1.5) ------------------------------------------------------------------

-- If-Range: true when the stored representation matches (strong comparison; a date must
-- equal a strong Last-Modified exactly).
local function if_range_ok(if_range, stored)
  if type(if_range) == "table" then return false end
  local v = trim(if_range)
  if find(v, '^W?/?"') then
    local tag = parse_etag(v)
    local etag = parse_etag(first(stored, "etag"))
    return tag ~= nil and etag ~= nil and not tag.weak and not etag.weak and tag.tag == etag.tag
  end
  local t = P.parse_http_date(v)
  local lm = P.parse_http_date(first(stored, "last-modified"))
  local date = P.parse_http_date(first(stored, "date"))
  -- §8.8.2.2: Last-Modified is strong only when at least a second before the Date.
  return t ~= nil and lm ~= nil and t == lm and date ~= nil and date - lm >= 1
end

-- A byte position: any number of digits (beyond 15 it is past any length we hold).
local function pos(s)
  if #s > 15 then return 1e18 end
  return tonumber(s)
end

local function coalesce(ranges)
  sort(ranges, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
  local out = { ranges[1] }
  for i = 2, #ranges do
    local last, r = out[#out], ranges[i]
    -- Overlapping or adjacent (a gap, however small, is a part of its own: what was asked).
    if r[1] <= last[2] + 1 then
      if r[2] > last[2] then last[2] = r[2] end
    else
      out[#out + 1] = r
    end
  end
  return out
end

function P.parse_range(range_value, length, if_range, stored_headers, opts)
  if type(range_value) ~= "string" then return nil end
  local max_ranges = opts and opts.max_ranges or 16
  if if_range ~= nil and not if_range_ok(if_range, stored_headers or EMPTY) then return nil end
  local _, e = find(range_value, "^[ \t]*[Bb][Yy][Tt][Ee][Ss][ \t]*=")
  if not e then return nil end
  local ranges, i, n = {}, e + 1, #range_value
  local any_suffix, members = false, 0
  while i <= n do
    local a = find(range_value, "[^ \t,]", i)
    if not a then break end
    local c = find(range_value, ",", a, true) or n + 1
    members = members + 1
    -- Many members, satisfiable or not, are the denial-of-service pattern of §14.2.
    if members > 4 * max_ranges then return nil end
    local spec = trim(sub(range_value, a, c - 1))
    local f, l = spec:match("^(%d*)%-(%d*)$")
    if not f or (f == "" and l == "") then return nil end
    local first_pos, last_pos
    if f == "" then
      local suffix = pos(l)
      if suffix > 0 then
        any_suffix = true
        if length > 0 then first_pos, last_pos = max(0, length - suffix), length - 1 end
      end
    else
      first_pos = pos(f)
      last_pos = l ~= "" and pos(l) or nil
      if last_pos and last_pos < first_pos then return nil end -- invalid: ignore the field
      if first_pos >= length then
        first_pos = nil
      else
        last_pos = min(last_pos or length - 1, length - 1)
      end
    end
    if first_pos then
      if #ranges >= max_ranges then return nil end -- too many: serve the whole
      ranges[#ranges + 1] = { first_pos, last_pos }
    end
    i = c + 1
  end
  if members == 0 then return nil end -- "bytes=" names no range: invalid, ignored
  if #ranges == 0 then
    if length == 0 and any_suffix then return nil end
    return "unsatisfiable"
  end
  if #ranges > 1 then ranges = coalesce(ranges) end
  return ranges
end

-- Invalidation (§4.4) -----------------------------------------------------------------------------

local DEFAULT_PORT = { http = "80", https = "443" }

-- As the default key has it (engine/cache_ffi.c key_authority): lower-case, without the
-- scheme's default port or an empty one.
local function norm_authority(scheme, host)
  host = lower(host)
  local h, port = host:match("^(.-):(%d*)$")
  if h and not h:find(":$") and (port == "" or DEFAULT_PORT[scheme] == port) then return h end
  return host
end

local function remove_dot_segments(path)
  if not find(path, "/%.") then return path end
  local out = {}
  local trailing = find(path, "/%.%.?$") or sub(path, -1) == "/"
  for seg in path:gmatch("[^/]+") do
    if seg == ".." then
      out[#out] = nil
    elseif seg ~= "." then
      out[#out + 1] = seg
    end
  end
  local p = "/" .. concat(out, "/")
  if trailing and p ~= "/" then p = p .. "/" end
  return p
end

-- The {scheme, host, path} a Location / Content-Location value names, resolved against the
-- request target; nil when it is not a usable http(s) reference.
local function resolve(ref, base)
  if type(ref) ~= "string" or #ref > 8192 then return nil end
  ref = trim(ref)
  local hash = find(ref, "#", 1, true)
  if hash then ref = sub(ref, 1, hash - 1) end
  if ref == "" or find(ref, "[%c ]") then return nil end
  local scheme, rest = ref:match("^(%a[%w+.%-]*):(.*)$")
  if scheme then
    scheme = lower(scheme)
    if scheme ~= "http" and scheme ~= "https" then return nil end
    local host, path = rest:match("^//([^/?]*)(.*)$")
    if not host or host == "" then return nil end
    host = host:gsub("^.*@", "")
    if path == "" or byte(path) == 63 then path = "/" .. path end
    local p, q = path:match("^([^?]*)(.*)$")
    return { scheme = scheme, host = norm_authority(scheme, host), path = remove_dot_segments(p) .. q }
  end
  if sub(ref, 1, 2) == "//" then
    local host, path = ref:match("^//([^/?]*)(.*)$")
    if host == "" then return nil end
    if path == "" or byte(path) == 63 then path = "/" .. path end
    local p, q = path:match("^([^?]*)(.*)$")
    return { scheme = base.scheme, host = norm_authority(base.scheme, host),
      path = remove_dot_segments(p) .. q }
  end
  local p, q = ref:match("^([^?]*)(.*)$")
  local base_path = base.path:match("^[^?]*")
  if p == "" then
    p = base_path
    if q == "" then q = base.path:match("%?.*$") or "" end
  elseif byte(p) ~= 47 then
    p = (base_path:match("^(.*/)") or "/") .. p
  end
  return { scheme = base.scheme, host = base.host, path = remove_dot_segments(p) .. q }
end

local function uri_of(parts) return parts.scheme .. "://" .. parts.host .. parts.path end

function P.invalidations(method, status, req_key_parts, resp_headers)
  if SAFE_METHODS[method] then return {}, {} end
  if type(status) ~= "number" or status < 200 or status > 399 then return {}, {} end
  local k = req_key_parts or EMPTY
  local scheme = lower(k.scheme or "http")
  local base = { scheme = scheme, host = norm_authority(scheme, k.host or ""),
    path = k.path or "/" }
  local uris, parts, seen = {}, {}, {}
  local function add(p)
    local u = uri_of(p)
    if not seen[u] then
      seen[u] = true
      uris[#uris + 1] = u
      parts[#parts + 1] = p
    end
  end
  add(base)
  local h = resp_headers or EMPTY
  for _, name in ipairs({ "location", "content-location" }) do
    local p = resolve(first(h, name), base)
    -- Same origin only, or a response could purge another site's entries.
    if p and p.scheme == base.scheme and p.host == base.host then add(p) end
  end
  return uris, parts
end

-- Cache-Status (RFC 9211) -------------------------------------------------------------------------

-- A Structured Fields string (RFC 8941 §3.3.3): printable ASCII only, so controls and
-- bytes above 127 become "?".
local function sf_string(v)
  local s = gsub(tostring(v), "[%c\128-\255]", "?")
  return '"' .. gsub(s, '(["\\])', "\\%1") .. '"'
end

-- A token when the value is one (RFC 8941 §3.3.4), else a string.
-- Items already written, by value (a few: "luaproxy", "miss", "stale", details): the pattern
-- test is not compiled and ran for every answer. Bounded: emptied at 64.
local sf_memo, sf_memo_n = {}, 0

local function sf_item(v)
  if type(v) == "number" then return format("%d", floor(v)) end
  v = tostring(v)
  local out = sf_memo[v]
  if out then return out end
  if find(v, "^[%a*][!#$%%&'*+%-.%^_`|~:/%w]*$") then out = v else out = sf_string(v) end
  if sf_memo_n >= 64 then sf_memo, sf_memo_n = {}, 0 end
  sf_memo[v], sf_memo_n = out, sf_memo_n + 1
  return out
end

function P.cache_status(t)
  t = t or EMPTY
  local parts = { sf_item(t.cache or "luaproxy") }
  if t.hit then
    parts[#parts + 1] = "hit"
  elseif t.fwd then
    parts[#parts + 1] = "fwd=" .. sf_item(t.fwd)
    if t.fwd_status then parts[#parts + 1] = "fwd-status=" .. format("%d", t.fwd_status) end
  end
  if t.stored then parts[#parts + 1] = "stored" end
  if t.collapsed then parts[#parts + 1] = "collapsed" end
  if t.ttl then parts[#parts + 1] = "ttl=" .. format("%d", floor(t.ttl)) end
  if t.key then parts[#parts + 1] = "key=" .. sf_string(t.key) end
  if t.detail then parts[#parts + 1] = "detail=" .. sf_item(t.detail) end
  local mine = concat(parts, "; ")
  -- §2: each cache appends its member; the one nearest the client comes last.
  local prior = t.prior
  if type(prior) == "table" then prior = concat(prior, ", ") end
  if type(prior) == "string" and find(prior, "%S") then return trim(prior) .. ", " .. mine end
  return mine
end

-- Methods (§4, §4.3.5) ------------------------------------------------------------------------------

-- The method whose stored entries answer a request: HEAD is answered from GET entries.
function P.lookup_method(method)
  if method == "GET" or method == "HEAD" then return "GET" end
  return nil
end

P.is_safe_method = function(method) return SAFE_METHODS[method] == true end

return P
