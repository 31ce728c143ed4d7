-- cache: an RFC 9111 shared cache in front of the route's upstream. The store is the
-- engine's (proxy.cache, engine/cache_store.h: zones shared by every worker, bodies streamed
-- into the entry as they go to the client and served from it without copying); every
-- decision is Lua: the policy module (lua/luaproxy/cache/policy.lua) for the RFC, and any
-- plugin before this one for the site's own rules (req:set_cache_key(), req:cache_bypass(),
-- req:cache_no_store(), req:cache_ttl()). Docs: docs/plugins/cache.md.
local ffi = require "ffi"
local policy = require "luaproxy.cache.policy"
local redis_schema = require "luaproxy.redis"
local redis_health = require "luaproxy.redis_health"

local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local format, sub, lower, gsub, find = string.format, string.sub, string.lower, string.gsub,
  string.find
local concat, max, min, floor = table.concat, math.max, math.min, math.floor
local byte, reverse, ffi_string = string.byte, string.reverse, ffi.string

local P = {
  name = "cache",
  -- Late in every phase: the plugins before it may set the key or bypass (request phase),
  -- refuse storing or set the TTL (response phase), and answer before a lookup (auth).
  priority = 50,
}

local function check_cookie(v)
  if v == true or v == false or v == "strip" then return true end
  return nil, 'expected true, false or "strip"'
end

local function check_heuristic(v)
  if type(v) == "boolean" or (type(v) == "number" and v > 0 and v <= 1) then return true end
  if type(v) == "table" and type(v.fraction) == "number" then return true end
  return nil, "expected a boolean, a fraction (0, 1] or { fraction =, max = }"
end

-- A byte count: a number, or "64k", "1m".
local SIZE_UNITS = { [""] = 1, k = 1024, m = 1024 * 1024 }
local function size_coerce(v)
  if type(v) == "string" then
    local n, unit = v:match("^(%d+)([kKmM]?)$")
    if n then return tonumber(n) * SIZE_UNITS[lower(unit)] end
  end
  return v
end
local function size_check(v)
  if type(v) ~= "number" or v % 1 ~= 0 or v < 1 or v > 512 * 1024 * 1024 then
    return nil, 'expected a size from 1 byte to "512m" (bytes, or "64k", "1m")'
  end
  return true
end

