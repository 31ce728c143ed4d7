-- The `proxy.test` double's shared dicts: a pure-Lua store with the engine's semantics
-- (engine/shdict.c, lua/luaproxy/shared.lua): the same methods, arguments, results and
-- byte accounting (112 bytes per key besides key and string value, 48 per list item besides
-- its string), an exact LRU, TTLs on the double's fake clock. One difference: the engine
-- splits a dict of 512 KiB or more into stripes, each with its own LRU, so which entry a
-- large full dict evicts may differ; a spec that tests eviction should use a small dict.
local args = require "luaproxy.shared_args"
local type, tostring, tonumber, error, setmetatable, pairs = type, tostring, tonumber, error,
  setmetatable, pairs

local ENTRY_OVERHEAD, ITEM_OVERHEAD = 112, 48
local MIN_SIZE = 8192

local M = {}

local Dict = {}
Dict.__index = Dict

-- Sizes as the config takes them: bytes, or "64k", "10m", "1g".
local UNITS = { [""] = 1, k = 1024, m = 1048576, g = 1073741824 }
function M.parse_size(v)
  if type(v) == "number" then return v end
  if type(v) == "string" then
    local n, unit = v:match("^(%d+)([kKmMgG]?)$")
    if n then return tonumber(n) * UNITS[unit:lower()] end
  end
  return nil
end

-- Empties d (in place: a plugin may hold the object since it loaded).
local function clear(d)
  d._used, d._n, d._evictions, d._map = 0, 0, 0, {}
  d._lru = {} -- sentinel: _lru.next is the most recently used
  d._lru.next, d._lru.prev = d._lru, d._lru
end

function M.new(name, capacity, clock)
  local d = setmetatable({ name = name, _cap = capacity, _clock = clock }, Dict)
  clear(d)
  return d
end

local function unlink(nd) nd.prev.next = nd.next; nd.next.prev = nd.prev end
local function push_front(d, nd)
  local s = d._lru
  nd.next, nd.prev = s.next, s
  s.next.prev = nd
  s.next = nd
end
local function touch(d, nd) unlink(nd); push_front(d, nd) end

local function expired(d, nd) return nd.expires ~= 0 and nd.expires <= d._clock() end

local function detach(d, nd)
  d._map[nd.key] = nil
  unlink(nd)
  d._n = d._n - 1
  d._used = d._used - nd.charge
end

local function attach(d, nd)
  d._map[nd.key] = nd
  push_front(d, nd)
  d._n = d._n + 1
  d._used = d._used + nd.charge
end

-- Frees LRU entries until `need` more bytes fit: expired ones freely, valid ones only when
-- not safe (then forcible). Returns ok, forcible.
local function make_room(d, need, safe)
  if need > d._cap then return false, false end
  local forcible = false
  while d._used + need > d._cap do
    local victim = d._lru.prev
    if victim == d._lru then return false, forcible end
    if not expired(d, victim) then
      if safe then return false, forcible end
      forcible = true
      d._evictions = d._evictions + 1
    end
    detach(d, victim)
  end
  return true, forcible
end

local function expiry(d, exptime)
  if exptime <= 0 then return 0 end
  return d._clock() + exptime
end

local function check_self(self)
  if type(self) ~= "table" or not self._map then
    error('bad "zone" argument (call the methods with ":")', 3)
  end
end

local check_key = args.key

local function live(d, key)
  local nd = d._map[key]
  if nd and not expired(d, nd) then return nd end
  return nil, nd
end

function Dict:get(key)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  local nd = live(self, k)
  if not nd then return nil end
  if nd.list then return nil, "value is a list" end
  touch(self, nd)
  if nd.flags ~= 0 then return nd.value, nd.flags end
  return nd.value
end

function Dict:get_stale(key)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  local nd = self._map[k]
  if not nd then return nil end
  if nd.list then return nil, "value is a list" end
  local stale = expired(self, nd)
  if not stale then touch(self, nd) end
  return nd.value, nd.flags ~= 0 and nd.flags or nil, stale
end

local ADD, REPLACE = 1, 2

