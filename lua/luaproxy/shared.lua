-- proxy.shared.NAME: the dicts the config's `shared` table declares, shared by every worker
-- of the process (engine/shdict.c holds them; values are copied in and out through the FFI,
-- so no Lua VM is touched by another thread). The methods, arguments and results are
-- OpenResty's ngx.shared.DICT (lua-resty-core's), so code written for it ports.
local args = require "luaproxy.shared_args"
local ffi = require "ffi"
local K = require "luaproxy.ffi"
local C = ffi.C
local type, tostring, tonumber, error, setmetatable, rawset =
  type, tostring, tonumber, error, setmetatable, rawset
local ffi_string = ffi.string

local TNIL, TBOOL, TNUM, TSTR = K.SD_TNIL, K.SD_TBOOL, K.SD_TNUM, K.SD_TSTR
local SET, ADD, REPLACE, SAFE = K.SD_SET, K.SD_ADD, K.SD_REPLACE, K.SD_SAFE
local ERR = K.SD_ERRORS
local ENOTFOUND = -302

-- One value cell per VM, reused by every call (nothing allocated per call but the result).
local val = ffi.new("lp_shdict_val_t")
local keys_out = ffi.new("lp_str_t *[1]")

local M = {}

-- The names the running config declares (runtime.load sets them); nil: ask only the engine.
local declared

function M.declare(shared)
  declared = {}
  for name in pairs(shared or {}) do declared[name] = true end
end

local Dict = {}
Dict.__index = Dict

local check_key = args.key

local function check_self(self)
  if type(self) ~= "table" or not self._d then
    error('bad "zone" argument (call the methods with ":")', 3)
  end
end

local function value_of(v)
  local t = v.type
  if t == TSTR then return ffi_string(v.str, v.len) end
  if t == TNUM then return v.num end
  if t == TBOOL then return v.num ~= 0 end
  return nil
end