-- A zone the config declares: checked when the config loads (the context carries the
-- names of its cache.zones), so a typo is refused by -t, start and reload rather than
-- leaving the route uncached.
local function check_zone(v, ctx)
  -- A zone shared by routes going to different upstreams with the default key
  -- (config_schema.cache_zone_sharing): said once per load, where -t, start and reload say
  -- their warnings.
  if ctx and ctx.warnings and ctx.warned and ctx.cache_warnings then
    for _, w in ipairs(ctx.cache_warnings) do
      if not ctx.warned[w] then
        ctx.warned[w] = true
        ctx.warnings[#ctx.warnings + 1] = w
      end
    end
  end
  if ctx and ctx.cache_zones and not ctx.cache_zones[v] then
    local names = {}
    for k in pairs(ctx.cache_zones) do names[#names + 1] = format("%q", k) end
    table.sort(names)
    return nil, format("no zone %q in the config's cache.zones (%s)", v,
      #names > 0 and "declared: " .. concat(names, ", ") or "none declared")
  end
  return true
end

-- The longest lifetime or window a config may give: RFC 9111 §1.2.2's delta-seconds cap
-- (2^31, about 68 years), which the policy applies to a response's own max-age. Larger
-- values (1/0, 1e300) would overflow the TTL a hit shows and the keep time of the entry.
local SECONDS_MAX = policy.DELTA_MAX

-- Statuses the policy never stores (policy.storable): a list naming one would promise
-- what never happens.
local NEVER_STORED = { [206] = "a 206 is never stored (a Range request is answered from the "
  .. "whole 200, which is stored)", [304] = "a 304 is never stored (it refreshes the stored "
  .. "response it validates)" }

local function check_statuses(v)
  for i, code in ipairs(v) do
    if NEVER_STORED[code] then return nil, format("[%d]: %d: %s", i, code, NEVER_STORED[code]) end
  end
  return true
end

local function check_default_ttl(v)
  if type(v) ~= "table" then return nil, "expected { [status] = seconds, ... }" end
  for k, s in pairs(v) do
    local code = tonumber(k)
    if not code or code < 200 or code > 999 or code % 1 ~= 0 then
      return nil, format("%s: expected a status from 200 to 999", tostring(k))
    end
    if NEVER_STORED[code] then return nil, format("[%d]: %s", code, NEVER_STORED[code]) end
    if type(s) ~= "number" or not (s >= 0 and s <= SECONDS_MAX) then
      return nil, format("[%s]: expected seconds from 0 to %d (2^31, RFC 9111 §1.2.2), got %s",
        k, SECONDS_MAX, tostring(s))
    end
  end
  return true
end

P.schema = {
  fields = {
    zone = { type = "string", required = true, pattern = "^[%a_][%w_]*$", custom = check_zone,
             description = "the zone (declared in the config's `cache.zones`) entries go to" },
    cache_key = { type = "function",
                  description = "`function(req) return key end`: the cache key (default: "
                    .. "`GET scheme://host/path?query`, HEAD sharing GET's); "
                    .. "req:set_cache_key() from an earlier plugin wins over it; nil or false: "
                    .. "not looked up, not stored (fwd=bypass)" },
    shared = { type = "boolean", default = true,
               description = "a shared cache (s-maxage, private, Authorization rules); "
                 .. "false behaves as a private cache" },
    cache_set_cookie = { type = "any", default = false, custom = check_cookie,
                         description = "responses with Set-Cookie: false refuses to store "
                           .. "them, true stores the field, \"strip\" stores them without it" },
    statuses = { type = "array", elements = { type = "integer", min = 200, max = 999 },
                 custom = check_statuses,
                 description = "only these statuses are ever stored (default: every status "
                   .. "RFC 9111 allows)" },
    heuristic = { type = "any", default = false, custom = check_heuristic,
                  description = "heuristic freshness from Last-Modified (RFC 9111 4.2.2): "
                    .. "true (10 %), a fraction, or { fraction =, max = }; off by default" },
    default_ttl = { type = "any", custom = check_default_ttl,
                    description = "`{ [200] = 60, [404] = 10 }`: freshness for responses with "
                      .. "none of their own (like nginx's proxy_cache_valid); off by default" },
    stale_while_revalidate = { type = "duration", default = 0, min = 0, max = SECONDS_MAX,
                               description = "seconds a stale entry is served while one "
                                 .. "background request refreshes it, beyond the response's "
                                 .. "own stale-while-revalidate" },
    stale_if_error = { type = "duration", default = 0, min = 0, max = SECONDS_MAX,
                       description = "seconds a stale entry is served when the upstream fails "
                         .. "or answers 5xx, beyond the response's own stale-if-error" },
    lock = { type = "boolean", default = true,
             description = "request coalescing: concurrent misses for a key make one upstream "
               .. "request, the others wait for its entry" },
    lock_timeout = { type = "duration", default = 5, min = 0.001, max = SECONDS_MAX,
                     description = "seconds a request waits for another's fill before it "
                       .. "goes upstream itself" },
    keep = { type = "duration", default = 3600, min = 0, max = SECONDS_MAX,
             description = "seconds a stale entry with validators (ETag, Last-Modified) is "
               .. "kept for conditional revalidation" },
    background_timeout = { type = "duration", default = 10, min = 0.001, max = SECONDS_MAX,
                           description = "seconds a background refresh may take" },
    max_vary_fields = { type = "integer", default = 16, min = 1, max = 64,
                        description = "a response varying on more fields is not stored" },
    -- #18: a second tier in Redis, shared by every instance using it.
    l2 = {
      type = "record", doc_default = "none",
      description = "a second tier in Redis shared by every proxy using it: a miss in the "
        .. "zone looks there before going upstream, and a stored response up to "
        .. "max_object_size is copied there (head, freshness and body) for at most ttl_max "
        .. "seconds and never beyond its freshness. Redis failing: skipped (logged once per "
        .. "log_interval, counted in cache_l2_operations_total)",
      fields = {
        redis = redis_schema.schema_record {
          description = "the Redis of the L2 tier",
          timeout = 50,
          timeout_description = "milliseconds for connect, send and read (a slow L2 must "
            .. "cost less than the origin it saves)",
          prefix = "luaproxy:cache:",
          prefix_description = "key prefix (then the zone name and the cache key)",
        },
        max_object_size = { type = "any", default = 65536, coerce = size_coerce,
                            custom = size_check, doc_default = '"64k"',
                            description = "bodies up to this size are copied to Redis" },
        ttl_max = { type = "duration", default = 300, min = 1,
                    description = "seconds an object lives in Redis at most (less when its "
                      .. "freshness ends sooner)" },
        log_interval = { type = "duration", default = 60, min = 0,
                         description = "seconds between two log lines about Redis failing "
                           .. "(per worker)" },
        retry_interval = { type = "duration", default = 1, min = 0,
                           description = "after Redis failed, seconds this worker skips the "
                             .. "L2 tier without asking Redis" },
      },
    },
  },
}

function P.compile(conf)
  local dt
  if conf.default_ttl then
    dt = {}
    for k, v in pairs(conf.default_ttl) do dt[tonumber(k)] = v end
  end
  conf._opts = {
    shared = conf.shared,
    cache_set_cookie = conf.cache_set_cookie,
    statuses = conf.statuses,
    heuristic = conf.heuristic,
    default_ttl = dt,
    stale_while_revalidate = conf.stale_while_revalidate > 0 and conf.stale_while_revalidate or nil,
    stale_if_error = conf.stale_if_error > 0 and conf.stale_if_error or nil,
    max_vary_fields = conf.max_vary_fields,
  }
  local l2 = conf.l2
  -- The common miss may be run by the engine (engine/cache_native.c, replaying this
  -- plugin's own decisions) when no Lua of the site's takes part: no cache_key function, no
  -- L2 tier, no heuristic freshness (which reads Last-Modified's value); the runtime hands
  -- it to the engine only on a route where this is the one plugin.
  if not conf.cache_key and not l2 and not conf.heuristic then
    conf._native = { zone = conf.zone, lock_timeout = conf.lock and conf.lock_timeout or -1 }
  end
  -- Only the L2 tier has log-phase work: without it the engine runs no log phase for the
  -- cache (one coroutine resume less per request).
  if not l2 then conf.skip_phases = { log = true } end
  if l2 then
    local r = l2.redis
    conf._l2 = {
      opts = redis_schema.connect_opts(r),
      pool_size = r.pool_size,
      prefix = r.prefix .. conf.zone .. ":",
      addr = r.host .. ":" .. r.port,
      down_key = redis_health.down_key(r), -- retry_interval's state (luaproxy.redis_health)
      max_object_size = l2.max_object_size,
      ttl_max = l2.ttl_max,
      log_interval = l2.log_interval,
      retry_interval = l2.retry_interval,
    }
  end
  return conf
end

-- ---- entry heads: the policy's meta, the status and the stored fields, as lines ----

-- A meta number as decode reads it back exactly: an integral one (a status, an age, most
-- TTLs and dates) in decimal with %d, the same text %.17g gives it at a fraction of the cost
-- (LuaJIT's %g runs its arbitrary-precision conversion: about 550 instructions a number);
-- another as %.17g.
local function num(v)
  if v == floor(v) and v < 2^53 and v > -2^53 then return format("%d", v) end
  return format("%.17g", v)
end

-- A head's layout (engine/cache_room.h, LP_CACHE_HEAD_MAGIC): "L2", the request and
-- response times as two little-endian doubles (NaN: none), "\n", then lines. The times are
-- bytes, not text: exact, and the engine's stored miss writes them with two stores (their
-- text was the dearest of its lines). Layout 1 (times as text lines) decodes to nothing: an
-- entry of an older process is a miss, never misread.
local TIMES = ffi.new("double[2]")
local LE = ffi.abi("le")
local NAN = 0 / 0

local function swap8(s)
  return reverse(sub(s, 1, 8)) .. reverse(sub(s, 9, 16))
end

local function times_bytes(request_time, response_time)
  TIMES[0], TIMES[1] = request_time or NAN, response_time or NAN
  local s = ffi_string(TIMES, 16)
  return LE and s or swap8(s)
end

-- The two times of a head of this layout, or nil when it is not one.
local function head_times(head)
  if #head < 19 or sub(head, 1, 2) ~= "L2" or byte(head, 19) ~= 10 then return nil end
  if LE then
    ffi.copy(TIMES, ffi.cast("const char *", head) + 2, 16)
  else
    ffi.copy(TIMES, swap8(sub(head, 3, 18)), 16)
  end
  local a, b = TIMES[0], TIMES[1]
  return true, a == a and a or nil, b == b and b or nil
end

-- The field names of headers in `order` (a head's, decode's: those still there), then the
-- others sorted: never pairs' order, which differs between worker VMs and made a revalidated
-- entry's hits list their fields in a new order after each 304 (new-user retrial).
local function names_of(headers, order)
  local names, seen, rest = {}, {}, {}
  for _, name in ipairs(order or {}) do
    if headers[name] ~= nil and not seen[name] then
      names[#names + 1], seen[name] = name, true
    end
  end
  for name in pairs(headers) do
    if not seen[name] then rest[#rest + 1] = name end
  end
  table.sort(rest)
  for _, name in ipairs(rest) do names[#names + 1] = name end
  return names
end

-- order: the field names' order to keep (names_of); nil: sorted.
local function encode(meta, headers, case, order)
  case = case or {}
  local out = { "L2" .. times_bytes(meta.request_time, meta.response_time) }
  for k, v in pairs(meta) do
    local t = (k == "request_time" or k == "response_time") and "prefix" or type(v) -- times: above
    if t == "number" then
      out[#out + 1] = "n " .. k .. "\t" .. num(v)
    elseif t == "string" then
      out[#out + 1] = "s " .. k .. "\t" .. gsub(v, "[\r\n]", " ")
    elseif t == "boolean" then
      out[#out + 1] = "b " .. k .. "\t" .. (v and "1" or "0")
    end
  end
  for _, lname in ipairs(names_of(headers, order)) do
    local v = headers[lname]
    local name = case[lname] or lname -- the upstream's case, replayed on hits
    if type(v) == "table" then
      for _, x in ipairs(v) do out[#out + 1] = "h " .. name .. "\t" .. x end
    else
      out[#out + 1] = "h " .. name .. "\t" .. v
    end
  end
  return concat(out, "\n") .. "\n"
end

local function decode(head)
  local ok, request_time, response_time = head_times(head)
  if not ok then return nil end
  local meta, headers, case = { request_time = request_time, response_time = response_time }, {}, {}
  local order = {} -- the field names as the head lists them first: a hit's order (served_list)
  for kind, k, v in sub(head, 20):gmatch("(%a) ([^\t\n]+)\t([^\n]*)\n") do
    if kind == "h" then
      local l = lower(k)
      if l ~= k then case[l] = k end
      k = l
      local prev = headers[k]
      if prev == nil then
        order[#order + 1] = k
        headers[k] = v
      elseif type(prev) == "table" then
        prev[#prev + 1] = v
      else
        headers[k] = { prev, v }
      end
    elseif kind == "n" then
      meta[k] = tonumber(v)
    elseif kind == "s" then
      meta[k] = v
    elseif kind == "b" then
      meta[k] = v == "1"
    end
  end
  return meta, headers, case, order
end

-- encode's lines for a meta from policy.meta (every key it sets, and ttl/ttl_source a Lua
-- TTL changes), written without a loop over the table: a loop in the response phase starts
-- its own trace, whose exits cannot be compiled through the phase's return (LuaJIT: "NYI:
-- return to lower frame"), and left the rest of every miss interpreted. Its strings come
-- from the policy and the response's fields, which hold no CR or LF. The request and
-- response times (proxy.now(): fractions of a second) are the prefix's bytes. Written into
-- one reused buffer: a string per piece and per concatenation cost more than the lines.
local META = require("string.buffer").new(512) -- encode_meta's, reused (one string made)

local function encode_meta(m)
  TIMES[0], TIMES[1] = m.request_time or NAN, m.response_time or NAN
  local b = META:reset():put("L2")
  if LE then b:putcdata(TIMES, 16) else b:put(swap8(ffi_string(TIMES, 16))) end
  b:putf("\nn status\t%s\nn age_value\t%s\nn ttl\t%s\ns ttl_source\t%s\n"
    .. "b must_revalidate\t%s\nb no_cache\t%s\n", num(m.status), num(m.age_value), num(m.ttl),
    m.ttl_source, m.must_revalidate and "1" or "0", m.no_cache and "1" or "0")
  if m.date then b:put("n date\t", num(m.date), "\n") end
  if m.etag then b:put("s etag\t", m.etag, "\n") end
  if m.last_modified then b:put("s last_modified\t", m.last_modified, "\n") end
  if m.stale_while_revalidate then
    b:put("n stale_while_revalidate\t", num(m.stale_while_revalidate), "\n")
  end
  if m.stale_if_error then b:put("n stale_if_error\t", num(m.stale_if_error), "\n") end
  return b:tostring()
end

P._encode, P._decode, P._encode_meta = encode, decode, encode_meta -- specs

-- ---- helpers ----

local NO_DIRECTIVES = policy.request_directives({}) -- shared by requests without any: read only

-- The request fields storable reads in the response phase, read (kept in the view) in the
-- request phase: as the request was looked up, whatever a later plugin changes in what goes
-- upstream. Absent ones cost nothing (Zone:req_view).
local function read_early(rh)
  return rh.authorization, rh["content-length"], rh["transfer-encoding"]
end

-- The default key (no cache_key, no req:set_cache_key()) is Zone:default_key's:
-- "GET scheme://host/path?query", HEAD sharing GET's.

local function zone_of(conf)
  local z = proxy.cache.zone(conf.zone)
  if not z then
    proxy.log.error(format("cache: no zone %q in the config's cache.zones", conf.zone))
  end
  return z
end

-- Fields a served entry never repeats as stored: framing (the engine's), and the ones the
-- cache sets itself. engine/cache_native.c's not_served has the same list (the engine's
-- first hit on a head it stored serves it as this would).
local NOT_SERVED = { ["content-length"] = true, ["transfer-encoding"] = true, age = true,
  ["cache-status"] = true, connection = true, ["keep-alive"] = true }

-- How long the store keeps an entry: its freshness left, the longest stale window anything
-- allows, and `keep` more when it can be revalidated.
local function stale_for(meta, conf)
  local stale = max(meta.stale_while_revalidate or 0, meta.stale_if_error or 0,
    conf.stale_while_revalidate, conf.stale_if_error)
  if meta.etag or meta.last_modified then stale = max(stale, conf.keep) end
  return stale
end

local function keep_for(meta, conf, now)
  local left = meta.ttl - policy.current_age(meta, now)
  return max(left, 0) + stale_for(meta, conf) + 1
end

-- Decoded heads, per worker VM, by head text: a hit on a hot entry decodes nothing. The
-- tables are shared by every hit on that head and never changed (serve copies what it
-- adds). Bounded: emptied when it holds 4096 heads.
local decoded, ndecoded = {}, 0

-- The fields a hit serves as stored, in the upstream's case, as { name, value } pairs: built
-- once per decoded head (served_list) so a hit copies an array instead of walking the header
-- table with pairs (a loop that aborts the trace) and re-casing every name.
-- The list's `wire` holds the same fields as "Name: value\r\n" lines: a hit sends them with
-- one call (Zone:respond), not one per field.
-- In `order` (the head's: decode), or, for a table without one (a 304's merged fields, a
-- refetch), by name: never pairs' order, which differs between worker VMs (each hashes
-- strings with its own seed), so hits would list their fields differently.
local function served_list(headers, case, order)
  local list, wire = {}, {}
  if not order then
    order = {}
    for name in pairs(headers) do order[#order + 1] = name end
    table.sort(order)
  end
  for _, name in ipairs(order) do
    local v = headers[name]
    if not NOT_SERVED[name] then
      local out = case[name] or name
      if type(v) == "table" then
        for _, x in ipairs(v) do list[#list + 1] = { out, x } end
      else
        list[#list + 1] = { out, v }
      end
    end
  end
  for i = 1, #list do wire[i] = list[i][1] .. ": " .. list[i][2] .. "\r\n" end
  list.wire = concat(wire)
  return list
end

-- A served list's fields in full: its shared base's, then its own.
local function full_list(list)
  local out = {}
  for i, kv in ipairs(list.base) do out[i] = kv end
  for _, kv in ipairs(list) do out[#out + 1] = kv end
  return out
end

local function decode_cached(head)
  local d = decoded[head]
  if d then return d[1], d[2], d[3], d[4] end
  local meta, headers, case, order = decode(head)
  if not meta then return nil end
  if ndecoded >= 4096 then decoded, ndecoded = {}, 0 end
  local base = served_list(headers, case, order)
  decoded[head] = { meta, headers, case, base }
  ndecoded = ndecoded + 1
  return meta, headers, case, base
end

-- The entry stored for key that fits this request: meta, headers, body length; or nil (and
-- the secondary key when the key varies), the 8th value then saying which miss it is (RFC
-- 9211 fwd): "vary-miss" when the key has responses (its Vary marker) but none for this
-- request's Vary fields, "miss" when one is there that this request cannot carry (wider
-- than its header slots: Zone:get), else "uri-miss" (nothing under the key).
-- disk: true when the entry came from the disk tier for this request; vary (9th): the
-- key's Vary marker's field value, when the key varies.
local function lookup(req, z, key, rh, conf)
  local head, blen, disk, unfit = z:get(req, key, "")
  if not head then return nil, nil, nil, nil, nil, nil, nil, unfit and "miss" or "uri-miss" end
  local sec, vary = "", nil
  if sub(head, 1, 2) == "V " then
    vary = sub(head, 3)
    sec = policy.secondary_key(vary, rh, conf.max_vary_fields)
    if not sec then return nil, nil, nil, nil, nil, nil, nil, "vary-miss" end
    head, blen, disk, unfit = z:get(req, key, sec)
    if not head then return nil, nil, nil, sec, nil, nil, nil, unfit and "miss" or "vary-miss" end
  end
  local meta, headers, case, base = decode_cached(head)
  if not meta then return nil, nil, nil, nil, nil, nil, nil, "uri-miss" end
  return meta, headers, blen, sec, case, base, disk, nil, vary
end

-- Several ranges (RFC 9110 §14.6): a multipart/byteranges body built from the entry, when the
-- answer can still be a local one (the request phase). The whole 200 serves them instead when
-- the parts (already coalesced: overlapping or close ranges merged) would carry at least the
-- whole entity, or more than MULTIPART_MAX bytes (the body is built in memory).
local MULTIPART_MAX = 8 * 1024 * 1024

local function multipart(req, st, list, ranges, blen)
  local total = 0
  for _, r in ipairs(ranges) do total = total + r[2] - r[1] + 1 end
  if total >= blen or total > MULTIPART_MAX or st.phase ~= "request" then return false end
  local ctype
  local hdrs = {}
  for _, kv in ipairs(list) do
    local l = lower(kv[1])
    if l == "content-type" then
      ctype = kv[2]
    else
      local prev = hdrs[kv[1]]
      hdrs[kv[1]] = prev and (prev .. ", " .. kv[2]) or kv[2]
    end
  end
  local data = {}
  for i, r in ipairs(ranges) do
    data[i] = st.zone:read(req, r[1], r[2] - r[1] + 1)
    if not data[i] then return false end -- on disk only (streamed): the whole 200 goes
  end
  -- A boundary that occurs in no part (RFC 2046 §5.1.1).
  local boundary
  repeat
    boundary = format("lp%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
    for _, d in ipairs(data) do
      if find(d, boundary, 1, true) then boundary = nil break end
    end
  until boundary
  hdrs["Content-Type"] = "multipart/byteranges; boundary=" .. boundary
  local parts = {}
  for i, r in ipairs(ranges) do
    parts[#parts + 1] = "\r\n--" .. boundary .. "\r\n"
      .. (ctype and ("Content-Type: " .. ctype .. "\r\n") or "")
      .. format("Content-Range: bytes %d-%d/%d\r\n\r\n", r[1], r[2], blen) .. data[i]
  end
  parts[#parts + 1] = "\r\n--" .. boundary .. "--\r\n"
  req:respond(206, concat(parts), hdrs)
  return true
end

-- Answers from the entry looked up last: client conditionals (304/412) and ranges (206/416)
-- first. Ends the request phase; in the response phase it replaces the upstream's answer.
-- The request fields that make an answer conditional (RFC 9110 §13.1): without any of them
-- policy.conditional answers nil, so a hit skips it (and its date and ETag parsing).
local function has_conditional(rh)
  return rh["if-match"] ~= nil or rh["if-none-match"] ~= nil
    or rh["if-modified-since"] ~= nil or rh["if-unmodified-since"] ~= nil
end

-- A list serve made with only its wire form gets its fields as pairs too (an answer adding
-- a field, multipart). Returns it.
local function own_pairs(list, age_s, status_value)
  if list.wire and #list == 0 then
    list[1], list[2] = { "Age", age_s }, { "Cache-Status", status_value }
  end
  return list
end

-- base: the served_list of (meta, headers) when the caller has it (a hit from decode_cached);
-- else it is built here (a 304's merged fields, a refetch).
local function serve(req, conf, st, meta, headers, blen, cs, client_only, base)
  local z = st.zone
  local now = proxy.now()
  local age = policy.current_age(meta, now)
  base = base or served_list(headers, st.case or {})
  local age_s = policy.age_header(age)
  -- RFC 9111 §4.2.3 in whole seconds: Age is the age rounded down, and the TTL shown is the
  -- lifetime less that same age (max-age=60 served at once: Age 0, ttl=60).
  local prior, ttl = headers["cache-status"], meta.ttl - floor(age)
  -- Within what %d writes (the engine's miss line clamps alike: cache_ffi.c): a head stored
  -- by an older process, before lifetimes were bounded, must not show ttl=-2^63.
  if ttl ~= ttl or ttl > 1e15 then ttl = 1e15 elseif ttl < -1e15 then ttl = -1e15 end
  local status_value
  if cs.hit and prior == nil and not cs.collapsed and not cs.detail then
    -- What policy.cache_status makes of { hit = true, ttl = ttl }, without its tables and
    -- pattern matching (not compiled) on every hit.
    status_value = "luaproxy; hit; ttl=" .. format("%d", floor(ttl))
  else
    status_value = policy.cache_status { hit = cs.hit, fwd = cs.fwd, fwd_status = cs.fwd_status,
      stored = cs.stored, collapsed = cs.collapsed, detail = cs.detail, prior = prior, ttl = ttl }
  end
  -- This answer's own fields; base's (shared by every hit on the head: never changed) go
  -- first (Zone:respond). `wire`: the list's own fields as lines, while they are these two
  -- (a hit sends base.wire and wire: no loop, one call), without them as pairs until an
  -- answer adds a field (own_pairs).
  local list
  if client_only then
    list = { base = base }
    for name, v in pairs(client_only) do -- this response's only (a 304's Set-Cookie)
      if type(v) == "table" then
        for _, x in ipairs(v) do list[#list + 1] = { name, x } end
      else
        list[#list + 1] = { name, v }
      end
    end
    list[#list + 1] = { "Age", age_s }
    list[#list + 1] = { "Cache-Status", status_value }
  else
    list = { base = base, wire = "Age: " .. age_s .. "\r\nCache-Status: " .. status_value .. "\r\n" }
  end
  st.served = true
  local method, status = req:method(), meta.status or 200
  local rh = st.rh
  local c = has_conditional(rh) and policy.conditional(method, rh, headers, meta.response_time)
  if c then return z:respond(req, c, list, -2) end
  local range = rh.range
  if method == "GET" and status == 200 and range then
    local r = policy.parse_range(range, blen, st.rh["if-range"], headers, conf._opts)
    if r == "unsatisfiable" then
      own_pairs(list, age_s, status_value)
      list[#list + 1] = { "Content-Range", format("bytes */%d", blen) }
      list.wire = nil
      return z:respond(req, 416, list, -2)
    elseif type(r) == "table" and #r == 1 then
      own_pairs(list, age_s, status_value)
      list[#list + 1] = { "Content-Range", format("bytes %d-%d/%d", r[1][1], r[1][2], blen) }
      list.wire = nil
      return z:respond(req, 206, list, r[1][1], r[1][2])
    elseif type(r) == "table" and multipart(req, st, full_list(own_pairs(list, age_s, status_value)), r, blen) then
      return
    end
  end
  return z:respond(req, status, list)
end

-- The stale entry the request went upstream to revalidate, served because the upstream
-- failed: answered 5xx (fwd_status, within stale-if-error) or could not be reached (nil:
-- no status came). The request was forwarded (RFC 9211: not a hit), hence fwd=stale; the
-- detail says which allowance served it: stale-if-error (the response's, the request's or
-- the plugin's window), else disconnected (RFC 9111 §4.2.4 alone, the origin unreachable).
local function serve_stale_on_error(req, conf, st, fwd_status)
  local stale = st.stale
  st.zone:count("stale")
  return serve(req, conf, st, stale.meta, stale.headers, stale.blen,
    { fwd = "stale", fwd_status = fwd_status,
      detail = stale.d.stale_if_error and "stale-if-error" or "disconnected" }, nil, stale.base)
end

-- What the plugin asks upstream itself (a background refresh, a 304 that validated another
-- response): the client's request without its conditionals and Range, sent by proxy.http to
-- the route's upstream's targets. The engine's balancer is not reachable from Lua: targets
-- are tried from a per-worker rotating start, skipping the ones health checks marked down,
-- the next one after a connect failure, a timeout or a `retry_on` status, at most `retries`
-- + 1 of them (the upstream's config). Returns the response (its body read), or nil, error.
local HOP = { connection = true, ["keep-alive"] = true, te = true, trailer = true,
  ["transfer-encoding"] = true, upgrade = true, ["proxy-authorization"] = true,
  ["content-length"] = true, range = true, ["if-range"] = true, ["if-none-match"] = true,
  ["if-modified-since"] = true, ["if-match"] = true, ["if-unmodified-since"] = true,
  expect = true }

local rotate = 0

local function fetch_plan(req, phases_response)
  local name = req:upstream_name()
  if not name then return nil end
  local ok, up = pcall(proxy.upstream, name)
  if not ok then return nil end
  local addrs = {}
  for _, t in ipairs(up:targets()) do
    if t.state ~= "down" then addrs[#addrs + 1] = t.address end
  end
  if #addrs == 0 then return nil end
  local cfg = proxy.config
  local uconf = cfg and cfg.upstreams and cfg.upstreams[name] or {}
  local tls = uconf.tls
  local plan = { addrs = addrs, tries = math.min(#addrs, (tonumber(uconf.retries) or 1) + 1),
    scheme = tls and "https" or "http", path = req:uri(), retry_on = {} }
  if tls then
    plan.verify = not (type(tls) == "table" and tls.verify == false)
    plan.sni = type(tls) == "table" and tls.sni or nil
  end
  for _, code in ipairs(uconf.retry_on or {}) do plan.retry_on[code] = true end
  -- In the response phase, the target that just answered goes first.
  plan.first = phases_response and req:upstream_addr() or nil
  return plan
end

local function fetch(plan, rh, timeout)
  local headers = {}
  for k, v in pairs(rh) do if not HOP[k] then headers[k] = v end end
  local order = {}
  if plan.first then order[1] = plan.first end
  rotate = rotate + 1
  for i = 1, #plan.addrs do
    local a = plan.addrs[(rotate + i - 2) % #plan.addrs + 1]
    if a ~= plan.first then order[#order + 1] = a end
  end
  local res, err
  for i = 1, math.min(#order, plan.tries) do
    res, err = proxy.http.request { url = plan.scheme .. "://" .. order[i] .. plan.path,
      headers = headers, timeout = timeout, ssl_verify = plan.verify, server_name = plan.sni }
    if res and not plan.retry_on[res.status] then return res end
  end
  return res, err
end

-- Stores a response the plugin fetched (when it may be) under the request's key: true.
local function put_fetched(z, key, sec, rh, res, t0, conf)
  local now = proxy.now()
  local rsh, case = {}, {}
  -- proxy.http's headers have lower-case names; header_names has them as the upstream wrote
  -- them, which the entry keeps as a foreground fill does (a hit replays the upstream's case).
  local names = res.header_names or {}
  for k, v in pairs(res.headers) do
    local l = lower(k)
    rsh[l] = v
    local written = names[l] or k
    if written ~= l then case[l] = written end
  end
  if not policy.storable("GET", res.status, rh, rsh, conf._opts) then return false, rsh, case end
  local meta = policy.meta(res.status, rsh, t0, now, conf._opts)
  return z:put(key, sec, encode(meta, policy.stored_headers(rsh, conf._opts), case),
    keep_for(meta, conf, now), res.body), rsh, case
end

-- One background refresh per key (stale-while-revalidate): the route's upstream asked again
-- (fetch), its answer stored if it may be. Per worker, `refreshing`; across workers, a marker
-- entry under the key (secondary key REFRESHING, which no lookup makes) while one runs, kept
-- at most background_timeout and dropped (stored again, already expired) when it ends. The
-- marker is looked at, then put: two workers may both start within that instant.
local refreshing = {}
local REFRESHING = "\0refreshing"
P._refreshing = refreshing -- specs (another worker is this table emptied)

-- Returns true when the entry this request looked up is still the one it serves (false: it
-- went while the marker was looked at).
local function refresh_in_background(req, conf, st, sec)
  local key, z = st.key, st.zone
  if refreshing[key] then return true end
  local plan = fetch_plan(req, false)
  if not plan then return true end
  local busy = z:get(req, key, REFRESHING)
  -- That get replaced the entry this request serves: look it up again.
  if not z:get(req, key, sec or "") then return false end
  if busy then return true end
  local rh = req:headers() -- a whole table: fetch walks it, after this request ended
  refreshing[key] = true
  z:put(key, REFRESHING, "", conf.background_timeout)
  local spawned = proxy.spawn(function()
    local t0 = proxy.now()
    local res, err = fetch(plan, rh, conf.background_timeout)
    refreshing[key] = nil
    z:put(key, REFRESHING, "", -1)
    if not res then
      proxy.log.warn("cache: background refresh of " .. key .. " failed: " .. tostring(err))
      return
    end
    put_fetched(z, key, sec, rh, res, t0, conf)
  end)
  if not spawned then
    refreshing[key] = nil
    z:put(key, REFRESHING, "", -1)
  end
  return true
end

-- A 304 whose validator is not the stored response's (RFC 9111 §4.3.4) updates nothing, and
-- the stale entry may not be served: the full response is asked for without conditions,
-- stored when it may be (else kept only for this answer, under a secondary key no lookup
-- makes) and served from the entry.
-- How many field lines a hit serves of a header table (name -> value or list of values).
local function field_count(h)
  local n = 0
  for k, v in pairs(h or {}) do
    if not NOT_SERVED[k] then n = n + (type(v) == "table" and #v or 1) end
  end
  return n
end

local function refetch(req, conf, st)
  local z, stale = st.zone, st.stale
  local plan = fetch_plan(req, true)
  local t0 = proxy.now()
  local res, err
  local sent = req:headers()
  if plan then res, err = fetch(plan, sent, conf.background_timeout) end
  if not res then
    proxy.log.warn("cache: full fetch of " .. st.key .. " failed: " .. tostring(err or "no target"))
    if stale.d and (stale.d.stale_if_error or stale.d.stale_if_disconnected) then
      return serve_stale_on_error(req, conf, st, nil)
    end
    if st.forced then z:count("miss") end
    req:set_status(502)
    return
  end
  -- the entry was not used: answered in full (counted once the full response came; a
  -- failed fetch that serves stale counts stale only)
  if st.forced then z:count("miss") end
  -- The variant is stored under the request as it went upstream (P.response's rule): the
  -- one fetch sent, after the plugins that ran after the cache, not the client's values the
  -- lookup read.
  local sec = stale.sec or ""
  if stale.vary then sec = policy.secondary_key(stale.vary, sent, conf.max_vary_fields) or sec end
  local stored, rsh, case = put_fetched(z, st.key, sec, st.rh, res, t0, conf)
  if not stored then
    sec = sec .. "\0once"
    if not z:put(st.key, sec, encode(policy.meta(res.status, rsh, t0, proxy.now(), conf._opts), rsh,
      case), 1, res.body) then
      -- Refused (a head too wide for a hit, a body over max_object_size): the client gets
      -- the upstream's answer as it came, as without the cache.
      if not z:answer(req, res) then req:set_status(502) end
      return
    end
  end
  local head, blen = z:get(req, st.key, sec)
  if not head then
    if not z:answer(req, res) then req:set_status(502) end
    return
  end
  local meta, headers, hcase, base = decode_cached(head)
  if not meta then req:set_status(502) return end
  st.case = hcase
  return serve(req, conf, st, meta, headers, blen,
    { fwd = st.fwd or "stale", fwd_status = res.status, stored = stored or nil }, nil, base)
end

-- The client's preconditions and Range never go upstream on a request that may fill or
-- revalidate an entry (RFC 9111 §4.3.1-2, as nginx does): the origin answers in full (or 304
-- to the cache's own validators), and the cache answers them from what it then holds.
local function forward_headers(req, st, rh, stored)
  for k, v in pairs(policy.forward_headers(rh, stored)) do
    if v == false then
      req:clear_header(k)
      st.stripped = true
    else
      req:set_header(k, v)
    end
  end
end

-- One lookup for P.request: true when the request was answered (from the entry, or 504
-- under only-if-cached) or goes upstream to revalidate; false on a miss (st.sec set).
-- waited: after waiting for another request's fill.
-- serve's cs of a plain hit, and of one that came from the disk tier (RFC 9211 detail:
-- a hit is a hit, from memory or from a file; the detail tells them apart). serve reads
-- them only.
local HIT, DISK_HIT = { hit = true }, { hit = true, detail = "disk" }

-- only-if-cached with no usable entry (RFC 9111 §5.2.1.7): 504, nothing forwarded (its
-- Cache-Status has neither hit nor fwd: P.response gives it detail=only-if-cached).
local function only_if_cached(req, st)
  st.only_if_cached = true
  req:respond(504, "not cached\n", { ["Content-Type"] = "text/plain" })
  return true
end


local function look(req, conf, st, z, key, rh, rd, waited)
  local meta, headers, blen, sec, case, base, disk, miss, vary = lookup(req, z, key, rh, conf)
  st.case = case
  if meta then
    local now = proxy.now()
    -- A request without directives on a fresh entry: evaluate's "fresh" without its details
    -- table (policy.fresh_plain).
    if rd == NO_DIRECTIVES and not waited and not st.l2 and policy.fresh_plain(meta, now) then
      z:count("hit")
      -- The engine may answer the next plain hits on this entry as this one is answered
      -- (engine/cache_native.c: status, the stored fields, Age and Cache-Status from
      -- current_age), while it is fresh. Before serve, which ends the phase.
      if conf._native and sec == "" and not disk and headers["cache-status"] == nil then
        z:native_hit(req, meta.status or 200, base.wire,
          policy.current_age(meta, meta.response_time), meta.response_time, meta.ttl or 0)
      end
      serve(req, conf, st, meta, headers, blen, disk and DISK_HIT or HIT, nil, base)
      return true
    end
    local decision, d = policy.evaluate(meta, rd, now, conf._opts)
    if decision == "fresh" or decision == "stale_ok" then
      z:count(decision == "fresh" and "hit" or "stale")
      -- After waiting for another request's fill, this one was collapsed into that forward
      -- (RFC 9211: collapsed goes with fwd, not hit).
      local detail = st.l2 or (disk and "disk") or nil
      serve(req, conf, st, meta, headers, blen, waited
        and { fwd = st.miss or "uri-miss", collapsed = true, detail = detail }
        or { hit = true, detail = detail }, nil, base)
      return true
    elseif decision == "stale_while_revalidate" then
      z:count("stale")
      if refresh_in_background(req, conf, st, sec) then
        serve(req, conf, st, meta, headers, blen, { hit = true, detail = "stale-while-revalidate" },
          nil, base)
        return true
      end
      -- The entry went (evicted, purged) while the marker was looked at: a miss.
    elseif decision == "revalidate" then
      -- A fresh entry the request's own directives refused (no-cache, max-age, min-fresh) is
      -- not expired: counted when the answer comes, revalidated (a 304) or miss (P.response).
      if d and d.fwd == "request" then st.forced = true else z:count("expired") end
      st.stale = { meta = meta, headers = headers, blen = blen, sec = sec, d = d, base = base,
        vary = vary }
      st.fwd = d and d.fwd or "stale"
      if not waited and conf.lock then z:lock(req, key, conf.lock_timeout) end
      -- Our validators replace the client's: a 304 makes the stored entry current, and the
      -- client's own conditionals and Range are then answered from it.
      forward_headers(req, st, rh, headers)
      return true
    elseif d and d.only_if_cached then
      return only_if_cached(req, st)
    end
  end
  if rd.only_if_cached then return only_if_cached(req, st) end
  st.sec = sec
  -- The first look's kind of miss: a request collapsed into another's fill was that miss too.
  st.miss = st.miss or miss or "uri-miss"
  return false
end

-- A plain GET that waited for another request's fill: answered from the fill's entry as it
-- fills, when its head is written, it is this request's variant (st.sec, from look's miss)
-- and fresh as it stands; the engine streams the body as it comes (conn.c's fill stream),
-- cut short should the fill fail. false: none such.
local function follow(req, conf, st, z, key)
  local head, hint = z:get_filling(req, key, st.sec or "")
  if not head then return false end
  local meta, headers, case, base = decode_cached(head)
  if not meta or meta.status == 206
    or policy.evaluate(meta, NO_DIRECTIVES, proxy.now(), conf._opts) ~= "fresh" then
    -- Not followed: the request's looked-up entry is the linked one again, as look left it
    -- (get_filling made the filling entry the request's; a later answer must not use it).
    z:get(req, key, st.sec or "")
    return false
  end
  st.case = case
  z:count("hit")
  serve(req, conf, st, meta, headers, hint,
    { fwd = st.miss or "uri-miss", collapsed = true }, nil, base)
  return true
end

-- Rounds of waiting a request makes for fills of its key that end without its entry (on a
-- varying key, other variants' fills) before it goes upstream on its own.
local WAIT_ROUNDS = 8

-- A request whose key another request fills: waits for that fill and looks again each time a
-- fill of the key ends (its entry may be the next one's), or takes the lock to fill its own
-- entry when the key is free; bounded by lock_timeout without progress (the engine's wait,
-- lp_ffi_cache_wait, counts from the fill's last progress) and by WAIT_ROUNDS fills. A plain
-- GET is woken as soon as a fill's head is written, and answered from the entry as it fills
-- when it is its variant (follow); any other request waits for whole fills. True when it
-- answered.
local function wait_fill(req, conf, st, z, key, rh, rd, plain)
  local deadline = proxy.monotonic() + conf.lock_timeout
  for _ = 1, WAIT_ROUNDS do
    if z:locked(key) then
      local left = deadline - proxy.monotonic()
      if left <= 0 then return false end -- no progress for lock_timeout: upstream
      -- Woken by the filling worker, whichever it is (true: the fill's head is ready).
      local ready = z:wait(key, left, plain)
      if look(req, conf, st, z, key, rh, rd, true) then return true end
      if ready then
        if follow(req, conf, st, z, key) then return true end
        plain = false -- another variant's fill (or not fresh): wait for whole fills now
      end
      if proxy.monotonic() < deadline then deadline = proxy.monotonic() + conf.lock_timeout end
    elseif look(req, conf, st, z, key, rh, rd, true) then
      return true -- a fill ended between this request's lock attempt and now
    elseif z:lock(req, key, conf.lock_timeout) then
      return false -- the key's fills ended without this entry: this request fills it
    end -- (another request took the lock meanwhile: wait for its fill)
  end
  return false
end

-- ---- the L2 tier in Redis (#18, docs/plugins/cache.md) ----
--
-- Redis keys: PREFIX ZONE ":" KEY for an entry without Vary, or for the Vary marker
-- ("LPV2\n" GEN "\n" then the Vary field) of a key that varies, whose variants are under
-- PREFIX ZONE ":" KEY "\0" GEN "\0" SECONDARY_KEY: the same key and secondary key as the
-- memory tier, computed by the same functions, so an L2 entry answers exactly the requests
-- its memory twin would. GEN is drawn when a store makes a marker: deleting the marker (an
-- unsafe method's invalidation) or replacing it (another Vary, another response without
-- one) orphans every variant stored under it, and they expire unseen; a store that finds
-- the marker of its Vary adds its variant under that marker's GEN. An entry is "LPC1\n"
-- HEAD_LENGTH "\n" HEAD BODY, HEAD being the encoded head the zone stores (the policy's meta
-- with its dates, the status and the fields): another proxy computes the same age and
-- freshness from it.

local L2_MAX_KEY = 4096 -- as the zone: longer keys are not cached
local l2_health = redis_health.new("cache: Redis L2 %s failed (%s); the L2 tier is skipped")
local m_l2 -- cache_l2_operations_total{zone, result}, declared by init_worker

local function l2_count(conf, result)
  if m_l2 then m_l2:inc(1, conf.zone, result) end
end

local function l2_failed(conf, l2, err)
  l2_health:failed(l2.down_key, l2.addr, err, l2.retry_interval, l2.log_interval)
  l2_count(conf, "failed")
end

-- A connected client, or nil (Redis failed now or within retry_interval: counted, logged).
local function l2_connect(conf, l2)
  if l2_health:skip(l2.down_key) then
    l2_count(conf, "failed")
    return nil
  end
  local red, err = proxy.redis.connect(l2.opts)
  if not red then
    l2_failed(conf, l2, err)
    return nil
  end
  return red
end

P._l2_forget_failures = function() l2_health:forget() end -- specs

-- An "LPC1" value: head, body; or nil.
local function l2_parse(v)
  if type(v) ~= "string" or sub(v, 1, 5) ~= "LPC1\n" then return nil end
  local nl = find(v, "\n", 6, true)
  local hl = nl and tonumber(sub(v, 6, nl - 1))
  if not hl or nl + hl > #v then return nil end
  return sub(v, nl + 1, nl + hl), sub(v, nl + hl + 1)
end

-- A Vary marker's generation and Vary field, or nil when v is none.
local function l2_marker(v)
  if type(v) ~= "string" or sub(v, 1, 5) ~= "LPV2\n" then return nil end
  local nl = find(v, "\n", 6, true)
  if not nl or nl == 6 then return nil end
  return sub(v, 6, nl - 1), sub(v, nl + 1)
end

-- A new marker's generation: 62 random bits (math.random is seeded from the OS in every
-- VM), so two proxies making a marker at once do not draw the same one.
local function l2_generation()
  return format("%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
end

-- A memory miss, under the key's fill lock (so one request per key asks Redis, the others
-- wait for the entry): the entry for (key, the request's secondary key) from Redis, put into
-- the zone. true when one was put (the caller looks again).
local function l2_lookup(req, conf, z, key, rh)
  local l2 = conf._l2
  if #key > L2_MAX_KEY then return false end
  local red = l2_connect(conf, l2)
  if not red then return false end
  local rkey = l2.prefix .. key
  local v, err = red:get(rkey)
  local gen, vary = l2_marker(v)
  local sec = ""
  if gen then
    sec = policy.secondary_key(vary, rh, conf.max_vary_fields)
    if not sec then
      red:set_keepalive(60000, l2.pool_size)
      l2_count(conf, "miss")
      return false
    end
    v, err = red:get(rkey .. "\0" .. gen .. "\0" .. sec)
  end
  if v == nil or v == false then
    if v == false then red:set_keepalive(60000, l2.pool_size) end
    l2_failed(conf, l2, err)
    return false
  end
  red:set_keepalive(60000, l2.pool_size)
  local head, body = l2_parse(v)
  local meta = head and decode(head)
  if not meta then
    l2_count(conf, "miss")
    return false
  end
  local keep = keep_for(meta, conf, proxy.now())
  if vary and not z:put(key, "", "V " .. vary, keep) then return false end
  if not z:put(key, sec, head, keep, body) then return false end
  l2_count(conf, "hit")
  return true
end

-- Log phase of a request whose response the zone stored: the complete entry, when small
-- enough and still fresh, is copied to Redis: one SET (a varying response: the marker is read
-- first, then the variant set under its generation, or a new marker with the variant).
local function l2_store(req, conf, st)
  local l2, put, z = conf._l2, st.l2_put, st.zone
  if #st.key > L2_MAX_KEY then return end
  local head, blen = z:get(req, st.key, put.sec)
  if not head or blen > l2.max_object_size then return end
  local meta = decode_cached(head)
  if not meta then return end
  local ttl = floor(min(l2.ttl_max, meta.ttl - policy.current_age(meta, proxy.now())))
  if ttl < 1 then return end
  -- The value made in one piece: the body is copied once, into it.
  local prefix = "LPC1\n" .. #head .. "\n" .. head
  local value = z:read(req, 0, blen, prefix)
  if not value or #value ~= #prefix + blen then return end
  local red = l2_connect(conf, l2)
  if not red then return end
  local rkey = l2.prefix .. st.key
  local res, err
  if put.vary then
    local gen, vary = l2_marker((red:get(rkey)))
    red:init_pipeline()
    if gen and vary == put.vary then
      red:expire(rkey, l2.ttl_max) -- lives as long as its newest variant (gone: a no-op)
    else
      gen = l2_generation()
      red:set(rkey, "LPV2\n" .. gen .. "\n" .. put.vary, "EX", l2.ttl_max)
    end
    red:set(rkey .. "\0" .. gen .. "\0" .. put.sec, value, "EX", ttl)
    res, err = red:commit_pipeline()
  else
    res, err = red:set(rkey, value, "EX", ttl)
    if res then res = { res } elseif res == false then res = { { false, err } } end
  end
  if not res then return l2_failed(conf, l2, err) end
  red:set_keepalive(60000, l2.pool_size)
  for _, r in ipairs(res) do
    if type(r) == "table" and r[1] == false then return l2_failed(conf, l2, r[2]) end
  end
  l2_count(conf, "stored")
end

-- ---- phases ----

function P.init_worker(conf)
  if conf._l2 then
    -- Declared by every entry's init_worker: a name declared again is the same metric.
    m_l2 = proxy.metrics.counter("cache_l2_operations_total",
      "Lookups and stores of the cache's Redis L2 tier, by zone and result (hit, miss, "
        .. "stored, failed: Redis could not answer, or was skipped after failing).",
      { "zone", "result" })
  end
end

function P.request(req, conf)
  local z = zone_of(conf)
  if not z then return end
  local o = req:cache_options()
  local st = { zone = z, t0 = proxy.now(), phase = "request" }
  local method = req:method()
  if not policy.lookup_method(method) then
    req.ctx.cache = st
    -- RFC 9211 fwd=method: the method is forwarded whatever the cache holds.
    st.pass = "method"
    st.invalidate = not policy.is_safe_method(method)
    return
  end
  -- req:set_cache_key() first, then cache_key, then the default. A cache_key returning
  -- nil or false is the site saying "no key for this request": a bypass, never the default
  -- key (a rule returning nil for a request with a Cookie must not look it up, or store it,
  -- under the key of the requests without one).
  local key = o.key
  if key == nil then
    if conf.cache_key then
      key = conf.cache_key(req)
      if key ~= nil and key ~= false and type(key) ~= "string" then
        proxy.log.error("cache: cache_key returned " .. type(key) .. ", not a string: not cached")
      end
    else
      key = z:default_key(req)
    end
  end
  -- The state is the request's from here: a cache_key that raised (the engine's 500) left
  -- none, so the response phase adds no Cache-Status (it was neither looked up nor
  -- forwarded by the cache: no fwd=uri-miss).
  req.ctx.cache = st
  if type(key) ~= "string" then
    z:count("bypass")
    st.pass = "bypass" -- the site's rule could not say what to look up: as req:cache_bypass()
    return
  end
  st.key = key
  -- Read as used (Zone:req_view): most requests carry none of the fields the policy reads,
  -- and a hit or a miss then builds no header table.
  local rh = z:req_view(req)
  st.rh = rh
  read_early(rh)
  -- Most requests carry neither Cache-Control nor Pragma: their directives are one shared,
  -- never changed table.
  local rd = (rh["cache-control"] == nil and rh.pragma == nil) and NO_DIRECTIVES
    or policy.request_directives(rh)
  st.rd = rd
  if o.bypass then
    z:count("bypass")
    st.fwd = "bypass"
    return
  end
  -- One look, and a second after waiting for another request's fill: not a loop, whose
  -- single iteration per request would abort the trace on every hit.
  if look(req, conf, st, z, key, rh, rd, false) then return end
  local locked = conf.lock and z:lock(req, key, conf.lock_timeout)
  -- The L2 tier, asked by the request holding the key's fill lock (or by each, without
  -- coalescing): a hit there is put in the zone and served from it as a memory hit, and the
  -- requests waiting on the lock are served from that entry.
  if conf._l2 and (locked or not conf.lock) and l2_lookup(req, conf, z, key, rh) then
    st.l2 = "l2"
    if look(req, conf, st, z, key, rh, rd, false) then return end
    st.l2 = nil
  end
  -- Another request fills the key: wait for its entry (wait_fill).
  if conf.lock and not locked and wait_fill(req, conf, st, z, key, rh, rd,
    method == "GET" and rd == NO_DIRECTIVES and rh.range == nil and rh["if-range"] == nil
      and not has_conditional(rh)) then
    return
  end
  -- RFC 9111 §4.2.3: request_time is when the request went upstream, not when the client's
  -- came: after waiting on another fill's lock (or asking the L2 tier) the wait must not
  -- count in the stored age. The common miss (the lock taken at once, no L2) keeps t0.
  if conf._l2 or (conf.lock and not locked) then st.t0 = proxy.now() end
  z:count("miss")
  st.fwd = st.fwd or st.miss
  -- A GET that may fill the entry asks for the whole representation; the client's Range and
  -- conditionals are answered from the upstream's 200 (answer_stripped), later ones from the
  -- entry.
  -- (Without any of those fields there is nothing to change.)
  if method == "GET" and (has_conditional(rh) or rh.range ~= nil or rh["if-range"] ~= nil) then
    forward_headers(req, st, rh, nil)
  end
end

-- The upstream answered a request whose conditionals and Range the cache kept back with the
-- whole representation (200): the client's are answered from it as the entry will answer
-- them, while the whole body is stored: 304/412 without the body, a single range as 206 with
-- only its bytes, an unsatisfiable one 416 (Zone:window). Without a length from the upstream
-- (chunked), or for several ranges (no multipart from a streamed body), the whole 200 goes.
-- The client gets only n bytes from `first` of the upstream's 200 as `status` (206, 416) with
-- its Content-Range; without a header slot for that field (a response that fills them all),
-- the whole 200 goes, as from a server that ignores Range (RFC 9110 §14.2).
local function partial(req, z, status, first, n, content_range)
  if not z:add_field(req, "Content-Range", content_range) then return end
  if z:window(req, first, n) then
    req:set_status(status)
  else
    req:clear_resp_header("Content-Range")
  end
end

local function answer_stripped(req, conf, st, rsh, now)
  local z, rh = st.zone, st.rh
  local c = policy.conditional("GET", rh, rsh, now)
  if c then
    if z:window(req, 0, 0) then req:set_status(c) end
    return
  end
  local len = z:upstream_length(req)
  if not rh.range or not len then return end
  local r = policy.parse_range(rh.range, len, rh["if-range"], rsh, conf._opts)
  if r == "unsatisfiable" then
    partial(req, z, 416, 0, 0, format("bytes */%d", len))
  elseif type(r) == "table" and #r == 1 then
    partial(req, z, 206, r[1][1], r[1][2] - r[1][1] + 1,
      format("bytes %d-%d/%d", r[1][1], r[1][2], len))
  end
end

-- The proxy's own 502/504 after a try failed to get an answer (refused, timed out, closed):
-- the upstream said nothing, so the cache may serve stale as when disconnected.
local NET_FAILURE = { connect = true, timeout = true, reset = true }

-- Did an upstream answer this response of `status` (not a local answer, nor the proxy's own
-- 502/504 for a network failure)? Its status is then Cache-Status's fwd-status.
local function from_upstream_of(req, status)
  if req:upstream_addr() == nil then return false end
  return not ((status == 502 or status == 504) and NET_FAILURE[req:last_failure() or ""])
end

-- The target URI's parts as the default key has them: the authority keeps a port other than
-- the scheme's default (engine/cache_ffi.c key_authority), so that a write through
-- `Host: a:8080` purges the entries stored under that port.
local function request_parts(req, z)
  local host = z:default_key(req):match("^GET [^:]*://([^/?]*)")
  return { scheme = req:scheme() or "http", host = host or req:host(), path = req:uri() }
end

-- The Cache-Status of a request the cache did not look up (fwd: "method" or "bypass"), with
-- the upstream's status when the upstream answered.
local function pass_status(req, z, fwd, status)
  z:set_status(req, policy.cache_status { prior = z:resp_view(req)["cache-status"], fwd = fwd,
    fwd_status = from_upstream_of(req, status) and status or nil })
end

-- A request whose request phase the engine ran (a miss it looked up, counted and locked:
-- engine/cache_native.c): its state as P.request leaves it for such a request. nil for any
-- other request.
local function native_state(req, conf)
  local z = zone_of(conf)
  local t0 = z and z:native_t0(req)
  if not t0 then return nil end
  local st = { zone = z, key = z:default_key(req), t0 = t0, phase = "request", sec = "",
    rd = NO_DIRECTIVES, native = true }
  st.rh = z:req_view(req)
  req.ctx.cache = st
  return st
end

function P.response(req, conf)
  local st = req.ctx.cache or native_state(req, conf)
  if not st or st.served then return end
  local z = st.zone
  local status = req:status()
  if st.invalidate then
    local uris = policy.invalidations(req:method(), status, request_parts(req, z), req:resp_headers())
    for _, u in ipairs(uris) do z:purge("GET " .. u) end
    if conf._l2 and #uris > 0 then st.l2_del = uris end
  end
  if st.pass then return pass_status(req, z, st.pass, status) end
  st.phase = "response"
  local now = proxy.now()
  local stale = st.stale
  -- A revalidation merges the 304's fields (pairs): a whole table and the upstream's case.
  -- Else a view (Zone:resp_view): the common miss reads a few fields and has the engine
  -- write the stored ones.
  local rsh, rcase
  if stale then
    rsh, rcase = z:resp_fields(req) -- lower-case names; the upstream's case of the others
  else
    rsh = z:resp_view(req)
  end
  -- from_upstream_of written out: the call cost the plugin's own miss about 3,500
  -- instructions (bench/cache_callgrind.py miss-store-lua-5B, 40,900 -> 44,400)
  local from_upstream = req:upstream_addr() ~= nil
  if from_upstream and (status == 502 or status == 504) and NET_FAILURE[req:last_failure() or ""] then
    from_upstream = false
  end
  if stale and from_upstream and status == 304 and not policy.updates(stale.headers, rsh) then
    return refetch(req, conf, st)
  end
  if stale and from_upstream and status == 304 then
    local opts = conf._opts
    opts.now = now
    local merged, client_only = policy.merge_304(stale.headers, rsh, opts)
    opts.now = nil
    -- A 304 carrying many new fields can grow the head past what this request's header
    -- slots can carry with a hit's own (Zone:hit_room): serving it would fail (500). The full
    -- response is what the client gets without the cache: ask for it.
    if field_count(merged) + field_count(client_only) > z:hit_room(req) then
      return refetch(req, conf, st)
    end
    local meta = policy.meta(stale.meta.status or 200, merged, st.t0, now, conf._opts)
    local case = {}
    for k, v in pairs(st.case or {}) do case[k] = v end
    for k, v in pairs(rcase) do case[k] = v end
    st.case = case
    local order = {}
    for i, kv in ipairs(stale.base or {}) do order[i] = lower(kv[1]) end
    order = names_of(merged, order)
    z:refresh(req, encode(meta, merged, case, order), keep_for(meta, conf, now))
    z:count("revalidated")
    return serve(req, conf, st, meta, merged, stale.blen,
      { fwd = st.fwd or "stale", fwd_status = 304 }, client_only, served_list(merged, case, order))
  end
  -- A 5xx within stale-if-error; an upstream that could not be reached, also when only
  -- RFC 9111 4.2.4 allows it (no directive forbids serving stale).
  if stale and ((status >= 500 and stale.d.stale_if_error)
      or (not from_upstream and (stale.d.stale_if_error or stale.d.stale_if_disconnected))) then
    return serve_stale_on_error(req, conf, st, from_upstream and status or nil)
  end
  if st.forced then z:count("miss") end -- the request refused its fresh entry: a full answer
  local o = req:cache_options()
  local o_ttl = o.ttl
  if o_ttl and o_ttl > SECONDS_MAX then o_ttl = SECONDS_MAX end -- as req:cache_ttl clamps
  local stored, ttl, too_large = false, nil, false
  if from_upstream and req:method() == "GET" and not o.no_store then
    local ok, why = policy.storable("GET", status, st.rh, rsh, conf._opts)
    if not ok and o_ttl and (why == "no explicit freshness" or why == "no freshness and no validator") then
      ok = true
    end
    -- The engine ran this request's request phase: it replays this decision for the
    -- responses of this status and shape that follow (Zone:native_learn keeps it only for a
    -- shape whose decision depends on nothing else).
    if st.native and not ok then z:native_learn(req, status, nil) end
    if ok then
      local meta = policy.meta(status, rsh, st.t0, now, conf._opts)
      if o_ttl then meta.ttl, meta.ttl_source = o_ttl + policy.current_age(meta, now), "lua" end
      if st.native then
        z:native_learn(req, status, meta, stale_for(meta, conf),
          policy.stores_all_fields(rsh, conf._opts))
      end
      local vary = rsh.vary
      if type(vary) == "table" then vary = concat(vary, ", ") end
      local sec, vary_line = "", nil -- vary_line: the Vary as one line (marker and L2)
      local keep = keep_for(meta, conf, now)
      if vary and vary ~= "" then
        -- The variant's secondary key is always the request's as it went upstream (a plugin
        -- after the cache may have changed a Vary field), read by a new view: st.rh has the
        -- client's values it memoised when a vary-miss looked them up, and the variant
        -- stored under those would answer them with what the origin sent for others.
        sec = policy.secondary_key(vary, z:req_view(req), conf.max_vary_fields)
        if sec then
          vary_line = gsub(vary, "[\r\n]", " ")
          z:put(st.key, "", "V " .. vary_line, keep)
        end
      end
      if sec and meta.ttl + keep > 0 then
        if not rcase and policy.stores_all_fields(rsh, conf._opts) then
          stored = z:store_fields(req, st.key, sec, encode_meta(meta), keep)
        else
          if not rcase then rsh, rcase = z:resp_fields(req) end
          stored = z:store(req, st.key, sec,
            encode(meta, policy.stored_headers(rsh, conf._opts), rcase), keep)
        end
        ttl = meta.ttl - floor(policy.current_age(meta, now)) -- as serve's
        -- Refused by its Content-Length over max_object_size (counted as abandoned by the
        -- zone): the Cache-Status says why it was not stored.
        too_large = not stored and z:too_large(req)
        if stored and conf._l2 then
          st.l2_put = { sec = sec, vary = sec ~= "" and vary_line or nil }
        end
      end
    end
  end
  if st.only_if_cached then
    -- The plugin's own 504: nothing went upstream (no fwd), nothing came from the cache.
    z:set_status(req, policy.cache_status { prior = rsh["cache-status"], detail = "only-if-cached" })
    return
  end
  local fwd = st.fwd or "uri-miss"
  if fwd == "uri-miss" and not too_large and rsh["cache-status"] == nil and from_upstream then
    -- What policy.cache_status makes of the common miss, without its tables and patterns,
    -- written by the engine (Zone:miss_status).
    z:miss_status(req, status, stored, ttl)
  else
    -- A body of unknown length (chunked) may still go over max_object_size, after this head
    -- went out: `stored` is said only of a body whose length is known (as Zone:miss_status).
    local claim = stored and z:upstream_length(req) ~= nil
    z:set_status(req, policy.cache_status {
      prior = rsh["cache-status"], fwd = fwd, fwd_status = from_upstream and status or nil,
      stored = claim or nil, ttl = claim and ttl or nil,
      detail = too_large and "too-large" or nil })
  end
  if st.stripped and from_upstream and status == 200 and req:method() == "GET" then answer_stripped(req, conf, st, rsh, now) end
end

-- An unsafe method invalidated URIs in the zone (RFC 9111 §4.4): their Redis copies go too
-- (the key, or a varying key's marker, which makes its variants unreachable).
local function l2_invalidate(conf, uris)
  local l2 = conf._l2
  local red = l2_connect(conf, l2)
  if not red then return end
  local keys = {}
  for i, u in ipairs(uris) do keys[i] = l2.prefix .. "GET " .. u end
  local res, err = red:del(keys)
  if res == nil then return l2_failed(conf, l2, err) end
  red:set_keepalive(60000, l2.pool_size)
  if res == false then return l2_failed(conf, l2, err) end
end

function P.log(req, conf)
  local st = req.ctx.cache
  if not (st and conf._l2) then return end
  if st.l2_put then l2_store(req, conf, st) end
  if st.l2_del then l2_invalidate(conf, st.l2_del) end
end

return P