local function store(self, op, safe, key, value, exptime, flags)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  exptime, flags = args.store(exptime, flags)
  flags = flags - flags % 1
  local vt = type(value)
  if vt ~= "string" and vt ~= "number" and vt ~= "boolean" and vt ~= "nil" then
    return nil, "bad value type"
  end
  local nd, old = live(self, k)
  old = nd or old
  if op == ADD and nd then return false, "exists", false end
  if op == REPLACE and not nd then return false, "not found", false end
  if value == nil then
    if old then detach(self, old) end
    return true, nil, false
  end
  local fresh = { key = k, value = value, flags = flags, expires = expiry(self, exptime),
                  charge = ENTRY_OVERHEAD + #k + (vt == "string" and #value or 0) }
  if old then detach(self, old) end
  local ok, forcible = make_room(self, fresh.charge, safe)
  if not ok then
    if old then attach(self, old) end
    return false, "no memory", forcible
  end
  attach(self, fresh)
  return true, nil, forcible
end

function Dict:set(k, v, e, f) return store(self, 0, false, k, v, e, f) end
function Dict:safe_set(k, v, e, f) return store(self, 0, true, k, v, e, f) end
function Dict:add(k, v, e, f) return store(self, ADD, false, k, v, e, f) end
function Dict:safe_add(k, v, e, f) return store(self, ADD, true, k, v, e, f) end
function Dict:replace(k, v, e, f) return store(self, REPLACE, false, k, v, e, f) end
function Dict:delete(k) return store(self, 0, false, k, nil) end

function Dict:incr(key, value, init, init_ttl)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  value = tonumber(value)
  if not value then error('cannot convert "value" to number', 2) end
  if init ~= nil then
    init = tonumber(init)
    if not init then error('bad "init" argument', 2) end
  end
  if init_ttl ~= nil then
    if init == nil then error('must provide "init" when providing "init_ttl"', 2) end
    if type(init_ttl) ~= "number" or init_ttl < 0 then error('bad "init_ttl" argument', 2) end
  end
  local nd, old = live(self, k)
  if old then detach(self, old) end
  if nd then
    if nd.list or type(nd.value) ~= "number" then return nil, "not a number" end
    nd.value = nd.value + value
    touch(self, nd)
    if init == nil then return nd.value end
    return nd.value, nil, false
  end
  if init == nil then return nil, "not found" end
  local fresh = { key = k, value = init + value, flags = 0,
                  expires = expiry(self, init_ttl or 0), charge = ENTRY_OVERHEAD + #k }
  local ok, forcible = make_room(self, fresh.charge, false)
  if not ok then return nil, "no memory" end
  attach(self, fresh)
  return fresh.value, nil, forcible
end

function Dict:ttl(key)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  local nd = live(self, k)
  if not nd then return nil, "not found" end
  if nd.expires == 0 then return 0 end
  return nd.expires - self._clock()
end

-- The engine's lp_shdict_gcra (engine/shdict.c) step for step: the key holds the
-- theoretical arrival time and expires when the bucket is full again.
function Dict:gcra(key, rate, period, burst, cost)
  check_self(self)
  local interval
  interval, burst, cost = args.gcra(rate, period, burst, cost)
  local k, err = check_key(key)
  if not k then return nil, err end
  local now = self._clock()
  local limit = (burst + 1) * interval
  local nd, old = live(self, k)
  if nd and (nd.list or type(nd.value) ~= "number") then
    detach(self, nd)
    nd = nil
  elseif old then
    detach(self, old)
  end
  local tat = nd and nd.value > now and nd.value or now
  if tat > now + limit then -- made under another limit (a reload); kept even if refused
    tat = now + limit
    nd.value, nd.expires = tat, tat
  end
  local new_tat = tat + cost * interval
  local allow_at = new_tat - limit
  if allow_at > now + 1e-9 then return false, 0, allow_at - now, tat - now end
  if cost == 0 then
    return true, math.floor((limit - (tat - now)) / interval + 1e-9), 0, tat - now
  end
  if nd then
    nd.value, nd.expires = new_tat, new_tat
    touch(self, nd)
  else
    local fresh = { key = k, value = new_tat, flags = 0, expires = new_tat,
                    charge = ENTRY_OVERHEAD + #k }
    local ok = make_room(self, fresh.charge, false)
    if not ok then return nil, "no memory" end
    attach(self, fresh)
  end
  return true, math.floor((limit - (new_tat - now)) / interval + 1e-9), 0, new_tat - now
end

function Dict:expire(key, exptime)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  if type(exptime) ~= "number" or exptime < 0 then error('bad "exptime" argument', 2) end
  local nd = live(self, k)
  if not nd then return nil, "not found" end
  nd.expires = expiry(self, exptime)
  return true
end

function Dict:flush_all()
  check_self(self)
  local nd = self._lru.next
  while nd ~= self._lru do
    nd.expires = -1
    nd = nd.next
  end
end

function Dict:flush_expired(max)
  check_self(self)
  max = tonumber(max) or 0
  local n = 0
  local nd = self._lru.prev
  while nd ~= self._lru and (max <= 0 or n < max) do
    local prev = nd.prev
    if expired(self, nd) then
      detach(self, nd)
      n = n + 1
    end
    nd = prev
  end
  return n
end

function Dict:get_keys(max)
  check_self(self)
  if max == nil then
    max = 1024
  else
    max = tonumber(max)
    if not max or max < 0 then error('bad "max" argument', 2) end
  end
  local out = {}
  local nd = self._lru.next
  while nd ~= self._lru and (max == 0 or #out < max) do
    if not expired(self, nd) then out[#out + 1] = nd.key end
    nd = nd.next
  end
  return out
end

function Dict:capacity() check_self(self); return self._cap end
function Dict:free_space()
  check_self(self)
  return self._used < self._cap and self._cap - self._used or 0
end

local function push(self, left, key, value)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  local vt = type(value)
  if vt ~= "string" and vt ~= "number" then return nil, "bad value type" end
  local charge = ITEM_OVERHEAD + (vt == "string" and #value or 0)
  local nd, old = live(self, k)
  if old then detach(self, old) end
  local forcible
  if nd then
    if not nd.list then return nil, "value not a list" end
    detach(self, nd)
    local ok = make_room(self, nd.charge + charge, false)
    if ok then nd.charge = nd.charge + charge end
    attach(self, nd)
    if not ok then return nil, "no memory" end
  else
    nd = { key = k, list = { first = 1, last = 0 }, flags = 0, expires = 0,
           charge = ENTRY_OVERHEAD + #k + charge }
    local ok = make_room(self, nd.charge, false)
    if not ok then return nil, "no memory" end
    attach(self, nd)
  end
  local l = nd.list
  if left then
    l.first = l.first - 1
    l[l.first] = value
  else
    l.last = l.last + 1
    l[l.last] = value
  end
  return l.last - l.first + 1
end

local function pop(self, left, key)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  local nd = live(self, k)
  if not nd then return nil end
  if not nd.list then return nil, "value not a list" end
  local l = nd.list
  local i = left and l.first or l.last
  local v = l[i]
  l[i] = nil
  if left then l.first = l.first + 1 else l.last = l.last - 1 end
  local charge = ITEM_OVERHEAD + (type(v) == "string" and #v or 0)
  nd.charge = nd.charge - charge
  self._used = self._used - charge
  if l.last < l.first then detach(self, nd) else touch(self, nd) end
  return v
end

function Dict:lpush(key, value) return push(self, true, key, value) end
function Dict:rpush(key, value) return push(self, false, key, value) end
function Dict:lpop(key) return pop(self, true, key) end
function Dict:rpop(key) return pop(self, false, key) end

function Dict:llen(key)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  local nd = live(self, k)
  if not nd then return 0 end
  if not nd.list then return nil, "value not a list" end
  return nd.list.last - nd.list.first + 1
end

-- What GET /status shows for a dict.
function Dict:_stats()
  return { capacity = self._cap, used = self._used, entries = self._n,
           evictions = self._evictions }
end

-- The set of dicts a spec declares: declare{ name = size } (sizes as the config's), then
-- `dicts` is proxy.shared (undeclared names are nil, as in the engine).
function M.registry(clock)
  local reg = { dicts = {} }
  function reg.declare(sizes)
    for name in pairs(reg.dicts) do reg.dicts[name] = nil end
    for name, size in pairs(sizes or {}) do
      local cap = M.parse_size(size)
      if type(name) ~= "string" or not cap or cap < MIN_SIZE then
        error(("proxy.test: shared dict %s: expected a size of at least 8k, got %s")
          :format(tostring(name), tostring(size)), 3)
      end
      reg.dicts[name] = M.new(name, cap, clock)
    end
  end
  -- Empties every dict (T.reset), keeping the declarations.
  function reg.reset()
    for _, d in pairs(reg.dicts) do clear(d) end
  end
  return reg
end

M.Dict = Dict
return M
