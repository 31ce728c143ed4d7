-- proxy.cache: the response cache's store (engine/cache_store.h) as the `cache` plugin sees
-- it, and proxy.cache.purge for everyone (docs/lua-api.md). The store keeps bytes: a key, a
-- secondary key (Vary), a head the plugin encodes, and a body the engine gathers from the
-- upstream as it streams and serves from its chunks. Every HTTP decision is the plugin's
-- (lua/luaproxy/cache/policy.lua). The proxy.test double has a pure-Lua twin
-- (lua/proxy/test_cache.lua) with the same methods.
local ffi = require "ffi"
local K = require "luaproxy.ffi"
local phases = require "luaproxy.phases"

local C = ffi.C
local ffi_string = ffi.string
local type, format, pairs, ipairs, lower = type, string.format, pairs, ipairs, string.lower
local setmetatable, rawset = setmetatable, rawset
local concat = table.concat
local raise = phases.raise

local s1 = ffi.new("lp_str_t[1]")
local d1 = ffi.new("double[1]")

local M = {}
local Zone = {}
Zone.__index = Zone
local zones = {} -- name -> Zone, per VM (the generation's config holds the zones)

local function zone_of(name, what)
  if type(name) ~= "string" then raise(what .. ": expected a zone name", 3) end
  local z = zones[name]
  if z then return z end
  -- Only a zone this VM's own config declares: its generation holds that zone, so the
  -- pointer kept here lives as long as this VM (another generation's could go first).
  local cfg = require("proxy").config
  local cc = cfg and cfg.cache
  if not (cc and cc.zones and cc.zones[name]) then return nil end
  local p = C.lp_ffi_cache_zone(name, #name)
  if p == nil then return nil end
  z = setmetatable({ name = name, _z = p, max_object = cc.zones[name].max_object_size }, Zone)
  zones[name] = z
  return z
end

-- The zone of that name (declared in the config's cache.zones), or nil.
function M.zone(name) return zone_of(name, "proxy.cache.zone()") end

-- The entry stored for (key, sec): its head and body length, kept with the request for
-- respond/refresh, and true when this request read it from the disk tier (read back, or
-- streamed from its file); nil when none (then a 4th value, true when an entry is there that
-- this request cannot carry: one wider than its header slots, made before it was stored).
function Zone:get(req, key, sec)
  sec = sec or ""
  local disk = false
  local rc = C.lp_ffi_cache_get(req._r, self._z, key, #key, sec, #sec, s1, d1)
  if rc == 3 then
    -- Another request reads this entry back from disk (it holds the key's lock): wait for
    -- it (bounded), then look again: a memory hit, or this request reads it back itself.
    self:wait(key, 2)
    rc = C.lp_ffi_cache_get(req._r, self._z, key, #key, sec, #sec, s1, d1)
  end
  if rc == 2 then
    -- On disk only: the engine reads the file back (threadpool) while this task waits,
    -- then the lookup answers from what it read (or misses: a damaged file is dropped).
    phases.wait()
    rc = C.lp_ffi_cache_get(req._r, self._z, key, #key, sec, #sec, s1, d1)
    disk = true
  end
  if rc == 1 then return ffi_string(s1[0].base, s1[0].len), d1[0], disk end
  return nil, nil, false, rc == 4
end

-- Takes key's lock (one request fills a key at a time): true, or false while another
-- request's fill holds it (wait on locked(), then get again).
function Zone:lock(req, key, timeout)
  return C.lp_ffi_cache_lock(req._r, self._z, key, #key, timeout) == 1
end

function Zone:locked(key) return C.lp_ffi_cache_locked(self._z, key, #key) == 1 end

-- Waits until the fill holding key's lock ends (on any worker: it wakes this one) or the
-- fill made no progress (its head, body bytes) for `seconds`; returns at once when nothing
-- fills the key. With `early`, also wakes when the fill's head is written, and returns true
-- at once when it is: its entry can be served as it fills (get_filling).
function Zone:wait(key, seconds, early)
  local rc = C.lp_ffi_cache_wait(self._z, key, #key, seconds, early and 1 or 0)
  if rc == 1 then phases.wait() end
  return rc == 2
end

-- The entry another request's fill gathers for (key, sec), once its head is written: its
-- head and expected body length (0: unknown), or nil. Zone:respond then answers with its
-- body as it comes (a whole answer only: no range, no conditional).
function Zone:get_filling(req, key, sec)
  if C.lp_ffi_cache_get_filling(req._r, self._z, key, #key, sec, #sec, s1, d1) == 1 then
    return ffi_string(s1[0].base, s1[0].len), d1[0]
  end
  return nil
end

-- Response phase: the upstream's body is stored under (key, sec) with `head` as it streams
-- to the client, kept `keep` seconds. false when it cannot be (too large, key too long).
function Zone:store(req, key, sec, head, keep)
  return C.lp_ffi_cache_store(req._r, self._z, key, #key, sec, #sec, head, #head, keep) == 0
end

-- An entry stored now (the Vary marker of a key, a background refresh's answer).
function Zone:put(key, sec, head, keep, body)
  body = body or ""
  return C.lp_ffi_cache_put(self._z, key, #key, sec, #sec, head, #head, body, #body, keep) == 0
end

-- Answers with the entry the request looked up last: `status`, `headers` (a list of
-- { name, value }, after headers.base's when it has one), its body or bytes first..last of
-- it. In the request phase this ends the phase (as req:respond()); in the response phase it
-- replaces the upstream's answer. One FFI call sends the whole head: a list's `wire`, when
-- it has one, holds its fields as "Name: value\r\n" lines (the cache plugin makes it once
-- per stored head for base), else they are put so here.
local cache_respond -- luaproxy.request's, looked up on first use (it requires this module)
local runtime = require "luaproxy.runtime"
local RESPONSE = runtime.PHASE_ID.response

local function wire_of(list)
  if list.wire then return list.wire end
  local out = {}
  for i = 1, #list do out[i] = list[i][1] .. ": " .. list[i][2] .. "\r\n" end
  return concat(out)
end

-- A base list's wire form the engine checked (lp_ffi_cache_wire_check), by list: a hit on a
-- head whose base was checked has its lines only split, not checked again (the base is
-- made once per decoded head and shared by every hit on it). Weak: a list dropped from the
-- plugin's decoded heads goes. Private to this module: a list's own say-so is never trusted.
local checked = setmetatable({}, { __mode = "k" })

function Zone:respond(req, status, headers, first, last)
  -- require is not compiled: a call per hit would end the hit's trace here.
  cache_respond = cache_respond or require("luaproxy.request").cache_respond
  local base = headers.base
  local wire, more = wire_of(headers), "" -- two strings, not one: no concatenation per hit
  local flags = 0
  if base then
    wire, more = wire_of(base), wire
    if checked[base] ~= wire and C.lp_ffi_cache_wire_check(wire, #wire) == 0 then
      checked[base] = wire
    end
    if checked[base] == wire then flags = K.CACHE_FIELDS_CHECKED end
  end
  -- The cache plugin's response handler does nothing for a request it answered in the
  -- request phase: when it is the route's only response hook, the engine skips the phase.
  local rl = req._phase == "request" and req._chain[RESPONSE]
  if rl and #rl == 1 and rl[1] == runtime.current then flags = flags + K.CACHE_ONLY_HOOK end
  cache_respond(req, status, wire, more, first or -1, last or -1, flags)
end

-- Bytes first..first+n-1 of the looked-up entry's body, as a string (fewer at its end);
-- after `prefix` when one is given: the string is made once, the bytes copied once into it
-- (the L2 tier's value, its head then the body). nil when the body is not in memory (a
-- large entry on disk only, streamed from its file when served).
function Zone:read(req, first, n, prefix)
  local plen = prefix and #prefix or 0
  if n <= 0 then return prefix or "" end
  local buf = ffi.new("char[?]", plen + n)
  if plen > 0 then ffi.copy(buf, prefix, plen) end
  local got = C.lp_ffi_cache_read(req._r, first, buf + plen, n)
  if got == K.ENOTFOUND then return nil end
  if got < 0 then raise("cache: no looked-up entry to read", 2) end
  return ffi_string(buf, plen + got)
end

-- Response phase, a response being stored: the client gets only n bytes from `first` of the
-- upstream's body (a cold Range request's slice; 0 for a 304), the entry all of it. false
-- when the upstream's body has no length (chunked) or the window does not fit.
function Zone:window(req, first, n)
  return C.lp_ffi_cache_window(req._r, first, n) == 0
end

-- Response phase: the upstream body's length when its head gives it: its Content-Length
-- (the engine's framing field, which Lua does not see), 0 for a response without a body
-- (204, 304); nil when the head does not say (chunked, close-delimited).
function Zone:upstream_length(req)
  local n = C.lp_ffi_cache_upstream_length(req._r)
  if n < 0 then return nil end
  return n
end

-- Response phase: true when the upstream's Content-Length is over the zone's max_object_size
-- (a store refuses such a response at once, and the zone counts it abandoned).
function Zone:too_large(req)
  local n = self:upstream_length(req)
  return n ~= nil and self.max_object ~= nil and n > self.max_object
end

-- The response's field names as the upstream wrote them, by lower-case name, for those not
-- all lower-case (a hit replays the upstream's case).
local n1, v1 = ffi.new("lp_str_t[1]"), ffi.new("lp_str_t[1]")
function Zone:names(req)
  local out = {}
  for i = 0, C.lp_ffi_header_count(req._r, 1) - 1 do
    if C.lp_ffi_header_at(req._r, 1, i, n1, v1) == 0 then
      local name = ffi_string(n1[0].base, n1[0].len)
      local l = lower(name)
      if l ~= name then out[l] = name end
    end
  end
  return out
end

-- Response phase: req:resp_headers() and names(req) in one pass over the fields.
function Zone:resp_fields(req)
  local out, case = {}, {}
  local r = req._r
  for i = 0, C.lp_ffi_header_count(r, 1) - 1 do
    if C.lp_ffi_header_at(r, 1, i, n1, v1) == 0 then
      local name = ffi_string(n1[0].base, n1[0].len)
      local l = lower(name)
      if l ~= name then case[l] = name end
      local value = ffi_string(v1[0].base, v1[0].len)
      local prev = out[l]
      if prev == nil then
        out[l] = value
      elseif type(prev) == "table" then
        prev[#prev + 1] = value
      else
        out[l] = { prev, value }
      end
    end
  end
  return out, case
end

-- ---- header tables read as they are used (the hit and miss paths) ----
-- A view: the request's or the response's fields as a table of lower-case name -> value (a
-- list for a field on several lines), as req:headers() returns, except that a field is read
-- from the engine when first indexed (then kept in the table). One FFI call when it is made
-- says which of a fixed set of names (K.CACHE_FIELDS: the ones the cache policy reads) are
-- present: indexing an absent one costs no call. Not for pairs() (only fields read so far
-- are in it), and only while the request's phases run: the fields are read as they are then
-- (the cache plugin reads every request field it changes before changing it).
local bit = require "bit"
local band, lshift = bit.band, bit.lshift
local FIELD_BIT = {}
for i, name in ipairs(K.CACHE_FIELDS) do FIELD_BIT[name] = lshift(1, i - 1) end
local f1 = ffi.new("lp_str_t[1]")

local VIEW = {
  -- [1] the request (cdata), [2] the mask of CACHE_FIELDS present, [3] 0 request, 1 response
  __index = function(t, name)
    local b = FIELD_BIT[name]
    if b and band(t[2], b) == 0 then return nil end
    if type(name) ~= "string" then return nil end
    local r, resp = t[1], t[3]
    if C.lp_ffi_header_get(r, resp, name, #name, 0, f1) ~= 1 then return nil end
    local v = ffi_string(f1[0].base, f1[0].len)
    if C.lp_ffi_header_get(r, resp, name, #name, 1, f1) == 1 then
      local list, i = { v, ffi_string(f1[0].base, f1[0].len) }, 2
      while C.lp_ffi_header_get(r, resp, name, #name, i, f1) == 1 do
        i = i + 1
        list[i] = ffi_string(f1[0].base, f1[0].len)
      end
      v = list
    end
    rawset(t, name, v)
    return v
  end,
}

-- The request's fields as a view (above).
function Zone:req_view(req)
  local r = req._r
  return (setmetatable({ r, C.lp_ffi_cache_fields(r, 0), 0 }, VIEW)) -- not a tail call: ends the trace
end

-- Response phase: the response's fields as a view (above).
function Zone:resp_view(req)
  local r = req._r
  return (setmetatable({ r, C.lp_ffi_cache_fields(r, 1), 1 }, VIEW)) -- not a tail call: ends the trace
end

-- Response phase: as store, the head being `meta` (the policy's lines, cache plugin's
-- encode_meta) followed by the response's fields as the cache stores them (every one but the
-- hop-by-hop fields, in the upstream's order and case), written by the engine.
function Zone:store_fields(req, key, sec, meta, keep)
  return C.lp_ffi_cache_store_fields(req._r, self._z, key, #key, sec, #sec, meta, #meta, keep) == 0
end

-- Response phase: the common miss's Cache-Status ("luaproxy; fwd=uri-miss; fwd-status=STATUS"
-- then, when stored and the body's length is known, "; stored; ttl=" and the TTL left
-- rounded down), added by the engine in one call to a response without a Cache-Status of its
-- own.
-- A response whose header list is full (limits.max_headers + 16 fields: an upstream's
-- fullest response and what plugins before the cache added) goes without it, as it would
-- go without the cache: never a 500 for a line of ours (logged once a minute per worker).
-- Logged by the engine's logger for the event (engine/cache_room.c), once a minute.
local function no_room()
  C.lp_ffi_cache_room_no_status(K.ENOSPACE)
end

function Zone:miss_status(req, status, stored, ttl)
  local rc = C.lp_ffi_cache_miss_status(req._r, status, stored and 1 or 0, ttl or 0)
  if rc == K.ENOSPACE then return no_room() end
  if rc ~= 0 then raise("cache: Cache-Status not added", 2) end
end

-- The engine's header calls take any request: a handle kept past its phase (or another
-- request's) must not write into whichever request now runs (req:set_resp_header's check).
local function response_phase(req)
  if req._phase ~= "response" then raise("cache: the response's fields change in the response phase only", 3) end
end

-- Response phase: any other Cache-Status (policy.cache_status's value) in place of the
-- response's, or added; without room, as miss_status.
function Zone:set_status(req, value)
  response_phase(req)
  local rc = C.lp_ffi_header_set(req._r, 1, K.HSET, "Cache-Status", 12, value, #value)
  if rc == K.ENOSPACE then return no_room() end
  if rc ~= 0 then raise("cache: Cache-Status not set", 2) end
end

-- Response phase: a field of the cache's own (a 206's Content-Range) added to the response;
-- false when its header list is full (the caller answers without it).
function Zone:add_field(req, name, value)
  response_phase(req)
  local rc = C.lp_ffi_header_set(req._r, 1, K.HADD, name, #name, value, #value)
  if rc == K.ENOSPACE then return false end
  if rc ~= 0 then raise("cache: " .. name .. " not added", 2) end
  return true
end

-- The default key: "GET " scheme "://" host (lower-case) URI, in one call.
function Zone:default_key(req)
  if C.lp_ffi_cache_key(req._r, s1) ~= 0 then raise("cache: out of memory", 2) end
  return (ffi_string(s1[0].base, s1[0].len))
end

-- ---- the engine's run of the plugin's common miss (engine/cache_native.c) ----

-- When the engine looked this request up in the plugin's place (its request time), or nil
-- (the plugin's request phase ran).
function Zone:native_t0(req)
  local t0 = C.lp_ffi_cache_native_t0(req._r)
  if t0 < 0 then return nil end
  return t0
end

-- Response phase of such a request: what the plugin decided for this response (meta: the
-- stored entry's, from policy.meta; nil: not stored; stale: the seconds kept beyond its
-- freshness; all_fields: it stores every field but the hop-by-hop ones), for the engine to
-- replay on responses of its status and shape.
local NAN = 0 / 0
function Zone:native_learn(req, status, meta, stale, all_fields)
  if meta then
    local src = meta.ttl_source
    local flags = (meta.must_revalidate and 1 or 0) + (meta.no_cache and 2 or 0)
      + (all_fields and 4 or 0)
    C.lp_ffi_cache_native_learn(req._r, status, 1, meta.ttl, src, #src, stale, meta.date or NAN,
      flags, meta.stale_while_revalidate or -1, meta.stale_if_error or -1)
  else
    C.lp_ffi_cache_native_learn(req._r, status, 0, 0, "", 0, 0, NAN, 0, -1, -1)
  end
end

-- A plain hit on the looked-up entry: its status, its stored fields as served (lines), its
-- age at its response time, that time and its TTL: the engine serves the next ones on this
-- entry's head the same way while it is fresh.
function Zone:native_hit(req, status, wire, age0, response_time, ttl)
  C.lp_ffi_cache_native_hit(req._r, status, wire, #wire, age0, response_time, ttl)
end

-- The looked-up entry gets a new head (a 304 revalidated it), kept `keep` seconds more.
-- How many fields a head served from the cache may carry on this request (its header slots
-- less a hit's own).
function Zone:hit_room(req)
  local n = C.lp_ffi_cache_hit_room(req._r)
  if n < 0 then raise("cache: this handle belongs to another request than the running phase's", 2) end
  return n
end

-- Fields of a fetched response the engine writes itself for the answer, or hop-by-hop ones.
local ANSWER_SKIP = { ["content-length"] = true, ["transfer-encoding"] = true, connection = true,
  ["keep-alive"] = true, te = true, trailer = true, upgrade = true, ["proxy-connection"] = true }

-- Response phase: the client gets a response the plugin fetched itself (proxy.http's), in
-- place of the upstream's; false when its fields do not fit the request's header slots.
function Zone:answer(req, res)
  if C.lp_ffi_respond_begin(req._r) ~= 0 then return false end
  local names = res.header_names or {} -- proxy.http's: the names as the upstream wrote them
  for name, v in pairs(res.headers or {}) do
    if not ANSWER_SKIP[lower(name)] then
      name = names[name] or name
      for _, x in ipairs(type(v) == "table" and v or { v }) do
        x = tostring(x)
        if C.lp_ffi_header_set(req._r, 1, K.HADD, name, #name, x, #x) ~= 0 then return false end
      end
    end
  end
  local body = res.body or ""
  return C.lp_ffi_respond(req._r, res.status, body, #body) == 0
end

function Zone:refresh(req, head, keep)
  return C.lp_ffi_cache_refresh(req._r, head, #head, keep) == 0
end

function Zone:purge(key) return C.lp_ffi_cache_purge(self._z, K.CACHE_PURGE_KEY, key, #key) end
function Zone:purge_prefix(prefix)
  return C.lp_ffi_cache_purge(self._z, K.CACHE_PURGE_PREFIX, prefix, #prefix)
end
function Zone:purge_all() return C.lp_ffi_cache_purge(self._z, K.CACHE_PURGE_ALL, nil, 0) end

-- Counts an outcome in the zone's counters (GET /status): hit, miss, expired, stale,
-- revalidated, bypass.
function Zone:count(what)
  local i = K.CACHE_C[what]
  if i then C.lp_ffi_cache_count(self._z, i) end
end

-- proxy.cache.purge(zone, key): removes every variant stored for key; returns how many
-- responses went (a varying key's Vary marker is not one: engine/cache_store.c).
-- proxy.cache.purge(zone, { prefix = "..." }) or (zone, { all = true }) for more.
function M.purge(zone, key)
  local z = zone_of(zone, "proxy.cache.purge()")
  if not z then raise(format("proxy.cache.purge(): no cache zone named %q", zone), 2) end
  if type(key) == "string" then return z:purge(key) end
  if type(key) == "table" and type(key.prefix) == "string" then return z:purge_prefix(key.prefix) end
  if type(key) == "table" and key.all == true then return z:purge_all() end
  raise("proxy.cache.purge(): expected a key, { prefix = s } or { all = true }", 2)
end

-- Test hook: drop the per-VM zone objects.
function M._reset() for k in pairs(zones) do zones[k] = nil end end

return M