function Dict:get(key)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  local rc = C.lp_ffi_shdict_get(self._d, k, #k, 0, val)
  if rc ~= 0 then
    if rc == ENOTFOUND then return nil end
    return nil, ERR[rc]
  end
  local flags = val.flags
  if flags ~= 0 then return value_of(val), flags end
  return value_of(val)
end

function Dict:get_stale(key)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  local rc = C.lp_ffi_shdict_get(self._d, k, #k, 1, val)
  if rc ~= 0 then
    if rc == ENOTFOUND then return nil end
    return nil, ERR[rc]
  end
  local flags = val.flags
  return value_of(val), flags ~= 0 and flags or nil, val.stale ~= 0
end

local function store(self, op, key, value, exptime, flags)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  exptime, flags = args.store(exptime, flags)
  local vt = type(value)
  if vt == "string" then
    val.type, val.str, val.len = TSTR, value, #value
  elseif vt == "number" then
    val.type, val.num = TNUM, value
  elseif vt == "boolean" then
    val.type, val.num = TBOOL, value and 1 or 0
  elseif vt == "nil" then
    val.type = TNIL
  else
    return nil, "bad value type"
  end
  val.flags = flags
  local rc = C.lp_ffi_shdict_store(self._d, op, k, #k, val, exptime)
  val.str = nil -- the string belongs to Lua: no pointer to it outlives the call
  if rc == 0 then return true, nil, val.forcible ~= 0 end
  return false, ERR[rc], val.forcible ~= 0
end

function Dict:set(key, value, exptime, flags) return store(self, SET, key, value, exptime, flags) end
function Dict:safe_set(key, value, exptime, flags)
  return store(self, SET + SAFE, key, value, exptime, flags)
end
function Dict:add(key, value, exptime, flags) return store(self, ADD, key, value, exptime, flags) end
function Dict:safe_add(key, value, exptime, flags)
  return store(self, ADD + SAFE, key, value, exptime, flags)
end
function Dict:replace(key, value, exptime, flags)
  return store(self, REPLACE, key, value, exptime, flags)
end
function Dict:delete(key) return store(self, SET, key, nil) end

function Dict:incr(key, value, init, init_ttl)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  if type(value) ~= "number" then
    value = tonumber(value)
    if not value then error('cannot convert "value" to number', 2) end
  end
  local has_init = 0
  if init ~= nil then
    if type(init) ~= "number" then
      init = tonumber(init)
      if not init then error('bad "init" argument', 2) end
    end
    has_init = 1
  else
    init = 0
  end
  if init_ttl ~= nil then
    if has_init == 0 then error('must provide "init" when providing "init_ttl"', 2) end
    if type(init_ttl) ~= "number" or init_ttl < 0 then error('bad "init_ttl" argument', 2) end
  else
    init_ttl = 0
  end
  local rc = C.lp_ffi_shdict_incr(self._d, k, #k, value, has_init, init, init_ttl, val)
  if rc ~= 0 then return nil, ERR[rc] end
  if has_init == 0 then return val.num end
  return val.num, nil, val.forcible ~= 0
end

function Dict:ttl(key)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  local rc = C.lp_ffi_shdict_ttl(self._d, k, #k, val)
  if rc ~= 0 then return nil, ERR[rc] end
  return val.num
end

-- One rate-limit decision (engine/shdict.h, lp_shdict_gcra): allowed (boolean), requests
-- remaining, seconds until this request would be allowed, seconds until the bucket is full.
local gcra_out = ffi.new("lp_shdict_gcra_t")
function Dict:gcra(key, rate, period, burst, cost)
  check_self(self)
  local interval
  interval, burst, cost = args.gcra(rate, period, burst, cost)
  local k, err = check_key(key)
  if not k then return nil, err end
  local rc = C.lp_ffi_shdict_gcra(self._d, k, #k, interval, burst, cost, gcra_out)
  if rc ~= 0 then return nil, ERR[rc] end
  return gcra_out.allowed ~= 0, gcra_out.remaining, gcra_out.retry_after, gcra_out.reset_after
end

function Dict:expire(key, exptime)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  if type(exptime) ~= "number" or exptime < 0 then error('bad "exptime" argument', 2) end
  local rc = C.lp_ffi_shdict_expire(self._d, k, #k, exptime)
  if rc ~= 0 then return nil, ERR[rc] end
  return true
end

function Dict:flush_all()
  check_self(self)
  C.lp_ffi_shdict_flush_all(self._d)
end

function Dict:flush_expired(max)
  check_self(self)
  max = tonumber(max) or 0
  return C.lp_ffi_shdict_flush_expired(self._d, max)
end

-- At most `max` keys (default 1024; 0: all), expired ones left out. It locks the dict's
-- stripes one after the other while it copies: not for a hot path.
function Dict:get_keys(max)
  check_self(self)
  if max == nil then
    max = 1024
  else
    max = tonumber(max)
    if not max or max < 0 then error('bad "max" argument', 2) end
  end
  local n = C.lp_ffi_shdict_keys(self._d, max, keys_out)
  if n < 0 then return nil, ERR[n] end
  local out, arr = {}, keys_out[0]
  for i = 0, n - 1 do out[i + 1] = ffi_string(arr[i].base, arr[i].len) end
  return out
end

function Dict:capacity()
  check_self(self)
  return C.lp_ffi_shdict_capacity(self._d)
end

function Dict:free_space()
  check_self(self)
  return C.lp_ffi_shdict_free_space(self._d)
end

local function push(self, left, key, value)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  local vt = type(value)
  if vt == "string" then
    val.type, val.str, val.len = TSTR, value, #value
  elseif vt == "number" then
    val.type, val.num = TNUM, value
  else
    return nil, "bad value type"
  end
  local rc = C.lp_ffi_shdict_push(self._d, k, #k, left, val)
  val.str = nil
  if rc < 0 then return nil, ERR[rc] end
  return rc
end

local function pop(self, left, key)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  local rc = C.lp_ffi_shdict_pop(self._d, k, #k, left, val)
  if rc ~= 0 then
    if rc == ENOTFOUND then return nil end
    return nil, ERR[rc]
  end
  return value_of(val)
end

function Dict:lpush(key, value) return push(self, 1, key, value) end
function Dict:rpush(key, value) return push(self, 0, key, value) end
function Dict:lpop(key) return pop(self, 1, key) end
function Dict:rpop(key) return pop(self, 0, key) end

function Dict:llen(key)
  check_self(self)
  local k, err = check_key(key)
  if not k then return nil, err end
  local rc = C.lp_ffi_shdict_llen(self._d, k, #k)
  if rc < 0 then return nil, ERR[rc] end
  return rc
end

-- proxy.shared: a lazy table, a dict object made on first use of each name in this VM.
M.dicts = setmetatable({}, {
  __index = function(t, name)
    if type(name) ~= "string" then return nil end
    if declared and not declared[name] then return nil end
    local d = C.lp_ffi_shdict_find(name, #name)
    if d == nil then return nil end
    local dict = setmetatable({ _d = d, name = name }, Dict)
    rawset(t, name, dict)
    return dict
  end,
})

M.Dict = Dict
return M
